//! The few filesystem primitives the writer is built from: an open directory ([`Dir`]) from
//! whose descriptor every name under a repository is reached, durable file creation, renames
//! and removals (the directory fsync is the caller's, one per batch), ownership, and the
//! exclusive repository lock. Everything here either completes or returns an error naming the path.

use crate::error::{Error, IoContext, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode};
use nix::unistd::{Gid, Group, Uid, UnlinkatFlags, User};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// The plain owner is the core's (a check judges by it); resolving names is I/O, here.
pub use crate::core::scan::Owner;

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

/// A user's id from a name or a number.
pub(crate) fn resolve_user(u: &str) -> Result<u32> {
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
pub fn chown(file: impl AsFd, path: &Path, owner: Option<Owner>) -> Result<()> {
    if let Some(o) = owner {
        if fstat(&file).is_ok_and(|m| m.st_uid == o.uid && m.st_gid == o.gid) {
            return Ok(());
        }
        nix::unistd::fchown(
            &file,
            Some(Uid::from_raw(o.uid)),
            Some(Gid::from_raw(o.gid)),
        )
        .map_err(|e| Error::Chown {
            path: path.to_path_buf(),
            uid: o.uid,
            gid: o.gid,
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Creates a directory with mode 0700 owned by `owner`, parents as needed: the repository
/// itself, at the path the operator configured.
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
    File::open(parent(dir))
        .at(parent(dir))?
        .sync_all()
        .at(parent(dir))
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// An open directory, and every name under it reached from its descriptor (`openat`,
/// `renameat`, `unlinkat`, `linkat`, `fstatat`), never by a path resolved again: a directory
/// or link swapped in after a check cannot redirect a write. Names are single components;
/// fernetd's own files are never followed through a symbolic link. The path is only for
/// messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn io_at(path: &Path, e: Errno) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// An error about `path` from an errno, with the two a planted link or file gives said
/// plainly.
fn errno_at(path: &Path, e: Errno, what: &str) -> Error {
    let message = match e {
        Errno::ELOOP => format!("a symbolic link where {what}: fernetd does not follow it"),
        Errno::ENOTDIR => format!("not a directory, where {what}"),
        _ => return io_at(path, e),
    };
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    }
}

impl Dir {
    /// Opens a repository directory at the path the operator configured (a link there is
    /// theirs, so it is followed); `None` when nothing is there.
    pub fn open(path: &Path) -> Result<Option<Dir>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno_at(path, e, "the key repository should be")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same directory on a second descriptor (`dup`): no name is resolved again.
    pub fn try_clone(&self) -> Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone().at(&self.path)?,
            path: self.path.clone(),
        })
    }

    /// The path of `name` in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `name` must be one component: a `/` or `..` would leave the directory.
    fn component<'a>(&self, name: &'a str) -> Result<&'a str> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::Io {
                path: self.join(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a single file name",
                ),
            });
        }
        Ok(name)
    }

    /// One of fernetd's own directories in this one (`.fernetd`, `.fernetd/copies`), created
    /// with mode 0700 when missing (see [`Dir::own`]).
    pub fn make_own(&self, name: &str, owner: Option<Owner>) -> Result<Dir> {
        self.open_own(name, owner, true)?.ok_or_else(|| Error::Io {
            path: self.join(name),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// One of fernetd's own directories in this one, opened without following a link and
    /// checked on the descriptor itself to be a real directory owned by `owner` (or, without
    /// one, by this directory's owner), this process or root. Anything else there is an
    /// error naming it, and nothing is written through it. `None` when missing.
    pub fn own(&self, name: &str, owner: Option<Owner>) -> Result<Option<Dir>> {
        self.open_own(name, owner, false)
    }

    fn open_own(&self, name: &str, owner: Option<Owner>, create: bool) -> Result<Option<Dir>> {
        let name = self.component(name)?;
        let path = self.join(name);
        let mut created = false;
        if create {
            match nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) => created = true,
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno_at(&path, e, "fernetd keeps its own files")),
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(e) => return Err(self.planted(name, e, "fernetd keeps its own files")),
        };
        let dir = Dir { fd, path };
        if created {
            chown(&dir, &dir.path, owner)?;
            self.sync()?;
        }
        let expected = match owner {
            Some(o) => o.uid,
            None => self.stat()?.st_uid,
        };
        let me = nix::unistd::geteuid().as_raw();
        let uid = dir.stat()?.st_uid;
        if ![expected, me, 0].contains(&uid) {
            return Err(Error::Io {
                path: dir.path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "owned by uid {uid}, not by the key owner ({expected}), this process \
                         ({me}) or root: fernetd will not write there (chown it if it is \
                         fernetd's)"
                    ),
                ),
            });
        }
        Ok(Some(dir))
    }

    /// The error for `name` that could not be opened: a symbolic link (`O_NOFOLLOW` gives
    /// `ELOOP`, or `ENOTDIR` with `O_DIRECTORY`) or a file where a directory was wanted is
    /// said as such.
    fn planted(&self, name: &str, e: Errno, what: &str) -> Error {
        let is_link = matches!(e, Errno::ELOOP | Errno::ENOTDIR)
            && matches!(
                self.stat_at(name, false),
                Ok(Some(s)) if s.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK
            );
        errno_at(
            &self.join(name),
            if is_link { Errno::ELOOP } else { e },
            what,
        )
    }

    /// fstat of the directory itself.
    pub fn stat(&self) -> Result<FileStat> {
        fstat(&self.fd).map_err(|e| errno_at(&self.path, e, "a directory"))
    }

    /// fstatat of `name`: of the link itself unless `follow`; `None` when missing.
    pub fn stat_at(&self, name: &str, follow: bool) -> Result<Option<FileStat>> {
        let name = self.component(name)?;
        let flags = if follow {
            AtFlags::empty()
        } else {
            AtFlags::AT_SYMLINK_NOFOLLOW
        };
        match fstatat(&self.fd, name, flags) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_at(&self.join(name), e)),
        }
    }

    /// Whether anything (a link included) is named `name`.
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.stat_at(name, false)?.is_some())
    }

    /// The names in this directory (not `.` or `..`), in no particular order.
    pub fn names(&self) -> Result<Vec<String>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut list = nix::dir::Dir::openat(&self.fd, ".", flags, Mode::empty())
            .map_err(|e| errno_at(&self.path, e, "a directory"))?;
        let mut names = Vec::new();
        for entry in list.iter() {
            let entry = entry.map_err(|e| errno_at(&self.path, e, "a directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Opens `name` for reading without ever blocking, following a link only when `follow`
    /// (a key, as Keystone does; never one of fernetd's own files); then it must be a regular
    /// file of at most `cap` bytes. A FIFO, a device, a socket or a huge file planted there is
    /// an error naming it, not a hang or an exhausted memory. `None` when it does not exist.
    pub fn open_regular(&self, name: &str, cap: u64, follow: bool) -> Result<Option<File>> {
        let name = self.component(name)?;
        let path = self.join(name);
        let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let f = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.planted(name, e, "fernetd reads one of its files")),
        };
        let meta = f.metadata().at(&path)?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a regular file (fernetd reads only regular files here)",
            ))
            .at(&path);
        }
        if meta.len() > cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes: more than the {cap} this file can hold",
                    meta.len()
                ),
            ))
            .at(&path);
        }
        Ok(Some(f))
    }

    /// Reads one of fernetd's small files fully (see [`Dir::open_regular`]), or `None` if it
    /// does not exist.
    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.open_regular(name, SMALL_FILE, false)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        f.take(SMALL_FILE + 1)
            .read_to_end(&mut bytes)
            .at(self.join(name))?;
        Ok(Some(bytes))
    }

    /// Replaces fernetd's own file `name` here (the state, the clock, a published view; never
    /// a key name) with `content`: written to `tmp` ([`Dir::write_new`]), renamed over it,
    /// and the directory fsynced when `durable`. Key files and repair copies are written by
    /// the repository's executor alone.
    pub fn replace_own(
        &self,
        tmp: &str,
        name: &str,
        content: &[u8],
        owner: Option<Owner>,
        durable: bool,
    ) -> Result<()> {
        self.not_a_key(name)?;
        self.not_a_key(tmp)?;
        self.write_new(tmp, content, owner)?;
        match durable {
            true => self.rename_durable(tmp, name),
            false => self.rename(tmp, self, name),
        }
    }

    /// Removes fernetd's own file `name` (never a key name) if present, not synced.
    pub fn remove_own(&self, name: &str) -> Result<bool> {
        self.not_a_key(name)?;
        self.remove(name)
    }

    /// A key's name (`0`..`N`) is the executor's alone.
    fn not_a_key(&self, name: &str) -> Result<()> {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Io {
                path: self.join(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a key's name: only the repository's executor writes it",
                ),
            });
        }
        Ok(())
    }

    /// Creates `name` exclusively with mode 0600, gives it to `owner`, writes `content` and
    /// fsyncs it. A stale file of that name (a link included) is removed first: callers only
    /// use it for fernetd's own temp files.
    pub(super) fn write_new(&self, name: &str, content: &[u8], owner: Option<Owner>) -> Result<()> {
        self.remove(name)?;
        let path = self.join(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| self.planted(name, e, "fernetd writes one of its files"))?;
        let mut f = File::from(fd);
        chown(&f, &path, owner)?;
        f.write_all(content).at(&path)?;
        f.sync_all().at(&path)
    }

    /// Renames `from` in this directory to `to` in `dest` (one filesystem), not synced: the
    /// caller fsyncs the directories whose entries must be durable.
    pub(super) fn rename(&self, from: &str, dest: &Dir, to: &str) -> Result<()> {
        let (from, to) = (self.component(from)?, dest.component(to)?);
        nix::fcntl::renameat(&self.fd, from, &dest.fd, to).map_err(|e| io_at(&dest.join(to), e))
    }

    /// Renames `from` to `to` in this directory, then fsyncs it once, so the new name (and
    /// the old one's removal) is durable when this returns. A rename out of another directory
    /// is [`Dir::rename`], its batch fsynced by the caller.
    pub(super) fn rename_durable(&self, from: &str, to: &str) -> Result<()> {
        self.rename(from, self, to)?;
        self.sync()
    }

    /// Gives the file `from` the name `to` as well (a hard link; a link at `from` is linked
    /// itself, never followed). False when that cannot be done (a file named `to` exists, the
    /// filesystem has no hard links).
    pub(super) fn link(&self, from: &str, to: &str) -> Result<bool> {
        let (from, to) = (self.component(from)?, self.component(to)?);
        Ok(nix::unistd::linkat(&self.fd, from, &self.fd, to, AtFlags::empty()).is_ok())
    }

    /// Removes a file if present; returns whether it existed. Not synced (callers batch).
    pub(super) fn remove(&self, name: &str) -> Result<bool> {
        let name = self.component(name)?;
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io_at(&self.join(name), e)),
        }
    }

    /// fsyncs the directory so that renames, creations and removals in it are durable.
    pub fn sync(&self) -> Result<()> {
        nix::unistd::fsync(&self.fd).map_err(|e| io_at(&self.path, e))
    }

    /// Opens (creating when missing, mode 0600, owned by `owner`) fernetd's lock file here:
    /// never through a link, never blocking, and it must be a regular file.
    fn open_lock(&self, name: &str, owner: Option<Owner>) -> Result<File> {
        let name = self.component(name)?;
        let path = self.join(name);
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| self.planted(name, e, "fernetd keeps its lock"))?;
        let f = File::from(fd);
        if !f.metadata().at(&path)?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a regular file (fernetd's lock must be one)",
            ))
            .at(&path);
        }
        chown(&f, &path, owner)?;
        Ok(f)
    }
}

/// The exclusive per-repository lock (flock on `.fernetd/lock`). Released on drop, and by the
/// kernel if the process dies, so a crash never leaves a stale lock behind.
pub struct RepoLock {
    _lock: Flock<File>,
}

impl RepoLock {
    /// Waits up to `timeout` for the lock, polling; then fails naming the holder's pid.
    pub fn acquire(dir: &Dir, owner: Option<Owner>, timeout: Duration) -> Result<RepoLock> {
        const NAME: &str = "lock";
        let started = Instant::now();
        let mut file = dir.open_lock(NAME, owner)?;
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
                            lock: dir.join(NAME),
                            holder: holder_pid(dir, NAME),
                            waited: timeout,
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, errno)) => return Err(std::io::Error::from(errno)).at(dir.join(NAME)),
            }
        }
    }
}

/// A daemon's lifetime lock on one repository: an flock on the `.fernetd` directory itself
/// (its descriptor, opened without following a link), apart from [`RepoLock`], which each
/// write takes. Nothing is created for it, so a daemon holds it on a repository it cannot
/// write; the kernel releases it when the daemon dies, and every process sees it whatever its
/// pid namespace, so "held" means "a daemon runs for this repository".
pub struct DaemonLock {
    lock: Flock<OwnedFd>,
}

/// The file in which the daemon holding the lock records its pid (as its namespace sees it),
/// for the message of a second daemon refused for it. Best effort: a daemon that cannot
/// write it still holds the lock.
pub const DAEMON_PID: &str = "daemon.pid";

impl Drop for DaemonLock {
    fn drop(&mut self) {
        // Removed before the kernel lets the lock go: a later holder's pid is never removed.
        let _ = nix::unistd::unlinkat(&*self.lock, DAEMON_PID, UnlinkatFlags::NoRemoveDir);
    }
}

/// How long a starting daemon retries a held lock: a `status` or `rotate` probing it holds it
/// for an instant, another daemon for its lifetime.
const DAEMON_LOCK_RETRY: Duration = Duration::from_millis(500);

impl DaemonLock {
    /// Takes the lock on `internal` (`.fernetd`); `Ok(None)` when another process holds it.
    pub fn acquire(internal: Dir) -> Result<Option<DaemonLock>> {
        let started = Instant::now();
        let path = internal.path;
        let mut fd = internal.fd;
        loop {
            match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(DaemonLock { lock })),
                Err((f, Errno::EWOULDBLOCK)) => {
                    if started.elapsed() >= DAEMON_LOCK_RETRY {
                        return Ok(None);
                    }
                    fd = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => return Err(io_at(&path, e)),
            }
        }
    }

    /// Whether this lock is still on `internal`, the `.fernetd` the repository holds now: a
    /// `.fernetd` deleted and made again (or a repository directory replaced) while the daemon
    /// runs leaves the lock on the old one, and another daemon free to start.
    pub fn is_on(&self, internal: &Dir) -> Result<bool> {
        let locked = nix::sys::stat::fstat(&*self.lock).map_err(|e| io_at(&internal.path, e))?;
        let now = nix::sys::stat::fstat(&internal.fd).map_err(|e| io_at(&internal.path, e))?;
        Ok((locked.st_dev, locked.st_ino) == (now.st_dev, now.st_ino))
    }

    /// Whether a daemon holds the lock on `internal`: a non-blocking shared lock is tried
    /// and, when granted, let go at once.
    pub fn held(internal: Dir) -> Result<bool> {
        let path = internal.path;
        match Flock::lock(internal.fd, FlockArg::LockSharedNonblock) {
            Ok(_probe) => Ok(false),
            Err((_, Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, e)) => Err(io_at(&path, e)),
        }
    }
}

fn holder_pid(dir: &Dir, name: &str) -> String {
    let s = dir
        .read_small(name)
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

/// Joins a repository path and a key number.
pub fn key_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(number.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_lock_is_held_until_dropped_and_seen_from_another_descriptor() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap().unwrap();
        let own = || d.make_own("own", None).unwrap();
        assert!(!DaemonLock::held(own()).unwrap());
        let lock = DaemonLock::acquire(own()).unwrap().expect("free");
        own().write_new(DAEMON_PID, b"1\n", None).unwrap();
        assert!(DaemonLock::held(own()).unwrap());
        // A second holder, even in this process, is refused (after the short retry).
        assert!(DaemonLock::acquire(own()).unwrap().is_none());
        // The probe did not take it away.
        assert!(DaemonLock::held(own()).unwrap());
        drop(lock);
        assert!(!DaemonLock::held(own()).unwrap());
        assert!(
            !own().exists(DAEMON_PID).unwrap(),
            "the pid goes with the lock"
        );
        assert!(DaemonLock::acquire(own()).unwrap().is_some());
    }

    #[test]
    fn names_never_leave_the_directory_and_links_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(t.path().join("outside"), "outside").unwrap();
        let d = Dir::open(&inner).unwrap().unwrap();
        for name in ["", ".", "..", "../outside", "a/b"] {
            assert!(d.write_new(name, b"x", None).is_err(), "{name:?}");
            assert!(d.read_small(name).is_err(), "{name:?}");
            assert!(d.remove(name).is_err(), "{name:?}");
        }
        std::os::unix::fs::symlink("../outside", inner.join("link")).unwrap();
        let e = d.read_small("link").unwrap_err().to_string();
        assert!(e.contains("inner/link: a symbolic link"), "{e}");
        // Replacing a planted link removes the link, never writes its target.
        d.write_new("link", b"mine", None).unwrap();
        assert_eq!(std::fs::read(t.path().join("outside")).unwrap(), b"outside");
        assert_eq!(d.read_small("link").unwrap().unwrap(), b"mine");
        // A directory stays reachable through its descriptor after it is renamed away.
        let own = d.make_own("own", None).unwrap();
        std::fs::rename(inner.join("own"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(t.path(), inner.join("own")).unwrap();
        own.write_new("f", b"here", None).unwrap();
        assert_eq!(std::fs::read(t.path().join("moved/f")).unwrap(), b"here");
        assert!(!t.path().join("f").exists());
        let e = d.own("own", None).unwrap_err().to_string();
        assert!(e.contains("inner/own: a symbolic link"), "{e}");
    }
}
