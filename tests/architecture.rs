//! The crate's import graph has no cycle, and its top-level modules import only the layers
//! below them: every `crate::…` / `super::…` path in a file under `src/` (outside comments and
//! its `#[cfg(test)] mod tests`) is an edge from that file's module to the deepest module the
//! path names; following the edges never comes back, and an edge between two top-level modules
//! goes down [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`; `src/lib.rs` → `` (the crate root).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts.join("::")
}

fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ readable")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).expect("under src");
            if rel == Path::new("main.rs") {
                continue; // the binary, a crate of its own
            }
            let text = std::fs::read_to_string(&p).expect("source readable");
            out.insert(module_of(rel), text);
        }
    }
}

/// The source without comments and without the unit-test module at its end.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths of a use tree that starts at `s` (just after `crate::`): `a::b`, `a::{b, c::d}`.
fn use_paths(s: &str) -> (Vec<String>, usize) {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut prefix = String::new();
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        prefix.push_str(&s[start..i]);
        if s[i..].starts_with("::{") {
            i += 3;
            let mut out = Vec::new();
            loop {
                while i < bytes.len() && (bytes[i] as char).is_whitespace() {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return (out, i + 1);
                }
                let (inner, used) = use_paths(&s[i..]);
                out.extend(inner.into_iter().map(|p| format!("{prefix}::{p}")));
                i += used;
                while i < bytes.len() && (bytes[i] == b',' || (bytes[i] as char).is_whitespace()) {
                    i += 1;
                }
            }
        } else if s[i..].starts_with("::") && start != i {
            i += 2;
            prefix.push_str("::");
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The deepest module of `mods` that `path` names, if any.
fn resolve(path: &str, mods: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods = BTreeMap::new();
    walk(&root, &root, &mut mods);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let src = code(text);
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p).to_string();
        let mut targets = Vec::new();
        for (anchor, base) in [("crate::", String::new()), ("super::", parent)] {
            let mut rest = src.as_str();
            while let Some(i) = rest.find(anchor) {
                let before = rest[..i].chars().last();
                let after = &rest[i + anchor.len()..];
                // `crate::` inside another name (e.g. `$crate::` counts; `my_crate::` does not)
                if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    let (paths, _) = use_paths(after);
                    for p in paths {
                        let full = if base.is_empty() {
                            p
                        } else {
                            format!("{base}::{p}")
                        };
                        targets.push(full);
                    }
                }
                rest = after;
            }
        }
        let set = edges.entry(m.clone()).or_default();
        for t in targets {
            if let Some(to) = resolve(&t, &mods) {
                // A module may name itself or its own children (`crate::this::Child`).
                if to != *m && !to.starts_with(&format!("{m}::")) && !m.is_empty() {
                    set.insert(to);
                }
            }
        }
    }
    edges
}

/// A cycle through the graph, as the list of modules on it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == next).expect("on the stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_use_tree_parser_expands_nested_groups() {
    let (p, _) = use_paths("a::{b, c::{d, e}, f::g};");
    assert_eq!(p, ["a::b", "a::c::d", "a::c::e", "a::f::g"]);
    let (p, _) = use_paths("run::fold_dir(&x)");
    assert_eq!(p, ["run::fold_dir"]);
}

#[test]
fn the_cycle_finder_finds_a_loop_and_passes_a_tree() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn the_import_graph_has_no_cycle() {
    let edges = graph();
    assert!(edges.len() > 20, "found only {} modules", edges.len());
    // The graph, for the reader of a failure.
    for (m, to) in &edges {
        eprintln!(
            "{m} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

/// The top-level modules, bottom up (`docs/architecture.md` says what each holds and why this
/// order): a module may import only modules of earlier layers. Modules of one layer do not
/// import each other.
const LAYERS: &[&[&str]] = &[
    &["env"],
    &["run"],
    &["qa"],
    &["device"],
    &["ui"],
    &["model"],
    &["artifacts"],
    &["retrieve"],
    &["train"],
    &["settings"],
    &["tensorboard", "report"],
    &["stages"],
    &["launch"],
    &["combine"],
    &["sweep", "infer", "bench"],
    &["commands"],
    &["cli"],
];

/// The edges between top-level modules that go up or sideways in [`LAYERS`], and the
/// top-level modules [`LAYERS`] does not place.
fn layer_violations(edges: &BTreeMap<String, BTreeSet<String>>) -> (Vec<String>, Vec<String>) {
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut bad = BTreeSet::new();
    let mut unplaced = BTreeSet::new();
    for (from, tos) in edges {
        for to in tos {
            let (a, b) = (top(from), top(to));
            if a == b {
                continue;
            }
            match (layer(&a), layer(&b)) {
                (Some(x), Some(y)) if y < x => {}
                (Some(_), Some(_)) => {
                    bad.insert(format!("{from} -> {to}"));
                }
                _ => {
                    unplaced.extend([a, b].into_iter().filter(|m| layer(m).is_none()));
                }
            }
        }
    }
    (bad.into_iter().collect(), unplaced.into_iter().collect())
}

#[test]
fn the_layer_check_refuses_an_upward_import() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("stages::train".into())
        .or_default()
        .insert("run::layout".into());
    assert_eq!(layer_violations(&g), (vec![], vec![]));
    g.entry("device".into())
        .or_default()
        .insert("model::amp".into());
    g.entry("newthing".into()).or_default().insert("run".into());
    assert_eq!(
        layer_violations(&g),
        (vec!["device -> model::amp".into()], vec!["newthing".into()])
    );
}

#[test]
fn top_level_modules_import_only_the_layers_below() {
    let (bad, unplaced) = layer_violations(&graph());
    assert!(
        unplaced.is_empty(),
        "top-level modules missing from LAYERS: {unplaced:?}"
    );
    assert!(
        bad.is_empty(),
        "imports against the layer order:\n{}",
        bad.join("\n")
    );
}
