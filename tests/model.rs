//! Random operation sequences against a model of Keystone's semantics, on a real directory,
//! through the library's public API with simulated time.
//!
//! Operations: fernetd rotate (guarded or `--force-purge`), fernetd setup, time passing, an
//! external rotation done exactly as `keystone-manage fernet_rotate` does it, steps of the wall
//! clock (forward by up to days, or back), reboots (a new boot clock; the wall clock right
//! again), and a rollback of `.fernetd/state.json` to a copy taken earlier (a restored backup).
//! fernetd sees the stepped wall clock and the boot clock; the model keeps the real time. What
//! fernetd cannot know is not modelled: a wall clock that is wrong before fernetd first records
//! a moment of the boot (it runs `setup` when the daemon starts with the system), or one that
//! stepped back while it recorded, and was corrected by a reboot.
//! After every fernetd operation:
//! - Keystone semantics hold: key 0 became `max + 1` with the same content, a new key 0 exists,
//!   no surviving key changed; with force_purge the key numbers are exactly Keystone's;
//! - safety: every key demoted less than the retention ago is on disk, and the token issued
//!   with it still decrypts (keys Keystone itself purged are Keystone's doing and excluded);
//! - after a quiet period longer than the retention, a guarded rotation purges exactly as
//!   Keystone would (the guard never keeps keys forever).

mod common;
use chrono::{DateTime, TimeZone, Utc};
use common::{keys, multifernet};
use fernetd::clock::{BootStamp, Now};
use fernetd::repository::{Repository, RotateParams};
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
            self.demoted.insert(old, (self.now, tok));
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

fn run(ops: Vec<Op>, max_active_keys: usize) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = Repository::new(dir, None);
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
    };
    repo.setup(&w.clock()).unwrap();
    let p = World::primary(dir);
    w.primary_token = (p.clone(), token_for(&p));
    w.states.push(std::fs::read(&state).ok());
    let params = |force| RotateParams {
        max_active_keys: max_active_keys as u64,
        retention: Duration::from_secs((RETENTION_H * HOUR) as u64),
        force_purge: force,
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
                w.offset += chrono::Duration::hours(*hours);
                w.stepped_back |= *hours < 0;
                let late =
                    w.now + retention + chrono::Duration::hours(hours.abs()) + w.offset.abs();
                w.dated_late_until = w.dated_late_until.max(late);
                continue;
            }
            Op::Reboot => {
                if !w.stepped_back {
                    w.boot = (format!("reboot-{i}"), w.now);
                    w.offset = chrono::Duration::zero();
                    // The daemon starts with the system: it records the new boot at once.
                    repo.setup(&w.clock()).unwrap();
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
                continue;
            }
            Op::KeystoneRotate { times } => {
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
            Op::Setup => {
                let before = keys(dir);
                repo.setup(&w.clock()).unwrap();
                assert_eq!(keys(dir), before, "{ctx}: setup changed a key");
            }
            Op::Rotate { force } => {
                let before = keys(dir);
                let quiet = !w.unobserved_external
                    && !w.restored
                    && w.now >= w.dated_late_until
                    // A demotion is dated when the new primary's rename landed, a moment
                    // after the rotation began: the boundary itself is not yet quiet.
                    && w.now - w.last_fernetd_op > retention;
                let out = repo.rotate(params(*force), &w.clock()).unwrap();
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
                w.observe_primary(dir);
                if *force {
                    // A forced purge is the operator's choice; drop the obligations it broke.
                    let on_disk: Vec<String> = keys(dir).into_values().collect();
                    w.demoted.retain(|k, _| on_disk.contains(k));
                }
            }
        }
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_keystone_semantics_and_safety(
        ops in proptest::collection::vec(op(), 1..24),
        max_active_keys in 2usize..6,
    ) {
        run(ops, max_active_keys);
    }
}
