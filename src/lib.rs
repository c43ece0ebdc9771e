//! fernetd keeps OpenStack Keystone's Fernet key repositories safe.
//!
//! Two layers. The [`core`] decides: pure functions over plain data, no filesystem, no clock
//! reading, no network, no import of anything outside it (`tests/layering.rs` fails on any,
//! and on any import circle in `src/`). Its modules: `key`, `duration`, `clock`, `schedule`,
//! `planner`, `problem` (typed problem codes), `history`, `rotation`, `change` (a key change
//! described before it is made), `guard` (the one gate: it alone makes the approval a change
//! needs), `scan` and `check`, `keyset`, `token`, `timeline`, `chart`.
//!
//! The outer modules read the world into the core's types and act on its decisions:
//! - [`system`]: reads the clocks (`Now::read`) for the core.
//! - [`repository`]: the directory on disk: scan, lock, crash-safe setup/rotate/recover; its
//!   executor alone writes key files and repair copies, and only what the gate approved
//!   (`tests/one_door.rs` fails on any other writer).
//! - [`keystone_conf`]: what Keystone reads (keystone.conf, keystone.conf.d, OS_ variables).
//! - [`config`]: flags over TOML over Keystone's configuration.
//! - [`seal`]: authenticated encryption of stored key sets under a key-encryption key.
//! - [`exposure`]: what a cluster configuration exposes (unsealed, plain HTTP, readable secrets).
//! - [`cluster`]: the key sets in etcd: import, fetch, acknowledgements, leadership, rotation.
//! - [`agent`]: the daemon's cluster agent: a session that follows, acknowledges, leads, rotates.
//! - [`credentials`]: the credentials' migration and its verification before a rotation.
//! - [`status`]: a repository's state for operators: OK / warning / critical.
//! - [`hooks`]: operator commands run on events, bounded and never blocking.
//! - [`watcher`]: reports file changes in the repositories (inotify), decides nothing.
//! - [`metrics`]: Prometheus counters and gauges, and their tiny HTTP endpoint.
//! - [`systemd`]: READY/STATUS/WATCHDOG notifications.
//! - [`daemon`]: the service loop: schedule, validation, hooks, signals, reload.
//! - [`cli`]: the command-line contract: argument definitions, one module per command, a
//!   renderer.
//!
//! The planner answers the question this project exists for: with Keystone's defaults, does a
//! daily rotation with 3 keys keep every token decryptable for its lifetime? No, it needs 5:
//!
//! ```
//! use fernetd::core::planner::{plan, Lifetime};
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
pub mod hooks;
pub mod keystone_conf;
pub mod metrics;
pub mod repository;
pub mod seal;
pub mod status;
pub mod system;
pub mod systemd;
pub mod watcher;

pub use error::{Error, Result};
