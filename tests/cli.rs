//! The command-line contract, driven through the real binary.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn setup_creates_keystone_layout_and_is_idempotent() {
    let t = tmp();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let ks = keys(&repo);
    assert_eq!(ks.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert!(ks.values().all(|k| k.len() == 44));
    assert_ne!(ks[&0], ks[&1]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&repo), 0o700);
    assert_eq!(mode(&repo.join("0")), 0o600);
    assert_eq!(mode(&repo.join("1")), 0o600);

    let before = snapshot(&repo);
    let again = fernetd_ok(&["setup", "--key-repository", r]);
    assert!(
        again.stdout.contains("already initialized"),
        "{}",
        again.stdout
    );
    let after = snapshot(&repo);
    let key_files = |s: &std::collections::BTreeMap<String, Vec<u8>>| {
        s.iter()
            .filter(|(k, _)| !k.starts_with(".fernetd"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key_files(&before), key_files(&after), "setup changed a key");
}

#[test]
fn rotate_follows_keystone_and_keeps_keys_inside_retention() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let first_primary = keys(t.path())[&1].clone();
    let staged = keys(t.path())[&0].clone();
    rotate_ok(r, &["--max-active-keys", "3"]);
    let ks = keys(t.path());
    assert_eq!(ks.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(ks[&2], staged, "key 0 must become the new primary");
    assert_eq!(ks[&1], first_primary);

    // Keystone would purge key 1 now; it was demoted seconds ago, so fernetd keeps it.
    let out = rotate_ok(r, &["--max-active-keys", "3"]);
    assert_eq!(numbers(t.path()), vec![0, 1, 2, 3]);
    assert!(out.stderr.contains("kept key 1"), "{}", out.stderr);
    assert!(out.stderr.contains("until"), "{}", out.stderr);

    // With no retention at all the count rule applies.
    rotate_ok(
        r,
        &[["--max-active-keys", "3"].as_slice(), &NO_RETENTION].concat(),
    );
    assert_eq!(numbers(t.path()), vec![0, 3, 4]);
}

#[test]
fn force_purge_restores_count_only_rule() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    for _ in 0..3 {
        rotate_ok(r, &["--max-active-keys", "3", "--force-purge"]);
    }
    assert_eq!(numbers(t.path()), vec![0, 3, 4]);
}

#[test]
fn tokens_survive_rotations_until_their_key_is_purged() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let token = issue_token(t.path());
    for _ in 0..4 {
        rotate_ok(r, &["--max-active-keys", "3"]);
        assert!(
            multifernet(t.path()).decrypt(&token).is_ok(),
            "token lost inside retention"
        );
    }
    rotate_ok(r, &["--max-active-keys", "3", "--force-purge"]);
    assert!(
        multifernet(t.path()).decrypt(&token).is_err(),
        "key 1 should be purged by count"
    );
}

#[test]
fn check_exit_codes_and_findings() {
    let t = tmp();
    let repo = t.path().join("k");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let ok = fernetd(&["check", "--key-repository", r]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    assert!(ok.stdout.contains("healthy"));

    std::fs::set_permissions(repo.join("1"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(repo.join("0.tmp"), "leftover").unwrap();
    let warn = fernetd(&["check", "--key-repository", r]);
    assert_eq!(warn.code, 1, "{}", warn.stdout);
    assert!(warn.stdout.contains("[key-mode]") && warn.stdout.contains("[stray-file]"));

    let key1 = std::fs::read_to_string(repo.join("1")).unwrap();
    std::fs::write(repo.join("01"), &key1).unwrap();
    std::fs::write(repo.join("5"), "not a key").unwrap();
    std::fs::write(repo.join("6"), "").unwrap();
    std::fs::write(repo.join("7"), &key1).unwrap();
    std::os::unix::fs::symlink(repo.join("1"), repo.join("8")).unwrap();
    std::fs::remove_file(repo.join("0")).unwrap();
    let bad = fernetd(&["check", "--key-repository", r, "--json"]);
    assert_eq!(bad.code, 2, "{}", bad.stdout);
    let v: serde_json::Value = serde_json::from_str(&bad.stdout).unwrap();
    assert_eq!(v["status"], "invalid");
    let codes: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f["code"].as_str().unwrap(),
                f["path"].as_str().unwrap().rsplit('/').next().unwrap()
            )
        })
        .collect();
    for want in [
        "non-canonical-name:01",
        "malformed-key:5",
        "empty-key:6",
        "missing-staged-key:0",
        "symlink:8",
        "key-mode:1",
        "stray-file:0.tmp",
    ] {
        assert!(
            codes.iter().any(|c| c == want),
            "missing {want} in {codes:?}"
        );
    }
    assert!(
        codes.iter().any(|c| c.starts_with("duplicate-key")),
        "{codes:?}"
    );
    // Never any key material in the report.
    assert!(
        !bad.stdout.contains(key1.trim()),
        "key material in check output"
    );
}

#[test]
fn check_flags_world_readable_directory_and_too_few_keys() {
    let t = tmp();
    let repo = t.path().join("k");
    std::fs::create_dir(&repo).unwrap();
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = fernetd(&[
        "check",
        "--key-repository",
        repo.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("world-readable-directory") && r.stdout.contains("too-few-keys"));
}

#[test]
fn errors_are_one_line_exit_2_and_change_nothing() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let before = snapshot(t.path());
    let cfg = t.path().join("bad.toml");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "rotate".into(),
                "--key-repository".into(),
                r.into(),
                "--expiration".into(),
                "-5".into(),
            ],
            "negative",
        ),
        (
            vec![
                "rotate".into(),
                "--key-repository".into(),
                r.into(),
                "--bogus".into(),
            ],
            "--bogus",
        ),
        (
            vec![
                "rotate".into(),
                "--key-repository".into(),
                r.into(),
                "--max-active-keys".into(),
                "1".into(),
            ],
            "--max-active-keys",
        ),
        (
            vec![
                "--config".into(),
                cfg.display().to_string(),
                "rotate".into(),
            ],
            "bad.toml",
        ),
        (
            vec!["plan".into(), "--schedule".into(), "61 * * * *".into()],
            "not a valid cron",
        ),
        (
            vec![
                "plan".into(),
                "--keystone-config".into(),
                "/nonexistent/keystone.conf".into(),
            ],
            "/nonexistent/keystone.conf",
        ),
        (
            vec![
                "rotate".into(),
                "--key-repository".into(),
                format!("{r}/missing"),
            ],
            "fernetd setup",
        ),
        (
            vec![
                "rotate".into(),
                "--key-repository".into(),
                r.into(),
                "--keystone-user".into(),
                "no-such-user-xyz".into(),
                "--keystone-group".into(),
                "0".into(),
            ],
            "no-such-user-xyz",
        ),
    ];
    std::fs::write(&cfg, "[tokens]\nexpiration = 5\nunknown_field = 1\n").unwrap();
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fernetd(&a);
        assert_eq!(out.code, 2, "{a:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "{a:?}: not one line: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "{a:?}: {} lacks {needle}",
            out.stderr
        );
        assert_eq!(
            snapshot(t.path())
                .into_iter()
                .filter(|(k, _)| k != "bad.toml")
                .collect::<std::collections::BTreeMap<_, _>>(),
            before,
            "{a:?} changed the disk"
        );
    }
}

#[test]
fn refusing_a_never_touched_invalid_repository_creates_nothing() {
    let t = tmp();
    for (n, k) in [
        (0u64, fernet::Fernet::generate_key()),
        (1, "garbage".to_string()),
    ] {
        std::fs::write(t.path().join(n.to_string()), k).unwrap();
    }
    let before = snapshot(t.path());
    for cmd in ["rotate", "setup"] {
        let out = fernetd(&[cmd, "--key-repository", t.path().to_str().unwrap()]);
        assert_eq!(out.code, 2, "{cmd}: {}", out.stderr);
        assert!(
            !t.path().join(".fernetd").exists(),
            "{cmd} created .fernetd before refusing"
        );
        assert_eq!(snapshot(t.path()), before);
    }
}

#[test]
fn refuses_to_rotate_an_invalid_repository() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    std::fs::write(t.path().join("1"), "garbage").unwrap();
    let before = keys(t.path());
    let out = fernetd(&["rotate", "--key-repository", r]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/1: not base64"), "{}", out.stderr);
    assert_eq!(keys(t.path()), before);
}

#[test]
fn plan_human_and_json() {
    let out = fernetd(&[
        "plan",
        "--schedule",
        "@daily",
        "--max-active-keys",
        "3",
        "--margin",
        "0",
        "--keystone-config",
        "/dev/null",
    ]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(out.stdout.contains("UNSAFE, needs 5"), "{}", out.stdout);

    let out = fernetd(&[
        "plan",
        "--schedule",
        "0 0 * * 1,3",
        "--json",
        "--keystone-config",
        "/dev/null",
    ]);
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["required_max_active_keys"], 4);
    assert!(v["safe"].is_null());
    assert_eq!(v["next_rotations"].as_array().unwrap().len(), 5);
    let first = v["next_rotations"][0].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(first).is_ok(),
        "{first}"
    );

    let out = fernetd(&[
        "plan",
        "--schedule",
        "49h",
        "--max-active-keys",
        "3",
        "--margin",
        "0",
        "--json",
        "--keystone-config",
        "/dev/null",
    ]);
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["safe"], true);
    assert_eq!(v["shortest_window_seconds"], 49 * 3600);
}

#[test]
fn plan_reads_keystone_conf_and_toml_with_flags_winning() {
    let t = tmp();
    let ks = t.path().join("keystone.conf");
    std::fs::write(&ks, "[token]\nexpiration = 3600\nallow_expired_window = 0\n[fernet_tokens]\nmax_active_keys = 3\n").unwrap();
    let toml = t.path().join("fernetd.toml");
    std::fs::write(
        &toml,
        format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nschedule = \"1h\"\nmargin = 0\n",
            ks.display()
        ),
    )
    .unwrap();
    let c = toml.to_str().unwrap();
    // keystone.conf: E=1h, W=0, N=3; TOML: schedule 1h, margin 0 -> safe (1 gap of 1h).
    let out = fernetd(&["--config", c, "plan", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["required_max_active_keys"], 3);
    assert_eq!(v["max_active_keys"], 3);
    // A flag overrides both: W = 2d makes N = 3 unsafe.
    let out = fernetd(&["--config", c, "plan", "--allow-expired-window", "2d"]);
    assert_eq!(out.code, 3, "{}", out.stdout);
}

#[test]
fn second_writer_waits_then_fails_naming_the_lock() {
    use nix::fcntl::{Flock, FlockArg};
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let lock_path = t.path().join(".fernetd/lock");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    let held = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let before = keys(t.path());
    let started = std::time::Instant::now();
    let out = fernetd(&["rotate", "--key-repository", r, "--lock-timeout", "1s"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(".fernetd/lock") && out.stderr.contains("gave up after 1s"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(keys(t.path()), before);
    drop(held);
    rotate_ok(r, &["--lock-timeout", "1s"]);
}

#[test]
fn concurrent_rotations_serialize_and_lose_nothing() {
    let t = tmp();
    let r = t.path().to_str().unwrap().to_string();
    fernetd_ok(&["setup", "--key-repository", &r]);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || {
                fernetd(&["rotate", "--key-repository", &r, "--max-active-keys", "3"])
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    // Six serialized rotations from {0,1}: primary 7, every key kept (all inside retention).
    assert_eq!(numbers(t.path()), (0..=7).collect::<Vec<_>>());
}

#[test]
fn adopts_a_keystone_style_repository_without_losing_a_key() {
    let t = tmp();
    for (n, k) in [
        (0u64, fernet::Fernet::generate_key()),
        (4, fernet::Fernet::generate_key()),
        (5, fernet::Fernet::generate_key()),
    ] {
        std::fs::write(t.path().join(n.to_string()), k).unwrap();
    }
    let before = keys(t.path());
    let r = t.path().to_str().unwrap();
    let out = fernetd_ok(&["setup", "--key-repository", r]);
    assert!(out.stdout.contains("adopted"), "{}", out.stdout);
    assert_eq!(keys(t.path()), before);
    rotate_ok(r, &["--max-active-keys", "3"]);
    let after = keys(t.path());
    for (n, k) in &before {
        if *n > 0 {
            assert_eq!(after.get(n), Some(k), "adopted key {n} lost");
        }
    }
    assert_eq!(after[&6], before[&0]);
}

#[test]
fn completes_keystone_managed_crash_missing_zero() {
    // keystone-manage died between `rename 0 -> max+1` and `rename 0.tmp -> 0`.
    let t = tmp();
    let tmpkey = fernet::Fernet::generate_key();
    std::fs::write(t.path().join("1"), fernet::Fernet::generate_key()).unwrap();
    std::fs::write(t.path().join("2"), fernet::Fernet::generate_key()).unwrap();
    std::fs::write(t.path().join("0.tmp"), &tmpkey).unwrap();
    let out = fernetd_ok(&["setup", "--key-repository", t.path().to_str().unwrap()]);
    assert!(
        out.stderr.contains("interrupted keystone-manage rotation"),
        "{}",
        out.stderr
    );
    assert_eq!(keys(t.path())[&0], tmpkey);
    assert!(!t.path().join("0.tmp").exists());
}

#[test]
fn version_and_help() {
    let v = fernetd_ok(&["--version"]);
    assert!(v.stdout.starts_with("fernetd "));
    for cmd in ["setup", "rotate", "check", "plan"] {
        let h = fernetd_ok(&[cmd, "--help"]);
        assert!(h.stdout.contains("--key-repository"), "{cmd}");
    }
}

#[test]
fn unprivileged_setup_for_another_owner_fails_before_touching_disk() {
    let t = tmp();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let repo = t.path().join("keys");
    let args = [
        "setup",
        "--key-repository",
        repo.to_str().unwrap(),
        "--keystone-user",
        "0",
        "--keystone-group",
        "0",
    ];
    let out = if nix::unistd::geteuid().is_root() {
        // Run as nobody, who may not give files to root.
        Run::from(
            std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(bin())
                .args(args)
                .output()
                .expect("setpriv (util-linux)"),
        )
    } else {
        fernetd(&args)
    };
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("without root"), "{}", out.stderr);
    assert!(!repo.exists(), "directory created before the owner error");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin())
        .args(["plan", "--keystone-config", "/dev/null"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before fernetd writes
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `rotate --kind` and `plan --kind`: every configured repository by hand, credentials only
/// after their `pre_rotate` succeeded, receipts kept for their own expiration.
#[test]
fn rotate_and_plan_take_each_kind() {
    let t = tmp();
    let dir = |k: &str| t.path().join(k);
    let migrated = t.path().join("migrated");
    let cfg = t.path().join("f.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n\
             [tokens]\nkey_repository = \"{}\"\nexpiration = \"1h\"\nallow_expired_window = \"2d\"\n\
             [receipts]\nkey_repository = \"{}\"\nexpiration = \"5m\"\nmargin = \"1m\"\nschedule = \"1m\"\n\
             [credentials]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
             pre_rotate = [\"sh\", \"-c\", \"test -z \\\"$FAIL\\\" && echo $FERNETD_KIND >> {}\"]\n{VERIFY_PRIMARY}",
            dir("t").display(),
            dir("r").display(),
            dir("c").display(),
            migrated.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // Each set up as its kind: the credentials repository as tokens is refused.
    for (k, kind) in [("t", "tokens"), ("r", "receipts"), ("c", "credentials")] {
        fernetd_ok(&[
            "--config",
            c,
            "setup",
            "--kind",
            kind,
            "--key-repository",
            dir(k).to_str().unwrap(),
        ]);
    }
    // Receipts: Keystone never accepts an expired receipt, so no allow_expired_window.
    let plan = fernetd_ok(&["--config", c, "plan", "--kind", "receipts"]);
    assert!(
        plan.stdout.contains("6m = expiration 5m + margin 1m"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("required max_active_keys   8"),
        "{}",
        plan.stdout
    );
    let json = fernetd_ok(&["--config", c, "plan", "--kind", "receipts", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["kind"], "receipts");
    assert_eq!(v["retention_seconds"], 360);
    assert!(fernetd_ok(&["--config", c, "plan"])
        .stdout
        .contains("also configured: receipts, credentials"));

    let all = fernetd_ok(&["--config", c, "rotate", "--kind", "all"]);
    for k in ["tokens", "receipts", "credentials"] {
        assert!(all.stdout.contains(&format!("{k}: ")), "{}", all.stdout);
    }
    for k in ["t", "r", "c"] {
        assert_eq!(numbers(&dir(k)), vec![0, 1, 2], "{k}");
    }
    assert_eq!(std::fs::read_to_string(&migrated).unwrap(), "credentials\n");

    // A failing pre_rotate: the credentials stay as they are, exit 2, one line naming it.
    let before = snapshot(&dir("c"));
    let out = Run::from(
        std::process::Command::new(bin())
            .args(["--config", c, "rotate", "--kind", "credentials"])
            .env("FAIL", "1")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("credentials: pre_rotate") && out.stderr.contains("nothing rotated"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(&dir("c")), before);
    // Only what was asked: receipts alone.
    fernetd_ok(&["--config", c, "rotate", "--kind", "receipts"]);
    assert_eq!(numbers(&dir("r")), vec![0, 1, 2, 3]);
    assert_eq!(numbers(&dir("t")), vec![0, 1, 2]);
}

/// A key 0 deleted outside fernetd is staged again, and not promoted in the same rotation: no
/// reader has held it yet. The next rotation promotes it.
#[test]
fn a_missing_key_0_is_staged_and_promoted_only_by_the_next_rotation() {
    let t = tmp();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let primary = keys(&repo)[&1].clone();
    std::fs::remove_file(repo.join("0")).unwrap();
    let out = fernetd_ok(&["rotate", "--key-repository", r]);
    assert!(
        out.stdout.contains("not rotated: key 0 was missing"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("key 0 was missing: staged a new key 0"),
        "{}",
        out.stderr
    );
    let ks = keys(&repo);
    assert_eq!(ks.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(ks[&1], primary, "the primary changed");
    let staged = ks[&0].clone();
    let out = fernetd_ok(&["rotate", "--key-repository", r]);
    assert!(
        out.stdout.contains("promoted to primary 2"),
        "{}",
        out.stdout
    );
    assert_eq!(keys(&repo)[&2], staged);
}

/// The README's table of problem codes is the code's own list (`problem::Code::ALL`), row for row,
/// each code linked to a section of docs/runbooks.md (tests/alerts.rs checks it is the right
/// one).
#[test]
fn the_readme_lists_every_problem_code_the_code_has() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let runbooks = std::fs::read_to_string(format!("{root}/docs/runbooks.md")).unwrap();
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let start = readme
        .find("<!-- codes:begin")
        .expect("README: no codes table");
    let end = readme
        .find("<!-- codes:end -->")
        .expect("README: no end of the codes table");
    // `| [`code`](docs/runbooks.md#anchor) | severity | what |` read as the link's anchor and
    // `| `code` | severity | what |`, the row the code's list gives.
    let mut rows = Vec::new();
    for line in readme[start..end].lines().filter(|l| l.starts_with("| [`")) {
        let (code, rest) = line["| [`".len()..]
            .split_once("`](docs/runbooks.md#")
            .unwrap_or_else(|| panic!("README: a code row without its runbook link: {line}"));
        let (anchor, rest) = rest.split_once(") |").unwrap();
        assert!(
            anchors.iter().any(|a| a == anchor),
            "README: {code} links to #{anchor}, no section of docs/runbooks.md"
        );
        rows.push(format!("| `{code}` |{rest}"));
    }
    let want: Vec<String> = fernetd::core::problem::Code::ALL
        .iter()
        .map(|c| format!("| `{c}` | {} | {} |", c.severity(), c.meaning()))
        .collect();
    assert_eq!(
        rows,
        want,
        "README.md's codes table differs from problem::Code::ALL; the table should read (each code \
         as [`code`](docs/runbooks.md#its-runbook)):\n{}",
        want.join("\n")
    );
}

/// A hostile environment gets an error naming the path, never a write elsewhere or a hang:
/// `.fernetd` or `.fernetd/copies` planted as a link to a directory the attacker wants written,
/// a FIFO or a huge file where fernetd's state is.
#[test]
fn planted_links_fifos_and_huge_files_are_errors_not_writes_or_hangs() {
    let t = tmp();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    // The victim: a directory (root's, in production) with a file named like fernetd's lock.
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("lock"), "victim").unwrap();
    let before = snapshot(&victim);
    let internal = repo.join(".fernetd");
    std::fs::rename(&internal, t.path().join("saved")).unwrap();
    std::os::unix::fs::symlink(&victim, &internal).unwrap();
    for cmd in ["setup", "rotate"] {
        let out = fernetd(&[cmd, "--key-repository", r]);
        assert_eq!(out.code, 2, "{cmd}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(".fernetd") && out.stderr.contains("symbolic link"),
            "{cmd}: {}",
            out.stderr
        );
        assert_eq!(out.error_lines(), 1, "{}", out.stderr);
        assert_eq!(snapshot(&victim), before, "{cmd} wrote through the link");
    }
    let check = fernetd(&["check", "--key-repository", r]);
    assert_eq!(check.code, 2);
    assert!(
        check.stdout.contains("[internal-not-a-directory]"),
        "{}",
        check.stdout
    );

    // .fernetd/copies planted: the repair copies are never written through it.
    std::fs::remove_file(&internal).unwrap();
    std::fs::rename(t.path().join("saved"), &internal).unwrap();
    let _ = std::fs::remove_dir_all(internal.join("copies"));
    std::os::unix::fs::symlink(&victim, internal.join("copies")).unwrap();
    let cfg = t.path().join("f.toml");
    std::fs::write(
        &cfg,
        format!("[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{r}\"\nrepair = true\n"),
    )
    .unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "daemon"], &[]);
    assert!(
        d.wait_log("copies: a symbolic link", std::time::Duration::from_secs(5)),
        "{}",
        d.log()
    );
    d.stop();
    assert_eq!(snapshot(&victim), before, "repair wrote through the link");
    std::fs::remove_file(internal.join("copies")).unwrap();

    // A FIFO where the state is: an error within a second, not a hang.
    let state = internal.join("state.json");
    std::fs::rename(&state, t.path().join("state.saved")).unwrap();
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for args in [
        vec!["rotate", "--key-repository", r],
        vec!["status", "--key-repository", r],
    ] {
        let began = std::time::Instant::now();
        let out = fernetd(&args);
        assert!(
            began.elapsed() < std::time::Duration::from_secs(3),
            "{args:?} hung"
        );
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            (out.stderr + &out.stdout).contains("state.json: not a regular file"),
            "{args:?}"
        );
    }
    // A huge one: refused by its size, never read into memory.
    std::fs::remove_file(&state).unwrap();
    std::fs::File::create(&state)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let out = fernetd(&["rotate", "--key-repository", r]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("1073741824 bytes: more than"),
        "{}",
        out.stderr
    );
}

/// A rotation whose keys landed but whose history could not be saved says so, with its own
/// exit status (4), so that a timer or an operator does not take it for "nothing changed";
/// the next run records it and goes on.
#[test]
fn a_rotation_that_could_not_record_itself_says_what_happened_on_disk() {
    let t = tmp();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let staged = keys(&repo)[&0].clone();
    // Saving the history fails (as on a full disk): its temporary file cannot be written.
    let blocker = repo.join(".fernetd/state.json.tmp");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let out = fernetd(&["rotate", "--key-repository", r]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "rotated (key 0 promoted to primary 2, a new key 0 staged), but the history could not be saved"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.error_lines(), 1, "{}", out.stderr);
    let ks = keys(&repo);
    assert_eq!(ks.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(ks[&2], staged, "the promoted key is the staged one");
    std::fs::remove_dir_all(&blocker).unwrap();
    // The next run records the rotation it finds, and rotates once more.
    let next = fernetd_ok(&["rotate", "--key-repository", r]);
    assert!(
        next.stdout.contains("promoted to primary 3"),
        "{}",
        next.stdout
    );
    assert_eq!(numbers(&repo), vec![0, 1, 2, 3]);
}

/// The README's table of exit statuses says what the binary does: each command's codes are
/// the constants and levels the code uses.
#[test]
fn the_readme_exit_statuses_are_the_codes() {
    use fernetd::status::Level;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = |cmd: &str| {
        readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{cmd}` |")))
            .unwrap_or_else(|| panic!("README: no exit status row for {cmd}"))
            .to_string()
    };
    let status = row("status");
    for (level, word) in [
        (Level::Ok, "ok"),
        (Level::Warning, "warning"),
        (Level::Critical, "critical"),
    ] {
        assert!(
            status.contains(&format!("{} {word}", level.exit_code())),
            "{status}"
        );
    }
    assert!(row("plan").contains(&format!("{} the configured", fernetd::cli::EXIT_UNSAFE)));
    assert!(row("rotate").contains(&format!(
        "{} rotated but",
        fernetd::cli::EXIT_ROTATED_UNSAVED
    )));
    assert!(row("rotate").contains(&format!("{} not rotated", fernetd::cli::EXIT_ERROR)));
    assert!(row("rotate").contains(&format!(
        "{} rotated (or deferred) but a key is lost",
        fernetd::cli::EXIT_KEY_LOST
    )));
    assert!(row("setup").contains(&format!(
        "{} done but a key is lost",
        fernetd::cli::EXIT_KEY_LOST
    )));
    assert!(row("check-config").contains(&format!("{} invalid", fernetd::cli::EXIT_ERROR)));
    let every = readme
        .lines()
        .find(|l| l.starts_with("| every command |"))
        .expect("README: no exit status row for every command");
    assert!(
        every.contains(&format!("{} on an error", fernetd::cli::EXIT_ERROR)),
        "{every}"
    );
}

/// A huge max_active_keys (set to "never purge") is safe, never a panic or "unsafe".
#[test]
fn a_huge_max_active_keys_is_safe() {
    for n in ["18446744073709551615", "10000000"] {
        let out = fernetd(&[
            "plan",
            "--key-repository",
            "/nonexistent/keys",
            "--max-active-keys",
            n,
        ]);
        assert_eq!(out.code, 0, "{n}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(&format!("{n}: safe")), "{}", out.stdout);
    }
}

/// A state file edited to date every key years back (and stripped of the boot clock's
/// stamps) does not make a rotation purge keys demoted seconds ago: no recorded time of a
/// key on disk is earlier than its file's last change (`st_ctime`, set by the kernel only).
#[test]
fn an_edited_state_file_cannot_age_keys_past_their_files() {
    let t = tmp();
    let r = t.path().to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let hour = [
        "--expiration",
        "1h",
        "--allow-expired-window",
        "0",
        "--margin",
        "0",
    ];
    for _ in 0..2 {
        rotate_ok(r, &hour);
    }
    let state = t.path().join(".fernetd/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    for (n, rec) in v["keys"].as_object_mut().unwrap() {
        let rec = rec.as_object_mut().unwrap();
        rec.remove("since_boot");
        for field in ["created", "promoted", "demoted", "first_seen"] {
            if rec.contains_key(field) && !(n == "0" && field != "first_seen") {
                rec.insert(field.into(), "2020-01-01T00:00:00Z".into());
            }
        }
    }
    std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();
    let out = rotate_ok(r, &[["--max-active-keys", "3"].as_slice(), &hour].concat());
    assert_eq!(numbers(t.path()), vec![0, 1, 2, 3, 4], "{}", out.stderr);
    assert!(
        out.stderr.contains("kept key 1") && out.stderr.contains("kept key 2"),
        "{}",
        out.stderr
    );
}
