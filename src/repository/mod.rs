//! The key repository on disk: Keystone's layout, written crash-safely by one writer at a time.
//!
//! Layout (Keystone's): one file per key, `0` staged, the highest number primary, the rest
//! secondary; directory 0700, files 0600. fernetd's own files (lock, state, temp keys) live in
//! the `.fernetd/` subdirectory, which Keystone's loader skips.
//!
//! A rotation, in this order (ARCHITECTURE.md, "The fsync sequence", says why each fsync is
//! there and why there are no more):
//! 1. write `.fernetd/staged.tmp` (a new key) and fsync it;
//! 2. link key `0` as `max+1` (a copy via `.fernetd/primary.tmp` where no link can be made):
//!    the staged key is now also the primary;
//! 3. rename `staged.tmp` to `0`: the new staged key replaces the old name atomically; one
//!    fsync of the repository makes 2 and 3 durable;
//! 4. save history (promotion, demotion, purge decisions) to `.fernetd/state.json`, durably;
//! 5. unlink the purged keys.
//!
//! Invariant: at every instant `0` exists, no key file is ever partially written, and no key
//! is removed before step 4 made the decision durable. Killed anywhere, the next writer
//! (`recover`) rolls back (before step 2) or forward (after it) and says which.

mod executor;
mod fsio;
pub mod scan;
mod state;

pub use crate::core::check::RetentionViolation;
pub use crate::core::rotation::RotateParams;
pub(crate) use fsio::resolve_user;
pub use fsio::{DaemonLock, Owner};
pub use scan::{EntryKind, Scan, INTERNAL_DIR};

use crate::core::change::{Change, Slot};
use crate::core::clock::Now;
use crate::core::guard;
use crate::core::history::{History, Observation};
use crate::core::key::{Fingerprint, Key};
use crate::core::outcome::Said;
use crate::core::rotation::{self, Decision};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use fsio::{key_path, Dir, RepoLock};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// fernetd's files in `.fernetd/`.
const STATE: &str = "state.json";
const STATE_TMP: &str = "state.json.tmp";
const CLOCK: &str = "clock";
const CLOCK_TMP: &str = "clock.tmp";
const PRIMARY_TMP: &str = "primary.tmp";
const STAGED_TMP: &str = "staged.tmp";
const RESTORE_TMP: &str = "restore.tmp";
const COPIES: &str = "copies";
/// keystone-manage's temp file for the new key 0, in the repository itself.
const KEYSTONE_TMP: &str = "0.tmp";

/// What a writer holds while it writes: the repository and its `.fernetd` open as
/// directories (every name under them reached from their descriptors, so nothing swapped in
/// after a check redirects a write), the owner of new files, and the lock until this drops.
struct Writer {
    repo: Dir,
    internal: Dir,
    owner: Option<Owner>,
    _lock: RepoLock,
}

impl Writer {
    fn scan(&self) -> Result<Scan> {
        Scan::of(&self.repo)
    }
}

/// Default time a writer waits for another fernetd holding the lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A key repository directory and how fernetd writes to it.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
    /// Explicit `--keystone-user/--keystone-group`; otherwise new files follow the directory.
    owner: Option<Owner>,
    lock_timeout: Duration,
    /// `repair = true`: keep a copy of every live key in `.fernetd/copies/` and restore a
    /// deleted or corrupted key from it.
    repair: bool,
    /// `fernetd rotate` without `--manual`: a rotation finding a running daemon (its daemon
    /// lock held) leaves the repository to it.
    defer_to_daemon: bool,
    state: state::StateFile,
}

/// What a command did, for the CLI to print.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Human sentences, in order: recoveries, observations, actions.
    pub notes: Vec<Said>,
    /// Warnings worth a `warning:` prefix (e.g. a kept key, an external change).
    pub warnings: Vec<Said>,
    pub rotation: Option<Decision>,
    /// Key numbers on disk afterwards.
    pub keys: Vec<u64>,
    pub primary: Option<u64>,
    /// Recovery staged a key 0 that was missing: no reader has held it yet, so it is not
    /// promoted in the same call.
    pub staged_fresh: bool,
    /// Not rotated: a daemon runs for the repository (it holds the daemon lock) and rotates
    /// it on its schedule. Judged under the write lock, so no daemon's rotation can come
    /// between the look and this one.
    pub deferred: bool,
    /// Keys lost inside their retention window, found now or recorded earlier and still
    /// open: tokens made with them fail until then (`key-lost-in-retention`).
    pub lost: Vec<RetentionViolation>,
    /// Keys restored from fernetd's copies (`repair = true`).
    pub repaired: Vec<u64>,
    /// Files that held no key under a number no key needs, removed (`repair = true`).
    pub cleared: Vec<u64>,
}

impl Outcome {
    /// What a repair did, said and recorded.
    fn repaired_by(&mut self, r: Repairs) {
        let restored = r.restored.iter().map(|&number| Said::Repaired { number });
        let cleared = r
            .cleared
            .iter()
            .map(|&number| Said::ClearedNonKey { number });
        self.warnings.extend(restored.chain(cleared));
        self.repaired = r.restored;
        self.cleared = r.cleared;
    }

    /// Its warnings, then its notes, as sentences.
    pub fn said(&self) -> Vec<String> {
        self.warnings
            .iter()
            .chain(&self.notes)
            .map(|s| s.to_string())
            .collect()
    }
}

impl Repository {
    pub fn new(dir: impl Into<PathBuf>, owner: Option<Owner>) -> Repository {
        Repository {
            dir: dir.into(),
            owner,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            repair: false,
            defer_to_daemon: false,
            state: state::StateFile::default(),
        }
    }

    pub fn with_repair(mut self, repair: bool) -> Repository {
        self.repair = repair;
        self
    }

    /// Rotations leave the repository to a running daemon (see [`Outcome::deferred`]).
    pub fn deferring_to_daemon(mut self, defer: bool) -> Repository {
        self.defer_to_daemon = defer;
        self
    }

    pub fn with_lock_timeout(mut self, t: Duration) -> Repository {
        self.lock_timeout = t;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn internal(&self) -> PathBuf {
        self.dir.join(INTERNAL_DIR)
    }

    /// `.fernetd/state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.internal().join(STATE)
    }

    /// `.fernetd`, opened for reading, `None` when it (or the repository) does not exist: a
    /// link or a file planted as `.fernetd` is an error naming it.
    fn open_internal(&self) -> Result<Option<Dir>> {
        match Dir::open(&self.dir)? {
            Some(repo) => repo.own(INTERNAL_DIR, self.owner),
            None => Ok(None),
        }
    }

    /// `now` as retention is judged here: never later than the first moment fernetd recorded
    /// on this boot plus the boot clock's time since ([`Now::anchored`]), so a step of the
    /// wall clock later in the boot ages no key, whatever the state file says (it is kept
    /// apart from the state file, which a restore or a copy may replace). The first call of
    /// a boot records the moment. Caller holds the lock.
    fn anchor(&self, w: &Writer, now: &Now) -> Result<Now> {
        let recorded = recorded_moment(&w.internal)?;
        let same_boot = |m: &crate::core::clock::Moment| {
            now.boot.as_ref().is_some_and(|b| b.boot == m.boot.boot)
        };
        match recorded.filter(same_boot) {
            Some(m) => Ok(now.anchored(Some(&m))),
            None => {
                if let Some(m) = now.moment() {
                    let text = serde_json::to_vec(&m).unwrap_or_default();
                    w.internal
                        .replace_own(CLOCK_TMP, CLOCK, &text, w.owner, false)?;
                }
                Ok(now.clone())
            }
        }
    }

    /// Moves this boot's anchor forward to `now` when the wall clock runs ahead of the
    /// anchor's timeline ([`crate::core::clock::step_ahead`]), returning the step it took up;
    /// `None`, writing nothing, when there is no such step (or no anchor of this boot to
    /// move). The caller has the evidence that `now` is right: fresh readings of the other
    /// nodes' clocks agreeing with it, or the system saying its clock is synchronized. Never
    /// backward: a wall clock behind the anchor's timeline is already what retention counts
    /// by. Takes the lock; written like the anchor itself (`.fernetd/clock`).
    pub fn reanchor(&self, now: &Now) -> Result<Option<chrono::Duration>> {
        if crate::core::clock::step_ahead(now, &self.judging_clock(now)).is_none() {
            return Ok(None);
        }
        let w = self.lock()?;
        let Some(recorded) = recorded_moment(&w.internal)? else {
            return Ok(None);
        };
        let judged = now.anchored(Some(&recorded));
        let (Some(step), Some(m)) = (crate::core::clock::step_ahead(now, &judged), now.moment())
        else {
            return Ok(None);
        };
        let text = serde_json::to_vec(&m).unwrap_or_default();
        w.internal
            .replace_own(CLOCK_TMP, CLOCK, &text, w.owner, false)?;
        Ok(Some(step))
    }

    /// [`Repository::anchor`] without writing (for `status` and other readers).
    pub fn judging_clock(&self, now: &Now) -> Now {
        let recorded = self
            .open_internal()
            .ok()
            .flatten()
            .and_then(|d| recorded_moment(&d).ok().flatten());
        now.anchored(recorded.as_ref())
    }

    /// Replaces `.fernetd/<name>` with `bytes` (written to a temp file, fsynced, renamed
    /// over it), without the lock: a view other processes read (the daemon's live problems
    /// for `status`). False, writing nothing, when the repository does not exist yet.
    pub fn publish(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        let Some(repo) = Dir::open(&self.dir)? else {
            return Ok(false);
        };
        let owner = self.file_owner(&repo)?;
        let internal = repo.make_own(INTERNAL_DIR, owner)?;
        let tmp = format!("{name}.tmp");
        internal.replace_own(&tmp, name, bytes, owner, false)?;
        Ok(true)
    }

    /// What [`Repository::publish`] wrote as `name`, if anything.
    pub fn published(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.open_internal()? {
            Some(d) => d.read_small(name),
            None => Ok(None),
        }
    }

    /// Removes what [`Repository::publish`] wrote as `name`.
    pub fn unpublish(&self, name: &str) -> Result<()> {
        if let Some(d) = self.open_internal()? {
            d.remove_own(name)?;
        }
        Ok(())
    }

    /// Takes this repository's daemon lock for as long as the returned guard lives (one
    /// daemon per repository), creating the repository and `.fernetd` when missing (as
    /// `setup` would) and recording this process's pid next to it. Another daemon holding it
    /// is [`Error::DaemonRunning`], naming that daemon's pid as it recorded it.
    pub fn hold_daemon_lock(&self) -> Result<DaemonLock> {
        if Dir::open(&self.dir)?.is_none() {
            self.check_owner_permitted()?;
            fsio::create_private_dir(&self.dir, self.owner)?;
        }
        let internal = match self.open_internal()? {
            Some(d) => d,
            None => {
                let repo = self.require_dir()?;
                let owner = self.file_owner(&repo)?;
                repo.make_own(INTERNAL_DIR, owner)?
            }
        };
        match DaemonLock::acquire(internal)? {
            Some(lock) => {
                let pid = format!("{}\n", std::process::id());
                if let Err(e) = self.publish(fsio::DAEMON_PID, pid.as_bytes()) {
                    tracing::debug!(
                        "{}: cannot record the daemon's pid: {e}",
                        self.dir.display()
                    );
                }
                Ok(lock)
            }
            None => Err(Error::DaemonRunning {
                dir: self.dir.clone(),
                holder: self
                    .daemon_pid()
                    .map_or_else(String::new, |pid| format!(" (pid {pid})")),
            }),
        }
    }

    /// Whether `lock` is still this repository's daemon lock (see [`DaemonLock::is_on`]);
    /// false when the repository has no `.fernetd` now.
    pub fn daemon_lock_is_current(&self, lock: &DaemonLock) -> Result<bool> {
        match self.open_internal()? {
            Some(d) => lock.is_on(&d),
            None => Ok(false),
        }
    }

    /// Whether a daemon holds this repository's daemon lock (whatever its pid namespace):
    /// false when there is no `.fernetd` to lock.
    pub fn daemon_running(&self) -> Result<bool> {
        match self.open_internal()? {
            Some(d) => DaemonLock::held(d),
            None => Ok(false),
        }
    }

    /// The pid the daemon holding the lock recorded, if it could.
    pub fn daemon_pid(&self) -> Option<u32> {
        let text = self.published(fsio::DAEMON_PID).ok().flatten()?;
        String::from_utf8_lossy(&text).trim().parse().ok()
    }

    /// A read-only snapshot (what `check` judges).
    pub fn scan(&self) -> Result<Scan> {
        Scan::take(&self.dir)
    }

    /// Reads the recorded history without locking; empty when none was saved.
    pub fn history(&self) -> Result<History> {
        match self.open_internal()? {
            Some(d) => self.state.read(&d, STATE),
            None => Ok(History::new()),
        }
    }

    /// The recorded history, read by a writer.
    fn written_history(&self, w: &Writer) -> Result<History> {
        self.state.read(&w.internal, STATE)
    }

    /// The recorded history, refused when the keys on disk contradict it: nothing is ever
    /// removed or re-dated on the word of a state file that is wrong about the disk (edited,
    /// or copied from another node or a backup). A key file that is there but unreadable
    /// counts as the key history knows it by ([`present`]): a corrupted primary does not make
    /// the disk's primary a lower key.
    fn trusted_history(&self, w: &Writer, scan: &Scan, now: &Now) -> Result<History> {
        let h = self.written_history(w)?;
        let disk = present(scan, &h);
        let mut h = trusted(h, &disk, self.state_path())?;
        h.not_before_files(&scan.changed(), now);
        Ok(h)
    }

    fn save_history(&self, w: &Writer, h: &History, now: &Now) -> Result<()> {
        self.state.save(&w.internal, STATE, STATE_TMP, h, w.owner)?;
        if self.repair {
            self.sync_copies(w, h, now)?;
        }
        Ok(())
    }

    /// `.fernetd/copies` (`repair = true`), created when missing.
    fn copies(&self, w: &Writer) -> Result<Dir> {
        w.internal.make_own(COPIES, w.owner)
    }

    /// Keeps one copy per key in the history, and the copies of keys lost inside their
    /// retention ([`History::copies_kept`]): new keys are copied from the disk (and a copy
    /// that no longer holds its key is written again while the key is on disk); only the
    /// copies of keys fernetd purged, or whose lost window closed, are deleted
    /// ([`History::copy_may_go`]), so a key purged on purpose can never be restored and one
    /// lost outside fernetd always can. A copy the history does not explain (a state file
    /// deleted or replaced) stays: it is the evidence of a loss ([`History::unexplained`]).
    fn sync_copies(&self, w: &Writer, h: &History, now: &Now) -> Result<()> {
        let dir = self.copies(w)?;
        let wanted: std::collections::BTreeSet<String> = h
            .copies_kept(now)
            .into_iter()
            .map(|fp| fp.to_string())
            .collect();
        let mut present = std::collections::BTreeSet::new();
        // The key names stay as they are: the change is the copies'.
        let mut change = Change::default();
        let mut drop = Vec::new();
        for name in dir.names()? {
            // Temp files of an interrupted copy go; a copy only on the history's evidence.
            let may_go = name
                .parse::<Fingerprint>()
                .map_or(true, |fp| h.copy_may_go(fp, now));
            if !wanted.contains(&name) && may_go {
                change.drop_copy(&name);
                drop.push(name);
            } else if own_key(&dir, &name)?.is_some_and(|k| k.fingerprint().to_string() == name) {
                present.insert(name);
            }
        }
        let scan = w.scan()?;
        let mut write = Vec::new();
        for (n, k) in scan.keys() {
            let fp = k.fingerprint().to_string();
            let recorded = h
                .keys
                .get(&n)
                .is_some_and(|r| r.fingerprint == k.fingerprint());
            if recorded && !present.contains(&fp) {
                change.copies_written.insert(k.fingerprint());
                write.push(k);
            }
        }
        let approval = guard::approve(change, h, Duration::ZERO, now, false)
            .map_err(|r| self.refused("keeping the repair copies", &r))?;
        executor::sync_copies(w, &dir, approval, &drop, &write)
    }

    /// The fingerprints of the repair copies in `dir` that hold the key they are named after.
    fn copy_fingerprints(dir: &Dir) -> Result<Vec<Fingerprint>> {
        let mut out = Vec::new();
        for name in dir.names()? {
            let Ok(fp) = name.parse::<Fingerprint>() else {
                continue;
            };
            if own_key(dir, &name)?.is_some_and(|k| k.fingerprint() == fp) {
                out.push(fp);
            }
        }
        Ok(out)
    }

    /// `repair = true`: the repair copies whose material `history` does not explain and that
    /// `disk` does not hold ([`History::unexplained`]), read without the lock (nothing when
    /// there are no copies).
    fn unexplained_copies(
        &self,
        history: &History,
        disk: &BTreeMap<u64, Fingerprint>,
    ) -> Result<Vec<Fingerprint>> {
        if !self.repair {
            return Ok(Vec::new());
        }
        let Some(copies) = self
            .open_internal()?
            .map(|d| d.own(COPIES, self.owner))
            .transpose()?
            .flatten()
        else {
            return Ok(Vec::new());
        };
        Ok(history.unexplained(Self::copy_fingerprints(&copies)?, disk))
    }

    /// `repair = true`: records, in a history just reconciled with the disk, the material of
    /// every repair copy it does not explain as lost from now for a whole `retention`
    /// ([`History::record_unseen`]): it left the disk while no history saw it.
    fn record_unseen(
        &self,
        w: &Writer,
        history: &mut History,
        retention: Duration,
        now: &Now,
    ) -> Result<()> {
        if !self.repair {
            return Ok(());
        }
        let copies = Self::copy_fingerprints(&self.copies(w)?)?;
        for fp in history.unexplained(copies, &history.fingerprints()) {
            history.record_unseen(fp, retention, now);
        }
        Ok(())
    }

    /// A change the gate refused, as the error that says so: every key stays.
    fn refused(&self, what: &str, r: &guard::Refusal) -> Error {
        Error::Refused {
            input: format!("{}: {what}", self.dir.display()),
            reason: r.would(),
        }
    }

    /// Restores keys of the history that are missing or unreadable on disk and still needed
    /// (key 0, the primary, or inside their retention window; with [`Needed::Every`], every
    /// key the history holds), from fernetd's copies. Nothing is restored when the change
    /// includes a rotation fernetd did not make: its deletions were that tool's purge.
    /// Returns the restored numbers. Caller holds the lock.
    fn repair_from_copies(
        &self,
        w: &Writer,
        scan: &Scan,
        history: &History,
        retention: Duration,
        now: &Now,
        needed: Needed,
    ) -> Result<Repairs> {
        let disk = scan.fingerprints();
        // Standalone, such a rotation's deletions were that tool's purge. In a cluster the set
        // decides: keystone-manage's purge there is a loss like any other.
        let rotated_elsewhere = history
            .keys
            .get(&0)
            .is_some_and(|r| disk.iter().any(|(&n, &fp)| n > 0 && fp == r.fingerprint));
        if rotated_elsewhere && needed == Needed::InWindow {
            return Ok(Repairs::default());
        }
        let primary = history.primary();
        // A file that is not a key Keystone could read (garbage, empty) is replaced by its
        // copy; one fernetd cannot open is left alone: what it holds is not known (it may be
        // material Keystone reads as another user), and no copy may overwrite the unknown.
        let non_keys = scan.non_keys();
        let copies = self.copies(w)?;
        let mut restored = Vec::new();
        // Keys that may have been Keystone's primary since the last look are needed too (an
        // unreadable primary counts as gone here: what was under it is not known).
        let stood = guard::stood_in(history, &scan.fingerprints());
        // Keys the history holds, and keys recorded lost inside their window (by a `setup`,
        // `rotate` or `status` that ran without repair) whose number is still free.
        let recorded = history.keys.iter().map(|(&n, r)| {
            let needed = needed == Needed::Every
                || n == 0
                || Some(n) == primary
                || stood.contains(&n)
                || r.retained_until(retention, now) > now.wall;
            (n, r.fingerprint, needed)
        });
        let lost = history
            .purged
            .iter()
            .filter(|p| p.lost_open_until(now).is_some())
            .filter(|p| !history.keys.contains_key(&p.number))
            .map(|p| (p.number, p.fingerprint, true));
        let candidates: Vec<(u64, Fingerprint, bool)> = recorded.chain(lost).collect();
        // A file that is no key under a number whose key the history recorded (held past its
        // window, or purged: by fernetd, or found gone) and no token needs: Keystone's loader
        // fails every token while it is there, and it holds no material a token could need.
        // Removed, through the gate (which judges an unreadable slot by the history's key of
        // that number). A number the history never saw (a rotation made outside fernetd, then
        // the file broken) may have been Keystone's primary: that stays reported for the
        // operator.
        let needs = |n: u64| candidates.iter().any(|&(m, _, needed)| m == n && needed);
        let cleared: Vec<u64> = non_keys
            .iter()
            .copied()
            .filter(|&n| !needs(n) && history.records(n))
            .collect();
        // Every restore in one change, approved, then made with one directory fsync.
        let mut change = Change::from(slots(scan));
        let mut batch: Vec<(u64, Key)> = Vec::new();
        for (n, fingerprint, needed) in candidates {
            if !needed || restored.contains(&n) {
                continue;
            }
            let missing = !disk.contains_key(&n) && !w.repo.exists(&n.to_string())?;
            if !(missing || non_keys.contains(&n)) {
                continue;
            }
            match own_key(&copies, &fingerprint.to_string())? {
                Some(k) if k.fingerprint() == fingerprint => {
                    change.put(n, fingerprint);
                    batch.push((n, k));
                    restored.push(n);
                }
                _ => {}
            }
        }
        if !batch.is_empty() {
            let approval = guard::approve(change, history, retention, now, false)
                .map_err(|r| self.refused("restoring a key from its copy", &r))?;
            executor::restore(w, approval, &batch, &[])?;
        }
        if cleared.is_empty() {
            return Ok(Repairs { restored, cleared });
        }
        // Apart: a removal the gate refuses (it judges the history's key of that number
        // still live) leaves the file, and the restores stand.
        let mut change = Change::from(slots(scan));
        for &n in &cleared {
            change.remove_key(n);
        }
        let cleared = match guard::approve(change, history, retention, now, false) {
            Ok(approval) => {
                executor::restore(w, approval, &[], &cleared)?;
                cleared
            }
            Err(_) => Vec::new(),
        };
        Ok(Repairs { restored, cleared })
    }

    /// Fails before touching the disk when the requested owner cannot be set: only root may
    /// give files to another user, or to a group it is not in.
    fn check_owner_permitted(&self) -> Result<()> {
        let Some(o) = self.owner else { return Ok(()) };
        if nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let uid_ok = o.uid == nix::unistd::geteuid().as_raw();
        let gid_ok = o.gid == nix::unistd::getegid().as_raw()
            || nix::unistd::getgroups()
                .map(|g| g.iter().any(|g| g.as_raw() == o.gid))
                .unwrap_or(false);
        if uid_ok && gid_ok {
            Ok(())
        } else {
            Err(Error::Owner(format!(
                "cannot give key files to uid {} gid {} without root; run as root or as that user",
                o.uid, o.gid
            )))
        }
    }

    /// Owner for new files: the explicit one, else (as root) the directory's owner.
    fn file_owner(&self, repo: &Dir) -> Result<Option<Owner>> {
        if self.owner.is_some() {
            return Ok(self.owner);
        }
        if nix::unistd::geteuid().is_root() {
            let m = repo.stat()?;
            return Ok(Some(Owner {
                uid: m.st_uid,
                gid: m.st_gid,
            }));
        }
        Ok(None)
    }

    /// What every writer does first: open the repository, settle the owner of new files,
    /// take the lock (creating `.fernetd/` when needed), and complete or roll back whatever a
    /// killed writer left (reported in `out`).
    fn begin_write(&self, out: &mut Outcome) -> Result<Writer> {
        let w = self.lock()?;
        self.recover(&w, out)?;
        Ok(w)
    }

    /// Opens the repository and `.fernetd` (created when needed) and takes the lock.
    fn lock(&self) -> Result<Writer> {
        let repo = self.require_dir()?;
        let owner = self.file_owner(&repo)?;
        let internal = repo.make_own(INTERNAL_DIR, owner)?;
        let lock = RepoLock::acquire(&internal, owner, self.lock_timeout)?;
        Ok(Writer {
            repo,
            internal,
            owner,
            _lock: lock,
        })
    }

    /// [`Repository::begin_write`], and the clock as this repository judges retention.
    fn begin_timed_write(&self, out: &mut Outcome, now: &Now) -> Result<(Writer, Now)> {
        let w = self.begin_write(out)?;
        let judged = self.anchor(&w, now)?;
        out.warnings
            .extend(crate::core::clock::step_warning(now, &judged).map(Said::Clock));
        Ok((w, judged))
    }

    /// The repository directory, opened: it must exist before anything but `setup` touches
    /// it.
    fn require_dir(&self) -> Result<Dir> {
        let not = |reason: &str| Error::NotInitialized {
            dir: self.dir.clone(),
            reason: reason.into(),
        };
        match Dir::open(&self.dir) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(not("directory does not exist")),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::InvalidData => {
                Err(not("not a directory"))
            }
            Err(e) => Err(e),
        }
    }

    /// `fernetd setup`: creates and initializes the repository (`{0, 1}`), or, when it is
    /// initialized, changes no key: it completes an interrupted rotation, restores lost keys
    /// from their copies (`repair = true`) and records history, with every key lost inside
    /// its `retention` ([`Outcome::lost`]).
    pub fn setup(&self, retention: Duration, now: &Now) -> Result<Outcome> {
        let mut out = Outcome::default();
        self.check_owner_permitted()?;
        if self.dir.exists() {
            // Refuse early, before the lock creates anything; checked again under the lock
            // (with repair, only there: an unreadable key may be one a copy restores).
            if !self.repair {
                ensure_writable(&self.scan()?)?;
            }
        } else {
            if self.owner.is_none() && nix::unistd::geteuid().is_root() {
                out.warnings.push(Said::CreatedOwnedByRoot {
                    dir: self.dir.clone(),
                });
            }
            fsio::create_private_dir(&self.dir, self.owner)?;
            out.notes.push(Said::Created {
                dir: self.dir.clone(),
            });
        }
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        let now = &now;
        let scan = w.scan()?;
        let mut history = self.trusted_history(&w, &scan, now)?;
        if scan.key_entries().next().is_none() {
            let (primary, staged) = (generate()?, generate()?);
            let first = [(1, &primary), (0, &staged)];
            let mut change = Change::from(slots(&scan));
            for (number, key) in first {
                change.put(number, key.fingerprint());
            }
            let approval = guard::approve(change, &history, retention, now, false)
                .map_err(|r| self.refused("setup", &r))?;
            executor::create(&w, approval, &first)?;
            for (number, key) in first {
                history.record_created(number, key.fingerprint(), now);
            }
            history.last_rotation = Some(now.wall);
            self.save_history(&w, &history, now)?;
            out.notes.push(Said::Initialized);
        } else {
            let stood = guard::stood_in(&history, &scan.fingerprints());
            let scan = self.repair_now(&w, scan, &history, retention, now, &mut out)?;
            if !out.repaired.is_empty() {
                for &n in &stood {
                    history.stood_in(n, now);
                }
            }
            ensure_writable(&scan)?;
            describe_clock(
                &history,
                &scan.fingerprints(),
                now,
                &self.state_path(),
                &mut out,
            );
            let (notes, _) = guard::reconcile(&mut history, &scan.fingerprints(), retention, now);
            describe_observations(&notes, &mut out);
            self.record_unseen(&w, &mut history, retention, now)?;
            self.save_history(&w, &history, now)?;
            out.lost = self.still_lost(&history, retention, now);
            let keys = scan.keys();
            out.notes.push(Said::AlreadyInitialized {
                keys: keys.len(),
                primary: crate::core::history::primary(keys.keys().copied()).unwrap_or(0),
            });
        }
        finish(&w, &mut out)?;
        Ok(out)
    }

    /// `fernetd rotate`: one Keystone-compatible rotation with the retention guard.
    pub fn rotate(&self, params: RotateParams, now: &Now) -> Result<Outcome> {
        // `now` is this moment: the time the rotation takes (a lock wait included) is added
        // to it where the demotion is dated.
        let began = std::time::Instant::now();
        let mut out = Outcome::default();
        self.require_dir()?;
        self.check_owner_permitted()?;
        // Refuse early, before the lock creates anything; checked again under the lock (with
        // repair, only there: an unreadable key may be one a copy restores).
        if !self.repair {
            ensure_writable(&self.scan()?)?;
        }
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        // On the `.fernetd` this writer holds (its descriptor, never the name again).
        if self.defer_to_daemon && DaemonLock::held(w.internal.try_clone()?)? {
            out.deferred = true;
            finish(&w, &mut out)?;
            return Ok(out);
        }
        let now = &now;
        let scan = w.scan()?;
        let (scan, stood) = match self.repair {
            true => {
                let history = self.trusted_history(&w, &scan, now)?;
                let stood = guard::stood_in(&history, &scan.fingerprints());
                let scan = self.repair_now(&w, scan, &history, params.retention, now, &mut out)?;
                match out.repaired.is_empty() {
                    true => (scan, Vec::new()),
                    false => (scan, stood),
                }
            }
            false => (scan, Vec::new()),
        };
        ensure_writable(&scan)?;
        if out.staged_fresh {
            // A key 0 staged this instant has been read by no Keystone process and no peer:
            // promoting it now would make a primary that readers do not hold. It is recorded
            // and waits for the next rotation.
            let disk = scan.fingerprints();
            let mut history = self.trusted_history(&w, &scan, now)?;
            for &n in &stood {
                history.stood_in(n, now);
            }
            let (notes, _) = guard::reconcile(&mut history, &disk, params.retention, now);
            describe_observations(&notes, &mut out);
            self.record_unseen(&w, &mut history, params.retention, now)?;
            self.save_history(&w, &history, now)?;
            out.lost = self.still_lost(&history, params.retention, now);
            out.notes.push(Said::NotRotatedFreshZero);
            finish(&w, &mut out)?;
            return Ok(out);
        }
        let keys = scan.keys();
        if keys.contains_key(&crate::core::rotation::MAX_KEY) {
            return Err(Error::Invalid {
                path: key_path(&self.dir, crate::core::rotation::MAX_KEY),
                problem: "the largest number a key can have: no rotation can follow it (the \
                          next number would wrap); renumber the keys by hand"
                    .into(),
            });
        }
        let staged = match keys.get(&0) {
            Some(k) => (*k).clone(),
            None => {
                return Err(Error::NotInitialized {
                    dir: self.dir.clone(),
                    reason: if keys.is_empty() {
                        "no keys".into()
                    } else {
                        "no key 0".into()
                    },
                })
            }
        };
        let disk = scan.fingerprints();
        if let Some(expected) = params.expected_primary {
            crate::core::credentials::still_primary(expected, &disk).map_err(|reason| {
                Error::Refused {
                    input: format!("{}: this rotation", self.dir.display()),
                    reason,
                }
            })?;
        }
        let mut history = self.trusted_history(&w, &scan, now)?;
        for &n in &stood {
            history.stood_in(n, now);
        }
        describe_clock(&history, &disk, now, &self.state_path(), &mut out);
        let (notes, _) = guard::reconcile(&mut history, &disk, params.retention, now);
        describe_observations(&notes, &mut out);
        self.record_unseen(&w, &mut history, params.retention, now)?;

        let numbers: Vec<u64> = keys.keys().copied().collect();
        let decision = rotation::decide(
            &numbers,
            &history,
            now,
            params.max_active_keys,
            params.retention,
            params.force_purge,
        );
        let new_staged = generate()?;
        // The gate, whatever `decide` said: what the disk will hold must keep every live key.
        let mut change = Change::from(slots(&scan));
        change.put(decision.new_primary, staged.fingerprint());
        change.put(0, new_staged.fingerprint());
        for &n in &decision.purge {
            change.remove_key(n);
        }
        let approval = guard::approve(change, &history, params.retention, now, params.force_purge)
            .map_err(|r| Error::Refused {
                input: format!("{}: this rotation", self.dir.display()),
                reason: r.would(),
            })?;

        // Steps 1-3 (the new key 0's file, the promotion, the rename, one directory fsync),
        // step 4, then step 5 (the purge): the decision is durable before anything is
        // removed. The old primary encrypted tokens until the new one's name landed: its
        // demotion (from which its retention counts) is dated then, not when the rotation
        // began. A key 0 fernetd created was fsynced when written: its link needs no fsync.
        let zero_durable = history
            .keys
            .get(&0)
            .is_some_and(|r| r.fingerprint == staged.fingerprint() && r.created.is_some());
        executor::rotate(
            &w,
            approval,
            &staged,
            &new_staged,
            decision.new_primary,
            &decision.purge,
            zero_durable,
            || {
                let landed = now.later_by(began.elapsed());
                history.record_rotation(decision.new_primary, new_staged.fingerprint(), &landed);
                for &n in &decision.purge {
                    history.record_purge(n, now.wall);
                }
                self.save_history(&w, &history, now)
                    .map_err(|e| Error::RotatedUnsaved {
                        new_primary: decision.new_primary,
                        source: Box::new(e),
                    })
            },
        )?;

        out.notes.push(Said::Rotated {
            new_primary: decision.new_primary,
        });
        if !decision.purge.is_empty() {
            out.notes.push(Said::Purged {
                numbers: decision.purge.clone(),
            });
        }
        for (n, until) in &decision.kept {
            out.warnings.push(Said::KeptBeyondMax {
                number: *n,
                max_active_keys: params.max_active_keys,
                until: *until,
            });
        }
        out.rotation = Some(decision);
        out.lost = self.still_lost(&history, params.retention, now);
        finish(&w, &mut out)?;
        Ok(out)
    }

    /// Credentials: every stored credential was verified on `primary` by a check that began
    /// at `began` ([`crate::credentials::migrate_and_verify`]). Under the lock, while
    /// `primary` is still the primary on disk, closes the losses recorded before then
    /// ([`History::close_verified_losses`]) and returns their numbers. Nothing else changes:
    /// a loss not yet recorded is recorded later, after the check, and stays open.
    pub fn record_verified(
        &self,
        primary: Fingerprint,
        began: &Now,
        now: &Now,
    ) -> Result<Vec<u64>> {
        let mut out = Outcome::default();
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        let began = self.judging_clock(began);
        let scan = w.scan()?;
        let mut history = self.trusted_history(&w, &scan, &now)?;
        let closed = history.close_verified_losses(primary, &scan.fingerprints(), &began);
        if !closed.is_empty() {
            self.save_history(&w, &history, &now)?;
        }
        Ok(closed)
    }

    /// `repair = true`: restores from fernetd's copies the keys `history` says are missing or
    /// unreadable and still needed, says so in `out`, and returns the disk as it is then.
    fn repair_now(
        &self,
        w: &Writer,
        scan: Scan,
        history: &History,
        retention: Duration,
        now: &Now,
        out: &mut Outcome,
    ) -> Result<Scan> {
        if !self.repair {
            return Ok(scan);
        }
        let Repairs { restored, cleared } =
            self.repair_from_copies(w, &scan, history, retention, now, Needed::InWindow)?;
        if restored.is_empty() && cleared.is_empty() {
            return Ok(scan);
        }
        out.repaired_by(Repairs { restored, cleared });
        w.scan()
    }

    /// The losses still open in a history that matches the disk (each recorded with its
    /// removal, or with the repair copy that was its only evidence), as what is reported.
    fn still_lost(
        &self,
        history: &History,
        retention: Duration,
        now: &Now,
    ) -> Vec<RetentionViolation> {
        let lost = guard::open_losses(history, &history.fingerprints(), retention, now);
        let mut out = self.violations(lost);
        out.extend(self.open_unseen(history, now));
        at_stake(out, retention)
    }

    /// The material recorded as gone unseen (a repair copy no record explained) whose window
    /// is still open at `now`, as reported.
    fn open_unseen(&self, history: &History, now: &Now) -> Vec<RetentionViolation> {
        self.unseen_violations(
            history
                .unseen
                .iter()
                .filter_map(|u| Some((u.fingerprint, u.open_until(now)?))),
        )
    }

    /// Every key lost inside its `retention` at `now` as `scan` and `history` show it:
    /// recorded, or judged from the disk (and, with `repair = true`, from the repair copies
    /// the history does not explain: lost from now) when nothing has recorded it yet. Reads
    /// and writes nothing (`status`, `check`).
    pub fn lost_keys(
        &self,
        scan: &Scan,
        history: &History,
        retention: Duration,
        now: &Now,
    ) -> Vec<RetentionViolation> {
        let disk = present(scan, history);
        let mut out = self.violations(guard::open_losses(history, &disk, retention, now));
        out.extend(self.open_unseen(history, now));
        // A copy that cannot be read is no evidence `status` can show; a writer reports it.
        let unexplained = self.unexplained_copies(history, &disk).unwrap_or_default();
        let until = guard::from_now(retention, now);
        out.extend(self.unseen_violations(unexplained.into_iter().map(|fp| (fp, until))));
        at_stake(out, retention)
    }

    /// `lost` as reported, with each key's path.
    pub fn violations(&self, lost: Vec<guard::Lost>) -> Vec<RetentionViolation> {
        lost.into_iter()
            .map(|l| RetentionViolation {
                path: key_path(&self.dir, l.number),
                number: Some(l.number),
                fingerprint: l.fingerprint,
                until: l.until,
                credentials: false,
            })
            .collect()
    }

    /// Material lost unseen (fingerprint, until when) as reported, with its copy's path.
    fn unseen_violations(
        &self,
        lost: impl Iterator<Item = (Fingerprint, DateTime<Utc>)>,
    ) -> Vec<RetentionViolation> {
        lost.map(|(fingerprint, until)| RetentionViolation {
            path: self.internal().join(COPIES).join(fingerprint.to_string()),
            number: None,
            fingerprint,
            until,
            credentials: false,
        })
        .collect()
    }

    /// What the watcher calls after a file event: compares the disk with the recorded history
    /// and, only when they differ (a change fernetd did not make), takes the lock, records the
    /// change and reports it, with every key that vanished inside its retention window.
    pub fn observe(&self, retention: Duration, now: &Now) -> Result<Observed> {
        let scan = self.scan()?;
        let history = self.history()?;
        // A corrupted key drops out of the fingerprints, so this also catches corruption
        // (which repair may undo; history never records it as a removal).
        // A repair copy the history does not explain is a loss to record: the writer's path.
        // A file that is no key (garbage, empty) under a number the history does not hold
        // changes no fingerprint: with repair on, it is looked at too.
        let non_key = self.repair && !scan.non_keys().is_empty();
        if !non_key
            && same_keys(&scan.fingerprints(), &history)
            && self
                .unexplained_copies(&history, &history.fingerprints())?
                .is_empty()
        {
            let judged = self.judging_clock(now);
            return Ok(Observed {
                report: crate::core::check::check(&scan, self.owner),
                changes: Vec::new(),
                retention_violations: self.still_lost(&history, retention, &judged),
                repaired: Vec::new(),
                cleared: Vec::new(),
                history,
            });
        }
        let w = self.lock()?;
        let now = &self.anchor(&w, now)?;
        let mut scan = w.scan()?;
        let mut history = self.trusted_history(&w, &scan, now)?;
        let mut repaired = Vec::new();
        let mut cleared = Vec::new();
        let before = history.clone();
        if self.repair {
            let stood = guard::stood_in(&history, &scan.fingerprints());
            Repairs {
                restored: repaired,
                cleared,
            } = self.repair_from_copies(&w, &scan, &history, retention, now, Needed::InWindow)?;
            if !repaired.is_empty() || !cleared.is_empty() {
                scan = w.scan()?;
                for &n in &stood {
                    history.stood_in(n, now);
                }
            }
        }
        let disk = present(&scan, &history);
        // Each loss is recorded with its removal, so that `status` (and a restarted daemon)
        // say it too.
        let (changes, _) = guard::reconcile(&mut history, &disk, retention, now);
        self.record_unseen(&w, &mut history, retention, now)?;
        if history != before {
            self.save_history(&w, &history, now)?;
        }
        let retention_violations = self.still_lost(&history, retention, now);
        Ok(Observed {
            report: crate::core::check::check(&scan, self.owner),
            changes,
            retention_violations,
            repaired,
            cleared,
            history,
        })
    }

    /// Cluster mode, `repair = true`: restores from fernetd's copies every key the history
    /// (the key set this node last applied) holds that is missing or holds no key on disk,
    /// whatever this node's clock says of its window: only the cluster's set says when a key
    /// is no longer needed, and etcd may be away (a restarted daemon has no set in memory to
    /// restore from). Records nothing: the history already says these keys are here. Takes
    /// the lock only when the disk differs.
    pub fn restore_applied(&self, retention: Duration, now: &Now) -> Result<Repairs> {
        if !self.repair {
            return Ok(Repairs::default());
        }
        let scan = self.scan()?;
        let history = self.history()?;
        let held = scan.fingerprints();
        let whole = history
            .keys
            .iter()
            .all(|(n, r)| held.get(n) == Some(&r.fingerprint));
        if whole && scan.non_keys().is_empty() {
            return Ok(Repairs::default());
        }
        let w = self.lock()?;
        let now = &self.anchor(&w, now)?;
        self.restore_set(&w, retention, now)
    }

    /// Restores every key the history holds from its copy ([`Needed::Every`]). Caller holds
    /// the lock.
    fn restore_set(&self, w: &Writer, retention: Duration, now: &Now) -> Result<Repairs> {
        let scan = w.scan()?;
        let history = self.trusted_history(w, &scan, now)?;
        self.repair_from_copies(w, &scan, &history, retention, now, Needed::Every)
    }

    /// Cluster mode, a daemon's start: completes an interrupted write and (`repair = true`)
    /// restores the key set last applied from the copies ([`Repository::restore_applied`]).
    /// Unlike `setup`, it records nothing: the history is the set this node last applied, and
    /// a key of it gone from the disk stays there, judged against the cluster's set by the
    /// agent and against the history by `status` while etcd is away. Recorded as gone, a key
    /// this node's clock calls past its window would vanish from every report.
    /// A repository that holds no history yet (keys made by another tool, a node joining)
    /// is set up as `setup` does: its keys adopted, so that the guard knows them.
    pub fn resume(&self, retention: Duration, now: &Now) -> Result<Outcome> {
        if self.history()?.keys.is_empty() {
            return self.setup(retention, now);
        }
        let mut out = Outcome::default();
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        if self.repair {
            out.repaired_by(self.restore_set(&w, retention, &now)?);
        }
        finish(&w, &mut out)?;
        Ok(out)
    }

    /// The repository as a key set (cluster import): completes an interrupted rotation,
    /// refuses an invalid repository, records keys without history, changes no key.
    pub fn export(&self, now: &Now) -> Result<crate::core::keyset::KeySet> {
        self.require_dir()?;
        ensure_writable(&self.scan()?)?;
        let mut out = Outcome::default();
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        let now = &now;
        for warning in &out.warnings {
            tracing::warn!("{}: {warning}", self.dir.display());
        }
        let scan = w.scan()?;
        ensure_writable(&scan)?;
        let mut history = self.trusted_history(&w, &scan, now)?;
        history.reconcile(&scan.fingerprints(), now);
        self.save_history(&w, &history, now)?;
        self.key_set(&scan, history)
    }

    /// The keys of `scan` with `history`, as a validated key set.
    fn key_set(&self, scan: &Scan, history: History) -> Result<crate::core::keyset::KeySet> {
        let set = crate::core::keyset::KeySet {
            keys: scan
                .keys()
                .into_iter()
                .map(|(n, k)| (n, k.clone()))
                .collect(),
            history,
        };
        set.validate().map_err(|e| Error::Invalid {
            path: self.dir.clone(),
            problem: e.to_string(),
        })?;
        Ok(set)
    }

    /// The repository as a key set, read only (`cluster init --from`): no lock, no recovery, no
    /// file written, so a source it may read but not write imports too. Keys without history
    /// are dated `now`. Refused while a rotation is interrupted there (its temp files remain):
    /// `fernetd setup` on it completes it first.
    pub fn read_set(&self, now: &Now) -> Result<crate::core::keyset::KeySet> {
        let repo = self.require_dir()?;
        let scan = Scan::of(&repo)?;
        ensure_writable(&scan)?;
        let internal = repo.own(INTERNAL_DIR, self.owner)?;
        let mut interrupted = vec![(&repo, KEYSTONE_TMP)];
        if let Some(d) = &internal {
            interrupted.extend([(d, PRIMARY_TMP), (d, STAGED_TMP)]);
        }
        for (dir, name) in interrupted {
            if dir.exists(name)? {
                return Err(Error::Invalid {
                    path: dir.join(name),
                    problem: "an interrupted rotation; run `fernetd setup` on it first".into(),
                });
            }
        }
        let disk = scan.fingerprints();
        let h = match &internal {
            Some(d) => self.state.read(d, STATE)?,
            None => History::new(),
        };
        let mut history = trusted(h, &disk, self.state_path())?;
        history.not_before_files(&scan.changed(), now);
        history.reconcile(&disk, now);
        self.key_set(&scan, history)
    }

    /// Makes the repository hold `set` (cluster sync), in a safe order: every key the set has
    /// and the disk lacks (highest first, so the new primary lands first; when it is the key 0
    /// on disk, by a hard link), then key 0 and the removals, each write atomic and durable
    /// before the next step. A key file that is missing, different or unreadable is rewritten
    /// from the set; the set's history becomes the local one.
    ///
    /// `source` names the input for errors (the etcd key and revision). Refused, with nothing
    /// changed: a set that is not a successor of the one applied here (older, another
    /// cluster's, other keys under the same generation), or one that would remove a key that
    /// may still decrypt a live token (by `retention`, which for a set the leader purged with
    /// its margin is `E + W`) without being newer than the disk. A newer set is applied but
    /// such keys stay, recorded, until their retention ends (a node that was cut off and used
    /// its primary longer than the cluster did). Sets the operator forced, and sets that follow
    /// a forced purge this node never took ([`forced_for`](crate::core::keyset::forced_for)),
    /// pass the gate.
    pub fn apply(
        &self,
        set: &crate::core::keyset::KeySet,
        source: &str,
        retention: Duration,
        now: &Now,
    ) -> Result<Outcome> {
        set.validate().map_err(|e| Error::Invalid {
            path: self.dir.clone(),
            problem: format!("cluster key set: {e}"),
        })?;
        let mut out = Outcome::default();
        if !self.dir.exists() {
            fsio::create_private_dir(&self.dir, self.owner)?;
            out.notes.push(Said::Created {
                dir: self.dir.clone(),
            });
        }
        let (w, now) = self.begin_timed_write(&mut out, now)?;
        let now = &now;
        let scan = w.scan()?;
        let disk = scan.fingerprints();
        let local = self.written_history(&w)?;
        let lost =
            guard::admit(set, &disk, &local, retention, now).map_err(|reason| Error::Refused {
                input: source.to_string(),
                reason,
            })?;
        // Keys kept beyond the set: recorded in the local history with the set's, the old
        // primary demoted now.
        let disk_primary = crate::core::history::primary(disk.keys().copied()).unwrap_or(0);
        let mut history = set.history.clone();
        // The node keeps the ids of the forced purges it took before (a set written over the
        // cluster's by another tool may not carry them): an old value restored is no purge
        // it missed.
        if let (Some(l), Some(held)) = (history.lineage.as_mut(), local.lineage.as_ref()) {
            let mine = std::mem::replace(&mut l.purges, held.purges.clone());
            l.remember(&mine);
            // And the lineages it left: a backup of one restored is older, not another's.
            l.remember_left(held);
        }
        for l in &lost {
            history.carry(
                &local,
                l.number,
                l.fingerprint,
                l.number == disk_primary,
                now,
            );
            out.warnings.push(Said::KeptBeyondSet {
                number: l.number,
                why: l.why.clone(),
            });
        }
        history.keep_evidence(&local, &disk, now);
        // The change: the set's keys, the keys kept beyond it, and the files the disk holds
        // that are no key fernetd could read and the set does not replace (left as they are).
        let mut change = Change::from(slots(&scan));
        for &n in disk.keys() {
            if !set.keys.contains_key(&n) && !lost.iter().any(|l| l.number == n) {
                change.remove_key(n);
            }
        }
        // A file that holds no key under a number the set does not hold, whose key this node
        // or the set recorded and no token needs any more (its window closed, or purged):
        // removed, as repair does (Keystone's loader fails every token while it is there).
        // One whose key this node still counts live stays (a loss the gate would refuse).
        let cleared: Vec<u64> = scan
            .non_keys()
            .into_iter()
            .filter(|&n| !set.keys.contains_key(&n))
            .filter(|&n| local.records(n) || set.history.records(n))
            .filter(|n| {
                local
                    .keys
                    .get(n)
                    .is_none_or(|r| r.retained_until(retention, now) <= now.wall)
            })
            .collect();
        for &n in &cleared {
            change.remove_key(n);
            out.warnings.push(Said::ClearedNonKey { number: n });
        }
        for (&n, k) in &set.keys {
            change.put(n, k.fingerprint());
        }
        let removed = change.removals();
        let forced =
            crate::core::keyset::forced_for(local.lineage.as_ref(), set.history.lineage.as_ref());
        let approval =
            guard::approve(change, &local, retention, now, forced).map_err(|r| Error::Refused {
                input: source.to_string(),
                reason: r.applying(),
            })?;
        // The keys the set writes, highest first, and one directory fsync; the history; the
        // removals (ARCHITECTURE.md, "The fsync sequence"). Key 0 waits for the history when
        // the material it holds leaves the disk. A crash anywhere leaves every key the cluster
        // may still use on disk, and the next apply finishes the job.
        // A key 0 fernetd wrote here (its history says so) was fsynced when written.
        let zero_durable = local.keys.get(&0).is_some_and(|r| {
            r.created.is_some() && disk.get(&0).is_some_and(|&fp| fp == r.fingerprint)
        });
        let written = executor::apply(&w, approval, &set.keys, zero_durable, || {
            self.save_history(&w, &history, now)
        })?;
        if written.is_empty() && removed.is_empty() {
            out.notes.push(Said::AlreadyApplied);
        } else {
            if !written.is_empty() {
                out.notes.push(Said::Wrote { numbers: written });
            }
            if !removed.is_empty() {
                out.notes.push(Said::Removed { numbers: removed });
            }
        }
        // The disk now holds the set, and the keys kept beyond it.
        out.keys = history.keys.keys().copied().collect();
        out.primary = history.primary();
        Ok(out)
    }

    /// Completes or rolls back whatever a killed writer left, fernetd's or keystone-manage's.
    /// What it writes passes the gate judged without history: every key but a staged key 0
    /// counts as live, the strictest judgement (a roll forward only gives key 0 new material
    /// once the old one is the primary).
    fn recover(&self, w: &Writer, out: &mut Outcome) -> Result<()> {
        let (repo, internal) = (&w.repo, &w.internal);
        let gate = |scan: &Scan, key: &Key| {
            let mut change = Change::from(slots(scan));
            change.put(0, key.fingerprint());
            let judged = Now::from(Utc::now());
            guard::approve(change, &History::new(), Duration::ZERO, &judged, false)
                .map_err(|r| self.refused("recovering an interrupted rotation", &r))
        };
        if internal.exists(PRIMARY_TMP)? || internal.exists(STAGED_TMP)? {
            let scan = w.scan()?;
            let keys = scan.keys();
            let max = crate::core::history::primary(keys.keys().copied());
            // Step 2 happened iff the highest key is a copy of key 0.
            let promoted = match (max.and_then(|m| keys.get(&m)), keys.get(&0)) {
                (Some(p), Some(s)) => p == s,
                _ => false,
            };
            if promoted {
                let staged = own_key(internal, STAGED_TMP)?;
                let fresh;
                let key = match &staged {
                    Some(k) => k,
                    None => {
                        fresh = generate()?;
                        &fresh
                    }
                };
                executor::finish_rotation(w, gate(&scan, key)?, staged.as_ref(), key)?;
                out.warnings.push(Said::CompletedRotation {
                    promoted: max.unwrap_or(0),
                });
            } else {
                executor::roll_back(w)?;
                out.warnings.push(Said::RolledBack);
            }
        }

        // A restore (repair) or cluster apply killed before its rename changed nothing.
        executor::drop_restore_tmp(w)?;

        // keystone-manage's own crash window: `0` renamed to max+1, `0.tmp` not yet to `0`.
        let zero = repo.exists("0")?;
        let scan = match zero {
            true => None,
            false => Some(w.scan()?),
        };
        if let Some(scan) = scan.filter(|s| s.keys().keys().any(|&n| n > 0)) {
            match own_key(repo, KEYSTONE_TMP)? {
                Some(k) => {
                    executor::finish_keystone_rotation(w, gate(&scan, &k)?, &k)?;
                    out.warnings.push(Said::CompletedKeystoneRotation);
                }
                None => {
                    let key = generate()?;
                    executor::stage_zero(w, gate(&scan, &key)?, &key)?;
                    out.staged_fresh = true;
                    out.warnings.push(Said::StagedMissingZero);
                }
            }
        } else if zero && repo.exists(KEYSTONE_TMP)? {
            executor::drop_keystone_tmp(w)?;
            out.warnings.push(Said::RemovedKeystoneTmp);
        }

        // Purges that step 4 recorded but step 5 did not finish are not finished here: a state
        // file can be wrong about the disk (edited, copied from another node, restored), so no
        // key is removed on its word. `reconcile` adopts such keys again, dated now, and a later
        // rotation purges them through the gate once their retention is over.
        Ok(())
    }
}

/// `h`, refused when the keys on disk contradict it: nothing is ever removed or re-dated on
/// the word of a state file that is wrong about the disk (edited, or copied from another
/// node or a backup).
fn trusted(h: History, disk: &BTreeMap<u64, Fingerprint>, path: PathBuf) -> Result<History> {
    match h.contradictions(disk).into_iter().next() {
        Some(c) => Err(Error::StateContradicts {
            path,
            field: c.field,
            problem: c.problem,
        }),
        None => Ok(h),
    }
}

/// The key in a temp file or a repair copy (`name` in `dir`): never through a link, never
/// blocking, read as a key file is (capped, the bytes zeroized). `None` when missing or not a
/// key; an error when something other than a regular file is there.
fn own_key(dir: &Dir, name: &str) -> Result<Option<Key>> {
    Ok(dir
        .open_regular(name, fsio::SMALL_FILE, false)?
        .and_then(|f| scan::read_key_from(&f).ok()))
}

/// The moment `.fernetd/clock` records, if it holds a readable one.
fn recorded_moment(internal: &Dir) -> Result<Option<crate::core::clock::Moment>> {
    Ok(internal
        .read_small(CLOCK)?
        .and_then(|b| serde_json::from_slice::<crate::core::clock::Moment>(&b).ok()))
}

/// The keys on disk once a writer is done, for the CLI to print.
fn finish(w: &Writer, out: &mut Outcome) -> Result<()> {
    let scan = w.scan()?;
    let keys = scan.keys();
    out.keys = keys.keys().copied().collect();
    out.primary = crate::core::history::primary(keys.keys().copied());
    Ok(())
}

/// What [`Repository::observe`] found.
#[derive(Debug)]
pub struct Observed {
    pub report: crate::core::check::Report,
    /// Changes fernetd did not make (empty when the disk matches the history).
    pub changes: Vec<Observation>,
    /// Keys that disappeared or changed while they could still decrypt a live token.
    pub retention_violations: Vec<RetentionViolation>,
    /// Keys restored from fernetd's copies (`repair = true`).
    pub repaired: Vec<u64>,
    /// Files that held no key under a number no key needs, removed (`repair = true`).
    pub cleared: Vec<u64>,
    pub history: History,
}

/// What a repair did: keys restored from their copies, files that held no key removed.
#[derive(Debug, Default)]
pub struct Repairs {
    pub restored: Vec<u64>,
    pub cleared: Vec<u64>,
}

/// Which keys of the history a repair restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// Key 0, the primary, and keys inside their retention window (standalone: the history
    /// is this node's, and says when no token needs a key).
    InWindow,
    /// Every key the history holds (cluster mode: the history is the key set this node last
    /// applied, and only the cluster's set says when a key is no longer needed: a peer's
    /// Keystone may still issue with a key this node's own clock calls past its window).
    Every,
}

impl Observed {
    /// Healthy: no check violation and no retention violation.
    pub fn healthy(&self) -> bool {
        self.retention_violations.is_empty() && self.report.violations().next().is_none()
    }
}

fn same_keys(disk: &BTreeMap<u64, Fingerprint>, history: &History) -> bool {
    *disk == history.fingerprints()
}

fn generate() -> Result<Key> {
    Key::generate().map_err(|e| Error::Random(e.to_string()))
}

/// Refuses to write over anything fernetd would misread or Keystone would misload.
fn ensure_writable(scan: &Scan) -> Result<()> {
    for e in &scan.entries {
        let problem = match &e.kind {
            EntryKind::Key {
                content: Err(p), ..
            } => Some(p.to_string()),
            EntryKind::NonCanonical { number } => Some(format!(
                "non-canonical key name (Keystone loads it as key {number})"
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(Error::Invalid {
                path: e.path.clone(),
                problem,
            });
        }
    }
    Ok(())
}

/// What the state file says about time, before `reconcile` dates anything: recorded times in
/// the future, keys that a purge record names but that are still on disk.
fn describe_clock(
    history: &History,
    disk: &BTreeMap<u64, Fingerprint>,
    now: &Now,
    state: &Path,
    out: &mut Outcome,
) {
    out.warnings.extend(
        history
            .future_warnings(now, state)
            .into_iter()
            .map(Said::Clock),
    );
    let unpurged = history.purged_on_disk(disk);
    if !unpurged.is_empty() {
        out.warnings
            .push(Said::InterruptedPurge { numbers: unpurged });
    }
}

/// `lost` as what a loss puts at stake: a repository judged with the credentials' retention
/// ([`crate::core::credentials::KEY_RETENTION`], the one way a repository knows it holds
/// credential keys) loses stored credentials, not tokens. Wording only: no decision reads it.
fn at_stake(mut lost: Vec<RetentionViolation>, retention: Duration) -> Vec<RetentionViolation> {
    let credentials = retention == crate::core::credentials::KEY_RETENTION;
    for v in &mut lost {
        v.credentials = credentials;
    }
    lost
}

/// The keys on disk as history should see them: every readable key, and a key file that is
/// still there but unreadable or malformed under the key history knows it by. Such a file is
/// reported as what it is (`malformed-key`, critical), never recorded as removed.
pub fn present(scan: &Scan, history: &History) -> BTreeMap<u64, Fingerprint> {
    let mut disk = scan.fingerprints();
    for e in &scan.entries {
        if let EntryKind::Key {
            number,
            content: Err(_),
        } = &e.kind
        {
            if let Some(r) = history.keys.get(number) {
                disk.entry(*number).or_insert(r.fingerprint);
            }
        }
    }
    disk
}

/// The key names of `scan` as a change sees them: each readable key by its fingerprint, and
/// each key file that holds no readable key as such.
fn slots(scan: &Scan) -> BTreeMap<u64, Slot> {
    let readable = scan.fingerprints();
    let unreadable: Vec<u64> = scan
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Key { number, .. } if !readable.contains_key(number) => Some(*number),
            _ => None,
        })
        .collect();
    crate::core::change::slots(&readable, unreadable)
}

fn describe_observations(notes: &[Observation], out: &mut Outcome) {
    let adopted: Vec<u64> = notes
        .iter()
        .filter_map(|o| match o {
            Observation::Adopted { number } => Some(*number),
            _ => None,
        })
        .collect();
    if !adopted.is_empty() {
        out.notes.push(Said::Adopted { numbers: adopted });
    }
    for o in notes {
        if !matches!(o, Observation::Adopted { .. }) {
            out.warnings.push(Said::Observed(o.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keyset::KeySet;
    use std::os::unix::fs::MetadataExt;

    fn inode(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.nlink())
    }

    #[test]
    fn a_cluster_set_over_a_corrupted_live_key_is_refused_as_over_a_readable_one() {
        let now = Now::read();
        let params = RotateParams {
            max_active_keys: 3,
            retention: Duration::ZERO,
            force_purge: false,
            expected_primary: None,
        };
        for corrupted in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let repo = Repository::new(d.path().join("keys"), None);
            let set = KeySet::fresh(&now).unwrap();
            repo.apply(&set, "test", Duration::ZERO, &now).unwrap();
            // A newer set that puts other material under key 1, the primary on disk.
            let (mut next, _) = set.rotate(Key::generate().unwrap(), &params, &now).unwrap();
            let other = Key::generate().unwrap();
            next.history.keys.get_mut(&1).unwrap().fingerprint = other.fingerprint();
            next.keys.insert(1, other);
            let one = key_path(repo.dir(), 1);
            if corrupted {
                std::fs::write(&one, "not a key").unwrap();
            }
            let before = std::fs::read(&one).unwrap();
            let e = repo
                .apply(&next, "test", Duration::ZERO, &now)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(
                    "refused, every key stays: applying it would remove keys that may \
                            still decrypt live tokens: key 1 (the primary)"
                ),
                "{corrupted}: {e}"
            );
            assert_eq!(std::fs::read(&one).unwrap(), before, "{corrupted}");
        }
    }

    #[test]
    fn the_anchor_moves_forward_only_and_only_past_a_step() {
        use crate::core::clock::BootStamp;
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::new(d.path().join("keys"), None);
        let at = |wall_s: i64, boot_s: u64| Now {
            wall: chrono::DateTime::<Utc>::from_timestamp(1_800_000_000 + wall_s, 0).unwrap(),
            boot: Some(BootStamp {
                boot: "b".into(),
                ms: boot_s * 1000,
            }),
        };
        // First moment of the boot recorded 40 s behind.
        let first = at(0, 100);
        repo.setup(Duration::ZERO, &first).unwrap();
        let anchor = || std::fs::read(repo.internal().join(CLOCK)).unwrap();
        let recorded = anchor();
        // No step (10 s on both clocks), or the wall clock behind the anchor's timeline:
        // nothing moves.
        assert_eq!(repo.reanchor(&at(10, 110)).unwrap(), None);
        assert_eq!(repo.reanchor(&at(-30, 120)).unwrap(), None);
        assert_eq!(anchor(), recorded);
        // Corrected: 40 s forward on the wall clock only. The anchor moves to it, and the
        // judging clock is the wall clock again.
        let corrected = at(60, 120);
        assert_eq!(
            repo.reanchor(&corrected).unwrap(),
            Some(chrono::Duration::seconds(40))
        );
        assert_ne!(anchor(), recorded);
        assert_eq!(repo.judging_clock(&corrected), corrected);
        assert_eq!(repo.reanchor(&at(70, 130)).unwrap(), None);
    }

    #[test]
    fn a_promoted_key_gets_its_new_name_without_being_written_again() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::new(d.path().join("keys"), None);
        let now = Now::read();
        let params = RotateParams {
            max_active_keys: 3,
            retention: Duration::ZERO,
            force_purge: false,
            expected_primary: None,
        };
        let set = KeySet::fresh(&now).unwrap();
        repo.apply(&set, "test", Duration::ZERO, &now).unwrap();
        let (staged, _) = inode(&key_path(repo.dir(), 0));

        let (next, decision) = set.rotate(Key::generate().unwrap(), &params, &now).unwrap();
        repo.apply(&next, "test", Duration::ZERO, &now).unwrap();
        // The same file under its new name, and the only name it has left.
        assert_eq!(
            inode(&key_path(repo.dir(), decision.new_primary)),
            (staged, 1)
        );
        assert_eq!(repo.scan().unwrap().fingerprints(), next.fingerprints());

        // Another file already holds the new primary's name: a copy replaces it.
        let (third, decision) = next
            .rotate(Key::generate().unwrap(), &params, &now)
            .unwrap();
        let taken = key_path(repo.dir(), decision.new_primary);
        std::fs::write(&taken, "not a key").unwrap();
        repo.apply(&third, "test", Duration::ZERO, &now).unwrap();
        assert_eq!(repo.scan().unwrap().fingerprints(), third.fingerprints());
        assert_eq!(inode(&taken).1, 1);
    }

    /// A set written over the cluster's by another tool may not carry the forced purges this
    /// node took before: it keeps their ids, so an old value restored later is no purge it
    /// missed ([`crate::core::keyset::forced_for`]).
    #[test]
    fn a_node_remembers_the_forced_purges_of_every_set_it_applied() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::new(d.path().join("keys"), None);
        let now = Now::read();
        let params = RotateParams {
            max_active_keys: 3,
            retention: Duration::ZERO,
            force_purge: true,
            expected_primary: None,
        };
        let set = KeySet::fresh(&now).unwrap();
        let (first, _) = set.rotate(Key::generate().unwrap(), &params, &now).unwrap();
        repo.apply(&first, "test", Duration::ZERO, &now).unwrap();
        let (mut second, _) = first
            .rotate(Key::generate().unwrap(), &params, &now)
            .unwrap();
        let ids = |l: &crate::core::keyset::Lineage| l.purges.clone();
        let (a, b) = (
            ids(first.history.lineage.as_ref().unwrap()),
            ids(second.history.lineage.as_ref().unwrap()),
        );
        assert_eq!((a.len(), b.len()), (1, 2));
        second.history.lineage.as_mut().unwrap().purges = b[1..].to_vec();
        repo.apply(&second, "test", Duration::ZERO, &now).unwrap();
        let held = repo.history().unwrap().lineage.unwrap();
        assert_eq!(ids(&held), b);
    }
}
