//! What a new user runs into: uncommitted changes a plan does not see, user managers,
//! what `status --check` fails on, and how plans and failures read.

use moorline::demo::fixture::Edit;

use crate::deploy::{World, code, ok};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_changes_are_warned_in_every_plan_and_refused_by_apply() {
    let Some(w) = World::new("x1", 27100) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    // A clean tree: no warning, no field.
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan.get("uncommitted").is_none(), "{plan}");
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));

    // A service file edited, a new file in another service, a file outside every service.
    let backend = w.fx.repo.join("services/backend/VERSION");
    std::fs::write(&backend, "edited\n").unwrap();
    std::fs::write(w.fx.repo.join("services/pricing/new.txt"), "new\n").unwrap();
    std::fs::write(w.fx.repo.join("NOTES.txt"), "not a service\n").unwrap();
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["uncommitted"],
        serde_json::json!([
            "services/backend/VERSION (modified)",
            "services/pricing/new.txt (untracked)"
        ])
    );
    // Still "no changes": the plan deploys commits, and says what it does not see.
    assert_eq!(plan["actions"], serde_json::json!([]));
    let out = w.run(&["plan", "--env", "staging"]);
    let t = text(&out);
    assert!(
        t.contains("warning: uncommitted changes this plan does not see: services/backend/VERSION (modified), services/pricing/new.txt (untracked);"),
        "{t}"
    );
    let out = w.run(&["plan", "--env", "staging", "--format", "markdown"]);
    let t = text(&out);
    assert!(t.contains("> [!WARNING]\n> uncommitted changes"), "{t}");

    // apply refuses a plan with changes while the tree is dirty, naming every path.
    w.commit("main", "coupon", &[Edit::touch_service("coupon")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(t.contains("moorline::apply::dirty"), "{t}");
    assert!(t.contains("- services/backend/VERSION (modified)"), "{t}");
    assert!(t.contains("- services/pricing/new.txt (untracked)"), "{t}");
    assert!(!t.contains("NOTES.txt"), "{t}");
    // A saved plan is refused the same way.
    let saved = w.state.parent().unwrap().join("saved.plan.json");
    ok(&w.run(&["plan", "--env", "staging", "--out", saved.to_str().unwrap()]));
    let out = w.run(&["apply", saved.to_str().unwrap(), "--yes"]);
    assert!(
        text(&out).contains("moorline::apply::dirty"),
        "{}",
        text(&out)
    );

    // A configuration edited on disk is named too.
    let config = std::fs::read_to_string(&w.fx.config_path).unwrap();
    std::fs::write(
        &w.fx.config_path,
        config.replace("keep-releases 5", "keep-releases 4"),
    )
    .unwrap();
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["uncommitted"][0], "moorline.kdl (modified)", "{plan}");
    std::fs::write(&w.fx.config_path, &config).unwrap();

    // --allow-dirty applies what the plan shows: the committed coupon, not the edits.
    let out = w.run(&["apply", "--env", "staging", "--yes", "--allow-dirty"]);
    ok(&out);
    let live = w.live("staging", "backend").unwrap();
    let release =
        w.fx.env_root("staging")
            .join("backend/releases")
            .join(live)
            .join("VERSION");
    assert_ne!(std::fs::read_to_string(release).unwrap(), "edited\n");
    w.stop_all(&sd).await;
}

#[test]
fn a_config_that_differs_from_its_version_at_the_target_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let fx = moorline::demo::fixture::Fixture::create(
        &dir.path().join("fx"),
        &moorline::demo::fixture::FixtureOptions::new(dir.path().join("srv")),
    )
    .unwrap();
    // production moves on without main (HEAD): its config is not the one on disk.
    let config = std::fs::read_to_string(&fx.config_path).unwrap();
    let sha = fx
        .commit(
            "production",
            "production keeps 4",
            &[Edit::Write {
                path: "moorline.kdl".into(),
                contents: config.replace("keep-releases 5", "keep-releases 4"),
            }],
        )
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
        .args(["-c", fx.config_path.to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["plan", "--env", "production", "--format", "json"])
        .env_remove("MOORLINE_CONFIG")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["uncommitted"],
        serde_json::json!([format!(
            "moorline.kdl (differs from its version at {})",
            &sha[..12]
        )]),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_manager_gets_its_boot_target_and_state_under_xdg_state_home() {
    let Some(w) = World::new("x2", 27200) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    // As root (the test suite's user), with --systemd user and no --state-dir.
    let xdg_state = w.state.parent().unwrap().join("xdg-state");
    let run = |args: &[&str]| {
        let c = w.cmd(&[]);
        let mut argv: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = argv.iter().position(|a| a == "--state-dir").unwrap();
        argv.drain(at..at + 2);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut fresh = std::process::Command::new(c.get_program());
        fresh.args(argv);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => fresh.env(k, v),
                None => fresh.env_remove(k),
            };
        }
        fresh.env("XDG_STATE_HOME", &xdg_state).output().unwrap()
    };
    ok(&run(&["apply", "--env", "staging", "--yes"]));
    assert!(
        xdg_state
            .join("moorline/pakashop/staging/state.json")
            .is_file(),
        "state under $XDG_STATE_HOME"
    );
    assert!(!w.state.exists(), "nothing under the test's own state dir");
    let unit_dir = w.sandbox.unit_dir();
    let unit = w.unit("backend");
    let text = std::fs::read_to_string(unit_dir.join(&unit)).unwrap();
    assert!(text.contains("\nWantedBy=default.target\n"), "{text}");
    assert!(!text.contains("multi-user.target"), "{text}");
    // Enabled for real: the user manager's boot target wants it.
    assert!(
        unit_dir
            .join("default.target.wants")
            .join(&unit)
            .symlink_metadata()
            .is_ok()
    );
    assert!(
        !unit_dir
            .join("multi-user.target.wants")
            .join(&unit)
            .exists()
    );
    assert_eq!(sd.status(&unit).await.unwrap().unit_file_state, "enabled");
    // status finds the same state without being told where it is.
    let out = run(&["status", "--env", "staging", "--check"]);
    ok(&out);
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_fails_on_what_needs_action_and_shows_a_manual_rollback() {
    let Some(w) = World::new("x3", 27300) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    w.all_ready(&sd).await;
    let check = |extra: &[&str]| {
        let mut args = vec!["status", "--env", "staging", "--check"];
        args.extend_from_slice(extra);
        w.run(&args)
    };
    assert_eq!(code(&check(&[])), 0, "{}", text(&check(&[])));

    // A merge not deployed yet: reported, not failed, unless --fail-behind.
    w.commit("main", "coupon v2", &[Edit::touch_service("coupon")]);
    let out = check(&[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("behind-branch: branch main is at"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("NOT OK"), "{}", text(&out));
    let out = check(&["--fail-behind"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("NOT OK"), "{}", text(&out));

    // Deployed, then rolled back by hand: shown as such, from the state.
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    ok(&w.run(&["rollback", "--env", "staging", "--yes"]));
    w.all_ready(&sd).await;
    let state = crate::deploy::state_json(&w);
    assert_eq!(
        state["rolled_back"]["services"],
        serde_json::json!(["coupon"])
    );
    let out = check(&[]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(t.contains("rolled-back: rolled back by hand "), "{t}");
    assert!(
        t.contains("coupon runs an older release than the deployed"),
        "{t}"
    );
    let out = w.run(&["status", "--env", "staging", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["drift"][0]["kind"], "rolled-back", "{status}");
    assert_eq!(status["ok"], true);
    assert_eq!(code(&check(&["--fail-behind"])), 5);

    // A unit an operator must look at fails the check.
    sd.stop(&w.unit("coupon")).await.unwrap();
    let out = check(&[]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(
        text(&out).contains("coupon: unit is inactive"),
        "{}",
        text(&out)
    );

    // The next deploy brings coupon forward and clears the record.
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    assert!(crate::deploy::state_json(&w).get("rolled_back").is_none());
    w.all_ready(&sd).await;
    let out = check(&["--fail-behind"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_rollbacks_and_restarts_read_naturally() {
    let Some(w) = World::new("x4", 27400) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    crate::deploy::short_ready_timeout(&w, 2);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let first = w.fx.head("main").unwrap();

    // A readiness failure: the error once in full (with the answer's body), a one-line summary.
    w.commit("main", "broken", &[Edit::break_readiness("search")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 3, "{t}");
    let port = w.fx.service("search").unwrap().port;
    let message = format!(
        "http://127.0.0.1:{port}/health/ready: not ready after 2s: answered 503: {{\"status\": \"not-ready\"}}"
    );
    assert_eq!(
        t.matches(&message).count(),
        2,
        "live and in the summary:\n{t}"
    );
    assert_eq!(
        t.matches("journal:").count(),
        1,
        "the journal tail once:\n{t}"
    );
    assert!(
        t.contains(&format!("\nFAILED health:search: {message}\n")),
        "{t}"
    );
    assert!(
        t.contains("rollback staging: because health:search failed\n"),
        "{t}"
    );
    assert!(
        !t.lines()
            .any(|l| l.trim_end().ends_with("FAILED health:search:")),
        "{t}"
    );

    // The automatic rollback's plan names the revisions for what they are.
    let broken = w.fx.head("main").unwrap();
    assert!(
        t.contains(&format!(
            "  from {} (what the failed apply was deploying; never recorded as deployed)\n",
            &broken[..12]
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "  to   {} (the deployed revision): ",
            &first[..12]
        )),
        "{t}"
    );
    assert!(!t.contains("(the deployed revision)\n"), "{t}");

    // The failed revision is the branch tip: plan and status say so, apply refuses it unasked.
    let failed_words = format!("revision {} failed here at ", &broken[..12]);
    let out = w.run(&["plan", "--env", "staging"]);
    let t = text(&out);
    assert!(t.contains(&format!("warning: {failed_words}")), "{t}");
    assert!(
        t.contains("and was rolled back automatically; `apply` asks again"),
        "{t}"
    );
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["failed_here"]["revision"], broken.as_str(), "{plan}");
    assert_eq!(plan["failed_here"]["how"], "rolled-back", "{plan}");
    let out = w.run(&["status", "--env", "staging", "--check"]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "reported, not failed: {t}");
    assert!(
        t.contains(&format!(
            "failed-here: the tip of branch main: {failed_words}"
        )),
        "{t}"
    );
    let out = w.run(&["apply", "--env", "staging"]);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(t.contains("moorline::apply::failed_here"), "{t}");
    assert!(
        t.contains(&format!("refusing to deploy {} again", &broken[..12])),
        "{t}"
    );

    // A revert changes no service: apply records it as deployed, restarts nothing, and the
    // environment is no longer behind its branch. So does a commit that touches no service.
    let revert = w.commit("main", "Revert \"broken\"", &[Edit::heal("search")]);
    let out = w.run(&["plan", "--env", "staging"]);
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "no service changes since {}: `apply` records {} as deployed and restarts nothing",
            &first[..12],
            &revert[..12]
        )),
        "{t}"
    );
    assert!(!t.contains("failed here"), "{t}");
    assert_eq!(
        code(&w.run(&["status", "--env", "staging", "--check", "--fail-behind"])),
        5
    );
    let started = w.invocations(&sd).await;
    for (sha, edits) in [
        (revert.clone(), None),
        (
            String::new(),
            Some(vec![Edit::Write {
                path: "docs/NOTES.md".into(),
                contents: "notes\n".into(),
            }]),
        ),
    ] {
        let sha = match edits {
            Some(e) => w.commit("main", "docs", &e),
            None => sha,
        };
        let out = w.run(&["apply", "--env", "staging", "--yes"]);
        let t = text(&out);
        assert_eq!(code(&out), 0, "{t}");
        assert!(
            t.contains("nothing to restart: no service changed since ")
                && t.contains(&format!(
                    "; recorded {} as the revision deployed to staging",
                    &sha[..12]
                )),
            "{t}"
        );
        assert_eq!(crate::deploy::state_json(&w)["revision"], sha.as_str());
        let out = w.run(&["status", "--env", "staging", "--check", "--fail-behind"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        // Applying again: nothing left to record.
        let out = w.run(&["apply", "--env", "staging", "--yes"]);
        assert!(
            text(&out).contains("nothing to apply: staging is up to date"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(w.invocations(&sd).await, started, "nothing restarted");

    // A fixed release deployed, then rolled back by hand: the plan says what it is.
    let fixed = w.commit(
        "main",
        "fixed",
        &[Edit::heal("search"), Edit::touch_service("search")],
    );
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let out = w.run(&["rollback", "--env", "staging", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(
        t.contains("Rollback plan for pakashop/staging (branch main)\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "  from {} (the deployed revision)\n",
            &fixed[..12]
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!("  to   the kept release {}\n", &first[..12])),
        "{t}"
    );
    assert!(
        t.contains("  1 service rolls back · kept releases, no rebuild\n"),
        "{t}"
    );
    assert!(t.contains("  ~ search           roll back\n"), "{t}");
    assert!(!t.contains("\"\""), "{t}");
    assert!(t.contains("rollback of staging succeeded: "), "{t}");
    let out = w.run(&[
        "rollback", "--env", "staging", "--format", "markdown", "--yes",
    ]);
    let md = text(&out);
    assert!(
        md.contains("### moorline rollback plan: `pakashop` → staging"),
        "{md}"
    );

    // A restart plan names what it does.
    let out = w.run(&[
        "restart",
        "--env",
        "staging",
        "--service",
        "backend",
        "--yes",
    ]);
    let t = text(&out);
    assert_eq!(code(&out), 0, "{t}");
    assert!(
        t.contains("Restart plan for pakashop/staging (branch main)\n"),
        "{t}"
    );
    assert!(
        t.contains("  1 service restarts · same releases, no rebuild\n"),
        "{t}"
    );
    assert!(!t.contains("\"restart\""), "{t}");
    assert!(
        t.contains("restart of staging succeeded: 2 actions in "),
        "{t}"
    );

    // --to that matches nothing lists the kept releases instead of naming a directory.
    let out = w.run(&[
        "rollback",
        "--env",
        "staging",
        "--service",
        "search",
        "--to",
        "nope",
    ]);
    let t = text(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(code(&out), 1, "{t}");
    assert!(
        t.contains("service `search` has no kept release matching `nope`"),
        "{t}"
    );
    assert!(t.contains("kept releases, newest first: "), "{t}");
    for sha in [&fixed, &first] {
        assert!(t.contains(&sha[..12]), "{sha} in {t}");
    }
    assert!(t.contains(", live)"), "{t}");
    assert!(!t.contains("/releases"), "{t}");
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_runs_only_what_staging_ran_healthy() {
    let Some(w) = World::new("x5", 27500) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    let config = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let marker = "    branch \"production\"\n";
    assert!(config.contains(marker));
    w.set_config(&config.replace(marker, &format!("{marker}    promote-from \"staging\"\n")));
    // One state directory per environment, side by side: production finds staging's beside its
    // own (`--state-dir DIR/production` → `DIR/staging`).
    let states = w.state.parent().unwrap().join("states");
    let (staging, production) = (states.join("staging"), states.join("production"));
    let run = |state: &std::path::Path, args: &[&str]| w.cmd_in(state, args).output().unwrap();
    let plan_json = |args: &[&str]| {
        let mut a = vec!["plan", "--env", "production", "--format", "json"];
        a.extend_from_slice(args);
        let out = run(&production, &a);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        v
    };

    // Staging runs A healthy.
    ok(&run(&staging, &["apply", "--env", "staging", "--yes"]));
    // B is on both branches, but staging never ran it.
    let rev_b = w.commit("main", "coupon v2", &[Edit::touch_service("coupon")]);
    merge_into_production(&w, "merge main");
    let out = run(&production, &["plan", "--env", "production"]);
    let t = text(&out);
    assert!(t.contains("warning: promotion: staging never ran "), "{t}");
    assert!(
        t.contains("`apply` refuses it unless --skip-promotion-check"),
        "{t}"
    );
    let pj = plan_json(&[]);
    assert_eq!(pj["promotion"]["source"], "staging", "{pj}");
    assert_eq!(pj["promotion"]["healthy"], false);
    assert!(pj["promotion"]["ran"].is_null());
    let out = run(&production, &["apply", "--env", "production", "--yes"]);
    let t = text(&out);
    assert_eq!(code(&out), 1, "{t}");
    assert!(t.contains("moorline::apply::not_promoted"), "{t}");
    assert!(
        t.contains("production only runs what staging ran healthy: staging never ran"),
        "{t}"
    );
    assert!(!production.join("state.json").exists(), "nothing applied");
    // The override is shown in the plan and kept in a saved plan.
    let pj = plan_json(&["--skip-promotion-check"]);
    assert_eq!(pj["promotion"]["skipped"], true);
    assert_eq!(pj["inputs"]["skip_promotion_check"], true);
    assert!(
        pj["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("check skipped (--skip-promotion-check)")),
        "{pj}"
    );

    // Staging runs B (the production merge has the same tree): production may deploy it, and
    // its plan says when staging ran it.
    ok(&run(&staging, &["apply", "--env", "staging", "--yes"]));
    let pj = plan_json(&[]);
    assert_eq!(pj["promotion"]["healthy"], true, "{pj}");
    assert_eq!(pj["promotion"]["ran"]["revision"], rev_b.as_str());
    assert!(pj["promotion"]["ran"]["until"].is_null());
    let note = pj["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .find(|n| n.starts_with("promotion:"))
        .unwrap_or_else(|| panic!("{pj}"));
    assert!(
        note.contains(&format!(
            "(as {}, the same tree) healthy: deployed there ",
            &rev_b[..12]
        )),
        "{note}"
    );
    assert!(note.ends_with("and still live"), "{note}");
    // With min-healthy, a run live for less than that does not count yet (the config file
    // edited, not committed: the same revisions are planned).
    let committed = std::fs::read_to_string(&w.fx.config_path).unwrap();
    std::fs::write(
        &w.fx.config_path,
        committed.replace(
            "promote-from \"staging\"\n",
            "promote-from \"staging\" min-healthy=\"1h\"\n",
        ),
    )
    .unwrap();
    let pj = plan_json(&[]);
    assert_eq!(pj["promotion"]["healthy"], false, "{pj}");
    assert_eq!(pj["promotion"]["min_healthy_secs"], 3600, "{pj}");
    assert!(
        pj["warnings"].to_string().contains("healthy since "),
        "{pj}"
    );
    assert!(
        pj["warnings"]
            .to_string()
            .contains(", less than min-healthy 1h: it counts from "),
        "{pj}"
    );
    std::fs::write(&w.fx.config_path, &committed).unwrap();
    // The production units are staging's on this one manager: adopted, as the plan shows.
    let mut apply = vec!["apply", "--env", "production", "--yes"];
    for s in &w.fx.services {
        apply.extend(["--adopt", s.name.as_str()]);
    }
    ok(&run(&production, &apply));

    // C ran on staging, then was rolled back by hand there: it does not count.
    w.commit("main", "pricing v2", &[Edit::touch_service("pricing")]);
    ok(&run(&staging, &["apply", "--env", "staging", "--yes"]));
    ok(&run(&staging, &["rollback", "--env", "staging", "--yes"]));
    merge_into_production(&w, "merge main again");
    let pj = plan_json(&[]);
    assert_eq!(pj["promotion"]["healthy"], false, "{pj}");
    assert!(pj["promotion"]["ran"]["rolled_back_at"].is_u64(), "{pj}");
    let out = run(&production, &["apply", "--env", "production", "--yes"]);
    let t = text(&out)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(code(&out), 1, "{t}");
    assert!(
        t.contains("but it was rolled back by hand there at "),
        "{t}"
    );
    assert!(
        t.contains("production only runs what staging ran healthy: staging ran "),
        "{t}"
    );
    assert!(
        t.contains(", but it was rolled back by hand there help:"),
        "{t}"
    );

    // A hotfix on production that main lacks: warned about in every production plan.
    w.fx.commit(
        "production",
        "hotfix: coupon rounding",
        &[Edit::touch_service("coupon")],
    )
    .unwrap();
    let out = run(&production, &["plan", "--env", "production"]);
    let t = text(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        t.contains("production's branch has a commit that staging's branch lacks (a hotfix not merged back?): "),
        "{t}"
    );
    assert!(t.contains("hotfix: coupon rounding"), "{t}");
    let warning = t
        .split("staging's branch lacks")
        .nth(1)
        .unwrap()
        .split("phase config")
        .next()
        .unwrap();
    assert!(
        !warning.contains("merge main"),
        "merges are not hotfixes: {warning}"
    );
    // And staging never ran the hotfix's tree.
    assert_eq!(plan_json(&[])["promotion"]["healthy"], false);
    w.stop_all(&sd).await;
}

/// A real merge of `main` into `production` (two parents, `main`'s tree), as a pull request's
/// merge makes it.
fn merge_into_production(w: &World, message: &str) -> String {
    let repo = git2::Repository::open(&w.fx.repo).unwrap();
    let main = repo
        .revparse_single("main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let prod = repo
        .revparse_single("production")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let sig = main.author();
    let id = repo
        .commit(
            Some("refs/heads/production"),
            &sig,
            &sig,
            message,
            &main.tree().unwrap(),
            &[&prod, &main],
        )
        .unwrap();
    id.to_string()
}

/// A plan that finds no state where the manager it drives keeps it, while the other manager's
/// default directory has one (a deploy made with `--systemd user`, planned as root without it),
/// says where that state is and how to use it.
#[test]
fn a_plan_without_state_names_the_other_managers_state() {
    if !moorline::files::is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = moorline::demo::fixture::FixtureOptions::new(dir.path().join("srv"));
    opts.port_base = Some(crate::support::port(27600));
    let fx = moorline::demo::fixture::Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let xdg = dir.path().join("xdg");
    let plan = |systemd: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.args(["-c", fx.config_path.to_str().unwrap()])
            .args(["plan", "--env", "staging"])
            .env("XDG_STATE_HOME", &xdg)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .env_remove("MOORLINE_SYSTEMD");
        if let Some(s) = systemd {
            c.env("MOORLINE_SYSTEMD", s);
        }
        text(&c.output().unwrap())
    };
    let system = std::path::Path::new("/var/lib/moorline/pakashop/staging");
    if system.exists() {
        // A real deploy of a project of this name on this machine: not ours to judge.
        return;
    }
    let hint = "holds the state of the user manager's deploys of staging";
    assert!(!plan(None).contains(hint), "{}", plan(None));
    // The user manager's state (as `--systemd user` wrote it).
    let user_state = xdg.join("moorline/pakashop/staging");
    std::fs::create_dir_all(&user_state).unwrap();
    std::fs::write(
        user_state.join("state.json"),
        "{\"format_version\": 1, \"project\": \"pakashop\", \"environment\": \"staging\", \"revision\": null, \"services\": {}}\n",
    )
    .unwrap();
    let t = plan(None);
    assert!(
        t.contains(&format!(
            "warning: nothing is recorded as deployed in {} (the state of the system manager), but {} {hint}: if staging runs there, plan with --systemd user (or set MOORLINE_SYSTEMD=user), or point at it with --state-dir",
            system.display(),
            user_state.display()
        )),
        "{t}"
    );
    // MOORLINE_SYSTEMD picks the user manager: its state is found, nothing to say.
    let t = plan(Some("user"));
    assert!(!t.contains("nothing is recorded as deployed in"), "{t}");
    assert!(!system.exists(), "a plan writes no state");
}
