//! The repository's owner (the Keystone user, here `nobody`) turned attacker against root's
//! fernetd: every link or file it plants under the repository, before a command or in the
//! middle of one, is an error naming it or is passed by, and nothing outside the repository
//! changes. The tests need root (their names say so: `scripts/test` names them as not run
//! anywhere else, never as passed).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NOBODY: &str = "65534";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: the attacker is another user (scripts/test names this test as not run \
         otherwise)"
    );
}

/// The attacker's moves: a shell script run as nobody, which owns the repository.
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-ec",
        ])
        .arg(script)
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry below `dir` (not following links) with its type, mode, owner and content (a
/// link's target): what "untouched" means for the victim.
fn inventory(dir: &Path) -> BTreeMap<String, (u32, u32, u32, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let content = String::from_utf8_lossy(&content).into_owned();
            out.insert(rel, (m.mode(), m.uid(), m.gid(), content));
        }
    }
    out
}

/// A world-traversable temp dir with a repository of nobody's made by root's `fernetd setup`,
/// and root's victim directory beside it holding files named like fernetd's.
struct Scene {
    t: tempfile::TempDir,
    repo: PathBuf,
    victim: PathBuf,
    config: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        require_root();
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = t.path().join("keys");
        let r = repo.to_str().unwrap();
        fernetd_ok(&[
            "setup",
            "--key-repository",
            r,
            "--keystone-user",
            NOBODY,
            "--keystone-group",
            NOBODY,
        ]);
        assert_eq!(std::fs::metadata(&repo).unwrap().uid(), 65534);
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["lock", "state.json", "clock", "secret"] {
            std::fs::write(victim.join(name), format!("root's {name}\n")).unwrap();
        }
        let config = t.path().join("fernetd.toml");
        std::fs::write(
            &config,
            format!(
                "[keystone]\nconfig = \"/dev/null\"\nuser = \"{NOBODY}\"\ngroup = \"{NOBODY}\"\n\
                 [tokens]\nkey_repository = \"{r}\"\nrepair = true\n\
                 schedule = \"1s\"\nexpiration = \"1s\"\nallow_expired_window = 0\nmargin = 0\n"
            ),
        )
        .unwrap();
        Scene {
            t,
            repo,
            victim,
            config,
        }
    }

    fn r(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    /// A root command on the repository, as a shell or a timer runs it.
    fn root(&self, cmd: &str) -> Run {
        fernetd(&[cmd, "--key-repository", self.r()])
    }
}

/// Links and files planted by the key owner where fernetd keeps its own: root's `setup`,
/// `rotate`, `check`, `status` and the daemon (with `repair = true`) each say what is wrong
/// and where, on one line, and root's victim directory stays byte for byte, mode for mode,
/// owner for owner what it was.
#[test]
fn as_root_links_planted_by_the_key_owner_redirect_nothing() {
    let s = Scene::new();
    let before = inventory(&s.victim);
    let v = s.victim.to_str().unwrap();
    let r = s.r();

    // `.fernetd` itself a link to root's directory.
    as_nobody(&format!(
        "cd {r} && mv .fernetd saved && ln -s {v} .fernetd"
    ));
    for cmd in ["setup", "rotate"] {
        let out = s.root(cmd);
        assert_eq!(out.code, 2, "{cmd}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.error_lines(), 1, "{cmd}: {}", out.stderr);
        assert!(
            out.stderr.contains("keys/.fernetd: a symbolic link"),
            "{cmd}: {}",
            out.stderr
        );
    }
    let check = s.root("check");
    assert_eq!(check.code, 2, "{}", check.stdout);
    assert!(
        check.stdout.contains(".fernetd: a symbolic link")
            && check.stdout.contains("[internal-not-a-directory]"),
        "{}",
        check.stdout
    );
    let status = s.root("status");
    assert_eq!(status.code, 2, "{}{}", status.stdout, status.stderr);
    let d = Daemon::start(&["--config", s.config.to_str().unwrap(), "daemon"], &[]);
    assert!(
        d.wait_log(".fernetd: a symbolic link", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    d.stop();
    assert_eq!(inventory(&s.victim), before, "written through .fernetd");

    // `.fernetd/copies` a link: the daemon's repair copies go nowhere.
    as_nobody(&format!(
        "cd {r} && rm .fernetd && mv saved .fernetd && rm -rf .fernetd/copies && ln -s {v} .fernetd/copies"
    ));
    let check = s.root("check");
    assert!(
        check.stdout.contains(".fernetd/copies: a symbolic link"),
        "{}",
        check.stdout
    );
    let d = Daemon::start(&["--config", s.config.to_str().unwrap(), "daemon"], &[]);
    assert!(
        d.wait_log("copies: a symbolic link", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    d.stop();
    assert_eq!(
        inventory(&s.victim),
        before,
        "written through .fernetd/copies"
    );

    // fernetd's own files as links: the lock, the state, the boot clock are errors naming
    // them; temp files are removed (the link, never its target) and written anew.
    as_nobody(&format!("cd {r}/.fernetd && rm copies"));
    for (name, target) in [
        ("lock", "lock"),
        ("state.json", "state.json"),
        ("clock", "clock"),
    ] {
        let path = s.repo.join(".fernetd").join(name);
        let saved = s.t.path().join("saved-file");
        std::fs::rename(&path, &saved).unwrap();
        as_nobody(&format!("ln -s {v}/{target} {}", path.display()));
        let out = s.root("rotate");
        assert_eq!(out.code, 2, "{name}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr
                .contains(&format!(".fernetd/{name}: a symbolic link")),
            "{name}: {}",
            out.stderr
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&saved, &path).unwrap();
    }
    as_nobody(&format!(
        "cd {r}/.fernetd && for f in state.json.tmp clock.tmp primary.tmp staged.tmp restore.tmp daemon.json.tmp; do ln -s {v}/secret $f; done"
    ));
    let before_keys = keys(&s.repo);
    let out = s.root("rotate");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // The planted primary.tmp looked like an interrupted rotation: rolled back, no key
    // changed; the next rotation rotates.
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    assert_eq!(keys(&s.repo).len(), before_keys.len() + 1);
    assert_eq!(
        inventory(&s.victim),
        before,
        "written through a planted temp file"
    );
    // The temp files it used were replaced (the links removed, never followed).
    for name in ["state.json.tmp", "primary.tmp", "staged.tmp", "restore.tmp"] {
        let m = std::fs::symlink_metadata(s.repo.join(".fernetd").join(name));
        assert!(
            m.is_err() || !m.unwrap().file_type().is_symlink(),
            "{name} still a link"
        );
    }

    // `.fernetd` a real directory, but someone else's: refused, nothing written in it.
    as_nobody(&format!("cd {r} && mv .fernetd saved"));
    std::fs::create_dir(s.repo.join(".fernetd")).unwrap();
    std::os::unix::fs::chown(s.repo.join(".fernetd"), Some(4242), Some(4242)).unwrap();
    let out = s.root("rotate");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("owned by uid 4242"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_dir(s.repo.join(".fernetd")).unwrap().count(),
        0
    );
    assert!(s
        .root("check")
        .stdout
        .contains("owned by uid 4242, not by the key owner"));
}

/// The race no check can close: `.fernetd` swapped for a link to root's directory after
/// root's `rotate` checked it and while it waits for the lock (strace holds the `flock`
/// call for a second). The rotation completes where it began, through the directories it
/// opened: the keys rotate, the history lands in the directory that was `.fernetd`, and no
/// key or state reaches the victim. Then `check` reports the link.
#[test]
fn as_root_a_directory_swapped_in_the_middle_of_a_rotation_redirects_nothing() {
    let s = Scene::new();
    // No state file there: a rotation following the link would go on and write its own.
    std::fs::remove_file(s.victim.join("state.json")).unwrap();
    let before = inventory(&s.victim);
    let (r, v) = (s.r().to_string(), s.victim.to_str().unwrap().to_string());
    let trace = s.t.path().join("trace");
    let child = Command::new("strace")
        .arg("-f")
        .arg("-o")
        .arg(&trace)
        .args([
            "-e",
            "trace=flock",
            "-e",
            "inject=flock:delay_enter=1000000:when=1",
        ])
        .arg(bin())
        .args(["rotate", "--key-repository", &r])
        .env("FERNETD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace (the README's test command installs it)");
    // strace writes the call when it enters it, before the delay.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("flock(")) {
        assert!(
            std::time::Instant::now() < deadline,
            "rotate never reached flock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    as_nobody(&format!(
        "cd {r} && mv .fernetd swapped && ln -s {v} .fernetd"
    ));
    let out = Run::from(child.wait_with_output().unwrap());
    assert!(
        std::fs::read_to_string(&trace)
            .unwrap()
            .contains("(DELAYED)"),
        "the delay was not injected"
    );
    assert_eq!(
        inventory(&s.victim),
        before,
        "written through the swapped link"
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(numbers(&s.repo), vec![0, 1, 2]);
    let state = std::fs::read_to_string(s.repo.join("swapped/state.json")).unwrap();
    assert!(state.contains("\"promoted\""), "{state}");
    let check = s.root("check");
    assert!(
        check.stdout.contains("[internal-not-a-directory]"),
        "{}",
        check.stdout
    );
}

/// The daemon's own records (its pid beside the daemon lock, its live view) as links planted
/// by the key owner: root's daemon replaces the links, never writes through them, still holds
/// the lock (a second daemon refuses, naming it), and removes only its own entries.
#[test]
fn as_root_the_daemons_pid_and_live_view_never_follow_planted_links() {
    let s = Scene::new();
    let before = inventory(&s.victim);
    let (r, v) = (s.r(), s.victim.to_str().unwrap());
    as_nobody(&format!(
        "cd {r}/.fernetd && for f in daemon.pid daemon.pid.tmp daemon.json daemon.json.tmp; do ln -s {v}/secret $f; done"
    ));
    let config = s.config.to_str().unwrap();
    let d = Daemon::start(&["--config", config, "daemon"], &[]);
    assert!(d.wait_log("ready", Duration::from_secs(10)), "{}", d.log());
    let pid_file = s.repo.join(".fernetd/daemon.pid");
    assert!(!std::fs::symlink_metadata(&pid_file)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        d.pid().to_string()
    );
    let second = fernetd(&["--config", config, "daemon"]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("another fernetd daemon (pid {}) holds", d.pid())),
        "{}",
        second.stderr
    );
    d.stop();
    assert!(std::fs::symlink_metadata(&pid_file).is_err());
    assert_eq!(
        inventory(&s.victim),
        before,
        "written through a planted link"
    );
}

/// fernetd run as the key owner (nobody), as its units run it.
fn fernetd_as_nobody(args: &[&str]) -> Run {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    Run::from(out)
}

/// A new key whose text uses the standard base64 alphabet (`+` or `/`): Keystone's Fernet
/// reads it as a key.
fn standard_alphabet_key() -> String {
    loop {
        let k = fernetd::core::key::Key::generate().unwrap();
        let text = k.to_text().to_string();
        if text.contains('-') || text.contains('_') {
            return text.replace('-', "+").replace('_', "/");
        }
    }
}

/// With `repair = true`, a key file that Keystone reads (the primary replaced by material
/// spelled in the standard alphabet) or that fernetd cannot read (mode 000 for the key
/// owner fernetd runs as) is never overwritten from a copy: the first is a replacement,
/// said critical; the second is unknown content, refused. Both files keep their bytes.
#[test]
fn as_root_a_key_owners_repair_never_writes_over_what_keystone_may_read() {
    let s = Scene::new();
    let config = s.t.path().join("keep.toml");
    std::fs::write(
        &config,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n\
             repair = true\nexpiration = \"1h\"\nallow_expired_window = 0\nmargin = 0\n",
            s.r()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    for _ in 0..2 {
        let out = fernetd_as_nobody(&["rotate", "--manual", "--config", c]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    // Keys 0..3, primary 3. Keystone's next tokens are made with whatever key 3 holds.
    let other = standard_alphabet_key();
    std::fs::write(s.repo.join("3"), &other).unwrap();
    let setup = fernetd_as_nobody(&["setup", "--config", c]);
    assert_eq!(setup.code, 3, "{}{}", setup.stdout, setup.stderr);
    assert!(setup.stderr.contains("key 3"), "{}", setup.stderr);
    assert_eq!(std::fs::read_to_string(s.repo.join("3")).unwrap(), other);
    let status = fernetd_as_nobody(&["status", "--config", c]);
    assert_eq!(status.code, 2, "{}{}", status.stdout, status.stderr);

    // Key 2, unreadable to nobody: whatever it holds stays.
    let hidden = fernetd::core::key::Key::generate()
        .unwrap()
        .to_text()
        .to_string();
    std::fs::write(s.repo.join("2"), &hidden).unwrap();
    std::fs::set_permissions(s.repo.join("2"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let setup = fernetd_as_nobody(&["setup", "--config", c]);
    assert_eq!(setup.code, 2, "{}{}", setup.stdout, setup.stderr);
    assert!(setup.stderr.contains("keys/2"), "{}", setup.stderr);
    assert_eq!(std::fs::read_to_string(s.repo.join("2")).unwrap(), hidden);
    let status = fernetd_as_nobody(&["status", "--config", c]);
    assert_eq!(status.code, 2, "{}{}", status.stdout, status.stderr);
}
