//! Keystone's own code from PyPI (`.venv`, or the venv named by FERNETD_KEYSTONE_VENV), driven
//! through `tests/keystone/helper.py`. Without it the tests that need it fail with the command
//! that installs it; they are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn venv() -> PathBuf {
    let v = std::env::var_os("FERNETD_KEYSTONE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let ok = Command::new(v.join("bin/python"))
        .args(["-c", "import keystone.common.fernet_utils"])
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "Keystone is not installed in {} (python3 -m venv .venv && .venv/bin/pip install keystone; the README's test command does this)",
        v.display()
    );
    v
}

pub fn helper(args: &[&str]) -> std::process::Output {
    Command::new(venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"))
        .args(args)
        .output()
        .unwrap()
}

/// A token packed by Keystone's TokenFormatter with the repository's primary key.
pub fn pack(dir: &Path) -> String {
    let out = helper(&["pack", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "keystone pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The tokens (by index) Keystone's TokenFormatter cannot unpack with the repository's keys.
pub fn unpack_failures(dir: &Path, tokens: &[String]) -> Vec<String> {
    let mut args = vec!["unpack-all", dir.to_str().unwrap()];
    args.extend(tokens.iter().map(String::as_str));
    let out = helper(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || !text.is_empty(),
        "keystone unpack-all: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_string).collect()
}

/// `helper.py CMD -` with `input` as JSON on stdin; its JSON answer.
pub fn helper_json<T: serde::de::DeserializeOwned>(cmd: &str, input: &impl serde::Serialize) -> T {
    use std::io::Write;
    let mut child = Command::new(venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"))
        .args([cmd, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_string(input).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "helper.py {cmd} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}
