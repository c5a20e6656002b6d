//! The one interface the reconcile pass programs through. Each dataplane
//! is its own type and keeps its own record of what it programmed;
//! [`Dataplane`] only delegates, so the pass never asks which one it has.

mod caps;
mod ebpf;
mod host;
mod routes;

use std::collections::{HashMap, HashSet};

pub use ebpf::EbpfPlane;
pub use host::HostNetlink;
pub use routes::RoutesPlane;

use super::{
    caps::CapsError,
    dry_run::DryRunDataplane,
    ebpf::{EbpfDataplane, EbpfError, ProgramLogger, compile::CompileError},
    netns::NamespaceClaims,
    routes::RoutesError,
};
use crate::{
    config::DataplaneMode,
    model::World,
    plan::{CapEnforcement, CapPlan, GuardPlan, TargetPlan},
    telemetry::TargetInterfaces,
};

/// Why one target could not be programmed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Endpoint(String),
}

/// What one pass shares across its targets.
#[derive(Default)]
pub struct PassScope {
    /// Each namespace is written for one container per pass, and the
    /// host's never (`NamespaceHandle` refuses it).
    pub claims: NamespaceClaims,
}

/// The dataplane the reconciler programs.
pub enum Dataplane {
    Routes(RoutesPlane),
    Ebpf(Box<EbpfPlane>),
    /// A simulation that programs nothing; see [`crate::dataplane::dry_run`].
    DryRun(DryRunDataplane),
}

impl Dataplane {
    pub fn routes() -> Self {
        Self::Routes(RoutesPlane::default())
    }

    pub fn ebpf(ebpf: EbpfDataplane) -> Self {
        Self::Ebpf(Box::new(EbpfPlane::new(ebpf)))
    }

    pub fn dry_run(record: Option<std::path::PathBuf>) -> Self {
        Self::DryRun(DryRunDataplane::new(record))
    }

    pub fn mode(&self) -> DataplaneMode {
        match self {
            Self::Routes(_) => DataplaneMode::Routes,
            Self::Ebpf(_) => DataplaneMode::Ebpf,
            Self::DryRun(_) => DataplaneMode::DryRun,
        }
    }

    /// The eBPF programs' log, once.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        match self {
            Self::Ebpf(plane) => plane.take_logger(),
            _ => None,
        }
    }

    /// Brings one target to its plan. Returns whether anything changed.
    pub async fn sync_target(
        &mut self,
        scope: &mut PassScope,
        target: &TargetPlan,
    ) -> Result<bool, TargetError> {
        match self {
            Self::Routes(plane) => Ok(plane.sync_target(scope, target).await?),
            Self::Ebpf(plane) => plane.sync_target(scope, target).await,
            Self::DryRun(dry) => Ok(dry.program(target)),
        }
    }

    /// Brings the bridge guards to the plan. `complete`: every planned
    /// guard's bridge was resolved, so a guard not planned is unneeded.
    pub async fn sync_guards(
        &mut self,
        guards: &[(String, &GuardPlan)],
        complete: bool,
        first_pass: bool,
    ) {
        match self {
            Self::Routes(plane) => plane.sync_guards(guards, complete).await,
            Self::Ebpf(plane) => {
                plane.sync_guards(guards, complete);
                if first_pass {
                    // A routes-mode run may have left its host rules.
                    plane.caps.host.remove_guards().await;
                }
            }
            Self::DryRun(_) => {}
        }
    }

    /// Brings one container's caps to its plan. Returns whether anything
    /// changed. The dry-run simulation models steering only.
    pub async fn sync_caps(
        &mut self,
        scope: &mut PassScope,
        enforcement: CapEnforcement,
        plan: &CapPlan,
    ) -> Result<bool, CapsError> {
        match self {
            Self::Routes(plane) => plane.caps.sync(None, scope, enforcement, plan).await,
            Self::Ebpf(plane) => {
                let (ebpf, caps) = plane.caps_parts();
                caps.sync(Some(ebpf), scope, enforcement, plan).await
            }
            Self::DryRun(_) => Ok(false),
        }
    }

    /// Uncaps running containers no longer `wanted` and forgets those
    /// that left.
    pub async fn release_caps(
        &mut self,
        scope: &mut PassScope,
        world: &World,
        wanted: &HashSet<&str>,
        enforcement: CapEnforcement,
    ) {
        match self {
            Self::Routes(plane) => {
                (plane.caps)
                    .release(None, scope, world, wanted, enforcement)
                    .await;
            }
            Self::Ebpf(plane) => {
                let (ebpf, caps) = plane.caps_parts();
                let departed = caps
                    .release(Some(ebpf), scope, world, wanted, enforcement)
                    .await;
                plane.caps_departed(departed.iter().flat_map(|c| c.host_ifindexes()));
            }
            Self::DryRun(_) => {}
        }
    }

    /// Docker is gone, perhaps restarting: every container may come back
    /// with another address, and a target with a known one. Until the next
    /// pass the guards know no source (fail closed).
    pub async fn forget_guard_sources(&mut self) {
        match self {
            Self::Routes(plane) => plane.forget_guard_sources().await,
            Self::Ebpf(plane) => plane.forget_guard_sources(),
            Self::DryRun(_) => {}
        }
    }

    /// Releases what targets that left (not `seen` this pass) held.
    pub fn release_departed(&mut self, seen: &HashSet<String>) {
        if let Self::Ebpf(plane) = self {
            plane.release_departed(seen);
        }
    }

    /// Ends a pass (the dry-run record is written here).
    pub fn finish_pass(&mut self, seen: &HashSet<String>) {
        if let Self::DryRun(dry) = self {
            dry.finish_pass(seen);
        }
    }

    /// The interfaces each programmed target uses, for status and metrics.
    pub fn interfaces(&self) -> HashMap<String, TargetInterfaces> {
        match self {
            Self::Ebpf(plane) => plane.interfaces(),
            _ => HashMap::new(),
        }
    }
}
