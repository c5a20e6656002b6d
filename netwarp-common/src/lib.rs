//! Types shared by the netwarp eBPF programs and the daemon.
//!
//! Everything here is `#[repr(C)]`, uses fixed-width integers (no `bool`),
//! and has explicit padding so that the kernel and userspace agree on the
//! layout byte for byte.
#![no_std]

/// Program names, as the loader looks them up in the object.
pub const PROG_TC_FROM_CONTAINER: &str = "netwarp_tc_from_container";
pub const PROG_TC_TO_CONTAINER: &str = "netwarp_tc_to_container";
pub const PROG_TC_BRIDGE_GUARD: &str = "netwarp_tc_bridge_guard";
pub const PROG_TC_FROM_WARP: &str = "netwarp_tc_from_warp";
pub const PROG_XDP_FROM_CONTAINER: &str = "netwarp_xdp_from_container";
pub const PROG_XDP_PASS: &str = "netwarp_xdp_pass";
/// The programs' read-only global (a `u8`) that the loader sets to 0
/// where the kernel resets the packet type on a peer redirect, so the
/// from-container program skips `bpf_skb_change_type`.
pub const GLOBAL_PEER_SETS_PACKET_TYPE: &str = "NETWARP_PEER_SETS_PACKET_TYPE";

/// Direction of traffic relative to the container, not the host.
///
/// Seen from the host-side veth, tc *ingress* carries what the container
/// sends and tc *egress* carries what it receives.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the container (tc ingress on the host-side veth).
    FromContainer = 0,
    /// Received by the container (tc egress on the host-side veth).
    ToContainer = 1,
}

/// Packets and bytes (per CPU in the programs' maps): what a bridge guard
/// or a warp veth's program dropped, as tc sees it (`skb->len`, which
/// includes the Ethernet header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl TrafficCounters {
    /// Sums two readings; used to fold the per-CPU values.
    pub const fn saturating_add(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Names of maps earlier releases pinned and this one no longer uses: the
/// policy and rate slot rows, now in the [`IfaceState`] rows (carried
/// over at load), and the per-interface traffic counters (the veths' own
/// statistics give them).
pub const RETIRED_POLICY_MAP: &str = "NETWARP_POLICY";
pub const RETIRED_RATE_SLOTS_MAP: &str = "NETWARP_RATE_SLOTS";
pub const RETIRED_TRAFFIC_MAP: &str = "NETWARP_TRAFFIC";
/// Names of the LPM tries holding [`RuleValue`]s by [`RuleKeyV4`] / [`RuleKeyV6`].
pub const RULES_V4_MAP: &str = "NETWARP_RULES_V4";
pub const RULES_V6_MAP: &str = "NETWARP_RULES_V6";
/// Names of the per-CPU maps of [`VerdictCounters`] by ifindex: an array
/// for ifindexes below [`IFACE_ARRAY_SIZE`], a hash map for the rest.
pub const VERDICTS_LOW_MAP: &str = "NETWARP_VERDICTS_LOW";
pub const VERDICTS_MAP: &str = "NETWARP_VERDICTS";

/// Maximum number of targets (beyond the state array), and of rule
/// prefixes per address family.
pub const POLICY_MAP_CAPACITY: u32 = 16_384;
pub const RULES_MAP_CAPACITY: u32 = 65_536;
/// Protocol selectors one destination prefix can carry.
pub const MAX_SELECTORS: usize = 8;

/// A target's policy: which rule set is live and where steered packets go
/// (the policy part of its [`IfaceState`] row).
///
/// `rule_set` prefixes every key of the target's rules in the LPM tries.
/// The controller writes a complete new rule set under a fresh id, then
/// rewrites the state row, so the data path never sees a half-written set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub rule_set: u32,
    /// The warp container's host-side veth.
    pub warp_ifindex: u32,
    /// The warp container's MAC on the shared network.
    pub warp_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Names of the data path's one lookup per packet: each host-side veth's
/// [`IfaceState`], in an array at its ifindex's slot (the low bits,
/// [`IFACE_SLOT_MASK`]), tagged with the ifindex; a veth whose slot
/// another live veth holds has its row in a hash map by ifindex instead.
/// Ifindexes only grow on a busy host, so a slot, not the ifindex itself,
/// keeps nearly every veth on the array.
pub const IFACES_MAP: &str = "NETWARP_IFACES";
pub const IFACES_HIGH_MAP: &str = "NETWARP_IFACES_HIGH";
/// Slots of the state array and of the verdict array (a power of two).
pub const IFACE_ARRAY_SIZE: u32 = 16_384;
/// An ifindex's slot: `ifindex & IFACE_SLOT_MASK`.
pub const IFACE_SLOT_MASK: u32 = IFACE_ARRAY_SIZE - 1;

/// [`IfaceState::flags`]: the interface is a target with a policy
/// (`rule_set`, `warp_ifindex` and `warp_mac` hold it).
pub const IFACE_POLICY: u16 = 1;
/// [`IfaceState::flags`]: the interface is capped (`cap_slot` holds its slot).
pub const IFACE_CAPPED: u16 = 2;
/// [`IfaceState::flags`]: the row lives in the hash map (its verdicts too).
pub const IFACE_IN_HASH: u16 = 4;
/// [`IfaceState::flags`]: the target's warp is a spread group: a steered
/// flow goes to the member its [`SpreadTable`] slot names (`warp_ifindex`
/// and `warp_mac` hold the first member, used while no table is found).
pub const IFACE_SPREAD: u16 = 8;
/// [`IfaceState::flags`]: a steered packet enters the warp by a peer
/// redirect (`bpf_redirect_peer` into the warp's namespace-side veth),
/// skipping the warp's host-side veth egress and the backlog queue. Set
/// by the controller only where nothing of netwarp's sits on that egress
/// (no to-container program, no tbf qdisc: no ingress cap on the warp),
/// and not for a spread target (its member comes from the table).
pub const IFACE_PEER: u16 = 16;

/// Name of the hash map of each spread target's [`SpreadTable`], by its
/// host-side veth's ifindex.
pub const SPREAD_MAP: &str = "NETWARP_SPREAD";
/// Slots of a [`SpreadTable`] (a power of two): a flow takes slot
/// `flow_hash(..) % SPREAD_SLOTS`.
pub const SPREAD_SLOTS: usize = 64;
/// Spread targets the map holds (allocated only as used).
pub const SPREAD_MAP_CAPACITY: u32 = 4_096;

/// One slot of a spread table: the member warp's host-side veth on the
/// target's network and its MAC there. A zero ifindex is an empty slot
/// (its flows are dropped: a table is written whole, so only a bug leaves
/// one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpreadSlot {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A spread target's member table: each slot names the member carrying
/// the flows that hash to it. When a member leaves, only its slots are
/// given to the others, so only its flows move.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpreadTable {
    pub slots: [SpreadSlot; SPREAD_SLOTS],
}

/// The hash of a flow that picks its spread slot: the same for every
/// packet of a connection (addresses, protocol and ports; an IPv6
/// address folded to one word by XOR), whatever the kernel's own hash
/// (a TCP socket's changes on retransmission timeouts). A non-first
/// fragment has no ports (`ports` 0), so it may take another slot.
/// `ports` is the L4 header's first four bytes as read (source port,
/// destination port, in network order).
#[inline(always)]
pub fn flow_hash(source: u32, destination: u32, ip_proto: u8, ports: u32) -> u32 {
    #[inline(always)]
    fn mix(h: u32, v: u32) -> u32 {
        (h ^ v).wrapping_mul(0x9e37_79b1).rotate_left(13)
    }
    let mut h = mix(0x4e57_0000 | u32::from(ip_proto), source);
    h = mix(h, destination);
    h = mix(h, ports);
    // murmur3's finalizer: every input bit reaches the low (slot) bits.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Everything the container programs need about their interface, in one
/// value. No row (or a zero row: no flags) is an interface netwarp does
/// not program: its packets pass, as with no policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceState {
    pub rule_set: u32,
    pub warp_ifindex: u32,
    pub warp_mac: [u8; 6],
    pub flags: u16,
    pub cap_slot: u32,
    /// The interface this row is for (0 in a free slot); set where the row
    /// is placed, as is [`IFACE_IN_HASH`].
    pub ifindex: u32,
}

impl IfaceState {
    /// The row for an interface with `policy` and/or `cap_slot`.
    pub const fn of(policy: Option<TargetPolicy>, cap_slot: Option<u32>) -> Self {
        let mut state = Self {
            rule_set: 0,
            warp_ifindex: 0,
            warp_mac: [0; 6],
            flags: 0,
            cap_slot: 0,
            ifindex: 0,
        };
        if let Some(p) = policy {
            state.rule_set = p.rule_set;
            state.warp_ifindex = p.warp_ifindex;
            state.warp_mac = p.warp_mac;
            state.flags |= IFACE_POLICY;
        }
        if let Some(slot) = cap_slot {
            state.cap_slot = slot;
            state.flags |= IFACE_CAPPED;
        }
        state
    }

    /// This row as placed for `ifindex`, in the array or the hash map.
    pub const fn placed(self, ifindex: u32, in_hash: bool) -> Self {
        let mut state = self;
        state.ifindex = ifindex;
        if in_hash {
            state.flags |= IFACE_IN_HASH;
        }
        state
    }

    /// This row without its placement: what the controller compares.
    pub const fn unplaced(self) -> Self {
        let mut state = self;
        state.ifindex = 0;
        state.flags &= !IFACE_IN_HASH;
        state
    }

    /// The policy this row holds, if any.
    pub const fn policy(&self) -> Option<TargetPolicy> {
        if self.flags & IFACE_POLICY == 0 {
            return None;
        }
        Some(TargetPolicy {
            rule_set: self.rule_set,
            warp_ifindex: self.warp_ifindex,
            warp_mac: self.warp_mac,
            _pad: [0; 2],
        })
    }

    /// The cap slot this row holds, if capped.
    pub const fn cap_slot(&self) -> Option<u32> {
        if self.flags & IFACE_CAPPED == 0 {
            None
        } else {
            Some(self.cap_slot)
        }
    }
}

/// LPM key data for IPv4: the rule set id, then the address (network
/// order). The prefix length counts the 32 id bits plus the CIDR's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleKeyV4 {
    pub rule_set: [u8; 4],
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleKeyV6 {
    pub rule_set: [u8; 4],
    pub addr: [u8; 16],
}

/// Bits of the prefix length taken by the rule set id.
pub const RULE_SET_BITS: u32 = 32;

/// What a row does with a packet ([`Selector::action`],
/// [`RuleValue::default_action`]); 0 is no action: the packet passes, as
/// with no row.
/// Steer matching packets to the warp.
pub const ACTION_STEER: u8 = 1;
/// Drop matching packets because of the warp's state (fail closed); the
/// row's [`RuleValue::block_reason`] says why.
pub const ACTION_BLOCK: u8 = 2;
/// Pass matching packets: an explicit exclusion, so a longer prefix or a
/// narrower selector can carve it out of a steered one.
pub const ACTION_DIRECT: u8 = 3;
/// Drop matching packets because a `block` rule says so
/// ([`REASON_RULE`]).
pub const ACTION_DENY: u8 = 4;

/// Why a packet was dropped ([`RuleValue::block_reason`] for
/// [`ACTION_BLOCK`]; [`ACTION_DENY`] is always [`REASON_RULE`]).
/// The warp is down, missing, unhealthy or ambiguous.
pub const REASON_WARP_DOWN: u8 = 1;
/// Policy: e.g. IPv6 rules while the warp has no IPv6 address.
pub const REASON_POLICY: u8 = 2;
/// A `block` rule of the target's.
pub const REASON_RULE: u8 = 3;

/// One protocol selector and what it does; `port_lo == 0` means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub ip_proto: u8,
    /// An `ACTION_*` value (never 0 in a written row).
    pub action: u8,
    pub port_lo: u16,
    pub port_hi: u16,
}

/// What to do with packets to one destination prefix. The controller
/// folds every rule whose prefix contains this one into it, in the order
/// the reference decision ranks them (longer prefix, narrower selector,
/// safer action), so the longest match alone decides: the first selector
/// that takes the packet gives its action, else `default_action` (the
/// best rule of every protocol, which ends the list).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// For packets no selector takes; 0: leave them alone.
    pub default_action: u8,
    pub _pad: u8,
    /// Used entries of `selectors`.
    pub selector_count: u8,
    /// With [`ACTION_BLOCK`]: a `REASON_*` value, for the drop counters.
    pub block_reason: u8,
    pub selectors: [Selector; MAX_SELECTORS],
}

/// Per-target verdict counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounters {
    pub steered_packets: u64,
    pub steered_bytes: u64,
    /// Drops while the warp was unusable.
    pub warp_down_packets: u64,
    pub warp_down_bytes: u64,
    /// Drops by policy (no address of the packet's family on the warp).
    pub policy_packets: u64,
    pub policy_bytes: u64,
    /// Drops by a bandwidth cap, in either direction.
    pub rate_packets: u64,
    pub rate_bytes: u64,
    /// Drops by a `block` rule of the target's.
    pub rule_packets: u64,
    pub rule_bytes: u64,
}

impl VerdictCounters {
    /// Sums two readings; used to fold the per-CPU values.
    pub const fn saturating_add(self, o: Self) -> Self {
        Self {
            steered_packets: self.steered_packets.saturating_add(o.steered_packets),
            steered_bytes: self.steered_bytes.saturating_add(o.steered_bytes),
            warp_down_packets: self.warp_down_packets.saturating_add(o.warp_down_packets),
            warp_down_bytes: self.warp_down_bytes.saturating_add(o.warp_down_bytes),
            policy_packets: self.policy_packets.saturating_add(o.policy_packets),
            policy_bytes: self.policy_bytes.saturating_add(o.policy_bytes),
            rate_packets: self.rate_packets.saturating_add(o.rate_packets),
            rate_bytes: self.rate_bytes.saturating_add(o.rate_bytes),
            rule_packets: self.rule_packets.saturating_add(o.rule_packets),
            rule_bytes: self.rule_bytes.saturating_add(o.rule_bytes),
        }
    }
}

/// Name of the hash map holding the [`RateBuckets`] by cap slot (each
/// capped interface's [`IfaceState`] names its container's slot). A
/// container on several networks has one veth per network; all of them
/// share its slot, so the cap is per container.
pub const RATE_BUCKETS_MAP: &str = "NETWARP_RATE_BUCKETS";

/// Fixed-point shift of [`TokenBucket::ns_per_byte`].
pub const NS_PER_BYTE_SHIFT: u32 = 16;

/// One direction's cap, as a virtual clock: `next_ns` is when the bucket
/// is empty again (CLOCK_MONOTONIC). A packet passes while
/// `next_ns <= now` and then moves it on by the packet's cost; after an
/// idle period `next_ns` is pulled up to `now - burst_ns`, which bounds the
/// credit to the burst.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds per byte, shifted left by [`NS_PER_BYTE_SHIFT`]; 0 when
    /// this direction has no cap.
    pub ns_per_byte: u64,
    pub burst_ns: u64,
    pub next_ns: u64,
}

impl TokenBucket {
    /// A bucket for `bytes_per_second` with `burst_bytes` of credit, full.
    pub const fn new(bytes_per_second: u64, burst_bytes: u64) -> Self {
        let ns_per_byte = if bytes_per_second == 0 {
            0
        } else {
            // Rounded up, so the cap is never exceeded by rounding.
            ((1_000_000_000u128 << NS_PER_BYTE_SHIFT).div_ceil(bytes_per_second as u128)) as u64
        };
        Self {
            ns_per_byte,
            burst_ns: ((burst_bytes as u128 * ns_per_byte as u128) >> NS_PER_BYTE_SHIFT) as u64,
            next_ns: 0,
        }
    }
}

/// A container's caps: egress (what it sends, tc ingress on its veth) and
/// ingress (what it receives, tc egress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBuckets {
    pub egress: TokenBucket,
    pub ingress: TokenBucket,
}

/// Name of the hash map giving each guarded bridge (by ifindex) the rule
/// set its guard blocks, of the hash map of the sources it lets pass
/// ([`GuardAllowKey`]), and of the per-CPU map of what it dropped
/// ([`TrafficCounters`] by bridge ifindex).
pub const GUARDS_MAP: &str = "NETWARP_GUARDS";
pub const GUARD_ALLOW_MAP: &str = "NETWARP_GUARD_ALLOW";
pub const GUARD_DROPS_MAP: &str = "NETWARP_GUARD_DROPS";

/// Bridges one host can guard, and the sources their guards let pass.
pub const GUARDS_MAP_CAPACITY: u32 = 1_024;
pub const GUARD_ALLOW_MAP_CAPACITY: u32 = 65_536;

/// [`GuardAllowKey::kind`]: an IPv4 or IPv6 source address, or a source MAC.
pub const GUARD_ALLOW_IPV4: u32 = 4;
pub const GUARD_ALLOW_IPV6: u32 = 6;
pub const GUARD_ALLOW_MAC: u32 = 0;

/// A source a bridge's guard lets pass. `addr` holds the address (IPv4 and
/// MACs left-aligned, the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuardAllowKey {
    pub bridge_ifindex: u32,
    pub kind: u32,
    pub addr: [u8; 16],
}

/// Name of the hash map of the targets each warp veth serves
/// ([`WarpPeerKey`] to the target's host-side veth ifindex), and of the
/// per-CPU map of what each warp veth's program dropped because the warp
/// forwarded a target's steered traffic untransformed ([`TrafficCounters`]
/// by warp veth ifindex).
pub const WARP_PEERS_MAP: &str = "NETWARP_WARP_PEERS";
pub const WARP_LEAKS_MAP: &str = "NETWARP_WARP_LEAKS";

/// Rows in the warp peer map: targets' addresses times their warp's veths.
pub const WARP_PEERS_MAP_CAPACITY: u32 = 65_536;

/// One address of a target, as seen on one of its warp's host-side veths.
/// `family` is [`GUARD_ALLOW_IPV4`] or [`GUARD_ALLOW_IPV6`]; `addr` holds
/// the address left-aligned, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WarpPeerKey {
    pub warp_ifindex: u32,
    pub family: u32,
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers and a byte array, no padding (24 bytes).
    unsafe impl aya::Pod for super::WarpPeerKey {}
    // SAFETY: repr(C), integers and a byte array, no padding (24 bytes).
    unsafe impl aya::Pod for super::GuardAllowKey {}
    // SAFETY: repr(C), made only of integers, and has no padding.
    unsafe impl aya::Pod for super::TrafficCounters {}
    // SAFETY: as above; explicit `_pad` fields leave no implicit padding.
    unsafe impl aya::Pod for super::TargetPolicy {}
    unsafe impl aya::Pod for super::IfaceState {}
    unsafe impl aya::Pod for super::SpreadSlot {}
    unsafe impl aya::Pod for super::SpreadTable {}
    unsafe impl aya::Pod for super::RuleKeyV4 {}
    unsafe impl aya::Pod for super::RuleKeyV6 {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::VerdictCounters {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::RateBuckets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<TrafficCounters>(), 16);
        assert_eq!(size_of::<TargetPolicy>(), 16);
        assert_eq!(size_of::<IfaceState>(), 24);
        assert_eq!(size_of::<RuleKeyV4>(), 8);
        assert_eq!(size_of::<RuleKeyV6>(), 20);
        assert_eq!(size_of::<Selector>(), 6);
        assert_eq!(size_of::<RuleValue>(), 4 + 6 * MAX_SELECTORS);
        assert_eq!(size_of::<VerdictCounters>(), 80);
        assert_eq!(size_of::<TokenBucket>(), 24);
        assert_eq!(size_of::<RateBuckets>(), 48);
        assert_eq!(size_of::<GuardAllowKey>(), 24);
        assert_eq!(size_of::<WarpPeerKey>(), 24);
    }

    #[test]
    fn a_state_row_holds_a_policy_and_a_cap_slot_independently() {
        let policy = TargetPolicy {
            rule_set: 7,
            warp_ifindex: 3,
            warp_mac: [2, 0, 0, 0, 0, 1],
            _pad: [0; 2],
        };
        let both = IfaceState::of(Some(policy), Some(0));
        assert_eq!((both.policy(), both.cap_slot()), (Some(policy), Some(0)));
        // Slot 0 is a slot: the flag, not the value, says capped.
        assert_eq!(IfaceState::of(None, Some(0)).cap_slot(), Some(0));
        assert_eq!(IfaceState::of(None, Some(0)).policy(), None);
        assert_eq!(IfaceState::of(Some(policy), None).cap_slot(), None);
        // No policy and no cap is the zero row: an interface left alone.
        assert_eq!(IfaceState::of(None, None), IfaceState::default());
        // Placement is not part of what is compared.
        let placed = both.placed(20_000, true);
        assert_eq!(
            (placed.ifindex, placed.flags & IFACE_IN_HASH),
            (20_000, IFACE_IN_HASH)
        );
        assert_eq!(placed.unplaced(), both);
    }

    #[test]
    fn counters_fold_saturating() {
        let a = TrafficCounters {
            packets: u64::MAX,
            bytes: 1,
        };
        let b = TrafficCounters {
            packets: 5,
            bytes: 2,
        };
        assert_eq!(
            a.saturating_add(b),
            TrafficCounters {
                packets: u64::MAX,
                bytes: 3
            }
        );
    }

    #[test]
    fn token_buckets_convert_rates_to_time_per_byte() {
        // 1 gbit/s is 8 ns per byte; a 125 kB burst is 1 ms of credit.
        let bucket = TokenBucket::new(125_000_000, 125_000);
        assert_eq!(bucket.ns_per_byte, 8 << NS_PER_BYTE_SHIFT);
        assert_eq!(bucket.burst_ns, 1_000_000);
        // 20 mbit/s is 400 ns per byte.
        assert_eq!(
            TokenBucket::new(2_500_000, 0).ns_per_byte,
            400 << NS_PER_BYTE_SHIFT
        );
        assert_eq!(TokenBucket::new(0, 1000), TokenBucket::default());
    }
}
