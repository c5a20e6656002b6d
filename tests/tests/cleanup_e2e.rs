//! `netwarp cleanup` removes every netwarp entry in every container, and
//! the eBPF pins, so it lives in its own test binary: cargo runs binaries
//! one after another, and it must not clean up under another test's daemon.

use std::time::Duration;

use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::{Container, DockerNetwork},
    skip, skip_if,
    steering::{GLOBAL_RULES, full_routing, reaches, start_target, start_warp},
    tcx,
};

/// The root qdiscs of a container's eth0 and of its host veth.
fn qdiscs(container: &Container) -> String {
    let (_, veth) = container.host_veth().expect("veth");
    let inside = container
        .ip(&["-o", "link", "show", "eth0"])
        .expect("eth0")
        .split_whitespace()
        .skip_while(|w| *w != "qdisc")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let host = netwarp_tests::command::run("tc", &["qdisc", "show", "dev", &veth, "root"])
        .expect("tc qdisc show");
    format!("inside: {inside}; host: {}", host.trim())
}

/// Names of the TCX programs on a container's host veth.
fn tcx_programs(container: &Container) -> Vec<String> {
    let (_, veth) = container.host_veth().expect("veth");
    tcx::tcx_programs(&veth)
        .iter()
        .map(|(_, program)| tcx::program_name(program))
        .collect()
}

/// Whether the warp's eth0 runs an XDP program.
fn warp_runs_xdp(warp: &Container) -> bool {
    let link = warp.ip(&["-d", "link", "show", "eth0"]).expect("eth0");
    link.contains(" xdp ") || link.contains("prog/xdp")
}

fn cleanup_removes_everything(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&labels.warp_name("gw")),
            format!("{}=50mbit", labels.egress_rate),
            format!("{}=50mbit", labels.ingress_rate),
        ],
    );
    // A spread group: in routes mode, its nexthops and resilient group.
    let second = start_warp(&labels.warp_name("gw2"), &network, &[]);
    let spread = start_target(
        "nws",
        &network,
        &[labels.target_label(&format!(
            "spread:{},{}",
            labels.warp_name("gw"),
            labels.warp_name("gw2")
        ))],
    );
    let spread_before = full_routing(&spread);
    let plain = start_target("nwu", &network, &[]);
    let plain_before = (full_routing(&plain), tcx_programs(&plain));
    let target_before = (
        full_routing(&target),
        tcx_programs(&target),
        qdiscs(&target),
    );

    let mut daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&target, 8080)),
        "{mode}: never steered"
    );
    assert!(
        eventually(Duration::from_secs(15), || qdiscs(&target)
            .matches("tbf")
            .count()
            == 2),
        "{mode}: the caps' qdiscs never appeared: {}",
        qdiscs(&target)
    );
    assert_ne!(
        (
            full_routing(&target),
            tcx_programs(&target),
            qdiscs(&target)
        ),
        target_before,
        "{mode}: nothing was programmed"
    );
    if mode == "routes" {
        assert!(
            !daemon.host_guard_routes().is_empty(),
            "the host guard's table holds no route"
        );
        assert!(
            eventually(Duration::from_secs(15), || spread
                .ip(&["nexthop", "show", "protocol", "0x57"])
                .is_ok_and(
                    |hops| hops.matches("via").count() == 2 && hops.contains("type resilient")
                )),
            "the spread target's nexthops never appeared: {}",
            full_routing(&spread)
        );
    }
    // Under the XDP hook, netwarp's pass program runs on the warp's veth.
    let xdp_hook =
        mode == "ebpf" && netwarp_tests::daemon::test_ebpf_hook().as_deref() == Some("xdp");
    if xdp_hook {
        assert!(
            eventually(Duration::from_secs(15), || warp_runs_xdp(&warp)),
            "the warp's veth never got the XDP pass program"
        );
    }
    daemon.stop(libc::SIGTERM).expect("stopping");

    let binary = netwarp_binary();
    let config = daemon.config_path().to_str().expect("utf-8").to_owned();
    let out = output(
        binary.to_str().expect("utf-8"),
        &["cleanup", "--config", &config],
    )
    .expect("netwarp cleanup");
    assert!(
        out.status.success(),
        "{mode}: cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (
            full_routing(&target),
            tcx_programs(&target),
            qdiscs(&target)
        ),
        target_before,
        "{mode}: netwarp entries remain"
    );
    assert_eq!(
        full_routing(&spread),
        spread_before,
        "{mode}: the spread target's entries remain"
    );
    assert_eq!(
        daemon.host_guard_routes(),
        Vec::<String>::new(),
        "{mode}: the host guard's routes remain"
    );
    assert!(
        !daemon.pin_dir().exists(),
        "{mode}: the pin directory remains"
    );
    assert!(
        !reaches(&target, 8080),
        "{mode}: still steered after cleanup"
    );
    assert!(
        !warp_runs_xdp(&warp),
        "{mode}: the warp's veth still runs an XDP program"
    );
    assert_eq!(
        (full_routing(&plain), tcx_programs(&plain)),
        plain_before,
        "{mode}: an unlabelled container changed"
    );
    drop((warp, second));
}

#[test]
fn cleanup_removes_every_entry_and_nothing_else() {
    let test = "cleanup_removes_every_entry_and_nothing_else";
    skip_if!(test, skip::missing_docker());
    for mode in ["routes", "ebpf"] {
        cleanup_removes_everything(mode);
    }
}
