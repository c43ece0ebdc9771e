//! A repository snapshot as plain data: each entry of the directory and what Keystone's loader
//! would make of it. [`crate::core::check`] judges it; the repository module fills it from
//! the disk (`Scan::take`) and acts on it.
//!
//! Invariant: pure. Nothing here reads a file: these are the facts a scan found.

use crate::core::key::{Fingerprint, Key, KeyFormatError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Files larger than this are not keys; reading stops there.
pub const MAX_READ: u64 = 4096;

/// Owner for files fernetd creates (the Keystone user and group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// lstat facts about one directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub is_symlink: bool,
    /// What `os.path.isfile` says (follows symlinks).
    pub is_file: bool,
    pub is_dir: bool,
    /// When the inode last changed (`st_ctime`: a link, a rename, a chmod, a write): nothing
    /// but the kernel sets it, so no time recorded for a key can be earlier.
    pub changed: Option<DateTime<Utc>>,
}

/// What Keystone would do with an entry.
#[derive(Debug)]
pub enum EntryKind {
    /// Canonical decimal name (`0`, `7`); the content as fernetd judges it.
    Key {
        number: u64,
        content: Result<Key, ContentProblem>,
    },
    /// A name Python's `int()` accepts but that is not canonical (`01`, `-1`, `+1`, ` 1`,
    /// `1_0`): Keystone loads it, possibly over another key with the same number.
    NonCanonical { number: i128 },
    /// fernetd's internal directory, and what is wrong with it or with `copies` in it (a
    /// link, a file, another user's directory): the path at fault and why.
    Internal { problem: Option<(PathBuf, String)> },
    /// Anything else: Keystone ignores it.
    Other,
}

/// Why a key file's content is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentProblem {
    Format(KeyFormatError),
    TooLarge,
    Unreadable(String),
}

impl std::fmt::Display for ContentProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentProblem::Format(e) => write!(f, "{e}"),
            ContentProblem::TooLarge => write!(f, "larger than {MAX_READ} bytes, not a key"),
            ContentProblem::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub meta: FileMeta,
    pub kind: EntryKind,
}

#[derive(Debug)]
pub struct Scan {
    pub dir: PathBuf,
    pub dir_meta: FileMeta,
    pub entries: Vec<Entry>,
}

impl Scan {
    /// When each readable key's file last changed, with its fingerprint.
    pub fn changed(&self) -> BTreeMap<u64, (Fingerprint, DateTime<Utc>)> {
        self.entries
            .iter()
            .filter_map(|e| match (&e.kind, e.meta.changed) {
                (
                    EntryKind::Key {
                        number,
                        content: Ok(k),
                    },
                    Some(t),
                ) => Some((*number, (k.fingerprint(), t))),
                _ => None,
            })
            .collect()
    }

    /// Valid keys by number.
    pub fn keys(&self) -> BTreeMap<u64, &Key> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Key {
                    number,
                    content: Ok(k),
                } if e.meta.is_file => Some((*number, k)),
                _ => None,
            })
            .collect()
    }

    /// Valid keys by number, as fingerprints: what is compared with history or a key set.
    pub fn fingerprints(&self) -> BTreeMap<u64, crate::core::key::Fingerprint> {
        self.keys()
            .into_iter()
            .map(|(n, k)| (n, k.fingerprint()))
            .collect()
    }

    /// Key names whose file holds no key Keystone could load (garbage, empty, too large),
    /// leaving out those fernetd could not open (what they hold is not known).
    pub fn non_keys(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Key {
                    number,
                    content: Err(p),
                } if !matches!(p, ContentProblem::Unreadable(_)) => Some(*number),
                _ => None,
            })
            .collect()
    }

    /// Entries Keystone would load as keys (any `int()`-accepted regular file).
    pub fn key_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| {
            e.meta.is_file
                && matches!(
                    e.kind,
                    EntryKind::Key { .. } | EntryKind::NonCanonical { .. }
                )
        })
    }
}
