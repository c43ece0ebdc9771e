//! The few filesystem primitives the writer is built from: durable file creation, durable
//! renames and removals (each followed by a directory fsync), ownership, and the exclusive
//! repository lock. Everything here either completes or returns an error naming the path.

use crate::error::{Error, IoContext, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Group, Uid, User};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Owner for files fernetd creates (the Keystone user and group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Resolves `--keystone-user/--keystone-group`, each a name or a numeric id.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Owner>> {
        match (user, group) {
            (None, None) => Ok(None),
            (Some(u), Some(g)) => Ok(Some(Owner {
                uid: resolve_user(u)?,
                gid: resolve_group(g)?,
            })),
            (Some(_), None) | (None, Some(_)) => Err(Error::Owner(
                "--keystone-user and --keystone-group must be given together".into(),
            )),
        }
    }
}

fn resolve_user(u: &str) -> Result<u32> {
    if let Ok(id) = u.parse::<u32>() {
        return Ok(id);
    }
    match User::from_name(u) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(Error::Owner(format!("--keystone-user: no such user '{u}'"))),
        Err(e) => Err(Error::Owner(format!("--keystone-user '{u}': {e}"))),
    }
}

fn resolve_group(g: &str) -> Result<u32> {
    if let Ok(id) = g.parse::<u32>() {
        return Ok(id);
    }
    match Group::from_name(g) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(Error::Owner(format!(
            "--keystone-group: no such group '{g}'"
        ))),
        Err(e) => Err(Error::Owner(format!("--keystone-group '{g}': {e}"))),
    }
}

/// Gives an open file or directory to `owner`, if any and if it is not already theirs: a
/// daemon running as the Keystone user (the shipped units, whose system call filter has no
/// `@chown`) creates its files with the right owner and never needs the call.
pub fn chown(file: &File, path: &Path, owner: Option<Owner>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let Some(o) = owner {
        if file
            .metadata()
            .is_ok_and(|m| m.uid() == o.uid && m.gid() == o.gid)
        {
            return Ok(());
        }
        nix::unistd::fchown(file, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid))).map_err(
            |e| Error::Chown {
                path: path.to_path_buf(),
                uid: o.uid,
                gid: o.gid,
                source: e.into(),
            },
        )?;
    }
    Ok(())
}

/// fsyncs a directory so that renames, creations and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// Creates `path` exclusively with mode 0600, gives it to `owner`, writes `content` and fsyncs
/// it. A stale file of that name is replaced (callers only use it for fernetd's own temp files).
pub fn write_new(path: &Path, content: &[u8], owner: Option<Owner>) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(path),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .at(path)?;
    chown(&f, path, owner)?;
    f.write_all(content).at(path)?;
    f.sync_all().at(path)
}

/// Renames within one filesystem and fsyncs the target directory (and the source directory
/// when it differs), so the new name is durable when this returns.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    rename(from, to)?;
    let to_dir = parent(to);
    sync_dir(to_dir)?;
    let from_dir = parent(from);
    if from_dir != to_dir {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// Renames within one filesystem, not synced (the caller fsyncs the target directory).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).at(to)
}

/// Removes a file if present; returns whether it existed. Not synced (callers batch).
pub fn remove_if_present(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// Creates a directory with mode 0700 owned by `owner`, parents as needed.
pub fn create_private_dir(dir: &Path, owner: Option<Owner>) -> Result<()> {
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).at(p)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).at(dir),
    }
    let f = File::open(dir).at(dir)?;
    chown(&f, dir, owner)?;
    sync_dir(parent(dir))
}

/// Creates (when missing) one of fernetd's own directories inside a repository (`.fernetd`,
/// `.fernetd/copies`) and makes sure it is one: a real directory, not a symbolic link or
/// another file someone planted, owned by `owner` (or, without one, by the owner of the
/// directory it is in). Anything else is an error naming it, and nothing is written there.
pub fn create_internal_dir(dir: &Path, owner: Option<Owner>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    create_private_dir(dir, owner)?;
    let bad = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)).at(dir);
    let meta = std::fs::symlink_metadata(dir).at(dir)?;
    if meta.file_type().is_symlink() {
        return bad("a symbolic link where fernetd keeps its own files: remove it".into());
    }
    if !meta.is_dir() {
        return bad("not a directory, where fernetd keeps its own files: remove it".into());
    }
    let expected = match owner {
        Some(o) => o.uid,
        None => std::fs::metadata(parent(dir)).at(parent(dir))?.uid(),
    };
    let me = nix::unistd::geteuid().as_raw();
    if ![expected, me, 0].contains(&meta.uid()) {
        return bad(format!(
            "owned by uid {}, not by the key owner ({expected}), this process ({me}) or root: \
             fernetd will not write there (chown it if it is fernetd's)",
            meta.uid()
        ));
    }
    Ok(())
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The exclusive per-repository lock (flock on `.fernetd/lock`). Released on drop, and by the
/// kernel if the process dies, so a crash never leaves a stale lock behind.
pub struct RepoLock {
    _lock: Flock<File>,
}

impl RepoLock {
    /// Waits up to `timeout` for the lock, polling; then fails naming the holder's pid.
    pub fn acquire(path: &Path, owner: Option<Owner>, timeout: Duration) -> Result<RepoLock> {
        let started = Instant::now();
        let mut file = open_lock_file(path, owner)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // Record our pid for the message a waiting process prints.
                    let _ = lock.set_len(0);
                    let _ = writeln!(&mut *lock, "{}", std::process::id());
                    return Ok(RepoLock { _lock: lock });
                }
                Err((f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    if started.elapsed() >= timeout {
                        return Err(Error::Locked {
                            lock: path.to_path_buf(),
                            holder: holder_pid(path),
                            waited: timeout,
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(std::io::Error::from(errno)).at(path),
            }
        }
    }
}

fn open_lock_file(path: &Path, owner: Option<Owner>) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
        .at(path)?;
    if !f.metadata().at(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file (fernetd's lock must be one)",
        ))
        .at(path);
    }
    chown(&f, path, owner)?;
    Ok(f)
}

fn holder_pid(path: &Path) -> String {
    let s = read_optional(path)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    match s.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    }
}

/// The most fernetd reads of any of its own small files (a key, the clock anchor, a lock).
pub const SMALL_FILE: u64 = 64 * 1024;

/// Opens a file fernetd reads without ever blocking or following a link in its last
/// component: `O_NONBLOCK | O_NOFOLLOW`, then it must be a regular file of at most `cap`
/// bytes. A FIFO, a device, a socket or a huge file planted there is an error naming it, not
/// a hang or an exhausted memory. `None` when it does not exist.
pub fn open_regular(path: &Path, cap: u64, follow: bool) -> Result<Option<File>> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if !follow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let f = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    let meta = f.metadata().at(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file (fernetd reads only regular files here)",
        ))
        .at(path);
    }
    if meta.len() > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} bytes: more than the {cap} this file can hold",
                meta.len()
            ),
        ))
        .at(path);
    }
    Ok(Some(f))
}

/// Reads a small file of fernetd's fully (see [`open_regular`]), or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let Some(f) = open_regular(path, SMALL_FILE, false)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    f.take(SMALL_FILE + 1).read_to_end(&mut bytes).at(path)?;
    Ok(Some(bytes))
}

/// Joins a repository path and a key number.
pub fn key_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(number.to_string())
}
