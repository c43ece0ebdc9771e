//! Problems as every rendering says them: a typed [`Code`] (with its wire string, severity and
//! meaning: the one table the README, the alerts and the runbooks are checked against), a
//! [`Level`], and the message.
//!
//! Invariant: pure. It knows no repository, cluster, daemon or command line and does no I/O;
//! the wire strings here are a contract (metrics labels, `.fernetd/daemon.json`, alerts,
//! hooks, docs) and never change.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    /// As JSON, the metrics and the hooks spell it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }
}

/// Declares [`Code`]: each variant with its wire string, the level it is raised at (and, where
/// the level changes, the severity as the README says it), and its one-line meaning.
macro_rules! codes {
    ($($variant:ident = $wire:literal, $level:ident $(($severity:literal))?, $meaning:literal;)*) => {
        /// Every code a problem can carry. `check`'s codes come first (an error there is
        /// critical here). A code this build does not know (read from a live view another
        /// version wrote) is kept as [`Code::Other`], said as it was written.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($variant,)*
            Other(String),
        }

        impl Code {
            /// Every known code, in the README's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as metrics, JSON, logs, hooks and docs spell it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Code::$variant => $wire,)*
                    Code::Other(s) => s,
                }
            }

            /// The code spelled `s`; an unknown one is [`Code::Other`].
            pub fn parse(s: &str) -> Code {
                match s {
                    $($wire => Code::$variant,)*
                    _ => Code::Other(s.to_string()),
                }
            }

            /// The level a problem with this code is raised at (unknown codes: a warning;
            /// a problem read back carries its own level).
            pub fn level(&self) -> Level {
                match self {
                    $(Code::$variant => Level::$level,)*
                    Code::Other(_) => Level::Warning,
                }
            }

            /// The severity as the README's table says it.
            pub fn severity(&self) -> &'static str {
                match self {
                    $(Code::$variant => codes!(@severity $level $($severity)?),)*
                    Code::Other(_) => "unknown",
                }
            }

            /// What the code means, in one line.
            pub fn meaning(&self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)*
                    Code::Other(_) => "a code this version of fernetd does not know",
                }
            }
        }
    };
    (@severity $level:ident) => { Level::$level.name() };
    (@severity $level:ident $severity:literal) => { $severity };
}

codes! {
    MalformedKey = "malformed-key", Critical, "not 32 bytes of url-safe base64";
    EmptyKey = "empty-key", Critical, "an empty key file (Keystone skips it: that key is gone)";
    UnreadableKey = "unreadable-key", Critical, "named like a key but unreadable";
    NotAFile = "not-a-file", Critical, "named like a key but not a regular file";
    NonCanonicalName = "non-canonical-name", Critical,
        "a name Keystone's `int()` loads as another key number";
    MissingStagedKey = "missing-staged-key", Critical,
        "no key 0: the next `keystone-manage fernet_rotate` fails";
    TooFewKeys = "too-few-keys", Critical, "fewer than 2 valid keys";
    KeyNumberTooLarge = "key-number-too-large", Critical,
        "a key numbered 18446744073709551615: no rotation can follow it";
    InternalNotADirectory = "internal-not-a-directory", Critical,
        "`.fernetd` or `.fernetd/copies` is a link, a file or another user's: fernetd writes nothing through it";
    KeyMode = "key-mode", Warning, "a key is group or world accessible";
    WorldReadableDirectory = "world-readable-directory", Warning,
        "the repository directory is world readable";
    WritableDirectory = "writable-directory", Warning,
        "the repository directory is group or world writable";
    WrongOwner = "wrong-owner", Warning, "not owned by the Keystone user and group";
    StrayFile = "stray-file", Warning, "a file Keystone ignores (`0.tmp`, `1.bak`)";
    Symlink = "symlink", Warning, "a key that is a symbolic link";
    DuplicateKey = "duplicate-key", Warning, "two numbers hold the same key";
    RepositoryUnreadable = "repository-unreadable", Critical, "the repository cannot be read";
    StateUnreadable = "state-unreadable", Critical, "the state file cannot be read";
    StateContradicts = "state-contradicts", Critical,
        "the state file contradicts the keys on disk: refused";
    KeyLostInRetention = "key-lost-in-retention", Critical,
        "a key vanished or changed while tokens it encrypted are still valid (until then)";
    InputRefused = "input-refused", Critical,
        "an input (a cluster key set, a rotation) was refused to keep live keys";
    DuplicateNode = "duplicate-node", Critical,
        "another daemon runs under this cluster node's name: one of them is refused and takes no part";
    AckUnauthenticated = "ack-unauthenticated", Critical,
        "a member's acknowledgement does not verify with any seal key held: counted as absent, the gate holds";
    AckMissing = "ack-missing", Critical,
        "a member the sealed key set lists has no acknowledgement record in etcd: counted as absent, the gate holds";
    RotationFailing = "rotation-failing",
        Warning("warning; critical once overdue by more than the margin"),
        "rotations fail and are retried every 30 s";
    CredentialsUnverified = "credentials-unverified", Warning,
        "credentials' migration not verified on the primary key: every key kept, nothing rotated";
    LiveViewUnwritable = "live-view-unwritable", Warning,
        "a daemon runs but `status` cannot see its findings (it cannot write `.fernetd/daemon.json`, or hold its lock)";
    RotationOverdue = "rotation-overdue", Warning, "no rotation 5 minutes past its slot";
    UnsafeSchedule = "unsafe-schedule", Warning,
        "`max_active_keys` below the planner's, allowed by `allow_unsafe_schedule`";
    ClockInFuture = "clock-in-future", Warning, "a recorded time lies in the future";
    ClockStep = "clock-step", Warning, "the wall clock stepped against the boot clock";
    ClockSkew = "clock-skew",
        Warning("warning; critical once it lasts 3 rotations or rotations pause at the key bound"),
        "a cluster node's clock is off by more than the margin (fresh readings): keys held for its skew";
    Degraded = "degraded", Warning,
        "cluster mode: etcd lost; serving the current keys, not rotating";
    ClusterUnreachable = "cluster-unreachable", Warning, "`status` could not read the cluster";
    ClusterDiffers = "cluster-differs",
        Warning("warning; critical when this node lacks the cluster's primary or another key but the staged one"),
        "this node does not hold the cluster's key set";
    GateBlocked = "gate-blocked", Warning,
        "a due rotation held past `gate_deadline` by members without the staged key";
    ClusterUnsealed = "cluster-unsealed", Warning,
        "`insecure_unsealed`: key sets may sit in etcd in the clear";
    EtcdPlaintext = "etcd-plaintext", Warning, "an etcd endpoint beyond this host is plain HTTP";
    SecretReadable = "secret-readable", Warning,
        "the etcd password or TLS key file is readable by every user";
    GateWaiting = "gate-waiting", Ok, "a note: the next promotion waits on these members";
}

impl Code {
    /// An input refused to keep live keys: the repository counts as refused.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Code::InputRefused | Code::StateContradicts)
    }

    /// A clock that cannot be trusted.
    pub fn is_clock(&self) -> bool {
        matches!(
            self,
            Code::ClockInFuture | Code::ClockStep | Code::ClockSkew
        )
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        Ok(Code::parse(&String::deserialize(d)?))
    }
}

/// One problem, said the same way everywhere: `status` (text, JSON, exit code), `STATUS=`,
/// the metrics (`fernetd_problem`), the log and the hooks (`FERNETD_PROBLEMS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub code: Code,
    pub level: Level,
    pub message: String,
}

impl Problem {
    /// A problem at its code's level.
    pub fn new(code: Code, message: impl Into<String>) -> Problem {
        Problem {
            level: code.level(),
            code,
            message: message.into(),
        }
    }

    /// The same problem at `level` (a code whose level changes: `rotation-failing`, or a
    /// finding at the severity `check` gave it).
    pub fn at(self, level: Level) -> Problem {
        Problem { level, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself() {
        for c in Code::ALL {
            assert_eq!(&Code::parse(c.as_str()), c);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(&serde_json::from_str::<Code>(&json).unwrap(), c);
        }
        let wires: std::collections::BTreeSet<&str> = Code::ALL.iter().map(Code::as_str).collect();
        assert_eq!(
            wires.len(),
            Code::ALL.len(),
            "two codes share a wire string"
        );
    }

    /// A live view written by another version may carry a code this one does not know: it is
    /// kept, at the level written, and said back as it was.
    #[test]
    fn an_unknown_code_is_kept_as_written() {
        let json = r#"{"code":"from-the-future","level":"critical","message":"m"}"#;
        let p: Problem = serde_json::from_str(json).unwrap();
        assert_eq!(p.code, Code::Other("from-the-future".into()));
        assert_eq!(p.level, Level::Critical);
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
    }

    /// The runbooks name every code; the alerts select every one but those that only `status`
    /// says (a cluster view it could not read, the promotion gate).
    #[test]
    fn the_runbooks_and_alerts_name_the_codes() {
        let runbooks = include_str!("../../docs/runbooks.md");
        let alerts = include_str!("../../packaging/prometheus/fernetd-alerts.yml");
        let unalerted = [
            Code::ClusterUnreachable,
            Code::GateBlocked,
            Code::GateWaiting,
        ];
        for c in Code::ALL {
            assert!(runbooks.contains(c.as_str()), "docs/runbooks.md: no {c}");
            assert_eq!(
                alerts.contains(c.as_str()),
                !unalerted.contains(c),
                "fernetd-alerts.yml and {c}"
            );
        }
    }
}
