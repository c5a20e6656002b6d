//! The `routes` dataplane: policy rules and a netwarp-owned routing table
//! inside each target's network namespace, through rtnetlink.
//!
//! Ownership is explicit: every route sits in [`NETWARP_TABLE`] with route
//! protocol [`NETWARP_PROTOCOL`]; every rule has priority
//! [`NETWARP_RULE_PRIORITY`] and the same protocol. netwarp lists and removes
//! exactly those, and nothing else.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

pub use super::{
    mac::parse_mac,
    policy_rule::{NETWARP_PROTOCOL, OwnedRule},
};
use super::{
    netns::{NamespaceHandle, NetnsError, already_done},
    policy_rule::{TaggedRule, dump_rules, match_selector, tagged_rule},
};
use crate::{
    model::Cidr,
    plan::{Action, Entry},
};

/// netwarp's routing table in each target's namespace.
pub const NETWARP_TABLE: u32 = 0x4e57;
/// The priority of netwarp's policy rules: before `main` (32766).
pub const NETWARP_RULE_PRIORITY: u32 = 10_000;

/// Errors of the routes dataplane: those of the namespace work it does.
pub type RoutesError = NetnsError;

/// What a route in netwarp's table does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteAction {
    Via(IpAddr),
    /// A prohibit route: senders get EACCES at once, nothing leaves.
    Prohibit,
}

/// Everything netwarp owns in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedState {
    pub routes: BTreeMap<Cidr, RouteAction>,
    pub rules: BTreeSet<OwnedRule>,
}

/// The kernel state that enforces a target's plan entries.
pub fn desired_state(entries: &[Entry]) -> OwnedState {
    let mut state = OwnedState::default();
    for entry in entries {
        let rule = entry.rule;
        let action = match entry.action {
            Action::Via(ip) => RouteAction::Via(ip),
            Action::Block => RouteAction::Prohibit,
        };
        // Blocking wins if two rules to one destination ever disagree.
        state
            .routes
            .entry(rule.destination)
            .and_modify(|a| *a = (*a).max(action))
            .or_insert(action);
        state.rules.insert(OwnedRule::from_rule(&rule));
    }
    state
}

/// The changes that turn `installed` into `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes to add or replace in place (never delete-then-add, which
    /// would open a window for a leak).
    pub put_routes: Vec<(Cidr, RouteAction)>,
    pub add_rules: Vec<OwnedRule>,
    pub delete_rules: Vec<OwnedRule>,
    pub delete_routes: Vec<Cidr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put_routes.is_empty()
            && self.add_rules.is_empty()
            && self.delete_rules.is_empty()
            && self.delete_routes.is_empty()
    }
}

pub fn diff(installed: &OwnedState, desired: &OwnedState) -> Changes {
    Changes {
        put_routes: desired
            .routes
            .iter()
            .filter(|(dst, action)| installed.routes.get(dst) != Some(action))
            .map(|(d, a)| (*d, *a))
            .collect(),
        add_rules: desired
            .rules
            .difference(&installed.rules)
            .copied()
            .collect(),
        delete_rules: installed
            .rules
            .difference(&desired.rules)
            .copied()
            .collect(),
        delete_routes: installed
            .routes
            .keys()
            .filter(|d| !desired.routes.contains_key(d))
            .copied()
            .collect(),
    }
}

impl NamespaceHandle {
    /// Reads netwarp's own routes and rules, and nothing else.
    pub async fn installed(&self) -> Result<OwnedState, RoutesError> {
        let mut state = OwnedState::default();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(self.netlink("route dump"))?;
            for route in routes {
                if let Some((dst, action)) = parse_owned_route(&route) {
                    state.routes.insert(dst, action);
                }
            }
        }
        let rules = dump_rules(&self.handle)
            .await
            .map_err(self.netlink("rule dump"))?;
        state
            .rules
            .extend(rules.iter().filter_map(parse_owned_rule));
        Ok(state)
    }

    /// Applies `changes`: routes before the rules that use them, and rules
    /// removed before their routes, so no packet sees a rule without a route.
    pub async fn apply(&self, changes: &Changes, oif_mac: Option<&str>) -> Result<(), RoutesError> {
        let handle = self.writable()?;
        let oif = match oif_mac {
            Some(mac) => self.ifindex_by_mac(mac).await?,
            None => None,
        };
        for (dst, action) in &changes.put_routes {
            let message = route_message(*dst, *action, oif);
            handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(self.netlink(format!("route replace {dst} {action:?}")))?;
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
        for dst in &changes.delete_routes {
            let message = route_message(*dst, RouteAction::Prohibit, None);
            let mut message = message;
            // Delete by table, destination and protocol, whatever the type.
            message.header.kind = RouteType::Unspec;
            handle
                .route()
                .del(message)
                .execute()
                .await
                .or_else(already_done(&[libc::ESRCH, libc::ENOENT]))
                .map_err(self.netlink(format!("route del {dst}")))?;
        }
        Ok(())
    }
}

fn route_message(dst: Cidr, action: RouteAction, oif: Option<u32>) -> RouteMessage {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .expect("a Cidr is always a valid prefix")
        .table_id(NETWARP_TABLE)
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
        RouteAction::Prohibit => builder.kind(RouteType::Prohibit),
    };
    builder.build()
}

fn parse_owned_route(route: &RouteMessage) -> Option<(Cidr, RouteAction)> {
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
    if table != NETWARP_TABLE {
        return None;
    }
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
        _ => RouteAction::Via(route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => addr(g),
            _ => None,
        })?),
    };
    Some((dst, action))
}

fn rule_message(rule: &OwnedRule) -> RuleMessage {
    let mut message = tagged_rule(
        rule.destination.is_ipv6(),
        NETWARP_RULE_PRIORITY,
        RuleAction::ToTable,
    );
    message.attributes.push(RuleAttribute::Table(NETWARP_TABLE));
    match_selector(&mut message, rule);
    message
}

fn parse_owned_rule(rule: &RuleMessage) -> Option<OwnedRule> {
    let tagged = TaggedRule::parse(rule)?;
    let owned =
        tagged.priority == Some(NETWARP_RULE_PRIORITY) && tagged.table == Some(NETWARP_TABLE);
    owned.then_some(tagged.selector)
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

    #[test]
    fn one_route_per_destination_and_one_rule_per_selector() {
        let state = desired_state(&entries(
            "203.0.113.0/24,tcp:443,udp:5000-5100",
            via("172.20.0.2"),
        ));
        assert_eq!(state.routes.len(), 1);
        assert_eq!(state.rules.len(), 2);
        let protos: Vec<Option<u8>> = state.rules.iter().map(|r| r.ip_proto).collect();
        assert_eq!(protos, [Some(6), Some(17)]);
    }

    #[test]
    fn rules_and_routes_survive_a_netlink_round_trip() {
        let state = desired_state(&entries(
            "203.0.113.0/24,2001:db8::/32,tcp:8000-8100",
            Action::Block,
        ));
        for rule in &state.rules {
            assert_eq!(parse_owned_rule(&rule_message(rule)), Some(*rule));
        }
        for (dst, action) in &state.routes {
            let mut message = route_message(*dst, *action, Some(3));
            message
                .attributes
                .push(RouteAttribute::Table(NETWARP_TABLE));
            assert_eq!(parse_owned_route(&message), Some((*dst, *action)));
        }
        let default = desired_state(&entries("0.0.0.0/0", via("172.20.0.2")));
        let rule = default.rules.first().unwrap();
        assert_eq!(parse_owned_rule(&rule_message(rule)), Some(*rule));
    }

    #[test]
    fn foreign_entries_are_never_ours() {
        let mut rule = rule_message(&OwnedRule {
            destination: "192.0.2.0/24".parse().unwrap(),
            ip_proto: None,
            ports: None,
        });
        rule.attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        rule.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Boot));
        assert_eq!(parse_owned_rule(&rule), None);
        let mut route = route_message("192.0.2.0/24".parse().unwrap(), RouteAction::Prohibit, None);
        route.header.protocol = RouteProtocol::Static;
        assert_eq!(parse_owned_route(&route), None);
    }

    #[test]
    fn diff_is_empty_when_converged() {
        let state = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        assert!(diff(&state, &state).is_empty());
    }

    #[test]
    fn a_warp_going_down_replaces_routes_in_place() {
        let up = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let down = desired_state(&entries("203.0.113.0/24,tcp:443", Action::Block));
        let changes = diff(&up, &down);
        assert_eq!(
            changes.put_routes,
            vec![("203.0.113.0/24".parse().unwrap(), RouteAction::Prohibit)]
        );
        assert!(
            changes.add_rules.is_empty()
                && changes.delete_rules.is_empty()
                && changes.delete_routes.is_empty()
        );
    }

    #[test]
    fn stale_entries_are_removed() {
        let old = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let new = desired_state(&entries("198.51.100.0/24", via("172.20.0.2")));
        let changes = diff(&old, &new);
        assert_eq!(
            changes.delete_routes,
            vec!["203.0.113.0/24".parse().unwrap()]
        );
        assert_eq!(changes.delete_rules.len(), 1);
        assert_eq!(changes.add_rules.len(), 1);
        assert_eq!(changes.put_routes.len(), 1);
        let cleared = diff(&new, &OwnedState::default());
        assert_eq!(cleared.delete_rules.len(), 1);
        assert_eq!(cleared.delete_routes.len(), 1);
    }
}
