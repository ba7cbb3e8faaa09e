//! The `moorline` binary: parse the command line, run, map to an exit code.

use clap::Parser;

fn main() {
    let cli = match moorline::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on usage errors; moorline's 2 means "the plan has
            // changes" (`--detailed-exitcode`), so a usage error is 1.
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                moorline::exit::ERROR
            } else {
                moorline::exit::OK
            });
        }
    };
    std::process::exit(moorline::commands::run(&cli));
}
