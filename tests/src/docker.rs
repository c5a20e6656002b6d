//! Docker fixtures: internal networks and containers from the local test
//! image, each removed on drop.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::command::{output, run, run_quietly};

/// The image `cargo xtask setup` builds from busybox-static.
pub const TEST_IMAGE: &str = "netwarp-test:latest";

/// `docker run` arguments that bind-mount the host's `/usr` and libraries
/// read-only, so tools such as `/usr/bin/iperf3` run inside the busybox
/// image without a registry.
pub const HOST_TOOLS: &[&str] = &[
    "--volume",
    "/usr:/usr:ro",
    "--volume",
    "/lib:/lib:ro",
    "--volume",
    "/lib64:/lib64:ro",
];

/// A Docker network created with `--internal`, so nothing it carries can
/// leave the host.
pub struct DockerNetwork {
    name: String,
    /// The DOCKER-USER rule that lets same-bridge traffic through, if added.
    forward_rule: Option<Vec<String>>,
}

impl DockerNetwork {
    pub fn create_internal(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        run("docker", &["network", "create", "--internal", &name])?;
        Ok(Self {
            name,
            forward_rule: None,
        })
    }

    /// An ordinary (not internal) network: its containers' default route
    /// leads through the host, which masquerades what leaves by it. For a
    /// warp that must reach a server on the host (a VPN endpoint), and for
    /// the path an untunnelled forward would leak by.
    pub fn create_routed(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        run("docker", &["network", "create", &name])?;
        Ok(Self {
            name,
            forward_rule: None,
        })
    }

    /// An internal dual-stack network with a unique ULA /64.
    pub fn create_internal_ipv6(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        // Unique per process and call, so parallel tests never collide.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let subnet = format!("fd00:4e57:{:x}:{n:x}::/64", std::process::id() & 0xffff);
        run(
            "docker",
            &[
                "network",
                "create",
                "--internal",
                "--ipv6",
                "--subnet",
                &subnet,
                &name,
            ],
        )?;
        Ok(Self {
            name,
            forward_rule: None,
        })
    }

    /// An internal network whose containers may exchange packets addressed
    /// outside its subnet. With br_netfilter, Docker's isolation rules drop
    /// such bridged packets on `--internal` networks, which is exactly what
    /// routes-mode steering sends to the warp. An ACCEPT in DOCKER-USER for
    /// traffic that stays on this bridge lets it through; anything leaving
    /// the bridge is still dropped.
    pub fn create_internal_steerable(prefix: &str) -> anyhow::Result<Self> {
        Self::create_steerable(prefix, &[])
    }

    /// [`Self::create_internal_steerable`] with more `docker network
    /// create` arguments.
    fn create_steerable(prefix: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        let mut args = vec!["network", "create", "--internal"];
        args.extend_from_slice(extra);
        args.push(&name);
        run("docker", &args)?;
        let mut network = Self {
            name,
            forward_rule: None,
        };
        let bridge = network.bridge()?;
        let rule: Vec<String> = ["DOCKER-USER", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .map(str::to_owned)
            .to_vec();
        let mut insert = vec!["-I".to_owned()];
        insert.extend(rule.iter().cloned());
        let args: Vec<&str> = insert.iter().map(String::as_str).collect();
        run("iptables", &args)?;
        network.forward_rule = Some(rule);
        Ok(network)
    }

    /// [`Self::create_internal_steerable`] on a /22 of its own in
    /// 10.200.0.0/16, a range no host and no other fixture uses: room for
    /// a thousand containers without taking one of Docker's default pools.
    /// Docker refuses a subnet that overlaps another network's, so a taken
    /// /22 (another test's) moves on to the next; bounded.
    pub fn create_internal_steerable_in_test_range(prefix: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let first = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..16 {
            let block = (first + attempt) % 64;
            let subnet = format!("10.200.{}.0/22", block * 4);
            match Self::create_steerable(prefix, &["--subnet", &subnet]) {
                Ok(network) => return Ok(network),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
            .context("no free /22 in 10.200.0.0/16 after 16 tries")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wraps a network that already exists under `name` (created without
    /// a DOCKER-USER rule), to remove it on drop.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            forward_rule: None,
        }
    }

    /// Disarms the guard: the network (and its DOCKER-USER rule, if any)
    /// outlives it. Returns the network's name.
    pub fn keep(self) -> String {
        let mut network = std::mem::ManuallyDrop::new(self);
        network.forward_rule = None;
        std::mem::take(&mut network.name)
    }

    /// The network's IPv4 subnet, e.g. `172.20.0.0/16`.
    pub fn subnet(&self) -> anyhow::Result<String> {
        let subnet = run(
            "docker",
            &[
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{if not (eq (len .Subnet) 0)}}{{.Subnet}} {{end}}{{end}}",
                &self.name,
            ],
        )?;
        subnet
            .split_whitespace()
            .find(|s| !s.contains(':'))
            .map(str::to_owned)
            .with_context(|| format!("network {} has no IPv4 subnet", self.name))
    }

    /// The host bridge interface, `br-<first 12 of the id>`.
    pub fn bridge(&self) -> anyhow::Result<String> {
        let id = run(
            "docker",
            &["network", "inspect", "--format", "{{.Id}}", &self.name],
        )?;
        Ok(format!("br-{}", &id.trim()[..12]))
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        if let Some(rule) = &self.forward_rule {
            let mut delete = vec!["-D"];
            delete.extend(rule.iter().map(String::as_str));
            run_quietly("iptables", &delete);
        }
        run_quietly("docker", &["network", "rm", &self.name]);
    }
}

/// A running container, force-removed on drop.
pub struct Container {
    name: String,
}

impl Container {
    /// Starts `command` from the test image on `network`.
    pub fn run(
        prefix: &str,
        network: &DockerNetwork,
        extra_args: &[&str],
        command: &[&str],
    ) -> anyhow::Result<Self> {
        Self::make(&["run", "--detach"], prefix, network, extra_args, command)
    }

    /// Creates a container for `command` from the test image on
    /// `network`, and does not start it.
    pub fn create(
        prefix: &str,
        network: &DockerNetwork,
        extra_args: &[&str],
        command: &[&str],
    ) -> anyhow::Result<Self> {
        Self::make(&["create"], prefix, network, extra_args, command)
    }

    fn make(
        verb: &[&str],
        prefix: &str,
        network: &DockerNetwork,
        extra_args: &[&str],
        command: &[&str],
    ) -> anyhow::Result<Self> {
        // Guard first, so a half-failed start is still cleaned up.
        let container = Self {
            name: crate::unique_name(prefix),
        };
        let mut args = verb.to_vec();
        args.extend([
            "--name",
            container.name.as_str(),
            "--network",
            network.name(),
        ]);
        args.extend_from_slice(extra_args);
        args.push(TEST_IMAGE);
        args.extend_from_slice(command);
        run("docker", &args)?;
        Ok(container)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates `command` from the test image named `name` on `network`,
    /// connects it to each of `more_networks` (whose first gateway then
    /// gives its default route when `network` is internal), and starts it.
    pub fn run_on_networks(
        name: &str,
        network: &DockerNetwork,
        more_networks: &[&DockerNetwork],
        extra_args: &[&str],
        command: &[&str],
    ) -> anyhow::Result<Self> {
        let container = Self::adopt(name);
        let mut args = vec!["create", "--name", name, "--network", network.name()];
        args.extend_from_slice(extra_args);
        args.push(TEST_IMAGE);
        args.extend_from_slice(command);
        run("docker", &args)?;
        for more in more_networks {
            run("docker", &["network", "connect", more.name(), name])?;
        }
        run("docker", &["start", name])?;
        Ok(container)
    }

    /// Wraps a container that `docker run` already created under `name`.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// Disarms the guard: the container keeps running after it. Returns
    /// the container's name.
    pub fn keep(self) -> String {
        std::mem::take(&mut std::mem::ManuallyDrop::new(self).name)
    }

    /// Renames the container (`docker rename`); the guard follows it.
    pub fn rename(&mut self, new_name: &str) -> anyhow::Result<()> {
        run("docker", &["rename", &self.name, new_name])?;
        self.name = new_name.to_owned();
        Ok(())
    }

    /// The container's init pid on the host, whose netns is the container's.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let pid = run(
            "docker",
            &["inspect", "--format", "{{.State.Pid}}", &self.name],
        )?;
        pid.trim()
            .parse()
            .with_context(|| format!("pid of {}: `{pid}`", self.name))
    }

    /// Runs `ip ARGS` in the container's network namespace, from the host.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let pid = self.pid()?.to_string();
        let mut command = vec!["-t", pid.as_str(), "-n", "ip"];
        command.extend_from_slice(args);
        run("nsenter", &command)
    }

    /// The container's IPv4 address on `network`.
    pub fn ipv4(&self, network: &DockerNetwork) -> anyhow::Result<String> {
        let template = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            network.name()
        );
        let ip = run("docker", &["inspect", "--format", &template, &self.name])?;
        let ip = ip.trim().to_owned();
        if ip.is_empty() {
            bail!("{} has no address on {}", self.name, network.name());
        }
        Ok(ip)
    }

    /// Runs a command in the container and returns its stdout.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(command);
        run("docker", &args)
    }

    /// Starts a command in the container without waiting for it.
    pub fn exec_detached(&self, command: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["exec", "--detach", self.name.as_str()];
        args.extend_from_slice(command);
        run("docker", &args).map(drop)
    }

    /// The host-side veth of the container's `eth0`: its ifindex and name.
    /// `iflink` inside the container is the peer's ifindex on the host.
    pub fn host_veth(&self) -> anyhow::Result<(u32, String)> {
        let iflink = self.exec(&["cat", "/sys/class/net/eth0/iflink"])?;
        let ifindex: u32 = iflink
            .trim()
            .parse()
            .with_context(|| format!("parsing iflink `{}`", iflink.trim()))?;
        let name = netwarp::dataplane::ebpf::interface_name(ifindex).with_context(|| {
            format!("no host interface with ifindex {ifindex} for {}", self.name)
        })?;
        Ok((ifindex, name))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(out) = output("docker", &["logs", "--tail", "20", &self.name])
            && std::thread::panicking()
        {
            eprintln!(
                "--- last logs of {} ---\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        run_quietly("docker", &["rm", "--force", &self.name]);
    }
}
