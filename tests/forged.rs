//! Forged acknowledgements and clock answers, as a hostile tester plants them: a member's
//! daemon stopped (its Keystone still serving), another member's records copied under its
//! name in etcd every 0.2 s. With a seal key no forged record may count: the gate holds and
//! every token Keystone makes on one node decrypts on the others. Real daemons and a real
//! etcd on loopback, bounded in time.

mod common;
use common::etcd::Etcd;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A sealed node: rotations every 2 s, tokens valid 60 s (every key made in the test is
/// still needed at its end).
fn sealed_node(dir: &Path, etcd: &Etcd, node: &str, seal: &Path) -> std::path::PathBuf {
    let p = dir.join(format!("{node}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
             schedule = \"2s\"\nexpiration = \"60s\"\nallow_expired_window = 0\nmargin = 0\n\
             [cluster]\nseal_key_file = \"{}\"\nendpoints = [\"{}\"]\nprefix = \"/test\"\n\
             node = \"{node}\"\nlease_ttl = \"2s\"\ndial_timeout = \"2s\"\n\
             request_timeout = \"2s\"\ngate_deadline = \"3s\"\n",
            dir.join(node).display(),
            seal.display(),
            etcd.endpoint
        ),
    )
    .unwrap();
    p
}

/// Every 0.2 s until `until`: `acks/n1` copied into `acks/n2` (the node renamed, its clock
/// set to now) and `clocks/n1` into `clocks/n2` (renamed too). Returns how many were planted.
fn forge(etcd: &Etcd, until: Instant) -> usize {
    let mut planted = 0;
    while Instant::now() < until {
        planted += etcd.with_client(async |c| {
            let mut n = 0;
            for (from, to) in [
                ("/test/tokens/acks/n1", "/test/tokens/acks/n2"),
                ("/test/tokens/clocks/n1", "/test/tokens/clocks/n2"),
            ] {
                let resp = c.get(from, None).await.unwrap();
                let Some(kv) = resp.kvs().first() else {
                    continue;
                };
                let mut v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                v["node"] = serde_json::json!("n2");
                v["clock"] = serde_json::json!(chrono::Utc::now());
                c.put(to, serde_json::to_vec(&v).unwrap(), None)
                    .await
                    .unwrap();
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    planted
}

#[test]
fn a_stopped_members_forged_acknowledgements_never_open_the_gate() {
    let _ = common::keystone::venv();
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let nodes = ["n1", "n2", "n3"];
    let cfgs: Vec<_> = nodes
        .iter()
        .map(|n| sealed_node(t.path(), &etcd, n, &seal))
        .collect();
    fernetd_ok(&["--config", cfgs[0].to_str().unwrap(), "cluster", "init"]);
    let dirs: Vec<_> = nodes.iter().map(|n| t.path().join(n)).collect();
    let n1 = Daemon::start(&["--config", cfgs[0].to_str().unwrap(), "daemon"], &[]);
    assert!(
        n1.wait_log("leading", Duration::from_secs(15)),
        "{}",
        n1.log()
    );
    let rest: Vec<Daemon> = cfgs[1..]
        .iter()
        .map(|c| Daemon::start(&["--config", c.to_str().unwrap(), "daemon"], &[]))
        .collect();
    for d in &rest {
        assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    }
    let n2 = &rest[0];
    // In step before the forgery: n2 holds what the others hold.
    assert!(
        n1.wait_for(Duration::from_secs(10), || {
            let k: Vec<_> = dirs.iter().map(|d| keys(d)).collect();
            k.iter().all(|x| *x == k[0])
        }),
        "{}",
        n1.log()
    );
    n2.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = keys(&dirs[1]);
    // Keystone on n2 keeps serving: its tokens, made with its primary, must decrypt elsewhere.
    let from_n2 = common::keystone::pack(&dirs[1]);
    // Keystone on n1 and n3 makes tokens all along, with each one's primary of the moment.
    let makers: Vec<_> = [&dirs[0], &dirs[2]]
        .iter()
        .map(|d| {
            std::process::Command::new(common::keystone::venv().join("bin/python"))
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"))
                .args(["pack-loop", d.to_str().unwrap(), "25", "0.5"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // While the forgery runs (past a due rotation and gate_deadline), the leader's status is
    // CRITICAL and names n2's acknowledgement as not authenticated.
    let cfg1 = cfgs[0].clone();
    let during = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(12));
        fernetd(&["--config", cfg1.to_str().unwrap(), "status"])
    });
    let planted = forge(&etcd, Instant::now() + Duration::from_secs(25));
    let during = during.join().unwrap();
    assert_eq!(during.code, 2, "{}{}", during.stdout, during.stderr);
    assert!(
        during.stdout.contains(
            "node n2: acknowledgement not authenticated (forged, or sealed with a key this \
             node does not hold)"
        ) && during.stdout.contains("[ack-unauthenticated]"),
        "{}",
        during.stdout
    );
    assert!(planted > 50, "the forgery planted only {planted} records");
    let tokens: Vec<String> = makers
        .into_iter()
        .flat_map(|m| {
            let out = m.wait_with_output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(tokens.len() > 10, "too few tokens made: {}", tokens.len());
    assert_eq!(keys(&dirs[1]), frozen, "n2 changed while stopped");
    let mut failed = common::keystone::unpack_failures(&dirs[1], &tokens);
    for d in [&dirs[0], &dirs[2]] {
        failed.extend(common::keystone::unpack_failures(
            d,
            std::slice::from_ref(&from_n2),
        ));
    }
    let log = n1.log();
    assert!(
        failed.is_empty(),
        "{} of {} tokens failed (n2 holds {:?}, n1 {:?}):\n{log}",
        failed.len(),
        tokens.len() + 2,
        frozen.keys().collect::<Vec<_>>(),
        keys(&dirs[0]).keys().collect::<Vec<_>>()
    );
    // The leader says which acknowledgement it did not believe, and that the gate is held on it.
    assert!(
        log.contains("node n2: acknowledgement not authenticated"),
        "{log}"
    );
    assert!(
        log.contains("blocked past gate_deadline: node n2 has not applied the staged key"),
        "{log}"
    );
    let status = fernetd(&["--config", cfgs[0].to_str().unwrap(), "status"]);
    assert_ne!(status.code, 0, "{}", status.stdout);
    assert!(status.stdout.contains("n2"), "{}", status.stdout);
    // The records as stored carry a MAC, and none names key material.
    let stored = etcd.with_client(async |c| {
        let r = c.get("/test/tokens/acks/n1", None).await.unwrap();
        r.kvs()[0].value().to_vec()
    });
    let v: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(v["mac"].as_str().map(str::len), Some(64), "{v}");
    n2.signal(nix::sys::signal::Signal::SIGCONT);
    // n2 back acknowledges with its own MAC: the leader finds it verifies and says so, and its
    // status no longer names the record.
    assert!(
        n1.wait_log(
            "acknowledgement authenticated again: n2",
            Duration::from_secs(20)
        ),
        "{}",
        n1.log()
    );
    assert!(
        n1.wait_for(Duration::from_secs(10), || {
            let s = fernetd(&["--config", cfgs[0].to_str().unwrap(), "status"]);
            !s.stdout.contains("ack-unauthenticated")
        }),
        "{}",
        fernetd(&["--config", cfgs[0].to_str().unwrap(), "status"]).stdout
    );
    for d in rest {
        d.stop();
    }
    n1.stop();
}

#[test]
fn a_sealed_rename_moves_an_acknowledgement_that_still_verifies() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let c1 = sealed_node(t.path(), &etcd, "n1", &seal);
    let c2 = sealed_node(t.path(), &etcd, "n2", &seal);
    fernetd_ok(&["--config", c1.to_str().unwrap(), "cluster", "init"]);
    let n1 = Daemon::start(&["--config", c1.to_str().unwrap(), "daemon"], &[]);
    assert!(
        n1.wait_log("leading", Duration::from_secs(15)),
        "{}",
        n1.log()
    );
    let n2 = Daemon::start(&["--config", c2.to_str().unwrap(), "daemon"], &[]);
    assert!(
        n2.wait_log("ready", Duration::from_secs(15)),
        "{}",
        n2.log()
    );
    n2.stop();
    let out = fernetd_ok(&[
        "--config",
        c1.to_str().unwrap(),
        "cluster",
        "rename-node",
        "n2",
        "n2b",
    ]);
    assert!(
        out.stdout.contains("renamed node n2 to n2b"),
        "{}",
        out.stdout
    );
    // The leader reads the moved record at its next asks: believed, under its new key.
    assert!(
        !n1.wait_log("acknowledgement not authenticated", Duration::from_secs(8)),
        "{}",
        n1.log()
    );
    assert!(
        n1.log().contains("node n2b has not applied the staged key") || n1.log().contains("n2b"),
        "{}",
        n1.log()
    );
    n1.stop();
}

/// A forged clock answer is said, not only counted as unanswered: n2 stopped (its lease gone,
/// its acknowledgement its own), a record under `clocks/n2` every 0.2 s whose MAC does not
/// verify. The leader's status is CRITICAL naming n2's clock answer (not its acknowledgement),
/// and its log names the record.
#[test]
fn a_forged_clock_answer_is_reported_naming_the_node_and_the_record() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let c1 = sealed_node(t.path(), &etcd, "n1", &seal);
    let c2 = sealed_node(t.path(), &etcd, "n2", &seal);
    fernetd_ok(&["--config", c1.to_str().unwrap(), "cluster", "init"]);
    let n1 = Daemon::start(&["--config", c1.to_str().unwrap(), "daemon"], &[]);
    assert!(
        n1.wait_log("leading", Duration::from_secs(15)),
        "{}",
        n1.log()
    );
    let n2 = Daemon::start(&["--config", c2.to_str().unwrap(), "daemon"], &[]);
    assert!(
        n2.wait_log("ready", Duration::from_secs(15)),
        "{}",
        n2.log()
    );
    n2.signal(nix::sys::signal::Signal::SIGSTOP);
    let cfg1 = c1.clone();
    let during = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(8));
        fernetd(&["--config", cfg1.to_str().unwrap(), "status"])
    });
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        etcd.with_client(async |c| {
            let forged = serde_json::json!({
                "node": "n2",
                "probe": 0,
                "clock": chrono::Utc::now(),
                "mac": "00".repeat(32),
            });
            c.put(
                "/test/tokens/clocks/n2",
                serde_json::to_vec(&forged).unwrap(),
                None,
            )
            .await
            .unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = during.join().unwrap();
    n2.signal(nix::sys::signal::Signal::SIGCONT);
    let log = n1.log();
    n2.stop();
    n1.stop();
    assert_eq!(during.code, 2, "{}{}", during.stdout, during.stderr);
    assert!(
        during.stdout.contains(
            "node n2: clock answer not authenticated (forged, or sealed with a key this node \
             does not hold); counted as unanswered: purges are held"
        ) && during.stdout.contains("[ack-unauthenticated]"),
        "{}",
        during.stdout
    );
    assert!(
        !during
            .stdout
            .contains("node n2: acknowledgement not authenticated"),
        "{}",
        during.stdout
    );
    assert!(
        log.contains("node n2: clock answer not authenticated (/test/tokens/clocks/n2: its MAC"),
        "{log}"
    );
}

/// A node's own signed acknowledgement written back later (someone with write access to the
/// etcd prefix kept it) does not acknowledge a later set holding the same staged key: b
/// acknowledged the set of generation g (staged K), then the next set; the operator offers
/// generation g's keys again (`cluster init --force --from` a stale node: K staged again);
/// b's old record written back must leave the gate waiting on b, not promote K.
#[test]
fn a_replayed_acknowledgement_does_not_acknowledge_a_later_set() {
    use fernetd::cluster::{Ack, Cluster, ClusterError, Rotation};
    use fernetd::config::{ClusterSection, Kind};
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let section: ClusterSection = toml::from_str(&format!(
        "endpoints = [\"{}\"]\nprefix = \"/replay\"\nseal_key_file = \"{}\"\n",
        etcd.endpoint,
        seal.display()
    ))
    .unwrap();
    let settings = section.settings(&Default::default());
    let params = fernetd::repository::RotateParams {
        max_active_keys: 3,
        retention: Duration::from_secs(3600),
        force_purge: false,
        expected_primary: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = fernetd::core::clock::Now::read();
        let rotation = Rotation {
            params: &params,
            now: &now,
            held: None,
            skew_tolerance: Duration::from_secs(60),
            fence: None,
            schedule: None,
            member_timeout: None,
            probe_wait: Duration::from_millis(100),
        };
        let mut c = Cluster::connect(&settings).await.unwrap();
        let kind = Kind::Tokens;
        c.import(
            kind,
            &fernetd::core::keyset::KeySet::fresh(&now).unwrap(),
            false,
            false,
        )
        .await
        .unwrap();
        let ack_of = |set: &fernetd::core::keyset::KeySet, revision| Ack {
            node: "b".into(),
            revision,
            staged: set.keys[&0].fingerprint(),
            clock: Some(chrono::Utc::now()),
            refused: None,
        };
        let (first, r1) = c.fetch(kind).await.unwrap();
        let lineage = first.history.lineage.clone();
        c.acknowledge_set(kind, &ack_of(&first, r1), lineage.as_ref())
            .await
            .unwrap();
        let mut raw = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        let old = raw.get("/replay/tokens/acks/b", None).await.unwrap().kvs()[0]
            .value()
            .to_vec();
        c.rotate(kind, &rotation).await.unwrap();
        let (second, r2) = c.fetch(kind).await.unwrap();
        c.acknowledge_set(kind, &ack_of(&second, r2), second.history.lineage.as_ref())
            .await
            .unwrap();
        // The first set's keys offered again: K staged again, a later generation.
        c.import(kind, &first, true, false).await.unwrap();
        let (third, _) = c.fetch(kind).await.unwrap();
        assert_eq!(third.keys[&0].fingerprint(), first.keys[&0].fingerprint());
        // Without the old record the gate waits on b (its acknowledgement names K2).
        assert!(matches!(
            c.rotate(kind, &rotation).await,
            Err(ClusterError::GateWaiting { .. })
        ));
        raw.put("/replay/tokens/acks/b", old, None).await.unwrap();
        match c.rotate(kind, &rotation).await {
            Err(ClusterError::GateWaiting { nodes, .. }) => assert_eq!(nodes, ["b"]),
            other => panic!(
                "b's old acknowledgement written back opened the gate for a later set: {:?}",
                other.map(|r| r.revision)
            ),
        }
    });
}

/// Deleting a member's acknowledgement record in etcd (no seal key needed) ends no
/// membership: the sealed key set lists the member, the gate holds for it, and `status` on
/// every node is CRITICAL naming it. Only `cluster remove-node` ends it. On the old code the
/// membership was the set of records: the leader promoted keys n2 never got and tokens made
/// on n1 and n3 failed on n2.
#[test]
fn a_members_deleted_acknowledgement_never_opens_the_gate() {
    let _ = common::keystone::venv();
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let nodes = ["n1", "n2", "n3"];
    let cfgs: Vec<_> = nodes
        .iter()
        .map(|n| sealed_node(t.path(), &etcd, n, &seal))
        .collect();
    fernetd_ok(&["--config", cfgs[0].to_str().unwrap(), "cluster", "init"]);
    let dirs: Vec<_> = nodes.iter().map(|n| t.path().join(n)).collect();
    let n1 = Daemon::start(&["--config", cfgs[0].to_str().unwrap(), "daemon"], &[]);
    assert!(
        n1.wait_log("leading", Duration::from_secs(15)),
        "{}",
        n1.log()
    );
    let rest: Vec<Daemon> = cfgs[1..]
        .iter()
        .map(|c| Daemon::start(&["--config", c.to_str().unwrap(), "daemon"], &[]))
        .collect();
    for d in &rest {
        assert!(d.wait_log("ready", Duration::from_secs(15)), "{}", d.log());
    }
    let in_step = || {
        let k: Vec<_> = dirs.iter().map(|d| keys(d)).collect();
        k.iter().all(|x| *x == k[0])
    };
    assert!(
        n1.wait_for(Duration::from_secs(10), in_step),
        "{}",
        n1.log()
    );
    // One rotation with every member acknowledged: the set it writes lists all three.
    let before = keys(&dirs[0]);
    assert!(
        n1.wait_for(Duration::from_secs(10), || keys(&dirs[0]) != before
            && in_step()),
        "{}",
        n1.log()
    );
    let n2 = &rest[0];
    n2.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = keys(&dirs[1]);
    let from_n2 = common::keystone::pack(&dirs[1]);
    let makers: Vec<_> = [&dirs[0], &dirs[2]]
        .iter()
        .map(|d| {
            std::process::Command::new(common::keystone::venv().join("bin/python"))
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"))
                .args(["pack-loop", d.to_str().unwrap(), "25", "0.5"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let status_during = |cfg: std::path::PathBuf| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(12));
            fernetd(&["--config", cfg.to_str().unwrap(), "status"])
        })
    };
    let (on_n1, on_n3) = (
        status_during(cfgs[0].clone()),
        status_during(cfgs[2].clone()),
    );
    // The attacker: n2's record deleted every 0.2 s for 25 s.
    let until = Instant::now() + Duration::from_secs(25);
    let mut deleted = 0;
    while Instant::now() < until {
        deleted += etcd.with_client(async |c| {
            c.delete("/test/tokens/acks/n2", None)
                .await
                .unwrap()
                .deleted()
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(deleted >= 1, "the record was never there to delete");
    // The leader's daemon says it too (its live view feeds STATUS=, metrics and hooks).
    let live = std::fs::read_to_string(dirs[0].join(".fernetd/daemon.json")).unwrap();
    assert!(
        live.contains("its acknowledgement record is missing from etcd"),
        "{live}"
    );
    for during in [on_n1.join().unwrap(), on_n3.join().unwrap()] {
        assert_eq!(during.code, 2, "{}{}", during.stdout, during.stderr);
        assert!(
            during
                .stdout
                .contains("node n2: its acknowledgement record is missing from etcd")
                && during.stdout.contains("[ack-missing]"),
            "{}",
            during.stdout
        );
    }
    let tokens: Vec<String> = makers
        .into_iter()
        .flat_map(|m| {
            let out = m.wait_with_output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(tokens.len() > 10, "too few tokens made: {}", tokens.len());
    assert_eq!(keys(&dirs[1]), frozen, "n2 changed while stopped");
    let mut failed = common::keystone::unpack_failures(&dirs[1], &tokens);
    for d in [&dirs[0], &dirs[2]] {
        failed.extend(common::keystone::unpack_failures(
            d,
            std::slice::from_ref(&from_n2),
        ));
    }
    let log = n1.log();
    assert!(
        failed.is_empty(),
        "{} of {} tokens failed (n2 holds {:?}, n1 {:?}):\n{log}",
        failed.len(),
        tokens.len() + 2,
        frozen.keys().collect::<Vec<_>>(),
        keys(&dirs[0]).keys().collect::<Vec<_>>()
    );
    assert!(
        log.contains("node n2: its acknowledgement record is missing from etcd"),
        "{log}"
    );
    // The operator's command ends the membership: the gate opens without n2.
    fernetd_ok(&[
        "--config",
        cfgs[0].to_str().unwrap(),
        "cluster",
        "remove-node",
        "n2",
    ]);
    let held = keys(&dirs[0]);
    assert!(
        n1.wait_for(Duration::from_secs(15), || keys(&dirs[0]) != held),
        "no rotation after remove-node n2:\n{}",
        n1.log()
    );
    // The leader's live view drops it at its next gate check after the rotation.
    assert!(
        n1.wait_for(Duration::from_secs(10), || {
            let s = fernetd(&["--config", cfgs[0].to_str().unwrap(), "status"]);
            !s.stdout.contains("ack-missing")
        }),
        "{}",
        fernetd(&["--config", cfgs[0].to_str().unwrap(), "status"]).stdout
    );
    n2.signal(nix::sys::signal::Signal::SIGCONT);
    for d in rest {
        d.stop();
    }
    n1.stop();
}
