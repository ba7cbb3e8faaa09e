//! Unit files: a service's declarative `unit` block → the exact text of
//! its systemd unit file (deterministic: same spec, same bytes), plus the
//! redacted form shown in plans, where secret values never appear.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::{Environment, Service, UnitSpec, looks_secret};
use crate::template::{self, Vars};

/// What replaces a secret value in anything shown to people.
pub const REDACTED: &str = "(redacted)";

/// The live release of a service: `{root}/{service}/current`.
pub fn current_link(env: &Environment, service: &str) -> String {
    format!("{}/{service}/current", env.root)
}

/// The rendered unit of `service` in `env`, or `None` when its unit is
/// managed by hand.
pub fn render(env: &Environment, service: &Service) -> Option<String> {
    let spec = service.unit.as_ref()?;
    Some(render_spec(env, service, spec, false))
}

/// The same unit with every secret value replaced by [`REDACTED`].
pub fn render_redacted(env: &Environment, service: &Service) -> Option<String> {
    let spec = service.unit.as_ref()?;
    Some(render_spec(env, service, spec, true))
}

/// Names of the secret variables of a service's unit (for redacting an
/// installed file that moorline did not render).
pub fn secret_names(service: &Service) -> BTreeSet<String> {
    service.unit.as_ref().map_or_else(BTreeSet::new, |u| {
        u.env
            .iter()
            .filter(|(_, v)| v.secret)
            .map(|(k, _)| k.clone())
            .collect()
    })
}

/// Quotes one word for `ExecStart=`: systemd splits on whitespace and
/// honours double quotes with C-style escapes; `$` and `%` are expanded by
/// systemd and must be doubled to stay literal.
/// https://www.freedesktop.org/software/systemd/man/systemd.service.html#Command%20lines
fn exec_word(w: &str) -> String {
    let escaped = w.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '\'' && c != '\\' && c != ';')
    {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `Environment=` assignment, quoted as systemd expects.
fn env_assignment(name: &str, value: &str) -> String {
    let v = value
        .replace('%', "%%")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("\"{name}={v}\"")
}

fn render_spec(env: &Environment, service: &Service, spec: &UnitSpec, redact: bool) -> String {
    let current = current_link(env, &service.name);
    let vars = Vars {
        service: Some(&service.name),
        port: Some(service.port),
        root: Some(&env.root),
        current: Some(&current),
        ..Vars::default()
    };
    let r = |s: &str| template::render(s, &vars);
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored knowingly.
    let _ = writeln!(
        out,
        "# Managed by moorline: changes made here are reported as drift and replaced on the next apply."
    );
    out.push_str("[Unit]\n");
    let description = spec
        .description
        .as_deref()
        .map_or_else(|| format!("{} ({})", service.name, env.name), &r);
    let _ = writeln!(out, "Description={description}");
    for a in &spec.after {
        let _ = writeln!(out, "After={a}");
    }
    for w in &spec.wants {
        let _ = writeln!(out, "Wants={w}");
    }
    out.push_str("\n[Service]\nType=simple\n");
    let exec: Vec<String> = spec.exec.iter().map(|a| exec_word(&r(a))).collect();
    let _ = writeln!(out, "ExecStart={}", exec.join(" "));
    let _ = writeln!(out, "WorkingDirectory={}", r(&spec.working_directory));
    for (name, value) in &spec.env {
        let shown = if redact && (value.secret || looks_secret(name)) {
            REDACTED.to_owned()
        } else {
            r(&value.value)
        };
        let _ = writeln!(out, "Environment={}", env_assignment(name, &shown));
    }
    for f in &spec.env_files {
        let _ = writeln!(out, "EnvironmentFile={}", r(f));
    }
    if let Some(u) = &spec.user {
        let _ = writeln!(out, "User={u}");
    }
    if let Some(g) = &spec.group {
        let _ = writeln!(out, "Group={g}");
    }
    let _ = writeln!(out, "Restart={}", spec.restart);
    out.push_str("\n[Install]\n");
    let _ = writeln!(out, "WantedBy={}", spec.wanted_by);
    out
}

/// Redacts `Environment=` values of secret variables in a unit file's text
/// (an installed file, which may hold real secrets).
pub fn redact_text(text: &str, secret: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Environment=") {
            let inner = rest.trim().trim_matches('"');
            if let Some((name, _)) = inner.split_once('=')
                && (secret.contains(name) || looks_secret(name))
            {
                let _ = writeln!(out, "Environment={}", env_assignment(name, REDACTED));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A unified diff of two unit texts (empty when equal).
pub fn diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_words_are_quoted_for_systemd() {
        for (w, want) in [
            ("/usr/bin/node", "/usr/bin/node"),
            ("a b", "\"a b\""),
            ("$HOME", "$$HOME"),
            ("100%", "100%%"),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("", "\"\""),
        ] {
            assert_eq!(exec_word(w), want, "{w}");
        }
    }

    #[test]
    fn redacts_installed_secrets() {
        let text = "[Service]\nEnvironment=\"PORT=1\"\nEnvironment=\"API_TOKEN=abc\"\nEnvironment=\"CUSTOM=xyz\"\n";
        let secret: BTreeSet<String> = ["CUSTOM".to_owned()].into();
        let out = redact_text(text, &secret);
        assert!(out.contains("PORT=1"));
        assert!(!out.contains("abc"), "{out}");
        assert!(!out.contains("xyz"), "{out}");
    }
}
