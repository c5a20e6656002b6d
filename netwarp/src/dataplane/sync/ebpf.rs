//! The eBPF dataplane as the pass drives it: each target's policy on its
//! host-side veth, the warp program and its peer rows, bridge guards and
//! token-bucket caps. Remembers what it wrote, to skip unchanged rewrites.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use netwarp_common::{GuardAllowKey, SpreadSlot, SpreadTable, WarpPeerKey};
use tracing::{debug, info, info_span, warn};

use super::{
    FailureReason, MapUse, PassScope, TargetError, TargetInterfaces, caps::CapsState, is_settled,
    owned,
};
use crate::{
    dataplane::{
        ebpf::{
            EbpfDataplane, FromContainerHook, ProgramLogger,
            compile::{CompiledPrefix, compile, guard_allow_keys},
            interface_index, interface_name, is_host_peer_of,
            recompile::recompile,
            spread, warp_peer_key,
        },
        mac::MacAddr,
        routes::{RoutesError, desired_state, diff, spread_over},
        settled::Settled,
        xdp_pass,
    },
    model::short_id,
    plan::{Action, Entry, GuardPlan, RuleCapacity, TargetPlan},
};

/// What the eBPF dataplane holds for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EbpfTarget {
    host_ifindex: u32,
    warp_ifindex: u32,
    warp_mac: [u8; 6],
    rows: Vec<CompiledPrefix>,
    /// While steered: the warp's host-side veths on all its networks, and
    /// the target's addresses on each of them (to its veth).
    warp_ports: Vec<u32>,
    peers: Vec<(WarpPeerKey, u32)>,
    /// A spread target's member table (`warp_ifindex` and `warp_mac` are
    /// its first member's); `None` for one warp.
    spread: Option<SpreadTable>,
}

/// What the eBPF dataplane holds for one bridge guard.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EbpfGuard {
    rows: Vec<CompiledPrefix>,
    allowed: BTreeSet<GuardAllowKey>,
}

/// A warp's veths as one target's policy needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarpEnds {
    /// The host end of the warp's veth on the target's network.
    ifindex: u32,
    mac: [u8; 6],
    /// The host ends of all the warp's veths.
    ports: Vec<u32>,
}

pub struct EbpfPlane {
    ebpf: EbpfDataplane,
    /// What was last written per target.
    targets: HashMap<String, EbpfTarget>,
    /// The plans that produced `targets`, to skip unchanged ones.
    pub(super) settled: Settled<Arc<TargetPlan>>,
    /// Each bridge guard last written, by bridge ifindex.
    guards: HashMap<u32, EbpfGuard>,
    /// Each bridge guard's entries as last compiled, and their rows: the
    /// next compile starts from them (see [`recompile`]).
    compiled_guards: HashMap<u32, (Vec<Entry>, Vec<CompiledPrefix>)>,
    /// The guard plans last written in full, to skip unchanged ones.
    settled_guards: Option<Vec<(String, GuardPlan)>>,
    /// The plan of each bridge guard known to be in place, by bridge
    /// ifindex: written successfully and not removed since.
    guards_in_place: HashMap<u32, GuardPlan>,
    pub caps: CapsState,
    /// Host interfaces whose caps left this pass, to release.
    departed_caps: Vec<u32>,
    /// Host interfaces whose release failed: retried every pass.
    unreleased: HashSet<u32>,
    /// A target was written this pass: stale warp rows may be left.
    wrote: bool,
    /// Targets steered by routes in their namespace instead (see
    /// [`ROUTED_REASON`]).
    routed: HashSet<String>,
}

/// Why a target in eBPF mode is steered by routes, for status.
const ROUTED_REASON: &str = "its veth's peer is not in the host namespace (an overlay \
     network): steered by routes in its namespace; the warp's untunnelled forwards are not \
     dropped there";

impl EbpfPlane {
    pub fn new(ebpf: EbpfDataplane) -> Self {
        Self {
            ebpf,
            targets: HashMap::new(),
            settled: Settled::default(),
            guards: HashMap::new(),
            compiled_guards: HashMap::new(),
            settled_guards: None,
            guards_in_place: HashMap::new(),
            caps: CapsState::default(),
            departed_caps: Vec::new(),
            unreleased: HashSet::new(),
            wrote: false,
            routed: HashSet::new(),
        }
    }

    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.ebpf.take_logger()
    }

    /// The parts the pass borrows together: the maps and the caps.
    pub fn caps_parts(&mut self) -> (&mut EbpfDataplane, &mut CapsState) {
        (&mut self.ebpf, &mut self.caps)
    }

    /// Caps of containers that left: their interfaces are released at the
    /// end of the pass.
    pub fn caps_departed(&mut self, ifindexes: impl IntoIterator<Item = u32>) {
        self.departed_caps.extend(ifindexes);
    }

    /// The interfaces each programmed target uses, for status and metrics.
    pub fn interfaces(&self) -> HashMap<String, TargetInterfaces> {
        let routed = self.routed.iter().map(|id| {
            let interfaces = TargetInterfaces {
                routed: Some(ROUTED_REASON.to_owned()),
                ..TargetInterfaces::default()
            };
            (id.clone(), interfaces)
        });
        (self.targets.iter())
            .filter(|(id, _)| !self.routed.contains(*id))
            .map(|(id, t)| {
                let interfaces = TargetInterfaces {
                    host_ifindex: t.host_ifindex,
                    warp_ifindex: t.warp_ifindex,
                    warp_ports: t.warp_ports.clone(),
                    routed: None,
                };
                (id.clone(), interfaces)
            })
            .chain(routed)
            .collect()
    }

    /// The rule tries' capacity, as loaded.
    pub fn rule_capacity(&self) -> RuleCapacity {
        let (v4, v6) = self.ebpf.rules_capacity();
        RuleCapacity {
            v4: v4 as usize,
            v6: v6 as usize,
        }
    }

    /// How full each map is, from what was written.
    pub fn map_use(&self) -> Vec<MapUse> {
        (self
            .ebpf
            .map_use(self.targets.len(), self.guards.len())
            .into_iter())
        .map(|(map, entries, capacity)| MapUse {
            map,
            entries,
            capacity,
        })
        .collect()
    }

    /// Brings one target's eBPF policy to its plan. Returns whether
    /// anything changed.
    pub async fn sync_target(
        &mut self,
        scope: &mut PassScope,
        target: &Arc<TargetPlan>,
    ) -> Result<bool, TargetError> {
        if (self.settled).unchanged(&target.id, target, scope.verifies(&target.id)) {
            return Ok(false);
        }
        self.wrote = true;
        let result = self.program_target(scope, target).await;
        self.settled.record(&target.id, target, &result);
        result
    }

    async fn program_target(
        &mut self,
        scope: &mut PassScope,
        target: &TargetPlan,
    ) -> Result<bool, TargetError> {
        let Some(pid) = target.pid else {
            return Ok(false);
        };
        let namespace = scope.owned(pid, short_id(&target.id)).await?;
        let ends = match target.mac_on_network.as_deref() {
            Some(mac) => Some(namespace.veth_ends_by_mac(mac).await?.ok_or_else(|| {
                TargetError::Endpoint(format!("no veth with MAC {mac} in the target's namespace"))
            })?),
            None => None,
        };
        // A veth whose peer is not in the host's namespace (an overlay
        // network's task, whose peer sits in the overlay's namespace) has no
        // host interface to carry the policy: routes in the target's own
        // namespace steer it instead, as in the routes dataplane.
        let routed = ends.is_some_and(|(inner, outer)| !is_host_peer_of(outer, inner));
        if routed != self.routed.contains(&target.id) {
            info!(
                routed,
                "the target's veth peer is {}in the host namespace",
                if routed { "not " } else { "" }
            );
        }
        if routed {
            self.routed.insert(target.id.clone());
        } else {
            self.routed.remove(&target.id);
        }
        let routed_entries = namespace_entries(&target.entries, routed);
        // Routed here (an overlay network): its spread is the routes
        // dataplane's, a resilient nexthop group.
        let desired = match routed {
            true if target.spread.len() > 1 => {
                namespace.hash_multipath_without_source_port().await?;
                spread_over(desired_state(&routed_entries), &target.spread)
            }
            _ => desired_state(&routed_entries),
        };
        let route_changes =
            diff(&namespace.installed().await?, &desired).map_err(RoutesError::from)?;
        if !route_changes.is_empty() {
            let via = routed.then_some(target.mac_on_network.as_deref()).flatten();
            namespace.apply(&route_changes, via).await?;
        }
        if routed {
            return Ok(!route_changes.is_empty());
        }
        let host_ifindex = match ends {
            Some((_, outer)) => outer,
            // The network is unknown now (e.g. the warp was disconnected): the
            // veth that was steered gets the block, so no stale steering row
            // outlives the plan. The prohibit routes above hold it meanwhile.
            None => match self.targets.get(&target.id) {
                Some(previous) if interface_name(previous.host_ifindex).is_some() => {
                    previous.host_ifindex
                }
                _ => return Ok(!route_changes.is_empty()),
            },
        };
        // Slots keep their members across passes and restarts.
        let previous = match self.targets.get(&target.id) {
            Some(written) => written.spread,
            None => self.ebpf.spread_table(host_ifindex).ok().flatten(),
        };
        let desired = desired_target(scope, target, host_ifindex, previous.as_ref()).await?;
        if self.ebpf.from_container_hook() == FromContainerHook::Xdp {
            // Before anything is redirected to the warps' veths: they take
            // XDP frames, and the target's frames carry whole checksums.
            self.enable_warp_napi(scope, target).await?;
            if let Some((inner, _)) = ends {
                if namespace.set_tx_checksum(inner, false).await? {
                    info!(
                        "turned the target's transmit checksum offload off: XDP redirects its frames"
                    );
                }
                // Only now may the XDP program steer it.
                self.ebpf.allow_xdp(host_ifindex);
            }
        } else if let Some((inner, _)) = ends
            && self.ebpf.xdp_attached(host_ifindex)
            && namespace.set_tx_checksum(inner, true).await?
        {
            // An earlier run's XDP hook, detached below: what it turned off.
            info!("turned the target's transmit checksum offload back on: tc steers it");
        }
        let changed = self.write_target(&target.id, desired)?;
        Ok(changed || !route_changes.is_empty())
    }

    /// Puts netwarp's XDP pass program on each of the target's warps'
    /// veths on its network (see [`xdp_pass`]), where the XDP program
    /// redirects its steered frames.
    async fn enable_warp_napi(
        &mut self,
        scope: &mut PassScope,
        target: &TargetPlan,
    ) -> Result<(), TargetError> {
        let warps: Vec<(&str, u32, &str)> = if target.spread.is_empty() {
            match (target.warp_pid, target.warp_mac.as_deref()) {
                (Some(pid), Some(mac)) => vec![(target.warp.as_str(), pid, mac)],
                _ => Vec::new(),
            }
        } else {
            (target.spread.iter())
                .filter_map(|m| Some((m.name.as_str(), m.pid?, m.mac.as_deref()?)))
                .collect()
        };
        if warps.is_empty() {
            return Ok(());
        }
        let program = self.ebpf.xdp_pass_program()?;
        for (warp, pid, mac) in warps {
            let namespace = scope.owned(pid, warp).await?;
            if xdp_pass::ensure(&namespace, mac, program).await? {
                info!(
                    warp,
                    "put netwarp's XDP pass program on the warp's veth, so that it takes XDP redirects"
                );
            }
        }
        Ok(())
    }

    /// Writes one target's attachments, peer rows and policy, in the
    /// order that leaks nothing. Returns whether the policy was written.
    fn write_target(&mut self, id: &str, desired: EbpfTarget) -> Result<bool, TargetError> {
        let ebpf = &mut self.ebpf;
        // Every pass, not only on changes: it also repairs an attachment whose
        // pin was deleted by hand (a stat per direction when all is well).
        ebpf.attach_ifindex(desired.host_ifindex)?;
        // Before the policy steers into the warp, its veths know the target:
        // what the warp forwards untransformed is dropped from the first packet.
        for port in &desired.warp_ports {
            ebpf.attach_warp(*port)?;
        }
        if self.targets.get(id) == Some(&desired) {
            return Ok(false);
        }
        ebpf.put_warp_peers(&desired.peers)?;
        let (host, warp, mac) = (desired.host_ifindex, desired.warp_ifindex, desired.warp_mac);
        if !self.targets.contains_key(id)
            && ebpf.policy_is(host, warp, mac, &desired.rows)?
            && ebpf.spread_table(host)? == desired.spread
        {
            // Left by an earlier run (a restart): adopted as it is.
            self.targets.insert(id.to_owned(), desired);
            return Ok(false);
        }
        // The member table before the policy that steers by it.
        ebpf.set_spread(host, desired.spread.as_ref())?;
        ebpf.set_policy(host, warp, mac, &desired.rows)?;
        debug!(
            host_ifindex = host,
            warp_ifindex = warp,
            prefixes = desired.rows.len(),
            "eBPF policy written"
        );
        self.targets.insert(id.to_owned(), desired);
        Ok(true)
    }

    /// Brings every bridge guard to its plan, and removes the guards of
    /// bridges that no longer carry a target (only when every planned guard
    /// was resolved, so a failed lookup never opens a guard). A guard that
    /// fails is logged and retried on the next pass; the others go on.
    /// Returns why guards failed.
    pub fn sync_guards(
        &mut self,
        guards: &[(String, &GuardPlan)],
        complete: bool,
        verify: bool,
    ) -> Vec<FailureReason> {
        if !verify && complete && is_settled(self.settled_guards.as_deref(), guards) {
            return Vec::new();
        }
        let planned = owned(guards);
        let mut failures = Vec::new();
        let mut settled = complete;
        let mut wanted = HashSet::new();
        // A network only a warp is on blocks nothing here: the program on the
        // warp's veths drops its untunnelled forwards (`GuardPlan::forwarded`).
        for (bridge, guard) in guards.iter().filter(|(_, g)| !g.entries.is_empty()) {
            let span = info_span!("guard", network = %guard.network, bridge = %bridge);
            let _enter = span.enter();
            let Some(ifindex) = interface_index(bridge) else {
                warn!("the network's bridge interface does not exist; its guard waits for it");
                settled = false;
                continue;
            };
            wanted.insert(ifindex);
            match self.write_guard(ifindex, guard) {
                Ok(()) => {
                    self.guards_in_place.insert(ifindex, (*guard).clone());
                }
                Err(e) => {
                    settled = false;
                    // What a failed write left is unknown.
                    self.guards_in_place.remove(&ifindex);
                    failures.push(e.reason());
                    warn!(error = %e, "programming the bridge guard failed; will retry on the next reconcile");
                }
            }
        }
        let installed = self.ebpf.guard_ifindexes().unwrap_or_default();
        let vanished = |i: &u32| interface_name(*i).is_none();
        for ifindex in installed
            .into_iter()
            .filter(|i| !wanted.contains(i) && (complete || vanished(i)))
        {
            self.guards.remove(&ifindex);
            self.compiled_guards.remove(&ifindex);
            self.guards_in_place.remove(&ifindex);
            match self.ebpf.remove_guard(ifindex) {
                Ok(()) => info!(ifindex, "removed the guard of a bridge without targets"),
                Err(e) => {
                    settled = false;
                    failures.push(FailureReason::of_ebpf(&e));
                    warn!(ifindex, error = %e, "removing a bridge guard failed; will retry")
                }
            }
        }
        self.settled_guards = settled.then_some(planned);
        failures
    }

    /// The bridge guards known to be in place as last written.
    pub fn guards_in_place(&self) -> impl Iterator<Item = &GuardPlan> {
        self.guards_in_place.values()
    }

    fn write_guard(&mut self, ifindex: u32, guard: &GuardPlan) -> Result<(), TargetError> {
        let rows = match self.compiled_guards.get(&ifindex) {
            Some((entries, rows)) => recompile(entries, rows, &guard.entries, false)?,
            None => compile(&guard.entries, false)?,
        };
        (self.compiled_guards).insert(ifindex, (guard.entries.clone(), rows.clone()));
        self.ebpf.attach_guard(ifindex)?;
        let desired = EbpfGuard {
            rows,
            allowed: guard_allow_keys(ifindex, guard),
        };
        if self.guards.get(&ifindex) == Some(&desired) {
            return Ok(());
        }
        if !self.guards.contains_key(&ifindex)
            && self
                .ebpf
                .guard_is(ifindex, &desired.rows, &desired.allowed)?
        {
            // Left by an earlier run (a restart): adopted as it is.
            self.guards.insert(ifindex, desired);
            return Ok(());
        }
        self.ebpf
            .set_guard(ifindex, &desired.rows, &desired.allowed)?;
        info!(
            prefixes = desired.rows.len(),
            allowed = desired.allowed.len(),
            "bridge guard written"
        );
        self.guards.insert(ifindex, desired);
        Ok(())
    }

    /// Docker is gone: until the next pass the guards know no source; they
    /// keep their prefixes and drop their allowed sources (fail closed).
    pub fn forget_guard_sources(&mut self) {
        for (ifindex, guard) in &mut self.guards {
            if guard.allowed.is_empty() {
                continue;
            }
            // The next pass writes the guards again, whatever their plan.
            self.settled_guards = None;
            match self.ebpf.set_guard(*ifindex, &guard.rows, &BTreeSet::new()) {
                Ok(()) => guard.allowed.clear(),
                Err(e) => {
                    warn!(ifindex, error = %e, "withdrawing a guard's sources failed")
                }
            }
        }
    }

    /// Releases what targets that left (not `seen` this pass) and caps
    /// that left held. Only interfaces known to have left are released: a
    /// target that merely failed this pass keeps its policy (fail closed).
    /// An ordinary pass (not `verify`) releases only what it knows left,
    /// without scanning the maps or the interfaces.
    pub fn release_departed(&mut self, seen: &crate::model::IdSet, verify: bool) {
        let mut departed: Vec<u32> = (self.targets.iter())
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(_, t)| t.host_ifindex)
            .collect();
        departed.append(&mut self.departed_caps);
        departed.extend(self.unreleased.drain());
        self.routed.retain(|id| seen.contains(id));
        // A target whose veth vanished (deleted, or the container is
        // between namespaces) holds nothing live: its policy and pins go.
        let settled = &mut self.settled;
        self.targets.retain(|id, t| {
            let keep = seen.contains(id) && (!verify || interface_name(t.host_ifindex).is_some());
            if !keep {
                settled.forget(id);
            }
            keep
        });
        let live: HashSet<u32> = (self.targets.values())
            .map(|t| t.host_ifindex)
            .chain(self.caps.host_ifindexes())
            .collect();
        let something_left = !departed.is_empty();
        self.release_interfaces(&departed, &live, verify);
        if verify || something_left || std::mem::take(&mut self.wrote) {
            self.release_warp_ports();
        }
    }

    /// Removes the policy and attachments of interfaces that left (their
    /// target is gone) or no longer exist, unless a live target uses them.
    /// A release that fails is retried on the next pass, so a departed
    /// target's policy is never taken for removed.
    fn release_interfaces(&mut self, departed: &[u32], live: &HashSet<u32>, verify: bool) {
        let ebpf = &mut self.ebpf;
        let mut candidates: HashSet<u32> = departed.iter().copied().collect();
        if verify {
            let vanished = (ebpf.policy_ifindexes().unwrap_or_default().into_iter())
                .chain(ebpf.attached_ifindexes())
                .chain(ebpf.cap_slots().unwrap_or_default().into_keys())
                .filter(|i| interface_name(*i).is_none());
            candidates.extend(vanished);
        }
        for ifindex in candidates.into_iter().filter(|i| !live.contains(i)) {
            let released = ebpf
                .remove_policy(ifindex)
                .and_then(|()| ebpf.remove_caps(&[ifindex]))
                .and_then(|()| ebpf.detach_ifindex(ifindex));
            match released {
                Ok(()) => info!(ifindex, "released the eBPF policy of a departed target"),
                Err(e) => {
                    self.unreleased.insert(ifindex);
                    warn!(ifindex, error = %e, "releasing a departed target's eBPF state failed; will retry")
                }
            }
        }
    }

    /// Removes the peer rows no programmed target wants, and the warp program
    /// from veths no steered target uses (their warp is down, gone or has no
    /// steered target left). A target that failed this pass keeps what it had.
    fn release_warp_ports(&mut self) {
        let wanted_peers: BTreeMap<WarpPeerKey, u32> = (self.targets.values())
            .flat_map(|t| t.peers.iter().copied())
            .collect();
        let wanted_ports: HashSet<u32> = (self.targets.values())
            .flat_map(|t| t.warp_ports.iter().copied())
            .collect();
        for port in self.ebpf.warp_ifindexes() {
            if wanted_ports.contains(&port) {
                continue;
            }
            match self.ebpf.detach_warp(port) {
                Ok(()) => info!(
                    ifindex = port,
                    "detached the warp program from a veth no target uses"
                ),
                Err(e) => warn!(ifindex = port, error = %e, "detaching the warp program failed"),
            }
        }
        match self.ebpf.retain_warp_peers(&wanted_peers) {
            Ok(0) => {}
            Ok(removed) => debug!(removed, "removed stale warp peer rows"),
            Err(e) => warn!(error = %e, "removing stale warp peer rows failed"),
        }
    }
}

/// What one target's plan asks of the eBPF maps, given its host-side veth
/// (and of a spread target, the member table last written).
async fn desired_target(
    scope: &mut PassScope,
    target: &TargetPlan,
    host_ifindex: u32,
    previous: Option<&SpreadTable>,
) -> Result<EbpfTarget, TargetError> {
    let (warp, spread) = match (target.warp_pid, target.warp_mac.as_deref()) {
        _ if !target.spread.is_empty() => spread_ends(scope, target, previous).await?,
        (Some(warp_pid), Some(warp_mac)) => (
            warp_ends(scope, warp_pid, warp_mac, &target.warp_macs).await?,
            None,
        ),
        // Blocked: nothing is redirected, so no warp interface is needed.
        _ => (
            WarpEnds {
                ifindex: 0,
                mac: [0; 6],
                ports: Vec::new(),
            },
            None,
        ),
    };
    let peers = (warp.ports.iter())
        .flat_map(|&port| {
            (target.addresses.iter()).map(move |&addr| (warp_peer_key(port, addr), host_ifindex))
        })
        .collect();
    Ok(EbpfTarget {
        host_ifindex,
        warp_ifindex: warp.ifindex,
        warp_mac: warp.mac,
        rows: compile(&target.entries, target.state.drops_are_policy())?,
        warp_ports: warp.ports,
        peers,
        spread,
    })
}

/// A spread target's members' veths: the first found member's as the
/// policy's warp, every member's veths guarded (and knowing the target),
/// and the member table. A member whose veth cannot be found now (it is
/// going away) is left out of the table; with none found, the first
/// error.
async fn spread_ends(
    scope: &mut PassScope,
    target: &TargetPlan,
    previous: Option<&SpreadTable>,
) -> Result<(WarpEnds, Option<SpreadTable>), TargetError> {
    let mut found: Vec<WarpEnds> = Vec::new();
    let mut first_error = None;
    for member in &target.spread {
        let ends = match (member.pid, member.mac.as_deref()) {
            (Some(pid), Some(mac)) => warp_ends(scope, pid, mac, &member.macs).await,
            _ => Err(TargetError::Endpoint(format!(
                "spread member {} has no pid or MAC",
                member.name
            ))),
        };
        match ends {
            Ok(ends) => found.push(ends),
            Err(e) => {
                warn!(member = %member.name, error = %e, "a spread member's veth was not found; its flows go to the others");
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(first) = found.first() else {
        return Err(first_error.unwrap_or_else(|| {
            TargetError::Endpoint("a spread target without members".to_owned())
        }));
    };
    let mut members: Vec<SpreadSlot> = Vec::new();
    for ends in &found {
        let slot = SpreadSlot {
            ifindex: ends.ifindex,
            mac: ends.mac,
            _pad: [0; 2],
        };
        if !members.contains(&slot) {
            members.push(slot);
        }
    }
    let mut ports: Vec<u32> = found.iter().flat_map(|e| e.ports.iter().copied()).collect();
    ports.sort_unstable();
    ports.dedup();
    let ends = WarpEnds {
        ifindex: first.ifindex,
        mac: first.mac,
        ports,
    };
    Ok((ends, Some(spread::assign(previous, &members))))
}

/// What a target's namespace holds in eBPF mode. The tc drop is silent, so
/// blocks also get prohibit routes there: senders fail at once with
/// EACCES, and the block holds on every interface, even one netwarp cannot
/// identify (a filtered container on several networks). Only where no
/// `via` entry could take a packet the namespace refuses: with no `via`
/// entries, all of them (the `direct` ones carve the blocks as throws);
/// otherwise the fail-closed blocks of a family the warp cannot carry
/// (that family has no `via` entry) and the `direct` ones, while `block`
/// rules are the program's alone. A target routed in its namespace (an
/// overlay network) gets every entry.
fn namespace_entries(entries: &[Entry], routed: bool) -> Vec<Entry> {
    let steers = entries.iter().any(|e| matches!(e.action, Action::Via(_)));
    (entries.iter())
        .filter(|e| routed || !steers || matches!(e.action, Action::Block | Action::Direct))
        .copied()
        .collect()
}

/// The warp's veths for a target steered through it: looked up once per
/// pass and warp network, however many targets use them.
async fn warp_ends(
    scope: &mut PassScope,
    warp_pid: u32,
    warp_mac: &str,
    warp_macs: &[String],
) -> Result<WarpEnds, TargetError> {
    let key = (warp_pid, warp_mac.to_owned());
    if let Some(ends) = scope.warp_ends.get(&key) {
        return Ok(ends.clone());
    }
    let mac = (warp_mac.parse::<MacAddr>())
        .map_err(|e| TargetError::Endpoint(format!("the warp's {e}")))?
        .0;
    let warp_ns = scope.read(warp_pid).await?;
    let ifindex = (warp_ns.peer_ifindex_by_mac(warp_mac).await?).ok_or_else(|| {
        TargetError::Endpoint(format!(
            "no veth with MAC {warp_mac} in the warp's namespace"
        ))
    })?;
    // Every veth of the warp: a VPN client whose tunnel is down forwards
    // by its default route, on whichever network that is.
    let ports = warp_ns.peer_ifindexes_by_macs(warp_macs).await?;
    let ends = WarpEnds {
        ifindex,
        mac,
        ports,
    };
    scope.warp_ends.insert(key, ends.clone());
    Ok(ends)
}
