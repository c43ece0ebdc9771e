//! Rotation schedules: a crontab expression or a fixed interval.
//!
//! Accepted forms: 5-field crontab (`0 3 * * *`), 6-field with seconds first (`*/10 * * * * *`),
//! the nicknames `@yearly @annually @monthly @weekly @daily @hourly`, or an interval
//! (`6h`, `2d`, `86400`). Crontab fields follow POSIX/Vixie cron (0 and 7 are Sunday; when
//! both day-of-month and day-of-week are restricted, either matches), evaluated in UTC so that
//! daylight-saving changes never shorten a gap. This module computes firing times; it decides
//! nothing about safety (that is the planner's job) and does no I/O.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;
use std::time::Duration;

/// A parsed schedule.
#[derive(Clone)]
pub enum Schedule {
    Cron {
        source: String,
        cron: Box<croner::Cron>,
    },
    Interval(Duration),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { source, .. } => write!(f, "{source}"),
            Schedule::Interval(d) => write!(f, "every {}", crate::core::duration::format(*d)),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty schedule".into());
        }
        if spec.starts_with('@') || spec.contains(char::is_whitespace) {
            let fields = spec.split_whitespace().count();
            if !spec.starts_with('@') && !(5..=6).contains(&fields) {
                return Err(format!(
                    "'{spec}' has {fields} fields; expected 5 (crontab) or 6 (with seconds)"
                ));
            }
            let parser = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build();
            let cron = parser
                .parse(spec)
                .map_err(|e| format!("'{spec}' is not a valid cron expression: {e}"))?;
            // A pattern such as `0 0 30 2 *` parses but never fires.
            let probe = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
            if cron.find_next_occurrence(&probe, false).is_err() {
                return Err(format!("'{spec}' never fires"));
            }
            Ok(Schedule::Cron {
                source: spec.to_string(),
                cron: Box::new(cron),
            })
        } else {
            let d = crate::core::duration::parse(spec).map_err(|e| {
                format!(
                    "{e} (a schedule is a cron expression, @daily-style nickname or an interval)"
                )
            })?;
            if d.is_zero() {
                return Err(format!("interval '{spec}' must be longer than zero"));
            }
            Ok(Schedule::Interval(d))
        }
    }
}

/// Firing times of a schedule over an analysis horizon, for the planner.
#[derive(Debug, Clone)]
pub struct Firings {
    pub times: Vec<DateTime<Utc>>,
    /// True when the firing cap cut the horizon short (very frequent schedules).
    pub truncated: bool,
}

impl Schedule {
    /// The one scheduling rule, for the daemon, the cluster agent and its rotations, `status`
    /// and `plan`: the first firing after `basis` ([`History::schedule_basis`]), where a basis
    /// in the future (a clock that stepped back, a foreign state file) counts as now, and none
    /// at all as now.
    ///
    /// [`History::schedule_basis`]: crate::core::history::History::schedule_basis
    pub fn next_rotation(
        &self,
        basis: Option<DateTime<Utc>>,
        now: &crate::core::clock::Now,
    ) -> Option<DateTime<Utc>> {
        self.next_after(now.at_most(basis.unwrap_or(now.wall)))
    }

    /// The first firing strictly after `t`. For an interval schedule, `t` is taken to be the
    /// last rotation, so the next firing is `t + interval`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => cron.find_next_occurrence(&t, false).ok(),
            Schedule::Interval(d) => chrono::Duration::from_std(*d)
                .ok()
                .and_then(|d| t.checked_add_signed(d)),
        }
    }

    /// Firing times from `start` (exclusive) until at least `until` and at least `min_count`
    /// firings, stopping early at `cap` firings (then `truncated` is set).
    pub fn firings(
        &self,
        start: DateTime<Utc>,
        until: DateTime<Utc>,
        min_count: usize,
        cap: usize,
    ) -> Firings {
        let mut times = Vec::new();
        let mut t = start;
        loop {
            if times.len() >= cap {
                return Firings {
                    times,
                    truncated: true,
                };
            }
            if t >= until && times.len() >= min_count {
                return Firings {
                    times,
                    truncated: false,
                };
            }
            match self.next_after(t) {
                Some(next) => {
                    times.push(next);
                    t = next;
                }
                None => {
                    return Firings {
                        times,
                        truncated: false,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    #[test]
    fn crontab_weekdays_are_posix_not_quartz() {
        // 2026-11-29 is a Sunday. `1,3` must mean Monday and Wednesday.
        let s: Schedule = "0 0 * * 1,3".parse().unwrap();
        let f = s.firings(at(2026, 11, 29, 1), at(2026, 12, 10, 0), 0, 100);
        let days: Vec<Weekday> = f.times.iter().map(|t| t.weekday()).collect();
        assert_eq!(
            &days[..4],
            &[Weekday::Mon, Weekday::Wed, Weekday::Mon, Weekday::Wed]
        );
        let s7: Schedule = "0 0 * * 7".parse().unwrap();
        assert_eq!(
            s7.next_after(at(2026, 11, 30, 0)).unwrap().weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn nicknames_and_seconds() {
        let d: Schedule = "@daily".parse().unwrap();
        assert_eq!(d.next_after(at(2026, 1, 1, 5)).unwrap(), at(2026, 1, 2, 0));
        let s: Schedule = "*/10 * * * * *".parse().unwrap();
        let n = s.next_after(at(2026, 1, 1, 5)).unwrap();
        assert_eq!(n.second(), 10);
        let w: Schedule = "@weekly".parse().unwrap();
        assert_eq!(
            w.next_after(at(2026, 1, 1, 0)).unwrap().weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn intervals() {
        let s: Schedule = "6h".parse().unwrap();
        assert_eq!(s.next_after(at(2026, 1, 1, 0)).unwrap(), at(2026, 1, 1, 6));
        let s: Schedule = "86400".parse().unwrap();
        assert!(matches!(s, Schedule::Interval(d) if d.as_secs() == 86_400));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!("".parse::<Schedule>().is_err());
        assert!("0h"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("longer than zero"));
        assert!("0 0 * *"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("4 fields"));
        assert!("61 0 * * *"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("not a valid cron"));
        assert!("0 0 30 2 *"
            .parse::<Schedule>()
            .unwrap_err()
            .contains("never fires"));
        assert!("daily".parse::<Schedule>().is_err());
        assert!("@sometimes".parse::<Schedule>().is_err());
    }

    #[test]
    fn firings_respect_cap() {
        let s: Schedule = "* * * * * *".parse().unwrap();
        let f = s.firings(at(2026, 1, 1, 0), at(2027, 1, 1, 0), 0, 1000);
        assert!(f.truncated);
        assert_eq!(f.times.len(), 1000);
    }
}
