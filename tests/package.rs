//! Packaging: builds the .deb and .rpm (packaging/build), checks the .deb's files and
//! conffiles, installs it with dpkg into a scratch root (its own dpkg database, maintainer
//! scripts run chrootless with DPKG_ROOT) that already holds a key repository, runs the
//! installed binary and man page, verifies the shipped units with systemd-analyze and fails
//! when their exposure score rises above 2.0, and checks the shipped alerts, runbooks and
//! dashboard. Needs cargo-deb, cargo-generate-rpm (installed by scripts/deps), dpkg, man,
//! systemd-analyze and promtool.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn newest(dir: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no .{ext} in {}", dir.display()))
}

/// `Overall exposure level for UNIT: 1.1 OK` -> 1.1
fn exposure(out: &str, unit: &str) -> f64 {
    let needle = format!("Overall exposure level for {unit}: ");
    let rest = out
        .split(&needle)
        .nth(1)
        .unwrap_or_else(|| panic!("no exposure score for {unit}: {out}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn deb_installs_cleanly_and_ships_hardened_units() {
    run(&mut Command::new(root().join("packaging/build")));
    let deb = newest(&root().join("target/debian"), "deb");
    let rpm = newest(&root().join("target/generate-rpm"), "rpm");
    // The .rpm: same content, the config file marked as such, every generated man page.
    let rpm_list = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    for path in [
        "/usr/bin/fernetd",
        "/usr/lib/systemd/system/fernetd.service",
        "/usr/lib/systemd/system/fernetd-rotate.service",
        "/usr/lib/systemd/system/fernetd-rotate.timer",
        "/etc/fernetd/fernetd.toml",
        "/usr/lib/tmpfiles.d/fernetd.conf",
        "/usr/lib/sysusers.d/fernetd.conf",
        "/usr/share/bash-completion/completions/fernetd",
        "/usr/share/licenses/fernetd/LICENSE",
        "/usr/share/doc/fernetd/runbooks.md",
        "/usr/share/fernetd/prometheus/fernetd-alerts.yml",
        "/usr/share/fernetd/grafana/fernetd-dashboard.json",
        "/usr/lib/fernetd/verify-credentials",
    ] {
        assert!(
            rpm_list.contains(path),
            "{path} missing from the .rpm:\n{rpm_list}"
        );
    }
    for page in std::fs::read_dir(root().join("target/assets/man"))
        .unwrap()
        .flatten()
    {
        let name = page.file_name().to_string_lossy().into_owned();
        assert!(
            rpm_list.contains(&format!("/usr/share/man/man1/{name}")),
            "{name} missing from the .rpm (Cargo.toml generate-rpm assets)"
        );
    }
    let rpm_conf = run(Command::new("rpm").args(["-qp", "--configfiles"]).arg(&rpm));
    assert_eq!(rpm_conf.trim(), "/etc/fernetd/fernetd.toml");

    // File list and conffiles.
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/fernetd",
        "./lib/systemd/system/fernetd.service",
        "./lib/systemd/system/fernetd-rotate.service",
        "./lib/systemd/system/fernetd-rotate.timer",
        "./etc/fernetd/fernetd.toml",
        "./usr/lib/tmpfiles.d/fernetd.conf",
        "./usr/lib/sysusers.d/fernetd.conf",
        "./usr/share/man/man1/fernetd.1.gz",
        "./usr/share/man/man1/fernetd-daemon.1.gz",
        "./usr/share/man/man1/fernetd-rotate.1.gz",
        "./usr/share/bash-completion/completions/fernetd",
        "./usr/share/zsh/vendor-completions/_fernetd",
        "./usr/share/fish/vendor_completions.d/fernetd.fish",
        "./usr/share/doc/fernetd/copyright",
        "./usr/share/doc/fernetd/README.md",
        "./usr/share/doc/fernetd/runbooks.md",
        "./usr/share/fernetd/prometheus/fernetd-alerts.yml",
        "./usr/share/fernetd/grafana/fernetd-dashboard.json",
        "./usr/lib/fernetd/verify-credentials",
    ] {
        assert!(list.contains(path), "{path} missing from the .deb:\n{list}");
    }
    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(ctrl.path().join("DEBIAN")));
    let conffiles = std::fs::read_to_string(ctrl.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/fernetd/fernetd.toml");

    // A scratch root with its own dpkg database and an existing key repository.
    let r = tempfile::tempdir().unwrap();
    let rt = r.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc/keystone/fernet-keys",
    ] {
        std::fs::create_dir_all(rt.join(d)).unwrap();
    }
    std::fs::write(rt.join("var/lib/dpkg/status"), "").unwrap();
    let keys_dir = rt.join("etc/keystone/fernet-keys");
    for n in ["0", "1", "2"] {
        std::fs::write(keys_dir.join(n), fernet::Fernet::generate_key()).unwrap();
    }
    let keys_before = common::snapshot(&keys_dir);
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", rt.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
                "--log=/dev/null",
            ])
            .args(args);
        run(&mut c)
    };
    dpkg(&["-i", deb.to_str().unwrap()]);

    let version = run(Command::new(rt.join("usr/bin/fernetd")).arg("--version"));
    assert!(
        version.starts_with(&format!("fernetd {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let page = run(Command::new("man")
        .arg("-l")
        .arg(rt.join("usr/share/man/man1/fernetd.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    assert!(
        page.contains("fernetd") && page.contains("--config"),
        "{page}"
    );
    let page = run(Command::new("man")
        .arg("-l")
        .arg(rt.join("usr/share/man/man1/fernetd-daemon.1.gz"))
        .env("MANPAGER", "cat"));
    assert!(page.contains("--schedule"), "{page}");
    // The alerts, their runbooks and the dashboard, as in the source tree; the installed rules
    // pass promtool where they are (their runbook_url points at the installed runbooks).
    for (installed, source) in [
        ("usr/share/doc/fernetd/runbooks.md", "docs/runbooks.md"),
        (
            "usr/share/fernetd/prometheus/fernetd-alerts.yml",
            "packaging/prometheus/fernetd-alerts.yml",
        ),
        (
            "usr/share/fernetd/grafana/fernetd-dashboard.json",
            "packaging/grafana/fernetd-dashboard.json",
        ),
    ] {
        assert_eq!(
            std::fs::read(rt.join(installed)).unwrap(),
            std::fs::read(root().join(source)).unwrap(),
            "{installed}"
        );
    }
    let rules = rt.join("usr/share/fernetd/prometheus/fernetd-alerts.yml");
    let checked = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(checked.contains("SUCCESS"), "{checked}");
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains("runbook_url: \"file:///usr/share/doc/fernetd/runbooks.md#"));
    // The shipped default configuration is valid as it is.
    run(Command::new(rt.join("usr/bin/fernetd"))
        .args(["--config"])
        .arg(rt.join("etc/fernetd/fernetd.toml"))
        .args(["plan", "--keystone-config", "/dev/null"]));
    // Installing enabled and started nothing, and touched no key.
    assert!(!rt
        .join("etc/systemd/system/multi-user.target.wants")
        .exists());
    assert!(!rt.join("etc/systemd/system/timers.target.wants").exists());
    assert_eq!(
        common::snapshot(&keys_dir),
        keys_before,
        "installing touched the keys"
    );

    // Units: verify clean, exposure at most 2.0. verify runs against this machine's systemd
    // (a scratch root has no sysinit.target); the only complaints accepted are the ones that
    // come from fernetd not being installed here: its binary and its man page.
    for unit in [
        "fernetd.service",
        "fernetd-rotate.service",
        "fernetd-rotate.timer",
    ] {
        let path = rt.join("lib/systemd/system").join(unit);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        let installed_here = Path::new("/usr/bin/fernetd").exists();
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("'man fernetd(1)' failed"))
            .filter(|l| installed_here || !l.contains("Command /usr/bin/fernetd is not executable"))
            .collect();
        assert!(
            problems.is_empty(),
            "{unit}: systemd-analyze verify: {problems:?}"
        );
    }
    for unit in ["fernetd.service", "fernetd-rotate.service"] {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", rt.display()))
            .arg(rt.join("lib/systemd/system").join(unit)));
        let score = exposure(&out, unit);
        eprintln!("{unit}: exposure {score}");
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0");
    }

    dpkg(&["--purge", "fernetd"]);
    assert!(!rt.join("usr/bin/fernetd").exists());
    assert!(
        !rt.join("etc/fernetd/fernetd.toml").exists(),
        "purge left the conffile"
    );
    assert_eq!(
        common::snapshot(&keys_dir),
        keys_before,
        "removing touched the keys"
    );
}
