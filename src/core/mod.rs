//! The core: every decision fernetd makes, as pure functions over plain data.
//!
//! Rule: nothing under `core/` acts. No file, process, network or OS call (`std::fs`,
//! `std::process`, `std::net`, `std::os`, `nix`, `libc`), no runtime or etcd (`tokio`,
//! `etcd_client`), and no path out of the core: a core module imports only other core modules
//! and plain crates (chrono, serde, sha1, sha2, base64, croner, rmpv, zeroize). The modules around
//! it read the disk, the clocks and etcd into the core's plain types, ask it, and carry out
//! what it decided. The one effect allowed is drawing fresh randomness (`getrandom`) for a new
//! key or cluster id: it reads no state a decision depends on. `tests/layering.rs` holds the
//! rule, and no file of `src/` imports another around a circle.
//!
//! Modules, from the bottom up:
//! - [`key`]: one Fernet key; zeroized, never shown (fingerprints only).
//! - [`duration`]: `90s`/`6h`/`2d` durations.
//! - [`clock`]: wall + boot clock readings; elapsed time that clock steps cannot shorten.
//! - [`schedule`]: crontab and interval schedules, their firing times.
//! - [`planner`]: the max_active_keys a schedule needs.
//! - [`history`]: when each key was created, promoted, demoted, purged; the cluster lineage.
//! - [`rotation`]: the decision of one rotation, with the retention guard.
//! - [`credentials`]: whether a credential migration was verified against the primary.
//! - [`scan`]: a repository snapshot as plain data (what Keystone's loader would see).
//! - [`check`]: judges a snapshot, problem by problem.
//! - [`keyset`]: keys + history as one value, as cluster mode stores it.
//! - [`token`]: one Keystone token or receipt: its key, payload and verdict.
//! - [`timeline`]: each key's life, recorded and planned, for a chart.
//! - [`chart`]: draws key lives on a time axis, as SVG and as text.

pub mod change;
pub mod chart;
pub mod check;
pub mod clock;
pub mod credentials;
pub mod duration;
pub mod guard;
pub mod history;
pub mod key;
pub mod keyset;
pub mod outcome;
pub mod planner;
pub mod problem;
pub mod rotation;
pub mod scan;
pub mod schedule;
pub mod skew;
pub mod timeline;
pub mod token;
