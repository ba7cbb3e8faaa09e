//! `moorline artifact`: `build` (services built here at a revision and
//! packed into an artifact store, [`crate::builder`]), and a fleet host's
//! side of a transfer: `missing` (which of the listed items its store
//! lacks) and `receive` (one item from standard input, kept only if it
//! matches its hash).

use miette::Diagnostic;

use super::{runtime, settings};
use crate::artifact::store::Item;
use crate::artifact::{self, Store};
use crate::builder::{self, Builder, Made};
use crate::cli::{ArtifactBuildArgs, ArtifactCommand, Global, OutputFormat};
use crate::exit;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum ArtifactCmdError {
    #[error("`{words}` names no item of an artifact store")]
    #[diagnostic(
        code(moorline::artifact::bad_item),
        help("items are `manifest HEX` or `pack HEX`, HEX a SHA-256 in 64 lowercase hex digits")
    )]
    BadItem { words: String },
}

/// Runs one `artifact` subcommand.
pub(crate) fn run(global: &Global, cmd: &ArtifactCommand) -> miette::Result<i32> {
    match cmd {
        ArtifactCommand::Build(args) => build(global, args),
        ArtifactCommand::Missing { env, items } => missing(global, env, items),
        ArtifactCommand::Receive { env, kind, hex } => receive(global, env, kind, hex),
    }
}

fn build(global: &Global, args: &ArtifactBuildArgs) -> miette::Result<i32> {
    let t = settings::resolve(global, &args.env)?;
    let to = match &args.to {
        Some(spec) => t.repo.resolve(spec)?,
        None => t.repo.branch_tip(&t.env.branch)?,
    };
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| builder::default_store(&t.state_dir));
    let b = Builder::new(
        t.config(),
        &t.env,
        t.repo.root(),
        &t.state_dir,
        Store::at(&dir),
    );
    let services = b.services(&args.services)?;
    let made = runtime()?.block_on(b.build(&to.sha, &services))?;
    if args.format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"store": dir.display().to_string(), "artifacts": made})
        );
    } else {
        print!("{}", table(&made));
        eprintln!("{} artifacts in {}", made.len(), dir.display());
    }
    Ok(exit::OK)
}

/// `service commit id size` a line, aligned.
fn table(made: &[Made]) -> String {
    use std::fmt::Write as _;
    let w = made.iter().map(|m| m.service.len()).max().unwrap_or(0);
    let mut out = String::new();
    for m in made {
        let _ = writeln!(
            out,
            "{:w$}  {}  {}  {}{}",
            m.service,
            crate::plan::short(&m.commit),
            m.id,
            builder::human_size(m.size),
            if m.built { "" } else { "  (reused)" }
        );
    }
    out
}

/// The items `words` lists (`KIND HEX` pairs).
fn items(words: &[String]) -> Result<Vec<Item>, ArtifactCmdError> {
    if !words.len().is_multiple_of(2) {
        return Err(ArtifactCmdError::BadItem {
            words: words.last().cloned().unwrap_or_default(),
        });
    }
    words
        .chunks(2)
        .map(|w| {
            Item::parse(&w[0], &w[1])
                .ok_or_else(|| ArtifactCmdError::BadItem { words: w.join(" ") })
        })
        .collect()
}

/// The host's store: beside its dependency cache, under the environment's root.
fn host_store(global: &Global, env: &str) -> miette::Result<Store> {
    let t = settings::resolve(global, env)?;
    Ok(Store::at(artifact::host_store(&t.env.root)))
}

fn missing(global: &Global, env: &str, words: &[String]) -> miette::Result<i32> {
    let wanted = items(words)?;
    let store = host_store(global, env)?;
    for item in wanted.iter().filter(|i| !store.has(i)) {
        println!("{}", item.words().join(" "));
    }
    Ok(exit::OK)
}

fn receive(global: &Global, env: &str, kind: &str, hex: &str) -> miette::Result<i32> {
    let item = Item::parse(kind, hex).ok_or_else(|| ArtifactCmdError::BadItem {
        words: format!("{kind} {hex}"),
    })?;
    let store = host_store(global, env)?;
    store.receive(&item, &mut std::io::stdin().lock())?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_kind_and_hex_pairs() {
        let hex = "a".repeat(64);
        let w = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            items(&w(&["manifest", &hex, "pack", &hex])).unwrap(),
            [Item::Manifest(hex.clone()), Item::Pack(hex.clone())]
        );
        assert!(items(&w(&["manifest"])).is_err(), "an odd count");
        assert!(items(&w(&["tarball", &hex])).is_err(), "an unknown kind");
        assert!(
            items(&w(&["pack", "../../etc/passwd"])).is_err(),
            "not a hash"
        );
    }
}
