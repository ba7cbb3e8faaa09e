//! Command dispatch: resolves raw flags into settings once, runs the stage
//! functions, prints, and maps every outcome to an exit code (`exit`).

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use miette::Diagnostic;

use crate::cli::{Cli, Command};
use crate::config::{self, Loaded};
use crate::{exit, report};

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
