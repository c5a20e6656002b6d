//! A warp whose tunnel dies silently: its process runs and Docker calls it
//! up, but the probe netwarp runs from its namespace (its probe label) no
//! longer gets an answer. The target must be blocked (fail closed) for as
//! long as the probe fails, with the probe named in status and metrics,
//! and steered again once it answers. Both dataplanes, with the leak sink.
//!
//! The silent death is an iptables rule in the warp's namespace that drops
//! the probe's port (the path the probe checks); the target's own traffic
//! is not touched, so a ping that fails meanwhile was refused by netwarp.
//!
//! Network safety: the network is `--internal`; the probed and steered
//! address is the warp's loopback in a unique 198.18.N.0/24, whose host
//! route ends in the counting sink; every ping is one bounded probe; every
//! fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{Exposition, status_json},
    skip, skip_if,
    steering::{DeadTunnel, run_warp},
};

const CONVERGE: Duration = Duration::from_secs(30);
const PROBE_PORT: u16 = 8080;

/// One ping, one second at most: whether it was answered.
fn answered(container: &Container, remote: &str) -> bool {
    container
        .exec(&["ping", "-c", "1", "-W", "1", remote])
        .is_ok()
}

/// The warp's entry in status: its state and its probe's state.
fn warp_states(daemon: &Daemon, warp: &str) -> Option<(String, String)> {
    let status = status_json(daemon).ok()?;
    let entry = status["warps"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == warp)?;
    Some((
        entry["state"].as_str()?.to_owned(),
        entry["probe"]["state"].as_str()?.to_owned(),
    ))
}

fn target_state(daemon: &Daemon, target: &Container) -> Option<(String, String)> {
    let status = status_json(daemon).ok()?;
    let entry = (status["targets"].as_array()?.iter()).find(|t| t["name"] == target.name())?;
    Some((
        entry["state"].as_str()?.to_owned(),
        entry["reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn silent_death(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwq").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let warp_name = labels.warp_name("gw");
    let probe_label = format!("netwarp.probe=tcp:{remote}:{PROBE_PORT}@lo");
    // The warp serves the probed port on its loopback address, as a
    // resolver or web server behind a real tunnel would answer.
    let script = format!(
        "ip addr add {remote}/32 dev lo; \
         while true; do echo hello | nc -l -p {PROBE_PORT}; done"
    );
    let warp = run_warp(&warp_name, &network, &script, &["--label", &probe_label]).expect("warp");
    let target = Container::run(
        "nwqt",
        &network,
        &["--label", &labels.target_label(&warp_name)],
        &["sleep", "600"],
    )
    .expect("target");
    let daemon = Daemon::start_with_env(
        &labels,
        mode,
        &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
        &[
            ("NETWARP_PROBES_INTERVAL_SECS", "1"),
            ("NETWARP_PROBES_TIMEOUT_MS", "300"),
            ("NETWARP_PROBES_FAILURES", "2"),
            ("NETWARP_PROBES_WINDOW", "3"),
        ],
    )
    .expect("daemon");
    assert!(
        eventually(CONVERGE, || answered(&target, &remote)),
        "{mode}: the target never reached the remote through its probed warp"
    );
    assert_eq!(
        warp_states(&daemon, &warp_name),
        Some(("up".into(), "up".into())),
        "{mode}: the warp and its probe in status"
    );
    let metrics = daemon.metrics_address(CONVERGE).expect("metrics");
    let scrape = Exposition::scrape(metrics).expect("a scrape");
    assert_eq!(
        scrape
            .value("netwarp_warp_probe_up", &[("warp", &warp_name)])
            .ok(),
        Some(1.0)
    );

    // The tunnel dies silently: Docker still says the warp runs.
    let leaked = sink.packets();
    let dead = DeadTunnel::kill(&warp, PROBE_PORT).expect("dropping the probe in the warp");
    assert!(
        eventually(CONVERGE, || target_state(&daemon, &target).is_some_and(
            |(state, reason)| state == "blocked" && reason.contains("probe")
        )),
        "{mode}: the target stayed {:?} while its warp's probe failed",
        target_state(&daemon, &target)
    );
    assert_eq!(
        warp_states(&daemon, &warp_name),
        Some(("probe-failing".into(), "down".into()))
    );
    assert!(
        !answered(&target, &remote),
        "{mode}: the target still reached the remote through a warp whose probe fails"
    );
    let scrape = Exposition::scrape(metrics).expect("a scrape");
    assert_eq!(
        scrape
            .value("netwarp_warp_probe_up", &[("warp", &warp_name)])
            .ok(),
        Some(0.0)
    );
    assert!(
        scrape
            .value("netwarp_warp_probe_failures_total", &[("warp", &warp_name)])
            .unwrap_or(0.0)
            >= 2.0
    );

    // The tunnel comes back: steered again.
    drop(dead);
    assert!(
        eventually(CONVERGE, || answered(&target, &remote)),
        "{mode}: the target was not steered again once the probe answered"
    );
    assert_eq!(sink.packets(), leaked, "{mode}: packets leaked meanwhile");
}

#[test]
fn a_silently_dead_tunnel_blocks_its_targets_until_the_probe_answers_routes() {
    let test = "a_silently_dead_tunnel_blocks_its_targets_until_the_probe_answers_routes";
    skip_if!(test, skip::missing_docker());
    silent_death("routes");
}

#[test]
fn a_silently_dead_tunnel_blocks_its_targets_until_the_probe_answers_ebpf() {
    let test = "a_silently_dead_tunnel_blocks_its_targets_until_the_probe_answers_ebpf";
    skip_if!(test, skip::missing_docker());
    silent_death("ebpf");
}
