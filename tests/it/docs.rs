//! Keeps the documentation from rotting: every `moorline ...` command line shown in README.md,
//! docs/*.md and the example workflows under docs/examples/ must parse with the real clap
//! definition (`moorline::cli::Cli`); every subcommand must have a section in docs/commands.md;
//! every exit code of src/exit.rs must be in its exit-code table; the README's Documentation
//! list must name exactly the files in docs/.
//!
//! What counts as a command line: in Markdown, the lines of fenced code blocks (except blocks
//! tagged `text`, `json`, `kdl`, `diff`, `dot`, `markdown`, which hold output and file
//! contents); in the example workflows, every line that is not a comment. A line is split into
//! shell commands at ` | `, ` && `, ` || ` and `; `; a command is checked when its first word
//! (after a `$ ` prompt, `sudo`, `exec` and `NAME=value` assignments) is `moorline`, or when it
//! is `cargo run [--release] --`.
//!
//! Synopses are checked too: `[...]` brackets are dropped, `...` repetition marks are
//! dropped, and of alternatives written `a|b` (no spaces) the first is taken, so
//! `moorline plan --env ENV [--format text|markdown|json]` is checked as
//! `moorline plan --env ENV --format text`. Placeholders in capitals are fine as values, except
//! where clap wants a number: `N` stands for `1`.
//!
//! No line is skipped. Shell variables (`"$BASE_SHA"`) and GitHub expressions
//! (`${{ github.sha }}`, taken as one word) are plain values to clap. A command substitution
//! `$(...)` would be split wrongly by this simple tokenizer, so the docs assign substitutions
//! to a variable first and pass the variable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use moorline::cli::Cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md, every docs/*.md, and every example workflow, in a stable order.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut in_dir = |dir: PathBuf, ext: &str| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        found.sort();
        files.extend(found);
    };
    in_dir(root().join("docs"), "md");
    in_dir(root().join("docs/examples/github"), "yml");
    files
}

/// A command line found in a file, with where it was found.
#[derive(Debug)]
struct Found {
    file: String,
    line: usize,
    text: String,
}

/// Lines that may hold commands: code blocks of Markdown, non-comment lines of YAML.
/// Continuation lines (ending in `\`) are joined.
fn candidate_lines(path: &Path) -> Vec<(usize, String)> {
    const NOT_COMMANDS: [&str; 6] = ["text", "json", "kdl", "diff", "dot", "markdown"];
    let text = read(path);
    let yaml = path.extension().is_some_and(|x| x == "yml");
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut in_block = yaml;
    let mut checked_block = yaml;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if !yaml && trimmed.starts_with("```") {
            if in_block {
                in_block = false;
            } else {
                in_block = true;
                let info = trimmed.trim_start_matches('`').trim();
                checked_block = !NOT_COMMANDS.contains(&info);
            }
            continue;
        }
        if !in_block || !checked_block {
            continue;
        }
        if yaml && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
        if let Some(head) = trimmed.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
            pending = Some((start, acc));
            continue;
        }
        acc.push_str(trimmed);
        out.push((start, acc));
    }
    out
}

/// Splits a shell line into words: quotes and backslashes as a POSIX shell reads them,
/// `${{ ... }}` (a GitHub expression) as part of one word, an unquoted `#` after a space
/// starts a comment. Operators (`|`, `&&`, `||`, `;`) come back as words of their own.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has_word = false;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                has_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    cur.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                has_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    cur.push(chars[i]);
                    i += 1;
                }
            }
            '\\' if i + 1 < chars.len() => {
                has_word = true;
                cur.push(chars[i + 1]);
                i += 1;
            }
            '$' if chars.get(i + 1) == Some(&'{') && chars.get(i + 2) == Some(&'{') => {
                has_word = true;
                while i < chars.len() && !(chars[i] == '}' && chars.get(i + 1) == Some(&'}')) {
                    cur.push(chars[i]);
                    i += 1;
                }
                cur.push_str("}}");
                i += 1;
            }
            '#' if !has_word => break,
            ';' => {
                if has_word {
                    out.push(std::mem::take(&mut cur));
                    has_word = false;
                }
                out.push(";".to_owned());
            }
            c if c.is_whitespace() => {
                if has_word {
                    out.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                has_word = true;
                cur.push(c);
            }
        }
        i += 1;
    }
    if has_word {
        out.push(cur);
    }
    out
}

/// The argv of each `moorline` command on a line (program name first), if any.
fn moorline_commands(line: &str) -> Vec<Vec<String>> {
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let line = line
        .strip_prefix("- run: ")
        .or_else(|| line.strip_prefix("run: "))
        .unwrap_or(line);
    let synopsis = line.contains('[');
    let all = words(line);
    let mut out = Vec::new();
    for segment in all.split(|w| matches!(w.as_str(), "|" | "||" | "&&" | ";")) {
        let mut w: &[String] = segment;
        while let Some(first) = w.first() {
            let assignment = first.contains('=')
                && first.split('=').next().is_some_and(|n| {
                    !n.is_empty() && n.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                });
            if first == "sudo" || first == "exec" || assignment {
                w = &w[1..];
            } else {
                break;
            }
        }
        let rest: &[String] = match w {
            [m, rest @ ..] if m == "moorline" => rest,
            [c, r, rest @ ..] if c == "cargo" && r == "run" => {
                let mut rest = rest;
                while let Some(first) = rest.first() {
                    rest = &rest[1..];
                    if first == "--" {
                        break;
                    }
                }
                rest
            }
            _ => continue,
        };
        // A redirection ends the arguments (`moorline man > moorline.1`).
        let rest = rest
            .iter()
            .position(|w| w.starts_with('>') || w.starts_with('<') || w.starts_with("2>"))
            .map_or(rest, |end| &rest[..end]);
        let mut argv = vec!["moorline".to_owned()];
        for word in rest {
            let mut word = word.clone();
            if synopsis {
                word = word.replace(['[', ']'], "");
                if word == "..." || word.is_empty() {
                    continue;
                }
                if word.contains('|') && !word.contains("${{") {
                    word = word.split('|').next().unwrap_or_default().to_string();
                }
            }
            if word == "N" {
                word = String::from("1");
            }
            argv.push(word);
        }
        out.push(argv);
    }
    out
}

fn all_commands() -> Vec<(Found, Vec<String>)> {
    let mut out = Vec::new();
    for path in doc_files() {
        let name = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        for (line, text) in candidate_lines(&path) {
            for argv in moorline_commands(&text) {
                out.push((
                    Found {
                        file: name.clone(),
                        line,
                        text: text.clone(),
                    },
                    argv,
                ));
            }
        }
    }
    out
}

#[test]
fn every_documented_command_line_parses() {
    let commands = all_commands();
    let mut failures = Vec::new();
    for (found, argv) in &commands {
        if let Err(e) = Cli::try_parse_from(argv) {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                continue;
            }
            failures.push(format!(
                "{}:{}: {}\n    argv: {argv:?}\n    {}",
                found.file,
                found.line,
                found.text,
                e.render().to_string().lines().next().unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} documented command lines do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The extraction itself must find the docs' commands (a broken extractor passes vacuously).
    let files: BTreeSet<&str> = commands.iter().map(|(f, _)| f.file.as_str()).collect();
    for must in [
        "README.md",
        "docs/getting-started.md",
        "docs/commands.md",
        "docs/operations.md",
        "docs/ci.md",
        "docs/examples/github/plan.yml",
        "docs/examples/github/deploy-staging.yml",
        "docs/examples/github/deploy-production.yml",
        "docs/examples/github/health-check.yml",
        "docs/examples/github/db-backup.yml",
    ] {
        assert!(files.contains(must), "no moorline command found in {must}");
    }
    assert!(
        commands.len() > 60,
        "only {} commands found",
        commands.len()
    );
}

#[test]
fn extraction_handles_synopses_pipelines_and_expressions() {
    let got = moorline_commands(
        "$ moorline plan --env ENV [--format text|markdown|json] [--detailed-exitcode]",
    );
    assert_eq!(
        got,
        [[
            "moorline",
            "plan",
            "--env",
            "ENV",
            "--format",
            "text",
            "--detailed-exitcode"
        ]]
    );
    let got = moorline_commands(
        "cd /opt/pakashop && sudo moorline apply --env staging --to \"${{ github.sha }}\" --yes # deploy",
    );
    assert_eq!(
        got,
        [[
            "moorline",
            "apply",
            "--env",
            "staging",
            "--to",
            "${{ github.sha }}",
            "--yes"
        ]]
    );
    let got = moorline_commands("moorline graph --env staging | dot -Tsvg > plan.svg");
    assert_eq!(got, [["moorline", "graph", "--env", "staging"]]);
    let got = moorline_commands("cargo run --release -- validate -c pakashop.kdl");
    assert_eq!(got, [["moorline", "validate", "-c", "pakashop.kdl"]]);
    assert!(moorline_commands("moorline::apply::stale_plan").is_empty());
    assert!(Cli::try_parse_from(["moorline", "plan", "--evn", "x"]).is_err());
}

/// The section headings of docs/commands.md (`## moorline a / moorline b`).
fn command_headings() -> Vec<String> {
    read(&root().join("docs/commands.md"))
        .lines()
        .filter(|l| l.starts_with("## "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_has_a_section_in_commands_md() {
    let headings = command_headings();
    let cmd = Cli::command();
    let mut missing = Vec::new();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        let wanted = format!("moorline {name}");
        let has = headings.iter().any(|h| {
            h.split(" / ").any(|part| {
                part.trim_start_matches("## ")
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
                    == wanted
            })
        });
        if !has {
            missing.push(wanted);
        }
        for nested in sub.get_subcommands() {
            let nested_name = format!("moorline {name} {}", nested.get_name());
            if nested.get_name() != "help"
                && !read(&root().join("docs/commands.md")).contains(&nested_name)
            {
                missing.push(nested_name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/commands.md has no section for: {}",
        missing.join(", ")
    );
}

#[test]
fn every_flag_is_in_commands_md() {
    let doc = read(&root().join("docs/commands.md"));
    let cmd = Cli::command();
    let mut missing = Vec::new();
    let mut check = |arg: &clap::Arg, owner: &str| {
        if let Some(long) = arg.get_long() {
            if long == "help" || long == "version" {
                return;
            }
            if !doc.contains(&format!("--{long}")) {
                missing.push(format!("{owner} --{long}"));
            }
        }
    };
    for arg in cmd.get_arguments() {
        check(arg, "moorline");
    }
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            check(arg, sub.get_name());
        }
        for nested in sub.get_subcommands() {
            for arg in nested.get_arguments() {
                check(arg, nested.get_name());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from docs/commands.md: {}",
        missing.join(", ")
    );
}

/// `(NAME, value)` of every `pub const NAME: i32 = value;` in src/exit.rs.
fn exit_codes() -> Vec<(String, i32)> {
    read(&root().join("src/exit.rs"))
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": i32 = ")?;
            let value = rest.trim_end_matches(';').trim().parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

#[test]
fn every_exit_code_is_in_the_table() {
    let codes = exit_codes();
    assert_eq!(
        codes.len(),
        6,
        "src/exit.rs changed: {codes:?}; update docs/commands.md and this test"
    );
    assert_eq!(
        codes.iter().find(|(n, _)| n == "UNHEALTHY").map(|c| c.1),
        Some(moorline::exit::UNHEALTHY)
    );
    let doc = read(&root().join("docs/commands.md"));
    let rows: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("## Exit codes"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| "))
        .collect();
    let mut missing = Vec::new();
    for (name, value) in &codes {
        let ok = rows.iter().any(|r| {
            let cells: Vec<&str> = r.split('|').map(str::trim).collect();
            cells.get(1) == Some(&value.to_string().as_str())
                && cells.get(2) == Some(&format!("`{name}`").as_str())
        });
        if !ok {
            missing.push(format!("{value} `{name}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "the exit-code table in docs/commands.md (`## Exit codes`, rows `| code | `NAME` | ...`) lacks: {}",
        missing.join(", ")
    );
    let documented: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.split('|').nth(1).map(|c| c.trim().to_owned()))
        .filter(|c| c.parse::<i32>().is_ok())
        .collect();
    let real: BTreeSet<String> = codes.iter().map(|(_, v)| v.to_string()).collect();
    assert_eq!(
        documented, real,
        "the table documents codes src/exit.rs does not define"
    );
}

#[test]
fn readme_documentation_list_matches_docs_dir() {
    let readme = read(&root().join("README.md"));
    let listed: BTreeSet<String> = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Documentation"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let start = l.find("](")? + 2;
            let end = l[start..].find(')')? + start;
            Some(l[start..end].to_owned())
        })
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(
        listed, present,
        "README.md's Documentation list and docs/*.md differ"
    );
}
