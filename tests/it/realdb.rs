//! Real PostgreSQL and real nginx, run as units of the shared private systemd manager as they
//! would be on a host: database backups taken with `pg_dump` before migrations that `psql`
//! applies, restored by `rollback --database` and `backup restore`; nginx reloaded after a
//! deploy, and its failing `nginx -t` rolling a deploy back.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root its unit starts it through
//! `setpriv --reuid postgres` (the `postgres` system user the Debian package creates): the
//! user manager runs as root but `User=` is for system managers. One server per test binary,
//! one database per test. nginx runs as root like on a host, one instance per test.
//!
//! Skipped (with the reason printed) when the binaries are missing, unless
//! `MOORLINE_REQUIRE_SERVICES=1`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use moorline::demo::fixture::Edit;
use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;

use crate::deploy::{World, code, ok, short_ready_timeout, validated};
use crate::support;

/// Set to `1` to turn "PostgreSQL or nginx is not installed" into a test failure.
const REQUIRE_ENV: &str = "MOORLINE_REQUIRE_SERVICES";

const PG_UNIT: &str = "moorline-it-postgres.service";

fn skip(reason: &str) {
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{REQUIRE_ENV}=1 but {reason}"
    );
    eprintln!("SKIPPED: {reason}");
}

/// `name` on `$PATH`, in `/usr/sbin`, or in the newest `/usr/lib/postgresql/*/bin`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    let mut pg: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    pg.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.extend(pg.into_iter().rev());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// uid and gid of a system user, from `id`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, user]).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().parse().ok())?
    };
    Some((id("-u")?, id("-g")?))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: one server per test binary, a unit of the shared manager.

pub struct Postgres {
    port: u16,
    psql: PathBuf,
    _dir: PathBuf,
}

static POSTGRES: OnceLock<Result<Postgres, String>> = OnceLock::new();

/// The shared server, or `None` (after printing why) when PostgreSQL or systemd is missing.
fn postgres() -> Option<&'static Postgres> {
    let sandbox = support::sandbox()?;
    let pg = POSTGRES.get_or_init(|| {
        std::thread::spawn(move || start_postgres(sandbox))
            .join()
            .unwrap_or_else(|_| Err("the postgres harness thread panicked".to_owned()))
    });
    match pg {
        Ok(pg) => Some(pg),
        Err(reason) => {
            skip(reason);
            None
        }
    }
}

/// Removes the data directories of earlier test runs whose process is gone (the manager is
/// SIGKILLed with the test binary, so nothing else cleans them up).
fn remove_stale(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("realdb-pg-") {
            continue;
        }
        let owner = std::fs::read_to_string(path.join("owner.pid")).unwrap_or_default();
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn start_postgres(sandbox: &'static PrivateSystemd) -> Result<Postgres, String> {
    let missing = |what: &str| {
        format!("PostgreSQL is not installed ({what} not found; apt-get install postgresql)")
    };
    let initdb = find_tool("initdb").ok_or_else(|| missing("initdb"))?;
    let server = find_tool("postgres").ok_or_else(|| missing("postgres"))?;
    let psql = find_tool("psql").ok_or_else(|| missing("psql"))?;
    for t in ["pg_dump", "gzip", "gunzip", "bash"] {
        find_tool(t).ok_or_else(|| missing(t))?;
    }
    // As root, run the server as the `postgres` user (it refuses to run as root).
    let drop_to: Vec<String> = if moorline::files::is_root() {
        let setpriv = find_tool("setpriv").ok_or("setpriv (util-linux) not found")?;
        user_ids("postgres").ok_or("running as root and there is no `postgres` user")?;
        vec![
            setpriv.display().to_string(),
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--init-groups".into(),
            "--".into(),
        ]
    } else {
        Vec::new()
    };
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    remove_stale(&parent);
    let dir = tempfile::Builder::new()
        .prefix("realdb-pg-")
        .tempdir_in(&parent)
        .map_err(|e| format!("scratch dir: {e}"))?
        // Never dropped (a static); `remove_stale` removes it after this process is gone.
        .keep();
    std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
        .map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    if !drop_to.is_empty() {
        let (uid, gid) = user_ids("postgres").ok_or("no postgres user")?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let mut argv = drop_to.clone();
    argv.push(initdb.display().to_string());
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["-D", data.to_str().ok_or("non-UTF-8 path")?])
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .args(["--locale", "C.UTF-8"])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = support::free_port();
    let mut exec: Vec<String> = drop_to.clone();
    exec.extend([
        server.display().to_string(),
        "-D".into(),
        data.display().to_string(),
        "-k".into(),
        dir.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "fsync=off".into(),
        "-c".into(),
        "full_page_writes=off".into(),
    ]);
    let body = format!(
        "[Unit]\nDescription=PostgreSQL for moorline's integration tests\n\n\
         [Service]\nType=simple\nExecStart={}\n\
         # Fast shutdown.\nKillSignal=SIGINT\nTimeoutStopSec=10\n",
        exec.join(" ")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let sd = sandbox.connect().await.map_err(|e| e.to_string())?;
        support::install_unit(&sd, sandbox, PG_UNIT, &body).await;
        sd.start(PG_UNIT)
            .await
            .map_err(|e| e.to_string())?
            .check("start", PG_UNIT)
            .map_err(|e| e.to_string())?;
        if !support::wait_for_port(port).await {
            let st = sd.status(PG_UNIT).await.map_err(|e| e.to_string())?;
            return Err(format!(
                "PostgreSQL did not listen on 127.0.0.1:{port} within {:?}: {st:?}",
                support::wait()
            ));
        }
        Ok::<_, String>(())
    })?;
    let pg = Postgres {
        port,
        psql,
        _dir: dir,
    };
    // Accepting connections is not yet accepting queries (startup): retry a little.
    let deadline = std::time::Instant::now() + support::wait();
    while std::time::Instant::now() < deadline {
        let o = pg.psql_raw(&pg.url("postgres"), "SELECT 1");
        if o.status.success() {
            return Ok(pg);
        }
        std::thread::sleep(support::POLL);
    }
    Err("PostgreSQL listens but does not answer queries".to_owned())
}

impl Postgres {
    fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn psql_raw(&self, url: &str, sql: &str) -> std::process::Output {
        Command::new(&self.psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                url,
                "-c",
                sql,
            ])
            .output()
            .unwrap()
    }

    /// Runs SQL, panics on error, returns psql's unaligned tuples-only output.
    fn sql(&self, url: &str, sql: &str) -> String {
        let o = self.psql_raw(url, sql);
        assert!(
            o.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A fresh database (dropped first if a previous run left it).
    fn create_db(&self, name: &str) -> String {
        let admin = self.url("postgres");
        self.sql(&admin, &format!("DROP DATABASE IF EXISTS {name}"));
        self.sql(&admin, &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Tables, the columns of every table and every row of `orders` and `refunds`: what a
    /// restore must bring back exactly.
    fn snapshot(&self, url: &str) -> String {
        let mut out = self.sql(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default \
             FROM information_schema.columns WHERE table_schema = 'public' \
             ORDER BY table_name, ordinal_position",
        );
        for t in ["orders", "refunds"] {
            if self.has_table(url, t) {
                let _ = writeln!(out, "-- {t}");
                out.push_str(&self.sql(url, &format!("SELECT * FROM {t} ORDER BY id")));
            }
        }
        out
    }

    fn has_table(&self, url: &str, table: &str) -> bool {
        self.sql(
            url,
            &format!(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
        )
        .trim()
            == "1"
    }

    fn applied(&self, url: &str) -> Vec<String> {
        self.sql(url, "SELECT name FROM _migrations ORDER BY name")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Creates the database if it does not exist yet, then applies every
/// `prisma/migrations/*/migration.sql` not yet recorded in `_migrations`, each in one transaction
/// together with its record (what `prisma migrate deploy` does with `_prisma_migrations`). Runs
/// in the release directory of the service. One line: a KDL string (other than a `"""` one)
/// holds no newline.
const MIGRATE_SH: &str = concat!(
    r#"set -eu; "#,
    r#"if ! psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then "#,
    r#"psql -X -q -v ON_ERROR_STOP=1 "$(echo "$DATABASE_URL" | sed 's,/[^/]*$,/postgres,')" -c "CREATE DATABASE $(basename "$DATABASE_URL")"; "#,
    r#"echo "created the database"; fi; "#,
    r#"psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c 'CREATE TABLE IF NOT EXISTS _migrations (name text PRIMARY KEY)'; "#,
    r#"for d in prisma/migrations/*/; do n=$(basename "$d"); "#,
    r#"done_already=$(psql -X -q -t -A -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "SELECT 1 FROM _migrations WHERE name = '$n'"); "#,
    r#"if [ -z "$done_already" ]; then "#,
    r#"psql -X -q -v ON_ERROR_STOP=1 --single-transaction "$DATABASE_URL" -f "$d/migration.sql" -c "INSERT INTO _migrations (name) VALUES ('$n')"; "#,
    r#"echo "applied $n"; fi; done"#,
);

/// Exits 0 when every `prisma/migrations/*` is recorded in `_migrations`, 1 (naming the first
/// one) when one is pending or the database cannot say (what `prisma migrate status` does).
const MIGRATE_STATUS_SH: &str = concat!(
    r#"set -eu; for d in prisma/migrations/*/; do n=$(basename "$d"); "#,
    r#"found=$(psql -X -q -t -A -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "SELECT 1 FROM _migrations WHERE name = '$n'" || true); "#,
    r#"if [ -z "$found" ]; then echo "pending: $n"; exit 1; fi; done; echo "up to date""#,
);

/// Gives the node runtime of a `db_world` its `migrate-status`.
fn with_migrate_status(w: &World) {
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let m = text.find("    migrate \"sh\"").expect("db_world's migrate");
    let m_end = m + text[m..].find('\n').unwrap() + 1;
    let mut text = text;
    text.insert_str(
        m_end,
        &format!("    migrate-status \"sh\" \"-c\" #\"{MIGRATE_STATUS_SH}\"#\n"),
    );
    w.set_config(&text);
    validated(w);
}

/// Sets the backup block's `first-deploy` of a `db_world`.
fn first_deploy(w: &World, choice: &str) {
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let keep = text.find("        keep ").expect("db_world's keep");
    let mut text = text;
    text.insert_str(keep, &format!("        first-deploy \"{choice}\"\n"));
    w.set_config(&text);
    validated(w);
}

/// The ids of a JSON plan's actions.
fn action_ids(plan: &serde_json::Value) -> Vec<String> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The reason of action `id` in a JSON plan.
fn reason(plan: &serde_json::Value, id: &str) -> String {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {plan}"))["reason"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn plan_json(w: &World) -> serde_json::Value {
    let out = w.run(&["plan", "--env", "production", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The backup files in the World's backup directory.
fn backup_files(w: &World) -> Vec<String> {
    std::fs::read_dir(w.state.join("backups"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `run` and `restore` lines of production's backup block in `pakashop.kdl`, verbatim:
/// the tests check the commands Pakashop deploys with. They dump with `pg_dump | gzip` under
/// `pipefail`, and restore by recreating the `public` schema (objects created after the backup
/// are not in the dump) and feeding the dump to `psql -v ON_ERROR_STOP=1 --single-transaction`.
fn pakashop_backup_commands() -> (String, String) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pakashop.kdl")).unwrap();
    let line = |node: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(node) && l.contains("{backup}"))
            .unwrap_or_else(|| panic!("no `{node}` in pakashop.kdl's backup block"))
            .to_owned()
    };
    (line("run "), line("restore "))
}

/// A World whose production environment backs up and migrates the real database at `url`.
fn db_world(prefix: &str, port_base: u16, url: &str, keep: u32) -> Option<World> {
    let w = World::new(prefix, port_base)?;
    let env_file = w.state.parent().unwrap().join("production.env");
    std::fs::write(&env_file, format!("DATABASE_URL={url}\n")).unwrap();
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let start = text.find("    backup {").expect("production backup block");
    let end = start
        + text[start..]
            .find("\n    }\n")
            .expect("end of backup block")
        + 7;
    let (run, restore) = pakashop_backup_commands();
    let block = format!(
        "    env-file \"{}\"\n    backup {{\n        {run}\n        {restore}\n        keep {keep}\n    }}\n",
        env_file.display()
    );
    let mut text = format!("{}{block}{}", &text[..start], &text[end..]);
    let m = text
        .find("    migrate ")
        .expect("the node runtime's migrate");
    let m_end = m + text[m..].find('\n').unwrap();
    text.replace_range(
        m..m_end,
        &format!("    migrate \"sh\" \"-c\" #\"{MIGRATE_SH}\"# if-exists=\"prisma/schema.prisma\""),
    );
    w.set_config(&text);
    validated(&w);
    Some(w)
}

fn migration(name: &str, sql: &str) -> Edit {
    Edit::Write {
        path: format!("services/backend/prisma/migrations/{name}/migration.sql"),
        contents: sql.to_owned(),
    }
}

const ORDERS_0001: &str = "CREATE TABLE orders (\n    id integer PRIMARY KEY,\n    \
     customer text NOT NULL,\n    total_cents integer NOT NULL\n);\n";

const REFUNDS_0002: &str = "CREATE TABLE refunds (\n    id serial PRIMARY KEY,\n    \
     order_id integer NOT NULL REFERENCES orders (id),\n    amount_cents integer NOT NULL\n);\n\
     ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'paid';\n\
     UPDATE orders SET status = 'refunded' WHERE id = 2;\n\
     INSERT INTO refunds (order_id, amount_cents) VALUES (2, 990);\n";

fn state_json(w: &World) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(w.state.join("state.json")).unwrap()).unwrap()
}

fn sha256_file(path: &str) -> (u64, String) {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    (
        bytes.len() as u64,
        hex::encode(sha2::Sha256::digest(&bytes)),
    )
}

fn gunzip(path: &str) -> String {
    let o = Command::new("gunzip").args(["-c", path]).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postgres_backup_before_migration_then_rollback_database_restores_it() {
    let Some(pg) = postgres() else {
        return;
    };
    let url = pg.create_db("realdb_apply");
    let Some(w) = db_world("pg1", 26500, &url, 30) else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    let sd = w.sandbox.connect().await.unwrap();

    // First deploy: migration 0001 creates `orders`; the test seeds it.
    w.commit(
        "production",
        "orders",
        &[migration("0001_init", ORDERS_0001)],
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init"]);
    pg.sql(
        &url,
        "INSERT INTO orders VALUES (1, 'ada', 1250), (2, 'grace', 990), (3, 'linus', 4200)",
    );
    let before = pg.snapshot(&url);
    assert!(!pg.has_table(&url, "refunds"));

    // Migration 0002: the plan backs up first.
    let migrated = w.commit(
        "production",
        "refunds",
        &[migration("0002_refunds", REFUNDS_0002)],
    );
    let out = w.run(&["plan", "--env", "production", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    crate::deploy::assert_backup_before_migration(&plan);
    let log = ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init", "0002_refunds"], "{log}");
    assert!(pg.has_table(&url, "refunds"));
    let migrated_db = pg.snapshot(&url);
    assert_eq!(
        pg.sql(&url, "SELECT id, status FROM orders ORDER BY id"),
        "1|paid\n2|refunded\n3|paid\n"
    );
    assert_eq!(
        pg.sql(&url, "SELECT order_id, amount_cents FROM refunds"),
        "2|990\n"
    );

    // state.json records the backup this apply took, with the file's size and checksum; the
    // file is the database as it was before 0002.
    let st = state_json(&w);
    let backup_id = st["last_apply"]["backup"].as_str().unwrap().to_owned();
    let rec = st["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == backup_id.as_str())
        .unwrap()
        .clone();
    let path = rec["path"].as_str().unwrap();
    let (size, sha) = sha256_file(path);
    assert_eq!(rec["size"].as_u64(), Some(size));
    assert_eq!(rec["sha256"].as_str(), Some(sha.as_str()));
    assert!(rec["apply_id"].is_string());
    let dump = gunzip(path);
    assert!(dump.contains("CREATE TABLE public.orders"), "{dump}");
    assert!(dump.contains("grace"), "{dump}");
    assert!(!dump.contains("refunds"), "{dump}");

    // A later deploy fails and rolls the code back (exit 3); it migrates nothing, so it takes
    // no backup and the one before 0002 stays the apply's backup.
    w.commit("production", "crash", &[Edit::crash_on_start("backend")]);
    let out = w.run(&["apply", "--env", "production", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 3, "{err}");
    assert_eq!(
        w.live("production", "backend").as_deref(),
        Some(migrated.as_str())
    );
    assert_eq!(
        state_json(&w)["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["apply_id"].is_string())
            .max_by_key(|b| b["taken_at"].as_u64())
            .unwrap()["id"],
        backup_id.as_str()
    );

    // rollback --database: the database is exactly as before 0002.
    let log = ok(&w.run(&["rollback", "--env", "production", "--database", "--yes"]));
    assert!(log.contains(&format!("restored {backup_id}")), "{log}");
    assert!(!pg.has_table(&url, "refunds"));
    assert_eq!(pg.snapshot(&url), before);
    assert_eq!(pg.applied(&url), ["0001_init"]);
    w.all_ready(&sd).await;

    // The code still expects 0002: the next deploy (of a fixed backend) migrates again although
    // no migration file changed, and says why; afterwards the schema matches the code again.
    w.commit("production", "heal", &[Edit::heal("backend")]);
    let plan = plan_json(&w);
    let why = reason(&plan, "migrate:backend");
    assert_eq!(
        why,
        format!(
            "the database was restored from backup {backup_id} (taken before apply {}); migrations run again",
            rec["apply_id"].as_str().unwrap()
        )
    );
    crate::deploy::assert_backup_before_migration(&plan);
    let log = ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init", "0002_refunds"], "{log}");
    assert_eq!(pg.snapshot(&url), migrated_db);
    assert!(state_json(&w).get("database_restored").is_none());
    assert!(action_ids(&plan_json(&w)).is_empty());
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postgres_backup_restore_round_trip_and_retention() {
    let Some(pg) = postgres() else {
        return;
    };
    let url = pg.create_db("realdb_backups");
    let Some(w) = db_world("pg2", 26600, &url, 2) else {
        return;
    };
    // The database exists before moorline's first deploy: back it up then too.
    first_deploy(&w, "backup");
    let sd = w.sandbox.connect().await.unwrap();
    w.commit(
        "production",
        "orders",
        &[migration("0001_init", ORDERS_0001)],
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    let st = state_json(&w);
    let pinned = st["last_apply"]["backup"].as_str().unwrap().to_owned();
    let pinned_path = st["backups"][0]["path"].as_str().unwrap().to_owned();

    let take = || -> (String, String) {
        let log = ok(&w.run(&["backup", "--env", "production"]));
        let stdout = log
            .split("--- stdout\n")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let mut words = stdout.split_whitespace();
        (
            words.next().unwrap().to_owned(),
            words.next().unwrap().to_owned(),
        )
    };

    pg.sql(
        &url,
        "INSERT INTO orders VALUES (1, 'ada', 1250), (2, 'grace', 990)",
    );
    let at_b = pg.snapshot(&url);
    let (b, b_path) = take();
    let list = ok(&w.run(&["backup", "list", "--env", "production"]));
    assert!(list.contains(&b) && list.contains(&pinned), "{list}");

    // Writes after the backup, a new table included, are undone by the restore.
    pg.sql(&url, "DELETE FROM orders WHERE id = 1");
    pg.sql(&url, "INSERT INTO orders VALUES (9, 'mallory', 1)");
    pg.sql(&url, "CREATE TABLE junk (id integer PRIMARY KEY)");
    assert_ne!(pg.snapshot(&url), at_b);
    ok(&w.run(&["backup", "restore", &b, "--env", "production", "--yes"]));
    assert_eq!(pg.snapshot(&url), at_b);
    assert!(!pg.has_table(&url, "junk"));

    // keep 2: after two more backups only the newest and the last apply's remain, the others
    // deleted from disk.
    let (c, c_path) = take();
    let (d, d_path) = take();
    let st = state_json(&w);
    let kept: Vec<&str> = st["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains(&pinned.as_str()), "{kept:?}");
    assert!(kept.contains(&d.as_str()), "{kept:?}");
    assert!(!kept.contains(&b.as_str()) && !kept.contains(&c.as_str()));
    assert!(Path::new(&pinned_path).is_file());
    assert!(Path::new(&d_path).is_file());
    assert!(!Path::new(&b_path).exists(), "{b_path} deleted");
    assert!(!Path::new(&c_path).exists(), "{c_path} deleted");
    let files = std::fs::read_dir(Path::new(&d_path).parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".backup")
        })
        .count();
    assert_eq!(files, 2);

    // A backup whose file changed since it was taken is refused, and nothing is touched.
    pg.sql(&url, "INSERT INTO orders VALUES (10, 'eve', 5)");
    let now = pg.snapshot(&url);
    std::fs::write(&d_path, b"not the backup").unwrap();
    let out = w.run(&["backup", "restore", &d, "--env", "production", "--yes"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    assert_eq!(pg.snapshot(&url), now);
    w.stop_all(&sd).await;
}

/// What was reported: a code rollback and a database rollback, then a deploy that put the new
/// code on the old schema without migrating. Here with `migrate-status`, from a first deploy
/// whose database does not exist yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postgres_restore_then_deploy_migrates_again_and_a_first_deploy_needs_no_database() {
    let Some(pg) = postgres() else {
        return;
    };
    let url = pg.url("realdb_restore");
    pg.sql(
        &pg.url("postgres"),
        "DROP DATABASE IF EXISTS realdb_restore",
    );
    let Some(w) = db_world("pg3", 25100, &url, 30) else {
        return;
    };
    with_migrate_status(&w);
    short_ready_timeout(&w, 3);
    let sd = w.sandbox.connect().await.unwrap();

    // First deploy, no database yet: no backup (the plan says why); the migration creates it.
    w.commit(
        "production",
        "orders",
        &[migration("0001_init", ORDERS_0001)],
    );
    let plan = plan_json(&w);
    let ids = action_ids(&plan);
    assert!(ids.contains(&"migrate:backend".to_owned()), "{ids:?}");
    assert!(!ids.contains(&"backup".to_owned()), "{ids:?}");
    assert_eq!(
        plan["notes"][0],
        "first deploy: nothing to back up yet, so no backup is taken before the migrations of backend (the backup block's first-deploy \"skip\"; write first-deploy \"backup\" if the database already holds data)"
    );
    let log = ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init"], "{log}");
    assert!(backup_files(&w).is_empty(), "{:?}", backup_files(&w));
    assert_eq!(state_json(&w)["backups"], serde_json::json!([]));
    pg.sql(
        &url,
        "INSERT INTO orders VALUES (1, 'ada', 1250), (2, 'grace', 990), (3, 'linus', 4200)",
    );
    let v1_db = pg.snapshot(&url);
    // migrate-status runs on the host and finds nothing pending: nothing to do.
    assert!(action_ids(&plan_json(&w)).is_empty());

    // A backup that fails (the database URL is wrong) fails the deploy before any migration
    // and leaves no file behind.
    let env_file = w.state.parent().unwrap().join("production.env");
    let good_env = std::fs::read_to_string(&env_file).unwrap();
    w.commit(
        "production",
        "refunds",
        &[migration("0002_refunds", REFUNDS_0002)],
    );
    std::fs::write(
        &env_file,
        format!("DATABASE_URL={}\n", pg.url("realdb_nope")),
    )
    .unwrap();
    let out = w.run(&["apply", "--env", "production", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(matches!(code(&out), 1 | 3), "{err}");
    assert!(
        err.contains("the backup failed, so nothing was migrated"),
        "{err}"
    );
    assert!(err.contains("the incomplete file was removed"), "{err}");
    assert!(backup_files(&w).is_empty(), "{:?}", backup_files(&w));
    assert_eq!(pg.snapshot(&url), v1_db);
    std::fs::write(&env_file, good_env).unwrap();

    // Migration 0002, with a backup before it.
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init", "0002_refunds"]);
    let v2_db = pg.snapshot(&url);
    let backup_id = state_json(&w)["last_apply"]["backup"]
        .as_str()
        .unwrap()
        .to_owned();

    // Code rollback: it says the schema stays migrated.
    let log = ok(&w.run(&["rollback", "--env", "production", "--yes"]));
    assert!(log.contains("the schema stays migrated"), "{log}");
    assert!(
        log.contains(&format!(
            "`moorline rollback --env production --database` restores backup {backup_id}"
        )),
        "{log}"
    );
    assert_eq!(pg.snapshot(&url), v2_db);
    // Database rollback: the schema before 0002.
    ok(&w.run(&["rollback", "--env", "production", "--database", "--yes"]));
    assert_eq!(pg.snapshot(&url), v1_db);
    assert_eq!(
        state_json(&w)["database_restored"]["backup"],
        backup_id.as_str()
    );

    // The next deploy redeploys the new code and migrates it, for both reasons.
    let plan = plan_json(&w);
    let why = reason(&plan, "migrate:backend");
    assert!(
        why.starts_with(&format!(
            "the database was restored from backup {backup_id} (taken before apply "
        )),
        "{why}"
    );
    assert!(
        why.ends_with("; migrations run again; migrate-status reports pending migrations"),
        "{why}"
    );
    assert_eq!(
        plan["inputs"]["pending_migrations"],
        serde_json::json!(["backend"])
    );
    let text =
        String::from_utf8_lossy(&w.run(&["plan", "--env", "production"]).stdout).into_owned();
    assert!(
        text.contains("migrate-status reports pending migrations"),
        "{text}"
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init", "0002_refunds"]);
    assert_eq!(pg.snapshot(&url), v2_db);
    assert!(state_json(&w).get("database_restored").is_none());
    assert!(action_ids(&plan_json(&w)).is_empty());
    let status = ok(&w.run(&[
        "status",
        "--env",
        "production",
        "--migrations",
        "--format",
        "json",
    ]));
    assert!(!status.contains("\"pending\""), "{status}");

    // Behind moorline's back (a restore by hand): migrate-status alone brings the migration back.
    pg.sql(
        &url,
        "DROP TABLE refunds; ALTER TABLE orders DROP COLUMN status; \
         DELETE FROM _migrations WHERE name = '0002_refunds'",
    );
    let plan = plan_json(&w);
    assert_eq!(
        reason(&plan, "migrate:backend"),
        "migrate-status reports pending migrations"
    );
    ok(&w.run(&["apply", "--env", "production", "--yes"]));
    assert_eq!(pg.applied(&url), ["0001_init", "0002_refunds"]);
    assert!(pg.has_table(&url, "refunds"));
    w.all_ready(&sd).await;
    w.stop_all(&sd).await;
}

// ---------------------------------------------------------------------------------------------
// nginx: one instance per test, a unit of the shared manager.

struct Nginx {
    unit: String,
    port: u16,
    conf: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    upstream: u16,
}

impl Nginx {
    fn conf_text(&self, version: &str, extra: &str) -> String {
        let d = self.dir.display();
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n    access_log off;\n{extra}\
             \x20   client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   server {{\n        listen 127.0.0.1:{port};\n\
             \x20       location = /version {{ return 200 \"{version}\\n\"; }}\n\
             \x20       location = /worker {{ return 200 \"$pid\\n\"; }}\n\
             \x20       location / {{ proxy_pass http://127.0.0.1:{up}; }}\n    }}\n}}\n",
            port = self.port,
            up = self.upstream,
        )
    }

    fn write(&self, version: &str, extra: &str) {
        std::fs::write(&self.conf, self.conf_text(version, extra)).unwrap();
    }

    fn check_argv(&self) -> Vec<String> {
        vec![
            self.bin.display().to_string(),
            "-t".into(),
            "-q".into(),
            "-c".into(),
            self.conf.display().to_string(),
            "-e".into(),
            self.dir.join("error.log").display().to_string(),
        ]
    }
}

/// An nginx unit in front of the World's `backend`, and the World's proxy node pointing at it.
async fn nginx_world(prefix: &str, port_base: u16) -> Option<(World, Nginx, Systemd)> {
    let Some(bin) = find_tool("nginx") else {
        skip("nginx is not installed (apt-get install nginx)");
        return None;
    };
    let w = World::new(prefix, port_base)?;
    let sd = w.sandbox.connect().await.unwrap();
    let dir = w.state.parent().unwrap().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let ngx = Nginx {
        unit: format!("{prefix}-nginx.service"),
        port: support::free_port(),
        conf: dir.join("nginx.conf"),
        dir,
        bin,
        upstream: w.fx.service("backend").unwrap().port,
    };
    ngx.write("v1", "");
    let body = format!(
        "[Unit]\nDescription=nginx in front of the {prefix} fixture\n\n\
         [Service]\nType=simple\nExecStart={} -c {} -e {}\n\
         ExecReload=/bin/kill -HUP $MAINPID\nTimeoutStopSec=10\n",
        ngx.bin.display(),
        ngx.conf.display(),
        ngx.dir.join("error.log").display()
    );
    support::install_unit(&sd, w.sandbox, &ngx.unit, &body).await;
    sd.start(&ngx.unit)
        .await
        .unwrap()
        .check("start", &ngx.unit)
        .unwrap();
    assert!(
        support::wait_for_port(ngx.port).await,
        "nginx listens: {}",
        std::fs::read_to_string(ngx.dir.join("error.log")).unwrap_or_default()
    );
    let mut text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let _ = write!(text, "proxy \"nginx\" {{ unit \"{}\"; check", ngx.unit);
    for a in ngx.check_argv() {
        let _ = write!(text, " \"{a}\"");
    }
    text.push_str("; watch \"deploy/nginx\" }\n");
    w.set_config(&text);
    validated(&w);
    Some((w, ngx, sd))
}

/// `GET path` on 127.0.0.1:port over a fresh connection: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(support::wait())).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body.trim().to_owned())
}

/// Polls until `/version` says `want` and `/worker` names another worker than `old`: after a
/// reload the old worker may still take a connection or two while it shuts down gracefully.
async fn wait_reloaded(port: u16, want: &str, old: &str) -> (String, String) {
    let mut got = (String::new(), String::new());
    let deadline = tokio::time::Instant::now() + support::wait();
    while tokio::time::Instant::now() < deadline {
        got = (http_get(port, "/version").1, http_get(port, "/worker").1);
        if got.0 == want && got.1 != old {
            break;
        }
        tokio::time::sleep(support::POLL).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nginx_is_reloaded_after_a_deploy_and_a_failing_check_rolls_back() {
    let Some((w, ngx, sd)) = nginx_world("ngx1", 26700).await else {
        return;
    };
    short_ready_timeout(&w, support::failing_ready_timeout_secs());
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    // nginx proxies to the live backend.
    assert_eq!(http_get(ngx.port, "/health/ready").0, 200);
    assert_eq!(http_get(ngx.port, "/version").1, "v1");
    let master = sd.status(&ngx.unit).await.unwrap();
    let worker = http_get(ngx.port, "/worker").1;

    // A deploy that restarts backend reloads nginx (after `nginx -t`): the new configuration
    // is served by new workers under the same master.
    ngx.write("v2", "");
    let good = w.commit("main", "backend", &[Edit::touch_service("backend")]);
    let out = w.run(&["plan", "--env", "staging", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reload = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "reload-proxy")
        .unwrap_or_else(|| panic!("no reload-proxy in {plan}"))
        .clone();
    assert_eq!(reload["unit"], ngx.unit.as_str());
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let (version, new_worker) = wait_reloaded(ngx.port, "v2", &worker).await;
    assert_eq!(version, "v2");
    assert_ne!(new_worker, worker, "new workers");
    let now = sd.status(&ngx.unit).await.unwrap();
    assert_eq!(now.main_pid, master.main_pid, "same master");
    assert_eq!(now.invocation_id, master.invocation_id, "not restarted");
    assert_eq!(http_get(ngx.port, "/health/ready").0, 200);

    // A broken configuration: the check fails, the apply fails at reload-proxy and rolls the
    // switched service back (exit 3); nginx keeps serving the old configuration.
    ngx.write("v3", "    this_is_not_a_directive on;\n");
    w.commit("main", "backend again", &[Edit::touch_service("backend")]);
    let out = w.run(&["apply", "--env", "staging", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("reload-proxy"), "{err}");
    assert!(err.contains("proxy check"), "{err}");
    assert_eq!(w.live("staging", "backend").as_deref(), Some(good.as_str()));
    w.all_ready(&sd).await;
    let after = sd.status(&ngx.unit).await.unwrap();
    assert_eq!(after.active_state, "active");
    assert_eq!(after.main_pid, master.main_pid, "same master");
    assert_eq!(http_get(ngx.port, "/version").1, "v2");
    assert_eq!(http_get(ngx.port, "/health/ready").0, 200);
    assert_eq!(
        state_json(&w)["last_failure"]["outcome"],
        "rolled-back",
        "{err}"
    );

    let _ = sd.stop(&ngx.unit).await;
    w.stop_all(&sd).await;
}
