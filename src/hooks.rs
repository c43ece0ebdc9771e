//! Runs operator hooks: `on_rotate`, `on_change`, `on_invalid`, and the credentials'
//! `pre_rotate`. An argv array (no shell unless the operator writes `sh -c`), a timeout after
//! which the process is killed, the environment `FERNETD_EVENT`, `FERNETD_REPOSITORY`,
//! `FERNETD_KIND`, `FERNETD_PRIMARY`, `FERNETD_KEYS` (key numbers only, never key material),
//! `FERNETD_LEVEL` and `FERNETD_PROBLEMS` (`code:severity` of each problem, as `status`).
//! Output goes to the log. A hook never blocks the daemon: callers spawn it, and a failed or
//! hung one is logged and counted.

use crate::metrics::Metrics;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// Which event a hook runs for (`FERNETD_EVENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Rotate,
    Change,
    Invalid,
    PreRotate,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Rotate => "rotate",
            Event::Change => "change",
            Event::Invalid => "invalid",
            Event::PreRotate => "pre_rotate",
        }
    }
}

/// What the hook sees of the repository.
#[derive(Debug, Clone)]
pub struct Context {
    pub kind: &'static str,
    pub repository: String,
    pub primary: Option<u64>,
    pub keys: Vec<u64>,
    /// The repository's health when the daemon starts the hook: its level and its problems'
    /// codes, as `fernetd status` gives them (`FERNETD_LEVEL`, `FERNETD_PROBLEMS`; empty where
    /// nothing was judged, as for `pre_rotate`).
    pub level: &'static str,
    pub problems: Vec<String>,
}

impl Context {
    pub fn of(kind: &'static str, dir: &Path, keys: &[u64]) -> Context {
        Context {
            kind,
            repository: dir.display().to_string(),
            primary: keys.iter().copied().filter(|&n| n > 0).max(),
            keys: keys.to_vec(),
            level: "",
            problems: Vec::new(),
        }
    }
}

/// Runs `argv` to completion or until `timeout`; returns whether it exited 0. Logs its output
/// and outcome, counts it in `metrics`.
pub async fn run(
    argv: &[String],
    event: Event,
    ctx: &Context,
    timeout: Duration,
    metrics: &Arc<Metrics>,
) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let keys: Vec<String> = ctx.keys.iter().map(u64::to_string).collect();
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("FERNETD_EVENT", event.name())
        .env("FERNETD_KIND", ctx.kind)
        .env("FERNETD_REPOSITORY", &ctx.repository)
        .env(
            "FERNETD_PRIMARY",
            ctx.primary.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("FERNETD_KEYS", keys.join(" "))
        .env("FERNETD_LEVEL", ctx.level)
        .env("FERNETD_PROBLEMS", ctx.problems.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let hook = format!("{} hook {program}", event.name());
    let ok = match child {
        Err(e) => {
            tracing::error!(repository = %ctx.repository, "{hook}: cannot start: {e}");
            false
        }
        Ok(child) => match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => {
                // Dropping the future drops the child, which kill_on_drop kills.
                tracing::error!(
                    repository = %ctx.repository,
                    "{hook}: killed after {}", crate::duration::format(timeout)
                );
                false
            }
            Ok(Err(e)) => {
                tracing::error!(repository = %ctx.repository, "{hook}: {e}");
                false
            }
            Ok(Ok(out)) => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    tracing::info!(repository = %ctx.repository, "{hook}: {line}");
                }
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    tracing::warn!(repository = %ctx.repository, "{hook}: {line}");
                }
                if out.status.success() {
                    tracing::info!(repository = %ctx.repository, "{hook}: succeeded");
                    true
                } else {
                    tracing::error!(repository = %ctx.repository, "{hook}: failed: {}", out.status);
                    false
                }
            }
        },
    };
    metrics.hook_ran(ctx.kind, event.name(), ok);
    ok
}
