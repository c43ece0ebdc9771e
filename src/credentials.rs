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
    let verdict = judge(ok, &stdout, &hash);
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
