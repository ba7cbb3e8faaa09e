//! Exit codes: the one place they are defined. Documented in
//! docs/commands.md; stable across releases.

/// Everything went as asked (for `plan --detailed-exitcode`: no changes).
pub const OK: i32 = 0;
/// An error: bad input, a refused or failed operation that changed nothing.
pub const ERROR: i32 = 1;
/// `plan --detailed-exitcode`: the plan has changes.
pub const CHANGES: i32 = 2;
/// `apply` failed and every service was rolled back to its previous release.
pub const ROLLED_BACK: i32 = 3;
/// `apply` failed and needs attention (`--on-failure stop`, or a rollback
/// that could not finish).
pub const NEEDS_ATTENTION: i32 = 4;
/// `status --check`: a service is unhealthy (not active, not live, not
/// ready, migrations pending) or something drifted (unit file edited,
/// `current` moved, undeployed commits on the branch, never deployed).
/// Distinct from `ERROR` so a health check can tell "the fleet is unwell"
/// from "moorline could not look" (bad config, no bus).
pub const UNHEALTHY: i32 = 5;
