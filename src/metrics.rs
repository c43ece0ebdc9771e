//! Prometheus metrics: the daemon updates plain counters and gauges here; a scrape renders
//! them in the text exposition format. Served only when `metrics_listen` is configured.
//!
//! The HTTP side is deliberately minimal (GET /metrics, one request per connection): the
//! daemon stays free of a web framework and its idle footprint stays small.

use crate::status::Summary;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    repos: BTreeMap<&'static str, Repo>,
    /// (repository kind, hook event) -> (runs, failures)
    hooks: BTreeMap<(String, &'static str), (u64, u64)>,
}

#[derive(Debug, Default)]
struct Repo {
    path: String,
    keys: u64,
    primary_since: Option<DateTime<Utc>>,
    last_rotation: Option<DateTime<Utc>>,
    next_rotation: Option<DateTime<Utc>>,
    rotations: u64,
    validation_failures: u64,
    healthy: bool,
    /// An input is refused to keep live keys (see `Summary::refused`).
    refused: bool,
    /// A clock is not to be trusted (see `Summary::clock_problem`).
    clock_problem: bool,
    /// Rotations fail and are retried (see `Summary::rotation_failing`).
    rotation_failing: bool,
    /// The current problems' codes and levels (see `status::Problem`).
    problems: Vec<(crate::core::problem::Code, &'static str)>,
    /// Cluster mode only.
    cluster: Option<ClusterGauges>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ClusterGauges {
    in_step: bool,
    leading: bool,
    gate_blocked: bool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere cannot leave these counters inconsistent; keep serving them.
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    /// Refreshes a repository's gauges from its summary and the daemon's health verdict.
    pub fn update(&self, s: &Summary, healthy: bool) {
        self.with(|i| {
            let r = i.repos.entry(s.kind.name()).or_default();
            r.path = s.path.display().to_string();
            r.keys = s.keys.len() as u64;
            r.primary_since = s.primary_since;
            r.last_rotation = s.last_rotation;
            r.next_rotation = s.next_rotation;
            r.healthy = healthy;
            r.refused = s.refused;
            r.clock_problem = s.clock_problem;
            r.rotation_failing = s.rotation_failing;
            r.problems = s
                .problems
                .iter()
                .filter(|p| p.level != crate::status::Level::Ok)
                .map(|p| (p.code.clone(), p.level.name()))
                .collect();
        })
    }

    pub fn cluster(&self, kind: &'static str, in_step: bool, leading: bool, gate_blocked: bool) {
        let gauges = ClusterGauges {
            in_step,
            leading,
            gate_blocked,
        };
        self.with(|i| i.repos.entry(kind).or_default().cluster = Some(gauges))
    }

    pub fn rotated(&self, kind: &'static str) {
        self.with(|i| i.repos.entry(kind).or_default().rotations += 1)
    }

    pub fn validation_failed(&self, kind: &'static str) {
        self.with(|i| i.repos.entry(kind).or_default().validation_failures += 1)
    }

    pub fn hook_ran(&self, kind: &str, event: &'static str, ok: bool) {
        self.with(|i| {
            let e = i.hooks.entry((kind.to_string(), event)).or_default();
            e.0 += 1;
            if !ok {
                e.1 += 1;
            }
        })
    }

    /// The text exposition format.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        self.with(|i| {
            let mut out = String::new();
            let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, v) in rows {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            };
            let per_repo = |f: &dyn Fn(&Repo) -> Option<f64>| -> Vec<(String, f64)> {
                i.repos
                    .iter()
                    .filter_map(|(k, r)| {
                        f(r).map(|v| {
                            (
                                format!("repository=\"{k}\",path=\"{}\"", escape(&r.path)),
                                v,
                            )
                        })
                    })
                    .collect()
            };
            let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp() as f64);
            family(
                "fernetd_build_info",
                "gauge",
                "fernetd's version.",
                vec![(format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1.0)],
            );
            family(
                "fernetd_keys",
                "gauge",
                "Keys in the repository.",
                per_repo(&|r| Some(r.keys as f64)),
            );
            family(
                "fernetd_primary_key_age_seconds",
                "gauge",
                "Time since the primary key was promoted.",
                per_repo(&|r| {
                    r.primary_since
                        .map(|t| (now - t).num_seconds().max(0) as f64)
                }),
            );
            family(
                "fernetd_last_rotation_timestamp_seconds",
                "gauge",
                "Unix time of the last rotation.",
                per_repo(&|r| ts(r.last_rotation)),
            );
            family(
                "fernetd_next_rotation_timestamp_seconds",
                "gauge",
                "Unix time of the next scheduled rotation.",
                per_repo(&|r| ts(r.next_rotation)),
            );
            family(
                "fernetd_rotations_total",
                "counter",
                "Rotations this daemon performed.",
                per_repo(&|r| Some(r.rotations as f64)),
            );
            family(
                "fernetd_validation_failures_total",
                "counter",
                "Validations that found the repository invalid.",
                per_repo(&|r| Some(r.validation_failures as f64)),
            );
            family(
                "fernetd_repository_healthy",
                "gauge",
                "1 when the repository is valid and complete, else 0.",
                per_repo(&|r| Some(if r.healthy { 1.0 } else { 0.0 })),
            );
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            family(
                "fernetd_input_refused",
                "gauge",
                "1 while an input is refused to keep keys that may decrypt live tokens (a cluster key set, a state file, a rotation).",
                per_repo(&|r| Some(flag(r.refused))),
            );
            family(
                "fernetd_clock_untrusted",
                "gauge",
                "1 while a clock is not trusted (a wall-clock step, times in the future, a cluster node's clock off by more than the margin).",
                per_repo(&|r| Some(flag(r.clock_problem))),
            );
            family(
                "fernetd_rotation_failing",
                "gauge",
                "1 while rotations fail and are retried (the error is in STATUS= and the log).",
                per_repo(&|r| Some(flag(r.rotation_failing))),
            );
            let problems = i
                .repos
                .iter()
                .flat_map(|(k, r)| {
                    r.problems.iter().map(move |(code, level)| {
                        let labels = format!(
                            "repository=\"{k}\",path=\"{}\",code=\"{code}\",severity=\"{level}\"",
                            escape(&r.path)
                        );
                        (labels, 1.0)
                    })
                })
                .collect();
            family(
                "fernetd_problem",
                "gauge",
                "1 for each problem the repository has now, by code and severity (the codes of `fernetd status`).",
                problems,
            );
            family(
                "fernetd_cluster_in_step",
                "gauge",
                "Cluster mode: 1 while connected and holding the cluster's key set, else 0.",
                per_repo(&|r| r.cluster.map(|c| flag(c.in_step))),
            );
            family(
                "fernetd_cluster_leader",
                "gauge",
                "Cluster mode: 1 while this node leads the repository's rotations.",
                per_repo(&|r| r.cluster.map(|c| flag(c.leading))),
            );
            family(
                "fernetd_cluster_gate_blocked",
                "gauge",
                "Cluster mode, on the leader: 1 while a due rotation is held past gate_deadline \
                 by nodes that have not applied the staged key.",
                per_repo(&|r| r.cluster.map(|c| flag(c.gate_blocked))),
            );
            let hooks = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, f64)> {
                i.hooks
                    .iter()
                    .map(|((k, e), c)| {
                        (format!("repository=\"{k}\",event=\"{e}\""), pick(c) as f64)
                    })
                    .collect()
            };
            family(
                "fernetd_hook_runs_total",
                "counter",
                "Hook runs.",
                hooks(|c| c.0),
            );
            family(
                "fernetd_hook_failures_total",
                "counter",
                "Hook runs that failed or timed out.",
                hooks(|c| c.1),
            );
            out
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// At most this many connections are served at once; one beyond is closed at once, so a
/// flood of idle connections costs a bounded number of file descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection gets this long to send its request head and this long to take the answer.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest request head read.
const MAX_REQUEST: usize = 4096;

/// Serves `GET /metrics` until the task is dropped. Connections are capped, slow clients time
/// out, and `accept()` errors (out of file descriptors) back off instead of spinning; the
/// server runs in a task of its own and never holds up rotation or watching.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => {
                backoff = std::time::Duration::from_millis(50);
                conn
            }
            Err(e) => {
                tracing::warn!("metrics: accept: {e}; pausing {} ms", backoff.as_millis());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // At the cap: closed at once (dropping it), the descriptor back at once.
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; MAX_REQUEST];
            let mut len = 0;
            // Read the request head (bounded size and time).
            let read = tokio::time::timeout(IO_TIMEOUT, async {
                while len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = match head.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                ["GET", "/metrics"] => ("200 OK", metrics.render(Utc::now())),
                ["GET", _] => ("404 Not Found", "not found; try /metrics\n".to_string()),
                _ => ("405 Method Not Allowed", "GET only\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            })
            .await;
        });
    }
}
