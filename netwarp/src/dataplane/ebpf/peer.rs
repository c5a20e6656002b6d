//! Which targets' steered packets enter their warp by a peer redirect
//! ([`IFACE_PEER`]): straight into the warp's namespace-side veth,
//! skipping the egress of its host-side veth, where an ingress cap on the
//! warp sits (the to-container program or a tbf qdisc).

use netwarp_common::{IFACE_PEER, IFACE_POLICY, IFACE_SPREAD, IfaceState};

use crate::probe::kernel_version;

/// `state` with [`IFACE_PEER`] as it should be: set while peer redirects
/// are `enabled`, the row steers to one warp (a spread target's member
/// comes from its table, so it keeps the classic redirect) and nothing
/// sits on that warp's host-side veth egress (`egress_busy` of its ifindex).
pub(super) fn with_peer_flag(
    state: IfaceState,
    enabled: bool,
    egress_busy: impl Fn(u32) -> bool,
) -> IfaceState {
    let peer = enabled
        && state.flags & IFACE_POLICY != 0
        && state.flags & IFACE_SPREAD == 0
        && !egress_busy(state.warp_ifindex);
    let mut state = state;
    if peer {
        state.flags |= IFACE_PEER;
    } else {
        state.flags &= !IFACE_PEER;
    }
    state
}

/// Whether the program must set the packet type before a peer redirect,
/// from the kernel's release (`uname -r`): from 6.15 the kernel resets it
/// itself (`skb_do_redirect` scrubs the skb for the peer), so the helper
/// call is waste. A release it cannot read keeps the call: it is correct
/// on every kernel, only redundant on new ones.
pub(super) fn peer_sets_packet_type(release: &str) -> bool {
    kernel_version(release).is_none_or(|version| version < (6, 15))
}

#[cfg(test)]
mod tests {
    use netwarp_common::{IFACE_CAPPED, TargetPolicy};

    use super::*;

    const WARP: u32 = 12;

    fn target(cap_slot: Option<u32>) -> IfaceState {
        let policy = TargetPolicy {
            rule_set: 3,
            warp_ifindex: WARP,
            warp_mac: [2, 0, 0, 0, 0, 1],
            _pad: [0; 2],
        };
        IfaceState::of(Some(policy), cap_slot)
    }

    fn idle(_: u32) -> bool {
        false
    }

    #[test]
    fn a_target_of_an_uncapped_warp_is_peered() {
        let state = with_peer_flag(target(None), true, idle);
        assert_eq!(state.flags, IFACE_POLICY | IFACE_PEER);
        // Its own cap is on its own veth, not in the way.
        let capped = with_peer_flag(target(Some(5)), true, idle);
        assert_eq!(capped.flags, IFACE_POLICY | IFACE_CAPPED | IFACE_PEER);
    }

    #[test]
    fn off_when_disabled_spread_or_the_warp_egress_is_busy() {
        let peered = with_peer_flag(target(None), true, idle);
        assert_eq!(with_peer_flag(peered, false, idle).flags, IFACE_POLICY);
        let busy = with_peer_flag(peered, true, |ifindex| ifindex == WARP);
        assert_eq!(busy.flags, IFACE_POLICY);
        let other_busy = with_peer_flag(peered, true, |ifindex| ifindex != WARP);
        assert_eq!(other_busy.flags, IFACE_POLICY | IFACE_PEER);
        let mut spread = peered;
        spread.flags |= IFACE_SPREAD;
        assert_eq!(
            with_peer_flag(spread, true, idle).flags,
            IFACE_POLICY | IFACE_SPREAD
        );
    }

    #[test]
    fn a_row_without_policy_is_never_peered() {
        let cap_only = IfaceState::of(None, Some(5));
        assert_eq!(with_peer_flag(cap_only, true, idle), cap_only);
    }

    #[test]
    fn only_kernels_before_6_15_need_the_packet_type_set() {
        for (release, sets) in [
            ("6.6.58-1-lts", true),
            ("6.14.11", true),
            ("5.15.0-91-generic", true),
            ("6.15.0", false),
            ("6.18.44-fc-v857", false),
            ("7.0.1", false),
            ("garbage", true),
            ("", true),
        ] {
            assert_eq!(peer_sets_packet_type(release), sets, "{release}");
        }
    }
}
