//! Readiness of every kind against the shared private systemd manager: a worker
//! (`ready "none"`, no port), a `Type=notify` service, a TCP service (`ready "tcp"`), one
//! checked by a command (`ready "exec"`) and a scheduled job (its `.timer`) deploy beside an
//! HTTP service; then each is broken in its own way (a crash on start, the wrong port, never
//! ready) and each failed apply says why, within seconds, and is rolled back (the job's timer
//! file with it).

use std::time::Instant;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::testkit::fixture::{JOB, JOB_SCHEDULE, KINDS, readiness_kinds};

use crate::deploy::{World, code, ok};
use crate::support;

/// One HTTP service of the generated fleet and the four services of [`readiness_kinds`].
fn world() -> Option<(World, u16)> {
    let sandbox = support::sandbox()?;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(1);
    let base = support::port(24300);
    opts.port_base = Some(base);
    let python = opts.python.to_str().unwrap().to_owned();
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let grpc = base + 10;
    let (edits, services) = readiness_kinds(&python, grpc, "supporting");
    fx.commit("main", "services of every readiness kind", &edits)
        .unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    // Staging and production share this host: each its own unit names and ports.
    let mut text = text
        .replace("pakashop-{service}.service", "rk-{env}-{service}.service")
        .replace(
            "environment \"production\" {\n",
            "environment \"production\" {\n    port-offset 1000\n",
        );
    // A notify service that never sends READY=1 fails at this, not at 60 s.
    text.push_str(&services.replace(
        "ready \"notify\";",
        &format!(
            "ready \"notify\"; ready-timeout \"{}s\";",
            support::failing_ready_timeout_secs()
        ),
    ));
    fx.commit_config("readiness kinds", &text).unwrap();
    Some((
        World {
            state: dir.path().join("state"),
            _dir: dir,
            fx,
            sandbox,
            prefix: "rk-staging".to_owned(),
        },
        grpc,
    ))
}

fn behaviour(service: &str, key: &str, value: serde_json::Value) -> Edit {
    Edit::Behaviour {
        service: service.to_owned(),
        key: key.to_owned(),
        value,
    }
}

/// Applies staging, expecting a failure that rolls back: its standard output and error, and
/// how long it took.
fn failing_apply(w: &World, json: bool) -> (String, String, std::time::Duration) {
    let t = Instant::now();
    let mut args = vec!["apply", "--env", "staging", "--yes"];
    if json {
        args.extend(["--format", "json"]);
    }
    let out = w.run(&args);
    let took = t.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code(&out), 3, "{stdout}\n{stderr}");
    (stdout, stderr, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_readiness_deploys_and_each_failure_explains_itself() {
    let Some((w, grpc)) = world() else { return };
    let probed = grpc + 1;
    ok(&w.run(&["validate"]));

    // Each kind has its plan line.
    let plan = ok(&w.run(&["plan", "--env", "staging"]));
    for line in [
        format!("127.0.0.1:{grpc} must accept a TCP connection within 60s"),
        "must send READY=1 (Type=notify) within".to_owned(),
        "must stay up for the settle window (ready \"none\": nothing to ask it)".to_owned(),
        "must exit 0 within 60s".to_owned(),
        format!("{probed}` must exit 0"),
        format!(
            "rk-staging-{JOB}.timer must stay active for the settle window; the job is not run now: next run per OnCalendar={JOB_SCHEDULE}"
        ),
    ] {
        assert!(plan.contains(&line), "{line}\n{plan}");
    }

    // The first deploy: every kind gets ready.
    let first = ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let sd = w.sandbox.connect().await.unwrap();
    for s in KINDS.iter().copied().chain(["svc-0001"]) {
        let st = sd.status(&w.unit(s)).await.unwrap();
        assert_eq!(st.active_state, "active", "{s}: {st:?}\n{first}");
    }
    // The job: its timer is installed, enabled and active; the job did not run at deploy.
    let timer = w.unit(JOB).replace(".service", ".timer");
    let timer_file = w.sandbox.unit_dir().join(&timer);
    let t = sd.status(&timer).await.unwrap();
    assert_eq!(t.active_state, "active", "{t:?}\n{first}");
    assert_eq!(t.unit_file_state, "enabled", "{t:?}\n{first}");
    let job = sd.status(&w.unit(JOB)).await.unwrap();
    assert_eq!(job.active_state, "inactive", "{job:?}");
    assert!(
        job.invocation_id.is_empty(),
        "the job ran at deploy: {job:?}"
    );
    // `status` shows the job as its timer: active and enabled, not an inactive oneshot.
    let status = w.run(&["status", "--env", "staging", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let job_status = status["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["services"].as_array().unwrap())
        .find(|s| s["name"] == JOB)
        .unwrap_or_else(|| panic!("no {JOB} in {status}"));
    assert_eq!(
        (&job_status["unit"], &job_status["active_state"]),
        (&serde_json::json!(timer), &serde_json::json!("active")),
        "{job_status}"
    );
    let unit_text = std::fs::read_to_string(w.sandbox.unit_dir().join(w.unit(JOB))).unwrap();
    assert!(unit_text.contains("\nType=oneshot\n"), "{unit_text}");
    assert!(!unit_text.contains("Restart="), "{unit_text}");

    // A new schedule: the timer file changes and the timer restarts, the job still not run.
    let config = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let second = "2098-06-01 03:00:00";
    w.set_config(&config.replace(JOB_SCHEDULE, second));
    let plan = ok(&w.run(&["plan", "--env", "staging"]));
    assert!(
        plan.contains(&format!("-OnCalendar={JOB_SCHEDULE}"))
            && plan.contains(&format!("+OnCalendar={second}")),
        "{plan}"
    );
    let out = ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let timer_text = std::fs::read_to_string(&timer_file).unwrap();
    assert!(
        timer_text.contains(&format!("\nOnCalendar={second}\n")),
        "{timer_text}"
    );
    let t2 = sd.status(&timer).await.unwrap();
    assert_eq!(t2.active_state, "active", "{t2:?}\n{out}");
    assert_ne!(
        t2.invocation_id, t.invocation_id,
        "the timer did not restart\n{out}"
    );
    let job = sd.status(&w.unit(JOB)).await.unwrap();
    assert!(
        job.invocation_id.is_empty(),
        "the job ran at deploy: {job:?}"
    );

    // Timings say what each number is.
    assert!(
        first.contains("ms of checking, at probe") && first.contains("the action took"),
        "{first}"
    );

    // `status` asks each service the way its readiness says: a TCP connection, the exec
    // command, and for notify and none the unit's state (for the job, its timer waiting
    // between runs); `--check` passes.
    let out = w.run(&["status", "--env", "staging", "--check"]);
    let text = ok(&out);
    assert!(
        text.contains("6 services: 6 healthy, 0 unhealthy"),
        "{text}"
    );
    let out = w.run(&["status", "--env", "staging", "--format", "json"]);
    ok(&out);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let service = |st: &serde_json::Value, name: &str| {
        st["phases"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["services"].as_array().unwrap().clone())
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {st:#}"))
    };
    let grpc_probe = service(&st, "kinds-grpc");
    assert_eq!(
        grpc_probe["readiness"]["url"],
        format!("tcp://127.0.0.1:{grpc}")
    );
    assert_eq!(grpc_probe["liveness"]["ok"], true, "{grpc_probe:#}");
    assert!(
        service(&st, "kinds-probed")["readiness"]["url"]
            .as_str()
            .unwrap()
            .contains(&probed.to_string()),
        "{st:#}"
    );
    // A stopped worker fails the check, named, and the others stay healthy.
    sd.stop(&w.unit("kinds-worker")).await.unwrap();
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), moorline::exit::UNHEALTHY);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("6 services: 5 healthy, 1 unhealthy")
            && text.contains("not active and running"),
        "{text}"
    );
    sd.start(&w.unit("kinds-worker")).await.unwrap();
    ok(&w.run(&["status", "--env", "staging", "--check"]));

    // A crash on start: the exit status, the restarts and the unit's own words, as text and
    // as the JSON event's `unit`. The same deploy changes the job's schedule: the rollback
    // puts its timer file back.
    let config = std::fs::read_to_string(&w.fx.config_path).unwrap();
    w.set_config(&config.replace(second, "2097-06-01 03:00:00"));
    w.commit(
        "main",
        "the worker crashes",
        &[behaviour("kinds-worker", "crash", true.into())],
    );
    let (stdout, _, took) = failing_apply(&w, true);
    assert!(took < support::explained(), "took {took:?}\n{stdout}");
    let failed: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "FAILED")
        .collect();
    let worker = failed
        .iter()
        .find(|e| e["unit"]["name"] == w.unit("kinds-worker"))
        .unwrap_or_else(|| panic!("no FAILED event of the worker's unit:\n{stdout}"));
    assert_eq!(
        worker["unit"]["exit"]["exec_main_code"], "exited",
        "{worker}"
    );
    assert_eq!(worker["unit"]["exit"]["exec_main_status"], 3, "{worker}");
    let detail = worker["detail"].as_str().unwrap();
    assert!(detail.contains("exited with status 3"), "{detail}");
    assert!(
        detail.contains("kinds: crashing on start (behaviour.json)"),
        "{detail}"
    );
    assert_eq!(std::fs::read_to_string(&timer_file).unwrap(), timer_text);
    let t3 = sd.status(&timer).await.unwrap();
    assert_eq!(t3.active_state, "active", "{t3:?}\n{stdout}");

    // The wrong port: named within seconds, not after the ready-timeout.
    w.commit(
        "main",
        "the worker is healed, the gRPC service listens elsewhere",
        &[
            Edit::heal("kinds-worker"),
            behaviour("kinds-grpc", "port_offset", 5.into()),
        ],
    );
    let (_, err, took) = failing_apply(&w, false);
    assert!(took < support::explained(), "took {took:?}\n{err}");
    assert!(
        err.contains(&format!(
            "listens on port {}, not on its configured port {grpc}",
            grpc + 5
        )),
        "{err}"
    );

    // Never ready: the notify service never sends READY=1, and its start job times out.
    w.commit(
        "main",
        "the gRPC service is healed, the notify one never gets ready",
        &[
            Edit::heal("kinds-grpc"),
            behaviour("kinds-notify", "never_ready", true.into()),
        ],
    );
    let (_, err, _) = failing_apply(&w, false);
    assert!(err.contains("FAILED restart:kinds-notify"), "{err}");
    assert!(err.contains("result timeout"), "{err}");
    assert!(err.contains("notify: up"), "{err}");

    // After each rollback every service runs again.
    for s in KINDS.iter().copied().chain(["svc-0001"]) {
        let st = sd.status(&w.unit(s)).await.unwrap();
        assert_eq!(st.active_state, "active", "{s}: {st:?}");
    }
    let units: Vec<String> = KINDS
        .iter()
        .copied()
        .chain(["svc-0001"])
        .map(|s| w.unit(s))
        .collect();
    for u in units.iter().chain([&timer]) {
        let _ = sd.stop(u).await;
    }
}
