//! What the pass logs about classifications, once per change: a steered
//! target at debug, a problem (blocked, bypassed, refused) at warn.

use std::sync::Arc;

use crate::model::IdMap;

use tracing::{debug, warn};

use crate::{
    model::short_id,
    plan::{ById, CapPlan, PlansById, TargetPlan, TargetState},
};

/// The last logged state per target and cap problems per container, so a
/// classification is logged when it changes, not on every resync.
#[derive(Default)]
pub struct ChangeLog {
    /// The plan whose state was logged last, or a later one with the same
    /// state: the plan itself is shared with the pass, a copy of its state
    /// would not be.
    states: PlansById,
    cap_problems: IdMap<Vec<String>>,
}

impl ChangeLog {
    pub fn classification(&mut self, target: &Arc<TargetPlan>) {
        if let Some(logged) = self.states.get(target.id.as_str())
            && logged.0.state == target.state
        {
            // The newer plan, so that the older can go.
            self.states.replace(ById(Arc::clone(target)));
            return;
        }
        let id = short_id(&target.id);
        match &target.state {
            _ if target.shares_namespace_of.is_some() => debug!(
                container = %target.name, %id, warp = %target.warp,
                state = target.state.name(), note = ?target.sharing_note(),
                "target runs in another target's namespace; that target's policy serves both"
            ),
            TargetState::Steered {
                network,
                via_v4,
                via_v6,
            } => debug!(
                container = %target.name, %id, warp = %target.warp, %network,
                via_v4 = ?via_v4, via_v6 = ?via_v6, rules = target.entries.len(),
                "target steered through its warp container"
            ),
            TargetState::Blocked(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target blocked (fail closed)"
            ),
            TargetState::Bypassed(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target bypassed (on_warp_down = bypass)"
            ),
            TargetState::Filtered => debug!(
                container = %target.name, %id, rules = target.entries.len(),
                "container filtered by its allow and deny lists"
            ),
            TargetState::Refused(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target refused: netwarp does not touch its namespace"
            ),
        }
        self.states.replace(ById(Arc::clone(target)));
    }

    pub fn cap_problems(&mut self, plan: &CapPlan, span: &tracing::Span) {
        if self.cap_problems.get(&plan.id) == Some(&plan.problems) {
            return;
        }
        for problem in &plan.problems {
            warn!(parent: span, %problem, "ignoring a malformed cap label");
        }
        self.cap_problems
            .insert(plan.id.clone(), plan.problems.clone());
    }

    /// Forgets targets and containers that left.
    pub fn retain(&mut self, targets: impl Fn(&str) -> bool, capped: impl Fn(&str) -> bool) {
        self.states.retain(|logged| targets(&logged.0.id));
        self.cap_problems.retain(|id, _| capped(id));
    }
}
