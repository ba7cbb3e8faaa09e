//! [`Scan`] → the text of a commented KDL configuration, and the summary
//! `init` prints. Every guessed value carries a comment saying where it
//! came from; values nothing in the repository supported are marked
//! `check` (or `TODO`). Strings are written by `config::kdl_string` only.

use std::fmt::Write as _;

use super::{Guess, LeftOut, PortUse, Scan, Service};
use crate::config::kdl_string;

/// Text for a `//` comment: one line, no control characters.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn argv(words: &[String]) -> String {
    words
        .iter()
        .map(|w| kdl_string(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn why<T>(g: &Guess<T>) -> String {
    if g.check && !g.from.starts_with("TODO") {
        format!("check: {}", comment(&g.from))
    } else {
        comment(&g.from)
    }
}

/// The directories init did not make services of, as comments.
fn left_out(o: &mut String, left: &[LeftOut]) {
    for (unhandled, title) in [
        (
            true,
            "Not in this configuration: services init cannot build. Write a runtime and a\n\
             // service for each by hand (docs/config.md), or run them outside moorline:",
        ),
        (false, "Not services, left out:"),
    ] {
        let these: Vec<&LeftOut> = left.iter().filter(|l| l.unhandled == unhandled).collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(o, "// {title}");
        for l in these {
            let _ = writeln!(o, "//   {}: {}", comment(&l.path), comment(&l.reason));
        }
        o.push('\n');
    }
}

/// The `unit-name` template with the environment in it (`{env}` before
/// `{service}` when it has none), so that staging's and production's units
/// on one host differ.
fn per_env(template: &str) -> String {
    if template.contains("{env}") {
        template.to_owned()
    } else {
        template.replacen("{service}", "{env}-{service}", 1)
    }
}

/// Production's `port-offset`: the smallest multiple of 1000 that moves
/// no service's port onto one of staging's and none past 65535; `None`
/// when there are no services or none fits.
fn port_offset(scan: &Scan) -> Option<u16> {
    let ports: Vec<u16> = scan.services.iter().map(|s| s.port.value).collect();
    if ports.is_empty() {
        return None;
    }
    (1..=65u16).map(|k| k * 1000).find(|o| {
        ports.iter().all(|p| {
            p.checked_add(*o)
                .is_some_and(|moved| !ports.contains(&moved))
        })
    })
}

/// The configuration's text.
pub(crate) fn render(scan: &Scan) -> String {
    let mut o = String::new();
    let project = &scan.project.value;
    let _ = writeln!(
        o,
        "// moorline configuration for {}, written by `moorline init` from what it\n\
         // found in the repository. A comment above each guessed value says where it\n\
         // came from; `check` and `TODO` mark guesses nothing in the repository\n\
         // confirmed. Reference: docs/config.md. Next: `moorline validate`, commit\n\
         // this file (moorline deploys commits), then `moorline plan --env staging`.\n",
        comment(project)
    );

    left_out(&mut o, &scan.left_out);
    let _ = writeln!(o, "// Project name: {}.", why(&scan.project));
    let _ = writeln!(o, "project {} {{", kdl_string(project));
    let _ = writeln!(o, "    // {}", why(&scan.unit_name));
    let _ = writeln!(
        o,
        "    // {{env}}: both environments below deploy on this host, each with units of its own."
    );
    let _ = writeln!(
        o,
        "    unit-name {}",
        kdl_string(&per_env(&scan.unit_name.value))
    );
    let _ = writeln!(o, "    keep-releases 5\n}}\n");

    // Both environments deploy where moorline runs: each gets its own root,
    // unit names ({env}) and ports (production's port-offset), so that
    // `validate` accepts them on one host.
    let root = format!("/opt/{project}/{{env}}");
    let _ = writeln!(
        o,
        "// staging deploys {} ({}).\n\
         // Releases go under {root}/SERVICE/releases/ on the host (check the root;\n\
         // {{env}} is the environment's name).",
        comment(&scan.branch.value),
        why(&scan.branch)
    );
    let _ = writeln!(
        o,
        "environment \"staging\" {{\n    branch {}\n    root {}\n}}\n",
        kdl_string(&scan.branch.value),
        kdl_string(&root)
    );
    let offset = port_offset(scan).map_or_else(String::new, |n| {
        format!(
            "    // Its ports are each service's port + {n}, apart from staging's on this host.\n    \
             port-offset {n}\n"
        )
    });
    let _ = writeln!(
        o,
        "// check: production deploys a branch of its own, `production`: create it, or\n\
         // name the branch production deploys. On a host of its own, it may keep\n\
         // staging's ports (drop port-offset).\n\
         environment \"production\" {{\n    branch \"production\"\n    root {}\n{offset}    \
         // approval #true  // only reviewed, saved plans may be applied\n    \
         // backup {{ ... }}  // a database backup before migrations: docs/config.md\n}}\n",
        kdl_string(&root)
    );

    if !scan.infrastructure.is_empty() {
        let _ = writeln!(
            o,
            "// Units the services need that moorline orders before them but does not manage."
        );
        let _ = writeln!(o, "phase \"infrastructure\" {{");
        for u in &scan.infrastructure {
            let _ = writeln!(o, "    // {}", why(u));
            let _ = writeln!(o, "    unit {}", kdl_string(&u.value));
        }
        let _ = writeln!(o, "}}");
    }
    let _ = writeln!(
        o,
        "// check: the services of one phase start in parallel. For a start order, split\n\
         // them into phases (each starts when the one before is ready) or add `depends-on`.\n\
         phase \"services\"\n"
    );

    for r in &scan.runtimes {
        let used: Vec<&str> = scan
            .services
            .iter()
            .filter(|s| s.runtime == r.name)
            .map(|s| s.name.as_str())
            .collect();
        let _ = writeln!(o, "// {} services: {}.", r.kind.name(), used.join(", "));
        let _ = writeln!(o, "runtime {} {{", kdl_string(&r.name));
        if let Some(d) = &r.spec.deps {
            let _ = writeln!(
                o,
                "    // A cached step: it runs only when its inputs (or the tool's version)\n    \
                 // change; otherwise the release reuses the host's copy.\n    // {}",
                comment(&d.why)
            );
            let _ = writeln!(o, "    deps {} {{", argv(&d.argv));
            let _ = writeln!(o, "        inputs {}", argv(&d.inputs));
            let _ = writeln!(o, "        outputs {}", argv(&d.outputs));
            let _ = writeln!(o, "        version {}", argv(&d.version));
            let _ = writeln!(o, "    }}");
        }
        if let Some(b) = &r.spec.build {
            let _ = writeln!(o, "    // {}", why(b));
            let _ = writeln!(o, "    build {}", argv(&b.value));
        }
        if let Some(m) = &r.migrate {
            let _ = writeln!(
                o,
                "    // Prisma: only services with {} migrate; a change under {}/ needs a\n    \
                 // migration. DATABASE_URL must come from an env-file on the host.",
                m.if_exists, m.inputs
            );
            let _ = writeln!(
                o,
                "    migrate {} if-exists={} inputs={}",
                argv(&m.argv),
                kdl_string(&m.if_exists),
                kdl_string(&m.inputs)
            );
            let _ = writeln!(o, "    migrate-status {}", argv(&m.status));
        }
        let _ = writeln!(o, "    unit {{");
        let mut env = vec![format!("PORT={}", kdl_string("{port}"))];
        env.extend(
            r.spec
                .env
                .iter()
                .map(|(k, v)| format!("{k}={}", kdl_string(v))),
        );
        let _ = writeln!(o, "        env {}", env.join(" "));
        let _ = writeln!(
            o,
            "        // Secrets (DATABASE_URL, API keys) go in this file on the host; the\n        \
             // leading `-`: a missing file is ignored."
        );
        let _ = writeln!(
            o,
            "        env-file {}",
            kdl_string(&format!("-/etc/{project}/{{service}}.env"))
        );
        let _ = writeln!(o, "        restart \"on-failure\"");
        let _ = writeln!(
            o,
            "        // check: without a `user` the services run as root:\n        // user {}",
            kdl_string(project)
        );
        let _ = writeln!(o, "    }}\n}}\n");
    }

    for s in &scan.services {
        let runtime_env = scan
            .runtimes
            .iter()
            .find(|r| r.name == s.runtime)
            .map_or(&[][..], |r| r.spec.env.as_slice());
        service(&mut o, s, project, runtime_env);
    }

    if let Some(p) = &scan.proxy {
        let _ = writeln!(
            o,
            "// {}.\n\
             // moorline reloads nginx after the services (after `nginx -t`) and when these\n\
             // files change; it does not copy them into /etc/nginx: check how they get there\n\
             // (a symlink, or an include of this repository's checkout).",
            comment(&p.watch.from)
        );
        if !p.upstream_ports.is_empty() {
            let ports: Vec<String> = p.upstream_ports.iter().map(u16::to_string).collect();
            let _ = writeln!(o, "// It proxies to port {}.", ports.join(", "));
        }
        let _ = writeln!(
            o,
            "proxy \"nginx\" {{\n    unit \"nginx.service\"\n    check \"nginx\" \"-t\"\n    watch {}\n}}",
            kdl_string(&p.watch.value)
        );
    }
    while o.ends_with("\n\n") {
        o.pop();
    }
    o
}

/// A service block; what its runtime's unit already says (the per-service
/// env-file, `NODE_ENV`) is not repeated from its unit file.
fn service(o: &mut String, s: &Service, project: &str, runtime_env: &[(String, String)]) {
    let default_env_file = format!("/etc/{project}/{}.env", s.name);
    let _ = writeln!(o, "service {} {{", kdl_string(&s.name));
    let _ = writeln!(o, "    runtime {}", kdl_string(&s.runtime));
    if s.path != format!("services/{}", s.name) {
        let _ = writeln!(o, "    path {}", kdl_string(&s.path));
    }
    let _ = writeln!(o, "    // {}", why(&s.port));
    match &s.port_use {
        PortUse::Port => {}
        PortUse::Var(var) => {
            let _ = writeln!(
                o,
                "    // It reads {var}, not PORT: its unit sets {var} to this port."
            );
        }
        PortUse::Command => {
            let _ = writeln!(o, "    // Its start command takes this port (`{{port}}`).");
        }
        PortUse::HardCoded(_) => {
            let _ = writeln!(
                o,
                "    // check: the app ignores PORT: change this and its source together; no\n    \
                 // other service on the host may use this port."
            );
        }
    }
    let _ = writeln!(o, "    port {}", s.port.value);
    let _ = writeln!(o, "    phase \"services\"");
    for d in &s.depends_on {
        let _ = writeln!(o, "    // {}", why(d));
        let _ = writeln!(o, "    depends-on {}", kdl_string(&d.value));
    }
    for w in &s.watch {
        let _ = writeln!(o, "    // {}", why(w));
        let _ = writeln!(o, "    watch {}", kdl_string(&w.value));
    }
    let same = s.health == s.ready;
    let _ = writeln!(
        o,
        "    // {}{}",
        why(&s.health),
        if same {
            "; used for liveness and readiness"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "    health {}", kdl_string(&s.health.value));
    if !same {
        let _ = writeln!(o, "    // {}", why(&s.ready));
    }
    let _ = writeln!(o, "    ready {}", kdl_string(&s.ready.value));
    let _ = writeln!(o, "    unit {{");
    if let Some(u) = &s.unit {
        let _ = writeln!(o, "        // From {}.", comment(&u.file));
        if let Some(e) = &u.exec_start {
            let _ = writeln!(
                o,
                "        // It ran: ExecStart={}",
                comment(&super::scan::clip(e))
            );
        }
    }
    let _ = writeln!(o, "        // {}", why(&s.exec));
    let _ = writeln!(o, "        exec {}", argv(&s.exec.value));
    let port_var = match &s.port_use {
        PortUse::Var(var) => {
            let _ = writeln!(o, "        env {var}={}", kdl_string("{port}"));
            Some(var.as_str())
        }
        _ => None,
    };
    if let Some(u) = &s.unit {
        if let Some(d) = &u.description {
            let _ = writeln!(o, "        description {}", kdl_string(&escape_braces(d)));
        }
        for (key, name) in [("user", &u.user), ("group", &u.group)] {
            let Some(name) = name else { continue };
            let name_kdl = kdl_string(&escape_braces(name));
            match crate::config::unit_user_fault(name) {
                None => {
                    let _ = writeln!(o, "        {key} {name_kdl}");
                }
                // Written as a comment: validation would refuse it.
                Some(why) => {
                    let _ = writeln!(
                        o,
                        "        // check: the unit's {key} is not a name useradd makes ({why}):\n        // {key} {name_kdl}"
                    );
                }
            }
        }
        for f in u
            .env_files
            .iter()
            .filter(|f| f.trim_start_matches('-') != default_env_file)
        {
            let _ = writeln!(o, "        env-file {}", kdl_string(&escape_braces(f)));
        }
        for (k, v) in u
            .env
            .iter()
            .filter(|kv| !runtime_env.contains(kv) && Some(kv.0.as_str()) != port_var)
        {
            let _ = writeln!(o, "        env {k}={}", kdl_string(&escape_braces(v)));
        }
        if !u.secrets_left_out.is_empty() {
            let _ = writeln!(
                o,
                "        // Not copied (secret): {}; put them in an env-file on the host.",
                u.secrets_left_out.join(", ")
            );
        }
        let after: Vec<&String> = u.after.iter().filter(|a| !a.ends_with(".target")).collect();
        if !after.is_empty() {
            let words: Vec<String> = after.iter().map(|a| kdl_string(a)).collect();
            let _ = writeln!(o, "        after {}", words.join(" "));
        }
        if !u.wants.is_empty() {
            let _ = writeln!(o, "        wants {}", argv(&u.wants));
        }
    }
    let _ = writeln!(o, "    }}\n}}\n");
}

/// `{` and `}` from the repository are literal braces, not placeholders.
fn escape_braces(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

/// What `init` prints after writing: what it found, what it guessed, what
/// to check.
pub(crate) fn summary(scan: &Scan) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "found:");
    for s in &scan.services {
        let _ = writeln!(
            o,
            "  {:<16} {:<6} {:<24} port {}{}",
            s.name,
            s.kind.name(),
            s.path,
            s.port.value,
            s.unit
                .as_ref()
                .map_or_else(String::new, |u| format!(", unit file {}", u.file))
        );
    }
    if let Some(p) = &scan.proxy {
        let _ = writeln!(o, "  nginx            proxy  {}", p.watch.value);
    }
    for (unhandled, title) in [
        (
            true,
            "not deployed (init cannot build these; add them by hand, or run them outside moorline):",
        ),
        (false, "not services:"),
    ] {
        let these: Vec<&LeftOut> = scan
            .left_out
            .iter()
            .filter(|l| l.unhandled == unhandled)
            .collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(o, "{title}");
        for l in these {
            let _ = writeln!(o, "  {:<24} {}", comment(&l.path), comment(&l.reason));
        }
    }
    let mut checks: Vec<String> = Vec::new();
    let mut add = |what: String, g_check: bool, from: &str| {
        if g_check {
            checks.push(format!("{what}: {}", from.trim_start_matches("TODO: ")));
        }
    };
    add(
        format!("branch {}", scan.branch.value),
        scan.branch.check,
        &scan.branch.from,
    );
    add(
        format!("unit-name {}", scan.unit_name.value),
        scan.unit_name.check,
        &scan.unit_name.from,
    );
    for s in &scan.services {
        add(
            format!("{} port {}", s.name, s.port.value),
            s.port.check,
            &s.port.from,
        );
        if let PortUse::HardCoded(file) = &s.port_use
            && !s.port.check
        {
            add(
                format!("{} port {}", s.name, s.port.value),
                true,
                &format!("hard-coded in {file}; the app ignores PORT"),
            );
        }
        add(format!("{} exec", s.name), s.exec.check, &s.exec.from);
        add(
            format!("{} health {}", s.name, s.health.value),
            s.health.check,
            &s.health.from,
        );
        if s.ready != s.health {
            add(
                format!("{} ready {}", s.name, s.ready.value),
                s.ready.check,
                &s.ready.from,
            );
        }
    }
    for r in &scan.runtimes {
        if let Some(b) = &r.spec.build {
            add(format!("runtime {} build", r.name), b.check, &b.from);
        }
    }
    checks.extend(scan.notes.iter().cloned());
    checks.push(format!(
        "production deploys branch `production`; both environments deploy on this host, each with its own root (/opt/{}/{{env}}), unit names (unit-name {}) and ports ({})",
        scan.project.value,
        per_env(&scan.unit_name.value),
        port_offset(scan).map_or_else(
            || "no port-offset fits: give production other ports, or a host of its own".to_owned(),
            |n| format!("production's port-offset {n}")
        )
    ));
    if let Some(u) = scan.services.iter().find_map(|s| s.unit.as_ref()) {
        checks.push(format!(
            "the existing unit files keep their names ({}, ...), the configuration names units per environment: stop and disable the old units before the first apply, or drop {{env}} from unit-name when only one environment deploys on this host",
            u.unit_name
        ));
    }
    if scan.services.iter().any(|s| s.unit.is_some()) {
        checks.push(
            "units moorline did not install are not replaced silently: the first plan on a host that has them shows a conflict; compare, then `--adopt SERVICE`".to_owned(),
        );
    }
    let _ = writeln!(o, "check:");
    for c in checks {
        let _ = writeln!(o, "  - {}", comment(&c));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::kdl_string;

    #[test]
    fn kdl_strings_read_back_exactly() {
        for s in [
            "plain",
            "",
            "with \"quotes\" and \\ backslash",
            "line\nbreak\ttab\r",
            "\u{1}\u{7f}\u{85} controls",
            "#\"raw-looking\"#",
            "{placeholder} ünïcode /* */ //",
        ] {
            let doc = format!("n {}", kdl_string(s));
            let parsed = kdl::KdlDocument::parse_v2(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            let got = parsed.nodes()[0].entries()[0].value().as_string().unwrap();
            assert_eq!(got, s, "{doc}");
        }
    }
}
