//! Secret values in the configuration's own text, masked for diagnostics:
//! a report quotes the lines around a problem, and those lines may hold an
//! inline secret (`env API_TOKEN="…"`) that must not reach a terminal or a
//! CI log. In: the text and what was read of it; out: the same text, byte
//! for byte the same length (spans stay valid), with every secret value's
//! characters replaced by `*`.

use miette::SourceSpan;

use super::looks_secret;
use super::raw::{RawConfig, RawEnv};

/// Masks the values of secret variables: those read from the KDL tree
/// (`secret=#true` or a secret-looking name), and, for text kdl could not
/// parse, every `NAME="…"` whose name looks secret.
pub(crate) fn mask(text: &str, raw: Option<&RawConfig>) -> String {
    let mut spans: Vec<SourceSpan> = raw.map(secret_spans).unwrap_or_default();
    spans.extend(scan(text));
    let mut bytes = text.as_bytes().to_vec();
    for span in spans {
        let end = (span.offset() + span.len()).min(bytes.len());
        let Some(slice) = bytes.get_mut(span.offset()..end) else {
            continue;
        };
        // Keep the quotes: mask between the first and the last `"` (to the
        // end of the span, newlines kept, when the string is unterminated).
        let Some(open) = slice.iter().position(|b| *b == b'"') else {
            continue;
        };
        let close = slice
            .iter()
            .rposition(|b| *b == b'"')
            .filter(|c| *c > open)
            .unwrap_or(slice.len());
        for b in slice.iter_mut().take(close).skip(open + 1) {
            if *b != b'\n' {
                *b = b'*';
            }
        }
    }
    // Whole multi-byte characters were replaced (a value lies between
    // ASCII quotes), so this is valid UTF-8; fall back to the text if not.
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_owned())
}

fn secret_spans(raw: &RawConfig) -> Vec<SourceSpan> {
    let envs = raw
        .environments
        .iter()
        .flat_map(|e| &e.env)
        .chain(
            raw.runtimes
                .iter()
                .filter_map(|r| r.unit.as_ref())
                .flat_map(|u| &u.env),
        )
        .chain(
            raw.services
                .iter()
                .filter_map(|s| s.unit.as_ref())
                .flat_map(|u| &u.env),
        );
    envs.filter(|e: &&RawEnv| e.secret || looks_secret(&e.name.value))
        .map(|e| e.value.span)
        .collect()
}

/// `NAME="value"` with a secret-looking NAME, found without parsing.
fn scan(text: &str) -> Vec<SourceSpan> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(rel) = bytes
        .get(i..)
        .and_then(|b| b.windows(2).position(|w| w == b"=\""))
    {
        let eq = i + rel;
        let start = bytes[..eq]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(0, |p| p + 1);
        let name = &text[start..eq];
        let mut j = eq + 2;
        while j < bytes.len() && bytes[j] != b'"' && bytes[j] != b'\n' {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        let close = j.min(bytes.len());
        if !name.is_empty() && looks_secret(name) {
            out.push(SourceSpan::from(eq + 1..(close + 1).min(bytes.len())));
        }
        i = close.max(eq + 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_masked_in_place() {
        let text = "env API_TOKEN=\"s3cr3t\\\"x\" PORT=\"80\"\nenv DB_PASSWORD=\"é-pw\"\n";
        let masked = mask(text, None);
        assert_eq!(masked.len(), text.len());
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert!(!masked.contains("pw\""), "{masked}");
        assert!(masked.contains("PORT=\"80\""), "{masked}");
        assert!(masked.contains("API_TOKEN=\"*"), "{masked}");
    }

    #[test]
    fn an_unterminated_value_is_masked_to_the_end_of_its_line() {
        let text = "env API_KEY=\"abcdef\nnext";
        let masked = mask(text, None);
        assert!(!masked.contains("abcdef"), "{masked}");
        assert!(masked.ends_with("\nnext"), "{masked}");
    }
}
