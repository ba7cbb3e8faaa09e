//! The `moorline` binary: parse the command line, run, map to an exit code.

use clap::Parser;

fn main() {
    let cli = moorline::cli::Cli::parse();
    std::process::exit(moorline::commands::run(&cli));
}
