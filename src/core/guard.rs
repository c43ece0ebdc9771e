//! The one gate every removal or overwrite of a key file passes, whatever asked for it (a
//! rotation's purge, a cluster key set being applied, recovery, repair, setup).
//!
//! The rule: **key material that may still decrypt a live token never leaves the repository.**
//! Material is judged by fingerprint, so a key that only changes its number (key 0 promoted to
//! `max + 1`) leaves nothing behind; a file overwritten with another key, or removed, does. A
//! key may still decrypt a live token when it is
//! - the primary (it encrypts new tokens now),
//! - a key that was ever primary and was demoted less than the retention ago, by the clock
//!   that says the least time has passed ([`crate::core::clock`]),
//! - or a key fernetd knows nothing about (its demotion is unknown, so it counts from now).
//!
//! The staged key 0 that was never primary encrypted nothing: replacing it loses no token.
//!
//! Invariant: pure. The repository asks before it touches a file; what to do with a refusal
//! (keep the keys, refuse the input, say so) is the caller's.

use crate::core::change::{Change, Slot};
use crate::core::clock::Now;
use crate::core::history::History;
use crate::core::key::Fingerprint;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// A key the change would lose while it may still decrypt a live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub number: u64,
    pub fingerprint: Fingerprint,
    pub why: Live,
}

/// Why a key may still decrypt a live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// The primary: tokens are being made with it now.
    Primary,
    /// Demoted (or, for a secondary never seen primary, first seen) less than the retention
    /// ago: its tokens may live until then.
    Until(DateTime<Utc>),
    /// No history for it: fernetd cannot tell when it was demoted, so it counts from now.
    Unknown,
}

impl std::fmt::Display for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Live::Primary => f.write_str("the primary"),
            Live::Until(t) => write!(
                f,
                "until {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Live::Unknown => f.write_str("no history, dated now"),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {} ({})", self.number, self.why)
    }
}

/// Whether the key `number` with `fingerprint`, on a disk whose primary is `primary`, may
/// still decrypt a live token; `None` when it cannot.
pub fn live(
    number: u64,
    fingerprint: Fingerprint,
    primary: u64,
    history: &History,
    retention: Duration,
    now: &Now,
) -> Option<Live> {
    if number == primary {
        return Some(Live::Primary);
    }
    // The record of this very material, under whatever number history knows it.
    let record = history
        .keys
        .get(&number)
        .filter(|r| r.fingerprint == fingerprint)
        .or_else(|| history.keys.values().find(|r| r.fingerprint == fingerprint));
    match record {
        // A staged key that was never primary encrypted nothing.
        _ if number == 0 && record.is_none_or(|r| r.promoted.is_none()) => None,
        None => Some(Live::Unknown),
        Some(r) => {
            let until = r.retained_until(retention, now);
            (until > now.wall).then_some(Live::Until(until))
        }
    }
}

/// What changing the repository from `disk` to `after` (number -> fingerprint, both) would
/// lose: every key of `disk` that may still decrypt a live token and whose material `after`
/// holds under no number. Empty when the change is safe.
pub fn losses(
    disk: &BTreeMap<u64, Fingerprint>,
    after: &BTreeMap<u64, Fingerprint>,
    history: &History,
    retention: Duration,
    now: &Now,
) -> Vec<Loss> {
    if disk.is_empty() {
        return Vec::new();
    }
    // Keystone encrypts with the highest key, key 0 when it is alone.
    let primary = crate::core::history::primary(disk.keys().copied()).unwrap_or(0);
    let kept: std::collections::BTreeSet<Fingerprint> = after.values().copied().collect();
    disk.iter()
        .filter(|(_, fp)| !kept.contains(fp))
        .filter_map(|(&number, &fingerprint)| {
            live(number, fingerprint, primary, history, retention, now).map(|why| Loss {
                number,
                fingerprint,
                why,
            })
        })
        .collect()
}

/// "keys that may still decrypt live tokens: key 3 (until …), key 4 (the primary)".
pub fn describe(losses: &[Loss]) -> String {
    let parts: Vec<String> = losses.iter().map(Loss::to_string).collect();
    format!(
        "keys that may still decrypt live tokens: {}",
        parts.join(", ")
    )
}

/// Whether a node may apply a cluster key set `set` over its `disk` and `local` history, and
/// what it must keep beyond the set: the one rule for `Repository::apply` and `status`.
///
/// Refused: a set that is not a successor of the one applied here (older, another cluster's,
/// other keys under the same generation); a set that would remove a key that may still
/// decrypt a live token (judged with `retention`) unless its primary is newer than the disk's
/// (a node that was cut off catches up, and keeps such keys beyond the set until their
/// retention ends) and it does not put other material under that key's number. A set the
/// operator forced, or that follows a forced purge the node never took
/// ([`forced_for`](crate::core::keyset::forced_for)), removes what it drops.
pub fn admission(
    set: &crate::core::keyset::KeySet,
    disk: &BTreeMap<u64, Fingerprint>,
    local: &History,
    retention: Duration,
    now: &Now,
) -> Result<Vec<Loss>, Refusal> {
    let succession = crate::core::keyset::succession(local, set);
    if !succession.acceptable() {
        return Err(Refusal::NotSuccessor(succession.to_string()));
    }
    let (held, offered) = (local.lineage.as_ref(), set.history.lineage.as_ref());
    if crate::core::keyset::forced_now(held, offered) {
        return Ok(Vec::new());
    }
    let wanted = set.fingerprints();
    let mut lost = losses(disk, &wanted, local, retention, now);
    if crate::core::keyset::purge_missed(held, offered) {
        // The purge it missed covers the cluster's keys, which fernetd made; a key another
        // tool made here (keystone-manage while the daemon was away) is no key the operator
        // purged: kept while it may decrypt a token, as any.
        lost.retain(|l| !local.made(l.fingerprint));
    }
    let disk_primary = crate::core::history::primary(disk.keys().copied()).unwrap_or(0);
    let newer = set.primary().is_some_and(|p| p > disk_primary);
    if !lost.is_empty() && (!newer || lost.iter().any(|l| wanted.contains_key(&l.number))) {
        return Err(Refusal::Losses(lost));
    }
    Ok(lost)
}

/// [`admission`], its refusal worded as a node and `status` say it.
pub fn admit(
    set: &crate::core::keyset::KeySet,
    disk: &BTreeMap<u64, Fingerprint>,
    local: &History,
    retention: Duration,
    now: &Now,
) -> Result<Vec<Loss>, String> {
    admission(set, disk, local, retention, now).map_err(|r| r.applying())
}

/// Why the gate refused a change. Worded by the caller; nothing in it is key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Keys that may still decrypt a live token would leave the repository.
    Losses(Vec<Loss>),
    /// Repair copies of material that may still be needed would be dropped (the key is in
    /// the history, or was lost outside fernetd inside its retention).
    LiveCopies(Vec<Fingerprint>),
    /// A cluster key set that does not succeed the one applied here (its reason).
    NotSuccessor(String),
}

impl Refusal {
    /// "it would remove keys that may still decrypt live tokens: …" (a rotation, a repair).
    pub fn would(&self) -> String {
        match self {
            Refusal::Losses(l) => format!("it would remove {}", describe(l)),
            Refusal::LiveCopies(fps) => {
                let parts: Vec<String> = fps.iter().map(Fingerprint::to_string).collect();
                format!(
                    "it would delete the repair copies of keys that may still be needed: {}",
                    parts.join(", ")
                )
            }
            Refusal::NotSuccessor(reason) => reason.clone(),
        }
    }

    /// "applying it would remove …" (a cluster key set).
    pub fn applying(&self) -> String {
        match self {
            Refusal::Losses(l) => format!("applying it would remove {}", describe(l)),
            other => other.would(),
        }
    }
}

/// A change the gate approved: the only thing the repository's executor makes. Only
/// [`approve`] builds one, and it is used once (not `Clone`).
#[derive(Debug)]
pub struct Approval {
    change: Change,
}

impl Approval {
    /// The approved change.
    pub fn change(&self) -> &Change {
        &self.change
    }
}

/// Judges `change` against `history`: refused when a key that may still decrypt a live token
/// (the primary, a key inside its `retention`, a key without history) leaves the repository
/// (its material under no name afterwards) unless `force` (a purge the operator forced, a
/// cluster set the operator forced), or when a repair copy the history still keeps
/// ([`History::copies_kept`]) would be dropped, forced or not.
///
/// An unreadable file counts as the material the history knows under its number: writing
/// over it loses that material unless the change puts it under some name. An unreadable file
/// the history knows nothing of holds nothing the gate can judge. The staged key 0 that was
/// never primary encrypted nothing: replacing it loses nothing.
pub fn approve(
    change: Change,
    history: &History,
    retention: Duration,
    now: &Now,
    force: bool,
) -> Result<Approval, Refusal> {
    let kept = history.copies_kept(now);
    let live_copies: Vec<Fingerprint> = change
        .copies_dropped
        .iter()
        .filter(|fp| kept.contains(fp))
        .copied()
        .collect();
    if !live_copies.is_empty() {
        return Err(Refusal::LiveCopies(live_copies));
    }
    let material = |slots: &BTreeMap<u64, Slot>| -> BTreeMap<u64, Fingerprint> {
        slots
            .iter()
            .filter_map(|(&n, slot)| match slot {
                Slot::Key(fp) => Some((n, *fp)),
                Slot::Unreadable => history.keys.get(&n).map(|r| (n, r.fingerprint)),
            })
            .collect()
    };
    let lost = losses(
        &material(&change.before),
        &material(&change.after),
        history,
        retention,
        now,
    );
    if !lost.is_empty() && !force {
        return Err(Refusal::Losses(lost));
    }
    Ok(Approval { change })
}

/// A key whose material left the disk without fernetd purging it (removed, or its file
/// overwritten with other material) while it may still decrypt a live token: tokens made
/// with it fail until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub number: u64,
    pub fingerprint: Fingerprint,
    pub until: DateTime<Utc>,
}

/// The keys `history` records whose material `disk` (number -> fingerprint) holds under no
/// number, and that may still decrypt a live token at `now`: the primary, and any key above
/// every recorded key still on disk (Keystone made tokens with the highest key left, up to
/// the moment it went, which is dated now), or a key inside its retention. The staged
/// key 0 encrypted nothing, unless the disk shows a rotation fernetd did not make (a key
/// numbered above the recorded primary): then it was promoted, to the primary's number + 1,
/// and may have made tokens until it went. Pure: the one judgement `setup`, `rotate`, the
/// daemon, `status` and `check` make of a disk that changed outside fernetd.
pub fn lost(
    history: &History,
    disk: &BTreeMap<u64, Fingerprint>,
    retention: Duration,
    now: &Now,
) -> Vec<Lost> {
    let present: std::collections::BTreeSet<Fingerprint> = disk.values().copied().collect();
    let primary = history.primary();
    let top = primary.unwrap_or(0);
    let rotated_elsewhere = disk.keys().any(|&n| n > top);
    // The highest recorded key still on disk: Keystone's primary among them.
    let top_present = crate::core::history::primary(
        history
            .keys
            .iter()
            .filter(|(_, r)| present.contains(&r.fingerprint))
            .map(|(&n, _)| n),
    );
    history
        .keys
        .iter()
        .filter(|(&n, r)| (n != 0 || rotated_elsewhere) && !present.contains(&r.fingerprint))
        .filter_map(|(&n, r)| {
            let (number, until) = if n == 0 {
                (top.saturating_add(1), from_now(retention, now))
            } else if top_present.is_none_or(|t| n > t) {
                (n, from_now(retention, now))
            } else {
                (n, r.retained_until(retention, now))
            };
            (until > now.wall).then_some(Lost {
                number,
                fingerprint: r.fingerprint,
                until,
            })
        })
        .collect()
}

/// Every loss still open at `now`: those `history` recorded (`purged[].lost_until`), and
/// those `disk` shows that it has not recorded yet ([`lost`]). What `status`, `check`,
/// `rotate` and the daemon report, critical until each one's `until`.
pub fn open_losses(
    history: &History,
    disk: &BTreeMap<u64, Fingerprint>,
    retention: Duration,
    now: &Now,
) -> Vec<Lost> {
    let mut out: Vec<Lost> = history
        .purged
        .iter()
        .filter_map(|p| {
            let until = p.lost_open_until(now)?;
            Some(Lost {
                number: p.number,
                fingerprint: p.fingerprint,
                until,
            })
        })
        .collect();
    out.extend(lost(history, disk, retention, now));
    out
}

/// The keys Keystone may have made tokens with since fernetd last looked, the recorded
/// primary being gone from `disk`: every key below the primary down to the highest key
/// `disk` still holds (Keystone took the highest key left each time one went). Restoring
/// keys above them (repair) makes them secondaries again, demoted then; repair restores those
/// that are gone too. Pure.
pub fn stood_in(history: &History, disk: &BTreeMap<u64, Fingerprint>) -> Vec<u64> {
    let holds = |n: u64| {
        history
            .keys
            .get(&n)
            .is_some_and(|r| disk.get(&n) == Some(&r.fingerprint))
    };
    let Some(primary) = history.primary().filter(|&p| !holds(p)) else {
        return Vec::new();
    };
    // Keystone's primary among the keys below it still held.
    let top = crate::core::history::primary(
        history
            .keys
            .keys()
            .copied()
            .filter(|&n| n < primary && holds(n)),
    );
    history
        .keys
        .keys()
        .copied()
        .filter(|&n| n > 0 && n < primary && top.is_none_or(|t| n >= t))
        .collect()
}

/// Brings `history` in line with `disk` ([`History::reconcile`]) and records, with each
/// removal, the keys lost inside their retention ([`lost`]) so that the state file alone
/// says it until then. Returns what changed and what was lost. Pure.
pub fn reconcile(
    history: &mut History,
    disk: &BTreeMap<u64, Fingerprint>,
    retention: Duration,
    now: &Now,
) -> (Vec<crate::core::history::Observation>, Vec<Lost>) {
    let lost = lost(history, disk, retention, now);
    let notes = history.reconcile(disk, now.clone());
    for l in &lost {
        history.record_loss(l.number, l.fingerprint, l.until);
    }
    history.keep_removed_copies(retention, now);
    (notes, lost)
}

/// The end of a retention that starts now (for a key this very change demotes).
pub fn from_now(retention: Duration, now: &Now) -> DateTime<Utc> {
    crate::core::history::later(now.wall, retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Key;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    const RET: Duration = Duration::from_secs(10 * 3600);

    /// {0, 1, 2, 3} with 3 primary, 1 and 2 demoted at t(0) and t(5), seen at t(0).
    fn repo() -> (BTreeMap<u64, Fingerprint>, History) {
        let fps: Vec<Fingerprint> = (0..5)
            .map(|_| Key::generate().unwrap().fingerprint())
            .collect();
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, fps[1]), (1, fps[0])]), t(-20));
        h.record_rotation(2, fps[2], t(0));
        h.record_rotation(3, fps[3], t(5));
        let disk = h.fingerprints();
        (disk, h)
    }

    /// What `lost` says, as (number, until).
    fn said(
        h: &History,
        disk: &BTreeMap<u64, Fingerprint>,
        now: DateTime<Utc>,
    ) -> Vec<(u64, DateTime<Utc>)> {
        lost(h, disk, RET, &Now::from(now))
            .into_iter()
            .map(|l| (l.number, l.until))
            .collect()
    }

    #[test]
    fn a_lost_key_counts_until_its_window_closes_and_the_highest_left_from_now() {
        let (disk, h) = repo();
        // Nothing gone: nothing lost.
        assert!(said(&h, &disk, t(6)).is_empty());
        // Key 2, demoted at t(5): lost until t(15). Key 1, demoted at t(0): until t(10).
        let mut d = disk.clone();
        d.remove(&2);
        assert_eq!(said(&h, &d, t(6)), vec![(2, t(15))]);
        d.remove(&1);
        assert_eq!(said(&h, &d, t(6)), vec![(1, t(10)), (2, t(15))]);
        // After its window: no loss.
        assert_eq!(said(&h, &d, t(12)), vec![(2, t(15))]);
        assert!(said(&h, &d, t(16)).is_empty());
        // Replaced by other material: the same loss.
        let mut d = disk.clone();
        d.insert(2, Key::generate().unwrap().fingerprint());
        assert_eq!(said(&h, &d, t(6)), vec![(2, t(15))]);
        // The primary, and the keys above every recorded key still on disk, count from now.
        let mut d = disk.clone();
        d.remove(&3);
        d.remove(&2);
        assert_eq!(said(&h, &d, t(30)), vec![(2, t(40)), (3, t(40))]);
        // Renumbered (promoted elsewhere) is not lost.
        let mut d = disk.clone();
        let staged = d.remove(&0).unwrap();
        d.insert(4, staged);
        d.insert(0, Key::generate().unwrap().fingerprint());
        assert!(said(&h, &d, t(6)).is_empty());
    }

    #[test]
    fn a_staged_key_is_lost_only_when_a_rotation_elsewhere_promoted_it() {
        let (disk, h) = repo();
        let mut d = disk.clone();
        d.insert(0, Key::generate().unwrap().fingerprint());
        assert!(
            said(&h, &d, t(6)).is_empty(),
            "a staged key encrypted nothing"
        );
        // Key 4 appeared above the primary: the old key 0 became 4 and then went.
        d.insert(4, Key::generate().unwrap().fingerprint());
        assert_eq!(said(&h, &d, t(6)), vec![(4, t(16))]);
    }

    #[test]
    fn reconcile_records_each_loss_and_status_reads_it_back() {
        let (disk, mut h) = repo();
        let mut d = disk.clone();
        d.remove(&2);
        let now = Now::from(t(6));
        let (_, lost) = reconcile(&mut h, &d, RET, &now);
        assert_eq!(lost.len(), 1);
        assert_eq!(h.purged.last().unwrap().lost_until, Some(t(15)));
        // Recorded: the history matches the disk and still says it, until then.
        let open = |at| open_losses(&h, &h.fingerprints(), RET, &Now::from(at));
        assert_eq!(open(t(14)).len(), 1);
        assert!(open(t(15)).is_empty());
        // Its copy stays while its tokens live, then goes.
        let fp = lost[0].fingerprint;
        assert!(h.copies_kept(&t(14).into()).contains(&fp));
        assert!(!h.copies_kept(&t(15).into()).contains(&fp));
    }

    #[test]
    fn the_key_that_stood_in_for_a_missing_primary_is_named() {
        let (disk, h) = repo();
        assert!(stood_in(&h, &disk).is_empty());
        let mut d = disk.clone();
        d.remove(&3);
        assert_eq!(stood_in(&h, &d), vec![2]);
        // Key 2 went too: it stood in, then key 1.
        d.remove(&2);
        assert_eq!(stood_in(&h, &d), vec![1, 2]);
    }

    #[test]
    fn the_primary_and_keys_inside_retention_never_leave() {
        let (disk, h) = repo();
        let now: Now = t(11).into();
        let mut after = disk.clone();
        after.remove(&3);
        after.remove(&2);
        after.remove(&1);
        let lost = losses(&disk, &after, &h, RET, &now);
        let numbers: Vec<u64> = lost.iter().map(|l| l.number).collect();
        assert_eq!(numbers, vec![2, 3], "{lost:?}");
        assert_eq!(lost[0].why, Live::Until(t(15)));
        assert_eq!(lost[1].why, Live::Primary);
        // Key 1 was demoted at t(0): its retention is over at t(10).
        assert!(losses(&disk, &after, &h, RET, &t(16).into()).len() == 1);
    }

    #[test]
    fn a_promotion_loses_nothing_and_a_never_primary_staged_key_may_be_replaced() {
        let (disk, h) = repo();
        let now: Now = t(6).into();
        // Keystone's rotation: 0 -> 4, a new key 0.
        let mut after = disk.clone();
        let staged = after.remove(&0).unwrap();
        after.insert(4, staged);
        after.insert(0, Key::generate().unwrap().fingerprint());
        assert!(losses(&disk, &after, &h, RET, &now).is_empty());
        // Key 0 replaced by another staged key: it never encrypted a token.
        let mut swapped = disk.clone();
        swapped.insert(0, Key::generate().unwrap().fingerprint());
        assert!(losses(&disk, &swapped, &h, RET, &now).is_empty());
        // Every key replaced: the primary and keys 1 and 2 (inside retention) are lost.
        let foreign: BTreeMap<u64, Fingerprint> = disk
            .keys()
            .map(|&n| (n, Key::generate().unwrap().fingerprint()))
            .collect();
        assert_eq!(losses(&disk, &foreign, &h, RET, &now).len(), 3);
    }

    #[test]
    fn a_key_without_history_counts_as_live() {
        let (disk, _) = repo();
        let lost = losses(
            &disk,
            &BTreeMap::new(),
            &History::new(),
            RET,
            &t(100).into(),
        );
        assert_eq!(lost.len(), 3, "0 excluded: {lost:?}");
        assert!(lost.iter().any(|l| l.why == Live::Unknown));
    }

    #[test]
    fn a_wall_clock_step_does_not_end_a_retention() {
        use crate::core::clock::BootStamp;
        let stamp = |h: u64| {
            Some(BootStamp {
                boot: "b".into(),
                ms: h * 3_600_000,
            })
        };
        let (disk, mut h) = repo();
        let demoted_at = Now {
            wall: t(5),
            boot: stamp(5),
        };
        h.keys.get_mut(&2).unwrap().since_boot = demoted_at.boot.clone();
        let mut after = disk.clone();
        after.remove(&2);
        // 72 h on the wall clock, 1 h on the boot clock.
        let stepped = Now {
            wall: t(77),
            boot: stamp(6),
        };
        let lost = losses(&disk, &after, &h, RET, &stepped);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].why, Live::Until(t(77) + chrono::Duration::hours(9)));
        // After a reboot only the wall clock is left.
        let rebooted = Now {
            wall: t(77),
            boot: Some(BootStamp {
                boot: "c".into(),
                ms: 0,
            }),
        };
        assert!(losses(&disk, &after, &h, RET, &rebooted).is_empty());
    }

    #[test]
    fn a_verified_migration_closes_only_the_credential_losses_recorded_before_it_began() {
        use crate::core::clock::BootStamp;
        // A credential key counts for ever (`config::CREDENTIAL_KEY_RETENTION`).
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
        let at = |h: i64, boot_h: u64| Now {
            wall: t(h),
            boot: Some(BootStamp {
                boot: "b".into(),
                ms: boot_h * 3_600_000,
            }),
        };
        let (disk, mut h) = repo();
        // keystone-manage credential_rotate at t(6): 0 -> 4, a new 0, key 1 purged.
        let mut d = disk.clone();
        let staged = d.remove(&0).unwrap();
        d.remove(&1);
        d.insert(4, staged);
        d.insert(0, Key::generate().unwrap().fingerprint());
        let (_, lost) = reconcile(&mut h, &d, FOREVER, &at(6, 6));
        assert_eq!(lost.iter().map(|l| l.number).collect::<Vec<_>>(), vec![1]);
        let gone = lost[0].fingerprint;
        let open = |h: &History, now: &Now| -> Vec<u64> {
            open_losses(h, &h.fingerprints(), FOREVER, now)
                .iter()
                .map(|l| l.number)
                .collect()
        };
        // Verified on a key that is no longer the primary (key 3, before the rotation): nothing.
        assert!(h.close_verified_losses(d[&3], &d, &at(7, 7)).is_empty());
        // A verification older than the loss: nothing.
        assert!(h.close_verified_losses(d[&4], &d, &at(5, 5)).is_empty());
        // One whose wall clock says later but whose boot clock says earlier (a step): nothing.
        assert!(h.close_verified_losses(d[&4], &d, &at(8, 5)).is_empty());
        assert_eq!(open(&h, &at(8, 8)), vec![1]);
        // Verified on the primary after the loss: closed, its repair copy still kept.
        assert_eq!(h.close_verified_losses(d[&4], &d, &at(7, 7)), vec![1]);
        assert!(open(&h, &at(8, 8)).is_empty());
        assert!(h.copies_kept(&at(8, 8)).contains(&gone));
        // A loss found after that verification began stays open under it, and closes under
        // the next one.
        let mut later = d.clone();
        later.remove(&2);
        reconcile(&mut h, &later, FOREVER, &at(9, 9));
        assert!(h
            .close_verified_losses(later[&4], &later, &at(7, 7))
            .is_empty());
        assert_eq!(open(&h, &at(10, 10)), vec![2]);
        assert_eq!(
            h.close_verified_losses(later[&4], &later, &at(10, 10)),
            vec![2]
        );
        assert!(open(&h, &at(11, 11)).is_empty());
    }

    /// The change from `disk` to `after` (both readable keys).
    fn change(disk: &BTreeMap<u64, Fingerprint>, after: &BTreeMap<u64, Fingerprint>) -> Change {
        let mut c = Change::from(crate::core::change::slots(disk, []));
        c.after = crate::core::change::slots(after, []);
        c
    }

    #[test]
    fn writing_over_an_unreadable_live_key_is_refused_unless_its_material_stays() {
        let (disk, h) = repo();
        let now: Now = t(6).into();
        // Key 2 (demoted at t(5)) is unreadable on disk: the history knows its material.
        let mut readable = disk.clone();
        readable.remove(&2);
        let before = crate::core::change::slots(&readable, [2]);
        let mut over = Change::from(before.clone());
        over.put(2, Key::generate().unwrap().fingerprint());
        match approve(over, &h, RET, &now, false) {
            Err(Refusal::Losses(l)) => {
                assert_eq!(l.len(), 1);
                assert_eq!((l[0].number, l[0].why.clone()), (2, Live::Until(t(15))));
            }
            other => panic!("{other:?}"),
        }
        // Its own material written back (repair) loses nothing.
        let mut back = Change::from(before.clone());
        back.put(2, h.keys[&2].fingerprint);
        assert!(approve(back, &h, RET, &now, false).is_ok());
        // Left as it is, it is not lost either; removed, it is.
        assert!(approve(Change::from(before.clone()), &h, RET, &now, false).is_ok());
        let mut gone = Change::from(before);
        gone.remove_key(2);
        assert!(approve(gone, &h, RET, &now, false).is_err());
        // An unreadable file the history does not know holds nothing to judge.
        let mut unknown = Change::from(crate::core::change::slots(&disk, [7]));
        unknown.put(7, Key::generate().unwrap().fingerprint());
        assert!(approve(unknown, &h, RET, &now, false).is_ok());
    }

    #[test]
    fn a_copy_of_live_material_is_never_dropped_forced_or_not() {
        let (disk, mut h) = repo();
        let now: Now = t(6).into();
        for fp in disk.values() {
            let mut c = Change::from(crate::core::change::slots(&disk, []));
            c.drop_copy(&fp.to_string());
            for force in [false, true] {
                match approve(c.clone(), &h, RET, &now, force) {
                    Err(Refusal::LiveCopies(fps)) => assert_eq!(fps, vec![*fp]),
                    other => panic!("{other:?}"),
                }
            }
        }
        // Purged by fernetd: its copy may go. A stray temp file may go too.
        let purged = h.keys[&1].fingerprint;
        h.record_purge(1, t(6));
        let mut c = Change::default();
        c.drop_copy(&purged.to_string());
        c.drop_copy(&format!("{purged}.tmp"));
        assert!(approve(c, &h, RET, &now, false).is_ok());
        // Lost outside fernetd: kept until its window closes, then it may go.
        let mut d = h.fingerprints();
        d.remove(&2);
        let lost_fp = h.keys[&2].fingerprint;
        let (_, lost) = reconcile(&mut h, &d, RET, &now);
        assert_eq!(lost.len(), 1);
        let mut c = Change::default();
        c.drop_copy(&lost_fp.to_string());
        assert!(approve(c.clone(), &h, RET, &t(14).into(), false).is_err());
        assert!(approve(c, &h, RET, &t(15).into(), false).is_ok());
    }

    #[test]
    fn a_never_primary_staged_key_is_replaceable_and_force_removes_live_keys() {
        let (disk, h) = repo();
        let now: Now = t(6).into();
        let mut swapped = disk.clone();
        swapped.insert(0, Key::generate().unwrap().fingerprint());
        let approval = approve(change(&disk, &swapped), &h, RET, &now, false).unwrap();
        assert!(approval.change().writes(0, swapped[&0]));
        // A purge of key 2 (inside its retention) and key 3 (the primary): refused, named.
        let mut purged = disk.clone();
        purged.remove(&2);
        purged.remove(&3);
        match approve(change(&disk, &purged), &h, RET, &now, false) {
            Err(r @ Refusal::Losses(_)) => assert_eq!(
                r.would(),
                format!(
                    "it would remove keys that may still decrypt live tokens: key 2 (until {}), \
                     key 3 (the primary)",
                    t(15).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            ),
            other => panic!("{other:?}"),
        }
        // Forced (--force-purge, a forced cluster set): approved as it is.
        let forced = approve(change(&disk, &purged), &h, RET, &now, true).unwrap();
        assert_eq!(forced.change().removals(), vec![2, 3]);
        // After key 2's retention, only the primary would be lost.
        let mut old = disk.clone();
        old.remove(&1);
        assert!(approve(change(&disk, &old), &h, RET, &t(11).into(), false).is_ok());
    }

    proptest! {
        /// Whatever the change, the primary and every key inside its retention survive it or
        /// are named.
        #[test]
        fn every_live_key_that_leaves_is_named(
            drop in proptest::collection::vec(any::<bool>(), 4),
            hours in 0i64..40,
        ) {
            let (disk, h) = repo();
            let now: Now = t(hours).into();
            let after: BTreeMap<u64, Fingerprint> = disk
                .iter()
                .zip(&drop)
                .filter(|(_, d)| !**d)
                .map(|((n, fp), _)| (*n, *fp))
                .collect();
            let lost = losses(&disk, &after, &h, RET, &now);
            for (n, fp) in &disk {
                let gone = !after.values().any(|f| f == fp);
                let must_stay = *n == 3
                    || (*n > 0 && h.keys[n].retained_until(RET, &now) > now.wall);
                prop_assert_eq!(gone && must_stay, lost.iter().any(|l| l.number == *n));
            }
        }
    }
}
