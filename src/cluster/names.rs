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

/// The lasting record of a name: its last holder and the claim token on that holder's disk.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub holder: Identity,
    token: String,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({})", self.holder)
    }
}

/// What this repository's daemon claimed: the name and the tokens it wrote (the last two: a
/// claim interrupted between the local write and etcd's leaves either valid).
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
        self.tokens.contains(&r.token)
    }

    /// Before claiming `node` with `token`: both the old token and the new one are accepted,
    /// so a claim interrupted before etcd's commit is not lost.
    pub fn claiming(&self, node: &str, token: &str) -> Local {
        let mut tokens: Vec<String> = self.tokens.last().cloned().into_iter().collect();
        tokens.push(token.to_string());
        Local {
            node: Some(node.to_string()),
            tokens,
        }
    }

    /// After etcd committed the claim.
    pub fn claimed(node: &str, token: &str) -> Local {
        Local {
            node: Some(node.to_string()),
            tokens: vec![token.to_string()],
        }
    }
}

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
    /// Nobody holds it now, but its last holder was another daemon: this repository does not
    /// hold that holder's claim (a clone of it taken before its last start, a node rebuilt).
    Stale { node: String, last: Identity },
    /// This repository held `old` last, and that name's holder did not run on this boot: a
    /// rename across a reboot, or a copy of `old`'s disk; the operator says which.
    Renamed {
        old: String,
        node: String,
        last: Identity,
    },
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
                "duplicate node name: '{node}' was last held by another daemon ({last}), and \
                 this repository does not hold its claim (a clone, or a node rebuilt); this one \
                 takes no part in the cluster and waits: give it its own [cluster] node, or, if \
                 that daemon is gone for good, run `fernetd cluster remove-node {node}` first"
            ),
            Refusal::Renamed { old, node, last } => write!(
                f,
                "renamed node: this repository was node '{old}' (last {last}) and now runs as \
                 '{node}'; under the new name promotions would wait for '{old}' for good: if this \
                 node is '{old}' renamed, run `fernetd cluster rename-node {old} {node}`; if it \
                 is a copy of '{old}', remove its .fernetd/{LOCAL_FILE}"
            ),
        }
    }
}

/// What a daemon does with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Claim it (over the live record of this same daemon's earlier process or session).
    Take,
    /// This repository was node `old` on this boot, and `old` is free: move its membership
    /// to the new name first, then claim.
    RenameFrom(String),
    /// This repository was node `old` on this boot, held by this daemon's previous process
    /// whose lease has not ended yet: wait for it (at most a lease), then rename.
    WaitFor(String),
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
///   reported by the clone while it tries.
pub fn decide(
    node: &str,
    me: &Identity,
    seen: &Seen,
    local: &Local,
    former: Option<(&str, &Seen)>,
    alive: impl Fn(u32) -> bool,
) -> Decision {
    if let Some(other) = &seen.live {
        // No lasting record beside a live one: `remove-node` forgot it.
        let ours = seen.record.as_ref().is_none_or(|r| local.holds(r));
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
    // A name nobody held: this repository's former name, if it held that one's claim.
    if let Some((old, f)) = former {
        let ours = f.record.as_ref().is_some_and(|r| local.holds(r));
        // The old name still held by this daemon's previous process (same boot, its pid gone,
        // this disk's claim; the hostname may have changed with the name).
        let predecessor = f.live.as_ref().is_some_and(|o| {
            ours && o.boot.is_some() && o.boot == me.boot && o.pid != me.pid && !alive(o.pid)
        });
        if old != node && predecessor {
            return Decision::WaitFor(old.to_string());
        }
        if old != node && f.live.is_none() {
            if let Some(r) = f.record.as_ref().filter(|r| local.holds(r)) {
                if r.holder.boot.is_some() && r.holder.boot == me.boot {
                    return Decision::RenameFrom(old.to_string());
                }
                return Decision::Refuse(Refusal::Renamed {
                    old: old.to_string(),
                    node: node.to_string(),
                    last: r.holder.clone(),
                });
            }
        }
    }
    Decision::Take
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
    let rec = Record {
        holder: me.clone(),
        token: token.to_string(),
    };
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
        Record {
            holder,
            token: token.into(),
        }
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
    fn a_free_unrecorded_name_is_taken() {
        let me = id(1, "b1", "ctl", 10);
        assert_eq!(
            decide("ctl", &me, &Seen::default(), &Local::default(), None, DEAD),
            Decision::Take
        );
    }

    #[test]
    fn a_live_holder_elsewhere_refuses_naming_it() {
        let me = id(2, "b2", "ctl", 10);
        let other = id(1, "b1", "ctl", 10);
        let s = seen(Some(other.clone()), Some(record(other.clone(), "t")));
        let d = decide("ctl", &me, &s, &Local::claimed("ctl", "t"), None, DEAD);
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
            decide("ctl", &me, &s, &Local::claimed("ctl", "t"), None, DEAD),
            Decision::Take
        );
        // The old pid alive here: a second daemon, not a restart.
        assert!(matches!(
            decide("ctl", &me, &s, &Local::claimed("ctl", "t"), None, ALIVE),
            Decision::Refuse(Refusal::Live { .. })
        ));
        // Same boot and host, the old pid gone, but another disk (a container on the same
        // kernel with the same hostname): refused.
        assert!(matches!(
            decide("ctl", &me, &s, &Local::claimed("ctl", "other"), None, DEAD),
            Decision::Refuse(Refusal::Live { .. })
        ));
        // Another session of this same process.
        let again = Identity {
            lease: 3,
            ..old.clone()
        };
        assert_eq!(
            decide("ctl", &again, &s, &Local::default(), None, ALIVE),
            Decision::Take
        );
    }

    #[test]
    fn a_stopped_holder_is_not_replaced_by_another_disk() {
        let last = id(1, "b1", "ctl", 10);
        let me = id(2, "b2", "ctl", 10);
        let s = seen(None, Some(record(last.clone(), "t")));
        assert_eq!(
            decide("ctl", &me, &s, &Local::default(), None, DEAD),
            Decision::Refuse(Refusal::Stale {
                node: "ctl".into(),
                last: last.clone()
            })
        );
        // Its own disk after a reboot: taken.
        assert_eq!(
            decide("ctl", &me, &s, &Local::claimed("ctl", "t"), None, DEAD),
            Decision::Take
        );
        // A claim interrupted before etcd committed it: the previous token still counts.
        let pending = Local::claimed("ctl", "t").claiming("ctl", "u");
        assert_eq!(decide("ctl", &me, &s, &pending, None, DEAD), Decision::Take);
    }

    #[test]
    fn a_rename_on_the_same_boot_moves_the_membership_else_the_operator_says() {
        let last = id(1, "b1", "old", 10);
        let former = seen(None, Some(record(last.clone(), "t")));
        let local = Local::claimed("old", "t");
        let me = id(2, "b1", "new", 11);
        assert_eq!(
            decide(
                "new",
                &me,
                &Seen::default(),
                &local,
                Some(("old", &former)),
                DEAD
            ),
            Decision::RenameFrom("old".into())
        );
        // The old name's lease not ended yet (the process just stopped): wait for it.
        let stopping = seen(Some(last.clone()), Some(record(last.clone(), "t")));
        assert_eq!(
            decide(
                "new",
                &me,
                &Seen::default(),
                &local,
                Some(("old", &stopping)),
                DEAD
            ),
            Decision::WaitFor("old".into())
        );
        let rebooted = id(2, "b2", "new", 11);
        assert!(matches!(
            decide(
                "new",
                &rebooted,
                &Seen::default(),
                &local,
                Some(("old", &former)),
                DEAD
            ),
            Decision::Refuse(Refusal::Renamed { .. })
        ));
        // A clone of a running node under a new name: its own fresh name.
        let running = seen(Some(last.clone()), Some(record(last.clone(), "t")));
        assert_eq!(
            decide(
                "new",
                &rebooted,
                &Seen::default(),
                &local,
                Some(("old", &running)),
                DEAD
            ),
            Decision::Take
        );
        // A repository whose token the old name's record does not hold: unrelated.
        let other = seen(None, Some(record(last, "x")));
        assert_eq!(
            decide(
                "new",
                &me,
                &Seen::default(),
                &local,
                Some(("old", &other)),
                DEAD
            ),
            Decision::Take
        );
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
}
