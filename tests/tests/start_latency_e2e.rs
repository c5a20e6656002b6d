//! Measures, from the daemon's own log, the latency from a target's Docker
//! start event to its routes being installed, over 20 starts. It prints the
//! median and the maximum; like every timing here, it asserts no bound.

use std::time::Duration;

use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    skip, skip_if,
    steering::{GLOBAL_RULES, start_warp},
};

const STARTS: usize = 20;

#[test]
fn start_event_to_programmed_latency() {
    let test = "start_event_to_programmed_latency";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let daemon = Daemon::start(&labels, "routes", GLOBAL_RULES).expect("daemon");
    daemon
        .wait_for_log("connected to Docker", Duration::from_secs(10))
        .expect("daemon up");
    let target_label = labels.target_label(&warp_name);
    let mut targets = Vec::new();
    for i in 0..STARTS {
        let target = Container::run(
            "nwl",
            &network,
            &["--label", &target_label],
            &["sleep", "600"],
        )
        .expect("target");
        let needle = format!("container={}", target.name());
        let programmed = eventually(Duration::from_secs(10), || {
            daemon
                .log()
                .lines()
                .any(|l| l.contains(&needle) && l.contains("target programmed after event"))
        });
        assert!(
            programmed,
            "start {i}: {} was never programmed after its event",
            target.name()
        );
        targets.push(target);
    }
    let mut latencies = daemon.event_latencies_ms(None);
    assert_eq!(latencies.len(), STARTS, "one latency per start");
    latencies.sort_by(f64::total_cmp);
    let median = (latencies[STARTS / 2 - 1] + latencies[STARTS / 2]) / 2.0;
    println!(
        "start event -> routes installed over {STARTS} starts: median {median:.1} ms, max {:.1} ms",
        latencies[STARTS - 1]
    );
    drop(targets);
    drop(warp);
}
