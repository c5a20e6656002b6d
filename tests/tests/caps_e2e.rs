//! Bandwidth caps on real containers, in both dataplanes, measured with
//! bounded iperf3 runs of 10 s: 20 mbit, 100 mbit and 1 gbit, each in both
//! directions, with one and with four streams. TCP goodput must land within
//! ±5% of the cap, and an uncapped neighbour on the same bridge must keep
//! at least 90% of its throughput while a capped container is saturated.
//!
//! Each rate gets a freshly created container with new labels, so the
//! daemon must follow containers recreated with other caps.
//!
//! A cap counts Ethernet frames as they cross the wire, as tc does
//! (offload packets count as their segments); iperf3 reports TCP payload,
//! so even a perfect cap shows 95.6% goodput at MTU 1500. The table prints
//! both.

use std::{
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use netwarp::dataplane::ebpf::PinnedMaps;
use netwarp_common::IFACE_PEER;
use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, HOST_TOOLS},
    iperf::{IperfRun, start_server},
    skip, skip_if,
    steering::{GLOBAL_RULES, REMOTE, reaches, start_warp},
};

/// The runs compete for two cores; one mode at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const RATES: [(&str, f64); 3] = [("20mbit", 20e6), ("100mbit", 100e6), ("1gbit", 1e9)];
const SECONDS: u32 = 10;
const TOLERANCE: f64 = 0.05;
const NEIGHBOUR_RATE: &str = "2G";
/// TCP payload per Ethernet frame at MTU 1500 with timestamps: 1448 / 1514.
const PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;

fn start_tools_container(prefix: &str, network: &DockerNetwork, labels: &[String]) -> Container {
    let mut args: Vec<&str> = HOST_TOOLS.to_vec();
    for label in labels {
        args.push("--label");
        args.push(label);
    }
    Container::run(prefix, network, &args, &["sleep", "900"]).expect("container")
}

/// Whether the daemon has logged programming `container`'s caps, within 20 s.
fn caps_programmed(daemon: &Daemon, container: &Container) -> bool {
    eventually(Duration::from_secs(20), || {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("caps programmed") && l.contains(container.name()))
    })
}

/// Sets `key = "value"` in the daemon's `[rate_limits]` section (replacing
/// an earlier value of the key).
fn set_rate_limit(daemon: &Daemon, key: &str, value: &str) {
    let config = daemon.config_path();
    let text = std::fs::read_to_string(config).expect("config");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} =")))
        .map(str::to_owned)
        .collect();
    let section = lines
        .iter()
        .position(|l| l == "[rate_limits]")
        .expect("rate_limits section");
    lines.insert(section + 1, format!("{key} = \"{value}\""));
    std::fs::write(config, lines.join("\n") + "\n").expect("config");
}

/// The rate-drop counters of a host interface, from the daemon's pins.
fn rate_drops(daemon: &Daemon, ifindex: u32) -> u64 {
    PinnedMaps::new(daemon.pin_dir())
        .verdicts(ifindex)
        .map_or(0, |sum| sum.rate_packets)
}

/// How the test judges a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Enforcement {
    /// Goodput within ±5% of the cap.
    Shaper,
    /// Measured and printed; only checked never to exceed the cap by more
    /// than 5%, and to count its drops.
    Policer,
}

impl Enforcement {
    /// As the tests' names and `rate_limits.enforcement` spell it.
    fn name(self) -> &'static str {
        match self {
            Enforcement::Shaper => "shaper",
            Enforcement::Policer => "policer",
        }
    }
}

fn caps_hold(mode: &str, enforcement: Enforcement) {
    let name = enforcement.name();
    let test = format!("caps_hold_in_{mode}_mode_with_the_{name}");
    skip_if!(&test, skip::missing_docker());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nwc").expect("network");
    let server = start_tools_container("nwsrv", &network, &[]);
    let server_ip = server.ipv4(&network).expect("server ip");
    for port in [5201, 5202] {
        start_server(&server, port, 900).expect("iperf3 server");
    }
    let neighbour = start_tools_container("nwnb", &network, &[]);
    let daemon = Daemon::start_with_env(
        &labels,
        mode,
        "",
        &[("NETWARP_RATE_LIMITS_ENFORCEMENT", name)],
    )
    .expect("daemon");
    thread::sleep(Duration::from_millis(500));

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (rate, cap_bps) in RATES {
        let capped = start_tools_container(
            "nwcap",
            &network,
            &[
                format!("{}={rate}", labels.egress_rate),
                format!("{}={rate}", labels.ingress_rate),
            ],
        );
        assert!(
            caps_programmed(&daemon, &capped),
            "{mode}: caps of {} never programmed",
            capped.name()
        );
        for (direction, reverse) in [("egress", false), ("ingress", true)] {
            for streams in [1, 4] {
                let result = IperfRun::new(&server_ip, 5201, SECONDS)
                    .streams(streams)
                    .reverse(reverse)
                    .run(&capped)
                    .unwrap_or_else(|e| panic!("{mode} {rate} {direction}: {e}"));
                let ratio = result.received_bps / cap_bps;
                let row = format!(
                    "{mode:<6} {name:<7} {rate:>7} {direction:<7} {streams} stream(s): {:>8.2} Mbit/s goodput \
                     = {:.3} of the cap ({:.3} on the wire), {} retransmits",
                    result.received_bps / 1e6,
                    ratio,
                    ratio / PAYLOAD_SHARE,
                    result.retransmits
                );
                let judged = match enforcement {
                    Enforcement::Shaper => (ratio - 1.0).abs() > TOLERANCE,
                    Enforcement::Policer => ratio > 1.0 + TOLERANCE,
                };
                if judged {
                    failures.push(row.clone());
                }
                table.push(row);
            }
        }
        if enforcement == Enforcement::Policer {
            let (ifindex, _) = capped.host_veth().expect("veth");
            let drops = rate_drops(&daemon, ifindex);
            if drops == 0 {
                failures.push(format!("{rate}: the policer counted no drops"));
            }
            // The programs report drops through aya-log at debug level.
            if !daemon.log().contains("cap drop: ifindex") {
                failures.push(format!("{rate}: no aya-log record of a cap drop"));
            }
            table.push(format!(
                "{mode:<6} {name:<7} {rate:>7} drops counted by the cap: {drops} packets"
            ));
        }
        if rate == "100mbit" && enforcement == Enforcement::Shaper {
            table.push(neighbour_keeps_its_throughput(
                mode,
                &capped,
                &neighbour,
                &server_ip,
                &mut failures,
            ));
        }
    }
    println!("caps, {mode} mode, {name}, {SECONDS} s per run:");
    for row in &table {
        println!("  {row}");
    }
    assert!(
        failures.is_empty(),
        "failed checks:\n{}",
        failures.join("\n")
    );
}

/// An uncapped neighbour's throughput alone, then while `capped` saturates
/// its cap; returns the table row. The neighbour sends at a fixed 2 Gbit/s
/// rather than flat out: flat out, it is bound by these two cores, and
/// would measure the CPU the capped flow uses, not whether the cap spills
/// over onto its neighbours (which would pull it down to 100 mbit).
fn neighbour_keeps_its_throughput(
    mode: &str,
    capped: &Container,
    neighbour: &Container,
    server_ip: &str,
    failures: &mut Vec<String>,
) -> String {
    let seconds = 5;
    let alone = IperfRun::new(server_ip, 5202, seconds)
        .bitrate(NEIGHBOUR_RATE)
        .run(neighbour)
        .expect("neighbour alone");
    let started = Instant::now();
    let saturating = thread::scope(|scope| {
        let load = scope.spawn(|| {
            IperfRun::new(server_ip, 5201, seconds + 4)
                .streams(4)
                .run(capped)
        });
        thread::sleep(Duration::from_secs(2));
        let beside = IperfRun::new(server_ip, 5202, seconds)
            .bitrate(NEIGHBOUR_RATE)
            .run(neighbour)
            .expect("neighbour beside the capped container");
        load.join().expect("load thread").expect("capped load");
        beside
    });
    assert!(started.elapsed() < Duration::from_secs(60));
    let share = saturating.received_bps / alone.received_bps;
    let row = format!(
        "{mode:<6} neighbour uncapped: {:.2} Gbit/s alone, {:.2} Gbit/s beside a saturated \
         100mbit cap = {share:.3}",
        alone.received_bps / 1e9,
        saturating.received_bps / 1e9
    );
    if share < 0.90 {
        failures.push(row.clone());
    }
    row
}

/// A SIGHUP with a new default cap changes a running connection's rate
/// in place: the same TCP connection runs at the old cap, then the new.
#[test]
fn a_reload_changes_caps_without_dropping_connections() {
    let test = "a_reload_changes_caps_without_dropping_connections";
    skip_if!(test, skip::missing_docker());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nwr").expect("network");
    let server = start_tools_container("nwsrv", &network, &[]);
    let server_ip = server.ipv4(&network).expect("server ip");
    start_server(&server, 5201, 300).expect("iperf3 server");
    let daemon = Daemon::start(&labels, "routes", "").expect("daemon");
    let set_default = |rate: &str| set_rate_limit(&daemon, "default_egress", rate);
    // Until its handler is installed, SIGHUP would end the daemon.
    daemon
        .wait_for_log("connected to Docker", Duration::from_secs(10))
        .expect("daemon up");
    set_default("20mbit");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("SIGHUP: configuration reloaded", Duration::from_secs(10))
        .expect("first reload");
    // A target (of a warp that does not exist): defaults cap targets.
    let target = start_tools_container("nwtgt", &network, &[labels.target_label("none")]);
    assert!(
        caps_programmed(&daemon, &target),
        "the default cap was never programmed"
    );
    // A malformed cap label is named with its container, and changes
    // nothing for the others.
    let malformed =
        start_tools_container("nwbad", &network, &[format!("{}=fast", labels.egress_rate)]);
    assert!(
        eventually(Duration::from_secs(20), || daemon.log().lines().any(|l| {
            l.contains(malformed.name())
                && l.contains(&format!("label {}=`fast` is invalid", labels.egress_rate))
        })),
        "no warning naming {} and its label",
        malformed.name()
    );
    let seconds = 12;
    let result = thread::scope(|scope| {
        let run = scope.spawn(|| IperfRun::new(&server_ip, 5201, seconds).run(&target));
        thread::sleep(Duration::from_secs(5));
        set_default("100mbit");
        daemon.signal(libc::SIGHUP);
        run.join().expect("iperf thread")
    });
    let result = result.expect("the connection survived the reload");
    let intervals = &result.intervals_bps;
    assert!(intervals.len() >= 10, "{intervals:?}");
    let early = intervals[1..4].iter().sum::<f64>() / 3.0;
    let late = intervals[intervals.len() - 4..intervals.len() - 1]
        .iter()
        .sum::<f64>()
        / 3.0;
    println!(
        "reload: {:.1} Mbit/s before, {:.1} Mbit/s after (one connection, {} retransmits)",
        early / 1e6,
        late / 1e6,
        result.retransmits
    );
    assert!(
        (0.9..1.05).contains(&(early / 20e6)),
        "before the reload: {early}"
    );
    assert!(
        (0.9..1.05).contains(&(late / 100e6)),
        "after the reload: {late}"
    );
}

/// A UDP flood at twice a target's ingress cap: the shaper's qdisc on the
/// host veth drops the excess, and the metrics export those drops per
/// container. (Egress floods are not dropped: the qdisc in the container's
/// own stack blocks the sending socket instead.)
#[test]
fn the_shapers_drops_are_exported() {
    let test = "the_shapers_drops_are_exported";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, netwarp_tests::observe::missing_parser());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nwd").expect("network");
    let server = start_tools_container("nwsrv", &network, &[]);
    let server_ip = server.ipv4(&network).expect("server ip");
    start_server(&server, 5201, 120).expect("iperf3 server");
    let warp = netwarp_tests::steering::start_warp(&labels.warp_name("gw"), &network, &[]);
    let target = start_tools_container(
        "nwtgt",
        &network,
        &[
            labels.target_label(&labels.warp_name("gw")),
            format!("{}=20mbit", labels.ingress_rate),
        ],
    );
    let daemon = Daemon::start(&labels, "routes", "").expect("daemon");
    assert!(
        caps_programmed(&daemon, &target),
        "the cap was never programmed"
    );
    let flood = IperfRun::new(&server_ip, 5201, 3)
        .udp()
        .bitrate("40M")
        .reverse(true)
        .run(&target)
        .expect("UDP flood");
    let address = daemon
        .metrics_address(Duration::from_secs(10))
        .expect("metrics address");
    let drops = netwarp_tests::observe::Exposition::scrape(address)
        .expect("scrape")
        .value(
            "netwarp_container_shaper_dropped_packets_total",
            &[("container", target.name()), ("direction", "ingress")],
        )
        .expect("the shaper's drops are exported");
    println!(
        "UDP at 40 Mbit/s through a 20 mbit cap: {:.1} Mbit/s received, {drops} packets \
         dropped by the shaper",
        flood.received_bps / 1e6
    );
    assert!(drops > 0.0, "no drops exported");
    assert!(flood.received_bps < 20e6 * 1.05, "{}", flood.received_bps);
    drop(warp);
}

/// Whether the daemon's pinned state row caps host interface `ifindex`.
fn policer_caps(daemon: &Daemon, ifindex: u32) -> bool {
    PinnedMaps::new(daemon.pin_dir())
        .iface_state(ifindex)
        .is_ok_and(|state| state.cap_slot().is_some())
}

/// A SIGHUP that switches `rate_limits.enforcement` moves a container's
/// caps from the tbf shaper to the BPF policer and back.
#[test]
fn a_reload_switches_between_shaper_and_policer() {
    let test = "a_reload_switches_between_shaper_and_policer";
    skip_if!(test, skip::missing_docker());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nws").expect("network");
    let capped = start_tools_container(
        "nwcap",
        &network,
        &[format!("{}=50mbit", labels.ingress_rate)],
    );
    let daemon = Daemon::start(&labels, "ebpf", "").expect("daemon");
    daemon
        .wait_for_log("connected to Docker", Duration::from_secs(10))
        .expect("daemon up");
    let (ifindex, veth) = capped.host_veth().expect("veth");
    let has_tbf = || {
        netwarp_tests::command::run("tc", &["qdisc", "show", "dev", &veth, "root"])
            .is_ok_and(|out| out.contains("tbf 4e57:"))
    };
    let converge = Duration::from_secs(20);
    assert!(eventually(converge, has_tbf), "no shaper at first");
    assert!(!policer_caps(&daemon, ifindex));
    let set_enforcement = |value: &str| {
        set_rate_limit(&daemon, "enforcement", value);
        daemon.signal(libc::SIGHUP);
    };
    set_enforcement("policer");
    assert!(
        eventually(converge, || !has_tbf() && policer_caps(&daemon, ifindex)),
        "the caps did not move to the policer"
    );
    set_enforcement("shaper");
    assert!(
        eventually(converge, || has_tbf() && !policer_caps(&daemon, ifindex)),
        "the caps did not move back to the shaper"
    );
}

#[test]
fn caps_hold_in_ebpf_mode_with_the_shaper() {
    caps_hold("ebpf", Enforcement::Shaper);
}

#[test]
fn caps_hold_in_routes_mode_with_the_shaper() {
    caps_hold("routes", Enforcement::Shaper);
}

#[test]
fn the_bpf_policer_never_exceeds_its_cap_and_counts_its_drops() {
    caps_hold("ebpf", Enforcement::Policer);
}

/// In eBPF mode a target's steered packets enter an uncapped warp by a
/// peer redirect, which skips the warp's host-side veth; a warp whose
/// ingress is capped (a tbf there, or the to-container program) must get
/// them the classic way, through its cap. A second, uncapped warp and
/// target beside it take the peer redirect at full speed, so the cap, not
/// the path, is what holds the first.
fn a_capped_warp_caps_what_its_targets_steer(enforcement: Enforcement) {
    let name = enforcement.name();
    let test = format!("a_capped_warp_caps_what_its_targets_steer_with_the_{name}");
    skip_if!(&test, skip::missing_docker());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwc").expect("network");
    let cap = format!("{}=20mbit", labels.ingress_rate);
    let mut capped_args: Vec<&str> = HOST_TOOLS.to_vec();
    capped_args.extend(["--label", cap.as_str()]);
    let (capped_warp, free_warp) = (labels.warp_name("cap"), labels.warp_name("free"));
    let warps = [
        start_warp(&capped_warp, &network, &capped_args),
        start_warp(&free_warp, &network, HOST_TOOLS),
    ];
    for warp in &warps {
        start_server(warp, 5201, 300).expect("iperf3 server");
    }
    let targets = [&capped_warp, &free_warp]
        .map(|warp| start_tools_container("nwt", &network, &[labels.target_label(warp)]));
    let daemon = Daemon::start_with_env(
        &labels,
        "ebpf",
        GLOBAL_RULES,
        &[("NETWARP_RATE_LIMITS_ENFORCEMENT", name)],
    )
    .expect("daemon");
    for target in &targets {
        assert!(
            eventually(Duration::from_secs(20), || reaches(target, 8080)),
            "{} never steered",
            target.name()
        );
    }
    assert!(
        caps_programmed(&daemon, &warps[0]),
        "the warp's cap never programmed"
    );
    // The flags follow the caps at the end of the pass that synced them.
    for (target, peer, limit) in [(&targets[0], false, "capped"), (&targets[1], true, "free")] {
        let (ifindex, _) = target.host_veth().expect("veth");
        let peered = || {
            (PinnedMaps::new(daemon.pin_dir()).iface_state(ifindex))
                .is_ok_and(|state| state.flags & IFACE_PEER != 0)
        };
        assert!(
            eventually(Duration::from_secs(10), || peered() == peer),
            "{name}: the target of the {limit} warp: peer redirect {}",
            !peer
        );
    }
    let goodput = |target: &Container| {
        IperfRun::new(REMOTE, 5201, 5)
            .run(target)
            .unwrap_or_else(|e| panic!("{name}: iperf3 from {}: {e}", target.name()))
            .received_bps
    };
    let (capped, free) = (goodput(&targets[0]), goodput(&targets[1]));
    println!(
        "{name}: steered through the capped warp {:.1} Mbit/s, through the free one {:.1} Mbit/s",
        capped / 1e6,
        free / 1e6
    );
    assert!(
        capped < 20e6 * (1.0 + TOLERANCE),
        "{name}: the warp's 20mbit cap let {:.1} Mbit/s of steered traffic in",
        capped / 1e6
    );
    assert!(
        free > 2.0 * 20e6,
        "{name}: the uncapped warp's target got only {:.1} Mbit/s",
        free / 1e6
    );
}

#[test]
fn a_capped_warp_caps_what_its_targets_steer_with_the_shaper() {
    a_capped_warp_caps_what_its_targets_steer(Enforcement::Shaper);
}

#[test]
fn a_capped_warp_caps_what_its_targets_steer_with_the_policer() {
    a_capped_warp_caps_what_its_targets_steer(Enforcement::Policer);
}
