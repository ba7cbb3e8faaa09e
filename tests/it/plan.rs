//! `moorline plan` end to end: the real binary against Pakashop-shaped
//! fixture repositories. Snapshots of every format for the scenarios a
//! reviewer meets (filters redact only temp paths, SHAs and fingerprints),
//! determinism, exit codes, changes checked against `git diff`, secrets,
//! bad input, and the rendered example plans under `plans/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::fixture::{Edit, Fixture, FixtureOptions};

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
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(["--state-dir", self.state_dir().to_str().unwrap()])
            .args(["--systemd", "user"])
            .args(args)
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
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
        let loaded = moorline::config::load(&self.fx.config_path).unwrap();
        let config = &loaded.config;
        let env = config.environment(env_name).unwrap();
        std::fs::create_dir_all(self.unit_dir()).unwrap();
        let mut services = BTreeMap::new();
        for s in &config.services {
            let unit = moorline::unit::render(env, s);
            if let Some(text) = &unit {
                std::fs::write(self.unit_dir().join(&s.unit_name), text).unwrap();
            }
            services.insert(
                s.name.clone(),
                moorline::state::ServiceState {
                    revision: rev.to_owned(),
                    previous: None,
                    unit_sha256: unit.map(|u| moorline::state::sha256_hex(u.as_bytes())),
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
    let ids: Vec<&str> = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(pos("backup") < pos("migrate:backend"), "{ids:?}");
    assert_eq!(json["rollback"]["kind"], "needs-database");
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
