//! Adopting a running Keystone cluster, end to end: three real Keystone API servers from PyPI
//! (gunicorn serving `keystone.server.wsgi`, one shared SQLite database, one key repository
//! each) whose keys `keystone-manage` made and a cron + rsync script kept in step, moved to
//! fernetd's cluster mode by the steps of `docs/migration.md`, then used as a cloud uses them
//! through a minute and a half of fast rotations.

mod common;
use common::etcd::{free_port, Etcd};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Short lifetimes so that keys are promoted and purged while tokens are in use.
const EXPIRATION: u64 = 20;
const WINDOW: u64 = 30;
const TRAFFIC_SECONDS: u64 = 90;
const PASSWORD: &str = "adoption-test";

struct Node {
    name: &'static str,
    dir: PathBuf,
    port: u16,
}

impl Node {
    fn conf(&self) -> PathBuf {
        self.dir.join("keystone.conf")
    }
    fn tokens(&self) -> PathBuf {
        self.dir.join("fernet-keys")
    }
    fn receipts(&self) -> PathBuf {
        self.dir.join("fernet-receipt-keys")
    }
    fn fernetd_toml(&self) -> String {
        self.dir.join("fernetd.toml").display().to_string()
    }
}

/// The Keystone API servers; killed when the test ends, however it ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn venv_bin(name: &str) -> PathBuf {
    let bin = common::keystone::venv().join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing (.venv/bin/pip install gunicorn; the README's test command does this)",
        bin.display()
    );
    bin
}

fn keystone_manage(node: &Node, args: &[&str]) {
    let out = Command::new(venv_bin("keystone-manage"))
        .arg("--config-file")
        .arg(node.conf())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keystone-manage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn traffic(args: &[&str]) -> std::process::Output {
    Command::new(common::keystone::venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/traffic.py"))
        .args(args)
        .env("OS_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

/// `fernetd check`'s digest of a repository: equal on two nodes exactly when they hold the
/// same keys under the same numbers.
fn digest(node: &Node, repo: &Path) -> String {
    let out = fernetd(&[
        "--config",
        &node.fernetd_toml(),
        "check",
        "--key-repository",
        repo.to_str().unwrap(),
    ]);
    out.stdout
        .rsplit("digest ")
        .next()
        .and_then(|d| d.split(')').next())
        .unwrap_or_else(|| panic!("no digest in `fernetd check`: {}{}", out.stdout, out.stderr))
        .to_string()
}

/// Every node's digest of one kind's repository, once they agree (a rotation lands on every
/// node within milliseconds; a reading may fall between).
fn agreed(nodes: &[Node], repo: impl Fn(&Node) -> PathBuf) -> Option<String> {
    for _ in 0..50 {
        let d: Vec<String> = nodes.iter().map(|n| digest(n, &repo(n))).collect();
        if d.iter().all(|x| *x == d[0]) {
            return Some(d[0].clone());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn logs(daemons: &[Daemon]) -> String {
    daemons
        .iter()
        .map(|d| format!("--- daemon\n{}", d.log()))
        .collect()
}

fn keyset(etcd: &Etcd, kind: &str) -> fernetd::core::keyset::KeySet {
    let key = format!("/keystone/{kind}/keyset");
    let raw = etcd.with_client(async |c| c.get(key, None).await.unwrap().kvs()[0].value().to_vec());
    fernetd::core::keyset::KeySet::decode(&raw).unwrap()
}

#[test]
fn a_keystone_manage_cluster_moves_to_fernetd_with_no_token_lost() {
    let venv = common::keystone::venv();
    venv_bin("gunicorn");
    let t = tempfile::tempdir().unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .unwrap()
        .unwrap()
        .name;
    let nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|name| Node {
            name,
            dir: t.path().join(name),
            port: free_port(),
        })
        .collect();
    let db = t.path().join("keystone.db");
    let etcd = Etcd::start();

    // Before: Keystone on three nodes, keys made by keystone-manage on the first and pushed to
    // the others, as kolla-ansible's and openstack-ansible's cron + rsync jobs do.
    for n in &nodes {
        std::fs::create_dir(&n.dir).unwrap();
        std::fs::write(
            n.conf(),
            format!(
                "[DEFAULT]\nlog_file = {log}\n\
                 [database]\nconnection = sqlite:///{db}\n\
                 [token]\nexpiration = {EXPIRATION}\nallow_expired_window = {WINDOW}\ncaching = false\n\
                 [receipt]\nexpiration = {EXPIRATION}\n\
                 [fernet_tokens]\nkey_repository = {tokens}\n\
                 [fernet_receipts]\nkey_repository = {receipts}\n\
                 [cache]\nenabled = false\n\
                 [identity]\npassword_hash_rounds = 4\n",
                log = n.dir.join("keystone.log").display(),
                db = db.display(),
                tokens = n.tokens().display(),
                receipts = n.receipts().display(),
            ),
        )
        .unwrap();
    }
    let first = &nodes[0];
    for dir in [first.tokens(), first.receipts()] {
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
    }
    let owner = ["--keystone-user", &user, "--keystone-group", &group];
    keystone_manage(first, &[&["fernet_setup"][..], &owner].concat());
    // Keystone's bootstrap needs the key repositories in place.
    keystone_manage(first, &["db_sync"]);
    keystone_manage(first, &["bootstrap", "--bootstrap-password", PASSWORD]);
    keystone_manage(first, &[&["fernet_rotate"][..], &owner].concat());
    let push = || {
        for n in &nodes[1..] {
            for (from, to) in [
                (first.tokens(), n.tokens()),
                (first.receipts(), n.receipts()),
            ] {
                let _ = std::fs::remove_dir_all(&to);
                copy_dir(&from, &to);
            }
        }
    };
    push();
    let servers = Servers(
        nodes
            .iter()
            .map(|n| {
                Command::new(venv.join("bin/gunicorn"))
                    .args(["--no-control-socket", "--workers", "1", "--bind"])
                    .arg(format!("127.0.0.1:{}", n.port))
                    .arg("--chdir")
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone"))
                    .arg("--log-file")
                    .arg(n.dir.join("gunicorn.log"))
                    .arg("server:application")
                    .env("OS_KEYSTONE_CONFIG_FILES", n.conf())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let ports: Vec<String> = nodes.iter().map(|n| n.port.to_string()).collect();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let up = traffic(&[&["wait"][..], &ports].concat());
    assert!(
        up.status.success(),
        "{}{}",
        String::from_utf8_lossy(&up.stderr),
        std::fs::read_to_string(first.dir.join("gunicorn.log")).unwrap_or_default()
    );

    // Step 1: fernetd.toml on every node, reading the node's keystone.conf.
    for n in &nodes {
        std::fs::write(
            n.fernetd_toml(),
            format!(
                "[keystone]\nconfig = \"{conf}\"\nuser = \"{user}\"\ngroup = \"{group}\"\n\
                 [tokens]\nschedule = \"*/5 * * * * *\"\nmargin = \"5s\"\n\
                 [receipts]\nschedule = \"*/5 * * * * *\"\nmargin = \"5s\"\n\
                 [cluster]\ninsecure_unsealed = true\nendpoints = [\"{etcd}\"]\nprefix = \"/keystone\"\nnode = \"{name}\"\n\
                 lease_ttl = \"2s\"\ndial_timeout = \"10s\"\n",
                conf = n.conf().display(),
                etcd = etcd.endpoint,
                name = n.name,
            ),
        )
        .unwrap();
    }
    // Step 2: the schedule is proven safe for the lifetimes keystone.conf gives.
    for kind in ["tokens", "receipts"] {
        let plan = fernetd_ok(&["--config", &first.fernetd_toml(), "plan", "--kind", kind]);
        assert!(plan.stdout.contains("retention needed"), "{}", plan.stdout);
    }
    // Step 3 (the cron jobs are disabled) and step 4: every node holds the same keys.
    let tokens_before = agreed(&nodes, Node::tokens).expect("the push left the nodes different");
    agreed(&nodes, Node::receipts).expect("the push left the nodes different");
    // Step 5: the keys of the node that rotated become the cluster's, with every node a member
    // from the start.
    for (kind, repo) in [("tokens", first.tokens()), ("receipts", first.receipts())] {
        let init = fernetd_ok(&[
            "--config",
            &first.fernetd_toml(),
            "cluster",
            "init",
            "--kind",
            kind,
            "--from",
            repo.to_str().unwrap(),
            "--members",
            "a,b,c",
        ]);
        for line in [
            "keys: 0 1 2 (primary 2, staged 0)",
            "first rotation: ",
            "members: a, b, c",
        ] {
            assert!(init.stdout.contains(line), "{line}: {}", init.stdout);
        }
    }
    // Step 6: the daemons, one after another; nothing is promoted before the last has applied
    // the set (and applying it changes no key: the nodes already hold it).
    let mut daemons = Vec::new();
    for n in &nodes {
        let d = Daemon::start(&["--config", &n.fernetd_toml(), "daemon"], &[]);
        assert!(d.wait_log("ready", Duration::from_secs(20)), "{}", d.log());
        assert_eq!(
            keyset(&etcd, "tokens").primary(),
            Some(2),
            "promoted before {} joined",
            n.name
        );
        daemons.push(d);
    }
    assert_eq!(digest(first, &first.tokens()), tokens_before);
    // Step 7: every node in step with the cluster.
    for n in &nodes {
        // A reading may fall between a rotation's commit and its landing on this node.
        let in_sync = (0..5).find_map(|_| {
            let s = fernetd(&["--config", &n.fernetd_toml(), "status"]);
            if s.stdout.contains("this node in sync") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(300));
            None
        });
        assert!(
            in_sync.is_some(),
            "{} is not in sync:\n{}",
            n.name,
            logs(&daemons)
        );
    }

    // A cloud at work: tokens issued round-robin and validated on every node while the keys
    // rotate every 5 s and are purged once no token they encrypted can still be presented.
    let args = [
        "run".to_string(),
        TRAFFIC_SECONDS.to_string(),
        EXPIRATION.to_string(),
        WINDOW.to_string(),
    ];
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(ports.iter().copied())
        .collect();
    let out = traffic(&args);
    let logs = || logs(&daemons);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("traffic: {report}");
    assert_eq!(
        report["unexpected"],
        serde_json::json!([]),
        "answers Keystone should not have given: {report}\n{}",
        logs()
    );
    let count = |k: &str| report["counts"][k].as_u64().unwrap();
    // Enough of each kind of answer that a lost or late key would have shown (floors a loaded
    // 2-core machine still reaches: 28 tokens and 182 valid answers at load 12).
    assert!(count("issued") >= 20, "{report}");
    assert!(count("valid_200") >= 120, "{report}");
    assert!(count("expired_404") >= 50, "{report}");
    assert!(count("window_200") >= 50, "{report}");
    assert!(count("past_404") >= 5, "{report}");

    // Keys were promoted and purged along the way, and every node ends with the same keys.
    let tokens = keyset(&etcd, "tokens");
    let receipts = keyset(&etcd, "receipts");
    assert!(tokens.primary() >= Some(14), "{:?}", tokens.keys.keys());
    assert!(
        !tokens.history.purged.is_empty() && !tokens.keys.contains_key(&1),
        "no token key was purged: {:?}",
        tokens.keys.keys()
    );
    assert!(
        !receipts.history.purged.is_empty(),
        "no receipt key was purged: {:?}",
        receipts.keys.keys()
    );
    assert!(agreed(&nodes, Node::tokens).is_some(), "{}", logs());
    assert!(agreed(&nodes, Node::receipts).is_some(), "{}", logs());
    for d in daemons {
        d.stop();
    }
    drop(servers);
}
