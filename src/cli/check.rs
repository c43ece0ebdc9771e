//! `fernetd check`: every problem of a repository, by file (lines or a JSON report).

use super::settings::flags;
use super::CheckArgs;
use crate::config::Settings;
use crate::core::check;
use crate::core::clock::Now;
use crate::repository::{Owner, Repository};
use std::path::Path;

pub(super) fn run(a: CheckArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let s = Settings::resolve(&flags(&a.repo, &a.owner), config)?;
    let owner = Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?;
    let repo = Repository::new(&s.key_repository, owner).with_repair(s.repair);
    let scan = repo.scan()?;
    let mut report = check::check(&scan, owner);
    let (history, lost, applied) = match repo.history() {
        Ok(h) => {
            let judged = repo.judging_clock(clock);
            let lost = repo.lost_keys(&scan, &h, s.key_retention(), &judged);
            // A cluster node: its clock may call a key of the set past its window while a
            // peer still encrypts with it (the cluster holds it, for a peer's clock or its
            // acknowledgement); only etcd could say no token needs it, and check asks none.
            let applied = match h.lineage {
                Some(_) => crate::status::against_applied(&h, &scan.fingerprints()),
                None => Vec::new(),
            };
            (Ok(()), lost, applied)
        }
        Err(e) => (Err(e.to_string()), Vec::new(), Vec::new()),
    };
    check::judge_history(&mut report, &repo.state_path(), history, &lost, &applied);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report.exit_code())
}

/// One line per finding, then the repository's verdict.
fn print_report(report: &check::Report) {
    for f in &report.findings {
        let sev = match f.severity {
            check::Severity::Error => "error",
            check::Severity::Warning => "warning",
        };
        println!("{sev}: {}: {} [{}]", f.path, f.message, f.code);
    }
    println!(
        "{}: {} ({} keys, primary {}, digest {})",
        report.repository,
        report.status,
        report.keys.len(),
        report.primary.map_or("none".into(), |p| p.to_string()),
        report.digest
    );
}
