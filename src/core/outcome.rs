//! What an operation on a repository did and found, typed: the repository records [`Said`]
//! values; the CLI, the daemon and the agent word them (`Display`) and choose how loudly
//! ([`Said::is_warning`]).

use crate::core::guard::Live;
use crate::core::history::Observation;
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt;
use std::path::PathBuf;

/// One thing an operation did or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// The repository directory was made.
    Created {
        dir: PathBuf,
    },
    /// ... as root, with no owner given: Keystone running as another user cannot read it.
    CreatedOwnedByRoot {
        dir: PathBuf,
    },
    /// `setup` on an empty repository.
    Initialized,
    /// `setup` on an initialized repository.
    AlreadyInitialized {
        keys: usize,
        primary: u64,
    },
    /// A key 0 staged this instant is not promoted by the same call.
    NotRotatedFreshZero,
    Rotated {
        new_primary: u64,
    },
    Purged {
        numbers: Vec<u64>,
    },
    /// A key `max_active_keys` would purge, kept while it may decrypt tokens.
    KeptBeyondMax {
        number: u64,
        max_active_keys: u64,
        until: DateTime<Utc>,
    },
    /// A key a cluster key set leaves out, kept while it may decrypt tokens.
    KeptBeyondSet {
        number: u64,
        why: Live,
    },
    /// Restored from fernetd's copy (`repair = true`).
    Repaired {
        number: u64,
    },
    /// A file under a key's name that held no key, at a number no key needs, removed
    /// (`repair = true`): Keystone's loader fails every token while it is there.
    ClearedNonKey {
        number: u64,
    },
    /// A cluster key set that the disk already holds.
    AlreadyApplied,
    /// Recovery found no key 0 and staged one.
    StagedMissingZero,
    /// A cluster key set applied: the keys written and removed.
    Wrote {
        numbers: Vec<u64>,
    },
    Removed {
        numbers: Vec<u64>,
    },
    /// Recovery of a writer killed mid-rotation.
    CompletedRotation {
        promoted: u64,
    },
    RolledBack,
    CompletedKeystoneRotation,
    RemovedKeystoneTmp,
    /// Keys recorded as purged but on disk: kept, dated now.
    InterruptedPurge {
        numbers: Vec<u64>,
    },
    /// Keys without history, dated now.
    Adopted {
        numbers: Vec<u64>,
    },
    /// A change made outside fernetd.
    Observed(Observation),
    /// The wall clock against the boot clock, and recorded times in the future (worded by the
    /// clock and the history).
    Clock(String),
}

impl Said {
    /// Said with a `warning:` prefix (an interrupted writer, a kept key, an outside change),
    /// not as a plain note of what was done.
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            Said::Created { .. }
                | Said::Initialized
                | Said::AlreadyInitialized { .. }
                | Said::NotRotatedFreshZero
                | Said::Rotated { .. }
                | Said::Purged { .. }
                | Said::AlreadyApplied
                | Said::Wrote { .. }
                | Said::Removed { .. }
                | Said::Adopted { .. }
                | Said::Observed(Observation::Adopted { .. })
        )
    }
}

fn join(numbers: &[u64]) -> String {
    let parts: Vec<String> = numbers.iter().map(|n| format!("key {n}")).collect();
    parts.join(", ")
}

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Said::Created { dir } => write!(f, "created {}", dir.display()),
            Said::CreatedOwnedByRoot { dir } => write!(
                f,
                "{}: created owned by root; Keystone running as another user cannot read \
                 it (pass --keystone-user and --keystone-group)",
                dir.display()
            ),
            Said::Initialized => f.write_str("initialized: key 1 (primary) and key 0 (staged)"),
            Said::AlreadyInitialized { keys, primary } => write!(
                f,
                "already initialized: {keys} keys, primary {primary}; no key changed"
            ),
            Said::NotRotatedFreshZero => f.write_str(
                "not rotated: key 0 was missing; the new key 0 becomes primary at the next \
                 rotation, once every reader holds it",
            ),
            Said::Rotated { new_primary } => write!(
                f,
                "rotated: key 0 promoted to primary {new_primary}, new key 0 staged"
            ),
            Said::Purged { numbers } => write!(f, "purged {}", join(numbers)),
            Said::KeptBeyondMax {
                number,
                max_active_keys,
                until,
            } => write!(
                f,
                "kept key {number} beyond max_active_keys = {max_active_keys} until {}: it may \
                 still decrypt tokens until then (--force-purge to purge by count only)",
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            Said::KeptBeyondSet { number, why } => write!(
                f,
                "kept key {number} beyond the cluster's key set: it may still decrypt live \
                 tokens ({why})"
            ),
            Said::Repaired { number } => write!(
                f,
                "repaired: restored key {number} from fernetd's copy (repair = true)"
            ),
            Said::ClearedNonKey { number } => write!(
                f,
                "repaired: removed file {number}: it held no key (Keystone's loader fails every \
                 token on it) and no key needs its number (repair = true)"
            ),
            Said::AlreadyApplied => f.write_str("already identical to the cluster's key set"),
            Said::StagedMissingZero => f.write_str("key 0 was missing: staged a new key 0"),
            Said::Wrote { numbers } => write!(f, "wrote {}", join(numbers)),
            Said::Removed { numbers } => write!(f, "removed {}", join(numbers)),
            Said::CompletedRotation { promoted } => write!(
                f,
                "completed an interrupted rotation: key {promoted} had been promoted; new key 0 \
                 staged now"
            ),
            Said::RolledBack => {
                f.write_str("rolled back an interrupted rotation: it had not changed any key")
            }
            Said::CompletedKeystoneRotation => {
                f.write_str("completed an interrupted keystone-manage rotation: 0.tmp became key 0")
            }
            Said::RemovedKeystoneTmp => f.write_str(
                "removed 0.tmp left by an interrupted keystone-manage rotation (no key had \
                 changed)",
            ),
            Said::InterruptedPurge { numbers } => write!(
                f,
                "{} recorded as purged but still on disk (an interrupted purge): kept, dated \
                 now; a later rotation purges it once its retention is over",
                join(numbers)
            ),
            Said::Adopted { numbers } => write!(
                f,
                "adopted {} without history: retention counts from now",
                join(numbers)
            ),
            Said::Observed(o) => observed(o, f),
            Said::Clock(s) => f.write_str(s),
        }
    }
}

fn observed(o: &Observation, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match o {
        Observation::Adopted { number } => write!(
            f,
            "adopted key {number} without history: retention counts from now"
        ),
        Observation::Promoted { from, to } => write!(
            f,
            "key {from} became primary {to} outside fernetd (an interrupted rotation or \
             keystone-manage fernet_rotate); recorded as a rotation now"
        ),
        Observation::Vanished {
            number,
            fingerprint,
        } => write!(
            f,
            "key {number} (fingerprint {fingerprint}) disappeared outside fernetd"
        ),
        Observation::Replaced { number: 0 } => f.write_str(
            "the staged key 0 was replaced by a different key outside fernetd (no token was \
             encrypted with a staged key)",
        ),
        Observation::Replaced { number } => write!(
            f,
            "key {number} was replaced by a different key outside fernetd; tokens made with \
             the old one no longer decrypt"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_warnings_are_told_apart_and_worded_once() {
        let kept = Said::KeptBeyondMax {
            number: 1,
            max_active_keys: 3,
            until: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        };
        assert!(kept.is_warning());
        assert!(kept
            .to_string()
            .starts_with("kept key 1 beyond max_active_keys = 3 until 1970"));
        assert!(!Said::Rotated { new_primary: 4 }.is_warning());
        assert_eq!(
            Said::Purged {
                numbers: vec![1, 2]
            }
            .to_string(),
            "purged key 1, key 2"
        );
    }
}
