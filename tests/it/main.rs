// Tests fail loudly: unwrap/expect are how they say "this must hold".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod config_fuzz;
