//! The Prometheus metrics, in the OpenMetrics text format.
//!
//! Two kinds:
//! - process metrics the daemon updates as things happen (Docker events,
//!   reconnects, reconcile duration, event-to-programmed latency), kept in
//!   one `prometheus-client` registry;
//! - per-container and per-warp series, encoded at scrape time by a
//!   [`ScrapeCollector`] from the latest published snapshot and the
//!   counters read for this scrape. A container that left the snapshot
//!   has no series any more; nothing has to be removed by hand.
//!
//! Labels are bounded: container name and short id, warp name, reason,
//! Docker event type and action; never anything per connection.

use std::{collections::HashMap, fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

use super::{
    FailureReason, Published, TargetView,
    counters::{Counters, PacketsBytes},
    short_id,
};
use crate::{config::DataplaneMode, plan::TargetState};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The process metrics, cheap to clone (every metric is an `Arc`).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Docker events received, by type and action.
    pub docker_events: Family<Labels, Counter>,
    pub docker_reconnects: Counter,
    pub docker_connected: Gauge,
    pub reconcile_duration: Histogram,
    pub event_latency: Histogram,
    pub target_failures: Counter,
    /// Targets of a failover group moved from one member to another.
    pub failovers: Counter,
    /// SIGHUP reloads, by result: `applied` or `rejected`.
    pub config_reloads: Family<Labels, Counter>,
    /// Restart-only keys that differ between the file and the running
    /// configuration, as of the last reload.
    pub config_restart_pending: Gauge,
    /// Programming failures, by what failed and a fixed reason.
    pub programming_failures: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(mode: DataplaneMode) -> Self {
        let mut registry = Registry::default();
        let docker_events = Family::<Labels, Counter>::default();
        let docker_reconnects = Counter::default();
        let docker_connected = Gauge::default();
        // 1 ms .. 16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        // 5 ms .. 80 s: Docker's event timestamp to the target's policy in place.
        let event_latency = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let target_failures = Counter::default();
        let failovers = Counter::default();
        let config_reloads = Family::<Labels, Counter>::default();
        let config_restart_pending = Gauge::default();
        let programming_failures = Family::<Labels, Counter>::default();
        registry.register(
            "netwarp_build",
            "netwarp's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
        );
        registry.register(
            "netwarp_dataplane",
            "The active dataplane (ebpf or routes)",
            Info::new(vec![("mode", mode.to_string())]),
        );
        registry.register(
            "netwarp_docker_events",
            "Docker events received, by type and action",
            docker_events.clone(),
        );
        registry.register(
            "netwarp_docker_reconnects",
            "Connections to Docker made after the first one (each follows a lost connection)",
            docker_reconnects.clone(),
        );
        registry.register(
            "netwarp_docker_connected",
            "1 while connected to Docker, else 0",
            docker_connected.clone(),
        );
        registry.register(
            "netwarp_reconcile_duration_seconds",
            "Duration of one reconcile pass (read Docker, plan, program every target)",
            reconcile_duration.clone(),
        );
        registry.register(
            "netwarp_event_to_programmed_seconds",
            "Latency from a Docker event's timestamp until its target is programmed",
            event_latency.clone(),
        );
        registry.register(
            "netwarp_target_program_failures",
            "Times programming a target failed (retried on the next pass)",
            target_failures.clone(),
        );
        registry.register(
            "netwarp_failovers",
            "Times a target of a failover group moved to another member (a failover, or the \
             move back once a recovered member's hold-down ended), or a spread group's \
             carrying members changed (one left, or joined after its hold-down)",
            failovers.clone(),
        );
        registry.register(
            "netwarp_config_reloads",
            "SIGHUP reloads of the configuration file, by result (applied or rejected)",
            config_reloads.clone(),
        );
        registry.register(
            "netwarp_config_restart_pending",
            "Restart-only configuration keys changed in the file but not applied (restart netwarp)",
            config_restart_pending.clone(),
        );
        registry.register(
            "netwarp_programming_failures",
            "Times programming failed (retried on the next pass), by object (target, guard, caps) \
             and reason (namespace, interface, netlink, map_full, map, attach, load, compile, conflict, tables)",
            programming_failures.clone(),
        );
        Self {
            registry: Arc::new(registry),
            docker_events,
            docker_reconnects,
            docker_connected,
            reconcile_duration,
            event_latency,
            target_failures,
            failovers,
            config_reloads,
            config_restart_pending,
            programming_failures,
        }
    }

    /// Counts one programming failure of a `target`, `guard` or `caps`.
    pub fn programming_failure(&self, object: &'static str, reason: FailureReason) {
        self.programming_failures
            .get_or_create(&vec![
                ("object", object.to_owned()),
                ("reason", reason.as_str().to_owned()),
            ])
            .inc();
    }

    /// Counts one Docker event. Actions such as `health_status: healthy`
    /// are cut at the colon, so label values stay a small fixed set.
    pub fn docker_event(&self, kind: &str, action: &str) {
        let action = action.split(':').next().unwrap_or_default().trim();
        self.docker_events
            .get_or_create(&vec![
                ("type", kind.to_owned()),
                ("action", action.to_owned()),
            ])
            .inc();
    }
}

/// The whole exposition: process metrics, then the per-container series
/// of `published` with `counters`, then `# EOF`.
pub fn render(
    metrics: &Metrics,
    published: Arc<Published>,
    counters: HashMap<String, Counters>,
    guard_drops: HashMap<String, u64>,
    warp_leaks: HashMap<String, PacketsBytes>,
) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    text::encode_registry(&mut out, &metrics.registry)?;
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(ScrapeCollector {
        published,
        counters,
        guard_drops,
        warp_leaks,
    }));
    text::encode_registry(&mut out, &scrape)?;
    text::encode_eof(&mut out)?;
    Ok(out)
}

/// Encodes the series of one scrape from the snapshot it was given.
#[derive(Debug)]
struct ScrapeCollector {
    published: Arc<Published>,
    counters: HashMap<String, Counters>,
    /// Packets each bridge guard dropped, by bridge.
    guard_drops: HashMap<String, u64>,
    /// What each warp forwarded untransformed and netwarp dropped, by warp.
    warp_leaks: HashMap<String, PacketsBytes>,
}

fn target_labels(target: &TargetView) -> Labels {
    vec![
        ("container", target.plan.name.clone()),
        ("id", short_id(&target.plan.id).to_owned()),
    ]
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let published = &self.published;
        // Per-target counters, in the snapshot's (id) order.
        let with_counters: Vec<(Labels, &Counters)> = published
            .targets
            .iter()
            .filter_map(|t| Some((target_labels(t), self.counters.get(&t.plan.id)?)))
            .collect();
        let per_target = |pick: &dyn Fn(&Counters) -> Option<u64>| -> Vec<(Labels, u64)> {
            with_counters
                .iter()
                .filter_map(|(labels, c)| Some((labels.clone(), pick(c)?)))
                .collect()
        };
        let counter_rows = [
            (
                "netwarp_container_transmit_bytes",
                "Bytes the container sent (frames incl. Ethernet header, at its host-side veth)",
                per_target(&|c| Some(c.tx.bytes)),
            ),
            (
                "netwarp_container_transmit_packets",
                "Packets the container sent",
                per_target(&|c| Some(c.tx.packets)),
            ),
            (
                "netwarp_container_receive_bytes",
                "Bytes the container received (frames incl. Ethernet header, at its host-side veth)",
                per_target(&|c| Some(c.rx.bytes)),
            ),
            (
                "netwarp_container_receive_packets",
                "Packets the container received",
                per_target(&|c| Some(c.rx.packets)),
            ),
            (
                "netwarp_container_steered_bytes",
                "Bytes the container sent that were steered to its warp (ebpf dataplane)",
                per_target(&|c| c.steered.map(|s| s.bytes)),
            ),
            (
                "netwarp_container_steered_packets",
                "Packets the container sent that were steered to its warp (ebpf dataplane)",
                per_target(&|c| c.steered.map(|s| s.packets)),
            ),
        ];
        for (name, help, rows) in &counter_rows {
            counter_family(&mut encoder, name, help, rows)?;
        }
        for (name, help, bytes) in [
            (
                "netwarp_container_dropped_bytes",
                "Bytes dropped at the container's veth, by reason: warp_down (fail closed), \
                 policy (no warp address of the family, or blocked entirely by a limit), \
                 rate (bandwidth cap), rule (a block rule); ebpf dataplane",
                true,
            ),
            (
                "netwarp_container_dropped_packets",
                "Packets dropped at the container's veth, by reason (see netwarp_container_dropped_bytes)",
                false,
            ),
        ] {
            let mut rows = Vec::new();
            for (labels, counters) in &with_counters {
                let Some(drops) = counters.dropped else {
                    continue;
                };
                for (reason, pb) in [
                    ("warp_down", drops.warp_down),
                    ("policy", drops.policy),
                    ("rate", drops.rate),
                    ("rule", drops.rule),
                ] {
                    let mut labels = labels.clone();
                    labels.push(("reason", reason.to_owned()));
                    rows.push((labels, if bytes { pb.bytes } else { pb.packets }));
                }
            }
            counter_family(&mut encoder, name, help, &rows)?;
        }

        let mut shaper_rows = Vec::new();
        for (labels, counters) in &with_counters {
            let Some(drops) = counters.shaper_drops else {
                continue;
            };
            for (direction, packets) in [("egress", drops.egress), ("ingress", drops.ingress)] {
                let mut labels = labels.clone();
                labels.push(("direction", direction.to_owned()));
                shaper_rows.push((labels, packets));
            }
        }
        counter_family(
            &mut encoder,
            "netwarp_container_shaper_dropped_packets",
            "Packets the bandwidth caps' tbf qdiscs dropped, by direction (shaper enforcement)",
            &shaper_rows,
        )?;

        let guard_rows: Vec<(Labels, u64)> = published
            .guards
            .iter()
            .filter_map(|g| {
                let packets = *self.guard_drops.get(&g.bridge)?;
                Some((
                    vec![("network", g.network.clone()), ("bridge", g.bridge.clone())],
                    packets,
                ))
            })
            .collect();
        counter_family(
            &mut encoder,
            "netwarp_bridge_guard_dropped_packets",
            "Packets a network's bridge guard dropped: routed traffic to a steered prefix from a \
             container netwarp had not classified yet (eBPF)",
            &guard_rows,
        )?;

        for (name, help, bytes) in [
            (
                "netwarp_warp_untunnelled_dropped_packets",
                "Packets of its targets' steered traffic a warp forwarded without tunnel or NAT, \
                 dropped on its veths (the warp has no kill switch of its own); eBPF",
                false,
            ),
            (
                "netwarp_warp_untunnelled_dropped_bytes",
                "Bytes of netwarp_warp_untunnelled_dropped_packets",
                true,
            ),
        ] {
            let rows: Vec<(Labels, u64)> = published
                .warps
                .iter()
                .filter_map(|w| {
                    let leaks = self.warp_leaks.get(&w.name)?;
                    let value = if bytes { leaks.bytes } else { leaks.packets };
                    Some((vec![("warp", w.name.clone())], value))
                })
                .collect();
            counter_family(&mut encoder, name, help, &rows)?;
        }

        let states: Vec<(Labels, i64)> = published
            .targets
            .iter()
            .map(|t| {
                let mut labels = target_labels(t);
                labels.push(("warp", t.plan.warp.clone()));
                labels.push(("state", super::status::state_name(t).to_owned()));
                if t.failure.is_none()
                    && let TargetState::Blocked(reason) | TargetState::Bypassed(reason) =
                        &t.plan.state
                {
                    labels.push(("reason", reason.kind().to_owned()));
                }
                (labels, 1)
            })
            .collect();
        gauge_family(
            &mut encoder,
            "netwarp_target_state",
            "1 for each target, labelled with its warp, its state (steered, blocked, bypassed, \
             refused, or failed: its last programming failed) and, while blocked or bypassed, the \
             kind of reason (capacity, too_many_prefixes, configuration, warp)",
            &states,
        )?;
        let held: Vec<(Labels, i64)> = (published.targets.iter())
            .filter_map(|t| Some((target_labels(t), i64::from(t.failure.as_ref()?.held_closed))))
            .collect();
        gauge_family(
            &mut encoder,
            "netwarp_target_held_closed",
            "For each failed target: 1 if the bridge guards in place hold its steered and blocked \
             traffic closed, 0 if that cannot be told",
            &held,
        )?;
        for (name, help, pick) in [
            (
                "netwarp_map_entries",
                "Entries netwarp wrote in each eBPF map (ebpf dataplane)",
                (|m: &super::MapUse| m.entries) as fn(&super::MapUse) -> usize,
            ),
            (
                "netwarp_map_capacity",
                "Capacity of each eBPF map (ebpf dataplane); the rule tries' is dataplane.ebpf_rules_capacity",
                |m: &super::MapUse| m.capacity,
            ),
        ] {
            let rows: Vec<(Labels, i64)> = (published.maps.iter())
                .map(|m| (vec![("map", m.map.to_owned())], pick(m) as i64))
                .collect();
            gauge_family(&mut encoder, name, help, &rows)?;
        }
        let by_state: Vec<(Labels, i64)> = (TargetState::NAMES.into_iter())
            .chain(["failed"])
            .map(|state| {
                let count = published
                    .targets
                    .iter()
                    .filter(|t| super::status::state_name(t) == state)
                    .count();
                (vec![("state", state.to_owned())], count as i64)
            })
            .collect();
        gauge_family(
            &mut encoder,
            "netwarp_targets",
            "Targets by state",
            &by_state,
        )?;
        let warps: Vec<(Labels, i64)> = published
            .warps
            .iter()
            .map(|w| {
                (
                    vec![("warp", w.name.clone())],
                    i64::from(w.state == super::WarpState::Up),
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "netwarp_warp_up",
            "1 while the warp container runs, is healthy or has no healthcheck, and its probe (if it has one) answers, else 0",
            &warps,
        )?;
        let probed: Vec<(&str, &super::ProbeReport)> = (published.warps.iter())
            .filter_map(|w| Some((w.name.as_str(), w.probe.as_ref()?)))
            .collect();
        let probe_up: Vec<(Labels, i64)> = (probed.iter())
            .map(|(warp, report)| {
                (
                    vec![("warp", (*warp).to_owned())],
                    i64::from(report.verdict.is_up()),
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "netwarp_warp_probe_up",
            "1 while the warp's probe (its probe label) answers, else 0; warps with a probe only",
            &probe_up,
        )?;
        let probe_counts = |count: fn(&super::ProbeReport) -> u64| -> Vec<(Labels, u64)> {
            (probed.iter())
                .map(|(warp, report)| (vec![("warp", (*warp).to_owned())], count(report)))
                .collect()
        };
        counter_family(
            &mut encoder,
            "netwarp_warp_probes",
            "Probes run from the warp's namespace since netwarp started probing it",
            &probe_counts(|r| r.runs),
        )?;
        counter_family(
            &mut encoder,
            "netwarp_warp_probe_failures",
            "Probes of the warp that failed (no answer, refused, no route)",
            &probe_counts(|r| r.failures),
        )?;
        let rtts: Vec<(&str, f64)> = (probed.iter())
            .filter_map(|(warp, report)| Some((*warp, report.last_rtt?.as_secs_f64())))
            .collect();
        if !rtts.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "netwarp_warp_probe_rtt_seconds",
                "The round-trip time of the warp's last successful probe",
                None,
                MetricType::Gauge,
            )?;
            for (warp, seconds) in rtts {
                let labels: Labels = vec![("warp", warp.to_owned())];
                ConstGauge::new(seconds).encode(metric.encode_family(&labels)?)?;
            }
        }
        if let Some(held) = published.host_guard {
            for (name, help, value) in [
                (
                    "netwarp_host_guard_rules",
                    "routes: netwarp's policy rules in the host's namespace (bridge guards)",
                    held.rules,
                ),
                (
                    "netwarp_host_guard_routes",
                    "routes: prohibit routes in netwarp's host guard tables",
                    held.routes,
                ),
            ] {
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(metric)?;
            }
        }
        if let Some(at) = published.finished_at {
            let seconds = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let gauge = ConstGauge::new(seconds);
            let metric = encoder.encode_descriptor(
                "netwarp_last_reconcile_timestamp_seconds",
                "When the last reconcile pass finished (Unix time)",
                None,
                MetricType::Gauge,
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plan::{BlockReason, TargetPlan, TargetState},
        telemetry::{
            GuardView, WarpState, WarpView,
            counters::{Drops, PacketsBytes, ShaperDrops},
        },
    };

    fn target(id: &str, name: &str, state: TargetState) -> TargetView {
        TargetView {
            plan: TargetPlan {
                warp_group: Vec::new(),
                group_mode: crate::plan::GroupMode::Failover,
                spread: Vec::new(),
                id: id.into(),
                name: name.into(),
                pid: Some(1),
                warp: "warp-a".into(),
                state,
                entries: Vec::new(),
                mac_on_network: None,
                warp_pid: None,
                warp_mac: None,
                warp_macs: Vec::new(),
                addresses: Vec::new(),
                excluded: Vec::new(),
                shares_namespace_of: None,
            }
            .into(),
            host_ifindex: Some(7),
            warp_ifindex: None,
            routed: None,
            failure: None,
            caps: None,
        }
    }

    fn sample() -> (Arc<Published>, HashMap<String, Counters>) {
        let steered = TargetState::Steered {
            network: "n".into(),
            via_v4: None,
            via_v6: None,
        };
        let blocked = TargetState::Blocked(BlockReason::WarpMissing {
            warp: "warp-a".into(),
        });
        let published = Published {
            pass: 3,
            finished_at: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000)),
            duration: None,
            warps: vec![WarpView {
                name: "warp-a".into(),
                id: None,
                state: WarpState::Missing,
                targets: 2,
                ports: Vec::new(),
                probe: None,
            }],
            targets: vec![
                target("aaaaaaaaaaaaaaaaaaaa", "app-a", steered),
                target("bbbbbbbbbbbbbbbbbbbb", "app-b", blocked),
            ],
            guards: vec![GuardView {
                network: "n".into(),
                bridge: "br-0123456789ab".into(),
            }],
            host_guard: Some(crate::dataplane::host_guard::GuardCounts {
                rules: 4,
                tables: 2,
                routes: 6002,
            }),
            maps: vec![crate::telemetry::MapUse {
                map: "NETWARP_RULES_V4",
                entries: 3,
                capacity: 512,
            }],
            ..Published::default()
        };
        let pb = |packets, bytes| PacketsBytes { packets, bytes };
        let counters = HashMap::from([(
            "aaaaaaaaaaaaaaaaaaaa".to_owned(),
            Counters {
                tx: pb(10, 1000),
                rx: pb(20, 2000),
                steered: Some(pb(5, 500)),
                dropped: Some(Drops {
                    warp_down: pb(1, 100),
                    policy: pb(2, 200),
                    rate: pb(3, 300),
                    rule: pb(6, 600),
                }),
                shaper_drops: Some(ShaperDrops {
                    egress: 4,
                    ingress: 5,
                }),
            },
        )]);
        (Arc::new(published), counters)
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new(DataplaneMode::Ebpf);
        metrics.docker_event("container", "health_status: healthy");
        metrics.event_latency.observe(0.2);
        let (published, counters) = sample();
        let guard_drops = HashMap::from([("br-0123456789ab".to_owned(), 7)]);
        let warp_leaks = HashMap::from([("warp-a".to_owned(), PacketsBytes::default())]);
        let text = render(&metrics, published, counters, guard_drops, warp_leaks).unwrap();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("netwarp_"), "{line}");
                types.insert(name.to_owned(), kind.to_owned());
            }
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            let family = types
                .keys()
                .filter(|f| sample.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .unwrap_or_else(|| panic!("no family for {line}"));
            match types[family].as_str() {
                "counter" => assert_eq!(sample, format!("{family}_total"), "{line}"),
                "info" => assert_eq!(sample, format!("{family}_info"), "{line}"),
                "gauge" => assert_eq!(sample, family, "{line}"),
                "histogram" => {
                    assert!(family.ends_with("_seconds"), "{line}");
                    assert!(
                        ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| sample == format!("{family}{s}")),
                        "{line}"
                    );
                }
                other => panic!("unexpected type {other}: {line}"),
            }
            if types[family] != "histogram" && family.contains("seconds") {
                assert!(family.ends_with("_seconds"), "{line}");
            }
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn per_container_series_come_from_the_snapshot() {
        let metrics = Metrics::new(DataplaneMode::Ebpf);
        let (published, counters) = sample();
        let guard_drops = HashMap::from([("br-0123456789ab".to_owned(), 7)]);
        let warp_leaks = HashMap::from([(
            "warp-a".to_owned(),
            PacketsBytes {
                packets: 5,
                bytes: 490,
            },
        )]);
        let text = render(&metrics, published, counters, guard_drops, warp_leaks).unwrap();
        for expected in [
            "netwarp_warp_untunnelled_dropped_packets_total{warp=\"warp-a\"} 5",
            "netwarp_warp_untunnelled_dropped_bytes_total{warp=\"warp-a\"} 490",
            "netwarp_build_info{version=\"",
            "netwarp_dataplane_info{mode=\"ebpf\"} 1",
            "netwarp_host_guard_rules 4",
            "netwarp_host_guard_routes 6002",
            "netwarp_container_transmit_bytes_total{container=\"app-a\",id=\"aaaaaaaaaaaa\"} 1000",
            "netwarp_container_receive_packets_total{container=\"app-a\",id=\"aaaaaaaaaaaa\"} 20",
            "netwarp_container_steered_packets_total{container=\"app-a\",id=\"aaaaaaaaaaaa\"} 5",
            "netwarp_container_dropped_bytes_total{container=\"app-a\",id=\"aaaaaaaaaaaa\",reason=\"rate\"} 300",
            "netwarp_container_dropped_packets_total{container=\"app-a\",id=\"aaaaaaaaaaaa\",reason=\"warp_down\"} 1",
            "netwarp_container_dropped_packets_total{container=\"app-a\",id=\"aaaaaaaaaaaa\",reason=\"rule\"} 6",
            "netwarp_container_dropped_bytes_total{container=\"app-a\",id=\"aaaaaaaaaaaa\",reason=\"rule\"} 600",
            "netwarp_container_shaper_dropped_packets_total{container=\"app-a\",id=\"aaaaaaaaaaaa\",direction=\"ingress\"} 5",
            "netwarp_target_state{container=\"app-b\",id=\"bbbbbbbbbbbb\",warp=\"warp-a\",state=\"blocked\",reason=\"warp\"} 1",
            "netwarp_map_entries{map=\"NETWARP_RULES_V4\"} 3",
            "netwarp_map_capacity{map=\"NETWARP_RULES_V4\"} 512",
            "netwarp_targets{state=\"steered\"} 1",
            "netwarp_bridge_guard_dropped_packets_total{network=\"n\",bridge=\"br-0123456789ab\"} 7",
            "netwarp_warp_up{warp=\"warp-a\"} 0",
            "netwarp_last_reconcile_timestamp_seconds 1000",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        // app-b has no counters: no per-container counter series at all.
        assert!(!text.contains("bytes_total{container=\"app-b\""), "{text}");

        // A snapshot without app-a: its series are gone.
        let (mut published, counters) = sample();
        Arc::make_mut(&mut published).targets.remove(0);
        let text = render(
            &metrics,
            published,
            counters,
            HashMap::new(),
            HashMap::new(),
        )
        .unwrap();
        assert!(!text.contains("app-a"), "{text}");
    }
}
