//! Keys lost outside fernetd while tokens they encrypted are still valid, through the real
//! binary: without a daemon (the timer's `fernetd rotate`), with `repair = true` on a daemon
//! that starts after the deletion, and a state file `check` cannot read.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// `fernetd --config CFG ARGS...`.
fn with(cfg: &Path, args: &[&str]) -> Run {
    let mut a = vec!["--config", cfg.to_str().unwrap()];
    a.extend_from_slice(args);
    fernetd(&a)
}

/// A configuration for `dir` with Keystone's lifetimes (every demoted key is kept about two
/// days) and `extra` lines in its `[tokens]` section.
fn config(t: &Path, dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = t.join("fernetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\nschedule = \"1h\"\nmax_active_keys = 52\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// The repair copies' names (fingerprints).
fn copies(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(".fernetd/copies"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Key number -> fingerprint, as `check --json` says them.
fn fingerprints(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let out = fernetd(&["check", "--key-repository", dir.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["fingerprints"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, f)| (k.clone(), f.as_str().unwrap().to_string()))
        .collect()
}

const LOST: &str = "key 1 vanished or changed while tokens it encrypted are still valid (until ";

/// The timer deployment: no daemon, `fernetd rotate` on a timer. A key deleted by
/// hand while its tokens live is critical in `status` (exit 2, the key and until when),
/// invalid in `check`, and `rotate` rotates but exits 3 with the same line, every run until
/// the window closes.
#[test]
fn a_key_lost_without_a_daemon_is_said_by_status_check_and_rotate() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let cfg = config(t.path(), &dir, "");
    assert_eq!(with(&cfg, &["setup"]).code, 0);
    for _ in 0..2 {
        let r = with(&cfg, &["rotate"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    // Key 1 was primary a moment ago: its tokens live for days.
    std::fs::remove_file(dir.join("1")).unwrap();

    let st = with(&cfg, &["status"]);
    assert_eq!(st.code, 2, "{}", st.stdout);
    assert!(
        st.stdout.contains("CRITICAL") && st.stdout.contains(LOST),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("[key-lost-in-retention]"),
        "{}",
        st.stdout
    );
    // status writes nothing: the state file still holds key 1 as it was.
    let state = std::fs::read_to_string(dir.join(".fernetd/state.json")).unwrap();
    assert!(!state.contains("lost_until"), "{state}");

    let ck = with(&cfg, &["check"]);
    assert_eq!(ck.code, 2, "{}", ck.stdout);
    assert!(
        ck.stdout.contains(LOST) && ck.stdout.contains("[key-lost-in-retention]"),
        "{}",
        ck.stdout
    );
    let json = with(&cfg, &["check", "--json"]);
    assert!(
        json.stdout.contains("\"key-lost-in-retention\""),
        "{}",
        json.stdout
    );
    assert!(json.stdout.contains("\"invalid\""), "{}", json.stdout);

    // The timer's rotation: it rotates (the schedule is kept), and says the loss.
    let until = |text: &str| {
        let at = text.find(LOST).unwrap() + LOST.len();
        text[at..at + 20].to_string()
    };
    let said = until(&st.stdout);
    for run in 0..2 {
        let r = with(&cfg, &["rotate"]);
        assert_eq!(r.code, 3, "run {run}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("rotated: key 0 promoted"), "{}", r.stdout);
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line: {}", r.stderr));
        assert!(
            line.contains(LOST) && line.ends_with("[key-lost-in-retention]"),
            "{line}"
        );
        // Retention counted from the moment the key went: two days from now, not less.
        assert!(until(line).as_str() >= said.as_str(), "{line} vs {said}");
        let st = with(&cfg, &["status"]);
        assert_eq!(st.code, 2, "run {run}: {}", st.stdout);
        assert!(st.stdout.contains(LOST), "{}", st.stdout);
        assert_eq!(with(&cfg, &["check"]).code, 2);
    }
    // `setup` says it too.
    let s = with(&cfg, &["setup"]);
    assert_eq!(s.code, 3, "{}{}", s.stdout, s.stderr);
    assert!(s.stderr.contains(LOST), "{}", s.stderr);
}

/// A key whose window is over when it goes loses no token: nothing is reported, and a loss
/// stops being reported when its window closes.
#[test]
fn a_loss_is_reported_until_its_window_closes_and_not_after() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let keystone = t.path().join("keystone.conf");
    // Tokens live 2 s, no allow_expired window; margin 0.
    std::fs::write(
        &keystone,
        "[token]\nexpiration = 2\nallow_expired_window = 0\n",
    )
    .unwrap();
    let cfg = t.path().join("fernetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"{}\"\nschedule = \"1h\"\nmax_active_keys = 10\nmargin = \"0s\"\n",
            keystone.display(),
            dir.display()
        ),
    )
    .unwrap();
    assert_eq!(with(&cfg, &["setup"]).code, 0);
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    std::fs::remove_file(dir.join("1")).unwrap();
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert_eq!(with(&cfg, &["status"]).code, 2);
    std::thread::sleep(Duration::from_millis(2500));
    let st = with(&cfg, &["status"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert_eq!(with(&cfg, &["check"]).code, 0);
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Key 2 was demoted by that rotation more than 2 s ago: its removal loses nothing.
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::remove_file(dir.join("2")).unwrap();
    assert_eq!(with(&cfg, &["status"]).code, 0);
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// The repair case: a daemon with `repair = true` is stopped, key 1 deleted, the
/// daemon started. It restores key 1 from its copy and says so; every copy is still there.
#[test]
fn repair_restores_a_key_deleted_while_the_daemon_was_stopped() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let cfg = config(t.path(), &dir, "repair = true\n");
    assert_eq!(with(&cfg, &["setup"]).code, 0);
    assert_eq!(with(&cfg, &["rotate"]).code, 0);
    let c = cfg.to_str().unwrap();
    let d = Daemon::start(&["--config", c, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
    d.stop();
    let original = keys(&dir);
    let before = copies(&dir);
    assert_eq!(before.len(), 3, "{before:?}");

    std::fs::remove_file(dir.join("1")).unwrap();
    let d = Daemon::start(&["--config", c, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
    assert!(
        d.wait_log("restored key 1 from fernetd's copy", Duration::from_secs(3)),
        "{}",
        d.log()
    );
    assert_eq!(keys(&dir), original);
    assert_eq!(copies(&dir), before, "a copy was dropped");
    assert!(!d.log().contains("vanished or changed"), "{}", d.log());
    assert!(
        !d.log().contains("disappeared outside fernetd"),
        "{}",
        d.log()
    );
    // It repaired the repository it found, and created nothing.
    assert!(!d.log().contains(": created "), "{}", d.log());
    let st = with(&cfg, &["status"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    d.stop();
    assert_eq!(copies(&dir), before);
}

/// The timer with `repair = true`: `fernetd rotate` restores a deleted key before it
/// rotates, and its copy stays.
#[test]
fn repair_by_the_timers_rotate() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let cfg = config(t.path(), &dir, "repair = true\n");
    assert_eq!(with(&cfg, &["setup"]).code, 0);
    assert_eq!(with(&cfg, &["rotate"]).code, 0);
    let key1 = keys(&dir)[&1].clone();
    std::fs::remove_file(dir.join("1")).unwrap();
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("restored key 1 from fernetd's copy"),
        "{}",
        r.stderr
    );
    assert_eq!(keys(&dir)[&1], key1);
    assert_eq!(copies(&dir).len(), 4);
    assert_eq!(with(&cfg, &["status"]).code, 0);
}

/// A key replaced by another valid key outside fernetd: the loss is critical, and the copy
/// of the replaced material stays (fernetd did not purge it; its tokens still live). The
/// key now under that number is not overwritten (fernetd has no history for it).
#[test]
fn a_replaced_keys_copy_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let cfg = config(t.path(), &dir, "repair = true\n");
    assert_eq!(with(&cfg, &["setup"]).code, 0);
    assert_eq!(with(&cfg, &["rotate"]).code, 0);
    let old = fingerprints(&dir)["1"].clone();
    assert!(copies(&dir).contains(&old));
    let other = fernet::Fernet::generate_key();
    std::fs::write(dir.join("1"), &other).unwrap();

    let st = with(&cfg, &["status"]);
    assert_eq!(st.code, 2, "{}", st.stdout);
    assert!(st.stdout.contains(LOST), "{}", st.stdout);
    // The daemon's start path (setup, then it watches).
    let c = cfg.to_str().unwrap();
    let d = Daemon::start(&["--config", c, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
    assert!(
        d.wait_log("key-lost-in-retention", Duration::from_secs(3)),
        "{}",
        d.log()
    );
    d.stop();
    assert!(
        copies(&dir).contains(&old),
        "the replaced key's copy was dropped"
    );
    assert_eq!(keys(&dir)[&1], other);
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(
        copies(&dir).contains(&old),
        "the replaced key's copy was dropped"
    );
    assert_eq!(with(&cfg, &["status"]).code, 2);
}

/// `check` on a repository whose state file is a FIFO: `state-unreadable`, as `status`
/// says it, and not healthy.
#[test]
fn check_reports_a_state_file_it_cannot_read() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    let r = dir.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let state = dir.join(".fernetd/state.json");
    std::fs::remove_file(&state).unwrap();
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let ck = fernetd(&["check", "--key-repository", r]);
    assert_eq!(ck.code, 2, "{}{}", ck.stdout, ck.stderr);
    assert!(ck.stdout.contains("[state-unreadable]"), "{}", ck.stdout);
    assert!(ck.stdout.contains("state.json"), "{}", ck.stdout);
    let st = fernetd(&["status", "--key-repository", r]);
    assert_eq!(st.code, 2, "{}", st.stdout);
    assert!(st.stdout.contains("[state-unreadable]"), "{}", st.stdout);
}

/// Runs the binary with libfaketime moving the wall clock by `offset` (`-1d`), leaving the
/// boot clock as it is (an NTP step back, a VM resumed from an old snapshot).
fn with_at(offset: &str, cfg: &Path, args: &[&str]) -> Run {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "libfaketime is required (Debian's faketime; scripts/deps installs it)"
    );
    let mut a = vec!["--config", cfg.to_str().unwrap()];
    a.extend_from_slice(args);
    let out = std::process::Command::new(bin())
        .args(&a)
        .env_remove("FERNETD_CONFIG")
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1")
        .output()
        .unwrap();
    Run::from(out)
}

/// Keys 0-3, primary 3, with `extra` in the configuration.
fn four_keys(t: &Path, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = t.join("keys");
    let cfg = config(t, &dir, extra);
    rotate_twice(&dir, &cfg);
    (dir, cfg)
}

/// `setup` and two rotations: keys 0-3, primary 3.
fn rotate_twice(dir: &Path, cfg: &Path) {
    assert_eq!(with(cfg, &["setup"]).code, 0);
    for _ in 0..2 {
        let r = with(cfg, &["rotate"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    assert_eq!(
        keys(dir).keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

/// Keys 0-3, primary 3, tokens that live an hour (no allow_expired window, no margin), a
/// daily schedule, `repair` as given.
fn hour_window(t: &Path, repair: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = t.join("keys");
    let keystone = t.join("keystone.conf");
    std::fs::write(
        &keystone,
        "[token]\nexpiration = 3600\nallow_expired_window = 0\n",
    )
    .unwrap();
    let cfg = t.join("fernetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"{}\"\nschedule = \"1d\"\nmax_active_keys = 10\nmargin = \"0s\"\nrepair = {repair}\n",
            keystone.display(),
            dir.display()
        ),
    )
    .unwrap();
    rotate_twice(&dir, &cfg);
    (dir, cfg)
}

/// The "(until …)" of the first line of `text` that says `what`, to the minute.
fn until_of(text: &str, what: &str) -> String {
    let line = text.lines().find(|l| l.contains(what));
    let line = line.unwrap_or_else(|| panic!("no {what:?} in {text}"));
    let at = line.find("(until ").unwrap() + 7;
    line[at..at + 16].to_string()
}

const LOST_3: &str = "key 3 vanished or changed while tokens it encrypted are still valid";

/// The primary replaced outside fernetd with `repair = true`, then the state file deleted (as
/// the state-unreadable message advises for a broken one): the copy of the old primary is
/// the only evidence of the loss. It stays, and `status`, `check`, `setup`, `rotate` and the
/// daemon say the loss, naming the copy's fingerprint, until a whole retention from then.
#[test]
fn a_copy_the_state_file_forgot_is_kept_and_said() {
    let t = tempfile::tempdir().unwrap();
    let (dir, cfg) = four_keys(t.path(), "repair = true\n");
    let old = fingerprints(&dir)["3"].clone();
    std::fs::write(dir.join("3"), fernet::Fernet::generate_key()).unwrap();
    let s = with(&cfg, &["setup"]);
    assert_eq!(s.code, 3, "{}{}", s.stdout, s.stderr);
    assert!(s.stderr.contains(LOST_3), "{}", s.stderr);
    assert!(copies(&dir).contains(&old));

    std::fs::remove_file(dir.join(".fernetd/state.json")).unwrap();
    let unseen = format!("the key with fingerprint {old} left the disk unseen");
    let st = with(&cfg, &["status"]);
    assert_eq!(st.code, 2, "{}", st.stdout);
    assert!(
        st.stdout.contains(&unseen) && st.stdout.contains("[key-lost-in-retention]"),
        "{}",
        st.stdout
    );
    let ck = with(&cfg, &["check"]);
    assert_eq!(ck.code, 2, "{}", ck.stdout);
    assert!(ck.stdout.contains(&unseen), "{}", ck.stdout);
    for run in 0..2 {
        let s = with(&cfg, &["setup"]);
        assert_eq!(s.code, 3, "run {run}: {}{}", s.stdout, s.stderr);
        assert!(s.stderr.contains(&unseen), "{}", s.stderr);
        assert!(
            copies(&dir).contains(&old),
            "run {run}: the copy was dropped"
        );
    }
    let r = with(&cfg, &["rotate"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&unseen), "{}", r.stderr);
    assert!(copies(&dir).contains(&old), "the copy was dropped");
    // Recorded: the state file alone says it now.
    let state = std::fs::read_to_string(dir.join(".fernetd/state.json")).unwrap();
    assert!(state.contains(&old), "{state}");

    // The daemon, with the state file gone once more, at its start and its rotations.
    std::fs::remove_file(dir.join(".fernetd/state.json")).unwrap();
    let c = cfg.to_str().unwrap();
    let d = Daemon::start(&["--config", c, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
    assert!(d.wait_log(&unseen, Duration::from_secs(3)), "{}", d.log());
    d.stop();
    assert!(copies(&dir).contains(&old), "the daemon dropped the copy");
    assert_eq!(with(&cfg, &["status"]).code, 2);
}

/// The same without repair: no copy, nothing to keep; the adoption is not a loss.
#[test]
fn without_repair_a_deleted_state_file_is_an_adoption() {
    let t = tempfile::tempdir().unwrap();
    let (dir, cfg) = four_keys(t.path(), "");
    std::fs::write(dir.join("3"), fernet::Fernet::generate_key()).unwrap();
    assert_eq!(with(&cfg, &["setup"]).code, 3);
    std::fs::remove_file(dir.join(".fernetd/state.json")).unwrap();
    let s = with(&cfg, &["setup"]);
    assert_eq!(s.code, 0, "{}{}", s.stdout, s.stderr);
    assert!(copies(&dir).is_empty());
}

/// A loss recorded while the wall clock runs a day behind (stepped back) stays open by the
/// boot clock once it is right again, though its window (tokens live an hour) is shorter
/// than the step: `status` and `check` say it, `rotate` exits 3 and keeps the copy, and the
/// deadline said is no earlier than a whole window from the loss.
#[test]
fn a_loss_recorded_by_a_clock_stepped_back_stays_open() {
    for repair in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (dir, cfg) = hour_window(t.path(), repair);
        let old = fingerprints(&dir)["3"].clone();
        // Repair restores a removed key; a replaced one it cannot (its number is taken).
        match repair {
            true => std::fs::write(dir.join("3"), fernet::Fernet::generate_key()).unwrap(),
            false => std::fs::remove_file(dir.join("3")).unwrap(),
        }
        let s = with_at("-1d", &cfg, &["setup"]);
        assert_eq!(s.code, 3, "repair {repair}: {}{}", s.stdout, s.stderr);
        assert!(s.stderr.contains(LOST_3), "{}", s.stderr);
        // A whole window (an hour) from now, less the seconds this takes.
        let end = (chrono::Utc::now() + chrono::Duration::minutes(59))
            .format("%Y-%m-%dT%H:%M")
            .to_string();

        let st = with(&cfg, &["status"]);
        assert_eq!(st.code, 2, "repair {repair}: {}", st.stdout);
        assert!(
            until_of(&st.stdout, LOST_3) >= end,
            "{} vs {end}",
            st.stdout
        );
        let ck = with(&cfg, &["check"]);
        assert_eq!(ck.code, 2, "repair {repair}: {}", ck.stdout);
        assert!(ck.stdout.contains(LOST_3), "{}", ck.stdout);
        let r = with(&cfg, &["rotate"]);
        assert_eq!(r.code, 3, "repair {repair}: {}{}", r.stdout, r.stderr);
        if repair {
            assert!(
                copies(&dir).contains(&old),
                "the lost key's copy was dropped"
            );
        }
        // The daemon reads the record the same way, and records none that closes early.
        let c = cfg.to_str().unwrap();
        let d = Daemon::start(&["--config", c, "daemon"], &[]);
        assert!(d.wait_log("ready", Duration::from_secs(5)), "{}", d.log());
        assert!(d.wait_log(LOST_3, Duration::from_secs(3)), "{}", d.log());
        d.stop();
        if repair {
            assert!(copies(&dir).contains(&old), "the daemon dropped the copy");
        }
    }
}

/// The daemon's wall clock steps a day back, then the primary goes: the loss it records stays
/// open by the boot clock once the clock is right, for `status`, `check` and the next
/// `rotate`, and with repair the lost key's copy stays.
#[test]
fn a_daemon_stepped_back_records_a_loss_that_stays_open() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(Path::new(lib).exists(), "libfaketime is required");
    for repair in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (dir, cfg) = hour_window(t.path(), repair);
        let old = fingerprints(&dir)["3"].clone();
        // libfaketime reads the wall clock's offset from this file at every reading.
        let offset = t.path().join("offset");
        std::fs::write(&offset, "+0\n").unwrap();
        let d = Daemon::start(
            &["--config", cfg.to_str().unwrap(), "daemon"],
            &[
                ("LD_PRELOAD", lib),
                ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
                ("FAKETIME_NO_CACHE", "1"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        );
        assert!(d.wait_log("ready", Duration::from_secs(10)), "{}", d.log());
        std::fs::write(&offset, "-1d\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        match repair {
            true => std::fs::write(dir.join("3"), fernet::Fernet::generate_key()).unwrap(),
            false => std::fs::remove_file(dir.join("3")).unwrap(),
        }
        assert!(d.wait_log(LOST_3, Duration::from_secs(5)), "{}", d.log());
        d.stop();
        let end = (chrono::Utc::now() + chrono::Duration::minutes(59))
            .format("%Y-%m-%dT%H:%M")
            .to_string();
        let st = with(&cfg, &["status"]);
        assert_eq!(st.code, 2, "repair {repair}: {}", st.stdout);
        assert!(
            until_of(&st.stdout, LOST_3) >= end,
            "{} vs {end}",
            st.stdout
        );
        let ck = with(&cfg, &["check"]);
        assert_eq!(ck.code, 2, "repair {repair}: {}", ck.stdout);
        let r = with(&cfg, &["rotate"]);
        assert_eq!(r.code, 3, "repair {repair}: {}{}", r.stdout, r.stderr);
        if repair {
            assert!(
                copies(&dir).contains(&old),
                "the lost key's copy was dropped"
            );
        }
    }
}
