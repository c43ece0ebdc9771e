//! Judges a repository snapshot: every problem, by file, with a severity.
//!
//! Errors are what makes Keystone fail or lose tokens (a malformed key, a missing 0, a name
//! Keystone loads over another key). Warnings are what weakens safety or hygiene without
//! breaking Keystone today (modes, owners, strays, symlinks, duplicates).
//!
//! Invariant: pure over a [`Scan`]; never prints or returns key material (content problems
//! are described, never quoted).

use crate::repository::{EntryKind, Owner, Scan};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The file at fault (or the directory itself).
    pub path: String,
    /// Stable machine-readable code.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub repository: String,
    pub status: &'static str,
    pub primary: Option<u64>,
    pub staged: bool,
    pub keys: Vec<u64>,
    /// Each key's fingerprint (truncated SHA-256, not the key).
    pub fingerprints: std::collections::BTreeMap<u64, String>,
    /// One value for the whole set (numbers and fingerprints): equal on two nodes exactly when
    /// they hold the same keys under the same numbers.
    pub digest: String,
    pub findings: Vec<Finding>,
}

impl Finding {
    /// Findings that make a repository unhealthy (critical in `status`, ERROR in the daemon's
    /// log, `on_invalid`): the errors. Warnings (modes, owners, strays, links, duplicates)
    /// are said at warning everywhere.
    pub fn is_violation(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl Report {
    /// Sets `status` from the findings.
    fn settle(&mut self) {
        self.status = match self.exit_code() {
            0 => "healthy",
            1 => "warning",
            _ => "invalid",
        };
    }

    pub fn violations(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_violation())
    }

    /// 0 healthy, 1 warnings only, 2 invalid.
    pub fn exit_code(&self) -> i32 {
        match self.findings.iter().map(|f| f.severity).max() {
            None => 0,
            Some(Severity::Warning) => 1,
            Some(Severity::Error) => 2,
        }
    }
}

/// Judges `scan`. `expected_owner` is the Keystone user/group when known; otherwise key files
/// are expected to share the directory's owner.
pub fn check(scan: &Scan, expected_owner: Option<Owner>) -> Report {
    let mut f = Vec::new();
    let dir = scan.dir.display().to_string();
    let mut push = |severity, path: &str, code, message: String| {
        f.push(Finding {
            severity,
            path: path.to_string(),
            code,
            message,
        })
    };
    let owner = expected_owner.unwrap_or(Owner {
        uid: scan.dir_meta.uid,
        gid: scan.dir_meta.gid,
    });

    if scan.dir_meta.mode & 0o005 != 0 {
        push(
            Severity::Warning,
            &dir,
            "world-readable-directory",
            format!(
                "directory mode {:04o} is world readable (want 0700)",
                scan.dir_meta.mode
            ),
        );
    } else if scan.dir_meta.mode & 0o022 != 0 {
        push(
            Severity::Warning,
            &dir,
            "writable-directory",
            format!(
                "directory mode {:04o} is group or world writable",
                scan.dir_meta.mode
            ),
        );
    }
    if expected_owner.is_some()
        && (scan.dir_meta.uid != owner.uid || scan.dir_meta.gid != owner.gid)
    {
        push(
            Severity::Warning,
            &dir,
            "wrong-owner",
            format!(
                "directory owned by {}:{}, expected {}:{}",
                scan.dir_meta.uid, scan.dir_meta.gid, owner.uid, owner.gid
            ),
        );
    }

    let mut by_fingerprint: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for e in &scan.entries {
        let path = e.path.display().to_string();
        match &e.kind {
            EntryKind::Internal { problem } => {
                // fernetd's own directory (or `copies` in it): a link, a file or another
                // user's directory there would send fernetd's writes elsewhere (it refuses to
                // write through one).
                if let Some((at, why)) = problem {
                    push(
                        Severity::Error,
                        &at.display().to_string(),
                        "internal-not-a-directory",
                        why.clone(),
                    );
                }
                continue;
            }
            EntryKind::Other => {
                if e.meta.is_file {
                    push(
                        Severity::Warning,
                        &path,
                        "stray-file",
                        "not a key (Keystone ignores it); a leftover temp file?".into(),
                    );
                }
                continue;
            }
            EntryKind::NonCanonical { number } => {
                if e.meta.is_file {
                    push(
                        Severity::Error,
                        &path,
                        "non-canonical-name",
                        format!("Keystone loads this as key {number}, possibly over another key with that number; rename or remove it"),
                    );
                }
                continue;
            }
            EntryKind::Key { number, content } => {
                if !e.meta.is_file {
                    push(
                        Severity::Error,
                        &path,
                        "not-a-file",
                        "named like a key but not a regular file; Keystone skips it".into(),
                    );
                    continue;
                }
                match content {
                    Ok(k) => by_fingerprint
                        .entry(k.fingerprint())
                        .or_default()
                        .push(*number),
                    Err(p) => {
                        let code = match p {
                            crate::repository::scan::ContentProblem::Format(
                                crate::key::KeyFormatError::Empty,
                            ) => "empty-key",
                            crate::repository::scan::ContentProblem::Unreadable(_) => {
                                "unreadable-key"
                            }
                            _ => "malformed-key",
                        };
                        push(Severity::Error, &path, code, p.to_string());
                    }
                }
            }
        }
        if e.meta.is_symlink {
            push(
                Severity::Warning,
                &path,
                "symlink",
                "a symbolic link; Keystone follows it, fernetd replaces it with a file on rotation"
                    .into(),
            );
        }
        if matches!(e.kind, EntryKind::Key { number, .. } if number == crate::rotation::MAX_KEY) {
            push(
                Severity::Error,
                &path,
                "key-number-too-large",
                "the largest number a key can have: no rotation can follow it (the next \
                 number would wrap); renumber the keys by hand"
                    .into(),
            );
        }
        if e.meta.mode & 0o077 != 0 {
            push(
                Severity::Warning,
                &path,
                "key-mode",
                format!(
                    "mode {:04o} is group or world accessible (want 0600)",
                    e.meta.mode
                ),
            );
        }
        if e.meta.uid != owner.uid || e.meta.gid != owner.gid {
            push(
                Severity::Warning,
                &path,
                "wrong-owner",
                format!(
                    "owned by {}:{}, expected {}:{}",
                    e.meta.uid, e.meta.gid, owner.uid, owner.gid
                ),
            );
        }
    }
    for numbers in by_fingerprint.values().filter(|v| v.len() > 1) {
        let names: Vec<String> = numbers.iter().map(u64::to_string).collect();
        push(
            Severity::Warning,
            &dir,
            "duplicate-key",
            format!("keys {} hold the same key", names.join(", ")),
        );
    }

    let keys = scan.keys();
    let numbers: Vec<u64> = keys.keys().copied().collect();
    let primary = crate::history::primary(numbers.iter().copied());
    if !keys.contains_key(&0) {
        push(
            Severity::Error,
            &scan.dir.join("0").display().to_string(),
            "missing-staged-key",
            "no staged key 0: the next keystone-manage fernet_rotate fails (fernetd setup restores it)"
                .into(),
        );
    }
    if keys.len() < 2 {
        push(
            Severity::Error,
            &dir,
            "too-few-keys",
            format!(
                "{} valid key(s); a repository needs a staged and a primary key",
                keys.len()
            ),
        );
    }
    f.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.path.cmp(&b.path)));
    let fingerprints = scan.fingerprints();
    let mut r = Report {
        repository: dir,
        status: "",
        primary,
        staged: keys.contains_key(&0),
        keys: numbers,
        digest: digest(&fingerprints),
        fingerprints: fingerprints
            .iter()
            .map(|(n, f)| (*n, f.to_string()))
            .collect(),
        findings: f,
    };
    r.settle();
    r
}

/// What fernetd's history adds to a report, for `check` as for `status`: a state file that
/// cannot be read (`state-unreadable`: a FIFO, a device, too large, not fernetd's JSON), and
/// every key lost inside its retention (`key-lost-in-retention`), recorded or judged from the
/// disk. Both errors.
pub fn judge_history(
    report: &mut Report,
    state: &std::path::Path,
    history: Result<(), String>,
    lost: &[crate::repository::RetentionViolation],
) {
    if let Err(e) = history {
        report.findings.push(Finding {
            severity: Severity::Error,
            path: state.display().to_string(),
            code: "state-unreadable",
            message: e,
        });
    }
    for v in lost {
        report.findings.push(Finding {
            severity: Severity::Error,
            path: v.path.display().to_string(),
            code: "key-lost-in-retention",
            message: format!(
                "key {} vanished or changed while tokens it encrypted are still valid (until {})",
                v.number,
                v.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        });
    }
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.path.cmp(&b.path)));
    report.settle();
}

/// The 16 hex digits of SHA-256 over "number fingerprint" lines, in number order.
pub fn digest(keys: &std::collections::BTreeMap<u64, crate::key::Fingerprint>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (n, f) in keys {
        h.update(format!("{n} {f}\n"));
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
