//! One reconcile pass, level-triggered: snapshot → plan → apply → publish.
//! Docker events only mark containers dirty; each pass lists every
//! container (inspecting only the targets and warps whose cached inspect
//! may be stale, see [`crate::inventory`]), plans from scratch, and has the
//! dataplane bring each target, guard and cap to its plan. A periodic
//! resync re-inspects everything and is the safety net, so lost events,
//! reconnects and restarts cannot corrupt state.

mod log;

use std::{
    collections::{HashMap, HashSet},
    time::{Instant, SystemTime},
};

use bollard::Docker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    dataplane::sync::{Dataplane, PassScope},
    docker,
    inventory::Inventory,
    model::{World, short_id},
    plan::{CapPlan, Plan, PlanSettings, TargetPlan, plan},
    telemetry::{GuardView, PassOutcome, Telemetry},
};

/// Drives the passes: owns the dataplane, the snapshot's cache of
/// inspects, and the telemetry each pass publishes to.
pub struct Reconciler {
    settings: PlanSettings,
    dataplane: Dataplane,
    changes: log::ChangeLog,
    /// The container snapshot, with its cache of inspects.
    inventory: Inventory,
    /// No pass has completed since the last (re)connect.
    initial_pass: bool,
    /// The next pass checks everything against the kernel: the first, the
    /// periodic resync, after a reconnect or lost events, after a reload.
    verify_next: bool,
    /// The last pass stopped early for an event; this one may not.
    cut_short: bool,
    /// The guards the last complete pass resolved, for status.
    guard_views: Vec<GuardView>,
    /// Metrics, and the snapshot `netwarp status` and scrapes read.
    telemetry: Telemetry,
}

/// What the targets' part of a pass leaves for the rest.
struct TargetsDone {
    seen: HashSet<String>,
    failures: HashMap<String, String>,
    /// An event arrived: the targets no event named were left for the
    /// next pass, which follows at once.
    cut_short: bool,
}

impl Reconciler {
    pub fn new(mut settings: PlanSettings, dataplane: Dataplane) -> Self {
        settings.rule_capacity = dataplane.rule_capacity();
        Self {
            inventory: Inventory::new(&settings),
            settings,
            dataplane,
            changes: log::ChangeLog::default(),
            initial_pass: true,
            verify_next: true,
            cut_short: false,
            guard_views: Vec::new(),
            telemetry: Telemetry::disabled(),
        }
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
    }

    /// One full pass. Per-target failures are logged and retried on the
    /// next pass; only a Docker failure aborts the pass. When
    /// `events_waiting` says an event arrived meanwhile, the pass stops
    /// after the targets events named, so the new event is served next
    /// (never twice in a row, so every target is still reached).
    pub async fn reconcile(
        &mut self,
        client: &Docker,
        pending: &mut HashMap<String, SystemTime>,
        events_waiting: &dyn Fn() -> bool,
    ) -> Result<(), docker::DockerError> {
        let started = Instant::now();
        let (world, snapshot) = self.inventory.snapshot(client, pending).await?;
        let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
        let plan = plan(&world, &self.settings);
        let named = named_by_events(&world, &plan, pending);
        let mut scope = PassScope::new(std::mem::take(&mut self.verify_next), named);
        let may_stop = !std::mem::take(&mut self.cut_short) && !self.initial_pass;
        let events_waiting = || may_stop && events_waiting();
        let done = (self.sync_targets(&plan, &mut scope, pending, &events_waiting)).await;
        if done.cut_short {
            // What this pass owed is owed by the next one.
            self.cut_short = true;
            self.verify_next |= scope.verify;
        } else {
            let (guards, complete) = self.inventory.guard_bridges(client, &plan.guards).await;
            (self.dataplane)
                .sync_guards(&scope, &guards, complete, self.initial_pass)
                .await;
            self.sync_caps(&plan.caps, &world, &mut scope).await;
            self.guard_views = (guards.iter())
                .map(|(bridge, guard)| GuardView {
                    network: guard.network.clone(),
                    bridge: bridge.clone(),
                })
                .collect();
        }
        self.changes.retain(
            |id| done.seen.contains(id),
            |id| plan.caps.iter().any(|c| c.id == id),
        );
        self.dataplane.release_departed(&scope, &done.seen);
        self.dataplane.finish_pass(&done.seen);
        pending.clear();
        self.telemetry.publish(PassOutcome {
            plan: &plan,
            guards: self.guard_views.clone(),
            interfaces: self.dataplane.interfaces(),
            maps: self.dataplane.map_use(),
            failures: done.failures,
            duration: started.elapsed(),
        });
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let (targets, containers) = (plan.targets.len(), world.containers.len());
        if std::mem::take(&mut self.initial_pass) {
            info!(
                targets,
                containers,
                inspected = snapshot.inspected,
                snapshot_ms,
                duration_ms,
                "initial reconcile complete"
            );
        } else {
            debug!(
                targets,
                containers,
                relevant = snapshot.relevant,
                inspected = snapshot.inspected,
                full = snapshot.full,
                snapshot_ms,
                duration_ms,
                "reconciled"
            );
        }
        Ok(())
    }

    /// Brings every target to its plan. Targets an event named (or whose
    /// warp it named) go first, so the latency of an event does not grow
    /// with the number of targets; every other target is still checked.
    async fn sync_targets(
        &mut self,
        plan: &Plan,
        scope: &mut PassScope,
        pending: &mut HashMap<String, SystemTime>,
        events_waiting: &dyn Fn() -> bool,
    ) -> TargetsDone {
        let mut order: Vec<&TargetPlan> = plan.targets.iter().collect();
        order.sort_by_key(|t| !scope.named(&t.id));
        let mut done = TargetsDone {
            seen: HashSet::new(),
            failures: HashMap::new(),
            cut_short: false,
        };
        for (i, target) in order.iter().enumerate() {
            if !scope.named(&target.id) && events_waiting() {
                // The rest stay as they are, not departed.
                done.seen.extend(order[i..].iter().map(|t| t.id.clone()));
                done.cut_short = true;
                debug!(left = order.len() - i, "an event arrived; serving it first");
                break;
            }
            done.seen.insert(target.id.clone());
            let span = info_span!("target", container = %target.name, id = %short_id(&target.id));
            self.changes.classification(target);
            let programmed = (self.dataplane.sync_target(scope, target))
                .instrument(span.clone())
                .await;
            let _enter = span.enter();
            match programmed {
                Ok(changed) => self.programmed(target, changed, pending),
                Err(e) => {
                    self.telemetry.metrics().target_failures.inc();
                    done.failures.insert(target.id.clone(), e.to_string());
                    warn!(error = %e, "programming the target failed; will retry on the next reconcile");
                }
            }
        }
        done
    }

    /// A target reached its plan: the event latency, if an event named it.
    fn programmed(
        &self,
        target: &TargetPlan,
        changed: bool,
        pending: &mut HashMap<String, SystemTime>,
    ) {
        if let Some(event_at) = pending.remove(&target.id) {
            let latency = (SystemTime::now().duration_since(event_at)).unwrap_or_default();
            let metrics = self.telemetry.metrics();
            metrics.event_latency.observe(latency.as_secs_f64());
            info!(
                changed,
                latency_ms = latency.as_secs_f64() * 1e3,
                "target programmed after event"
            );
        } else if changed {
            info!("target programmed on resync");
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
fn named_by_events(
    world: &World,
    plan: &Plan,
    pending: &HashMap<String, SystemTime>,
) -> HashSet<String> {
    let ids_by_name: HashMap<&str, &str> = (world.containers.iter())
        .map(|c| (c.name.as_str(), c.id.as_str()))
        .collect();
    let warp_named = |t: &TargetPlan| {
        (ids_by_name.get(t.warp.as_str())).is_some_and(|id| pending.contains_key(*id))
    };
    let targets = (plan.targets.iter())
        .filter(|t| warp_named(t))
        .map(|t| t.id.clone());
    pending.keys().cloned().chain(targets).collect()
}
