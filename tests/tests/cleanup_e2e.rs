//! `netwarp cleanup` removes every netwarp entry in every container, so it
//! lives in its own test binary: cargo runs binaries one after another, and
//! it must not clean up under another test's daemon.

use std::time::Duration;

use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::DockerNetwork,
    skip, skip_if,
    steering::{GLOBAL_RULES, full_routing, reaches, start_target, start_warp},
};

#[test]
fn cleanup_removes_every_entry_and_nothing_else() {
    let test = "cleanup_removes_every_entry_and_nothing_else";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[labels.target_label(&labels.warp_name("gw"))],
    );
    let plain = start_target("nwu", &network, &[]);
    let plain_before = full_routing(&plain);
    let target_before = full_routing(&target);

    let mut daemon = Daemon::start(&labels, "routes", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&target, 8080)),
        "never steered"
    );
    assert_ne!(
        full_routing(&target),
        target_before,
        "nothing was programmed"
    );
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
        full_routing(&target),
        target_before,
        "netwarp entries remain in the target"
    );
    assert!(!reaches(&target, 8080), "still steered after cleanup");
    assert_eq!(
        full_routing(&plain),
        plain_before,
        "cleanup modified an unlabelled container"
    );
    drop(warp);
}
