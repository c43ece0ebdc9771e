//! What the system says: the clocks, read once per decision and handed to the core.
//!
//! The core's [`Now`] is plain data; reading it is I/O (the kernel's boot id from `/proc`,
//! `CLOCK_BOOTTIME`), so it lives here, outside the core, as `Now::read`.

use crate::core::clock::{BootStamp, Now};
use chrono::Utc;
use std::sync::OnceLock;

impl Now {
    /// Reads both clocks.
    pub fn read() -> Now {
        let wall = Utc::now();
        Now {
            wall,
            boot: boot_stamp(),
        }
    }
}

/// The kernel's boot id, read once per process: it cannot change while the process lives
/// (a reboot ends it), and a node reads the clocks several times per rotation.
fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|id| id.trim().to_string())
    })
    .as_deref()
}

fn boot_stamp() -> Option<BootStamp> {
    let id = boot_id()?;
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ms = u64::try_from(t.tv_sec()).ok()? * 1000 + u64::try_from(t.tv_nsec()).ok()? / 1_000_000;
    Some(BootStamp {
        boot: id.to_string(),
        ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clocks_read() {
        let n = Now::read();
        let b = n.boot.expect("Linux has a boot clock");
        assert_eq!(b.boot.len(), 36, "{}", b.boot);
        assert!(b.ms > 0);
    }
}
