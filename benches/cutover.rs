//! `cargo bench --bench cutover`: what a deploy costs the clients of a service, side by side
//! in one run, under one private `systemd --user` manager with real nginx in front. Three
//! fixture services per mode, one client thread per service sending back-to-back `GET /health`
//! through nginx while every service is deployed:
//!
//! - **restart**: `moorline apply` in the default mode (each service restarted in place, gated
//!   on readiness), nginx proxying to the service's port;
//! - **blue-green**: `moorline apply` with `cutover "blue-green"` (new slot, readiness, upstream
//!   switch and graceful reload, drain, old slot stopped), nginx proxying to the upstream;
//! - **deploy.sh**: the seeds' script logic, service after service: `RestartUnit`, `sleep 2`,
//!   check `ActiveState` (`BENCH_NAIVE_SLEEP=SECONDS` changes the sleep), nginx proxying to the
//!   service's port.
//!
//! Printed: requests answered, failed requests (a refused connection or an answer that is not
//! 200), the longest stretch without a successful answer, and the p99 latency.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/world.rs"]
mod world;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moorline::demo::fixture::Edit;
use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;
use world::World;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    common::run_on_runtime(run())
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// One request over a fresh connection: whether it answered 200.
fn get(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1) == Some("200")
}

/// What the clients of one mode saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    failed: u64,
    longest_gap: Duration,
    latencies: Vec<Duration>,
}

/// Client threads, one per port, until stopped.
fn load(ports: &[u16], stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Seen>> {
    ports
        .iter()
        .map(|&port| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut last_ok = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if get(port) {
                        seen.ok += 1;
                        seen.latencies.push(t.elapsed());
                        seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    } else {
                        seen.failed += 1;
                    }
                }
                seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
                seen
            })
        })
        .collect()
}

/// Runs `deploy` with clients on `ports`, and sums what they saw.
async fn under_load<F: std::future::Future<Output = Res<()>>>(
    ports: &[u16],
    deploy: F,
) -> Res<Seen> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(ports, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = deploy.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Seen::default();
    for t in threads {
        let s = t.join().map_err(|_| "a client thread panicked")?;
        all.ok += s.ok;
        all.failed += s.failed;
        all.longest_gap = all.longest_gap.max(s.longest_gap);
        all.latencies.extend(s.latencies);
    }
    r.map(|()| all)
}

/// What the cutover bench adds to a world: its configuration, its apply, a change of every
/// service.
impl World<'_> {
    /// `text` (the configuration with this world's unit names) with `edit` applied to each
    /// service line, and `proxy`, committed.
    fn configure(&self, text: &str, edit: impl Fn(&str, &str) -> String, proxy: &str) -> Res<()> {
        let mut out = String::new();
        for line in text.lines() {
            match self
                .fx
                .services
                .iter()
                .find(|s| line.starts_with(&format!("service \"{}\"", s.name)))
            {
                Some(s) => out.push_str(&edit(&s.name, line)),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out.push_str(proxy);
        self.fx
            .commit_config("bench configuration", &out)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn apply(&self) -> Res<()> {
        let out = self
            .moorline(&["apply", "--env", "staging", "--yes"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: apply failed: {}",
                self.prefix,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn touch_all(&self, msg: &str) -> Res<()> {
        let edits: Vec<Edit> = self
            .fx
            .services
            .iter()
            .map(|s| Edit::touch_service(&s.name))
            .collect();
        self.fx
            .commit("main", msg, &edits)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The seeds' deploy.sh after its builds: each service restarted, a sleep, `is-active`.
async fn deploy_sh(sd: &Systemd, units: &[String], sleep: Duration) -> Res<()> {
    for u in units {
        sd.restart(u)
            .await
            .and_then(|j| j.check("restart", u))
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(sleep).await;
        let st = sd.status(u).await.map_err(|e| e.to_string())?;
        if st.active_state != "active" {
            return Err(format!("{u} is {}", st.active_state));
        }
    }
    Ok(())
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    let i = (latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1));
    latencies.get(i).copied().unwrap_or_default()
}

async fn run() -> Res<()> {
    let nginx = nginx_bin().ok_or("nginx is needed (apt-get install nginx)")?;
    let sleep = std::env::var("BENCH_NAIVE_SLEEP")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), |s| {
            Duration::from_secs_f64(s.max(0.0))
        });
    let (dir, mut sandbox, sd) = world::scratch_manager("moorline-bench-cutover-").await?;
    let result = measure(dir.path(), &sandbox, &sd, &nginx, sleep).await;
    sandbox.stop();
    println!("{}", result?);
    Ok(())
}

async fn measure(
    dir: &Path,
    sandbox: &PrivateSystemd,
    sd: &Systemd,
    nginx: &Path,
    sleep: Duration,
) -> Res<String> {
    let (restart, restart_text) = World::new(dir, "rs", 25_100, Some(3), sandbox)?;
    let (green, green_text) = World::new(dir, "bg", 25_200, Some(3), sandbox)?;
    let (naive, naive_text) = World::new(dir, "sh", 25_300, Some(3), sandbox)?;
    let ngx = dir.join("nginx");
    let ups = ngx.join("upstreams");
    std::fs::create_dir_all(&ups).map_err(|e| e.to_string())?;
    let conf = ngx.join("nginx.conf");
    let err_log = ngx.join("error.log");
    let unit = "bench-nginx.service";
    let proxy = format!(
        "proxy \"nginx\" {{ unit \"{unit}\"; check \"{}\" \"-t\" \"-q\" \"-c\" \"{}\" \"-e\" \"{}\" }}\n",
        nginx.display(),
        conf.display(),
        err_log.display()
    );
    // nginx: a front port per restart-mode and deploy.sh service, the blue/green services' own
    // ports in front of their upstreams.
    let d = ngx.display();
    let mut text = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n\
         \x20   client_body_temp_path {d}/cb;\n    proxy_temp_path {d}/px;\n\
         \x20   fastcgi_temp_path {d}/fc;\n    uwsgi_temp_path {d}/uw;\n    scgi_temp_path {d}/sc;\n\
         \x20   include {}/*.conf;\n",
        ups.display()
    );
    let mut fronts: Vec<(&str, Vec<u16>)> = Vec::new();
    for w in [&restart, &naive] {
        let mut ports = Vec::new();
        for s in &w.fx.services {
            let front = free_port()?;
            let _ = writeln!(
                text,
                "    server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
                s.port
            );
            ports.push(front);
        }
        fronts.push((w.prefix.as_str(), ports));
    }
    let mut slots = Vec::new();
    for s in &green.fx.services {
        let pair = [free_port()?, free_port()?];
        std::fs::write(
            ups.join(format!("{}.conf", s.name)),
            moorline::upstream::text(&s.name, pair[0]).ok_or("upstream name")?,
        )
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            text,
            "    server {{ listen 127.0.0.1:{}; location / {{ proxy_pass http://moorline_{}; }} }}",
            s.port, s.name
        );
        slots.push((s.name.clone(), pair));
    }
    text.push_str("}\n");
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let body = format!(
        "[Unit]\nDescription=nginx for the cutover bench\n\n[Service]\nType=simple\n\
         ExecStart={} -c {} -e {}\nExecReload=/bin/kill -HUP $MAINPID\n",
        nginx.display(),
        conf.display(),
        err_log.display()
    );
    std::fs::write(sandbox.unit_dir().join(unit), body).map_err(|e| e.to_string())?;
    sd.daemon_reload().await.map_err(|e| e.to_string())?;
    sd.start(unit)
        .await
        .and_then(|j| j.check("start", unit))
        .map_err(|e| e.to_string())?;

    restart.configure(&restart_text, |_, line| line.to_owned(), &proxy)?;
    naive.configure(&naive_text, |_, line| line.to_owned(), &proxy)?;
    green.configure(
        &green_text,
        |name, line| {
            let [a, b] = slots
                .iter()
                .find(|(n, _)| n == name)
                .map_or([0, 0], |(_, p)| *p);
            format!(
                "{}; cutover \"blue-green\" {{ slots {a} {b}; upstream \"{}/{{service}}.conf\" }} }}",
                line.strip_suffix(" }").unwrap_or(line),
                ups.display()
            )
        },
        &proxy,
    )?;
    eprintln!("bench: first deploys...");
    for w in [&restart, &naive, &green] {
        w.apply()?;
        w.touch_all("next")?;
    }
    let green_ports: Vec<u16> = green.fx.services.iter().map(|s| s.port).collect();
    let port_of = |name: &str| {
        fronts
            .iter()
            .find(|(p, _)| *p == name)
            .map(|(_, v)| v.clone())
    };
    let restart_ports = port_of("rs").ok_or("no restart fronts")?;
    let naive_ports = port_of("sh").ok_or("no deploy.sh fronts")?;
    let naive_units = naive.units();

    eprintln!("bench: restart mode...");
    let mut rs = under_load(&restart_ports, async { restart.apply() }).await?;
    eprintln!("bench: blue-green...");
    let mut bg = under_load(&green_ports, async { green.apply() }).await?;
    eprintln!("bench: deploy.sh...");
    let mut sh = under_load(&naive_ports, deploy_sh(sd, &naive_units, sleep)).await?;

    let mut r = String::new();
    let _ = writeln!(
        r,
        "\ndeploy of 3 services, one client per service through nginx (back-to-back GET /health)\n"
    );
    let _ = writeln!(
        r,
        "{:<28} {:>9} {:>7} {:>12} {:>12}",
        "mode", "answered", "failed", "longest gap", "p99 latency"
    );
    for (name, s) in [
        ("restart (moorline)", &mut rs),
        ("blue-green (moorline)", &mut bg),
        (
            &*format!("deploy.sh (sleep {}s)", sleep.as_secs_f64()),
            &mut sh,
        ),
    ] {
        let p = p99(&mut s.latencies);
        let _ = writeln!(
            r,
            "{name:<28} {:>9} {:>7} {:>9.0} ms {:>9.1} ms",
            s.ok,
            s.failed,
            s.longest_gap.as_secs_f64() * 1000.0,
            p.as_secs_f64() * 1000.0
        );
    }
    for w in [&restart, &naive] {
        for u in w.units() {
            let _ = sd.stop(&u).await;
        }
    }
    for (name, pair) in &slots {
        for p in pair {
            let _ = sd.stop(&format!("bg-{name}@{p}.service")).await;
        }
    }
    let _ = sd.stop(unit).await;
    Ok(r)
}
