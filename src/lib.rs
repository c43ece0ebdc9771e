//! fernetd keeps OpenStack Keystone's Fernet key repositories safe.
//!
//! Modules, from the bottom up:
//! - [`key`]: one Fernet key; zeroized, never shown (fingerprints only).
//! - [`duration`]: `90s`/`6h`/`2d` durations.
//! - [`schedule`]: crontab and interval schedules, their firing times.
//! - [`planner`]: pure safety math: the max_active_keys a schedule needs.
//! - [`history`]: when each key was created, promoted, demoted, purged (pure).
//! - [`rotation`]: pure decision of one rotation, with the retention guard.
//! - [`repository`]: the directory on disk: scan, lock, crash-safe setup/rotate/recover.
//! - [`check`]: judges a repository snapshot, problem by problem.
//! - [`config`]: flags over TOML over keystone.conf.
//! - [`cli`]: the command-line contract.

pub mod check;
pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod history;
pub mod key;
pub mod planner;
pub mod repository;
pub mod rotation;
pub mod schedule;

pub use error::{Error, Result};
