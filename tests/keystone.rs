//! Compatibility with the real Keystone code from PyPI (installed into `.venv` by the README's
//! test command, or the venv named by FERNETD_KEYSTONE_VENV). Without it these tests fail with
//! the command that installs it; they are never skipped.

mod common;
use common::keystone::{helper, pack, venv};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// SHA-256 of each key in Keystone's load order, as Keystone's own loader reports it.
fn keystone_load(dir: &Path) -> Vec<String> {
    let out = helper(&["load", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "keystone load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keystone_unpacks(dir: &Path, token: &str) -> bool {
    helper(&["unpack", dir.to_str().unwrap(), token])
        .status
        .success()
}

fn sha(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What Keystone should load: keys by number, descending.
fn expected_order(dir: &Path) -> Vec<String> {
    keys(dir).values().rev().map(|k| sha(k)).collect()
}

fn keystone_manage(dir: &Path, cmd: &str) -> std::process::Output {
    let conf = dir.parent().unwrap().join("keystone.conf");
    std::fs::write(
        &conf,
        format!(
            "[fernet_tokens]\nkey_repository = {d}\nmax_active_keys = 3\n[fernet_receipts]\nkey_repository = {d}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let (u, g) = (
        nix::unistd::getuid().to_string(),
        nix::unistd::getgid().to_string(),
    );
    Command::new(venv().join("bin/keystone-manage"))
        .arg("--config-file")
        .arg(&conf)
        .args([cmd, "--keystone-user", &u, "--keystone-group", &g])
        .output()
        .unwrap()
}

#[test]
fn keystone_loads_fernetd_keys_and_tokens_live_until_their_key_is_purged() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    assert_eq!(keystone_load(&repo), expected_order(&repo));
    assert_eq!(keystone_load(&repo).len(), 2);

    // Keystone packs with primary 1. Count-only purging with 3 keys drops key 1 at the
    // second rotation: the token must unpack exactly until then.
    let token = pack(&repo);
    rotate_ok(r, &["--max-active-keys", "3", "--force-purge"]);
    assert_eq!(keystone_load(&repo), expected_order(&repo));
    assert!(keys(&repo).contains_key(&1));
    assert!(
        keystone_unpacks(&repo, &token),
        "token lost while its key is present"
    );
    rotate_ok(r, &["--max-active-keys", "3", "--force-purge"]);
    assert!(!keys(&repo).contains_key(&1));
    assert!(
        !keystone_unpacks(&repo, &token),
        "token unpacked after its key was purged"
    );

    // With the retention guard (the default) the key of a fresh token is kept.
    let token = pack(&repo);
    let primary = *keys(&repo).keys().next_back().unwrap();
    for _ in 0..3 {
        rotate_ok(r, &["--max-active-keys", "3"]);
        assert!(keys(&repo).contains_key(&primary));
        assert!(
            keystone_unpacks(&repo, &token),
            "retention guard lost a live token's key"
        );
    }
    assert_eq!(keystone_load(&repo), expected_order(&repo));
}

#[test]
fn fernetd_adopts_a_keystone_manage_repository_without_losing_a_key() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    assert!(keystone_manage(&repo, "fernet_setup").status.success());
    assert!(keystone_manage(&repo, "fernet_rotate").status.success());
    let made = keys(&repo);
    assert_eq!(made.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let token = pack(&repo);

    let setup = fernetd_ok(&["setup", "--key-repository", r]);
    assert!(
        setup.stdout.contains("already initialized"),
        "{}",
        setup.stdout
    );
    assert_eq!(keys(&repo), made, "setup changed a keystone-made key");
    assert_eq!(fernetd(&["check", "--key-repository", r]).code, 0);

    rotate_ok(r, &["--max-active-keys", "3"]);
    let after = keys(&repo);
    assert_eq!(after[&3], made[&0], "staged key not promoted");
    for n in [1, 2] {
        assert_eq!(after[&n], made[&n], "adopted key {n} lost");
    }
    assert!(keystone_unpacks(&repo, &token));
    assert_eq!(keystone_load(&repo), expected_order(&repo));
}

#[test]
fn keystone_manage_rotates_a_fernetd_repository() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    rotate_ok(r, &[]);
    let before = keys(&repo);
    let out = keystone_manage(&repo, "fernet_rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = keys(&repo);
    assert_eq!(
        after[&3], before[&0],
        "keystone-manage did not promote fernetd's staged key"
    );
    assert!(
        repo.join(".fernetd/state.json").exists(),
        "keystone-manage removed fernetd's state"
    );
    // keystone-manage purged key 1 by count (max_active_keys 3), seconds after it was the
    // primary: its tokens still live, and that is the one problem `check` finds.
    let check = fernetd(&["check", "--key-repository", r]);
    assert_eq!(check.code, 2, "{}", check.stdout);
    let problems: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("warning:"))
        .collect();
    assert_eq!(problems.len(), 1, "{}", check.stdout);
    assert!(
        problems[0].contains("key 1 vanished or changed")
            && problems[0].ends_with("[key-lost-in-retention]"),
        "{}",
        check.stdout
    );

    // fernetd notices the rotation it did not make, rotates, and says the loss (exit 3).
    let rot = fernetd(&["rotate", "--key-repository", r, "--max-active-keys", "5"]);
    assert_eq!(rot.code, fernetd::cli::EXIT_KEY_LOST, "{}", rot.stderr);
    assert!(
        rot.stderr.contains("became primary 3 outside fernetd"),
        "{}",
        rot.stderr
    );
    assert!(
        rot.stderr.contains("key 1 vanished or changed"),
        "{}",
        rot.stderr
    );
    assert_eq!(keystone_load(&repo), expected_order(&repo));
}

/// Keystone's loader opens every regular file in the repository before looking at its name,
/// so one file the Keystone user cannot read breaks every token request. fernetd keeps its
/// files in a directory, which the loader skips.
#[test]
fn fernetd_internal_files_never_break_keystone_running_unprivileged() {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    let root = nix::unistd::geteuid().is_root();
    // Keys belong to the Keystone user (nobody when we are root, ourselves otherwise).
    let (ku, kg) = if root {
        ("65534".to_string(), "65534".to_string())
    } else {
        (
            nix::unistd::getuid().to_string(),
            nix::unistd::getgid().to_string(),
        )
    };
    fernetd_ok(&[
        "setup",
        "--key-repository",
        r,
        "--keystone-user",
        &ku,
        "--keystone-group",
        &kg,
    ]);
    // fernetd's files unreadable to the Keystone user: owned by root, or mode 000.
    let internal = repo.join(".fernetd");
    if root {
        Command::new("chown")
            .args(["-R", "0:0"])
            .arg(&internal)
            .status()
            .unwrap();
    } else {
        std::fs::set_permissions(&internal, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let load_as_keystone = || {
        let py = venv().join("bin/python");
        let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py");
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&py);
            c
        } else {
            Command::new(&py)
        };
        c.arg(&helper)
            .args(["load", r])
            .env("HOME", "/tmp")
            .output()
            .unwrap()
    };
    let ok = load_as_keystone();
    assert!(
        ok.status.success(),
        "Keystone failed to load: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let n: Vec<String> = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(n.len(), 2);

    // Control: the same loader fails on an unreadable regular file in the repository. This is
    // the hazard fernetd avoids, and proves the check above can fail.
    let junk = repo.join("state.json");
    std::fs::write(&junk, "{}").unwrap();
    if root {
        Command::new("chown")
            .arg("0:0")
            .arg(&junk)
            .status()
            .unwrap();
    }
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o000)).unwrap();
    let broken = load_as_keystone();
    assert!(
        !broken.status.success(),
        "control: an unreadable file should break Keystone's loader"
    );
    std::fs::set_permissions(&internal, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn daemon_detects_a_manual_keystone_manage_rotation() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    // Keystone's lifetimes, hourly rotations: the daemon itself does nothing in this test.
    let d = Daemon::start(&["daemon", "--key-repository", r, "--schedule", "1h"], &[]);
    assert!(
        d.wait_log("ready", std::time::Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let out = keystone_manage(&repo, "fernet_rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        d.wait_log("key 0 became primary 2 outside fernetd: this extra rotation shortens the retention window", std::time::Duration::from_secs(3)),
        "{}",
        d.log()
    );
    // The rotation is recorded: status dates it now, and the next one is planned from it.
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join(".fernetd/state.json")).unwrap()).unwrap();
    assert!(h["keys"]["2"]["promoted"].is_string(), "{h}");
    assert!(!d.log().contains("ERROR"), "{}", d.log());
    assert_eq!(d.stop().code(), Some(0));
}

/// Key names as Python's `int()` reads them: fernetd's parser agrees with `python3` on a
/// generated corpus (Unicode digits of many scripts, whitespace, signs, underscores, leading
/// zeros, overflow, near misses), and on a real repository Keystone's own loader and `fernetd
/// check` agree on which files are keys: every one Keystone would load that fernetd did not
/// write is an error that blocks rotation.
#[test]
fn key_names_are_read_as_pythons_int_reads_them() {
    // Pieces: ASCII and other decimal digits, separators Python strips or refuses, signs,
    // underscores, characters that look numeric but are not Nd (², Ⅻ, ٫), letters.
    let pieces = [
        "0",
        "1",
        "7",
        "9",
        "٠",
        "١",
        "٩",
        "۵",
        "५",
        "০",
        "๓",
        "０",
        "９",
        "𝟎",
        "𝟗",
        "𞥑",
        "_",
        "+",
        "-",
        " ",
        "\t",
        "\n",
        "\u{3000}",
        "\u{a0}",
        "\u{1c}",
        "\u{200b}",
        "²",
        "Ⅻ",
        "٫",
        "a",
        "e",
        "x",
        "00",
        "18446744073709551615",
        "99999999999999999999999999999999999999999",
    ];
    // A deterministic corpus: every piece, every pair, and a pseudo-random sample of longer
    // names (xorshift, fixed seed).
    let mut names: Vec<String> = pieces.iter().map(|p| p.to_string()).collect();
    for a in pieces {
        for b in pieces {
            names.push(format!("{a}{b}"));
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut name = String::new();
        for _ in 0..(2 + x % 5) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            name.push_str(pieces[(x % pieces.len() as u64) as usize]);
        }
        names.push(name);
    }
    let python: Vec<Option<String>> = common::keystone::helper_json("ints", &names);
    let mut disagree = Vec::new();
    for (name, py) in names.iter().zip(&python) {
        let ours = fernetd::repository::scan::python_int(name);
        let same = match (py, ours) {
            (None, None) => true,
            // Beyond i128 fernetd saturates; the name is a key either way.
            (Some(p), Some(o)) => {
                p == &o.to_string()
                    || (o.unsigned_abs() == i128::MAX as u128
                        && p.trim_start_matches('-').len() > 38)
            }
            _ => false,
        };
        if !same {
            disagree.push(format!("{name:?}: python {py:?}, fernetd {ours:?}"));
        }
    }
    eprintln!("{} names compared with python3's int()", names.len());
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree.join("\n")
    );

    // Keystone's loader and `fernetd check` on one repository.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let r = dir.to_str().unwrap();
    common::fernetd_ok(&["setup", "--key-repository", r]);
    let key = std::fs::read_to_string(dir.join("1")).unwrap();
    for name in [
        "١٠٠", "٠٧", "𝟗", " 3", "4\n", "5_0", "+6", "²", "Ⅻ", "1.0", "x7",
    ] {
        std::fs::write(dir.join(name), &key).unwrap();
    }
    let out = common::keystone::helper(&["key-files", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    let check = common::fernetd(&["check", "--key-repository", r, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    let flagged: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "non-canonical-name")
        .map(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for (name, number) in &loaded {
        if name == "0" || name == "1" {
            continue;
        }
        assert!(
            flagged.contains(name),
            "Keystone loads {name:?} as key {number}, fernetd check does not say so: {}",
            check.stdout
        );
    }
    assert_eq!(flagged.len(), loaded.len() - 2, "{loaded:?} vs {flagged:?}");
    assert_eq!(check.code, 2);
    let rotate = common::fernetd(&["rotate", "--key-repository", r]);
    assert_eq!(
        rotate.code, 2,
        "rotated over names Keystone loads: {}",
        rotate.stdout
    );
}

/// The token lifetimes fernetd reads are the ones Keystone's own oslo.config reads from the same
/// files and variables: `keystone.conf` and the `keystone.conf.d/` beside it (later files and
/// repeated sections win, `*.conf` only, in name order), `OS_KEYSTONE_CONFIG_FILES` and
/// `OS_KEYSTONE_CONFIG_DIR` as Keystone's WSGI services read them, and oslo.config's
/// `OS_<GROUP>__<OPTION>` overrides, and a `[receipt] expiration` that outlasts the tokens in
/// the repository receipts share. 40 seeded random layouts; any disagreement fails.
#[test]
fn lifetimes_are_read_as_oslo_config_reads_them() {
    let t = tempfile::tempdir().unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let names = [
        "10-a.conf",
        "20-b.conf",
        "5.conf",
        "Z.conf",
        "a.conf.off",
        ".hidden.conf",
    ];
    let mut cases = Vec::new();
    for i in 0..40 {
        let ks = t.path().join(format!("case{i}/ks"));
        let d = ks.join("keystone.conf.d");
        std::fs::create_dir_all(&ks).unwrap();
        let section = |next: &mut dyn FnMut(u64) -> u64| {
            let mut s = String::new();
            if next(3) > 0 {
                s.push_str(&format!("[token]\nexpiration = {}\n", 60 + next(200_000)));
            }
            if next(2) > 0 {
                s.push_str(&format!(
                    "[DEFAULT]\ndebug = true\n[token]\nallow_expired_window = {}\n",
                    next(400_000)
                ));
            }
            if next(4) == 0 {
                s.push_str(&format!(
                    "[receipt]\nexpiration = {}\n",
                    1000 + next(100_000)
                ));
            }
            s
        };
        std::fs::write(ks.join("keystone.conf"), section(&mut next)).unwrap();
        std::fs::write(ks.join("extra.conf"), section(&mut next)).unwrap();
        if next(3) > 0 {
            std::fs::create_dir(&d).unwrap();
            for _ in 0..next(4) {
                let name = names[next(names.len() as u64) as usize];
                std::fs::write(d.join(name), section(&mut next)).unwrap();
            }
        }
        let mut env = serde_json::Map::new();
        if next(4) == 0 {
            env.insert(
                "OS_TOKEN__EXPIRATION".into(),
                (60 + next(90_000)).to_string().into(),
            );
        }
        if next(4) == 0 {
            env.insert(
                "OS_TOKEN__ALLOW_EXPIRED_WINDOW".into(),
                next(90_000).to_string().into(),
            );
        }
        if next(6) == 0 {
            let r = (1000 + next(100_000)).to_string();
            env.insert("OS_RECEIPT__EXPIRATION".into(), r.into());
        }
        let conf = ks.join("keystone.conf");
        let (args, flag) = if next(2) == 0 {
            let mut a = vec!["--config-file".to_string(), conf.display().to_string()];
            if d.is_dir() {
                a.extend(["--config-dir".to_string(), d.display().to_string()]);
            }
            (serde_json::json!(a), Some(conf.clone()))
        } else {
            env.insert(
                "OS_KEYSTONE_CONFIG_DIR".into(),
                ks.display().to_string().into(),
            );
            match next(4) {
                0 => {}
                1 => {
                    env.insert(
                        "OS_KEYSTONE_CONFIG_FILES".into(),
                        "keystone.conf; extra.conf".into(),
                    );
                }
                2 => {
                    let abs = ks.join("extra.conf").display().to_string();
                    env.insert("OS_KEYSTONE_CONFIG_FILES".into(), abs.into());
                }
                _ => {
                    env.insert(
                        "OS_KEYSTONE_CONFIG_FILES".into(),
                        "keystone.conf;missing.conf".into(),
                    );
                }
            }
            (serde_json::Value::Null, None)
        };
        cases.push((serde_json::json!({ "args": args, "env": env }), flag, env));
    }
    let input: Vec<&serde_json::Value> = cases.iter().map(|c| &c.0).collect();
    let oslo: Vec<serde_json::Value> = common::keystone::helper_json("lifetimes", &input);
    let (mut agreed, mut errors, mut receipts) = (0, 0, 0);
    for ((case, flag, env), oslo) in cases.iter().zip(&oslo) {
        let mut cmd = Command::new(bin());
        cmd.args([
            "plan",
            "--json",
            "--margin",
            "0",
            "--schedule",
            "1h",
            "--config",
            "/dev/null",
        ]);
        if let Some(f) = flag {
            cmd.arg("--keystone-config").arg(f);
        }
        for (k, v) in env {
            cmd.env(k, v.as_str().unwrap());
        }
        let out = cmd.output().unwrap();
        if oslo.get("error").is_some() {
            assert_eq!(
                out.status.code(),
                Some(2),
                "{case}: oslo.config refused it, fernetd did not"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            let named = err.contains("missing.conf") || err.contains("[receipt] expiration = ");
            assert!(named && err.lines().count() == 1, "{case}: {err}");
            errors += 1;
            continue;
        }
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours["expiration_seconds"], oslo["expiration"], "{case}");
        assert_eq!(
            ours["allow_expired_window_seconds"], oslo["allow_expired_window"],
            "{case}"
        );
        // The token repository is Keystone's receipt repository too (no [fernet_receipts]
        // key_repository): a configured receipt expiration counts when it is the longer.
        let tokens =
            oslo["expiration"].as_u64().unwrap() + oslo["allow_expired_window"].as_u64().unwrap();
        match ours["receipt_expiration_seconds"].as_u64() {
            Some(r) => {
                assert_eq!(Some(r), oslo["receipt_expiration"].as_u64(), "{case}");
                assert_eq!(
                    ours["retention_seconds"].as_u64(),
                    Some(tokens.max(r)),
                    "{case}"
                );
                receipts += 1;
            }
            None => {
                // Keystone's default, which fernetd does not count (generated values are >= 1000).
                assert_eq!(oslo["receipt_expiration"], 300, "{case}");
                assert_eq!(ours["retention_seconds"].as_u64(), Some(tokens), "{case}");
            }
        }
        agreed += 1;
    }
    // The generator must reach both outcomes, or the test proves less than it says.
    assert!(
        agreed >= 25 && errors >= 2 && receipts >= 4,
        "agreed {agreed}, errors {errors}, receipts {receipts}"
    );
}

/// Key files are read as Keystone reads them: Keystone's loader and cryptography's `Fernet`
/// against `Key::parse` on 4000 seeded contents (a real key respelled: line endings anywhere,
/// the standard alphabet, padding dropped or doubled, characters outside the alphabet, bytes
/// flipped, truncated or repeated). Same key (by fingerprint), same refusals.
#[test]
fn key_files_are_read_as_keystone_reads_them() {
    use base64::Engine as _;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let noise: &[&[u8]] = &[
        b"\n",
        b"\r\n",
        b" ",
        b"=",
        b"==",
        b"+",
        b"/",
        b"-",
        b"_",
        b"*",
        b"\t",
        "é".as_bytes(),
        b"\xff",
        b"A",
    ];
    let mut contents: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4000 {
        let k = fernetd::core::key::Key::generate().unwrap();
        let mut c = k.to_text().as_bytes().to_vec();
        for _ in 0..next(4) {
            if c.is_empty() {
                break;
            }
            match next(6) {
                0 => {
                    let at = next(c.len() as u64 + 1) as usize;
                    let n = noise[next(noise.len() as u64) as usize];
                    c.splice(at..at, n.iter().copied());
                }
                1 => {
                    let at = next(c.len() as u64) as usize;
                    c[at] = match c[at] {
                        b'-' => b'+',
                        b'_' => b'/',
                        b => b,
                    };
                }
                2 => c.truncate(next(c.len() as u64 + 1) as usize),
                3 => {
                    while c.last() == Some(&b'=') {
                        c.pop();
                    }
                }
                4 => {
                    let at = next(c.len() as u64) as usize;
                    c[at] ^= 1 << next(8);
                }
                _ => c.extend_from_slice(b"\n"),
            }
        }
        contents.push(c);
    }
    let input: Vec<String> = contents
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();
    let python: Vec<Option<String>> = common::keystone::helper_json("fernet-keys", &input);
    let (mut keys, mut refused) = (0, 0);
    for (c, py) in contents.iter().zip(&python) {
        let ours = match fernetd::core::key::Key::parse(c) {
            Ok(k) => Some(k.fingerprint().to_string()),
            Err(fernetd::core::key::KeyFormatError::Empty) => Some("empty".to_string()),
            Err(_) => None,
        };
        assert_eq!(&ours, py, "content {:?}", String::from_utf8_lossy(c).len());
        if ours.is_some() {
            keys += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        keys > 1000 && refused > 500,
        "keys {keys}, refused {refused}"
    );
}
