//! Keeps the documentation from rotting: every `moorline ...` command line shown in README.md,
//! docs/*.md and the example workflows under docs/examples/ must parse with the real clap
//! definition (`moorline::cli::Cli`); every subcommand must have a section in docs/commands.md;
//! every exit code of src/exit.rs must be in its exit-code table; the README's Documentation
//! list must name exactly the files in docs/. Beyond parsing, the ```sh blocks marked
//! `<!-- executed by tests/it/docs.rs -->` (the whole walk-through of getting-started.md, the
//! plan and global-flag examples of commands.md, the resume, rollback, restore-then-deploy,
//! backup and journal examples of operations.md) are run with the real binary: see
//! `documented_examples_run` below.
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
        7,
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

// ---------------------------------------------------------------------------------------------
// Executed examples: the walk-through of docs/getting-started.md, the plan examples of
// docs/commands.md and the marked examples of docs/operations.md run, in order, with the real
// binary against generated Pakashop-shaped repositories and the shared private systemd manager.
//
// A ```sh block is executed when the line before it is [`EXECUTED`] (every ```sh block of
// getting-started.md must be). Each block starts in the fixture repository; each line runs with
// `bash -o pipefail -c` after the substitutions of [`SUBSTITUTIONS`] (`sudo` dropped, host
// paths replaced by the test's), with a `moorline` on `PATH` that is the real binary plus
// `--systemd user`, and `XDG_STATE_HOME` pointing into the test's directory (so the state lands
// where the docs say a user manager's state lands). `cd DIR` changes the directory of the
// following lines. A line that cannot run here is in [`SKIPPED`] with the reason; every other
// line must exit with 0 unless [`EXPECTED`] says otherwise, and print what [`EXPECTED`] lists.
// Example ids of the docs (a revision like `b6e8724`, a backup id) are replaced by the real ones
// of the run; what a block assumes (an interrupted apply before `apply --resume`) is set up
// before it by `operations_setup`.
// ---------------------------------------------------------------------------------------------

/// The line before a ```sh block that this test executes.
const EXECUTED: &str = "<!-- executed by tests/it/docs.rs -->";

/// `(file, line as written, why it does not run here)`.
const SKIPPED: &[(&str, &str, &str)] = &[
    (
        "docs/getting-started.md",
        "cargo install --locked --version 3.8.0 cargo-deb && packaging/build-deb.sh",
        "builds and installs the package: tests/it/package.rs does",
    ),
    (
        "docs/getting-started.md",
        "cargo install --locked --path .",
        "a release build of moorline itself",
    ),
    (
        "docs/getting-started.md",
        "cargo run --release -- demo",
        "tests/it/demo.rs runs the demo",
    ),
    (
        "docs/getting-started.md",
        "moorline demo --keep",
        "tests/it/demo.rs runs the demo",
    ),
    (
        "docs/getting-started.md",
        "sudo git clone git@github.com:pakashop/pakashop.git /opt/pakashop/repo",
        "needs the network; the fixture repository stands in for the clone",
    ),
];

/// `(file, line as written)` of lines that ask for confirmation on a terminal: the test is the
/// operator who answers yes, so `--yes` is appended (there is no terminal here).
const CONFIRMED: &[(&str, &str)] = &[
    (
        "docs/getting-started.md",
        "sudo moorline apply /var/tmp/staging.plan.json",
    ),
    (
        "docs/getting-started.md",
        "sudo moorline apply --env staging",
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production",
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production --service backend --to b6e8724",
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production --database",
    ),
    (
        "docs/operations.md",
        "sudo moorline backup restore pakashop-production-20260609-020000-123456 --env production",
    ),
];

/// Host paths of the docs and what stands in for them (`{repo}`: the fixture repository,
/// `{shop}`: a copy of it without a configuration, `{tmp}`: the test's scratch directory).
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("sudo ", ""),
    ("~/src/shop", "{shop}"),
    ("/opt/pakashop/repo", "{repo}"),
    ("/var/tmp/", "{tmp}/"),
    ("/tmp/pakashop-state", "{tmp}/pakashop-state"),
    ("/opt/pakashop/pakashop.kdl", "{repo}/pakashop.kdl"),
    // The fixture's configuration file is moorline.kdl.
    ("pakashop.kdl", "moorline.kdl"),
];

/// Substitutions for one file only: `(file, from, to)`, applied before [`SUBSTITUTIONS`].
const FILE_SUBSTITUTIONS: &[(&str, &str, &str)] = &[
    // The fixture's service that migrates stands in for Pakashop's backend.
    (
        "docs/operations.md",
        "--service backend",
        "--service svc-0003",
    ),
    (
        "docs/operations.md",
        "/var/lib/moorline/pakashop/production",
        "{tmp}/state/moorline/pakashop/production",
    ),
];

/// The backup id of docs/operations.md; the newest backup of the run stands in for it.
const EXAMPLE_BACKUP_ID: &str = "pakashop-production-20260609-020000-123456";

/// `(file, line as written, exit code, texts the output must contain)` of lines that do not
/// simply exit 0.
const EXPECTED: &[(&str, &str, i32, &[&str])] = &[
    (
        "docs/getting-started.md",
        "moorline --version",
        0,
        &[concat!("moorline ", env!("CARGO_PKG_VERSION"))],
    ),
    (
        "docs/getting-started.md",
        "moorline init",
        0,
        &["moorline.kdl"],
    ),
    // The fixture's Node.js services have no start script: init leaves their
    // start commands as TODOs, which validate refuses.
    (
        "docs/getting-started.md",
        "moorline validate",
        1,
        &["moorline::config::init_todo", "TODO left by init"],
    ),
    (
        "docs/getting-started.md",
        "moorline -c pakashop.kdl validate",
        0,
        &["project pakashop is valid: 3 services"],
    ),
    (
        "docs/getting-started.md",
        "sudo moorline plan --env staging",
        0,
        &[
            "first deploy: there is no previous release to go back to; a failed apply stops the services it started",
        ],
    ),
    (
        "docs/getting-started.md",
        "sudo moorline apply /var/tmp/staging.plan.json",
        0,
        &["succeeded"],
    ),
    (
        "docs/getting-started.md",
        "sudo moorline status --env staging",
        0,
        &[
            "svc-0001",
            "svc-0003",
            "3 services: 3 healthy, 0 unhealthy, 0 drifted",
        ],
    ),
    // Run after a commit to main arrived (see `documented_examples_run`).
    (
        "docs/commands.md",
        "moorline plan --env staging --detailed-exitcode",
        2,
        &[],
    ),
    (
        "docs/commands.md",
        "moorline plan --env staging --format json | jq '.actions[].id'",
        0,
        &["\"restart:svc-0001\""],
    ),
    // docs/operations.md, after an apply killed half-way (see `operations_setup`).
    (
        "docs/operations.md",
        "sudo moorline apply --resume --env production",
        0,
        &[
            // Which actions finished before the kill depends on timing (they run in parallel).
            ": done before the interruption",
            "apply of production succeeded",
        ],
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production",
        0,
        &[
            "the schema stays migrated",
            "rollback of production succeeded",
        ],
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production --service backend --to b6e8724",
        0,
        &["1 service rolls back", "restart:svc-0003"],
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production --database",
        0,
        &[
            "Everything written to the database since",
            "restored pakashop-production-",
        ],
    ),
    (
        "docs/operations.md",
        "sudo moorline rollback --env production --database --yes  # schema back: \"restored B; the next deploy ... runs the migrations again\"",
        0,
        &["the next deploy of production runs the migrations again"],
    ),
    (
        "docs/operations.md",
        "sudo moorline plan --env production --out /var/tmp/restored.plan.json  # deploy, migrate: the database was restored ...",
        0,
        &[
            "svc-0003  deploy, migrate",
            "the database was restored from backup",
        ],
    ),
    (
        "docs/operations.md",
        "sudo moorline apply /var/tmp/restored.plan.json --yes    # the schema matches the code again",
        0,
        &["migrate:svc-0003", "apply of production succeeded"],
    ),
    (
        "docs/operations.md",
        "sudo moorline backup list --env production",
        0,
        &["(taken before the last apply's migrations)"],
    ),
    (
        "docs/operations.md",
        "sudo moorline backup restore pakashop-production-20260609-020000-123456 --env production",
        0,
        &[
            "everything written since it was taken is lost",
            "restored pakashop-production-",
        ],
    ),
    (
        "docs/operations.md",
        "sudo tail -n 5 /var/lib/moorline/pakashop/production/journal.jsonl",
        0,
        &["\"event\":"],
    ),
];

/// The lines of the executed blocks of `file` (continuations joined), with line numbers.
fn executed_lines(file: &str) -> Vec<Vec<(usize, String)>> {
    let text = read(&root().join(file));
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let marked = i > 0 && lines[i - 1].trim() == EXECUTED;
        if lines[i].trim() == "```sh" {
            if file == "docs/getting-started.md" {
                assert!(
                    marked,
                    "{file}:{}: every sh block of the walk-through is executed; mark it with {EXECUTED}",
                    i + 1
                );
            }
            let mut block = Vec::new();
            let mut pending: Option<(usize, String)> = None;
            i += 1;
            while i < lines.len() && !lines[i].trim().starts_with("```") {
                let trimmed = lines[i].trim();
                let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
                if let Some(head) = trimmed.strip_suffix('\\') {
                    acc.push_str(head);
                    pending = Some((start, acc));
                } else {
                    acc.push_str(trimmed);
                    block.push((start, acc));
                }
                i += 1;
            }
            if marked {
                blocks.push(block);
            }
        } else {
            assert!(
                lines[i].trim() != EXECUTED
                    || lines.get(i + 1).is_some_and(|l| l.trim() == "```sh"),
                "{file}:{}: {EXECUTED} must come right before a ```sh block",
                i + 1
            );
        }
        i += 1;
    }
    blocks
}

/// Runs the executed blocks of `file` in order; records skipped lines and checked expectations.
struct Runner {
    repo: PathBuf,
    shop: PathBuf,
    tmp: PathBuf,
    bin: PathBuf,
    sandbox: &'static moorline::demo::sandbox::PrivateSystemd,
    skipped: BTreeSet<(String, String)>,
    expected: BTreeSet<(String, String)>,
    confirmed: BTreeSet<(String, String)>,
    ran: usize,
    /// Example ids of the docs and the real ones of this run (`b6e8724` and the like).
    ids: Vec<(String, String)>,
}

impl Runner {
    fn substitute(&self, file: &str, line: &str) -> String {
        let mut out = line.to_owned();
        let for_file = FILE_SUBSTITUTIONS
            .iter()
            .filter(|(f, _, _)| *f == file)
            .map(|(_, from, to)| (from, to));
        for (from, to) in for_file.chain(SUBSTITUTIONS.iter().map(|(f, t)| (f, t))) {
            let to = to
                .replace("{repo}", &self.repo.display().to_string())
                .replace("{shop}", &self.shop.display().to_string())
                .replace("{tmp}", &self.tmp.display().to_string());
            out = out.replace(from, &to);
        }
        for (from, to) in &self.ids {
            out = out.replace(from.as_str(), to);
        }
        if out.contains(EXAMPLE_BACKUP_ID) {
            out = out.replace(EXAMPLE_BACKUP_ID, &self.newest_backup());
        }
        out
    }

    /// The id of the newest backup recorded in the production state of the run.
    fn newest_backup(&self) -> String {
        let path = self
            .tmp
            .join("state/moorline/pakashop/production/state.json");
        let state: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
        state["backups"]
            .as_array()
            .and_then(|b| b.iter().max_by_key(|b| b["taken_at"].as_u64()))
            .and_then(|b| b["id"].as_str())
            .unwrap_or_else(|| panic!("no backup in {}", path.display()))
            .to_owned()
    }

    /// Runs a set-up step (not from the docs) in the repository.
    fn setup(&self, script: &str) -> std::process::Output {
        let out = self
            .command(&self.substitute("", script), &self.repo)
            .output()
            .unwrap();
        eprintln!("set-up: exit {:?}: {script}", out.status.code());
        out
    }

    fn run_file(&mut self, file: &str) {
        self.run_file_with(file, |_, _| {});
    }

    /// Runs the executed blocks of `file`, calling `before(runner, i)` before the `i`th one
    /// (counted from 0) to set up what the docs assume at that point.
    fn run_file_with(&mut self, file: &str, mut before: impl FnMut(&mut Runner, usize)) {
        let blocks = executed_lines(file);
        assert!(!blocks.is_empty(), "{file} has no block marked {EXECUTED}");
        for (i, block) in blocks.into_iter().enumerate() {
            before(self, i);
            let mut cwd = self.repo.clone();
            for (n, line) in block {
                if let Some((_, _, why)) = SKIPPED
                    .iter()
                    .find(|(f, l, _)| *f == file && line.starts_with(l))
                {
                    eprintln!("{file}:{n}: skipped ({why}): {line}");
                    self.skipped.insert((file.to_owned(), line.clone()));
                    continue;
                }
                let mut script = self.substitute(file, &line);
                if CONFIRMED.iter().any(|(f, l)| *f == file && *l == line) {
                    self.confirmed.insert((file.to_owned(), line.clone()));
                    script.push_str(" --yes");
                }
                if let Some(dir) = script.strip_prefix("cd ") {
                    cwd = PathBuf::from(dir.trim());
                    assert!(
                        cwd.is_dir(),
                        "{file}:{n}: {line}: no directory {}",
                        cwd.display()
                    );
                    continue;
                }
                let (code, texts) = EXPECTED
                    .iter()
                    .find(|(f, l, _, _)| *f == file && *l == line)
                    .map_or((0, &[][..]), |(_, _, c, t)| (*c, *t));
                if code != 0 || !texts.is_empty() {
                    self.expected.insert((file.to_owned(), line.clone()));
                }
                let out = self.command(&script, &cwd).output().unwrap();
                self.ran += 1;
                let shown = format!(
                    "{file}:{n}: {line}\n  ran: {script}\n  in {}\n  status {:?}\n--- stdout\n{}\n--- stderr\n{}",
                    cwd.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("{file}:{n}: exit {:?}: {line}", out.status.code());
                assert_eq!(out.status.code(), Some(code), "{shown}");
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                for text in texts {
                    assert!(all.contains(text), "the output lacks {text:?}:\n{shown}");
                }
            }
        }
    }

    fn command(&self, script: &str, cwd: &Path) -> std::process::Command {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let config_home = self.sandbox.unit_dir();
        let config_home = config_home.parent().and_then(Path::parent).unwrap();
        let mut c = std::process::Command::new("bash");
        c.args(["-o", "pipefail", "-c", script])
            .current_dir(cwd)
            .env("PATH", path)
            .env("XDG_STATE_HOME", self.tmp.join("state"))
            .env("XDG_RUNTIME_DIR", self.sandbox.runtime_dir())
            .env("DBUS_SESSION_BUS_ADDRESS", self.sandbox.bus_address())
            .env("XDG_CONFIG_HOME", config_home)
            .env("MOORLINE_JOURNAL_DIRECTORY", self.sandbox.journal_dir())
            .env("NO_COLOR", "1")
            .env_remove("MOORLINE_CONFIG")
            .stdin(std::process::Stdio::null());
        c
    }
}

#[test]
fn documented_examples_run() {
    let Some(sandbox) = crate::support::sandbox() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = moorline::demo::fixture::FixtureOptions::new(dir.path().join("srv"));
    opts.port_base = Some(crate::support::port(28100));
    opts.services = Some(3);
    let fx = moorline::demo::fixture::Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    // Staging and production share this host: units and ports of their own, as `validate`
    // requires.
    let text = read(&fx.config_path)
        .replace(
            "unit-name \"pakashop-{service}.service\"",
            "unit-name \"gs-{env}-{service}.service\"",
        )
        .replace(
            "environment \"production\" {\n",
            "environment \"production\" {\n    port-offset 50\n",
        );
    fx.commit_config("unit names of this test", &text).unwrap();
    // A host's clone has the remote's branches (docs/commands.md plans `origin/main`).
    {
        let repo = git2::Repository::open(&fx.repo).unwrap();
        for branch in ["main", "production"] {
            let id = repo.revparse_single(branch).unwrap().id();
            repo.reference(&format!("refs/remotes/origin/{branch}"), id, true, "fetch")
                .unwrap();
        }
    }
    // `moorline init` runs in a repository without a configuration: a copy of the fixture's.
    let shop = dir.path().join("shop");
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&fx.repo)
        .arg(&shop)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(shop.join("moorline.kdl")).unwrap();
    // `moorline` on PATH: the real binary, driving the user manager (unless the line says which).
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("moorline");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --systemd \"*) exec '{0}' \"$@\";; esac\nexec '{0}' --systemd user \"$@\"\n",
            env!("CARGO_BIN_EXE_moorline")
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut runner = Runner {
        repo: fx.repo.clone(),
        shop,
        tmp,
        bin,
        sandbox,
        skipped: BTreeSet::new(),
        expected: BTreeSet::new(),
        confirmed: BTreeSet::new(),
        ran: 0,
        ids: Vec::new(),
    };

    runner.run_file("docs/getting-started.md");
    // What the walk-through says is on the host, under the user manager's state directory.
    let main = fx.head("main").unwrap();
    for s in &fx.services {
        let current = fx.env_root("staging").join(&s.name).join("current");
        assert_eq!(
            std::fs::read_link(&current).unwrap(),
            fx.env_root("staging")
                .join(&s.name)
                .join("releases")
                .join(&main),
            "{}",
            current.display()
        );
        assert!(current.join(".moorline-built").is_file(), "{}", s.name);
        assert!(
            sandbox
                .unit_dir()
                .join(format!("gs-staging-{}.service", s.name))
                .is_file()
        );
    }
    let state = runner.tmp.join("state/moorline/pakashop/staging");
    assert!(state.join("state.json").is_file(), "{}", state.display());
    assert!(!state.join("journal.jsonl").exists());
    assert!(state.join("lock").exists());
    let history: Vec<_> = std::fs::read_dir(state.join("history")).unwrap().collect();
    assert_eq!(history.len(), 1, "one finished apply");

    // A commit arrives; the plan examples of docs/commands.md show it.
    fx.commit(
        "main",
        "a change",
        &[moorline::demo::fixture::Edit::touch_service("svc-0001")],
    )
    .unwrap();
    runner.run_file("docs/commands.md");

    // docs/operations.md runs against a second fixture whose production needs approval, as
    // Pakashop's does, with its own unit names and ports (staging's units keep running).
    let prod = operations_fixture(dir.path());
    runner.repo = prod.repo.clone();
    runner.run_file_with("docs/operations.md", |r, block| {
        operations_setup(r, &prod, block);
    });

    let sd = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    sd.block_on(async {
        let systemd = sandbox.connect().await.unwrap();
        for s in &fx.services {
            for env in ["staging", "production"] {
                let _ = systemd.stop(&format!("gs-{env}-{}.service", s.name)).await;
                let _ = systemd.stop(&format!("ops-{env}-{}.service", s.name)).await;
            }
        }
    });

    let want_skipped: BTreeSet<(String, String)> = SKIPPED
        .iter()
        .map(|(f, l, _)| (f.to_string(), l.to_string()))
        .collect();
    let got_skipped: BTreeSet<(String, String)> = runner
        .skipped
        .iter()
        .map(|(f, l)| {
            let prefix = SKIPPED
                .iter()
                .find(|(sf, sl, _)| sf == f && l.starts_with(sl))
                .unwrap()
                .1;
            (f.clone(), prefix.to_owned())
        })
        .collect();
    assert_eq!(
        got_skipped, want_skipped,
        "SKIPPED names lines the docs no longer have"
    );
    let want_expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(f, l, _, _)| (f.to_string(), l.to_string()))
        .collect();
    assert_eq!(
        runner.expected, want_expected,
        "EXPECTED names lines the executed blocks no longer have"
    );
    let want_confirmed: BTreeSet<(String, String)> = CONFIRMED
        .iter()
        .map(|(f, l)| (f.to_string(), l.to_string()))
        .collect();
    assert_eq!(
        runner.confirmed, want_confirmed,
        "CONFIRMED names lines the executed blocks no longer have"
    );
    assert!(runner.ran >= 26, "only {} lines ran", runner.ran);
}

/// The fixture of docs/operations.md: production with `approval #true` and a backup block,
/// units `ops-{env}-{service}.service`, production's ports 50 above staging's.
fn operations_fixture(dir: &Path) -> moorline::demo::fixture::Fixture {
    let mut opts = moorline::demo::fixture::FixtureOptions::new(dir.join("ops-srv"));
    opts.port_base = Some(crate::support::port(28200));
    opts.services = Some(3);
    let fx = moorline::demo::fixture::Fixture::create(&dir.join("ops"), &opts).unwrap();
    let text = read(&fx.config_path)
        .replace(
            "unit-name \"pakashop-{service}.service\"",
            "unit-name \"ops-{env}-{service}.service\"",
        )
        .replace(
            "environment \"production\" {\n",
            "environment \"production\" {\n    approval #true\n    port-offset 50\n",
        );
    assert!(text.contains("approval #true"), "{text}");
    fx.commit_config("unit names and approval of this test", &text)
        .unwrap();
    fx
}

/// What docs/operations.md assumes before its `block`th executed block.
fn operations_setup(r: &mut Runner, fx: &moorline::demo::fixture::Fixture, block: usize) {
    match block {
        // Resume: a first deploy of production, then a commit that migrates svc-0003, whose
        // apply is killed half-way. The rollback examples then find two kept releases and a
        // backup taken before a migration.
        0 => {
            let planned = r.setup("moorline plan --env production --out /var/tmp/ops-1.plan.json");
            assert!(planned.status.success(), "{planned:?}");
            let first = r.setup("moorline apply /var/tmp/ops-1.plan.json --yes");
            assert!(first.status.success(), "{first:?}");
            let second = interrupted_apply(r, fx, "0002_coupons");
            r.ids.push(("b6e8724".to_owned(), second[..7].to_owned()));
        }
        // The journal examples read an unfinished journal: another apply killed half-way.
        4 => {
            interrupted_apply(r, fx, "0003_loyalty");
        }
        _ => {}
    }
}

/// Commits a change of svc-0001 and the migration `migration` of svc-0003 to production, plans
/// it and kills its apply half-way (right after its first `succeeded` record: one action has
/// finished), leaving an unfinished journal. Returns the commit.
fn interrupted_apply(r: &Runner, fx: &moorline::demo::fixture::Fixture, migration: &str) -> String {
    let commit = fx
        .commit(
            "production",
            migration,
            &[
                moorline::demo::fixture::Edit::touch_service("svc-0001"),
                moorline::demo::fixture::Edit::add_migration("svc-0003", migration),
            ],
        )
        .unwrap();
    let planned = r.setup("moorline plan --env production --out /var/tmp/ops-2.plan.json");
    assert!(planned.status.success(), "{planned:?}");
    let mut killed = r.command(
        &r.substitute("", "moorline apply /var/tmp/ops-2.plan.json --yes"),
        &r.repo,
    );
    let killed = killed
        .env("MOORLINE_TEST_CRASH_AFTER_EVENT", "succeeded")
        .output()
        .unwrap();
    assert_ne!(killed.status.code(), Some(0), "{killed:?}");
    let journal = r
        .tmp
        .join("state/moorline/pakashop/production/journal.jsonl");
    assert!(journal.is_file(), "the killed apply left its journal");
    assert!(r.tmp.join("ops-2.plan.json").is_file());
    commit
}
