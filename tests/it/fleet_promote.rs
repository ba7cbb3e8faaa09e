//! `promote-from` across hosts: production (a fleet) runs only what every host of staging (a
//! fleet too) ran healthy for `min-healthy`. The controller (this machine) reads the staging
//! hosts' deploy history over ssh; one world of simulated hosts (`moorline::testkit::hosts`):
//! staging on host1 and host2, production on host3.

use std::process::Output;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::testkit::hosts::Fleet;

use crate::support;

struct World {
    _dir: tempfile::TempDir,
    hosts: Fleet,
    fx: Fixture,
    ctrl: std::path::PathBuf,
}

async fn world() -> Option<World> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let hosts = support::fleet(&dir.path().join("hosts"), 3).await?;
    let mut opts = FixtureOptions::new(hosts.root_path());
    opts.services = Some(2);
    opts.port_base = Some(24_600);
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap()
        .replacen(
            "    branch \"main\"\n",
            "    branch \"main\"\n    host \"host1\"\n    host \"host2\"\n    rollout { batches \"100%\"; }\n",
            1,
        )
        .replacen(
            "    branch \"production\"\n",
            "    branch \"production\"\n    host \"host3\"\n    promote-from \"staging\" min-healthy=\"1h\"\n",
            1,
        );
    fx.commit_config("two fleets, production promoted from staging", &text)
        .unwrap();
    let ctrl = dir.path().join("ctrl");
    Some(World {
        _dir: dir,
        hosts,
        fx,
        ctrl,
    })
}

impl World {
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
            .args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(["--state-dir", self.ctrl.to_str().unwrap()])
            .args(["--ssh-config", self.hosts.ssh_config().to_str().unwrap()])
            .args(["--systemd", "user"])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .env_remove("MOORLINE_HOST")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// The fleet plan of production toward `to`, as JSON.
    fn plan(&self, to: &str, more: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "plan",
            "--env",
            "production",
            "--to",
            to,
            "--format",
            "json",
        ];
        args.extend_from_slice(more);
        let out = self.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Host `i`'s state of `env` (0-based), read over ssh; `Null` when it has none.
    fn state(&self, i: usize, env: &str) -> serde_json::Value {
        let path = format!("\"$XDG_STATE_HOME/moorline/pakashop/{env}/state.json\"");
        let out = self
            .hosts
            .run(i, &["sh", "-c", &format!("cat {path} 2>/dev/null")])
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Moves host `i`'s staging deploys back to 2001, as if they had run for years: the state
    /// time min-healthy is measured from, without waiting an hour.
    fn age_staging(&self, i: usize) {
        let script = "sed -i -E 's/\"at\": [0-9]+/\"at\": 1000000000/' \
                      \"$XDG_STATE_HOME/moorline/pakashop/staging/state.json\"";
        let out = self.hosts.run(i, &["sh", "-c", script]).unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn summaries(plan: &serde_json::Value) -> Vec<String> {
    plan["promotion"]["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"))
        .iter()
        .map(|h| h["summary"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_runs_only_what_every_staging_host_ran_healthy_for_min_healthy() {
    let Some(w) = world().await else {
        return;
    };
    let a =
        w.fx.commit("main", "svc-0001 v2", &[Edit::touch_service("svc-0001")])
            .unwrap();
    let short = &a[..12];

    // Staging never ran A: every staging host says so, and apply refuses before any host moves.
    let p = w.plan(&a, &[]);
    assert_eq!(p["promotion"]["source"], "staging", "{p}");
    assert_eq!(p["promotion"]["min_healthy_secs"], 3600);
    assert_eq!(p["promotion"]["healthy"], false);
    assert_eq!(
        summaries(&p),
        ["host1", "host2"].map(|h| format!(
            "staging host {h} never ran {short} (nothing is recorded as deployed there)"
        ))
    );
    // The host's own plan leaves the check to the controller, and says so.
    let host_plan = &p["hosts"][0]["plan"];
    assert!(host_plan["promotion"].is_null(), "{host_plan}");
    assert!(
        host_plan["notes"]
            .to_string()
            .contains("the fleet controller checks"),
        "{host_plan}"
    );
    let out = w.run(&["apply", "--env", "production", "--to", &a, "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moorline::apply::not_promoted"), "{err}");
    assert!(
        err.contains(&format!("staging host host2 never ran {short}")),
        "{err}"
    );
    assert!(w.state(2, "production").is_null(), "nothing applied");

    // Staging runs A on both hosts: healthy, but for less than min-healthy (1h).
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let p = w.plan(&a, &[]);
    assert_eq!(p["promotion"]["healthy"], false, "{p}");
    for s in summaries(&p) {
        assert!(
            s.contains("less than min-healthy 1h: it counts from "),
            "{s}"
        );
    }
    assert_eq!(p["promotion"]["hosts"][0]["ran"]["revision"], a.as_str());

    // An hour (and more) later on both staging hosts: it counts.
    w.age_staging(0);
    w.age_staging(1);
    let p = w.plan(&a, &[]);
    assert_eq!(p["promotion"]["healthy"], true, "{p}");
    for s in summaries(&p) {
        assert!(
            s.ends_with("healthy: deployed there 2001-09-09T01:46:40Z and still live"),
            "{s}"
        );
    }
    let out = w.run(&["plan", "--env", "production", "--to", &a]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Promotion (promote-from staging, min-healthy 1h, read from its hosts):"),
        "{text}"
    );
    assert!(
        text.contains(&format!("every host of staging ran {short} as asked")),
        "{text}"
    );

    // A staging host that cannot be reached proves nothing: refused, saying why; the skip
    // is shown.
    w.hosts.link_down(1).unwrap();
    let out = w.run(&["apply", "--env", "production", "--to", &a, "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(err.contains("moorline::apply::not_promoted"), "{err}");
    assert!(
        err.contains(&format!(
            "staging host host2 never ran {short} as far as can be told: host host2"
        )),
        "{err}"
    );
    assert!(err.contains("unreachable"), "{err}");
    let p = w.plan(&a, &["--skip-promotion-check"]);
    assert_eq!(p["promotion"]["skipped"], true, "{p}");
    assert_eq!(p["promotion"]["hosts"][0]["healthy"], true, "{p}");
    assert!(p["promotion"]["hosts"][1]["unavailable"].is_string(), "{p}");
    w.hosts.link_up(1).unwrap();
    assert!(w.state(2, "production").is_null(), "nothing applied");

    // Both back: production deploys A.
    let out = w.run(&["apply", "--env", "production", "--to", &a, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(w.state(2, "production")["revision"], a.as_str());
}
