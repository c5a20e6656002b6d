//! Leak tests with warps that forward, as real VPN clients do: a
//! WireGuard warp (userspace `wireguard-go`) whose tunnel reaches a VPN
//! server in its own namespace, and a naive warp that forwards with no
//! tunnel at all. While the tunnel is not up, a forwarding warp sends what
//! it receives out by its default route, through the host: netwarp must
//! keep every such packet from leaving, in both dataplanes. The leak sink
//! (the host routes the steered prefix into a namespace that counts and
//! drops) sees whatever escapes; the destination lives only behind the
//! tunnel, so an answer proves the target was served through it.
//!
//! Each scenario runs once per dataplane (`_ebpf` and `_routes`), whatever
//! NETWARP_TEST_DATAPLANE says.
//!
//! Network safety: see `netwarp_tests::vpn`. Targets send bounded probe
//! loops; every fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::LeakSink,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::status_json,
    skip_if,
    vpn::{
        Addresses, KeyPair, Sender, VpnServer, WarpOptions, answered, delete_tunnel,
        forwarded_datagrams, health, held_closed, missing_wireguard, naive_warp, restart,
        wireguard_warp,
    },
};

const CONVERGE: Duration = Duration::from_secs(30);
/// Long enough for wireguard-go's handshake retry after a server restart
/// (it rekeys 15 s after its data goes unanswered).
const RECOVER: Duration = Duration::from_secs(45);

/// Where the targets and the warp live.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One routed network for targets and warp.
    OneNetwork,
    /// Targets on an `--internal` network; the warp on it and on a routed
    /// one, which carries its default route (and so any untunnelled
    /// forward). In eBPF mode no DOCKER-USER rule is added.
    TwoNetworks,
}

/// A target, its VPN server, the leak sink and (optionally) a daemon.
struct World {
    // Field order is drop order: the daemon, containers, then networks.
    _daemon: Option<Daemon>,
    warp: Option<Container>,
    target: Container,
    server: VpnServer,
    sink: LeakSink,
    targets_network: DockerNetwork,
    uplink: Option<DockerNetwork>,
    labels: TestLabels,
    addresses: Addresses,
    warp_keys: KeyPair,
    /// Sink packets after its self test.
    baseline: u64,
    mode: &'static str,
}

impl World {
    /// Everything but the warp; the server's WireGuard runs if
    /// `server_up`; a daemon in `mode` runs unless `mode` is empty.
    fn new(mode: &'static str, layout: Layout, server_up: bool) -> Self {
        let labels = TestLabels::unique();
        let addresses = Addresses::unique();
        let (targets_network, uplink) = match layout {
            Layout::OneNetwork => (DockerNetwork::create_routed("nwvr").expect("network"), None),
            Layout::TwoNetworks => {
                // eBPF must do without the README's DOCKER-USER rule for
                // internal networks; routes mode (and a manual route, with
                // no daemon) needs it.
                let internal = if mode == "ebpf" {
                    DockerNetwork::create_internal("nwvi")
                } else {
                    DockerNetwork::create_internal_steerable("nwvi")
                }
                .expect("internal network");
                let uplink = DockerNetwork::create_routed("nwvu").expect("uplink network");
                (internal, Some(uplink))
            }
        };
        let mut bridges = vec![targets_network.bridge().expect("bridge")];
        if let Some(uplink) = &uplink {
            bridges.push(uplink.bridge().expect("bridge"));
        }
        let sink = LeakSink::install(&addresses.prefix(), &bridges).expect("leak sink");
        sink.self_test(&addresses.sink_probe())
            .expect("sink counts");
        let baseline = sink.baseline();
        let warp_keys = KeyPair::generate().expect("warp keys");
        let mut server = VpnServer::create(
            addresses,
            KeyPair::generate().expect("server keys"),
            &warp_keys.public,
            &[targets_network.subnet().expect("subnet")],
        )
        .expect("VPN server");
        if server_up {
            server.up().expect("VPN server up");
        }
        let target_label = labels.target_label(&labels.warp_name("vpn"));
        let target = Container::run(
            "nwvt",
            &targets_network,
            &["--label", &target_label],
            &["sleep", "3600"],
        )
        .expect("target");
        let daemon = (!mode.is_empty()).then(|| {
            let daemon = Daemon::start(&labels, mode, &addresses.rules_toml()).expect("daemon");
            // Programmed and held closed (its warp does not exist yet)
            // before it sends anything: the target ran before any daemon,
            // a window no dataplane can hold (the bridge guard covers
            // targets that start while netwarp runs).
            assert!(
                eventually(CONVERGE, || held_closed(&target, &addresses.prefix())),
                "{mode}: the target was never held closed before its warp existed"
            );
            daemon
        });
        Self {
            _daemon: daemon,
            warp: None,
            target,
            server,
            sink,
            targets_network,
            uplink,
            labels,
            addresses,
            warp_keys,
            baseline,
            mode,
        }
    }

    fn warp_name(&self) -> String {
        self.labels.warp_name("vpn")
    }

    fn start_wireguard_warp(&mut self, connect_delay_secs: u32, healthcheck: bool) {
        let mut labels = Vec::new();
        let mut more = Vec::new();
        if let Some(uplink) = &self.uplink {
            labels.push(self.labels.network_label(self.targets_network.name()));
            more.push(uplink);
        }
        let options = WarpOptions {
            connect_delay_secs,
            healthcheck,
            labels: &labels,
            more_networks: &more,
        };
        let warp = wireguard_warp(
            &self.warp_name(),
            &self.targets_network,
            &self.addresses,
            &self.warp_keys,
            &self.server,
            &options,
        )
        .expect("WireGuard warp");
        self.warp = Some(warp);
    }

    /// Starts a WireGuard warp whose tunnel takes 4 s to come up, with a
    /// healthcheck, while the target sends from before the warp exists
    /// until after it is healthy: nothing leaks, and it is served once
    /// healthy.
    fn start_warp_while_sending(&mut self) {
        let sender = Sender::start(&self.target, &self.destination(), 150).expect("sender");
        std::thread::sleep(Duration::from_secs(1));
        self.start_wireguard_warp(4, true);
        self.wait_health("healthy");
        sender.wait(CONVERGE).expect("sender");
        self.assert_no_leaks("while the warp was starting");
        self.assert_served(CONVERGE, "once the warp was healthy");
    }

    fn warp(&self) -> &Container {
        self.warp.as_ref().expect("a warp")
    }

    fn destination(&self) -> String {
        self.addresses.destination()
    }

    /// Packets that reached the sink since its self test.
    fn leaks(&self) -> u64 {
        self.sink.packets() - self.baseline
    }

    /// What netwarp dropped of the warp's untunnelled forwards, from
    /// `netwarp status` (eBPF: a count; routes keeps none: null).
    fn untunnelled_drops(&self) -> Option<u64> {
        let daemon = self._daemon.as_ref().expect("a daemon");
        let status = status_json(daemon).expect("status");
        let name = self.warp_name();
        let warp = status["warps"]
            .as_array()
            .and_then(|warps| warps.iter().find(|w| w["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in status: {status}"));
        warp["untunnelled_drops"]["packets"].as_u64()
    }

    /// The warp forwarded the target's traffic untunnelled: eBPF counted
    /// the drops on the warp's veths; routes has no counter.
    fn assert_untunnelled_drops_counted(&self) {
        let drops = self.untunnelled_drops();
        match self.mode {
            "ebpf" => assert!(
                drops.is_some_and(|d| d > 0),
                "ebpf: the warp forwarded untunnelled, but status counts {drops:?} drops"
            ),
            _ => assert_eq!(drops, None, "{}: no per-warp counter expected", self.mode),
        }
    }

    fn assert_no_leaks(&self, when: &str) {
        let leaks = self.leaks();
        assert_eq!(
            leaks, 0,
            "{}: {leaks} packets leaked to the host's path {when}",
            self.mode
        );
    }

    fn wait_health(&self, status: &str) {
        assert!(
            eventually(CONVERGE, || health(self.warp()) == status),
            "{}: the warp never became {status} (it is `{}`)",
            self.mode,
            health(self.warp())
        );
    }

    fn assert_served(&self, timeout: Duration, when: &str) {
        assert!(
            eventually(timeout, || answered(&self.target, &self.destination())),
            "{}: the target was not served through the tunnel {when}",
            self.mode
        );
    }
}

/// The fixtures themselves, with no daemon: a target routed to the warp by
/// hand reaches the destination through the tunnel, and once the tunnel is
/// gone its packets leave by the warp's default route into the sink. This
/// proves the sink sees what a forwarding warp leaks.
fn fixture_leaks(layout: Layout) {
    let mut world = World::new("", layout, true);
    world.start_wireguard_warp(0, false);
    let warp_ip = world.warp().ipv4(&world.targets_network).expect("warp ip");
    world
        .target
        .ip(&["route", "add", &world.addresses.prefix(), "via", &warp_ip])
        .expect("route to the warp");
    world.assert_served(CONVERGE, "by a manual route");
    assert_eq!(world.leaks(), 0, "served traffic reached the sink");

    delete_tunnel(world.warp()).expect("delete wg0");
    for _ in 0..3 {
        answered(&world.target, &world.destination());
    }
    assert!(
        eventually(Duration::from_secs(5), || world.leaks() >= 3),
        "the sink saw {} of 3 untunnelled packets",
        world.leaks()
    );
}

#[test]
fn fixture_can_see_a_leak() {
    skip_if!("fixture_can_see_a_leak", missing_wireguard());
    fixture_leaks(Layout::OneNetwork);
}

#[test]
fn fixture_can_see_a_leak_two_networks() {
    skip_if!("fixture_can_see_a_leak_two_networks", missing_wireguard());
    fixture_leaks(Layout::TwoNetworks);
}

/// a. A warp whose tunnel takes a few seconds to come up, with a
/// healthcheck: `starting` until then. The target sends from before the
/// warp exists until after it is healthy.
fn warp_starting(mode: &'static str) {
    let mut world = World::new(mode, Layout::OneNetwork, true);
    world.start_warp_while_sending();
    world.assert_no_leaks("after the warp was healthy");
}

/// b. No healthcheck, and the tunnel never comes up (no server).
fn tunnel_never_up(mode: &'static str) {
    let mut world = World::new(mode, Layout::OneNetwork, false);
    world.start_wireguard_warp(0, false);
    let sender = Sender::start(&world.target, &world.destination(), 50).expect("sender");
    sender.wait(CONVERGE).expect("sender");
    assert_eq!(sender.answers(), 0, "{mode}: answered with no server");
    world.assert_no_leaks("with the tunnel never up");
}

/// c. The server dies while the target sends, and comes back.
fn server_killed(mode: &'static str) {
    let mut world = World::new(mode, Layout::OneNetwork, true);
    world.start_wireguard_warp(0, true);
    world.wait_health("healthy");
    world.assert_served(CONVERGE, "before the server died");
    let sender = Sender::start(&world.target, &world.destination(), 100).expect("sender");
    std::thread::sleep(Duration::from_secs(1));
    world.server.down().expect("kill the server");
    world.wait_health("unhealthy");
    sender.wait(CONVERGE).expect("sender");
    world.assert_no_leaks("while the server was dead");
    world.server.up().expect("restore the server");
    world.assert_served(RECOVER, "after the server came back");
    world.assert_no_leaks("after the server came back");
}

/// d. The warp's tunnel interface is deleted while it runs (no
/// healthcheck, so netwarp cannot know); then the warp restarts.
fn tunnel_deleted(mode: &'static str) {
    let mut world = World::new(mode, Layout::OneNetwork, true);
    world.start_wireguard_warp(0, false);
    world.assert_served(CONVERGE, "before the tunnel was deleted");
    let sender = Sender::start(&world.target, &world.destination(), 50).expect("sender");
    std::thread::sleep(Duration::from_millis(500));
    let forwarded = forwarded_datagrams(world.warp()).expect("forwarded");
    delete_tunnel(world.warp()).expect("delete wg0");
    sender.wait(CONVERGE).expect("sender");
    // The target still sent to the warp, so a leak had every chance.
    let now = forwarded_datagrams(world.warp()).expect("forwarded");
    assert!(
        now > forwarded,
        "{mode}: the warp forwarded nothing after its tunnel was deleted"
    );
    world.assert_no_leaks("after the tunnel was deleted");
    world.assert_untunnelled_drops_counted();
    restart(world.warp()).expect("restart the warp");
    world.assert_served(RECOVER, "after the warp restarted");
    world.assert_no_leaks("after the warp restarted");
}

/// e. A warp that forwards with no tunnel and no NAT.
fn naive_forwarder(mode: &'static str) {
    let mut world = World::new(mode, Layout::OneNetwork, false);
    let warp = naive_warp(&world.warp_name(), &world.targets_network, &[]).expect("warp");
    world.warp = Some(warp);
    let sender = Sender::start(&world.target, &world.destination(), 50).expect("sender");
    sender.wait(CONVERGE).expect("sender");
    assert!(
        forwarded_datagrams(world.warp()).expect("forwarded") > 0,
        "{mode}: the target's packets never reached the naive warp"
    );
    assert_eq!(sender.answers(), 0, "{mode}: answered with no tunnel");
    world.assert_no_leaks("through the naive warp");
    world.assert_untunnelled_drops_counted();
}

/// f. Targets on an internal network, the warp also on a routed one that
/// carries its default route: served through the tunnel both ways; no
/// leak while it starts nor after its tunnel dies.
fn two_networks(mode: &'static str) {
    let mut world = World::new(mode, Layout::TwoNetworks, true);
    world.start_warp_while_sending();

    let sender = Sender::start(&world.target, &world.destination(), 50).expect("sender");
    std::thread::sleep(Duration::from_millis(500));
    delete_tunnel(world.warp()).expect("delete wg0");
    world.wait_health("unhealthy");
    sender.wait(CONVERGE).expect("sender");
    world.assert_no_leaks("after the tunnel died");
}

macro_rules! both_dataplanes {
    ($scenario:ident, $ebpf:ident, $routes:ident) => {
        #[test]
        fn $ebpf() {
            skip_if!(stringify!($ebpf), missing_wireguard());
            $scenario("ebpf");
        }

        #[test]
        fn $routes() {
            skip_if!(stringify!($routes), missing_wireguard());
            $scenario("routes");
        }
    };
}

both_dataplanes!(
    warp_starting,
    vpn_warp_starting_ebpf,
    vpn_warp_starting_routes
);
both_dataplanes!(
    tunnel_never_up,
    vpn_tunnel_never_up_ebpf,
    vpn_tunnel_never_up_routes
);
both_dataplanes!(
    server_killed,
    vpn_server_killed_ebpf,
    vpn_server_killed_routes
);
both_dataplanes!(
    tunnel_deleted,
    vpn_tunnel_deleted_ebpf,
    vpn_tunnel_deleted_routes
);
both_dataplanes!(
    naive_forwarder,
    vpn_naive_forwarder_ebpf,
    vpn_naive_forwarder_routes
);
both_dataplanes!(two_networks, vpn_two_networks_ebpf, vpn_two_networks_routes);
