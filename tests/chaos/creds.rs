//! Credentials and an operator's actions in the chaos run.
//!
//! Every node has a credentials repository beside its token one (`[credentials]` in its
//! fernetd configuration, `cluster init --kind credentials` once, the daemon following the
//! cluster's credentials key set as it follows the tokens'), and its own keystone.conf whose
//! `[database] connection` is the run's one SQLite database. The leader's daemon migrates and
//! verifies before each credentials rotation (`pre_rotate`: `keystone-manage
//! credential_migrate`; `verify`: the packaged `verify-credentials`), both run on the shared
//! database with the leader's keys.
//!
//! Workload: Keystone's credential manager (`tests/keystone/chaos_creds.py`, one process on the
//! shared database) makes credentials through each serving node's repository, encrypted with
//! that node's primary as that node's Keystone would. Checker: every stored credential must
//! decrypt with every serving node's keys, checked again every few rounds for as long as it is
//! stored (a credential never expires). One that does not is a violation (no fault here
//! tampers with a credentials repository, so none is excused), and a silent one when that
//! node's `fernetd status` is not critical. The population is capped: the oldest credentials
//! are deleted through Keystone once checked (a deletion is a credential Keystone no longer
//! needs, never a loss).
//!
//! What the checker trusts: Keystone's own decryption (`_decrypt_credential`, the path `GET
//! /v3/credentials` takes) and the database's list of stored credentials. A credential the
//! harness made that the list no longer holds (and the harness did not delete) is a violation
//! too: a migration that dropped a row would otherwise look like a clean run.
//!
//! Operator actions (each a nemesis fault):
//! - `credential-rotate`: `keystone-manage credential_rotate` then `credential_migrate` on one
//!   node, against that node's keystone.conf (the shared database, that node's repository).
//! - `credential-rotate-racing`: the same while another node's Keystone writes credentials in
//!   bursts until the operator's commands end.
//! - `remove-node`: a node stopped (daemon and Keystone), `fernetd cluster remove-node NAME` from
//!   another node, then the node started again as a new member (docs/runbooks.md: a removed
//!   node's name is free; its daemon claims it and joins); its Keystone serves again once its
//!   daemon holds the cluster's key sets (as a unit ordered after fernetd's READY would).
//! - `rename-node`: docs/runbooks.md's rename: the daemon stopped (its Keystone serves on),
//!   `fernetd cluster rename-node OLD NEW`, `[cluster] node = NEW`, the daemon started.

use super::{fernetd_bin, fingerprints, run_bounded, show_keys, Fault, Node, Proc, Run};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The credentials' schedule: a rotation needs a migration and a verification first (two
/// Python starts on a loaded machine), so a few seconds apart at best.
const CRED_SCHEDULE: u64 = 5;
/// Rounds (of 400 ms) between two credentials made on a node, and between two checks.
const MAKE_EVERY: u64 = 2;
const CHECK_EVERY: u64 = 4;
/// Stored credentials at most; beyond, the oldest checked ones are deleted through Keystone.
const CAP: usize = 400;
/// A node whose Keystone stopped for a removal serves again once its daemon holds the cluster's
/// sets, or after this.
const RETURN_BOUND: Duration = Duration::from_secs(40);

pub fn dir(node: &Node) -> PathBuf {
    node.dir.with_file_name(format!("{}-creds", node.label))
}

fn keystone_conf(node: &Node) -> PathBuf {
    node.dir
        .with_file_name(format!("{}-keystone.conf", node.label))
}

fn db(node: &Node) -> PathBuf {
    node.dir.with_file_name("keystone.db")
}

fn keystone_manage() -> PathBuf {
    super::common::keystone::venv().join("bin/keystone-manage")
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether the fernetd under test knows `[credentials] verify` (a build before issue 24 refuses
/// the field: it then runs without it, as tests/credentials.rs does).
fn verify_known() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        let Ok(t) = tempfile::tempdir() else {
            return true;
        };
        let cfg = t.path().join("probe.toml");
        let _ = std::fs::write(
            &cfg,
            format!(
                "[tokens]\nkey_repository = \"{d}/t\"\n[credentials]\nkey_repository = \"{d}/c\"\n\
                 schedule = \"1d\"\npre_rotate = [\"true\"]\nverify = [\"true\"]\n",
                d = t.path().display()
            ),
        );
        let out = Command::new(fernetd_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("check-config")
            .env_remove("FERNETD_CONFIG")
            .output();
        !out.is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("unknown field `verify`"))
    })
}

/// The `[keystone]` file and `[credentials]` section of a node's configuration; writes the
/// node's keystone.conf (the shared database, its own repositories).
pub fn cfg(node: &Node) -> (String, String) {
    let conf = keystone_conf(node);
    let _ = std::fs::write(
        &conf,
        format!(
            "[database]\nconnection = sqlite:///{}\n[credential]\nkey_repository = {}\n\
             [fernet_tokens]\nkey_repository = {t}\n[fernet_receipts]\nkey_repository = {t}\n",
            db(node).display(),
            dir(node).display(),
            t = node.dir.display()
        ),
    );
    let py = super::common::keystone::venv().join("bin/python");
    let verify =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/keystone/verify-credentials");
    // The hooks run without the node's fake clock (libfaketime breaks Python's sleeps); a
    // credential's encryption does not depend on the time.
    let argv = |args: &[String]| {
        let mut all = vec!["env".to_string(), "-u".into(), "LD_PRELOAD".into()];
        all.extend(args.iter().cloned());
        format!(
            "[{}]",
            all.iter()
                .map(|a| toml_str(a))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let km = keystone_manage().display().to_string();
    let c = conf.display().to_string();
    let migrate = argv(&[
        km,
        "--config-file".into(),
        c.clone(),
        "credential_migrate".into(),
        "--keystone-user".into(),
        "root".into(),
        "--keystone-group".into(),
        "root".into(),
    ]);
    let mut section = format!(
        "[credentials]\nkey_repository = \"{}\"\nschedule = \"{CRED_SCHEDULE}s\"\npre_rotate = {migrate}\n",
        dir(node).display()
    );
    if verify_known() {
        section.push_str(&format!(
            "verify = {}\n",
            argv(&[
                py.display().to_string(),
                verify.display().to_string(),
                "--config-file".into(),
                c.clone()
            ])
        ));
    }
    (c, section)
}

/// One credential the harness made.
struct Cred {
    issuer: usize,
    at: f64,
    /// Nodes where it already counted as a violation (each pair once).
    failed_on: BTreeSet<usize>,
    /// Checks it passed.
    ok: u32,
    /// Checked at least once (the summary counts credentials, not decryptions).
    seen: bool,
}

/// An operator's command running in the background.
struct Op {
    child: Child,
    node: usize,
    what: String,
    fault: Fault,
}

/// A node stopped for a removal, to be started again.
struct Removed {
    node: usize,
    at: Instant,
    started: Option<Instant>,
}

pub struct Creds {
    _child: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    made: BTreeMap<String, Cred>,
    order: VecDeque<String>,
    /// Credentials checked at least once (the summary's count).
    pub checked: u64,
    /// (credential, node) decryptions checked.
    pub decryptions: u64,
    /// Made and gone from the database without the harness deleting them.
    vanished: BTreeSet<String>,
    rounds: u64,
    errors: u64,
    ops: Vec<Op>,
    /// The node whose Keystone writes in bursts while an operator rotates elsewhere.
    pub burst: Option<usize>,
    removed: Vec<Removed>,
    renames: usize,
    /// When the first credential violation was found (the run's clock).
    first: Option<f64>,
    /// Nodes whose credentials repository held a key set once: from then on their Keystone
    /// serves credentials (before, a new node's Keystone would fall back to its null key).
    joined: BTreeSet<usize>,
}

impl Creds {
    /// `cluster init --kind credentials` on `nodes[0]`, and Keystone's credential side on the
    /// shared database (tables made).
    pub fn start(nodes: &[Node]) -> Creds {
        let (code, err) = run_bounded(
            nodes[0].command(&["cluster", "init", "--kind", "credentials"]),
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "cluster init --kind credentials: {err}");
        // Its own keystone.conf: the shared database, and token and receipt repositories that
        // exist before any daemon made a node's (Keystone's providers refuse to load without).
        let base = nodes[0].dir.with_file_name("");
        let conf = base.join("keystone-credentials.conf");
        let _ = std::fs::write(
            &conf,
            format!(
                "[database]\nconnection = sqlite:///{}\n[fernet_tokens]\nkey_repository = {b}\n\
                 [fernet_receipts]\nkey_repository = {b}\n",
                db(&nodes[0]).display(),
                b = base.display()
            ),
        );
        let venv = super::common::keystone::venv();
        let mut child = Command::new(venv.join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/chaos_creds.py"))
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Keystone's credential side (tests/keystone/chaos_creds.py)");
        let stdin = child.stdin.take().expect("its stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        assert!(line.contains("ready"), "chaos_creds.py said {line:?}");
        Creds {
            _child: Proc(child),
            stdin,
            stdout,
            made: BTreeMap::new(),
            order: VecDeque::new(),
            checked: 0,
            decryptions: 0,
            vanished: BTreeSet::new(),
            rounds: 0,
            errors: 0,
            ops: Vec::new(),
            burst: None,
            removed: Vec::new(),
            renames: 0,
            first: None,
            joined: BTreeSet::new(),
        }
    }

    fn ask(&mut self, req: serde_json::Value) -> serde_json::Value {
        writeln!(self.stdin, "{req}").expect("write to Keystone's credential side");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read Keystone's credential answer");
        serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("Keystone's credential side said {line:?}"))
    }

    /// No operator's command runs and no node writes in bursts.
    pub fn idle(&self) -> bool {
        self.ops.is_empty() && self.burst.is_none()
    }

    /// Whether an operator's action holds `node` (the nemesis leaves it alone meanwhile).
    pub fn busy(&self, node: usize) -> bool {
        self.ops.iter().any(|o| o.node == node) || self.removed.iter().any(|r| r.node == node)
    }
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// One round of the credentials' workload and checker, and the operator's actions' progress.
pub fn round(run: &mut Run) {
    run.creds.rounds += 1;
    progress(run);
    let r = run.creds.rounds;
    if r % MAKE_EVERY == 0 {
        for i in 0..run.nodes.len() {
            let burst = run.creds.burst == Some(i);
            if !burst && (r / MAKE_EVERY + i as u64) % run.nodes.len() as u64 != 0 {
                continue;
            }
            if !run.nodes[i].serving() || fingerprints(&dir(&run.nodes[i])).len() < 2 {
                continue;
            }
            let n = if burst { 5 } else { 1 };
            let user = format!("u{}", run.creds.order.len() / 100);
            let d = dir(&run.nodes[i]);
            let v = run
                .creds
                .ask(serde_json::json!({"make": d, "n": n, "user": user}));
            if v.get("error").is_some() {
                run.creds.errors += 1;
                continue;
            }
            let at = run.t();
            for id in strs(&v["made"]) {
                run.creds.order.push_back(id.clone());
                run.creds.made.insert(
                    id,
                    Cred {
                        issuer: i,
                        at,
                        failed_on: BTreeSet::new(),
                        ok: 0,
                        seen: false,
                    },
                );
            }
        }
    }
    if r % CHECK_EVERY == 0 {
        check(run);
    }
}

/// Every stored credential decrypted with every serving node's keys.
pub fn check(run: &mut Run) {
    for j in 0..run.nodes.len() {
        if holds_keys(&run.nodes[j]) {
            run.creds.joined.insert(j);
        }
        if !run.nodes[j].serving() || !run.creds.joined.contains(&j) {
            continue;
        }
        let d = dir(&run.nodes[j]);
        let v = run.creds.ask(serde_json::json!({"check": d}));
        if v.get("error").is_some() {
            run.creds.errors += 1;
            continue;
        }
        let stored: BTreeSet<String> = strs(&v["ids"]).into_iter().collect();
        let failed: BTreeSet<String> = strs(&v["failed"]).into_iter().collect();
        let mut lost = Vec::new();
        let ids: Vec<String> = run.creds.made.keys().cloned().collect();
        for id in ids {
            if !stored.contains(&id) {
                if run.creds.vanished.insert(id.clone()) {
                    let what = "vanished: made through Keystone, never deleted, and no longer stored in the database".to_string();
                    violation(run, &id, j, &what);
                }
                continue;
            }
            let Some(c) = run.creds.made.get_mut(&id) else {
                continue;
            };
            if c.failed_on.contains(&j) {
                continue;
            }
            if !c.seen {
                c.seen = true;
                run.creds.checked += 1;
            }
            run.creds.decryptions += 1;
            if failed.contains(&id) {
                c.failed_on.insert(j);
                lost.push(id);
            } else {
                c.ok += 1;
            }
        }
        if lost.is_empty() {
            continue;
        }
        let status = run.status(j);
        let silent = if status == 2 {
            String::new()
        } else {
            format!("; silent: `fernetd status` there exits {status}, not 2")
        };
        let n = lost.len();
        for id in lost {
            violation(
                run,
                &id,
                j,
                &format!(
                    "lost credential: stored, and does not decrypt with {}'s credential keys ({n} such on this check){silent}",
                    run.nodes[j].label
                ),
            );
        }
    }
    // The population stays bounded: the oldest credentials, each checked at least once, are
    // deleted through Keystone.
    let mut gone = Vec::new();
    while run.creds.order.len() > CAP {
        let Some(id) = run.creds.order.front().cloned() else {
            break;
        };
        if run.creds.made.get(&id).is_some_and(|c| !c.seen) {
            break;
        }
        run.creds.order.pop_front();
        run.creds.made.remove(&id);
        gone.push(id);
    }
    if !gone.is_empty() {
        let v = run.creds.ask(serde_json::json!({"delete": gone}));
        if v.get("error").is_some() {
            run.creds.errors += 1;
        }
    }
}

fn violation(run: &mut Run, id: &str, validator: usize, what: &str) {
    let Some(c) = run.creds.made.get(id) else {
        return;
    };
    let (issuer, at, ok) = (c.issuer, c.at, c.ok);
    // The faults that touched the issuer, the validator or the whole cluster since the
    // credential was made (it never expires: a rotation any time after can lose it), and a
    // while before (the keys it was made with).
    let since = at - 20.0;
    let suspects: BTreeSet<&'static str> = run
        .injected
        .iter()
        .filter(|(t, _, node)| *t >= since && node.is_none_or(|n| n == issuer || n == validator))
        .map(|(_, f, _)| f.name())
        .collect();
    let class = if suspects.is_empty() {
        "none".to_string()
    } else {
        suspects.iter().copied().collect::<Vec<_>>().join("+")
    };
    for s in &suspects {
        *run.by_fault.entry(s.to_string()).or_default() += 1;
    }
    let key = format!("credential: {class}");
    if !run.classes.contains_key(&key) {
        // The first of each class in the timeline, whatever the number printed in full.
        run.event(format!(
            "first credential violation with faults in play {class}: {what}"
        ));
        run.creds.first.get_or_insert(run.t());
    }
    *run.classes.entry(key).or_default() += 1;
    let n = run.violations.len() + 1;
    if n > 3 {
        run.violations.push(String::new());
        return;
    }
    let mut s = format!(
        "chaos violation {n} at {:.2}s (seed {}): {what}\n  faults in play: {class}\n  credential {}… made by {}'s Keystone at {at:.2}s, checks passed before: {ok}\n  credential keys now:",
        run.t(),
        run.o.seed,
        &id[..8.min(id.len())],
        run.nodes[issuer].label,
    );
    for node in &run.nodes {
        s.push_str(&format!(
            "\n    {} (node {}, daemon {}): {}",
            node.label,
            node.name,
            match (&node.daemon, node.paused) {
                (None, _) => "down",
                (Some(_), true) => "stopped",
                _ => "up",
            },
            show_keys(&fingerprints(&dir(node)))
        ));
    }
    s.push_str("\n  timeline (last 15 events):");
    let from = run.timeline.len().saturating_sub(15);
    for (t, e) in &run.timeline[from..] {
        s.push_str(&format!("\n    {t:7.2}s {e}"));
    }
    eprintln!("{s}");
    run.violations.push(s);
}

/// The operator's commands that ended, and the removed nodes' return.
fn progress(run: &mut Run) {
    let mut k = 0;
    while k < run.creds.ops.len() {
        let done = match run.creds.ops[k].child.try_wait() {
            Ok(Some(st)) => Some(st.code().unwrap_or(-1)),
            Ok(None) => None,
            Err(_) => Some(-1),
        };
        let Some(code) = done else {
            k += 1;
            continue;
        };
        let op = run.creds.ops.remove(k);
        if op.fault == Fault::CredRotateRacing {
            run.creds.burst = None;
        }
        run.event(format!("{} ended: exit {code}", op.what));
    }
    let now = Instant::now();
    let mut k = 0;
    while k < run.creds.removed.len() {
        let i = run.creds.removed[k].node;
        match run.creds.removed[k].started {
            None if now >= run.creds.removed[k].at => {
                run.nodes[i].start_daemon();
                run.creds.removed[k].started = Some(now);
                let label = run.nodes[i].label.clone();
                run.event(format!("{label} returns: its daemon started"));
                k += 1;
            }
            Some(at) => {
                if caught_up(run, i) || at.elapsed() > RETURN_BOUND {
                    run.creds.removed.remove(k);
                    run.nodes[i].live = true;
                    let label = run.nodes[i].label.clone();
                    let keys = show_keys(&fingerprints(&run.nodes[i].dir));
                    run.event(format!(
                        "{label}'s Keystone serves again (its daemon holds {keys}, {:.1}s after its start)",
                        at.elapsed().as_secs_f64()
                    ));
                } else {
                    k += 1;
                }
            }
            None => k += 1,
        }
    }
}

/// The checker's own test: node `n`'s credential keys replaced by two fresh ones behind
/// everyone's back (its daemon already dead): the stored credentials no longer decrypt there,
/// and those its Keystone makes decrypt nowhere else.
pub fn sabotage(n: &Node) {
    let d = dir(n);
    for k in fingerprints(&d).into_keys() {
        let _ = std::fs::remove_file(d.join(k.to_string()));
    }
    for k in ["0", "1"] {
        let _ = std::fs::write(d.join(k), fernet::Fernet::generate_key());
    }
}

/// Node `n` holds a credentials key set (the run starts once every node does).
pub fn holds_keys(n: &Node) -> bool {
    fingerprints(&dir(n)).len() >= 2
}

/// Node `i` holds the key sets (tokens and credentials) another serving node holds.
fn caught_up(run: &Run, i: usize) -> bool {
    let (t, c) = (
        fingerprints(&run.nodes[i].dir),
        fingerprints(&dir(&run.nodes[i])),
    );
    t.len() >= 2
        && run.nodes.iter().enumerate().any(|(j, n)| {
            j != i && n.serving() && fingerprints(&n.dir) == t && fingerprints(&dir(n)) == c
        })
}

/// Another node with a running daemon that serves, to run a cluster command from.
fn other(run: &Run, i: usize) -> Option<usize> {
    (0..run.nodes.len())
        .find(|&j| j != i && run.nodes[j].serving() && run.nodes[j].daemon.is_some())
}

/// Starts an operator's command on node `i` (its output dropped) as fault `f`, followed by
/// [`progress`] until it ends; a command that cannot start is no fault (a burst it asked for
/// ends with it).
fn start(run: &mut Run, mut cmd: Command, i: usize, f: Fault, what: String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(child) = cmd.spawn() else {
        run.creds.burst = None;
        return;
    };
    run.creds.ops.push(Op {
        child,
        node: i,
        what: what.clone(),
        fault: f,
    });
    run.fault(f, what);
}

/// The nemesis's operator actions; `i` is the node picked, not busy with another fault.
pub fn inject(run: &mut Run, f: Fault, i: usize) {
    if run.creds.busy(i) || !run.nodes[i].serving() || run.nodes[i].daemon.is_none() {
        return;
    }
    let label = run.nodes[i].label.clone();
    match f {
        Fault::CredRotate | Fault::CredRotateRacing => {
            // One burst at a time: a node cut off while it writes keeps its own.
            if !run.creds.idle() {
                return;
            }
            let c = keystone_conf(&run.nodes[i]).display().to_string();
            let km = keystone_manage().display().to_string();
            let step = |cmd: &str| {
                format!("{km} --config-file {c} {cmd} --keystone-user root --keystone-group root")
            };
            let script = format!(
                "{} && {}",
                step("credential_rotate"),
                step("credential_migrate")
            );
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &script]);
            let mut what =
                format!("keystone-manage credential_rotate + credential_migrate on {label}");
            if f == Fault::CredRotateRacing {
                if let Some(j) = (1..run.nodes.len())
                    .map(|k| (i + k) % run.nodes.len())
                    .find(|&j| run.nodes[j].serving())
                {
                    run.creds.burst = Some(j);
                    what.push_str(&format!(
                        " while {}'s Keystone writes credentials in bursts",
                        run.nodes[j].label
                    ));
                }
            }
            start(run, cmd, i, f, what);
        }
        // The operator's `fernetd rotate --kind credentials`: its migration and the leader's
        // (every CRED_SCHEDULE) race, each then rotating the cluster's set.
        Fault::CredFernetdRotate => {
            if !run.creds.ops.is_empty() {
                return;
            }
            let cmd = run.nodes[i].command(&["rotate", "--kind", "credentials"]);
            let what = format!("fernetd rotate --kind credentials on {label}");
            start(run, cmd, i, f, what);
        }
        Fault::RemoveNode => {
            let Some(j) = other(run, i) else { return };
            if run.nodes.iter().filter(|n| n.serving()).count() < 3 {
                return; // the cluster keeps two serving nodes
            }
            run.nodes[i].kill_daemon();
            run.nodes[i].live = false;
            let name = run.nodes[i].name.clone();
            let (code, err) = run_bounded(
                run.nodes[j].command(&["cluster", "remove-node", &name]),
                Duration::from_secs(30),
            );
            let d = run.rng.secs(3.0, 12.0);
            run.creds.removed.push(Removed {
                node: i,
                at: Instant::now() + d,
                started: None,
            });
            let via = run.nodes[j].label.clone();
            run.fault(
                f,
                format!(
                    "{label} stopped (daemon and Keystone), `cluster remove-node {name}` on {via}: exit {code}{}; back in {:.1}s",
                    said(code, &err),
                    d.as_secs_f64()
                ),
            );
        }
        Fault::RenameNode => {
            let Some(j) = other(run, i) else { return };
            run.nodes[i].kill_daemon();
            run.creds.renames += 1;
            let old = run.nodes[i].name.clone();
            let new = format!(
                "{}r{}",
                old.split('r').next().unwrap_or(&old),
                run.creds.renames
            );
            let (code, err) = run_bounded(
                run.nodes[j].command(&["cluster", "rename-node", &old, &new]),
                Duration::from_secs(30),
            );
            if code == 0 {
                run.nodes[i].name = new.clone();
                let e = run.nodes[i].proxy.endpoint();
                run.nodes[i].write_cfg(&e);
            }
            run.nodes[i].start_daemon();
            let via = run.nodes[j].label.clone();
            run.fault(
                f,
                format!(
                    "{label}'s daemon stopped, `cluster rename-node {old} {new}` on {via}: exit {code}{}; started as {}",
                    said(code, &err),
                    run.nodes[i].name
                ),
            );
        }
        _ => {}
    }
}

/// A command's last line of stderr, when it failed.
fn said(code: i32, err: &str) -> String {
    if code == 0 {
        String::new()
    } else {
        format!(" ({err})")
    }
}

/// At the end of the nemesis: the operator's commands waited for (at most a minute each), the
/// removed nodes started.
pub fn heal_all(run: &mut Run) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.creds.ops.is_empty() && Instant::now() < deadline {
        progress(run);
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut op in std::mem::take(&mut run.creds.ops) {
        let _ = op.child.kill();
        let _ = op.child.wait();
    }
    run.creds.burst = None;
    for r in &mut run.creds.removed {
        r.at = Instant::now();
    }
    progress(run);
}

/// The figures for the summary.
pub fn figures(run: &Run) -> String {
    let first = run
        .creds
        .first
        .map(|t| format!(", first credential violation at {t:.1}s"))
        .unwrap_or_default();
    format!(
        "{} credentials checked ({} decryptions, {} stored, {} requests the database refused), credential keys on {}: {}{first}",
        run.creds.checked,
        run.creds.decryptions,
        run.creds.order.len(),
        run.creds.errors,
        run.nodes[0].label,
        show_keys(&fingerprints(&dir(&run.nodes[0])))
    )
}
