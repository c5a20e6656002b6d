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
//! A partial pass lists only the named containers there too: a container
//! becomes or stops being a dormant target only with an event of its own
//! (create, start, die, restart, destroy, rename; its labels never
//! change), so the last snapshot's other dormant targets still hold, and
//! every full refresh lists them all again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures_util::{StreamExt as _, stream};

pub use crate::wire::Marker;
use crate::{
    docker::{Client, DockerError},
    model::{Container, Health, IdSet, World},
    pass::Pending,
    plan::{Changes, GuardPlan, PlanSettings, is_warp_by_name},
    wire::ListEntry,
};

/// The most pending events a pass serves by listing only the containers
/// they name; more (a storm) list everything.
const PARTIAL_MAX: usize = 256;

/// Inspects in flight at once. Docker serves them in parallel; more would
/// only queue inside dockerd.
const INSPECT_CONCURRENCY: usize = 16;

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
    /// Whether only the containers events named were listed.
    pub partial: bool,
}

/// What an inspect adds to the list, kept while the marker holds: the
/// rest of a container comes from each pass's list.
struct Cached {
    marker: Marker,
    running: bool,
    health: Health,
    pid: Option<u32>,
}

pub struct Inventory {
    warp_name_pattern: String,
    target_label: String,
    /// Cap and list labels: a capped or filtered container needs its pid
    /// too.
    pid_labels: [String; 4],
    /// Every label the planner reads; the others are dropped as the
    /// responses are decoded.
    planner_labels: Vec<String>,
    cache: HashMap<String, Cached>,
    refresh_all: bool,
    /// The last snapshot, which a pass for a few events patches.
    world: Option<Arc<World>>,
    /// The ids of its dormant targets.
    dormant: IdSet,
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
            pid_labels: [
                settings.caps.egress_label.clone(),
                settings.caps.ingress_label.clone(),
                settings.allow_label.clone(),
                settings.deny_label.clone(),
            ],
            planner_labels: settings.labels_read(),
            cache: HashMap::new(),
            refresh_all: true,
            world: None,
            dormant: IdSet::default(),
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
        self.world = None;
        self.refresh_all = true;
    }

    /// Cached inspects, for tests and metrics.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Whether the planner reads the label `key`.
    pub fn keeps_label(&self, key: &str) -> bool {
        self.planner_labels.iter().any(|label| label == key)
    }

    /// A list entry as the domain type, with the planner's labels only.
    fn listed_container(&self, entry: ListEntry) -> Option<(Container, Marker)> {
        entry.into_container(&|key| self.keeps_label(key))
    }

    /// Whether the planner needs more than the list for this container.
    pub fn is_relevant(&self, container: &Container) -> bool {
        container.labels.contains_key(&self.target_label)
            || is_warp_by_name(&self.warp_name_pattern, container)
            || self
                .pid_labels
                .iter()
                .any(|label| container.labels.contains_key(label))
    }

    /// The containers a pass may list alone instead of every container:
    /// the ones pending events name, when there are few, every name is a
    /// container id, and the last pass left a snapshot to patch. `None`:
    /// list everything.
    fn partial_scope(&self, pending: &Pending) -> Option<IdSet> {
        let usable = !self.refresh_all
            && self.world.is_some()
            && !pending.is_empty()
            && pending.len() <= PARTIAL_MAX
            && pending.all_named();
        usable.then(|| pending.id_set())
    }

    /// Lists the running containers and inspects what the list lacks, for
    /// the targets and warps that need it. A container that disappears
    /// between the list and its inspect is left out.
    ///
    /// When few events are pending (see [`Inventory::partial_scope`]), only
    /// the containers they name are listed (Docker's `id` filter) and put
    /// in place of their entries in the last snapshot: a container changes
    /// only with an event of its own, and everything else is as the last
    /// pass found it. Every full refresh (the periodic resync, a reconnect,
    /// lost events) lists everything again. The [`Changes`] say which
    /// containers may differ from the last snapshot, for the planner.
    pub async fn snapshot(
        &mut self,
        client: &Client,
        pending: &Pending,
    ) -> Result<(Arc<World>, SnapshotStats, Changes), DockerError> {
        let named = self.partial_scope(pending);
        if named.is_none() {
            // Not needed by a full listing: never hold two snapshots.
            self.world = None;
        }
        let mut filters = HashMap::new();
        if let Some(ids) = &named {
            filters.insert("id".to_owned(), ids.iter().cloned().collect::<Vec<_>>());
        }
        // Both lists at once; the dormant targets' is small (but without an
        // id filter dockerd walks every container for it). Only a target
        // or warp keeps its change marker (by its place in the list): the
        // others are never inspected.
        let mut listed: Vec<Container> = Vec::new();
        let mut markers: Vec<(usize, Marker)> = Vec::new();
        let running = client.list(false, &filters, |entry| {
            // Only what was asked for, should an API not filter by id.
            let asked = |id: &String| named.as_ref().is_none_or(|named| named.contains(id));
            if entry.id.as_ref().is_some_and(asked)
                && let Some((container, marker)) = self.listed_container(entry)
            {
                if self.is_relevant(&container) {
                    markers.push((listed.len(), marker));
                }
                listed.push(container);
            }
        });
        let (running, dormant) =
            tokio::join!(running, self.dormant_targets(client, named.as_ref()));
        running?;
        let dormant = dormant?;
        let mut decisions = Vec::with_capacity(markers.len());
        let mut to_inspect = Vec::new();
        for (i, marker) in &markers {
            let id = &listed[*i].id;
            let decision = decide(
                true,
                self.cache.get(id).map(|c| &c.marker),
                marker,
                pending.names(id),
                self.refresh_all,
            );
            if decision == Decision::Inspect {
                to_inspect.push((*i, id.clone()));
            }
            decisions.push(decision);
        }
        // Each response becomes the small domain type at once, and takes
        // the place of the listed container: holding thousands of full
        // inspect responses, or two copies of each container, would cost
        // tens of MiB.
        let keep = |key: &str| self.keeps_label(key);
        let mut gone = vec![false; listed.len()];
        let mut inspected = 0;
        let mut responses = stream::iter(to_inspect)
            .map(|(i, id)| async move {
                let inspect = client.inspect(&id).await?;
                Ok::<_, DockerError>((i, inspect.and_then(|i| i.into_container(&keep))))
            })
            .buffer_unordered(INSPECT_CONCURRENCY);
        while let Some(response) = responses.next().await {
            let (i, fresh) = response?;
            inspected += 1;
            match fresh {
                Some(fresh) => listed[i] = fresh,
                // Gone since the list.
                None => gone[i] = true,
            }
        }
        drop(responses);
        let stats = SnapshotStats {
            listed: listed.len(),
            relevant: markers.len(),
            inspected,
            full: self.refresh_all,
            partial: named.is_some(),
        };
        for ((i, marker), decision) in markers.into_iter().zip(decisions) {
            let container = &mut listed[i];
            match decision {
                Decision::Inspect if gone[i] => {
                    self.cache.remove(&container.id);
                }
                Decision::Inspect => {
                    let cached = Cached {
                        marker,
                        running: container.running,
                        health: container.health,
                        pid: container.pid,
                    };
                    self.cache.insert(container.id.clone(), cached);
                }
                Decision::Cached => {
                    // The list is as fresh as it gets for names and
                    // endpoints; the pid and health come from the inspect.
                    let cached = &self.cache[&container.id];
                    container.running = cached.running;
                    container.health = cached.health;
                    container.pid = cached.pid;
                }
                Decision::ListOnly => {}
            }
        }
        // Gone since the list: few, kept apart from the containers.
        let gone_ids: Vec<String> = (listed.iter().zip(&gone))
            .filter(|(_, gone)| **gone)
            .map(|(c, _)| c.id.clone())
            .collect();
        let mut containers = listed;
        if gone.contains(&true) {
            let mut gone = gone.into_iter();
            containers.retain(|_| !gone.next().unwrap_or(false));
        }
        // What differs from the last snapshot: everything after a full
        // listing; else the containers listed anew (running or dormant),
        // as they were and as they are.
        {
            // The cache keeps what this list has, and in a partial pass
            // what it did not list.
            let kept: HashSet<&str, foldhash::fast::RandomState> =
                containers.iter().map(|c| c.id.as_str()).collect();
            match &named {
                Some(named) if self.world.is_some() => self
                    .cache
                    .retain(|id, _| !named.contains(id) || kept.contains(id.as_str())),
                _ => self.cache.retain(|id, _| kept.contains(id.as_str())),
            }
        }
        let mut changes = Changes::All;
        let partial = named.is_some() && self.world.is_some();
        let mut world = match (&named, self.world.take()) {
            (Some(named), Some(mut last)) => {
                // The named containers as listed now (running or dormant),
                // the rest as before.
                changes = Changes::none();
                let world = Arc::make_mut(&mut last);
                (world.containers).retain(|c| {
                    let kept = !named.contains(&c.id);
                    if !kept {
                        changes.note(c);
                    }
                    kept
                });
                containers.iter().for_each(|c| changes.note(c));
                world.containers.extend(containers);
                last
            }
            _ => Arc::new(World { containers }),
        };
        self.refresh_all = false;
        // An entry the main list already had is skipped (a container may
        // start between the two calls). A partial pass knows the others
        // from the last snapshot.
        let dormant: Vec<Container> = {
            let listed: HashSet<&str, foldhash::fast::RandomState> = (world.containers.iter())
                .map(|c| c.id.as_str())
                .chain(gone_ids.iter().map(String::as_str))
                .collect();
            (dormant.into_iter())
                .filter(|c| !listed.contains(c.id.as_str()))
                .collect()
        };
        dormant.iter().for_each(|c| changes.note(c));
        let listed_dormant = dormant.iter().map(|c| c.id.clone());
        match &named {
            // The last snapshot's dormant targets that no event named are
            // still in it, as they were.
            Some(named) if partial => {
                self.dormant.retain(|id| !named.contains(id));
                self.dormant.extend(listed_dormant);
            }
            _ => self.dormant = listed_dormant.collect(),
        }
        Arc::make_mut(&mut world).containers.extend(dormant);
        self.world = Some(Arc::clone(&world));
        Ok((world, stats, changes))
    }

    /// Targets that exist but do not run, from a list Docker filters: of
    /// the containers `named` only, when given (Docker finds those by id;
    /// a label or status filter alone has it walk every container).
    async fn dormant_targets(
        &self,
        client: &Client,
        named: Option<&IdSet>,
    ) -> Result<Vec<Container>, DockerError> {
        let mut filters = HashMap::from([
            ("label".to_owned(), vec![self.target_label.clone()]),
            (
                "status".to_owned(),
                ["created", "exited", "restarting", "dead"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        if let Some(ids) = named {
            filters.insert("id".to_owned(), ids.iter().cloned().collect());
        }
        let mut dormant = Vec::new();
        client
            .list(true, &filters, |entry| {
                let container = self.listed_container(entry).map(|(container, _)| container);
                dormant.extend(
                    container.filter(|c| !c.running && c.labels.contains_key(&self.target_label)),
                );
            })
            .await?;
        Ok(dormant)
    }

    /// The bridge interface of each guard's network, for the guards whose
    /// network is a bridge network; one network inspect per new network,
    /// the new ones concurrently.
    /// A failed inspect skips that guard for this pass, and the returned
    /// flag is then false: the caller must not take a missing guard for
    /// one that is no longer needed.
    pub async fn guard_bridges<'a>(
        &mut self,
        client: &Client,
        guards: &'a [GuardPlan],
    ) -> (Vec<(String, &'a GuardPlan)>, bool) {
        let mut complete = true;
        // The networks not seen before, inspected at once.
        let new = (guards.iter())
            .filter_map(|g| Some((g, g.network_id.as_deref()?)))
            .filter(|(_, id)| !self.bridges.contains_key(*id));
        let inspected: Vec<_> = stream::iter(new)
            .map(|(guard, id)| async move { (guard, id, client.inspect_network(id, None).await) })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        for (guard, id, inspected) in inspected {
            match inspected {
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
                    status_code: 404, ..
                }) => {
                    tracing::warn!(network = %guard.network, "a guarded network no longer exists");
                    self.bridges.insert(id.to_owned(), None);
                }
                // Skipped for this pass.
                Err(e) => {
                    tracing::warn!(network = %guard.network, error = %e, "inspecting a guarded network failed; will retry");
                    complete = false;
                }
            }
        }
        let mut resolved = Vec::with_capacity(guards.len());
        for guard in guards {
            let Some(id) = guard.network_id.as_deref() else {
                continue;
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "running";
    const PAUSED: &str = "paused";

    fn marker(state: &str, endpoints: &[&str]) -> Marker {
        Marker {
            name: "warp-a".into(),
            state: Some(state.into()),
            health: Health::None,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// Every label `PlanSettings` names is one the planner reads, and
    /// must survive the decoding; others are dropped.
    #[test]
    fn the_planner_labels_are_kept_and_no_others() {
        let settings = crate::telemetry::tests::settings();
        let inventory = Inventory::new(&settings);
        let caps = &settings.caps;
        for label in [
            &settings.target_label,
            &settings.network_label,
            &settings.rules_label,
            &caps.egress_label,
            &caps.ingress_label,
            &caps.burst_label,
            &settings.probe_label,
        ] {
            assert!(inventory.keeps_label(label), "{label}");
        }
        assert!(inventory.keeps_label(crate::plan::SWARM_SERVICE_LABEL));
        assert!(!inventory.keeps_label("com.docker.compose.project"));
    }

    #[test]
    fn only_targets_and_warps_are_inspected_and_only_when_needed() {
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
}
