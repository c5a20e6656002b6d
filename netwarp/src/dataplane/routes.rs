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

use std::collections::{BTreeMap, BTreeSet};

use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

pub use super::{
    mac::parse_mac,
    policy_rule::{NETWARP_PROTOCOL, OwnedRule, Selector},
    tables::{LEGACY_TARGET_TABLE, RouteAction, TARGET_TABLES, TablesExhausted},
};
use super::{
    netns::{NamespaceHandle, NetnsError, already_done},
    policy_rule::{TaggedRule, dump_rules, match_selector, tagged_rule},
    tables::{allocate, concurrently, dump_owned_routes, route_delete_message, route_message},
};
use crate::{
    model::Cidr,
    plan::{Action, Entry},
};

/// The priority of netwarp's policy rules: before `main` (32766).
pub const NETWARP_RULE_PRIORITY: u32 = 10_000;

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
}

/// What a target's plan entries need: each selector group's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub groups: BTreeMap<Selector, BTreeMap<Cidr, RouteAction>>,
}

/// Groups a target's entries by selector. A destination gets one action
/// in every group it is in: blocking wins if two entries ever disagree.
pub fn desired_state(entries: &[Entry]) -> Desired {
    let mut actions: BTreeMap<Cidr, RouteAction> = BTreeMap::new();
    for entry in entries {
        let action = match entry.action {
            Action::Via(ip) => RouteAction::Via(ip),
            Action::Block => RouteAction::Prohibit,
        };
        actions
            .entry(entry.rule.destination)
            .and_modify(|a| *a = (*a).max(action))
            .or_insert(action);
    }
    let mut desired = Desired::default();
    for entry in entries {
        let destination = entry.rule.destination;
        desired
            .groups
            .entry(Selector::of(&OwnedRule::from_rule(&entry.rule)))
            .or_default()
            .insert(destination, actions[&destination]);
    }
    desired
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
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put_routes.is_empty()
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
    Ok(Changes {
        put_routes: (routes.iter())
            .filter(|(key, action)| installed.routes.get(key) != Some(action))
            .map(|((table, dst), a)| (*table, *dst, *a))
            .collect(),
        add_rules: rules.difference(&installed.rules).copied().collect(),
        delete_rules: installed.rules.difference(&rules).copied().collect(),
        delete_strays: installed.strays.clone(),
        delete_routes: (installed.routes.keys())
            .filter(|key| !routes.contains_key(key))
            .copied()
            .collect(),
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
        let mut state = OwnedState {
            routes,
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

    /// Applies `changes`: routes before the rules that use them, and rules
    /// removed before their routes, so no packet sees a rule without a route.
    pub async fn apply(&self, changes: &Changes, oif_mac: Option<&str>) -> Result<(), RoutesError> {
        let handle = self.writable()?;
        let oif = match oif_mac {
            Some(mac) => self.ifindex_by_mac(mac).await?,
            None => None,
        };
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
        Ok(())
    }
}

fn rule_message(rule: &GroupRule) -> RuleMessage {
    let mut message = tagged_rule(
        rule.selector.ipv6,
        NETWARP_RULE_PRIORITY,
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
    if tagged.priority != Some(NETWARP_RULE_PRIORITY) {
        return None;
    }
    let shape = (tagged.action == RuleAction::ToTable)
        .then_some(())
        .and(tagged.table.filter(|t| TARGET_TABLES.contains(t)))
        .filter(|_| tagged.source.is_none() && tagged.iif.is_none());
    Some(match (shape, tagged.group()) {
        (Some(table), Some(selector)) => Ok(GroupRule { selector, table }),
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
    fn families_and_selectors_are_separate_groups_and_blocking_wins() {
        let mut mixed = entries("203.0.113.0/24,2001:db8::/32", via("172.20.0.2"));
        mixed.extend(entries("203.0.113.0/24,tcp:443", Action::Block));
        let desired = desired_state(&mixed);
        assert_eq!(desired.groups.len(), 3);
        for routes in desired.groups.values() {
            let (dst, action) = routes.iter().next().unwrap();
            if !dst.is_ipv6() {
                assert_eq!(*action, RouteAction::Prohibit, "{dst}");
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
