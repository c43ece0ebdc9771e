//! The cluster agent: one task per repository when `[cluster]` is configured. It keeps the
//! local repository equal to the cluster's key set, acknowledges what it applied under its
//! lease, and, while it holds the leadership, rotates the key set on schedule.
//!
//! A session: connect, take a lease, bootstrap (only `cluster init` starts a cluster: a node
//! that finds no key set publishes nothing, keys or not, and waits, naming the etcd it
//! reached), read the key set once, then loop:
//! apply (writes before removals) → acknowledge → campaign if nobody leads → if leading and
//! due, rotate behind the promotion gate → wait for the watch (which carries each new key set
//! and leadership change), the next deadline, a keep-alive or a local change. Any error ends the session: the node keeps serving the keys it has, never
//! rotates on its own, reports itself degraded, and starts a new session after a backoff,
//! re-reading everything (so a compacted watch is simply re-established).
//!
//! The agent reports to the daemon loop through a channel; it never touches the loop's state.

use crate::cluster::names::{self, Identity};
use crate::cluster::{Ack, AckWatch, Change, Cluster, ClusterError, Lease, Watch};
use crate::config::{ClusterSettings, Kind};
use crate::core::clock::Now;
use crate::core::keyset::KeySet;
use crate::core::schedule::Schedule;
use crate::repository::{Repository, RotateParams};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

type Fingerprints = std::collections::BTreeMap<u64, crate::core::key::Fingerprint>;

/// How soon a held rotation first asks the gate again; each further hold doubles the pause,
/// up to [`GATE_RETRY_MAX`] (a gate held for days by a dead member costs a few requests a
/// minute, not ten a second). A held leader also watches the acknowledgements and asks at
/// once when one changes: the pause only covers what a watch may miss.
const GATE_RETRY: Duration = Duration::from_millis(200);
/// The longest pause between two asks of a held gate.
const GATE_RETRY_MAX: Duration = Duration::from_secs(30);
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
    /// The key set this node last took (applied or found on disk), kept across sessions: while
    /// etcd is unreachable a key tampered with here is restored from it, through the same
    /// guarded apply, instead of staying broken until a session is back.
    pub last_taken: std::sync::Mutex<Option<KeySet>>,
}

/// A `pre_rotate` hook as the leader runs it.
pub struct PreRotate {
    pub argv: Vec<String>,
    /// Keystone's check after the migration (see [`crate::credentials`]).
    pub verify: Vec<String>,
    pub timeout: Duration,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The keystone.conf read, for the database the verification must name.
    pub keystone_config: Option<std::path::PathBuf>,
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
    /// A due rotation is held for `nodes`, which have not applied the staged key (`refused`:
    /// those that refused the set). `blocking` once it is overdue by the configured gate
    /// deadline or more.
    GateWaiting {
        nodes: Vec<String>,
        refused: Vec<String>,
        overdue: Duration,
        blocking: bool,
    },
    /// Another daemon under this node's name: this one refused (it takes no part in the
    /// cluster), or, on the holder, daemons refused under its name that keep trying. `None`
    /// once there is none.
    Duplicate {
        reason: Option<String>,
    },
    /// What the leader's gate found of the acknowledgements: the members whose record does
    /// not verify with any seal key held (forged, copied from another node's, or sealed with a
    /// key this node lacks), counted as absent. Empty once every one verifies again. And the
    /// members the sealed key set lists that have no record at all (`missing`).
    Unauthenticated {
        nodes: Vec<String>,
        missing: Vec<String>,
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
    /// What the leader's last rotation (or paused one) found of the clocks: nodes off by more
    /// than the margin (empty once fresh readings agree again), connected nodes that did not
    /// answer, the hold on purges that outlives the skew, and whether rotations pause at the
    /// key bound ([`crate::cluster::key_bound`]).
    ClockSkew {
        nodes: Vec<(String, chrono::Duration)>,
        unanswered: Vec<String>,
        hold: Option<crate::cluster::SkewHold>,
        paused: bool,
        /// When every other member is off the same way by about the same amount: the words
        /// that name this node's own clock instead ([`crate::cluster::describe_own_skew`]).
        own: Option<String>,
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
                | SessionError::NoKeySet { due: true, .. }
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
        let retry = Instant::now() + backoff.min(cap);
        backoff = (backoff * 2).min(cap);
        // A local change noticed while degraded is undone from the key set last taken (the
        // next session's first comparison also would, but etcd may be away for long).
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(retry) => break,
                got = drift.recv() => match got {
                    Some(()) => restore_last_taken(&cfg, &reports),
                    None => tokio::time::sleep_until(retry).await,
                },
            }
        }
    }
}

/// Between sessions: makes the disk hold the key set this node last took again, after a local
/// change (a key deleted, replaced or corrupted while etcd is unreachable). The same guarded
/// apply as a session's, so nothing still needed is removed; nothing when the disk already
/// holds it, or when no set was taken yet (a node that never followed has nothing to restore).
fn restore_last_taken(cfg: &AgentConfig, reports: &UnboundedSender<(usize, Report)>) {
    let Some(set) = cfg
        .last_taken
        .lock()
        .ok()
        .and_then(|last| last.as_ref().cloned())
    else {
        return;
    };
    if on_disk(&cfg.repo) == set.fingerprints() {
        return;
    }
    let source = "the key set this node last took (etcd unreachable)";
    match cfg.repo.apply(&set, source, cfg.decryptable, &Now::read()) {
        Ok(out) => {
            let changes = out.said();
            let _ = reports.send((
                cfg.index,
                Report::Applied {
                    changes,
                    undone: true,
                    received: Utc::now(),
                },
            ));
        }
        Err(e) => tracing::error!(
            "{}: could not restore the key set this node last took: {e}",
            cfg.kind
        ),
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Repository(#[from] crate::Error),
    #[error("{0}")]
    Name(String),
    #[error(transparent)]
    Rename(#[from] names::RenameError),
    /// No key set in the etcd reached; `due` once this node's keys are due to rotate (then
    /// critical: its keys age with nothing to rotate them).
    #[error("{key}: no key set in etcd {endpoint} ({reached}){what}")]
    NoKeySet {
        key: String,
        endpoint: String,
        reached: crate::core::keyset::Binding,
        what: String,
        due: bool,
    },
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

/// A session, step by step (ARCHITECTURE.md, "Cluster mode"); it ends only with an error.
async fn session_inner(
    cfg: &AgentConfig,
    drift: &mut UnboundedReceiver<()>,
    reports: &UnboundedSender<(usize, Report)>,
) -> Result<Never, SessionError> {
    let mut s = Session::open(cfg, drift, reports).await?;
    loop {
        s.apply().await?;
        // Far enough that only the watch, a keep-alive or drift wakes the loop.
        let idle = Instant::now() + IDLE;
        // Nothing is acknowledged, campaigned for or rotated on a refused set: the watch
        // brings the next one.
        let wake = if s.taken() {
            s.acknowledge().await?;
            s.campaign().await?;
            s.watch_clocks().await?;
            match s.rotate_if_due().await? {
                Turn::Committed => continue,
                Turn::Wait(wake) => earliest(wake, s.next_watch),
            }
        } else {
            None
        };
        s.wait(wake.unwrap_or(idle)).await?;
    }
}

/// A step of the wall clock within this of one found in agreement is the same step.
const STEP_SAME: chrono::Duration = chrono::Duration::seconds(5);
/// How often a step not (yet) in agreement is put to the other nodes' clocks again.
const STEP_RECHECK: Duration = Duration::from_secs(5);

/// How soon a rotation paused at the key bound is tried again.
const SKEW_BOUND_RETRY: Duration = Duration::from_secs(5);
/// How often a pause at the key bound is said again while it lasts (it is said once when it
/// begins; the live view says it all along).
const SKEW_BOUND_REMIND: Duration = Duration::from_secs(300);

/// How long the leader waits for the other nodes' clock readings: a third of its lease (its
/// keep-alive must not wait longer), at most [`crate::cluster::PROBE_WAIT`].
fn probe_wait(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).clamp(Duration::from_millis(200), crate::cluster::PROBE_WAIT)
}

/// How often a leader reads the other nodes' clocks between rotations: half the margin
/// (a skew that comes and goes between two rotations is seen all the same), at least every
/// second, at most every minute.
fn clock_watch(margin: Duration) -> Duration {
    (margin / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The earlier of two deadlines, either of which may be unset.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long the loop waits when nothing but an event can wake it.
const IDLE: Duration = Duration::from_secs(3600);

/// One session: its connection to etcd and what its loop carries from one turn to the next.
/// Each method is one step of the loop; an error from any of them ends the session.
struct Session<'a> {
    cfg: &'a AgentConfig,
    drift: &'a mut UnboundedReceiver<()>,
    reports: &'a UnboundedSender<(usize, Report)>,
    c: Cluster,
    /// Carries only the leadership (membership is the acknowledgement, which has no lease).
    lease: Lease,
    watch: Watch,
    view: View,
    keepalive: tokio::time::Interval,
    disk: Disk,
    acked: Acked,
    /// A key set this node refused (by revision): never acknowledged, never rotated on.
    refused: Option<i64>,
    /// The revision whose etcd binding was last found right ([`bound_elsewhere`]).
    ///
    /// [`bound_elsewhere`]: crate::core::keyset::bound_elsewhere
    bound: Option<i64>,
    /// The session claimed the node's name. It does not when the set it started on is bound
    /// to another etcd; a set bound here then ends the session, so that the next one claims
    /// the name before it applies or acknowledges anything.
    named: bool,
    /// The primary (fingerprint) the credentials were last migrated to and verified on: the
    /// rotation may run, only while it is still the set's primary. Forgotten at every gate
    /// hold (a lagging node's Keystone keeps encrypting with its own primary meanwhile).
    prepared_for: Option<crate::core::key::Fingerprint>,
    /// After a failed `pre_rotate`: not before this instant again.
    held_until: Option<Instant>,
    /// A forward step of the wall clock since this boot's anchor that fresh readings showed in
    /// agreement with the other nodes (a clock corrected after fernetd started): the leader
    /// follows the wall clock, not the anchor's timeline, while the step stays this size.
    agreed_step: Option<chrono::Duration>,
    /// When the step was last put to the other nodes' clocks (not more often than
    /// [`STEP_RECHECK`]).
    step_checked: Option<Instant>,
    /// While leading: when the other nodes' clocks are read next between rotations
    /// ([`Session::watch_clocks`]).
    next_watch: Option<Instant>,
    /// Rotations pause at the key bound (reported again with each reading).
    paused: bool,
    /// While paused: not tried again before this instant. A try posts a clock probe, which
    /// wakes this loop through its own watch: without it the retry is a busy loop.
    paused_until: Option<Instant>,
    /// While paused: when the pause was last logged ([`SKEW_BOUND_REMIND`]).
    paused_said: Option<Instant>,
    /// Daemons refused under this node's name that keep trying, by lease: reported.
    duplicates: std::collections::BTreeMap<i64, Identity>,
    /// While leading: the names the promotion gate found contended (a daemon refused under a
    /// name another holds), reported with `duplicates`; none once the gate finds none.
    gate_duplicate: Option<String>,
    /// How long the next hold at the promotion gate waits before asking again
    /// ([`gate_backoff`]); back to [`GATE_RETRY`] once a rotation gets past the gate.
    gate_retry: Duration,
    /// While held at the gate: not before this instant, unless the key set (this revision)
    /// changed meanwhile; so a keep-alive or a watched event does not ask the gate early.
    gate_wake: Option<(Instant, i64)>,
    /// While held at the gate: the members' acknowledgements, watched (a change asks the
    /// gate again at once). Dropped once a rotation gets past the gate.
    acks_watch: Option<AckWatch>,
}

/// What the leader's turn leaves the loop to do.
enum Turn {
    /// It committed a new key set: go round again at once (apply and acknowledge it).
    Committed,
    /// Wait for the next event, and until this instant at the latest when there is one.
    Wait(Option<Instant>),
}

impl<'a> Session<'a> {
    /// Connect → lease → bootstrap → snapshot → watch from the store revision after it.
    async fn open(
        cfg: &'a AgentConfig,
        drift: &'a mut UnboundedReceiver<()>,
        reports: &'a UnboundedSender<(usize, Report)>,
    ) -> Result<Session<'a>, SessionError> {
        let mut c = Cluster::connect(&cfg.cluster).await?;
        let lease = c.grant_lease(cfg.cluster.lease_ttl).await?;
        // The lease carries only the leadership. Membership is the acknowledgement, which has
        // no lease: a node that was a member stays one (and holds promotions back) while etcd
        // cannot hear from it; a new node becomes one with its first acknowledgement, once it
        // has applied the current set, and holds nothing back before.
        let me = identity(lease.id);
        // Bootstrap first: a node that reached an etcd without the cluster's set (a wrong
        // endpoint, a stray etcd) waits there and claims no name in it, so it comes back to
        // the right etcd still holding its claim there.
        bootstrap(cfg, &mut c).await?;
        // From here on the watch brings every later key set, in order: a node reads the set
        // once per session, not once per change (every node would otherwise ask etcd at the
        // same moment, right after each rotation).
        let (set, revision, store) = c.snapshot(cfg.kind).await?;
        // Nor does it claim its name in an etcd whose set it refuses (bound to another etcd):
        // its claim stays the one of the etcd it belongs to. It refuses the set in `apply`.
        let foreign = bound_elsewhere(cfg, &c, &set)?.is_some();
        let duplicates = if foreign {
            std::collections::BTreeMap::new()
        } else {
            hold_name(cfg, &c, &set, &me, reports).await?
        };
        let watch = c.watch(cfg.kind, store + 1).await?;
        // This node's clock reading under its lease: the leader asks every node holding one
        // for a fresh reading before it purges.
        c.answer(cfg.kind, &cfg.cluster.node, 0, lease.id).await?;
        Ok(Session {
            cfg,
            drift,
            reports,
            c,
            lease,
            watch,
            view: View::new(set, revision),
            keepalive: tokio::time::interval(cfg.cluster.lease_ttl / 3),
            disk: Disk::new(),
            acked: Acked::default(),
            refused: None,
            bound: None,
            named: !foreign,
            prepared_for: None,
            held_until: None,
            agreed_step: None,
            step_checked: None,
            next_watch: None,
            paused: false,
            paused_until: None,
            paused_said: None,
            duplicates,
            gate_duplicate: None,
            gate_retry: GATE_RETRY,
            gate_wake: None,
            acks_watch: None,
        })
    }

    fn report(&self, report: Report) {
        let _ = self.reports.send((self.cfg.index, report));
    }

    /// A watched name record: another daemon took this node's name (the session ends: the
    /// next one is refused, naming it), or a daemon refused under it came or went.
    async fn name_changed(
        &mut self,
        suffix: &str,
        value: &[u8],
        put: bool,
    ) -> Result<(), SessionError> {
        let node = &self.cfg.cluster.node;
        match names::event(suffix, value, put, node, self.lease.id) {
            Some(names::Event::Taken(other)) => {
                let reason = format!(
                    "duplicate node name: '{node}' was taken by another daemon ({other}); this \
                     one stands down and takes no part in the cluster"
                );
                self.report(Report::Duplicate {
                    reason: Some(reason.clone()),
                });
                Err(SessionError::Name(reason))
            }
            Some(names::Event::Duplicate { lease, who }) => {
                // A daemon not seen before (each of its tries takes a new lease).
                let came = who.as_ref().is_some_and(|w| {
                    !self.duplicates.values().any(|d| {
                        Identity {
                            lease: w.lease,
                            ..d.clone()
                        } == *w
                    })
                });
                match who {
                    Some(id) => self.duplicates.insert(lease, id),
                    None => self.duplicates.remove(&lease),
                };
                if came {
                    // The other daemon may hold a copy of this disk (a clone of this node):
                    // a new token makes that copy stale before this daemon ever stops.
                    let repo = &self.cfg.repo;
                    let local = repo
                        .published(names::LOCAL_FILE)?
                        .map(|b| names::Local::parse(&b))
                        .unwrap_or_default();
                    let me = identity(self.lease.id);
                    let publish = |l: &names::Local| {
                        repo.publish(names::LOCAL_FILE, &l.to_bytes())
                            .map(|_| ())
                            .map_err(|e| ClusterError::Request {
                                what: format!("write {}", names::LOCAL_FILE),
                                reason: e.to_string(),
                            })
                    };
                    if !names::rekey(&self.c, self.cfg.kind, node, &me, &local, publish).await? {
                        return Err(SessionError::Name(format!(
                            "node name '{node}': this daemon's claim changed under it; claiming it again"
                        )));
                    }
                }
                self.report_duplicates();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The daemons refused under this node's name, and (leading) the names the gate found
    /// contended, in one report: either alone would clear the other's.
    fn report_duplicates(&self) {
        let reasons: Vec<String> = [
            duplicates_reason(&self.cfg.cluster.node, &self.duplicates),
            self.gate_duplicate.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.report(Report::Duplicate {
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        });
    }

    fn report_leading(&self, leading: Option<bool>) {
        if let Some(leading) = leading {
            self.report(Report::Leading { leading });
        }
    }

    /// `Repository::apply` when the disk differs from the set held; a refused set is reported
    /// (and published over when this node holds a newer one), never applied.
    async fn apply(&mut self) -> Result<(), SessionError> {
        let cfg = self.cfg;
        self.disk.read_if_drifted(|| on_disk(&cfg.repo));
        let revision = self.view.revision;
        if self.bound != Some(revision) {
            // Bound to another etcd (or a value written into another one): refused, every key
            // stays, until the operator's `cluster init` binds the cluster here.
            if let Some(why) = bound_elsewhere(cfg, &self.c, &self.view.set)? {
                if self.refused != Some(revision) {
                    self.refused = Some(revision);
                    self.say_refused(revision).await?;
                    let e = ClusterError::Refused {
                        key: format!("{} ({})", self.c.keyset_key(cfg.kind), self.c.endpoint()),
                        revision,
                        reason: why,
                    };
                    self.report(Report::Refused {
                        reason: e.to_string(),
                        republished: false,
                    });
                }
                return Ok(());
            }
            if !self.named {
                // Without its name checked, a second daemon under a held name would apply and
                // acknowledge for the node (a clone that started while a foreign set sat in
                // etcd took the next `cluster init --force` set and spoke for the original).
                return Err(SessionError::Name(format!(
                    "{}: the key set at revision {revision} is bound to this etcd: the session \
                     starts over to claim the node's name first",
                    cfg.kind
                )));
            }
            self.bound = Some(revision);
        }
        // A set one generation on with the keys the disk holds (a rename, a removal) is
        // applied too: the history then records its lineage and members, so that an etcd
        // backup from before it is older than what this node holds.
        // Read only for a new revision whose keys the disk holds; an unreadable history
        // counts as not recording it, and `apply` then says why.
        let offered = self.view.set.history.lineage.as_ref();
        let recorded = || {
            cfg.repo
                .history()
                .ok()
                .and_then(|h| h.lineage)
                .is_some_and(|held| {
                    offered.is_some_and(|o| {
                        o.cluster == held.cluster && o.generation == held.generation
                    })
                })
        };
        if !self.disk.must_write(revision, &self.view.set, recorded) {
            return Ok(());
        }
        let source = format!("{} at revision {revision}", self.c.keyset_key(cfg.kind));
        match cfg
            .repo
            .apply(&self.view.set, &source, cfg.decryptable, &Now::read())
        {
            Ok(out) => {
                self.refused = None;
                self.disk.read_back(on_disk(&cfg.repo));
                let changes = out.said();
                self.report(Report::Applied {
                    changes,
                    undone: self.acked.undone(revision),
                    received: self.view.received,
                });
            }
            Err(e @ crate::Error::Refused { .. }) => {
                self.refused = Some(revision);
                self.say_refused(revision).await?;
                let republished = heal_forward(cfg, &mut self.c, &self.view.set, revision).await?;
                self.report(Report::Refused {
                    reason: e.to_string(),
                    republished,
                });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A member that refuses the set at `revision` says so in its acknowledgement (which
    /// still names the set it holds), so that the leader's gate says "refused", not "has not
    /// applied". A node that never acknowledged is no member and writes nothing.
    async fn say_refused(&mut self, revision: i64) -> Result<(), SessionError> {
        let node = &self.cfg.cluster.node;
        let acks = self.c.acks(self.cfg.kind).await?;
        let Some(mut ack) = acks.into_iter().find(|a| &a.node == node) else {
            return Ok(());
        };
        if ack.refused == Some(revision) || ack.revision == 0 {
            return Ok(());
        }
        // Written again under this node's name, the record is its word about its disk: an
        // etcd restored from a backup brings back an older one, naming a staged key this node
        // may have purged since. Kept only while the disk holds that key; else the member
        // says it holds nothing the gate could promote on its word.
        if !on_disk(&self.cfg.repo).values().any(|f| *f == ack.staged) {
            ack = Ack::holding_nothing(node, None);
        }
        (ack.refused, ack.clock) = (Some(revision), Some(Now::read().wall));
        // It still acknowledges the set it holds: bound to that one's lineage and generation.
        let held = self.cfg.repo.history()?.lineage;
        self.c
            .acknowledge_set(self.cfg.kind, &ack, held.as_ref())
            .await?;
        // Taken later, the set is acknowledged afresh (without the refusal).
        self.acked.last = None;
        Ok(())
    }

    /// Whether the set held was taken (not refused): only such a set is acknowledged,
    /// campaigned for or rotated on.
    fn taken(&self) -> bool {
        self.refused != Some(self.view.revision)
    }

    /// `Cluster::acknowledge` the set held, unless it already was (and is not stale).
    async fn acknowledge(&mut self) -> Result<(), SessionError> {
        let revision = self.view.revision;
        let staged = match self.view.set.keys.get(&0) {
            Some(k) => k.fingerprint(),
            None => unreachable!("a validated key set has key 0"),
        };
        if !self.acked.due(revision, staged) {
            return Ok(());
        }
        // A statement about the disk: read it now, and only a repository holding every key of
        // the set acknowledges it (the leader promotes on this word).
        self.disk.read(on_disk(&self.cfg.repo));
        if !self.disk.holds(&self.view.set) {
            tracing::warn!(
                "{}: not acknowledging the key set at revision {revision}: the repository does not hold its keys",
                self.cfg.kind
            );
            return Ok(());
        }
        if let Ok(mut last) = self.cfg.last_taken.lock() {
            *last = Some(self.view.set.clone());
        }
        let at = Now::read();
        let ack = Ack {
            node: self.cfg.cluster.node.clone(),
            revision,
            staged,
            clock: Some(at.wall),
            refused: None,
        };
        let set = self.view.set.history.lineage.as_ref();
        self.c.acknowledge_set(self.cfg.kind, &ack, set).await?;
        self.acked.wrote(revision, staged, at);
        self.report(Report::InStep { revision });
        Ok(())
    }

    /// `Cluster::campaign`, only at the start or after the watch saw the leader key vanish.
    async fn campaign(&mut self) -> Result<(), SessionError> {
        if !self.view.campaign {
            return Ok(());
        }
        self.view.campaign = false;
        let won = self
            .c
            .campaign(self.cfg.kind, &self.cfg.cluster.node, self.lease.id)
            .await?;
        let leading = self.view.lead(won);
        self.report_leading(leading);
        Ok(())
    }

    /// If leading and due: `pre_rotate` (credentials, once per primary), then
    /// `Cluster::rotate` behind the gate.
    async fn rotate_if_due(&mut self) -> Result<Turn, SessionError> {
        if !self.view.leading {
            (self.paused, self.paused_until, self.paused_said) = (false, None, None);
            return Ok(Turn::Wait(None));
        }
        if let Some(t) = self.paused_until.filter(|t| *t > Instant::now()) {
            return Ok(Turn::Wait(Some(t)));
        }
        if let Some((wake, revision)) = self.gate_wake {
            if revision == self.view.revision && wake > Instant::now() {
                return Ok(Turn::Wait(Some(wake)));
            }
        }
        let cfg = self.cfg;
        let clock = self.leading_clock().await?;
        let basis = self.view.set.history.schedule_basis();
        let Some(due) = cfg.schedule.next_rotation(basis, &clock) else {
            return Ok(Turn::Wait(None));
        };
        // Credentials: every credential re-encrypted with the primary first, once per primary
        // (a gate retry does not run it again).
        let primary = crate::core::credentials::primary(&self.view.set.fingerprints()).map(|p| p.1);
        let prepared =
            cfg.pre_rotate.is_none() || (primary.is_some() && self.prepared_for == primary);
        let held = self.held_until.filter(|t| *t > Instant::now());
        match plan(due, clock.wall, prepared, held) {
            Plan::Wait(until) => return Ok(Turn::Wait(Some(Instant::now() + until))),
            Plan::Held(t) => return Ok(Turn::Wait(Some(t))),
            Plan::Prepare => match self.pre_rotate().await? {
                Ok(verified) => self.prepared_for = Some(verified),
                Err(held) => {
                    tracing::error!(
                        "{}: rotation held: {held}; retrying in {}",
                        cfg.kind,
                        crate::core::duration::format(PRE_ROTATE_RETRY)
                    );
                    let wake = Instant::now() + PRE_ROTATE_RETRY;
                    self.held_until = Some(wake);
                    return Ok(Turn::Wait(Some(wake)));
                }
            },
            Plan::Rotate => {}
        }
        self.rotate(&clock, due).await
    }

    /// The clock the leader judges "due" by and stamps key sets with: the boot clock since
    /// this boot's first recorded moment, as on disk (a forward step of the wall clock ages no
    /// key), unless the wall clock stepped forward since and the other nodes' clocks, read now,
    /// agree with it: then the anchor was the wrong one (fernetd started before the clock was
    /// set) and the leader follows the wall clock, on the timeline its acknowledgements and
    /// every other node carry, instead of skipping slots for the rest of the boot; and the
    /// node's anchor on disk moves to the agreed time ([`crate::repository::Repository::reanchor`]).
    async fn leading_clock(&mut self) -> Result<Now, SessionError> {
        let cfg = self.cfg;
        let raw = Now::read();
        let judged = cfg.repo.judging_clock(&raw);
        let Some(step) = crate::core::clock::step_ahead(&raw, &judged) else {
            self.agreed_step = None;
            return Ok(judged);
        };
        let same = |s: chrono::Duration| (s - step).abs() < STEP_SAME;
        if self.agreed_step.is_some_and(same) {
            return Ok(raw);
        }
        if self
            .step_checked
            .is_some_and(|t| t.elapsed() < STEP_RECHECK)
        {
            return Ok(judged);
        }
        self.step_checked = Some(Instant::now());
        let node = cfg.cluster.node.as_str();
        let evidence = self
            .c
            .probe_clocks(cfg.kind, Some(node), probe_wait(cfg.cluster.lease_ttl))
            .await?;
        if !crate::cluster::agrees(&evidence, cfg.margin) {
            self.agreed_step = None;
            return Ok(judged);
        }
        let nodes: Vec<&str> = evidence.fresh.iter().map(|o| o.node.as_str()).collect();
        tracing::warn!(
            "{}: the wall clock stepped {} since this boot's first recorded moment and agrees \
             with node{} {}: rotations follow the wall clock",
            cfg.kind,
            crate::core::clock::describe_step(step),
            if nodes.len() == 1 { "" } else { "s" },
            nodes.join(", ")
        );
        self.agreed_step = Some(step);
        // The agreed time becomes this node's anchor on disk, so that `status`, `check`, a
        // one-shot `rotate` and the next leader judge by it too, not only this session.
        if let Err(e) = cfg.repo.reanchor(&raw) {
            tracing::warn!("{}: the boot anchor cannot move: {e}", cfg.kind);
        }
        Ok(raw)
    }

    /// While leading, every [`clock_watch`]: reads the other nodes' clocks and records the
    /// hold on purges a skew calls for, so that a node off for a while between two rotations
    /// (fewer than the purge's own reading would see) still keeps the keys it used.
    async fn watch_clocks(&mut self) -> Result<(), SessionError> {
        if !self.view.leading {
            self.next_watch = None;
            return Ok(());
        }
        let cfg = self.cfg;
        if self.next_watch.is_some_and(|t| t > Instant::now()) {
            return Ok(());
        }
        self.next_watch = Some(Instant::now() + clock_watch(cfg.margin));
        let raw = Now::read();
        let now = match self.agreed_step {
            Some(_) => raw.wall,
            None => cfg.repo.judging_clock(&raw).wall,
        };
        let node = cfg.cluster.node.as_str();
        let wait = probe_wait(cfg.cluster.lease_ttl);
        let mut evidence = self.c.probe_clocks(cfg.kind, Some(node), wait).await?;
        let prior = self.c.skew_hold(cfg.kind).await?;
        // A member found off whose daemon is not connected holds the hold open.
        if prior.as_ref().is_some_and(|h| h.seen_off) {
            let acks = self.c.acks(cfg.kind).await?;
            let timeout = cfg.cluster.member_timeout;
            let absent = crate::cluster::absent(&acks, &evidence, Some(node), now, timeout);
            evidence.absent = absent.into_iter().map(|a| a.node).collect();
        }
        let judged = crate::cluster::judge_skew(
            &evidence,
            &[],
            prior.as_ref(),
            cfg.margin,
            cfg.params.retention,
            now,
            false,
        );
        if judged.hold != prior {
            self.c.record_hold(cfg.kind, judged.hold.as_ref()).await?;
        }
        if prior.is_some() || judged.hold.is_some() {
            let others: Vec<String> = (evidence.fresh.iter().map(|o| o.node.clone()))
                .chain(evidence.unanswered.iter().cloned())
                .chain(evidence.absent.iter().cloned())
                .collect();
            let own = crate::cluster::describe_own_skew(node, &others, &judged.skewed, cfg.margin);
            self.report(Report::ClockSkew {
                nodes: judged.skewed,
                unanswered: Vec::new(),
                hold: judged.hold,
                paused: self.paused,
                own,
            });
        }
        Ok(())
    }

    /// Runs the `pre_rotate` hook and the verification while keeping the leadership's lease
    /// alive (a migration may take longer than a lease); the primary they were verified on.
    async fn pre_rotate(&mut self) -> Result<crate::credentials::PreRotated, SessionError> {
        let cfg = self.cfg;
        let Some(p) = &cfg.pre_rotate else {
            return Ok(Err(crate::credentials::Held::Migrate));
        };
        let keys: Vec<u64> = self.view.set.keys.keys().copied().collect();
        let ctx = crate::hooks::Context::of(cfg.kind.name(), cfg.repo.dir(), &keys);
        tracing::info!("{}: rotation due; running pre_rotate first", cfg.kind);
        let migration = crate::credentials::Migration {
            dir: cfg.repo.dir().to_path_buf(),
            pre_rotate: p.argv.clone(),
            verify: p.verify.clone(),
            timeout: p.timeout,
            keystone_config: p.keystone_config.clone(),
        };
        let hook = crate::credentials::migrate_and_verify(&migration, &ctx, &p.metrics);
        tokio::pin!(hook);
        loop {
            tokio::select! {
                ok = &mut hook => return Ok(ok),
                _ = self.keepalive.tick() => self.lease.refresh().await?,
            }
        }
    }

    /// `Cluster::rotate`, due at `due` by `clock`: a rotation committed, held at the gate,
    /// fenced off, or made by someone else in this slot already.
    async fn rotate(&mut self, clock: &Now, due: DateTime<Utc>) -> Result<Turn, SessionError> {
        let cfg = self.cfg;
        let local = cfg.repo.history()?;
        // Credentials: only while the set's primary is the one the migration was verified on.
        let params = RotateParams {
            expected_primary: self.prepared_for.filter(|_| cfg.pre_rotate.is_some()),
            // Verified: the count rule's purges hold no credential; the set says so (its
            // lineage is marked forced), and followers take the purge.
            force_purge: cfg.params.force_purge
                || (cfg.pre_rotate.is_some() && self.prepared_for.is_some()),
            ..cfg.params
        };
        let request = crate::cluster::Rotation {
            params: &params,
            now: clock,
            held: Some(&local),
            skew_tolerance: cfg.margin,
            fence: Some((cfg.cluster.node.as_str(), self.lease.id)),
            schedule: Some(&cfg.schedule),
            member_timeout: cfg.cluster.member_timeout,
            probe_wait: probe_wait(cfg.cluster.lease_ttl),
        };
        let outcome = self.c.rotate(cfg.kind, &request).await;
        if !matches!(
            outcome,
            Err(ClusterError::GateWaiting { .. } | ClusterError::DuplicateHeld { .. })
        ) {
            (self.gate_retry, self.gate_wake, self.acks_watch) = (GATE_RETRY, None, None);
        }
        let contended = match &outcome {
            Err(ClusterError::DuplicateHeld { names, .. }) => Some(format!(
                "duplicate node name: promotions and purges held while a daemon is refused \
                 under a held name (which one's Keystone serves users is unknown): {}",
                names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            _ => None,
        };
        if contended != self.gate_duplicate {
            self.gate_duplicate = contended;
            self.report_duplicates();
        }
        // The gate counted these members' records as absent: said (critical) for as long as
        // a due rotation finds them so. Read again only when the gate was judged.
        if matches!(outcome, Ok(_) | Err(ClusterError::GateWaiting { .. })) {
            let nodes = self.c.unauthenticated(cfg.kind).await?;
            let missing = self.c.missing(cfg.kind).await?;
            self.report(Report::Unauthenticated { nodes, missing });
        }
        match outcome {
            Ok(r) => {
                self.paused = false;
                self.paused_until = None;
                self.report(Report::ClockSkew {
                    nodes: r.skewed.clone(),
                    unanswered: r.unanswered.clone(),
                    hold: r.hold.clone(),
                    paused: false,
                    own: crate::cluster::describe_own_skew(
                        &cfg.cluster.node,
                        &r.others,
                        &r.skewed,
                        cfg.margin,
                    ),
                });
                self.report(Report::Rotated {
                    revision: r.revision,
                    primary: r.decision.new_primary,
                    sent: r.sent,
                });
                self.view.committed(r.set, r.revision);
                Ok(Turn::Committed)
            }
            Err(ClusterError::DuplicateHeld { .. }) => {
                // Reported above; asked again after the gate's backoff.
                self.prepared_for = None;
                let wake = Instant::now() + gate_backoff(&mut self.gate_retry);
                self.gate_wake = Some((wake, self.view.revision));
                Ok(Turn::Wait(Some(wake)))
            }
            Err(ClusterError::GateWaiting { nodes, refused, .. }) => {
                // A lagging node's Keystone keeps encrypting with the old primary: migrate
                // and verify again once the gate opens.
                // Each retry migrates the whole table again: not more often than a failed
                // pre_rotate is retried.
                self.prepared_for = None;
                let gate_deadline = cfg.cluster.gate_deadline;
                self.report(gate_waiting(
                    (nodes, refused),
                    due,
                    clock.wall,
                    gate_deadline,
                ));
                let retry = match cfg.pre_rotate {
                    Some(_) => PRE_ROTATE_RETRY,
                    None => gate_backoff(&mut self.gate_retry),
                };
                // Without a watch (etcd refused one) the pause alone paces the gate. Not
                // with credentials: a change would migrate the table again at once.
                if self.acks_watch.is_none() && cfg.pre_rotate.is_none() {
                    self.acks_watch = self.c.watch_acks(cfg.kind).await.ok();
                }
                let wake = Instant::now() + retry;
                self.gate_wake = Some((wake, self.view.revision));
                Ok(Turn::Wait(Some(wake)))
            }
            // At the key bound while purges are held: keys kept, no rotation, asked again.
            Err(ClusterError::SkewBound {
                hold,
                skewed,
                key,
                keys,
                held,
            }) => {
                // Said when the pause begins, then every SKEW_BOUND_REMIND, not at every try.
                let remind = self
                    .paused_said
                    .is_none_or(|t| t.elapsed() >= SKEW_BOUND_REMIND);
                if !self.paused || remind {
                    tracing::error!(
                        "{}",
                        ClusterError::SkewBound {
                            key,
                            keys,
                            held,
                            hold: Box::new(None),
                            skewed: Vec::new(),
                        }
                    );
                    self.paused_said = Some(Instant::now());
                }
                self.paused = true;
                self.paused_until = Some(Instant::now() + SKEW_BOUND_RETRY);
                self.report(Report::ClockSkew {
                    nodes: skewed,
                    unanswered: Vec::new(),
                    hold: *hold,
                    paused: true,
                    // The pause is worded by the bound; the next rotation words the clocks.
                    own: None,
                });
                Ok(Turn::Wait(self.paused_until))
            }
            // Fenced: this node's claim is gone (a pause past its lease); the watch tells who
            // leads now.
            Err(ClusterError::NotLeader { .. }) => {
                let leading = self.view.lead(false);
                self.report_leading(leading);
                Ok(Turn::Wait(None))
            }
            // Someone rotated in this slot already: the watch brings that set.
            Err(ClusterError::NotDue { due }) => {
                let until = due.and_then(|d| (d - Utc::now()).to_std().ok());
                Ok(Turn::Wait(until.map(|until| Instant::now() + until)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for the watch (new key sets, leader changes), the deadline `wake`, a keep-alive
    /// or drift from the file watcher.
    async fn wait(&mut self, wake: Instant) -> Result<(), SessionError> {
        tokio::select! {
            r = self.watch.changes() => {
                for change in r? {
                    if let Change::Probe { probe } = change {
                        let node = &self.cfg.cluster.node;
                        self.c.answer(self.cfg.kind, node, probe, self.lease.id).await?;
                        continue;
                    }
                    if let Change::Name { suffix, value, put } = &change {
                        self.name_changed(suffix, value, *put).await?;
                        continue;
                    }
                    let leading = self.view.absorb(change, &self.cfg.cluster.node, self.lease.id);
                    self.report_leading(leading);
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = self.keepalive.tick() => {
                self.lease.refresh().await?;
                self.acked.expire(&Now::read());
            }
            Some(()) = self.drift.recv() => self.disk.drifted = true,
            r = ack_changed(&mut self.acks_watch) => match r {
                // A member acknowledged (or was removed): ask the gate again now.
                Ok(()) => self.gate_wake = None,
                // The pause paces the gate until the next hold watches again.
                Err(_) => self.acks_watch = None,
            },
        }
        Ok(())
    }
}

/// What the disk holds, as last read from it (never the keys this session meant to write), and
/// the revision last judged against it. The disk is read again when the file watcher reports a
/// change, after an apply (read back) and before an acknowledgement, so keep-alives, gate
/// retries and refused sets cost no extra reading (apply reads it under its lock anyway).
struct Disk {
    /// The keys found on disk at the last reading.
    keys: Fingerprints,
    /// The revision last applied or refused over `keys`: not judged again before a change.
    judged: Option<i64>,
    /// The file watcher reported a change (or nothing was read yet): read before comparing.
    drifted: bool,
}

impl Disk {
    fn new() -> Disk {
        Disk {
            keys: Fingerprints::new(),
            judged: None,
            drifted: true,
        }
    }

    /// After drift: the keys `scan` finds, judged against no revision yet (a change of the
    /// state file alone may make a refused set acceptable).
    fn read_if_drifted(&mut self, scan: impl FnOnce() -> Fingerprints) {
        if self.drifted {
            self.judged = None;
            self.read(scan());
        }
    }

    /// The keys just read from disk. A reading that differs from the last one makes the set
    /// held due for judgement again.
    fn read(&mut self, keys: Fingerprints) {
        self.drifted = false;
        if keys != self.keys {
            self.judged = None;
        }
        self.keys = keys;
    }

    /// After an apply: the keys read back, the revision applied still judged (a set whose
    /// apply kept keys beyond it is not applied again).
    fn read_back(&mut self, keys: Fingerprints) {
        self.drifted = false;
        self.keys = keys;
    }

    /// Whether `set` at `revision` must be applied: it was not judged over this disk yet and
    /// the disk holds other keys, or the history does not record its lineage's generation
    /// (`recorded`). It counts as judged from here on (applied, or refused: a set refused is
    /// not judged again before the next change), but the disk still holds what was read: only
    /// a reading says what is on it.
    fn must_write(&mut self, revision: i64, set: &KeySet, recorded: impl FnOnce() -> bool) -> bool {
        if self.judged == Some(revision) {
            return false;
        }
        self.judged = Some(revision);
        self.keys != set.fingerprints() || !recorded()
    }

    /// Whether the last reading found every key of `set`, each with the set's fingerprint.
    fn holds(&self, set: &KeySet) -> bool {
        set.keys
            .iter()
            .all(|(n, k)| self.keys.get(n) == Some(&k.fingerprint()))
    }
}

/// The next change of the watched acknowledgements; never, without a watch.
async fn ack_changed(watch: &mut Option<AckWatch>) -> Result<(), ClusterError> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// The keys the repository holds now, by number (none when it cannot be read). A file under
/// a key's name that holds no key (garbage, empty) counts as [`Fingerprint::NONE`]: such a
/// disk differs from every set, so the set is applied, which removes the file when no key
/// needs its number (Keystone's loader fails every token while it is there).
fn on_disk(repo: &Repository) -> Fingerprints {
    let Ok(scan) = repo.scan() else {
        return Fingerprints::new();
    };
    let mut keys = scan.fingerprints();
    for n in scan.non_keys() {
        keys.entry(n).or_insert(crate::core::key::Fingerprint::NONE);
    }
    keys
}

/// This node's acknowledgement, as last written.
#[derive(Default)]
struct Acked {
    /// The revision and staged key acknowledged; `None` to write it again.
    last: Option<(i64, crate::core::key::Fingerprint)>,
    /// When it was written: a step of the wall clock since then is acknowledged again, so the
    /// leader sees this node's clock as it is.
    at: Option<Now>,
}

impl Acked {
    /// Whether the set at `revision` staging `staged` is still to be acknowledged.
    fn due(&self, revision: i64, staged: crate::core::key::Fingerprint) -> bool {
        self.last != Some((revision, staged))
    }

    fn wrote(&mut self, revision: i64, staged: crate::core::key::Fingerprint, at: Now) {
        self.last = Some((revision, staged));
        self.at = Some(at);
    }

    /// Whether applying the set at `revision` undid a local change: it was acknowledged
    /// already, so someone changed the files since.
    fn undone(&self, revision: i64) -> bool {
        self.last.is_some_and(|(r, _)| r == revision)
    }

    /// At a keep-alive: the acknowledgement is written again after a step of the wall clock or
    /// [`MEMBER_REFRESH`] since it was.
    fn expire(&mut self, now: &Now) {
        let stale = self.at.as_ref().is_some_and(|t| {
            now.step_since(t.wall, t.boot.as_ref()).is_some()
                || now.since(t.wall, t.boot.as_ref()) >= MEMBER_REFRESH
        });
        if stale {
            self.last = None;
        }
    }
}

/// The pause before asking a held gate again: `next`, which doubles for the hold after,
/// up to [`GATE_RETRY_MAX`].
fn gate_backoff(next: &mut Duration) -> Duration {
    let now = *next;
    *next = (now * 2).min(GATE_RETRY_MAX);
    now
}

/// What a leader does about a rotation due at `due`, judged at `now`.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Not due yet: wait this long.
    Wait(Duration),
    /// Due, but `pre_rotate` failed lately: not again before this instant.
    Held(Instant),
    /// Due, and the credentials are not yet encrypted with the primary: `pre_rotate` first.
    Prepare,
    /// Due and prepared.
    Rotate,
}

/// Decides the leader's step purely: `prepared` when `pre_rotate` need not run (none is
/// configured, or it succeeded under this primary), `held` until when a failed one waits.
fn plan(due: DateTime<Utc>, now: DateTime<Utc>, prepared: bool, held: Option<Instant>) -> Plan {
    if due > now {
        return Plan::Wait((due - now).to_std().unwrap_or_default());
    }
    match (prepared, held) {
        (true, _) => Plan::Rotate,
        (false, Some(t)) => Plan::Held(t),
        (false, None) => Plan::Prepare,
    }
}

/// The report of a rotation due at `due` held at the gate for `nodes` at `now`: blocking once
/// `gate_deadline` overdue.
fn gate_waiting(
    (nodes, refused): (Vec<String>, Vec<String>),
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    gate_deadline: Duration,
) -> Report {
    let overdue = (now - due).to_std().unwrap_or_default();
    Report::GateWaiting {
        nodes,
        refused,
        overdue,
        blocking: overdue >= gate_deadline,
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
    let verdict = crate::core::keyset::succession(&local, offered);
    if !verdict.behind_us() {
        return Ok(false);
    }
    // A set this node follows in another etcd (a stray one it was pointed at) is no newer
    // set of this etcd's cluster: published here it would replace the cluster's keys with a
    // branch the other members never held. Only `cluster init --move-etcd` moves a cluster.
    let reached = c.binding();
    if let Some(bound) = local.lineage.as_ref().and_then(|l| l.etcd.as_ref()) {
        if *bound != reached {
            tracing::warn!(
                "{}: not publishing this node's key set over the one at revision {revision}: \
                 it was written into {bound}, and this node reached {reached}",
                cfg.kind
            );
            return Ok(false);
        }
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
                self.committed(*set, revision);
                None
            }
            Change::Leader { node: n, lease: l } => self.lead(n == node && l == lease),
            Change::NoLeader => {
                self.campaign = true;
                self.lead(false)
            }
            Change::Probe { .. } | Change::Name { .. } => None,
        }
    }
}

/// This process's identity under `lease`.
fn identity(lease: i64) -> Identity {
    static STARTED: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    Identity {
        lease,
        boot: Now::read().boot.map(|b| b.boot),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        started: *STARTED.get_or_init(Utc::now),
    }
}

/// What the holder of a name says of the daemons refused under it (without their leases: a
/// refused daemon takes a new one at each try).
fn duplicates_reason(
    node: &str,
    dups: &std::collections::BTreeMap<i64, Identity>,
) -> Option<String> {
    let who: std::collections::BTreeSet<String> = dups
        .values()
        .map(|d| {
            format!(
                "host {}, pid {}, boot id {}, started {}",
                d.host,
                d.pid,
                d.boot.as_deref().unwrap_or("unknown"),
                d.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .collect();
    (!who.is_empty()).then(|| {
        format!(
            "duplicate node name: another daemon tries to run as '{node}' ({}); it is refused \
             and takes no part in the cluster: give it its own [cluster] node",
            who.into_iter().collect::<Vec<_>>().join("; ")
        )
    })
}

/// Why `set` is bound to another etcd than the one `c` reached, or this node to another than
/// `set` ([`crate::core::keyset::bound_elsewhere`] on this node's own lineage): then it is
/// refused, and this node claims no name in that etcd.
fn bound_elsewhere(
    cfg: &AgentConfig,
    c: &Cluster,
    set: &KeySet,
) -> Result<Option<String>, SessionError> {
    Ok(crate::core::keyset::bound_elsewhere(
        cfg.repo.history()?.lineage.as_ref(),
        set.history.lineage.as_ref(),
        &c.binding(),
    ))
}

/// Holds this node's name for the session ([`names::decide`]): claims it (as a new node,
/// with a warning, when this repository held another name: that membership stays), or
/// refuses (reported, the session ends; it is tried again after the backoff). Returns the
/// daemons refused under the name that keep trying.
async fn hold_name(
    cfg: &AgentConfig,
    c: &Cluster,
    set: &KeySet,
    me: &Identity,
    reports: &UnboundedSender<(usize, Report)>,
) -> Result<std::collections::BTreeMap<i64, Identity>, SessionError> {
    let node = &cfg.cluster.node;
    let report = |r: Report| {
        let _ = reports.send((cfg.index, r));
    };
    for _ in 0..3 {
        let local = cfg
            .repo
            .published(names::LOCAL_FILE)?
            .map(|b| names::Local::parse(&b))
            .unwrap_or_default();
        let seen = names::read(c, cfg.kind, node).await?;
        let former = match local.node.as_deref() {
            Some(old) if old != node => {
                Some((old.to_string(), names::read(c, cfg.kind, old).await?))
            }
            _ => None,
        };
        let former = former.as_ref().map(|(o, s)| (o.as_str(), s));
        let listed = names::listed(set, node);
        let former_name =
            match names::decide(node, me, &seen, &local, former, listed, names::pid_alive) {
                names::Decision::Take => None,
                names::Decision::TakeNew(old) => Some(old),
                names::Decision::Refuse(r) => {
                    if matches!(r, names::Refusal::Live { .. }) {
                        names::contend(c, cfg.kind, node, me).await?;
                    }
                    report(Report::Duplicate {
                        reason: Some(r.to_string()),
                    });
                    return Err(SessionError::Name(r.to_string()));
                }
            };
        let token = local.session_token(me, &seen)?;
        cfg.repo
            .publish(names::LOCAL_FILE, &local.claiming(node, &token).to_bytes())?;
        // The disk keeps its earlier tokens (`Local::claiming`) after the claim commits too:
        // with only the newest, an etcd restored from a backup older than this session named
        // a token the disk no longer held, and the node refused itself as a duplicate.
        if !names::claim(c, cfg.kind, node, me, &token, &seen).await? {
            continue;
        }
        if let Some(old) = former_name {
            tracing::warn!(
                "{}: node name: this repository was node '{old}' and now runs as '{node}', a \
                 new node; '{old}' stays a member and promotions wait for it. A clone keeps \
                 both. A rename is `fernetd cluster rename-node {old} {node}` with the daemon \
                 stopped (docs/runbooks.md); if this node is '{old}' renamed and already runs \
                 as '{node}', finish it with `fernetd cluster remove-node {old}`",
                cfg.kind
            );
        }
        let dups: std::collections::BTreeMap<i64, Identity> = seen
            .duplicates
            .into_iter()
            .filter(|d| d.lease != me.lease)
            .map(|d| (d.lease, d))
            .collect();
        report(Report::Duplicate {
            reason: duplicates_reason(node, &dups),
        });
        return Ok(dups);
    }
    Err(ClusterError::Contention {
        key: format!("node name '{node}'"),
        attempts: 3,
    }
    .into())
}

/// Only `cluster init` starts a cluster: a node that finds no key set publishes nothing, with
/// keys or without, followed before or not. It cannot tell a new cluster from one whose etcd
/// lost its data, nor the right etcd from a wrong endpoint or a stray local one (where its
/// keys would found a second cluster, rotating apart from the first). It waits, saying which
/// etcd it reached, and is critical once its keys are due to rotate.
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
    let reached = c.binding();
    let (what, due) = if has_keys {
        let local = cfg.repo.history()?;
        let now = Now::read();
        let due = cfg
            .schedule
            .next_rotation(local.schedule_basis(), &now)
            .filter(|t| *t <= now.wall);
        let follows = match (
            &local.lineage,
            &local.lineage.as_ref().and_then(|l| l.etcd.clone()),
        ) {
            (Some(l), Some(b)) => format!("the {l} in {b}"),
            (Some(l), None) => format!("the {l}"),
            (None, _) => "no cluster yet".to_string(),
        };
        let due_text = due.map_or(String::new(), |t| {
            format!(
                "; its keys are due to rotate since {} and nothing rotates them",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        });
        (
            format!(
                "; this node holds keys (it follows {follows}) but publishes none on its own: \
                 waiting for a key set (first check the endpoint: a wrong one, or a stray \
                 etcd, is the likely cause; only if this is the cluster's own etcd and it lost \
                 its data, `fernetd cluster init --from {}` on this node starts it from these \
                 keys){due_text}",
                cfg.repo.dir().display()
            ),
            due.is_some(),
        )
    } else {
        (
            ", and this node has no keys to offer: waiting for one (a new cluster starts with \
             `fernetd cluster init` on one node)"
                .to_string(),
            false,
        )
    };
    Err(SessionError::NoKeySet {
        key: c.keyset_key(cfg.kind),
        endpoint: c.endpoint().to_string(),
        reached,
        what,
        due,
    })
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
                    set: Box::new(old.clone()),
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
                    set: Box::new(old),
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
                set: Box::new(newer.clone()),
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

    #[test]
    fn the_disk_is_written_only_for_a_new_revision_holding_other_keys_or_generation() {
        let (a, b) = (set(), set());
        let mut disk = Disk::new();
        let mut scans = 0;
        disk.read_if_drifted(|| {
            scans += 1;
            a.fingerprints()
        });
        // The disk already holds the cluster's keys (read, not written): nothing to write.
        assert!(!disk.must_write(5, &a, || true));
        assert!(!disk.must_write(5, &a, || true));
        assert!(disk.holds(&a));
        // Read only after drift.
        disk.read_if_drifted(|| unreachable!("no drift"));
        assert!(disk.must_write(6, &b, || true));
        // Judged once per revision: a set refused at 6 is not tried again before a change.
        assert!(!disk.must_write(6, &b, || true));
        // The same keys one generation on (a rename, a removal), not yet in the history:
        // written, so the history records it.
        assert!(disk.must_write(7, &a, || false));
        disk.drifted = true;
        disk.read_if_drifted(|| {
            scans += 1;
            a.fingerprints()
        });
        // Drift: judged again (the disk still holds other keys).
        assert!(disk.must_write(6, &b, || true));
        // Applied: the keys read back are what the disk holds.
        disk.read_back(b.fingerprints());
        assert!(disk.holds(&b));
        assert!(!disk.must_write(6, &b, || true));
        assert_eq!(scans, 2);
    }

    /// The false acknowledgement of issue 22: a set refused, then offered again at a later
    /// revision (`cluster init --force`, `--force-purge`), was judged "already on disk" because
    /// the refused set had been recorded as what the disk holds.
    #[test]
    fn a_refused_set_is_never_taken_for_what_the_disk_holds() {
        let (ours, theirs) = (set(), set());
        let mut disk = Disk::new();
        disk.read_if_drifted(|| ours.fingerprints());
        // Offered at 6 and refused: nothing was written.
        assert!(disk.must_write(6, &theirs, || true));
        assert!(!disk.holds(&theirs));
        // The same keys again at 7: judged again, and the disk still does not hold them.
        assert!(disk.must_write(7, &theirs, || true));
        assert!(!disk.holds(&theirs));
        assert!(disk.holds(&ours));
        // A reading that finds the set on disk (applied at last) is what says it holds it.
        disk.read(theirs.fingerprints());
        assert!(disk.holds(&theirs));
        assert!(!disk.must_write(7, &theirs, || true));
    }

    #[test]
    fn an_acknowledgement_needs_every_key_of_the_set_with_its_fingerprint() {
        let (a, b) = (set(), set());
        let mut disk = Disk::new();
        // Keys beyond the set (kept by the guard) do not matter; a missing or other key does.
        let mut more = a.fingerprints();
        more.insert(99, b.keys[&0].fingerprint());
        disk.read(more);
        assert!(disk.holds(&a));
        let mut less = a.fingerprints();
        less.remove(&0);
        disk.read(less);
        assert!(!disk.holds(&a));
        let mut other = a.fingerprints();
        other.insert(0, b.keys[&0].fingerprint());
        disk.read(other);
        assert!(!disk.holds(&a));
        disk.read(Fingerprints::new());
        assert!(!disk.holds(&a));
    }

    #[test]
    fn an_acknowledgement_is_written_again_after_an_hour_or_a_clock_step() {
        let s = set();
        let staged = s.keys[&0].fingerprint();
        let t0 = Utc::now();
        let mut acked = Acked::default();
        assert!(acked.due(3, staged));
        assert!(!acked.undone(3));
        acked.wrote(3, staged, Now::from(t0));
        assert!(!acked.due(3, staged));
        assert!(acked.undone(3));
        assert!(acked.due(4, staged));
        acked.expire(&Now::from(t0 + chrono::Duration::minutes(59)));
        assert!(!acked.due(3, staged));
        acked.expire(&Now::from(t0 + chrono::Duration::minutes(60)));
        assert!(acked.due(3, staged));
        // The wall clock stepped a minute ahead of the boot clock: written again at once.
        let at = |wall, ms| Now {
            wall,
            boot: Some(crate::core::clock::BootStamp {
                boot: "b".into(),
                ms,
            }),
        };
        acked.wrote(3, staged, at(t0, 1_000));
        acked.expire(&at(t0 + chrono::Duration::seconds(2), 3_000));
        assert!(!acked.due(3, staged));
        acked.expire(&at(t0 + chrono::Duration::seconds(62), 3_000));
        assert!(acked.due(3, staged));
    }

    #[test]
    fn a_held_gate_is_asked_again_less_and_less_often_up_to_a_cap() {
        let mut next = GATE_RETRY;
        let pauses: Vec<u64> = (0..10)
            .map(|_| gate_backoff(&mut next).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        // A minute of holding asks the gate 9 times, not 300; an hour, about 130.
        let mut next = GATE_RETRY;
        let mut spent = Duration::ZERO;
        let mut asks = 0;
        while spent < Duration::from_secs(60) {
            spent += gate_backoff(&mut next);
            asks += 1;
        }
        assert!(asks <= 9, "{asks}");
    }

    #[test]
    fn a_due_rotation_runs_pre_rotate_first_unless_it_failed_lately() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(90);
        let until = Instant::now() + PRE_ROTATE_RETRY;
        let held = Some(until);
        assert_eq!(
            plan(later, now, false, held),
            Plan::Wait(Duration::from_secs(90))
        );
        assert_eq!(plan(now, now, true, held), Plan::Rotate);
        assert_eq!(plan(now, later, false, None), Plan::Prepare);
        assert_eq!(plan(now, later, false, held), Plan::Held(until));
    }

    #[test]
    fn a_held_rotation_blocks_once_the_gate_deadline_is_overdue() {
        let due = Utc::now();
        let deadline = Duration::from_secs(60);
        let at = |s| due + chrono::Duration::seconds(s);
        let report = |now| match gate_waiting((vec!["b".into()], Vec::new()), due, now, deadline) {
            Report::GateWaiting {
                nodes,
                overdue,
                blocking,
                ..
            } => (nodes, overdue.as_secs(), blocking),
            other => panic!("{other:?}"),
        };
        assert_eq!(report(at(59)), (vec!["b".to_string()], 59, false));
        assert_eq!(report(at(60)), (vec!["b".to_string()], 60, true));
        // A clock read before the due moment is not overdue.
        assert_eq!(report(at(-5)), (vec!["b".to_string()], 0, false));
    }
}
