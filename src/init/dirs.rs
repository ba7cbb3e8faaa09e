//! Which directories are services init deploys, which look like services
//! it cannot deploy (Java, .NET, Rust, a Dockerfile alone, ...), and which
//! are not services at all (load generators, tests, docs, tooling,
//! libraries), each with the evidence. Pure: reads only [`Files`].

use std::collections::BTreeSet;

use super::{Files, LeftOut};
use crate::init::entry;

/// Manifests of the services init deploys.
pub(super) const MARKERS: &[&str] = &[
    "go.mod",
    "package.json",
    "requirements.txt",
    "pyproject.toml",
];

/// Components that make a directory test code, examples, docs or tooling,
/// and what that is.
const NOT_SERVICE_DIRS: &[(&str, &str)] = &[
    ("test", "test code"),
    ("tests", "test code"),
    ("e2e", "test code"),
    ("integration-tests", "test code"),
    ("cypress", "test code"),
    ("playwright", "test code"),
    ("testdata", "test data"),
    ("fixtures", "test data"),
    ("example", "examples"),
    ("examples", "examples"),
    ("docs", "documentation"),
    ("scripts", "tooling"),
    ("tools", "tooling"),
    ("tooling", "tooling"),
    ("hack", "tooling"),
    ("bench", "benchmarks"),
    ("benchmarks", "benchmarks"),
    ("ci", "tooling"),
    ("deploy", "deployment configuration"),
    ("kubernetes", "deployment configuration"),
    ("k8s", "deployment configuration"),
    ("helm", "deployment configuration"),
    ("terraform", "deployment configuration"),
];

/// A manifest of a language init does not build, and what it means.
fn foreign(name: &str) -> Option<String> {
    let what = match name {
        "pom.xml" => "Java (Maven: pom.xml)".to_owned(),
        "build.gradle" | "build.gradle.kts" => format!("Java/Kotlin (Gradle: {name})"),
        "Cargo.toml" => "Rust (Cargo.toml)".to_owned(),
        "Gemfile" => "Ruby (Gemfile)".to_owned(),
        "composer.json" => "PHP (composer.json)".to_owned(),
        "mix.exs" => "Elixir (mix.exs)".to_owned(),
        "build.sbt" => "Scala (build.sbt)".to_owned(),
        "Package.swift" => "Swift (Package.swift)".to_owned(),
        "deno.json" | "deno.jsonc" => format!("Deno ({name})"),
        "stack.yaml" => "Haskell (stack.yaml)".to_owned(),
        "pubspec.yaml" => "Dart (pubspec.yaml)".to_owned(),
        "CMakeLists.txt" => "C/C++ (CMakeLists.txt)".to_owned(),
        _ => {
            let ext = name.rsplit_once('.').map(|(_, e)| e)?;
            match ext {
                "csproj" | "fsproj" | "vbproj" | "sln" => format!(".NET ({name})"),
                "cabal" => format!("Haskell ({name})"),
                _ => return None,
            }
        }
    };
    Some(what)
}

/// Names that say a directory is a load generator.
const LOAD_NAMES: &[&str] = &[
    "loadgen",
    "load-gen",
    "load_gen",
    "loadgenerator",
    "load-generator",
    "loadtest",
    "load-test",
    "load_test",
    "locust",
    "k6",
    "stress",
];

/// Programs that generate load.
const LOAD_TOOLS: &[&str] = &["locust", "k6", "artillery", "wrk", "vegeta", "hey", "ab"];

/// Images that are infrastructure, not a service built here.
const INFRA_IMAGES: &[&str] = &[
    "mongo",
    "mysql",
    "mariadb",
    "postgres",
    "redis",
    "rabbitmq",
    "memcached",
    "nginx",
    "httpd",
    "traefik",
    "haproxy",
    "envoy",
    "fluentd",
    "fluent-bit",
    "elasticsearch",
    "kafka",
    "zookeeper",
    "consul",
    "vault",
    "prom/prometheus",
    "grafana/grafana",
    "jaegertracing",
    "otel/opentelemetry-collector",
];

/// What the directories are: services to deploy (sorted), and the rest
/// with the reason.
pub(super) fn classify(files: &Files) -> (Vec<String>, Vec<LeftOut>) {
    let mut handled: BTreeSet<String> = BTreeSet::new();
    let mut other: BTreeSet<String> = BTreeSet::new();
    for p in &files.paths {
        let Some((dir, name)) = p.rsplit_once('/') else {
            continue;
        };
        if MARKERS.contains(&name) {
            handled.insert(dir.to_owned());
        } else if name == "Dockerfile" || name == "Procfile" || foreign(name).is_some() {
            other.insert(dir.to_owned());
        }
    }
    let all: BTreeSet<&String> = handled.iter().chain(&other).collect();
    let mut services: Vec<String> = Vec::new();
    let mut left: Vec<LeftOut> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for dir in all {
        let inside = |d: &str| dir.starts_with(&format!("{d}/"));
        if seen.iter().any(|d| inside(d)) {
            continue;
        }
        let base = dir.rsplit('/').next().unwrap_or(dir);
        if let Some((c, what)) = dir.split('/').find_map(|c| {
            NOT_SERVICE_DIRS
                .iter()
                .find(|(n, _)| *n == c)
                .map(|(n, w)| (*n, *w))
        }) {
            // Reported once, at the test (docs, tools) directory itself.
            let top: String = {
                let parts: Vec<&str> = dir.split('/').collect();
                let at = parts.iter().position(|p| *p == c).unwrap_or(0);
                parts[..=at].join("/")
            };
            if !left.iter().any(|l| l.path == top) {
                left.push(LeftOut::not_a_service(&top, format!("{what} (`{c}/`)")));
            }
            seen.push(top);
            continue;
        }
        if let Some(why) = load_generator(files, dir, base) {
            left.push(LeftOut::not_a_service(
                dir,
                format!("a load generator ({why})"),
            ));
            seen.push(dir.clone());
            continue;
        }
        if base.contains("seed") {
            left.push(LeftOut::not_a_service(
                dir,
                "seeds data once (its name): a one-off job, not a long-running service".to_owned(),
            ));
            seen.push(dir.clone());
            continue;
        }
        if handled.contains(dir) {
            if let Some(why) = library(files, dir) {
                left.push(LeftOut::not_a_service(dir, why));
                seen.push(dir.clone());
                continue;
            }
            services.push(dir.clone());
            seen.push(dir.clone());
            continue;
        }
        // A Dockerfile or a foreign manifest: a service init cannot build,
        // unless it only wraps services below it.
        if handled.iter().any(|h| h.starts_with(&format!("{dir}/"))) {
            continue;
        }
        left.push(LeftOut::unhandled(dir, unhandled_reason(files, dir)));
        seen.push(dir.clone());
    }
    services.sort();
    left.sort_by(|a, b| a.path.cmp(&b.path));
    (services, left)
}

/// Why a directory is a load generator, when the evidence is clear.
fn load_generator(files: &Files, dir: &str, base: &str) -> Option<String> {
    let lower = base.to_ascii_lowercase();
    let prefix = format!("{dir}/");
    if let Some(f) = files.paths.iter().find(|p| {
        p.strip_prefix(&prefix).is_some_and(|r| {
            r.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("locustfile"))
        })
    }) {
        return Some(format!("{f} runs locust"));
    }
    for req in ["requirements.txt", "requirements.in"] {
        let path = super::scan::join(dir, req);
        if files.text.get(&path).is_some_and(|t| {
            t.lines()
                .any(|l| l.trim().to_ascii_lowercase().starts_with("locust"))
        }) {
            return Some(format!("{path} installs locust"));
        }
    }
    if let Some(w) = files
        .text
        .get(&super::scan::join(dir, "Dockerfile"))
        .and_then(|t| entry::dockerfile(t).written)
        && w.split(|c: char| c.is_whitespace() || matches!(c, '"' | '[' | ']' | ',' | '/'))
            .any(|word| LOAD_TOOLS.contains(&word))
    {
        return Some(format!("its Dockerfile runs `{}`", super::scan::clip(&w)));
    }
    LOAD_NAMES
        .iter()
        .find(|n| lower.contains(*n))
        .map(|_| "its name".to_owned())
}

/// A Node package under `packages/`, `libs/`, `lib/` or `shared/` with no
/// start script is a library.
fn library(files: &Files, dir: &str) -> Option<String> {
    let top = dir.split('/').next()?;
    if !matches!(top, "packages" | "libs" | "lib" | "shared")
        || files.paths.contains(&super::scan::join(dir, "go.mod"))
        || files
            .paths
            .contains(&super::scan::join(dir, "requirements.txt"))
        || files
            .paths
            .contains(&super::scan::join(dir, "pyproject.toml"))
    {
        return None;
    }
    let start = files
        .text
        .get(&super::scan::join(dir, "package.json"))
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .is_some_and(|p| p.pointer("/scripts/start").is_some());
    (!start).then(|| {
        format!(
            "a library (under `{top}/`, no start script); if a service uses it, add it to that service's `watch`"
        )
    })
}

/// What a directory init does not deploy is, from its manifests (in it or
/// below it), its source files or its Dockerfile's image.
fn unhandled_reason(files: &Files, dir: &str) -> String {
    let prefix = format!("{dir}/");
    let under: Vec<&str> = files
        .paths
        .iter()
        .filter_map(|p| p.strip_prefix(&prefix))
        .collect();
    let mut kinds: Vec<String> = Vec::new();
    for rel in &under {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if let Some(k) = foreign(name) {
            let k = if rel.contains('/') {
                format!("{k} in {}", rel.rsplit_once('/').map_or("", |(d, _)| d))
            } else {
                k
            };
            if !kinds
                .iter()
                .any(|x| x.split(' ').next() == k.split(' ').next())
            {
                kinds.push(k);
            }
        }
    }
    if !kinds.is_empty() {
        return format!(
            "{}: init builds Node.js, Go modules and Python only",
            kinds.join(", ")
        );
    }
    let docker = files
        .text
        .get(&super::scan::join(dir, "Dockerfile"))
        .map(|t| entry::dockerfile(t));
    if let Some(image) = docker.as_ref().and_then(|d| d.images.last()) {
        let name = image
            .split(['@', ':'])
            .next()
            .unwrap_or(image)
            .trim_start_matches("docker.io/")
            .trim_start_matches("library/");
        if INFRA_IMAGES
            .iter()
            .any(|i| name == *i || name.ends_with(&format!("/{i}")))
        {
            return format!(
                "a container of {name} (its Dockerfile is FROM {image}): infrastructure, not built from source here; run it as a system unit (an `infrastructure` phase can order it)"
            );
        }
    }
    let has_ext = |e: &str| under.iter().any(|r| r.ends_with(e));
    if has_ext(".go") {
        return "Go without go.mod (a GOPATH project): init builds Go modules; add a go.mod"
            .to_owned();
    }
    for (ext, lang, manifest) in [
        (".py", "Python", "requirements.txt or pyproject.toml"),
        (".js", "JavaScript", "package.json"),
        (".ts", "TypeScript", "package.json"),
    ] {
        if has_ext(ext) {
            return format!("{lang} files but no {manifest}");
        }
    }
    if let Some(image) = docker.as_ref().and_then(|d| d.images.last()) {
        return format!("a Dockerfile (FROM {image}) and no manifest init reads");
    }
    "a Dockerfile or Procfile and no manifest init reads".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_unhandled_and_not_services() {
        let f = Files::from_entries(
            "x",
            [
                ("src/adservice/build.gradle", ""),
                ("src/adservice/Dockerfile", "FROM eclipse-temurin\n"),
                ("src/cartservice/cartservice.sln", ""),
                ("src/cartservice/src/cartservice.csproj", ""),
                ("src/cartservice/tests/t.csproj", ""),
                ("src/loadgenerator/requirements.txt", "locust==2\n"),
                ("src/loadgenerator/locustfile.py", ""),
                ("src/frontend/go.mod", ""),
                ("ratings/Dockerfile", "FROM php:7\n"),
                ("ratings/html/composer.json", "{}"),
                ("mongo/Dockerfile", "FROM mongo:5\n"),
                ("dispatch/Dockerfile", "FROM golang\nCMD dispatch\n"),
                ("dispatch/main.go", "package main\n"),
                ("seed-data/Dockerfile", "FROM python\n"),
                ("tests/e2e/package.json", "{}"),
                ("tests/unit/package.json", "{}"),
                ("web/Dockerfile", "FROM node\n"),
                (
                    "web/app/package.json",
                    r#"{"scripts":{"start":"node a.js"}}"#,
                ),
            ],
        );
        let (services, left) = classify(&f);
        assert_eq!(services, ["src/frontend", "web/app"]);
        let got: Vec<(&str, bool, &str)> = left
            .iter()
            .map(|l| {
                (
                    l.path.as_str(),
                    l.unhandled,
                    l.reason.split(' ').next().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("dispatch", true, "Go"),
                ("mongo", true, "a"),
                ("ratings", true, "PHP"),
                ("seed-data", false, "seeds"),
                ("src/adservice", true, "Java/Kotlin"),
                ("src/cartservice", true, ".NET"),
                ("src/loadgenerator", false, "a"),
                ("tests", false, "test"),
            ]
        );
        assert!(
            left[1].reason.contains("container of mongo"),
            "{}",
            left[1].reason
        );
        assert!(
            left[6].reason.contains("locustfile.py"),
            "{}",
            left[6].reason
        );
    }
}
