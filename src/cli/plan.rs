//! `fernetd plan`: prove a schedule safe (a table, JSON, or a chart of the planned rotations).

use super::chart::{charted_history, print_chart, window_note};
use super::render::rfc3339;
use super::settings::{configured, with_lifetime};
use super::{PlanArgs, EXIT_UNSAFE};
use crate::config::{self, Flags, Settings};
use crate::core::clock::Now;
use crate::core::duration;
use crate::core::planner;
use crate::core::schedule::Schedule;
use crate::repository::Repository;
use std::path::Path;

pub(super) fn run(a: PlanArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let flags = Flags {
        schedule: a.schedule.clone(),
        max_active_keys: a.max_active_keys,
        ..with_lifetime(
            Flags {
                key_repository: a.repo.key_repository.clone(),
                keystone_config: a.repo.keystone_config.clone(),
                ..Flags::default()
            },
            &a.lifetime,
        )
    };
    let sources = config::Sources::load(&flags, config)?;
    let kind = a.kind.map_or(config::Kind::Tokens, config::Kind::from);
    let s = configured(&sources, kind, &flags, config)?;
    let schedule = match &s.schedule {
        Some(sch) => sch.clone(),
        None => "@daily".parse::<Schedule>().map_err(anyhow::Error::msg)?,
    };
    // An interval schedule runs from the last rotation, when the repository knows it.
    let last = Repository::new(&s.key_repository, None)
        .history()
        .ok()
        .and_then(|h| h.schedule_basis());
    let mut plan = planner::plan(&schedule, &s.lifetime, s.max_active_keys, clock.wall, last)?;
    if kind == config::Kind::Credentials {
        // No token window: what Keystone keeps (the secondary stays until a verified migration).
        plan.required_max_active_keys = plan.required_max_active_keys.max(config::CREDENTIAL_KEYS);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&schedule, &s, &plan))?
        );
    } else if let Some(format) = a.chart {
        print_chart(format, &[plan_picture(&schedule, &s, &plan, clock)]);
    } else {
        print_plan(&schedule, &s, &plan);
        let others: Vec<&str> = config::Kind::ALL
            .into_iter()
            .filter(|k| *k != kind && sources.file.section(*k).is_some())
            .map(config::Kind::name)
            .collect();
        if !others.is_empty() {
            println!(
                "{:<26} also configured: {} (fernetd plan --kind {})",
                "note",
                others.join(", "),
                others[0]
            );
        }
    }
    Ok(if plan.safe == Some(false) {
        EXIT_UNSAFE
    } else {
        0
    })
}

/// `plan --chart`: the next rotations from the repository's keys as they are (or a setup now),
/// each key's window, and what a manual rotation now would do.
fn plan_picture(
    schedule: &Schedule,
    s: &Settings,
    plan: &planner::Plan,
    clock: &Now,
) -> crate::core::chart::Picture {
    let repo = Repository::new(&s.key_repository, None);
    let (history, on_disk, judged) = charted_history(&repo, clock);
    let n = s.max_active_keys.unwrap_or(plan.required_max_active_keys);
    let p = crate::core::timeline::project(&crate::core::timeline::Input {
        history: &history,
        on_disk,
        now: &judged,
        schedule,
        first: plan.next_rotations.first().copied(),
        max_active_keys: n,
        retention: s.lifetime.retention(),
    });
    let verdict = match (s.max_active_keys, plan.safe) {
        (Some(_), Some(false)) => format!(
            "UNSAFE, needs {}: the retention guard holds (!) what the count rule would purge",
            plan.required_max_active_keys
        ),
        (Some(_), _) => "safe".into(),
        (None, _) => "the smallest safe".into(),
    };
    let mut notes = vec![
        format!("schedule '{schedule}' (UTC), max_active_keys {n}: {verdict}"),
        match s.kind {
            config::Kind::Credentials => window_note(s),
            _ => format!(
                "{}; no key is purged before the tokens made with it expire (])",
                window_note(s)
            ),
        },
    ];
    if !on_disk {
        notes.push(format!(
            "no keys at {}: the picture starts from a setup now",
            s.key_repository.display()
        ));
    }
    crate::core::chart::Picture {
        title: format!("plan: {} {}", s.kind, s.key_repository.display()),
        notes,
        now: judged.wall,
        lives: p.lives,
        rotations: p.rotations,
        manual: p.manual,
    }
}

/// `plan --json`.
fn plan_json(schedule: &Schedule, s: &Settings, p: &planner::Plan) -> serde_json::Value {
    serde_json::json!({
        "kind": s.kind,
        "schedule": schedule.to_string(),
        "expiration_seconds": s.lifetime.expiration.as_secs(),
        "allow_expired_window_seconds": s.lifetime.allow_expired_window.as_secs(),
        "margin_seconds": s.lifetime.margin.as_secs(),
        "retention_seconds": p.retention.as_secs(),
        "required_max_active_keys": p.required_max_active_keys,
        "max_active_keys": p.max_active_keys,
        "safe": p.safe,
        "shortest_window_seconds": p.shortest_window.as_secs(),
        "shortest_window_between": p.shortest_window_between.map(|(a, b)| [rfc3339(a), rfc3339(b)]),
        "next_rotations": p.next_rotations.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>(),
        "firings_analysed": p.firings_analysed,
        "horizon_truncated": p.horizon_truncated,
        "keystone_config": s.keystone_config.as_ref().map(|p| p.display().to_string()),
        "receipt_expiration_seconds": s.origins.receipts.as_ref().map(|_| s.lifetime.receipts.as_secs()),
        "origins": {
            "expiration": s.origins.expiration,
            "allow_expired_window": s.origins.allow_expired_window,
            "margin": s.origins.margin,
            "receipt_expiration": s.origins.receipts,
        },
    })
}

/// The table `plan` prints by default.
fn print_plan(schedule: &Schedule, s: &Settings, p: &planner::Plan) {
    let row = |k: &str, v: String| println!("{k:<26} {v}");
    if s.kind != config::Kind::Tokens {
        row(
            "repository",
            format!("{} {}", s.kind, s.key_repository.display()),
        );
    }
    row("schedule", format!("{schedule} (UTC)"));
    row("retention needed", retention_needed(s, p));
    if s.kind != config::Kind::Credentials {
        let o = &s.origins;
        row("expiration from", o.expiration.clone());
        if s.kind == config::Kind::Tokens {
            row("allow_expired_window from", o.allow_expired_window.clone());
        }
        row("margin from", o.margin.clone());
        if let Some(r) = &o.receipts {
            row(
                "receipts share this dir",
                format!(
                    "expiration {} from {r}",
                    duration::format(s.lifetime.receipts)
                ),
            );
        }
    }
    row(
        "required max_active_keys",
        p.required_max_active_keys.to_string(),
    );
    let window = match p.shortest_window_between {
        Some((a, b)) => format!(
            "{} (between the rotations at {} and {})",
            duration::format(p.shortest_window),
            rfc3339(a),
            rfc3339(b)
        ),
        None => duration::format(p.shortest_window),
    };
    match (p.max_active_keys, p.safe) {
        (Some(n), Some(true)) => {
            row("max_active_keys", format!("{n}: safe"));
            row("shortest retention window", window);
        }
        (Some(n), _) => {
            row(
                "max_active_keys",
                format!(
                    "{n}: UNSAFE, needs {} (tokens become undecryptable before they expire)",
                    p.required_max_active_keys
                ),
            );
            row("shortest retention window", window);
        }
        (None, _) => {
            row("max_active_keys", "not configured".into());
            row(
                "shortest retention window",
                format!("{window} with the required N"),
            );
        }
    }
    let next: Vec<String> = p.next_rotations.iter().map(|t| rfc3339(*t)).collect();
    row("next rotations", next.join(", "));
    if p.horizon_truncated {
        row(
            "note",
            format!(
                "schedule analysed over its first {} firings only",
                p.firings_analysed
            ),
        );
    }
}

/// The `retention needed` row of the table.
fn retention_needed(s: &Settings, p: &planner::Plan) -> String {
    let l = &s.lifetime;
    // What Keystone accepts decides the retention: tokens inside their allow_expired_window,
    // receipts never past their expiration (keystone/receipt/handlers.py), credentials until
    // pre_rotate re-encrypted them.
    match s.kind {
        config::Kind::Tokens if l.receipts_decide() => format!(
            "{} = receipt expiration {} (receipts share this repository; tokens need \
             expiration {} + allow_expired_window {}) + margin {}",
            duration::format(p.retention),
            duration::format(l.receipts),
            duration::format(l.expiration),
            duration::format(l.allow_expired_window),
            duration::format(l.margin)
        ),
        config::Kind::Tokens => format!(
            "{} = expiration {} + allow_expired_window {} + margin {}",
            duration::format(p.retention),
            duration::format(l.expiration),
            duration::format(l.allow_expired_window),
            duration::format(l.margin)
        ),
        config::Kind::Receipts => format!(
            "{} = expiration {} + margin {} (Keystone never accepts an expired receipt)",
            duration::format(p.retention),
            duration::format(l.expiration),
            duration::format(l.margin)
        ),
        config::Kind::Credentials => "no time window: a credential key stays while a stored \
             credential may be encrypted with it; pre_rotate migrates them to the primary, \
             verify (Keystone's own check) confirms it, and only then is the old secondary \
             purged; Keystone keeps 3 keys (more is a buffer)"
            .to_string(),
    }
}
