//! Settings from three sources, most specific first: command-line flags, fernetd's TOML file,
//! Keystone's own `keystone.conf`; Keystone's defaults fill the rest.
//!
//! Every error names the file and the field (and the line, for TOML), in one line.

use crate::duration;
use crate::planner::{Lifetime, DEFAULT_MARGIN};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Keystone's defaults (keystone/conf/token.py, fernet_tokens.py).
pub const KEYSTONE_EXPIRATION: Duration = Duration::from_secs(3600);
pub const KEYSTONE_ALLOW_EXPIRED_WINDOW: Duration = Duration::from_secs(172_800);
pub const KEYSTONE_MAX_ACTIVE_KEYS: u64 = 3;
pub const KEYSTONE_KEY_REPOSITORY: &str = "/etc/keystone/fernet-keys/";
pub const KEYSTONE_CONFIG: &str = "/etc/keystone/keystone.conf";
/// Read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG: &str = "/etc/fernetd/fernetd.toml";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// fernetd's TOML file. Sections mirror the command-line flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub keystone: KeystoneSection,
    #[serde(default)]
    pub tokens: RepositorySection,
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
        if let Some(n) = cfg.tokens.max_active_keys {
            check_max_keys(n).map_err(|m| {
                ConfigError(format!("{}: [tokens] max_active_keys: {m}", path.display()))
            })?;
        }
        if let Some(s) = &cfg.tokens.schedule {
            s.parse::<Schedule>()
                .map_err(|m| ConfigError(format!("{}: [tokens] schedule: {m}", path.display())))?;
        }
        Ok(cfg)
    }
}

pub fn check_max_keys(n: u64) -> Result<(), String> {
    if n < 2 {
        Err(format!("{n} is below 2 (a staged and a primary key)"))
    } else {
        Ok(())
    }
}

/// The options fernetd reads from keystone.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeystoneConf {
    pub expiration: Option<Duration>,
    pub allow_expired_window: Option<Duration>,
    pub max_active_keys: Option<u64>,
    pub key_repository: Option<PathBuf>,
}

impl KeystoneConf {
    /// Reads oslo.config INI: `[token] expiration`, `[token] allow_expired_window`,
    /// `[fernet_tokens] max_active_keys`, `[fernet_tokens] key_repository`. For a repeated
    /// option the last value wins, as in oslo.config.
    pub fn load(path: &Path) -> Result<KeystoneConf, ConfigError> {
        let opts = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: true,
            ..ini::ParseOption::default()
        };
        let ini = ini::Ini::load_from_file_opt(path, opts)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let get = |section: &str, key: &str| -> Option<String> {
            ini.section_all(Some(section))
                .flat_map(|p| p.get_all(key))
                .last()
                .map(|v| v.trim().to_string())
        };
        let int = |section: &str, key: &str| -> Result<Option<u64>, ConfigError> {
            match get(section, key) {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    ConfigError(format!(
                        "{}: [{section}] {key} = '{v}' is not a non-negative integer",
                        path.display()
                    ))
                }),
            }
        };
        let max_active_keys = int("fernet_tokens", "max_active_keys")?;
        if let Some(n) = max_active_keys {
            check_max_keys(n).map_err(|m| {
                ConfigError(format!(
                    "{}: [fernet_tokens] max_active_keys: {m}",
                    path.display()
                ))
            })?;
        }
        Ok(KeystoneConf {
            expiration: int("token", "expiration")?.map(Duration::from_secs),
            allow_expired_window: int("token", "allow_expired_window")?.map(Duration::from_secs),
            max_active_keys,
            key_repository: get("fernet_tokens", "key_repository")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        })
    }
}

/// Values given on the command line (all optional).
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
}

/// The merged settings for the token repository.
#[derive(Debug, Clone)]
pub struct Settings {
    pub key_repository: PathBuf,
    /// The configured value; `None` when no source sets it (Keystone's 3 applies to rotation).
    pub max_active_keys: Option<u64>,
    pub lifetime: Lifetime,
    pub schedule: Option<Schedule>,
    pub keystone_user: Option<String>,
    pub keystone_group: Option<String>,
    pub lock_timeout: Option<Duration>,
    /// keystone.conf actually read, if any.
    pub keystone_config: Option<PathBuf>,
}

impl Settings {
    /// Merges flags over the TOML file over keystone.conf. `config` is `--config` (the default
    /// file is read when absent and present on disk).
    pub fn resolve(flags: &Flags, config: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = match config {
            Some(p) => FileConfig::load(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                FileConfig::load(Path::new(DEFAULT_CONFIG))?
            }
            None => FileConfig::default(),
        };
        let ks_path = flags
            .keystone_config
            .clone()
            .or_else(|| file.keystone.config.clone());
        let (ks, ks_read) = match ks_path {
            Some(p) => (KeystoneConf::load(&p)?, Some(p)),
            None if Path::new(KEYSTONE_CONFIG).exists() => {
                let p = PathBuf::from(KEYSTONE_CONFIG);
                (KeystoneConf::load(&p)?, Some(p))
            }
            None => (KeystoneConf::default(), None),
        };
        let t = &file.tokens;
        // A schedule from the file was validated (and named) by FileConfig::parse.
        let schedule = match (&flags.schedule, &t.schedule) {
            (Some(s), _) => Some(
                s.parse::<Schedule>()
                    .map_err(|m| ConfigError(format!("--schedule: {m}")))?,
            ),
            (None, Some(s)) => Some(s.parse::<Schedule>().map_err(ConfigError)?),
            (None, None) => None,
        };
        Ok(Settings {
            key_repository: flags
                .key_repository
                .clone()
                .or_else(|| t.key_repository.clone())
                .or(ks.key_repository)
                .unwrap_or_else(|| PathBuf::from(KEYSTONE_KEY_REPOSITORY)),
            max_active_keys: flags
                .max_active_keys
                .or(t.max_active_keys)
                .or(ks.max_active_keys),
            lifetime: Lifetime {
                expiration: flags
                    .expiration
                    .or(t.expiration)
                    .or(ks.expiration)
                    .unwrap_or(KEYSTONE_EXPIRATION),
                allow_expired_window: flags
                    .allow_expired_window
                    .or(t.allow_expired_window)
                    .or(ks.allow_expired_window)
                    .unwrap_or(KEYSTONE_ALLOW_EXPIRED_WINDOW),
                margin: flags.margin.or(t.margin).unwrap_or(DEFAULT_MARGIN),
            },
            schedule,
            keystone_user: flags
                .keystone_user
                .clone()
                .or_else(|| file.keystone.user.clone()),
            keystone_group: flags
                .keystone_group
                .clone()
                .or_else(|| file.keystone.group.clone()),
            lock_timeout: flags.lock_timeout.or(t.lock_timeout),
            keystone_config: ks_read,
        })
    }
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
        let empty = KeystoneConf::load(file("").path()).unwrap();
        assert_eq!(empty, KeystoneConf::default());
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
