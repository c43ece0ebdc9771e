//! Secure by default in etcd, through the real binary against real etcd members on loopback:
//! an unsealed cluster only by the operator's explicit say-so, seal keys that only their owner
//! can read, what a configuration exposes named by `check-config`, `status` and the daemon, the
//! least-privileged etcd user over TLS with client certificates, and a running cluster moved
//! from unsealed to sealed key sets while tokens made on each node keep decrypting on the
//! others.

mod common;
use common::etcd::{Certs, Etcd};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A node's configuration under `dir`: its repository `dir/{node}`, the cluster at
/// `endpoint` under `prefix`, and `extra` in `[cluster]`. Rotations every 2 s, tokens that live
/// a minute (nothing is purged while a test runs), metrics on loopback.
fn node(dir: &Path, endpoint: &str, prefix: &str, node: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{node}.toml"));
    std::fs::write(
        &p,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [tokens]\nkey_repository = \"{}\"\nschedule = \"2s\"\nexpiration = \"60s\"\n\
             allow_expired_window = 0\nmargin = 0\n\
             [cluster]\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\nnode = \"{node}\"\n\
             lease_ttl = \"2s\"\ndial_timeout = \"5s\"\nrequest_timeout = \"5s\"\n{extra}",
            dir.join(node).display()
        ),
    )
    .unwrap();
    p
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// What etcd holds under `key` (empty when nothing).
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

fn run(cfg: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    fernetd(&all)
}

/// The codes of `fernetd status --json`'s problems, with their levels.
fn problem_codes(cfg: &Path) -> (i32, Vec<(String, String)>) {
    let out = run(cfg, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("status --json: {e}: {} {}", out.stdout, out.stderr);
    });
    let codes = v["repositories"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().to_string(),
                p["level"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (out.code, codes)
}

#[test]
fn an_unsealed_cluster_is_refused_unless_the_operator_opts_in_and_then_said_everywhere() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("a");
    fernetd_ok(&["setup", "--key-repository", repo.to_str().unwrap()]);
    let bare = node(t.path(), &etcd.endpoint, "/sec", "a", "");
    let from = repo.to_str().unwrap();
    for args in [
        &["check-config"][..],
        &["cluster", "init", "--from", from],
        &["sync"],
        &["status"],
        &["daemon"],
    ] {
        let out = run(&bare, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.error_lines(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("[cluster] seal_key_file: required")
                && out.stderr.contains("a.toml")
                && out.stderr.contains("insecure_unsealed = true"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(raw(&etcd, "/sec/tokens/keyset").is_empty(), "init wrote");

    // Opted in: it works, and the choice is a warning wherever health is said.
    let opted = node(
        t.path(),
        &etcd.endpoint,
        "/sec",
        "a",
        "insecure_unsealed = true\n",
    );
    let out = run(&opted, &["check-config"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: [cluster-unsealed]"),
        "{}",
        out.stderr
    );
    let out = run(&opted, &["cluster", "init", "--from", from]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("in the clear"), "{}", out.stderr);
    assert!(!raw(&etcd, "/sec/tokens/keyset").starts_with(b"fernetd-sealed-v1:"));
    let (code, problems) = problem_codes(&opted);
    assert_eq!(
        (code, problems),
        (1, vec![("cluster-unsealed".into(), "warning".into())])
    );
    let d = Daemon::start(&["--config", opted.to_str().unwrap(), "daemon"], &[]);
    assert!(d.wait_log("ready", secs(20)), "{}", d.log());
    assert!(d.log().contains("insecure_unsealed"), "{}", d.log());
    let m = d.metrics();
    assert!(
        m.lines().any(|l| l.starts_with("fernetd_problem{")
            && l.contains("code=\"cluster-unsealed\",severity=\"warning\"")),
        "{m}"
    );
    // `status` next to the daemon says it once, not once per source.
    let out = run(&opted, &["status"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(
        out.stdout.matches("[cluster-unsealed]").count(),
        1,
        "{}",
        out.stdout
    );
    d.stop();
}

#[test]
fn seal_keys_are_made_private_and_one_others_can_read_is_refused_by_every_command() {
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("a");
    fernetd_ok(&["setup", "--key-repository", repo.to_str().unwrap()]);
    let from = repo.to_str().unwrap();
    let seal = t.path().join("seal.key");
    let out = fernetd_ok(&["cluster", "new-seal-key", "--out", seal.to_str().unwrap()]);
    assert!(
        out.stdout.contains("mode 0600") && out.stdout.contains("copy it to every node"),
        "{}",
        out.stdout
    );
    assert_eq!(mode(&seal), 0o600);
    let made = std::fs::read(&seal).unwrap();
    assert!(!out.stdout.contains(String::from_utf8_lossy(&made).trim()));
    // Never replaced.
    let again = fernetd(&["cluster", "new-seal-key", "--out", seal.to_str().unwrap()]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(std::fs::read(&seal).unwrap(), made);

    let extra = format!("seal_key_file = \"{}\"\n", seal.display());
    let cfg = node(t.path(), &etcd.endpoint, "/sec", "a", &extra);
    let out = run(&cfg, &["check-config"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    for bad in [0o644, 0o640, 0o604, 0o620] {
        chmod(&seal, bad);
        for args in [
            &["check-config"][..],
            &["cluster", "init", "--from", from],
            &["sync"],
            &["status"],
            &["daemon"],
        ] {
            let out = run(&cfg, args);
            assert_eq!(out.code, 2, "{bad:o} {args:?}: {}", out.stderr);
            assert_eq!(out.error_lines(), 1, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(&seal.display().to_string())
                    && out.stderr.contains(&format!("mode {bad:04o}")),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
    assert!(raw(&etcd, "/sec/tokens/keyset").is_empty(), "init wrote");
    // A FIFO or a directory there is said at once, never waited on.
    let fifo = t.path().join("fifo.key");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for odd in [&fifo, &t.path().to_path_buf()] {
        let c = node(
            t.path(),
            &etcd.endpoint,
            "/sec",
            "odd",
            &format!("seal_key_file = \"{}\"\n", odd.display()),
        );
        let out = run(&c, &["check-config"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    }
    chmod(&seal, 0o400);
    fernetd_ok(&["--config", cfg.to_str().unwrap(), "check-config"]);

    // `cluster init` offers to make the key; with --new-seal-key it does, then seals with it.
    let fresh = t.path().join("fresh.key");
    let extra = format!("seal_key_file = \"{}\"\n", fresh.display());
    let cfg = node(t.path(), &etcd.endpoint, "/sec", "a", &extra);
    let out = run(&cfg, &["cluster", "init", "--from", from]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("does not exist") && out.stderr.contains("--new-seal-key"),
        "{}",
        out.stderr
    );
    let out = run(&cfg, &["cluster", "init", "--from", from, "--new-seal-key"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("copy it to every node"),
        "{}",
        out.stdout
    );
    assert_eq!(mode(&fresh), 0o600);
    let stored = raw(&etcd, "/sec/tokens/keyset");
    assert!(stored.starts_with(b"fernetd-sealed-v1:"));
    let key = fernetd::seal::SealKey::load(&fresh, None).unwrap();
    fernetd::seal::open_value(Some(&key), false, &stored, b"/sec/tokens/keyset").unwrap();
    // A refused init leaves no new seal key behind (a node must never hold a key the
    // cluster's sets are not sealed with).
    let late = t.path().join("late.key");
    let cfg_late = node(
        t.path(),
        &etcd.endpoint,
        "/sec",
        "late",
        &format!("seal_key_file = \"{}\"\n", late.display()),
    );
    let out = run(
        &cfg_late,
        &["cluster", "init", "--from", from, "--new-seal-key"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("already holds a key set"),
        "{}",
        out.stderr
    );
    assert!(!late.exists(), "the refused init left its seal key");
    // `cluster seal` on a set sealed with another key: an error, not "already sealed".
    let other = t.path().join("other.key");
    new_seal_key(&other);
    let cfg_other = node(
        t.path(),
        &etcd.endpoint,
        "/sec",
        "other",
        &format!(
            "seal_key_file = \"{}\"\ninsecure_unsealed = true\n",
            other.display()
        ),
    );
    let out = run(&cfg_other, &["cluster", "seal"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("does not open"), "{}", out.stderr);
    // Without seal_key_file, --new-seal-key has nowhere to go.
    let opted = node(
        t.path(),
        &etcd.endpoint,
        "/x",
        "a",
        "insecure_unsealed = true\n",
    );
    let out = run(&opted, &["cluster", "init", "--new-seal-key"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("seal_key_file"), "{}", out.stderr);
}

#[test]
fn as_root_a_seal_key_another_user_owns_is_refused_and_new_ones_go_to_the_keystone_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (scripts/test names this test as not run otherwise)"
    );
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("a");
    fernetd_ok(&["setup", "--key-repository", repo.to_str().unwrap()]);
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    nix::unistd::chown(&seal, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let extra = format!("seal_key_file = \"{}\"\n", seal.display());
    let cfg = node(t.path(), "http://127.0.0.1:9", "/sec", "a", &extra);
    let out = run(&cfg, &["check-config"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("owned by nobody (uid 65534)"),
        "{}",
        out.stderr
    );
    // The Keystone user's file, which its daemon reads: root's commands accept it.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[keystone]\n",
        "[keystone]\nuser = \"65534\"\ngroup = \"65534\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = run(&cfg, &["check-config"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Made by root, a new key belongs to the Keystone user.
    let fresh = t.path().join("fresh.key");
    let out = run(
        &cfg,
        &["cluster", "new-seal-key", "--out", fresh.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&fresh).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o600));
}

#[test]
fn check_config_and_status_name_plain_http_and_secret_files_others_can_read() {
    let t = tempfile::tempdir().unwrap();
    let pw = t.path().join("etcd.password");
    std::fs::write(&pw, "pw\n").unwrap();
    chmod(&pw, 0o644);
    let exposed = node(
        t.path(),
        "http://10.0.0.1:2379",
        "/sec",
        "a",
        &format!(
            "insecure_unsealed = true\nusername = \"fernetd\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    );
    // An endpoint etcd's client would read as plain HTTP or as another host is no endpoint.
    for bad in [
        "10.0.0.1:2379",
        "HTTP://10.0.0.1:2379",
        "ftp://10.0.0.1:2379",
        "http://127.0.0.1#@10.0.0.1:2379",
        "http://user@10.0.0.1:2379",
        "http:10.0.0.1:2379",
        "https:// 10.0.0.1:2379",
    ] {
        let c = node(t.path(), bad, "/sec", "bad", "insecure_unsealed = true\n");
        let out = run(&c, &["check-config"]);
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        assert!(
            out.stderr.contains("is not an etcd URL"),
            "{bad}: {}",
            out.stderr
        );
    }
    let out = run(&exposed, &["check-config"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warnings: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{}", out.stderr);
    assert!(warnings[0].starts_with("warning: [cluster-unsealed]"));
    assert!(
        warnings[1].starts_with("warning: [etcd-plaintext]")
            && warnings[1].contains("http://10.0.0.1:2379"),
        "{}",
        warnings[1]
    );
    assert!(
        warnings[2].starts_with("warning: [secret-readable]")
            && warnings[2].contains(&pw.display().to_string())
            && warnings[2].contains("mode 0644"),
        "{}",
        warnings[2]
    );
    assert!(!out.stderr.contains("pw\n"));

    // Over TLS with a client key every user can read: `status` and the daemon say so.
    let certs = Certs::make();
    let etcd = Etcd::start_tls(&certs);
    let key = t.path().join("client.key");
    std::fs::copy(certs.path("client.key"), &key).unwrap();
    chmod(&key, 0o644);
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let tls = node(
        t.path(),
        &etcd.endpoint,
        "/sec",
        "a",
        &format!(
            "seal_key_file = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            seal.display(),
            certs.path("ca.crt").display(),
            certs.path("client.crt").display(),
            key.display()
        ),
    );
    let repo = t.path().join("a");
    fernetd_ok(&["setup", "--key-repository", repo.to_str().unwrap()]);
    let out = run(&tls, &["cluster", "init", "--from", repo.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, problems) = problem_codes(&tls);
    assert_eq!(
        (code, problems),
        (1, vec![("secret-readable".into(), "warning".into())])
    );
    let d = Daemon::start(&["--config", tls.to_str().unwrap(), "daemon"], &[]);
    assert!(d.wait_log("ready", secs(20)), "{}", d.log());
    assert!(
        d.metrics()
            .contains("code=\"secret-readable\",severity=\"warning\""),
        "{}",
        d.metrics()
    );
    // A seal key made readable while the daemon runs is noticed (within a minute; here at
    // the next 2 s rotation), said with the file and its mode.
    chmod(&seal, 0o644);
    assert!(
        d.wait_for(secs(70), || d
            .log()
            .lines()
            .any(|l| l.contains("seal_key_file") && l.contains("mode 0644"))),
        "{}",
        d.log()
    );
    d.stop();
    chmod(&seal, 0o600);
    chmod(&key, 0o600);
    let (code, problems) = problem_codes(&tls);
    assert_eq!((code, problems), (0, vec![]));
}

/// `etcdctl` over TLS as the user a client certificate names (`{cn}.crt`).
fn etcdctl_as(etcd: &Etcd, certs: &Certs, cn: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint])
        .arg(format!("--cacert={}", certs.path("ca.crt").display()))
        .arg(format!(
            "--cert={}",
            certs.path(&format!("{cn}.crt")).display()
        ))
        .arg(format!(
            "--key={}",
            certs.path(&format!("{cn}.key")).display()
        ))
        .args(args)
        .output()
        .expect("etcdctl (Debian's etcd-client; scripts/deps installs it)")
}

/// The README's secure setup, line for line: TLS with client certificates, authentication on,
/// a `fernetd` user whose role grants read-write on fernetd's prefix only, the seal key on every
/// node. Two daemons rotate and converge with nothing more; another prefix is denied.
#[test]
fn the_least_privileged_etcd_user_over_tls_is_enough_and_nothing_more() {
    let certs = Certs::make();
    certs.client("root");
    certs.client("fernetd");
    let etcd = Etcd::start_tls(&certs);
    let admin = |args: &[&str]| {
        let out = etcdctl_as(&etcd, &certs, "root", args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The README's lines (Cluster mode: a secure setup).
    admin(&["user", "add", "root", "--no-password"]);
    admin(&["user", "grant-role", "root", "root"]);
    admin(&["role", "add", "fernetd"]);
    admin(&[
        "role",
        "grant-permission",
        "fernetd",
        "--prefix=true",
        "readwrite",
        "/fernetd/",
    ]);
    admin(&["user", "add", "fernetd", "--no-password"]);
    admin(&["user", "grant-role", "fernetd", "fernetd"]);
    admin(&["auth", "enable"]);

    let t = tempfile::tempdir().unwrap();
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let tls = |prefix: &str, node_name: &str, cn: &str| {
        node(
            t.path(),
            &etcd.endpoint,
            prefix,
            node_name,
            &format!(
                "seal_key_file = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                seal.display(),
                certs.path("ca.crt").display(),
                certs.path(&format!("{cn}.crt")).display(),
                certs.path(&format!("{cn}.key")).display()
            ),
        )
    };
    let (ca, cb) = (
        tls("/fernetd", "a", "fernetd"),
        tls("/fernetd", "b", "fernetd"),
    );
    let a = t.path().join("a");
    fernetd_ok(&["setup", "--key-repository", a.to_str().unwrap()]);
    let out = run(&ca, &["cluster", "init", "--from", a.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let daemons =
        [&ca, &cb].map(|c| Daemon::start(&["--config", c.to_str().unwrap(), "daemon"], &[]));
    for d in &daemons {
        assert!(d.wait_log("ready", secs(30)), "{}", d.log());
    }
    // Leases, the leader key, acknowledgements, watches and rotations: two rotations land on
    // both nodes.
    let b = t.path().join("b");
    let first = numbers(&a).last().copied().unwrap_or(0);
    assert!(
        daemons[0].wait_for(secs(30), || {
            let top = numbers(&a).last().copied().unwrap_or(0);
            top >= first + 2 && try_same(&a, &b)
        }),
        "a: {}\nb: {}",
        daemons[0].log(),
        daemons[1].log()
    );
    for d in &daemons {
        assert!(
            !d.log().contains("permission denied"),
            "the role was not enough: {}",
            d.log()
        );
    }
    let status = run(&cb, &["status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    for d in daemons {
        d.stop();
    }

    // Another prefix is denied to the same user, through etcdctl and through fernetd.
    let out = etcdctl_as(&etcd, &certs, "fernetd", &["put", "/other/x", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (`--move-etcd`: a's keys follow the cluster under /fernetd, and without it fernetd
    // refuses to start another one before it writes anything.)
    let other = tls("/other", "c", "fernetd");
    let from = a.to_str().unwrap();
    let out = run(&other, &["cluster", "init", "--from", from, "--move-etcd"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.error_lines(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    // A certificate naming no etcd user gets nothing.
    let stranger = tls("/fernetd", "d", "client");
    let out = run(&stranger, &["sync"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.error_lines(), 1, "{}", out.stderr);
}

/// Both repositories hold the same keys (and each holds a valid set).
fn try_same(a: &Path, b: &Path) -> bool {
    let read = |d: &Path| {
        std::fs::read_dir(d).ok().map(|entries| {
            let mut v: Vec<(String, Vec<u8>)> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok())
                .filter_map(|e| {
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).ok()?,
                    ))
                })
                .collect();
            v.sort();
            v
        })
    };
    matches!((read(a), read(b)), (Some(x), Some(y)) if x == y && x.len() >= 2)
}

/// The README's path from an unsealed cluster to a sealed one, on three running daemons: the
/// seal key on every node with `insecure_unsealed` kept (each reloaded in turn), `fernetd
/// cluster seal`, then `insecure_unsealed` removed (each reloaded in turn). Rotations go on
/// throughout; every token made on any node with its primary at any moment decrypts on every
/// node afterwards, and at every sample.
#[test]
fn a_running_cluster_moves_from_unsealed_to_sealed_and_every_token_keeps_decrypting() {
    use nix::sys::signal::Signal;
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let unsealed = "insecure_unsealed = true\n";
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| node(t.path(), &etcd.endpoint, "/up", n, unsealed))
        .collect();
    let dirs: Vec<PathBuf> = names.iter().map(|n| t.path().join(n)).collect();
    fernetd_ok(&["--config", configs[0].to_str().unwrap(), "cluster", "init"]);
    let daemons: Vec<Daemon> = configs
        .iter()
        .map(|c| Daemon::start(&["--config", c.to_str().unwrap(), "daemon"], &[]))
        .collect();
    for d in &daemons {
        assert!(d.wait_log("ready", secs(30)), "{}", d.log());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (dirs, stop) = (dirs.clone(), stop.clone());
        std::thread::spawn(move || sample_tokens(&dirs, &stop))
    };
    let reload_all = |extra: &str| {
        for (i, c) in configs.iter().enumerate() {
            let text = std::fs::read_to_string(c).unwrap();
            let base = text.split("request_timeout = \"5s\"\n").next().unwrap();
            std::fs::write(c, format!("{base}request_timeout = \"5s\"\n{extra}")).unwrap();
            let before = daemons[i].log().matches("configuration reloaded").count();
            daemons[i].signal(Signal::SIGHUP);
            assert!(
                daemons[i].wait_for(secs(20), || daemons[i]
                    .log()
                    .matches("configuration reloaded")
                    .count()
                    > before),
                "{}",
                daemons[i].log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    std::thread::sleep(secs(3));
    // 1. The seal key on every node; unsealed sets are still taken meanwhile.
    let seal = t.path().join("seal.key");
    new_seal_key(&seal);
    let sealed = format!("seal_key_file = \"{}\"\n", seal.display());
    reload_all(&format!("{sealed}{unsealed}"));
    // 2. Seal what etcd holds.
    let out = run(&configs[1], &["cluster", "seal"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("sealed at revision") || out.stdout.contains("already sealed"),
        "{}",
        out.stdout
    );
    assert!(raw(&etcd, "/up/tokens/keyset").starts_with(b"fernetd-sealed-v1:"));
    let out = run(&configs[2], &["cluster", "seal"]);
    assert!(out.stdout.contains("already sealed"), "{}", out.stdout);
    // 3. No more unsealed sets, anywhere.
    reload_all(&sealed);
    let at_switch: Vec<u64> = dirs
        .iter()
        .map(|d| numbers(d).last().copied().unwrap_or(0))
        .collect();
    assert!(
        daemons[0].wait_for(secs(40), || {
            dirs.iter()
                .zip(&at_switch)
                .all(|(d, n)| numbers(d).last().copied().unwrap_or(0) >= n + 2)
                && try_same(&dirs[0], &dirs[1])
                && try_same(&dirs[0], &dirs[2])
        }),
        "no rotation after sealing:\n{}",
        daemons
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    assert!(raw(&etcd, "/up/tokens/keyset").starts_with(b"fernetd-sealed-v1:"));
    for c in &configs {
        let (code, problems) = problem_codes(c);
        assert_eq!((code, &problems), (0, &vec![]), "{}", c.display());
    }
    // Now an unsealed value in the prefix (the real set, written back in the clear) is a
    // refused input: critical in `status` and on the daemons, every key kept.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (samples, tokens, failures) = sampler.join().unwrap();
    let sealed_value = raw(&etcd, "/up/tokens/keyset");
    let key = fernetd::seal::SealKey::load(&seal, None).unwrap();
    let clear =
        fernetd::seal::open_value(Some(&key), false, &sealed_value, b"/up/tokens/keyset").unwrap();
    let before: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    let clear = clear.to_vec();
    etcd.with_client(async move |c| {
        c.put("/up/tokens/keyset", clear, None).await.unwrap();
    });
    let (code, problems) = problem_codes(&configs[0]);
    assert_eq!(code, 2, "{problems:?}");
    assert!(
        problems.contains(&("input-refused".into(), "critical".into())),
        "{problems:?}"
    );
    assert!(
        daemons[1].wait_for(secs(15), || daemons[1]
            .metrics()
            .contains("code=\"input-refused\",severity=\"critical\"")),
        "{}",
        daemons[1].log()
    );
    let after: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    for (b, a) in before.iter().zip(&after) {
        for (name, content) in b.iter().filter(|(n, _)| n.parse::<u64>().is_ok()) {
            assert_eq!(a.get(name), Some(content), "key {name} changed");
        }
    }
    assert!(
        samples >= 20 && tokens >= 60,
        "{samples} samples, {tokens} tokens"
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for d in daemons {
        d.stop();
    }
}

/// Every 200 ms until `stop`: a token made with each node's primary (what that node's Keystone
/// issues now), checked at once against every node's keys; at the end, every token made in the
/// last 50 s (tokens live 60 s) checked again against every node's keys. Returns (samples,
/// tokens made, failures).
fn sample_tokens(
    dirs: &[PathBuf],
    stop: &std::sync::atomic::AtomicBool,
) -> (usize, usize, Vec<String>) {
    let (mut samples, mut made, mut failures) = (0, Vec::new(), Vec::new());
    // A repository read while a daemon replaces a file is read again at the next sample.
    let read = |d: &PathBuf| std::panic::catch_unwind(|| (issue_token(d), multifernet(d))).ok();
    let check = |made: &[(usize, std::time::Instant, String)], failures: &mut Vec<String>| {
        for (j, d) in dirs.iter().enumerate() {
            let Some((_, f)) = read(d) else { continue };
            for (i, _, token) in made {
                if f.decrypt(token).is_err() {
                    failures.push(format!("a token of node {i} does not decrypt on node {j}"));
                }
            }
        }
    };
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let new: Vec<_> = dirs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| read(d).map(|(token, _)| (i, std::time::Instant::now(), token)))
            .collect();
        check(&new, &mut failures);
        made.extend(new);
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let recent: Vec<_> = made
        .iter()
        .filter(|(_, at, _)| at.elapsed() < secs(50))
        .cloned()
        .collect();
    check(&recent, &mut failures);
    (samples, made.len(), failures)
}
