//! Each key's life, past and planned: the phases its history records (staged, primary,
//! secondary, held beyond max_active_keys by the retention guard) and those the schedule's
//! next rotations will bring, each rotation decided by [`rotation::decide`] (the decision
//! `fernetd rotate` and the daemon make, guard included), and what a manual rotation now would
//! do. This is the description [`crate::core::chart`] draws.
//!
//! Invariant: pure. The history, the clock and the schedule are arguments; it reads no file,
//! sees no key (numbers and fingerprints only) and changes nothing.

use crate::core::chart::{Life, Manual, Phase, Rotation, Span, Window};
use crate::core::clock::Now;
use crate::core::history::History;
use crate::core::key::Fingerprint;
use crate::core::rotation;
use crate::core::schedule::Schedule;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// At most this many planned rotations are projected: enough for the key staged now to live
/// its whole life (one gap staged, one primary, N - 2 or more secondary, then purged) for any
/// max_active_keys up to 30, and few enough rows to read.
pub const MAX_ROTATIONS: usize = 32;

/// What a projection starts from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The repository's history, matched with the keys on disk (`History::reconcile`).
    pub history: &'a History,
    /// Whether `history` describes keys on disk (`false`: a model, such as a setup now).
    pub on_disk: bool,
    /// The clock retention is judged by (`Repository::judging_clock`).
    pub now: &'a Now,
    pub schedule: &'a Schedule,
    /// The next scheduled rotation (a past one is overdue: due now).
    pub first: Option<DateTime<Utc>>,
    pub max_active_keys: u64,
    /// `expiration + allow_expired_window + margin`.
    pub retention: Duration,
}

/// Lives, rotations and the manual rotation, ready for a [`crate::core::chart::Picture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub lives: Vec<Life>,
    pub rotations: Vec<Rotation>,
    /// Only for keys on disk that include a staged key 0.
    pub manual: Option<Manual>,
}

/// Projects every key's life from `input`.
pub fn project(input: &Input) -> Projection {
    let h = input.history;
    let now = input.now.wall;
    let keep = usize::try_from(input.max_active_keys.saturating_sub(1)).unwrap_or(usize::MAX);
    let primary = h.primary();
    // Non-zero keys, newest first: where Keystone's count rule places each.
    let nonzero: Vec<u64> = h.keys.keys().copied().filter(|&n| n > 0).rev().collect();
    let mut lives: Vec<Life> = Vec::new();
    // Number now (as the projection moves on) -> index into `lives`.
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut rotations: Vec<Rotation> = Vec::new();
    for (&n, r) in &h.keys {
        let mut spans = Vec::new();
        let mut window = None;
        if n == 0 {
            spans.push(span(Phase::Staged, r.first_seen));
        } else {
            if let Some(p) = r.promoted {
                push_closed(&mut spans, Phase::Staged, r.first_seen, p);
                // A promotion is a rotation, but for the first primary of a setup.
                if r.created != Some(p) && p <= now {
                    rotations.push(Rotation {
                        at: p,
                        planned: false,
                    });
                }
            }
            if Some(n) == primary {
                spans.push(span(Phase::Primary, r.promoted.unwrap_or(r.first_seen)));
            } else {
                // Demoted then, or (not observed) no later than when first seen.
                let from = r.demoted.unwrap_or(r.first_seen);
                if let Some(p) = r.promoted {
                    push_closed(&mut spans, Phase::Primary, p, from);
                }
                // Beyond max_active_keys since the promotion that pushed it past the count.
                let held = nonzero
                    .iter()
                    .position(|&k| k == n)
                    .filter(|&i| i >= keep)
                    .and_then(|i| nonzero.get(i - keep))
                    .and_then(|k| h.keys.get(k))
                    .map(|k| k.promoted.unwrap_or(k.first_seen).max(from));
                match held {
                    Some(t) if t > from => {
                        push_closed(&mut spans, Phase::Secondary, from, t);
                        spans.push(span(Phase::Held, t));
                    }
                    Some(_) => spans.push(span(Phase::Held, from)),
                    None => spans.push(span(Phase::Secondary, from)),
                }
                window = Some(Window {
                    from,
                    until: r.retained_until(input.retention, input.now),
                });
            }
        }
        index.insert(n, lives.len());
        lives.push(Life {
            number: n,
            on_disk: input.on_disk.then_some(n),
            fingerprint: input.on_disk.then_some(r.fingerprint),
            spans,
            window,
        });
    }
    rotations.sort_by_key(|r| r.at);
    rotations.dedup();
    // No rotation can follow a primary numbered u64::MAX (`key-number-too-large`): neither a
    // manual one nor a planned one is drawn.
    let last_number = |h: &History| h.primary() == Some(u64::MAX);
    let manual = (input.on_disk && h.keys.contains_key(&0) && !last_number(h)).then(|| {
        let numbers: Vec<u64> = h.keys.keys().copied().collect();
        let d = rotation::decide(
            &numbers,
            h,
            input.now,
            input.max_active_keys,
            input.retention,
            false,
        );
        Manual {
            at: now,
            promotes_to: d.new_primary,
            purges: d.purge,
            holds: d.kept,
        }
    });
    // The planned rotations, on a copy of the history, until the key staged now is purged
    // (or, without one, every key of today).
    let staged_now = index.get(&0).copied();
    let today: Vec<usize> = index.values().copied().collect();
    let done = |lives: &[Life]| match staged_now {
        Some(i) => lives[i].purged().is_some(),
        None => today.iter().all(|&i| lives[i].purged().is_some()),
    };
    let mut sim = h.clone();
    let mut next = input.first;
    let mut count = 0;
    while let Some(due) = next {
        if count >= MAX_ROTATIONS || done(&lives) || last_number(&sim) {
            break;
        }
        let t = due.max(now);
        let numbers: Vec<u64> = sim.keys.keys().copied().collect();
        let d = rotation::decide(
            &numbers,
            &sim,
            &Now::from(t),
            input.max_active_keys,
            input.retention,
            false,
        );
        rotations.push(Rotation {
            at: t,
            planned: true,
        });
        if let Some(i) = sim.primary().and_then(|p| index.get(&p).copied()) {
            enter(&mut lives[i], Phase::Secondary, t);
            lives[i].window = Some(Window {
                from: t,
                until: crate::core::history::later(t, input.retention),
            });
        }
        if let Some(i) = index.remove(&0) {
            enter(&mut lives[i], Phase::Primary, t);
            lives[i].number = d.new_primary;
            index.insert(d.new_primary, i);
        }
        index.insert(0, lives.len());
        lives.push(Life {
            number: 0,
            on_disk: None,
            fingerprint: None,
            spans: vec![span(Phase::Staged, t)],
            window: None,
        });
        for k in &d.purge {
            if let Some(i) = index.remove(k) {
                enter(&mut lives[i], Phase::Purged, t);
            }
        }
        for (k, _) in &d.kept {
            if let Some(&i) = index.get(k) {
                if lives[i].spans.last().map(|s| s.phase) != Some(Phase::Held) {
                    enter(&mut lives[i], Phase::Held, t);
                }
            }
        }
        sim.record_rotation(d.new_primary, Fingerprint::NONE, t);
        for &k in &d.purge {
            sim.record_purge(k, t);
        }
        count += 1;
        next = input.schedule.next_after(t);
    }
    // Oldest key first, the keys planned rotations stage after today's, the one still staged
    // where the picture ends last.
    lives.sort_by_key(|l| if l.number == 0 { u64::MAX } else { l.number });
    Projection {
        lives,
        rotations,
        manual,
    }
}

fn span(phase: Phase, from: DateTime<Utc>) -> Span {
    Span {
        phase,
        from,
        to: None,
    }
}

/// Pushes `phase` from `from` to `to` onto `spans`, unless it lasted no time at all (a
/// setup and rotations within the same second).
fn push_closed(spans: &mut Vec<Span>, phase: Phase, from: DateTime<Utc>, to: DateTime<Utc>) {
    if to > from {
        spans.push(Span {
            phase,
            from,
            to: Some(to),
        });
    }
}

/// Ends the phase `l` is in at `t` (dropping it if it began at `t`) and starts `phase`.
fn enter(l: &mut Life, phase: Phase, t: DateTime<Utc>) {
    if l.spans.last().is_some_and(|s| s.from >= t) {
        l.spans.pop();
    }
    if let Some(last) = l.spans.last_mut() {
        last.to = Some(t);
    }
    l.spans.push(span(phase, t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Key;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    fn fp() -> Fingerprint {
        Key::generate().unwrap().fingerprint()
    }

    /// Set up at t(0), rotated at each of `rotations` (no purge: few enough keys).
    fn history(rotations: &[i64]) -> History {
        let mut h = History::new();
        h.record_created(1, fp(), t(0));
        h.record_created(0, fp(), t(0));
        for (i, &r) in rotations.iter().enumerate() {
            h.record_rotation(i as u64 + 2, fp(), t(r));
        }
        h
    }

    fn project_at(h: &History, now: i64, every: &str, n: u64, retention_h: u64) -> Projection {
        let schedule: Schedule = every.parse().unwrap();
        let now: Now = t(now).into();
        project(&Input {
            history: h,
            on_disk: true,
            now: &now,
            first: schedule.next_after(h.last_rotation.unwrap_or(t(0))),
            schedule: &schedule,
            max_active_keys: n,
            retention: Duration::from_secs(retention_h * 3600),
        })
    }

    fn phases(l: &Life) -> Vec<(Phase, DateTime<Utc>)> {
        l.spans.iter().map(|s| (s.phase, s.from)).collect()
    }

    #[test]
    fn recorded_phases_then_planned_ones_until_the_staged_key_is_purged() {
        // Rotations every 10 h at t(10), t(20); now t(25); tokens live 15 h; N = 4.
        let h = history(&[10, 20]);
        let p = project_at(&h, 25, "10h", 4, 15);
        let by_disk = |n: u64| p.lives.iter().find(|l| l.on_disk == Some(n)).unwrap();
        use Phase::*;
        // Key 1: primary from setup, demoted at t(10); tokens until t(25); beyond N at t(30)
        // (key 4's promotion), by then expired: purged then.
        assert_eq!(
            phases(by_disk(1)),
            [(Primary, t(0)), (Secondary, t(10)), (Purged, t(30))]
        );
        assert_eq!(by_disk(1).window.unwrap().until, t(25));
        assert_eq!(
            phases(by_disk(2)),
            [
                (Staged, t(0)),
                (Primary, t(10)),
                (Secondary, t(20)),
                (Purged, t(40))
            ]
        );
        // Key 0 now: promoted to 4 at t(30), demoted at t(40), purged at t(60).
        let staged = by_disk(0);
        assert_eq!(staged.number, 4);
        assert_eq!(staged.label(), "key 0\u{2192}4");
        assert_eq!(
            phases(staged),
            [
                (Staged, t(20)),
                (Primary, t(30)),
                (Secondary, t(40)),
                (Purged, t(60))
            ]
        );
        assert_eq!(
            staged.window,
            Some(Window {
                from: t(40),
                until: t(55)
            })
        );
        // Past rotations (the setup's first primary is none), then the planned ones up to the
        // staged key's purge.
        let at: Vec<(i64, bool)> = p
            .rotations
            .iter()
            .map(|r| ((r.at - t(0)).num_hours(), r.planned))
            .collect();
        assert_eq!(
            at,
            [
                (10, false),
                (20, false),
                (30, true),
                (40, true),
                (50, true),
                (60, true)
            ]
        );
        // One planned key per planned rotation, numbered as it will be.
        let planned: Vec<String> = p
            .lives
            .iter()
            .filter(|l| l.on_disk.is_none())
            .map(Life::label)
            .collect();
        assert_eq!(planned, ["key 5*", "key 6*", "key 7*", "key 0*"]);
        // A manual rotation now: key 0 to 4, which puts key 1 beyond N - 1 = 3 non-zero keys
        // just as its tokens expire (t(25)): purged, nothing held.
        let m = p.manual.unwrap();
        assert_eq!((m.promotes_to, m.purges, m.holds), (4, vec![1], vec![]));
    }

    #[test]
    fn the_guard_holds_what_an_unsafe_count_would_purge() {
        // N = 3 with tokens living 25 h over 10 h rotations: Keystone purges a key 10 h
        // after its demotion; fernetd holds it until its tokens expire.
        let h = history(&[10, 20]);
        let p = project_at(&h, 21, "10h", 3, 25);
        let key1 = p.lives.iter().find(|l| l.on_disk == Some(1)).unwrap();
        use Phase::*;
        // Keys 3, 2, 1: key 1 is beyond N - 1 = 2 non-zero keys since key 3's promotion at
        // t(20), its tokens live until t(35), the rotation after that (t(40)) purges it.
        assert_eq!(
            phases(key1),
            [
                (Primary, t(0)),
                (Secondary, t(10)),
                (Held, t(20)),
                (Purged, t(40))
            ]
        );
        assert_eq!(key1.window.unwrap().until, t(35));
        let m = p.manual.unwrap();
        assert_eq!(m.promotes_to, 4);
        assert_eq!(m.holds, [(1, t(35)), (2, t(45))]);
        assert!(m.purges.is_empty());
        // A planned hold: key 2 goes beyond the count at key 4's promotion (t(30)).
        let key2 = p.lives.iter().find(|l| l.on_disk == Some(2)).unwrap();
        assert_eq!(
            phases(key2),
            [
                (Staged, t(0)),
                (Primary, t(10)),
                (Secondary, t(20)),
                (Held, t(30)),
                (Purged, t(50))
            ]
        );
    }

    #[test]
    fn no_projected_purge_comes_before_the_tokens_expire() {
        for every in ["6h", "10h", "1d", "0 3 * * 1,3"] {
            for n in 2..7 {
                for retention in [0, 5, 30, 50] {
                    let h = history(&[10, 20, 30]);
                    let p = project_at(&h, 31, every, n, retention);
                    let label = format!("{every} n={n} retention={retention}h");
                    for l in &p.lives {
                        // Phases in order, each starting where the one before ended.
                        for w in l.spans.windows(2) {
                            assert!(w[0].phase < w[1].phase, "{label}: {l:?}");
                            assert_eq!(w[0].to, Some(w[1].from), "{label}: {l:?}");
                        }
                        if let (Some(purged), Some(w)) = (l.purged(), l.window) {
                            assert!(purged >= w.until, "{label}: {l:?}");
                        }
                    }
                    let staged = p.lives.iter().find(|l| l.on_disk == Some(0)).unwrap();
                    assert!(staged.purged().is_some(), "{label}: {staged:?}");
                }
            }
        }
    }

    #[test]
    fn a_model_has_no_fingerprints_and_no_manual_rotation() {
        let h = history(&[]);
        let schedule: Schedule = "1d".parse().unwrap();
        let now: Now = t(0).into();
        let p = project(&Input {
            history: &h,
            on_disk: false,
            now: &now,
            schedule: &schedule,
            first: Some(t(24)),
            max_active_keys: 3,
            retention: Duration::ZERO,
        });
        assert!(p.manual.is_none());
        assert!(p
            .lives
            .iter()
            .all(|l| l.fingerprint.is_none() && l.on_disk.is_none()));
        let labels: Vec<String> = p.lives.iter().take(3).map(Life::label).collect();
        assert_eq!(labels, ["key 1*", "key 2*", "key 3*"], "oldest first");
    }

    proptest::proptest! {
        /// Any recorded history (rotations at any times, in any order, keys purged), a clock
        /// anywhere, any N and retention: phases stay in order, no planned purge comes before
        /// the tokens expire, and both renderings draw it (the SVG parses as XML).
        #[test]
        fn any_history_projects_and_draws(
            steps in proptest::collection::vec((-100i64..100, proptest::bool::ANY), 0..10),
            now in -50i64..150,
            n in 2u64..7,
            retention in 0u64..80,
            every in 1i64..30,
        ) {
            let mut h = History::new();
            h.record_created(1, fp(), t(0));
            h.record_created(0, fp(), t(0));
            for (at, purge) in &steps {
                let p = h.primary().unwrap_or(0);
                h.record_rotation(p + 1, fp(), t(*at));
                let lowest = h.keys.keys().copied().find(|&k| k > 0 && k < p);
                if let (true, Some(k)) = (*purge, lowest) {
                    h.record_purge(k, t(*at));
                }
            }
            let schedule: Schedule = format!("{every}h").parse().unwrap();
            let clock: Now = t(now).into();
            let p = project(&Input {
                history: &h,
                on_disk: true,
                now: &clock,
                schedule: &schedule,
                first: schedule.next_after(t(now)),
                max_active_keys: n,
                retention: Duration::from_secs(retention * 3600),
            });
            proptest::prop_assert_eq!(
                p.lives.iter().filter(|l| l.on_disk.is_some()).count(),
                h.keys.len()
            );
            for l in &p.lives {
                for w in l.spans.windows(2) {
                    proptest::prop_assert!(w[0].phase < w[1].phase, "{:?}", l);
                }
                // Every purge in a projection is a planned one (keys on disk are not purged).
                if let (Some(purged), Some(w)) = (l.purged(), l.window) {
                    proptest::prop_assert!(purged >= t(now) && purged >= w.until, "{:?}", l);
                }
            }
            let picture = crate::core::chart::Picture {
                title: "tokens <x>".into(),
                notes: vec![],
                now: t(now),
                lives: p.lives.clone(),
                rotations: p.rotations.clone(),
                manual: p.manual.clone(),
            };
            let text = crate::core::chart::text(&picture, crate::core::chart::TEXT_COLUMNS);
            let rows = text.lines().filter(|l| l.starts_with("key ")).count();
            proptest::prop_assert_eq!(rows, p.lives.len());
            let svg = crate::core::chart::svg(&[picture]);
            let doc = roxmltree::Document::parse(&svg);
            proptest::prop_assert!(doc.is_ok(), "{:?}", doc.err());
        }
    }
}
