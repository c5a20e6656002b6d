//! The program on a warp's host-side veths and its peer map: which
//! targets a warp veth serves, by address, and what it dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netwarp_common::{
    GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, PROG_TC_FROM_WARP, TrafficCounters, WARP_LEAKS_MAP,
    WARP_PEERS_MAP, WarpPeerKey,
};

use super::{EbpfDataplane, EbpfError, Hook, maps::hash_map, maps::read_all};

/// The key of `addr` on the warp veth `warp_ifindex`.
pub fn warp_peer_key(warp_ifindex: u32, addr: IpAddr) -> WarpPeerKey {
    let mut key = WarpPeerKey {
        warp_ifindex,
        ..WarpPeerKey::default()
    };
    match addr {
        IpAddr::V4(v4) => {
            key.family = GUARD_ALLOW_IPV4;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = GUARD_ALLOW_IPV6;
            key.addr = v6.octets();
        }
    }
    key
}

impl EbpfDataplane {
    /// Attaches the warp program to one of a warp's host-side veths.
    /// Attaching twice is a no-op.
    pub fn attach_warp(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.links.attach(&mut self.ebpf, ifindex, Hook::FromWarp)
    }

    /// Detaches the warp program from a veth and forgets its peers.
    pub fn detach_warp(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.links.detach(&mut self.ebpf, ifindex, Hook::FromWarp)?;
        self.warp_peers
            .delete_where(&mut self.ebpf, |k| k.warp_ifindex == ifindex)?;
        Ok(())
    }

    /// The veths the warp program is attached to (or was adopted on).
    pub fn warp_ifindexes(&self) -> BTreeSet<u32> {
        self.links.ifindexes(Hook::FromWarp)
    }

    /// Writes peer rows (key to the target's host-side veth) that differ
    /// from what was written. Written before the target's policy steers
    /// into the warp, so the warp's program knows the target before its
    /// first steered packet.
    pub fn put_warp_peers(&mut self, rows: &[(WarpPeerKey, u32)]) -> Result<(), EbpfError> {
        self.warp_peers.put(&mut self.ebpf, rows.iter().copied())
    }

    /// Removes every peer row that is not in `wanted`; returns how many.
    pub fn retain_warp_peers(
        &mut self,
        wanted: &BTreeMap<WarpPeerKey, u32>,
    ) -> Result<usize, EbpfError> {
        let stale: Vec<WarpPeerKey> = (self.warp_peers.written().iter())
            .filter(|(key, target)| wanted.get(key) != Some(target))
            .map(|(key, _)| *key)
            .collect();
        self.warp_peers.delete(&mut self.ebpf, stale)
    }

    /// Every peer row, as the kernel holds it (recorded as written).
    pub fn warp_peers(&mut self) -> Result<BTreeMap<WarpPeerKey, u32>, EbpfError> {
        let installed = read_all(&hash_map(&mut self.ebpf, WARP_PEERS_MAP)?, WARP_PEERS_MAP)?;
        self.warp_peers.adopt_scope(|_| true, &installed);
        Ok(installed)
    }

    /// What the program on a warp veth dropped, over all CPUs.
    pub fn warp_leaks(&self, ifindex: u32) -> Result<TrafficCounters, EbpfError> {
        self.counter_sum(WARP_LEAKS_MAP, ifindex)
    }

    /// Runs the warp program once on `packet`, as if the warp sent it on
    /// its veth `ifindex` (BPF_PROG_TEST_RUN); see
    /// [`Self::test_run_from_container`].
    pub fn test_run_from_warp(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        self.test_run(PROG_TC_FROM_WARP, ifindex, packet)
    }
}
