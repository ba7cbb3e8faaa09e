//! The module import graph, recomputed from `src/` on every test run: no
//! cycle between top-level modules except those docs/architecture.md
//! documents, and the layering rules it states (the planner never reads the
//! journal or drives systemd, the leaves import nothing of moorline, ...).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles docs/architecture.md explains, each as its sorted module names.
const ALLOWED_CYCLES: &[&[&str]] = &[&["config", "unit"], &["demo", "testkit"]];

/// `(module, modules it must not import)`: the one-way flow.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The leaves: moorline's own helpers, importing nothing of moorline.
    ("files", &["*"]),
    ("visible", &["*"]),
    ("template", &["*"]),
    ("exit", &["*"]),
    ("upstream", &["*"]),
    // The planner is a pure function of config, git and host view.
    (
        "plan",
        &[
            "journal", "execute", "systemd", "commands", "fleet", "render",
        ],
    ),
    // Renderers are pure functions of the plan.
    (
        "render",
        &["execute", "systemd", "journal", "commands", "fleet"],
    ),
    // The configuration knows nothing downstream of it but the unit
    // writer (the documented cycle).
    (
        "config",
        &["plan", "execute", "state", "journal", "systemd", "git"],
    ),
    // Only commands and fleet sit above the executor.
    ("execute", &["commands", "fleet"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules its non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let deps = g.entry(top.clone()).or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
                // `use crate::{a, b::c}`
                if let Some(inner) = rest.strip_prefix('{') {
                    let group = inner.split('}').next().unwrap_or_default();
                    for item in group.split(',') {
                        let name = item.trim().split("::").next().unwrap_or_default();
                        if !name.is_empty() && name != top && name != "self" {
                            deps.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    g
}

/// The strongly connected components with more than one module.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let names: Vec<&String> = g.keys().collect();
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            for d in g.get(&n).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        names.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &names {
        if done.contains(*n) {
            continue;
        }
        let mut comp: Vec<String> = names
            .iter()
            .filter(|m| reaches[*n].contains(**m) && reaches[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        if comp.len() > 1 {
            comp.sort();
            done.extend(comp.iter().cloned());
            out.push(comp);
        }
    }
    out
}

#[test]
fn the_import_graph_has_only_the_documented_cycles() {
    let g = graph();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    for comp in cycles(&g) {
        let edges: Vec<String> = comp
            .iter()
            .flat_map(|a| {
                g[a].iter()
                    .filter(|b| comp.contains(b))
                    .map(move |b| format!("{a} → {b}"))
            })
            .collect();
        assert!(
            ALLOWED_CYCLES
                .iter()
                .any(|c| c.iter().copied().eq(comp.iter().map(String::as_str))),
            "modules {comp:?} import each other ({}); break the cycle (docs/architecture.md says where code goes)",
            edges.join(", ")
        );
    }
    for c in ALLOWED_CYCLES {
        let named = c.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>();
        assert!(
            named.iter().all(|m| doc.contains(m.as_str())) && doc.contains("## Allowed cycles"),
            "docs/architecture.md must explain the cycle {c:?} under `## Allowed cycles`"
        );
    }
}

#[test]
fn each_layer_imports_only_what_lies_below_it() {
    let g = graph();
    let mut broken = Vec::new();
    for (module, banned) in FORBIDDEN {
        let deps = g
            .get(*module)
            .unwrap_or_else(|| panic!("no module `{module}` in src/"));
        for d in deps {
            if banned.contains(&"*") || banned.contains(&d.as_str()) {
                broken.push(format!("{module} → {d}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layering: {broken:?}"
    );
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    // The checker itself, on a graph with a known cycle.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    assert_eq!(cycles(&g), [["a", "b", "c"]]);
    let real = graph();
    assert!(real["plan"].contains("config"), "{:?}", real["plan"]);
}
