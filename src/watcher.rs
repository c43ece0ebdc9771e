//! Watches the repositories' directories and reports which one changed. It only reports;
//! debouncing and every decision happen in the daemon loop.
//!
//! Each repository directory is watched (not recursively, so fernetd's own `.fernetd/` files
//! make no noise), and so is its parent: when the directory itself is replaced (moved away,
//! deleted, a new one moved in), the parent's event makes the loop re-add the watch.
//!
//! inotify is used directly, asking the kernel only for changes. Keystone opens every key file
//! for each token it issues or validates; a watch that also asked for opens (as the `notify`
//! crate's always does) would wake fernetd for every one of them.

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc::UnboundedSender;

/// A repository changed: its index in the watched list. `replaced` when the directory itself
/// was created, removed or renamed (its watch must be re-added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub index: usize,
    pub replaced: bool,
}

/// Everything that changes a directory's entries, a file's content or its permissions; not
/// opens, reads or closes after reading.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// What a watch descriptor stands for: the repositories it is the directory of, and those
/// it is the parent of (two repositories may share a parent).
#[derive(Debug, Default)]
struct Roles {
    dir_of: Vec<usize>,
    parent_of: Vec<usize>,
}

type Table = Arc<Mutex<HashMap<WatchDescriptor, Roles>>>;

pub struct Watcher {
    watches: Watches,
    table: Table,
    dirs: Vec<PathBuf>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Watcher {
    /// Starts watching `dirs`; changes are sent to `tx`. An event queue overflow is reported
    /// as a change of every repository, so nothing goes unchecked. Must run inside the runtime.
    pub fn start(dirs: Vec<PathBuf>, tx: UnboundedSender<Change>) -> std::io::Result<Watcher> {
        let stream = Inotify::init()?.into_event_stream(vec![0u8; 4096])?;
        let watches = stream.watches();
        let table: Table = Arc::default();
        let (names, t) = (dirs.clone(), table.clone());
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(event) = stream.next().await {
                let changes = match event {
                    Ok(ev) => classify(&t, &names, &ev.wd, ev.mask, ev.name.as_deref()),
                    Err(e) => {
                        tracing::warn!("file watcher: {e}; re-validating every repository");
                        everything(names.len())
                    }
                };
                for c in changes {
                    let _ = tx.send(c);
                }
            }
        })
        .abort_handle();
        let mut w = Watcher {
            watches,
            table,
            dirs,
            reader,
        };
        for i in 0..w.dirs.len() {
            w.rewatch(i);
        }
        Ok(w)
    }

    /// (Re-)adds the watches of repository `index`. A directory that does not exist (yet) is
    /// covered by its parent's watch and added when it appears.
    pub fn rewatch(&mut self, index: usize) {
        let Some(dir) = self.dirs.get(index).cloned() else {
            return;
        };
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the old directory (it may have been moved away and still exist elsewhere).
        let stale: Vec<WatchDescriptor> = table
            .iter_mut()
            .filter_map(|(wd, r)| {
                r.dir_of.retain(|&i| i != index);
                (r.dir_of.is_empty() && r.parent_of.is_empty()).then(|| wd.clone())
            })
            .collect();
        for wd in stale {
            table.remove(&wd);
            let _ = self.watches.remove(wd);
        }
        match self.watches.add(&dir, mask()) {
            Ok(wd) => table.entry(wd).or_default().dir_of.push(index),
            // Not created yet (cluster mode creates it on the first apply): the parent's
            // watch reports its creation, and this runs again then.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!("{}: not there yet; watching its parent", dir.display())
            }
            Err(e) => tracing::warn!("{}: cannot watch: {e}", dir.display()),
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(wd) = self.watches.add(parent, mask()) {
                let roles = table.entry(wd).or_default();
                if !roles.parent_of.contains(&index) {
                    roles.parent_of.push(index);
                }
            }
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// The repositories an event concerns.
fn classify(
    table: &Table,
    dirs: &[PathBuf],
    wd: &WatchDescriptor,
    mask: EventMask,
    name: Option<&OsStr>,
) -> Vec<Change> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        tracing::warn!("file watcher: event queue overflowed; re-validating every repository");
        return everything(dirs.len());
    }
    // Sent when a watch goes away (removed here, or its directory deleted after DELETE_SELF).
    if mask.contains(EventMask::IGNORED) {
        return Vec::new();
    }
    let table = table.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(roles) = table.get(wd) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &index in &roles.dir_of {
        match name {
            // fernetd making its own directory is no change; a link or a file put in its
            // place (or the directory removed) is one, judged like any other.
            Some(n)
                if n == OsStr::new(crate::repository::INTERNAL_DIR)
                    && mask.contains(EventMask::CREATE | EventMask::ISDIR) => {}
            Some(_) => out.push(Change {
                index,
                replaced: false,
            }),
            // The directory itself: deleted or moved (re-add), or its permissions changed.
            None => out.push(Change {
                index,
                replaced: mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF),
            }),
        }
    }
    for &index in &roles.parent_of {
        let own = dirs.get(index).and_then(|d| d.file_name());
        if name.is_some() && name == own {
            out.push(Change {
                index,
                replaced: true,
            });
        }
    }
    out
}

fn everything(n: usize) -> Vec<Change> {
    (0..n)
        .map(|index| Change {
            index,
            replaced: true,
        })
        .collect()
}

/// Absolute form of a repository path, so it names the same directory whatever the current
/// directory later becomes.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_the_repositories_they_concern() {
        let t = tempfile::tempdir().unwrap();
        let mut watches = Inotify::init().unwrap().watches();
        let wd = watches.add(t.path(), mask()).unwrap();
        // One watched directory: repository 0's own, and the parent of repository 1.
        let table: Table = Arc::default();
        table.lock().unwrap().insert(
            wd.clone(),
            Roles {
                dir_of: vec![0],
                parent_of: vec![1],
            },
        );
        let dirs = vec![t.path().to_path_buf(), t.path().join("b")];
        let at =
            |mask, name: Option<&str>| classify(&table, &dirs, &wd, mask, name.map(OsStr::new));
        let change = |index, replaced| Change { index, replaced };
        assert_eq!(at(EventMask::CLOSE_WRITE, Some("1")), [change(0, false)]);
        assert_eq!(
            at(EventMask::CREATE | EventMask::ISDIR, Some(".fernetd")),
            []
        );
        assert_eq!(at(EventMask::CREATE, Some(".fernetd")), [change(0, false)]);
        assert_eq!(at(EventMask::ATTRIB, None), [change(0, false)]);
        assert_eq!(at(EventMask::MOVE_SELF, None), [change(0, true)]);
        assert_eq!(at(EventMask::DELETE_SELF, None), [change(0, true)]);
        assert_eq!(at(EventMask::IGNORED, None), []);
        assert_eq!(
            at(EventMask::MOVED_TO | EventMask::ISDIR, Some("b")),
            [change(0, false), change(1, true)]
        );
        assert_eq!(
            at(EventMask::Q_OVERFLOW, None),
            [change(0, true), change(1, true)]
        );
    }
}
