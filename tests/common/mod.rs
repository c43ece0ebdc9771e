//! Helpers shared by the integration tests: run the real binary, snapshot a repository.
#![allow(dead_code)]

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
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `fernetd ARGS` with no config file from the environment.
pub fn fernetd(args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .env_remove("FERNETD_CONFIG")
        .env("FERNETD_LOG", "warn")
        .output()
        .expect("run fernetd");
    Run::from(out)
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
