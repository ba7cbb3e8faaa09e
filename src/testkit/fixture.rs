//! The test-only part of the fixture repositories (`crate::demo::fixture`): generated fleets
//! of any size, a `proxy` node, the edits that break a service in ways the demo never shows
//! (slow readiness, a crash on start, a failing build or migration), deleting and renaming
//! paths, branches, and looking a service up by name.

use std::fmt::Write as _;
use std::path::Path;

use git2::IndexEntry;

use crate::config::kdl_string;
use crate::demo::fixture::{
    Edit, Fixture, FixtureError, FixtureService, PHASES, SHARED, git, nth_port,
};

/// First port of a generated fleet when no `port_base` is given.
pub(crate) const GENERATED_PORT_BASE: u16 = 20_000;

impl Edit {
    /// `/health/ready` answers 503 for the first `millis` after start.
    pub fn slow_readiness(name: &str, millis: u64) -> Edit {
        Self::behaviour(name, "ready_delay_ms", millis.into())
    }

    /// The server exits with status 1 as soon as it starts.
    pub fn crash_on_start(name: &str) -> Edit {
        Self::behaviour(name, "crash", true.into())
    }

    /// `build.py` exits with status 1.
    pub fn fail_build(name: &str) -> Edit {
        Self::behaviour(name, "fail_build", true.into())
    }

    /// `migrate.py` exits with status 1 and records nothing.
    pub fn fail_migration(name: &str) -> Edit {
        Self::behaviour(name, "fail_migration", true.into())
    }
}

/// The program of the services of [`readiness_kinds`]: `main.py KIND`, where KIND is
/// `worker` (works, listens on nothing), `notify` (sends READY=1 on `$NOTIFY_SOCKET`) or
/// `tcp` (accepts connections on `$PORT`). Its `behaviour.json` breaks it: `crash` (exits 3
/// at once), `never_ready` (notify: never sends READY=1), `port_offset` (tcp: listens on
/// `$PORT` plus this).
const KINDS_PROGRAM: &str = r#"import json, os, socket, sys, time
kind = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "behaviour.json")) as f:
    b = json.load(f)
if b.get("crash"):
    print("kinds: crashing on start (behaviour.json)", flush=True)
    sys.exit(3)
if kind == "worker":
    while True:
        print("working", flush=True)
        time.sleep(5)
if kind == "notify":
    if not b.get("never_ready"):
        time.sleep(0.2)
        addr = os.environ["NOTIFY_SOCKET"]
        if addr.startswith("@"):
            addr = chr(0) + addr[1:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(addr)
        s.send(b"READY=1")
    print("notify: up", flush=True)
    while True:
        time.sleep(60)
if kind == "job":
    print("job: ran", flush=True)
    sys.exit(0)
if kind == "tcp":
    port = int(os.environ["PORT"]) + int(b.get("port_offset", 0))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    print(f"tcp: listening on {port}", flush=True)
    while True:
        c, _ = srv.accept()
        c.close()
"#;

/// Services of every readiness kind but HTTP, added to a fixture for tests: `kinds-worker`
/// (`ready "none"`, no port), `kinds-notify` (`ready "notify"`, no port), `kinds-grpc`
/// (`ready "tcp"` on `port`), `kinds-probed` (`ready "exec"`: a Python one-liner that
/// connects to its port, `port + 1`) and the scheduled job [`JOB`], all in phase `phase`, run
/// by `python`. Returns the edits
/// that add their programs and the configuration text to append (a runtime `kinds` and the
/// five services).
pub fn readiness_kinds(python: &str, port: u16, phase: &str) -> (Vec<Edit>, String) {
    let mut edits = Vec::new();
    for name in KINDS.into_iter().chain([JOB]) {
        edits.push(Edit::Write {
            path: format!("services/{name}/main.py"),
            contents: KINDS_PROGRAM.to_owned(),
        });
        edits.push(Edit::Write {
            path: format!("services/{name}/behaviour.json"),
            contents: "{}\n".to_owned(),
        });
    }
    let py = kdl_string(python);
    let ph = kdl_string(phase);
    let probe = kdl_string(
        "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)",
    );
    let next = port.saturating_add(1);
    let config = format!(
        "runtime \"kinds\" {{ unit {{ restart \"on-failure\"; env PYTHONUNBUFFERED=\"1\"; }} }}\n\
         service \"kinds-worker\" {{ runtime \"kinds\"; phase {ph}; ready \"none\"; \
         unit {{ exec {py} \"{{current}}/main.py\" \"worker\"; }} }}\n\
         service \"kinds-notify\" {{ runtime \"kinds\"; phase {ph}; ready \"notify\"; \
         unit {{ exec {py} \"{{current}}/main.py\" \"notify\"; }} }}\n\
         service \"kinds-grpc\" {{ runtime \"kinds\"; phase {ph}; port {port}; ready \"tcp\"; \
         unit {{ exec {py} \"{{current}}/main.py\" \"tcp\"; env PORT=\"{{port}}\"; }} }}\n\
         service \"kinds-probed\" {{ runtime \"kinds\"; phase {ph}; port {next}; \
         ready \"exec\" {py} \"-c\" {probe} \"{{port}}\"; \
         unit {{ exec {py} \"{{current}}/main.py\" \"tcp\"; env PORT=\"{{port}}\"; }} }}\n\
         service \"{JOB}\" {{ runtime \"kinds\"; phase {ph}; schedule {schedule}; persistent #true; \
         unit {{ exec {py} \"{{current}}/main.py\" \"job\"; }} }}\n",
        schedule = kdl_string(JOB_SCHEDULE),
    );
    (edits, config)
}

/// The scheduled job [`readiness_kinds`] adds (not in [`KINDS`]: it is not
/// running between its runs): its `.timer` runs it at [`JOB_SCHEDULE`].
pub const JOB: &str = "kinds-job";

/// When [`JOB`] runs: never during a test.
pub const JOB_SCHEDULE: &str = "2099-01-01 03:00:00";

/// The services [`readiness_kinds`] adds.
pub const KINDS: [&str; 4] = ["kinds-worker", "kinds-notify", "kinds-grpc", "kinds-probed"];

impl Fixture {
    #[cfg(test)]
    /// Create branch `new` at `from_rev` (a branch, SHA or any revspec).
    pub(crate) fn branch_from(&self, new: &str, from_rev: &str) -> Result<(), FixtureError> {
        let repo = self.open()?;
        let commit = repo
            .revparse_single(from_rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(git(format!("resolve {from_rev}")))?;
        repo.branch(new, &commit, false)
            .map_err(git(format!("create branch {new}")))?;
        Ok(())
    }

    /// The service named `name`, if the fleet has it.
    pub fn service(&self, name: &str) -> Option<&FixtureService> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// A generated fleet of `count` services (`FixtureOptions::services`): `svc-0001`.. whose
/// phases cycle config, gateway, core, supporting; a service outside `config` depends on the
/// first service of the phase before its own; runtimes cycle node, node, node, go, python.
/// Ports start at `port_base`, or at [`GENERATED_PORT_BASE`].
pub(crate) fn generated_fleet(
    count: usize,
    port_base: Option<u16>,
) -> Result<Vec<FixtureService>, FixtureError> {
    if count == 0 {
        return Err(FixtureError::EmptyFleet);
    }
    let base = port_base.unwrap_or(GENERATED_PORT_BASE);
    let phases = &PHASES[1..];
    let digits = count.to_string().len().max(4);
    let mut first_of_phase: Vec<Option<String>> = vec![None; phases.len()];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("svc-{:0digits$}", i + 1);
        let p = i % phases.len();
        let runtime = ["node", "node", "node", "go", "python"][i % 5];
        let depends_on = if p == 0 {
            Vec::new()
        } else {
            first_of_phase[p - 1].iter().cloned().collect()
        };
        if first_of_phase[p].is_none() {
            first_of_phase[p] = Some(name.clone());
        }
        out.push(FixtureService {
            port: nth_port(base, i, count)?,
            phase: phases[p].to_owned(),
            runtime: runtime.to_owned(),
            depends_on,
            watch: if runtime == "node" && i % 4 == 1 {
                vec![SHARED.to_owned()]
            } else {
                Vec::new()
            },
            prisma: runtime == "node" && i % 10 == 2,
            name,
        });
    }
    Ok(out)
}

/// `config` with a `proxy "nginx"` node whose `check` is `check` appended, when one is asked
/// for (`FixtureOptions::proxy`).
pub(crate) fn with_proxy(mut config: String, check: Option<&[String]>) -> String {
    if let Some(check) = check {
        config.push_str("proxy \"nginx\" { unit \"fixture-proxy.service\"; check");
        for arg in check {
            let _ = write!(config, " {}", kdl_string(arg));
        }
        config.push_str("; watch \"deploy/nginx\" }\n");
    }
    config
}

/// [`Edit::Delete`]: unstage the file `path`, or every file under the directory `path`.
pub(crate) fn delete(index: &mut git2::Index, path: &str) -> Result<(), FixtureError> {
    let entries = entries_under(index, path);
    if entries.is_empty() {
        return Err(FixtureError::MissingPath {
            path: path.to_owned(),
        });
    }
    for e in entries {
        index
            .remove_path(Path::new(&entry_path(&e)))
            .map_err(git(format!("remove {path}")))?;
    }
    Ok(())
}

/// [`Edit::Rename`]: move the file `from`, or every file under the directory `from`, to `to`,
/// keeping contents and modes.
pub(crate) fn rename(index: &mut git2::Index, from: &str, to: &str) -> Result<(), FixtureError> {
    let entries = entries_under(index, from);
    if entries.is_empty() {
        return Err(FixtureError::MissingPath {
            path: from.to_owned(),
        });
    }
    for mut e in entries {
        let old = entry_path(&e);
        let new = format!("{to}{}", &old[from.len()..]);
        index
            .remove_path(Path::new(&old))
            .map_err(git(format!("remove {old}")))?;
        e.path = new.into_bytes();
        e.flags &= !0x0fff; // the name length lives in the low bits
        index.add(&e).map_err(git(format!("rename {old}")))?;
    }
    Ok(())
}

fn entry_path(e: &IndexEntry) -> String {
    String::from_utf8_lossy(&e.path).into_owned()
}

/// The entries at `path` exactly or under the directory `path`.
fn entries_under(index: &git2::Index, path: &str) -> Vec<IndexEntry> {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    index
        .iter()
        .filter(|e| {
            let p = entry_path(e);
            p == path || p.starts_with(&prefix)
        })
        .collect()
}
