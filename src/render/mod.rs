//! Renderers: pure functions of `&Plan` → text. Terminal text, a Markdown
//! pull-request comment, the JSON contract, and Graphviz DOT. None of them
//! reads anything but the plan, so the same plan renders to the same bytes.

use std::fmt::Write as _;

mod markdown;
mod text;

pub(crate) use markdown::{cell as markdown_cell, markdown};
pub(crate) use text::text;

use crate::plan::{Operation, Plan, ServiceChange, UnitChange, short};

/// The JSON contract (docs/plan-format.md), pretty-printed, newline-ended.
pub(crate) fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).unwrap_or_else(|_| "{}".to_owned());
    s.push('\n');
    s
}

/// The action graph as Graphviz DOT; nodes coloured by kind.
pub(crate) fn dot(plan: &Plan) -> String {
    let mut out = format!(
        "digraph \"{}/{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        esc_dot(&plan.project),
        esc_dot(&plan.environment)
    );
    for a in &plan.actions {
        let colour = match a.kind().as_str() {
            "build" => "lightblue",
            "migrate" | "backup" => "orange",
            "install-unit" | "daemon-reload" | "restore-unit" | "remove-unit" => "khaki",
            "restart" | "start" | "stop" => "salmon",
            "health" => "palegreen",
            "barrier" => "lightgrey",
            _ => "plum",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [style=filled, fillcolor={colour}];",
            esc_dot(&a.id)
        );
    }
    for a in &plan.actions {
        for p in &a.after {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", esc_dot(p), esc_dot(&a.id));
        }
    }
    out.push_str("}\n");
    out
}

fn esc_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One-line summary shared by the text and Markdown renderers.
pub(crate) fn summary(plan: &Plan) -> String {
    let conflicts = plural(
        plan.conflicts.len(),
        "unit file conflict (apply refuses until it is adopted)",
        "unit file conflicts (apply refuses until they are adopted)",
    );
    if !plan.has_changes() {
        if plan.has_conflicts() {
            return format!("nothing else changes; {conflicts}");
        }
        if plan.operation == Operation::Deploy
            && let Some(from) = plan.from.as_ref().filter(|f| f.sha != plan.to.sha)
        {
            return format!(
                "no service changes since {}: `apply` records {} as deployed and restarts nothing",
                short(&from.sha),
                short(&plan.to.sha)
            );
        }
        return "no changes: everything is up to date".to_owned();
    }
    let deploy = plan
        .services
        .iter()
        .filter(|s| s.change == ServiceChange::Deploy)
        .count();
    let restart_only = plan
        .services
        .iter()
        .filter(|s| s.change == ServiceChange::Restart)
        .count();
    let stop = plan
        .services
        .iter()
        .filter(|s| s.change == ServiceChange::Stop)
        .count();
    let migrate = plan.services.iter().filter(|s| s.migrate).count();
    let units = plan
        .services
        .iter()
        .filter(|s| s.unit_change.installs())
        .count();
    let mut parts = Vec::new();
    if deploy > 0 && plan.operation == Operation::Rollback {
        parts.push(plural(deploy, "service rolls back", "services roll back"));
    } else if deploy > 0 {
        parts.push(plural(deploy, "service deploys", "services deploy"));
    }
    if restart_only > 0 && plan.operation == Operation::Start {
        parts.push(plural(restart_only, "service starts", "services start"));
    } else if restart_only > 0 {
        parts.push(plural(restart_only, "service restarts", "services restart"));
    }
    if stop > 0 {
        parts.push(plural(stop, "service stops", "services stop"));
    }
    if migrate > 0 {
        parts.push(plural(migrate, "migration", "migrations"));
    }
    if units > 0 {
        parts.push(plural(units, "unit file changes", "unit files change"));
    }
    if plan.action("backup").is_some() {
        parts.push("database backup first".to_owned());
    }
    if plan.action("reload-proxy").is_some() {
        parts.push("proxy reloads".to_owned());
    }
    if plan.has_conflicts() {
        parts.push(conflicts);
    }
    parts.join(", ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// What happens to a service, in a few words.
/// `operation` is the plan's: in a rollback plan a service switched to
/// another release rolls back rather than deploys.
pub(crate) fn change_words(operation: Operation, s: &crate::plan::ServicePlan) -> String {
    let mut words = Vec::new();
    match s.change {
        ServiceChange::Deploy if operation == Operation::Rollback => words.push("roll back"),
        ServiceChange::Deploy => words.push("deploy"),
        ServiceChange::Restart if operation == Operation::Start => words.push("start"),
        ServiceChange::Restart => words.push("restart"),
        ServiceChange::Stop => words.push("stop"),
        ServiceChange::Unchanged => words.push("unchanged"),
    }
    if s.migrate {
        words.push("migrate");
    }
    match s.unit_change {
        UnitChange::New => words.push("new unit"),
        UnitChange::Changed => words.push("unit changed"),
        UnitChange::Adopt => words.push("adopt unit"),
        UnitChange::Conflict => words.push("unit conflict"),
        UnitChange::Unmanaged | UnitChange::Unchanged => {}
    }
    words.join(", ")
}

/// What kind of plan it is, for its title: "Plan", "Rollback plan", "Restart plan".
pub(crate) fn kind_words(plan: &Plan) -> &'static str {
    match plan.operation {
        Operation::Deploy => "Plan",
        Operation::Rollback => "Rollback plan",
        Operation::Restart => "Restart plan",
        Operation::Start => "Start plan",
        Operation::Stop => "Stop plan",
        Operation::Enable => "Enable plan",
        Operation::Disable => "Disable plan",
    }
}

/// The releases a rollback plan returns to: one kept release, or several.
/// `code` formats a short SHA (plain, or as Markdown code).
pub(crate) fn rollback_target(plan: &Plan, code: impl Fn(&str) -> String) -> String {
    let mut targets: Vec<&str> = plan
        .services
        .iter()
        .filter(|s| s.change != ServiceChange::Unchanged)
        .filter_map(|s| s.to_revision.as_deref())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    match targets.as_slice() {
        [] => "no release changes".to_owned(),
        [one] => format!("the kept release {}", code(short(one))),
        many => format!("{} kept releases (per service below)", many.len()),
    }
}

/// "N paths changed", or what stands in for it on a first deploy (nothing is
/// compared, so a count of 0 would mislead).
pub(crate) fn changed_words(plan: &Plan) -> String {
    if plan.operation == Operation::Rollback {
        "kept releases, no rebuild".to_owned()
    } else if plan.operation == Operation::Restart || plan.operation.is_unit_op() {
        "same releases, no rebuild".to_owned()
    } else if plan.first_deploy {
        "first deploy, every path is new".to_owned()
    } else {
        format!("{} changed", plural(plan.changed_paths, "path", "paths"))
    }
}

/// What the environment's `pass-env` lets through, for people: `None`
/// without one (commands then get only the minimal environment).
pub(crate) fn pass_env_words(plan: &Plan, fmt: impl Fn(&str) -> String) -> Option<String> {
    (!plan.pass_env.is_empty()).then(|| {
        let names: Vec<String> = plan.pass_env.iter().map(|n| fmt(n)).collect();
        format!(
            "{} from moorline's environment into every command",
            names.join(", ")
        )
    })
}

/// How many predecessors are named before the rest are only counted.
const AFTER_SHOWN: usize = 4;

/// An action's `after` list for people: long lists (every build before the
/// first live change) are cut, the JSON and DOT keep them whole.
pub(crate) fn after_words(after: &[String], fmt: impl Fn(&str) -> String) -> String {
    let shown: Vec<String> = after.iter().take(AFTER_SHOWN).map(|a| fmt(a)).collect();
    let mut s = shown.join(", ");
    if after.len() > AFTER_SHOWN {
        let _ = write!(s, " and {} more", after.len() - AFTER_SHOWN);
    }
    s
}
