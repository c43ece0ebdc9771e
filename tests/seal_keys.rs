//! Changing the seal key of a running cluster, through the real binary, three real daemons and
//! a real etcd on loopback, with Keystone's TokenFormatter making tokens on every node all along
//! and every token checked on every other node: the README's procedure step by step (the new
//! key second everywhere, moved first, `cluster seal`, the old one dropped), and the wrong order
//! (a node that never got the new key while the others drop the old one): loud, critical,
//! naming the seal key it lacks, the promotion gate held and no key lost.

mod common;
use common::etcd::Etcd;
use common::keystone::unpack_failures;
use common::*;
use nix::sys::signal::Signal;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const KEYSET: &str = "/rot/tokens/keyset";

/// A node's configuration under `dir`: its repository `dir/{node}`, rotations every 2 s,
/// tokens that live a minute (nothing is purged while the test runs), and `seal` in
/// `[cluster]`.
fn write_config(dir: &Path, endpoint: &str, node: &str, seal: &str) -> PathBuf {
    let p = dir.join(format!("{node}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [tokens]\nkey_repository = \"{}\"\nschedule = \"2s\"\nexpiration = \"60s\"\n\
             allow_expired_window = 0\nmargin = 0\n\
             [cluster]\nendpoints = [\"{endpoint}\"]\nprefix = \"/rot\"\nnode = \"{node}\"\n\
             lease_ttl = \"2s\"\ndial_timeout = \"5s\"\nrequest_timeout = \"5s\"\n{seal}",
            dir.join(node).display()
        ),
    )
    .unwrap();
    p
}

fn files(keys: &[&Path]) -> String {
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", k.display()))
        .collect();
    format!("seal_key_files = [{}]\n", list.join(", "))
}

/// What etcd holds under `key`.
fn raw(etcd: &Etcd, key: &str) -> Vec<u8> {
    let key = key.to_string();
    etcd.with_client(async move |c| {
        c.get(key, None)
            .await
            .unwrap()
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or_default()
    })
}

/// The seal key id a stored v2 value names (16 hex digits), or None for any other value.
fn named_id(value: &[u8]) -> Option<String> {
    let rest = value.strip_prefix(fernetd::seal::MAGIC_V2)?;
    Some(rest.get(..8)?.iter().map(|b| format!("{b:02x}")).collect())
}

fn id_of(path: &Path) -> String {
    fernetd::seal::SealKey::load(path, None)
        .unwrap()
        .id()
        .to_string()
}

fn run(cfg: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    fernetd(&all)
}

/// Tokens Keystone's TokenFormatter packs on each node, with the node and when.
type Made = Arc<Mutex<Vec<(usize, Instant, String)>>>;

/// Both repositories hold the same keys (and at least two).
fn same(a: &Path, b: &Path) -> bool {
    let (x, y) = (keys(a), keys(b));
    x == y && x.len() >= 2
}

struct Cluster {
    etcd: Etcd,
    configs: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    daemons: Vec<Daemon>,
    made: Made,
    packers: Vec<std::process::Child>,
    checked: usize,
}

impl Cluster {
    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Node `i`'s `[cluster]` seal lines become `seal`, and it reloads.
    fn reload(&self, i: usize, seal: &str) {
        let text = std::fs::read_to_string(&self.configs[i]).unwrap();
        let base = text.split("request_timeout = \"5s\"\n").next().unwrap();
        std::fs::write(
            &self.configs[i],
            format!("{base}request_timeout = \"5s\"\n{seal}"),
        )
        .unwrap();
        let d = &self.daemons[i];
        let before = d.log().matches("configuration reloaded").count();
        d.signal(Signal::SIGHUP);
        assert!(
            d.wait_for(secs(20), || d
                .log()
                .matches("configuration reloaded")
                .count()
                > before),
            "{}",
            d.log()
        );
        std::thread::sleep(secs(1));
    }

    fn reload_all(&self, seal: &str) {
        for i in 0..self.daemons.len() {
            self.reload(i, seal);
        }
    }

    /// Every node's highest key moves on by two rotations and all hold the same keys.
    fn rotations_continue(&self, step: &str) {
        let at: Vec<u64> = self
            .dirs
            .iter()
            .map(|d| numbers(d).last().copied().unwrap_or(0))
            .collect();
        assert!(
            self.daemons[0].wait_for(secs(40), || {
                self.dirs
                    .iter()
                    .zip(&at)
                    .all(|(d, n)| numbers(d).last().copied().unwrap_or(0) >= n + 2)
                    && self.dirs[1..].iter().all(|d| same(&self.dirs[0], d))
            }),
            "{step}: no rotation:\n{}",
            self.logs()
        );
    }

    /// Every token packed in the last 30 s on any node unpacks with every node's keys by
    /// Keystone's own code. (Tokens live 60 s and a key stays 60 s after its demotion; the
    /// margin covers the checks themselves, a Python start each, slow on a loaded machine.)
    /// Returns how many tokens were checked.
    fn every_token_validates(&mut self, step: &str) -> usize {
        let tokens: Vec<(usize, String)> = self
            .made
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at, _)| at.elapsed() < secs(30))
            .map(|(i, _, t)| (*i, t.clone()))
            .collect();
        let by_node: Vec<usize> = (0..3)
            .map(|i| tokens.iter().filter(|(n, _)| *n == i).count())
            .collect();
        assert!(
            by_node.iter().all(|n| *n > 0),
            "{step}: tokens by node {by_node:?}"
        );
        let all: Vec<String> = tokens.iter().map(|(_, t)| t.clone()).collect();
        for (j, dir) in self.dirs.iter().enumerate() {
            let failed = unpack_failures(dir, &all);
            assert!(
                failed.is_empty(),
                "{step}: {} of {} tokens fail on node {j} (made on nodes {:?})\n{}",
                failed.len(),
                all.len(),
                failed
                    .iter()
                    .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
                    .map(|i| tokens[i].0)
                    .collect::<Vec<_>>(),
                self.logs()
            );
        }
        self.checked += all.len() * self.dirs.len();
        all.len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.packers {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Keystone's TokenFormatter on node `i`'s repository, a token a second, into `made`.
fn packer(i: usize, dir: &Path, made: &Made) -> std::process::Child {
    let mut child = std::process::Command::new(common::keystone::venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"))
        .args(["pack-loop", dir.to_str().unwrap(), "600", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let made = made.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if !line.trim().is_empty() {
                made.lock()
                    .unwrap()
                    .push((i, Instant::now(), line.trim().to_string()));
            }
        }
    });
    child
}

/// The README's procedure ("Changing the seal key") on a running three-node cluster that
/// started with the single `seal_key_file`, and the wrong order on the way.
#[test]
fn a_running_cluster_changes_its_seal_key_and_every_token_keeps_validating() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old.key"), t.path().join("new.key"));
    new_seal_key(&old);
    new_seal_key(&new);
    let (old_id, new_id) = (id_of(&old), id_of(&new));
    let single = format!("seal_key_file = \"{}\"\n", old.display());
    let configs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| write_config(t.path(), &etcd.endpoint, n, &single))
        .collect();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| t.path().join(n)).collect();
    fernetd_ok(&["--config", configs[0].to_str().unwrap(), "cluster", "init"]);
    let daemons: Vec<Daemon> = configs
        .iter()
        .map(|c| Daemon::start(&["--config", c.to_str().unwrap(), "daemon"], &[]))
        .collect();
    for d in &daemons {
        assert!(d.wait_log("ready", secs(30)), "{}", d.log());
    }
    let made: Made = Arc::default();
    let packers = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| packer(i, d, &made))
        .collect();
    let mut c = Cluster {
        etcd,
        configs,
        dirs,
        daemons,
        made,
        packers,
        checked: 0,
    };
    assert!(
        c.daemons[0].wait_for(secs(60), || {
            let made = c.made.lock().unwrap();
            (0..3).all(|i| made.iter().any(|(n, _, _)| *n == i))
        }),
        "Keystone's TokenFormatter made no token on some node"
    );
    // The old field writes the old format, byte for byte as before.
    c.rotations_continue("start");
    assert!(raw(&c.etcd, KEYSET).starts_with(fernetd::seal::MAGIC));
    c.every_token_validates("start");

    // 1. The new key second, everywhere: values still sealed with the old key, now naming it.
    c.reload_all(&files(&[&old, &new]));
    c.rotations_continue("new key second");
    assert_eq!(
        named_id(&raw(&c.etcd, KEYSET)).as_deref(),
        Some(&*old_id),
        "{}",
        c.logs()
    );
    let out = run(&c.configs[2], &["status"]);
    assert!(
        out.stdout.contains(&format!(
            "sealed with seal key {old_id} (seal_key_files entry 1"
        )),
        "{}",
        out.stdout
    );
    c.every_token_validates("new key second");

    // 1b. `cluster seal` with a key no member holds (a third one, listed first in the
    //     operator's own configuration only): refused in one line naming every member, the
    //     set left sealed as it was. On the code before, it re-sealed the set with it and
    //     every node refused the set.
    let third = t.path().join("third.key");
    new_seal_key(&third);
    let op = write_config(
        t.path(),
        &c.etcd.endpoint,
        "operator",
        &files(&[&third, &old, &new]),
    );
    let out = run(&op, &["cluster", "seal"]);
    let said = format!(
        "not sealing it with seal key {}: a, b, c not said to hold it",
        id_of(&third)
    );
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&said), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(
        named_id(&raw(&c.etcd, KEYSET)).as_deref(),
        Some(&*old_id),
        "{}",
        c.logs()
    );

    // 2. The new key first, everywhere: the leader seals with it from its next rotation; a
    //    node not reloaded yet opens it all the same (it holds both).
    c.reload_all(&files(&[&new, &old]));
    // 3. Re-sealed in place (or by a rotation already): sealed with the new key.
    let out = run(&c.configs[1], &["cluster", "seal"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("sealed again with seal key {new_id} at revision"))
            || out
                .stdout
                .contains(&format!("already sealed with seal key {new_id}")),
        "{}",
        out.stdout
    );
    assert_eq!(named_id(&raw(&c.etcd, KEYSET)).as_deref(), Some(&*new_id));
    let out = run(&c.configs[0], &["cluster", "seal"]);
    assert!(
        out.stdout
            .contains(&format!("already sealed with seal key {new_id}")),
        "{}",
        out.stdout
    );
    c.rotations_continue("new key first");
    assert_eq!(named_id(&raw(&c.etcd, KEYSET)).as_deref(), Some(&*new_id));
    c.every_token_validates("new key first");

    // 4. The wrong order: a and b drop the old key while c never got the new one. c cannot
    //    open the set: critical, naming the key it lacks; it acknowledges nothing, so the gate
    //    holds every promotion and no node loses or misses a key.
    c.reload(0, &files(&[&new]));
    c.reload(1, &files(&[&new]));
    let before = snapshot(&c.dirs[2]);
    c.reload(2, &files(&[&old]));
    let lacks = format!("sealed with seal key {new_id}, which this node does not hold");
    assert!(
        c.daemons[2].wait_for(secs(20), || c.daemons[2]
            .metrics()
            .contains("code=\"input-refused\",severity=\"critical\"")),
        "{}",
        c.daemons[2].log()
    );
    assert!(
        c.daemons[2].log().contains(&lacks),
        "{}",
        c.daemons[2].log()
    );
    let out = run(&c.configs[2], &["status"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("[input-refused]") && out.stdout.contains(&lacks),
        "{}",
        out.stdout
    );
    std::thread::sleep(secs(6));
    let after = snapshot(&c.dirs[2]);
    for (name, content) in before.iter().filter(|(n, _)| n.parse::<u64>().is_ok()) {
        assert_eq!(after.get(name), Some(content), "key {name} changed on c");
    }
    c.every_token_validates("wrong order");
    // Given the new key, c takes the set again and rotations go on.
    c.reload(2, &files(&[&new]));
    c.rotations_continue("old key dropped");
    for cfg in &c.configs {
        // Purges held while c could not answer the leader's clock probes (its answers did not
        // verify under the new key, then its session restarted: "no clock reading from c")
        // stay held until the window of the tokens c may have made meanwhile closes (60 s
        // here), a WARNING; then OK.
        c.daemons[0].wait_for(secs(90), || run(cfg, &["status"]).code == 0);
        let out = run(cfg, &["status"]);
        assert_eq!(out.code, 0, "{}", out.stdout);
        assert!(
            out.stdout.contains(&format!(
                "sealed with seal key {new_id} (seal_key_files entry 1"
            )),
            "{}",
            out.stdout
        );
    }
    // No trace of the old key's id in what etcd holds now, nor of any key's material in any
    // output.
    assert_eq!(named_id(&raw(&c.etcd, KEYSET)).as_deref(), Some(&*new_id));
    let n = c.every_token_validates("old key dropped");
    for k in [&old, &new] {
        let text = std::fs::read_to_string(k).unwrap();
        assert!(!c.logs().contains(text.trim()));
    }
    eprintln!(
        "seal key change: {n} live tokens at the end, {} token checks, zero failures",
        c.checked
    );
}
