//! One door for key files: no code but the repository's executor (and the filesystem
//! primitives it is built from) writes, renames, links or removes a name through a `Dir`, so
//! no key file or repair copy changes without an approval from the gate.
//!
//! A textual check of every file in `src/`: `.write_new(`, `.rename(`, `.rename_durable(` and
//! `.link(` anywhere; `.remove(` in `src/repository/`, the only place a `Dir` can be named
//! (its module is private to the repository and the type is not re-exported), so a map's
//! `remove` elsewhere is no write.

use std::path::{Path, PathBuf};

/// The two files allowed to call a `Dir`'s mutating methods.
const ALLOWED: &[&str] = &["src/repository/executor.rs", "src/repository/fsio.rs"];

/// Methods that change a directory's names, on any receiver.
const EVERYWHERE: &[&str] = &[".write_new(", ".rename(", ".rename_durable(", ".link("];

/// `.remove(` changes a name only on a `Dir`, which lives in this directory.
const DIR_HOME: &str = "src/repository/";

/// Every `(line number, line)` of `text` (the file `path`, relative to the crate) that calls
/// a `Dir`'s mutating method; comments are skipped.
fn offenders(path: &str, text: &str) -> Vec<(usize, String)> {
    if ALLOWED.contains(&path) {
        return Vec::new();
    }
    let mut methods: Vec<&str> = EVERYWHERE.to_vec();
    if path.starts_with(DIR_HOME) {
        methods.push(".remove(");
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            methods.iter().any(|m| code.contains(m))
        })
        .map(|(i, line)| (i + 1, line.trim().to_string()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_executor_changes_key_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("repository/executor.rs")),
        "no executor in {files:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in offenders(&rel, &text) {
            found.push(format!("{rel}:{n}: {line}"));
        }
    }
    assert!(
        found.is_empty(),
        "a Dir's mutating method called outside the executor (go through \
         repository::executor with an approval from guard::approve; fernetd's own state \
         files through Dir::replace_own/remove_own):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_finds_a_planted_call_and_names_its_line() {
    let planted = "fn f(w: &Writer) {\n    // w.repo.remove(\"3\") in a comment is no call\n    \
                   w.internal\n        .write_new(\"x\", b\"\", None)?;\n    \
                   w.repo.remove(\"3\")?;\n}\n";
    let found = offenders("src/repository/mod.rs", planted);
    let lines: Vec<usize> = found.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, vec![4, 5], "{found:?}");
    assert!(found[1].1.contains("w.repo.remove"));
    // Outside the repository a map's remove is no write; a rename is flagged anywhere.
    assert!(offenders("src/history.rs", "keys.remove(&3);").is_empty());
    assert_eq!(
        offenders("src/daemon.rs", "d.rename(\"a\", &d, \"0\")?;").len(),
        1
    );
    // The executor and the primitives may.
    assert!(offenders("src/repository/executor.rs", planted).is_empty());
}
