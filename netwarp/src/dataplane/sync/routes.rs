//! The routes dataplane: policy routes and rules in each target's
//! namespace, guard rules in the host's, tbf qdiscs for caps.

use tracing::{debug, info};

use super::{PassScope, caps::CapsState};
use crate::{
    dataplane::{
        netns::NamespaceHandle,
        routes::{RoutesError, desired_state, diff},
    },
    model::short_id,
    plan::{GuardPlan, TargetPlan},
};

#[derive(Default)]
pub struct RoutesPlane {
    /// The guards last planned, by bridge.
    last_guards: Vec<(String, GuardPlan)>,
    pub caps: CapsState,
}

impl RoutesPlane {
    /// Brings one target's namespace to its plan. Returns whether anything
    /// changed.
    pub async fn sync_target(
        &mut self,
        scope: &mut PassScope,
        target: &TargetPlan,
    ) -> Result<bool, RoutesError> {
        let Some(pid) = target.pid else {
            return Ok(false);
        };
        let namespace =
            NamespaceHandle::open_owned(pid, &mut scope.claims, short_id(&target.id)).await?;
        let installed = namespace.installed().await?;
        let changes = diff(&installed, &desired_state(&target.entries));
        if changes.is_empty() {
            return Ok(false);
        }
        info!(
            put_routes = changes.put_routes.len(),
            add_rules = changes.add_rules.len(),
            delete_rules = changes.delete_rules.len(),
            delete_routes = changes.delete_routes.len(),
            "applying changes"
        );
        namespace
            .apply(&changes, target.mac_on_network.as_deref())
            .await?;
        Ok(true)
    }

    /// Brings the host's guard rules to the plan. A guard whose network
    /// could not be inspected would look unneeded: every installed rule is
    /// kept until all resolve.
    pub async fn sync_guards(&mut self, guards: &[(String, &GuardPlan)], complete: bool) {
        if !complete {
            debug!("a guarded network is unresolved; host guard rules kept");
            return;
        }
        self.caps.host.program_guards(guards).await;
        self.last_guards = (guards.iter())
            .map(|(bridge, guard)| (bridge.clone(), (*guard).clone()))
            .collect();
    }

    /// Docker is gone: the guards keep their prefixes and drop their
    /// allowed sources until the next pass (fail closed).
    pub async fn forget_guard_sources(&mut self) {
        let mut changed = false;
        for (_, guard) in &mut self.last_guards {
            changed |= !guard.allowed_sources.is_empty();
            guard.allowed_sources.clear();
        }
        if changed {
            let guards: Vec<(String, &GuardPlan)> = (self.last_guards.iter())
                .map(|(bridge, guard)| (bridge.clone(), guard))
                .collect();
            self.caps.host.program_guards(&guards).await;
        }
    }
}
