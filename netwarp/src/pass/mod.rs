//! One reconcile pass, level-triggered: snapshot → plan → apply → publish.
//! Docker events only mark containers dirty; each pass lists every
//! container (inspecting only the targets and warps whose cached inspect
//! may be stale, see [`crate::inventory`]), plans from scratch, and has the
//! dataplane bring each target, guard and cap to its plan. A periodic
//! resync re-inspects everything and is the safety net, so lost events,
//! reconnects and restarts cannot corrupt state.

mod log;
mod pending;

pub use pending::Pending;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::docker::Client;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    dataplane::sync::{Dataplane, FailureReason, PassScope},
    docker,
    inventory::Inventory,
    model::{IdSet, NetworkMode, World, short_id},
    plan::{
        Action, CapPlan, Entry, Failover, GuardPlan, Observed, Plan, PlanCache, PlanSettings,
        TargetPlan, TargetState, WarpState, is_warp_by_name, plan_cached, probe_spec,
    },
    telemetry::{GuardView, PassOutcome, TargetFailure, Telemetry},
    warp_probe::{ProbeSettings, ProbedWarp, Prober, Wakeups},
};

/// Drives the passes: owns the dataplane, the snapshot's cache of
/// inspects, and the telemetry each pass publishes to.
pub struct Reconciler {
    settings: PlanSettings,
    dataplane: Dataplane,
    changes: log::ChangeLog,
    /// The container snapshot, with its cache of inspects.
    inventory: Inventory,
    /// The last plan's target plans, which the next reuses where nothing
    /// they depend on changed.
    plan_cache: PlanCache,
    /// No pass has completed since the last (re)connect.
    initial_pass: bool,
    /// The next pass checks everything against the kernel: the first, the
    /// periodic resync, after a reconnect or lost events, after a reload.
    verify_next: bool,
    /// The guards are checked against the kernel on the next pass: the
    /// last one that should have was left for an event that was waiting.
    verify_guards_next: bool,
    /// The targets the last pass left when it stopped early for an event,
    /// in the order it would have served them: the next pass serves them
    /// right after the targets events named, and may stop early again
    /// only after serving one of them and before the rest (so each pass
    /// makes progress, and passes complete).
    owed: Vec<String>,
    /// The targets whose last programming failed: why, until one succeeds.
    failed: HashMap<String, (String, FailureReason)>,
    /// The guards the last complete pass resolved, for status.
    guard_views: Vec<GuardView>,
    /// Metrics, and the snapshot `netwarp status` and scrapes read.
    telemetry: Telemetry,
    /// The warps' probes: started with the first warp that has a probe
    /// label, and how a verdict's change wakes the event loop.
    probes: Probes,
    /// Failover groups across passes: active members, and since when each
    /// warp has been usable (a recovered one waits out the hold-down).
    failover: FailoverState,
}

struct FailoverState {
    hold_down: Duration,
    active: HashMap<String, String>,
    usable_since: HashMap<String, Instant>,
    /// No pass has planned yet: every usable warp counts as settled.
    first: bool,
}

impl FailoverState {
    /// What the planner needs: the active members, and the warps usable
    /// for the whole hold-down (a warp that comes back in this very pass
    /// is not among them).
    fn observed(&self) -> Failover {
        let settled = (self.usable_since.iter())
            .filter(|(_, since)| since.elapsed() >= self.hold_down)
            .map(|(name, _)| name.clone())
            .collect();
        Failover {
            active: self.active.clone(),
            settled: (!self.hold_down.is_zero()).then_some(settled),
        }
    }

    /// Learns from a plan: which members are active, which warps became
    /// usable (and when). Returns how many targets moved to another member.
    fn learn(&mut self, plan: &Plan) -> u64 {
        let now = Instant::now();
        let settled = now.checked_sub(self.hold_down).unwrap_or(now);
        for warp in &plan.warps {
            if warp.state == WarpState::Up {
                let since = if self.first { settled } else { now };
                self.usable_since.entry(warp.name.clone()).or_insert(since);
            } else {
                self.usable_since.remove(&warp.name);
            }
        }
        self.first = false;
        let mut moved = 0;
        let mut active = HashMap::new();
        for target in plan.targets.iter().filter(|t| !t.warp_group.is_empty()) {
            if !matches!(target.state, TargetState::Steered { .. }) {
                // Blocked: keep the last active member, so the hold-down
                // still applies when one comes back.
                if let Some(last) = self.active.get(&target.id) {
                    active.insert(target.id.clone(), last.clone());
                }
                continue;
            }
            let warps = target.active_warps();
            if (self.active.get(&target.id)).is_some_and(|last| *last != warps) {
                moved += 1;
            }
            active.insert(target.id.clone(), warps);
        }
        self.active = active;
        moved
    }

    /// When the next recovering warp's hold-down ends: a pass is due then,
    /// to move its targets back.
    fn next_deadline(&self) -> Option<Instant> {
        (self.usable_since.values())
            .map(|since| *since + self.hold_down)
            .filter(|at| *at > Instant::now())
            .min()
    }
}

/// The prober and what passes need to drive it.
struct Probes {
    settings: ProbeSettings,
    prober: Option<Prober>,
    wakeups: Arc<Wakeups>,
}

/// How long a recovered failover member waits before it takes traffic
/// back, unless configured.
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(30);

/// What the targets' part of a pass leaves for the rest.
struct TargetsDone {
    seen: IdSet,
    /// An event arrived: these targets (in order) were left for the next
    /// pass, which follows at once.
    left: Option<Vec<String>>,
}

impl Reconciler {
    pub fn new(mut settings: PlanSettings, dataplane: Dataplane) -> Self {
        settings.rule_capacity = dataplane.rule_capacity();
        Self {
            inventory: Inventory::new(&settings),
            plan_cache: PlanCache::default(),
            settings,
            dataplane,
            changes: log::ChangeLog::default(),
            initial_pass: true,
            verify_next: true,
            verify_guards_next: false,
            owed: Vec::new(),
            failed: HashMap::new(),
            guard_views: Vec::new(),
            telemetry: Telemetry::disabled(),
            probes: Probes {
                settings: ProbeSettings::default(),
                prober: None,
                wakeups: Arc::new(Wakeups::default()),
            },
            failover: FailoverState {
                hold_down: DEFAULT_HOLD_DOWN,
                active: HashMap::new(),
                usable_since: HashMap::new(),
                first: true,
            },
        }
    }

    /// How long a recovered warp waits before it takes its group's traffic
    /// back (before the first pass).
    pub fn with_failover_hold_down(mut self, hold_down: Duration) -> Self {
        self.failover.hold_down = hold_down;
        self
    }

    /// When a pass is due without any event: a recovered group member's
    /// hold-down ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.failover.next_deadline()
    }

    /// How often and how strictly warps' probes run (before the first pass).
    pub fn with_probe_settings(mut self, settings: ProbeSettings) -> Self {
        self.probes.settings = settings;
        self
    }

    /// Where a warp whose probe verdict changed is announced: the event
    /// loop waits on it beside Docker's events.
    pub fn probe_wakeups(&self) -> Arc<Wakeups> {
        Arc::clone(&self.probes.wakeups)
    }

    pub fn with_telemetry(self, telemetry: Telemetry) -> Self {
        Self { telemetry, ..self }
    }

    pub fn telemetry_mut(&mut self) -> &mut Telemetry {
        &mut self.telemetry
    }

    /// New planner settings (a reload); the next pass re-inspects everything.
    pub fn update_settings(&mut self, mut settings: PlanSettings) {
        settings.rule_capacity = self.dataplane.rule_capacity();
        self.inventory = Inventory::new(&settings);
        self.settings = settings;
        self.verify_next = true;
    }

    /// The next pass re-inspects every target and warp (the periodic
    /// resync, or events were lost).
    pub fn resync_all(&mut self) {
        self.inventory.refresh_all();
        self.verify_next = true;
    }

    /// Waits until the dry-run record holds the last pass (see
    /// [`Dataplane::flush_record`]).
    pub fn flush_record(&self) {
        self.dataplane.flush_record();
    }

    /// Docker is gone: the guards forget every allowed source until the
    /// next pass (fail closed).
    pub async fn forget_guard_sources(&mut self) {
        self.dataplane.forget_guard_sources().await;
    }

    /// A new Docker connection: forget every cached inspect.
    pub fn reconnected(&mut self) {
        self.inventory.forget();
        self.initial_pass = true;
        self.verify_next = true;
        self.owed.clear();
    }

    /// One full pass. Per-target failures are logged and retried on the
    /// next pass; only a Docker failure aborts the pass. When
    /// `events_waiting` says an event arrived meanwhile, the pass stops
    /// after the targets events named (and, when an earlier pass stopped
    /// early, after one target that pass left), so the new event is
    /// served next; see [`Reconciler::owed`] for why every target is
    /// still reached. The first pass after a (re)connect arms the bridge
    /// guards before any target, so it too may stop early: the guards
    /// hold the targets it has not reached yet.
    pub async fn reconcile(
        &mut self,
        client: &Client,
        pending: &mut Pending,
        events_waiting: &dyn Fn() -> bool,
    ) -> Result<(), docker::DockerError> {
        let started = Instant::now();
        let (world, snapshot, changes) = self.inventory.snapshot(client, pending).await?;
        let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
        let reports = (self.probes.prober.as_ref()).map_or_else(HashMap::new, Prober::verdicts);
        let observed = Observed {
            probes: (reports.iter())
                .map(|(id, report)| (id.clone(), report.verdict.clone()))
                .collect(),
            failover: self.failover.observed(),
        };
        let plan = plan_cached(
            &world,
            &self.settings,
            &observed,
            &changes,
            &mut self.plan_cache,
        );
        let moved = self.failover.learn(&plan);
        if moved > 0 {
            self.telemetry.metrics().failovers.inc_by(moved);
        }
        self.probe_warps(&world);
        let plan_ms = started.elapsed().as_secs_f64() * 1e3 - snapshot_ms;
        let named = named_by_events(&world, &plan, pending);
        let mut scope = PassScope::new(std::mem::take(&mut self.verify_next), named);
        let guards_first = self.initial_pass;
        if guards_first {
            self.sync_guards(client, &plan, scope.verify).await;
        }
        let done = (self.sync_targets(&plan, &mut scope, pending, events_waiting)).await;
        let complete = done.left.is_none();
        if let Some(left) = done.left {
            // What this pass owed is owed by the next one.
            self.owed = left;
            self.verify_next |= scope.verify;
        } else {
            self.owed.clear();
            if !guards_first {
                // Checking the guards against the kernel (a dump of every
                // guard route in routes mode) would hold up a waiting
                // event: they are written as planned now, against what
                // was last written, and checked on the next pass.
                // Deferred once at most: the next pass checks them
                // whatever waits then.
                let deferred = std::mem::take(&mut self.verify_guards_next);
                let verify = scope.verify || deferred;
                let defer = verify && !deferred && events_waiting();
                self.verify_guards_next = defer;
                self.sync_guards(client, &plan, verify && !defer).await;
            }
            self.sync_caps(&plan.caps, &world, &mut scope).await;
        }
        self.changes.retain(
            |id| done.seen.contains(id),
            |id| plan.caps.iter().any(|c| c.id == id),
        );
        self.failed.retain(|id, _| done.seen.contains(id));
        self.dataplane.release_departed(&scope, &done.seen);
        self.dataplane.finish_pass(&done.seen);
        pending.clear();
        let applied_ms = started.elapsed().as_secs_f64() * 1e3;
        // Only a failed target asks what holds it closed.
        let guards = if self.failed.is_empty() {
            HashMap::new()
        } else {
            self.dataplane.guards_in_place()
        };
        let failures = (self.failed.iter())
            .map(|(id, (error, reason))| {
                let failure = TargetFailure {
                    error: error.clone(),
                    reason: *reason,
                    held_closed: held_closed(&world, &plan, id, &guards),
                };
                (id.clone(), failure)
            })
            .collect();
        self.telemetry.publish(PassOutcome {
            plan: &plan,
            guards: self.guard_views.clone(),
            host_guard: self.dataplane.host_guard_counts(),
            interfaces: self.dataplane.interfaces(),
            maps: self.dataplane.map_use(),
            failures,
            probes: reports,
            duration: started.elapsed(),
        });
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        // Where the pass's time went: list and inspects, planning, the
        // dataplane, publishing status and metrics.
        let apply_ms = applied_ms - snapshot_ms - plan_ms;
        let publish_ms = duration_ms - applied_ms;
        let (targets, containers) = (plan.targets.len(), world.containers.len());
        // One line per pass at info; what happened to each target is at
        // debug (and its problems at warn, once per change).
        if !complete {
            info!(
                targets,
                containers, duration_ms, "reconcile stopped early for an event"
            );
        } else if std::mem::take(&mut self.initial_pass) {
            info!(
                targets,
                containers,
                inspected = snapshot.inspected,
                snapshot_ms,
                plan_ms,
                apply_ms,
                publish_ms,
                duration_ms,
                "initial reconcile complete"
            );
        } else {
            info!(
                targets,
                containers,
                listed = snapshot.listed,
                relevant = snapshot.relevant,
                inspected = snapshot.inspected,
                full = snapshot.full,
                partial = snapshot.partial,
                snapshot_ms,
                plan_ms,
                apply_ms,
                publish_ms,
                duration_ms,
                "reconciled"
            );
        }
        Ok(())
    }

    /// Tells the prober which warps to probe: every running warp with a
    /// readable probe label and a namespace of its own. The prober starts
    /// with the first such warp.
    fn probe_warps(&mut self, world: &World) {
        let warps: Vec<ProbedWarp> = (world.containers.iter())
            .filter(|c| c.running && c.network_mode == NetworkMode::Own)
            .filter(|c| is_warp_by_name(&self.settings.warp_name_pattern, c))
            .filter_map(|c| {
                let spec = probe_spec(&self.settings, c)?.ok()?;
                Some(ProbedWarp {
                    id: c.id.clone(),
                    pid: c.pid?,
                    spec,
                })
            })
            .collect();
        if self.probes.prober.is_none() && warps.is_empty() {
            return;
        }
        let Probes {
            settings,
            prober,
            wakeups,
        } = &mut self.probes;
        let prober = prober.get_or_insert_with(|| {
            let wakeups = Arc::clone(wakeups);
            Prober::spawn(*settings, move |id| wakeups.push(id))
        });
        prober.set_warps(warps);
    }

    /// Brings the bridge guards to the plan, and remembers them for status.
    async fn sync_guards(&mut self, client: &Client, plan: &Plan, verify: bool) {
        let (guards, complete) = self.inventory.guard_bridges(client, &plan.guards).await;
        let failures = (self.dataplane)
            .sync_guards(verify, &guards, complete, self.initial_pass)
            .await;
        for reason in failures {
            self.telemetry
                .metrics()
                .programming_failure("guard", reason);
        }
        self.guard_views = (guards.iter())
            .map(|(bridge, guard)| GuardView {
                network: guard.network.clone(),
                bridge: bridge.clone(),
            })
            .collect();
    }

    /// Brings every target to its plan, in [`pass_order`]: targets an event
    /// named (or whose warp it named) go first, so the latency of an event
    /// does not grow with the number of targets; every other target is
    /// still checked, unless an event arrives (see [`Reconciler::owed`]).
    async fn sync_targets(
        &mut self,
        plan: &Plan,
        scope: &mut PassScope,
        pending: &mut Pending,
        events_waiting: &dyn Fn() -> bool,
    ) -> TargetsDone {
        let order = pass_order(&plan.targets, |id| scope.named(id), &self.owed);
        let owed: HashSet<&str, foldhash::fast::RandomState> =
            self.owed.iter().map(String::as_str).collect();
        let continuing = order.iter().any(|t| owed.contains(t.id.as_str()));
        let mut served_owed = false;
        let mut done = TargetsDone {
            seen: IdSet::default(),
            left: None,
        };
        for (i, target) in order.iter().enumerate() {
            let is_owed = owed.contains(target.id.as_str());
            // Between targets, never inside one's write. A pass continuing
            // one that stopped early stops only among the targets that one
            // left and after serving one of them: the owed shrink every pass.
            let may_stop = !scope.named(&target.id) && (!continuing || (is_owed && served_owed));
            if may_stop && events_waiting() {
                // The rest stay as they are, not departed.
                let left: Vec<String> = order[i..].iter().map(|t| t.id.clone()).collect();
                done.seen.extend(left.iter().cloned());
                debug!(left = left.len(), "an event arrived; serving it first");
                done.left = Some(left);
                break;
            }
            served_owed |= is_owed;
            done.seen.insert(target.id.clone());
            if self.dataplane.settled(scope, target) {
                // Programmed as planned and not to be verified: nothing to
                // do, log or time (its classification was logged with the
                // plan it settled with; no event named it).
                continue;
            }
            let span = info_span!("target", container = %target.name, id = %short_id(&target.id));
            self.changes.classification(target);
            let programmed = (self.dataplane.sync_target(scope, target))
                .instrument(span.clone())
                .await;
            let _enter = span.enter();
            match programmed {
                Ok(changed) => {
                    if self.failed.remove(&target.id).is_some() {
                        info!("target programmed after a failure");
                    }
                    self.programmed(target, changed, pending)
                }
                Err(e) => {
                    let metrics = self.telemetry.metrics();
                    metrics.target_failures.inc();
                    metrics.programming_failure("target", e.reason());
                    (self.failed).insert(target.id.clone(), (e.to_string(), e.reason()));
                    warn!(error = %e, "programming the target failed; will retry on the next reconcile");
                }
            }
        }
        done
    }

    /// A target reached its plan: the event latency, if an event named it.
    fn programmed(&self, target: &TargetPlan, changed: bool, pending: &mut Pending) {
        if let Some(event_at) = pending.take(&target.id) {
            let latency = (SystemTime::now().duration_since(event_at)).unwrap_or_default();
            let metrics = self.telemetry.metrics();
            metrics.event_latency.observe(latency.as_secs_f64());
            info!(
                changed,
                latency_ms = latency.as_secs_f64() * 1e3,
                "target programmed after event"
            );
        } else if changed {
            debug!("target programmed on resync");
        }
    }

    /// Programs every container's caps, and uncaps containers that lost
    /// theirs but still run.
    async fn sync_caps(&mut self, plans: &[CapPlan], world: &World, scope: &mut PassScope) {
        let enforcement = self.settings.caps.enforcement;
        for cap_plan in plans {
            let span = info_span!("caps", container = %cap_plan.name, id = %short_id(&cap_plan.id));
            self.changes.cap_problems(cap_plan, &span);
            let programmed = (self.dataplane.sync_caps(scope, enforcement, cap_plan))
                .instrument(span.clone())
                .await;
            match programmed {
                Ok(true) => info!(
                    parent: &span,
                    egress = ?cap_plan.caps.egress.map(|c| c.rate.to_string()),
                    ingress = ?cap_plan.caps.ingress.map(|c| c.rate.to_string()),
                    "caps programmed"
                ),
                Ok(false) => {}
                Err(e) => {
                    let reason = FailureReason::of_caps(&e);
                    self.telemetry.metrics().programming_failure("caps", reason);
                    warn!(parent: &span, error = %e, "programming the caps failed; will retry on the next reconcile")
                }
            }
        }
        let wanted: HashSet<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        (self.dataplane)
            .release_caps(scope, world, &wanted, enforcement)
            .await;
    }
}

/// The containers the pending events named, and the targets whose warp
/// they named: these are served first and checked against the kernel.
fn named_by_events(world: &World, plan: &Plan, pending: &Pending) -> IdSet {
    if pending.is_empty() {
        return IdSet::default();
    }
    // The names of the containers named (a few), not an index of all;
    // the ids in a fast-hash set, as every container is looked up.
    let ids: IdSet = pending.id_set();
    let names: HashSet<&str, foldhash::fast::RandomState> = (world.containers.iter())
        .filter(|c| ids.contains(&c.id))
        .map(|c| c.name.as_str())
        .collect();
    // A group's target is named by an event about any of its members: the
    // one that died, or the one that came back.
    let warp_named = |t: &TargetPlan| {
        names.contains(t.warp.as_str()) || t.warp_group.iter().any(|w| names.contains(w.as_str()))
    };
    let targets = (plan.targets.iter())
        .filter(|t| !names.is_empty() && warp_named(t))
        .map(|t| t.id.clone());
    ids.into_iter().chain(targets).collect()
}

/// The order a pass serves its targets in: first those refused for room
/// (capacity, prefix limit), whose sets shrink to a catch-all and free the
/// room the others were admitted into; then those events named, then those
/// the last pass left when it stopped early (in the order it left them, so
/// none is overtaken forever), then the rest, cheapest (fewest entries)
/// first, so a few heavy writes hold up no ordinary target.
fn pass_order<'a>(
    targets: &'a [Arc<TargetPlan>],
    named: impl Fn(&str) -> bool,
    owed: &[String],
) -> Vec<&'a Arc<TargetPlan>> {
    let owed: HashMap<&str, usize, foldhash::fast::RandomState> = (owed.iter().enumerate())
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let refused_for_room =
        |t: &TargetPlan| matches!(&t.state, TargetState::Blocked(reason) if reason.is_limit());
    let mut order: Vec<&Arc<TargetPlan>> = targets.iter().collect();
    order.sort_by_cached_key(|t| match owed.get(t.id.as_str()) {
        _ if refused_for_room(t) => (0, 0),
        _ if named(&t.id) => (1, 0),
        Some(position) => (2, *position),
        None => (3, t.entries.len()),
    });
    order
}

/// Whether a target's traffic to what it steers or blocks is held closed
/// by what is in the kernel, although its own programming failed: the
/// bridge guard of each of its networks is in place and blocks every one
/// of its entries (routed from its address, it is dropped at the bridge).
/// False when that cannot be told: no networks of its own, no entries, or
/// a guard missing, failed or covering less.
fn held_closed(world: &World, plan: &Plan, id: &str, guards: &HashMap<String, GuardPlan>) -> bool {
    let (Some(target), Some(container)) = (
        plan.targets.iter().find(|t| t.id == id),
        world.containers.iter().find(|c| c.id == id),
    ) else {
        return false;
    };
    let covers = |guard: &GuardPlan| {
        (target.entries.iter()).all(|e| {
            let blocked = Entry {
                action: Action::Block,
                ..*e
            };
            // Sorted, without duplicates.
            guard.entries.binary_search(&blocked).is_ok()
        })
    };
    !target.entries.is_empty()
        && !container.networks.is_empty()
        && (container.networks.keys()).all(|network| guards.get(network).is_some_and(covers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Container, Endpoint, parse_rules},
        plan::{BlockReason, plan},
        telemetry::tests::settings,
    };

    fn container(name: &str, labels: &[(&str, &str)], ip: &str) -> Container {
        let endpoint = Endpoint {
            ipv4: Some(ip.parse().unwrap()),
            mac: Some(format!("mac-{name}")),
            network_id: Some("net-id".into()),
            ..Endpoint::default()
        };
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            running: true,
            pid: Some(100),
            labels: (labels.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: [("net".to_string(), endpoint)].into(),
            ..Container::default()
        }
    }

    /// `heavy` has three prefixes, `light` one, `other` two.
    fn world() -> World {
        let target = |name, rules, ip| container(name, &[("t", "warp-a"), ("r", rules)], ip);
        World {
            containers: vec![
                container("warp-a", &[], "172.30.0.2"),
                target(
                    "heavy",
                    "203.0.113.0/26,203.0.113.64/26,203.0.113.128/26",
                    "172.30.0.3",
                ),
                target("other", "198.51.100.0/25,198.51.100.128/25", "172.30.0.4"),
                target("light", "192.0.2.0/24", "172.30.0.5"),
            ],
        }
    }

    fn names(order: &[&Arc<TargetPlan>]) -> Vec<String> {
        order.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn a_pass_serves_named_then_owed_then_the_cheapest_first() {
        let plan = plan(&world(), &settings());
        let order = pass_order(&plan.targets, |_| false, &[]);
        assert_eq!(names(&order), ["light", "other", "heavy"]);
        let order = pass_order(&plan.targets, |id| id == "id-heavy", &[]);
        assert_eq!(names(&order), ["heavy", "light", "other"]);
        // What a pass left keeps its order, ahead of cheaper targets.
        let owed = ["id-heavy".to_owned(), "id-other".to_owned()];
        let order = pass_order(&plan.targets, |_| false, &owed);
        assert_eq!(names(&order), ["heavy", "other", "light"]);
        let order = pass_order(&plan.targets, |id| id == "id-light", &owed);
        assert_eq!(names(&order), ["light", "heavy", "other"]);
    }

    #[test]
    fn targets_refused_for_room_are_written_first_to_free_it() {
        let mut plan = plan(&world(), &settings());
        let heavy = plan.targets.iter_mut().find(|t| t.name == "heavy").unwrap();
        Arc::make_mut(heavy).state =
            TargetState::Blocked(BlockReason::TooManyPrefixes { count: 3, limit: 2 });
        let order = pass_order(&plan.targets, |id| id == "id-light", &[]);
        assert_eq!(names(&order), ["heavy", "light", "other"]);
    }

    #[test]
    fn a_failed_target_is_held_closed_only_by_guards_that_cover_it() {
        let world = world();
        let plan = plan(&world, &settings());
        let guard = plan.guards.iter().find(|g| g.network == "net").unwrap();
        let in_place = HashMap::from([("net".to_owned(), guard.clone())]);
        for target in ["id-heavy", "id-light"] {
            assert!(held_closed(&world, &plan, target, &in_place), "{target}");
        }
        assert!(
            !held_closed(&world, &plan, "id-heavy", &HashMap::new()),
            "no guard in place: cannot tell"
        );
        // A guard written for an older plan, before heavy's third prefix.
        let older = GuardPlan {
            entries: Entry::all(
                &parse_rules("203.0.113.0/26,203.0.113.64/26,192.0.2.0/24").unwrap(),
                Action::Block,
            ),
            ..guard.clone()
        };
        let in_place = HashMap::from([("net".to_owned(), older)]);
        assert!(held_closed(&world, &plan, "id-light", &in_place));
        assert!(
            !held_closed(&world, &plan, "id-heavy", &in_place),
            "a guard that covers less does not hold it"
        );
        assert!(!held_closed(&world, &plan, "id-gone", &in_place));
    }
}
