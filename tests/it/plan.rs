//! `moorline plan` end to end: the real binary against Pakashop-shaped
//! fixture repositories. Snapshots of every format for the scenarios a
//! reviewer meets (filters redact only temp paths, SHAs and fingerprints),
//! determinism, exit codes, changes checked against `git diff`, secrets,
//! bad input, and the rendered example plans under `plans/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};

/// The three formats a plan is shown in.
const FORMATS: [&str; 3] = ["text", "markdown", "json"];

/// A fixture repository with its own state directory and unit directory.
struct Fx {
    dir: tempfile::TempDir,
    fx: Fixture,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fx = Fixture::create(
            &dir.path().join("fx"),
            &FixtureOptions::new(dir.path().join("srv")),
        )
        .unwrap();
        Self { dir, fx }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `XDG_CONFIG_HOME`: with `--systemd user`, units live in `systemd/user` under it.
    fn config_home(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    fn unit_dir(&self) -> PathBuf {
        self.config_home().join("systemd/user")
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        self.cmd_for("user", args)
    }

    /// `cmd` for another manager (`system`: what Pakashop's hosts run).
    fn cmd_for(&self, manager: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(["--state-dir", self.state_dir().to_str().unwrap()])
            .args(["--systemd", manager])
            .args(args)
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .env_remove("MOORLINE_HOST")
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// stdout of a plan that must succeed (exit 0 or 2 with --detailed-exitcode).
    fn plan(&self, args: &[&str]) -> String {
        let o = self.run(&[&["plan"], args].concat());
        assert!(matches!(o.status.code(), Some(0 | 2)), "{}", describe(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    fn commit(&self, branch: &str, msg: &str, edits: &[Edit]) -> String {
        self.fx.commit(branch, msg, edits).unwrap()
    }

    fn initial(&self) -> String {
        self.fx.head("production").unwrap()
    }

    /// Records `rev` as deployed everywhere and installs the units the
    /// current config renders, as a complete apply would have left the host.
    fn deployed(&self, env_name: &str, rev: &str) {
        let mut loaded = moorline::config::load(&self.fx.config_path).unwrap();
        // These plans are made with `--systemd user`, as the units were installed.
        moorline::target::for_user_manager(&mut loaded.config);
        let config = &loaded.config;
        let env = config.environment(env_name).unwrap();
        std::fs::create_dir_all(self.unit_dir()).unwrap();
        let mut services = BTreeMap::new();
        for s in &config.services {
            let unit = moorline::unit::render(env, s).unwrap();
            if let Some(text) = &unit {
                std::fs::write(self.unit_dir().join(&s.unit_name), text).unwrap();
            }
            services.insert(
                s.name.clone(),
                moorline::state::ServiceState {
                    revision: rev.to_owned(),
                    previous: None,
                    unit_sha256: unit
                        .as_ref()
                        .map(|u| moorline::files::sha256_hex(u.as_bytes())),
                    unit: unit.map(|_| s.unit_name.clone()),
                    artifact: None,
                },
            );
        }
        let state = moorline::state::State {
            format_version: moorline::state::FORMAT_VERSION,
            project: config.project.name.clone(),
            environment: env_name.to_owned(),
            revision: Some(rev.to_owned()),
            services,
            ..Default::default()
        };
        moorline::state::save(&self.state_dir(), &state).unwrap();
    }

    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.fx.config_path).unwrap();
        assert!(text.contains(from), "{from:?} not in the fixture config");
        std::fs::write(&self.fx.config_path, text.replacen(from, to, 1)).unwrap();
    }
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Redacts what differs between machines and runs, and nothing else.
macro_rules! redacted {
    ($($body:tt)*) => {
        insta::with_settings!({
            snapshot_path => "snapshots",
            prepend_module_to_snapshot => false,
            filters => vec![
                (r"(/[\w.-]+)*/\.tmp[A-Za-z0-9]+", "[TMP]"),
                (r"\b[0-9a-f]{64}\b", "[SHA256]"),
                (r"\b[0-9a-f]{40}\b", "[SHA]"),
                (r"\b[0-9a-f]{12}\b", "[SHORT]"),
            ],
        }, { $($body)* })
    };
}

/// Snapshots `plan ARGS` in every format as `{name}_{format}`.
fn snapshot_all(f: &Fx, name: &str, args: &[&str]) {
    for format in FORMATS {
        let out = f.plan(&[args, &["--format", format]].concat());
        redacted!({
            insta::assert_snapshot!(format!("plan_{name}_{format}"), out);
        });
    }
}

#[test]
fn first_deploy() {
    let f = Fx::new();
    snapshot_all(&f, "first_deploy", &["--env", "staging"]);
}

#[test]
fn one_service_changed() {
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "main",
        "coupon: fix rounding",
        &[Edit::touch_service("coupon")],
    );
    snapshot_all(&f, "one_service", &["--env", "staging", "--from", &from]);
}

#[test]
fn control_characters_from_the_repository_are_escaped_in_the_text_plan() {
    // A commit can name a file and word its message with escape sequences
    // (retitle the terminal, clear the screen): the plan shows them escaped.
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "main",
        "coupon: \u{1b}[2J\u{1b}]0;PWNED\u{7}fix",
        &[Edit::Write {
            path: "services/coupon/\u{1b}]0;PWNED\u{7}\u{9b}2J\u{202e}sj.js".to_owned(),
            contents: "x\n".to_owned(),
        }],
    );
    let text = f.plan(&["--env", "staging", "--from", &from]);
    let hidden: Vec<char> = text
        .chars()
        .filter(|c| moorline::visible::is_invisible(*c) && *c != '\n')
        .collect();
    assert!(hidden.is_empty(), "{hidden:?} in\n{text}");
    assert!(
        text.contains(r"services/coupon/\u{1b}]0;PWNED\u{7}\u{9b}2J\u{202e}sj.js"),
        "{text}"
    );
}

#[test]
fn watched_shared_path_changed() {
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "main",
        "shared: currency helper",
        &[Edit::Write {
            path: "packages/shared/index.js".to_owned(),
            contents: "module.exports = { currency: 'PKR', version: 2 };\n".to_owned(),
        }],
    );
    snapshot_all(&f, "shared_path", &["--env", "staging", "--from", &from]);
}

#[test]
fn migration_added() {
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "main",
        "backend: orders table",
        &[Edit::add_migration("backend", "0002_orders")],
    );
    snapshot_all(&f, "migration", &["--env", "staging", "--from", &from]);
}

#[test]
fn unit_file_changed() {
    let f = Fx::new();
    let head = f.fx.head("main").unwrap();
    f.deployed("staging", &head);
    // Installed units equal the rendered ones: nothing to do.
    let o = f.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    f.edit_config("NODE_ENV=\"production\"", "NODE_ENV=\"staging\"");
    snapshot_all(&f, "unit_changed", &["--env", "staging"]);
}

/// `pricing` was deployed while its unit was written by hand (the state
/// records no unit of it), and that hand-written file is on the host.
fn hand_written_pricing_unit(f: &Fx) -> PathBuf {
    let head = f.fx.head("main").unwrap();
    f.deployed("staging", &head);
    let mut st = moorline::state::load(&f.state_dir(), "pakashop", "staging")
        .unwrap()
        .state
        .unwrap();
    let svc = st.services.get_mut("pricing").unwrap();
    svc.unit_sha256 = None;
    svc.unit = None;
    moorline::state::save(&f.state_dir(), &st).unwrap();
    let path = f.unit_dir().join("pakashop-pricing.service");
    std::fs::write(
        &path,
        "[Unit]\nDescription=pricing, by hand\n\n[Service]\nExecStart=/usr/bin/python3 /srv/pricing/server.py\nEnvironment=\"API_TOKEN=hand-written-secret\"\n",
    )
    .unwrap();
    path
}

#[test]
fn unit_not_installed_by_moorline_is_a_conflict() {
    let f = Fx::new();
    let path = hand_written_pricing_unit(&f);
    // Nothing else changes, yet the plan is not "no changes".
    let o = f.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    snapshot_all(&f, "unit_conflict", &["--env", "staging"]);
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "staging", "--format", "json"])).unwrap();
    assert_eq!(json["conflicts"][0]["service"], "pricing");
    assert_eq!(json["conflicts"][0]["path"], path.to_str().unwrap());
    assert_eq!(json["actions"].as_array().unwrap().len(), 0, "{json}");
    // Adopted: replaced, with the diff from the hand-written file, and
    // the adoption recorded in the plan's inputs.
    snapshot_all(
        &f,
        "unit_adopt",
        &["--env", "staging", "--adopt", "pricing"],
    );
    let json: serde_json::Value = serde_json::from_str(&f.plan(&[
        "--env",
        "staging",
        "--adopt",
        "pakashop-pricing.service",
        "--format",
        "json",
    ]))
    .unwrap();
    assert!(json.get("conflicts").is_none(), "{json}");
    assert_eq!(json["inputs"]["adopt"], serde_json::json!(["pricing"]));
    let install = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "install-unit:pricing")
        .unwrap();
    assert!(
        install["reason"]
            .as_str()
            .unwrap()
            .starts_with("adopting a unit moorline did not install"),
        "{install}"
    );
    // The hand-written file's secret is redacted in the diff like any other.
    assert!(!json.to_string().contains("hand-written-secret"));
    // A name that is not a managed service is an error.
    fails_with(
        &f.run(&["plan", "--env", "staging", "--adopt", "pricng"]),
        "moorline::cli::adopt",
    );
    // Owned units stay owned: no conflict for the others, and none once
    // the state records pricing's unit.
    f.deployed("staging", &f.fx.head("main").unwrap());
    let o = f.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

#[test]
fn nothing_changed() {
    let f = Fx::new();
    let head = f.fx.head("main").unwrap();
    let args = ["--env", "staging", "--from", &head, "--to", "main"];
    snapshot_all(&f, "nothing", &args);
    let o = f.run(&[&["plan"], &args[..], &["--detailed-exitcode"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

#[test]
fn production_with_backup() {
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "production",
        "backend: orders table",
        &[
            Edit::add_migration("backend", "0002_orders"),
            Edit::touch_service("backend"),
            Edit::touch_service("search"),
        ],
    );
    snapshot_all(
        &f,
        "production_backup",
        &["--env", "production", "--from", &from],
    );
    let json: serde_json::Value = serde_json::from_str(&f.plan(&[
        "--env",
        "production",
        "--from",
        &from,
        "--format",
        "json",
    ]))
    .unwrap();
    crate::deploy::assert_backup_before_migration(&json);
    assert_eq!(json["rollback"]["kind"], "needs-database");
}

#[test]
fn production_first_deploy_takes_no_backup() {
    let f = Fx::new();
    let out = f.plan(&["--env", "production"]);
    redacted!({
        insta::assert_snapshot!("plan_production_first_deploy_text", out);
    });
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "production", "--format", "json"])).unwrap();
    let ids: Vec<&str> = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"migrate:backend"), "{ids:?}");
    assert!(!ids.contains(&"backup"), "{ids:?}");
    assert_eq!(
        json["notes"][0].as_str().unwrap(),
        out.lines().find_map(|l| l.strip_prefix("note: ")).unwrap()
    );
    let md = f.plan(&["--env", "production", "--format", "markdown"]);
    assert!(
        md.contains("> [!NOTE]\n> first deploy: nothing to back up yet, so no backup is taken"),
        "{md}"
    );
    // `first-deploy "backup"`: backed up like any deploy.
    f.edit_config(
        "        keep 30\n",
        "        keep 30\n        first-deploy \"backup\"\n",
    );
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "production", "--format", "json"])).unwrap();
    crate::deploy::assert_backup_before_migration(&json);
    assert!(json.get("notes").is_none(), "{json}");
}

/// `state.json` of the Fx as JSON, changed by `edit`, written back.
fn edit_state(f: &Fx, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = f.state_dir().join("state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut st);
    std::fs::write(&path, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
}

#[test]
fn database_restored_migrates_again() {
    let f = Fx::new();
    f.deployed("production", &f.initial());
    let out = f.run(&["plan", "--env", "production", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    edit_state(&f, |st| {
        st["database_restored"] = serde_json::json!({
            "backup": "pakashop-production-20260609-020000-123456",
            "apply_id": "1781000000-000001-4242",
            "restored_at": 1_781_000_100,
        });
    });
    snapshot_all(&f, "production_restored", &["--env", "production"]);
}

#[test]
fn migrate_status_pending_migrates() {
    let f = Fx::new();
    let initial = f.initial();
    f.deployed("production", &initial);
    f.edit_config(
        "if-exists=\"prisma/schema.prisma\"\n",
        "if-exists=\"prisma/schema.prisma\"\n    migrate-status \"sh\" \"-c\" \"echo pending: 0002_orders; exit 1\"\n",
    );
    // Without a built release on the host, migrate-status cannot run: a note, no migration.
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "production", "--format", "json"])).unwrap();
    assert_eq!(json["actions"], serde_json::json!([]), "{json}");
    assert_eq!(
        json["notes"],
        serde_json::json!([
            "backend: migrate-status could not tell whether migrations are pending (no built release of it on this host); its migrations are planned from git alone"
        ])
    );
    // backend's release is on the host: migrate-status runs there and reports pending.
    let release =
        f.fx.env_root("production")
            .join("backend/releases")
            .join(&initial);
    std::fs::create_dir_all(release.join("prisma")).unwrap();
    std::fs::write(release.join("prisma/schema.prisma"), "").unwrap();
    moorline::release::mark_built(&release, &initial).unwrap();
    snapshot_all(&f, "production_migrate_status", &["--env", "production"]);
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "production", "--format", "json"])).unwrap();
    assert_eq!(
        json["inputs"]["pending_migrations"],
        serde_json::json!(["backend"])
    );
    // Up to date: nothing to do.
    f.edit_config("echo pending: 0002_orders; exit 1", "exit 0");
    let out = f.run(&["plan", "--env", "production", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn non_ancestor_from() {
    let f = Fx::new();
    f.commit(
        "production",
        "hotfix: coupon overflow",
        &[Edit::touch_service("coupon")],
    );
    f.commit(
        "main",
        "pricing: new tiers",
        &[Edit::touch_service("pricing")],
    );
    let o = f.run(&[
        "plan",
        "--env",
        "staging",
        "--from",
        "production",
        "--to",
        "main",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("moorline::git::not_an_ancestor"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-non-ancestor"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    snapshot_all(
        &f,
        "non_ancestor",
        &[
            "--env",
            "staging",
            "--from",
            "production",
            "--to",
            "main",
            "--allow-non-ancestor",
        ],
    );
}

#[test]
fn same_inputs_give_identical_bytes() {
    let f = Fx::new();
    let from = f.initial();
    f.commit(
        "main",
        "backend and shared",
        &[
            Edit::add_migration("backend", "0002_orders"),
            Edit::Write {
                path: "packages/shared/index.js".to_owned(),
                contents: "module.exports = {};\n".to_owned(),
            },
        ],
    );
    for args in [
        vec!["plan", "--env", "staging"],
        vec!["plan", "--env", "staging", "--from", &from],
        vec![
            "plan",
            "--env",
            "production",
            "--from",
            &from,
            "--to",
            "main",
        ],
    ] {
        for format in FORMATS {
            let full = [&args[..], &["--format", format]].concat();
            let a = f.run(&full);
            let b = f.run(&full);
            assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
            assert!(a.stdout == b.stdout, "{full:?} differs between two runs");
        }
        let a = f.run(&[&["graph"], &args[1..]].concat());
        let b = f.run(&[&["graph"], &args[1..]].concat());
        assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
        assert!(
            a.stdout == b.stdout,
            "graph {args:?} differs between two runs"
        );
    }
}

#[test]
fn detailed_exitcode_is_0_unchanged_2_changes_1_error() {
    let f = Fx::new();
    let from = f.initial();
    let code = |args: &[&str]| {
        let o = f.run(&[&["plan"], args, &["--detailed-exitcode"]].concat());
        (o.status.code(), describe(&o))
    };
    let (c, o) = code(&["--env", "staging", "--from", &from]);
    assert_eq!(c, Some(0), "{o}");
    f.commit("main", "coupon", &[Edit::touch_service("coupon")]);
    let (c, o) = code(&["--env", "staging", "--from", &from]);
    assert_eq!(c, Some(2), "{o}");
    let (c, o) = code(&["--env", "qa"]);
    assert_eq!(c, Some(1), "{o}");
    assert!(o.contains("moorline::cli::unknown_environment"), "{o}");
    let (c, o) = code(&["--env", "staging", "--to", "nope"]);
    assert_eq!(c, Some(1), "{o}");
    assert!(o.contains("moorline::git::unknown_revision"), "{o}");
    // Without the flag a plan with changes exits 0.
    let o = f.run(&["plan", "--env", "staging", "--from", &from]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

/// `git diff --name-status -M FROM TO` as (status, old path, new path).
fn git_oracle(repo: &Path, from: &str, to: &str) -> Vec<(String, Option<String>, String)> {
    let o = std::process::Command::new("git")
        .args(["diff", "--name-status", "-M", from, to])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            match cols.as_slice() {
                [s, old, new] => ((*s).to_owned(), Some((*old).to_owned()), (*new).to_owned()),
                [s, p] => ((*s).to_owned(), None, (*p).to_owned()),
                _ => panic!("unexpected git output {l:?}"),
            }
        })
        .collect()
}

#[test]
fn changes_match_git_diff() {
    let f = Fx::new();
    let from = f.initial();
    let write = |path: &str, contents: &str| Edit::Write {
        path: path.to_owned(),
        contents: contents.to_owned(),
    };
    f.commit(
        "main",
        "add and modify",
        &[
            write("services/coupon/src/rules.js", "module.exports = [];\n"),
            Edit::touch_service("loyalty"),
            write("docs/notes.md", "outside every service\n"),
        ],
    );
    f.commit(
        "main",
        "delete and rename",
        &[
            Edit::Delete {
                path: "services/fraud/behaviour.json".to_owned(),
            },
            Edit::Rename {
                from: "services/reports/VERSION".to_owned(),
                to: "services/reports/RELEASE".to_owned(),
            },
            // Across services: old path under one, new path under another.
            Edit::Rename {
                from: "services/pricing/package.json".to_owned(),
                to: "services/settlement/pricing-package.json".to_owned(),
            },
        ],
    );
    f.commit(
        "main",
        "shared and more",
        &[
            Edit::add_migration("backend", "0002_orders"),
            write("packages/shared/util.js", "module.exports = {};\n"),
            Edit::touch_service("coupon"),
        ],
    );
    let to = f.fx.head("main").unwrap();
    let oracle = git_oracle(&f.fx.repo, &from, &to);
    assert!(
        oracle.iter().any(|(s, ..)| s.starts_with('R')) && oracle.iter().any(|(s, ..)| s == "D"),
        "the history must hold renames and deletes: {oracle:?}"
    );
    let plan: serde_json::Value = serde_json::from_str(&f.plan(&[
        "--env", "staging", "--from", &from, "--to", &to, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(plan["changed_paths"], oracle.len(), "{oracle:?}");

    let config = moorline::config::load(&f.fx.config_path).unwrap().config;
    let under = |p: &str, dir: &str| p == dir || p.starts_with(&format!("{dir}/"));
    for s in plan["services"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let svc = config.service(name).unwrap();
        let dirs: Vec<&str> = std::iter::once(svc.path.as_str())
            .chain(svc.watch.iter().map(String::as_str))
            .collect();
        let expected: Vec<&str> = oracle
            .iter()
            .filter(|(_, old, new)| {
                dirs.iter()
                    .any(|d| under(new, d) || old.as_deref().is_some_and(|o| under(o, d)))
            })
            .map(|(_, _, new)| new.as_str())
            .collect();
        assert_eq!(s["changed_count"], expected.len(), "{name}: {expected:?}");
        let change = if expected.is_empty() {
            "unchanged"
        } else {
            "deploy"
        };
        assert_eq!(s["change"], change, "{name}");
        let mut shown: Vec<&str> = s["changed_paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        shown.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        expected.truncate(shown.len());
        if s["changed_count"].as_u64().unwrap() <= 5 {
            assert_eq!(shown, expected, "{name}");
        }
    }
}

/// Distinctive secret values that must never be shown.
const SECRETS: [&str; 5] = [
    "postgres://app:hunter2-dburl@db.internal/pakashop",
    "tok-9f8e7d6c-apitoken",
    "sk_live_stripe_zz9qq",
    "pw-correct-horse-battery",
    "custom-plaintext-xyzzy",
];

#[test]
fn secrets_never_appear() {
    let f = Fx::new();
    let secret_env = |v: &str| {
        format!(
            "NODE_ENV=\"production\" DATABASE_URL=\"{}\" API_TOKEN=\"{}\" STRIPE_SECRET_KEY=\"{}\" DB_PASSWORD=\"{}\"\n        env CUSTOM=\"{}\" secret=#true",
            SECRETS[0], SECRETS[1], SECRETS[2], SECRETS[3], SECRETS[4]
        )
        .replace("-dburl", &format!("-dburl{v}"))
    };
    f.edit_config("NODE_ENV=\"production\"", &secret_env(""));
    let head = f.fx.head("main").unwrap();
    let check = |label: &str, text: &str, old: &[String]| {
        for s in SECRETS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(old.iter().cloned())
        {
            assert!(
                !text.contains(&s),
                "{label} shows the secret {s:?}:\n{text}"
            );
        }
        assert!(text.contains("NODE_ENV=production"), "{label}:\n{text}");
    };
    // First deploy: every unit is new, its diff shows the whole file.
    for format in FORMATS {
        check(
            format,
            &f.plan(&["--env", "staging", "--format", format]),
            &[],
        );
    }
    // Installed units hold the real values; change one secret and NODE_ENV.
    f.deployed("staging", &head);
    let installed = std::fs::read_to_string(f.unit_dir().join("pakashop-backend.service")).unwrap();
    assert!(
        installed.contains(SECRETS[1]),
        "the host file holds the value"
    );
    let old_url = SECRETS[0].to_owned();
    let text = std::fs::read_to_string(&f.fx.config_path).unwrap();
    std::fs::write(
        &f.fx.config_path,
        text.replace("-dburl@", "-dburl-rotated@").replace(
            "NODE_ENV=\"production\"",
            "NODE_ENV=\"production\" LOG=\"debug\"",
        ),
    )
    .unwrap();
    let out = f.dir.path().join("saved.plan.json");
    for format in FORMATS {
        let shown = f.plan(&[
            "--env",
            "staging",
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(shown.contains("LOG=debug"), "the diff is there:\n{shown}");
        check(
            format,
            &shown,
            &[old_url.replace("-dburl@", "-dburl-rotated@")],
        );
        let saved = std::fs::read_to_string(&out).unwrap();
        check(
            "saved plan",
            &saved,
            &[old_url.replace("-dburl@", "-dburl-rotated@")],
        );
    }
    let o = f.run(&["graph", "--env", "staging"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let dot = String::from_utf8(o.stdout).unwrap();
    for s in SECRETS {
        assert!(!dot.contains(s), "dot shows {s}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&f.plan(&["--env", "staging", "--format", "json"])).unwrap();
    let diffs: Vec<&str> = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["unit_diff"].as_str())
        .collect();
    assert!(!diffs.is_empty());
    for d in diffs {
        assert!(d.contains("(redacted)"), "{d}");
        check("unit diff", d, &[]);
    }
}

/// A command that must fail with exit 1, the diagnostic `code` and no panic.
fn fails_with(o: &Output, code: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", describe(o));
    assert!(stderr.contains(code), "{code} missing:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_is_a_diagnostic_not_a_panic() {
    let f = Fx::new();
    let not_repo = tempfile::tempdir().unwrap();
    fails_with(
        &f.run(&[
            "plan",
            "--env",
            "staging",
            "--repo",
            not_repo.path().to_str().unwrap(),
        ]),
        "moorline::git::not_a_repository",
    );
    fails_with(
        &f.run(&["plan", "--env", "staging", "--to", "nope"]),
        "moorline::git::unknown_revision",
    );
    fails_with(
        &f.run(&["plan", "--env", "staging", "--from", "nope"]),
        "moorline::git::unknown_revision",
    );
    let from = f.initial();
    f.commit(
        "main",
        "drop coupon",
        &[Edit::Delete {
            path: "services/coupon".to_owned(),
        }],
    );
    let o = f.run(&["plan", "--env", "staging", "--from", &from]);
    fails_with(&o, "moorline::git::service_missing");
    assert!(String::from_utf8_lossy(&o.stderr).contains("coupon"));

    std::fs::create_dir_all(f.state_dir()).unwrap();
    std::fs::write(f.state_dir().join("state.json"), "{ not json").unwrap();
    fails_with(
        &f.run(&["plan", "--env", "staging", "--to", &from]),
        "moorline::state::invalid",
    );
    std::fs::remove_file(f.state_dir().join("state.json")).unwrap();
    std::fs::create_dir(f.state_dir().join("state.json")).unwrap();
    fails_with(
        &f.run(&["plan", "--env", "staging", "--to", &from]),
        "moorline::state::not_a_file",
    );
}

/// Runs `cmd` to its end, which must come within a few seconds (a FIFO
/// that blocked, or /dev/zero read to the end, would not).
fn output_soon(mut cmd: std::process::Command) -> Output {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("still running after 20 s: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

#[test]
fn a_plan_file_that_is_no_regular_file_or_too_large_is_refused_at_once() {
    let f = Fx::new();
    // Outside the fixture's directory, which `tree` reads whole.
    let other = tempfile::tempdir().unwrap();
    let fifo = other.path().join("plan.fifo");
    crate::support::mkfifo(&fifo);
    // Larger than the cap, and sparse: its size is what counts.
    let huge = other.path().join("huge.plan.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(moorline::plan::PLAN_FILE_CAP + 1)
        .unwrap();
    let before = tree(f.dir.path());
    let dir = other.path().to_str().unwrap().to_owned();
    for (file, code, says) in [
        (
            "/dev/zero",
            "moorline::apply::plan_not_a_file",
            "a character device",
        ),
        (
            fifo.to_str().unwrap(),
            "moorline::apply::plan_not_a_file",
            "a FIFO",
        ),
        (
            dir.as_str(),
            "moorline::apply::plan_not_a_file",
            "a directory",
        ),
        (
            huge.to_str().unwrap(),
            "moorline::apply::plan_too_large",
            "over the limit of 134217728",
        ),
    ] {
        for args in [
            vec!["apply", file, "--yes"],
            vec!["apply", "--env", "staging", "--reviewed", file, "--yes"],
        ] {
            let o = output_soon(f.cmd(&args));
            fails_with(&o, code);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(says), "{err}");
        }
    }
    // Standard input has no size to look at first: it is cut at the cap.
    let mut cmd = f.cmd(&["apply", "-", "--yes"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let zeros = vec![b' '; 1 << 20];
        // Ends when moorline stops reading.
        while std::io::Write::write_all(&mut stdin, &zeros).is_ok() {}
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    fails_with(&o, "moorline::apply::plan_too_large");
    assert_eq!(tree(f.dir.path()), before, "nothing changed");
}

#[test]
fn a_plan_or_state_with_a_key_given_twice_is_refused() {
    let f = Fx::new();
    let plan = f.dir.path().join("plan.json");
    f.plan(&["--env", "staging", "--out", plan.to_str().unwrap()]);
    let text = std::fs::read_to_string(&plan).unwrap();
    // serde would keep the last of the two: a reviewer reading the first
    // would apply another environment.
    let top = "\n  \"environment\": \"staging\",\n";
    assert!(text.contains(top), "{text}");
    let nested = "\"units_source\": ";
    assert!(text.contains(nested), "{text}");
    for (twice, key) in [
        (
            text.replacen(
                top,
                &format!("{top}  \"environment\": \"production\",\n"),
                1,
            ),
            "environment",
        ),
        (
            text.replacen(nested, &format!("{nested}\"none\", {nested}"), 1),
            "units_source",
        ),
    ] {
        std::fs::write(&plan, &twice).unwrap();
        let before = tree(f.dir.path());
        for args in [
            vec!["apply", plan.to_str().unwrap(), "--yes"],
            vec![
                "apply",
                "--env",
                "staging",
                "--reviewed",
                plan.to_str().unwrap(),
                "--yes",
            ],
        ] {
            let o = f.run(&args);
            fails_with(&o, "moorline::apply::plan_duplicate_key");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&format!("the key \"{key}\" is given twice")),
                "{err}"
            );
            assert_eq!(tree(f.dir.path()), before, "nothing changed");
        }
    }

    f.deployed("staging", &f.initial());
    let path = f.state_dir().join("state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let rev = "\"revision\": ";
    assert!(text.contains(rev), "{text}");
    std::fs::write(&path, text.replacen(rev, &format!("{rev}null, {rev}"), 1)).unwrap();
    let before = tree(f.dir.path());
    let o = f.run(&["plan", "--env", "staging"]);
    fails_with(&o, "moorline::state::duplicate_key");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the key \"revision\" is given twice"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(tree(f.dir.path()), before, "nothing changed");
    // A state file that is too large, or a FIFO, is refused too.
    std::fs::File::create(&path)
        .unwrap()
        .set_len(moorline::state::STATE_FILE_CAP + 1)
        .unwrap();
    fails_with(
        &f.run(&["plan", "--env", "staging"]),
        "moorline::state::too_large",
    );
    std::fs::remove_file(&path).unwrap();
    crate::support::mkfifo(&path);
    let o = output_soon(f.cmd(&["plan", "--env", "staging"]));
    fails_with(&o, "moorline::state::not_a_file");
}

/// Every file under `dir` with the hash of its bytes (what "nothing
/// changed" compares).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let hash = moorline::files::sha256_hex(&std::fs::read(&p).unwrap());
                out.insert(p, hash);
            }
        }
    }
    out
}

#[test]
fn a_plan_or_state_of_another_format_version_is_refused() {
    let f = Fx::new();
    let plan = f.dir.path().join("plan.json");
    f.plan(&["--env", "staging", "--out", plan.to_str().unwrap()]);
    let text = std::fs::read_to_string(&plan).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["format_version"] = 99.into();
    // Another shape as well: the version is checked before anything else.
    v["actions"] = "not a list".into();
    std::fs::write(&plan, v.to_string()).unwrap();
    let before = tree(f.dir.path());
    for args in [
        vec!["apply", plan.to_str().unwrap(), "--yes"],
        vec![
            "apply",
            "--env",
            "staging",
            "--reviewed",
            plan.to_str().unwrap(),
            "--yes",
        ],
    ] {
        let o = f.run(&args);
        fails_with(&o, "moorline::plan::format_version");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("format_version 99"), "{err}");
        assert!(
            err.contains(&format!("moorline {}", env!("CARGO_PKG_VERSION"))),
            "names the version that wrote it: {err}"
        );
        assert_eq!(tree(f.dir.path()), before, "nothing changed");
    }

    // A state file of another format is refused, not misread.
    f.deployed("staging", &f.initial());
    let path = f.state_dir().join("state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["format_version"] = 99.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let o = f.run(&["plan", "--env", "staging"]);
    fails_with(&o, "moorline::state::format_version");
    assert!(String::from_utf8_lossy(&o.stderr).contains("format_version 99"));
}

#[test]
fn a_repository_of_another_user_names_git_safe_directory() {
    use std::os::unix::fs::MetadataExt;
    // Only root can give a directory away.
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        return;
    }
    let f = Fx::new();
    let repo = f.fx.repo.canonicalize().unwrap();
    // 65534: nobody. git checks the work tree and the git directory.
    for d in [repo.clone(), repo.join(".git")] {
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    // An empty HOME: no global safe.directory from this machine.
    let home = f.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let o = f
        .cmd(&["plan", "--env", "staging"])
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    fails_with(&o, "moorline::git::not_owned");
    let err = String::from_utf8_lossy(&o.stderr).replace('\n', " ");
    let want = format!(
        "git config --global --add safe.directory {}",
        repo.display()
    );
    // The help may wrap: compare with whitespace collapsed.
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat(&err).contains(&flat(&want)), "{err}");
    assert!(!err.contains("--repo"), "{err}");
    // Doing what it says works.
    let cfg = home.join(".gitconfig");
    std::fs::write(&cfg, format!("[safe]\n\tdirectory = {}\n", repo.display())).unwrap();
    let o = f
        .cmd(&["plan", "--env", "staging"])
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    for d in [repo.clone(), repo.join(".git")] {
        std::os::unix::fs::chown(&d, Some(0), Some(0)).unwrap();
    }
}

/// The fixture's repository with `pakashop.kdl` (the real configuration)
/// in place of the generated `moorline.kdl`, in a root commit of its own:
/// nothing temporary is committed, so every SHA is the same on every machine.
fn pakashop_repository() -> Fx {
    let f = Fx::new();
    let repo = git2::Repository::open(&f.fx.repo).unwrap();
    let initial = repo.head().unwrap().peel_to_commit().unwrap();
    let pakashop =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pakashop.kdl")).unwrap();
    let mut index = git2::Index::new().unwrap();
    index.read_tree(&initial.tree().unwrap()).unwrap();
    index.remove_path(Path::new("moorline.kdl")).unwrap();
    let blob = repo.blob(pakashop.as_bytes()).unwrap();
    let mut entry = index.get_path(Path::new("README.md"), 0).unwrap();
    entry.id = blob;
    entry.file_size = u32::try_from(pakashop.len()).unwrap();
    entry.path = b"pakashop.kdl".to_vec();
    index.add(&entry).unwrap();
    let tree = repo.find_tree(index.write_tree_to(&repo).unwrap()).unwrap();
    let sig = initial.author();
    let root = repo
        .commit(None, &sig, &sig, "Pakashop: initial import", &tree, &[])
        .unwrap();
    let root = repo.find_commit(root).unwrap();
    repo.branch("production", &root, true).unwrap();
    repo.checkout_tree(
        tree.as_object(),
        Some(
            git2::build::CheckoutBuilder::new()
                .force()
                .remove_untracked(true),
        ),
    )
    .unwrap();
    repo.reference("refs/heads/main", root.id(), true, "pakashop.kdl")
        .unwrap();
    f
}

/// The example plans under `plans/`: (file name, contents).
fn example_plans() -> Vec<(String, String)> {
    let f = pakashop_repository();
    let config = f.fx.repo.join("pakashop.kdl");
    let plan = |args: &[&str], format: &str| {
        // Pakashop's hosts run moorline as root, with the system manager.
        let mut c = f.cmd_for("system", &[]);
        c.args(["plan", "-c", config.to_str().unwrap(), "--format", format]);
        c.args(args);
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let initial = f.initial();
    f.commit(
        "main",
        "coupon: stacking rules",
        &[Edit::touch_service("coupon")],
    );
    f.commit(
        "production",
        "backend: orders table",
        &[
            Edit::add_migration("backend", "0002_orders"),
            Edit::touch_service("backend"),
        ],
    );
    // Pakashop's environments are fleets of one host each: a host's plan is
    // what `--host NAME` makes there; the pull-request comment is the fleet
    // plan made on the runner from `--from`, without ssh.
    let scenarios: [(&str, Vec<&str>); 4] = [
        (
            "staging-first-deploy",
            vec![
                "--host",
                "pakashop-staging",
                "--env",
                "staging",
                "--to",
                &initial,
            ],
        ),
        (
            "staging-one-service",
            vec![
                "--host",
                "pakashop-staging",
                "--env",
                "staging",
                "--from",
                &initial,
                "--to",
                "main",
            ],
        ),
        (
            "production-migration",
            vec![
                "--host",
                "pakashop-production",
                "--env",
                "production",
                "--from",
                &initial,
                "--to",
                "production",
            ],
        ),
        (
            "staging-pull-request",
            vec!["--env", "staging", "--from", &initial, "--to", "main"],
        ),
    ];
    let mut out = Vec::new();
    for (name, args) in &scenarios {
        for (ext, format) in [("md", "markdown"), ("json", "json")] {
            let text = plan(args, format);
            assert!(
                !text.contains(&*f.dir.path().to_string_lossy()),
                "{name}.{ext} holds a temporary path"
            );
            out.push((format!("{name}.{ext}"), text));
        }
    }
    out
}

/// `plans/` holds the rendered example plans of pakashop.kdl. Regenerate with
/// `MOORLINE_REGEN_PLANS=1 cargo test --test it plans_are_current`.
#[test]
fn plans_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    let regen = std::env::var("MOORLINE_REGEN_PLANS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (name, text) in example_plans() {
        let path = dir.join(&name);
        if regen {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "plans/ is out of date ({}); regenerate with `MOORLINE_REGEN_PLANS=1 cargo test --test it plans_are_current` and review the diff",
        stale.join(", ")
    );
}

/// Makes production a fleet of two hosts: `backend` and `gateway` run on
/// the web host, `tracking` on the workers host, the rest on both.
fn fleet_production(f: &Fx) {
    f.edit_config(
        "environment \"production\" {\n",
        "environment \"production\" {\n    host \"app1\" address=\"10.0.0.11\" { roles \"web\"; }\n    \
         host \"app2\" address=\"10.0.0.12\" { roles \"workers\"; }\n",
    );
    f.edit_config("port 3080;", "port 3080; role \"web\";");
    f.edit_config("port 8000;", "port 8000; role \"web\";");
    f.edit_config("port 3120;", "port 3120; role \"workers\";");
}

/// The services of a JSON plan, in order.
fn planned_services(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_host_of_a_fleet_plans_only_the_services_it_runs() {
    let f = Fx::new();
    fleet_production(&f);
    // Every service: staging has no hosts (production without --host is
    // planned by the fleet controller over ssh, see tests/it/fleet.rs).
    let all = planned_services(&f.plan(&["--env", "staging", "--format", "json"]));
    assert_eq!(all.len(), 19, "{all:?}");

    let workers = f.plan(&["--env", "production", "--host", "app2", "--format", "json"]);
    let got = planned_services(&workers);
    let want: Vec<String> = all
        .iter()
        .filter(|s| !matches!(s.as_str(), "backend" | "gateway"))
        .cloned()
        .collect();
    assert_eq!(got, want);
    // Nothing of the web host's services anywhere in the plan (actions,
    // units, edges).
    for other in [
        "pakashop-backend.service",
        "pakashop-gateway.service",
        ":backend\"",
        ":gateway\"",
    ] {
        assert!(!workers.contains(other), "{other} in the plan of app2");
    }

    let web =
        planned_services(&f.plan(&["--env", "production", "--host", "app1", "--format", "json"]));
    assert!(web.contains(&"backend".to_owned()) && web.contains(&"gateway".to_owned()));
    assert!(!web.contains(&"tracking".to_owned()), "{web:?}");
    assert_eq!(web.len(), 18);
}

/// `plan --from` of a fleet is made here, without ssh (the pull-request plan of a runner
/// with no key to the hosts): every host's plan as `--host NAME --from` makes it, in one
/// fleet plan that says how it was made.
#[test]
fn a_fleet_planned_from_a_revision_needs_no_host() {
    let f = Fx::new();
    fleet_production(&f);
    let initial = f.initial();
    f.commit(
        "production",
        "tracking: retries",
        &[Edit::touch_service("tracking")],
    );
    // `plan [--host H] --env production --from INITIAL --to production --format F`
    let plan = |host: Option<&str>, format: &str| {
        let mut args = Vec::new();
        if let Some(h) = host {
            args.extend(["--host", h]);
        }
        args.extend([
            "--env",
            "production",
            "--from",
            &initial,
            "--to",
            "production",
        ]);
        args.extend(["--format", format]);
        f.plan(&args)
    };
    let json = plan(None, "json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["fleet_format_version"], 1, "{json}");
    assert_eq!(v["planned_from"], initial.as_str());
    let hosts = v["hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app1", "app2"]);
    // Each host's plan is its own: tracking runs on the workers host only.
    let deploys = |h: &serde_json::Value| -> Vec<String> {
        h["plan"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["change"] != "unchanged")
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(deploys(&hosts[0]), Vec::<String>::new(), "{json}");
    assert_eq!(deploys(&hosts[1]), ["tracking"], "{json}");
    for h in hosts {
        assert_eq!(h["plan"]["from"]["sha"], initial.as_str());
        let own: serde_json::Value =
            serde_json::from_str(&plan(h["name"].as_str(), "json")).unwrap();
        assert_eq!(
            h["plan"]["fingerprint"], own["fingerprint"],
            "{}",
            h["name"]
        );
    }
    let md = plan(None, "markdown");
    assert!(
        md.contains(&format!(
            "planned without the hosts, as if {} were deployed on every host",
            &initial[..12]
        )),
        "{md}"
    );
    // The same inputs, the same bytes.
    assert_eq!(json, plan(None, "json"));
}

#[test]
fn a_unit_dir_of_the_other_manager_is_refused() {
    // These plans are made with `--systemd user`: a unit-dir the system
    // manager reads would hold units the user manager never loads.
    let f = Fx::new();
    f.edit_config(
        "    branch \"main\"\n",
        "    branch \"main\"\n    unit-dir \"/etc/systemd/system\"\n",
    );
    let o = f.run(&["plan", "--env", "staging"]);
    fails_with(&o, "moorline::cli::unit_dir_manager");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--systemd system, or"), "{stderr}");
    let o = f
        .cmd_for("system", &["plan", "--env", "staging"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("unit_dir_manager"),
        "{}",
        describe(&o)
    );
    // A fleet's controller installs no unit: its own manager is no reason
    // to refuse the hosts' unit-dir.
    fleet_production(&f);
    f.edit_config(
        "    branch \"production\"\n",
        "    branch \"production\"\n    unit-dir \"/etc/systemd/system\"\n",
    );
    let initial = f.initial();
    f.plan(&[
        "--env",
        "production",
        "--from",
        &initial,
        "--to",
        "production",
    ]);
    f.plan(&[
        "--env",
        "production",
        "--host",
        "app1",
        "--from",
        &initial,
        "--to",
        "production",
    ]);
}

#[test]
fn host_flag_refuses_unknown_hosts_and_environments_without_hosts() {
    let f = Fx::new();
    fleet_production(&f);
    let o = f.run(&["plan", "--env", "production", "--host", "app3"]);
    fails_with(&o, "moorline::cli::unknown_host");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("did you mean `app1`?") || stderr.contains("did you mean `app2`?"),
        "{stderr}"
    );
    let o = f.run(&["plan", "--env", "staging", "--host", "app1"]);
    fails_with(&o, "moorline::cli::not_a_fleet");

    // MOORLINE_HOST is --host (set once on a host); empty, it is not set.
    let flag = f.plan(&["--env", "production", "--host", "app2", "--format", "json"]);
    let o = f
        .cmd(&["plan", "--env", "production", "--format", "json"])
        .env("MOORLINE_HOST", "app2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), flag);
    let o = f
        .cmd(&["plan", "--env", "staging", "--format", "json"])
        .env("MOORLINE_HOST", "")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

/// A directory nested 300 levels deep in one service (deeper than
/// libgit2 reads a working tree: 100) no longer stops the plan of the
/// whole repository with `moorline::git::failed`: the plan names the path
/// it could not check, and plans every service.
#[test]
fn a_deeply_nested_directory_in_one_service_does_not_stop_the_plan() {
    let f = Fx::new();
    let deep = format!("services/coupon/{}leaf.txt", "d/".repeat(300));
    f.commit(
        "main",
        "a deep tree",
        &[Edit::Write {
            path: deep.clone(),
            contents: "x\n".to_owned(),
        }],
    );
    assert!(f.fx.repo.join(&deep).is_file(), "checked out");
    let json = f.plan(&["--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    let warnings: Vec<&str> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "not checked for uncommitted changes, services/coupon: directory nesting too deep"
        )),
        "{warnings:?}"
    );
    assert!(plan["uncommitted"].is_null(), "{plan}");
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "build:coupon"),
        "{plan}"
    );
}
