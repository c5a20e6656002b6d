//! The table of faults: how many of each run, how one fault is run and
//! judged, and the scenario every fault runs in turn.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    CONVERGE, LeakSink, RESYNC_SECS,
    dockerd::{EngineGuard, restart_dockerd},
    pins::read_policies,
    report::{FaultResult, ScenarioReport, save_text},
    scenario::{Expect, Scenario, start_warp_at},
};
use crate::command::{output, run};

/// How many times each fault runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Counts {
    pub daemon_kill: u32,
    pub dockerd_restart: u32,
    pub warp_flap: u32,
    pub target_restart: u32,
    pub warp_disconnect: u32,
    pub veth_delete: u32,
    pub pin_delete: u32,
    /// The WireGuard warp's faults (see [`super::vpn`]), each.
    pub vpn_tunnel_faults: u32,
    /// The failover group's faults (see [`super::failover`]), each.
    pub failover: u32,
}

impl Counts {
    /// `cargo xtask test`: a few of each (dockerd restarts are covered by
    /// docker_restart_e2e there).
    pub const SHORT: Self = Self {
        daemon_kill: 2,
        dockerd_restart: 0,
        warp_flap: 2,
        target_restart: 2,
        warp_disconnect: 1,
        veth_delete: 1,
        pin_delete: 1,
        vpn_tunnel_faults: 1,
        failover: 2,
    };
    /// `cargo xtask chaos`.
    pub const FULL: Self = Self {
        daemon_kill: 20,
        dockerd_restart: 5,
        warp_flap: 100,
        target_restart: 100,
        warp_disconnect: 10,
        veth_delete: 5,
        pin_delete: 5,
        vpn_tunnel_faults: 5,
        failover: 20,
    };

    /// FULL when `NETWARP_CHAOS=full`, else SHORT; without dockerd
    /// restarts when `NETWARP_CHAOS_DOCKERD=0` (a machine others share).
    pub fn from_env() -> Self {
        let mut counts = match std::env::var("NETWARP_CHAOS").as_deref() {
            Ok("full") => Self::FULL,
            _ => Self::SHORT,
        };
        if std::env::var("NETWARP_CHAOS_DOCKERD").as_deref() == Ok("0") {
            counts.dockerd_restart = 0;
        }
        counts
    }
}

/// A world faults are injected into: where its leaks are counted, how it
/// waits for the state a fault should end in, and how it is brought back
/// after a failed iteration.
pub trait FaultWorld {
    /// The state a fault ends in.
    type Expect: Copy;
    fn mode(&self) -> &str;
    fn sink(&self) -> &LeakSink;
    /// Waits (bounded) until the world is in `expect`.
    fn settle(&self, expect: Self::Expect) -> anyhow::Result<()>;
    /// After a failed iteration: everything running and served again.
    fn recover(&mut self) -> anyhow::Result<()>;
}

impl FaultWorld for Scenario {
    type Expect = Expect;
    fn mode(&self) -> &str {
        &self.mode
    }
    fn sink(&self) -> &LeakSink {
        &self.sink
    }
    fn settle(&self, expect: Expect) -> anyhow::Result<()> {
        self.converge(expect, CONVERGE)
    }
    fn recover(&mut self) -> anyhow::Result<()> {
        recover(self)
    }
}

/// Runs `fault` `count` times; each time `fault` injects, then returns
/// the states to expect, and the harness waits for the last one.
pub fn run_fault<W: FaultWorld>(
    world: &mut W,
    name: &str,
    count: u32,
    leak_window: bool,
    mut fault: impl FnMut(&mut W, u32, &mut Vec<String>) -> anyhow::Result<Vec<W::Expect>>,
) -> FaultResult {
    let started = Instant::now();
    let mode = world.mode().to_owned();
    let mut result = FaultResult {
        fault: name.to_owned(),
        leak_window,
        ..FaultResult::default()
    };
    for i in 0..count {
        let before = world.sink().packets();
        result.injected += 1;
        let mut notes = Vec::new();
        let outcome = fault(world, i, &mut notes).and_then(|expects| {
            // The fault checks intermediate expectations itself; here,
            // the state it ends in.
            match expects.last() {
                Some(expect) => world.settle(*expect),
                None => Ok(()),
            }
        });
        let leaked = world.sink().packets().saturating_sub(before);
        result.leaked_packets += leaked;
        for note in notes {
            eprintln!("chaos {mode}/{name} #{i}: note: {note}");
            if result.notes.len() < 3 && !result.notes.contains(&note) {
                result.notes.push(note);
            }
        }
        match outcome {
            Ok(()) => result.survived += 1,
            Err(e) => {
                result.lost_state += 1;
                if result.failures.len() < 3 {
                    result.failures.push(format!("#{i}: {e:#}"));
                }
                eprintln!("chaos {mode}/{name} #{i}: {e:#}");
                // Bring the world back so later iterations are meaningful.
                if let Err(e) = world.recover() {
                    eprintln!("chaos {mode}/{name} #{i}: recovery failed: {e:#}");
                }
            }
        }
        if leaked > 0 {
            eprintln!("chaos {mode}/{name} #{i}: {leaked} packets reached the leak sink");
        }
    }
    result.total_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "chaos {mode}/{name}: {}/{} survived, {} leaked, {:.1} s",
        result.survived, result.injected, result.leaked_packets, result.total_secs
    );
    result
}

/// After a failed iteration: warp and target running, daemon running.
fn recover(scenario: &mut Scenario) -> anyhow::Result<()> {
    if scenario.warp.is_none() {
        scenario.warp = Some(start_warp_at(
            &scenario.warp_name,
            &scenario.network,
            &scenario.remote,
            scenario.restart_args(),
        )?);
    }
    let _ = output("docker", &["start", &scenario.warp_name]);
    let _ = output(
        "docker",
        &[
            "network",
            "connect",
            scenario.network.name(),
            &scenario.warp_name,
        ],
    );
    let _ = output("docker", &["restart", "-t", "0", scenario.target.name()]);
    scenario.converge(Expect::Steered, CONVERGE)
}

/// Every fault, in both dataplanes' shared form. Returns the report.
pub fn run_all(mode: &str, counts: Counts) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let _engine = (counts.dockerd_restart > 0).then_some(EngineGuard);
    let mut s = Scenario::start(mode, counts.dockerd_restart > 0)?;
    let mut faults = Vec::new();

    faults.push(run_fault(
        &mut s,
        "daemon SIGKILL + restart",
        counts.daemon_kill,
        false,
        |s, _, _| {
            s.daemon.restart(libc::SIGKILL)?;
            // Steering holds while it is down and after it adopts the state.
            s.check(Expect::Steered)?;
            Ok(vec![Expect::Steered])
        },
    ));

    // Warp flapping, alternately: stop and start, and recreation with a
    // new IP while another container takes the old one. The latter opens
    // a window in the routes dataplane: until netwarp reacts, the target's
    // route still names the old IP, now another container's, which
    // forwards (Docker containers inherit the host's ip_forward).
    let flaps = counts.warp_flap;
    faults.push(run_fault(
        &mut s,
        "warp flap: stop/start",
        flaps.div_ceil(2),
        false,
        |s, _, _| {
            run("docker", &["stop", "-t", "0", &s.warp_name])?;
            s.converge(Expect::Blocked, CONVERGE)?;
            run("docker", &["start", &s.warp_name])?;
            Ok(vec![Expect::Steered])
        },
    ));
    faults.push(run_fault(
        &mut s,
        "warp flap: recreated with a new IP, old IP reused",
        flaps / 2,
        mode == "routes",
        |s, _, notes| {
            let (old, new) = s.recreate_warp()?;
            if old == new {
                notes.push(format!("the recreated warp kept its address {old}"));
            }
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "target restart",
        counts.target_restart,
        true,
        |s, _, _| {
            run("docker", &["restart", "-t", "0", s.target.name()])?;
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "warp network disconnect/connect",
        counts.warp_disconnect,
        false,
        |s, _, notes| {
            run(
                "docker",
                &["network", "disconnect", s.network.name(), &s.warp_name],
            )?;
            if s.mode == "routes" {
                s.converge(Expect::Blocked, CONVERGE)?;
            } else {
                // The prohibit routes in the target's namespace block at once;
                // the BPF policy is checked separately and reported.
                s.converge_netns(Expect::Blocked, CONVERGE)?;
                std::thread::sleep(Duration::from_secs(RESYNC_SECS + 1));
                if let Err(e) = s.check(Expect::Blocked) {
                    notes.push(format!(
                        "while the warp was disconnected the netns blocked, but the BPF policy \
                     was not rewritten: {e:#}"
                    ));
                }
            }
            run(
                "docker",
                &["network", "connect", s.network.name(), &s.warp_name],
            )?;
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "target host veth deleted",
        counts.veth_delete,
        true,
        |s, _, notes| {
            let (ifindex, veth) = s.target.host_veth()?;
            run("ip", &["link", "del", &veth])?;
            // Two resyncs later, nothing may remain for the dead interface.
            std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
            if s.mode != "routes" {
                let stale: Vec<u32> = read_policies(s.daemon.pin_dir())?
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| *k == ifindex)
                    .collect();
                let pins: Vec<String> = std::fs::read_dir(s.daemon.pin_dir().join("links"))?
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .filter(|n| n.starts_with(&format!("{ifindex}-")))
                    .collect();
                if !stale.is_empty() || !pins.is_empty() {
                    notes.push(format!(
                        "after its veth {veth} (ifindex {ifindex}) was deleted the daemon kept \
                     its policy ({stale:?}) and link pins ({pins:?}) until the target got a \
                     new veth"
                    ));
                }
            }
            // Docker still thinks the target is attached; a restart gives it
            // a new veth, which must be programmed.
            run("docker", &["restart", "-t", "0", s.target.name()])?;
            Ok(vec![Expect::Steered])
        },
    ));

    if mode != "routes" {
        faults.push(run_fault(
            &mut s,
            "link pin deleted by hand",
            counts.pin_delete,
            true,
            |s, _, _| {
                let (ifindex, _) = s.target.host_veth()?;
                let pin = s
                    .daemon
                    .pin_dir()
                    .join("links")
                    .join(format!("{ifindex}-ingress"));
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing {}", pin.display()))?;
                // No Docker event: only the periodic resync can repair it.
                std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
                s.check(Expect::Steered)
                    .context("not repaired by the next resyncs")?;
                Ok(vec![Expect::Steered])
            },
        ));
    }

    if counts.dockerd_restart > 0 {
        faults.push(run_fault(
            &mut s,
            "dockerd restart",
            counts.dockerd_restart,
            true,
            |s, _, _| {
                restart_dockerd()?;
                // Restart policies bring warp and target back in new netns.
                s.daemon
                    .wait_for_log("Docker connection lost", Duration::from_secs(10))?;
                Ok(vec![Expect::Steered])
            },
        ));
    }

    if faults.iter().any(|f| f.lost_state > 0) {
        let log = s.daemon.log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("eBPF policy"))
            .collect();
        eprintln!(
            "--- the {mode} daemon's warnings, errors and policy writes (last 80) ---\n{}",
            notable[notable.len().saturating_sub(80)..].join("\n")
        );
        save_text(&format!("daemon-{mode}.log"), &log);
    }
    let (delivered, failed) = s.probes();
    let leaked = s.sink.packets().saturating_sub(s.leak_baseline);
    let bystander_unchanged = s.bystander_unchanged()?;
    let rss = s.daemon_peak_rss();
    Ok(ScenarioReport {
        mode: mode.to_owned(),
        faults,
        leaked_packets: leaked,
        leaked_before_first_reconcile: s.leaked_before_first_reconcile,
        probes_delivered: delivered,
        probes_failed: failed,
        delivered_fraction: delivered as f64 / (delivered + failed).max(1) as f64,
        bystander_unchanged,
        daemon_peak_rss_kib: rss,
        total_secs: started.elapsed().as_secs_f64(),
    })
}
