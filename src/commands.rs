//! Command dispatch: resolves raw flags into settings once, runs the stage
//! functions, prints, and maps every outcome to an exit code (`exit`).

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use miette::Diagnostic;

use crate::cli::{Cli, Command, Format, Global, PlanArgs};
use crate::config::{self, Loaded};
use crate::settings::{self, PlanRequest};
use crate::{exit, render, report};

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
        Command::Validate => Ok(validate(&load_config(global.config.as_deref())?)),
        Command::Plan(args) => plan(global, args),
        Command::Graph(args) => {
            let t = settings::resolve(global, &args.env)?;
            let p = settings::compute_plan(&t, &request(args))?;
            print!("{}", render::dot(&p));
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "moorline", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man => {
            let man = clap_mangen::Man::new(Cli::command());
            man.render(&mut std::io::stdout())
                .map_err(|e| miette::miette!("cannot write the man page: {e}"))?;
            Ok(exit::OK)
        }
        other => Err(NotBuilt {
            command: command_name(other),
        }
        .into()),
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("`moorline {command}` is not built yet")]
#[diagnostic(
    code(moorline::cli::not_built),
    help("this command is planned; see the project's issues for its progress")
)]
struct NotBuilt {
    command: &'static str,
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Validate => "validate",
        Command::Plan(_) => "plan",
        Command::Apply(_) => "apply",
        Command::Rollback(_) => "rollback",
        Command::Status(_) => "status",
        Command::Graph(_) => "graph",
        Command::Backup(_) => "backup",
        Command::Restart(_) => "restart",
        Command::Start(_) => "start",
        Command::Stop(_) => "stop",
        Command::Enable(_) => "enable",
        Command::Disable(_) => "disable",
        Command::Logs(_) => "logs",
        Command::Demo(_) => "demo",
        Command::Completions { .. } => "completions",
        Command::Man => "man",
    }
}

/// Finds and loads the configuration (`-c`, `MOORLINE_CONFIG`, the only `*.kdl`).
pub fn load_config(flag: Option<&Path>) -> miette::Result<Loaded> {
    let env = std::env::var("MOORLINE_CONFIG").ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = config::locate(flag, env.as_deref(), &cwd)?;
    config::load(&path)
}

fn validate(loaded: &Loaded) -> i32 {
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
        loaded.path.display(),
        c.project.name,
        plural(c.services.len(), "service"),
        plural(c.phases.len(), "phase"),
        plural(c.environments.len(), "environment"),
    );
    exit::OK
}

fn request(args: &PlanArgs) -> PlanRequest {
    PlanRequest {
        from: args.from.clone(),
        to: args.to.clone(),
        allow_non_ancestor: args.allow_non_ancestor,
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("cannot write the plan to {path}")]
#[diagnostic(
    code(moorline::plan::write),
    help("check that the directory exists and is writable")
)]
struct PlanWriteError {
    path: String,
    #[source]
    source: std::io::Error,
}

fn plan(global: &Global, args: &PlanArgs) -> miette::Result<i32> {
    let t = settings::resolve(global, &args.env)?;
    let p = settings::compute_plan(&t, &request(args))?;
    let shown = match args.format {
        Format::Text => render::text(&p, stdout_color()),
        Format::Markdown => render::markdown(&p),
        Format::Json => render::json(&p),
    };
    print!("{shown}");
    if let Some(out) = &args.out {
        crate::state::write_atomic(out, render::json(&p).as_bytes()).map_err(|source| {
            PlanWriteError {
                path: out.display().to_string(),
                source,
            }
        })?;
        eprintln!("plan saved to {} ({})", out.display(), p.fingerprint);
    }
    Ok(if args.detailed_exitcode && p.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// Colour on standard output: a terminal and no `NO_COLOR`.
pub fn stdout_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}
