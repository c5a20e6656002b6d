//! The inventory: each reconcile's snapshot of the containers, at the cost
//! of one list call plus the few inspects that are actually needed.
//!
//! Docker's list endpoint (`GET /containers/json`, API 1.41 and later)
//! already carries each container's id, names, labels, state and network
//! endpoints (IP, global IPv6, MAC and endpoint id). What only an inspect
//! gives is the init pid (the network namespace) and, before API 1.52, the
//! health status. So:
//!
//! - unrelated containers (no target label, name not matching the warp
//!   pattern) are never inspected: the planner ignores them;
//! - targets and warps are inspected once, and the result is cached under
//!   the container id together with a change marker read from the list
//!   (state, health hint, name, endpoint ids: a restart gets new endpoint
//!   ids, a connect or disconnect changes the set);
//! - a cached entry is inspected again when its marker changes, when a
//!   pending Docker event names it, and on every full refresh (the periodic
//!   resync, a reconnect, or events lost to a full channel), so the loop
//!   stays level-triggered and self-healing.
//!
//! The cache only ever holds containers that the latest list returned.
//!
//! A second list, filtered by Docker, adds the targets that are not
//! running (created, exited, restarting): the bridge guard covers them
//! before they start. They come from the list alone and are never inspected.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use bollard::{
    Docker,
    models::{ContainerSummary, ContainerSummaryHealthStatusEnum, ContainerSummaryStateEnum},
    query_parameters::ListContainersOptions,
};
use futures_util::{StreamExt as _, stream};

use crate::{
    docker::{DockerError, to_container, to_endpoint},
    model::{Container, Health, NetworkMode, World},
    plan::{GuardPlan, PlanSettings, is_warp_by_name},
};

/// Inspects in flight at once. Docker serves them in parallel; more would
/// only queue inside dockerd.
const INSPECT_CONCURRENCY: usize = 16;

/// What the list says about a container that, when it changes, means a
/// cached inspect may be stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub name: String,
    pub state: Option<ContainerSummaryStateEnum>,
    pub health: Health,
    /// Sorted endpoint ids, one per attached network.
    pub endpoints: Vec<String>,
}

/// Why a container is (or is not) inspected in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Unrelated to netwarp: the list is enough.
    ListOnly,
    /// A target or warp whose cached inspect is still good.
    Cached,
    /// A target or warp to inspect now.
    Inspect,
}

/// The pure decision for one listed container.
pub fn decide(
    relevant: bool,
    cached: Option<&Marker>,
    current: &Marker,
    named_by_event: bool,
    refresh_all: bool,
) -> Decision {
    if !relevant {
        Decision::ListOnly
    } else if refresh_all || named_by_event || cached != Some(current) {
        Decision::Inspect
    } else {
        Decision::Cached
    }
}

/// Counts for one snapshot, for the reconcile log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub listed: usize,
    /// Targets and warps.
    pub relevant: usize,
    pub inspected: usize,
    /// Whether every target and warp was inspected (a full refresh).
    pub full: bool,
}

struct Cached {
    marker: Marker,
    container: Container,
}

pub struct Inventory {
    warp_name_pattern: String,
    target_label: String,
    /// Cap labels: a capped container needs its pid too.
    cap_labels: [String; 2],
    cache: HashMap<String, Cached>,
    refresh_all: bool,
    /// Each guarded network's bridge interface (None: not a bridge
    /// network), by network id; ids never change meaning, so no expiry
    /// beyond dropping networks no guard uses.
    bridges: HashMap<String, Option<String>>,
}

impl Inventory {
    pub fn new(settings: &PlanSettings) -> Self {
        Self {
            warp_name_pattern: settings.warp_name_pattern.clone(),
            target_label: settings.target_label.clone(),
            cap_labels: [
                settings.caps.egress_label.clone(),
                settings.caps.ingress_label.clone(),
            ],
            cache: HashMap::new(),
            refresh_all: true,
            bridges: HashMap::new(),
        }
    }

    /// The next snapshot inspects every target and warp again.
    pub fn refresh_all(&mut self) {
        self.refresh_all = true;
    }

    /// Drops the cache (after a reconnect, every pid may have changed).
    pub fn forget(&mut self) {
        self.cache.clear();
        self.refresh_all = true;
    }

    /// Cached inspects, for tests and metrics.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Whether the planner needs more than the list for this container.
    pub fn is_relevant(&self, container: &Container) -> bool {
        container.labels.contains_key(&self.target_label)
            || is_warp_by_name(&self.warp_name_pattern, container)
            || self
                .cap_labels
                .iter()
                .any(|label| container.labels.contains_key(label))
    }

    /// Lists the running containers and inspects what the list lacks, for
    /// the targets and warps that need it. A container that disappears
    /// between the list and its inspect is left out.
    pub async fn snapshot(
        &mut self,
        client: &Docker,
        pending: &HashMap<String, SystemTime>,
    ) -> Result<(World, SnapshotStats), DockerError> {
        let summaries = client
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(DockerError::List)?;
        let listed: Vec<(Container, Marker)> =
            summaries.into_iter().filter_map(from_summary).collect();
        let mut decisions = Vec::with_capacity(listed.len());
        let mut to_inspect = Vec::new();
        for (container, marker) in &listed {
            let decision = decide(
                self.is_relevant(container),
                self.cache.get(&container.id).map(|c| &c.marker),
                marker,
                pending.contains_key(&container.id),
                self.refresh_all,
            );
            if decision == Decision::Inspect {
                to_inspect.push(container.id.clone());
            }
            decisions.push(decision);
        }
        // Each response becomes the small domain type at once: holding
        // thousands of full inspect responses would cost tens of MiB.
        let mut inspected: HashMap<String, Option<Container>> = stream::iter(to_inspect)
            .map(|id| async move {
                match client.inspect_container(&id, None).await {
                    Ok(inspect) => Ok((id, to_container(inspect))),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => Ok((id, None)),
                    Err(e) => Err(DockerError::List(e)),
                }
            })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut stats = SnapshotStats {
            listed: listed.len(),
            inspected: inspected.len(),
            full: self.refresh_all,
            ..SnapshotStats::default()
        };
        let mut containers = Vec::with_capacity(listed.len());
        let mut present = HashSet::with_capacity(listed.len());
        for ((container, marker), decision) in listed.into_iter().zip(decisions) {
            present.insert(container.id.clone());
            match decision {
                Decision::ListOnly => containers.push(container),
                Decision::Inspect => {
                    stats.relevant += 1;
                    match inspected.remove(&container.id).flatten() {
                        Some(fresh) => {
                            self.cache.insert(
                                container.id.clone(),
                                Cached {
                                    marker,
                                    container: fresh.clone(),
                                },
                            );
                            containers.push(fresh);
                        }
                        // Gone since the list.
                        None => {
                            self.cache.remove(&container.id);
                        }
                    }
                }
                Decision::Cached => {
                    stats.relevant += 1;
                    let cached = &self.cache[&container.id].container;
                    // The list is as fresh as it gets for names and
                    // endpoints; the pid and health come from the inspect.
                    containers.push(Container {
                        running: cached.running,
                        health: cached.health,
                        pid: cached.pid,
                        ..container
                    });
                }
            }
        }
        self.cache.retain(|id, _| present.contains(id));
        self.refresh_all = false;
        containers.extend(self.dormant_targets(client, &present).await?);
        Ok((World { containers }, stats))
    }

    /// Targets that exist but do not run, from a list Docker filters. Any
    /// entry the main list already had is skipped (a container may start
    /// between the two calls).
    async fn dormant_targets(
        &self,
        client: &Docker,
        present: &HashSet<String>,
    ) -> Result<Vec<Container>, DockerError> {
        let filters = HashMap::from([
            ("label".to_owned(), vec![self.target_label.clone()]),
            (
                "status".to_owned(),
                ["created", "exited", "restarting", "dead"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let summaries = client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(DockerError::List)?;
        Ok(summaries
            .into_iter()
            .filter_map(from_summary)
            .map(|(container, _)| container)
            .filter(|c| {
                !c.running && !present.contains(&c.id) && c.labels.contains_key(&self.target_label)
            })
            .collect())
    }

    /// The bridge interface of each guard's network, for the guards whose
    /// network is a bridge network; one network inspect per new network.
    /// A failed inspect skips that guard for this pass, and the returned
    /// flag is then false: the caller must not take a missing guard for
    /// one that is no longer needed.
    pub async fn guard_bridges<'a>(
        &mut self,
        client: &Docker,
        guards: &'a [GuardPlan],
    ) -> (Vec<(String, &'a GuardPlan)>, bool) {
        let mut complete = true;
        let mut resolved = Vec::with_capacity(guards.len());
        for guard in guards {
            let Some(id) = guard.network_id.as_deref() else {
                continue;
            };
            if !self.bridges.contains_key(id) {
                match client.inspect_network(id, None).await {
                    Ok(network) => {
                        let bridge = bridge_interface(id, &network);
                        if bridge.is_none() {
                            tracing::warn!(
                                network = %guard.network,
                                driver = network.driver.as_deref().unwrap_or("unknown"),
                                "this network is not a bridge network; netwarp cannot guard \
                                 the moment before a target on it is programmed"
                            );
                        }
                        self.bridges.insert(id.to_owned(), bridge);
                    }
                    // Ids are never reused: a network that is gone stays gone.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {
                        tracing::warn!(network = %guard.network, "a guarded network no longer exists");
                        self.bridges.insert(id.to_owned(), None);
                    }
                    Err(e) => {
                        tracing::warn!(network = %guard.network, error = %e, "inspecting a guarded network failed; will retry");
                        complete = false;
                        continue;
                    }
                }
            }
            if let Some(Some(bridge)) = self.bridges.get(id) {
                resolved.push((bridge.clone(), guard));
            }
        }
        let used: HashSet<&str> = guards
            .iter()
            .filter_map(|g| g.network_id.as_deref())
            .collect();
        self.bridges.retain(|id, _| used.contains(id.as_str()));
        (resolved, complete)
    }
}

/// What the list says about one container, as the domain type (without a
/// pid, and with the health only as a hint), plus its change marker.
pub fn from_summary(summary: ContainerSummary) -> Option<(Container, Marker)> {
    let id = summary.id?;
    // Links add names such as `/other/alias`; the container's own name is
    // the one without a second slash.
    let names = summary.names.unwrap_or_default();
    let name = names
        .iter()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.contains('/'))
        .or_else(|| names.first().map(|n| n.trim_start_matches('/')))
        .unwrap_or_default()
        .to_owned();
    let health = match summary.health.and_then(|h| h.status) {
        Some(ContainerSummaryHealthStatusEnum::STARTING) => Health::Starting,
        Some(ContainerSummaryHealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(ContainerSummaryHealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => health_from_status(summary.status.as_deref().unwrap_or_default()),
    };
    let mut endpoints = Vec::new();
    let networks = summary
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(network, endpoint)| {
            endpoints.push(endpoint.endpoint_id.clone().unwrap_or_default());
            (network, to_endpoint(endpoint))
        })
        .collect();
    endpoints.sort();
    // The list has it too, so containers that are never inspected (the
    // one a target shares a namespace with) are classified as well.
    let network_mode = NetworkMode::parse(
        summary
            .host_config
            .and_then(|h| h.network_mode)
            .as_deref()
            .unwrap_or_default(),
    );
    let container = Container {
        id,
        name: name.clone(),
        running: summary.state == Some(ContainerSummaryStateEnum::RUNNING),
        health,
        pid: None,
        labels: summary.labels.unwrap_or_default().into_iter().collect(),
        networks,
        network_mode,
    };
    let marker = Marker {
        name,
        state: summary.state,
        health,
        endpoints,
    };
    Some((container, marker))
}

/// The host interface of a bridge network: the name its options give, or
/// Docker's default, `br-` and the first 12 characters of the id.
pub fn bridge_interface(id: &str, network: &bollard::models::NetworkInspect) -> Option<String> {
    if network.driver.as_deref() != Some("bridge") {
        return None;
    }
    let named = network
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .filter(|name| !name.is_empty());
    Some(match named {
        Some(name) => name.clone(),
        None => format!("br-{}", crate::model::short_id(id)),
    })
}

/// The health in a list entry's human-readable status, such as
/// `Up 5 minutes (unhealthy)` (the only place it is before API 1.52).
pub fn health_from_status(status: &str) -> Health {
    if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::ContainerSummary;

    use super::*;

    fn marker(state: ContainerSummaryStateEnum, endpoints: &[&str]) -> Marker {
        Marker {
            name: "warp-a".into(),
            state: Some(state),
            health: Health::None,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn only_targets_and_warps_are_inspected_and_only_when_needed() {
        use ContainerSummaryStateEnum::{PAUSED, RUNNING};
        let now = marker(RUNNING, &["e1"]);
        assert_eq!(decide(false, None, &now, true, true), Decision::ListOnly);
        assert_eq!(decide(true, None, &now, false, false), Decision::Inspect);
        assert_eq!(
            decide(true, Some(&now), &now, false, false),
            Decision::Cached
        );
        assert_eq!(
            decide(true, Some(&now), &now, true, false),
            Decision::Inspect,
            "named by an event"
        );
        assert_eq!(
            decide(true, Some(&now), &now, false, true),
            Decision::Inspect,
            "full refresh"
        );
        for changed in [
            marker(PAUSED, &["e1"]),
            marker(RUNNING, &["e2"]),
            marker(RUNNING, &["e1", "e3"]),
            Marker {
                health: Health::Unhealthy,
                ..now.clone()
            },
            Marker {
                name: "warp-b".into(),
                ..now.clone()
            },
        ] {
            assert_eq!(
                decide(true, Some(&changed), &now, false, false),
                Decision::Inspect,
                "{changed:?}"
            );
        }
    }

    #[test]
    fn list_entries_become_containers_with_markers() {
        let json = serde_json::json!({
            "Id": "0123456789abcdef",
            "Names": ["/other/alias", "/warp-vpn"],
            "State": "running",
            "Status": "Up 3 minutes (unhealthy)",
            "Labels": {"netwarp.network": "front"},
            "NetworkSettings": {"Networks": {
                "front": {"EndpointID": "ep-b", "IPAddress": "172.20.0.2", "GlobalIPv6Address": "", "MacAddress": "02:42:ac:14:00:02"},
                "back": {"EndpointID": "ep-a", "IPAddress": "172.21.0.2", "GlobalIPv6Address": "fd00::2", "MacAddress": ""}
            }}
        });
        let summary: ContainerSummary = serde_json::from_value(json).unwrap();
        let (c, m) = from_summary(summary).unwrap();
        assert_eq!(c.name, "warp-vpn");
        assert!(c.running);
        assert_eq!(c.pid, None);
        assert_eq!(c.health, Health::Unhealthy);
        assert_eq!(c.labels["netwarp.network"], "front");
        assert_eq!(
            c.networks["front"].ipv4,
            Some("172.20.0.2".parse().unwrap())
        );
        assert_eq!(
            c.networks["front"].mac.as_deref(),
            Some("02:42:ac:14:00:02")
        );
        assert_eq!(c.networks["back"].ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(m.endpoints, ["ep-a", "ep-b"]);
        assert_eq!(m.state, Some(ContainerSummaryStateEnum::RUNNING));
        assert_eq!(c.network_mode, NetworkMode::Own);

        let shared: ContainerSummary = serde_json::from_value(serde_json::json!({
            "Id": "ee", "Names": ["/y"], "State": "running",
            "HostConfig": {"NetworkMode": "container:0123456789abcdef"}
        }))
        .unwrap();
        let (c, _) = from_summary(shared).unwrap();
        assert_eq!(
            c.network_mode,
            NetworkMode::Container("0123456789abcdef".into())
        );

        let paused: ContainerSummary = serde_json::from_value(serde_json::json!({
            "Id": "ff", "Names": ["/x"], "State": "paused", "Status": "Up 1 second (Paused)",
            "Health": {"Status": "healthy"}
        }))
        .unwrap();
        let (c, m) = from_summary(paused).unwrap();
        assert!(!c.running);
        assert_eq!(c.health, Health::Healthy, "the list's own Health wins");
        assert!(m.endpoints.is_empty());
    }

    #[test]
    fn health_hints_in_the_status_text() {
        assert_eq!(health_from_status("Up 2 hours (healthy)"), Health::Healthy);
        assert_eq!(
            health_from_status("Up 2 hours (unhealthy)"),
            Health::Unhealthy
        );
        assert_eq!(
            health_from_status("Up 1 second (health: starting)"),
            Health::Starting
        );
        assert_eq!(health_from_status("Up 2 hours"), Health::None);
    }
}
