//! Time that survives clock steps.
//!
//! Retention is elapsed time: a key may be purged once `E + W + M` have passed since it was
//! demoted. The wall clock can step (an NTP step on a VM, a wrong RTC at boot, `date -s`); the
//! boot clock (`CLOCK_BOOTTIME`, which also counts suspend) cannot. Every moment fernetd
//! records carries both, as a wall time and a [`BootStamp`]. Within one boot, elapsed time is
//! the smaller of the two clocks' answers, so a step either way can only keep a key longer,
//! never shorter. A history also keeps the last [`Moment`] it was saved at: later in the same
//! boot, "now" is never taken later than that moment plus the boot clock's time since, so a
//! forward step cannot age even the keys recorded in an earlier boot. Across a reboot with no
//! moment of the new boot yet, only the wall clock is left, and a recorded time in the future
//! counts as no time at all.
//!
//! Invariant: pure. Nothing here reads a clock: `Now::read` (in [`crate::system`], outside
//! the core) asks the system, and tests inject any clock they like.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A moment on the boot clock: which boot, and how long after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootStamp {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// `CLOCK_BOOTTIME`, in milliseconds.
    pub ms: u64,
}

/// The current moment as fernetd sees it: the wall clock, and the boot clock when the system
/// has one (tests and non-Linux systems may leave it out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    pub wall: DateTime<Utc>,
    pub boot: Option<BootStamp>,
}

/// A moment on both clocks, as a history records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moment {
    pub wall: DateTime<Utc>,
    pub boot: BootStamp,
}

impl From<DateTime<Utc>> for Now {
    fn from(wall: DateTime<Utc>) -> Now {
        Now { wall, boot: None }
    }
}

impl From<&Now> for Now {
    fn from(now: &Now) -> Now {
        now.clone()
    }
}

/// `t + d`, saturating at the latest time chrono can hold.
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(to_chrono(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A std duration as chrono's, saturating (a retention of centuries is still "kept").
pub fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A step of the wall clock smaller than this (plus 0.1% of the time between the two readings,
/// for a clock that NTP slews) is not reported: the two clocks read a few microseconds apart
/// and drift apart slowly on their own.
const STEP_TOLERANCE: Duration = Duration::from_secs(5);

impl Now {
    /// This moment `d` later on both clocks (the time an operation took, measured on a
    /// monotonic clock, added to the moment it began: injected clocks stay injected).
    pub fn later_by(&self, d: std::time::Duration) -> Now {
        Now {
            wall: later(self.wall, d),
            boot: self.boot.as_ref().map(|b| BootStamp {
                boot: b.boot.clone(),
                ms: b
                    .ms
                    .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
        }
    }

    /// This moment, when the boot clock is known.
    pub fn moment(&self) -> Option<Moment> {
        self.boot.clone().map(|boot| Moment {
            wall: self.wall,
            boot,
        })
    }

    /// This reading with its wall time no later than `anchor` (a moment of the same boot) plus
    /// the time the boot clock counted since: what retention is judged by, so that a forward
    /// step of the wall clock after the anchor ages no key.
    pub fn anchored(&self, anchor: Option<&Moment>) -> Now {
        let (Some(now), Some(a)) = (self.boot.as_ref(), anchor) else {
            return self.clone();
        };
        if now.boot != a.boot.boot {
            return self.clone();
        }
        let since = Duration::from_millis(now.ms.saturating_sub(a.boot.ms));
        Now {
            wall: self.wall.min(later(a.wall, since)),
            boot: self.boot.clone(),
        }
    }

    /// Time elapsed since a moment recorded as `wall` (and `boot` when it was known): within the
    /// same boot, the smaller of what the wall clock and the boot clock say; never negative.
    pub fn since(&self, wall: DateTime<Utc>, boot: Option<&BootStamp>) -> Duration {
        let by_wall = (self.wall - wall).to_std().unwrap_or(Duration::ZERO);
        match (self.boot.as_ref(), boot) {
            (Some(now), Some(then)) if now.boot == then.boot => {
                by_wall.min(Duration::from_millis(now.ms.saturating_sub(then.ms)))
            }
            _ => by_wall,
        }
    }

    /// How far the wall clock moved against the boot clock since a moment of this boot
    /// recorded as `wall` + `boot` (positive: it stepped forward). `None` when the moment is
    /// of another boot or the difference is within what clocks drift on their own.
    pub fn step_since(
        &self,
        wall: DateTime<Utc>,
        boot: Option<&BootStamp>,
    ) -> Option<chrono::Duration> {
        let (now, then) = (self.boot.as_ref()?, boot?);
        if now.boot != then.boot {
            return None;
        }
        let by_boot = chrono::Duration::milliseconds(
            i64::try_from(now.ms).ok()? - i64::try_from(then.ms).ok()?,
        );
        let step = (self.wall - wall) - by_boot;
        let tolerance = STEP_TOLERANCE + by_boot.to_std().unwrap_or_default() / 1000;
        (step.abs().to_std().ok()? > tolerance).then_some(step)
    }

    /// The recorded time `t`, or now when `t` lies in the future (a clock that stepped back, a
    /// restored or foreign state file): what schedules count from.
    pub fn at_most(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.min(self.wall)
    }
}

/// How far the wall clock of `raw` runs ahead of the same reading `judged` by the boot clock
/// (see [`Now::anchored`]); `None` within the drift clocks have on their own.
pub fn step_ahead(raw: &Now, judged: &Now) -> Option<chrono::Duration> {
    let step = raw.wall - judged.wall;
    (step.to_std().ok()? > STEP_TOLERANCE).then_some(step)
}

/// The warning for a wall clock running ahead of the boot clock (see [`step_ahead`]), worded
/// once for `rotate`, `setup`, `status` and `STATUS=`.
pub fn step_warning(raw: &Now, judged: &Now) -> Option<String> {
    step_ahead(raw, judged).map(|step| {
        format!(
            "the wall clock stepped {} since this boot's first recorded moment; retention \
             counts by the boot clock, which did not",
            describe_step(step)
        )
    })
}

/// "3d 2h", "45s": a clock step for humans, with its direction.
pub fn describe_step(step: chrono::Duration) -> String {
    // To the nearest second: the two clocks are read microseconds apart.
    let secs = (step.abs().num_milliseconds().saturating_add(500) / 1000).max(1);
    let size = crate::core::duration::format(Duration::from_secs(secs as u64));
    if step > chrono::Duration::zero() {
        format!("forward by {size}")
    } else {
        format!("back by {size}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(wall_h: i64, boot: &str, boot_h: u64) -> Now {
        Now {
            wall: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::hours(wall_h),
            boot: Some(BootStamp {
                boot: boot.into(),
                ms: boot_h * 3_600_000,
            }),
        }
    }

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn within_a_boot_the_smaller_clock_wins_so_a_step_never_shortens_retention() {
        let then = at(0, "a", 10);
        // The wall clock stepped 72 h forward while 2 h passed.
        let now = at(74, "a", 12);
        assert_eq!(now.since(then.wall, then.boot.as_ref()), 2 * H);
        assert_eq!(
            now.step_since(then.wall, then.boot.as_ref()),
            Some(chrono::Duration::hours(72))
        );
        // Stepped back: the wall clock says less.
        let now = at(-1, "a", 12);
        assert_eq!(now.since(then.wall, then.boot.as_ref()), Duration::ZERO);
        assert_eq!(
            now.step_since(then.wall, then.boot.as_ref()),
            Some(chrono::Duration::hours(-3))
        );
        // No step: no report.
        assert_eq!(
            at(2, "a", 12).step_since(then.wall, then.boot.as_ref()),
            None
        );
    }

    #[test]
    fn across_boots_or_without_a_stamp_only_the_wall_clock_counts() {
        let then = at(0, "a", 10);
        let now = at(5, "b", 1);
        assert_eq!(now.since(then.wall, then.boot.as_ref()), 5 * H);
        assert_eq!(now.step_since(then.wall, then.boot.as_ref()), None);
        assert_eq!(now.since(then.wall, None), 5 * H);
        let plain: Now = then.wall.into();
        assert_eq!(plain.since(then.wall - chrono::Duration::hours(1), None), H);
        // A recorded moment in the future is no time at all, and schedules count from now.
        assert_eq!(then.since(now.wall, None), Duration::ZERO);
        assert_eq!(then.at_most(now.wall), then.wall);
    }

    #[test]
    fn an_anchor_of_this_boot_caps_the_wall_clock() {
        let anchor = at(0, "a", 10).moment().unwrap();
        // 72 h forward on the wall clock, 2 h on the boot clock since the anchor.
        let stepped = at(74, "a", 12).anchored(Some(&anchor));
        assert_eq!(stepped.wall, at(2, "a", 12).wall);
        // A wall clock behind the anchor's timeline is kept (it says less time has passed).
        assert_eq!(
            at(1, "a", 12).anchored(Some(&anchor)).wall,
            at(1, "a", 12).wall
        );
        // Another boot's anchor says nothing.
        assert_eq!(
            at(74, "b", 1).anchored(Some(&anchor)).wall,
            at(74, "b", 1).wall
        );
    }

    #[test]
    fn a_step_back_is_said_so() {
        assert!(describe_step(chrono::Duration::hours(-50)).starts_with("back by"));
    }
}
