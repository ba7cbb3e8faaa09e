//! Rollback: manual (kept releases, no rebuild), of some services, to a
//! named release, of an interrupted apply, crashes in the middle of an
//! automatic rollback, and database backups restored.

use moorline::demo::fixture::Edit;

use crate::deploy::{World, code, ok, short_ready_timeout};
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_switches_back_without_rebuilding() {
    let Some(w) = World::new("r1", 22000) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let a = w.fx.head("main").unwrap();
    let b = w.commit(
        "main",
        "three services",
        &[
            Edit::touch_service("gateway"),
            Edit::touch_service("backend"),
            Edit::touch_service("pricing"),
        ],
    );
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let before = w.invocations(&sd).await;

    // Without a terminal and without --yes: shown, refused, nothing changes.
    let out = w.run(&["rollback", "--env", "staging"]);
    assert_eq!(code(&out), 1);
    assert_eq!(w.live("staging", "backend").as_deref(), Some(b.as_str()));

    let log = ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    assert!(
        !log.contains("start build:"),
        "a rollback never builds:\n{log}"
    );
    for s in ["gateway", "backend", "pricing"] {
        assert_eq!(
            w.live("staging", s).as_deref(),
            Some(a.as_str()),
            "{s}\n{log}"
        );
    }
    let after = w.invocations(&sd).await;
    for (name, inv) in &before {
        let restarted = after[name] != *inv;
        assert_eq!(
            restarted,
            ["gateway", "backend", "pricing"].contains(&name.as_str()),
            "{name}"
        );
    }
    w.all_ready(&sd).await;

    // Only one service, back to the newer kept release by name.
    let short = &b[..10];
    ok(&w.run(&[
        "rollback",
        "--env",
        "staging",
        "--service",
        "backend",
        "--to",
        short,
        "--yes",
    ]));
    assert_eq!(w.live("staging", "backend").as_deref(), Some(b.as_str()));
    assert_eq!(w.live("staging", "gateway").as_deref(), Some(a.as_str()));
    // An unknown release or service is a clear error.
    let out = w.run(&[
        "rollback",
        "--env",
        "staging",
        "--service",
        "backend",
        "--to",
        "ffffff",
        "--yes",
    ]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("moorline::rollback::no_release"));
    let out = w.run(&[
        "rollback",
        "--env",
        "staging",
        "--service",
        "backnd",
        "--yes",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `backend`"));
    // The next plan sees what runs and redeploys what differs from the branch.
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deployed: Vec<&str> = plan["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["change"] == "deploy")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(deployed, ["gateway", "pricing"]);
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_anywhere_in_an_automatic_rollback_still_ends_on_the_previous_release() {
    let Some(w) = World::new("r2", 22100) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let good = w.fx.head("main").unwrap();
    let mut crash_at = 1;
    let mut crashed_in_rollback = 0;
    loop {
        w.commit(
            "main",
            &format!("bad {crash_at}"),
            &[
                Edit::touch_service("config"),
                Edit::touch_service("backend"),
                Edit::crash_on_start("search"),
            ],
        );
        let out = w
            .cmd(&["apply", "--env", "staging", "--yes"])
            .env("MOORLINE_TEST_CRASH_AFTER", crash_at.to_string())
            .output()
            .unwrap();
        if out.status.code().is_some() {
            // Ran to its end: every crash point has been tried.
            assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
            break;
        }
        let journal = std::fs::read_to_string(w.state.join("journal.jsonl")).unwrap_or_default();
        if journal.contains("rollback-begin") {
            crashed_in_rollback += 1;
        }
        // Either resume (finishes the rollback, or fails again and rolls
        // back) or an explicit rollback: both end on the good release.
        let out = if crash_at % 2 == 0 {
            w.run(&["apply", "--resume", "--env", "staging"])
        } else {
            w.run(&["rollback", "--env", "staging", "--yes"])
        };
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            matches!(code(&out), 0 | 1 | 3),
            "crash at {crash_at}: {err}"
        );
        for s in ["config", "backend", "search"] {
            assert_eq!(
                w.live("staging", s).as_deref(),
                Some(good.as_str()),
                "crash at {crash_at}: {s}\n{err}"
            );
        }
        w.all_ready(&sd).await;
        assert!(
            !w.state.join("journal.jsonl").exists(),
            "journal finished at {crash_at}"
        );
        // Heal for the next round.
        w.commit("main", "heal", &[Edit::heal("search")]);
        crash_at += 1;
    }
    assert!(
        crashed_in_rollback >= 3,
        "crashed inside the rollback {crashed_in_rollback} times"
    );
    w.stop_all(&sd).await;
}

/// The stdout lines of a `--format json` apply: progress events and the
/// final report.
fn json_report(out: &std::process::Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "report")
        .map_or_else(
            || panic!("no report in {}", String::from_utf8_lossy(&out.stdout)),
            |v| v["report"].clone(),
        )
}

/// The automatic rollback is a plan: shown in the failure report and in
/// `--format json`, journaled in `rollback-begin`; killed in the middle of
/// it, `apply --resume` carries that plan on from its own records and ends
/// with every service ready on the previous release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rollback_is_a_plan_shown_journaled_and_resumed() {
    let Some(w) = World::new("r5", 22400) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let good = w.fx.head("main").unwrap();
    w.commit(
        "main",
        "bad",
        &[
            Edit::touch_service("config"),
            Edit::touch_service("backend"),
            Edit::crash_on_start("search"),
        ],
    );
    let back_to = format!("back to its previous release {}", &good[..12]);

    // Text: the rollback plan, rendered like any plan.
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 3, "{err}");
    let shown = err
        .split_once("the automatic rollback executed this plan:")
        .unwrap_or_else(|| panic!("no rollback plan in the report:\n{err}"))
        .1;
    assert!(shown.contains("Rollback plan for"), "{shown}");
    assert!(shown.contains(&back_to), "{shown}");
    assert!(shown.contains("restart:backend"), "{shown}");
    for s in ["config", "backend", "search"] {
        assert_eq!(w.live("staging", s).as_deref(), Some(good.as_str()), "{s}");
    }
    // The journal of that apply holds the plan it executed.
    let history = std::fs::read_dir(w.state.join("history"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let lines = std::fs::read_to_string(&history).unwrap();
    let (at, begin) = lines
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("\"rollback-begin\""))
        .unwrap();
    let begin: serde_json::Value = serde_json::from_str(begin).unwrap();
    assert_eq!(begin["plan"]["operation"], "rollback", "{begin}");

    // JSON: the report carries the same kind of plan.
    let out = w.run(&["apply", "--env", "staging", "--yes", "--format", "json"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let report = json_report(&out);
    let plan = &report["rollback_plan"];
    assert_eq!(plan["operation"], "rollback", "{report}");
    let restart = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "restart:backend")
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        restart["dir"].as_str().unwrap().ends_with(&good),
        "{restart}"
    );
    assert!(
        report["rolled_back"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "backend"),
        "{report}"
    );

    // Killed a few records into the rollback: the journal keeps the
    // rollback plan and its records; `apply --resume` finishes it.
    let out = w
        .cmd(&["apply", "--env", "staging", "--yes"])
        .env("MOORLINE_TEST_CRASH_AFTER", (at + 1 + 3).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed");
    let journal = std::fs::read_to_string(w.state.join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"rollback-begin\""), "{journal}");
    let out = w.run(&["apply", "--resume", "--env", "staging"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("resuming an interrupted rollback"), "{err}");
    assert!(!w.state.join("journal.jsonl").exists(), "{err}");
    for s in ["config", "backend", "search"] {
        assert_eq!(
            w.live("staging", s).as_deref(),
            Some(good.as_str()),
            "{s}\n{err}"
        );
    }
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// `rollback` of an unfinished apply shows the plan that rolls it back and
/// asks like any rollback: without a terminal and without `--yes` it
/// refuses, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_an_unfinished_apply_shows_its_plan_and_asks() {
    let Some(w) = World::new("r6", 22500) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let good = w.fx.head("main").unwrap();
    let bad = w.commit(
        "main",
        "bad",
        &[
            Edit::touch_service("backend"),
            Edit::crash_on_start("search"),
        ],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes", "--on-failure", "stop"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 4, "{err}");
    assert!(
        err.contains("`moorline rollback --env staging` would execute this plan:"),
        "{err}"
    );

    let out = w.run(&["rollback", "--env", "staging"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("Rollback plan for"), "{err}");
    assert!(err.contains("restart:backend"), "{err}");
    assert!(err.contains("rollback::unconfirmed"), "{err}");
    assert!(w.state.join("journal.jsonl").exists());
    assert_eq!(w.live("staging", "backend").as_deref(), Some(bad.as_str()));

    ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    assert!(!w.state.join("journal.jsonl").exists());
    for s in ["backend", "search"] {
        assert_eq!(w.live("staging", s).as_deref(), Some(good.as_str()), "{s}");
    }
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_backs_up_before_migrating_and_restores_the_database() {
    let Some(w) = World::new("r3", 22200) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    // First deploy: the migrations run, and nothing is backed up (there is
    // nothing to back up yet: the backup block's default first-deploy "skip").
    let out = w.run(&["plan", "--env", "production", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"migrate:backend"), "{ids:?}");
    assert!(!ids.contains(&"backup"), "{ids:?}");
    assert!(
        plan["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("first deploy: nothing to back up yet"),
        "{plan}"
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    let ledger =
        w.fx.env_root("production")
            .join("db/applied-migrations.txt");
    let before = std::fs::read_to_string(&ledger).unwrap();
    w.commit(
        "production",
        "migration",
        &[Edit::add_migration("backend", "0002_orders")],
    );
    let out = w.run(&["plan", "--env", "production", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    crate::deploy::assert_backup_before_migration(&plan);
    assert_eq!(plan["rollback"]["kind"], "needs-database");
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    let after = std::fs::read_to_string(&ledger).unwrap();
    assert!(after.contains("0002_orders"), "{after}");
    let list = ok(&w.run(&["backup", "list", "--env", "production"]));
    assert!(
        list.contains("taken before the last apply's migrations"),
        "{list}"
    );
    let log = ok(&w.run(&["rollback", "--env", "production", "--database", "--yes"]));
    assert!(
        log.contains("the next deploy of production runs the migrations again"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), before);
    // The code stayed; the database went back: the next plan migrates again, and says why,
    // although no migration file changed.
    let out = w.run(&["plan", "--env", "production", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    crate::deploy::assert_backup_before_migration(&plan);
    let migrate = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "migrate:backend")
        .unwrap_or_else(|| panic!("no migrate:backend in {plan}"));
    let why = migrate["reason"].as_str().unwrap();
    assert!(
        why.starts_with("the database was restored from backup pakashop-production-")
            && why.ends_with("; migrations run again"),
        "{why}"
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert!(
        std::fs::read_to_string(&ledger)
            .unwrap()
            .contains("0002_orders")
    );
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.state.join("state.json")).unwrap()).unwrap();
    assert!(st.get("database_restored").is_none(), "{st}");
    // Once migrated, nothing more to do.
    let out = w.run(&["plan", "--env", "production", "--detailed-exitcode"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // On-demand backups are kept and listed too.
    ok(&w.run(&["backup", "--env", "production"]));
    let list = ok(&w.run(&["backup", "list", "--env", "production"]));
    // One before 0002, one before migrating again after the restore, the on-demand one; the
    // first deploy took none.
    assert_eq!(
        list.lines().filter(|l| l.contains("production-")).count(),
        3,
        "{list}"
    );
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_puts_back_the_unit_file_the_last_apply_changed() {
    let Some(w) = World::new("r4", 22300) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let unit_file = w.sandbox.unit_dir().join(w.unit("pricing"));
    let before = std::fs::read_to_string(&unit_file).unwrap();
    // A release of pricing that also changes its unit.
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("service \"pricing\""))
        .unwrap()
        .to_owned();
    let pos = line.rfind('}').unwrap();
    let changed = format!(
        "{}; unit {{ env FEATURE_X=\"on\"; }} }}",
        line[..pos].trim_end().trim_end_matches(';')
    );
    w.set_config(&text.replace(&line, &changed));
    w.commit(
        "main",
        "pricing with feature x",
        &[Edit::touch_service("pricing")],
    );
    let log = ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let after = std::fs::read_to_string(&unit_file).unwrap();
    assert!(after.contains("FEATURE_X=on"), "{log}\n{after}");
    let log = ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    assert!(log.contains("install-unit:pricing"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&unit_file).unwrap(),
        before,
        "{log}"
    );
    assert_eq!(
        sd.status(&w.unit("pricing")).await.unwrap().active_state,
        "active"
    );
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

/// The rollback of a failed first deploy stops what it started (there is
/// no previous release), before it removes the unit files it installed, so
/// each unit's `ExecStop` still runs. A stop that systemd refuses is a
/// rollback problem (exit 4, the journal kept), never reported as rolled
/// back, and that unit's file stays; once the cause is gone, `rollback`
/// finishes it from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deploy_rollback_reports_a_stop_that_fails() {
    let Some(w) = World::new("j2", 25800) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    w.commit("main", "search crashes", &[Edit::crash_on_start("search")]);
    // A drop-in for config's unit: its stop takes longer than its jobs may
    // (result `timeout`). Stopped after its unit file was removed, the
    // unit would be gone and its ExecStop never run.
    let dropin = w.sandbox.unit_dir().join(format!("{}.d", w.unit("config")));
    std::fs::create_dir_all(&dropin).unwrap();
    let dropin = dropin.join("slow-stop.conf");
    std::fs::write(
        &dropin,
        "[Unit]\nJobTimeoutSec=1\n[Service]\nExecStop=/bin/sleep 4\n",
    )
    .unwrap();

    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 4, "{err}");
    assert!(err.contains("rollback problem"), "{err}");
    assert!(err.contains("config"), "{err}");
    assert!(w.state.join("journal.jsonl").exists(), "kept for a retry");
    assert!(err.contains("timeout"), "{err}");
    // The other services were stopped and lost `current`; config's unit
    // file stays until it is stopped.
    assert_eq!(w.live("staging", "gateway"), None);
    assert!(w.sandbox.unit_dir().join(w.unit("config")).is_file());
    assert!(!w.sandbox.unit_dir().join(w.unit("gateway")).exists());

    std::fs::remove_file(&dropin).unwrap();
    sd.daemon_reload().await.unwrap();
    let out = w.run(&["rollback", "--env", "staging", "--yes"]);
    let log = ok(&out);
    assert!(log.contains("was rolled back from its journal"), "{log}");
    assert!(!w.state.join("journal.jsonl").exists());
    for s in &w.fx.services {
        assert_eq!(w.live("staging", &s.name), None, "{}", s.name);
        let st = sd.status(&w.unit(&s.name)).await;
        assert!(
            st.as_ref().map_or(true, |st| st.active_state != "active"),
            "{} still runs: {st:?}",
            s.name
        );
    }
    w.stop_all(&sd).await;
}

/// `rollback` after a first deploy that succeeded: there is no previous
/// release, so every service goes back to nothing deployed, as the
/// automatic rollback of a failed first deploy does: a plan shown and
/// confirmed, each unit stopped and its `current` removed before the unit
/// file the deploy installed goes, then one daemon-reload. The state then
/// says nothing is deployed, so the next plan is a first deploy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_first_deploy_goes_back_to_nothing_deployed() {
    let Some(w) = World::new("r7", 22600) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    w.all_ready(&sd).await;

    // Shown, and refused without a terminal or --yes: nothing changes.
    let out = w.run(&["rollback", "--env", "staging"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("stop:pricing"), "{err}");
    assert!(err.contains("remove-unit:pricing"), "{err}");
    assert!(err.contains("first deploy undone"), "{err}");
    assert!(w.live("staging", "pricing").is_some());

    let log = ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    assert!(!log.contains("start build:"), "{log}");
    for s in &w.fx.services {
        assert_eq!(w.live("staging", &s.name), None, "{}\n{log}", s.name);
        assert!(
            !w.sandbox.unit_dir().join(w.unit(&s.name)).exists(),
            "{}'s unit file stays\n{log}",
            s.name
        );
        let st = sd.status(&w.unit(&s.name)).await;
        assert!(
            st.as_ref().map_or(true, |st| st.active_state != "active"),
            "{} still runs: {st:?}",
            s.name
        );
    }
    let st = crate::deploy::state_json(&w);
    assert_eq!(st["revision"], serde_json::Value::Null, "{st:#}");
    assert_eq!(st["services"], serde_json::json!({}), "{st:#}");

    // Nothing left to roll back; the next plan is a first deploy again.
    let out = w.run(&["rollback", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("moorline::rollback::nothing"));
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["first_deploy"], true, "{plan:#}");
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}
