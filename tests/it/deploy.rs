//! `moorline apply` end to end: the real binary, a fixture repository built
//! with git2, the 19 fixture services under the shared private systemd
//! manager, checked through systemd itself and over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::fixture::{Edit, Fixture, FixtureOptions};
use moorline::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;

use crate::support;

pub struct World {
    pub _dir: tempfile::TempDir,
    pub fx: Fixture,
    pub sandbox: &'static PrivateSystemd,
    pub prefix: String,
    pub state: PathBuf,
}

impl World {
    /// A fixture whose units are named `{prefix}-{service}.service` and
    /// whose ports start at `port_base`, so tests sharing the manager
    /// never collide. `None`: no systemd here (skip).
    pub fn new(prefix: &str, port_base: u16) -> Option<Self> {
        let sandbox = support::sandbox()?;
        let dir = tempfile::tempdir().unwrap();
        let mut opts = FixtureOptions::new(dir.path().join("srv"));
        opts.port_base = Some(port_base);
        let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
        let text = std::fs::read_to_string(&fx.config_path).unwrap();
        let text = text.replace(
            "unit-name \"pakashop-{service}.service\"",
            &format!("unit-name \"{prefix}-{{service}}.service\""),
        );
        std::fs::write(&fx.config_path, text).unwrap();
        let state = dir.path().join("state");
        Some(Self {
            _dir: dir,
            fx,
            sandbox,
            prefix: prefix.to_owned(),
            state,
        })
    }

    pub fn unit(&self, service: &str) -> String {
        format!("{}-{service}.service", self.prefix)
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
        let config_home = self.sandbox.unit_dir();
        let config_home = config_home.parent().and_then(Path::parent).unwrap();
        c.args(["-c", self.fx.config_path.to_str().unwrap()])
            .args(["--state-dir", self.state.to_str().unwrap()])
            .args(["--systemd", "user"])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.sandbox.runtime_dir())
            .env("DBUS_SESSION_BUS_ADDRESS", self.sandbox.bus_address())
            .env("XDG_CONFIG_HOME", config_home)
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn commit(&self, branch: &str, msg: &str, edits: &[Edit]) -> String {
        self.fx.commit(branch, msg, edits).unwrap()
    }

    /// InvocationID of every service's unit (changes on each start).
    pub async fn invocations(&self, sd: &Systemd) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for s in &self.fx.services {
            let st = sd.status(&self.unit(&s.name)).await.unwrap();
            out.insert(s.name.clone(), st.invocation_id);
        }
        out
    }

    pub async fn all_ready(&self, sd: &Systemd) {
        for s in &self.fx.services {
            let st = sd.status(&self.unit(&s.name)).await.unwrap();
            assert_eq!(st.active_state, "active", "{} is {:?}", s.name, st);
            let p =
                moorline::health::probe(&format!("http://127.0.0.1:{}/health/ready", s.port)).await;
            assert!(p.ok, "{} not ready: {p:?}", s.name);
        }
    }

    pub fn live(&self, env: &str, service: &str) -> Option<String> {
        let link = self.fx.env_root(env).join(service).join("current");
        std::fs::read_link(link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub async fn stop_all(&self, sd: &Systemd) {
        for s in &self.fx.services {
            let _ = sd.stop(&self.unit(&s.name)).await;
        }
    }
}

pub fn ok(o: &Output) -> String {
    let s = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{s}");
    s
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_then_only_the_changed_service_restarts() {
    let Some(w) = World::new("d1", 21000) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();

    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    ok(&out);
    w.all_ready(&sd).await;
    let main = w.fx.head("main").unwrap();
    for s in &w.fx.services {
        assert_eq!(w.live("staging", &s.name).as_deref(), Some(main.as_str()));
    }
    let before = w.invocations(&sd).await;

    // Nothing changed: the plan is empty and --detailed-exitcode says 0.
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(code(&out), 0, "{}", ok(&out));

    let sha = w.commit("main", "backend tweak", &[Edit::touch_service("backend")]);
    let out = w.run(&["plan", "--env", "staging", "--detailed-exitcode"]);
    assert_eq!(code(&out), 2);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    ok(&out);
    let after = w.invocations(&sd).await;
    for s in &w.fx.services {
        let restarted = before[&s.name] != after[&s.name];
        assert_eq!(
            restarted,
            s.name == "backend",
            "{} restarted: {restarted}",
            s.name
        );
    }
    assert_eq!(w.live("staging", "backend").as_deref(), Some(sha.as_str()));
    assert_eq!(w.live("staging", "gateway").as_deref(), Some(main.as_str()));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}
