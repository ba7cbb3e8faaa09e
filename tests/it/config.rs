//! Configuration loading: `pakashop.kdl` against the facts in Pakashop's
//! operations documents, and a catalogue of invalid configurations whose
//! diagnostics are snapshots.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use moorline::config::{self, Config};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pakashop() -> Config {
    let text = std::fs::read_to_string(manifest_dir().join("pakashop.kdl")).unwrap();
    match config::parse("pakashop.kdl", &text) {
        Ok(c) => c,
        Err(e) => panic!("{}", moorline::report::plain(&e)),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The 19 services of the operations document's table (3.1) and the
/// dependency order of 3.2: name, port, runtime, phase, depends-on.
const SERVICES: &[(&str, u16, &str, &str, &[&str])] = &[
    ("config", 3085, "node", "config", &[]),
    ("gateway", 8000, "node", "gateway", &["config"]),
    ("backend", 3080, "node", "core", &["gateway"]),
    ("search", 3005, "go", "core", &["config"]),
    ("analytics", 3007, "go", "core", &["config"]),
    ("notifications", 3090, "node", "supporting", &[]),
    ("tracking", 3120, "node", "supporting", &[]),
    ("moderation", 3110, "python", "supporting", &[]),
    ("recommendations", 3100, "python", "supporting", &[]),
    ("scheduler", 3004, "node", "supporting", &[]),
    ("fraud", 3006, "node", "supporting", &[]),
    ("coupon", 3008, "node", "supporting", &[]),
    ("loyalty", 3010, "node", "supporting", &[]),
    ("whatsapp", 3009, "node", "supporting", &[]),
    ("reports", 3011, "node", "supporting", &[]),
    ("reconciliation", 3012, "node", "supporting", &[]),
    ("invoicing", 3013, "node", "supporting", &[]),
    ("pricing", 3014, "node", "supporting", &[]),
    ("settlement", 3016, "node", "supporting", &[]),
];

#[test]
fn pakashop_services_match_the_operations_document() {
    let c = pakashop();
    assert_eq!(c.project.name, "pakashop");
    let got: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = SERVICES.iter().map(|s| s.0).collect();
    assert_eq!(got, want, "services in declaration order");
    for &(name, port, runtime, phase, deps) in SERVICES {
        let s = c.service(name).unwrap();
        assert_eq!(s.port, Some(port), "{name}: port");
        assert_eq!(s.runtime, runtime, "{name}: runtime");
        assert_eq!(s.phase, phase, "{name}: phase");
        assert_eq!(s.depends_on, deps, "{name}: depends-on");
        // nginx fronts the gateway: it runs blue/green, as a template unit of two slots.
        if name == "gateway" {
            assert_eq!(s.unit_name, "pakashop-gateway@.service");
            assert_eq!(s.cutover.as_ref().unwrap().slots, [18000, 18001]);
        } else {
            assert_eq!(s.unit_name, format!("pakashop-{name}.service"), "{name}");
            assert!(s.cutover.is_none(), "{name}: restarted in place");
        }
        assert_eq!(s.path, format!("services/{name}"), "{name}: default path");
        assert_eq!(s.health, "/health", "{name}: liveness");
        assert_eq!(s.ready, "/health/ready", "{name}: readiness");
        assert_eq!(s.metrics, "/health/metrics", "{name}: metrics");
        assert!(s.unit.is_some(), "{name}: unit managed by moorline");
    }
    let count = |rt: &str| c.services.iter().filter(|s| s.runtime == rt).count();
    assert_eq!(
        (count("node"), count("go"), count("python")),
        (15, 2, 2),
        "15 Node.js, 2 Go, 2 Python"
    );
}

#[test]
fn pakashop_phases_in_start_order() {
    let c = pakashop();
    let want: &[(&str, &[&str])] = &[
        (
            "infrastructure",
            &[
                "postgresql.service",
                "redis-server.service",
                "meilisearch.service",
            ],
        ),
        ("config", &[]),
        ("gateway", &[]),
        ("core", &[]),
        ("supporting", &[]),
    ];
    let got: Vec<(&str, Vec<&str>)> = c
        .phases
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.units.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let want: Vec<(&str, Vec<&str>)> = want.iter().map(|(n, u)| (*n, u.to_vec())).collect();
    assert_eq!(got, want);
    let supporting = c
        .services
        .iter()
        .filter(|s| s.phase == "supporting")
        .count();
    assert_eq!(supporting, 14);
    for s in &c.services {
        assert_eq!(c.phases[s.phase_index].name, s.phase, "{}", s.name);
    }
}

#[test]
fn pakashop_runtimes_build_like_deploy_sh() {
    let c = pakashop();
    let table: &[(&str, &[&str])] = &[
        ("node", &["npm", "ci", "--production"]),
        ("go", &["go", "build", "-o", "bin/{service}", "./src"]),
        (
            "python",
            &[
                "sh",
                "-c",
                "python3 -m venv venv && venv/bin/pip install -r requirements.txt",
            ],
        ),
    ];
    assert_eq!(c.runtimes.len(), table.len());
    for (name, build) in table {
        let rt = &c.runtimes[*name];
        // npm ci and the venv are cached dependency steps; go builds.
        let (step, inputs, outputs): (_, &[&str], &[&str]) = match *name {
            "node" => (
                rt.deps.as_ref().map(|d| &d.command),
                &["package.json", "package-lock.json"],
                &["node_modules"],
            ),
            "python" => (
                rt.deps.as_ref().map(|d| &d.command),
                &["requirements.txt"],
                &["venv"],
            ),
            _ => (rt.build.as_ref(), &[], &[]),
        };
        assert_eq!(step.unwrap().argv, argv(build), "{name}: build");
        if let Some(d) = &rt.deps {
            assert_eq!(
                (argv(inputs), argv(outputs)),
                (d.inputs.clone(), d.outputs.clone())
            );
            assert!(d.version.is_some(), "{name}: version");
        }
        assert!(rt.unit.is_some(), "{name}: unit");
    }
    let migrate = c.runtimes["node"].migrate.as_ref().unwrap();
    assert_eq!(
        migrate.command.argv,
        argv(&["npx", "prisma", "migrate", "deploy"])
    );
    assert_eq!(migrate.if_exists.as_deref(), Some("prisma/schema.prisma"));
    assert!(c.runtimes["go"].migrate.is_none());
    assert!(c.runtimes["python"].migrate.is_none());
}

#[test]
fn pakashop_environments_and_proxy() {
    let c = pakashop();
    let names: Vec<&str> = c.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["staging", "production"]);
    let staging = c.environment("staging").unwrap();
    assert_eq!(staging.branch, "main");
    assert_eq!(staging.root, "/opt/pakashop");
    assert!(staging.backup.is_none());
    assert!(!staging.approval);
    let production = c.environment("production").unwrap();
    assert_eq!(production.branch, "production");
    assert_eq!(production.root, "/opt/pakashop");
    assert!(production.approval);
    let backup = production.backup.as_ref().unwrap();
    assert_eq!(backup.keep, 30);
    assert!(backup.run.argv.iter().any(|a| a.contains("pg_dump")));
    assert!(backup.run.argv.iter().any(|a| a == "{backup}"));
    assert!(backup.restore.argv.iter().any(|a| a.contains("psql")));
    // One EC2 instance per environment, deployed from the CI runner over ssh
    // as root (the system manager), by its ssh Host alias.
    for (env, host) in [
        (staging, "pakashop-staging"),
        (production, "pakashop-production"),
    ] {
        assert_eq!(env.hosts.len(), 1, "{}", env.name);
        let h = &env.hosts[0];
        assert_eq!((h.name.as_str(), h.address.as_str()), (host, host));
        assert_eq!(h.user.as_deref(), Some("root"));
        assert!(h.roles.is_empty());
    }

    let proxy = c.proxy.as_ref().unwrap();
    assert_eq!(proxy.name, "nginx");
    assert_eq!(proxy.unit, "nginx.service");
    assert_eq!(proxy.check.as_ref().unwrap().argv, argv(&["nginx", "-t"]));
    assert_eq!(c.project.keep_releases, 5);
}

#[test]
fn pakashop_units_merge_runtime_and_service() {
    let c = pakashop();
    let backend = c.service("backend").unwrap().unit.as_ref().unwrap();
    assert_eq!(
        backend.exec,
        argv(&["/usr/bin/node", "{current}/src/index.js"])
    );
    assert_eq!(backend.description.as_deref(), Some("Pakashop Backend API"));
    assert_eq!(
        backend.after,
        argv(&["postgresql.service", "redis-server.service"])
    );
    assert_eq!(backend.env["PORT"].value, "{port}");
    assert_eq!(backend.env["NODE_ENV"].value, "production");
    assert_eq!(backend.restart, "on-failure");
    assert_eq!(backend.user.as_deref(), Some("pakashop"));
    let search = c.service("search").unwrap().unit.as_ref().unwrap();
    assert_eq!(search.exec, argv(&["{current}/bin/{service}"]));
}

/// A fleet environment as docs/config.md shows it.
const FLEET_CONFIG: &str = r#"project "shop"
phase "app"
runtime "node" { build "npm" "ci"; }
environment "staging" { branch "main"; root "/srv/shop"; }
environment "production" {
    branch "production"
    root "/srv/shop"
    host "app1" address="10.0.0.11" user="deploy" port=2222 {
        roles "web" "workers"
    }
    host "app2" address="app2.internal" { roles "web"; }
    host "app3"
    host "lb1" address="fd00::10" { roles "lb"; }
    rollout {
        canary 1
        batches "25%" 2 "100%"
        max-fail 1
        pause "30s"
        connections 4
    }
    drain {
        before "lb1" "/usr/local/bin/lb" "drain" "{hosts}" timeout="1m"
        after "lb1" "/usr/local/bin/lb" "undrain" "{addresses}" "{{literal}}"
    }
}
service "api" { runtime "node"; port 3000; phase "app"; role "web"; }
service "mailer" { runtime "node"; port 3001; phase "app"; role "workers"; }
service "config" { runtime "node"; port 3002; phase "app"; }
service "gateway" { runtime "node"; port 3003; phase "app"; role "web"; depends-on "config" "mailer"; }
"#;

#[test]
fn fleet_environment_hosts_rollout_and_drain() {
    use moorline::config::{BatchSize, DrainWhen, Host};
    let c = match config::parse("fleet.kdl", FLEET_CONFIG) {
        Ok(c) => c,
        Err(e) => panic!("{}", moorline::report::plain(&e)),
    };
    let staging = c.environment("staging").unwrap();
    assert!(!staging.is_fleet());
    assert_eq!(staging.rollout, moorline::config::Rollout::default());
    let prod = c.environment("production").unwrap();
    assert!(prod.is_fleet());
    let host = |name: &str, address: &str, user: Option<&str>, port, roles: &[&str]| Host {
        name: name.to_owned(),
        address: address.to_owned(),
        user: user.map(str::to_owned),
        port,
        roles: argv(roles),
    };
    assert_eq!(
        prod.hosts,
        [
            host(
                "app1",
                "10.0.0.11",
                Some("deploy"),
                Some(2222),
                &["web", "workers"]
            ),
            host("app2", "app2.internal", None, None, &["web"]),
            // Without an address, the name is what ssh connects to.
            host("app3", "app3", None, None, &[]),
            host("lb1", "fd00::10", None, None, &["lb"]),
        ]
    );
    let r = &prod.rollout;
    assert_eq!(r.canary, 1);
    assert_eq!(
        r.batches,
        [
            BatchSize::Percent(25),
            BatchSize::Count(2),
            BatchSize::Percent(100)
        ]
    );
    assert_eq!((r.max_fail, r.connections), (1, 4));
    assert_eq!(r.pause, std::time::Duration::from_secs(30));
    // 4 hosts: the canary, 25% (1), 2, then the one left.
    assert_eq!(r.steps(prod.hosts.len()), [1, 1, 2]);
    assert_eq!(prod.drain.len(), 2);
    assert_eq!(prod.drain[0].when, DrainWhen::Before);
    assert_eq!(prod.drain[0].on, "lb1");
    assert_eq!(
        prod.drain[0].command.timeout,
        std::time::Duration::from_mins(1)
    );
    assert_eq!(prod.drain[1].when, DrainWhen::After);
    let batch = [&prod.hosts[0], &prod.hosts[1]];
    assert_eq!(
        prod.drain[0].argv_for(&batch),
        argv(&["/usr/local/bin/lb", "drain", "app1,app2"])
    );
    assert_eq!(
        prod.drain[1].argv_for(&batch),
        argv(&[
            "/usr/local/bin/lb",
            "undrain",
            "10.0.0.11,app2.internal",
            "{literal}"
        ])
    );
    let on = |h: usize| -> Vec<&str> {
        prod.services_on(&prod.hosts[h], &c.services)
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    };
    assert_eq!(on(0), ["api", "mailer", "config", "gateway"]);
    assert_eq!(on(1), ["api", "config", "gateway"]);
    assert_eq!(
        on(2),
        ["api", "mailer", "config", "gateway"],
        "no roles: every service"
    );
    assert_eq!(
        on(3),
        ["config"],
        "a role no service has: only role-less services"
    );
    assert_eq!(c.service("api").unwrap().role.as_deref(), Some("web"));
    assert_eq!(c.service("config").unwrap().role, None);

    // The host side keeps its services; a dependency on another host's
    // service is dropped, and lookups by name still work.
    let mut app2 = c.clone();
    app2.keep_services_of(&prod.hosts[1]);
    let names: Vec<&str> = app2.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "config", "gateway"]);
    assert_eq!(app2.service("gateway").unwrap().depends_on, ["config"]);
    assert!(app2.service("mailer").is_none());
}

#[test]
fn a_role_needs_a_host_only_in_fleet_environments() {
    // No environment has hosts: a role is not checked (everything runs on
    // the host moorline runs on).
    let text = "project \"shop\"\nphase \"app\"\nruntime \"node\" { build \"npm\" \"ci\"; }\n\
                environment \"staging\" { branch \"main\"; root \"/srv/shop\"; }\n\
                service \"api\" { runtime \"node\"; port 3000; phase \"app\"; role \"web\"; }\n";
    let c = config::parse("roles.kdl", text).unwrap();
    assert_eq!(c.service("api").unwrap().role.as_deref(), Some("web"));
}

/// Loads `tests/fixtures/invalid/NAME.kdl`, checks that it fails with
/// well-formed problems, and snapshots the rendered report.
fn check_invalid(name: &str) {
    let file = format!("{name}.kdl");
    let path = manifest_dir().join("tests/fixtures/invalid").join(&file);
    let text = std::fs::read_to_string(&path).unwrap();
    let Err(err) = config::parse(&file, &text) else {
        panic!("{file} loaded, but it is in the invalid catalogue");
    };
    assert!(!err.problems.is_empty(), "{file}: no problems");
    for p in &err.problems {
        let code = p.code().map(|c| c.to_string()).unwrap_or_default();
        assert!(
            code.starts_with("moorline::config::"),
            "{file}: code {code:?} of {p}"
        );
        let help = p.help().map(|h| h.to_string()).unwrap_or_default();
        assert!(!help.trim().is_empty(), "{file}: no help for {p}");
        let labels: Vec<_> = p.labels().into_iter().flatten().collect();
        assert!(!labels.is_empty(), "{file}: no label for {p}");
        // Spans point into the text as shown (invisible characters escaped).
        let shown = &err.src.text;
        for l in labels {
            assert!(
                l.offset() + l.len() <= shown.len(),
                "{file}: label {:?} outside the file ({} bytes) for {p}",
                l.inner(),
                shown.len()
            );
        }
    }
    // Nothing a terminal acts on or a reader cannot see reaches the
    // report: not from a value, a comment or the file's name.
    let plain = moorline::report::plain(&err);
    let hidden: Vec<char> = plain
        .chars()
        .filter(|c| moorline::visible::is_invisible(*c) && *c != '\n')
        .collect();
    assert!(hidden.is_empty(), "{file}: {hidden:?} in the report");
    insta::with_settings!({
        description => text.clone(),
        omit_expression => true,
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(format!("invalid__{name}"), plain);
    });
}

macro_rules! invalid {
    ($($name:ident),* $(,)?) => {
        /// Every fixture the macro below turns into a test.
        const FIXTURES: &[&str] = &[$(stringify!($name)),*];
        mod invalid {
            $(
                #[test]
                fn $name() {
                    super::check_invalid(stringify!($name));
                }
            )*
        }
    };
}

invalid! {
    secret_beside_a_syntax_error,
    control_bytes_in_comment,
    syntax_control_bytes,
    invisible_in_name,
    invisible_in_path,
    invisible_in_user,
    invisible_in_env_key,
    invisible_in_command,
    invisible_in_value,
    invisible_in_secret_env_value,
    // Values that validate as KDL but cannot work.
    duration_too_long,
    unit_user_invalid,
    relative_env_file,
    unit_dir_not_read,
    type_annotation,
    secret_marked_beside_a_problem,
    bidi_override_in_exec,
    line_separator_in_description,
    unit_user_with_colon,
    unit_relative_env_file,
    syntax_unclosed_brace,
    syntax_unquoted_string,
    syntax_bad_escape,
    syntax_kdl_v1_bool,
    syntax_stray_brace,
    syntax_unclosed_string,
    unknown_node,
    unknown_node_top,
    unknown_property,
    wrong_type,
    service_missing_values,
    environment_without_root,
    environment_without_branch,
    duplicate_service,
    duplicate_phase,
    duplicate_environment,
    duplicate_runtime,
    port_conflict,
    port_zero,
    port_too_large,
    port_offset_too_large,
    unknown_phase,
    unknown_runtime,
    unknown_service,
    cycle,
    self_dependency,
    later_phase_dependency,
    unknown_placeholder,
    backup_placeholder_in_unit,
    release_placeholder_in_unit,
    deps_problems,
    service_name_dotdot,
    service_name_slash,
    path_absolute,
    path_dotdot,
    watch_escapes_repo,
    unit_name_without_service,
    infrastructure_unit_name,
    empty_command,
    empty_program,
    bad_duration,
    bad_restart_policy,
    keep_releases_one,
    backup_without_restore,
    relative_root,
    second_proxy,
    env_invalid_name,
    many_problems,
    // Hostile input: injection through every unit field, control characters.
    inject_env_value,
    inject_secret_env_value,
    inject_description,
    inject_user,
    inject_group,
    inject_working_directory,
    inject_env_file,
    inject_wanted_by,
    inject_exec_word,
    inject_root,
    inject_branch,
    inject_after,
    inject_runtime_unit,
    carriage_return_in_description,
    nul_in_env_value,
    escape_sequence_in_description,
    tab_in_user,
    delete_in_group,
    control_in_build_command,
    control_in_service_name,
    control_in_health,
    control_in_watch,
    control_in_url,
    relative_working_directory,
    unit_name_target,
    unit_name_template_too_long,
    unit_name_too_long_for_service,
    unit_name_characters,
    after_unit_name_characters,
    second_project,
    root_is_slash,
    root_system_directory,
    root_dot_components,
    branch_invalid_names,
    exec_flag_prefix,
    exec_init_todo,
    program_is_option,
    https_health,
    ready_kinds,
    wanted_by_not_a_unit,
    name_empty,
    name_unicode,
    name_too_long,
    name_dot,
    deep_nesting,
    nested_comments,
    slashdash_run,
    long_value_elided,
    promote_from_bad,
    pass_env_bad,
    // Fleet mode: hosts, roles, rollout, drain hooks.
    fleet_host_duplicates,
    fleet_host_address,
    fleet_host_user_port,
    fleet_host_name,
    fleet_unhosted_service,
    fleet_batches,
    fleet_rollout_numbers,
    fleet_without_hosts,
    fleet_drain_bad,
    fleet_control_in_address,
    fleet_misplaced,
}

#[test]
fn every_invalid_fixture_is_listed() {
    let dir = manifest_dir().join("tests/fixtures/invalid");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
        .map(|p| stem(&p))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    let unlisted: Vec<&String> = on_disk.iter().filter(|f| !listed.contains(f)).collect();
    let missing: Vec<&String> = listed.iter().filter(|f| !on_disk.contains(f)).collect();
    assert!(
        unlisted.is_empty(),
        "fixtures not listed in invalid!: {unlisted:?}"
    );
    assert!(missing.is_empty(), "listed but no file: {missing:?}");
    assert!(FIXTURES.len() >= 90);
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A rendered report of a hostile file stays under this size, whatever the
/// size of the file or the number of its problems.
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Hostile files too large to commit, generated here. Each must fail with
/// `code`, render (plain and in colour) within [`MAX_REPORT_BYTES`], and its
/// plain report is a snapshot.
fn check_generated(name: &str, text: &str, code: &str) {
    let file = format!("{name}.kdl");
    let Err(err) = config::parse(&file, text) else {
        panic!("{file} loaded, but it is hostile");
    };
    let codes: Vec<String> = err
        .problems
        .iter()
        .filter_map(|p| p.code().map(|c| c.to_string()))
        .collect();
    assert!(
        codes.iter().any(|c| c == code),
        "{file}: no {code} among {:?}",
        &codes[..codes.len().min(5)]
    );
    let plain = moorline::report::plain(&err);
    assert!(
        plain.len() < MAX_REPORT_BYTES,
        "{file}: plain report of {} bytes",
        plain.len()
    );
    let mut fancy = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode())
        .render_report(&mut fancy, &err)
        .unwrap();
    assert!(
        fancy.len() < 2 * MAX_REPORT_BYTES,
        "{file}: colour report of {} bytes",
        fancy.len()
    );
    insta::with_settings!({
        description => format!("generated: {name} ({} bytes)", text.len()),
        omit_expression => true,
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(format!("generated__{name}"), plain);
    });
}

const PRELUDE: &str =
    "project \"shop\"\nphase \"app\"\nruntime \"node\" { build \"npm\" \"ci\"; }\n";

mod generated {
    use super::{PRELUDE, check_generated};

    #[test]
    fn huge_value() {
        // 3 MB on one line: the message elides it, the source is windowed.
        let text = format!(
            "{PRELUDE}service \"{}\" {{ runtime \"node\"; port 3000; phase \"app\"; }}\n",
            "x".repeat(3_000_000)
        );
        check_generated("huge_value", &text, "moorline::config::invalid_name");
    }

    #[test]
    fn huge_control_value() {
        let text = format!(
            "{PRELUDE}service \"api\" {{ runtime \"node\"; port 3000; phase \"app\"; unit {{ exec \"/bin/x\"; description \"{}\\n\"; }} }}\n",
            "d".repeat(1_000_000)
        );
        check_generated(
            "huge_control_value",
            &text,
            "moorline::config::control_character",
        );
    }

    #[test]
    fn file_too_large() {
        let line = "// a comment line to make the file larger than moorline reads\n";
        let text = format!(
            "{PRELUDE}{}",
            line.repeat(moorline::config::limits::MAX_FILE_BYTES / line.len() + 1)
        );
        check_generated("file_too_large", &text, "moorline::config::too_large");
    }

    #[test]
    fn blocks_100k_deep() {
        let text = format!("{PRELUDE}{}{}", "a {".repeat(100_000), "}".repeat(100_000));
        check_generated("blocks_100k_deep", &text, "moorline::config::too_deep");
    }

    #[test]
    fn comments_100k_deep() {
        let text = format!("{PRELUDE}{}", "/* ".repeat(100_000));
        check_generated("comments_100k_deep", &text, "moorline::config::too_deep");
    }

    #[test]
    fn slashdash_100k() {
        let text = format!("{PRELUDE}{}a\n", "/- ".repeat(100_000));
        check_generated("slashdash_100k", &text, "moorline::config::too_deep");
    }

    #[test]
    fn control_bytes_between_problems() {
        // 200,000 unknown properties on one line, an ESC in a comment
        // between each two: every label is moved past the escapes before
        // it in logarithmic time (summing them per label would be 2·10^10
        // additions here).
        let text = format!(
            "{PRELUDE}service \"api\" {}{{ runtime \"node\"; port 3000; phase \"app\"; }}\n",
            "xy=1 /*\u{1b}*/ ".repeat(200_000)
        );
        let started = std::time::Instant::now();
        check_generated(
            "control_bytes_between_problems",
            &text,
            "moorline::config::unknown_property",
        );
        eprintln!("reported in {:?}", started.elapsed());
    }

    #[test]
    fn problems_on_one_long_line() {
        // 200,000 unknown properties on one 1.4 MB line: 50 are shown, each
        // under a window of the line, and the rest are counted.
        let text = format!(
            "{PRELUDE}service \"api\" {}{{ runtime \"node\"; port 3000; phase \"app\"; }}\n",
            "xy=1 ".repeat(200_000)
        );
        check_generated(
            "problems_on_one_long_line",
            &text,
            "moorline::config::unknown_property",
        );
    }
}

/// Services in the generated fleet: large enough that quadratic validation
/// (it once took over 30 s for 100,000) shows, small enough for a debug test.
const FLEET: usize = 20_000;

#[test]
fn a_fleet_with_duplicate_ports_and_unknown_dependencies_fails_fast_and_briefly() {
    use std::fmt::Write as _;
    let mut text = String::from(PRELUDE);
    for i in 0..FLEET {
        // Ten services per port, each depending on the next (one cycle
        // through the whole fleet) and on one that does not exist.
        writeln!(
            text,
            "service \"s{i}\" {{ runtime \"node\"; port {}; phase \"app\"; depends-on \"s{}\" \"missing{i}\"; }}",
            1000 + i / 10,
            (i + 1) % FLEET
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    let Err(err) = config::parse("fleet.kdl", &text) else {
        panic!("the fleet loaded");
    };
    let elapsed = started.elapsed();
    let count = |code: &str| {
        err.problems
            .iter()
            .filter(|p| p.kind.code() == code)
            .count()
    };
    assert_eq!(count("moorline::config::port_conflict"), FLEET / 10 * 9);
    assert_eq!(count("moorline::config::unknown_reference"), FLEET);
    assert_eq!(count("moorline::config::dependency_cycle"), 1);
    let plain = moorline::report::plain(&err);
    let more = err.problems.len() - moorline::config::error::MAX_PROBLEMS_SHOWN;
    assert!(
        plain.contains(&format!("and {} more problems", thousands(more))),
        "no summary in {}",
        &plain[plain.len().saturating_sub(500)..]
    );
    assert!(plain.len() < MAX_REPORT_BYTES, "{} bytes", plain.len());
    eprintln!("{FLEET} services validated in {elapsed:?}");
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[test]
fn every_problem_code_is_in_config_md() {
    let doc = std::fs::read_to_string(manifest_dir().join("docs/config.md")).unwrap();
    let missing: Vec<&str> = config::ProblemKind::ALL
        .iter()
        .map(|k| k.code())
        .chain([
            "moorline::config::invalid",
            "moorline::config::more_problems",
        ])
        .filter(|code| !doc.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes not in docs/config.md: {missing:?}"
    );
}

/// Hosts and services in the generated fleet environment.
const HOSTS: usize = 5_000;

#[test]
fn a_large_fleet_environment_with_unhosted_services_fails_fast() {
    use std::fmt::Write as _;
    let mut text = String::from(PRELUDE);
    text.push_str(
        "environment \"production\" {\n    branch \"production\"\n    root \"/srv/shop\"\n",
    );
    for i in 0..HOSTS {
        // Every other host at the address of the one before it.
        writeln!(
            text,
            "    host \"h{i}\" address=\"10.0.{}.{}\" {{ roles \"r{i}\"; }}",
            i / 2 / 250,
            i / 2 % 250
        )
        .unwrap();
    }
    text.push_str("}\n");
    for i in 0..HOSTS {
        writeln!(
            text,
            "service \"s{i}\" {{ runtime \"node\"; port {}; phase \"app\"; role \"x{i}\"; }}",
            1000 + i
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    let Err(err) = config::parse("hosts.kdl", &text) else {
        panic!("the fleet loaded");
    };
    let elapsed = started.elapsed();
    let count = |code: &str| {
        err.problems
            .iter()
            .filter(|p| p.kind.code() == code)
            .count()
    };
    assert_eq!(count("moorline::config::unhosted_service"), HOSTS);
    assert_eq!(count("moorline::config::duplicate_address"), HOSTS / 2);
    assert!(moorline::report::plain(&err).len() < MAX_REPORT_BYTES);
    eprintln!("{HOSTS} hosts and services validated in {elapsed:?}");
}

#[test]
fn the_fleet_example_of_config_md_is_valid() {
    let doc = std::fs::read_to_string(manifest_dir().join("docs/config.md")).unwrap();
    let section = &doc[doc.find("### Fleet:").expect("a Fleet section")..];
    let start = section.find("```kdl\n").expect("a kdl example") + "```kdl\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let text = format!(
        "project \"pakashop\"\nphase \"core\"\nruntime \"node\" {{ build \"npm\" \"ci\"; }}\n{example}"
    );
    let c = match config::parse("config.md", &text) {
        Ok(c) => c,
        Err(e) => panic!("{}", moorline::report::plain(&e)),
    };
    let prod = c.environment("production").unwrap();
    let names: Vec<&str> = prod.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["app1", "app2", "app3", "lb1"]);
    // canary 1, "25%" of 4 = 1, then "100%": the rest.
    assert_eq!(prod.rollout.steps(prod.hosts.len()), [1, 1, 2]);
    let backend_on: Vec<&str> = prod
        .hosts
        .iter()
        .filter(|h| !prod.services_on(h, &c.services).is_empty())
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(
        backend_on,
        ["app1", "app2", "app3"],
        "lb1 runs no web service"
    );
}

/// `validate`'s check of environments that share a host, on
/// `tests/fixtures/shared_host/NAME.kdl`: each file loads (every
/// environment on its own is fine) and the check reports every clash,
/// coded and labelled on both environments; the report is a snapshot.
fn check_shared_host(name: &str) -> String {
    let path = manifest_dir()
        .join("tests/fixtures/shared_host")
        .join(format!("{name}.kdl"));
    let loaded = config::load(&path).unwrap();
    let Err(err) = config::check_shared_hosts(&loaded) else {
        panic!("{name}: no clash found");
    };
    for p in &err.problems {
        let code = p.code().map(|c| c.to_string()).unwrap_or_default();
        assert!(
            code.starts_with("moorline::config::shared_"),
            "{name}: code {code:?} of {p}"
        );
        assert!(p.help().is_some(), "{name}: no help for {p}");
        let labels: Vec<_> = p.labels().into_iter().flatten().collect();
        assert!(labels.len() >= 2, "{name}: both environments labelled: {p}");
    }
    let plain = moorline::report::plain(&err);
    plain.replace(&manifest_dir().display().to_string(), "[DIR]")
}

#[test]
fn environments_on_one_host_that_share_a_root_unit_names_or_ports_are_refused() {
    let both_local = check_shared_host("both_local");
    for code in ["shared_root", "shared_unit_names", "shared_ports"] {
        assert!(
            both_local.contains(&format!("moorline::config::{code}")),
            "{both_local}"
        );
    }
    insta::assert_snapshot!("shared_host__both_local", both_local);
    let same_address = check_shared_host("same_address");
    assert!(
        !same_address.contains("shared_root") && !same_address.contains("shared_unit_names"),
        "{same_address}"
    );
    insta::assert_snapshot!("shared_host__same_address", same_address);
}

#[test]
fn env_in_root_and_unit_name_and_a_port_offset_keep_two_local_environments_apart() {
    let text = "project \"shop\" { unit-name \"shop-{env}-{service}.service\"; }\nphase \"app\"\n\
                runtime \"node\" { build \"npm\" \"ci\"; unit { exec \"/usr/bin/node\" \"{current}/index.js\"; }; }\n\
                environment \"staging\" { branch \"main\"; root \"/srv/shop/{env}\"; }\n\
                environment \"production\" { branch \"production\"; root \"/srv/shop/{env}\"; port-offset 1000; }\n\
                service \"api\" { runtime \"node\"; port 3000; phase \"app\"; }\n\
                service \"web\" { runtime \"node\"; port 3001; phase \"app\"; depends-on \"api\"; }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.kdl");
    std::fs::write(&path, text).unwrap();
    let loaded = config::load(&path).unwrap();
    config::check_shared_hosts(&loaded).unwrap();
    let c = &loaded.config;
    let roots: Vec<&str> = c.environments.iter().map(|e| e.root.as_str()).collect();
    assert_eq!(roots, ["/srv/shop/staging", "/srv/shop/production"]);
    for (env, api, web) in [
        (
            "staging",
            ("shop-staging-api.service", 3000),
            ("shop-staging-web.service", 3001),
        ),
        (
            "production",
            ("shop-production-api.service", 4000),
            ("shop-production-web.service", 4001),
        ),
    ] {
        let mut c = c.clone();
        c.for_environment(env);
        let api_s = c.service("api").unwrap();
        assert_eq!(
            (api_s.unit_name.as_str(), api_s.port.unwrap_or(0)),
            api,
            "{env}"
        );
        let web_s = c.service("web").unwrap();
        assert_eq!(
            (web_s.unit_name.as_str(), web_s.port.unwrap_or(0)),
            web,
            "{env}"
        );
        // The unit of web starts after api's unit of the same environment.
        assert!(
            web_s.start_after.contains(&api.0.to_owned()),
            "{env}: {:?}",
            web_s.start_after
        );
    }
}
