//! `status --chart` and `plan --chart` through the real binary, on repositories made by
//! `fernetd setup` and `fernetd rotate`: the SVG read with an XML parser, the text by its rows.

mod common;
use chrono::{DateTime, Utc};
use common::*;

/// The order a key lives its phases in.
const PHASES: [&str; 5] = ["staged", "primary", "secondary", "held", "purged"];

/// One phase bar or window as the SVG draws it.
#[derive(Debug, Clone)]
struct Bar {
    class: String,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    x: f64,
    width: f64,
}

/// One key's row.
#[derive(Debug)]
struct Row {
    key: u64,
    on_disk: Option<u64>,
    fingerprint: Option<String>,
    phases: Vec<Bar>,
    window: Option<Bar>,
}

/// One chart panel: its axis (times and x), now, rotations, rows, the manual rotation.
#[derive(Debug)]
struct Chart {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    x0: f64,
    x1: f64,
    now: (DateTime<Utc>, f64),
    planned: Vec<DateTime<Utc>>,
    rows: Vec<Row>,
    /// (promotes to, [(key, action)]).
    manual: Option<(u64, Vec<(u64, String)>)>,
}

impl Chart {
    /// Where the axis puts `t`.
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let f = (t - self.from).num_milliseconds() as f64
            / (self.to - self.from).num_milliseconds() as f64;
        self.x0 + f * (self.x1 - self.x0)
    }

    fn on_disk(&self, n: u64) -> &Row {
        self.rows
            .iter()
            .find(|r| r.on_disk == Some(n))
            .unwrap_or_else(|| panic!("no row for key {n} on disk: {self:#?}"))
    }
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn class_is(n: &roxmltree::Node, class: &str) -> bool {
    n.attribute("class") == Some(class)
}

fn attr<'a>(n: &roxmltree::Node<'a, 'a>, a: &str) -> &'a str {
    n.attribute(a)
        .unwrap_or_else(|| panic!("no {a} on {:?}", n.tag_name()))
}

fn num(n: &roxmltree::Node, a: &str) -> f64 {
    attr(n, a).parse().unwrap()
}

fn bar(n: &roxmltree::Node) -> Bar {
    Bar {
        class: attr(n, "class").trim_start_matches("phase ").to_string(),
        from: time(attr(n, "data-from")),
        to: n.attribute("data-to").map(time),
        x: num(n, "x"),
        width: num(n, "width"),
    }
}

/// Every chart panel of an SVG document, read with a real XML parser.
fn charts(svg: &str) -> Vec<Chart> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| class_is(n, "chart"))
        .map(|c| {
            let axis = c.descendants().find(|n| class_is(n, "axis")).unwrap();
            let line = axis.children().find(|n| n.has_tag_name("line")).unwrap();
            let now = c.descendants().find(|n| class_is(n, "now")).unwrap();
            let rows = c
                .descendants()
                .filter(|n| class_is(n, "key"))
                .map(|k| {
                    let rects: Vec<Bar> = k
                        .children()
                        .filter(|n| n.has_tag_name("rect"))
                        .map(|n| bar(&n))
                        .collect();
                    Row {
                        key: attr(&k, "data-key").parse().unwrap(),
                        on_disk: k.attribute("data-on-disk").map(|n| n.parse().unwrap()),
                        fingerprint: k.attribute("data-fingerprint").map(String::from),
                        phases: rects
                            .iter()
                            .filter(|b| b.class != "window")
                            .cloned()
                            .collect(),
                        window: rects.iter().find(|b| b.class == "window").cloned(),
                    }
                })
                .collect();
            let manual = c.descendants().find(|n| class_is(n, "manual")).map(|m| {
                let effects = m
                    .descendants()
                    .filter(|n| class_is(n, "manual-effect"))
                    .map(|e| {
                        (
                            attr(&e, "data-key").parse().unwrap(),
                            attr(&e, "data-action").to_string(),
                        )
                    })
                    .collect();
                (attr(&m, "data-promotes-to").parse().unwrap(), effects)
            });
            Chart {
                from: time(attr(&axis, "data-from")),
                to: time(attr(&axis, "data-to")),
                x0: num(&line, "x1"),
                x1: num(&line, "x2"),
                now: (time(attr(&now, "data-at")), num(&now, "x1")),
                planned: c
                    .descendants()
                    .filter(|n| class_is(n, "rotation planned"))
                    .map(|n| time(attr(&n, "data-at")))
                    .collect(),
                rows,
                manual,
            }
        })
        .collect()
}

/// What every chart must hold: phases in order and contiguous, every bar where its time is,
/// no purge before the tokens made with the key expire, now inside the axis.
fn check_geometry(c: &Chart) {
    for r in &c.rows {
        let order: Vec<usize> = r
            .phases
            .iter()
            .map(|b| PHASES.iter().position(|p| *p == b.class).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{r:#?}");
        for w in r.phases.windows(2) {
            assert_eq!(w[0].to, Some(w[1].from), "{r:#?}");
        }
        for b in r.phases.iter().chain(&r.window) {
            assert!((b.x - c.x(b.from)).abs() <= 0.11, "{b:?} on {c:#?}");
            let end = b.to.map_or(c.x1, |t| c.x(t));
            assert!((b.x + b.width - end).abs() <= 0.21, "{b:?}");
        }
        let purge = r.phases.iter().find(|b| b.class == "purged");
        if let (Some(p), Some(w)) = (purge, &r.window) {
            assert!(p.from >= w.to.unwrap(), "purged inside the window: {r:#?}");
            assert!(p.x >= w.x + w.width - 0.11, "{r:#?}");
        }
    }
    let (now, x) = c.now;
    assert!(c.from <= now && now <= c.to);
    assert!(c.x0 < x && x < c.x1, "now at {x}, axis {}..{}", c.x0, c.x1);
    assert!((x - c.x(now)).abs() <= 0.11);
    assert!((Utc::now() - now).num_seconds().abs() < 120, "{now}");
}

/// A repository set up and rotated three times, Keystone's lifetimes: keys 0 to 4, keys 1 and
/// 2 kept by the guard beyond max_active_keys 3.
fn repository(t: &tempfile::TempDir) -> (String, String) {
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap().to_string();
    fernetd_ok(&["setup", "--key-repository", &r]);
    for _ in 0..3 {
        rotate_ok(&r, &["--max-active-keys", "3"]);
    }
    assert_eq!(numbers(&repo), vec![0, 1, 2, 3, 4]);
    let ks = t.path().join("keystone.conf");
    std::fs::write(&ks, "[fernet_tokens]\nmax_active_keys = 3\n").unwrap();
    (r, ks.to_str().unwrap().to_string())
}

/// Key number -> fingerprint, as `check --json` reports them.
fn fingerprints(r: &str) -> std::collections::BTreeMap<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(&fernetd(&["check", "--key-repository", r, "--json"]).stdout).unwrap();
    v["fingerprints"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, f)| (n.parse().unwrap(), f.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn status_chart_svg_draws_the_keys_from_their_history() {
    let t = tempfile::tempdir().unwrap();
    let (r, ks) = repository(&t);
    let out = fernetd(&[
        "status",
        "--key-repository",
        &r,
        "--keystone-config",
        &ks,
        "--chart=svg",
    ]);
    // max_active_keys 3 is unsafe for @daily: a warning, and the exit status says so.
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    for key in keys(std::path::Path::new(&r)).values() {
        assert!(
            !out.stdout.contains(key.as_str()),
            "key material in the chart"
        );
    }
    let cs = charts(&out.stdout);
    assert_eq!(cs.len(), 1);
    let c = &cs[0];
    check_geometry(c);
    assert!(c.manual.is_none(), "status draws no manual rotation");
    // The five keys on disk, with their fingerprints, then the keys planned rotations stage.
    let on_disk: Vec<u64> = c.rows.iter().filter_map(|r| r.on_disk).collect();
    assert_eq!(
        on_disk,
        [1, 2, 3, 4, 0],
        "oldest first, the staged key after the primary"
    );
    let fps = fingerprints(&r);
    for row in c.rows.iter().filter(|r| r.on_disk.is_some()) {
        let n = row.on_disk.unwrap();
        assert_eq!(row.fingerprint.as_ref(), Some(&fps[&n]), "key {n}");
    }
    assert!(c
        .rows
        .iter()
        .all(|r| r.on_disk.is_some() || r.fingerprint.is_none()));
    // Keys 1 and 2 are beyond max_active_keys now: held (started before now), until their
    // tokens expire (demoted seconds ago + 2d 2h), then purged by the first daily rotation
    // after that.
    for n in [1, 2] {
        let row = c.on_disk(n);
        let classes: Vec<&str> = row.phases.iter().map(|b| b.class.as_str()).collect();
        assert_eq!(classes.last(), Some(&"purged"), "{row:#?}");
        let held = row.phases.iter().find(|b| b.class == "held").unwrap();
        assert!(held.from <= c.now.0, "{row:#?}");
        let window = row.window.as_ref().unwrap();
        let until = window.to.unwrap();
        let lifetime = until - window.from;
        assert_eq!(lifetime, chrono::Duration::hours(50), "{row:#?}");
        let purged = row.phases.last().unwrap().from;
        assert_eq!(held.to, Some(purged));
        assert!(purged >= until && purged - until <= chrono::Duration::days(1));
        assert_eq!(purged.format("%H:%M:%S").to_string(), "00:00:00");
    }
    // Key 4 is the primary; key 0, staged now, becomes primary 5 at the next rotation, and
    // the picture follows it to its purge.
    let primary = c.on_disk(4);
    assert_eq!(primary.phases.last().unwrap().class, "purged");
    assert!(primary
        .phases
        .iter()
        .any(|b| b.class == "primary" && b.from <= c.now.0));
    let staged = c.on_disk(0);
    assert_eq!(staged.key, 5);
    let classes: Vec<&str> = staged.phases.iter().map(|b| b.class.as_str()).collect();
    assert_eq!(
        classes,
        ["staged", "primary", "secondary", "held", "purged"]
    );
    assert_eq!(staged.phases[1].from, c.planned[0]);
    // The planned rotations are the schedule's (@daily), after now.
    assert!(c.planned.len() >= 5, "{:?}", c.planned);
    assert!(c
        .planned
        .iter()
        .all(|t| *t > c.now.0 && t.format("%H:%M:%S").to_string() == "00:00:00"));
}

#[test]
fn plan_chart_svg_shows_the_manual_rotation_and_proves_the_windows() {
    let t = tempfile::tempdir().unwrap();
    let (r, _) = repository(&t);
    let out = fernetd(&[
        "plan",
        "--key-repository",
        &r,
        "--keystone-config",
        "/dev/null",
        "--max-active-keys",
        "3",
        "--chart=svg",
    ]);
    assert_eq!(
        out.code, 3,
        "unsafe N keeps its exit status: {}",
        out.stderr
    );
    let cs = charts(&out.stdout);
    let c = &cs[0];
    check_geometry(c);
    // A manual rotation now promotes key 0 to 5 and purges nothing: keys 1 to 3 would be
    // beyond max_active_keys 3 but may still decrypt tokens, so the guard holds them.
    let (to, effects) = c.manual.clone().expect("the manual rotation is drawn");
    assert_eq!(to, 5);
    assert_eq!(
        effects,
        [
            (1, "hold".to_string()),
            (2, "hold".to_string()),
            (3, "hold".to_string()),
            (0, "promote".to_string())
        ]
    );
    assert!(out.stdout.contains("class=\"manual-rotation\""));
    // Each planned rotation stages a key; the picture runs until the key staged now is purged.
    let planned_keys: Vec<u64> = c
        .rows
        .iter()
        .filter(|r| r.on_disk.is_none())
        .map(|r| r.key)
        .collect();
    assert_eq!(planned_keys.len(), c.planned.len());
    assert_eq!(&planned_keys[..3], [6, 7, 8]);
    assert_eq!(c.on_disk(0).phases.last().unwrap().class, "purged");
    assert_eq!(
        c.on_disk(0).phases.last().unwrap().from,
        *c.planned.last().unwrap()
    );
    // Every window closes before its key's purge, planned keys included (checked above);
    // with 3 keys the guard has to hold planned keys too.
    assert!(c
        .rows
        .iter()
        .filter(|r| r.on_disk.is_none())
        .any(|r| r.phases.iter().any(|b| b.class == "held")));
}

#[test]
fn plan_chart_without_a_repository_starts_from_a_setup_now() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("none");
    let out = fernetd(&[
        "plan",
        "--key-repository",
        r.to_str().unwrap(),
        "--keystone-config",
        "/dev/null",
        "--schedule",
        "6h",
        "--chart=svg",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!r.exists(), "plan --chart created the repository");
    assert!(out.stdout.contains("the picture starts from a setup now"));
    let c = &charts(&out.stdout)[0];
    check_geometry(c);
    assert!(c.manual.is_none());
    assert!(c.rows.iter().all(|r| r.on_disk.is_none()));
    // Keystone's lifetimes (2d 2h) over 6 h: N = 11, the staged key lives 11 rotations.
    assert_eq!(c.rows[0].key, 1);
    assert_eq!(c.rows[1].key, 2);
    // Key 1, primary now, lives N - 1 gaps more than the one staged now.
    let purged = c.rows[1].phases.last().unwrap();
    assert_eq!(purged.class, "purged");
    assert_eq!(c.planned.len(), 11);
    assert_eq!(
        c.planned[1] - c.planned[0],
        chrono::Duration::hours(6),
        "{:?}",
        c.planned
    );
}

/// The text between a row's first two `|`.
fn cells(line: &str) -> &str {
    line.split('|').nth(1).unwrap_or_default()
}

/// A text row's phases in the order they appear (marks removed, repeats merged).
fn glyphs(line: &str) -> String {
    let mut out = String::new();
    for c in cells(line).chars().filter(|c| ".#=!x".contains(*c)) {
        if !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

#[test]
fn chart_text_has_a_row_per_key_in_phase_order() {
    let t = tempfile::tempdir().unwrap();
    let (r, ks) = repository(&t);
    // Daily, counted from the last rotation (not @daily): the next rotation is a day away
    // whatever the time of day, so key 3's time as a secondary always spans whole columns.
    let cfg = t.path().join("fernetd.toml");
    std::fs::write(
        &cfg,
        format!("[keystone]\nconfig = \"{ks}\"\n[tokens]\nkey_repository = \"{r}\"\nschedule = \"1d\"\n"),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let status = fernetd(&["--config", c, "status", "--chart"]);
    assert_eq!(status.code, 1, "{}", status.stderr);
    let plan = fernetd(&["--config", c, "plan", "--chart=text"]);
    assert_eq!(plan.code, 3, "{}", plan.stderr);
    for (out, manual) in [(&status.stdout, false), (&plan.stdout, true)] {
        let lines: Vec<&str> = out.lines().collect();
        let row = |label: &str| {
            lines
                .iter()
                .copied()
                .find(|l| l.starts_with(&format!("{label:<12}|")))
                .unwrap_or_else(|| panic!("no row '{label}' in\n{out}"))
        };
        let width = cells(row("now")).chars().count();
        assert_eq!(width, 64);
        assert_eq!(cells(row("now")).matches('v').count(), 1);
        assert!(cells(row("rotations")).contains('^'));
        // Keys 1 to 4 on disk, key 0 (primary 5 at the next rotation), then planned keys.
        // Keys 1 and 2 were demoted milliseconds before they went beyond max_active_keys (one
        // column of 2 h): held all along; key 3 goes beyond it at the next rotation.
        assert_eq!(glyphs(row("key 1")), "!x", "{out}");
        assert_eq!(glyphs(row("key 2")), "!x", "{out}");
        assert_eq!(glyphs(row("key 3")), "=!x", "{out}");
        let order: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("key "))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>()[1])
            .take(7)
            .collect();
        assert_eq!(
            order,
            ["1", "2", "3", "4", "0\u{2192}5", "6*", "7*"],
            "{out}"
        );
        assert_eq!(glyphs(row("key 0\u{2192}5")), ".#=!x", "{out}");
        assert!(glyphs(row("key 6*")).starts_with(".#="), "{out}");
        let key_rows: Vec<&&str> = lines.iter().filter(|l| l.starts_with("key ")).collect();
        assert!(key_rows.len() >= 10, "{out}");
        for l in &key_rows {
            assert_eq!(cells(l).chars().count(), 64, "{l}");
            let g = glyphs(l);
            let order: Vec<usize> = g.chars().map(|c| ".#=!x".find(c).unwrap()).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{l}");
            // Where a key is purged, its tokens expired first (`]` left of `x`, or the same
            // column).
            let c = cells(l);
            if let (Some(end), Some(x)) = (c.find(']'), c.find('x')) {
                assert!(end < x, "{l}");
            }
        }
        assert!(out
            .contains("token window 2d 2h = expiration 1h + allow_expired_window 2d + margin 1h"));
        assert_eq!(
            lines.iter().any(|l| l.starts_with("manual      |")),
            manual,
            "{out}"
        );
        if manual {
            assert!(row("key 0\u{2192}5").ends_with("manual: promoted to primary 5"));
            assert!(row("key 1").contains("manual: held by the guard until 20"));
            assert!(out.contains("a manual rotation now ("));
        }
    }
}

#[test]
fn chart_formats_and_conflicts() {
    let t = tempfile::tempdir().unwrap();
    let (r, _) = repository(&t);
    let both = fernetd(&["status", "--key-repository", &r, "--chart", "--json"]);
    assert_eq!(both.code, 2);
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    let bad = fernetd(&["plan", "--key-repository", &r, "--chart=png"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("invalid value 'png' for '--chart"),
        "{}",
        bad.stderr
    );
    let text = fernetd(&["status", "--key-repository", &r, "--chart"]);
    assert!(text.stdout.starts_with("tokens "), "{}", text.stdout);
    let svg = fernetd(&["status", "--key-repository", &r, "--chart=svg"]);
    assert!(svg.stdout.starts_with("<?xml"), "{}", svg.stdout);
}

#[test]
fn status_chart_of_a_missing_repository_draws_no_key() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("none");
    let out = fernetd(&[
        "status",
        "--key-repository",
        r.to_str().unwrap(),
        "--keystone-config",
        "/dev/null",
        "--chart=svg",
    ]);
    assert_eq!(out.code, 2, "critical, as without --chart: {}", out.stderr);
    assert!(!r.exists());
    assert!(out.stdout.contains("no keys on disk"), "{}", out.stdout);
    assert!(
        out.stdout.contains("repository-unreadable"),
        "{}",
        out.stdout
    );
    let c = &charts(&out.stdout)[0];
    assert!(c.rows.is_empty() && c.planned.is_empty(), "{c:#?}");
}

/// No rotation can follow a primary numbered u64::MAX (`rotate` refuses it): the chart plans
/// none and draws no manual rotation.
#[test]
fn no_rotation_is_planned_after_the_last_key_number() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    std::fs::rename(repo.join("1"), repo.join("18446744073709551614")).unwrap();
    std::fs::remove_dir_all(repo.join(".fernetd")).unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    fernetd_ok(&["rotate", "--key-repository", r]);
    let out = fernetd_ok(&["plan", "--key-repository", r, "--chart"]);
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("key "))
        .collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    let rotations = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rotations"))
        .unwrap();
    assert!(
        !rotations.contains('^'),
        "a rotation planned: {}",
        out.stdout
    );
    assert!(!out.stdout.contains("manual"), "{}", out.stdout);
}
