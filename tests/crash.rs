//! Crash safety: the real binary is killed (SIGKILL) at every occurrence of every system call
//! that changes the filesystem, using strace's fault injection, during `rotate` and `setup`.
//! After each kill:
//! - what Keystone would load is whole: every key file is a valid key and key 0 exists
//!   (for rotate), and every token decryptable before is still decryptable, except tokens of
//!   keys the rotation was meant to purge;
//! - the next `fernetd setup` recovers (rolling back or forward, and saying so), leaves a
//!   healthy repository, and a following rotation succeeds.
//!
//! strace is required (the README's test command installs it); without it the test fails.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Syscalls that change the filesystem. Killing at a read-only call is the same as killing
/// at the next one of these, so these cover every distinct on-disk state.
const MUTATING: &[&str] = &[
    "openat",
    "open",
    "creat",
    "write",
    "pwrite64",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "fchown",
    "fchmod",
    "ftruncate",
    "link",
    "linkat",
];

fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "strace is required for the crash test (apt-get install strace; the README's test command does)"
    );
}

/// Counts each mutating syscall in one full run of `args`.
fn count_syscalls(args: &[&str]) -> BTreeMap<String, usize> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(log.path())
        .args(["-e", &format!("trace={}", MUTATING.join(","))])
        .arg(bin())
        .args(args)
        .env("FERNETD_LOG", "off")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log.path()).unwrap().lines() {
        // "1234  renameat2(AT_FDCWD, ..." or "renameat2(..." ; skip resumed/exit lines.
        let rest = line
            .split_once(' ')
            .map(|(a, b)| {
                if a.chars().all(|c| c.is_ascii_digit()) {
                    b.trim_start()
                } else {
                    line
                }
            })
            .unwrap_or(line);
        if let Some((name, _)) = rest.split_once('(') {
            if MUTATING.contains(&name) {
                *counts.entry(name.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Runs `args` under strace, killing it at the `n`-th call of `syscall`. Returns true when it
/// was killed (the injection hit).
fn run_killed_at(args: &[&str], syscall: &str, n: usize) -> bool {
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={n}"))
        .arg(bin())
        .args(args)
        .env("FERNETD_LOG", "off")
        .output()
        .unwrap();
    // strace re-raises its tracee's fatal signal on itself (or exits 128+9).
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9) || out.status.code() == Some(137)
}

struct Baseline {
    keys: BTreeMap<u64, String>,
    /// A token issued with each non-zero key (tokens exist for every former primary).
    tokens: BTreeMap<u64, String>,
}

impl Baseline {
    /// The non-zero keys of the baseline that `after` no longer has.
    fn gone_from(&self, after: &BTreeMap<u64, String>) -> BTreeSet<u64> {
        let gone = self
            .keys
            .keys()
            .filter(|n| **n > 0 && !after.contains_key(n));
        gone.copied().collect()
    }
}

fn baseline(dir: &Path) -> Baseline {
    let keys = keys(dir);
    let tokens = keys
        .iter()
        .filter(|(n, _)| **n > 0)
        .map(|(n, k)| {
            (
                *n,
                fernet::Fernet::new(k)
                    .unwrap()
                    .encrypt(format!("token of {n}").as_bytes()),
            )
        })
        .collect();
    Baseline { keys, tokens }
}

fn assert_keystone_would_load_whole(dir: &Path, ctx: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u64>().is_ok() {
            let content = std::fs::read_to_string(e.path()).unwrap();
            assert!(
                fernet::Fernet::new(content.trim_end()).is_some(),
                "{ctx}: partial or invalid key file {name}"
            );
        }
    }
}

fn assert_tokens_decrypt(dir: &Path, base: &Baseline, except: &BTreeSet<u64>, ctx: &str) {
    let mf = multifernet(dir);
    for (n, t) in &base.tokens {
        if !except.contains(n) {
            assert!(
                mf.decrypt(t).is_ok(),
                "{ctx}: token of key {n} no longer decrypts"
            );
        }
    }
}

fn repo_args<'a>(cmd: &'a str, dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd, "--key-repository", dir];
    v.extend_from_slice(extra);
    v
}

#[test]
fn rotation_killed_at_every_mutating_syscall_loses_nothing() {
    require_strace();
    let work = tempfile::tempdir().unwrap();
    let base_dir = work.path().join("base");
    let b = base_dir.to_str().unwrap();
    // Three non-zero keys; zero retention so this rotation also purges (covers every step).
    let no_retention = [["--max-active-keys", "3"].as_slice(), &NO_RETENTION].concat();
    fernetd_ok(&["setup", "--key-repository", b]);
    fernetd_ok(&repo_args("rotate", b, &["--max-active-keys", "4"]));
    fernetd_ok(&repo_args("rotate", b, &["--max-active-keys", "4"]));
    let base = baseline(&base_dir);
    assert_eq!(
        base.keys.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );

    // Reference run: what a complete rotation does.
    let reference = work.path().join("reference");
    copy_dir(&base_dir, &reference);
    let r = reference.to_str().unwrap();
    let counts = count_syscalls(&repo_args("rotate", r, &no_retention));
    let done = keys(&reference);
    let purged = base.gone_from(&done);
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![0, 3, 4]);
    assert_eq!(purged, BTreeSet::from([1, 2]));
    for s in ["renameat2", "fsync", "unlink"] {
        let found = counts.keys().any(|k| k.starts_with(&s[..4]));
        assert!(found, "reference run shows no {s}-like call: {counts:?}");
    }

    let mut points = 0;
    let mut rolled_back = 0;
    let mut rolled_forward = 0;
    for (syscall, &count) in &counts {
        for n in 1..=count {
            let ctx = format!("killed at {syscall} #{n}");
            let dir = work.path().join(format!("crash-{syscall}-{n}"));
            copy_dir(&base_dir, &dir);
            let d = dir.to_str().unwrap();
            assert!(
                run_killed_at(&repo_args("rotate", d, &no_retention), syscall, n),
                "{ctx}: injection did not kill the process"
            );
            points += 1;

            // As Keystone sees it right after the crash.
            assert_keystone_would_load_whole(&dir, &ctx);
            assert!(dir.join("0").is_file(), "{ctx}: key 0 missing");
            assert_tokens_decrypt(&dir, &base, &purged, &ctx);
            let in_flight = dir.join(".fernetd/primary.tmp").exists()
                || dir.join(".fernetd/staged.tmp").exists();

            // The next writer recovers and says so.
            let rec = fernetd(&["setup", "--key-repository", d]);
            assert_eq!(rec.code, 0, "{ctx}: recovery failed: {}", rec.stderr);
            if in_flight {
                assert!(
                    rec.stderr.contains("interrupted rotation"),
                    "{ctx}: recovery said nothing: {}",
                    rec.stderr
                );
            }
            let after = keys(&dir);
            if after == base.keys {
                rolled_back += 1;
            } else {
                rolled_forward += 1;
                assert_eq!(
                    after.get(&4),
                    Some(&base.keys[&0]),
                    "{ctx}: staged key not promoted to 4"
                );
                assert_ne!(
                    after.get(&0),
                    Some(&base.keys[&0]),
                    "{ctx}: no new staged key"
                );
                assert_eq!(after.get(&3), Some(&base.keys[&3]), "{ctx}: key 3 lost");
            }
            assert_keystone_would_load_whole(&dir, &ctx);
            assert_tokens_decrypt(&dir, &base, &purged, &ctx);
            let check = fernetd(&["check", "--key-repository", d]);
            assert_eq!(
                check.code, 0,
                "{ctx}: not healthy after recovery: {}",
                check.stdout
            );
            fernetd_ok(&repo_args("rotate", d, &["--max-active-keys", "3"]));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("rotate: {points} crash points ({rolled_back} rolled back, {rolled_forward} rolled forward); syscalls {counts:?}");
    assert!(points >= 15, "too few crash points exercised: {points}");
    assert!(
        rolled_back > 0 && rolled_forward > 0,
        "both recovery paths must be exercised"
    );
}

#[test]
fn setup_killed_at_every_mutating_syscall_recovers() {
    require_strace();
    let work = tempfile::tempdir().unwrap();
    let reference = work.path().join("reference");
    let counts = count_syscalls(&["setup", "--key-repository", reference.to_str().unwrap()]);
    let mut points = 0;
    for (syscall, &count) in &counts {
        for n in 1..=count {
            let ctx = format!("setup killed at {syscall} #{n}");
            let dir = work.path().join(format!("crash-{syscall}-{n}"));
            let d = dir.to_str().unwrap();
            assert!(
                run_killed_at(&["setup", "--key-repository", d], syscall, n),
                "{ctx}: not killed"
            );
            points += 1;
            if dir.exists() {
                assert_keystone_would_load_whole(&dir, &ctx);
            }
            let rec = fernetd(&["setup", "--key-repository", d]);
            assert_eq!(rec.code, 0, "{ctx}: {}", rec.stderr);
            let ks = keys(&dir);
            assert!(
                ks.contains_key(&0) && ks.keys().any(|&k| k > 0),
                "{ctx}: {ks:?}"
            );
            let check = fernetd(&["check", "--key-repository", d]);
            assert_eq!(check.code, 0, "{ctx}: {}", check.stdout);
        }
    }
    eprintln!("setup: {points} crash points; syscalls {counts:?}");
    assert!(points >= 8, "too few crash points: {points}");
    // Two key files and the history (two each), the repository's creation (the new
    // directory, its parent, `.fernetd`) and one directory fsync for both key names
    // (eleven when each rename fsynced its target and `.fernetd`).
    assert_eq!(counts.get("fsync"), Some(&8), "{counts:?}");
}

#[test]
fn sync_killed_at_every_mutating_syscall_loses_nothing_it_should_keep() {
    // The node (base) holds {0, 1}; the cluster moved three rotations ahead: {0, 3, 4}.
    let counts = sync_killed_everywhere(3, BTreeSet::from([1]), 15);
    assert!(!counts.contains_key("link") && !counts.contains_key("linkat"));
}

#[test]
fn sync_of_one_rotation_killed_at_every_mutating_syscall_loses_nothing() {
    // One rotation ahead ({0, 1, 2}): the node's key 0 is the new primary and gets the name 2
    // through a hard link, killed there too.
    let counts = sync_killed_everywhere(1, BTreeSet::new(), 8);
    assert!(
        counts.contains_key("link") || counts.contains_key("linkat"),
        "{counts:?}"
    );
    // ARCHITECTURE.md's "The fsync sequence": key 0's file, the repository once, the
    // history's two (five when key 0 waited for the history behind its own directory fsync).
    assert_eq!(counts.get("fsync"), Some(&4), "{counts:?}");
}

/// Kills `fernetd sync` of a node `rotations` behind the cluster at every mutating syscall and
/// checks each outcome; `removed` are the node's keys the cluster no longer has. Returns the
/// syscall counts of the reference run.
fn sync_killed_everywhere(
    rotations: usize,
    removed: BTreeSet<u64>,
    min_points: usize,
) -> BTreeMap<String, usize> {
    require_strace();
    let etcd = common::etcd::Etcd::start();
    let work = tempfile::tempdir().unwrap();
    let (a, base_dir) = (work.path().join("a"), work.path().join("base"));
    let ar = a.to_str().unwrap();
    let conf = |repo: &Path, name: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n[cluster]\ninsecure_unsealed = true\nendpoints = [\"{}\"]\n",
            repo.display(), etcd.endpoint
        )).unwrap();
        p
    };
    fernetd_ok(&["setup", "--key-repository", ar]);
    let ca = conf(&a, "a.toml");
    cluster_ahead_of_follower(&a, &ca, &conf(&base_dir, "base.toml"), rotations);
    let base = baseline(&base_dir);
    let target = keys(&a);
    // Keys the sync is meant to remove: the node's old ones the cluster no longer has.
    assert_eq!(base.gone_from(&target), removed);

    let reference = work.path().join("reference");
    copy_dir(&base_dir, &reference);
    let cref = conf(&reference, "ref.toml");
    let counts = count_syscalls(&["--config", cref.to_str().unwrap(), "sync"]);
    assert_eq!(keys(&reference), target);

    let mut points = 0;
    for (syscall, &count) in &counts {
        for n in 1..=count {
            let ctx = format!("sync killed at {syscall} #{n}");
            let dir = work.path().join(format!("crash-{syscall}-{n}"));
            copy_dir(&base_dir, &dir);
            let c = conf(&dir, &format!("c-{syscall}-{n}.toml"));
            if !run_killed_at(&["--config", c.to_str().unwrap(), "sync"], syscall, n) {
                // The kill landed after the process was done with the disk (e.g. its last
                // stdout write raced the count): nothing to check beyond the reference.
                assert_eq!(keys(&dir), target, "{ctx}");
                continue;
            }
            points += 1;
            assert_keystone_would_load_whole(&dir, &ctx);
            assert!(dir.join("0").is_file(), "{ctx}: key 0 missing");
            // Every token the node could decrypt before still decrypts, except those of keys
            // the cluster purged; and every key the cluster has that is on disk is the right one.
            assert_tokens_decrypt(&dir, &base, &removed, &ctx);
            // The next sync completes it.
            let again = fernetd(&["--config", c.to_str().unwrap(), "sync"]);
            assert_eq!(again.code, 0, "{ctx}: {}", again.stderr);
            assert_eq!(keys(&dir), target, "{ctx}");
            assert_eq!(
                fernetd(&["check", "--key-repository", dir.to_str().unwrap()]).code,
                0,
                "{ctx}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("sync: {points} crash points; syscalls {counts:?}");
    assert!(points >= min_points, "too few crash points: {points}");
    counts
}

/// The shipped units forbid `@chown`: a fernetd running as the repository's owner must never
/// call it, and one giving files to another user calls it once per file it creates.
#[test]
fn files_already_owned_by_the_keystone_user_are_not_chowned() {
    require_strace();
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("keys");
    let r = d.to_str().unwrap();
    let uid = nix::unistd::getuid().to_string();
    let gid = nix::unistd::getgid().to_string();
    let owner = ["--keystone-user", &uid, "--keystone-group", &gid];
    for cmd in ["setup", "rotate"] {
        let args = [&[cmd, "--key-repository", r][..], &owner].concat();
        let counts = count_syscalls(&args);
        assert_eq!(counts.get("fchown"), None, "{cmd}: {counts:?}");
    }
    if nix::unistd::getuid().is_root() {
        // Root giving the files to another user: each new file and directory is chowned.
        let other = t.path().join("other");
        let args = [
            "setup",
            "--key-repository",
            other.to_str().unwrap(),
            "--keystone-user",
            "65534",
            "--keystone-group",
            "65534",
        ];
        assert!(count_syscalls(&args).get("fchown").is_some_and(|n| *n > 0));
    }
}
