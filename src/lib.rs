//! moorline: declarative plan/apply deployments for fleets of systemd services.
//!
//! Data flows one way: `config` (KDL → checked model) → `changes` (git) →
//! `plan` (a deterministic value) → `render` (pure functions of the plan) →
//! `execute` (the only stage that touches the host).

pub mod backup;
pub mod blocking;
pub mod changes;
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
pub mod health;
pub mod hostfacts;
pub mod init;
pub mod journal;
pub(crate) mod json_file;
pub mod lock;
pub mod logs;
pub mod migrations;
pub mod observe;
pub mod ops;
pub mod plan;
pub mod plan_file;
pub mod policy;
pub mod process;
pub mod release;
pub mod render;
pub mod report;
pub mod rollback;
pub mod secrets;
pub mod state;
pub mod status;
pub mod systemd;
pub mod target;
pub mod template;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod unit;
pub mod visible;
