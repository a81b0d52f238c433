//! The documentation against the tree, so neither can drift from the other:
//!
//! - ARCHITECTURE.md's Layout lists every path that exists and only those (the rules are written
//!   above the list itself);
//! - every page of `docs/` (and the README and ARCHITECTURE.md) is a doc test of the runtime
//!   crate, so its code blocks compile and run;
//! - every relative link between those pages points at a file that exists, and at a heading
//!   that exists there.
//!
//! Plain file reads: nothing here starts a broker.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The trees whose `.rs` files and folders must all be listed, each down to this many names
/// below it (`retry-kafka/src` at 2: `src/x.rs`, `src/dir/`, `src/dir/y.rs`, `src/dir/sub/`).
const CHECKED: &[(&str, usize)] = &[
    ("retry-kafka/src", 2),
    ("retry-kafka-macros/src", 2),
    ("retry-kafka-cli/src", 2),
    ("src", 2),
    ("tests", 1),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// One path of the Layout: as written, as resolved from the repository root, and its line.
struct Entry {
    path: String,
    line: usize,
    text: String,
}

/// The paths of the first ```text block after `## Layout` in ARCHITECTURE.md, and the unindented
/// folders that indented paths hang from.
fn layout() -> (Vec<Entry>, Vec<String>) {
    let text = read("ARCHITECTURE.md");
    let lines: Vec<&str> = text.lines().collect();
    let section = lines
        .iter()
        .position(|l| l.trim_end() == "## Layout")
        .expect("ARCHITECTURE.md has no `## Layout` heading");
    let open = section
        + lines[section..]
            .iter()
            .position(|l| l.trim_end() == "```text")
            .expect("the Layout section of ARCHITECTURE.md has no ```text block");
    let mut entries = Vec::new();
    let mut bases = Vec::new();
    let mut base: Option<String> = None;
    for (index, line) in lines.iter().enumerate().skip(open + 1) {
        if line.starts_with("```") {
            return (entries, bases);
        }
        let number = index + 1;
        let indent = line.len() - line.trim_start().len();
        let Some(token) = line.split_whitespace().next() else {
            continue;
        };
        let path = match indent {
            0 => {
                base = token.ends_with('/').then(|| token.to_string());
                token.to_string()
            }
            2 => {
                let Some(base) = &base else {
                    panic!(
                        "ARCHITECTURE.md line {number}: {token:?} is indented two spaces but the \
                         unindented line above it is not a folder (ending in `/`)"
                    )
                };
                if !bases.contains(base) {
                    bases.push(base.clone());
                }
                format!("{base}{token}")
            }
            _ => continue, // a description going on
        };
        assert!(
            !split_last(&path).0.contains('*'),
            "ARCHITECTURE.md line {number}: `*` may only stand in the last name of a path: {path}"
        );
        entries.push(Entry {
            path,
            line: number,
            text: line.trim_end().to_string(),
        });
    }
    panic!("ARCHITECTURE.md: the Layout's ```text block is not closed")
}

/// `*` matches any run of characters within one name.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && matches(rest, &tail[i..]))
        }
    }
}

/// Whether a Layout path names this tree path: the same folders, the last name matched.
fn names(pattern: &str, path: &str) -> bool {
    let (pattern_dir, pattern_name) = split_last(pattern);
    let (dir, name) = split_last(path);
    pattern_dir == dir && pattern.ends_with('/') == path.ends_with('/') && matches(pattern_name, name)
}

/// `a/b/c.rs` → (`a/b`, `c.rs`); `a/b/` → (`a`, `b`).
fn split_last(path: &str) -> (&str, &str) {
    let trimmed = path.trim_end_matches('/');
    trimmed.rsplit_once('/').unwrap_or(("", trimmed))
}

/// Every `.rs` file and folder of `dir`, down to `depth` names, relative to the repository root;
/// folders end in `/`.
fn tree(dir: &str, depth: usize, found: &mut BTreeSet<String>) {
    if depth == 0 {
        return;
    }
    let entries = fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("listing {dir}: {e}"));
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().expect("a UTF-8 file name");
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{dir}/{name}");
        if root().join(&path).is_dir() {
            found.insert(format!("{path}/"));
            tree(&path, depth - 1, found);
        } else if name.ends_with(".rs") {
            found.insert(path);
        }
    }
}

fn exists(pattern: &str) -> bool {
    let is_dir = |p: &Path| p.is_dir();
    if !pattern.contains('*') {
        let path = root().join(pattern);
        return if pattern.ends_with('/') {
            is_dir(&path)
        } else {
            path.exists()
        };
    }
    let (dir, _) = split_last(pattern);
    let Ok(entries) = fs::read_dir(root().join(dir)) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name().into_string().unwrap_or_default();
        let mut path = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        if entry.path().is_dir() {
            path.push('/');
        }
        names(pattern, &path)
    })
}

#[test]
fn layout_lists_every_path_and_only_paths_that_exist() {
    let (entries, bases) = layout();
    let mut problems = Vec::new();

    let stale: Vec<&Entry> = entries.iter().filter(|e| !exists(&e.path)).collect();
    if !stale.is_empty() {
        problems.push(
            "Listed, but there is no such path: delete these lines (with the indented \
                       lines under each that go on with its description) or correct the path:"
                .to_string(),
        );
        for entry in stale {
            problems.push(format!(
                "  line {}: {}    (the path {})",
                entry.line, entry.text, entry.path
            ));
        }
    }

    let mut found = BTreeSet::new();
    for (dir, depth) in CHECKED {
        tree(dir, *depth, &mut found);
    }
    let missing: Vec<&String> = found
        .iter()
        .filter(|path| !entries.iter().any(|e| names(&e.path, path)))
        .collect();
    if !missing.is_empty() {
        problems.push("Not listed: add each line below, with a few words on what it holds:".to_string());
        for path in missing {
            let under = bases
                .iter()
                .filter(|b| path.starts_with(b.as_str()))
                .max_by_key(|b| b.len());
            match under {
                Some(base) => problems.push(format!(
                    "  \"  {}\"   (indented two spaces, among the lines under \"{base}\")",
                    &path[base.len()..]
                )),
                None => problems.push(format!("  \"{path}\"   (unindented)")),
            }
        }
    }

    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's Layout (the ```text block under `## Layout`) does not match the tree.\n{}\n\
         Checked: every path listed; every .rs file and folder of {}.",
        problems.join("\n"),
        CHECKED
            .iter()
            .map(|(dir, depth)| format!(
                "{dir}/ ({depth} level{} down)",
                if *depth == 1 { "" } else { "s" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// The markdown pages whose code blocks must be doc tests, with the path `retry-kafka/src/lib.rs`
/// reads each from.
fn pages() -> Vec<(String, String)> {
    let mut pages = vec![
        ("README.md".to_string(), "../README.md".to_string()),
        ("ARCHITECTURE.md".to_string(), "../../ARCHITECTURE.md".to_string()),
    ];
    let mut docs: Vec<String> = fs::read_dir(root().join("docs"))
        .expect("listing docs/")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(
        docs.into_iter()
            .map(|name| (format!("docs/{name}"), format!("../../docs/{name}"))),
    );
    pages
}

#[test]
fn every_page_is_a_doc_test() {
    let lib = read("retry-kafka/src/lib.rs");
    let missing: Vec<String> = pages()
        .into_iter()
        .filter(|(_, from)| !lib.contains(&format!("include_str!(\"{from}\")")))
        .map(|(page, from)| {
            let module = Path::new(&page)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace('-', "_");
            format!("  {page}: add `#[doc = include_str!(\"{from}\")] mod {module} {{}}` to `mod guide`")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "pages whose code blocks are not doc tests (retry-kafka/src/lib.rs, `mod guide`):\n{}",
        missing.join("\n")
    );
}

/// GitHub's anchor for a heading: lower case, spaces as `-`, punctuation other than `-` and `_`
/// dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The targets of `[text](target)` links, outside code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut in_code = false;
        let bytes: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                '`' => in_code = !in_code,
                ']' if !in_code && bytes.get(i + 1) == Some(&'(') => {
                    if let Some(end) = bytes[i + 2..].iter().position(|&c| c == ')') {
                        found.push((index + 1, bytes[i + 2..i + 2 + end].iter().collect()));
                        i += 2 + end;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    found
}

#[test]
fn links_between_pages_resolve() {
    let mut broken = Vec::new();
    for (page, _) in pages() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                PathBuf::from(&page)
            } else {
                dir.join(file)
            };
            let full = root().join(&path);
            if !full.exists() {
                broken.push(format!("  {page}:{line}: {target} (no file {})", path.display()));
                continue;
            }
            if !fragment.is_empty()
                && full.is_file()
                && !anchors(&fs::read_to_string(&full).unwrap()).contains(fragment)
            {
                broken.push(format!(
                    "  {page}:{line}: {target} (no heading with the anchor #{fragment})"
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that lead nowhere:\n{}",
        broken.join("\n")
    );
}
