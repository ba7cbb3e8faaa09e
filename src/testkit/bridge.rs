//! The bridge a set of test hosts shares, for the simulated fleet hosts ([`super::hosts`]) and
//! the booted hosts ([`super::booted`]): in go a [`Family`] (name prefixes, address block, owner
//! alias) and the owner's id, out comes a [`Bridge`] with a number no other running test binary
//! holds, its subnet, and veths from it into the hosts' network namespaces. The bridge's name
//! is the lock on its number and subnet (the kernel refuses a second link of one name); its
//! alias names the owner's PID, so [`sweep_stale`] removes the bridges of owners that died
//! before they could.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::hosts::{HostsError, ip, step};

/// How many bridge numbers a family has: bridge `{prefix}{n}`, subnet
/// `10.{block + n / 256}.{n % 256}.0/24` (a /12 per family).
pub(crate) const NUMBERS: u32 = 4096;

/// The names and addresses of one kind of test hosts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Family {
    /// The bridge's name before its number (`mlfleet`).
    pub(crate) bridge: &'static str,
    /// The machine-side veth's name before the bridge number (`mlf`): `{veth}{n}h{index}`.
    pub(crate) veth: &'static str,
    /// The second octet of the family's /12 (`208`: 10.208.0.0/12).
    pub(crate) block: u8,
    /// The bridge alias before the owner's id (`moorline-fleet`).
    pub(crate) alias: &'static str,
    /// What the hosts are, for error messages (`the fleet`).
    pub(crate) what: &'static str,
}

/// A bridge of a [`Family`], up, with the machine's address ([`Bridge::gateway`]) on it.
#[derive(Debug)]
pub(crate) struct Bridge {
    family: Family,
    name: String,
    number: u32,
    subnet: [u8; 3],
}

impl Bridge {
    /// Creates the bridge with the first free number from one derived from this process and
    /// `counter` (so concurrent test binaries rarely probe the same numbers), aliased to
    /// `owner` (`{pid}-{counter}`), addressed and up; deleted again when a step after its
    /// creation fails.
    pub(crate) fn create(family: Family, owner: &str, counter: u32) -> Result<Bridge, HostsError> {
        let start = (std::process::id()
            .wrapping_mul(31)
            .wrapping_add(counter.wrapping_mul(7)))
            % NUMBERS;
        for k in 0..NUMBERS {
            let number = (start + k) % NUMBERS;
            let name = format!("{}{number}", family.bridge);
            match ip(&["link", "add", "name", &name, "type", "bridge"]) {
                Ok(()) => {
                    let hi = u8::try_from(u32::from(family.block) + number / 256)
                        .unwrap_or(family.block);
                    let lo = u8::try_from(number % 256).unwrap_or(0);
                    let bridge = Bridge {
                        family,
                        name,
                        number,
                        subnet: [10, hi, lo],
                    };
                    if let Err(e) = bridge.set_up(owner) {
                        bridge.delete();
                        return Err(e);
                    }
                    return Ok(bridge);
                }
                Err(HostsError::Step { detail, .. }) if detail.contains("File exists") => {}
                Err(e) => return Err(e),
            }
        }
        Err(step(
            format!("create {}'s bridge", family.what),
            format!("every {} bridge number is taken", family.bridge),
        ))
    }

    fn set_up(&self, owner: &str) -> Result<(), HostsError> {
        let name = &self.name;
        // The alias names the owner, for `sweep_stale`.
        let alias = format!("{} {owner}", self.family.alias);
        ip(&["link", "set", "dev", name, "alias", &alias])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            name,
        ])?;
        ip(&["link", "set", "dev", name, "up"])
    }

    /// The bridge's name (`mlfleet{n}`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The machine's address on the bridge (`10.x.y.1`).
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Host `index`'s address (`10.x.y.{10 + index}`).
    pub(crate) fn address(&self, index: usize) -> Result<Ipv4Addr, HostsError> {
        let [a, b, c] = self.subnet;
        let last = u8::try_from(10 + index)
            .map_err(|_| step("number the hosts", "at most 245 hosts per bridge"))?;
        Ok(Ipv4Addr::new(a, b, c, last))
    }

    /// Creates host `index`'s veth pair: its machine-side end (`{veth}{n}h{index}`, returned)
    /// and `eth0` in the network namespace `netns`. [`Bridge::connect`] puts it to use.
    pub(crate) fn add_veth(&self, index: usize, netns: &str) -> Result<String, HostsError> {
        let veth = format!("{}{}h{index}", self.family.veth, self.number);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        Ok(veth)
    }

    /// Puts `veth` (from [`Bridge::add_veth`]) on the bridge and brings up `lo` and `eth0` in
    /// `netns`, with `address` on `eth0`.
    pub(crate) fn connect(
        &self,
        veth: &str,
        netns: &str,
        address: Ipv4Addr,
    ) -> Result<(), HostsError> {
        ip(&["link", "set", veth, "master", &self.name, "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])
    }

    /// Deletes the bridge (best effort: teardown).
    pub(crate) fn delete(self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// Whether `pid` (a PID as written in a name or alias) names a process that is gone.
pub(crate) fn dead(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// Deletes the bridges of `family` whose alias names a dead owner (killed before it could
/// delete them). Best effort.
pub(crate) fn sweep_stale(family: Family) {
    let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return;
    };
    let marker = format!("alias {} ", family.alias);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split(':').nth(1).map(str::trim).unwrap_or_default();
        let owner = line
            .split_once(&marker)
            .and_then(|(_, rest)| rest.split('-').next());
        if name.starts_with(family.bridge) && owner.is_some_and(dead) {
            let _ = ip(&["link", "del", name]);
        }
    }
}
