//! The pure planner: a snapshot of the containers plus the settings give
//! each target's desired policy. No Docker, no kernel; this is where most
//! of the unit tests live.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

mod capacity;
mod caps;
mod decide;
mod dns;
mod group;
mod guard;
mod lists;
mod probe;
mod reasons;
mod rules_memo;
mod warp;

pub use capacity::{MAX_PREFIXES_KEY, RULES_CAPACITY_KEY, RuleCapacity};
pub use caps::{CapEnforcement, CapPlan, CapSettings};
#[cfg(test)]
pub(crate) use decide::samples;
pub use decide::{decide, prune_direct};
pub use dns::{DnsPolicy, dns_rules};
pub use group::{GroupMode, MAX_SPREAD_MEMBERS, SpreadMember, WarpGroup, parse_group, warp_group};
pub use guard::{GuardPlan, plan_guards};
pub use lists::{allow_only, parse_allow, parse_deny};
pub use probe::{ProbeCheck, WarpProbes, probe_check, probe_spec};
pub use reasons::{BlockReason, RefuseReason};
pub use warp::{WarpPlan, WarpState};

use crate::{
    glob,
    model::{Cidr, Container, Health, IdSet, NetworkMode, Rule, Verb, World, short_reference},
};

/// What to do with a target's matching traffic while its warp is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnWarpDown {
    /// Drop it (fail closed).
    #[default]
    Block,
    /// Let it take the container's normal path.
    Bypass,
}

/// The parts of the configuration the planner reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSettings {
    pub warp_name_pattern: String,
    pub target_label: String,
    pub network_label: String,
    pub rules_label: String,
    pub global_rules: Vec<Rule>,
    pub on_warp_down: OnWarpDown,
    pub caps: CapSettings,
    /// The most destination prefixes one target's rules may list.
    pub max_prefixes_per_target: usize,
    /// The eBPF rule tries' entries per family, which targets are admitted
    /// against; `None` when the dataplane has no such bound (routes, dry-run).
    pub rule_capacity: Option<RuleCapacity>,
    /// The label naming a warp's probe.
    pub probe_label: String,
    /// Exclude each target's own Docker networks from its `via` rules.
    pub exclude_own_networks: bool,
    /// Where targets' DNS queries may go, unless their label says.
    pub dns: DnsPolicy,
    /// The label with a target's own DNS policy.
    pub dns_label: String,
    /// The labels with a container's egress allow and deny lists (any
    /// container: with them alone it is filtered, without a warp).
    pub allow_label: String,
    pub deny_label: String,
}

impl PlanSettings {
    /// Every container label the planner reads: the inventory keeps these
    /// and drops the rest as Docker's answers are decoded, so a label the
    /// planner starts reading must be listed here.
    pub fn labels_read(&self) -> Vec<String> {
        vec![
            self.target_label.clone(),
            self.network_label.clone(),
            self.rules_label.clone(),
            self.caps.egress_label.clone(),
            self.caps.ingress_label.clone(),
            self.caps.burst_label.clone(),
            self.probe_label.clone(),
            self.dns_label.clone(),
            self.allow_label.clone(),
            self.deny_label.clone(),
            SWARM_SERVICE_LABEL.to_owned(),
        ]
    }
}

/// The action for one rule's traffic. Where two entries of one prefix
/// and selector disagree, the greater wins (see [`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Route via the warp container's address (same family as the rule).
    Via(IpAddr),
    /// Leave it alone: the container's own path (a `direct` rule, or an
    /// exclusion of the container's own networks).
    Direct,
    /// Drop, because a `block` rule says so.
    Deny,
    /// Drop, because the warp is unusable or has no address of this family.
    Block,
}

impl std::fmt::Display for Action {
    /// As status and the dry-run record show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Via(ip) => write!(f, "via {ip}"),
            Self::Direct => f.write_str("direct"),
            Self::Deny => f.write_str("deny"),
            Self::Block => f.write_str("block"),
        }
    }
}

impl Action {
    /// Whether the packet is dropped.
    pub fn drops(self) -> bool {
        matches!(self, Self::Deny | Self::Block)
    }
}

/// One desired entry: a rule and what happens to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    pub rule: Rule,
    pub action: Action,
}

impl Entry {
    /// The same action for every rule, sorted and without duplicates.
    pub fn all(rules: &[Rule], action: Action) -> Vec<Entry> {
        let mut entries: Vec<Entry> = rules.iter().map(|&rule| Entry { rule, action }).collect();
        entries.sort();
        entries.dedup();
        entries
    }
}

/// The overall state of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Steered through the warp on `network`.
    Steered {
        network: String,
        via_v4: Option<Ipv4Addr>,
        via_v6: Option<Ipv6Addr>,
    },
    /// Matching traffic is dropped.
    Blocked(BlockReason),
    /// `on_warp_down = bypass`: netwarp leaves the traffic alone.
    Bypassed(BlockReason),
    /// netwarp does not touch the target's namespace at all: its traffic
    /// is neither steered nor blocked.
    Refused(RefuseReason),
    /// A container with an allow or deny list and no warp: its lists are
    /// enforced, nothing is steered.
    Filtered,
}

impl TargetState {
    /// Whether the target's drops are policy (a family its warp has no
    /// address for while steered, a limit, a list) rather than its warp
    /// being down: the eBPF rows carry which, for the drop counters.
    pub fn drops_are_policy(&self) -> bool {
        match self {
            Self::Steered { .. } | Self::Filtered => true,
            Self::Blocked(reason) => reason.is_limit(),
            _ => false,
        }
    }

    /// Every state's name, in the order metrics list them.
    pub const NAMES: [&'static str; 5] = ["steered", "blocked", "bypassed", "refused", "filtered"];

    /// The state's name in status, metrics and the dry-run record.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Steered { .. } => "steered",
            Self::Blocked(_) => "blocked",
            Self::Bypassed(_) => "bypassed",
            Self::Refused(_) => "refused",
            Self::Filtered => "filtered",
        }
    }
}

/// The desired policy for one target container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPlan {
    pub id: String,
    pub name: String,
    pub pid: Option<u32>,
    /// The warp container carrying the target: the one its label names,
    /// or of a group, the active one (the first member while none is).
    pub warp: String,
    /// A failover group's members in priority order, when the label names
    /// more than one warp; empty otherwise. A spread group's too.
    pub warp_group: Vec<String>,
    /// How the group shares the traffic (failover for one warp).
    pub group_mode: GroupMode,
    /// A spread group's target while steered: every usable member that
    /// carries its flows, in label order. The first is `warp`, whose
    /// address the `via` entries name and whose pid and MACs the fields
    /// below hold; the dataplanes spread the `via` traffic over all of
    /// them. Empty otherwise.
    pub spread: Vec<SpreadMember>,
    pub state: TargetState,
    /// Sorted, without duplicates.
    pub entries: Vec<Entry>,
    /// The interface-facing MAC of the target on the warp's network, which
    /// the dataplane uses to find the right interface.
    pub mac_on_network: Option<String>,
    /// While steered: the warp's init pid and its MAC on the network, which
    /// the eBPF dataplane uses to find the warp's veth and address frames.
    pub warp_pid: Option<u32>,
    pub warp_mac: Option<String>,
    /// While steered: the warp's MACs on all its networks, sorted; the eBPF
    /// dataplane guards each of its veths (a VPN client may forward by any).
    pub warp_macs: Vec<String>,
    /// Every address of the target, on all its networks, sorted: what the
    /// eBPF dataplane tells the warp's veths, so that the warp's untunnelled
    /// forwards of its traffic are dropped and its replies delivered.
    pub addresses: Vec<IpAddr>,
    /// The target's own networks' subnets that its `via` rules leave
    /// alone (`exclude_own_networks`), sorted: shown in status.
    pub excluded: Vec<Cidr>,
    /// Set when the target runs in the namespace of this other target
    /// (`--network container:X`) with the same warp and rules: the state
    /// and entries are X's, and only X's plan is programmed (`pid` is
    /// `None`), so the namespace is never programmed twice.
    pub shares_namespace_of: Option<String>,
}

impl TargetPlan {
    /// The warps carrying it, as failover history records them: the
    /// spread members joined by commas, else `warp`.
    pub fn active_warps(&self) -> String {
        if self.spread.is_empty() {
            return self.warp.clone();
        }
        let names: Vec<&str> = self.spread.iter().map(|m| m.name.as_str()).collect();
        names.join(",")
    }

    /// A note on how a shared namespace is served, for status and logs.
    pub fn sharing_note(&self) -> Option<String> {
        let other = self.shares_namespace_of.as_ref()?;
        let how = match &self.state {
            TargetState::Steered { .. } => "steers",
            TargetState::Blocked(_) => "blocks",
            TargetState::Bypassed(_) => "bypasses",
            TargetState::Refused(_) => return None,
            TargetState::Filtered => "filters",
        };
        Some(format!(
            "shares the namespace of {other}, which netwarp {how}"
        ))
    }
}

/// The plan for every running target, sorted by container id.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Shared, not copied, with the published status and the dataplanes'
    /// records of what they programmed.
    pub targets: Vec<Arc<TargetPlan>>,
    /// Every running container with a cap, sorted by container id.
    pub caps: Vec<CapPlan>,
    /// One bridge guard per network that carries a target, by network name.
    pub guards: Vec<GuardPlan>,
    /// Every warp-named container and every warp a target names, by name.
    pub warps: Vec<WarpPlan>,
}

/// Computes every running target's desired policy.
pub fn plan(world: &World, settings: &PlanSettings) -> Plan {
    plan_observed(world, settings, &Observed::default())
}

/// What passes observe besides Docker's snapshot, and plans depend on:
/// the probes' verdicts and the failover groups' history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub probes: WarpProbes,
    pub failover: Failover,
}

/// What earlier passes know about failover groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// Each grouped target's active warp, by target container id.
    pub active: HashMap<String, String>,
    /// Warps (by name) usable for at least the hold-down: only these take
    /// traffic back from a usable active member. `None`: every usable warp
    /// may (no hold-down).
    pub settled: Option<HashSet<String>>,
}

/// Which containers of a snapshot may differ from the snapshot the last
/// plan was made from, as the inventory knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Changes {
    /// Any of them (a full listing, or no plan before).
    #[default]
    All,
    /// Only these: the containers listed anew, added or gone.
    Only {
        /// Their ids.
        ids: IdSet,
        /// Their names and Swarm service names, before and after: a
        /// target whose warp label names none of these resolves its warps
        /// to the same containers as before.
        names: HashSet<String>,
    },
}

impl Changes {
    /// Nothing changed yet; [`Changes::note`] adds what did.
    pub fn none() -> Self {
        Self::Only {
            ids: IdSet::default(),
            names: HashSet::new(),
        }
    }

    /// `container` (as it is now, or as it was) may have changed.
    pub fn note(&mut self, container: &Container) {
        if let Self::Only { ids, names } = self {
            ids.insert(container.id.clone());
            names.insert(container.name.clone());
            if let Some(service) = container.labels.get(SWARM_SERVICE_LABEL) {
                names.insert(service.clone());
            }
        }
    }

    /// Whether the plan of `target`, whose warp label is `warp`, is the
    /// last plan's: neither it nor any warp its label names changed, and
    /// it runs in a namespace of its own (the plan of a target in another
    /// container's namespace is that container's).
    fn keeps_plan(&self, target: &Container, warp: &str) -> bool {
        match self {
            Self::All => false,
            Self::Only { ids, names } => {
                !ids.contains(&target.id)
                    && target.network_mode == NetworkMode::Own
                    && warp_group(warp).iter().all(|name| !names.contains(*name))
            }
        }
    }
}

/// The last plan's target plans, for the next plan to reuse: a target
/// whose container and warps did not change (see [`Changes`]), planned
/// with the same settings and observations, has the same plan, and an
/// equal plan keeps the last one's allocation. Unchanged targets then
/// cost a lookup instead of a plan, and status, the dataplane's records
/// and the plans share one copy of each target's plan.
#[derive(Debug, Default)]
pub struct PlanCache {
    /// Every target container's plan (running or not) before admission to
    /// the rule tries, by container id (its own: the id is not kept twice).
    plans: PlansById,
    /// What they were planned with.
    made_with: Option<(PlanSettings, Observed)>,
}

/// [`plan`], with what passes observed (see [`Observed`]).
pub fn plan_observed(world: &World, settings: &PlanSettings, observed: &Observed) -> Plan {
    plan_cached(
        world,
        settings,
        observed,
        &Changes::All,
        &mut PlanCache::default(),
    )
}

/// [`plan_observed`], reusing what `cache` holds from the last plan for
/// the targets `changes` leaves out, and keeping this plan's targets in
/// it for the next. The result is the same as [`plan_observed`]'s.
pub fn plan_cached(
    world: &World,
    settings: &PlanSettings,
    observed: &Observed,
    changes: &Changes,
    cache: &mut PlanCache,
) -> Plan {
    let probes = &observed.probes;
    let index = Index::observed(world, observed);
    let same_inputs =
        (cache.made_with.as_ref()).is_some_and(|(s, o)| s == settings && o == observed);
    let reuse = Reuse {
        plans: &cache.plans,
        changes: if same_inputs { changes } else { &Changes::All },
    };
    // Every target container, running or not, is planned once: the
    // running ones are the targets, and all of them feed the guards and
    // the admission to the rule tries.
    let planned = plan_all(&index, settings, Some(reuse));
    keep_plans(&mut cache.plans, &planned);
    if !same_inputs {
        cache.made_with = Some((settings.clone(), observed.clone()));
    }
    // In eBPF mode, the targets the rule tries cannot hold.
    let refused = capacity::refusals(settings, &planned);
    let guards = guard::plan_guards_except(&index, settings, &planned, &refused);
    let mut targets: Vec<Arc<TargetPlan>> = (planned.into_iter())
        .filter(|(container, _)| container.running)
        .map(|(_, target)| target)
        .collect();
    // Ids are unique.
    targets.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    capacity::refuse(&mut targets, refused);
    Plan {
        warps: warp::plan_warps(world, settings, probes, &targets),
        targets,
        caps: caps::plan_caps(world, settings),
        guards,
    }
}

/// Makes `plans` those of `planned`, in place: most are there already.
/// (A stale entry could only be a container that left; one that comes
/// back is listed anew, so it is planned anew.)
fn keep_plans(plans: &mut PlansById, planned: &[(&Container, Arc<TargetPlan>)]) {
    for (container, target) in planned {
        debug_assert_eq!(container.id, target.id);
        match plans.get(target.id.as_str()) {
            Some(kept) if Arc::ptr_eq(&kept.0, target) => {}
            _ => {
                plans.replace(ById(Arc::clone(target)));
            }
        }
    }
    if plans.len() > planned.len() {
        let present: HashSet<&str, foldhash::fast::RandomState> =
            (planned.iter()).map(|(c, _)| c.id.as_str()).collect();
        plans.retain(|kept| present.contains(kept.0.id.as_str()));
    }
}

/// A target's plan, as the key of a set by its container id: a map by id
/// to plans without a second copy of each id.
#[derive(Debug)]
pub struct ById(pub Arc<TargetPlan>);

/// Target plans by their container ids.
pub type PlansById = HashSet<ById, foldhash::fast::RandomState>;

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    /// As its id's `str` hashes, for lookups by `&str`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// The last plan's target plans, and which of them still hold.
#[derive(Clone, Copy)]
struct Reuse<'c> {
    plans: &'c PlansById,
    changes: &'c Changes,
}

/// Every container with the target label (running or not), or with an
/// allow or deny list, and its plan, in the snapshot's order; with
/// `reuse`, the last plan's where it holds, or where the new one equals it.
fn plan_all<'a>(
    index: &Index<'a>,
    settings: &PlanSettings,
    reuse: Option<Reuse<'_>>,
) -> Vec<(&'a Container, Arc<TargetPlan>)> {
    (index.world.containers.iter())
        .filter_map(|c| {
            let warp = match c.labels.get(&settings.target_label) {
                Some(warp) => Some(warp.trim()),
                None if c.labels.contains_key(&settings.allow_label)
                    || c.labels.contains_key(&settings.deny_label) =>
                {
                    None
                }
                None => return None,
            };
            let last = reuse.and_then(|r| Some((&r.plans.get(c.id.as_str())?.0, r.changes)));
            let target = match last {
                // A filtered container's plan depends on it alone.
                Some((last, changes)) if changes.keeps_plan(c, warp.unwrap_or_default()) => {
                    Arc::clone(last)
                }
                _ => {
                    let fresh = match warp {
                        Some(warp) => plan_target(index, settings, c, warp),
                        None => lists::plan_filtered(settings, c),
                    };
                    match last {
                        Some((last, _)) if **last == fresh => Arc::clone(last),
                        _ => Arc::new(fresh),
                    }
                }
            };
            Some((c, target))
        })
        .collect()
}

/// Containers by name, with a fast hash: built from every container on
/// every plan.
type NameMap<'a> = HashMap<&'a str, &'a Container, foldhash::fast::RandomState>;

/// The snapshot's containers by name and by Swarm service, built once per
/// plan, so that finding a target's warp is a lookup and not a search
/// through every container.
pub struct Index<'a> {
    pub world: &'a World,
    /// What the warps' probes say, by warp container id.
    probes: Option<&'a WarpProbes>,
    /// What earlier passes know about failover groups.
    failover: Option<&'a Failover>,
    by_name: NameMap<'a>,
    /// Of a service's tasks, the one [`Index::warp`] picks.
    by_service: NameMap<'a>,
}

impl<'a> Index<'a> {
    pub fn observed(world: &'a World, observed: &'a Observed) -> Self {
        Self {
            probes: Some(&observed.probes),
            failover: Some(&observed.failover),
            ..Self::new(world)
        }
    }

    pub fn new(world: &'a World) -> Self {
        let mut by_name =
            NameMap::with_capacity_and_hasher(world.containers.len(), Default::default());
        let mut by_service = NameMap::default();
        for c in &world.containers {
            by_name.entry(c.name.as_str()).or_insert(c);
            if let Some(service) = c.labels.get(SWARM_SERVICE_LABEL) {
                let rank = |c: &'a Container| (!c.running, c.name.as_str());
                (by_service.entry(service.as_str()))
                    .and_modify(|best| {
                        if rank(c) < rank(best) {
                            *best = c;
                        }
                    })
                    .or_insert(c);
            }
        }
        Self {
            world,
            probes: None,
            failover: None,
            by_name,
            by_service,
        }
    }

    /// The container a target's warp label names: the container of that
    /// name, or else a task of the Swarm service of that name on this node
    /// (a global service has one; of several, a running one, then the
    /// first by name, so that every pass picks the same).
    pub fn warp(&self, name: &str) -> Option<&'a Container> {
        (self.by_name.get(name).or_else(|| self.by_service.get(name))).copied()
    }
}

fn plan_target(
    index: &Index<'_>,
    settings: &PlanSettings,
    target: &Container,
    warp: &str,
) -> TargetPlan {
    let parsed = parse_group(warp);
    let group = match &parsed {
        Ok(group) => group.members.clone(),
        Err(_) => warp_group(warp),
    };
    let primary = group.first().copied().unwrap_or("");
    let mode = parsed.as_ref().map_or(GroupMode::Failover, |g| g.mode);
    let mut plan = TargetPlan {
        id: target.id.clone(),
        name: target.name.clone(),
        pid: target.pid,
        warp: primary.to_owned(),
        warp_group: if group.len() > 1 || mode == GroupMode::Spread {
            group.iter().map(|name| (*name).to_owned()).collect()
        } else {
            Vec::new()
        },
        group_mode: mode,
        spread: Vec::new(),
        state: TargetState::Blocked(BlockReason::WarpMissing {
            warp: primary.to_owned(),
        }),
        entries: Vec::new(),
        mac_on_network: None,
        warp_pid: None,
        warp_mac: None,
        warp_macs: Vec::new(),
        addresses: addresses(target),
        excluded: Vec::new(),
        shares_namespace_of: None,
    };
    // Only a namespace that is the target's own is ever programmed.
    let refuse = |mut plan: TargetPlan, reason| {
        plan.pid = None;
        plan.state = TargetState::Refused(reason);
        plan
    };
    let container = target.name.clone();
    match &target.network_mode {
        NetworkMode::Own => {}
        NetworkMode::Host => return refuse(plan, RefuseReason::HostNetwork { container }),
        NetworkMode::NoNetwork => return refuse(plan, RefuseReason::NoNetwork { container }),
        NetworkMode::Container(reference) => {
            return match shared_namespace(index, settings, target, warp, reference) {
                // The owner's plan programs the namespace; this one
                // reports it and hands the dataplane no pid.
                Ok(owner) => TargetPlan {
                    pid: None,
                    shares_namespace_of: Some(owner.name),
                    state: owner.state,
                    entries: owner.entries,
                    excluded: owner.excluded,
                    ..plan
                },
                Err(reason) => refuse(plan, reason),
            };
        }
    }
    // A malformed rules label fails closed on the global rules: the target
    // asked to be protected, so its traffic must not leak meanwhile.
    let rules = match target_rules(settings, target) {
        Ok(rules) => rules,
        Err(reason) => return blocked(plan, settings, &settings.global_rules, reason),
    };
    let count = capacity::distinct_destinations(&rules);
    if count > settings.max_prefixes_per_target {
        let limit = settings.max_prefixes_per_target;
        let reason = BlockReason::TooManyPrefixes { count, limit };
        return block_all(index, settings, target, &parsed, plan, reason);
    }
    let (mut rules, excluded) = with_exclusions(settings, target, rules);
    plan.excluded = excluded;
    match dns_policy(settings, target) {
        Ok(policy) => {
            let extra = dns_rules(policy, &rules);
            rules.extend(extra);
        }
        Err(reason) => return blocked(plan, settings, &rules, reason),
    }
    let rules = match lists::apply(settings, target, rules) {
        Ok(rules) => rules,
        Err(reason) => return block_all(index, settings, target, &parsed, plan, reason),
    };
    match choose_warps(index, settings, target, warp, &parsed) {
        Ok(mut chosen) => {
            if mode == GroupMode::Spread {
                plan.spread = chosen.iter().map(|(name, r)| r.member(name)).collect();
            }
            let (name, resolved) = chosen.swap_remove(0);
            plan.warp = name.to_owned();
            plan.mac_on_network = resolved.target_mac;
            plan.warp_pid = resolved.warp_pid;
            plan.warp_mac = resolved.warp_mac;
            plan.warp_macs = resolved.warp_macs;
            plan.entries = entries(&rules, |rule| {
                match (rule.destination.is_ipv6(), resolved.via_v4, resolved.via_v6) {
                    (false, Some(v4), _) => Some(Action::Via(IpAddr::V4(v4))),
                    (true, _, Some(v6)) => Some(Action::Via(IpAddr::V6(v6))),
                    // No address of this family on the warp: fail closed.
                    _ => Some(Action::Block),
                }
            });
            plan.state = TargetState::Steered {
                network: resolved.network,
                via_v4: resolved.via_v4,
                via_v6: resolved.via_v6,
            };
            plan
        }
        Err((reason, target_mac)) => {
            plan.mac_on_network = target_mac;
            blocked(plan, settings, &rules, reason)
        }
    }
}

/// `plan` with all its traffic blocked for `reason`. Only the target's MAC
/// is needed: its veth gets the block.
fn block_all(
    index: &Index<'_>,
    settings: &PlanSettings,
    target: &Container,
    group: &Result<WarpGroup<'_>, String>,
    mut plan: TargetPlan,
    reason: BlockReason,
) -> TargetPlan {
    let label = plan.warp.clone();
    plan.mac_on_network = match choose_warps(index, settings, target, &label, group) {
        Ok(mut chosen) => chosen.swap_remove(0).1.target_mac,
        Err((_, mac)) => mac,
    };
    capacity::block_everything(plan, reason)
}

/// The entries of `rules`: `via` rules take what `via` gives (`None`:
/// left out), `direct` and `block` rules are the same whatever the warp's
/// state. Sorted, without duplicates, and without `direct` entries that
/// nothing they would carve from covers.
pub(super) fn entries(rules: &[Rule], via: impl Fn(&Rule) -> Option<Action>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = (rules.iter())
        .filter_map(|rule| {
            let action = match rule.verb {
                Verb::Via => via(rule)?,
                Verb::Direct => Action::Direct,
                Verb::Block => Action::Deny,
            };
            Some(Entry {
                rule: *rule,
                action,
            })
        })
        .collect();
    entries.sort();
    entries.dedup();
    prune_direct(&mut entries);
    entries
}

/// A target's DNS policy: its label's, else the global one.
fn dns_policy(settings: &PlanSettings, target: &Container) -> Result<DnsPolicy, BlockReason> {
    match target.labels.get(&settings.dns_label) {
        None => Ok(settings.dns),
        Some(value) => value.parse().map_err(|error| BlockReason::InvalidLabel {
            label: settings.dns_label.clone(),
            value: value.clone(),
            error,
        }),
    }
}

/// `rules` with a `direct` rule for each subnet of the target's own
/// networks that one of its `via` rules covers (so its neighbours, and the
/// warp, are reached directly), and those subnets, sorted.
fn with_exclusions(
    settings: &PlanSettings,
    target: &Container,
    mut rules: Vec<Rule>,
) -> (Vec<Rule>, Vec<Cidr>) {
    if !settings.exclude_own_networks {
        return (rules, Vec::new());
    }
    let mut excluded: Vec<Cidr> = (target.networks.values())
        .flat_map(|endpoint| endpoint.subnets())
        .filter(|subnet| {
            (rules.iter()).any(|rule| rule.verb == Verb::Via && rule.destination.covers(subnet))
        })
        .collect();
    excluded.sort();
    excluded.dedup();
    rules.extend(excluded.iter().map(|subnet| Rule {
        destination: *subnet,
        protocol: None,
        ports: None,
        verb: Verb::Direct,
    }));
    (rules, excluded)
}

/// Every address of `container`, on all its networks, sorted.
pub(super) fn addresses(container: &Container) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = container
        .networks
        .values()
        .flat_map(|e| [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)])
        .flatten()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A target's rules: its rules label (with the global rules when it says
/// `global`), else the global rules.
fn target_rules(settings: &PlanSettings, target: &Container) -> Result<Vec<Rule>, BlockReason> {
    let Some(value) = target.labels.get(&settings.rules_label) else {
        return Ok(settings.global_rules.clone());
    };
    let policy = rules_memo::parse(value).map_err(|error| BlockReason::InvalidRules {
        label: settings.rules_label.clone(),
        value: value.clone(),
        error,
    })?;
    let mut rules = policy.rules;
    if policy.with_global {
        rules.extend_from_slice(&settings.global_rules);
        rules.sort();
        rules.dedup();
    }
    Ok(rules)
}

/// `target` runs in the namespace `reference` names. That is served only
/// when it belongs to a running target in its own namespace with the same
/// warp and rules: then that target's plan (which is programmed) is the
/// answer. Every other owner is refused.
fn shared_namespace(
    index: &Index<'_>,
    settings: &PlanSettings,
    target: &Container,
    warp: &str,
    reference: &str,
) -> Result<TargetPlan, RefuseReason> {
    let container = target.name.clone();
    // Rare (only `container:` targets), and a reference may be an id
    // prefix: a search.
    let Some(owner) = (index.world.containers.iter())
        .find(|c| c.running && c.id != target.id && c.is_named_by(reference))
    else {
        return Err(RefuseReason::SharesMissing {
            container,
            other: short_reference(reference).to_owned(),
        });
    };
    let other = owner.name.clone();
    let Some(owner_warp) = owner.labels.get(&settings.target_label) else {
        return Err(if is_warp_by_name(&settings.warp_name_pattern, owner) {
            RefuseReason::SharesWarp { container, other }
        } else {
            RefuseReason::SharesUnmanaged { container, other }
        });
    };
    if owner.network_mode != NetworkMode::Own {
        return Err(RefuseReason::SharesIndirect {
            container,
            other,
            mode: owner.network_mode.clone(),
        });
    }
    let normalized = |rules: Result<Vec<Rule>, BlockReason>| {
        rules.ok().map(|mut rules| {
            rules.sort();
            rules.dedup();
            rules
        })
    };
    let same_rules = normalized(target_rules(settings, target))
        .is_some_and(|mine| Some(mine) == normalized(target_rules(settings, owner)));
    if owner_warp.trim() != warp || !same_rules {
        return Err(RefuseReason::SharesOtherPolicy {
            container,
            other,
            target_label: settings.target_label.clone(),
            rules_label: settings.rules_label.clone(),
        });
    }
    Ok(plan_target(index, settings, owner, owner_warp.trim()))
}

fn blocked(
    mut plan: TargetPlan,
    settings: &PlanSettings,
    rules: &[Rule],
    reason: BlockReason,
) -> TargetPlan {
    match settings.on_warp_down {
        OnWarpDown::Block => {
            plan.entries = entries(rules, |_| Some(Action::Block));
            plan.state = TargetState::Blocked(reason);
        }
        OnWarpDown::Bypass => {
            // Only what goes through the warp takes the normal path; block
            // rules hold whatever the warp's state.
            plan.entries = entries(rules, |_| None);
            plan.state = TargetState::Bypassed(reason);
        }
    }
    plan
}

/// Why no warp carries a target, with the target's MAC on the network
/// when it is known (its veth then gets the block).
type Unresolved = (BlockReason, Option<String>);

struct ResolvedWarp {
    network: String,
    warp_pid: Option<u32>,
    warp_mac: Option<String>,
    warp_macs: Vec<String>,
    via_v4: Option<Ipv4Addr>,
    via_v6: Option<Ipv6Addr>,
    target_mac: Option<String>,
}

impl ResolvedWarp {
    fn member(&self, name: &str) -> SpreadMember {
        SpreadMember {
            name: name.to_owned(),
            pid: self.warp_pid,
            mac: self.warp_mac.clone(),
            macs: self.warp_macs.clone(),
            via_v4: self.via_v4,
            via_v6: self.via_v6,
        }
    }
}

/// The label Docker Swarm puts on each task container: its service's name.
pub const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.name";

/// Whether `container` is a warp by `pattern`: by its own name, or, for a
/// Swarm task (named `<service>.<slot>.<task id>`), by its service's name.
pub fn is_warp_by_name(pattern: &str, container: &Container) -> bool {
    glob::matches(pattern, &container.name)
        || container
            .labels
            .get(SWARM_SERVICE_LABEL)
            .is_some_and(|service| glob::matches(pattern, service))
}

/// The warps that carry a target, the first being the one whose address
/// its `via` entries name:
///
/// - one warp: that warp;
/// - a failover group: the first usable member in priority order, except
///   that a member not usable for the whole hold-down yet does not take
///   the traffic back from a usable active member (hysteresis against a
///   flapping warp);
/// - a spread group: every usable member in label order that steers over
///   the first one's network, except that a member not usable for the
///   whole hold-down yet joins only while it already carries flows, or
///   none of the active members is usable.
///
/// Fails closed when no member is usable, or the label cannot be read.
fn choose_warps<'g>(
    index: &Index<'_>,
    settings: &PlanSettings,
    target: &Container,
    label: &str,
    group: &Result<WarpGroup<'g>, String>,
) -> Result<Vec<(&'g str, ResolvedWarp)>, Unresolved> {
    let group = group.as_ref().map_err(|error| {
        let reason = BlockReason::InvalidLabel {
            label: settings.target_label.clone(),
            value: label.to_owned(),
            error: error.clone(),
        };
        (reason, None)
    })?;
    if let ([only], GroupMode::Failover) = (group.members.as_slice(), group.mode) {
        return resolve_warp(index, settings, target, only).map(|resolved| vec![(*only, resolved)]);
    }
    if group.members.iter().any(|name| name.is_empty()) {
        return Err((
            BlockReason::EmptyWarpName {
                label: settings.target_label.clone(),
            },
            None,
        ));
    }
    let mut usable = Vec::new();
    let mut unusable = Vec::new();
    let mut mac = None;
    for name in &group.members {
        match resolve_warp(index, settings, target, name) {
            Ok(resolved) => usable.push((*name, resolved)),
            Err((reason, target_mac)) => {
                mac = mac.or(target_mac);
                unusable.push(reason.to_string());
            }
        }
    }
    let failover = index.failover;
    // A spread target's active members are recorded joined by commas.
    let active: Vec<&str> = (failover.and_then(|f| f.active.get(&target.id)))
        .map(|names| names.split(',').collect())
        .unwrap_or_default();
    let active_usable = usable.iter().any(|(name, _)| active.contains(name));
    let ready =
        |name: &str| failover.is_none_or(|f| f.settled.as_ref().is_none_or(|s| s.contains(name)));
    let mut chosen = (usable.into_iter())
        .filter(|(name, _)| !active_usable || active.contains(name) || ready(name));
    let chosen: Vec<(&str, ResolvedWarp)> = match group.mode {
        GroupMode::Failover => chosen.next().into_iter().collect(),
        GroupMode::Spread => {
            let first = chosen.next();
            let network = first.as_ref().map(|(_, r)| r.network.clone());
            (first.into_iter())
                .chain(chosen.filter(|(_, r)| Some(&r.network) == network.as_ref()))
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err((
            BlockReason::NoWarpUsable {
                warps: group
                    .members
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect(),
                reasons: unusable,
            },
            mac,
        ));
    }
    Ok(chosen)
}

fn resolve_warp(
    index: &Index<'_>,
    settings: &PlanSettings,
    target: &Container,
    warp_name: &str,
) -> Result<ResolvedWarp, (BlockReason, Option<String>)> {
    let fail = |reason| Err((reason, None));
    if warp_name.is_empty() {
        return fail(BlockReason::EmptyWarpName {
            label: settings.target_label.clone(),
        });
    }
    let Some(warp) = index.warp(warp_name) else {
        return fail(BlockReason::WarpMissing {
            warp: warp_name.to_owned(),
        });
    };
    if !is_warp_by_name(&settings.warp_name_pattern, warp) {
        return fail(BlockReason::WarpNameMismatch {
            warp: warp.name.clone(),
            pattern: settings.warp_name_pattern.clone(),
        });
    }
    if warp.network_mode != NetworkMode::Own {
        return fail(BlockReason::WarpNetworkMode {
            warp: warp.name.clone(),
            mode: warp.network_mode.clone(),
        });
    }
    let network = match warp.labels.get(&settings.network_label) {
        Some(network) if warp.networks.contains_key(network.trim()) => network.trim().to_owned(),
        Some(network) => {
            return fail(BlockReason::UnknownNetwork {
                warp: warp.name.clone(),
                network: network.clone(),
                label: settings.network_label.clone(),
            });
        }
        None => {
            let mut names = warp.networks.keys();
            match (names.next(), names.next()) {
                (Some(only), None) => only.clone(),
                _ => {
                    return fail(BlockReason::AmbiguousNetwork {
                        warp: warp.name.clone(),
                        networks: warp.networks.keys().cloned().collect(),
                        label: settings.network_label.clone(),
                    });
                }
            }
        }
    };
    let Some(target_endpoint) = target.networks.get(&network) else {
        return fail(BlockReason::NotOnNetwork {
            warp: warp.name.clone(),
            network,
        });
    };
    let target_mac = target_endpoint.mac.clone();
    if !warp.running {
        return Err((
            BlockReason::WarpNotRunning {
                warp: warp.name.clone(),
            },
            target_mac,
        ));
    }
    // A warp with a healthcheck carries traffic only once Docker says it
    // is healthy: a VPN client that is starting may not have its tunnel
    // yet, and would forward what it gets by its default route.
    match warp.health {
        Health::Unhealthy => {
            return Err((
                BlockReason::WarpUnhealthy {
                    warp: warp.name.clone(),
                },
                target_mac,
            ));
        }
        Health::Starting => {
            return Err((
                BlockReason::WarpStarting {
                    warp: warp.name.clone(),
                },
                target_mac,
            ));
        }
        Health::None | Health::Healthy => {}
    }
    // A warp with a probe carries traffic only while its probe answers:
    // Docker's view says its process runs, not that its tunnel does.
    let no_probes = WarpProbes::new();
    let probes = index.probes.unwrap_or(&no_probes);
    if let Some(reason) = probe_check(settings, probes, warp).reason(settings, &warp.name) {
        return Err((reason, target_mac));
    }
    let endpoint = &warp.networks[&network];
    let mut warp_macs: Vec<String> = warp
        .networks
        .values()
        .filter_map(|e| e.mac.clone())
        .collect();
    warp_macs.sort();
    warp_macs.dedup();
    Ok(ResolvedWarp {
        warp_pid: warp.pid,
        warp_mac: endpoint.mac.clone(),
        warp_macs,
        network,
        via_v4: endpoint.ipv4,
        via_v6: endpoint.ipv6,
        target_mac,
    })
}

#[cfg(test)]
pub(crate) mod tests;
