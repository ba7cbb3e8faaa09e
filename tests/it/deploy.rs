//! `moorline apply` end to end: the real binary, a fixture repository built
//! with git2, the 19 fixture services under the shared private systemd
//! manager, checked through systemd itself and over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;

use crate::support;

pub struct World {
    pub _dir: tempfile::TempDir,
    pub fx: Fixture,
    pub sandbox: &'static PrivateSystemd,
    pub prefix: String,
    pub state: PathBuf,
}

impl World {
    /// A fixture whose units are named `{prefix}-{service}.service` and
    /// whose ports start at `port_base`, so tests sharing the manager
    /// never collide. `None`: no systemd here (skip).
    pub fn new(prefix: &str, port_base: u16) -> Option<Self> {
        Some(Self::on(support::sandbox()?, prefix, port_base))
    }

    /// The same fixture under another manager than the shared one.
    pub fn on(sandbox: &'static PrivateSystemd, prefix: &str, port_base: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = FixtureOptions::new(dir.path().join("srv"));
        opts.port_base = Some(support::port(port_base));
        let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
        let text = std::fs::read_to_string(&fx.config_path).unwrap();
        let text = text.replace(
            "unit-name \"pakashop-{service}.service\"",
            &format!("unit-name \"{prefix}-{{service}}.service\""),
        );
        fx.commit_config("unit names of this test", &text).unwrap();
        let state = dir.path().join("state");
        Self {
            _dir: dir,
            fx,
            sandbox,
            prefix: prefix.to_owned(),
            state,
        }
    }

    pub fn unit(&self, service: &str) -> String {
        format!("{}-{service}.service", self.prefix)
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        self.cmd_in(&self.state, args)
    }

    /// `cmd` with another state directory (a machine that is not the host).
    pub fn cmd_in(&self, state: &Path, args: &[&str]) -> std::process::Command {
        let mut c = support::moorline(self.sandbox, state);
        c.args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(args);
        c
    }

    /// Runs moorline, then checks the invariants every apply, resume and rollback must leave
    /// ([`crate::invariants`]).
    pub fn run(&self, args: &[&str]) -> Output {
        let before = crate::invariants::before(self, args);
        let out = self.cmd(args).output().unwrap();
        crate::invariants::after(self, args, &out, before);
        out
    }

    /// Replaces the config file and commits it (on `main`, and on
    /// `production` when it was at the same commit), as an operator would.
    pub fn set_config(&self, text: &str) {
        self.fx.commit_config("config edit", text).unwrap();
    }

    pub fn commit(&self, branch: &str, msg: &str, edits: &[Edit]) -> String {
        self.fx.commit(branch, msg, edits).unwrap()
    }

    /// InvocationID of every service's unit (changes on each start).
    pub async fn invocations(&self, sd: &Systemd) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for s in &self.fx.services {
            let st = sd.status(&self.unit(&s.name)).await.unwrap();
            out.insert(s.name.clone(), st.invocation_id);
        }
        out
    }

    pub async fn all_ready(&self, sd: &Systemd) {
        for s in &self.fx.services {
            let st = sd.status(&self.unit(&s.name)).await.unwrap();
            assert_eq!(st.active_state, "active", "{} is {:?}", s.name, st);
            let p = ready(s.port).await;
            assert!(p.ok, "{} not ready: {p:?}", s.name);
        }
    }

    pub fn live(&self, env: &str, service: &str) -> Option<String> {
        let link = self.fx.env_root(env).join(service).join("current");
        std::fs::read_link(link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub async fn stop_all(&self, sd: &Systemd) {
        for s in &self.fx.services {
            let _ = sd.stop(&self.unit(&s.name)).await;
        }
    }
}

/// The plan JSON backs up the database before the first migration.
pub fn assert_backup_before_migration(plan: &serde_json::Value) {
    let ids: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(pos("backup") < pos("migrate:backend"), "{ids:?}");
}

/// `moorline validate` on a world's configuration: it must pass, apart from
/// the shared-host codes. The fixture's staging and production run on this
/// one machine with the same unit names and ports on purpose (a world
/// deploys one environment at a time), which `validate` rightly reports.
pub fn validated(w: &World) {
    let out = w.run(&["validate"]);
    if out.status.success() {
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let codes: Vec<&str> = err
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Error: "))
        .collect();
    assert!(
        !codes.is_empty()
            && codes
                .iter()
                .all(|c| c.starts_with("moorline::config::shared_")),
        "{}",
        ok(&out)
    );
}

pub fn ok(o: &Output) -> String {
    let s = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{s}");
    s
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_then_only_the_changed_service_restarts() {
    let Some(w) = World::new("d1", 21000) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();

    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    ok(&out);
    w.all_ready(&sd).await;
    // Installed units are enabled, so they start at boot.
    for s in &w.fx.services {
        let st = sd.status(&w.unit(&s.name)).await.unwrap();
        assert_eq!(st.unit_file_state, "enabled", "{}", s.name);
    }
    let main = w.fx.head("main").unwrap();
    for s in &w.fx.services {
        assert_eq!(w.live("staging", &s.name).as_deref(), Some(main.as_str()));
    }
    let before = w.invocations(&sd).await;

    // Nothing changed: the plan is empty and --detailed-exitcode says 0.
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(code(&out), 0, "{}", ok(&out));

    let sha = w.commit("main", "backend tweak", &[Edit::touch_service("backend")]);
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(code(&out), 2);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    ok(&out);
    let after = w.invocations(&sd).await;
    for s in &w.fx.services {
        let restarted = before[&s.name] != after[&s.name];
        assert_eq!(
            restarted,
            s.name == "backend",
            "{} restarted: {restarted}",
            s.name
        );
    }
    assert_eq!(w.live("staging", "backend").as_deref(), Some(sha.as_str()));
    assert_eq!(w.live("staging", "gateway").as_deref(), Some(main.as_str()));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// Shortens every service's readiness timeout so failure tests end fast.
pub fn short_ready_timeout(w: &World, secs: u64) {
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("service \"")
            && let Some(pos) = line.find('{')
        {
            out.push_str(&line[..=pos]);
            let _ =
                std::fmt::Write::write_fmt(&mut out, format_args!(" ready-timeout \"{secs}s\";"));
            out.push_str(&line[pos + 1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    w.set_config(&out);
}

pub fn state_json(w: &World) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(w.state.join("state.json")).unwrap()).unwrap()
}

/// Journal records of the last finished apply, from history/.
fn last_history(w: &World) -> Vec<serde_json::Value> {
    let dir = w.state.join("history");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.last().unwrap()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_journal_record_then_resume_converges() {
    let Some(w) = World::new("d2", 21100) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let mut crash_at = 1;
    loop {
        let sha = w.commit(
            "main",
            &format!("change {crash_at}"),
            &[
                Edit::touch_service("backend"),
                Edit::touch_service("search"),
            ],
        );
        let before = w.invocations(&sd).await;
        let out = w
            .cmd(&["apply", "--env", "staging", "--yes"])
            .env("MOORLINE_TEST_CRASH_AFTER", crash_at.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            // Fewer records than `crash_at`: every point has been tried.
            assert!(
                crash_at > 10,
                "an apply of two services writes more than 10 records"
            );
            break;
        }
        assert!(
            out.status.code().is_none(),
            "the crash hook kills the process: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A second apply refuses while one is unfinished (a crash right
        // after the final record leaves a finished journal: nothing to do).
        let journal = std::fs::read_to_string(w.state.join("journal.jsonl")).unwrap_or_default();
        if !journal.contains("\"event\":\"end\"") {
            let blocked = w.run(&["apply", "--env", "staging", "--yes"]);
            assert_eq!(code(&blocked), 1, "crash at {crash_at}");
            assert!(String::from_utf8_lossy(&blocked.stderr).contains("--resume"));
        }
        let resumed = w.run(&["apply", "--resume", "--env", "staging"]);
        let log = ok(&resumed);
        // Converged: both services on the new release, everything ready,
        // state records the target.
        assert_eq!(
            w.live("staging", "backend").as_deref(),
            Some(sha.as_str()),
            "{log}"
        );
        assert_eq!(
            w.live("staging", "search").as_deref(),
            Some(sha.as_str()),
            "{log}"
        );
        w.all_ready(&sd).await;
        assert_eq!(state_json(&w)["revision"], sha.as_str());
        // Only the two changed services restarted.
        let after = w.invocations(&sd).await;
        for (name, inv) in &before {
            let restarted = after[name] != *inv;
            assert_eq!(
                restarted,
                name == "backend" || name == "search",
                "{name} at {crash_at}\n{log}\ncrashed run:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // No action that succeeded before the crash (and is still in
        // effect) was started again.
        let records = last_history(&w);
        let mut started: BTreeMap<String, usize> = BTreeMap::new();
        let mut succeeded_then_started = Vec::new();
        let mut succeeded = std::collections::BTreeSet::new();
        for r in &records {
            let a = r["action"].as_str().unwrap_or_default().to_owned();
            match r["event"].as_str() {
                Some("started") => {
                    if succeeded.contains(&a) {
                        succeeded_then_started.push(a.clone());
                    }
                    *started.entry(a).or_default() += 1;
                }
                Some("succeeded") => {
                    succeeded.insert(a);
                }
                _ => {}
            }
        }
        assert!(
            succeeded_then_started.is_empty(),
            "re-ran {succeeded_then_started:?} after a crash at record {crash_at}"
        );
        // Nothing left to resume.
        let again = w.run(&["apply", "--resume", "--env", "staging"]);
        assert!(ok(&again).contains("nothing to resume"));
        crash_at += 1;
    }
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_anything_live_leave_services_untouched() {
    let Some(w) = World::new("d3", 21200) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let first = w.fx.head("main").unwrap();
    for edits in [
        vec![Edit::touch_service("search"), Edit::fail_build("backend")],
        vec![
            Edit::heal("backend"),
            Edit::add_migration("backend", "0002_x"),
            Edit::fail_migration("backend"),
        ],
    ] {
        let before = w.invocations(&sd).await;
        w.commit("main", "bad change", &edits);
        let out = w.run(&["apply", "--env", "staging", "--yes"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(code(&out), 1, "{err}");
        assert!(err.contains("nothing live changed"), "{err}");
        assert_eq!(w.invocations(&sd).await, before, "no unit restarted");
        for s in ["backend", "search"] {
            assert_eq!(w.live("staging", s).as_deref(), Some(first.as_str()));
        }
        w.all_ready(&sd).await;
    }
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_or_readiness_rolls_back_to_the_previous_release() {
    let Some(w) = World::new("d4", 21300) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let good = w.fx.head("main").unwrap();
    for (what, edits) in [
        (
            "crash",
            vec![
                Edit::touch_service("config"),
                Edit::crash_on_start("gateway"),
                Edit::touch_service("backend"),
            ],
        ),
        (
            "readiness",
            vec![
                Edit::heal("gateway"),
                Edit::touch_service("config"),
                Edit::break_readiness("backend"),
            ],
        ),
    ] {
        w.commit("main", what, &edits);
        let out = w.run(&["apply", "--env", "staging", "--yes"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(code(&out), 3, "{what}: {err}");
        assert!(err.contains("rolled back"), "{err}");
        if what == "crash" {
            // The report shows what the unit itself said.
            assert!(err.contains("crashing on start (behaviour.json)"), "{err}");
        }
        for s in ["config", "gateway", "backend"] {
            assert_eq!(
                w.live("staging", s).as_deref(),
                Some(good.as_str()),
                "{what}: {s}\n{err}"
            );
        }
        w.all_ready(&sd).await;
        // The state still names the good revision.
        assert_eq!(state_json(&w)["revision"], good.as_str());
        assert_eq!(state_json(&w)["last_failure"]["outcome"], "rolled-back");
    }
    // --on-failure stop keeps the failure for inspection (exit 4).
    w.commit("main", "again", &[Edit::touch_service("backend")]);
    w.commit("main", "broken again", &[Edit::crash_on_start("backend")]);
    let out = w.run(&["apply", "--env", "staging", "--yes", "--on-failure", "stop"]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    // Left as is: a new apply is refused until the failure is dealt with,
    // and `rollback` undoes exactly the failed apply.
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unfinished"));
    ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    for s in ["config", "gateway", "backend"] {
        assert_eq!(w.live("staging", s).as_deref(), Some(good.as_str()), "{s}");
    }
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_plan_is_applied_exactly_and_refused_when_stale() {
    let Some(w) = World::new("d5", 21400) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    let plan = w.state.parent().unwrap().join("plan.json");
    ok(&w.run(&["plan", "--env", "staging", "--out", plan.to_str().unwrap()]));
    // Without a terminal and without --yes: refused.
    let out = w.run(&["apply", plan.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    ok(&w.run(&["apply", plan.to_str().unwrap(), "--yes"]));
    w.all_ready(&sd).await;
    // The same plan again: the host state moved, so it is stale.
    let out = w.run(&["apply", plan.to_str().unwrap(), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("host state changed"), "{err}");
    // A plan made, then the config edited: stale, says so.
    w.commit("main", "next", &[Edit::touch_service("pricing")]);
    ok(&w.run(&["plan", "--env", "staging", "--out", plan.to_str().unwrap()]));
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    w.set_config(&text.replace("keep-releases 5", "keep-releases 4"));
    let out = w.run(&["apply", plan.to_str().unwrap(), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    // Only the configuration moved, and the reason says exactly that.
    let reason = err
        .lines()
        .find(|l| l.contains("no longer matches"))
        .unwrap_or_default();
    assert!(
        reason.contains("the saved plan no longer matches: the configuration changed (sha256 "),
        "{err}"
    );
    assert!(!err.contains("host state"), "{err}");
    assert!(!err.contains("computed actions"), "{err}");
    // A service renamed in the configuration after the plan was made:
    // named as gone and as new, not as a host state change.
    ok(&w.run(&["plan", "--env", "staging", "--out", plan.to_str().unwrap()]));
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let renamed: String = text
        .lines()
        .map(|l| match l.strip_prefix("service \"pricing\"") {
            Some(rest) => format!(
                "service \"prices\" {}",
                rest.trim_start()
                    .replacen("{ ", "{ path \"services/pricing\"; ", 1)
            ),
            None => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect();
    assert!(renamed.contains("service \"prices\""), "{renamed}");
    w.set_config(&renamed);
    let out = w.run(&["apply", plan.to_str().unwrap(), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    // Long reasons may wrap: compare with whitespace collapsed.
    let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(err.contains("the configuration changed (sha256 "), "{err}");
    assert!(
        err.contains("service `pricing` is no longer in the configuration"),
        "{err}"
    );
    assert!(
        err.contains("new service `prices` in the configuration"),
        "{err}"
    );
    assert!(!err.contains("host state"), "{err}");
    w.set_config(&text);
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_moorline_did_not_install_is_replaced_only_when_adopted() {
    let Some(w) = World::new("adopt", 26300) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    let path = w.sandbox.unit_dir().join(w.unit("config"));
    let hand =
        "[Unit]\nDescription=config, written by hand\n\n[Service]\nExecStart=/bin/sleep 1000\n";
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, hand).unwrap();
    let shown = path.display().to_string();

    // The plan shows the conflict (and is not "no changes").
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 2, "{text}");
    assert!(
        text.contains(&format!("conflict: {shown} was not installed by moorline")),
        "{text}"
    );
    assert!(
        text.contains("-Description=config, written by hand"),
        "{text}"
    );

    // apply refuses, names the file and the way forward, and changes nothing.
    // The diagnostic wraps long lines behind a `│`: read it unwrapped.
    let flat = |o: &Output| {
        String::from_utf8_lossy(&o.stderr)
            .split_whitespace()
            .filter(|w| *w != "│")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let err = flat(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("moorline::apply::unit_conflict"), "{err}");
    assert!(err.contains(&format!("{shown} (service config)")), "{err}");
    assert!(
        err.contains("moorline apply --env staging --adopt config"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), hand);
    assert!(!w.state.join("state.json").exists());
    assert_eq!(w.live("staging", "config"), None);
    // So does a saved plan made without the adoption.
    let plan = w.state.parent().unwrap().join("plan.json");
    let out = w.run(&["plan", "--env", "staging", "--out", plan.to_str().unwrap()]);
    ok(&out);
    let out = w.run(&["apply", plan.to_str().unwrap(), "--yes"]);
    let err = flat(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("moorline::apply::unit_conflict"), "{err}");
    assert!(err.contains("--adopt config --out FILE"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), hand);

    // Adopted in a saved plan: applied, and the unit is moorline's now.
    let out = w.run(&[
        "plan",
        "--env",
        "staging",
        "--adopt",
        "config",
        "--out",
        plan.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("adopting a unit moorline did not install"),
        "{}",
        ok(&out)
    );
    ok(&w.run(&["apply", plan.to_str().unwrap(), "--yes"]));
    let installed = std::fs::read_to_string(&path).unwrap();
    assert!(
        installed.starts_with("# Managed by moorline"),
        "{installed}"
    );
    assert_eq!(
        state_json(&w)["services"]["config"]["unit"],
        w.unit("config")
    );
    w.all_ready(&sd).await;
    // Owned from now on: nothing to adopt, nothing in conflict.
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_fails_at_once_naming_the_holder() {
    let Some(w) = World::new("d6", 21500) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    short_ready_timeout(&w, support::wait().as_secs());
    // Slow enough that the first apply certainly holds the lock while the second is refused.
    let slow = u64::try_from((support::prompt() * 2).as_millis()).unwrap();
    w.commit("main", "slow", &[Edit::slow_readiness("config", slow)]);
    let mut first = w
        .cmd(&["apply", "--env", "staging", "--yes"])
        .spawn()
        .unwrap();
    // Wait until the first holds the lock (its journal exists).
    let journal = w.state.join("journal.jsonl");
    assert!(support::eventually(|| journal.exists()).await);
    let t = std::time::Instant::now();
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(t.elapsed() < support::prompt(), "fails at once");
    assert!(first.wait().unwrap().success());
    w.stop_all(&sd).await;
}

/// Start times of every service's main process, by phase.
async fn start_times(w: &World, sd: &Systemd) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for s in &w.fx.services {
        let st = sd.status(&w.unit(&s.name)).await.unwrap();
        out.insert(
            s.name.clone(),
            (s.phase.clone(), st.exec_main_start_timestamp_us),
        );
    }
    out
}

/// Every service of a phase started after every service of the phases
/// before it had started (and, per the plan, become ready).
fn assert_phase_order(times: &BTreeMap<String, (String, u64)>, only: Option<&[&str]>) {
    let phases = moorline::demo::fixture::PHASES;
    let mut last_max = 0u64;
    for phase in phases {
        let in_phase: Vec<u64> = times
            .iter()
            .filter(|(n, (p, _))| p == phase && only.is_none_or(|o| o.contains(&n.as_str())))
            .map(|(_, (_, t))| *t)
            .collect();
        if in_phase.is_empty() {
            continue;
        }
        let min = *in_phase.iter().min().unwrap();
        assert!(
            min > last_max,
            "phase {phase} started before the previous phase: {times:?}"
        );
        last_max = *in_phase.iter().max().unwrap();
    }
}

/// At boot systemd starts every enabled unit in one transaction; the units moorline renders
/// carry the phase order (`After=`), so a boot starts them in that order too, not all at
/// once. Here one transaction starts all of them, as a boot does (a target that wants them;
/// the shared manager's `default.target` would start every other test's units as well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_starting_every_service_follows_the_phases() {
    let Some(w) = World::new("d12", 28500) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    w.stop_all(&sd).await;
    let wants: Vec<String> =
        w.fx.services
            .iter()
            .rev()
            .map(|s| w.unit(&s.name))
            .collect();
    let target = "d12-boot.target";
    support::install_unit(
        &sd,
        w.sandbox,
        target,
        &format!("[Unit]\nWants={}\n", wants.join(" ")),
    )
    .await;
    sd.start(target)
        .await
        .unwrap()
        .check("start", target)
        .unwrap();
    w.all_ready(&sd).await;
    // (Without `After=`, this manager started them in the order of their names.)
    assert_phase_order(&start_times(&w, &sd).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_follow_the_phases_and_stop_at_a_service_that_is_not_ready() {
    let Some(w) = World::new("d7", 21600) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    assert_phase_order(&start_times(&w, &sd).await, None);

    let before = w.invocations(&sd).await;
    let log = ok(&w.run(&["restart", "--env", "staging", "--yes"]));
    assert!(!log.contains("build:"), "{log}");
    let after = w.invocations(&sd).await;
    assert!(
        before.iter().all(|(k, v)| after[k] != *v),
        "every service restarted"
    );
    assert_phase_order(&start_times(&w, &sd).await, None);
    w.all_ready(&sd).await;

    // --service with --with-dependents: gateway, and backend that depends on it.
    let before = w.invocations(&sd).await;
    ok(&w.run(&[
        "restart",
        "--env",
        "staging",
        "--service",
        "gateway",
        "--with-dependents",
        "--yes",
    ]));
    let after = w.invocations(&sd).await;
    let restarted: Vec<&str> = after
        .iter()
        .filter(|(k, v)| before[*k] != **v)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(restarted, ["backend", "gateway"]);
    assert_phase_order(&start_times(&w, &sd).await, Some(&["gateway", "backend"]));

    // A service whose readiness never comes stops the restart there.
    let ready_file =
        w.fx.env_root("staging")
            .join("gateway/current/behaviour.json");
    let live = std::fs::read_link(w.fx.env_root("staging").join("gateway/current")).unwrap();
    let _ = live;
    let mut behaviour: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready_file).unwrap()).unwrap();
    behaviour["ready"] = serde_json::Value::Bool(false);
    std::fs::write(&ready_file, behaviour.to_string()).unwrap();
    let before = w.invocations(&sd).await;
    let out = w.run(&["restart", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(code(&out), 0, "{err}");
    assert!(err.contains("FAILED health:gateway"), "{err}");
    let after = w.invocations(&sd).await;
    for s in ["backend", "search", "pricing"] {
        assert_eq!(
            before[s], after[s],
            "{s} must not restart after gateway failed\n{err}"
        );
    }
    behaviour["ready"] = serde_json::Value::Bool(true);
    std::fs::write(&ready_file, behaviour.to_string()).unwrap();
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_resume_finishes() {
    let Some(w) = World::new("d8", 21700) else {
        return;
    };
    short_ready_timeout(&w, support::wait().as_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    // Slow enough that the SIGTERM certainly lands while gateway's readiness is polled.
    let slow = u64::try_from((support::prompt() * 2).as_millis()).unwrap();
    let sha = w.commit(
        "main",
        "slow gateway",
        &[
            Edit::slow_readiness("gateway", slow),
            Edit::touch_service("backend"),
        ],
    );
    let child = w
        .cmd(&["apply", "--env", "staging", "--yes"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until gateway's readiness is being polled, then SIGTERM.
    let journal = w.state.join("journal.jsonl");
    support::eventually(|| {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .contains("\"action\":\"health:gateway\"")
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 4, "{err}");
    assert!(
        err.contains("moorline apply --resume --env staging"),
        "{err}"
    );
    // gateway's health finished; backend (next phase) never started.
    assert_ne!(
        w.live("staging", "backend").as_deref(),
        Some(sha.as_str()),
        "{err}"
    );
    ok(&w.run(&["apply", "--resume", "--env", "staging"]));
    assert_eq!(w.live("staging", "backend").as_deref(), Some(sha.as_str()));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_reviewed_away_from_the_host_is_applied_only_if_the_host_agrees() {
    let Some(w) = World::new("d9", 21800) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let first = w.fx.head("main").unwrap();
    let coupon_v2 = w.commit("main", "coupon v2", &[Edit::touch_service("coupon")]);
    // The pull request's plan: made where there is no host state.
    let ci_state = w.state.parent().unwrap().join("ci-state");
    let reviewed = w.state.parent().unwrap().join("reviewed.json");
    let plan_file = reviewed.to_str().unwrap();
    ok(&w
        .cmd_in(
            &ci_state,
            &[
                "plan", "--env", "staging", "--from", &first, "--to", &coupon_v2, "--out",
                plan_file,
            ],
        )
        .output()
        .unwrap());
    // Its fingerprint covers other inputs (no state), so it is not this
    // host's plan; --reviewed compares what both would do instead.
    assert_eq!(code(&w.run(&["apply", plan_file, "--yes"])), 1);
    ok(&w.run(&[
        "apply",
        "--env",
        "staging",
        "--reviewed",
        plan_file,
        "--yes",
    ]));
    assert_eq!(
        w.live("staging", "coupon").as_deref(),
        Some(coupon_v2.as_str())
    );
    assert_eq!(
        w.live("staging", "pricing").as_deref(),
        Some(first.as_str())
    );

    // Something on the host that the review could not see: coupon rolled
    // back by hand. The host's plan would redeploy it too: refused.
    let pricing_v2 = w.commit("main", "pricing v2", &[Edit::touch_service("pricing")]);
    ok(&w
        .cmd_in(
            &ci_state,
            &[
                "plan",
                "--env",
                "staging",
                "--from",
                &coupon_v2,
                "--to",
                &pricing_v2,
                "--out",
                plan_file,
            ],
        )
        .output()
        .unwrap());
    ok(&w.run(&[
        "rollback",
        "--env",
        "staging",
        "--service",
        "coupon",
        "--yes",
    ]));
    let out = w.run(&[
        "apply",
        "--env",
        "staging",
        "--reviewed",
        plan_file,
        "--yes",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("moorline::apply::not_as_reviewed") && err.contains("coupon"),
        "{err}"
    );
    assert_eq!(
        w.live("staging", "pricing").as_deref(),
        Some(first.as_str()),
        "nothing applied"
    );
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_apply_shows_a_live_view() {
    let Some(w) = World::new("d10", 21900) else {
        return;
    };
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no script(1) to give apply a terminal");
        return;
    }
    let sd = w.sandbox.connect().await.unwrap();
    // The same command line, run by script(1) on a pseudo-terminal.
    let c = w.cmd(&["apply", "--env", "staging", "--yes"]);
    let mut line = vec![c.get_program().to_string_lossy().into_owned()];
    line.extend(c.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line.join(" "), "/dev/null"]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script.env_remove("NO_COLOR");
    let out = script.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("running "),
        "the live line names running actions:\n{text}"
    );
    assert!(text.contains("succeeded"), "{text}");
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// A journal whose begin record was cut short (the state disk filled up
/// while it was written) recorded nothing that acted: `apply --resume`,
/// `rollback` and `apply` each archive it, say so, and go on. A complete
/// record that cannot be read is refused, naming the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_is_archived_and_the_command_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let Some(w) = World::new("j1", 25700) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    let journal = w.state.join("journal.jsonl");
    let torn_files = || -> Vec<PathBuf> {
        std::fs::read_dir(w.state.join("history"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("torn-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let note = |out: &Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("has no complete begin record"), "{err}");
        assert!(!journal.exists(), "archived");
    };
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let a = w.fx.head("main").unwrap();
    let b = w.commit("main", "search", &[Edit::touch_service("search")]);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));

    // A begin record cut short: nothing to resume.
    std::fs::write(&journal, r#"{"event":"begin","apply_id":"1-2-3","pl"#).unwrap();
    let out = w.run(&["apply", "--resume", "--env", "staging"]);
    let log = ok(&out);
    note(&out);
    assert!(log.contains("nothing to resume"), "{log}");
    assert_eq!(w.live("staging", "search").as_deref(), Some(b.as_str()));

    // An empty journal: no unfinished apply to roll back, so the last
    // apply is rolled back as usual.
    std::fs::write(&journal, "").unwrap();
    let out = w.run(&["rollback", "--env", "staging", "--yes"]);
    ok(&out);
    note(&out);
    assert_eq!(w.live("staging", "search").as_deref(), Some(a.as_str()));

    // And a new apply starts.
    std::fs::write(&journal, "{").unwrap();
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    ok(&out);
    note(&out);
    assert_eq!(w.live("staging", "search").as_deref(), Some(b.as_str()));

    let torn = torn_files();
    assert_eq!(torn.len(), 3, "{torn:?}");
    for f in &torn {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }

    // A complete record that is not one is no torn write: refused, and
    // the file is left for a human.
    w.commit("main", "search again", &[Edit::touch_service("search")]);
    std::fs::write(&journal, "not a record\n").unwrap();
    for args in [
        &["apply", "--resume", "--env", "staging"][..],
        &["rollback", "--env", "staging", "--yes"][..],
        &["apply", "--env", "staging", "--yes"][..],
    ] {
        let out = w.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert!(err.contains("moorline::journal::corrupt"), "{err}");
        assert!(err.contains("corrupt at line 1"), "{err}");
        assert!(journal.exists());
    }
    assert_eq!(w.live("staging", "search").as_deref(), Some(b.as_str()));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// An apply on a full state filesystem (a real one: a small tmpfs over the
/// state directory, in a mount namespace of its own) fails before it does
/// anything and leaves no journal behind; once space is freed, the next
/// apply just runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_on_a_full_state_filesystem_leaves_no_journal() {
    let Some(w) = World::new("j3", 25900) else {
        return;
    };
    let probe = std::process::Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs in a mount namespace here");
        return;
    }
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let b = w.commit("main", "search", &[Edit::touch_service("search")]);

    let c = w.cmd(&["apply", "--env", "staging", "--yes"]);
    let mut line = vec![format!("'{}'", c.get_program().to_string_lossy())];
    line.extend(c.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
    let line = line.join(" ");
    let script = format!(
        r#"state="$1"; copy="$2"
cp -a "$state" "$copy"
mount -t tmpfs -o size=8m tmpfs "$state" || exit 99
cp -a "$copy/." "$state/"
dd if=/dev/zero of="$state/fill" bs=4k 2>/dev/null
{line}
echo "first exit $?"
test -e "$state/journal.jsonl" && echo "a journal was left"
rm "$state/fill"
{line}
echo "second exit $?"
"#
    );
    let mut sh = std::process::Command::new("unshare");
    sh.args(["--mount", "sh", "-c", &script, "sh"])
        .arg(&w.state)
        .arg(w.state.with_file_name("state-copy"))
        .stdin(std::process::Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let out = sh.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("first exit 1"), "{all}");
    assert!(stderr.contains("moorline::journal::write"), "{all}");
    assert!(stderr.contains("No space left on device"), "{all}");
    assert!(!stdout.contains("a journal was left"), "{all}");
    assert!(stdout.contains("second exit 0"), "{all}");
    assert_eq!(w.live("staging", "search").as_deref(), Some(b.as_str()));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// The readiness of the service on `port`, asked until it answers 2xx or the suite's wait
/// deadline passes: a check after moorline said the service is ready, where a loaded machine
/// may take seconds to answer one request (a single probe gives up after
/// `moorline::health::REQUEST_TIMEOUT`).
pub async fn ready(port: u16) -> moorline::health::Probe {
    let url = format!("http://127.0.0.1:{port}/health/ready");
    match moorline::health::wait_ready(&url, support::wait(), || async { Ok(()) }).await {
        Ok(p) | Err(p) => p,
    }
}

/// What the plan needs from the host is checked before anything changes: a user that does
/// not exist, a missing and a world-readable env-file, a program that is not installed, a port
/// held by another process. `plan` warns with each one's code; `apply` refuses with all of
/// them and changes nothing; once they are fixed, the same apply goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_facts_are_refused_before_anything_changes() {
    let Some(w) = World::new("d11", 28600) else {
        return;
    };
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let readable = w.state.with_file_name("readable.env");
    std::fs::write(&readable, "LOG_LEVEL=debug\n").unwrap();
    std::fs::set_permissions(
        &readable,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let python = "runtime \"python\" {";
    let at = text.find(python).unwrap();
    let (head, tail) = text.split_at(at);
    let broken_python = tail
        .replacen(
            "        restart \"on-failure\"\n",
            &format!(
                "        restart \"on-failure\"\n        user \"moorline-no-such-user\"\n        \
                 env-file \"/nonexistent/moorline/app.env\" \"-/nonexistent/optional.env\" {:?}\n",
                readable.display().to_string()
            ),
            1,
        )
        .replacen(
            &format!("exec {:?}", "/usr/bin/python3"),
            "exec \"/usr/local/bin/moorline-no-such-python\"",
            1,
        );
    assert_ne!(
        broken_python, tail,
        "the fixture's python runtime changed shape"
    );
    w.set_config(&format!("{head}{broken_python}"));
    let taken = w.fx.services.iter().find(|s| s.runtime == "node").unwrap();
    let listener = std::net::TcpListener::bind(("127.0.0.1", taken.port)).unwrap();

    let out = w.run(&["plan", "--env", "staging"]);
    assert_eq!(code(&out), 0, "{}", ok(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for code in [
        "moorline::host::no_such_user",
        "moorline::host::env_file_missing",
        "moorline::host::env_file_readable",
        "moorline::host::program_missing",
        "moorline::host::port_taken",
    ] {
        assert!(stderr.contains(code), "{code} missing:\n{stderr}");
    }
    assert!(!stderr.contains("optional.env"), "{stderr}");

    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("moorline::host::facts"), "{stderr}");
    assert!(
        stderr.contains(&format!("port {} ", taken.port)),
        "{stderr}"
    );
    assert!(!w.state.join("state.json").exists(), "{stderr}");
    assert!(
        !w.sandbox.unit_dir().join(w.unit(&taken.name)).exists(),
        "a unit was installed"
    );

    // Fixed: the same configuration as before, the port free again.
    w.set_config(&text);
    drop(listener);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
}

/// A directory nested 300 levels deep in one service (deeper than libgit2
/// walks a working tree) is deployed like any other: the plan warns that
/// the path was not checked for uncommitted changes, the export writes the
/// whole tree, and the apply succeeds. Before, every plan of the
/// repository failed with `moorline::git::failed`.
#[test]
fn a_service_with_a_directory_nested_300_deep_deploys() {
    let Some(sandbox) = support::sandbox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let root = tmp.path().join("srv");
    let state = tmp.path().join("state");
    let deep = format!("services/api/{}leaf.txt", "d/".repeat(300));
    for (path, text) in [
        ("services/web/index.txt", "web\n"),
        (deep.as_str(), "leaf\n"),
    ] {
        std::fs::create_dir_all(repo.join(path).parent().unwrap()).unwrap();
        std::fs::write(repo.join(path), text).unwrap();
    }
    let (api, web) = (support::free_port(), support::free_port());
    let config = format!(
        r#"project "dd" {{ unit-name "dd-{{service}}.service" }}
environment "staging" {{
    branch "main"
    root "{root}"
}}
phase "core"
runtime "http" {{
    build "true"
    unit {{
        exec "/usr/bin/python3" "-m" "http.server" "{{port}}" "--bind" "127.0.0.1"
        wanted-by "default.target"
    }}
}}
service "api" {{ runtime "http"; port {api}; phase "core"; health "/"; ready "/"; metrics "/"; }}
service "web" {{ runtime "http"; port {web}; phase "core"; health "/"; ready "/"; metrics "/"; }}
"#,
        root = root.display(),
    );
    std::fs::write(repo.join("moorline.kdl"), &config).unwrap();
    crate::secrets::git(&repo, &["init", "-q", "-b", "main"]);
    crate::secrets::git(&repo, &["add", "-A"]);
    crate::secrets::git(&repo, &["commit", "-q", "-m", "deep"]);
    let run = |args: &[&str]| {
        support::moorline(sandbox, &state)
            .args(["-c", repo.join("moorline.kdl").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let plan = run(&["plan", "--env", "staging"]);
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(
        text.contains(
            "not checked for uncommitted changes, services/api: directory nesting too deep"
        ),
        "{text}"
    );
    let out = run(&["apply", "--env", "staging", "--yes"]);
    let _ = run(&["stop", "--env", "staging", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let current = root.join("api/current");
    let leaf = current.join(deep.trim_start_matches("services/api/"));
    assert_eq!(std::fs::read_to_string(leaf).unwrap(), "leaf\n");
}
