//! Programming one container's caps, in either dataplane.
//!
//! `ebpf`: token buckets in BPF maps, checked by the tc programs on the
//! container's host-side veths (see netwarp-ebpf). `routes`: a tbf qdisc
//! per interface ([`super::qdisc`]). In `routes` mode each interface gets
//! the full cap, since qdiscs on different interfaces cannot share one.

use netwarp_common::{RateBuckets, TokenBucket};
use rtnetlink::Handle;

use super::{
    ebpf::{EbpfDataplane, EbpfError},
    netns::{NamespaceHandle, NetnsError as RoutesError},
    qdisc::{QdiscError, RootQdisc, put_tbf, remove_tbf, root_qdisc},
};
use crate::{
    model::{Cap, Caps},
    plan::CapEnforcement,
};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error("cannot open a netlink socket in the host's namespace: {0}")]
    HostNetlink(String),
    #[error("no interface with MAC {0} in the container's namespace")]
    NoInterface(String),
}

/// One of a container's interfaces: its own end and the host's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CapInterface {
    pub container_ifindex: u32,
    pub host_ifindex: u32,
}

/// What is programmed for one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedCaps {
    pub caps: Caps,
    pub enforcement: CapEnforcement,
    /// Sorted.
    pub interfaces: Vec<CapInterface>,
}

impl ProgrammedCaps {
    /// The slot of the container's buckets: its lowest host ifindex, which
    /// no other container can hold while this one lives.
    pub fn slot(&self) -> Option<u32> {
        self.interfaces.iter().map(|i| i.host_ifindex).min()
    }

    pub fn host_ifindexes(&self) -> Vec<u32> {
        self.interfaces.iter().map(|i| i.host_ifindex).collect()
    }
}

/// Finds the interfaces with `macs` in the container's namespace.
pub async fn interfaces(
    namespace: &NamespaceHandle,
    macs: &[String],
) -> Result<Vec<CapInterface>, CapsError> {
    let mut found = Vec::with_capacity(macs.len());
    for mac in macs {
        match namespace.veth_ends_by_mac(mac).await? {
            Some((container_ifindex, host_ifindex)) => found.push(CapInterface {
                container_ifindex,
                host_ifindex,
            }),
            None => return Err(CapsError::NoInterface(mac.clone())),
        }
    }
    found.sort();
    Ok(found)
}

/// The BPF buckets for `caps`, full.
pub fn buckets(caps: &Caps) -> RateBuckets {
    let bucket = |cap: Option<Cap>| {
        cap.map_or_else(TokenBucket::default, |cap| {
            TokenBucket::new(cap.rate.bytes_per_second(), cap.burst_bytes)
        })
    };
    RateBuckets {
        egress: bucket(caps.egress),
        ingress: bucket(caps.ingress),
    }
}

/// Writes the caps into the BPF maps, attaching the programs first.
pub fn program_ebpf(ebpf: &mut EbpfDataplane, desired: &ProgrammedCaps) -> Result<(), CapsError> {
    let Some(slot) = desired.slot() else {
        return Ok(());
    };
    for interface in &desired.interfaces {
        ebpf.attach_ifindex(interface.host_ifindex)?;
    }
    ebpf.set_caps(slot, &desired.host_ifindexes(), buckets(&desired.caps))?;
    Ok(())
}

/// Puts or removes the tbf qdiscs so that they match `desired`: egress on
/// the container's interfaces, ingress on the host's. Returns whether
/// anything changed. `changed_caps` forces a rewrite of present qdiscs.
pub async fn program_qdiscs(
    namespace: &NamespaceHandle,
    host: &Handle,
    desired: &ProgrammedCaps,
    changed_caps: bool,
) -> Result<bool, CapsError> {
    let mut changed = false;
    for interface in &desired.interfaces {
        let sides = [
            (
                namespace.netlink_handle()?,
                interface.container_ifindex,
                desired.caps.egress,
            ),
            (host, interface.host_ifindex, desired.caps.ingress),
        ];
        for (handle, ifindex, cap) in sides {
            match cap {
                Some(cap) => {
                    if changed_caps || root_qdisc(handle, ifindex).await? != RootQdisc::Ours {
                        put_tbf(handle, ifindex, &cap).await?;
                        changed = true;
                    }
                }
                None => changed |= remove_tbf(handle, ifindex).await?,
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rate;

    #[test]
    fn buckets_leave_uncapped_directions_open() {
        let caps = Caps {
            egress: Some(Cap::new(
                Rate::from_bits_per_second(8_000_000),
                Some(100_000),
            )),
            ingress: None,
        };
        let b = buckets(&caps);
        assert_eq!(b.egress, TokenBucket::new(1_000_000, 100_000));
        assert_eq!(b.ingress.ns_per_byte, 0);
    }

    #[test]
    fn the_slot_is_the_lowest_host_ifindex() {
        let programmed = ProgrammedCaps {
            caps: Caps::default(),
            enforcement: CapEnforcement::Shaper,
            interfaces: vec![
                CapInterface {
                    container_ifindex: 2,
                    host_ifindex: 40,
                },
                CapInterface {
                    container_ifindex: 3,
                    host_ifindex: 17,
                },
            ],
        };
        assert_eq!(programmed.slot(), Some(17));
        assert_eq!(programmed.host_ifindexes(), [40, 17]);
    }
}
