//! `moorline logs` (being built).

use crate::cli::{Global, LogsArgs};

pub fn run(_global: &Global, _args: &LogsArgs) -> miette::Result<i32> {
    Ok(crate::exit::ERROR)
}
