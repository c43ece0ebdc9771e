//! Watches the repositories' directories and reports which one changed. It only reports;
//! debouncing and every decision happen in the daemon loop.
//!
//! Each repository directory is watched (not recursively, so fernetd's own `.fernetd/` files
//! make no noise), and so is its parent: when the directory itself is replaced (moved away,
//! deleted, a new one moved in), the parent's event makes the loop re-add the watch.

use notify::{EventKind, RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc::UnboundedSender;

/// A repository changed: its index in the watched list. `replaced` when the directory itself
/// was created, removed or renamed (its watch must be re-added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub index: usize,
    pub replaced: bool,
}

pub struct Watcher {
    inner: notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl Watcher {
    /// Starts watching `dirs`; changes are sent to `tx`. A watcher error (an event queue
    /// overflow, say) is reported as a change of every repository, so nothing goes unchecked.
    pub fn start(dirs: Vec<PathBuf>, tx: UnboundedSender<Change>) -> notify::Result<Watcher> {
        let watched = dirs.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                for (index, dir) in watched.iter().enumerate() {
                    let mut hit = false;
                    let mut replaced = false;
                    for p in &ev.paths {
                        if p == dir {
                            hit = true;
                            replaced = true;
                        } else if p.parent() == Some(dir.as_path())
                            && p.file_name()
                                != Some(std::ffi::OsStr::new(crate::repository::INTERNAL_DIR))
                        {
                            hit = true;
                        }
                    }
                    if hit {
                        let _ = tx.send(Change { index, replaced });
                    }
                }
            }
            Err(e) => {
                tracing::warn!("file watcher: {e}; re-validating every repository");
                for index in 0..watched.len() {
                    let _ = tx.send(Change {
                        index,
                        replaced: true,
                    });
                }
            }
        };
        let inner = notify::recommended_watcher(handler)?;
        let mut w = Watcher { inner, dirs };
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
        let _ = self.inner.unwatch(&dir);
        if !dir.exists() {
            // Not created yet (cluster mode creates it on the first apply): the parent's
            // watch reports its creation, and this runs again then.
            tracing::debug!("{}: not there yet; watching its parent", dir.display());
        } else if let Err(e) = self.inner.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!("{}: cannot watch: {e}", dir.display());
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = self.inner.watch(parent, RecursiveMode::NonRecursive);
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// Absolute form of a repository path, so events (which carry absolute paths) match it.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
