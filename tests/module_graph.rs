//! The runtime crate's modules import each other without a circle: the graph of `crate::`
//! paths between the crate's top-level modules (those `lib.rs` declares from files) is
//! acyclic, so each module can be read, tested and changed from the bottom up.
//!
//! The graph is read from the source text: every `crate::module` (in `use` lines and in paths,
//! including `use crate::{a, b}` lists) outside comments and unit-test modules. A failure names
//! each circle with the files that make its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module name → its source file, or its folder's files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("retry-kafka/src/lib.rs");
    let mut modules = BTreeMap::new();
    let mut path_attr: Option<String> = None;
    for line in lib.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#[path = \"") {
            path_attr = rest.split('"').next().map(str::to_owned);
            continue;
        }
        let declaration = ["pub mod ", "pub(crate) mod ", "mod "]
            .iter()
            .find_map(|prefix| line.strip_prefix(prefix));
        let Some(name) = declaration.and_then(|rest| rest.strip_suffix(';')) else {
            continue;
        };
        let file = path_attr.take().unwrap_or_else(|| format!("{name}.rs"));
        let mut files = Vec::new();
        let single = src.join(&file);
        if single.is_file() {
            files.push(single);
        }
        let folder = src.join(file.trim_end_matches(".rs"));
        if folder.is_dir() {
            collect(&folder, &mut files);
        }
        modules.insert(name.to_owned(), files);
    }
    modules
}

fn collect(folder: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(folder).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The modules a source text names through `crate::`, outside comments and its unit tests.
fn imports(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or(source);
    let mut names = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let list = rest
                .strip_prefix('{')
                .map(|list| list.split('}').next().unwrap_or(list));
            let heads: Vec<&str> = match list {
                Some(list) => list.split(',').map(str::trim).collect(),
                None => vec![rest],
            };
            for head in heads {
                let name: String = head
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// Strongly connected components with more than one module (Tarjan's algorithm).
fn circles(edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        circles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for next in self.edges.get(node).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next.as_str()]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[node].min(self.index[next.as_str()]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().position(|n| *n == node).unwrap();
                let component: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    self.circles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        circles: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.circles
}

#[test]
fn the_runtime_crates_modules_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("retry-kafka/src");
    let modules = modules(&src);
    assert!(
        ["runtime", "backend", "headers", "policy"]
            .iter()
            .all(|m| modules.contains_key(*m)),
        "lib.rs's module declarations were not read: {:?}",
        modules.keys()
    );
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, files) in &modules {
        edges.entry(module.clone()).or_default();
        for file in files {
            let source = fs::read_to_string(file).unwrap();
            for target in imports(&source) {
                if target != *module && modules.contains_key(&target) {
                    let shown = file.strip_prefix(&src).unwrap().display().to_string();
                    edges
                        .get_mut(module)
                        .unwrap()
                        .entry(target)
                        .or_default()
                        .insert(shown);
                }
            }
        }
    }
    let found = circles(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|circle| {
            let members: BTreeSet<&String> = circle.iter().collect();
            let arrows: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|(to, _)| members.contains(to))
                        .map(move |(to, files)| format!("  {from} -> {to} (in {files:?})"))
                })
                .collect();
            format!("a circle of {}:\n{}", circle.join(", "), arrows.join("\n"))
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_reader_sees_lists_paths_and_skips_comments_and_unit_tests() {
    let source = "use crate::{a, b::c};\n// crate::d\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests { use crate::h; }\n";
    let names: Vec<String> = imports(source).into_iter().collect();
    assert_eq!(names, ["a", "b", "e"]);
    let mut edges = BTreeMap::new();
    let edge = |to: &str| BTreeMap::from([(to.to_owned(), BTreeSet::new())]);
    edges.insert("x".to_owned(), edge("y"));
    edges.insert("y".to_owned(), edge("x"));
    edges.insert("z".to_owned(), edge("x"));
    assert_eq!(circles(&edges), [["x".to_owned(), "y".to_owned()]]);
}
