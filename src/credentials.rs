//! Runs the credentials' migration and its verification before a credential key rotation.
//!
//! Order: read the primary key (its fingerprint and Keystone's hash of it), run `pre_rotate`
//! (`keystone-manage credential_migrate`), run `verify` (Keystone's own check,
//! `verify-credentials`), and accept only when the check's `primary_key_hash=` is the hash of
//! the primary read first and the primary has not changed meanwhile. The caller then rotates
//! with [`crate::core::rotation::RotateParams::expected_primary`] set to that key, which the
//! repository (under its lock) or the cluster (in its transaction) checks once more. Anything
//! else keeps every key: a credential encrypted with a purged key is lost for good.
//!
//! Why this order and not Keystone's (`credential_rotate`, then `credential_migrate`, purging
//! at the next rotation): both keep the key the credentials were migrated to (the demoted
//! primary becomes the secondary, which the count rule keeps) and purge only the key below it,
//! which the verification proved empty. Tying the purge to the verified primary under the
//! lock also closes what Keystone's order leaves open: another rotation between the check and
//! the purge (two operators, two timers, a daemon and keystone-manage) makes the purge refuse.
//! A credential written after the verification is encrypted with the primary or the new key,
//! both kept.
//!
//! Never logs key material: fingerprints and Keystone's SHA-1 hashes only.

use crate::core::clock::Now;
use crate::core::credentials::{judge, keystone_hash, Verdict};
use crate::core::key::{Fingerprint, Key};
use crate::core::problem::Code;
use crate::hooks::{self, printable, Context, Event};
use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::core::credentials::DEFAULT_VERIFY;

/// What a credential rotation needs to run its migration and verification.
#[derive(Debug, Clone)]
pub struct Migration {
    pub dir: PathBuf,
    pub pre_rotate: Vec<String>,
    pub verify: Vec<String>,
    pub timeout: Duration,
    /// The keystone.conf fernetd read (`Settings::keystone_config`): the database the
    /// verification must have checked is the `[database] connection` Keystone reads with it.
    pub keystone_config: Option<PathBuf>,
}

/// What a credentials' migration came to: the primary it was verified on, or why not.
pub type PreRotated = Result<Fingerprint, Held>;

/// Why a rotation of the credential keys may not run now. Every key stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// `pre_rotate` failed (its log line says why).
    Migrate,
    /// The migration was not verified on the primary: the reason, without key material.
    Unverified(String),
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Migrate => f.write_str("pre_rotate failed"),
            Held::Unverified(why) => write!(
                f,
                "credentials not verified on the primary key: {why}; every key kept, nothing \
                 rotated [{}]",
                Code::CredentialsUnverified
            ),
        }
    }
}

/// The primary key on disk: its number, fingerprint and Keystone's hash of its file's text.
fn read_primary(dir: &Path) -> Result<(u64, Fingerprint, String), String> {
    let mut best: Option<u64> = None;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            if n > 0 && best.is_none_or(|b| n > b) {
                best = Some(n);
            }
        }
    }
    let n = best.ok_or_else(|| format!("{}: no primary key", dir.display()))?;
    let path = dir.join(n.to_string());
    let text = zeroize::Zeroizing::new(
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let key = Key::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((n, key.fingerprint(), keystone_hash(&text)))
}

/// Migrates, then verifies; `Ok` with the primary the credentials are verified on.
pub async fn migrate_and_verify(
    m: &Migration,
    ctx: &Context,
    metrics: &Arc<Metrics>,
) -> Result<Fingerprint, Held> {
    let kind = ctx.kind;
    // When the check begins: losses recorded before it are answered by its verdict.
    let began = Now::read();
    let (number, before, hash) = read_primary(&m.dir).map_err(Held::Unverified)?;
    if !hooks::run(&m.pre_rotate, Event::PreRotate, ctx, m.timeout, metrics).await {
        return Err(Held::Migrate);
    }
    let (ok, stdout) = run_verify(&m.verify, ctx, m.timeout).await;
    let verdict = match judge(ok, &stdout, &hash) {
        Verdict::Verified => match same_database(&stdout, m.keystone_config.as_deref()) {
            Ok(()) => Verdict::Verified,
            Err(why) => Verdict::Unverified(why),
        },
        unverified => unverified,
    };
    let after = read_primary(&m.dir).map_err(Held::Unverified)?;
    let held = match verdict {
        Verdict::Unverified(why) => Some(why),
        Verdict::Verified if after.1 != before => Some(format!(
            "the primary changed while the credentials were migrated (key {number} then key \
             {}): a rotation happened in between; migrating again next time",
            after.0
        )),
        Verdict::Verified => None,
    };
    match held {
        // The caller says it, with what happens next (retry, exit status).
        Some(why) => Err(Held::Unverified(why)),
        None => {
            tracing::info!(
                "{kind}: every credential verified on primary key {number} (fingerprint \
                 {before}, primary_key_hash={hash})"
            );
            close_losses(&m.dir, before, &began, kind);
            Ok(before)
        }
    }
}

/// `[database] connection` when no source sets it: Keystone's own default.
const KEYSTONE_DEFAULT_DATABASE: &str = "sqlite:///keystone.db";

/// The `[database] connection` fingerprint of Keystone's configuration as fernetd finds it:
/// Keystone's own search (files, `.d` directory, variables), or the file fernetd was named
/// when that search starts elsewhere.
fn keystone_database(named: Option<&Path>) -> Result<String, String> {
    use crate::keystone_conf::{Discovery, KeystoneConf};
    let env = |name: &str| std::env::var(name).ok();
    let discover = |explicit: Option<&Path>| {
        KeystoneConf::discover(&Discovery {
            root: Path::new("/"),
            explicit,
            env: &env,
        })
        .map_err(|e| format!("Keystone's configuration: {e}"))
    };
    let mut conf = discover(None)?;
    if named.is_some() && conf.files.first().map(PathBuf::as_path) != named {
        conf = discover(named)?;
    }
    // Unset, Keystone (keystone.common.sql.initialize) connects to its default, which the
    // verify command then resolves and names too.
    Ok(conf
        .database
        .unwrap_or_else(|| crate::keystone_conf::database_fingerprint(KEYSTONE_DEFAULT_DATABASE)))
}

/// The verify command's `verified:` line must name the database Keystone uses
/// (`database=<fingerprint>`, see [`crate::keystone_conf::database_fingerprint`]): a check run
/// against another or an empty database proves nothing about the credentials Keystone holds.
fn same_database(stdout: &str, keystone_config: Option<&Path>) -> Result<(), String> {
    let verified: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("verified:"))
        .collect();
    let [line] = verified.as_slice() else {
        return Err(format!(
            "the verify command printed {} `verified:` lines; expected one",
            verified.len()
        ));
    };
    if !line
        .split_whitespace()
        .any(|w| w.starts_with("primary_key_hash="))
    {
        return Err("the verify command's `verified:` line names no primary_key_hash=".into());
    }
    let named: Vec<&str> = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("database="))
        .map(|h| h.trim_end_matches(|c: char| !c.is_ascii_hexdigit()))
        .collect();
    let [checked] = named.as_slice() else {
        return Err(
            "the verify command's `verified:` line names no single database= (an older \
             verify-credentials? install the one shipped with this fernetd)"
                .into(),
        );
    };
    let expected = keystone_database(keystone_config)?;
    if checked.eq_ignore_ascii_case(&expected) {
        Ok(())
    } else {
        Err(format!(
            "the verify command checked another database (database={checked}, Keystone's \
             [database] connection is {expected}): its verdict says nothing of the \
             credentials Keystone holds"
        ))
    }
}

/// A verified migration closes the credential keys' losses recorded before it began
/// ([`crate::repository::Repository::record_verified`]). When it cannot (the lock busy, the
/// state unreadable), the losses stay open and say so: the rotation goes on all the same.
fn close_losses(dir: &Path, primary: Fingerprint, began: &Now, kind: impl std::fmt::Display) {
    let repo = crate::repository::Repository::new(dir, None);
    match repo.record_verified(primary, began, &Now::read()) {
        Ok(closed) => {
            for n in closed {
                tracing::info!(
                    "{kind}: key {n}, lost before the verification began, holds no stored \
                     credential: every one is on the primary; no longer reported lost"
                );
            }
        }
        Err(e) => tracing::warn!(
            "{kind}: the verification could not be recorded ({e}); lost keys stay reported"
        ),
    }
}

/// How much of the verify command's stdout is read (its one line is short).
const VERIFY_CAP: usize = 64 * 1024;

/// Runs the verify command: whether it exited 0 within `timeout`, and its stdout (capped).
/// Its stderr is logged; a command that cannot start or hangs is "not verified".
async fn run_verify(argv: &[String], ctx: &Context, timeout: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let kind = ctx.kind;
    let Some((program, args)) = argv.split_first() else {
        return (false, String::new());
    };
    let child = crate::hooks::command(program, args, "verify", ctx).spawn();
    let hook = format!("verify {}", printable(program));
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{kind}: {hook}: cannot start: {e}");
            return (false, String::new());
        }
    };
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let run = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let read_out = async {
            if let Some(r) = out.as_mut() {
                let _ = r.take(VERIFY_CAP as u64).read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(r) = err.as_mut() {
                let _ = r.take(VERIFY_CAP as u64).read_to_end(&mut e).await;
            }
        };
        let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
        (status, o, e)
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tracing::error!(
                "{kind}: {hook}: killed after {}",
                crate::core::duration::format(timeout)
            );
            (false, String::new())
        }
        Ok((status, o, e)) => {
            for line in String::from_utf8_lossy(&e).lines() {
                tracing::warn!("{kind}: {hook}: {}", printable(line));
            }
            let stdout = String::from_utf8_lossy(&o).into_owned();
            for line in stdout.lines() {
                tracing::info!("{kind}: {hook}: {}", printable(line));
            }
            match status {
                Ok(s) if s.success() => (true, stdout),
                Ok(s) => {
                    tracing::error!("{kind}: {hook}: failed: {s}");
                    (false, stdout)
                }
                Err(e) => {
                    tracing::error!("{kind}: {hook}: {e}");
                    (false, stdout)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verified_line_naming_keystone_s_database_is_accepted() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("keystone.conf");
        std::fs::write(&conf, "[database]\nconnection = sqlite:////k.db\n").unwrap();
        let right = crate::keystone_conf::database_fingerprint("sqlite:////k.db");
        let other = crate::keystone_conf::database_fingerprint("sqlite:////other.db");
        let ok = |out: &str| same_database(out, Some(&conf));
        assert!(ok(&format!(
            "verified: 3 credentials; primary_key_hash=ab database={right}\n"
        ))
        .is_ok());
        assert!(ok(&format!(
            "verified: 3 credentials; primary_key_hash=ab database={other}\n"
        ))
        .unwrap_err()
        .contains("another database"));
        // No `verified:` prefix, two of them, none naming the database or the hash.
        for out in [
            format!("5 of 9 credentials are not encrypted; primary_key_hash=ab database={right}"),
            format!("verified: primary_key_hash=ab database={right}\nverified: database={right}"),
            "verified: 3 credentials; primary_key_hash=ab".to_string(),
            format!("verified: 3 credentials; database={right}"),
        ] {
            assert!(ok(&out).is_err(), "{out}");
        }
        // A URL's password never reaches the reason.
        std::fs::write(&conf, "[database]\nconnection = mysql://k:s3cret@db/k\n").unwrap();
        let why = ok(&format!("verified: primary_key_hash=ab database={other}")).unwrap_err();
        assert!(!why.contains("s3cret"), "{why}");
    }
}
