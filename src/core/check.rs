//! Judges a repository snapshot: every problem, by file, with a severity.
//!
//! Errors are what makes Keystone fail or lose tokens (a malformed key, a missing 0, a name
//! Keystone loads over another key). Warnings are what weakens safety or hygiene without
//! breaking Keystone today (modes, owners, strays, symlinks, duplicates).
//!
//! Invariant: pure over a [`Scan`]; never prints or returns key material (content problems
//! are described, never quoted).

use crate::core::key::Fingerprint;
use crate::core::problem::Code;
use crate::core::scan::{ContentProblem, Entry, EntryKind, Owner, Scan};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub code: Code,
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
    let mut f = Findings::default();
    let dir = scan.dir.display().to_string();
    let owner = expected_owner.unwrap_or(Owner {
        uid: scan.dir_meta.uid,
        gid: scan.dir_meta.gid,
    });
    directory(scan, expected_owner.is_some(), owner, &mut f);
    let mut by_fingerprint: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for e in &scan.entries {
        entry(e, owner, &mut by_fingerprint, &mut f);
    }
    for numbers in by_fingerprint.values().filter(|v| v.len() > 1) {
        let names: Vec<String> = numbers.iter().map(u64::to_string).collect();
        f.push(
            Severity::Warning,
            &dir,
            Code::DuplicateKey,
            format!("keys {} hold the same key", names.join(", ")),
        );
    }
    let keys = scan.keys();
    let numbers: Vec<u64> = keys.keys().copied().collect();
    if !keys.contains_key(&0) {
        f.push(
            Severity::Error,
            &scan.dir.join("0").display().to_string(),
            Code::MissingStagedKey,
            "no staged key 0: the next keystone-manage fernet_rotate fails (fernetd setup restores it)"
                .into(),
        );
    }
    if keys.len() < 2 {
        f.push(
            Severity::Error,
            &dir,
            Code::TooFewKeys,
            format!(
                "{} valid key(s); a repository needs a staged and a primary key",
                keys.len()
            ),
        );
    }
    let mut findings = f.0;
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.path.cmp(&b.path)));
    let fingerprints = scan.fingerprints();
    let mut r = Report {
        repository: dir,
        status: "",
        primary: crate::core::history::primary(numbers.iter().copied()),
        staged: keys.contains_key(&0),
        keys: numbers,
        digest: digest(&fingerprints),
        fingerprints: fingerprints
            .iter()
            .map(|(n, f)| (*n, f.to_string()))
            .collect(),
        findings,
    };
    r.settle();
    r
}

/// The findings of one judgement, in the order found.
#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, severity: Severity, path: &str, code: Code, message: String) {
        self.0.push(Finding {
            severity,
            path: path.to_string(),
            code,
            message,
        })
    }
}

/// The repository directory's own mode and owner.
fn directory(scan: &Scan, owner_known: bool, owner: Owner, f: &mut Findings) {
    let dir = scan.dir.display().to_string();
    let m = &scan.dir_meta;
    if m.mode & 0o005 != 0 {
        f.push(
            Severity::Warning,
            &dir,
            Code::WorldReadableDirectory,
            format!(
                "directory mode {:04o} is world readable (want 0700)",
                m.mode
            ),
        );
    } else if m.mode & 0o022 != 0 {
        f.push(
            Severity::Warning,
            &dir,
            Code::WritableDirectory,
            format!("directory mode {:04o} is group or world writable", m.mode),
        );
    }
    if owner_known && (m.uid != owner.uid || m.gid != owner.gid) {
        f.push(
            Severity::Warning,
            &dir,
            Code::WrongOwner,
            format!(
                "directory owned by {}:{}, expected {}:{}",
                m.uid, m.gid, owner.uid, owner.gid
            ),
        );
    }
}

/// One directory entry: what it is (fernetd's own directory, a stray file, a name Keystone
/// reads as another number, a key), then a key's content, link, number, mode and owner.
fn entry(
    e: &Entry,
    owner: Owner,
    by_fingerprint: &mut BTreeMap<Fingerprint, Vec<u64>>,
    f: &mut Findings,
) {
    let path = e.path.display().to_string();
    let (number, content) = match &e.kind {
        EntryKind::Internal { problem } => {
            // fernetd's own directory (or `copies` in it): a link, a file or another
            // user's directory there would send fernetd's writes elsewhere (it refuses to
            // write through one).
            if let Some((at, why)) = problem {
                f.push(
                    Severity::Error,
                    &at.display().to_string(),
                    Code::InternalNotADirectory,
                    why.clone(),
                );
            }
            return;
        }
        EntryKind::Other => {
            if e.meta.is_file {
                f.push(
                    Severity::Warning,
                    &path,
                    Code::StrayFile,
                    "not a key (Keystone ignores it); a leftover temp file?".into(),
                );
            }
            return;
        }
        EntryKind::NonCanonical { number } => {
            if e.meta.is_file {
                f.push(
                    Severity::Error,
                    &path,
                    Code::NonCanonicalName,
                    format!("Keystone loads this as key {number}, possibly over another key with that number; rename or remove it"),
                );
            }
            return;
        }
        EntryKind::Key { number, content } => (*number, content),
    };
    if !e.meta.is_file {
        f.push(
            Severity::Error,
            &path,
            Code::NotAFile,
            "named like a key but not a regular file; Keystone skips it".into(),
        );
        return;
    }
    match content {
        Ok(k) => by_fingerprint
            .entry(k.fingerprint())
            .or_default()
            .push(number),
        Err(p) => {
            let code = match p {
                ContentProblem::Format(crate::core::key::KeyFormatError::Empty) => Code::EmptyKey,
                ContentProblem::Unreadable(_) => Code::UnreadableKey,
                _ => Code::MalformedKey,
            };
            f.push(Severity::Error, &path, code, p.to_string());
        }
    }
    key_file(e, &path, number, owner, f);
}

/// A key file's link, number, mode and owner.
fn key_file(e: &Entry, path: &str, number: u64, owner: Owner, f: &mut Findings) {
    if e.meta.is_symlink {
        f.push(
            Severity::Warning,
            path,
            Code::Symlink,
            "a symbolic link; Keystone follows it, fernetd replaces it with a file on rotation"
                .into(),
        );
    }
    if number == crate::core::rotation::MAX_KEY {
        f.push(
            Severity::Error,
            path,
            Code::KeyNumberTooLarge,
            "the largest number a key can have: no rotation can follow it (the next \
             number would wrap); renumber the keys by hand"
                .into(),
        );
    }
    if e.meta.mode & 0o077 != 0 {
        f.push(
            Severity::Warning,
            path,
            Code::KeyMode,
            format!(
                "mode {:04o} is group or world accessible (want 0600)",
                e.meta.mode
            ),
        );
    }
    if e.meta.uid != owner.uid || e.meta.gid != owner.gid {
        f.push(
            Severity::Warning,
            path,
            Code::WrongOwner,
            format!(
                "owned by {}:{}, expected {}:{}",
                e.meta.uid, e.meta.gid, owner.uid, owner.gid
            ),
        );
    }
}

/// A key lost inside its retention: tokens it encrypted fail until `until`; stored credentials
/// encrypted with it cannot be decrypted at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionViolation {
    pub path: PathBuf,
    /// `None` for material only a repair copy holds, which left the disk unseen (its number
    /// unknown): `path` is the copy's.
    pub number: Option<u64>,
    pub fingerprint: crate::core::key::Fingerprint,
    pub until: DateTime<Utc>,
    /// A credential key: what is at stake is stored credentials, which need it until a
    /// verified migration moves them off it (no time ends that), not tokens.
    pub credentials: bool,
}

impl RetentionViolation {
    /// What was lost, until when, without the path.
    pub fn what(&self) -> String {
        let until = self
            .until
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match (self.number, self.credentials) {
            (Some(n), true) => format!(
                "key {n} vanished or changed while stored credentials may still be encrypted \
                 with it: those cannot be decrypted (listing credentials fails) until it is \
                 restored, or until a verified migration (the next verified credentials \
                 rotation) shows every stored credential on the primary"
            ),
            (None, true) => format!(
                "the key with fingerprint {} left the disk unseen (its repair copy is the only \
                 record of it; the state file did not know it) while stored credentials may \
                 still be encrypted with it: those cannot be decrypted until it is restored \
                 from that copy",
                self.fingerprint
            ),
            (Some(n), false) => format!(
                "key {n} vanished or changed while tokens it encrypted are still valid (until \
                 {until})"
            ),
            (None, false) => format!(
                "the key with fingerprint {} left the disk unseen (its repair copy is the only \
                 record of it; the state file did not know it) while tokens it encrypted may \
                 still be valid (until {until})",
                self.fingerprint
            ),
        }
    }
}

impl std::fmt::Display for RetentionViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what())
    }
}

/// What fernetd's history adds to a report, for `check` as for `status`: a state file that
/// cannot be read (`state-unreadable`: a FIFO, a device, too large, not fernetd's JSON), and
/// every key lost inside its retention (`key-lost-in-retention`), recorded or judged from the
/// disk, both errors; and on a cluster node `applied`, the disk judged against the key set it
/// last applied (a key of it lacking, a primary it never held: errors, as `status` says them
/// while etcd is away).
pub fn judge_history(
    report: &mut Report,
    state: &Path,
    history: Result<(), String>,
    lost: &[RetentionViolation],
    applied: &[crate::core::problem::Problem],
) {
    if let Err(e) = history {
        report.findings.push(Finding {
            severity: Severity::Error,
            path: state.display().to_string(),
            code: Code::StateUnreadable,
            message: e,
        });
    }
    for v in lost {
        report.findings.push(Finding {
            severity: Severity::Error,
            path: v.path.display().to_string(),
            code: Code::KeyLostInRetention,
            message: v.what(),
        });
    }
    for p in applied {
        report.findings.push(Finding {
            severity: match p.level {
                crate::core::problem::Level::Critical => Severity::Error,
                _ => Severity::Warning,
            },
            path: report.repository.clone(),
            code: p.code.clone(),
            message: p.message.clone(),
        });
    }
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.path.cmp(&b.path)));
    report.settle();
}

/// The 16 hex digits of SHA-256 over "number fingerprint" lines, in number order.
pub fn digest(keys: &std::collections::BTreeMap<u64, crate::core::key::Fingerprint>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_credential_key_says_stored_credentials_are_at_stake_and_a_token_key_tokens() {
        let v = |credentials: bool, number: Option<u64>| RetentionViolation {
            path: PathBuf::from("k/1"),
            number,
            fingerprint: crate::core::key::Fingerprint::NONE,
            until: DateTime::<Utc>::MAX_UTC,
            credentials,
        };
        for n in [Some(1), None] {
            let token = v(false, n).what();
            assert!(token.contains("tokens it encrypted"), "{token}");
            let cred = v(true, n).what();
            assert!(
                cred.contains("stored credentials may still be encrypted with it")
                    && cred.contains("cannot be decrypted")
                    && !cred.contains("token")
                    && !cred.contains("until +"),
                "{cred}"
            );
        }
        assert!(v(true, Some(1)).what().contains("verified migration"));
    }
}
