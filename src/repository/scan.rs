//! A read-only snapshot of a key repository directory, taken the way Keystone's loader sees it.
//!
//! Keystone (`fernet_utils._get_key_files`) lists the directory, keeps every entry for which
//! `os.path.isfile` is true (symlinks followed), opens it, and loads it as key `int(name)` when
//! Python's `int()` accepts the name; empty files are skipped with a warning. This module
//! records, for every entry, what Keystone would make of it, so `check` can judge and the
//! writer can refuse to act on an invalid repository.

use super::fsio::Dir;
use crate::core::key::Key;
use crate::core::scan::MAX_READ;
pub use crate::core::scan::{ContentProblem, Entry, EntryKind, FileMeta, Scan};
use crate::error::{Error, IoContext, Result};
use nix::sys::stat::FileStat;
use std::io::Read;
use std::path::{Path, PathBuf};

/// fernetd's own files live in this subdirectory. Keystone skips directories, so nothing in it
/// is ever opened by Keystone's loader (an unreadable file in the repository itself would be,
/// and would fail every token request).
pub const INTERNAL_DIR: &str = ".fernetd";

impl FileMeta {
    /// Of `name` in `dir` (`None` when it vanished), or of `dir` itself.
    fn of(dir: &Dir, name: Option<&str>) -> Result<Option<FileMeta>> {
        let (l, followed) = match name {
            Some(name) => {
                let Some(l) = dir.stat_at(name, false)? else {
                    return Ok(None);
                };
                let followed = match l.st_mode & S_IFMT {
                    S_IFLNK => dir.stat_at(name, true).ok().flatten(),
                    _ => Some(l),
                };
                (l, followed)
            }
            None => {
                let s = dir.stat()?;
                (s, Some(s))
            }
        };
        let m = followed.as_ref().unwrap_or(&l);
        let kind =
            |s: &Option<FileStat>, k: u32| s.as_ref().is_some_and(|s| s.st_mode & S_IFMT == k);
        Ok(Some(FileMeta {
            mode: m.st_mode & 0o7777,
            uid: m.st_uid,
            gid: m.st_gid,
            is_symlink: l.st_mode & S_IFMT == S_IFLNK,
            is_file: kind(&followed, S_IFREG),
            changed: chrono::DateTime::from_timestamp(
                m.st_ctime,
                u32::try_from(m.st_ctime_nsec).unwrap_or(0),
            ),
            is_dir: kind(&followed, S_IFDIR),
        }))
    }
}

const S_IFMT: u32 = nix::libc::S_IFMT;
const S_IFLNK: u32 = nix::libc::S_IFLNK;
const S_IFREG: u32 = nix::libc::S_IFREG;
const S_IFDIR: u32 = nix::libc::S_IFDIR;

impl Scan {
    /// Reads `dir` without changing anything.
    pub fn take(dir: &Path) -> Result<Scan> {
        match Dir::open(dir)? {
            Some(d) => Scan::of(&d),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)).at(dir),
        }
    }

    /// Reads the open directory `dir`, every entry from its descriptor.
    pub(super) fn of(dir: &Dir) -> Result<Scan> {
        let Some(dir_meta) = FileMeta::of(dir, None)? else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound)).at(dir.path());
        };
        let mut entries = Vec::new();
        for name in dir.names()? {
            let path = dir.join(&name);
            // Vanished between listing and stat: Keystone would fail that request; we simply
            // do not report it.
            let Some(meta) = FileMeta::of(dir, Some(&name))? else {
                continue;
            };
            let kind = classify(dir, &name, &meta);
            entries.push(Entry {
                name,
                path,
                meta,
                kind,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Scan {
            dir: dir.path().to_path_buf(),
            dir_meta,
            entries,
        })
    }
}

/// The key number `name` is, when it is one as fernetd writes it (`7`, not `07` or `+7`).
fn key_number(name: &str) -> Option<u64> {
    name.parse::<u64>().ok().filter(|n| n.to_string() == name)
}

fn classify(dir: &Dir, name: &str, meta: &FileMeta) -> EntryKind {
    if name == INTERNAL_DIR {
        return EntryKind::Internal {
            problem: internal_problem(dir).err(),
        };
    }
    if let Some(number) = key_number(name) {
        return EntryKind::Key {
            number,
            content: if meta.is_file {
                read_key(dir, name)
            } else {
                Err(ContentProblem::Unreadable("not a regular file".into()))
            },
        };
    }
    // Anything else Python's int() reads: Keystone loads it too.
    match python_int(name) {
        Some(n) => EntryKind::NonCanonical { number: n },
        None => EntryKind::Other,
    }
}

/// Opens `.fernetd` and `.fernetd/copies` (when present) as a writer would, and says what
/// stops it.
fn internal_problem(dir: &Dir) -> std::result::Result<(), (PathBuf, String)> {
    let split = |e: Error| match e {
        Error::Io { path, source } => (path, source.to_string()),
        e => (dir.join(INTERNAL_DIR), e.to_string()),
    };
    if let Some(internal) = dir.own(INTERNAL_DIR, None).map_err(split)? {
        internal.own(super::COPIES, None).map_err(split)?;
    }
    Ok(())
}

fn read_key(dir: &Dir, name: &str) -> Result<Key, ContentProblem> {
    // Keystone follows a symbolic link to its key, so this does too; never blocking on what
    // is not a regular file (the size is judged while reading, below).
    match dir.open_regular(name, u64::MAX, true) {
        Ok(Some(f)) => read_key_from(&f),
        Ok(None) => Err(ContentProblem::Unreadable("vanished while read".into())),
        Err(e) => Err(ContentProblem::Unreadable(match e {
            Error::Io { source, .. } => source.to_string(),
            e => e.to_string(),
        })),
    }
}

/// The key in an open key file, read as Keystone would.
pub(super) fn read_key_from(f: &std::fs::File) -> Result<Key, ContentProblem> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(64));
    f.take(MAX_READ + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ContentProblem::Unreadable(e.to_string()))?;
    if buf.len() as u64 > MAX_READ {
        return Err(ContentProblem::TooLarge);
    }
    Key::parse(&buf).map_err(ContentProblem::Format)
}

/// What Python's `int(str)` returns for a file name (Keystone loads every name it accepts),
/// or `None` where it raises: surrounding Unicode whitespace (as `int()` strips it), one sign,
/// decimal digits of any script (Unicode category Nd: `int('١٠٠') == 100`), single
/// underscores between digits, leading zeros. Values beyond `i128` saturate: such a name is
/// still a key to Keystone. Proven against `python3` by `tests/keystone.rs`.
pub fn python_int(name: &str) -> Option<i128> {
    let s = name.trim_matches(|c| PY_SPACE.contains(&c));
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let mut v: i128 = 0;
    for c in body.chars() {
        if c == '_' {
            continue;
        }
        let d = decimal(c)?;
        v = v.saturating_mul(10).saturating_add(i128::from(d));
    }
    Some(if neg { -v } else { v })
}

/// The decimal value of a Unicode decimal digit (category Nd), whose every block is ten
/// consecutive code points from its zero.
fn decimal(c: char) -> Option<u32> {
    let cp = u32::from(c);
    let i = ND_ZEROS.partition_point(|&z| z <= cp).checked_sub(1)?;
    let d = cp - ND_ZEROS[i];
    (d < 10).then_some(d)
}

/// The zero of every block of Unicode decimal digits (Unicode 14, Python 3.11's
/// `unicodedata`).
const ND_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66,
    0xde6, 0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
    0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50,
    0x1d7ce, 0x1d7d8, 0x1d7e2, 0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
];

/// What `int()` strips around a number: Python's whitespace but the separators
/// U+001C..U+001F.
const PY_SPACE: [char; 25] = [
    '\u{9}', '\u{a}', '\u{b}', '\u{c}', '\u{d}', '\u{20}', '\u{85}', '\u{a0}', '\u{1680}',
    '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}',
    '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_fernetd_would_write_are_key_numbers() {
        let d = tempfile::tempdir().unwrap();
        for name in ["7", "07", "+7", " 7", "-0", "18446744073709551616", "x"] {
            std::fs::write(d.path().join(name), "").unwrap();
        }
        let scan = Scan::take(d.path()).unwrap();
        let kinds: Vec<(&str, String)> = scan
            .entries
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    EntryKind::Key { number, .. } => format!("key {number}"),
                    EntryKind::NonCanonical { number } => format!("non-canonical {number}"),
                    EntryKind::Internal { .. } => "internal".into(),
                    EntryKind::Other => "other".into(),
                };
                (e.name.as_str(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (" 7", "non-canonical 7".to_string()),
                ("+7", "non-canonical 7".into()),
                ("-0", "non-canonical 0".into()),
                ("07", "non-canonical 7".into()),
                (
                    "18446744073709551616",
                    "non-canonical 18446744073709551616".into()
                ),
                ("7", "key 7".into()),
                ("x", "other".into()),
            ]
        );
    }

    #[test]
    fn python_int_matches_cpython() {
        // Values checked against CPython 3.11's int().
        let cases: &[(&str, Option<i128>)] = &[
            ("0", Some(0)),
            ("7", Some(7)),
            ("01", Some(1)),
            ("-1", Some(-1)),
            ("+1", Some(1)),
            (" 1", Some(1)),
            ("1\n", Some(1)),
            ("1_0", Some(10)),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("0.tmp", None),
            ("1.bak", None),
            ("", None),
            ("-", None),
            ("0x1", None),
            (".fernetd", None),
        ];
        for (name, want) in cases {
            assert_eq!(python_int(name), *want, "{name:?}");
        }
    }
}
