//! A repository's state as operators and monitoring see it: keys, primary and its age, last
//! and next rotation, health, and the keys the retention guard is keeping. One definition of
//! OK / warning / critical, shared by `fernetd status` (exit 0/1/2), the daemon's systemd
//! `STATUS=` line and its metrics.

use crate::config::{Kind, Managed};
use crate::core::check::{Finding, Severity};
use crate::core::clock::Now;
use crate::core::history::History;
use crate::core::key::Fingerprint;
pub use crate::core::problem::{Code, Level, Problem};
use crate::repository::Repository;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A rotation this late past its slot makes the repository a warning (daemon down or failing).
const OVERDUE_GRACE: chrono::Duration = chrono::Duration::minutes(5);

#[derive(Debug, Clone, Serialize)]
pub struct Retained {
    pub key: u64,
    pub until: DateTime<Utc>,
    /// Why the key stays past its own window, when the cluster says (a hold for skew).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub kind: Kind,
    pub path: PathBuf,
    pub level: Level,
    /// Every reason the level is not OK (and notes, at level ok), each with its code.
    pub problems: Vec<Problem>,
    pub keys: Vec<u64>,
    pub primary: Option<u64>,
    pub primary_since: Option<DateTime<Utc>>,
    pub last_rotation: Option<DateTime<Utc>>,
    pub next_rotation: Option<DateTime<Utc>>,
    pub schedule: String,
    pub max_active_keys: u64,
    pub required_max_active_keys: u64,
    pub safe: Option<bool>,
    /// Keys beyond max_active_keys that the retention guard keeps, and until when.
    pub retained: Vec<Retained>,
    pub findings: Vec<Finding>,
    /// An input was refused to keep live keys (a cluster key set, a state file that
    /// contradicts the disk, a rotation the gate stopped): critical until it is resolved.
    pub refused: bool,
    /// A clock is not to be trusted: a wall-clock step, recorded times in the future, a
    /// cluster node whose clock is off by more than the margin.
    pub clock_problem: bool,
    /// Rotations fail (and are retried): a warning at once, critical once overdue by more
    /// than the margin.
    pub rotation_failing: bool,
    /// Where the judgement comes from: `daemon (pid N)` when a running daemon's live view was
    /// added to the disk's, else `disk`.
    pub view: String,
    /// In cluster mode, the disk judged against the history (the key set this node last
    /// applied): keys it lacks, a primary it does not hold ([`against_applied`]). Said when
    /// etcd does not answer; when it does, the cluster's set is the judge
    /// ([`Summary::add_cluster`]).
    #[serde(skip)]
    pub applied: Vec<Problem>,
}

/// Why `status` has no view of the cluster: etcd could not be read, or what it holds does
/// not open or validate here (a value tampered with, unsealed where sealed sets are
/// required, sealed with another key): the latter is a refused input, as on the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewError {
    Unreachable(String),
    Refused(String),
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewError::Unreachable(e) | ViewError::Refused(e) => f.write_str(e),
        }
    }
}

/// A running daemon's live view of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// The daemon's pid as its own pid namespace sees it (a container's may differ).
    pub pid: u32,
    pub problems: Vec<Problem>,
    /// When the daemon last wrote the view: at least every [`LIVE_REFRESH`] while it runs,
    /// so a view older than [`LIVE_STALE`] is one it could no longer replace.
    #[serde(default)]
    pub refreshed: Option<DateTime<Utc>>,
}

/// The daemon writes its live view again at least this often, even unchanged.
pub const LIVE_REFRESH: chrono::Duration = chrono::Duration::minutes(50);
/// A live view older than this, under a held daemon lock, is stale (the daemon wakes at least
/// hourly and refreshes it then).
pub const LIVE_STALE: chrono::Duration = chrono::Duration::hours(2);

/// What `status` can tell of the daemon running for a repository.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No daemon holds the repository's daemon lock: the disk alone.
    Nothing,
    /// The running daemon's view; `visible` when its pid is a fernetd in this pid namespace
    /// (a daemon in a container is seen by its lock, not by its pid).
    Live { live: Live, visible: bool },
    /// A daemon holds the lock but its view is missing, unreadable or stale: what it finds
    /// cannot be judged here, which is itself a problem.
    Unseen(Problem),
}

/// The problem of a member's acknowledgement that does not verify with any seal key held
/// (counted as absent: the gate holds for it), as the leader's daemon and `status` say it.
/// A clock answer's entry (`NODE (clock answer)`, [`crate::cluster::CLOCK_ANSWER`]) is said as
/// one: counted as unanswered, so purges are held.
pub fn ack_unauthenticated(node: &str) -> Problem {
    if let Some(node) = node.strip_suffix(crate::cluster::CLOCK_ANSWER) {
        return Problem::new(
            Code::AckUnauthenticated,
            format!(
                "node {node}: clock answer not authenticated (forged, or sealed with a key this \
                 node does not hold); counted as unanswered: purges are held"
            ),
        );
    }
    Problem::new(
        Code::AckUnauthenticated,
        format!(
            "node {node}: acknowledgement not authenticated (forged, or sealed with a key this \
             node does not hold); counted as absent: the gate holds for it"
        ),
    )
}

/// The problem of a member the sealed key set lists whose acknowledgement record is missing
/// from etcd (counted as absent: the gate holds for it), as `status` says it on every node.
pub fn ack_missing(node: &str) -> Problem {
    Problem::new(
        Code::AckMissing,
        format!(
            "node {node}: its acknowledgement record is missing from etcd, but the key set lists \
             it as a member (deleted in etcd: that ends no membership); counted as absent: the \
             gate holds for it until it acknowledges again or `fernetd cluster remove-node \
             {node}`"
        ),
    )
}

/// The problem of a daemon whose findings `status` cannot see.
pub fn unseen(why: impl Into<String>) -> Problem {
    Problem::new(Code::LiveViewUnwritable, why)
}

impl Live {
    const FILE: &'static str = "daemon.json";

    /// Replaces the file (write, then rename: a reader sees the old view or the new one).
    /// False when the repository does not exist yet.
    pub fn write(&self, repo: &Repository) -> crate::error::Result<bool> {
        repo.publish(Self::FILE, &serde_json::to_vec(self).unwrap_or_default())
    }

    /// Removes the file (the daemon stops, or stops managing the repository).
    pub fn remove(repo: &Repository) -> crate::error::Result<()> {
        repo.unpublish(Self::FILE)
    }

    /// What a running daemon knows of `repo`. A daemon runs exactly when the repository's
    /// daemon lock is held, whatever pid namespace it runs in; a view left by a daemon that
    /// has stopped says nothing. Where the lock cannot be looked at (no access to `.fernetd`),
    /// neither can the view: the disk alone.
    pub fn read(repo: &Repository, now: DateTime<Utc>) -> Seen {
        if !repo.daemon_running().unwrap_or(false) {
            return Seen::Nothing;
        }
        let file = repo
            .dir()
            .join(crate::repository::INTERNAL_DIR)
            .join(Self::FILE);
        let live = match repo.published(Self::FILE) {
            Ok(Some(text)) => match serde_json::from_slice::<Live>(&text) {
                Ok(live) => live,
                Err(e) => {
                    return Seen::Unseen(unseen(format!(
                        "a daemon runs (it holds the daemon lock) but its live view {} is \
                         unreadable: {e}; what it finds cannot be judged here",
                        file.display()
                    )))
                }
            },
            Ok(None) => {
                return Seen::Unseen(unseen(format!(
                    "a daemon runs (it holds the daemon lock) but has written no live view \
                     ({}): it cannot write there (a read-only repository? the unit's \
                     ReadWritePaths=); what it finds cannot be judged here",
                    file.display()
                )))
            }
            Err(e) => {
                return Seen::Unseen(unseen(format!(
                    "a daemon runs (it holds the daemon lock) but its live view cannot be \
                     read: {e}"
                )))
            }
        };
        if let Some(t) = live.refreshed.filter(|t| now - *t > LIVE_STALE) {
            return Seen::Unseen(unseen(format!(
                "a daemon runs (it holds the daemon lock) but its live view {} was last \
                 written at {}: it can no longer write there; what it finds cannot be judged \
                 here",
                file.display(),
                t.to_rfc3339_opts(SecondsFormat::Secs, true)
            )));
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", live.pid));
        let visible = comm.is_ok_and(|c| c.trim_end() == "fernetd");
        Seen::Live { live, visible }
    }
}

impl Summary {
    /// An OK summary of `path` that knows nothing yet.
    fn new(kind: Kind, path: PathBuf) -> Summary {
        Summary {
            kind,
            path,
            level: Level::Ok,
            problems: Vec::new(),
            keys: Vec::new(),
            primary: None,
            primary_since: None,
            last_rotation: None,
            next_rotation: None,
            schedule: String::new(),
            view: "disk".into(),
            max_active_keys: 0,
            required_max_active_keys: 0,
            safe: None,
            retained: Vec::new(),
            findings: Vec::new(),
            refused: false,
            clock_problem: false,
            rotation_failing: false,
            applied: Vec::new(),
        }
    }

    /// Adds a problem at its code's level (once: the same message from two sources is one
    /// problem) and sets the flags the metrics show.
    pub fn raise(&mut self, code: Code, why: impl Into<String>) {
        self.add(&Problem::new(code, why));
    }

    /// Raises `code` unless a problem says it already: the refusal the running daemon
    /// reported is the one `status` finds again in other words, said once.
    fn raise_once(&mut self, code: Code, why: impl Into<String>) {
        if !self.problems.iter().any(|p| p.code == code) {
            self.raise(code, why);
        }
    }

    /// Adds `p` (what a running daemon knows, or a finding of the disk's).
    pub fn add(&mut self, p: &Problem) {
        self.level = self.level.max(p.level);
        if p.code.is_refusal() {
            self.refused = true;
        }
        if p.code.is_clock() {
            self.clock_problem = true;
        }
        if p.code == Code::RotationFailing {
            self.rotation_failing = true;
        }
        if !self.problems.iter().any(|q| q.message == p.message) {
            self.problems.push(p.clone());
        }
    }

    /// The first of the most severe problems: what `STATUS=` names.
    pub fn worst(&self) -> Option<&Problem> {
        self.problems
            .iter()
            .find(|p| p.level == self.level && p.level != Level::Ok)
    }
}

/// A rotation that failed since `since` and is retried: a warning, and critical once the
/// rotation it should have made is overdue by more than `margin` (beyond that the schedule the
/// planner proved is no longer kept).
pub fn rotation_failing(
    since: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
    margin: std::time::Duration,
    reason: &str,
    now: DateTime<Utc>,
) -> Problem {
    let overdue = due.is_some_and(|d| now - d > crate::core::history::to_chrono(margin));
    let p = Problem::new(
        Code::RotationFailing,
        format!(
            "rotation failing since {}: {reason}",
            since.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    );
    match overdue {
        true => p.at(Level::Critical),
        false => p,
    }
}

/// Reads `m`'s repository through `repo` (no lock, no write) and judges it.
pub fn summarize(m: &Managed, repo: &Repository, clock: &Now) -> Summary {
    let now = clock.wall;
    let judged = repo.judging_clock(clock);
    let s = &m.settings;
    let mut sum = Summary {
        schedule: m.schedule.to_string(),
        max_active_keys: m.max_active_keys,
        required_max_active_keys: m.plan.required_max_active_keys,
        safe: m.plan.safe,
        ..Summary::new(s.kind, s.key_repository.clone())
    };
    if m.plan.safe == Some(false) {
        sum.raise(
            Code::UnsafeSchedule,
            format!(
                "max_active_keys = {} is unsafe for '{}' (needs {}); allowed by allow_unsafe_schedule",
                m.max_active_keys, m.schedule, m.plan.required_max_active_keys
            ),
        );
    }
    let scan = match repo.scan() {
        Ok(scan) => scan,
        Err(e) => {
            sum.raise(Code::RepositoryUnreadable, e.to_string());
            return sum;
        }
    };
    let report = crate::core::check::check(&scan, None);
    for f in &report.findings {
        let level = match f.severity {
            Severity::Error => Level::Critical,
            Severity::Warning => Level::Warning,
        };
        let why = format!("{}: {}", f.path, f.message);
        sum.add(&Problem::new(f.code.clone(), why).at(level));
    }
    sum.findings = report.findings;
    sum.keys = report.keys;
    sum.primary = report.primary;
    let history = match repo.history() {
        Ok(h) => h,
        Err(e) => {
            sum.raise(Code::StateUnreadable, e.to_string());
            return sum;
        }
    };
    sum.applied = against_applied(&history, &scan.fingerprints());
    // The same findings, in the same words, as `setup` and `rotate` give.
    let state = repo.state_path();
    for c in history.contradictions(&crate::repository::present(&scan, &history)) {
        let e = crate::Error::StateContradicts {
            path: state.clone(),
            field: c.field,
            problem: c.problem,
        };
        sum.raise(Code::StateContradicts, e.to_string());
    }
    // A key found gone or changed while its tokens could still be presented: critical until
    // then, in the words the daemon used when it saw it go. Recorded by whoever saw it (the
    // daemon, `setup`, `rotate`), or judged here from the disk, as they would record it,
    // when nothing has looked since (this writes nothing).
    for v in repo.lost_keys(&scan, &history, s.key_retention(), &judged) {
        sum.raise(Code::KeyLostInRetention, v.to_string());
    }
    for w in history.future_warnings(clock, &state) {
        sum.raise(Code::ClockInFuture, w);
    }
    if let Some(w) = crate::core::clock::step_warning(clock, &judged) {
        sum.raise(Code::ClockStep, w);
    }
    if let Some(p) = sum.primary {
        sum.primary_since = history
            .keys
            .get(&p)
            .map(|r| r.promoted.unwrap_or(r.first_seen));
    }
    sum.last_rotation = history.last_rotation.or(sum.primary_since);
    let next = m.schedule.next_rotation(history.schedule_basis(), clock);
    sum.next_rotation = next;
    if let Some(next) = next {
        if next + OVERDUE_GRACE < now {
            sum.raise(
                Code::RotationOverdue,
                format!(
                    "rotation overdue since {} (is the daemon running?)",
                    next.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
            );
        }
    }
    let retention = s.lifetime.retention();
    let nonzero: Vec<u64> = sum.keys.iter().copied().filter(|&n| n > 0).rev().collect();
    for &n in nonzero
        .iter()
        .skip(m.max_active_keys.saturating_sub(1) as usize)
    {
        if let Some(r) = history.keys.get(&n) {
            sum.retained.push(Retained {
                held: None,
                key: n,
                until: r.retained_until(retention, &judged),
            });
        }
    }
    sum.retained.sort_by_key(|r| r.key);
    sum
}

/// The one-line text for systemd's `STATUS=`.
pub fn status_line(sums: &[Summary]) -> String {
    let parts: Vec<String> = sums
        .iter()
        .map(|s| {
            let t = |t: Option<DateTime<Utc>>| {
                t.map_or("never".to_string(), |t| {
                    t.to_rfc3339_opts(SecondsFormat::Secs, true)
                })
            };
            let health = match s.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Critical => "CRITICAL",
            };
            // Not OK: the first reason too, so the failure itself shows in `systemctl status`.
            // Not OK: the worst problem too, and the codes of the others.
            let why = match s.worst() {
                None => String::new(),
                Some(p) => {
                    let others: Vec<&str> = s
                        .problems
                        .iter()
                        .filter(|q| q.level != Level::Ok && q.message != p.message)
                        .map(|q| q.code.as_str())
                        .collect();
                    let more = match others.is_empty() {
                        true => String::new(),
                        false => format!("; also {}", others.join(", ")),
                    };
                    format!(" ({}: {}{more})", p.code, shorten(&p.message, 160))
                }
            };
            format!(
                "{}: {health}{why}, last rotation {}, next {}",
                s.kind,
                t(s.last_rotation),
                t(s.next_rotation)
            )
        })
        .collect();
    parts.join("; ")
}

/// `text` cut to at most `max` characters, with "..." where it was cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// What `status` shows of a repository in cluster mode.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// etcd revision of the key set.
    pub revision: i64,
    pub primary: Option<u64>,
    pub keys: Vec<u64>,
    /// This node's repository holds exactly the cluster's key set.
    pub in_sync: bool,
    /// The keys of the set, but the staged key 0, that this node lacks or holds other material
    /// under: tokens the other nodes issue (primary) or still accept with them fail here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lacking: Vec<u64>,
    /// This node's primary, when neither the set nor its history holds that material: every
    /// token it issues fails on the other nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_primary: Option<u64>,
    /// Every live node's acknowledgement: its applied revision and whether it holds the
    /// staged key (the promotion gate waits on those that do not).
    pub nodes: Vec<NodeView>,
    pub gate_waiting_on: Vec<String>,
    /// Those of `gate_waiting_on` that refused the set (their acknowledgement says so).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gate_refused: Vec<String>,
    /// When the next rotation is due (from the cluster's last rotation and this node's
    /// schedule), and whether it is held past the gate deadline by the nodes above.
    pub rotation_due: Option<DateTime<Utc>>,
    pub gate_blocked: bool,
    pub gate_deadline: Option<std::time::Duration>,
    /// The node leading this repository's rotations, if any.
    pub leader: Option<String>,
    /// The cluster's set as this node judges it: `None` when it may take it, else why not.
    pub refused: Option<String>,
    /// Nodes whose clocks are off by more than the margin (purges are held), and by how much.
    pub skewed: Vec<(String, i64)>,
    /// Nodes whose acknowledgement does not verify with any seal key this node holds
    /// (`Cluster::unauthenticated`): counted as absent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unauthenticated: Vec<String>,
    /// Members the sealed key set lists with no acknowledgement record in etcd
    /// (`Cluster::missing`): counted as absent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The hold on purges the leader recorded with its last rotation, from fresh clock
    /// readings ([`crate::cluster::SkewHold`]), while its window is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew_hold: Option<crate::cluster::SkewHold>,
    /// When that hold's window closes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew_hold_until: Option<DateTime<Utc>>,
    /// What the hold says ("held for skew of node b (15s ahead) until ...").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew_hold_reason: Option<String>,
    /// On the leader, when every other node is off the same way by about the same amount:
    /// the words that name this node's clock as the one off
    /// ([`crate::cluster::describe_own_skew`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_skew: Option<String>,
    /// Under `seal_key_files`: the id of the seal key the stored set is sealed with ("clear"
    /// when it is not sealed), and that key's place in this node's list (1 = the sealing one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_key_entry: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node: String,
    pub revision: i64,
    pub holds_staged: bool,
    /// When the member last acknowledged (its own clock), if it said.
    pub last_ack: Option<DateTime<Utc>>,
}

/// Judges this node against the cluster's key set (pure). `local` is the disk, `history`
/// this node's recorded history (with the lineage it last applied).
#[allow(clippy::too_many_arguments)]
pub fn cluster_view(
    local: &std::collections::BTreeMap<u64, crate::core::key::Fingerprint>,
    history: &crate::core::history::History,
    set: &crate::core::keyset::KeySet,
    revision: i64,
    acks: &[crate::cluster::Ack],
    leader: Option<String>,
    retention: std::time::Duration,
    now: &Now,
) -> ClusterView {
    // The same judgement the node's apply makes (its retention, E + W; its clock).
    let refused = crate::core::guard::admit(set, local, history, retention, now).err();
    let staged = set.keys.get(&0).map(|k| k.fingerprint());
    let nodes: Vec<NodeView> = acks
        .iter()
        .map(|a| NodeView {
            node: a.node.clone(),
            revision: a.revision,
            holds_staged: Some(a.staged) == staged,
            last_ack: a.clock,
        })
        .collect();
    let waiting: Vec<String> = nodes
        .iter()
        .filter(|n| !n.holds_staged)
        .map(|n| n.node.clone())
        .collect();
    ClusterView {
        revision,
        primary: set.primary(),
        keys: set.keys.keys().copied().collect(),
        // Keys this node keeps beyond the set (live ones the set dropped) are no drift.
        in_sync: set
            .fingerprints()
            .iter()
            .all(|(n, fp)| local.get(n) == Some(fp))
            && local.iter().all(|(n, fp)| {
                set.keys.contains_key(n)
                    || history.keys.get(n).is_some_and(|r| r.fingerprint == *fp)
            }),
        lacking: lacking(&set.fingerprints(), local),
        foreign_primary: foreign_primary(
            local,
            &set.fingerprints()
                .into_values()
                .chain(history.keys.values().map(|r| r.fingerprint))
                .collect::<Vec<_>>(),
        ),
        gate_waiting_on: waiting.clone(),
        gate_refused: crate::core::skew::refusing(acks, &waiting),
        nodes,
        rotation_due: None,
        gate_blocked: false,
        gate_deadline: None,
        leader,
        refused,
        skewed: Vec::new(),
        unauthenticated: Vec::new(),
        missing: Vec::new(),
        skew_hold: None,
        skew_hold_until: None,
        skew_hold_reason: None,
        own_skew: None,
        sealed_with: None,
        seal_key_entry: None,
    }
}

impl ClusterView {
    /// Notes the nodes whose clocks the acknowledgements show off by more than `margin`.
    pub fn judge_clocks(
        &mut self,
        acks: &[crate::cluster::Ack],
        committed: Option<DateTime<Utc>>,
        margin: std::time::Duration,
        now: DateTime<Utc>,
    ) {
        self.skewed = crate::cluster::skewed(acks, self.revision, committed, now, margin)
            .into_iter()
            .map(|(n, d)| (n, d.num_seconds()))
            .collect();
    }

    /// Notes the leader's hold on purges for skew while its window (by `retention`) is open
    /// at `now`.
    pub fn judge_hold(
        &mut self,
        hold: Option<crate::cluster::SkewHold>,
        retention: std::time::Duration,
        now: DateTime<Utc>,
    ) {
        let open = hold.filter(|h| h.until(retention) > now);
        self.skew_hold_until = open.as_ref().map(|h| h.until(retention));
        self.skew_hold_reason = open.as_ref().map(|h| h.describe(retention));
        self.skew_hold = open;
    }

    /// On the leader `me`: when every other node is off the same way by about the same amount
    /// (within `margin` of each other), says this node's clock is the one off, in the clock
    /// line and the hold's reason. On a follower: when the leader's hold names every other
    /// node and this node finds the leader alone off, says the leader's clock is. Call after [`ClusterView::judge_clocks`] and
    /// [`ClusterView::judge_hold`]. Words only: the hold is the leader's.
    pub fn judge_own_clock(
        &mut self,
        me: &str,
        margin: std::time::Duration,
        retention: std::time::Duration,
    ) {
        let Some(leader) = self.leader.clone() else {
            return;
        };
        let others: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.node != leader)
            .map(|n| n.node.clone())
            .collect();
        let skewed: Vec<(String, chrono::Duration)> = self
            .skewed
            .iter()
            .map(|(n, s)| (n.clone(), chrono::Duration::seconds(*s)))
            .collect();
        self.own_skew = match leader == me {
            true => crate::cluster::describe_own_skew(me, &others, &skewed, margin),
            // A follower: the leader's hold names every other node, and here the leader alone
            // is off.
            false => self.skew_hold.as_ref().and_then(|h| {
                crate::core::skew::describe_leader_skew(&leader, &others, &h.off, &skewed)
            }),
        };
        if let (Some(own), Some(h)) = (&self.own_skew, &self.skew_hold) {
            self.skew_hold_reason = Some(h.describe_with(retention, Some(own)));
        }
    }

    /// Judges the promotion gate as the leader does: a rotation `due` and held by members that
    /// lack the staged key (those not heard from for `member_timeout` aside) is blocked once it
    /// is `deadline` overdue.
    pub fn judge_gate(
        &mut self,
        due: Option<DateTime<Utc>>,
        deadline: std::time::Duration,
        member_timeout: Option<std::time::Duration>,
        now: DateTime<Utc>,
    ) {
        let gone = |n: &NodeView| {
            member_timeout.is_some_and(|t| {
                n.last_ack
                    .is_some_and(|c| now - c > crate::core::history::to_chrono(t))
            })
        };
        let nodes = &self.nodes;
        self.gate_waiting_on
            .retain(|w| !nodes.iter().any(|n| &n.node == w && gone(n)));
        let waiting = &self.gate_waiting_on;
        self.gate_refused.retain(|r| waiting.contains(r));
        self.rotation_due = due;
        self.gate_deadline = Some(deadline);
        let overdue = due.and_then(|d| (now - d).to_std().ok());
        self.gate_blocked =
            !self.gate_waiting_on.is_empty() && overdue.is_some_and(|o| o >= deadline);
    }
}

/// The keys of `expected` above 0 whose material `disk` does not hold under any number (by
/// material: a node one rotation behind holds the cluster's primary as its key 0, and
/// Keystone there decrypts with every key it loads).
fn lacking(expected: &BTreeMap<u64, Fingerprint>, disk: &BTreeMap<u64, Fingerprint>) -> Vec<u64> {
    expected
        .iter()
        .filter(|(n, fp)| **n != 0 && !disk.values().any(|held| held == *fp))
        .map(|(n, _)| *n)
        .collect()
}

/// The disk against the key set this node last applied (its history), for when etcd does not
/// answer or is not asked (`check`): each problem critical, as the same finding against the
/// cluster's set is. Nothing here shows that no token needs a key the set held: this node's
/// clock may call it past its
/// window while a peer whose daemon is away still encrypts with it (the cluster counts a
/// demotion from the peer's acknowledgement). A primary the set did not hold encrypts tokens
/// no other node can read. Nothing for a node that never applied a set.
pub fn against_applied(history: &History, disk: &BTreeMap<u64, Fingerprint>) -> Vec<Problem> {
    let mut out = Vec::new();
    if history.keys.is_empty() {
        return out;
    }
    let keys: Vec<String> = lacking(&history.fingerprints(), disk)
        .iter()
        .map(u64::to_string)
        .collect();
    if !keys.is_empty() {
        out.push(
            Problem::new(
                Code::ClusterDiffers,
                format!(
                    "lacks key {} of the key set this node last applied, and without etcd \
                     nothing can say that no token needs it (the cluster may hold it for a \
                     peer): a token made with it on another node fails here; start the daemon \
                     (it restores the set), or copy it from a node that holds it",
                    keys.join(", ")
                ),
            )
            .at(Level::Critical),
        );
    }
    let known: Vec<Fingerprint> = history.keys.values().map(|r| r.fingerprint).collect();
    if let Some(n) = foreign_primary(disk, &known) {
        out.push(foreign(n, "the key set this node last applied"));
    }
    out
}

/// The disk's primary when its material is none of `known`: Keystone here encrypts every new
/// token with a key no other node holds.
fn foreign_primary(disk: &BTreeMap<u64, Fingerprint>, known: &[Fingerprint]) -> Option<u64> {
    let top = crate::core::history::primary(disk.keys().copied())?;
    (!known.contains(&disk[&top])).then_some(top)
}

/// A primary on this node that `set` (the cluster's key set, or the one last applied) does
/// not hold: critical.
fn foreign(n: u64, set: &str) -> Problem {
    Problem::new(
        Code::ClusterDiffers,
        format!(
            "key {n}, this node's primary, is not in {set}: every token this node issues fails \
             on the other nodes (a key written outside fernetd?)"
        ),
    )
    .at(Level::Critical)
}

/// How this node differs from the cluster's set it may take, by what is at stake: a key other
/// than the staged one missing here is critical (tokens the other nodes issue or accept with it
/// fail here now); only the staged key, or keys beyond the set, a warning (the gate waits).
fn differs(v: &ClusterView) -> Problem {
    if v.lacking.is_empty() {
        return Problem::new(
            Code::ClusterDiffers,
            format!(
                "differs from the cluster's key set (revision {}): run fernetd sync",
                v.revision
            ),
        );
    }
    let keys: Vec<String> = v
        .lacking
        .iter()
        .map(|n| match Some(*n) == v.primary {
            true => format!("{n} (the cluster's primary)"),
            false => n.to_string(),
        })
        .collect();
    Problem::new(
        Code::ClusterDiffers,
        format!(
            "lacks key {} of the cluster's key set (revision {}): tokens the other nodes issue \
             with it fail here; run fernetd sync",
            keys.join(", "),
            v.revision
        ),
    )
    .at(Level::Critical)
}

impl Summary {
    /// Folds the cluster view (or why there is none) into the level and problems.
    pub fn add_cluster(&mut self, view: &Result<ClusterView, ViewError>) {
        match view {
            Err(ViewError::Unreachable(e)) => {
                self.raise(Code::ClusterUnreachable, format!("cluster: {e}"));
                for p in self.applied.clone() {
                    self.add(&p);
                }
            }
            Err(ViewError::Refused(e)) => self.raise_once(
                Code::InputRefused,
                format!("the cluster's key set is refused here, every key stays: {e}"),
            ),
            Ok(v) => {
                if let Some(why) = &v.refused {
                    self.raise_once(
                        Code::InputRefused,
                        format!(
                            "the cluster's key set at revision {} is refused here, every key stays: {why}",
                            v.revision
                        ),
                    );
                }
                if !v.skewed.is_empty() {
                    let nodes: Vec<(String, chrono::Duration)> = v
                        .skewed
                        .iter()
                        .map(|(n, s)| (n.clone(), chrono::Duration::seconds(*s)))
                        .collect();
                    self.raise(
                        Code::ClockSkew,
                        format!(
                            "purges held: clocks off by more than the margin: {}",
                            v.own_skew
                                .clone()
                                .unwrap_or_else(|| crate::cluster::describe_skew(&nodes))
                        ),
                    );
                }
                if let (Some(h), Some(until), Some(why)) =
                    (&v.skew_hold, v.skew_hold_until, &v.skew_hold_reason)
                {
                    // Kept past its own window for the skew: say so, not a time in the past.
                    for r in self.retained.iter_mut().filter(|r| r.until < until) {
                        r.until = until;
                        r.held = Some(why.clone());
                    }
                    let p = Problem::new(Code::ClockSkew, format!("keys {why}"));
                    self.add(&match h.lasting() {
                        true => p.at(Level::Critical),
                        false => p,
                    });
                }
                if !v.in_sync && v.refused.is_none() {
                    self.add(&differs(v));
                }
                if let Some(n) = v.foreign_primary {
                    self.add(&foreign(n, "the cluster's key set"));
                }
                // Said in the same words as the leader's daemon: `add` keeps one of the two.
                for node in &v.unauthenticated {
                    self.add(&ack_unauthenticated(node));
                }
                for node in &v.missing {
                    self.add(&ack_missing(node));
                }
                let nodes = v.gate_waiting_on.join(", ");
                if v.gate_blocked {
                    let since = v
                        .rotation_due
                        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
                        .unwrap_or_default();
                    self.raise(
                        Code::GateBlocked,
                        format!(
                            "rotation due since {since} blocked past gate_deadline {}: {}",
                            v.gate_deadline
                                .map(crate::core::duration::format)
                                .unwrap_or_default(),
                            crate::cluster::waiting(
                                &v.gate_waiting_on,
                                &v.gate_refused,
                                "not applied"
                            )
                        ),
                    );
                } else if !nodes.is_empty() {
                    let refused = match v.gate_refused.as_slice() {
                        [] => String::new(),
                        r => format!(" ({} refused the key set)", r.join(", ")),
                    };
                    self.raise(
                        Code::GateWaiting,
                        format!("next promotion waits on {nodes}{refused}"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Ack;
    use crate::core::keyset::KeySet;
    use std::time::Duration;

    fn view(lagging: bool) -> ClusterView {
        let now = Utc::now();
        let set = KeySet::fresh(&now.into()).unwrap();
        let staged = set.keys[&0].fingerprint();
        let ack = |node: &str, staged| Ack {
            node: node.into(),
            revision: 1,
            staged,
            clock: Some(now - chrono::Duration::days(3)),
            refused: None,
        };
        let mut acks = vec![ack("a", staged)];
        if lagging {
            acks.push(ack("b", crate::core::key::Fingerprint::NONE));
        }
        cluster_view(
            &set.fingerprints(),
            &set.history,
            &set,
            1,
            &acks,
            Some("a".into()),
            Duration::ZERO,
            &now.into(),
        )
    }

    /// On the leader, every other node 25 s behind (within the margin of each other) names the
    /// leader's clock, in the clock line and the hold's reason; a follower, or nodes off by
    /// different amounts, keep naming the nodes. (Before describe_own_skew, status named n1
    /// and n2: the first assertion fails on that code.)
    #[test]
    fn a_leader_off_against_every_other_node_is_named_as_the_one_off() {
        let margin = Duration::from_secs(5);
        let judged = |me: &str, offsets: &[(&str, i64)]| {
            let mut v = view(false);
            v.leader = Some("n3".into());
            v.nodes = ["n1", "n2", "n3"]
                .iter()
                .map(|n| NodeView {
                    node: n.to_string(),
                    revision: 1,
                    holds_staged: true,
                    last_ack: None,
                })
                .collect();
            v.skewed = offsets.iter().map(|(n, s)| (n.to_string(), *s)).collect();
            v.skew_hold = Some(crate::cluster::SkewHold {
                node: "n2".into(),
                size_ms: 25_000,
                node_ms: 25_000,
                ahead: false,
                last_seen: Utc::now(),
                rotations: 1,
                seen_off: true,
                off: vec!["n1".into(), "n2".into()],
                unread_since: None,
                unread_ms: 0,
            });
            v.skew_hold_reason = Some("held for skew of node n2 (25s behind)".into());
            v.judge_own_clock(me, margin, Duration::from_secs(60));
            let mut sum = Summary::new(Kind::Tokens, PathBuf::from("/k"));
            sum.add_cluster(&Ok(v.clone()));
            (v, sum)
        };
        let (v, sum) = judged("n3", &[("n1", -25), ("n2", -25)]);
        let own = "this node's clock (leader n3) is 25s ahead of every other node (n1, n2)";
        assert_eq!(v.own_skew.as_deref(), Some(own));
        assert!(v
            .skew_hold_reason
            .as_deref()
            .unwrap()
            .starts_with(&format!("held for skew: {own}; until ")));
        assert!(sum.problems.iter().any(
            |p| p.message == format!("purges held: clocks off by more than the margin: {own}")
        ));
        assert!(!sum.problems.iter().any(|p| p.message.contains("node n2 (")));
        // Not the leader: this node's clock is not the one the readings were taken against.
        let (v, _) = judged("n1", &[("n1", -25), ("n2", -25)]);
        assert_eq!(v.own_skew, None);
        assert_eq!(
            v.skew_hold_reason.as_deref(),
            Some("held for skew of node n2 (25s behind)")
        );
        // A follower that finds the leader alone off, under a hold naming every other node.
        let (v, _) = judged("n1", &[("n3", 24)]);
        let leader = "the leader's clock (n3) is 24s ahead of every other node (n1, n2)";
        assert_eq!(v.own_skew.as_deref(), Some(leader));
        assert!(v
            .skew_hold_reason
            .as_deref()
            .unwrap()
            .starts_with(&format!("held for skew: {leader}; until ")));
        // Further apart than the margin: the nodes are named.
        let (v, sum) = judged("n3", &[("n1", -25), ("n2", -12)]);
        assert_eq!(v.own_skew, None);
        assert!(sum.problems.iter().any(|p| p.message
            == "purges held: clocks off by more than the margin: node n1 (25s behind), node n2 (12s behind)"));
    }

    /// A live view another version of the daemon wrote may carry a code this one does not
    /// know: `status` still reads it, at the level written, and says it as written.
    #[test]
    fn a_live_view_with_an_unknown_code_still_reads() {
        let json = r#"{"pid":7,"problems":[
            {"code":"retired-code","level":"critical","message":"from an older daemon"},
            {"code":"clock-skew","level":"warning","message":"purges held"}],
            "refreshed":"2026-01-01T00:00:00Z"}"#;
        let live: Live = serde_json::from_str(json).unwrap();
        assert_eq!(live.problems[0].code, Code::Other("retired-code".into()));
        let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
        for p in &live.problems {
            sum.add(p);
        }
        assert_eq!(sum.level, Level::Critical);
        assert!(sum.clock_problem && !sum.refused);
        let line = status_line(&[sum]);
        assert!(
            line.contains("(retired-code: from an older daemon; also clock-skew)"),
            "{line}"
        );
    }

    #[test]
    fn the_gate_blocks_only_when_a_node_lags_past_the_deadline() {
        let now = Utc::now();
        let deadline = Duration::from_secs(60);
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        let judged = |lagging: bool, due: Option<DateTime<Utc>>| {
            let mut v = view(lagging);
            v.judge_gate(due, deadline, None, now);
            let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
            sum.add_cluster(&Ok(v.clone()));
            (v.gate_blocked, sum.level)
        };
        assert_eq!(judged(true, ago(60)), (true, Level::Warning));
        assert_eq!(judged(true, ago(59)), (false, Level::Ok));
        assert_eq!(judged(true, ago(-3600)), (false, Level::Ok));
        assert_eq!(judged(true, None), (false, Level::Ok));
        assert_eq!(judged(false, ago(3600)), (false, Level::Ok));
        assert_eq!(view(true).gate_waiting_on, vec!["b".to_string()]);
        // A member not heard from for longer than member_timeout holds nothing back.
        let mut v = view(true);
        v.judge_gate(ago(3600), deadline, Some(Duration::from_secs(86_400)), now);
        assert!(v.gate_waiting_on.is_empty() && !v.gate_blocked);
    }
    /// A member whose acknowledgement does not verify is critical, named, and said once when
    /// the leader's daemon says it too.
    #[test]
    fn an_unauthenticated_acknowledgement_is_critical_and_said_once() {
        let mut v = view(true);
        v.unauthenticated = vec!["b".into()];
        // The cluster view alone (a follower's status): critical.
        let mut alone = Summary::new(Kind::Tokens, PathBuf::new());
        alone.add_cluster(&Ok(v.clone()));
        assert_eq!(alone.level, Level::Critical);
        // With the leader's daemon saying it too: once.
        let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
        sum.add(&ack_unauthenticated("b"));
        sum.add_cluster(&Ok(v));
        assert_eq!(sum.level, Level::Critical);
        let said: Vec<_> = sum
            .problems
            .iter()
            .filter(|p| p.code == Code::AckUnauthenticated)
            .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0]
            .message
            .starts_with("node b: acknowledgement not authenticated (forged, or sealed"));
    }

    /// Issue 22: a node lacking the cluster's primary was a WARNING ("run fernetd sync"),
    /// although every token the other nodes issue fails there.
    #[test]
    fn a_node_lacking_a_key_the_cluster_still_needs_is_critical() {
        let now: Now = Utc::now().into();
        let set = KeySet::fresh(&now).unwrap();
        let judged = |drop: Option<u64>, extra: bool| {
            let mut local = set.fingerprints();
            if let Some(n) = drop {
                local.remove(&n);
            }
            if extra {
                local.insert(9, set.keys[&0].fingerprint());
            }
            let v = cluster_view(
                &local,
                &crate::core::history::History::new(),
                &set,
                4,
                &[],
                None,
                Duration::ZERO,
                &now,
            );
            let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
            sum.add_cluster(&Ok(v));
            (sum.level, sum.problems[0].message.clone())
        };
        let primary = set.primary().unwrap();
        let (level, why) = judged(Some(primary), false);
        assert_eq!(level, Level::Critical, "{why}");
        assert!(
            why.contains(&format!("lacks key {primary} (the cluster's primary)")),
            "{why}"
        );
        // The staged key only: the gate waits for this node, nothing fails yet.
        let (level, why) = judged(Some(0), false);
        assert_eq!(level, Level::Warning, "{why}");
        assert!(why.contains("run fernetd sync"), "{why}");
        // A key beyond the set (unknown to the history): a warning.
        assert_eq!(judged(None, true).0, Level::Warning);
    }

    /// Chaos seed 2026 (one hour, 2159.7 s): etcd away, a key of the set last applied gone
    /// is critical (by material: a key held under another number is no loss), and only then.
    #[test]
    fn a_key_of_the_set_last_applied_missing_is_critical_only_while_etcd_is_away() {
        let now: Now = Utc::now().into();
        let set = KeySet::fresh(&now).unwrap();
        let primary = set.primary().unwrap();
        let judged = |disk, view| applied_judged(&set, disk, view).level;
        let away = || Err(ViewError::Unreachable("no member answered".into()));
        assert_eq!(judged(set.fingerprints(), away()), Level::Warning);
        let mut gone = set.fingerprints();
        gone.remove(&primary);
        assert_eq!(judged(gone.clone(), away()), Level::Critical);
        // The primary's material under another number (a rename, a node behind): held.
        let mut moved = gone.clone();
        moved.insert(primary + 1, set.fingerprints()[&primary]);
        assert_eq!(judged(moved, away()), Level::Warning);
        // A primary the set never held (written outside fernetd): its tokens fail elsewhere.
        let other = KeySet::fresh(&now).unwrap();
        let mut foreign = set.fingerprints();
        foreign.insert(primary + 1, other.fingerprints()[&other.primary().unwrap()]);
        assert_eq!(judged(foreign, away()), Level::Critical);
        // The staged key 0 alone missing: nothing encrypts with it yet.
        let mut staged = set.fingerprints();
        staged.remove(&0);
        assert_eq!(judged(staged, away()), Level::Warning);
        // A refused set says so in its own words; the applied set is not judged then.
        let refused = Err(ViewError::Refused("sealed with another key".into()));
        let problems = applied_judged(&set, gone, refused).problems;
        assert!(!format!("{problems:?}").contains("last applied"));
    }

    /// A node whose disk is `disk` after applying `set`, judged with the cluster's `view`.
    fn applied_judged(
        set: &KeySet,
        disk: std::collections::BTreeMap<u64, crate::core::key::Fingerprint>,
        view: Result<ClusterView, ViewError>,
    ) -> Summary {
        let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
        sum.applied = against_applied(&set.history, &disk);
        sum.add_cluster(&view);
        sum
    }

    /// attack22 F5: a node one rotation behind holds the cluster's primary as its key 0;
    /// tokens made with it decrypt there, so it is no critical "lacks key N (the cluster's
    /// primary)", only a warning (it differs: run fernetd sync).
    #[test]
    fn a_node_holding_the_primary_as_its_key_0_does_not_lack_it() {
        let now: Now = Utc::now().into();
        let set = KeySet::fresh(&now).unwrap();
        let primary = set.primary().unwrap();
        let fps = set.fingerprints();
        // One rotation behind: the cluster's primary is this node's key 0, and its own primary
        // is an older key the cluster still keeps.
        let mut local = fps.clone();
        local.insert(0, fps[&primary]);
        local.remove(&primary);
        let v = cluster_view(
            &local,
            &crate::core::history::History::new(),
            &set,
            4,
            &[],
            None,
            Duration::ZERO,
            &now,
        );
        assert!(v.lacking.is_empty(), "{:?}", v.lacking);
        let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
        sum.add_cluster(&Ok(v));
        assert_eq!(sum.level, Level::Warning, "{:?}", sum.problems);
        assert!(sum.problems[0].message.contains("run fernetd sync"));
    }
    /// Issue 22: `status` printed `input-refused` twice, the daemon's refusal and its own
    /// judgement of the same set.
    #[test]
    fn a_refusal_the_daemon_reported_is_said_once() {
        let now: Now = Utc::now().into();
        let set = KeySet::fresh(&now).unwrap();
        let mut held = set.history.clone();
        held.lineage = KeySet::fresh(&now).unwrap().history.lineage;
        let other = KeySet::fresh(&now).unwrap();
        let v = cluster_view(
            &other.fingerprints(),
            &held,
            &set,
            4,
            &[],
            None,
            Duration::from_secs(3600),
            &now,
        );
        assert!(v.refused.is_some());
        let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
        sum.add(&Problem::new(
            Code::InputRefused,
            "/c/tokens/keyset at revision 4: refused, every key stays: of another cluster",
        ));
        sum.add_cluster(&Ok(v.clone()));
        let refusals = |s: &Summary| {
            s.problems
                .iter()
                .filter(|p| p.code == Code::InputRefused)
                .count()
        };
        assert_eq!(refusals(&sum), 1, "{:?}", sum.problems);
        // Without a daemon, status's own judgement says it.
        let mut alone = Summary::new(Kind::Tokens, PathBuf::new());
        alone.add_cluster(&Ok(v));
        assert_eq!(refusals(&alone), 1);
        assert_eq!(alone.level, Level::Critical);
    }
    /// Issue 22: "node b has not applied the staged key" for a node that refused the set.
    #[test]
    fn a_member_that_refused_the_set_is_said_to_have_refused_it() {
        let now = Utc::now();
        let set = KeySet::fresh(&now.into()).unwrap();
        let ack = |node: &str, refused| Ack {
            node: node.into(),
            revision: 1,
            staged: crate::core::key::Fingerprint::NONE,
            clock: Some(now),
            refused,
        };
        let acks = [ack("b", Some(7)), ack("c", None)];
        let mut v = cluster_view(
            &set.fingerprints(),
            &set.history,
            &set,
            7,
            &acks,
            Some("a".into()),
            Duration::ZERO,
            &now.into(),
        );
        assert_eq!(v.gate_refused, vec!["b".to_string()]);
        let said = |v: &ClusterView| {
            let mut sum = Summary::new(Kind::Tokens, PathBuf::new());
            sum.add_cluster(&Ok(v.clone()));
            sum.problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let waits = said(&v);
        assert!(
            waits.contains("waits on b, c (b refused the key set)"),
            "{waits}"
        );
        v.judge_gate(
            Some(now - chrono::Duration::hours(1)),
            Duration::ZERO,
            None,
            now,
        );
        let blocked = said(&v);
        assert!(
            blocked.contains("node c has not applied the staged key; node b refused the key set"),
            "{blocked}"
        );
    }
}
