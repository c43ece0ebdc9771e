//! Sealing: authenticated encryption of what cluster mode stores in etcd, under a
//! key-encryption key (`[cluster] seal_key_file`), or several while the seal key changes
//! (`[cluster] seal_key_files`: values open with any of them and are sealed with the first).
//!
//! XChaCha20-Poly1305 with a random 24-byte nonce; the etcd key the value is stored under is
//! the associated data, so a value copied under another prefix or repository does not open.
//! A tampered or foreign value is refused before anything reaches the disk.
//!
//! Two formats: `v1` (`MAGIC || nonce || ciphertext`), written by a configuration naming one
//! `seal_key_file` exactly as before; `v2` (`MAGIC_V2 || key id || nonce || ciphertext`, the
//! id authenticated with the etcd key), written under `seal_key_files`, so that a node lacking
//! the key can say which one it lacks. The id is a fingerprint of the seal key (the first 8
//! bytes of its SHA-256), never its material; read from a value a node cannot open, it is
//! only a claim, used for the message and nothing else.
//!
//! Records kept in the clear (a node's acknowledgement, its clock answers) carry a MAC instead
//! when a seal key is configured: HMAC-SHA256 under a key derived from the seal key for that
//! use alone (HMAC of the seal key over [`RECORD_MAC_DOMAIN`]; the seal key itself never keys
//! a MAC), over the etcd key the record is stored under and the record's bytes, which name
//! the node. A record copied under another node's key, or edited, does not verify; one
//! without a MAC counts as written by nobody while the node has a seal key (unless the
//! operator set `insecure_unsealed`, while a cluster moves to sealing).
//!
//! Invariant: pure apart from reading the key file; the seal key is zeroized on drop and never
//! shown.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::Path;
use zeroize::Zeroizing;

/// Prefix of a sealed value (and its format version).
pub const MAGIC: &[u8] = b"fernetd-sealed-v1:";
/// Prefix of a sealed value that names the seal key's id (see the module's comment).
pub const MAGIC_V2: &[u8] = b"fernetd-sealed-v2:";
/// What a record MAC's key is derived for: no other use of the seal key derives this key.
pub const RECORD_MAC_DOMAIN: &[u8] = b"fernetd record-mac v1";
const NONCE: usize = 24;
const ID: usize = 8;

/// A seal key's id: the first 8 bytes of the SHA-256 of its material (what a Fernet key's
/// fingerprint is), 16 hex digits; safe to show and to log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SealKeyId([u8; ID]);

impl SealKeyId {
    fn of(key: &crate::core::key::Key) -> SealKeyId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.bytes());
        let mut out = [0u8; ID];
        out.copy_from_slice(&digest[..ID]);
        SealKeyId(out)
    }
}

impl std::fmt::Display for SealKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.pad(&hex)
    }
}

impl std::fmt::Debug for SealKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The key-encryption key: 32 bytes, stored as 44 characters of url-safe base64 (the format
/// of a Fernet key, so the same tools generate it).
pub struct SealKey {
    key: crate::core::key::Key,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.key.fingerprint())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{0}: {1}")]
    KeyFile(String, String),
    #[error("the value is sealed but no seal_key_file is configured")]
    NoKey,
    #[error("the value is not sealed but a seal_key_file is configured; refusing it (written by a node without the seal key, or tampered)")]
    NotSealed,
    #[error("the sealed value does not open with this seal key (tampered, or sealed with another key or for another etcd key)")]
    Open,
    #[error("the value is sealed with seal key {id}, which this node does not hold (it holds {}); add that key's file to [cluster] seal_key_files (see the README: changing the seal key)", ids(held))]
    Lacking { id: SealKeyId, held: Vec<SealKeyId> },
}

fn ids(held: &[SealKeyId]) -> String {
    held.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The largest seal key file read (the key is 44 characters and a newline).
const MAX_FILE: u64 = 4096;

impl SealKey {
    /// Reads the key from `path`, which must be a regular file (a link to one is followed)
    /// that no one but its owner may read or write, owned by the user fernetd runs as, by root
    /// or by `owner` (the Keystone user, whose daemon reads the same file): a key others can
    /// read lets them open every key set, one others can replace lets them choose it.
    pub fn load(path: &Path, owner: Option<u32>) -> Result<SealKey, SealError> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let fail = |why: String| SealError::KeyFile(path.display().to_string(), why);
        // Without blocking: a FIFO planted there is refused below instead of hanging.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode {mode:04o} lets others than its owner at the seal key; `chmod 600` it \
                 (and make a new one if others may have read it)"
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        let uid = meta.uid();
        if uid != me && uid != 0 && Some(uid) != owner {
            return Err(fail(format!(
                "owned by {}, not by the user fernetd runs as ({}) or root; `chown` it",
                user_name(uid),
                user_name(me)
            )));
        }
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(e.to_string()))?;
        let key = crate::core::key::Key::parse(&bytes).map_err(|e| {
            fail(format!(
                "{e}; expected 32 random bytes as url-safe base64 (fernetd cluster new-seal-key)"
            ))
        })?;
        Ok(SealKey { key })
    }

    /// Makes a new seal key at `path`: created (never replaced), mode 0600, given to `owner`
    /// (uid, gid) when one is named, fsynced. Returns the key.
    pub fn create(path: &Path, owner: Option<(u32, u32)>) -> Result<SealKey, SealError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |why: String| SealError::KeyFile(path.display().to_string(), why);
        let key = crate::core::key::Key::generate().map_err(|e| fail(format!("random: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => fail(
                    "already exists; fernetd never replaces a seal key (every node and every \
                     sealed value depend on it)"
                        .into(),
                ),
                _ => fail(e.to_string()),
            })?;
        let written = (|| {
            if let Some((uid, gid)) = owner {
                nix::unistd::fchown(
                    &file,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )?;
            }
            file.write_all(key.to_text().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(fail(e.to_string()));
        }
        Ok(SealKey { key })
    }

    pub fn from_key(key: crate::core::key::Key) -> SealKey {
        SealKey { key }
    }

    /// The key's id: its fingerprint (what `Debug` shows), never its material.
    pub fn id(&self) -> SealKeyId {
        SealKeyId::of(&self.key)
    }

    /// The key record MACs are made with: HMAC-SHA256(seal key, [`RECORD_MAC_DOMAIN`]).
    fn record_mac_key(&self) -> Zeroizing<Vec<u8>> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(self.key.bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        m.update(RECORD_MAC_DOMAIN);
        Zeroizing::new(m.finalize().into_bytes().to_vec())
    }

    /// The MAC state over a record stored under the etcd key `etcd_key`: the key's length
    /// (8 bytes, big-endian), the key, then the record's bytes.
    fn record_mac(&self, etcd_key: &[u8], record: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.record_mac_key())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        m.update(&(etcd_key.len() as u64).to_be_bytes());
        m.update(etcd_key);
        m.update(record);
        m
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.bytes().into())
    }

    /// `MAGIC || nonce || ciphertext`, bound to `aad` (the etcd key).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Open)?;
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// `MAGIC_V2 || id || nonce || ciphertext`, bound to the id and `aad` (the etcd key).
    pub fn seal_v2(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let id = self.id();
        let bound = v2_aad(&id, aad);
        let v1 = self.seal(plaintext, &bound)?;
        let body = v1.get(MAGIC.len()..).ok_or(SealError::Open)?;
        let mut out = Vec::with_capacity(MAGIC_V2.len() + ID + body.len());
        out.extend_from_slice(MAGIC_V2);
        out.extend_from_slice(&id.0);
        out.extend_from_slice(body);
        Ok(out)
    }

    /// Opens a value of either format sealed with this key.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if let Some((id, body)) = split_v2(sealed) {
            if id != self.id() {
                return Err(SealError::Open);
            }
            return self.open_body(body, &v2_aad(&id, aad));
        }
        let body = sealed.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
        self.open_body(body, aad)
    }

    fn open_body(&self, body: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if body.len() < NONCE {
            return Err(SealError::Open);
        }
        let (nonce, ct) = body.split_at(NONCE);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

/// True when `value` is a sealed value (whatever key sealed it, in either format).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC) || value.starts_with(MAGIC_V2)
}

/// The id a `v2` value names and the rest (nonce and ciphertext), or None for any other value.
fn split_v2(value: &[u8]) -> Option<(SealKeyId, &[u8])> {
    let rest = value.strip_prefix(MAGIC_V2)?;
    let id: [u8; ID] = rest.get(..ID)?.try_into().ok()?;
    Some((SealKeyId(id), rest.get(ID..)?))
}

/// The associated data of a `v2` value: the seal key's id, then the etcd key.
fn v2_aad(id: &SealKeyId, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ID + aad.len());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(aad);
    out
}

/// The bytes of a hex string of even length, else None.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A user's name for messages, else its number.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Opens a value read from etcd with an optional seal key: a sealed value needs the key, and
/// with a key configured an unsealed value is refused unless `accept_unsealed` (the
/// operator's `insecure_unsealed`, while a cluster moves to sealed values).
pub fn open_value(
    key: Option<&SealKey>,
    accept_unsealed: bool,
    value: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    open_with(key.as_slice(), accept_unsealed, value, aad).map(|(plain, _)| plain)
}

/// Like [`open_value`] with every seal key a node holds: a value opens with any of them.
/// Returns the id of the key that opened it (None for a value in the clear). A `v2` value is
/// tried with the key it names only, and one naming a key not held is [`SealError::Lacking`];
/// a `v1` value is tried with each key in turn.
pub fn open_with<K: std::ops::Deref<Target = SealKey>>(
    keys: &[K],
    accept_unsealed: bool,
    value: &[u8],
    aad: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Option<SealKeyId>), SealError> {
    if !is_sealed(value) {
        return match keys.is_empty() || accept_unsealed {
            true => Ok((Zeroizing::new(value.to_vec()), None)),
            false => Err(SealError::NotSealed),
        };
    }
    if keys.is_empty() {
        return Err(SealError::NoKey);
    }
    if let Some((id, _)) = split_v2(value) {
        let Some(k) = keys.iter().find(|k| k.id() == id) else {
            return Err(SealError::Lacking {
                id,
                held: keys.iter().map(|k| k.id()).collect(),
            });
        };
        return k.open(value, aad).map(|plain| (plain, Some(id)));
    }
    keys.iter()
        .find_map(|k| k.open(value, aad).ok().map(|plain| (plain, Some(k.id()))))
        .ok_or(SealError::Open)
}

/// How a cluster connection seals what it writes and opens what it reads: with the seal key
/// when one is configured (always, for writes), and taking unsealed values only where the
/// operator said `insecure_unsealed`. With several keys (`seal_key_files`), values open with
/// any of them and are sealed with the first, in the `v2` format naming its id.
#[derive(Debug, Clone, Default)]
pub struct Sealing {
    /// Every seal key held, the one that seals first.
    keys: Vec<std::sync::Arc<SealKey>>,
    accept_unsealed: bool,
    /// Writes name the sealing key (`v2`): the configuration says `seal_key_files`. A
    /// configuration with the single `seal_key_file` writes `v1`, byte for byte as before, so
    /// that a node still running an earlier fernetd opens it.
    tagged: bool,
}

impl Sealing {
    pub fn new(key: Option<SealKey>, accept_unsealed: bool) -> Sealing {
        Sealing {
            keys: key.map(std::sync::Arc::new).into_iter().collect(),
            accept_unsealed,
            tagged: false,
        }
    }

    /// Several keys, the first sealing (`v2`, naming its id); none is an unsealed configuration.
    pub fn with_keys(keys: Vec<SealKey>, accept_unsealed: bool) -> Sealing {
        Sealing {
            keys: keys.into_iter().map(std::sync::Arc::new).collect(),
            accept_unsealed,
            tagged: true,
        }
    }

    pub fn sealed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key writes are sealed with (None when no seal key is configured).
    pub fn sealing_id(&self) -> Option<SealKeyId> {
        self.keys.first().map(|k| k.id())
    }

    /// The ids of every key held, the sealing one first.
    pub fn ids(&self) -> Vec<SealKeyId> {
        self.keys.iter().map(|k| k.id()).collect()
    }

    /// Seals `plaintext` for the etcd key `aad` (as it is when no seal key is configured).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        match self.keys.first() {
            Some(k) if self.tagged => k.seal_v2(plaintext, aad),
            Some(k) => k.seal(plaintext, aad),
            None => Ok(plaintext.to_vec()),
        }
    }

    /// The MAC of a record kept in the clear under the etcd key `etcd_key` (64 hex digits),
    /// made with the sealing key's derived MAC key; None when no seal key is configured.
    pub fn tag(&self, etcd_key: &[u8], record: &[u8]) -> Option<String> {
        use hmac::Mac;
        let k = self.keys.first()?;
        let mac = k.record_mac(etcd_key, record).finalize().into_bytes();
        Some(mac.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether a record read from under `etcd_key` may be believed: its `tag` verifies with
    /// any seal key held. Without a seal key every record is believed (unauthenticated, as
    /// the README says); with one, a record without a tag only while `insecure_unsealed`.
    pub fn verify(&self, etcd_key: &[u8], record: &[u8], tag: Option<&str>) -> bool {
        use hmac::Mac;
        if self.keys.is_empty() {
            return true;
        }
        let Some(tag) = tag else {
            return self.accept_unsealed;
        };
        let Some(bytes) = unhex(tag) else {
            return false;
        };
        self.keys
            .iter()
            .any(|k| k.record_mac(etcd_key, record).verify_slice(&bytes).is_ok())
    }

    /// Opens a value read from under the etcd key `aad` (see [`open_with`]).
    pub fn open(&self, value: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_which(value, aad).map(|(plain, _)| plain)
    }

    /// Like [`Sealing::open`], with the id of the key that opened the value (None: clear).
    pub fn open_which(
        &self,
        value: &[u8],
        aad: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, Option<SealKeyId>), SealError> {
        open_with(&self.keys, self.accept_unsealed, value, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealKey {
        SealKey::from_key(crate::core::key::Key::generate().unwrap())
    }

    #[test]
    fn seals_and_opens_bound_to_the_etcd_key() {
        let k = key();
        let v = k
            .seal(b"secret key set", b"/fernetd/tokens/keyset")
            .unwrap();
        assert!(!v.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*k.open(&v, b"/fernetd/tokens/keyset").unwrap(),
            b"secret key set"
        );
        assert_eq!(k.open(&v, b"/other/tokens/keyset"), Err(SealError::Open));
        assert_eq!(
            key().open(&v, b"/fernetd/tokens/keyset"),
            Err(SealError::Open)
        );
        let mut tampered = v.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            k.open(&tampered, b"/fernetd/tokens/keyset"),
            Err(SealError::Open)
        );
    }

    #[test]
    fn sealed_and_clear_values_are_never_mixed_up() {
        let k = key();
        let v = k.seal(b"x", b"a").unwrap();
        assert_eq!(open_value(None, true, &v, b"a"), Err(SealError::NoKey));
        assert_eq!(
            open_value(Some(&k), false, b"{\"plain\":1}", b"a"),
            Err(SealError::NotSealed)
        );
        assert_eq!(&*open_value(None, true, b"plain", b"a").unwrap(), b"plain");
        // While a cluster moves to sealed values: both open, and a sealed one still must
        // open with the key.
        assert_eq!(
            &*open_value(Some(&k), true, b"plain", b"a").unwrap(),
            b"plain"
        );
        assert_eq!(&*open_value(Some(&k), true, &v, b"a").unwrap(), b"x");
        assert_eq!(
            open_value(Some(&key()), true, &v, b"a"),
            Err(SealError::Open)
        );
        assert!(!format!("{k:?}").contains(&*k.key.to_text()));
    }

    #[test]
    fn several_keys_open_with_any_and_seal_with_the_first_naming_it() {
        let (new, old, other) = (key(), key(), key());
        let (new_id, old_id) = (new.id(), old.id());
        let aad = b"/f/tokens/keyset";
        // A value sealed by the single-key configuration (v1) opens with the old key second.
        let v1 = Sealing::new(Some(SealKey::from_key(old.key.clone())), false)
            .seal(b"set", aad)
            .unwrap();
        assert!(v1.starts_with(MAGIC));
        let both = Sealing::with_keys(
            vec![
                SealKey::from_key(new.key.clone()),
                SealKey::from_key(old.key.clone()),
            ],
            false,
        );
        let (plain, by) = both.open_which(&v1, aad).unwrap();
        assert_eq!((&**plain, by), (&b"set"[..], Some(old_id)));
        // Written with the first key, naming it; the id is no key material.
        let v2 = both.seal(b"set", aad).unwrap();
        assert!(v2.starts_with(MAGIC_V2));
        assert!(!v2.windows(3).any(|w| w == b"set"));
        assert_eq!(both.open_which(&v2, aad).unwrap().1, Some(new_id));
        assert_eq!(both.sealing_id(), Some(new_id));
        // A node holding the old key alone names the key it lacks.
        let only_old = Sealing::with_keys(vec![SealKey::from_key(old.key.clone())], false);
        let e = only_old.open(&v2, aad).unwrap_err();
        assert_eq!(
            e,
            SealError::Lacking {
                id: new_id,
                held: vec![old_id]
            }
        );
        assert!(e.to_string().contains(&new_id.to_string()), "{e}");
        assert!(!e.to_string().contains(&*new.key.to_text()), "{e}");
        // The id is authenticated: one rewritten to another held key's does not open.
        let mut lied = v2.clone();
        lied[MAGIC_V2.len()..MAGIC_V2.len() + ID].copy_from_slice(&old_id.0);
        assert_eq!(both.open(&lied, aad), Err(SealError::Open));
        // Nor for another etcd key, nor tampered, nor with a key that is not held at all.
        assert_eq!(both.open(&v2, b"/g/tokens/keyset"), Err(SealError::Open));
        let mut tampered = v2.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(both.open(&tampered, aad), Err(SealError::Open));
        let stranger = Sealing::with_keys(vec![other], false);
        assert_eq!(stranger.open(&v1, aad), Err(SealError::Open));
        assert!(matches!(
            stranger.open(&v2, aad),
            Err(SealError::Lacking { .. })
        ));
        // Truncated v2 values are refused, not a panic.
        for n in 0..MAGIC_V2.len() + ID + NONCE + 1 {
            assert!(both.open(&v2[..n], aad).is_err());
        }
    }

    #[test]
    fn a_record_mac_is_bound_to_its_etcd_key_and_verifies_with_any_held_key() {
        let (new, old) = (key(), key());
        let both = Sealing::with_keys(
            vec![
                SealKey::from_key(new.key.clone()),
                SealKey::from_key(old.key.clone()),
            ],
            false,
        );
        let only_old = Sealing::new(Some(SealKey::from_key(old.key.clone())), false);
        let rec = br#"{"node":"n1","revision":7}"#;
        let (k1, k2) = (&b"/f/tokens/acks/n1"[..], &b"/f/tokens/acks/n2"[..]);
        let tag = both.tag(k1, rec).unwrap();
        assert_eq!(tag.len(), 64);
        assert!(both.verify(k1, rec, Some(&tag)));
        // Copied under another node's key, edited, truncated, absent, or not hex: refused.
        assert!(!both.verify(k2, rec, Some(&tag)));
        assert!(!both.verify(k1, br#"{"node":"n2","revision":7}"#, Some(&tag)));
        assert!(!both.verify(k1, rec, Some(&tag[..62])));
        assert!(!both.verify(k1, rec, None));
        assert!(!both.verify(k1, rec, Some("zz")));
        assert!(!both.verify(k1, rec, Some("é")));
        // Made with the old key alone, it verifies on a node holding both.
        let by_old = only_old.tag(k1, rec).unwrap();
        assert!(both.verify(k1, rec, Some(&by_old)));
        assert!(!only_old.verify(k1, rec, Some(&tag)));
        // Not a MAC under the seal key itself: the derived key is another key.
        use hmac::Mac;
        let mut plain =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(new.key.bytes()).unwrap();
        plain.update(&(k1.len() as u64).to_be_bytes());
        plain.update(k1);
        plain.update(rec);
        let plain: String = plain
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(plain, tag);
        // Unsealed: no tag, everything believed; moving to sealing: untagged believed only.
        let none = Sealing::new(None, true);
        assert_eq!(none.tag(k1, rec), None);
        assert!(none.verify(k1, rec, None));
        let moving = Sealing::new(Some(SealKey::from_key(old.key.clone())), true);
        assert!(moving.verify(k1, rec, None));
        assert!(!moving.verify(k2, rec, Some(&by_old)));
    }
}
