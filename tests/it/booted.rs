//! Production as it really runs: hosts booted from a Debian image with systemd as PID 1
//! (`moorline::testkit::booted`), moorline run on them as root over ssh with `--systemd
//! system`, the distribution's own `postgresql.service` and `nginx.service`, and real
//! power-offs and boots in between.
//!
//! Skipped (with the reason printed) when the harness cannot run here (not root, or
//! `mmdebstrap`/`systemd-nspawn` missing), unless `MOORLINE_REQUIRE_BOOTED=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::testkit::booted::{BootedHosts, Image};

/// Set to `1` to turn "booted hosts cannot run here" into a test failure.
const REQUIRE_ENV: &str = "MOORLINE_REQUIRE_BOOTED";

/// Where the moorline binary under test is mounted on every host.
const MOORLINE: &str = "/usr/local/bin/moorline";

fn skip(reason: &str) {
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{REQUIRE_ENV}=1 but {reason}"
    );
    eprintln!("SKIPPED: {reason}");
}

/// `k` booted hosts with the moorline binary under test at [`MOORLINE`], or `None` to skip.
fn booted(dir: &Path, k: usize) -> Option<BootedHosts> {
    let binds = [(
        PathBuf::from(env!("CARGO_BIN_EXE_moorline")),
        PathBuf::from(MOORLINE),
    )];
    match BootedHosts::start(dir, k, &binds) {
        Ok(hosts) => Some(hosts),
        Err(e) => {
            skip(&format!("no booted hosts: {:?}", miette::Report::new(e)));
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the image if it is not cached yet: `.ci/run` runs this first, so that the build
/// does not count against the deadlines of the tests that boot hosts.
#[test]
fn the_image_is_built_and_cached() {
    match Image::ensure() {
        Ok(image) => assert!(image.root().join("usr/lib/systemd/systemd").exists()),
        Err(e) => skip(&format!("no image: {:?}", miette::Report::new(e))),
    }
}

#[test]
fn a_booted_host_runs_systemd_as_pid_1_and_boots_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(mut hosts) = booted(dir.path(), 1) else {
        return;
    };
    // Over ssh as root, strict host-key checking on.
    let out = ok(&hosts
        .ssh(
            0,
            &[
                "sh",
                "-c",
                "cat /proc/1/comm; hostname; systemctl is-system-running; id -un",
            ],
        )
        .unwrap());
    assert_eq!(out, "systemd\nhost1\nrunning\nroot\n");
    ok(&hosts.ssh(0, &[MOORLINE, "--version"]).unwrap());
    let first = hosts.boot_id(0).unwrap();
    hosts
        .path(0, "/var/lib/kept")
        .parent()
        .map(std::fs::create_dir_all);
    std::fs::write(hosts.path(0, "/var/lib/kept"), "kept\n").unwrap();

    hosts.poweroff(0);
    assert!(hosts.host(0).pid1().is_none());
    let took = hosts.boot(0).unwrap();
    eprintln!("booted again in {:.2} s", took.as_secs_f64());
    let second = hosts.boot_id(0).unwrap();
    assert_ne!(first, second, "a boot gives a new boot id");
    let out = ok(&hosts.ssh(0, &["cat", "/var/lib/kept"]).unwrap());
    assert_eq!(out, "kept\n", "files survive a power-off");

    hosts.power_cut(0);
    hosts.boot(0).unwrap();
    assert_ne!(hosts.boot_id(0).unwrap(), second);
    ok(&hosts
        .ssh(0, &["systemctl", "is-active", "ssh.service"])
        .unwrap());
}

/// The Pakashop-shaped configuration the system-mode test deploys: node and python services
/// (small real programs) in four phases after PostgreSQL, as `pakashop`, with env-files, a
/// migration, a `pg_dump` backup and the nginx proxy. `{ready_timeout}` is filled in.
const CONFIG: &str = r#"project "pakashop" {
    unit-name "pakashop-{service}.service"
    keep-releases 5
}

environment "staging" {
    branch "main"
    root "/opt/pakashop"
    // Not secret: in the configuration, where plans show them. The password stays on the host.
    env PGHOST="127.0.0.1" PGUSER="pakashop" PGDATABASE="pakashop"
    env-file "/etc/pakashop/staging.env"
    backup {
        run "bash" "-c" "set -o pipefail; pg_dump --no-owner --no-privileges \"$DATABASE_URL\" | gzip > \"$1\"" "pg_dump" "{backup}"
        restore "bash" "-c" "set -o pipefail; (echo 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;'; gunzip -c \"$1\") | psql -v ON_ERROR_STOP=1 --single-transaction \"$DATABASE_URL\"" "psql" "{backup}"
        first-deploy "backup"
    }
}

phase "infrastructure" {
    unit "postgresql.service"
}
phase "config"
phase "gateway"
phase "core"
phase "supporting"

runtime "node" {
    unit {
        exec "/usr/bin/node" "{current}/src/index.js"
        env PORT="{port}" NODE_ENV="production"
        env-file "/etc/pakashop/{service}.env"
        user "pakashop"
        restart "on-failure"
    }
}

runtime "python" {
    migrate "psql" "-v" "ON_ERROR_STOP=1" "--single-transaction" "-f" "migrations/schema.sql" if-exists="migrations/schema.sql"
    unit {
        exec "/usr/bin/python3" "{current}/src/main.py"
        env PORT="{port}"
        env-file "/etc/pakashop/{service}.env"
        user "pakashop"
        restart "on-failure"
    }
}

service "config" {
    runtime "node"
    port 3085
    phase "config"
    unit { description "Pakashop Config Service (feature flags)"; }
}

service "gateway" {
    runtime "node"
    port 8000
    phase "gateway"
    depends-on "config"
    unit { description "Pakashop API Gateway"; }
}

service "backend" {
    runtime "python"
    port 3080
    phase "core"
    depends-on "gateway"
    ready-timeout "{ready_timeout}s"
    unit { description "Pakashop Backend API"; }
}

service "notifications" {
    runtime "python"
    port 3090
    phase "supporting"
    unit { description "Pakashop Notifications"; }
}

proxy "nginx" {
    unit "nginx.service"
    check "nginx" "-t"
    watch "deploy/nginx"
}
"#;

/// A node service: answers its health endpoints and `/version`.
const NODE_SERVICE: &str = r"const http = require('http');
const VERSION = '1';
const port = Number(process.env.PORT);
http.createServer((req, res) => {
  const ok = req.url === '/health' || req.url === '/health/ready' || req.url === '/version';
  res.writeHead(ok ? 200 : 404);
  res.end(VERSION + '\n');
}).listen(port, '127.0.0.1', () => {
  console.log(`${process.env.SERVICE} listening on ${port} as uid ${process.getuid()}`);
});
";

/// A python service: ready only when its env-file was read (`SERVICE`, and `DATABASE_URL` for
/// the backend); `READY` is what its readiness answers then (the failing-health scenario sets
/// 503).
const PYTHON_SERVICE: &str = r#"import http.server, os
VERSION = "1"
READY = 200
PORT = int(os.environ["PORT"])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health/ready":
            env_file_read = "SERVICE" in os.environ and (
                os.environ["SERVICE"] != "backend" or "DATABASE_URL" in os.environ)
            code = READY if env_file_read else 503
        elif self.path in ("/health", "/version"):
            code = 200
        else:
            code = 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write((VERSION + "\n").encode())

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
print(f"{os.environ['SERVICE']} listening on {PORT} as uid {os.getuid()}", flush=True)
server.serve_forever()
"#;

const SERVICES: [(&str, &str); 4] = [
    ("config", "node"),
    ("gateway", "node"),
    ("backend", "python"),
    ("notifications", "python"),
];

/// The database password (a secret: it must never show in moorline's output).
const DB_PASSWORD: &str = "s3cret-db-pass";

/// The repository on the host, written from the machine through the host's layer.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn git(&self, args: &[&str]) {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=Pakashop",
                "-c",
                "user.email=ops@pakashop.test",
            ])
            .args(args)
            .output()
            .unwrap();
        ok(&out);
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path)).unwrap()
    }

    fn edit(&self, path: &str, from: &str, to: &str) {
        let text = self.read(path);
        assert!(text.contains(from), "{path}: no {from:?}");
        self.write(path, &text.replacen(from, to, 1));
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }
}

/// One booted host and the Pakashop repository on it.
struct Shop {
    hosts: BootedHosts,
    repo: Repo,
    _dir: tempfile::TempDir,
}

impl Shop {
    /// moorline on the host, as root over ssh, with the system manager.
    fn moorline(&self, args: &[&str]) -> Output {
        self.moorline_env(&[], args)
    }

    fn moorline_env(&self, env: &[&str], args: &[&str]) -> Output {
        // A hardened root shell's umask: what moorline writes for the services must not
        // depend on it.
        let mut words = vec!["sh", "-c", "umask 077 && exec \"$@\"", "sh", "env"];
        words.extend_from_slice(env);
        words.extend_from_slice(&[
            MOORLINE,
            "-c",
            "/srv/shop/moorline.kdl",
            "--systemd",
            "system",
        ]);
        words.extend_from_slice(args);
        let out = self.hosts.ssh(0, &words).unwrap();
        let all = text(&out);
        assert!(
            !all.contains(DB_PASSWORD),
            "a secret in moorline's output:\n{all}"
        );
        out
    }

    /// A shell script run on the host as root (through `nsenter`: checks and setup are not
    /// what is tested, and an ssh round trip costs about 300 ms).
    fn sh(&self, script: &str) -> Output {
        self.hosts.exec(0, &["sh", "-c", script]).unwrap()
    }

    /// What `curl` gets from `url` on the host (empty when it fails).
    fn get(&self, url: &str) -> String {
        let out = self
            .hosts
            .ssh(0, &["curl", "-sf", "--max-time", "5", url])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn unit_property(&self, service: &str, property: &str) -> String {
        let unit = format!("pakashop-{service}.service");
        let out = self
            .hosts
            .exec(0, &["systemctl", "show", "--value", "-p", property, &unit])
            .unwrap();
        ok(&out).trim().to_owned()
    }

    /// Every service active, its main process running as `pakashop`, its unit enabled.
    fn all_running_as_pakashop(&self) {
        let uid = ok(&self.hosts.exec(0, &["id", "-u", "pakashop"]).unwrap());
        for (svc, _) in SERVICES {
            assert_eq!(self.unit_property(svc, "ActiveState"), "active", "{svc}");
            assert_eq!(self.unit_property(svc, "UnitFileState"), "enabled", "{svc}");
            let pid = self.unit_property(svc, "MainPID");
            let status = ok(&self
                .hosts
                .exec(0, &["cat", &format!("/proc/{pid}/status")])
                .unwrap());
            let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(
                uids.split_whitespace().skip(1).all(|u| u == uid.trim()),
                "{svc} runs as {uids}, not pakashop ({uid})"
            );
        }
    }

    /// The monotonic times at which the services became active, in phase order.
    fn active_since(&self) -> Vec<(String, u64)> {
        SERVICES
            .iter()
            .map(|(svc, _)| {
                let t = self.unit_property(svc, "ActiveEnterTimestampMonotonic");
                ((*svc).to_owned(), t.parse::<u64>().unwrap())
            })
            .collect()
    }

    fn live(&self, service: &str) -> String {
        let out = ok(&self
            .hosts
            .ssh(
                0,
                &["readlink", &format!("/opt/pakashop/{service}/current")],
            )
            .unwrap());
        out.trim().rsplit('/').next().unwrap().to_owned()
    }

    fn head(&self) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.repo.dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        ok(&out).trim().to_owned()
    }
}

/// What a host needs before moorline's first deploy (docs/operations.md, "First deploy to a
/// real server"): the service user, the env-files, the database and its role, nginx pointed
/// at the repository's proxy files.
const HOST_SETUP: &str = r#"set -eu
useradd --system --no-create-home --shell /usr/sbin/nologin pakashop
install -d -m 0755 /etc/pakashop
umask 077
cat > /etc/pakashop/staging.env <<ENV
DATABASE_URL=postgresql://pakashop:@PW@@127.0.0.1:5432/pakashop
PGPASSWORD=@PW@
ENV
for s in config gateway notifications; do echo "SERVICE=$s" > /etc/pakashop/$s.env; done
printf 'SERVICE=backend\nDATABASE_URL=postgresql://pakashop:@PW@@127.0.0.1:5432/pakashop\n' > /etc/pakashop/backend.env
runuser -u postgres -- psql -q -c "CREATE ROLE pakashop LOGIN PASSWORD '@PW@'"
runuser -u postgres -- createdb -O pakashop pakashop
umask 022
echo 'include /srv/shop/deploy/nginx/*.conf;' > /etc/nginx/conf.d/pakashop.conf
"#;

#[test]
fn system_mode_on_a_booted_host_deploys_reboots_and_rolls_back() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(hosts) = booted(dir.path(), 1) else {
        return;
    };
    let repo = Repo {
        dir: hosts.path(0, "/srv/shop"),
    };
    let shop = Shop {
        hosts,
        repo,
        _dir: dir,
    };
    let started = std::time::Instant::now();
    let timeout = moorline::testkit::deadline::failing_ready_timeout_secs().to_string();
    std::fs::create_dir_all(&shop.repo.dir).unwrap();
    shop.repo.git(&["init", "-q", "-b", "main"]);
    shop.repo
        .write("moorline.kdl", &CONFIG.replace("{ready_timeout}", &timeout));
    for (svc, runtime) in SERVICES {
        if runtime == "node" {
            shop.repo
                .write(&format!("services/{svc}/src/index.js"), NODE_SERVICE);
        } else {
            shop.repo
                .write(&format!("services/{svc}/src/main.py"), PYTHON_SERVICE);
        }
    }
    shop.repo.write(
        "services/backend/migrations/schema.sql",
        "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, total integer NOT NULL);\n",
    );
    shop.repo.write(
        "deploy/nginx/shop.conf",
        "server {\n    listen 8080;\n    location / { proxy_pass http://127.0.0.1:8000; }\n}\n",
    );
    shop.repo.commit("pakashop");

    // Host facts first: no `pakashop` user, no env-files. `apply` refuses before any change.
    let out = shop.moorline(&["apply", "--env", "staging", "--yes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("moorline::host::no_such_user"), "{all}");
    assert!(all.contains("moorline::host::env_file_missing"), "{all}");
    assert!(
        !shop.hosts.path(0, "/opt/pakashop").exists(),
        "nothing may change"
    );
    assert!(
        !shop
            .hosts
            .path(0, "/etc/systemd/system/pakashop-config.service")
            .exists()
    );

    ok(&shop.sh(&HOST_SETUP.replace("@PW@", DB_PASSWORD)));

    // A world-readable env-file and a port held by another process are refused too, both at
    // once.
    ok(&shop.sh("chmod 0644 /etc/pakashop/backend.env"));
    ok(&shop.sh(
        "systemd-run --quiet --unit=squatter python3 -m http.server 3080 --bind 127.0.0.1 && \
         for i in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:3080/ && exit 0; \
         sleep 0.05; done; exit 1",
    ));
    let out = shop.moorline(&["apply", "--env", "staging", "--yes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("moorline::host::env_file_readable"), "{all}");
    assert!(all.contains("moorline::host::port_taken"), "{all}");
    assert!(
        !shop.hosts.path(0, "/opt/pakashop").exists(),
        "nothing may change"
    );
    ok(&shop.sh("chmod 0600 /etc/pakashop/backend.env && systemctl stop squatter.service"));

    // A first deploy: backup (first-deploy "backup"), migration, four phases, nginx reloaded.
    let first = shop.head();
    ok(&shop.moorline(&["apply", "--env", "staging", "--yes"]));
    shop.all_running_as_pakashop();
    assert_eq!(
        shop.get("http://127.0.0.1:8080/version"),
        "1",
        "nginx proxies to the gateway"
    );
    ok(&shop.sh("runuser -u postgres -- psql -d pakashop -tAc 'SELECT count(*) FROM orders'"));
    let backups = |shop: &Shop| {
        let out = ok(&shop.sh("ls /var/lib/moorline/pakashop/staging/backups | grep -c ."));
        out.trim().parse::<usize>().unwrap()
    };
    assert_eq!(backups(&shop), 1, "the first deploy took a backup");
    ok(&shop.sh(
        "f=$(ls -d /var/lib/moorline/pakashop/staging/backups/* | head -n 1); \
         gunzip -c \"$f\" | grep -q 'PostgreSQL database dump'",
    ));
    // Units in the system manager's directory, ordered by phase and depends-on.
    let unit = std::fs::read_to_string(
        shop.hosts
            .path(0, "/etc/systemd/system/pakashop-backend.service"),
    )
    .unwrap();
    assert!(unit.contains("User=pakashop"), "{unit}");
    assert!(unit.contains("After=pakashop-gateway.service"), "{unit}");

    // Release files: readable by pakashop, writable by root only; the env-files, the state
    // and the backups not readable by pakashop.
    let as_pakashop = |cmd: &str| shop.sh(&format!("runuser -u pakashop -- sh -c '{cmd}'"));
    ok(&as_pakashop(
        "cat /opt/pakashop/backend/current/src/main.py >/dev/null",
    ));
    for denied in [
        "touch /opt/pakashop/backend/current/src/main.py",
        "cat /etc/pakashop/staging.env",
        "cat /etc/pakashop/backend.env",
        "ls /var/lib/moorline/pakashop/staging",
    ] {
        let out = as_pakashop(denied);
        assert!(
            !out.status.success(),
            "pakashop may not: {denied}\n{}",
            text(&out)
        );
    }

    // An update: a new version, a migration, a new proxy location.
    shop.repo.edit(
        "services/backend/src/main.py",
        "VERSION = \"1\"",
        "VERSION = \"2\"",
    );
    shop.repo.write(
        "services/backend/migrations/schema.sql",
        "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, total integer NOT NULL);\n\
         ALTER TABLE orders ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'IDR';\n",
    );
    shop.repo.write(
        "deploy/nginx/shop.conf",
        "server {\n    listen 8080;\n    location /api/ { proxy_pass http://127.0.0.1:3080/; }\n    \
         location / { proxy_pass http://127.0.0.1:8000; }\n}\n",
    );
    shop.repo.commit("backend 2, orders.currency, /api");
    let second = shop.head();
    ok(&shop.moorline(&["apply", "--env", "staging", "--yes"]));
    assert_eq!(shop.live("backend"), second);
    assert_eq!(
        shop.live("config"),
        first,
        "only what changed is redeployed"
    );
    assert_eq!(
        shop.get("http://127.0.0.1:8080/api/version"),
        "2",
        "nginx was reloaded"
    );
    assert_eq!(backups(&shop), 2, "a backup before the migration");
    ok(&shop
        .sh("runuser -u postgres -- psql -d pakashop -tAc 'SELECT currency FROM orders LIMIT 0'"));

    // A failing health check: rolled back automatically, the old release live and ready.
    shop.repo.edit(
        "services/backend/src/main.py",
        "VERSION = \"2\"",
        "VERSION = \"3\"",
    );
    shop.repo
        .edit("services/backend/src/main.py", "READY = 200", "READY = 503");
    shop.repo.commit("backend 3, never ready");
    let out = shop.moorline(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(shop.live("backend"), second);
    assert_eq!(shop.get("http://127.0.0.1:3080/version"), "2");
    shop.all_running_as_pakashop();

    // Healed, deployed, then rolled back by hand.
    shop.repo
        .edit("services/backend/src/main.py", "READY = 503", "READY = 200");
    shop.repo.commit("backend 3, ready");
    let third = shop.head();
    ok(&shop.moorline(&["apply", "--env", "staging", "--yes"]));
    assert_eq!(shop.live("backend"), third);
    ok(&shop.moorline(&["rollback", "--env", "staging", "--yes"]));
    assert_eq!(shop.live("backend"), second);
    assert_eq!(shop.get("http://127.0.0.1:3080/version"), "2");
    ok(&shop.moorline(&["status", "--env", "staging", "--check"]));

    // Logs from the system journal.
    let out = ok(&shop.moorline(&[
        "logs",
        "--env",
        "staging",
        "--service",
        "backend",
        "--lines",
        "50",
    ]));
    assert!(out.contains("backend listening on 3080 as uid"), "{out}");
    eprintln!(
        "system mode: deploys and rollbacks took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    reboots(shop, &second);
}

/// Power-offs and boots with no moorline command in between, then one in the middle of an
/// apply.
fn reboots(mut shop: Shop, live: &str) {
    let started = std::time::Instant::now();
    let before = shop.hosts.boot_id(0).unwrap();
    shop.hosts.poweroff(0);
    let took = shop.hosts.boot(0).unwrap();
    eprintln!("rebooted in {:.2} s", took.as_secs_f64());
    assert_ne!(shop.hosts.boot_id(0).unwrap(), before);
    shop.all_running_as_pakashop();
    let since = shop.active_since();
    for pair in since.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "not in phase order at boot: {since:?}"
        );
    }
    assert_eq!(shop.live("backend"), live);
    ok(&shop.moorline(&["status", "--env", "staging", "--check"]));
    eprintln!("reboot: {:.1} s", started.elapsed().as_secs_f64());

    // The power fails in the middle of an apply: moorline is killed right after it recorded
    // its first release switch, then the host loses power. After the boot (a new boot id:
    // nothing recorded before it still runs), `apply --resume` finishes the apply.
    let started = std::time::Instant::now();
    shop.repo.edit(
        "services/backend/src/main.py",
        "VERSION = \"3\"",
        "VERSION = \"4\"",
    );
    shop.repo.edit(
        "services/notifications/src/main.py",
        "VERSION = \"1\"",
        "VERSION = \"4\"",
    );
    shop.repo.commit("backend and notifications 4");
    let fourth = shop.head();
    interrupted_by_a_power_cut(&mut shop);
    ok(&shop.moorline(&["apply", "--resume", "--env", "staging", "--yes"]));
    assert_eq!(shop.live("backend"), fourth);
    assert_eq!(shop.live("notifications"), fourth);
    assert_eq!(shop.get("http://127.0.0.1:3090/version"), "4");
    shop.all_running_as_pakashop();
    ok(&shop.moorline(&["status", "--env", "staging", "--check"]));

    // Again, and this time the interrupted apply is rolled back after the boot.
    shop.repo.edit(
        "services/backend/src/main.py",
        "VERSION = \"4\"",
        "VERSION = \"5\"",
    );
    shop.repo.edit(
        "services/notifications/src/main.py",
        "VERSION = \"4\"",
        "VERSION = \"5\"",
    );
    shop.repo.commit("backend and notifications 5");
    interrupted_by_a_power_cut(&mut shop);
    let out = ok(&shop.moorline(&["rollback", "--env", "staging", "--yes"]));
    assert!(
        out.contains("rolled back from its journal")
            || text(&shop.moorline(&["status", "--env", "staging"])).contains(&fourth[..7]),
        "{out}"
    );
    assert_eq!(shop.live("backend"), fourth);
    assert_eq!(shop.live("notifications"), fourth);
    assert_eq!(shop.get("http://127.0.0.1:3080/version"), "4");
    shop.all_running_as_pakashop();
    ok(&shop.moorline(&["status", "--env", "staging", "--check"]));
    eprintln!(
        "reboots in the middle of applies: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Starts an apply that is killed right after its first release switch is recorded, cuts the
/// host's power and boots it again.
fn interrupted_by_a_power_cut(shop: &mut Shop) {
    let out = shop.moorline_env(
        &["MOORLINE_TEST_CRASH_AFTER_EVENT=switch"],
        &["apply", "--env", "staging", "--yes"],
    );
    assert!(
        !out.status.success(),
        "the apply was to be killed: {}",
        text(&out)
    );
    let before = shop.hosts.boot_id(0).unwrap();
    shop.hosts.power_cut(0);
    shop.hosts.boot(0).unwrap();
    assert_ne!(shop.hosts.boot_id(0).unwrap(), before);
}

/// The fleet on booted hosts as Pakashop runs it: the controller (this machine) plans and rolls
/// out over ssh as root, each host's moorline drives its system manager. A host that lacks the
/// service user shows it in the fleet plan, and the apply refuses before any host changes; then
/// a rolling deploy, a failing canary rolled back, and a controller killed mid-rollout resumed
/// or rolled back from its fleet journal, with no workaround.
#[test]
fn the_fleet_rolls_out_over_booted_hosts_with_the_system_manager() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(hosts) = booted(&dir.path().join("hosts"), 2) else {
        return;
    };
    let started = std::time::Instant::now();
    let fleet_repo = "/var/lib/moorline-fleet/pakashop/staging/repo";
    for i in 0..2 {
        let setup = HOST_SETUP
            .replace("@PW@", DB_PASSWORD)
            .replace("/srv/shop", fleet_repo);
        ok(&hosts.exec(i, &["sh", "-c", &setup]).unwrap());
    }
    ok(&hosts.exec(1, &["userdel", "pakashop"]).unwrap());

    let repo = Repo {
        dir: dir.path().join("repo"),
    };
    std::fs::create_dir_all(&repo.dir).unwrap();
    repo.git(&["init", "-q", "-b", "main"]);
    let timeout = moorline::testkit::deadline::failing_ready_timeout_secs().to_string();
    let config = CONFIG.replace("{ready_timeout}", &timeout).replacen(
        "    branch \"main\"\n",
        "    branch \"main\"\n    host \"host1\" user=\"root\"\n    host \"host2\" user=\"root\"\n    \
         rollout { canary 1; batches \"100%\"; }\n",
        1,
    );
    repo.write("moorline.kdl", &config);
    for (svc, runtime) in SERVICES {
        if runtime == "node" {
            repo.write(&format!("services/{svc}/src/index.js"), NODE_SERVICE);
        } else {
            repo.write(&format!("services/{svc}/src/main.py"), PYTHON_SERVICE);
        }
    }
    repo.write(
        "services/backend/migrations/schema.sql",
        "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, total integer NOT NULL);\n",
    );
    repo.write(
        "deploy/nginx/shop.conf",
        "server {\n    listen 8080;\n    location / { proxy_pass http://127.0.0.1:8000; }\n}\n",
    );
    repo.commit("pakashop");
    let ctrl = dir.path().join("ctrl");
    let controller = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
            .args(["-c", repo.dir.join("moorline.kdl").to_str().unwrap()])
            .args(["--state-dir", ctrl.to_str().unwrap()])
            .args(["--ssh-config", hosts.ssh_config().to_str().unwrap()])
            .args(["--systemd", "system"])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .env_remove("MOORLINE_HOST")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            !text(&out).contains(DB_PASSWORD),
            "a secret in moorline's output:\n{}",
            text(&out)
        );
        out
    };
    let live = |i: usize, service: &str| {
        let out = hosts
            .exec(
                i,
                &["readlink", &format!("/opt/pakashop/{service}/current")],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let running_as_pakashop = |i: usize| {
        for (svc, _) in SERVICES {
            let unit = format!("pakashop-{svc}.service");
            let out = ok(&hosts
                .exec(
                    i,
                    &[
                        "sh",
                        "-c",
                        &format!(
                            "systemctl is-active {unit} && ps -o user= -p \
                             \"$(systemctl show --value -p MainPID {unit})\""
                        ),
                    ],
                )
                .unwrap());
            assert_eq!(out, "active\npakashop\n", "{} {svc}", hosts.host(i).name());
        }
    };

    // The fleet plan shows what host2 lacks; the apply refuses before any host changes.
    let out = controller(&["plan", "--env", "staging"]);
    let plan = ok(&out);
    assert!(plan.contains("Host facts"), "{}", text(&out));
    assert!(
        plan.contains("user `pakashop` does not exist on host2 (moorline::host::no_such_user)"),
        "{plan}"
    );
    assert!(!plan.contains("host1: "), "host1 lacks nothing: {plan}");
    let out = controller(&["apply", "--env", "staging", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("moorline::fleet::host_facts"),
        "{}",
        text(&out)
    );
    for i in 0..2 {
        assert!(
            !hosts.path(i, "/opt/pakashop").exists(),
            "nothing may change"
        );
    }

    // Fixed: a rolling deploy, canary first.
    ok(&hosts
        .exec(
            1,
            &[
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "pakashop",
            ],
        )
        .unwrap());
    let first = {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo.dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        ok(&out).trim().to_owned()
    };
    ok(&controller(&["apply", "--env", "staging", "--yes"]));
    for i in 0..2 {
        running_as_pakashop(i);
        assert_eq!(live(i, "backend"), first);
    }
    ok(&controller(&["status", "--env", "staging", "--check"]));

    // A canary that never becomes ready: rolled back there, host2 never touched.
    repo.edit("services/backend/src/main.py", "READY = 200", "READY = 503");
    repo.commit("backend never ready");
    let out = controller(&["apply", "--env", "staging", "--yes"]);
    assert!(!out.status.success(), "{}", text(&out));
    for i in 0..2 {
        assert_eq!(live(i, "backend"), first, "{}", text(&out));
        running_as_pakashop(i);
    }
    ok(&controller(&["status", "--env", "staging", "--check"]));

    // The controller is killed in the middle of a rollout (SIGKILL right after its Nth fleet
    // journal record; a 2-host rollout records 1 begin, 2 batch, 3 host1 started, 4 host1
    // finished, 5 batch, 6 host2 started, 7 host2 finished, 8 end): after the canary,
    // `apply --resume` finishes it; after host2 too, `rollback` undoes it on both.
    let head = |repo: &Repo| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo.dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        ok(&out).trim().to_owned()
    };
    let mut previous = first;
    for (record, undo) in [(4, false), (7, true)] {
        let version = format!("VERSION = \"{record}\"");
        let now = repo.read("services/backend/src/main.py");
        let at = now.find("VERSION = ").unwrap();
        let end = at + now[at..].find('\n').unwrap();
        repo.write(
            "services/backend/src/main.py",
            &format!("{}{version}{}", &now[..at], &now[end..])
                .replace("READY = 503", "READY = 200"),
        );
        repo.commit(&format!("backend {record}"));
        let target = head(&repo);
        let killed = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
            .args(["-c", repo.dir.join("moorline.kdl").to_str().unwrap()])
            .args(["--state-dir", ctrl.to_str().unwrap()])
            .args(["--ssh-config", hosts.ssh_config().to_str().unwrap()])
            .args(["--systemd", "system", "apply", "--env", "staging", "--yes"])
            .env("MOORLINE_TEST_FLEET_CRASH_AFTER", record.to_string())
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            killed.status.code(),
            None,
            "killed at record {record}: {}",
            text(&killed)
        );
        let out = if undo {
            controller(&["rollback", "--env", "staging", "--yes"])
        } else {
            controller(&["apply", "--resume", "--env", "staging", "--yes"])
        };
        ok(&out);
        let want = if undo { previous.clone() } else { target };
        for i in 0..2 {
            assert_eq!(
                live(i, "backend"),
                want,
                "after record {record}: {}",
                text(&out)
            );
            running_as_pakashop(i);
        }
        previous = want;
    }
    ok(&controller(&["status", "--env", "staging", "--check"]));
    eprintln!(
        "fleet on booted hosts: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
