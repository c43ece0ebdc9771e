//! `fernetd cluster ...`: start a cluster's key set, make and apply a seal key, remove a node.

use super::block_on;
use super::render::{print_keys, rfc3339, say, Severity};
use super::settings::{cluster_settings, config_name, configured_kinds};
use super::{ClusterInitArgs, NewSealKeyArgs, RemoveNodeArgs, RenameNodeArgs, SealArgs};
use crate::config::{self, Flags};
use crate::core::clock::Now;
use crate::core::duration;
use crate::core::keyset::KeySet;
use crate::repository::{Owner, Repository};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `cluster init`: the seal key first when asked, then the key set (imported or fresh) and
/// its members into etcd, then what the nodes will do with it.
pub(super) fn init(a: ClusterInitArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let now = clock.wall;
    let sources = config::Sources::load(&Flags::default(), config)?;
    let cluster = cluster_settings(&sources, config)?;
    let kind = config::Kind::from(a.kind);
    // A seal key this command made, removed again if the cluster does not start with
    // it (no node may be left holding a key the cluster's sets are not sealed with).
    let made_seal_key = seal_key_first(&cluster, a.new_seal_key, &sources, config)?;
    let s = sources.selected(kind, &Flags::default())?;
    let owner = match &s {
        Some(s) => Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?,
        None => None,
    };
    let (set, what) = match &a.from {
        Some(from) => (
            Repository::new(from, owner).read_set(clock)?,
            format!("imported {}", from.display()),
        ),
        None => (
            KeySet::fresh(clock).map_err(|e| anyhow::anyhow!("random: {e}"))?,
            "fresh keys".to_string(),
        ),
    };
    if let Some(bad) = a.members.iter().find(|m| m.is_empty() || m.contains('/')) {
        anyhow::bail!("--members: '{bad}' is not a node name ([cluster] node on that node)");
    }
    let imported = block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        // Keys bound to another etcd, imported here by mistake (a wrong endpoint, a stray
        // etcd), would found a second cluster that rotates on its own.
        let bound = set.history.lineage.as_ref().and_then(|l| l.etcd.clone());
        if let (Some(held), false) = (bound, a.move_etcd) {
            let reached = c.binding();
            if held != reached {
                return Err(crate::cluster::ClusterError::BoundElsewhere {
                    from: a.from.clone().unwrap_or_default(),
                    held,
                    reached,
                });
            }
        }
        let (revision, lineage) = c.import(kind, &set, a.force, a.force_purge).await?;
        let added = c.expect_members(kind, &a.members, now).await?;
        Ok::<_, crate::cluster::ClusterError>((revision, lineage, added))
    })
    .and_then(|r| r.map_err(anyhow::Error::from));
    let (revision, lineage, added) = match imported {
        Ok(done) => done,
        Err(e) => {
            if let Some(p) = &made_seal_key {
                let _ = std::fs::remove_file(p);
                say(
                    Severity::Warning,
                    &format!(
                        "warning: removed the seal key made at {}: the cluster did not \
                         start with it",
                        p.display()
                    ),
                );
            }
            return Err(e);
        }
    };
    println!(
        "{what} into {}/{kind}/keyset at revision {revision}, {lineage}; no key changed",
        cluster.prefix
    );
    if !a.members.is_empty() {
        println!(
            "members: {} (added {}): no promotion until each has applied this set; \
             `fernetd cluster remove-node NAME` releases one that will not come",
            a.members.join(", "),
            if added.is_empty() {
                "none".into()
            } else {
                added.join(", ")
            }
        );
    }
    let managed = s.map(|s| config::manage(s, now)).transpose()?;
    print_import(kind, &set, managed.as_ref(), clock);
    Ok(0)
}

/// `cluster init --new-seal-key` makes the seal key (returned, to be removed again on
/// failure); without it, a configured seal key file must exist.
fn seal_key_first(
    cluster: &config::ClusterSettings,
    new_seal_key: bool,
    sources: &config::Sources,
    config: Option<&Path>,
) -> anyhow::Result<Option<PathBuf>> {
    match (&cluster.seal_key_file, new_seal_key) {
        (None, true) => anyhow::bail!(
            "{}: --new-seal-key: set [cluster] seal_key_file (e.g. \"{}\") first",
            config_name(config),
            config::DEFAULT_SEAL_KEY_FILE
        ),
        (Some(p), true) => {
            make_seal_key(p, &sources.file.keystone)?;
            Ok(Some(p.clone()))
        }
        (Some(p), false) if !p.exists() => anyhow::bail!(
            "{}: [cluster] seal_key_file {} does not exist: `fernetd cluster init \
             --new-seal-key` makes it, or copy it here from a node of the cluster",
            config_name(config),
            p.display()
        ),
        _ => Ok(None),
    }
}

/// `cluster new-seal-key`: into a file, or printed.
pub(super) fn new_seal_key(a: NewSealKeyArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    match &a.out {
        Some(out) => {
            // The configuration only names the Keystone user here, and may be the
            // one waiting for this key (refused without it).
            let keystone = config::Sources::load(&Flags::default(), config)
                .map(|s| s.file.keystone)
                .unwrap_or_default();
            make_seal_key(out, &keystone)?;
        }
        None => {
            let k =
                crate::core::key::Key::generate().map_err(|e| anyhow::anyhow!("random: {e}"))?;
            println!("{}", &*k.to_text());
        }
    }
    Ok(0)
}

/// `cluster seal`: the key sets still stored in the clear, written again sealed.
pub(super) fn seal(a: SealArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    let sources = config::Sources::load(&Flags::default(), config)?;
    let cluster = cluster_settings(&sources, config)?;
    if cluster.seal_key_file.is_none() {
        anyhow::bail!(
            "{}: [cluster] has no seal_key_file: nothing to seal with (make one with \
             `fernetd cluster new-seal-key --out {}` and copy it to every node first)",
            config_name(config),
            config::DEFAULT_SEAL_KEY_FILE
        );
    }
    // One seal key opens only what is sealed with it already or stored in the clear, which
    // this node takes only with insecure_unsealed.
    if !cluster.insecure_unsealed && cluster.seal_key_files.len() < 2 {
        anyhow::bail!(
            "{}: [cluster] insecure_unsealed is not set, so this node refuses the key sets \
             stored in the clear that `cluster seal` would seal; run it where \
             insecure_unsealed = true (see the README: moving a cluster to sealed key \
             sets)",
            config_name(config)
        );
    }
    let kinds = configured_kinds(&sources, a.kind);
    let sealed = block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        let mut out = Vec::new();
        for kind in kinds {
            out.push((kind, c.seal_in_place(kind).await?));
        }
        Ok::<_, crate::cluster::ClusterError>(out)
    })??;
    let mut compact_to = None;
    let mut resealed_to = None;
    let named = |id: Option<crate::seal::SealKeyId>| match (cluster.seal_tagged, id) {
        (true, Some(id)) => format!(" with seal key {id}"),
        _ => String::new(),
    };
    for (kind, r) in sealed {
        match (r.revision, r.was) {
            (Some(rev), None) => {
                println!(
                    "{}/{kind}/keyset: sealed{} at revision {rev}; no key changed",
                    cluster.prefix,
                    named(r.with)
                );
                compact_to = compact_to.max(Some(rev));
            }
            (Some(rev), Some(was)) => {
                println!(
                    "{}/{kind}/keyset: sealed again{} at revision {rev} (was seal key {was}); \
                     no key changed",
                    cluster.prefix,
                    named(r.with)
                );
                resealed_to = resealed_to.max(Some(rev));
            }
            (None, _) => println!(
                "{}/{kind}/keyset: already sealed{}",
                cluster.prefix,
                named(r.with)
            ),
        }
    }
    if let Some(r) = compact_to {
        say(
            Severity::Warning,
            &format!(
                "warning: the values stored in the clear stay in etcd's history (below \
                 revision {r}) and in every etcd backup taken before: remove them from \
                 etcd with `etcdctl compact {r}` and `etcdctl defrag --cluster` (as \
                 etcd's root), destroy such backups, and count the keys they held as \
                 known until rotations have purged them"
            ),
        );
    }
    if let Some(r) = resealed_to {
        say(
            Severity::Warning,
            &format!(
                "note: values sealed with the previous seal key stay in etcd's history (below \
                 revision {r}) and in etcd backups; drop that key from seal_key_files only \
                 once every node holds the new one first, and if the old key may be known to \
                 others, `etcdctl compact {r}` and `etcdctl defrag --cluster` (as etcd's \
                 root) and destroy older backups"
            ),
        );
    }
    Ok(0)
}

/// `cluster remove-node`: the promotion gate stops waiting for the node.
pub(super) fn remove_node(a: RemoveNodeArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    let sources = config::Sources::load(&Flags::default(), config)?;
    let cluster = cluster_settings(&sources, config)?;
    let kinds = configured_kinds(&sources, a.kind);
    let removed = block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        let mut out = Vec::new();
        for kind in kinds {
            out.push((kind, c.remove_member(kind, &a.node).await?));
            // A node rebuilt under this name may claim it from now on.
            crate::cluster::names::forget(&c, kind, &a.node).await?;
        }
        Ok::<_, crate::cluster::ClusterError>(out)
    })??;
    if removed.iter().all(|(_, r)| r.is_none()) {
        anyhow::bail!(
            "{}: no member named '{}' (fernetd status lists the members)",
            cluster.prefix,
            a.node
        );
    }
    for (kind, r) in removed {
        if let Some(ack) = r {
            println!(
                "{kind}: removed node {} (it had applied revision {}); promotions no longer wait for it",
                ack.node, ack.revision
            );
        }
    }
    Ok(0)
}

/// `cluster rename-node`: the node's membership and claim move to its new name.
pub(super) fn rename_node(a: RenameNodeArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    let sources = config::Sources::load(&Flags::default(), config)?;
    let cluster = cluster_settings(&sources, config)?;
    let kinds = configured_kinds(&sources, a.kind);
    let moved = block_on(async {
        let c = crate::cluster::Cluster::connect(&cluster).await?;
        let mut out = Vec::new();
        // A daemon just stopped holds its name until its lease ends.
        let until = tokio::time::Instant::now() + cluster.lease_ttl + Duration::from_secs(1);
        for kind in kinds {
            let moved = loop {
                match crate::cluster::names::rename(&c, kind, &a.old, &a.new).await {
                    Err(crate::cluster::names::RenameError::OldLive { .. })
                        if tokio::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    r => break r?,
                }
            };
            out.push((kind, moved));
        }
        Ok::<_, crate::cluster::names::RenameError>(out)
    })??;
    for (kind, m) in moved {
        let acked = m
            .revision
            .map_or("no key set yet".to_string(), |r| format!("revision {r}"));
        println!(
            "{kind}: renamed node {} to {} (it had applied {acked}); promotions wait for {}, \
             not {}: start its daemon with [cluster] node = \"{}\"",
            a.old, a.new, a.new, a.old, a.new
        );
    }
    Ok(0)
}

/// Makes a new seal key at `path` and says where it must go next. Run as root, the file is
/// given to the Keystone user (`[keystone] user`/`group`, else a user named `keystone`), whose
/// daemon reads it.
fn make_seal_key(path: &Path, k: &config::KeystoneSection) -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let owner = match (root, k.user.as_deref(), k.group.as_deref()) {
        (false, _, _) => None,
        (true, Some(u), g) => {
            Owner::resolve(Some(u), Some(g.unwrap_or(u)))?.map(|o| (o.uid, o.gid))
        }
        (true, None, _) => nix::unistd::User::from_name("keystone")
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
    };
    let id = crate::seal::SealKey::create(path, owner)?.id();
    let (uid, gid) = owner.unwrap_or_else(|| {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid.to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| g.name);
    println!(
        "made a new seal key at {} (id {id}, owner {user}, mode 0600): copy it to every node, same \
         path, owner and mode (e.g. `install -m 600 -o {user} -g {group}`), before their \
         daemons start; keep a copy offline: key sets sealed with it open with nothing else",
        path.display()
    );
    Ok(())
}

/// What `cluster init` put into etcd: the keys, the history every node will assume, and the
/// first rotation (by the one scheduling rule, from the set's own history).
fn print_import(kind: config::Kind, set: &KeySet, m: Option<&config::Managed>, clock: &Now) {
    let h = &set.history;
    let primary = set.primary();
    print_keys(set.keys.keys().copied(), primary);
    match h.last_rotation {
        Some(t) => println!(
            "history: last rotation {}, {} rotations and {} purges recorded",
            rfc3339(t),
            h.rotations,
            h.purged.len()
        ),
        None => println!(
            "history: no rotation recorded (keys fernetd did not make): each key counts as first seen now, \
             and the primary as in use since now"
        ),
    }
    let Some(m) = m else {
        println!(
            "first rotation: not known here: this configuration has no [{kind}] section (the nodes that have one schedule it)"
        );
        return;
    };
    let retention = m.settings.lifetime.retention();
    let secondaries: Vec<String> = h
        .keys
        .iter()
        .filter(|(n, _)| **n != 0 && Some(**n) != primary)
        .map(|(n, r)| {
            format!(
                "key {n} until {}",
                rfc3339(r.retained_until(retention, clock))
            )
        })
        .collect();
    if !secondaries.is_empty() {
        println!(
            "kept at least: {} (retention {})",
            secondaries.join(", "),
            duration::format(retention)
        );
    }
    match m.schedule.next_rotation(h.schedule_basis(), clock) {
        Some(t) => println!(
            "first rotation: {} (schedule '{}', max_active_keys {}), by the node that leads",
            rfc3339(t),
            m.schedule,
            m.max_active_keys
        ),
        None => println!(
            "first rotation: never (schedule '{}' does not fire again)",
            m.schedule
        ),
    }
}
