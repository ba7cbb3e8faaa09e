//! Placeholders in config strings: `{service}`, `{port}`, `{root}`,
//! `{release}`, `{current}`, `{backup}`, a fleet drain hook's `{hosts}`
//! and `{addresses}`, and `{env}` (the environment's name, in `unit-name`
//! and `root`). Finding them (for validation) and
//! substituting them (for planning) are pure functions; nothing is ever
//! handed to a shell by moorline.

/// Every placeholder moorline knows.
pub(crate) const ALL: &[&str] = &[
    "service",
    "port",
    "root",
    "release",
    "current",
    "backup",
    "hosts",
    "addresses",
    "env",
];

/// The placeholders in `s`: `(byte offset, name)`. `{{` and `}}` are literal
/// braces and never start a placeholder.
pub(crate) fn placeholders(s: &str) -> Vec<(usize, &str)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if bytes.get(i + 1) == Some(&b'{') {
                i += 2;
                continue;
            }
            if let Some(len) = s[i + 1..].find('}') {
                let name = &s[i + 1..i + 1 + len];
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    out.push((i, name));
                    i += len + 2;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Values for substitution; a `None` leaves the placeholder as written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Vars<'a> {
    pub(crate) service: Option<&'a str>,
    pub(crate) port: Option<u16>,
    pub(crate) root: Option<&'a str>,
    pub(crate) release: Option<&'a str>,
    pub(crate) current: Option<&'a str>,
    pub(crate) backup: Option<&'a str>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "service" => self.service.map(str::to_owned),
            "port" => self.port.map(|p| p.to_string()),
            "root" => self.root.map(str::to_owned),
            "release" => self.release.map(str::to_owned),
            "current" => self.current.map(str::to_owned),
            "backup" => self.backup.map(str::to_owned),
            _ => None,
        }
    }
}

/// Substitutes known placeholders; `{{`/`}}` become single braces.
pub(crate) fn render(s: &str, vars: &Vars<'_>) -> String {
    render_with(s, |name| vars.get(name))
}

/// Substitutes each placeholder `get` has a value for; `{{`/`}}` become
/// single braces, any other placeholder stays as written.
pub(crate) fn render_with(s: &str, get: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{')
            && let Some(end) = tail.find('}')
            && let Some(v) = get(&tail[1..end])
        {
            out.push_str(&v);
            rest = &tail[end + 1..];
            continue;
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// Substitutes placeholders in every word of an argv.
pub(crate) fn render_all(argv: &[String], vars: &Vars<'_>) -> Vec<String> {
    argv.iter().map(|a| render(a, vars)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders() {
        let cases: &[(&str, &[&str])] = &[
            ("plain", &[]),
            ("{service}", &["service"]),
            ("bin/{service}-{port}", &["service", "port"]),
            ("{{literal}}", &[]),
            ("{ not one }", &[]),
            ("{servce}", &["servce"]),
            ("{", &[]),
        ];
        for (s, want) in cases {
            let got: Vec<&str> = placeholders(s).into_iter().map(|(_, n)| n).collect();
            assert_eq!(&got, want, "{s}");
        }
    }

    #[test]
    fn renders() {
        let vars = Vars {
            service: Some("backend"),
            port: Some(3080),
            ..Vars::default()
        };
        for (s, want) in [
            ("pakashop-{service}.service", "pakashop-backend.service"),
            ("PORT={port}", "PORT=3080"),
            ("{release}/x", "{release}/x"),
            ("{{service}}", "{service}"),
            ("a}b{", "a}b{"),
        ] {
            assert_eq!(render(s, &vars), want, "{s}");
        }
    }
}
