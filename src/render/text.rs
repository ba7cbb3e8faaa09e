//! The terminal rendering: grouped by phase, actions numbered in order,
//! colour only when asked (the caller decides from the tty and NO_COLOR).
//! Every text from outside (a changed path's name in a reason, an installed
//! unit file's lines in a diff) is shown with its control and invisible
//! characters escaped ([`crate::visible`]), so it cannot act on the terminal.

use std::fmt::Write as _;

use super::{
    after_words, change_words, changed_words, kind_words, pass_env_words, rollback_target, summary,
};
use crate::plan::{Operation, Plan, ServiceChange, UNDO_FROM, UnitChange, short};
use crate::visible::{escape as v, escape_lines};

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
}

/// Renders the plan for a terminal.
pub(crate) fn text(plan: &Plan, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    let from = plan.from.as_ref().map_or_else(
        || "nothing deployed".to_owned(),
        |f| format!("{} {:?}", short(&f.sha), f.summary),
    );
    let _ = writeln!(
        out,
        "{} {}/{} (branch {})",
        p.bold(&format!("{} for", kind_words(plan))),
        v(&plan.project),
        v(&plan.environment),
        v(&plan.branch)
    );
    match plan.operation {
        Operation::Deploy => {
            let _ = writeln!(out, "  from {from}");
            let _ = writeln!(out, "  to   {} {:?}", short(&plan.to.sha), plan.to.summary);
        }
        Operation::Rollback => {
            // An automatic rollback goes from what the failed apply was
            // deploying back to the deployed revision's releases; a rollback
            // by hand from the deployed revision to older releases.
            let undo = plan.from.as_ref().is_some_and(|f| f.spec == UNDO_FROM);
            let from = plan.from.as_ref().map_or_else(
                || "nothing recorded as deployed".to_owned(),
                |f| {
                    if undo {
                        format!(
                            "{} (what the failed apply was deploying; never recorded as deployed)",
                            short(&f.sha)
                        )
                    } else {
                        format!("{} (the deployed revision)", short(&f.sha))
                    }
                },
            );
            let _ = writeln!(out, "  from {from}");
            let target = rollback_target(plan, str::to_owned);
            if undo && !plan.to.sha.is_empty() {
                let _ = writeln!(
                    out,
                    "  to   {} (the deployed revision): {target}",
                    short(&plan.to.sha)
                );
            } else {
                let _ = writeln!(out, "  to   {target}");
            }
        }
        Operation::Restart
        | Operation::Start
        | Operation::Stop
        | Operation::Enable
        | Operation::Disable => {
            let _ = writeln!(
                out,
                "  on   {} (the deployed revision; releases do not change)",
                short(&plan.to.sha)
            );
        }
    }
    let _ = writeln!(out, "  {} · {}", summary(plan), changed_words(plan));
    if let Some(w) = pass_env_words(plan, str::to_owned) {
        let _ = writeln!(out, "  pass-env {w}");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "{} {}", p.yellow("warning:"), v(w));
    }
    for n in &plan.notes {
        let _ = writeln!(out, "{} {}", p.bold("note:"), v(n));
    }
    for c in &plan.conflicts {
        let _ = writeln!(out, "{} {}", p.red("conflict:"), v(&c.reason));
    }
    let width = plan
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    let mut phase = "";
    for s in &plan.services {
        if s.phase != phase {
            phase = &s.phase;
            let _ = writeln!(out, "\n{}", p.bold(&format!("phase {}", v(phase))));
        }
        let (mark, words) = match s.change {
            _ if s.unit_change == UnitChange::Conflict => {
                (p.red("! "), p.red(&change_words(plan.operation, s)))
            }
            ServiceChange::Unchanged => (p.dim("  "), p.dim(&change_words(plan.operation, s))),
            _ => (p.yellow("~ "), p.yellow(&change_words(plan.operation, s))),
        };
        let _ = writeln!(out, "  {mark}{:width$}  {words}", v(&s.name));
        for r in &s.reasons {
            let _ = writeln!(out, "      {}", p.dim(&v(r)));
        }
        if let Some(d) = &s.unit_diff {
            for line in d.lines() {
                let line = escape_lines(line);
                let line = line.as_str();
                let l = if line.starts_with('+') && !line.starts_with("+++") {
                    p.green(line)
                } else if line.starts_with('-') && !line.starts_with("---") {
                    p.red(line)
                } else {
                    p.dim(line)
                };
                let _ = writeln!(out, "      {l}");
            }
        }
    }
    if plan.has_changes() {
        let _ = writeln!(
            out,
            "\n{}",
            p.bold(&format!("actions ({})", plan.actions.len()))
        );
        let idw = plan.actions.iter().map(|a| a.id.len()).max().unwrap_or(0);
        for (n, a) in plan.actions.iter().enumerate() {
            let after = if a.after.is_empty() {
                String::new()
            } else {
                p.dim(&format!("  (after {})", after_words(&a.after, v)))
            };
            let _ = writeln!(
                out,
                "  {:>3}. {:idw$}  {}{after}",
                n + 1,
                v(&a.id),
                v(&a.reason)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} {}",
        p.bold("rollback:"),
        v(&plan.rollback.summary)
    );
    let _ = writeln!(
        out,
        "{}",
        p.dim(&format!("fingerprint {}", plan.fingerprint))
    );
    out
}
