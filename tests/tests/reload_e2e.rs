//! A SIGHUP against a real daemon: a live key takes effect on the next
//! pass (seen in the status document), and every restart-only key that
//! changed is named in a warning, its running value kept.
//! (Every key's classification is checked at unit level, in
//! netwarp/src/config/reload.rs.)

use std::time::Duration;

use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually, log_field},
    docker::{Container, DockerNetwork},
    observe::status_json,
    skip, skip_if,
};

const CONVERGE: Duration = Duration::from_secs(20);

#[test]
fn a_reload_applies_live_keys_and_names_restart_only_ones() {
    let test = "a_reload_applies_live_keys_and_names_restart_only_ones";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nwrl").expect("network");
    // Labelled with a target label the daemon does not use yet.
    let later_label = format!("{}-later", labels.target);
    let _target = Container::run(
        "nwrlt",
        &network,
        &["--label", &format!("{later_label}=none")],
        &["sleep", "300"],
    )
    .expect("container");
    // dry-run: the reload mechanism needs no kernel state.
    let daemon = Daemon::start(&labels, "dry-run", "").expect("daemon");
    // Until its handler is installed, SIGHUP would end the daemon.
    daemon
        .wait_for_log("connected to Docker", CONVERGE)
        .expect("daemon up");
    let status = || status_json(&daemon).expect("status");
    let targets = || status()["targets"].as_array().map_or(0, Vec::len);
    assert!(
        eventually(CONVERGE, || status()["reconcile"]["passes"].as_u64()
            >= Some(1)),
        "no pass completed"
    );
    assert_eq!(targets(), 0, "a target before its label is configured");

    let config = std::fs::read_to_string(daemon.config_path()).expect("config");
    let priority: u32 = config
        .lines()
        .find_map(|l| l.strip_prefix("host_guard_priority = "))
        .and_then(|p| p.parse().ok())
        .expect("the daemon's guard priority");
    let edited = config
        .replace(
            &format!("target_container_label = \"{}\"", labels.target),
            &format!("target_container_label = \"{later_label}\""),
        )
        .replace("resync_interval_secs = 5", "resync_interval_secs = 6")
        .replace(
            &format!("host_guard_priority = {priority}"),
            &format!("host_guard_priority = {}", priority + 1),
        );
    assert_eq!(edited.lines().count(), config.lines().count());
    assert_eq!(
        edited
            .lines()
            .zip(config.lines())
            .filter(|(a, b)| a != b)
            .count(),
        3,
        "the test edits three keys"
    );
    std::fs::write(daemon.config_path(), edited).expect("config");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("SIGHUP: configuration reloaded", CONVERGE)
        .expect("reloaded");

    // The live key: the container is a target from the next pass on.
    assert!(
        eventually(CONVERGE, || targets() == 1),
        "the reloaded target label was not applied"
    );
    // Each restart-only key is named, and only those.
    let log = daemon.log();
    let mut warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("only applies at start"))
        .filter_map(|l| Some(log_field(l, "key")?.trim_matches('"')))
        .collect();
    warned.sort_unstable();
    assert_eq!(
        warned,
        [
            "dataplane.host_guard_priority",
            "dataplane.resync_interval_secs"
        ],
        "{log}"
    );
    let reloaded = log
        .lines()
        .find(|l| l.contains("SIGHUP: configuration reloaded"))
        .expect("the reload line");
    assert!(reloaded.contains("target_container_label"), "{reloaded}");
}
