//! The module layout holds: no module of a crate reaches back into one that reaches it
//! (docs/architecture.md, "Layout"). A cycle between top-level modules means ownership
//! no longer points down; this test names it. And the crates say what they are: no
//! production crate depends on `local`, `examples` or `e2e`, and every test that starts a
//! process is in `e2e/tests`.
//!
//! It reads each crate's sources and takes every `crate::<module>` path outside comments
//! and test modules as an edge from the file's top-level module to that module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The edges of one crate's top-level modules.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("a file name");
        // The crate root and binaries sit above every module; a `tests.rs` is test code.
        if top == "lib" || top == "main" || top == "bin" || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        // The module's depth: `rules/matcher.rs` is `rules::matcher`, `rules/mod.rs` is `rules`.
        let depth = rel.components().count() - usize::from(rel.ends_with("mod.rs"));
        let mut lines = text.lines().map(str::trim_start).peekable();
        while let Some(code) = lines.next() {
            // An inline test module ends the file's code: tests may use anything.
            if code.starts_with("#[cfg(test)]")
                && lines.peek().is_some_and(|l| l.starts_with("mod ") && l.ends_with('{'))
            {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for target in root_paths(code, depth) {
                if target != top {
                    graph.entry(top.clone()).or_default().insert(target);
                }
            }
        }
    }
    graph
}

/// The top-level modules a line names from the crate root: `crate::x`, or as many
/// `super::` as the module is deep.
fn root_paths(code: &str, depth: usize) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let starts_path = |i: usize| !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // `other_crate::` is another crate; `$crate::` is this one.
        if starts_path(i) {
            found.push(ident(&code[i + "crate::".len()..]));
        }
    }
    for (i, _) in code.match_indices("super::") {
        if !starts_path(i) {
            continue;
        }
        let mut rest = &code[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            up += 1;
        }
        if up == depth {
            found.push(ident(rest));
        }
    }
    found.retain(|t| !t.is_empty());
    found
}

/// One cycle, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_reaches_back_into_one_that_reaches_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in ["common", "gateway", "sidecar", "local", "examples", "e2e"] {
        let graph = graph(&root.join(krate).join("src"));
        // The gateway's modules use each other: no edges means the reader is broken.
        assert!(krate != "gateway" || graph.len() > 4, "gateway: no module edges read");
        if let Some(cycle) = find_cycle(&graph) {
            found.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import cycles between modules:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// `[dependencies]` names of a crate's manifest (not dev- or build-dependencies).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && let Some((name, _)) = line.split_once('=') {
            out.push(name.trim().trim_end_matches(".workspace").to_string());
        }
    }
    out
}

#[test]
fn no_production_crate_depends_on_the_local_ecs_the_demos_or_the_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["common", "gateway", "sidecar"] {
        let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("manifest");
        let deps = dependencies(&manifest);
        assert!(deps.iter().any(|d| d == "tokio"), "{krate}: no dependencies read");
        for other in ["berth-local", "berth-examples", "berth-e2e"] {
            assert!(!deps.iter().any(|d| d == other), "{krate} depends on {other}");
        }
    }
}

#[test]
fn every_test_that_starts_a_process_is_in_e2e() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in ["common", "gateway", "sidecar", "local", "examples"] {
        let dir = root.join(krate).join("tests");
        let mut files = Vec::new();
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).expect("test source");
            // Split so that this file does not match itself.
            let starts = [
                concat!("Command", "::new"),
                concat!("CARGO_BIN", "_EXE_"),
                concat!(".spawn", "()"),
            ];
            if starts.iter().any(|p| text.contains(p)) {
                found.push(file.display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "tests that start processes outside e2e/tests: {found:?}"
    );
    let e2e = std::fs::read_dir(root.join("e2e/tests")).expect("e2e/tests").count();
    assert!(e2e > 10, "e2e/tests holds {e2e} files");
}
