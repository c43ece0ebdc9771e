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
            primary: crate::core::history::primary(keys.iter().copied()),
            keys: keys.to_vec(),
            level: "",
            problems: Vec::new(),
        }
    }
}

/// How much of each of a hook's stdout and stderr is kept and logged; the rest is read and
/// dropped, so a hook printing hundreds of megabytes costs no memory.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// After the hook exits, how long its output may take to reach end of file (a process the
/// hook left behind may hold the pipe open forever: its output is then cut off there).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// `program args` as every command fernetd runs for a repository starts: the repository in
/// `FERNETD_*` variables (event, kind, directory, primary, keys), no stdin, stdout and stderr
/// piped, in a process group of its own (killed whole at a timeout), killed if dropped.
pub(crate) fn command(
    program: &str,
    args: &[String],
    event: &str,
    ctx: &Context,
) -> tokio::process::Command {
    let keys: Vec<String> = ctx.keys.iter().map(u64::to_string).collect();
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .env("FERNETD_EVENT", event)
        .env("FERNETD_KIND", ctx.kind)
        .env("FERNETD_REPOSITORY", &ctx.repository)
        .env(
            "FERNETD_PRIMARY",
            ctx.primary.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env("FERNETD_KEYS", keys.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    c
}

/// Runs `argv` until it exits or `timeout` (for the whole hook) passes; returns whether it
/// exited 0: the exit status decides, not what it left running. Logs its output (at most
/// [`OUTPUT_CAP`] of each stream, control characters escaped) and outcome, counts it in
/// `metrics`. A hook killed at its timeout is killed with its whole process group; one that
/// exits leaves what it started running, and that output is cut off after a short grace.
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
    let child = command(program, args, event.name(), ctx)
        .env("FERNETD_LEVEL", ctx.level)
        .env("FERNETD_PROBLEMS", ctx.problems.join(" "))
        .spawn();
    let hook = format!("{} hook {}", event.name(), printable(program));
    let repository = printable(&ctx.repository);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(repository = %repository, "{hook}: cannot start: {e}");
            metrics.hook_ran(ctx.kind, event.name(), false);
            return false;
        }
    };
    let out = child.stdout.take().map(Captured::start);
    let err = child.stderr.take().map(Captured::start);
    let ok = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            kill_group(&child);
            let _ = child.kill().await;
            tracing::error!(
                repository = %repository,
                "{hook}: killed after {}", crate::core::duration::format(timeout)
            );
            false
        }
        Ok(Err(e)) => {
            tracing::error!(repository = %repository, "{hook}: {e}");
            false
        }
        // What the hook left running is its own business; its output is cut off below.
        Ok(Ok(status)) => {
            if status.success() {
                true
            } else {
                tracing::error!(repository = %repository, "{hook}: failed: {status}");
                false
            }
        }
    };
    // The hook has ended: its output reaches end of file at once, unless a process it left
    // behind holds the pipe, whose output is cut off after a short grace.
    for (captured, warn) in [(out, false), (err, true)] {
        let Some(captured) = captured else { continue };
        let (kept, total) = captured.finish(OUTPUT_GRACE).await;
        for line in String::from_utf8_lossy(&kept).lines() {
            let line = printable(line);
            if warn {
                tracing::warn!(repository = %repository, "{hook}: {line}");
            } else {
                tracing::info!(repository = %repository, "{hook}: {line}");
            }
        }
        if total > kept.len() as u64 {
            tracing::warn!(
                repository = %repository,
                "{hook}: output truncated: {} of {total} bytes logged",
                kept.len()
            );
        }
    }
    if ok {
        tracing::info!(repository = %repository, "{hook}: succeeded");
    }
    metrics.hook_ran(ctx.kind, event.name(), ok);
    ok
}

/// One of a hook's output streams, read to its end in a task of its own: the first
/// [`OUTPUT_CAP`] bytes are kept, the rest counted and dropped.
struct Captured {
    got: Arc<std::sync::Mutex<(Vec<u8>, u64)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Captured {
    fn start(mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Captured {
        use tokio::io::AsyncReadExt;
        let got = Arc::new(std::sync::Mutex::new((Vec::new(), 0u64)));
        let shared = got.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let Ok(mut g) = shared.lock() else { break };
                let room = OUTPUT_CAP.saturating_sub(g.0.len());
                g.0.extend_from_slice(&buf[..n.min(room)]);
                g.1 += n as u64;
            }
        });
        Captured { got, task }
    }

    /// What was read once the stream ended, or `within` passed (then reading stops).
    async fn finish(self, within: Duration) -> (Vec<u8>, u64) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(within, self.task).await.is_err() {
            abort.abort();
        }
        match self.got.lock() {
            Ok(mut g) => (std::mem::take(&mut g.0), g.1),
            Err(_) => (Vec::new(), 0),
        }
    }
}

/// SIGKILL to the hook's process group (it leads its own), so nothing it started outlives it.
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), so that a file name or a hook's output
/// cannot forge or break log lines.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
