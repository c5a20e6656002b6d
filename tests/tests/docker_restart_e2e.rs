//! dockerd restarts under a running netwarp. It restarts the engine, so it
//! is its own test binary: cargo runs binaries one at a time, and no other
//! test's containers exist while it runs.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    skip, skip_if,
    steering::{GLOBAL_RULES, reaches, start_warp},
};

fn docker_answers() -> bool {
    output("docker", &["version", "--format", "{{.Server.Version}}"])
        .is_ok_and(|o| o.status.success())
}

/// Stops dockerd (SIGTERM, bounded wait) and starts a fresh one detached,
/// as `cargo xtask setup` does.
#[expect(
    clippy::zombie_processes,
    reason = "the new dockerd outlives the test by design"
)]
fn restart_dockerd() {
    let pid = std::fs::read_to_string("/var/run/docker.pid").expect("dockerd pid file");
    let pid: i32 = pid.trim().parse().expect("pid");
    // SAFETY: signalling dockerd by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped = eventually(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(stopped, "dockerd did not stop within 30 s");
    let log_path = std::env::temp_dir().join("netwarp-test-dockerd.log");
    let log = std::fs::File::create(&log_path).expect("dockerd log");
    let mut dockerd = Command::new("dockerd");
    dockerd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches dockerd from the test.
    unsafe {
        dockerd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    dockerd.spawn().expect("starting dockerd");
    assert!(
        eventually(Duration::from_secs(60), docker_answers),
        "dockerd did not come back; see {}",
        log_path.display()
    );
}

#[test]
fn netwarp_reconnects_and_resyncs_after_dockerd_restarts() {
    let test = "netwarp_reconnects_and_resyncs_after_dockerd_restarts";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp_name = labels.warp_name("gw");
    // Restart policies bring both back when the engine returns.
    let warp = start_warp(&warp_name, &network, &["--restart", "always"]);
    let target_label = labels.target_label(&warp_name);
    let target = Container::run(
        "nwt",
        &network,
        &["--restart", "always", "--label", &target_label],
        &["sleep", "600"],
    )
    .expect("target");
    let daemon = Daemon::start(&labels, "routes", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(Duration::from_secs(15), || reaches(&target, 8080)),
        "never steered"
    );

    let started = Instant::now();
    restart_dockerd();
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
