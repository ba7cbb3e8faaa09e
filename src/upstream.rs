//! The nginx upstream file moorline owns for a blue/green service: the one
//! place its text is written (and escaped) and read back. It holds one
//! `upstream moorline_<service> { server 127.0.0.1:<slot>; }` block, which
//! the user's nginx configuration includes and proxies to; which slot it
//! names is which slot is live.

/// The prefix of every upstream moorline names.
pub const PREFIX: &str = "moorline_";

/// The upstream's name for `service` (`moorline_api`), or `None` when the
/// name has a character nginx would read as something else. Service names
/// are letters, digits, `-`, `_` and `.` (the configuration checks that),
/// all of which nginx takes in an upstream name and in `proxy_pass
/// http://NAME`, so nothing needs quoting: anything else is refused, never
/// written.
pub fn name(service: &str) -> Option<String> {
    let plain = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plain.then(|| format!("{PREFIX}{service}"))
}

/// The file's text naming `slot` as the live instance of `service`.
pub fn text(service: &str, slot: u16) -> Option<String> {
    let name = name(service)?;
    Some(format!(
        "# Managed by moorline: the live slot of {service}. Replaced on every cutover.\n\
         upstream {name} {{\n    server 127.0.0.1:{slot};\n}}\n"
    ))
}

/// The slot `text` names, if it is one of `slots` and the file is one
/// moorline wrote for `service`; `None` otherwise (no file yet, or one
/// edited by hand: then no slot counts as live).
pub fn live_slot(text: &str, service: &str, slots: [u16; 2]) -> Option<u16> {
    slots
        .into_iter()
        .find(|s| self::text(service, *s).is_some_and(|t| t == text))
}

/// A unified one-line summary of the change from `from` to `to`, as the
/// plan and the journal note show it.
pub fn change(service: &str, from: Option<u16>, to: u16) -> String {
    let name = name(service).unwrap_or_else(|| format!("{PREFIX}?"));
    match from {
        Some(f) if f == to => format!("{name}: server 127.0.0.1:{to} (unchanged)"),
        Some(f) => format!("{name}: - server 127.0.0.1:{f}; + server 127.0.0.1:{to};"),
        None => format!("{name}: + server 127.0.0.1:{to}; (new file)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written reads back as the same slot; a hand-edited file, a
    /// slot not configured or another service's file names none.
    #[test]
    fn text_round_trips() {
        for (service, slot) in [("api", 8101), ("web-2", 8102), ("a.b_c", 1)] {
            let t = text(service, slot).unwrap();
            assert_eq!(live_slot(&t, service, [slot, 9]), Some(slot), "{t}");
            assert_eq!(live_slot(&t, service, [8, 9]), None);
            assert_eq!(live_slot(&t, "other", [slot, 9]), None);
            assert_eq!(
                live_slot(&t.replace("server", "server "), service, [slot, 9]),
                None
            );
        }
        let t = text("api", 8101).unwrap();
        assert!(t.contains("upstream moorline_api {\n    server 127.0.0.1:8101;\n}\n"));
    }

    /// Anything nginx would read as syntax is refused, not written.
    #[test]
    fn names_nginx_would_misread_are_refused() {
        for bad in [
            "", "a b", "a;b", "a{", "a}", "a$x", "a\"", "a'", "a#", "a\n", "é",
        ] {
            assert_eq!(name(bad), None, "{bad:?}");
            assert_eq!(text(bad, 1), None, "{bad:?}");
        }
        assert_eq!(name("api").as_deref(), Some("moorline_api"));
    }
}
