//! Keystone's credentials through credential key rotations, with Keystone's own code on SQLite:
//! hundreds of credentials made by Keystone's credential manager, then the races that lost them
//! (issue 24), each followed by listing every credential through Keystone. Zero may be lost.
//!
//! `FERNETD_UNDER_TEST=/path/to/fernetd` runs the same races against another build (one
//! without `[credentials] verify` gets a configuration without it): the figures an older
//! fernetd loses are what these tests exist for.

mod common;
use common::keystone::venv;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many credentials each test makes.
const CREDENTIALS: usize = 300;

/// The fernetd these races run: this build, or `FERNETD_UNDER_TEST`.
fn under_test() -> (PathBuf, bool) {
    match std::env::var_os("FERNETD_UNDER_TEST") {
        Some(p) => (PathBuf::from(p), false),
        None => (bin(), true),
    }
}

/// One Keystone: its keystone.conf on SQLite (or PostgreSQL), token and credential repositories set up by
/// fernetd, the credentials made, and fernetd's configuration for it.
struct Site {
    _t: tempfile::TempDir,
    conf: PathBuf,
    cfg: PathBuf,
    creds: PathBuf,
}

fn keystone_manage(conf: &Path) -> String {
    format!(
        "{} --config-file {}",
        venv().join("bin/keystone-manage").display(),
        conf.display()
    )
}

impl Site {
    /// `pre_rotate` is the hook's shell command (`{migrate}` stands for Keystone's
    /// credential_migrate as this user); `schedule` the credentials' schedule.
    fn new(pre_rotate: &str, schedule: &str) -> Site {
        Site::on(None, pre_rotate, schedule)
    }

    /// [`Site::new`] with Keystone's database at `db` (an SQLAlchemy URL), or SQLite.
    fn on(db: Option<&str>, pre_rotate: &str, schedule: &str) -> Site {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let db = match db {
            Some(url) => url.to_string(),
            None => format!("sqlite:///{}", root.join("keystone.db").display()),
        };
        let (creds, tokens) = (root.join("credential-keys"), root.join("fernet-keys"));
        let conf = root.join("keystone.conf");
        std::fs::write(
            &conf,
            format!(
                "[database]\nconnection = {db}\n[credential]\nkey_repository = {}\n\
                 [fernet_tokens]\nkey_repository = {t}\n[fernet_receipts]\nkey_repository = {t}\n",
                creds.display(),
                t = tokens.display()
            ),
        )
        .unwrap();
        for dir in [&creds, &tokens] {
            fernetd_ok(&["setup", "--key-repository", dir.to_str().unwrap()]);
        }
        let migrate = format!(
            "{} credential_migrate --keystone-user \"$(id -un)\" --keystone-group \"$(id -gn)\" \
             2>/dev/null",
            keystone_manage(&conf)
        );
        let hook = pre_rotate.replace("{migrate}", &migrate);
        let verify = format!(
            "verify = [\"{}\", \"{}\", \"--config-file\", \"{}\"]\n",
            venv().join("bin/python").display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/keystone/verify-credentials")
                .display(),
            conf.display()
        );
        let cfg = root.join("fernetd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[keystone]\nconfig = {}\n\
                 [tokens]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
                 [credentials]\nkey_repository = \"{}\"\nschedule = \"{schedule}\"\n\
                 pre_rotate = [\"sh\", \"-c\", {}]\n{}",
                toml_string(conf.to_str().unwrap()),
                tokens.display(),
                creds.display(),
                toml_string(&hook),
                if under_test().1 {
                    verify
                } else {
                    String::new()
                }
            ),
        )
        .unwrap();
        let made = common::keystone::helper(&[
            "creds-make",
            conf.to_str().unwrap(),
            &CREDENTIALS.to_string(),
        ]);
        assert!(
            made.status.success(),
            "creds-make: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let s = Site {
            _t: t,
            conf,
            cfg,
            creds,
        };
        assert_eq!(s.lost(), (0, CREDENTIALS), "before any rotation");
        s
    }

    /// (lost, total): the credentials Keystone cannot decrypt, listed through its credential
    /// API.
    fn lost(&self) -> (usize, usize) {
        let out = common::keystone::helper(&["creds-check", self.conf.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["ok", n, ..] => (0, n.parse().unwrap()),
            ["lost", m, "of", n, ..] => {
                (m.parse().unwrap(), n.trim_end_matches(';').parse().unwrap())
            }
            _ => panic!(
                "creds-check: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `fernetd ARGS` with this site's configuration, started (not waited for); its output
    /// goes to a file (a daemon's log is long, and read at the end).
    fn spawn(&self, args: &[&str]) -> Started {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(under_test().0)
            .arg("--config")
            .arg(&self.cfg)
            .args(args)
            .env_remove("FERNETD_CONFIG")
            .env("FERNETD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Started { child, log }
    }

    fn rotate(&self) -> Started {
        self.spawn(&["rotate", "--kind", "credentials", "--manual"])
    }

    fn primary(&self) -> u64 {
        *keys(&self.creds).keys().next_back().unwrap_or(&0)
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A fernetd process and the file its output goes to.
struct Started {
    child: Child,
    log: tempfile::NamedTempFile,
}

/// Waits for the process (at most 3 minutes, then kills it); its exit code and output.
fn finish(mut s: Started) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = s.child.kill();
            break s.child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(s.log.path()).unwrap_or_default();
    (status.code().unwrap_or(-1), text)
}

/// Two `fernetd rotate --kind credentials` seconds apart: the second one's migration ran
/// under the primary the first one demoted. It must not purge that key.
#[test]
fn two_manual_rotations_seconds_apart_lose_no_credential() {
    let _s = serial();
    two_manual_rotations_seconds_apart_lose_no_credential_on(None);
}

/// [`two_manual_rotations_seconds_apart_lose_no_credential`] with Keystone on PostgreSQL.
#[test]
fn postgresql_two_manual_rotations_seconds_apart_lose_no_credential() {
    let _s = serial();
    if let Some(pg) = postgres() {
        two_manual_rotations_seconds_apart_lose_no_credential_on(Some(&pg.url));
    }
}

fn two_manual_rotations_seconds_apart_lose_no_credential_on(db: Option<&str>) {
    // A migration that takes a few seconds, as a large table does.
    let site = Site::on(db, "{migrate} && sleep 4", "@monthly");
    let first = site.rotate();
    std::thread::sleep(Duration::from_millis(1500));
    let second = site.rotate();
    let (a, b) = (finish(first), finish(second));
    let lost = site.lost();
    eprintln!(
        "first: {} {}\nsecond: {} {}\nkeys {:?}\nlost {lost:?}",
        a.0,
        tail(&a.1),
        b.0,
        tail(&b.1),
        keys(&site.creds).keys()
    );
    assert_eq!(lost, (0, CREDENTIALS), "credentials lost");
    assert!(site.primary() >= 2, "nothing rotated: {a:?} {b:?}");
    if under_test().1 {
        assert!(
            a.0 != 0 || b.0 != 0,
            "both rotations ran on one migration: {a:?} {b:?}"
        );
    }
}

/// A `pre_rotate` that migrates nothing: the exit status says success, Keystone's check does
/// not. Five rotations: the first is verified (every credential is on the primary), the others
/// must keep every key.
#[test]
fn a_pre_rotate_that_migrates_nothing_purges_nothing() {
    let _s = serial();
    a_pre_rotate_that_migrates_nothing_purges_nothing_on(None);
}

/// [`a_pre_rotate_that_migrates_nothing_purges_nothing`] with Keystone on PostgreSQL.
#[test]
fn postgresql_a_pre_rotate_that_migrates_nothing_purges_nothing() {
    let _s = serial();
    if let Some(pg) = postgres() {
        a_pre_rotate_that_migrates_nothing_purges_nothing_on(Some(&pg.url));
    }
}

fn a_pre_rotate_that_migrates_nothing_purges_nothing_on(db: Option<&str>) {
    let site = Site::on(db, "true", "@monthly");
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (code, text) = finish(site.rotate());
        if under_test().1 && code != 0 {
            assert!(text.contains("credentials-unverified"), "{text}");
        }
        codes.push(code);
    }
    let lost = site.lost();
    eprintln!(
        "exit codes {codes:?}, keys {:?}, lost {lost:?}",
        keys(&site.creds).keys()
    );
    assert_eq!(lost, (0, CREDENTIALS), "credentials lost");
    if under_test().1 {
        assert_eq!(codes[0], 0, "the first rotation is verified");
        assert!(codes[1..].iter().all(|&c| c != 0), "{codes:?}");
    }
}

/// The daemon rotates on its schedule while an operator runs `fernetd rotate --manual`.
#[test]
fn the_daemon_and_a_manual_rotation_lose_no_credential() {
    let _s = serial();
    the_daemon_and_a_manual_rotation_lose_no_credential_on(None);
}

/// [`the_daemon_and_a_manual_rotation_lose_no_credential`] with Keystone on PostgreSQL.
#[test]
fn postgresql_the_daemon_and_a_manual_rotation_lose_no_credential() {
    let _s = serial();
    if let Some(pg) = postgres() {
        the_daemon_and_a_manual_rotation_lose_no_credential_on(Some(&pg.url));
    }
}

fn the_daemon_and_a_manual_rotation_lose_no_credential_on(db: Option<&str>) {
    let site = Site::on(db, "{migrate} && sleep 3", "1s");
    let daemon = site.spawn(&["daemon"]);
    let mut manual = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(2500));
        manual.push(finish(site.rotate()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = stop(daemon);
    let lost = site.lost();
    eprintln!(
        "lost {lost:?}\nmanual: {:?}\nkeys {:?}\ndaemon: {}",
        manual.iter().map(|(c, t)| (c, tail(t))).collect::<Vec<_>>(),
        keys(&site.creds).keys(),
        tail(&log)
    );
    assert_eq!(lost, (0, CREDENTIALS), "credentials lost");
    assert!(site.primary() >= 2, "nothing rotated");
}

/// The daemon's migration is done and it is about to rotate when an operator runs Keystone's
/// own `keystone-manage credential_rotate` (its check passes: everything is on the primary).
/// The daemon's rotation would purge the key every credential is on: it must not.
#[test]
fn the_daemon_and_keystone_manage_credential_rotate_lose_no_credential() {
    let _s = serial();
    the_daemon_and_keystone_manage_credential_rotate_lose_no_credential_on(None);
}

/// [`the_daemon_and_keystone_manage_credential_rotate_lose_no_credential`] with Keystone on PostgreSQL.
#[test]
fn postgresql_the_daemon_and_keystone_manage_credential_rotate_lose_no_credential() {
    let _s = serial();
    if let Some(pg) = postgres() {
        the_daemon_and_keystone_manage_credential_rotate_lose_no_credential_on(Some(&pg.url));
    }
}

fn the_daemon_and_keystone_manage_credential_rotate_lose_no_credential_on(db: Option<&str>) {
    let site = Site::on(db, "{migrate} && sleep 8", "1s");
    let daemon = site.spawn(&["daemon"]);
    // The daemon's first migration is over (its hook sleeps on): Keystone rotates now.
    std::thread::sleep(Duration::from_secs(6));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} credential_rotate --keystone-user \"$(id -un)\" --keystone-group \"$(id -gn)\"",
            keystone_manage(&site.conf)
        ))
        .output()
        .unwrap();
    let km = String::from_utf8_lossy(&out.stderr).into_owned();
    std::thread::sleep(Duration::from_secs(10));
    let log = stop(daemon);
    let lost = site.lost();
    eprintln!(
        "keystone-manage credential_rotate: {:?} {}\nkeys {:?}\ndaemon: {}\nlost {lost:?}",
        out.status.code(),
        tail(&km),
        keys(&site.creds).keys(),
        tail(&log)
    );
    assert!(out.status.success(), "keystone-manage: {}", tail(&km));
    assert_eq!(lost, (0, CREDENTIALS), "credentials lost");
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.contains("hook sh: ") && !l.to_lowercase().contains("eventlet"))
        .collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// SIGTERM, then the daemon's log.
fn stop(s: Started) -> String {
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    finish(s).1
}

/// `[database] connection`'s fingerprint as `verify-credentials` prints it: the first 16 hex
/// digits of its SHA-256.
fn database_fingerprint(url: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(url.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rewrites the site's `pre_rotate` and `verify`, rotates three times (one after another) and
/// says how many credentials Keystone lost and the rotations' exit codes.
fn rotate_three_times_with(
    site: &Site,
    pre_rotate: &str,
    verify: &str,
) -> ((usize, usize), Vec<i32>) {
    let text = std::fs::read_to_string(&site.cfg).unwrap();
    let mut cfg: String = text
        .lines()
        .filter(|l| !l.starts_with("pre_rotate =") && !l.starts_with("verify ="))
        .map(|l| format!("{l}\n"))
        .collect();
    cfg = cfg.replace(
        "[credentials]\n",
        &format!(
            "[credentials]\npre_rotate = [\"sh\", \"-c\", {}]\n{verify}\n",
            toml_string(pre_rotate)
        ),
    );
    std::fs::write(&site.cfg, cfg).unwrap();
    let codes: Vec<i32> = (0..3)
        .map(|_| {
            let (code, log) = finish(site.rotate());
            eprintln!("rotate: {code} {}", tail(&log));
            code
        })
        .collect();
    (site.lost(), codes)
}

/// A migration and a verification run against another database than Keystone's (a copy of
/// it: Keystone's check passes there) approve nothing: the `verified:` line must name the
/// database fernetd reads from Keystone's configuration. Three rotations: 0 lost.
#[test]
fn a_verification_of_another_database_approves_no_purge() {
    let _s = serial();
    let site = Site::new("{migrate}", "@monthly");
    let root = site.conf.parent().unwrap().to_path_buf();
    let other_db = root.join("other.db");
    std::fs::copy(root.join("keystone.db"), &other_db).unwrap();
    let text = std::fs::read_to_string(&site.conf).unwrap();
    let other = root.join("other.conf");
    let from = format!("sqlite:///{}", root.join("keystone.db").display());
    std::fs::write(
        &other,
        text.replace(&from, &format!("sqlite:///{}", other_db.display())),
    )
    .unwrap();
    let migrate = format!(
        "{} credential_migrate --keystone-user \"$(id -un)\" --keystone-group \"$(id -gn)\" \
         2>/dev/null",
        keystone_manage(&other)
    );
    let verify = format!(
        "verify = [\"{}\", \"{}\", \"--config-file\", \"{}\"]",
        venv().join("bin/python").display(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/keystone/verify-credentials")
            .display(),
        other.display()
    );
    let (lost, codes) = rotate_three_times_with(&site, &migrate, &verify);
    assert_eq!(
        lost,
        (0, CREDENTIALS),
        "credentials lost (rotations: {codes:?})"
    );
    assert!(
        codes.iter().all(|c| *c != 0),
        "a rotation was approved: {codes:?}"
    );
}

/// A verify command that exits 0 with the right `primary_key_hash=` and database but no
/// `verified:` line ("5 of 9 credentials are not encrypted ...") approves nothing.
#[test]
fn a_verify_without_a_verified_line_approves_no_purge() {
    let _s = serial();
    let site = Site::new("true", "@monthly");
    let db = format!(
        "sqlite:///{}",
        site.conf.parent().unwrap().join("keystone.db").display()
    );
    let verify = format!(
        r#"verify = ["sh", "-c", 'printf "5 of 9 credentials are not encrypted with the primary key; primary_key_hash=%s database={}\n" "$(sha1sum < "$FERNETD_REPOSITORY/$FERNETD_PRIMARY" | cut -d" " -f1)"']"#,
        database_fingerprint(&db)
    );
    let (lost, codes) = rotate_three_times_with(&site, "true", &verify);
    assert_eq!(
        lost,
        (0, CREDENTIALS),
        "credentials lost (rotations: {codes:?})"
    );
    assert!(
        codes.iter().all(|c| *c != 0),
        "a rotation was approved: {codes:?}"
    );
}

/// The credential secondary counts as live until a verified migration moved everything off
/// it: deleted behind fernetd's back it is `key-lost-in-retention` (status critical) and
/// `repair` restores it, while a verified rotation purges the key below it as Keystone does.
#[test]
fn the_credential_secondary_is_live_until_a_verified_rotation() {
    let t = tempfile::tempdir().unwrap();
    let (creds, tokens) = (t.path().join("c"), t.path().join("t"));
    for dir in [&creds, &tokens] {
        fernetd_ok(&["setup", "--key-repository", dir.to_str().unwrap()]);
    }
    let cfg = t.path().join("f.toml");
    // repair keeps fernetd's own copy of each key.
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
             [credentials]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
             repair = true\npre_rotate = [\"true\"]\n{VERIFY_PRIMARY}",
            tokens.display(),
            creds.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for _ in 0..2 {
        fernetd_ok(&["--config", c, "rotate", "--kind", "credentials"]);
    }
    // Verified rotations purge what Keystone's count rule purges: key 1.
    assert_eq!(numbers(&creds), vec![0, 2, 3]);
    std::fs::remove_file(creds.join("2")).unwrap();
    let status = fernetd(&["--config", c, "status"]);
    assert_eq!(status.code, 2, "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains("key 2 vanished") && status.stdout.contains("key-lost-in-retention"),
        "{}",
        status.stdout
    );
    let out = fernetd_ok(&["--config", c, "rotate", "--kind", "credentials"]);
    assert!(out.stderr.contains("restored key 2"), "{}", out.stderr);
    assert_eq!(numbers(&creds), vec![0, 3, 4]);
}

/// `cluster init --kind credentials --force` from a node missing the credential secondary:
/// a node holding it neither drops it nor takes the set without `--force-purge` (the key the
/// stored credentials may be on is live for the cluster's input refusal too).
#[test]
fn a_forced_import_missing_the_secondary_removes_it_nowhere() {
    let etcd = common::etcd::Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let config = |node: &str| {
        let p = t.path().join(format!("{node}.toml"));
        std::fs::write(
            &p,
            format!(
                "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
                 [credentials]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
                 pre_rotate = [\"true\"]\n{VERIFY_PRIMARY}\
                 [cluster]\ninsecure_unsealed = true\nendpoints = [\"{}\"]\nprefix = \"/test\"\n\
                 node = \"{node}\"\n",
                t.path().join(node).join("tokens").display(),
                t.path().join(node).join("credentials").display(),
                etcd.endpoint
            ),
        )
        .unwrap();
        p
    };
    let (ca, cb) = (config("a"), config("b"));
    let (ca, cb) = (ca.to_str().unwrap(), cb.to_str().unwrap());
    let b = t.path().join("b/credentials");
    fernetd_ok(&["setup", "--key-repository", b.to_str().unwrap()]);
    fernetd_ok(&["--config", cb, "cluster", "init"]);
    fernetd_ok(&[
        "--config",
        cb,
        "cluster",
        "init",
        "--kind",
        "credentials",
        "--from",
        b.to_str().unwrap(),
    ]);
    fernetd_ok(&["--config", cb, "sync"]);
    // A verified rotation of the cluster's credential keys: key 1 becomes the secondary.
    fernetd_ok(&["--config", cb, "rotate", "--kind", "credentials"]);
    fernetd_ok(&["--config", cb, "sync"]);
    assert_eq!(numbers(&b), vec![0, 1, 2]);

    // Node a holds the primary and the staged key, not the secondary, and forces its set in.
    let a = t.path().join("a/credentials");
    std::fs::create_dir_all(&a).unwrap();
    for n in ["0", "2"] {
        std::fs::copy(b.join(n), a.join(n)).unwrap();
    }
    fernetd_ok(&[
        "--config",
        ca,
        "cluster",
        "init",
        "--kind",
        "credentials",
        "--from",
        a.to_str().unwrap(),
        "--force",
    ]);
    let out = fernetd(&["--config", cb, "sync"]);
    assert!(
        numbers(&b).contains(&1),
        "node b dropped the credential secondary: {}{}",
        out.stdout,
        out.stderr
    );
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("would remove keys") && out.stderr.contains("key 1 (until"),
        "{}",
        out.stderr
    );
}

/// An operator's `keystone-manage credential_rotate` (after its own migrate) purges the
/// secondary fernetd knew, outside fernetd. Keystone's check made that purge harmless (every
/// credential was on the primary), but fernetd did not see the check, only a live key gone:
/// the daemon watching and `status` report it lost (`key-lost-in-retention`), until the next
/// rotation's verified migration shows key 1 holds no credential; no credential is lost.
#[test]
fn keystone_manage_credential_rotate_purging_a_known_key_is_reported_lost() {
    let _s = serial();
    let site = Site::new("{migrate}", "@monthly");
    let (code, text) = finish(site.rotate());
    assert_eq!(code, 0, "{text}");
    assert_eq!(numbers(&site.creds), vec![0, 1, 2]);
    let daemon = site.spawn(&["daemon"]);
    std::thread::sleep(Duration::from_secs(3));
    let km = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} {cmd} --keystone-user \"$(id -un)\" --keystone-group \"$(id -gn)\"",
                keystone_manage(&site.conf)
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "keystone-manage {cmd}: {}",
            tail(&err)
        );
    };
    km("credential_migrate");
    km("credential_rotate");
    // Keystone promoted 0 to 3 and purged 1, the secondary fernetd knew.
    assert_eq!(numbers(&site.creds), vec![0, 2, 3]);
    std::thread::sleep(Duration::from_secs(3));
    let log = stop(daemon);
    let cfg = site.cfg.to_str().unwrap();
    let status = fernetd(&["--config", cfg, "status"]);
    let after = finish(site.rotate());
    let lost = site.lost();
    eprintln!(
        "daemon: {}\nstatus {}: {}\nrotate: {after:?}\nlost {lost:?}",
        tail(&log),
        status.code,
        status.stdout
    );
    assert_eq!(lost, (0, CREDENTIALS), "credentials lost");
    assert!(
        log.contains("key 1 vanished") && log.contains("key-lost-in-retention"),
        "the daemon did not report key 1 lost: {}",
        tail(&log)
    );
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(
        status.stdout.contains("key 1 vanished") && status.stdout.contains("key-lost-in-retention"),
        "{}",
        status.stdout
    );
    // What is at stake is stored credentials, not tokens.
    for said in [&status.stdout, &log] {
        assert!(
            said.contains("stored credentials may still be encrypted with it")
                && !said.contains("tokens it encrypted"),
            "{}",
            tail(said)
        );
    }
    // The rotation verified every credential on the primary (key 3) after the loss was
    // recorded: key 1 holds none, so the loss closes there and `status` is no longer critical
    // for it. (Before verified migrations closed losses, this rotation exited 3 naming key 1,
    // and status stayed critical "until 2126" after any number of them.)
    assert_eq!(after.0, 0, "{}", tail(&after.1));
    assert!(
        after
            .1
            .contains("key 1, lost before the verification began")
            && !after.1.contains("key-lost-in-retention"),
        "{}",
        tail(&after.1)
    );
    let cleared = fernetd(&["--config", cfg, "status"]);
    assert!(
        cleared.code != 2 && !cleared.stdout.contains("key-lost-in-retention"),
        "still critical after a verified rotation: {} {}",
        cleared.code,
        cleared.stdout
    );
    assert_eq!(site.lost(), (0, CREDENTIALS), "credentials lost");
}

/// `plan --kind credentials` says Keystone's 3 keys, takes a buffer above 3 (and `rotate`
/// keeps it), refuses fewer loudly (plan and rotate, exit 2, one line); a migration longer
/// than the tokens' 30 s hook timeout finishes under the credentials' default (10 minutes),
/// and `hook_timeout` shortens it.
#[test]
fn plan_says_three_credential_keys_and_the_hook_timeout_fits_a_long_migration() {
    let t = tempfile::tempdir().unwrap();
    let (creds, tokens) = (t.path().join("c"), t.path().join("t"));
    for dir in [&creds, &tokens] {
        fernetd_ok(&["setup", "--key-repository", dir.to_str().unwrap()]);
    }
    let config = |extra: &str| {
        let cfg = t.path().join("f.toml");
        std::fs::write(
            &cfg,
            format!(
                "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
                 [credentials]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
                 {extra}{VERIFY_PRIMARY}",
                tokens.display(),
                creds.display()
            ),
        )
        .unwrap();
        cfg.to_str().unwrap().to_string()
    };
    let c = config("pre_rotate = [\"true\"]\n");
    let plan = fernetd_ok(&["--config", &c, "plan", "--kind", "credentials"]);
    assert!(
        plan.stdout.contains("required max_active_keys   3")
            && plan.stdout.contains("max_active_keys            3: safe"),
        "{}",
        plan.stdout
    );
    let buffer = fernetd_ok(&[
        "--config",
        &c,
        "plan",
        "--kind",
        "credentials",
        "--max-active-keys",
        "5",
    ]);
    assert!(
        buffer.stdout.contains("max_active_keys            5: safe"),
        "{}",
        buffer.stdout
    );
    for cmd in ["plan", "rotate"] {
        let out = fernetd(&[
            "--config",
            &c,
            cmd,
            "--kind",
            "credentials",
            "--max-active-keys",
            "2",
        ]);
        assert_eq!(out.code, 2, "{cmd}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr
                .contains("max_active_keys 2: Keystone keeps 3 credential keys"),
            "{cmd}: {}",
            out.stderr
        );
    }
    assert_eq!(numbers(&creds), vec![0, 1], "a refused rotation rotated");
    // The buffer is honoured: five keys kept, not three.
    for _ in 0..5 {
        fernetd_ok(&[
            "--config",
            &c,
            "rotate",
            "--kind",
            "credentials",
            "--max-active-keys",
            "5",
        ]);
    }
    assert_eq!(numbers(&creds), vec![0, 3, 4, 5, 6]);

    // A 32 s migration: past the tokens' 30 s, inside the credentials' default.
    let c = config("pre_rotate = [\"sleep\", \"32\"]\n");
    let slow = fernetd(&["--config", &c, "rotate", "--kind", "credentials"]);
    assert_eq!(slow.code, 0, "{}{}", slow.stdout, slow.stderr);
    assert_eq!(*numbers(&creds).last().unwrap(), 7);
    let c = config("pre_rotate = [\"sleep\", \"5\"]\nhook_timeout = \"1s\"\n");
    let cut = fernetd(&["--config", &c, "rotate", "--kind", "credentials"]);
    assert_eq!(cut.code, 2, "{}{}", cut.stdout, cut.stderr);
    assert!(cut.stderr.contains("killed after 1s"), "{}", cut.stderr);
    assert_eq!(
        *numbers(&creds).last().unwrap(),
        7,
        "rotated past a killed migration"
    );
}

/// README's `[credentials]` example, extracted from README.md: the `toml` block's
/// `[credentials]` section, with the virtualenv `verify` line its comment offers in place of
/// `/usr/bin/python3` (Keystone here runs from a virtualenv, installed at `/opt/keystone`).
fn readme_credentials_section() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut section = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        if line == "[credentials]" {
            inside = true;
        } else if inside && (line.starts_with('[') || line.starts_with("```")) {
            break;
        }
        if inside {
            section.push(line);
        }
    }
    assert!(!section.is_empty(), "README has no [credentials] example");
    let venv_verify = section
        .iter()
        .find_map(|l| l.strip_prefix("# verify = [\"/opt/keystone/bin/python\""))
        .expect("README's [credentials] example offers a virtualenv verify line");
    section
        .iter()
        .filter(|l| !l.starts_with("verify ="))
        .map(|l| {
            if l.starts_with("# verify = [\"/opt/keystone/bin/python\"") {
                format!("verify = [\"/opt/keystone/bin/python\"{venv_verify}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// README's credentials example works as written, run as root and as `keystone`: its
/// `pre_rotate` (`keystone-manage credential_migrate --keystone-user keystone ...`) and the
/// packaged `verify` at `/usr/lib/fernetd/verify-credentials`, on `/etc/keystone`'s default
/// layout. The host is left alone: a private mount namespace overlays `/etc` (a `keystone`
/// user, `/etc/keystone`), `/usr/lib` (the packaged check), `/opt` (`/opt/keystone`, the
/// venv) and `/root` (passable, where this build's venv keeps its Python). Needs root
/// (unshare, overlay mounts).
#[test]
fn as_root_the_readme_credentials_example_works_as_root_and_as_keystone() {
    // scripts/test names as_root_ tests as not run without root; never pass without running.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (a mount namespace, overlay mounts)"
    );
    let _s = serial();
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let cfg = root.join("fernetd.toml");
    std::fs::write(&cfg, readme_credentials_section() + "\n").unwrap();
    // A uid and gid no account on the host uses.
    let taken = std::fs::read_to_string("/etc/passwd").unwrap()
        + &std::fs::read_to_string("/etc/group").unwrap();
    let id = (64000..65000)
        .find(|n| !taken.contains(&format!(":{n}:")))
        .unwrap();
    let script = format!(
        r#"set -eu
for d in etc usr/lib opt root; do
  mkdir -p "$T/upper/$d" "$T/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/upper/$d,workdir=$T/work/$d" "/$d"
done
# This build's virtualenv runs a Python under /root (0700 here): keystone may pass through.
chmod o+x /root
echo "keystone:x:{id}:{id}:Keystone:/var/lib/keystone:/usr/sbin/nologin" >> /etc/passwd
echo "keystone:x:{id}:" >> /etc/group
mkdir -p /etc/keystone /usr/lib/fernetd
cp "$CHECK" /usr/lib/fernetd/verify-credentials
ln -s "$VENV" /opt/keystone
printf '[database]\nconnection = sqlite:////etc/keystone/keystone.db\n' > /etc/keystone/keystone.conf
chown -R keystone:keystone /etc/keystone
export PATH="/opt/keystone/bin:$PATH"
as_keystone() {{ setpriv --reuid=keystone --regid=keystone --clear-groups "$@"; }}
for d in credential-keys fernet-keys; do
  "$FERNETD" setup --key-repository /etc/keystone/$d --keystone-user keystone --keystone-group keystone
done
as_keystone /opt/keystone/bin/python "$HELPER" creds-make /etc/keystone/keystone.conf {n} >/dev/null
for who in root keystone; do
  if [ $who = root ]; then run=""; else run=as_keystone; fi
  rc=0; $run "$FERNETD" --config "$CFG" rotate --kind credentials > "$T/$who.log" 2>&1 || rc=$?
  echo "rotate as $who: exit $rc"
  cat "$T/$who.log" | grep -v -i eventlet | tail -n 15 | sed 's/^/  | /'
  echo "keys as $who: $(ls /etc/keystone/credential-keys | sort -n | tr '\n' ' ')"
  echo "owners as $who: $(stat -c %U /etc/keystone/credential-keys/* | sort -u | tr '\n' ' ')"
  echo "check as $who: $(as_keystone /opt/keystone/bin/python "$HELPER" creds-check /etc/keystone/keystone.conf 2>/dev/null)"
done
"#,
        n = 50,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("T", root)
        .env("CFG", &cfg)
        .env("FERNETD", under_test().0)
        .env("VENV", venv())
        .env(
            "CHECK",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/keystone/verify-credentials"),
        )
        .env(
            "HELPER",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/helper.py"),
        )
        .env_remove("FERNETD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "config:\n{}\n{text}{}",
        std::fs::read_to_string(&cfg).unwrap(),
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    assert!(out.status.success(), "the namespace's script failed");
    for (who, keys) in [("root", "0 1 2 "), ("keystone", "0 2 3 ")] {
        for want in [
            format!("rotate as {who}: exit 0"),
            format!("keys as {who}: {keys}"),
            format!("owners as {who}: keystone \n"),
            format!("check as {who}: ok 50"),
        ] {
            assert!(text.contains(&want), "wanted '{}'", want.trim_end());
        }
    }
}

/// Polls the started process's log until it holds `needle` `count` times, at most `secs`.
fn wait_log(s: &Started, needle: &str, count: usize, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(s.log.path()).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Two daemons on real etcd, one Keystone database. Node b stops (SIGSTOP: still a member, its
/// Keystone still serving) while leader a rotates the credential keys: a promotes the staged
/// key b holds, then its next rotation, migrated and verified, waits at the gate for b. Right
/// then b's Keystone stores credentials with b's primary, which is a's secondary. b returns, the
/// gate opens: a must migrate again (never reuse a migration across a gate wait) before it
/// purges that key. Zero lost, listed through Keystone on both nodes afterwards.
#[test]
fn the_cluster_gate_waiting_on_a_lagging_node_never_reuses_a_migration() {
    let _s = serial();
    let etcd = common::etcd::Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("keystone.db");
    let node = |name: &str| {
        let dir = t.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let creds = dir.join("credentials");
        let conf = dir.join("keystone.conf");
        std::fs::write(
            &conf,
            format!(
                "[database]\nconnection = sqlite:///{}\n[credential]\nkey_repository = {}\n\
                 [fernet_tokens]\nkey_repository = {t}\n[fernet_receipts]\nkey_repository = {t}\n",
                db.display(),
                creds.display(),
                t = dir.join("tokens").display()
            ),
        )
        .unwrap();
        let migrate = format!(
            "{} credential_migrate --keystone-user \"$(id -un)\" --keystone-group \"$(id -gn)\" \
             2>/dev/null",
            keystone_manage(&conf)
        );
        let verify = format!(
            "verify = [\"{}\", \"{}\", \"--config-file\", \"{}\"]\n",
            venv().join("bin/python").display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/keystone/verify-credentials")
                .display(),
            conf.display()
        );
        let cfg = dir.join("fernetd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[keystone]\nconfig = {}\n[tokens]\nkey_repository = \"{}\"\n\
                 schedule = \"@monthly\"\n[credentials]\nkey_repository = \"{}\"\n\
                 schedule = \"2s\"\npre_rotate = [\"sh\", \"-c\", {}]\n{}\
                 [cluster]\ninsecure_unsealed = true\nendpoints = [\"{}\"]\nprefix = \"/test\"\n\
                 node = \"{name}\"\nlease_ttl = \"2s\"\ndial_timeout = \"2s\"\n\
                 request_timeout = \"2s\"\ngate_deadline = \"3s\"\n",
                toml_string(conf.to_str().unwrap()),
                dir.join("tokens").display(),
                creds.display(),
                toml_string(&migrate),
                if under_test().1 {
                    verify
                } else {
                    String::new()
                },
                etcd.endpoint
            ),
        )
        .unwrap();
        (cfg, conf, creds)
    };
    let (ca, conf_a, creds_a) = node("a");
    let (cb, conf_b, creds_b) = node("b");
    let run = |cfg: &Path, args: &[&str]| {
        let out = Command::new(under_test().0)
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env_remove("FERNETD_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() || err.contains("already holds a key set"),
            "{args:?}: {err}"
        );
    };
    run(&ca, &["cluster", "init"]);
    run(&ca, &["cluster", "init", "--kind", "credentials"]);
    run(&ca, &["sync"]);
    run(&cb, &["sync"]);
    let make = |conf: &Path, n: usize| {
        let made =
            common::keystone::helper(&["creds-make", conf.to_str().unwrap(), &n.to_string()]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    let check = |conf: &Path| {
        let out = common::keystone::helper(&["creds-check", conf.to_str().unwrap()]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    make(&conf_a, 100);
    assert_eq!(check(&conf_a), "ok 100");

    let spawn = |cfg: &Path| {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(under_test().0)
            .arg("--config")
            .arg(cfg)
            .arg("daemon")
            .env_remove("FERNETD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env("FERNETD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Started { child, log }
    };
    let a = spawn(&ca);
    assert!(wait_log(&a, "leading", 1, 30), "a never led");
    let b = spawn(&cb);
    // b a member of the credentials' cluster: it acknowledged a key set (the gate waits only
    // for members).
    let acked = |s: &Started| {
        let text = std::fs::read_to_string(s.log.path()).unwrap_or_default();
        text.contains("credentials: in step with the cluster's key set")
            || text.contains("credentials: applied the cluster's key set")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked(&b) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(acked(&b), "b never acknowledged the credentials' key set");
    let b_pid = nix::unistd::Pid::from_raw(b.child.id() as i32);
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let blocked = "node b has not applied the staged key";
    let waited = wait_log(&a, blocked, 1, 120);
    let lagging = keys(&creds_b);
    let held = keys(&creds_a);
    // b's Keystone stores credentials with b's primary, a's secondary, during the gate wait.
    make(&conf_b, 20);
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let top = *held.keys().next_back().unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline && numbers(&creds_a).last().is_none_or(|&n| n <= top) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rotated = numbers(&creds_a);
    // b catches up with the rotation before the check reads its keys.
    std::thread::sleep(Duration::from_secs(4));
    let (la, lb) = (stop(a), stop(b));
    let (on_a, on_b) = (check(&conf_a), check(&conf_b));
    eprintln!(
        "b lagging with keys {:?}, a held at {:?}, then {rotated:?}\nKeystone on a: {on_a}\n\
         Keystone on b: {on_b}\na: {}\nb: {}",
        lagging.keys(),
        held.keys(),
        tail(&la),
        tail(&lb)
    );
    assert!(waited, "a never waited at the gate for b");
    assert!(
        rotated.last().is_some_and(|&n| n > top),
        "no rotation after b returned"
    );
    assert_eq!(
        on_a, "ok 120",
        "credentials lost (listed through Keystone on a)"
    );
    assert_eq!(
        on_b, "ok 120",
        "credentials lost (listed through Keystone on b)"
    );
    if under_test().1 {
        // The primary the gate held was migrated to and verified on again after the wait.
        let verified = format!("every credential verified on primary key {top} ");
        assert!(
            la.matches(&verified).count() >= 2,
            "one migration served across the gate wait: {}",
            tail(&la)
        );
    }
}

/// A private PostgreSQL cluster for Keystone: Debian's `postgresql` package (scripts/deps
/// installs it, and psycopg2 into the venv), `initdb` in a temporary directory, listening on
/// loopback at a random port only, run as `nobody` when the test runs as root (PostgreSQL
/// refuses root). Stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    url: String,
}

/// The newest `/usr/lib/postgresql/N/bin` with `initdb` in it.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((n, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// `pg_ctl`/`initdb`/... as the cluster's owner.
    fn command(bin: &Path, tool: &str) -> Command {
        if nix::unistd::Uid::effective().is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(bin.join(tool));
            c
        } else {
            Command::new(bin.join(tool))
        }
    }

    fn start() -> Result<Postgres, String> {
        let bin = postgres_bin().ok_or("no /usr/lib/postgresql/*/bin/initdb")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        if nix::unistd::Uid::effective().is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            std::fs::create_dir(&data).map_err(|e| e.to_string())?;
            nix::unistd::chown(&data, Some(65534.into()), Some(65534.into()))
                .map_err(|e| e.to_string())?;
        }
        let run = |mut c: Command, what: &str| -> Result<(), String> {
            let out = c.output().map_err(|e| format!("{what}: {e}"))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(format!(
                    "{what}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        };
        let mut initdb = Postgres::command(&bin, "initdb");
        initdb
            .args([
                "-U",
                "keystone",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb")?;
        let port = common::etcd::free_port();
        let mut pg_ctl = Postgres::command(&bin, "pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(data.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-h 127.0.0.1 -p {port} -k {} -F -c max_connections=50",
                data.display()
            ))
            .arg("start");
        run(pg_ctl, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(data.join("log")).unwrap_or_default();
            format!("{e}{log}")
        })?;
        Ok(Postgres {
            dir,
            bin,
            url: format!("postgresql+psycopg2://keystone@127.0.0.1:{port}/postgres"),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut c = Postgres::command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }
}

/// A PostgreSQL for Keystone where it can start. Where it cannot: under CI (`CI=true`) the test
/// fails, as a missing etcd fails the cluster tests; elsewhere it says so and passes without
/// running (run scripts/deps).
fn postgres() -> Option<Postgres> {
    let psycopg2 = Command::new(venv().join("bin/python"))
        .args(["-c", "import psycopg2"])
        .output()
        .is_ok_and(|o| o.status.success());
    let started = match psycopg2 {
        true => Postgres::start(),
        false => Err("psycopg2 is not in the venv".into()),
    };
    match started {
        Ok(pg) => Some(pg),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "PostgreSQL is required under CI (apt-get install postgresql, psycopg2-binary in \
             .venv; scripts/deps does): {why}"
        ),
        Err(why) => {
            eprintln!("not run: PostgreSQL cannot start here ({why}); scripts/deps installs it");
            None
        }
    }
}

/// `fernetd ARGS` as [`under_test`]: exit code, stdout, stderr.
fn run_under_test(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(under_test().0)
        .args(args)
        .env_remove("FERNETD_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rotate` and `setup` with `--key-repository` naming the credentials repository (fernetd's
/// `[credentials] key_repository`, through a symlink too, or Keystone's `[credential]
/// key_repository`) and no `--kind credentials` are refused in one line, exit 2, every key
/// kept: as a token repository it was rotated without migration or verification and purged
/// by a token window (10 of 10 credential keys lost with `--force-purge`).
#[test]
fn the_credentials_repository_is_never_rotated_or_set_up_as_tokens() {
    let t = tempfile::tempdir().unwrap();
    let (creds, tokens) = (t.path().join("c"), t.path().join("t"));
    for dir in [&creds, &tokens] {
        fernetd_ok(&["setup", "--key-repository", dir.to_str().unwrap()]);
    }
    // Three verified rotations: keys 0, 2, 3, 4 (a buffer of 4), the credentials on 3 and 4.
    let keystone = t.path().join("keystone.conf");
    std::fs::write(&keystone, "").unwrap();
    let cfg = t.path().join("f.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"{}\"\n\
             [credentials]\nkey_repository = \"{}\"\nschedule = \"@monthly\"\n\
             max_active_keys = 4\npre_rotate = [\"true\"]\n{VERIFY_PRIMARY}",
            keystone.display(),
            tokens.display(),
            creds.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for _ in 0..3 {
        fernetd_ok(&["--config", c, "rotate", "--kind", "credentials"]);
    }
    let before = numbers(&creds);
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&creds, &link).unwrap();
    let refused = |args: &[&str], origin: &str| {
        for path in [creds.to_str().unwrap(), link.to_str().unwrap()] {
            let mut all = vec!["--config", c];
            all.extend_from_slice(args);
            all.extend_from_slice(&["--key-repository", path]);
            let (code, stdout, stderr) = run_under_test(&all, &[]);
            assert_eq!(code, 2, "{all:?}: {stdout}{stderr}");
            assert_eq!(
                stderr.trim(),
                format!("fernetd: error: {path} is the credentials repository ({origin}): use --kind credentials"),
                "{all:?}"
            );
            assert_eq!(
                numbers(&creds),
                before,
                "{all:?} changed the credential keys"
            );
        }
    };
    let fernetd_origin = format!("{c}: [credentials] key_repository");
    refused(&["rotate", "--force-purge"], &fernetd_origin);
    refused(&["rotate", "--kind", "tokens", "--manual"], &fernetd_origin);
    refused(&["setup"], &fernetd_origin);
    // sync's --key-repository is the token repository's: refused before etcd is asked.
    refused(&["sync"], &fernetd_origin);
    // Named as what it is, it is set up as credentials.
    fernetd_ok(&[
        "--config",
        c,
        "setup",
        "--kind",
        "credentials",
        "--key-repository",
        creds.to_str().unwrap(),
    ]);
    assert_eq!(numbers(&creds), before);
    // Named by Keystone alone: fernetd's file has no [credentials].
    std::fs::write(
        &keystone,
        format!("[credential]\nkey_repository = {}\n", creds.display()),
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"{}\"\n[tokens]\nkey_repository = \"{}\"\n",
            keystone.display(),
            tokens.display()
        ),
    )
    .unwrap();
    let keystone_origin = format!("{}: [credential] key_repository", keystone.display());
    refused(&["rotate", "--force-purge"], &keystone_origin);
    refused(&["setup"], &keystone_origin);
    // The token repository itself is rotated as before.
    fernetd_ok(&[
        "--config",
        c,
        "rotate",
        "--key-repository",
        tokens.to_str().unwrap(),
    ]);
}
