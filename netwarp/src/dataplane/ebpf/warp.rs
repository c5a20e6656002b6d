//! The program on a warp's host-side veths and its peer map: which
//! targets a warp veth serves, by address, and what it dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{HashMap as BpfHashMap, MapError};
use netwarp_common::{
    GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, PROG_TC_FROM_WARP, TrafficCounters, WARP_LEAKS_MAP,
    WARP_PEERS_MAP, WarpPeerKey,
};

use super::{EbpfDataplane, EbpfError, map_error};

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
        self.attach_single(ifindex, PROG_TC_FROM_WARP)
    }

    /// Detaches the warp program from a veth and forgets its peers.
    pub fn detach_warp(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.detach_single(ifindex, PROG_TC_FROM_WARP)?;
        let mut peers = self.warp_peer_map()?;
        let keys: Vec<WarpPeerKey> = peers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.warp_ifindex == ifindex)
            .collect();
        for key in keys {
            let _ = peers.remove(&key);
        }
        Ok(())
    }

    /// The veths the warp program is attached to (or was adopted on).
    pub fn warp_ifindexes(&self) -> BTreeSet<u32> {
        self.single_ifindexes(PROG_TC_FROM_WARP).collect()
    }

    /// Writes peer rows (key to the target's host-side veth). Written
    /// before the target's policy steers into the warp, so the warp's
    /// program knows the target before its first steered packet.
    pub fn put_warp_peers(&mut self, rows: &[(WarpPeerKey, u32)]) -> Result<(), EbpfError> {
        let mut peers = self.warp_peer_map()?;
        for (key, target) in rows {
            if peers.get(key, 0).ok() != Some(*target) {
                peers
                    .insert(key, target, 0)
                    .map_err(map_error(WARP_PEERS_MAP))?;
            }
        }
        Ok(())
    }

    /// Removes every peer row that is not in `wanted`; returns how many.
    pub fn retain_warp_peers(
        &mut self,
        wanted: &BTreeMap<WarpPeerKey, u32>,
    ) -> Result<usize, EbpfError> {
        let mut peers = self.warp_peer_map()?;
        let stale: Vec<WarpPeerKey> = peers
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, target)| wanted.get(key) != Some(target))
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            let _ = peers.remove(key);
        }
        Ok(stale.len())
    }

    /// Every peer row.
    pub fn warp_peers(&mut self) -> Result<BTreeMap<WarpPeerKey, u32>, EbpfError> {
        self.warp_peer_map()?
            .iter()
            .collect::<Result<_, MapError>>()
            .map_err(map_error(WARP_PEERS_MAP))
    }

    /// What the program on a warp veth dropped, over all CPUs.
    pub fn warp_leaks(&self, ifindex: u32) -> Result<TrafficCounters, EbpfError> {
        self.per_cpu_traffic(WARP_LEAKS_MAP, ifindex)
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

    fn warp_peer_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, WarpPeerKey, u32>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(WARP_PEERS_MAP)
            .ok_or(EbpfError::MissingMap(WARP_PEERS_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(WARP_PEERS_MAP))
    }
}
