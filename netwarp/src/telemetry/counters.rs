//! Per-container counters, read by the metrics and status readers at
//! request time, never by the controller.
//!
//! - Sent and received packets and bytes, in both modes, are the kernel's
//!   own statistics of the target's host-side veth (IFLA_STATS64 through
//!   rtnetlink in the host namespace): the programs do not count them
//!   again on the data path.
//! - `ebpf` mode: what only the programs know (steered, dropped by
//!   reason) is read from netwarp's *pinned* maps by path ([`PinnedMaps`]),
//!   with the readers' own file descriptors on the same kernel maps. The
//!   controller owns its `EbpfDataplane` mutably; sharing that would need a
//!   lock the controller could wait on. Per-CPU map lookups take no lock
//!   the data path or the controller holds, so a scrape and a reconcile
//!   never wait for each other, and the numbers are as fresh as the scrape.
//! - `routes` mode: nothing of netwarp's sits on the data path. The veth
//!   is found once per (pid, MAC) from inside the target's namespace and
//!   cached. There are no steered or drop counters in this mode: prohibit
//!   routes refuse packets inside the container's own stack.
//!
//! Both count frames including the Ethernet header: veth statistics count
//! `skb->len` as the programs see it at tc on the host veth. The veth
//! counts what the container sends as it arrives (before netwarp's
//! program drops any of it) and what it receives once delivered (after a
//! cap's policer dropped what it drops).

use std::{collections::HashMap, path::Path, sync::Mutex};

use futures_util::TryStreamExt as _;
use netwarp_common::{GUARD_DROPS_MAP, TrafficCounters, VerdictCounters, WARP_LEAKS_MAP};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{GuardView, TargetView, WarpView};
use crate::{
    config::DataplaneMode,
    dataplane::{
        ebpf::{
            EbpfError, InterfaceTraffic, PinnedMaps, cpu_sum, interface_index, interface_name,
            verdict_sum,
        },
        netns::NamespaceHandle,
        qdisc::tbf_drops,
    },
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketsBytes {
    pub packets: u64,
    pub bytes: u64,
}

impl From<TrafficCounters> for PacketsBytes {
    fn from(c: TrafficCounters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub warp_down: PacketsBytes,
    pub policy: PacketsBytes,
    pub rate: PacketsBytes,
    /// By a `block` rule of the target's.
    #[serde(default)]
    pub rule: PacketsBytes,
}

/// One target's counters. `tx` is what the container sent, `rx` what it
/// received. `steered` and `dropped` exist only in the eBPF dataplane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub tx: PacketsBytes,
    pub rx: PacketsBytes,
    pub steered: Option<PacketsBytes>,
    pub dropped: Option<Drops>,
    /// Packets the caps' tbf qdiscs dropped (the shaper), when capped.
    #[serde(default)]
    pub shaper_drops: Option<ShaperDrops>,
}

/// Packets dropped by the shaper's qdiscs: egress on the container's own
/// interface, ingress on its host-side veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShaperDrops {
    pub egress: u64,
    pub ingress: u64,
}

impl From<VerdictCounters> for Drops {
    fn from(v: VerdictCounters) -> Self {
        Self {
            warp_down: PacketsBytes {
                packets: v.warp_down_packets,
                bytes: v.warp_down_bytes,
            },
            policy: PacketsBytes {
                packets: v.policy_packets,
                bytes: v.policy_bytes,
            },
            rate: PacketsBytes {
                packets: v.rate_packets,
                bytes: v.rate_bytes,
            },
            rule: PacketsBytes {
                packets: v.rule_packets,
                bytes: v.rule_bytes,
            },
        }
    }
}

pub enum CounterReader {
    Ebpf {
        maps: PinnedMaps,
    },
    Routes {
        /// Host veth ifindex by (target pid, MAC on the warp's network).
        veths: Mutex<HashMap<(u32, String), u32>>,
    },
}

impl CounterReader {
    pub fn new(mode: DataplaneMode, pin_dir: &Path) -> Self {
        match mode {
            DataplaneMode::Ebpf => Self::Ebpf {
                maps: PinnedMaps::new(pin_dir),
            },
            _ => Self::Routes {
                veths: Mutex::default(),
            },
        }
    }

    /// Packets each bridge guard dropped (eBPF only: routes mode's prohibit
    /// rules keep no counters), by bridge name; unreadable ones are left out.
    pub fn read_guard_drops(&self, guards: &[GuardView]) -> HashMap<String, u64> {
        let Some(drops) = self.per_cpu_traffic(GUARD_DROPS_MAP) else {
            return HashMap::new();
        };
        guards
            .iter()
            .filter_map(|guard| {
                let ifindex = interface_index(&guard.bridge)?;
                Some((guard.bridge.clone(), drops(ifindex)?.packets))
            })
            .collect()
    }

    /// What each warp's veths dropped because the warp forwarded its
    /// targets' steered traffic untransformed (eBPF only), by warp name;
    /// warps without a guarded veth are left out.
    pub fn read_warp_leaks(&self, warps: &[WarpView]) -> HashMap<String, PacketsBytes> {
        let Some(leaks) = self.per_cpu_traffic(WARP_LEAKS_MAP) else {
            return HashMap::new();
        };
        warps
            .iter()
            .filter(|warp| !warp.ports.is_empty())
            .filter_map(|warp| {
                let sum = (warp.ports.iter())
                    .try_fold(TrafficCounters::default(), |sum, port| {
                        Some(sum.saturating_add(leaks(*port)?))
                    })?;
                Some((warp.name.clone(), PacketsBytes::from(sum)))
            })
            .collect()
    }

    /// A reader of one pinned per-CPU [`TrafficCounters`] map, summing an
    /// ifindex's entry over all CPUs (zero when absent, None when
    /// unreadable); None in routes mode or when the map cannot be opened.
    fn per_cpu_traffic(
        &self,
        name: &'static str,
    ) -> Option<impl Fn(u32) -> Option<TrafficCounters>> {
        let Self::Ebpf { maps } = self else {
            return None;
        };
        let map = match maps.counters::<u32, TrafficCounters>(name) {
            Ok(map) => map,
            Err(e) => {
                debug!(map = name, error = %e, "reading a counter map failed");
                return None;
            }
        };
        Some(move |ifindex| cpu_sum(&map, &ifindex).ok())
    }

    /// Counters by target id. Targets whose interface is unknown are left
    /// out; failures are logged at debug level and leave targets out.
    pub async fn read(&self, targets: &[TargetView]) -> HashMap<String, Counters> {
        let mut counters = self.read_traffic(targets).await;
        for (id, drops) in read_shaper_drops(targets).await {
            if let Some(c) = counters.get_mut(&id) {
                c.shaper_drops = Some(drops);
            }
        }
        counters
    }

    async fn read_traffic(&self, targets: &[TargetView]) -> HashMap<String, Counters> {
        match self {
            Self::Ebpf { maps } => match read_ebpf(maps, targets).await {
                Ok(counters) => counters,
                Err(e) => {
                    debug!(error = %e, "reading the pinned eBPF counters failed");
                    HashMap::new()
                }
            },
            Self::Routes { veths } => read_links(veths, targets).await,
        }
    }
}

/// The shaper's drops of every capped target: one qdisc dump in the
/// host's namespace and one in each capped target's.
async fn read_shaper_drops(targets: &[TargetView]) -> HashMap<String, ShaperDrops> {
    let capped: Vec<&TargetView> = (targets.iter())
        .filter(|t| !t.planned_caps().is_empty())
        .collect();
    if capped.is_empty() {
        return HashMap::new();
    }
    let host = async {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        let task = tokio::spawn(connection);
        let drops = tbf_drops(&handle).await.map_err(|e| e.to_string());
        task.abort();
        drops
    }
    .await;
    let host = match host {
        Ok(host) => host,
        Err(e) => {
            debug!(error = %e, "reading the host's qdisc statistics failed");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for target in capped {
        let (Some(pid), Some(mac)) = (target.plan.pid, target.plan.mac_on_network.as_deref())
        else {
            continue;
        };
        let read = async {
            let namespace = NamespaceHandle::open(pid)
                .await
                .map_err(|e| e.to_string())?;
            let ends = namespace
                .veth_ends_by_mac(mac)
                .await
                .map_err(|e| e.to_string())?;
            let drops = tbf_drops(namespace.dump_handle())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ShaperDrops {
                egress: ends.and_then(|(i, _)| drops.get(&i).copied()).unwrap_or(0),
                ingress: ends.and_then(|(_, p)| host.get(&p).copied()).unwrap_or(0),
            })
        };
        match read.await {
            Ok(drops) => {
                out.insert(target.plan.id.clone(), drops);
            }
            Err(e) => {
                debug!(container = %target.plan.name, error = %e, "reading the shaper's drops failed")
            }
        }
    }
    out
}

async fn read_ebpf(
    maps: &PinnedMaps,
    targets: &[TargetView],
) -> Result<HashMap<String, Counters>, EbpfError> {
    let verdict_maps = maps.verdict_maps()?;
    let stats = match host_link_traffic().await {
        Ok(stats) => stats,
        Err(e) => {
            debug!(error = %e, "dumping the host's links failed");
            return Ok(HashMap::new());
        }
    };
    let mut out = HashMap::new();
    for target in targets {
        let Some(ifindex) = target.host_ifindex else {
            continue;
        };
        let Some(&InterfaceTraffic {
            from_container: tx,
            to_container: rx,
        }) = stats.get(&ifindex)
        else {
            continue;
        };
        let verdict = verdict_sum(&verdict_maps, ifindex)?;
        out.insert(
            target.plan.id.clone(),
            Counters {
                tx: tx.into(),
                rx: rx.into(),
                steered: Some(PacketsBytes {
                    packets: verdict.steered_packets,
                    bytes: verdict.steered_bytes,
                }),
                dropped: Some(verdict.into()),
                shaper_drops: None,
            },
        );
    }
    Ok(out)
}

async fn read_links(
    veths: &Mutex<HashMap<(u32, String), u32>>,
    targets: &[TargetView],
) -> HashMap<String, Counters> {
    let mut wanted = Vec::new();
    for target in targets {
        let (Some(pid), Some(mac)) = (target.plan.pid, target.plan.mac_on_network.as_ref()) else {
            continue;
        };
        let key = (pid, mac.clone());
        let cached = lock(veths).get(&key).copied();
        let ifindex = match cached.filter(|i| interface_name(*i).is_some()) {
            Some(ifindex) => ifindex,
            None => {
                let found = async {
                    NamespaceHandle::open(pid)
                        .await?
                        .peer_ifindex_by_mac(mac)
                        .await
                }
                .await;
                match found {
                    Ok(Some(ifindex)) => {
                        lock(veths).insert(key, ifindex);
                        ifindex
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        debug!(container = %target.plan.name, error = %e, "finding the host veth failed");
                        continue;
                    }
                }
            }
        };
        wanted.push((target.plan.id.clone(), ifindex));
    }
    // Forget containers that are gone.
    lock(veths).retain(|(pid, _), _| targets.iter().any(|t| t.plan.pid == Some(*pid)));
    if wanted.is_empty() {
        return HashMap::new();
    }
    let stats = match host_link_traffic().await {
        Ok(stats) => stats,
        Err(e) => {
            debug!(error = %e, "dumping the host's links failed");
            return HashMap::new();
        }
    };
    wanted
        .into_iter()
        .filter_map(|(id, ifindex)| {
            let s = stats.get(&ifindex)?;
            Some((
                id,
                Counters {
                    tx: s.from_container.into(),
                    rx: s.to_container.into(),
                    steered: None,
                    dropped: None,
                    shaper_drops: None,
                },
            ))
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The statistics of every link in the caller's (the host's) namespace,
/// by ifindex, as container traffic: a host-side veth receives what its
/// container sends.
pub async fn host_link_traffic()
-> Result<HashMap<u32, InterfaceTraffic>, Box<dyn std::error::Error + Send + Sync>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(connection);
    let links: Result<Vec<LinkMessage>, _> = handle.link().get().execute().try_collect().await;
    task.abort();
    let mut out = HashMap::new();
    for link in links? {
        if let Some(stats) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(s),
            _ => None,
        }) {
            out.insert(
                link.header.index,
                InterfaceTraffic {
                    from_container: TrafficCounters {
                        packets: stats.rx_packets,
                        bytes: stats.rx_bytes,
                    },
                    to_container: TrafficCounters {
                        packets: stats.tx_packets,
                        bytes: stats.tx_bytes,
                    },
                },
            );
        }
    }
    Ok(out)
}
