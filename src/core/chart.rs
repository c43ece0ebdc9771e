//! Pictures of key lives: each key's phases (staged, primary, secondary, held by the retention
//! guard, purged) on a time axis, against the window in which tokens made with it are still
//! live, with "now", the rotations, and what a manual rotation now would do. Rendered as SVG
//! (for a browser or a report) and as plain text (for a terminal).
//!
//! Invariant: pure. It draws the [`Picture`] it is given (the `timeline` module projects one
//! from a repository's history and schedule); it reads no clock, file or key, decides nothing
//! about keys, and shows key numbers and fingerprints only, never key material.

use crate::core::key::Fingerprint;
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt::Write as _;

/// One phase of a key's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Key 0: on disk, encrypts nothing yet.
    Staged,
    /// The highest number: every new token is made with it.
    Primary,
    /// Decrypts tokens made while it was primary; within max_active_keys.
    Secondary,
    /// Beyond max_active_keys: Keystone's count rule would have purged it, the retention guard
    /// keeps it because tokens made with it may still be live.
    Held,
    /// Gone from disk.
    Purged,
}

impl Phase {
    /// As the SVG's classes and the text's details spell it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Staged => "staged",
            Phase::Primary => "primary",
            Phase::Secondary => "secondary",
            Phase::Held => "held",
            Phase::Purged => "purged",
        }
    }

    /// Its character in the text rendering.
    pub fn glyph(self) -> char {
        match self {
            Phase::Staged => '.',
            Phase::Primary => '#',
            Phase::Secondary => '=',
            Phase::Held => '!',
            Phase::Purged => 'x',
        }
    }
}

/// A phase from `from` until `to` (`None`: still so where the picture ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub phase: Phase,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

/// How long tokens made with a key stay live: from its demotion (the last token made with it)
/// until `expiration + allow_expired_window (+ margin)` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// One key, from its staging to its purge as far as the picture reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// Its number as a primary (0 while it is never promoted within the picture).
    pub number: u64,
    /// Its number on disk now; `None` for a key a planned rotation will stage.
    pub on_disk: Option<u64>,
    /// On-disk keys only: the truncated SHA-256 of the key, never the key.
    pub fingerprint: Option<Fingerprint>,
    /// Phases in order, each starting where the one before ends.
    pub spans: Vec<Span>,
    /// Once demoted (or planned to be): the window of its tokens.
    pub window: Option<Window>,
}

/// A rotation on the axis: one that happened (a key's promotion) or one the schedule plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub at: DateTime<Utc>,
    pub planned: bool,
}

/// What `fernetd rotate` run now would do, as the rotation decision says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manual {
    pub at: DateTime<Utc>,
    /// The number key 0 would be promoted to.
    pub promotes_to: u64,
    /// Keys it would purge.
    pub purges: Vec<u64>,
    /// Keys beyond max_active_keys the guard would keep, and until when.
    pub holds: Vec<(u64, DateTime<Utc>)>,
}

/// Everything one chart shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// First line: what is drawn (`tokens /etc/keystone/fernet-keys: OK`).
    pub title: String,
    /// Lines under it: schedule, max_active_keys, the token window's parts.
    pub notes: Vec<String>,
    pub now: DateTime<Utc>,
    pub lives: Vec<Life>,
    pub rotations: Vec<Rotation>,
    pub manual: Option<Manual>,
}

/// The time axis of a picture: every time it shows, padded a little on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axis {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The shortest axis drawn (a picture of one instant still has a width).
const MIN_SPAN_SECONDS: i64 = 60;

impl Axis {
    /// The axis that shows every time of `p`, with 2% to spare on each side.
    pub fn of(p: &Picture) -> Axis {
        let mut times = vec![p.now];
        for l in &p.lives {
            for s in &l.spans {
                times.push(s.from);
                times.extend(s.to);
            }
            if let Some(w) = l.window {
                times.push(w.from);
                times.push(w.until);
            }
        }
        times.extend(p.rotations.iter().map(|r| r.at));
        if let Some(m) = &p.manual {
            times.push(m.at);
            times.extend(m.holds.iter().map(|h| h.1));
        }
        let lo = times.iter().min().copied().unwrap_or(p.now);
        let hi = times.iter().max().copied().unwrap_or(p.now);
        let span = (hi - lo).num_seconds().max(MIN_SPAN_SECONDS);
        let pad = chrono::Duration::seconds((span / 50).max(1));
        let hi = lo
            .checked_add_signed(chrono::Duration::seconds(span))
            .unwrap_or(hi);
        Axis {
            from: lo.checked_sub_signed(pad).unwrap_or(lo),
            to: hi.checked_add_signed(pad).unwrap_or(hi),
        }
    }

    /// Where `t` lies on the axis: 0 at its start, 1 at its end (clamped).
    pub fn fraction(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.to - self.from).num_milliseconds().max(1) as f64;
        let at = (t - self.from).num_milliseconds() as f64;
        (at / total).clamp(0.0, 1.0)
    }

    /// The text column of `t` among `columns`.
    pub fn column(&self, t: DateTime<Utc>, columns: usize) -> usize {
        let c = (self.fraction(t) * columns as f64).floor() as usize;
        c.min(columns.saturating_sub(1))
    }
}

/// `2026-12-06T20:00:00Z`: every time a chart prints.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Life {
    /// `key 3`, `key 0→5` (staged now, primary 5 at the next rotation), `key 7*` (a key a
    /// planned rotation stages).
    pub fn label(&self) -> String {
        match self.on_disk {
            None => format!("key {}*", self.number),
            Some(n) if n == self.number => format!("key {n}"),
            Some(n) => format!("key {n}\u{2192}{}", self.number),
        }
    }

    /// When it is (or is planned to be) purged.
    pub fn purged(&self) -> Option<DateTime<Utc>> {
        self.spans
            .iter()
            .find(|s| s.phase == Phase::Purged)
            .map(|s| s.from)
    }
}

impl Manual {
    /// What it does to the key numbered `n` on disk now, in words.
    fn effect(&self, n: u64) -> Option<String> {
        if n == 0 {
            return Some(format!("promoted to primary {}", self.promotes_to));
        }
        if self.purges.contains(&n) {
            return Some("purged".into());
        }
        self.holds
            .iter()
            .find(|h| h.0 == n)
            .map(|h| format!("held by the guard until {}", rfc3339(h.1)))
    }

    /// In words: `a manual rotation now (…) would promote key 0 to primary 5, purge key 1`,
    /// then, when the guard keeps keys, `the retention guard would keep key 2 until …`.
    pub fn lines(&self) -> Vec<String> {
        let purge = if self.purges.is_empty() {
            "purge nothing".to_string()
        } else {
            let keys: Vec<String> = self.purges.iter().map(|n| format!("key {n}")).collect();
            format!("purge {}", keys.join(", "))
        };
        let mut lines = vec![format!(
            "a manual rotation now ({}) would promote key 0 to primary {}, {purge}",
            rfc3339(self.at),
            self.promotes_to
        )];
        if !self.holds.is_empty() {
            // Keys demoted together are kept until the same moment: said once.
            let mut by_until: std::collections::BTreeMap<String, Vec<String>> =
                std::collections::BTreeMap::new();
            for (n, u) in &self.holds {
                by_until.entry(rfc3339(*u)).or_default().push(n.to_string());
            }
            let held: Vec<String> = by_until
                .iter()
                .map(|(u, ns)| {
                    let s = if ns.len() == 1 { "" } else { "s" };
                    format!("key{s} {} until {u}", ns.join(", "))
                })
                .collect();
            lines.push(format!(
                "the retention guard would keep {} (beyond max_active_keys)",
                held.join(", ")
            ));
        }
        lines
    }

    /// [`Manual::lines`] as one line.
    pub fn describe(&self) -> String {
        self.lines().join("; ")
    }
}

/// Columns of the text rendering's time axis.
pub const TEXT_COLUMNS: usize = 64;
/// Width of the text rendering's key labels.
const LABEL: usize = 12;

/// The plain-text rendering: a header, one row per key over `columns` columns (one character
/// per slice of time), a legend, then each key's phases with their times in UTC RFC 3339.
/// Times after now are planned and end with `*`.
pub fn text(p: &Picture, columns: usize) -> String {
    let columns = columns.max(8);
    let axis = Axis::of(p);
    let mut out = String::new();
    let _ = writeln!(out, "{}", p.title);
    for n in &p.notes {
        let _ = writeln!(out, "  {n}");
    }
    let column = ((axis.to - axis.from) / i32::try_from(columns).unwrap_or(i32::MAX))
        .to_std()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  axis {} .. {}, one column {}",
        rfc3339(axis.from),
        rfc3339(axis.to),
        match column.as_secs() {
            0 => "under 1s".to_string(),
            _ => crate::core::duration::format(column),
        }
    );
    let blank = || vec![' '; columns];
    let row = |label: &str, cells: &[char], note: &str| {
        let cells: String = cells.iter().collect();
        let line = format!("{label:<LABEL$}|{cells}|{note}");
        format!("{}\n", line.trim_end())
    };
    let mut marks = blank();
    marks[axis.column(p.now, columns)] = 'v';
    out.push_str(&row("now", &marks, ""));
    let mut rot = blank();
    for r in &p.rotations {
        rot[axis.column(r.at, columns)] = if r.planned { '^' } else { '\'' };
    }
    out.push_str(&row("rotations", &rot, ""));
    for l in &p.lives {
        let cells = cells(l, &axis, columns);
        let note = match (&p.manual, l.on_disk) {
            (Some(m), Some(n)) => m
                .effect(n)
                .map(|e| format!(" manual: {e}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push_str(&row(&l.label(), &cells, &note));
    }
    if let Some(m) = &p.manual {
        let mut cells = blank();
        cells[axis.column(m.at, columns)] = 'M';
        out.push_str(&row("manual", &cells, ""));
    }
    let _ = writeln!(
        out,
        "  {} staged  {} primary  {} secondary  {} held by the retention guard  {} purged",
        Phase::Staged.glyph(),
        Phase::Primary.glyph(),
        Phase::Secondary.glyph(),
        Phase::Held.glyph(),
        Phase::Purged.glyph(),
    );
    let _ = writeln!(
        out,
        "  ] tokens made with it expire  v now  ' rotation  ^ planned rotation{}",
        if p.manual.is_some() {
            "  M manual rotation now"
        } else {
            ""
        }
    );
    let when = |t: DateTime<Utc>| {
        if t > p.now {
            format!("{}*", rfc3339(t))
        } else {
            rfc3339(t)
        }
    };
    for l in &p.lives {
        let mut parts: Vec<String> = l
            .spans
            .iter()
            .map(|s| format!("{} {}", s.phase.name(), when(s.from)))
            .collect();
        if let Some(w) = l.window {
            parts.push(format!("tokens live until {}", when(w.until)));
        }
        let fp = l.fingerprint.map(|f| format!(" ({f})")).unwrap_or_default();
        let _ = writeln!(out, "  {}{fp}: {}", l.label(), parts.join(", "));
    }
    if let Some(m) = &p.manual {
        let _ = writeln!(out, "  {}", m.describe());
    }
    let _ = writeln!(out, "  * planned (after now, {})", rfc3339(p.now));
    out
}

/// A key's row: each phase's glyph over its columns (a later phase wins a shared column), the
/// purge as one `x`, and `]` where its tokens expire.
fn cells(l: &Life, axis: &Axis, columns: usize) -> Vec<char> {
    let mut cells = vec![' '; columns];
    for s in &l.spans {
        let a = axis.column(s.from, columns);
        if s.phase == Phase::Purged {
            cells[a] = Phase::Purged.glyph();
            continue;
        }
        let b = s.to.map_or(columns, |t| axis.column(t, columns));
        for c in cells.iter_mut().take(b.max(a + 1)).skip(a) {
            *c = s.phase.glyph();
        }
    }
    if let Some(w) = l.window {
        let c = axis.column(w.until, columns);
        if cells[c] != Phase::Purged.glyph() {
            cells[c] = ']';
        }
    }
    cells
}

// SVG geometry, in user units.
const WIDTH: f64 = 1000.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 40.0;
const ROW: f64 = 26.0;
const BAR: f64 = 12.0;
const LANE: f64 = 4.0;
const LINE: f64 = 16.0;
const TICKS: usize = 4;

/// Where an SVG panel's time axis lies: `x` of the axis's start and end.
fn x_of(axis: &Axis, t: DateTime<Utc>) -> f64 {
    round(LEFT + axis.fraction(t) * (WIDTH - LEFT - RIGHT))
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The SVG rendering: one panel per picture, stacked. Every element a reader may check carries
/// its times as `data-` attributes in UTC RFC 3339 and a `<title>` saying them in words.
pub fn svg(pictures: &[Picture]) -> String {
    let mut body = String::new();
    let mut y = 0.0;
    for p in pictures {
        let (panel, height) = panel(p);
        let _ = writeln!(
            body,
            "<g class=\"chart\" transform=\"translate(0,{y})\">\n{panel}</g>"
        );
        y += height;
    }
    let height = y.max(ROW);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <style>\n{STYLE}</style>\n\
         <rect class=\"background\" x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\"/>\n\
         {body}</svg>\n"
    )
}

const STYLE: &str = "\
.background { fill: #fff; }
.title { font-size: 14px; font-weight: bold; }
.note, .tick, .legend { fill: #333; }
.axis line { stroke: #333; }
.phase { stroke: #fff; stroke-width: 0.5; }
.phase.staged { fill: #c8c8c8; }
.phase.primary { fill: #2e8b57; }
.phase.secondary { fill: #4a7fc1; }
.phase.held { fill: #e69500; }
.phase.purged { fill: #f1f1f1; stroke: #bbb; stroke-dasharray: 2 2; }
.window { fill: #c0392b; opacity: 0.7; }
.rotation { stroke: #999; stroke-width: 0.7; }
.rotation.planned { stroke-dasharray: 4 3; }
.future { fill: #fff; opacity: 0.35; }
.now { stroke: #d00; stroke-width: 1.5; }
.manual-rotation { stroke: #8e44ad; stroke-width: 2; stroke-dasharray: 6 3; }
.now-label { fill: #d00; font-weight: bold; }
.manual-label { fill: #8e44ad; font-weight: bold; }
.manual-effect { fill: #8e44ad; font-weight: bold; stroke: #fff; stroke-width: 3px; paint-order: stroke; }
";

/// One picture's panel and its height.
fn panel(p: &Picture) -> (String, f64) {
    let axis = Axis::of(p);
    let mut s = String::new();
    let mut y = 20.0;
    let _ = writeln!(
        s,
        "<text class=\"title\" x=\"10\" y=\"{y}\">{}</text>",
        esc(&p.title)
    );
    for n in &p.notes {
        y += LINE;
        let _ = writeln!(
            s,
            "<text class=\"note\" x=\"10\" y=\"{y}\">{}</text>",
            esc(n)
        );
    }
    for line in p.manual.iter().flat_map(Manual::lines) {
        y += LINE;
        let _ = writeln!(
            s,
            "<text class=\"manual-label\" x=\"10\" y=\"{y}\">{}</text>",
            esc(&line)
        );
    }
    // The axis: a line with tick labels above it.
    y += 2.0 * LINE;
    let axis_y = y;
    let (x0, x1) = (x_of(&axis, axis.from), x_of(&axis, axis.to));
    let _ = writeln!(
        s,
        "<g class=\"axis\" data-from=\"{}\" data-to=\"{}\">\n<line x1=\"{x0}\" y1=\"{axis_y}\" \
         x2=\"{x1}\" y2=\"{axis_y}\"/>",
        rfc3339(axis.from),
        rfc3339(axis.to)
    );
    for i in 0..=TICKS {
        let step = (axis.to - axis.from) * i32::try_from(i).unwrap_or(0) / TICKS as i32;
        let t = axis.from.checked_add_signed(step).unwrap_or(axis.to);
        let x = x_of(&axis, t);
        let anchor = match i {
            0 => "start",
            i if i == TICKS => "end",
            _ => "middle",
        };
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{axis_y}\"/><text class=\"tick\" \
             x=\"{x}\" y=\"{}\" text-anchor=\"{anchor}\" data-at=\"{t}\">{t}</text>",
            axis_y - 4.0,
            axis_y - 6.0,
            t = rfc3339(t)
        );
    }
    s.push_str("</g>\n");
    let rows_top = axis_y + 8.0;
    let rows_bottom = rows_top + ROW * p.lives.len() as f64;
    for r in &p.rotations {
        let x = x_of(&axis, r.at);
        let class = if r.planned { "planned" } else { "past" };
        let _ = writeln!(
            s,
            "<line class=\"rotation {class}\" data-at=\"{at}\" x1=\"{x}\" y1=\"{axis_y}\" \
             x2=\"{x}\" y2=\"{rows_bottom}\"><title>{class} rotation {at}</title></line>",
            at = rfc3339(r.at)
        );
    }
    for (i, l) in p.lives.iter().enumerate() {
        let top = rows_top + ROW * i as f64 + 3.0;
        s.push_str(&life(l, &axis, top));
    }
    // What lies after now is planned: toned down.
    let xn = x_of(&axis, p.now);
    let _ = writeln!(
        s,
        "<rect class=\"future\" x=\"{xn}\" y=\"{rows_top}\" width=\"{}\" height=\"{}\"/>",
        round(x1 - xn),
        rows_bottom - rows_top
    );
    let _ = writeln!(
        s,
        "<line class=\"now\" data-at=\"{at}\" x1=\"{xn}\" y1=\"{}\" x2=\"{xn}\" \
         y2=\"{}\"><title>now {at}</title></line>\n<text class=\"now-label\" x=\"{xn}\" \
         y=\"{}\" text-anchor=\"middle\">now</text>",
        axis_y,
        rows_bottom + 4.0,
        rows_bottom + LINE,
        at = rfc3339(p.now)
    );
    if let Some(m) = &p.manual {
        s.push_str(&manual(m, p, &axis, axis_y, rows_top, rows_bottom));
    }
    let legend_y = rows_bottom + 2.0 * LINE + 8.0;
    let mut x = LEFT;
    s.push_str("<g class=\"legend\">\n");
    for phase in [
        Phase::Staged,
        Phase::Primary,
        Phase::Secondary,
        Phase::Held,
        Phase::Purged,
    ] {
        let _ = writeln!(
            s,
            "<rect class=\"phase {n}\" x=\"{x}\" y=\"{}\" width=\"14\" height=\"{BAR}\"/>\
             <text x=\"{}\" y=\"{legend_y}\">{n}</text>",
            legend_y - 10.0,
            x + 18.0,
            n = phase.name()
        );
        x += 95.0;
    }
    let _ = writeln!(
        s,
        "<rect class=\"window\" x=\"{x}\" y=\"{}\" width=\"14\" height=\"{LANE}\"/><text \
         x=\"{}\" y=\"{legend_y}\">tokens live after demotion</text>",
        legend_y - 6.0,
        x + 18.0
    );
    if p.manual.is_some() {
        let x = x + 180.0;
        let _ = writeln!(
            s,
            "<line class=\"manual-rotation\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/><text \
             x=\"{}\" y=\"{legend_y}\">manual rotation now</text>",
            legend_y - 12.0,
            legend_y + 2.0,
            x + 6.0
        );
    }
    s.push_str("</g>\n");
    (s, legend_y + 2.0 * LINE)
}

/// A key's row: its label, a bar of phases, the lane of its tokens' window under it.
fn life(l: &Life, axis: &Axis, top: f64) -> String {
    let mut s = String::new();
    let disk = l
        .on_disk
        .map(|n| format!(" data-on-disk=\"{n}\""))
        .unwrap_or_default();
    let fp = l
        .fingerprint
        .map(|f| format!(" data-fingerprint=\"{f}\""))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "<g class=\"key\" data-key=\"{}\"{disk}{fp}>\n<text class=\"label\" x=\"{}\" y=\"{}\" \
         text-anchor=\"end\">{}</text>",
        l.number,
        LEFT - 8.0,
        top + BAR - 2.0,
        esc(&l.label())
    );
    for sp in &l.spans {
        let x = x_of(axis, sp.from);
        let end = sp.to.map_or(x_of(axis, axis.to), |t| x_of(axis, t));
        let to = sp
            .to
            .map(|t| format!(" data-to=\"{}\"", rfc3339(t)))
            .unwrap_or_default();
        let until = sp
            .to
            .map(|t| format!(" until {}", rfc3339(t)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "<rect class=\"phase {n}\" data-from=\"{from}\"{to} x=\"{x}\" y=\"{top}\" \
             width=\"{w}\" height=\"{BAR}\"><title>{label}: {n} from {from}{until}</title></rect>",
            n = sp.phase.name(),
            from = rfc3339(sp.from),
            w = round((end - x).max(0.0)),
            label = esc(&l.label())
        );
    }
    if let Some(w) = l.window {
        let x = x_of(axis, w.from);
        let _ = writeln!(
            s,
            "<rect class=\"window\" data-from=\"{from}\" data-to=\"{to}\" x=\"{x}\" y=\"{}\" \
             width=\"{}\" height=\"{LANE}\"><title>{}: tokens made with it live until {to}\
             </title></rect>",
            top + BAR + 2.0,
            round((x_of(axis, w.until) - x).max(0.0)),
            esc(&l.label()),
            from = rfc3339(w.from),
            to = rfc3339(w.until)
        );
    }
    s.push_str("</g>\n");
    s
}

/// The manual rotation: its own line at its moment, and what it does on each key's row.
fn manual(
    m: &Manual,
    p: &Picture,
    axis: &Axis,
    axis_y: f64,
    rows_top: f64,
    rows_bottom: f64,
) -> String {
    let x = x_of(axis, m.at);
    let mut s = format!(
        "<g class=\"manual\" data-at=\"{at}\" data-promotes-to=\"{}\">\n<line \
         class=\"manual-rotation\" x1=\"{x}\" y1=\"{axis_y}\" x2=\"{x}\" y2=\"{rows_bottom}\">\
         <title>{}</title></line>\n",
        m.promotes_to,
        esc(&m.describe()),
        at = rfc3339(m.at)
    );
    for (i, l) in p.lives.iter().enumerate() {
        let Some(n) = l.on_disk else { continue };
        let Some(effect) = m.effect(n) else { continue };
        let (action, short) = if n == 0 {
            ("promote", format!("\u{2192} {}", m.promotes_to))
        } else if m.purges.contains(&n) {
            ("purge", "\u{2715} purged".to_string())
        } else {
            ("hold", "held".to_string())
        };
        let _ = writeln!(
            s,
            "<text class=\"manual-effect\" data-key=\"{n}\" data-action=\"{action}\" x=\"{}\" \
             y=\"{}\">{short}<title>manual rotation: {}</title></text>",
            x + 4.0,
            rows_top + ROW * i as f64 + 3.0 + BAR - 2.0,
            esc(&effect)
        );
    }
    s.push_str("</g>\n");
    s
}

/// `text` as XML character data or an attribute value: markup escaped, and characters XML 1.0
/// cannot hold at all (most control characters, in a path) replaced by U+FFFD.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    fn sp(phase: Phase, from: i64, to: Option<i64>) -> Span {
        Span {
            phase,
            from: t(from),
            to: to.map(t),
        }
    }

    /// Times from t(0) to t(100): the axis runs from t(-2) to t(102) (2% of 100 h padded), so
    /// 52 text columns are 2 h each and t(h) is column (h + 2) / 2.
    fn picture(title: &str) -> Picture {
        Picture {
            title: title.into(),
            notes: vec!["schedule 'every 10h'".into()],
            now: t(30),
            lives: vec![
                Life {
                    number: 5,
                    on_disk: Some(5),
                    fingerprint: Some("0123456789abcdef".parse().unwrap()),
                    spans: vec![
                        sp(Phase::Staged, 0, Some(10)),
                        sp(Phase::Primary, 10, Some(20)),
                        sp(Phase::Secondary, 20, Some(60)),
                        sp(Phase::Purged, 60, None),
                    ],
                    window: Some(Window {
                        from: t(20),
                        until: t(52),
                    }),
                },
                Life {
                    number: 6,
                    on_disk: Some(0),
                    fingerprint: None,
                    spans: vec![
                        sp(Phase::Staged, 20, Some(40)),
                        sp(Phase::Primary, 40, None),
                    ],
                    window: None,
                },
                Life {
                    number: 7,
                    on_disk: None,
                    fingerprint: None,
                    spans: vec![
                        sp(Phase::Staged, 60, Some(80)),
                        sp(Phase::Primary, 80, Some(90)),
                        sp(Phase::Held, 90, Some(100)),
                        sp(Phase::Purged, 100, None),
                    ],
                    window: Some(Window {
                        from: t(90),
                        until: t(95),
                    }),
                },
            ],
            rotations: vec![
                Rotation {
                    at: t(10),
                    planned: false,
                },
                Rotation {
                    at: t(60),
                    planned: true,
                },
            ],
            manual: Some(Manual {
                at: t(30),
                promotes_to: 6,
                purges: vec![],
                holds: vec![(5, t(52))],
            }),
        }
    }

    #[test]
    fn the_axis_covers_every_time_with_two_percent_to_spare() {
        let a = Axis::of(&picture("x"));
        assert_eq!((a.from, a.to), (t(-2), t(102)));
        assert_eq!(a.fraction(t(-2)), 0.0);
        assert_eq!(a.fraction(t(102)), 1.0);
        assert_eq!(a.fraction(t(50)), 0.5);
        assert_eq!(a.fraction(t(500)), 1.0, "clamped");
        assert_eq!(a.column(t(0), 52), 1);
        assert_eq!(a.column(t(10), 52), 6);
        assert_eq!(a.column(t(102), 52), 51, "the end is the last column");
        // One instant still gets a minute of axis.
        let mut p = picture("x");
        p.lives.clear();
        p.rotations.clear();
        p.manual = None;
        let a = Axis::of(&p);
        assert_eq!((a.to - a.from).num_seconds(), 62);
    }

    #[test]
    fn text_rows_put_each_phase_in_its_columns() {
        let out = text(&picture("tokens /k: OK"), 52);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "tokens /k: OK");
        assert_eq!(lines[1], "  schedule 'every 10h'");
        assert_eq!(
            lines[2],
            "  axis 2026-01-01T00:00:00Z .. 2026-01-05T06:00:00Z, one column 2h"
                .replace("2026-01-01T00:00:00Z", "2025-12-31T22:00:00Z")
        );
        let row = |label: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{label:<12}|")))
                .unwrap_or_else(|| panic!("no row {label}: {out}"))
                .to_string()
        };
        let cells = |label: &str| row(label).split('|').nth(1).unwrap_or_default().to_string();
        // now (t(30)) in column 16.
        assert_eq!(
            cells("now"),
            format!("{}v{}", " ".repeat(16), " ".repeat(35))
        );
        // Rotation at t(10) (column 6, past) and t(60) (column 31, planned).
        assert_eq!(
            cells("rotations"),
            format!("{}'{}^{}", " ".repeat(6), " ".repeat(24), " ".repeat(20))
        );
        // key 5: staged columns 1-5, primary 6-10, secondary 11-30 with its tokens expiring
        // in column 27, purged in column 31.
        assert_eq!(
            cells("key 5"),
            format!(" .....#####{}]===x{}", "=".repeat(16), " ".repeat(20))
        );
        assert!(row("key 5").ends_with("| manual: held by the guard until 2026-01-03T04:00:00Z"));
        assert_eq!(
            cells("key 0\u{2192}6"),
            format!("{}{}{}", " ".repeat(11), ".".repeat(10), "#".repeat(31))
        );
        assert!(row("key 0\u{2192}6").ends_with("| manual: promoted to primary 6"));
        // key 7 (planned): staged 31-40, primary 41-45, held 46-50 (tokens expire at 48),
        // purged 51.
        assert_eq!(
            cells("key 7*"),
            format!("{}{}#####!!]!!x", " ".repeat(31), ".".repeat(10))
        );
        assert_eq!(
            cells("manual"),
            format!("{}M{}", " ".repeat(16), " ".repeat(35))
        );
        assert!(out.contains(
            "  key 5 (0123456789abcdef): staged 2026-01-01T00:00:00Z, primary \
             2026-01-01T10:00:00Z, secondary 2026-01-01T20:00:00Z, purged 2026-01-03T12:00:00Z*, \
             tokens live until 2026-01-03T04:00:00Z*\n"
        ));
        assert!(out.contains(
            "a manual rotation now (2026-01-02T06:00:00Z) would promote key 0 to primary 6, \
             purge nothing; the retention guard would keep key 5 until 2026-01-03T04:00:00Z"
        ));
    }

    fn attr<'a>(n: &roxmltree::Node<'a, 'a>, name: &str) -> &'a str {
        n.attribute(name)
            .unwrap_or_else(|| panic!("{name} missing on {n:?}"))
    }

    fn num(n: &roxmltree::Node, name: &str) -> f64 {
        attr(n, name).parse().unwrap()
    }

    #[test]
    fn svg_places_bars_by_their_times() {
        let svg = svg(&[picture("a"), picture("b")]);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let charts: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("chart"))
            .collect();
        assert_eq!(charts.len(), 2);
        assert_eq!(attr(&charts[1], "transform"), "translate(0,258)");
        let keys: Vec<_> = charts[0]
            .descendants()
            .filter(|n| n.attribute("class") == Some("key"))
            .collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(attr(&keys[0], "data-key"), "5");
        assert_eq!(attr(&keys[0], "data-fingerprint"), "0123456789abcdef");
        assert_eq!(keys[2].attribute("data-on-disk"), None);
        let rects: Vec<_> = keys[0]
            .children()
            .filter(|n| n.has_tag_name("rect"))
            .collect();
        let classes: Vec<&str> = rects.iter().map(|r| attr(r, "class")).collect();
        assert_eq!(
            classes,
            [
                "phase staged",
                "phase primary",
                "phase secondary",
                "phase purged",
                "window"
            ]
        );
        // x = 120 + (h + 2) / 104 * 840, to a tenth.
        let xs: Vec<(f64, f64)> = rects
            .iter()
            .map(|r| (num(r, "x"), num(r, "width")))
            .collect();
        assert_eq!(
            xs,
            [
                (136.2, 80.7),
                (216.9, 80.8),
                (297.7, 323.1),
                (620.8, 339.2),
                (297.7, 258.5)
            ]
        );
        assert_eq!(attr(&rects[1], "data-from"), "2026-01-01T10:00:00Z");
        assert_eq!(attr(&rects[1], "data-to"), "2026-01-01T20:00:00Z");
        let now = charts[0]
            .descendants()
            .find(|n| n.attribute("class") == Some("now"))
            .unwrap();
        assert_eq!(
            (num(&now, "x1"), attr(&now, "data-at")),
            (378.5, "2026-01-02T06:00:00Z")
        );
        let manual = charts[0]
            .descendants()
            .find(|n| n.attribute("class") == Some("manual"))
            .unwrap();
        let effects: Vec<(&str, &str)> = manual
            .descendants()
            .filter(|n| n.attribute("class") == Some("manual-effect"))
            .map(|n| (attr(&n, "data-key"), attr(&n, "data-action")))
            .collect();
        assert_eq!(effects, [("5", "hold"), ("0", "promote")]);
        let planned = charts[0]
            .descendants()
            .filter(|n| n.attribute("class") == Some("rotation planned"))
            .count();
        assert_eq!(planned, 1);
    }

    #[test]
    fn the_manual_rotation_says_keys_kept_until_the_same_second_once() {
        let m = Manual {
            at: t(1),
            promotes_to: 4,
            purges: vec![1],
            holds: vec![
                (2, t(5)),
                (3, t(5) + chrono::Duration::milliseconds(40)),
                (4, t(9)),
            ],
        };
        assert_eq!(
            m.lines(),
            [
                "a manual rotation now (2026-01-01T01:00:00Z) would promote key 0 to primary 4, \
                 purge key 1",
                "the retention guard would keep keys 2, 3 until 2026-01-01T05:00:00Z, key 4 until \
                 2026-01-01T09:00:00Z (beyond max_active_keys)"
            ]
        );
    }

    #[test]
    fn text_in_svg_is_escaped_and_stays_xml() {
        assert_eq!(
            esc("<a & \"b\" 'c'>\u{1}\u{7f}"),
            "&lt;a &amp; &quot;b&quot; &apos;c&apos;&gt;\u{FFFD}\u{7f}"
        );
        let svg = svg(&[picture("tokens /srv/<keys> & \"x\"\u{1b}[31m")]);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let title = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("title"))
            .unwrap();
        assert_eq!(title.text(), Some("tokens /srv/<keys> & \"x\"\u{FFFD}[31m"));
    }
}
