//! Random schedules of cluster events against a real etcd, through the library's cluster API
//! with simulated time (no daemons): rotations tried by whichever node believes it leads
//! (fenced on its claim, due judged on the set it reads), leaders stalled past their lease
//! while another node takes the claim (the stalled one still believes it leads), nodes that
//! apply late (a reconnection after the others moved on), campaigns, time passing, and each
//! node's clock drifting or stepping away from the model's time (both ways, some beyond the
//! margin), and second daemons starting under a node's name (another disk: they hold the name
//! only if `cluster::names` gives it, and then apply and acknowledge under it). A node's clock is the model's time plus its offset: it stamps its acknowledgements
//! with it, answers the leader's clock probes with it (a task answers for every connected node
//! while the leader waits, as the daemon's session does), and a leader rotates by it. A stalled
//! node is not connected (its lease ended) until it next applies: the leader judges it by its
//! last acknowledgement.
//!
//! After every step each node that applied the cluster's set makes a token with its primary,
//! issued at its own clock's time. Then:
//! - every token a node's clock still considers valid (issued at t by the issuer's clock,
//!   valid until t + E + W by the validator's) decrypts with the keys on the validator's disk,
//!   as long as neither the issuer's nor the validator's clock moved since the token was made:
//!   a move no rotation could have measured is outside what any purge can honour (a validator
//!   stepping back after its key went, or an issuer ahead when it issued and back in step by the
//!   next probe). E + W is shorter than a slot and the retention E + W + M, so keys are purged
//!   within a case, and a skew beyond the margin that the judgement missed breaks a token;
//! - no promotion a member has not acknowledged: the cluster's primary is on the disk of
//!   every member, so a token any node makes with the key the cluster promoted decrypts on
//!   every node that serves;
//! - at most one rotation per slot: the cluster's promotions are a full interval apart by the
//!   clocks that stamped them (the rotating leaders');
//! - an acknowledgement names a staged key the node holds, through sets of another cluster
//!   written over the cluster's and a good node's keys offered again (`init --force`, with or
//!   without `--force-purge`), refused and then taken.
//!
//! A node's endpoints may name a second, stray etcd for a while (a typo, a local etcd): its
//! session there ends its lease in the cluster's etcd, and it does there what its daemon does
//! (an empty prefix: it publishes nothing; a set there is taken only if
//! `keyset::bound_elsewhere` lets it, then acknowledged there) and what the timer's `fernetd
//! rotate` does (a rotation of whatever set is there, with no fence). The stray holds nothing,
//! a copy of the cluster's set (a snapshot restored into another etcd), or another cluster's
//! set (a stray `cluster init`). Its Keystone keeps serving with the primary on its disk
//! meanwhile, and its tokens are judged like any other; its endpoints are set right again
//! later (it applies the cluster's set and acknowledges as any late node).
//!
//! One etcd member serves every case, each case under a prefix of its own, and a second one
//! serves as the stray etcd.

mod common;
use common::etcd::Etcd;
use fernetd::cluster::{names, Ack, Cluster, ClusterError, Rotation};
use fernetd::config::{ClusterSection, Kind};
use fernetd::core::clock::Now;
use fernetd::core::keyset::KeySet;
use fernetd::repository::{Repository, RotateParams};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NODES: usize = 3;
/// The schedule's interval, in simulated minutes.
const SLOT_MIN: i64 = 60;
/// A token's lifetime plus the window it may still be used in after it expires (E + W), in
/// simulated minutes: shorter than a slot, so purges happen within a case.
const TOKEN_MIN: i64 = 55;
/// The clock difference the model's purges tolerate (M), in simulated minutes.
const MARGIN_MIN: i64 = 5;
/// How far a node's clock may wander from the model's time, in simulated seconds.
const MAX_OFFSET_SECS: i64 = 3600;

#[derive(Debug, Clone)]
enum Op {
    /// The node tries a rotation if it believes it leads.
    Rotate { node: usize },
    /// The node that believes it leads (the first, if two do) tries a rotation.
    RotateLeader,
    /// The node applies the cluster's current set and acknowledges it.
    Apply { node: usize },
    /// Every node applies and acknowledges: a healthy cluster between rotations.
    ApplyAll,
    /// The node is paused past its lease: the lease ends, the node starts a new one when it
    /// resumes, and still believes it leads until it learns otherwise.
    Stall { node: usize },
    /// The node campaigns for the leadership.
    Campaign { node: usize },
    /// Simulated time passes.
    Advance { minutes: i64 },
    /// A second daemon (another host's disk: a VM cloned before the cluster existed, or a
    /// node rebuilt) starts under the node's name: it applies the cluster's set to its own
    /// repository and acknowledges under that name only if the name is given to it.
    Duplicate { node: usize },
    /// The node's clock moves by this much against the model's time: a drift (small) or a
    /// step (large), either way, within [`MAX_OFFSET_SECS`] of the model's time.
    Clock { node: usize, offset_secs: i64 },
    /// A set of another cluster lands under the cluster's key (a stray `init`, a wrong
    /// endpoint): every node refuses it.
    Foreign,
    /// The operator offers a good node's keys again, as `cluster init --force --from GOOD`
    /// does (`purge`: with `--force-purge`): the keys a refused set held come back.
    Reoffer { node: usize, purge: bool },
    /// The node's endpoints name the stray etcd, which holds `what`: its session in the
    /// cluster's etcd ends (lease, leadership, clock answers) and it acts there.
    Stray { node: usize, what: Stray },
    /// The node's endpoints are set right again: it applies the cluster's set as a late node.
    Back { node: usize },
}

/// What the stray etcd holds under the cluster's prefix when a node reaches it.
#[derive(Debug, Clone, Copy)]
enum Stray {
    /// Nothing: a new local etcd.
    Empty,
    /// The cluster's set as it is now, copied (a snapshot of the cluster's etcd restored there).
    Copy,
    /// Another cluster's set: someone ran `cluster init` there.
    Init,
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        3 => node.clone().prop_map(|node| Op::Rotate { node }),
        5 => Just(Op::RotateLeader),
        4 => node.clone().prop_map(|node| Op::Apply { node }),
        3 => Just(Op::ApplyAll),
        1 => node.clone().prop_map(|node| Op::Stall { node }),
        2 => node.clone().prop_map(|node| Op::Campaign { node }),
        7 => (1i64..120).prop_map(|minutes| Op::Advance { minutes }),
        2 => (node.clone(), -120i64..120).prop_map(|(node, offset_secs)| Op::Clock { node, offset_secs }),
        2 => (node.clone(), -1800i64..1800).prop_map(|(node, offset_secs)| Op::Clock { node, offset_secs }),
        3 => node.clone().prop_map(|node| Op::Duplicate { node }),
        1 => Just(Op::Foreign),
        2 => (node.clone(), any::<bool>()).prop_map(|(node, purge)| Op::Reoffer { node, purge }),
        2 => (node.clone(), prop_oneof![Just(Stray::Empty), Just(Stray::Copy), Just(Stray::Init)])
            .prop_map(|(node, what)| Op::Stray { node, what }),
        2 => node.prop_map(|node| Op::Back { node }),
    ]
}

struct Node {
    name: String,
    repo: Repository,
    lease: i64,
    /// What the node believes, possibly stale (a stalled leader).
    leading: bool,
    /// Its endpoints name the stray etcd.
    away: bool,
}

/// What the probe answerer needs to know about the nodes, shared with the test loop.
struct Clocks {
    /// Each node's clock minus the model's time.
    offsets: [chrono::Duration; NODES],
    /// Each node's session lease, and whether it is connected (its clock reading key lives).
    leases: [i64; NODES],
    connected: [bool; NODES],
    /// The node rotating now: the probe's answers are measured against its clock.
    leader: usize,
    /// How many times each node's clock moved.
    moves: [u32; NODES],
}

/// A token some node made: the key it was encrypted with, when by the issuer's clock.
#[derive(Debug)]
struct Token {
    issuer: usize,
    key: fernetd::core::key::Fingerprint,
    issued: chrono::DateTime<chrono::Utc>,
    /// Every node's [`Clocks::moves`] when it was issued.
    moves: [u32; NODES],
}

/// Answers every clock probe the leader posts, for every connected node, with that node's clock
/// (as the real clock seen from the leader's: the leader measures the reading against its real
/// clock, so the reading carries the difference between the two nodes' offsets).
async fn answer_probes(endpoint: String, prefix: String, clocks: Arc<Mutex<Clocks>>) {
    let Ok(mut raw) = etcd_client::Client::connect([endpoint.as_str()], None).await else {
        return;
    };
    let probe_key = format!("{prefix}/tokens/keyset-clock");
    let mut last = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let Ok(resp) = raw.get(probe_key.clone(), None).await else {
            continue;
        };
        let probe = resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<serde_json::Value>(kv.value()).ok())
            .and_then(|v| v["probe"].as_u64());
        let Some(probe) = probe.filter(|p| *p != last) else {
            continue;
        };
        last = probe;
        let answers: Vec<(usize, chrono::Duration, i64)> = {
            let c = clocks.lock().unwrap();
            (0..NODES)
                .filter(|i| c.connected[*i])
                .map(|i| (i, c.offsets[i] - c.offsets[c.leader], c.leases[i]))
                .collect()
        };
        for (i, diff, lease) in answers {
            let reading = fernetd::cluster::Reading {
                node: format!("n{i}"),
                probe,
                clock: chrono::Utc::now() + diff,
            };
            // A lease that ended meanwhile (a stall) makes the node unconnected: no answer.
            let _ = raw
                .put(
                    format!("{prefix}/tokens/clocks/n{i}"),
                    serde_json::to_vec(&reading).unwrap(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await;
        }
    }
}

fn run(etcd: &Etcd, stray: &Etcd, case: usize, ops: &[Op]) {
    let t = tempfile::tempdir().unwrap();
    let prefix = format!("/model{case}");
    let section: ClusterSection = toml::from_str(&format!(
        "endpoints = [\"{}\"]\nprefix = \"{prefix}\"\ninsecure_unsealed = true\n",
        etcd.endpoint
    ))
    .unwrap();
    let settings = section.settings(&Default::default());
    let stray_section: ClusterSection = toml::from_str(&format!(
        "endpoints = [\"{}\"]\nprefix = \"{prefix}\"\ninsecure_unsealed = true\n",
        stray.endpoint
    ))
    .unwrap();
    let stray_settings = stray_section.settings(&Default::default());
    let hourly: fernetd::core::schedule::Schedule = format!("{}m", SLOT_MIN).parse().unwrap();
    let params = RotateParams {
        max_active_keys: 3,
        // E + W + M: a demoted key is purged at the first rotation a slot later.
        retention: Duration::from_secs(60 * (TOKEN_MIN + MARGIN_MIN) as u64),
        force_purge: false,
        expected_primary: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut wall = start;
        let now = |wall| Now { wall, boot: None };
        let clocks = Arc::new(Mutex::new(Clocks {
            offsets: [chrono::Duration::zero(); NODES],
            leases: [0; NODES],
            connected: [false; NODES],
            leader: 0,
            moves: [0; NODES],
        }));
        let answerer = tokio::spawn(answer_probes(
            etcd.endpoint.clone(),
            prefix.clone(),
            clocks.clone(),
        ));
        let clock = |i: usize, wall| Now {
            wall: wall + clocks.lock().unwrap().offsets[i],
            boot: None,
        };
        let mut c = Cluster::connect(&settings).await.unwrap();
        let mut raw = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        let mut sc = Cluster::connect(&stray_settings).await.unwrap();
        let mut stray_raw = etcd_client::Client::connect([stray.endpoint.as_str()], None)
            .await
            .unwrap();
        let set = KeySet::fresh(&now(wall)).unwrap();
        c.import(Kind::Tokens, &set, false, false).await.unwrap();
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..NODES {
            let lease = c.grant_lease(Duration::from_secs(60)).await.unwrap().id;
            nodes.push(Node {
                name: format!("n{i}"),
                repo: Repository::new(t.path().join(format!("n{i}")), None),
                lease,
                leading: false,
                away: false,
            });
        }
        // Every node holds its name, joins: applies and acknowledges; n0 claims the leadership.
        for (i, n) in nodes.iter().enumerate() {
            let me = identity(n, i as u32, start);
            assert!(hold_name(&mut c, &n.name, &me, &names::Local::default()).await);
            apply(&mut c, n, &clock(i, wall), &params).await;
            connect(&mut c, n, &clocks, i).await;
        }
        nodes[0].leading = c
            .campaign(Kind::Tokens, "n0", nodes[0].lease)
            .await
            .unwrap();
        let mut promotions: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
        // A set of another cluster sits in etcd (no node holds its keys): no promotion to judge.
        let mut foreign = false;
        // The cluster's own set at the last step: a good node holds every key of it.
        let mut last_good = c.fetch(Kind::Tokens).await.unwrap().0;
        let mut tokens: Vec<Token> = Vec::new();
        let lifetime = chrono::Duration::minutes(TOKEN_MIN);
        for (step, op) in ops.iter().enumerate() {
            let ctx = format!("step {step} {op:?} at {wall}");
            match *op {
                Op::Advance { minutes } => wall += chrono::Duration::minutes(minutes),
                Op::Apply { node } if nodes[node].away => {
                    astray(&mut sc, &nodes[node], &clock(node, wall), &params).await;
                }
                Op::Apply { node } | Op::Back { node } => {
                    nodes[node].away = false;
                    apply(&mut c, &nodes[node], &clock(node, wall), &params).await;
                    connect(&mut c, &nodes[node], &clocks, node).await;
                }
                Op::ApplyAll => {
                    for (i, n) in nodes.iter().enumerate() {
                        if n.away {
                            astray(&mut sc, n, &clock(i, wall), &params).await;
                            continue;
                        }
                        apply(&mut c, n, &clock(i, wall), &params).await;
                        connect(&mut c, n, &clocks, i).await;
                    }
                }
                Op::Stray { node, what } => {
                    stray_raw
                        .delete(
                            prefix.clone(),
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        )
                        .await
                        .unwrap();
                    match what {
                        Stray::Empty => {}
                        Stray::Copy => {
                            let key = format!("{prefix}/tokens/keyset");
                            let value = raw.get(key.clone(), None).await.unwrap();
                            let value = value.kvs()[0].value().to_vec();
                            stray_raw.put(key, value, None).await.unwrap();
                        }
                        Stray::Init => {
                            let other = KeySet::fresh(&now(wall)).unwrap();
                            sc.import(Kind::Tokens, &other, false, false).await.unwrap();
                        }
                    }
                    // Its session in the cluster's etcd ends: no lease, no leadership, no
                    // clock answers; its last acknowledgement stays (membership outlives it).
                    let n = &mut nodes[node];
                    raw.lease_revoke(n.lease).await.unwrap();
                    n.lease = c.grant_lease(Duration::from_secs(60)).await.unwrap().id;
                    n.leading = false;
                    n.away = true;
                    clocks.lock().unwrap().connected[node] = false;
                    astray(&mut sc, &nodes[node], &clock(node, wall), &params).await;
                }
                Op::Clock { node, offset_secs } => {
                    let mut k = clocks.lock().unwrap();
                    let max = chrono::Duration::seconds(MAX_OFFSET_SECS);
                    let moved = k.offsets[node] + chrono::Duration::seconds(offset_secs);
                    if moved.clamp(-max, max) != k.offsets[node] {
                        k.offsets[node] = moved.clamp(-max, max);
                        k.moves[node] += 1;
                    }
                }
                Op::Duplicate { node } => {
                    let lease = c.grant_lease(Duration::from_secs(60)).await.unwrap().id;
                    let dup = Node {
                        name: nodes[node].name.clone(),
                        repo: Repository::new(t.path().join(format!("dup{step}")), None),
                        lease,
                        leading: false,
                        away: false,
                    };
                    let me = names::Identity {
                        boot: Some(format!("boot-dup{step}")),
                        ..identity(&dup, 1000 + step as u32, start)
                    };
                    if hold_name(&mut c, &dup.name, &me, &names::Local::default()).await {
                        apply(&mut c, &dup, &clock(node, wall), &params).await;
                    }
                }
                Op::Campaign { node } if nodes[node].away => {}
                Op::Campaign { node } => {
                    let n = &mut nodes[node];
                    n.leading = c.campaign(Kind::Tokens, &n.name, n.lease).await.unwrap();
                }
                Op::Stall { node } => {
                    raw.lease_revoke(nodes[node].lease).await.unwrap();
                    nodes[node].lease = c.grant_lease(Duration::from_secs(60)).await.unwrap().id;
                    // Not connected (no clock reading) until it next applies.
                    clocks.lock().unwrap().connected[node] = false;
                }
                Op::Foreign => {
                    let stray = KeySet::fresh(&now(wall)).unwrap();
                    raw.put(
                        format!("{prefix}/tokens/keyset"),
                        stray.encode().to_vec(),
                        None,
                    )
                    .await
                    .unwrap();
                    foreign = true;
                }
                Op::Reoffer { node, purge } => {
                    // A good node: one that holds every key of the cluster's own set (the one
                    // before a foreign set, while one sits there); none yet, no remedy.
                    let holds = |i: &usize| {
                        let disk = nodes[*i].repo.scan().unwrap().fingerprints();
                        last_good
                            .fingerprints()
                            .iter()
                            .all(|(k, fp)| disk.get(k) == Some(fp))
                    };
                    let Some(node) = (0..NODES).map(|i| (node + i) % NODES).find(holds) else {
                        continue;
                    };
                    let good = nodes[node].repo.export(&clock(node, wall)).unwrap();
                    c.import(Kind::Tokens, &good, true, purge).await.unwrap();
                    foreign = foreign && !purge;
                }
                Op::Rotate { .. } | Op::RotateLeader => {
                    let node = match *op {
                        Op::Rotate { node } => node,
                        _ => nodes.iter().position(|n| n.leading).unwrap_or(0),
                    };
                    let n = &nodes[node];
                    if !n.leading {
                        continue;
                    }
                    let local = n.repo.history().unwrap();
                    let mine = clock(node, wall);
                    clocks.lock().unwrap().leader = node;
                    let request = Rotation {
                        params: &params,
                        now: &mine,
                        held: Some(&local),
                        skew_tolerance: Duration::from_secs(60 * MARGIN_MIN as u64),
                        fence: Some((&n.name, n.lease)),
                        schedule: Some(&hourly),
                        member_timeout: None,
                        // Long enough for the answerer; every connected node answers at once.
                        probe_wait: Duration::from_secs(2),
                    };
                    match c.rotate(Kind::Tokens, &request).await {
                        Ok(_) => promotions.push(mine.wall),
                        Err(ClusterError::NotLeader { .. }) => nodes[node].leading = false,
                        Err(ClusterError::NotDue { .. } | ClusterError::GateWaiting { .. }) => {}
                        Err(ClusterError::Refused { .. } | ClusterError::SkewBound { .. }) => {}
                        Err(e) => panic!("{ctx}: {e}"),
                    }
                }
            }
            // An acknowledgement names a staged key the node's disk holds (while the cluster's
            // set still holds it: a purged one may be gone).
            let (set, _) = c.fetch(Kind::Tokens).await.unwrap();
            for n in &nodes {
                let Some(ack) = c
                    .acks(Kind::Tokens)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|a| a.node == n.name)
                else {
                    continue;
                };
                let disk = n.repo.scan().unwrap().fingerprints();
                assert!(
                    disk.values().any(|fp| *fp == ack.staged)
                        || !set.fingerprints().values().any(|fp| *fp == ack.staged),
                    "{ctx}: {} acknowledged a staged key it does not hold (revision {})",
                    n.name,
                    ack.revision
                );
            }
            if !foreign {
                last_good = set.clone();
            }
            // No promotion a member has not acknowledged.
            let primary = set.keys[&set.primary().unwrap()].fingerprint();
            for n in nodes.iter().filter(|_| !foreign) {
                let disk = n.repo.scan().unwrap().fingerprints();
                assert!(
                    disk.values().any(|fp| *fp == primary),
                    "{ctx}: the cluster promoted a key member {} never held ({:?})",
                    n.name,
                    disk.keys().collect::<Vec<_>>()
                );
            }
            // Every token a validator still considers valid decrypts there.
            let (set, _) = c.fetch(Kind::Tokens).await.unwrap();
            let disks: Vec<_> = nodes
                .iter()
                .map(|n| n.repo.scan().unwrap().fingerprints())
                .collect();
            for (i, disk) in disks.iter().enumerate() {
                // Only a node that applied the cluster's set serves (a connected daemon applies
                // every set as it is committed): a node behind keeps its old primary. A node
                // pointed at the stray etcd serves too, with whatever primary its disk holds.
                if !nodes[i].away
                    && disk.values().collect::<Vec<_>>()
                        != set.fingerprints().values().collect::<Vec<_>>()
                {
                    continue;
                }
                let primary = fernetd::core::history::primary(disk.keys().copied()).unwrap();
                tokens.push(Token {
                    issuer: i,
                    key: disk[&primary],
                    issued: clock(i, wall).wall,
                    moves: clocks.lock().unwrap().moves,
                });
            }
            let moves = clocks.lock().unwrap().moves;
            for (v, disk) in disks.iter().enumerate() {
                let at = clock(v, wall).wall;
                // A clock that moved since the token was issued is not judged: no rotation
                // could have seen the move before the key went (a validator stepping back
                // after the purge), or saw the issuer's clock as it was when it issued.
                let steady =
                    |t: &&Token| t.moves[t.issuer] == moves[t.issuer] && t.moves[v] == moves[v];
                for tok in tokens
                    .iter()
                    .filter(steady)
                    .filter(|t| at < t.issued + lifetime)
                {
                    assert!(
                        disk.values().any(|fp| *fp == tok.key),
                        "{ctx}: node n{v} (clock {at}) cannot decrypt a token n{} issued at {} \
                         by its clock, valid until {}; offsets {:?}",
                        tok.issuer,
                        tok.issued,
                        tok.issued + lifetime,
                        clocks.lock().unwrap().offsets,
                    );
                }
            }
            // One rotation per slot.
            for w in promotions.windows(2) {
                assert!(
                    w[1] - w[0] >= chrono::Duration::minutes(SLOT_MIN),
                    "{ctx}: two promotions in one slot: {promotions:?}"
                );
            }
        }
        answerer.abort();
    });
}

/// The node's session is live: its clock reading key exists under its lease, so the leader
/// waits for its answer to a probe (the answer itself comes from [`answer_probes`]).
/// A node's daemon identity under its lease.
fn identity(n: &Node, pid: u32, started: chrono::DateTime<chrono::Utc>) -> names::Identity {
    names::Identity {
        lease: n.lease,
        boot: Some(format!("boot-{}", n.name)),
        host: n.name.clone(),
        pid,
        started,
    }
}

/// Claims `node` for `me` as a daemon's session does; whether it holds it.
async fn hold_name(
    c: &mut Cluster,
    node: &str,
    me: &names::Identity,
    local: &names::Local,
) -> bool {
    let seen = names::read(&*c, Kind::Tokens, node).await.unwrap();
    // What the sealed set lists of the name, as the daemon reads it at its session's start.
    let listed = match c.fetch(Kind::Tokens).await {
        Ok((set, _)) => names::listed(&set, node),
        Err(_) => names::Listed::No,
    };
    match names::decide(node, me, &seen, local, None, listed, |_| false) {
        names::Decision::Take => {
            let token = names::new_token().unwrap();
            names::claim(&*c, Kind::Tokens, node, me, &token, &seen)
                .await
                .unwrap()
        }
        _ => false,
    }
}

async fn connect(c: &mut Cluster, n: &Node, clocks: &Arc<Mutex<Clocks>>, i: usize) {
    c.answer(Kind::Tokens, &n.name, 0, n.lease).await.unwrap();
    let mut k = clocks.lock().unwrap();
    k.leases[i] = n.lease;
    k.connected[i] = true;
}

/// A node reconnects: applies the cluster's current set and acknowledges it, by its clock.
/// A set the node's own guard refuses (it would remove a key its clock says may still decrypt
/// a live token) is not taken and not acknowledged: the node keeps its keys, as the daemon does.
async fn apply(c: &mut Cluster, n: &Node, now: &Now, params: &RotateParams) {
    let (set, revision) = c.fetch(Kind::Tokens).await.unwrap();
    match n.repo.apply(&set, "model", params.retention, now) {
        Err(fernetd::Error::Refused { .. }) => return,
        taken => taken.map(drop).unwrap(),
    }
    // As the agent does: the disk read back must hold every key of the set.
    let disk = n.repo.scan().unwrap().fingerprints();
    if !set
        .fingerprints()
        .iter()
        .all(|(k, fp)| disk.get(k) == Some(fp))
    {
        return;
    }
    let ack = Ack {
        node: n.name.clone(),
        revision,
        staged: set.keys[&0].fingerprint(),
        clock: Some(now.wall),
        refused: None,
    };
    c.acknowledge(Kind::Tokens, &ack).await.unwrap();
}

/// A node whose endpoints name the stray etcd (`sc`) acts there as its daemon does: an empty
/// prefix publishes nothing (it waits); a set there is refused when `keyset::bound_elsewhere`
/// says it belongs to another etcd or the node to another, else applied and acknowledged
/// there. Then the timer's `fernetd rotate` runs on it: no fence, no schedule, the node's own
/// history as what it holds.
async fn astray(sc: &mut Cluster, n: &Node, now: &Now, params: &RotateParams) {
    let set = match sc.fetch(Kind::Tokens).await {
        Err(ClusterError::Missing { .. }) => return,
        found => found.unwrap().0,
    };
    let held = n.repo.history().unwrap();
    let refused = fernetd::core::keyset::bound_elsewhere(
        held.lineage.as_ref(),
        set.history.lineage.as_ref(),
        &sc.binding(),
    );
    if refused.is_none() {
        apply(sc, n, now, params).await;
    }
    let held = n.repo.history().unwrap();
    let request = Rotation {
        params,
        now,
        held: Some(&held),
        skew_tolerance: Duration::from_secs(60 * MARGIN_MIN as u64),
        fence: None,
        schedule: None,
        member_timeout: None,
        probe_wait: Duration::from_millis(100),
    };
    match sc.rotate(Kind::Tokens, &request).await {
        Ok(_) | Err(ClusterError::Refused { .. } | ClusterError::GateWaiting { .. }) => {}
        Err(ClusterError::SkewBound { .. } | ClusterError::NotDue { .. }) => {}
        Err(e) => panic!("fernetd rotate on {} at the stray etcd: {e}", n.name),
    }
}

#[test]
fn stalled_leaders_and_late_nodes_never_break_a_token() {
    let (etcd, stray) = (Etcd::start(), Etcd::start());
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            run(&etcd, &stray, n, &ops);
            Ok(())
        })
        .unwrap();
}
