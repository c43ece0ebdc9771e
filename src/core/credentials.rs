//! When a credential key may be demoted and the old secondary purged, decided purely.
//!
//! A credential key protects data that never expires (EC2 secrets, TOTP seeds in Keystone's
//! database), so "live" is not a window of time: a key is needed while any stored credential
//! is encrypted with it. fernetd therefore never trusts the `pre_rotate` hook's exit status
//! alone. Before the hook runs it records the primary key; after it, the `verify` command
//! (Keystone's own pre-rotation check, `packaging/keystone/verify-credentials`) must print
//! `primary_key_hash=H` where H is Keystone's hash of that very primary (SHA-1 of the key
//! file's text, `keystone.credential.providers.fernet.core.primary_key_hash`). Only then may
//! the rotation run, and only while the primary is still that key (checked under the
//! repository lock, and in the cluster's transaction).
//!
//! Invariant: pure. Running the commands and reading the keys happens in `crate::credentials`.

use crate::core::key::Fingerprint;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;

/// How long fernetd counts a demoted credential key as live: for ever, in practice. A
/// credential key stays needed while a stored credential is encrypted with it, which no time
/// tells; only a verified migration lets a rotation purge it (see [`crate::credentials`]).
pub const KEY_RETENTION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// Where the packages install Keystone's check, and the Python that runs it: the default
/// `[credentials] verify`.
pub const DEFAULT_VERIFY: [&str; 2] = ["/usr/bin/python3", "/usr/lib/fernetd/verify-credentials"];

/// The primary of a repository or key set: its highest-numbered key (key 0 is staged).
pub fn primary(keys: &BTreeMap<u64, Fingerprint>) -> Option<(u64, Fingerprint)> {
    keys.iter().rfind(|(&n, _)| n > 0).map(|(&n, &f)| (n, f))
}

/// Whether the primary is still the key the migration ran under and the verification
/// confirmed; the refusal says what happened instead.
pub fn still_primary(
    expected: Fingerprint,
    keys: &BTreeMap<u64, Fingerprint>,
) -> Result<(), String> {
    match primary(keys) {
        Some((_, f)) if f == expected => Ok(()),
        Some((n, f)) => Err(format!(
            "the primary is now key {n} (fingerprint {f}), not the key {expected} the \
             credentials were migrated to and verified on: a rotation happened in between \
             (another fernetd, keystone-manage credential_rotate); nothing purged, the next \
             rotation migrates again"
        )),
        None => Err(format!(
            "no primary key any more (the credentials were verified on key {expected}); \
             nothing purged"
        )),
    }
}

/// Keystone's `primary_key_hash`: the SHA-1 hex digest of the primary key file's text.
pub fn keystone_hash(key_text: &[u8]) -> String {
    Sha1::digest(key_text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the `verify` command's output says about the primary the migration ran under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every stored credential is encrypted with the expected primary.
    Verified,
    /// Not proven; the text says why (never key material: hashes only).
    Unverified(String),
}

/// Judges the `verify` command: it exited `success`, and its stdout carries
/// `primary_key_hash=H` with H the expected primary's hash, and no other hash. Anything else
/// (no line, a hash of another key, a failed exit) is unverified.
pub fn judge(success: bool, stdout: &str, expected_hash: &str) -> Verdict {
    let hashes: Vec<&str> = stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("primary_key_hash="))
        .map(|h| h.trim_end_matches(|c: char| !c.is_ascii_hexdigit()))
        .collect();
    if !success {
        return Verdict::Unverified(
            "the verify command did not succeed (the lines above say why)".into(),
        );
    }
    match hashes.as_slice() {
        [] => Verdict::Unverified(
            "the verify command printed no primary_key_hash= (is it Keystone's check?)".into(),
        ),
        [h] if h.eq_ignore_ascii_case(expected_hash) => Verdict::Verified,
        [h] => Verdict::Unverified(format!(
            "the verify command checked the credentials against another primary key \
             (primary_key_hash={h}, this repository's primary is {expected_hash}): another \
             key repository or a rotation in between"
        )),
        _ => Verdict::Unverified(
            "the verify command printed more than one primary_key_hash=; expected one".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_must_not_change_between_verification_and_rotation() {
        let fp = || crate::core::key::Key::generate().unwrap().fingerprint();
        let (a, b, zero) = (fp(), fp(), fp());
        let keys = BTreeMap::from([(0, zero), (1, b), (2, a)]);
        assert_eq!(primary(&keys), Some((2, a)));
        assert!(still_primary(a, &keys).is_ok());
        assert!(still_primary(b, &keys)
            .unwrap_err()
            .contains("primary is now key 2"));
        assert!(still_primary(a, &BTreeMap::from([(0, zero)])).is_err());
    }

    #[test]
    fn keystone_hash_is_sha1_hex_of_the_text() {
        // hashlib.sha1(b"abc").hexdigest()
        assert_eq!(
            keystone_hash(b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn only_the_expected_hash_after_success_verifies() {
        let h = keystone_hash(b"k");
        let line = format!("verified: 3 credentials on the primary key; primary_key_hash={h}\n");
        assert_eq!(judge(true, &line, &h), Verdict::Verified);
        assert!(matches!(judge(false, &line, &h), Verdict::Unverified(_)));
        assert!(matches!(judge(true, "", &h), Verdict::Unverified(_)));
        assert!(matches!(
            judge(true, "ok\n", &h),
            Verdict::Unverified(m) if m.contains("no primary_key_hash")
        ));
        let other = keystone_hash(b"other");
        assert!(matches!(
            judge(true, &format!("primary_key_hash={other}"), &h),
            Verdict::Unverified(m) if m.contains("another primary")
        ));
        let both = format!("primary_key_hash={h} primary_key_hash={other}");
        assert!(matches!(judge(true, &both, &h), Verdict::Unverified(_)));
    }
}
