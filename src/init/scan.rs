//! Files → [`Scan`]: which directories are services and of what kind, how
//! each is installed, built, started and checked, what existing unit files
//! and nginx configuration say. Every value is a [`Guess`] that says where
//! it came from. Pure: reads only the [`Files`] value.

use std::collections::{BTreeMap, BTreeSet};

use super::dirs::MARKERS;
use super::entry::{self, For};
use super::source::{self, Listen};
use super::{
    Deps, Files, FoundUnit, Guess, InitError, Kind, Migrate, PortUse, Proxy, Runtime, RuntimeSpec,
    Scan, Service, usable,
};
use crate::unit::reader;

/// Ports assigned to services nothing says anything about start here.
const PORT_BASE: u16 = 3000;

/// What the repository says, as a scan; an error when it has no service.
pub(crate) fn scan(files: &Files) -> Result<Scan, InitError> {
    let mut notes = Vec::new();
    let (mut dirs, left_out) = super::dirs::classify(files);
    let root_marker = MARKERS.iter().find(|m| files.paths.contains(**m));
    let root_only = dirs.is_empty();
    if root_only {
        let Some(marker) = root_marker else {
            let shown: Vec<String> = left_out
                .iter()
                .filter(|l| l.unhandled)
                .take(10)
                .map(|l| {
                    format!(
                        "{} ({})",
                        l.path,
                        l.reason.split(": init ").next().unwrap_or("")
                    )
                })
                .collect();
            let more = left_out
                .iter()
                .filter(|l| l.unhandled)
                .count()
                .saturating_sub(10);
            return Err(InitError::NothingFound {
                dir: files.dir_name.clone(),
                seen: if shown.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it saw, and cannot deploy: {}{}",
                        shown.join(", "),
                        if more > 0 {
                            format!(", and {more} more")
                        } else {
                            String::new()
                        }
                    )
                },
            });
        };
        notes.push(format!(
            "the root's {marker} is the only service: it deploys the whole repository (`path \".\"`), and every commit redeploys it"
        ));
        dirs.push(crate::config::ROOT_PATH.to_owned());
    } else if let Some(marker) = root_marker {
        notes.push(format!(
            "the root's {marker} is taken as the repository's tooling (a workspace), not as a service"
        ));
    }
    let project = sanitize(&files.dir_name).map_or_else(
        || Guess::assumed("app".to_owned(), "the directory's name is not a valid name"),
        |p| Guess::found(p, "the repository's directory name"),
    );
    let branch = match files.branch.as_deref().filter(|b| usable(b)) {
        Some(b) => Guess::found(b.to_owned(), "the branch checked out now"),
        None => Guess::assumed(
            "main".to_owned(),
            "not a git repository, or no branch checked out",
        ),
    };

    let mut services: Vec<Service> = Vec::new();
    let mut names = BTreeSet::new();
    for dir in &dirs {
        let base = if root_only {
            // Named after the repository, like the project.
            project.value.as_str()
        } else {
            dir.rsplit('/').next().unwrap_or(dir)
        };
        let Some(mut name) = sanitize(base) else {
            notes.push(format!(
                "{dir}: its name cannot be a service name; left out"
            ));
            continue;
        };
        if names.contains(&name) {
            match sanitize(&dir.replace('/', "-")) {
                Some(n) if !names.contains(&n) => name = n,
                _ => {
                    notes.push(format!("{dir}: a second service named {name}; left out"));
                    continue;
                }
            }
        }
        names.insert(name.clone());
        services.push(service(files, dir, name, &mut notes));
    }

    let units = unit_files(files, &mut notes);
    let unit_name = match_units(&mut services, &units, &project.value, &mut notes);
    found_ports(&mut services, files);
    depends_on(&mut services);
    assign_ports(&mut services, &mut notes);
    let infrastructure = infrastructure(&services, &units);
    let runtimes = group_runtimes(&mut services);
    let proxy = proxy(files, &services, &mut notes);
    Ok(Scan {
        project,
        branch,
        unit_name,
        infrastructure,
        runtimes,
        services,
        proxy,
        left_out,
        notes,
    })
}

/// `rel` under the service directory `dir` (`.`: the repository root).
pub(super) fn join(dir: &str, rel: &str) -> String {
    crate::config::join_path(dir, rel)
}

/// What every path under `dir` starts with (`""` for the repository root).
pub(super) fn prefix(dir: &str) -> String {
    if dir == crate::config::ROOT_PATH {
        String::new()
    } else {
        format!("{dir}/")
    }
}

fn has_any(files: &Files, dir: &str, names: &[&str]) -> bool {
    names.iter().any(|n| files.paths.contains(&join(dir, n)))
}

fn package_json(files: &Files, dir: &str) -> Option<serde_json::Value> {
    let text = files.text.get(&join(dir, "package.json"))?;
    serde_json::from_str(text).ok()
}

/// A name as the configuration accepts it: letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit, at most 64 bytes.
pub(super) fn sanitize(raw: &str) -> Option<String> {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name: String = trimmed.chars().take(64).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    (!name.is_empty()).then_some(name)
}

fn service(files: &Files, dir: &str, name: String, notes: &mut Vec<String>) -> Service {
    let (kind, spec, migrate, start, watch) = if has_any(files, dir, &["go.mod"]) {
        let (spec, exec) = go(files, dir, &name);
        let start = entry::Start { exec, port: None };
        (Kind::Go, spec, None, start, Vec::new())
    } else if has_any(files, dir, &["package.json"]) {
        let (spec, migrate, start, watch) = node(files, dir, &name, notes);
        (Kind::Node, spec, migrate, start, watch)
    } else {
        let (spec, start) = python(files, dir, &name);
        (Kind::Python, spec, None, start, Vec::new())
    };
    let also: Vec<&str> = MARKERS
        .iter()
        .copied()
        .filter(|m| has_any(files, dir, &[m]))
        .collect();
    if also.len() > 1 {
        notes.push(format!(
            "{dir}: has {}; taken as a {} service",
            also.join(", "),
            kind.name()
        ));
    }
    let sources = sources(files, dir);
    let grpc = source::grpc_server(&sources);
    let (health, ready) = health_paths(&sources, grpc.as_deref());
    let takes_port = start.exec.value.iter().any(|w| w.contains("{port}"));
    let port = match start.port {
        // Below 1024 only root may listen; the command takes any port.
        Some(p) if p < 1024 => Guess::assumed(
            0,
            format!(
                "its start command bound port {p} (only root may listen there); the command now takes `{{port}}`"
            ),
        ),
        Some(p) => Guess::found(
            p,
            format!("the port its start command bound ({})", start.exec.from),
        ),
        None => Guess::assumed(0, "unassigned"),
    };
    Service {
        name,
        path: dir.to_owned(),
        kind,
        runtime: String::new(),
        spec,
        migrate,
        port,
        port_use: if takes_port {
            PortUse::Command
        } else {
            PortUse::Port
        },
        exec: start.exec,
        grpc,
        health,
        ready,
        watch,
        depends_on: Vec::new(),
        unit: None,
    }
}

/// The service's source files (path, text), without tests.
fn sources<'a>(files: &'a Files, dir: &str) -> Vec<(&'a str, &'a str)> {
    let prefix = prefix(dir);
    files
        .text
        .iter()
        .filter(|(p, _)| {
            p.starts_with(&prefix)
                && super::is_source(p)
                && !p[prefix.len()..].split('/').any(|c| {
                    matches!(
                        c,
                        "test" | "tests" | "__tests__" | "__mocks__" | "testdata" | "cypress" | "e2e"
                    )
                })
                // Tool configuration (`cypress.config.ts`, `karma.conf.js`).
                && !p.rsplit('/').next().is_some_and(is_tool_config)
        })
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect()
}

/// A build, test or lint tool's configuration file, not the app's source.
fn is_tool_config(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains(".config.")
        || lower.contains(".conf.")
        || [
            "karma",
            "webpack",
            "jest",
            "babel",
            "eslint",
            "protractor",
            "vite",
            "rollup",
            "gulpfile",
            "gruntfile",
            "tailwind",
            "postcss",
            "setupproxy",
            "setuptests",
        ]
        .iter()
        .any(|t| lower.starts_with(t))
}

/// The `exec` of a service whose start command init did not find:
/// validation refuses it until a person writes one.
fn todo_exec(name: &str, why: &str) -> Guess<Vec<String>> {
    Guess::assumed(
        vec![format!(
            "{} write the command that starts {name}",
            crate::config::INIT_TODO
        )],
        format!("TODO: {why}; `moorline validate` refuses this until it is written"),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeManager {
    Npm,
    Pnpm,
    Yarn,
}

type NodeParts = (
    RuntimeSpec,
    Option<Migrate>,
    entry::Start,
    Vec<Guess<String>>,
);

fn node(files: &Files, dir: &str, name: &str, notes: &mut Vec<String>) -> NodeParts {
    let pkg_path = join(dir, "package.json");
    let pkg = package_json(files, dir).unwrap_or_else(|| {
        notes.push(format!(
            "{pkg_path}: not valid JSON; its scripts were not read"
        ));
        serde_json::Value::Null
    });
    let lock_in = |d: &str| -> Option<(NodeManager, &'static str)> {
        let at = |n: &str| {
            if d.is_empty() {
                files.paths.contains(n)
            } else {
                files.paths.contains(&join(d, n))
            }
        };
        if at("pnpm-lock.yaml") {
            Some((NodeManager::Pnpm, "pnpm-lock.yaml"))
        } else if at("yarn.lock") {
            Some((NodeManager::Yarn, "yarn.lock"))
        } else if at("package-lock.json") {
            Some((NodeManager::Npm, "package-lock.json"))
        } else {
            None
        }
    };
    let has_script = |s: &str| pkg.pointer(&format!("/scripts/{s}")).is_some();
    let build_script = has_script("build");
    let prisma = files.paths.contains(&join(dir, "prisma/schema.prisma"));
    let prisma_dev = pkg.pointer("/devDependencies/prisma").is_some();
    // A build (TypeScript) or a migration with a dev-only prisma needs the
    // dev dependencies installed.
    let all = build_script || (prisma && prisma_dev);
    let mut watch = Vec::new();
    let (manager, local_lock) = match (lock_in(dir), lock_in("")) {
        (Some((m, f)), _) => (m, Some(f)),
        (None, Some((m, f))) => {
            watch.push(Guess::found(
                f.to_owned(),
                "the workspace's lockfile: a change there can change this service's dependencies",
            ));
            (m, None)
        }
        (None, None) => (NodeManager::Npm, None),
    };
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (bin, mut argv, prod) = match (manager, local_lock) {
        (NodeManager::Npm, Some(_)) => ("npm", words(&["npm", "ci"]), "--omit=dev"),
        (NodeManager::Npm, None) => ("npm", words(&["npm", "install"]), "--omit=dev"),
        (NodeManager::Pnpm, Some(_)) => (
            "pnpm",
            words(&["pnpm", "install", "--frozen-lockfile"]),
            "--prod",
        ),
        (NodeManager::Pnpm, None) => ("pnpm", words(&["pnpm", "install"]), "--prod"),
        (NodeManager::Yarn, Some(_)) => (
            "yarn",
            words(&["yarn", "install", "--frozen-lockfile"]),
            "--production",
        ),
        (NodeManager::Yarn, None) => ("yarn", words(&["yarn", "install"]), "--production"),
    };
    if !all {
        argv.push(prod.to_owned());
    }
    let mut inputs = vec!["package.json".to_owned()];
    inputs.extend(local_lock.map(str::to_owned));
    let why = match local_lock {
        Some(l) => format!("{l} found: installs exactly what it pins"),
        None if !watch.is_empty() => "the lockfile is at the repository root (a workspace), outside the service's release directory: versions are resolved anew on each rebuild; check".to_owned(),
        None => "no lockfile: versions are resolved anew on each rebuild; commit one".to_owned(),
    };
    let why = if all {
        format!("{why}; with dev dependencies, which the build or prisma needs")
    } else {
        why
    };
    let run = |script: &str| -> Vec<String> {
        match manager {
            NodeManager::Yarn => words(&["yarn", script]),
            _ => words(&[bin, "run", script]),
        }
    };
    let build =
        build_script.then(|| Guess::found(run("build"), format!("scripts.build in {pkg_path}")));
    let migrate = prisma.then(|| {
        let exec: &[&str] = match manager {
            NodeManager::Npm => &["npx", "prisma"],
            NodeManager::Pnpm => &["pnpm", "exec", "prisma"],
            NodeManager::Yarn => &["yarn", "prisma"],
        };
        let with = |rest: &[&str]| exec.iter().chain(rest).map(|s| (*s).to_owned()).collect();
        Migrate {
            argv: with(&["migrate", "deploy"]),
            status: with(&["migrate", "status"]),
            if_exists: "prisma/schema.prisma".to_owned(),
            inputs: "prisma".to_owned(),
        }
    });
    let spec = RuntimeSpec {
        deps: Some(Deps {
            argv,
            inputs,
            outputs: vec!["node_modules".to_owned()],
            version: words(&["node", "--version"]),
            why,
        }),
        build,
        env: vec![("NODE_ENV".to_owned(), "production".to_owned())],
        manager: bin.to_owned(),
    };
    (spec, migrate, node_exec(files, dir, name, &pkg, bin), watch)
}

/// How a Node service starts: `scripts.start` when it is a plain `node
/// FILE`, else the Procfile's or Dockerfile's `node FILE`, else `main`,
/// else the start script through the package manager, else a usual entry
/// file; else a TODO.
fn node_exec(
    files: &Files,
    dir: &str,
    name: &str,
    pkg: &serde_json::Value,
    bin: &str,
) -> entry::Start {
    let pkg_path = join(dir, "package.json");
    let plain = |exec| entry::Start { exec, port: None };
    let start = pkg
        .pointer("/scripts/start")
        .and_then(serde_json::Value::as_str);
    if let Some(start) = start {
        let plain_words =
            !start.contains(['&', '|', ';', '$', '"', '\'', '`', '=', '<', '>', '\\']);
        let words: Vec<&str> = start.split_whitespace().collect();
        if plain_words && words.first() == Some(&"node") && words.iter().all(|w| usable(w)) {
            let mut argv = vec!["/usr/bin/node".to_owned()];
            let mut file_seen = false;
            for w in &words[1..] {
                if !file_seen && !w.starts_with('-') {
                    file_seen = true;
                    argv.push(format!("{{current}}/{}", w.trim_start_matches("./")));
                } else {
                    argv.push((*w).to_owned());
                }
            }
            if file_seen {
                return plain(Guess::found(
                    argv,
                    format!("scripts.start in {pkg_path} (`{start}`)"),
                ));
            }
        }
    }
    if let Some(found) = entry::declared(files, dir, For::Node) {
        return found;
    }
    if let Some(main) = pkg
        .get("main")
        .and_then(serde_json::Value::as_str)
        .filter(|m| usable(m) && !m.contains(char::is_whitespace))
    {
        return plain(Guess::found(
            vec![
                "/usr/bin/node".to_owned(),
                format!("{{current}}/{}", main.trim_start_matches("./")),
            ],
            format!("\"main\" in {pkg_path}"),
        ));
    }
    if let Some(start) = start {
        return plain(Guess::assumed(
            vec![format!("/usr/bin/{bin}"), "start".to_owned()],
            format!(
                "scripts.start in {pkg_path} (`{}`) runs through {bin}: check, or write the command it runs",
                clip(start)
            ),
        ));
    }
    for entry in [
        "server.js",
        "index.js",
        "app.js",
        "src/server.js",
        "src/index.js",
        "src/main.js",
    ] {
        if files.paths.contains(&join(dir, entry)) {
            return plain(Guess::assumed(
                vec!["/usr/bin/node".to_owned(), format!("{{current}}/{entry}")],
                format!(
                    "{dir}/{entry} exists; no start script, \"main\", Procfile or Dockerfile CMD says so"
                ),
            ));
        }
    }
    let nginx = files
        .text
        .get(&join(dir, "Dockerfile"))
        .map(|t| entry::dockerfile(t))
        .and_then(|d| d.images.last().cloned())
        .filter(|i| i.contains("nginx") || i.contains("httpd") || i.contains("caddy"));
    let why = match nginx {
        Some(image) => format!(
            "no start script, \"main\", Procfile or entry file found, and its Dockerfile serves files from {image}: a static site, which the proxy can serve from its build output instead"
        ),
        None => {
            "no start script, \"main\", Procfile, Dockerfile CMD or entry file found".to_owned()
        }
    };
    plain(todo_exec(name, &why))
}

fn go(files: &Files, dir: &str, name: &str) -> (RuntimeSpec, Guess<Vec<String>>) {
    let at = |p: &str| files.paths.contains(&join(dir, p));
    let cmds: Vec<&str> = files
        .paths
        .iter()
        .filter_map(|p| p.strip_prefix(&join(dir, "cmd/")))
        .filter_map(|rest| rest.strip_suffix("/main.go"))
        .filter(|c| !c.contains('/') && usable(c))
        .collect();
    // Directories (relative to the service) whose Go files say `package main`.
    let prefix = prefix(dir);
    let mains: BTreeSet<&str> = files
        .text
        .iter()
        .filter_map(|(p, t)| Some((p.strip_prefix(&prefix)?, t)))
        .filter(|(rel, t)| {
            super::ext_is(rel, "go")
                && !rel.ends_with("_test.go")
                && t.lines().any(|l| l.trim() == "package main")
        })
        .map(|(rel, _)| rel.rsplit_once('/').map_or("", |(d, _)| d))
        .collect();
    let root_main = mains.iter().find(|d| d.is_empty()).and_then(|_| {
        files
            .text
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .find(|rel| {
                !rel.contains('/') && super::ext_is(rel, "go") && !rel.ends_with("_test.go")
            })
    });
    let package = if at("main.go") {
        Guess::found(".".to_owned(), "main.go")
    } else if let Some(file) = root_main {
        Guess::found(".".to_owned(), format!("`package main` in {file}"))
    } else if cmds.contains(&name) {
        Guess::found("./cmd/{service}".to_owned(), "cmd/{service}/main.go")
    } else if let [one] = cmds.as_slice() {
        Guess::found(format!("./cmd/{one}"), format!("cmd/{one}/main.go"))
    } else if at("src/main.go") {
        Guess::found("./src".to_owned(), "src/main.go")
    } else if let (true, [one]) = (cmds.is_empty(), mains.iter().collect::<Vec<_>>().as_slice()) {
        Guess::found(format!("./{one}"), format!("`package main` in {one}/"))
    } else if cmds.is_empty() {
        Guess::assumed(
            ".".to_owned(),
            format!("TODO: no main package found in {dir}; name it"),
        )
    } else {
        Guess::assumed(
            format!("./cmd/{}", cmds[0]),
            format!(
                "several commands under {dir}/cmd ({}): check which one is the service",
                cmds.join(", ")
            ),
        )
    };
    let build = Guess {
        value: ["go", "build", "-o", "bin/{service}", &package.value]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        from: format!("go.mod; main package: {}", package.from),
        check: package.check,
    };
    let spec = RuntimeSpec {
        deps: None,
        build: Some(build),
        env: Vec::new(),
        manager: "go".to_owned(),
    };
    let exec = Guess::found(
        vec!["{current}/bin/{service}".to_owned()],
        "the binary the build writes",
    );
    (spec, exec)
}

fn python(files: &Files, dir: &str, name: &str) -> (RuntimeSpec, entry::Start) {
    let at = |p: &str| files.paths.contains(&join(dir, p));
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (spec, venv) = if at("requirements.txt") {
        let deps = Deps {
            argv: words(&[
                "sh",
                "-c",
                "python3 -m venv venv && venv/bin/pip install -r requirements.txt",
            ]),
            inputs: words(&["requirements.txt"]),
            outputs: words(&["venv"]),
            version: words(&["python3", "--version"]),
            why: "requirements.txt found: a venv per requirements.txt and python3 version"
                .to_owned(),
        };
        (
            RuntimeSpec {
                deps: Some(deps),
                build: None,
                env: Vec::new(),
                manager: "pip".to_owned(),
            },
            "venv",
        )
    } else if at("uv.lock") {
        let deps = Deps {
            argv: words(&["uv", "sync", "--frozen", "--no-dev", "--no-install-project"]),
            inputs: words(&["pyproject.toml", "uv.lock"]),
            outputs: words(&[".venv"]),
            version: words(&["uv", "--version"]),
            why:
                "uv.lock found: `uv sync` installs what it pins into .venv (uv must be on the host)"
                    .to_owned(),
        };
        (
            RuntimeSpec {
                deps: Some(deps),
                build: None,
                env: Vec::new(),
                manager: "uv".to_owned(),
            },
            ".venv",
        )
    } else {
        let build = Guess::assumed(
            words(&["sh", "-c", "python3 -m venv venv && venv/bin/pip install ."]),
            "pyproject.toml without requirements.txt or uv.lock: the project and its dependencies are installed in every release (not cached: nothing pins them); export a requirements.txt to make it a cached deps step",
        );
        (
            RuntimeSpec {
                deps: None,
                build: Some(build),
                env: Vec::new(),
                manager: "pip".to_owned(),
            },
            "venv",
        )
    };
    if let Some(found) = entry::declared(files, dir, For::Python(venv)) {
        return (spec, found);
    }
    if let Some(script) = files
        .text
        .get(&join(dir, "pyproject.toml"))
        .and_then(|t| first_project_script(t))
        && spec.manager == "pip"
        && spec.deps.is_none()
    {
        let exec = Guess::found(
            vec![format!("{{current}}/venv/bin/{script}")],
            format!("[project.scripts] in {dir}/pyproject.toml"),
        );
        return (spec, entry::Start { exec, port: None });
    }
    match entry::python_module(files, dir, venv) {
        Ok(found) => (spec, found),
        Err(why) => (
            spec,
            entry::Start {
                exec: todo_exec(name, &why),
                port: None,
            },
        ),
    }
}

/// The first entry of `[project.scripts]` in a pyproject.toml.
fn first_project_script(text: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = l == "[project.scripts]";
            continue;
        }
        if inside && let Some((name, _)) = l.split_once('=') {
            let name = name.trim().trim_matches('"');
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Some(name.to_owned());
            }
        }
    }
    None
}

/// Liveness and readiness routes the service's source defines, else
/// `/health` for both (a TODO; for a gRPC server, said so).
fn health_paths(sources: &[(&str, &str)], grpc: Option<&str>) -> (Guess<String>, Guess<String>) {
    match source::health(sources) {
        (Some(h), Some(r)) => (h, r),
        (Some(h), None) => (h.clone(), h),
        (None, Some(r)) => (
            Guess::assumed(
                r.value.clone(),
                format!("{} (no liveness route found)", r.from),
            ),
            r,
        ),
        (None, None) => {
            let why = match grpc {
                Some(at) => format!(
                    "TODO: it serves gRPC ({at}), and no HTTP health route was found: an HTTP check of this path cannot answer; give it a readiness check that fits"
                ),
                None => "TODO: no health route found in the source; moorline checks this path on the service's port after each restart".to_owned(),
            };
            let g = Guess::assumed("/health".to_owned(), why);
            (g.clone(), g)
        }
    }
}

/// Every `*.service` file that reads as a unit, by path.
fn unit_files(files: &Files, notes: &mut Vec<String>) -> Vec<FoundUnit> {
    let mut out = Vec::new();
    for (path, text) in &files.text {
        let Some(name) = path.rsplit('/').next().filter(|n| n.ends_with(".service")) else {
            continue;
        };
        match reader::parse(text) {
            Ok(entries) => out.push(found_unit(path, name, &entries)),
            Err(e) => notes.push(format!("{path}: not read as a unit file ({e})")),
        }
    }
    out
}

fn found_unit(path: &str, name: &str, entries: &[reader::Entry]) -> FoundUnit {
    let mut u = FoundUnit {
        file: path.to_owned(),
        unit_name: name.to_owned(),
        ..FoundUnit::default()
    };
    let value = |v: &str| reader::unescape_specifiers(v).ok().filter(|v| usable(v));
    for e in entries {
        match (e.section.as_str(), e.key.as_str()) {
            ("Unit", "Description") => u.description = value(&e.value),
            ("Unit", "After") => u.after.extend(unit_names(&e.value)),
            ("Unit", "Wants" | "Requires") => u.wants.extend(unit_names(&e.value)),
            ("Service", "User") => u.user = value(&e.value),
            ("Service", "Group") => u.group = value(&e.value),
            ("Service", "WorkingDirectory") => u.working_directory = value(&e.value),
            ("Service", "ExecStart") => u.exec_start = Some(e.value.clone()),
            ("Service", "EnvironmentFile") => {
                u.env_files.extend(
                    value(&e.value).filter(|f| {
                        f.trim_start_matches('-').starts_with('/') && !f.contains("/../")
                    }),
                );
            }
            ("Service", "Environment") => {
                for (k, v) in reader::environment(&e.value).unwrap_or_default() {
                    let name_ok = k
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !name_ok || !usable(&v) || k == "PORT" {
                        continue;
                    }
                    if looks_secret(&k) {
                        u.secrets_left_out.push(k);
                    } else {
                        u.env.retain(|(n, _)| *n != k);
                        u.env.push((k, v));
                    }
                }
            }
            _ => {}
        }
    }
    u
}

/// Names moorline treats as secret (docs/config.md): these are not copied
/// from a unit file into the configuration.
fn looks_secret(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY"]
        .iter()
        .any(|w| up.contains(w))
        || up == "DATABASE_URL"
}

fn unit_names(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .filter(|n| {
            n.len() <= 255
                && n.rsplit_once('.').is_some_and(|(stem, ty)| {
                    !stem.is_empty()
                        && matches!(
                            ty,
                            "service" | "socket" | "target" | "timer" | "mount" | "path" | "slice"
                        )
                })
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
        })
        .map(str::to_owned)
        .collect()
}

/// The port of a unit: `Environment=PORT=`, then `--port N` in ExecStart.
fn unit_port(text_entries: &FoundUnit, files: &Files) -> Option<u16> {
    let text = files.text.get(&text_entries.file)?;
    let entries = reader::parse(text).ok()?;
    for e in &entries {
        if e.section == "Service" && e.key == "Environment" {
            for (k, v) in reader::environment(&e.value).unwrap_or_default() {
                if k == "PORT"
                    && let Ok(p) = v.parse::<u16>()
                    && p > 0
                {
                    return Some(p);
                }
            }
        }
    }
    let exec = text_entries.exec_start.as_deref()?;
    let words: Vec<&str> = exec.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let v = if let Some(v) = w.strip_prefix("--port=") {
            Some(v)
        } else if *w == "--port" || *w == "-p" {
            words.get(i + 1).copied()
        } else {
            None
        };
        if let Some(p) = v.and_then(|v| v.parse::<u16>().ok()).filter(|p| *p > 0) {
            return Some(p);
        }
    }
    None
}

/// Matches unit files to services (by name, then by a path in ExecStart or
/// WorkingDirectory), fills in ports from them, and returns the
/// `unit-name` template they share.
fn match_units(
    services: &mut [Service],
    units: &[FoundUnit],
    project: &str,
    notes: &mut Vec<String>,
) -> Guess<String> {
    let mut used = BTreeSet::new();
    let stem = |u: &FoundUnit| u.unit_name.trim_end_matches(".service").to_owned();
    // Pass 1: by name; pass 2: by path.
    for pass in 0..3 {
        for s in services.iter_mut().filter(|s| s.unit.is_none()) {
            let hit = units.iter().enumerate().find(|(i, u)| {
                if used.contains(i) {
                    return false;
                }
                let st = stem(u);
                match pass {
                    0 => st == s.name,
                    1 => {
                        st.ends_with(&format!("-{}", s.name))
                            || st.ends_with(&format!("_{}", s.name))
                            || st.starts_with(&format!("{}-", s.name))
                    }
                    // Every path contains the root's: no evidence.
                    _ if s.path == crate::config::ROOT_PATH => false,
                    _ => {
                        let needle = format!("/{}", s.path);
                        u.exec_start.as_deref().is_some_and(|e| e.contains(&needle))
                            || u.working_directory
                                .as_deref()
                                .is_some_and(|w| w.contains(&needle))
                    }
                }
            });
            if let Some((i, u)) = hit {
                used.insert(i);
                s.unit = Some(u.clone());
            }
        }
    }
    for (i, u) in units.iter().enumerate() {
        if !used.contains(&i) && !u.unit_name.starts_with("nginx") {
            notes.push(format!(
                "{}: matches no service found; left out (add its service by hand if moorline should deploy it)",
                u.file
            ));
        }
    }
    // The template: the same prefix and suffix around every service's name.
    let mut shapes = BTreeSet::new();
    let mut matched = Vec::new();
    for s in services.iter() {
        if let Some(u) = &s.unit {
            let st = stem(u);
            if let Some(at) = st.rfind(&s.name) {
                shapes.insert((st[..at].to_owned(), st[at + s.name.len()..].to_owned()));
                matched.push(u.unit_name.clone());
            } else {
                shapes.insert((String::from("\0"), String::new()));
            }
        }
    }
    let default = format!("{project}-{{service}}.service");
    let template = match shapes.len() {
        0 => Guess::assumed(
            default,
            "no existing unit file found: new units, named after the project",
        ),
        1 => {
            let (pre, suf) = shapes.iter().next().cloned().unwrap_or_default();
            let ok = |s: &str| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
            };
            if ok(&pre) && ok(&suf) {
                Guess::found(
                    format!("{pre}{{service}}{suf}.service"),
                    format!("the existing unit files ({})", matched.join(", ")),
                )
            } else {
                Guess::assumed(
                    default,
                    "the existing unit files' names do not contain the service names",
                )
            }
        }
        _ => Guess::assumed(
            default,
            "the existing unit files are named in different ways; moorline names every unit by one template",
        ),
    };
    // A matched unit whose name the template does not give is a new unit
    // beside the old one.
    for s in services.iter() {
        if let Some(u) = &s.unit {
            let new_name = template.value.replace("{service}", &s.name);
            if new_name != u.unit_name {
                notes.push(format!(
                    "{}: moorline will install {new_name} for service {}; stop and disable {} on the hosts",
                    u.file, s.name, u.unit_name
                ));
            }
        }
    }
    template
}

/// `depends-on` from the unit files: a service whose unit starts after
/// (or wants) another service's unit depends on it; an edge that would
/// close a cycle is left out.
fn depends_on(services: &mut [Service]) {
    let by_unit: BTreeMap<String, String> = services
        .iter()
        .filter_map(|s| Some((s.unit.as_ref()?.unit_name.clone(), s.name.clone())))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let reaches = |edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str| {
        let mut stack = vec![from.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(edges.get(&n).into_iter().flatten().cloned());
            }
        }
        false
    };
    for s in services.iter_mut() {
        let Some(u) = &s.unit else { continue };
        for n in u.after.iter().chain(&u.wants) {
            let Some(target) = by_unit.get(n) else {
                continue;
            };
            if *target == s.name
                || s.depends_on.iter().any(|d| d.value == *target)
                || reaches(&edges, target, &s.name)
            {
                continue;
            }
            edges
                .entry(s.name.clone())
                .or_default()
                .insert(target.clone());
            s.depends_on.push(Guess::found(
                target.clone(),
                format!("After=/Wants={n} in {}", u.file),
            ));
        }
    }
}

/// Ports from unit files, env examples, start commands, the source and
/// Dockerfiles; the rest assigned from [`PORT_BASE`], all different. A
/// port the source hard-codes is kept before any other (it cannot move).
fn assign_ports(services: &mut [Service], notes: &mut Vec<String>) {
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by_key(|i| !matches!(services[*i].port_use, PortUse::HardCoded(_)));
    for i in order {
        let s = &mut services[i];
        if s.port.value == 0 {
            continue;
        }
        if let Some(other) = taken.get(&s.port.value) {
            if matches!(s.port_use, PortUse::HardCoded(_)) {
                // Ports must differ in the configuration; the app still
                // listens on its own, so this is a TODO.
                notes.push(format!(
                    "{} and {other} both listen on port {}, and {} hard-codes it: they cannot run on one host; change one of them",
                    s.name, s.port.value, s.name
                ));
                s.port = Guess::assumed(
                    0,
                    format!(
                        "{other} uses port {} too, which {} hard-codes: change its source to listen on this one",
                        s.port.value, s.name
                    ),
                );
                continue;
            }
            // The port's own comment and check say so.
            s.port = Guess::assumed(
                0,
                format!("{other} uses port {} too ({})", s.port.value, s.port.from),
            );
        } else {
            taken.insert(s.port.value, s.name.clone());
        }
    }
    let mut next = PORT_BASE;
    for s in services.iter_mut().filter(|s| s.port.value == 0) {
        while taken.contains_key(&next) {
            next = next.saturating_add(1);
        }
        let why = if s.port.from == "unassigned" {
            "TODO: assigned; nothing in the repository names its port (set PORT or change this)"
                .to_owned()
        } else {
            format!("TODO: assigned, as {}", s.port.from)
        };
        s.port = Guess::assumed(next, why);
        taken.insert(next, s.name.clone());
    }
}

/// Ports found for each service before assignment (run after units are
/// matched), in this order: what its start command binds (init wrote
/// `{port}` there), a port its source hard-codes, its unit file's, its
/// `.env.example`'s, the default of the variable its source reads, its
/// Dockerfile's `EXPOSE`.
fn found_ports(services: &mut [Service], files: &Files) {
    for s in services.iter_mut() {
        if s.port_use == PortUse::Command && s.port.value != 0 {
            continue;
        }
        let listen = if s.port_use == PortUse::Command {
            None
        } else {
            source::listen(&sources(files, &s.path), &s.name)
        };
        match &listen {
            Some(Listen::HardCoded { port, file }) => {
                s.port_use = PortUse::HardCoded(file.clone());
                s.port = Guess::found(
                    *port,
                    format!("hard-coded in {file} (it reads no PORT variable)"),
                );
                continue;
            }
            Some(Listen::Env { var, .. }) if var != "PORT" => {
                s.port_use = PortUse::Var(var.clone());
            }
            _ => {}
        }
        if let Some(u) = &s.unit
            && let Some(p) = unit_port(u, files)
        {
            s.port = Guess::found(p, format!("PORT in {}", u.file));
            continue;
        }
        let mut from_env_file = false;
        for f in [".env.example", ".env.sample"] {
            let path = join(&s.path, f);
            if let Some(p) = files.text.get(&path).and_then(|t| {
                t.lines()
                    .filter_map(|l| l.trim().strip_prefix("PORT="))
                    .find_map(|v| v.trim().trim_matches('"').parse::<u16>().ok())
                    .filter(|p| *p > 0)
            }) {
                s.port = Guess::found(p, format!("PORT in {path}"));
                from_env_file = true;
                break;
            }
        }
        if from_env_file {
            continue;
        }
        if let Some(Listen::Env {
            var,
            default: Some(p),
            file,
        }) = &listen
        {
            s.port = Guess::found(*p, format!("the default of {var} in {file}"));
            continue;
        }
        if s.port_use == PortUse::Command {
            // Any port works: it is assigned.
            continue;
        }
        let docker = join(&s.path, "Dockerfile");
        if let Some(p) = files
            .text
            .get(&docker)
            .and_then(|t| entry::dockerfile(t).expose.first().copied())
        {
            s.port = Guess::found(p, format!("EXPOSE in {docker}"));
        }
    }
}

/// Units the services' unit files start after or want that are not
/// services of this repository (`postgresql.service`).
fn infrastructure(services: &[Service], units: &[FoundUnit]) -> Vec<Guess<String>> {
    let ours: BTreeSet<&str> = units.iter().map(|u| u.unit_name.as_str()).collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for s in services {
        let Some(u) = &s.unit else { continue };
        for n in u.after.iter().chain(&u.wants) {
            if (n.ends_with(".service") || n.ends_with(".socket")) && !ours.contains(n.as_str()) {
                out.entry(n.clone()).or_insert_with(|| u.file.clone());
            }
        }
    }
    out.into_iter()
        .map(|(n, f)| Guess::found(n, format!("After=/Wants= in {f}")))
        .collect()
}

/// Whether two services' runtimes do the same: equal commands, inputs,
/// outputs and environment (where each guess came from does not matter).
fn same_steps(a: &RuntimeSpec, b: &RuntimeSpec) -> bool {
    let deps = |s: &RuntimeSpec| {
        s.deps.as_ref().map(|d| {
            (
                d.argv.clone(),
                d.inputs.clone(),
                d.outputs.clone(),
                d.version.clone(),
            )
        })
    };
    let build = |s: &RuntimeSpec| s.build.as_ref().map(|b| b.value.clone());
    deps(a) == deps(b) && build(a) == build(b) && a.manager == b.manager && a.env == b.env
}

/// Services with equal steps share a runtime named after their kind; a
/// second, different one of a kind is named after its first service.
fn group_runtimes(services: &mut [Service]) -> Vec<Runtime> {
    let mut runtimes: Vec<Runtime> = Vec::new();
    let mut order: Vec<Kind> = services.iter().map(|s| s.kind).collect();
    order.sort();
    order.dedup();
    for kind in order {
        for s in services.iter_mut().filter(|s| s.kind == kind) {
            if let Some(r) = runtimes
                .iter_mut()
                .find(|r| r.kind == kind && same_steps(&r.spec, &s.spec))
            {
                s.runtime = r.name.clone();
                if r.migrate.is_none() {
                    r.migrate.clone_from(&s.migrate);
                }
                continue;
            }
            let name = if runtimes.iter().any(|r| r.kind == kind) {
                format!("{}-{}", kind.name(), s.name)
            } else {
                kind.name().to_owned()
            };
            s.runtime.clone_from(&name);
            runtimes.push(Runtime {
                name,
                kind,
                spec: s.spec.clone(),
                migrate: s.migrate.clone(),
            });
        }
    }
    runtimes
}

/// A path that looks like nginx configuration.
pub(super) fn is_nginx_path(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    let Some(file) = parts.pop() else {
        return false;
    };
    parts.iter().any(|d| d.contains("nginx"))
        || file == "nginx.conf"
        || (file.contains("nginx")
            && std::path::Path::new(file)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("conf")))
}

fn proxy(files: &Files, services: &[Service], notes: &mut Vec<String>) -> Option<Proxy> {
    let paths: Vec<&String> = files.paths.iter().filter(|p| is_nginx_path(p)).collect();
    if paths.is_empty() {
        return None;
    }
    // The shallowest directory named for nginx, else the shallowest file.
    let dir = paths
        .iter()
        .filter_map(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            let at = parts[..parts.len() - 1]
                .iter()
                .position(|d| d.contains("nginx"))?;
            Some(parts[..=at].join("/"))
        })
        .min_by_key(|d| (d.matches('/').count(), d.clone()));
    let watch = if let Some(d) = dir {
        Guess::found(d.clone(), format!("nginx configuration in {d}/"))
    } else {
        let f = paths
            .iter()
            .min_by_key(|p| (p.matches('/').count(), (**p).clone()))
            .map(|p| (*p).clone())
            .unwrap_or_default();
        Guess::found(f.clone(), format!("nginx configuration {f}"))
    };
    let mut ports = BTreeSet::new();
    for p in &paths {
        let Some(t) = files.text.get(*p) else {
            continue;
        };
        for host in ["localhost:", "127.0.0.1:", "[::1]:", "0.0.0.0:"] {
            for (at, _) in t.match_indices(host) {
                let digits: String = t[at + host.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Some(port) = digits.parse::<u16>().ok().filter(|p| *p > 0) {
                    ports.insert(port);
                }
            }
        }
    }
    let known: BTreeSet<u16> = services.iter().map(|s| s.port.value).collect();
    let strays: Vec<String> = ports
        .iter()
        .filter(|p| !known.contains(p))
        .map(u16::to_string)
        .collect();
    if !strays.is_empty() {
        notes.push(format!(
            "nginx proxies to port {}, which no service here has: check the services' ports",
            strays.join(", ")
        ));
    }
    Some(Proxy {
        watch,
        upstream_ports: ports.into_iter().collect(),
    })
}

/// At most 80 characters of a value quoted in a comment or note.
pub(super) fn clip(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(79).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        Files::from_entries("shop", entries.iter().copied())
    }

    #[test]
    fn names_are_made_valid() {
        for (raw, want) in [
            ("api", Some("api")),
            ("My Service!", Some("My-Service")),
            ("..hidden", Some("hidden")),
            ("_x", Some("x")),
            ("---", None),
            ("ünï", Some("n")),
            ("ü", None),
        ] {
            assert_eq!(sanitize(raw).as_deref(), want, "{raw}");
        }
        assert_eq!(sanitize(&"a".repeat(100)).map(|s| s.len()), Some(64));
    }

    #[test]
    fn node_manager_exec_and_prisma() {
        let listing = files(&[
            (
                "services/a/package.json",
                r#"{"scripts":{"start":"node --enable-source-maps ./dist/main.js"}}"#,
            ),
            ("services/a/yarn.lock", ""),
            ("services/a/prisma/schema.prisma", ""),
            ("services/b/package.json", r#"{"main":"lib/b.js"}"#),
            ("services/c/package.json", "not json"),
        ]);
        let s = scan(&listing).unwrap();
        let a = &s.services[0];
        assert_eq!(
            a.exec.value,
            [
                "/usr/bin/node",
                "--enable-source-maps",
                "{current}/dist/main.js"
            ]
        );
        assert!(!a.exec.check);
        let deps = a.spec.deps.as_ref().unwrap();
        assert_eq!(
            deps.argv,
            ["yarn", "install", "--frozen-lockfile", "--production"]
        );
        assert_eq!(deps.inputs, ["package.json", "yarn.lock"]);
        assert_eq!(
            a.migrate.as_ref().unwrap().argv,
            ["yarn", "prisma", "migrate", "deploy"]
        );
        let b = &s.services[1];
        assert_eq!(b.exec.value, ["/usr/bin/node", "{current}/lib/b.js"]);
        // No lockfile: npm install, a different runtime from yarn's.
        assert_eq!(
            b.spec.deps.as_ref().unwrap().argv,
            ["npm", "install", "--omit=dev"]
        );
        assert_eq!(b.runtime, "node-b");
        let c = &s.services[2];
        assert!(c.exec.check && c.exec.from.starts_with("TODO"));
        assert!(s.notes.iter().any(|n| n.contains("not valid JSON")));
        // Ports: all assigned, all different.
        let ports: BTreeSet<u16> = s.services.iter().map(|s| s.port.value).collect();
        assert_eq!(ports.len(), 3);
    }

    #[test]
    fn nested_test_and_library_directories_are_not_services() {
        let f = files(&[
            (
                "services/a/package.json",
                r#"{"scripts":{"start":"node a.js"}}"#,
            ),
            ("services/a/fixtures/x/package.json", "{}"),
            ("services/a/sub/go.mod", ""),
            ("tests/e2e/package.json", "{}"),
            ("packages/lib/package.json", r#"{"main":"x.js"}"#),
            (
                "packages/svc/package.json",
                r#"{"scripts":{"start":"node s.js"}}"#,
            ),
        ]);
        let s = scan(&f).unwrap();
        let names: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["svc", "a"]);
        let left: Vec<(&str, bool)> = s
            .left_out
            .iter()
            .map(|l| (l.path.as_str(), l.unhandled))
            .collect();
        assert_eq!(left, [("packages/lib", false), ("tests", false)]);
    }

    #[test]
    fn an_empty_repository_is_an_error_and_a_root_only_one_is_a_root_service() {
        assert!(matches!(
            scan(&files(&[("README.md", "")])),
            Err(InitError::NothingFound { seen, .. }) if seen.is_empty()
        ));
        // What it saw and cannot deploy is named.
        let Err(InitError::NothingFound { seen, .. }) =
            scan(&files(&[("svc/Svc.csproj", ""), ("api/pom.xml", "")]))
        else {
            panic!("a .NET and a Java service are not deployable");
        };
        assert_eq!(
            seen,
            "; it saw, and cannot deploy: api (Java (Maven: pom.xml)), svc (.NET (Svc.csproj))"
        );
        let root = scan(&files(&[("go.mod", ""), ("main.go", "")])).unwrap();
        let paths: Vec<&str> = root.services.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["."]);
    }

    #[test]
    fn unit_files_give_ports_template_infrastructure_and_no_secrets() {
        let unit = "[Unit]\nAfter=network.target postgresql.service app-db.service\n\
            [Service]\nEnvironment=PORT=7000 LOG=debug DB_PASSWORD=x\nUser=app\nExecStart=/x\n";
        let listing = files(&[
            ("services/web/requirements.txt", ""),
            ("services/db/requirements.txt", ""),
            ("systemd/app-web.service", unit),
            (
                "systemd/app-db.service",
                "[Service]\nExecStart=/y --port 7001\n",
            ),
            ("systemd/stray.service", "[Service]\nExecStart=/z\n"),
            ("systemd/broken.service", "no section=1\n"),
        ]);
        let s = scan(&listing).unwrap();
        assert_eq!(s.unit_name.value, "app-{service}.service");
        assert!(!s.unit_name.check);
        let web = s.services.iter().find(|x| x.name == "web").unwrap();
        assert_eq!(web.port.value, 7000);
        let found = web.unit.as_ref().unwrap();
        assert_eq!(found.env, [("LOG".to_owned(), "debug".to_owned())]);
        assert_eq!(found.secrets_left_out, ["DB_PASSWORD"]);
        assert_eq!(web.depends_on[0].value, "db");
        let db = s.services.iter().find(|x| x.name == "db").unwrap();
        assert_eq!(db.port.value, 7001);
        assert_eq!(s.infrastructure.len(), 1);
        assert_eq!(s.infrastructure[0].value, "postgresql.service");
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("stray.service") && n.contains("matches no service"))
        );
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("broken.service") && n.contains("not read"))
        );
    }

    #[test]
    fn start_commands_from_procfile_and_dockerfile_take_the_port() {
        let f = files(&[
            ("services/a/requirements.txt", "gunicorn\n"),
            ("services/a/app.py", "app = Flask(__name__)\n"),
            (
                "services/a/Procfile",
                "web: gunicorn app:app --bind 0.0.0.0:$PORT\n",
            ),
            ("services/b/package.json", "{}"),
            ("services/b/server.js", "app.listen(8081)\n"),
            (
                "services/b/Dockerfile",
                "FROM node:20\nEXPOSE 9000\nCMD [\"node\", \"server.js\"]\n",
            ),
        ]);
        let s = scan(&f).unwrap();
        let a = &s.services[0];
        assert_eq!(
            a.exec.value,
            [
                "{current}/venv/bin/gunicorn",
                "app:app",
                "--bind",
                "0.0.0.0:{port}"
            ]
        );
        assert_eq!(a.port_use, PortUse::Command);
        // b: the Dockerfile's command; the port its source hard-codes, not
        // EXPOSE's.
        let b = &s.services[1];
        assert_eq!(b.exec.value, ["/usr/bin/node", "{current}/server.js"]);
        assert_eq!(b.port.value, 8081);
        assert_eq!(
            b.port_use,
            PortUse::HardCoded("services/b/server.js".to_owned())
        );
    }

    #[test]
    fn duplicate_ports_are_reassigned() {
        let f = files(&[
            ("services/a/requirements.txt", ""),
            ("services/a/.env.example", "PORT=4000\n"),
            ("services/b/requirements.txt", ""),
            ("services/b/Dockerfile", "EXPOSE 4000/tcp\n"),
        ]);
        let s = scan(&f).unwrap();
        assert_eq!(s.services[0].port.value, 4000);
        assert_eq!(s.services[1].port.value, PORT_BASE);
        assert!(s.services[1].port.check);
        assert!(s.services[1].port.from.contains("a uses port 4000 too"));
        // Two apps that hard-code one port: the second gets another in
        // the configuration (ports must differ), marked, and a note.
        let f = files(&[
            ("services/c/requirements.txt", ""),
            ("services/c/app.py", "app.run(port=5000)\n"),
            ("services/d/requirements.txt", ""),
            ("services/d/app.py", "app.run(port=5000)\n"),
        ]);
        let s = scan(&f).unwrap();
        assert_eq!(s.services[0].port.value, 5000);
        assert_eq!(s.services[1].port.value, PORT_BASE);
        assert!(s.services[1].port.check);
        assert!(s.notes.iter().any(|n| n.contains("cannot run on one host")));
    }

    #[test]
    fn nginx_directory_and_upstream_ports() {
        let f = files(&[
            ("apps/x/go.mod", ""),
            ("apps/x/main.go", ""),
            (
                "ops/nginx/sites/x.conf",
                "proxy_pass http://localhost:8081;",
            ),
        ]);
        let s = scan(&f).unwrap();
        let p = s.proxy.unwrap();
        assert_eq!(p.watch.value, "ops/nginx");
        assert_eq!(p.upstream_ports, [8081]);
        assert!(is_nginx_path("nginx.conf"));
        assert!(is_nginx_path("deploy/shop.nginx.conf"));
        assert!(!is_nginx_path("src/engine.conf"));
    }
}
