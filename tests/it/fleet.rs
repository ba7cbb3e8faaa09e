//! Fleet mode end to end: a controller (this machine) plans and rolls out an environment over
//! simulated hosts (`moorline::testkit::hosts`), each with its own sshd, network namespace and
//! private systemd, through the real `ssh`. Every test ends by reading each host's own
//! state.json over ssh: one release per host, named by that host's state.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Output;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::testkit::hosts::Fleet;

use crate::support;

struct World {
    dir: tempfile::TempDir,
    hosts: Fleet,
    fx: Fixture,
    /// The controller's state directory (the fleet journal, its lock, ssh sockets).
    ctrl: PathBuf,
}

/// `k` hosts, a two-service fixture whose `staging` environment deploys to them with
/// `rollout` (KDL children). With `edge`, the last host alone runs `svc-0002` (role `edge`);
/// the others run only `svc-0001`.
async fn world(k: usize, rollout: &str, edge: bool) -> Option<World> {
    world_with(k, rollout, edge, "").await
}

/// [`world`] with more KDL (`extra`) in the environment; `{root}` in it is the hosts' common
/// root path.
async fn world_with(k: usize, rollout: &str, edge: bool, extra: &str) -> Option<World> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let hosts = support::fleet(&dir.path().join("hosts"), k).await?;
    let mut opts = FixtureOptions::new(hosts.root_path());
    opts.services = Some(2);
    opts.port_base = Some(23_400);
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let mut fleet = String::new();
    for i in 1..=k {
        let roles = match (edge, i == k) {
            (false, _) => String::new(),
            (true, true) => " { roles \"edge\"; }".to_owned(),
            (true, false) => " { roles \"main\"; }".to_owned(),
        };
        let _ = writeln!(fleet, "    host \"host{i}\"{roles}");
    }
    let _ = writeln!(fleet, "    rollout {{ {rollout} }}");
    fleet.push_str(&extra.replace("{root}", hosts.root_path().to_str().unwrap()));
    let text = text.replacen(
        "    branch \"main\"\n",
        &format!("    branch \"main\"\n{fleet}"),
        1,
    );
    let text = if edge {
        let at = text.find("service \"svc-0002\"").unwrap();
        let end = at + text[at..].find(" }\n").unwrap();
        format!("{} ; role \"edge\"{}", &text[..end], &text[end..])
    } else {
        text
    };
    fx.commit_config("fleet hosts", &text).unwrap();
    let ctrl = dir.path().join("ctrl");
    Some(World {
        dir,
        hosts,
        fx,
        ctrl,
    })
}

impl World {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(["--state-dir", self.ctrl.to_str().unwrap()])
            .args(["--ssh-config", self.hosts.ssh_config().to_str().unwrap()])
            .args(["--systemd", "user"])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .env_remove("MOORLINE_HOST")
            .env_remove("MOORLINE_TEST_CRASH_AFTER")
            .stdin(std::process::Stdio::null());
        c
    }

    /// Runs moorline on the controller; after a fleet apply, resume or rollback that
    /// succeeded, checks what must hold on every host: each service state.json names is
    /// active and ready (`status --check`), and after a rollout, planning the revision the
    /// hosts now run finds nothing to do on any host.
    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        let covered = matches!(args.first(), Some(&("apply" | "rollback")))
            && !args.contains(&"--skip-unreachable");
        if covered && out.status.success() {
            let context = format!("after `moorline {}`", args.join(" "));
            let status = self
                .cmd(&["status", "--env", "staging", "--check"])
                .output()
                .unwrap();
            assert_eq!(code(&status), Some(0), "{context}: {}", show(&status));
            // Idempotence after a rollout that ran: planning the environment's revision on a
            // host again finds nothing. Not after a rollback: planning the revision rolled
            // back to still plans svc-0001's build and restart there, because a host plans
            // from its environment's revision, which a rollback leaves on the one it rolled
            // back from (noted in issue 19's closing note, left as it is).
            let rolled_out = args[0] == "apply"
                && !String::from_utf8_lossy(&out.stdout).contains("nothing to resume");
            if let Some(to) = self.state(0)["revision"]
                .as_str()
                .map(str::to_owned)
                .filter(|_| rolled_out)
            {
                // (A reviewed plan may deploy a revision that is no descendant of the last.)
                let plan = [
                    "plan",
                    "--env",
                    "staging",
                    "--to",
                    &to,
                    "--allow-non-ancestor",
                    "--format",
                    "json",
                ];
                let again = self.cmd(&plan).output().unwrap();
                assert_eq!(code(&again), Some(0), "{context}: {}", show(&again));
                let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
                for h in again["hosts"].as_array().into_iter().flatten() {
                    let left = crate::support::action_ids(&h["plan"]);
                    assert!(
                        left.is_empty(),
                        "{context}: planning again, {} still has {left:?}",
                        h["name"]
                    );
                }
            }
        }
        out
    }

    /// Host `i`'s own state.json (0-based), read over ssh; `Null` when it has none.
    fn state(&self, i: usize) -> serde_json::Value {
        let out = self
            .hosts
            .run(
                i,
                &[
                    "sh",
                    "-c",
                    "cat \"$XDG_STATE_HOME/moorline/pakashop/staging/state.json\" 2>/dev/null",
                ],
            )
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The release `svc-0001` (which every commit of these tests changes) runs on host `i`,
    /// as the host's state.json says.
    fn revision(&self, i: usize) -> Option<String> {
        self.state(i)["services"]["svc-0001"]["revision"]
            .as_str()
            .map(str::to_owned)
    }

    fn revisions(&self) -> Vec<Option<String>> {
        (0..self.hosts.hosts().len())
            .map(|i| self.revision(i))
            .collect()
    }

    fn head(&self) -> String {
        self.fx.head("main").unwrap()
    }

    fn commit(&self, msg: &str, edits: &[Edit]) -> String {
        self.fx.commit("main", msg, edits).unwrap()
    }

    fn plan_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Deploys the current head everywhere and checks every host runs it.
fn deploy_all(w: &World) -> String {
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let head = w.head();
    assert!(
        w.revisions()
            .iter()
            .all(|r| r.as_deref() == Some(head.as_str())),
        "{:?} vs {head}\n{}",
        w.revisions(),
        show(&out)
    );
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_plan_rolls_out_over_three_hosts_in_batches_and_a_drifted_host_is_refused() {
    let Some(w) = world(3, "batches 1 \"100%\"", false).await else {
        return;
    };
    let saved = w.plan_file("fleet.plan.json");
    let out = w.run(&[
        "plan",
        "--env",
        "staging",
        "--format",
        "json",
        "--out",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["fleet_format_version"], 1);
    let batches: Vec<Vec<String>> = plan["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_value(b["hosts"].clone()).unwrap())
        .collect();
    assert_eq!(batches, vec![vec!["host1"], vec!["host2", "host3"]]);
    assert_eq!(plan["groups"].as_array().unwrap().len(), 1, "{plan}");
    assert!(
        w.revisions().iter().all(Option::is_none),
        "plan is read-only"
    );

    let out = w.run(&["apply", saved.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let first = w.head();
    assert_eq!(w.revisions(), vec![Some(first.clone()); 3]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for h in ["host1", "host2", "host3"] {
        assert!(
            stderr.contains(&format!("[{h}]")),
            "events are prefixed: {stderr}"
        );
    }
    // host1 (the first batch) finished before host2 (the second) started.
    let h1_done = stderr.find("[host1] apply: succeeded").unwrap();
    let h2_first = stderr.find("[host2]").unwrap();
    assert!(h1_done < h2_first, "{stderr}");

    // A new commit is planned; then host2's unit file is edited by hand.
    w.commit("touch svc-0001", &[Edit::touch_service("svc-0001")]);
    let out = w.run(&["plan", "--env", "staging", "--out", saved.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let drift = w
        .hosts
        .run(
            1,
            &[
                "sh",
                "-c",
                "echo '# edited by hand' >> \"$XDG_CONFIG_HOME/systemd/user/pakashop-svc-0001.service\"",
            ],
        )
        .unwrap();
    assert!(drift.status.success());
    let out = w.run(&["apply", saved.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("moorline::fleet::stale_plan"), "{stderr}");
    assert!(stderr.contains("host host2 moved"), "{stderr}");
    assert!(!stderr.contains("host host1 moved"), "{stderr}");
    assert_eq!(w.revisions(), vec![Some(first); 3], "nothing was applied");

    // Status over the fleet names every host.
    let out = w.run(&["status", "--env", "staging"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for h in ["host1", "host2", "host3"] {
        assert!(stdout.contains(&format!("=== {h} ===")), "{}", show(&out));
    }

    // A commit that touches no service: every host records it as deployed, restarting nothing,
    // so no host stays behind its branch.
    deploy_all(&w);
    w.commit(
        "docs only",
        &[Edit::Write {
            path: "docs/NOTES.md".into(),
            contents: "notes\n".into(),
        }],
    );
    let before = w.revisions();
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    // Each host's deployed revision is the commit; its services keep their releases.
    for i in 0..3 {
        assert_eq!(w.state(i)["revision"], w.head().as_str(), "{}", show(&out));
    }
    assert_eq!(w.revisions(), before, "no service was rebuilt");
    let said = show(&out);
    assert!(
        said.contains("recorded") && !said.contains("restart:svc"),
        "{said}"
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert!(
        show(&out).contains("nothing to apply: every host of staging is up to date"),
        "{}",
        show(&out)
    );
}

/// `apply --reviewed FLEETPLAN`: a fleet plan reviewed in a pull request, applied after the
/// merge (another commit, `--to main`) as every host plans it now, when each host's plan does
/// what the reviewed one does; refused before touching any host, naming the hosts, when not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_fleet_plan_applies_a_merge_that_does_the_same_and_refuses_one_that_does_not() {
    let Some(w) = world(2, "batches \"100%\"", false).await else {
        return;
    };
    let first = deploy_all(&w);
    w.commit("touch svc-0001", &[Edit::touch_service("svc-0001")]);
    let reviewed = w.plan_file("reviewed.json");
    let out = w.run(&[
        "plan",
        "--env",
        "staging",
        "--out",
        reviewed.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    // The merge commit: the same change, another commit.
    let merged = w.commit("merge: touch svc-0001", &[Edit::touch_service("svc-0001")]);
    let args = [
        "apply",
        "--env",
        "staging",
        "--reviewed",
        reviewed.to_str().unwrap(),
        "--to",
        "main",
        "--yes",
    ];
    let out = w.run(&args);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(w.revisions(), vec![Some(merged.clone()); 2]);
    assert_ne!(merged, first);

    // A later commit that changes another service does something else on every host.
    w.commit("touch svc-0002", &[Edit::touch_service("svc-0002")]);
    let out = w.run(&args);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("moorline::fleet::not_as_reviewed"),
        "{stderr}"
    );
    assert!(stderr.contains("host host1:"), "{stderr}");
    assert!(stderr.contains("host host2:"), "{stderr}");
    assert_eq!(
        w.revisions(),
        vec![Some(merged.clone()); 2],
        "nothing was applied"
    );

    // A plan made without the hosts (`--from`, as a pull request's runner makes it) is
    // applied by --reviewed when the hosts' own plans do the same, never by `apply FILE`.
    let offline = w.plan_file("offline.json");
    let out = w.run(&[
        "plan",
        "--env",
        "staging",
        "--from",
        &merged,
        "--to",
        "main",
        "--out",
        offline.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let out = w.run(&["apply", offline.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moorline::fleet::stale_plan"),
        "{}",
        show(&out)
    );
    assert_eq!(
        w.revisions(),
        vec![Some(merged.clone()); 2],
        "nothing was applied"
    );
    let out = w.run(&[
        "apply",
        "--env",
        "staging",
        "--reviewed",
        offline.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let head = w.head();
    for i in 0..2 {
        let st = w.state(i);
        assert_eq!(st["revision"], head.as_str(), "{}", show(&out));
        assert_eq!(st["services"]["svc-0002"]["revision"], head.as_str());
    }
}

/// With `max-fail 1` the canary's one failure is within the budget, yet the batches must not
/// start: they start only after a healthy canary (docs/config.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_touches_no_other_host() {
    let Some(w) = world(3, "canary 1; max-fail 1; batches \"100%\"", false).await else {
        return;
    };
    let first = deploy_all(&w);
    let before: Vec<_> = (1..3).map(|i| w.state(i)).collect();
    w.commit("svc-0001 crashes", &[Edit::crash_on_start("svc-0001")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    assert_eq!(w.revisions(), vec![Some(first); 3]);
    let after: Vec<_> = (1..3).map(|i| w.state(i)).collect();
    assert_eq!(before, after, "host2 and host3 were not touched");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[host1] apply: rolled-back"), "{stderr}");
    assert!(!stderr.contains("[host2] apply"), "{stderr}");
    assert!(
        stderr.contains("the canary is not healthy (host1 rolled-back)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_second_batch_rolls_the_whole_fleet_back() {
    let Some(w) = world(3, "batches 1 \"100%\"", true).await else {
        return;
    };
    let first = deploy_all(&w);
    w.commit(
        "svc-0001 changes, svc-0002 (host3 only) crashes",
        &[
            Edit::touch_service("svc-0001"),
            Edit::crash_on_start("svc-0002"),
        ],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[host3] apply: rolled-back"), "{stderr}");
    assert!(stderr.contains("[host1] rolled back"), "{stderr}");
    assert!(stderr.contains("[host2] rolled back"), "{stderr}");
    // Each host's rollback plan is shown as a plan is, not as JSON (which only `--format
    // json` asks for): it was some 900 lines of JSON per host.
    assert!(
        stderr.contains("[host1] Rollback plan for pakashop/staging"),
        "{stderr}"
    );
    let raw_json = stderr
        .lines()
        .filter(|l| l.starts_with("[host1] {") || l.contains("\"format_version\""))
        .count();
    assert_eq!(raw_json, 0, "{stderr}");
    let host1 = stderr.lines().filter(|l| l.starts_with("[host1]")).count();
    assert!(host1 < 150, "{host1} lines from host1:\n{stderr}");
    assert_eq!(w.revisions(), vec![Some(first.clone()); 3], "{stderr}");
    // Each host's `current` links point at the first release again.
    for i in 0..3 {
        let link = w.hosts.host(i).root_dir().join("staging/svc-0001/current");
        let target = std::fs::read_link(&link).unwrap();
        assert_eq!(
            target.file_name().unwrap().to_string_lossy(),
            first,
            "host{}",
            i + 1
        );
    }
}

/// Every `first_deploy` value anywhere in `v`, whether true.
fn first_deploys(v: &serde_json::Value, out: &mut Vec<bool>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "first_deploy" {
                    out.push(v == &serde_json::Value::Bool(true));
                } else {
                    first_deploys(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| first_deploys(v, out)),
        _ => {}
    }
}

/// A first rollout whose second batch fails: the hosts of the first batch ran their first
/// deploy, so their own `rollback` takes them back to nothing deployed (stopped, `current` and
/// the unit files gone); the fleet ends exit 3 with every host's state saying nothing is
/// deployed, so the next plan is a first deploy everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_rollout_takes_every_host_back_to_nothing_deployed() {
    let Some(w) = world(3, "batches 1 \"100%\"", true).await else {
        return;
    };
    w.commit(
        "svc-0002 (host3 only) crashes",
        &[Edit::crash_on_start("svc-0002")],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[host3] apply: rolled-back"), "{stderr}");
    assert!(stderr.contains("[host1] rolled back"), "{stderr}");
    for i in 0..3 {
        let st = w.state(i);
        assert_eq!(
            st["revision"],
            serde_json::Value::Null,
            "host{}: {st:#}",
            i + 1
        );
        assert!(
            st["services"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty),
            "host{}: {st:#}",
            i + 1
        );
        let root = w.hosts.host(i).root_dir().join("staging");
        for svc in ["svc-0001", "svc-0002"] {
            assert!(
                std::fs::symlink_metadata(root.join(svc).join("current")).is_err(),
                "host{} {svc}",
                i + 1
            );
            let unit = format!("pakashop-{svc}.service");
            let active = w
                .hosts
                .run(i, &["systemctl", "--user", "is-active", &unit])
                .unwrap();
            assert_ne!(
                String::from_utf8_lossy(&active.stdout).trim(),
                "active",
                "host{} {unit}",
                i + 1
            );
        }
    }
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    // Every host's plan in the fleet plan is a first deploy again.
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen = Vec::new();
    first_deploys(&plan, &mut seen);
    assert!(
        seen.len() >= 3 && seen.iter().all(|f| *f),
        "{seen:?}\n{}",
        show(&out)
    );
}

/// Commits the configuration with `service` built on each host (`build-on "host"`), not once
/// on the controller.
fn build_on_hosts(w: &World, service: &str) {
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let at = text.find(&format!("service \"{service}\"")).unwrap();
    let end = at + text[at..].find(" }\n").unwrap();
    let text = format!("{}; build-on \"host\"{}", &text[..end], &text[end..]);
    w.fx.commit_config(&format!("{service} builds on the hosts"), &text)
        .unwrap();
}

/// Writes host `i`'s `svc-0002` `behaviour.json` in the release its `current` names: what that
/// release does the next time it starts (the test's stand-in for a release broken on a host).
fn set_live_behaviour(w: &World, i: usize, crash: bool) {
    // `current` is an absolute link into the hosts' common root path, which only the host
    // itself sees as its own: followed here by its name.
    let service = w.hosts.host(i).root_dir().join("staging/svc-0002");
    let release = std::fs::read_link(service.join("current")).unwrap();
    let path = service
        .join("releases")
        .join(release.file_name().unwrap())
        .join("behaviour.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut v = v.as_object().unwrap().clone();
    v.insert("crash".into(), crash.into());
    std::fs::write(&path, serde_json::Value::Object(v).to_string()).unwrap();
}

/// `max-fail 1`: a host that fails within the budget makes the rollout exit 6, not 0; a host
/// whose own rollback cannot finish is left needing attention, named with the command that
/// settles it (not the unknown host's `apply --resume`), shown as such by `status`, counted as
/// needing attention (not merely `failed`) by later rollouts, and settled from the controller
/// with `rollback --on HOST`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_left_needing_attention_is_named_shown_and_settled_from_the_controller() {
    let Some(w) = world(3, "max-fail 1; batches \"100%\"", true).await else {
        return;
    };
    // svc-0002's live release is edited on host3 below (`set_live_behaviour`): built there,
    // it is no artifact whose files the edit would make drift.
    build_on_hosts(&w, "svc-0002");
    let first = deploy_all(&w);

    // Only host3 runs svc-0002: it fails there and rolls itself back, within max-fail.
    w.commit(
        "svc-0001 changes, svc-0002 crashes",
        &[
            Edit::touch_service("svc-0001"),
            Edit::crash_on_start("svc-0002"),
        ],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(6), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host3: rolled-back"), "{stderr}");
    assert!(stderr.contains("did not succeed on: host3"), "{stderr}");
    let second = w.head();
    assert_eq!(
        w.revisions(),
        vec![
            Some(second.clone()),
            Some(second.clone()),
            Some(first.clone())
        ],
        "host1 and host2 went ahead, host3 rolled its whole apply back"
    );
    assert_ne!(first, second);

    // host3's previous svc-0002 release now crashes too: its rollback cannot finish.
    set_live_behaviour(&w, 2, true);
    w.commit("svc-0001 changes", &[Edit::touch_service("svc-0001")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(4), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host3: needs-attention"), "{stderr}");
    assert!(stderr.contains("needs attention on: host3"), "{stderr}");
    assert!(
        stderr.contains("`moorline rollback --env staging --on host3`"),
        "{stderr}"
    );
    assert!(!stderr.contains("lost its connection"), "{stderr}");
    assert!(
        !stderr.contains("apply --resume --env staging`"),
        "{stderr}"
    );

    // `status` shows the stuck apply; `--check` fails on it.
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), Some(5), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let host3 = &stdout[stdout.find("=== host3 ===").unwrap()..];
    assert!(host3.contains("unfinished-apply: apply "), "{stdout}");
    assert!(
        !stdout[..stdout.find("=== host3 ===").unwrap()].contains("unfinished-apply"),
        "{stdout}"
    );

    // A later rollout: host3 refuses (its apply is unfinished), which needs attention, not 0.
    w.commit("svc-0001 changes again", &[Edit::touch_service("svc-0001")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(4), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host3: needs-attention"), "{stderr}");
    assert!(stderr.contains("moorline::apply::unfinished"), "{stderr}");

    // `--on` names a host of the fleet, and settles that host alone.
    let out = w.run(&["rollback", "--env", "staging", "--on", "nosuch", "--yes"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moorline::fleet::unknown_host"),
        "{}",
        show(&out)
    );
    let before: Vec<_> = (0..2).map(|i| w.state(i)).collect();
    set_live_behaviour(&w, 2, false);
    let out = w.run(&["rollback", "--env", "staging", "--on", "host3", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(
        (0..2).map(|i| w.state(i)).collect::<Vec<_>>(),
        before,
        "host1 and host2 were not touched"
    );
    let out = w.run(&["status", "--env", "staging"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("unfinished-apply"),
        "{}",
        show(&out)
    );

    // Settled, host3 takes the next rollout like any host. (svc-0002 also changes: healed
    // alone, its tree would be that of the release edited by hand above; and svc-0001, so
    // that every host's state names the new revision.)
    w.commit(
        "svc-0002 heals",
        &[
            Edit::heal("svc-0002"),
            Edit::touch_service("svc-0002"),
            Edit::touch_service("svc-0001"),
        ],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(w.revisions(), vec![Some(w.head()); 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_refuses_the_apply_and_a_changed_host_key_is_named() {
    let Some(w) = world(3, "batches \"100%\"", false).await else {
        return;
    };
    w.hosts.rekey(1).unwrap();
    let out = w.run(&["plan", "--env", "staging"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("moorline::fleet::host_key"), "{stderr}");
    assert!(stderr.contains("host2"), "{stderr}");
    // The help names the key ssh checked: `host2` is an ssh alias, known_hosts holds its
    // address (`ssh -G` resolves it), in the known_hosts file its configuration names.
    let flat = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    let forget = format!("ssh-keygen -R '{}'", w.hosts.host(1).address());
    assert!(flat.contains(&forget), "{forget}: {stderr}");
    assert!(flat.contains("known_hosts'"), "{stderr}");
    w.hosts.trust_host_keys().unwrap();

    w.hosts.link_down(2).unwrap();
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains("host3"), "{stderr}");
    assert_eq!(w.revisions(), vec![None; 3], "nothing was applied");

    // Skipped, it counts against max-fail (0 here): no host starts.
    let out = w.run(&["apply", "--env", "staging", "--yes", "--skip-unreachable"]);
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host3: unreachable"), "{stderr}");
    assert!(stderr.contains("exceed max-fail 0"), "{stderr}");
    w.hosts.link_up(2).unwrap();
    assert_eq!(w.revisions(), vec![None; 3], "nothing was applied");
}

/// The controller is SIGKILLed right after its Nth fleet journal record, then the rollout is
/// finished by `apply --resume` (or undone by `rollback`). Records of a 3-host rollout in
/// batches 1, 100%: 1 begin, 2 batch, 3 host1 started, 4 host1 finished, 5 batch, 6-7 hosts
/// started, 8-9 hosts finished, 10 end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_is_resumed_or_rolled_back_from_its_fleet_journal() {
    let Some(w) = world(3, "batches 1 \"100%\"", false).await else {
        return;
    };
    let mut previous = deploy_all(&w);
    for (n, undo) in (1..=10)
        .map(|n| (n, false))
        .chain([(4, true), (7, true), (9, true)])
    {
        let head = w.commit(&format!("change {n}"), &[Edit::touch_service("svc-0001")]);
        let out = w
            .cmd(&["apply", "--env", "staging", "--yes"])
            .env("MOORLINE_TEST_FLEET_CRASH_AFTER", n.to_string())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "killed at record {n}: {}",
            show(&out)
        );
        let out = if undo {
            w.run(&["rollback", "--env", "staging", "--yes"])
        } else {
            w.run(&["apply", "--resume", "--env", "staging", "--yes"])
        };
        assert_eq!(code(&out), Some(0), "after record {n}: {}", show(&out));
        let want = if undo { previous.clone() } else { head.clone() };
        assert_eq!(
            w.revisions(),
            vec![Some(want.clone()); 3],
            "after record {n}: {}",
            show(&out)
        );
        previous = want;
        // Nothing is left unfinished: a second resume has nothing to do.
        let out = w.run(&["apply", "--resume", "--env", "staging"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("nothing to resume"),
            "{}",
            show(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_drops_mid_apply_is_unknown_until_its_own_journal_settles_it() {
    use std::io::BufRead;
    let Some(w) = world(3, "batches \"100%\"", false).await else {
        return;
    };
    let first = deploy_all(&w);
    w.commit(
        "svc-0001 is slow to get ready",
        &[Edit::slow_readiness("svc-0001", 6000)],
    );
    let mut child = w
        .cmd(&["apply", "--env", "staging", "--yes"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if !sent && line.starts_with("[host3]") && line.contains("health:svc-0001") {
                tx.send(()).unwrap();
                sent = true;
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(moorline::testkit::deadline::wait())
        .expect("host3 reached its health check");
    w.hosts.link_down(2).unwrap();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("host3: unknown"), "{stderr}");
    assert!(stderr.contains("needs attention on: host3"), "{stderr}");
    assert_eq!(w.revision(0), Some(first.clone()), "{stderr}");
    assert_eq!(w.revision(1), Some(first.clone()), "{stderr}");

    // Back on the network, host3's own journal settles it and the fleet rollback finishes.
    w.hosts.link_up(2).unwrap();
    let out = w.run(&["rollback", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(w.revisions(), vec![Some(first); 3], "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hooks_run_around_each_batch_and_status_covers_every_host() {
    let drain = "    drain {\n        \
        before \"host1\" \"/bin/sh\" \"-c\" \"echo $0 $1 $2 >>{root}/drain.log\" \"before\" \"{hosts}\" \"{addresses}\"\n        \
        after \"host1\" \"/bin/sh\" \"-c\" \"echo $0 $1 >>{root}/drain.log\" \"after\" \"{hosts}\"\n    }\n";
    let Some(w) = world_with(3, "batches 1 \"100%\"", false, drain).await else {
        return;
    };
    deploy_all(&w);
    let log = std::fs::read_to_string(w.hosts.host(0).root_dir().join("drain.log")).unwrap();
    assert_eq!(
        log,
        "before host1 host1\nafter host1\nbefore host2,host3 host2,host3\nafter host2,host3\n"
    );
    assert!(
        !w.hosts.host(1).root_dir().join("drain.log").exists(),
        "hooks run on their named host only"
    );

    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let stopped = w
        .hosts
        .run(
            1,
            &["systemctl", "--user", "stop", "pakashop-svc-0001.service"],
        )
        .unwrap();
    assert!(stopped.status.success());
    let out = w.run(&["status", "--env", "staging", "--check", "--format", "json"]);
    assert_eq!(code(&out), Some(5), "{}", show(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["hosts"]["host1"]["exit_code"], 0, "{status}");
    assert_eq!(status["hosts"]["host2"]["exit_code"], 5, "{status}");

    // `restart` over the fleet, on one host: host2's stopped service is back, host3's
    // service is not touched (same main process).
    let main_pid = |i: usize| {
        let out = w
            .hosts
            .run(
                i,
                &[
                    "systemctl",
                    "--user",
                    "show",
                    "-p",
                    "MainPID",
                    "--value",
                    "pakashop-svc-0001.service",
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let host3_pid = main_pid(2);
    let out = w.run(&["restart", "--env", "staging", "--on", "host2", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("=== host2 ==="), "{}", show(&out));
    assert!(!stderr.contains("=== host3 ==="), "{}", show(&out));
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(main_pid(2), host3_pid, "host3 was restarted");
    // Every host's journal, each line under its host's name.
    let out = w.run(&["logs", "--env", "staging", "--lines", "3"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for h in ["host1", "host2", "host3"] {
        assert!(stdout.contains(&format!("[{h}] ")), "{}", show(&out));
    }
    assert!(
        stdout.lines().all(|l| l.starts_with("[host")),
        "{}",
        show(&out)
    );

    // An uncommitted configuration edit is not what the hosts would get.
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    std::fs::write(&w.fx.config_path, format!("{text}// edited\n")).unwrap();
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moorline::fleet::dirty"),
        "{}",
        show(&out)
    );
    // Without --on: every host, one at a time, in order.
    let out = w.run(&["stop", "--env", "staging", "--service", "svc-0001", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |h: &str| stderr.find(&format!("=== {h} ===")).unwrap_or(usize::MAX);
    assert!(
        at("host1") < at("host2") && at("host2") < at("host3") && at("host3") < usize::MAX,
        "{}",
        show(&out)
    );
    for i in 0..3 {
        assert_eq!(main_pid(i), "0", "still running on host{}", i + 1);
    }
    // And started again right after, on every host. (This once failed now and then: the
    // unit started on one host died within a millisecond. Every host's manager put its units
    // in the root cgroup's /app.slice, so a stop on host1 killed host2's new process of the
    // same name; each manager now has a cgroup subtree of its own, src/demo/cgroup.rs.)
    let out = w.run(&[
        "start",
        "--env",
        "staging",
        "--service",
        "svc-0001",
        "--yes",
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    for i in 0..3 {
        assert_ne!(main_pid(i), "0", "not running on host{}", i + 1);
    }
}

/// The fleet plan's text and Markdown, from real host plans (made here, without hosts): hosts
/// grouped by what they do, batches, the rollback, each group's plan once.
#[test]
fn the_fleet_plan_renders_as_text_and_markdown() {
    use moorline::config::{BatchSize, Rollout};
    use moorline::fleet::plan::{HostPlan, assemble};
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(2);
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
        .args(["-c", fx.config_path.to_str().unwrap()])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args([
            "--systemd",
            "user",
            "plan",
            "--env",
            "staging",
            "--format",
            "json",
        ])
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let plan: moorline::plan::Plan = serde_json::from_slice(&out.stdout).unwrap();
    let host = |name: &str, fingerprint: &str, actions: bool| {
        let mut p = plan.clone();
        p.fingerprint = fingerprint.to_owned();
        if !actions {
            p.actions.clear();
        }
        HostPlan {
            name: name.to_owned(),
            address: format!("{name}.internal"),
            user: Some("deploy".to_owned()),
            port: None,
            plan: p,
        }
    };
    let rollout = Rollout {
        canary: 1,
        batches: vec![BatchSize::Percent(50), BatchSize::Percent(100)],
        ..Rollout::default()
    };
    let fleet = assemble(
        "pakashop",
        "staging",
        plan.to.clone(),
        &rollout,
        vec![
            host("app1", &"1".repeat(64), true),
            host("app2", &"2".repeat(64), false),
            host("app3", &"3".repeat(64), true),
        ],
    );
    insta::with_settings!({
        snapshot_path => "snapshots",
        prepend_module_to_snapshot => false,
        filters => vec![
            (r"(/[\w.-]+)*/\.tmp[A-Za-z0-9]+", "[TMP]"),
            (r"\b[0-9a-f]{64}\b", "[SHA256]"),
            (r"\b[0-9a-f]{40}\b", "[SHA]"),
            (r"\b[0-9a-f]{12}\b", "[SHORT]"),
        ],
    }, {
        insta::assert_snapshot!("fleet_plan_text", moorline::fleet::render::text(&fleet, false));
        insta::assert_snapshot!("fleet_plan_markdown", moorline::fleet::render::markdown(&fleet));
    });
}

/// `graph`, which the controller does not run over the hosts, is refused rather than run on
/// the controller's own machine; `--on` must name a host of the fleet (refused before any ssh).
#[test]
fn graph_is_refused_on_the_controller_and_on_names_a_host_of_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(2);
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replacen(
        "    branch \"main\"\n",
        "    branch \"main\"\n    host \"app1\" address=\"192.0.2.1\"\n",
        1,
    );
    fx.commit_config("a fleet", &text).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
            .args(["-c", fx.config_path.to_str().unwrap()])
            .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    for (args, code_in_stderr) in [
        (
            vec!["graph", "--env", "staging"],
            "moorline::fleet::not_on_controller",
        ),
        (
            vec!["restart", "--env", "staging", "--on", "app9", "--yes"],
            "moorline::fleet::unknown_host",
        ),
        (
            vec!["backup", "--env", "staging", "list", "--on", "app9"],
            "moorline::fleet::unknown_host",
        ),
        // An environment without hosts has nothing to be `--on`.
        (
            vec!["stop", "--env", "production", "--on", "app1", "--yes"],
            "moorline::fleet::unknown_host",
        ),
    ] {
        let out = run(&args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(code_in_stderr), "{args:?}: {}", show(&out));
        if args.contains(&"app9") {
            assert!(stderr.contains("app1"), "the hosts are listed: {stderr}");
        }
    }
}

/// Secrets through a fleet: a failing build prints its environment (an inline secret of the
/// environment among it), first where artifacts are built (the controller), then, with
/// `build-on "host"`, on every host. Nothing the controller prints, nothing under its state
/// directory (its build root's logs included), and nothing moorline wrote on a host (outside
/// the checkout of the configuration, which holds the value on purpose) contains the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_printed_on_hosts_reach_nothing_the_controller_prints_or_writes() {
    const SECRET: &str = "fleet-inline-s3cret-7391";
    let env = format!("    env API_KEY=\"{SECRET}\"\n");
    let Some(w) = world_with(2, "batches \"100%\"", false, &env).await else {
        return;
    };
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let failing = "build \"sh\" \"-c\" \"env; echo key=$API_KEY >&2; exit 3\"";
    let edited = text.replace("build \"/usr/bin/python3\" \"build.py\"", failing);
    assert_ne!(edited, text, "no build line replaced");
    w.fx.commit_config("builds print their environment", &edited)
        .unwrap();
    // Built once, on the controller: the plan fails there, saying why without the value.
    let out = w.run(&["plan", "--env", "staging"]);
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    let said = show(&out);
    assert!(said.contains("moorline::artifact::build"), "{said}");
    assert!(!said.contains(SECRET), "{said}");
    let mut written = Vec::new();
    crate::secrets::files(&w.dir.path().join(".moorline-build"), &mut written);
    assert!(
        written
            .iter()
            .any(|p| p.ends_with("logs/svc-0001-build.log")),
        "{written:?}"
    );
    for path in &written {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        assert!(!text.contains(SECRET), "in {}", path.display());
    }
    // Built on each host.
    let mut on_hosts = String::new();
    for line in edited.lines() {
        on_hosts.push_str(line);
        if line.starts_with("service ") {
            on_hosts.truncate(on_hosts.len() - " }".len());
            on_hosts.push_str("; build-on \"host\" }");
        }
        on_hosts.push('\n');
    }
    w.fx.commit_config("build on the hosts", &on_hosts).unwrap();
    let plan_file = w.plan_file("fleet.plan.json");
    let outputs = [
        w.run(&["plan", "--env", "staging"]),
        w.run(&[
            "plan",
            "--env",
            "staging",
            "--format",
            "json",
            "--out",
            plan_file.to_str().unwrap(),
        ]),
        w.run(&["apply", "--env", "staging", "--yes"]),
        w.run(&["apply", "--env", "staging", "--yes", "--format", "json"]),
        w.run(&["status", "--env", "staging", "--format", "json"]),
        w.run(&["logs", "--env", "staging", "--lines", "50"]),
    ];
    let mut printed = String::new();
    for o in &outputs {
        printed.push_str(&String::from_utf8_lossy(&o.stdout));
        printed.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // The builds really ran on the hosts and printed the variable.
    assert_ne!(code(&outputs[2]), Some(0), "{}", show(&outputs[2]));
    assert!(printed.contains("key=(redacted)"), "{printed}");
    assert!(!printed.contains(SECRET), "printed:\n{printed}");

    let mut written = Vec::new();
    crate::secrets::files(&w.ctrl, &mut written);
    assert!(
        written
            .iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("history"))),
        "no fleet journal history in {written:?}"
    );
    for path in &written {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        assert!(!text.contains(SECRET), "in {}", path.display());
    }
    // On each host: its state (journal, history, logs), its releases. The fleet directory's
    // checkout and git objects hold the configuration as committed, value included.
    let root = w.hosts.root_path().to_string_lossy().into_owned();
    for i in 0..2 {
        let out = w
            .hosts
            .run(
                i,
                &[
                    "sh",
                    "-c",
                    "grep -rls --devices=skip --exclude-dir=repo -- \"$1\" \"$XDG_STATE_HOME\" \"$2\"; echo scanned",
                    "sh",
                    SECRET,
                    &root,
                ],
            )
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            listed.trim(),
            "scanned",
            "host{}: the value is in {listed}",
            i + 1
        );
    }
    // The scan does find the value where it is meant to be: the checked-out configuration.
    let out = w
        .hosts
        .run(
            0,
            &[
                "sh",
                "-c",
                "grep -rls -- \"$1\" \"$XDG_STATE_HOME\"",
                "sh",
                SECRET,
            ],
        )
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("/repo/"), "{listed}");
}

/// A `%` in the controller's state directory reaches ssh as a `%`, not as a
/// token (`%h` would be the host, `%C` a hash): the control sockets live
/// in that directory's `fleet/ssh/`, and the plan reaches the hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_in_the_state_directory_is_no_ssh_token() {
    let Some(mut w) = world(2, "canary 1", false).await else {
        return;
    };
    w.ctrl = w.dir.path().join("state %h %C %% \"q\"");
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["hosts"].as_array().map(Vec::len), Some(2), "{plan}");
    assert!(w.ctrl.join("fleet/ssh").is_dir());
    // Nothing appeared beside it under a name ssh made by expanding one (the build root of
    // the artifacts, shared by the project's environments, is moorline's own).
    let mut names: Vec<String> = std::fs::read_dir(w.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".moorline-build", "fx", "hosts", "state %h %C %% \"q\""]
    );
}

/// A fleet rollout runs each host's own apply, so a blue/green service cuts over on every host
/// the same way: each host's plan holds its cutover steps, the fleet counts the service among
/// what each host changes (and rolls back), and the drain hooks around each batch are the
/// fleet's, untouched by what a host's apply does inside the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_plans_the_same_cutover_on_every_host() {
    let drain = "    drain { before \"host1\" \"/bin/true\" \"{hosts}\"; after \"host1\" \"/bin/true\" \"{hosts}\"; }\n";
    let Some(w) = world_with(2, "batches 1", false, drain).await else {
        return;
    };
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let at = text.find("service \"svc-0002\"").unwrap();
    let end = at + text[at..].find(" }\n").unwrap();
    let text = format!(
        "{}; cutover \"blue-green\" {{ slots 23480 23481; upstream \"/etc/nginx/moorline/{{service}}.conf\" }}{}proxy \"nginx\" {{ unit \"nginx.service\"; check \"nginx\" \"-t\" }}\n",
        &text[..end],
        &text[end..]
    );
    w.fx.commit_config("svc-0002 blue-green", &text).unwrap();
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let json = plan.to_string();
    for step in [
        "slot-start:svc-0002",
        "slot-ready:svc-0002",
        "switch-upstream:svc-0002",
        "drain:svc-0002",
        "slot-stop:svc-0002",
    ] {
        assert!(
            json.contains(&format!("\"id\":\"{step}\"")),
            "{step} in {plan:#}"
        );
    }
    assert!(!json.contains("\"id\":\"restart:svc-0002\""), "{plan:#}");
    let rollback = plan["rollback"].to_string();
    assert!(rollback.contains("svc-0002"), "{plan:#}");
}

/// `connections` bounds the hosts the controller talks to at once, in every fan-out: planning
/// (each host prepared, then planned), the rollout's batches, and `rollback` of every host.
/// An `ssh` on the controller's PATH logs when each of its sessions with a host starts and
/// ends; with `connections 1` no two hosts ever have one at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_bounds_the_hosts_talked_to_at_once() {
    let Some(w) = world(3, "batches \"100%\"; connections 1", false).await else {
        return;
    };
    let bin = w.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = w.dir.path().join("ssh.log");
    let real = which_ssh();
    // The host is the word after `--` (moorline's argv ends `-- ADDRESS [COMMAND]`); `-O`
    // commands only talk to the local master socket.
    let wrapper = format!(
        "#!/bin/sh\n\
         case \" $* \" in *' -O '*) exec {real} \"$@\";; esac\n\
         h=; prev=\n\
         for a in \"$@\"; do if [ \"$prev\" = -- ]; then h=$a; break; fi; prev=$a; done\n\
         echo \"start $$ $h $(date +%s%N)\" >> '{log}'\n\
         {real} \"$@\"; rc=$?\n\
         echo \"end $$ $h $(date +%s%N)\" >> '{log}'\n\
         exit $rc\n",
        log = log.display()
    );
    let ssh = bin.join("ssh");
    std::fs::write(&ssh, wrapper).unwrap();
    std::fs::set_permissions(
        &ssh,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| w.cmd(args).env("PATH", &path).output().unwrap();

    let out = run(&["plan", "--env", "staging"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let out = run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    // Every host rolls back its last apply (the first deploy: to nothing), each a session.
    let out = run(&["rollback", "--env", "staging", "--yes"]);
    let text = std::fs::read_to_string(&log).unwrap();
    let (most, hosts) = most_hosts_at_once(&text);
    assert_eq!(
        hosts,
        3,
        "every host was talked to:\n{text}\n{}",
        show(&out)
    );
    assert_eq!(most, 1, "connections 1:\n{text}");
}

fn which_ssh() -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v ssh"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// From `start PID HOST NANOS` / `end PID HOST NANOS` lines: the most hosts with a session at
/// the same time, and how many hosts had one at all.
fn most_hosts_at_once(log: &str) -> (usize, usize) {
    let mut events: Vec<(u128, bool, String, String)> = log
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [kind, pid, host, at] => Some((
                    at.parse().ok()?,
                    *kind == "start",
                    (*pid).to_owned(),
                    (*host).to_owned(),
                )),
                _ => None,
            }
        })
        .collect();
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut open: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut most = 0;
    for (_, start, _, host) in events {
        seen.insert(host.clone());
        let n = open.entry(host).or_default();
        if start {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        most = most.max(open.values().filter(|n| **n > 0).count());
    }
    (most, seen.len())
}

/// Issue 20, build once and ship by content hash: every runtime's build and dependency step
/// append the service's name to `{root}/builds-ran` and `{root}/deps-ran`, so where they ran
/// is on disk. A fleet plan builds each service's artifact once, on the controller (its
/// `{root}` is its build root); the hosts run neither step, install the same artifact ids
/// (each host's `status`), are sent only what their stores lack (a second rollout of a change
/// to both services sends their new releases and manifests, not their unchanged dependency
/// packs), and a file edited by hand on one host is drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_built_once_on_the_controller_and_hosts_get_only_what_they_lack() {
    let Some(w) = world(3, "batches \"100%\"", false).await else {
        return;
    };
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let mut counted = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("    build ") {
            let _ = writeln!(
                counted,
                "    build \"sh\" \"-c\" \"echo {{service}} >>{{root}}/builds-ran; exec \\\"$0\\\" \\\"$@\\\"\" {rest}"
            );
            let _ = writeln!(
                counted,
                "    deps \"sh\" \"-c\" \"echo {{service}} >>{{root}}/deps-ran; mkdir -p vendor; echo {{service}} >vendor/lib.txt\" {{ inputs \"server.py\"; outputs \"vendor\"; }}"
            );
        } else {
            counted.push_str(line);
            counted.push('\n');
        }
    }
    w.fx.commit_config("count builds", &counted).unwrap();
    let ran = |root: &std::path::Path, what: &str| -> Vec<String> {
        std::fs::read_to_string(root.join(what))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let build_root = || {
        // Beside the controller's state directory, named after the build's settings.
        let shared = w.dir.path().join(".moorline-build");
        let roots: Vec<PathBuf> = std::fs::read_dir(&shared)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(roots.len() <= 1, "{roots:?}");
        roots.into_iter().next().unwrap_or(shared)
    };
    let nothing_ran_on_hosts = |w: &World| {
        for h in w.hosts.hosts() {
            let root = h.root_dir().join("staging");
            assert!(
                ran(&root, "builds-ran").is_empty() && ran(&root, "deps-ran").is_empty(),
                "{} built: {:?}",
                h.name(),
                ran(&root, "builds-ran")
            );
        }
    };

    let saved = w.plan_file("artifacts.plan.json");
    let out = w.run(&[
        "plan",
        "--env",
        "staging",
        "--format",
        "json",
        "--out",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: std::collections::BTreeMap<String, String> = plan["artifacts"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"))
        .iter()
        .map(|a| {
            assert_eq!(a["built_on"], "controller", "{a}");
            (
                a["service"].as_str().unwrap().to_owned(),
                a["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids.keys().collect::<Vec<_>>(),
        ["svc-0001", "svc-0002"],
        "{plan}"
    );
    for h in plan["hosts"].as_array().unwrap() {
        assert_eq!(
            serde_json::to_string(&h["plan"]["inputs"]["artifacts"]).unwrap(),
            serde_json::to_string(&ids).unwrap(),
            "every host installs the same artifacts"
        );
    }
    assert_eq!(ran(&build_root(), "builds-ran"), ["svc-0001", "svc-0002"]);
    assert_eq!(ran(&build_root(), "deps-ran"), ["svc-0001", "svc-0002"]);

    // The saved plan rolls out as reviewed; the controller's build root already has both
    // releases: nothing is built again.
    let out = w.run(&["apply", saved.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let said = show(&out);
    for h in ["host1", "host2", "host3"] {
        assert!(
            said.contains(&format!("[{h}] artifacts: sent 6 of 6 items")),
            "two services, each an app pack, a deps pack and a manifest: {said}"
        );
    }
    assert_eq!(ran(&build_root(), "builds-ran").len(), 2, "{said}");
    nothing_ran_on_hosts(&w);

    // A change to both services: built once each, on the controller; each host is sent the
    // two new releases and manifests, and keeps the dependency packs it has.
    w.commit(
        "touch both",
        &[
            Edit::touch_service("svc-0001"),
            Edit::touch_service("svc-0002"),
        ],
    );
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let said = show(&out);
    assert_eq!(
        ran(&build_root(), "builds-ran"),
        ["svc-0001", "svc-0002", "svc-0001", "svc-0002"],
        "{said}"
    );
    assert_eq!(
        ran(&build_root(), "deps-ran").len(),
        2,
        "the dependency inputs did not change: {said}"
    );
    for h in ["host1", "host2", "host3"] {
        assert!(
            said.contains(&format!("[{h}] artifacts: sent 4 of 6 items")),
            "{said}"
        );
    }
    nothing_ran_on_hosts(&w);

    // `moorline artifact build` (CI's command) is the controller's build: at the same commit,
    // the build root's releases are reused and pack to the very artifacts the hosts installed.
    let plan: serde_json::Value = serde_json::from_slice(
        &w.cmd(&["plan", "--env", "staging", "--format", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(plan["artifacts"].is_null(), "nothing left to build: {plan}");
    let out_dir = w.plan_file("ci-artifacts");
    let out = w.run(&[
        "artifact",
        "build",
        "--env",
        "staging",
        "--service",
        "svc-0001",
        "--out",
        out_dir.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &built["artifacts"][0];
    assert_eq!(
        built["artifacts"].as_array().map(Vec::len),
        Some(1),
        "{built}"
    );
    assert_eq!(
        (&a["service"], &a["built"]),
        (&"svc-0001".into(), &false.into())
    );
    assert_eq!(ran(&build_root(), "builds-ran").len(), 4, "reused: {built}");
    let id = a["id"].as_str().unwrap();
    let hex = id.strip_prefix("sha256:").unwrap();
    assert!(out_dir.join(format!("manifests/{hex}.json")).is_file());
    assert!(
        said.contains(&id[..19]),
        "the id the hosts were sent: {id}\n{said}"
    );

    // Every host's status names that artifact for svc-0001.
    let out = w.run(&["status", "--env", "staging", "--format", "json"]);
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for h in ["host1", "host2", "host3"] {
        let sv = st["hosts"][h]["status"]["phases"]
            .as_array()
            .unwrap_or_else(|| panic!("{st}"))
            .iter()
            .flat_map(|p| p["services"].as_array().unwrap())
            .find(|x| x["name"] == "svc-0001")
            .unwrap_or_else(|| panic!("{st}"));
        assert_eq!(sv["artifact"], id, "{h}: {sv}");
    }
    // A file edited by hand on host2 is drift there, and only there.
    let service = w.hosts.host(1).root_dir().join("staging/svc-0001");
    let live = std::fs::read_link(service.join("current")).unwrap();
    let release = service.join("releases").join(live.file_name().unwrap());
    std::fs::write(release.join("server.py"), "# hot fix by hand\n").unwrap();
    let out = w.run(&["status", "--env", "staging", "--check"]);
    assert_eq!(code(&out), Some(5), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let drift = format!(
        "svc-0001: release files differ from artifact {}…: server.py (modified)",
        &id[..19]
    );
    let host2 = text.split("=== host3 ===").next().unwrap_or_default();
    assert!(
        host2.contains("=== host2 ===") && host2.contains(&drift),
        "{text}"
    );
    assert_eq!(text.matches(&drift).count(), 1, "{text}");
}
