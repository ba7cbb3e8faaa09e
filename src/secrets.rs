//! Secret values in, `(redacted)` out: a [`Redactor`] holds the values that
//! must never be shown or written (inline env values marked or named secret,
//! and the values of the env-files commands and units use) and replaces
//! every occurrence of any of them in a text or a JSON value.
//!
//! moorline registers the secrets of the configuration once, when it loads
//! it ([`register_config`]), in one process-wide registry; every sink
//! redacts through it where output is produced: captured command output
//! ([`crate::process`]), progress lines and JSON events, reports, error
//! diagnostics, the journal (and so the history), state, saved plans and
//! `logs` output.
//!
//! What counts as a secret:
//! - an inline `env` value (of an environment or a unit block) marked
//!   `secret=#true` or whose name looks secret ([`looks_secret`]), both as
//!   written and with its placeholders substituted;
//! - every value in an env-file that an environment or a unit uses, unless
//!   its name does not look secret *and* the value appears verbatim in the
//!   configuration file (a value that is in the reviewed, committed
//!   configuration is not secret: service names, ports, paths; redacting
//!   them would only garble output);
//! - the value, in moorline's own environment, of a variable an
//!   environment's `pass-env` names, when its name looks secret.
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are ignored: redacting
//! every `1` or `on` would garble every line without hiding anything.
//! Redaction is per text; a value containing a newline is only found when
//! the whole text is redacted at once (captured output is redacted per
//! line).

use std::borrow::Cow;
use std::path::Path;
use std::sync::RwLock;

use serde::Serialize;

use crate::config::{Loaded, looks_secret};
use crate::template::{self, Vars};
use crate::unit::REDACTED;

/// Shorter values are not treated as secrets (see the module docs).
pub(crate) const MIN_SECRET_LEN: usize = 4;

/// A set of secret values and the replacement of their occurrences.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    /// Distinct values, each at least [`MIN_SECRET_LEN`] bytes.
    values: Vec<String>,
}

impl Redactor {
    pub(crate) const fn new() -> Self {
        Self { values: Vec::new() }
    }

    /// Adds a secret value (ignored when shorter than [`MIN_SECRET_LEN`]).
    pub(crate) fn add(&mut self, value: &str) {
        if value.len() >= MIN_SECRET_LEN && !self.values.iter().any(|v| v == value) {
            self.values.push(value.to_owned());
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The length of the longest secret, in bytes (0 when there is none).
    pub(crate) fn longest(&self) -> usize {
        self.values.iter().map(String::len).max().unwrap_or(0)
    }

    /// Byte ranges of `text` covered by an occurrence of some secret
    /// (overlapping occurrences included), sorted and merged.
    fn ranges(&self, text: &str) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for v in &self.values {
            let mut from = 0;
            while let Some(i) = text.get(from..).and_then(|t| t.find(v.as_str())) {
                let start = from + i;
                ranges.push((start, start + v.len()));
                // The next search starts at the next character boundary.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// `text` with every byte that belongs to an occurrence of any secret
    /// replaced; overlapping or adjacent occurrences become one
    /// [`REDACTED`].
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.redact_prefix(text, text.len()).0
    }

    /// The redacted form of `text[..limit]` (`limit` moved down to a
    /// character boundary), and whether anything was left out. An
    /// occurrence that starts before `limit` is replaced whole; one that
    /// starts after it is left out whole, so a cut never shows part of a
    /// secret as long as `text` extends at least [`Self::longest`] bytes
    /// past `limit` (or to the end of the original).
    pub(crate) fn redact_prefix<'a>(&self, text: &'a str, limit: usize) -> (Cow<'a, str>, bool) {
        let mut limit = limit.min(text.len());
        while !text.is_char_boundary(limit) {
            limit -= 1;
        }
        let cut = limit < text.len();
        let ranges = self.ranges(text);
        if ranges.is_empty() {
            return (Cow::Borrowed(&text[..limit]), cut);
        }
        let mut out = String::with_capacity(limit);
        let mut shown = 0;
        for (start, end) in ranges {
            if start >= limit {
                break;
            }
            out.push_str(&text[shown..start]);
            out.push_str(REDACTED);
            shown = end;
        }
        if shown < limit {
            out.push_str(&text[shown..limit]);
        }
        (Cow::Owned(out), cut)
    }

    /// Redacts every string (and object key) in a JSON value, in place.
    pub(crate) fn redact_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&k).into_owned(), v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// The process-wide registry (see the module docs).
static KNOWN: RwLock<Redactor> = RwLock::new(Redactor::new());

/// Adds secret values to the registry.
pub(crate) fn register<'a>(values: impl IntoIterator<Item = &'a str>) {
    if let Ok(mut known) = KNOWN.write() {
        for v in values {
            known.add(v);
        }
    }
}

/// A copy of the registry.
pub(crate) fn known() -> Redactor {
    KNOWN.read().map(|r| r.clone()).unwrap_or_default()
}

/// `text` with every registered secret replaced.
pub(crate) fn redact(text: &str) -> String {
    match KNOWN.read() {
        Ok(known) => known.redact(text).into_owned(),
        // A poisoned registry redacts everything rather than nothing.
        Err(_) => REDACTED.to_owned(),
    }
}

/// `value` serialised to JSON with every registered secret replaced in
/// every string.
pub(crate) fn redacted_json<T: Serialize + ?Sized>(
    value: &T,
) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(value)?;
    match KNOWN.read() {
        Ok(known) => known.redact_json(&mut v),
        Err(_) => v = serde_json::Value::String(REDACTED.to_owned()),
    }
    Ok(v)
}

/// A JSON document (text) with every registered secret replaced in every
/// string; unchanged (same bytes) when it holds none. Text that is not
/// JSON is redacted as plain text.
pub(crate) fn redact_json_text(text: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else {
        return redact(text);
    };
    let before = v.clone();
    match KNOWN.read() {
        Ok(known) => known.redact_json(&mut v),
        Err(_) => return REDACTED.to_owned(),
    }
    if v == before {
        return text.to_owned();
    }
    let mut out = if text.contains('\n') {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    }
    .unwrap_or_else(|_| REDACTED.to_owned());
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The secrets of a loaded configuration (every environment, every
/// service; see the module docs for what counts).
pub(crate) fn of_config(loaded: &Loaded) -> Redactor {
    let mut r = Redactor::new();
    let config = &loaded.config;
    let env_file = |r: &mut Redactor, path: &str| {
        for (name, value) in crate::release::read_env_file(Path::new(path)) {
            if looks_secret(&name) || !loaded.text.contains(value.as_str()) {
                r.add(&value);
            }
        }
    };
    for env in &config.environments {
        let vars = Vars {
            root: Some(&env.root),
            ..Vars::default()
        };
        for (name, value) in &env.env {
            if value.secret || looks_secret(name) {
                r.add(&value.value);
                r.add(&template::render(&value.value, &vars));
            }
        }
        for f in &env.env_files {
            env_file(&mut r, f);
            env_file(&mut r, &template::render(f, &vars));
        }
        // What pass-env lets through from moorline's environment: secret
        // when its name looks secret (a CI job's NPM_TOKEN).
        for name in env.pass_env.iter().filter(|n| looks_secret(n)) {
            if let Ok(value) = std::env::var(name) {
                r.add(&value);
            }
        }
        for service in &config.services {
            let Some(spec) = &service.unit else { continue };
            let current = crate::release::Paths::new(&env.root, &service.name)
                .current()
                .display()
                .to_string();
            let vars = Vars {
                service: Some(&service.name),
                port: service.port,
                root: Some(&env.root),
                current: Some(&current),
                ..Vars::default()
            };
            for (name, value) in &spec.env {
                if value.secret || looks_secret(name) {
                    r.add(&value.value);
                    r.add(&template::render(&value.value, &vars));
                }
            }
            for f in &spec.env_files {
                let f = template::render(f, &vars);
                env_file(&mut r, f.trim_start_matches('-'));
            }
        }
    }
    r
}

/// Registers the secrets of a loaded configuration.
pub(crate) fn register_config(loaded: &Loaded) {
    let r = of_config(loaded);
    register(r.values.iter().map(String::as_str));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        let mut r = Redactor::new();
        for v in values {
            r.add(v);
        }
        r
    }

    #[test]
    fn replaces_every_occurrence() {
        let r = redactor(&["s3cr3t", "hunter22"]);
        let cases = [
            ("nothing here", "nothing here"),
            ("s3cr3t", "(redacted)"),
            ("a s3cr3t b s3cr3t", "a (redacted) b (redacted)"),
            ("x=hunter22s3cr3t;", "x=(redacted);"),
            ("pw: s3cr3ts3cr3t", "pw: (redacted)"),
            ("ünïcödé s3cr3t ✓", "ünïcödé (redacted) ✓"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact(input), want, "{input:?}");
        }
    }

    #[test]
    fn overlapping_secrets_hide_both() {
        // Replacing one first would leave the other's tail visible.
        let r = redactor(&["abcd1234", "1234wxyz"]);
        assert_eq!(r.redact("<abcd1234wxyz>"), "<(redacted)>");
        let r = redactor(&["aaaa"]);
        assert_eq!(r.redact("aaaaaa"), "(redacted)");
    }

    #[test]
    fn short_values_are_ignored() {
        let r = redactor(&["", "on", "abc"]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abc on"), "abc on");
    }

    #[test]
    fn json_strings_and_keys() {
        let r = redactor(&["tok-123456"]);
        let mut v = serde_json::json!({
            "a": ["x tok-123456 y", 1, null],
            "tok-123456": {"b": "tok-123456\"quoted"}
        });
        r.redact_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("tok-123456"), "{text}");
        assert_eq!(v["a"][0], "x (redacted) y");
        assert_eq!(v["(redacted)"]["b"], "(redacted)\"quoted");
    }
}
