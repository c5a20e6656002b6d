//! Where netwarp's programs hang: which program, on which side of which
//! kind of interface, and the name its link is pinned under.

use aya::programs::TcAttachType;
use netwarp_common::{
    Direction, IfaceState, PROG_TC_BRIDGE_GUARD, PROG_TC_FROM_CONTAINER, PROG_TC_FROM_WARP,
    PROG_TC_TO_CONTAINER, PROG_XDP_FROM_CONTAINER,
};

/// Where the from-container program steers an uncapped target's traffic
/// (`dataplane.ebpf_from_container_hook`). The tc program stays attached
/// either way: it decides what XDP passes, and every capped target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FromContainerHook {
    #[default]
    Tc,
    Xdp,
}

impl FromContainerHook {
    /// Whether a veth with `state` gets the XDP program: under the XDP
    /// hook, while it has a policy and no cap (a cap charges what tc
    /// sees: offload packets whole, where XDP sees the frames they are
    /// cut into).
    pub fn wants_xdp(self, state: &IfaceState) -> bool {
        self == FromContainerHook::Xdp && state.policy().is_some() && state.cap_slot().is_none()
    }
}

/// Where a program hangs: which program, on which side of the interface,
/// under which pin suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tc ingress of a container's host-side veth: what it sends.
    FromContainer,
    /// tc egress of a container's host-side veth: what it receives.
    ToContainer,
    /// tc ingress of a guarded network's bridge.
    BridgeGuard,
    /// tc ingress of a warp's host-side veth.
    FromWarp,
    /// XDP of a container's host-side veth: what it sends, before tc.
    XdpFromContainer,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::FromContainer,
        Hook::ToContainer,
        Hook::BridgeGuard,
        Hook::FromWarp,
        Hook::XdpFromContainer,
    ];
    /// The hooks on a container's host-side veth.
    pub const CONTAINER: [Hook; 3] = [
        Hook::XdpFromContainer,
        Hook::FromContainer,
        Hook::ToContainer,
    ];

    pub fn program(self) -> &'static str {
        match self {
            Hook::FromContainer => PROG_TC_FROM_CONTAINER,
            Hook::ToContainer => PROG_TC_TO_CONTAINER,
            Hook::BridgeGuard => PROG_TC_BRIDGE_GUARD,
            Hook::FromWarp => PROG_TC_FROM_WARP,
            Hook::XdpFromContainer => PROG_XDP_FROM_CONTAINER,
        }
    }

    /// Whether the hook is XDP's rather than tc's.
    pub fn is_xdp(self) -> bool {
        self == Hook::XdpFromContainer
    }

    pub(super) fn attach_type(self) -> TcAttachType {
        match self {
            Hook::ToContainer => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    /// The pin name suffix (names earlier releases pinned, kept).
    pub(super) fn pin_suffix(self) -> &'static str {
        match self {
            Hook::FromContainer => "ingress",
            Hook::ToContainer => "egress",
            Hook::BridgeGuard => "guard",
            Hook::FromWarp => "warp",
            Hook::XdpFromContainer => "xdp",
        }
    }

    pub fn direction(self) -> Option<Direction> {
        match self {
            Hook::FromContainer | Hook::XdpFromContainer => Some(Direction::FromContainer),
            Hook::ToContainer => Some(Direction::ToContainer),
            _ => None,
        }
    }

    /// The interface and hook a pin's file name stands for.
    pub fn parse_pin(name: &str) -> Option<(u32, Hook)> {
        let (index, suffix) = name.split_once('-')?;
        let hook = Self::ALL.into_iter().find(|h| h.pin_suffix() == suffix)?;
        Some((index.parse().ok()?, hook))
    }

    pub(super) fn pin_name(self, ifindex: u32) -> String {
        format!("{ifindex}-{}", self.pin_suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uncapped_targets_with_a_policy_get_the_xdp_program() {
        use netwarp_common::TargetPolicy;
        let policy = Some(TargetPolicy {
            rule_set: 1,
            warp_ifindex: 7,
            warp_mac: [2, 0x42, 0, 0, 0, 2],
            _pad: [0; 2],
        });
        let steered = IfaceState::of(policy, None);
        let capped = IfaceState::of(policy, Some(3));
        let counted = IfaceState::of(None, None);
        assert!(FromContainerHook::Xdp.wants_xdp(&steered));
        assert!(!FromContainerHook::Xdp.wants_xdp(&capped));
        assert!(!FromContainerHook::Xdp.wants_xdp(&counted));
        for state in [steered, capped, counted] {
            assert!(!FromContainerHook::Tc.wants_xdp(&state));
        }
    }

    #[test]
    fn pin_names_round_trip_for_every_hook() {
        for hook in Hook::ALL {
            assert_eq!(Hook::parse_pin(&hook.pin_name(42)), Some((42, hook)));
        }
        assert_eq!(Hook::parse_pin("42-other"), None);
        assert_eq!(Hook::parse_pin("x-guard"), None);
    }
}
