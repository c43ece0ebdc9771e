//! What one rotation does, decided purely from the keys on disk and their history.
//!
//! Keystone's rule: key 0 becomes `max + 1`, a new key 0 is staged, and the lowest numbers are
//! purged until `max_active_keys - 1` non-zero keys remain. fernetd adds the retention guard:
//! a candidate for purging that may still decrypt a live token (demoted less than
//! `E + W + M` ago) is kept, and the decision says until when. `force_purge` restores
//! Keystone's count-only rule.
//!
//! Invariant: pure. The repository module executes the decision; nothing here touches disk.

use crate::core::clock::{later, Now};
use crate::core::history::History;
use crate::core::key::Fingerprint;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Parameters of one rotation.
#[derive(Debug, Clone, Copy)]
pub struct RotateParams {
    pub max_active_keys: u64,
    /// E + W + M: how long a demoted key must stay.
    pub retention: Duration,
    pub force_purge: bool,
    /// Credentials: the primary the migration ran under and the verification confirmed. The
    /// rotation runs only while it is still the primary (checked under the lock, or in the
    /// cluster's transaction): a rotation in between means the credentials are on another
    /// key's predecessor, and purging would lose them. `None` for tokens and receipts.
    pub expected_primary: Option<Fingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The number key 0 is promoted to.
    pub new_primary: u64,
    /// Keys to delete, lowest first.
    pub purge: Vec<u64>,
    /// Keys Keystone's count rule would delete but the guard keeps, with the time until which
    /// they may still decrypt a token.
    pub kept: Vec<(u64, DateTime<Utc>)>,
}

/// Decides one rotation. `numbers` are the key numbers on disk (must include 0).
/// The largest key number: no rotation can follow a key with it (the next would wrap to 0).
pub const MAX_KEY: u64 = u64::MAX;

pub fn decide(
    numbers: &[u64],
    history: &History,
    now: &Now,
    max_active_keys: u64,
    retention: Duration,
    force_purge: bool,
) -> Decision {
    let old_primary = crate::core::history::primary(numbers.iter().copied()).unwrap_or(0);
    // Callers refuse a repository holding MAX_KEY first; saturating keeps this total anyway.
    let new_primary = old_primary.saturating_add(1);
    // Non-zero keys after promotion, highest first.
    let mut after: Vec<u64> = numbers.iter().copied().filter(|&n| n > 0).collect();
    after.push(new_primary);
    after.sort_unstable_by(|a, b| b.cmp(a));
    let keep_count = max_active_keys.saturating_sub(1) as usize;
    let mut purge = Vec::new();
    let mut kept = Vec::new();
    for &n in after.iter().skip(keep_count).rev() {
        let until = if n == old_primary {
            // Demoted by this very rotation.
            later(now.wall, retention)
        } else {
            history
                .keys
                .get(&n)
                .map(|r| r.retained_until(retention, now))
                .unwrap_or_else(|| later(now.wall, retention))
        };
        if force_purge || until <= now.wall {
            purge.push(n);
        } else {
            kept.push((n, until));
        }
    }
    purge.sort_unstable();
    kept.sort_unstable();
    Decision {
        new_primary,
        purge,
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Key;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    const RET: Duration = Duration::from_secs(49 * 3600);

    fn adopted(numbers: &[u64], at: DateTime<Utc>) -> History {
        let disk: BTreeMap<_, _> = numbers
            .iter()
            .map(|&n| (n, Key::generate().unwrap().fingerprint()))
            .collect();
        let mut h = History::new();
        h.reconcile(&disk, at);
        h
    }

    #[test]
    fn count_rule_when_retention_has_passed() {
        let h = adopted(&[0, 1, 2, 3], t(0));
        let d = decide(&[0, 1, 2, 3], &h, &t(100).into(), 3, RET, false);
        assert_eq!(d.new_primary, 4);
        assert_eq!(d.purge, vec![1, 2]);
        assert!(d.kept.is_empty());
    }

    #[test]
    fn guard_keeps_keys_inside_retention() {
        let h = adopted(&[0, 1, 2, 3], t(0));
        let d = decide(&[0, 1, 2, 3], &h, &t(24).into(), 3, RET, false);
        assert!(d.purge.is_empty());
        assert_eq!(d.kept, vec![(1, t(49)), (2, t(49))]);
        let forced = decide(&[0, 1, 2, 3], &h, &t(24).into(), 3, RET, true);
        assert_eq!(forced.purge, vec![1, 2]);
    }

    #[test]
    fn the_key_demoted_now_is_kept_with_two_keys() {
        let h = adopted(&[0, 1], t(0));
        let d = decide(&[0, 1], &h, &t(100).into(), 2, RET, false);
        assert_eq!(d.kept, vec![(1, t(149))]);
    }

    proptest! {
        /// Against Keystone's count-only model: the guard only ever keeps more, never fewer,
        /// and never purges a key that may still decrypt a live token.
        #[test]
        fn guard_is_keystone_plus_retention(
            highest in 1u64..30,
            max_keys in 2u64..8,
            age_hours in 0i64..200,
        ) {
            let numbers: Vec<u64> = std::iter::once(0).chain(1..=highest).collect();
            let h = adopted(&numbers, t(0));
            let now: Now = t(age_hours).into();
            let keystone = decide(&numbers, &h, &now, max_keys, RET, true);
            let guarded = decide(&numbers, &h, &now, max_keys, RET, false);
            let mut all: Vec<u64> = guarded.purge.clone();
            all.extend(guarded.kept.iter().map(|k| k.0));
            all.sort_unstable();
            prop_assert_eq!(&all, &keystone.purge);
            let survivors = numbers.len() as u64 + 1 - keystone.purge.len() as u64 - 1;
            prop_assert_eq!(survivors, max_keys.min(highest + 2) - 1);
            for n in &guarded.purge {
                prop_assert!(h.keys[n].retained_until(RET, &now) <= now.wall);
            }
        }
    }
}
