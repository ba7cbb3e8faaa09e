//! moorline: declarative plan/apply deployments for fleets of systemd services.
//!
//! Data flows one way: `config` (KDL → checked model) → `observe` (git and
//! the host into the planner's inputs) → `plan` (a deterministic value; its
//! phase walk is `plan::lifecycle`'s alone) → `execute` (the only stage that
//! changes the host) → `state`; `render` is pure functions of the plan, and
//! `commands` and `fleet` sit on top. docs/architecture.md draws it, says
//! where new code goes, and lists the one import cycle allowed;
//! `tests/it/architecture.rs` checks the import graph against it.

pub mod artifact;
pub mod backup;
pub mod blocking;
pub(crate) mod builder;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod deps;
pub mod events;
pub mod execute;
pub mod exit;
pub mod files;
pub mod fleet;
pub mod git;
pub mod health;
pub mod hostfacts;
pub mod init;
pub mod journal;
pub(crate) mod json_file;
pub mod lock;
pub mod logs;
pub mod migrations;
pub mod observe;
pub mod plan;
pub mod plan_file;
pub mod policy;
pub mod process;
pub(crate) mod promotion;
pub mod release;
pub mod render;
pub mod report;
pub mod rollback;
pub mod secrets;
pub mod select;
pub mod state;
pub mod status;
pub mod systemd;
pub mod target;
pub mod template;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod unit;
pub mod upstream;
pub mod visible;
