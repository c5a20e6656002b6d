//! A failover group on real containers, both dataplanes: a target names
//! two warps in priority order (`netwarp.target=A,B`). `docker kill` of
//! the active one moves its traffic to the other; the primary's return
//! moves it back only after the hold-down; then the primary's tunnel dies
//! silently (its probed port dropped, its process untouched) and its
//! probe moves the traffic again; nothing reaches the leak sink meanwhile.
//!
//! Each warp answers on tcp 8080 of the steered address with its own
//! banner, so a connection tells which warp carried it.
//!
//! Network safety: the network is `--internal`; the steered address is
//! each warp's loopback in a unique 198.18.N.0/24, whose host route ends
//! in the counting sink; every connection is bounded by nc's timeout;
//! every fixture is a drop guard.

use std::time::{Duration, Instant};

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix},
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{Exposition, status_json, status_target},
    skip, skip_if,
    steering::{DeadTunnel, carried_by, run_warp},
};

const CONVERGE: Duration = Duration::from_secs(30);
const HOLD_DOWN_SECS: u64 = 4;

fn warp_of(daemon: &Daemon, target: &Container) -> Option<String> {
    let status = status_json(daemon).ok()?;
    Some(
        status_target(&status, target.name())?["warp"]
            .as_str()?
            .to_owned(),
    )
}

fn failover(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwf").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let start_warp = |tag: &str, extra: &[&str]| {
        let name = labels.warp_name(tag);
        let script = format!(
            "ip addr add {remote}/32 dev lo; \
             while true; do echo carried-by-{tag} | nc -l -p 8080; done"
        );
        let warp = run_warp(&name, &network, &script, extra).expect("warp");
        (name, warp)
    };
    // The primary's probe checks the port it serves through "its tunnel".
    let probe = format!("netwarp.probe=tcp:{remote}:8080@lo");
    let (primary, primary_warp) = start_warp("a", &["--label", &probe]);
    let (backup, _backup_warp) = start_warp("b", &[]);
    let target = Container::run(
        "nwft",
        &network,
        &[
            "--label",
            &labels.target_label(&format!("{primary},{backup}")),
        ],
        &["sleep", "600"],
    )
    .expect("target");
    let hold_down = HOLD_DOWN_SECS.to_string();
    let daemon = Daemon::start_with_env(
        &labels,
        mode,
        &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
        &[
            ("NETWARP_FAILOVER_HOLD_DOWN_SECS", &hold_down),
            ("NETWARP_PROBES_INTERVAL_SECS", "1"),
            ("NETWARP_PROBES_TIMEOUT_MS", "300"),
            ("NETWARP_PROBES_FAILURES", "2"),
            ("NETWARP_PROBES_WINDOW", "3"),
        ],
    )
    .expect("daemon");
    assert!(
        eventually(CONVERGE, || carried_by(&target, &remote).as_deref()
            == Some("a")),
        "{mode}: the primary never carried the target; status warp: {:?}",
        warp_of(&daemon, &target),
    );
    let status = status_json(&daemon).expect("status");
    let entry = status_target(&status, target.name()).expect("the target in status");
    assert_eq!(entry["warp_group"], serde_json::json!([primary, backup]));
    let leaked = sink.packets();

    // The primary dies: the backup carries the traffic.
    run("docker", &["kill", &primary]).expect("docker kill");
    assert!(
        eventually(CONVERGE, || carried_by(&target, &remote).as_deref()
            == Some("b")),
        "{mode}: the backup never carried the target after the primary died; status warp: {:?}",
        warp_of(&daemon, &target)
    );
    assert_eq!(warp_of(&daemon, &target).as_deref(), Some(backup.as_str()));

    // The primary returns: the backup keeps the traffic through the
    // hold-down, then the primary takes it back.
    run("docker", &["start", &primary]).expect("docker start");
    let back = Instant::now();
    assert!(
        eventually(CONVERGE, || status_json(&daemon).is_ok_and(|s| {
            (s["warps"].as_array().into_iter().flatten())
                .any(|w| w["name"] == primary.as_str() && w["state"] == "up")
        })),
        "{mode}: the primary never came back up"
    );
    if back.elapsed() < Duration::from_secs(HOLD_DOWN_SECS - 2) {
        assert_eq!(
            carried_by(&target, &remote).as_deref(),
            Some("b"),
            "{mode}: the primary took the traffic back inside its hold-down"
        );
    }
    assert!(
        eventually(CONVERGE, || carried_by(&target, &remote).as_deref()
            == Some("a")),
        "{mode}: the primary never took the traffic back after its hold-down"
    );
    assert!(
        back.elapsed() >= Duration::from_secs(HOLD_DOWN_SECS),
        "{mode}: moved back after {:?}, inside the {HOLD_DOWN_SECS} s hold-down",
        back.elapsed()
    );

    // The primary's tunnel dies silently: Docker still says it runs, its
    // probe says otherwise, and the backup takes over.
    let dead = DeadTunnel::kill(&primary_warp, 8080).expect("a silent death");
    assert!(
        eventually(CONVERGE, || carried_by(&target, &remote).as_deref()
            == Some("b")),
        "{mode}: a silently dead primary kept the target; status warp: {:?}",
        warp_of(&daemon, &target)
    );
    drop(dead);
    assert!(
        eventually(CONVERGE, || carried_by(&target, &remote).as_deref()
            == Some("a")),
        "{mode}: the primary never took the traffic back once its probe answered"
    );

    assert_eq!(
        sink.packets(),
        leaked,
        "{mode}: packets leaked during failover"
    );
    let metrics = daemon.metrics_address(CONVERGE).expect("metrics");
    let failovers = Exposition::scrape(metrics)
        .expect("a scrape")
        .value("netwarp_failovers_total", &[])
        .expect("the failover counter");
    assert!(failovers >= 4.0, "{mode}: {failovers} failovers counted");
}

#[test]
fn a_killed_warp_fails_over_and_the_primary_returns_after_the_hold_down_routes() {
    let test = "a_killed_warp_fails_over_and_the_primary_returns_after_the_hold_down_routes";
    skip_if!(test, skip::missing_docker());
    failover("routes");
}

#[test]
fn a_killed_warp_fails_over_and_the_primary_returns_after_the_hold_down_ebpf() {
    let test = "a_killed_warp_fails_over_and_the_primary_returns_after_the_hold_down_ebpf";
    skip_if!(test, skip::missing_docker());
    failover("ebpf");
}
