//! A runtime's `migrate-status` command, run in one release of a service:
//! exit 0 is "up to date", another exit code "pending", a command that
//! cannot run (or times out) "failed". Read-only: `status --migrations`
//! shows the result, `plan` (on the host) plans `migrate` where migrations
//! are pending.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::config::{Config, Environment, Runtime, Service};
use crate::plan::MigrateCheck;
use crate::process::{self, Run};
use crate::release::Paths;
use crate::state::State;
use crate::template::{self, Vars};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MigrationState {
    /// `migrate-status` exited 0.
    UpToDate,
    /// It exited non-zero: migrations are pending (or the check itself failed).
    Pending,
    /// It could not be run at all, or timed out.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Migrations {
    pub(crate) state: MigrationState,
    pub(crate) command: Vec<String>,
    pub(crate) exit_code: Option<i32>,
    /// The command's output (stdout and stderr), shown when it is not up to date.
    pub(crate) output: String,
}

/// Runs the runtime's `migrate-status` in `release_dir` when its migrate
/// step applies there (`None`: no `migrate-status`, or the `if-exists`
/// file is not in that release). Output goes to `log`.
pub(crate) async fn check(
    env: &Environment,
    s: &Service,
    rt: &Runtime,
    release_dir: &Path,
    current: &Path,
    log: &Path,
) -> Option<Migrations> {
    let cmd = rt.migrate_status.as_ref()?;
    if let Some(m) = &rt.migrate
        && let Some(marker) = &m.if_exists
        && !release_dir.join(marker).exists()
    {
        return None;
    }
    let release_s = release_dir.display().to_string();
    let current_s = current.display().to_string();
    let vars = Vars {
        service: Some(&s.name),
        port: s.port,
        root: Some(&env.root),
        release: Some(&release_s),
        current: Some(&current_s),
        backup: None,
    };
    let argv: Vec<String> = template::render_all(&cmd.argv, &vars);
    let cenv = crate::process::command_env(env, Some(&s.name), Some(&release_s));
    let r = process::run(Run {
        argv: &argv,
        dir: Some(release_dir),
        env: &cenv,
        timeout: cmd.timeout,
        log,
    })
    .await;
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let (state, exit_code) = match &r {
        Ok(()) => (MigrationState::UpToDate, Some(0)),
        Err(process::RunError::Failed { status, .. }) => {
            let code = status
                .rsplit(':')
                .next()
                .and_then(|c| c.trim().parse().ok());
            (MigrationState::Pending, code)
        }
        Err(_) => (MigrationState::Failed, None),
    };
    let output = match r {
        Err(e @ (process::RunError::Spawn { .. } | process::RunError::Io { .. })) => {
            format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or_else(String::new, ToString::to_string)
            )
        }
        _ => output,
    };
    Some(Migrations {
        state,
        command: argv,
        exit_code,
        output,
    })
}

/// Which release of a service `plan` asks: the target's when it is built
/// on this host (a kept release: it holds exactly the migrations the plan
/// deploys), else the live one.
fn release_to_check(paths: &Paths, to_sha: &str) -> Option<String> {
    if paths.is_built(to_sha) {
        return Some(to_sha.to_owned());
    }
    paths.live().filter(|rev| paths.is_built(rev))
}

/// For `plan` on the host: runs `migrate-status` of every service that is
/// recorded as deployed and whose runtime has both `migrate` and
/// `migrate-status`, all at once, and says per service what it reported.
/// Returns at once (runs nothing) when no runtime has `migrate-status`.
pub(crate) fn for_plan(
    config: &Config,
    env: &Environment,
    state_dir: &Path,
    state: &State,
    to_sha: &str,
) -> BTreeMap<String, MigrateCheck> {
    let mut out = BTreeMap::new();
    let mut jobs = Vec::new();
    for s in &config.services {
        let Some(rt) = config
            .runtime_of(s)
            .filter(|r| r.migrate.is_some() && r.migrate_status.is_some())
        else {
            continue;
        };
        if !state.services.contains_key(&s.name) {
            // Never deployed here: its first deploy migrates anyway.
            continue;
        }
        let paths = Paths::new(&env.root, &s.name);
        match release_to_check(&paths, to_sha) {
            Some(rev) => jobs.push((s, rt, paths, rev)),
            None => {
                out.insert(
                    s.name.clone(),
                    MigrateCheck::Unavailable("no built release of it on this host".to_owned()),
                );
            }
        }
    }
    if jobs.is_empty() {
        return out;
    }
    let run_all = async {
        let mut set = tokio::task::JoinSet::new();
        for (s, rt, paths, rev) in &jobs {
            let (env, s, rt, rev) = (env.clone(), (*s).clone(), (*rt).clone(), rev.clone());
            let (release, current) = (paths.release(&rev), paths.current());
            let log = state_dir
                .join("logs")
                .join("plan")
                .join(format!("migrate-status-{}.log", s.name));
            set.spawn(async move {
                let got = check(&env, &s, &rt, &release, &current, &log).await;
                (s.name, got.map(|m| interpret(&m, &rev)))
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(v) => done.push(v),
                Err(e) => return Err(ChecksFailed::Task(e)),
            }
        }
        Ok(done)
    };
    // Its own thread and runtime: `plan` may be called from inside
    // another runtime (`apply`), where blocking on a future is not allowed.
    let results = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ChecksFailed::Runtime)
                    .and_then(|rt| rt.block_on(run_all))
            })
            .join()
            .unwrap_or(Err(ChecksFailed::Panicked))
    });
    match results {
        Ok(results) => {
            for (name, check) in results {
                if let Some(c) = check {
                    out.insert(name, c);
                }
            }
        }
        Err(e) => {
            for (s, ..) in &jobs {
                out.insert(s.name.clone(), MigrateCheck::Unavailable(e.to_string()));
            }
        }
    }
    out
}

/// Why the plan's `migrate-status` checks gave no answer at all (each
/// service's check is then unavailable, saying why).
#[derive(Debug, thiserror::Error)]
enum ChecksFailed {
    #[error("a migrate-status check did not finish: {0}")]
    Task(tokio::task::JoinError),
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("the migrate-status thread panicked")]
    Panicked,
}

/// What a `migrate-status` result means for a plan.
fn interpret(m: &Migrations, rev: &str) -> MigrateCheck {
    let short = crate::plan::short(rev);
    match m.state {
        MigrationState::UpToDate => MigrateCheck::UpToDate,
        MigrationState::Pending => MigrateCheck::Pending,
        MigrationState::Failed => MigrateCheck::Unavailable(format!(
            "`{}` could not run, or did not finish, in release {short}: {}",
            m.command.join(" "),
            first_line(&m.output)
        )),
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output")
}
