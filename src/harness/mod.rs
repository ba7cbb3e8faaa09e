//! Test and demo harness: generated repositories, private systemd managers,
//! simulated fleet hosts; not used by any command except `demo`.
//!
//! - [`fixture`]: Pakashop-shaped git repositories with runnable fake services
//!   ([`fixture::hosts`] simulated fleet hosts, [`fixture::deadline`] every
//!   test deadline).
//! - [`sandbox`]: a private, throw-away `systemd --user` manager, in [`cgroup`] a subtree
//!   of its own.
//! - [`demo`]: the `moorline demo` scenario, built from the two above.

pub mod cgroup;
pub mod demo;
pub mod fixture;
pub mod sandbox;
