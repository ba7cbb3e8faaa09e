//! `moorline demo`: moorline's whole job on an embedded default. Builds a
//! Pakashop-shaped repository (19 tiny real HTTP services), starts a private
//! `systemd --user` manager, and runs the real commands a user would type,
//! narrating each step and checking, through systemd itself, that it did
//! what it says. Everything it starts is stopped and its files removed.
//!
//! What it is built from, shipped with it (the integration tests and benches
//! use them too, and add their own in `crate::testkit`):
//!
//! - [`fixture`]: the generated Pakashop-shaped git repository with runnable
//!   fake services that the demo deploys.
//! - [`sandbox`]: a private, throw-away `systemd --user` manager, in a cgroup
//!   subtree of its own (`cgroup`).

pub(crate) mod cgroup;
pub mod fixture;
pub mod sandbox;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use miette::Diagnostic;

use crate::systemd::{Bus, Systemd};
use fixture::{Edit, Fixture, FixtureOptions};
use sandbox::PrivateSystemd;

/// Ports of the demo fleet start here (not Pakashop's own ports, so a
/// developer's running services are left alone), or at the first block of
/// [`PORT_BLOCK`] above it whose ports are all free ([`free_port_base`]).
pub(crate) const PORT_BASE: u16 = 18_000;

/// The distance between the port blocks the demo tries, and how many it tries.
const PORT_BLOCK: u16 = 100;
const PORT_BLOCKS: u16 = 20;

/// The first port block from [`PORT_BASE`] in which `count` ports are free on loopback: a
/// second demo (or a test, or another service) on the demo's ports would otherwise answer its
/// readiness checks.
fn free_port_base(count: u16) -> Option<u16> {
    (0..PORT_BLOCKS)
        .map(|k| PORT_BASE + k * PORT_BLOCK)
        .find(|base| {
            (*base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
}
/// Unit name prefix of the demo fleet.
pub(crate) const PREFIX: &str = "moorline-demo";

/// The service whose new release never becomes ready in the failure step.
const BROKEN: &str = "search";

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum DemoError {
    #[error("the demo cannot run here: {why}")]
    #[diagnostic(code(moorline::demo::unsupported), help("{help}"))]
    Unsupported { why: String, help: String },
    #[error("demo step {step} did not do what it says: {what}")]
    #[diagnostic(
        code(moorline::demo::step_failed),
        help(
            "this is a bug in moorline or a problem of this machine; run again with --keep and look at the files it names"
        )
    )]
    Step { step: usize, what: String },
    #[error("the demo could not set up: {0}")]
    #[diagnostic(
        code(moorline::demo::setup),
        help("check free space in the temporary directory and that python3 is installed")
    )]
    Setup(String),
}

struct Demo {
    dir: PathBuf,
    fx: Fixture,
    exe: PathBuf,
    env: BTreeMap<String, String>,
    state: PathBuf,
    step: usize,
    systemd: Systemd,
}

fn bold(s: &str) -> String {
    use std::io::IsTerminal;
    if std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal() {
        format!("\x1b[1m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

fn find_python() -> Option<PathBuf> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn check_prerequisites() -> Result<PathBuf, DemoError> {
    if !cfg!(target_os = "linux") {
        return Err(DemoError::Unsupported {
            why: format!(
                "this is {}, and systemd runs on Linux only",
                std::env::consts::OS
            ),
            help: "run the demo on a Linux machine or VM with systemd installed".to_owned(),
        });
    }
    let python = find_python().ok_or_else(|| DemoError::Unsupported {
        why: "python3 is not installed (the demo's 19 services are tiny Python HTTP servers)"
            .to_owned(),
        help: "install it: apt-get install python3".to_owned(),
    })?;
    Ok(python)
}

impl Demo {
    fn say(&mut self, text: &str) {
        self.step += 1;
        println!("\n{}", bold(&format!("{}. {text}", self.step)));
    }

    /// Runs `moorline ARGS` as the user would, showing command and output.
    fn moorline(&self, args: &[&str], show: bool) -> Result<(i32, String), DemoError> {
        let cfg = self.fx.config_path.display().to_string();
        let state = self.state.display().to_string();
        let mut full = vec!["-c", &cfg, "--state-dir", &state, "--systemd", "user"];
        full.extend_from_slice(args);
        println!("\n  $ moorline {}", args.join(" "));
        let out = Command::new(&self.exe)
            .args(&full)
            .envs(&self.env)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| DemoError::Setup(format!("cannot run {}: {e}", self.exe.display())))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if show {
            for line in text.lines() {
                println!("    {line}");
            }
        }
        let _ = std::io::stdout().flush();
        Ok((out.status.code().unwrap_or(-1), text))
    }

    fn expect(&self, ok: bool, what: impl Into<String>) -> Result<(), DemoError> {
        if ok {
            Ok(())
        } else {
            Err(DemoError::Step {
                step: self.step,
                what: what.into(),
            })
        }
    }

    fn unit(name: &str) -> String {
        format!("{PREFIX}-staging-{name}.service")
    }

    async fn invocations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for s in &self.fx.services {
            if let Ok(st) = self.systemd.status(&Self::unit(&s.name)).await {
                out.insert(s.name.clone(), st.invocation_id);
            }
        }
        out
    }

    async fn ready_count(&self) -> usize {
        let mut n = 0;
        for s in &self.fx.services {
            let p =
                crate::health::probe(&format!("http://127.0.0.1:{}/health/ready", s.port)).await;
            if p.ok {
                n += 1;
            }
        }
        n
    }

    fn restarted(
        before: &BTreeMap<String, String>,
        after: &BTreeMap<String, String>,
    ) -> Vec<String> {
        after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn commit(&self, message: &str, edits: &[Edit]) -> Result<String, DemoError> {
        self.fx
            .commit("main", message, edits)
            .map_err(|e| DemoError::Setup(e.to_string()))
    }
}

/// Runs the demo; `Ok(())` only when every step did what it says.
pub(crate) async fn run(keep: bool, use_running: bool) -> miette::Result<()> {
    let started = Instant::now();
    let python = check_prerequisites()?;
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Setup(format!("cannot find the moorline binary: {e}")))?;
    let dir = std::env::temp_dir().join(format!("moorline-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
    let result = run_in(&dir, exe, python, use_running).await;
    if keep {
        println!("\nkept the demo's files in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if result.is_ok() {
        println!(
            "\n{}",
            bold(&format!(
                "demo finished in {:.1}s: every step did what it says.",
                started.elapsed().as_secs_f64()
            ))
        );
    }
    result
}

async fn run_in(
    dir: &Path,
    exe: PathBuf,
    python: PathBuf,
    use_running: bool,
) -> miette::Result<()> {
    println!(
        "moorline demo: a Pakashop-shaped repository with 19 services, deployed under a private systemd."
    );
    println!(
        "Every command below is the real one, run as you would run it; files live in {}.",
        dir.display()
    );
    let mut opts = FixtureOptions::new(dir.join("srv"));
    opts.port_base = Some(free_port_base(PORT_BLOCK).ok_or_else(|| {
        DemoError::Setup(format!(
            "no block of free ports on 127.0.0.1 from {PORT_BASE} to {}",
            PORT_BASE + PORT_BLOCKS * PORT_BLOCK
        ))
    })?);
    opts.python = python;
    let fx =
        Fixture::create(&dir.join("shop"), &opts).map_err(|e| DemoError::Setup(e.to_string()))?;
    let text =
        std::fs::read_to_string(&fx.config_path).map_err(|e| DemoError::Setup(e.to_string()))?;
    // Demo units get their own names. The service whose readiness the
    // failure step breaks gets a short readiness timeout so that step ends
    // quickly; the others keep the default, so a loaded machine does not
    // fail the first deploy.
    // Staging and production are both on this host: units of their own
    // ({env}) and ports of their own (production's port-offset), so that
    // `validate` accepts them (the demo deploys staging only).
    let text = text
        .replace(
            "unit-name \"pakashop-{service}.service\"",
            &format!("unit-name \"{PREFIX}-{{env}}-{{service}}.service\""),
        )
        .replace(
            "environment \"production\" {\n",
            &format!(
                "environment \"production\" {{\n    port-offset {}\n",
                production_offset(&fx)
            ),
        );
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("service \"{BROKEN}\""))
                && let Some(pos) = l.find('{')
            {
                format!("{} ready-timeout \"5s\";{}\n", &l[..=pos], &l[pos + 1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    // Committed, as a real repository's config is: `apply` refuses a
    // working tree with uncommitted changes.
    fx.commit_config("demo: unit names and readiness timeouts", &text)
        .map_err(|e| DemoError::Setup(e.to_string()))?;

    let mut env = BTreeMap::new();
    let mut sandbox = None;
    let systemd = if use_running {
        Systemd::connect(Bus::User).await?
    } else {
        println!(
            "\nstarting a private `systemd --user` manager (in its own PID and mount namespaces)..."
        );
        let sb = PrivateSystemd::start(&dir.join("systemd")).await?;
        env.insert(
            "XDG_RUNTIME_DIR".to_owned(),
            sb.runtime_dir().display().to_string(),
        );
        env.insert("DBUS_SESSION_BUS_ADDRESS".to_owned(), sb.bus_address());
        let unit_dir = sb.unit_dir();
        if let Some(config_home) = unit_dir.parent().and_then(Path::parent) {
            env.insert(
                "XDG_CONFIG_HOME".to_owned(),
                config_home.display().to_string(),
            );
        }
        let sd = sb.connect().await?;
        sandbox = Some(sb);
        sd
    };
    let mut demo = Demo {
        dir: dir.to_path_buf(),
        state: dir.join("state"),
        fx,
        exe,
        env,
        step: 0,
        systemd,
    };
    let result = steps(&mut demo).await;
    // Stop what the demo started, whatever happened.
    for s in &demo.fx.services {
        let _ = demo.systemd.stop(&Demo::unit(&s.name)).await;
    }
    if use_running {
        for s in &demo.fx.services {
            let _ = std::fs::remove_file(crate::target::user_unit_dir().join(Demo::unit(&s.name)));
        }
        let _ = demo.systemd.daemon_reload().await;
    }
    if let Some(mut sb) = sandbox {
        sb.stop();
    }
    let _ = &demo.dir;
    result
}

/// A `port-offset` for the fixture's production: the smallest multiple of
/// 1000 that moves no service's port onto another's, or past 65535 (1000
/// when none would: validation then says so).
fn production_offset(fx: &Fixture) -> u16 {
    let ports: Vec<u16> = fx.services.iter().map(|s| s.port).collect();
    (1..=65u16)
        .map(|k| k * 1000)
        .find(|o| {
            ports
                .iter()
                .all(|p| p.checked_add(*o).is_some_and(|m| !ports.contains(&m)))
        })
        .unwrap_or(1000)
}

async fn steps(d: &mut Demo) -> miette::Result<()> {
    d.say("The configuration: services, phases (start order) and environments in one KDL file.");
    let (code, _) = d.moorline(&["validate"], true)?;
    d.expect(code == 0, "the generated configuration is valid")?;

    d.say("The first plan: nothing is deployed, so every service is built, its unit installed, started in phase order and checked for readiness.");
    let (code, text) = d.moorline(&["plan", "--env", "staging", "--detailed-exitcode"], false)?;
    // The 78 actions are many; show the services and the start of the list.
    let mut shown = 0;
    for line in text.lines() {
        if shown > 0 {
            shown += 1;
            if shown > 8 {
                println!(
                    "    ... ({} more lines; `moorline graph --env staging` draws the whole graph)",
                    text.lines().count().saturating_sub(shown)
                );
                break;
            }
        }
        if line.starts_with("actions (") {
            shown = 1;
        }
        println!("    {line}");
    }
    d.expect(
        code == 2,
        "the first plan has changes (exit 2 with --detailed-exitcode)",
    )?;

    d.say("Apply it: builds run in parallel, then each phase restarts in parallel once the phase before it is ready.");
    let (code, text) = d.moorline(&["apply", "--env", "staging", "--yes"], false)?;
    println!("    {}", text.lines().last().unwrap_or(""));
    d.expect(code == 0, format!("the first apply succeeds:\n{text}"))?;
    let ready = d.ready_count().await;
    println!(
        "    {ready} of {} services answer /health/ready",
        d.fx.services.len()
    );
    d.expect(ready == d.fx.services.len(), "every service is ready")?;
    let first =
        d.fx.head("main")
            .map_err(|e| DemoError::Setup(e.to_string()))?;

    d.say("A commit changes two services and adds a database migration to backend; the plan says exactly what happens and why.");
    d.commit(
        "Orders v2: backend migration, pricing tweak",
        &[
            Edit::add_migration("backend", "0002_orders_v2"),
            Edit::touch_service("pricing"),
        ],
    )?;
    let (code, _) = d.moorline(&["plan", "--env", "staging", "--detailed-exitcode"], true)?;
    d.expect(code == 2, "the plan has changes")?;
    println!("\n  The same plan as a reviewer sees it in the pull request (Markdown):");
    let (_, md) = d.moorline(&["plan", "--env", "staging", "--format", "markdown"], false)?;
    for line in md.lines().take(12) {
        println!("    | {line}");
    }

    d.say("Apply it: only backend and pricing restart; the other 17 keep running untouched.");
    let before = d.invocations().await;
    let (code, text) = d.moorline(&["apply", "--env", "staging", "--yes"], false)?;
    println!("    {}", text.lines().last().unwrap_or(""));
    d.expect(code == 0, format!("the apply succeeds:\n{text}"))?;
    let restarted = Demo::restarted(&before, &d.invocations().await);
    println!(
        "    restarted according to systemd: {}",
        restarted.join(", ")
    );
    d.expect(
        restarted == ["backend", "pricing"],
        format!("exactly backend and pricing restarted, not {restarted:?}"),
    )?;

    d.say("A commit whose new search release never becomes ready: the apply fails its readiness check and rolls back by itself.");
    d.commit(
        "Search: new index (broken)",
        &[Edit::break_readiness(BROKEN)],
    )?;
    let before = d.invocations().await;
    let (code, text) = d.moorline(&["apply", "--env", "staging", "--yes"], false)?;
    for line in text.lines().filter(|l| {
        l.contains("FAILED")
            || l.contains("rolled")
            || l.contains("rollback")
            || l.contains("succeeded:")
    }) {
        println!("    {line}");
    }
    d.expect(
        code == 3,
        format!("exit code 3: failed and rolled back\n{text}"),
    )?;
    let ready = d.ready_count().await;
    d.expect(
        ready == d.fx.services.len(),
        "after the rollback every service is ready again",
    )?;
    let restarted = Demo::restarted(&before, &d.invocations().await);
    println!(
        "    search is back on its previous release; {ready} services ready; restarted: {}",
        restarted.join(", ")
    );

    d.say("A manual rollback of the last successful deploy: kept releases make it a symlink switch and a restart, no rebuild.");
    d.commit("Search: revert the broken index", &[Edit::heal(BROKEN)])?;
    let (code, text) = d.moorline(&["rollback", "--env", "staging", "--yes"], false)?;
    // Each service rolled back, with where it goes (the line under it in
    // the plan), then how it ended.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(row) = line.strip_prefix("  ~ ")
            && let Some(name) = row.split_whitespace().next()
        {
            let why = lines.get(i + 1).map_or("", |l| l.trim());
            println!("    {name}: {why}");
        }
    }
    for line in lines.iter().filter(|l| l.contains("succeeded")) {
        println!("    {line}");
    }
    d.expect(code == 0, format!("the rollback succeeds:\n{text}"))?;
    let live = std::fs::read_link(d.fx.env_root("staging").join("backend/current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    d.expect(
        live.as_deref() == Some(first.as_str()),
        "backend runs its first release again",
    )?;

    d.say("Status: every unit, its live release, health and drift, straight from systemd and the services. After the manual rollback, staging runs older releases than its branch: status shows the rollback and the undeployed commit. `status --check` (the 15-minute health check) passes, since nothing needs repair; `--check --fail-behind` fails until the next deploy.");
    let (code, text) = d.moorline(&["status", "--env", "staging", "--check"], true)?;
    d.expect(
        code == 0
            && text.contains("19 healthy")
            && text.contains("rolled-back: rolled back by hand")
            && text.contains("behind-branch"),
        "status --check passes and shows 19 healthy services, the manual rollback and the drift from the branch",
    )?;
    let (code, _) = d.moorline(
        &["status", "--env", "staging", "--check", "--fail-behind"],
        false,
    )?;
    println!("    status --check --fail-behind exits {code}");
    d.expect(
        code == 5,
        "status --check --fail-behind fails while staging is behind",
    )?;

    d.say("Deploy the branch again: staging catches up, and the health check passes.");
    let (code, text) = d.moorline(&["apply", "--env", "staging", "--yes"], false)?;
    println!("    {}", text.lines().last().unwrap_or(""));
    d.expect(code == 0, format!("the apply succeeds:\n{text}"))?;
    let (code, text) = d.moorline(&["status", "--env", "staging", "--check"], false)?;
    println!("    {}", text.lines().last().unwrap_or(""));
    d.expect(code == 0, format!("status --check passes:\n{text}"))?;
    Ok(())
}
