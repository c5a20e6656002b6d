//! The bridge guard plan: a backstop for the moments when a target runs
//! but netwarp has not programmed it yet.
//!
//! A (re)started container sends before any Docker event reaches netwarp,
//! through a namespace and a veth netwarp has never seen. Its routed
//! traffic enters the host through its network's bridge, so a guard there
//! drops routed traffic to any prefix a target on that network steers or
//! blocks, unless its source is a container netwarp knows is not a target.
//! Programmed targets never reach the guard: their steered and blocked
//! traffic is redirected or dropped on their own veth (eBPF) or leaves
//! through the warp at layer 2 (routes).
//!
//! The guard covers targets that are not running too (created, exited,
//! restarting), so it is already in place when they start.
//!
//! A warp is a second way out: a VPN client forwards what it receives,
//! into its tunnel while that is up and by its default route when it is
//! not, on any of its networks. So every network a warp is on also blocks
//! its targets' addresses as sources toward their prefixes (`forwarded`):
//! what the warp tunnels or NATs carries other addresses and passes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{
    Action, BlockReason, Entry, Index, PlanSettings, TargetPlan, TargetState, is_warp_by_name,
};
use crate::model::{Cidr, Container, Endpoint, NetworkMode, Rule, Verb, World};

/// The guard of one Docker network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GuardPlan {
    pub network: String,
    /// Docker's network id, when the snapshot has it (it names the bridge).
    pub network_id: Option<String>,
    /// Every prefix (with its selectors) that some target on the network
    /// steers or blocks, as [`Action::Block`], and the `direct` prefixes
    /// that every target on it leaves alone, as [`Action::Direct`] (they
    /// pass, apart from longer prefixes inside them); sorted, no
    /// duplicates.
    pub entries: Vec<Entry>,
    /// Addresses of the running containers on the network that are not
    /// targets: their routed traffic passes.
    pub allowed_sources: BTreeSet<IpAddr>,
    /// MACs of the warps on the network: what they forward passes.
    pub warp_macs: BTreeSet<String>,
    /// A target's address and one of its prefixes (as [`Action::Block`]),
    /// for each target whose warp is on this network, where `entries` does
    /// not already block that prefix: routed from that source, it is a
    /// forward the warp did not transform. Also its `direct` prefixes that
    /// it leaves alone (as [`Action::Direct`]): its own traffic there is
    /// routed from that source too. Same family only; sorted.
    pub forwarded: BTreeSet<(IpAddr, Entry)>,
}

/// One guard per network that carries a target (running or not) with
/// something to steer or block, or the target's warp; sorted by network
/// name.
pub fn plan_guards(world: &World, settings: &PlanSettings) -> Vec<GuardPlan> {
    let index = Index::new(world);
    let planned = super::plan_all(&index, settings, None);
    plan_guards_except(&index, settings, &planned, &BTreeMap::<String, ()>::new())
}

/// What each target container (running or not) adds to the guards of its
/// networks: the same entries it gets (or would get when it starts), from
/// the plans of every target container. A bypassed target adds nothing,
/// and neither does one blocked entirely (over the prefix limit): its
/// catch-all entries would block every other container of the network.
pub(super) fn contributions<'p, 'a>(
    planned: &'p [(&'a Container, Arc<TargetPlan>)],
) -> impl Iterator<Item = (&'a Container, &'p TargetPlan)> {
    planned.iter().filter_map(|(container, target)| {
        let everything = matches!(
            &target.state,
            TargetState::Blocked(BlockReason::TooManyPrefixes { .. })
        );
        (!target.entries.is_empty() && !everything).then_some((*container, &**target))
    })
}

/// Like [`plan_guards`], from the plans of every target container
/// (`planned`), without the contributions of the `excluded` containers
/// (refused for capacity: they are blocked on their own).
pub(super) fn plan_guards_except<'a, T>(
    index: &Index<'a>,
    settings: &PlanSettings,
    planned: &[(&'a Container, Arc<TargetPlan>)],
    excluded: &BTreeMap<String, T>,
) -> Vec<GuardPlan> {
    let world = index.world;
    let mut guards: ByNetwork<'a, GuardPlan> = ByNetwork::default();
    // What each network's guard blocks, as a set: thousands of targets
    // mostly repeat the same few rules, and a warp's forwards skip what
    // the guard blocks already (a label of thousands of prefixes must not
    // cost a scan of the guard per prefix).
    let mut blocked_by: ByNetwork<'a, BTreeSet<Entry>> = ByNetwork::default();
    let mut forwarded = Vec::new();
    let mut on_network: BTreeMap<&str, Vec<&TargetPlan>> = BTreeMap::new();
    for (container, target) in contributions(planned) {
        // A filtered container (lists, no warp) is held in its own
        // namespace: the guard, which cannot tell containers apart, would
        // hold its neighbours to its lists too.
        if excluded.contains_key(&container.id)
            || !container.labels.contains_key(&settings.target_label)
        {
            continue;
        }
        for (network, endpoint) in &container.networks {
            guard_of(&mut guards, network, endpoint);
            (blocked_by.entry(network.as_str()).or_default()).extend(
                (target.entries.iter())
                    .filter(|entry| entry.action != Action::Direct)
                    .map(|entry| Entry {
                        rule: entry.rule,
                        action: Action::Block,
                    }),
            );
            on_network.entry(network.as_str()).or_default().push(target);
        }
        forwarded.push((container, target));
    }
    // A target's `direct` prefixes pass the guard only where every target
    // on the network leaves them alone: the guard cannot tell targets
    // apart, and it must stay closed for what any of them steers.
    for (network, targets) in on_network {
        let candidates: BTreeSet<Cidr> =
            (targets.iter()).flat_map(|t| direct_prefixes(t)).collect();
        if candidates.is_empty() {
            continue;
        }
        let policies: Vec<PolicyIndex> = targets.iter().map(|t| PolicyIndex::new(t)).collect();
        let blocked = blocked_by.entry(network).or_default();
        blocked.extend(
            (candidates.into_iter())
                .filter(|x| policies.iter().all(|p| p.leaves_alone(x)))
                .map(direct_entry),
        );
    }
    // Thousands of targets share a few warps: each is looked up once.
    let mut warps: HashMap<&str, Option<&'a Container>, foldhash::fast::RandomState> =
        HashMap::default();
    for (container, target) in forwarded {
        // Indexed only for a target with `direct` prefixes to carve.
        let carved: Vec<Entry> = match direct_prefixes(target).next() {
            None => Vec::new(),
            Some(_) => {
                let own = PolicyIndex::new(target);
                (direct_prefixes(target))
                    .filter(|x| own.leaves_alone(x))
                    .map(direct_entry)
                    .collect()
            }
        };
        // Every warp carrying it: a spread group's members all forward.
        let carriers: Vec<&str> = match target.spread.as_slice() {
            [] => vec![target.warp.as_str()],
            members => members.iter().map(|m| m.name.as_str()).collect(),
        };
        // A warp without a namespace of its own is refused: its targets
        // never reach it, and its "networks" have no bridge to guard.
        let carrying: Vec<&Container> = (carriers.into_iter())
            .filter_map(|name| {
                *warps.entry(name).or_insert_with(|| {
                    index.warp(name).filter(|c| {
                        c.network_mode == NetworkMode::Own
                            && is_warp_by_name(&settings.warp_name_pattern, c)
                    })
                })
            })
            .collect();
        for (network, endpoint) in carrying.into_iter().flat_map(|warp| warp.networks.iter()) {
            // On the target's own network, its guard blocks every one of
            // its entries already (added above): no lookup per prefix.
            let own_network = container.networks.contains_key(network);
            let already = blocked_by.get(network.as_str());
            let guard = guard_of(&mut guards, network, endpoint);
            for entry in &carved {
                let family = entry.rule.destination.is_ipv6();
                guard.forwarded.extend(
                    (target.addresses.iter())
                        .filter(|a| a.is_ipv6() == family)
                        .map(|a| (*a, *entry)),
                );
            }
            if own_network {
                continue;
            }
            for entry in target.entries.iter().filter(|e| e.action != Action::Direct) {
                let blocked = Entry {
                    rule: entry.rule,
                    action: Action::Block,
                };
                if already.is_some_and(|set| set.contains(&blocked)) {
                    continue;
                }
                let family = entry.rule.destination.is_ipv6();
                guard.forwarded.extend(
                    (target.addresses.iter())
                        .filter(|a| a.is_ipv6() == family)
                        .map(|a| (*a, blocked)),
                );
            }
        }
    }
    for container in world.containers.iter().filter(|c| c.running) {
        if container.labels.contains_key(&settings.target_label) {
            continue;
        }
        let is_warp = is_warp_by_name(&settings.warp_name_pattern, container);
        for (network, endpoint) in &container.networks {
            let Some(guard) = guards.get_mut(network.as_str()) else {
                continue;
            };
            let addresses = [endpoint.ipv4.map(IpAddr::V4), endpoint.ipv6.map(IpAddr::V6)];
            guard
                .allowed_sources
                .extend(addresses.into_iter().flatten());
            if is_warp && let Some(mac) = &endpoint.mac {
                guard.warp_macs.insert(mac.clone());
            }
        }
    }
    let mut guards: Vec<GuardPlan> = (guards.into_values())
        .map(|mut guard| {
            // Sorted, without duplicates.
            guard.entries = (blocked_by.remove(guard.network.as_str()))
                .map(|blocked| blocked.into_iter().collect())
                .unwrap_or_default();
            guard
        })
        .collect();
    guards.sort_unstable_by(|a, b| a.network.cmp(&b.network));
    guards
}

/// Per network name, with a fast hash: every target looks up each of its
/// networks.
type ByNetwork<'a, V> = HashMap<&'a str, V, foldhash::fast::RandomState>;

fn direct_prefixes(target: &TargetPlan) -> impl Iterator<Item = Cidr> + '_ {
    (target.entries.iter())
        .filter(|e| e.action == Action::Direct)
        .map(|e| e.rule.destination)
}

fn direct_entry(destination: Cidr) -> Entry {
    Entry {
        rule: Rule {
            destination,
            protocol: None,
            ports: None,
            verb: Verb::Direct,
        },
        action: Action::Direct,
    }
}

/// One target's entries by prefix, to ask what it does within a prefix.
struct PolicyIndex<'p> {
    by_prefix: HashMap<Cidr, Vec<&'p Entry>>,
    lengths: [BTreeSet<u8>; 2],
}

impl<'p> PolicyIndex<'p> {
    fn new(target: &'p TargetPlan) -> Self {
        let mut index = Self {
            by_prefix: HashMap::new(),
            lengths: Default::default(),
        };
        for entry in &target.entries {
            let d = entry.rule.destination;
            index.by_prefix.entry(d).or_default().push(entry);
            index.lengths[usize::from(d.is_ipv6())].insert(d.prefix_len());
        }
        index
    }

    /// Whether the target leaves every packet to `x` alone, apart from
    /// prefixes inside `x` (which the guard holds as entries of their
    /// own): each entry covering `x` that steers or drops is shadowed by
    /// a longer `direct` entry that covers `x` too. Entries are normalized
    /// ([`super::prune_direct`]), so a tie on one prefix is never a
    /// `direct` and a `via` of every protocol.
    fn leaves_alone(&self, x: &Cidr) -> bool {
        let mut longest_direct: Option<u8> = None;
        let mut longest_taken: Option<u8> = None;
        for &len in self.lengths[usize::from(x.is_ipv6())].iter() {
            if len > x.prefix_len() {
                break;
            }
            for entry in self.by_prefix.get(&x.truncated(len)).into_iter().flatten() {
                if entry.action == Action::Direct {
                    longest_direct = Some(len);
                } else {
                    longest_taken = Some(len);
                }
            }
        }
        match (longest_taken, longest_direct) {
            (None, _) => true,
            (Some(taken), Some(direct)) => direct > taken,
            (Some(_), None) => false,
        }
    }
}

/// The guard of `network` (created on first use), with its network id
/// from the first endpoint that has one.
fn guard_of<'g, 'a>(
    guards: &'g mut ByNetwork<'a, GuardPlan>,
    network: &'a str,
    endpoint: &Endpoint,
) -> &'g mut GuardPlan {
    let guard = guards.entry(network).or_insert_with(|| GuardPlan {
        network: network.to_owned(),
        ..GuardPlan::default()
    });
    if guard.network_id.is_none() {
        guard.network_id.clone_from(&endpoint.network_id);
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Container, Endpoint},
        plan::{OnWarpDown, tests::settings},
    };

    fn endpoint(v4: &str, mac: &str) -> Endpoint {
        Endpoint {
            ipv4: Some(v4.parse().unwrap()),
            mac: Some(mac.into()),
            network_id: Some("net-id".into()),
            ..Endpoint::default()
        }
    }

    fn container(name: &str, labels: &[(&str, &str)], running: bool, ip: &str) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            running,
            pid: running.then_some(100),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: [("net".to_string(), endpoint(ip, &format!("mac-{name}")))].into(),
            ..Container::default()
        }
    }

    fn world() -> World {
        World {
            containers: vec![
                container("warp-a", &[], true, "172.20.0.2"),
                container("app", &[("netwarp.target", "warp-a")], true, "172.20.0.3"),
                container("web", &[], true, "172.20.0.4"),
            ],
        }
    }

    fn blocked(rules: &str) -> Vec<Entry> {
        Entry::all(&crate::model::parse_rules(rules).unwrap(), Action::Block)
    }

    #[test]
    fn a_network_with_a_target_is_guarded_for_its_prefixes() {
        let guards = plan_guards(&world(), &settings("203.0.113.0/24,tcp:443"));
        assert_eq!(
            guards,
            vec![GuardPlan {
                network: "net".into(),
                network_id: Some("net-id".into()),
                entries: blocked("203.0.113.0/24,tcp:443"),
                allowed_sources: ["172.20.0.2".parse().unwrap(), "172.20.0.4".parse().unwrap()]
                    .into(),
                warp_macs: ["mac-warp-a".to_string()].into(),
                forwarded: BTreeSet::new(),
            }]
        );
    }

    fn shown(entries: &[Entry]) -> Vec<String> {
        (entries.iter())
            .map(|e| format!("{} {}", e.rule, e.action))
            .collect()
    }

    #[test]
    fn a_direct_prefix_passes_the_guard_only_where_every_target_leaves_it_alone() {
        let mut world = world();
        let labels = [
            ("netwarp.target", "warp-a"),
            ("netwarp.rules", "0.0.0.0/0; direct 198.51.100.0/24"),
        ];
        world.containers[1] = container("app", &labels, true, "172.20.0.3");
        let settings = settings("203.0.113.0/24");
        let guards = plan_guards(&world, &settings);
        assert_eq!(
            shown(&guards[0].entries),
            ["0.0.0.0/0 block", "direct 198.51.100.0/24 direct"]
        );
        // Its own forwards through the warp's network: the same carve-out.
        let forwarded: Vec<String> = (guards[0].forwarded.iter())
            .map(|(source, e)| format!("{source} {} {}", e.rule, e.action))
            .collect();
        assert_eq!(
            forwarded,
            ["172.20.0.3 direct 198.51.100.0/24 direct"],
            "0.0.0.0/0 is blocked for every source already"
        );

        // A neighbour steers all of it: no carve-out (the guard cannot
        // tell the two apart).
        let labels = [
            ("netwarp.target", "warp-a"),
            ("netwarp.rules", "198.51.0.0/16"),
        ];
        world
            .containers
            .push(container("other", &labels, true, "172.20.0.5"));
        let guards = plan_guards(&world, &settings);
        assert_eq!(
            shown(&guards[0].entries),
            ["0.0.0.0/0 block", "198.51.0.0/16 block"]
        );
        // Part of it: carved, and that part blocked by its longer prefix.
        let labels = [
            ("netwarp.target", "warp-a"),
            ("netwarp.rules", "198.51.100.0/25"),
        ];
        *world.containers.last_mut().unwrap() = container("other", &labels, true, "172.20.0.5");
        let guards = plan_guards(&world, &settings);
        assert_eq!(
            shown(&guards[0].entries),
            [
                "0.0.0.0/0 block",
                "direct 198.51.100.0/24 direct",
                "198.51.100.0/25 block"
            ]
        );
        // A neighbour steering elsewhere leaves it alone: carved again.
        let labels = [
            ("netwarp.target", "warp-a"),
            ("netwarp.rules", "203.0.113.0/24"),
        ];
        *world.containers.last_mut().unwrap() = container("other", &labels, true, "172.20.0.5");
        let guards = plan_guards(&world, &settings);
        assert_eq!(
            shown(&guards[0].entries),
            [
                "0.0.0.0/0 block",
                "direct 198.51.100.0/24 direct",
                "203.0.113.0/24 block"
            ]
        );
    }

    #[test]
    fn a_stopped_target_keeps_its_network_guarded_and_its_address_is_not_allowed() {
        let mut world = world();
        world.containers[1].running = false;
        world.containers[1].networks.get_mut("net").unwrap().ipv4 = None;
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        assert_eq!(guards.len(), 1);
        assert_eq!(guards[0].entries, blocked("203.0.113.0/24"));
        assert!(
            !guards[0]
                .allowed_sources
                .contains(&"172.20.0.3".parse().unwrap())
        );
    }

    #[test]
    fn targets_own_rules_are_unioned_and_a_malformed_label_guards_the_global_rules() {
        let mut world = world();
        world.containers.push(container(
            "db",
            &[
                ("netwarp.target", "warp-a"),
                ("netwarp.rules", "198.51.100.0/24"),
            ],
            true,
            "172.20.0.5",
        ));
        world.containers.push(container(
            "bad",
            &[("netwarp.target", "warp-a"), ("netwarp.rules", "nonsense")],
            false,
            "172.20.0.6",
        ));
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        assert_eq!(guards[0].entries, blocked("198.51.100.0/24,203.0.113.0/24"));
    }

    #[test]
    fn a_guard_blocks_even_while_the_warp_is_down_but_not_when_bypassing() {
        let mut world = world();
        world.containers[0].running = false;
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        assert_eq!(guards[0].entries, blocked("203.0.113.0/24"));
        let mut bypass = settings("203.0.113.0/24");
        bypass.on_warp_down = OnWarpDown::Bypass;
        assert_eq!(plan_guards(&world, &bypass), vec![]);
    }

    /// The usual VPN layout: targets on an internal network, the warp on
    /// it and on an ordinary one for its tunnel.
    fn two_network_world() -> World {
        let mut world = world();
        let warp = &mut world.containers[0];
        let mut outer = endpoint("172.30.0.2", "mac-warp-a-outer");
        outer.network_id = Some("outer-id".into());
        outer.ipv6 = Some("fd00:30::2".parse().unwrap());
        warp.networks.insert("outer".into(), outer);
        warp.labels.insert("netwarp.network".into(), "net".into());
        world.containers[1].networks.get_mut("net").unwrap().ipv6 =
            Some("fd00:20::3".parse().unwrap());
        world
    }

    #[test]
    fn every_network_of_a_warp_blocks_its_targets_addresses_toward_their_prefixes() {
        let guards = plan_guards(
            &two_network_world(),
            &settings("203.0.113.0/24,2001:db8::/32"),
        );
        let outer = guards.iter().find(|g| g.network == "outer").unwrap();
        assert_eq!(outer.network_id.as_deref(), Some("outer-id"));
        assert!(outer.entries.is_empty(), "{outer:?}");
        let v4 = blocked("203.0.113.0/24")[0];
        let v6 = blocked("2001:db8::/32")[0];
        assert_eq!(
            outer.forwarded,
            [
                ("172.20.0.3".parse().unwrap(), v4),
                ("fd00:20::3".parse().unwrap(), v6),
            ]
            .into(),
            "a source is paired only with prefixes of its own family"
        );
        // The targets' own network already blocks the prefixes from any
        // source it does not know, the target's address included.
        let inner = guards.iter().find(|g| g.network == "net").unwrap();
        assert!(inner.forwarded.is_empty(), "{inner:?}");
        assert!(
            !inner
                .allowed_sources
                .contains(&"172.20.0.3".parse().unwrap())
        );
    }

    #[test]
    fn every_network_of_every_spread_member_blocks_its_targets_forwards() {
        // warp-b, the second member, has a network of its own besides
        // the target's: its untunnelled forwards leave by it too.
        let mut world = world();
        let mut b = container("warp-b", &[], true, "172.20.0.5");
        let mut far = endpoint("172.31.0.5", "mac-warp-b-far");
        far.network_id = Some("far-id".into());
        b.networks.insert("far".into(), far);
        b.labels.insert("netwarp.network".into(), "net".into());
        world.containers.push(b);
        world.containers[1]
            .labels
            .insert("netwarp.target".into(), "spread:warp-a,warp-b".into());
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        let far = guards
            .iter()
            .find(|g| g.network == "far")
            .expect("far guarded");
        let v4 = blocked("203.0.113.0/24")[0];
        assert_eq!(far.forwarded, [("172.20.0.3".parse().unwrap(), v4)].into());
    }

    #[test]
    fn a_bypassed_target_or_a_missing_warp_adds_no_forward_blocks() {
        let mut bypass = settings("203.0.113.0/24");
        bypass.on_warp_down = OnWarpDown::Bypass;
        let mut world = two_network_world();
        world.containers[0].running = false;
        assert_eq!(plan_guards(&world, &bypass), vec![]);
        world.containers.remove(0);
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        assert_eq!(guards.len(), 1, "{guards:?}");
        assert!(guards[0].forwarded.is_empty());
    }

    #[test]
    fn networks_without_targets_get_no_guard() {
        let mut world = world();
        world.containers.remove(1);
        assert_eq!(plan_guards(&world, &settings("203.0.113.0/24")), vec![]);
    }
}
