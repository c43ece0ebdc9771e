//! No code generation of our own. This script exists so that `protoc-bin-vendored`, a
//! build-dependency, is always fetched: `tools/protoc` (see .cargo/config.toml) falls back to
//! its binary when the machine has no protoc, which etcd-client's build script needs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
