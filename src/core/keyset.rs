//! A repository's keys and history as one value: what cluster mode stores in etcd and every
//! node applies to its local repository.
//!
//! The encoded form is JSON (`{"version":1,"keys":{"0":"<44 chars>",...},"history":{...}}`)
//! and holds key material: it lives in zeroizing buffers, is never logged, and is sealed
//! (see [`crate::seal`]) when a key-encryption key is configured.
//!
//! Invariant: pure. Encoding, decoding and validation touch neither disk nor network.

// Lineage lives with the history that carries it; re-exported for the paths that name it here.
use crate::core::history::History;
pub use crate::core::history::{Binding, Departure, Lineage, Member, DEPARTED_KEPT, PURGES_KEPT};
use crate::core::key::{Fingerprint, Key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::{Zeroize, Zeroizing};

const VERSION: u32 = 1;

/// How many generations a key set may be ahead of the one a node holds in the same lineage.
/// Each rotation moves one; a node that was away for up to this many rotations catches up by
/// itself, and a set further ahead (a huge generation edited into etcd, 2^64-1 among them) is
/// refused as an input: `cluster init --force --from GOOD` starts a new lineage every node
/// takes. At one rotation an hour this is 41 days.
pub const GENERATION_STEP: u64 = 1000;

/// Keys by number (0 staged, highest primary) with their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    pub keys: BTreeMap<u64, Key>,
    pub history: History,
}

/// How an offered key set relates to the one a node holds: only a successor may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Succession {
    /// Later than what the node holds (or the node holds none yet): apply it.
    Newer,
    /// The very set the node holds: nothing to take, only local drift to undo.
    Same,
    /// Earlier than what the node holds: a restored backup or a value written back.
    Older { held: Lineage, offered: u64 },
    /// Another cluster's set (a different `cluster init`).
    Foreign { held: Lineage, offered: String },
    /// Different keys under the generation the node holds.
    Diverged { held: Lineage },
    /// More than [`GENERATION_STEP`] generations ahead of the one the node holds.
    TooFar { held: Lineage, offered: u64 },
}

impl Succession {
    /// Whether the node may take the offered set.
    pub fn acceptable(&self) -> bool {
        matches!(self, Succession::Newer | Succession::Same)
    }

    /// Whether the node holds a newer set than the one offered, and should publish it again.
    pub fn behind_us(&self) -> bool {
        matches!(self, Succession::Older { .. })
    }
}

impl std::fmt::Display for Succession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Succession::Newer => f.write_str("newer than the set this node holds"),
            Succession::Same => f.write_str("the set this node holds"),
            Succession::Older { held, offered } => write!(
                f,
                "generation {offered} is older than the {held} this node already applied (a \
                 restored etcd backup, or an old value written back)"
            ),
            Succession::Foreign { held, offered } => write!(
                f,
                "it belongs to cluster {offered}, but this node follows {held} (another \
                 `cluster init`; --force-purge on `cluster init` makes nodes take it)"
            ),
            Succession::Diverged { held } => write!(
                f,
                "it holds other keys under the {held} this node already applied"
            ),
            Succession::TooFar { held, offered } => write!(
                f,
                "generation {offered} is more than {GENERATION_STEP} ahead of the {held} this \
                 node applied (generations move by one per rotation; `fernetd cluster init \
                 --force --from GOOD` starts a new lineage from a good node's keys)"
            ),
        }
    }
}

/// Judges `offered` against what a node holds: the lineage its history records (the set it
/// last applied) and the keys it records (the set's, and any it keeps beyond it). Pure.
pub fn succession(local: &History, offered: &KeySet) -> Succession {
    let Some(held) = local.lineage.as_ref() else {
        return Succession::Newer;
    };
    let Some(o) = offered.history.lineage.as_ref() else {
        // A set without lineage predates it: older than any set that has one.
        return Succession::Older {
            held: held.clone(),
            offered: 0,
        };
    };
    if o.cluster != held.cluster {
        return if forced_for(Some(held), Some(o)) || o.from.as_ref() == Some(&held.cluster) {
            Succession::Newer
        } else if taken_and_passed(held, o) || held.left.contains(&o.cluster) {
            // A set whose forced purges this node took, and a later one since, or of a
            // lineage it left: an etcd backup from before. Older: the node publishes its own
            // again.
            Succession::Older {
                held: held.clone(),
                offered: o.generation,
            }
        } else {
            Succession::Foreign {
                held: held.clone(),
                offered: o.cluster.clone(),
            }
        };
    }
    match o.generation.cmp(&held.generation) {
        std::cmp::Ordering::Greater if o.generation - held.generation > GENERATION_STEP => {
            Succession::TooFar {
                held: held.clone(),
                offered: o.generation,
            }
        }
        std::cmp::Ordering::Greater => Succession::Newer,
        std::cmp::Ordering::Less => Succession::Older {
            held: held.clone(),
            offered: o.generation,
        },
        // The node may hold more (keys it keeps beyond the set while they may still decrypt
        // live tokens); every key of the set must be one it holds.
        std::cmp::Ordering::Equal
            if offered
                .fingerprints()
                .iter()
                .all(|(n, fp)| local.keys.get(n).is_some_and(|r| r.fingerprint == *fp)) =>
        {
            Succession::Same
        }
        std::cmp::Ordering::Equal => Succession::Diverged { held: held.clone() },
    }
}

/// Whether `offered` removes what it drops on a node that last applied `held`, as the
/// operator's `--force-purge` does: it is the forced set, or it follows a forced purge the
/// node never took (its id is not among the node's: down or cut off through it, the node
/// would have taken the forced set then). A node that never applied a set keeps the gate:
/// its keys are its own, not the ones the operator purged. Pure.
pub fn forced_for(held: Option<&Lineage>, offered: Option<&Lineage>) -> bool {
    purge_missed(held, offered) || forced_now(held, offered)
}

/// Whether `offered` is the operator's forced set and the node that last applied `held` has
/// not finished taking it: its purge id is new to the node (a node that never applied a set,
/// and a forced set from before purge ids, count as new), or it is the very set the node
/// applied last (same lineage and generation: an apply interrupted after its history was
/// saved and before the purged keys were removed is finished). A forced set the node took
/// and moved on from, seen again (an etcd backup restored after the cluster moved on), is no
/// order to purge: it is judged as any set. Pure.
pub fn forced_now(held: Option<&Lineage>, offered: Option<&Lineage>) -> bool {
    offered.is_some_and(|o| {
        o.forced
            && match (held, o.purges.last()) {
                (Some(h), Some(id)) => {
                    !h.purges.contains(id)
                        || (h.cluster == o.cluster && h.generation == o.generation)
                }
                _ => true,
            }
    })
}

/// Whether `offered` follows a forced purge the node that last applied `held` never took
/// (see [`forced_for`]). Such a purge covers the cluster's keys (fernetd made them); a key
/// another tool made on the node is kept like any live key ([`History::made`]). Pure.
pub fn purge_missed(held: Option<&Lineage>, offered: Option<&Lineage>) -> bool {
    match (held, offered) {
        (Some(h), Some(o)) => o.purges.iter().any(|p| !h.purges.contains(p)),
        _ => false,
    }
}

/// Whether the node holding `held` took every forced purge `offered` follows, and one after
/// them (its newest purge is not among the offered set's).
fn taken_and_passed(held: &Lineage, offered: &Lineage) -> bool {
    !offered.purges.is_empty()
        && offered.purges.iter().all(|p| held.purges.contains(p))
        && held
            .purges
            .last()
            .is_some_and(|p| !offered.purges.contains(p))
}

/// Whether a node may take a set it read from the etcd it reached (`reached`: that etcd's
/// cluster id and the prefix), judged by the etcd the set says it was written into and the
/// one the node's own lineage records. A set written elsewhere (copied, or restored from
/// another etcd's snapshot) is refused; a node bound to another etcd refuses every set
/// except those of its own lineage written into this one (the operator moving the cluster:
/// `cluster init --from` a node's repository continues its lineage there). Sets
/// and nodes from before bindings were recorded pass. The reason for a refusal. Pure.
pub fn bound_elsewhere(
    held: Option<&Lineage>,
    offered: Option<&Lineage>,
    reached: &Binding,
) -> Option<String> {
    if let Some(written) = offered.and_then(|o| o.etcd.as_ref()) {
        if written != reached {
            return Some(format!(
                "it was written into {written}, but this node reached {reached} (a value \
                 copied or restored from another etcd; `fernetd cluster init --force --from \
                 GOOD --move-etcd` binds the cluster to this etcd)"
            ));
        }
    }
    let held_lineage = held?;
    let bound = held_lineage.etcd.as_ref()?;
    // Written into this etcd (checked above) in the node's own lineage: only a write through
    // fernetd puts one there, `cluster init` continuing it, or a rotation after one.
    let moved = offered.is_some_and(|o| o.etcd.is_some() && o.cluster == held_lineage.cluster);
    (bound != reached && !moved).then(|| {
        format!(
            "this node follows the {held_lineage} in {bound}, but reached {reached} (a wrong \
             endpoint, or a stray etcd?); it waits: `fernetd cluster init --from DIR \
             --move-etcd` on this etcd moves the cluster here on purpose"
        )
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("not a fernetd key set ({0})")]
    Malformed(String),
    #[error("key set format version {0} is not supported")]
    Version(u32),
    #[error("key {0} in the key set is not a valid Fernet key")]
    BadKey(u64),
    #[error("the key set has no staged key 0 and a primary ({0} keys)")]
    Incomplete(usize),
    #[error("the key set's history does not match key {0}")]
    HistoryMismatch(u64),
    #[error("key {0} is the largest number a key can have: no rotation can follow it")]
    TooLarge(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u32,
    keys: BTreeMap<u64, String>,
    history: History,
}

impl KeySet {
    /// A new repository's keys, in memory: 1 (primary) and 0 (staged), as `setup` writes.
    pub fn fresh(now: &crate::core::clock::Now) -> Result<KeySet, getrandom::Error> {
        let mut history = History::new();
        let mut keys = BTreeMap::new();
        for n in [1, 0] {
            let k = Key::generate()?;
            history.record_created(n, k.fingerprint(), now);
            keys.insert(n, k);
        }
        history.last_rotation = Some(now.wall);
        history.lineage = Some(Lineage::new()?);
        Ok(KeySet { keys, history })
    }

    /// A key set that Keystone could use: key 0, a primary, and a history that describes
    /// exactly these keys.
    pub fn validate(&self) -> Result<(), KeySetError> {
        if !self.keys.contains_key(&0) || self.keys.len() < 2 {
            return Err(KeySetError::Incomplete(self.keys.len()));
        }
        if let Some(n) = self
            .primary()
            .filter(|&p| p == crate::core::rotation::MAX_KEY)
        {
            return Err(KeySetError::TooLarge(n));
        }
        if self.history.keys.len() != self.keys.len() {
            let missing = self
                .keys
                .keys()
                .find(|n| !self.history.keys.contains_key(n))
                .or_else(|| {
                    self.history
                        .keys
                        .keys()
                        .find(|n| !self.keys.contains_key(n))
                });
            return Err(KeySetError::HistoryMismatch(*missing.unwrap_or(&0)));
        }
        for (n, k) in &self.keys {
            if self.history.keys.get(n).map(|r| r.fingerprint) != Some(k.fingerprint()) {
                return Err(KeySetError::HistoryMismatch(*n));
            }
        }
        Ok(())
    }

    pub fn primary(&self) -> Option<u64> {
        crate::core::history::primary(self.keys.keys().copied())
    }

    /// Number -> fingerprint: what acknowledgements and logs may show.
    pub fn fingerprints(&self) -> BTreeMap<u64, Fingerprint> {
        self.keys
            .iter()
            .map(|(n, k)| (*n, k.fingerprint()))
            .collect()
    }

    /// One Keystone rotation of the set, with the retention guard: key 0 becomes the new
    /// primary, `new_staged` the new key 0, and the keys `rotation::decide` purges are dropped.
    /// The same decision and history bookkeeping as a rotation on disk, without the disk.
    /// The set moves one generation forward (a set from before lineages starts a new one).
    pub fn rotate(
        &self,
        new_staged: Key,
        params: &crate::core::rotation::RotateParams,
        now: &crate::core::clock::Now,
    ) -> Result<(KeySet, crate::core::rotation::Decision), getrandom::Error> {
        let numbers: Vec<u64> = self.keys.keys().copied().collect();
        let decision = crate::core::rotation::decide(
            &numbers,
            &self.history,
            now,
            params.max_active_keys,
            params.retention,
            params.force_purge,
        );
        let mut next = self.clone();
        if let Some(staged) = next.keys.remove(&0) {
            next.keys.insert(decision.new_primary, staged);
        }
        next.history
            .record_rotation(decision.new_primary, new_staged.fingerprint(), now);
        next.keys.insert(0, new_staged);
        for n in &decision.purge {
            next.keys.remove(n);
            next.history.record_purge(*n, now.wall);
        }
        let mut lineage = match &self.history.lineage {
            Some(l) => l.next(),
            None => Lineage::new()?,
        };
        if params.force_purge {
            lineage.force()?;
        }
        next.history.lineage = Some(lineage);
        Ok((next, decision))
    }

    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut wire = Wire {
            version: VERSION,
            keys: self
                .keys
                .iter()
                .map(|(n, k)| (*n, k.to_text().to_string()))
                .collect(),
            history: self.history.clone(),
        };
        // Serializing plain structs into a Vec cannot fail.
        let bytes = serde_json::to_vec(&wire).unwrap_or_default();
        for v in wire.keys.values_mut() {
            v.zeroize();
        }
        Zeroizing::new(bytes)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeySet, KeySetError> {
        let mut wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            // serde's message may quote input; keep only its category and position.
            KeySetError::Malformed(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let result = (|| {
            if wire.version != VERSION {
                return Err(KeySetError::Version(wire.version));
            }
            let mut keys = BTreeMap::new();
            for (n, text) in &wire.keys {
                let k = Key::parse(text.as_bytes()).map_err(|_| KeySetError::BadKey(*n))?;
                keys.insert(*n, k);
            }
            let set = KeySet {
                keys,
                history: wire.history.clone(),
            };
            set.validate()?;
            Ok(set)
        })();
        for v in wire.keys.values_mut() {
            v.zeroize();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// What every node receives on every rotation does not grow with the number of
    /// rotations: the history keeps only the purge records a decision can still need.
    #[test]
    fn the_encoded_set_stops_growing() {
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let at = |i: i64| crate::core::clock::Now::from(t0 + chrono::Duration::hours(i));
        let params = crate::core::rotation::RotateParams {
            max_active_keys: 3,
            retention: std::time::Duration::ZERO,
            force_purge: false,
            expected_primary: None,
        };
        let mut set = KeySet::fresh(&at(0)).unwrap();
        let mut sizes = Vec::new();
        for i in 1..=1000 {
            set = set
                .rotate(Key::generate().unwrap(), &params, &at(i))
                .unwrap()
                .0;
            if i % 100 == 0 {
                sizes.push(set.encode().len());
            }
        }
        eprintln!("encoded key set every 100 rotations: {sizes:?} bytes");
        // Only numbers (keys, the generation, the count of rotations) gain a digit now and then.
        assert!(
            sizes.iter().all(|&s| s.abs_diff(sizes[0]) < 32),
            "{sizes:?}"
        );
        assert!(sizes[0] < 4096, "{sizes:?}");
    }

    fn sample() -> KeySet {
        let keys: BTreeMap<u64, Key> = [0, 3, 4]
            .into_iter()
            .map(|n| (n, Key::generate().unwrap()))
            .collect();
        let mut history = History::new();
        let fps = keys.iter().map(|(n, k)| (*n, k.fingerprint())).collect();
        history.reconcile(
            &fps,
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        );
        KeySet { keys, history }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(KeySet::decode(&s.encode()).unwrap(), s);
        assert_eq!(s.primary(), Some(4));
    }

    #[test]
    fn rotation_matches_keystone_and_keeps_history_consistent() {
        let s = sample();
        let params = crate::core::rotation::RotateParams {
            max_active_keys: 3,
            retention: std::time::Duration::ZERO,
            force_purge: false,
            expected_primary: None,
        };
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let staged = Key::generate().unwrap();
        let (next, d) = s.rotate(staged.clone(), &params, &now.into()).unwrap();
        assert_eq!(d.new_primary, 5);
        assert_eq!(next.keys.keys().copied().collect::<Vec<_>>(), vec![0, 4, 5]);
        assert_eq!(next.keys[&5], s.keys[&0]);
        assert_eq!(next.keys[&0], staged);
        next.validate().unwrap();
        assert_eq!(next.history.last_rotation, Some(now));
        // With a retention, the demoted keys stay.
        let keep = crate::core::rotation::RotateParams {
            retention: std::time::Duration::from_secs(86_400 * 3),
            ..params
        };
        let (kept, d) = s
            .rotate(Key::generate().unwrap(), &keep, &now.into())
            .unwrap();
        assert_eq!(kept.keys.len(), 4);
        assert_eq!(d.kept.len(), 1);
        kept.validate().unwrap();
    }

    #[test]
    fn only_a_successor_of_the_set_held_is_taken() {
        let now = crate::core::clock::Now::from(
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        );
        let params = crate::core::rotation::RotateParams {
            max_active_keys: 3,
            retention: std::time::Duration::ZERO,
            force_purge: false,
            expected_primary: None,
        };
        let first = KeySet::fresh(&now).unwrap();
        let rotate = |s: &KeySet| s.rotate(Key::generate().unwrap(), &params, &now).unwrap().0;
        let second = rotate(&first);
        let third = rotate(&second);
        let judge = |held: &History, o: &KeySet| succession(held, o);
        let at_second = &second.history;
        assert_eq!(judge(at_second, &third), Succession::Newer);
        assert_eq!(judge(at_second, &second), Succession::Same);
        // A restored backup, or an old value written back (sealed or not): older.
        let older = judge(at_second, &first);
        assert!(older.behind_us() && !older.acceptable(), "{older}");
        // Other keys under the same generation, another cluster, a set from before lineages.
        let mut forged = third.clone();
        forged.history.lineage = second.history.lineage.clone();
        assert!(matches!(
            judge(at_second, &forged),
            Succession::Diverged { .. }
        ));
        let foreign = KeySet::fresh(&now).unwrap();
        assert!(matches!(
            judge(at_second, &foreign),
            Succession::Foreign { .. }
        ));
        let mut unmarked = third.clone();
        unmarked.history.lineage = None;
        assert!(judge(at_second, &unmarked).behind_us());
        // A node that never applied a set takes any; the operator's forced one is taken.
        assert_eq!(judge(&History::new(), &first), Succession::Newer);
        let mut forced = foreign.clone();
        forced.history.lineage.as_mut().unwrap().forced = true;
        assert_eq!(judge(at_second, &forced), Succession::Newer);
        // The generation moves forward by one per rotation, and the flag does not carry over.
        let g = |s: &KeySet| s.history.lineage.as_ref().unwrap().generation;
        assert_eq!((g(&first), g(&second), g(&third)), (1, 2, 3));
        assert!(!rotate(&forced).history.lineage.unwrap().forced);
    }

    #[test]
    fn a_generation_far_ahead_is_refused_and_a_forced_new_lineage_is_taken_by_the_one_it_replaced()
    {
        let now = crate::core::clock::Now::from(
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        );
        let held = KeySet::fresh(&now).unwrap();
        let at = |g: u64| {
            let mut s = held.clone();
            s.history.lineage.as_mut().unwrap().generation = g;
            s
        };
        // A node that missed rotations catches up by itself, up to the step.
        assert_eq!(
            succession(&held.history, &at(1 + GENERATION_STEP)),
            Succession::Newer
        );
        for g in [2 + GENERATION_STEP, u64::MAX] {
            let far = succession(&held.history, &at(g));
            assert!(matches!(far, Succession::TooFar { offered, .. } if offered == g));
            assert!(!far.acceptable() && !far.behind_us(), "{far}");
            assert!(far.to_string().contains("cluster init --force"), "{far}");
        }
        // `cluster init --force` starts a new lineage that the nodes of the one it replaced
        // take, at any generation; another cluster's stays refused.
        let mut init = KeySet::fresh(&now).unwrap();
        assert!(matches!(
            succession(&at(u64::MAX).history, &init),
            Succession::Foreign { .. }
        ));
        let replaced = held.history.lineage.as_ref().unwrap().cluster.clone();
        init.history.lineage.as_mut().unwrap().from = Some(replaced);
        assert_eq!(succession(&at(u64::MAX).history, &init), Succession::Newer);
        let mut later = init.clone();
        later.history.lineage.as_mut().unwrap().generation = 40;
        assert_eq!(succession(&at(7).history, &later), Succession::Newer);
        let other = KeySet::fresh(&now).unwrap();
        init.history.lineage.as_mut().unwrap().from = other.history.lineage.map(|l| l.cluster);
        assert!(matches!(
            succession(&at(7).history, &init),
            Succession::Foreign { .. }
        ));
    }

    #[test]
    fn a_node_that_missed_a_forced_purge_takes_what_follows_it_and_only_that() {
        let now = crate::core::clock::Now::from(
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        );
        let params = |force_purge| crate::core::rotation::RotateParams {
            max_active_keys: 3,
            retention: std::time::Duration::ZERO,
            force_purge,
            expected_primary: None,
        };
        let rotate = |s: &KeySet, force| {
            s.rotate(Key::generate().unwrap(), &params(force), &now)
                .unwrap()
                .0
        };
        let lineage = |s: &KeySet| s.history.lineage.clone().unwrap();
        let before = KeySet::fresh(&now).unwrap();
        let purge = rotate(&before, true);
        let after = rotate(&purge, false);
        // The flag is the forced generation's; its id is carried on.
        assert!(!lineage(&after).forced);
        assert_eq!(lineage(&after).purges, lineage(&purge).purges);
        assert_eq!(lineage(&purge).purges.len(), 1);
        // Down through the purge: what follows it is forced for it. Took it: not.
        assert!(forced_for(Some(&lineage(&before)), Some(&lineage(&after))));
        assert!(!forced_for(Some(&lineage(&purge)), Some(&lineage(&after))));
        // A node that never applied a set keeps the gate (its keys are its own); the forced
        // generation itself is forced for every node.
        assert!(!forced_for(None, Some(&lineage(&after))));
        assert!(forced_for(None, Some(&lineage(&purge))));

        // Another lineage that followed a purge the node never took: taken, as the forced
        // set was; the same set once the node remembers that purge (an old value restored
        // after the cluster moved on): another cluster's, refused.
        let mut other = rotate(&rotate(&KeySet::fresh(&now).unwrap(), true), false);
        let o = lineage(&other);
        assert_eq!(succession(&after.history, &other), Succession::Newer);
        let mut moved_on = after.history.clone();
        moved_on.lineage.as_mut().unwrap().remember(&o.purges);
        assert!(matches!(
            succession(&moved_on, &other),
            Succession::Foreign { .. }
        ));
        assert!(!forced_for(moved_on.lineage.as_ref(), Some(&o)));
        // The forced set itself, restored from a backup once the node took a later purge:
        // no order to purge, and older than what the node holds (it publishes its own).
        let mut later = moved_on.clone();
        later
            .lineage
            .as_mut()
            .unwrap()
            .remember(&["later".to_string()]);
        let forced_head = rotate(&KeySet::fresh(&now).unwrap(), true);
        later
            .lineage
            .as_mut()
            .unwrap()
            .remember(&lineage(&forced_head).purges);
        later
            .lineage
            .as_mut()
            .unwrap()
            .remember(&["latest".to_string()]);
        assert!(!forced_for(
            later.lineage.as_ref(),
            Some(&lineage(&forced_head))
        ));
        assert!(succession(&later, &forced_head).behind_us());
        // The forced set the node applied last, seen again (its purge interrupted by a
        // crash after the history was saved): still an order, so the purge is finished.
        assert!(forced_now(
            Some(&lineage(&forced_head)),
            Some(&lineage(&forced_head))
        ));
        // Not taken yet: forced, as before.
        assert!(forced_for(
            Some(&lineage(&after)),
            Some(&lineage(&forced_head))
        ));
        // A lineage the node left (a remedy moved it on): older, not another cluster's.
        let mut left = moved_on.clone();
        left.lineage
            .as_mut()
            .unwrap()
            .left
            .push(lineage(&other).cluster.clone());
        assert!(succession(&left, &other).behind_us());
        // Another lineage that never followed a purge stays another cluster's.
        other.history.lineage.as_mut().unwrap().purges.clear();
        assert!(matches!(
            succession(&after.history, &other),
            Succession::Foreign { .. }
        ));

        // The ids kept are the newest, in order, without repeats.
        let mut l = lineage(&before);
        let ids: Vec<String> = (0..PURGES_KEPT + 4).map(|i| format!("{i:02}")).collect();
        l.remember(&ids[..3]);
        l.remember(&ids);
        assert_eq!(l.purges, ids[4..].to_vec());
    }

    #[test]
    fn a_set_from_another_etcd_or_a_node_bound_elsewhere_is_refused() {
        let here = Binding {
            cluster_id: "a1".into(),
            prefix: "/fernetd".into(),
        };
        let there = Binding {
            cluster_id: "b2".into(),
            ..here.clone()
        };
        let other_prefix = Binding {
            prefix: "/other".into(),
            ..here.clone()
        };
        let lineage = |etcd: Option<&Binding>| Lineage {
            cluster: "c".into(),
            generation: 3,
            forced: false,
            purges: Vec::new(),
            from: None,
            etcd: etcd.cloned(),
            members: Default::default(),
            departed: Default::default(),
            left: Default::default(),
        };
        let unbound = lineage(None);
        let bound_here = lineage(Some(&here));
        let bound_there = lineage(Some(&there));
        // Before bindings, and bound here: taken.
        assert_eq!(bound_elsewhere(None, None, &here), None);
        assert_eq!(bound_elsewhere(Some(&unbound), Some(&unbound), &here), None);
        assert_eq!(
            bound_elsewhere(Some(&bound_here), Some(&bound_here), &here),
            None
        );
        assert_eq!(bound_elsewhere(None, Some(&bound_here), &here), None);
        // A node bound elsewhere (another id, or another prefix) offered another lineage's
        // set here: refused, naming both.
        let another = Lineage {
            cluster: "d".into(),
            ..bound_here.clone()
        };
        for elsewhere in [&there, &other_prefix] {
            let node = lineage(Some(elsewhere));
            let why = bound_elsewhere(Some(&node), Some(&another), &here).unwrap();
            assert!(why.contains(&elsewhere.to_string()) && why.contains(&here.to_string()));
            assert!(bound_elsewhere(Some(&node), None, &here).is_some());
        }
        // A value written into another etcd, read here: refused whatever the node holds.
        let why = bound_elsewhere(None, Some(&bound_there), &here).unwrap();
        assert!(why.contains("written into etcd cluster b2"), "{why}");
        assert!(bound_elsewhere(Some(&bound_there), Some(&bound_there), &here).is_some());
        // A set of the node's own lineage written into this etcd (`cluster init` continuing
        // it, or a rotation after one) moves a node bound elsewhere; a set of its lineage written into
        // yet another etcd does not.
        assert_eq!(
            bound_elsewhere(Some(&bound_there), Some(&bound_here), &here),
            None
        );
        let moved = lineage(Some(&here));
        assert_eq!(
            bound_elsewhere(Some(&bound_there), Some(&moved), &here),
            None
        );
        let init_there = lineage(Some(&there));
        assert!(bound_elsewhere(Some(&bound_there), Some(&init_there), &here).is_some());
        // Nor does another cluster's `cluster init` (a stray etcd someone started one in).
        let stray = Lineage {
            cluster: "other".into(),
            ..moved.clone()
        };
        assert!(bound_elsewhere(Some(&bound_there), Some(&stray), &here).is_some());
    }

    #[test]
    fn refuses_incomplete_or_inconsistent_sets() {
        let mut s = sample();
        s.keys.remove(&0);
        assert!(matches!(s.validate(), Err(KeySetError::Incomplete(2))));
        let mut s = sample();
        let k = Key::generate().unwrap();
        s.keys.insert(3, k);
        assert_eq!(s.validate(), Err(KeySetError::HistoryMismatch(3)));
        assert!(matches!(
            KeySet::decode(b"{}"),
            Err(KeySetError::Malformed(_))
        ));
        let text = String::from_utf8(sample().encode().to_vec()).unwrap();
        let bad = text.replacen("\"version\":1", "\"version\":9", 1);
        assert_eq!(KeySet::decode(bad.as_bytes()), Err(KeySetError::Version(9)));
    }

    #[test]
    fn errors_never_quote_key_material() {
        let s = sample();
        let text = String::from_utf8(s.encode().to_vec()).unwrap();
        // Corrupt one key: the error names the number only.
        let k4 = s.keys[&4].to_text().to_string();
        let broken = text.replace(&k4, &k4[..40]);
        let e = KeySet::decode(broken.as_bytes()).unwrap_err().to_string();
        assert_eq!(e, "key 4 in the key set is not a valid Fernet key");
        let e = KeySet::decode(&text.as_bytes()[..text.len() - 5])
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&k4[..10]), "{e}");
    }
}
