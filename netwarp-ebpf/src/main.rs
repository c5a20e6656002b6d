//! netwarp's eBPF programs.
//!
//! Each entry point is a thin wrapper around a `try_*` function. The
//! programs stay small: parse, look up, act, count.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{BPF_NOEXIST, TC_ACT_OK},
        macros::{classifier, map},
        maps::PerCpuHashMap,
        programs::TcContext,
    };
    use netwarp_common::{Direction, TRAFFIC_MAP_CAPACITY, TrafficCounters, TrafficKey};

    /// Packets and bytes per host-side interface and direction.
    #[map(name = "NETWARP_TRAFFIC")]
    static NETWARP_TRAFFIC: PerCpuHashMap<TrafficKey, TrafficCounters> =
        PerCpuHashMap::with_max_entries(TRAFFIC_MAP_CAPACITY, 0);

    /// tc ingress on a container's host-side veth: what the container sends.
    #[classifier]
    pub fn netwarp_tc_from_container(ctx: TcContext) -> i32 {
        count(&ctx, Direction::FromContainer);
        TC_ACT_OK
    }

    /// tc egress on a container's host-side veth: what the container receives.
    #[classifier]
    pub fn netwarp_tc_to_container(ctx: TcContext) -> i32 {
        count(&ctx, Direction::ToContainer);
        TC_ACT_OK
    }

    #[inline(always)]
    fn count(ctx: &TcContext, direction: Direction) {
        // SAFETY: the verifier guarantees `skb` points at a valid __sk_buff.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let key = TrafficKey::new(ifindex, direction);
        let bytes = u64::from(ctx.len());
        if add(&key, bytes) {
            return;
        }
        let first = TrafficCounters { packets: 1, bytes };
        if NETWARP_TRAFFIC
            .insert(&key, &first, u64::from(BPF_NOEXIST))
            .is_err()
        {
            // Another CPU created the entry first; count into our slot of it.
            add(&key, bytes);
        }
    }

    #[inline(always)]
    fn add(key: &TrafficKey, bytes: u64) -> bool {
        match NETWARP_TRAFFIC.get_ptr_mut(key) {
            Some(counters) => {
                // SAFETY: a per-CPU value; only this CPU writes it while we run.
                unsafe {
                    (*counters).packets += 1;
                    (*counters).bytes += bytes;
                }
                true
            }
            None => false,
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
