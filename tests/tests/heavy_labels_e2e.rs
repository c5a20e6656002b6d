//! Heavy rules labels (issues 15 and 21): a few targets whose rules label
//! holds thousands of distinct /32s must not cost an ordinary target of
//! the same warp its steering, nor make netwarp report a target steered
//! while its programming failed; and in routes mode the host's guard must
//! not grow with the number of prefixes.
//!
//! The dataplane comes from NETWARP_TEST_DATAPLANE (default `routes`);
//! `cargo xtask test` runs this suite in both.
//!
//! Network safety: the heavy prefixes are in 10.202.0.0/15 and the
//! network on a /22 of 10.200.0.0/16 (neither is the machine's); the
//! ordinary target's prefix (198.18.N.0/24) is routed on the host into a
//! sink namespace that counts and drops; the warp owns the remote address
//! on its loopback; the network is `--internal`; every probe is a single
//! bounded ping; every fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix, start_warp_at},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    skip, skip_if,
    steering::start_heavy_target,
    vpn::answered,
};

const HEAVY_TARGETS: u32 = 4;
const HEAVY_PREFIXES: u32 = 3_000;
/// Heavy targets take a while to program on a busy 2-core machine.
const CONVERGE: Duration = Duration::from_secs(60);
/// Routes mode: netwarp's host rules (both families) per guarded network
/// at most. A guard that writes one host rule per prefix needs thousands.
const HOST_RULES_PER_NETWORK: usize = 16;

fn mode() -> String {
    std::env::var("NETWARP_TEST_DATAPLANE").unwrap_or_else(|_| "routes".into())
}

#[test]
fn heavy_labels_leave_ordinary_targets_steered() {
    let test = "heavy_labels_leave_ordinary_targets_steered";
    skip_if!(test, skip::missing_docker());
    let mode = mode();
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable_in_test_range("nwhl").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let warp_name = labels.warp_name("gw");
    let _warp = start_warp_at(&warp_name, &network, &remote, &[]).expect("warp");
    let target_label = labels.target_label(&warp_name);
    let daemon = Daemon::start(
        &labels,
        &mode,
        &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
    )
    .expect("daemon");
    daemon
        .wait_for_log("initial reconcile complete", CONVERGE)
        .expect("daemon up");

    let heavy: Vec<Container> = (0..HEAVY_TARGETS)
        .map(|index| {
            start_heavy_target(
                "nwhh",
                &network,
                &labels,
                &target_label,
                index,
                HEAVY_PREFIXES,
            )
            .expect("heavy target")
        })
        .collect();
    let ordinary = Container::run(
        "nwho",
        &network,
        &["--label", &target_label],
        &["sleep", "600"],
    )
    .expect("ordinary target");

    // The ordinary target is steered: the warp answers, nothing leaks.
    assert!(
        eventually(CONVERGE, || answered(&ordinary, &remote)),
        "{mode}: the ordinary target never reached the remote through its warp beside \
         {HEAVY_TARGETS} targets of {HEAVY_PREFIXES} prefixes"
    );
    let before = sink.packets();
    let answers = (0..3).filter(|_| answered(&ordinary, &remote)).count();
    assert_eq!(answers, 3, "{mode}: the steered ordinary target lost pings");
    assert_eq!(
        sink.packets(),
        before,
        "{mode}: the ordinary target's packets leaked to the host's path"
    );

    // Every target is listed; none shown steered carries a failure. A
    // heavy target may be in any other state (blocked for capacity, say),
    // as long as status says so.
    let names: Vec<&str> = heavy
        .iter()
        .chain([&ordinary])
        .map(Container::name)
        .collect();
    let mut status = serde_json::Value::Null;
    let listed = eventually(CONVERGE, || {
        status = status_json(&daemon).unwrap_or_default();
        names
            .iter()
            .all(|name| status_target(&status, name).is_some())
    });
    assert!(listed, "{mode}: not every target is in status: {status:#}");
    for name in &names {
        let target = status_target(&status, name).expect("listed");
        println!(
            "{mode}: {name}: state {} reason {} error {}",
            target["state"], target["reason"], target["error"]
        );
        if target["state"] == "steered" {
            assert!(
                target["error"].is_null(),
                "{mode}: {name} is shown steered beside the failure {}",
                target["error"]
            );
        }
    }
    assert_eq!(
        status_target(&status, ordinary.name()).expect("listed")["state"],
        "steered",
        "{mode}: status does not show the ordinary target steered"
    );

    if mode == "routes" {
        // The guard keeps its prefixes as routes in its own tables: a
        // handful of rules per guarded network, whatever the labels hold.
        let (v4, v6) = daemon.host_guard_rule_counts().expect("host rules");
        println!("{mode}: netwarp's host rules: {v4} IPv4, {v6} IPv6, for one guarded network");
        assert!(
            v4 + v6 <= HOST_RULES_PER_NETWORK,
            "{mode}: netwarp holds {v4} IPv4 and {v6} IPv6 rules in the host's namespace for \
             one guarded network, more than {HOST_RULES_PER_NETWORK}: the guard grows with \
             the number of prefixes"
        );
    }
}
