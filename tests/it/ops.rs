//! `moorline status`, `start`, `stop`, `enable`, `disable` and `logs` on the shared private
//! systemd manager, after a real `apply` of the 19 fixture services.

use std::time::{Duration, Instant};

use crate::deploy::{World, code, ok};

fn deployed(prefix: &str, port_base: u16) -> Option<World> {
    let w = World::new(prefix, port_base)?;
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    Some(w)
}

fn status_json(w: &World) -> serde_json::Value {
    let out = w.run(&["status", "--env", "staging", "--format", "json"]);
    let text = ok(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["services"].as_array().unwrap())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status:#}"))
}

fn drift_kinds(s: &serde_json::Value) -> Vec<String> {
    s["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_healthy_then_stopped_by_hand_then_unit_edited_by_hand() {
    let Some(w) = deployed("o1", 23000) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();

    // Healthy: every service active, live, ready, no drift; --check says 0.
    let started = Instant::now();
    let out = w.run(&["status", "--env", "staging", "--check"]);
    let elapsed = started.elapsed();
    let text = ok(&out);
    assert!(
        elapsed < Duration::from_secs(2),
        "status took {elapsed:?}\n{text}"
    );
    assert!(
        text.contains("19 services: 19 healthy, 0 unhealthy, 0 drifted"),
        "{text}"
    );
    assert!(text.contains("phase core"), "{text}");
    let st = status_json(&w);
    assert_eq!(st["format_version"], 1);
    assert_eq!(st["ok"], true, "{st:#}");
    let main = w.fx.head("main").unwrap();
    for s in &w.fx.services {
        let j = service(&st, &s.name);
        assert_eq!(j["active_state"], "active", "{j:#}");
        assert_eq!(j["readiness"]["ok"], true, "{j:#}");
        assert_eq!(j["liveness"]["ok"], true, "{j:#}");
        assert_eq!(j["release"]["revision"], main.as_str(), "{j:#}");
        assert!(j["since"].is_string(), "{j:#}");
        assert!(drift_kinds(j).is_empty(), "{j:#}");
    }

    // A service stopped by hand: inactive, and --check fails with the documented code.
    sd.stop(&w.unit("search")).await.unwrap();
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), moorline::exit::UNHEALTHY);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("search: unit is inactive"), "{text}");
    let st = status_json(&w);
    assert_eq!(st["ok"], false);
    let search = service(&st, "search");
    assert_eq!(search["active_state"], "inactive");
    assert_eq!(search["healthy"], false);
    assert_eq!(search["readiness"]["ok"], false);
    assert_eq!(drift_kinds(search), vec!["not-active"]);
    assert_eq!(service(&st, "backend")["healthy"], true);
    sd.start(&w.unit("search")).await.unwrap();

    // A unit file edited by hand: drift for that unit only.
    let path = w.sandbox.unit_dir().join(w.unit("coupon"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("# tuned by hand\n");
    std::fs::write(&path, text).unwrap();
    assert!(
        moorline::health::wait_ready(
            &format!(
                "http://127.0.0.1:{}/health/ready",
                w.fx.service("search").unwrap().port
            ),
            Duration::from_secs(10),
            || async { Ok(()) },
        )
        .await
        .is_ok()
    );
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), moorline::exit::UNHEALTHY);
    let st = status_json(&w);
    assert_eq!(
        drift_kinds(service(&st, "coupon")),
        vec!["unit-file-edited"]
    );
    for s in w.fx.services.iter().filter(|s| s.name != "coupon") {
        assert!(drift_kinds(service(&st, &s.name)).is_empty(), "{}", s.name);
    }
    assert_eq!(st["summary"]["drifted"], 1);

    w.stop_all(&sd).await;
}
