//! What a warp's probe says to the planner. The prober runs the probes;
//! the pass hands its verdicts in by warp container id; here they become
//! a warp's usability, as pure data.

use std::collections::HashMap;

use super::{BlockReason, PlanSettings};
use crate::{
    model::Container,
    warp_probe::{ProbeSpec, ProbeVerdict},
};

/// The verdicts of the warps' probes, by warp container id.
pub type WarpProbes = HashMap<String, ProbeVerdict>;

/// A warp's probe as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// No probe label: Docker's view decides alone.
    Unprobed,
    Up,
    Pending(ProbeSpec),
    Down {
        spec: ProbeSpec,
        failed: usize,
        of: usize,
        error: String,
    },
    Invalid(String),
}

/// The probe a warp's label names, if it names one.
pub fn probe_spec(settings: &PlanSettings, warp: &Container) -> Option<Result<ProbeSpec, String>> {
    let text = warp.labels.get(&settings.probe_label)?;
    Some(text.parse::<ProbeSpec>().map_err(|e| e.to_string()))
}

pub fn probe_check(settings: &PlanSettings, probes: &WarpProbes, warp: &Container) -> ProbeCheck {
    let spec = match probe_spec(settings, warp) {
        None => return ProbeCheck::Unprobed,
        Some(Err(error)) => return ProbeCheck::Invalid(error),
        Some(Ok(spec)) => spec,
    };
    match probes.get(&warp.id) {
        Some(ProbeVerdict::Up) => ProbeCheck::Up,
        // Doubt fails closed: not probed yet is not usable.
        None | Some(ProbeVerdict::Unknown) => ProbeCheck::Pending(spec),
        Some(ProbeVerdict::Down {
            failed,
            of,
            last_error,
        }) => ProbeCheck::Down {
            spec,
            failed: *failed,
            of: *of,
            error: last_error.clone(),
        },
    }
}

impl ProbeCheck {
    /// Why the warp is unusable, if it is.
    pub fn reason(&self, settings: &PlanSettings, warp: &str) -> Option<BlockReason> {
        let warp = warp.to_owned();
        match self {
            Self::Unprobed | Self::Up => None,
            Self::Pending(spec) => Some(BlockReason::WarpProbePending {
                warp,
                probe: spec.to_string(),
            }),
            Self::Down {
                spec,
                failed,
                of,
                error,
            } => Some(BlockReason::WarpProbeFailing {
                warp,
                probe: spec.to_string(),
                failed: *failed,
                of: *of,
                error: error.clone(),
            }),
            Self::Invalid(error) => Some(BlockReason::WarpProbeInvalid {
                warp,
                label: settings.probe_label.clone(),
                error: error.clone(),
            }),
        }
    }
}
