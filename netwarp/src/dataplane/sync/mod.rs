//! The one interface the reconcile pass programs through. Each dataplane
//! is its own type and keeps its own record of what it programmed;
//! [`Dataplane`] only delegates, so the pass never asks which one it has.

mod caps;
mod ebpf;
mod host;
mod routes;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

pub use ebpf::EbpfPlane;
pub use host::HostNetlink;
pub use routes::RoutesPlane;

use super::{
    caps::CapsError,
    dry_run::DryRunDataplane,
    ebpf::{EbpfDataplane, EbpfError, ProgramLogger, compile::CompileError},
    netns::{NamespaceClaims, NamespaceHandle, NetnsError},
    qdisc::QdiscError,
    routes::RoutesError,
};
use crate::{
    config::DataplaneMode,
    model::{IdSet, World},
    plan::{CapEnforcement, CapPlan, GuardPlan, RuleCapacity, TargetPlan},
};

/// What the eBPF dataplane tied one target to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetInterfaces {
    /// The host-side veth carrying its policy.
    pub host_ifindex: u32,
    /// The warp's veth it is steered to; 0 while blocked.
    pub warp_ifindex: u32,
    /// The warp's veths that know it (all the warp's networks).
    pub warp_ports: Vec<u32>,
    /// Why it is steered by routes in its namespace instead (no host-side
    /// veth to carry its policy), if it is.
    pub routed: Option<String>,
}

/// How full one eBPF map is, from what the dataplane wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUse {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: usize,
}

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

/// Why programming failed, as a small fixed set: the `reason` label of
/// `netwarp_programming_failures_total`, never free text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// Entering or claiming the container's network namespace.
    Namespace,
    /// An interface (veth, bridge) is missing or not found by its MAC.
    Interface,
    /// A netlink request (routes, rules, qdiscs) failed.
    Netlink,
    /// An eBPF map has no room left for the rows.
    MapFull,
    /// Any other eBPF map operation.
    Map,
    /// Attaching or pinning an eBPF program.
    Attach,
    /// Loading the eBPF object.
    Load,
    /// The rules do not fit the eBPF dataplane.
    Compile,
    /// A cap conflicts with a qdisc netwarp did not make.
    Conflict,
    /// netwarp's range of routing tables has no free id for a selector.
    Tables,
}

impl FailureReason {
    pub const ALL: [Self; 10] = [
        Self::Namespace,
        Self::Interface,
        Self::Netlink,
        Self::MapFull,
        Self::Map,
        Self::Attach,
        Self::Load,
        Self::Compile,
        Self::Conflict,
        Self::Tables,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Interface => "interface",
            Self::Netlink => "netlink",
            Self::MapFull => "map_full",
            Self::Map => "map",
            Self::Attach => "attach",
            Self::Load => "load",
            Self::Compile => "compile",
            Self::Conflict => "conflict",
            Self::Tables => "tables",
        }
    }

    pub fn of_netns(e: &NetnsError) -> Self {
        match e {
            NetnsError::Netlink { .. } | NetnsError::Nexthop { .. } => Self::Netlink,
            NetnsError::NexthopInterface { .. } => Self::Interface,
            NetnsError::Netns { .. }
            | NetnsError::HostNamespace { .. }
            | NetnsError::NamespaceClaimed { .. }
            | NetnsError::ReadOnly { .. }
            | NetnsError::Sysctl { .. }
            | NetnsError::TxChecksum { .. } => Self::Namespace,
            NetnsError::Tables(_) => Self::Tables,
        }
    }

    pub fn of_ebpf(e: &EbpfError) -> Self {
        match e {
            EbpfError::Load(_)
            | EbpfError::MissingProgram(_)
            | EbpfError::MissingMap(_)
            | EbpfError::RulesCapacity { .. } => Self::Load,
            EbpfError::Program { .. }
            | EbpfError::Attach { .. }
            | EbpfError::PinDir { .. }
            | EbpfError::Pin { .. } => Self::Attach,
            EbpfError::NoInterface(_) | EbpfError::NoInterfaceNamed(_) => Self::Interface,
            EbpfError::Map { source, .. } if super::ebpf::map_is_full(source) => Self::MapFull,
            EbpfError::Map { .. } => Self::Map,
        }
    }

    pub fn of_caps(e: &CapsError) -> Self {
        match e {
            CapsError::Routes(e) => Self::of_netns(e),
            CapsError::Ebpf(e) => Self::of_ebpf(e),
            CapsError::Qdisc(QdiscError::Netlink { .. }) | CapsError::HostNetlink(_) => {
                Self::Netlink
            }
            CapsError::Qdisc(QdiscError::Foreign { .. }) => Self::Conflict,
            CapsError::NoInterface(_) => Self::Interface,
        }
    }
}

impl TargetError {
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::Routes(e) => FailureReason::of_netns(e),
            Self::Ebpf(e) => FailureReason::of_ebpf(e),
            Self::Compile(_) => FailureReason::Compile,
            Self::Endpoint(_) => FailureReason::Interface,
        }
    }
}

/// What one pass shares across its targets: whether it verifies against
/// the kernel, the namespaces it claimed, and what it looked up.
#[derive(Default)]
pub struct PassScope {
    /// The periodic resync, a reconnect or the first pass: every target,
    /// guard and cap is checked against the kernel, changed or not. An
    /// ordinary pass costs an unchanged one nothing.
    pub verify: bool,
    /// Containers an event named (and targets whose warp it named): they
    /// are checked against the kernel even in an ordinary pass.
    named: IdSet,
    /// Each namespace is written for one container per pass, and the
    /// host's never (`NamespaceHandle` refuses it).
    claims: NamespaceClaims,
    /// Namespaces opened for writing, by pid, with their owner.
    owned: HashMap<u32, (String, Arc<NamespaceHandle>)>,
    /// Namespaces opened for reading (warps), by pid.
    read: HashMap<u32, Arc<NamespaceHandle>>,
    /// The eBPF dataplane's warp lookups, by warp pid and MAC.
    warp_ends: HashMap<(u32, String), ebpf::WarpEnds>,
}

impl PassScope {
    pub fn new(verify: bool, named: IdSet) -> Self {
        Self {
            verify,
            named,
            ..Self::default()
        }
    }

    /// Whether the container `id` is checked against the kernel this pass,
    /// even if its plan did not change.
    pub fn verifies(&self, id: &str) -> bool {
        self.verify || self.named(id)
    }

    /// Whether an event named the container `id` (or a target's warp).
    pub fn named(&self, id: &str) -> bool {
        self.named.contains(id)
    }

    /// The namespace of `pid`, for writing on behalf of `owner`; opened
    /// once per pass.
    pub async fn owned(
        &mut self,
        pid: u32,
        owner: &str,
    ) -> Result<Arc<NamespaceHandle>, NetnsError> {
        if let Some((cached_owner, namespace)) = self.owned.get(&pid)
            && cached_owner == owner
        {
            return Ok(Arc::clone(namespace));
        }
        let namespace = Arc::new(NamespaceHandle::open_owned(pid, &mut self.claims, owner).await?);
        (self.owned).insert(pid, (owner.to_owned(), Arc::clone(&namespace)));
        Ok(namespace)
    }

    /// The namespace of `pid`, for reading; opened once per pass.
    pub async fn read(&mut self, pid: u32) -> Result<Arc<NamespaceHandle>, NetnsError> {
        if let Some(namespace) = self.read.get(&pid) {
            return Ok(Arc::clone(namespace));
        }
        let namespace = Arc::new(NamespaceHandle::open(pid).await?);
        self.read.insert(pid, Arc::clone(&namespace));
        Ok(namespace)
    }
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

    /// Whether [`Dataplane::sync_target`] would skip `target`: its plan is
    /// the one last programmed and the scope does not verify it. A pass
    /// skips such a target without building anything for it (no span).
    pub fn settled(&self, scope: &PassScope, target: &Arc<TargetPlan>) -> bool {
        let verify = scope.verifies(&target.id);
        match self {
            Self::Routes(plane) => plane.settled.unchanged(&target.id, target, verify),
            Self::Ebpf(plane) => plane.settled.unchanged(&target.id, target, verify),
            Self::DryRun(dry) => dry.settled(target, verify),
        }
    }

    /// Brings one target to its plan. Returns whether anything changed.
    /// Unless the scope verifies it, a target whose plan is the one last
    /// programmed costs nothing: no netlink, no namespace switch, no map
    /// scan.
    pub async fn sync_target(
        &mut self,
        scope: &mut PassScope,
        target: &Arc<TargetPlan>,
    ) -> Result<bool, TargetError> {
        match self {
            Self::Routes(plane) => Ok(plane.sync_target(scope, target).await?),
            Self::Ebpf(plane) => plane.sync_target(scope, target).await,
            Self::DryRun(dry) => dry.program(target, scope.verifies(&target.id)),
        }
    }

    /// Brings the bridge guards to the plan. `complete`: every planned
    /// guard's bridge was resolved, so a guard not planned is unneeded.
    /// Returns why guards failed, one reason per failure.
    pub async fn sync_guards(
        &mut self,
        verify: bool,
        guards: &[(String, &GuardPlan)],
        complete: bool,
        first_pass: bool,
    ) -> Vec<FailureReason> {
        match self {
            Self::Routes(plane) => plane.sync_guards(guards, complete, verify).await,
            Self::Ebpf(plane) => {
                let failures = plane.sync_guards(guards, complete, verify);
                if first_pass {
                    // A routes-mode run may have left its host rules.
                    plane.caps.host.remove_guards().await;
                }
                failures
            }
            Self::DryRun(dry) => dry.sync_guards(guards),
        }
    }

    /// The bridge guards known to be in the kernel as last written, by
    /// network: what a target whose own programming failed can rely on.
    pub fn guards_in_place(&self) -> HashMap<String, GuardPlan> {
        let in_place: Vec<&GuardPlan> = match self {
            Self::Routes(plane) => plane.guards_in_place().collect(),
            Self::Ebpf(plane) => plane.guards_in_place().collect(),
            Self::DryRun(dry) => dry.guards_in_place().collect(),
        };
        (in_place.into_iter())
            .map(|g| (g.network.clone(), g.clone()))
            .collect()
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
                // Every cap is now known: the peer redirects follow them.
                if let Err(e) = plane.caps_parts().0.caps_synced() {
                    tracing::warn!(error = %e, "updating the targets' peer redirects failed; will retry");
                }
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
    pub fn release_departed(&mut self, scope: &PassScope, seen: &IdSet) {
        if let Self::Ebpf(plane) = self {
            plane.release_departed(seen, scope.verify);
        }
    }

    /// Ends a pass: targets that left are forgotten (the dry-run record is
    /// handed to its writer here).
    pub fn finish_pass(&mut self, seen: &IdSet) {
        match self {
            Self::Routes(plane) => plane.finish_pass(seen),
            Self::Ebpf(_) => {}
            Self::DryRun(dry) => dry.finish_pass(seen),
        }
    }

    /// Waits until the dry-run record holds the last pass (for whoever
    /// reads it right after a pass); nothing to wait for otherwise.
    pub fn flush_record(&self) {
        if let Self::DryRun(dry) = self {
            dry.flush_record();
        }
    }

    /// What the routes dataplane's host guard holds (rules, tables,
    /// routes) after its last write, for status and metrics; `None` in the
    /// other dataplanes and before the first write.
    pub fn host_guard_counts(&self) -> Option<crate::dataplane::host_guard::GuardCounts> {
        match self {
            Self::Routes(plane) => plane.caps.host.guard_counts(),
            _ => None,
        }
    }

    /// The interfaces each programmed target uses, for status and metrics.
    pub fn interfaces(&self) -> HashMap<String, TargetInterfaces> {
        match self {
            Self::Ebpf(plane) => plane.interfaces(),
            _ => HashMap::new(),
        }
    }

    /// The rule tries' capacity the planner admits targets against; only
    /// the eBPF dataplane has one.
    pub fn rule_capacity(&self) -> Option<RuleCapacity> {
        match self {
            Self::Ebpf(plane) => Some(plane.rule_capacity()),
            _ => None,
        }
    }

    /// How full each eBPF map is, for status and metrics.
    pub fn map_use(&self) -> Vec<MapUse> {
        match self {
            Self::Ebpf(plane) => plane.map_use(),
            _ => Vec::new(),
        }
    }
}

/// Whether the guards last written (`settled`) are `guards` (bridge, plan):
/// compared in place, since a guard holds tens of thousands of entries
/// with heavy rules labels and most passes change none.
fn is_settled(settled: Option<&[(String, GuardPlan)]>, guards: &[(String, &GuardPlan)]) -> bool {
    settled.is_some_and(|settled| {
        settled.len() == guards.len()
            && (settled.iter().zip(guards)).all(|((bridge, plan), (wanted_bridge, wanted))| {
                bridge == wanted_bridge && plan == *wanted
            })
    })
}

/// `guards` as the dataplanes remember them.
fn owned(guards: &[(String, &GuardPlan)]) -> Vec<(String, GuardPlan)> {
    (guards.iter())
        .map(|(bridge, guard)| (bridge.clone(), (*guard).clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;

    fn map_error(errno: i32) -> EbpfError {
        EbpfError::Map {
            map: "m",
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    #[test]
    fn failures_fall_into_a_small_fixed_set_of_reasons() {
        let reason = |e: TargetError| e.reason().as_str();
        assert_eq!(
            reason(map_error(libc::E2BIG).into()),
            "map_full",
            "a full hash map"
        );
        assert_eq!(
            reason(map_error(libc::ENOSPC).into()),
            "map_full",
            "a full LPM trie"
        );
        assert_eq!(reason(map_error(libc::EPERM).into()), "map");
        assert_eq!(reason(EbpfError::NoInterface(7).into()), "interface");
        assert_eq!(reason(TargetError::Endpoint("no veth".into())), "interface");
        let claimed = NetnsError::NamespaceClaimed {
            pid: 1,
            owner: "a".into(),
            other: "b".into(),
        };
        assert_eq!(reason(claimed.into()), "namespace");
        let foreign = CapsError::Qdisc(QdiscError::Foreign {
            ifindex: 3,
            kind: "htb".into(),
        });
        assert_eq!(FailureReason::of_caps(&foreign).as_str(), "conflict");
        let caps_map = CapsError::Ebpf(map_error(libc::E2BIG));
        assert_eq!(FailureReason::of_caps(&caps_map), FailureReason::MapFull);
        let names: HashSet<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names.len(),
            FailureReason::ALL.len(),
            "distinct label values"
        );
    }
}
