//! The routes dataplane: policy routes and rules in each target's
//! namespace, guard rules in the host's, tbf qdiscs for caps.

use std::sync::Arc;

use tracing::debug;

use super::{FailureReason, PassScope, caps::CapsState, is_settled, owned};
use crate::{
    dataplane::{
        routes::{RoutesError, desired_state, diff, spread_over},
        settled::Settled,
    },
    model::short_id,
    plan::{GuardPlan, TargetPlan},
};

#[derive(Default)]
pub struct RoutesPlane {
    /// The target plans last programmed.
    pub(super) settled: Settled<Arc<TargetPlan>>,
    /// The guards last programmed, by bridge; `None` until a write
    /// succeeded (or after one failed).
    last_guards: Option<Vec<(String, GuardPlan)>>,
    pub caps: CapsState,
}

impl RoutesPlane {
    /// Brings one target's namespace to its plan. Returns whether anything
    /// changed.
    pub async fn sync_target(
        &mut self,
        scope: &mut PassScope,
        target: &Arc<TargetPlan>,
    ) -> Result<bool, RoutesError> {
        if (self.settled).unchanged(&target.id, target, scope.verifies(&target.id)) {
            return Ok(false);
        }
        let result = write_target(scope, target).await;
        self.settled.record(&target.id, target, &result);
        result
    }

    /// Brings the host's guard rules to the plan. A guard whose network
    /// could not be inspected would look unneeded: every installed rule is
    /// kept until all resolve. Returns why the write failed, if it did.
    pub async fn sync_guards(
        &mut self,
        guards: &[(String, &GuardPlan)],
        complete: bool,
        verify: bool,
    ) -> Vec<FailureReason> {
        if !complete {
            debug!("a guarded network is unresolved; host guard rules kept");
            return Vec::new();
        }
        if !verify && is_settled(self.last_guards.as_deref(), guards) {
            return Vec::new();
        }
        let planned = owned(guards);
        let written = self.caps.host.program_guards(guards, verify).await;
        self.last_guards = written.is_ok().then_some(planned);
        written.err().into_iter().collect()
    }

    /// The guards known to be in place as last written, by network; none
    /// after a write failed (what it left is unknown).
    pub fn guards_in_place(&self) -> impl Iterator<Item = &GuardPlan> {
        self.last_guards.iter().flatten().map(|(_, guard)| guard)
    }

    /// Docker is gone: the guards keep their prefixes and drop their
    /// allowed sources until the next pass (fail closed).
    pub async fn forget_guard_sources(&mut self) {
        let Some(mut closed) = self.last_guards.take() else {
            return;
        };
        let mut changed = false;
        for (_, guard) in &mut closed {
            changed |= !guard.allowed_sources.is_empty();
            guard.allowed_sources.clear();
        }
        if changed {
            let guards: Vec<(String, &GuardPlan)> = (closed.iter())
                .map(|(bridge, guard)| (bridge.clone(), guard))
                .collect();
            let written = self.caps.host.program_guards(&guards, false).await;
            self.last_guards = written.is_ok().then_some(closed);
        } else {
            self.last_guards = Some(closed);
        }
    }

    /// Forgets the targets that left.
    pub fn finish_pass(&mut self, seen: &crate::model::IdSet) {
        self.settled.retain(|id| seen.contains(id));
    }
}

async fn write_target(scope: &mut PassScope, target: &TargetPlan) -> Result<bool, RoutesError> {
    let Some(pid) = target.pid else {
        return Ok(false);
    };
    let namespace = scope.owned(pid, short_id(&target.id)).await?;
    if target.spread.len() > 1 {
        namespace.hash_multipath_without_source_port().await?;
    }
    let installed = namespace.installed().await?;
    let desired = spread_over(desired_state(&target.entries), &target.spread);
    let changes = diff(&installed, &desired)?;
    if changes.is_empty() {
        return Ok(false);
    }
    debug!(
        put_routes = changes.put_routes.len(),
        add_rules = changes.add_rules.len(),
        delete_rules = changes.delete_rules.len() + changes.delete_strays.len(),
        delete_routes = changes.delete_routes.len(),
        "applying changes"
    );
    namespace
        .apply(&changes, target.mac_on_network.as_deref())
        .await?;
    Ok(true)
}
