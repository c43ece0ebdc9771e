//! `fernetd status`: each repository's state for operators (lines, JSON or a chart), from the
//! disk, the running daemon's live view, and in cluster mode the cluster's.

use super::block_on;
use super::chart::{charted_history, print_chart, window_note};
use super::render::rfc3339;
use super::StatusArgs;
use crate::config::{self, DaemonSettings, Flags};
use crate::core::clock::Now;
use crate::core::duration;
use crate::repository::Repository;
use crate::status;
use chrono::{DateTime, Utc};
use std::path::Path;

/// The cluster's view of each repository, or why there is none.
type Views = Vec<Result<status::ClusterView, status::ViewError>>;

pub(super) fn run(a: StatusArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = Flags {
        key_repository: a.repo.key_repository.clone(),
        keystone_config: a.repo.keystone_config.clone(),
        ..Flags::default()
    };
    let d = DaemonSettings::inspect(&flags, config, clock.wall)?;
    // One reading of the clock for everything said, taken after the configuration is proven
    // (which may take long) and not before the history read: a rotation saved after the
    // reading would otherwise show a "next" earlier than its "last".
    let (clock, mut sums) = summaries(&d);
    let clock = &clock;
    let now = clock.wall;
    let mut views = Vec::new();
    if let Some(cluster) = &d.cluster {
        views = block_on(cluster_views(cluster, &d, clock))??;
        for (s, v) in sums.iter_mut().zip(&views) {
            s.add_cluster(v);
        }
        let exposed = crate::exposure::exposures(cluster);
        for s in &mut sums {
            for p in &exposed {
                s.add(p);
            }
        }
    }
    let level = sums
        .iter()
        .map(|s| s.level)
        .max()
        .unwrap_or(status::Level::Ok);
    if a.json {
        print_json(level, &sums, &views)?;
    } else if let Some(format) = a.chart {
        let pictures: Vec<crate::core::chart::Picture> = d
            .repositories
            .iter()
            .zip(&sums)
            .map(|(m, s)| status_picture(m, s, clock))
            .collect();
        print_chart(format, &pictures);
    } else {
        print_status(&sums, now);
        print_cluster(&sums, &views, now);
    }
    Ok(level.exit_code())
}

/// Every repository's summary and the one clock reading they are judged by: a reading taken
/// before a history that records a later rotation is taken again (once: a history saved
/// between two readings is the same moment's, milliseconds apart).
fn summaries(d: &DaemonSettings) -> (Now, Vec<status::Summary>) {
    let all = |clock: &Now| -> Vec<status::Summary> {
        d.repositories.iter().map(|m| summarize(m, clock)).collect()
    };
    let clock = Now::read();
    let sums = all(&clock);
    let newer = sums
        .iter()
        .any(|s| s.last_rotation.is_some_and(|t| t > clock.wall));
    if !newer {
        return (clock, sums);
    }
    let again = Now::read();
    let sums = all(&again);
    (again, sums)
}

/// One repository's summary from its disk and, when a daemon runs for it, the daemon's view.
fn summarize(m: &config::Managed, clock: &Now) -> status::Summary {
    let repo = Repository::new(&m.settings.key_repository, None).with_repair(m.settings.repair);
    let mut sum = status::summarize(m, &repo, clock);
    // A running daemon knows what the disk cannot show (a failing rotation, a refused input, a
    // lost etcd): the same words and levels as its STATUS=. A daemon is found by its lock, so
    // one in another pid namespace (a container) counts too; one whose view cannot be read is a
    // problem.
    match status::Live::read(&repo, clock.wall) {
        status::Seen::Nothing => {}
        status::Seen::Live { live, visible } => {
            for p in &live.problems {
                sum.add(p);
            }
            sum.view = match visible {
                true => format!("disk and daemon (pid {})", live.pid),
                false => format!(
                    "disk and daemon (pid {} in its own pid namespace: not \
                     visible here; found by its lock)",
                    live.pid
                ),
            };
        }
        status::Seen::Unseen(p) => {
            sum.add(&p);
            sum.view = "disk only: a daemon runs (it holds the repository's \
                        daemon lock) but its live view cannot be read"
                .into();
        }
    }
    sum
}

/// `status --json`.
fn print_json(level: status::Level, sums: &[status::Summary], views: &Views) -> anyhow::Result<()> {
    let cluster: Vec<serde_json::Value> = views
        .iter()
        .map(|v| match v {
            Ok(v) => serde_json::to_value(v).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        })
        .collect();
    let v = serde_json::json!({ "status": level, "repositories": sums, "cluster": cluster });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The word a level is said with.
fn level_word(level: status::Level) -> &'static str {
    match level {
        status::Level::Ok => "OK",
        status::Level::Warning => "WARNING",
        status::Level::Critical => "CRITICAL",
    }
}

/// `status` as lines: each repository's keys, rotations, what it was judged from, problems.
fn print_status(sums: &[status::Summary], now: DateTime<Utc>) {
    for s in sums {
        println!("{} {} {}", s.kind, s.path.display(), level_word(s.level));
        let keys: Vec<String> = s.keys.iter().map(u64::to_string).collect();
        let age = s
            .primary_since
            .map(|t| {
                format!(
                    ", age {}",
                    duration::format((now - t).to_std().unwrap_or_default())
                )
            })
            .unwrap_or_default();
        println!(
            "  keys {} (primary {}{age}), max_active_keys {}",
            keys.join(" "),
            s.primary.map_or("none".into(), |p| p.to_string()),
            s.max_active_keys
        );
        let t = |t: Option<DateTime<Utc>>| t.map_or("never".into(), rfc3339);
        println!(
            "  last rotation {}, next {} ({})",
            t(s.last_rotation),
            t(s.next_rotation),
            s.schedule
        );
        println!("  judged from: {}", s.view);
        for r in &s.retained {
            match &r.held {
                Some(why) => println!("  key {} kept beyond max_active_keys: {why}", r.key),
                None => println!(
                    "  key {} kept beyond max_active_keys until {}",
                    r.key,
                    rfc3339(r.until)
                ),
            }
        }
        for p in &s.problems {
            println!("  {} [{}]", p.message, p.code);
        }
    }
}

/// In cluster mode, a line per repository the cluster could be asked about.
fn print_cluster(sums: &[status::Summary], views: &Views, now: DateTime<Utc>) {
    for (s, v) in sums.iter().zip(views) {
        let Ok(v) = v else { continue };
        let nodes: Vec<String> = v
            .nodes
            .iter()
            .map(|n| {
                let heard = n.last_ack.map_or(String::new(), |t| {
                    let ago = (now - t).to_std().unwrap_or_default();
                    format!(", acknowledged {} ago", duration::format(ago))
                });
                format!(
                    "{} (revision {}{}{heard})",
                    n.node,
                    n.revision,
                    if n.holds_staged { "" } else { ", behind" }
                )
            })
            .collect();
        println!(
            "  cluster: {} revision {}, primary {}, leader {}, {}; nodes: {}",
            s.kind,
            v.revision,
            v.primary.map_or("none".into(), |p| p.to_string()),
            v.leader.as_deref().unwrap_or("none"),
            if v.in_sync {
                "this node in sync"
            } else {
                "this node differs"
            },
            if nodes.is_empty() {
                "none acknowledged".into()
            } else {
                nodes.join(", ")
            }
        );
        if let Some(id) = &v.sealed_with {
            match v.seal_key_entry {
                Some(1) => println!("  seal: {} key set sealed with seal key {id} (seal_key_files entry 1, the sealing one)", s.kind),
                Some(n) => println!("  seal: {} key set sealed with seal key {id} (seal_key_files entry {n}); `fernetd cluster seal` seals it with entry 1", s.kind),
                None => println!("  seal: {} key set stored in the clear; `fernetd cluster seal` seals it with seal_key_files entry 1", s.kind),
            }
        }
    }
}

/// For each managed repository: the cluster's view of it, or why there is none. A seal key
/// fernetd refuses is a configuration error here as everywhere, not a view missing.
async fn cluster_views(
    cluster: &config::ClusterSettings,
    d: &DaemonSettings,
    clock: &Now,
) -> Result<Views, crate::cluster::ClusterError> {
    use crate::cluster::ClusterError;
    use status::ViewError;
    let unreachable = |e: ClusterError| match e {
        ClusterError::Seal { .. } | ClusterError::KeySet { .. } => {
            ViewError::Refused(e.to_string())
        }
        _ => ViewError::Unreachable(e.to_string()),
    };
    let mut c = match crate::cluster::Cluster::connect(cluster).await {
        Ok(c) => c,
        Err(e @ (ClusterError::SealKey { .. } | ClusterError::Unsealed)) => return Err(e),
        Err(e) => {
            let e = unreachable(e);
            return Ok(d.repositories.iter().map(|_| Err(e.clone())).collect());
        }
    };
    let mut out = Vec::new();
    for m in &d.repositories {
        let kind = m.settings.kind;
        let view = async {
            let (set, revision) = c.fetch(kind).await.map_err(unreachable)?;
            // One read of the acknowledgements says both what they hold and which do not
            // verify.
            let seen = c.acks_judged(kind).await.map_err(unreachable)?;
            let acks = seen.acks;
            let leader = c.leader(kind).await.map_err(unreachable)?;
            let repo =
                Repository::new(&m.settings.key_repository, None).with_repair(m.settings.repair);
            let local = repo
                .scan()
                .map_err(|e| ViewError::Unreachable(e.to_string()))?
                .fingerprints();
            let history = repo.history().unwrap_or_default();
            let mut view = status::cluster_view(
                &local,
                &history,
                &set,
                revision,
                &acks,
                leader,
                m.settings.key_decryptable(),
                &repo.judging_clock(clock),
            );
            let due = m
                .schedule
                .next_rotation(set.history.schedule_basis(), clock);
            view.judge_gate(
                due,
                cluster.gate_deadline,
                cluster.member_timeout,
                clock.wall,
            );
            let margin =
                crate::cluster::skew_tolerance(m.settings.kind, m.settings.lifetime.margin);
            view.judge_clocks(&acks, set.history.last_rotation, margin, clock.wall);
            let hold = c.skew_hold(kind).await.map_err(unreachable)?;
            view.judge_hold(hold, m.settings.lifetime.retention(), clock.wall);
            view.judge_own_clock(&cluster.node, margin, m.settings.lifetime.retention());
            view.unauthenticated = seen.unauthenticated;
            view.missing = seen.missing;
            if cluster.seal_tagged {
                let by = c.sealed_with(kind).await.map_err(unreachable)?;
                view.sealed_with = Some(by.map_or("clear".into(), |id| id.to_string()));
                view.seal_key_entry = by
                    .and_then(|id| c.seal_ids().iter().position(|k| *k == id))
                    .map(|i| i + 1);
            }
            Ok(view)
        }
        .await;
        out.push(view);
    }
    Ok(out)
}

/// `status --chart`: the repository's keys, recorded and planned, and the guard's holds.
fn status_picture(
    m: &config::Managed,
    sum: &status::Summary,
    clock: &Now,
) -> crate::core::chart::Picture {
    let s = &m.settings;
    let repo = Repository::new(&s.key_repository, None);
    let (history, on_disk, judged) = charted_history(&repo, clock);
    // No keys: nothing to draw but now (`plan --chart` pictures a setup instead).
    let history = if on_disk {
        history
    } else {
        crate::core::history::History::new()
    };
    let p = crate::core::timeline::project(&crate::core::timeline::Input {
        history: &history,
        on_disk,
        now: &judged,
        schedule: &m.schedule,
        first: sum.next_rotation,
        max_active_keys: m.max_active_keys,
        retention: s.lifetime.retention(),
    });
    let level = level_word(sum.level);
    let mut notes = vec![
        format!(
            "schedule '{}' (UTC), max_active_keys {}, {}",
            m.schedule,
            m.max_active_keys,
            window_note(s)
        ),
        format!(
            "now {}, last rotation {}, next {}",
            rfc3339(judged.wall),
            sum.last_rotation.map_or("never".into(), rfc3339),
            sum.next_rotation.map_or("never".into(), rfc3339)
        ),
    ];
    for r in &sum.retained {
        notes.push(match &r.held {
            Some(why) => format!("key {} kept beyond max_active_keys: {why}", r.key),
            None => format!(
                "key {} kept beyond max_active_keys until {}",
                r.key,
                rfc3339(r.until)
            ),
        });
    }
    if !on_disk {
        notes.push("no keys on disk".into());
    }
    let codes: Vec<&str> = sum.problems.iter().map(|p| p.code.as_str()).collect();
    if !codes.is_empty() {
        notes.push(format!("problems: {} (fernetd status)", codes.join(", ")));
    }
    crate::core::chart::Picture {
        title: format!("{} {}: {level}", s.kind, s.key_repository.display()),
        notes,
        now: judged.wall,
        lives: p.lives,
        rotations: p.rotations,
        manual: None,
    }
}
