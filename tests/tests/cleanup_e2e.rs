//! `netwarp cleanup` removes every netwarp entry in every container, so it
//! lives in its own test binary: cargo runs binaries one after another, and
//! it must not clean up under another test's daemon.

use std::time::Duration;

use netwarp_tests::{
    command::{output, run},
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::{Container, DockerNetwork, TEST_IMAGE},
    skip, skip_if,
};

const REMOTE: &str = "203.0.113.1";

fn reaches(container: &Container) -> bool {
    let cmd = format!("sleep 1 | nc -w 2 {REMOTE} 8080");
    container
        .exec(&["sh", "-c", &cmd])
        .is_ok_and(|out| out.contains("hello"))
}

fn routing(container: &Container) -> String {
    let rules = container.ip(&["rule", "show"]).unwrap_or_default();
    let routes = container
        .ip(&["route", "show", "table", "all"])
        .unwrap_or_default();
    format!("{rules}\n{routes}")
}

#[test]
fn cleanup_removes_every_entry_and_nothing_else() {
    let test = "cleanup_removes_every_entry_and_nothing_else";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp_name = labels.warp_name("gw");
    let script =
        format!("ip addr add {REMOTE}/32 dev lo; while true; do echo hello | nc -l -p 8080; done");
    let warp = Container::adopt(&warp_name);
    run(
        "docker",
        &[
            "run",
            "--detach",
            "--name",
            &warp_name,
            "--network",
            network.name(),
            "--cap-add",
            "NET_ADMIN",
            TEST_IMAGE,
            "sh",
            "-c",
            &script,
        ],
    )
    .expect("warp");
    let target_label = labels.target_label(&warp_name);
    let target = Container::run(
        "nwt",
        &network,
        &["--label", &target_label],
        &["sleep", "600"],
    )
    .expect("target");
    let plain = Container::run("nwu", &network, &[], &["sleep", "600"]).expect("plain");
    let plain_before = routing(&plain);
    let target_before = routing(&target);

    let mut daemon = Daemon::start(
        &labels,
        "routes",
        "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\n",
    )
    .expect("daemon");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&target)),
        "never steered"
    );
    assert_ne!(routing(&target), target_before, "nothing was programmed");
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
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        routing(&target),
        target_before,
        "netwarp entries remain in the target"
    );
    assert!(!reaches(&target), "still steered after cleanup");
    assert_eq!(
        routing(&plain),
        plain_before,
        "cleanup modified an unlabelled container"
    );
    drop(warp);
}
