//! fernetd keeps OpenStack Keystone's Fernet key repositories safe.
//!
//! Modules, from the bottom up. Those that decide form the [`core`] (pure: no I/O, no path out
//! of it): key, duration, clock, schedule, planner, history, rotation, check, keyset, token,
//! timeline, chart. The others read the world into the core's types and act on its decisions.
//!
//! - [`key`]: one Fernet key; zeroized, never shown (fingerprints only).
//! - [`duration`]: `90s`/`6h`/`2d` durations.
//! - [`clock`]: wall + boot clock readings; elapsed time that clock steps cannot shorten.
//! - [`schedule`]: crontab and interval schedules, their firing times.
//! - [`system`]: reads the clocks (`Now::read`) for the core.
//! - [`planner`]: pure safety math: the max_active_keys a schedule needs.
//! - [`problem`]: problem codes (wire string, severity, meaning) and levels (pure).
//! - [`history`]: when each key was created, promoted, demoted, purged (pure).
//! - [`rotation`]: pure decision of one rotation, with the retention guard.
//! - [`guard`]: the one gate every key removal passes: live key material never leaves.
//! - [`repository`]: the directory on disk: scan, lock, crash-safe setup/rotate/recover.
//! - [`check`]: judges a repository snapshot, problem by problem.
//! - [`keyset`]: keys + history as one value, as cluster mode stores it (pure).
//! - [`seal`]: authenticated encryption of stored key sets under a key-encryption key.
//! - [`exposure`]: what a cluster configuration exposes (unsealed, plain HTTP, readable secrets).
//! - [`cluster`]: the key sets in etcd: import, fetch, acknowledgements, leadership, rotation.
//! - [`agent`]: the daemon's cluster agent: follow, acknowledge, lead, rotate.
//! - [`config`]: flags over TOML over keystone.conf.
//! - [`credentials`]: the credentials' migration and its verification before a rotation.
//! - [`status`]: a repository's state for operators: OK / warning / critical.
//! - [`token`]: one Keystone token or receipt: its key, payload and verdict (pure).
//! - [`timeline`]: each key's life, recorded and planned, for a chart (pure).
//! - [`chart`]: draws key lives on a time axis, as SVG and as text (pure).
//! - [`hooks`]: operator commands run on events, bounded and never blocking.
//! - [`watcher`]: reports file changes in the repositories (inotify), decides nothing.
//! - [`metrics`]: Prometheus counters and gauges, and their tiny HTTP endpoint.
//! - [`systemd`]: READY/STATUS/WATCHDOG notifications.
//! - [`daemon`]: the service loop: schedule, validation, hooks, signals, reload.
//! - [`cli`]: the command-line contract.
//!
//! The planner answers the question this project exists for: with Keystone's defaults, does a
//! daily rotation with 3 keys keep every token decryptable for its lifetime? No, it needs 5:
//!
//! ```
//! use fernetd::planner::{plan, Lifetime};
//! use std::time::Duration;
//!
//! let lifetime = Lifetime {
//!     expiration: Duration::from_secs(3600),
//!     allow_expired_window: Duration::from_secs(48 * 3600),
//!     margin: Duration::ZERO,
//!     receipts: Duration::ZERO,
//! };
//! let daily = "@daily".parse().unwrap();
//! let p = plan(&daily, &lifetime, Some(3), chrono::Utc::now(), None).unwrap();
//! assert_eq!(p.safe, Some(false));
//! assert_eq!(p.required_max_active_keys, 5);
//! assert_eq!(p.shortest_window, Duration::from_secs(24 * 3600));
//! ```

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
pub mod credentials;
pub mod daemon;
pub mod error;
pub mod exposure;
pub mod guard;
pub mod hooks;
pub mod keystone_conf;
pub mod metrics;
pub mod repository;
pub mod seal;
pub mod status;
pub mod system;
pub mod systemd;
pub mod watcher;

// The core's modules under their old paths, while other branches still name them there.
pub use crate::core::{
    chart, check, clock, duration, history, key, keyset, planner, problem, rotation, schedule,
    timeline, token,
};

pub use error::{Error, Result};
