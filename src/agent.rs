//! The cluster agent: one task per repository when `[cluster]` is configured. It keeps the
//! local repository equal to the cluster's key set, acknowledges what it applied under its
//! lease, and, while it holds the leadership, rotates the key set on schedule.
//!
//! A session: connect, take a lease, bootstrap (the first node proposes a key set: its
//! repository's, or a fresh one held in memory, through a transaction only one node wins; no
//! node writes keys of its own before the cluster agreed), read the key set once, then loop:
//! apply (writes before removals) → acknowledge → campaign if nobody leads → if leading and
//! due, rotate behind the promotion gate → wait for the watch (which carries each new key set
//! and leadership change), the next deadline, a keep-alive or a local change. Any error ends the session: the node keeps serving the keys it has, never
//! rotates on its own, reports itself degraded, and starts a new session after a backoff,
//! re-reading everything (so a compacted watch is simply re-established).
//!
//! The agent reports to the daemon loop through a channel; it never touches the loop's state.

use crate::clock::Now;
use crate::cluster::{Ack, Change, Cluster, ClusterError};
use crate::config::{ClusterSettings, Kind};
use crate::keyset::KeySet;
use crate::repository::{Repository, RotateParams};
use crate::schedule::Schedule;
use chrono::Utc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

type Fingerprints = std::collections::BTreeMap<u64, crate::key::Fingerprint>;

/// How soon a held rotation asks the gate again (acknowledgements are not watched).
const GATE_RETRY: Duration = Duration::from_millis(200);
/// Longest pause between sessions; shorter with a shorter lease (see [`backoff_cap`]).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A member's acknowledgement is written again at least this often, so that `member_timeout`
/// judges when it was last heard from, not when the key set last changed.
const MEMBER_REFRESH: Duration = Duration::from_secs(3600);

/// The longest pause between sessions: half a lease (at least 250 ms, at most 10 s), so that
/// after an outage every node is back within about one lease of quorum and of each other.
fn backoff_cap(lease_ttl: Duration) -> Duration {
    (lease_ttl / 2).clamp(Duration::from_millis(250), MAX_BACKOFF)
}

pub struct AgentConfig {
    pub index: usize,
    pub kind: Kind,
    pub repo: Repository,
    pub cluster: ClusterSettings,
    pub schedule: Schedule,
    pub params: RotateParams,
    /// `E + W`: how long a key the cluster's set drops must stay here when this node judges
    /// it (the leader purged with `E + W + M`; the margin covers the clocks' difference).
    pub decryptable: Duration,
    /// The margin: a node clock off by more than this holds every purge.
    pub margin: Duration,
    /// Credentials: the command that must succeed before the leader rotates (it re-encrypts
    /// every credential with the primary, so that the key the rotation purges holds none).
    pub pre_rotate: Option<PreRotate>,
}

/// A `pre_rotate` hook as the leader runs it.
pub struct PreRotate {
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// How long a leader waits before running a failed `pre_rotate` again (the daemon's retry).
const PRE_ROTATE_RETRY: Duration = Duration::from_secs(30);

/// What the agent tells the daemon loop, sent with the repository's index.
#[derive(Debug, Clone)]
pub enum Report {
    /// The key set at `revision` is on disk and acknowledged.
    InStep {
        revision: i64,
    },
    /// The local repository was changed to match the cluster: following a new key set, or
    /// (`undone`) reverting a local change to the set already applied.
    Applied {
        changes: Vec<String>,
        undone: bool,
        /// When this node received the key set it applied (read, watched or committed).
        received: chrono::DateTime<Utc>,
    },
    Leading {
        leading: bool,
    },
    Rotated {
        revision: i64,
        primary: u64,
        /// When the committing transaction was sent.
        sent: chrono::DateTime<Utc>,
    },
    /// A due rotation is held for `nodes`, which have not applied the staged key.
    /// `blocking` once it is overdue by the configured gate deadline or more.
    GateWaiting {
        nodes: Vec<String>,
        overdue: Duration,
        blocking: bool,
    },
    /// The session ended; the node serves its current keys until the next one.
    Degraded {
        reason: String,
    },
    /// The cluster's key set was refused: applying it would lose a key or step back. Every
    /// key stays; `republished` when this node published its newer set over it.
    Refused {
        reason: String,
        republished: bool,
    },
    /// The leader rotated but purged nothing: these nodes' clocks are off by more than the
    /// margin. Empty once every clock agrees again.
    ClockSkew {
        nodes: Vec<(String, chrono::Duration)>,
    },
}

/// Runs sessions until the task is dropped. `drift` carries local file changes.
pub async fn run(
    cfg: AgentConfig,
    mut drift: UnboundedReceiver<()>,
    reports: UnboundedSender<(usize, Report)>,
) {
    let cap = backoff_cap(cfg.cluster.lease_ttl);
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let err = session(&cfg, &mut drift, &reports).await;
        let _ = reports.send((
            cfg.index,
            Report::Degraded {
                reason: err.to_string(),
            },
        ));
        // What etcd holds does not open or validate here (tampered, unsealed where sealed
        // sets are required, sealed with another key): a refused input, critical until a set
        // is taken again, not only a lost connection.
        if matches!(
            err,
            SessionError::Cluster(ClusterError::Seal { .. } | ClusterError::KeySet { .. })
        ) {
            let _ = reports.send((
                cfg.index,
                Report::Refused {
                    reason: err.to_string(),
                    republished: false,
                },
            ));
        }
        // A session that lived a lease or more was healthy: the next failure starts afresh.
        if started.elapsed() > cfg.cluster.lease_ttl {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff.min(cap)).await;
        backoff = (backoff * 2).min(cap);
        // Changes noticed while degraded are handled by the next session's first comparison.
        while drift.try_recv().is_ok() {}
    }
}

/// Runs the `pre_rotate` hook while keeping the leadership's lease alive (a migration may take
/// longer than a lease); whether it succeeded.
async fn pre_rotate(
    cfg: &AgentConfig,
    set: &crate::keyset::KeySet,
    lease: &mut crate::cluster::Lease,
    keepalive: &mut tokio::time::Interval,
) -> Result<bool, SessionError> {
    let Some(p) = &cfg.pre_rotate else {
        return Ok(true);
    };
    let keys: Vec<u64> = set.keys.keys().copied().collect();
    let ctx = crate::hooks::Context::of(cfg.kind.name(), cfg.repo.dir(), &keys);
    tracing::info!("{}: rotation due; running pre_rotate first", cfg.kind);
    let hook = crate::hooks::run(
        &p.argv,
        crate::hooks::Event::PreRotate,
        &ctx,
        p.timeout,
        &p.metrics,
    );
    tokio::pin!(hook);
    loop {
        tokio::select! {
            ok = &mut hook => return Ok(ok),
            _ = keepalive.tick() => lease.refresh().await?,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Repository(#[from] crate::Error),
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("{0}: no key set, and this node has no keys to offer: waiting for one (a new cluster starts with `fernetd cluster init` on one node)")]
    NoKeySet(String),
}

async fn session(
    cfg: &AgentConfig,
    drift: &mut UnboundedReceiver<()>,
    reports: &UnboundedSender<(usize, Report)>,
) -> SessionError {
    match session_inner(cfg, drift, reports).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(
    cfg: &AgentConfig,
    drift: &mut UnboundedReceiver<()>,
    reports: &UnboundedSender<(usize, Report)>,
) -> Result<Never, SessionError> {
    let (index, kind, node) = (cfg.index, cfg.kind, cfg.cluster.node.as_str());
    let mut c = Cluster::connect(&cfg.cluster).await?;
    let mut lease = c.grant_lease(cfg.cluster.lease_ttl).await?;
    // The lease carries only the leadership. Membership is the acknowledgement, which has no
    // lease: a node that was a member stays one (and holds promotions back) while etcd cannot
    // hear from it; a new node becomes one with its first acknowledgement, once it has applied
    // the current set, and holds nothing back before.
    bootstrap(cfg, &mut c).await?;
    // From here on the watch brings every later key set, in order: a node reads the set once
    // per session, not once per change (every node would otherwise ask etcd at the same
    // moment, right after each rotation).
    let (set, revision, store) = c.snapshot(kind).await?;
    let mut watch = c.watch(kind, store + 1).await?;
    let mut view = View::new(set, revision);
    let mut keepalive = tokio::time::interval(cfg.cluster.lease_ttl / 3);
    let mut acked: Option<(i64, crate::key::Fingerprint)> = None;
    // When the last acknowledgement was written: a step of the wall clock since then is
    // acknowledged again, so the leader sees this node's clock as it is.
    let mut acked_at: Option<Now> = None;
    // A key set this node refused (by revision): never acknowledged, never rotated on.
    let mut refused: Option<i64> = None;
    let keyset_key = c.keyset_key(kind);
    let source = |revision: i64| format!("{keyset_key} at revision {revision}");
    // What the disk holds: the revision it was written for (0, no revision, when it was read
    // instead) and its keys. The disk is read again only when the file watcher reports a
    // change, so keep-alives, gate retries and new key sets cost no extra reading (apply
    // reads it under its lock anyway).
    let mut on_disk: (i64, Fingerprints) = (0, Fingerprints::new());
    let mut drifted = true;
    // The primary `pre_rotate` last succeeded under: every credential is encrypted with it, so
    // the hook need not run again until a rotation changes it (gate retries do not).
    let mut prepared_for: Option<u64> = None;
    // After a failed `pre_rotate`: not before this instant again.
    let mut held_until: Option<Instant> = None;
    loop {
        let View {
            set,
            revision,
            received,
            ..
        } = &view;
        let revision = *revision;
        if drifted {
            drifted = false;
            let local = cfg
                .repo
                .scan()
                .map(|s| s.fingerprints())
                .unwrap_or_default();
            on_disk = (0, local);
        }
        if on_disk.0 != revision {
            let wanted = set.fingerprints();
            if on_disk.1 != wanted {
                match cfg
                    .repo
                    .apply(set, &source(revision), cfg.decryptable, &Now::read())
                {
                    Ok(out) => {
                        refused = None;
                        let mut changes = out.warnings;
                        changes.extend(out.notes);
                        // Same revision as already acknowledged: someone changed the files.
                        let undone = acked.is_some_and(|(r, _)| r == revision);
                        let report = Report::Applied {
                            changes,
                            undone,
                            received: *received,
                        };
                        let _ = reports.send((index, report));
                    }
                    Err(e @ crate::Error::Refused { .. }) => {
                        refused = Some(revision);
                        let republished = heal_forward(cfg, &mut c, set, revision).await?;
                        let report = Report::Refused {
                            reason: e.to_string(),
                            republished,
                        };
                        let _ = reports.send((index, report));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            on_disk = (revision, wanted);
        }
        // Far enough that only the watch, a keep-alive or drift wakes the loop.
        let mut wake = Instant::now() + Duration::from_secs(3600);
        // Nothing is acknowledged, campaigned for or rotated on a refused set: the watch
        // brings the next one.
        let taken = refused != Some(revision);
        let staged = match set.keys.get(&0) {
            Some(k) => k.fingerprint(),
            None => unreachable!("a validated key set has key 0"),
        };
        if taken && acked != Some((revision, staged)) {
            let at = Now::read();
            let ack = Ack {
                node: node.to_string(),
                revision,
                staged,
                clock: Some(at.wall),
            };
            c.acknowledge(kind, &ack).await?;
            acked = Some((revision, staged));
            acked_at = Some(at);
            let _ = reports.send((index, Report::InStep { revision }));
        }
        if taken && view.campaign {
            view.campaign = false;
            let won = c.campaign(kind, node, lease.id).await?;
            if let Some(leading) = view.lead(won) {
                let _ = reports.send((index, Report::Leading { leading }));
            }
        }
        if taken && view.leading {
            // Judged by the boot clock since this boot's first recorded moment, as on disk.
            let clock = cfg.repo.judging_clock(&Now::read());
            let now = clock.wall;
            let basis = view.set.history.schedule_basis();
            if let Some(due) = cfg.schedule.next_rotation(basis, &clock) {
                // Credentials: every credential re-encrypted with the primary first, once per
                // primary (a gate retry does not run it again).
                let primary = view.set.primary();
                let mut prepared = cfg.pre_rotate.is_none() || prepared_for == primary;
                let held = held_until.filter(|t| *t > Instant::now());
                if let (true, false, Some(t)) = (due <= now, prepared, held) {
                    wake = t;
                } else if due <= now && !prepared {
                    prepared = pre_rotate(cfg, &view.set, &mut lease, &mut keepalive).await?;
                    if prepared {
                        prepared_for = primary;
                    } else {
                        tracing::error!(
                            "{kind}: rotation held: pre_rotate failed; retrying in {}",
                            crate::duration::format(PRE_ROTATE_RETRY)
                        );
                        wake = Instant::now() + PRE_ROTATE_RETRY;
                        held_until = Some(wake);
                    }
                }
                if due <= now && prepared {
                    let local = cfg.repo.history()?;
                    let request = crate::cluster::Rotation {
                        params: &cfg.params,
                        now: &clock,
                        held: Some(&local),
                        skew_tolerance: cfg.margin,
                        fence: Some((node, lease.id)),
                        schedule: Some(&cfg.schedule),
                        member_timeout: cfg.cluster.member_timeout,
                    };
                    match c.rotate(kind, &request).await {
                        Ok(r) => {
                            let skew = Report::ClockSkew {
                                nodes: r.skewed.clone(),
                            };
                            let _ = reports.send((index, skew));
                            let _ = reports.send((
                                index,
                                Report::Rotated {
                                    revision: r.revision,
                                    primary: r.decision.new_primary,
                                    sent: r.sent,
                                },
                            ));
                            view.committed(r.set, r.revision);
                            continue;
                        }
                        Err(ClusterError::GateWaiting { nodes, .. }) => {
                            let overdue = (now - due).to_std().unwrap_or_default();
                            let blocking = overdue >= cfg.cluster.gate_deadline;
                            let report = Report::GateWaiting {
                                nodes,
                                overdue,
                                blocking,
                            };
                            let _ = reports.send((index, report));
                            wake = Instant::now() + GATE_RETRY;
                        }
                        // Fenced: this node's claim is gone (a pause past its lease); the
                        // watch tells who leads now.
                        Err(ClusterError::NotLeader { .. }) => {
                            if let Some(leading) = view.lead(false) {
                                let _ = reports.send((index, Report::Leading { leading }));
                            }
                        }
                        // Someone rotated in this slot already: the watch brings that set.
                        Err(ClusterError::NotDue { due }) => {
                            if let Some(until) = due.and_then(|d| (d - Utc::now()).to_std().ok()) {
                                wake = Instant::now() + until;
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else if due > now {
                    let until = (due - now).to_std().unwrap_or_default();
                    wake = Instant::now() + until;
                }
            }
        }
        tokio::select! {
            r = watch.changes() => {
                for change in r? {
                    if let Some(leading) = view.absorb(change, node, lease.id) {
                        let _ = reports.send((index, Report::Leading { leading }));
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = keepalive.tick() => {
                lease.refresh().await?;
                let now = Now::read();
                let stale = acked_at.as_ref().is_some_and(|t| {
                    now.step_since(t.wall, t.boot.as_ref()).is_some()
                        || now.since(t.wall, t.boot.as_ref()) >= MEMBER_REFRESH
                });
                if stale {
                    acked = None;
                }
            }
            Some(()) = drift.recv() => drifted = true,
        }
    }
}

/// After refusing the cluster's set at `revision`: when this node holds a newer one of the
/// same cluster (etcd restored from a backup, an old value written back), it publishes its
/// own again over the refused one, through a transaction on that revision, so the cluster
/// heals forward by itself. Returns whether it did.
async fn heal_forward(
    cfg: &AgentConfig,
    c: &mut Cluster,
    offered: &KeySet,
    revision: i64,
) -> Result<bool, SessionError> {
    let local = cfg.repo.history()?;
    let verdict = crate::keyset::succession(&local, offered);
    if !verdict.behind_us() {
        return Ok(false);
    }
    let ours = cfg.repo.export(&Now::read())?;
    let done = c.republish(cfg.kind, &ours, revision).await?;
    if done {
        tracing::warn!(
            "{}: published this node's key set ({}) again over the older one at revision {revision}",
            cfg.kind,
            ours.history
                .lineage
                .as_ref()
                .map_or("no lineage".to_string(), |l| l.to_string())
        );
    }
    Ok(done)
}

/// What a session knows of the cluster: the newest key set it has seen, and the leadership.
/// Pure, so the way watched changes fold in is tested without etcd.
struct View {
    set: KeySet,
    revision: i64,
    /// When `set` reached this node.
    received: chrono::DateTime<Utc>,
    leading: bool,
    /// Whether to campaign: at the start and whenever the leadership is seen vacant, not on
    /// every change (a campaign is a write, which every node would otherwise make per rotation).
    campaign: bool,
}

impl View {
    fn new(set: KeySet, revision: i64) -> View {
        View {
            set,
            revision,
            received: Utc::now(),
            leading: false,
            campaign: true,
        }
    }

    /// This node committed `set` at `revision` itself.
    fn committed(&mut self, set: KeySet, revision: i64) {
        if revision > self.revision {
            (self.set, self.revision, self.received) = (set, revision, Utc::now());
        }
    }

    /// The outcome of a campaign; the new leadership when it changed.
    fn lead(&mut self, leading: bool) -> Option<bool> {
        (self.leading != leading).then(|| {
            self.leading = leading;
            leading
        })
    }

    /// Folds in one watched change; the new leadership when it changed.
    fn absorb(&mut self, change: Change, node: &str, lease: i64) -> Option<bool> {
        match change {
            // Not newer than what this node holds: its own rotation got ahead of events still
            // queued. Taking one would step the repository back.
            Change::KeySet { set, revision } => {
                self.committed(set, revision);
                None
            }
            Change::Leader { node: n, lease: l } => self.lead(n == node && l == lease),
            Change::NoLeader => {
                self.campaign = true;
                self.lead(false)
            }
        }
    }
}

/// Makes sure the cluster holds a key set for this repository when this node can offer one:
/// a node whose repository holds keys publishes them (with the lineage it last applied, so
/// that after etcd lost its data the newest set wins, or as a new cluster's first generation
/// when it never followed one: adoption), through a transaction only one proposal wins. A
/// node with no keys never invents any: it cannot tell a new cluster from one whose etcd lost
/// its data, so it waits for a set (`fernetd cluster init` starts a new cluster).
async fn bootstrap(cfg: &AgentConfig, c: &mut Cluster) -> Result<(), SessionError> {
    match c.fetch(cfg.kind).await {
        Ok(_) => return Ok(()),
        Err(ClusterError::Missing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let has_keys = cfg
        .repo
        .scan()
        .map(|s| s.key_entries().next().is_some())
        .unwrap_or(false);
    if !has_keys {
        return Err(SessionError::NoKeySet(c.keyset_key(cfg.kind)));
    }
    let mut proposal = cfg.repo.export(&Now::read())?;
    let what = match &proposal.history.lineage {
        Some(l) => format!("this node's key set again ({l}): etcd held none"),
        None => {
            proposal.history.lineage =
                Some(crate::keyset::Lineage::new().map_err(|_| SessionError::Random)?);
            "this node's repository".to_string()
        }
    };
    if c.republish(cfg.kind, &proposal, 0).await? {
        tracing::warn!("{}: published {what}", cfg.kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> KeySet {
        KeySet::fresh(&Now::read()).unwrap()
    }

    #[test]
    fn a_key_set_older_than_the_one_held_is_ignored() {
        let (old, new) = (set(), set());
        let mut v = View::new(old.clone(), 10);
        v.committed(new.clone(), 12);
        // Events queued before this node's own commit at 12 arrive after it.
        assert_eq!(
            v.absorb(
                Change::KeySet {
                    set: old.clone(),
                    revision: 11
                },
                "a",
                1
            ),
            None
        );
        assert_eq!(
            v.absorb(
                Change::KeySet {
                    set: old,
                    revision: 12
                },
                "a",
                1
            ),
            None
        );
        assert_eq!((v.set.fingerprints(), v.revision), (new.fingerprints(), 12));
        let newer = set();
        v.absorb(
            Change::KeySet {
                set: newer.clone(),
                revision: 13,
            },
            "a",
            1,
        );
        assert_eq!(
            (v.set.fingerprints(), v.revision),
            (newer.fingerprints(), 13)
        );
    }

    #[test]
    fn leadership_follows_the_leader_key_and_a_vacancy_calls_a_campaign() {
        let mut v = View::new(set(), 1);
        assert!(v.campaign);
        v.campaign = false;
        assert_eq!(v.lead(true), Some(true));
        assert_eq!(v.lead(true), None);
        // Its own claim, seen through the watch: no change.
        assert_eq!(
            v.absorb(
                Change::Leader {
                    node: "a".into(),
                    lease: 7
                },
                "a",
                7
            ),
            None
        );
        // The same name under another lease is an earlier session of this node, not this one.
        assert_eq!(
            v.absorb(
                Change::Leader {
                    node: "a".into(),
                    lease: 6
                },
                "a",
                7
            ),
            Some(false)
        );
        assert!(!v.campaign);
        assert_eq!(v.absorb(Change::NoLeader, "a", 7), None);
        assert!(v.campaign);
        v.campaign = false;
        v.lead(true);
        assert_eq!(
            v.absorb(
                Change::Leader {
                    node: "b".into(),
                    lease: 9
                },
                "a",
                7
            ),
            Some(false)
        );
        assert_eq!(v.absorb(Change::NoLeader, "a", 7), None);
        assert!(v.campaign);
    }
}
