//! The .deb under a real systemd: a Debian bookworm root (made once by `mmdebstrap`, cached in
//! `/var/cache/fernetd-tests/`) booted with `systemd-nspawn --boot`, systemd 252 as PID 1. The
//! freshly built package is installed and the README's Install section is followed word for
//! word: check, plan, setup, the documented fernetd.toml with `[keystone]` user and group,
//! `systemctl enable --now fernetd`, rotations as `keystone`, journal priorities after a
//! provoked error, a rejected and an accepted reload, the watchdog over a minute, stop, the
//! timer's service, `systemd-analyze security`, and a unit that cannot start giving up.
//!
//! Needs root, `systemd-nspawn` (systemd-container) and `mmdebstrap`; `scripts/test` installs
//! them, and where they cannot be had it names this test as not run (never a silent pass).

mod common;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CACHE: &str = "/var/cache/fernetd-tests/bookworm-systemd.tar";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cached root filesystem, made on first use.
fn rootfs_tar() -> PathBuf {
    let tar = PathBuf::from(CACHE);
    if !tar.exists() {
        std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
        let partial = tar.with_extension("partial.tar");
        let out = Command::new("mmdebstrap")
            .args([
                "--format=tar",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus",
                "bookworm",
            ])
            .arg(&partial)
            .output()
            .expect("mmdebstrap (apt-get install mmdebstrap; scripts/deps does)");
        assert!(
            out.status.success(),
            "mmdebstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &tar).unwrap();
    }
    tar
}

/// A booted container; powered off (then killed) when dropped.
struct Machine {
    nspawn: Child,
    pid1: u32,
    _dir: tempfile::TempDir,
    root: PathBuf,
    console: PathBuf,
}

impl Machine {
    fn boot() -> Machine {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(rootfs_tar())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(root.join("etc/hostname"), "fernetd-test\n").unwrap();
        let console = dir.path().join("console.log");
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .arg(format!("--machine=fernetd-test-{}", std::process::id()))
            .arg("--directory")
            .arg(&root)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("systemd-nspawn (apt-get install systemd-container; scripts/deps does)");
        let mut m = Machine {
            pid1: 0,
            nspawn,
            _dir: dir,
            root,
            console,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = m.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited with {status}: {}", m.console_log());
            }
            m.pid1 = find_systemd(m.nspawn.id()).unwrap_or(0);
            if m.pid1 != 0 {
                let state = m.sh("systemctl is-system-running").stdout;
                if matches!(state.trim(), "running" | "degraded") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot within 60 s: {}",
                m.console_log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        m
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs a shell command inside the container (every namespace of its PID 1).
    fn sh(&self, script: &str) -> common::Run {
        common::Run::from(
            Command::new("nsenter")
                .arg("-t")
                .arg(self.pid1.to_string())
                .args(["-a", "--", "/bin/sh", "-c"])
                .arg(script)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LANG", "C.UTF-8")
                .output()
                .unwrap(),
        )
    }

    fn ok(&self, script: &str) -> String {
        let r = self.sh(script);
        assert_eq!(
            r.code,
            0,
            "`{script}` in the container: {}{}\njournal:\n{}",
            r.stdout,
            r.stderr,
            self.sh("journalctl -u fernetd -u fernetd-rotate --no-pager -n 40")
                .stdout
        );
        r.stdout
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} {unit}"))
            .trim()
            .to_string()
    }

    fn wait(&self, what: &str, timeout: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "{what} (within {timeout:?}); journal:\n{}",
                self.sh("journalctl -u fernetd -u fernetd-rotate --no-pager -n 60")
                    .stdout
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn primary(&self) -> u64 {
        self.sh("ls /etc/keystone/fernet-keys")
            .stdout
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.pid1 != 0 {
            let _ = self.sh("systemctl poweroff --no-block");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The container's PID 1: the `systemd` process below systemd-nspawn.
fn find_systemd(pid: u32) -> Option<u32> {
    let children = |p: u32| -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    };
    let mut queue = children(pid);
    while let Some(p) = queue.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if comm.trim() == "systemd" {
            return Some(p);
        }
        queue.extend(children(p));
    }
    None
}

fn deb() -> PathBuf {
    let out = Command::new(root().join("packaging/build"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaging/build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(root().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("no .deb in target/debian")
}

/// The README's Install section's fernetd.toml, with a seconds-level schedule so that
/// rotations happen while the test watches.
const CONFIG: &str = "[keystone]\nuser = \"keystone\"\ngroup = \"keystone\"\n\
    [tokens]\nschedule = \"*/3 * * * * *\"\nexpiration = \"10s\"\nallow_expired_window = 0\nmargin = 0\n";

#[test]
fn under_real_systemd_the_deb_installs_rotates_reloads_and_stops() {
    assert!(
        nix::unistd::getuid().is_root(),
        "booting a container needs root (scripts/test names this test as not run otherwise)"
    );
    let deb = deb();
    let m = Machine::boot();
    // /tmp is the container's own tmpfs: hand the package over through /root.
    std::fs::copy(&deb, m.root.join("root/fernetd.deb")).unwrap();

    // The package makes the keystone user the units run as (sysusers.d).
    m.ok("dpkg -i /root/fernetd.deb");
    let user = m.ok("getent passwd keystone");
    assert!(
        user.contains(":/var/lib/keystone:") && user.trim_end().ends_with("nologin"),
        "{user}"
    );
    assert_eq!(m.show("fernetd", "UnitFileState"), "disabled");

    // A repository as keystone-manage fernet_setup leaves it, owned by keystone.
    m.ok(
        "mkdir -m 0700 -p /etc/keystone/fernet-keys && cd /etc/keystone/fernet-keys && \
          for n in 0 1; do head -c 32 /dev/urandom | base64 | tr '+/' '-_' > $n; done && \
          chmod 0600 0 1 && chown -R keystone:keystone /etc/keystone/fernet-keys",
    );
    std::fs::write(m.root.join("etc/fernetd/fernetd.toml"), CONFIG).unwrap();

    // The Install section, word for word.
    m.ok("fernetd check");
    m.ok("fernetd plan");
    m.ok("fernetd setup");
    m.ok("fernetd check-config");
    m.ok("systemctl enable --now fernetd");
    assert_eq!(m.show("fernetd", "ActiveState"), "active");
    let start_pid = m.show("fernetd", "MainPID");
    let started = Instant::now();
    m.wait(
        "two rotations under the unit",
        Duration::from_secs(20),
        || m.primary() >= 3,
    );
    let owners = m.ok("stat -c '%U:%G %a %n' /etc/keystone/fernet-keys/* /etc/keystone/fernet-keys/.fernetd/state.json");
    for line in owners.lines() {
        assert!(line.starts_with("keystone:keystone 600 "), "{owners}");
    }
    assert!(m.show("fernetd", "StatusText").contains("tokens: ok"));
    m.ok("fernetd status");

    // A provoked error: nothing can be staged. The journal has it at warning or above, and
    // only the problems are there; STATUS= and status say it too.
    m.ok("mkdir -p /etc/keystone/fernet-keys/.fernetd/staged.tmp/x");
    m.wait(
        "STATUS= says the rotation fails",
        Duration::from_secs(20),
        || {
            m.show("fernetd", "StatusText")
                .contains("rotation failing since")
        },
    );
    let warnings = m.ok("journalctl -u fernetd -p warning --no-pager -o cat");
    assert!(warnings.contains("rotation failed"), "{warnings}");
    assert!(
        !warnings.contains("rotated: key 0 promoted"),
        "info lines at warning: {warnings}"
    );
    assert!(!warnings.lines().any(|l| l.starts_with(' ')), "{warnings}");
    // With margin 0 the failed rotation is overdue beyond the margin at once: critical.
    let status = m.sh("fernetd status");
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(
        status.stdout.contains("rotation failing since"),
        "{}",
        status.stdout
    );
    m.ok("rm -r /etc/keystone/fernet-keys/.fernetd/staged.tmp");

    // A rejected reload fails and keeps the running configuration; a valid one is taken.
    m.ok("cp /etc/fernetd/fernetd.toml /tmp/good.toml && \
          sed -i 's/\\*\\/3 \\* \\* \\* \\* \\*/61 * * * */' /etc/fernetd/fernetd.toml");
    let reload = m.sh("systemctl reload fernetd");
    assert_ne!(
        reload.code, 0,
        "a broken configuration reloaded: {}",
        reload.stderr
    );
    assert_eq!(m.show("fernetd", "ReloadResult"), "exit-code");
    assert_eq!(m.show("fernetd", "ActiveState"), "active");
    assert_eq!(m.show("fernetd", "MainPID"), start_pid);
    m.ok("cp /tmp/good.toml /etc/fernetd/fernetd.toml && systemctl reload fernetd");
    assert_eq!(m.show("fernetd", "ReloadResult"), "success");

    // The watchdog (WatchdogSec=30s) fed for over a minute: the same process, no restart.
    let before = m.primary();
    while started.elapsed() < Duration::from_secs(65) {
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(m.show("fernetd", "MainPID"), start_pid);
    assert_eq!(m.show("fernetd", "NRestarts"), "0");
    assert!(
        m.primary() > before,
        "rotations stopped after the error was cleared"
    );

    m.ok("systemctl stop fernetd");
    assert_eq!(m.show("fernetd", "ActiveState"), "inactive");
    assert_eq!(m.show("fernetd", "Result"), "success");

    // The timer variant: its service rotates once, as keystone.
    let before = m.primary();
    m.ok("systemctl enable --now fernetd-rotate.timer");
    m.ok("systemctl start fernetd-rotate.service");
    assert_eq!(m.show("fernetd-rotate.service", "Result"), "success");
    assert_eq!(m.primary(), before + 1);
    m.ok("systemctl list-timers fernetd-rotate.timer --no-pager | grep -q fernetd-rotate.timer");
    m.ok("systemctl disable --now fernetd-rotate.timer");

    // Scored inside the booted system.
    for unit in ["fernetd.service", "fernetd-rotate.service"] {
        let out = m.sh(&format!("systemd-analyze security {unit} --no-pager"));
        let score: f64 = out
            .stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no score: {}{}", out.stdout, out.stderr));
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0");
    }

    // A unit that cannot start (its user is gone) gives up instead of restarting forever.
    m.ok("userdel keystone");
    let _ = m.sh("systemctl start fernetd");
    assert_eq!(m.show("fernetd", "StartLimitBurst"), "5");
    assert_eq!(m.show("fernetd", "StartLimitIntervalUSec"), "10min");
    m.wait(
        "the unit settles as failed",
        Duration::from_secs(60),
        || m.show("fernetd", "ActiveState") == "failed",
    );
    let restarts: u32 = m.show("fernetd", "NRestarts").parse().unwrap();
    // StartLimitBurst=5: the first start and its restarts, then no more.
    assert!(restarts <= 5, "{restarts} restarts");
    // RestartSec=5s: a loop would have restarted again by now.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        m.show("fernetd", "NRestarts"),
        restarts.to_string(),
        "still restarting"
    );
    assert_eq!(m.show("fernetd", "ActiveState"), "failed");
    eprintln!(
        "a unit without its user: {restarts} restarts, then {} ({})",
        m.show("fernetd", "ActiveState"),
        m.show("fernetd", "Result")
    );
}
