//! The `moorline` binary: parse the command line, run, map to an exit code.

use clap::Parser;

fn main() {
    // What moorline and the commands it runs (builds, dependency steps) write for the services,
    // releases above all, must be readable by the services' own users whatever the umask of the
    // shell that started moorline: a hardened root shell's 027 or 077 left every release
    // unreadable by `User=pakashop` (systemd: "Changing to the requested working directory
    // failed: Permission denied"). What must stay private (the state directory, backups, saved
    // plans, unit files with secrets, env-files) is created with its own mode, not the umask's.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
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
