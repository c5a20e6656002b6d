//! The bridge guard holds the window in which a target runs but netwarp
//! has not programmed it: the daemon is frozen (SIGSTOP), the target is
//! restarted into a new namespace and veth, and its traffic to the
//! steered prefix must not reach the leak sink. A known unlabelled
//! container's traffic still takes its normal path; a container started
//! while netwarp is frozen is unknown and held until it is classified.
//!
//! Network safety: the steered prefix (198.18.N.0/24) is routed on the
//! host into a sink namespace that counts and drops; the remote address
//! is the warp's loopback; the network is `--internal`; every ping is a
//! single bounded probe; every fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{
        LeakSink, SteeredPrefix, guard_drops, guard_installed, start_warp_at, unique_prefix_octet,
    },
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::Exposition,
    skip, skip_if,
    steering::{GLOBAL_RULES, start_warp},
};

const CONVERGE: Duration = Duration::from_secs(30);

/// One ping, one second at most: whether it was answered.
fn answered(container: &Container, remote: &str) -> bool {
    container
        .exec(&["ping", "-c", "1", "-W", "1", remote])
        .is_ok()
}

/// Whether the daemon's guard for `bridge` is programmed.
fn guard_ready(mode: &str, daemon: &Daemon, bridge: &str) -> bool {
    match mode {
        "ebpf" => guard_installed(daemon.pin_dir(), bridge).unwrap_or(false),
        _ => run("ip", &["rule", "show"])
            .map(|rules| rules.contains(&format!("iif {bridge}")))
            .unwrap_or(false),
    }
}

fn guard_holds_the_window(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwg").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let warp_name = labels.warp_name("gw");
    let _warp = start_warp_at(&warp_name, &network, &remote, &[]).expect("warp");
    let target_label = labels.target_label(&warp_name);
    let target = Container::run(
        "nwgt",
        &network,
        &["--label", &target_label],
        &["sleep", "600"],
    )
    .expect("target");
    let bystander = Container::run("nwgu", &network, &[], &["sleep", "600"]).expect("bystander");
    let daemon = Daemon::start(
        &labels,
        mode,
        &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
    )
    .expect("daemon");
    assert!(
        eventually(CONVERGE, || answered(&target, &remote)),
        "{mode}: the target never reached the remote through the warp"
    );
    assert!(
        eventually(CONVERGE, || guard_ready(mode, &daemon, &bridge)),
        "{mode}: no guard on {bridge}"
    );

    // Frozen, netwarp cannot program the restarted target's new veth.
    daemon.signal(libc::SIGSTOP);
    let _thaw = Thaw(&daemon);
    let before = sink.packets();
    let drops_before = guard_drops(daemon.pin_dir(), &bridge).unwrap_or(0);
    run("docker", &["restart", "--time", "0", target.name()]).expect("restart the target");
    let answers = (0..5).filter(|_| answered(&target, &remote)).count();
    assert_eq!(
        answers, 0,
        "{mode}: the unprogrammed target reached the remote"
    );
    assert_eq!(
        sink.packets(),
        before,
        "{mode}: the unprogrammed target's packets leaked to the host's path"
    );
    if mode == "ebpf" {
        let drops = guard_drops(daemon.pin_dir(), &bridge).expect("guard drops");
        assert!(
            drops >= drops_before + 5,
            "{mode}: the guard counted {drops_before} -> {drops} drops for 5 probes"
        );
    }

    // A known unlabelled container keeps its normal path (into the sink).
    answered(&bystander, &remote);
    let after_bystander = sink.packets();
    assert!(
        after_bystander > before,
        "{mode}: the unlabelled container's packet did not take its normal path"
    );

    // One started while netwarp is frozen is unknown: held, fail closed.
    let newcomer = Container::run("nwgn", &network, &[], &["sleep", "600"]).expect("newcomer");
    answered(&newcomer, &remote);
    assert_eq!(
        sink.packets(),
        after_bystander,
        "{mode}: an unclassified container passed the guard"
    );

    daemon.signal(libc::SIGCONT);
    assert!(
        eventually(CONVERGE, || answered(&target, &remote)),
        "{mode}: the restarted target was not steered once netwarp resumed"
    );
    if mode == "ebpf" {
        // Operators see the drops, by network and bridge.
        let address = daemon.metrics_address(CONVERGE).expect("metrics address");
        let exposition = Exposition::scrape(address).expect("scrape");
        let dropped = exposition
            .value(
                "netwarp_bridge_guard_dropped_packets_total",
                &[("network", network.name()), ("bridge", bridge.as_str())],
            )
            .expect("the guard's drop counter");
        assert!(
            dropped >= 5.0,
            "{mode}: the metric shows {dropped} guard drops"
        );
    }
    assert!(
        eventually(CONVERGE, || {
            answered(&newcomer, &remote);
            sink.packets() > after_bystander
        }),
        "{mode}: the newcomer was never classified as unlabelled"
    );
}

/// Resumes the daemon if the test fails while it is frozen, so its drop
/// guard can stop it cleanly.
struct Thaw<'a>(&'a Daemon);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn guard_holds_the_window_ebpf() {
    skip_if!("guard_holds_the_window_ebpf", skip::missing_docker());
    guard_holds_the_window("ebpf");
}

#[test]
fn guard_holds_the_window_routes() {
    skip_if!("guard_holds_the_window_routes", skip::missing_docker());
    guard_holds_the_window("routes");
}

/// A created target is dormant: its network's guard covers its prefixes
/// before it starts. A pass for a few events lists only the containers
/// they name, so the create event alone must bring its prefix into the
/// guard, and its removal take it out: the periodic resync, which lists
/// everything, is an hour away here.
#[test]
fn a_created_target_is_guarded_by_its_own_events_routes() {
    skip_if!(
        "a_created_target_is_guarded_by_its_own_events_routes",
        skip::missing_docker()
    );
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwgc").expect("network");
    let warp_name = labels.warp_name("gw");
    let _warp = start_warp(&warp_name, &network, &[]);
    let target_label = labels.target_label(&warp_name);
    let _running = Container::run(
        "nwgr",
        &network,
        &["--label", &target_label],
        &["sleep", "600"],
    )
    .expect("running target");
    let daemon = Daemon::start_with_env(
        &labels,
        "routes",
        GLOBAL_RULES,
        &[("NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS", "3600")],
    )
    .expect("daemon");
    let guarded = |prefix: &str| {
        let routes = daemon.host_guard_routes();
        routes
            .iter()
            .any(|r| r.split_whitespace().any(|w| w == prefix))
    };
    assert!(
        eventually(CONVERGE, || guarded("203.0.113.0/24")),
        "the running target's network was never guarded"
    );
    let prefix = format!("198.18.{}.0/24", unique_prefix_octet());
    assert!(
        !guarded(&prefix),
        "{prefix} guarded before any target has it"
    );
    let created = Container::create(
        "nwgc",
        &network,
        &[
            "--label",
            &target_label,
            "--label",
            &labels.rules_label(&prefix),
        ],
        &["sleep", "600"],
    )
    .expect("created target");
    assert!(
        eventually(CONVERGE, || guarded(&prefix)),
        "the created target's {prefix} never reached the guard"
    );
    drop(created);
    assert!(
        eventually(CONVERGE, || !guarded(&prefix)),
        "the removed target's {prefix} stayed in the guard"
    );
}
