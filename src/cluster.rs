//! Cluster mode's store: each repository's key set lives in etcd under
//! `{prefix}/{kind}/keyset` (sealed when a seal key is configured), written with transactions
//! that compare revisions so that no two writers ever overwrite each other unknowingly.
//!
//! This module maps etcd's responses into fernetd's own types at the boundary; nothing above it
//! sees an etcd type. It decides nothing about rotations.

use crate::config::{ClusterSettings, Kind};
use crate::core::keyset::{KeySet, KeySetError};
use crate::seal::{SealError, SealKeyId, Sealing};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, WatchOptions, WatchStream,
};
use std::future::Future;
use std::time::Duration;

pub mod names;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "{key}: not sealing it with seal key {id}: {} not said to hold it (each member's \
         acknowledgement lists the seal keys its daemon holds); list it in their seal_key_files \
         and reload them first",
        nodes.join(", ")
    )]
    SealNotHeld {
        key: String,
        id: SealKeyId,
        nodes: Vec<String>,
    },
    #[error("etcd {endpoints}: {reason}")]
    Connect { endpoints: String, reason: String },
    #[error("[cluster] {field} {source}")]
    SealKey {
        field: &'static str,
        source: SealError,
    },
    #[error("[cluster] seal_key_file: required unless insecure_unsealed = true (key sets would sit in etcd in the clear)")]
    Unsealed,
    #[error("etcd {what}: {reason}")]
    Request { what: String, reason: String },
    #[error("etcd {what}: no answer within {}", crate::core::duration::format(*.timeout))]
    Timeout { what: String, timeout: Duration },
    #[error("{key} already holds a key set (revision {revision}); refusing to overwrite it (--force replaces it)")]
    Exists { key: String, revision: i64 },
    #[error("{key}: no key set; import one first (fernetd cluster init --from DIR)")]
    Missing { key: String },
    #[error("{key}: {source}")]
    Seal { key: String, source: SealError },
    #[error("{key}: {source}")]
    KeySet { key: String, source: KeySetError },
    #[error(
        "{key}: promotion held: {} (fingerprint {staged}); nothing changed",
        waiting(nodes, refused, "not yet applied")
    )]
    GateWaiting {
        key: String,
        nodes: Vec<String>,
        /// Those of `nodes` that refused the set (their acknowledgement says so).
        refused: Vec<String>,
        staged: crate::core::key::Fingerprint,
    },
    /// A daemon is refused under a held name: which of the two serves users is unknown.
    #[error(
        "{key}: promotion held: duplicate node name: {}; nothing changed until one of them stops \
         or gets its own [cluster] node",
        names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("; ")
    )]
    DuplicateHeld {
        key: String,
        names: Vec<names::Contended>,
    },
    #[error("{key}: other writers changed the key set under this rotation {attempts} times in a row; nothing changed, try again")]
    Contention { key: String, attempts: u32 },
    #[error("{key}: this node no longer holds the leadership (its lease ended, or another node leads); nothing changed")]
    NotLeader { key: String },
    #[error("the key set was rotated meanwhile; the next rotation is due {}", due.map_or("never".to_string(), |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))]
    NotDue {
        due: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("{key}: rotation paused: the key set holds {keys} keys, the most it may while purges are held ({held}); every key stays")]
    SkewBound {
        key: String,
        keys: usize,
        held: String,
        hold: Box<Option<SkewHold>>,
        skewed: Vec<(String, chrono::Duration)>,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("{key} changed while this command ran: revision {revision} now holds {won} (another writer committed first: a rotation, another `cluster init`); nothing changed, read what is there and run it again")]
    Raced {
        key: String,
        revision: i64,
        won: String,
    },
    /// `cluster init --from DIR` where DIR's lineage is bound to another etcd, without
    /// `--move-etcd`.
    #[error(
        "{}: its keys follow a cluster bound to {held}, but this is {reached}: refusing to \
         start a second cluster here (a wrong endpoint? fix [cluster] endpoints); to move the \
         cluster to this etcd on purpose, add --move-etcd",
        from.display()
    )]
    BoundElsewhere {
        from: std::path::PathBuf,
        held: crate::core::keyset::Binding,
        reached: crate::core::keyset::Binding,
    },
    #[error("{key} at revision {revision}: refused, every key stays: {reason}")]
    Refused {
        key: String,
        revision: i64,
        reason: String,
    },
}

/// "node a has" or "nodes a, b have", for messages about lagging nodes.
pub fn nodes_have(nodes: &[String]) -> String {
    match nodes {
        [one] => format!("node {one} has"),
        many => format!("nodes {} have", many.join(", ")),
    }
}

/// What the gate waits for: "node c has {applied} the staged key; node b refused the key set".
pub fn waiting(nodes: &[String], refused: &[String], applied: &str) -> String {
    let (no, lag): (Vec<String>, Vec<String>) =
        nodes.iter().cloned().partition(|n| refused.contains(n));
    let mut parts = Vec::new();
    if !lag.is_empty() {
        parts.push(format!("{} {applied} the staged key", nodes_have(&lag)));
    }
    if !no.is_empty() {
        let who = match no.as_slice() {
            [one] => format!("node {one}"),
            many => format!("nodes {}", many.join(", ")),
        };
        parts.push(format!("{who} refused the key set"));
    }
    parts.join("; ")
}

/// The clock difference a repository's purges tolerate: its margin, and for credentials
/// (which have no lifetime, so no margin of their own: 0 held every purge of theirs for the
/// slightest difference while protecting nothing) the tokens' default margin.
pub fn skew_tolerance(kind: Kind, margin: Duration) -> Duration {
    match kind {
        Kind::Credentials => margin.max(crate::core::planner::DEFAULT_MARGIN),
        _ => margin,
    }
}

pub use crate::core::skew::{
    absent, agrees, describe_own_skew, describe_size, describe_skew, judge_skew, key_bound, skewed,
    waiting_on, Ack, ClockEvidence, Offset, Reading, SkewHold, SkewJudgement,
    SKEW_CRITICAL_ROTATIONS,
};

/// What a cluster rotation committed.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub revision: i64,
    pub decision: crate::core::rotation::Decision,
    /// Nodes whose clocks are off by more than the margin (by this rotation's fresh readings,
    /// or by an old acknowledgement for a node not connected).
    pub skewed: Vec<(String, chrono::Duration)>,
    /// Connected nodes that did not answer this rotation's clock probe: nothing was purged.
    pub unanswered: Vec<String>,
    /// The hold on purges recorded with this rotation (see [`SkewHold`]).
    pub hold: Option<SkewHold>,
    /// Every other member this rotation judged (by its acknowledgement): whom "every other
    /// node" means in the words for a leader's own clock off ([`describe_own_skew`]).
    pub others: Vec<String>,
    /// The key set as committed.
    pub set: KeySet,
    /// When the committing transaction was sent: the commit happened after it.
    pub sent: chrono::DateTime<chrono::Utc>,
}

/// What a rotation of the cluster's key set needs besides the set in etcd.
pub struct Rotation<'a> {
    pub params: &'a crate::repository::RotateParams,
    pub now: &'a crate::core::clock::Now,
    /// This node's history (the lineage and keys of the set it applied): a set in etcd that
    /// is not a successor of it (a restored backup, another cluster's) is never rotated on.
    pub held: Option<&'a crate::core::history::History>,
    /// A node clock off by more than this holds every purge.
    pub skew_tolerance: Duration,
    /// The leader's claim (its name and lease): the commit is fenced on it, so a leader that
    /// was paused past its lease rotates nothing when it resumes.
    pub fence: Option<(&'a str, i64)>,
    /// The leader's schedule: "due" is judged on the set read for this rotation.
    pub schedule: Option<&'a crate::core::schedule::Schedule>,
    /// See [`waiting_on`].
    pub member_timeout: Option<Duration>,
    /// How long the leader waits for the members' answers to its clock probe.
    pub probe_wait: Duration,
}

/// How long a clock probe waits for answers by default (`fernetd rotate`; the daemon's leader
/// waits at most a third of its lease, so that its keep-alive stays on time).
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How often a rotation re-reads and retries when another writer committed first.
const MAX_ATTEMPTS: u32 = 50;

/// How many keys rotating `set` with `params` at `now` would leave.
fn decision_keys(
    set: &KeySet,
    params: &crate::repository::RotateParams,
    now: &crate::core::clock::Now,
) -> usize {
    let numbers: Vec<u64> = set.keys.keys().copied().collect();
    let d = crate::core::rotation::decide(
        &numbers,
        &set.history,
        now,
        params.max_active_keys,
        params.retention,
        params.force_purge,
    );
    (set.keys.len() + 1).saturating_sub(d.purge.len())
}

/// A connection to the cluster's etcd.
pub struct Cluster {
    client: Client,
    prefix: String,
    seal: Sealing,
    timeout: Duration,
    endpoints: String,
    /// The etcd cluster id the member reported (its response header): stamped into every set
    /// written, and what a node's lineage is bound to.
    etcd_id: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({} {})", self.endpoints, self.prefix)
    }
}

impl Cluster {
    /// Connects to one member that answers, trying the endpoints in turn (each call starts
    /// from the next one, so a dead or cut-off member is not retried first every time). A
    /// session talks to one member only: when it fails, the caller starts a new session, which
    /// moves on to the others.
    pub async fn connect(s: &ClusterSettings) -> Result<Cluster, ClusterError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if s.seal_key_files.is_empty() && !s.insecure_unsealed {
            return Err(ClusterError::Unsealed);
        }
        let seal = s.sealing().map_err(|source| ClusterError::SealKey {
            field: s.seal_field(),
            source,
        })?;
        let n = s.endpoints.len().max(1);
        let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut reasons = Vec::new();
        for k in 0..n {
            let Some(endpoint) = s.endpoints.get((start + k) % n) else {
                break;
            };
            match connect_one(endpoint, s).await {
                Ok((client, etcd_id)) => {
                    return Ok(Cluster {
                        client,
                        prefix: s.prefix.clone(),
                        seal,
                        timeout: s.request_timeout,
                        endpoints: endpoint.clone(),
                        etcd_id,
                    })
                }
                Err(reason) => reasons.push(format!("{endpoint}: {reason}")),
            }
        }
        Err(ClusterError::Connect {
            endpoints: s.endpoints.join(","),
            reason: format!("no member answered ({})", reasons.join("; ")),
        })
    }

    pub fn sealed(&self) -> bool {
        self.seal.sealed()
    }

    /// The etcd this session reached: its cluster id and the prefix.
    pub fn binding(&self) -> crate::core::keyset::Binding {
        crate::core::keyset::Binding {
            cluster_id: format!("{:x}", self.etcd_id),
            prefix: self.prefix.clone(),
        }
    }

    /// The endpoint this session talks to, as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoints
    }

    /// `set` sealed for the etcd key `key` (the key is in the seal's associated data).
    fn seal_set(&self, key: &str, set: &KeySet) -> Result<Vec<u8>, ClusterError> {
        self.seal
            .seal(&set.encode(), key.as_bytes())
            .map_err(|source| ClusterError::Seal {
                key: key.to_string(),
                source,
            })
    }

    /// `set` as this session writes it: its lineage says which etcd it was written into.
    fn stamped(&self, set: &KeySet) -> KeySet {
        let mut set = set.clone();
        if let Some(l) = set.history.lineage.as_mut() {
            l.etcd = Some(self.binding());
        }
        set
    }

    /// The etcd key of a repository's key set.
    pub fn keyset_key(&self, kind: Kind) -> String {
        format!("{}/{}/keyset", self.prefix, kind.name())
    }

    /// The leased key naming the node that leads a repository's rotations.
    fn leader_key(&self, kind: Kind) -> String {
        format!("{}/{}/leader", self.prefix, kind.name())
    }

    /// Where the nodes' acknowledgements for a repository live, one key per node.
    fn acks_prefix(&self, kind: Kind) -> String {
        format!("{}/{}/acks/", self.prefix, kind.name())
    }

    /// The key a leader posts a clock probe under. It sorts between the key set and the
    /// leader key, so the watch every session holds on those two carries it.
    fn probe_key(&self, kind: Kind) -> String {
        format!("{}/{}/keyset-clock", self.prefix, kind.name())
    }

    /// Where the members' clock readings live, one key per connected node.
    fn clocks_prefix(&self, kind: Kind) -> String {
        format!("{}/{}/clocks/", self.prefix, kind.name())
    }

    /// The leader's record of purges held for skew ([`SkewHold`]).
    fn hold_key(&self, kind: Kind) -> String {
        format!("{}/{}/skew-hold", self.prefix, kind.name())
    }

    /// Writes this node's clock reading (answering `probe`, 0 for none) under its session's
    /// `lease`: the key lives while the session does, so the leader knows who must answer.
    pub async fn answer(
        &mut self,
        kind: Kind,
        node: &str,
        probe: u64,
        lease: i64,
    ) -> Result<(), ClusterError> {
        let key = format!("{}{node}", self.clocks_prefix(kind));
        let reading = Reading {
            node: node.to_string(),
            probe,
            clock: chrono::Utc::now(),
        };
        let value = self.signed(&key, &reading);
        let mut client = self.client.clone();
        self.bounded(
            &format!("write {key}"),
            client.put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(())
    }

    /// The connected nodes' clocks, read now: posts a probe, then reads the answers until every
    /// connected node other than `except` answered or `wait` passed. Each offset is measured
    /// against this node's clock, with the round trip as its error bar.
    pub async fn probe_clocks(
        &mut self,
        kind: Kind,
        except: Option<&str>,
        wait: Duration,
    ) -> Result<ClockEvidence, ClusterError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| ClusterError::Random(e.to_string()))?;
        let probe = u64::from_le_bytes(nonce).max(1);
        let key = self.probe_key(kind);
        let prefix = self.clocks_prefix(kind);
        let mut client = self.client.clone();
        let started = tokio::time::Instant::now();
        let sent = chrono::Utc::now();
        let value = serde_json::to_vec(&serde_json::json!({ "probe": probe })).unwrap_or_default();
        self.bounded(
            &format!("write {key}"),
            client.put(key.clone(), value, None),
        )
        .await?;
        let mut fresh: std::collections::BTreeMap<String, Offset> = Default::default();
        loop {
            let resp = self.read_prefix(&prefix).await?;
            let seen = chrono::Utc::now();
            let mut live = Vec::new();
            for kv in resp.kvs() {
                let node = String::from_utf8_lossy(kv.key())
                    .trim_start_matches(&prefix)
                    .to_string();
                if except == Some(node.as_str()) {
                    continue;
                }
                let at = String::from_utf8_lossy(kv.key());
                if let Some(r) = self.believed::<Reading>(&at, kv.value()) {
                    if r.probe == probe && !fresh.contains_key(&node) {
                        fresh.insert(node.clone(), Offset::measure(&node, r.clock, sent, seen));
                    }
                }
                live.push(node);
            }
            let unanswered: Vec<String> = live
                .into_iter()
                .filter(|n| !fresh.contains_key(n))
                .collect();
            if unanswered.is_empty() || started.elapsed() >= wait {
                return Ok(ClockEvidence {
                    fresh: fresh.into_values().collect(),
                    unanswered,
                    absent: Vec::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The hold on purges the last rotation recorded, if any (an unreadable one counts as none).
    pub async fn skew_hold(&mut self, kind: Kind) -> Result<Option<SkewHold>, ClusterError> {
        let key = self.hold_key(kind);
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("read {key}"), client.get(key.clone(), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// Every key under `prefix`, within the request timeout.
    async fn read_prefix(&self, prefix: &str) -> Result<etcd_client::GetResponse, ClusterError> {
        let mut client = self.client.clone();
        self.bounded(
            &format!("read {prefix}"),
            client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())),
        )
        .await
    }

    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(ClusterError::Timeout {
                what: what.to_string(),
                timeout: self.timeout,
            }),
            Ok(Err(e)) => Err(ClusterError::Request {
                what: what.to_string(),
                reason: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Stores `set` as the repository's key set, only into an empty slot, or with `force`
    /// over whatever is there; every write a transaction on the revision read, so a rotation
    /// or another `cluster init` committed meanwhile wins and this one changes nothing
    /// ([`ClusterError::Raced`]). The lineage: the next generation of the set replaced when it
    /// opens and `set`'s own lineage (a good node's) is not far behind it ([`continues`]);
    /// over any other set a new lineage; into an empty slot the next generation of `set`'s
    /// own lineage, or a new one. Always bound to this etcd (a node bound to another etcd
    /// takes it when it continues its lineage). With `force_purge` nodes take it even where it
    /// removes keys that may still decrypt live tokens. Returns the new revision and the
    /// lineage written.
    pub async fn import(
        &mut self,
        kind: Kind,
        set: &KeySet,
        force: bool,
        force_purge: bool,
    ) -> Result<(i64, crate::core::keyset::Lineage), ClusterError> {
        let key = self.keyset_key(kind);
        let stored = match self.stored(&key).await {
            Ok(s) => Some(s),
            Err(ClusterError::Missing { .. }) => None,
            Err(e) => return Err(e),
        };
        if let (Some(st), false) = (&stored, force) {
            return Err(ClusterError::Exists {
                key,
                revision: st.revision,
            });
        }
        let replaced = stored
            .as_ref()
            .and_then(|st| open(&self.seal, &key, &st.value).ok())
            .and_then(|s| s.history.lineage);
        let imported = set.history.lineage.as_ref();
        // Every member of the set replaced and of the keys imported stays one: only
        // `remove-node` and `rename-node` end or move a membership.
        let members: std::collections::BTreeMap<_, _> = replaced
            .iter()
            .chain(imported)
            .flat_map(|l| l.members.clone())
            .collect();
        // The forced purges either one followed: a node that missed one takes the new set
        // as forced ([`crate::core::keyset::forced_for`]).
        let purges: Vec<String> = replaced
            .iter()
            .chain(imported)
            .flat_map(|l| l.purges.clone())
            .collect();
        // The names either one saw leave stay gone; only `init --members` or the node's own
        // later acknowledgement brings one back.
        let departed: std::collections::BTreeMap<_, _> = replaced
            .iter()
            .chain(imported)
            .flat_map(|l| l.departed.clone())
            .collect();
        let fresh =
            || crate::core::keyset::Lineage::new().map_err(|e| ClusterError::Random(e.to_string()));
        let mut lineage = match (stored.is_some(), replaced, imported) {
            // The later of the two: a node ahead of a restored value takes it as newer.
            (_, Some(r), _) if continues(&r, imported) => match imported {
                Some(i) if i.generation > r.generation => i.next(),
                _ => r.next(),
            },
            // Over a set it cannot continue (a huge generation, another lineage, unreadable):
            // a new lineage from the keys imported, which the nodes of the lineage it replaces
            // (the keys' own, else the set's) take.
            (true, r, i) => crate::core::keyset::Lineage {
                from: i.or(r.as_ref()).map(|l| l.cluster.clone()),
                ..fresh()?
            },
            // Into an empty slot, keys that follow a lineage (a good node's, after etcd lost
            // its data, or moving the cluster to this etcd): its next generation.
            (false, _, Some(l)) => l.next(),
            (false, _, None) => fresh()?,
        };
        lineage.remember(&purges);
        if force_purge {
            lineage
                .force()
                .map_err(|e| ClusterError::Random(e.to_string()))?;
        }
        lineage.etcd = Some(self.binding());
        lineage.members = members
            .into_iter()
            .filter(|(name, _)| !departed.contains_key(name))
            .collect();
        lineage.departed = departed;
        let mut set = set.clone();
        set.history.lineage = Some(lineage.clone());
        let value = self.seal_set(&key, &set)?;
        let compare = match &stored {
            Some(st) => Compare::mod_revision(key.clone(), CompareOp::Equal, st.revision),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("import {key}"), client.txn(txn))
            .await?;
        if !resp.succeeded() {
            let now = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
                _ => None,
            });
            let Some((revision, value)) = now else {
                return Err(ClusterError::Raced {
                    key,
                    revision: resp.header().map(|h| h.revision()).unwrap_or(0),
                    won: "no key set (deleted meanwhile)".into(),
                });
            };
            let value = zeroize::Zeroizing::new(value);
            let won = match open(&self.seal, &key, &value) {
                Ok(s) => s.history.lineage.map_or_else(
                    || "a key set without lineage".to_string(),
                    |l| format!("the {l}"),
                ),
                Err(e) => format!("a value this node cannot open ({e})"),
            };
            return Err(ClusterError::Raced { key, revision, won });
        }
        Ok((resp.header().map(|h| h.revision()).unwrap_or(0), lineage))
    }

    /// Publishes this node's newer key set again over an older one at `over` (0: over none),
    /// through a transaction on that revision, so that a restored backup or lost data heals
    /// forward. False when another writer changed the key first.
    pub async fn republish(
        &mut self,
        kind: Kind,
        set: &KeySet,
        over: i64,
    ) -> Result<bool, ClusterError> {
        let key = self.keyset_key(kind);
        let value = self.seal_set(&key, &self.stamped(set))?;
        let compare = match over {
            0 => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            r => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.clone(), value, None)]);
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("republish {key}"), client.txn(txn))
            .await?;
        Ok(resp.succeeded())
    }

    /// Writes the repository's key set again, sealed with this node's sealing key (the first
    /// of `seal_key_files`), when it is stored in the clear or sealed with another key this
    /// node holds (a transaction on the revision read: a rotation meanwhile wins, and is
    /// sealed itself). The set is the same, so every node takes it as the one it holds.
    /// Returns what it was sealed with before and the new revision, if it was written.
    pub async fn seal_in_place(&mut self, kind: Kind) -> Result<Resealed, ClusterError> {
        let key = self.keyset_key(kind);
        let with = self.seal.sealing_id();
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.stored(&key).await?;
            // Opening it proves it sealed with a key this node holds (or in the clear, where
            // this node takes that), and names which.
            let (set, was) = open_which(&self.seal, &key, &stored.value)?;
            // Sealing it again stamps it as written here: a copy of another etcd's set
            // would then pass for the cluster moved on purpose.
            if let Some(why) = crate::core::keyset::bound_elsewhere(
                None,
                set.history.lineage.as_ref(),
                &self.binding(),
            ) {
                return Err(ClusterError::Refused {
                    key,
                    revision: stored.revision,
                    reason: format!("not sealing it again: {why}"),
                });
            }
            if was.is_some() && was == with {
                return Ok(Resealed {
                    was,
                    with,
                    revision: None,
                });
            }
            // From one seal key to another: only once every member says it holds the new one
            // (a member that cannot open the set refuses it, and the gate holds on it).
            if let (Some(_), Some(id)) = (was, with) {
                let nodes: Vec<String> = self
                    .ack_records(kind)
                    .await?
                    .into_iter()
                    .filter(|(_, r)| !matches!(r, AckRecord::Believed(_, Some(b)) if b.seal_ids.contains(&id.to_string())))
                    .map(|(node, _)| node)
                    .collect();
                if !nodes.is_empty() {
                    return Err(ClusterError::SealNotHeld { key, id, nodes });
                }
            }
            if self.republish(kind, &set, stored.revision).await? {
                let (_, revision) = self.fetch(kind).await?;
                return Ok(Resealed {
                    was,
                    with,
                    revision: Some(revision),
                });
            }
        }
        Err(ClusterError::Contention {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The id of the seal key the repository's key set is sealed with (None: in the clear),
    /// as this node opens it; an error when it does not open here (naming the key it lacks
    /// when the value names it).
    pub async fn sealed_with(&mut self, kind: Kind) -> Result<Option<SealKeyId>, ClusterError> {
        let key = self.keyset_key(kind);
        let stored = self.stored(&key).await?;
        open_which(&self.seal, &key, &stored.value).map(|(_, by)| by)
    }

    /// The ids of the seal keys this node holds, the sealing one first.
    pub fn seal_ids(&self) -> Vec<SealKeyId> {
        self.seal.ids()
    }

    /// Every live node's acknowledgement for a repository (a malformed one counts as a node
    /// that has applied nothing).
    pub async fn acks(&mut self, kind: Kind) -> Result<Vec<Ack>, ClusterError> {
        Ok(judged(self.ack_records(kind).await?))
    }

    /// The members the key set lists whose acknowledgement record is missing from etcd
    /// (deleted, or never written): counted as holding nothing by [`Cluster::acks`].
    pub async fn missing(&mut self, kind: Kind) -> Result<Vec<String>, ClusterError> {
        Ok(self
            .ack_records(kind)
            .await?
            .into_iter()
            .filter(|(_, record)| matches!(record, AckRecord::Missing(_)))
            .map(|(node, _)| node)
            .collect())
    }

    /// The acknowledgements as the gate counts them for the set of `lineage`: with a seal key,
    /// one whose MAC does not bind it to that very set (another generation or lineage: an old
    /// record written back, or one a node wrote before its daemon bound them) holds nothing of
    /// it, whatever staged key it names.
    fn gate_counted(
        &self,
        records: Vec<(String, AckRecord)>,
        lineage: Option<&crate::core::keyset::Lineage>,
    ) -> Vec<Ack> {
        let current = lineage.filter(|_| self.seal.sealed()).map(ack_binding);
        records
            .into_iter()
            .map(|(node, record)| {
                let unbound = matches!(&record, AckRecord::Believed(_, b)
                    if current.is_some() && b.as_ref().map(|b| &b.set) != current.as_ref());
                let mut ack = counted(node, record);
                if unbound {
                    ack.staged = crate::core::key::Fingerprint::NONE;
                }
                ack
            })
            .collect()
    }

    /// The nodes whose acknowledgement for a repository does not verify with any seal key
    /// held (forged, copied from another node's, or written by a daemon without record
    /// MACs): counted as holding nothing by [`Cluster::acks`]. Empty without a seal key.
    /// A node whose clock answer (`clocks/NODE`) does not verify is named too, as
    /// `NODE (clock answer)`, and its record logged: [`Cluster::probe_clocks`] counts it as
    /// unanswered (purges held), and a forger's answer is said, not only counted.
    pub async fn unauthenticated(&mut self, kind: Kind) -> Result<Vec<String>, ClusterError> {
        let mut nodes: Vec<String> = self
            .ack_records(kind)
            .await?
            .into_iter()
            .filter(|(_, record)| matches!(record, AckRecord::Unauthenticated(_)))
            .map(|(node, _)| node)
            .collect();
        nodes.extend(self.forged_clock_answers(kind).await?);
        Ok(nodes)
    }

    /// [`Cluster::acks`] and [`Cluster::unauthenticated`] from one read of the
    /// acknowledgements (for `status`, which says both: one range over them instead of two).
    pub async fn acks_judged(&mut self, kind: Kind) -> Result<AcksJudged, ClusterError> {
        let mut judged = AcksJudged::default();
        for (node, record) in self.ack_records(kind).await? {
            match record {
                AckRecord::Unauthenticated(_) => judged.unauthenticated.push(node.clone()),
                AckRecord::Missing(_) => judged.missing.push(node.clone()),
                _ => {}
            }
            judged.acks.push(counted(node, record));
        }
        judged
            .unauthenticated
            .extend(self.forged_clock_answers(kind).await?);
        Ok(judged)
    }

    /// The nodes whose clock answer parses as a reading but whose MAC does not verify, each
    /// logged naming its record and named as `NODE (clock answer)`.
    async fn forged_clock_answers(&mut self, kind: Kind) -> Result<Vec<String>, ClusterError> {
        let mut nodes = Vec::new();
        let prefix = self.clocks_prefix(kind);
        let resp = self.read_prefix(&prefix).await?;
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let node = key.trim_start_matches(&prefix);
            let forged = self.believed::<Reading>(&key, kv.value()).is_none()
                && serde_json::from_slice::<Reading>(kv.value()).is_ok();
            if forged {
                tracing::error!(
                    "node {node}: clock answer not authenticated ({key}: its MAC does not \
                     verify with any seal key held: forged, copied from another node's \
                     record, or written by a fernetd without record MACs); counted as \
                     unanswered"
                );
                nodes.push(format!("{node}{CLOCK_ANSWER}"));
            }
        }
        Ok(nodes)
    }

    /// Every acknowledgement record of a repository, by node, judged once: believed, an
    /// acknowledgement whose MAC does not verify, or not an acknowledgement at all; and every
    /// member the key set lists that has no record (missing). The membership is read from the
    /// sealed set, never from the records: a key set this node cannot read lists none here
    /// (the gate, which reads it first, fails on it anyway).
    ///
    /// A record under a name that left the members ([`Lineage::departed`]) and speaks of
    /// nothing since (an etcd backup's leftover, restored after a removal or a rename) is no
    /// record here: it neither holds the gate nor joins the members again.
    ///
    /// [`Lineage::departed`]: crate::core::keyset::Lineage::departed
    async fn ack_records(&mut self, kind: Kind) -> Result<Vec<(String, AckRecord)>, ClusterError> {
        let lineage = match self.fetch(kind).await {
            Ok((set, _)) => set.history.lineage,
            Err(_) => None,
        };
        let members = lineage
            .as_ref()
            .map(|l| l.members.clone())
            .unwrap_or_default();
        let prefix = self.acks_prefix(kind);
        let resp = self.read_prefix(&prefix).await?;
        let mut records: Vec<(String, AckRecord)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let node = key.trim_start_matches(&prefix).to_string();
                let record = match self.believed_ack(&key, kv.value()) {
                    Some(Ok((ack, bound))) => AckRecord::Believed(ack, bound),
                    Some(Err(())) => AckRecord::Unauthenticated(key.to_string()),
                    None if serde_json::from_slice::<Ack>(kv.value()).is_ok() => {
                        AckRecord::Unauthenticated(key.to_string())
                    }
                    None => AckRecord::Unreadable,
                };
                (node, record)
            })
            .filter(|(node, record)| match record {
                AckRecord::Believed(ack, bound) => {
                    let bound = bound.as_ref().and_then(|b| b.lineage());
                    let heard = lineage
                        .as_ref()
                        .is_none_or(|l| l.heard_since_departure(node, bound, ack.clock));
                    if !heard {
                        tracing::debug!(
                            "{prefix}{node}: acknowledgement from before node {node} left the \
                             members; not counted"
                        );
                    }
                    heard
                }
                _ => true,
            })
            .collect();
        for node in members.keys() {
            if !records.iter().any(|(n, _)| n == node) {
                records.push((node.clone(), AckRecord::Missing(format!("{prefix}{node}"))));
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }

    /// One edit of the members the key set lists, as a compare (the set's revision read)
    /// and a put (the set with `edit` applied, sealed, its keys unchanged, one generation on)
    /// for the caller's transaction, so that the membership moves only together with what the
    /// caller writes and never over a rotation committed meanwhile. None when there is no key
    /// set or `edit` changes nothing (it returns whether it changed anything).
    ///
    /// The next generation, not the same one: every node applies it (keeping the members it
    /// records up to date), and an etcd backup from before the edit is then older than what
    /// the nodes hold, so they write their set back. Under the same generation a restored
    /// backup undid a rename or a removal unseen, and the name it brought back held the
    /// promotion gate for good (scripts/chaos, seed 15).
    ///
    /// `leaving`: the name a removal or rename takes away. It departs even when the set does
    /// not list it (its members lost to another cluster's set written over it, no rotation
    /// since), as long as it has an acknowledgement record an etcd backup could bring back:
    /// seed 15 renamed such a name, the backup's record of it held the gate for good.
    pub(crate) async fn members_edit(
        &self,
        kind: Kind,
        leaving: Option<&str>,
        edit: impl FnOnce(&mut std::collections::BTreeMap<String, crate::core::keyset::Member>) -> bool,
    ) -> Result<Option<(Compare, TxnOp)>, ClusterError> {
        let key = self.keyset_key(kind);
        let stored = match self.stored(&key).await {
            Ok(s) => s,
            Err(ClusterError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut set = open(&self.seal, &key, &stored.value)?;
        let Some(lineage) = set.history.lineage.as_mut() else {
            return Ok(None);
        };
        let mut next = lineage.next();
        let edited = edit(&mut next.members);
        // Each leaving node's last word, by its own clock: what a restored backup's record of
        // it can at most say (`Lineage::heard_since_departure`).
        let mut last_heard = std::collections::BTreeMap::new();
        let mut gone = next.leaving(&lineage.members, leaving);
        for name in &gone {
            if let Some(clock) = self.last_heard(kind, name).await? {
                last_heard.insert(name.clone(), clock);
            }
        }
        // An unlisted name with no record: nothing a backup brings back holds the gate.
        gone.retain(|n| lineage.members.contains_key(n) || last_heard.contains_key(n));
        if !edited && gone.is_empty() {
            return Ok(None);
        }
        next.note_departures(&gone, chrono::Utc::now(), &last_heard);
        *lineage = next;
        let value = self.seal_set(&key, &set)?;
        Ok(Some((
            Compare::mod_revision(key.clone(), CompareOp::Equal, stored.revision),
            TxnOp::put(key, value, None),
        )))
    }

    /// The clock of `node`'s acknowledgement record, if one is there and believed.
    async fn last_heard(
        &self,
        kind: Kind,
        node: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ClusterError> {
        let key = format!("{}{node}", self.acks_prefix(kind));
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("read {key}"), client.get(key.clone(), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| match self.believed_ack(&key, kv.value()) {
                Some(Ok((ack, _))) => ack.clock,
                _ => None,
            }))
    }

    /// A record kept in the clear as this node writes it under the etcd `key`: its JSON, with
    /// the MAC of those bytes and the key when a seal key is configured (`"mac"`).
    fn signed<T: serde::Serialize>(&self, key: &str, record: &T) -> Vec<u8> {
        self.signed_for(key, record, None)
    }

    /// [`Cluster::signed`], bound to the key set it acknowledges (`set`: [`ack_binding`]).
    fn signed_for<T: serde::Serialize>(&self, key: &str, record: &T, set: Option<&str>) -> Vec<u8> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        let mac = self.seal.tag(key.as_bytes(), &body);
        let ids: Vec<String> = self.seal.ids().iter().map(|i| i.to_string()).collect();
        let set_mac = set.and_then(|b| {
            self.seal
                .tag(key.as_bytes(), &bound_body(&body, b, Some(&ids)))
        });
        let seal_ids = set_mac.as_ref().map(|_| ids);
        let set = set.filter(|_| set_mac.is_some()).map(str::to_string);
        serde_json::to_vec(&Signed {
            record,
            mac,
            set,
            set_mac,
            seal_ids,
        })
        .unwrap_or(body)
    }

    /// An acknowledgement read from under `key` when it verifies, with the set its `set_mac`
    /// binds it to (None: a record without one, or without a seal key); Err(()) when a `set`
    /// is there and its MAC does not verify (forged).
    #[allow(clippy::type_complexity)]
    fn believed_ack(&self, key: &str, value: &[u8]) -> Option<Result<(Ack, Option<Bound>), ()>> {
        let ack = self.believed::<Ack>(key, value)?;
        let Ok(read) = serde_json::from_slice::<Signed<Ack>>(value) else {
            return Some(Err(()));
        };
        let Some(set) = read.set else {
            return Some(Ok((ack, None)));
        };
        let body = serde_json::to_vec(&read.record).unwrap_or_default();
        let bound = self.seal.sealed()
            && self.seal.verify(
                key.as_bytes(),
                &bound_body(&body, &set, read.seal_ids.as_deref()),
                read.set_mac.as_deref(),
            );
        let seal_ids = read.seal_ids.unwrap_or_default();
        Some(if bound {
            Ok((ack, Some(Bound { set, seal_ids })))
        } else {
            Err(())
        })
    }

    /// A renamed node's acknowledgement as written under its new etcd key `to`: `value` (the
    /// record read from under `from` as `raw`, renamed). Without a seal key, as it is; with
    /// one, its MAC made again for `to` when the record verified under `from`, else without a
    /// MAC (it counts as absent there as it did here: a rename launders no forged record).
    pub(super) fn moved_ack(
        &self,
        from: &str,
        raw: &[u8],
        to: &str,
        mut value: serde_json::Value,
    ) -> Vec<u8> {
        if !self.seal.sealed() {
            return serde_json::to_vec(&value).unwrap_or_default();
        }
        if let Some(o) = value.as_object_mut() {
            o.remove("mac");
        }
        match (
            self.believed_ack(from, raw),
            serde_json::from_value::<Ack>(value.clone()),
        ) {
            (Some(Ok((_, bound))), Ok(ack)) => {
                self.signed_for(to, &ack, bound.as_ref().map(|b| b.set.as_str()))
            }
            _ => serde_json::to_vec(&value).unwrap_or_default(),
        }
    }

    /// A record read from under the etcd `key`, when it parses and its MAC verifies (see
    /// [`Sealing::verify`]); None otherwise, which callers count as no record.
    fn believed<T>(&self, key: &str, value: &[u8]) -> Option<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let read: Signed<T> = serde_json::from_slice(value).ok()?;
        let body = serde_json::to_vec(&read.record).ok()?;
        self.seal
            .verify(key.as_bytes(), &body, read.mac.as_deref())
            .then_some(read.record)
    }

    /// One rotation of the cluster's key set: promotes key 0 only when every member has
    /// acknowledged a set holding it (the promotion gate), and commits with a transaction on
    /// the set's revision (and, for a leader, on its claim: [`Rotation::fence`]). When another
    /// writer commits first, it re-reads and rotates on top of that, so concurrent requests
    /// each rotate once, in order, and none is lost. See [`Rotation`] for what it refuses.
    pub async fn rotate(&mut self, kind: Kind, r: &Rotation<'_>) -> Result<Rotated, ClusterError> {
        let key = self.keyset_key(kind);
        let leader_key = self.leader_key(kind);
        let mut evidence: Option<ClockEvidence> = None;
        for _ in 0..MAX_ATTEMPTS {
            let (set, revision) = self.fetch(kind).await?;
            // A set written into another etcd (a restored copy), or this node bound to
            // another: rotating it would stamp it as written here, and the node's own lineage
            // would then take it as the cluster moved on purpose.
            if let Some(why) = crate::core::keyset::bound_elsewhere(
                r.held.and_then(|h| h.lineage.as_ref()),
                set.history.lineage.as_ref(),
                &self.binding(),
            ) {
                return Err(ClusterError::Refused {
                    key,
                    revision,
                    reason: format!("not rotating it: {why}"),
                });
            }
            if let Some(local) = r.held {
                let s = crate::core::keyset::succession(local, &set);
                if !s.acceptable() {
                    return Err(ClusterError::Refused {
                        key,
                        revision,
                        reason: format!("not rotating it: {s}"),
                    });
                }
            }
            // Due by the set just read, not by a view that may be stale (a paused leader).
            if let Some(schedule) = r.schedule {
                match schedule.next_rotation(set.history.schedule_basis(), r.now) {
                    Some(due) if due <= r.now.wall => {}
                    due => return Err(ClusterError::NotDue { due }),
                }
            }
            if let Some(expected) = r.params.expected_primary {
                let fps = set.fingerprints();
                crate::core::credentials::still_primary(expected, &fps).map_err(|reason| {
                    ClusterError::Refused {
                        key: key.clone(),
                        revision,
                        reason,
                    }
                })?;
            }
            let staged = match set.keys.get(&0) {
                Some(k) => k.fingerprint(),
                None => unreachable!("a validated key set has key 0"),
            };
            // Two daemons under one name: the gate cannot tell whose disk its
            // acknowledgement speaks for, so nothing is promoted or purged.
            let names = names::contended(self, kind).await?;
            if !names.is_empty() {
                return Err(ClusterError::DuplicateHeld { key, names });
            }
            let records = self.ack_records(kind).await?;
            // The nodes whose acknowledgement this leader authenticated join the members the
            // next set lists; a member is never dropped here.
            let joined: Vec<(String, bool)> = records
                .iter()
                .filter_map(|(n, r)| match r {
                    AckRecord::Believed(ack, _) => Some((n.clone(), ack.revision > 0)),
                    _ => None,
                })
                .collect();
            let acks = self.gate_counted(records, set.history.lineage.as_ref());
            let behind = waiting_on(&acks, staged, r.now.wall, r.member_timeout);
            if !behind.is_empty() {
                return Err(ClusterError::GateWaiting {
                    key,
                    refused: crate::core::skew::refusing(&acks, &behind),
                    nodes: behind,
                    staged,
                });
            }
            // Clocks judged on readings taken now, not on acknowledgements of any age: only a
            // member whose daemon is not connected is judged by its last acknowledgement.
            let me = r.fence.map(|(node, _)| node);
            // Once per rotation, not per attempt: a retry after contention is milliseconds
            // later.
            let evidence_now = match evidence.take() {
                Some(e) => e,
                None => self.probe_clocks(kind, me, r.probe_wait).await?,
            };
            let evidence: &ClockEvidence = evidence.insert(evidence_now);
            let absent = absent(&acks, evidence, me, r.now.wall, r.member_timeout);
            let stale = skewed(
                &absent,
                revision,
                set.history.last_rotation,
                r.now.wall,
                r.skew_tolerance,
            );
            let prior = self.skew_hold(kind).await?;
            let evidence = &ClockEvidence {
                absent: absent.iter().map(|a| a.node.clone()).collect(),
                ..evidence.clone()
            };
            let judged = judge_skew(
                evidence,
                &stale,
                prior.as_ref(),
                r.skew_tolerance,
                r.params.retention,
                r.now.wall,
                true,
            );
            let new_key = crate::core::key::Key::generate()
                .map_err(|e| ClusterError::Random(e.to_string()))?;
            // A key stays until its window closes by the fastest clock that may have issued
            // (or the slowest that may validate) tokens with it: the retention plus the skew.
            let held_params = crate::repository::RotateParams {
                retention: judged
                    .extra()
                    .map_or(r.params.retention, |x| r.params.retention.saturating_add(x)),
                ..*r.params
            };
            let params = if r.params.force_purge {
                r.params
            } else {
                &held_params
            };
            // Each member's Keystone made tokens with the previous primary until it applied
            // the set that demoted it, which an absent member (a daemon stopped, renamed or
            // cut off while its Keystone serves) does seconds after the commit.
            let set = moved_off(set, &acks, staged, r.now.wall);
            let (mut next, decision) = set
                .rotate(new_key, params, r.now)
                .map_err(|e| ClusterError::Random(e.to_string()))?;
            if let Some(l) = next.history.lineage.as_mut() {
                for (node, heard) in &joined {
                    // Counted only when heard since it departed, if it did: back for good.
                    l.departed.remove(node);
                    let member = l.members.entry(node.clone()).or_default();
                    // A placeholder of `init --members` (revision 0) is no word from the node.
                    if *heard {
                        member.expected = false;
                    }
                }
            }
            let next = self.stamped(&next);
            // Bounded while held: past the bound (or what the rotation would keep unheld, if
            // more), the set does not grow.
            let held = judged.extra().is_some() && !r.params.force_purge;
            let unheld = match held {
                true => decision_keys(&set, r.params, r.now),
                false => 0,
            };
            let bound = key_bound(r.params.max_active_keys).max(unheld);
            if held && next.keys.len() > bound && next.keys.len() > set.keys.len() {
                let held = match (&judged.hold, judged.unanswered.is_empty()) {
                    (Some(h), _) => h.describe(r.params.retention),
                    (None, false) => {
                        format!("no clock reading from {}", judged.unanswered.join(", "))
                    }
                    (None, true) => describe_skew(&judged.skewed),
                };
                return Err(ClusterError::SkewBound {
                    key,
                    keys: set.keys.len(),
                    held,
                    hold: Box::new(judged.hold),
                    skewed: judged.skewed,
                });
            }
            let value = self.seal_set(&key, &next)?;
            let mut compare = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )];
            // Leadership alone is no mutual exclusion: the commit also proves this node still
            // holds the leader key under its own live lease.
            if let Some((node, lease)) = r.fence {
                compare.push(Compare::value(leader_key.clone(), CompareOp::Equal, node));
                compare.push(Compare::lease(leader_key.clone(), CompareOp::Equal, lease));
            }
            let hold_key = self.hold_key(kind);
            let hold_op = match &judged.hold {
                Some(h) => TxnOp::put(hold_key, serde_json::to_vec(h).unwrap_or_default(), None),
                None => TxnOp::delete(hold_key, None),
            };
            let txn = Txn::new()
                .when(compare)
                .and_then([TxnOp::put(key.clone(), value, None), hold_op])
                .or_else([TxnOp::get(leader_key.clone(), None)]);
            let mut client = self.client.clone();
            let sent = chrono::Utc::now();
            let resp = self
                .bounded(&format!("rotate {key}"), client.txn(txn))
                .await?;
            if resp.succeeded() {
                return Ok(Rotated {
                    revision: resp.header().map(|h| h.revision()).unwrap_or(0),
                    decision,
                    skewed: judged.skewed,
                    unanswered: judged.unanswered,
                    hold: judged.hold,
                    others: acks
                        .iter()
                        .filter(|a| Some(a.node.as_str()) != me)
                        .map(|a| a.node.clone())
                        .collect(),
                    set: next,
                    sent,
                });
            }
            if let Some((node, lease)) = r.fence {
                let holds = resp.op_responses().into_iter().any(|op| match op {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.value() == node.as_bytes() && kv.lease() == lease),
                    _ => false,
                });
                if !holds {
                    return Err(ClusterError::NotLeader { key: leader_key });
                }
            }
        }
        Err(ClusterError::Contention {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Records the leader's hold on purges (None: removes it), outside a rotation: what the
    /// leader's watch of the clocks between rotations found.
    pub async fn record_hold(
        &mut self,
        kind: Kind,
        hold: Option<&SkewHold>,
    ) -> Result<(), ClusterError> {
        let key = self.hold_key(kind);
        let mut client = self.client.clone();
        match hold {
            Some(h) => {
                let value = serde_json::to_vec(h).unwrap_or_default();
                self.bounded(
                    &format!("write {key}"),
                    client.put(key.clone(), value, None),
                )
                .await?;
            }
            None => {
                self.bounded(&format!("delete {key}"), client.delete(key.clone(), None))
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes `node` from a repository's members (`fernetd cluster remove-node`): the
    /// promotion gate stops waiting for it. One transaction drops it from the members the key
    /// set lists (on the set's revision: a rotation committed meanwhile is read again) and
    /// deletes its acknowledgement. Returns its last acknowledgement (one holding nothing when
    /// only the set listed it: its record was deleted in etcd), or None for no member.
    pub async fn remove_member(
        &mut self,
        kind: Kind,
        node: &str,
    ) -> Result<Option<Ack>, ClusterError> {
        let key = format!("{}{node}", self.acks_prefix(kind));
        for _ in 0..MAX_ATTEMPTS {
            let mut listed = false;
            let edit = self
                .members_edit(kind, Some(node), |m| {
                    listed = m.remove(node).is_some();
                    listed
                })
                .await?;
            // A listed member whose record is gone is a member all the same.
            let (when, mut ops) = match edit {
                Some((compare, put)) => (vec![compare], vec![put]),
                None => (Vec::new(), Vec::new()),
            };
            ops.push(TxnOp::delete(
                key.clone(),
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            ));
            let mut client = self.client.clone();
            let resp = self
                .bounded(
                    &format!("delete {key}"),
                    client.txn(Txn::new().when(when).and_then(ops)),
                )
                .await?;
            if !resp.succeeded() {
                continue;
            }
            let prev = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Delete(d) => {
                    d.prev_kvs().first().map(|kv| kv.value().to_vec())
                }
                _ => None,
            });
            let last = prev.map(|v| {
                serde_json::from_slice::<Ack>(&v)
                    .unwrap_or_else(|_| Ack::holding_nothing(node, None))
            });
            return Ok(last.or_else(|| listed.then(|| Ack::holding_nothing(node, None))));
        }
        Err(ClusterError::Contention {
            key: self.keyset_key(kind),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Makes `nodes` members before they first acknowledge (`cluster init --members`): listed
    /// in the key set, and a record that holds no key, so that no promotion happens until each
    /// of them has applied the set, however the daemons' starts are spread. A node that
    /// already acknowledged keeps its record. Returns the nodes added.
    pub async fn expect_members(
        &mut self,
        kind: Kind,
        nodes: &[String],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, ClusterError> {
        let mut listed = false;
        for _ in 0..MAX_ATTEMPTS {
            let edit = self
                .members_edit(kind, None, |m| {
                    let before = m.len();
                    for node in nodes {
                        m.entry(node.clone())
                            .or_insert(crate::core::keyset::Member { expected: true });
                    }
                    m.len() != before
                })
                .await?;
            let Some((compare, put)) = edit else {
                listed = true;
                break;
            };
            let mut client = self.client.clone();
            let resp = self
                .bounded(
                    &format!("write {}", self.keyset_key(kind)),
                    client.txn(Txn::new().when([compare]).and_then([put])),
                )
                .await?;
            if resp.succeeded() {
                listed = true;
                break;
            }
        }
        if !listed {
            return Err(ClusterError::Contention {
                key: self.keyset_key(kind),
                attempts: MAX_ATTEMPTS,
            });
        }
        let mut added = Vec::new();
        for node in nodes {
            let key = format!("{}{node}", self.acks_prefix(kind));
            // member_timeout counts from here.
            let ack = Ack::holding_nothing(node, Some(now));
            let value = self.signed(&key, &ack);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            let mut client = self.client.clone();
            let resp = self
                .bounded(&format!("write {key}"), client.txn(txn))
                .await?;
            if resp.succeeded() {
                added.push(node.clone());
            }
        }
        Ok(added)
    }

    /// A lease that keeps this node's acknowledgements and leadership alive.
    pub async fn grant_lease(&mut self, ttl: Duration) -> Result<Lease, ClusterError> {
        let mut client = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        let grant = self
            .bounded("grant lease", client.lease_grant(secs, None))
            .await?;
        let id = grant.id();
        let (keeper, stream) = self
            .bounded("keep lease alive", client.lease_keep_alive(id))
            .await?;
        Ok(Lease {
            id,
            keeper,
            stream,
            timeout: self.timeout.min(ttl),
        })
    }

    /// Records that this node applied the key set at `ack.revision`. The record has no lease:
    /// it is the node's membership, and it outlives the node's session (a node etcd cannot
    /// hear from may still be serving tokens).
    pub async fn acknowledge(&mut self, kind: Kind, ack: &Ack) -> Result<(), ClusterError> {
        self.acknowledge_set(kind, ack, None).await
    }

    /// [`Cluster::acknowledge`], bound (with a seal key) to the lineage and generation of the
    /// set acknowledged: the gate counts a bound acknowledgement only for that very set, so an
    /// old one written back does not acknowledge a later set that holds the same staged key.
    pub async fn acknowledge_set(
        &mut self,
        kind: Kind,
        ack: &Ack,
        set: Option<&crate::core::keyset::Lineage>,
    ) -> Result<(), ClusterError> {
        let key = format!("{}{}", self.acks_prefix(kind), ack.node);
        let set = set.map(ack_binding);
        let value = self.signed_for(&key, ack, set.as_deref());
        let mut client = self.client.clone();
        self.bounded(
            &format!("write {key}"),
            client.put(key.clone(), value, None),
        )
        .await?;
        Ok(())
    }

    /// Claims leadership of a repository's rotations for `node` under `lease` when nobody
    /// holds it; returns whether `node` leads. The claim vanishes with the lease.
    pub async fn campaign(
        &mut self,
        kind: Kind,
        node: &str,
        lease: i64,
    ) -> Result<bool, ClusterError> {
        let key = self.leader_key(kind);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                node,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("campaign {key}"), client.txn(txn))
            .await?;
        if resp.succeeded() {
            return Ok(true);
        }
        Ok(resp.op_responses().into_iter().any(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == node.as_bytes() && kv.lease() == lease),
            _ => false,
        }))
    }

    /// Who leads a repository's rotations, if anyone.
    pub async fn leader(&mut self, kind: Kind) -> Result<Option<String>, ClusterError> {
        let key = self.leader_key(kind);
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("read {key}"), client.get(key, None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Watches a repository's key set and leader key from `from_revision` on. Not the
    /// acknowledgements: every node writes one per key set, and waking every node for each of
    /// them would cost O(nodes²) requests per rotation (the leader re-reads them on a timer
    /// while the gate holds).
    pub async fn watch(&mut self, kind: Kind, from_revision: i64) -> Result<Watch, ClusterError> {
        // "keyset" and "leader" sort next to each other: one range covers both.
        let start = self.keyset_key(kind);
        let end = format!("{}\0", self.leader_key(kind));
        let mut client = self.client.clone();
        let stream = self
            .bounded(
                &format!("watch {start}"),
                client.watch(
                    start.clone(),
                    Some(
                        WatchOptions::new()
                            .with_range(end)
                            .with_start_revision(from_revision),
                    ),
                ),
            )
            .await?;
        Ok(Watch {
            stream,
            keyset_key: start,
            leader_key: self.leader_key(kind),
            probe_key: self.probe_key(kind),
            seal: self.seal.clone(),
        })
    }

    /// Watches the members' acknowledgements from now on ([`AckWatch`]).
    pub async fn watch_acks(&mut self, kind: Kind) -> Result<AckWatch, ClusterError> {
        let prefix = self.acks_prefix(kind);
        let mut client = self.client.clone();
        let stream = self
            .bounded(
                &format!("watch {prefix}"),
                client.watch(prefix.clone(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
        Ok(AckWatch { stream, prefix })
    }

    /// The repository's key set and its revision, opened and validated.
    pub async fn fetch(&mut self, kind: Kind) -> Result<(KeySet, i64), ClusterError> {
        self.snapshot(kind)
            .await
            .map(|(set, revision, _)| (set, revision))
    }

    /// Like [`Cluster::fetch`], with the store's revision at the time of the read as well: a
    /// watch from the one after it sees every later change and nothing older.
    pub async fn snapshot(&mut self, kind: Kind) -> Result<(KeySet, i64, i64), ClusterError> {
        let key = self.keyset_key(kind);
        let stored = self.stored(&key).await?;
        let set = open(&self.seal, &key, &stored.value)?;
        Ok((
            set,
            stored.revision,
            stored.store_revision.max(stored.revision),
        ))
    }

    /// The value stored under a key set's etcd `key`, as it is (sealed or not).
    async fn stored(&self, key: &str) -> Result<Stored, ClusterError> {
        let mut client = self.client.clone();
        let resp = self
            .bounded(&format!("read {key}"), client.get(key, None))
            .await?;
        let kv = resp.kvs().first().ok_or_else(|| ClusterError::Missing {
            key: key.to_string(),
        })?;
        Ok(Stored {
            value: zeroize::Zeroizing::new(kv.value().to_vec()),
            revision: kv.mod_revision(),
            store_revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        })
    }
}

/// A record kept in the clear (an acknowledgement, a clock answer) with its MAC: the record's
/// own fields, then `"mac"` when a seal key is configured. A daemon that predates MACs reads
/// the record and ignores the field.
#[derive(serde::Serialize, serde::Deserialize)]
struct Signed<T> {
    #[serde(flatten)]
    record: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    /// An acknowledgement's key set (`CLUSTER/GENERATION` of its lineage), bound by `set_mac`
    /// (over the etcd key, the record and this): an old record written back cannot pass for
    /// an acknowledgement of a later set holding the same staged key. A separate MAC, so a
    /// daemon that predates it still verifies `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set_mac: Option<String>,
    /// The seal keys the acknowledging daemon holds (their ids), bound by `set_mac` too:
    /// `cluster seal` re-seals with a key only once every member says it holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seal_ids: Option<Vec<String>>,
}

/// What an acknowledgement's `set` names: the lineage and generation of the set acknowledged.
fn ack_binding(lineage: &crate::core::keyset::Lineage) -> String {
    format!("{}/{}", lineage.cluster, lineage.generation)
}

/// The bytes `set_mac` covers: the record, then the set it acknowledges, then the seal keys
/// held (none: as before they were listed).
fn bound_body(body: &[u8], set: &str, ids: Option<&[String]>) -> Vec<u8> {
    match ids {
        None => [body, b"\n", set.as_bytes()].concat(),
        Some(ids) => [body, b"\n", set.as_bytes(), b"\n", ids.join(",").as_bytes()].concat(),
    }
}

/// A key set's value as etcd holds it, its revision, and the store's at the time of the read.
struct Stored {
    /// Key material when the set is not sealed: zeroized.
    value: zeroize::Zeroizing<Vec<u8>>,
    revision: i64,
    store_revision: i64,
}

/// What [`Cluster::seal_in_place`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// The seal key the set was sealed with (None: in the clear).
    pub was: Option<SealKeyId>,
    /// The seal key it is sealed with now (this node's sealing key).
    pub with: Option<SealKeyId>,
    /// The revision written, or None when it was sealed with that key already.
    pub revision: Option<i64>,
}

/// What `status` says of the acknowledgements, from one read of them: each as the gate counts
/// it, the nodes whose record (or clock answer) does not verify, and the members the key set
/// lists with no record at all.
#[derive(Default)]
pub struct AcksJudged {
    pub acks: Vec<Ack>,
    pub unauthenticated: Vec<String>,
    pub missing: Vec<String>,
}

/// Acknowledgement records as the gate counts them: a believed one as it says, any other
/// (unauthenticated, unreadable, missing) as a member holding nothing, each logged.
fn judged(records: Vec<(String, AckRecord)>) -> Vec<Ack> {
    records
        .into_iter()
        .map(|(node, record)| counted(node, record))
        .collect()
}

/// Opens (when sealed) and validates the value stored under a key set's etcd `key`.
/// An acknowledgement record as the gate counts it: believed as it is, or (a MAC that does
/// not verify, logged naming the record; not an acknowledgement) as holding nothing.
fn counted(node: String, record: AckRecord) -> Ack {
    match record {
        AckRecord::Believed(ack, _) => ack,
        AckRecord::Unauthenticated(key) => {
            tracing::error!(
                "node {node}: acknowledgement not authenticated ({key}: its MAC does not \
                 verify with any seal key held: forged, copied from another node's record, \
                 or written by a fernetd without record MACs); counted as absent"
            );
            Ack::holding_nothing(&node, None)
        }
        AckRecord::Unreadable => Ack::holding_nothing(&node, None),
        AckRecord::Missing(key) => {
            tracing::error!(
                "node {node}: its acknowledgement record is missing from etcd ({key}), but the \
                 key set lists it as a member (a record deleted in etcd ends no membership: \
                 `fernetd cluster remove-node {node}` does); counted as absent: the gate holds \
                 for it"
            );
            Ack::holding_nothing(&node, None)
        }
    }
}

/// How [`Cluster::unauthenticated`] names a node whose clock answer did not verify (its
/// acknowledgement's entry is the bare node name).
pub const CLOCK_ANSWER: &str = " (clock answer)";

/// What an acknowledgement's `set_mac` binds it to: the set acknowledged
/// (`CLUSTER/GENERATION`) and the ids of the seal keys its daemon holds.
struct Bound {
    set: String,
    seal_ids: Vec<String>,
}

impl Bound {
    /// The lineage and generation the record is bound to (the inverse of [`ack_binding`]).
    fn lineage(&self) -> Option<(&str, u64)> {
        let (cluster, generation) = self.set.rsplit_once('/')?;
        Some((cluster, generation.parse().ok()?))
    }
}

/// One acknowledgement record as [`Cluster::ack_records`] judged it.
enum AckRecord {
    /// With the key set its MAC binds it to, when it names one.
    Believed(Ack, Option<Bound>),
    /// An acknowledgement whose MAC does not verify (its etcd key).
    Unauthenticated(String),
    Unreadable,
    /// A member the key set lists with no record at all (its etcd key).
    Missing(String),
}

fn open(seal: &Sealing, key: &str, value: &[u8]) -> Result<KeySet, ClusterError> {
    open_which(seal, key, value).map(|(set, _)| set)
}

/// Like [`open`], with the id of the seal key that opened it (None: in the clear).
fn open_which(
    seal: &Sealing,
    key: &str,
    value: &[u8],
) -> Result<(KeySet, Option<SealKeyId>), ClusterError> {
    let (plain, by) =
        seal.open_which(value, key.as_bytes())
            .map_err(|source| ClusterError::Seal {
                key: key.to_string(),
                source,
            })?;
    KeySet::decode(&plain)
        .map(|set| (set, by))
        .map_err(|source| ClusterError::KeySet {
            key: key.to_string(),
            source,
        })
}

/// A granted lease and its keep-alive stream.
pub struct Lease {
    pub id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    timeout: Duration,
}

impl Lease {
    /// One keep-alive round trip; an error means the lease is (or may be) gone: whoever holds
    /// leadership under it must step down at once.
    pub async fn refresh(&mut self) -> Result<(), ClusterError> {
        let lost = |reason: String| ClusterError::Request {
            what: format!("keep lease {:x} alive", self.id),
            reason,
        };
        let round = async {
            self.keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match self.stream.message().await {
                Ok(Some(r)) if r.ttl() > 0 => Ok(()),
                Ok(Some(_)) => Err("expired".to_string()),
                Ok(None) => Err("stream closed".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(self.timeout, round).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(e)),
            Err(_) => Err(lost("no answer".into())),
        }
    }
}

/// A change to a repository's key set or leadership, as fernetd's own event.
#[derive(Debug)]
pub enum Change {
    /// A key set was committed at `revision` (opened and validated).
    /// (Boxed: a key set with its lineage is far larger than the other variants.)
    KeySet { set: Box<KeySet>, revision: i64 },
    /// The leadership was claimed by `node` under `lease`.
    Leader { node: String, lease: i64 },
    /// Nobody leads any more (the leader's lease ended, or the key was deleted).
    NoLeader,
    /// The leader asks every connected node for a clock reading ([`Cluster::answer`]).
    Probe { probe: u64 },
    /// A node name's live record or a duplicate's (see [`names`]): `suffix` is the key after
    /// the repository's prefix (`keyset-name/...`).
    Name {
        suffix: String,
        value: Vec<u8>,
        put: bool,
    },
}

/// The stream of a repository's changes.
pub struct Watch {
    stream: WatchStream,
    keyset_key: String,
    leader_key: String,
    probe_key: String,
    seal: Sealing,
}

/// A watch on the members' acknowledgements: a leader held at the promotion gate waits on it
/// instead of asking the gate again and again.
pub struct AckWatch {
    stream: WatchStream,
    prefix: String,
}

impl AckWatch {
    /// Waits until an acknowledgement is written or removed. An error means the watch is gone:
    /// ask the gate again, and watch anew.
    pub async fn changed(&mut self) -> Result<(), ClusterError> {
        loop {
            let reason = match self.stream.message().await {
                Ok(Some(r)) if r.canceled() => r.cancel_reason().to_string(),
                // The watch's creation carries no event.
                Ok(Some(r)) if r.events().is_empty() => continue,
                Ok(Some(_)) => return Ok(()),
                Ok(None) => "stream ended".into(),
                Err(e) => e.to_string(),
            };
            return Err(ClusterError::Request {
                what: format!("watch {}", self.prefix),
                reason,
            });
        }
    }
}

impl Watch {
    /// Waits for the next changes, in commit order. A key set carried by an event is opened
    /// here, so a node applies what the watch brought without reading it again. An error
    /// (stream ended, compacted, cancelled, key set deleted or unreadable) means the caller
    /// must re-read and watch again.
    pub async fn changes(&mut self) -> Result<Vec<Change>, ClusterError> {
        let what = || format!("watch {}", self.keyset_key);
        let resp = match self.stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ClusterError::Request {
                    what: what(),
                    reason: "stream ended".into(),
                })
            }
            Err(e) => {
                return Err(ClusterError::Request {
                    what: what(),
                    reason: e.to_string(),
                })
            }
        };
        if resp.canceled() {
            return Err(ClusterError::Request {
                what: what(),
                reason: format!(
                    "cancelled (compacted at revision {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                ),
            });
        }
        let mut out = Vec::new();
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let put = event.event_type() == etcd_client::EventType::Put;
            if kv.key() == self.keyset_key.as_bytes() {
                if !put {
                    return Err(ClusterError::Missing {
                        key: self.keyset_key.clone(),
                    });
                }
                out.push(Change::KeySet {
                    set: Box::new(open(&self.seal, &self.keyset_key, kv.value())?),
                    revision: kv.mod_revision(),
                });
            } else if kv.key() == self.probe_key.as_bytes() {
                #[derive(serde::Deserialize)]
                struct Probe {
                    probe: u64,
                }
                if let Ok(p) = serde_json::from_slice::<Probe>(kv.value()) {
                    if put {
                        out.push(Change::Probe { probe: p.probe });
                    }
                }
            } else if let Some(rest) = kv
                .key()
                .strip_prefix(self.keyset_key.as_bytes())
                .and_then(|r| r.strip_prefix(b"-name/"))
            {
                out.push(Change::Name {
                    suffix: format!("keyset-name/{}", String::from_utf8_lossy(rest)),
                    value: kv.value().to_vec(),
                    put,
                });
            } else if kv.key() == self.leader_key.as_bytes() {
                out.push(if put {
                    Change::Leader {
                        node: String::from_utf8_lossy(kv.value()).into_owned(),
                        lease: kv.lease(),
                    }
                } else {
                    Change::NoLeader
                });
            }
        }
        Ok(out)
    }
}

/// The password from `password_file` (one line; a trailing newline is not part of it).
fn read_password(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let pw = zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string());
    if pw.is_empty() {
        return Err(format!("{}: empty password file", path.display()));
    }
    Ok(pw)
}

/// Whether `cluster init --force` may continue the lineage `replaced` (the set in etcd): the
/// keys imported carry no lineage (a repository outside the cluster) or that cluster's, no
/// more than [`GENERATION_STEP`](crate::core::keyset::GENERATION_STEP) behind it, and it
/// has a next generation. Otherwise the import starts a new lineage.
fn continues(
    replaced: &crate::core::keyset::Lineage,
    imported: Option<&crate::core::keyset::Lineage>,
) -> bool {
    let step = crate::core::keyset::GENERATION_STEP;
    replaced.generation < u64::MAX - step
        && imported.is_none_or(|i| {
            i.cluster == replaced.cluster
                && replaced.generation <= i.generation.saturating_add(step)
        })
}

/// A client for one member, checked with a status request within the dial timeout; with the
/// etcd cluster id the status reported.
async fn connect_one(endpoint: &str, s: &ClusterSettings) -> Result<(Client, u64), String> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(s.dial_timeout)
        .with_timeout(s.request_timeout);
    if let (Some(user), Some(file)) = (&s.username, &s.password_file) {
        let pw = read_password(file)?;
        opts = opts.with_user(user.clone(), pw.as_str());
    }
    if let Some(ca) = &s.ca_file {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
            let key = zeroize::Zeroizing::new(read(key)?);
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, key.as_slice()));
        }
        opts = opts.with_tls(tls);
    }
    let attempt = async {
        let mut client = Client::connect([endpoint], Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        let id = status.header().map_or(0, |h| h.cluster_id());
        Ok::<_, String>((client, id))
    };
    match tokio::time::timeout(s.dial_timeout + Duration::from_millis(500), attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            crate::core::duration::format(s.dial_timeout)
        )),
    }
}

/// `set` with its previous primary's retention counted from when the members last stopped
/// issuing with it, as far as their acknowledgements show. A member acknowledges the current
/// staged key (`staged`) only after applying the set that made the current primary primary,
/// so until the acknowledgement's clock its Keystone may still have used the key before it;
/// that key's demotion was recorded at the commit, which a member not connected then
/// (stopped, renamed, partitioned: its Keystone serving) applies seconds later. Trusted: the
/// members' acknowledgement clocks, each moved back to `now` at most (a clock ahead, or a
/// forged record, keeps a key at most one retention from now, never past it); a clock behind
/// is the skew check's (`skewed`). Kept in the published history, so later rotations, whose
/// acknowledgements speak of newer keys, still count from it.
fn moved_off(
    mut set: KeySet,
    acks: &[Ack],
    staged: crate::core::key::Fingerprint,
    now: chrono::DateTime<chrono::Utc>,
) -> KeySet {
    let Some(primary) = set.primary() else {
        return set;
    };
    let Some(previous) = set
        .keys
        .keys()
        .copied()
        .filter(|&n| n > 0 && n < primary)
        .max()
    else {
        return set;
    };
    let Some(moved) = acks
        .iter()
        .filter(|a| a.staged == staged)
        .filter_map(|a| a.clock)
        .max()
        .map(|c| c.min(now))
    else {
        return set;
    };
    if let Some(k) = set.history.keys.get_mut(&previous) {
        if k.demoted.is_some_and(|d| d < moved) {
            k.demoted = Some(moved);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_clock_outside_what_its_acknowledgement_allows_is_named() {
        let t = |s: i64| {
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::seconds(s)
        };
        let ack = |node: &str, revision: i64, clock: Option<i64>| Ack {
            node: node.into(),
            revision,
            staged: crate::core::key::Fingerprint::NONE,
            clock: clock.map(t),
            refused: None,
        };
        let acks = [
            ack("fine", 7, Some(50)),
            ack("ahead", 3, Some(200)),
            ack("behind", 7, Some(10)),
            // An acknowledgement of an older set was written before this set's commit.
            ack("old", 6, Some(10)),
            ack("unknown", 7, None),
        ];
        let tol = Duration::from_secs(5);
        let found = skewed(&acks, 7, Some(t(40)), t(100), tol);
        assert_eq!(
            found,
            vec![
                ("ahead".to_string(), chrono::Duration::seconds(100)),
                ("behind".to_string(), chrono::Duration::seconds(-30)),
            ]
        );
        assert_eq!(
            describe_skew(&found),
            "node ahead (1m 40s ahead), node behind (30s behind)"
        );
        // Within the tolerance: nobody.
        assert!(skewed(&acks[..1], 7, Some(t(52)), t(48), tol).is_empty());
    }

    #[test]
    fn the_old_primary_is_kept_from_when_the_last_member_stopped_issuing_with_it() {
        let params = crate::core::rotation::RotateParams {
            max_active_keys: 32,
            retention: Duration::from_secs(60),
            force_purge: false,
            expected_primary: None,
        };
        let set = KeySet::fresh(&at(0).into()).unwrap();
        let key = crate::core::key::Key::generate().unwrap();
        let (set, _) = set.rotate(key, &params, &at(10).into()).unwrap();
        // Key 2 primary, key 1 demoted at the commit (10 s), key 0 staged.
        let staged = set.fingerprints()[&0];
        let ack = |clock: i64, staged| Ack {
            node: "b".into(),
            revision: 3,
            staged,
            clock: Some(at(clock)),
            refused: None,
        };
        let demoted = |s: &KeySet| s.history.keys[&1].demoted;
        // b applied the set (and stopped issuing with key 1) at 25 s: counted from there.
        let moved = moved_off(
            set.clone(),
            &[ack(12, staged), ack(25, staged)],
            staged,
            at(30),
        );
        assert_eq!(demoted(&moved), Some(at(25)));
        // A clock ahead (or a forged record) moves it to now at most.
        let moved = moved_off(set.clone(), &[ack(500, staged)], staged, at(30));
        assert_eq!(demoted(&moved), Some(at(30)));
        // Never earlier than the commit, and an acknowledgement of another set says nothing.
        let moved = moved_off(set.clone(), &[ack(5, staged)], staged, at(30));
        assert_eq!(demoted(&moved), Some(at(10)));
        let other = crate::core::key::Fingerprint::NONE;
        let moved = moved_off(set.clone(), &[ack(25, other)], staged, at(30));
        assert_eq!(demoted(&moved), Some(at(10)));
    }

    fn at(s: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    #[test]
    fn an_offset_is_measured_against_the_same_moment_with_the_round_trip_as_error_bar() {
        // The leader sent at 100, read the answer at 101; the node read 115.
        let o = Offset::measure("b", at(115), at(100), at(101));
        assert_eq!(o.low, chrono::Duration::seconds(14));
        assert_eq!(o.high, chrono::Duration::seconds(15));
        assert_eq!(o.estimate(), chrono::Duration::milliseconds(14_500));
        assert!(o.beyond(chrono::Duration::seconds(5)));
        // The round trip hides whether it is 14 or 15 s: not certainly beyond 14.5 s.
        assert!(!o.beyond(chrono::Duration::milliseconds(14_500)));
        assert_eq!(o.bound(), chrono::Duration::seconds(15));
        let behind = Offset::measure("c", at(60), at(100), at(100));
        assert!(behind.beyond(chrono::Duration::seconds(5)));
        assert_eq!(
            describe_skew(&[("c".into(), behind.estimate())]),
            "node c (40s behind)"
        );
        assert_eq!(describe_size(chrono::Duration::milliseconds(1_250)), "1.2s");
    }

    #[test]
    fn a_skew_holds_keys_for_its_size_until_its_window_closes_and_escalates_when_it_lasts() {
        let tol = Duration::from_secs(5);
        let ret = Duration::from_secs(60);
        let fresh = |secs: i64| ClockEvidence {
            fresh: vec![Offset::measure("b", at(100 + secs), at(100), at(100))],
            unanswered: vec![],
            absent: vec![],
        };
        // Within the margin: nothing held.
        let j = judge_skew(&fresh(4), &[], None, tol, ret, at(100), true);
        assert_eq!((j.skewed.len(), j.hold.clone(), j.extra()), (0, None, None));
        // 15 s ahead: keys stay 15 s longer, counted from this rotation.
        let j = judge_skew(&fresh(15), &[], None, tol, ret, at(100), true);
        let h = j.hold.clone().unwrap();
        assert_eq!(
            (h.node.as_str(), h.size_ms, h.ahead, h.rotations),
            ("b", 15_000, true, 1)
        );
        assert_eq!(j.extra(), Some(Duration::from_secs(15)));
        assert_eq!(h.until(ret), at(175));
        assert_eq!(
            h.describe(ret),
            "held for skew of node b (15s ahead) until 2026-01-01T00:02:55Z"
        );
        // Lasting: the largest size is kept, critical after SKEW_CRITICAL_ROTATIONS.
        let j2 = judge_skew(&fresh(10), &[], Some(&h), tol, ret, at(110), true);
        let h2 = j2.hold.clone().unwrap();
        assert_eq!(
            (h2.size_ms, h2.rotations, h2.last_seen),
            (15_000, 2, at(110))
        );
        let h3 = judge_skew(&fresh(40), &[], Some(&h2), tol, ret, at(120), true)
            .hold
            .unwrap();
        assert_eq!((h3.size_ms, h3.rotations), (40_000, 3));
        assert!(h3.lasting() && !h2.lasting());
        // Agreeing again (fresh readings): no skew, but the hold stands until its window closes.
        let j4 = judge_skew(&fresh(0), &[], Some(&h3), tol, ret, at(130), true);
        assert!(j4.skewed.is_empty());
        let h4 = j4.hold.clone().unwrap();
        // It may have been off until this reading: the window counts from it.
        assert_eq!((h4.rotations, h4.last_seen), (0, at(130)));
        assert_eq!(j4.extra(), Some(Duration::from_secs(40)));
        let h5 = judge_skew(&fresh(0), &[], Some(&h4), tol, ret, at(140), true)
            .hold
            .unwrap();
        assert_eq!(h5.last_seen, at(130));
        assert_eq!(
            judge_skew(&fresh(0), &[], Some(&h4), tol, ret, at(230), true).hold,
            None
        );
        assert!(agrees(&fresh(4), tol) && !agrees(&fresh(6), tol));
        assert!(!agrees(&ClockEvidence::default(), tol));
        // Seen off by the leader's watch between rotations: held, not counted as a rotation;
        // the window counts from the first reading that finds it agreeing again.
        let w = judge_skew(&fresh(15), &[], None, tol, ret, at(100), false)
            .hold
            .unwrap();
        assert_eq!((w.rotations, w.seen_off, w.size_ms), (0, true, 15_000));
        let w2 = judge_skew(&fresh(0), &[], Some(&w), tol, ret, at(103), false)
            .hold
            .unwrap();
        assert_eq!((w2.seen_off, w2.last_seen), (false, at(103)));
        // Two nodes each within the margin of the leader, 8 s apart: the tokens of the one
        // ahead are checked by the one behind; keys stay 8 s longer.
        let pair = ClockEvidence {
            fresh: vec![
                Offset::measure("b", at(104), at(100), at(100)),
                Offset::measure("c", at(96), at(100), at(100)),
            ],
            unanswered: vec![],
            absent: vec![],
        };
        let j = judge_skew(&pair, &[], None, tol, ret, at(100), true);
        assert!(j.skewed.is_empty());
        let h = j.hold.unwrap();
        assert_eq!((h.size_ms, h.node_ms), (8_000, 4_000));
        assert!(h
            .describe(ret)
            .contains("4s behind; 8s between the fastest and slowest clocks)"));
        // A connected node that did not answer: nothing purged.
        let silent = ClockEvidence {
            fresh: vec![],
            unanswered: vec!["c".into()],
            absent: vec![],
        };
        assert_eq!(
            judge_skew(&silent, &[], None, tol, ret, at(100), true).extra(),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn a_node_found_off_then_unread_keeps_the_hold_open_until_it_answers() {
        let tol = Duration::from_secs(5);
        let ret = Duration::from_secs(60);
        let reading = |node: &str, secs: i64, now: i64| {
            Offset::measure(node, at(now + secs), at(now), at(now))
        };
        let off = ClockEvidence {
            fresh: vec![reading("b", 8, 100), reading("c", 0, 100)],
            ..ClockEvidence::default()
        };
        let h = judge_skew(&off, &[], None, tol, ret, at(100), true)
            .hold
            .unwrap();
        assert_eq!((h.off.clone(), h.seen_off), (vec!["b".to_string()], true));
        // b's daemon stopped (its lease gone): c agrees, b is unread, not agreeing. The hold
        // stays open past its window, seen off now, and keys stay as long again as b is unread.
        let stopped = |now: i64| ClockEvidence {
            fresh: vec![reading("c", 0, now)],
            absent: vec!["b".into()],
            ..ClockEvidence::default()
        };
        let j = judge_skew(&stopped(120), &[], Some(&h), tol, ret, at(120), true);
        assert!(j.skewed.is_empty());
        let h2 = j.hold.clone().unwrap();
        assert_eq!(
            (h2.seen_off, h2.last_seen, h2.unread(), h2.unread_ms),
            (true, at(120), &["b".to_string()][..], 20_000)
        );
        assert_eq!(j.extra(), Some(Duration::from_secs(28)));
        assert!(h2
            .describe(ret)
            .starts_with("held for skew of node b (8s ahead; unread for 20s) until"));
        let h3 = judge_skew(&stopped(300), &[], Some(&h2), tol, ret, at(300), true)
            .hold
            .unwrap();
        assert_eq!((h3.unread_ms, h3.rotations), (200_000, 3));
        // Connected but not answering: the same.
        let mute = ClockEvidence {
            fresh: vec![reading("c", 0, 301)],
            unanswered: vec!["b".into()],
            ..ClockEvidence::default()
        };
        let h3 = judge_skew(&mute, &[], Some(&h3), tol, ret, at(301), false)
            .hold
            .unwrap();
        assert_eq!((h3.seen_off, h3.unread_ms), (true, 201_000));
        // b answers in agreement: the window counts from this reading, with the time unread.
        let back = ClockEvidence {
            fresh: vec![reading("b", 0, 310), reading("c", 0, 310)],
            ..ClockEvidence::default()
        };
        let h4 = judge_skew(&back, &[], Some(&h3), tol, ret, at(310), true)
            .hold
            .unwrap();
        assert_eq!(
            (h4.seen_off, h4.unread(), h4.unread_ms, h4.last_seen),
            (false, &[][..], 210_000, at(310))
        );
        assert_eq!(h4.until(ret), at(310 + 60 + 8 + 210));
        assert!(h4
            .describe(ret)
            .contains("(8s ahead; was unread for 3m 30s)"));
        // b answers still off: held for its skew and the time it went unread.
        let still = ClockEvidence {
            fresh: vec![reading("b", 8, 310), reading("c", 0, 310)],
            ..ClockEvidence::default()
        };
        let h5 = judge_skew(&still, &[], Some(&h3), tol, ret, at(310), true);
        assert_eq!(h5.extra(), Some(Duration::from_secs(8 + 210)));
        // A member removed (neither connected nor a member): nothing left to wait for.
        let h6 = judge_skew(&stopped(120), &[], Some(&h), tol, ret, at(120), true);
        let gone = ClockEvidence {
            fresh: vec![reading("c", 0, 120)],
            ..ClockEvidence::default()
        };
        let h7 = judge_skew(&gone, &[], Some(&h), tol, ret, at(120), true)
            .hold
            .unwrap();
        assert!(h6.hold.unwrap().seen_off && !h7.seen_off);
    }

    #[test]
    fn credentials_tolerate_the_default_margin_not_zero() {
        assert_eq!(
            skew_tolerance(Kind::Credentials, Duration::ZERO),
            crate::core::planner::DEFAULT_MARGIN
        );
        assert_eq!(skew_tolerance(Kind::Tokens, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            skew_tolerance(Kind::Tokens, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_key_bound_is_twice_max_active_keys_and_at_least_three_more() {
        assert_eq!(key_bound(3), 6);
        assert_eq!(key_bound(2), 5);
        assert_eq!(key_bound(10), 20);
    }
}
