//! The fleet's artifacts: built once on the controller for the services its
//! hosts' plans build, and sent to each host before its apply, only what
//! the host's store lacks. In: a fleet plan and a prepared host; out: the
//! plan annotated with the artifacts ([`build`]), the bytes sent to a host
//! ([`send`]). Guarantees: a host keeps an item only when its SHA-256 is
//! the one named (its `moorline artifact receive` checks it before the item
//! takes its name), so an interrupted transfer leaves nothing and is simply
//! sent again; what a host's apply installs is what the plan names, since
//! the host plans again with the same ids (`--artifact`) and its
//! fingerprint must match the reviewed one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::plan::{ArtifactView, FleetPlan};
use super::remote::Prepared;
use super::ssh::Input;
use super::{Fleet, FleetError};
use crate::artifact::store::Item;

/// Builds here, once, the artifact of each service whose build is in any
/// host's plan (services that build on each host left out) at the plan's
/// target, and makes every host's plan install it.
pub(crate) async fn build(fleet: &Fleet, plan: &mut FleetPlan) -> Result<(), FleetError> {
    let services = crate::builder::built_in(plan.hosts.iter().map(|h| &h.plan), |s| {
        fleet.builder.builds(s)
    });
    if services.is_empty() {
        return Ok(());
    }
    let made = fleet.builder.build(&plan.to.sha, &services).await?;
    for m in &made {
        eprintln!(
            "[controller] artifact of {} at {}: {} ({} files, {}{})",
            m.service,
            crate::plan::short(&m.commit),
            crate::artifact::short(&m.id),
            m.files,
            crate::builder::human_size(m.size),
            if m.built { ", built now" } else { "" }
        );
    }
    let views = made
        .into_iter()
        .map(|m| ArtifactView {
            service: m.service,
            commit: m.commit,
            id: m.id,
            size: m.size,
            files: m.files,
            built_on: "controller".to_owned(),
        })
        .collect();
    super::plan::with_artifacts(plan, views);
    Ok(())
}

/// Before a rollout: the controller's store holds every artifact `plan`
/// names, or what it lacks is built again and refused unless it is the
/// very artifact planned (`moorline::artifact::not_as_planned`).
pub(crate) async fn ensure(fleet: &Fleet, plan: &FleetPlan) -> Result<(), FleetError> {
    let planned: BTreeMap<String, String> = plan
        .artifacts
        .iter()
        .map(|a| (a.service.clone(), a.id.clone()))
        .collect();
    Ok(fleet.builder.ensure(&plan.to.sha, &planned).await?)
}

/// The `--artifact SERVICE=ID` flags of a host's apply: the artifacts its
/// plan installs.
pub(crate) fn apply_flags(ids: &BTreeMap<String, String>) -> Vec<String> {
    ids.iter()
        .flat_map(|(s, id)| ["--artifact".to_owned(), format!("{s}={id}")])
        .collect()
}

/// The host's command that lists which of `items` its store lacks.
fn missing_words(env: &str, items: &[Item]) -> Vec<String> {
    let mut w = vec![
        "artifact".to_owned(),
        "missing".to_owned(),
        "--env".to_owned(),
        env.to_owned(),
    ];
    for i in items {
        w.extend(i.words().map(str::to_owned));
    }
    w
}

/// The host's command that keeps `item`, read from its standard input.
fn receive_words(env: &str, item: &Item) -> Vec<String> {
    let [kind, hex] = item.words();
    ["artifact", "receive", "--env", env, kind, hex]
        .map(str::to_owned)
        .to_vec()
}

/// What the host said it lacks, of what was asked (anything else it
/// printed is ignored: only items asked for are sent).
fn parse_missing(stdout: &str, asked: &[Item]) -> Vec<Item> {
    stdout
        .lines()
        .filter_map(|l| {
            let (kind, hex) = l.trim().split_once(' ')?;
            Item::parse(kind, hex)
        })
        .filter(|i| asked.contains(i))
        .collect()
}

/// Every item of the artifacts `ids` names, from the controller's store:
/// the packs first, then each manifest (a host store that has a manifest
/// then mostly has its packs), each with its file there.
fn items_of(
    fleet: &Fleet,
    ids: &BTreeMap<String, String>,
) -> Result<Vec<(Item, PathBuf)>, FleetError> {
    let store = fleet.builder.store();
    let (mut packs, mut manifests) = (Vec::new(), Vec::new());
    for id in ids.values() {
        let m = store
            .manifest(id)
            .map_err(crate::builder::BuilderError::from)?;
        for p in m.packs() {
            let item = Item::Pack(p.sha256.clone());
            if !packs.iter().any(|(i, _)| *i == item) {
                let path = store.path(&item);
                packs.push((item, path));
            }
        }
        if let Some(hex) = crate::artifact::hex_of(id) {
            let item = Item::Manifest(hex.to_owned());
            let path = store.path(&item);
            manifests.push((item, path));
        }
    }
    packs.extend(manifests);
    Ok(packs)
}

/// What one host was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Items sent (those its store lacked), of `of` the artifacts have.
    pub(crate) items: usize,
    pub(crate) of: usize,
    pub(crate) bytes: u64,
}

/// Sends host `p` the items of the artifacts `ids` names that its store
/// lacks, over its ssh connection.
pub(crate) async fn send(
    fleet: &Fleet,
    p: &Prepared,
    ids: &BTreeMap<String, String>,
) -> Result<Sent, FleetError> {
    if ids.is_empty() {
        return Ok(Sent::default());
    }
    let all = items_of(fleet, ids)?;
    let asked: Vec<Item> = all.iter().map(|(i, _)| i.clone()).collect();
    let env = &fleet.env.name;
    let words = missing_words(env, &asked);
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let out = fleet
        .transport
        .run(&p.host, &p.moorline(&args), Input::Null)
        .await?;
    if out.code != 0 {
        return Err(FleetError::remote(
            &p.host,
            format!(
                "could not list the artifacts it lacks (exit {}): {}",
                out.code,
                out.stderr.trim()
            ),
            "check the host's moorline and its root's permissions",
        ));
    }
    let lacking = parse_missing(&String::from_utf8_lossy(&out.stdout), &asked);
    let mut sent = Sent {
        of: asked.len(),
        ..Sent::default()
    };
    for (item, path) in all.into_iter().filter(|(i, _)| lacking.contains(i)) {
        let size = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            FleetError::local(
                format!("read {}", path.display()),
                "the controller's artifact store lost it: plan again",
                e,
            )
        })?;
        let words = receive_words(env, &item);
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let out = fleet
            .transport
            .run(&p.host, &p.moorline(&args), Input::File(path))
            .await?;
        if out.code != 0 {
            return Err(FleetError::remote(
                &p.host,
                format!(
                    "did not keep {} (exit {}): {}",
                    item.words().join(" "),
                    out.code,
                    out.stderr.trim()
                ),
                "nothing of it was kept; check free space under the host's root, then apply again (what the host has is not sent again)",
            ));
        }
        sent.bytes += size;
        sent.items += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transfer_protocol_names_items_by_kind_and_hash() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let items = [Item::Pack(a.clone()), Item::Manifest(b.clone())];
        assert_eq!(
            missing_words("prod", &items).join(" "),
            format!("artifact missing --env prod pack {a} manifest {b}")
        );
        assert_eq!(
            receive_words("prod", &items[1]),
            ["artifact", "receive", "--env", "prod", "manifest", &b]
        );
        // Only items asked for, well formed, are sent.
        let c = "c".repeat(64);
        let said = format!("pack {a}\nnoise\npack {c}\nmanifest ../x\n");
        assert_eq!(parse_missing(&said, &items), [Item::Pack(a.clone())]);
        let ids: BTreeMap<String, String> = [
            ("web".to_owned(), format!("sha256:{b}")),
            ("api".to_owned(), format!("sha256:{a}")),
        ]
        .into();
        assert_eq!(
            apply_flags(&ids),
            [
                "--artifact".to_owned(),
                format!("api=sha256:{a}"),
                "--artifact".to_owned(),
                format!("web=sha256:{b}"),
            ]
        );
    }
}
