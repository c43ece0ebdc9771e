//! `--chart` for `status` and `plan`: the history a picture starts from, its shared notes, and
//! printing (text or SVG).

use super::ChartFormat;
use crate::config::{self, Settings};
use crate::core::clock::Now;
use crate::core::duration;
use crate::repository::Repository;

/// Prints pictures: each as text, or all as one SVG.
pub(super) fn print_chart(format: ChartFormat, pictures: &[crate::core::chart::Picture]) {
    match format {
        ChartFormat::Svg => print!("{}", crate::core::chart::svg(pictures)),
        ChartFormat::Text => {
            let texts: Vec<String> = pictures
                .iter()
                .map(|p| crate::core::chart::text(p, crate::core::chart::TEXT_COLUMNS))
                .collect();
            print!("{}", texts.join("\n"));
        }
    }
}

/// A repository's keys as they are, for a chart: its history matched with the disk (read, never
/// written), or, with no keys there, a `setup` now; and the clock retention is judged by.
pub(super) fn charted_history(
    repo: &Repository,
    clock: &Now,
) -> (crate::core::history::History, bool, Now) {
    let judged = repo.judging_clock(clock);
    match repo.scan().map(|sc| sc.fingerprints()) {
        Ok(disk) if !disk.is_empty() => {
            let mut h = repo.history().unwrap_or_default();
            h.reconcile(&disk, &judged);
            (h, true, judged)
        }
        _ => {
            let mut h = crate::core::history::History::new();
            let none = crate::core::key::Fingerprint::NONE;
            h.record_created(1, none, judged.wall);
            h.record_created(0, none, judged.wall);
            (h, false, judged)
        }
    }
}

/// `token window 2d 2h = expiration 1h + allow_expired_window 2d + margin 1h`, as the kind has it.
pub(super) fn window_note(s: &Settings) -> String {
    let l = &s.lifetime;
    let f = duration::format;
    match s.kind {
        config::Kind::Credentials => "no token window: pre_rotate re-encrypts every credential \
             with the primary before each rotation"
            .to_string(),
        config::Kind::Receipts => format!(
            "token window {} = expiration {} + margin {}",
            f(l.retention()),
            f(l.expiration),
            f(l.margin)
        ),
        _ => format!(
            "token window {} = expiration {} + allow_expired_window {} + margin {}",
            f(l.retention()),
            f(l.expiration),
            f(l.allow_expired_window),
            f(l.margin)
        ),
    }
}
