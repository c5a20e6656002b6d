//! The traffic counters netwarp reports for a host-side veth (its kernel
//! statistics, read through rtnetlink) count exactly what crosses it, with
//! netwarp's programs attached to it through TCX; and what they show of a
//! steered packet's way into its warp: a peer redirect skips the warp's
//! host-side veth, the classic redirect crosses it.

use netwarp::{
    dataplane::ebpf::{EbpfDataplane, InterfaceTraffic, compile::compile},
    model::parse_rules,
    plan::{Action, Entry},
    telemetry::counters::host_link_traffic,
};
use netwarp_common::{RateBuckets, TokenBucket, TrafficCounters};
use netwarp_tests::{
    command::run,
    docker::{Container, DockerNetwork, HOST_TOOLS},
    netns::{EnteredNetns, Netns, Veth},
    skip, skip_if,
};

/// ICMP echo payload; every echo frame is 14 (Ethernet) + 20 (IPv4) +
/// 8 (ICMP) + payload bytes at tc.
const PAYLOAD: u64 = 1000;
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD;
const ECHOES: u64 = 20;
/// ARP, and on a Docker bridge the host's own IPv6 multicast (router and
/// listener reports flooded to every port), add a few small frames.
const SLACK_PACKETS: u64 = 12;
const SLACK_FRAME: u64 = 128;

/// The counters of host interface `ifindex` (in the calling thread's
/// namespace), as netwarp's metrics read them.
fn traffic(ifindex: u32) -> InterfaceTraffic {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let stats = runtime
        .block_on(host_link_traffic())
        .expect("dumping the links");
    *stats.get(&ifindex).expect("the veth's statistics")
}

/// What crossed between two readings.
fn since(after: InterfaceTraffic, before: InterfaceTraffic) -> InterfaceTraffic {
    let minus = |a: TrafficCounters, b: TrafficCounters| TrafficCounters {
        packets: a.packets - b.packets,
        bytes: a.bytes - b.bytes,
    };
    InterfaceTraffic {
        from_container: minus(after.from_container, before.from_container),
        to_container: minus(after.to_container, before.to_container),
    }
}

fn assert_echo_counts(traffic: &InterfaceTraffic) {
    for (direction, counters) in [
        ("from the container", traffic.from_container),
        ("to the container", traffic.to_container),
    ] {
        println!("{direction}: {counters:?}");
        assert!(
            (ECHOES..=ECHOES + SLACK_PACKETS).contains(&counters.packets),
            "{direction}: {} packets, expected {ECHOES} echo frames plus at most \
             {SLACK_PACKETS} others",
            counters.packets
        );
        let echo_bytes = ECHOES * FRAME;
        assert!(
            (echo_bytes..=echo_bytes + SLACK_PACKETS * SLACK_FRAME).contains(&counters.bytes),
            "{direction}: {} bytes, expected {echo_bytes} bytes of echo frames \
             plus at most {} bytes of others",
            counters.bytes,
            SLACK_PACKETS * SLACK_FRAME
        );
    }
}

/// `ping` arguments for the bounded echo run; `ping` itself is busybox's.
fn ping_args(destination: &str) -> Vec<String> {
    [
        "ping",
        "-c",
        &ECHOES.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        "-s",
        &PAYLOAD.to_string(),
        destination,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn counts_ping_on_a_plain_veth_pair() {
    let test = "counts_ping_on_a_plain_veth_pair";
    skip_if!(test, skip::missing_root());

    // The thread's own namespace plays the host; the peer plays a container.
    let host = EnteredNetns::enter("nwt").expect("entering a test netns");
    let container = Netns::create("nwc").expect("creating the container netns");
    let veth = Veth::create(&container).expect("creating a veth pair");
    let ip = |args: &[&str]| run("ip", args).expect("configuring the host end");
    ip(&["addr", "add", "192.0.2.1/24", "dev", &veth.host]);
    ip(&["link", "set", &veth.host, "up"]);
    container
        .exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", &veth.peer])
        .expect("configuring the peer");
    container
        .exec(&["ip", "link", "set", &veth.peer, "up"])
        .expect("bringing the peer up");

    let mut dataplane = EbpfDataplane::load().expect("loading the eBPF programs");
    dataplane
        .attach_counters(&veth.host)
        .expect("attaching the counters");
    let ifindex = veth.host_ifindex().expect("host ifindex");
    let before = traffic(ifindex);

    let args = ping_args("192.0.2.1");
    let mut command = vec!["busybox"];
    command.extend(args.iter().map(String::as_str));
    let out = container
        .exec(&command)
        .expect("ping from the container netns");
    assert!(out.contains(&format!("{ECHOES} packets received")), "{out}");

    assert_echo_counts(&since(traffic(ifindex), before));
    drop(dataplane);
    drop(veth);
    drop(container);
    drop(host);
}

#[test]
fn counts_traffic_between_real_containers() {
    let test = "counts_traffic_between_real_containers";
    skip_if!(test, skip::missing_docker());

    let network = DockerNetwork::create_internal("nwt").expect("creating a network");
    let client = Container::run("nwc", &network, HOST_TOOLS, &["sleep", "300"]).expect("client");
    let server = Container::run("nws", &network, HOST_TOOLS, &["sleep", "300"]).expect("server");
    let server_ip = server.ipv4(&network).expect("server address");
    let (ifindex, ifname) = client.host_veth().expect("client's host veth");

    let mut dataplane = EbpfDataplane::load().expect("loading the eBPF programs");
    dataplane
        .attach_counters(&ifname)
        .expect("attaching the counters");
    let before = traffic(ifindex);

    // Exact frame counts with ICMP echoes of a known size.
    let args = ping_args(&server_ip);
    let command: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client.exec(&command).expect("ping between containers");
    assert!(out.contains(&format!("{ECHOES} packets received")), "{out}");
    let after_ping = traffic(ifindex);
    assert_echo_counts(&since(after_ping, before));

    // A bounded TCP transfer. iperf3 counts what it wrote ("sent") and
    // what the server read ("received"); the server may stop reading before
    // the tail arrives, so every received byte crossed the veth, while the
    // unsent tail may never have. Counted bytes must lie between the two,
    // allowing for headers and the control connection.
    const TRANSFER: u64 = 16 << 20;
    server
        .exec_detached(&["timeout", "30", "/usr/bin/iperf3", "--server", "--one-off"])
        .expect("starting the iperf3 server");
    let transfer = TRANSFER.to_string();
    let client_args = [
        "timeout",
        "30",
        "/usr/bin/iperf3",
        "--client",
        &server_ip,
        "--bytes",
        &transfer,
        "--connect-timeout",
        "2000",
        "--json",
    ];
    // The server may need a moment to listen; retry a bounded number of times.
    let report = (0..20)
        .find_map(|_| {
            let result = client.exec(&client_args).ok();
            if result.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result
        })
        .expect("the iperf3 transfer never succeeded");
    let report: serde_json::Value = serde_json::from_str(&report).expect("iperf3 --json output");
    let bytes = |side: &str| {
        report["end"][side]["bytes"]
            .as_u64()
            .expect("iperf3 byte count")
    };
    let (sent, received) = (bytes("sum_sent"), bytes("sum_received"));
    println!("iperf3: sent {sent} bytes, received {received} bytes");
    assert!(
        received >= 1 << 20,
        "too little arrived to measure: {received} bytes"
    );
    // Let the counters settle for at most 5 s: the kernel may still be
    // sending after iperf3 exits.
    let mut after_tcp = traffic(ifindex);
    for _ in 0..50 {
        if after_tcp.from_container.bytes - after_ping.from_container.bytes >= received {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after_tcp = traffic(ifindex);
    }
    let counted = after_tcp.from_container.bytes - after_ping.from_container.bytes;
    println!("counted {counted} bytes from the client");
    assert!(
        counted >= received && counted <= sent + sent / 10,
        "counted {counted} bytes; expected between {received} (received) and {} (sent + 10%)",
        sent + sent / 10
    );
    assert!(
        after_tcp.to_container.packets > after_ping.to_container.packets,
        "the server's ACKs were not counted"
    );
}

/// A target namespace steered through a warp namespace by the real
/// from-container program: both veths' host ends in the test's own
/// namespace (the host, which routes the replies back). Fields drop in
/// order: the programs first, the namespaces last.
struct SteeredPair {
    dataplane: EbpfDataplane,
    target_veth: Veth,
    warp_veth: Veth,
    target: Netns,
    _warp: Netns,
    _host: EnteredNetns,
}

/// The warp's address for steered traffic, on its loopback.
const PEER_REMOTE: &str = "203.0.113.1";

impl SteeredPair {
    fn new(peer_redirect: bool) -> Self {
        let host = EnteredNetns::enter("nwph").expect("entering a test netns");
        let target = Netns::create("nwpt").expect("the target netns");
        let warp = Netns::create("nwpw").expect("the warp netns");
        let target_veth = Veth::create(&target).expect("the target's veth");
        let warp_veth = Veth::create(&warp).expect("the warp's veth");
        (target_veth.address(&target, "198.18.1.1/24", "198.18.1.2/24"))
            .expect("addressing the target");
        (warp_veth.address(&warp, "198.18.2.1/24", "198.18.2.2/24")).expect("addressing the warp");
        let in_ns = |ns: &Netns, args: &[&str]| {
            let mut command = vec!["ip"];
            command.extend(args);
            ns.exec(&command).expect("configuring a namespace");
        };
        // The target's gateway is not the host veth (on a Docker network it
        // is the bridge): its frames arrive as another host's, as there.
        in_ns(
            &target,
            &[
                "neigh",
                "add",
                "198.18.1.254",
                "lladdr",
                "02:00:5e:00:01:fe",
                "dev",
                &target_veth.peer,
                "nud",
                "permanent",
            ],
        );
        in_ns(&target, &["route", "add", "default", "via", "198.18.1.254"]);
        in_ns(&warp, &["link", "set", "lo", "up"]);
        in_ns(
            &warp,
            &["addr", "add", &format!("{PEER_REMOTE}/32"), "dev", "lo"],
        );
        in_ns(
            &warp,
            &["route", "add", "198.18.1.0/24", "via", "198.18.2.1"],
        );
        // This thread's namespace is the fresh host: it forwards the replies.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enabling forwarding");
        let warp_mac = warp
            .exec(&["cat", &format!("/sys/class/net/{}/address", warp_veth.peer)])
            .expect("the warp's MAC");
        let warp_mac: Vec<u8> = (warp_mac.trim().split(':'))
            .map(|byte| u8::from_str_radix(byte, 16).expect("a MAC byte"))
            .collect();
        let mut dataplane = EbpfDataplane::load().expect("loading the eBPF programs");
        dataplane
            .set_peer_redirect(peer_redirect)
            .expect("setting peer redirects");
        let target_ifindex = target_veth.host_ifindex().expect("target ifindex");
        let entries = Entry::all(
            &parse_rules("203.0.113.0/24").expect("rules"),
            Action::Via("198.18.2.2".parse().expect("an address")),
        );
        dataplane
            .attach_ifindex(target_ifindex)
            .expect("attaching to the target's veth");
        dataplane
            .set_policy(
                target_ifindex,
                warp_veth.host_ifindex().expect("warp ifindex"),
                warp_mac.try_into().expect("six bytes"),
                &compile(&entries, true).expect("compile"),
            )
            .expect("writing the policy");
        Self {
            dataplane,
            target_veth,
            warp_veth,
            target,
            _warp: warp,
            _host: host,
        }
    }

    fn target_ifindex(&self) -> u32 {
        self.target_veth.host_ifindex().expect("target ifindex")
    }

    fn warp_ifindex(&self) -> u32 {
        self.warp_veth.host_ifindex().expect("warp ifindex")
    }

    /// Pings the warp's address from the target, every echo steered;
    /// returns what the warp's host-side veth sent into the warp meanwhile.
    fn steered_echoes(&mut self) -> TrafficCounters {
        let before = traffic(self.warp_ifindex());
        let steered_before = (self.dataplane.verdicts(self.target_ifindex()))
            .expect("verdicts")
            .steered_packets;
        let args = ping_args(PEER_REMOTE);
        let mut command = vec!["busybox"];
        command.extend(args.iter().map(String::as_str));
        let out = self.target.exec(&command).expect("ping from the target");
        assert!(
            out.contains(&format!("{ECHOES} packets received")),
            "steered echoes lost: {out}"
        );
        let steered = (self.dataplane.verdicts(self.target_ifindex()))
            .expect("verdicts")
            .steered_packets;
        assert!(steered - steered_before >= ECHOES, "echoes not steered");
        since(traffic(self.warp_ifindex()), before).to_container
    }

    fn assert_peer(&mut self, expected: bool) {
        let target = self.target_ifindex();
        assert_eq!(
            self.dataplane.peer_redirects(target).expect("state row"),
            expected,
            "the target's peer flag"
        );
        let crossed = self.steered_echoes();
        println!("peer {expected}: the warp's host veth sent {crossed:?}");
        if expected {
            assert!(
                crossed.packets < ECHOES / 2,
                "peer-redirected echoes crossed the warp's host veth: {crossed:?}"
            );
        } else {
            assert!(
                crossed.packets >= ECHOES,
                "classic-redirected echoes did not cross the warp's host veth: {crossed:?}"
            );
        }
    }
}

#[test]
fn steered_packets_skip_the_warp_veth_only_by_peer_redirect() {
    let test = "steered_packets_skip_the_warp_veth_only_by_peer_redirect";
    skip_if!(test, skip::missing_root());
    // The frames arrive as another host's (PACKET_OTHERHOST): before 6.15
    // the kernel kept that type across a peer redirect and the warp's IP
    // stack dropped them unless the program made them its own, so there
    // every echo answered proves it (from 6.15 the kernel resets it).
    let mut pair = SteeredPair::new(true);
    pair.assert_peer(true);
    pair.dataplane
        .set_peer_redirect(false)
        .expect("peer redirects off");
    pair.assert_peer(false);
    drop(pair);
    SteeredPair::new(false).assert_peer(false);
}

#[test]
fn an_ingress_cap_on_the_warp_keeps_the_classic_redirect() {
    let test = "an_ingress_cap_on_the_warp_keeps_the_classic_redirect";
    skip_if!(test, skip::missing_root());
    let mut pair = SteeredPair::new(true);
    let warp = pair.warp_ifindex();
    // The shaper's tbf qdisc on the warp's host veth.
    (pair.dataplane)
        .set_ingress_shaped(&[warp], true)
        .expect("shaped");
    pair.assert_peer(false);
    (pair.dataplane)
        .set_ingress_shaped(&[warp], false)
        .expect("unshaped");
    pair.assert_peer(true);
    // The policer: the to-container program on the warp's host veth,
    // which must see (and charge) every steered echo.
    let buckets = RateBuckets {
        egress: TokenBucket::default(),
        ingress: TokenBucket::new(1 << 30, 1 << 20),
    };
    (pair.dataplane)
        .set_caps(warp, &[warp], buckets)
        .expect("capping the warp");
    pair.assert_peer(false);
    pair.dataplane.remove_caps(&[warp]).expect("uncapping");
    pair.assert_peer(true);
}
