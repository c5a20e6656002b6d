//! The chaos scenario for failover groups: a target of a two-warp group
//! (`netwarp.target=A,B`) probes the steered destination continuously
//! (bounded), both warps own that destination, and the primary is killed,
//! flapped, silently broken (its probed port dropped in its namespace,
//! its process untouched) and taken down with the backup. After each
//! fault: nothing leaked, netwarp shows the member the plan implies, and a
//! ping is answered by that member (B answers with TTL 63, A with 64).
//!
//! Network safety: as in the main scenario (an `--internal` network, the
//! destination on the warps' loopback in a unique 198.18.N.0/24 whose host
//! route ends in the counting sink, bounded loops, drop guards).

use std::time::Instant;

use anyhow::{Context as _, bail};

use super::{
    CONVERGE, Counts, FaultWorld, LeakSink, RESYNC_SECS, ScenarioReport, SteeredPrefix, run_fault,
    scenario::{probe_counts, probe_script, until_ok},
};
use crate::{
    command::run,
    daemon::{Daemon, TestLabels},
    docker::{Container, DockerNetwork},
    isolation::unlabelled_state,
    observe::{status_json, status_target},
    steering::{DeadTunnel, run_warp},
};

/// Which member should carry the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverExpect {
    Primary,
    Backup,
    /// No member usable: blocked, and no ping answered.
    Blocked,
}

pub struct FailoverScenario {
    pub mode: String,
    // Field order is drop order: daemon, containers, sink, network.
    pub daemon: Daemon,
    pub target: Container,
    pub bystander: Container,
    pub primary: Container,
    pub backup: Container,
    pub sink: LeakSink,
    pub network: DockerNetwork,
    pub labels: TestLabels,
    pub remote: String,
    bystander_before: String,
}

impl FailoverScenario {
    pub fn start(mode: &str) -> anyhow::Result<Self> {
        let labels = TestLabels::unique();
        let network = DockerNetwork::create_internal_steerable("nwcf")?;
        let bridge = network.bridge()?;
        let (sink, SteeredPrefix { prefix, remote }) = LeakSink::for_unique_prefix(&bridge)?;
        let bystander = Container::run("nwcfu", &network, &[], &["sleep", "3600"])?;
        let bystander_before = unlabelled_state(&bystander)?;
        // The primary serves the port its probe checks, through lo.
        let probe = format!("netwarp.probe=tcp:{remote}:8080@lo");
        let primary = run_warp(
            &labels.warp_name("a"),
            &network,
            &format!(
                "ip addr add {remote}/32 dev lo; while true; do echo up | nc -l -p 8080; done"
            ),
            &["--label", &probe],
        )?;
        let backup = run_warp(
            &labels.warp_name("b"),
            &network,
            &format!("ip addr add {remote}/32 dev lo; exec sleep 3600"),
            &["--sysctl", "net.ipv4.ip_default_ttl=63"],
        )?;
        let daemon = Daemon::start_with_env(
            &labels,
            mode,
            &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
            &[
                (
                    "NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS",
                    &RESYNC_SECS.to_string(),
                ),
                ("NETWARP_FAILOVER_HOLD_DOWN_SECS", "1"),
                ("NETWARP_PROBES_INTERVAL_SECS", "1"),
                ("NETWARP_PROBES_TIMEOUT_MS", "300"),
                ("NETWARP_PROBES_FAILURES", "2"),
                ("NETWARP_PROBES_WINDOW", "3"),
            ],
        )?;
        let group = format!("{},{}", primary.name(), backup.name());
        let target = Container::run(
            "nwcft",
            &network,
            &["--label", &labels.target_label(&group)],
            &["sh", "-c", &probe_script(&remote, 200_000)],
        )?;
        let scenario = Self {
            mode: mode.to_owned(),
            daemon,
            target,
            bystander,
            primary,
            backup,
            sink,
            network,
            labels,
            remote,
            bystander_before,
        };
        scenario
            .settle(FailoverExpect::Primary)
            .context("the first convergence")?;
        Ok(scenario)
    }

    /// The TTL of one ping's reply, if answered.
    fn reply_ttl(&self) -> Option<u32> {
        let out = self
            .target
            .exec(&["ping", "-c", "1", "-W", "1", &self.remote])
            .ok()?;
        let ttl = out.split("ttl=").nth(1)?;
        ttl.split_whitespace().next()?.parse().ok()
    }

    /// Whether the world is in `expect` now.
    pub fn check(&self, expect: FailoverExpect) -> anyhow::Result<()> {
        let status = status_json(&self.daemon)?;
        let target = status_target(&status, self.target.name())
            .with_context(|| format!("no target {} in the status", self.target.name()))?;
        let (state, warp, ttl) = match expect {
            FailoverExpect::Primary => ("steered", Some(self.primary.name()), Some(64)),
            FailoverExpect::Backup => ("steered", Some(self.backup.name()), Some(63)),
            FailoverExpect::Blocked => ("blocked", None, None),
        };
        if target["state"] != state || warp.is_some_and(|w| target["warp"] != w) {
            bail!(
                "the target is {} through {} ({}); expected {expect:?}",
                target["state"],
                target["warp"],
                target["reason"]
            );
        }
        let answered = self.reply_ttl();
        if answered != ttl {
            bail!("a ping was answered with TTL {answered:?}; expected {ttl:?} ({expect:?})");
        }
        Ok(())
    }

    pub fn converge(&self, expect: FailoverExpect) -> anyhow::Result<()> {
        until_ok(CONVERGE, || self.check(expect))
            .with_context(|| format!("{} did not converge to {expect:?}", self.mode))
    }

    fn bystander_unchanged(&self) -> anyhow::Result<bool> {
        Ok(unlabelled_state(&self.bystander)? == self.bystander_before)
    }
}

impl FaultWorld for FailoverScenario {
    type Expect = FailoverExpect;
    fn mode(&self) -> &str {
        &self.mode
    }
    fn sink(&self) -> &LeakSink {
        &self.sink
    }
    fn settle(&self, expect: FailoverExpect) -> anyhow::Result<()> {
        self.converge(expect)
    }
    fn recover(&mut self) -> anyhow::Result<()> {
        for warp in [&self.primary, &self.backup] {
            run("docker", &["start", warp.name()])?;
        }
        self.settle(FailoverExpect::Primary)
    }
}

/// Every failover fault in one dataplane.
pub fn run_all(mode: &str, counts: Counts) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let mut s = FailoverScenario::start(mode)?;
    let leaked_before = s.sink.packets();
    let count = counts.failover;
    let mut faults = Vec::new();

    faults.push(run_fault(
        &mut s,
        "failover: primary killed, restarted",
        count,
        false,
        |s, _, _| {
            run("docker", &["kill", s.primary.name()])?;
            s.converge(FailoverExpect::Backup)?;
            run("docker", &["start", s.primary.name()])?;
            Ok(vec![FailoverExpect::Primary])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "failover: primary flapping (killed and started 3 times)",
        count,
        false,
        |s, _, _| {
            for _ in 0..3 {
                run("docker", &["kill", s.primary.name()])?;
                run("docker", &["start", s.primary.name()])?;
            }
            Ok(vec![FailoverExpect::Primary])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "failover: primary's tunnel dies silently (probe), revives",
        count,
        false,
        |s, _, _| {
            let dead = DeadTunnel::kill(&s.primary, 8080)?;
            s.converge(FailoverExpect::Backup)?;
            drop(dead);
            Ok(vec![FailoverExpect::Primary])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "failover: both members killed, restarted",
        count,
        false,
        |s, _, _| {
            run("docker", &["kill", s.primary.name(), s.backup.name()])?;
            s.converge(FailoverExpect::Blocked)?;
            run("docker", &["start", s.backup.name()])?;
            s.converge(FailoverExpect::Backup)?;
            run("docker", &["start", s.primary.name()])?;
            Ok(vec![FailoverExpect::Primary])
        },
    ));

    let (delivered, failed) = probe_counts(&s.target);
    Ok(ScenarioReport {
        mode: mode.to_owned(),
        faults,
        leaked_packets: s.sink.packets().saturating_sub(leaked_before),
        leaked_before_first_reconcile: leaked_before,
        probes_delivered: delivered,
        probes_failed: failed,
        delivered_fraction: delivered as f64 / (delivered + failed).max(1) as f64,
        bystander_unchanged: s.bystander_unchanged()?,
        daemon_peak_rss_kib: s.daemon.pid().map_or(0, |pid| crate::scale::rss_kib(pid).1),
        total_secs: started.elapsed().as_secs_f64(),
    })
}
