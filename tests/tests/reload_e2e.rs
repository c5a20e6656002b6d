//! A SIGHUP against a real daemon: a live key takes effect on the next
//! pass, every restart-only key that changed is named, its running value
//! kept, and a file that does not parse changes nothing: all read from the
//! status document and the metrics.
//! (Every key's classification is checked at unit level, in
//! netwarp/src/config/reload.rs.)

use std::time::Duration;

use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{Exposition, status_json},
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
    let last_reload = || status()["config"]["last_reload"].clone();
    assert!(
        eventually(CONVERGE, || status()["config"]["reloads"].as_u64()
            == Some(1)),
        "the reload is not in the status document"
    );

    // The live key: the container is a target from the next pass on.
    assert!(
        eventually(CONVERGE, || targets() == 1),
        "the reloaded target label was not applied"
    );
    let reload = last_reload();
    assert_eq!(reload["error"], serde_json::Value::Null, "{reload}");
    assert_eq!(
        reload["applied"],
        serde_json::json!(["target_container_label"]),
        "{reload}"
    );
    // Each restart-only key is named, and only those.
    let mut needs_restart: Vec<&str> = (reload["needs_restart"].as_array())
        .map(|keys| keys.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    needs_restart.sort_unstable();
    assert_eq!(
        needs_restart,
        [
            "dataplane.host_guard_priority",
            "dataplane.resync_interval_secs"
        ],
        "{reload}"
    );
    let metrics = || {
        let address = daemon.metrics_address(CONVERGE).expect("metrics address");
        Exposition::scrape(address).expect("scrape")
    };
    let m = metrics();
    assert_eq!(
        m.value("netwarp_config_restart_pending", &[]).ok(),
        Some(2.0)
    );
    assert_eq!(
        (m.value("netwarp_config_reloads_total", &[("result", "applied")])).ok(),
        Some(1.0)
    );

    // A file that does not parse changes nothing and says why.
    std::fs::write(daemon.config_path(), "[docker\n").expect("config");
    daemon.signal(libc::SIGHUP);
    assert!(
        eventually(CONVERGE, || status()["config"]["reloads"].as_u64()
            == Some(2)),
        "the rejected reload is not in the status document"
    );
    let reload = last_reload();
    assert!(
        reload["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{reload}"
    );
    assert_eq!(reload["applied"], serde_json::json!([]), "{reload}");
    let m = metrics();
    assert_eq!(
        (m.value("netwarp_config_reloads_total", &[("result", "rejected")])).ok(),
        Some(1.0)
    );
    // The restart-only keys are still pending: the running configuration stands.
    assert_eq!(
        m.value("netwarp_config_restart_pending", &[]).ok(),
        Some(2.0)
    );
    assert_eq!(targets(), 1, "a rejected reload changed the targets");
}
