//! The `routes` dataplane: policy rules and netwarp-owned routing tables
//! inside each target's network namespace, through rtnetlink.
//!
//! A target's plan entries are grouped by selector (family, ip protocol,
//! port range; all traffic is one group). Each group gets a table of its
//! own holding one route per prefix (`via` the warp, or `prohibit`), and
//! ONE rule `[ipproto P] [dport R] lookup TABLE` at
//! [`NETWARP_RULE_PRIORITY`]. A lookup that finds no route falls through to
//! the next rule (see [`super::tables`]), so unsteered destinations still
//! use `main`. A label of thousands of prefixes costs thousands of routes
//! and a handful of rules.
//!
//! Ownership is explicit: every route carries protocol
//! [`NETWARP_PROTOCOL`] in a table of [`TARGET_TABLES`]; every rule has
//! priority [`NETWARP_RULE_PRIORITY`] and the same protocol. netwarp lists
//! and removes exactly those, and nothing else.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
};

use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

pub use super::{
    mac::parse_mac,
    policy_rule::{NETWARP_PROTOCOL, OwnedRule, Selector},
    tables::{LEGACY_TARGET_TABLE, RouteAction, TARGET_TABLES, TablesExhausted},
};
use super::{
    netns::{NamespaceHandle, NetnsError, already_done},
    nexthop::{self, NexthopChanges, NexthopState, SpreadGroups},
    policy_rule::{TaggedRule, dump_rules, match_selector, tagged_rule},
    tables::{allocate, concurrently, dump_owned_routes, route_delete_message, route_message},
};
use crate::{
    model::{Cidr, PortRange},
    plan::{Action, Entry, SpreadMember},
};

/// The first priority of netwarp's policy rules: before `main` (32766).
pub const NETWARP_RULE_PRIORITY: u32 = 10_000;
/// Every priority netwarp's rules in a target's namespace use: one per
/// class tier (see [`tier_priority`]).
pub const NETWARP_RULE_PRIORITIES: RangeInclusive<u32> =
    NETWARP_RULE_PRIORITY..=NETWARP_RULE_PRIORITY + 2;

/// Errors of the routes dataplane: those of the namespace work it does.
pub type RoutesError = NetnsError;

/// One of netwarp's rules in a namespace: `[ipproto P] [dport R] lookup TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupRule {
    pub selector: Selector,
    pub table: u32,
}

/// Everything netwarp owns in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedState {
    /// By table and destination.
    pub routes: BTreeMap<(u32, Cidr), RouteAction>,
    pub rules: BTreeSet<GroupRule>,
    /// Rules with netwarp's tag and priority in a shape it does not write
    /// (an earlier version's `to PREFIX lookup 0x4e57`, say): removed.
    pub strays: Vec<RuleMessage>,
    /// netwarp's nexthops: a spread target's groups and their members.
    pub nexthops: NexthopState,
}

/// What a target's plan entries need: each selector class's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub groups: BTreeMap<Selector, BTreeMap<Cidr, RouteAction>>,
    /// The nexthop groups the routes use (see [`spread_over`]).
    pub spread: SpreadGroups,
}

/// The priority of a class's rule: port classes first, then protocols,
/// then every protocol, so a packet's first netwarp rule is its narrowest
/// class, whose table holds everything that applies to it.
pub fn tier_priority(selector: &Selector) -> u32 {
    NETWARP_RULE_PRIORITY
        + match (selector.ip_proto, selector.ports) {
            (_, Some(_)) => 0,
            (Some(_), None) => 1,
            (None, _) => 2,
        }
}

/// Compiles a target's entries into one table per selector class, with
/// the semantics of [`crate::plan::decide`]:
///
/// - the classes split the selectors in use into port ranges that do not
///   overlap (per protocol), protocols and every protocol; a packet's
///   first rule (by [`tier_priority`]) is its narrowest class;
/// - each class's table holds every entry whose selector covers the class,
///   one route per prefix, from the narrowest selector of that prefix
///   (ties: the greater action), so the kernel's longest-prefix match
///   decides as `decide` does;
/// - `direct` is a throw route, which ends the lookup there and goes on to
///   the next rule. `direct` entries have no selector, so every table holds
///   them and no broader class can steer what a narrower one threw. A
///   packet no route takes goes on to the next rule too, and the broader
///   tables hold a subset of the narrower's prefixes, so none takes it.
pub fn desired_state(entries: &[Entry]) -> Desired {
    let mut desired = Desired::default();
    for class in classes(entries) {
        let mut chosen: BTreeMap<Cidr, (std::cmp::Reverse<u32>, Action)> = BTreeMap::new();
        for entry in entries.iter().filter(|e| covers(&e.rule, &class)) {
            let rank = (std::cmp::Reverse(entry.rule.selector_rank()), entry.action);
            (chosen.entry(entry.rule.destination))
                .and_modify(|best| *best = (*best).max(rank))
                .or_insert(rank);
        }
        let routes: BTreeMap<Cidr, RouteAction> = (chosen.into_iter())
            .map(|(dst, (_, action))| {
                let route = match action {
                    Action::Via(ip) => RouteAction::Via(ip),
                    Action::Direct => RouteAction::Throw,
                    Action::Deny | Action::Block => RouteAction::Prohibit,
                };
                (dst, route)
            })
            .collect();
        // A table of throws alone changes nothing.
        if routes.values().any(|r| *r != RouteAction::Throw) {
            desired.groups.insert(class, routes);
        }
    }
    desired
}

/// `desired` with each route via a spread target's first member pointed
/// at the family's resilient nexthop group over every member with an
/// address of that family (in label order); a family only one member has
/// keeps its plain routes.
pub fn spread_over(mut desired: Desired, members: &[SpreadMember]) -> Desired {
    if members.len() < 2 {
        return desired;
    }
    let gateways = |v6: bool| -> Vec<IpAddr> {
        (members.iter())
            .filter_map(|m| match v6 {
                false => m.via_v4.map(IpAddr::V4),
                true => m.via_v6.map(IpAddr::V6),
            })
            .collect()
    };
    let (v4, v6) = (gateways(false), gateways(true));
    for route in desired
        .groups
        .values_mut()
        .flat_map(|routes| routes.values_mut())
    {
        if let RouteAction::Via(ip) = *route {
            let ipv6 = ip.is_ipv6();
            let hops = if ipv6 { &v6 } else { &v4 };
            if hops.len() >= 2 {
                *route = RouteAction::Group(nexthop::group_id(ipv6));
                desired.spread.insert(ipv6, hops.clone());
            }
        }
    }
    desired
}

/// The selector classes of `entries`: per family, every protocol and each
/// protocol that a selector names without ports; and per protocol, its
/// port ranges cut where any of them starts or ends, keeping the pieces
/// some range covers.
fn classes(entries: &[Entry]) -> BTreeSet<Selector> {
    let selectors: BTreeSet<Selector> = (entries.iter())
        .map(|e| Selector::of(&OwnedRule::from_rule(&e.rule)))
        .collect();
    // A protocol's class, or the family's whole-traffic class, only where
    // a selector is just that: otherwise its table would hold the same
    // routes as the next broader class, which the packet meets anyway.
    let mut classes: BTreeSet<Selector> = (selectors.iter())
        .filter(|s| s.ports.is_none())
        .copied()
        .collect();
    let ranged: BTreeSet<(bool, u8)> = (selectors.iter())
        .filter(|s| s.ports.is_some())
        .filter_map(|s| Some((s.ipv6, s.ip_proto?)))
        .collect();
    for (ipv6, ip_proto) in ranged {
        let ranges: Vec<PortRange> = (selectors.iter())
            .filter(|s| s.ipv6 == ipv6 && s.ip_proto == Some(ip_proto))
            .filter_map(|s| s.ports)
            .collect();
        // Cut points: each range's start, and the port after its end.
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for r in &ranges {
            cuts.insert(u32::from(r.start));
            cuts.insert(u32::from(r.end) + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        for pair in cuts.windows(2) {
            let piece = PortRange {
                start: pair[0] as u16,
                end: (pair[1] - 1) as u16,
            };
            if ranges
                .iter()
                .any(|r| r.start <= piece.start && piece.end <= r.end)
            {
                classes.insert(Selector {
                    ipv6,
                    ip_proto: Some(ip_proto),
                    ports: Some(piece),
                });
            }
        }
    }
    classes
}

/// Whether `rule`'s selector takes every packet of `class`.
fn covers(rule: &crate::model::Rule, class: &Selector) -> bool {
    let selector = Selector::of(&OwnedRule::from_rule(rule));
    selector.ipv6 == class.ipv6
        && match (selector.ip_proto, class.ip_proto) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(p), Some(c)) => {
                p == c
                    && match (selector.ports, class.ports) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(r), Some(piece)) => r.start <= piece.start && piece.end <= r.end,
                    }
            }
        }
}

/// The changes that turn `installed` into `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes to add or replace in place (never delete-then-add, which
    /// would open a window for a leak).
    pub put_routes: Vec<(u32, Cidr, RouteAction)>,
    pub add_rules: Vec<GroupRule>,
    pub delete_rules: Vec<GroupRule>,
    pub delete_strays: Vec<RuleMessage>,
    pub delete_routes: Vec<(u32, Cidr)>,
    /// Nexthops: members and groups before the routes, removals after.
    pub nexthops: NexthopChanges,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.nexthops.is_empty()
            && self.put_routes.is_empty()
            && self.add_rules.is_empty()
            && self.delete_rules.is_empty()
            && self.delete_strays.is_empty()
            && self.delete_routes.is_empty()
    }
}

/// The changes, with each group's table: the one its installed rule looks
/// up, or the lowest free id of [`TARGET_TABLES`].
pub fn diff(installed: &OwnedState, desired: &Desired) -> Result<Changes, TablesExhausted> {
    let claimed: Vec<(Selector, u32)> = (installed.rules.iter())
        .map(|r| (r.selector, r.table))
        .collect();
    let reserved: BTreeSet<u32> = installed.routes.keys().map(|(t, _)| *t).collect();
    let wanted: BTreeSet<Selector> = desired.groups.keys().copied().collect();
    let tables = allocate(&claimed, &reserved, &wanted, TARGET_TABLES)?;
    let rules: BTreeSet<GroupRule> = (tables.iter())
        .map(|(selector, table)| GroupRule {
            selector: *selector,
            table: *table,
        })
        .collect();
    let routes: BTreeMap<(u32, Cidr), RouteAction> = (desired.groups.iter())
        .flat_map(|(selector, routes)| {
            let table = tables[selector];
            routes.iter().map(move |(dst, a)| ((table, *dst), *a))
        })
        .collect();
    let nexthops = nexthop::plan(&installed.nexthops, &desired.spread);
    // A group cleared first takes its routes with it: they are put again.
    let cleared = |action: &RouteAction| nexthops.clears(action);
    Ok(Changes {
        put_routes: (routes.iter())
            .filter(|(key, action)| installed.routes.get(key) != Some(action) || cleared(action))
            .map(|((table, dst), a)| (*table, *dst, *a))
            .collect(),
        add_rules: rules.difference(&installed.rules).copied().collect(),
        delete_rules: installed.rules.difference(&rules).copied().collect(),
        delete_strays: installed.strays.clone(),
        delete_routes: (installed.routes.keys())
            .filter(|key| !routes.contains_key(key))
            .copied()
            .collect(),
        nexthops,
    })
}

fn owned_table(table: u32) -> bool {
    TARGET_TABLES.contains(&table) || table == LEGACY_TARGET_TABLE
}

impl NamespaceHandle {
    /// Reads netwarp's own routes and rules, and nothing else.
    pub async fn installed(&self) -> Result<OwnedState, RoutesError> {
        let routes = dump_owned_routes(&self.handle, owned_table)
            .await
            .map_err(self.netlink("route dump"))?;
        // A kernel without nexthop objects (before 5.3) has none of ours.
        let dumped = self
            .nexthop_request("dump", |socket| match socket.dump() {
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Ok(Vec::new()),
                dumped => dumped,
            })
            .await?;
        let mut state = OwnedState {
            routes,
            nexthops: NexthopState::of(dumped),
            ..OwnedState::default()
        };
        let rules = dump_rules(&self.handle)
            .await
            .map_err(self.netlink("rule dump"))?;
        for rule in rules {
            match parse_owned_rule(&rule) {
                Some(Ok(ours)) => {
                    state.rules.insert(ours);
                }
                Some(Err(())) => state.strays.push(rule),
                None => {}
            }
        }
        Ok(state)
    }

    /// Applies `changes`: nexthops before the groups that name them, groups
    /// before the routes that use them, routes before the rules that use
    /// them; and removals the other way round, so no packet sees a rule
    /// without a route, nor a route without its next hops.
    pub async fn apply(&self, changes: &Changes, oif_mac: Option<&str>) -> Result<(), RoutesError> {
        let handle = self.writable()?;
        let oif = match oif_mac {
            Some(mac) => self.ifindex_by_mac(mac).await?,
            None => None,
        };
        let nexthops = &changes.nexthops;
        if !nexthops.clear_groups.is_empty() {
            // Deleting a group deletes its routes: they refuse meanwhile.
            for (table, dst, _) in (changes.put_routes.iter()).filter(|(.., a)| nexthops.clears(a))
            {
                (handle.route())
                    .add(route_message(*table, *dst, RouteAction::Prohibit, None))
                    .replace()
                    .execute()
                    .await
                    .map_err(self.netlink(format!("route replace {dst} prohibit table {table}")))?;
            }
            for id in &nexthops.clear_groups {
                self.delete_nexthop(*id).await?;
            }
        }
        if !nexthops.add_hops.is_empty() {
            let oif = oif.ok_or_else(|| NetnsError::NexthopInterface {
                pid: self.pid,
                mac: oif_mac.map(str::to_owned),
            })?;
            for (id, gateway) in &nexthops.add_hops {
                let hop = nexthop::member(*id, *gateway, oif);
                self.nexthop_request(format!("add {id:#x} via {gateway}"), move |socket| {
                    socket.put(&hop)
                })
                .await?;
            }
        }
        for (id, members) in &nexthops.put_groups {
            let group = nexthop::group(*id, members.clone());
            self.nexthop_request(format!("replace group {id:#x}"), move |socket| {
                socket.put(&group)
            })
            .await?;
        }
        let put = concurrently(changes.put_routes.iter(), |(table, dst, action)| {
            (handle.route())
                .add(route_message(*table, *dst, *action, oif))
                .replace()
                .execute()
        })
        .await;
        for ((table, dst, action), result) in put {
            result
                .map_err(self.netlink(format!("route replace {dst} {action:?} table {table}")))?;
        }
        for rule in &changes.add_rules {
            let mut request = handle.rule().add();
            *request.message_mut() = rule_message(rule);
            request
                .execute()
                .await
                .or_else(already_done(&[libc::EEXIST]))
                .map_err(self.netlink(format!("rule add {rule:?}")))?;
        }
        for rule in &changes.delete_rules {
            handle
                .rule()
                .del(rule_message(rule))
                .execute()
                .await
                .or_else(already_done(&[libc::ENOENT]))
                .map_err(self.netlink(format!("rule del {rule:?}")))?;
        }
        for stray in &changes.delete_strays {
            handle
                .rule()
                .del(stray.clone())
                .execute()
                .await
                .or_else(already_done(&[libc::ENOENT]))
                .map_err(self.netlink(format!("rule del (stray) {stray:?}")))?;
        }
        let deleted = concurrently(changes.delete_routes.iter(), |(table, dst)| {
            (handle.route())
                .del(route_delete_message(*table, *dst))
                .execute()
        })
        .await;
        for ((table, dst), result) in deleted {
            result
                .or_else(already_done(&[libc::ESRCH, libc::ENOENT]))
                .map_err(self.netlink(format!("route del {dst} table {table}")))?;
        }
        for id in nexthops.delete_groups.iter().chain(&nexthops.delete_hops) {
            self.delete_nexthop(*id).await?;
        }
        Ok(())
    }

    async fn delete_nexthop(&self, id: u32) -> Result<(), RoutesError> {
        self.nexthop_request(format!("delete {id:#x}"), move |socket| {
            match socket.delete(id) {
                // Gone already (a group emptied by a member's removal, say).
                Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
                done => done,
            }
        })
        .await
    }
}

fn rule_message(rule: &GroupRule) -> RuleMessage {
    let mut message = tagged_rule(
        rule.selector.ipv6,
        tier_priority(&rule.selector),
        RuleAction::ToTable,
    );
    message.attributes.push(RuleAttribute::Table(rule.table));
    match_selector(&mut message, &rule.selector);
    message
}

/// `None` for a rule that is not netwarp's; `Some(Err(()))` for one with
/// netwarp's tag and priority in a shape it does not write.
fn parse_owned_rule(rule: &RuleMessage) -> Option<Result<GroupRule, ()>> {
    let tagged = TaggedRule::parse(rule)?;
    let priority = tagged.priority?;
    if !NETWARP_RULE_PRIORITIES.contains(&priority) {
        return None;
    }
    let shape = (tagged.action == RuleAction::ToTable)
        .then_some(())
        .and(tagged.table.filter(|t| TARGET_TABLES.contains(t)))
        .filter(|_| tagged.source.is_none() && tagged.iif.is_none());
    Some(match (shape, tagged.group()) {
        // A rule at another class's priority (an earlier version put every
        // class at the first) is rewritten.
        (Some(table), Some(selector)) if tier_priority(&selector) == priority => {
            Ok(GroupRule { selector, table })
        }
        _ => Err(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_rules;

    fn entries(rules: &str, action: Action) -> Vec<Entry> {
        Entry::all(&parse_rules(rules).unwrap(), action)
    }

    fn via(ip: &str) -> Action {
        Action::Via(ip.parse().unwrap())
    }

    fn first() -> u32 {
        *TARGET_TABLES.start()
    }

    /// What `changes` leave installed, as the kernel would.
    fn applied(installed: &OwnedState, changes: &Changes) -> OwnedState {
        let mut state = installed.clone();
        for (table, dst, action) in &changes.put_routes {
            state.routes.insert((*table, *dst), *action);
        }
        state.rules.extend(&changes.add_rules);
        for rule in &changes.delete_rules {
            state.rules.remove(rule);
        }
        state.strays.clear();
        for key in &changes.delete_routes {
            state.routes.remove(key);
        }
        state
    }

    #[test]
    fn a_spread_target_s_routes_via_its_first_member_use_its_nexthop_group() {
        use crate::plan::SpreadMember;
        let member = |name: &str, v4: &str, v6: Option<&str>| SpreadMember {
            name: name.into(),
            pid: Some(1),
            mac: None,
            macs: Vec::new(),
            via_v4: Some(v4.parse().unwrap()),
            via_v6: v6.map(|v6| v6.parse().unwrap()),
        };
        let members = [
            member("warp-a", "172.20.0.2", Some("fd00::2")),
            member("warp-b", "172.20.0.5", None),
            member("warp-c", "172.20.0.6", None),
        ];
        let mut es = entries("203.0.113.0/24", via("172.20.0.2"));
        es.extend(entries("2001:db8::/32", via("fd00::2")));
        es.extend(entries("198.51.100.0/24", Action::Block));
        es.extend(entries("203.0.113.128/25", Action::Direct));
        let desired = spread_over(desired_state(&es), &members);
        // Families are classes of their own: every table's routes.
        let routes: BTreeMap<Cidr, RouteAction> =
            desired.groups.values().flat_map(|r| r.clone()).collect();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let cidr = |s: &str| -> Cidr { s.parse().unwrap() };
        assert_eq!(
            routes[&cidr("203.0.113.0/24")],
            RouteAction::Group(nexthop::GROUP_V4)
        );
        assert_eq!(
            desired.spread,
            [(
                false,
                vec![ip("172.20.0.2"), ip("172.20.0.5"), ip("172.20.0.6")]
            )]
            .into()
        );
        // The group's members and the group come before the routes.
        let changes = diff(&OwnedState::default(), &desired).unwrap();
        assert_eq!(changes.nexthops.add_hops.len(), 3);
        assert_eq!(changes.nexthops.put_groups.len(), 1);
        // Back to one member: plain routes, and the nexthops go.
        let mut installed = OwnedState::default();
        installed.nexthops.hops = (changes.nexthops.add_hops.iter().copied()).collect();
        installed.nexthops.groups = (changes.nexthops.put_groups.iter().cloned()).collect();
        // A group of another shape at netwarp's id goes first, and the
        // routes it takes with it are put again.
        let mut stray = applied(&OwnedState::default(), &changes);
        stray.nexthops.hops = installed.nexthops.hops.clone();
        stray.nexthops.strays.insert(nexthop::GROUP_V4);
        let repair = diff(&stray, &desired).unwrap();
        assert_eq!(repair.nexthops.clear_groups, vec![nexthop::GROUP_V4]);
        assert_eq!(repair.put_routes.len(), 1);
        assert!(repair.nexthops.clears(&repair.put_routes[0].2));
        let single = diff(&installed, &desired_state(&es)).unwrap();
        assert_eq!(single.nexthops.delete_groups, vec![nexthop::GROUP_V4]);
        assert_eq!(single.nexthops.delete_hops.len(), 3);
        // One member has IPv6: a plain route; drops and throws unchanged.
        assert_eq!(
            routes[&cidr("2001:db8::/32")],
            RouteAction::Via(ip("fd00::2"))
        );
        assert_eq!(routes[&cidr("198.51.100.0/24")], RouteAction::Prohibit);
        assert_eq!(routes[&cidr("203.0.113.128/25")], RouteAction::Throw);
        // One member (or none): the plan's routes as they are.
        assert_eq!(
            spread_over(desired_state(&es), &members[..1]),
            desired_state(&es)
        );
    }

    #[test]
    fn one_rule_per_selector_group_whatever_the_prefix_count() {
        let label: Vec<String> = (0..3000)
            .map(|i| format!("10.{}.{}.0/24", 200 + i / 256 % 2, i % 256))
            .chain(["tcp:443".into(), "udp:5000-5100".into()])
            .collect();
        let desired = desired_state(&entries(&label.join(","), via("172.20.0.2")));
        let changes = diff(&OwnedState::default(), &desired).unwrap();
        // 512 distinct /24s, each in both selector groups.
        assert_eq!(changes.add_rules.len(), 2);
        assert_eq!(changes.put_routes.len(), 2 * 512);
        let protos: Vec<Option<u8>> = (changes.add_rules.iter())
            .map(|r| r.selector.ip_proto)
            .collect();
        assert_eq!(protos, [Some(6), Some(17)]);
        let tables: BTreeSet<u32> = changes.add_rules.iter().map(|r| r.table).collect();
        assert_eq!(tables, [first(), first() + 1].into());
    }

    #[test]
    fn families_and_selectors_are_separate_classes_and_the_narrowest_wins() {
        let mut mixed = entries("203.0.113.0/24,2001:db8::/32", via("172.20.0.2"));
        mixed.extend(entries("203.0.113.0/24,tcp:443", Action::Block));
        let desired = desired_state(&mixed);
        assert_eq!(desired.groups.len(), 3);
        for (class, routes) in &desired.groups {
            let (dst, action) = routes.iter().next().unwrap();
            let want = match class.ports {
                Some(_) => RouteAction::Prohibit,
                None => RouteAction::Via("172.20.0.2".parse().unwrap()),
            };
            assert_eq!(*action, want, "{dst}{class}");
        }
    }

    /// What the kernel does with `desired` for one packet: the class rules
    /// in priority order, each a longest-prefix lookup in its table; a
    /// throw or no route goes on to the next rule. `None`: `main`.
    fn kernel(
        desired: &Desired,
        dst: std::net::IpAddr,
        proto: u8,
        port: u16,
    ) -> Option<RouteAction> {
        let mut classes: Vec<(&Selector, &BTreeMap<Cidr, RouteAction>)> =
            desired.groups.iter().collect();
        classes.sort_by_key(|(class, _)| tier_priority(class));
        for (class, routes) in classes {
            let takes = class.ipv6 == dst.is_ipv6()
                && class.ip_proto.is_none_or(|p| p == proto)
                && class.ports.is_none_or(|r| r.start <= port && port <= r.end);
            if !takes {
                continue;
            }
            let found = (routes.iter())
                .filter(|(prefix, _)| prefix.contains(dst))
                .max_by_key(|(prefix, _)| prefix.prefix_len());
            match found {
                Some((_, RouteAction::Throw)) | None => continue,
                Some((_, action)) => return Some(*action),
            }
        }
        None
    }

    #[test]
    fn the_tables_decide_every_packet_as_the_planner_does() {
        use crate::plan::{decide, samples};
        let packets = samples::packets(&[
            "10.1.2.3",
            "10.1.9.9",
            "10.2.0.1",
            "203.0.113.5",
            "198.51.100.1",
        ]);
        // IPv4 prefixes only: one family's classes are the other's too.
        for (round, plan) in samples::plans(500, 5).into_iter().enumerate() {
            let desired = desired_state(&plan);
            for &(dst, proto, port) in &packets {
                let dport = (proto == 6 || proto == 17).then_some(port);
                let want = match decide(&plan, dst, proto, dport) {
                    Some(Action::Via(ip)) => Some(RouteAction::Via(ip)),
                    Some(Action::Deny | Action::Block) => Some(RouteAction::Prohibit),
                    Some(Action::Direct) | None => None,
                };
                assert_eq!(
                    kernel(&desired, dst, proto, port),
                    want,
                    "round {round}: {dst} proto {proto} port {port} with {plan:?}"
                );
            }
        }
    }

    #[test]
    fn rules_survive_a_netlink_round_trip_and_other_shapes_are_strays() {
        let desired = desired_state(&entries(
            "203.0.113.0/24,2001:db8::/32,tcp:8000-8100,icmp",
            Action::Block,
        ));
        let changes = diff(&OwnedState::default(), &desired).unwrap();
        assert_eq!(changes.add_rules.len(), 4, "tcp and icmp, per family");
        for rule in &changes.add_rules {
            assert_eq!(parse_owned_rule(&rule_message(rule)), Some(Ok(*rule)));
        }
        let all = GroupRule {
            selector: Selector {
                ipv6: false,
                ip_proto: None,
                ports: None,
            },
            table: first(),
        };
        assert_eq!(parse_owned_rule(&rule_message(&all)), Some(Ok(all)));
        // An earlier version's per-prefix rule into its single table.
        let mut legacy = rule_message(&GroupRule {
            table: LEGACY_TARGET_TABLE,
            ..all
        });
        legacy.header.dst_len = 24;
        legacy
            .attributes
            .push(RuleAttribute::Destination("203.0.113.0".parse().unwrap()));
        assert_eq!(parse_owned_rule(&legacy), Some(Err(())));
        let mut foreign = rule_message(&all);
        foreign
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        assert_eq!(parse_owned_rule(&foreign), None);
    }

    #[test]
    fn diff_is_empty_when_converged_and_tables_are_readopted() {
        let desired = desired_state(&entries(
            "203.0.113.0/24,198.51.100.0/24,tcp:443,udp",
            via("172.20.0.2"),
        ));
        let installed = applied(
            &OwnedState::default(),
            &diff(&OwnedState::default(), &desired).unwrap(),
        );
        assert_eq!(installed.rules.len(), 2);
        assert_eq!(installed.routes.len(), 4);
        // A restarted daemon reads the same tables back.
        assert!(diff(&installed, &desired).unwrap().is_empty());
    }

    #[test]
    fn a_warp_going_down_replaces_routes_in_place() {
        let up = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let down = desired_state(&entries("203.0.113.0/24,tcp:443", Action::Block));
        let installed = applied(
            &OwnedState::default(),
            &diff(&OwnedState::default(), &up).unwrap(),
        );
        let changes = diff(&installed, &down).unwrap();
        assert_eq!(
            changes.put_routes,
            vec![(
                first(),
                "203.0.113.0/24".parse().unwrap(),
                RouteAction::Prohibit
            )]
        );
        assert!(
            changes.add_rules.is_empty()
                && changes.delete_rules.is_empty()
                && changes.delete_routes.is_empty()
        );
    }

    #[test]
    fn stale_entries_strays_and_legacy_routes_are_removed() {
        let old = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let mut installed = applied(
            &OwnedState::default(),
            &diff(&OwnedState::default(), &old).unwrap(),
        );
        let legacy_route = (LEGACY_TARGET_TABLE, "192.0.2.0/24".parse().unwrap());
        installed.routes.insert(legacy_route, RouteAction::Prohibit);
        installed.strays.push(RuleMessage::default());
        let new = desired_state(&entries("198.51.100.0/24", via("172.20.0.2")));
        let changes = diff(&installed, &new).unwrap();
        // The new group may not reuse the old group's table: its rule goes
        // only after the new one is in.
        let new_table = first() + 1;
        assert_eq!(
            changes.put_routes,
            vec![(
                new_table,
                "198.51.100.0/24".parse().unwrap(),
                RouteAction::Via("172.20.0.2".parse().unwrap())
            )]
        );
        assert_eq!(changes.add_rules.len(), 1);
        assert_eq!(changes.add_rules[0].table, new_table);
        assert_eq!(changes.delete_rules.len(), 1);
        assert_eq!(changes.delete_strays.len(), 1);
        assert_eq!(
            changes.delete_routes,
            vec![legacy_route, (first(), "203.0.113.0/24".parse().unwrap())]
        );
        let cleared = diff(&applied(&installed, &changes), &Desired::default()).unwrap();
        assert_eq!(cleared.delete_rules.len(), 1);
        assert_eq!(cleared.delete_routes.len(), 1);
        assert!(cleared.put_routes.is_empty() && cleared.add_rules.is_empty());
    }
}
