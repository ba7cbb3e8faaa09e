//! Crash recovery without gaps: a deploy that installs unit files, backs up,
//! migrates, builds, restarts, health-checks and reloads a proxy is SIGKILLed
//! after and just before every journal record it writes, and each crash is
//! recovered by `apply --resume` and by `rollback --yes`; the recoveries are
//! killed too. One invariant ([`Scene::converged`]) is checked after every
//! recovery. Also: effects undone behind moorline's back before a resume, and
//! slow builds beside the runtime's timers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::systemd::Systemd;

use crate::deploy::{World, code, ok, state_json};
use crate::support;

/// The service with migrations in a generated fleet of four (svc-0003,
/// `prisma: i % 10 == 2`).
const MIGRATING: &str = "svc-0003";

/// Where the kill lands relative to journal record N of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kill {
    /// `MOORLINE_TEST_CRASH_AFTER`: record N is durable, nothing after it.
    After,
    /// `MOORLINE_TEST_CRASH_BEFORE`: the effect record N would state
    /// happened; record N is not written.
    Before,
    /// `MOORLINE_TEST_CRASH_AFTER_EVENT=backup`: right after the backup's
    /// record, before its action's success (N is not used).
    AfterBackup,
}

impl Kill {
    fn var(self) -> &'static str {
        match self {
            Kill::After => "MOORLINE_TEST_CRASH_AFTER",
            Kill::Before => "MOORLINE_TEST_CRASH_BEFORE",
            Kill::AfterBackup => "MOORLINE_TEST_CRASH_AFTER_EVENT",
        }
    }

    fn value(self, n: usize) -> String {
        match self {
            Kill::After | Kill::Before => n.to_string(),
            Kill::AfterBackup => "backup".to_owned(),
        }
    }
}

/// How a crashed apply is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    Resume,
    Rollback,
}

impl Recovery {
    fn args(self) -> &'static [&'static str] {
        match self {
            Recovery::Resume => &["apply", "--resume", "--env", "staging"],
            Recovery::Rollback => &["rollback", "--env", "staging", "--yes"],
        }
    }
}

/// A fleet of four services (a chain over the phases config, gateway, core,
/// supporting; svc-0003 migrates) on the shared manager, with a backup block,
/// a proxy unit that counts its reloads, and a migration command that counts
/// its runs.
struct Scene {
    w: World,
    sd: Systemd,
    proxy_unit: String,
    /// Appended to by the proxy on every reload (SIGHUP).
    reloads: PathBuf,
    /// The committed config, its `CRASH_GEN` placeholder unreplaced.
    config: String,
    generation: u32,
}

/// The migration command of the scene: records each run, then migrates.
const COUNTED_MIGRATE: &str = r#"import os, subprocess, sys
root = sys.argv[1]
db = os.path.join(root, "db")
os.makedirs(db, exist_ok=True)
with open(os.path.join(db, "migrate-runs.log"), "a", encoding="utf-8") as f:
    f.write(os.environ.get("MOORLINE_RELEASE", "?") + "\n")
    f.flush()
    os.fsync(f.fileno())
here = os.path.dirname(os.path.abspath(__file__))
sys.exit(subprocess.call([sys.executable, os.path.join(here, "migrate.py"), root]))
"#;

/// The fake proxy: serves nothing, appends a line to its log on SIGHUP.
const PROXY: &str = r#"import signal, sys, time
log = sys.argv[1]
def hup(*_):
    with open(log, "a", encoding="utf-8") as f:
        f.write("reload\n")
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
"#;

impl Scene {
    /// Sets the scene up and deploys it once (the crashes hit the second
    /// and later deploys, so a rollback has a release to go back to).
    async fn new(prefix: &str, port_base: u16) -> Option<Scene> {
        let sandbox = support::sandbox()?;
        let dir = tempfile::tempdir().unwrap();
        let mut opts = FixtureOptions::new(dir.path().join("srv"));
        opts.port_base = Some(support::port(port_base));
        opts.services = Some(4);
        opts.proxy = Some(vec!["/bin/true".to_owned()]);
        let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
        assert!(fx.service(MIGRATING).unwrap().prisma);
        let state = dir.path().join("state");
        let proxy_unit = format!("{prefix}-proxy.service");
        let reloads = dir.path().join("proxy-reloads.log");
        let proxy_py = dir.path().join("proxy.py");
        std::fs::write(&proxy_py, PROXY).unwrap();

        let text = std::fs::read_to_string(&fx.config_path).unwrap();
        let py = "/usr/bin/python3";
        let tool = fx.backup_tool.display().to_string();
        let config = text
            .replace(
                "unit-name \"pakashop-{service}.service\"",
                &format!("unit-name \"{prefix}-{{service}}.service\""),
            )
            .replace(
                "unit \"fixture-proxy.service\"",
                &format!("unit \"{proxy_unit}\""),
            )
            .replace(
                "    branch \"main\"\n",
                &format!(
                    "    branch \"main\"\n    backup {{\n        run \"{py}\" \"{tool}\" \"dump\" \"{{root}}\" \"{{backup}}\"\n        \
                     restore \"{py}\" \"{tool}\" \"restore\" \"{{root}}\" \"{{backup}}\"\n        keep 100\n    }}\n"
                ),
            )
            .replace("\"migrate.py\"", "\"migrate-counted.py\"")
            .replace(
                "NODE_ENV=\"production\"",
                "NODE_ENV=\"production\" CRASH_GEN=\"@GEN@\"",
            );
        assert!(config.contains("backup {") && config.contains("@GEN@"));
        assert!(config.contains(&proxy_unit) && config.contains("migrate-counted.py"));

        let w = World {
            _dir: dir,
            fx,
            sandbox,
            prefix: prefix.to_owned(),
            state,
        };
        let sd = sandbox.connect().await.unwrap();
        let body = format!(
            "[Unit]\nDescription=fake proxy of the {prefix} crash tests\n\n\
             [Service]\nType=simple\nExecStart={py} {} {}\n\
             ExecReload=/bin/kill -HUP $MAINPID\n",
            proxy_py.display(),
            reloads.display()
        );
        support::install_unit(&sd, sandbox, &proxy_unit, &body).await;
        sd.start(&proxy_unit)
            .await
            .unwrap()
            .check("start", &proxy_unit)
            .unwrap();
        let scene = Scene {
            w,
            sd,
            proxy_unit,
            reloads,
            config,
            generation: 0,
        };
        scene.w.commit(
            "main",
            "crash scene",
            &[
                scene.config_edit(),
                Edit::Write {
                    path: format!("services/{MIGRATING}/migrate-counted.py"),
                    contents: COUNTED_MIGRATE.to_owned(),
                },
            ],
        );
        ok(&scene.w.run(&["apply", "--env", "staging", "--yes"]));
        scene.w.all_ready(&scene.sd).await;
        Some(scene)
    }

    /// Stops the scene's units (the services and the proxy).
    async fn stop(&self) {
        self.w.stop_all(&self.sd).await;
        let _ = self.sd.stop(&self.proxy_unit).await;
    }

    fn config_edit(&self) -> Edit {
        Edit::Write {
            path: "moorline.kdl".to_owned(),
            contents: self.config.replace("@GEN@", &self.generation.to_string()),
        }
    }

    /// Commits the next change: a new unit text for the node services
    /// (installs, daemon-reload, restarts), a new migration of svc-0003
    /// (build, backup, migrate), a code change of svc-0004 (build,
    /// restart); the restarts reload the proxy. Returns the new SHA.
    fn next_change(&mut self) -> String {
        self.generation += 1;
        let g = self.generation;
        self.w.commit(
            "main",
            &format!("generation {g}"),
            &[
                self.config_edit(),
                Edit::Write {
                    path: format!(
                        "services/{MIGRATING}/prisma/migrations/{:04}_gen{g}/migration.sql",
                        g + 1
                    ),
                    contents: format!("ALTER TABLE \"Order\" ADD COLUMN gen{g} INT;\n"),
                },
                Edit::touch_service("svc-0004"),
            ],
        )
    }

    fn db(&self) -> PathBuf {
        self.w.fx.env_root("staging").join("db")
    }

    fn migrate_runs(&self) -> usize {
        std::fs::read_to_string(self.db().join("migrate-runs.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn reload_count(&self) -> usize {
        std::fs::read_to_string(&self.reloads)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Runs `args` with a kill point; `None` when it was killed, the output
    /// when it ran to the end.
    fn run_killed(&self, args: &[&str], kill: Kill, n: usize) -> Option<Output> {
        let before = crate::invariants::before(&self.w, args);
        let out = self
            .w
            .cmd(args)
            .env(kill.var(), kill.value(n))
            .output()
            .unwrap();
        // No exit code: killed by the signal.
        out.status.code()?;
        // Ran to the end: the invariants of every finished apply hold.
        crate::invariants::after(&self.w, args, &out, before);
        Some(out)
    }

    /// The apply id of the journal left behind, if it has a begin record.
    fn unfinished_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.w.state.join("journal.jsonl")).ok()?;
        let first = text.lines().next()?;
        let v: serde_json::Value = serde_json::from_str(first).ok()?;
        v["apply_id"].as_str().map(str::to_owned)
    }

    /// The last complete record of the journal left behind, as `event` or
    /// `event:kind-of-action`.
    /// `in-flight:kind` for each action of the journal left behind that
    /// started and did not succeed; `recorded:switch`, `recorded:unit-replace`,
    /// `recorded:backup` when such a record of an action is there and the
    /// action's success is not.
    fn in_flight(&self) -> BTreeSet<String> {
        let text = std::fs::read_to_string(self.w.state.join("journal.jsonl")).unwrap_or_default();
        let mut open = BTreeMap::new();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            // An intent or outcome record belongs to its action.
            let service = v["service"].as_str().unwrap_or_default();
            let (key, l) = match v["event"].as_str() {
                Some("switch") => (format!("restart:{service}#"), "recorded:switch".to_owned()),
                Some("unit-replace") => (
                    format!("install-unit:{service}#"),
                    "recorded:unit-replace".to_owned(),
                ),
                Some("backup") => ("backup#".to_owned(), "recorded:backup".to_owned()),
                _ => {
                    let Some(a) = v["action"].as_str() else {
                        continue;
                    };
                    if v["event"] == "spawned" {
                        // A command of the action runs: still in flight.
                        continue;
                    }
                    if v["event"] == "started" {
                        open.insert(
                            a.to_owned(),
                            label(&v).replacen("started:", "in-flight:", 1),
                        );
                    } else {
                        open.remove(a);
                        open.remove(&format!("{a}#"));
                    }
                    continue;
                }
            };
            open.insert(key, l);
        }
        open.into_values().collect()
    }

    fn last_record(&self) -> String {
        let text = std::fs::read_to_string(self.w.state.join("journal.jsonl")).unwrap_or_default();
        let Some(line) = text.lines().rfind(|l| !l.is_empty()) else {
            return "none".to_owned();
        };
        serde_json::from_str::<serde_json::Value>(line)
            .map_or_else(|_| "torn".to_owned(), |v| label(&v))
    }

    /// Recovers with `how`; the recovery must end by itself (exit code)
    /// and succeed, except that `rollback` of an apply that changed nothing
    /// live may end "failed, untouched".
    fn recover(&self, how: Recovery) -> String {
        let out = self.w.run(how.args());
        let log = format!(
            "{how:?} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.code().is_some(), "{log}");
        // A rollback that finds nothing live changed says so and exits 1
        // ("failed, untouched"): the apply it rolls back did fail.
        if how == Recovery::Resume || !log.contains("nothing live changed") {
            assert_eq!(code(&out), 0, "{log}");
        }
        log
    }

    /// The invariant after a recovery (`context` names the case in
    /// failures):
    /// - no journal left unfinished;
    /// - every service active and ready, its process running what its unit
    ///   file says (`CRASH_GEN`), the proxy active;
    /// - each service's `current` is the release state.json names, and its
    ///   installed unit file the one state.json records (sha256);
    /// - after a resume, everything on `resumed_to` with its migration
    ///   applied;
    /// - in the apply's journal `apply_id`, no action started again after it
    ///   succeeded, except those in `redone` (undone behind moorline's back)
    ///   and actions after them;
    /// - the migration ran at most as often as the journal started it, and
    ///   applied each migration once;
    /// - no empty backup file.
    async fn converged(
        &self,
        context: &str,
        apply_id: Option<&str>,
        resumed_to: Option<&str>,
        redone: &BTreeSet<String>,
        migrate_runs_before: usize,
    ) {
        let state_dir = &self.w.state;
        assert!(
            !state_dir.join("journal.jsonl").exists(),
            "{context}: a journal is left: {}",
            std::fs::read_to_string(state_dir.join("journal.jsonl")).unwrap_or_default()
        );
        for s in &self.w.fx.services {
            let unit = self.w.unit(&s.name);
            let st = self.sd.status(&unit).await.unwrap();
            assert_eq!(st.active_state, "active", "{context}: {} is {st:?}", s.name);
            let p = crate::deploy::ready(s.port).await;
            assert!(p.ok, "{context}: {} not ready: {p:?}", s.name);
            // The process runs what its unit file says.
            let file = std::fs::read_to_string(self.w.sandbox.unit_dir().join(&unit)).unwrap();
            let script = self
                .w
                .fx
                .env_root("staging")
                .join(&s.name)
                .join("current/server.py");
            let running = crash_gens(&script);
            let written: Vec<String> = file
                .lines()
                .filter_map(|l| l.strip_prefix("Environment=\"CRASH_GEN="))
                .map(|v| format!("CRASH_GEN={}", v.trim_end_matches('"')))
                .collect();
            assert_eq!(
                running, written,
                "{context}: {} runs another unit than its file",
                s.name
            );
        }
        let proxy = self.sd.status(&self.proxy_unit).await.unwrap();
        assert_eq!(proxy.active_state, "active", "{context}: the proxy");
        let st = state_json(&self.w);
        for s in &self.w.fx.services {
            let recorded = st["services"][&s.name]["revision"].as_str();
            assert_eq!(
                self.w.live("staging", &s.name).as_deref(),
                recorded,
                "{context}: {}'s current vs state.json",
                s.name
            );
            let unit = std::fs::read(self.w.sandbox.unit_dir().join(self.w.unit(&s.name))).unwrap();
            assert_eq!(
                Some(moorline::files::sha256_hex(&unit).as_str()),
                st["services"][&s.name]["unit_sha256"].as_str(),
                "{context}: {}'s unit file vs state.json:\n{}",
                s.name,
                String::from_utf8_lossy(&unit)
            );
            if let Some(sha) = resumed_to {
                // The changed code; the other services only get a new unit.
                if s.name == MIGRATING || s.name == "svc-0004" {
                    assert_eq!(recorded, Some(sha), "{context}: {} after resume", s.name);
                }
                let want = format!("CRASH_GEN={}", self.generation);
                if s.runtime == "node" {
                    assert!(
                        String::from_utf8_lossy(&unit).contains(&want),
                        "{context}: {}'s unit is not the new one",
                        s.name
                    );
                }
            }
        }
        if let Some(sha) = resumed_to {
            assert_eq!(st["revision"], sha, "{context}");
        }

        // Migrations: each applied once; the newest applied after a resume.
        let applied =
            std::fs::read_to_string(self.db().join("applied-migrations.txt")).unwrap_or_default();
        let names: Vec<&str> = applied.lines().collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{context}: {applied}");
        if resumed_to.is_some() {
            let newest = format!("{:04}_gen{}", self.generation + 1, self.generation);
            assert!(unique.contains(newest.as_str()), "{context}: {applied}");
        }

        // Backups: none empty, none partial.
        if let Ok(entries) = std::fs::read_dir(state_dir.join("backups")) {
            for e in entries {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let len = e.metadata().unwrap().len();
                // (A `.partial` file is the fixture tool's own, of a
                // backup command that outlived the killed apply.)
                assert!(
                    len > 0 || !name.ends_with(".backup"),
                    "{context}: backup file {name} ({len} bytes)"
                );
            }
        }

        let Some(apply_id) = apply_id else {
            assert_eq!(
                self.migrate_runs(),
                migrate_runs_before,
                "{context}: migrated without a journal"
            );
            return;
        };
        let records = history(state_dir, apply_id);
        let plan_ids: BTreeSet<String> = records[0]["plan"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        let after: BTreeMap<String, Vec<String>> = records[0]["plan"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let deps = a["after"]
                    .as_array()
                    .map(|v| v.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                (a["id"].as_str().unwrap().to_owned(), deps)
            })
            .collect();
        // The redone actions and everything after them may run again.
        let mut may_rerun = redone.clone();
        loop {
            let more: Vec<String> = after
                .iter()
                .filter(|(id, deps)| {
                    !may_rerun.contains(*id) && deps.iter().any(|d| may_rerun.contains(d))
                })
                .map(|(id, _)| id.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            may_rerun.extend(more);
        }
        let mut succeeded = BTreeSet::new();
        let mut rerun = Vec::new();
        let mut migrate_started = 0;
        for r in &records {
            if r["event"] == "rollback-begin" {
                // What the rollback does is its own plan.
                break;
            }
            let Some(a) = r["action"].as_str().filter(|a| plan_ids.contains(*a)) else {
                continue;
            };
            match r["event"].as_str() {
                Some("started") => {
                    if succeeded.contains(a) {
                        rerun.push(a.to_owned());
                    }
                    if a.starts_with("migrate:") {
                        migrate_started += 1;
                    }
                }
                Some("succeeded") => {
                    succeeded.insert(a.to_owned());
                }
                _ => {}
            }
        }
        let unexpected: Vec<&String> = rerun.iter().filter(|a| !may_rerun.contains(*a)).collect();
        assert!(
            unexpected.is_empty(),
            "{context}: started again after succeeding: {unexpected:?}"
        );
        for a in redone {
            assert!(
                rerun.contains(a),
                "{context}: {a} was undone but not redone: {rerun:?}"
            );
        }
        let runs = self.migrate_runs() - migrate_runs_before;
        assert!(
            runs <= migrate_started,
            "{context}: the migration ran {runs} times, started {migrate_started} times"
        );
    }
}

/// The `CRASH_GEN` of every process running `script` (the manager lives in
/// a PID namespace of its own, so its `MainPID` means nothing here: the
/// processes are found by their command line).
fn crash_gens(script: &Path) -> Vec<String> {
    let script = script.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let dir = e.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        if !cmdline.split(|b| *b == 0).any(|a| a == script.as_bytes()) {
            continue;
        }
        let Ok(environ) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        out.extend(
            environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .filter(|v| v.starts_with("CRASH_GEN=")),
        );
    }
    out
}

/// The apply id of the newest journal in `history/`.
fn latest_history(state_dir: &Path) -> String {
    let newest = std::fs::read_dir(state_dir.join("history"))
        .unwrap()
        .map(|e| e.unwrap())
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap();
    newest
        .file_name()
        .to_string_lossy()
        .trim_end_matches(".jsonl")
        .to_owned()
}

/// The records of `history/{apply_id}.jsonl`.
fn history(state_dir: &Path, apply_id: &str) -> Vec<serde_json::Value> {
    let path = state_dir.join("history").join(format!("{apply_id}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The action kinds of the scene's deploys, which both kill modes must hit
/// (as the last record before the kill).
const KINDS: [&str; 8] = [
    "build",
    "backup",
    "migrate",
    "install-unit",
    "daemon-reload",
    "restart",
    "health",
    "reload-proxy",
];

/// Set to `1` to kill the deploy at every record in both modes; by default
/// the points are sampled (see [`every_kill_point`]).
const ALL_POINTS_ENV: &str = "MOORLINE_TEST_CRASH_ALL";

/// The labels every recovery path must have been killed at, in both
/// modes: with each kind of action in flight (started, not succeeded: in
/// after mode its effect not begun or under way, in before mode also done
/// with its success record the one not written) and between each intent
/// or outcome record and the success of its action (a release switch, a
/// unit file replaced, a backup taken).
fn required_labels() -> BTreeSet<String> {
    KINDS
        .iter()
        .map(|k| format!("in-flight:{k}"))
        .chain(["recorded:switch", "recorded:unit-replace"].map(str::to_owned))
        .collect()
}

/// Required in one of the two modes: the backup's record is written amid
/// the records of the builds running beside it, so which kill point falls
/// between it and the backup's success varies from run to run.
const EITHER_MODE: &str = "recorded:backup";

/// Whether every point 1..=total has been tried.
fn queue_is_spent(tried: &BTreeSet<usize>, total: usize) -> bool {
    (1..=total).all(|n| tried.contains(&n))
}

/// Kills the next deploy of the scene at `kill` record `n`, recovers it
/// by `how` and checks the invariant. `None` when the deploy was not
/// killed (it has fewer records than `n`); else the label of the last
/// record before the kill.
async fn kill_point(
    scene: &mut Scene,
    how: Recovery,
    kill: Kill,
    n: usize,
) -> Option<BTreeSet<String>> {
    let sha = scene.next_change();
    let runs = scene.migrate_runs();
    let reloads = scene.reload_count();
    if let Some(out) = scene.run_killed(&["apply", "--env", "staging", "--yes"], kill, n) {
        ok(&out);
        let id = latest_history(&scene.w.state);
        let context = format!("an uninterrupted deploy ({kill:?} {n})");
        scene
            .converged(&context, Some(&id), Some(&sha), &BTreeSet::new(), runs)
            .await;
        return None;
    }
    let last = scene.last_record();
    let mut labels = scene.in_flight();
    let id = scene.unfinished_id();
    let context = format!("{how:?} after a kill {kill:?} record {n} (last: {last}, {labels:?})");
    labels.insert(last);
    let log = scene.recover(how);
    let context = format!("{context}\n{log}");
    let resumed = how == Recovery::Resume && id.is_some();
    scene
        .converged(
            &context,
            id.as_deref(),
            resumed.then_some(sha.as_str()),
            &BTreeSet::new(),
            runs,
        )
        .await;
    if resumed {
        assert!(scene.reload_count() > reloads, "{context}: no proxy reload");
    }
    Some(labels)
}

/// Kill points of the scene's deploy in both modes, each recovered by
/// `how`; returns how many were exercised.
///
/// With [`ALL_POINTS_ENV`] every record in both modes (about 45 records;
/// ~90 points take about 3 minutes on 2 cores). By default a deterministic
/// sample from a reference deploy of the same shape: for each label (event
/// and action kind) the first record carrying it, in both modes, plus the
/// last record; should a run order its parallel records differently,
/// neighbouring points (then any point) fill the gap until
/// [`required_labels`] are covered in both modes. The point past the last
/// record is always run: the deploy then completes unharmed.
async fn every_kill_point(scene: &mut Scene, how: Recovery) -> usize {
    let reference: Vec<String> = reference_deploy(scene).await.iter().map(label).collect();
    let total = reference.len();
    assert!(
        total > 30,
        "a deploy of the scene writes more than 30 records"
    );
    let all = std::env::var(ALL_POINTS_ENV).as_deref() == Ok("1");
    let mut points = 0;
    let mut either = false;
    for kill in [Kill::After, Kill::Before] {
        // The label of the last record before a kill at `n`.
        let before = |n: usize| match kill {
            Kill::After | Kill::AfterBackup => n.checked_sub(1),
            Kill::Before => n.checked_sub(2),
        };
        let mut queue: BTreeSet<usize> = if all {
            (1..=total).collect()
        } else {
            let mut first_of = BTreeSet::new();
            (1..=total)
                .filter(|n| {
                    before(*n).is_none_or(|i| first_of.insert(reference[i].clone())) || *n == total
                })
                .collect()
        };
        let mut tried = BTreeSet::new();
        let mut seen = BTreeSet::new();
        while !queue.is_empty() {
            for n in std::mem::take(&mut queue) {
                tried.insert(n);
                let labels = kill_point(scene, how, kill, n)
                    .await
                    .unwrap_or_else(|| panic!("{kill:?} {n}: fewer than {total} records"));
                points += 1;
                seen.extend(labels);
            }
            // Gaps: the neighbours of the reference's records of each
            // label not yet hit; failing that, every point not tried yet.
            let required = required_labels();
            let gaps: Vec<&String> = required.difference(&seen).collect();
            if !gaps.is_empty() && queue_is_spent(&tried, total) {
                break;
            }
            for missing in gaps {
                let wanted =
                    missing
                        .replacen("in-flight:", "started:", 1)
                        .replacen("recorded:", "", 1);
                for (i, l) in reference.iter().enumerate() {
                    if *l != wanted {
                        continue;
                    }
                    let at = i + if kill == Kill::After { 1 } else { 2 };
                    for n in at.saturating_sub(2)..=(at + 2).min(total) {
                        if n > 0 && !tried.contains(&n) {
                            queue.insert(n);
                        }
                    }
                }
            }
            if queue.is_empty() && !required_labels().is_subset(&seen) {
                queue = (1..=total).filter(|n| !tried.contains(n)).collect();
            }
        }
        either |= seen.contains(EITHER_MODE);
        let required = required_labels();
        let missing: Vec<&String> = required.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "{kill:?}: never killed after {missing:?}: {seen:?}"
        );
        assert!(
            kill_point(scene, how, kill, total + 1).await.is_none(),
            "{kill:?} {}: the deploy has more records than the reference",
            total + 1
        );
    }
    if !either {
        // The sampled points missed that window: the builds beside the
        // backup write their records in another order from run to run (seen
        // under load). Kill right after the backup's record instead.
        let labels = kill_point(scene, how, Kill::AfterBackup, 0)
            .await
            .unwrap_or_else(|| panic!("the deploy wrote no backup record"));
        points += 1;
        either = labels.contains(EITHER_MODE);
    }
    assert!(
        either,
        "no kill between the backup's record and its success"
    );
    points
}

/// A scene of its own (`prefix`, `port_base`) through [`every_kill_point`].
async fn every_kill_point_recovered_by(how: Recovery, prefix: &str, port_base: u16) {
    let Some(mut scene) = Scene::new(prefix, port_base).await else {
        return;
    };
    let t = Instant::now();
    let points = every_kill_point(&mut scene, how).await;
    eprintln!("{how:?}: {points} kill points in {:?}", t.elapsed());
    scene.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kill_point_of_a_deploy_then_resume_converges() {
    every_kill_point_recovered_by(Recovery::Resume, "c1", 29100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kill_point_of_a_deploy_then_rollback_converges() {
    every_kill_point_recovered_by(Recovery::Rollback, "c2", 29200).await;
}

/// A record as `event` or `event:kind-of-action`.
fn label(v: &serde_json::Value) -> String {
    let event = v["event"].as_str().unwrap_or("?").to_owned();
    match v["action"].as_str() {
        Some(a) => format!("{event}:{}", a.split(':').next().unwrap_or(a)),
        None => event,
    }
}

/// The 1-based number of the first record of `records` matching `event`
/// and `action`.
fn record_number(records: &[serde_json::Value], event: &str, action: &str) -> usize {
    records
        .iter()
        .position(|r| r["event"] == event && r["action"] == action)
        .unwrap_or_else(|| panic!("no {event} {action} in {records:?}"))
        + 1
}

/// Every record of one uninterrupted deploy of the next change (the shape
/// every later change of the scene has).
async fn reference_deploy(scene: &mut Scene) -> Vec<serde_json::Value> {
    let sha = scene.next_change();
    let runs = scene.migrate_runs();
    ok(&scene.w.run(&["apply", "--env", "staging", "--yes"]));
    let id = latest_history(&scene.w.state);
    scene
        .converged(
            "the reference deploy",
            Some(&id),
            Some(&sha),
            &BTreeSet::new(),
            runs,
        )
        .await;
    history(&scene.w.state, &id)
}

/// The recoveries are killed too: a deploy killed just before the record
/// after svc-0003's release switch (the link switched, the restart under
/// way) is resumed with a kill at every record of the resume, in both
/// modes, then resumed again; and rolled back with a kill at every record
/// of the rollback, in both modes, then rolled back again.
///
/// Except one kill that is another's twin: a kill just before a `started`
/// record lands where the kill just after the record before it does (the
/// executor writes `started` before it does anything of its action, and
/// nothing happens between an action's end and the next one's start), so
/// in before mode the records that after mode saw as `started` are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_resumes_and_rollbacks_are_recovered_again() {
    let Some(mut scene) = Scene::new("c3", 29300).await else {
        return;
    };
    let t = Instant::now();
    let reference = reference_deploy(&mut scene).await;
    let switch = reference
        .iter()
        .position(|r| r["event"] == "switch" && r["service"] == MIGRATING)
        .unwrap()
        + 1;
    let apply_kill = (Kill::Before, switch + 1);
    let (mut points, mut twins) = (0, 0);
    for how in [Recovery::Resume, Recovery::Rollback] {
        // Record m of the recovery, as after mode saw it.
        let mut seen: BTreeMap<usize, String> = BTreeMap::new();
        for kill in [Kill::After, Kill::Before] {
            let mut m = 1;
            loop {
                if kill == Kill::Before && seen.get(&m).is_some_and(|l| l.starts_with("started:")) {
                    twins += 1;
                    m += 1;
                    continue;
                }
                let sha = scene.next_change();
                let runs = scene.migrate_runs();
                assert!(
                    scene
                        .run_killed(
                            &["apply", "--env", "staging", "--yes"],
                            apply_kill.0,
                            apply_kill.1
                        )
                        .is_none(),
                    "the deploy was not killed at {apply_kill:?}"
                );
                let id = scene.unfinished_id();
                assert!(id.is_some());
                let context = format!("{how:?} killed {kill:?} its record {m}");
                let Some(out) = scene.run_killed(how.args(), kill, m) else {
                    points += 1;
                    let last = scene.last_record();
                    if kill == Kill::After {
                        seen.insert(m, last.clone());
                    }
                    let log = scene.recover(how);
                    let context = format!("{context} (last: {last})\n{log}");
                    scene
                        .converged(
                            &context,
                            id.as_deref(),
                            (how == Recovery::Resume).then_some(sha.as_str()),
                            &BTreeSet::new(),
                            runs,
                        )
                        .await;
                    m += 1;
                    continue;
                };
                // The recovery ran to its end: every record of it was a
                // kill point.
                let log = ok(&out);
                assert!(m > 3, "{context}: too few records\n{log}");
                scene
                    .converged(
                        &context,
                        id.as_deref(),
                        (how == Recovery::Resume).then_some(sha.as_str()),
                        &BTreeSet::new(),
                        runs,
                    )
                    .await;
                break;
            }
        }
    }
    eprintln!(
        "killed recoveries: {points} kill points ({twins} twins skipped) in {:?}",
        t.elapsed()
    );
    scene.stop().await;
}

/// Between a crash and the resume, an operator (or a reboot) undoes two
/// effects the journal records as done: svc-0001's unit is stopped and
/// svc-0003's `current` is swapped back to the old release. The resume
/// verifies them, finds them no longer in effect and does them (and what
/// follows them) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_undone_behind_moorlines_back_are_redone_on_resume() {
    let Some(mut scene) = Scene::new("c4", 29400).await else {
        return;
    };
    let reference = reference_deploy(&mut scene).await;
    let n = record_number(&reference, "succeeded", &format!("health:{MIGRATING}"));
    let old = state_json(&scene.w)["services"][MIGRATING]["revision"]
        .as_str()
        .unwrap()
        .to_owned();
    let sha = scene.next_change();
    let runs = scene.migrate_runs();
    assert!(
        scene
            .run_killed(&["apply", "--env", "staging", "--yes"], Kill::After, n)
            .is_none()
    );
    let id = scene.unfinished_id().unwrap();
    let journal = std::fs::read_to_string(scene.w.state.join("journal.jsonl")).unwrap();
    for a in ["restart:svc-0001", "restart:svc-0003"] {
        assert!(
            journal.contains(&format!("\"event\":\"succeeded\",\"action\":\"{a}\"")),
            "{a} did not succeed before the kill:\n{journal}"
        );
    }
    assert_eq!(
        scene.w.live("staging", MIGRATING).as_deref(),
        Some(sha.as_str())
    );

    // Behind moorline's back.
    let unit = scene.w.unit("svc-0001");
    scene
        .sd
        .stop(&unit)
        .await
        .unwrap()
        .check("stop", &unit)
        .unwrap();
    let current = scene
        .w
        .fx
        .env_root("staging")
        .join(MIGRATING)
        .join("current");
    let target = std::fs::read_link(&current).unwrap();
    let old_target = target.with_file_name(&old);
    assert!(old_target.is_dir(), "{}", old_target.display());
    let tmp = current.with_file_name("current.swap");
    std::os::unix::fs::symlink(&old_target, &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    assert_eq!(
        scene.w.live("staging", MIGRATING).as_deref(),
        Some(old.as_str())
    );

    let log = scene.recover(Recovery::Resume);
    let redone: BTreeSet<String> = ["restart:svc-0001", "restart:svc-0003"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    scene
        .converged(
            &format!("resume after undoing effects\n{log}"),
            Some(&id),
            Some(&sha),
            &redone,
            runs,
        )
        .await;
    assert_eq!(
        scene.w.live("staging", MIGRATING).as_deref(),
        Some(sha.as_str())
    );
    scene.stop().await;
}

/// svc-0004's build (a go service) that sleeps before building.
const SLOW_BUILD: &str = r#"import os, subprocess, sys, time
time.sleep(float(os.environ.get("SLOW_BUILD_SECS", "4")))
here = os.path.dirname(os.path.abspath(__file__))
sys.exit(subprocess.call([sys.executable, os.path.join(here, "build.py")] + sys.argv[1:]))
"#;

/// The services with big trees in the slow-build test: their builds are
/// exports only (no build command), so each build's end is its export's
/// end. svc-0004's build is the slow one.
const HEAVY: [&str; 2] = ["svc-0001", "svc-0002"];

/// The duration of `action` in `records` (succeeded `at_ms` minus started
/// `at_ms`).
fn duration_ms(records: &[serde_json::Value], action: &str) -> u64 {
    let at = |event: &str| {
        records[record_number(records, event, action) - 1]["at_ms"]
            .as_u64()
            .unwrap()
    };
    at("succeeded") - at("started")
}

/// Slow builds (exports of two big trees, one build step that sleeps) run
/// beside the backup and the other builds: the runtime's two workers stay
/// free, so those finish while the exports are still running, and the
/// restarts and readiness checks after the builds take what the services
/// need, far below the build time.
///
/// (The plan orders every build before the first live change, so within
/// one deploy no readiness wait overlaps a build; what shares the runtime
/// with a build is the backup, migrations and other builds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_builds_do_not_delay_the_rest_of_the_apply() {
    let Some(mut scene) = Scene::new("c5", 29500).await else {
        return;
    };
    let go_build = "build \"/usr/bin/python3\" \"build.py\" \"{service}\"";
    assert!(scene.config.contains(go_build), "{}", scene.config);
    // The build reads SLOW_BUILD_SECS from moorline's environment, which
    // commands get only through pass-env.
    scene.config = scene
        .config
        .replace(
            go_build,
            "build \"/usr/bin/python3\" \"slow-build.py\" \"{service}\"",
        )
        .replace(
            "    branch \"main\"\n",
            "    branch \"main\"\n    pass-env \"SLOW_BUILD_SECS\"\n",
        );
    assert!(scene.config.contains("pass-env"), "{}", scene.config);
    let mut edits = vec![Edit::Write {
        path: "services/svc-0004/slow-build.py".to_owned(),
        contents: SLOW_BUILD.to_owned(),
    }];
    // Two big trees: exported at once, they would hold both of the
    // runtime's workers if the exports ran on them.
    for svc in HEAVY {
        for i in 0..1500 {
            edits.push(Edit::Write {
                path: format!("services/{svc}/assets/d{}/f{i}.txt", i / 100),
                contents: format!("{svc} asset {i}\n").repeat(32),
            });
        }
    }
    scene.w.commit("main", "a slow build", &edits);
    let sha = scene.next_change();
    let runs = scene.migrate_runs();
    // Long against what a fixture service needs to get ready (well under
    // a second unloaded), scaled like every test deadline.
    let secs = support::wait().as_secs_f64() / 5.0;
    let out = scene
        .w
        .cmd(&["apply", "--env", "staging", "--yes", "--jobs", "4"])
        .env("SLOW_BUILD_SECS", secs.to_string())
        .output()
        .unwrap();
    ok(&out);
    let id = latest_history(&scene.w.state);
    scene
        .converged("slow builds", Some(&id), Some(&sha), &BTreeSet::new(), runs)
        .await;
    let records = history(&scene.w.state, &id);
    let slow = duration_ms(&records, "build:svc-0004");
    assert!(
        u128::from(slow) >= std::time::Duration::from_secs_f64(secs).as_millis(),
        "the slow build took {slow} ms"
    );
    let done_at = |a: &str| {
        records[record_number(&records, "succeeded", a) - 1]["at_ms"]
            .as_u64()
            .unwrap()
    };
    // The two exports start together; had they held the runtime's workers,
    // nothing else could finish before the first of them did. So each of
    // these must finish before either export does: an order of events, not
    // a ratio of two durations that vary independently under load.
    let mut report = format!("build:svc-0004 {slow} ms");
    let mut first_export = u64::MAX;
    for svc in HEAVY {
        let a = format!("build:{svc}");
        let done = done_at(&a);
        let _ = write!(
            report,
            "; {a} (export) {} ms, done at {done} ms",
            duration_ms(&records, &a)
        );
        first_export = first_export.min(done);
    }
    for a in ["backup", "build:svc-0003", "migrate:svc-0003"] {
        let d = duration_ms(&records, a);
        let done = done_at(a);
        let _ = write!(report, "; {a} {d} ms, done at {done} ms");
        assert!(done < first_export, "{a} waited for the exports: {report}");
    }
    for s in &scene.w.fx.services {
        let h = duration_ms(&records, &format!("health:{}", s.name));
        let _ = write!(report, "; health:{} {h} ms", s.name);
        assert!(h < slow / 2, "{report}");
    }
    eprintln!("{report}");
    scene.stop().await;
}

/// svc-0004's build for the orphan tests: appends its pid to `pids`; the
/// first run starts a background process in its group, ignores SIGTERM
/// and writes a heartbeat line every 50 ms forever (a build moorline was
/// killed in the middle of); later runs build.
const ORPHAN_BUILD: &str = r#"import os, signal, subprocess, sys, time
pids = "@PIDS@"
with open(pids, "a", encoding="utf-8") as f:
    f.write(f"{os.getpid()}\n")
with open(pids, encoding="utf-8") as f:
    first = len(f.read().splitlines()) == 1
if first:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    bg = subprocess.Popen(["sleep", "1000"])
    with open(pids + ".bg", "w", encoding="utf-8") as f:
        f.write(f"{bg.pid}\n")
    while True:
        with open(pids + ".beat", "a", encoding="utf-8") as f:
            f.write("beat\n")
        time.sleep(0.05)
here = os.path.dirname(os.path.abspath(__file__))
sys.exit(subprocess.call([sys.executable, os.path.join(here, "build.py")] + sys.argv[1:]))
"#;

/// Whether `pid` runs (a zombie does not: it only waits to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn beats(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// A deploy SIGKILLed while svc-0004's build runs leaves the build running
/// (its process group is not moorline's); the recovery (`how`) stops that
/// group, background process included, before it acts, says so, and
/// converges.
async fn a_build_left_running_is_stopped_by(how: Recovery, prefix: &str, port_base: u16) {
    let Some(mut scene) = Scene::new(prefix, port_base).await else {
        return;
    };
    let go_build = "build \"/usr/bin/python3\" \"build.py\" \"{service}\"";
    assert!(scene.config.contains(go_build), "{}", scene.config);
    scene.config = scene.config.replace(
        go_build,
        "build \"/usr/bin/python3\" \"orphan-build.py\" \"{service}\"",
    );
    let pids = scene.w.state.with_file_name("orphan-build.pids");
    let script = ORPHAN_BUILD.replace("@PIDS@", pids.to_str().unwrap());
    scene.w.commit(
        "main",
        "a build that hangs the first time",
        &[Edit::Write {
            path: "services/svc-0004/orphan-build.py".to_owned(),
            contents: script,
        }],
    );
    let sha = scene.next_change();
    let runs = scene.migrate_runs();
    let mut apply = scene
        .w
        .cmd(&["apply", "--env", "staging", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let beat = pids.with_extension("pids.beat");
    let deadline = Instant::now() + support::wait();
    while beats(&beat) < 3 {
        assert!(Instant::now() < deadline, "the build never ran");
        assert!(apply.try_wait().unwrap().is_none(), "the apply ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    apply.kill().unwrap();
    apply.wait().unwrap();
    let read_pid = |p: &Path| -> u32 {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let build = read_pid(&pids);
    let bg = read_pid(&pids.with_extension("pids.bg"));
    // moorline is gone; its build is not.
    // (Polled up to the suite's wait deadline: a loaded machine may not run the build's next
    // beat within any fixed short window.)
    let n = beats(&beat);
    let deadline = Instant::now() + support::wait();
    while beats(&beat) <= n && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(beats(&beat) > n, "the build stopped with moorline");
    assert!(running(build) && running(bg));
    let journal = std::fs::read_to_string(scene.w.state.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains(&format!(
            "\"event\":\"spawned\",\"action\":\"build:svc-0004\",\"pgid\":{build}"
        )),
        "{journal}"
    );
    let id = scene.unfinished_id();

    let log = scene.recover(how);
    assert!(
        log.contains(&format!(
            "note: stopped build:svc-0004 (process group {build}) left running by the interrupted apply"
        )),
        "{log}"
    );
    assert!(!running(build) && !running(bg), "{log}");
    let n = beats(&beat);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(beats(&beat), n, "the old build still writes");
    if how == Recovery::Resume {
        // Stopped before the resumed build started (its pid is the second).
        let all = std::fs::read_to_string(&pids).unwrap();
        assert_eq!(all.lines().count(), 2, "{all}");
    }
    scene
        .converged(
            &format!("{how:?} of a deploy killed in a build\n{log}"),
            id.as_deref(),
            (how == Recovery::Resume).then_some(sha.as_str()),
            &BTreeSet::new(),
            runs,
        )
        .await;
    scene.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_left_running_by_a_killed_apply_is_stopped_by_resume() {
    a_build_left_running_is_stopped_by(Recovery::Resume, "c6", 29600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_left_running_by_a_killed_apply_is_stopped_by_rollback() {
    a_build_left_running_is_stopped_by(Recovery::Rollback, "c7", 29700).await;
}
