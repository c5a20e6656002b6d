//! A realistic VPN test world: warps that forward what they receive, as a
//! real VPN client does, instead of owning the destination themselves.
//!
//! - [`VpnServer`]: a network namespace joined to the host by a veth on a
//!   TEST-NET-2 /30 (198.51.100.0/24), running userspace WireGuard
//!   (`wireguard-go`); the destination lives on its loopback and is
//!   reachable only through the tunnel.
//! - [`wireguard_warp`]: a container running `wireguard-go` whose tunnel
//!   carries the steered prefix to the server. There is no NAT: the
//!   server's allowed-ips include the targets' subnets, so replies find
//!   their way back into the tunnel and the server sees the targets'
//!   addresses.
//! - [`naive_warp`]: a container that forwards with no tunnel and no NAT:
//!   every steered packet it receives leaves by its default route.
//! - The leak sink ([`crate::chaos::LeakSink`]): the host routes the
//!   steered prefix into a namespace that counts and drops it. That is
//!   where anything a warp forwards untunnelled ends (Docker masquerades
//!   it on the way; the sink counts it all the same).
//!
//! Addresses, all derived from the steered /24's third octet N so that
//! parallel tests never collide: steered prefix 198.18.N.0/24, destination
//! 198.18.N.1 (server loopback), tunnel 198.19.N.1 (server) and 198.19.N.2
//! (warp). The server's own address is outside the steered prefix.
//!
//! Network safety: packets go only between namespaces and containers the
//! test created; the endpoint /30 and the prefixes are documentation and
//! benchmarking space no machine here uses; every fixture is a drop guard.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    chaos::{LeakSink, unique_prefix_octet},
    command::{output, run},
    daemon::eventually,
    docker::{Container, DockerNetwork, HOST_TOOLS},
    netns::{Netns, Veth},
};

/// The UDP port the VPN server listens on (in its own namespace).
pub const LISTEN_PORT: u16 = 51820;

/// The addresses of one VPN world, from its steered /24's third octet.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    octet: u8,
}

impl Addresses {
    /// A steered /24 unique to this process and call.
    pub fn unique() -> Self {
        Self {
            octet: unique_prefix_octet(),
        }
    }

    /// The steered prefix, routed by the host into the leak sink.
    pub fn prefix(&self) -> String {
        format!("198.18.{}.0/24", self.octet)
    }

    /// The destination, on the server's loopback, behind the tunnel.
    pub fn destination(&self) -> String {
        format!("198.18.{}.1", self.octet)
    }

    /// An address in the steered prefix for the sink's self test.
    pub fn sink_probe(&self) -> String {
        format!("198.18.{}.9", self.octet)
    }

    /// The server's tunnel address (what a warp's healthcheck pings).
    pub fn server_tunnel(&self) -> String {
        format!("198.19.{}.1", self.octet)
    }

    /// The warp's tunnel address.
    pub fn warp_tunnel(&self) -> String {
        format!("198.19.{}.2", self.octet)
    }

    /// `[[routing_rules]]` steering the prefix.
    pub fn rules_toml(&self) -> String {
        format!("[[routing_rules]]\ndestination = \"{}\"\n", self.prefix())
    }
}

/// A WireGuard key pair from `wg genkey` / `wg pubkey`.
#[derive(Clone)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

impl KeyPair {
    pub fn generate() -> anyhow::Result<Self> {
        let private = run("wg", &["genkey"])?.trim().to_owned();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning `wg pubkey`")?;
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().context("wg pubkey stdin")?;
            writeln!(stdin, "{private}")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("`wg pubkey` failed ({})", out.status);
        }
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Self { private, public })
    }
}

/// Why the VPN tests cannot run, if they cannot.
pub fn missing_wireguard() -> Option<String> {
    if let Some(reason) = crate::skip::missing_docker() {
        return Some(reason);
    }
    for tool in ["wireguard-go", "wg"] {
        if output(tool, &["--version"]).is_err() {
            return Some(format!(
                "needs `{tool}` (Debian's wireguard-go and wireguard-tools; run `cargo xtask setup`)"
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun for wireguard-go".into());
    }
    None
}

/// A WireGuard server in its own namespace, reached from the host (and so
/// from containers on routed Docker networks) at a 198.51.100.x/30
/// address. Its `wireguard-go` can be stopped and restarted while the
/// namespace stays.
pub struct VpnServer {
    // Field order is drop order (after Drop::drop stops the process).
    process: Option<Child>,
    key_dir: PathBuf,
    iface: String,
    address: String,
    keys: KeyPair,
    peer_public: String,
    peer_allowed_ips: Vec<String>,
    addresses: Addresses,
    _veth: Veth,
    netns: Netns,
}

/// The /30s of 198.51.100.0/24 this process handed out.
static ENDPOINT_SLOTS: Mutex<u32> = Mutex::new(0);

/// A free 198.51.100.4k/30 (none of the host's routes in it): the host's
/// and the server's addresses.
fn free_endpoint_slot() -> anyhow::Result<(String, String)> {
    let mut next = ENDPOINT_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        let slot = (std::process::id().wrapping_mul(5) + *next) % 63 + 1;
        *next += 1;
        let net = format!("198.51.100.{}/30", slot * 4);
        if run("ip", &["-4", "route", "show", "match", &net])?
            .lines()
            .all(|l| l.starts_with("default"))
        {
            return Ok((
                format!("198.51.100.{}", slot * 4 + 1),
                format!("198.51.100.{}", slot * 4 + 2),
            ));
        }
    }
    bail!("no free /30 left in 198.51.100.0/24")
}

impl VpnServer {
    /// Creates the namespace, its veth and the destination on its
    /// loopback; WireGuard is not running until [`Self::up`].
    /// `peer_allowed_ips` are the warp's tunnel /32 plus the targets'
    /// subnets the server routes back into the tunnel.
    pub fn create(
        addresses: Addresses,
        keys: KeyPair,
        peer_public: &str,
        target_subnets: &[String],
    ) -> anyhow::Result<Self> {
        let netns = Netns::create("nwv")?;
        let veth = Veth::create(&netns)?;
        let (host, address) = free_endpoint_slot()?;
        veth.address(&netns, &format!("{host}/30"), &format!("{address}/30"))?;
        netns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", addresses.destination()),
            "dev",
            "lo",
        ])?;
        let key_dir = std::env::temp_dir().join(crate::unique_name("nwvk"));
        std::fs::create_dir_all(&key_dir)?;
        std::fs::write(key_dir.join("private"), format!("{}\n", keys.private))?;
        let mut peer_allowed_ips = vec![format!("{}/32", addresses.warp_tunnel())];
        peer_allowed_ips.extend(target_subnets.iter().cloned());
        Ok(Self {
            process: None,
            key_dir,
            iface: crate::unique_name("nwwg"),
            address,
            keys,
            peer_public: peer_public.to_owned(),
            peer_allowed_ips,
            addresses,
            _veth: veth,
            netns,
        })
    }

    /// The endpoint a warp connects to.
    pub fn endpoint(&self) -> String {
        format!("{}:{LISTEN_PORT}", self.address)
    }

    pub fn public_key(&self) -> &str {
        &self.keys.public
    }

    /// The server's namespace (where the destination lives).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Starts `wireguard-go` and configures the tunnel: the peer, the
    /// server's tunnel address, and routes for the targets' subnets back
    /// into the tunnel.
    pub fn up(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        // A socket left by a killed instance would take `wg`'s connection.
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("ip")
            .args(["netns", "exec", self.netns.name(), "wireguard-go"])
            .arg(&self.iface)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go")?;
        self.process = Some(child);
        if !eventually(Duration::from_secs(10), || {
            self.netns.exec(&["wg", "show", &self.iface]).is_ok()
        }) {
            bail!("wireguard-go never created {}", self.iface);
        }
        let key = self.key_dir.join("private");
        let port = LISTEN_PORT.to_string();
        let allowed = self.peer_allowed_ips.join(",");
        let key = key.to_string_lossy();
        self.netns.exec(&[
            "wg",
            "set",
            &self.iface,
            "listen-port",
            &port,
            "private-key",
            &key,
            "peer",
            &self.peer_public,
            "allowed-ips",
            &allowed,
        ])?;
        self.netns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", self.addresses.server_tunnel()),
            "dev",
            &self.iface,
        ])?;
        self.netns.exec(&["ip", "link", "set", &self.iface, "up"])?;
        for net in &self.peer_allowed_ips {
            self.netns
                .exec(&["ip", "route", "add", net, "dev", &self.iface])?;
        }
        Ok(())
    }

    /// Stops `wireguard-go` (SIGTERM, then waits): the tunnel is dead, its
    /// interface gone.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.process.take() {
            // SAFETY: kill() on our own child's pid (`ip netns exec` execs
            // wireguard-go in place).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait()?;
        }
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.iface))
    }
}

impl Drop for VpnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}

/// How a WireGuard warp runs.
pub struct WarpOptions<'a> {
    /// Seconds before the client brings its tunnel up (a VPN client takes
    /// a while to connect; until then it forwards by its default route).
    pub connect_delay_secs: u32,
    /// A Docker healthcheck that pings the server's tunnel address.
    pub healthcheck: bool,
    /// Labels, `key=value`.
    pub labels: &'a [String],
    /// Networks connected before start, after the one it is created on.
    pub more_networks: &'a [&'a DockerNetwork],
}

/// `docker run` arguments of a healthcheck through the tunnel: `starting`
/// until the first answer (however long the client takes), then
/// `unhealthy` at the first miss.
fn healthcheck_args(addresses: &Addresses) -> Vec<String> {
    [
        "--health-cmd",
        // Bound to wg0: without a tunnel it fails without sending (the
        // host would route the probe out by its own default route).
        &format!("ping -c 1 -W 1 -I wg0 {}", addresses.server_tunnel()),
        "--health-interval",
        "1s",
        "--health-timeout",
        "2s",
        "--health-retries",
        "1",
        "--health-start-period",
        "300s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts a WireGuard warp named `name` on `network`: `wireguard-go wg0`
/// with the host's tools bind-mounted, a tunnel to `server`, the steered
/// prefix and the server's tunnel address routed into it, no NAT, and a
/// main process (`sleep`) that outlives wireguard-go, so the tunnel can
/// die while the container runs.
pub fn wireguard_warp(
    name: &str,
    network: &DockerNetwork,
    addresses: &Addresses,
    keys: &KeyPair,
    server: &VpnServer,
    options: &WarpOptions,
) -> anyhow::Result<Container> {
    let prefix = addresses.prefix();
    let server_tunnel = addresses.server_tunnel();
    let script = format!(
        "export PATH=/usr/sbin:/usr/bin:/bin
sleep {delay}
echo {private} > /tmp/wg.key
rm -f /var/run/wireguard/wg0.sock
wireguard-go wg0
i=0; while ! wg show wg0 >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
wg set wg0 private-key /tmp/wg.key peer {server_public} endpoint {endpoint} \
allowed-ips {prefix},{server_tunnel}/32 persistent-keepalive 1
ip addr add {warp_tunnel}/32 dev wg0
ip link set wg0 up
ip route add {prefix} dev wg0
ip route add {server_tunnel}/32 dev wg0
echo tunnel configured
exec sleep 3600
",
        delay = options.connect_delay_secs,
        private = keys.private,
        server_public = server.public_key(),
        endpoint = server.endpoint(),
        warp_tunnel = addresses.warp_tunnel(),
    );
    let health = healthcheck_args(addresses);
    let mut args: Vec<&str> = vec![
        "--cap-add",
        "NET_ADMIN",
        "--device",
        "/dev/net/tun",
        "--sysctl",
        "net.ipv4.ip_forward=1",
    ];
    args.extend_from_slice(HOST_TOOLS);
    if options.healthcheck {
        args.extend(health.iter().map(String::as_str));
    }
    for label in options.labels {
        args.extend(["--label", label.as_str()]);
    }
    Container::run_on_networks(
        name,
        network,
        options.more_networks,
        &args,
        &["sh", "-c", &script],
    )
}

/// A routed Docker network whose steered prefix the host routes into a
/// leak sink (self-tested), and a running VPN server for a warp on it:
/// the world of the WireGuard chaos scenario and bench. Routed, so that
/// the warp reaches its server through the host, and whatever it forwards
/// untunnelled really takes the host's path (into the sink).
pub struct RoutedVpn {
    // Field order is drop order: the server, the sink, the network.
    pub server: VpnServer,
    pub sink: LeakSink,
    pub network: DockerNetwork,
    pub addresses: Addresses,
    pub warp_keys: KeyPair,
    /// Sink packets after its self test: every later one is a leak.
    pub baseline: u64,
}

impl RoutedVpn {
    pub fn create(network_prefix: &str) -> anyhow::Result<Self> {
        let addresses = Addresses::unique();
        let network = DockerNetwork::create_routed(network_prefix)?;
        let sink = LeakSink::install(&addresses.prefix(), &[network.bridge()?])?;
        sink.self_test(&addresses.sink_probe())?;
        let baseline = sink.baseline();
        let warp_keys = KeyPair::generate()?;
        let mut server = VpnServer::create(
            addresses,
            KeyPair::generate()?,
            &warp_keys.public,
            &[network.subnet()?],
        )?;
        server.up()?;
        Ok(Self {
            server,
            sink,
            network,
            addresses,
            warp_keys,
            baseline,
        })
    }

    /// Starts a WireGuard warp named `name` on the network, its tunnel up
    /// at once.
    pub fn start_warp(&self, name: &str, healthcheck: bool) -> anyhow::Result<Container> {
        let options = WarpOptions {
            connect_delay_secs: 0,
            healthcheck,
            labels: &[],
            more_networks: &[],
        };
        wireguard_warp(
            name,
            &self.network,
            &self.addresses,
            &self.warp_keys,
            &self.server,
            &options,
        )
    }

    /// Packets that reached the sink since its self test.
    pub fn leaks(&self) -> u64 {
        self.sink.packets().saturating_sub(self.baseline)
    }
}

/// Starts a naive forwarding warp: ip_forward on, no tunnel, no NAT, its
/// default route through its Docker network. Every steered packet it
/// receives would leave by that route: the worst case.
pub fn naive_warp(
    name: &str,
    network: &DockerNetwork,
    labels: &[String],
) -> anyhow::Result<Container> {
    let mut args = vec![
        "--cap-add",
        "NET_ADMIN",
        "--sysctl",
        "net.ipv4.ip_forward=1",
    ];
    for label in labels {
        args.extend(["--label", label.as_str()]);
    }
    Container::run_on_networks(name, network, &[], &args, &["sleep", "3600"])
}

/// The container's Docker health status (`starting`, `healthy`,
/// `unhealthy`), empty without a healthcheck.
pub fn health(container: &Container) -> String {
    run(
        "docker",
        &[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container.name(),
        ],
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_default()
}

/// Deletes the warp's tunnel interface while it runs (wireguard-go exits
/// with it, and so do the routes into it).
pub fn delete_tunnel(warp: &Container) -> anyhow::Result<()> {
    warp.exec(&["/usr/sbin/ip", "link", "del", "wg0"]).map(drop)
}

/// Restarts the warp (its script brings the tunnel up again).
pub fn restart(warp: &Container) -> anyhow::Result<()> {
    run("docker", &["restart", "--time", "1", warp.name()]).map(drop)
}

/// IPv4 datagrams the container's namespace forwarded (`ForwDatagrams`
/// of /proc/net/snmp): whether a warp really received and forwarded a
/// target's packets.
pub fn forwarded_datagrams(container: &Container) -> anyhow::Result<u64> {
    let snmp = container.exec(&["cat", "/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Ip: lines in /proc/net/snmp of {}", container.name());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .with_context(|| format!("no ForwDatagrams in `{values}`"))
}

/// Whether netwarp holds `container`'s traffic to `prefix` closed: a
/// `prohibit` route in its table in the container (both dataplanes
/// install one). Checked without sending, since an unprogrammed
/// container's probe would leave by its default route.
pub fn held_closed(container: &Container, prefix: &str) -> bool {
    container
        .ip(&["route", "show", "table", crate::steering::TABLE])
        .is_ok_and(|routes| {
            routes
                .lines()
                .any(|l| l.starts_with("prohibit") && l.contains(prefix))
        })
}

/// One ping from `container` to `destination`, one second at most:
/// whether it was answered.
pub fn answered(container: &Container, destination: &str) -> bool {
    container
        .exec(&["ping", "-c", "1", "-W", "1", destination])
        .is_ok()
}

/// A bounded probe loop inside a target: `count` pings, one every 100 ms
/// (each in the background, so a lost one does not slow the others), each
/// answer recorded in a file inside the container. The loop is bounded
/// and dies with the container.
pub struct Sender {
    target: String,
    file: String,
}

impl Sender {
    pub fn start(target: &Container, destination: &str, count: u32) -> anyhow::Result<Self> {
        let file = format!("/tmp/{}", crate::unique_name("nws"));
        let script = format!(
            "i=0; while [ $i -lt {count} ]; do \
             (ping -c 1 -W 1 {destination} >/dev/null 2>&1 && echo ok >> {file}) & \
             sleep 0.1; i=$((i+1)); done; wait; echo sent > {file}.done"
        );
        target.exec_detached(&["sh", "-c", &script])?;
        Ok(Self {
            target: target.name().to_owned(),
            file,
        })
    }

    fn exec(&self, script: &str) -> anyhow::Result<String> {
        run("docker", &["exec", &self.target, "sh", "-c", script])
    }

    /// Answers so far.
    pub fn answers(&self) -> u64 {
        self.exec(&format!("cat {} 2>/dev/null | wc -l", self.file))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the loop has sent everything (bounded by `timeout`).
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<()> {
        let done = format!("test -e {}.done", self.file);
        if !eventually(timeout, || self.exec(&done).is_ok()) {
            bail!("the probe loop in {} never finished", self.target);
        }
        Ok(())
    }
}
