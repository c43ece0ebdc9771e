//! The library's error type. Every variant names the path, field or party at fault, so the
//! CLI can print it as one line. No variant carries key material.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: not an initialized key repository ({reason}); run `fernetd setup`")]
    NotInitialized { dir: PathBuf, reason: String },
    #[error("{path}: {problem}; refusing to rotate (run `fernetd check` for every problem)")]
    Invalid { path: PathBuf, problem: String },
    #[error(
        "{lock}: another fernetd{holder} holds the repository lock; gave up after {}",
        crate::core::duration::format(*waited)
    )]
    Locked {
        lock: PathBuf,
        holder: String,
        waited: Duration,
    },
    /// Another daemon holds the repository's daemon lock: one daemon per repository.
    #[error(
        "{}: another fernetd daemon{holder} holds this repository's daemon lock \
         (.fernetd): one daemon per repository; not started",
        dir.display()
    )]
    DaemonRunning { dir: PathBuf, holder: String },
    /// The keys were rotated (and are complete on disk: Keystone uses them) but the history
    /// was not saved. Nothing was purged; the next run records the rotation from the disk.
    /// Its own exit status (4), and the daemon does not rotate again for it.
    #[error(
        "rotated (key 0 promoted to primary {new_primary}, a new key 0 staged), but the history \
         could not be saved: {source}; the keys are complete and nothing was purged; the next \
         run records this rotation"
    )]
    RotatedUnsaved {
        new_primary: u64,
        #[source]
        source: Box<Error>,
    },
    #[error("{path}: unreadable fernetd state: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    Owner(String),
    #[error("{path}: cannot give the file to uid {uid} gid {gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// An input (a cluster key set, a state file, a clock) would make a key that may still
    /// decrypt a live token leave the repository, or would step the repository back: it is
    /// refused and every key stays.
    #[error("{input}: refused, every key stays: {reason}")]
    Refused { input: String, reason: String },
    /// The state file says something the disk contradicts; nothing is removed on its word.
    #[error(
        "{}: {field}: {problem}; nothing is removed on this file's word (move it aside and run \
         `fernetd setup` to re-adopt every key, dated now)",
        path.display()
    )]
    StateContradicts {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl Error {
    /// Whether this error is fernetd refusing an input to keep live keys (critical: the
    /// operator must look), rather than a failure to do what was asked.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. } | Error::StateContradicts { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

/// A configuration that cannot be used: one line naming the file (or variable), the field and
/// what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
