//! One Fernet token or receipt, as Keystone made it: why it does or does not validate here.
//!
//! This module owns reading a token: its clear part (the creation time Fernet carries
//! unencrypted), which of a repository's keys decrypts it, Keystone's payload inside (every
//! version `keystone/token/token_formatters.py` issues, and receipts), the verdict in
//! Keystone's terms (valid, accepted only with `allow_expired`, past its window), and, for a
//! token no key here decrypts, which key most likely made it and what became of it, from the
//! history. It is pure: the caller hands in the keys, the history and the time; the CLI
//! renders the answer.
//!
//! Invariant: never touches the disk, and never puts key material (nor the token itself) into
//! an answer, an error or `Debug`: keys are named by number and fingerprint only.

use crate::core::history::History;
use crate::core::key::{Fingerprint, Key};
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rmpv::Value;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use zeroize::Zeroizing;

/// The longest token text read (Keystone's are about 180-260 characters; federated tokens
/// with many groups are longer). Anything beyond is not a token.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Keystone's `[auth] methods` default (`keystone/conf/constants.py`): the order gives each
/// method its bit in a payload's method integer.
pub const DEFAULT_AUTH_METHODS: [&str; 7] = [
    "external",
    "password",
    "token",
    "oauth1",
    "mapped",
    "application_credential",
    "ec2credential",
];

/// Fernet's version byte, the first of every token.
const FERNET_VERSION: u8 = 0x80;
/// Version byte, timestamp, IV, one AES block, HMAC.
const MIN_FERNET_BYTES: usize = 1 + 8 + 16 + 16 + 32;

/// Tokens or receipts: which payloads to expect, and whether `allow_expired` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Token,
    Receipt,
}

/// Why a text is not a Fernet token at all. Never carries the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token given (pass it as an argument, or on stdin with `-`)")]
    Empty,
    #[error("not a Fernet token: {0} characters, more than any Keystone token")]
    TooLong(usize),
    #[error("not a Fernet token: not url-safe base64")]
    NotBase64,
    #[error("not a Fernet token: {0} bytes, shorter than the smallest token ({MIN_FERNET_BYTES})")]
    TooShort(usize),
    #[error("not a Fernet token: version byte 0x{0:02x}, Fernet's is 0x80")]
    WrongVersion(u8),
    #[error("not a Fernet token: its ciphertext is not whole AES blocks")]
    NotBlocks,
}

/// Why a decrypted payload is not one Keystone issues.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("not msgpack: {0}")]
    NotMsgpack(String),
    #[error("not a msgpack array")]
    NotArray,
    #[error("payload version {0} is none Keystone issues (0-10)")]
    UnknownVersion(String),
    #[error("{count} fields for payload version {version}, Keystone's has {expected}")]
    FieldCount {
        version: String,
        count: usize,
        expected: usize,
    },
    #[error("field {index} ({name}): {problem}")]
    Field {
        index: usize,
        name: &'static str,
        problem: String,
    },
}

/// What a token carries in clear. Its `Debug` shows the creation time only: the token is a
/// bearer credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Fernet's timestamp: when the token was made (whole seconds).
    pub created: DateTime<Utc>,
    /// The same, as the seconds Fernet stores (for decrypting without the crate's clock).
    created_secs: u64,
    /// The token with its base64 padding restored (Keystone strips it). A bearer credential:
    /// zeroized, never shown.
    padded: Zeroizing<String>,
}

/// Reads a token's clear part. Keystone strips the `=` padding; it is restored here, as
/// `TokenFormatter.restore_padding` does.
pub fn envelope(text: &str) -> Result<Envelope, TokenError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenError::Empty);
    }
    if text.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong(text.len()));
    }
    // As Python's urlsafe_b64decode reads it (cryptography's Fernet uses it): the standard
    // alphabet's `+` and `/` too, and any padding (Keystone strips it, clients may add it).
    let mut padded: Zeroizing<String> = Zeroizing::new(
        text.trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect(),
    );
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    let bytes = Zeroizing::new(
        URL_SAFE
            .decode(padded.as_bytes())
            .map_err(|_| TokenError::NotBase64)?,
    );
    if bytes.len() < MIN_FERNET_BYTES {
        return Err(TokenError::TooShort(bytes.len()));
    }
    if bytes[0] != FERNET_VERSION {
        return Err(TokenError::WrongVersion(bytes[0]));
    }
    if (bytes.len() - 1 - 8 - 16 - 32) % 16 != 0 {
        return Err(TokenError::NotBlocks);
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[1..9]);
    let created_secs = u64::from_be_bytes(ts);
    let created = i64::try_from(created_secs)
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Ok(Envelope {
        created,
        created_secs,
        padded,
    })
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Envelope {
    /// The key (by number) that decrypts this token, and the plaintext. Each key is tried
    /// alone, highest number first (Keystone's order), so the one that made it is known.
    /// Like Keystone (`MultiFernet.decrypt` without a TTL), a creation time in the future is
    /// no reason to refuse it.
    pub fn decrypt(&self, keys: &BTreeMap<u64, &Key>) -> Option<(u64, Zeroizing<Vec<u8>>)> {
        keys.iter().rev().find_map(|(n, k)| {
            // The fernet crate refuses a token made more than 60 s after "now"; Python's
            // cryptography does so only with a TTL, which Keystone never passes. Its "now" is
            // therefore the token's own time.
            k.fernet()
                .decrypt_at_time(&self.padded, None, self.created_secs)
                .ok()
                .map(|p| (*n, Zeroizing::new(p)))
        })
    }
}

/// Keystone's payload, decoded as its formatters' `disassemble` does. Ids packed as UUID bytes
/// come out as `uuid.hex` (32 hex digits), others as the text they were.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    /// Keystone's payload class, in words (`project-scoped`, `receipt`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The payload version (`None` for receipts, which carry none).
    pub version: Option<u64>,
    pub user_id: String,
    pub methods: Vec<String>,
    /// Whole seconds, as Keystone keeps it (`isotime` drops the microseconds).
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federated_group_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_provider_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_cred_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
}

/// Payload versions and their classes, in `_PAYLOAD_CLASSES` order.
const TYPES: [&str; 11] = [
    "unscoped",
    "domain-scoped",
    "project-scoped",
    "trust-scoped",
    "federated-unscoped",
    "federated-project-scoped",
    "federated-domain-scoped",
    "oauth1-scoped",
    "system-scoped",
    "application-credential-scoped",
    "oauth2-credential-scoped",
];

/// One field of a payload, named for errors.
struct Fields<'a> {
    values: &'a [Value],
}

impl<'a> Fields<'a> {
    fn get(&self, index: usize, name: &'static str) -> Result<&'a Value, PayloadError> {
        self.values.get(index).ok_or(PayloadError::Field {
            index,
            name,
            problem: "missing".into(),
        })
    }

    fn bad<T>(index: usize, name: &'static str, problem: &str) -> Result<T, PayloadError> {
        Err(PayloadError::Field {
            index,
            name,
            problem: problem.to_string(),
        })
    }

    /// An `(is_stored_as_bytes, value)` pair (`_convert_or_decode`).
    fn id(&self, index: usize, name: &'static str) -> Result<String, PayloadError> {
        let Value::Array(pair) = self.get(index, name)? else {
            return Self::bad(index, name, "not an (is_uuid, id) pair");
        };
        match pair.as_slice() {
            [Value::Boolean(true), v] => match uuid_hex(v) {
                Some(h) => Ok(h),
                None => Self::bad(index, name, "marked as UUID bytes but not 16 bytes"),
            },
            [Value::Boolean(false), v] => match text(v) {
                Some(t) => Ok(t),
                None => Self::bad(index, name, "not text"),
            },
            _ => Self::bad(index, name, "not an (is_uuid, id) pair"),
        }
    }

    /// Raw UUID bytes (`convert_uuid_bytes_to_hex`): a trust id.
    fn uuid(&self, index: usize, name: &'static str) -> Result<String, PayloadError> {
        match uuid_hex(self.get(index, name)?) {
            Some(h) => Ok(h),
            None => Self::bad(index, name, "not 16 bytes of UUID"),
        }
    }

    /// A domain id: UUID bytes, or the default domain's id as text (DomainScopedPayload).
    fn domain(&self, index: usize, name: &'static str) -> Result<String, PayloadError> {
        let v = self.get(index, name)?;
        match uuid_hex(v).or_else(|| text(v)) {
            Some(s) => Ok(s),
            None => Self::bad(index, name, "neither UUID bytes nor text"),
        }
    }

    fn text(&self, index: usize, name: &'static str) -> Result<String, PayloadError> {
        match text(self.get(index, name)?) {
            Some(t) => Ok(t),
            None => Self::bad(index, name, "not text"),
        }
    }

    fn methods(&self, index: usize, methods: &[String]) -> Result<Vec<String>, PayloadError> {
        match self.get(index, "methods")?.as_u64() {
            Some(n) => Ok(method_list(n, methods)),
            None => Self::bad(index, "methods", "not a non-negative integer"),
        }
    }

    fn time(&self, index: usize) -> Result<DateTime<Utc>, PayloadError> {
        let v = self.get(index, "expires_at")?;
        let f = match v {
            Value::F64(f) => *f,
            Value::F32(f) => f64::from(*f),
            Value::Integer(i) => match i.as_i64() {
                // Seconds since 1970 fit an f64 exactly far beyond any expiry.
                #[allow(clippy::cast_precision_loss)]
                Some(i) => i as f64,
                None => return Self::bad(index, "expires_at", "out of range"),
            },
            _ => return Self::bad(index, "expires_at", "not a number of seconds"),
        };
        match from_float(f) {
            Some(t) => Ok(t),
            None => Self::bad(index, "expires_at", "out of range"),
        }
    }

    fn audit_ids(&self, index: usize) -> Result<Vec<String>, PayloadError> {
        let Value::Array(ids) = self.get(index, "audit_ids")? else {
            return Self::bad(index, "audit_ids", "not a list");
        };
        ids.iter()
            .map(|v| match bytes(v) {
                Some(b) => Ok(URL_SAFE_NO_PAD.encode(b)),
                None => Self::bad(index, "audit_ids", "an audit id is not bytes"),
            })
            .collect()
    }

    fn groups(&self, index: usize) -> Result<Vec<String>, PayloadError> {
        let Value::Array(groups) = self.get(index, "federated_group_ids")? else {
            return Self::bad(index, "federated_group_ids", "not a list");
        };
        groups
            .iter()
            .map(|g| {
                Fields {
                    values: std::slice::from_ref(g),
                }
                .id(0, "federated_group_ids")
                .map_err(|_| PayloadError::Field {
                    index,
                    name: "federated_group_ids",
                    problem: "a group id is not an (is_uuid, id) pair".into(),
                })
            })
            .collect()
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Binary(b) => Some(b),
        // msgpack < 1.0 (raw): bytes were packed as str.
        Value::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
}

/// UUID bytes as `uuid.hex`: 16 bytes, packed as bin (msgpack >= 1.0) or raw (before it).
fn uuid_hex(v: &Value) -> Option<String> {
    match bytes(v) {
        Some(b) if b.len() == 16 => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
        _ => None,
    }
}

/// An `expires_at` float as Keystone reads it: `datetime.fromtimestamp(f, utc)` (microseconds
/// rounded half to even), then `isotime`'s `replace(microsecond=0)`: whole seconds.
fn from_float(f: f64) -> Option<DateTime<Utc>> {
    if !f.is_finite() {
        return None;
    }
    let floor = f.floor();
    let micros = ((f - floor) * 1e6).round_ties_even();
    let secs = if micros >= 1e6 { floor + 1.0 } else { floor };
    if !(-1e13..1e13).contains(&secs) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    DateTime::<Utc>::from_timestamp(secs as i64, 0)
}

/// `auth_plugins.convert_integer_to_method_list`, with `[auth] methods` giving the bits.
pub fn method_list(mut n: u64, methods: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let bits: Vec<(u64, &String)> = methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            u32::try_from(i)
                .ok()
                .and_then(|i| 1u64.checked_shl(i))
                .map(|b| (b, m))
        })
        .collect();
    for (bit, name) in bits.into_iter().rev() {
        if n / bit == 1 {
            out.push(name.clone());
            n -= bit;
        }
    }
    out
}

/// Decodes a token's payload: `[version, fields...]` as `TokenFormatter.validate_token` reads
/// it. `methods` is keystone.conf's `[auth] methods`.
pub fn token_payload(plain: &[u8], methods: &[String]) -> Result<Payload, PayloadError> {
    let v = rmpv::decode::read_value(&mut &plain[..])
        .map_err(|e| PayloadError::NotMsgpack(e.to_string()))?;
    let Value::Array(all) = v else {
        return Err(PayloadError::NotArray);
    };
    let Some((version, rest)) = all.split_first() else {
        return Err(PayloadError::NotArray);
    };
    let Some(ver) = version.as_u64().filter(|v| *v < 11) else {
        return Err(PayloadError::UnknownVersion(version.to_string()));
    };
    let expected = match ver {
        0 => 4,
        1 | 2 | 8 => 5,
        3 | 7 | 9 => 6,
        4 | 10 => 7,
        _ => 8,
    };
    if rest.len() != expected {
        return Err(PayloadError::FieldCount {
            version: ver.to_string(),
            count: rest.len(),
            expected,
        });
    }
    let f = Fields { values: rest };
    let mut p = Payload {
        kind: TYPES[usize::try_from(ver).unwrap_or(0)],
        version: Some(ver),
        user_id: f.id(0, "user_id")?,
        methods: f.methods(1, methods)?,
        expires_at: DateTime::<Utc>::UNIX_EPOCH,
        audit_ids: Vec::new(),
        system: None,
        project_id: None,
        domain_id: None,
        trust_id: None,
        federated_group_ids: None,
        identity_provider_id: None,
        protocol_id: None,
        access_token_id: None,
        app_cred_id: None,
        thumbprint: None,
    };
    match ver {
        0 => {
            p.expires_at = f.time(2)?;
            p.audit_ids = f.audit_ids(3)?;
        }
        1 => {
            p.domain_id = Some(f.domain(2, "domain_id")?);
            p.expires_at = f.time(3)?;
            p.audit_ids = f.audit_ids(4)?;
        }
        2 => {
            p.project_id = Some(f.id(2, "project_id")?);
            p.expires_at = f.time(3)?;
            p.audit_ids = f.audit_ids(4)?;
        }
        3 => {
            p.project_id = Some(f.id(2, "project_id")?);
            p.expires_at = f.time(3)?;
            p.audit_ids = f.audit_ids(4)?;
            p.trust_id = Some(f.uuid(5, "trust_id")?);
        }
        4 => {
            p.federated_group_ids = Some(f.groups(2)?);
            p.identity_provider_id = Some(f.id(3, "identity_provider_id")?);
            p.protocol_id = Some(f.text(4, "protocol_id")?);
            p.expires_at = f.time(5)?;
            p.audit_ids = f.audit_ids(6)?;
        }
        5 | 6 => {
            let scope = f.id(2, "scope_id")?;
            if ver == 5 {
                p.project_id = Some(scope);
            } else {
                p.domain_id = Some(scope);
            }
            p.federated_group_ids = Some(f.groups(3)?);
            p.identity_provider_id = Some(f.id(4, "identity_provider_id")?);
            p.protocol_id = Some(f.text(5, "protocol_id")?);
            p.expires_at = f.time(6)?;
            p.audit_ids = f.audit_ids(7)?;
        }
        7 => {
            p.project_id = Some(f.id(2, "project_id")?);
            p.access_token_id = Some(f.id(3, "access_token_id")?);
            p.expires_at = f.time(4)?;
            p.audit_ids = f.audit_ids(5)?;
        }
        8 => {
            p.system = Some(f.text(2, "system")?);
            p.expires_at = f.time(3)?;
            p.audit_ids = f.audit_ids(4)?;
        }
        9 => {
            p.project_id = Some(f.id(2, "project_id")?);
            p.expires_at = f.time(3)?;
            p.audit_ids = f.audit_ids(4)?;
            p.app_cred_id = Some(f.id(5, "app_cred_id")?);
        }
        _ => {
            p.project_id = Some(f.id(2, "project_id")?);
            p.domain_id = Some(f.id(3, "domain_id")?);
            p.expires_at = f.time(4)?;
            p.audit_ids = f.audit_ids(5)?;
            p.thumbprint = Some(f.id(6, "thumbprint")?);
        }
    }
    Ok(p)
}

/// Decodes a receipt's payload: `[user_id, methods, expires_at]` (`ReceiptPayload`).
pub fn receipt_payload(plain: &[u8], methods: &[String]) -> Result<Payload, PayloadError> {
    let v = rmpv::decode::read_value(&mut &plain[..])
        .map_err(|e| PayloadError::NotMsgpack(e.to_string()))?;
    let Value::Array(all) = v else {
        return Err(PayloadError::NotArray);
    };
    if all.len() != 3 {
        return Err(PayloadError::FieldCount {
            version: "receipt".into(),
            count: all.len(),
            expected: 3,
        });
    }
    let f = Fields { values: &all };
    Ok(Payload {
        kind: "receipt",
        version: None,
        user_id: f.id(0, "user_id")?,
        methods: f.methods(1, methods)?,
        expires_at: f.time(2)?,
        audit_ids: Vec::new(),
        system: None,
        project_id: None,
        domain_id: None,
        trust_id: None,
        federated_group_ids: None,
        identity_provider_id: None,
        protocol_id: None,
        access_token_id: None,
        app_cred_id: None,
        thumbprint: None,
    })
}

/// What Keystone does with a decrypted token now (`TokenProvider._is_valid_token`: valid while
/// `now < expires_at (+ allow_expired_window)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Verdict {
    /// Accepted by every request until `until`.
    Valid { until: DateTime<Utc> },
    /// Expired; accepted only where a service asks for `allow_expired`, until `until`.
    AllowExpired {
        expired: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// Refused everywhere since `since`.
    PastWindow { since: DateTime<Utc> },
}

/// The verdict for a payload expiring at `expires_at`. Receipts have no window.
pub fn judge(
    kind: Kind,
    expires_at: DateTime<Utc>,
    allow_expired_window: Duration,
    now: DateTime<Utc>,
) -> Verdict {
    if now < expires_at {
        return Verdict::Valid { until: expires_at };
    }
    let window = match kind {
        Kind::Token => allow_expired_window,
        Kind::Receipt => Duration::ZERO,
    };
    let until = crate::core::history::later(expires_at, window);
    if now < until {
        Verdict::AllowExpired {
            expired: expires_at,
            until,
        }
    } else {
        Verdict::PastWindow { since: until }
    }
}

/// A key's role in the repository now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
    Staged,
}

/// The role of key `number` among the keys on disk.
pub fn role(number: u64, on_disk: &BTreeMap<u64, Fingerprint>) -> Role {
    let primary = crate::core::history::primary(on_disk.keys().copied());
    match number {
        0 => Role::Staged,
        n if Some(n) == primary => Role::Primary,
        _ => Role::Secondary,
    }
}

/// For a token no key here decrypts: the key that was primary when it was made (as far as the
/// history tells) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "origin")]
pub enum Origin {
    /// Purged, by fernetd (`by_fernetd`) or found gone by it. `earlier` are other purged keys
    /// that may have made it instead: the history keeps no promotion times of purged keys.
    Purged {
        number: u64,
        fingerprint: Fingerprint,
        at: DateTime<Utc>,
        by_fernetd: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        earlier: Vec<u64>,
    },
    /// Recorded as this repository's key (primary when the token was made), not on disk now,
    /// and no fernetd has seen it go: removed outside fernetd since fernetd last looked.
    RemovedUnrecorded {
        number: u64,
        fingerprint: Fingerprint,
    },
    /// The key primary here when the token was made is still here and does not decrypt it:
    /// made by another cluster or node.
    NotThisRepository { primary_then: u64 },
    /// Made before anything the history records: by a key removed before fernetd first saw
    /// this repository, or elsewhere.
    BeforeHistory {
        #[serde(skip_serializing_if = "Option::is_none")]
        history_begins: Option<DateTime<Utc>>,
    },
}

/// Which key most likely made a token created at `created` that none of `on_disk` decrypts.
///
/// Keys are numbered in promotion order. The history dates each recorded key's time as
/// primary (promoted, demoted); a key that was primary during the token's second and is gone
/// made it. When none was, it was a lower-numbered key, now purged: the highest one purged
/// after `created` whose promotion did not come later. A purged key's promotion is known when
/// the key after it was staged by fernetd: a rotation stages key `n + 1` as it promotes key
/// `n`, so key `n + 1`'s `created` is key `n`'s promotion.
pub fn origin(
    created: DateTime<Utc>,
    history: &History,
    on_disk: &BTreeMap<u64, Fingerprint>,
) -> Origin {
    let held = |fp: &Fingerprint| on_disk.values().any(|d| d == fp);
    // Fernet dates a token in whole seconds: it was made in [created, created + 1 s).
    let upto = created + chrono::Duration::seconds(1);
    // Recorded keys that were primary at some moment of that second.
    let primary_then: Vec<(u64, &crate::core::history::KeyRecord)> = history
        .keys
        .iter()
        .filter(|(n, r)| {
            **n > 0 && r.promoted.is_some_and(|p| p < upto) && r.demoted.is_none_or(|d| d > created)
        })
        .map(|(n, r)| (*n, r))
        .collect();
    // A held key would have decrypted it: a gone one made it.
    if let Some((n, r)) = primary_then
        .iter()
        .rev()
        .find(|(_, r)| !held(&r.fingerprint))
    {
        return Origin::RemovedUnrecorded {
            number: *n,
            fingerprint: r.fingerprint,
        };
    }
    // A held key that was primary for the whole second: it would have decrypted the token.
    if let Some((n, _)) = primary_then.iter().find(|(_, r)| {
        r.promoted.is_some_and(|p| p <= created) && r.demoted.is_none_or(|d| d >= upto)
    }) {
        return Origin::NotThisRepository { primary_then: *n };
    }
    // The lowest recorded key whose time as primary began after the token (or is unknown):
    // the key that made it is below it.
    let above = history
        .keys
        .iter()
        .filter(|(n, r)| **n > 0 && r.promoted.is_none_or(|p| p >= upto))
        .map(|(n, _)| *n)
        .min();
    let promoted_after = |n: u64| {
        n.checked_add(1)
            .and_then(|next| history.keys.get(&next))
            .and_then(|r| r.created)
            .is_some_and(|c| c >= upto)
    };
    let mut candidates: Vec<_> = history
        .purged
        .iter()
        .filter(|p| {
            p.at >= created
                && p.number > 0
                && above.is_none_or(|a| p.number < a)
                && !promoted_after(p.number)
        })
        .collect();
    candidates.sort_by_key(|p| std::cmp::Reverse(p.number));
    candidates.dedup_by_key(|p| p.number);
    if let Some((best, rest)) = candidates.split_first() {
        return Origin::Purged {
            number: best.number,
            fingerprint: best.fingerprint,
            at: best.at,
            by_fernetd: best.by_fernetd,
            earlier: rest.iter().map(|p| p.number).collect(),
        };
    }
    // Rotated during that second, and no gone key can have made it.
    if let Some((n, _)) = primary_then.first() {
        return Origin::NotThisRepository { primary_then: *n };
    }
    let begins = history
        .keys
        .values()
        .map(|r| r.first_seen)
        .chain(history.purged.iter().map(|p| p.at))
        .min();
    match begins {
        // Made while this repository was recorded, yet no recorded key was primary then
        // (adopted keys carry no promotion date): the lowest recorded key, if it is here.
        Some(b) if b < upto => match history.keys.iter().find(|(n, _)| **n > 0) {
            Some((n, r)) if held(&r.fingerprint) => Origin::NotThisRepository { primary_then: *n },
            _ => Origin::BeforeHistory {
                history_begins: Some(b),
            },
        },
        b => Origin::BeforeHistory { history_begins: b },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::history::{KeyRecord, PurgedKey};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn methods() -> Vec<String> {
        DEFAULT_AUTH_METHODS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn method_integers_read_as_keystone_reads_them() {
        let m = methods();
        assert_eq!(method_list(0, &m), Vec::<String>::new());
        assert_eq!(method_list(2, &m), vec!["password"]);
        assert_eq!(method_list(2 | 4, &m), vec!["token", "password"]);
        assert_eq!(
            method_list(16 | 32, &m),
            vec!["application_credential", "mapped"]
        );
        // A bit beyond the configured methods: Keystone's division never matches it again.
        assert_eq!(method_list(256 | 2, &m), Vec::<String>::new());
    }

    #[test]
    fn floats_become_times_as_python_rounds_them() {
        assert_eq!(
            from_float(1.5).unwrap(),
            DateTime::from_timestamp(1, 0).unwrap()
        );
        // 1.9999999 is 2.000000 once rounded to microseconds: second 2, as in Python.
        assert_eq!(
            from_float(1.999_999_9).unwrap(),
            DateTime::from_timestamp(2, 0).unwrap()
        );
        assert_eq!(
            from_float(1.999_999_4).unwrap(),
            DateTime::from_timestamp(1, 0).unwrap()
        );
        assert!(from_float(f64::NAN).is_none());
        assert!(from_float(1e300).is_none());
    }

    #[test]
    fn garbage_is_said_without_the_text() {
        assert_eq!(envelope("  "), Err(TokenError::Empty));
        assert_eq!(envelope("%%%%"), Err(TokenError::NotBase64));
        assert_eq!(envelope("gAAAAA"), Err(TokenError::TooShort(4)));
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(envelope(&long), Err(TokenError::TooLong(MAX_TOKEN_LEN + 1)));
        let not_fernet = URL_SAFE_NO_PAD.encode([7u8; 89]);
        assert_eq!(envelope(&not_fernet), Err(TokenError::WrongVersion(7)));
    }

    #[test]
    fn tokens_of_the_fernet_crate_decrypt_with_their_key_only() {
        let a = Key::generate().unwrap();
        let b = Key::generate().unwrap();
        let token = b.fernet().encrypt(b"x");
        let stripped = token.trim_end_matches('=');
        let e = envelope(stripped).unwrap();
        assert!(!format!("{e:?}").contains(&stripped[..30]), "{e:?}");
        let keys: BTreeMap<u64, &Key> = [(1, &a), (2, &b)].into_iter().collect();
        let (n, plain) = e.decrypt(&keys).unwrap();
        assert_eq!((n, plain.as_slice()), (2, &b"x"[..]));
        let only_a: BTreeMap<u64, &Key> = [(1, &a)].into_iter().collect();
        assert!(e.decrypt(&only_a).is_none());
    }

    /// Tokens from before msgpack 1.0 pack bytes as raw strings (Keystone reads them with
    /// `raw=True`): UUID bytes that are not UTF-8 included.
    #[test]
    fn payloads_of_old_msgpack_read_too() {
        let user = [
            0xffu8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0x0e, 0x0f,
        ];
        let mut m = vec![0x96, 0x02, 0x92, 0xc3, 0xb0];
        m.extend_from_slice(&user);
        m.push(0x02); // methods: password
        m.extend_from_slice(&[0x92, 0xc2, 0xa4]);
        m.extend_from_slice(b"proj");
        m.push(0xcb);
        m.extend_from_slice(&1_800_000_000.5f64.to_be_bytes());
        m.extend_from_slice(&[0x91, 0xb0]);
        m.extend_from_slice(&[0u8; 16]);
        let p = token_payload(&m, &methods()).unwrap();
        assert_eq!(p.kind, "project-scoped");
        assert_eq!(p.user_id, "ff0102030405060708090a0b0c0d0e0f");
        assert_eq!(p.project_id.as_deref(), Some("proj"));
        assert_eq!(p.methods, vec!["password"]);
        assert_eq!(p.expires_at, t(0));
        assert_eq!(p.audit_ids, vec!["AAAAAAAAAAAAAAAAAAAAAA"]);
        // Version 11 and a short array are not Keystone's.
        assert_eq!(
            token_payload(&[0x91, 0x0b], &methods()),
            Err(PayloadError::UnknownVersion("11".into()))
        );
        assert!(matches!(
            token_payload(&[0x92, 0x02, 0xc0], &methods()),
            Err(PayloadError::FieldCount {
                count: 1,
                expected: 5,
                ..
            })
        ));
        assert!(matches!(
            token_payload(b"", &methods()),
            Err(PayloadError::NotMsgpack(_))
        ));
    }

    #[test]
    fn verdicts_follow_keystone_expiry_and_window() {
        let w = Duration::from_secs(100);
        assert_eq!(
            judge(Kind::Token, t(10), w, t(9)),
            Verdict::Valid { until: t(10) }
        );
        assert_eq!(
            judge(Kind::Token, t(10), w, t(10)),
            Verdict::AllowExpired {
                expired: t(10),
                until: t(110)
            }
        );
        assert_eq!(
            judge(Kind::Token, t(10), w, t(110)),
            Verdict::PastWindow { since: t(110) }
        );
        assert_eq!(
            judge(Kind::Receipt, t(10), w, t(10)),
            Verdict::PastWindow { since: t(10) }
        );
    }

    fn fp(b: u8) -> Fingerprint {
        format!("{b:02x}{}", "0".repeat(14)).parse().unwrap()
    }

    fn record(n: u8, promoted: Option<i64>, demoted: Option<i64>) -> KeyRecord {
        KeyRecord {
            fingerprint: fp(n),
            first_seen: t(0),
            created: Some(t(0)),
            promoted: promoted.map(t),
            demoted: demoted.map(t),
            since_boot: None,
        }
    }

    #[test]
    fn the_key_primary_at_creation_is_named_with_its_fate() {
        // Keys 1 (primary 0..100) and 2 (100..200) purged by fernetd at 300 and 400; key 3
        // primary since 200 and demoted at 300; key 4 primary; key 0 staged.
        let mut h = History::new();
        h.keys.insert(0, record(0, None, None));
        h.keys.insert(3, record(3, Some(200), Some(300)));
        h.keys.insert(4, record(4, Some(300), None));
        for (n, at, by) in [(1, 300, true), (2, 400, false)] {
            h.purged.push(PurgedKey {
                number: n,
                fingerprint: fp(n as u8),
                at: t(at),
                by_fernetd: by,
                lost_until: None,
                since_boot: None,
                copy_until: None,
            });
        }
        let mut disk: BTreeMap<u64, Fingerprint> =
            [(0, fp(0)), (3, fp(3)), (4, fp(4))].into_iter().collect();
        // Made at 150: key 2 most likely (found gone at 400), key 1 possibly.
        assert_eq!(
            origin(t(150), &h, &disk),
            Origin::Purged {
                number: 2,
                fingerprint: fp(2),
                at: t(400),
                by_fernetd: false,
                earlier: vec![1]
            }
        );
        // Key 3 staged by fernetd at 120, as key 2 was promoted: a token of 110 is key 1's.
        let mut staged = h.clone();
        if let Some(r) = staged.keys.get_mut(&3) {
            r.created = Some(t(120));
        }
        assert_eq!(
            origin(t(110), &staged, &disk),
            Origin::Purged {
                number: 1,
                fingerprint: fp(1),
                at: t(300),
                by_fernetd: true,
                earlier: vec![]
            }
        );
        // Made at 350, while key 4 (here) was primary: not this repository's token.
        assert_eq!(
            origin(t(350), &h, &disk),
            Origin::NotThisRepository { primary_then: 4 }
        );
        // Made at 250 while key 3 was primary, and key 3 is here: another cluster's token.
        assert_eq!(
            origin(t(250), &h, &disk),
            Origin::NotThisRepository { primary_then: 3 }
        );
        // Key 3 deleted by hand, fernetd not told yet.
        disk.remove(&3);
        assert_eq!(
            origin(t(250), &h, &disk),
            Origin::RemovedUnrecorded {
                number: 3,
                fingerprint: fp(3)
            }
        );
        // Before anything recorded (and before every purge).
        let fresh = {
            let mut h = History::new();
            h.keys.insert(
                1,
                KeyRecord {
                    first_seen: t(500),
                    ..record(1, Some(500), None)
                },
            );
            h
        };
        assert_eq!(
            origin(t(100), &fresh, &disk),
            Origin::BeforeHistory {
                history_begins: Some(t(500))
            }
        );
    }
}
