//! Sealing: authenticated encryption of what cluster mode stores in etcd, under a
//! key-encryption key (`[cluster] seal_key_file`).
//!
//! XChaCha20-Poly1305 with a random 24-byte nonce; the etcd key the value is stored under is
//! the associated data, so a value copied under another prefix or repository does not open.
//! A tampered or foreign value is refused before anything reaches the disk.
//!
//! Invariant: pure apart from reading the key file; the seal key is zeroized on drop and never
//! shown.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::Path;
use zeroize::Zeroizing;

/// Prefix of a sealed value (and its format version).
pub const MAGIC: &[u8] = b"fernetd-sealed-v1:";
const NONCE: usize = 24;

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

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let body = sealed.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
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

/// True when `value` is a sealed value (whatever key sealed it).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
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
    match (key, is_sealed(value)) {
        (Some(_), false) if accept_unsealed => Ok(Zeroizing::new(value.to_vec())),
        (Some(k), _) => k.open(value, aad),
        (None, true) => Err(SealError::NoKey),
        (None, false) => Ok(Zeroizing::new(value.to_vec())),
    }
}

/// How a cluster connection seals what it writes and opens what it reads: with the seal key
/// when one is configured (always, for writes), and taking unsealed values only where the
/// operator said `insecure_unsealed`.
#[derive(Debug, Clone, Default)]
pub struct Sealing {
    key: Option<std::sync::Arc<SealKey>>,
    accept_unsealed: bool,
}

impl Sealing {
    pub fn new(key: Option<SealKey>, accept_unsealed: bool) -> Sealing {
        Sealing {
            key: key.map(std::sync::Arc::new),
            accept_unsealed,
        }
    }

    pub fn sealed(&self) -> bool {
        self.key.is_some()
    }

    /// Seals `plaintext` for the etcd key `aad` (as it is when no seal key is configured).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        match &self.key {
            Some(k) => k.seal(plaintext, aad),
            None => Ok(plaintext.to_vec()),
        }
    }

    /// Opens a value read from under the etcd key `aad` (see [`open_value`]).
    pub fn open(&self, value: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open_value(self.key.as_deref(), self.accept_unsealed, value, aad)
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
}
