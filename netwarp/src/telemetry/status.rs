//! The document the daemon answers on its control socket and
//! `netwarp status` prints: what is programmed now. The same types
//! serialize in the daemon and deserialize in the CLI.

use std::{collections::HashMap, time::UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    DaemonInfo, Published, TargetView,
    counters::{Counters, PacketsBytes},
    short_id,
};
use crate::plan::TargetState;

/// Bumped when a field changes meaning or disappears; new fields may
/// appear without a bump.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub format_version: u32,
    pub netwarp_version: String,
    /// The active dataplane: `ebpf` or `routes`.
    pub mode: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub docker: DockerStatus,
    /// The bound metrics address, or null when disabled.
    pub metrics_listen: Option<String>,
    pub control_socket: String,
    pub reconcile: ReconcileStatus,
    /// SIGHUP reloads of the configuration file.
    #[serde(default)]
    pub config: ConfigStatus,
    pub warps: Vec<WarpStatus>,
    pub targets: Vec<TargetStatus>,
    /// routes: what netwarp holds in the host's namespace for its bridge
    /// guards, as last written; null in the eBPF dataplane and before the
    /// first write.
    #[serde(default)]
    pub host_guard: Option<HostGuardStatus>,
    /// eBPF: how full each map netwarp writes is; empty for routes.
    #[serde(default)]
    pub maps: Vec<MapStatus>,
}

/// netwarp's entries in the host's rule list and its guard tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGuardStatus {
    /// Policy rules: the kernel walks the host's list for every routed
    /// packet, so this stays a handful per guarded network.
    pub rules: usize,
    pub tables: usize,
    /// `prohibit` routes in the guard tables, one per guarded prefix and
    /// selector group.
    pub routes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    pub map: String,
    pub entries: usize,
    pub capacity: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DockerStatus {
    pub endpoint: String,
    pub connected: bool,
    pub reconnects: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileStatus {
    /// Passes completed; 0 before the first one.
    pub passes: u64,
    pub last_finished_unix_seconds: Option<f64>,
    pub last_duration_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// Reloads since start, rejected ones included.
    pub reloads: u64,
    pub last_reload: Option<ReloadStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub unix_seconds: Option<f64>,
    /// Live keys that changed: applied from the next pass on.
    pub applied: Vec<String>,
    /// Restart-only keys that changed: running values kept until a restart.
    pub needs_restart: Vec<String>,
    /// Why the file was rejected (the running configuration is kept).
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarpStatus {
    pub name: String,
    pub id: Option<String>,
    pub up: bool,
    /// up, starting, unhealthy, not-running, missing, not-a-warp, refused,
    /// probe-pending, probe-failing or probe-invalid.
    pub state: String,
    pub targets: usize,
    /// eBPF: what the warp forwarded of its targets' steered traffic
    /// without tunnel or NAT, dropped on its veths (non-zero: the VPN
    /// container has no kill switch of its own); null when not guarded.
    #[serde(default)]
    pub untunnelled_drops: Option<PacketsBytes>,
    /// Its probe, when it has a probe label and has been probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<WarpProbeStatus>,
}

/// A warp's probe in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarpProbeStatus {
    /// As its label names it, e.g. `tcp:198.51.100.7:443`.
    pub probe: String,
    /// up, down or pending (no answer yet).
    pub state: String,
    /// The last successful probe's round-trip time, in microseconds.
    pub rtt_us: Option<u64>,
    pub runs: u64,
    pub failures: u64,
    /// While down: how many of the last probes failed, and the last error.
    pub failed: Option<usize>,
    pub of: Option<usize>,
    pub last_error: Option<String>,
}

impl WarpProbeStatus {
    fn of(report: &crate::warp_probe::ProbeReport) -> Self {
        use crate::warp_probe::ProbeVerdict;
        let (state, failed, of, last_error) = match &report.verdict {
            ProbeVerdict::Up => ("up", None, None, None),
            ProbeVerdict::Unknown => ("pending", None, None, None),
            ProbeVerdict::Down {
                failed,
                of,
                last_error,
            } => ("down", Some(*failed), Some(*of), Some(last_error.clone())),
        };
        Self {
            probe: report.spec.to_string(),
            state: state.to_owned(),
            rtt_us: (report.last_rtt).map(|rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
            runs: report.runs,
            failures: report.failures,
            failed,
            of,
            last_error,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    /// Short (12 character) id.
    pub id: String,
    /// The warp carrying it: of a failover group, the active member; of
    /// a spread group, the first of `spread`.
    pub warp: String,
    /// A group's members in label order; empty for one warp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warp_group: Vec<String>,
    /// A group's mode (failover or spread); absent for one warp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_mode: Option<String>,
    /// A spread group's members carrying its flows now, in label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<String>,
    /// Its own networks' subnets that its `via` rules leave alone
    /// (`exclude_own_networks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// steered, blocked, bypassed or refused (netwarp does not touch its
    /// namespace: `--network host`, `none`, or another container's), or
    /// failed: its last programming failed (see `error`, `held_closed`).
    pub state: String,
    /// The state its plan asks for, which `state` shows unless failed.
    #[serde(default)]
    pub planned_state: Option<String>,
    /// Why it is blocked, bypassed or refused, and for a target in another
    /// target's namespace how that one serves it; null while steered.
    pub reason: Option<String>,
    /// While blocked or bypassed, the kind of reason: capacity,
    /// too_many_prefixes, configuration or warp.
    #[serde(default)]
    pub reason_kind: Option<String>,
    /// The target whose namespace this one runs in (`--network
    /// container:X`, same warp and rules), which is the one programmed.
    #[serde(default)]
    pub shares_namespace_of: Option<String>,
    pub network: Option<String>,
    pub next_hop_v4: Option<String>,
    pub next_hop_v6: Option<String>,
    pub rules: Vec<RuleStatus>,
    pub caps: Caps,
    /// While failed: the error of its last programming.
    pub error: Option<String>,
    /// eBPF: why routes in its namespace steer it instead of the eBPF
    /// policy (its veth's peer is not in the host namespace: an overlay
    /// network); null when the eBPF policy carries it.
    #[serde(default)]
    pub routed: Option<String>,
    /// While failed: the failure's kind (the `reason` label of
    /// `netwarp_programming_failures_total`).
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// While failed: whether the bridge guards in place hold its steered
    /// and blocked traffic closed (true), or that cannot be told (false).
    #[serde(default)]
    pub held_closed: Option<bool>,
    /// eBPF: the host-side veth holding the policy and the warp's veth.
    pub host_ifindex: Option<u32>,
    pub host_interface: Option<String>,
    pub warp_ifindex: Option<u32>,
    pub counters: Option<Counters>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// `203.0.113.0/24`, `198.51.100.0/24 tcp:443`.
    pub rule: String,
    /// `via 172.18.0.2` or `block`.
    pub action: String,
}

/// Bandwidth caps as planned; null fields are "no cap". Egress is what the
/// container sends, ingress what it receives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub egress_bits_per_second: Option<u64>,
    pub ingress_bits_per_second: Option<u64>,
    /// The egress cap's burst, else the ingress cap's (`netwarp.burst`
    /// sets both; without it each defaults from its own rate).
    pub burst_bytes: Option<u64>,
    pub egress_burst_bytes: Option<u64>,
    pub ingress_burst_bytes: Option<u64>,
}

/// A target's planned bandwidth caps as the status shows them.
pub fn caps(planned: &crate::model::Caps) -> Caps {
    let egress = planned.egress;
    let ingress = planned.ingress;
    Caps {
        egress_bits_per_second: egress.map(|c| c.rate.bits_per_second()),
        ingress_bits_per_second: ingress.map(|c| c.rate.bits_per_second()),
        burst_bytes: egress.or(ingress).map(|c| c.burst_bytes),
        egress_burst_bytes: egress.map(|c| c.burst_bytes),
        ingress_burst_bytes: ingress.map(|c| c.burst_bytes),
    }
}

/// The status document for `published`, with this request's counters.
pub fn build(
    info: &DaemonInfo,
    metrics: &super::Metrics,
    published: &Published,
    counters: &HashMap<String, Counters>,
    warp_leaks: &HashMap<String, PacketsBytes>,
) -> StatusDoc {
    StatusDoc {
        format_version: FORMAT_VERSION,
        netwarp_version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: info.mode.to_string(),
        pid: std::process::id(),
        uptime_seconds: info.started.elapsed().as_secs_f64(),
        docker: DockerStatus {
            endpoint: info.docker_endpoint.clone(),
            connected: metrics.docker_connected.get() == 1,
            reconnects: metrics.docker_reconnects.get(),
        },
        metrics_listen: info.metrics_listen.map(|a| a.to_string()),
        control_socket: info.control_socket.display().to_string(),
        reconcile: ReconcileStatus {
            passes: published.pass,
            last_finished_unix_seconds: published.finished_at.and_then(unix_seconds),
            last_duration_seconds: published.duration.map(|d| d.as_secs_f64()),
        },
        config: ConfigStatus {
            reloads: published.reloads,
            last_reload: published.last_reload.as_ref().map(|r| ReloadStatus {
                unix_seconds: unix_seconds(r.at),
                applied: r.applied.clone(),
                needs_restart: r.needs_restart.clone(),
                error: r.error.clone(),
            }),
        },
        warps: published
            .warps
            .iter()
            .map(|w| WarpStatus {
                name: w.name.clone(),
                id: w.id.clone(),
                up: w.state == super::WarpState::Up,
                state: w.state.as_str().to_owned(),
                targets: w.targets,
                untunnelled_drops: warp_leaks.get(&w.name).copied(),
                probe: w.probe.as_ref().map(WarpProbeStatus::of),
            })
            .collect(),
        targets: published
            .targets
            .iter()
            .map(|t| target_status(t, counters.get(&t.plan.id).copied()))
            .collect(),
        host_guard: published.host_guard.map(|held| HostGuardStatus {
            rules: held.rules,
            tables: held.tables,
            routes: held.routes,
        }),
        maps: (published.maps.iter())
            .map(|m| MapStatus {
                map: m.map.to_owned(),
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect(),
    }
}

/// The state a target is published in: its plan's, unless its last
/// programming failed.
pub fn state_name(view: &TargetView) -> &'static str {
    match view.failure {
        Some(_) => "failed",
        None => view.plan.state.name(),
    }
}

fn target_status(view: &TargetView, counters: Option<Counters>) -> TargetStatus {
    let plan = &view.plan;
    let (reason, network, v4, v6) = match &plan.state {
        TargetState::Steered {
            network,
            via_v4,
            via_v6,
        } => (
            None,
            Some(network.clone()),
            via_v4.map(|a| a.to_string()),
            via_v6.map(|a| a.to_string()),
        ),
        TargetState::Blocked(reason) => (Some(reason.to_string()), None, None, None),
        TargetState::Bypassed(reason) => (Some(reason.to_string()), None, None, None),
        TargetState::Refused(reason) => (Some(reason.to_string()), None, None, None),
        TargetState::Filtered => (None, None, None, None),
    };
    let state = state_name(view);
    // A target in another target's namespace: how that one serves it.
    let reason = match (plan.sharing_note(), reason) {
        (Some(note), Some(reason)) => Some(format!("{note}: {reason}")),
        (note, reason) => note.or(reason),
    };
    TargetStatus {
        name: plan.name.clone(),
        id: short_id(&plan.id).to_owned(),
        warp: plan.warp.clone(),
        warp_group: plan.warp_group.clone(),
        group_mode: (!plan.warp_group.is_empty()).then(|| plan.group_mode.as_str().to_owned()),
        spread: plan.spread.iter().map(|m| m.name.clone()).collect(),
        state: state.to_owned(),
        planned_state: Some(plan.state.name().to_owned()),
        reason,
        reason_kind: match &plan.state {
            TargetState::Blocked(r) | TargetState::Bypassed(r) => Some(r.kind().to_owned()),
            _ => None,
        },
        shares_namespace_of: plan.shares_namespace_of.clone(),
        excluded: plan.excluded.iter().map(ToString::to_string).collect(),
        network,
        next_hop_v4: v4,
        next_hop_v6: v6,
        rules: plan
            .entries
            .iter()
            .map(|e| RuleStatus {
                rule: e.rule.to_string(),
                action: e.action.to_string(),
            })
            .collect(),
        caps: caps(&view.planned_caps()),
        error: view.failure.as_ref().map(|f| f.error.clone()),
        routed: view.routed.clone(),
        failure_reason: view.failure.as_ref().map(|f| f.reason.as_str().to_owned()),
        held_closed: view.failure.as_ref().map(|f| f.held_closed),
        host_ifindex: view.host_ifindex,
        host_interface: view
            .host_ifindex
            .and_then(crate::dataplane::ebpf::interface_name),
        warp_ifindex: view.warp_ifindex,
        counters,
    }
}

fn unix_seconds(at: std::time::SystemTime) -> Option<f64> {
    at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Cap, parse_rate, parse_rules},
        plan::{Action, BlockReason, Entry, TargetPlan},
    };

    #[test]
    fn a_target_becomes_its_status() {
        let rules = parse_rules("203.0.113.0/24,tcp:443").unwrap();
        let plan = TargetPlan {
            warp_group: Vec::new(),
            group_mode: crate::plan::GroupMode::Failover,
            spread: Vec::new(),
            id: "0123456789abcdef".into(),
            name: "app".into(),
            pid: Some(1),
            warp: "warp-a".into(),
            state: TargetState::Steered {
                network: "front".into(),
                via_v4: Some("172.18.0.2".parse().unwrap()),
                via_v6: None,
            },
            entries: Entry::all(&rules, Action::Via("172.18.0.2".parse().unwrap())),
            mac_on_network: None,
            warp_pid: None,
            warp_mac: None,
            warp_macs: Vec::new(),
            addresses: Vec::new(),
            excluded: Vec::new(),
            shares_namespace_of: None,
        };
        let view = TargetView {
            plan: plan.clone().into(),
            host_ifindex: None,
            warp_ifindex: None,
            routed: None,
            failure: None,
            caps: None,
        };
        let status = target_status(&view, None);
        assert_eq!(status.id, "0123456789ab");
        assert_eq!(status.state, "steered");
        assert_eq!((status.error, status.held_closed), (None, None));
        assert_eq!((status.group_mode, status.spread.len()), (None, 0));
        // A spread target: its mode and the members carrying its flows.
        let member = |name: &str| crate::plan::SpreadMember {
            name: name.into(),
            pid: Some(2),
            mac: None,
            macs: Vec::new(),
            via_v4: None,
            via_v6: None,
        };
        let spread = TargetView {
            plan: TargetPlan {
                warp_group: vec!["warp-a".into(), "warp-b".into(), "warp-c".into()],
                group_mode: crate::plan::GroupMode::Spread,
                spread: vec![member("warp-a"), member("warp-c")],
                ..plan.clone()
            }
            .into(),
            ..view.clone()
        };
        let status = target_status(&spread, None);
        assert_eq!(status.group_mode.as_deref(), Some("spread"));
        assert_eq!(status.spread, ["warp-a", "warp-c"]);
        let failed = TargetView {
            failure: Some(Box::new(super::super::TargetFailure {
                error: "boom".into(),
                reason: crate::dataplane::sync::FailureReason::MapFull,
                held_closed: false,
            })),
            ..view.clone()
        };
        let status = target_status(&failed, None);
        assert_eq!(status.state, "failed", "a failed target is not steered");
        assert_eq!(status.planned_state.as_deref(), Some("steered"));
        assert_eq!(status.error.as_deref(), Some("boom"));
        assert_eq!(status.failure_reason.as_deref(), Some("map_full"));
        assert_eq!(status.held_closed, Some(false));
        let status = target_status(&view, None);
        assert_eq!(status.next_hop_v4.as_deref(), Some("172.18.0.2"));
        assert_eq!(
            status.rules,
            vec![RuleStatus {
                rule: "203.0.113.0/24 tcp:443".into(),
                action: "via 172.18.0.2".into()
            }]
        );
        assert_eq!(status.caps, Caps::default());
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["caps"],
            serde_json::json!({"egress_bits_per_second": null, "ingress_bits_per_second": null,
                "burst_bytes": null, "egress_burst_bytes": null, "ingress_burst_bytes": null})
        );
        let capped = TargetView {
            caps: Some(Box::new(crate::model::Caps {
                egress: Some(Cap::new(parse_rate("10mbit").unwrap(), Some(32_000))),
                ingress: None,
            })),
            ..view.clone()
        };
        assert_eq!(
            target_status(&capped, None).caps,
            Caps {
                egress_bits_per_second: Some(10_000_000),
                ingress_bits_per_second: None,
                burst_bytes: Some(32_000),
                egress_burst_bytes: Some(32_000),
                ingress_burst_bytes: None,
            }
        );

        let blocked = TargetView {
            plan: TargetPlan {
                state: TargetState::Blocked(BlockReason::WarpMissing {
                    warp: "warp-a".into(),
                }),
                entries: Entry::all(&rules, Action::Block),
                ..plan
            }
            .into(),
            ..view
        };
        let status = target_status(&blocked, None);
        assert_eq!(status.state, "blocked");
        assert_eq!(
            status.reason.as_deref(),
            Some("warp container warp-a does not exist")
        );
        assert_eq!(status.rules[0].action, "block");
        assert_eq!(status.next_hop_v4, None);
    }
}
