//! One Fernet key: 32 random bytes, stored as 44 characters of url-safe base64.
//!
//! This module owns the only type that holds key material. It never lets the bytes leave
//! through `Debug`, `Display` or an error: those show a short fingerprint (a truncated SHA-256
//! of the key), which identifies a key across nodes and logs without revealing it. The bytes
//! and their text form are zeroized when dropped.

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Length of the decoded key in bytes (Fernet: 16 signing + 16 encryption).
pub const KEY_BYTES: usize = 32;
/// Length of the url-safe base64 text Keystone writes (`Fernet.generate_key()`).
pub const KEY_TEXT_LEN: usize = 44;

/// A validated Fernet key. Cloning copies the secret; both copies zeroize on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    // Invariant: always KEY_BYTES long; kept in a Zeroizing box so moves do not leave copies.
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

/// Why some file content is not a Fernet key. Never carries the content itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("empty file")]
    Empty,
    #[error("not ASCII text (Keystone's loader raises on it)")]
    NotText,
    #[error("decodes to {0} bytes; a Fernet key is 32 bytes of url-safe base64")]
    WrongLength(usize),
    #[error("not base64: incomplete padding or a dangling character (Keystone raises on it)")]
    NotBase64,
}

impl Key {
    /// A fresh key from the operating system's CSPRNG (getrandom(2)).
    pub fn generate() -> Result<Key, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(bytes.as_mut())?;
        Ok(Key { bytes })
    }

    /// Parses file content exactly as Keystone reads a key file: the text (UTF-8, ASCII
    /// only) given to `cryptography`'s `Fernet`, which decodes it with Python's
    /// `base64.urlsafe_b64decode` (`-`/`_` and `+`/`/` both accepted, every other character
    /// outside the alphabet skipped, decoding stopped at complete padding) and wants 32 bytes.
    /// A file Keystone reads as a key is a key here, with the same fingerprint however it is
    /// spelled; one it refuses is refused here.
    pub fn parse(content: &[u8]) -> Result<Key, KeyFormatError> {
        if content.is_empty() {
            return Err(KeyFormatError::Empty);
        }
        let text = std::str::from_utf8(content).map_err(|_| KeyFormatError::NotText)?;
        if !text.is_ascii() {
            return Err(KeyFormatError::NotText);
        }
        let decoded = python_b64decode(text.as_bytes()).ok_or(KeyFormatError::NotBase64)?;
        if decoded.len() != KEY_BYTES {
            return Err(KeyFormatError::WrongLength(decoded.len()));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        bytes.copy_from_slice(&decoded);
        Ok(Key { bytes })
    }

    /// The raw bytes, for using the key as another cipher's key (sealing). Crate-internal.
    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }

    /// The exact text Keystone writes: 44 characters, no trailing newline.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(KEY_TEXT_LEN));
        URL_SAFE.encode_string(self.bytes.as_ref(), &mut s);
        s
    }

    /// A short, stable, non-secret identifier: the first 8 bytes of SHA-256(key), in hex.
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.bytes.as_ref());
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Fingerprint(out)
    }

    /// The key as a `fernet::Fernet`, for encrypting or decrypting tokens.
    pub fn fernet(&self) -> fernet::Fernet {
        let text = self.to_text();
        // Unreachable: to_text always yields a valid 32-byte url-safe key.
        match fernet::Fernet::new(&text) {
            Some(f) => f,
            None => unreachable!("a Key always encodes to a valid Fernet key"),
        }
    }
}

/// CPython's `binascii.a2b_base64(strict_mode=False)` after `urlsafe_b64decode`'s translation
/// of `-` and `_`: characters outside the alphabet are skipped, a `=` completing a quantum ends
/// the input, and a quantum left incomplete is an error (`None`). The result is zeroized.
fn python_b64decode(input: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let value = |c: u8| -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    };
    let mut out = Zeroizing::new(Vec::with_capacity(KEY_BYTES + 3));
    let (mut quad, mut left, mut pads) = (0u8, 0u8, 0u8);
    for &c in input {
        if c == b'=' {
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(v) = value(c) else { continue };
        pads = 0;
        match quad {
            0 => {
                left = v;
                quad = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad = 3;
            }
            _ => {
                out.push((left << 6) | v);
                left = 0;
                quad = 0;
            }
        }
    }
    left.zeroize();
    (quad == 0).then_some(out)
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.fingerprint())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Zeroizing already clears on drop; this makes the intent explicit and survives
        // a future change of the field type.
        self.bytes.zeroize();
    }
}

/// A non-secret identifier of a key (truncated SHA-256), printed as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    /// Matches no key: stands for "no key applied" (a malformed acknowledgement).
    pub const NONE: Fingerprint = Fingerprint([0; 8]);

    /// The 16 lower-case hex digits, formatted without the formatting machinery: a history
    /// holds hundreds of fingerprints and is written on every change.
    fn hex(&self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 16 || !s.is_ascii() {
            return Err(());
        }
        let mut out = [0u8; 8];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ())?;
        }
        Ok(Fingerprint(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex = self.hex();
        s.serialize_str(std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("fingerprint must be 16 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_text() {
        let k = Key::generate().unwrap();
        let text = k.to_text();
        assert_eq!(text.len(), KEY_TEXT_LEN);
        assert!(text.ends_with('='));
        assert_eq!(Key::parse(text.as_bytes()).unwrap(), k);
        // Keystone-compatible: the fernet crate accepts it.
        assert!(fernet::Fernet::new(&text).is_some());
    }

    #[test]
    fn keys_are_read_as_keystone_reads_them() {
        let k = Key::generate().unwrap();
        let text = k.to_text().to_string();
        // Line endings, a newline in the middle, the standard alphabet, missing padding
        // after a complete key: Keystone's Fernet takes them all as the same key.
        let std = text.replace('-', "+").replace('_', "/");
        for spelled in [
            format!("{text}\n"),
            format!("{text}\n\n"),
            format!("{}\n{}", &text[..20], &text[20..]),
            std,
            format!("{text}trailing after the padding"),
        ] {
            assert_eq!(Key::parse(spelled.as_bytes()).unwrap(), k, "{spelled:?}");
        }
        assert_eq!(Key::parse(b""), Err(KeyFormatError::Empty));
        assert_eq!(Key::parse(&[0xff, 0xfe]), Err(KeyFormatError::NotText));
        assert_eq!(
            Key::parse("é".repeat(44).as_bytes()),
            Err(KeyFormatError::NotText)
        );
        // 43 characters with the padding dropped: an incomplete quantum.
        assert_eq!(
            Key::parse(&text.as_bytes()[..43]),
            Err(KeyFormatError::NotBase64)
        );
        assert_eq!(Key::parse(b"aGVsbG8="), Err(KeyFormatError::WrongLength(5)));
    }

    #[test]
    fn debug_and_display_never_show_key_text() {
        let k = Key::generate().unwrap();
        let text = k.to_text().to_string();
        for shown in [format!("{k:?}"), format!("{k}"), format!("{:?}", Some(&k))] {
            assert!(!shown.contains(&text), "{shown}");
            assert!(!shown.contains(&text[..20]), "{shown}");
            assert!(shown.contains(&k.fingerprint().to_string()));
        }
    }

    #[test]
    fn fingerprint_parses_back() {
        let k = Key::generate().unwrap();
        let fp = k.fingerprint();
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
        assert!("xyz".parse::<Fingerprint>().is_err());
        let known = Fingerprint([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(known.to_string(), "0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&known).unwrap(),
            "\"0123456789abcdef\""
        );
    }

    #[test]
    fn tokens_round_trip_with_the_fernet_crate() {
        let k = Key::generate().unwrap();
        let token = k.fernet().encrypt(b"payload");
        assert_eq!(k.fernet().decrypt(&token).unwrap(), b"payload");
    }
}
