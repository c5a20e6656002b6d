//! Rule actions end to end, in both dataplanes: a full tunnel that
//! reaches its own network directly, a `direct` exclusion and a `block`
//! rule inside the steered prefix.
//!
//! The target T has `0.0.0.0/0; direct X/32; block REMOTE/32,tcp:2525`:
//! everything through the warp except X (the container's own path) and
//! TCP port 2525 to the warp's address (refused). The warp forwards
//! (`ip_forward=1`) and counts, with iptables rules in its namespace, what
//! it forwards and what reaches its ports. A bystander B shares the
//! network; a control target C steers B's address explicitly (a longer
//! prefix than the exclusion of the network), so the counter that must
//! stay at 0 for T is shown to count.
//!
//! Network safety: the network is `--internal`; REMOTE and X lie in a
//! unique 198.18.N.0/24 whose host route ends in the counting leak sink;
//! every command is bounded by count and timeout; every fixture is a drop
//! guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix, start_warp_at},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    skip, skip_if,
    steering::NamespaceRule,
};

const CONVERGE: Duration = Duration::from_secs(30);
const BLOCKED_PORT: &str = "2525";
const STEERED_PORT: &str = "8080";

fn counter(warp: &Container, chain: &str, rule: &[&str]) -> NamespaceRule {
    NamespaceRule::insert(warp, chain, rule).expect("a counter in the warp")
}

fn count(counter: &NamespaceRule) -> u64 {
    counter.packets().expect("a counter")
}

fn pings(from: &Container, to: &str, count: u32) -> bool {
    let count = count.to_string();
    (from.exec(&["ping", "-c", &count, "-W", "1", to])).is_ok()
}

fn connect(from: &Container, to: &str, port: &str) {
    let command = format!("timeout 3 nc -w 2 {to} {port} </dev/null");
    let _ = from.exec(&["sh", "-c", &command]);
}

fn actions_inside_a_steered_prefix(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwp").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let excluded = prefix.replace(".0/24", ".77");
    let warp_name = labels.warp_name("gw");
    let forwarding = ["--sysctl", "net.ipv4.ip_forward=1"];
    let warp = start_warp_at(&warp_name, &network, &remote, &forwarding).expect("warp");
    let bystander = Container::run("nwpb", &network, &[], &["sleep", "600"]).expect("bystander");
    let b = bystander.ipv4(&network).expect("bystander address");
    let rules = format!("0.0.0.0/0; direct {excluded}/32; block {remote}/32,tcp:{BLOCKED_PORT}");
    let target = Container::run(
        "nwpt",
        &network,
        &[
            "--label",
            &labels.target_label(&warp_name),
            "--label",
            &labels.rules_label(&rules),
        ],
        &["sleep", "600"],
    )
    .expect("target");
    let control = Container::run(
        "nwpc",
        &network,
        &[
            "--label",
            &labels.target_label(&warp_name),
            "--label",
            &labels.rules_label(&format!("{b}/32")),
        ],
        &["sleep", "600"],
    )
    .expect("control target");
    let t = target.ipv4(&network).expect("target address");
    let c = control.ipv4(&network).expect("control address");
    let t_to_b = counter(&warp, "FORWARD", &["-s", &t, "-d", &b]);
    let c_to_b = counter(&warp, "FORWARD", &["-s", &c, "-d", &b]);
    let t_to_x = counter(&warp, "FORWARD", &["-s", &t, "-d", &excluded]);
    let to_port = |port| counter(&warp, "INPUT", &["-p", "tcp", "--dport", port]);
    let (blocked_port, steered_port) = (to_port(BLOCKED_PORT), to_port(STEERED_PORT));

    let daemon = Daemon::start(&labels, mode, "").expect("daemon");
    assert!(
        eventually(CONVERGE, || pings(&target, &remote, 1)),
        "{mode}: the full-tunnel target never reached the warp's address"
    );
    assert!(
        eventually(CONVERGE, || {
            status_json(&daemon).is_ok_and(|s| {
                status_target(&s, control.name()).is_some_and(|c| c["state"] == "steered")
            })
        }),
        "{mode}: the control target was never steered"
    );
    let status = status_json(&daemon).expect("status");
    let shown = status_target(&status, target.name()).expect("the target in status");
    let subnet = network.subnet().expect("the network's subnet");
    assert!(
        (shown["excluded"].as_array().into_iter().flatten()).any(|s| s == subnet.as_str()),
        "{mode}: status does not show {subnet} excluded: {shown}"
    );

    // Steered: through the warp, nothing around it.
    let leaked = sink.packets();
    assert!(pings(&target, &remote, 3), "{mode}: steered pings failed");
    assert_eq!(sink.packets() - leaked, 0, "{mode}: steered traffic leaked");

    // The own network: directly, never through the warp; the control's
    // explicit rule goes through it, so the counter counts.
    assert!(
        pings(&target, &b, 3),
        "{mode}: the bystander did not answer"
    );
    assert_eq!(
        count(&t_to_b),
        0,
        "{mode}: the full tunnel sent its neighbour's traffic through the warp"
    );
    let _ = pings(&control, &b, 2);
    assert!(
        count(&c_to_b) > 0,
        "{mode}: the warp's forward counter saw nothing of the control target"
    );

    // The exclusion: the container's own path (which ends in the sink),
    // never the warp.
    let before = sink.packets();
    let _ = pings(&target, &excluded, 3);
    assert!(
        sink.packets() - before >= 3,
        "{mode}: the excluded address was not reached by the target's own path"
    );
    assert_eq!(
        count(&t_to_x),
        0,
        "{mode}: the exclusion went through the warp"
    );

    // The block rule: that port refused, others steered, nothing leaked.
    let before = sink.packets();
    connect(&target, &remote, BLOCKED_PORT);
    connect(&target, &remote, STEERED_PORT);
    assert_eq!(
        count(&blocked_port),
        0,
        "{mode}: a blocked port reached the warp"
    );
    assert!(
        count(&steered_port) > 0,
        "{mode}: the steered port did not reach the warp"
    );
    assert_eq!(
        sink.packets() - before,
        0,
        "{mode}: blocked or steered TCP left around the warp"
    );
}

#[test]
fn rule_actions_inside_a_steered_prefix_routes() {
    let test = "rule_actions_inside_a_steered_prefix_routes";
    skip_if!(test, skip::missing_docker());
    actions_inside_a_steered_prefix("routes");
}

#[test]
fn rule_actions_inside_a_steered_prefix_ebpf() {
    let test = "rule_actions_inside_a_steered_prefix_ebpf";
    skip_if!(test, skip::missing_docker());
    actions_inside_a_steered_prefix("ebpf");
}
