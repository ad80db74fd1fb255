//! The crate's module graph has no circles: data flows one way (handler → queue → store →
//! MySQL → fetch loop → executor → completer → store), and what several roles share lives
//! in leaf modules (the wake signal, queue state, job events, timing). This test reads the
//! sources, so an arrow back up fails CI with the circle it closes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Code lines of a file: not comments, not its tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names a path written after `prefix` starts with: `prefix name`, or each
/// first name of a list `prefix {a, b::c, D}`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            names.extend(list.split(',').map(ident));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Top-level module → the top-level modules its code names through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned();
            if matches!(top.as_str(), "lib" | "bin" | "module_graph") {
                continue;
            }
            let deps = graph.entry(top.clone()).or_default();
            deps.extend(names_after(&code(&path), "crate::"));
            deps.remove(&top);
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// The roles of one folder (its files but `mod.rs`, the folder's face, which declares them
/// and whose shared types they use) → the roles of the same folder each one names
/// (`super::x`, `crate::folder::x`).
fn folder_graph(folder: &str) -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(folder);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let in_folder = format!("crate::{}::", folder.replace('/', "::"));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let mut deps = BTreeSet::new();
        if path.is_dir() {
            // A role that is a folder of its own: its face names siblings through
            // `super::`, its files through `super::super::` or the full path.
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                let code = code(&file);
                if file.file_stem().is_some_and(|s| s == "mod") {
                    deps.extend(names_after(&code, "super::"));
                }
                deps.extend(names_after(&code, "super::super::"));
                deps.extend(names_after(&code, &in_folder));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "mod" {
            let code = code(&path);
            deps.extend(names_after(&code, "super::"));
            deps.extend(names_after(&code, &in_folder));
        } else {
            continue;
        }
        deps.remove(stem);
        graph.insert(stem.to_owned(), deps);
    }
    let roles: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| roles.contains(d));
    }
    graph
}

/// A circle through `from`, if there is one (depth-first search).
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let here = path.last()?.clone();
    for next in &graph[&here] {
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut found = path[i..].to_vec();
            found.push(next.clone());
            return Some(found);
        }
        if done.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(found) = circle(graph, path, done) {
            return Some(found);
        }
        path.pop();
    }
    done.insert(here);
    None
}

fn assert_no_circle(what: &str, graph: &BTreeMap<String, BTreeSet<String>>) {
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = circle(graph, &mut vec![module.clone()], &mut done) {
            panic!("a circle in {what}: {}", found.join(" → "));
        }
    }
}

#[test]
fn the_module_graph_has_no_circle() {
    let graph = graph();
    assert!(graph.len() > 15, "read the sources: {graph:?}");
    assert!(
        graph["runtime"].contains("store"),
        "reads arrows: {graph:?}"
    );
    assert!(graph["queue"].contains("runtime"), "reads lists: {graph:?}");
    assert_no_circle("the module graph", &graph);
}

#[test]
fn the_roles_of_each_folder_have_no_circle() {
    let runtime = folder_graph("runtime");
    assert!(runtime["fetcher"].contains("executor"), "{runtime:?}");
    assert!(runtime["fetcher"].contains("pacing"), "{runtime:?}");
    for folder in [
        "runtime",
        "store",
        "queue",
        "maintenance",
        "cli",
        "dashboard",
    ] {
        assert_no_circle(&format!("src/{folder}/"), &folder_graph(folder));
    }
}
