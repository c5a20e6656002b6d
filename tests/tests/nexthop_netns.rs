//! netwarp's nexthop messages against a real kernel, in a test namespace:
//! member nexthops of both families and their resilient groups are
//! created, read back, and a group replaced without a member keeps every
//! other member's buckets (`ip nexthop bucket show`); a nexthop that is
//! not netwarp's is never read as its own; everything is deleted again.
//!
//! Network safety: a veth pair inside a test namespace, with test-only
//! addresses (10.213.78.0/24, fd00:4e57:78::/64); nothing leaves it.

use std::{collections::BTreeMap, net::IpAddr};

use netwarp::dataplane::nexthop::{
    self, GROUP_V4, GROUP_V6, NexthopSocket, NexthopState, group, member,
};
use netwarp_tests::{netns::Netns, skip, skip_if};

/// A veth pair inside the namespace (a dummy device needs a module).
const DEVICE: &str = "nwveth0";
const PEER: &str = "nwveth1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Each bucket's nexthop id of group `id`, by bucket index.
fn buckets(netns: &Netns, id: u32) -> BTreeMap<u32, u32> {
    let out = netns
        .exec(&["ip", "nexthop", "bucket", "show", "id", &id.to_string()])
        .expect("ip nexthop bucket show");
    (out.lines())
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| -> Option<u32> {
                let at = words.iter().position(|w| *w == key)?;
                words.get(at + 1)?.parse().ok()
            };
            Some((after("index")?, after("nhid")?))
        })
        .collect()
}

#[test]
fn resilient_groups_are_written_read_back_and_keep_the_others_buckets() {
    let test = "resilient_groups_are_written_read_back_and_keep_the_others_buckets";
    skip_if!(test, skip::missing_root());
    let netns = Netns::create("nwn").expect("a test namespace");
    for command in [
        // New devices may come with IPv6 off (the host's default).
        vec!["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"],
        vec!["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
        vec![
            "ip", "link", "add", DEVICE, "type", "veth", "peer", "name", PEER,
        ],
        vec!["ip", "link", "set", PEER, "up"],
        vec!["ip", "link", "set", DEVICE, "up"],
        vec!["ip", "addr", "add", "10.213.78.1/24", "dev", DEVICE],
        vec![
            "ip",
            "addr",
            "add",
            "fd00:4e57:78::1/64",
            "dev",
            DEVICE,
            "nodad",
        ],
        // Someone else's nexthop: never netwarp's.
        vec![
            "ip",
            "nexthop",
            "add",
            "id",
            "7",
            "via",
            "10.213.78.9",
            "dev",
            DEVICE,
        ],
    ] {
        netns.exec(&command).expect("setting up the namespace");
    }
    let listed = netns
        .exec(&["ip", "-o", "link", "show", "dev", DEVICE])
        .expect("ip link show");
    let oif: u32 = listed
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {listed:?}"));
    let socket = netns
        .run_inside(NexthopSocket::open)
        .expect("inside the namespace")
        .expect("a nexthop socket");

    let v4 = ["10.213.78.2", "10.213.78.3", "10.213.78.4", "10.213.78.5"];
    let v6 = ["fd00:4e57:78::2", "fd00:4e57:78::3"];
    let v4_ids: Vec<u32> = (0..4).map(|i| 0x4e57_0100 + i).collect();
    let v6_ids: Vec<u32> = (4..6).map(|i| 0x4e57_0100 + i).collect();
    for (id, gateway) in v4_ids.iter().zip(v4).chain(v6_ids.iter().zip(v6)) {
        socket
            .put(&member(*id, ip(gateway), oif))
            .unwrap_or_else(|e| panic!("member {id:#x} via {gateway}: {e}"));
    }
    socket
        .put(&group(GROUP_V4, v4_ids.clone()))
        .expect("the IPv4 group");
    socket
        .put(&group(GROUP_V6, v6_ids.clone()))
        .expect("the IPv6 group");
    // A route may use it (what the routes dataplane writes, by `ip` here).
    netns
        .exec(&[
            "ip",
            "route",
            "add",
            "198.18.78.0/24",
            "nhid",
            &GROUP_V4.to_string(),
        ])
        .expect("a route via the group");

    let installed = NexthopState::of(socket.dump().expect("a dump"));
    let hops: BTreeMap<u32, IpAddr> = (v4_ids.iter().zip(v4))
        .chain(v6_ids.iter().zip(v6))
        .map(|(id, g)| (*id, ip(g)))
        .collect();
    assert_eq!(installed.hops, hops, "{installed:?}");
    assert_eq!(
        installed.groups,
        [(GROUP_V4, v4_ids.clone()), (GROUP_V6, v6_ids.clone())].into()
    );
    assert!(installed.strays.is_empty(), "{installed:?}");
    let shown = netns
        .exec(&["ip", "nexthop", "show", "id", &GROUP_V4.to_string()])
        .expect("ip nexthop show");
    assert!(
        shown.contains("type resilient buckets 64 idle_timer 10 unbalanced_timer 60"),
        "{shown}"
    );

    // The second member leaves: the group without it, then its nexthop.
    let before = buckets(&netns, GROUP_V4);
    assert_eq!(before.len(), usize::from(nexthop::BUCKETS), "{before:?}");
    let leaving = v4_ids[1];
    let staying: Vec<u32> = v4_ids.iter().copied().filter(|id| *id != leaving).collect();
    socket
        .put(&group(GROUP_V4, staying.clone()))
        .expect("the group replaced");
    socket.delete(leaving).expect("the member deleted");
    let after = buckets(&netns, GROUP_V4);
    let (mut kept, mut moved) = (0, 0);
    for (index, id) in &before {
        let now = after[index];
        assert_ne!(now, leaving, "bucket {index} still names the member");
        if *id != leaving {
            kept += usize::from(now == *id);
            moved += usize::from(now != *id);
        }
    }
    assert_eq!(moved, 0, "{moved} of the others' buckets changed member");
    assert_eq!(kept, 48, "the others held 16 buckets each");

    // Everything of netwarp's goes; someone else's nexthop stays.
    netns
        .exec(&["ip", "route", "del", "198.18.78.0/24"])
        .expect("the route deleted");
    for id in [GROUP_V4, GROUP_V6].iter().chain(&staying).chain(&v6_ids) {
        socket.delete(*id).expect("deleted");
    }
    let error = socket.delete(GROUP_V4).expect_err("deleted twice");
    assert_eq!(error.errno(), Some(libc::ENOENT), "{error}");
    let left = socket.dump().expect("a dump");
    assert_eq!(NexthopState::of(left.clone()), NexthopState::default());
    assert_eq!(
        left.iter().map(|n| n.id).collect::<Vec<_>>(),
        [7],
        "{left:?}"
    );
}
