//! etcd's own faults against a real daemon, each one a case the chaos run
//! (`tests/chaos/etcd_faults.rs`) found, reduced to a deterministic test. Real daemons and a
//! real etcd on loopback, bounded in time.

mod common;
use common::etcd::EtcdCluster;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A node that rotates every 3 s, tokens valid 60 s (every key of the test is still needed).
fn node(dir: &Path, etcd: &EtcdCluster, name: &str) -> PathBuf {
    node_with(dir, etcd, name, "expiration = \"60s\"\n")
}

/// [`node`] with `tokens` in its `[tokens]` table instead of the 60 s expiration.
fn node_with(dir: &Path, etcd: &EtcdCluster, name: &str, tokens: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
             schedule = \"3s\"\n{tokens}allow_expired_window = 0\nmargin = 0\n\
             [cluster]\n{}endpoints = [\"{}\"]\nprefix = \"/test\"\nnode = \"{name}\"\n\
             lease_ttl = \"2s\"\ndial_timeout = \"1s\"\nrequest_timeout = \"2s\"\n",
            dir.join(name).display(),
            cluster_lines(""),
            etcd.endpoints()[0]
        ),
    )
    .unwrap();
    p
}

/// A node in step with a rotation applied (a primary and a staged key), etcd killed, the
/// daemon killed (-9) and started again while etcd is away: it never took a set in this
/// process. Returns the daemon and the keys before.
fn restarted_while_etcd_is_away(
    etcd: &mut EtcdCluster,
    cfg: &Path,
    dir: &Path,
) -> (Daemon, std::collections::BTreeMap<u64, String>) {
    let d = in_step_then_etcd_killed(etcd, cfg, dir);
    d.kill9();
    let before = keys(dir);
    (start_degraded(cfg), before)
}

/// The one-hour run of `scripts/chaos --minutes 60 --seed 2026 --safe` (3 etcd members, binary
/// 3c3e008), at 2159.7 s: node1's daemon was killed and restarted, etcd lost its quorum 40 ms
/// later, then a tamper deleted key 349 on node1; node0's Keystone (its daemon down) still
/// encrypted with 349, and 3 of its tokens failed on node1 until etcd was back. The restarted
/// daemon had no key set in memory to restore from (it is kept only from an acknowledgement in
/// this process) and a cluster node never repaired from its copies. Here: `repair = true`, the
/// same restart with etcd away, the primary deleted: it must come back from its copy.
#[test]
fn a_key_deleted_after_a_restart_while_etcd_is_away_comes_back_from_its_copy() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let (dir, d, before) = repairing_node_restarted_while_etcd_is_away(&mut etcd, t.path());
    let primary = *before.keys().next_back().unwrap();
    let token = issue_token(&dir);
    std::fs::remove_file(dir.join(primary.to_string())).unwrap();
    let repaired = d.wait_for(Duration::from_secs(8), || {
        keys(&dir).get(&primary) == before.get(&primary)
    });
    assert!(
        repaired,
        "key {primary} still missing 8 s after it was deleted, etcd away; a token made with it \
         does not decrypt there\n{}",
        d.log()
    );
    assert!(multifernet(&dir).decrypt(&token).is_ok());
    assert!(
        d.log()
            .contains(&format!("repaired: restored key {primary}")),
        "{}",
        d.log()
    );
}

/// The same run's second half: while the key was missing, `fernetd status` on node1 exited 1
/// (etcd unreachable: a warning), not 2. Its own clock called key 349 past its window (the
/// cluster kept it because node0 had not moved off it, which only etcd shows). Here: tokens
/// valid 1 s, so the secondary key is past this node's window while the set still holds it;
/// no repair copies; etcd away; the key deleted: status must be critical and name it, as it is
/// when etcd answers (`lacks key N of the cluster's key set`).
#[test]
fn a_key_of_the_applied_set_missing_while_etcd_is_away_is_critical() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let cfg = node_with(t.path(), &etcd, "n1", "expiration = \"1s\"\n");
    let dir = t.path().join("n1");
    let (d, before) = restarted_while_etcd_is_away(&mut etcd, &cfg, &dir);
    let secondary = *before.keys().find(|&&n| n != 0).unwrap();
    assert!(before.len() >= 3, "{before:?}");
    // Past its 1 s window by this node's clock (demoted at the last rotation, before etcd went).
    std::thread::sleep(Duration::from_secs(2));
    let args = ["--config", cfg.to_str().unwrap(), "status"];
    let whole = fernetd(&args);
    std::fs::remove_file(dir.join(secondary.to_string())).unwrap();
    let lacking = fernetd(&args);
    assert_eq!(whole.code, 1, "before the deletion: {}", whole.stdout);
    assert_eq!(
        lacking.code,
        2,
        "key {secondary} deleted, etcd away: {}\n{}",
        lacking.stdout,
        d.log()
    );
    assert!(
        lacking.stdout.contains(&format!(
            "lacks key {secondary} of the key set this node last applied"
        )),
        "{}",
        lacking.stdout
    );
    // `check` asks no etcd and reads the same history: the same finding (scripts/chaos, seed
    // 15, default mix: a key of the set, past the node's window by its own clock and held by
    // the cluster for a peer's fast clock, deleted with its copy while no daemon ran; 24
    // tokens failed there, status exited 2 and check 0).
    let check = fernetd(&["--config", cfg.to_str().unwrap(), "check"]);
    assert_eq!(check.code, 2, "{}\n{}", check.stdout, d.log());
    assert!(
        check.stdout.contains(&format!(
            "lacks key {secondary} of the key set this node last applied"
        )) && check.stdout.contains("[cluster-differs]"),
        "{}",
        check.stdout
    );
}

/// seed 404 of `scripts/chaos --safe` (3 etcd members, 3 min): a key corrupted on a node
/// (`tamper`) while etcd had lost its quorum (`etcd-quorum-loss`, 6.9 s) stayed corrupted
/// until etcd was back and the node's next session compared its disk; Keystone there failed
/// tokens the node's clock called valid for that long. In cluster mode a local change is only
/// undone by a session (`agent::run`: "Changes noticed while degraded are handled by the next
/// session's first comparison"), never from the node's own copies or the key set it last
/// applied. Here: one member (the quorum lost when it stops), a node in step, the member
/// killed, the node's primary corrupted: the node must restore it while etcd is away.
#[test]
fn a_key_corrupted_while_etcd_is_away_is_restored_before_etcd_returns() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let cfg = node(t.path(), &etcd, "n1");
    let dir = t.path().join("n1");
    fernetd_ok(&["--config", cfg.to_str().unwrap(), "cluster", "init"]);
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    // A rotation applied: a primary that tokens already use, and a staged key.
    assert!(
        d.wait_for(Duration::from_secs(15), || keys(&dir).len() >= 3),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = keys(&dir);
    let primary = *before.keys().next_back().unwrap();
    let token = issue_token(&dir);
    etcd.kill(0);
    std::fs::write(dir.join(primary.to_string()), "not a key\n").unwrap();
    let repaired = d.wait_for(Duration::from_secs(8), || {
        keys(&dir).get(&primary) == before.get(&primary)
    });
    let status = fernetd(&["--config", cfg.to_str().unwrap(), "status"]);
    etcd.restart(0);
    etcd.wait_quorum(0);
    let after_etcd = d.wait_for(Duration::from_secs(20), || {
        keys(&dir).get(&primary) == before.get(&primary)
    });
    assert!(
        repaired,
        "key {primary} still corrupted 8 s after it was, etcd away (restored once etcd was back: \
         {after_etcd}; `fernetd status` meanwhile exited {}: {}); a token made with it before \
         does not decrypt there\n{}",
        status.code,
        status.stdout.lines().next().unwrap_or(""),
        d.log()
    );
    assert!(multifernet(&dir).decrypt(&token).is_ok());
}

/// [`restarted_while_etcd_is_away`] for node n1 under `base`, tokens valid 60 s, `repair =
/// true`: its directory, the daemon, the keys before.
fn repairing_node_restarted_while_etcd_is_away(
    etcd: &mut EtcdCluster,
    base: &Path,
) -> (PathBuf, Daemon, std::collections::BTreeMap<u64, String>) {
    let cfg = node_with(base, etcd, "n1", "expiration = \"60s\"\nrepair = true\n");
    let dir = base.join("n1");
    let (d, before) = restarted_while_etcd_is_away(etcd, &cfg, &dir);
    (dir, d, before)
}

/// A node in step with a rotation applied (a primary and a staged key), then etcd killed.
fn in_step_then_etcd_killed(etcd: &mut EtcdCluster, cfg: &Path, dir: &Path) -> Daemon {
    let cfg = cfg.to_str().unwrap();
    fernetd_ok(&["--config", cfg, "cluster", "init"]);
    let d = Daemon::start(&["--config", cfg, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    assert!(
        d.wait_for(Duration::from_secs(15), || keys(dir).len() >= 3),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    etcd.kill(0);
    d
}

/// The node's daemon started (etcd away): once it says its session failed.
fn start_degraded(cfg: &Path) -> Daemon {
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "daemon"], &[]);
    assert!(
        d.wait_log("degraded", Duration::from_secs(15)),
        "{}",
        d.log()
    );
    d
}

/// What `keystone-manage fernet_rotate` does to `dir`: key 0 promoted to the highest number
/// + 1, a new key 0, the lowest keys purged until `keep` remain (its max_active_keys).
fn rotate_like_keystone(dir: &Path, keep: usize) {
    let top = *keys(dir).keys().next_back().unwrap();
    std::fs::rename(dir.join("0"), dir.join((top + 1).to_string())).unwrap();
    let tmp = dir.parent().unwrap().join("new-key-0");
    std::fs::write(&tmp, fernet::Fernet::generate_key()).unwrap();
    std::fs::rename(&tmp, dir.join("0")).unwrap();
    let mut numbers: Vec<u64> = keys(dir).into_keys().filter(|&n| n != 0).collect();
    while numbers.len() + 1 > keep {
        std::fs::remove_file(dir.join(numbers.remove(0).to_string())).unwrap();
    }
}

/// A hostile re-test of the repair above (daemon restarted, etcd away): `keystone-manage
/// fernet_rotate` on the node (purging the keys below its max_active_keys) made the daemon
/// restore nothing from then on, not even the cluster's primary deleted next (a rotation made
/// by another tool meant "its deletions were that tool's purge", a standalone rule); tokens
/// the other nodes issue with it failed here until etcd came back. In a cluster the set
/// decides: every key of it comes back.
#[test]
fn keystone_manage_rotating_a_node_while_etcd_is_away_does_not_stop_its_repair() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let (dir, d, before) = repairing_node_restarted_while_etcd_is_away(&mut etcd, t.path());
    let primary = *before.keys().next_back().unwrap();
    let token = issue_token(&dir);
    rotate_like_keystone(&dir, 2);
    let restored = |n: u64| keys(&dir).get(&n) == before.get(&n);
    let back = d.wait_for(Duration::from_secs(8), || {
        before.keys().filter(|&&n| n != 0).all(|&n| restored(n))
    });
    assert!(
        back,
        "keys before {:?}, after keystone-manage's rotation and 8 s: {:?}\n{}",
        before.keys(),
        keys(&dir).keys(),
        d.log()
    );
    std::fs::remove_file(dir.join(primary.to_string())).unwrap();
    assert!(
        d.wait_for(Duration::from_secs(8), || restored(primary)),
        "the cluster's primary {primary} deleted next: not restored in 8 s\n{}",
        d.log()
    );
    assert!(multifernet(&dir).decrypt(&token).is_ok());
}

/// The same re-test: a fresh key written above the primary while etcd was away (Keystone
/// encrypts with it; no other node holds it) left `status` at WARNING and `check` healthy, and
/// with etcd answering it was a WARNING too ("differs: run fernetd sync"). Every token the
/// node issues fails on the other nodes: critical, whether etcd answers or not.
#[test]
fn a_primary_no_other_node_holds_is_critical_with_etcd_and_without() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let cfg = node(t.path(), &etcd, "n1");
    let dir = t.path().join("n1");
    let d = in_step_then_etcd_killed(&mut etcd, &cfg, &dir);
    d.kill9();
    etcd.restart(0);
    etcd.wait_quorum(0);
    let top = *keys(&dir).keys().next_back().unwrap();
    let tmp = t.path().join("foreign");
    std::fs::write(&tmp, fernet::Fernet::generate_key()).unwrap();
    std::fs::rename(&tmp, dir.join((top + 1).to_string())).unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "status"];
    let with = fernetd(&args);
    etcd.kill(0);
    let without = fernetd(&args);
    let said = |r: &Run, set: &str| {
        r.code == 2
            && r.stdout.contains(&format!(
                "key {}, this node's primary, is not in {set}",
                top + 1
            ))
    };
    assert!(
        said(&with, "the cluster's key set"),
        "etcd up: {}",
        with.stdout
    );
    assert!(
        said(&without, "the key set this node last applied"),
        "etcd away: {}",
        without.stdout
    );
}

/// The same re-test: a key of the set deleted while the daemon was stopped and etcd away was
/// recorded at the daemon's start as gone outside fernetd (`setup`'s rule), which dropped it
/// from the history: past this node's window, `status` then said nothing of it (exit 1), as it
/// did of a key missing before a restart. The start of a cluster node records nothing now; the
/// key stays critical until it is back.
#[test]
fn a_key_deleted_while_the_daemon_and_etcd_are_down_stays_critical_after_the_start() {
    let mut etcd = EtcdCluster::start(1);
    let t = tempfile::tempdir().unwrap();
    let cfg = node_with(t.path(), &etcd, "n1", "expiration = \"1s\"\n");
    let dir = t.path().join("n1");
    let d = in_step_then_etcd_killed(&mut etcd, &cfg, &dir);
    d.kill9();
    let secondary = *keys(&dir).keys().find(|&&n| n != 0).unwrap();
    std::fs::remove_file(dir.join(secondary.to_string())).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let d = start_degraded(&cfg);
    let status = fernetd(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(status.code, 2, "{}\n{}", status.stdout, d.log());
    assert!(
        status.stdout.contains(&format!(
            "lacks key {secondary} of the key set this node last applied"
        )),
        "{}",
        status.stdout
    );
}
