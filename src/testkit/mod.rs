//! The test kit: what only the integration tests and benches need, compiled only with the
//! `testkit` feature (which the package's dev-dependency on itself turns on for `cargo test`
//! and `cargo bench`), so the shipped binary carries none of it.
//!
//! - [`artifact`]: artifacts packed from a release an apply built, as `moorline artifact build` would.
//! - [`hosts`]: simulated fleet hosts (network namespaces, sshd, a private manager each).
//! - [`booted`]: booted hosts (a Debian image, `systemd-nspawn --boot`, systemd as PID 1).
//! - [`deadline`]: every test deadline, scaled by `MOORLINE_TEST_TIME_SCALE`.
//! - [`fixture`] and [`sandbox`]: the test-only API of the demo's fixture repositories
//!   (`crate::demo::fixture`) and private managers (`crate::demo::sandbox`).

pub mod artifact;
pub mod booted;
pub mod deadline;
pub mod fixture;
pub mod hosts;
pub(crate) mod sandbox;
