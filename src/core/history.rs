//! Key history: when each key was created, promoted and demoted, and which keys were purged,
//! and the cluster [`Lineage`] the history belongs to.
//!
//! This is the memory behind the retention guard. It survives restarts (the repository module
//! stores it as JSON in `.fernetd/state.json`). Keys fernetd finds without history count from
//! the moment it first saw them, which is always on the safe side: a key seen now was demoted
//! no later than now.
//!
//! Invariant: pure. `reconcile` and `record_rotation` take the time as an argument and touch no
//! file; they never hold key material, only fingerprints. `Lineage::new` draws a random
//! cluster id (the one effect the core allows, see [`crate::core`]).

// `later` and `to_chrono` are the clock's: re-exported for the paths that name them here.
pub use crate::core::clock::{later, to_chrono};
use crate::core::clock::{BootStamp, Now};
use crate::core::key::Fingerprint;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How many closed purge records are kept (purges by fernetd, and removals outside it whose
/// lost window is over or never opened). No decision needs an old one: their keys' tokens have
/// expired, and a purge interrupted by a crash is found by the disk (`reconcile`), not by its
/// record. The newest few still let `contradictions` refuse a state file that a restored disk
/// contradicts (its primary or key 0 purged here, or a purge above its primary); a disk older
/// than these shows every recorded key gone instead, and is reported as losing them. Open
/// losses (`lost_until` still ahead) are kept whatever their number: repair, the repair
/// copies and every report of a lost key read them. So the history, `state.json` and a
/// cluster's key set stop growing with the number of rotations.
const PURGED_KEPT: usize = 16;

/// Current on-disk format version.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub version: u32,
    /// Keys on disk at the last save, by number.
    pub keys: BTreeMap<u64, KeyRecord>,
    /// Keys removed, newest last: by fernetd's purge or observed gone.
    #[serde(default)]
    pub purged: Vec<PurgedKey>,
    /// When the primary last changed (by fernetd or observed).
    #[serde(default, with = "timestamp::option")]
    pub last_rotation: Option<DateTime<Utc>>,
    /// Rotations fernetd performed on this repository.
    #[serde(default)]
    pub rotations: u64,
    /// Cluster mode: which cluster's key set this is, and how far it has moved forward. A node
    /// keeps the lineage of the newest set it applied here, and refuses any older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// Material a repair copy holds that this history does not explain (never recorded, not
    /// on disk): it left the disk unseen (a state file deleted or replaced), its window
    /// unknown, so it counts as lost from the moment fernetd found the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen: Vec<UnseenLoss>,
}

/// Which cluster a key set belongs to and how far it has moved forward. It travels inside the
/// key set's history, so it is sealed with the keys when a seal key is set, and every node
/// keeps the lineage of the newest set it applied in its own state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// Random, made when the cluster's key set is first created (`cluster init`).
    pub cluster: String,
    /// How many key sets the cluster has committed since: every rotation and every forced
    /// import moves it up by one. A node never takes a lower one.
    pub generation: u64,
    /// The operator allowed this set to remove keys that may still decrypt live tokens
    /// (`--force-purge`). Only this generation; the next rotation clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// The operator's forced purges (`--force-purge`) this set follows, each a random id,
    /// the newest last, at most [`PURGES_KEPT`]: made by the forced set, carried by every
    /// generation and import after it, and kept by each node with the ids of the sets it
    /// applied before. A node that never took one of them (down or cut off through it) takes
    /// this set as forced too ([`forced_for`](crate::core::keyset::forced_for)), as it
    /// would have taken the forced one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purges: Vec<String>,
    /// The lineage this one replaced (`cluster init --force` over a set it could not continue):
    /// a node following that one takes this one, at any generation. Carried by every
    /// generation after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The etcd this generation was written into (its cluster id and the prefix), stamped by
    /// the writer; a node records it with the set it applies and refuses a set read from
    /// another etcd (a wrong endpoint, a stray local etcd) until `cluster init` binds anew.
    /// None for sets written before fernetd recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Binding>,
    /// The cluster's members by name: sealed with the keys, so only a holder of the seal key
    /// changes it. The leader's rotation keeps every member of the set it rotates and adds
    /// the nodes whose acknowledgement it authenticated; only `cluster remove-node`,
    /// `rename-node` and `init --members` (each a compare-and-swap on the set) drop, move or
    /// add one, and `init` keeps the members of the set it replaces and of the keys imported. A member whose acknowledgement record is missing from etcd holds
    /// the gate: deleting a record in etcd does not end a membership. Empty for sets written
    /// before fernetd recorded it (the acknowledgement records alone were the membership).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, Member>,
    /// Names that left the members (`cluster remove-node`, the old name of `rename-node`),
    /// at most [`DEPARTED_KEPT`], carried by every generation after. An acknowledgement
    /// record under such a name counts again (for the gate, and to join) only when it speaks
    /// of a later set ([`Lineage::heard_since_departure`]). An older one is an etcd backup's
    /// leftover, which otherwise held the gate for a name no daemon runs as and came back as
    /// a member.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub departed: BTreeMap<String, Departure>,
    /// The lineages (cluster ids) the node that applied this set followed before and left
    /// for another (a forced set, a remedy, a lineage that replaced its own), the newest last,
    /// at most [`LEFT_KEPT`]. A set of one of them is older than what the node holds (an etcd
    /// backup from before the move, restored): refused, and the node publishes its own over
    /// it, as for an older generation. Without it such a backup was another cluster's to
    /// every node that had moved on: refused, never replaced, and a node that was down through
    /// the move took it and served its keys while the others served theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

/// When a name left the cluster's members: the generation that dropped it, the wall clock of
/// the command that did (said, never compared: another host's clock), and the clock of the
/// node's last acknowledgement then, by the node's own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Departure {
    pub generation: u64,
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    /// None: no acknowledgement record of it was read then (every record of it counts).
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_heard: Option<DateTime<Utc>>,
}

/// One member of a cluster as its key set records it: its name (the map's key) and nothing
/// that grows with time, so the set stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Declared by `cluster init --members` and not heard from yet: its daemon may claim the
    /// name with any repository. Once a rotation saw its authenticated acknowledgement, only
    /// a repository that held the name (its claim on disk) may run as it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expected: bool,
}

/// Where a key set lives: etcd's cluster id (from its response header, in hex) and the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub cluster_id: String,
    pub prefix: String,
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd cluster {} (prefix {})",
            self.cluster_id, self.prefix
        )
    }
}

/// How many forced purges a lineage remembers ([`Lineage::purges`]).
pub const PURGES_KEPT: usize = 16;

/// How many lineages a node remembers having left ([`Lineage::left`]).
pub const LEFT_KEPT: usize = 16;

/// How many departed names a lineage keeps (the newest by generation).
pub const DEPARTED_KEPT: usize = 32;

fn random_id() -> Result<String, getrandom::Error> {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id)?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

impl Lineage {
    /// A new cluster's first generation.
    pub fn new() -> Result<Lineage, getrandom::Error> {
        Ok(Lineage {
            cluster: random_id()?,
            generation: 1,
            forced: false,
            purges: Vec::new(),
            from: None,
            etcd: None,
            members: BTreeMap::new(),
            departed: BTreeMap::new(),
            left: Vec::new(),
        })
    }

    /// Marks this generation as the operator's forced purge, under a new id.
    pub fn force(&mut self) -> Result<(), getrandom::Error> {
        self.forced = true;
        let id = random_id()?;
        self.remember(std::slice::from_ref(&id));
        Ok(())
    }

    /// Adds the purge ids of `others` this lineage does not remember yet, after its own,
    /// keeping the newest [`PURGES_KEPT`].
    pub fn remember(&mut self, others: &[String]) {
        for id in others {
            if !self.purges.contains(id) {
                self.purges.push(id.clone());
            }
        }
        let extra = self.purges.len().saturating_sub(PURGES_KEPT);
        self.purges.drain(..extra);
    }

    /// The generation after this one, in the same cluster.
    pub fn next(&self) -> Lineage {
        Lineage {
            cluster: self.cluster.clone(),
            generation: self.generation.saturating_add(1),
            forced: false,
            purges: self.purges.clone(),
            from: self.from.clone(),
            etcd: self.etcd.clone(),
            members: self.members.clone(),
            departed: self.departed.clone(),
            left: self.left.clone(),
        }
    }

    /// A node that held `held` applies this set: it keeps the lineages it left before, and
    /// `held`'s own when this one is another. Keeps the newest [`LEFT_KEPT`].
    pub fn remember_left(&mut self, held: &Lineage) {
        let all: Vec<String> = held
            .left
            .iter()
            .chain(std::iter::once(&held.cluster))
            .chain(&self.left)
            .cloned()
            .collect();
        // The newest occurrence of each, never this lineage itself.
        let mut left: Vec<String> = Vec::new();
        for id in all.into_iter().rev() {
            if id != self.cluster && !left.contains(&id) {
                left.push(id);
            }
        }
        left.truncate(LEFT_KEPT);
        left.reverse();
        self.left = left;
    }

    /// The names that are members of `before` (the generation before this one) and not of
    /// this one, and `also` (a name the operator removed or renamed that the set may not
    /// list: its members lost to another cluster's set written over it, and no rotation
    /// since to list it again), once.
    pub fn leaving(&self, before: &BTreeMap<String, Member>, also: Option<&str>) -> Vec<String> {
        let mut gone: Vec<String> = before
            .keys()
            .filter(|n| !self.members.contains_key(*n))
            .cloned()
            .collect();
        if let Some(n) = also.filter(|n| !self.members.contains_key(*n)) {
            if !gone.iter().any(|g| g == n) {
                gone.push(n.to_string());
            }
        }
        gone
    }

    /// Records `gone` (see [`Lineage::leaving`]) as departed at this generation, `at`, each
    /// with the clock of its last acknowledgement (`last_heard`); a name that is a member
    /// again is no longer departed. Keeps the newest [`DEPARTED_KEPT`].
    pub fn note_departures(
        &mut self,
        gone: &[String],
        at: DateTime<Utc>,
        last_heard: &BTreeMap<String, DateTime<Utc>>,
    ) {
        for name in gone.iter().cloned() {
            let last_heard = last_heard.get(&name).copied();
            self.departed.insert(
                name,
                Departure {
                    generation: self.generation,
                    at,
                    last_heard,
                },
            );
        }
        self.departed.retain(|n, _| !self.members.contains_key(n));
        while self.departed.len() > DEPARTED_KEPT {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, d)| (d.generation, d.at))
                .map(|(n, _)| n.clone());
            match oldest {
                Some(n) => self.departed.remove(&n),
                None => break,
            };
        }
    }

    /// Whether an acknowledgement record of `node` speaks of a set after the node left the
    /// members, if it did. Bound (`bound`: the lineage and generation its MAC names) to this
    /// lineage: its generation alone decides (the departure's or later). Otherwise its clock
    /// (the node's) against the node's own last acknowledgement when it departed: later is
    /// a new word; the same or earlier is that record or an older one, as an etcd backup
    /// restored after the departure brings back. Never against the clock of the host that
    /// removed it: a live node a little behind that host would go unheard while its Keystone
    /// serves. Unknown (no record read at the departure, or a record without a clock):
    /// counted, as the gate errs. A name that never departed: always.
    pub fn heard_since_departure(
        &self,
        node: &str,
        bound: Option<(&str, u64)>,
        clock: Option<DateTime<Utc>>,
    ) -> bool {
        let Some(d) = self.departed.get(node) else {
            return true;
        };
        match (bound, d.last_heard, clock) {
            (Some((c, g)), _, _) if c == self.cluster => g >= d.generation,
            (_, Some(last), Some(clock)) => clock > last,
            _ => true,
        }
    }
}

impl std::fmt::Display for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {} of cluster {}",
            self.generation, self.cluster
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub fingerprint: Fingerprint,
    /// When fernetd first saw this key (or created it).
    #[serde(with = "timestamp")]
    pub first_seen: DateTime<Utc>,
    /// Set when fernetd generated the key itself.
    #[serde(default, with = "timestamp::option")]
    pub created: Option<DateTime<Utc>>,
    /// When it became primary, if observed.
    #[serde(default, with = "timestamp::option")]
    pub promoted: Option<DateTime<Utc>>,
    /// When it stopped being primary, if observed.
    #[serde(default, with = "timestamp::option")]
    pub demoted: Option<DateTime<Utc>>,
    /// The boot clock at the moment retention counts from (`demoted`, else `first_seen`), so
    /// that within one boot a step of the wall clock cannot shorten it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_boot: Option<BootStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgedKey {
    pub number: u64,
    pub fingerprint: Fingerprint,
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    /// True when fernetd purged it; false when it was found gone.
    pub by_fernetd: bool,
    /// Found gone (or changed) while tokens it encrypted could still be presented: until
    /// when. Critical in `status` and the daemon until then.
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub lost_until: Option<DateTime<Utc>>,
    /// The boot clock when the loss was recorded (`at`), so that a step of the wall clock
    /// cannot close its window early. Absent in records written before it was kept: those
    /// close at `lost_until` by the wall clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_boot: Option<BootStamp>,
    /// Found gone outside fernetd and judged harmless (no `lost_until`): its repair copy is
    /// kept until then all the same (a whole retention from `at`), in case the history that
    /// judged it was wrong (a state file rolled back). Absent in older records.
    #[serde(
        default,
        with = "timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub copy_until: Option<DateTime<Utc>>,
}

/// A repair copy's material that left the disk while no history recorded it (see
/// [`History::unseen`]): lost from `at` for a whole retention, until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnseenLoss {
    pub fingerprint: Fingerprint,
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_boot: Option<BootStamp>,
    #[serde(with = "timestamp")]
    pub until: DateTime<Utc>,
}

impl PurgedKey {
    /// Until when this loss stays open at `now` ([`open_until`]); `None` for a purge and for a
    /// key found gone after its window.
    pub fn lost_open_until(&self, now: &Now) -> Option<DateTime<Utc>> {
        if self.by_fernetd {
            return None;
        }
        open_until(self.at, self.since_boot.as_ref(), self.lost_until?, now)
    }

    /// Whether the repair copy of a key found gone and judged harmless is still kept at `now`
    /// (`copy_until`, counted like a loss window).
    pub fn copy_kept(&self, now: &Now) -> bool {
        !self.by_fernetd
            && self
                .copy_until
                .is_some_and(|u| open_until(self.at, self.since_boot.as_ref(), u, now).is_some())
    }
}

impl UnseenLoss {
    /// Until when this loss stays open at `now` ([`open_until`]).
    pub fn open_until(&self, now: &Now) -> Option<DateTime<Utc>> {
        open_until(self.at, self.since_boot.as_ref(), self.until, now)
    }
}

/// Until when a loss recorded at `at` (on the boot clock `boot`), open until `until` by the
/// clock of that moment, is still open at `now`: its window (`until - at`) counts like a
/// retention ([`Now::since`]: within the same boot the smaller of the two clocks' elapsed
/// times, across boots the wall clock, a recorded time in the future no time), and the end
/// said is never earlier than the later plausible one. A record without `boot` (written
/// before it was kept) closes at `until` by the wall clock, as it always did.
pub fn open_until(
    at: DateTime<Utc>,
    boot: Option<&BootStamp>,
    until: DateTime<Utc>,
    now: &Now,
) -> Option<DateTime<Utc>> {
    if boot.is_none() {
        return (until > now.wall).then_some(until);
    }
    let window = (until - at).to_std().unwrap_or(Duration::ZERO);
    let rest = window.checked_sub(now.since(at, boot))?;
    if rest.is_zero() {
        return None;
    }
    Some(until.max(later(now.wall, rest)))
}

/// Timestamps written exactly as chrono's serde writes them (`2026-11-29T06:17:39.268261551Z`),
/// without its per-fragment `collect_str`, and read with chrono's strict RFC 3339 parser first,
/// falling back to the relaxed one its serde uses. A history holds hundreds of them and is read
/// and written on every change; this makes that several times cheaper.
mod timestamp {
    use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Visitor)
    }

    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DateTime<Utc>, E> {
            DateTime::parse_from_rfc3339(v)
                .or_else(|_| v.parse::<DateTime<FixedOffset>>())
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }

    struct Timestamp(DateTime<Utc>);

    impl Serialize for Timestamp {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(&self.0, s)
        }
    }

    impl<'de> Deserialize<'de> for Timestamp {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(Timestamp)
        }
    }

    pub mod option {
        use super::Timestamp;
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            t.map(Timestamp).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Ok(Option::<Timestamp>::deserialize(d)?.map(|t| t.0))
        }
    }
}

/// Something `reconcile` noticed while matching history against the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A key fernetd had no history for (adoption, or a key added by hand).
    Adopted { number: u64 },
    /// Key 0 became `to` without fernetd: an interrupted fernetd rotation or keystone-manage.
    Promoted { from: u64, to: u64 },
    /// A key in history is no longer on disk and fernetd did not purge it.
    Vanished {
        number: u64,
        fingerprint: Fingerprint,
    },
    /// The file for `number` now holds a different key.
    Replaced { number: u64 },
}

impl KeyRecord {
    fn seen(fingerprint: Fingerprint, now: &Now) -> KeyRecord {
        KeyRecord {
            fingerprint,
            first_seen: now.wall,
            created: None,
            promoted: None,
            demoted: None,
            since_boot: now.boot.clone(),
        }
    }

    /// Records the end of this key's time as primary.
    fn demote(&mut self, now: &Now) {
        self.demoted = Some(now.wall);
        self.since_boot = now.boot.clone();
    }

    /// Until when this key may still decrypt a live token, for a given retention
    /// (E + W + M): counted from its demotion, or from the first sighting when the demotion
    /// was not observed, by the clock that says the least time has passed (see
    /// [`crate::core::clock`]). At or before `now.wall` once the retention is over.
    pub fn retained_until(&self, retention: Duration, now: &Now) -> DateTime<Utc> {
        let from = self.demoted.unwrap_or(self.first_seen);
        let elapsed = now.since(from, self.since_boot.as_ref());
        match retention.checked_sub(elapsed) {
            Some(rest) if !rest.is_zero() => later(now.wall, rest),
            _ => later(from, retention).min(now.wall),
        }
    }
}

/// Something the state file says that the keys on disk contradict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    /// Where in the file: `purged[3]`, `keys.4.demoted`.
    pub field: String,
    pub problem: String,
}

/// How far in the future a recorded time may lie before it is reported (clocks of cluster
/// nodes differ by a little; the leader dates what every node records).
const FUTURE_TOLERANCE: chrono::Duration = chrono::Duration::seconds(60);

/// The primary among key numbers: the highest non-zero one (Keystone encrypts with it; key 0
/// is staged). `None` when only key 0, or nothing, is there. The one definition every module
/// uses, whatever holds the numbers (a disk, a history, a key set).
pub fn primary(numbers: impl IntoIterator<Item = u64>) -> Option<u64> {
    numbers.into_iter().filter(|&n| n > 0).max()
}

impl History {
    pub fn new() -> History {
        History {
            version: VERSION,
            ..History::default()
        }
    }

    /// What this history says that the keys on disk (number -> fingerprint) contradict: a key
    /// recorded as purged that is the primary or the staged key on disk. (A purged key still on
    /// disk as a secondary is an interrupted purge: `reconcile` adopts it again.)
    pub fn contradictions(&self, disk: &BTreeMap<u64, Fingerprint>) -> Vec<Contradiction> {
        let primary = primary(disk.keys().copied());
        let mut out = Vec::new();
        for (i, p) in self.purged.iter().enumerate() {
            let field = format!("purged[{i}]");
            let on_disk = disk
                .iter()
                .find(|(n, fp)| **fp == p.fingerprint && (Some(**n) == primary || **n == 0));
            if let Some((&n, fp)) = on_disk {
                let role = if n == 0 {
                    "the staged key 0"
                } else {
                    "the primary"
                };
                out.push(Contradiction {
                    field,
                    problem: format!(
                        "says key {} (fingerprint {fp}) was purged, but it is {role} on disk",
                        p.number
                    ),
                });
            } else if p.by_fernetd
                && primary.is_some_and(|top| p.number >= top)
                && self.primary().is_none_or(|recorded| p.number >= recorded)
            {
                // Numbers only grow, and fernetd purges only keys below the primary. A file
                // whose own primary is above the purge is consistent: the disk lost its top
                // keys outside fernetd (reported as lost, not refused).
                out.push(Contradiction {
                    field,
                    problem: format!(
                        "says fernetd purged key {}, but fernetd only purges keys below the \
                         primary, and the primary on disk is key {}",
                        p.number,
                        primary.unwrap_or(0)
                    ),
                });
            }
        }
        out
    }

    /// Every recorded time later than `now` (beyond a minute's tolerance), with its field: a
    /// wall clock that stepped back, or a state file from elsewhere. Retention from such a
    /// time counts as not yet begun, and schedules count from now.
    pub fn future(&self, now: &Now) -> Vec<(String, DateTime<Utc>)> {
        let late = |t: &DateTime<Utc>| *t > now.wall + FUTURE_TOLERANCE;
        let mut out: Vec<(String, DateTime<Utc>)> = Vec::new();
        if let Some(t) = self.last_rotation.filter(late) {
            out.push(("last_rotation".into(), t));
        }
        for (n, r) in &self.keys {
            let fields = [
                ("first_seen", Some(r.first_seen)),
                ("created", r.created),
                ("promoted", r.promoted),
                ("demoted", r.demoted),
            ];
            for (name, t) in fields {
                if let Some(t) = t.filter(late) {
                    out.push((format!("keys.{n}.{name}"), t));
                }
            }
        }
        out
    }

    /// [`History::future`] as warnings about `state` (the state file's path), worded once for
    /// `rotate`, `setup`, `status` and `STATUS=`.
    pub fn future_warnings(&self, now: &Now, state: &std::path::Path) -> Vec<String> {
        self.future(now)
            .into_iter()
            .map(|(field, t)| {
                format!(
                    "{}: {field} is in the future ({}): a wall clock that stepped back, or a \
                     state file from elsewhere; retention counts as not yet begun, schedules \
                     from now",
                    state.display(),
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .collect()
    }

    /// Keys on disk that a purge record names: a purge interrupted after its decision was
    /// saved. They are adopted again (dated now), never removed on the record's word.
    pub fn purged_on_disk(&self, disk: &BTreeMap<u64, Fingerprint>) -> Vec<u64> {
        disk.iter()
            .filter(|(n, fp)| {
                self.purged.iter().any(|p| p.fingerprint == **fp)
                    && self.keys.get(n).is_none_or(|r| r.fingerprint != **fp)
            })
            .map(|(n, _)| *n)
            .collect()
    }

    /// What a schedule counts from: the last rotation, or, for keys adopted without one (a
    /// repository `keystone-manage` made, imported into a cluster or adopted by `setup`), the
    /// moment the primary was first seen, so that the first slot after adoption rotates.
    pub fn schedule_basis(&self) -> Option<DateTime<Utc>> {
        self.last_rotation.or_else(|| {
            self.primary()
                .and_then(|p| self.keys.get(&p))
                .map(|r| r.first_seen)
        })
    }

    /// Number -> fingerprint of the keys this history records.
    pub fn fingerprints(&self) -> BTreeMap<u64, Fingerprint> {
        self.keys.iter().map(|(n, r)| (*n, r.fingerprint)).collect()
    }

    /// The primary as history knows it: the highest non-zero number ([`primary`]).
    /// No key on disk was demoted (or, never primary, first seen) before its file last
    /// changed (`changed`: number -> fingerprint and the file's `st_ctime`, which only the
    /// kernel sets): a state file edited to date a key years back is corrected to the disk's
    /// evidence, later, never earlier (history errs late). A change time later than `now`
    /// is no evidence (this clock, or the one that stamped the file, is off: the boot clock
    /// judges elapsed time then). Returns the numbers re-dated.
    pub fn not_before_files(
        &mut self,
        changed: &BTreeMap<u64, (Fingerprint, DateTime<Utc>)>,
        now: &Now,
    ) -> Vec<u64> {
        let mut moved = Vec::new();
        for (n, r) in self.keys.iter_mut() {
            let Some(&(fingerprint, at)) = changed.get(n).filter(|(_, at)| *at <= now.wall) else {
                continue;
            };
            if r.fingerprint != fingerprint || r.demoted.is_none() && n == &0 {
                continue;
            }
            let field = match r.demoted.as_mut() {
                Some(d) => d,
                None => &mut r.first_seen,
            };
            if *field < at {
                *field = at;
                moved.push(*n);
            }
        }
        moved
    }

    pub fn primary(&self) -> Option<u64> {
        primary(self.keys.keys().copied())
    }

    /// Brings history in line with the keys on disk (number -> fingerprint), conservatively:
    /// anything not observed is dated `now`. Returns what changed, for the caller to report.
    pub fn reconcile(
        &mut self,
        disk: &BTreeMap<u64, Fingerprint>,
        now: impl Into<Now>,
    ) -> Vec<Observation> {
        let now: Now = now.into();
        let mut seen_notes = Vec::new();
        let old_primary = self.primary();
        let old = std::mem::take(&mut self.keys);
        // Match by fingerprint first: after a rotation key 0 legitimately holds a new key and
        // the old one lives on under a new number.
        let mut by_fp: BTreeMap<Fingerprint, (u64, KeyRecord)> = old
            .iter()
            .map(|(&n, r)| (r.fingerprint, (n, r.clone())))
            .collect();
        for (&number, &fp) in disk {
            let record = match by_fp.remove(&fp) {
                Some((from, r)) => {
                    if from != number {
                        seen_notes.push(Observation::Promoted { from, to: number });
                    }
                    r
                }
                None => {
                    let replaced = old
                        .get(&number)
                        .is_some_and(|r| !disk.values().any(|&d| d == r.fingerprint));
                    seen_notes.push(if replaced {
                        Observation::Replaced { number }
                    } else {
                        Observation::Adopted { number }
                    });
                    KeyRecord::seen(fp, &now)
                }
            };
            self.keys.insert(number, record);
        }
        // A key on disk is not purged, whatever a record says (an interrupted purge).
        self.purged
            .retain(|p| !disk.values().any(|fp| *fp == p.fingerprint));
        self.unseen
            .retain(|u| !disk.values().any(|fp| *fp == u.fingerprint));
        for (fingerprint, (number, _)) in by_fp {
            if !seen_notes.contains(&Observation::Replaced { number }) {
                seen_notes.push(Observation::Vanished {
                    number,
                    fingerprint,
                });
            }
            self.forget(number, fingerprint, &now);
        }
        let primary = self.primary();
        if let Some(p) = primary {
            if let Some(r) = self.keys.get_mut(&p) {
                if r.promoted.is_none() && old_primary.is_some() && old_primary != Some(p) {
                    r.promoted = Some(now.wall);
                }
            }
            if old_primary.is_some() && old_primary != Some(p) {
                self.last_rotation = Some(now.wall);
            }
        }
        // Keys that may have been primary since the last look and are not primary now were
        // demoted at some moment up to now; `now` is the conservative date (first_seen would
        // be too early). That is the old primary, and any key that left number 0 (staged,
        // then promoted and perhaps demoted again by rotations fernetd did not make).
        let moved_from_zero = seen_notes.iter().filter_map(|o| match o {
            Observation::Promoted { from: 0, to } => Some(*to),
            _ => None,
        });
        let maybe_primary_since: Vec<u64> =
            old_primary.into_iter().chain(moved_from_zero).collect();
        // The primary went outside fernetd: Keystone made tokens with the highest key below it
        // from then on, a moment up to now. A key demoted earlier counts again from now (its
        // next demotion, when it is the primary now).
        let gone = old_primary.filter(|p| {
            old.get(p)
                .is_some_and(|r| !disk.values().any(|&f| f == r.fingerprint))
        });
        // Judged in the numbers the history knew (a rotation elsewhere may reuse the numbers
        // of the keys that went): the highest recorded key below the primary still on disk.
        let on_disk = |fp: &Fingerprint| disk.values().any(|d| d == fp);
        let fallback = gone.and_then(|g| {
            let held = old
                .iter()
                .filter(|(&n, r)| n < g && on_disk(&r.fingerprint))
                .map(|(&n, _)| n);
            self::primary(held)
                .and_then(|n| old.get(&n))
                .map(|r| r.fingerprint)
        });
        let fallback = fallback.and_then(|fp| self.keys.iter().find(|(_, r)| r.fingerprint == fp));
        if let Some(n) = fallback.map(|(&n, _)| n) {
            if let Some(r) = self.keys.get_mut(&n).filter(|r| r.demoted.is_some()) {
                r.promoted = Some(now.wall);
                match Some(n) == primary {
                    true => r.demoted = None,
                    false => r.demote(&now),
                }
            }
        }
        for n in maybe_primary_since {
            if let Some(r) = self.keys.get_mut(&n) {
                if n > 0 && r.promoted.is_none() {
                    r.promoted = Some(if Some(n) == old_primary {
                        r.first_seen
                    } else {
                        now.wall
                    });
                }
                if Some(n) != primary && r.demoted.is_none() {
                    r.demote(&now);
                }
            }
        }
        seen_notes
    }

    fn forget(&mut self, number: u64, fingerprint: Fingerprint, now: &Now) {
        self.push_purged(
            PurgedKey {
                number,
                fingerprint,
                at: now.wall,
                by_fernetd: false,
                lost_until: None,
                since_boot: now.boot.clone(),
                copy_until: None,
            },
            now.wall,
        );
    }

    /// Adds `p`, then drops the oldest closed records beyond [`PURGED_KEPT`]. Open losses and
    /// copies still kept at `now` stay, and so does a loss stamped with the boot clock for a
    /// week past its wall-clock end (a wall clock stepped back when it was recorded may have
    /// dated that end early; `open_until` judges it by the boot clock). Records made at `now`
    /// stay too, however many: the save that follows drops their repair copies on their word,
    /// and a copy no record explains counts as a loss from every later moment (a forced set,
    /// or a node many rotations behind, purges more than `PURGED_KEPT` keys at once).
    fn push_purged(&mut self, p: PurgedKey, now: DateTime<Utc>) {
        self.purged.push(p);
        let week = chrono::Duration::days(7);
        let open = |p: &PurgedKey| {
            p.lost_until.is_some_and(|u| u > now)
                || p.copy_until.is_some_and(|u| u > now)
                || (p.since_boot.is_some() && p.lost_until.is_some_and(|u| u + week > now))
        };
        let closed = self.purged.iter().filter(|p| !open(p)).count();
        let mut excess = closed.saturating_sub(PURGED_KEPT);
        self.purged.retain(|p| {
            let drop = excess > 0 && !open(p) && p.at < now;
            excess -= usize::from(drop);
            !drop
        });
    }

    /// Records a completed promotion: old key 0 is now `new_primary`, `staged` is the new 0.
    pub fn record_rotation(&mut self, new_primary: u64, staged: Fingerprint, now: impl Into<Now>) {
        let now: Now = now.into();
        if let Some(r) = self.primary().and_then(|p| self.keys.get_mut(&p)) {
            if r.demoted.is_none() {
                r.demote(&now);
                // It was primary when first seen; its promotion time is unknown.
                r.promoted.get_or_insert(r.first_seen);
            }
        }
        if let Some(mut r) = self.keys.remove(&0) {
            r.promoted = Some(now.wall);
            r.demoted = None;
            r.since_boot = None;
            self.keys.insert(new_primary, r);
        }
        self.keys.insert(
            0,
            KeyRecord {
                created: Some(now.wall),
                ..KeyRecord::seen(staged, &now)
            },
        );
        self.last_rotation = Some(now.wall);
        self.rotations += 1;
    }

    /// Records that fernetd created key `number` (setup).
    pub fn record_created(&mut self, number: u64, fp: Fingerprint, now: impl Into<Now>) {
        let now: Now = now.into();
        self.keys.insert(
            number,
            KeyRecord {
                created: Some(now.wall),
                promoted: (number > 0).then_some(now.wall),
                ..KeyRecord::seen(fp, &now)
            },
        );
    }

    /// Adds key `number` (`fingerprint`) as `from` describes it (dated now when it does not),
    /// for a key kept on disk beyond a key set that dropped it. A key that was the primary
    /// there stops being primary now.
    pub fn carry(
        &mut self,
        from: &History,
        number: u64,
        fingerprint: Fingerprint,
        was_primary: bool,
        now: &Now,
    ) {
        let mut r = from
            .keys
            .values()
            .find(|r| r.fingerprint == fingerprint)
            .cloned()
            .unwrap_or_else(|| KeyRecord::seen(fingerprint, now));
        if was_primary {
            r.promoted.get_or_insert(r.first_seen);
            r.demote(now);
        }
        self.keys.insert(number, r);
    }

    /// Key `number` may have made tokens until now (the keys above it were missing, then
    /// restored): unless it is the primary, its retention counts from now.
    pub fn stood_in(&mut self, number: u64, now: &Now) {
        if Some(number) == self.primary() {
            return;
        }
        if let Some(r) = self.keys.get_mut(&number) {
            r.promoted.get_or_insert(now.wall);
            r.demote(now);
        }
    }

    /// Marks the newest removal of `fingerprint` fernetd did not make as the loss of key
    /// `number` (a staged key promoted unseen is lost under its new number) while tokens it
    /// encrypted are still valid, until `until`.
    pub fn record_loss(&mut self, number: u64, fingerprint: Fingerprint, until: DateTime<Utc>) {
        if let Some(p) = self
            .purged
            .iter_mut()
            .rev()
            .find(|p| p.fingerprint == fingerprint && !p.by_fernetd)
        {
            p.number = number;
            p.lost_until = Some(until);
        }
    }

    /// Credentials: closes the open losses a verified migration answers, and returns their
    /// numbers. Every stored credential was found encrypted with `primary` by a check that
    /// began at `began` (the primary was read before `pre_rotate` ran): a key gone from the
    /// disk before then encrypted no credential that check saw, nor any written since while
    /// `primary` stayed the primary. So only while `primary` is the primary on `disk`, and
    /// only losses recorded before `began` (by the wall clock, and by the boot clock within
    /// one boot, so that a clock step cannot move a later loss before it): a loss found after
    /// the check began may hold credentials written after it, and stays open. A closed loss
    /// keeps its repair copy until its window would have ended (`copy_until`), in case the
    /// check lied. Losses of unknown material (`unseen`) stay open. Never for tokens: nothing
    /// checks which tokens exist. Pure.
    pub fn close_verified_losses(
        &mut self,
        primary: Fingerprint,
        disk: &BTreeMap<u64, Fingerprint>,
        began: &Now,
    ) -> Vec<u64> {
        let on_disk = self::primary(disk.keys().copied()).and_then(|n| disk.get(&n));
        if on_disk != Some(&primary) {
            return Vec::new();
        }
        let before = |at: DateTime<Utc>, boot: Option<&BootStamp>| {
            at < began.wall
                && match (boot, began.boot.as_ref()) {
                    (Some(a), Some(b)) if a.boot == b.boot => a.ms < b.ms,
                    _ => true,
                }
        };
        let mut closed = Vec::new();
        for p in &mut self.purged {
            let open = !p.by_fernetd && p.lost_until.is_some();
            if open && p.fingerprint != primary && before(p.at, p.since_boot.as_ref()) {
                p.copy_until = p.lost_until.take();
                closed.push(p.number);
            }
        }
        closed
    }

    /// The fingerprints whose repair copies (`repair = true`) must stay: every key this
    /// history holds, and every key found gone or replaced outside fernetd whose tokens are
    /// still valid at `now` (`lost_until`, [`PurgedKey::lost_open_until`]), and every copy's
    /// material lost unseen whose window is open ([`History::unseen`]). Pure.
    pub fn copies_kept(&self, now: &Now) -> std::collections::BTreeSet<Fingerprint> {
        self.keys
            .values()
            .map(|r| r.fingerprint)
            .chain(
                self.purged
                    .iter()
                    .filter(|p| p.lost_open_until(now).is_some() || p.copy_kept(now))
                    .map(|p| p.fingerprint),
            )
            .chain(
                self.unseen
                    .iter()
                    .filter(|u| u.open_until(now).is_some())
                    .map(|u| u.fingerprint),
            )
            .collect()
    }

    /// Whether the repair copy of `fingerprint` may leave `.fernetd/copies` at `now`: only on
    /// positive evidence that its tokens are gone or never mattered, a purge fernetd made, or
    /// a loss (found gone, or lost unseen) whose window has closed, and never while
    /// [`History::copies_kept`] keeps it. A copy this history does not explain stays (see
    /// [`History::unexplained`]). Pure.
    pub fn copy_may_go(&self, fingerprint: Fingerprint, now: &Now) -> bool {
        if self.copies_kept(now).contains(&fingerprint) {
            return false;
        }
        self.purged.iter().any(|p| p.fingerprint == fingerprint)
            || self.unseen.iter().any(|u| u.fingerprint == fingerprint)
    }

    /// Of the fingerprints of repair copies, those this history does not explain: not a key
    /// it holds, not on `disk`, no record of a purge or loss. Their material left the disk
    /// unseen (a state file deleted or replaced).
    pub fn unexplained(
        &self,
        copies: impl IntoIterator<Item = Fingerprint>,
        disk: &BTreeMap<u64, Fingerprint>,
    ) -> Vec<Fingerprint> {
        copies
            .into_iter()
            .filter(|fp| {
                !self.keys.values().any(|r| r.fingerprint == *fp)
                    && !disk.values().any(|d| d == fp)
                    && !self.purged.iter().any(|p| p.fingerprint == *fp)
                    && !self.unseen.iter().any(|u| u.fingerprint == *fp)
            })
            .collect()
    }

    /// Records the material of a repair copy this history does not explain as lost now, for a
    /// whole `retention` (history errs late): its window is unknown.
    pub fn record_unseen(&mut self, fingerprint: Fingerprint, retention: Duration, now: &Now) {
        if self.unseen.iter().any(|u| u.fingerprint == fingerprint) {
            return;
        }
        self.unseen.push(UnseenLoss {
            fingerprint,
            at: now.wall,
            since_boot: now.boot.clone(),
            until: later(now.wall, retention),
        });
        let excess = self.unseen.len().saturating_sub(PURGED_KEPT);
        self.unseen.drain(..excess);
    }

    /// A key set's history about to replace `local` on a node whose disk holds `disk`: what
    /// the local history alone knows of losses stays (every loss still open at `now`, so it
    /// is said and its repair copy kept until its window closes), and the material the set
    /// replaces (approved by the gate: no live token, or forced) is recorded as gone, so that
    /// its repair copy may go rather than count as a loss nobody recorded.
    pub fn keep_evidence(&mut self, local: &History, disk: &BTreeMap<u64, Fingerprint>, now: &Now) {
        // Material the set holds is back: no loss, and no record that would contradict it.
        let kept: Vec<Fingerprint> = self.keys.values().map(|r| r.fingerprint).collect();
        for p in &local.purged {
            let known = self.purged.iter().any(|q| q.fingerprint == p.fingerprint);
            if !known && !kept.contains(&p.fingerprint) && p.lost_open_until(now).is_some() {
                self.push_purged(p.clone(), now.wall);
            }
        }
        for u in &local.unseen {
            let known = self.unseen.iter().any(|v| v.fingerprint == u.fingerprint);
            if !known && !kept.contains(&u.fingerprint) && u.open_until(now).is_some() {
                self.unseen.push(u.clone());
            }
        }
        for (&number, &fingerprint) in disk {
            let recorded = self.purged.iter().any(|p| p.fingerprint == fingerprint);
            if !kept.contains(&fingerprint) && !recorded {
                self.forget(number, fingerprint, now);
            }
        }
    }

    /// Keys found gone at `now` (by [`History::reconcile`]) and judged harmless keep their
    /// repair copies for a whole `retention` all the same (`copy_until`): history errs late.
    pub fn keep_removed_copies(&mut self, retention: Duration, now: &Now) {
        for p in &mut self.purged {
            if !p.by_fernetd && p.at == now.wall && p.lost_until.is_none() {
                p.copy_until.get_or_insert(later(now.wall, retention));
            }
        }
    }

    /// Whether this history records `fingerprint` as a key fernetd made (held, under any
    /// number) or purged: not a key another tool made, which a start or an observation
    /// records too, without `created`.
    pub fn made(&self, fingerprint: Fingerprint) -> bool {
        self.keys
            .values()
            .any(|r| r.fingerprint == fingerprint && r.created.is_some())
            || self.purged.iter().any(|p| p.fingerprint == fingerprint)
    }

    /// Whether a key under `number` was recorded: held, or in the purge records.
    pub fn records(&self, number: u64) -> bool {
        self.keys.contains_key(&number) || self.purged.iter().any(|p| p.number == number)
    }

    /// Records that fernetd purged `number` on purpose.
    pub fn record_purge(&mut self, number: u64, now: DateTime<Utc>) {
        if let Some(r) = self.keys.remove(&number) {
            self.push_purged(
                PurgedKey {
                    number,
                    fingerprint: r.fingerprint,
                    at: now,
                    by_fernetd: true,
                    lost_until: None,
                    since_boot: None,
                    copy_until: None,
                },
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Key;
    use chrono::TimeZone;

    /// Whether a key with this fingerprint was removed at some point.
    fn was_purged(h: &History, fingerprint: Fingerprint) -> bool {
        h.purged.iter().any(|p| p.fingerprint == fingerprint)
    }

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them_and_read_in_any_form_it_reads() {
        for nanos in [0, 1, 1_000, 123_000_000, 268_261_551, 999_999_999] {
            let at = t(7) + chrono::Duration::nanoseconds(nanos);
            let p = PurgedKey {
                number: 3,
                fingerprint: Fingerprint::NONE,
                at,
                by_fernetd: true,
                lost_until: None,
                since_boot: None,
                copy_until: None,
            };
            let ours = serde_json::to_value(&p).unwrap()["at"].clone();
            assert_eq!(ours, serde_json::to_value(at).unwrap(), "{nanos}");
            assert_eq!(
                serde_json::from_value::<PurgedKey>(serde_json::to_value(&p).unwrap()).unwrap(),
                p
            );
        }
        // Forms chrono's own reader accepts (a hand-edited file) still read.
        let text = r#"{"fingerprint":"0000000000000000","first_seen":"2026-01-01 07:00:00+02:00",
            "created":null,"promoted":"2026-01-01T05:00:00.5z"}"#;
        let r: KeyRecord = serde_json::from_str(text).unwrap();
        assert_eq!(r.first_seen, t(5));
        assert_eq!(r.promoted, Some(t(5) + chrono::Duration::milliseconds(500)));
        assert_eq!(r.demoted, None);
        assert!(serde_json::from_str::<KeyRecord>(&text.replace("07:00:00", "7 o'clock")).is_err());
    }

    fn fps(n: usize) -> Vec<Fingerprint> {
        (0..n)
            .map(|_| Key::generate().unwrap().fingerprint())
            .collect()
    }

    #[test]
    fn adoption_dates_everything_now() {
        let f = fps(3);
        let disk = BTreeMap::from([(0, f[0]), (1, f[1]), (2, f[2])]);
        let mut h = History::new();
        let notes = h.reconcile(&disk, t(0));
        assert_eq!(notes.len(), 3);
        assert!(notes
            .iter()
            .all(|n| matches!(n, Observation::Adopted { .. })));
        // Secondary 1 was never seen as primary: retained from first sighting.
        let r = &h.keys[&1];
        assert_eq!(
            r.retained_until(Duration::from_secs(3600), &t(0).into()),
            t(1)
        );
        assert!(h.reconcile(&disk, t(5)).is_empty());
    }

    #[test]
    fn rotation_moves_records_and_dates_demotion() {
        let f = fps(3);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        h.record_rotation(2, f[2], t(10));
        assert_eq!(h.keys[&2].fingerprint, f[0]);
        assert_eq!(h.keys[&2].promoted, Some(t(10)));
        assert_eq!(h.keys[&1].demoted, Some(t(10)));
        assert_eq!(h.keys[&0].fingerprint, f[2]);
        assert_eq!(h.last_rotation, Some(t(10)));
        assert_eq!(h.rotations, 1);
    }

    #[test]
    fn external_promotion_is_observed() {
        let f = fps(3);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        // keystone-manage fernet_rotate: 0 -> 2, new 0, 1 kept.
        let notes = h.reconcile(&BTreeMap::from([(0, f[2]), (1, f[1]), (2, f[0])]), t(3));
        assert!(notes.contains(&Observation::Promoted { from: 0, to: 2 }));
        assert_eq!(h.keys[&2].promoted, Some(t(3)));
        // Key 1 was primary at t(0) and is not at t(3): demoted no earlier than... t(3).
        assert_eq!(h.keys[&1].demoted, Some(t(3)));
        assert_eq!(
            h.keys[&1].retained_until(Duration::from_secs(3600), &t(3).into()),
            t(4)
        );
        assert_eq!(h.last_rotation, Some(t(3)));
    }

    #[test]
    fn staged_key_promoted_and_demoted_unseen_is_dated_at_observation() {
        // fernetd sees {0: a, 1: b} at t(0); keystone-manage rotates twice before fernetd
        // looks again at t(5): a was primary from some moment until some moment <= t(5).
        let f = fps(4);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        let disk = BTreeMap::from([(0, f[3]), (1, f[1]), (2, f[0]), (3, f[2])]);
        h.reconcile(&disk, t(5));
        assert_eq!(h.keys[&2].demoted, Some(t(5)));
        assert_eq!(h.keys[&1].demoted, Some(t(5)));
        assert_eq!(h.keys[&3].demoted, None, "the primary is not demoted");
        assert_eq!(
            h.keys[&2].retained_until(Duration::from_secs(3600), &t(5).into()),
            t(6)
        );
    }

    #[test]
    fn a_key_left_highest_by_a_vanished_primary_counts_from_now() {
        let f = fps(4);
        let mut h = History::new();
        h.record_created(1, f[1], t(0));
        h.record_created(0, f[0], t(0));
        h.record_rotation(2, f[2], t(1));
        h.record_rotation(3, f[3], t(2));
        assert_eq!(h.keys[&2].demoted, Some(t(2)));
        // Key 3 (the primary) went: Keystone used key 2 from then on, a moment up to now.
        let mut disk = h.fingerprints();
        let primary = disk.remove(&3).unwrap();
        h.reconcile(&disk, t(5));
        assert_eq!(h.primary(), Some(2));
        assert_eq!(h.keys[&2].demoted, None);
        assert_eq!(h.keys[&2].promoted, Some(t(5)));
        // A restored primary makes key 2 a secondary again, demoted now.
        h.keys.insert(3, h.keys[&2].clone());
        h.keys.get_mut(&3).unwrap().fingerprint = primary;
        h.stood_in(2, &Now::from(t(7)));
        assert_eq!(h.keys[&2].demoted, Some(t(7)));
    }

    #[test]
    fn vanished_and_replaced_keys_are_reported_and_remembered() {
        let f = fps(4);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1]), (2, f[2])]), t(0));
        let notes = h.reconcile(&BTreeMap::from([(0, f[0]), (2, f[3])]), t(1));
        assert!(notes.contains(&Observation::Vanished {
            number: 1,
            fingerprint: f[1]
        }));
        assert!(notes.contains(&Observation::Replaced { number: 2 }));
        assert!(was_purged(&h, f[1]) && was_purged(&h, f[2]));
        assert!(!h.purged.iter().any(|p| p.by_fernetd));
    }

    #[test]
    fn only_the_newest_purges_are_kept() {
        let f = fps(PURGED_KEPT + 8);
        let mut h = History::new();
        for (i, fp) in f.iter().enumerate() {
            let n = i as u64 + 1;
            h.reconcile(&BTreeMap::from([(n, *fp)]), t(i as i64));
            h.record_purge(n, t(i as i64));
        }
        assert_eq!(h.purged.len(), PURGED_KEPT);
        assert!(was_purged(&h, f[f.len() - 1]) && was_purged(&h, f[8]));
        assert!(!was_purged(&h, f[7]));
    }

    /// A hostile re-test: `cluster init --force --force-purge` on a cluster older than the
    /// window purged 22 keys in one apply; the records beyond PURGED_KEPT were trimmed before
    /// the save dropped their repair copies, so 7 copies stayed unexplained and every node's
    /// status was critical ("left the disk unseen ... until now + window") on every run.
    #[test]
    fn a_batch_of_purges_keeps_every_record_until_a_later_moment() {
        let all = fps(PURGED_KEPT + 8);
        let (f, next) = all.split_at(PURGED_KEPT + 7);
        let mut h = History::new();
        let disk: BTreeMap<u64, Fingerprint> = f
            .iter()
            .enumerate()
            .map(|(i, fp)| (i as u64 + 1, *fp))
            .collect();
        h.reconcile(&disk, t(0));
        for n in disk.keys() {
            h.record_purge(*n, t(10));
        }
        assert_eq!(h.purged.len(), PURGED_KEPT + 7);
        assert!(f.iter().all(|fp| h.copy_may_go(*fp, &Now::from(t(10)))));
        // The next moment's record trims them.
        h.reconcile(&BTreeMap::from([(99, next[0])]), t(11));
        h.record_purge(99, t(11));
        assert_eq!(h.purged.len(), PURGED_KEPT);
    }

    #[test]
    fn an_open_loss_outlives_any_number_of_purges() {
        let f = fps(PURGED_KEPT + 9);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(1, f[0])]), t(0));
        h.reconcile(&BTreeMap::new(), t(0));
        h.record_loss(1, f[0], t(1000));
        for (i, fp) in f.iter().enumerate().skip(1) {
            let n = i as u64 + 1;
            h.reconcile(&BTreeMap::from([(n, *fp)]), t(i as i64));
            h.record_purge(n, t(i as i64));
        }
        assert_eq!(h.purged.len(), PURGED_KEPT + 1);
        assert!(h.copies_kept(&Now::from(t(999))).contains(&f[0]));
        // Once its window closed, it goes with the next purge like any other.
        h.reconcile(&BTreeMap::from([(99, f[1])]), t(1001));
        h.record_purge(99, t(1001));
        assert_eq!(h.purged.len(), PURGED_KEPT);
        assert!(!was_purged(&h, f[0]));
    }

    #[test]
    fn what_a_state_file_says_is_judged_against_the_disk() {
        let f = fps(4);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        h.record_rotation(2, f[2], t(1));
        h.record_rotation(3, f[3], t(2));
        let disk = h.fingerprints();
        assert!(h.contradictions(&disk).is_empty());
        let purged = |number: u64, fingerprint: Fingerprint| PurgedKey {
            number,
            fingerprint,
            at: t(2),
            by_fernetd: true,
            lost_until: None,
            since_boot: None,
            copy_until: None,
        };
        // The primary (key 3) and the staged key recorded as purged: contradictions.
        let mut forged = h.clone();
        forged.purged = vec![purged(3, disk[&3]), purged(0, disk[&0])];
        let c = forged.contradictions(&disk);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].field, "purged[0]");
        assert!(c[1].problem.contains("the staged key 0"), "{c:?}");
        // A number fernetd could never have purged.
        forged.purged = vec![purged(7, f[0])];
        assert!(forged.contradictions(&disk)[0]
            .problem
            .contains("only purges keys below"));
        // The disk lost its top keys outside fernetd: below a purge the file, whose primary
        // is above it, explains.
        let mut fell = h.clone();
        fell.record_purge(2, t(3));
        let low = BTreeMap::from([(0, disk[&0]), (1, disk[&1])]);
        assert!(fell.contradictions(&low).is_empty());
        // A secondary still on disk: an interrupted purge, adopted again, not a contradiction.
        forged.purged = vec![purged(1, disk[&1])];
        forged.keys.remove(&1);
        assert!(forged.contradictions(&disk).is_empty());
        assert_eq!(forged.purged_on_disk(&disk), vec![1]);
        // Times in the future, by field.
        let mut late = h.clone();
        late.last_rotation = Some(t(100));
        late.keys.get_mut(&2).unwrap().demoted = Some(t(90));
        let future: Vec<String> = late
            .future(&t(3).into())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(future, vec!["last_rotation", "keys.2.demoted"]);
        assert!(h.future(&t(3).into()).is_empty());
    }

    #[test]
    fn schedules_count_from_the_last_rotation_or_from_adoption() {
        let f = fps(3);
        let mut h = History::new();
        assert_eq!(h.schedule_basis(), None);
        // Adopted from keystone-manage: no rotation seen, the primary first seen at t(2).
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(2));
        assert_eq!(h.last_rotation, None);
        assert_eq!(h.schedule_basis(), Some(t(2)));
        h.record_rotation(2, f[2], t(5));
        assert_eq!(h.schedule_basis(), Some(t(5)));
    }

    fn at(wall_h: i64, boot: &str, boot_h: u64) -> Now {
        Now {
            wall: t(wall_h),
            boot: Some(BootStamp {
                boot: boot.into(),
                ms: boot_h * 3_600_000,
            }),
        }
    }

    #[test]
    fn a_loss_window_counts_like_a_retention() {
        // Recorded at t(0) (boot clock 10 h), open for 5 h by the clock of that moment.
        let rec = at(0, "a", 10);
        let open = |now: &Now| open_until(rec.wall, rec.boot.as_ref(), t(5), now);
        assert_eq!(open(&at(2, "a", 12)), Some(t(5)));
        assert_eq!(open(&at(5, "a", 15)), None);
        // The wall clock was a day behind when it was recorded and is right again: 2 h have
        // passed on the boot clock, so 3 h are left, from the right clock.
        assert_eq!(open(&at(26, "a", 12)), Some(t(29)));
        // A step forward closes nothing either; the end said is the later plausible one.
        assert_eq!(open(&at(100, "a", 12)), Some(t(103)));
        // Another boot: the wall clock alone, a recorded time in the future no time.
        assert_eq!(open(&at(6, "b", 1)), None);
        assert_eq!(open(&at(-30, "b", 1)), Some(t(5)));
        // A record written before the stamp was kept closes at its end by the wall clock.
        assert_eq!(open_until(t(0), None, t(5), &at(26, "a", 12)), None);
        assert_eq!(open_until(t(0), None, t(5), &at(4, "a", 12)), Some(t(5)));
        // Old state files read: no stamp, no `unseen`.
        let old = r#"{"version":1,"keys":{},"purged":[{"number":3,
            "fingerprint":"0000000000000000","at":"2026-01-01T00:00:00Z","by_fernetd":false,
            "lost_until":"2026-01-01T05:00:00Z"}]}"#;
        let h: History = serde_json::from_str(old).unwrap();
        assert_eq!(h.purged[0].since_boot, None);
        assert!(h.unseen.is_empty());
        assert!(!serde_json::to_string(&h).unwrap().contains("unseen"));
    }

    #[test]
    fn a_copy_goes_only_on_evidence_and_one_unexplained_is_a_loss_from_now() {
        let f = fps(3);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        let disk = h.fingerprints();
        let now = at(1, "a", 1);
        // Not on disk, never recorded: unexplained, kept.
        assert_eq!(h.unexplained([f[0], f[1], f[2]], &disk), vec![f[2]]);
        assert!(!h.copy_may_go(f[2], &now));
        h.record_unseen(f[2], Duration::from_secs(3600), &now);
        assert!(h.unexplained([f[2]], &disk).is_empty());
        assert!(h.copies_kept(&now).contains(&f[2]));
        assert!(!h.copy_may_go(f[2], &at(1, "a", 1)));
        // Its window closes by the boot clock, not by a wall clock stepped back.
        assert!(!h.copy_may_go(f[2], &at(30, "a", 1)));
        assert!(h.copy_may_go(f[2], &at(3, "a", 3)));
        // A purge fernetd made is evidence.
        h.record_purge(1, t(2));
        assert!(h.copy_may_go(f[1], &at(3, "a", 3)));
        assert!(!h.copy_may_go(f[0], &at(3, "a", 3)));
    }

    #[test]
    fn a_key_set_keeps_the_local_evidence_and_records_what_it_replaces() {
        let f = fps(5);
        let now = at(1, "a", 1);
        let mut local = History::new();
        local.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1]), (2, f[2])]), t(0));
        // Key 2 found gone inside its window; a copy's material lost unseen.
        let disk = BTreeMap::from([(0, f[0]), (1, f[1])]);
        local.reconcile(&disk, now.clone());
        local.record_loss(2, f[2], t(5));
        local.record_unseen(f[3], Duration::from_secs(3600), &now);
        // The set holds other keys, and key 2's material is not among them.
        let mut set = History::new();
        set.reconcile(&BTreeMap::from([(0, f[4]), (1, f[1])]), t(0));
        set.keep_evidence(&local, &disk, &now);
        assert!(set.copies_kept(&now).contains(&f[2]));
        assert!(set.copies_kept(&now).contains(&f[3]));
        // Local key 0, replaced by the set's: recorded gone, its copy may go.
        assert!(set.copy_may_go(f[0], &now));
        assert!(set.contradictions(&set.fingerprints()).is_empty());
    }

    #[test]
    fn a_departed_name_counts_again_only_for_word_of_a_later_set() {
        let mut l = Lineage::new().unwrap();
        l.members = BTreeMap::from([
            ("a".into(), Member::default()),
            ("b".into(), Member::default()),
            ("c".into(), Member::default()),
        ]);
        let before = l.members.clone();
        let mut next = l.next();
        next.members.remove("b");
        next.members.remove("c");
        // b's last acknowledgement said t(50) by b's clock; c had no record.
        let heard = BTreeMap::from([("b".to_string(), t(50))]);
        let gone = next.leaving(&before, None);
        next.note_departures(&gone, t(100), &heard);
        let gen = next.generation;
        assert_eq!(
            next.departed["b"],
            Departure {
                generation: gen,
                at: t(100),
                last_heard: Some(t(50))
            }
        );
        let cluster = next.cluster.clone();
        // A name that never left: always.
        assert!(next.heard_since_departure("a", None, None));
        // b's record from before (an etcd backup's): that record, or an older one.
        assert!(!next.heard_since_departure("b", None, Some(t(50))));
        assert!(!next.heard_since_departure("b", None, Some(t(49))));
        // Bound to this lineage, the generation alone decides, whatever the clock says.
        assert!(!next.heard_since_departure("b", Some((&cluster, gen - 1)), Some(t(999))));
        assert!(next.heard_since_departure("b", Some((&cluster, gen)), Some(t(1))));
        // A new word from b: later by its own clock, even if behind the remover's (t(100)).
        assert!(next.heard_since_departure("b", None, Some(t(51))));
        // Bound to another lineage (a forced init since): its clock decides.
        assert!(next.heard_since_departure("b", Some(("other", 1)), Some(t(51))));
        assert!(!next.heard_since_departure("b", Some(("other", 9)), Some(t(50))));
        // Nothing to compare with: counted.
        assert!(next.heard_since_departure("b", None, None));
        assert!(next.heard_since_departure("c", None, Some(t(1))));
        // Carried by later generations; a member again is departed no more.
        let mut later = next.next();
        assert_eq!(later.departed, next.departed);
        let before = later.members.clone();
        later.members.insert("b".into(), Member::default());
        later.members.insert("c".into(), Member::default());
        let gone = later.leaving(&before, None);
        later.note_departures(&gone, t(200), &BTreeMap::new());
        assert!(later.departed.is_empty());
        // Bounded: the oldest departures go first.
        for i in 0..DEPARTED_KEPT + 3 {
            let mut n = later.next();
            let gone = n.leaving(&BTreeMap::new(), Some(&format!("n{i}")));
            n.note_departures(&gone, t(300 + i as i64), &BTreeMap::new());
            later = n;
        }
        assert_eq!(later.departed.len(), DEPARTED_KEPT);
        assert!(!later.departed.contains_key("n0") && later.departed.contains_key("n34"));
    }

    #[test]
    fn a_node_remembers_the_lineages_it_left() {
        let c = Lineage::new().unwrap();
        let mut x = Lineage::new().unwrap();
        x.remember_left(&c);
        assert_eq!(x.left, std::slice::from_ref(&c.cluster));
        // Its own next generation keeps them, and never lists itself.
        let mut x2 = x.next();
        x2.remember_left(&x);
        assert_eq!(x2.left, std::slice::from_ref(&c.cluster));
        // Back and forth: each once, the newest last, at most LEFT_KEPT.
        let mut held = x2;
        for _ in 0..LEFT_KEPT + 2 {
            let mut n = Lineage::new().unwrap();
            n.remember_left(&held);
            held = n;
        }
        assert_eq!(held.left.len(), LEFT_KEPT);
        assert!(!held.left.contains(&c.cluster) && !held.left.contains(&held.cluster));
    }

    #[test]
    fn serde_round_trip() {
        let f = fps(2);
        let mut h = History::new();
        h.reconcile(&BTreeMap::from([(0, f[0]), (1, f[1])]), t(0));
        h.record_purge(1, t(2));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
    }
}
