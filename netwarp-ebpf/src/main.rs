//! netwarp's eBPF programs.
//!
//! Each entry point is a thin wrapper around a `try_*` function. The
//! programs stay small: parse, look up, act, count.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no atomic read-modify-write types; the intrinsic
// lowers to BPF's atomic add, which the kernel supports everywhere.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        EbpfContext,
        bindings::{
            BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC,
            xdp_action::{XDP_DROP, XDP_PASS},
        },
        helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer},
        macros::{classifier, map, xdp},
        maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
        programs::{TcContext, XdpContext},
    };
    use aya_log_ebpf::debug;
    use netwarp_common::{
        ACTION_BLOCK, ACTION_DENY, ACTION_DIRECT, ACTION_STEER, Direction, GUARD_ALLOW_IPV4,
        GUARD_ALLOW_IPV6, GUARD_ALLOW_MAC, GUARD_ALLOW_MAP_CAPACITY, GUARDS_MAP_CAPACITY,
        GuardAllowKey, IFACE_ARRAY_SIZE, IFACE_CAPPED, IFACE_IN_HASH, IFACE_PEER, IFACE_POLICY,
        IFACE_SLOT_MASK, IFACE_SPREAD, IfaceState, MAX_SELECTORS, NS_PER_BYTE_SHIFT,
        POLICY_MAP_CAPACITY, REASON_RULE, REASON_WARP_DOWN, RULE_SET_BITS, RULES_MAP_CAPACITY,
        RateBuckets, RuleKeyV4, RuleKeyV6, RuleValue, SPREAD_MAP_CAPACITY, SPREAD_SLOTS,
        SpreadTable, TokenBucket, TrafficCounters, VerdictCounters, WARP_PEERS_MAP_CAPACITY,
        WarpPeerKey, flow_hash,
    };

    /// Each host-side veth's state (policy, warp, cap slot), at its
    /// ifindex's slot (the low bits) and tagged with the ifindex: the
    /// container programs' one lookup. Keyed by interface, so a container
    /// cannot pick a policy by spoofing addresses. An array lookup is
    /// inlined by the verifier into a bounds check and an add.
    #[map(name = "NETWARP_IFACES")]
    static NETWARP_IFACES: Array<IfaceState> = Array::with_max_entries(IFACE_ARRAY_SIZE, 0);

    /// The same, by ifindex, for a veth whose slot another one holds.
    #[map(name = "NETWARP_IFACES_HIGH")]
    static NETWARP_IFACES_HIGH: HashMap<u32, IfaceState> =
        HashMap::with_max_entries(POLICY_MAP_CAPACITY, 0);

    /// Flag the kernel requires on LPM tries.
    const BPF_F_NO_PREALLOC: u32 = 1;

    #[map(name = "NETWARP_RULES_V4")]
    static NETWARP_RULES_V4: LpmTrie<RuleKeyV4, RuleValue> =
        LpmTrie::with_max_entries(RULES_MAP_CAPACITY, BPF_F_NO_PREALLOC);

    #[map(name = "NETWARP_RULES_V6")]
    static NETWARP_RULES_V6: LpmTrie<RuleKeyV6, RuleValue> =
        LpmTrie::with_max_entries(RULES_MAP_CAPACITY, BPF_F_NO_PREALLOC);

    /// What the programs alone can count (steered, dropped by reason), per
    /// target and CPU: in an array at the target's state slot (inlined
    /// lookup, no insert), by ifindex in a hash map for a state row there. Packets and
    /// bytes the veth's own statistics give are not counted here.
    #[map(name = "NETWARP_VERDICTS_LOW")]
    static NETWARP_VERDICTS_LOW: PerCpuArray<VerdictCounters> =
        PerCpuArray::with_max_entries(IFACE_ARRAY_SIZE, 0);

    #[map(name = "NETWARP_VERDICTS")]
    static NETWARP_VERDICTS: PerCpuHashMap<u32, VerdictCounters> =
        PerCpuHashMap::with_max_entries(POLICY_MAP_CAPACITY, 0);

    /// Each container's token buckets, by cap slot. Shared by every CPU:
    /// a cap is one budget, however the packets are spread.
    #[map(name = "NETWARP_RATE_BUCKETS")]
    static NETWARP_RATE_BUCKETS: HashMap<u32, RateBuckets> =
        HashMap::with_max_entries(POLICY_MAP_CAPACITY, 0);

    /// Each guarded bridge's rule set, by the bridge's ifindex.
    #[map(name = "NETWARP_GUARDS")]
    static NETWARP_GUARDS: HashMap<u32, u32> = HashMap::with_max_entries(GUARDS_MAP_CAPACITY, 0);

    /// Sources a bridge's guard lets pass: known non-targets and warps.
    #[map(name = "NETWARP_GUARD_ALLOW")]
    static NETWARP_GUARD_ALLOW: HashMap<GuardAllowKey, u8> =
        HashMap::with_max_entries(GUARD_ALLOW_MAP_CAPACITY, 0);

    /// What each bridge's guard dropped.
    #[map(name = "NETWARP_GUARD_DROPS")]
    static NETWARP_GUARD_DROPS: PerCpuHashMap<u32, TrafficCounters> =
        PerCpuHashMap::with_max_entries(GUARDS_MAP_CAPACITY, 0);

    /// The targets each warp veth serves, by their addresses: the value is
    /// the target's host-side veth, whose policy holds its rules.
    #[map(name = "NETWARP_WARP_PEERS")]
    static NETWARP_WARP_PEERS: HashMap<WarpPeerKey, u32> =
        HashMap::with_max_entries(WARP_PEERS_MAP_CAPACITY, 0);

    /// Each spread target's member table, by its host-side veth.
    #[map(name = "NETWARP_SPREAD")]
    static NETWARP_SPREAD: HashMap<u32, SpreadTable> =
        HashMap::with_max_entries(SPREAD_MAP_CAPACITY, BPF_F_NO_PREALLOC);

    /// What each warp veth's program dropped: a target's steered traffic
    /// the warp forwarded without tunnelling or NAT.
    #[map(name = "NETWARP_WARP_LEAKS")]
    static NETWARP_WARP_LEAKS: PerCpuHashMap<u32, TrafficCounters> =
        PerCpuHashMap::with_max_entries(WARP_PEERS_MAP_CAPACITY, 0);

    const ETH_HLEN: usize = 14;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    /// IPv6 extension headers the parser walks to find the L4 header.
    const NEXTHDR_HOP: u8 = 0;
    const NEXTHDR_ROUTING: u8 = 43;
    const NEXTHDR_FRAGMENT: u8 = 44;
    const NEXTHDR_AUTH: u8 = 51;
    const NEXTHDR_DEST: u8 = 60;
    const MAX_EXT_HEADERS: usize = 6;
    /// `skb->pkt_type` of a frame for this host (linux/if_packet.h).
    const PACKET_HOST: u32 = 0;

    /// Set by the loader (a read-only global, so the verifier drops the
    /// branch it does not take): nonzero where a peer redirect keeps the
    /// packet type the host-side veth gave the frame and the program must
    /// set it (kernels before 6.15); zero where the kernel resets it.
    #[unsafe(no_mangle)]
    static NETWARP_PEER_SETS_PACKET_TYPE: u8 = 1;

    /// What netwarp returns for packets it leaves alone: TC_ACT_UNSPEC
    /// (TCX_NEXT), so tc programs attached after netwarp's still run.
    const PASS: i32 = TC_ACT_UNSPEC;

    /// tc ingress on a container's host-side veth: what the container sends.
    #[classifier]
    pub fn netwarp_tc_from_container(ctx: TcContext) -> i32 {
        let ifindex = ctx.ifindex();
        let Some(state) = iface_state(ifindex) else {
            return PASS;
        };
        if state.flags & IFACE_CAPPED != 0 && !within_cap(&ctx, state, Direction::FromContainer) {
            return TC_ACT_SHOT;
        }
        if state.flags & IFACE_POLICY == 0 {
            return PASS;
        }
        try_steer(&ctx, state).unwrap_or(PASS)
    }

    /// XDP on a container's host-side veth
    /// (`dataplane.ebpf_from_container_hook = "xdp"`): what the container
    /// sends, in the veth's NAPI, before an skb exists. It steers and drops as the tc program does, by the same
    /// code; whatever it cannot decide on its frame alone (headers beyond
    /// it, a capped container, no rule) is passed on to the tc program,
    /// still attached behind it, which decides as it always does.
    #[xdp]
    pub fn netwarp_xdp_from_container(ctx: XdpContext) -> u32 {
        let ifindex = ctx.ifindex();
        let Some(state) = iface_state(ifindex) else {
            return XDP_PASS;
        };
        // A cap charges what tc sees (offload packets by their segments).
        if state.flags & IFACE_CAPPED != 0 || state.flags & IFACE_POLICY == 0 {
            return XDP_PASS;
        }
        try_steer(&ctx, state).map_or(XDP_PASS, |verdict| verdict as u32)
    }

    /// XDP on a warp's end of its veth, inside the warp's namespace: passes
    /// everything. A veth delivers frames redirected to it by XDP only
    /// while its peer runs NAPI, which an XDP program there turns on.
    #[xdp]
    pub fn netwarp_xdp_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    /// What the steering code needs of a packet's context: tc's and XDP's.
    trait Packet: EbpfContext {
        /// The verdict that drops the packet.
        const DROP: i32;
        /// The interface the packet came in on.
        fn ifindex(&self) -> u32;
        /// The directly readable bytes: `[data, data_end)`.
        fn data(&self) -> usize;
        fn data_end(&self) -> usize;
        /// The packet's length, for the counters.
        fn frame_len(&self) -> u32;
        /// Reads a `T` at `offset` beyond the directly readable bytes.
        fn load_beyond<T>(&self, offset: usize) -> Option<T>;
        /// Sends the packet to the warp's host-side veth `ifindex`,
        /// addressed to the warp's `mac` there, so that the warp's end
        /// takes it as its own; with `peer`, where the hook can, straight
        /// into that end (None: the frame could not be rewritten).
        fn redirect(&self, ifindex: u32, mac: &[u8; 6], peer: bool) -> Option<i32>;
    }

    impl Packet for TcContext {
        const DROP: i32 = TC_ACT_SHOT;
        #[inline(always)]
        fn ifindex(&self) -> u32 {
            // SAFETY: the verifier guarantees `skb` points at a valid __sk_buff.
            unsafe { (*self.skb.skb).ifindex }
        }
        #[inline(always)]
        fn data(&self) -> usize {
            TcContext::data(self)
        }
        #[inline(always)]
        fn data_end(&self) -> usize {
            TcContext::data_end(self)
        }
        #[inline(always)]
        fn frame_len(&self) -> u32 {
            self.len()
        }
        /// Through `bpf_skb_load_bytes`: headers beyond the linear part.
        #[inline(always)]
        fn load_beyond<T>(&self, offset: usize) -> Option<T> {
            self.load(offset).ok()
        }
        #[inline(always)]
        fn redirect(&self, ifindex: u32, mac: &[u8; 6], peer: bool) -> Option<i32> {
            // Straight into the warp's namespace-side veth, with no new
            // eth_type_trans, so the destination MAC is never looked at
            // again and stays the gateway's (no write, which may copy a
            // cloned TCP header). The packet type this veth gave the frame
            // (another host's) would make ip_rcv drop it there: kernels
            // from 6.15 reset it in the redirect; TCX's 6.6 to 6.14 need
            // the helper. It never fails from PACKET_OTHERHOST; if it did,
            // the classic redirect below would still deliver.
            // SAFETY: a read of a plain global the loader may have set.
            let set_type = unsafe { core::ptr::read_volatile(&NETWARP_PEER_SETS_PACKET_TYPE) } != 0;
            if peer && (!set_type || self.change_type(PACKET_HOST).is_ok()) {
                // SAFETY: a plain helper call; it only records the target.
                return Some(unsafe { bpf_redirect_peer(ifindex, 0) } as i32);
            }
            // Through the warp's host-side veth: its end runs
            // eth_type_trans, which takes only frames for its MAC.
            self.store(0, mac, 0).ok()?;
            // SAFETY: a plain helper call; it only records the target.
            Some(unsafe { bpf_redirect(ifindex, 0) as i32 })
        }
    }

    impl Packet for XdpContext {
        const DROP: i32 = XDP_DROP as i32;
        #[inline(always)]
        fn ifindex(&self) -> u32 {
            // SAFETY: the verifier guarantees `ctx` points at a valid xdp_md.
            unsafe { (*self.ctx).ingress_ifindex }
        }
        #[inline(always)]
        fn data(&self) -> usize {
            XdpContext::data(self)
        }
        #[inline(always)]
        fn data_end(&self) -> usize {
            XdpContext::data_end(self)
        }
        #[inline(always)]
        fn frame_len(&self) -> u32 {
            (XdpContext::data_end(self) - XdpContext::data(self)) as u32
        }
        /// None: the frame is all there is (no fragments), so what lies
        /// beyond it is left to the tc program.
        #[inline(always)]
        fn load_beyond<T>(&self, _offset: usize) -> Option<T> {
            None
        }
        /// XDP has no peer redirect: the frame goes to the warp veth's
        /// transmit (XDP_REDIRECT), which hands it to its peer.
        #[inline(always)]
        fn redirect(&self, ifindex: u32, mac: &[u8; 6], _peer: bool) -> Option<i32> {
            let start = XdpContext::data(self);
            if start + mac.len() > XdpContext::data_end(self) {
                return None;
            }
            // SAFETY: the six bytes lie within [data, data_end), checked above.
            unsafe { core::ptr::write_unaligned(start as *mut [u8; 6], *mac) };
            // SAFETY: a plain helper call; it only records the target.
            Some(unsafe { bpf_redirect(ifindex, 0) as i32 })
        }
    }

    /// tc egress on a container's host-side veth: what the container receives.
    #[classifier]
    pub fn netwarp_tc_to_container(ctx: TcContext) -> i32 {
        let ifindex = ctx.ifindex();
        if let Some(state) = iface_state(ifindex)
            && state.flags & IFACE_CAPPED != 0
            && !within_cap(&ctx, state, Direction::ToContainer)
        {
            return TC_ACT_SHOT;
        }
        PASS
    }

    /// The state row of a host-side veth: the array's at its slot when
    /// tagged with its ifindex, else the hash map's (none: netwarp does not
    /// program it). The controller rewrites a row in place, without a
    /// lock: a packet racing the write may see fields of both rows, each
    /// of which is a complete, valid state (its rule sets stay installed
    /// until after the write), so it is steered or dropped by one or the
    /// other. A slot changes hands only once its veth's row is cleared.
    ///
    /// The array lookup comes first and alone: two lookups behind one
    /// branch would be merged by the compiler into one call with a
    /// variable map, which the verifier cannot inline.
    #[inline(always)]
    fn iface_state(ifindex: u32) -> Option<&'static IfaceState> {
        if let Some(state) = NETWARP_IFACES.get(ifindex & IFACE_SLOT_MASK)
            && state.ifindex == ifindex
        {
            return Some(state);
        }
        // SAFETY: read-only use of a value the controller replaces whole.
        unsafe { NETWARP_IFACES_HIGH.get(&ifindex) }
    }

    /// The policy of the target whose host-side veth is `ifindex`.
    #[inline(always)]
    fn policy_of(ifindex: u32) -> Option<&'static IfaceState> {
        iface_state(ifindex).filter(|s| s.flags & IFACE_POLICY != 0)
    }

    /// tc ingress on a Docker network's bridge: what its containers send to
    /// the host, to be routed. Targets netwarp has programmed never get
    /// here with steered traffic (their veth redirects or drops it), so a
    /// packet to a guarded prefix comes from a container netwarp has not
    /// programmed yet; unless its source is known to pass, or the guard's
    /// row for it is a carve-out (`direct`), it is dropped.
    #[classifier]
    pub fn netwarp_tc_bridge_guard(ctx: TcContext) -> i32 {
        try_guard(&ctx).unwrap_or(PASS)
    }

    #[inline(always)]
    fn try_guard(ctx: &TcContext) -> Option<i32> {
        let ifindex = ctx.ifindex();
        // SAFETY: read-only use of a value the controller writes whole.
        let rule_set = unsafe { NETWARP_GUARDS.get(&ifindex) }?.to_be_bytes();
        let mut allow = GuardAllowKey {
            bridge_ifindex: ifindex,
            kind: GUARD_ALLOW_MAC,
            addr: [0; 16],
        };
        let mac: [u8; 6] = read(ctx, 6)?;
        allow.addr[..6].copy_from_slice(&mac);
        if allowed(&allow) {
            return None;
        }
        let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
        match ethertype {
            ETH_P_IP => {
                let source: [u8; 4] = read(ctx, ETH_HLEN + 12)?;
                allow.kind = GUARD_ALLOW_IPV4;
                allow.addr = [0; 16];
                allow.addr[..4].copy_from_slice(&source);
            }
            ETH_P_IPV6 => {
                allow.kind = GUARD_ALLOW_IPV6;
                allow.addr = read(ctx, ETH_HLEN + 8)?;
            }
            _ => return None,
        }
        if allowed(&allow) {
            return None;
        }
        let (action, _, _) = matching_rule(ctx, ethertype, rule_set)?;
        if leaves_alone(action) {
            return None;
        }
        count_guard_drop(ifindex, u64::from(ctx.len()));
        debug!(ctx, "guard drop: bridge ifindex {}", ifindex);
        Some(TC_ACT_SHOT)
    }

    /// tc ingress on each of a warp's host-side veths: what the warp sends.
    ///
    /// A VPN client forwards what it receives: into its tunnel while that
    /// is up, and by its default route when it is not. A packet carrying
    /// one of its targets' addresses as source, toward a prefix that
    /// target steers, was forwarded untransformed (no tunnel, no NAT): it
    /// is dropped here, on whichever of the warp's networks it leaves by.
    /// So is one the target's rules drop (the warp going down turns its
    /// steered rows into drops while packets steered a moment before are
    /// still in the warp; a `block` rule's traffic may not leave at all).
    /// Only what the target's rules leave alone (`direct`, or no rule)
    /// passes: the target may send that where it likes, the warp included.
    /// Packets to a target go straight to the target's veth, as steering
    /// does the other way (from its warp's veth; of a spread group, from
    /// any member's, since only members' veths have its peer rows): on an `--internal` network Docker's isolation
    /// rules would drop replies whose source is outside the subnet.
    #[classifier]
    pub fn netwarp_tc_from_warp(ctx: TcContext) -> i32 {
        try_from_warp(&ctx).unwrap_or(PASS)
    }

    #[inline(always)]
    fn try_from_warp(ctx: &TcContext) -> Option<i32> {
        let ifindex = ctx.ifindex();
        let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
        let mut key = WarpPeerKey {
            warp_ifindex: ifindex,
            family: 0,
            addr: [0; 16],
        };
        let (source, destination) = match ethertype {
            ETH_P_IP => {
                key.family = GUARD_ALLOW_IPV4;
                let mut source = [0u8; 16];
                let mut destination = [0u8; 16];
                source[..4].copy_from_slice(&read::<[u8; 4]>(ctx, ETH_HLEN + 12)?);
                destination[..4].copy_from_slice(&read::<[u8; 4]>(ctx, ETH_HLEN + 16)?);
                (source, destination)
            }
            ETH_P_IPV6 => {
                key.family = GUARD_ALLOW_IPV6;
                (
                    read::<[u8; 16]>(ctx, ETH_HLEN + 8)?,
                    read::<[u8; 16]>(ctx, ETH_HLEN + 24)?,
                )
            }
            _ => return None,
        };
        key.addr = destination;
        // SAFETY: read-only lookups of values the controller writes whole.
        if let Some(target) = unsafe { NETWARP_WARP_PEERS.get(&key) }
            && let Some(policy) = policy_of(*target)
            && (policy.warp_ifindex == ifindex || policy.flags & IFACE_SPREAD != 0)
        {
            // SAFETY: a plain helper call; it only records the target.
            return Some(unsafe { bpf_redirect(*target, 0) } as i32);
        }
        key.addr = source;
        // SAFETY: as above.
        let target = unsafe { NETWARP_WARP_PEERS.get(&key) }?;
        let policy = policy_of(*target)?;
        let (action, _, _) = matching_rule(ctx, ethertype, policy.rule_set.to_be_bytes())?;
        if leaves_alone(action) {
            return None;
        }
        add_traffic(&NETWARP_WARP_LEAKS, &ifindex, u64::from(ctx.len()));
        debug!(ctx, "untunnelled forward dropped: warp ifindex {}", ifindex);
        Some(TC_ACT_SHOT)
    }

    #[inline(always)]
    fn allowed(key: &GuardAllowKey) -> bool {
        // SAFETY: read-only lookup.
        unsafe { NETWARP_GUARD_ALLOW.get(key) }.is_some()
    }

    #[inline(always)]
    fn count_guard_drop(ifindex: u32, bytes: u64) {
        add_traffic(&NETWARP_GUARD_DROPS, &ifindex, bytes);
    }

    /// The token bucket of the container's cap in `direction`: true when
    /// the packet may pass (and is charged), false to drop it (counted).
    ///
    /// No bucket lock: the charge is an atomic add, so concurrent packets
    /// are all paid for; only the rare pull-up after an idle period can
    /// race, which at worst forgets one packet's cost. A packet passes
    /// while the bucket is not in debt, so one larger than the burst (a
    /// 64 KiB offload packet) is never starved; the debt it leaves is paid
    /// before the next one passes, so the long-run rate holds.
    #[inline(always)]
    fn within_cap(ctx: &TcContext, state: &IfaceState, direction: Direction) -> bool {
        let ifindex = state.ifindex;
        let Some(buckets) = NETWARP_RATE_BUCKETS.get_ptr_mut(&state.cap_slot) else {
            return true;
        };
        // SAFETY: the pointer is into a live map value; fields are plain u64.
        let bucket: *mut TokenBucket = unsafe {
            match direction {
                Direction::FromContainer => &raw mut (*buckets).egress,
                Direction::ToContainer => &raw mut (*buckets).ingress,
            }
        };
        // SAFETY: as above; read once, the controller may rewrite it.
        let (ns_per_byte, burst_ns) = unsafe { ((*bucket).ns_per_byte, (*bucket).burst_ns) };
        if ns_per_byte == 0 {
            return true;
        }
        // SAFETY: a plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: a u64 field of the map value; other CPUs update it atomically.
        let next_ns = unsafe { &raw mut (*bucket).next_ns };
        // SAFETY: as above.
        let next = unsafe { core::ptr::read_volatile(next_ns) };
        if next > now {
            count_verdict(state, u64::from(ctx.len()), Verdict::Rate);
            debug!(
                ctx,
                "cap drop: ifindex {} direction {}", ifindex, direction as u32
            );
            return false;
        }
        let floor = now.saturating_sub(burst_ns);
        if next < floor {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(next_ns, floor) };
        }
        let cost = (wire_bytes(ctx) * ns_per_byte) >> NS_PER_BYTE_SHIFT;
        // SAFETY: as above; the result is unused, so this is BPF's plain
        // atomic add, which needs no newer instruction set.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                next_ns, cost,
            )
        };
        true
    }

    /// The packet's Ethernet frame bytes as they cross the wire (as tc
    /// counts them, without preamble and FCS): an offload (GSO) packet
    /// becomes `gso_segs` frames, each with its own headers.
    #[inline(always)]
    fn wire_bytes(ctx: &TcContext) -> u64 {
        let bytes = u64::from(ctx.len());
        // SAFETY: the verifier guarantees `skb` points at a valid __sk_buff.
        let segments = u64::from(unsafe { (*ctx.skb.skb).gso_segs });
        if segments <= 1 {
            return bytes;
        }
        bytes + (segments - 1) * (ETH_HLEN as u64 + segment_header_len(ctx))
    }

    /// IP plus TCP/UDP header length of the packet (IPv6 extension headers
    /// are not counted; offload packets rarely carry them).
    #[inline(always)]
    fn segment_header_len(ctx: &TcContext) -> u64 {
        // IPv4 with a TCP header carrying timestamps: the common case.
        const FALLBACK: u64 = 52;
        let Some(ethertype) = read::<u16>(ctx, 12) else {
            return FALLBACK;
        };
        let (ip_len, ip_proto) = match u16::from_be(ethertype) {
            ETH_P_IP => {
                let Some(version_ihl) = read::<u8>(ctx, ETH_HLEN) else {
                    return FALLBACK;
                };
                let Some(proto) = read::<u8>(ctx, ETH_HLEN + 9) else {
                    return FALLBACK;
                };
                (usize::from(version_ihl & 0x0f) * 4, proto)
            }
            ETH_P_IPV6 => {
                let Some(proto) = read::<u8>(ctx, ETH_HLEN + 6) else {
                    return FALLBACK;
                };
                (40, proto)
            }
            _ => return FALLBACK,
        };
        let l4_len = match ip_proto {
            IPPROTO_TCP => match ctx.load::<u8>(ETH_HLEN + ip_len + 12) {
                Ok(offset) => u64::from(offset >> 4) * 4,
                Err(_) => return FALLBACK,
            },
            IPPROTO_UDP => 8,
            _ => 0,
        };
        ip_len as u64 + l4_len
    }

    /// Reads a `T` at `offset` of the packet: straight from its linear
    /// data when it lies there (direct packet access, no helper call), by
    /// `bpf_skb_load_bytes` otherwise (headers beyond the linear part).
    ///
    /// `offset` must be a constant: the verifier proves direct accesses
    /// only through a fixed offset from `data`, and with a variable one
    /// the compiler folds the access size into it, so nothing is proven.
    #[inline(always)]
    fn read<T: Copy>(ctx: &impl Packet, offset: usize) -> Option<T> {
        let start = ctx.data();
        if start + offset + core::mem::size_of::<T>() <= ctx.data_end() {
            // SAFETY: the bytes lie within [data, data_end), checked above.
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
        }
        ctx.load_beyond(offset)
    }

    /// What the parser found: the L4 protocol, the destination port when it
    /// could be read, and whether this is a non-first fragment (no L4 header).
    struct Flow {
        ip_proto: u8,
        /// Whether the ports were read; `dport` is 0 where they were not.
        has_ports: bool,
        dport: u16,
        /// The L4 header's first four bytes as read (source and
        /// destination port), 0 where there are none: the spread hash's.
        ports: u32,
        later_fragment: bool,
    }

    impl Flow {
        /// Every field defined, ports or not: an Option's undefined payload
        /// may be kept in a register and spilled, which the verifier
        /// refuses (it reads no uninitialised register).
        #[inline(always)]
        fn of(ip_proto: u8, ports: Option<[u8; 4]>, later_fragment: bool) -> Self {
            let bytes = ports.unwrap_or([0; 4]);
            Flow {
                ip_proto,
                has_ports: ports.is_some(),
                dport: u16::from_be_bytes([bytes[2], bytes[3]]),
                ports: u32::from_ne_bytes(bytes),
                later_fragment,
            }
        }
    }

    /// Returns the verdict for a packet from a target, or None to pass it.
    /// Unparseable or truncated packets pass: they are not steerable traffic
    /// and the kernel drops malformed IP itself.
    #[inline(always)]
    fn try_steer<C: Packet>(ctx: &C, policy: &IfaceState) -> Option<i32> {
        let ifindex = policy.ifindex;
        let rule_set = policy.rule_set.to_be_bytes();
        let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
        let (action, rule, flow) = matching_rule(ctx, ethertype, rule_set)?;
        let bytes = u64::from(ctx.frame_len());
        match action {
            ACTION_STEER => {
                let (mut warp_ifindex, mut warp_mac) = (policy.warp_ifindex, policy.warp_mac);
                if policy.flags & IFACE_SPREAD != 0
                    // SAFETY: read-only use of a value the controller writes whole.
                    && let Some(table) = unsafe { NETWARP_SPREAD.get(&ifindex) }
                {
                    let slot = spread_hash(ctx, ethertype, &flow)? as usize % SPREAD_SLOTS;
                    let member = table.slots.get(slot)?;
                    if member.ifindex == 0 {
                        count_verdict(policy, bytes, Verdict::WarpDown);
                        return Some(C::DROP);
                    }
                    (warp_ifindex, warp_mac) = (member.ifindex, member.mac);
                }
                // A frame that cannot be rewritten must not go on by the
                // default route: dropped (counted as steered, which it was).
                let peer = policy.flags & IFACE_PEER != 0;
                let verdict = ctx.redirect(warp_ifindex, &warp_mac, peer);
                count_verdict(policy, bytes, Verdict::Steered);
                Some(verdict.unwrap_or(C::DROP))
            }
            ACTION_BLOCK | ACTION_DENY => {
                let (verdict, reason) = if action == ACTION_DENY {
                    (Verdict::Rule, REASON_RULE)
                } else if rule.block_reason == REASON_WARP_DOWN {
                    (Verdict::WarpDown, REASON_WARP_DOWN)
                } else {
                    (Verdict::Policy, rule.block_reason)
                };
                count_verdict(policy, bytes, verdict);
                debug!(ctx, "blocked: ifindex {} reason {}", ifindex, reason);
                Some(C::DROP)
            }
            // ACTION_DIRECT, or no action: left alone.
            _ => None,
        }
    }

    /// The [`flow_hash`] of a packet: its addresses (an IPv6 one folded
    /// to a word) and what the parser read of its protocol and ports.
    #[inline(always)]
    fn spread_hash<C: Packet>(ctx: &C, ethertype: u16, flow: &Flow) -> Option<u32> {
        let (source, destination) = if ethertype == ETH_P_IP {
            let [s, d]: [u32; 2] = read(ctx, ETH_HLEN + 12)?;
            (s, d)
        } else {
            let [s0, s1, s2, s3, d0, d1, d2, d3]: [u32; 8] = read(ctx, ETH_HLEN + 8)?;
            (s0 ^ s1 ^ s2 ^ s3, d0 ^ d1 ^ d2 ^ d3)
        };
        Some(flow_hash(source, destination, flow.ip_proto, flow.ports))
    }

    /// What `rule_set` does with this packet (an `ACTION_*`, 0 for
    /// nothing), with the row of the longest prefix match of its
    /// destination and what the parser found; None without a row.
    #[inline(always)]
    fn matching_rule<C: Packet>(
        ctx: &C,
        ethertype: u16,
        rule_set: [u8; 4],
    ) -> Option<(u8, &RuleValue, Flow)> {
        let (rule, flow) = match ethertype {
            ETH_P_IP => {
                let (dst, flow) = parse_ipv4(ctx)?;
                let key = Key::new(
                    RULE_SET_BITS + 32,
                    RuleKeyV4 {
                        rule_set,
                        addr: dst,
                    },
                );
                (NETWARP_RULES_V4.get(&key)?, flow)
            }
            ETH_P_IPV6 => {
                let (dst, flow) = parse_ipv6(ctx)?;
                let key = Key::new(
                    RULE_SET_BITS + 128,
                    RuleKeyV6 {
                        rule_set,
                        addr: dst,
                    },
                );
                (NETWARP_RULES_V6.get(&key)?, flow)
            }
            _ => return None,
        };
        Some((action_for(rule, &flow), rule, flow))
    }

    /// Whether netwarp leaves a packet of this action alone (`direct`,
    /// or nothing).
    #[inline(always)]
    fn leaves_alone(action: u8) -> bool {
        action == 0 || action == ACTION_DIRECT
    }

    #[inline(always)]
    fn parse_ipv4<C: Packet>(ctx: &C) -> Option<([u8; 4], Flow)> {
        let version_ihl: u8 = read(ctx, ETH_HLEN)?;
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if header_len < 20 {
            return None;
        }
        let frag: u16 = u16::from_be(read(ctx, ETH_HLEN + 6)?);
        let ip_proto: u8 = read(ctx, ETH_HLEN + 9)?;
        let dst: [u8; 4] = read(ctx, ETH_HLEN + 16)?;
        // Only the first fragment (offset 0) carries the L4 header.
        let first_fragment = frag & 0x1fff == 0;
        let ports = if first_fragment {
            l4_ports(ctx, ETH_HLEN + header_len, ip_proto)
        } else {
            None
        };
        Some((dst, Flow::of(ip_proto, ports, !first_fragment)))
    }

    #[inline(always)]
    fn parse_ipv6<C: Packet>(ctx: &C) -> Option<([u8; 16], Flow)> {
        let mut next: u8 = read(ctx, ETH_HLEN + 6)?;
        let dst: [u8; 16] = read(ctx, ETH_HLEN + 24)?;
        let mut offset = ETH_HLEN + 40;
        let mut first_fragment = true;
        for _ in 0..MAX_EXT_HEADERS {
            match next {
                NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                    let hdr: [u8; 2] = ctx.load_beyond(offset)?;
                    next = hdr[0];
                    offset += (usize::from(hdr[1]) + 1) * 8;
                }
                NEXTHDR_AUTH => {
                    let hdr: [u8; 2] = ctx.load_beyond(offset)?;
                    next = hdr[0];
                    offset += (usize::from(hdr[1]) + 2) * 4;
                }
                NEXTHDR_FRAGMENT => {
                    let hdr: [u8; 4] = ctx.load_beyond(offset)?;
                    next = hdr[0];
                    let frag_offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                    first_fragment = frag_offset == 0;
                    offset += 8;
                }
                _ => break,
            }
        }
        let ports = if first_fragment {
            l4_ports(ctx, offset, next)
        } else {
            None
        };
        Some((dst, Flow::of(next, ports, !first_fragment)))
    }

    /// The ports (source, destination) of a TCP or UDP header at
    /// `offset`, as their bytes lie. The common offsets (IPv4 without
    /// options, IPv6 without extension headers) are read directly; others
    /// through `bpf_skb_load_bytes`.
    #[inline(always)]
    fn l4_ports<C: Packet>(ctx: &C, offset: usize, ip_proto: u8) -> Option<[u8; 4]> {
        const V4: usize = ETH_HLEN + 20;
        const V6: usize = ETH_HLEN + 40;
        if ip_proto != IPPROTO_TCP && ip_proto != IPPROTO_UDP {
            return None;
        }
        match offset {
            V4 => read::<[u8; 4]>(ctx, V4),
            V6 => read::<[u8; 4]>(ctx, V6),
            _ => ctx.load_beyond::<[u8; 4]>(offset),
        }
    }

    /// The action of the row's first selector that takes this flow, else
    /// the row's default. A non-first fragment has no ports: it takes a
    /// port selector of its protocol only where that one goes to the warp
    /// or is dropped for the warp's state, so a steered flow's fragments
    /// never take the direct path; the fragments of a port's exception
    /// (`direct`, a `block` rule) cannot be told apart, and follow the
    /// rest of the row.
    #[inline(always)]
    fn action_for(rule: &RuleValue, flow: &Flow) -> u8 {
        for i in 0..MAX_SELECTORS {
            if i >= usize::from(rule.selector_count) {
                break;
            }
            let selector = &rule.selectors[i];
            if selector.ip_proto != flow.ip_proto {
                continue;
            }
            if selector.port_lo == 0 {
                return selector.action;
            }
            if flow.later_fragment {
                if selector.action == ACTION_STEER || selector.action == ACTION_BLOCK {
                    return selector.action;
                }
                continue;
            }
            // A first fragment or whole packet whose port cannot be read
            // (truncated) matches no port selector.
            if flow.has_ports && selector.port_lo <= flow.dport && flow.dport <= selector.port_hi {
                return selector.action;
            }
        }
        rule.default_action
    }

    enum Verdict {
        Steered,
        WarpDown,
        Policy,
        Rate,
        Rule,
    }

    #[inline(always)]
    fn count_verdict(state: &IfaceState, bytes: u64, verdict: Verdict) {
        let ifindex = state.ifindex;
        let add = |counters: *mut VerdictCounters| {
            // SAFETY: a per-CPU value; only this CPU writes it while we run.
            unsafe {
                match verdict {
                    Verdict::Steered => {
                        (*counters).steered_packets += 1;
                        (*counters).steered_bytes += bytes;
                    }
                    Verdict::WarpDown => {
                        (*counters).warp_down_packets += 1;
                        (*counters).warp_down_bytes += bytes;
                    }
                    Verdict::Policy => {
                        (*counters).policy_packets += 1;
                        (*counters).policy_bytes += bytes;
                    }
                    Verdict::Rate => {
                        (*counters).rate_packets += 1;
                        (*counters).rate_bytes += bytes;
                    }
                    Verdict::Rule => {
                        (*counters).rule_packets += 1;
                        (*counters).rule_bytes += bytes;
                    }
                }
            }
        };
        // As in `iface_state`: the array alone first. A row in the hash
        // map counts there: its index is past the array's end.
        let slot = if state.flags & IFACE_IN_HASH == 0 {
            ifindex & IFACE_SLOT_MASK
        } else {
            u32::MAX
        };
        if let Some(counters) = NETWARP_VERDICTS_LOW.get_ptr_mut(slot) {
            add(counters);
            return;
        }
        if let Some(counters) = NETWARP_VERDICTS.get_ptr_mut(&ifindex) {
            add(counters);
            return;
        }
        let zero = VerdictCounters::default();
        let _ = NETWARP_VERDICTS.insert(&ifindex, &zero, u64::from(BPF_NOEXIST));
        if let Some(counters) = NETWARP_VERDICTS.get_ptr_mut(&ifindex) {
            add(counters);
        }
    }

    /// Adds one packet of `bytes` to `key`'s per-CPU counters, creating
    /// the entry on first use.
    #[inline(always)]
    fn add_traffic<K>(map: &PerCpuHashMap<K, TrafficCounters>, key: &K, bytes: u64) {
        let add = || match map.get_ptr_mut(key) {
            Some(counters) => {
                // SAFETY: a per-CPU value; only this CPU writes it while we run.
                unsafe {
                    (*counters).packets += 1;
                    (*counters).bytes += bytes;
                }
                true
            }
            None => false,
        };
        if add() {
            return;
        }
        let first = TrafficCounters { packets: 1, bytes };
        if map.insert(key, &first, u64::from(BPF_NOEXIST)).is_err() {
            // Another CPU created the entry first; count into our slot of it.
            add();
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
