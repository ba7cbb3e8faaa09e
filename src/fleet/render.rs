//! Fleet plan renderers: text (terminal), Markdown (a pull request comment)
//! and JSON (machines, the saved plan file). Pure functions of a
//! [`FleetPlan`]; the per-host detail is each host's own plan, rendered by
//! `crate::render`.

use std::fmt::Write;

use super::plan::FleetPlan;
use super::rollout::BatchKind;
use crate::plan::short;

/// The fleet plan as JSON (pretty, with a trailing newline): the saved
/// plan file's format.
pub(crate) fn json(p: &FleetPlan) -> String {
    let mut s = serde_json::to_string_pretty(p).unwrap_or_default();
    s.push('\n');
    s
}

/// What the artifacts section says of them.
const ARTIFACTS_NOTE: &str = "each built once; every host whose plan builds the service installs it instead, sent only what its store lacks, checked against its hash before unpacking";

fn from_label(from: Option<&str>) -> String {
    from.map_or_else(|| "nothing deployed".to_owned(), |f| short(f).to_owned())
}

fn batches_line(p: &FleetPlan) -> Vec<String> {
    p.batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let kind = match b.kind {
                BatchKind::Canary => "canary",
                BatchKind::Batch => "batch",
            };
            format!("{}. {kind}: {}", i + 1, b.hosts.join(", "))
        })
        .collect()
}

/// The note of a fleet plan made without the hosts (`plan --from`).
fn planned_here(p: &FleetPlan, from: &str) -> String {
    let what = if from == "none" {
        "nothing were deployed".to_owned()
    } else {
        format!("{} were deployed", short(from))
    };
    format!(
        "planned without the hosts, as if {what} on every host: for review; `moorline apply --env {} --reviewed FILE` applies it only where the hosts' own plans do the same",
        p.environment
    )
}

/// The `promote-from` section of a fleet plan: its heading, then a line
/// per source host and what `apply` does about it (empty without one).
fn promotion_lines(p: &FleetPlan) -> Option<(String, Vec<String>)> {
    let pr = p.promotion.as_ref()?;
    let min = if pr.min_healthy_secs == 0 {
        String::new()
    } else {
        format!(
            ", min-healthy {}",
            crate::promotion::span(pr.min_healthy_secs)
        )
    };
    let heading = format!(
        "Promotion (promote-from {}{min}, read from its hosts):",
        pr.source
    );
    let mut lines: Vec<String> = pr
        .hosts
        .iter()
        .map(|h| format!("{} {}", if h.healthy { "ok:" } else { "NO:" }, h.summary))
        .collect();
    let sha = short(&p.to.sha);
    lines.push(if pr.skipped {
        "check skipped (--skip-promotion-check): `apply` goes on".to_owned()
    } else if pr.healthy {
        format!("every host of {} ran {sha} as asked", pr.source)
    } else {
        format!(
            "`apply` refuses it unless --skip-promotion-check (deploy it to every host of {} first, and let it run healthy)",
            pr.source
        )
    });
    if !pr.only_here.is_empty() {
        lines.push(format!(
            "{}'s branch has commits that {}'s branch lacks (a hotfix not merged back?): {}",
            p.environment,
            pr.source,
            pr.only_here.join(", ")
        ));
    }
    Some((heading, lines))
}

/// The fleet plan for a terminal: a summary, the groups, the batches, the
/// rollback, then each group's plan (one host's plan stands for its group).
pub fn text(p: &FleetPlan, color: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Fleet plan for {}/{}: {} hosts -> {} ({})",
        p.project,
        p.environment,
        p.hosts.len(),
        short(&p.to.sha),
        p.to.summary
    );
    if let Some(from) = &p.planned_from {
        let _ = writeln!(s, "{}", planned_here(p, from));
    }
    let r = &p.rollout;
    let _ = writeln!(
        s,
        "rollout: canary {}, batches {}, max-fail {}, pause {}s, connections {}",
        r.canary,
        r.batches.join(", "),
        r.max_fail,
        r.pause_secs,
        r.connections
    );
    let _ = writeln!(s, "\nHosts:");
    for g in &p.groups {
        let what = if g.actions == 0 {
            "up to date".to_owned()
        } else {
            format!(
                "{} actions, restarts {}",
                g.actions,
                if g.restarts.is_empty() {
                    "none".to_owned()
                } else {
                    g.restarts.join(", ")
                }
            )
        };
        let _ = writeln!(
            s,
            "  {} (from {}): {what}",
            g.hosts.join(", "),
            from_label(g.from.as_deref())
        );
    }
    if !p.host_facts.is_empty() {
        let _ = writeln!(
            s,
            "\nHost facts (`apply` refuses until each is fixed on its host):"
        );
        for (host, facts) in &p.host_facts {
            for f in facts {
                let _ = writeln!(s, "  {host}: {} ({})", f.message, f.code);
                let _ = writeln!(s, "    help: {}", f.help);
            }
        }
    }
    if let Some((heading, lines)) = promotion_lines(p) {
        let _ = writeln!(s, "\n{heading}");
        for l in lines {
            let _ = writeln!(s, "  {l}");
        }
    }
    if !p.artifacts.is_empty() {
        let _ = writeln!(s, "\nArtifacts ({ARTIFACTS_NOTE}):");
        let w = p
            .artifacts
            .iter()
            .map(|a| a.service.len())
            .max()
            .unwrap_or(0);
        for a in &p.artifacts {
            let _ = writeln!(
                s,
                "  {:w$}  {}  {}  {} files, {}, built on the {}",
                a.service,
                short(&a.commit),
                a.id,
                a.files,
                crate::builder::human_size(a.size),
                a.built_on
            );
        }
    }
    let _ = writeln!(s, "\nBatches:");
    for b in batches_line(p) {
        let _ = writeln!(s, "  {b}");
    }
    let _ = writeln!(s, "\nRollback: {}", p.rollback.summary);
    for h in &p.rollback.hosts {
        let db = if h.kind == crate::plan::RollbackKind::NeedsDatabase {
            " (its migrations stay: the database needs its backup restored, `moorline rollback --database` there)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} -> {}{db}",
            h.host,
            h.to.as_deref().map_or(
                "nothing deployed (first deploy: stopped, unit files removed)",
                short
            )
        );
    }
    for g in &p.groups {
        let Some(first) = g.hosts.first().and_then(|n| p.host(n)) else {
            continue;
        };
        if !first.plan.has_changes() {
            continue;
        }
        let _ = writeln!(s, "\n=== {} ===", g.hosts.join(", "));
        s.push_str(&crate::render::text(&first.plan, color));
    }
    let _ = writeln!(s, "\nfleet fingerprint {}", p.fingerprint);
    s
}

/// The fleet plan as Markdown.
pub fn markdown(p: &FleetPlan) -> String {
    let cell = crate::render::markdown_cell;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Fleet plan: {}/{} → `{}`\n",
        cell(&p.project),
        cell(&p.environment),
        short(&p.to.sha)
    );
    if let Some(from) = &p.planned_from {
        let _ = writeln!(s, "{}\n", cell(&planned_here(p, from)));
    }
    let _ = writeln!(
        s,
        "| hosts | from | actions | restarts |\n| --- | --- | --- | --- |"
    );
    for g in &p.groups {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            cell(&g.hosts.join(", ")),
            cell(&from_label(g.from.as_deref())),
            g.actions,
            cell(&g.restarts.join(", "))
        );
    }
    if !p.host_facts.is_empty() {
        let _ = writeln!(
            s,
            "\n**Host facts** (`apply` refuses until each is fixed on its host)\n"
        );
        for (host, facts) in &p.host_facts {
            for f in facts {
                let _ = writeln!(
                    s,
                    "- {}: {} (`{}`): {}",
                    cell(host),
                    cell(&f.message),
                    cell(&f.code),
                    cell(&f.help)
                );
            }
        }
    }
    if let Some((heading, lines)) = promotion_lines(p) {
        let _ = writeln!(s, "\n**{}**\n", cell(heading.trim_end_matches(':')));
        for l in lines {
            let _ = writeln!(s, "- {}", cell(&l));
        }
    }
    if !p.artifacts.is_empty() {
        let _ = writeln!(
            s,
            "\n**Artifacts** ({ARTIFACTS_NOTE})\n\n| service | commit | artifact | files | size | built on |\n| --- | --- | --- | --- | --- | --- |"
        );
        for a in &p.artifacts {
            let _ = writeln!(
                s,
                "| {} | `{}` | `{}` | {} | {} | {} |",
                cell(&a.service),
                short(&a.commit),
                cell(&a.id),
                a.files,
                crate::builder::human_size(a.size),
                cell(&a.built_on)
            );
        }
    }
    let _ = writeln!(s, "\n**Batches**\n");
    for b in batches_line(p) {
        let _ = writeln!(s, "{}", cell(&b));
    }
    let _ = writeln!(s, "\n**Rollback**: {}\n", cell(&p.rollback.summary));
    for g in &p.groups {
        let Some(first) = g.hosts.first().and_then(|n| p.host(n)) else {
            continue;
        };
        if !first.plan.has_changes() {
            continue;
        }
        let _ = writeln!(
            s,
            "<details><summary>{}</summary>\n",
            cell(&g.hosts.join(", "))
        );
        s.push_str(&crate::render::markdown(&first.plan));
        let _ = writeln!(s, "\n</details>\n");
    }
    let _ = writeln!(s, "fleet fingerprint `{}`", p.fingerprint);
    s
}
