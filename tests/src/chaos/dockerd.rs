//! Restarting dockerd (the full chaos run's most disruptive fault) and
//! leaving an answering engine behind whatever happens.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{command::output, daemon::eventually};

/// Whether docker answers.
pub fn docker_answers() -> bool {
    output("docker", &["version", "--format", "{{.Server.Version}}"])
        .is_ok_and(|o| o.status.success())
}

fn dockerd_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Starts a detached dockerd, as `cargo xtask setup` does, once the old
/// one has exited; returns whether the engine answers.
pub fn start_dockerd() -> bool {
    use std::os::unix::process::CommandExt as _;
    if !eventually(Duration::from_secs(90), || dockerd_pid().is_none()) {
        return false;
    }
    let log_path = std::env::temp_dir().join("netwarp-chaos-dockerd.log");
    let Ok(log) = std::fs::File::create(&log_path) else {
        return false;
    };
    let mut dockerd = std::process::Command::new("dockerd");
    dockerd.stdin(std::process::Stdio::null());
    if let Ok(stdout) = log.try_clone() {
        dockerd.stdout(stdout).stderr(log);
    }
    // SAFETY: setsid is async-signal-safe; it detaches dockerd from the test.
    unsafe {
        dockerd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    dockerd.spawn().is_ok() && eventually(Duration::from_secs(60), docker_answers)
}

/// SIGTERM to dockerd, then a fresh one.
pub fn restart_dockerd() -> anyhow::Result<()> {
    let pid = dockerd_pid().context("no running dockerd with a pid file")?;
    // SAFETY: signalling dockerd by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !start_dockerd() {
        bail!("dockerd did not stop and come back");
    }
    Ok(())
}

/// Leaves an answering engine behind even when a dockerd fault fails.
pub struct EngineGuard;

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if !docker_answers() && !start_dockerd() {
            eprintln!("could not bring dockerd back; later Docker tests will fail");
        }
    }
}
