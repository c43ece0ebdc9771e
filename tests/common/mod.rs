//! Helpers shared by the integration tests: run the real binary, snapshot a repository.
#![allow(dead_code)]

pub mod etcd;
pub mod keystone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fernetd"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stderr lines other than `warning:` ones: an error must be exactly one.
    pub fn error_lines(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| !l.starts_with("warning:"))
            .count()
    }

    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `fernetd ARGS` with no config file from the environment. Bounded: a command still
/// running after a minute is killed and the test fails.
pub fn fernetd(args: &[&str]) -> Run {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("FERNETD_CONFIG")
        .env("FERNETD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fernetd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait for fernetd").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect fernetd output");
            panic!(
                "fernetd {args:?} still running after 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Run::from(child.wait_with_output().expect("collect fernetd output"))
}

/// `cp -a from to`: a directory copied with its modes, owners and times.
pub fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A test node's `[cluster]` lines: `extra`, and, unless `extra` names a seal key, the
/// operator's opt-in to key sets in the clear (most tests read etcd's values directly).
pub fn cluster_lines(extra: &str) -> String {
    match extra.contains("seal_key_file") {
        true => extra.to_string(),
        false => format!("insecure_unsealed = true\n{extra}"),
    }
}

/// Dates the repository's recorded last rotation in 2099 (a state file written by a clock
/// that ran ahead): `clock-in-future`.
pub fn last_rotation_in_the_future(dir: &Path) {
    let p = dir.join(".fernetd/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["last_rotation"] = serde_json::json!("2099-01-01T00:00:00Z");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// A new seal key at `path`, made as an operator makes one (mode 0600).
pub fn new_seal_key(path: &Path) {
    fernetd_ok(&["cluster", "new-seal-key", "--out", path.to_str().unwrap()]);
}

pub fn fernetd_ok(args: &[&str]) -> Run {
    let r = fernetd(args);
    assert_eq!(r.code, 0, "fernetd {args:?}: {}{}", r.stdout, r.stderr);
    r
}

/// Every file in a directory tree with its bytes (for "nothing changed" assertions).
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(rel, b);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The key files of a repository: number -> content (trailing newline trimmed).
pub fn keys(dir: &Path) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(n) = name.parse::<u64>() {
            if n.to_string() == name && e.path().is_file() {
                let s = std::fs::read_to_string(e.path()).unwrap();
                out.insert(n, s.trim_end().to_string());
            }
        }
    }
    out
}

/// MultiFernet over a repository's keys, highest number first (Keystone's order).
pub fn multifernet(dir: &Path) -> fernet::MultiFernet {
    let ks = keys(dir);
    let fernets: Vec<fernet::Fernet> = ks
        .values()
        .rev()
        .map(|k| fernet::Fernet::new(k).expect("valid key"))
        .collect();
    fernet::MultiFernet::new(fernets)
}

/// A token encrypted with the repository's primary key (what Keystone issues).
pub fn issue_token(dir: &Path) -> String {
    let ks = keys(dir);
    let (_, primary) = ks.iter().next_back().expect("a primary key");
    fernet::Fernet::new(primary)
        .unwrap()
        .encrypt(b"token payload")
}

/// A `fernetd daemon` child process whose stderr goes to a log file. Killed on drop.
pub struct Daemon {
    child: Option<std::process::Child>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(&[], args, env)
    }

    /// [`Daemon::start`] through `wrapper` (e.g. `setpriv --reuid 65534 ...`), which runs the
    /// binary with `args`.
    pub fn start_with(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("daemon.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        cmd.args(args)
            .env_remove("FERNETD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env("FERNETD_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: Some(cmd.spawn().expect("start fernetd daemon")),
            log,
            _logdir: logdir,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The daemon's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `f` every 20 ms until it holds or `timeout` passes.
    pub fn wait_for(&self, timeout: std::time::Duration, f: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: std::time::Duration) -> bool {
        self.wait_for(timeout, || self.log().contains(needle))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
        }
    }

    /// SIGTERM, then waits (at most 5 s, then SIGKILL).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until any of `daemons` logs `needle`.
    pub fn wait_any(daemons: Vec<&Daemon>, needle: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if daemons.iter().any(|d| d.log().contains(needle)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    /// The metrics address the daemon logged.
    pub fn metrics_addr(&self) -> String {
        self.log()
            .split("metrics on http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_default()
            .to_string()
    }

    /// How many file descriptors the daemon holds.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// GET /metrics from the address the daemon logged.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let log = self.log();
        let addr = log
            .split("metrics on http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .expect("the daemon serves metrics (--metrics-listen)")
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lifetimes of zero: retention is over at once, so rotations purge by count alone.
pub const NO_RETENTION: [&str; 6] = [
    "--expiration",
    "0",
    "--allow-expired-window",
    "0",
    "--margin",
    "0",
];

/// The key numbers of a repository, ascending.
pub fn numbers(dir: &Path) -> Vec<u64> {
    keys(dir).into_keys().collect()
}

/// `fernetd rotate --key-repository DIR EXTRA...`, which must succeed.
pub fn rotate_ok(dir: &str, extra: &[&str]) -> Run {
    let mut args = vec!["rotate", "--key-repository", dir];
    args.extend_from_slice(extra);
    fernetd_ok(&args)
}

/// Puts the cluster `rotations` ahead of a follower: imports the repository `dir` through
/// `leader_cfg`, has the follower (`follower_cfg`) sync it, then rotates `dir` that many times
/// by count (max_active_keys 3, no retention) and imports it again with --force --force-purge
/// (the operator lets nodes drop keys by count too). From a fresh setup the follower then
/// holds keys {0, 1}, and the cluster {0, 1, 2} after one rotation, {0, 3, 4} after three.
pub fn cluster_ahead_of_follower(
    dir: &Path,
    leader_cfg: &Path,
    follower_cfg: &Path,
    rotations: usize,
) {
    let (d, leader) = (dir.to_str().unwrap(), leader_cfg.to_str().unwrap());
    fernetd_ok(&["--config", leader, "cluster", "init", "--from", d]);
    fernetd_ok(&["--config", follower_cfg.to_str().unwrap(), "sync"]);
    for _ in 0..rotations {
        rotate_ok(
            d,
            &[["--max-active-keys", "3"].as_slice(), &NO_RETENTION].concat(),
        );
    }
    fernetd_ok(&[
        "--config",
        leader,
        "cluster",
        "init",
        "--from",
        d,
        "--force",
        "--force-purge",
    ]);
}

/// A systemd notification socket: collects every datagram the daemon sends.
pub struct Notify {
    pub path: PathBuf,
    got: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let mut g = g.lock().unwrap();
                g.push_str(&String::from_utf8_lossy(&buf[..n]));
                g.push('\n');
            }
        });
        Notify { path, got }
    }

    pub fn text(&self) -> String {
        self.got.lock().unwrap().clone()
    }
}

/// A `[credentials] verify` line for tests without Keystone: it vouches, as Keystone's check
/// does when every credential is on the primary, with the primary key's `primary_key_hash`
/// (SHA-1 of the key file's text), on the database of a Keystone configuration that sets none
/// (Keystone's default `sqlite:///keystone.db`, whose SHA-256 begins b47be51719d63bcf).
pub const VERIFY_PRIMARY: &str = r#"verify = ["sh", "-c", 'printf "verified: 0 credentials; primary_key_hash=%s database=b47be51719d63bcf\n" "$(sha1sum < "$FERNETD_REPOSITORY/$FERNETD_PRIMARY" | cut -d" " -f1)"']
"#;
