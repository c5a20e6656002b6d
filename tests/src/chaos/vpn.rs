//! The chaos scenario with a real WireGuard warp (see [`crate::vpn`]): a
//! warp that forwards what it receives into its tunnel, and out by its
//! default route when the tunnel is gone. A target probes the destination
//! behind the tunnel continuously (bounded), the leak sink counts every
//! packet the host routes toward the steered prefix, and the tunnel is
//! killed, deleted and restarted under it. After each fault: nothing
//! leaked, the target's state (from `netwarp status --json`) is the
//! planned one, and once the tunnel is back it is served through it.
//!
//! Network safety: as in [`crate::vpn`] ([`RoutedVpn`]).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    CONVERGE, Counts, FaultWorld, LeakSink, RESYNC_SECS, ScenarioReport, run_fault,
    scenario::{probe_counts, probe_script, until_ok},
};
use crate::{
    daemon::{Daemon, TestLabels, eventually},
    docker::Container,
    isolation::unlabelled_state,
    observe::{status_json, status_target},
    vpn::{RoutedVpn, answered, delete_tunnel, held_closed, restart},
};

/// How long the target may take to be served again once the tunnel is
/// back: wireguard-go re-handshakes with a restarted server only after
/// its data has gone unanswered for 15 s.
pub const RECOVER: Duration = Duration::from_secs(45);

/// How long a held state is watched for a leak or a change.
const HOLD: Duration = Duration::from_secs(3);

/// What netwarp should show, and the world do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpnExpect {
    /// Target steered, warp up, and a ping through the tunnel answered.
    Served,
    /// Target blocked, its warp in this Docker health state.
    Blocked(&'static str),
    /// Target steered, warp up (it has no healthcheck, so netwarp cannot
    /// know that its tunnel is gone), whether answered or not.
    Steered,
}

/// A routed network with a WireGuard warp, its server, a probing target,
/// an unlabelled bystander, the leak sink and a daemon.
pub struct VpnScenario {
    pub mode: String,
    // Field order is drop order: daemon, containers, then the server, the
    // sink and the network.
    pub daemon: Daemon,
    pub target: Container,
    pub bystander: Container,
    pub warp: Option<Container>,
    pub world: RoutedVpn,
    pub labels: TestLabels,
    healthcheck: bool,
    bystander_before: String,
}

impl VpnScenario {
    /// Server up, daemon running, the target held closed, then a
    /// healthchecked warp healthy and the target served.
    pub fn start(mode: &str) -> anyhow::Result<Self> {
        let labels = TestLabels::unique();
        let world = RoutedVpn::create("nwcv")?;
        let addresses = world.addresses;
        let bystander = Container::run("nwcu", &world.network, &[], &["sleep", "3600"])?;
        let bystander_before = unlabelled_state(&bystander)?;
        let daemon = Daemon::start_with_env(
            &labels,
            mode,
            &addresses.rules_toml(),
            &[(
                "NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS",
                &RESYNC_SECS.to_string(),
            )],
        )?;
        let target_label = labels.target_label(&labels.warp_name("vpn"));
        // It probes only once netwarp holds it closed (it waits for a file
        // the harness writes then): a network's first target runs before
        // netwarp guards its network, a window this scenario is not about.
        // Bounded: the wait, the script's count, and the scenario's lifetime.
        let script = format!(
            "i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do usleep 100000; i=$((i+1)); done; {}",
            probe_script(&addresses.destination(), 200_000)
        );
        let target = Container::run(
            "nwct",
            &world.network,
            &["--label", &target_label],
            &["sh", "-c", &script],
        )?;
        let mut scenario = Self {
            mode: mode.to_owned(),
            daemon,
            target,
            bystander,
            warp: None,
            world,
            labels,
            healthcheck: true,
            bystander_before,
        };
        scenario
            .settle(VpnExpect::Blocked("missing"))
            .context("the target held closed before its warp exists")?;
        if !eventually(CONVERGE, || {
            held_closed(&scenario.target, &addresses.prefix())
        }) {
            bail!("{mode}: the target's namespace was never held closed");
        }
        scenario.target.exec(&["touch", "/tmp/go"])?;
        scenario.start_warp(true)?;
        scenario
            .settle(VpnExpect::Served)
            .context("the first convergence")?;
        Ok(scenario)
    }

    pub fn warp_name(&self) -> String {
        self.labels.warp_name("vpn")
    }

    /// (Re)creates the warp, with or without a healthcheck.
    pub fn start_warp(&mut self, healthcheck: bool) -> anyhow::Result<()> {
        self.warp = None; // removes the old one first
        self.healthcheck = healthcheck;
        self.warp = Some(self.world.start_warp(&self.warp_name(), healthcheck)?);
        Ok(())
    }

    pub fn warp(&self) -> anyhow::Result<&Container> {
        self.warp.as_ref().context("no warp")
    }

    /// The daemon's status document: the target's and the warp's entries.
    fn status(&self) -> anyhow::Result<(Value, Value)> {
        let status = status_json(&self.daemon)?;
        let target = status_target(&status, self.target.name())
            .with_context(|| format!("no target {} in the status", self.target.name()))?
            .clone();
        let warp = status["warps"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == self.warp_name().as_str()))
            .cloned()
            .unwrap_or(Value::Null);
        Ok((target, warp))
    }

    /// The warp's `untunnelled_drops` packets in the status (None: not
    /// guarded, as in routes mode).
    pub fn untunnelled_drops(&self) -> anyhow::Result<Option<u64>> {
        let (_, warp) = self.status()?;
        Ok(warp["untunnelled_drops"]["packets"].as_u64())
    }

    /// Whether the world is in `expect` now.
    pub fn check(&self, expect: VpnExpect) -> anyhow::Result<()> {
        let (target, warp) = self.status()?;
        let (want_target, want_warp) = match expect {
            VpnExpect::Served | VpnExpect::Steered => ("steered", "up"),
            VpnExpect::Blocked(health) => ("blocked", health),
        };
        // A warp that does not exist has no entry; its state is `missing`.
        let warp_state = warp["state"].as_str().unwrap_or("missing");
        if target["state"] != want_target || warp_state != want_warp {
            bail!(
                "the target is {} ({}), its warp {warp_state}; expected {want_target}, warp \
                 {want_warp}",
                target["state"],
                target["reason"]
            );
        }
        if expect == VpnExpect::Served
            && !answered(&self.target, &self.world.addresses.destination())
        {
            bail!("steered, but not answered through the tunnel");
        }
        Ok(())
    }

    /// Waits until the world is in `expect` (bounded).
    pub fn converge(&self, expect: VpnExpect, timeout: Duration) -> anyhow::Result<()> {
        until_ok(timeout, || self.check(expect))
            .with_context(|| format!("{} did not converge to {expect:?}", self.mode))
    }

    /// Checks that `expect` holds, and keeps holding for [`HOLD`].
    pub fn holds(&self, expect: VpnExpect) -> anyhow::Result<()> {
        self.converge(expect, CONVERGE)?;
        let until = Instant::now() + HOLD;
        while Instant::now() < until {
            self.check(expect)
                .with_context(|| format!("{expect:?} did not hold"))?;
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Whether the bystander is byte-identical to before the scenario.
    pub fn bystander_unchanged(&self) -> anyhow::Result<bool> {
        Ok(unlabelled_state(&self.bystander)? == self.bystander_before)
    }
}

impl FaultWorld for VpnScenario {
    type Expect = VpnExpect;
    fn mode(&self) -> &str {
        &self.mode
    }
    fn sink(&self) -> &LeakSink {
        &self.world.sink
    }
    fn settle(&self, expect: VpnExpect) -> anyhow::Result<()> {
        self.converge(expect, RECOVER)?;
        // Served must also hold a moment: a fault that breaks it again at
        // once shows here, and the target's prober (1 s pings, mostly
        // failing during faults) gets pings through, which the report's
        // check that anything was ever delivered counts.
        match expect {
            VpnExpect::Served => self.holds(expect),
            _ => Ok(()),
        }
    }
    fn recover(&mut self) -> anyhow::Result<()> {
        self.world.server.up()?;
        let healthcheck = self.healthcheck;
        self.start_warp(healthcheck)?;
        self.settle(VpnExpect::Served)
    }
}

/// Every WireGuard fault in one dataplane. Returns the report, shaped as
/// the other scenarios' so that RELIABILITY.md renders it alike.
pub fn run_all(mode: &str, counts: Counts) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let mut s = VpnScenario::start(mode)?;
    let count = counts.vpn_tunnel_faults;
    let mut faults = Vec::new();

    faults.push(run_fault(
        &mut s,
        "WireGuard server killed, restored",
        count,
        false,
        |s, _, _| {
            s.world.server.down()?;
            s.holds(VpnExpect::Blocked("unhealthy"))?;
            s.world.server.up()?;
            Ok(vec![VpnExpect::Served])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "WireGuard tunnel interface deleted, warp restarted",
        count,
        false,
        |s, _, _| {
            delete_tunnel(s.warp()?)?;
            s.holds(VpnExpect::Blocked("unhealthy"))?;
            restart(s.warp()?)?;
            Ok(vec![VpnExpect::Served])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "WireGuard warp restarted while the server is down",
        count,
        false,
        |s, _, _| {
            s.world.server.down()?;
            s.converge(VpnExpect::Blocked("unhealthy"), CONVERGE)?;
            restart(s.warp()?)?;
            // Its tunnel cannot come up: `starting` for good, and blocked.
            s.holds(VpnExpect::Blocked("starting"))?;
            s.world.server.up()?;
            Ok(vec![VpnExpect::Served])
        },
    ));

    // Without a healthcheck netwarp cannot know the tunnel is gone: it
    // keeps steering, the warp forwards by its default route, and netwarp
    // must drop that (eBPF counts it per warp; routes has no counter).
    s.start_warp(false)?;
    s.settle(VpnExpect::Served)
        .context("the warp without a healthcheck")?;
    faults.push(run_fault(
        &mut s,
        "WireGuard tunnel interface deleted, warp without healthcheck",
        count,
        false,
        |s, _, notes| {
            let before = s.untunnelled_drops()?;
            delete_tunnel(s.warp()?)?;
            s.holds(VpnExpect::Steered)?;
            let after = s.untunnelled_drops()?;
            match (s.mode.as_str(), before, after) {
                ("routes", None, None) => {}
                ("routes", ..) => notes.push(format!(
                    "routes mode reported untunnelled drops {before:?} -> {after:?}"
                )),
                // A restarted warp has new veths, whose counts start at 0.
                (_, before, Some(after)) if after > before.unwrap_or(0) => {
                    notes.push(format!(
                        "netwarp dropped what the warp forwarded untunnelled: {} packets",
                        after - before.unwrap_or(0)
                    ));
                }
                _ => bail!(
                    "the warp forwarded untunnelled, but its untunnelled drops went \
                     {before:?} -> {after:?}"
                ),
            }
            restart(s.warp()?)?;
            Ok(vec![VpnExpect::Served])
        },
    ));

    let (delivered, failed) = probe_counts(&s.target);
    Ok(ScenarioReport {
        mode: mode.to_owned(),
        faults,
        leaked_packets: s.world.leaks(),
        leaked_before_first_reconcile: 0,
        probes_delivered: delivered,
        probes_failed: failed,
        delivered_fraction: delivered as f64 / (delivered + failed).max(1) as f64,
        bystander_unchanged: s.bystander_unchanged()?,
        daemon_peak_rss_kib: s.daemon.pid().map_or(0, |pid| crate::scale::rss_kib(pid).1),
        total_secs: started.elapsed().as_secs_f64(),
    })
}
