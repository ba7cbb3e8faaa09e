//! Blue/green cutover under traffic: real nginx (a unit of the shared manager) in front of three
//! fixture services in `cutover "blue-green"`, each reached on its own port through nginx, while
//! one client thread per service sends back-to-back requests and counts every failure. One world,
//! four phases: a deploy of one service, a deploy of all, a failed deploy and its automatic
//! rollback, a manual rollback. Each must fail no request, and after each the upstream file names
//! a slot that runs and answers ready.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::systemd::Systemd;

use crate::deploy::code;
use crate::support;

const PREFIX: &str = "cut";

/// `nginx` on `$PATH` or in the usual sbin directories.
fn nginx_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// One `GET path` over a fresh connection: the status (0 when the connection failed).
fn get(port: u16, path: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return 0;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// What one client saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    ok: u64,
    failed: u64,
    longest_gap: Duration,
}

/// One client thread per port, sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<(u16, std::thread::JoinHandle<Seen>)>,
}

impl Load {
    fn start(ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let stop = Arc::clone(&stop);
                let t = std::thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut last_ok = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if get(port, "/health") == 200 {
                            seen.ok += 1;
                            seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
                            last_ok = Instant::now();
                        } else {
                            seen.failed += 1;
                        }
                    }
                    seen
                });
                (port, t)
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> Vec<(u16, Seen)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|(p, t)| (p, t.join().unwrap()))
            .collect()
    }
}

/// The slot the upstream file of `service` names, which must run and answer ready.
async fn live_slot_serves(sd: &Systemd, dir: &Path, service: &str, slots: [u16; 2]) -> u16 {
    let text = std::fs::read_to_string(dir.join(format!("{service}.conf"))).unwrap();
    let slot = moorline::upstream::live_slot(&text, service, slots)
        .unwrap_or_else(|| panic!("{service}: the upstream file names no slot:\n{text}"));
    let unit = format!("{PREFIX}-{service}@{slot}.service");
    let st = sd.status(&unit).await.unwrap();
    assert_eq!(st.active_state, "active", "{unit}: {st:?}");
    assert_eq!(get(slot, "/health/ready"), 200, "{unit} answers ready");
    slot
}

/// The records of the newest journal under `state/history`.
fn newest_journal(state: &Path) -> Vec<serde_json::Value> {
    let newest = std::fs::read_dir(state.join("history"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("torn-"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap();
    std::fs::read_to_string(newest)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_services_fail_no_request_through_deploys_and_rollbacks() {
    let Some(sandbox) = support::sandbox() else {
        return;
    };
    let Some(bin) = nginx_bin() else {
        assert!(
            std::env::var("MOORLINE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "MOORLINE_REQUIRE_SERVICES=1 but nginx is not installed"
        );
        eprintln!("SKIPPED: nginx is not installed");
        return;
    };
    let sd = sandbox.connect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.port_base = Some(support::port(27800));
    opts.services = Some(3);
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let state = dir.path().join("state");
    let ngx_dir = dir.path().join("nginx");
    let up_dir = ngx_dir.join("upstreams");
    std::fs::create_dir_all(&up_dir).unwrap();

    // Each service: its own port is nginx's, its two slots behind it.
    let services: Vec<(String, u16, [u16; 2])> = fx
        .services
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.port,
                [support::free_port(), support::free_port()],
            )
        })
        .collect();
    for (name, _, slots) in &services {
        // nginx needs the upstream to exist before the first cutover: the first slot, not yet
        // running (the first deploy starts the other one and switches to it).
        std::fs::write(
            up_dir.join(format!("{name}.conf")),
            moorline::upstream::text(name, slots[0]).unwrap(),
        )
        .unwrap();
    }
    let d = ngx_dir.display();
    let mut conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
         events {{ worker_connections 512; }}\nhttp {{\n    access_log off;\n\
         \x20   client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n    include {}/*.conf;\n",
        up_dir.display()
    );
    for (name, port, _) in &services {
        let _ = writeln!(
            conf,
            "    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://moorline_{name}; }} }}"
        );
    }
    conf.push_str("}\n");
    let conf_path = ngx_dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let err_log = ngx_dir.join("error.log");
    let ngx_unit = format!("{PREFIX}-nginx.service");
    let body = format!(
        "[Unit]\nDescription=nginx in front of the cutover fixture\n\n\
         [Service]\nType=simple\nExecStart={} -c {} -e {}\n\
         ExecReload=/bin/kill -HUP $MAINPID\nTimeoutStopSec=10\n",
        bin.display(),
        conf_path.display(),
        err_log.display()
    );
    support::install_unit(&sd, sandbox, &ngx_unit, &body).await;
    sd.start(&ngx_unit)
        .await
        .unwrap()
        .check("start", &ngx_unit)
        .unwrap();
    assert!(
        support::wait_for_port(services[0].1).await,
        "nginx listens: {}",
        std::fs::read_to_string(&err_log).unwrap_or_default()
    );

    // The configuration: every service blue/green, nginx as the proxy.
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replace(
        "unit-name \"pakashop-{service}.service\"",
        &format!("unit-name \"{PREFIX}-{{service}}.service\""),
    );
    let mut out = String::new();
    for line in text.lines() {
        if let Some((_, _, [a, b])) = services
            .iter()
            .find(|(n, _, _)| line.starts_with(&format!("service \"{n}\"")))
        {
            let line = line.strip_suffix(" }").unwrap();
            let _ = writeln!(
                out,
                "{line}; ready-timeout \"{}s\"; cutover \"blue-green\" {{ slots {a} {b}; upstream \"{}/{{service}}.conf\"; drain \"1s\" }} }}",
                support::failing_ready_timeout_secs(),
                up_dir.display()
            );
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "proxy \"nginx\" {{ unit \"{ngx_unit}\"; check \"{}\" \"-t\" \"-q\" \"-c\" \"{}\" \"-e\" \"{}\" }}",
        bin.display(),
        conf_path.display(),
        err_log.display()
    );
    fx.commit_config("blue-green behind nginx", &out).unwrap();
    let run = |args: &[&str]| {
        support::moorline(sandbox, &state)
            .args(["-c", fx.config_path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let okay = |o: std::process::Output| {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // The plan shows each cutover step.
    let plan = okay(run(&["plan", "--env", "staging"]));
    for step in [
        "slot-start:svc-0003",
        "slot-ready:svc-0003",
        "switch-upstream:svc-0003",
        "drain:svc-0003",
        "slot-stop:svc-0003",
    ] {
        assert!(plan.contains(step), "{step} in\n{plan}");
    }
    // First deploy: nothing serves yet, so no traffic is counted.
    okay(run(&["apply", "--env", "staging", "--yes"]));
    let ports: Vec<u16> = services.iter().map(|s| s.1).collect();
    let check_all = |when: &'static str, seen: Vec<(u16, Seen)>| {
        for (port, s) in &seen {
            eprintln!(
                "{when}: port {port}: {} ok, {} failed, longest gap {:?}",
                s.ok, s.failed, s.longest_gap
            );
            assert!(s.ok > 0, "{when}: port {port} answered nothing");
            assert_eq!(s.failed, 0, "{when}: port {port} failed requests: {s:?}");
        }
    };
    let mut live = Vec::new();
    for (name, _, slots) in &services {
        live.push(live_slot_serves(&sd, &up_dir, name, *slots).await);
    }

    // 1. One service.
    let load = Load::start(&ports);
    fx.commit("main", "one", &[Edit::touch_service("svc-0003")])
        .unwrap();
    okay(run(&["apply", "--env", "staging", "--yes"]));
    check_all("deploy of one", load.finish());
    let (name, _, slots) = &services[2];
    let now = live_slot_serves(&sd, &up_dir, name, *slots).await;
    assert_ne!(now, live[2], "svc-0003 moved to its other slot");
    let other = slots.iter().find(|s| **s != now).unwrap();
    let old = sd
        .status(&format!("{PREFIX}-{name}@{other}.service"))
        .await
        .unwrap();
    assert_ne!(old.active_state, "active", "the old slot stopped");

    // 2. Every service.
    let load = Load::start(&ports);
    let edits: Vec<Edit> = services
        .iter()
        .map(|(n, _, _)| Edit::touch_service(n))
        .collect();
    fx.commit("main", "all", &edits).unwrap();
    okay(run(&["apply", "--env", "staging", "--yes"]));
    check_all("deploy of all", load.finish());
    for (name, _, slots) in &services {
        live_slot_serves(&sd, &up_dir, name, *slots).await;
    }
    // `status` reads each service's live slot: healthy, no drift.
    okay(run(&["status", "--env", "staging", "--check"]));
    // `disable` acts on both slot instances, `enable` on the live one (the template cannot be
    // enabled itself).
    let live3 = live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    let slot_unit = |slot: u16| format!("{PREFIX}-svc-0003@{slot}.service");
    let said = okay(run(&[
        "disable",
        "--env",
        "staging",
        "--service",
        "svc-0003",
    ]));
    for slot in services[2].2 {
        let st = sd.status(&slot_unit(slot)).await.unwrap();
        assert_eq!(st.unit_file_state, "disabled", "{slot}: {said}");
    }
    let said = okay(run(&[
        "enable",
        "--env",
        "staging",
        "--service",
        "svc-0003",
    ]));
    assert!(
        said.contains(&format!("{} enabled", slot_unit(live3))),
        "{said}"
    );
    for slot in services[2].2 {
        let st = sd.status(&slot_unit(slot)).await.unwrap();
        let want = if slot == live3 { "enabled" } else { "disabled" };
        assert_eq!(st.unit_file_state, want, "{slot}: {said}");
    }
    // `stop` stops both slot instances; `start` and `restart` bring it back through the
    // blue/green chain (never the template), and `status` is healthy again.
    let said = okay(run(&[
        "stop",
        "--env",
        "staging",
        "--service",
        "svc-0003",
        "--yes",
    ]));
    assert!(said.contains("stop: 1 succeeded"), "{said}");
    for slot in services[2].2 {
        let st = sd.status(&slot_unit(slot)).await.unwrap();
        assert_ne!(st.active_state, "active", "{slot}: {said}");
    }
    let said = okay(run(&[
        "start",
        "--env",
        "staging",
        "--service",
        "svc-0003",
        "--yes",
    ]));
    assert!(said.contains("start: 1 succeeded"), "{said}");
    live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    okay(run(&[
        "restart",
        "--env",
        "staging",
        "--service",
        "svc-0003",
        "--yes",
    ]));
    live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    okay(run(&["status", "--env", "staging", "--check"]));
    let good = fx.head("main").unwrap();

    // 3. A release that never gets ready: the apply fails at its slot's readiness and rolls
    // back; the proxy never left the old slot, and nothing restarts it.
    let before = live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    let load = Load::start(&ports);
    fx.commit(
        "main",
        "broken",
        &[
            Edit::touch_service("svc-0003"),
            Edit::break_readiness("svc-0003"),
        ],
    )
    .unwrap();
    let o = run(&["apply", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 3, "{err}");
    check_all("failed deploy and its rollback", load.finish());
    // The failure report reads the new slot's instance, not the template (which runs nothing).
    let new = services[2].2.iter().find(|s| **s != before).unwrap();
    let journal = format!("last lines of {PREFIX}-svc-0003@{new}.service's journal:\n    | ");
    assert!(err.contains(&journal), "{journal} in\n{err}");
    assert!(!err.contains("svc-0003@.service"), "{err}");
    assert_eq!(
        live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await,
        before
    );
    let link = fx.env_root("staging").join("svc-0003").join("current");
    let live_rev = std::fs::read_link(&link).unwrap();
    assert_eq!(
        live_rev.file_name().unwrap().to_string_lossy(),
        good,
        "current back on the good release"
    );

    // 4. Healed, deployed, then rolled back by hand: a switch back to the other slot.
    fx.commit("main", "healed", &[Edit::heal("svc-0003")])
        .unwrap();
    okay(run(&["apply", "--env", "staging", "--yes"]));
    let healed = live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    let load = Load::start(&ports);
    okay(run(&["rollback", "--env", "staging", "--yes"]));
    check_all("manual rollback", load.finish());
    let back = live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    assert_ne!(back, healed, "the rollback switched slots");

    // 5. Killed at each distinct point of a cutover, then resumed or rolled back: after each
    // kill and each recovery the upstream names a slot that runs and answers ready, and the
    // client through nginx sees no failure. The record numbers come from a deploy of svc-0003
    // alone, journaled in full.
    //
    // A kill lands right after a journal record is durable. The cutover's effects on the host
    // happen inside slot-start (the slot chosen, then, after its `switch` record, `current`
    // and the slot link moved and the slot started), inside switch-upstream (the upstream file
    // written, then, after the `spawned` record of the proxy check, the reload) and inside
    // slot-stop; between a `succeeded` record and the next action's `started` nothing changes
    // (slot-ready, the health check through the proxy and drain change nothing at all).
    // So a kill after `succeeded X` leaves the host as a kill after the `started` record of the
    // action after X does, whose journal only adds that action in flight with nothing done:
    // the same recovery then also has to cope with its possible effects. The kept points are
    // one per host state and recovery: every point where the slot link (after `switch`), the
    // upstream file or the proxy reload (after switch-upstream's `spawned`) is torn, before and
    // after each of them, and the old slot stopped.
    fx.commit("main", "measured", &[Edit::touch_service("svc-0003")])
        .unwrap();
    okay(run(&["apply", "--env", "staging", "--yes"]));
    let records = newest_journal(&state);
    let at = |event: &str, action: &str| {
        records
            .iter()
            .position(|r| r["event"] == event && (action.is_empty() || r["action"] == action))
            .map_or_else(|| panic!("no {event} {action} in {records:#?}"), |i| i + 1)
    };
    let resume: &[&str] = &["apply", "--resume", "--env", "staging"];
    let rollback: &[&str] = &["rollback", "--env", "staging", "--yes"];
    let points = [
        // Nothing done yet.
        (at("started", "slot-start:svc-0003"), resume),
        // The slot chosen; `current` and the slot link not moved yet.
        (at("switch", ""), rollback),
        // The new slot started, not yet ready (also stands for `succeeded slot-start`).
        (at("started", "slot-ready:svc-0003"), resume),
        // The new slot ready, the upstream file untouched (also `succeeded slot-ready`).
        (at("started", "switch-upstream:svc-0003"), rollback),
        // The upstream file names the new slot; the proxy, not reloaded, the old one.
        (at("spawned", "switch-upstream:svc-0003"), resume),
        // The proxy on the new slot, the old one still runs (also `succeeded
        // switch-upstream`, the health check's records and `succeeded drain`).
        (at("started", "drain:svc-0003"), rollback),
        (at("started", "slot-stop:svc-0003"), resume),
        // The old slot stopped.
        (at("succeeded", "slot-stop:svc-0003"), rollback),
    ];
    let started = Instant::now();
    let load = Load::start(&ports);
    for (n, recover) in points {
        fx.commit(
            "main",
            &format!("crash {n}"),
            &[Edit::touch_service("svc-0003")],
        )
        .unwrap();
        let killed = support::moorline(sandbox, &state)
            .args(["-c", fx.config_path.to_str().unwrap()])
            .args(["apply", "--env", "staging", "--yes"])
            .env("MOORLINE_TEST_CRASH_AFTER", n.to_string())
            .output()
            .unwrap();
        assert_eq!(killed.status.code(), None, "killed after record {n}");
        live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
        okay(run(recover));
        live_slot_serves(&sd, &up_dir, "svc-0003", services[2].2).await;
    }
    check_all(
        "killed at each point of a cutover, then recovered",
        load.finish(),
    );
    eprintln!(
        "{} kill points of a cutover, each recovered, in {:.1?}",
        points.len(),
        started.elapsed()
    );

    for (name, _, slots) in &services {
        for s in slots {
            let _ = sd.stop(&format!("{PREFIX}-{name}@{s}.service")).await;
        }
    }
    let _ = sd.stop(&ngx_unit).await;
}
