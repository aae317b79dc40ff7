//! The source tree's shape, checked: dependencies between modules point one way, and a file
//! stays short enough to read in one sitting.
//!
//! Every `crate::...` and `super::...` path in `src/` (outside comments) is resolved to the
//! module it names. A reference from module `a::x` to module `a::y` is an edge between the
//! siblings `x` and `y` of `a`; references between a module and its own ancestors or
//! descendants are not (a `mod.rs` declares and re-exports its children). The edges of every
//! set of siblings, the crate's top-level modules included, must form no cycle. A file longer
//! than [`MAX_LINES`] must say why in its first lines, with a `//! Over 400 lines:` line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 400;
const LONG_FILE_MARK: &str = "//! Over 400 lines:";

type ModulePath = Vec<String>;
type Edges = BTreeMap<ModulePath, BTreeSet<ModulePath>>;

/// A source file's length, and whether its top says why it is long.
struct FileLength {
    file: PathBuf,
    lines: usize,
    explained: bool,
}

fn src_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            src_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/jobs/finetune/mod.rs` is `jobs::finetune`; `src/jobs/ingest.rs` is `jobs::ingest`.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The module paths a line of code names, as written (`crate::a::b`, `super::c`), with
/// `crate::{a, b::c}` groups expanded.
fn referenced_paths(line: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        let mut rest = line;
        while let Some(at) = rest.find(root) {
            let preceded_by_ident =
                rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            let after = &rest[at + root.len()..];
            rest = after;
            if preceded_by_ident {
                continue;
            }
            let mut prefix = Vec::new();
            let mut tail = after;
            // `super::super::x`
            while root == "super::" && tail.starts_with("super::") {
                prefix.push("super".to_owned());
                tail = &tail["super::".len()..];
            }
            if let Some(group) = tail.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let path = ident_path(item.trim());
                    if !path.is_empty() {
                        found.push((root.to_owned(), [prefix.clone(), path].concat()));
                    }
                }
            } else {
                let path = ident_path(tail);
                found.push((root.to_owned(), [prefix.clone(), path].concat()));
            }
        }
    }
    found
}

fn ident_path(text: &str) -> Vec<String> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    text[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(path: &[String], modules: &BTreeSet<ModulePath>) -> ModulePath {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

/// Modules of `src/` and each module's references to others, resolved.
fn dependencies(src: &Path) -> (Edges, Vec<FileLength>) {
    let mut files = Vec::new();
    src_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<ModulePath> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges = Edges::new();
    let mut sizes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let head: Vec<&str> = text.lines().take(40).collect();
        sizes.push(FileLength {
            file: file.clone(),
            lines: text.lines().count(),
            explained: head.iter().any(|l| l.starts_with(LONG_FILE_MARK)),
        });
        let from = module_of(src, file);
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (root, path) in referenced_paths(line) {
                let absolute = if root == "crate::" {
                    path
                } else {
                    // `super` of `a::b` (a file b.rs, or b/mod.rs) is `a`; each further `super` goes up one.
                    let ups = 1 + path.iter().take_while(|p| *p == "super").count();
                    let base_len = from.len().saturating_sub(ups);
                    [from[..base_len].to_vec(), path.into_iter().filter(|p| p != "super").collect()].concat()
                };
                let target = resolve(&absolute, &modules);
                if target != from {
                    edges.entry(from.clone()).or_default().insert(target);
                }
            }
        }
    }
    (edges, sizes)
}

/// Edges between siblings: for `a::x::... -> a::y::...`, the edge `x -> y` among `a`'s children.
fn sibling_graphs(
    edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
) -> BTreeMap<ModulePath, BTreeSet<(String, String)>> {
    let mut graphs: BTreeMap<ModulePath, BTreeSet<(String, String)>> = BTreeMap::new();
    for (from, targets) in edges {
        for to in targets {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < to.len() {
                graphs.entry(from[..common].to_vec()).or_default().insert((from[common].clone(), to[common].clone()));
            }
        }
    }
    graphs
}

/// Every edge of the graph that lies on a cycle, as `a -> b -> ... -> a`: the edge followed by
/// a way back from `b` to `a`.
fn cycles(graph: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in graph {
        next.entry(a).or_default().push(b);
    }
    // A path from `from` to `to`, found breadth-first.
    let path = |from: &str, to: &str| -> Option<Vec<String>> {
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            if node == to {
                let mut way = vec![to.to_owned()];
                let mut at = to;
                while at != from {
                    at = came_from[at];
                    way.push(at.to_owned());
                }
                way.reverse();
                return Some(way);
            }
            for &n in next.get(node).into_iter().flatten() {
                if n != from && !came_from.contains_key(n) {
                    came_from.insert(n, node);
                    queue.push_back(n);
                }
            }
        }
        None
    };
    graph.iter().filter_map(|(a, b)| path(b, a).map(|back| [vec![a.clone()], back].concat())).collect()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_cycle_between_sibling_modules() {
    let (edges, _) = dependencies(&src_dir());
    let graphs = sibling_graphs(&edges);
    assert!(graphs.contains_key(&Vec::new()), "top-level edges found: {:?}", graphs.keys().collect::<Vec<_>>());
    let cycles: Vec<String> = graphs
        .iter()
        .flat_map(|(parent, graph)| {
            cycles(graph).into_iter().map(move |c| format!("in `crate::{}`: {}", parent.join("::"), c.join(" -> ")))
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn long_files_say_why() {
    let (_, sizes) = dependencies(&src_dir());
    let unexplained: Vec<String> = sizes
        .iter()
        .filter(|f| f.lines > MAX_LINES && !f.explained)
        .map(|f| format!("{} ({} lines)", f.file.display(), f.lines))
        .collect();
    assert!(
        unexplained.is_empty(),
        "files over {MAX_LINES} lines without a `{LONG_FILE_MARK}` line at the top:\n{}",
        unexplained.join("\n")
    );
}

#[test]
fn the_checker_sees_a_cycle_and_resolves_paths() {
    let graph: BTreeSet<(String, String)> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")].iter().map(|(x, y)| (x.to_string(), y.to_string())).collect();
    let found = cycles(&graph);
    assert_eq!(found.len(), 3, "the three edges of a -> b -> c -> a, not c -> d: {found:?}");
    assert!(found.iter().all(|c| c.first() == c.last()), "{found:?}");
    let acyclic: BTreeSet<(String, String)> =
        [("a", "b"), ("b", "c"), ("a", "c")].iter().map(|(x, y)| (x.to_string(), y.to_string())).collect();
    assert!(cycles(&acyclic).is_empty());
    let refs = referenced_paths("use crate::{db::jobs::Job, state::AppState}; let x = super::split::gather(y);");
    let paths: Vec<String> = refs.iter().map(|(root, p)| format!("{root}{}", p.join("::"))).collect();
    assert_eq!(paths, ["crate::db::jobs::Job", "crate::state::AppState", "super::split::gather"]);
}
