//! The Prometheus alerts and the Grafana dashboard the packages ship
//! (packaging/prometheus/fernetd-alerts.yml, packaging/grafana/fernetd-dashboard.json) and
//! their runbooks (docs/runbooks.md):
//!
//! - `promtool check rules` and `promtool test rules` on the unit tests beside the rules;
//! - every alert has a severity, a summary naming where, and a runbook section; every problem
//!   code has exactly one runbook section, which its alert's matchers and the README agree on;
//! - real daemons (standalone, and cluster mode against a real etcd) are put in the situations
//!   the alerts are for, scraped, and the scraped samples run through `promtool test rules`:
//!   exactly the expected alerts fire, and none on a healthy daemon;
//! - every metric the rules and the dashboard name appears in those scrapes, and every
//!   dashboard query returns data on them.
//!
//! promtool is Debian's `prometheus` package (scripts/deps installs it); without it these
//! tests fail, saying so.

mod common;
use common::etcd::Etcd;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RULES: &str = "packaging/prometheus/fernetd-alerts.yml";
const RULE_TESTS: &str = "packaging/prometheus/fernetd-alerts.test.yml";
const DASHBOARD: &str = "packaging/grafana/fernetd-dashboard.json";
const RUNBOOKS: &str = "docs/runbooks.md";
/// Where the packages install the runbooks: every runbook_url starts so.
const RUNBOOK_URL: &str = "file:///usr/share/doc/fernetd/runbooks.md#";
/// How long the scraped samples are held in promtool, and when the alerts are judged: past
/// every alert's `for`.
const HOLD_MINUTES: u32 = 45;
const EVAL_MINUTES: u32 = 40;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `promtool ARGS` in `dir`: (success, stdout + stderr). Fails the test when promtool is missing.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required to check the alerts (Debian's prometheus package: \
                 apt-get install prometheus; scripts/deps installs it): {e}"
            )
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn alerts() -> Vec<Alert> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(RULES)).unwrap();
    let map = |v: &serde_yaml::Value| -> BTreeMap<String, String> {
        v.as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(Alert {
                name: r["alert"]
                    .as_str()
                    .expect("alerting rules only")
                    .to_string(),
                expr: r["expr"].as_str().unwrap().to_string(),
                labels: map(&r["labels"]),
                annotations: map(&r["annotations"]),
            });
        }
    }
    out
}

fn alert_names() -> BTreeSet<String> {
    alerts().into_iter().map(|a| a.name).collect()
}

/// Every expression of the dashboard: its panels' targets and its variables' queries.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            out.push(v["query"]["query"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The metric names a PromQL expression (or a Grafana `label_values(METRIC..., LABEL)`
/// query) reads: identifiers outside label matchers, ranges, strings and grouping clauses,
/// that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut expr = expr.to_string();
    if let Some(inner) = expr
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        // Its last argument is a label name.
        expr = inner.rsplit_once(',').map_or(inner, |(m, _)| m).to_string();
    }
    // Drop strings, {...}, [...].
    let mut plain = String::new();
    let mut close: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => close.push('}'),
            '[' => close.push(']'),
            '}' | ']' if close.last() == Some(&c) => {
                close.pop();
                plain.push(' ');
            }
            _ if close.is_empty() => plain.push(c),
            _ => {}
        }
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        // Aggregations: `sum by (x) (...)` puts the grouping before the parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                // by (...), on (...): the parenthesis holds label names.
                let grouping = [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ];
                if grouping.contains(&lower.as_str()) {
                    while i < chars.len() && chars[i] != '(' {
                        i += 1;
                    }
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                }
                continue;
            }
            if next != Some(&'(') {
                names.insert(word);
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number (1e3, 0x10, 900): skip it whole.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            "sum without (instance, path) (fernetd_cluster_leader{a=\"x\"}[5m] offset 1h) == 0 \
             or absent(up{job=\"fernetd\"}) unless on (job) rate(b_total[1m]) > 1e3"
        ),
        ["b_total", "fernetd_cluster_leader", "up"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        metric_names("sum by (repository) (a) / count by (repository) (b and on (x) c)"),
        ["a", "b", "c"].map(String::from).into()
    );
    assert_eq!(
        metric_names("label_values(fernetd_keys{job=~\"$job\"}, repository)"),
        ["fernetd_keys".to_string()].into()
    );
    assert_eq!(
        metric_names("fernetd_next_rotation_timestamp_seconds{x=\"a\"} - time()"),
        ["fernetd_next_rotation_timestamp_seconds".to_string()].into()
    );
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = root().join("packaging/prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "fernetd-alerts.yml"]);
    assert!(ok, "promtool check rules: {out}");
    let rules = alerts().len();
    assert!(
        out.contains(&format!("SUCCESS: {rules} rules found")),
        "{out}"
    );
    let (ok, out) = promtool(&dir, &["test", "rules", "fernetd-alerts.test.yml"]);
    assert!(ok, "promtool test rules: {out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The unit tests see every alert fire, and see it not fire somewhere.
#[test]
fn the_unit_tests_see_every_alert_fire_and_not_fire() {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(RULE_TESTS)).unwrap();
    let (mut fired, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in doc["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            match a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()) {
                true => fired.insert(name),
                false => quiet.insert(name),
            };
        }
        for p in t["promql_expr_test"].as_sequence().into_iter().flatten() {
            assert!(p["expr"].as_str().unwrap().starts_with("ALERTS"));
            for s in p["exp_samples"].as_sequence().into_iter().flatten() {
                let labels = s["labels"].as_str().unwrap();
                let name = labels
                    .split("alertname=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap();
                fired.insert(name.to_string());
            }
        }
    }
    let all = alert_names();
    assert_eq!(fired, all, "alerts never seen firing in {RULE_TESTS}");
    assert_eq!(quiet, all, "alerts never seen quiet in {RULE_TESTS}");
}

/// The dashboard has the views operators look for, each panel on the Prometheus data source
/// variable, within Grafana's 24 columns, with a unique id.
#[test]
fn the_dashboard_has_a_panel_for_each_view() {
    let d: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Problems by code",
        "Repositories healthy",
        "Keys per repository and node",
        "Primary key age",
        "Next rotation in",
        "Rotations",
        "Failures",
        "In step with the cluster",
        "Leader and gate",
        "Propagation",
    ] {
        assert!(titles.contains(&want), "no panel {want}: {titles:?}");
    }
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The runbooks' sections: heading -> the codes its `Codes:` paragraph names.
fn runbook_sections() -> BTreeMap<String, BTreeSet<String>> {
    let text = read(RUNBOOKS);
    let mut out = BTreeMap::new();
    for section in text.split("\n## ").skip(1) {
        let (heading, body) = section.split_once('\n').unwrap();
        let codes_par = body
            .split("\n\n")
            .map(str::trim)
            .find(|p| p.starts_with("Codes:"))
            .unwrap_or_else(|| panic!("{RUNBOOKS}: section {heading} has no Codes: line"));
        // The codes are the `code` spans before any parenthesis.
        let codes = codes_par
            .split('(')
            .next()
            .unwrap()
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        out.insert(heading.trim().to_string(), codes);
    }
    out
}

#[test]
fn every_alert_has_a_severity_a_summary_naming_where_and_a_runbook() {
    let sections = runbook_sections();
    let text = read(RUNBOOKS);
    for a in alerts() {
        let sev = a.labels.get("severity").map(String::as_str);
        assert!(
            matches!(sev, Some("critical" | "warning")),
            "{}: severity {sev:?}",
            a.name
        );
        let summary = &a.annotations["summary"];
        assert!(
            summary.contains("$labels.instance") || summary.contains("$labels.repository"),
            "{}: the summary names neither the node nor the repository: {summary}",
            a.name
        );
        assert!(!a.annotations["description"].is_empty(), "{}", a.name);
        let url = &a.annotations["runbook_url"];
        assert_eq!(
            url,
            &format!("{RUNBOOK_URL}{}", anchor(&a.name)),
            "{}: runbook_url",
            a.name
        );
        assert!(
            sections.contains_key(&a.name),
            "{RUNBOOKS} has no section ## {}",
            a.name
        );
        let body = text.split(&format!("\n## {}\n", a.name)).nth(1).unwrap();
        let body = body.split("\n## ").next().unwrap();
        for part in [
            "**Means.**",
            "**Costs.**",
            "**Confirm.**",
            "**Do.**",
            "**Never.**",
        ] {
            assert!(body.contains(part), "{RUNBOOKS} ## {}: no {part}", a.name);
        }
    }
    let names = alert_names();
    // The README's table of alerts names each, with its severities.
    let readme = read("README.md");
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("| `Fernetd"))
        .map(|r| format!("Fernetd{}", r.split('`').next().unwrap()))
        .collect();
    assert_eq!(listed, names, "README.md's table of alerts");
    for a in alerts() {
        let row = readme
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("| `{}` |", a.name)))
            .unwrap();
        assert!(
            row.contains(&a.labels["severity"]),
            "README.md: {} is {}: {row}",
            a.name,
            a.labels["severity"]
        );
    }
    for heading in sections.keys() {
        assert!(
            names.contains(heading),
            "{RUNBOOKS}: section {heading} is no alert's"
        );
    }
}

/// The codes an alert's expression selects by name (`code="x"`, `code=~"x|y"`).
fn selected_codes(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in expr.split("code=").skip(1) {
        let m = m.trim_start_matches('~').trim_start_matches('"');
        let list = m.split('"').next().unwrap();
        out.extend(list.split('|').map(String::from));
    }
    out
}

/// Each problem code is handled by exactly one runbook section, the README's table links the
/// code there, and an alert that selects codes selects only its own section's, at the
/// severity the code has.
#[test]
fn every_problem_code_has_one_runbook_and_the_readme_links_it() {
    let sections = runbook_sections();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (heading, codes) in &sections {
        for c in codes {
            assert!(
                owner.insert(c.clone(), heading.clone()).is_none(),
                "{RUNBOOKS}: code {c} in two sections"
            );
        }
    }
    let readme = read("README.md");
    for code in fernetd::core::problem::Code::ALL.iter().map(|c| c.as_str()) {
        let section = owner
            .get(code)
            .unwrap_or_else(|| panic!("{RUNBOOKS}: no section names code {code}"));
        let link = format!("| [`{code}`](docs/runbooks.md#{}) |", anchor(section));
        assert!(
            readme.contains(&link),
            "README.md: the row of {code} should start {link}"
        );
    }
    let known: BTreeSet<&str> = fernetd::core::problem::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    for c in owner.keys() {
        assert!(known.contains(c.as_str()), "{RUNBOOKS}: unknown code {c}");
    }
    for a in alerts() {
        let severity_of = |code: &str| fernetd::core::problem::Code::parse(code).severity();
        for code in selected_codes(&a.expr) {
            assert!(
                known.contains(code.as_str()),
                "{}: unknown code {code}",
                a.name
            );
            assert_eq!(
                owner[&code], a.name,
                "{}: selects {code}, whose runbook is another alert's",
                a.name
            );
            let sev = &a.labels["severity"];
            // A code whose severity changes (rotation-failing) is selected per severity.
            let selected_sev = a
                .expr
                .split("severity=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            match selected_sev {
                Some(s) => assert_eq!(s, sev, "{}", a.name),
                None => assert_eq!(severity_of(&code), sev, "{}: {code}", a.name),
            }
        }
    }
}

// ---- Real daemons -------------------------------------------------------------------------

/// One scrape of a daemon: its samples, and the wall-clock moment it was taken.
#[derive(Clone)]
struct Scrape {
    instance: String,
    at: f64,
    /// None: the scrape failed (Prometheus then writes up 0).
    body: Option<String>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn scrape(addr: &str) -> Scrape {
    use std::io::{Read, Write};
    let at = now_secs();
    let body = (|| {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.starts_with("HTTP/1.1 200")
            .then(|| resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    })();
    Scrape {
        instance: addr.to_string(),
        at,
        body,
    }
}

/// Each sample: (metric name, labels inside the braces, value).
fn samples(body: &str) -> Vec<(String, String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            (name.to_string(), labels.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The series Prometheus would store from these scrapes (job fernetd, the scraped address as
/// instance, and `up`), each held at its scraped value for HOLD_MINUTES. Timestamps are moved
/// so that promtool's time 0 is the moment of the scrape: `time()` in the rules then reads
/// "that long after the scrape".
fn input_series(scrapes: &[Scrape]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let hold = |v: f64| format!("{v}x{HOLD_MINUTES}");
    for s in scrapes {
        let target = format!("job=\"fernetd\",instance=\"{}\"", s.instance);
        let up = if s.body.is_some() { 1.0 } else { 0.0 };
        out.push(serde_json::json!({"series": format!("up{{{target}}}"), "values": hold(up)}));
        for (name, labels, v) in samples(s.body.as_deref().unwrap_or("")) {
            let v = if name.ends_with("_timestamp_seconds") {
                (v - s.at).round()
            } else {
                v
            };
            let labels = if labels.is_empty() {
                target.clone()
            } else {
                format!("{target},{labels}")
            };
            out.push(
                serde_json::json!({"series": format!("{name}{{{labels}}}"), "values": hold(v)}),
            );
        }
    }
    out
}

/// The alerts real daemons' series were seen to fire: every alert must be among them.
static FIRED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Runs the shipped rules on `scrapes` with promtool and asserts that exactly `want`
/// (alert name, severity, how many) fire at EVAL_MINUTES.
fn assert_alerts(situation: &str, scrapes: &[Scrape], want: &[(&str, &str, usize)]) {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<serde_json::Value> = want
        .iter()
        .map(|(name, sev, n)| {
            serde_json::json!({
                "labels": format!("{{alertname=\"{name}\",severity=\"{sev}\"}}"),
                "value": *n as f64,
            })
        })
        .collect();
    let test = serde_json::json!({
        "rule_files": [root().join(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series(scrapes),
            "promql_expr_test": [{
                "expr": "count by (alertname, severity) (ALERTS{alertstate=\"firing\"})",
                "eval_time": format!("{EVAL_MINUTES}m"),
                "exp_samples": samples,
            }],
        }],
    });
    let file = dir.path().join("scraped.test.yml");
    std::fs::write(&file, serde_json::to_string_pretty(&test).unwrap()).unwrap();
    let (ok, out) = promtool(dir.path(), &["test", "rules", "scraped.test.yml"]);
    assert!(
        ok,
        "{situation}: the alerts firing on the scraped series are not {want:?}:\n{out}\n\
         scraped:\n{}",
        scrapes
            .iter()
            .map(|s| s.body.clone().unwrap_or_else(|| "(failed)".into()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    FIRED
        .lock()
        .unwrap()
        .extend(want.iter().map(|w| w.0.to_string()));
}

/// Every dashboard query, its variables set to match everything, returns data on `scrapes`.
fn assert_dashboard_queries_return_data(scrapes: &[Scrape]) {
    let dir = tempfile::tempdir().unwrap();
    let checks: Vec<serde_json::Value> = dashboard_exprs()
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .map(|e| {
            let e = e
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$repository", ".*");
            serde_json::json!({
                "expr": format!("count({e}) > bool 0"),
                "eval_time": format!("{EVAL_MINUTES}m"),
                "exp_samples": [{"labels": "{}", "value": 1}],
            })
        })
        .collect();
    let test = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series(scrapes),
            "promql_expr_test": checks,
        }],
    });
    std::fs::write(
        dir.path().join("dashboard.test.yml"),
        serde_json::to_string_pretty(&test).unwrap(),
    )
    .unwrap();
    let (ok, out) = promtool(dir.path(), &["test", "rules", "dashboard.test.yml"]);
    assert!(
        ok,
        "a dashboard query returns nothing on real series:\n{out}"
    );
}

/// A config for one token repository at `dir`, with metrics on loopback and hooks that
/// succeed (so the hook metrics have samples) unless `tokens` sets them.
fn standalone_config(t: &Path, dir: &Path, tokens: &str) -> PathBuf {
    let cfg = t.join("f.toml");
    let hooks: String = ["on_invalid", "on_change", "on_rotate"]
        .iter()
        .filter(|h| !tokens.contains(&format!("{h} =")))
        .map(|h| format!("{h} = [\"true\"]\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [tokens]\nkey_repository = \"{}\"\n{hooks}{tokens}",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// A started daemon on `cfg`, once it serves metrics.
fn start(cfg: &Path) -> Daemon {
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "daemon"], &[]);
    assert!(
        d.wait_log("metrics on", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    d
}

/// The first scrape of `d` (within 20 s) whose body `holds`; it is what is judged.
fn scrape_until(d: &Daemon, what: &str, holds: impl Fn(&str) -> bool) -> Scrape {
    let addr = d.metrics_addr();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(&addr);
        if s.body.as_deref().is_some_and(&holds) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {}\n{}",
            s.body.unwrap_or_default(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first scrape of `d` with a line starting with `prefix` and ending with `suffix`.
fn scrape_when(d: &Daemon, prefix: &str, suffix: &str) -> Scrape {
    scrape_until(d, &format!("{prefix}...{suffix}"), |body| {
        body.lines()
            .any(|l| l.starts_with(prefix) && l.ends_with(suffix))
    })
}

/// The first scrape of `d` showing problem `code`.
fn scrape_problem(d: &Daemon, code: &str) -> Scrape {
    let needle = format!("code=\"{code}\"");
    scrape_until(d, &needle, |body| {
        body.lines()
            .any(|l| l.starts_with("fernetd_problem{") && l.contains(&needle))
    })
}

/// Standalone daemons in each situation an alert is for, scraped and judged by the shipped
/// rules; returns every scrape, for the metric-name checks.
fn standalone_situations() -> Vec<Scrape> {
    let mut all = Vec::new();
    type Tamper = fn(&Path);
    type Want = Vec<(&'static str, &'static str, usize)>;
    type Case = (
        &'static str,
        &'static str,
        Tamper,
        Tamper,
        &'static [&'static str],
        Want,
    );
    // (situation, extra [tokens] lines, before the daemon starts, while it runs, what the
    // scrape to judge must hold (each in a line whose value is not 0; none: healthy), the
    // alerts that must fire)
    let cases: Vec<Case> = vec![
        (
            "healthy",
            "schedule = \"1h\"\n",
            |_| {},
            |_| {},
            &[],
            vec![],
        ),
        (
            "a key deleted inside its retention window",
            "schedule = \"1h\"\n",
            |_| {},
            |d| std::fs::remove_file(d.join("1")).unwrap(),
            &["code=\"key-lost-in-retention\""],
            vec![("FernetdKeyLostInRetention", "critical", 1)],
        ),
        (
            "a malformed key",
            "schedule = \"1h\"\n",
            |_| {},
            |d| std::fs::write(d.join("2"), "not a key").unwrap(),
            &["code=\"malformed-key\""],
            vec![("FernetdRepositoryInvalid", "critical", 1)],
        ),
        (
            "a malformed key, and the on_invalid hook failing",
            "schedule = \"1h\"\non_invalid = [\"false\"]\n",
            |_| {},
            |d| std::fs::write(d.join("2"), "not a key").unwrap(),
            &[
                "code=\"malformed-key\"",
                "fernetd_hook_failures_total{repository=\"tokens\",event=\"invalid\"}",
            ],
            vec![
                ("FernetdHookFailing", "warning", 1),
                ("FernetdRepositoryInvalid", "critical", 1),
            ],
        ),
        (
            "a failing rotation, within the margin",
            "schedule = \"1s\"\nexpiration = \"2s\"\nallow_expired_window = 0\nmargin = \"1h\"\n",
            |d| std::fs::create_dir_all(d.join(".fernetd/staged.tmp/x")).unwrap(),
            |_| {},
            &["code=\"rotation-failing\",severity=\"warning\""],
            vec![("FernetdRotationFailing", "warning", 1)],
        ),
        (
            "a failing rotation, overdue past the margin",
            "schedule = \"1s\"\nexpiration = \"2s\"\nallow_expired_window = 0\nmargin = 0\n",
            |d| std::fs::create_dir_all(d.join(".fernetd/staged.tmp/x")).unwrap(),
            |_| {},
            &["code=\"rotation-failing\",severity=\"critical\""],
            vec![("FernetdRotationFailing", "critical", 1)],
        ),
        (
            "a recorded time in the future",
            "schedule = \"1h\"\n",
            |d| last_rotation_in_the_future(d),
            |_| {},
            &["code=\"clock-in-future\""],
            vec![("FernetdClockUntrusted", "warning", 1)],
        ),
        (
            "an unsafe schedule allowed",
            "schedule = \"1h\"\nmax_active_keys = 3\nallow_unsafe_schedule = true\n",
            |_| {},
            |_| {},
            &["code=\"unsafe-schedule\""],
            vec![("FernetdUnsafeSchedule", "warning", 1)],
        ),
        (
            "a key readable by everyone",
            "schedule = \"1h\"\n",
            |_| {},
            |d| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d.join("1"), std::fs::Permissions::from_mode(0o644))
                    .unwrap()
            },
            &["code=\"key-mode\""],
            vec![("FernetdRepositoryWarning", "warning", 1)],
        ),
    ];
    for (situation, tokens, before, during, needles, want) in cases {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let r = dir.to_str().unwrap();
        fernetd_ok(&["setup", "--key-repository", r]);
        rotate_ok(r, &[]);
        before(&dir);
        let d = start(&standalone_config(t.path(), &dir, tokens));
        std::thread::sleep(Duration::from_millis(300));
        during(&dir);
        let s = match needles {
            [] => {
                assert!(d.wait_log("ready", Duration::from_secs(10)), "{}", d.log());
                scrape_when(&d, "fernetd_repository_healthy{", " 1")
            }
            needles => scrape_until(&d, &needles.join(" and "), |body| {
                needles
                    .iter()
                    .all(|n| body.lines().any(|l| l.contains(n) && !l.ends_with(" 0")))
            }),
        };
        assert_alerts(situation, std::slice::from_ref(&s), &want);
        if situation == "healthy" {
            // Stopped: the next scrape fails, Prometheus writes up 0.
            let addr = d.metrics_addr();
            d.stop();
            let down = scrape(&addr);
            assert!(down.body.is_none(), "a stopped daemon answered");
            assert_alerts(
                "the daemon stopped",
                &[down],
                &[("FernetdDown", "critical", 1)],
            );
        }
        all.push(s);
    }
    all
}

/// A cluster node's config (node `node`, one token repository at `dir`).
fn cluster_config(t: &Path, etcd: &Etcd, node: &str, tokens: &str, cluster: &str) -> PathBuf {
    let cfg = t.join(format!("{node}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [tokens]\nkey_repository = \"{}\"\n{tokens}\
             [cluster]\nendpoints = [\"{}\"]\nprefix = \"/test\"\nnode = \"{node}\"\n\
             lease_ttl = \"2s\"\ndial_timeout = \"2s\"\nrequest_timeout = \"2s\"\n{cluster}",
            t.join(node).display(),
            etcd.endpoint
        ),
    )
    .unwrap();
    // The first node starts the cluster (fresh keys); the others join it.
    let init = fernetd(&["--config", cfg.to_str().unwrap(), "cluster", "init"]);
    assert!(
        init.code == 0 || init.stderr.contains("already holds a key set"),
        "{}",
        init.stderr
    );
    cfg
}

/// `[cluster]` lines sealing a node's key sets with a seal key made once under `dir`.
fn sealed(dir: &Path) -> String {
    let key = dir.join("seal.key");
    if !key.exists() {
        fernetd_ok(&["cluster", "new-seal-key", "--out", key.to_str().unwrap()]);
    }
    format!("seal_key_file = \"{}\"\n", key.display())
}

/// Cluster-mode daemons against a real etcd: a healthy leader, the same node with etcd gone,
/// a gate blocked by a lagging member (with a follower), a destructive key set refused.
fn cluster_situations() -> Vec<Scrape> {
    let mut all = Vec::new();
    let secs = Duration::from_secs;

    // Healthy, leading (sealed, as configured by default); then etcd is gone.
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let d = start(&cluster_config(
        t.path(),
        &etcd,
        "a",
        "schedule = \"1h\"\n",
        &sealed(t.path()),
    ));
    assert!(
        d.wait_log("leading this repository", secs(15)),
        "{}",
        d.log()
    );
    // In step and leading in one scrape: READY=1 publishes at once with the acknowledgement,
    // which comes just before the campaign, so the first scrape may show a follower.
    let healthy = scrape_until(&d, "in step and leading", |body| {
        ["fernetd_cluster_in_step{", "fernetd_cluster_leader{"]
            .iter()
            .all(|m| body.lines().any(|l| l.starts_with(m) && l.ends_with(" 1")))
    });
    assert_alerts(
        "a healthy cluster leader",
        std::slice::from_ref(&healthy),
        &[],
    );
    all.push(healthy);
    drop(etcd);
    let lost = scrape_problem(&d, "degraded");
    let lost = match lost
        .body
        .as_deref()
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("fernetd_cluster_leader{") && l.ends_with(" 1"))
    {
        true => scrape_when(&d, "fernetd_cluster_leader{", " 0"),
        false => lost,
    };
    assert_alerts(
        "etcd lost",
        std::slice::from_ref(&lost),
        &[
            ("FernetdClusterOutOfStep", "warning", 1),
            ("FernetdClusterNoLeader", "warning", 1),
        ],
    );
    all.push(lost);
    d.stop();

    // A member (c) holding an older staged key blocks the leader's due rotation past
    // gate_deadline; follower b sees the rotation overdue. Scraped together, the blocked gate
    // explains b's overdue rotation: one alert. b scraped alone (the leader not scraped): no
    // node leads, nothing explains the delay, and b's next rotation, stuck in the past, is
    // overdue.
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (tokens, cluster) = (
        "schedule = \"2s\"\nexpiration = \"3s\"\nallow_expired_window = 0\nmargin = 0\n",
        format!("gate_deadline = \"3s\"\n{}", sealed(t.path())),
    );
    let cluster = cluster.as_str();
    let a = start(&cluster_config(t.path(), &etcd, "a", tokens, cluster));
    assert!(
        a.wait_log("leading this repository", secs(15)),
        "{}",
        a.log()
    );
    let b = start(&cluster_config(t.path(), &etcd, "b", tokens, cluster));
    assert!(b.wait_log("ready", secs(15)), "{}", b.log());
    // c's record as c would write it, with the MAC of its seal key: an authentic acknowledgement
    // of an old set (without the MAC it would be `ack-unauthenticated`, critical).
    let ack: fernetd::core::skew::Ack = serde_json::from_value(
        serde_json::json!({"node": "c", "revision": 1, "staged": "00000000000000ff"}),
    )
    .unwrap();
    let key = fernetd::seal::SealKey::load(&t.path().join("seal.key"), None).unwrap();
    let mac = fernetd::seal::Sealing::new(Some(key), false)
        .tag(b"/test/tokens/acks/c", &serde_json::to_vec(&ack).unwrap());
    let mut ack = serde_json::to_value(&ack).unwrap();
    ack["mac"] = serde_json::json!(mac.unwrap());
    etcd.with_client(async |cl| {
        cl.put("/test/tokens/acks/c", ack.to_string(), None)
            .await
            .unwrap();
    });
    let blocked = scrape_when(&a, "fernetd_cluster_gate_blocked{", " 1");
    let follower = scrape(&b.metrics_addr());
    let next = samples(follower.body.as_deref().unwrap())
        .into_iter()
        .find(|(n, _, _)| n == "fernetd_next_rotation_timestamp_seconds")
        .map(|(_, _, v)| v)
        .expect("the follower exports its next rotation");
    assert!(
        next < follower.at,
        "the follower's next rotation is not past: {next} at {}",
        follower.at
    );
    assert_alerts(
        "the promotion gate blocked past its deadline",
        &[blocked.clone(), follower.clone()],
        &[("FernetdGateBlocked", "warning", 1)],
    );
    assert_alerts(
        "a follower whose rotation is overdue, its leader not scraped",
        std::slice::from_ref(&follower),
        &[
            ("FernetdClusterNoLeader", "warning", 1),
            ("FernetdRotationOverdue", "warning", 1),
        ],
    );
    all.push(blocked);
    all.push(follower);
    a.stop();
    b.stop();

    // A key set that replaces every key, newer by its generation: refused, every key kept.
    // Unsealed (the test writes the forged value itself), which is an exposure of its own.
    let etcd = Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let d = start(&cluster_config(
        t.path(),
        &etcd,
        "a",
        "schedule = \"1h\"\n",
        "insecure_unsealed = true\n",
    ));
    assert!(d.wait_log("ready", secs(15)), "{}", d.log());
    let held = etcd.with_client(async |c| {
        c.get("/test/tokens/keyset", None)
            .await
            .unwrap()
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap()
    });
    let held = fernetd::core::keyset::KeySet::decode(&held).unwrap();
    let lineage = held.history.lineage.clone().unwrap();
    let mut forged =
        fernetd::core::keyset::KeySet::fresh(&fernetd::core::clock::Now::read()).unwrap();
    forged.history.lineage = Some(fernetd::core::keyset::Lineage {
        generation: lineage.generation + 5,
        ..lineage
    });
    let value = forged.encode().to_vec();
    etcd.with_client(async |c| {
        c.put("/test/tokens/keyset", value, None).await.unwrap();
    });
    let refused = scrape_problem(&d, "input-refused");
    assert_alerts(
        "a destructive key set refused",
        std::slice::from_ref(&refused),
        &[
            ("FernetdClusterExposed", "warning", 1),
            ("FernetdInputRefused", "critical", 1),
            ("FernetdClusterOutOfStep", "warning", 1),
        ],
    );
    all.push(refused);
    d.stop();
    all
}

/// The alerts against real daemons, then every metric name the rules and the dashboard use
/// against what those daemons exported, and every dashboard query against their series.
#[test]
fn real_daemons_raise_exactly_the_alerts_for_their_situation() {
    let started = std::time::Instant::now();
    let mut scrapes = standalone_situations();
    scrapes.extend(cluster_situations());
    assert_eq!(
        *FIRED.lock().unwrap(),
        alert_names(),
        "alerts no real daemon's series fired"
    );
    // Every name the rules and the dashboard read has samples in a real scrape; `up` is
    // written by Prometheus for each scrape, ALERTS by Prometheus for each alert.
    let exported: BTreeSet<String> = scrapes
        .iter()
        .flat_map(|s| samples(s.body.as_deref().unwrap_or("")))
        .map(|(name, _, _)| name)
        .collect();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for a in alerts() {
        for n in metric_names(&a.expr) {
            used.insert(n, format!("alert {}", a.name));
        }
    }
    for e in dashboard_exprs() {
        for n in metric_names(&e) {
            used.insert(n, format!("dashboard query {e}"));
        }
    }
    assert!(used.len() >= 10, "too few names read: {used:?}");
    for (name, by) in &used {
        assert!(
            name == "up" || exported.contains(name),
            "{by} reads {name}, which no real daemon exported: {exported:?}"
        );
    }
    // Every family the daemon exports is read by the dashboard or the rules.
    for name in &exported {
        assert!(
            used.contains_key(name),
            "{name} is exported but neither alerted on nor on the dashboard"
        );
    }
    // Distinct instances so the series of different daemons do not collide.
    let distinct: Vec<Scrape> = scrapes
        .iter()
        .enumerate()
        .map(|(i, s)| Scrape {
            instance: format!("{}-{i}", s.instance),
            ..s.clone()
        })
        .collect();
    assert_dashboard_queries_return_data(&distinct);
    eprintln!(
        "{} scrapes of real daemons judged in {:.1} s",
        scrapes.len(),
        started.elapsed().as_secs_f64()
    );
}
