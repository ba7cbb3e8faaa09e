//! Observing: reads the repository and the host (state, installed unit
//! files, the `promote-from` source, the working tree) into the planner's
//! inputs, then plans. The one impure step before the pure `plan::build`;
//! `plan`, `graph` and `apply` compute their plans here alike.

use std::collections::BTreeMap;

use crate::config;
use crate::plan::{self, HostView, Plan};
use crate::promotion::{self, when};
use crate::state;
use crate::target::{Target, for_user_manager, resolve_adopt};
use crate::unit;

/// What a plan is asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanRequest {
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) allow_non_ancestor: bool,
    /// `--adopt`: services (or their unit file names) whose unit file that
    /// moorline did not install may be replaced.
    pub(crate) adopt: Vec<String>,
    /// `--skip-promotion-check`: the plan says so, and `apply` goes on
    /// without a healthy run in the `promote-from` source.
    pub(crate) skip_promotion_check: bool,
    /// The plan is to be applied here (`apply`): this host's unit
    /// directory is checked for unit files moorline did not install even
    /// when the baseline comes from the configuration at `from` (a plan
    /// made for review away from the host checks only where it compares
    /// with this host's units).
    pub(crate) on_host: bool,
}

/// Observes the host (state, installed units) and computes the plan.
pub(crate) fn compute_plan(t: &Target, req: &PlanRequest) -> miette::Result<Plan> {
    let config = t.config();
    let loaded_state = state::load(&t.state_dir, &config.project.name, &t.env.name)?;
    let to = match &req.to {
        Some(spec) => t.repo.resolve(spec)?,
        None => t.repo.branch_tip(&t.env.branch)?,
    };
    let from_spec = req
        .from
        .clone()
        .or_else(|| loaded_state.state.as_ref().and_then(|s| s.revision.clone()));
    let from = from_spec.map(|f| t.repo.resolve(&f)).transpose()?;
    let mut warnings = Vec::new();
    if loaded_state.state.is_none()
        && let Some(w) = state_elsewhere(t)
    {
        warnings.push(w);
    }
    if req.to.is_none()
        && to.spec == t.env.branch
        && let Some(remote) = t.repo.remote_tip(&t.env.branch)
        && remote.sha != to.sha
    {
        warnings.push(format!(
            "the local branch {b} ({}) differs from origin/{b} ({}): planning the local one; pass --to origin/{b} to deploy what was pushed",
            plan::short(&to.sha),
            plan::short(&remote.sha),
            b = t.env.branch
        ));
    }
    let mut timers = BTreeMap::new();
    let (units_source, units) = if loaded_state.state.is_some() || from.is_none() {
        timers = installed_timers(t);
        ("host".to_owned(), installed_units(t))
    } else if let Some(f) = &from {
        if let Some((u, old_timers)) = units_at(t, &f.sha) {
            timers = old_timers;
            (format!("config@{}", plan::short(&f.sha)), u)
        } else {
            warnings.push(format!(
                "the configuration at {} could not be read, so unit files are compared with nothing",
                plan::short(&f.sha)
            ));
            ("none".to_owned(), BTreeMap::new())
        }
    } else {
        ("none".to_owned(), BTreeMap::new())
    };
    let changes = t.repo.changes(from, to, req.allow_non_ancestor)?;
    let units_source_is_host = units_source == "host";
    let foreign_units = if req.on_host || units_source == "host" {
        foreign_units(t, loaded_state.state.as_ref())
    } else {
        BTreeMap::new()
    };
    let adopt = resolve_adopt(config, &req.adopt)?;
    // The database, not only git: on the host (a state is here), each
    // deployed service's `migrate-status` says whether migrations are
    // pending. Nothing runs for a config without `migrate-status`.
    let migrate_status = loaded_state
        .state
        .as_ref()
        .map(|st| crate::migrations::for_plan(config, &t.env, &t.state_dir, st, &changes.to.sha))
        .unwrap_or_default();
    let failed_here = loaded_state
        .state
        .as_ref()
        .and_then(|st| failure_of(t, st, &changes.to.sha));
    let host = HostView {
        state: loaded_state.state,
        state_sha256: loaded_state.sha256,
        units_source,
        units,
        timers,
        foreign_units,
        migrate_status,
        deps_cache: (req.on_host || units_source_is_host)
            .then(|| crate::deps::present(&t.env.root)),
    };
    let mut p = plan::build(&plan::Inputs {
        config,
        config_text: &t.loaded.text,
        env: &t.env,
        changes: &changes,
        host: &host,
        repo: &t.repo,
        allow_non_ancestor: req.allow_non_ancestor,
        adopt: &adopt,
    })?;
    p.warnings.extend(warnings);
    if p.operation == plan::Operation::Deploy
        && let Some(f) = failed_here
    {
        p.warnings.push(format!(
            "{}; `apply` asks again before deploying it (or refuses without --yes)",
            failure_words(&f, &p.to.sha)
        ));
        p.failed_here = Some(Box::new(f));
    }
    let (dirty, unchecked) = uncommitted(t, &p.to.sha)?;
    p.uncommitted = dirty;
    p.warnings
        .extend(unchecked.iter().map(|u| unchecked_warning(u)));
    if let Some(promotion) = promotion(t, &p.to.sha, req.skip_promotion_check)? {
        promotion_words(
            &promotion,
            &p.to.sha,
            &t.env.name,
            &mut p.warnings,
            &mut p.notes,
        );
        p.promotion = Some(promotion);
    }
    if let Some(source) = controller_checks_promotion(t) {
        p.notes.push(format!(
            "promotion: {source} is deployed to its own hosts: the fleet controller checks that each of them ran {} healthy when it plans and applies over ssh",
            plan::short(&p.to.sha)
        ));
    }
    if req.skip_promotion_check {
        p.inputs.skip_promotion_check = true;
        p.fingerprint = plan::fingerprint(
            &p.project,
            &p.environment,
            p.from.as_ref().map(|f| f.sha.as_str()),
            &p.to.sha,
            &p.inputs,
        );
    }
    if !p.uncommitted.is_empty() {
        p.warnings.push(uncommitted_warning(&p.uncommitted));
    }
    Ok(p)
}

/// When no state was found in the default state directory of the manager
/// moorline drives (no `--state-dir`), but the other manager's default
/// directory has one (`--systemd user` and `system` keep their states
/// apart): where it is and how to use it. `None` otherwise.
pub(crate) fn state_elsewhere(t: &Target) -> Option<String> {
    use crate::systemd::Bus;
    let project = &t.config().project.name;
    let env = &t.env.name;
    if t.state_dir != state::default_dir(project, env, t.systemd == Bus::User) {
        return None;
    }
    let (other, flag) = match t.systemd {
        Bus::System => (state::default_dir(project, env, true), "user"),
        Bus::User => (state::system_dir(project, env), "system"),
    };
    // The directory is private (0700): seeing it is enough, its file may
    // not be readable from here.
    if other == t.state_dir || !other.is_dir() {
        return None;
    }
    let sudo = if flag == "system" && !crate::files::is_root() {
        " as root (sudo)"
    } else {
        ""
    };
    Some(format!(
        "nothing is recorded as deployed in {} (the state of the {} manager), but {} holds the state of the {flag} manager's deploys of {env}: if {env} runs there, plan with --systemd {flag}{sudo} (or set MOORLINE_SYSTEMD={flag}), or point at it with --state-dir",
        t.state_dir.display(),
        match t.systemd {
            Bus::System => "system",
            Bus::User => "user",
        },
        other.display()
    ))
}

/// The last failure here of `rev` or of a commit with the same tree
/// ([`state::State::failure_of`]).
pub(crate) fn failure_of(t: &Target, st: &state::State, rev: &str) -> Option<state::Failure> {
    let tree = t.repo.tree_id(rev);
    st.failure_of(|r| r == rev || (tree.is_some() && t.repo.tree_id(r) == tree))
}

/// "revision X failed here at T ...", or "X has the same tree as Y, which
/// failed here ...": what `plan` and `status` say about a failure of `rev`.
pub(crate) fn failure_words(f: &state::Failure, rev: &str) -> String {
    if f.revision == rev {
        format!("revision {} {}", plan::short(rev), f.describe())
    } else {
        format!(
            "revision {} has the same tree as {}, which {}",
            plan::short(rev),
            plan::short(&f.revision),
            f.describe()
        )
    }
}

/// How many commits only on this environment's branch a plan names.
const ONLY_HERE_SHOWN: usize = 10;

/// The `promote-from` check of a plan toward `to`: the source
/// environment's runs of `to` (or of a commit with the same tree, such as
/// the merge of its branch into this one), read from its state on this
/// host, and the commits this environment's branch has that the source's
/// lacks. `None` without `promote-from`, and on a host of a fleet whose
/// source is a fleet too: its controller reads the source's hosts
/// ([`controller_checks_promotion`]).
fn promotion(t: &Target, to: &str, skip: bool) -> miette::Result<Option<plan::Promotion>> {
    let (Some(p), Some(dir)) = (&t.env.promote_from, &t.promotion_state_dir) else {
        return Ok(None);
    };
    if controller_checks_promotion(t).is_some() {
        return Ok(None);
    }
    let config = t.config();
    let mut only_here = Vec::new();
    if let Some(source_env) = config.environment(&p.environment) {
        only_here = only_here_of(&t.repo, &t.env.branch, &source_env.branch)?;
    }
    let (state, unavailable) = match state::load(dir, &config.project.name, &p.environment) {
        Ok(l) => (l.state, None),
        Err(e) => (
            None,
            Some(format!("{} could not be read: {e}", dir.display())),
        ),
    };
    let tree = t.repo.tree_id(to);
    let same = |rev: &str| rev == to || (tree.is_some() && t.repo.tree_id(rev) == tree);
    let runs = state.as_ref().map(promotion::runs_of).unwrap_or_default();
    let ran = promotion::latest(&runs, same).cloned();
    let min_healthy_secs = p.min_healthy.as_secs();
    let healthy = promotion::judge(ran.as_ref(), min_healthy_secs, crate::files::now_secs())
        == promotion::Verdict::Counts;
    Ok(Some(plan::Promotion {
        source: p.environment.clone(),
        ran,
        healthy,
        skipped: skip,
        only_here,
        unavailable: unavailable.or_else(|| {
            state.is_none().then(|| {
                format!(
                    "nothing is recorded as deployed in {} ({})",
                    p.environment,
                    dir.display()
                )
            })
        }),
        min_healthy_secs,
    }))
}

/// On a host of a fleet whose `promote-from` source has hosts too, the
/// source's state is on those hosts, not here: the fleet controller
/// checks it (`crate::fleet::promote`). The source environment's name
/// then; `None` otherwise.
pub(crate) fn controller_checks_promotion(t: &Target) -> Option<&str> {
    let p = t.env.promote_from.as_ref()?;
    let source = t.config().environment(&p.environment)?;
    (t.env.is_fleet() && source.is_fleet()).then_some(source.name.as_str())
}

/// Commits on branch `here` that branch `there` lacks (merges aside),
/// newest first, each `sha summary`, at most [`ONLY_HERE_SHOWN`]; empty
/// when either branch is not in `repo`.
pub(crate) fn only_here_of(
    repo: &crate::git::Repo,
    here: &str,
    there: &str,
) -> miette::Result<Vec<String>> {
    let (Ok(here), Ok(there)) = (repo.branch_tip(here), repo.branch_tip(there)) else {
        return Ok(Vec::new());
    };
    Ok(repo
        .only_in(&here.sha, &there.sha, ONLY_HERE_SHOWN)?
        .into_iter()
        .map(|r| format!("{} {}", plan::short(&r.sha), r.summary))
        .collect())
}

/// What a plan says about its promotion check: the run it found (a note),
/// the missing one (a warning: `apply` refuses), a skipped check, and
/// commits only this environment's branch has.
fn promotion_words(
    p: &plan::Promotion,
    to: &str,
    env: &str,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let source = &p.source;
    let sha = plan::short(to);
    let same = |r: &plan::PromotionRun| {
        if r.revision == to {
            String::new()
        } else {
            format!(" (as {}, the same tree)", plan::short(&r.revision))
        }
    };
    match &p.ran {
        Some(r) if p.healthy => {
            let how_long = promotion::how_long(r);
            notes.push(format!(
                "promotion: {source} ran {sha}{} healthy: {how_long}",
                same(r)
            ));
        }
        Some(r) if r.rolled_back_at.is_some() => {
            let at = r
                .rolled_back_at
                .map_or_else(String::new, |t| format!(" at {}", when(t)));
            warnings.push(format!(
                "promotion: {source} ran {sha}{} but it was rolled back by hand there{at}, so it does not count as healthy: {}",
                same(r),
                if p.skipped { "check skipped (--skip-promotion-check)".to_owned() } else { format!("`apply` refuses it unless --skip-promotion-check (deploy it healthy to {source} first)") }
            ));
        }
        Some(r) => {
            let why = promotion::why_not(
                &promotion::verdict_of(Some(r), false),
                source,
                &format!("{sha}{}", same(r)),
                p.min_healthy_secs,
            )
            .unwrap_or_default();
            warnings.push(format!(
                "promotion: {why}: {}",
                if p.skipped { "check skipped (--skip-promotion-check)".to_owned() } else { format!("`apply` refuses it unless --skip-promotion-check (let {source} run it longer first)") }
            ));
        }
        None => {
            let why = p
                .unavailable
                .as_deref()
                .map_or_else(String::new, |u| format!(" ({u})"));
            warnings.push(format!(
                "promotion: {source} never ran {sha} healthy{why}: {}",
                if p.skipped { "check skipped (--skip-promotion-check)".to_owned() } else { format!("`apply` refuses it unless --skip-promotion-check (deploy it to {source} first)") }
            ));
        }
    }
    if !p.only_here.is_empty() {
        warnings.push(format!(
            "{env}'s branch has {} that {source}'s branch lacks (a hotfix not merged back?): {}; merge {} into {source}'s branch, so that {source} runs {} too",
            if p.only_here.len() == 1 { "a commit".to_owned() } else { format!("{} commits", p.only_here.len()) },
            p.only_here.join(", "),
            if p.only_here.len() == 1 { "it" } else { "them" },
            if p.only_here.len() == 1 { "it" } else { "them" },
        ));
    }
}

/// How many uncommitted paths the warning names before it only counts.
const UNCOMMITTED_SHOWN: usize = 5;

/// What a plan toward `to` does not see: uncommitted changes under the
/// config file and every path a service or the proxy is planned from
/// (services deploy from commits, so these would not be deployed), and a
/// config file on disk (which the plan does use) that differs from the one
/// committed at `to`.
/// Also the paths whose working tree could not be read, each `path:
/// reason` ([`crate::git::Uncommitted::unchecked`]).
fn uncommitted(t: &Target, to: &str) -> miette::Result<(Vec<String>, Vec<String>)> {
    let config = t.config();
    let config_rel = config_in_repo(t);
    let mut paths: Vec<String> = config_rel.iter().cloned().collect();
    for s in &config.services {
        paths.push(s.path.clone());
        paths.extend(s.watch.iter().cloned());
    }
    if let Some(p) = &config.proxy {
        paths.extend(p.watch.iter().cloned());
    }
    paths.sort();
    paths.dedup();
    let found = t.repo.uncommitted(&paths)?;
    let mut out = found.changes;
    if let Some(rel) = config_rel
        && t.repo.head_sha().as_deref() != Some(to)
        && !out.iter().any(|d| d.starts_with(&format!("{rel} (")))
    {
        match t.repo.read(to, &rel)? {
            Some(b) if b == t.loaded.text.as_bytes() => {}
            Some(_) => out.push(format!(
                "{rel} (differs from its version at {})",
                plan::short(to)
            )),
            None => out.push(format!("{rel} (not committed at {})", plan::short(to))),
        }
    }
    Ok((out, found.unchecked))
}

/// The config file's path inside the repository, if it lies there.
fn config_in_repo(t: &Target) -> Option<String> {
    let abs = t.loaded.path.canonicalize().ok()?;
    let root = t.repo.root().canonicalize().ok()?;
    let rel = abs.strip_prefix(&root).ok()?;
    Some(rel.to_str()?.to_owned())
}

/// The plan's warning about a path whose working tree could not be read
/// (`path: reason`).
pub(crate) fn unchecked_warning(unchecked: &str) -> String {
    format!(
        "not checked for uncommitted changes, {unchecked}; the plan uses what is committed there, and a tree the release cannot be exported from fails that service's build"
    )
}

/// The plan's warning about uncommitted changes.
fn uncommitted_warning(dirty: &[String]) -> String {
    let shown = dirty
        .iter()
        .take(UNCOMMITTED_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = dirty.len().saturating_sub(UNCOMMITTED_SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "uncommitted changes this plan does not see: {shown}{more}; services deploy from commits and the configuration is read from disk: commit (or revert) them first; `apply` refuses them unless --allow-dirty"
    )
}

/// The unit files installed on this host for every managed service.
pub(crate) fn installed_units(t: &Target) -> BTreeMap<String, Option<String>> {
    t.config()
        .services
        .iter()
        .filter(|s| s.unit.is_some())
        .map(|s| {
            let text = std::fs::read_to_string(t.unit_dir.join(&s.unit_name)).ok();
            (s.name.clone(), text)
        })
        .collect()
}

/// The `.timer` files installed on this host for every scheduled service.
fn installed_timers(t: &Target) -> BTreeMap<String, Option<String>> {
    t.config()
        .services
        .iter()
        .filter(|s| s.unit.is_some())
        .filter_map(|s| {
            let timer = s.timer_unit()?;
            let text = std::fs::read_to_string(t.unit_dir.join(timer)).ok();
            Some((s.name.clone(), text))
        })
        .collect()
}

/// Unit files on this host where a managed service's unit goes that the
/// host state does not record as installed by moorline: a hand-written
/// unit, or one installed with another state directory. Whatever the plan
/// compares units with, these are what an install would overwrite.
fn foreign_units(t: &Target, state: Option<&state::State>) -> BTreeMap<String, plan::ForeignUnit> {
    t.config()
        .services
        .iter()
        .filter(|s| s.unit.is_some())
        .filter(|s| !state.is_some_and(|st| st.installed_unit(&s.name, &s.unit_name)))
        .filter_map(|s| {
            let path = t.unit_dir.join(&s.unit_name);
            // Whatever is there (a file, a link, something unreadable) is
            // not moorline's to replace.
            path.symlink_metadata().ok()?;
            let text = std::fs::read(&path).unwrap_or_default();
            Some((
                s.name.clone(),
                plan::ForeignUnit {
                    path: path.display().to_string(),
                    text: String::from_utf8_lossy(&text).into_owned(),
                },
            ))
        })
        .collect()
}

/// Service name → the text of one of its unit files (`None`: none).
type UnitTexts = BTreeMap<String, Option<String>>;

/// The unit files the configuration as committed at `sha` would render
/// (and the timer files of its scheduled services): the baseline when
/// planning away from the host (a pull request).
fn units_at(t: &Target, sha: &str) -> Option<(UnitTexts, UnitTexts)> {
    let abs = t.loaded.path.canonicalize().ok()?;
    let root = t.repo.root().canonicalize().ok()?;
    let rel = abs.strip_prefix(&root).ok()?;
    let bytes = t.repo.read(sha, &rel.to_string_lossy()).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    // Unchanged configuration (the common case): no second parse.
    let parsed;
    let old = if text == t.loaded.text {
        t.config()
    } else {
        parsed = {
            let mut c = config::parse("old", &text).ok()?;
            c.for_environment(&t.env.name);
            if t.systemd == crate::systemd::Bus::User {
                for_user_manager(&mut c);
            }
            // The same services as now (a fleet host's own), so that the old units are
            // rendered as that host had them, start order included.
            c.keep_services(|s| t.config().service(&s.name).is_some());
            c
        };
        &parsed
    };
    let env = old.environment(&t.env.name)?;
    let managed = || t.config().services.iter().filter(|s| s.unit.is_some());
    let units = managed()
        .map(|s| {
            let rendered = old
                .service(&s.name)
                .and_then(|o| unit::render(env, o).ok().flatten());
            (s.name.clone(), rendered)
        })
        .collect();
    let timers = managed()
        .filter(|s| s.schedule.is_some())
        .map(|s| {
            let rendered = old
                .service(&s.name)
                .and_then(|o| unit::render_timer(env, o).ok().flatten());
            (s.name.clone(), rendered)
        })
        .collect();
    Some((units, timers))
}
