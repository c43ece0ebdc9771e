//! `fernetd daemon`: resolve the settings, then hand over to [`crate::daemon`] with a reload
//! that resolves them again.

use super::settings::{flags, with_lifetime};
use super::{block_on, DaemonArgs};
use crate::config::{DaemonSettings, Flags};
use crate::core::clock::Now;
use std::path::Path;

pub(super) fn run(a: DaemonArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = Flags {
        schedule: a.schedule.clone(),
        max_active_keys: a.max_active_keys,
        metrics_listen: a.metrics_listen,
        ..with_lifetime(flags(&a.repo, &a.owner), &a.lifetime)
    };
    let config = config.map(Path::to_path_buf);
    let settings = DaemonSettings::resolve(&flags, config.as_deref(), clock.wall)?;
    block_on(crate::daemon::run(settings, move || {
        DaemonSettings::resolve(&flags, config.as_deref(), chrono::Utc::now())
    }))??;
    Ok(0)
}
