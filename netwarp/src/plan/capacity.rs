//! Admission to the eBPF rule tries, so that no target can take from the
//! others the room their rules need.
//!
//! Every rule set (a target's policy, a bridge guard) lives in one LPM trie
//! per address family, with one row per distinct destination prefix. The
//! guard of a network holds the union of its targets' prefixes, and a set
//! is switched as a double buffer (the new copy goes in before the old one
//! leaves), so a switch briefly needs the set twice.
//!
//! The planner admits targets against the tries' capacity before anything
//! is written: a target refused here is blocked on its own (one catch-all
//! row per family, reserved before any target is admitted), and adds
//! nothing to the guards, so it cannot crowd out its neighbours, the
//! guards, or the headroom the switches need.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use super::{Action, BlockReason, Entry, PlanSettings, TargetPlan, TargetState, guard};
use crate::model::{Cidr, Container, Rule};

/// The configuration key of the tries' capacity.
pub const RULES_CAPACITY_KEY: &str = "dataplane.ebpf_rules_capacity";
/// The configuration key of the per-target prefix limit.
pub const MAX_PREFIXES_KEY: &str = "limits.max_prefixes_per_target";

/// The rule tries' names, as the dataplane and metrics call them.
const RULES_V4_MAP: &str = netwarp_common::RULES_V4_MAP;
const RULES_V6_MAP: &str = netwarp_common::RULES_V6_MAP;

/// Entries of the IPv4 and the IPv6 rule trie: their capacity, or rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCapacity {
    pub v4: usize,
    pub v6: usize,
}

type Rows = RuleCapacity;

type CidrSet = HashSet<Cidr, foldhash::fast::RandomState>;

impl Rows {
    fn of<'a>(destinations: impl IntoIterator<Item = &'a Cidr>) -> Self {
        let mut rows = Self::default();
        for destination in destinations {
            if destination.is_ipv6() {
                rows.v6 += 1;
            } else {
                rows.v4 += 1;
            }
        }
        rows
    }

    fn plus(self, other: Self) -> Self {
        Self {
            v4: self.v4 + other.v4,
            v6: self.v6 + other.v6,
        }
    }

    fn minus(self, other: Self) -> Self {
        Self {
            v4: self.v4.saturating_sub(other.v4),
            v6: self.v6.saturating_sub(other.v6),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            v4: self.v4.max(other.v4),
            v6: self.v6.max(other.v6),
        }
    }

    fn total(self) -> usize {
        self.v4 + self.v6
    }
}

/// How many distinct destination prefixes `rules` list: the rows they
/// take (selectors of one prefix share its row).
pub fn distinct_destinations(rules: &[Rule]) -> usize {
    if rules.is_sorted() {
        // As parsed: a prefix's rules are adjacent, so count the changes.
        let mut destinations: Vec<Cidr> = rules.iter().map(|r| r.destination).collect();
        destinations.dedup();
        return destinations.len();
    }
    (rules.iter().map(|r| r.destination))
        .collect::<BTreeSet<_>>()
        .len()
}

/// `plan` blocked entirely for `reason`: its rules cannot be honoured, so
/// none of its traffic may leave. One catch-all entry per family (a
/// prohibit default route in its namespace, one row per trie in eBPF).
pub fn block_everything(mut plan: TargetPlan, reason: BlockReason) -> TargetPlan {
    let everything = |addr: IpAddr| Entry {
        rule: Rule {
            destination: Cidr::new(addr, 0).expect("a /0 prefix is valid"),
            protocol: None,
            ports: None,
            verb: crate::model::Verb::Via,
        },
        action: Action::Block,
    };
    plan.entries = vec![
        everything(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        everything(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ];
    plan.entries.sort();
    // Nothing is redirected, so no warp interface is involved.
    plan.warp_pid = None;
    plan.warp_mac = None;
    plan.warp_macs.clear();
    plan.state = TargetState::Blocked(reason);
    plan
}

/// One target container (running or not) asking for room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// The rows of its own rule set (none when its namespace is not
    /// programmed: not running, or another target's).
    pub own: Rows,
    /// Candidates with the same `rule_set` compile to the same rows and
    /// share one set in the tries (see the eBPF dataplane's rule sets):
    /// only the first admitted pays for `own`. None: a set of its own.
    pub rule_set: Option<usize>,
    /// The rows it takes when refused: its catch-all block.
    pub fallback: Rows,
    /// The prefixes it adds to the guard of each of its networks, sorted,
    /// without duplicates.
    pub guards: BTreeMap<String, Vec<Cidr>>,
}

/// Why a candidate did not fit: the trie, what it needed there, and what
/// was already in use or reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub map: &'static str,
    pub needed: usize,
    pub used: usize,
    pub capacity: usize,
}

/// Admits candidates, smallest first (then by id), while the rows of every
/// admitted set, the catch-alls of all the others, the guards and the
/// headroom for one switch of the largest set fit in `capacity`. `fixed`
/// are sets that are not up for admission (targets blocked entirely).
/// Returns the refused candidates by id.
pub fn admit_rows(
    capacity: RuleCapacity,
    fixed: &[Rows],
    candidates: &[Candidate],
) -> BTreeMap<String, Refusal> {
    // Every catch-all first: a refused target must still be held closed.
    let mut used = (fixed.iter().chain(candidates.iter().map(|c| &c.fallback)))
        .fold(Rows::default(), |sum, rows| sum.plus(*rows));
    let mut headroom = (fixed.iter().chain(candidates.iter().map(|c| &c.fallback)))
        .fold(Rows::default(), |max, rows| max.max(*rows));
    // Each network's admitted guard prefixes and their rows so far: a hash
    // set, since heavy labels put tens of thousands in one guard, and each
    // candidate looks up all of its own.
    let mut guards: HashMap<&str, (CidrSet, Rows)> = HashMap::new();
    // Shared rule sets already admitted: written once, whoever reads them.
    let mut admitted_sets: HashSet<usize> = HashSet::new();
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    let size = |c: &Candidate| c.own.total() + c.guards.values().map(Vec::len).sum::<usize>();
    order.sort_by(|a, b| (size(a), &a.id).cmp(&(size(b), &b.id)));
    let mut refused = BTreeMap::new();
    for candidate in order {
        let mut added = Rows::default();
        let mut largest = headroom.max(candidate.own);
        let mut new_per_guard = Vec::with_capacity(candidate.guards.len());
        for (network, destinations) in &candidate.guards {
            let guard = guards.get(network.as_str());
            let new = destinations
                .iter()
                .filter(|d| !guard.is_some_and(|(g, _)| g.contains(*d)));
            let new = Rows::of(new);
            added = added.plus(new);
            largest = largest.max(guard.map_or(Rows::default(), |(_, rows)| *rows).plus(new));
            new_per_guard.push(new);
        }
        let shared = candidate
            .rule_set
            .is_some_and(|s| admitted_sets.contains(&s));
        let own = if shared {
            Rows::default()
        } else {
            candidate.own
        };
        let wanted = used.minus(candidate.fallback).plus(own).plus(added);
        let over = |family: fn(Rows) -> usize| family(wanted) + family(largest) > family(capacity);
        let refusal = |map, family: fn(Rows) -> usize| Refusal {
            map,
            needed: family(candidate.own.plus(added)),
            used: family(used.minus(candidate.fallback)) + family(headroom),
            capacity: family(capacity),
        };
        if over(|r| r.v4) {
            refused.insert(candidate.id.clone(), refusal(RULES_V4_MAP, |r| r.v4));
        } else if over(|r| r.v6) {
            refused.insert(candidate.id.clone(), refusal(RULES_V6_MAP, |r| r.v6));
        } else {
            used = wanted;
            headroom = largest;
            admitted_sets.extend(candidate.rule_set);
            for ((network, destinations), new) in candidate.guards.iter().zip(new_per_guard) {
                let (set, rows) = guards.entry(network.as_str()).or_default();
                set.extend(destinations.iter().copied());
                *rows = rows.plus(new);
            }
        }
    }
    refused
}

/// In eBPF mode (a capacity is set), the target containers that do not
/// fit (see [`admit_rows`]), by id, from the plans of every target
/// container (`planned`, see [`super::plan_all`]). None otherwise.
pub(super) fn refusals(
    settings: &PlanSettings,
    planned: &[(&Container, Arc<TargetPlan>)],
) -> BTreeMap<String, Refusal> {
    let Some(capacity) = settings.rule_capacity else {
        return BTreeMap::new();
    };
    // Entries are sorted by rule, so a prefix's entries are adjacent.
    let destinations = |entries: &[Entry]| -> Vec<Cidr> {
        let mut destinations: Vec<Cidr> = entries.iter().map(|e| e.rule.destination).collect();
        if !destinations.is_sorted() {
            destinations.sort_unstable();
        }
        destinations.dedup();
        destinations
    };
    // A running target's namespace of its own is programmed.
    let programmed = |(c, t): &&(&Container, Arc<TargetPlan>)| c.running && t.pid.is_some();
    let catch_all = Rows { v4: 1, v6: 1 };
    let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut fixed = Vec::new();
    // Targets of equal entries and drop accounting compile to equal rows.
    let mut rule_sets: HashMap<(&[Entry], bool), usize> = HashMap::new();
    for (_, target) in planned.iter().filter(programmed) {
        if matches!(
            target.state,
            TargetState::Blocked(BlockReason::TooManyPrefixes { .. })
        ) {
            fixed.push(catch_all);
            continue;
        }
        let own = Rows::of(&destinations(&target.entries));
        let content = (target.entries.as_slice(), target.state.drops_are_policy());
        let next = rule_sets.len();
        let rule_set = *rule_sets.entry(content).or_insert(next);
        candidates.insert(
            target.id.clone(),
            Candidate {
                id: target.id.clone(),
                own,
                rule_set: Some(rule_set),
                // With no rows of its own, refusing it gains nothing.
                fallback: if own.total() == 0 { own } else { catch_all },
                guards: BTreeMap::new(),
            },
        );
    }
    for (container, target) in guard::contributions(planned) {
        let candidate = (candidates.entry(container.id.clone())).or_insert_with(|| Candidate {
            id: container.id.clone(),
            own: Rows::default(),
            rule_set: None,
            fallback: Rows::default(),
            guards: BTreeMap::new(),
        });
        let wanted = destinations(&target.entries);
        for network in container.networks.keys() {
            candidate.guards.insert(network.clone(), wanted.clone());
        }
    }
    let candidates: Vec<Candidate> = candidates.into_values().collect();
    admit_rows(capacity, &fixed, &candidates)
}

/// Blocks entirely the `refused` targets, with a [`BlockReason::Capacity`]
/// naming the trie, and serves a target in a refused target's namespace
/// as that one is.
pub(super) fn refuse(targets: &mut [Arc<TargetPlan>], refused: BTreeMap<String, Refusal>) {
    if refused.is_empty() {
        return;
    }
    let mut owners = BTreeMap::new();
    for target in targets.iter_mut() {
        if let Some(refusal) = refused.get(&target.id) {
            let reason = BlockReason::Capacity {
                map: refusal.map,
                needed: refusal.needed,
                used: refusal.used,
                capacity: refusal.capacity,
            };
            *target = Arc::new(block_everything((**target).clone(), reason));
            owners.insert(
                target.name.clone(),
                (target.state.clone(), target.entries.clone()),
            );
        }
    }
    for target in targets.iter_mut() {
        let owner = target.shares_namespace_of.as_ref();
        if let Some((state, entries)) = owner.and_then(|name| owners.get(name)) {
            let target = Arc::make_mut(target);
            target.state = state.clone();
            target.entries = entries.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        model::World,
        plan::{
            plan,
            tests::{self, settings},
        },
    };

    fn cidrs(text: &str) -> BTreeSet<Cidr> {
        text.split(',').map(|c| c.trim().parse().unwrap()).collect()
    }

    fn candidate(id: &str, own: usize, guard: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            own: Rows { v4: own, v6: 0 },
            rule_set: None,
            fallback: Rows { v4: 1, v6: 1 },
            guards: (guard.iter())
                .map(|(n, c)| (n.to_string(), cidrs(c).into_iter().collect()))
                .collect(),
        }
    }

    /// `n` distinct IPv4 /32 prefixes inside 10.201.0.0/16, comma-joined.
    fn prefixes(n: usize) -> String {
        (0..n)
            .map(|i| format!("10.201.{}.{}/32", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(",")
    }

    const CAPACITY: RuleCapacity = RuleCapacity { v4: 100, v6: 100 };

    #[test]
    fn everything_fits_in_a_large_trie() {
        let candidates = [candidate("a", 10, &[("net", &prefixes(10))])];
        assert!(admit_rows(CAPACITY, &[], &candidates).is_empty());
    }

    #[test]
    fn a_heavy_target_is_refused_before_it_crowds_out_ordinary_ones() {
        let heavy = prefixes(32);
        let candidates = [
            candidate("aaa-heavy", 32, &[("net", &heavy)]),
            candidate("zzz-small", 2, &[("net", "203.0.113.0/24,198.51.100.0/24")]),
            candidate("mmm-small", 1, &[("net", "10.201.250.0/24")]),
        ];
        // Alone it fits: 32 own + 32 guard + a switch of 32.
        assert!(admit_rows(CAPACITY, &[], &candidates[..1]).is_empty());
        let refused = admit_rows(CAPACITY, &[], &candidates);
        assert_eq!(refused.keys().collect::<Vec<_>>(), ["aaa-heavy"]);
        let refusal = &refused["aaa-heavy"];
        assert_eq!(refusal.map, "NETWARP_RULES_V4");
        assert_eq!(refusal.needed, 64, "its own rows and the guard's");
        assert_eq!(refusal.capacity, 100);
        // The small ones' catch-alls given back for their rows (3), the
        // guard's rows (3) and the headroom of the largest set (3).
        assert_eq!(refusal.used, 9);
    }

    #[test]
    fn the_order_is_by_size_then_id_whatever_the_input_order() {
        let a = candidate("a", 30, &[("net", &prefixes(30))]);
        let b = candidate("b", 30, &[("other", &prefixes(30))]);
        let forward = admit_rows(CAPACITY, &[], &[a.clone(), b.clone()]);
        let backward = admit_rows(CAPACITY, &[], &[b, a]);
        assert_eq!(forward, backward);
        // Same size: `a` goes first (30 + 30 + headroom 30 fits), `b` not.
        assert_eq!(forward.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn targets_sharing_a_rule_set_pay_for_its_rows_once() {
        // Three targets of 30 rows each, no guard: 30 + 30 + 30 plus a
        // switch of 30 do not fit in 100; one shared set of 30 does.
        let apart: Vec<Candidate> = ["a", "b", "c"]
            .iter()
            .map(|id| candidate(id, 30, &[]))
            .collect();
        assert_eq!(
            admit_rows(CAPACITY, &[], &apart).keys().collect::<Vec<_>>(),
            ["c"]
        );
        let shared: Vec<Candidate> = (apart.iter().cloned())
            .map(|mut c| {
                c.rule_set = Some(0);
                c
            })
            .collect();
        assert!(admit_rows(CAPACITY, &[], &shared).is_empty());
        // Another set of the same size is not shared: it pays.
        let mut other = candidate("d", 30, &[]);
        other.rule_set = Some(1);
        let mut with_other = shared.clone();
        with_other.push(other.clone());
        assert!(admit_rows(CAPACITY, &[], &with_other).is_empty());
        with_other.push(Candidate {
            id: "e".into(),
            rule_set: Some(2),
            ..other
        });
        assert_eq!(
            admit_rows(CAPACITY, &[], &with_other)
                .keys()
                .collect::<Vec<_>>(),
            ["e"]
        );
    }

    #[test]
    fn the_guard_and_the_catch_alls_are_reserved() {
        // 35 own rows and a switch of them fit; with the guard's 35 not.
        let refused = admit_rows(
            CAPACITY,
            &[],
            &[candidate("a", 35, &[("net", &prefixes(35))])],
        );
        assert_eq!(refused["a"].needed, 70);
        // Prefixes a guard already holds cost nothing more.
        let candidates = [
            candidate("a", 20, &[("net", &prefixes(20))]),
            candidate("b", 20, &[("net", &prefixes(20))]),
        ];
        assert!(admit_rows(CAPACITY, &[], &candidates).is_empty());
        // Fixed catch-alls (targets over the prefix limit) take their rows.
        let fixed = vec![Rows { v4: 1, v6: 1 }; 25];
        let refused = admit_rows(CAPACITY, &fixed, &candidates);
        assert_eq!(refused.keys().collect::<Vec<_>>(), ["b"], "{refused:?}");
    }

    #[test]
    fn an_ipv6_shortage_names_the_ipv6_trie() {
        let mut c = candidate("a", 0, &[]);
        c.own = Rows { v4: 1, v6: 60 };
        let refused = admit_rows(CAPACITY, &[], &[c]);
        assert_eq!(refused["a"].map, "NETWARP_RULES_V6");
    }

    fn container(name: &str, labels: &[(&str, &str)], ip: &str) -> Container {
        tests::container(name, labels, &[("net", tests::endpoint(ip, None))])
    }

    fn world(heavy: &str) -> World {
        World {
            containers: vec![
                container("warp-vpn", &[], "172.20.0.2"),
                container(
                    "heavy",
                    &[("netwarp.target", "warp-vpn"), ("netwarp.rules", heavy)],
                    "172.20.0.3",
                ),
                container(
                    "small",
                    &[
                        ("netwarp.target", "warp-vpn"),
                        ("netwarp.rules", "10.201.200.0/24"),
                    ],
                    "172.20.0.4",
                ),
            ],
        }
    }

    fn states(plan: &crate::plan::Plan) -> BTreeMap<&str, &TargetState> {
        (plan.targets.iter())
            .map(|t| (t.name.as_str(), &t.state))
            .collect()
    }

    #[test]
    fn a_target_over_the_prefix_limit_is_blocked_entirely_and_leaves_the_guard_alone() {
        let mut settings = settings("203.0.113.0/24");
        settings.max_prefixes_per_target = 50;
        let plan = plan(&world(&prefixes(51)), &settings);
        let heavy = plan.targets.iter().find(|t| t.name == "heavy").unwrap();
        assert_eq!(
            heavy.state,
            TargetState::Blocked(BlockReason::TooManyPrefixes {
                count: 51,
                limit: 50
            })
        );
        let everything: Vec<String> = (heavy.entries.iter())
            .map(|e| format!("{} {:?}", e.rule.destination, e.action))
            .collect();
        assert_eq!(everything, ["0.0.0.0/0 Block", "::/0 Block"]);
        assert_eq!(heavy.mac_on_network.as_deref(), Some("02:42:172.20.0.3"));
        let TargetState::Blocked(reason) = &heavy.state else {
            unreachable!()
        };
        let message = reason.to_string();
        assert!(
            message.contains("51") && message.contains("50"),
            "{message}"
        );
        assert!(
            message.contains("limits.max_prefixes_per_target"),
            "{message}"
        );
        // Its neighbour is steered, and the guard blocks only its prefix.
        assert!(matches!(
            states(&plan)["small"],
            TargetState::Steered { .. }
        ));
        let guard: Vec<String> = (plan.guards[0].entries.iter())
            .map(|e| e.rule.destination.to_string())
            .collect();
        assert_eq!(guard, ["10.201.200.0/24"]);
        // At the limit it is steered.
        let plan = crate::plan::plan(&world(&prefixes(50)), &settings);
        assert!(matches!(
            states(&plan)["heavy"],
            TargetState::Steered { .. }
        ));
    }

    #[test]
    fn in_ebpf_mode_a_target_that_does_not_fit_is_refused_and_its_neighbour_steered() {
        let mut settings = settings("203.0.113.0/24");
        settings.rule_capacity = Some(CAPACITY);
        let plan = plan(&world(&prefixes(40)), &settings);
        let heavy = plan.targets.iter().find(|t| t.name == "heavy").unwrap();
        let TargetState::Blocked(reason @ BlockReason::Capacity { map, .. }) = &heavy.state else {
            panic!("{:?}", heavy.state);
        };
        assert_eq!(*map, "NETWARP_RULES_V4");
        assert_eq!(reason.kind(), "capacity");
        let message = reason.to_string();
        assert!(message.contains(RULES_CAPACITY_KEY), "{message}");
        assert!(message.contains("NETWARP_RULES_V4"), "{message}");
        assert_eq!(
            heavy.entries.len(),
            2,
            "blocked entirely: {:?}",
            heavy.entries
        );
        assert!(matches!(
            states(&plan)["small"],
            TargetState::Steered { .. }
        ));
        // The guard holds only what was admitted.
        assert_eq!(plan.guards[0].entries.len(), 1, "{:?}", plan.guards);
        // Without a capacity (routes), both are steered.
        settings.rule_capacity = None;
        let plan = crate::plan::plan(&world(&prefixes(40)), &settings);
        assert!(matches!(
            states(&plan)["heavy"],
            TargetState::Steered { .. }
        ));
    }
}
