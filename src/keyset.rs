//! A repository's keys and history as one value: what cluster mode stores in etcd and every
//! node applies to its local repository.
//!
//! The encoded form is JSON (`{"version":1,"keys":{"0":"<44 chars>",...},"history":{...}}`)
//! and holds key material: it lives in zeroizing buffers, is never logged, and is sealed
//! (see [`crate::seal`]) when a key-encryption key is configured.
//!
//! Invariant: pure. Encoding, decoding and validation touch neither disk nor network.

use crate::history::History;
use crate::key::{Fingerprint, Key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::{Zeroize, Zeroizing};

const VERSION: u32 = 1;

/// Keys by number (0 staged, highest primary) with their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    pub keys: BTreeMap<u64, Key>,
    pub history: History,
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
    pub fn fresh(now: chrono::DateTime<chrono::Utc>) -> Result<KeySet, getrandom::Error> {
        let mut history = History::new();
        let mut keys = BTreeMap::new();
        for n in [1, 0] {
            let k = Key::generate()?;
            history.record_created(n, k.fingerprint(), now);
            keys.insert(n, k);
        }
        history.last_rotation = Some(now);
        Ok(KeySet { keys, history })
    }

    /// A key set that Keystone could use: key 0, a primary, and a history that describes
    /// exactly these keys.
    pub fn validate(&self) -> Result<(), KeySetError> {
        if !self.keys.contains_key(&0) || self.keys.len() < 2 {
            return Err(KeySetError::Incomplete(self.keys.len()));
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
        self.keys.keys().copied().filter(|&n| n > 0).max()
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
    pub fn rotate(
        &self,
        new_staged: Key,
        params: &crate::repository::RotateParams,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (KeySet, crate::rotation::Decision) {
        let numbers: Vec<u64> = self.keys.keys().copied().collect();
        let decision = crate::rotation::decide(
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
            next.history.record_purge(*n, now);
        }
        (next, decision)
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
        let params = crate::repository::RotateParams {
            max_active_keys: 3,
            retention: std::time::Duration::ZERO,
            force_purge: false,
        };
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let staged = Key::generate().unwrap();
        let (next, d) = s.rotate(staged.clone(), &params, now);
        assert_eq!(d.new_primary, 5);
        assert_eq!(next.keys.keys().copied().collect::<Vec<_>>(), vec![0, 4, 5]);
        assert_eq!(next.keys[&5], s.keys[&0]);
        assert_eq!(next.keys[&0], staged);
        next.validate().unwrap();
        assert_eq!(next.history.last_rotation, Some(now));
        // With a retention, the demoted keys stay.
        let keep = crate::repository::RotateParams {
            retention: std::time::Duration::from_secs(86_400 * 3),
            ..params
        };
        let (kept, d) = s.rotate(Key::generate().unwrap(), &keep, now);
        assert_eq!(kept.keys.len(), 4);
        assert_eq!(d.kept.len(), 1);
        kept.validate().unwrap();
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
