//! Stage 5, rollback summary: in go the planned services, out comes what
//! undoing the plan takes — nothing, nothing to go back to (a first
//! deploy), code only, code and the database backup, or not possible for
//! the schema (migrations without a backup).

use super::count;
use crate::config::Environment;
use crate::plan::{RollbackKind, RollbackPlan, ServiceChange, ServicePlan};

/// What undoing a plan of `services` in `env` takes.
pub(super) fn rollback_plan(
    env: &Environment,
    services: &[ServicePlan],
    first_deploy: bool,
) -> RollbackPlan {
    let switched: Vec<String> = services
        .iter()
        .filter(|s| s.change != ServiceChange::Unchanged)
        .map(|s| s.name.clone())
        .collect();
    let migrating: Vec<&str> = services
        .iter()
        .filter(|s| s.migrate)
        .map(|s| s.name.as_str())
        .collect();
    let (kind, summary) = if switched.is_empty() {
        (
            RollbackKind::Nothing,
            "nothing changes, so there is nothing to roll back".to_owned(),
        )
    } else if first_deploy {
        (
            RollbackKind::NoPrevious,
            "first deploy: there is no previous release to go back to; a failed apply stops the services it started".to_owned(),
        )
    } else if migrating.is_empty() {
        (
            RollbackKind::CodeOnly,
            format!(
                "code-only: `moorline rollback --env {}` switches {} back to the previous release and restarts {} (no rebuild, no database change)",
                env.name,
                count(switched.len(), "service", "services"),
                if switched.len() == 1 { "it" } else { "them" }
            ),
        )
    } else if env.backup.is_some() {
        (
            RollbackKind::NeedsDatabase,
            format!(
                "needs the database: migrations of {} are the point of no return; the code rolls back with `moorline rollback --env {e}`, the schema only with `moorline rollback --env {e} --database`, which restores the backup taken before them (writes since then are lost)",
                migrating.join(", "),
                e = env.name
            ),
        )
    } else {
        (
            RollbackKind::Irreversible,
            format!(
                "migrations of {} cannot be undone by moorline: environment {} takes no backup; the code can roll back, the schema stays migrated",
                migrating.join(", "),
                env.name
            ),
        )
    };
    RollbackPlan {
        kind,
        services: switched,
        summary,
    }
}
