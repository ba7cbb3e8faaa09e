//! Command dispatch: resolves raw flags into settings once, runs the stage
//! functions, prints, and maps every outcome to an exit code (`exit`).

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use miette::Diagnostic;

use crate::cli::{ApplyArgs, Cli, Command, Format, Global, PlanArgs, PlanTarget, StatusArgs};
use crate::config::{self, Loaded};
use crate::observe::PlanRequest;
use crate::plan::Operation;
use crate::plan_file::{self, Saved};
use crate::target::Target;
use crate::{exit, render, report};

mod apply;
mod artifact;
mod backup;
mod fleet;
mod init;
mod logs;
mod rollback;
mod services;
mod settings;

/// Runs one command line; returns the process exit code.
pub fn run(cli: &Cli) -> i32 {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            report::eprint(e.as_ref() as &dyn Diagnostic);
            exit::ERROR
        }
    }
}

fn dispatch(cli: &Cli) -> miette::Result<i32> {
    let global = &cli.global;
    match &cli.command {
        Command::Validate => validate(&load_config(global.config.as_deref())?),
        Command::Init(args) => init::run(args),
        Command::Plan(args) => plan(global, args),
        Command::Apply(args) => apply_cmd(global, args),
        Command::Rollback(args) => {
            let t = settings::resolve(global, &args.env)?;
            if fleet::is_fleet(global, &t) {
                fleet::rollback(global, args, &t)
            } else {
                fleet::no_hosts_to_be_on(&args.on, &args.env)?;
                rollback::run(&t, args)
            }
        }
        Command::Restart(args) => here_or_on_hosts(
            global,
            &args.env,
            &args.on,
            || ops_words("restart", args),
            |t| rollback::restart(&t, args),
        ),
        Command::Backup(args) => {
            let env = args.env.as_deref().ok_or(backup::BackupError::NoEnv)?;
            here_or_on_hosts(
                global,
                env,
                &args.on,
                || backup_words(env, args),
                |t| backup::run(&t, args),
            )
        }
        Command::Demo(args) => {
            runtime()?.block_on(crate::demo::run(args.keep, args.use_running_systemd))?;
            Ok(exit::OK)
        }
        Command::Graph(target) => {
            let t = settings::resolve(global, &target.env)?;
            fleet::refuse_on_controller(global, &t, "graph")?;
            let p = crate::observe::compute_plan(&t, &request(target))?;
            print!("{}", render::dot(&p));
            Ok(exit::OK)
        }
        Command::Status(args) => {
            let t = settings::resolve(global, &args.env)?;
            if fleet::is_fleet(global, &t) {
                fleet::status(global, args, &t)
            } else {
                status_cmd(&t, args)
            }
        }
        Command::Start(args) => ops_cmd(global, args, Operation::Start, "start"),
        Command::Stop(args) => ops_cmd(global, args, Operation::Stop, "stop"),
        Command::Enable(args) => ops_cmd(global, args, Operation::Enable, "enable"),
        Command::Disable(args) => ops_cmd(global, args, Operation::Disable, "disable"),
        Command::Logs(args) => {
            let t = settings::resolve(global, &args.env)?;
            // `--directory` reads journal files here, whatever the environment.
            if args.directory.is_none() && fleet::is_fleet(global, &t) {
                fleet::logs(global, args, &t)
            } else {
                logs::run(&t, args)
            }
        }
        Command::PromotionRecord { env } => promotion_record(global, env),
        Command::Artifact(cmd) => artifact::run(global, cmd),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "moorline", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir: None } => {
            let man = clap_mangen::Man::new(Cli::command());
            man.render(&mut std::io::stdout())
                .map_err(|e| miette::miette!("cannot write the man page: {e}"))?;
            Ok(exit::OK)
        }
        Command::Man { dir: Some(dir) } => {
            for path in man_pages(dir)? {
                println!("{}", path.display());
            }
            Ok(exit::OK)
        }
    }
}

/// `promotion-record --env ENV` (on a host of a fleet): the host's deploy
/// history of ENV, each revision's tree and the host's clock, as one JSON
/// line ([`crate::promotion::Record`]), for a controller checking another
/// environment's `promote-from`. Reads only.
fn promotion_record(global: &Global, env: &str) -> miette::Result<i32> {
    let t = settings::resolve(global, env)?;
    let project = &t.config().project.name;
    let loaded = crate::state::load(&t.state_dir, project, &t.env.name)?;
    let record = crate::promotion::Record::of(
        project,
        &t.env.name,
        loaded.state.as_ref(),
        |rev| t.repo.tree_id(rev),
        crate::files::now_secs(),
    );
    let line = serde_json::to_string(&record)
        .map_err(|e| miette::miette!("cannot write the promotion record: {e}"))?;
    println!("{line}");
    Ok(exit::OK)
}

/// Writes a man page for moorline and for every subcommand, nested ones
/// included (`moorline-backup-list.1`), into `dir` (created if missing),
/// each atomically; returns their paths, in order.
fn man_pages(dir: &std::path::Path) -> miette::Result<Vec<std::path::PathBuf>> {
    fn pages(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        // Every page's footer names the version, the subcommands' too.
        let man = clap_mangen::Man::new(cmd.clone().version(env!("CARGO_PKG_VERSION")));
        let mut bytes = Vec::new();
        man.render(&mut bytes)?;
        out.push((man.get_filename(), bytes));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, out)?;
        }
        Ok(())
    }
    let cannot = |e: std::io::Error| {
        miette::miette!("cannot write the man pages into {}: {e}", dir.display())
    };
    // Built, so that each subcommand's page is named and titled with its
    // full name (`moorline-plan`), and without clap's `help` subcommand.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    pages(&cmd, &mut out).map_err(cannot)?;
    std::fs::create_dir_all(dir).map_err(cannot)?;
    let mut written = Vec::new();
    for (name, bytes) in out {
        let path = dir.join(name);
        crate::files::write_atomic(&path, &bytes).map_err(cannot)?;
        written.push(path);
    }
    Ok(written)
}

/// `apply`: the plan file (`PLANFILE` or `--reviewed`) is read first,
/// then the target resolved: a fleet plan, or an environment with hosts
/// without a saved plan, goes to the fleet controller; anything else is
/// applied on this host.
fn apply_cmd(global: &Global, args: &ApplyArgs) -> miette::Result<i32> {
    let saved = match args.plan.as_deref().map(plan_file::read).transpose()? {
        Some(Saved::Fleet(fp)) => {
            let t = settings::resolve(global, &fp.environment)?;
            crate::artifact::choose::not_on_controller(
                &args.artifacts.given,
                args.artifacts.dir.as_deref(),
            )?;
            return fleet::apply(global, args, &t, Some(*fp));
        }
        Some(Saved::Host(p)) => Some(*p),
        None => None,
    };
    // A reviewed fleet plan: the controller plans every host again and
    // checks each does what was reviewed.
    let reviewed = match args.reviewed.as_deref().map(plan_file::read).transpose()? {
        Some(Saved::Fleet(fp)) => {
            let env = args.env.clone().unwrap_or_else(|| fp.environment.clone());
            let t = settings::resolve(global, &env)?;
            crate::artifact::choose::not_on_controller(
                &args.artifacts.given,
                args.artifacts.dir.as_deref(),
            )?;
            return fleet::apply_reviewed(global, args, &t, *fp);
        }
        Some(Saved::Host(p)) => Some(*p),
        None => None,
    };
    let env_name = match (&saved, &args.env) {
        (Some(p), _) => p.environment.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => return Err(apply::ApplyCmdError::NoTarget.into()),
    };
    let t = settings::resolve(global, &env_name)?;
    if saved.is_none() && fleet::is_fleet(global, &t) {
        crate::artifact::choose::not_on_controller(
            &args.artifacts.given,
            args.artifacts.dir.as_deref(),
        )?;
        return fleet::apply(global, args, &t, None);
    }
    apply::run(&t, args, saved, reviewed.as_ref())
}

/// start/stop/enable/disable: on this host, or, on a fleet controller,
/// on the hosts one at a time.
fn ops_cmd(
    global: &Global,
    args: &crate::cli::OpsArgs,
    op: Operation,
    name: &str,
) -> miette::Result<i32> {
    here_or_on_hosts(
        global,
        &args.env,
        &args.on,
        || ops_words(name, args),
        |t| services::run(&t, args, op),
    )
}

/// A command that runs on this host or, for an environment with hosts on
/// its controller, on the hosts `--on` names (`words`: the host's own
/// command line); `--on` for an environment without hosts is refused. The
/// target is resolved once, for either.
fn here_or_on_hosts(
    global: &Global,
    env: &str,
    on: &[String],
    words: impl FnOnce() -> Vec<String>,
    here: impl FnOnce(crate::target::Target) -> miette::Result<i32>,
) -> miette::Result<i32> {
    let t = settings::resolve(global, env)?;
    if fleet::is_fleet(global, &t) {
        return fleet::on_hosts(global, &t, on, &words());
    }
    fleet::no_hosts_to_be_on(on, env)?;
    here(t)
}

/// The host's own command line of restart/start/stop/enable/disable.
fn ops_words(name: &str, args: &crate::cli::OpsArgs) -> Vec<String> {
    let mut w = vec![name.to_owned(), "--env".to_owned(), args.env.clone()];
    for s in &args.services {
        w.extend(["--service".to_owned(), s.clone()]);
    }
    if args.with_dependents {
        w.push("--with-dependents".to_owned());
    }
    if args.yes {
        w.push("--yes".to_owned());
    }
    w
}

/// The host's own command line of `backup`.
fn backup_words(env: &str, args: &crate::cli::BackupArgs) -> Vec<String> {
    let mut w = vec!["backup".to_owned(), "--env".to_owned(), env.to_owned()];
    match &args.action {
        None => {}
        Some(crate::cli::BackupAction::List) => w.push("list".to_owned()),
        Some(crate::cli::BackupAction::Restore { id, yes }) => {
            w.extend(["restore".to_owned(), id.clone()]);
            if *yes {
                w.push("--yes".to_owned());
            }
        }
    }
    w
}

/// Finds and loads the configuration (`-c`, `MOORLINE_CONFIG`, the only `*.kdl`).
pub(crate) fn load_config(flag: Option<&Path>) -> miette::Result<Loaded> {
    let env = std::env::var("MOORLINE_CONFIG").ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = config::locate(flag, env.as_deref(), &cwd)?;
    let loaded = config::load(&path)?;
    crate::secrets::register_config(&loaded);
    Ok(loaded)
}

fn validate(loaded: &Loaded) -> miette::Result<i32> {
    crate::config::check_shared_hosts(loaded)?;
    let c = &loaded.config;
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    println!(
        "{}: project {} is valid: {}, {}, {}",
        crate::visible::escape(&loaded.path.display().to_string()),
        c.project.name,
        plural(c.services.len(), "service"),
        plural(c.phases.len(), "phase"),
        plural(c.environments.len(), "environment"),
    );
    Ok(exit::OK)
}

/// The artifacts `--artifact` and `--artifacts` ask for, and those of a
/// saved or reviewed plan (`planned`).
pub(crate) fn artifacts<'a>(
    args: &'a crate::cli::ArtifactArgs,
    planned: Option<&'a std::collections::BTreeMap<String, String>>,
) -> crate::artifact::choose::Request<'a> {
    crate::artifact::choose::Request {
        given: &args.given,
        dir: args.dir.as_deref(),
        planned,
    }
}

fn request(target: &PlanTarget) -> PlanRequest {
    PlanRequest {
        from: target.from.clone(),
        to: target.to.clone(),
        allow_non_ancestor: target.allow_non_ancestor,
        adopt: target.adopt.clone(),
        skip_promotion_check: target.skip_promotion_check,
        on_host: false,
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("cannot write the plan to {path}")]
#[diagnostic(
    code(moorline::plan::write),
    help("check that the directory exists and is writable")
)]
pub(crate) struct PlanWriteError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Prints a plan rendered in `args.format` and, with `--out`, saves its
/// JSON form (private); both redacted. `render` renders it in a format;
/// `what` names it in the saved message (`plan`, `fleet plan`).
pub(crate) fn print_and_save(
    args: &PlanArgs,
    render: impl Fn(Format) -> String,
    what: &str,
    fingerprint: &str,
) -> Result<(), PlanWriteError> {
    let shown = render(args.format);
    let shown = match args.format {
        Format::Json => crate::secrets::redact_json_text(&shown),
        _ => crate::secrets::redact(&shown),
    };
    print!("{shown}");
    if let Some(out) = &args.out {
        let saved = crate::secrets::redact_json_text(&render(Format::Json));
        crate::files::write_private(out, saved.as_bytes()).map_err(|source| PlanWriteError {
            path: out.display().to_string(),
            source,
        })?;
        eprintln!("{what} saved to {} ({fingerprint})", out.display());
    }
    Ok(())
}

fn plan(global: &Global, args: &PlanArgs) -> miette::Result<i32> {
    let t = settings::resolve(global, &args.target.env)?;
    if fleet::is_fleet(global, &t) {
        crate::artifact::choose::not_on_controller(
            &args.artifacts.given,
            args.artifacts.dir.as_deref(),
        )?;
        return fleet::plan(global, args, &t);
    }
    let mut p = crate::observe::compute_plan(&t, &request(&args.target))?;
    crate::artifact::choose::choose(
        t.config(),
        &t.env.root,
        &mut p,
        &artifacts(&args.artifacts, None),
    )?;
    print_and_save(
        args,
        |f| match f {
            Format::Text => render::text(&p, stdout_color()),
            Format::Markdown => render::markdown(&p),
            Format::Json => render::json(&p),
        },
        "plan",
        &p.fingerprint,
    )?;
    // Planned against this host: what it lacks for the plan, which `apply` would refuse.
    if args.target.from.is_none() {
        let host = crate::hostfacts::this_host();
        let missing = crate::hostfacts::check(t.config(), &t.env, &p, &host);
        if !missing.is_empty() && global.host.is_some() && args.format == Format::Json {
            // A host of a fleet, asked by the controller: one line it reads back and shows
            // per host in the fleet plan (`fleet::plan`).
            eprintln!("{}", crate::hostfacts::facts_line(&missing));
        } else if !missing.is_empty() {
            eprintln!(
                "warning: {host} lacks what this plan needs; `apply` refuses until it is fixed:"
            );
            for m in &missing {
                report::eprint(m);
            }
        }
    }
    Ok(
        if args.detailed_exitcode && (p.has_changes() || p.has_conflicts()) {
            exit::CHANGES
        } else {
            exit::OK
        },
    )
}

/// Colour on standard output: a terminal and no `NO_COLOR`.
pub(crate) fn stdout_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// A multi-threaded runtime sized for a small host.
pub(crate) fn runtime() -> miette::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| apply::ApplyCmdError::Runtime(e).into())
}

/// Asks on the terminal; `false` without one (the caller refuses then).
pub(crate) fn confirm(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes")
}

/// Removes the empty backup files an interrupted apply left (see
/// [`crate::backup::remove_empty`]), saying so. Before a resume or a
/// rollback, under the state lock.
pub(crate) fn removed_empty_backups(t: &Target) {
    for p in crate::backup::remove_empty(&t.state_dir, &t.env) {
        eprintln!(
            "note: removed {}, an empty backup file an interrupted apply left",
            p.display()
        );
    }
}

/// Connects to systemd and assembles what the executor needs.
pub(crate) async fn executor(
    t: &Target,
    jobs: Option<usize>,
    rollback_on_failure: bool,
    format: Format,
) -> miette::Result<std::sync::Arc<crate::execute::Ctx>> {
    let systemd = crate::systemd::Systemd::connect(t.systemd).await?;
    let progress = match format {
        Format::Json => crate::execute::Progress::Json,
        _ if report::stderr_color() => crate::execute::Progress::Live,
        _ => crate::execute::Progress::Lines,
    };
    Ok(std::sync::Arc::new(crate::execute::Ctx {
        config: t.loaded.config.clone(),
        config_sha256: crate::files::sha256_hex(t.loaded.text.as_bytes()),
        env: t.env.clone(),
        repo_dir: t.repo.root().to_path_buf(),
        state_dir: t.state_dir.clone(),
        unit_dir: t.unit_dir.clone(),
        systemd,
        options: crate::execute::Options {
            jobs: jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            }),
            rollback_on_failure,
            progress,
        },
    }))
}

/// Prints how an apply of `operation` (a deploy, rollback or restart)
/// ended. The full error of a failed action was printed when it happened;
/// the summary names it with the first line of its message, once.
pub(crate) fn print_report(
    r: &crate::execute::Report,
    env: &str,
    format: Format,
    operation: crate::plan::Operation,
) -> i32 {
    use crate::execute::Outcome;
    let what = operation.as_str();
    if format == Format::Json {
        let report = crate::secrets::redacted_json(r).unwrap_or_default();
        println!("{}", crate::events::Event::Report { report }.to_line());
        return r.exit_code();
    }
    let secs = std::time::Duration::from_millis(r.millis).as_secs_f64();
    match r.outcome {
        Outcome::Succeeded => {
            eprintln!(
                "{what} of {env} succeeded: {} actions in {secs:.2}s (apply {})",
                r.succeeded.len(),
                r.apply_id
            );
        }
        Outcome::Interrupted => {
            eprintln!(
                "apply {} interrupted: {} actions done, {} not run; the journal is consistent.\nresume with: moorline apply --resume --env {env}",
                r.apply_id,
                r.succeeded.len(),
                r.not_run.len()
            );
        }
        _ => {
            for (id, e) in &r.failed {
                let e = crate::secrets::redact(e);
                eprintln!("\nFAILED {id}: {}", e.lines().next().unwrap_or_default());
            }
            eprintln!("\nsucceeded: {}", list_or_none(&r.succeeded));
            eprintln!("not run:   {}", list_or_none(&r.not_run));
            // The rollback plan, as any plan is shown (a `rollback` of an
            // unfinished apply showed it before it asked).
            if let Some(p) = &r.rollback_plan
                && operation != crate::plan::Operation::Rollback
            {
                if r.rolled_back.is_empty() && r.rollback_errors.is_empty() {
                    eprintln!("\n`moorline rollback --env {env}` would execute this plan:");
                } else {
                    eprintln!("\nthe automatic rollback executed this plan:");
                }
                eprint!("{}", render::text(p, report::stderr_color()));
            }
            match r.outcome {
                Outcome::Failed => {}
                Outcome::FailedUntouched => {
                    eprintln!(
                        "nothing live changed: every service still runs its previous release"
                    );
                }
                Outcome::RolledBack => eprintln!(
                    "rolled back: {} (each restarted on its previous release and ready)",
                    list_or_none(&r.rolled_back)
                ),
                _ => {
                    for e in &r.rollback_errors {
                        eprintln!("rollback problem: {}", crate::secrets::redact(e));
                    }
                    eprintln!(
                        "left as is for inspection; undo this apply with `moorline rollback --env {env}`, or fix the cause and retry it with `moorline apply --resume --env {env}`"
                    );
                }
            }
        }
    }
    r.exit_code()
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn status_cmd(t: &Target, args: &StatusArgs) -> miette::Result<i32> {
    let rt = runtime()?;
    let status = rt.block_on(async {
        let systemd = crate::systemd::Systemd::connect(t.systemd).await?;
        crate::status::gather(
            t,
            &systemd,
            crate::status::Options {
                migrations: args.migrations,
                fail_behind: args.fail_behind,
            },
        )
        .await
    })?;
    match args.format {
        crate::cli::OutputFormat::Json => print!("{}", crate::status::json(&status)),
        crate::cli::OutputFormat::Text => {
            print!("{}", crate::status::text(&status, crate::status::now_us()));
        }
    }
    Ok(if args.check && !crate::status::is_ok(&status) {
        exit::UNHEALTHY
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Cli {
        match Cli::try_parse_from(argv) {
            Ok(c) => c,
            Err(e) => panic!("{argv:?}: {e}"),
        }
    }

    /// What the controller hands a host is the command the user gave, minus `--on`:
    /// parsed again, every flag is the same.
    #[test]
    fn host_command_lines_round_trip() {
        let cli = parse(&[
            "moorline",
            "restart",
            "--env",
            "prod",
            "-s",
            "a",
            "--service",
            "b c",
            "--with-dependents",
            "--yes",
            "--on",
            "app1",
        ]);
        let Command::Restart(args) = &cli.command else {
            panic!("not a restart");
        };
        let words = ops_words("restart", args);
        assert!(
            !words.iter().any(|w| w == "--on" || w == "app1"),
            "{words:?}"
        );
        let mut line = vec!["moorline"];
        line.extend(words.iter().map(String::as_str));
        let again = parse(&line);
        let Command::Restart(back) = &again.command else {
            panic!("not a restart");
        };
        assert_eq!(
            (&back.env, &back.services, back.with_dependents, back.yes),
            (&args.env, &args.services, args.with_dependents, args.yes)
        );

        for (argv, want) in [
            (
                vec!["moorline", "backup", "--env", "p", "--on", "h"],
                vec!["backup", "--env", "p"],
            ),
            (
                vec!["moorline", "backup", "list", "--env", "p"],
                vec!["backup", "--env", "p", "list"],
            ),
            (
                vec![
                    "moorline", "backup", "restore", "p-1", "--yes", "--env", "p",
                ],
                vec!["backup", "--env", "p", "restore", "p-1", "--yes"],
            ),
        ] {
            let cli = parse(&argv);
            let Command::Backup(args) = &cli.command else {
                panic!("not a backup");
            };
            let words = backup_words("p", args);
            assert_eq!(words, want);
            let mut again = vec!["moorline"];
            again.extend(words.iter().map(String::as_str));
            parse(&again);
        }
    }
}
