//! The source tree's shape: every module opens with a `//!` line on its place in the flow, and the file-level
//! import graph of `src/` has no cycle (a file that imports another never ends up imported back by it, through
//! any chain), so each part can be read, changed and tested from the files below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`["request", "admit"]`) for every `.rs` file under `src/` (`mod.rs` and `lib.rs` name their
/// folder), with the file.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).expect("under src").with_extension("");
            let mut module: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of a file without its tests, comments and string contents.
fn code(text: &str) -> String {
    let text = text.find("#[cfg(test)]").map_or(text, |at| &text[..at]);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") || rest.starts_with("\\\"'") {
                    for _ in 0..rest.find('\'').unwrap_or(0) + 1 {
                        chars.next();
                    }
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path a `use` item names, its groups expanded: `use crate::a::{b, c::d};` gives `crate::a::b`, `crate::a::c::d`.
fn use_paths(code: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            let mut depth = 0;
            let mut start = 0;
            for (at, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(prefix, &inner[start..at], out);
                        start = at + 1;
                    }
                    _ => {}
                }
            }
            expand(prefix, &inner[start..], out);
            return;
        }
        if let Some(open) = tree.find("::{") {
            let mut longer = prefix.to_vec();
            longer.extend(tree[..open].split("::").map(|s| s.trim().to_owned()));
            expand(&longer, &tree[open + 2..], out);
            return;
        }
        let tree = tree.split(" as ").next().unwrap_or("");
        let mut path = prefix.to_vec();
        path.extend(tree.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(str::to_owned));
        if !path.is_empty() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand(&[], &rest[..end].split_whitespace().collect::<Vec<_>>().join(" "), &mut out);
        rest = &rest[end..];
    }
    out
}

/// Inline paths in the code (`crate::x::y`, `super::z`, `child::f`).
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts_word && (bytes[at].is_ascii_lowercase() || bytes[at] == b'_') {
            let mut end = at;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
            {
                end += 1;
            }
            let path = &code[at..end];
            if path.contains("::") {
                out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
            }
            at = end.max(at + 1);
        } else {
            at += 1;
        }
    }
    out
}

/// The module a path leads to: the longest prefix that is a module, resolved from `module`; `None` for paths
/// outside the crate.
fn resolve(modules: &BTreeMap<Vec<String>, PathBuf>, module: &[String], path: &[String]) -> Option<Vec<String>> {
    let is_child = |name: &str| {
        let mut child = module.to_vec();
        child.push(name.to_owned());
        modules.contains_key(&child)
    };
    let (mut base, rest): (Vec<String>, &[String]) = match path.first().map(String::as_str)? {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (module.to_vec(), &path[1..]),
        "super" => {
            let mut base = module.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        name if is_child(name) => (module.to_vec(), path),
        _ => return None,
    };
    let mut best = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if !modules.contains_key(&base) {
            break;
        }
        best = base.clone();
    }
    Some(best)
}

/// A cycle of the graph, if it has one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).expect("an open node is on the stack");
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_file_level_import_graph_of_src_has_no_cycle() {
    let modules = modules(&src());
    assert!(modules.len() > 40, "found the modules: {}", modules.len());
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &modules {
        let code = code(&std::fs::read_to_string(path).expect("a source file is readable"));
        let targets = edges.entry(module.clone()).or_default();
        for path in use_paths(&code).into_iter().chain(inline_paths(&code)) {
            if let Some(target) = resolve(&modules, module, &path).filter(|target| target != module) {
                targets.insert(target);
            }
        }
    }
    // The checker finds what it must: the request phases import the error file, the proxy the request phases.
    let edge = |from: &[&str], to: &[&str]| {
        let key = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        edges.get(&key(from)).is_some_and(|targets| targets.contains(&key(to)))
    };
    assert!(
        edge(&["request", "admit"], &["request", "error"]),
        "{:?}",
        edges.get(&vec!["request".into(), "admit".into()])
    );
    assert!(edge(&["proxy", "connect"], &["request", "admit"]));
    if let Some(cycle) = find_cycle(&edges) {
        let files: Vec<String> =
            cycle.iter().map(|m| modules[m].strip_prefix(src()).unwrap().display().to_string()).collect();
        panic!("an import cycle between files: {}", files.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle_through_a_re_export() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("lib.rs"), "//! x\npub mod a;\npub mod b;\n").unwrap();
    std::fs::write(root.join("a/mod.rs"), "//! x\npub mod inner;\npub use inner::Thing;\n").unwrap();
    std::fs::write(root.join("a/inner.rs"), "//! x\nuse crate::b::{self, Other as O};\npub struct Thing;\n").unwrap();
    std::fs::write(root.join("b.rs"), "//! x\nuse crate::a::Thing;\npub struct Other;\n").unwrap();
    let modules = modules(root);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &modules {
        let code = code(&std::fs::read_to_string(path).unwrap());
        for path in use_paths(&code).into_iter().chain(inline_paths(&code)) {
            if let Some(target) = resolve(&modules, module, &path).filter(|target| target != module) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let cycle = find_cycle(&edges).expect("a -> a::inner -> b -> a");
    assert_eq!(cycle.len(), 4, "{cycle:?}");
}

#[test]
fn every_module_opens_with_a_line_on_its_place_in_the_flow() {
    for path in modules(&src()).values() {
        let text = std::fs::read_to_string(path).expect("a source file is readable");
        assert!(text.starts_with("//! "), "{} does not open with a //! line", path.display());
    }
}
