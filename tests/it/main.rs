//! The one integration-test binary of moorline: every area is a module here, so the whole
//! suite links once and shares one private systemd manager.

// Test code: a panic *is* the failure report (clippy.toml only exempts `#[test]` fns, not the
// shared helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod architecture;
mod artifact;
mod booted;
mod bus;
mod cli;
mod command_env;
mod config;
mod config_fuzz;
mod crash;
mod cutover;
mod demo;
mod deploy;
mod deps;
mod docs;
mod fleet;
mod fleet_hosts;
mod init;
mod invariants;
mod ops;
mod package;
mod plan;
mod readiness;
mod realdb;
mod rollback;
mod root_service;
mod sandbox;
mod secrets;
mod support;
mod systemd;
mod unit_file;
mod ux;
