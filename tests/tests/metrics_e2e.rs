//! The Prometheus endpoint on a real daemon with real containers, in both
//! dataplanes, parsed by the reference OpenMetrics parser.
//!
//! Networks are `--internal`; the "remote" address belongs to the warp
//! container's loopback, so all traffic stays between test containers.

use std::time::Duration;

use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{Exposition, interface_counter, missing_parser},
    skip,
    steering::{GLOBAL_RULES, REMOTE, reaches, start_target, start_warp},
};

const CONVERGE: Duration = Duration::from_secs(20);
/// Bytes of the bounded TCP transfer.
const PAYLOAD: u64 = 2_000_000;
const SINK_PORT: u16 = 7000;

fn skipped(test: &str) -> bool {
    match skip::missing_docker().or_else(missing_parser) {
        Some(reason) => {
            skip::record(test, &reason);
            true
        }
        None => false,
    }
}

fn scrape(daemon: &Daemon) -> Exposition {
    let address = daemon
        .metrics_address(Duration::from_secs(10))
        .expect("metrics address");
    Exposition::scrape(address).expect("a scrape the reference parser accepts")
}

/// (bytes, packets) the container sent, as netwarp exports them.
fn exported_tx(daemon: &Daemon, container: &Container) -> (u64, u64) {
    let scrape = scrape(daemon);
    let labels = [("container", container.name())];
    let value = |name| scrape.value(name, &labels).expect("a per-container series") as u64;
    (
        value("netwarp_container_transmit_bytes_total"),
        value("netwarp_container_transmit_packets_total"),
    )
}

fn has_series(daemon: &Daemon, container: &Container) -> bool {
    !scrape(daemon)
        .find(
            "netwarp_container_transmit_bytes_total",
            &[("container", container.name())],
        )
        .is_empty()
}

fn within(measured: u64, reference: u64, fraction: f64) -> bool {
    (measured as f64 - reference as f64).abs() <= reference as f64 * fraction
}

/// A bounded TCP transfer through the warp: the exported transmit bytes
/// and packets match the container's own eth0 counters (the veth driver's
/// count of the same frames, read inside the container) within 2%, and
/// lie between the payload and the payload plus 10% for headers and the
/// connection's other packets (the skbs may be GSO super-frames, so the
/// exact header count is not fixed, but never below the payload).
fn counts_a_bounded_transfer(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwm").expect("network");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let target = start_target("nwt", &network, &[labels.target_label(&warp_name)]);
    let daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "{mode}: the target was never steered"
    );
    assert!(
        eventually(CONVERGE, || has_series(&daemon, &target)),
        "{mode}: no per-container series for {}:\n{}",
        target.name(),
        scrape(&daemon).text
    );

    // The warp counts what it receives, to prove the transfer completed.
    // Its stdin stays open (busybox nc would otherwise close the
    // connection at stdin's end); it exits when the sender closes.
    warp.exec_detached(&[
        "sh",
        "-c",
        &format!("sleep 60 | nc -l -p {SINK_PORT} | wc -c > /tmp/received"),
    ])
    .expect("starting the sink");
    std::thread::sleep(Duration::from_millis(300));

    let (bytes_before, packets_before) = exported_tx(&daemon, &target);
    let if_bytes_before = interface_counter(&target, "tx_bytes").expect("tx_bytes");
    let if_packets_before = interface_counter(&target, "tx_packets").expect("tx_packets");
    let steered_before = steered_bytes(&daemon, &target);

    let blocks = PAYLOAD / 1000;
    target
        .exec(&[
            "sh",
            "-c",
            &format!(
                "dd if=/dev/zero bs=1000 count={blocks} 2>/dev/null | nc -w 2 {REMOTE} {SINK_PORT}"
            ),
        ])
        .expect("the transfer");
    let mut received = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            received = warp
                .exec(&["cat", "/tmp/received"])
                .unwrap_or_default()
                .trim()
                .to_owned();
            !received.is_empty()
        }),
        "{mode}: the sink never finished"
    );
    assert_eq!(
        received,
        PAYLOAD.to_string(),
        "{mode}: the sink got {received} bytes"
    );
    std::thread::sleep(Duration::from_millis(500));

    let if_bytes = interface_counter(&target, "tx_bytes").expect("tx_bytes") - if_bytes_before;
    let if_packets =
        interface_counter(&target, "tx_packets").expect("tx_packets") - if_packets_before;
    let (bytes_after, packets_after) = exported_tx(&daemon, &target);
    let (bytes, packets) = (bytes_after - bytes_before, packets_after - packets_before);
    println!(
        "{mode}: exported tx {bytes} B / {packets} pkts; eth0 in the container {if_bytes} B / {if_packets} pkts; payload {PAYLOAD} B"
    );
    assert!(
        within(bytes, if_bytes, 0.02),
        "{mode}: exported {bytes} B, the container's eth0 sent {if_bytes} B"
    );
    assert!(
        within(packets, if_packets, 0.02),
        "{mode}: exported {packets} packets, the container's eth0 sent {if_packets}"
    );
    assert!(
        (PAYLOAD..=PAYLOAD + PAYLOAD / 10).contains(&bytes),
        "{mode}: {bytes} B exported for a {PAYLOAD} B payload"
    );

    match mode {
        "ebpf" => {
            // Everything the transfer sent went to REMOTE, so was steered.
            let steered = steered_bytes(&daemon, &target).expect("steered bytes in ebpf mode")
                - steered_before.expect("steered bytes in ebpf mode");
            println!("{mode}: steered {steered} B");
            assert!(
                (PAYLOAD..=bytes).contains(&steered),
                "{mode}: steered {steered} B of {bytes} B sent, payload {PAYLOAD} B"
            );
            let scrape = scrape(&daemon);
            for reason in ["warp_down", "policy", "rate", "rule"] {
                scrape
                    .value(
                        "netwarp_container_dropped_packets_total",
                        &[("container", target.name()), ("reason", reason)],
                    )
                    .expect("a drop series per reason");
            }
        }
        _ => assert_eq!(
            steered_before, None,
            "routes mode has no steered counter and must not pretend to"
        ),
    }
    drop(daemon);
    drop(warp);
}

fn steered_bytes(daemon: &Daemon, target: &Container) -> Option<u64> {
    scrape(daemon)
        .value(
            "netwarp_container_steered_bytes_total",
            &[("container", target.name())],
        )
        .ok()
        .map(|v| v as u64)
}

#[test]
fn counts_a_bounded_transfer_routes() {
    if skipped("counts_a_bounded_transfer_routes") {
        return;
    }
    counts_a_bounded_transfer("routes");
}

#[test]
fn counts_a_bounded_transfer_ebpf() {
    if skipped("counts_a_bounded_transfer_ebpf") {
        return;
    }
    counts_a_bounded_transfer("ebpf");
}

/// Process metrics are there with the right values, and every series of a
/// removed container disappears while another target's stay.
fn removed_containers_vanish(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwm").expect("network");
    let daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let first = start_target("nwt", &network, &[labels.target_label(&warp_name)]);
    let second = start_target("nwt", &network, &[labels.target_label(&warp_name)]);
    for target in [&first, &second] {
        assert!(
            eventually(CONVERGE, || reaches(target, 8080)),
            "{mode}: {} was never steered",
            target.name()
        );
        assert!(
            eventually(CONVERGE, || has_series(&daemon, target)),
            "{mode}: no series for {}",
            target.name()
        );
    }

    let metrics = scrape(&daemon);
    let value = |name: &str, labels: &[(&str, &str)]| {
        metrics
            .value(name, labels)
            .unwrap_or_else(|e| panic!("{mode}: {e}"))
    };
    assert_eq!(value("netwarp_dataplane_info", &[("mode", mode)]), 1.0);
    assert_eq!(
        value(
            "netwarp_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value("netwarp_docker_connected", &[]), 1.0);
    assert_eq!(value("netwarp_docker_reconnects_total", &[]), 0.0);
    assert!(
        value(
            "netwarp_docker_events_total",
            &[("type", "container"), ("action", "start")]
        ) >= 3.0,
        "{mode}: the warp and two targets started after the daemon"
    );
    assert!(value("netwarp_reconcile_duration_seconds_count", &[]) >= 1.0);
    assert!(
        value("netwarp_event_to_programmed_seconds_count", &[]) >= 1.0,
        "{mode}: targets started after the daemon, so their events were timed"
    );
    assert_eq!(value("netwarp_warp_up", &[("warp", &warp_name)]), 1.0);
    for target in [&first, &second] {
        let id = target_id(target);
        assert_eq!(
            value(
                "netwarp_target_state",
                &[
                    ("container", target.name()),
                    ("id", &id),
                    ("warp", &warp_name),
                    ("state", "steered")
                ]
            ),
            1.0
        );
    }
    assert_eq!(value("netwarp_targets", &[("state", "steered")]), 2.0);

    let gone = first.name().to_owned();
    drop(first);
    assert!(
        eventually(CONVERGE, || {
            let now = scrape(&daemon);
            now.with_label("container", &gone).is_empty()
                && !now.with_label("container", second.name()).is_empty()
        }),
        "{mode}: series of the removed {gone} remain, or {}'s vanished:\n{}",
        second.name(),
        scrape(&daemon).text
    );

    // The warp goes: it is reported down, the remaining target blocked.
    drop(warp);
    assert!(
        eventually(CONVERGE, || {
            let now = scrape(&daemon);
            now.value("netwarp_warp_up", &[("warp", &warp_name)]).ok() == Some(0.0)
                && now.value("netwarp_targets", &[("state", "blocked")]).ok() == Some(1.0)
        }),
        "{mode}: the warp never showed as down:\n{}",
        scrape(&daemon).text
    );
    drop(second);
    drop(daemon);
}

fn target_id(container: &Container) -> String {
    let id = netwarp_tests::command::run(
        "docker",
        &["inspect", "--format", "{{.Id}}", container.name()],
    )
    .expect("docker inspect");
    id.trim()[..12].to_owned()
}

#[test]
fn removed_containers_vanish_routes() {
    if skipped("removed_containers_vanish_routes") {
        return;
    }
    removed_containers_vanish("routes");
}

#[test]
fn removed_containers_vanish_ebpf() {
    if skipped("removed_containers_vanish_ebpf") {
        return;
    }
    removed_containers_vanish("ebpf");
}

/// A slow client that sends nothing does not stop other scrapes.
#[test]
fn a_stuck_client_does_not_block_scrapes() {
    let test = "a_stuck_client_does_not_block_scrapes";
    if skipped(test) {
        return;
    }
    let labels = TestLabels::unique();
    let daemon = Daemon::start(&labels, "routes", GLOBAL_RULES).expect("daemon");
    let address = daemon
        .metrics_address(Duration::from_secs(10))
        .expect("metrics address");
    // Connections that never send a request, and one that sends garbage.
    let stuck: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(address).expect("connect"))
        .collect();
    let mut garbage = std::net::TcpStream::connect(address).expect("connect");
    std::io::Write::write_all(&mut garbage, b"\x00\x01 not http\r\n\r\n").expect("write");
    let started = std::time::Instant::now();
    let exposition = Exposition::scrape(address).expect("a scrape beside stuck clients");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a scrape beside stuck clients took {:?}",
        started.elapsed()
    );
    assert!(!exposition.find("netwarp_build_info", &[]).is_empty());
    drop(stuck);
}
