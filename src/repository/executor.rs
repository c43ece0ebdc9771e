//! The one door: the only code that writes, renames, links or removes a key file (`0`..`N`
//! in the repository) or a repair copy (`.fernetd/copies`). Each entry point takes an
//! [`Approval`] the gate gave ([`crate::core::guard::approve`]) and the key material to write,
//! matched by fingerprint against the approved change before the first system call; a write
//! or removal the change does not hold is an error and nothing is touched.
//!
//! Each operation keeps the crash-safe sequence of system calls the repository's module
//! documentation describes (tests/crash.rs kills fernetd at every one of them).
//!
//! Invariant: nothing here decides what changes (that is the approved change); only how.
//! Temp files of `.fernetd/` that a killed writer left are removed here too (they are named
//! next to the keys they were for), without an approval: no key name changes.

use super::fsio::{self, Dir};
use super::{scan, Writer, KEYSTONE_TMP, PRIMARY_TMP, RESTORE_TMP, STAGED_TMP};
use crate::core::guard::Approval;
use crate::core::key::Key;
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// The error for a write the approval does not hold: a fault in fernetd, said as one.
fn unapproved(w: &Writer, name: &str, what: &str) -> Error {
    Error::Refused {
        input: w.repo.join(name).display().to_string(),
        reason: format!("{what} is not in the change the gate approved (a fault in fernetd)"),
    }
}

/// `key` under `n` must be what the approval writes.
fn approved_write(w: &Writer, a: &Approval, n: u64, key: &Key) -> Result<()> {
    match a.change().writes(n, key.fingerprint()) {
        true => Ok(()),
        false => Err(unapproved(w, &n.to_string(), "this key")),
    }
}

/// `n` must be a name the approval removes.
fn approved_removal(w: &Writer, a: &Approval, n: u64) -> Result<()> {
    match a.change().removes(n) {
        true => Ok(()),
        false => Err(unapproved(w, &n.to_string(), "removing this key")),
    }
}

/// `fernetd setup` on an empty repository: each of `keys` written via `.fernetd/restore.tmp`
/// (its content fsynced), in order, then one fsync of the repository for all the names (a
/// setup killed before it is run again; a `restore.tmp` left is only ever removed).
pub(super) fn create(w: &Writer, approval: Approval, keys: &[(u64, &Key)]) -> Result<()> {
    for &(n, k) in keys {
        approved_write(w, &approval, n, k)?;
    }
    for &(n, k) in keys {
        place_copy(w, n, k)?;
    }
    w.repo.sync()
}

/// One rotation, the sequence of ARCHITECTURE.md's "The fsync sequence" (four fsyncs, one
/// more when key 0 was not written by fernetd): `new_staged` written to `.fernetd/staged.tmp`
/// and fsynced; key 0 (`staged`) given the name `new_primary` by a hard link (a copy through
/// `.fernetd/primary.tmp` where the filesystem or the file allows no link); `staged.tmp`
/// renamed to `0`; one fsync of the repository makes both names durable. Then `save` (the
/// history: its temp file's fsync and one of `.fernetd`, which also makes the temp names'
/// removal durable), and only then the `purge`, not fsynced: a removal a crash undoes is a
/// purge interrupted after the save, adopted again and purged by a later rotation.
/// `zero_durable`: key 0's content is known to be on disk already (fernetd wrote it, and
/// fsynced it then), so the link needs no fsync of it.
#[allow(clippy::too_many_arguments)]
pub(super) fn rotate(
    w: &Writer,
    approval: Approval,
    staged: &Key,
    new_staged: &Key,
    new_primary: u64,
    purge: &[u64],
    zero_durable: bool,
    save: impl FnOnce() -> Result<()>,
) -> Result<()> {
    approved_write(w, &approval, new_primary, staged)?;
    approved_write(w, &approval, 0, new_staged)?;
    for &n in purge {
        approved_removal(w, &approval, n)?;
    }
    let (internal, repo) = (&w.internal, &w.repo);
    // Step 1: the new staged key's content durable before any name points at it.
    internal.write_new(STAGED_TMP, new_staged.to_text().as_bytes(), w.owner)?;
    // Step 2: the promotion. Recovery tells it happened by the highest key being key 0's.
    if !link_zero(w, new_primary, staged, !zero_durable)? {
        internal.write_new(PRIMARY_TMP, staged.to_text().as_bytes(), w.owner)?;
        internal.rename(PRIMARY_TMP, repo, &new_primary.to_string())?;
    }
    // Step 3, then one directory fsync for both names.
    internal.rename(STAGED_TMP, repo, "0")?;
    repo.sync()?;
    // Step 4: the decision durable before anything is removed.
    save()?;
    // Step 5.
    for &n in purge {
        repo.remove(&n.to_string())?;
    }
    Ok(())
}

/// A cluster key set made the disk's (ARCHITECTURE.md's "The fsync sequence"). When key 0's
/// material stays on disk under another name (a rotation's set: it is the new primary, given
/// its name by a hard link when it can be) or there is none, replacing key 0 removes nothing:
/// every key the change writes, highest first, then one fsync of the repository, `save` (the
/// history), and the removals, not fsynced (a removal a crash undoes is adopted again and
/// removed by the next apply) — four fsyncs for a rotation's set. Otherwise key 0 is material
/// the history must record as gone before it leaves: the keys above 0 and one fsync, `save`,
/// then key 0 and the removals and one fsync. Key files are fsynced before their rename.
/// `keys` holds the material (the set's keys). Returns the numbers written, in the order
/// written. `zero_durable`: key 0's content is known to be on disk already (fernetd wrote it,
/// and fsynced it then), so linking it needs no fsync of it.
pub(super) fn apply(
    w: &Writer,
    approval: Approval,
    keys: &BTreeMap<u64, Key>,
    zero_durable: bool,
    save: impl FnOnce() -> Result<()>,
) -> Result<Vec<u64>> {
    use crate::core::change::Slot;
    let change = approval.change();
    let writes: Vec<(u64, &Key)> = keys
        .iter()
        .filter(|(&n, k)| change.writes(n, k.fingerprint()))
        .map(|(&n, k)| (n, k))
        .collect();
    let removed = change.removals();
    // Every write and removal of the change, and nothing else: its material is in `keys`.
    let held = |n: u64| writes.iter().any(|&(m, _)| m == n);
    if let Some(n) = change
        .after
        .keys()
        .copied()
        .find(|&n| change.before.get(&n) != change.after.get(&n) && !held(n))
    {
        return Err(unapproved(w, &n.to_string(), "a key without its material"));
    }
    let staged_on_disk = change.before.get(&0).copied();
    // Key 0 goes with the keys above it when what it holds now stays under another name.
    let zero_early = match staged_on_disk {
        None => true,
        Some(Slot::Key(fp)) => change
            .after
            .iter()
            .any(|(&n, &s)| n > 0 && s == Slot::Key(fp)),
        Some(Slot::Unreadable) => false,
    };
    let mut written = Vec::new();
    for &(n, k) in writes.iter().rev() {
        if n == 0 {
            if zero_early {
                place_copy(w, 0, k)?;
                written.push(0);
            }
            continue;
        }
        let promoted = staged_on_disk == Some(Slot::Key(k.fingerprint()));
        if !(promoted && link_zero(w, n, k, !zero_durable)?) {
            place_copy(w, n, k)?;
        }
        written.push(n);
    }
    if !written.is_empty() {
        w.repo.sync()?;
    }
    save()?;
    let mut late = false;
    if let Some(&(_, k)) = writes.iter().find(|(n, _)| *n == 0 && !zero_early) {
        place_copy(w, 0, k)?;
        written.push(0);
        late = true;
    }
    for &n in &removed {
        w.repo.remove(&n.to_string())?;
    }
    if late {
        w.repo.sync()?;
    }
    Ok(written)
}

/// Repair: each of `keys` (read from its copy) written via `.fernetd/restore.tmp` (its
/// content fsynced) under its number, in order, then one fsync of the repository for all
/// the names.
pub(super) fn restore(
    w: &Writer,
    approval: Approval,
    keys: &[(u64, Key)],
    cleared: &[u64],
) -> Result<()> {
    for (n, k) in keys {
        approved_write(w, &approval, *n, k)?;
    }
    for &n in cleared {
        approved_removal(w, &approval, n)?;
    }
    for (n, k) in keys {
        place_copy(w, *n, k)?;
    }
    for &n in cleared {
        w.repo.remove(&n.to_string())?;
    }
    match keys.is_empty() && cleared.is_empty() {
        true => Ok(()),
        false => w.repo.sync(),
    }
}

/// The repair copies made what the change says: `drop` (names in `copies`, in the order
/// found) removed, then each of `write` copied (`<fingerprint>.tmp`, its content fsynced,
/// renamed to its fingerprint), then `copies` fsynced once for every name.
pub(super) fn sync_copies(
    w: &Writer,
    copies: &Dir,
    approval: Approval,
    drop: &[String],
    write: &[&Key],
) -> Result<()> {
    let change = approval.change();
    if let Some(name) = drop.iter().find(|n| !change.drops_copy(n)) {
        return Err(unapproved(w, name, "removing this repair copy"));
    }
    if let Some(k) = write
        .iter()
        .find(|k| !change.copies_written.contains(&k.fingerprint()))
    {
        return Err(unapproved(
            w,
            &k.fingerprint().to_string(),
            "this repair copy",
        ));
    }
    for name in drop {
        copies.remove(name)?;
    }
    for k in write {
        let fp = k.fingerprint().to_string();
        let tmp = format!("{fp}.tmp");
        copies.write_new(&tmp, k.to_text().as_bytes(), w.owner)?;
        copies.rename(&tmp, copies, &fp)?;
    }
    copies.sync()
}

/// Recovery rolls a rotation killed after step 2 forward: `primary.tmp` removed, the staged
/// temp file renamed to `0` when it holds a key (`staged`, then `key` is it), else `key` (a
/// fresh one) written as key 0.
pub(super) fn finish_rotation(
    w: &Writer,
    approval: Approval,
    staged: Option<&Key>,
    key: &Key,
) -> Result<()> {
    approved_write(w, &approval, 0, key)?;
    if staged.is_some_and(|s| s.fingerprint() != key.fingerprint()) {
        return Err(unapproved(
            w,
            "0",
            "a key other than the staged temp file's",
        ));
    }
    let (repo, internal) = (&w.repo, &w.internal);
    internal.remove(PRIMARY_TMP)?;
    match staged {
        Some(_) => internal.rename(STAGED_TMP, repo, "0")?,
        None => {
            internal.remove(STAGED_TMP)?;
            place_copy(w, 0, key)?;
        }
    }
    // One fsync, of the key's directory: a `staged.tmp` name a power loss brings back (only
    // where metadata is not journaled in order) is found not promoted and removed.
    repo.sync()
}

/// Recovery rolls a rotation killed before step 2 back: its temp files removed (no key name
/// had changed).
pub(super) fn roll_back(w: &Writer) -> Result<()> {
    w.internal.remove(PRIMARY_TMP)?;
    w.internal.remove(STAGED_TMP)?;
    w.internal.sync()
}

/// A restore or cluster apply killed before its rename changed nothing: its temp file goes.
pub(super) fn drop_restore_tmp(w: &Writer) -> Result<()> {
    w.internal.remove(RESTORE_TMP).map(|_| ())
}

/// keystone-manage's rotation killed between its renames: its `0.tmp` (holding `key`)
/// becomes key 0.
pub(super) fn finish_keystone_rotation(w: &Writer, approval: Approval, key: &Key) -> Result<()> {
    approved_write(w, &approval, 0, key)?;
    w.repo.rename_durable(KEYSTONE_TMP, "0")
}

/// A missing key 0 staged: `key` written durably as `0`.
pub(super) fn stage_zero(w: &Writer, approval: Approval, key: &Key) -> Result<()> {
    approved_write(w, &approval, 0, key)?;
    place_copy(w, 0, key)?;
    w.repo.sync()
}

/// keystone-manage's `0.tmp` left while key 0 exists (no key had changed): removed.
pub(super) fn drop_keystone_tmp(w: &Writer) -> Result<()> {
    w.repo.remove(KEYSTONE_TMP)?;
    w.repo.sync()
}

/// Gives key 0's file the name `n` as well (a hard link) if it holds `key`: a rotation's new
/// primary is the staged key already on disk, so no file is created and written again (what
/// a node's apply waits on when many nodes share a disk). The new name is durable once the
/// caller fsyncs the directory. With `sync`, key 0's content is fsynced first (another tool
/// may have written it without; a no-op on the device when it is clean, but still a cache
/// flush on most). False when that cannot be done (key 0 is a link or not a regular file, a
/// file named `n` exists, the filesystem has no hard links, key 0 changed since the scan):
/// the caller writes a copy over it.
fn link_zero(w: &Writer, n: u64, key: &Key, sync: bool) -> Result<bool> {
    let Ok(Some(file)) = w.repo.open_regular("0", fsio::SMALL_FILE, false) else {
        return Ok(false);
    };
    if !scan::read_key_from(&file).is_ok_and(|k| k.fingerprint() == key.fingerprint()) {
        return Ok(false);
    }
    let zero = w.repo.join("0");
    if sync {
        file.sync_all().at(&zero)?;
    }
    let to = n.to_string();
    if !w.repo.link("0", &to)? {
        return Ok(false);
    }
    // The new name must be the file just checked, not a key 0 that replaced it meanwhile.
    let linked = w.repo.stat_at(&to, false)?;
    let held = file.metadata().at(&zero)?;
    Ok(linked.is_some_and(|l| l.st_dev == held.dev() && l.st_ino == held.ino()))
}

/// Writes key `n` via `.fernetd/restore.tmp`: the content is fsynced, the new name is durable
/// once the caller fsyncs the repository directory. A `restore.tmp` left behind by a crash is
/// only ever removed (`recover`), so its directory needs no fsync.
fn place_copy(w: &Writer, n: u64, key: &Key) -> Result<()> {
    w.internal
        .write_new(RESTORE_TMP, key.to_text().as_bytes(), w.owner)?;
    w.internal.rename(RESTORE_TMP, &w.repo, &n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::change::{self, Change};
    use crate::core::clock::Now;
    use crate::core::history::History;
    use std::time::Duration;

    fn approve(c: Change) -> Approval {
        crate::core::guard::approve(c, &History::new(), Duration::ZERO, &Now::read(), false)
            .unwrap()
    }

    #[test]
    fn only_the_approved_material_and_names_are_touched() {
        let d = tempfile::tempdir().unwrap();
        let repo = super::super::Repository::new(d.path().join("keys"), None);
        fsio::create_private_dir(repo.dir(), None).unwrap();
        let w = repo.lock().unwrap();
        let key_names = || {
            let mut names = w.repo.names().unwrap();
            names.retain(|n| n != super::super::INTERNAL_DIR);
            names.sort();
            names
        };
        let (a, b) = (Key::generate().unwrap(), Key::generate().unwrap());
        let mut first = Change::default();
        first.put(1, a.fingerprint());
        // Other material, or another number, than the approved: refused, nothing written.
        let e = create(&w, approve(first.clone()), &[(1, &b)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("not in the change the gate approved"),
            "{e}"
        );
        assert!(create(&w, approve(first.clone()), &[(2, &a)]).is_err());
        assert!(key_names().is_empty());
        create(&w, approve(first), &[(1, &a)]).unwrap();
        assert_eq!(key_names(), vec!["1"]);

        // A rotation purging a key the approval keeps: refused before the first write.
        let on_disk = change::slots(&BTreeMap::from([(1, a.fingerprint())]), []);
        let mut promote = Change::from(on_disk);
        promote.put(2, a.fingerprint());
        promote.put(0, b.fingerprint());
        let saved = std::cell::Cell::new(false);
        let e = rotate(&w, approve(promote.clone()), &a, &b, 2, &[1], false, || {
            saved.set(true);
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("removing this key"), "{e}");
        assert!(!saved.get());
        assert_eq!(key_names(), vec!["1"]);
        assert!(w
            .internal
            .names()
            .unwrap()
            .iter()
            .all(|n| !n.ends_with(".tmp")));
        rotate(&w, approve(promote), &a, &b, 2, &[], false, || {
            saved.set(true);
            Ok(())
        })
        .unwrap();
        assert!(saved.get());
        assert_eq!(key_names(), vec!["0", "1", "2"]);

        // A copy the change does not drop stays.
        let copies = w.internal.make_own("copies", None).unwrap();
        let mut keep = Change::default();
        keep.copies_written.insert(a.fingerprint());
        sync_copies(&w, &copies, approve(keep), &[], &[&a]).unwrap();
        let name = a.fingerprint().to_string();
        let e = sync_copies(
            &w,
            &copies,
            approve(Change::default()),
            std::slice::from_ref(&name),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("repair copy"), "{e}");
        assert_eq!(copies.names().unwrap(), vec![name]);
    }

    /// What key 0 holds when the history is saved: the set's when the old key 0 stays as the
    /// new primary (one batch), the old one when its material leaves (it waits for the
    /// history that records it gone).
    #[test]
    fn key_zero_waits_for_the_history_only_when_its_material_leaves() {
        let d = tempfile::tempdir().unwrap();
        let repo = super::super::Repository::new(d.path().join("keys"), None);
        fsio::create_private_dir(repo.dir(), None).unwrap();
        let w = repo.lock().unwrap();
        let zero_at_save = |w: &Writer, before: &[(u64, &Key)], set: &[(u64, &Key)]| {
            for n in w.repo.names().unwrap() {
                if n.parse::<u64>().is_ok() {
                    w.repo.remove(&n).unwrap();
                }
            }
            create(w, approve(put_all(Change::default(), before)), before).unwrap();
            let fps: BTreeMap<u64, _> = before.iter().map(|(n, k)| (*n, k.fingerprint())).collect();
            let mut change = Change::from(change::slots(&fps, []));
            for &(n, _) in before {
                if !set.iter().any(|&(m, _)| m == n) {
                    change.remove_key(n);
                }
            }
            let change = put_all(change, set);
            let keys: BTreeMap<u64, Key> = set.iter().map(|&(n, k)| (n, k.clone())).collect();
            let seen = std::cell::Cell::new(None);
            apply(w, approve(change), &keys, true, || {
                let f = w.repo.open_regular("0", fsio::SMALL_FILE, false)?;
                seen.set(
                    f.and_then(|f| scan::read_key_from(&f).ok())
                        .map(|k| k.fingerprint()),
                );
                Ok(())
            })
            .unwrap();
            seen.get()
        };
        let [a, b, c, e] = [(); 4].map(|_| Key::generate().unwrap());
        // One rotation: the old key 0 (b) becomes 2; key 0 is the set's before the save.
        let seen = zero_at_save(&w, &[(1, &a), (0, &b)], &[(2, &b), (1, &a), (0, &c)]);
        assert_eq!(seen, Some(c.fingerprint()));
        // Two rotations behind: the old key 0 (b) leaves; it is still key 0 at the save.
        let seen = zero_at_save(&w, &[(1, &a), (0, &b)], &[(3, &c), (2, &e), (0, &a)]);
        assert_eq!(seen, Some(b.fingerprint()));
    }

    fn put_all(mut c: Change, keys: &[(u64, &Key)]) -> Change {
        for &(n, k) in keys {
            c.put(n, k.fingerprint());
        }
        c
    }
}
