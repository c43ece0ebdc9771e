//! Settings from three sources, most specific first: command-line flags, fernetd's TOML file,
//! Keystone's own `keystone.conf`; Keystone's defaults fill the rest.
//!
//! One merge path serves every command: [`Sources`] loads the files once, and
//! [`Sources::repository`] merges one repository (tokens, receipts or credentials). The daemon
//! adds what only it needs in [`DaemonSettings`]: a derived `max_active_keys` and the safety
//! verdict on each schedule. Every error names the file and the field (and the line, for
//! TOML), in one line.

use crate::core::duration;
use crate::core::planner::{self, Lifetime, Plan, DEFAULT_MARGIN};
use crate::core::schedule::Schedule;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Keystone's defaults (keystone/conf/token.py, fernet_tokens.py, receipt.py, credential.py).
pub const KEYSTONE_EXPIRATION: Duration = Duration::from_secs(3600);
pub const KEYSTONE_RECEIPT_EXPIRATION: Duration = Duration::from_secs(300);
pub const KEYSTONE_ALLOW_EXPIRED_WINDOW: Duration = Duration::from_secs(172_800);
pub const KEYSTONE_MAX_ACTIVE_KEYS: u64 = 3;
pub const KEYSTONE_KEY_REPOSITORY: &str = "/etc/keystone/fernet-keys/";
pub const KEYSTONE_CREDENTIAL_REPOSITORY: &str = "/etc/keystone/credential-keys/";
/// Keystone's credential repository keeps three keys: the staged key, the primary, and the
/// secondary that credentials not yet migrated are encrypted with.
pub const CREDENTIAL_KEYS: u64 = 3;

/// A credential repository's max_active_keys: at least Keystone's 3 (fewer would purge the
/// secondary at once); more keeps older keys as a buffer (Keystone loads every key file).
pub fn check_credential_keys(n: u64) -> Result<(), String> {
    if n < CREDENTIAL_KEYS {
        return Err(format!(
            "Keystone keeps {CREDENTIAL_KEYS} credential keys (staged, primary, and the \
             secondary unmigrated credentials are encrypted with); at least {CREDENTIAL_KEYS}"
        ));
    }
    Ok(())
}
/// Read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/fernetd/fernetd.toml";
/// The daemon's schedule when none is configured.
pub const DEFAULT_SCHEDULE: &str = "@daily";
/// How long a hook may run before it is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The credentials' hooks (`pre_rotate`, `verify`): a migration of a large credential table
/// through Keystone takes minutes, not seconds.
pub const DEFAULT_CREDENTIAL_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

pub use crate::error::ConfigError;

/// fernetd's TOML file. Sections mirror the command-line flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub keystone: KeystoneSection,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub tokens: RepositorySection,
    pub receipts: Option<RepositorySection>,
    pub credentials: Option<RepositorySection>,
    pub cluster: Option<ClusterSection>,
    #[serde(default)]
    pub clock: ClockSection,
}

/// `[clock]`: which evidence moves this boot's clock anchor forward (see ARCHITECTURE.md,
/// the clock paragraph).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClockSection {
    /// A forward step of the wall clock since fernetd's first moment of this boot moves the
    /// anchor when the system says its clock is synchronized (the kernel's NTP status
    /// without `STA_UNSYNC`, which only a process with `CAP_SYS_TIME` can clear).
    #[serde(default = "yes")]
    pub trust_system_sync: bool,
    /// Read the synchronized status from this file instead of the kernel: `synchronized`
    /// on its first line. It must be owned by root (or fernetd's user) and writable by no
    /// one else. For a time source the kernel does not know of, and tests.
    pub sync_status_file: Option<PathBuf>,
}

impl Default for ClockSection {
    fn default() -> ClockSection {
        ClockSection {
            trust_system_sync: true,
            sync_status_file: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[cluster]`: where the cluster's key sets live.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// etcd client URLs, e.g. ["http://10.0.0.1:2379", "http://10.0.0.2:2379"].
    pub endpoints: Vec<String>,
    /// Key prefix; several Keystone clusters can share one etcd under different prefixes.
    pub prefix: Option<String>,
    /// This node's name (default: the hostname).
    pub node: Option<String>,
    /// Key-encryption key: seals every key set stored in etcd. Required unless
    /// `insecure_unsealed = true`.
    pub seal_key_file: Option<PathBuf>,
    /// Several key-encryption keys, while the seal key changes (instead of `seal_key_file`):
    /// a stored key set opens with any of them and is sealed with the first, naming its id.
    pub seal_key_files: Option<Vec<PathBuf>>,
    /// The operator's explicit consent to key sets in etcd without a seal key (anyone who can
    /// read the prefix or a backup of etcd can then mint tokens); with a seal key, it also lets
    /// this node take unsealed sets while a cluster moves to sealed ones. A warning everywhere
    /// for as long as it is set.
    #[serde(default)]
    pub insecure_unsealed: bool,
    #[serde(default, with = "duration::serde_opt")]
    pub dial_timeout: Option<Duration>,
    #[serde(default, with = "duration::serde_opt")]
    pub request_timeout: Option<Duration>,
    /// How long a dead node keeps its acknowledgements and leadership (default 10s).
    #[serde(default, with = "duration::serde_opt")]
    pub lease_ttl: Option<Duration>,
    /// How long past due a rotation may wait for members to apply the staged key before the
    /// leader reports them as blocking it (default 1m).
    #[serde(default, with = "duration::serde_opt")]
    pub gate_deadline: Option<Duration>,
    /// A member not heard from for this long stops holding promotions back (default: never;
    /// `fernetd cluster remove-node` removes one). Meant to be long, e.g. "7d".
    #[serde(default, with = "duration::serde_opt")]
    pub member_timeout: Option<Duration>,
    /// etcd authentication: user name, and a file holding the password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// TLS (https:// endpoints): the CA that signed etcd's certificate, and this node's
    /// client certificate and key (PEM) when etcd requires client certificates.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[cluster]` with defaults filled in.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node: String,
    /// The seal key file writes are sealed with: `seal_key_file`, or the first of
    /// `seal_key_files`.
    pub seal_key_file: Option<PathBuf>,
    /// Every seal key file, the one that seals first (`seal_key_file` alone, or
    /// `seal_key_files`).
    pub seal_key_files: Vec<PathBuf>,
    /// The configuration says `seal_key_files`: values are sealed in the format that names the
    /// sealing key's id (see [`crate::seal`]).
    pub seal_tagged: bool,
    /// See [`ClusterSection::insecure_unsealed`].
    pub insecure_unsealed: bool,
    /// Who may own the seal key file besides the user fernetd runs as and root: the
    /// configured Keystone user (`[keystone] user`, else a user named `keystone`), whose
    /// daemon reads the same file when an operator runs a command as root.
    pub seal_owner: Option<u32>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub lease_ttl: Duration,
    pub gate_deadline: Duration,
    pub member_timeout: Option<Duration>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClusterSettings {
    /// The setting that names the seal keys, for messages.
    pub fn seal_field(&self) -> &'static str {
        match self.seal_tagged {
            true => "seal_key_files",
            false => "seal_key_file",
        }
    }

    /// The sealing every cluster connection uses: every seal key loaded (each a private file,
    /// see [`crate::seal::SealKey::load`]), the first sealing.
    pub fn sealing(&self) -> Result<crate::seal::Sealing, crate::seal::SealError> {
        let keys = self
            .seal_key_files
            .iter()
            .map(|p| crate::seal::SealKey::load(p, self.seal_owner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match self.seal_tagged {
            true => crate::seal::Sealing::with_keys(keys, self.insecure_unsealed),
            false => crate::seal::Sealing::new(keys.into_iter().next(), self.insecure_unsealed),
        })
    }
}

pub const DEFAULT_CLUSTER_PREFIX: &str = "/fernetd";
/// Where the README and the error messages suggest keeping the seal key.
pub const DEFAULT_SEAL_KEY_FILE: &str = "/etc/fernetd/seal.key";
pub const DEFAULT_GATE_DEADLINE: Duration = Duration::from_secs(60);

/// An endpoint as etcd's client takes it without surprises: `http://` or `https://` (lower
/// case: anything else is read as a host name, and a missing scheme as plain HTTP), then a
/// host and port with nothing that could make the URL mean another host.
fn plain_endpoint(e: &str) -> bool {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let r = r.strip_suffix('/').unwrap_or(r);
        !r.is_empty() && !r.contains(|c: char| c.is_whitespace() || "@#?/\\".contains(c))
    })
}

impl ClusterSection {
    fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(
                "endpoints: list at least one etcd URL, e.g. [\"http://127.0.0.1:2379\"]".into(),
            );
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !plain_endpoint(e)) {
            return Err(format!(
                "endpoints: '{bad}' is not an etcd URL: write https://HOST:PORT (or \
                 http://HOST:PORT), with no user, path, query or fragment"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("cert_file and key_file go together".into());
        }
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if https && self.ca_file.is_none() {
            return Err("ca_file: required with https:// endpoints".into());
        }
        if !https && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err("endpoints: TLS files are set, so the endpoints must be https://".into());
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err("username and password_file go together".into());
        }
        if self.lease_ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err("lease_ttl: at least 1s".into());
        }
        if let Some(p) = &self.prefix {
            if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
                return Err(format!(
                    "prefix: '{p}' must start with '/' and not end with one, e.g. \"/fernetd\""
                ));
            }
        }
        match (&self.seal_key_file, &self.seal_key_files) {
            (Some(_), Some(_)) => {
                return Err(
                    "seal_key_file and seal_key_files: set one of them (seal_key_files = \
                            [\"NEW\", \"OLD\"] names every seal key, the sealing one first)"
                        .into(),
                )
            }
            (None, Some(files)) if files.is_empty() => {
                return Err("seal_key_files: list at least one file (or remove it)".into())
            }
            (None, Some(files)) => {
                if let Some((i, f)) = files
                    .iter()
                    .enumerate()
                    .find(|(i, f)| files[..*i].contains(f))
                {
                    return Err(format!(
                        "seal_key_files: {} is listed twice (entries {} and {})",
                        f.display(),
                        files.iter().position(|g| g == f).unwrap_or(0) + 1,
                        i + 1
                    ));
                }
            }
            _ => {}
        }
        if self.seal_key_file.is_none() && self.seal_key_files.is_none() && !self.insecure_unsealed
        {
            return Err(format!(
                "seal_key_file: required: without it every Fernet key sits in etcd in the clear, \
                 and anyone who can read the prefix or an etcd backup can mint tokens; set \
                 seal_key_file = \"{DEFAULT_SEAL_KEY_FILE}\" and make it with `fernetd cluster \
                 init --new-seal-key` (or `fernetd cluster new-seal-key --out FILE`), copied to \
                 every node; or accept the risk with insecure_unsealed = true"
            ));
        }
        Ok(())
    }

    /// The settings, with defaults; `keystone` names the user whose seal key file a command
    /// run as root may read (see [`ClusterSettings::seal_owner`]).
    pub fn settings(&self, keystone: &KeystoneSection) -> ClusterSettings {
        let user = keystone.user.as_deref().unwrap_or("keystone");
        let seal_owner = crate::repository::resolve_user(user).ok();
        ClusterSettings {
            endpoints: self.endpoints.clone(),
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.into()),
            node: self.node.clone().unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "localhost".into())
            }),
            seal_key_file: self
                .seal_key_file
                .clone()
                .or_else(|| self.seal_key_files.as_ref()?.first().cloned()),
            seal_key_files: match &self.seal_key_files {
                Some(files) => files.clone(),
                None => self.seal_key_file.iter().cloned().collect(),
            },
            seal_tagged: self.seal_key_files.is_some(),
            insecure_unsealed: self.insecure_unsealed,
            seal_owner,
            dial_timeout: self.dial_timeout.unwrap_or(Duration::from_secs(5)),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(5)),
            lease_ttl: self.lease_ttl.unwrap_or(Duration::from_secs(10)),
            gate_deadline: self.gate_deadline.unwrap_or(DEFAULT_GATE_DEADLINE),
            member_timeout: self.member_timeout,
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoneSection {
    /// Path of keystone.conf to read E, W, max_active_keys and key_repository from.
    pub config: Option<PathBuf>,
    /// Owner of the keys (name or numeric id).
    pub user: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Prometheus metrics listen address (off when absent); a bare port binds loopback.
    #[serde(default, deserialize_with = "listen_opt")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    pub key_repository: Option<PathBuf>,
    pub max_active_keys: Option<u64>,
    #[serde(default, with = "duration::serde_opt")]
    pub expiration: Option<Duration>,
    #[serde(default, with = "duration::serde_opt")]
    pub allow_expired_window: Option<Duration>,
    #[serde(default, with = "duration::serde_opt")]
    pub margin: Option<Duration>,
    pub schedule: Option<String>,
    #[serde(default, with = "duration::serde_opt")]
    pub lock_timeout: Option<Duration>,
    /// Run the daemon even though the planner says max_active_keys is unsafe.
    #[serde(default)]
    pub allow_unsafe_schedule: bool,
    /// Restore a deleted or corrupted key from fernetd's own copy.
    #[serde(default)]
    pub repair: bool,
    pub on_rotate: Option<Vec<String>>,
    pub on_change: Option<Vec<String>>,
    pub on_invalid: Option<Vec<String>>,
    /// Credentials only: must succeed before each rotation (keystone-manage credential_migrate).
    pub pre_rotate: Option<Vec<String>>,
    /// Credentials only: Keystone's own check after `pre_rotate` (every credential on the
    /// primary); its stdout must carry `primary_key_hash=` of this repository's primary before
    /// any key is purged. Default: [`crate::core::credentials::DEFAULT_VERIFY`].
    pub verify: Option<Vec<String>>,
    #[serde(default, with = "duration::serde_opt")]
    pub hook_timeout: Option<Duration>,
}

/// Which Keystone repository a section describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tokens,
    Receipts,
    Credentials,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tokens, Kind::Receipts, Kind::Credentials];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tokens => "tokens",
            Kind::Receipts => "receipts",
            Kind::Credentials => "credentials",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    let src = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!(":{line}: `{src}`")
                })
                .unwrap_or_default();
            ConfigError(format!(
                "{}{at}: {}",
                path.display(),
                e.message().replace('\n', " ")
            ))
        })?;
        if let Some(c) = &cfg.cluster {
            c.validate()
                .map_err(|m| ConfigError(format!("{}: [cluster] {m}", path.display())))?;
        }
        for kind in Kind::ALL {
            if let Some(s) = cfg.section(kind) {
                s.validate(kind)
                    .map_err(|m| ConfigError(format!("{}: [{kind}] {m}", path.display())))?;
            }
        }
        Ok(cfg)
    }

    pub fn section(&self, kind: Kind) -> Option<&RepositorySection> {
        match kind {
            Kind::Tokens => Some(&self.tokens),
            Kind::Receipts => self.receipts.as_ref(),
            Kind::Credentials => self.credentials.as_ref(),
        }
    }
}

impl RepositorySection {
    /// Checks what can be checked without the other sources; the message starts with the field.
    fn validate(&self, kind: Kind) -> Result<(), String> {
        if let Some(n) = self.max_active_keys {
            check_max_keys(n).map_err(|m| format!("max_active_keys: {m}"))?;
            if kind == Kind::Credentials {
                check_credential_keys(n).map_err(|m| format!("max_active_keys: {m}"))?;
            }
        }
        if let Some(s) = &self.schedule {
            s.parse::<Schedule>()
                .map_err(|m| format!("schedule: {m}"))?;
        }
        for (name, argv) in [
            ("on_rotate", &self.on_rotate),
            ("on_change", &self.on_change),
            ("on_invalid", &self.on_invalid),
            ("pre_rotate", &self.pre_rotate),
            ("verify", &self.verify),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                return Err(format!(
                    "{name}: needs a program, e.g. [\"/usr/local/bin/notify\", \"arg\"]"
                ));
            }
        }
        if kind != Kind::Credentials && self.pre_rotate.is_some() {
            return Err("pre_rotate: only [credentials] runs a command before rotating".into());
        }
        if kind != Kind::Credentials && self.verify.is_some() {
            return Err("verify: only [credentials] verifies a migration before rotating".into());
        }
        if kind == Kind::Receipts && self.allow_expired_window.is_some() {
            // keystone/receipt/handlers.py validates with window_seconds=0: an expired receipt
            // is never accepted, so [token] allow_expired_window does not apply to receipts.
            return Err(
                "allow_expired_window: Keystone never accepts an expired receipt; \
                        remove it (receipts' keys are kept for their expiration plus margin)"
                    .into(),
            );
        }
        if kind == Kind::Credentials {
            for (name, set) in [
                ("expiration", self.expiration.is_some()),
                ("allow_expired_window", self.allow_expired_window.is_some()),
                ("margin", self.margin.is_some()),
            ] {
                if set {
                    return Err(format!("{name}: credentials do not expire; remove it"));
                }
            }
            if self.pre_rotate.is_none() {
                return Err(
                    "pre_rotate: required, e.g. [\"keystone-manage\", \"credential_migrate\"] \
                            (Keystone refuses to rotate while a credential uses an old key)"
                        .into(),
                );
            }
            if self.schedule.is_none() {
                return Err("schedule: required for credentials".into());
            }
        }
        Ok(())
    }
}

/// A listen address: `IP:PORT`, or a bare `PORT` / `:PORT`, which binds loopback (metrics are
/// for a local scraper unless the operator says otherwise).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(p) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("'{s}' is not an address; expected 127.0.0.1:9747, [::1]:9747 or 9747")
    })
}

fn listen_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_listen(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

pub use crate::core::planner::check_max_keys;

pub use crate::keystone_conf::KeystoneConf;

/// Values given on the command line (all optional). They apply to the token repository.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub key_repository: Option<PathBuf>,
    pub max_active_keys: Option<u64>,
    pub expiration: Option<Duration>,
    pub allow_expired_window: Option<Duration>,
    pub margin: Option<Duration>,
    pub schedule: Option<String>,
    pub keystone_config: Option<PathBuf>,
    pub keystone_user: Option<String>,
    pub keystone_group: Option<String>,
    pub lock_timeout: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
}

/// Commands run on events, as argv arrays (no shell unless the user writes `sh -c`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub on_rotate: Option<Vec<String>>,
    pub on_change: Option<Vec<String>>,
    pub on_invalid: Option<Vec<String>>,
    pub pre_rotate: Option<Vec<String>>,
    /// Credentials: Keystone's check run after `pre_rotate` (always set for credentials: the
    /// configured one or [`crate::core::credentials::DEFAULT_VERIFY`]).
    pub verify: Option<Vec<String>>,
    pub timeout: Duration,
}

/// One repository's settings, merged from every source.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: Kind,
    pub key_repository: PathBuf,
    /// The configured value; `None` when no source sets it.
    pub max_active_keys: Option<u64>,
    pub lifetime: Lifetime,
    pub schedule: Option<Schedule>,
    pub keystone_user: Option<String>,
    pub keystone_group: Option<String>,
    pub lock_timeout: Option<Duration>,
    /// keystone.conf actually read, if any.
    pub keystone_config: Option<PathBuf>,
    pub hooks: Hooks,
    pub repair: bool,
    pub allow_unsafe_schedule: bool,
    /// Where each lifetime came from, for `plan`.
    pub origins: Origins,
}

/// Where each value of a [`Lifetime`] came from: a flag, fernetd's file, a Keystone file or
/// variable, or a default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    pub expiration: String,
    pub allow_expired_window: String,
    pub margin: String,
    /// Set when receipts share the repository.
    pub receipts: Option<String>,
}

/// The loaded files, ready to merge with flags.
#[derive(Debug, Clone)]
pub struct Sources {
    pub file: FileConfig,
    pub keystone: KeystoneConf,
    pub keystone_path: Option<PathBuf>,
    /// fernetd's TOML file, when one was read.
    pub config_path: Option<PathBuf>,
}

impl Sources {
    /// Loads `config` (or the default file when present) and the keystone.conf it or the
    /// flags name (or the default one when present).
    pub fn load(flags: &Flags, config: Option<&Path>) -> Result<Sources, ConfigError> {
        let config_path = match config {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let file = match &config_path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let explicit = flags
            .keystone_config
            .clone()
            .or_else(|| file.keystone.config.clone());
        let env = |name: &str| std::env::var(name).ok();
        let keystone = KeystoneConf::discover(&crate::keystone_conf::Discovery {
            root: Path::new("/"),
            explicit: explicit.as_deref(),
            env: &env,
        })?;
        Ok(Sources {
            config_path,
            keystone_path: keystone.files.first().cloned(),
            file,
            keystone,
        })
    }

    /// Merges one repository; `None` for receipts or credentials without a section.
    /// `flags` apply to the token repository only (the daemon's flags are the tokens').
    pub fn repository(&self, kind: Kind, flags: &Flags) -> Result<Option<Settings>, ConfigError> {
        let none = Flags::default();
        let own = if kind == Kind::Tokens { flags } else { &none };
        self.merge(kind, own, flags)
    }

    /// Merges the repository a one-shot command names with `--kind`: `flags` apply to it,
    /// whichever kind it is.
    pub fn selected(&self, kind: Kind, flags: &Flags) -> Result<Option<Settings>, ConfigError> {
        self.merge(kind, flags, flags)
    }

    /// `f` applies to `kind`; `tokens` to the token repository that receipts default to.
    fn merge(
        &self,
        kind: Kind,
        f: &Flags,
        tokens: &Flags,
    ) -> Result<Option<Settings>, ConfigError> {
        let Some(t) = self.file.section(kind) else {
            return Ok(None);
        };
        let ks = &self.keystone;
        let (ks_dir, ks_keys, ks_exp, default_dir, default_exp) = match kind {
            Kind::Tokens => (
                &ks.key_repository,
                ks.max_active_keys,
                ks.expiration,
                KEYSTONE_KEY_REPOSITORY,
                KEYSTONE_EXPIRATION,
            ),
            // Keystone's receipt repository defaults to the token repository.
            Kind::Receipts => (
                &ks.receipt_key_repository,
                ks.receipt_max_active_keys,
                ks.receipt_expiration,
                KEYSTONE_KEY_REPOSITORY,
                KEYSTONE_RECEIPT_EXPIRATION,
            ),
            Kind::Credentials => (
                &ks.credential_key_repository,
                None,
                None,
                KEYSTONE_CREDENTIAL_REPOSITORY,
                Duration::ZERO,
            ),
        };
        // Credentials do not expire: no lifetime, and always Keystone's fixed key count.
        let mut lifetime = if kind == Kind::Credentials {
            Lifetime {
                expiration: Duration::ZERO,
                allow_expired_window: Duration::ZERO,
                margin: Duration::ZERO,
                receipts: Duration::ZERO,
            }
        } else {
            Lifetime {
                expiration: f
                    .expiration
                    .or(t.expiration)
                    .or(ks_exp)
                    .unwrap_or(default_exp),
                // Keystone never validates an expired receipt: the window is the tokens' only.
                allow_expired_window: if kind == Kind::Receipts {
                    Duration::ZERO
                } else {
                    f.allow_expired_window
                        .or(t.allow_expired_window)
                        .or(ks.allow_expired_window)
                        .unwrap_or(KEYSTONE_ALLOW_EXPIRED_WINDOW)
                },
                margin: f.margin.or(t.margin).unwrap_or(DEFAULT_MARGIN),
                receipts: Duration::ZERO,
            }
        };
        let max_active_keys = match kind {
            // Keystone keeps 3 (staged, primary, and the secondary credentials may still be
            // encrypted with); more is a buffer Keystone loads too.
            Kind::Credentials => {
                let n = f
                    .max_active_keys
                    .or(t.max_active_keys)
                    .unwrap_or(CREDENTIAL_KEYS);
                check_credential_keys(n)
                    .map_err(|m| ConfigError(format!("[credentials] max_active_keys {n}: {m}")))?;
                Some(n)
            }
            _ => f.max_active_keys.or(t.max_active_keys).or(ks_keys),
        };
        // A schedule from the file was validated (and named) by FileConfig::parse.
        let schedule = match (&f.schedule, &t.schedule) {
            (Some(s), _) => Some(
                s.parse::<Schedule>()
                    .map_err(|m| ConfigError(format!("--schedule: {m}")))?,
            ),
            (None, Some(s)) => Some(s.parse::<Schedule>().map_err(ConfigError)?),
            (None, None) => None,
        };
        let d = &self.file.keystone;
        let key_repository = match f
            .key_repository
            .clone()
            .or_else(|| t.key_repository.clone())
            .or_else(|| ks_dir.clone())
        {
            Some(dir) => dir,
            // Keystone's receipt repository defaults to wherever the token repository is.
            None if kind == Kind::Receipts => match self.repository(Kind::Tokens, tokens)? {
                Some(tokens) => tokens.key_repository,
                None => PathBuf::from(default_dir),
            },
            None => PathBuf::from(default_dir),
        };
        let mut origins = self.origins(kind, f, t);
        // Only a configured receipt expiration counts: Keystone's default (5 minutes) is below
        // every token lifetime but a demo's, and counting it would keep keys that lifetimes
        // given as flags (`--expiration 30s`) mean to purge.
        if let (Kind::Tokens, Some(receipts)) = (kind, ks.receipt_expiration) {
            if self.receipts_share(&key_repository) {
                lifetime.receipts = receipts;
                origins.receipts = ks
                    .origin("receipt", "expiration")
                    .map(|o| origin_text(o, "receipt", "expiration"));
            }
        }
        Ok(Some(Settings {
            origins,
            kind,
            key_repository,
            max_active_keys,
            lifetime,
            schedule,
            keystone_user: f.keystone_user.clone().or_else(|| d.user.clone()),
            keystone_group: f.keystone_group.clone().or_else(|| d.group.clone()),
            lock_timeout: f.lock_timeout.or(t.lock_timeout),
            keystone_config: self.keystone_path.clone(),
            hooks: Hooks {
                on_rotate: t.on_rotate.clone(),
                on_change: t.on_change.clone(),
                on_invalid: t.on_invalid.clone(),
                pre_rotate: t.pre_rotate.clone(),
                verify: (kind == Kind::Credentials).then(|| {
                    t.verify.clone().unwrap_or_else(|| {
                        crate::core::credentials::DEFAULT_VERIFY
                            .iter()
                            .map(|a| a.to_string())
                            .collect()
                    })
                }),
                // A migration re-encrypts every stored credential: a big table takes minutes.
                timeout: t.hook_timeout.unwrap_or(match kind {
                    Kind::Credentials => DEFAULT_CREDENTIAL_HOOK_TIMEOUT,
                    _ => DEFAULT_HOOK_TIMEOUT,
                }),
            },
            repair: t.repair,
            allow_unsafe_schedule: t.allow_unsafe_schedule,
        }))
    }
}

impl Sources {
    /// Whether Keystone's receipts use the token repository `dir`: `[fernet_receipts]
    /// key_repository` (fernetd's `[receipts]` section, else keystone.conf's) names it, or
    /// names nothing (Keystone's default is the token directory's default: counted as shared,
    /// the safe side).
    fn receipts_share(&self, dir: &Path) -> bool {
        let receipts = self
            .file
            .receipts
            .as_ref()
            .and_then(|r| r.key_repository.clone())
            .or_else(|| self.keystone.receipt_key_repository.clone());
        receipts.is_none_or(|r| same_dir(&r, dir))
    }

    /// Where `kind`'s lifetimes come from, by the merge's own order.
    fn origins(&self, kind: Kind, f: &Flags, t: &RepositorySection) -> Origins {
        let toml = |field: &str| {
            let file = self
                .config_path
                .as_ref()
                .map_or_else(|| DEFAULT_CONFIG.to_string(), |p| p.display().to_string());
            format!("{file} [{kind}] {field}")
        };
        let keystone = |group: &str, option: &str, default: &str| {
            self.keystone
                .origin(group, option)
                .map_or_else(|| default.to_string(), |o| origin_text(o, group, option))
        };
        let group = if kind == Kind::Receipts {
            "receipt"
        } else {
            "token"
        };
        let pick = |flag: bool, file: bool, field: &str, otherwise: String| match (flag, file) {
            (true, _) => format!("--{}", field.replace('_', "-")),
            (false, true) => toml(field),
            (false, false) => otherwise,
        };
        if kind == Kind::Credentials {
            return Origins::default();
        }
        Origins {
            expiration: pick(
                f.expiration.is_some(),
                t.expiration.is_some(),
                "expiration",
                keystone(group, "expiration", "Keystone's default"),
            ),
            allow_expired_window: match kind {
                Kind::Receipts => "Keystone never accepts an expired receipt".into(),
                _ => pick(
                    f.allow_expired_window.is_some(),
                    t.allow_expired_window.is_some(),
                    "allow_expired_window",
                    keystone("token", "allow_expired_window", "Keystone's default"),
                ),
            },
            margin: pick(
                f.margin.is_some(),
                t.margin.is_some(),
                "margin",
                "fernetd's default".into(),
            ),
            receipts: None,
        }
    }
}

/// See [`crate::core::credentials::KEY_RETENTION`].
pub const CREDENTIAL_KEY_RETENTION: Duration = crate::core::credentials::KEY_RETENTION;

impl Settings {
    /// How long a demoted key counts as live for the gate, repair, `key-lost-in-retention`,
    /// `status` and the cluster's input refusal: the retention (`E + W + M`), and for
    /// credentials [`CREDENTIAL_KEY_RETENTION`] (the planner and the charts keep the lifetime).
    pub fn key_retention(&self) -> Duration {
        match self.kind {
            Kind::Credentials => CREDENTIAL_KEY_RETENTION,
            _ => self.lifetime.retention(),
        }
    }

    /// As [`Settings::key_retention`], for judging a cluster key set's purges (`E + W`).
    pub fn key_decryptable(&self) -> Duration {
        match self.kind {
            Kind::Credentials => CREDENTIAL_KEY_RETENTION,
            _ => self.lifetime.decryptable(),
        }
    }

    /// The token repository's settings: flags over the TOML file over keystone.conf.
    /// `config` is `--config` (the default file is read when absent and present on disk).
    pub fn resolve(flags: &Flags, config: Option<&Path>) -> Result<Settings, ConfigError> {
        let sources = Sources::load(flags, config)?;
        match sources.repository(Kind::Tokens, flags)? {
            Some(s) => Ok(s),
            None => unreachable!("the token section always exists"),
        }
    }
}

/// A repository as the daemon runs it: schedule and `max_active_keys` settled and proven.
#[derive(Debug, Clone)]
pub struct Managed {
    pub settings: Settings,
    pub schedule: Schedule,
    /// Configured, or (when unset) the smallest safe value the planner derives.
    pub max_active_keys: u64,
    /// `plan.safe == Some(false)` only with `allow_unsafe_schedule` (or from `inspect`).
    pub plan: Plan,
    /// The resolved owner of the key files, if configured.
    pub owner: Option<crate::repository::Owner>,
}

/// Everything the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub repositories: Vec<Managed>,
    pub metrics_listen: Option<SocketAddr>,
    /// Cluster mode: the repositories follow key sets in etcd.
    pub cluster: Option<ClusterSettings>,
    /// `[clock]`: what moves the boot anchor forward.
    pub clock: ClockSection,
}

impl DaemonSettings {
    /// Merges every configured repository and proves each schedule safe: an unsafe one is an
    /// error unless its section sets `allow_unsafe_schedule = true`.
    pub fn resolve(
        flags: &Flags,
        config: Option<&Path>,
        now: DateTime<Utc>,
    ) -> Result<DaemonSettings, ConfigError> {
        let d = Self::inspect(flags, config, now)?;
        // A seal key others can read, or the wrong kind of file, stops the daemon at start
        // and a reload, as it stops every command that would use it.
        if let Some(c) = &d.cluster {
            for p in &c.seal_key_files {
                crate::seal::SealKey::load(p, c.seal_owner)
                    .map_err(|e| ConfigError(format!("[cluster] {} {e}", c.seal_field())))?;
            }
        }
        if let Some(m) = d
            .repositories
            .iter()
            .find(|m| m.plan.safe == Some(false) && !m.settings.allow_unsafe_schedule)
        {
            let p = &m.plan;
            return Err(ConfigError(format!(
                "[{}] max_active_keys = {} is unsafe for schedule '{}': it needs {} (the shortest \
                 retention window is {}, tokens must stay decryptable {}); set max_active_keys = {} \
                 or allow_unsafe_schedule = true",
                m.settings.kind,
                m.max_active_keys,
                m.schedule,
                p.required_max_active_keys,
                duration::format(p.shortest_window),
                duration::format(p.retention),
                p.required_max_active_keys
            )));
        }
        Ok(d)
    }

    /// Like [`DaemonSettings::resolve`] but reports an unsafe plan instead of refusing it
    /// (for `status`).
    pub fn inspect(
        flags: &Flags,
        config: Option<&Path>,
        now: DateTime<Utc>,
    ) -> Result<DaemonSettings, ConfigError> {
        let sources = Sources::load(flags, config)?;
        let mut repositories: Vec<Managed> = Vec::new();
        for kind in Kind::ALL {
            let Some(s) = sources.repository(kind, flags)? else {
                continue;
            };
            if let Some(other) = repositories
                .iter()
                .find(|m| same_dir(&m.settings.key_repository, &s.key_repository))
            {
                return Err(ConfigError(format!(
                    "[{kind}] key_repository {} is also the {} repository; a shared repository is \
                     rotated once: remove [{kind}] or give it its own directory",
                    s.key_repository.display(),
                    other.settings.kind
                )));
            }
            repositories.push(manage(s, now)?);
        }
        Ok(DaemonSettings {
            repositories,
            metrics_listen: flags.metrics_listen.or(sources.file.daemon.metrics_listen),
            cluster: sources
                .file
                .cluster
                .as_ref()
                .map(|c| c.settings(&sources.file.keystone)),
            clock: sources.file.clock.clone(),
        })
    }
}

/// A Keystone value's origin as `plan` says it: the variable alone, or the file and option.
fn origin_text(origin: &str, group: &str, option: &str) -> String {
    if origin.starts_with("OS_") {
        origin.to_string()
    } else {
        format!("{origin} [{group}] {option}")
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.components().collect());
    norm(a) == norm(b)
}

/// Settles one repository's schedule and key count (derived by the planner when unset): the
/// one `max_active_keys` the daemon, `status` and `fernetd rotate` all use.
pub fn manage(s: Settings, now: DateTime<Utc>) -> Result<Managed, ConfigError> {
    let kind = s.kind;
    let schedule = match &s.schedule {
        Some(sch) => sch.clone(),
        None => DEFAULT_SCHEDULE.parse::<Schedule>().map_err(ConfigError)?,
    };
    let plan = planner::plan(&schedule, &s.lifetime, s.max_active_keys, now, None)
        .map_err(|e| ConfigError(format!("[{kind}] schedule: {e}")))?;
    let owner =
        crate::repository::Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())
            .map_err(|e| ConfigError(format!("[keystone] user/group: {e}")))?;
    Ok(Managed {
        owner,
        max_active_keys: s.max_active_keys.unwrap_or(plan.required_max_active_keys),
        settings: s,
        schedule,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn several_seal_keys_seal_with_the_first_and_the_single_field_keeps_working() {
        let parse = |cluster: &str| {
            FileConfig::parse(
                &format!("[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\n{cluster}"),
                Path::new("f.toml"),
            )
            .map(|f| {
                f.cluster
                    .unwrap_or_default()
                    .settings(&KeystoneSection::default())
            })
        };
        let one = parse("seal_key_file = \"/s/old\"\n").unwrap();
        assert_eq!(one.seal_key_file, Some(PathBuf::from("/s/old")));
        assert_eq!(one.seal_key_files, vec![PathBuf::from("/s/old")]);
        assert!(!one.seal_tagged);
        assert_eq!(one.seal_field(), "seal_key_file");
        let two = parse("seal_key_files = [\"/s/new\", \"/s/old\"]\n").unwrap();
        assert_eq!(two.seal_key_file, Some(PathBuf::from("/s/new")));
        assert_eq!(
            two.seal_key_files,
            vec![PathBuf::from("/s/new"), PathBuf::from("/s/old")]
        );
        assert!(two.seal_tagged);
        let err = |c: &str| parse(c).unwrap_err().0;
        assert!(
            err("seal_key_file = \"/a\"\nseal_key_files = [\"/b\"]\n").contains("set one of them")
        );
        assert!(err("seal_key_files = []\n").contains("at least one file"));
        assert!(err("seal_key_files = [\"/a\", \"/b\", \"/a\"]\n")
            .contains("/a is listed twice (entries 1 and 3)"));
        assert!(err("").contains("seal_key_file: required"));
        let none = parse("insecure_unsealed = true\n").unwrap();
        assert!(none.seal_key_files.is_empty() && none.seal_key_file.is_none());
    }

    #[test]
    fn the_system_clock_is_trusted_unless_the_file_says_otherwise() {
        let p = Path::new("fernetd.toml");
        assert_eq!(
            FileConfig::parse("", p).unwrap().clock,
            ClockSection {
                trust_system_sync: true,
                sync_status_file: None
            }
        );
        let c = FileConfig::parse(
            "[clock]\ntrust_system_sync = false\nsync_status_file = \"/run/sync\"\n",
            p,
        )
        .unwrap()
        .clock;
        assert!(!c.trust_system_sync);
        assert_eq!(c.sync_status_file.as_deref(), Some(Path::new("/run/sync")));
        assert!(FileConfig::parse("[clock]\ntrust = true\n", p).is_err());
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("9747").unwrap().to_string(), "127.0.0.1:9747");
        assert_eq!(parse_listen(":9747").unwrap().to_string(), "127.0.0.1:9747");
        assert_eq!(
            parse_listen("0.0.0.0:9747").unwrap().to_string(),
            "0.0.0.0:9747"
        );
        assert_eq!(parse_listen("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_listen("nowhere")
            .unwrap_err()
            .contains("not an address"));
        assert!(parse_listen("99999").is_err());
    }

    #[test]
    fn keystone_conf_values_and_defaults() {
        let f = file(
            "[DEFAULT]\ndebug = true\n[token]\nexpiration = 7200\n\
             [fernet_tokens]\nmax_active_keys = 6\nkey_repository = /srv/keys\n\
             [token]\nallow_expired_window = 3600\n",
        );
        let k = KeystoneConf::load(f.path()).unwrap();
        assert_eq!(k.expiration, Some(Duration::from_secs(7200)));
        assert_eq!(k.allow_expired_window, Some(Duration::from_secs(3600)));
        assert_eq!(k.max_active_keys, Some(6));
        assert_eq!(k.key_repository, Some(PathBuf::from("/srv/keys")));
        let f = file("");
        let empty = KeystoneConf::load(f.path()).unwrap();
        assert_eq!(
            empty,
            KeystoneConf {
                files: vec![f.path().to_path_buf()],
                ..KeystoneConf::default()
            }
        );
    }

    #[test]
    fn receipts_sharing_the_token_repository_are_planned_for_too() {
        // Keystone's default layout: receipts use the token directory; their expiration (1 d
        // here) outlasts the tokens' 1 h + 1 h, so the token repository keeps keys for 1 d.
        let ks = file("[token]\nexpiration = 3600\nallow_expired_window = 3600\n[receipt]\nexpiration = 86400\n");
        let toml = file(&format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"/srv/k\"\nmargin = 0\n",
            ks.path().display()
        ));
        let s = Settings::resolve(&Flags::default(), Some(toml.path())).unwrap();
        assert_eq!(s.lifetime.retention(), Duration::from_secs(86400));
        assert!(s.lifetime.receipts_decide());
        let origin = s.origins.receipts.unwrap();
        assert!(origin.contains("[receipt] expiration"), "{origin}");
        // Receipts elsewhere: the tokens' own lifetime.
        let ks = file("[token]\nexpiration = 3600\nallow_expired_window = 3600\n[receipt]\nexpiration = 86400\n[fernet_receipts]\nkey_repository = /srv/r\n");
        let toml = file(&format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"/srv/k\"\nmargin = 0\n",
            ks.path().display()
        ));
        let s = Settings::resolve(&Flags::default(), Some(toml.path())).unwrap();
        assert_eq!(s.lifetime.retention(), Duration::from_secs(7200));
        assert_eq!(s.origins.receipts, None);
        assert!(
            s.origins.expiration.ends_with("[token] expiration"),
            "{:?}",
            s.origins
        );
        assert_eq!(
            s.origins.margin,
            format!("{} [tokens] margin", toml.path().display())
        );
    }

    #[test]
    fn keystone_conf_errors_name_file_and_option() {
        let f = file("[token]\nexpiration = soon\n");
        let e = KeystoneConf::load(f.path()).unwrap_err().0;
        assert!(e.contains("[token] expiration = 'soon'"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
    }

    #[test]
    fn flags_win_over_toml_over_keystone_conf() {
        let ks = file("[token]\nexpiration = 100\nallow_expired_window = 200\n[fernet_tokens]\nmax_active_keys = 4\n");
        let toml = file(&format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nexpiration = \"5m\"\nmargin = 0\n",
            ks.path().display()
        ));
        let flags = Flags {
            max_active_keys: Some(9),
            ..Flags::default()
        };
        let s = Settings::resolve(&flags, Some(toml.path())).unwrap();
        assert_eq!(s.max_active_keys, Some(9));
        assert_eq!(s.lifetime.expiration, Duration::from_secs(300));
        assert_eq!(s.lifetime.allow_expired_window, Duration::from_secs(200));
        assert_eq!(s.lifetime.margin, Duration::ZERO);
    }

    #[test]
    fn receipts_keep_keys_for_their_expiration_only() {
        // keystone/receipt/handlers.py: validate_receipt(receipt_id), window_seconds = 0.
        let ks = file(
            "[token]\nexpiration = 100\nallow_expired_window = 200\n[receipt]\nexpiration = 60\n",
        );
        let toml = file(&format!(
            "[keystone]\nconfig = \"{}\"\n[receipts]\nkey_repository = \"/srv/receipts\"\nmargin = \"5s\"\n",
            ks.path().display()
        ));
        let sources = Sources::load(&Flags::default(), Some(toml.path())).unwrap();
        let r = sources
            .repository(Kind::Receipts, &Flags::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.lifetime.expiration, Duration::from_secs(60));
        assert_eq!(r.lifetime.allow_expired_window, Duration::ZERO);
        assert_eq!(r.lifetime.retention(), Duration::from_secs(65));
        let t = sources
            .repository(Kind::Tokens, &Flags::default())
            .unwrap()
            .unwrap();
        assert_eq!(t.lifetime.allow_expired_window, Duration::from_secs(200));
        let e = FileConfig::parse(
            "[receipts]\nkey_repository = \"/r\"\nallow_expired_window = \"1h\"\n",
            Path::new("f.toml"),
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("[receipts] allow_expired_window") && e.contains("expired receipt"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors_are_one_line_with_file_line_and_field() {
        let p = Path::new("fernetd.toml");
        let e = FileConfig::parse("[tokens]\nexpirattion = 5\n", p)
            .unwrap_err()
            .0;
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("fernetd.toml:2:"), "{e}");
        assert!(e.contains("expirattion"), "{e}");
        let e = FileConfig::parse("[tokens]\nexpiration = -5\n", p)
            .unwrap_err()
            .0;
        assert!(e.contains("negative") && e.contains(":2:"), "{e}");
        let e = FileConfig::parse("[tokens]\nschedule = \"61 * * * *\"\n", p)
            .unwrap_err()
            .0;
        assert!(e.contains("[tokens] schedule"), "{e}");
        let e = FileConfig::parse("[tokens]\nmax_active_keys = 1\n", p)
            .unwrap_err()
            .0;
        assert!(e.contains("max_active_keys"), "{e}");
    }
}
