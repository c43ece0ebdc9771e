//! `fernetd setup`: create and initialize a key repository, or complete one.

use super::render::print_outcome;
use super::settings::{configured, flags, refuse_credentials_as, repository};
use super::{SetupArgs, EXIT_KEY_LOST};
use crate::config::{self, Flags, Settings};
use crate::core::clock::Now;
use std::path::Path;

pub(super) fn run(a: SetupArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = Flags {
        max_active_keys: a.max_active_keys,
        lock_timeout: a.lock_timeout,
        ..flags(&a.repo, &a.owner)
    };
    let sources = config::Sources::load(&flags, config)?;
    let s = match a.kind {
        Some(k) => configured(&sources, k.into(), &flags, config)?,
        None => {
            refuse_credentials_as(&sources, config::Kind::Tokens, &flags, config)?;
            Settings::resolve(&flags, config)?
        }
    };
    let out = repository(&s)?.setup(s.key_retention(), clock)?;
    print_outcome(&out);
    Ok(if out.lost.is_empty() {
        0
    } else {
        EXIT_KEY_LOST
    })
}
