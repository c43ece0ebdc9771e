//! From the flags and the configuration file to the settings a command acts on, and the
//! one-line errors when the file lacks what a command needs.

use super::render::{say, Severity};
use super::{KindArg, LifetimeArgs, OwnerArgs, RepoArgs};
use crate::config::{self, Flags, Settings};
use crate::repository::{Owner, Repository};
use std::path::Path;

/// How errors name the configuration file: the one given, else the default path.
pub(super) fn config_name(config: Option<&Path>) -> String {
    config.map_or(config::DEFAULT_CONFIG.into(), |p| p.display().to_string())
}

/// The settings of the repository a one-shot command names with `--kind` (flags apply to it),
/// or the one-line error saying its section is missing.
pub(super) fn configured(
    sources: &config::Sources,
    kind: config::Kind,
    flags: &Flags,
    config: Option<&Path>,
) -> anyhow::Result<Settings> {
    sources.selected(kind, flags)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [{kind}] section; fernetd manages that repository only when it is configured",
            config_name(config)
        )
    })
}

/// The repositories a cluster command acts on: the one `--kind` names, else every configured
/// one.
pub(super) fn configured_kinds(
    sources: &config::Sources,
    kind: Option<KindArg>,
) -> Vec<config::Kind> {
    match kind {
        Some(k) => vec![k.into()],
        None => config::Kind::ALL
            .into_iter()
            .filter(|k| sources.file.section(*k).is_some())
            .collect(),
    }
}

/// `[cluster]` from the configuration, or an error naming the file.
pub(super) fn cluster_settings(
    sources: &config::Sources,
    config: Option<&Path>,
) -> anyhow::Result<config::ClusterSettings> {
    let c = sources.file.cluster.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [cluster] section (endpoints = [\"http://127.0.0.1:2379\"])",
            config_name(config)
        )
    })?;
    let s = c.settings(&sources.file.keystone);
    if s.seal_key_file.is_none() {
        say(
            Severity::Warning,
            "warning: [cluster] insecure_unsealed: key sets sit in etcd in the clear",
        );
    }
    Ok(s)
}

/// Which kind a `--key-repository` is: `Err` with the one-line refusal when the path is the
/// credentials repository (fernetd's `[credentials] key_repository`, or Keystone's
/// `[credential] key_repository`) and the command would act on it as `kind`, another kind.
/// Rotating, setting up or repairing a credential repository as tokens purges by a token
/// window: every stored credential encrypted with a purged key is lost for good.
pub(super) fn refuse_credentials_as(
    sources: &config::Sources,
    kind: config::Kind,
    flags: &Flags,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(named) = flags.key_repository.as_deref() else {
        return Ok(());
    };
    if kind == config::Kind::Credentials {
        return Ok(());
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let named_c = canon(named);
    let fernetd = sources
        .file
        .section(config::Kind::Credentials)
        .and_then(|c| c.key_repository.clone())
        .map(|p| {
            (
                p,
                format!("{}: [credentials] key_repository", config_name(config)),
            )
        });
    let keystone = sources.keystone.credential_key_repository.clone().map(|p| {
        let origin = sources
            .keystone
            .origin("credential", "key_repository")
            .unwrap_or("keystone.conf");
        (p, format!("{origin}: [credential] key_repository"))
    });
    for (dir, origin) in fernetd.into_iter().chain(keystone) {
        if canon(&dir) == named_c {
            anyhow::bail!(
                "{} is the credentials repository ({origin}): use --kind credentials",
                named.display()
            );
        }
    }
    Ok(())
}

/// The repository and owner flags a command shares, as [`Flags`].
pub(super) fn flags(repo: &RepoArgs, owner: &OwnerArgs) -> Flags {
    Flags {
        key_repository: repo.key_repository.clone(),
        keystone_config: repo.keystone_config.clone(),
        keystone_user: owner.keystone_user.clone(),
        keystone_group: owner.keystone_group.clone(),
        ..Flags::default()
    }
}

/// `f` with the token lifetime flags.
pub(super) fn with_lifetime(f: Flags, l: &LifetimeArgs) -> Flags {
    Flags {
        expiration: l.expiration,
        allow_expired_window: l.allow_expired_window,
        margin: l.margin,
        ..f
    }
}

/// The repository `s` names, owned, locked and repaired as `s` says.
pub(super) fn repository(s: &Settings) -> anyhow::Result<Repository> {
    let owner = Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?;
    let mut r = Repository::new(&s.key_repository, owner).with_repair(s.repair);
    if let Some(t) = s.lock_timeout {
        r = r.with_lock_timeout(t);
    }
    Ok(r)
}
