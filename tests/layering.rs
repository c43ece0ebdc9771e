//! The layering the compiler cannot see: `src/core/` decides, the rest of `src/` acts.
//!
//! Every file under `src/core/` must reach nothing outside the core: no filesystem, process,
//! network or OS access (`std::fs`, `std::process`, `std::net`, `std::os`, `nix`, `libc`), no
//! async runtime or etcd (`tokio`, `etcd_client`), no `crate::` path outside `crate::core`, no
//! `super::` climbing out of it, and no outer module named. And no two files of `src/` may
//! import each other, directly or around a circle: the file-level graph of `crate::` and
//! `super::` paths has no cycle (a parent `mod.rs` declaring a child is not an import).
//!
//! The checks read source text; comments and string literals are blanked first, so a doc
//! sentence or an error message naming "the repository" is not a use of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates and `std` modules that reach the world.
const FORBIDDEN_CRATES: &[&str] = &["nix", "tokio", "etcd_client", "libc"];
const FORBIDDEN_STD: &[&str] = &["fs", "process", "net", "os"];
/// The modules that act: the core names none of them.
const OUTER: &[&str] = &[
    "repository",
    "cluster",
    "daemon",
    "agent",
    "cli",
    "status",
    "hooks",
    "watcher",
    "metrics",
    "config",
    "seal",
    "systemd",
    "system",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// `text` with comments and string/char literals replaced by spaces (newlines kept, so line
/// numbers stay right).
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_newlines = |s: &[char], out: &mut String| {
        for &ch in s {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    while i < c.len() {
        let rest = &c[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest.iter().position(|&ch| ch == '\n').unwrap_or(rest.len());
            keep_newlines(&rest[..end], &mut out);
            i += end;
        } else if rest.starts_with(&['/', '*']) {
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            keep_newlines(&rest[..j.min(rest.len())], &mut out);
            i += j.min(rest.len());
        } else if let Some(len) = raw_string(rest) {
            keep_newlines(&rest[..len], &mut out);
            i += len;
        } else if c[i] == '"' || (c[i] == 'b' && rest.get(1) == Some(&'"')) {
            let mut j = if c[i] == 'b' { 2 } else { 1 };
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            keep_newlines(&rest[..end], &mut out);
            i += end;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{7f}') or a lifetime ('a).
            let len = if rest.get(1) == Some(&'\\') {
                rest[2..]
                    .iter()
                    .position(|&ch| ch == '\'')
                    .map_or(1, |p| p + 3)
            } else if rest.get(2) == Some(&'\'') {
                3
            } else {
                1
            };
            keep_newlines(&rest[..len], &mut out);
            i += len;
        } else if c[i].is_alphanumeric() || c[i] == '_' {
            // A whole identifier, so `br"` or `r#"` inside a name is not a literal.
            let end = rest
                .iter()
                .position(|&ch| !(ch.is_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            if end == 1 || end == 2 {
                if let Some(len) = raw_string(rest) {
                    keep_newlines(&rest[..len], &mut out);
                    i += len;
                    continue;
                }
            }
            out.extend(&rest[..end]);
            i += end;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The length of the raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `s`.
fn raw_string(s: &[char]) -> Option<usize> {
    let mut j = match s {
        ['r', ..] => 1,
        ['b', 'r', ..] => 2,
        _ => return None,
    };
    let hashes = s[j..].iter().take_while(|&&ch| ch == '#').count();
    j += hashes;
    if s.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < s.len() {
        if s[j] == '"'
            && s[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(s.len())
}

/// Tokens of blanked text, each with its line (1-based).
fn tokens(text: &str) -> Vec<(usize, Tok)> {
    let mut out = Vec::new();
    for (n, line) in blank(text).lines().enumerate() {
        let c: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < c.len() {
            if c[i].is_alphabetic() || c[i] == '_' {
                let end = c[i..]
                    .iter()
                    .position(|&ch| !(ch.is_alphanumeric() || ch == '_'))
                    .map_or(c.len(), |p| i + p);
                out.push((n + 1, Tok::Ident(c[i..end].iter().collect())));
                i = end;
            } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
                out.push((n + 1, Tok::PathSep));
                i += 2;
            } else if c[i].is_whitespace() || c[i].is_numeric() {
                i += 1;
            } else {
                out.push((n + 1, Tok::Punct(c[i])));
                i += 1;
            }
        }
    }
    out
}

/// One path as written (`crate::core::history::later`, `super::Lineage`), with a use group
/// expanded (`crate::{a, b::c}` gives `crate::a` and `crate::b::c`), and its line.
#[derive(Debug)]
struct PathUse {
    line: usize,
    segments: Vec<String>,
    /// Inline modules (`mod tests { … }`) the path sits in: each `super::` leaves one first.
    inline_depth: usize,
}

fn ident(t: Option<&(usize, Tok)>) -> Option<&str> {
    match t {
        Some((_, Tok::Ident(s))) => Some(s),
        _ => None,
    }
}

/// Every path that starts with one of `roots` (`crate`, `super`, `std`).
fn paths(text: &str, roots: &[&str]) -> Vec<PathUse> {
    let toks = tokens(text);
    let mut out = Vec::new();
    // Brace depth now, and the depths at which inline `mod x {` blocks opened.
    let mut depth = 0usize;
    let mut inline: Vec<usize> = Vec::new();
    for (i, (line, t)) in toks.iter().enumerate() {
        match t {
            Tok::Punct('{') => {
                let is_mod = i >= 2
                    && ident(toks.get(i - 2)) == Some("mod")
                    && ident(toks.get(i - 1)).is_some();
                depth += 1;
                if is_mod {
                    inline.push(depth);
                }
            }
            Tok::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(s) if roots.contains(&s.as_str()) => {
                // Only where a path begins: not after `::` (`a::crate` is no path root).
                if i > 0 && toks[i - 1].1 == Tok::PathSep {
                    continue;
                }
                if toks.get(i + 1).map(|t| &t.1) != Some(&Tok::PathSep) {
                    continue;
                }
                let mut found = Vec::new();
                expand(&toks, i, vec![], &mut found);
                for segments in found {
                    out.push(PathUse {
                        line: *line,
                        segments,
                        inline_depth: inline.len(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads the path at `toks[i]` on, after `prefix`; a `{…}` group yields one path per branch.
fn expand(
    toks: &[(usize, Tok)],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    while let Some(Tok::Ident(s)) = toks.get(i).map(|t| &t.1) {
        prefix.push(s.clone());
        i += 1;
        if toks.get(i).map(|t| &t.1) != Some(&Tok::PathSep) {
            out.push(prefix);
            return;
        }
        i += 1;
        if toks.get(i).map(|t| &t.1) == Some(&Tok::Punct('{')) {
            // Branches start after `{` and after each `,` at this group's level.
            let mut level = 0;
            let mut j = i;
            while j < toks.len() {
                match &toks[j].1 {
                    Tok::Punct('{') => {
                        level += 1;
                        if level == 1 {
                            expand(toks, j + 1, prefix.clone(), out);
                        }
                    }
                    Tok::Punct(',') if level == 1 => expand(toks, j + 1, prefix.clone(), out),
                    Tok::Punct('}') => {
                        level -= 1;
                        if level == 0 {
                            return;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            return;
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// The module a file under `src/` defines: `src/core/history.rs` is `core::history`,
/// `src/repository/mod.rs` is `repository`, `src/lib.rs` is the crate root (empty).
fn module_of(rel: &Path) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// What `path` in the module `module` refers to, as an absolute path from the crate root
/// (`crate::` dropped, each `super::` climbing one module once the inline modules are left).
/// `None` for a path that leaves the crate or climbs above its root.
fn absolute(module: &[String], path: &PathUse) -> Option<Vec<String>> {
    let mut segs = path.segments.as_slice();
    if segs.first().map(String::as_str) == Some("crate") {
        return Some(segs[1..].to_vec());
    }
    let mut base = module.to_vec();
    let mut inline = path.inline_depth;
    while segs.first().map(String::as_str) == Some("super") {
        if inline > 0 {
            inline -= 1;
        } else {
            base.pop()?;
        }
        segs = &segs[1..];
    }
    base.extend(segs.iter().cloned());
    Some(base)
}

/// What a core file (`rel`, under `src/`) reaches outside the core: "file:line: why".
fn core_violations(rel: &Path, text: &str) -> Vec<String> {
    let module = module_of(rel);
    let mut found = Vec::new();
    let at = |line: usize, why: String| (line, why);
    let toks = tokens(text);
    for (i, (line, t)) in toks.iter().enumerate() {
        let Tok::Ident(s) = t else { continue };
        let after_sep = i > 0 && toks[i - 1].1 == Tok::PathSep;
        let before_sep = toks.get(i + 1).map(|t| &t.1) == Some(&Tok::PathSep);
        let after_use = i > 0 && ident(toks.get(i - 1)) == Some("use");
        if FORBIDDEN_CRATES.contains(&s.as_str()) {
            found.push(at(*line, format!("uses `{s}`")));
        } else if OUTER.contains(&s.as_str()) && (before_sep || after_sep || after_use) {
            found.push(at(*line, format!("names the outer module `{s}`")));
        }
    }
    for p in paths(text, &["std", "crate", "super"]) {
        let first = p.segments[0].as_str();
        if first == "std" {
            if let Some(m) = p
                .segments
                .get(1)
                .filter(|m| FORBIDDEN_STD.contains(&m.as_str()))
            {
                found.push(at(p.line, format!("uses `std::{m}`")));
            }
            continue;
        }
        match absolute(&module, &p) {
            Some(abs) if abs.first().map(String::as_str) == Some("core") => {}
            _ => found.push(at(
                p.line,
                format!("reaches outside the core: `{}`", p.segments.join("::")),
            )),
        }
    }
    found.sort();
    found.dedup();
    found
        .into_iter()
        .map(|(line, why)| format!("src/{}:{line}: {why}", rel.display()))
        .collect()
}

/// The file-level import graph: module -> the modules (files) its paths reach.
fn import_graph(files: &BTreeMap<Vec<String>, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in files {
        let from = module.join("::");
        graph.entry(from.clone()).or_default();
        for p in paths(text, &["crate", "super"]) {
            let Some(abs) = absolute(module, &p) else {
                continue;
            };
            // The longest prefix that is a file. A root-level name that is no file may be a
            // re-export of a core module (`pub use core::history` in lib.rs).
            let target = (1..=abs.len())
                .rev()
                .map(|n| abs[..n].to_vec())
                .find(|m| files.contains_key(m))
                .or_else(|| {
                    let mut core = vec!["core".to_string()];
                    core.extend(abs.iter().cloned());
                    (2..=core.len())
                        .rev()
                        .map(|n| core[..n].to_vec())
                        .find(|m| files.contains_key(m))
                });
            if let Some(t) = target.filter(|t| !t.is_empty() && t != module) {
                graph.entry(from.clone()).or_default().insert(t.join("::"));
            }
        }
    }
    graph
}

/// Every circle of the graph: each strongly connected component of two or more files, as one
/// closed walk through it ("a -> b -> c -> a"), all its members and the imports among them.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Kosaraju: finishing order on the graph, then components on the reversed graph.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        if seen.contains(start) {
            continue;
        }
        let mut stack = vec![(start.clone(), false)];
        while let Some((n, done)) = stack.pop() {
            if done {
                order.push(n);
                continue;
            }
            if !seen.insert(n.clone()) {
                continue;
            }
            stack.push((n.clone(), true));
            for m in graph.get(&n).into_iter().flatten() {
                if !seen.contains(m) {
                    stack.push((m.clone(), false));
                }
            }
        }
    }
    let mut reverse: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, bs) in graph {
        for b in bs {
            reverse.entry(b).or_default().push(a);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for root in order.iter().rev() {
        if assigned.contains(root.as_str()) {
            continue;
        }
        let mut component = BTreeSet::new();
        let mut stack = vec![root.as_str()];
        while let Some(n) = stack.pop() {
            if !assigned.insert(n) {
                continue;
            }
            component.insert(n);
            stack.extend(reverse.get(n).into_iter().flatten().copied());
        }
        if component.len() > 1 {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|&a| {
                    let inside = graph.get(a).into_iter().flatten();
                    inside
                        .filter(|b| component.contains(b.as_str()))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            out.push(format!(
                "{}\n    all of: {}\n    its imports: {}",
                walk(graph, &component),
                component.iter().copied().collect::<Vec<_>>().join(", "),
                edges.join(", ")
            ));
        }
    }
    out
}

/// A shortest closed walk from the component's first member back to it, inside it.
fn walk(graph: &BTreeMap<String, BTreeSet<String>>, component: &BTreeSet<&str>) -> String {
    let Some(&start) = component.iter().next() else {
        return String::new();
    };
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for m in graph.get(n).into_iter().flatten() {
            let m = m.as_str();
            if !component.contains(m) {
                continue;
            }
            if m == start {
                let mut chain = vec![start, n];
                let mut at = n;
                while at != start {
                    at = prev[at];
                    chain.push(at);
                }
                chain.reverse();
                return chain.join(" -> ");
            }
            if !prev.contains_key(m) {
                prev.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    start.to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every file of `src/` (but the binary's `main.rs`, a crate of its own), by module.
fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter(|p| !p.ends_with("main.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(&src).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn the_core_reaches_nothing_outside_it() {
    let files = sources();
    let core: Vec<_> = files
        .iter()
        .filter(|(p, _)| p.starts_with("core"))
        .collect();
    assert!(!core.is_empty(), "no src/core/");
    let found: Vec<String> = core
        .iter()
        .flat_map(|(p, text)| core_violations(p, text))
        .collect();
    assert!(
        found.is_empty(),
        "the core must decide, not act:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_files_import_each_other_around_a_circle() {
    let files: BTreeMap<Vec<String>, String> = sources()
        .into_iter()
        .map(|(p, text)| (module_of(&p), text))
        .collect();
    let found = circles(&import_graph(&files));
    assert!(
        found.is_empty(),
        "files importing each other around a circle:\n{}",
        found.join("\n")
    );
}

fn planted(files: &[(&str, &str)]) -> BTreeMap<Vec<String>, String> {
    files
        .iter()
        .map(|(p, text)| (module_of(Path::new(p)), text.to_string()))
        .collect()
}

#[test]
fn a_planted_circle_is_found_and_printed() {
    let files = planted(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod core;\n"),
        ("a.rs", "use crate::b::B;\n"),
        // Through a lib.rs re-export: `crate::c` is no file, `core::c` is.
        ("b.rs", "pub fn f() { crate::c::g() }\n"),
        ("core/mod.rs", "pub mod c;\npub mod d;\n"),
        ("core/c.rs", "use super::{d::D, *};\n"),
        (
            "core/d.rs",
            "fn h() { crate::a::x(); }\n// crate::b::never\n",
        ),
    ]);
    let found = circles(&import_graph(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("a -> b -> core::c -> core::d -> a"),
        "{}",
        found[0]
    );
    // Comments, strings and a parent declaring its child are no imports.
    let acyclic = planted(&[
        (
            "a.rs",
            "//! see crate::b\nfn x() { let s = \"crate::b::f\"; }\n",
        ),
        ("b.rs", "use crate::a;\n"),
        ("c/mod.rs", "mod d;\nuse crate::a;\n"),
        ("c/d.rs", "use super::super::b;\n"),
    ]);
    assert_eq!(circles(&import_graph(&acyclic)), Vec::<String>::new());
}

#[test]
fn a_planted_use_of_the_world_is_reported_with_its_line() {
    let text = "//! Pure: no std::fs here (a comment).\n\
                use std::fs;\n\
                use std::{collections::BTreeMap, process::Command};\n\
                use crate::core::history::History;\n\
                use crate::repository::Scan;\n\
                fn f() -> nix::Result<()> { let s = \"tokio::spawn\"; Ok(()) }\n\
                fn g() { super::super::daemon::run(); let status = 1; }\n\
                #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::clock;\n}\n\
                fn h(x: &'static str) -> char { '\"' }\n\
                fn i() { let v = config::load(); }\n";
    let found = core_violations(Path::new("core/planted.rs"), text);
    assert_eq!(
        found,
        vec![
            "src/core/planted.rs:2: uses `std::fs`",
            "src/core/planted.rs:3: uses `std::process`",
            "src/core/planted.rs:5: names the outer module `repository`",
            "src/core/planted.rs:5: reaches outside the core: `crate::repository::Scan`",
            "src/core/planted.rs:6: uses `nix`",
            "src/core/planted.rs:7: names the outer module `daemon`",
            "src/core/planted.rs:7: reaches outside the core: `super::super::daemon::run`",
            "src/core/planted.rs:14: names the outer module `config`",
        ]
    );
    // The same text is fine outside the core's rules once the world is gone.
    let clean = "use crate::core::clock::Now;\nuse super::history;\nuse std::collections::BTreeMap;\n\
                 #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::key::Key;\n}\n";
    assert_eq!(
        core_violations(Path::new("core/planted.rs"), clean),
        Vec::<String>::new()
    );
}
