//! A node name is held by one live daemon. `[cluster] node` defaults to the hostname, so VMs
//! cloned from one template share it; two daemons writing one membership record would let the
//! promotion gate count one node's acknowledgement for the other's disk.
//!
//! Three records per repository and name:
//! - `{prefix}/{kind}/keyset-name/NODE`, under the session's lease: the live holder's
//!   [`Identity`] (lease, boot id, host, pid, start time). It sorts inside the range every
//!   session watches, so the holder sees another daemon take it.
//! - `{prefix}/{kind}/keyset-name/NODE/dup/LEASE`, under a refused daemon's lease: the
//!   holder reports it (critical, naming it) for as long as that daemon keeps trying.
//! - `{prefix}/{kind}/names/NODE`, without a lease: the last holder's identity and a random
//!   claim token, which the holder also keeps in its repository (`.fernetd/node.json`). A
//!   daemon whose disk does not hold the token is not the last holder: it does not take the
//!   name, even once that holder stopped (a stopped node's Keystone still serves tokens).
//!
//! What is trusted: etcd's records, the local claim file, the boot id, the hostname and
//! whether a pid is alive on this host. See [`decide`] for what each decision rests on.

use super::{Cluster, ClusterError};
use crate::config::Kind;
use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// The local file holding the claim tokens this repository's daemon wrote.
pub const LOCAL_FILE: &str = "node.json";

/// Who runs a session: enough for an operator to find the other daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The session's etcd lease.
    pub lease: i64,
    /// The kernel's boot id (none where it cannot be read).
    #[serde(default)]
    pub boot: Option<String>,
    pub host: String,
    pub pid: u32,
    /// When this process started.
    pub started: DateTime<Utc>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let boot = self.boot.as_deref().unwrap_or("unknown");
        write!(
            f,
            "host {}, pid {}, boot id {}, started {}, lease {:x}",
            self.host,
            self.pid,
            boot,
            self.started
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.lease
        )
    }
}

impl Identity {
    /// The same process (a session of it that ended).
    fn same_process(&self, other: &Identity) -> bool {
        self.boot.is_some()
            && self.boot == other.boot
            && self.host == other.host
            && self.pid == other.pid
            && self.started == other.started
    }

    /// Whether `other` ran on this host during this boot (same kernel, same hostname).
    fn same_boot_and_host(&self, other: &Identity) -> bool {
        self.boot.is_some() && self.boot == other.boot && self.host == other.host
    }
}

/// The lasting record of a name: its last holder and the SHA-256 of the claim token on that
/// holder's disk. Only the digest is in etcd: a reader of etcd learns nothing a clone could
/// put on its disk to take the name (the token is 128 random bits: no guessing it back).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub holder: Identity,
    /// The token in the clear, as a fernetd before digests wrote it (read, never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
}

impl Record {
    fn new(holder: Identity, token: &str) -> Record {
        Record {
            holder,
            token: None,
            token_sha256: Some(digest(token)),
        }
    }
}

/// A claim token's SHA-256, in hex.
fn digest(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({})", self.holder)
    }
}

/// What this repository's daemon claimed: the name and the tokens it wrote (the last
/// [`KEPT_TOKENS`], under whatever name: a claim interrupted between the local write and
/// etcd's leaves either valid, and an etcd backup restored later names one of them).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    pub node: Option<String>,
    tokens: Vec<String>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Local({:?}, {} tokens)", self.node, self.tokens.len())
    }
}

impl Local {
    pub fn parse(bytes: &[u8]) -> Local {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn holds(&self, r: &Record) -> bool {
        self.token_of(r).is_some()
    }

    /// The token on this disk that `r` names.
    fn token_of(&self, r: &Record) -> Option<&String> {
        match (&r.token_sha256, &r.token) {
            (Some(d), _) => self.tokens.iter().find(|t| digest(t) == *d),
            (None, Some(clear)) => self.tokens.iter().find(|t| *t == clear),
            (None, None) => None,
        }
    }

    /// The claim token for a new session of `me`: the one its earlier session of this same
    /// process claimed the name with (etcd's record names it and this disk holds it), else a
    /// new one. A token per process, not per session: the disk keeps its last
    /// [`KEPT_TOKENS`], and a daemon whose sessions end often (etcd restarting, partitions)
    /// pushed out, within a minute, the one an etcd backup restored from before them names:
    /// it then refused itself as a duplicate for good (scripts/chaos, seed 15).
    pub fn session_token(&self, me: &Identity, seen: &Seen) -> Result<String, ClusterError> {
        match seen
            .record
            .as_ref()
            .filter(|r| r.holder.same_process(me))
            .and_then(|r| self.token_of(r))
        {
            Some(t) => Ok(t.clone()),
            None => new_token(),
        }
    }

    /// Before claiming `node` with `token`: both the old tokens and the new one are accepted,
    /// so a claim interrupted before etcd's commit is not lost, and after it the tokens this
    /// disk claimed names with before stay (the last [`KEPT_TOKENS`]), so an etcd restored
    /// from a backup taken since still names one this disk holds. Whatever name they were
    /// claimed under: a disk renamed away and back (`rename-node b2 b`, then `b b2`) kept
    /// only the tokens of its latest name, and a backup from before refused it as a
    /// duplicate under its own name. Only this disk's own claims: a clone that took the name
    /// claimed a token its original never held.
    pub fn claiming(&self, node: &str, token: &str) -> Local {
        let mut tokens = self.tokens.clone();
        tokens.retain(|t| t != token);
        tokens.push(token.to_string());
        let drop = tokens.len().saturating_sub(KEPT_TOKENS);
        tokens.drain(..drop);
        Local {
            node: Some(node.to_string()),
            tokens,
        }
    }

    /// After etcd committed a new token ([`rekey`]): that one alone, so that a copy of this
    /// disk taken before holds none of the name's tokens.
    pub fn claimed(node: &str, token: &str) -> Local {
        Local {
            node: Some(node.to_string()),
            tokens: vec![token.to_string()],
        }
    }
}

/// How many of its own past claim tokens a disk keeps: a daemon claims its name again at
/// every session start, and each claim is a new token.
pub const KEPT_TOKENS: usize = 16;

/// A fresh claim token.
pub fn new_token() -> Result<String, ClusterError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ClusterError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What etcd holds about a name.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The live holder and its key's revision (0: none).
    pub live: Option<Identity>,
    live_revision: i64,
    /// The lasting record and its key's revision (0: none).
    pub record: Option<Record>,
    record_revision: i64,
    /// Daemons refused under this name that keep trying.
    pub duplicates: Vec<Identity>,
}

/// Why a daemon does not take a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another live daemon holds it.
    Live { node: String, other: Identity },
    /// Nobody holds it now, and its last holder (not running) was another daemon: this
    /// repository does not hold that holder's claim (a clone of it taken before its last
    /// start, a node rebuilt).
    Stale { node: String, last: Identity },
    /// Nobody holds it and no claim for it is in etcd, but the sealed key set lists it as a
    /// member that has acknowledged, and this repository never held it: a clone or a rebuilt
    /// node taking the place of a stopped member whose claim record was deleted.
    Unclaimed { node: String },
}

/// What the sealed key set says of a name ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Not a member (or no key set yet).
    No,
    /// Declared by `cluster init --members`, not heard from yet.
    Expected,
    /// A member that has acknowledged a set.
    Member,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Live { node, other } => write!(
                f,
                "duplicate node name: '{node}' is held by another live daemon ({other}); this \
                 one takes no part in the cluster and waits: give one of them its own \
                 [cluster] node (docs/runbooks.md, cloning a node)"
            ),
            Refusal::Stale { node, last } => write!(
                f,
                "duplicate node name: '{node}' was last held by a daemon that is not running \
                 now ({last}), and this repository does not hold its claim; this one takes no \
                 part in the cluster and waits: if this is '{node}' rebuilt (a new or emptied \
                 repository), run `fernetd cluster remove-node {node}` first; if it is a clone, \
                 give it its own [cluster] node"
            ),
            Refusal::Unclaimed { node } => write!(
                f,
                "duplicate node name: '{node}' is a member of the cluster (its sealed key set \
                 lists it) but no claim for it is in etcd, and this repository never held it; \
                 this one takes no part in the cluster and waits: if this is '{node}' rebuilt, \
                 run `fernetd cluster remove-node {node}` first; if it is a clone, give it its \
                 own [cluster] node; if nobody removed '{node}', its claim record was deleted \
                 in etcd (treat the etcd credentials as leaked)"
            ),
        }
    }
}

/// What a daemon does with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Claim it (over the live record of this same daemon's earlier process or session).
    Take,
    /// Claim it as a new node: this repository held `old` last. `old`'s membership stays
    /// (the gate keeps waiting for it): a copy of `old`'s disk and `old` renamed look the
    /// same from here, and only the operator knows which (`cluster rename-node`).
    TakeNew(String),
    Refuse(Refusal),
}

/// Whether `me` may hold `node`, given what etcd says of it (`seen`) and of the name this
/// repository held last (`former`), and the claim tokens on this disk (`local`).
///
/// - A live holder is only replaced by this same daemon: the same process (a session that
///   ended), or a restart on this host and boot (same boot id and hostname, the old pid no
///   longer alive here) whose disk holds the name's token. A restart on another boot finds
///   the old lease gone after one TTL.
/// - A free name is taken when nobody held it, or when this disk holds its last holder's
///   token (this node restarted, rebooted or not).
/// - A clone holding the same token as a stopped original takes the name: identical disks
///   are one identity. The original, restarted, is then refused (its token is older), and
///   reported by the clone while it tries; the leader holds the promotion gate meanwhile
///   ([`contended`]).
/// - A repository that held another name takes a free name as a new node, and the other
///   name's membership stays: a rename is the operator's (`cluster rename-node`).
/// - A stopped holder's name is not taken by a repository without its claim, even an empty
///   one: a clone from a template with an empty repository under a stopped node's hostname
///   would otherwise acknowledge for that node while its Keystone serves the old keys.
pub fn decide(
    node: &str,
    me: &Identity,
    seen: &Seen,
    local: &Local,
    former: Option<(&str, &Seen)>,
    listed: Listed,
    alive: impl Fn(u32) -> bool,
) -> Decision {
    if let Some(other) = &seen.live {
        // No lasting record beside a live one: `remove-node` forgot it (then the set lists
        // no member of that name either; if it does, the record was deleted).
        let ours = match &seen.record {
            Some(r) => local.holds(r),
            None => !unclaimed_member(node, local, listed),
        };
        let restart = other.same_process(me)
            || (ours && me.same_boot_and_host(other) && other.pid != me.pid && !alive(other.pid));
        if other.lease != me.lease && !restart {
            return Decision::Refuse(Refusal::Live {
                node: node.to_string(),
                other: other.clone(),
            });
        }
        return Decision::Take;
    }
    if let Some(r) = &seen.record {
        if !local.holds(r) {
            return Decision::Refuse(Refusal::Stale {
                node: node.to_string(),
                last: r.holder.clone(),
            });
        }
        return Decision::Take;
    }
    // No claim in etcd for a member that has acknowledged: only its own repository may take
    // the name back (an etcd restored from before its claim); a repository that never held
    // it takes the place of a member whose claim record was deleted.
    if unclaimed_member(node, local, listed) {
        return Decision::Refuse(Refusal::Unclaimed {
            node: node.to_string(),
        });
    }
    // A name nobody held, by a repository that held another: a new node. Never a move of
    // the other name's membership: a clone started under a new name while the original is
    // stopped (its Keystone serving) would take the original out of the gate.
    if let Some((old, _)) = former.filter(|(old, _)| *old != node) {
        return Decision::TakeNew(old.to_string());
    }
    Decision::Take
}

/// A member that has acknowledged, with no claim for it in etcd, asked for by a repository
/// that never held its name.
fn unclaimed_member(node: &str, local: &Local, listed: Listed) -> bool {
    listed == Listed::Member && local.node.as_deref() != Some(node)
}

/// What the sealed key set `set` says of `node`.
pub fn listed(set: &crate::core::keyset::KeySet, node: &str) -> Listed {
    match set
        .history
        .lineage
        .as_ref()
        .and_then(|l| l.members.get(node))
    {
        Some(m) if m.expected => Listed::Expected,
        Some(_) => Listed::Member,
        None => Listed::No,
    }
}

/// Whether a process `pid` runs on this host (in this pid namespace).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn live_key(c: &Cluster, kind: Kind, node: &str) -> String {
    format!("{}/{}/keyset-name/{node}", c.prefix, kind.name())
}

fn dup_prefix(c: &Cluster, kind: Kind, node: &str) -> String {
    format!("{}/dup/", live_key(c, kind, node))
}

fn record_key(c: &Cluster, kind: Kind, node: &str) -> String {
    format!("{}/{}/names/{node}", c.prefix, kind.name())
}

fn ack_key(c: &Cluster, kind: Kind, node: &str) -> String {
    format!("{}/{}/acks/{node}", c.prefix, kind.name())
}

/// Reads what etcd holds about `node`.
pub async fn read(c: &Cluster, kind: Kind, node: &str) -> Result<Seen, ClusterError> {
    let live = live_key(c, kind, node);
    let dups = dup_prefix(c, kind, node);
    let record = record_key(c, kind, node);
    let mut seen = Seen::default();
    for kv in c.read_prefix(&live).await?.kvs() {
        let key = kv.key();
        if key == live.as_bytes() {
            seen.live = serde_json::from_slice(kv.value()).ok();
            seen.live_revision = kv.mod_revision();
        } else if key.starts_with(dups.as_bytes()) {
            if let Ok(id) = serde_json::from_slice(kv.value()) {
                seen.duplicates.push(id);
            }
        }
    }
    let mut client = c.client.clone();
    let resp = c
        .bounded(&format!("read {record}"), client.get(record.clone(), None))
        .await?;
    if let Some(kv) = resp.kvs().first() {
        seen.record = serde_json::from_slice(kv.value()).ok();
        seen.record_revision = kv.mod_revision();
    }
    Ok(seen)
}

/// Claims `node` for `me` with `token` (a transaction on both records' revisions as `seen`
/// read them): false when another writer changed them meanwhile.
pub async fn claim(
    c: &Cluster,
    kind: Kind,
    node: &str,
    me: &Identity,
    token: &str,
    seen: &Seen,
) -> Result<bool, ClusterError> {
    let live = live_key(c, kind, node);
    let record = record_key(c, kind, node);
    let rec = Record::new(me.clone(), token);
    let txn = Txn::new()
        .when([
            Compare::mod_revision(live.clone(), CompareOp::Equal, seen.live_revision),
            Compare::mod_revision(record.clone(), CompareOp::Equal, seen.record_revision),
        ])
        .and_then([
            TxnOp::put(
                live.clone(),
                serde_json::to_vec(me).unwrap_or_default(),
                Some(PutOptions::new().with_lease(me.lease)),
            ),
            TxnOp::put(record, serde_json::to_vec(&rec).unwrap_or_default(), None),
        ]);
    let mut client = c.client.clone();
    let resp = c.bounded(&format!("claim {live}"), client.txn(txn)).await?;
    Ok(resp.succeeded())
}

/// A new claim token for the name `me` holds, on this disk first (`local` then keeps both)
/// then in etcd: a copy of this disk taken before (a clone refused while this daemon runs)
/// no longer holds the name's token, and cannot take the name once this daemon stops.
/// False when `me` no longer holds the name, or its records changed meanwhile.
pub async fn rekey(
    c: &Cluster,
    kind: Kind,
    node: &str,
    me: &Identity,
    local: &Local,
    publish: impl Fn(&Local) -> Result<(), ClusterError>,
) -> Result<bool, ClusterError> {
    let seen = read(c, kind, node).await?;
    if seen.live.as_ref().is_none_or(|l| l.lease != me.lease) {
        return Ok(false);
    }
    let token = new_token()?;
    publish(&local.claiming(node, &token))?;
    if !claim(c, kind, node, me, &token, &seen).await? {
        return Ok(false);
    }
    publish(&Local::claimed(node, &token))?;
    Ok(true)
}

/// Says, under this refused daemon's lease, that it tries to run as `node`: the holder
/// reports it while the lease lives.
pub async fn contend(
    c: &Cluster,
    kind: Kind,
    node: &str,
    me: &Identity,
) -> Result<(), ClusterError> {
    let key = format!("{}{:x}", dup_prefix(c, kind, node), me.lease);
    let mut client = c.client.clone();
    c.bounded(
        &format!("write {key}"),
        client.put(
            key.clone(),
            serde_json::to_vec(me).unwrap_or_default(),
            Some(PutOptions::new().with_lease(me.lease)),
        ),
    )
    .await?;
    Ok(())
}

/// A name under which a daemon is refused while another holds it (a `dup/LEASE` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contended {
    pub node: String,
    /// The live holder (none: it stopped, the refused one has not taken over yet).
    pub holder: Option<Identity>,
    pub refused: Vec<Identity>,
}

/// Without the lease: a refused daemon takes a new one at each try.
fn who(id: &Identity) -> String {
    format!(
        "host {}, pid {}, boot id {}, started {}",
        id.host,
        id.pid,
        id.boot.as_deref().unwrap_or("unknown"),
        id.started
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

impl std::fmt::Display for Contended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let holder = self.holder.as_ref().map_or("nobody now".to_string(), who);
        let refused: std::collections::BTreeSet<String> = self.refused.iter().map(who).collect();
        write!(
            f,
            "'{}' is held by ({holder}) and refused to ({})",
            self.node,
            refused.into_iter().collect::<Vec<_>>().join("; ")
        )
    }
}

/// Every name with a daemon refused under it, from the records below
/// `{prefix}/{kind}/keyset-name/` (`node` and `node/dup/LEASE`), in name order.
pub fn contended_from<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<Contended> {
    let mut by: std::collections::BTreeMap<String, Contended> = Default::default();
    let mut holders: std::collections::BTreeMap<String, Identity> = Default::default();
    for (rest, value) in records {
        match rest.rsplit_once("/dup/") {
            Some((node, _)) => {
                // Unreadable, it still says a daemon is refused: counted, unnamed.
                let id = serde_json::from_slice(value).unwrap_or(Identity {
                    lease: 0,
                    boot: None,
                    host: "unreadable record".into(),
                    pid: 0,
                    started: DateTime::<Utc>::default(),
                });
                by.entry(node.to_string())
                    .or_insert_with(|| Contended {
                        node: node.to_string(),
                        holder: None,
                        refused: Vec::new(),
                    })
                    .refused
                    .push(id);
            }
            None => {
                if let Ok(id) = serde_json::from_slice(value) {
                    holders.insert(rest.to_string(), id);
                }
            }
        }
    }
    by.into_values()
        .map(|mut c| {
            c.holder = holders.remove(&c.node);
            c
        })
        .collect()
}

/// What [`contended_from`] finds in etcd: the leader holds promotions while it is not empty
/// (which of the two daemons' Keystones serves users is unknown).
pub async fn contended(c: &Cluster, kind: Kind) -> Result<Vec<Contended>, ClusterError> {
    let prefix = format!("{}/{}/keyset-name/", c.prefix, kind.name());
    let resp = c.read_prefix(&prefix).await?;
    Ok(contended_from(resp.kvs().iter().filter_map(|kv| {
        let key = std::str::from_utf8(kv.key()).ok()?;
        Some((key.strip_prefix(prefix.as_str())?, kv.value()))
    })))
}

/// Why a rename was not made.
#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{kind}: node '{old}' is held by a live daemon ({holder}): stop it, change its [cluster] node, then rename")]
    OldLive {
        kind: &'static str,
        old: String,
        holder: Identity,
    },
    #[error("{kind}: node '{new}' is already a member or held ({what}); nothing changed")]
    NewTaken {
        kind: &'static str,
        new: String,
        what: String,
    },
    #[error("{kind}: no node '{old}' (no membership record, no claim); nothing changed")]
    Unknown { kind: &'static str, old: String },
    #[error("{kind}: the records of '{old}' or '{new}' changed while renaming; nothing changed, try again")]
    Raced {
        kind: &'static str,
        old: String,
        new: String,
    },
}

/// What a rename moved: `old`'s membership (its last acknowledged revision), if it had one.
#[derive(Debug)]
pub struct Renamed {
    pub revision: Option<i64>,
}

/// Moves `old`'s membership record and claim to `new` in one transaction: the promotion gate
/// then waits for `new` where it waited for `old`, with what `old` had acknowledged (never
/// less), and the daemon whose disk held `old`'s claim holds `new`'s. Refused while `old` is
/// live, or when `new` is held or a member that acknowledged something.
pub async fn rename(c: &Cluster, kind: Kind, old: &str, new: &str) -> Result<Renamed, RenameError> {
    let k = kind.name();
    if old == new {
        return Err(RenameError::NewTaken {
            kind: k,
            new: new.to_string(),
            what: "the same name".into(),
        });
    }
    let (from, to) = (read(c, kind, old).await?, read(c, kind, new).await?);
    if let Some(holder) = from.live {
        return Err(RenameError::OldLive {
            kind: k,
            old: old.to_string(),
            holder,
        });
    }
    if let Some(holder) = to.live.as_ref().or(to.record.as_ref().map(|r| &r.holder)) {
        return Err(RenameError::NewTaken {
            kind: k,
            new: new.to_string(),
            what: format!("claimed by {holder}"),
        });
    }
    let (old_ack, new_ack) = (ack_key(c, kind, old), ack_key(c, kind, new));
    let get = |key: String| async move {
        let mut client = c.client.clone();
        c.bounded(&format!("read {key}"), client.get(key.clone(), None))
            .await
            .map(|r| {
                r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
            })
    };
    let (old_rec, new_rec) = (get(old_ack.clone()).await?, get(new_ack.clone()).await?);
    if let Some((v, _)) = &new_rec {
        let ack: Option<super::Ack> = serde_json::from_slice(v).ok();
        if ack.is_some_and(|a| a.revision > 0) {
            return Err(RenameError::NewTaken {
                kind: k,
                new: new.to_string(),
                what: "a member that acknowledged a key set".into(),
            });
        }
    }
    if old_rec.is_none() && from.record.is_none() {
        return Err(RenameError::Unknown {
            kind: k,
            old: old.to_string(),
        });
    }
    let rev = |r: &Option<(Vec<u8>, i64)>| r.as_ref().map_or(0, |(_, m)| *m);
    let (old_name, new_name) = (record_key(c, kind, old), record_key(c, kind, new));
    let when = vec![
        Compare::mod_revision(old_ack.clone(), CompareOp::Equal, rev(&old_rec)),
        Compare::mod_revision(new_ack.clone(), CompareOp::Equal, rev(&new_rec)),
        Compare::mod_revision(old_name.clone(), CompareOp::Equal, from.record_revision),
        Compare::mod_revision(new_name.clone(), CompareOp::Equal, 0),
        Compare::create_revision(live_key(c, kind, old), CompareOp::Equal, 0),
        Compare::create_revision(live_key(c, kind, new), CompareOp::Equal, 0),
    ];
    let mut ops = Vec::new();
    let mut revision = None;
    if let Some((v, _)) = &old_rec {
        // Every field kept as written (a newer version's too); only the name changes.
        let mut value: serde_json::Value =
            serde_json::from_slice(v).unwrap_or(serde_json::Value::Null);
        revision = value.get("revision").and_then(|r| r.as_i64());
        if let Some(o) = value.as_object_mut() {
            o.insert("node".into(), serde_json::Value::String(new.to_string()));
        }
        ops.push(TxnOp::put(
            new_ack.clone(),
            c.moved_ack(&old_ack, v, &new_ack, value),
            None,
        ));
        ops.push(TxnOp::delete(old_ack, None));
    }
    if let Some(r) = &from.record {
        ops.push(TxnOp::put(
            new_name,
            serde_json::to_vec(r).unwrap_or_default(),
            None,
        ));
        ops.push(TxnOp::delete(old_name, None));
    }
    // The members the key set lists move with the record, on the set's revision.
    let mut when = when;
    let moved = |m: &mut std::collections::BTreeMap<_, _>| {
        m.remove(old)
            .map(|v| m.insert(new.to_string(), v))
            .is_some()
    };
    if let Some((compare, put)) = c.members_edit(kind, Some(old), moved).await? {
        when.push(compare);
        ops.push(put);
    }
    let mut client = c.client.clone();
    let resp = c
        .bounded(
            &format!("rename {old} to {new}"),
            client.txn(Txn::new().when(when).and_then(ops)),
        )
        .await?;
    if !resp.succeeded() {
        return Err(RenameError::Raced {
            kind: k,
            old: old.to_string(),
            new: new.to_string(),
        });
    }
    Ok(Renamed { revision })
}

/// Forgets `node`'s lasting claim (`cluster remove-node`): a node rebuilt under that name may
/// take it. Returns whether there was one.
pub async fn forget(c: &Cluster, kind: Kind, node: &str) -> Result<bool, ClusterError> {
    let key = record_key(c, kind, node);
    let mut client = c.client.clone();
    let resp = c
        .bounded(&format!("delete {key}"), client.delete(key.clone(), None))
        .await?;
    Ok(resp.deleted() > 0)
}

/// A change of a name record the session's watch carried, for this node's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Another daemon took this node's live record: this session no longer holds the name.
    Taken(Identity),
    /// A daemon refused under this name keeps trying (`lease`), or stopped (`None`).
    Duplicate { lease: i64, who: Option<Identity> },
}

/// Interprets a watched name record (`key` relative to the kind: `keyset-name/...`) for
/// `node` holding `lease`.
pub fn event(suffix: &str, value: &[u8], put: bool, node: &str, lease: i64) -> Option<Event> {
    let rest = suffix.strip_prefix("keyset-name/")?.strip_prefix(node)?;
    if rest.is_empty() {
        let id: Identity = serde_json::from_slice(value).ok()?;
        return (put && id.lease != lease).then_some(Event::Taken(id));
    }
    let hex = rest.strip_prefix("/dup/")?;
    let l = i64::from_str_radix(hex, 16).ok()?;
    let who = if put {
        Some(serde_json::from_slice(value).ok()?)
    } else {
        None
    };
    Some(Event::Duplicate { lease: l, who })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decide`] for a name the key set does not list, with no former name.
    fn unlisted(
        node: &str,
        me: &Identity,
        seen: &Seen,
        local: &Local,
        alive: impl Fn(u32) -> bool,
    ) -> Decision {
        decide(node, me, seen, local, None, Listed::No, alive)
    }

    fn id(lease: i64, boot: &str, host: &str, pid: u32) -> Identity {
        Identity {
            lease,
            boot: Some(boot.into()),
            host: host.into(),
            pid,
            started: DateTime::from_timestamp(1_000_000 + i64::from(pid), 0).unwrap_or_default(),
        }
    }

    fn record(holder: Identity, token: &str) -> Record {
        Record::new(holder, token)
    }

    fn seen(live: Option<Identity>, rec: Option<Record>) -> Seen {
        Seen {
            live,
            record: rec,
            ..Seen::default()
        }
    }

    const DEAD: fn(u32) -> bool = |_| false;
    const ALIVE: fn(u32) -> bool = |_| true;

    #[test]
    fn a_process_keeps_one_claim_token_for_all_its_sessions() {
        let me = id(1, "b1", "ctl", 10);
        let local = Local::claimed("ctl", "t");
        // Its own earlier session (another lease, the same process): the same token.
        let mine = seen(None, Some(record(id(7, "b1", "ctl", 10), "t")));
        assert_eq!(local.session_token(&me, &mine).unwrap(), "t");
        let again = local.claiming("ctl", "t");
        assert_eq!(again, local);
        // A restart (another pid), or a token this disk does not hold: a new one.
        for other in [
            seen(None, Some(record(id(7, "b1", "ctl", 11), "t"))),
            seen(None, Some(record(id(7, "b1", "ctl", 10), "u"))),
            Seen::default(),
        ] {
            let new = local.session_token(&me, &other).unwrap();
            assert!(new != "t" && new.len() == 32, "{new}");
        }
        // Claiming keeps the tokens the disk held for the name, up to the last KEPT_TOKENS.
        let mut l = Local::claimed("ctl", "t0");
        for i in 1..=KEPT_TOKENS + 2 {
            l = l.claiming("ctl", &format!("t{i}"));
        }
        let pending = l.claiming("ctl", "new");
        assert_eq!(pending.tokens.len(), KEPT_TOKENS);
        assert_eq!(pending.tokens[..KEPT_TOKENS - 1], l.tokens[1..]);
        // Renamed away and back: the tokens of the first stint stay, so an etcd backup from
        // then still names one this disk holds.
        let back = Local::claimed("b2", "t1")
            .claiming("b", "t2")
            .claiming("b2", "t3");
        assert_eq!(back.node.as_deref(), Some("b2"));
        assert!(back.holds(&record(id(7, "b1", "b2", 10), "t1")));
    }

    #[test]
    fn a_free_unrecorded_name_is_taken() {
        let me = id(1, "b1", "ctl", 10);
        assert_eq!(
            unlisted("ctl", &me, &Seen::default(), &Local::default(), DEAD),
            Decision::Take
        );
    }

    #[test]
    fn a_live_holder_elsewhere_refuses_naming_it() {
        let me = id(2, "b2", "ctl", 10);
        let other = id(1, "b1", "ctl", 10);
        let s = seen(Some(other.clone()), Some(record(other.clone(), "t")));
        let d = unlisted("ctl", &me, &s, &Local::claimed("ctl", "t"), DEAD);
        // Identical hostname AND identical token (a clone of a running node): still refused,
        // because the boot ids differ.
        assert_eq!(
            d,
            Decision::Refuse(Refusal::Live {
                node: "ctl".into(),
                other: other.clone()
            })
        );
        let text = match d {
            Decision::Refuse(r) => r.to_string(),
            _ => String::new(),
        };
        assert!(text.contains("host ctl, pid 10, boot id b1"), "{text}");
        assert!(text.contains("lease 1"), "{text}");
    }

    #[test]
    fn a_restart_on_the_same_boot_and_host_takes_over_the_old_lease() {
        let old = id(1, "b1", "ctl", 10);
        let me = id(2, "b1", "ctl", 11);
        let s = seen(Some(old.clone()), Some(record(old.clone(), "t")));
        assert_eq!(
            unlisted("ctl", &me, &s, &Local::claimed("ctl", "t"), DEAD),
            Decision::Take
        );
        // The old pid alive here: a second daemon, not a restart.
        assert!(matches!(
            unlisted("ctl", &me, &s, &Local::claimed("ctl", "t"), ALIVE),
            Decision::Refuse(Refusal::Live { .. })
        ));
        // Same boot and host, the old pid gone, but another disk (a container on the same
        // kernel with the same hostname): refused.
        assert!(matches!(
            unlisted("ctl", &me, &s, &Local::claimed("ctl", "other"), DEAD),
            Decision::Refuse(Refusal::Live { .. })
        ));
        // Another session of this same process.
        let again = Identity {
            lease: 3,
            ..old.clone()
        };
        assert_eq!(
            unlisted("ctl", &again, &s, &Local::default(), ALIVE),
            Decision::Take
        );
    }

    #[test]
    fn a_stopped_holder_is_not_replaced_by_another_disk() {
        let last = id(1, "b1", "ctl", 10);
        let me = id(2, "b2", "ctl", 10);
        let s = seen(None, Some(record(last.clone(), "t")));
        assert_eq!(
            unlisted("ctl", &me, &s, &Local::default(), DEAD),
            Decision::Refuse(Refusal::Stale {
                node: "ctl".into(),
                last: last.clone()
            })
        );
        // Its own disk after a reboot: taken.
        assert_eq!(
            unlisted("ctl", &me, &s, &Local::claimed("ctl", "t"), DEAD),
            Decision::Take
        );
        // A claim interrupted before etcd committed it: the previous token still counts.
        let pending = Local::claimed("ctl", "t").claiming("ctl", "u");
        assert_eq!(unlisted("ctl", &me, &s, &pending, DEAD), Decision::Take);
    }

    /// Fails against the code before (it moved the old name's membership, or refused).
    #[test]
    fn a_repository_that_held_another_name_is_a_new_node_never_a_move() {
        let last = id(1, "b1", "old", 10);
        let local = Local::claimed("old", "t");
        let stopped = seen(None, Some(record(last.clone(), "t")));
        let running = seen(Some(last.clone()), Some(record(last.clone(), "t")));
        // Same boot (a clone started on the original's host, or a restart under a new name),
        // another boot, the old name running or stopped: always a new node.
        for me in [id(2, "b1", "new", 11), id(2, "b2", "new", 11)] {
            for former in [&stopped, &running, &Seen::default()] {
                assert_eq!(
                    decide(
                        "new",
                        &me,
                        &Seen::default(),
                        &local,
                        Some(("old", former)),
                        Listed::No,
                        DEAD
                    ),
                    Decision::TakeNew("old".into())
                );
            }
        }
        // Its own name again: a plain take.
        assert_eq!(
            decide(
                "old",
                &id(2, "b1", "old", 11),
                &stopped,
                &local,
                Some(("old", &stopped)),
                Listed::No,
                DEAD
            ),
            Decision::Take
        );
    }

    #[test]
    fn a_stopped_holders_name_is_refused_to_an_empty_repository_saying_what_to_do() {
        let last = id(1, "b1", "n2", 28530);
        let me = id(2, "b2", "n2", 11);
        let s = seen(None, Some(record(last, "t")));
        let d = unlisted("n2", &me, &s, &Local::default(), DEAD);
        let text = match d {
            Decision::Refuse(r) => r.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(text.contains("not running"), "{text}");
        assert!(
            text.contains("`fernetd cluster remove-node n2` first"),
            "{text}"
        );
        assert!(text.contains("its own [cluster] node"), "{text}");
    }

    #[test]
    fn contended_names_name_the_holder_and_every_refused_daemon() {
        let holder = id(1, "b1", "n3", 10);
        let dup = id(2, "b2", "n3", 20);
        let other = id(3, "b3", "n1", 30);
        let (h, d, o) = (
            serde_json::to_vec(&holder).unwrap_or_default(),
            serde_json::to_vec(&dup).unwrap_or_default(),
            serde_json::to_vec(&other).unwrap_or_default(),
        );
        // A name held alone is not contended.
        assert!(contended_from([("n1", o.as_slice())]).is_empty());
        let c = contended_from([
            ("n1", o.as_slice()),
            ("n3", h.as_slice()),
            ("n3/dup/2", d.as_slice()),
            ("n4/dup/7", b"garbage".as_slice()),
        ]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].node, "n3");
        assert_eq!(c[0].holder, Some(holder));
        assert_eq!(c[0].refused, vec![dup]);
        let text = c[0].to_string();
        assert!(text.contains("pid 10") && text.contains("pid 20"), "{text}");
        // A refused daemon whose record does not parse still holds the gate.
        assert_eq!((c[1].node.as_str(), c[1].holder.is_none()), ("n4", true));
    }

    #[test]
    fn watched_records_are_read_for_this_node_only() {
        let other = id(9, "b9", "ctl", 3);
        let v = serde_json::to_vec(&other).unwrap_or_default();
        assert_eq!(
            event("keyset-name/ctl", &v, true, "ctl", 1),
            Some(Event::Taken(other.clone()))
        );
        assert_eq!(event("keyset-name/ctl", &v, true, "ctl", 9), None);
        assert_eq!(event("keyset-name/ctl2", &v, true, "ctl", 1), None);
        assert_eq!(event("keyset-name/b", &v, true, "ctl", 1), None);
        assert_eq!(
            event("keyset-name/ctl/dup/9", &v, true, "ctl", 1),
            Some(Event::Duplicate {
                lease: 9,
                who: Some(other)
            })
        );
        assert_eq!(
            event("keyset-name/ctl/dup/9", b"", false, "ctl", 1),
            Some(Event::Duplicate {
                lease: 9,
                who: None
            })
        );
    }

    /// A member that has acknowledged, its claim record gone from etcd (deleted by someone
    /// with write access, its daemon stopped): a repository that never held the name (a
    /// template clone, a rebuilt node) is refused; its own repository, an expected member's
    /// first start and a name the set does not list take it.
    #[test]
    fn a_listed_member_without_a_claim_is_taken_only_by_its_own_repository() {
        let me = id(9, "b9", "clone", 99);
        let nobody = Seen::default();
        assert_eq!(
            decide(
                "c",
                &me,
                &nobody,
                &Local::default(),
                None,
                Listed::Member,
                DEAD
            ),
            Decision::Refuse(Refusal::Unclaimed { node: "c".into() })
        );
        let copy_of_a = Local::claimed("a", "t");
        assert_eq!(
            decide(
                "c",
                &me,
                &nobody,
                &copy_of_a,
                Some(("a", &nobody)),
                Listed::Member,
                DEAD
            ),
            Decision::Refuse(Refusal::Unclaimed { node: "c".into() })
        );
        let own = Local::claimed("c", "t");
        assert_eq!(
            decide("c", &me, &nobody, &own, None, Listed::Member, DEAD),
            Decision::Take
        );
        for listed in [Listed::Expected, Listed::No] {
            assert_eq!(
                decide("c", &me, &nobody, &Local::default(), None, listed, DEAD),
                Decision::Take
            );
        }
        // The stopped member's lease still runs (its daemon stopped a moment ago on this
        // host): a daemon of this boot and host under a dead pid looks like its restart, but
        // a repository that never held the name is not it.
        let stopped = Identity {
            lease: 7,
            pid: 1,
            ..me.clone()
        };
        let lease_left = seen(Some(stopped), None);
        assert!(matches!(
            decide(
                "c",
                &me,
                &lease_left,
                &Local::default(),
                None,
                Listed::Member,
                DEAD
            ),
            Decision::Refuse(Refusal::Live { .. })
        ));
        assert_eq!(
            decide("c", &me, &lease_left, &own, None, Listed::Member, DEAD),
            Decision::Take
        );
    }
}
