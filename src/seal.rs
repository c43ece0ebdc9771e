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
    key: crate::key::Key,
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

impl SealKey {
    pub fn load(path: &Path) -> Result<SealKey, SealError> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| SealError::KeyFile(path.display().to_string(), e.to_string()))?,
        );
        let key = crate::key::Key::parse(&bytes).map_err(|e| {
            SealError::KeyFile(
                path.display().to_string(),
                format!("{e}; expected 32 random bytes as url-safe base64 (fernetd cluster new-seal-key)"),
            )
        })?;
        Ok(SealKey { key })
    }

    pub fn from_key(key: crate::key::Key) -> SealKey {
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

/// Opens a value read from etcd with an optional seal key: a sealed value needs the key, and
/// with a key configured an unsealed value is refused.
pub fn open_value(
    key: Option<&SealKey>,
    value: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    match (key, value.starts_with(MAGIC)) {
        (Some(k), _) => k.open(value, aad),
        (None, true) => Err(SealError::NoKey),
        (None, false) => Ok(Zeroizing::new(value.to_vec())),
    }
}

/// Seals with `key` if any.
pub fn seal_value(
    key: Option<&SealKey>,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    match key {
        Some(k) => k.seal(plaintext, aad),
        None => Ok(plaintext.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealKey {
        SealKey::from_key(crate::key::Key::generate().unwrap())
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
        assert_eq!(open_value(None, &v, b"a"), Err(SealError::NoKey));
        assert_eq!(
            open_value(Some(&k), b"{\"plain\":1}", b"a"),
            Err(SealError::NotSealed)
        );
        assert_eq!(&*open_value(None, b"plain", b"a").unwrap(), b"plain");
        assert!(!format!("{k:?}").contains(&*k.key.to_text()));
    }
}
