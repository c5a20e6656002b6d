//! Types shared by the netwarp eBPF programs and the daemon.
//!
//! Everything here is `#[repr(C)]`, uses fixed-width integers (no `bool`),
//! and has explicit padding so that the kernel and userspace agree on the
//! layout byte for byte.
#![no_std]

/// Name of the per-CPU hash map holding [`TrafficCounters`] by [`TrafficKey`].
pub const TRAFFIC_MAP: &str = "NETWARP_TRAFFIC";

/// Program names, as the loader looks them up in the object.
pub const PROG_TC_FROM_CONTAINER: &str = "netwarp_tc_from_container";
pub const PROG_TC_TO_CONTAINER: &str = "netwarp_tc_to_container";

/// Maximum number of interfaces the traffic map can track at once.
pub const TRAFFIC_MAP_CAPACITY: u32 = 16_384;

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

/// Key of the traffic map: one entry per host-side interface and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub ifindex: u32,
    /// A [`Direction`] as `u32`.
    pub direction: u32,
}

impl TrafficKey {
    pub const fn new(ifindex: u32, direction: Direction) -> Self {
        Self {
            ifindex,
            direction: direction as u32,
        }
    }
}

/// Value of the traffic map (per CPU): packets and bytes as tc sees them,
/// i.e. `skb->len`, which includes the Ethernet header.
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are repr(C), made only of integers, and have no padding.
    unsafe impl aya::Pod for super::TrafficKey {}
    unsafe impl aya::Pod for super::TrafficCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<TrafficKey>(), 8);
        assert_eq!(size_of::<TrafficCounters>(), 16);
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
}
