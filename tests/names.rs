//! A cluster node name is held by one live daemon (issue 22), through real daemons, a real
//! etcd on loopback and Keystone's own TokenFormatter: a clone of a running node started under
//! its name is refused and reported on both, and once the original stops (its Keystone still
//! validating) the clone does not take its place, so no token fails there; a renamed node
//! (by `cluster rename-node`, or restarted under a new name) never stalls rotations. Every
//! wait is bounded.

mod common;
use common::etcd::Etcd;
use common::keystone::{pack, unpack_failures};
use common::*;
use fernetd::core::keyset::KeySet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A node's config: rotations every 2 s, tokens that live 60 s (no key is purged while a test
/// runs), a 2 s lease. The repository is `repo`, the node's name `name`.
fn node(dir: &Path, etcd: &Etcd, file: &str, repo: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{file}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [tokens]\nkey_repository = \"{}\"\nschedule = \"2s\"\nexpiration = \"60s\"\n\
             allow_expired_window = 0\nmargin = 0\n\
             [cluster]\nendpoints = [\"{}\"]\nprefix = \"/test\"\nnode = \"{name}\"\n\
             lease_ttl = \"2s\"\ndial_timeout = \"2s\"\nrequest_timeout = \"2s\"\n{}",
            repo.display(),
            etcd.endpoint,
            cluster_lines("")
        ),
    )
    .unwrap();
    p
}

/// [`node`] with hourly rotations: none comes between what a test does, unless it asks.
fn hourly_node(dir: &Path, etcd: &Etcd, file: &str, repo: &Path, name: &str) -> PathBuf {
    let c = node(dir, etcd, file, repo, name);
    let text = std::fs::read_to_string(&c)
        .unwrap()
        .replace("schedule = \"2s\"", "schedule = \"1h\"");
    std::fs::write(&c, text).unwrap();
    c
}

fn daemon(cfg: &Path) -> Daemon {
    Daemon::start(&["--config", cfg.to_str().unwrap(), "daemon"], &[])
}

/// The primary of the (unsealed) key set in etcd, 0 when there is none.
fn cluster_primary(etcd: &Etcd) -> u64 {
    etcd.with_client(async |c| {
        c.get("/test/tokens/keyset", None)
            .await
            .unwrap()
            .kvs()
            .first()
            .and_then(|kv| KeySet::decode(kv.value()).ok())
            .and_then(|s| s.primary())
            .unwrap_or(0)
    })
}

/// The members (acknowledgement records) of the tokens repository.
fn members(etcd: &Etcd) -> Vec<String> {
    etcd.with_client(async |c| {
        c.get(
            "/test/tokens/acks/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            String::from_utf8_lossy(kv.key())
                .trim_start_matches("/test/tokens/acks/")
                .to_string()
        })
        .collect()
    })
}

/// Waits (at most 30 s) until etcd's primary is at least `n`.
fn primary_reaches(etcd: &Etcd, n: u64, logs: &[&Daemon]) {
    let deadline = Instant::now() + secs(30);
    while cluster_primary(etcd) < n {
        let logs: Vec<String> = logs.iter().map(|d| d.log()).collect();
        assert!(
            Instant::now() < deadline,
            "no rotation to {n}:\n{}",
            logs.join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Tokens packed with `dir`'s keys every half second for `for_`.
fn tokens_for(dir: &Path, for_: Duration) -> Vec<String> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    while Instant::now() < end {
        out.push(pack(dir));
        std::thread::sleep(Duration::from_millis(500));
    }
    out
}

/// `fernetd cluster init --from repo` with `cfg`.
fn init(cfg: &Path, repo: &Path) {
    let (cfg, repo) = (cfg.to_str().unwrap(), repo.to_str().unwrap());
    fernetd_ok(&["--config", cfg, "cluster", "init", "--from", repo]);
}

/// `fernetd cluster remove-node node` with `cfg`.
fn remove_node(cfg: &Path, node: &str) {
    fernetd_ok(&[
        "--config",
        cfg.to_str().unwrap(),
        "cluster",
        "remove-node",
        node,
    ]);
}

fn status(cfg: &Path) -> Run {
    fernetd(&["--config", cfg.to_str().unwrap(), "status"])
}

/// Fails against the code before names were held (the clone joined as `ctl`, acknowledged for
/// the stopped original, rotations went on and the original's Keystone failed tokens).
#[test]
fn a_clone_under_a_running_nodes_name_is_refused_and_the_stopped_original_fails_no_token() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, c1, c2) = (t.path().join("a"), t.path().join("c1"), t.path().join("c2"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let ca = node(t.path(), &etcd, "a", &a, "a");
    let cc1 = node(t.path(), &etcd, "c1", &c1, "ctl");
    let cc2 = node(t.path(), &etcd, "c2", &c2, "ctl");
    fernetd_ok(&[
        "--config",
        ca.to_str().unwrap(),
        "cluster",
        "init",
        "--from",
        a.to_str().unwrap(),
        "--members",
        "a,ctl",
    ]);
    let da = daemon(&ca);
    let d1 = daemon(&cc1);
    let start = cluster_primary(&etcd);
    primary_reaches(&etcd, start + 2, &[&da, &d1]);

    // A VM cloned from the running node: the same disk, the same name.
    copy_dir(&c1, &c2);
    let d2 = daemon(&cc2);
    let refused = d2.wait_log("held by another live daemon", secs(15));
    let reported = d1.wait_log("another daemon tries to run as 'ctl'", secs(15));
    let critical = d1.wait_for(secs(10), || {
        let s = status(&cc1);
        s.code == 2 && s.stdout.contains("duplicate-node")
    });
    let pid_named = d2.log().contains(&format!("pid {}", d1.pid()));

    // The original stops; its Keystone keeps validating with the keys it has.
    let tokens_before = tokens_for(&a, secs(2));
    d1.stop();
    let tokens_after = tokens_for(&a, secs(12));
    let tokens: Vec<String> = tokens_before.into_iter().chain(tokens_after).collect();
    let failed = unpack_failures(&c1, &tokens);
    assert!(
        failed.is_empty(),
        "{} of {} tokens fail on the stopped original; keys {:?}\n{}\n---\n{}",
        failed.len(),
        tokens.len(),
        numbers(&c1),
        da.log(),
        d2.log()
    );
    assert!(unpack_failures(&a, &tokens).is_empty());
    assert!(refused, "clone not refused:\n{}", d2.log());
    assert!(
        pid_named,
        "the refusal names the holder's pid:\n{}",
        d2.log()
    );
    assert!(
        reported,
        "the holder does not report the clone:\n{}",
        d2.log()
    );
    assert!(critical, "{}", status(&cc1).stdout);
    assert!(
        d2.log()
            .contains("was last held by a daemon that is not running now"),
        "the clone's copy of the claim was made stale while the original ran:\n{}",
        d2.log()
    );
    assert!(!d2.log().contains("in step"), "{}", d2.log());
    let s = status(&cc2);
    assert_eq!(s.code, 2, "{}{}", s.stdout, s.stderr);
    assert!(s.stdout.contains("duplicate-node"), "{}", s.stdout);
    assert_eq!(members(&etcd), vec!["a".to_string(), "ctl".to_string()]);
}

/// Fails against the code before renames (no `rename-node`; a daemon restarted under a new
/// name left its old membership behind and rotations stopped: "node b has not applied"), and
/// against the code that moved a membership by itself (a copy of a stopped node's disk under a
/// new name took the original out of the gate: "renamed node ... moved to", b2 not a member).
#[test]
fn a_renamed_node_never_stalls_rotations() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let ca = node(t.path(), &etcd, "a", &a, "a");
    init(&ca, &a);
    let da = daemon(&ca);
    let db = daemon(&node(t.path(), &etcd, "b", &b, "b"));
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 2, &[&da, &db]);
    let mut tokens = tokens_for(&a, secs(1));

    // A restart (killed: its lease lives on for a TTL) takes its name back at once: the same
    // host, boot and disk, the old pid gone.
    db.kill9();
    let started = Instant::now();
    let db = daemon(&node(t.path(), &etcd, "b", &b, "b"));
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    assert!(
        !db.log().contains("duplicate node name"),
        "a restart refused:\n{}",
        db.log()
    );
    eprintln!("restart back in step after {:?}", started.elapsed());

    // By the command: the daemon stopped, renamed, started under the new name.
    db.stop();
    let out = fernetd_ok(&[
        "--config",
        ca.to_str().unwrap(),
        "cluster",
        "rename-node",
        "b",
        "b2",
    ]);
    assert!(
        out.stdout.contains("renamed node b to b2"),
        "{}",
        out.stdout
    );
    assert_eq!(members(&etcd), vec!["a".to_string(), "b2".to_string()]);
    let db = daemon(&node(t.path(), &etcd, "b2", &b, "b2"));
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 3, &[&da, &db]);
    tokens.extend(tokens_for(&a, secs(1)));
    assert!(!db.log().contains("duplicate node name"), "{}", db.log());

    // A copy of b2's disk started under a new name on the same host and boot, b2 stopped (its
    // Keystone still serving b's keys): a new node; b2 stays a member and the gate waits for
    // it, so no token made on a fails on b. A rename looks the same to the daemon: the
    // operator finishes it with `remove-node` (the clone case keeps both).
    db.stop();
    let b3 = t.path().join("b3");
    copy_dir(&b, &b3);
    let p = cluster_primary(&etcd);
    let db3 = daemon(&node(t.path(), &etcd, "b3", &b3, "b3"));
    assert!(db3.wait_log("a new node", secs(15)), "{}", db3.log());
    let warned = db3.log();
    assert!(
        warned.contains("'b2' stays a member")
            && warned.contains("fernetd cluster rename-node b2 b3")
            && warned.contains("fernetd cluster remove-node b2"),
        "{warned}"
    );
    assert!(!warned.contains("moved to"), "{warned}");
    tokens.extend(tokens_for(&a, secs(8)));
    assert_eq!(
        members(&etcd),
        vec!["a".to_string(), "b2".to_string(), "b3".to_string()]
    );
    // The staged key b2 holds may be promoted once; nothing after it.
    assert!(cluster_primary(&etcd) <= p + 1, "the gate let b2 go");
    for dir in [&a, &b, &b3] {
        let failed = unpack_failures(dir, &tokens);
        assert!(
            failed.is_empty(),
            "{} of {} tokens fail on {}",
            failed.len(),
            tokens.len(),
            dir.display()
        );
    }
    // It was a rename after all: the operator removes the old name, rotations go on.
    remove_node(&ca, "b2");
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 2, &[&da, &db3]);
    assert_eq!(members(&etcd), vec!["a".to_string(), "b3".to_string()]);
    tokens.extend(tokens_for(&a, secs(1)));
    for dir in [&a, &b3] {
        assert!(
            unpack_failures(dir, &tokens).is_empty(),
            "{}",
            dir.display()
        );
    }
    // No message ever names the old name as lagging.
    assert!(!da.log().contains("node b has not"), "{}", da.log());
}

/// Fails against the code before the gate held on duplicates (rotations went on while the
/// original, refused under its own name, applied nothing: its Keystone failed every token
/// made elsewhere, and the leader said OK).
#[test]
fn while_a_daemon_is_refused_under_a_held_name_the_leader_holds_the_gate_critical() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, c1, c2) = (t.path().join("a"), t.path().join("c1"), t.path().join("c2"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let ca = node(t.path(), &etcd, "a", &a, "a");
    let cc1 = node(t.path(), &etcd, "c1", &c1, "ctl");
    let cc2 = node(t.path(), &etcd, "c2", &c2, "ctl");
    fernetd_ok(&[
        "--config",
        ca.to_str().unwrap(),
        "cluster",
        "init",
        "--from",
        a.to_str().unwrap(),
        "--members",
        "a,ctl",
    ]);
    let da = daemon(&ca);
    let d1 = daemon(&cc1);
    let start = cluster_primary(&etcd);
    primary_reaches(&etcd, start + 2, &[&da, &d1]);

    // The original stops; a clone of its disk under its name starts first and takes it; the
    // original, started again, is refused and applies nothing.
    d1.stop();
    copy_dir(&c1, &c2);
    let d2 = daemon(&cc2);
    assert!(d2.wait_log("in step", secs(15)), "{}", d2.log());
    let d1 = daemon(&cc1);
    assert!(
        d1.wait_log("held by another live daemon", secs(15)),
        "{}",
        d1.log()
    );
    let held = cluster_primary(&etcd);
    let tokens = tokens_for(&a, secs(10));
    let failed = unpack_failures(&c1, &tokens);
    let leader_says = |cfg: &Path| {
        let s = status(cfg);
        s.code == 2
            && s.stdout.contains("duplicate-node")
            && s.stdout.contains("promotions and purges held")
            && s.stdout.contains(&format!("pid {}", d1.pid()))
            && s.stdout.contains(&format!("pid {}", d2.pid()))
    };
    let critical = da.wait_for(secs(10), || leader_says(&ca) || leader_says(&cc2));
    assert!(
        failed.is_empty(),
        "{} of {} tokens fail on the refused original; keys {:?}\n{}\n---\n{}",
        failed.len(),
        tokens.len(),
        numbers(&c1),
        da.log(),
        d2.log()
    );
    // The staged key the original holds may be promoted once; nothing after it.
    assert!(cluster_primary(&etcd) <= held + 1, "{}", da.log());
    assert!(
        critical,
        "{}\n---\n{}",
        status(&ca).stdout,
        status(&cc2).stdout
    );

    // The original stops for good: the gate opens again, the warning goes.
    d1.stop();
    primary_reaches(&etcd, cluster_primary(&etcd) + 2, &[&da, &d2]);
    assert!(
        da.wait_for(secs(15), || !status(&ca)
            .stdout
            .contains("promotions and purges held")),
        "{}",
        status(&ca).stdout
    );
}

/// Fails against the code before (its refusal said "last held by another daemon (... pid ...)",
/// the pid being this node's own previous daemon, with nothing about what the operator knows):
/// a node rebuilt under its name with an empty repository is refused until `remove-node`, and
/// says so; then it takes the name and the cluster's keys.
#[test]
fn a_node_rebuilt_under_its_name_is_told_to_remove_it_first_then_joins() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let ca = node(t.path(), &etcd, "a", &a, "a");
    let cb = node(t.path(), &etcd, "b", &b, "b");
    init(&ca, &a);
    let da = daemon(&ca);
    let db = daemon(&cb);
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 2, &[&da, &db]);

    // The disk is lost: the node comes back with an empty repository under its name.
    db.stop();
    std::fs::remove_dir_all(&b).unwrap();
    let db = daemon(&cb);
    assert!(db.wait_log("is not running now", secs(15)), "{}", db.log());
    let said = db.log();
    assert!(
        said.contains("`fernetd cluster remove-node b` first") && said.contains("its own"),
        "{said}"
    );
    assert!(!said.contains("in step"), "{said}");
    remove_node(&ca, "b");
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 2, &[&da, &db]);
    let tokens = tokens_for(&a, secs(1));
    assert!(unpack_failures(&b, &tokens).is_empty());
    assert_eq!(members(&etcd), vec!["a".to_string(), "b".to_string()]);
}

/// The claim token is not readable from etcd: `names/NODE` holds its SHA-256, not the token,
/// so a reader of etcd who writes what it read into a new disk's `.fernetd/node.json` does not
/// take the name of a stopped node (its Keystone still serving). On the code before, the record
/// held the token in the clear and that disk took the name.
#[test]
fn a_claim_token_read_from_etcd_does_not_take_the_name() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (b, x) = (t.path().join("b"), t.path().join("x"));
    fernetd_ok(&["setup", "--key-repository", b.to_str().unwrap()]);
    let cb = node(t.path(), &etcd, "b", &b, "b");
    init(&cb, &b);
    let db = daemon(&cb);
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    db.stop();
    let local = std::fs::read_to_string(b.join(".fernetd/node.json")).unwrap();
    let record: serde_json::Value = etcd.with_client(async |c| {
        let r = c.get("/test/tokens/names/b", None).await.unwrap();
        serde_json::from_slice(r.kvs()[0].value()).unwrap()
    });
    let local: serde_json::Value = serde_json::from_str(&local).unwrap();
    let held = local["tokens"][0].as_str().unwrap().to_string();
    assert!(!record.to_string().contains(&held), "{record}");
    // What a reader of etcd can present: the record's token field, whichever it is.
    let read = record
        .get("token")
        .or_else(|| record.get("token_sha256"))
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    fernetd_ok(&["setup", "--key-repository", x.to_str().unwrap()]);
    let presented = serde_json::json!({ "node": "b", "tokens": [read] });
    std::fs::write(x.join(".fernetd/node.json"), presented.to_string()).unwrap();
    let dx = daemon(&node(t.path(), &etcd, "x", &x, "b"));
    let refused = dx.wait_log("is not running now", secs(15));
    let log = dx.log();
    dx.stop();
    assert!(
        refused,
        "a disk holding what etcd says took the name:\n{log}"
    );
    assert!(!log.contains("in step"), "{log}");
}

/// A member's claim record deleted in etcd (a hostile or careless writer) while its daemon is
/// stopped, its Keystone serving: a repository that never held the name does not take it, as
/// the sealed key set lists the name as a member that has acknowledged. On the code before,
/// with `names/b` gone the fresh disk claimed `b`, acknowledged for it and rotations went on
/// past the stopped original. `remove-node b` is still the way in.
#[test]
fn a_member_whose_claim_was_deleted_is_not_taken_by_another_repository() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b, x) = (t.path().join("a"), t.path().join("b"), t.path().join("x"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let ca = node(t.path(), &etcd, "a", &a, "a");
    let cb = node(t.path(), &etcd, "b", &b, "b");
    init(&ca, &a);
    let da = daemon(&ca);
    let db = daemon(&cb);
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    // Two rotations after b's first acknowledgement: the set lists b as a member.
    let p = cluster_primary(&etcd);
    primary_reaches(&etcd, p + 2, &[&da, &db]);
    db.stop();
    etcd.with_client(async |c| {
        c.delete("/test/tokens/names/b", None).await.unwrap();
    });
    etcd.with_client(async |c| {
        let r = c.get("/test/tokens/keyset", None).await.unwrap();
        let set = KeySet::decode(r.kvs()[0].value()).unwrap();
        let members = set.history.lineage.map(|l| l.members).unwrap_or_default();
        assert!(members.get("b").is_some_and(|m| !m.expected), "{members:?}");
    });
    // A new disk (no repository yet), as a clone from a template or a rebuilt VM gets it.
    let cx = node(t.path(), &etcd, "x", &x, "b");
    let dx = daemon(&cx);
    let refused = dx.wait_log("no claim for it is in etcd", secs(15));
    let p = cluster_primary(&etcd);
    std::thread::sleep(secs(6));
    let log = dx.log();
    assert!(refused, "a fresh disk took a member's name:\n{log}");
    assert!(!log.contains("in step"), "{log}");
    // The gate still waits for b (its record holds what b's disk holds), so nothing rotated.
    assert!(cluster_primary(&etcd) <= p + 1, "{}", da.log());
    remove_node(&ca, "b");
    assert!(dx.wait_log("in step", secs(20)), "{}", dx.log());
}

/// Reduced from `scripts/chaos` (issue 25): with `remove-node` and `rename-node` in the in-suite
/// set, seed 25 lost a token made on node1 after its rename. A node renamed by the runbook has
/// its daemon stopped while its Keystone serves: the rename waits out the stopped daemon's
/// lease, and the daemon started under the new name may be cut off a moment more (the run's
/// partition). Meanwhile a rotation promotes the staged key the node acknowledged and records
/// the old primary's demotion at that commit, while the node's Keystone keeps making tokens
/// with it until the renamed daemon applies the set. Rotations right after (`fernetd rotate`,
/// a class of the run) purged it by the commit's date: tokens the node made a moment before
/// failed everywhere. Tokens of 4 s, margin 1 s (a 5 s retention), rotations by hand only;
/// the node away 10 s.
///
/// Fails against the code before (a token b made just before b2 applied the set fails on a
/// and b inside its 4 s); passes with the old primary's retention counted from the members'
/// acknowledgements of the set that demoted it.
#[test]
fn a_renamed_nodes_tokens_outlive_the_time_its_daemon_was_away() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let short = |file: &str, repo: &Path, name: &str| {
        let p = t.path().join(format!("{file}.toml"));
        std::fs::write(
            &p,
            format!(
                "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
                 [tokens]\nkey_repository = \"{}\"\nschedule = \"1h\"\nexpiration = \"4s\"\n\
                 allow_expired_window = 0\nmargin = \"1s\"\n\
                 [cluster]\nendpoints = [\"{}\"]\nprefix = \"/test\"\nnode = \"{name}\"\n\
                 lease_ttl = \"2s\"\ndial_timeout = \"2s\"\nrequest_timeout = \"2s\"\n{}",
                repo.display(),
                etcd.endpoint,
                cluster_lines("")
            ),
        )
        .unwrap();
        p
    };
    let ca = short("a", &a, "a");
    init(&ca, &a);
    let da = daemon(&ca);
    let db = daemon(&short("b", &b, "b"));
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    // One rotation by hand, once the gate lets it (every member holds the staged key).
    let rotate = |logs: &[&Daemon]| {
        let end = Instant::now() + secs(15);
        loop {
            let out = fernetd(&["--config", ca.to_str().unwrap(), "rotate"]);
            if out.code == 0 {
                return;
            }
            let logs: Vec<String> = logs.iter().map(|d| d.log()).collect();
            assert!(
                Instant::now() < end,
                "{}\n{}",
                out.stderr,
                logs.join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    rotate(&[&da, &db]);
    rotate(&[&da, &db]);

    // b's Keystone makes tokens from here to the end (in a thread), each checked on a and b
    // while it is valid (3.5 s of its 4 s).
    let made: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Default::default();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let maker = {
        let (made, done, b) = (made.clone(), done.clone(), b.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // Keystone's formatter packs at the end of the helper: its time is at most now.
                let tok = pack(&b);
                made.lock().unwrap().push((Instant::now(), tok));
            }
        })
    };
    let check = |dirs: &[&PathBuf]| {
        let live: Vec<(Duration, String)> = made
            .lock()
            .unwrap()
            .iter()
            .map(|(at, tok)| (at.elapsed(), tok.clone()))
            .filter(|(age, _)| *age < Duration::from_millis(3500))
            .collect();
        let tokens: Vec<String> = live.iter().map(|(_, tok)| tok.clone()).collect();
        for dir in dirs {
            let failed = unpack_failures(dir, &tokens);
            let why: Vec<String> = failed
                .iter()
                .map(|line| {
                    let i: usize = line.split(' ').next().unwrap().parse().unwrap();
                    let r = dir.to_str().unwrap();
                    let said = fernetd(&["token", "--key-repository", r, &tokens[i]]);
                    format!("{line}, {:?} old when unpacked: {}", live[i].0, said.stdout)
                })
                .collect();
            if !failed.is_empty() {
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            assert!(
                failed.is_empty(),
                "{} of {} live tokens made on b fail on {}: {}",
                failed.len(),
                tokens.len(),
                dir.display(),
                why.join("; ")
            );
        }
    };

    // The runbook's rename: the daemon stopped, `cluster rename-node` (it waits out the
    // stopped daemon's lease), a rotation meanwhile (the staged key b holds is promoted), the
    // daemon started under the new name 10 s after it stopped.
    db.stop();
    let stopped = Instant::now();
    fernetd_ok(&[
        "--config",
        ca.to_str().unwrap(),
        "cluster",
        "rename-node",
        "b",
        "b2",
    ]);
    rotate(&[&da]);
    std::thread::sleep(secs(10).saturating_sub(stopped.elapsed()));
    let db = daemon(&short("b2", &b, "b2"));
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    // A rotation as soon as the gate lets it (in a thread), b's tokens checked meanwhile and
    // for 4 s after.
    std::thread::scope(|s| {
        let r = s.spawn(|| rotate(&[]));
        while !r.is_finished() {
            check(&[&a]);
        }
        let end = Instant::now() + secs(4);
        while Instant::now() < end {
            check(&[&a]);
        }
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    maker.join().unwrap();
    check(&[&a, &b]);
}

/// The names the (unsealed) key set in etcd lists as its members.
fn set_members(etcd: &Etcd) -> Vec<String> {
    etcd.with_client(async |c| {
        let r = c.get("/test/tokens/keyset", None).await.unwrap();
        let set = KeySet::decode(r.kvs()[0].value()).unwrap();
        set.history.lineage.unwrap().members.into_keys().collect()
    })
}

/// scripts/chaos, seed 15 (default mix): `cluster rename-node n1r1 n1r2`, then etcd restored
/// from a backup taken just before it, no rotation between. A rename kept the set's
/// generation, so every node took the restored set for the one it held ("in step"), nobody
/// wrote it back, and the old name came back as a member no daemon runs as: the promotion
/// gate held every rotation for good ("node n1r1 has not applied the staged key"). A rename
/// is a generation of its own: a node that applied it holds a newer set than the backup's and
/// writes it back. The backup also brings back the old name's acknowledgement record, which
/// held the gate and rejoined the members at the next rotation until the set recorded the
/// name as departed. Hourly rotations here, so that none comes between.
#[test]
fn an_etcd_backup_from_before_a_rename_does_not_bring_the_old_name_back() {
    through_a_restored_member_edit(&["rename-node", "b", "b2"], &["a", "b2"], Some("b2"));
}

/// `cluster remove-node b`, then etcd restored from a backup taken just before it: b's
/// acknowledgement record comes back with it (remove-node had deleted it), and held the
/// promotion gate ("node b has not applied the staged key") and rejoined the members at the
/// next rotation, although no daemon runs as b.
#[test]
fn an_etcd_backup_from_before_a_removal_does_not_bring_the_node_back() {
    through_a_restored_member_edit(&["remove-node", "b"], &["a"], None);
}

/// Nodes a and b in step, an etcd backup, b stopped, `cluster EDIT` run and a rotation, then
/// the backup restored (and the daemon `then` started, b's repository under its new name): the members
/// come back to `after`, a rotation passes the gate, and it leaves the members `after`.
fn through_a_restored_member_edit(edit: &[&str], after: &[&str], then: Option<&str>) {
    let mut etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let hourly =
        |file: &str, repo: &Path, name: &str| hourly_node(t.path(), &etcd, file, repo, name);
    let (ca, cb) = (hourly("a", &a, "a"), hourly("b", &b, "b"));
    let (cfg, repo) = (ca.to_str().unwrap(), a.to_str().unwrap());
    fernetd_ok(&[
        "--config",
        cfg,
        "cluster",
        "init",
        "--from",
        repo,
        "--members",
        "a,b",
    ]);
    let da = daemon(&ca);
    let db = daemon(&cb);
    for d in [&da, &db] {
        assert!(d.wait_log("in step", secs(15)), "{}", d.log());
    }
    let backup = t.path().join("backup.db");
    etcd.snapshot_save(&backup);
    db.stop();
    fernetd_ok(&[&["--config", cfg, "cluster"], edit].concat());
    assert_eq!(set_members(&etcd), after);
    let renamed = then.map(|name| hourly(name, &b, name));
    // A rotation since: the backup's record of b holds a staged key the set no longer has.
    fernetd_ok(&["--config", cfg, "rotate"]);
    // a applies the edited set (its history says so), then the backup comes back.
    std::thread::sleep(secs(2));
    etcd.restore(&backup);
    let db = renamed.as_deref().map(daemon);
    let logs = |db: &Option<Daemon>| {
        format!(
            "{}\n---\n{}",
            da.log(),
            db.as_ref().map(Daemon::log).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + secs(15);
    while set_members(&etcd) != after {
        assert!(
            Instant::now() < deadline,
            "the backup's members stayed: {:?}\n{}",
            set_members(&etcd),
            logs(&db)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    if let Some(db) = &db {
        assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    }
    // The old name's restored acknowledgement neither holds the gate nor joins.
    let rotated = fernetd(&["--config", cfg, "rotate"]);
    assert_eq!(rotated.code, 0, "{}\n{}", rotated.stderr, logs(&db));
    assert_eq!(set_members(&etcd), after, "{}", logs(&db));
}

/// `cluster remove-node b` while b's daemon still runs, b's clock 5 s behind the host that
/// removed it, unsealed: b re-acknowledges at once (the removal is a new set), and that word
/// must count. Judged against the remover's clock, b's record was taken for a restored
/// backup's and ignored: once b stopped, rotations promoted keys its disk lacked, and no
/// one said so (a hostile re-test of the departed names).
#[test]
fn a_removed_node_still_running_behind_the_removers_clock_still_holds_the_gate() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let hourly =
        |file: &str, repo: &Path, name: &str| hourly_node(t.path(), &etcd, file, repo, name);
    let (ca, cb) = (hourly("a", &a, "a"), hourly("b", &b, "b"));
    let cfg = ca.to_str().unwrap();
    fernetd_ok(&[
        "--config",
        cfg,
        "cluster",
        "init",
        "--from",
        a.to_str().unwrap(),
        "--members",
        "a,b",
    ]);
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "libfaketime is required (Debian's faketime; scripts/deps installs it)"
    );
    let da = daemon(&ca);
    let db = Daemon::start(
        &["--config", cb.to_str().unwrap(), "daemon"],
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME", "-5s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_DONT_RESET", "1"),
        ],
    );
    for d in [&da, &db] {
        assert!(d.wait_log("in step", secs(15)), "{}", d.log());
    }
    let ack = |node: &str| {
        let key = format!("/test/tokens/acks/{node}");
        etcd.with_client(async |c| {
            let r = c.get(key, None).await.unwrap();
            r.kvs().first().map(|kv| kv.mod_revision())
        })
    };
    let before = ack("b").unwrap().max(ack("a").unwrap());
    fernetd_ok(&["--config", cfg, "cluster", "remove-node", "b"]);
    // Both apply the removal's set and acknowledge it: b writes a new record.
    let deadline = Instant::now() + secs(15);
    while ["a", "b"]
        .iter()
        .any(|n| ack(n).is_none_or(|r| r <= before))
    {
        assert!(
            Instant::now() < deadline,
            "no new acknowledgements\n{}\n---\n{}",
            da.log(),
            db.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    db.stop();
    // The first promotion is of the key b acknowledged; the second waits for b.
    fernetd_ok(&["--config", cfg, "rotate"]);
    // a applies it (so that only b is waited on).
    let rotated = etcd.with_client(async |c| {
        let r = c.get("/test/tokens/keyset", None).await.unwrap();
        r.kvs()[0].mod_revision()
    });
    let deadline = Instant::now() + secs(15);
    while ack("a").is_none_or(|r| r <= rotated) {
        assert!(Instant::now() < deadline, "a did not apply\n{}", da.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let held = fernetd(&["--config", cfg, "rotate"]);
    assert_eq!(held.code, 2, "{}\n{}", held.stderr, da.log());
    assert!(
        held.stderr.contains("node b has not yet applied"),
        "{}",
        held.stderr
    );
}

/// scripts/chaos, seed 15 (on 0348b10's parent): another cluster's set written over the
/// cluster's, and the remedy, left a set that listed no members (the leader lists a node at
/// its next rotation). `rename-node` of a node the set did not list moved its records but
/// recorded no departure; etcd restored from a backup from before brought the old name's
/// acknowledgement back, and it held the promotion gate for good. A name a removal or a
/// rename takes away departs whether the set lists it or not.
#[test]
fn a_renamed_node_the_set_did_not_list_departs_too() {
    let mut etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let hourly =
        |file: &str, repo: &Path, name: &str| hourly_node(t.path(), &etcd, file, repo, name);
    let (ca, cb, cb2) = (
        hourly("a", &a, "a"),
        hourly("b", &b, "b"),
        hourly("b2", &b, "b2"),
    );
    let cfg = ca.to_str().unwrap();
    fernetd_ok(&[
        "--config",
        cfg,
        "cluster",
        "init",
        "--from",
        a.to_str().unwrap(),
    ]);
    let da = daemon(&ca);
    let db = daemon(&cb);
    for d in [&da, &db] {
        assert!(d.wait_log("in step", secs(15)), "{}", d.log());
    }
    assert!(set_members(&etcd).is_empty(), "{:?}", set_members(&etcd));
    let backup = t.path().join("backup.db");
    etcd.snapshot_save(&backup);
    db.stop();
    fernetd_ok(&["--config", cfg, "cluster", "rename-node", "b", "b2"]);
    let lineage = |etcd: &Etcd| {
        etcd.with_client(async |c| {
            let r = c.get("/test/tokens/keyset", None).await.unwrap();
            let set = KeySet::decode(r.kvs()[0].value()).unwrap();
            set.history.lineage.unwrap()
        })
    };
    assert!(
        lineage(&etcd).departed.contains_key("b"),
        "the rename recorded no departure of b"
    );
    let db = daemon(&cb2);
    assert!(db.wait_log("in step", secs(15)), "{}", db.log());
    // A rotation since: the backup's record of b holds a staged key the set no longer has.
    fernetd_ok(&["--config", cfg, "rotate"]);
    let newest = lineage(&etcd).generation;
    std::thread::sleep(secs(2));
    etcd.restore(&backup);
    // The nodes write their newer set back over the backup's.
    let deadline = Instant::now() + secs(15);
    while lineage(&etcd).generation < newest {
        assert!(
            Instant::now() < deadline,
            "the backup's set stayed\n{}\n---\n{}",
            da.log(),
            db.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let rotated = fernetd(&["--config", cfg, "rotate"]);
    assert_eq!(rotated.code, 0, "{}\n{}", rotated.stderr, da.log());
    assert!(
        !set_members(&etcd).contains(&"b".to_string()),
        "{:?}",
        set_members(&etcd)
    );
}
