//! `fernetd check-config`: load the configuration as the daemon would, start nothing, and
//! with `--reload` ask the running daemon to load it.

use super::render::{say, Severity};
use super::CheckConfigArgs;
use crate::config::{self, DaemonSettings, Flags};
use crate::core::clock::Now;
use std::path::Path;

pub(super) fn run(a: CheckConfigArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let d = DaemonSettings::resolve(&Flags::default(), config, clock.wall)?;
    let shown = config.map_or_else(
        || {
            let default = Path::new(config::DEFAULT_CONFIG);
            match default.exists() {
                true => config::DEFAULT_CONFIG.to_string(),
                false => "no configuration file (the embedded defaults)".to_string(),
            }
        },
        |p| p.display().to_string(),
    );
    let parts: Vec<String> = d
        .repositories
        .iter()
        .map(|m| {
            format!(
                "{} {} '{}' max_active_keys {}",
                m.settings.kind,
                m.settings.key_repository.display(),
                m.schedule,
                m.max_active_keys
            )
        })
        .collect();
    let cluster = d.cluster.as_ref().map_or(String::new(), |c| {
        format!("; cluster node {} under {}", c.node, c.prefix)
    });
    println!("{shown}: valid: {}{cluster}", parts.join("; "));
    for p in d.cluster.iter().flat_map(crate::exposure::exposures) {
        say(
            Severity::Warning,
            &format!("warning: [{}] {}", p.code, p.message),
        );
    }
    if let Some(pid) = a.reload {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)
            .map_err(|e| anyhow::anyhow!("--reload {pid}: cannot signal the daemon: {e}"))?;
        println!("asked the daemon (pid {pid}) to reload");
    }
    Ok(0)
}
