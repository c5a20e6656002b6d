//! netwarp's routing tables: one per selector group, holding the group's
//! prefixes as routes, so a label's size costs routes (a trie lookup) and
//! never policy rules (a list the kernel walks for every routed packet).
//!
//! A rule `[ipproto P] [dport R] lookup TABLE` whose table has no route for
//! a packet's destination does not decide: the kernel's fib rules go on to
//! the next rule (`main` for an unsteered destination). A `prohibit` route
//! in the table does decide (EACCES). Checked in a real namespace:
//! `ip rule add pref 100 ipproto tcp dport 443 lookup T`, a route in `T`
//! and a wider one in `main`; `ip route get` to a prefix missing from `T`
//! answers from `main`, to a prohibit route in `T` with EACCES.
//!
//! Ownership: a table is netwarp's when its id lies in netwarp's range and
//! its routes carry [`NETWARP_PROTOCOL`]; netwarp reads and removes only
//! such routes. Ids are not stored anywhere: they are read back from the
//! installed rules (which table each selector group looks up), and a new
//! group gets the lowest free id of the range ([`allocate`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
};

use std::future::Future;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    },
};

use super::policy_rule::NETWARP_PROTOCOL;
use crate::model::Cidr;

/// The tables of the routes dataplane inside target namespaces. Well
/// clear of the common ones (Tailscale 52, wg-quick 51820, `main` 254).
pub const TARGET_TABLES: RangeInclusive<u32> = 0x4e57_0000..=0x4e57_ffff;

/// The one table earlier versions used in target namespaces: its routes
/// are read as netwarp's so they are removed.
pub const LEGACY_TARGET_TABLE: u32 = 0x4e57;

/// What a route in one of netwarp's tables does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteAction {
    Via(IpAddr),
    /// A route via one of netwarp's resilient nexthop groups (by id; see
    /// [`super::nexthop`]): a spread target's members. The kernel picks a
    /// member by the flow's hash (addresses, protocol, destination port:
    /// see [`super::netns::multipath_hash_settings`]).
    /// Id 0, never a nexthop's, is what an earlier version's multipath
    /// route reads as: no plan wants it, so it is replaced.
    Group(u32),
    /// A throw route: the lookup ends here and goes on with the next rule,
    /// as if the table had no route (a `direct` exclusion inside a prefix
    /// the table steers or refuses).
    Throw,
    /// A prohibit route: senders get EACCES at once, nothing leaves.
    Prohibit,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "netwarp's routing table ids {first:#x}-{last:#x} are all taken ({wanted} selector groups \
     wanted); use fewer distinct protocol/port selectors in the labels"
)]
pub struct TablesExhausted {
    pub first: u32,
    pub last: u32,
    pub wanted: usize,
}

/// Assigns a table id in `range` to every `wanted` key. A key keeps the
/// lowest in-range table an installed rule gives it (if no other key took
/// it); a new key gets the lowest id that no installed rule uses, no key
/// took and `reserved` (tables holding routes) does not hold, so a new
/// group never inherits another's routes.
pub fn allocate<K: Ord + Clone>(
    installed: &[(K, u32)],
    reserved: &BTreeSet<u32>,
    wanted: &BTreeSet<K>,
    range: RangeInclusive<u32>,
) -> Result<BTreeMap<K, u32>, TablesExhausted> {
    let mut taken: BTreeSet<u32> = installed.iter().map(|(_, t)| *t).collect();
    taken.extend(reserved);
    let mut kept: BTreeMap<K, u32> = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut sorted: Vec<&(K, u32)> = installed
        .iter()
        .filter(|(k, t)| range.contains(t) && wanted.contains(k))
        .collect();
    sorted.sort_by_key(|(_, t)| *t);
    for (key, table) in sorted {
        if !kept.contains_key(key) && used.insert(*table) {
            kept.insert(key.clone(), *table);
        }
    }
    let mut next = *range.start();
    for key in wanted {
        if kept.contains_key(key) {
            continue;
        }
        while taken.contains(&next) || used.contains(&next) {
            next = next
                .checked_add(1)
                .ok_or_else(|| exhausted(&range, wanted))?;
        }
        if !range.contains(&next) {
            return Err(exhausted(&range, wanted));
        }
        used.insert(next);
        kept.insert(key.clone(), next);
    }
    Ok(kept)
}

fn exhausted<K>(range: &RangeInclusive<u32>, wanted: &BTreeSet<K>) -> TablesExhausted {
    TablesExhausted {
        first: *range.start(),
        last: *range.end(),
        wanted: wanted.len(),
    }
}

/// A route in `table` with netwarp's tag. `oif` pins a `Via` route to an
/// interface.
pub(crate) fn route_message(
    table: u32,
    dst: Cidr,
    action: RouteAction,
    oif: Option<u32>,
) -> RouteMessage {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .expect("a Cidr is always a valid prefix")
        .table_id(table)
        .protocol(RouteProtocol::Other(NETWARP_PROTOCOL));
    let builder = match action {
        RouteAction::Via(gateway) => {
            let builder = builder
                .gateway(gateway)
                .expect("planner keeps gateway and destination in one family")
                .kind(RouteType::Unicast);
            match oif {
                Some(index) => builder.output_interface(index),
                None => builder,
            }
        }
        RouteAction::Group(id) => {
            let mut message = builder.kind(RouteType::Unicast).build();
            message.attributes.push(RouteAttribute::NhId(id));
            return message;
        }
        RouteAction::Prohibit => builder.kind(RouteType::Prohibit),
        RouteAction::Throw => builder.kind(RouteType::Throw),
    };
    builder.build()
}

/// A delete request for netwarp's route to `dst` in `table`, whatever its
/// type (the kernel matches table, destination and length exactly).
pub(crate) fn route_delete_message(table: u32, dst: Cidr) -> RouteMessage {
    let mut message = route_message(table, dst, RouteAction::Prohibit, None);
    message.header.kind = RouteType::Unspec;
    message
}

/// Reads back a route with netwarp's tag: its table, destination and
/// action. `None` for anyone else's.
pub(crate) fn parse_owned_route(route: &RouteMessage) -> Option<(u32, Cidr, RouteAction)> {
    if route.header.protocol != RouteProtocol::Other(NETWARP_PROTOCOL) {
        return None;
    }
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let dst_addr = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => addr(d),
        _ => None,
    });
    let dst_addr = dst_addr.unwrap_or(match route.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    let dst = Cidr::new(dst_addr, route.header.destination_prefix_length).ok()?;
    let action = match route.header.kind {
        RouteType::Prohibit => RouteAction::Prohibit,
        RouteType::Throw => RouteAction::Throw,
        _ => {
            let gateway = |attributes: &[RouteAttribute]| {
                attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => addr(g),
                    _ => None,
                })
            };
            // A dump also expands a group's members (nexthop_compat_mode):
            // the group's id decides.
            let group = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::NhId(id) => Some(*id),
                _ => None,
            });
            let multipath =
                (route.attributes.iter()).any(|a| matches!(a, RouteAttribute::MultiPath(_)));
            match (group, multipath) {
                (Some(id), _) => RouteAction::Group(id),
                (None, true) => RouteAction::Group(0),
                (None, false) => RouteAction::Via(gateway(&route.attributes)?),
            }
        }
    };
    Some((table, dst, action))
}

/// How many route requests one netlink socket has in flight at once: a
/// table of thousands of prefixes costs a fraction of the round trips of
/// one request after another, and the socket never holds more than this
/// many acks.
pub(crate) const ROUTES_IN_FLIGHT: usize = 64;

/// Runs `request` for every item, [`ROUTES_IN_FLIGHT`] at a time, and
/// returns each item with its result, in completion order. For route
/// changes, whose order among themselves does not matter (each names its
/// own table and prefix); rules, whose order does, go one at a time.
pub(crate) async fn concurrently<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    request: F,
) -> Vec<(T, Result<(), rtnetlink::Error>)>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), rtnetlink::Error>>,
{
    stream::iter(items)
        .map(|item| {
            let done = request(item.clone());
            async move { (item, done.await) }
        })
        .buffer_unordered(ROUTES_IN_FLIGHT)
        .collect()
        .await
}

/// netwarp's routes of both families in the tables `owned` accepts.
pub(crate) async fn dump_owned_routes(
    handle: &Handle,
    owned: impl Fn(u32) -> bool,
) -> Result<BTreeMap<(u32, Cidr), RouteAction>, rtnetlink::Error> {
    let mut routes = BTreeMap::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let dumped: Vec<RouteMessage> = handle.route().get(query).execute().try_collect().await?;
        for route in dumped {
            if let Some((table, dst, action)) = parse_owned_route(&route)
                && owned(table)
            {
                routes.insert((table, dst), action);
            }
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: RangeInclusive<u32> = 100..=103;

    fn keys(keys: &[&'static str]) -> BTreeSet<&'static str> {
        keys.iter().copied().collect()
    }

    #[test]
    fn installed_groups_keep_their_tables_and_new_ones_take_the_lowest_free() {
        let installed = [("tcp", 101), ("all", 103)];
        let tables = allocate(
            &installed,
            &BTreeSet::new(),
            &keys(&["all", "tcp", "udp"]),
            RANGE,
        )
        .unwrap();
        assert_eq!(tables, [("all", 103), ("tcp", 101), ("udp", 100)].into());
    }

    #[test]
    fn a_new_group_never_takes_a_table_in_use() {
        // 100 is a stale group's (its rule goes this pass), 101 holds
        // leftover routes.
        let installed = [("gone", 100)];
        let tables = allocate(&installed, &[101].into(), &keys(&["new"]), RANGE).unwrap();
        assert_eq!(tables, [("new", 102)].into());
    }

    #[test]
    fn two_rules_claiming_one_table_leave_it_to_one_group() {
        let installed = [("a", 100), ("b", 100), ("a", 102)];
        let tables = allocate(&installed, &BTreeSet::new(), &keys(&["a", "b"]), RANGE).unwrap();
        assert_eq!(tables, [("a", 100), ("b", 101)].into());
    }

    #[test]
    fn out_of_range_tables_are_not_adopted_and_exhaustion_is_an_error() {
        let tables = allocate(&[("a", 7)], &BTreeSet::new(), &keys(&["a"]), RANGE).unwrap();
        assert_eq!(tables, [("a", 100)].into());
        let error = allocate(&[], &[100, 101].into(), &keys(&["a", "b", "c"]), RANGE).unwrap_err();
        assert_eq!((error.first, error.last, error.wanted), (100, 103, 3));
        let top = u32::MAX - 1..=u32::MAX;
        assert!(allocate(&[], &BTreeSet::new(), &keys(&["a", "b", "c"]), top).is_err());
    }

    #[test]
    fn routes_survive_a_netlink_round_trip() {
        for (dst, action) in [
            (
                "203.0.113.0/24",
                RouteAction::Via("172.20.0.2".parse().unwrap()),
            ),
            ("2001:db8::/32", RouteAction::Prohibit),
            ("0.0.0.0/0", RouteAction::Prohibit),
            ("0.0.0.0/0", RouteAction::Group(0x4e57_0004)),
            ("2001:db8::/32", RouteAction::Group(0x4e57_0006)),
        ] {
            let dst: Cidr = dst.parse().unwrap();
            let mut message = route_message(0x4e57_0001, dst, action, Some(3));
            message.attributes.push(RouteAttribute::Table(0x4e57_0001));
            assert_eq!(
                parse_owned_route(&message),
                Some((0x4e57_0001, dst, action))
            );
            message.header.protocol = RouteProtocol::Static;
            assert_eq!(parse_owned_route(&message), None, "not netwarp's");
        }
    }

    #[test]
    fn an_earlier_multipath_route_reads_as_one_no_plan_wants() {
        use rtnetlink::RouteNextHopBuilder;
        let dst: Cidr = "203.0.113.0/24".parse().unwrap();
        let hops = ["172.20.0.2", "172.20.0.5"].map(|gateway| {
            RouteNextHopBuilder::new(AddressFamily::Inet)
                .via(gateway.parse().unwrap())
                .unwrap()
                .build()
        });
        let mut message = route_message(0x4e57_0001, dst, RouteAction::Prohibit, None);
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::MultiPath(hops.to_vec()));
        assert_eq!(
            parse_owned_route(&message),
            Some((0x4e57_0001, dst, RouteAction::Group(0)))
        );
        // A route via a group, as a dump shows it (the members expanded too).
        message.attributes.push(RouteAttribute::NhId(0x4e57_0004));
        assert_eq!(
            parse_owned_route(&message),
            Some((0x4e57_0001, dst, RouteAction::Group(0x4e57_0004)))
        );
    }
}
