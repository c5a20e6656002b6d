//! dockerd restarts under a running netwarp. It restarts the engine, so it
//! is its own test binary: cargo runs binaries one at a time, and no other
//! test's containers exist while it runs.

use std::time::{Duration, Instant};

use netwarp_tests::{
    chaos::{docker_answers, restart_dockerd, start_dockerd},
    command::output,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    skip, skip_if,
    steering::{GLOBAL_RULES, reaches, start_warp},
};

/// Leaves an answering engine behind even when the test fails midway, so
/// the test binaries after this one still have Docker.
/// It also sweeps the test's containers once the engine is back: if the
/// test failed while dockerd was down, the container guards' removals
/// failed, and restart policies would bring the containers back. (The
/// network's own guard drops after this one, with the engine up.)
struct EngineGuard {
    /// Containers carrying this label (the test's targets).
    target_label: String,
    warp_name: String,
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if !docker_answers() && !start_dockerd() {
            eprintln!("could not bring dockerd back; later Docker tests will fail");
            return;
        }
        let filter = format!("label={}", self.target_label);
        let targets = output("docker", &["ps", "-aq", "--filter", &filter])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in targets.split_whitespace() {
            let _ = output("docker", &["rm", "--force", id]);
        }
        let _ = output("docker", &["rm", "--force", &self.warp_name]);
    }
}

fn reconnects_and_resyncs(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp_name = labels.warp_name("gw");
    // Declared before the containers, so it drops after them.
    let _engine = EngineGuard {
        target_label: labels.target.clone(),
        warp_name: warp_name.clone(),
    };
    // Restart policies bring both back when the engine returns.
    // A 1 s stop timeout: their init processes ignore SIGTERM, and dockerd
    // would otherwise wait 10 s for each before shutting down.
    let warp = start_warp(
        &warp_name,
        &network,
        &["--restart", "always", "--stop-timeout", "1"],
    );
    let target_label = labels.target_label(&warp_name);
    let target = Container::run(
        "nwt",
        &network,
        &[
            "--restart",
            "always",
            "--stop-timeout",
            "1",
            "--label",
            &target_label,
        ],
        &["sleep", "600"],
    )
    .expect("target");
    let daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&target, 8080)),
        "never steered"
    );

    let started = Instant::now();
    restart_dockerd().expect("dockerd restarted");
    println!("dockerd restarted in {:?}", started.elapsed());
    // The containers came back with the engine, in new namespaces, while
    // netwarp was disconnected; it must reconnect and program them again.
    daemon
        .wait_for_log("Docker connection lost", Duration::from_secs(10))
        .expect("the disconnect was logged");
    assert!(
        eventually(Duration::from_secs(30), || reaches(&target, 8080)),
        "the restarted target was not steered again"
    );
    // And a target started after the outage is steered too.
    let late = Container::run(
        "nwt",
        &network,
        &["--label", &target_label],
        &["sleep", "600"],
    )
    .expect("late target");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&late, 8080)),
        "a new target was not steered"
    );
    let log = daemon.log();
    assert!(
        log.matches("connected to Docker").count() >= 2,
        "no reconnect in the log:\n{log}"
    );
    drop(warp);
}

#[test]
fn netwarp_reconnects_and_resyncs_after_dockerd_restarts() {
    let test = "netwarp_reconnects_and_resyncs_after_dockerd_restarts";
    skip_if!(test, skip::missing_docker());
    for mode in ["routes", "ebpf"] {
        println!("--- {mode} ---");
        reconnects_and_resyncs(mode);
    }
}
