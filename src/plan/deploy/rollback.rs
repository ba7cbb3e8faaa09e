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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::UnitChange;

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
environment "production" {
    branch "production"
    root "/srv/p-production"
    backup { run "backup" "{backup}"; restore "restore" "{backup}"; }
}
phase "core"
runtime "node" { build "true"; }
service "api" { runtime "node"; port 1; phase "core"; }
"#;

    fn service(name: &str, change: ServiceChange, migrate: bool) -> ServicePlan {
        ServicePlan {
            name: name.to_owned(),
            phase: "core".to_owned(),
            unit: format!("p-{name}.service"),
            change,
            migrate,
            unit_change: UnitChange::Unchanged,
            from_revision: None,
            to_revision: None,
            reasons: Vec::new(),
            changed_paths: Vec::new(),
            changed_count: 0,
            unit_diff: None,
        }
    }

    #[test]
    fn what_undoing_takes() {
        let config = crate::config::parse("t.kdl", CONFIG).unwrap();
        let staging = config.environment("staging").unwrap();
        let production = config.environment("production").unwrap();
        let unchanged = service("a", ServiceChange::Unchanged, false);
        let deploy = service("b", ServiceChange::Deploy, false);
        let restart = service("c", ServiceChange::Restart, false);
        let migrate = service("d", ServiceChange::Deploy, true);

        let p = rollback_plan(staging, std::slice::from_ref(&unchanged), false);
        assert_eq!(p.kind, RollbackKind::Nothing);
        assert!(p.services.is_empty());

        let p = rollback_plan(staging, &[unchanged.clone(), deploy.clone()], true);
        assert_eq!(p.kind, RollbackKind::NoPrevious);
        assert_eq!(p.services, ["b"]);

        let p = rollback_plan(
            staging,
            &[unchanged.clone(), deploy.clone(), restart],
            false,
        );
        assert_eq!(p.kind, RollbackKind::CodeOnly);
        assert_eq!(p.services, ["b", "c"]);
        assert!(
            p.summary.contains("switches 2 services back"),
            "{}",
            p.summary
        );
        assert!(p.summary.contains("restarts them"), "{}", p.summary);

        let p = rollback_plan(production, &[deploy.clone(), migrate.clone()], false);
        assert_eq!(p.kind, RollbackKind::NeedsDatabase);
        assert!(p.summary.contains("migrations of d"), "{}", p.summary);
        assert!(
            p.summary.contains("--env production --database"),
            "{}",
            p.summary
        );

        let p = rollback_plan(staging, &[deploy, migrate], false);
        assert_eq!(p.kind, RollbackKind::Irreversible);
        assert!(
            p.summary.contains("staging takes no backup"),
            "{}",
            p.summary
        );
    }
}
