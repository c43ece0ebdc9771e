//! `.fernetd/state.json`: the repository's history, read and written whole.
//!
//! A long-lived repository's history carries its recent purges, so parsing it costs more
//! than everything else a reader does; the daemon reads it after every change. The last file
//! read or written is therefore kept, parsed, with the identity of the file it came from
//! (device, inode, size, change time): any write, rename or replacement changes that identity,
//! and the file is parsed again. Clones of a [`Repository`](super::Repository) share it.

use super::fsio::{Dir, Owner};
use crate::core::history::History;
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default)]
pub(super) struct StateFile {
    last: Arc<Mutex<Option<(FileId, History)>>>,
}

/// Shown without the history (it is large).
impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateFile")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// The largest state file read: 16 MiB holds a hundred thousand history records (years of
/// rotations); anything bigger is not one fernetd wrote.
const MAX_STATE: u64 = 16 * 1024 * 1024;

impl StateFile {
    /// The history saved as `name` in `dir`; empty when none was saved.
    pub(super) fn read(&self, dir: &Dir, name: &str) -> Result<History> {
        let path = &dir.join(name);
        let Some(file) = dir.open_regular(name, MAX_STATE, false)? else {
            return Ok(History::new());
        };
        // Identity and content from the same open file, so they always belong together.
        let id = FileId::of(&file.metadata().at(path)?);
        if let Some((seen, h)) = self.lock().as_ref() {
            if *seen == id {
                return Ok(h.clone());
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_STATE + 1).read_to_end(&mut bytes).at(path)?;
        let h = parse(path, &bytes)?;
        *self.lock() = Some((id, h.clone()));
        Ok(h)
    }

    /// Saves `h` durably as `name` in `dir` through the temp file `tmp` there.
    pub(super) fn save(
        &self,
        dir: &Dir,
        name: &str,
        tmp: &str,
        h: &History,
        owner: Option<Owner>,
    ) -> Result<()> {
        let json = serde_json::to_vec_pretty(h).map_err(|e| Error::State {
            path: dir.join(name),
            reason: e.to_string(),
        })?;
        // Forget the old content first: if anything below fails, the next read parses.
        *self.lock() = None;
        dir.replace_own(tmp, name, &json, owner, true)?;
        // The caller holds the repository lock: no fernetd writes the file in between, and
        // any other writer changes its identity again.
        if let Some(f) = dir.open_regular(name, MAX_STATE, false).ok().flatten() {
            if let Ok(m) = f.metadata() {
                *self.lock() = Some((FileId::of(&m), h.clone()));
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(FileId, History)>> {
        // Nothing can be left half-updated under this lock: a poisoned one is still sound.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<History> {
    let state_error = |reason: String| Error::State {
        path: PathBuf::from(path),
        reason,
    };
    let h: History = serde_json::from_slice(bytes).map_err(|e| {
        state_error(format!(
            "{e}; move the file away to re-adopt the keys (retention then counts from now)"
        ))
    })?;
    if h.version != crate::core::history::VERSION {
        return Err(state_error(format!(
            "format version {} is not supported",
            h.version
        )));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::history::PurgedKey;
    use crate::core::key::Fingerprint;

    fn history(number: u64) -> History {
        let mut h = History::new();
        h.purged.push(PurgedKey {
            number,
            fingerprint: Fingerprint::NONE,
            at: chrono::DateTime::UNIX_EPOCH,
            by_fernetd: true,
            lost_until: None,
            since_boot: None,
            copy_until: None,
        });
        h
    }

    #[test]
    fn a_file_changed_behind_the_cache_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap().unwrap();
        let (name, tmp) = ("state.json", "state.tmp");
        let path = d.path().join(name);
        let state = StateFile::default();
        assert_eq!(state.read(&dir, name).unwrap(), History::new());
        state.save(&dir, name, tmp, &history(1), None).unwrap();
        assert_eq!(state.read(&dir, name).unwrap(), history(1));
        // Another writer, same size, through a rename (a new inode) or in place.
        let other = StateFile::default();
        other.save(&dir, name, tmp, &history(2), None).unwrap();
        assert_eq!(state.read(&dir, name).unwrap(), history(2));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"number\": 2", "\"number\": 3")).unwrap();
        assert_eq!(state.read(&dir, name).unwrap(), history(3));
        std::fs::write(&path, "{").unwrap();
        assert!(state.read(&dir, name).is_err());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(state.read(&dir, name).unwrap(), History::new());
    }
}
