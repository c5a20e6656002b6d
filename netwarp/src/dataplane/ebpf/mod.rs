//! The eBPF dataplane: loads netwarp's tc programs, attaches them to
//! host-side veths, writes each target's policy and reads the counters.
//!
//! The program on a target's veth finds the veth's state row (see
//! [`state`]), then steers matching packets to the warp's veth (by a
//! peer redirect into the warp's namespace where nothing of netwarp's
//! sits on the warp's host-side egress, see [`peer`]; else rewriting the
//! destination MAC to the warp's) or drops them while the warp is
//! unusable, counting only those verdicts. Interfaces without a policy are left alone; their packets
//! and bytes are the veth's own statistics.
//!
//! The program on a guarded network's bridge (ingress: what containers
//! send to be routed) drops traffic to the network's steered prefixes from
//! sources netwarp does not know, i.e. targets it has not programmed yet.
//!
//! The program on each of a warp's veths (see [`warp`]) drops what the warp
//! forwards of its targets' steered traffic untransformed, and delivers
//! what the warp sends to a target straight to the target's veth.
//!
//! Parts: [`loader`] (object, pinned maps), [`hooks`] (where each program
//! hangs), [`links`] (attachments by interface and hook), [`maps`] (typed access, the read-only
//! [`PinnedMaps`] view, the diffing row writer), [`state`] (each veth's
//! state row), [`rule_sets`] (the double-buffer switch of policies and
//! guards).
pub mod compile;
mod error;
mod hooks;
mod interfaces;
mod links;
mod loader;
pub mod maps;
mod peer;
pub mod recompile;
mod rule_sets;
pub mod spread;
mod state;
mod warp;

pub use error::EbpfError;
pub use hooks::{FromContainerHook, Hook};
pub use interfaces::{interface_index, interface_name, is_host_peer_of};
pub use loader::ProgramLogger;
pub use maps::{
    CpuSum, InterfaceTraffic, PinnedMaps, VerdictMaps, cpu_sum, map_is_full, verdict_sum,
};
pub use warp::warp_peer_key;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
};

use aya::{
    Ebpf,
    maps::MapError,
    programs::{TestRun, TestRunOptions, TestRunResult},
};
use netwarp_common::{
    GUARD_ALLOW_MAP, GUARD_ALLOW_MAP_CAPACITY, GUARD_DROPS_MAP, GUARDS_MAP, GUARDS_MAP_CAPACITY,
    GuardAllowKey, IFACE_ARRAY_SIZE, IFACE_PEER, IFACE_POLICY, IFACE_SPREAD, IFACES_MAP,
    IfaceState, POLICY_MAP_CAPACITY, PROG_TC_BRIDGE_GUARD, PROG_TC_FROM_CONTAINER,
    PROG_XDP_FROM_CONTAINER, PROG_XDP_PASS, RATE_BUCKETS_MAP, RULES_MAP_CAPACITY, RULES_V4_MAP,
    RULES_V6_MAP, RateBuckets, SPREAD_MAP, SpreadTable, TargetPolicy, TrafficCounters,
    VERDICTS_LOW_MAP, VERDICTS_MAP, VerdictCounters, WARP_PEERS_MAP, WARP_PEERS_MAP_CAPACITY,
    WarpPeerKey,
};

use compile::CompiledPrefix;
use maps::{Row as _, Rows, already_gone, counter_map, hash_map, lookup, map_error, read_all};
use rule_sets::RuleSets;

/// netwarp's loaded programs, its attachments, and the rows it wrote.
pub struct EbpfDataplane {
    ebpf: Ebpf,
    links: links::Links,
    rule_sets: RuleSets,
    guard_allow: Rows<GuardAllowKey>,
    warp_peers: Rows<(WarpPeerKey, u32)>,
    /// Each programmed interface's state row: policy and cap slot.
    states: state::States,
    /// Cap slots whose buckets were written (or adopted),
    /// and whether each caps what its container receives (which needs the
    /// to-container program).
    bucket_slots: BTreeMap<u32, bool>,
    /// The entries of the IPv4 and IPv6 rule tries, as loaded.
    rules_capacity: (u32, u32),
    /// Whether steered packets may enter their warp by a peer redirect
    /// (`dataplane.ebpf_peer_redirect`; see [`peer`]).
    peer_redirect: bool,
    /// Host-side veths with a tbf qdisc capping what their container
    /// receives (the shaper): a peer redirect would skip it.
    shaped_ingress: BTreeSet<u32>,
    /// Whether `shaped_ingress` is complete: not before the daemon's first
    /// caps pass (the qdiscs an earlier run put on are not known until
    /// then), so until then no target is given a peer redirect.
    egress_known: bool,
    /// Reads the programs' aya-log records; see [`Self::take_logger`].
    logger: Option<ProgramLogger>,
    /// Where uncapped targets are steered (see [`Self::sync_xdp`]).
    from_container_hook: FromContainerHook,
    /// Host-side veths whose target checksums its own frames, which the
    /// XDP program needs (see [`Self::allow_xdp`]).
    xdp_ready: BTreeSet<u32>,
}

impl EbpfDataplane {
    /// Loads every program with private maps and logs off; nothing is
    /// attached yet. Everything goes away with this value (tests, probes).
    pub fn load() -> Result<Self, EbpfError> {
        Self::with_object(loader::load_object(None, false, RULES_MAP_CAPACITY)?, None)
    }

    /// Loads the programs with their maps pinned under `pin_dir` (reusing
    /// maps pinned by an earlier run), and adopts the links pinned there:
    /// each is switched atomically to the new program, so steering and
    /// blocking never stop across a restart. Pins of vanished interfaces
    /// are removed.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, EbpfError> {
        Self::load_pinned_logging(pin_dir, false, RULES_MAP_CAPACITY)
    }

    /// Like [`Self::load_pinned`], with `rules_capacity` entries in each
    /// rule trie (a trie pinned with another capacity is resized, its rows
    /// carried over); with `debug_logs` the programs send debug records
    /// (drops and why) through aya-log.
    pub fn load_pinned_logging(
        pin_dir: &Path,
        debug_logs: bool,
        rules_capacity: u32,
    ) -> Result<Self, EbpfError> {
        Self::with_object(
            loader::load_object(Some(pin_dir), debug_logs, rules_capacity)?,
            Some(pin_dir),
        )
    }

    /// Loads the programs, adopts pinned links, and records what the maps
    /// hold (one scan each), so later writes and deletes are targeted. A
    /// private load (no `pin_dir`) knows every qdisc its caller tells it
    /// of; a pinned one learns them in [`Self::caps_synced`].
    fn with_object(mut ebpf: Ebpf, pin_dir: Option<&Path>) -> Result<Self, EbpfError> {
        // Before the adopted links switch to these programs: the state
        // rows they read must already hold every policy.
        let states = state::States::adopt(&mut ebpf)?;
        let logger = loader::load_programs(&mut ebpf)?;
        let mut links = links::Links::new(pin_dir);
        links.adopt_pinned(&mut ebpf)?;
        let bucket_slots = read_all(
            &hash_map::<u32, RateBuckets>(&mut ebpf, RATE_BUCKETS_MAP)?,
            RATE_BUCKETS_MAP,
        )?
        .into_iter()
        .map(|(slot, buckets)| (slot, caps_ingress(&buckets)))
        .collect();
        let capacity = |name| -> Result<u32, EbpfError> {
            let map = ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
            let info = match map {
                aya::maps::Map::LpmTrie(data) => data.info(),
                _ => return Err(EbpfError::MissingMap(name)),
            };
            Ok(info.map_err(map_error(name))?.max_entries())
        };
        let rules_capacity = (capacity(RULES_V4_MAP)?, capacity(RULES_V6_MAP)?);
        Ok(Self {
            rules_capacity,
            peer_redirect: true,
            shaped_ingress: BTreeSet::new(),
            egress_known: pin_dir.is_none(),
            rule_sets: RuleSets::adopt(
                &mut ebpf,
                (states.written().values()).filter_map(|s| s.policy().map(|p| p.rule_set)),
            )?,
            guard_allow: Rows::adopt(&mut ebpf)?,
            warp_peers: Rows::adopt(&mut ebpf)?,
            states,
            bucket_slots,
            links,
            ebpf,
            logger,
            from_container_hook: FromContainerHook::default(),
            xdp_ready: BTreeSet::new(),
        })
    }

    /// Where uncapped targets are steered from now on; each interface
    /// follows when its programs are next synced ([`Self::attach_ifindex`]).
    pub fn set_from_container_hook(&mut self, hook: FromContainerHook) {
        self.from_container_hook = hook;
    }

    pub fn from_container_hook(&self) -> FromContainerHook {
        self.from_container_hook
    }

    /// The entries of the IPv4 and IPv6 rule tries, as the kernel made them.
    pub fn rules_capacity(&self) -> (u32, u32) {
        self.rules_capacity
    }

    /// How full each map netwarp writes is, from what it wrote (no scan):
    /// `(map, entries, capacity)`. `policies` and `guards` are counted by
    /// the caller, which knows the targets and guards it programmed.
    pub fn map_use(&self, policies: usize, guards: usize) -> Vec<(&'static str, usize, usize)> {
        let (v4, v6) = self.rule_sets.rows_per_family();
        let widen = |n: u32| n as usize;
        vec![
            (RULES_V4_MAP, v4, widen(self.rules_capacity.0)),
            (RULES_V6_MAP, v6, widen(self.rules_capacity.1)),
            (
                IFACES_MAP,
                policies,
                widen(IFACE_ARRAY_SIZE.max(POLICY_MAP_CAPACITY)),
            ),
            (GUARDS_MAP, guards, widen(GUARDS_MAP_CAPACITY)),
            (
                GUARD_ALLOW_MAP,
                self.guard_allow.written().len(),
                widen(GUARD_ALLOW_MAP_CAPACITY),
            ),
            (
                WARP_PEERS_MAP,
                self.warp_peers.written().len(),
                widen(WARP_PEERS_MAP_CAPACITY),
            ),
        ]
    }

    /// The reader of the programs' log records, for the daemon to poll;
    /// left here, records are dropped once its ring buffer is full.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    /// The interfaces this dataplane has attached to (or adopted).
    pub fn attached_ifindexes(&self) -> BTreeSet<u32> {
        self.links.ifindexes(Hook::FromContainer)
    }

    /// Attaches the programs a container's host-side interface needs (see
    /// [`Self::attach_ifindex`]). Attaching twice is a no-op.
    pub fn attach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        let ifindex = interface_index(interface)
            .ok_or_else(|| EbpfError::NoInterfaceNamed(interface.to_owned()))?;
        self.attach_ifindex(ifindex)
    }

    /// Attaches the programs the host interface with `ifindex` needs: the
    /// from-container program always; the to-container program only while
    /// a cap limits what the container receives (its only work), and it
    /// is detached otherwise. Idempotent; each call also repairs.
    pub fn attach_ifindex(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.links
            .attach(&mut self.ebpf, ifindex, Hook::FromContainer)?;
        self.sync_to_container(ifindex)?;
        self.sync_xdp(ifindex)
    }

    /// Attaches or detaches the XDP from-container program of `ifindex`:
    /// attached exactly while XDP is the hook and the target has a policy
    /// and no cap (a cap charges what tc sees: offload packets whole,
    /// where XDP would see the frames they are cut into). The tc program
    /// stays attached behind it, for what it passes.
    fn sync_xdp(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let wanted = (self.from_container_hook).wants_xdp(&self.states.get(ifindex))
            && self.xdp_ready.contains(&ifindex);
        (self.links).set(&mut self.ebpf, ifindex, Hook::XdpFromContainer, wanted)
    }

    /// Lets the XDP program onto `ifindex` (under the XDP hook, once its
    /// state row wants it): its target's transmit checksum offload is
    /// off. A frame left to the device to checksum would reach the warp
    /// with its checksum unfinished once XDP redirects it.
    pub fn allow_xdp(&mut self, ifindex: u32) {
        self.xdp_ready.insert(ifindex);
    }

    /// Whether the XDP from-container program is attached to `ifindex`
    /// (by this process, or adopted from an earlier run's pin).
    pub fn xdp_attached(&self, ifindex: u32) -> bool {
        self.links.holds(ifindex, Hook::XdpFromContainer)
    }

    /// The XDP program that only passes, for the warps' veths (see
    /// [`crate::dataplane::xdp_pass`]): its fd and its id.
    pub fn xdp_pass_program(&mut self) -> Result<(std::os::fd::RawFd, u32), EbpfError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = loader::xdp(&mut self.ebpf, PROG_XDP_PASS)?;
        let program_error = |source| EbpfError::Program {
            program: PROG_XDP_PASS,
            source,
        };
        let id = prog.info().map_err(program_error)?.id();
        let fd = prog.fd().map_err(program_error)?.as_fd().as_raw_fd();
        Ok((fd, id))
    }

    /// Whether `ifindex` needs the to-container program: while its state
    /// row's cap slot caps ingress.
    fn to_container_needed(&self, ifindex: u32) -> bool {
        (self.states.get(ifindex).cap_slot())
            .is_some_and(|slot| self.bucket_slots.get(&slot) == Some(&true))
    }

    /// Attaches or detaches the to-container program of `ifindex` to match
    /// its state row: attached exactly while its cap slot caps ingress.
    fn sync_to_container(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let needed = self.to_container_needed(ifindex);
        (self.links).set(&mut self.ebpf, ifindex, Hook::ToContainer, needed)
    }

    /// Turns peer redirects on or off (`dataplane.ebpf_peer_redirect`; on
    /// by default) and rewrites every state row whose flag changes,
    /// including rows an earlier run left.
    pub fn set_peer_redirect(&mut self, enabled: bool) -> Result<(), EbpfError> {
        self.peer_redirect = enabled;
        self.refresh_peers(|_| true)
    }

    /// Whether a target's steered packets enter its warp by a peer
    /// redirect, as the kernel holds its state row.
    pub fn peer_redirects(&mut self, ifindex: u32) -> Result<bool, EbpfError> {
        Ok(state::read(&mut self.ebpf, ifindex)?.flags & IFACE_PEER != 0)
    }

    /// Records that tbf qdiscs (the shaper) cap, or no longer cap, what
    /// the containers behind these host-side veths receive; the targets
    /// steered to them take the classic redirect while one does. Call it
    /// with `true` before the qdisc goes on, with `false` after it is off.
    pub fn set_ingress_shaped(&mut self, ifindexes: &[u32], shaped: bool) -> Result<(), EbpfError> {
        for &ifindex in ifindexes {
            if shaped {
                self.shaped_ingress.insert(ifindex);
            } else {
                self.shaped_ingress.remove(&ifindex);
            }
        }
        self.refresh_peers(|state| ifindexes.contains(&state.warp_ifindex))
    }

    /// Says that every container's caps were just synced, so the shaped
    /// veths are known, and brings every target's peer flag up to date
    /// (level-triggered: each caps pass repairs any drift).
    pub fn caps_synced(&mut self) -> Result<(), EbpfError> {
        self.egress_known = true;
        self.refresh_peers(|_| true)
    }

    /// Whether something of netwarp's sits, or may sit, on the egress of
    /// `ifindex` (what its container receives): a peer redirect would skip it.
    fn egress_busy(&self, ifindex: u32) -> bool {
        !self.egress_known
            || self.to_container_needed(ifindex)
            || self.shaped_ingress.contains(&ifindex)
    }

    /// `state` with its peer flag as it should be now.
    fn peered(&self, state: IfaceState) -> IfaceState {
        peer::with_peer_flag(state, self.peer_redirect, |i| self.egress_busy(i))
    }

    /// Rewrites the rows chosen by `which` whose peer flag is not as it
    /// should be.
    fn refresh_peers(&mut self, which: impl Fn(&IfaceState) -> bool) -> Result<(), EbpfError> {
        let changed: Vec<(u32, IfaceState)> = (self.states.written().iter())
            .filter(|(_, state)| which(state))
            .filter_map(|(&ifindex, &state)| {
                let desired = self.peered(state);
                (desired != state).then_some((ifindex, desired))
            })
            .collect();
        for (ifindex, state) in changed {
            self.states.put(&mut self.ebpf, ifindex, state)?;
        }
        Ok(())
    }

    /// Detaches the programs from an interface, if they are attached, and
    /// removes their pins.
    pub fn detach_ifindex(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.xdp_ready.remove(&ifindex);
        for hook in Hook::CONTAINER {
            self.links.detach(&mut self.ebpf, ifindex, hook)?;
        }
        Ok(())
    }

    /// Detaches by interface name (see [`Self::detach_ifindex`]).
    pub fn detach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        match interface_index(interface) {
            Some(ifindex) => self.detach_ifindex(ifindex),
            None => Ok(()),
        }
    }

    /// Attaches the guard to a bridge's ingress (what its containers send
    /// to be routed). Attaching twice is a no-op.
    pub fn attach_guard(&mut self, bridge_ifindex: u32) -> Result<(), EbpfError> {
        self.links
            .attach(&mut self.ebpf, bridge_ifindex, Hook::BridgeGuard)
    }

    /// Steered and blocked packets and bytes of one target, over all CPUs.
    pub fn verdicts(&self, ifindex: u32) -> Result<VerdictCounters, EbpfError> {
        let map = |name| self.ebpf.map(name).ok_or(EbpfError::MissingMap(name));
        let maps = (
            aya::maps::Array::try_from(map(IFACES_MAP)?).map_err(map_error(IFACES_MAP))?,
            (aya::maps::PerCpuArray::try_from(map(VERDICTS_LOW_MAP)?))
                .map_err(map_error(VERDICTS_LOW_MAP))?,
            counter_map(&self.ebpf, VERDICTS_MAP)?,
        );
        verdict_sum(&maps, ifindex)
    }

    /// What a bridge's guard dropped, over all CPUs.
    pub fn guard_drops(&self, bridge_ifindex: u32) -> Result<TrafficCounters, EbpfError> {
        self.counter_sum(GUARD_DROPS_MAP, bridge_ifindex)
    }

    /// One ifindex's entry of a per-CPU map, summed over all CPUs.
    fn counter_sum<V: CpuSum>(&self, name: &'static str, ifindex: u32) -> Result<V, EbpfError> {
        cpu_sum(&counter_map(&self.ebpf, name)?, &ifindex).map_err(map_error(name))
    }

    /// Installs a target's policy atomically: its rule set (shared with
    /// every target of the same rows, written first if none holds it yet)
    /// is acquired, one write to its state row switches to it, then the
    /// old set is released (removed with its last user).
    pub fn set_policy(
        &mut self,
        ifindex: u32,
        warp_ifindex: u32,
        warp_mac: [u8; 6],
        rows: &[CompiledPrefix],
    ) -> Result<(), EbpfError> {
        let installed = state::read(&mut self.ebpf, ifindex)?;
        let old = installed.policy().map(|p| p.rule_set);
        let rule_set = self.rule_sets.acquire(&mut self.ebpf, rows)?;
        let policy = TargetPolicy {
            rule_set,
            warp_ifindex,
            warp_mac,
            _pad: [0; 2],
        };
        let mut state = IfaceState::of(Some(policy), installed.cap_slot());
        // A spread target's flag is [`Self::set_spread`]'s.
        state.flags |= installed.flags & IFACE_SPREAD;
        let state = self.peered(state);
        if let Err(e) = self.states.put(&mut self.ebpf, ifindex, state) {
            self.rule_sets.release(&mut self.ebpf, rule_set)?;
            return Err(e);
        }
        // Also when the set is the same (only the warp changed): acquiring
        // it counted a second use by this target.
        if let Some(old) = old {
            self.rule_sets.release(&mut self.ebpf, old)?;
        }
        self.sync_xdp(ifindex)
    }

    /// Removes a target's policy; its rule set is released (removed with
    /// its last user). Its traffic is then only counted.
    pub fn remove_policy(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let installed = state::read(&mut self.ebpf, ifindex)?;
        let Some(old) = installed.policy() else {
            return Ok(());
        };
        self.states.put(
            &mut self.ebpf,
            ifindex,
            IfaceState::of(None, installed.cap_slot()),
        )?;
        self.sync_xdp(ifindex)?;
        remove_key::<SpreadTable>(&mut self.ebpf, SPREAD_MAP, ifindex)?;
        self.rule_sets.release(&mut self.ebpf, old.rule_set)
    }

    /// Makes a target's steered flows take the members of `table` (a
    /// spread group), or, with `None`, its policy's one warp. The table is
    /// written before the state row's flag points at it, and the flag
    /// cleared before the table goes, so no packet finds a flag without
    /// its table.
    pub fn set_spread(
        &mut self,
        ifindex: u32,
        table: Option<&SpreadTable>,
    ) -> Result<(), EbpfError> {
        let installed = state::read(&mut self.ebpf, ifindex)?.unplaced();
        let spread = installed.flags & IFACE_SPREAD != 0;
        match table {
            Some(table) => {
                hash_map::<u32, SpreadTable>(&mut self.ebpf, SPREAD_MAP)?
                    .insert(ifindex, table, 0)
                    .map_err(map_error(SPREAD_MAP))?;
                if !spread {
                    let mut state = installed;
                    state.flags |= IFACE_SPREAD;
                    let state = self.peered(state);
                    self.states.put(&mut self.ebpf, ifindex, state)?;
                }
            }
            None => {
                if spread {
                    let mut state = installed;
                    state.flags &= !IFACE_SPREAD;
                    let state = self.peered(state);
                    self.states.put(&mut self.ebpf, ifindex, state)?;
                }
                remove_key::<SpreadTable>(&mut self.ebpf, SPREAD_MAP, ifindex)?;
            }
        }
        Ok(())
    }

    /// A target's spread table as the kernel holds it, while its state
    /// row uses one.
    pub fn spread_table(&mut self, ifindex: u32) -> Result<Option<SpreadTable>, EbpfError> {
        if state::read(&mut self.ebpf, ifindex)?.flags & IFACE_SPREAD == 0 {
            return Ok(None);
        }
        let map = hash_map::<u32, SpreadTable>(&mut self.ebpf, SPREAD_MAP)?;
        lookup(&map, SPREAD_MAP, &ifindex)
    }

    /// The interfaces that have a policy (as written or adopted).
    pub fn policy_ifindexes(&mut self) -> Result<Vec<u32>, EbpfError> {
        Ok((self.states.written().iter())
            .filter(|(_, s)| s.policy().is_some())
            .map(|(ifindex, _)| *ifindex)
            .collect())
    }

    /// A target's policy, as the kernel holds it.
    pub fn policy(&mut self, ifindex: u32) -> Result<Option<TargetPolicy>, EbpfError> {
        Ok(state::read(&mut self.ebpf, ifindex)?.policy())
    }

    /// Whether a target's installed policy is exactly this one (so a
    /// restarted daemon adopts it instead of rewriting it); the rows are
    /// compared with what the load's scan adopted, not scanned again.
    pub fn policy_is(
        &mut self,
        ifindex: u32,
        warp_ifindex: u32,
        warp_mac: [u8; 6],
        rows: &[CompiledPrefix],
    ) -> Result<bool, EbpfError> {
        let Some(policy) = self.policy(ifindex)? else {
            return Ok(false);
        };
        Ok(policy.warp_ifindex == warp_ifindex
            && policy.warp_mac == warp_mac
            && self.rule_sets.rows(policy.rule_set) == sorted(rows))
    }

    /// A rule set's rows as the kernel holds them, sorted by destination
    /// (one scan of both tries: for verification, not for the daemon's passes).
    pub fn installed_rule_set(&mut self, rule_set: u32) -> Result<Vec<CompiledPrefix>, EbpfError> {
        rule_sets::installed_rows(&mut self.ebpf, rule_set)
    }

    /// Installs a bridge's guard: the prefixes it blocks (`rows`, under a
    /// fresh rule set, switched in by one write) and the sources it lets
    /// pass. New sources are allowed before the switch, stale ones removed
    /// after it; a failed removal is returned, so the guard is not
    /// recorded as written and the next pass retries.
    pub fn set_guard(
        &mut self,
        bridge_ifindex: u32,
        rows: &[CompiledPrefix],
        allowed: &BTreeSet<GuardAllowKey>,
    ) -> Result<(), EbpfError> {
        let old = self.guard_rule_set(bridge_ifindex)?;
        let diff = self
            .guard_allow
            .diff(|k| k.bridge_ifindex == bridge_ifindex, allowed);
        if let Some(live) = old {
            // A guard only blocks, so it changes in place (see
            // `update_in_place`); new allowed sources go in first, gone
            // ones out last, as with a switch.
            self.guard_allow.put(&mut self.ebpf, diff.put)?;
            (self.rule_sets).update_in_place(&mut self.ebpf, live, rows)?;
            self.guard_allow.delete(&mut self.ebpf, diff.delete)?;
            return Ok(());
        }
        let guard_allow = &mut self.guard_allow;
        self.rule_sets.switch(
            &mut self.ebpf,
            bridge_ifindex,
            old,
            rows,
            |ebpf, rule_set| {
                guard_allow.put(ebpf, diff.put)?;
                hash_map(ebpf, GUARDS_MAP)?
                    .insert(bridge_ifindex, rule_set, 0)
                    .map_err(map_error(GUARDS_MAP))
            },
        )?;
        self.guard_allow.delete(&mut self.ebpf, diff.delete)?;
        Ok(())
    }

    /// Removes a bridge's guard: its rule set, its allowed sources, its
    /// attachment and pin.
    pub fn remove_guard(&mut self, bridge_ifindex: u32) -> Result<(), EbpfError> {
        self.links
            .detach(&mut self.ebpf, bridge_ifindex, Hook::BridgeGuard)?;
        if let Some(old) = self.guard_rule_set(bridge_ifindex)? {
            remove_key::<u32>(&mut self.ebpf, GUARDS_MAP, bridge_ifindex)?;
            self.rule_sets.remove(&mut self.ebpf, old)?;
        }
        self.guard_allow
            .delete_where(&mut self.ebpf, |k| k.bridge_ifindex == bridge_ifindex)?;
        Ok(())
    }

    /// Bridges with a guard in the map or an attachment.
    pub fn guard_ifindexes(&mut self) -> Result<BTreeSet<u32>, EbpfError> {
        let mut all: BTreeSet<u32> = hash_map::<u32, u32>(&mut self.ebpf, GUARDS_MAP)?
            .keys()
            .collect::<Result<_, MapError>>()
            .map_err(map_error(GUARDS_MAP))?;
        all.extend(self.links.ifindexes(Hook::BridgeGuard));
        Ok(all)
    }

    /// The sources a bridge's guard lets pass, as the kernel holds them
    /// (recorded as written, so the next [`Self::set_guard`] repairs any
    /// difference).
    pub fn guard_allowed(
        &mut self,
        bridge_ifindex: u32,
    ) -> Result<BTreeSet<GuardAllowKey>, EbpfError> {
        let in_scope = |k: &GuardAllowKey| k.bridge_ifindex == bridge_ifindex;
        let installed: BTreeMap<GuardAllowKey, u8> = read_all(
            &hash_map(&mut self.ebpf, GuardAllowKey::MAP)?,
            GuardAllowKey::MAP,
        )?
        .into_iter()
        .filter(|(k, _)| in_scope(k))
        .collect();
        self.guard_allow.adopt_scope(in_scope, &installed);
        Ok(installed.into_keys().collect())
    }

    /// Whether a bridge's installed guard is exactly this one.
    pub fn guard_is(
        &mut self,
        bridge_ifindex: u32,
        rows: &[CompiledPrefix],
        allowed: &BTreeSet<GuardAllowKey>,
    ) -> Result<bool, EbpfError> {
        let Some(rule_set) = self.guard_rule_set(bridge_ifindex)? else {
            return Ok(false);
        };
        Ok(self.rule_sets.rows(rule_set) == sorted(rows)
            && &self.guard_allowed(bridge_ifindex)? == allowed)
    }

    fn guard_rule_set(&mut self, bridge_ifindex: u32) -> Result<Option<u32>, EbpfError> {
        lookup(
            &hash_map(&mut self.ebpf, GUARDS_MAP)?,
            GUARDS_MAP,
            &bridge_ifindex,
        )
    }

    /// Caps the container whose host-side veths are `ifindexes`: one set
    /// of buckets under `slot`, shared by all of them. Writing the buckets
    /// refills them, so the caller only writes when the caps change.
    pub fn set_caps(
        &mut self,
        slot: u32,
        ifindexes: &[u32],
        buckets: RateBuckets,
    ) -> Result<(), EbpfError> {
        hash_map(&mut self.ebpf, RATE_BUCKETS_MAP)?
            .insert(slot, buckets, 0)
            .map_err(map_error(RATE_BUCKETS_MAP))?;
        self.bucket_slots.insert(slot, caps_ingress(&buckets));
        for &ifindex in ifindexes {
            self.states.update(&mut self.ebpf, ifindex, |state| {
                *state = with_flags_of(IfaceState::of(state.policy(), Some(slot)), state);
            })?;
            // Before the program: its targets stop skipping this egress.
            self.refresh_peers(|state| state.warp_ifindex == ifindex)?;
            // After the row: the program finds the cap from its first packet.
            self.sync_to_container(ifindex)?;
            self.sync_xdp(ifindex)?;
        }
        Ok(())
    }

    /// Uncaps interfaces and removes the buckets of slots no interface uses.
    pub fn remove_caps(&mut self, ifindexes: &[u32]) -> Result<(), EbpfError> {
        for &ifindex in ifindexes {
            self.states.update(&mut self.ebpf, ifindex, |state| {
                *state = with_flags_of(IfaceState::of(state.policy(), None), state);
            })?;
            self.sync_to_container(ifindex)?;
            // A departed container's qdiscs went with its veths.
            self.shaped_ingress.remove(&ifindex);
            self.refresh_peers(|state| state.warp_ifindex == ifindex)?;
            self.sync_xdp(ifindex)?;
        }
        let used: BTreeSet<u32> = (self.states.written().values())
            .filter_map(IfaceState::cap_slot)
            .collect();
        let unused: Vec<u32> = (self.bucket_slots.keys())
            .filter(|slot| !used.contains(slot))
            .copied()
            .collect();
        for slot in unused {
            remove_key::<RateBuckets>(&mut self.ebpf, RATE_BUCKETS_MAP, slot)?;
            self.bucket_slots.remove(&slot);
        }
        Ok(())
    }

    /// Every capped interface and its slot, as written.
    pub fn cap_slots(&mut self) -> Result<HashMap<u32, u32>, EbpfError> {
        Ok((self.states.written().iter())
            .filter_map(|(ifindex, s)| Some((*ifindex, s.cap_slot()?)))
            .collect())
    }

    /// The buckets of one cap slot, as the programs left them.
    pub fn rate_buckets_of(&mut self, slot: u32) -> Result<Option<RateBuckets>, EbpfError> {
        lookup(
            &hash_map(&mut self.ebpf, RATE_BUCKETS_MAP)?,
            RATE_BUCKETS_MAP,
            &slot,
        )
    }

    /// Runs the from-container program once on `packet`, as if it arrived
    /// on the host interface `ifindex` (BPF_PROG_TEST_RUN). Returns the tc
    /// verdict and the packet as the program left it. Redirects are only
    /// reported, not performed.
    pub fn test_run_from_container(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        self.test_run(PROG_TC_FROM_CONTAINER, ifindex, packet)
    }

    /// Like [`Self::test_run_from_container`], for the bridge guard, as if
    /// the packet arrived on the bridge with `ifindex`.
    pub fn test_run_bridge_guard(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        self.test_run(PROG_TC_BRIDGE_GUARD, ifindex, packet)
    }

    /// Runs the from-container program `repeat` times on `packet` (as
    /// [`Self::test_run_from_container`]) and returns its verdict and the
    /// kernel's average time per run: a repeatable per-packet cost that
    /// excludes the stats' clock reads. Each run counts as a packet.
    pub fn time_from_container(
        &mut self,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, std::time::Duration), EbpfError> {
        let (verdict, _, per_run) =
            self.test_run_repeat(PROG_TC_FROM_CONTAINER, ifindex, packet, repeat)?;
        Ok((verdict, per_run))
    }

    /// Runs the XDP from-container program once on `packet`, as if it
    /// arrived on `ifindex`, which must be an interface of this namespace
    /// (the kernel resolves it for an XDP test run). Returns the XDP
    /// verdict and the packet as the program left it.
    pub fn test_run_xdp_from_container(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(u32, Vec<u8>), EbpfError> {
        let (verdict, out, _) = self.test_run_xdp_repeat(ifindex, packet, 1)?;
        Ok((verdict, out))
    }

    /// [`Self::time_from_container`] for the XDP program.
    pub fn time_xdp_from_container(
        &mut self,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), EbpfError> {
        let (verdict, _, per_run) = self.test_run_xdp_repeat(ifindex, packet, repeat)?;
        Ok((verdict, per_run))
    }

    fn test_run_xdp_repeat(
        &mut self,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration), EbpfError> {
        // struct xdp_md: data, data_end (the packet's length), data_meta,
        // ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let program = PROG_XDP_FROM_CONTAINER;
        run_on_packet(
            loader::xdp(&mut self.ebpf, program)?,
            program,
            &ctx,
            packet,
            repeat,
        )
    }

    fn test_run(
        &mut self,
        program_name: &'static str,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        let (verdict, out, _) = self.test_run_repeat(program_name, ifindex, packet, 1)?;
        Ok((verdict, out))
    }

    /// BPF_PROG_TEST_RUN of `program_name`, `repeat` times: the verdict,
    /// the packet as the last run left it, the average duration per run.
    fn test_run_repeat(
        &mut self,
        program_name: &'static str,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, Vec<u8>, std::time::Duration), EbpfError> {
        // A __sk_buff prefix up to and including `ifindex` (offset 40); the
        // kernel requires every other field in it to be zero.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let program = loader::classifier(&mut self.ebpf, program_name)?;
        let (verdict, out, per_run) = run_on_packet(program, program_name, &ctx, packet, repeat)?;
        Ok((verdict as i32, out, per_run))
    }
}

/// BPF_PROG_TEST_RUN of `program` on `packet` with the context `ctx`,
/// `repeat` times: its return value, the packet as the last run left it,
/// the average duration per run.
fn run_on_packet<P>(
    program: &P,
    name: &'static str,
    ctx: &[u8],
    packet: &[u8],
    repeat: u32,
) -> Result<(u32, Vec<u8>, std::time::Duration), EbpfError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut data_out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(ctx),
            repeat: repeat.max(1),
            ..TestRunOptions::new()
        })
        .map_err(|source| EbpfError::Program {
            program: name,
            source,
        })?;
    data_out.truncate(result.data_size_out as usize);
    Ok((result.return_value, data_out, result.duration))
}

/// `state` with the spread and peer flags of `old`, which a cap change
/// leaves as they are.
fn with_flags_of(mut state: IfaceState, old: &IfaceState) -> IfaceState {
    if state.flags & IFACE_POLICY != 0 {
        state.flags |= old.flags & (IFACE_SPREAD | IFACE_PEER);
    }
    state
}

/// Whether these buckets cap what the container receives.
fn caps_ingress(buckets: &RateBuckets) -> bool {
    buckets.ingress.ns_per_byte != 0
}

/// Removes one key of a `u32`-keyed hash map; a key already gone is fine.
fn remove_key<V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, key: u32) -> Result<(), EbpfError> {
    match hash_map::<u32, V>(ebpf, name)?.remove(&key) {
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) => Ok(()),
        Err(e) => Err(map_error(name)(e)),
    }
}

fn sorted(rows: &[CompiledPrefix]) -> Vec<CompiledPrefix> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.destination);
    rows
}
