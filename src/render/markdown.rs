//! The pull-request comment: a summary line, a table of services and what
//! happens to each, collapsible details (reasons, actions, unit diffs) and
//! the rollback plan. GitHub-flavoured Markdown.

use std::fmt::Write as _;

use super::{
    after_words, change_words, changed_words, kind_words, pass_env_words, rollback_target, summary,
};
use crate::plan::{Operation, Plan, ServiceChange, short};

/// Text from anywhere (a commit subject, a path, a reason naming them) as
/// Markdown inline text, the one place it is escaped for Markdown: on one
/// line (newlines become spaces), pipes escaped (it may sit in a table
/// cell), `<` written as `&lt;` so no HTML tag or comment can start (a
/// commit subject `<!--` would otherwise hide the rest of the comment, and
/// `</details>` close a section), and invisible characters shown escaped
/// ([`crate::visible`]).
pub(crate) fn cell(s: &str) -> String {
    crate::visible::escape(&s.replace(['\n', '\r'], " "))
        .replace('|', "\\|")
        .replace('<', "&lt;")
}

/// A code fence for `body`: longer than any run of backticks in it, so no
/// line of the body can close it (CommonMark closes a fence only with at
/// least as many backticks as opened it).
fn fence(body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// Renders the plan as a Markdown comment.
pub(crate) fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### moorline {}: `{}` → {}\n",
        kind_words(plan).to_lowercase(),
        plan.project,
        plan.environment
    );
    let from = plan.from.as_ref().map_or_else(
        || "nothing deployed".to_owned(),
        |f| format!("`{}`", short(&f.sha)),
    );
    let to = match plan.operation {
        Operation::Deploy => format!("`{}` {}", short(&plan.to.sha), cell(&plan.to.summary)),
        Operation::Rollback => rollback_target(plan, |s| format!("`{s}`")),
        Operation::Restart
        | Operation::Start
        | Operation::Stop
        | Operation::Enable
        | Operation::Disable => format!("`{}` (releases do not change)", short(&plan.to.sha)),
    };
    let _ = writeln!(
        out,
        "**{}** · {from} → {to} (branch `{}`, {})\n",
        summary(plan),
        plan.branch,
        changed_words(plan)
    );
    if let Some(w) = pass_env_words(plan, |n| format!("`{n}`")) {
        let _ = writeln!(out, "**pass-env** {w}\n");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "> [!WARNING]\n> {}\n", cell(w));
    }
    for n in &plan.notes {
        let _ = writeln!(out, "> [!NOTE]\n> {}\n", cell(n));
    }
    for c in &plan.conflicts {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> **Unit file conflict** (`{}`): {}\n",
            c.service,
            cell(&c.reason)
        );
    }
    let changed: Vec<_> = plan
        .services
        .iter()
        .filter(|s| s.change != ServiceChange::Unchanged)
        .collect();
    if !changed.is_empty() {
        out.push_str("| Service | Phase | What happens | Why |\n|---|---|---|---|\n");
        for s in &changed {
            let why = s.reasons.first().map_or("", String::as_str);
            let more = if s.reasons.len() > 1 {
                format!(" (+{} more)", s.reasons.len() - 1)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {}{more} |",
                s.name,
                s.phase,
                change_words(plan.operation, s),
                cell(why)
            );
        }
        out.push('\n');
    }
    let unchanged: Vec<&str> = plan
        .services
        .iter()
        .filter(|s| s.change == ServiceChange::Unchanged)
        .map(|s| s.name.as_str())
        .collect();
    if !unchanged.is_empty() {
        let _ = writeln!(
            out,
            "Unchanged ({}): {}\n",
            unchanged.len(),
            unchanged
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !changed.is_empty() {
        out.push_str("<details><summary>Why each service changes</summary>\n\n");
        for s in &changed {
            let _ = writeln!(
                out,
                "**`{}`** ({})",
                s.name,
                change_words(plan.operation, s)
            );
            for r in &s.reasons {
                let _ = writeln!(out, "- {}", cell(r));
            }
            if s.changed_count > s.changed_paths.len() {
                let _ = writeln!(
                    out,
                    "- {} paths affect it; first: {}",
                    s.changed_count,
                    cell(&s.changed_paths.join(", "))
                );
            }
            out.push('\n');
        }
        out.push_str("</details>\n\n");
    }
    let diffs: Vec<_> = plan
        .services
        .iter()
        .filter(|s| s.unit_diff.is_some())
        .collect();
    if !diffs.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Unit files ({})</summary>\n",
            diffs.len()
        );
        for s in diffs {
            let diff = crate::visible::escape_lines(s.unit_diff.as_deref().unwrap_or(""));
            let fence = fence(&diff);
            let _ = writeln!(out, "`{}`\n\n{fence}diff", s.unit);
            out.push_str(&diff);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            let _ = write!(out, "{fence}\n\n");
        }
        out.push_str("</details>\n\n");
    }
    if plan.has_changes() {
        let _ = writeln!(
            out,
            "<details><summary>Actions ({}), in order</summary>\n",
            plan.actions.len()
        );
        out.push_str("| # | Action | After | Reason |\n|---|---|---|---|\n");
        for (n, a) in plan.actions.iter().enumerate() {
            let after = if a.after.is_empty() {
                "—".to_owned()
            } else {
                after_words(&a.after, |x| format!("`{x}`"))
            };
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} |",
                n + 1,
                a.id,
                after,
                cell(&a.reason)
            );
        }
        out.push_str("\n</details>\n\n");
    }
    // The summary opens with the kind in words ("code-only: ..."), so the
    // heading does not repeat it.
    let _ = writeln!(
        out,
        "#### Rollback plan\n\n{}\n",
        cell(&plan.rollback.summary)
    );
    let _ = writeln!(
        out,
        "<sub>fingerprint `{}` · on the host, `moorline apply --env {} --reviewed PLANFILE` applies it only if the host's plan does the same</sub>",
        plan.fingerprint, plan.environment
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile text stays text: no HTML can open, no cell or line can
    /// end, nothing invisible passes, and reading the escapes back gives
    /// the text again.
    #[test]
    fn text_from_outside_cannot_change_the_comment() {
        for raw in [
            "<!-- hide the rest",
            "</details><details open>",
            "a | b",
            "two\nlines",
            "bidi \u{202e}evil",
            "bell \u{7}",
            "plain text, `code`, — and → arrows",
        ] {
            let c = cell(raw);
            assert!(!c.contains('<'), "{c}");
            assert!(!c.contains('\n'), "{c}");
            assert!(!c.chars().any(crate::visible::is_invisible), "{c:?}");
            assert!(!c.replace("\\|", "").contains('|'), "{c}");
            // Round trip: undoing the escapes gives the text (on one line).
            let back = c.replace("&lt;", "<").replace("\\|", "|");
            let want = crate::visible::escape(&raw.replace('\n', " "));
            assert_eq!(back, want);
        }
        assert_eq!(cell("plain `code`"), "plain `code`");
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_inside() {
        assert_eq!(fence("no ticks"), "```");
        assert_eq!(fence("+ ```\n- x"), "````");
        assert_eq!(fence("`````"), "``````");
    }
}
