//! The safety planner: is a rotation schedule safe for a token lifetime?
//!
//! A token issued just before rotation `r1` with primary `P` must stay decryptable until
//! `r1 + E + W + M` (expiration, allow_expired_window, margin for distribution delay and clock
//! skew). `P` is demoted at `r1` and purged at `r(N-1)`, so every run of `N - 2` consecutive
//! gaps of the schedule must cover `E + W + M`. For a fixed interval that is Keystone's
//! `ceil((E + W) / R) + 2` (with M = 0); for a cron schedule it is the *shortest* run over a
//! year of firings, never the average.
//!
//! Invariant: pure. No clock, no filesystem; `now` is an argument. Tested exhaustively against
//! a brute-force model.

use crate::core::schedule::Schedule;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Default margin: distribution delay, clock skew between nodes, and the jitter of a late
/// rotation (a timer's randomized delay). One hour is far above all three in practice and
/// does not change the default answer (daily rotation with Keystone's defaults needs 5 keys).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);

/// How far ahead a cron schedule is analysed, beyond the retention itself.
const HORIZON: Duration = Duration::from_secs(400 * 86_400);
/// Upper bound on firings analysed (a seconds-level cron would otherwise list millions).
const FIRING_CAP: usize = 1_000_000;
/// How many upcoming rotations a plan lists.
const NEXT_ROTATIONS: usize = 5;

/// The token lifetime that key retention must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// `[token] expiration`.
    pub expiration: Duration,
    /// `[token] allow_expired_window`.
    pub allow_expired_window: Duration,
    /// Extra time for distribution delay and clock skew.
    pub margin: Duration,
    /// `[receipt] expiration` when Keystone's receipts share this repository (its default
    /// layout: `[fernet_receipts] key_repository` is the token directory), zero otherwise: a
    /// receipt made with a key must stay decryptable as long as a token made with it.
    pub receipts: Duration,
}

impl Lifetime {
    /// `E + W` (or the receipts' expiration when longer): how long a token may still be
    /// presented after it was issued; what a node judges a cluster key set's purges by (the
    /// leader purged with the margin on top).
    pub fn decryptable(&self) -> Duration {
        (self.expiration + self.allow_expired_window).max(self.receipts)
    }

    /// `E + W + M` (receipts' expiration + M when longer): how long after its demotion a key
    /// must still be on disk.
    pub fn retention(&self) -> Duration {
        self.decryptable() + self.margin
    }

    /// Whether the receipts sharing the repository, not the tokens, set the retention.
    pub fn receipts_decide(&self) -> bool {
        self.receipts > self.expiration + self.allow_expired_window
    }
}

/// What the planner concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Smallest `max_active_keys` for which every run of N-2 gaps covers the retention.
    pub required_max_active_keys: u64,
    /// The configured value, if any.
    pub max_active_keys: Option<u64>,
    /// Whether the configured value is safe; `None` without one.
    pub safe: Option<bool>,
    /// Shortest retention window the schedule gives a demoted key with the configured N (or
    /// the required N when none is configured), and the rotations that bound it.
    pub shortest_window: Duration,
    pub shortest_window_between: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The retention the window must cover (E + W + M).
    pub retention: Duration,
    pub next_rotations: Vec<DateTime<Utc>>,
    /// Firings analysed and whether the cap cut the horizon short.
    pub firings_analysed: usize,
    pub horizon_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("schedule '{0}' fires fewer than twice in the analysis horizon")]
    TooFewFirings(String),
    #[error("max_active_keys must be at least 2, got {0}")]
    MaxActiveKeysTooSmall(u64),
    #[error("a retention of {0} cannot be covered within the analysed firings of '{1}'")]
    HorizonTooShort(String, String),
}

/// Analyses `schedule` for `lifetime`. `last_rotation` anchors an interval schedule.
pub fn plan(
    schedule: &Schedule,
    lifetime: &Lifetime,
    max_active_keys: Option<u64>,
    now: DateTime<Utc>,
    last_rotation: Option<DateTime<Utc>>,
) -> Result<Plan, PlanError> {
    if let Some(n) = max_active_keys {
        if n < 2 {
            return Err(PlanError::MaxActiveKeysTooSmall(n));
        }
    }
    let retention = lifetime.retention();
    let t = retention.as_secs();
    match schedule {
        Schedule::Interval(r) => {
            let r = r.as_secs().max(1);
            let required = t.div_ceil(r) + 2;
            let n = max_active_keys.unwrap_or(required);
            let window = Duration::from_secs(r.saturating_mul(n.saturating_sub(2)));
            let mut next = Vec::with_capacity(NEXT_ROTATIONS);
            let mut at = last_rotation
                .and_then(|l| schedule.next_after(l))
                .map(|first| first.max(now))
                .unwrap_or_else(|| schedule.next_after(now).unwrap_or(now));
            for _ in 0..NEXT_ROTATIONS {
                next.push(at);
                match schedule.next_after(at) {
                    Some(n) => at = n,
                    None => break,
                }
            }
            Ok(Plan {
                required_max_active_keys: required,
                max_active_keys,
                safe: max_active_keys.map(|_| window >= retention),
                shortest_window: window,
                shortest_window_between: None,
                retention,
                next_rotations: next,
                firings_analysed: 0,
                horizon_truncated: false,
            })
        }
        Schedule::Cron { source, .. } => {
            let until = now
                + chrono::Duration::from_std(HORIZON + retention).unwrap_or(chrono::Duration::MAX);
            let min_count = usize::try_from(max_active_keys.unwrap_or(0).max(3))
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let firings = firings(schedule, now, until, min_count, FIRING_CAP).0;
            let times = &firings.times;
            if times.len() < 2 {
                return Err(PlanError::TooFewFirings(source.clone()));
            }
            let gaps: Vec<u64> = times
                .windows(2)
                .map(|w| (w[1] - w[0]).num_seconds().max(0) as u64)
                .collect();
            let k = required_gaps(&gaps, t).ok_or_else(|| {
                PlanError::HorizonTooShort(crate::core::duration::format(retention), source.clone())
            })?;
            let required = k as u64 + 2;
            let n = max_active_keys.unwrap_or(required);
            let span = usize::try_from(n.saturating_sub(2)).unwrap_or(usize::MAX);
            let (window, start) = min_window(&gaps, span.min(gaps.len())).unwrap_or((0, 0));
            let end = start.saturating_add(span).min(times.len() - 1);
            Ok(Plan {
                required_max_active_keys: required,
                max_active_keys,
                // Windows grow with the number of gaps they span, so N keys are safe exactly
                // when N reaches the required count, however far beyond the firings analysed.
                safe: max_active_keys.map(|n| n >= required),
                shortest_window: Duration::from_secs(window),
                shortest_window_between: Some((times[start], times[end])),
                retention,
                next_rotations: times.iter().take(NEXT_ROTATIONS).copied().collect(),
                firings_analysed: times.len(),
                horizon_truncated: firings.truncated,
            })
        }
    }
}

/// The firings [`Schedule::firings`] lists, the same list found a day at a time, and how many
/// times croner was asked. In UTC a crontab fires at the same times of day on every day it
/// fires (its second, minute and hour fields do not depend on the date), so croner lists the
/// first day's firings once and afterwards is asked only for each next day that fires: a
/// seconds-level schedule's million firings cost about as many calls as the horizon has days
/// plus one day's firings, instead of a million (`status`, `rotate` and the daemon's start
/// prove the schedule every time). Each next day's first firing croner gives is checked to
/// fall at the first day's first time of day; one that does not (never expected) ends the
/// shortcut and croner is asked for every firing from there, so the list stays exactly
/// `Schedule::firings`'s (`day_at_a_time_lists_the_firings_croner_lists`).
fn firings(
    schedule: &Schedule,
    start: DateTime<Utc>,
    until: DateTime<Utc>,
    min_count: usize,
    cap: usize,
) -> (crate::core::schedule::Firings, usize) {
    use crate::core::schedule::Firings;
    let mut days = Days {
        schedule,
        times_of_day: Vec::new(),
        at: None,
        shortcut: true,
        asked: 0,
    };
    // `Schedule::firings`'s loop, with its `next_after` answered by `days`.
    let mut times = Vec::new();
    let mut t = start;
    loop {
        if times.len() >= cap {
            let f = Firings {
                times,
                truncated: true,
            };
            return (f, days.asked);
        }
        if t >= until && times.len() >= min_count {
            let f = Firings {
                times,
                truncated: false,
            };
            return (f, days.asked);
        }
        match days.next_after(t) {
            Some(next) => {
                times.push(next);
                t = next;
            }
            None => {
                let f = Firings {
                    times,
                    truncated: false,
                };
                return (f, days.asked);
            }
        }
    }
}

const DAY: i64 = 86_400;

/// Successive firings of a schedule a day at a time (see [`firings`]).
struct Days<'a> {
    schedule: &'a Schedule,
    /// The first firing day's times, in seconds after midnight, ascending.
    times_of_day: Vec<i64>,
    /// The last firing given: its day's midnight and its index in `times_of_day`.
    at: Option<(DateTime<Utc>, usize)>,
    /// Off once a day did not start where the first one did: croner answers every call.
    shortcut: bool,
    /// Calls made to croner.
    asked: usize,
}

impl Days<'_> {
    fn ask(&mut self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.asked += 1;
        self.schedule.next_after(t)
    }

    /// `schedule.next_after(t)`, where `t` is the start or the firing given before.
    fn next_after(&mut self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let known = match self.at {
            Some((day, i)) if self.shortcut && self.time(day, i) == Some(t) => Some((day, i)),
            _ => None,
        };
        let Some((day, i)) = known else {
            let next = self.ask(t)?;
            if self.shortcut && self.times_of_day.is_empty() {
                self.learn_day(next);
            }
            return Some(next);
        };
        if let Some(next) = self.time(day, i + 1) {
            self.at = Some((day, i + 1));
            return Some(next);
        }
        // The day's last firing: croner finds the next day that fires.
        let next = self.ask(day.checked_add_signed(chrono::Duration::seconds(DAY - 1))?)?;
        match split(next) {
            Some((d, s)) if Some(&s) == self.times_of_day.first() => {
                self.at = Some((d, 0));
                Some(next)
            }
            _ => {
                self.shortcut = false;
                self.ask(t)
            }
        }
    }

    /// The `i`th time of day on `day`.
    fn time(&self, day: DateTime<Utc>, i: usize) -> Option<DateTime<Utc>> {
        let s = self.times_of_day.get(i)?;
        day.checked_add_signed(chrono::Duration::seconds(*s))
    }

    /// Lists the times of `first`'s day (croner asked from its midnight on) and places `first`
    /// among them; the shortcut is off when it is not there.
    fn learn_day(&mut self, first: DateTime<Utc>) {
        let Some((day, at)) = split(first) else {
            self.shortcut = false;
            return;
        };
        let mut times = Vec::new();
        let mut t = day.checked_sub_signed(chrono::Duration::seconds(1));
        while let Some(next) = t.and_then(|t| self.ask(t)) {
            match split(next) {
                Some((d, s)) if d == day => times.push(s),
                _ => break,
            }
            t = Some(next);
        }
        match times.iter().position(|s| *s == at) {
            Some(i) => {
                self.times_of_day = times;
                self.at = Some((day, i));
            }
            None => self.shortcut = false,
        }
    }
}

/// A firing's midnight and its seconds after it; `None` for a time between whole seconds.
fn split(t: DateTime<Utc>) -> Option<(DateTime<Utc>, i64)> {
    use chrono::Timelike;
    if t.nanosecond() != 0 {
        return None;
    }
    let s = i64::from(t.num_seconds_from_midnight());
    Some((t.checked_sub_signed(chrono::Duration::seconds(s))?, s))
}

/// The minimum sum of `k` consecutive gaps, and the index where that run starts.
/// `k == 0` gives `(0, 0)`; `None` when fewer than `k` gaps exist.
pub fn min_window(gaps: &[u64], k: usize) -> Option<(u64, usize)> {
    if k > gaps.len() {
        return None;
    }
    if k == 0 {
        return Some((0, 0));
    }
    let mut sum: u64 = gaps[..k].iter().sum();
    let mut best = (sum, 0);
    for i in k..gaps.len() {
        sum = sum + gaps[i] - gaps[i - k];
        if sum < best.0 {
            best = (sum, i + 1 - k);
        }
    }
    Some(best)
}

/// The smallest `k` such that every run of `k` consecutive gaps sums to at least `target`.
/// Window minima grow with `k` (gaps are non-negative), so a binary search is exact.
/// `None` when even all gaps together fall short.
pub fn required_gaps(gaps: &[u64], target: u64) -> Option<usize> {
    let covers = |k: usize| min_window(gaps, k).is_some_and(|(s, _)| s >= target);
    if !covers(gaps.len()) {
        return None;
    }
    let (mut lo, mut hi) = (0usize, gaps.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if covers(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// `max_active_keys` below 2 leaves no room for a staged and a primary key.
pub fn check_max_keys(n: u64) -> Result<(), String> {
    if n < 2 {
        Err(format!("{n} is below 2 (a staged and a primary key)"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    const H: u64 = 3600;

    fn lifetime(e: u64, w: u64, m: u64) -> Lifetime {
        Lifetime {
            receipts: Duration::ZERO,
            expiration: Duration::from_secs(e),
            allow_expired_window: Duration::from_secs(w),
            margin: Duration::from_secs(m),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
    }

    fn plan_of(spec: &str, l: &Lifetime, n: Option<u64>) -> Plan {
        plan(&spec.parse().unwrap(), l, n, now(), None).unwrap()
    }

    #[test]
    fn keystone_defaults_with_daily_rotation_need_five_keys() {
        let l = lifetime(H, 48 * H, 0);
        assert_eq!(plan_of("1d", &l, None).required_max_active_keys, 5);
        assert_eq!(plan_of("@daily", &l, None).required_max_active_keys, 5);
        let p = plan_of("0 3 * * *", &l, Some(3));
        assert_eq!(p.safe, Some(false));
        assert_eq!(p.shortest_window, Duration::from_secs(24 * H));
        assert_eq!(plan_of("0 3 * * *", &l, Some(5)).safe, Some(true));
    }

    #[test]
    fn three_keys_need_49_hours_between_rotations() {
        let l = lifetime(H, 48 * H, 0);
        assert_eq!(plan_of("49h", &l, Some(3)).safe, Some(true));
        assert_eq!(plan_of("48h", &l, Some(3)).safe, Some(false));
        assert_eq!(plan_of("48h", &l, None).required_max_active_keys, 4);
    }

    #[test]
    fn uneven_cron_uses_the_shortest_run_not_the_average() {
        let l = lifetime(H, 48 * H, 0);
        // Mon and Wed at midnight: gaps 2d, 5d. Average 3.5d would say 3 keys suffice
        // (one gap of 3.5d >= 49h), but the 2d gap is 48h < 49h: two gaps needed.
        let p = plan_of("0 0 * * 1,3", &l, None);
        assert_eq!(p.required_max_active_keys, 4);
        assert_eq!(plan_of("0 0 * * 1,3", &l, Some(3)).safe, Some(false));
        // Twice an hour apart each day: gaps 1h, 23h. 49h needs runs of 4 gaps
        // (1+23+1+23 = 48 < 49, 5 gaps always >= 49).
        let p = plan_of("0 0,1 * * *", &l, None);
        assert_eq!(p.required_max_active_keys, 7);
    }

    #[test]
    fn margin_is_added() {
        let l = lifetime(H, 48 * H, H);
        // 50h over 25h gaps: exactly 2 gaps.
        assert_eq!(plan_of("25h", &l, None).required_max_active_keys, 4);
        let l = lifetime(H, 48 * H, H + 1);
        assert_eq!(plan_of("25h", &l, None).required_max_active_keys, 5);
    }

    #[test]
    fn too_small_n_is_an_error() {
        let l = lifetime(H, 0, 0);
        let r = plan(&"1d".parse().unwrap(), &l, Some(1), now(), None);
        assert_eq!(r.unwrap_err(), PlanError::MaxActiveKeysTooSmall(1));
        assert_eq!(plan_of("1d", &l, Some(2)).safe, Some(false));
    }

    #[test]
    fn interval_next_rotations_follow_the_last_rotation() {
        let l = lifetime(H, 0, 0);
        let last = now() - chrono::Duration::hours(2);
        let p = plan(&"6h".parse().unwrap(), &l, None, now(), Some(last)).unwrap();
        assert_eq!(p.next_rotations[0], last + chrono::Duration::hours(6));
        // Overdue: due now, not in the past.
        let old = now() - chrono::Duration::days(3);
        let p = plan(&"6h".parse().unwrap(), &l, None, now(), Some(old)).unwrap();
        assert_eq!(p.next_rotations[0], now());
    }

    #[test]
    fn leap_day_schedule_still_plans() {
        let l = lifetime(H, 48 * H, 0);
        let p = plan_of("0 0 29 2 *", &l, None);
        assert_eq!(p.required_max_active_keys, 3);
    }

    /// The day-at-a-time listing against croner asked for every firing.
    fn same_firings(spec: &str, start: DateTime<Utc>, days: i64, min_count: usize, cap: usize) {
        let s: Schedule = spec.parse().unwrap();
        let until = start + chrono::Duration::days(days);
        let slow = s.firings(start, until, min_count, cap);
        let (fast, _) = firings(&s, start, until, min_count, cap);
        assert_eq!(fast.times, slow.times, "{spec} from {start}");
        assert_eq!(fast.truncated, slow.truncated, "{spec} from {start}");
    }

    #[test]
    fn day_at_a_time_lists_the_firings_croner_lists() {
        let starts = [
            now(),
            Utc.with_ymd_and_hms(2028, 2, 28, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 29, 0, 59, 30).unwrap()
                + chrono::Duration::milliseconds(250),
        ];
        let specs = [
            "*/10 * * * * *",
            "* * * * * *",
            "0 3 * * *",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "0 0 * * 1,3",
            "0 0,1 * * *",
            "0 0 29 2 *",
            "30 */7 9-17 * * 1-5",
            "0 0 1,15 * 5",
            "0 0 L * *",
            "0 12 * * 5#2",
            "15 45 23 31 * *",
            "0 0 0 1 1 *",
            "5,50 59 23 * * *",
        ];
        for spec in specs {
            for start in starts {
                same_firings(spec, start, 800, 4, 20_000);
                same_firings(spec, start, 0, 0, 50);
                same_firings(spec, start, 2, 3, 20_000);
            }
        }
    }

    #[test]
    fn a_seconds_schedule_costs_a_day_of_firings_not_a_million_calls() {
        let s: Schedule = "*/10 * * * * *".parse().unwrap();
        let until = now() + chrono::Duration::days(400);
        let (f, asked) = firings(&s, now(), until, 4, FIRING_CAP);
        assert!(f.truncated);
        assert_eq!(f.times.len(), FIRING_CAP);
        // One day of firings (8,640) and one call per day after it.
        assert!(asked < 10_000, "croner asked {asked} times");
        assert_eq!(
            f.times[FIRING_CAP - 1],
            now() + chrono::Duration::seconds(10 * FIRING_CAP as i64)
        );
    }

    fn brute_required(gaps: &[u64], t: u64) -> Option<usize> {
        (0..=gaps.len())
            .find(|&k| (0..=gaps.len() - k).all(|i| gaps[i..i + k].iter().sum::<u64>() >= t))
    }

    proptest! {
        #[test]
        fn required_gaps_matches_brute_force(
            gaps in proptest::collection::vec(0u64..100, 0..40),
            t in 0u64..600,
        ) {
            prop_assert_eq!(required_gaps(&gaps, t), brute_required(&gaps, t));
        }

        #[test]
        fn min_window_matches_brute_force(
            gaps in proptest::collection::vec(0u64..100, 1..40),
            k in 0usize..45,
        ) {
            let brute = (k <= gaps.len()).then(|| {
                (0..=gaps.len() - k).map(|i| gaps[i..i + k].iter().sum::<u64>()).min().unwrap_or(0)
            });
            prop_assert_eq!(min_window(&gaps, k).map(|(s, _)| s), brute);
        }

        #[test]
        fn day_at_a_time_matches_croner_on_any_crontab(
            sec in proptest::sample::select(vec!["0", "*/15", "7,8", "59", "*"]),
            min in proptest::sample::select(vec!["0", "*/20", "59", "5-7", "*"]),
            hour in proptest::sample::select(vec!["0", "23", "*/6", "1-2", "*"]),
            dom in proptest::sample::select(vec!["*", "1", "29", "31", "L", "1,15", "?"]),
            month in proptest::sample::select(vec!["*", "2", "1,7", "*/5"]),
            dow in proptest::sample::select(vec!["*", "0", "1-5", "6,7", "3#2", "?"]),
            offset in 0i64..(4 * 366 * 86_400),
        ) {
            let spec = format!("{sec} {min} {hour} {dom} {month} {dow}");
            if spec.parse::<Schedule>().is_ok() {
                let start = now() + chrono::Duration::seconds(offset);
                same_firings(&spec, start, 60, 4, 3_000);
            }
        }

        #[test]
        fn fixed_interval_matches_keystone_formula(
            r in 1u64..200_000, e in 1u64..100_000, w in 0u64..400_000,
        ) {
            let l = lifetime(e, w, 0);
            let p = plan(&Schedule::Interval(Duration::from_secs(r)), &l, None, now(), None).unwrap();
            prop_assert_eq!(p.required_max_active_keys, (e + w).div_ceil(r) + 2);
        }
    }
}
