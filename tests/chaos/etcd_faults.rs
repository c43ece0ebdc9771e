//! The chaos run's faults of etcd itself and of a node's own disk (issue 25), beside the
//! daemon, network, clock and operator faults of `tests/chaos.rs`:
//!
//! - etcd members (`--etcd-members 3`): one member killed (kill -9) or stopped (SIGSTOP) for a
//!   few seconds, or restarted at once (SIGTERM, then started on its data); `etcd-quorum-loss`
//!   kills a majority (the only member of a one-member etcd) and starts them again a few seconds
//!   later. Only one member fault at a time: no combination of them loses the quorum unless
//!   `etcd-quorum-loss` says so. The existing `etcd-restart` and `etcd-restore-old` restore
//!   every member from one snapshot as etcd's disaster-recovery guide says.
//! - `etcd-compact`: `etcdctl compact` to the current revision (`--physical`) and `defrag` on
//!   every member while the daemons watch: a watch behind that revision is cancelled with
//!   "required revision has been compacted" and must start again from a fresh read.
//! - `etcd-nospace`: etcd runs with a small `--quota-backend-bytes` when this class is in play;
//!   junk keys outside fernetd's prefix fill it until a put fails with "database space
//!   exceeded" (the NOSPACE alarm: etcd then refuses every write, fernetd's included); a few
//!   seconds later the operator's remedy: the junk deleted, compaction, defrag, `alarm disarm`.
//! - `disk-full`, `disk-readonly` (root only: each node's repository on its own small tmpfs):
//!   the filesystem filled up by a file beside the repository until ENOSPC, or a read-only bind
//!   mount laid over the repository (new opens see a read-only filesystem; a plain remount is
//!   refused while the daemon holds a file open for writing), then healed. The node may fail to
//!   rotate or apply meanwhile, never lose a key; its `fernetd status` when the disk heals is
//!   written in the timeline.
//!
//! What these trust: etcdctl's exit status and its error text ("database space exceeded"; an
//! alarm list that prints nothing), the kernel's ENOSPC, and `mount`'s exit status. A fill that
//! never trips (the quota larger than expected) or a mount refused is said in the timeline as
//! such, not counted as the fault it did not make.

use super::common::etcd::EtcdCluster;
use super::{Fault, Heal, Node, Options, Run};
use nix::sys::signal::Signal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The classes the current build survives (`scripts/chaos --safe` runs them).
pub(super) const SURVIVED: [Fault; 8] = [
    Fault::MemberKill,
    Fault::QuorumLoss,
    Fault::MemberPause,
    Fault::MemberRestart,
    Fault::Compact,
    Fault::Nospace,
    Fault::DiskFull,
    Fault::DiskReadOnly,
];

/// The classes the in-suite runs add to `SAFE` (one etcd member, no root needed, and no
/// longer a run): compaction, whose storm cancels watches that must recover.
pub(super) const IN_SUITE: [Fault; 1] = [Fault::Compact];

/// The classes with a violation behind them against the current build (`scripts/chaos`):
/// none since a key tampered with while etcd has no quorum is restored from the set the node
/// last took (tests/etcd_faults.rs, seed 404 of `--safe` before).
pub(super) const NOT_SURVIVED: [Fault; 0] = [];

/// etcd's backend quota when `etcd-nospace` is in play: small enough that a few dozen junk
/// values of `JUNK` bytes trip it, large enough that fernetd's own records (compacted by that
/// class's heal) never do in an hour.
const QUOTA: u64 = 32 << 20;
const JUNK: usize = 1 << 20;
/// Where the junk goes: outside fernetd's `/chaos` prefix.
const JUNK_PREFIX: &str = "/junk/";
/// A node's filesystem when disk faults are in play.
const DISK: &str = "size=8m,mode=0755";

/// One undoing of a store fault.
pub(super) enum StoreHeal {
    /// Start a killed member again.
    Member(usize),
    /// SIGCONT a stopped member.
    Cont(usize),
    /// Start the killed majority again.
    Quorum(Vec<usize>),
    /// The operator's NOSPACE remedy.
    Space,
    /// Remove the file that filled node i's filesystem.
    Room(usize),
    /// Lift the read-only mount over node i's repository.
    Writable(usize),
}

impl StoreHeal {
    /// The node it frees (a node-level fault), none for etcd's.
    pub(super) fn node(&self) -> Option<usize> {
        match self {
            StoreHeal::Room(i) | StoreHeal::Writable(i) => Some(*i),
            _ => None,
        }
    }
}

/// The run's etcd: `o.etcd_members` members, a small quota when NOSPACE is in play.
pub(super) fn start_etcd(o: &Options) -> EtcdCluster {
    let extra = if o.faults.contains(&Fault::Nospace) {
        vec![format!("--quota-backend-bytes={QUOTA}")]
    } else {
        Vec::new()
    };
    EtcdCluster::start_with(o.etcd_members.max(1), &extra)
}

/// Each node's own filesystem (a tmpfs), mounted when disk faults are in play and the run is
/// root; unmounted (lazily: a daemon may still hold a file there) on drop.
pub(super) struct Disks {
    roots: Vec<Option<PathBuf>>,
}

impl Disks {
    pub(super) fn mount(o: &Options, base: &Path, nodes: &mut [Node]) -> Disks {
        let wanted = o.faults.contains(&Fault::DiskFull) || o.faults.contains(&Fault::DiskReadOnly);
        let mut roots = Vec::new();
        for n in nodes.iter_mut() {
            if !wanted || !nix::unistd::geteuid().is_root() {
                roots.push(None);
                continue;
            }
            let root = base.join(format!("{}-fs", n.label));
            let _ = std::fs::create_dir_all(&root);
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
                .arg(&root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                roots.push(None);
                continue;
            }
            n.dir = root.join("keys");
            n.write_cfg(&n.proxy.endpoint());
            roots.push(Some(root));
        }
        Disks { roots }
    }

    fn root(&self, i: usize) -> Option<&PathBuf> {
        self.roots.get(i).and_then(|r| r.as_ref())
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for root in self.roots.iter().flatten() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(root).status();
        }
    }
}

/// The cluster's current revision, read from a response header.
fn revision(etcd: &EtcdCluster) -> Option<i64> {
    let (ok, out) = etcd.etcdctl(
        &["get", "/", "--keys-only", "--limit=1", "-w", "json"],
        None,
    );
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(out.lines().next()?).ok()?;
    v["header"]["revision"].as_i64()
}

/// Compaction to the current revision and defrag on every member; what happened, in words.
fn compact(etcd: &EtcdCluster) -> (bool, String) {
    let Some(rev) = revision(etcd) else {
        return (false, "no revision read".into());
    };
    let (ok, out) = etcd.etcdctl(&["compact", &rev.to_string(), "--physical"], None);
    if !ok {
        return (false, format!("compact {rev} failed: {}", first_line(&out)));
    }
    let (ok, out) = etcd.etcdctl(&["defrag"], None);
    let said = if ok {
        format!("compacted to {rev}, defragmented")
    } else {
        format!("compacted to {rev}, defrag: {}", first_line(&out))
    };
    (true, said)
}

/// The operator's NOSPACE remedy (etcd's maintenance guide): the junk deleted, the history
/// compacted, every member defragmented, the alarm disarmed; true when no alarm is left.
fn remedy(etcd: &EtcdCluster) -> (bool, String) {
    let (del, _) = etcd.etcdctl(&["del", JUNK_PREFIX, "--prefix"], None);
    let (_, compacted) = compact(etcd);
    let (disarm, _) = etcd.etcdctl(&["alarm", "disarm"], None);
    let (list, alarms) = etcd.etcdctl(&["alarm", "list"], None);
    let clear = del && disarm && list && alarms.trim().is_empty();
    (
        clear,
        format!(
            "junk deleted: {del}, {compacted}, alarm disarmed: {}",
            if clear {
                "yes".to_string()
            } else {
                format!("no ({})", first_line(&alarms))
            }
        ),
    )
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

impl Run {
    /// A store fault is pending (one member fault at a time, one NOSPACE at a time).
    fn store_busy(&self) -> bool {
        self.heals.iter().any(|(_, h, _)| {
            matches!(
                h,
                Heal::Store(
                    StoreHeal::Member(_)
                        | StoreHeal::Cont(_)
                        | StoreHeal::Quorum(_)
                        | StoreHeal::Space
                )
            )
        })
    }

    fn later(&mut self, d: Duration, h: StoreHeal, f: Fault) {
        self.heals.push((Instant::now() + d, Heal::Store(h), f));
    }

    pub(super) fn inject_store(&mut self, fault: Fault) {
        let members = self.etcd.len();
        let i = self.target;
        let label = self.nodes[i].label.clone();
        match fault {
            Fault::MemberKill | Fault::MemberPause | Fault::MemberRestart => {
                if members < 2 || self.store_busy() {
                    return;
                }
                let m = self.rng.below(members);
                if !self.etcd.running(m) {
                    return;
                }
                let d = self.rng.secs(1.0, 6.0);
                let what = match fault {
                    Fault::MemberKill => {
                        self.etcd.kill(m);
                        self.later(d, StoreHeal::Member(m), fault);
                        format!("kill -9 etcd member m{m} for {:.1}s", d.as_secs_f64())
                    }
                    Fault::MemberPause => {
                        self.etcd.signal(m, Signal::SIGSTOP);
                        self.later(d, StoreHeal::Cont(m), fault);
                        format!("SIGSTOP etcd member m{m} for {:.1}s", d.as_secs_f64())
                    }
                    _ => {
                        self.etcd.signal(m, Signal::SIGTERM);
                        std::thread::sleep(Duration::from_millis(300));
                        self.etcd.kill(m);
                        self.etcd.restart(m);
                        format!("etcd member m{m} stopped (SIGTERM) and started again")
                    }
                };
                self.fault(fault, what);
            }
            Fault::QuorumLoss => {
                if self.store_busy() {
                    return;
                }
                let majority = members / 2 + 1;
                let first = self.rng.below(members);
                let down: Vec<usize> = (0..majority).map(|k| (first + k) % members).collect();
                if down.iter().any(|&m| !self.etcd.running(m)) {
                    return;
                }
                for &m in &down {
                    self.etcd.kill(m);
                }
                let d = self.rng.secs(2.0, 8.0);
                let names: Vec<String> = down.iter().map(|m| format!("m{m}")).collect();
                self.later(d, StoreHeal::Quorum(down), fault);
                self.fault(
                    fault,
                    format!(
                        "kill -9 etcd members {} of {members} (no quorum) for {:.1}s",
                        names.join(","),
                        d.as_secs_f64()
                    ),
                );
            }
            Fault::Compact => {
                if self.rng.below(2) == 0 {
                    let (_, said) = compact(&self.etcd);
                    self.fault(fault, format!("etcd {said}"));
                    return;
                }
                // A storm: node i's connections reset, then compactions to the current
                // revision back to back while its session reads again and watches from the
                // revision it read: a compaction between the two cancels that watch
                // ("required revision has been compacted").
                let d = self.rng.secs(2.0, 4.0);
                self.nodes[i].proxy.drop_conns();
                let until = Instant::now() + d;
                let mut done = 0;
                while Instant::now() < until {
                    if let Some(rev) = revision(&self.etcd) {
                        if self.etcd.etcdctl(&["compact", &rev.to_string()], None).0 {
                            done += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = self.etcd.etcdctl(&["defrag"], None);
                self.fault(
                    fault,
                    format!(
                        "{label}'s etcd connections reset, then {done} compactions to the current revision in {:.1}s, defragmented",
                        d.as_secs_f64()
                    ),
                );
            }
            Fault::Nospace => {
                if self.store_busy() {
                    return;
                }
                let junk = vec![b'j'; JUNK];
                let mut tripped = None;
                let mut last = String::new();
                for k in 0..(2 * QUOTA as usize / JUNK) {
                    let key = format!("{JUNK_PREFIX}{}/{k}", self.faults);
                    let (ok, out) = self.etcd.etcdctl(&["put", &key], Some(&junk));
                    if !ok {
                        last = first_line(&out);
                        if out.contains("database space exceeded") {
                            tripped = Some(k);
                        }
                        break;
                    }
                }
                let d = self.rng.secs(2.0, 6.0);
                // Healed whatever the fill did: junk left behind must go too.
                self.later(d, StoreHeal::Space, fault);
                match tripped {
                    Some(k) => self.fault(
                        fault,
                        format!(
                            "etcd filled with {k} junk values of {JUNK} bytes: NOSPACE alarm, held {:.1}s",
                            d.as_secs_f64()
                        ),
                    ),
                    None => self.event(format!(
                        "etcd-nospace not made: the fill stopped without the alarm ({last})"
                    )),
                }
            }
            Fault::DiskFull | Fault::DiskReadOnly => {
                let busy = self
                    .heals
                    .iter()
                    .any(|(_, h, _)| super::heal_node(h) == Some(i));
                let Some(root) = self.disks.root(i).cloned() else {
                    return;
                };
                if busy || !self.nodes[i].live {
                    return;
                }
                let d = self.rng.secs(3.0, 10.0);
                if fault == Fault::DiskFull {
                    let mut written = 0usize;
                    if let Ok(mut f) = std::fs::File::create(root.join("fill")) {
                        let chunk = vec![0u8; 64 << 10];
                        while let Ok(n) = f.write(&chunk) {
                            if n == 0 {
                                break;
                            }
                            written += n;
                        }
                    }
                    self.later(d, StoreHeal::Room(i), fault);
                    self.fault(
                        fault,
                        format!(
                            "{label}'s filesystem filled ({} KiB) for {:.1}s",
                            written >> 10,
                            d.as_secs_f64()
                        ),
                    );
                } else {
                    let dir = self.nodes[i].dir.clone();
                    let ok = Command::new("mount")
                        .args(["--bind", "-o", "ro"])
                        .arg(&dir)
                        .arg(&dir)
                        .status()
                        .is_ok_and(|s| s.success());
                    if !ok {
                        self.event(format!("disk-readonly not made on {label}: mount refused"));
                        return;
                    }
                    self.later(d, StoreHeal::Writable(i), fault);
                    self.fault(
                        fault,
                        format!("{label}'s repository read-only for {:.1}s", d.as_secs_f64()),
                    );
                }
            }
            _ => {}
        }
    }

    pub(super) fn heal_store(&mut self, h: StoreHeal) {
        match h {
            StoreHeal::Member(m) => {
                if !self.etcd.running(m) {
                    self.etcd.restart(m);
                }
                self.event(format!("heal: etcd member m{m} started"));
            }
            StoreHeal::Cont(m) => {
                self.etcd.signal(m, Signal::SIGCONT);
                self.event(format!("heal: SIGCONT etcd member m{m}"));
            }
            StoreHeal::Quorum(down) => {
                for &m in &down {
                    if !self.etcd.running(m) {
                        self.etcd.restart(m);
                    }
                }
                self.event("heal: etcd's killed members started, quorum back".into());
            }
            StoreHeal::Space => {
                let (clear, said) = remedy(&self.etcd);
                self.event(format!("heal: etcd NOSPACE remedy: {said}"));
                if !clear {
                    self.later(Duration::from_secs(2), StoreHeal::Space, Fault::Nospace);
                }
            }
            StoreHeal::Room(i) => {
                let status = self.status_now(i);
                if let Some(root) = self.disks.root(i) {
                    let _ = std::fs::remove_file(root.join("fill"));
                }
                let label = self.nodes[i].label.clone();
                self.event(format!(
                    "heal: {label}'s filesystem has room again (`fernetd status` exited {status} while full)"
                ));
            }
            StoreHeal::Writable(i) => {
                let status = self.status_now(i);
                let dir = self.nodes[i].dir.clone();
                let _ = Command::new("umount").arg("-l").arg(&dir).status();
                let label = self.nodes[i].label.clone();
                self.event(format!(
                    "heal: {label}'s repository writable again (`fernetd status` exited {status} while read-only)"
                ));
            }
        }
    }

    /// `fernetd status` on node `i` now, not the cached answer.
    fn status_now(&mut self, i: usize) -> i32 {
        self.nodes[i].status = None;
        self.status(i)
    }

    /// After the nemesis: every member runs and is not stopped, no NOSPACE alarm is left (an old
    /// snapshot restored may bring junk back), no disk is full or read-only.
    pub(super) fn heal_store_finally(&mut self) {
        // How often the fault classes reached the watch's recovery: each cancelled watch is a
        // session that read everything again.
        let cancelled: usize = self
            .nodes
            .iter()
            .map(|n| n.log_text().matches("compacted at revision").count())
            .sum();
        if self.o.faults.contains(&Fault::Compact) {
            eprintln!("chaos: watches cancelled by a compaction (daemon logs): {cancelled}");
        }
        for m in 0..self.etcd.len() {
            if self.etcd.running(m) {
                self.etcd.signal(m, Signal::SIGCONT);
            } else {
                self.etcd.restart(m);
            }
        }
        if self.o.faults.contains(&Fault::Nospace) {
            for _ in 0..5 {
                let (clear, said) = remedy(&self.etcd);
                if clear {
                    break;
                }
                self.event(format!("final NOSPACE remedy: {said}"));
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        self.heals.retain(|(_, h, _)| !matches!(h, Heal::Store(_)));
        for i in 0..self.nodes.len() {
            if let Some(root) = self.disks.root(i) {
                let _ = std::fs::remove_file(root.join("fill"));
                let dir = self.nodes[i].dir.clone();
                while Command::new("umount")
                    .arg("-l")
                    .arg(&dir)
                    .output()
                    .is_ok_and(|o| o.status.success())
                {}
            }
        }
    }
}
