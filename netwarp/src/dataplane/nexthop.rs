//! Nexthop objects (`ip nexthop`) in a target's namespace: a spread
//! target's routes point at one resilient nexthop group per family
//! (RTA_NH_ID), whose members are a nexthop per spread member's gateway.
//!
//! A resilient group (kernel >= 5.13) maps a flow's hash to one of
//! [`BUCKETS`] buckets, each holding a member. Replacing the group
//! without a member gives only that member's buckets to the others;
//! every other bucket keeps its member, so a flow whose route lookup
//! hashes to another member keeps it. (A plain multipath route is
//! hash-threshold: one member fewer re-divides the whole hash space.)
//!
//! rtnetlink 0.24 has no nexthop messages, so they are encoded here
//! (uapi `linux/nexthop.h`) and sent on a netlink socket of their own,
//! opened in the namespace with the rtnetlink connection.
//!
//! Ownership: netwarp's nexthops carry protocol [`NETWARP_PROTOCOL`] and
//! an id in [`NEXTHOP_IDS`]; netwarp reads, replaces and removes only those.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU32, Ordering},
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::policy_rule::NETWARP_PROTOCOL;

/// Every nexthop id netwarp uses in a target's namespace.
pub const NEXTHOP_IDS: RangeInclusive<u32> = 0x4e57_0000..=0x4e57_ffff;
/// The resilient group of each family (one per family: every route of a
/// spread target via its members uses the same members).
pub const GROUP_V4: u32 = 0x4e57_0004;
pub const GROUP_V6: u32 = 0x4e57_0006;
/// The ids of the groups' member nexthops.
pub const MEMBER_IDS: RangeInclusive<u32> = 0x4e57_0100..=0x4e57_ffff;

/// Buckets of a resilient group: as many as the eBPF member table's
/// slots, an equal share for 1, 2, 4 or 8 members.
pub const BUCKETS: u16 = 64;
/// A joining member takes buckets that carried nothing for this long (in
/// USER_HZ, 1/100 s: 10 s)...
pub const IDLE_TIMER: u32 = 10 * 100;
/// ...and, when the group stayed unbalanced this long (60 s), its share
/// of busy ones too (moving their flows, as the eBPF table does at once).
pub const UNBALANCED_TIMER: u32 = 60 * 100;

/// The group id of a family.
pub fn group_id(ipv6: bool) -> u32 {
    if ipv6 { GROUP_V6 } else { GROUP_V4 }
}

// uapi: linux/rtnetlink.h, linux/netlink.h, linux/nexthop.h.
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_RES_GROUP: u16 = 12;
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const NLMSG_HDRLEN: usize = 16;
const NHMSG_LEN: usize = 8;

/// A resilient group's shape (what a replace cannot change: its bucket
/// count; and the timers netwarp sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resilient {
    pub buckets: u16,
    pub idle_timer: u32,
    pub unbalanced_timer: u32,
}

/// netwarp's shape for every group it writes.
pub const RESILIENT: Resilient = Resilient {
    buckets: BUCKETS,
    idle_timer: IDLE_TIMER,
    unbalanced_timer: UNBALANCED_TIMER,
};

/// What one nexthop object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NexthopKind {
    /// A gateway on an interface.
    Gateway { gateway: IpAddr, oif: u32 },
    /// A group of nexthop ids, each weight 1; `None` for a hash-threshold one.
    Group {
        members: Vec<u32>,
        resilient: Option<Resilient>,
    },
    /// Anything else (a blackhole, an fdb nexthop, ...).
    Other,
}

/// One nexthop object, as dumped or to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub protocol: u8,
    pub kind: NexthopKind,
}

impl Nexthop {
    /// Whether netwarp wrote it: its protocol and id range.
    pub fn is_owned(&self) -> bool {
        self.protocol == NETWARP_PROTOCOL && NEXTHOP_IDS.contains(&self.id)
    }
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A netlink message: header, `nhmsg` and attributes, the length set.
fn message(kind: u16, flags: u16, seq: u32, family: u8, protocol: u8, attrs: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDRLEN + NHMSG_LEN + attrs.len());
    let len = (NLMSG_HDRLEN + NHMSG_LEN + attrs.len()) as u32;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    // struct nhmsg: family, scope, protocol, resvd, flags.
    buf.extend_from_slice(&[family, 0, protocol, 0]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(attrs);
    buf
}

/// RTM_NEWNEXTHOP creating `nexthop`, or replacing the one with its id.
pub fn new_request(nexthop: &Nexthop, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, NHA_ID, &nexthop.id.to_ne_bytes());
    let family = match &nexthop.kind {
        NexthopKind::Gateway { gateway, oif } => {
            push_attr(&mut attrs, NHA_OIF, &oif.to_ne_bytes());
            match gateway {
                IpAddr::V4(v4) => {
                    push_attr(&mut attrs, NHA_GATEWAY, &v4.octets());
                    AF_INET
                }
                IpAddr::V6(v6) => {
                    push_attr(&mut attrs, NHA_GATEWAY, &v6.octets());
                    AF_INET6
                }
            }
        }
        NexthopKind::Group { members, resilient } => {
            // struct nexthop_grp: id, weight - 1, weight_high, resvd2.
            let entries: Vec<u8> = (members.iter())
                .flat_map(|id| {
                    let mut entry = [0u8; 8];
                    entry[..4].copy_from_slice(&id.to_ne_bytes());
                    entry
                })
                .collect();
            push_attr(&mut attrs, NHA_GROUP, &entries);
            if let Some(shape) = resilient {
                push_attr(
                    &mut attrs,
                    NHA_GROUP_TYPE,
                    &NEXTHOP_GRP_TYPE_RES.to_ne_bytes(),
                );
                let mut nested = Vec::new();
                push_attr(
                    &mut nested,
                    NHA_RES_GROUP_BUCKETS,
                    &shape.buckets.to_ne_bytes(),
                );
                push_attr(
                    &mut nested,
                    NHA_RES_GROUP_IDLE_TIMER,
                    &shape.idle_timer.to_ne_bytes(),
                );
                push_attr(
                    &mut nested,
                    NHA_RES_GROUP_UNBALANCED_TIMER,
                    &shape.unbalanced_timer.to_ne_bytes(),
                );
                push_attr(&mut attrs, NHA_RES_GROUP | NLA_F_NESTED, &nested);
            }
            // The kernel takes a group only with AF_UNSPEC.
            AF_UNSPEC
        }
        NexthopKind::Other => AF_UNSPEC,
    };
    message(
        RTM_NEWNEXTHOP,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
        family,
        nexthop.protocol,
        &attrs,
    )
}

/// RTM_DELNEXTHOP of the nexthop `id`.
pub fn delete_request(id: u32, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, NHA_ID, &id.to_ne_bytes());
    message(
        RTM_DELNEXTHOP,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_UNSPEC,
        0,
        &attrs,
    )
}

/// RTM_GETNEXTHOP dump of every nexthop of every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    message(
        RTM_GETNEXTHOP,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        AF_UNSPEC,
        0,
        &[],
    )
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `buf`: (type without flags, value). Stops at the
/// first malformed one.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(buf, 0), u16_at(buf, 2)) {
        let len = usize::from(len);
        if len < 4 || len > buf.len() {
            break;
        }
        found.push((kind & !NLA_F_NESTED, &buf[4..len]));
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    found
}

/// Decodes the payload of one RTM_NEWNEXTHOP (an `nhmsg` and its
/// attributes). `None` when it has no id or is malformed.
pub fn parse_nexthop(payload: &[u8]) -> Option<Nexthop> {
    let header = payload.get(..NHMSG_LEN)?;
    let (family, protocol) = (header[0], header[2]);
    let attrs = attributes(&payload[NHMSG_LEN..]);
    let find = |kind: u16| attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    let id = u32_at(find(NHA_ID)?, 0)?;
    let kind = if let Some(group) = find(NHA_GROUP) {
        let members = group.chunks_exact(8).filter_map(|e| u32_at(e, 0)).collect();
        let resilient = find(NHA_GROUP_TYPE)
            .and_then(|t| u16_at(t, 0))
            .filter(|t| *t == NEXTHOP_GRP_TYPE_RES)
            .map(|_| {
                let nested = find(NHA_RES_GROUP).map(attributes).unwrap_or_default();
                let get = |kind: u16| nested.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
                Resilient {
                    buckets: get(NHA_RES_GROUP_BUCKETS)
                        .and_then(|v| u16_at(v, 0))
                        .unwrap_or(0),
                    idle_timer: get(NHA_RES_GROUP_IDLE_TIMER)
                        .and_then(|v| u32_at(v, 0))
                        .unwrap_or(0),
                    unbalanced_timer: get(NHA_RES_GROUP_UNBALANCED_TIMER)
                        .and_then(|v| u32_at(v, 0))
                        .unwrap_or(0),
                }
            });
        NexthopKind::Group { members, resilient }
    } else {
        let gateway = find(NHA_GATEWAY).and_then(|g| match (family, g.len()) {
            (AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(g).ok()?)),
            (AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(g).ok()?)),
            _ => None,
        });
        let oif = find(NHA_OIF).and_then(|o| u32_at(o, 0));
        match (gateway, oif) {
            (Some(gateway), Some(oif)) => NexthopKind::Gateway { gateway, oif },
            _ => NexthopKind::Other,
        }
    };
    Some(Nexthop { id, protocol, kind })
}

/// One message of the kernel's answer.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Nexthop(Option<Nexthop>),
    /// NLMSG_ERROR: 0 is an ack, otherwise a negative errno.
    Status(i32),
    Done,
    Other,
}

/// The messages in one datagram, each with its sequence number.
fn replies(mut buf: &[u8]) -> Vec<(u32, Reply)> {
    let mut found = Vec::new();
    while let (Some(len), Some(kind), Some(seq)) = (u32_at(buf, 0), u16_at(buf, 4), u32_at(buf, 8))
    {
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        let reply = match kind {
            NLMSG_ERROR => Reply::Status(u32_at(payload, 0).map_or(-libc::EIO, |e| e as i32)),
            NLMSG_DONE => Reply::Done,
            RTM_NEWNEXTHOP => Reply::Nexthop(parse_nexthop(payload)),
            _ => Reply::Other,
        };
        found.push((seq, reply));
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    found
}

/// Why a nexthop request failed.
#[derive(Debug, thiserror::Error)]
pub enum NexthopError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the kernel answered: {}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
}

impl NexthopError {
    /// The kernel's errno, for an answer the kernel gave.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel(errno) => Some(*errno),
            Self::Io(_) => None,
        }
    }
}

/// A blocking NETLINK_ROUTE socket for nexthop requests, bound to the
/// namespace it was opened in. One request at a time; the kernel answers
/// at once, and a receive timeout bounds every wait.
pub struct NexthopSocket {
    socket: Socket,
    seq: AtomicU32,
}

impl NexthopSocket {
    /// Opens the socket in the calling thread's namespace.
    pub fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a timeval of the size passed.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            seq: AtomicU32::new(1),
        })
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `request` (built for `seq`) and collects its answer: the
    /// nexthops of a dump, or nothing for an acked change.
    fn exchange(&self, request: &[u8], seq: u32) -> Result<Vec<Nexthop>, NexthopError> {
        self.socket.send(request, 0)?;
        let mut nexthops = Vec::new();
        loop {
            // A dump comes in several datagrams (NLM_F_MULTI), ending
            // with NLMSG_DONE; a change, in one ack.
            let (datagram, _) = self.socket.recv_from_full()?;
            for (reply_seq, reply) in replies(&datagram) {
                if reply_seq != seq {
                    continue; // a late answer to an earlier, timed-out request
                }
                match reply {
                    Reply::Status(0) | Reply::Done => return Ok(nexthops),
                    Reply::Status(errno) => return Err(NexthopError::Kernel(-errno)),
                    Reply::Nexthop(found) => nexthops.extend(found),
                    Reply::Other => {}
                }
            }
        }
    }

    /// Every nexthop in the namespace.
    pub fn dump(&self) -> Result<Vec<Nexthop>, NexthopError> {
        let seq = self.next_seq();
        self.exchange(&dump_request(seq), seq)
    }

    /// Creates `nexthop`, or replaces the one with its id.
    pub fn put(&self, nexthop: &Nexthop) -> Result<(), NexthopError> {
        let seq = self.next_seq();
        self.exchange(&new_request(nexthop, seq), seq).map(drop)
    }

    /// Deletes the nexthop `id` (routes using it go with it).
    pub fn delete(&self, id: u32) -> Result<(), NexthopError> {
        let seq = self.next_seq();
        self.exchange(&delete_request(id, seq), seq).map(drop)
    }
}

/// netwarp's nexthops in a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexthopState {
    /// Member nexthops: id -> gateway.
    pub hops: BTreeMap<u32, IpAddr>,
    /// Groups: id -> members, for resilient groups of netwarp's shape.
    pub groups: BTreeMap<u32, Vec<u32>>,
    /// Anything else with netwarp's tag and id range (a group of another
    /// shape, which a replace cannot turn into netwarp's): removed.
    pub strays: BTreeSet<u32>,
}

impl NexthopState {
    /// netwarp's own among `dumped`.
    pub fn of(dumped: impl IntoIterator<Item = Nexthop>) -> Self {
        let mut state = Self::default();
        for nexthop in dumped.into_iter().filter(Nexthop::is_owned) {
            match nexthop.kind {
                NexthopKind::Gateway { gateway, .. } if MEMBER_IDS.contains(&nexthop.id) => {
                    state.hops.insert(nexthop.id, gateway);
                }
                NexthopKind::Group {
                    members,
                    resilient: Some(RESILIENT),
                } if [GROUP_V4, GROUP_V6].contains(&nexthop.id) => {
                    state.groups.insert(nexthop.id, members);
                }
                _ => {
                    state.strays.insert(nexthop.id);
                }
            }
        }
        state
    }
}

/// The groups a namespace needs: per family (`true`: IPv6), the gateways
/// of the members, in label order (two or more).
pub type SpreadGroups = BTreeMap<bool, Vec<IpAddr>>;

/// The nexthop changes that turn `installed` into `desired`, in the order
/// [`NexthopChanges`] lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexthopChanges {
    /// Something else at a group id this plan wants (a group of another
    /// type or size, which a replace refuses): deleted first, with the
    /// routes using it (the caller puts those again).
    pub clear_groups: Vec<u32>,
    /// Member nexthops to create, before the groups that name them.
    pub add_hops: Vec<(u32, IpAddr)>,
    /// Groups to create or replace (members in order), before the routes
    /// that use them. A replace keeps every remaining member's buckets.
    pub put_groups: Vec<(u32, Vec<u32>)>,
    /// Groups (and strays) to delete, after the routes that used them.
    pub delete_groups: Vec<u32>,
    /// Member nexthops to delete, after the groups.
    pub delete_hops: Vec<u32>,
}

impl NexthopChanges {
    /// Whether `action` is a route via a group these changes clear first.
    pub fn clears(&self, action: &super::tables::RouteAction) -> bool {
        matches!(action, super::tables::RouteAction::Group(id) if self.clear_groups.contains(id))
    }

    pub fn is_empty(&self) -> bool {
        self.clear_groups.is_empty()
            && self.add_hops.is_empty()
            && self.put_groups.is_empty()
            && self.delete_groups.is_empty()
            && self.delete_hops.is_empty()
    }
}

/// Plans the nexthops: a member's nexthop keeps its id while its gateway
/// stays in a group (the group's buckets name ids), a new one takes the
/// lowest free id of [`MEMBER_IDS`].
pub fn plan(installed: &NexthopState, desired: &SpreadGroups) -> NexthopChanges {
    let mut changes = NexthopChanges::default();
    let mut by_gateway: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for (id, gateway) in installed.hops.iter().rev() {
        by_gateway.insert(*gateway, *id); // the lowest id wins
    }
    let mut taken: BTreeSet<u32> = installed.hops.keys().copied().collect();
    taken.extend(&installed.strays);
    let mut free = MEMBER_IDS.filter(|id| !taken.contains(id));
    let mut used: BTreeSet<u32> = BTreeSet::new();
    for (ipv6, gateways) in desired {
        let mut members = Vec::new();
        for gateway in gateways {
            let id = match by_gateway.get(gateway) {
                Some(id) => *id,
                None => {
                    let Some(id) = free.next() else { break };
                    by_gateway.insert(*gateway, id);
                    changes.add_hops.push((id, *gateway));
                    id
                }
            };
            used.insert(id);
            members.push(id);
        }
        let group = group_id(*ipv6);
        if installed.strays.contains(&group) {
            changes.clear_groups.push(group);
        }
        if installed.groups.get(&group) != Some(&members) {
            changes.put_groups.push((group, members));
        }
    }
    let wanted_groups: BTreeSet<u32> = desired.keys().map(|v6| group_id(*v6)).collect();
    changes.delete_groups = (installed.groups.keys())
        .filter(|id| !wanted_groups.contains(id))
        .chain(
            installed
                .strays
                .iter()
                .filter(|id| !MEMBER_IDS.contains(id) && !changes.clear_groups.contains(id)),
        )
        .copied()
        .collect();
    changes.delete_hops = (installed.hops.keys())
        .filter(|id| !used.contains(id))
        .chain(installed.strays.iter().filter(|id| MEMBER_IDS.contains(id)))
        .copied()
        .collect();
    changes
}

/// A member nexthop with netwarp's tag.
pub fn member(id: u32, gateway: IpAddr, oif: u32) -> Nexthop {
    Nexthop {
        id,
        protocol: NETWARP_PROTOCOL,
        kind: NexthopKind::Gateway { gateway, oif },
    }
}

/// A resilient group of netwarp's shape with netwarp's tag.
pub fn group(id: u32, members: Vec<u32>) -> Nexthop {
    Nexthop {
        id,
        protocol: NETWARP_PROTOCOL,
        kind: NexthopKind::Group {
            members,
            resilient: Some(RESILIENT),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NLM_F_MULTI: u16 = 0x2;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A little-endian (x86, arm64) host's bytes, as `linux/netlink.h`,
    /// `linux/rtnetlink.h` and `linux/nexthop.h` lay them out.
    #[cfg(target_endian = "little")]
    #[test]
    fn a_member_and_a_resilient_group_encode_as_the_uapi_says() {
        let hop = member(0x4e57_0100, ip("172.20.0.5"), 7);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: len 48, RTM_NEWNEXTHOP (104), REQUEST|ACK|REPLACE|CREATE, seq 9, pid 0
            48, 0, 0, 0,  104, 0,  0x05, 0x05,  9, 0, 0, 0,  0, 0, 0, 0,
            // nhmsg: AF_INET, scope 0, protocol 0x57, resvd, flags 0
            2, 0, 0x57, 0,  0, 0, 0, 0,
            // NHA_ID (1) = 0x4e570100
            8, 0, 1, 0,  0x00, 0x01, 0x57, 0x4e,
            // NHA_OIF (5) = 7
            8, 0, 5, 0,  7, 0, 0, 0,
            // NHA_GATEWAY (6) = 172.20.0.5, network order
            8, 0, 6, 0,  172, 20, 0, 5,
        ];
        assert_eq!(new_request(&hop, 9), want);

        let v6 = member(0x4e57_0101, ip("fd00::5"), 7);
        let bytes = new_request(&v6, 1);
        assert_eq!(bytes.len(), 16 + 8 + 8 + 8 + 20);
        assert_eq!(bytes[16], 10, "AF_INET6");
        assert_eq!(&bytes[40..44], &[20, 0, 6, 0]);
        let fd00_5: std::net::Ipv6Addr = "fd00::5".parse().unwrap();
        assert_eq!(&bytes[44..60], &fd00_5.octets());

        let grp = group(GROUP_V4, vec![0x4e57_0100, 0x4e57_0102]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: len 88 = 16 + nhmsg 8 + attributes 8 + 20 + 8 + 28
            88, 0, 0, 0,  104, 0,  0x05, 0x05,  3, 0, 0, 0,  0, 0, 0, 0,
            // nhmsg: AF_UNSPEC (the kernel takes groups only so), protocol 0x57
            0, 0, 0x57, 0,  0, 0, 0, 0,
            // NHA_ID
            8, 0, 1, 0,  0x04, 0x00, 0x57, 0x4e,
            // NHA_GROUP (2): two struct nexthop_grp {id, weight 0 (=1), weight_high, resvd2}
            20, 0, 2, 0,
            0x00, 0x01, 0x57, 0x4e,  0, 0, 0, 0,
            0x02, 0x01, 0x57, 0x4e,  0, 0, 0, 0,
            // NHA_GROUP_TYPE (3) = NEXTHOP_GRP_TYPE_RES (1), u16 padded
            6, 0, 3, 0,  1, 0, 0, 0,
            // NHA_RES_GROUP (12 | NLA_F_NESTED)
            28, 0, 12, 0x80,
            //   NHA_RES_GROUP_BUCKETS (1) = 64, u16 padded
                 6, 0, 1, 0,  64, 0, 0, 0,
            //   NHA_RES_GROUP_IDLE_TIMER (2) = 1000 (10 s in USER_HZ)
                 8, 0, 2, 0,  0xe8, 0x03, 0, 0,
            //   NHA_RES_GROUP_UNBALANCED_TIMER (3) = 6000
                 8, 0, 3, 0,  0x70, 0x17, 0, 0,
        ];
        assert_eq!(new_request(&grp, 3), want);

        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // RTM_DELNEXTHOP (105), REQUEST|ACK
            32, 0, 0, 0,  105, 0,  0x05, 0,  4, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 0, 0, 0,
            8, 0, 1, 0,  0x04, 0x00, 0x57, 0x4e,
        ];
        assert_eq!(delete_request(GROUP_V4, 4), want);

        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // RTM_GETNEXTHOP (106), REQUEST|DUMP (0x301)
            24, 0, 0, 0,  106, 0,  0x01, 0x03,  5, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 0, 0, 0,
        ];
        assert_eq!(dump_request(5), want);
    }

    #[test]
    fn what_is_encoded_decodes_back_and_a_dump_parses() {
        for nexthop in [
            member(0x4e57_0100, ip("172.20.0.5"), 7),
            member(0x4e57_0101, ip("fd00::5"), 3),
            group(GROUP_V6, vec![0x4e57_0101, 0x4e57_0103, 0x4e57_0105]),
            Nexthop {
                id: 12,
                protocol: 4,
                kind: NexthopKind::Group {
                    members: vec![1, 2],
                    resilient: None,
                },
            },
        ] {
            let request = new_request(&nexthop, 1);
            assert_eq!(
                parse_nexthop(&request[NLMSG_HDRLEN..]),
                Some(nexthop.clone())
            );
            // The kernel's dump: NLM_F_MULTI parts, then NLMSG_DONE.
            let mut dump = request.clone();
            dump[4..6].copy_from_slice(&RTM_NEWNEXTHOP.to_ne_bytes());
            dump[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
            dump.extend(message(NLMSG_DONE, NLM_F_MULTI, 1, 0, 0, &[]));
            assert_eq!(
                replies(&dump),
                vec![(1, Reply::Nexthop(Some(nexthop))), (1, Reply::Done)]
            );
        }
        // An error answer: NLMSG_ERROR with -EEXIST, then the request.
        let mut error = Vec::new();
        let payload: Vec<u8> = (-libc::EEXIST).to_ne_bytes().into_iter().collect();
        let mut header = message(NLMSG_ERROR, 0, 7, 0, 0, &[]);
        header.truncate(NLMSG_HDRLEN);
        header[0..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        error.extend(header);
        error.extend(payload);
        assert_eq!(replies(&error), vec![(7, Reply::Status(-libc::EEXIST))]);
        // A blackhole (no gateway) is something else; truncation is refused.
        let mut attrs = Vec::new();
        push_attr(&mut attrs, NHA_ID, &9u32.to_ne_bytes());
        push_attr(&mut attrs, 4, &[]);
        let blackhole = message(RTM_NEWNEXTHOP, 0, 1, AF_INET, 0x57, &attrs);
        assert_eq!(
            parse_nexthop(&blackhole[NLMSG_HDRLEN..]).map(|n| n.kind),
            Some(NexthopKind::Other)
        );
        assert_eq!(parse_nexthop(&blackhole[NLMSG_HDRLEN..20]), None);
    }

    #[test]
    fn only_netwarp_s_tagged_nexthops_in_its_range_are_its_own() {
        let theirs = Nexthop {
            protocol: 4,
            ..member(0x4e57_0100, ip("172.20.0.5"), 7)
        };
        let out_of_range = member(5, ip("172.20.0.5"), 7);
        let old_shape = Nexthop {
            kind: NexthopKind::Group {
                members: vec![0x4e57_0100],
                resilient: None,
            },
            ..group(GROUP_V4, vec![])
        };
        let state = NexthopState::of([
            theirs,
            out_of_range,
            old_shape,
            member(0x4e57_0100, ip("172.20.0.2"), 7),
            group(GROUP_V6, vec![0x4e57_0101]),
        ]);
        assert_eq!(state.hops, [(0x4e57_0100, ip("172.20.0.2"))].into());
        assert_eq!(state.groups, [(GROUP_V6, vec![0x4e57_0101])].into());
        assert_eq!(state.strays, [GROUP_V4].into());
    }

    /// What `changes` leave installed, as the kernel would.
    fn applied(installed: &NexthopState, changes: &NexthopChanges) -> NexthopState {
        let mut state = installed.clone();
        state.hops.extend(changes.add_hops.iter().copied());
        state.groups.extend(changes.put_groups.iter().cloned());
        for id in &changes.clear_groups {
            state.strays.remove(id);
        }
        for id in changes.delete_groups.iter().chain(&changes.delete_hops) {
            state.groups.remove(id);
            state.hops.remove(id);
            state.strays.remove(id);
        }
        state
    }

    #[test]
    fn a_leaving_member_leaves_the_others_ids_and_a_restart_adopts_them() {
        let gateways = |list: &[&str]| -> SpreadGroups {
            [(false, list.iter().map(|g| ip(g)).collect())].into()
        };
        let four = gateways(&["172.20.0.2", "172.20.0.3", "172.20.0.4", "172.20.0.5"]);
        let first = plan(&NexthopState::default(), &four);
        let ids: Vec<u32> = (0x4e57_0100..0x4e57_0104).collect();
        assert_eq!(first.add_hops.len(), 4);
        assert_eq!(first.put_groups, vec![(GROUP_V4, ids.clone())]);
        let installed = applied(&NexthopState::default(), &first);
        // A restarted daemon reads the same nexthops: nothing to write.
        assert!(plan(&installed, &four).is_empty());

        // The second member leaves: the group is replaced without its id,
        // the others keep theirs; its nexthop goes after the group.
        let three = gateways(&["172.20.0.2", "172.20.0.4", "172.20.0.5"]);
        let leave = plan(&installed, &three);
        assert_eq!(
            leave,
            NexthopChanges {
                put_groups: vec![(GROUP_V4, vec![ids[0], ids[2], ids[3]])],
                delete_hops: vec![ids[1]],
                ..NexthopChanges::default()
            }
        );
        // It comes back: a new nexthop (its old id is free again).
        let back = plan(&applied(&installed, &leave), &four);
        assert_eq!(back.add_hops, vec![(ids[1], ip("172.20.0.3"))]);
        assert_eq!(back.put_groups, vec![(GROUP_V4, ids.clone())]);

        // One member left of the family: no group; all of them go.
        let gone = plan(&installed, &SpreadGroups::new());
        assert_eq!(gone.delete_groups, vec![GROUP_V4]);
        assert_eq!(gone.delete_hops, ids);
        assert!(gone.add_hops.is_empty() && gone.put_groups.is_empty());
    }

    #[test]
    fn families_get_groups_of_their_own_and_strays_go() {
        let mut installed = NexthopState::default();
        installed.strays.insert(GROUP_V4);
        installed.strays.insert(GROUP_V4 + 1);
        installed.strays.insert(0x4e57_0107);
        let desired: SpreadGroups = [
            (false, vec![ip("172.20.0.2"), ip("172.20.0.3")]),
            (true, vec![ip("fd00::2"), ip("fd00::3")]),
        ]
        .into();
        let changes = plan(&installed, &desired);
        let groups: Vec<u32> = changes.put_groups.iter().map(|(id, _)| *id).collect();
        assert_eq!(groups, [GROUP_V4, GROUP_V6]);
        // The stray's id is not reused meanwhile.
        assert!(changes.add_hops.iter().all(|(id, _)| *id != 0x4e57_0107));
        assert_eq!(changes.add_hops.len(), 4);
        // The stray at a group id goes first (a replace would fail), the
        // others after the routes.
        assert_eq!(changes.clear_groups, vec![GROUP_V4]);
        assert_eq!(changes.delete_groups, vec![GROUP_V4 + 1]);
        assert_eq!(changes.delete_hops, vec![0x4e57_0107]);
        assert!(plan(&applied(&installed, &changes), &desired).is_empty());
    }
}
