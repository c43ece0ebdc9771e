//! Random operation sequences against a model of Keystone's semantics, on a real directory,
//! through the library's public API with simulated time.
//!
//! Operations: fernetd rotate (guarded or `--force-purge`), fernetd setup, time passing, an
//! external rotation done exactly as `keystone-manage fernet_rotate` does it, steps of the wall
//! clock (forward by up to days, or back), reboots (a new boot clock; the wall clock right
//! again), a rollback of `.fernetd/state.json` to a copy taken earlier (a restored backup), and
//! its deletion.
//! fernetd sees the stepped wall clock and the boot clock; the model keeps the real time. What
//! fernetd cannot know is not modelled: a wall clock that is wrong before fernetd first records
//! a moment of the boot (it runs `setup` when the daemon starts with the system), or one that
//! stepped back while it recorded, and was corrected by a reboot.
//! Outside damage while no daemon runs: a key deleted, replaced by another valid key, or
//! corrupted (an operator then moves a corrupted file aside when fernetd refuses it), and a
//! repair copy corrupted; each run has `repair` on or off. `status` is an operation too (the
//! judgement `fernetd status` and `check` make, which writes nothing).
//! After every fernetd operation:
//! - Keystone semantics hold: key 0 became `max + 1` with the same content, a new key 0 exists,
//!   no surviving key changed; with force_purge the key numbers are exactly Keystone's;
//! - safety: every key demoted less than the retention ago is on disk, and the token issued
//!   with it still decrypts (keys Keystone itself purged are Keystone's doing and excluded);
//! - after a quiet period longer than the retention, a guarded rotation purges exactly as
//!   Keystone would (the guard never keeps keys forever);
//! - a key fernetd knew that was lost outside it inside its window (and not restored) is
//!   reported critical, by setup, rotate and status alike, until no earlier than the model's
//!   end of its window (a step of the wall clock included: a loss counts by the boot clock;
//!   except across a rolled-back or deleted state file, which no record can survive);
//! - with repair, a copy of live material is never removed.

mod common;
use chrono::{DateTime, TimeZone, Utc};
use common::{keys, multifernet};
use fernetd::core::clock::{BootStamp, Now};
use fernetd::repository::{Outcome, Repository, RotateParams};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const HOUR: i64 = 3600;
const RETENTION_H: i64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Rotate {
        force: bool,
    },
    Setup,
    Advance {
        hours: i64,
    },
    /// `keystone-manage fernet_rotate`, `times` times in a row (operators' scripts that
    /// rotate on every playbook run do exactly this).
    KeystoneRotate {
        times: u8,
    },
    /// The wall clock steps by `hours` (an NTP step, a VM resumed); real time does not move.
    ClockStep {
        hours: i64,
    },
    /// A reboot: a new boot clock, and the wall clock is right again.
    Reboot,
    /// `.fernetd/state.json` is replaced by the copy saved `back` fernetd operations ago.
    RestoreState {
        back: usize,
    },
    /// `.fernetd/state.json` is deleted (as the state-unreadable message advises for a
    /// broken one): fernetd adopts the keys on disk without history.
    DeleteState,
    /// What `fernetd status` (and `check`) judge: writes nothing.
    Status,
    /// An operator deletes a non-zero key (the `pick`th, modulo), replaces it with another
    /// valid key, or corrupts it.
    Damage {
        pick: usize,
        how: Damage,
    },
    /// A repair copy is overwritten with garbage.
    CorruptCopy {
        pick: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Delete,
    Replace,
    Corrupt,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|force| Op::Rotate { force }),
        1 => Just(Op::Setup),
        3 => (0i64..5).prop_map(|hours| Op::Advance { hours }),
        2 => (1u8..3).prop_map(|times| Op::KeystoneRotate { times }),
        1 => prop_oneof![(1i64..100), (-5i64..0)].prop_map(|hours| Op::ClockStep { hours }),
        1 => Just(Op::Reboot),
        1 => (1usize..4).prop_map(|back| Op::RestoreState { back }),
        1 => Just(Op::DeleteState),
        2 => Just(Op::Status),
        2 => (any::<usize>(), prop_oneof![Just(Damage::Delete), Just(Damage::Replace), Just(Damage::Corrupt)])
            .prop_map(|(pick, how)| Op::Damage { pick, how }),
        1 => any::<usize>().prop_map(|pick| Op::CorruptCopy { pick }),
    ]
}

/// `keystone-manage fernet_rotate`, step for step (keystone/common/fernet_utils.py).
fn keystone_rotate(dir: &Path, max_active_keys: usize) {
    let before = keys(dir);
    std::fs::write(dir.join("0.tmp"), fernet::Fernet::generate_key()).unwrap();
    let new_primary = before.keys().max().unwrap() + 1;
    std::fs::rename(dir.join("0"), dir.join(new_primary.to_string())).unwrap();
    std::fs::rename(dir.join("0.tmp"), dir.join("0")).unwrap();
    let mut nonzero: Vec<u64> = before.keys().copied().filter(|&n| n > 0).collect();
    nonzero.push(new_primary);
    nonzero.sort_unstable_by(|a, b| b.cmp(a));
    while nonzero.len() > max_active_keys - 1 {
        let n = nonzero.pop().unwrap();
        std::fs::remove_file(dir.join(n.to_string())).unwrap();
    }
}

/// Keystone's count rule applied to `before`: the numbers it keeps after one rotation.
fn keystone_survivors(before: &BTreeMap<u64, String>, max_active_keys: usize) -> Vec<u64> {
    let new_primary = before.keys().max().unwrap() + 1;
    let mut nonzero: Vec<u64> = before.keys().copied().filter(|&n| n > 0).collect();
    nonzero.push(new_primary);
    nonzero.sort_unstable_by(|a, b| b.cmp(a));
    nonzero.truncate(max_active_keys - 1);
    nonzero.push(0);
    nonzero.sort_unstable();
    nonzero
}

struct World {
    /// The real time.
    now: DateTime<Utc>,
    /// What the wall clock is off by (steps since the last reboot).
    offset: chrono::Duration,
    /// The wall clock stepped back during this boot: records made since carry times earlier
    /// than real ones, which no clock left after a reboot can correct (see the README's
    /// "Disaster recovery"), so the model reboots only when that did not happen.
    stepped_back: bool,
    /// The boot: its id and when (real time) it started.
    boot: (String, DateTime<Utc>),
    /// Copies of state.json after each fernetd operation, newest last.
    states: Vec<Option<Vec<u8>>>,
    /// Until when fernetd's history may date things later than reality (a wall clock off
    /// while it recorded, a step back since, a rolled-back state file): "quiet" is judged only
    /// after that.
    dated_late_until: DateTime<Utc>,
    /// The state file was rolled back since fernetd last acted.
    restored: bool,
    /// When fernetd last acted (its history is dated no later than this).
    last_fernetd_op: DateTime<Utc>,
    /// An external rotation happened since fernetd last looked: fernetd will date what it
    /// missed at the moment it notices (later than reality, on purpose).
    unobserved_external: bool,
    /// Obligations: key content -> (real demotion time, a token issued with it).
    demoted: BTreeMap<String, (DateTime<Utc>, String)>,
    /// Token issued with the current primary.
    primary_token: (String, String),
    /// Material lost outside fernetd while its tokens live: content -> (real end of its
    /// window, its number, fernetd knew it and nothing since can have hidden the loss).
    lost: BTreeMap<String, (DateTime<Utc>, u64, bool)>,
    /// Keys on disk after fernetd's last operation that fernetd holds as ones that may have
    /// made tokens (numbered above 0), empty after a rolled-back state file. A staged key
    /// promoted and lost while fernetd did not look, with no trace of the promotion left on
    /// disk, looks to it like a staged key replaced: no token lost.
    seen: Vec<String>,
    /// Every material fernetd has seen as a key that may have made tokens, whatever a state
    /// file rolled back or deleted since forgot: with repair, its copy is the evidence.
    ever_seen: std::collections::BTreeSet<String>,
    /// A corrupted key file on disk, by number.
    corrupt: Option<u64>,
}

fn fingerprint(content: &str) -> String {
    fernetd::core::key::Key::parse(content.as_bytes())
        .unwrap()
        .fingerprint()
        .to_string()
}

/// The names in `.fernetd/copies`.
fn copies(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join(".fernetd/copies"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn token_for(key: &str) -> String {
    fernet::Fernet::new(key).unwrap().encrypt(b"t")
}

impl World {
    /// What fernetd's clock reads now.
    fn clock(&self) -> Now {
        Now {
            wall: self.now + self.offset,
            boot: Some(BootStamp {
                boot: self.boot.0.clone(),
                ms: (self.now - self.boot.1).num_milliseconds() as u64,
            }),
        }
    }

    fn primary(dir: &Path) -> String {
        keys(dir).into_iter().next_back().unwrap().1
    }

    /// Called after anything that may have changed the primary.
    fn observe_primary(&mut self, dir: &Path) {
        let p = World::primary(dir);
        if p != self.primary_token.0 {
            let (old, tok) = std::mem::replace(&mut self.primary_token, (p.clone(), token_for(&p)));
            // A primary lost outside fernetd stays an obligation of its own (`lost`).
            if !self.lost.contains_key(&old) {
                self.demoted.insert(old, (self.now, tok));
            }
        }
    }

    /// The material whose tokens may still be presented: demoted inside the retention, the
    /// primary, and lost material inside its window.
    fn live(&self) -> Vec<String> {
        let retention = chrono::Duration::seconds(RETENTION_H * HOUR);
        let mut v: Vec<String> = self
            .demoted
            .iter()
            .filter(|(_, (at, _))| *at + retention > self.now)
            .map(|(k, _)| k.clone())
            .collect();
        v.push(self.primary_token.0.clone());
        v.extend(
            self.lost
                .iter()
                .filter(|(_, (until, _, _))| *until > self.now)
                .map(|(k, _)| k.clone()),
        );
        v
    }

    /// An operator's damage to key `pick` (a non-zero key, while another one remains).
    fn damage(&mut self, dir: &Path, pick: usize, how: Damage) {
        let ks = keys(dir);
        let nonzero: Vec<u64> = ks.keys().copied().filter(|&n| n > 0).collect();
        if nonzero.len() < 2 || self.corrupt.is_some() {
            return;
        }
        let n = nonzero[pick % nonzero.len()];
        let content = ks[&n].clone();
        let retention = chrono::Duration::seconds(RETENTION_H * HOUR);
        let is_primary = content == self.primary_token.0;
        let until = match self.demoted.remove(&content) {
            _ if is_primary => Some(self.now + retention),
            Some((at, _)) => Some(at + retention),
            None => None,
        };
        let known = self.seen.contains(&content);
        if let Some(until) = until.filter(|u| *u > self.now) {
            self.lost.insert(content, (until, n, known));
        }
        let path = dir.join(n.to_string());
        match how {
            Damage::Delete => std::fs::remove_file(&path).unwrap(),
            Damage::Replace => std::fs::write(&path, fernet::Fernet::generate_key()).unwrap(),
            Damage::Corrupt => {
                std::fs::write(&path, "corrupted").unwrap();
                self.corrupt = Some(n);
            }
        }
        if self.corrupt.is_none() {
            // Keystone's primary is the highest key now.
            let p = World::primary(dir);
            if p != self.primary_token.0 {
                self.primary_token = (p.clone(), token_for(&p));
            }
        }
        self.unobserved_external = true;
    }

    /// Lost material fernetd put back (repair) is an obligation again.
    fn take_back(&mut self, dir: &Path) {
        let on_disk: Vec<String> = keys(dir).into_values().collect();
        let retention = chrono::Duration::seconds(RETENTION_H * HOUR);
        let back: Vec<String> = self
            .lost
            .keys()
            .filter(|k| on_disk.contains(k))
            .cloned()
            .collect();
        for k in back {
            if let Some((until, _, _)) = self.lost.remove(&k) {
                if k != self.primary_token.0 {
                    self.demoted
                        .insert(k.clone(), (until - retention, token_for(&k)));
                }
            }
        }
    }

    /// A lost key fernetd knew is reported (by number) until no earlier than the end of its
    /// window, while it is not back on disk. While the wall clock is off, fernetd's times are
    /// judged by its boot clock, so only the number is compared then.
    fn check_reported(&self, reported: &[(u64, DateTime<Utc>)], ctx: &str) {
        for (content, (until, n, known)) in &self.lost {
            // A corrupted key is said as what it is (`malformed-key`, critical: asserted
            // where it is judged).
            if !*known || *until <= self.now || self.corrupt == Some(*n) {
                continue;
            }
            let said = reported.iter().find(|(m, u)| {
                m == n && (!self.offset.is_zero() || *u + chrono::Duration::seconds(1) >= *until)
            });
            assert!(
                said.is_some(),
                "{ctx}: key {n} ({}) lost inside its window (until {until}) not reported: {reported:?}",
                fingerprint(content)
            );
        }
    }

    fn check_safety(&self, dir: &Path, ctx: &str) {
        let on_disk: Vec<String> = keys(dir).into_values().collect();
        let mf = multifernet(dir);
        for (key, (at, token)) in &self.demoted {
            if *at + chrono::Duration::seconds(RETENTION_H * HOUR) > self.now {
                assert!(
                    on_disk.contains(key),
                    "{ctx}: key demoted at {at} purged inside retention"
                );
                assert!(
                    mf.decrypt(token).is_ok(),
                    "{ctx}: live token no longer decrypts"
                );
            }
        }
        assert!(
            mf.decrypt(&self.primary_token.1).is_ok(),
            "{ctx}: primary token"
        );
    }
}

/// What `fernetd status` and `check` judge of a repository: every lost key they report
/// (number, until), and whether a check finding is critical.
fn status(repo: &Repository, retention: Duration, now: &Now) -> (Vec<(u64, DateTime<Utc>)>, bool) {
    let scan = repo.scan().unwrap();
    let report = fernetd::core::check::check(&scan, None);
    let history = repo.history().unwrap();
    let judged = repo.judging_clock(now);
    let lost = repo
        .lost_keys(&scan, &history, retention, &judged)
        .into_iter()
        .filter_map(|v| Some((v.number?, v.until)))
        .collect();
    let critical = report.violations().next().is_some();
    (lost, critical)
}

fn reported(out: &Outcome) -> Vec<(u64, DateTime<Utc>)> {
    out.lost
        .iter()
        .filter_map(|v| Some((v.number?, v.until)))
        .collect()
}

/// `before` as fernetd saw it once it had restored keys from its copies (a restored key may
/// be purged again by the same rotation: its content is then the one the model lost).
fn restored(
    mut before: BTreeMap<u64, String>,
    out: &Outcome,
    dir: &Path,
    w: &World,
) -> BTreeMap<u64, String> {
    let now = keys(dir);
    for n in &out.repaired {
        let lost = w.lost.iter().find(|(_, (_, m, _))| m == n).map(|(k, _)| k);
        if let Some(k) = now.get(n).or(lost) {
            before.insert(*n, k.clone());
        }
    }
    before
}

fn run(ops: Vec<Op>, max_active_keys: usize, repair: bool) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = Repository::new(dir, None).with_repair(repair);
    let ret = Duration::from_secs((RETENTION_H * HOUR) as u64);
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let state = dir.join(".fernetd/state.json");
    let p_boot = ("boot-0".to_string(), start - chrono::Duration::hours(1));
    let mut w = World {
        now: start,
        offset: chrono::Duration::zero(),
        stepped_back: false,
        boot: p_boot,
        states: Vec::new(),
        dated_late_until: start,
        restored: false,
        last_fernetd_op: start,
        unobserved_external: false,
        demoted: BTreeMap::new(),
        primary_token: (String::new(), String::new()),
        lost: BTreeMap::new(),
        seen: Vec::new(),
        ever_seen: Default::default(),
        corrupt: None,
    };
    repo.setup(ret, &w.clock()).unwrap();
    let p = World::primary(dir);
    w.primary_token = (p.clone(), token_for(&p));
    w.states.push(std::fs::read(&state).ok());
    let params = |force| RotateParams {
        max_active_keys: max_active_keys as u64,
        retention: ret,
        force_purge: force,
        expected_primary: None,
    };
    let retention = chrono::Duration::seconds(RETENTION_H * HOUR);
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("op {i} {op:?} at {}", w.now);
        match op {
            Op::Advance { hours } => {
                w.now += chrono::Duration::hours(*hours);
                continue;
            }
            Op::ClockStep { hours } => {
                // A recorded loss counts by the boot clock within a boot: a step moves nothing.
                w.offset += chrono::Duration::hours(*hours);
                w.stepped_back |= *hours < 0;
                let late =
                    w.now + retention + chrono::Duration::hours(hours.abs()) + w.offset.abs();
                w.dated_late_until = w.dated_late_until.max(late);
                continue;
            }
            Op::Reboot => {
                if !w.stepped_back {
                    if !w.offset.is_zero() {
                        for l in w.lost.values_mut() {
                            l.2 = false;
                        }
                    }
                    w.boot = (format!("reboot-{i}"), w.now);
                    w.offset = chrono::Duration::zero();
                    // The daemon starts with the system: it records the new boot at once.
                    fix_corrupt(&repo, &mut w, dir, ret);
                    repo.setup(ret, &w.clock()).unwrap();
                    w.observe_primary(dir);
                    w.take_back(dir);
                }
                continue;
            }
            Op::RestoreState { back } => {
                let Some(copy) = w.states.iter().rev().nth(*back).cloned() else {
                    continue;
                };
                match copy {
                    Some(bytes) => std::fs::write(&state, bytes).unwrap(),
                    None => {
                        let _ = std::fs::remove_file(&state);
                    }
                }
                // Keys the old copy does not know are adopted, dated when fernetd next looks.
                w.restored = true;
                w.seen.clear();
                for l in w.lost.values_mut() {
                    l.2 = false;
                }
                continue;
            }
            Op::DeleteState => {
                let _ = std::fs::remove_file(&state);
                // Every key is adopted, dated when fernetd next looks; what was lost is known
                // only by its repair copy (with repair), under no number.
                w.restored = true;
                w.seen.clear();
                for l in w.lost.values_mut() {
                    l.2 = false;
                }
                continue;
            }
            Op::KeystoneRotate { times } => {
                // An operator does not rotate over a key Keystone cannot load.
                if w.corrupt.is_some() {
                    continue;
                }
                for _ in 0..*times {
                    keystone_rotate(dir, max_active_keys);
                    w.observe_primary(dir);
                }
                // Keystone purges by count; keys it removed are no obligation of fernetd's.
                let on_disk: Vec<String> = keys(dir).into_values().collect();
                w.demoted.retain(|k, _| on_disk.contains(k));
                w.unobserved_external = true;
                continue;
            }
            Op::Damage { pick, how } => {
                w.damage(dir, *pick, *how);
                continue;
            }
            Op::CorruptCopy { pick } => {
                let names = copies(dir);
                if !names.is_empty() {
                    let name = &names[pick % names.len()];
                    std::fs::write(dir.join(".fernetd/copies").join(name), "garbage").unwrap();
                }
                continue;
            }
            Op::Status => {
                let (lost, critical) = status(&repo, ret, &w.clock());
                w.check_reported(&lost, &ctx);
                if w.corrupt.is_some() {
                    assert!(critical, "{ctx}: a corrupted key is not critical");
                }
                continue;
            }
            Op::Setup => {
                fix_corrupt(&repo, &mut w, dir, ret);
                let before = keys(dir);
                let copies_before = copies(dir);
                let out = repo.setup(ret, &w.clock()).unwrap();
                assert_eq!(
                    keys(dir),
                    restored(before, &out, dir, &w),
                    "{ctx}: setup changed a key"
                );
                // A restored primary is Keystone's primary again: the one that stood in for
                // it is demoted now.
                w.observe_primary(dir);
                w.take_back(dir);
                w.check_reported(&reported(&out), &ctx);
                check_copies(&w, dir, repair, &copies_before, &ctx);
            }
            Op::Rotate { force } => {
                fix_corrupt(&repo, &mut w, dir, ret);
                let copies_before = copies(dir);
                let before = keys(dir);
                let quiet = !w.unobserved_external
                    && !w.restored
                    && w.now >= w.dated_late_until
                    // A demotion is dated when the new primary's rename landed, a moment
                    // after the rotation began: the boundary itself is not yet quiet.
                    && w.now - w.last_fernetd_op > retention;
                let out = repo.rotate(params(*force), &w.clock()).unwrap();
                let before = restored(before, &out, dir, &w);
                let after = keys(dir);
                let max = *before.keys().max().unwrap();
                assert_eq!(
                    after.get(&(max + 1)),
                    before.get(&0),
                    "{ctx}: 0 not promoted to max+1"
                );
                assert!(
                    after.contains_key(&0) && after[&0] != before[&0],
                    "{ctx}: no new staged key"
                );
                for (n, k) in &after {
                    if *n != 0 && *n != max + 1 {
                        assert_eq!(before.get(n), Some(k), "{ctx}: key {n} changed");
                    }
                }
                let survivors = keystone_survivors(&before, max_active_keys);
                let numbers: Vec<u64> = after.keys().copied().collect();
                if *force {
                    assert_eq!(numbers, survivors, "{ctx}: not Keystone's count rule");
                } else if quiet {
                    // Every earlier demotion is older than the retention; only the key this
                    // very rotation demotes (a candidate when max_active_keys = 2) is kept.
                    let mut expected = survivors.clone();
                    if !expected.contains(&max) {
                        expected.push(max);
                        expected.sort_unstable();
                    }
                    assert_eq!(
                        numbers, expected,
                        "{ctx}: guard kept a key whose retention is over"
                    );
                } else {
                    for s in &survivors {
                        assert!(numbers.contains(s), "{ctx}: Keystone survivor {s} missing");
                    }
                    let kept: Vec<u64> = out
                        .rotation
                        .as_ref()
                        .unwrap()
                        .kept
                        .iter()
                        .map(|k| k.0)
                        .collect();
                    let extra: Vec<u64> = numbers
                        .iter()
                        .filter(|n| !survivors.contains(n))
                        .copied()
                        .collect();
                    assert_eq!(extra, kept, "{ctx}: extra keys not explained by the guard");
                }
                w.take_back(dir);
                if !*force {
                    w.check_reported(&reported(&out), &ctx);
                }
                w.observe_primary(dir);
                if *force {
                    // A forced purge is the operator's choice; drop the obligations it broke.
                    let on_disk: Vec<String> = keys(dir).into_values().collect();
                    w.demoted.retain(|k, _| on_disk.contains(k));
                    // So does the forced purge of a key repair had just put back.
                    w.lost.retain(|_, (_, n, _)| !out.repaired.contains(n));
                } else {
                    check_copies(&w, dir, repair, &copies_before, &ctx);
                }
            }
        }
        w.seen = keys(dir)
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(_, k)| k)
            .collect();
        w.ever_seen.extend(w.seen.iter().cloned());
        // status after every fernetd operation says what it said.
        let (lost, _) = status(&repo, ret, &w.clock());
        w.check_reported(&lost, &ctx);
        w.last_fernetd_op = w.now;
        w.unobserved_external = false;
        if !w.offset.is_zero() || w.restored {
            let late = w.now + retention + w.offset.abs();
            w.dated_late_until = w.dated_late_until.max(late);
            w.restored = false;
        }
        w.states.push(std::fs::read(&state).ok());
        w.check_safety(dir, &ctx);
    }
}

/// A corrupted key fernetd refuses (or, with repair, restores): the operator moves it aside
/// when fernetd refuses it, which makes it a deletion.
fn fix_corrupt(repo: &Repository, w: &mut World, dir: &Path, retention: Duration) {
    let Some(n) = w.corrupt else { return };
    let (_, critical) = status(repo, retention, &w.clock());
    assert!(critical, "a corrupted key {n} is not critical");
    let probe = repo.setup(retention, &w.clock());
    match probe {
        // Removed: no key needed its number (its window closed, or fernetd purged it).
        Ok(out) if out.cleared.contains(&n) => {
            assert!(
                !dir.join(n.to_string()).exists(),
                "key {n} cleared, still there"
            )
        }
        Ok(out) => assert!(
            out.repaired.contains(&n),
            "corrupted key {n} accepted unrepaired"
        ),
        Err(fernetd::Error::Invalid { .. }) => {
            std::fs::remove_file(dir.join(n.to_string())).unwrap();
        }
        Err(e) => panic!("corrupted key {n}: {e}"),
    }
    w.corrupt = None;
    // Keystone's primary is the highest key now (a restored one, or the one below).
    let p = World::primary(dir);
    if p != w.primary_token.0 {
        w.primary_token = (p.clone(), token_for(&p));
    }
    w.take_back(dir);
}

/// With repair, no copy of live material that existed before a fernetd operation is gone
/// after it.
fn check_copies(w: &World, dir: &Path, repair: bool, before: &[String], ctx: &str) {
    if !repair {
        return;
    }
    let after = copies(dir);
    let on_disk: Vec<String> = keys(dir).into_values().collect();
    // Whatever the history says now (a state file rolled back or deleted): a copy of material
    // fernetd once saw is evidence.
    for k in w
        .live()
        .into_iter()
        .filter(|k| w.ever_seen.contains(k) || on_disk.contains(k))
    {
        let fp = fingerprint(&k);
        if before.contains(&fp) {
            assert!(
                after.contains(&fp),
                "{ctx}: the copy of live key {fp} was removed (demoted {:?}, lost {:?}, primary {}); state {}",
                w.demoted.get(&k).map(|d| d.0),
                w.lost.get(&k).map(|l| (l.0, l.1, l.2)),
                w.primary_token.0 == k,
                std::fs::read_to_string(dir.join(".fernetd/state.json")).unwrap_or_default()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_keystone_semantics_and_safety(
        ops in proptest::collection::vec(op(), 1..24),
        max_active_keys in 2usize..6,
        repair in any::<bool>(),
    ) {
        run(ops, max_active_keys, repair);
    }
}
