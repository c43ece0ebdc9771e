//! `fernetd sync`: pull each configured repository's key set from the cluster once and apply
//! it locally.

use super::render::print_outcome;
use super::settings::{cluster_settings, flags, refuse_credentials_as, repository};
use super::{block_on, SyncArgs};
use crate::config::{self, Settings};
use crate::core::clock::Now;
use std::path::Path;

pub(super) fn run(a: SyncArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = flags(&a.repo, &a.owner);
    let sources = config::Sources::load(&flags, config)?;
    // --key-repository is the token repository's: the token key set applied to the credentials
    // repository would purge the keys its stored credentials are encrypted with.
    refuse_credentials_as(&sources, config::Kind::Tokens, &flags, config)?;
    let cluster = cluster_settings(&sources, config)?;
    let repos: Vec<Settings> = config::Kind::ALL
        .into_iter()
        .map(|k| sources.repository(k, &flags))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        for s in &repos {
            let (set, revision) = c.fetch(s.kind).await?;
            let source = format!("{} at revision {revision}", c.keyset_key(s.kind));
            let out = repository(s)?.apply(&set, &source, s.key_decryptable(), clock)?;
            println!("{}: cluster revision {revision}", s.kind);
            print_outcome(&out);
        }
        Ok::<_, anyhow::Error>(())
    })??;
    Ok(0)
}
