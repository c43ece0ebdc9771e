//! Wording shared by several commands: lines on stderr, times, a repository's outcome.

use chrono::{DateTime, SecondsFormat, Utc};

/// How bad a line on stderr is.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Warning,
}

/// A one-shot command's line on stderr; under journald (`JOURNAL_STREAM`, the timer's service)
/// it carries its syslog priority (sd-daemon(3)), as the daemon's log lines do.
pub fn say(severity: Severity, line: &str) {
    let priority = match (std::env::var_os("JOURNAL_STREAM").is_some(), severity) {
        (false, _) => "",
        (true, Severity::Error) => "<3>",
        (true, Severity::Warning) => "<4>",
    };
    eprintln!("{priority}{line}");
}

/// A time as every command shows it: RFC 3339, whole seconds, `Z`.
pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `keys: 0 1 2 (primary 2, staged 0)`: the keys a repository or key set holds after a change.
pub(super) fn print_keys(keys: impl IntoIterator<Item = u64>, primary: Option<u64>) {
    let keys: Vec<String> = keys.into_iter().map(|n| n.to_string()).collect();
    println!(
        "keys: {} (primary {}, staged 0)",
        keys.join(" "),
        primary.map_or("none".into(), |p| p.to_string())
    );
}

/// What `setup`, `rotate` and `sync` did to a repository: warnings, notes, its keys, and each
/// key lost inside its retention (an error line each).
pub(super) fn print_outcome(out: &crate::repository::Outcome) {
    for w in &out.warnings {
        say(Severity::Warning, &format!("warning: {w}"));
    }
    for n in &out.notes {
        println!("{n}");
    }
    print_keys(out.keys.iter().copied(), out.primary);
    for v in &out.lost {
        say(
            Severity::Error,
            &format!("error: {v} [key-lost-in-retention]"),
        );
    }
}
