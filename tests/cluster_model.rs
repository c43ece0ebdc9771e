//! Random schedules of cluster events against a real etcd, through the library's cluster API
//! with simulated time (no daemons): rotations tried by whichever node believes it leads
//! (fenced on its claim, due judged on the set it reads), leaders stalled past their lease
//! while another node takes the claim (the stalled one still believes it leads), nodes that
//! apply late (a reconnection after the others moved on), campaigns, and time passing.
//!
//! After every step:
//! - no promotion a member has not acknowledged: the cluster's primary is on the disk of
//!   every member, so a token any node makes with the key the cluster promoted decrypts on
//!   every node that serves;
//! - at most one rotation per slot: the cluster's promotions are a full interval apart.
//!
//! One etcd member serves every case, each case under a prefix of its own.

mod common;
use common::etcd::Etcd;
use fernetd::cluster::{Ack, Cluster, ClusterError, Rotation};
use fernetd::config::{ClusterSection, Kind};
use fernetd::core::clock::Now;
use fernetd::core::keyset::KeySet;
use fernetd::repository::{Repository, RotateParams};
use proptest::prelude::*;
use std::time::Duration;

const NODES: usize = 3;
/// The schedule's interval, in simulated minutes.
const SLOT_MIN: i64 = 60;

#[derive(Debug, Clone)]
enum Op {
    /// The node tries a rotation if it believes it leads.
    Rotate { node: usize },
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
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        4 => node.clone().prop_map(|node| Op::Rotate { node }),
        4 => node.clone().prop_map(|node| Op::Apply { node }),
        3 => Just(Op::ApplyAll),
        1 => node.clone().prop_map(|node| Op::Stall { node }),
        2 => node.prop_map(|node| Op::Campaign { node }),
        3 => (1i64..90).prop_map(|minutes| Op::Advance { minutes }),
    ]
}

struct Node {
    name: String,
    repo: Repository,
    lease: i64,
    /// What the node believes, possibly stale (a stalled leader).
    leading: bool,
}

fn run(etcd: &Etcd, case: usize, ops: &[Op]) {
    let t = tempfile::tempdir().unwrap();
    let prefix = format!("/model{case}");
    let section: ClusterSection = toml::from_str(&format!(
        "endpoints = [\"{}\"]\nprefix = \"{prefix}\"\ninsecure_unsealed = true\n",
        etcd.endpoint
    ))
    .unwrap();
    let settings = section.settings(&Default::default());
    let hourly: fernetd::core::schedule::Schedule = format!("{}m", SLOT_MIN).parse().unwrap();
    let params = RotateParams {
        max_active_keys: 3,
        // Nothing is purged within a case: every key a node ever held stays in the set.
        retention: Duration::from_secs(365 * 86_400),
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
        let mut c = Cluster::connect(&settings).await.unwrap();
        let mut raw = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
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
            });
        }
        // Every node joins: applies and acknowledges; n0 claims the leadership.
        for n in &nodes {
            apply(&mut c, n, &now(wall)).await;
        }
        nodes[0].leading = c
            .campaign(Kind::Tokens, "n0", nodes[0].lease)
            .await
            .unwrap();
        let mut promotions: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            let ctx = format!("step {step} {op:?} at {wall}");
            match *op {
                Op::Advance { minutes } => wall += chrono::Duration::minutes(minutes),
                Op::Apply { node } => apply(&mut c, &nodes[node], &now(wall)).await,
                Op::ApplyAll => {
                    for n in &nodes {
                        apply(&mut c, n, &now(wall)).await;
                    }
                }
                Op::Campaign { node } => {
                    let n = &mut nodes[node];
                    n.leading = c.campaign(Kind::Tokens, &n.name, n.lease).await.unwrap();
                }
                Op::Stall { node } => {
                    raw.lease_revoke(nodes[node].lease).await.unwrap();
                    nodes[node].lease = c.grant_lease(Duration::from_secs(60)).await.unwrap().id;
                }
                Op::Rotate { node } => {
                    let n = &nodes[node];
                    if !n.leading {
                        continue;
                    }
                    let local = n.repo.history().unwrap();
                    let request = Rotation {
                        params: &params,
                        now: &now(wall),
                        held: Some(&local),
                        skew_tolerance: Duration::ZERO,
                        fence: Some((&n.name, n.lease)),
                        schedule: Some(&hourly),
                        member_timeout: None,
                        probe_wait: Duration::ZERO,
                    };
                    match c.rotate(Kind::Tokens, &request).await {
                        Ok(_) => promotions.push(wall),
                        Err(ClusterError::NotLeader { .. }) => nodes[node].leading = false,
                        Err(ClusterError::NotDue { .. } | ClusterError::GateWaiting { .. }) => {}
                        Err(ClusterError::Refused { .. }) => {}
                        Err(e) => panic!("{ctx}: {e}"),
                    }
                }
            }
            // No promotion a member has not acknowledged.
            let (set, _) = c.fetch(Kind::Tokens).await.unwrap();
            let primary = set.keys[&set.primary().unwrap()].fingerprint();
            for n in &nodes {
                let disk = n.repo.scan().unwrap().fingerprints();
                assert!(
                    disk.values().any(|fp| *fp == primary),
                    "{ctx}: the cluster promoted a key member {} never held ({:?})",
                    n.name,
                    disk.keys().collect::<Vec<_>>()
                );
            }
            // One rotation per slot.
            for w in promotions.windows(2) {
                assert!(
                    w[1] - w[0] >= chrono::Duration::minutes(SLOT_MIN),
                    "{ctx}: two promotions in one slot: {promotions:?}"
                );
            }
        }
    });
}

/// A node reconnects: applies the cluster's current set and acknowledges it.
async fn apply(c: &mut Cluster, n: &Node, now: &Now) {
    let (set, revision) = c.fetch(Kind::Tokens).await.unwrap();
    n.repo
        .apply(&set, "model", Duration::from_secs(365 * 86_400), now)
        .unwrap();
    let ack = Ack {
        node: n.name.clone(),
        revision,
        staged: set.keys[&0].fingerprint(),
        clock: Some(now.wall),
    };
    c.acknowledge(Kind::Tokens, &ack).await.unwrap();
}

#[test]
fn stalled_leaders_and_late_nodes_never_break_a_token() {
    let etcd = Etcd::start();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            run(&etcd, n, &ops);
            Ok(())
        })
        .unwrap();
}
