//! `fernetd rotate`: one rotation of each repository asked for: its `pre_rotate` first, then
//! the cluster's key set in cluster mode, else the local repository (left to a daemon running
//! for it unless `--manual`).

use super::block_on;
use super::render::{print_keys, print_outcome, say, Severity};
use super::settings::{
    cluster_settings, configured, flags, refuse_credentials_as, repository, with_lifetime,
};
use super::{KindsArg, RotateArgs, EXIT_KEY_LOST};
use crate::config::{self, Flags, Settings};
use crate::core::clock::Now;
use crate::repository::{Repository, RotateParams};
use std::path::Path;

pub(super) fn run(a: RotateArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = Flags {
        max_active_keys: a.max_active_keys,
        lock_timeout: a.lock_timeout,
        ..with_lifetime(flags(&a.repo, &a.owner), &a.lifetime)
    };
    let sources = config::Sources::load(&flags, config)?;
    let kinds: Vec<config::Kind> = match a.kind {
        None | Some(KindsArg::Tokens) => vec![config::Kind::Tokens],
        Some(KindsArg::Receipts) => vec![config::Kind::Receipts],
        Some(KindsArg::Credentials) => vec![config::Kind::Credentials],
        Some(KindsArg::All) => config::Kind::ALL
            .into_iter()
            .filter(|k| sources.file.section(*k).is_some())
            .collect(),
    };
    let named = a.kind.is_some();
    let mut failed = Vec::new();
    let mut lost = false;
    for kind in kinds {
        refuse_credentials_as(&sources, kind, &flags, config)?;
        let s = configured(&sources, kind, &flags, config)?;
        if named {
            println!("{kind}: {}", s.key_repository.display());
        }
        match rotate_kind(&sources, &s, (a.force_purge, a.manual), config, clock) {
            Ok(l) => lost |= l,
            Err(e) => {
                if a.kind != Some(KindsArg::All) {
                    return Err(e);
                }
                say(Severity::Error, &format!("error: {kind}: {e:#}"));
                failed.push(kind.name());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("not rotated: {}", failed.join(", "));
    }
    Ok(if lost { EXIT_KEY_LOST } else { 0 })
}

/// `fernetd rotate` for one repository: its `pre_rotate` first (credentials), then the
/// cluster's key set in cluster mode, else the local repository. True when a key of the
/// repository is lost inside its retention window (said on stderr).
fn rotate_kind(
    sources: &config::Sources,
    s: &Settings,
    (force_purge, manual): (bool, bool),
    config: Option<&Path>,
    clock: &Now,
) -> anyhow::Result<bool> {
    // One rotation per slot: a daemon running for the repository rotates it on its schedule,
    // and a timer's `rotate` next to it leaves it alone. Looked at first when a pre_rotate
    // hook would run for nothing; the rotation itself looks again under the write lock.
    let defer = sources.file.cluster.is_none() && !manual;
    // One N everywhere: unset, it is the planner's, as for the daemon and `status`; given,
    // the schedule's analysis has nothing to add and is not run.
    let max_active_keys = match s.max_active_keys {
        Some(n) => n,
        None => config::manage(s.clone(), clock.wall)?.max_active_keys,
    };
    let mut params = RotateParams {
        max_active_keys,
        retention: s.key_retention(),
        force_purge,
        expected_primary: None,
    };
    if defer && s.hooks.pre_rotate.is_some() {
        let repo = Repository::new(&s.key_repository, None);
        if repo.daemon_running().unwrap_or(false) {
            // The running daemon says any lost key (its status, STATUS=, metrics).
            say_deferred(s, &repo);
            return Ok(false);
        }
    }
    if let Some(argv) = &s.hooks.pre_rotate {
        params.expected_primary = Some(migrate_and_verify(s, argv)?);
        // Verified: every credential is on the primary, so the keys Keystone's count rule
        // drops (older than the secondary) hold none.
        params.force_purge = true;
    }
    if sources.file.cluster.is_none() {
        let repo = repository(s)?.deferring_to_daemon(defer);
        let out = repo.rotate(params, clock)?;
        if out.deferred {
            for w in &out.warnings {
                say(Severity::Warning, &format!("warning: {w}"));
            }
            for n in &out.notes {
                println!("{n}");
            }
            say_deferred(s, &repo);
        } else {
            print_outcome(&out);
        }
        return Ok(!out.lost.is_empty());
    }
    rotate_cluster(sources, s, &params, config, clock)?;
    Ok(false)
}

/// Says that the daemon running for the repository rotates it, not this command.
fn say_deferred(s: &Settings, repo: &Repository) {
    let pid = repo
        .daemon_pid()
        .map_or_else(String::new, |p| format!(" (pid {p})"));
    println!(
        "{}: not rotated: a fernetd daemon{pid} runs for {} and rotates it on its \
         schedule (`fernetd rotate --manual` for an extra rotation now)",
        s.kind,
        s.key_repository.display()
    );
}

/// Runs the repository's `pre_rotate` hook, then Keystone's check; the primary the
/// credentials are verified on, or an error (every key kept) when they are not.
fn migrate_and_verify(
    s: &Settings,
    argv: &[String],
) -> anyhow::Result<crate::core::key::Fingerprint> {
    let kind = s.kind;
    let repo = Repository::new(&s.key_repository, None);
    let keys: Vec<u64> = repo
        .scan()
        .map(|sc| sc.keys().into_keys().collect())
        .unwrap_or_default();
    let ctx = crate::hooks::Context::of(kind.name(), &s.key_repository, &keys);
    let metrics = crate::metrics::Metrics::new();
    let migration = crate::credentials::Migration {
        dir: s.key_repository.clone(),
        pre_rotate: argv.to_vec(),
        verify: s.hooks.verify.clone().unwrap_or_default(),
        timeout: s.hooks.timeout,
        keystone_config: s.keystone_config.clone(),
    };
    match block_on(crate::credentials::migrate_and_verify(
        &migration, &ctx, &metrics,
    ))? {
        Ok(primary) => Ok(primary),
        Err(crate::credentials::Held::Migrate) => anyhow::bail!(
            "{kind}: pre_rotate `{}` did not succeed (the line above says why); nothing rotated",
            argv.join(" ")
        ),
        Err(held) => anyhow::bail!("{kind}: {held}"),
    }
}

/// Cluster mode: rotate the cluster's key set; every node applies it.
fn rotate_cluster(
    sources: &config::Sources,
    s: &Settings,
    params: &RotateParams,
    config: Option<&Path>,
    clock: &Now,
) -> anyhow::Result<()> {
    let kind = s.kind;
    let cluster = cluster_settings(sources, config)?;
    // Never rotate on a set older than the one this node applied.
    let repo = Repository::new(&s.key_repository, None);
    let local = repo.history().unwrap_or_default();
    let clock = repo.judging_clock(clock);
    let margin = crate::cluster::skew_tolerance(kind, s.lifetime.margin);
    let request = crate::cluster::Rotation {
        params,
        now: &clock,
        held: Some(&local),
        skew_tolerance: margin,
        fence: None,
        schedule: None,
        member_timeout: cluster.member_timeout,
        probe_wait: crate::cluster::PROBE_WAIT,
    };
    let r = block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        c.rotate(kind, &request).await
    })??;
    if !r.skewed.is_empty() {
        say(
            Severity::Warning,
            &format!(
                "warning: clocks off by more than the margin ({}): {}",
                crate::core::duration::format(margin),
                crate::cluster::describe_skew(&r.skewed)
            ),
        );
    }
    if !r.unanswered.is_empty() {
        say(
            Severity::Warning,
            &format!(
                "warning: purged nothing: no clock reading from {}",
                r.unanswered.join(", ")
            ),
        );
    }
    if let Some(h) = &r.hold {
        say(
            Severity::Warning,
            &format!("warning: keys {}", h.describe(params.retention)),
        );
    }
    println!(
        "rotated the cluster's {kind} key set at revision {}: key 0 promoted to primary {}, new key 0 staged; nodes apply it (daemon, or fernetd sync)",
        r.revision, r.decision.new_primary
    );
    if !r.decision.purge.is_empty() {
        let p: Vec<String> = r
            .decision
            .purge
            .iter()
            .map(|n| format!("key {n}"))
            .collect();
        println!("purged {}", p.join(", "));
    }
    print_keys(r.set.keys.keys().copied(), Some(r.decision.new_primary));
    Ok(())
}
