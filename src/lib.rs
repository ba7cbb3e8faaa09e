//! moorline: declarative plan/apply deployments for fleets of systemd services.
//!
//! Data flows one way: `config` (KDL → checked model) → `changes` (git) →
//! `plan` (a deterministic value) → `render` (pure functions of the plan) →
//! `apply` (the only stage that touches the host).

pub mod fixture;
