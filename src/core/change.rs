//! A change to a key repository, described before it is made: what every key name holds
//! before and after, and which repair copies are written or dropped. The gate
//! ([`crate::core::guard::approve`]) judges it; the repository's executor makes exactly it.
//!
//! Invariant: pure. No I/O, no system call, nothing of the repository: a description only.

use crate::core::key::Fingerprint;
use std::collections::{BTreeMap, BTreeSet};

/// What a key name (`0`..`N`) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A readable key, by its fingerprint.
    Key(Fingerprint),
    /// A file under a key's name that holds no readable key (corrupted, malformed, not a
    /// regular file): what material it stood for is what the history knows under its number,
    /// if anything.
    Unreadable,
}

/// One change of the key names and of the repair copies (`.fernetd/copies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Every key name on disk before the change.
    pub before: BTreeMap<u64, Slot>,
    /// Every key name on disk after it: a name absent here is removed, a slot that differs
    /// from `before` is written.
    pub after: BTreeMap<u64, Slot>,
    /// Repair copies removed, by the material they hold.
    pub copies_dropped: BTreeSet<Fingerprint>,
    /// Other names removed from the copies' directory (a temp file a killed write left, a
    /// file that is no copy): they hold no copy the gate keeps.
    pub strays_dropped: BTreeSet<String>,
    /// Repair copies written, by the material they hold.
    pub copies_written: BTreeSet<Fingerprint>,
}

impl Change {
    /// The change that leaves every key name of `before` as it is (then [`Change::put`] and
    /// [`Change::remove_key`] say what changes).
    pub fn from(before: BTreeMap<u64, Slot>) -> Change {
        Change {
            after: before.clone(),
            before,
            ..Change::default()
        }
    }

    /// The name `number` holds the key `fingerprint` afterwards.
    pub fn put(&mut self, number: u64, fingerprint: Fingerprint) {
        self.after.insert(number, Slot::Key(fingerprint));
    }

    /// The name `number` is gone afterwards.
    pub fn remove_key(&mut self, number: u64) {
        self.after.remove(&number);
    }

    /// Whether the change writes the key `fingerprint` under `number`.
    pub fn writes(&self, number: u64, fingerprint: Fingerprint) -> bool {
        self.after.get(&number) == Some(&Slot::Key(fingerprint))
            && self.before.get(&number) != Some(&Slot::Key(fingerprint))
    }

    /// Whether the change removes the name `number`.
    pub fn removes(&self, number: u64) -> bool {
        self.before.contains_key(&number) && !self.after.contains_key(&number)
    }

    /// The names the change removes, in ascending order.
    pub fn removals(&self) -> Vec<u64> {
        self.before
            .keys()
            .copied()
            .filter(|n| !self.after.contains_key(n))
            .collect()
    }

    /// Whether the change removes `name` from the copies' directory: a copy it drops (named
    /// by the fingerprint it holds) or a stray.
    pub fn drops_copy(&self, name: &str) -> bool {
        match name.parse::<Fingerprint>() {
            Ok(fp) if fp.to_string() == name => self.copies_dropped.contains(&fp),
            _ => self.strays_dropped.contains(name),
        }
    }

    /// Records that `name` goes from the copies' directory: a copy (its name is the
    /// fingerprint of what it holds) or a stray.
    pub fn drop_copy(&mut self, name: &str) {
        match name.parse::<Fingerprint>() {
            Ok(fp) if fp.to_string() == name => {
                self.copies_dropped.insert(fp);
            }
            _ => {
                self.strays_dropped.insert(name.to_string());
            }
        }
    }
}

/// The slots of a disk: its readable keys (`number -> fingerprint`) and the numbers of its
/// key files that hold no readable key.
pub fn slots(
    readable: &BTreeMap<u64, Fingerprint>,
    unreadable: impl IntoIterator<Item = u64>,
) -> BTreeMap<u64, Slot> {
    let mut out: BTreeMap<u64, Slot> = readable
        .iter()
        .map(|(&n, &fp)| (n, Slot::Key(fp)))
        .collect();
    for n in unreadable {
        out.entry(n).or_insert(Slot::Unreadable);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Key;

    #[test]
    fn a_change_says_what_it_writes_and_removes() {
        let (a, b) = (
            Key::generate().unwrap().fingerprint(),
            Key::generate().unwrap().fingerprint(),
        );
        let mut c = Change::from(slots(&BTreeMap::from([(0, a), (1, b)]), [2]));
        assert!(c.removals().is_empty() && !c.writes(0, a));
        c.put(2, a);
        c.remove_key(1);
        assert!(c.writes(2, a) && !c.writes(2, b));
        assert_eq!(c.removals(), vec![1]);
        assert!(c.removes(1) && !c.removes(0));
        c.drop_copy(&b.to_string());
        c.drop_copy(&format!("{a}.tmp"));
        assert!(c.drops_copy(&b.to_string()) && !c.drops_copy(&a.to_string()));
        assert!(c.drops_copy(&format!("{a}.tmp")));
        assert_eq!(c.copies_dropped, BTreeSet::from([b]));
    }
}
