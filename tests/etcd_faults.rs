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
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
             schedule = \"3s\"\nexpiration = \"60s\"\nallow_expired_window = 0\nmargin = 0\n\
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
