//! The daemon loop: one `select!` over signals, file changes, hook completions, the next
//! timer (a rotation due, a debounced validation, a retry) and the systemd watchdog.
//!
//! It owns the per-repository runtime state and decides *when*; *what* a rotation does is the
//! repository's (and the pure `rotation` module's) business, exactly as for `fernetd rotate`.
//! It never polls: between events it sleeps until the earliest deadline (at most an hour, so a
//! wall-clock jump is corrected). Every repository operation is short (a rotation is a few
//! milliseconds; the lock wait is bounded), so a signal is handled within a second, after the
//! in-flight write completes.

use crate::agent::{self, Report};
use crate::config::{ClockSection, ClusterSettings, ConfigError, DaemonSettings, Managed};
use crate::core::clock::Now;
use crate::core::problem::Code;
use crate::hooks::{self, Context, Event};
use crate::metrics::{self, Metrics};
use crate::repository::{DaemonLock, Repository, RetentionViolation, RotateParams};
use crate::status::{self, Level};
use crate::systemd;
use crate::watcher::{self, Change, Watcher};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::Instant;

/// Quiet time after the last file event before validating (events come in bursts).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A burst never delays validation longer than this after its first event.
const DEBOUNCE_MAX: Duration = Duration::from_millis(800);
/// Retry delay after a failed rotation or pre-rotate hook.
const RETRY: Duration = Duration::from_secs(30);
use crate::credentials::PreRotated;
/// Longest sleep; bounds the effect of a wall-clock jump on the schedule.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How often a cluster daemon looks at its configuration's exposures again.
const EXPOSURE_RECHECK: Duration = Duration::from_secs(60);
/// Reports from cluster agents are published (metrics, STATUS=, READY=1) together, at most
/// this long after the first; one rotation brings several reports on every node at once.
const PUBLISH_DELAY: Duration = Duration::from_millis(100);
/// The daemon waits at most this long for another fernetd's lock, then retries later.
const LOCK_TIMEOUT: Duration = Duration::from_millis(500);
/// While the wall clock runs ahead of a repository's boot anchor and `[clock]
/// trust_system_sync` is on: how often the system's synchronized status is asked again.
const SYNC_RECHECK: Duration = Duration::from_secs(10);
/// The kernel's own error bound on its clock above which its "synchronized" is not taken
/// (microseconds, as `adjtimex` says it): the drift clocks have on their own.
const SYNC_MAX_ERROR_US: i64 = 5_000_000;

/// One managed repository and what the loop knows about it: what every mode shares, and what
/// only its mode has ([`Mode`]).
struct Slot {
    m: Managed,
    repo: Repository,
    kind: &'static str,
    /// Debounced validation deadline, and the first event of the burst.
    validate_at: Option<Instant>,
    burst_start: Option<Instant>,
    /// `None` until the first validation.
    healthy: Option<bool>,
    /// The violations last reported, so each is logged (and on_invalid run) once.
    problems: BTreeSet<String>,
    /// The warnings last reported (check's warning findings), so each is logged once.
    warnings: BTreeSet<String>,
    /// An input refused to keep live keys (a cluster key set, a state file, a rotation the
    /// gate stopped), and why: critical until a later one is taken.
    refused: Option<String>,
    /// The live view last written to `.fernetd/daemon.json`, so that it is written on change
    /// (and refreshed at least every `status::LIVE_REFRESH`, so a reader can tell it is live).
    live: Option<status::Live>,
    /// Why `status` cannot see this daemon's findings: the daemon lock could not be taken, or
    /// the live view could not be written (a read-only repository). A problem of its own,
    /// said in the log, `STATUS=`, metrics and hooks; never in the live view itself.
    lock_error: Option<String>,
    live_error: Option<String>,
    /// What the cluster configuration exposes (unsealed, plain HTTP, readable secrets): said
    /// with every other problem for as long as the configuration stays so.
    exposed: Vec<status::Problem>,
    mode: Mode,
}

/// Who decides the repository's keys: this daemon on its own schedule, or the cluster through
/// an agent task. A slot starts standalone and becomes a cluster slot when its agent starts.
enum Mode {
    Standalone(Standalone),
    Cluster(Box<Cluster>),
}

/// A repository this daemon rotates on its own schedule.
#[derive(Default)]
struct Standalone {
    next_rotation: Option<DateTime<Utc>>,
    /// When a failed rotation (or pre_rotate hook) is tried again.
    retry_at: Option<Instant>,
    /// The pre_rotate hook runs; the rotation waits for its verdict.
    pre_rotating: bool,
    /// Keys lost inside their retention window: unhealthy until the window has passed.
    lost: Vec<RetentionViolation>,
    /// Rotations failing since, and the last error: retried, and said everywhere until one
    /// succeeds.
    failing: Option<(DateTime<Utc>, String)>,
    /// Credentials: why the last migration was not verified on the primary (every key kept);
    /// said as `credentials-unverified` until a verified rotation.
    unverified: Option<String>,
}

/// A repository whose keys the cluster decides: the agent task, the channel that tells it
/// about local changes, and what it last reported.
struct Cluster {
    agent: tokio::task::AbortHandle,
    drift: UnboundedSender<()>,
    in_step: bool,
    leading: bool,
    degraded: Option<String>,
    /// Another daemon under this node's name (this one refused, or refused ones that keep
    /// trying): critical until it is gone.
    duplicate: Option<String>,
    /// Members whose acknowledgement the leader's gate found not authenticated (counted as
    /// absent): critical until the leader finds each verifies again, or stops leading.
    unauthenticated: Vec<String>,
    /// Members the sealed key set lists whose acknowledgement record the leader's gate found
    /// missing from etcd (counted as absent): critical while so, or until it stops leading.
    missing: Vec<String>,
    gate: Gate,
    /// Cluster nodes whose clocks are off by more than the margin (by the leader's fresh
    /// readings): keys stay longer by the skew.
    skewed: Vec<(String, chrono::Duration)>,
    /// What else the leader's last rotation found of the clocks: connected nodes that did not
    /// answer its probe, the hold on purges, rotations paused at the key bound.
    clocks: Clocks,
}

/// See [`Cluster::clocks`].
#[derive(Default)]
struct Clocks {
    unanswered: Vec<String>,
    hold: Option<crate::cluster::SkewHold>,
    paused: bool,
    /// The words naming this node's own clock as the one off, when every other node is.
    own: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A replaced configuration's agent must not go on acting for it.
        self.agent.abort();
    }
}

impl Standalone {
    /// A rotation failed with `reason`: failing since the first of a run of failures.
    fn failed(&mut self, reason: String) {
        let since = self.failing.take().map_or_else(Utc::now, |(t, _)| t);
        self.failing = Some((since, reason));
    }
}

/// The nodes a due rotation waits for, and whether they block it (past the gate deadline).
/// Empty while no rotation is held.
#[derive(Debug, Default, PartialEq)]
struct Gate {
    waiting: Vec<String>,
    blocking: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A stopped daemon has no live view; `status` then judges the disk alone.
        if self.live.is_some() {
            let _ = status::Live::remove(&self.repo);
        }
    }
}

impl Slot {
    fn new(m: Managed) -> Slot {
        let repo = Repository::new(&m.settings.key_repository, m.owner)
            .with_lock_timeout(
                m.settings
                    .lock_timeout
                    .unwrap_or(LOCK_TIMEOUT)
                    .min(LOCK_TIMEOUT),
            )
            .with_repair(m.settings.repair);
        Slot {
            kind: m.settings.kind.name(),
            m,
            repo,
            validate_at: None,
            burst_start: None,
            healthy: None,
            problems: BTreeSet::new(),
            warnings: BTreeSet::new(),
            refused: None,
            live: None,
            lock_error: None,
            live_error: None,
            exposed: Vec::new(),
            mode: Mode::Standalone(Standalone::default()),
        }
    }

    /// The repository's health as every rendering says it: the disk's judgement plus what only
    /// this daemon knows (returned too, for the live view `fernetd status` reads).
    fn judge(&self, now: &Now) -> (status::Summary, Vec<status::Problem>) {
        let mut sum = status::summarize(&self.m, &self.repo, now);
        let live = self.live_problems(now.wall);
        for p in live.iter().chain(&self.unseen()) {
            sum.add(p);
        }
        // Away from etcd, the set last applied is what the disk is judged against (as
        // `fernetd status` does when etcd does not answer).
        if let Mode::Cluster(c) = &self.mode {
            if c.degraded.is_some() {
                for p in sum.applied.clone() {
                    sum.add(&p);
                }
            }
        }
        (sum, live)
    }

    /// The problem of `status` not seeing this daemon, if it cannot.
    fn unseen(&self) -> Option<status::Problem> {
        let why: Vec<&str> = [&self.lock_error, &self.live_error]
            .into_iter()
            .filter_map(|w| w.as_deref())
            .collect();
        (!why.is_empty()).then(|| {
            status::unseen(format!(
                "`fernetd status` cannot see this daemon's findings: {}",
                why.join("; ")
            ))
        })
    }

    /// What this daemon knows of the repository's health beyond the disk, judged at `now`.
    fn live_problems(&self, now: DateTime<Utc>) -> Vec<status::Problem> {
        use status::Problem;
        let mut out = self.exposed.clone();
        if let Some(why) = &self.refused {
            out.push(Problem::new(Code::InputRefused, why.clone()));
        }
        match &self.mode {
            Mode::Cluster(c) => {
                if let Some(p) = skew_problem(c, self.m.settings.lifetime.retention()) {
                    out.push(p);
                }
                if let Some(reason) = &c.degraded {
                    out.push(Problem::new(Code::Degraded, format!("degraded: {reason}")));
                }
                if let Some(reason) = &c.duplicate {
                    out.push(Problem::new(Code::DuplicateNode, reason.clone()));
                }
                for node in &c.unauthenticated {
                    out.push(status::ack_unauthenticated(node));
                }
                for node in &c.missing {
                    out.push(status::ack_missing(node));
                }
            }
            Mode::Standalone(st) => {
                if let Some((since, reason)) = &st.failing {
                    let margin = self.m.settings.lifetime.margin;
                    out.push(status::rotation_failing(
                        *since,
                        st.next_rotation,
                        margin,
                        reason,
                        now,
                    ));
                }
                if let Some(why) = &st.unverified {
                    out.push(Problem::new(Code::CredentialsUnverified, why.clone()));
                }
            }
        }
        out
    }

    /// Whether the repository may count as ready: standalone always, a cluster node once it
    /// holds the cluster's key set.
    fn in_step(&self) -> bool {
        match &self.mode {
            Mode::Standalone(_) => true,
            Mode::Cluster(c) => c.in_step,
        }
    }

    /// The standalone part, unless the cluster decides this repository's keys.
    fn standalone(&self) -> Option<&Standalone> {
        match &self.mode {
            Mode::Standalone(st) => Some(st),
            Mode::Cluster(_) => None,
        }
    }

    fn repo_owner(&self) -> Option<crate::repository::Owner> {
        self.m.owner
    }

    fn context(&self) -> Context {
        let keys = self
            .repo
            .scan()
            .map(|s| s.keys().keys().copied().collect::<Vec<_>>())
            .unwrap_or_default();
        let mut ctx = Context::of(self.kind, self.repo.dir(), &keys);
        // The health the hook hears of is the one status and STATUS= give.
        let (sum, _) = self.judge(&Now::read());
        ctx.level = sum.level.name();
        ctx.problems = sum
            .problems
            .iter()
            .filter(|p| p.level != Level::Ok)
            .map(|p| format!("{}:{}", p.code, p.level.name()))
            .collect();
        ctx
    }
}

struct Daemon {
    slots: Vec<Slot>,
    /// Each managed repository's daemon lock, held from start (or the reload that added it)
    /// until the daemon stops managing it: one daemon per repository.
    locks: BTreeMap<PathBuf, DaemonLock>,
    /// Bumped on reload; results of hooks started before it are ignored.
    generation: u64,
    watcher: Option<Watcher>,
    fs_tx: UnboundedSender<Change>,
    pre_tx: UnboundedSender<(u64, usize, PreRotated)>,
    metrics: Arc<Metrics>,
    metrics_listen: Option<std::net::SocketAddr>,
    ready_sent: bool,
    last_status: String,
    cluster: Option<ClusterSettings>,
    agent_tx: UnboundedSender<(usize, Report)>,
    /// When to publish what agents reported since the last publication.
    publish_at: Option<Instant>,
    /// Both clocks at the last look: a step of the wall clock against the boot clock since
    /// then is reported (and schedules are planned again).
    clock: Now,
    /// When the cluster configuration's exposures are looked at again (a seal key or secret
    /// file whose mode changed while the daemon runs).
    exposures_at: Instant,
    /// `[clock]`: whether the system's synchronized status moves a boot anchor forward.
    clock_trust: ClockSection,
    /// While a repository's anchor lags a forward step of the wall clock that the system did
    /// not vouch for yet: when it is asked again ([`SYNC_RECHECK`]).
    sync_recheck_at: Option<Instant>,
}

/// Runs until SIGTERM or SIGINT. `reload` re-reads the configuration on SIGHUP; an error keeps
/// the running configuration.
pub async fn run(
    settings: DaemonSettings,
    reload: impl Fn() -> Result<DaemonSettings, ConfigError>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (fs_tx, mut fs_rx) = unbounded_channel();
    let (pre_tx, mut pre_rx) = unbounded_channel();
    let (agent_tx, mut agent_rx) = unbounded_channel();
    // Before anything listens or writes: a second daemon on a repository refuses to start.
    let mut locks = BTreeMap::new();
    let lock_errors = take_locks(&mut locks, &settings)?;
    let metrics = Metrics::new();
    if let Some(addr) = settings.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: {e}"))?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "metrics listen on {addr}, beyond loopback: whoever reaches it reads the \
                 repositories' health and key numbers (never key material)"
            );
        }
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let mut d = Daemon {
        slots: Vec::new(),
        locks,
        generation: 0,
        watcher: None,
        fs_tx,
        pre_tx,
        metrics,
        metrics_listen: settings.metrics_listen,
        ready_sent: false,
        last_status: String::new(),
        cluster: None,
        agent_tx,
        publish_at: None,
        clock: Now::read(),
        exposures_at: Instant::now() + EXPOSURE_RECHECK,
        clock_trust: settings.clock.clone(),
        sync_recheck_at: None,
    };
    d.install(settings, lock_errors);
    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
    loop {
        let wake = d.next_wake();
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
            _ = hup.recv() => d.reload(reload()),
            Some(change) = fs_rx.recv() => d.on_change(change),
            Some((generation, index, ok)) = pre_rx.recv() => d.on_pre_rotate(generation, index, ok),
            Some((index, report)) = agent_rx.recv() => d.on_agent(index, report),
            _ = tokio::time::sleep_until(wake) => { d.check_clock(); d.check_exposures(); d.on_timer() }
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => systemd::watchdog(),
        }
    }
    systemd::stopping();
    Ok(())
}

/// The leader's clock findings as a problem: `clock-skew`, a warning, critical once the skew
/// lasted [`crate::cluster::SKEW_CRITICAL_ROTATIONS`] rotations or rotations paused at the key
/// bound. Names the node and the size; says why keys are kept and until when.
fn skew_problem(c: &Cluster, retention: std::time::Duration) -> Option<status::Problem> {
    let mut parts = Vec::new();
    if !c.skewed.is_empty() {
        parts.push(format!(
            "clocks off by more than the margin: {}",
            c.clocks
                .own
                .clone()
                .unwrap_or_else(|| crate::cluster::describe_skew(&c.skewed))
        ));
    }
    if !c.clocks.unanswered.is_empty() {
        parts.push(format!(
            "purges held: no clock reading from {}",
            c.clocks.unanswered.join(", ")
        ));
    }
    if let Some(h) = &c.clocks.hold {
        parts.push(format!(
            "keys {}",
            h.describe_with(retention, c.clocks.own.as_deref())
        ));
    }
    if c.clocks.paused {
        parts.push("rotations paused at the key bound".to_string());
    }
    if parts.is_empty() {
        return None;
    }
    let p = status::Problem::new(Code::ClockSkew, parts.join("; "));
    let critical = c.clocks.paused || c.clocks.hold.as_ref().is_some_and(|h| h.lasting());
    Some(match critical {
        true => p.at(crate::core::problem::Level::Critical),
        false => p,
    })
}

fn instant_of(t: DateTime<Utc>) -> Instant {
    let now = Instant::now();
    match (t - Utc::now()).to_std() {
        Ok(d) => now + d,
        Err(_) => now,
    }
}

impl Daemon {
    /// Takes a configuration into use: sets up and validates every repository, (re)starts the
    /// watcher.
    fn install(&mut self, settings: DaemonSettings, lock_errors: BTreeMap<PathBuf, String>) {
        self.generation += 1;
        self.slots = settings.repositories.into_iter().map(Slot::new).collect();
        for s in &mut self.slots {
            s.lock_error = lock_errors.get(&s.m.settings.key_repository).cloned();
            if let Some(e) = &s.lock_error {
                tracing::error!(
                    "{}: cannot hold the daemon lock: {e}; `fernetd status` cannot see this \
                     daemon, and another daemon could start on it [{}]",
                    s.kind,
                    Code::LiveViewUnwritable
                );
            }
        }
        // Repositories no longer managed are another daemon's to take.
        let managed: BTreeSet<PathBuf> = self
            .slots
            .iter()
            .map(|s| s.m.settings.key_repository.clone())
            .collect();
        self.locks.retain(|p, _| managed.contains(p));
        self.cluster = settings.cluster;
        self.clock_trust = settings.clock;
        if let Some(c) = &self.cluster {
            tracing::info!(
                "cluster mode: node {} on {} under {}",
                c.node,
                c.endpoints.join(","),
                c.prefix
            );
        }
        self.check_exposures();
        let now = Now::read();
        for i in 0..self.slots.len() {
            self.start_slot(i, &now);
        }
        let dirs = self
            .slots
            .iter()
            .map(|s| watcher::absolute(s.repo.dir()))
            .collect();
        self.watcher = match Watcher::start(dirs, self.fs_tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("file watcher failed: {e}; changes outside fernetd go unnoticed");
                None
            }
        };
        self.publish();
    }

    fn start_slot(&mut self, i: usize, now: &Now) {
        let s = &mut self.slots[i];
        let m = &s.m;
        let derived = if m.settings.max_active_keys.is_none() {
            " (derived)"
        } else {
            ""
        };
        let kept = match m.settings.kind {
            crate::config::Kind::Credentials => {
                "until a verified migration moved every credential off them".to_string()
            }
            _ => format!(
                "{} after demotion",
                crate::core::duration::format(m.settings.lifetime.retention())
            ),
        };
        tracing::info!(
            "{}: {} schedule '{}', max_active_keys {}{derived}, keys kept {kept}",
            s.kind,
            s.repo.dir().display(),
            m.schedule,
            m.max_active_keys,
        );
        if m.plan.safe == Some(false) {
            tracing::error!(
                "{}: UNSAFE schedule running because allow_unsafe_schedule = true: max_active_keys \
                 {} needs to be {}; tokens will become undecryptable before they expire",
                s.kind,
                m.max_active_keys,
                m.plan.required_max_active_keys
            );
        }
        if let Some(cluster) = self.cluster.clone() {
            // The cluster decides the keys: no local keys are created here (the agent applies
            // the cluster's), but an interrupted local write is still completed.
            let has_keys = s.repo.scan().map(|sc| sc.key_entries().next().is_some());
            if has_keys.unwrap_or(false) {
                // The agent's reports say what keeps this node from the cluster's keys.
                match s.repo.resume(m.settings.key_retention(), now) {
                    Ok(out) => log_outcome(s.kind, &out),
                    Err(e) => tracing::error!("{}: {e}", s.kind),
                }
            }
            self.start_agent(i, cluster);
            return;
        }
        // Creates an empty repository, completes an interrupted rotation, adopts found keys.
        // A start that cannot write the repository is said as the failing write it is, not
        // only logged: `STATUS=` (READY=1's too), metrics, `status` and the hooks carry it.
        match s.repo.setup(m.settings.key_retention(), now) {
            Ok(out) => log_outcome(s.kind, &out),
            Err(e) => {
                tracing::error!("{}: {e} [{}]", s.kind, Code::RotationFailing);
                if let Mode::Standalone(st) = &mut s.mode {
                    st.failed(format!("setup at start failed: {e}"));
                }
            }
        }
        self.plan_next(i, now);
        self.validate(i);
    }

    fn start_agent(&mut self, i: usize, cluster: ClusterSettings) {
        let s = &mut self.slots[i];
        let (drift_tx, drift_rx) = unbounded_channel();
        let cfg = agent::AgentConfig {
            index: i,
            kind: s.m.settings.kind,
            repo: s.repo.clone(),
            cluster,
            schedule: s.m.schedule.clone(),
            params: RotateParams {
                max_active_keys: s.m.max_active_keys,
                retention: s.m.settings.key_retention(),
                force_purge: false,
                expected_primary: None,
            },
            decryptable: s.m.settings.key_decryptable(),
            margin: crate::cluster::skew_tolerance(s.m.settings.kind, s.m.settings.lifetime.margin),
            pre_rotate: s
                .m
                .settings
                .hooks
                .pre_rotate
                .clone()
                .map(|argv| agent::PreRotate {
                    argv,
                    verify: s.m.settings.hooks.verify.clone().unwrap_or_default(),
                    timeout: s.m.settings.hooks.timeout,
                    metrics: self.metrics.clone(),
                    keystone_config: s.m.settings.keystone_config.clone(),
                }),
            last_taken: std::sync::Mutex::new(None),
        };
        let task = tokio::spawn(agent::run(cfg, drift_rx, self.agent_tx.clone()));
        s.mode = Mode::Cluster(Box::new(Cluster {
            agent: task.abort_handle(),
            drift: drift_tx,
            in_step: false,
            leading: false,
            degraded: None,
            duplicate: None,
            unauthenticated: Vec::new(),
            missing: Vec::new(),
            gate: Gate::default(),
            skewed: Vec::new(),
            clocks: Clocks::default(),
        }));
    }

    fn on_agent(&mut self, index: usize, r: Report) {
        // A report from a replaced configuration's agent for a slot now standalone says
        // nothing of it.
        let Some(s) = self.slots.get_mut(index) else {
            return;
        };
        let Mode::Cluster(c) = &mut s.mode else {
            return;
        };
        let kind = s.kind;
        match r {
            Report::InStep { revision, .. } => {
                if !c.in_step || c.degraded.is_some() {
                    tracing::info!(
                        "{kind}: in step with the cluster's key set (revision {revision})"
                    );
                }
                c.in_step = true;
                c.degraded = None;
                c.gate = Gate::default();
                if s.refused.take().is_some() {
                    tracing::info!("{kind}: the cluster's key set is taken again");
                }
            }
            Report::Refused {
                reason,
                republished,
            } => {
                c.in_step = false;
                let line = match republished {
                    true => format!("{reason}; published this node's newer set over it"),
                    false => reason,
                };
                self.refuse(index, line, true);
            }
            Report::ClockSkew {
                nodes,
                unanswered,
                hold,
                paused,
                own,
            } => {
                let retention = s.m.settings.lifetime.retention();
                let kept = match (hold.as_ref(), nodes.is_empty()) {
                    (Some(h), _) => format!("keys {}", h.describe_with(retention, own.as_deref())),
                    (None, false) => "purged nothing".to_string(),
                    (None, true) => "purges resume".to_string(),
                };
                let names = |v: &[(String, chrono::Duration)]| {
                    v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
                };
                if !nodes.is_empty() && names(&nodes) != names(&c.skewed) {
                    tracing::warn!(
                        "{kind}: clocks off by more than the margin: {}; {kept}",
                        own.clone()
                            .unwrap_or_else(|| crate::cluster::describe_skew(&nodes))
                    );
                } else if nodes.is_empty() && !c.skewed.is_empty() {
                    // A node found off that gives no reading is unread, not agreeing.
                    match hold.as_ref().map_or(&[][..], |h| h.unread()) {
                        [] => tracing::info!(
                            "{kind}: every node's clock agrees again (fresh readings); {kept}"
                        ),
                        unread => tracing::warn!(
                            "{kind}: no fresh clock reading from {}, off by more than the margin \
                             when last read; {kept}",
                            unread.join(", ")
                        ),
                    }
                }
                if !unanswered.is_empty() && unanswered != c.clocks.unanswered {
                    tracing::warn!(
                        "{kind}: purged nothing: no clock reading from {}",
                        unanswered.join(", ")
                    );
                }
                let was_lasting = c.clocks.hold.as_ref().is_some_and(|h| h.lasting());
                if let Some(h) = hold.as_ref().filter(|h| h.lasting() && !was_lasting) {
                    tracing::error!(
                        "{kind}: clock skew lasted {} rotations: keys {}",
                        h.rotations,
                        h.describe_with(retention, own.as_deref())
                    );
                }
                c.skewed = nodes;
                c.clocks = Clocks {
                    unanswered,
                    hold,
                    paused,
                    own,
                };
            }
            Report::Applied {
                changes,
                undone,
                received,
            } => {
                for c in changes {
                    if undone {
                        tracing::warn!(
                            "{kind}: undid a local change, restoring the cluster's key set: {c}"
                        );
                    } else {
                        // With `sent` on the leader's line, `received` splits propagation
                        // into delivery (etcd, the network) and the local apply.
                        tracing::info!(
                            received = %received.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                            "{kind}: applied the cluster's key set: {c}"
                        );
                    }
                }
            }
            Report::Leading { leading, .. } => {
                c.leading = leading;
                c.gate = Gate::default();
                if leading {
                    tracing::info!("{kind}: leading this repository's rotations");
                } else {
                    tracing::info!("{kind}: no longer leading");
                    // The clocks and the acknowledgements are the leader's to judge: the new
                    // one reports them.
                    c.skewed.clear();
                    c.clocks = Clocks::default();
                    c.unauthenticated.clear();
                    c.missing.clear();
                }
            }
            Report::Rotated {
                revision,
                primary,
                sent,
            } => {
                // `sent` lets a reader measure propagation from the commit, not from this line.
                tracing::info!(
                    sent = %sent.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "{kind}: rotated the cluster's key set at revision {revision}: primary {primary}"
                );
                c.gate = Gate::default();
                self.metrics.rotated(kind);
                if let Some(argv) = self.slots[index].m.settings.hooks.on_rotate.clone() {
                    self.spawn_hook(index, argv, Event::Rotate);
                }
            }
            Report::GateWaiting {
                nodes,
                refused,
                overdue,
                blocking,
            } => {
                let not = crate::cluster::waiting(&nodes, &refused, "not applied");
                let until = crate::cluster::waiting(&nodes, &refused, "applied");
                let next = Gate {
                    waiting: nodes,
                    blocking,
                };
                if blocking && next != c.gate {
                    tracing::warn!(
                        "{kind}: rotation {} overdue, blocked past gate_deadline: {not}; it goes \
                         ahead once they do, or once they are removed (fernetd cluster \
                         remove-node)",
                        crate::core::duration::format(Duration::from_secs(overdue.as_secs()))
                    );
                } else if !blocking && next.waiting != c.gate.waiting {
                    match refused.is_empty() {
                        true => tracing::info!("{kind}: rotation due, held until {until}"),
                        false => tracing::info!("{kind}: rotation due, held: {not}"),
                    }
                }
                c.gate = next;
            }
            Report::Duplicate { reason } => {
                match (&reason, &c.duplicate) {
                    (Some(r), old) if old.as_ref() != Some(r) => tracing::error!("{kind}: {r}"),
                    (None, Some(_)) => {
                        tracing::info!("{kind}: no other daemon runs under this node's name now")
                    }
                    _ => {}
                }
                c.duplicate = reason;
            }
            Report::Unauthenticated { nodes, missing } => {
                c.missing = missing;
                // Each failing record is logged by the read itself (`ERROR node N: ...`).
                let cleared: Vec<&String> = c
                    .unauthenticated
                    .iter()
                    .filter(|n| !nodes.contains(n))
                    .collect();
                if !cleared.is_empty() {
                    tracing::info!(
                        "{kind}: acknowledgement authenticated again: {}",
                        cleared
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                c.unauthenticated = nodes;
            }
            Report::Degraded { reason, .. } => {
                if c.degraded.as_deref() != Some(reason.as_str()) {
                    tracing::error!(
                        "{kind}: degraded: {reason}; serving the current keys, never rotating alone, retrying"
                    );
                }
                c.in_step = false;
                c.leading = false;
                c.gate = Gate::default();
                c.unauthenticated.clear();
                c.missing.clear();
                c.degraded = Some(reason);
            }
        }
        // A repository that just received the cluster's keys is validated now.
        let s = &self.slots[index];
        if s.healthy.is_none() && matches!(&s.mode, Mode::Cluster(c) if c.in_step) {
            self.validate(index);
        }
        // The first report that makes every repository ready (the key set applied and
        // acknowledged, the disk valid) sends READY=1 at once: nothing is left to gather.
        if !self.ready_sent && self.all_ready() {
            self.publish();
            return;
        }
        // Published with the other reports of the same moment (a rotation brings an applied
        // set and its acknowledgement), or with the validation the files' change has due.
        let soon = Instant::now() + PUBLISH_DELAY;
        self.publish_at = Some(self.publish_at.map_or(soon, |t| t.min(soon)));
    }

    /// Every repository validated clean and, in cluster mode, holding the cluster's key set:
    /// what READY=1 waits for.
    fn all_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.healthy == Some(true) && s.in_step())
    }

    /// Next rotation from the recorded last rotation: a restart neither rotates twice nor
    /// skips, and slots missed while down become one rotation now.
    fn plan_next(&mut self, i: usize, clock: &Now) {
        let now = clock.wall;
        let s = &mut self.slots[i];
        let Mode::Standalone(st) = &mut s.mode else {
            return;
        };
        let basis = s.repo.history().ok().and_then(|h| h.schedule_basis());
        st.next_rotation = s.m.schedule.next_rotation(basis, clock);
        if let Some(next) = st.next_rotation {
            if next <= now {
                tracing::warn!(
                    "{}: the rotation due at {} was missed; rotating once now",
                    s.kind,
                    next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + MAX_SLEEP;
        wake = wake.min(self.sync_recheck_at.unwrap_or(wake));
        if self.cluster.is_some() {
            wake = wake.min(self.exposures_at);
        }
        // A validation due publishes anyway; the reports wait for it (at most DEBOUNCE_MAX).
        if !self.slots.iter().any(|s| s.validate_at.is_some()) {
            wake = wake.min(self.publish_at.unwrap_or(wake));
        }
        for s in &self.slots {
            if let Some(t) = s.validate_at {
                wake = wake.min(t);
            }
            let Mode::Standalone(st) = &s.mode else {
                continue;
            };
            if let Some(t) = st.retry_at {
                wake = wake.min(t);
            }
            // Re-validate when a lost key's retention window closes: healthy again then.
            if let Some(until) = st.lost.iter().map(|v| v.until).min() {
                wake = wake.min(instant_of(until));
            }
            if let (Some(next), false, None) = (st.next_rotation, st.pre_rotating, st.retry_at) {
                wake = wake.min(instant_of(next));
            }
        }
        wake
    }

    fn on_change(&mut self, c: Change) {
        let Some(s) = self.slots.get_mut(c.index) else {
            return;
        };
        if c.replaced {
            if let Some(w) = self.watcher.as_mut() {
                w.rewatch(c.index);
            }
        }
        let now = Instant::now();
        let start = *s.burst_start.get_or_insert(now);
        s.validate_at = Some((now + DEBOUNCE).min(start + DEBOUNCE_MAX));
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let lost_expired = self.slots[i]
                .standalone()
                .is_some_and(|st| st.lost.iter().any(|v| v.until <= Utc::now()));
            if lost_expired || self.slots[i].validate_at.is_some_and(|t| t <= now) {
                self.validate(i);
            }
            let Some(st) = self.slots[i].standalone() else {
                continue;
            };
            let retry_due = st.retry_at.is_none_or(|t| t <= now);
            let due = st.next_rotation.is_some_and(|t| t <= Utc::now());
            if due && retry_due && !st.pre_rotating {
                self.begin_rotation(i);
            }
        }
        self.publish();
    }

    fn begin_rotation(&mut self, i: usize) {
        let s = &mut self.slots[i];
        let Mode::Standalone(st) = &mut s.mode else {
            return;
        };
        st.retry_at = None;
        let Some(argv) = s.m.settings.hooks.pre_rotate.clone() else {
            self.rotate(i, None);
            return;
        };
        let migration = crate::credentials::Migration {
            dir: s.m.settings.key_repository.clone(),
            pre_rotate: argv,
            verify: s.m.settings.hooks.verify.clone().unwrap_or_default(),
            timeout: s.m.settings.hooks.timeout,
            keystone_config: s.m.settings.keystone_config.clone(),
        };
        st.pre_rotating = true;
        tracing::info!("{}: rotation due; running pre_rotate first", s.kind);
        let (ctx, metrics) = (s.context(), self.metrics.clone());
        let (tx, generation) = (self.pre_tx.clone(), self.generation);
        tokio::spawn(async move {
            let done = crate::credentials::migrate_and_verify(&migration, &ctx, &metrics).await;
            let _ = tx.send((generation, i, done));
        });
    }

    fn on_pre_rotate(&mut self, generation: u64, i: usize, done: PreRotated) {
        if generation != self.generation || i >= self.slots.len() {
            return;
        }
        let s = &mut self.slots[i];
        let Mode::Standalone(st) = &mut s.mode else {
            return;
        };
        st.pre_rotating = false;
        match done {
            Ok(verified) => self.rotate(i, Some(verified)),
            Err(held) => {
                tracing::error!(
                    "{}: rotation held: {held}; retrying in {}",
                    s.kind,
                    crate::core::duration::format(RETRY)
                );
                st.retry_at = Some(Instant::now() + RETRY);
                if let crate::credentials::Held::Unverified(why) = &held {
                    st.unverified = Some(why.clone());
                }
                st.failed(held.to_string());
            }
        }
        self.publish();
    }

    /// Whether this daemon still holds repository `i`'s lifetime lock, taking it again when
    /// `.fernetd` was made anew under it (deleted, or the directory replaced). False, and the
    /// repository refused, when another daemon took it meanwhile: two daemons would rotate
    /// every slot twice.
    fn still_own(&mut self, i: usize) -> bool {
        let s = &self.slots[i];
        let path = s.m.settings.key_repository.clone();
        let Some(lock) = self.locks.get(&path) else {
            return true;
        };
        match s.repo.daemon_lock_is_current(lock) {
            Ok(true) => return true,
            Ok(false) => {}
            // Judged by the rotation itself, which reads the same directory.
            Err(_) => return true,
        }
        match s.repo.hold_daemon_lock() {
            Ok(lock) => {
                tracing::warn!(
                    "{}: {} was made anew while this daemon ran; took its daemon lock again",
                    s.kind,
                    path.join(crate::repository::INTERNAL_DIR).display()
                );
                self.locks.insert(path, lock);
                true
            }
            Err(e) => {
                let why = format!(
                    "{e}; its .fernetd was made anew while this daemon ran: this daemon rotates \
                     it no more (stop one of the two daemons, then restart this one)"
                );
                if let Mode::Standalone(st) = &mut self.slots[i].mode {
                    st.retry_at = Some(Instant::now() + RETRY);
                }
                self.refuse(i, why, true);
                false
            }
        }
    }

    /// One rotation of repository `i`; credentials pass the primary their migration was
    /// verified on (the rotation runs only while it is still the primary).
    fn rotate(&mut self, i: usize, verified: Option<crate::core::key::Fingerprint>) {
        if !self.still_own(i) {
            return;
        }
        let s = &mut self.slots[i];
        let Mode::Standalone(st) = &mut s.mode else {
            return;
        };
        let params = RotateParams {
            max_active_keys: s.m.max_active_keys,
            retention: s.m.settings.key_retention(),
            // Verified: every credential is on the primary; the count rule's purges hold none.
            force_purge: verified.is_some(),
            expected_primary: verified,
        };
        let clock = Now::read();
        let now = clock.wall;
        match s.repo.rotate(params, &clock) {
            Ok(out) => {
                log_outcome(s.kind, &out);
                s.refused = None;
                st.failing = None;
                st.unverified = None;
                st.next_rotation = s.m.schedule.next_after(now);
                // Deferred (a missing key 0 was staged instead): nothing rotated.
                if out.rotation.is_some() {
                    self.metrics.rotated(s.kind);
                    if let Some(argv) = s.m.settings.hooks.on_rotate.clone() {
                        self.spawn_hook(i, argv, Event::Rotate);
                    }
                }
            }
            // The keys rotated; only the record of it failed: never rotated again for it (the
            // next validation records it from the disk), and the next slot is the schedule's.
            Err(e @ crate::Error::RotatedUnsaved { .. }) => {
                tracing::error!("{}: {e}", s.kind);
                st.next_rotation = s.m.schedule.next_after(now);
                st.failed(e.to_string());
                self.metrics.rotated(s.kind);
            }
            Err(e) => {
                tracing::error!(
                    "{}: rotation failed: {e}; retrying in {} [{}]",
                    s.kind,
                    crate::core::duration::format(RETRY),
                    Code::RotationFailing
                );
                st.retry_at = Some(Instant::now() + RETRY);
                if e.is_refusal() {
                    // Logged just above, as the failed rotation it is; said once, as refused.
                    self.refuse(i, e.to_string(), false);
                } else {
                    st.failed(e.to_string());
                }
            }
        }
    }

    /// Validates repository `i` after file events (or at start): records and reports changes
    /// fernetd did not make, and every violation.
    fn validate(&mut self, i: usize) {
        let clock = Now::read();
        let now = clock.wall;
        let s = &mut self.slots[i];
        s.validate_at = None;
        s.burst_start = None;
        let st = match &mut s.mode {
            Mode::Standalone(st) => st,
            Mode::Cluster(c) => {
                // The agent makes the disk match the cluster again; here only the
                // repository's validity is judged (its history belongs to the cluster).
                // With `repair = true`, every key of the set last applied comes back from its
                // copy first, here: the agent needs etcd (or a set taken in this process) to
                // restore one, and may be waiting on etcd for seconds.
                match s
                    .repo
                    .restore_applied(s.m.settings.key_decryptable(), &clock)
                {
                    Ok(r) => say_repairs(s.kind, &r.restored, &r.cleared),
                    Err(e) => tracing::error!(
                        "{}: could not restore the key set last applied from its copies: {e}",
                        s.kind
                    ),
                }
                let _ = c.drift.send(());
                // In step, the disk's validity (the agent keeps it the cluster's set); away
                // from the cluster, the disk against the set last applied too (a key it lacks,
                // a primary it never held), which nothing else here would say.
                let in_step = c.in_step;
                let (problems, warnings) = match s.repo.scan() {
                    Ok(scan) if in_step => split(&crate::core::check::check(&scan, s.repo_owner())),
                    Ok(scan) => match s.repo.history() {
                        Ok(h) => (
                            status::against_applied(&h, &scan.fingerprints())
                                .into_iter()
                                .map(|p| format!("{} [{}]", p.message, p.code))
                                .collect(),
                            BTreeSet::new(),
                        ),
                        Err(e) => (BTreeSet::from([e.to_string()]), BTreeSet::new()),
                    },
                    Err(e) => (BTreeSet::from([e.to_string()]), BTreeSet::new()),
                };
                note_warnings(s.kind, &mut s.warnings, warnings);
                let new_problems = problems.difference(&s.problems).count() > 0;
                for p in problems.difference(&s.problems) {
                    tracing::error!("{}: {p}", s.kind);
                }
                // Out of step and clean, not judged yet: the first set taken is validated
                // (READY=1 waits for that).
                s.healthy = match (in_step, problems.is_empty()) {
                    (true, clean) => Some(clean),
                    (false, true) => None,
                    (false, false) => Some(false),
                };
                s.problems = problems;
                if new_problems {
                    self.invalid(i);
                }
                return;
            }
        };
        let retention = s.m.settings.key_retention();
        let mut problems = BTreeSet::new();
        let mut changed = false;
        match s.repo.observe(retention, &clock) {
            Ok(obs) => {
                say_repairs(s.kind, &obs.repaired, &obs.cleared);
                for c in &obs.changes {
                    changed = true;
                    match c {
                        crate::core::history::Observation::Promoted { from, to } => tracing::warn!(
                            "{}: key {from} became primary {to} outside fernetd: this extra \
                             rotation shortens the retention window; re-planning from it",
                            s.kind
                        ),
                        crate::core::history::Observation::Adopted { number } => {
                            tracing::info!("{}: key {number} appeared outside fernetd", s.kind)
                        }
                        crate::core::history::Observation::Vanished { number, .. } => {
                            tracing::warn!("{}: key {number} was removed outside fernetd", s.kind)
                        }
                        crate::core::history::Observation::Replaced { number: 0 } => {
                            tracing::warn!(
                                "{}: the staged key 0 was replaced outside fernetd (no token was \
                             encrypted with it)",
                                s.kind
                            )
                        }
                        crate::core::history::Observation::Replaced { number } => {
                            tracing::warn!("{}: key {number} was replaced outside fernetd", s.kind)
                        }
                    }
                }
                if obs
                    .changes
                    .iter()
                    .any(|c| matches!(c, crate::core::history::Observation::Promoted { .. }))
                {
                    st.next_rotation =
                        s.m.schedule
                            .next_rotation(obs.history.schedule_basis(), &clock);
                }
                // Every loss still open, found now or recorded earlier (by `setup` at start,
                // a `fernetd rotate`, or this daemon before a restart).
                st.lost = obs.retention_violations.clone();
                let (errors, warnings) = split(&obs.report);
                problems.extend(errors);
                note_warnings(s.kind, &mut s.warnings, warnings);
            }
            Err(e) => {
                problems.insert(e.to_string());
            }
        }
        st.lost.retain(|v| v.until > now);
        problems.extend(
            st.lost
                .iter()
                .map(|v| format!("{v} [{}]", Code::KeyLostInRetention)),
        );
        let was = s.healthy;
        s.healthy = Some(problems.is_empty());
        let new_problems = problems.difference(&s.problems).count() > 0;
        for p in problems.difference(&s.problems) {
            tracing::error!("{}: {p}", s.kind);
        }
        if problems.is_empty() && was == Some(false) {
            tracing::info!("{}: valid again", s.kind);
            // A rotation held by the problem is retried now, not after the retry delay.
            st.retry_at = None;
        }
        s.problems = problems;
        if new_problems {
            self.invalid(i);
        }
        // on_change is for valid changes made outside fernetd; an invalid one is on_invalid's.
        if changed && self.slots[i].problems.is_empty() {
            if let Some(argv) = self.slots[i].m.settings.hooks.on_change.clone() {
                self.spawn_hook(i, argv, Event::Change);
            }
        }
    }

    fn spawn_hook(&self, i: usize, argv: Vec<String>, event: Event) {
        let s = &self.slots[i];
        let (ctx, timeout, metrics) = (
            s.context(),
            s.m.settings.hooks.timeout,
            self.metrics.clone(),
        );
        tokio::spawn(async move {
            hooks::run(&argv, event, &ctx, timeout, &metrics).await;
        });
    }

    /// Updates metrics, systemd's STATUS= and, once every repository validated clean, READY=1.
    fn publish(&mut self) {
        self.publish_at = None;
        let now = Now::read();
        let mut sums = Vec::with_capacity(self.slots.len());
        let clustered = self.cluster.is_some();
        for s in &mut self.slots {
            let live = status::Live {
                pid: std::process::id(),
                problems: s.live_problems(now.wall),
                refreshed: Some(now.wall),
            };
            let stale = s
                .live
                .as_ref()
                .and_then(|l| l.refreshed)
                .is_none_or(|t| now.wall - t > status::LIVE_REFRESH);
            if stale || s.live.as_ref().map(|l| &l.problems) != Some(&live.problems) {
                // Remembered once written, so a failed write is tried again.
                match live.write(&s.repo) {
                    Ok(true) => {
                        s.live = Some(live);
                        if s.live_error.take().is_some() {
                            tracing::info!(
                                "{}: the live view for `status` is written again",
                                s.kind
                            );
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let why = format!("cannot write its live view: {e}");
                        if s.live_error.as_deref() != Some(why.as_str()) {
                            tracing::error!(
                                "{}: {why}; `fernetd status` cannot see what this daemon finds \
                                 [{}]",
                                s.kind,
                                Code::LiveViewUnwritable
                            );
                        }
                        s.live_error = Some(why);
                    }
                }
            }
            let (mut sum, _) = s.judge(&now);
            match &s.mode {
                // The leader rotates on the schedule from the cluster's history, which this
                // node holds: summarize's next rotation is the cluster's.
                Mode::Cluster(c) => {
                    self.metrics
                        .cluster(s.kind, c.in_step, c.leading, c.gate.blocking)
                }
                Mode::Standalone(st) => sum.next_rotation = st.next_rotation,
            }
            let healthy = s.healthy == Some(true) && sum.level != Level::Critical;
            self.metrics.update(&sum, healthy);
            sums.push(sum);
        }
        let mut line = status::status_line(&sums);
        if clustered {
            let parts: Vec<String> = self
                .slots
                .iter()
                .filter_map(|s| match &s.mode {
                    Mode::Cluster(c) => Some((s.kind, c)),
                    Mode::Standalone(_) => None,
                })
                .map(|(kind, c)| {
                    let role = if c.degraded.is_some() {
                        "DEGRADED"
                    } else if c.leading {
                        "leader"
                    } else if c.in_step {
                        "follower"
                    } else {
                        "joining"
                    };
                    if c.gate.blocking {
                        let nodes = c.gate.waiting.join(", ");
                        format!("{kind} {role}, rotation blocked by {nodes}")
                    } else {
                        format!("{kind} {role}")
                    }
                })
                .collect();
            line = format!("{line}; cluster: {}", parts.join(", "));
        }
        if !self.ready_sent && self.all_ready() {
            systemd::ready(&line);
            tracing::info!("ready: {line}");
            self.ready_sent = true;
        } else if line != self.last_status {
            systemd::status(&line);
        }
        self.last_status = line;
    }

    /// Repository `i` refused an input to keep live keys: critical until one is taken, and
    /// said once, the same way everywhere (the ERROR line unless the caller logged it, the
    /// metric, `on_invalid`; `STATUS=` and `status` from `Slot::refused`).
    fn refuse(&mut self, i: usize, why: String, log: bool) {
        let s = &mut self.slots[i];
        if s.refused.as_deref() == Some(why.as_str()) {
            return;
        }
        if log {
            tracing::error!("{}: {why}", s.kind);
        }
        s.refused = Some(why);
        self.invalid(i);
    }

    /// Repository `i` found invalid anew: counted in the metrics, and `on_invalid` run.
    fn invalid(&self, i: usize) {
        let s = &self.slots[i];
        self.metrics.validation_failed(s.kind);
        if let Some(argv) = s.m.settings.hooks.on_invalid.clone() {
            self.spawn_hook(i, argv, Event::Invalid);
        }
    }

    /// Reports a step of the wall clock against the boot clock since the last look, and plans
    /// the standalone schedules again from the clock as it is now. Retention needs nothing:
    /// it counts by whichever clock says less time has passed.
    /// Looks at what the cluster configuration exposes (again, every EXPOSURE_RECHECK): each
    /// new exposure is logged once and said with the repositories' problems.
    fn check_exposures(&mut self) {
        let now = Instant::now();
        self.exposures_at = now + EXPOSURE_RECHECK;
        let exposed = self
            .cluster
            .as_ref()
            .map(crate::exposure::exposures)
            .unwrap_or_default();
        let Some(first) = self.slots.first() else {
            return;
        };
        if first.exposed == exposed {
            return;
        }
        for p in exposed.iter().filter(|p| !first.exposed.contains(p)) {
            tracing::warn!("{} [{}]", p.message, p.code);
        }
        for slot in &mut self.slots {
            slot.exposed = exposed.clone();
        }
        let soon = now + PUBLISH_DELAY;
        self.publish_at = Some(self.publish_at.map_or(soon, |t| t.min(soon)));
    }

    fn check_clock(&mut self) {
        let now = Now::read();
        if let Some(step) = now.step_since(self.clock.wall, self.clock.boot.as_ref()) {
            tracing::warn!(
                "the wall clock stepped {}: retention keeps counting by the boot clock; \
                 schedules are planned again from the new time",
                crate::core::clock::describe_step(step)
            );
            for i in 0..self.slots.len() {
                if self.slots[i]
                    .standalone()
                    .is_some_and(|st| !st.pre_rotating)
                {
                    self.plan_next(i, &now);
                }
            }
        }
        self.follow_sync(&now);
        self.clock = now;
    }

    /// Moves each repository's boot anchor forward to the wall clock when the wall clock runs
    /// ahead of it and the system says its clock is synchronized (`[clock]
    /// trust_system_sync`): the anchor was taken before the clock was set, and keeping it
    /// would judge every later moment of the boot as a forward step. Without that word from
    /// the system, asked again every [`SYNC_RECHECK`]; the anchor stays (a step nobody
    /// vouches for ages no key).
    fn follow_sync(&mut self, now: &Now) {
        self.sync_recheck_at = None;
        if !self.clock_trust.trust_system_sync {
            return;
        }
        let stepped: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let repo = &self.slots[i].repo;
                crate::core::clock::step_ahead(now, &repo.judging_clock(now)).is_some()
            })
            .collect();
        if stepped.is_empty() {
            return;
        }
        let source = match system_synced(&self.clock_trust, now) {
            Ok(source) => source,
            Err(why) => {
                tracing::debug!("the boot anchor stays: {why}");
                self.sync_recheck_at = Some(Instant::now() + SYNC_RECHECK);
                return;
            }
        };
        for i in stepped {
            let s = &self.slots[i];
            match s.repo.reanchor(now) {
                Ok(Some(step)) => {
                    tracing::warn!(
                        "{}: the wall clock stepped {} since this boot's first recorded                          moment and {source} says it is synchronized: retention counts from                          the wall clock again",
                        s.kind,
                        crate::core::clock::describe_step(step)
                    );
                    if s.standalone().is_some_and(|st| !st.pre_rotating) {
                        self.plan_next(i, now);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("{}: the boot anchor cannot move: {e}", s.kind);
                    self.sync_recheck_at = Some(Instant::now() + SYNC_RECHECK);
                }
            }
        }
    }

    fn reload(&mut self, next: Result<DaemonSettings, ConfigError>) {
        match next {
            Err(e) => {
                tracing::error!("SIGHUP: reload rejected, keeping the running configuration: {e}")
            }
            Ok(settings) => {
                systemd::reloading();
                if settings.metrics_listen != self.metrics_listen {
                    tracing::warn!(
                        "SIGHUP: metrics_listen cannot change at runtime; restart fernetd to use it"
                    );
                }
                let lock_errors = match take_locks(&mut self.locks, &settings) {
                    Ok(errors) => errors,
                    Err(e) => {
                        tracing::error!(
                            "SIGHUP: reload rejected, keeping the running configuration: {e}"
                        );
                        return;
                    }
                };
                self.ready_sent = false;
                self.install(settings, lock_errors);
                tracing::info!(
                    "SIGHUP: configuration reloaded ({} repositories)",
                    self.slots.len()
                );
            }
        }
    }
}

/// Takes the daemon lock of every repository in `settings` not held yet. Another daemon
/// holding one is the error (and no lock is added); any other failure (a repository that
/// cannot be created or read) is returned by path, to be said as that repository's problem.
fn take_locks(
    held: &mut BTreeMap<PathBuf, DaemonLock>,
    settings: &DaemonSettings,
) -> Result<BTreeMap<PathBuf, String>, crate::Error> {
    let mut taken = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for m in &settings.repositories {
        let path = &m.settings.key_repository;
        if held.contains_key(path) || taken.contains_key(path) {
            continue;
        }
        match Repository::new(path, m.owner).hold_daemon_lock() {
            Ok(lock) => {
                taken.insert(path.clone(), lock);
            }
            Err(e @ crate::Error::DaemonRunning { .. }) => return Err(e),
            Err(e) => {
                errors.insert(path.clone(), e.to_string());
            }
        }
    }
    held.extend(taken);
    Ok(errors)
}

fn log_outcome(kind: &str, out: &crate::repository::Outcome) {
    for w in &out.warnings {
        tracing::warn!("{kind}: {w}");
    }
    for n in &out.notes {
        tracing::info!("{kind}: {n}");
    }
}

/// Logs each of `warnings` not in `logged` (those last reported), once.
fn note_warnings(kind: &str, logged: &mut BTreeSet<String>, warnings: BTreeSet<String>) {
    for w in warnings.difference(logged) {
        tracing::warn!("{kind}: {w}");
    }
    *logged = warnings;
}

/// A check report's findings as the daemon says them: errors (unhealthy) and warnings.
fn split(report: &crate::core::check::Report) -> (BTreeSet<String>, BTreeSet<String>) {
    // File names come from whoever can write the directory: escaped, they cannot forge lines.
    let line = |f: &crate::core::check::Finding| {
        hooks::printable(&format!("{}: {} [{}]", f.path, f.message, f.code))
    };
    let errors = report.violations().map(line).collect();
    let warnings = report
        .findings
        .iter()
        .filter(|f| !f.is_violation())
        .map(line)
        .collect();
    (errors, warnings)
}

/// Whether the system vouches for `now`'s wall clock, and who did (for the log), or why not.
///
/// The kernel's NTP status (`adjtimex`, read only) counts when it is not `STA_UNSYNC` (only a
/// process with `CAP_SYS_TIME` clears it, and `settimeofday`, i.e. `date -s`, sets it), its
/// error bound is within [`SYNC_MAX_ERROR_US`], and the kernel's own time, returned by the
/// same call, is `now` within a second: a wall clock this process alone sees (an
/// `LD_PRELOAD`ed clock) is not the one the kernel vouches for. With `sync_status_file`, that
/// file instead: owned by root or this process's user, writable by no one else, not a link,
/// `synchronized` on its first line.
// `c_long` and `time_t` are i64 here but not on every target.
#[allow(clippy::useless_conversion)]
fn system_synced(cfg: &ClockSection, now: &Now) -> Result<String, String> {
    if let Some(path) = &cfg.sync_status_file {
        return file_synced(path).map(|()| path.display().to_string());
    }
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state into the zeroed
    // struct it is given, which lives for the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(format!(
            "the system's clock status cannot be read: {}",
            std::io::Error::last_os_error()
        ));
    }
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        return Err("the system does not say its clock is synchronized".into());
    }
    if i64::from(tx.maxerror) > SYNC_MAX_ERROR_US {
        return Err(format!(
            "the system's clock is synchronized within {} ms only",
            tx.maxerror / 1000
        ));
    }
    let kernel = i64::from(tx.time.tv_sec);
    if (kernel - now.wall.timestamp()).abs() > 1 {
        return Err("the wall clock read is not the one the system says is synchronized".into());
    }
    Ok("the system".into())
}

/// `[clock] sync_status_file` says `synchronized` (see [`system_synced`]).
fn file_synced(path: &std::path::Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("{shown}: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("{shown}: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{shown} is not a file owned by root or fernetd's user and writable by no one else"
        ));
    }
    let mut text = String::new();
    f.by_ref()
        .take(256)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.lines().next().map(str::trim) == Some("synchronized") {
        Ok(())
    } else {
        Err(format!("{shown} does not say synchronized"))
    }
}

/// Logs what a repair did: keys restored from their copies, files that held no key removed.
fn say_repairs(kind: &str, restored: &[u64], cleared: &[u64]) {
    use crate::core::outcome::Said;
    let restored = restored.iter().map(|&number| Said::Repaired { number });
    let cleared = cleared.iter().map(|&number| Said::ClearedNonKey { number });
    for said in restored.chain(cleared) {
        tracing::warn!("{kind}: {said}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The lies tried against the sync word: a file others may write, a link to a file that
    /// says synchronized, a file saying something else, and a wall clock the kernel's is not.
    #[test]
    fn the_sync_word_is_taken_only_from_a_source_no_one_else_can_write() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("sync");
        std::fs::write(&file, "synchronized\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(file_synced(&file), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(file_synced(&file).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(file_synced(&file).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(file_synced(&link).is_err());
        std::fs::write(&file, "unsynchronized\nsynchronized\n").unwrap();
        assert!(file_synced(&file).is_err());
        // The kernel vouches for its own clock, not for a reading 40 s off it.
        let cfg = ClockSection::default();
        let off = Now::from(Utc::now() - chrono::Duration::seconds(40));
        assert!(system_synced(&cfg, &off).is_err());
    }
}
