//! The warps' states: every running container whose name matches the warp
//! pattern, plus every warp a target names. Status and metrics show these.

use std::collections::BTreeMap;

use super::{PlanSettings, ProbeCheck, TargetPlan, WarpProbes, probe_check};
use crate::{
    glob,
    model::{Container, Health, NetworkMode, World},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarpState {
    /// Running, and healthy or without a healthcheck: usable.
    Up,
    /// Docker reports it unhealthy.
    Unhealthy,
    /// Its healthcheck has not passed yet: not usable.
    Starting,
    /// Exists but does not run (seen while it stops).
    NotRunning,
    /// Named by a target, but no running container has that name.
    Missing,
    /// Named by a target, but its name does not match the warp pattern.
    NotAWarp,
    /// Runs with `--network host`, `none` or another container's: no
    /// namespace of its own on a Docker network, so refused as a warp.
    Refused,
    /// Its probe has not answered yet: not usable.
    ProbePending,
    /// Its probe fails: its tunnel does not carry traffic.
    ProbeFailing,
    /// Its probe label cannot be read: not trusted.
    ProbeInvalid,
}

impl WarpState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Unhealthy => "unhealthy",
            Self::Starting => "starting",
            Self::NotRunning => "not-running",
            Self::Missing => "missing",
            Self::NotAWarp => "not-a-warp",
            Self::Refused => "refused",
            Self::ProbePending => "probe-pending",
            Self::ProbeFailing => "probe-failing",
            Self::ProbeInvalid => "probe-invalid",
        }
    }
}

/// One warp as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarpPlan {
    pub name: String,
    /// Short (12 character) id; `None` when no such container runs.
    pub id: Option<String>,
    pub state: WarpState,
    /// Targets naming this warp (of a group, carried by it).
    pub targets: usize,
}

/// The state of a container as a warp.
fn classify(settings: &PlanSettings, probes: &WarpProbes, container: &Container) -> WarpState {
    let matches = glob::matches(&settings.warp_name_pattern, &container.name);
    let own = container.network_mode == NetworkMode::Own;
    match (matches, container.running, container.health) {
        (false, _, _) => WarpState::NotAWarp,
        (true, false, _) => WarpState::NotRunning,
        (true, true, _) if !own => WarpState::Refused,
        (true, true, Health::Unhealthy) => WarpState::Unhealthy,
        (true, true, Health::Starting) => WarpState::Starting,
        (true, true, _) => match probe_check(settings, probes, container) {
            ProbeCheck::Unprobed | ProbeCheck::Up => WarpState::Up,
            ProbeCheck::Pending(_) => WarpState::ProbePending,
            ProbeCheck::Down { .. } => WarpState::ProbeFailing,
            ProbeCheck::Invalid(_) => WarpState::ProbeInvalid,
        },
    }
}

/// Every warp-named container and every warp a target names, by name.
pub fn plan_warps(
    world: &World,
    settings: &PlanSettings,
    probes: &WarpProbes,
    targets: &[std::sync::Arc<TargetPlan>],
) -> Vec<WarpPlan> {
    let mut named: BTreeMap<&str, usize> = BTreeMap::new();
    for target in targets {
        // A spread target counts on every member carrying its flows.
        let mut carriers: Vec<&str> = target.spread.iter().map(|m| m.name.as_str()).collect();
        if carriers.is_empty() {
            carriers.push(target.warp.as_str());
        }
        for name in carriers {
            *named.entry(name).or_default() += 1;
        }
    }
    let mut warps: BTreeMap<String, WarpPlan> = BTreeMap::new();
    for container in &world.containers {
        let matches = glob::matches(&settings.warp_name_pattern, &container.name);
        if !matches && !named.contains_key(container.name.as_str()) {
            continue;
        }
        let warp = WarpPlan {
            name: container.name.clone(),
            id: Some(container.short_id().to_owned()),
            state: classify(settings, probes, container),
            targets: named.get(container.name.as_str()).copied().unwrap_or(0),
        };
        warps.insert(container.name.clone(), warp);
    }
    for (name, targets) in named {
        if name.is_empty() || warps.contains_key(name) {
            continue;
        }
        let warp = WarpPlan {
            name: name.to_owned(),
            id: None,
            state: WarpState::Missing,
            targets,
        };
        warps.insert(name.to_owned(), warp);
    }
    warps.into_values().collect()
}
