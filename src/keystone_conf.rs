//! What Keystone itself reads for the options fernetd needs, read the way Keystone reads it
//! (oslo.config), so that the lifetimes fernetd protects are the ones Keystone enforces.
//!
//! Keystone's WSGI services (`keystone/server/flask/core.py: _get_config_files`) and
//! oslo.config (`cfg.py: _parse_config_files`, `find_config_files`, `find_config_dirs`) read,
//! each later source overriding the earlier ones option by option:
//! 1. the configuration files: `OS_KEYSTONE_CONFIG_FILES` (`;`-separated) joined to
//!    `OS_KEYSTONE_CONFIG_DIR` (which alone means `keystone.conf` in it); without either, the
//!    first of `/etc/keystone/keystone.conf` and `/etc/keystone.conf` that exists;
//! 2. every `*.conf` of the configuration directory, in name order: the first of
//!    `/etc/keystone/keystone.conf.d` and `/etc/keystone.conf.d` that exists;
//! 3. oslo.config's environment overrides, `OS_<GROUP>__<OPTION>` (e.g.
//!    `OS_TOKEN__EXPIRATION`), which win over every file.
//!
//! A file named to fernetd (`--keystone-config`, `[keystone] config`) replaces step 1, and the
//! directory beside it (`<file>.d`, `keystone.conf.d` for `keystone.conf`) replaces step 2, as
//! Keystone started with `--config-file F --config-dir F.d` reads them. The `~/.keystone/`
//! and `~/` places oslo.config also searches belong to the home of the user Keystone runs as,
//! which fernetd cannot know: a deployment that uses them names the file to fernetd.
//!
//! Every value remembers where it came from (a file, or a variable), for `plan` and for
//! errors, which name it.

use crate::core::planner::check_max_keys;
use crate::error::ConfigError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files oslo.config reads when Keystone is given none, in its search order.
const DEFAULT_FILES: [&str; 2] = ["etc/keystone/keystone.conf", "etc/keystone.conf"];
/// The configuration directories it searches, in order; the first that exists is read.
const DEFAULT_DIRS: [&str; 2] = ["etc/keystone/keystone.conf.d", "etc/keystone.conf.d"];

/// `[receipt] expiration`'s upper bound in Keystone's option definition.
const RECEIPT_EXPIRATION_MAX: u64 = 86_400;

/// The options fernetd reads, as (group, option).
const OPTIONS: [(&str, &str); 10] = [
    ("token", "expiration"),
    ("token", "allow_expired_window"),
    ("fernet_tokens", "max_active_keys"),
    ("fernet_tokens", "key_repository"),
    ("receipt", "expiration"),
    ("fernet_receipts", "max_active_keys"),
    ("fernet_receipts", "key_repository"),
    ("credential", "key_repository"),
    ("auth", "methods"),
    ("database", "connection"),
];

/// The options fernetd reads from Keystone's configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeystoneConf {
    pub expiration: Option<Duration>,
    pub allow_expired_window: Option<Duration>,
    pub max_active_keys: Option<u64>,
    pub key_repository: Option<PathBuf>,
    pub receipt_expiration: Option<Duration>,
    pub receipt_max_active_keys: Option<u64>,
    pub receipt_key_repository: Option<PathBuf>,
    pub credential_key_repository: Option<PathBuf>,
    /// `[auth] methods`: their order gives each method its bit in a token's payload.
    pub auth_methods: Option<Vec<String>>,
    /// `[database] connection`'s fingerprint ([`database_fingerprint`]), never the URL itself:
    /// it may hold a password. `verify-credentials` prints the same of the database it checked.
    pub database: Option<String>,
    /// Where each value that was set came from: `"group.option"` to a file's path or an
    /// environment variable's name.
    pub origins: BTreeMap<String, String>,
    /// The files read, in order (the directory's included).
    pub files: Vec<PathBuf>,
}

/// Where to look: `/` in production; a test's directory in tests.
pub struct Discovery<'a> {
    pub root: &'a Path,
    /// A file named to fernetd, replacing Keystone's own search.
    pub explicit: Option<&'a Path>,
    /// The environment (`std::env::var` in production).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// One raw value and its origin.
struct Raw {
    value: String,
    origin: String,
}

impl KeystoneConf {
    /// One file alone: no directory, no environment.
    pub fn load(path: &Path) -> Result<KeystoneConf, ConfigError> {
        let mut raw = BTreeMap::new();
        read_file(path, &mut raw)?;
        KeystoneConf::typed(raw, vec![path.to_path_buf()])
    }

    /// Everything Keystone reads, in oslo.config's order (see the module's documentation).
    pub fn discover(d: &Discovery<'_>) -> Result<KeystoneConf, ConfigError> {
        let (files, dir) = d.places()?;
        let mut raw = BTreeMap::new();
        let mut read = Vec::new();
        for f in files {
            read_file(&f, &mut raw)?;
            read.push(f);
        }
        if let Some(dir) = dir {
            for f in conf_files(&dir)? {
                read_file(&f, &mut raw)?;
                read.push(f);
            }
        }
        for (group, option) in OPTIONS {
            let var = env_name(group, option);
            if let Some(value) = (d.env)(&var) {
                raw.insert(
                    key(group, option),
                    Raw {
                        value: value.trim().to_string(),
                        origin: var,
                    },
                );
            }
        }
        KeystoneConf::typed(raw, read)
    }

    fn typed(raw: BTreeMap<String, Raw>, files: Vec<PathBuf>) -> Result<KeystoneConf, ConfigError> {
        let get = |group: &str, option: &str| raw.get(&key(group, option));
        let int = |group: &str, option: &str| -> Result<Option<u64>, ConfigError> {
            match get(group, option) {
                None => Ok(None),
                Some(r) => r.value.parse::<u64>().map(Some).map_err(|_| {
                    ConfigError(format!(
                        "{}: [{group}] {option} = '{}' is not a non-negative integer",
                        r.origin, r.value
                    ))
                }),
            }
        };
        let keys = |group: &str| -> Result<Option<u64>, ConfigError> {
            let n = int(group, "max_active_keys")?;
            if let Some(n) = n {
                check_max_keys(n).map_err(|m| {
                    let origin = get(group, "max_active_keys").map_or("", |r| r.origin.as_str());
                    ConfigError(format!("{origin}: [{group}] max_active_keys: {m}"))
                })?;
            }
            Ok(n)
        };
        let secs = |group: &str, option: &str| -> Result<Option<Duration>, ConfigError> {
            let origin = get(group, option).map_or("", |r| r.origin.as_str());
            int(group, option)?
                .map(|n| crate::core::duration::from_secs(n, &n.to_string()))
                .transpose()
                .map_err(|m| ConfigError(format!("{origin}: [{group}] {option}: {m}")))
        };
        let dir = |group: &str| {
            get(group, "key_repository")
                .map(|r| r.value.clone())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        Ok(KeystoneConf {
            expiration: secs("token", "expiration")?,
            allow_expired_window: secs("token", "allow_expired_window")?,
            max_active_keys: keys("fernet_tokens")?,
            key_repository: dir("fernet_tokens"),
            receipt_expiration: match secs("receipt", "expiration")? {
                // keystone/conf/receipt.py: IntOpt(min=0, max=86400); Keystone refuses more.
                Some(d) if d.as_secs() > RECEIPT_EXPIRATION_MAX => {
                    let r = get("receipt", "expiration").map_or("", |r| r.origin.as_str());
                    return Err(ConfigError(format!(
                        "{r}: [receipt] expiration = {} is above Keystone's maximum \
                         {RECEIPT_EXPIRATION_MAX} (Keystone refuses it too)",
                        d.as_secs()
                    )));
                }
                other => other,
            },
            receipt_max_active_keys: keys("fernet_receipts")?,
            receipt_key_repository: dir("fernet_receipts"),
            credential_key_repository: dir("credential"),
            auth_methods: get("auth", "methods").map(|r| {
                r.value
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect()
            }),
            database: get("database", "connection").map(|r| database_fingerprint(&r.value)),
            origins: raw.into_iter().map(|(k, r)| (k, r.origin)).collect(),
            files,
        })
    }

    /// Where `group.option` came from, when it was set.
    pub fn origin(&self, group: &str, option: &str) -> Option<&str> {
        self.origins.get(&key(group, option)).map(String::as_str)
    }
}

impl Discovery<'_> {
    /// The configuration files and the configuration directory, as Keystone finds them.
    fn places(&self) -> Result<(Vec<PathBuf>, Option<PathBuf>), ConfigError> {
        if let Some(f) = self.explicit {
            let mut name = f.file_name().unwrap_or_default().to_os_string();
            name.push(".d");
            let beside = f.with_file_name(name);
            return Ok((vec![f.to_path_buf()], Some(beside).filter(|d| d.is_dir())));
        }
        let dirs = DEFAULT_DIRS.iter().map(|d| self.root.join(d));
        let dir = dirs.into_iter().find(|d| d.is_dir());
        let var = |name: &str| (self.env)(name).map(|v| v.trim().to_string());
        let dirname = var("OS_KEYSTONE_CONFIG_DIR").unwrap_or_default();
        let mut files: Vec<String> = var("OS_KEYSTONE_CONFIG_FILES")
            .unwrap_or_default()
            .split(';')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !dirname.is_empty() && files.is_empty() {
            files.push("keystone.conf".into());
        }
        if !files.is_empty() {
            // Python's os.path.join: an absolute name ignores the directory.
            let files: Vec<PathBuf> = files.iter().map(|f| Path::new(&dirname).join(f)).collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(ConfigError(format!(
                    "{}: named by OS_KEYSTONE_CONFIG_FILES/OS_KEYSTONE_CONFIG_DIR, but not a file \
                     (Keystone would not start with it either)",
                    missing.display()
                )));
            }
            return Ok((files, dir));
        }
        let file = DEFAULT_FILES
            .iter()
            .map(|f| self.root.join(f))
            .find(|f| f.is_file());
        Ok((file.into_iter().collect(), dir))
    }
}

/// The fingerprint of a `[database] connection` URL: the first 16 hex digits of its SHA-256,
/// as `verify-credentials` prints it (`hashlib.sha256(url.encode()).hexdigest()[:16]`). It
/// tells two databases apart without revealing the URL (or a password in it).
pub fn database_fingerprint(url: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(url.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `OS_<GROUP>__<OPTION>`, oslo.config's environment source.
pub fn env_name(group: &str, option: &str) -> String {
    format!("OS_{}__{}", group.to_uppercase(), option.to_uppercase())
}

fn key(group: &str, option: &str) -> String {
    format!("{group}.{option}")
}

/// The `*.conf` files of a configuration directory, sorted by name as Python's `sorted(glob)`
/// sorts them (by code point, which for UTF-8 is byte order).
fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ConfigError(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| ConfigError(format!("{}: {e}", dir.display())))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        // glob's `*` skips names starting with a dot.
        if name.starts_with('.') || !name.ends_with(".conf") {
            continue;
        }
        let path = e.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one oslo.config INI file into `raw`: for each option fernetd reads, the last value
/// the file gives wins over what earlier files gave.
fn read_file(path: &Path, raw: &mut BTreeMap<String, Raw>) -> Result<(), ConfigError> {
    let opts = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: true,
        ..ini::ParseOption::default()
    };
    let ini = ini::Ini::load_from_file_opt(path, opts)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    for (group, option) in OPTIONS {
        let last = ini
            .section_all(Some(group))
            .flat_map(|p| p.get_all(option))
            .last();
        if let Some(v) = last {
            raw.insert(
                key(group, option),
                Raw {
                    value: v.trim().to_string(),
                    origin: path.display().to_string(),
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn discover(root: &Path, explicit: Option<&Path>, vars: &[(&str, &str)]) -> KeystoneConf {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.get(k).cloned();
        KeystoneConf::discover(&Discovery {
            root,
            explicit,
            env: &env,
        })
        .unwrap()
    }

    #[test]
    fn the_database_is_read_as_a_fingerprint_in_oslo_order_and_never_kept_as_a_url() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let secret = "postgresql://keystone:s3cret@db/keystone";
        write(
            &r.join("etc/keystone/keystone.conf"),
            "[database]\nconnection = sqlite:////a.db\n",
        );
        assert_eq!(
            discover(r, None, &[]).database.as_deref(),
            Some(database_fingerprint("sqlite:////a.db").as_str())
        );
        write(
            &r.join("etc/keystone/keystone.conf.d/10.conf"),
            &format!("[database]\nconnection = {secret}\n"),
        );
        let k = discover(r, None, &[]);
        // hashlib.sha256(b"postgresql://keystone:s3cret@db/keystone").hexdigest()[:16]
        assert_eq!(k.database.as_deref(), Some("16e86408bd69b781"));
        assert!(!format!("{k:?}").contains("s3cret"));
        let k = discover(r, None, &[("OS_DATABASE__CONNECTION", "sqlite:////b.db")]);
        assert_eq!(k.database, Some(database_fingerprint("sqlite:////b.db")));
        assert_eq!(
            k.origin("database", "connection"),
            Some("OS_DATABASE__CONNECTION")
        );
    }

    #[test]
    fn the_directory_overrides_the_file_in_name_order_and_the_environment_wins() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            &r.join("etc/keystone/keystone.conf"),
            "[token]\nexpiration = 100\nallow_expired_window = 7\n",
        );
        write(
            &r.join("etc/keystone/keystone.conf.d/20-b.conf"),
            "[token]\nexpiration = 300\n",
        );
        write(
            &r.join("etc/keystone/keystone.conf.d/10-a.conf"),
            "[token]\nexpiration = 200\n",
        );
        write(
            &r.join("etc/keystone/keystone.conf.d/30-c.conf.disabled"),
            "[token]\nexpiration = 9\n",
        );
        write(
            &r.join("etc/keystone/keystone.conf.d/.40.conf"),
            "[token]\nexpiration = 9\n",
        );
        let k = discover(r, None, &[]);
        assert_eq!(k.expiration, Some(Duration::from_secs(300)));
        assert_eq!(k.allow_expired_window, Some(Duration::from_secs(7)));
        assert!(k
            .origin("token", "expiration")
            .unwrap()
            .ends_with("20-b.conf"));
        assert_eq!(k.files.len(), 3);
        let k = discover(r, None, &[("OS_TOKEN__EXPIRATION", "86400")]);
        assert_eq!(k.expiration, Some(Duration::from_secs(86400)));
        assert_eq!(
            k.origin("token", "expiration"),
            Some("OS_TOKEN__EXPIRATION")
        );
    }

    #[test]
    fn keystone_s_variables_choose_the_files() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(
            &r.join("etc/keystone/keystone.conf"),
            "[token]\nexpiration = 100\n",
        );
        write(
            &r.join("srv/ks/keystone.conf"),
            "[token]\nexpiration = 200\n",
        );
        write(&r.join("srv/ks/extra.conf"), "[token]\nexpiration = 300\n");
        let srv = r.join("srv/ks").display().to_string();
        let k = discover(r, None, &[("OS_KEYSTONE_CONFIG_DIR", &srv)]);
        assert_eq!(k.expiration, Some(Duration::from_secs(200)));
        let k = discover(
            r,
            None,
            &[
                ("OS_KEYSTONE_CONFIG_DIR", &srv),
                ("OS_KEYSTONE_CONFIG_FILES", "keystone.conf; extra.conf"),
            ],
        );
        assert_eq!(k.expiration, Some(Duration::from_secs(300)));
        let vars = [
            ("OS_KEYSTONE_CONFIG_DIR", srv.as_str()),
            ("OS_KEYSTONE_CONFIG_FILES", "nope.conf"),
        ];
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let e = KeystoneConf::discover(&Discovery {
            root: r,
            explicit: None,
            env: &env,
        })
        .unwrap_err();
        assert!(
            e.0.contains("nope.conf") && e.0.contains("OS_KEYSTONE_CONFIG_FILES"),
            "{e}"
        );
    }

    #[test]
    fn a_named_file_brings_the_directory_beside_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let f = r.join("opt/keystone.conf");
        write(&f, "[token]\nexpiration = 100\n");
        write(
            &r.join("opt/keystone.conf.d/a.conf"),
            "[token]\nexpiration = 250\n",
        );
        // Keystone's own places are not read when a file is named.
        write(
            &r.join("etc/keystone/keystone.conf.d/z.conf"),
            "[token]\nexpiration = 999\n",
        );
        let k = discover(r, Some(&f), &[]);
        assert_eq!(k.expiration, Some(Duration::from_secs(250)));
    }

    #[test]
    fn errors_name_the_variable_or_file() {
        let t = tempfile::tempdir().unwrap();
        let vars = [("OS_FERNET_TOKENS__MAX_ACTIVE_KEYS", "many")];
        let env = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let e = KeystoneConf::discover(&Discovery {
            root: t.path(),
            explicit: None,
            env: &env,
        })
        .unwrap_err();
        assert!(
            e.0.starts_with("OS_FERNET_TOKENS__MAX_ACTIVE_KEYS: [fernet_tokens] max_active_keys"),
            "{e}"
        );
    }
}
