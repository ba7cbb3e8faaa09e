//! Booted test hosts: in go a scratch directory and a host count, out come [`BootedHosts`],
//! each a Debian bookworm system booted with `systemd-nspawn --boot` (systemd as PID 1, the
//! system manager, a system bus, journald, sshd), in its own network namespace with an address
//! on a bridge of its own, reached with the system `ssh` as `root` (keys only, its own host key,
//! a `known_hosts` written for the client) or with `nsenter` into its namespaces.
//!
//! Guarantees: the image is built once (`mmdebstrap`) and cached under a key made from its
//! package list and recipe ([`Image::ensure`]); every host boots from its own overlay layer
//! over it, so no host changes the image or another host, and no system manager ever boots over
//! the machine's own root filesystem (its boot-time tmpfiles cleanup would empty the machine's
//! `/tmp`, `DESIGN.md`). A host can be powered off and booted again ([`BootedHosts::poweroff`],
//! [`BootedHosts::power_cut`], [`BootedHosts::boot`]) with its files kept and a new boot id.
//! Everything (containers, overlay mounts, veths, the bridge, the network namespaces, the
//! cgroup subtrees) is removed on [`Drop`], also while a test panics; what a killed run left
//! behind (its owner PID is dead) is swept by the next [`BootedHosts::start`].
//!
//! Per host, as spawned:
//!
//! ```text
//! sh (moves itself into a cgroup subtree of its own, then execs)
//! └─ systemd-nspawn --boot -D {layer}/merged --network-namespace-path=/run/netns/mlb-…
//!    └─ systemd (PID 1 of the host) ─ journald, dbus, sshd, nginx, postgresql, …
//! ```

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::demo::cgroup::Subtree;
use crate::testkit::bridge::{self, Bridge, Family};
use crate::testkit::deadline;
use crate::testkit::hosts::{
    HostsError, client_config, ip, keygen, known_hosts_text, run_tool, shell_quote, step, tail,
    write,
};
use crate::testkit::sandbox::descendants;

/// The image's Debian suite (this machine's, so a binary built here runs there).
pub const SUITE: &str = "bookworm";

/// What the image holds (`mmdebstrap --variant=minbase --include=...`). Measured here: the
/// first eight alone 315 MB in about 80 s; with nginx and PostgreSQL 613 MB in 86 s; nodejs
/// adds 55 MB and about 10 s. Go (`golang-go`) would add about 450 MB installed and is left
/// out.
pub const PACKAGES: [&str; 12] = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "git",
    "iproute2",
    "curl",
    "ca-certificates",
    "nginx",
    "postgresql",
    "nodejs",
];

/// Bumped whenever [`customize`] changes what it writes: part of the cache key.
const RECIPE: u32 = 1;

/// Where images are cached unless `MOORLINE_TEST_IMAGE_CACHE` names another directory.
const DEFAULT_CACHE: &str = "/var/cache/moorline-tests";

/// The tools the harness needs.
const TOOLS: [&str; 7] = [
    "mmdebstrap",
    "systemd-nspawn",
    "nsenter",
    "ip",
    "ssh",
    "ssh-keygen",
    "mount",
];

/// Names of everything a run makes start with this, then the owner's PID: `mlb-PID-N-I`.
const PREFIX: &str = "mlb-";

/// The hosts' bridges: `mlboot{n}`, subnet `10.{224 + n / 256}.{n % 256}.0/24` (within
/// 10.224.0.0/12, beside the simulated fleets' 10.208.0.0/12), veths `mlb{n}h{i}`, alias
/// `moorline-boot {pid}-{counter}`.
const BRIDGES: Family = Family {
    bridge: "mlboot",
    veth: "mlb",
    block: 224,
    alias: "moorline-boot",
    what: "the booted hosts",
};

/// How long a host may take to shut down cleanly before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How long an image build may take: `mmdebstrap` downloads about 130 MB of packages.
const BUILD_TIMEOUT: Duration = Duration::from_mins(15);

/// The `PATH` of commands run inside a host.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static STARTS: AtomicU32 = AtomicU32::new(0);

/// The cached, customized root filesystem every host boots from (read only: the lower layer of
/// each host's overlay).
#[derive(Debug, Clone)]
pub struct Image {
    root: PathBuf,
}

impl Image {
    /// The image's cache key: its suite, recipe and package list.
    pub fn key() -> String {
        let text = format!("{SUITE}\n{RECIPE}\n{}", PACKAGES.join(","));
        let hash = crate::files::sha256_hex(text.as_bytes());
        format!("{SUITE}-{}", &hash[..16])
    }

    /// The cache directory (`MOORLINE_TEST_IMAGE_CACHE`, else `/var/cache/moorline-tests`).
    pub fn cache_dir() -> PathBuf {
        std::env::var_os("MOORLINE_TEST_IMAGE_CACHE")
            .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
    }

    /// The cached image, built first when missing (once, under a lock: concurrent test
    /// binaries wait for one build). Prints how long a build took.
    pub fn ensure() -> Result<Image, HostsError> {
        check_environment()?;
        let cache = Self::cache_dir();
        std::fs::create_dir_all(&cache)
            .map_err(|e| step(format!("create {}", cache.display()), e))?;
        let key = Self::key();
        let root = cache.join(format!("image-{key}"));
        let ready = cache.join(format!("image-{key}.ready"));
        let lock_path = cache.join("image.lock");
        let lock = File::create(&lock_path)
            .map_err(|e| step(format!("open {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| step(format!("lock {}", lock_path.display()), e))?;
        if ready.exists() && root.is_dir() {
            return Ok(Image { root });
        }
        let partial = cache.join(format!("image-{key}.partial"));
        for stale in [&partial, &root] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)
                    .map_err(|e| step(format!("remove {}", stale.display()), e))?;
            }
        }
        let started = Instant::now();
        eprintln!(
            "booted hosts: building the {SUITE} image {key} with mmdebstrap (once; cached in {})",
            cache.display()
        );
        let log = cache.join(format!("image-{key}.log"));
        let log_file =
            File::create(&log).map_err(|e| step(format!("create {}", log.display()), e))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| step(format!("open {}", log.display()), e))?;
        let mut child = Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root", "--format=directory"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| step("run mmdebstrap", e))?;
        let status =
            wait_child(&mut child, BUILD_TIMEOUT).map_err(|e| step("wait for mmdebstrap", e))?;
        if !status.is_some_and(|s| s.success()) {
            return Err(step(
                format!("build the {SUITE} image with mmdebstrap ({status:?})"),
                tail(&log),
            ));
        }
        customize(&partial)?;
        std::fs::rename(&partial, &root)
            .map_err(|e| step(format!("rename {}", partial.display()), e))?;
        write(&ready, &format!("{}\n", PACKAGES.join("\n")))?;
        eprintln!(
            "booted hosts: image {key} built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Image { root })
    }

    /// The image's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// What every host gets on top of the packages, written into the image once.
fn customize(root: &Path) -> Result<(), HostsError> {
    // Each host gets a host key of its own (written into its layer); the image's are shared.
    let ssh = root.join("etc/ssh");
    if let Ok(entries) = std::fs::read_dir(&ssh) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    write(
        &root.join("etc/ssh/sshd_config.d/moorline-test.conf"),
        "# Booted moorline test hosts: keys only, one host key per host.\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PrintMotd no\n\
         MaxStartups 200\n\
         MaxSessions 200\n",
    )?;
    // No login prompt on a console nobody reads.
    let masked = root.join("etc/systemd/system/console-getty.service");
    let _ = std::fs::remove_file(&masked);
    std::os::unix::fs::symlink("/dev/null", &masked)
        .map_err(|e| step(format!("mask {}", masked.display()), e))?;
    write(
        &root.join("etc/moorline-test-image"),
        &format!("{}\n", Image::key()),
    )
}

/// One booted host of [`BootedHosts`].
#[derive(Debug)]
pub struct BootedHost {
    name: String,
    machine: String,
    address: Ipv4Addr,
    netns: String,
    veth: String,
    dir: PathBuf,
    mounted: bool,
    nspawn: Option<Child>,
    pid1: Option<u32>,
    cgroup: Option<Subtree>,
}

impl BootedHost {
    /// The host's name (`host1`, ...): its hostname and its `Host` entry in the `ssh_config`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bridge (sshd listens on port 22 there).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The host's PID 1 as the machine sees it; `None` while it is off.
    pub fn pid1(&self) -> Option<u32> {
        self.pid1
    }

    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    fn boot_log(&self) -> PathBuf {
        self.dir.join("boot.log")
    }
}

/// K booted hosts on one bridge; see the module documentation. Stopped on [`Drop`].
#[derive(Debug)]
pub struct BootedHosts {
    id: String,
    dir: PathBuf,
    image: Image,
    bridge: Option<Bridge>,
    binds: Vec<(PathBuf, PathBuf)>,
    hosts: Vec<BootedHost>,
}

impl BootedHosts {
    /// Builds the image if needed, then boots `count` hosts with their layers under `dir` (an
    /// empty scratch directory that outlives the hosts) and waits until each has finished
    /// booting and its sshd answers. `binds` are `(machine path, host path)` pairs mounted read
    /// only into every host (the moorline binary under test). Fails with
    /// [`HostsError::Unavailable`] when not root or a tool is missing (tests skip then).
    pub fn start(
        dir: &Path,
        count: usize,
        binds: &[(PathBuf, PathBuf)],
    ) -> Result<BootedHosts, HostsError> {
        let image = Image::ensure()?;
        let dir = std::path::absolute(dir).map_err(|e| step("resolve the hosts' directory", e))?;
        let counter = STARTS.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{counter}", std::process::id());
        sweep_stale();
        let mut hosts = BootedHosts {
            id,
            dir,
            image,
            bridge: None,
            binds: binds.to_vec(),
            hosts: Vec::new(),
        };
        // On any error below, dropping `hosts` removes what was made so far.
        hosts.bridge = Some(Bridge::create(BRIDGES, &hosts.id, counter)?);
        let client = hosts.dir.join("client");
        std::fs::create_dir_all(&client)
            .map_err(|e| step(format!("create {}", client.display()), e))?;
        keygen(&hosts.identity(), "moorline-booted-client")?;
        for i in 1..=count {
            hosts.create_host(i)?;
        }
        hosts.write_client_config()?;
        // All at once: every container starts before the first is waited for.
        let started = Instant::now();
        for i in 0..count {
            hosts.spawn(i)?;
        }
        for i in 0..count {
            hosts.wait_booted(i)?;
        }
        eprintln!(
            "booted hosts: {count} booted in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(hosts)
    }

    /// The hosts, in order (`host1` first).
    pub fn hosts(&self) -> &[BootedHost] {
        &self.hosts
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &BootedHost {
        &self.hosts[i]
    }

    /// The image the hosts boot from.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The client's `ssh_config` (`ssh -F`), one `Host` entry per host, as root.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("client/ssh_config")
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.join("client/known_hosts")
    }

    fn identity(&self) -> PathBuf {
        self.dir.join("client/id_ed25519")
    }

    /// Where the host's absolute path `path` is on the machine (its overlay, mounted while
    /// the hosts exist, on or off): files written there are the host's own files.
    pub fn path(&self, i: usize, path: &str) -> PathBuf {
        self.hosts[i].merged().join(path.trim_start_matches('/'))
    }

    /// `nsenter` into host `i`'s namespaces with a clean environment (`PATH`, `HOME=/root`,
    /// `LANG=C.UTF-8`); append the program and its arguments.
    pub fn nsenter(&self, i: usize) -> io::Result<Command> {
        let pid1 = self.hosts[i]
            .pid1
            .ok_or_else(|| io::Error::other(format!("{} is not running", self.hosts[i].name)))?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid1.to_string(), "-m", "-u", "-i", "-n", "-p", "--"])
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `argv` on host `i` through [`BootedHosts::nsenter`] and returns its output.
    pub fn exec(&self, i: usize, argv: &[&str]) -> io::Result<Output> {
        self.nsenter(i)?.args(argv).output()
    }

    /// `ssh -F {ssh_config} host{i+1}`: append the remote command (one shell string).
    pub fn ssh_command(&self, i: usize) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(self.ssh_config())
            .arg(&self.hosts[i].name)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` on host `i` over ssh as root, each word quoted, and returns its output.
    pub fn ssh(&self, i: usize, argv: &[&str]) -> io::Result<Output> {
        self.ssh_command(i).arg(shell_quote(argv)).output()
    }

    /// Host `i`'s boot id (`/proc/sys/kernel/random/boot_id`): new at every boot.
    pub fn boot_id(&self, i: usize) -> io::Result<String> {
        let out = self.exec(i, &["cat", "/proc/sys/kernel/random/boot_id"])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Boots host `i` (a no-op while it runs) and waits until systemd reports the boot
    /// finished (`running` or `degraded`: `systemctl --failed` tells which) and sshd answers;
    /// returns how long that took.
    pub fn boot(&mut self, i: usize) -> Result<Duration, HostsError> {
        if self.hosts[i].nspawn.is_some() {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        self.spawn(i)?;
        self.wait_booted(i)?;
        Ok(started.elapsed())
    }

    /// Starts host `i`'s container (`systemd-nspawn --boot`), without waiting.
    fn spawn(&mut self, i: usize) -> Result<(), HostsError> {
        let cgroup = Subtree::create().map_err(|e| step("create a cgroup subtree", e))?;
        let procs: Vec<String> = cgroup
            .iter()
            .flat_map(Subtree::procs_files)
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let h = &self.hosts[i];
        let log = h.boot_log();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| step(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| step(format!("open {}", log.display()), e))?;
        let mut cmd = Command::new("sh");
        // The shell moves itself (and so the container it execs) into a cgroup subtree of its
        // own: nspawn puts the container in `payload` below its own cgroup, which would
        // otherwise be the machine's root cgroup for every host (DESIGN.md, "Every private
        // manager needs its own cgroup subtree").
        cmd.arg("-c")
            .arg(
                "IFS=:; for f in $MOORLINE_CGROUP_PROCS; do echo $$ > \"$f\" || exit 90; done; \
                 unset MOORLINE_CGROUP_PROCS; exec \"$@\"",
            )
            .arg("sh")
            .env("MOORLINE_CGROUP_PROCS", procs.join(":"))
            .arg("systemd-nspawn")
            .args(["--quiet", "--keep-unit", "--register=no", "--boot"])
            .args(["--console=passive", "--link-journal=no"])
            .arg(format!("--machine={}", h.machine))
            .arg(format!("--network-namespace-path=/run/netns/{}", h.netns))
            .arg("-D")
            .arg(h.merged());
        for (from, to) in &self.binds {
            cmd.arg(format!("--bind-ro={}:{}", from.display(), to.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| step("run systemd-nspawn", e))?;
        self.hosts[i].nspawn = Some(child);
        self.hosts[i].cgroup = cgroup;
        Ok(())
    }

    /// Waits until host `i`, spawned, has finished booting and its sshd answers.
    fn wait_booted(&mut self, i: usize) -> Result<(), HostsError> {
        let h = &self.hosts[i];
        let (name, log) = (h.name.clone(), h.boot_log());
        let nspawn_pid = h
            .nspawn
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| step(format!("boot {name}"), "its container was not started"))?;
        let deadline = Instant::now() + deadline::wait().max(Duration::from_mins(1));
        let pid1 = loop {
            if let Some(pid) = container_init(nspawn_pid) {
                break pid;
            }
            if self.nspawn_exited(i) || Instant::now() >= deadline {
                return Err(step(
                    format!("boot {name}"),
                    format!("systemd did not start; boot log:\n{}", tail(&log)),
                ));
            }
            std::thread::sleep(deadline::POLL);
        };
        self.hosts[i].pid1 = Some(pid1);
        loop {
            let state = self
                .exec(i, &["systemctl", "is-system-running"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                break;
            }
            if self.nspawn_exited(i) || Instant::now() >= deadline {
                return Err(step(
                    format!("boot {name}"),
                    format!(
                        "the boot did not finish (state {state:?}); boot log:\n{}",
                        tail(&log)
                    ),
                ));
            }
            std::thread::sleep(deadline::POLL);
        }
        let addr = SocketAddr::from((self.hosts[i].address, 22));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if Instant::now() >= deadline {
                return Err(step(
                    format!("reach sshd of {name} at {addr}"),
                    "not listening",
                ));
            }
            std::thread::sleep(deadline::POLL);
        }
        Ok(())
    }

    /// Shuts host `i` down cleanly (`systemctl poweroff`: units stopped, files synced) and
    /// waits until it is off; killed after a grace period. A no-op while it is off.
    pub fn poweroff(&mut self, i: usize) {
        if self.hosts[i].nspawn.is_none() {
            return;
        }
        let _ = self.exec(i, &["systemctl", "poweroff", "--no-block"]);
        self.wait_off(i, SHUTDOWN_GRACE);
    }

    /// Cuts host `i`'s power: every process on it is killed at once (`SIGKILL` to its PID 1
    /// ends its PID namespace), with no unit stopped. What was written to files stays (the
    /// page cache is the machine's), as after a crash of moorline, not of the disk.
    pub fn power_cut(&mut self, i: usize) {
        if let Some(pid1) = self.hosts[i].pid1 {
            let _ = run_tool("kill", &["-KILL", &pid1.to_string()]);
        }
        self.wait_off(i, SHUTDOWN_GRACE);
    }

    /// Waits up to `grace` for host `i`'s nspawn to exit, then kills it and its container.
    fn wait_off(&mut self, i: usize, grace: Duration) {
        let h = &mut self.hosts[i];
        if let Some(mut child) = h.nspawn.take()
            && !matches!(wait_child(&mut child, grace), Ok(Some(_)))
        {
            if let Some(pid1) = h.pid1 {
                let _ = run_tool("kill", &["-KILL", &pid1.to_string()]);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        h.pid1 = None;
        // Removed depth-first once the container's processes are reaped.
        drop(h.cgroup.take());
    }

    fn nspawn_exited(&mut self, i: usize) -> bool {
        self.hosts[i]
            .nspawn
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn create_host(&mut self, index: usize) -> Result<(), HostsError> {
        let name = format!("host{index}");
        let machine = format!("{PREFIX}{}-{index}", self.id);
        let bridge = self
            .bridge
            .as_ref()
            .ok_or_else(|| step("add a host", "the hosts have no bridge"))?;
        let address = bridge.address(index)?;
        let dir = self.dir.join(&machine);
        for sub in ["upper", "work", "merged"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|e| step(format!("create {}", path.display()), e))?;
        }
        self.hosts.push(BootedHost {
            name: name.clone(),
            machine: machine.clone(),
            address,
            netns: machine.clone(),
            veth: String::new(),
            dir: dir.clone(),
            mounted: false,
            nspawn: None,
            pid1: None,
            cgroup: None,
        });
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.image.root.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let merged = dir.join("merged");
        run_tool(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &options,
                &merged.to_string_lossy(),
            ],
        )?;
        if let Some(h) = self.hosts.last_mut() {
            h.mounted = true;
        }
        ip(&["netns", "add", &machine])?;
        let veth = bridge.add_veth(index, &machine)?;
        if let Some(h) = self.hosts.last_mut() {
            h.veth.clone_from(&veth);
        }
        bridge.connect(&veth, &machine, address)?;

        // The host's own files, in its layer: hostname, host key, the client's key.
        write(&merged.join("etc/hostname"), &format!("{name}\n"))?;
        write(
            &merged.join("etc/hosts"),
            &format!("127.0.0.1 localhost\n127.0.1.1 {name}\n"),
        )?;
        let key = dir.join("ssh_host_ed25519_key");
        keygen(&key, &name)?;
        for suffix in ["", ".pub"] {
            let from = PathBuf::from(format!("{}{suffix}", key.display()));
            let to = merged.join(format!("etc/ssh/ssh_host_ed25519_key{suffix}"));
            std::fs::copy(&from, &to)
                .map_err(|e| step(format!("copy {} to {}", from.display(), to.display()), e))?;
        }
        set_mode(&merged.join("etc/ssh/ssh_host_ed25519_key"), 0o600)?;
        let ssh_dir = merged.join("root/.ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| step(format!("create {}", ssh_dir.display()), e))?;
        set_mode(&ssh_dir, 0o700)?;
        let client_pub = std::fs::read_to_string(self.identity().with_extension("pub"))
            .map_err(|e| step("read the client's public key", e))?;
        write(&ssh_dir.join("authorized_keys"), &client_pub)?;
        set_mode(&ssh_dir.join("authorized_keys"), 0o600)?;
        Ok(())
    }

    fn write_client_config(&self) -> Result<(), HostsError> {
        let known = self
            .hosts
            .iter()
            .map(|h| (h.name(), h.address, h.host_key()));
        write(&self.known_hosts(), &known_hosts_text(known)?)?;
        let hosts: Vec<(&str, Ipv4Addr)> = self
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.address))
            .collect();
        let text = client_config(
            "# Booted moorline test hosts (written by the test kit)\n",
            &hosts,
            &self.identity(),
            &self.known_hosts(),
        );
        write(&self.ssh_config(), &text)
    }

    /// Powers every host off and removes every mount and network object. Idempotent; also
    /// run by [`Drop`]. Errors are ignored: teardown is best effort.
    pub fn stop(&mut self) {
        for i in 0..self.hosts.len() {
            // A test that is tearing down does not need a clean shutdown.
            self.power_cut(i);
        }
        for h in self.hosts.drain(..) {
            if h.mounted {
                let merged = h.merged();
                if run_tool("umount", &[&merged.to_string_lossy()]).is_err() {
                    let _ = run_tool("umount", &["-l", &merged.to_string_lossy()]);
                }
            }
            if !h.veth.is_empty() {
                let _ = ip(&["link", "del", &h.veth]);
            }
            let _ = ip(&["netns", "del", &h.netns]);
        }
        if let Some(bridge) = self.bridge.take() {
            bridge.delete();
        }
    }
}

impl Drop for BootedHosts {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The container's PID 1 below `nspawn` (host PID): the descendant whose innermost PID is 1,
/// once it runs systemd.
fn container_init(nspawn: u32) -> Option<u32> {
    descendants(nspawn).ok()?.into_iter().find(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let inner_one = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| ids.split_whitespace().count() > 1 && ids.ends_with("\t1"));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        inner_one && comm.trim_end() == "systemd"
    })
}

/// Waits up to `timeout` for `child`; `Ok(None)` when it still runs then.
fn wait_child(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(deadline::POLL);
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HostsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| step(format!("chmod {}", path.display()), e))
}

fn check_environment() -> Result<(), HostsError> {
    if !crate::files::is_root() {
        return Err(HostsError::Unavailable {
            reason: "not root (overlay mounts, network namespaces and systemd-nspawn need it)"
                .to_owned(),
        });
    }
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|t| crate::demo::sandbox::find_tool(t).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(HostsError::Unavailable {
            reason: format!(
                "not installed: {} (Debian: `apt-get install mmdebstrap systemd-container \
                 iproute2 openssh-client`)",
                missing.join(", ")
            ),
        });
    }
    Ok(())
}

/// Removes what runs whose process is gone left behind (killed before their `Drop` ran):
/// their containers (killed), overlay mounts, network namespaces and bridges. Best effort.
fn sweep_stale() {
    let dead = bridge::dead;
    let owner = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next().map(str::to_owned))
    };
    // Containers: an nspawn whose `--machine=mlb-PID-...` names a dead PID, and its PID 1.
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_nspawn = args.first().is_some_and(|a| a.ends_with("systemd-nspawn"));
            let stale = args.iter().any(|a| {
                a.strip_prefix("--machine=")
                    .and_then(owner)
                    .is_some_and(|p| dead(&p))
            });
            if is_nspawn && stale {
                if let Some(init) = container_init(pid) {
                    let _ = run_tool("kill", &["-KILL", &init.to_string()]);
                }
                let _ = run_tool("kill", &["-KILL", &pid.to_string()]);
            }
        }
    }
    // Overlay mounts of a dead owner's layers: `.../mlb-PID-N-I/merged`.
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let Some(point) = line.split(' ').nth(4) else {
                continue;
            };
            let Some(machine) = Path::new(point)
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
            else {
                continue;
            };
            if point.ends_with("/merged") && owner(machine).is_some_and(|p| dead(&p)) {
                let _ = run_tool("umount", &["-l", point]);
            }
        }
    }
    bridge::sweep_stale(BRIDGES);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|p| dead(&p)) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_key_follows_the_package_list() {
        let key = Image::key();
        assert!(key.starts_with("bookworm-"), "{key}");
        assert_eq!(key.len(), "bookworm-".len() + 16);
    }

    #[test]
    fn interface_and_machine_names_fit() {
        let n = bridge::NUMBERS - 1;
        assert!(format!("{}{n}", BRIDGES.bridge).len() <= 15);
        assert!(format!("{}{n}h245", BRIDGES.veth).len() <= 15);
        // Machine names are hostnames: at most 64 characters.
        assert!(format!("{PREFIX}{}-{}-245", u32::MAX, u32::MAX).len() <= 64);
    }
}
