//! Exit codes: the one place they are defined. Documented in
//! docs/commands.md; stable across releases.

/// Everything went as asked (for `plan --detailed-exitcode`: no changes).
pub const OK: i32 = 0;
/// An error: bad input, a refused or failed operation that changed nothing.
pub const ERROR: i32 = 1;
/// `plan --detailed-exitcode`: the plan has changes.
pub const CHANGES: i32 = 2;
/// `apply` failed and every service was rolled back to its previous release
/// (a fleet: the rollout stopped, on an unhealthy canary or more failures
/// than `max-fail`, and every host is back on its previous release).
pub const ROLLED_BACK: i32 = 3;
/// `apply` failed and needs attention (`--on-failure stop`, or a rollback
/// that could not finish; a fleet: some host needs attention, lost its
/// connection mid-apply, or its fleet rollback failed).
pub const NEEDS_ATTENTION: i32 = 4;
/// `status --check`: a service is unhealthy (not active, not live, not
/// ready, migrations pending) or something drifted (unit file edited,
/// `current` moved, undeployed commits on the branch, never deployed).
/// Distinct from `ERROR` so a health check can tell "the fleet is unwell"
/// from "moorline could not look" (bad config, no bus).
pub const UNHEALTHY: i32 = 5;
/// A fleet rollout that stayed within its `max-fail` but did not succeed
/// on every host: each such host is on its previous release (its apply
/// failed before anything live changed, rolled itself back, or never ran
/// because the host was unreachable), the others run the new release.
/// Distinct from `OK` so that CI does not read a half-deployed fleet as
/// deployed, and from `ROLLED_BACK`: the fleet was not rolled back.
pub const HOSTS_FAILED: i32 = 6;
