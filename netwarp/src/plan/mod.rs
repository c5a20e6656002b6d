//! The pure planner: a snapshot of the containers plus the settings give
//! each target's desired policy. No Docker, no kernel; this is where most
//! of the unit tests live.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

mod capacity;
mod caps;
mod guard;
mod warp;

pub use capacity::{MAX_PREFIXES_KEY, RULES_CAPACITY_KEY, RuleCapacity};
pub use caps::{CapEnforcement, CapPlan, CapSettings};
pub use guard::{GuardPlan, plan_guards};
pub use warp::{WarpPlan, WarpState};

use crate::{
    glob,
    model::{Container, Health, NetworkMode, Rule, RuleError, World, parse_rules, short_reference},
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
}

/// Why a target is not steered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    EmptyWarpName {
        label: String,
    },
    WarpMissing {
        warp: String,
    },
    WarpNameMismatch {
        warp: String,
        pattern: String,
    },
    WarpNotRunning {
        warp: String,
    },
    WarpUnhealthy {
        warp: String,
    },
    WarpStarting {
        warp: String,
    },
    /// The warp has no namespace of its own on a Docker network (`host`,
    /// `none`, `container:`): it is refused as a warp.
    WarpNetworkMode {
        warp: String,
        mode: NetworkMode,
    },
    AmbiguousNetwork {
        warp: String,
        networks: Vec<String>,
        label: String,
    },
    UnknownNetwork {
        warp: String,
        network: String,
        label: String,
    },
    NotOnNetwork {
        warp: String,
        network: String,
    },
    InvalidRules {
        label: String,
        value: String,
        error: RuleError,
    },
    /// The rules list more destination prefixes than
    /// `limits.max_prefixes_per_target`: everything is blocked.
    TooManyPrefixes {
        count: usize,
        limit: usize,
    },
    /// The eBPF rule trie of a family has no room for the target's rows
    /// (and what it adds to its networks' guards): everything is blocked.
    Capacity {
        map: &'static str,
        needed: usize,
        used: usize,
        capacity: usize,
    },
}

impl BlockReason {
    /// Blocked entirely by a limit (prefixes, capacity), not by its warp.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::TooManyPrefixes { .. } | Self::Capacity { .. })
    }

    /// A short name for status and metrics: `capacity` and
    /// `too_many_prefixes` for the limits, `configuration` for a bad label,
    /// `warp` for everything about the warp.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooManyPrefixes { .. } => "too_many_prefixes",
            Self::Capacity { .. } => "capacity",
            Self::InvalidRules { .. } | Self::EmptyWarpName { .. } => "configuration",
            _ => "warp",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyWarpName { label } => {
                write!(
                    f,
                    "label {label} is empty; set it to the warp container's name"
                )
            }
            Self::WarpMissing { warp } => write!(f, "warp container {warp} does not exist"),
            Self::WarpNameMismatch { warp, pattern } => write!(
                f,
                "{warp} does not match the warp name pattern `{pattern}`, so it is not a warp container"
            ),
            Self::WarpNotRunning { warp } => write!(f, "warp container {warp} is not running"),
            Self::WarpUnhealthy { warp } => write!(f, "warp container {warp} is unhealthy"),
            Self::WarpStarting { warp } => write!(
                f,
                "warp container {warp} is starting: its healthcheck has not passed yet"
            ),
            Self::WarpNetworkMode { warp, mode } => write!(
                f,
                "warp container {warp} runs with --network {mode}, so netwarp refuses it as a \
                 warp: a warp needs a namespace of its own on the targets' Docker network; \
                 recreate it on that network"
            ),
            Self::AmbiguousNetwork {
                warp,
                networks,
                label,
            } if networks.is_empty() => write!(
                f,
                "warp container {warp} is on no network (disconnected?); connect it to the \
                 targets' network (the label {label} chooses one if it has several)"
            ),
            Self::AmbiguousNetwork {
                warp,
                networks,
                label,
            } => write!(
                f,
                "warp container {warp} is on several networks ({}); set the label {label} on it to choose one",
                networks.join(", ")
            ),
            Self::UnknownNetwork {
                warp,
                network,
                label,
            } => write!(
                f,
                "label {label}={network} on {warp} names a network it is not attached to"
            ),
            Self::NotOnNetwork { warp, network } => write!(
                f,
                "the target is not attached to network {network}, which warp container {warp} uses"
            ),
            Self::InvalidRules {
                label,
                value,
                error,
            } => write!(f, "label {label}=`{value}` is invalid: {error}"),
            Self::TooManyPrefixes { count, limit } => write!(
                f,
                "its rules list {count} destination prefixes, more than the limit of {limit} \
                 ({MAX_PREFIXES_KEY}), so all its traffic is blocked; merge the prefixes into \
                 fewer, shorter ones, split the rules across containers, or raise \
                 {MAX_PREFIXES_KEY}"
            ),
            Self::Capacity {
                map,
                needed,
                used,
                capacity,
            } => write!(
                f,
                "capacity: the eBPF map {map} cannot take the {needed} entries this target \
                 needs (its rules and its networks' guards): {used} of {capacity} are in use \
                 or reserved, so all its traffic is blocked; raise {RULES_CAPACITY_KEY} \
                 (restart) or give it fewer prefixes"
            ),
        }
    }
}

/// Why netwarp will not program a target's namespace at all: it is not
/// the target's own, or there is nothing in it to steer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// `--network host`: the namespace is the host's.
    HostNetwork { container: String },
    /// `--network none`: only a loopback interface.
    NoNetwork { container: String },
    /// `--network container:X`, and X is no running container.
    SharesMissing { container: String, other: String },
    /// `--network container:X`, and X is not a target.
    SharesUnmanaged { container: String, other: String },
    /// `--network container:X`, and X is a warp.
    SharesWarp { container: String, other: String },
    /// `--network container:X`, and X is a target of another warp, or
    /// with other rules.
    SharesOtherPolicy {
        container: String,
        other: String,
        target_label: String,
        rules_label: String,
    },
    /// `--network container:X`, and X has no namespace of its own either.
    SharesIndirect {
        container: String,
        other: String,
        mode: NetworkMode,
    },
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostNetwork { container } => write!(
                f,
                "{container} runs with --network host: its namespace is the host's, which \
                 netwarp never programs, so its traffic is neither steered nor blocked; run it \
                 on the warp's Docker network instead"
            ),
            Self::NoNetwork { container } => write!(
                f,
                "{container} runs with --network none: it has no network, so there is nothing \
                 to steer"
            ),
            Self::SharesMissing { container, other } => write!(
                f,
                "{container} runs with --network container:{other}, and {other} is not running: \
                 netwarp does not program a namespace it cannot attribute; run {container} on \
                 the warp's Docker network instead"
            ),
            Self::SharesUnmanaged { container, other } => write!(
                f,
                "{container} shares the namespace of {other} (--network container:{other}), \
                 which is not a netwarp target, and netwarp never programs another \
                 container's namespace; label {other} as a target of the same warp, or run \
                 {container} on the warp's Docker network"
            ),
            Self::SharesWarp { container, other } => write!(
                f,
                "{container} shares the namespace of warp container {other} \
                 (--network container:{other}), and netwarp never programs a warp's \
                 namespace; run {container} on the warp's Docker network instead"
            ),
            Self::SharesOtherPolicy {
                container,
                other,
                target_label,
                rules_label,
            } => write!(
                f,
                "{container} shares the namespace of target {other} \
                 (--network container:{other}), which has another warp or other rules, and \
                 netwarp programs one policy per namespace; give both the same {target_label} \
                 and {rules_label} labels"
            ),
            Self::SharesIndirect {
                container,
                other,
                mode,
            } => write!(
                f,
                "{container} shares the namespace of {other} (--network container:{other}), \
                 which itself runs with --network {mode}; netwarp never programs a namespace \
                 that is not its target's own: run {container} on the warp's Docker network"
            ),
        }
    }
}

/// The action for one rule's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Route via the warp container's address (same family as the rule).
    Via(IpAddr),
    /// Drop, because the warp is unusable or has no address of this family.
    Block,
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
}

impl TargetState {
    /// Every state's name, in the order metrics list them.
    pub const NAMES: [&'static str; 4] = ["steered", "blocked", "bypassed", "refused"];

    /// The state's name in status, metrics and the dry-run record.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Steered { .. } => "steered",
            Self::Blocked(_) => "blocked",
            Self::Bypassed(_) => "bypassed",
            Self::Refused(_) => "refused",
        }
    }
}

/// The desired policy for one target container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPlan {
    pub id: String,
    pub name: String,
    pub pid: Option<u32>,
    /// The warp container named by the target label.
    pub warp: String,
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
    /// Set when the target runs in the namespace of this other target
    /// (`--network container:X`) with the same warp and rules: the state
    /// and entries are X's, and only X's plan is programmed (`pid` is
    /// `None`), so the namespace is never programmed twice.
    pub shares_namespace_of: Option<String>,
}

impl TargetPlan {
    /// A note on how a shared namespace is served, for status and logs.
    pub fn sharing_note(&self) -> Option<String> {
        let other = self.shares_namespace_of.as_ref()?;
        let how = match &self.state {
            TargetState::Steered { .. } => "steers",
            TargetState::Blocked(_) => "blocks",
            TargetState::Bypassed(_) => "bypasses",
            TargetState::Refused(_) => return None,
        };
        Some(format!(
            "shares the namespace of {other}, which netwarp {how}"
        ))
    }
}

/// The plan for every running target, sorted by container id.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    pub targets: Vec<TargetPlan>,
    /// Every running container with a cap, sorted by container id.
    pub caps: Vec<CapPlan>,
    /// One bridge guard per network that carries a target, by network name.
    pub guards: Vec<GuardPlan>,
    /// Every warp-named container and every warp a target names, by name.
    pub warps: Vec<WarpPlan>,
}

/// Computes every running target's desired policy.
pub fn plan(world: &World, settings: &PlanSettings) -> Plan {
    let mut targets: Vec<TargetPlan> = world
        .containers
        .iter()
        .filter(|c| c.running)
        .filter_map(|c| {
            let warp = c.labels.get(&settings.target_label)?;
            Some(plan_target(world, settings, c, warp.trim()))
        })
        .collect();
    targets.sort_by(|a, b| a.id.cmp(&b.id));
    // Refuses, in eBPF mode, the targets the rule tries cannot hold.
    let guards = capacity::admit(world, settings, &mut targets);
    Plan {
        warps: warp::plan_warps(world, settings, &targets),
        targets,
        caps: caps::plan_caps(world, settings),
        guards,
    }
}

fn plan_target(
    world: &World,
    settings: &PlanSettings,
    target: &Container,
    warp: &str,
) -> TargetPlan {
    let mut plan = TargetPlan {
        id: target.id.clone(),
        name: target.name.clone(),
        pid: target.pid,
        warp: warp.to_owned(),
        state: TargetState::Blocked(BlockReason::WarpMissing {
            warp: warp.to_owned(),
        }),
        entries: Vec::new(),
        mac_on_network: None,
        warp_pid: None,
        warp_mac: None,
        warp_macs: Vec::new(),
        addresses: addresses(target),
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
            return match shared_namespace(world, settings, target, warp, reference) {
                // The owner's plan programs the namespace; this one
                // reports it and hands the dataplane no pid.
                Ok(owner) => TargetPlan {
                    pid: None,
                    shares_namespace_of: Some(owner.name),
                    state: owner.state,
                    entries: owner.entries,
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
        // Only the target's MAC is needed: its veth gets the block.
        plan.mac_on_network = match resolve_warp(world, settings, target, warp) {
            Ok(resolved) => resolved.target_mac,
            Err((_, mac)) => mac,
        };
        let limit = settings.max_prefixes_per_target;
        return capacity::block_everything(plan, BlockReason::TooManyPrefixes { count, limit });
    }
    match resolve_warp(world, settings, target, warp) {
        Ok(resolved) => {
            plan.mac_on_network = resolved.target_mac;
            plan.warp_pid = resolved.warp_pid;
            plan.warp_mac = resolved.warp_mac;
            plan.warp_macs = resolved.warp_macs;
            plan.entries = rules
                .iter()
                .map(|rule| Entry {
                    rule: *rule,
                    action: match (rule.destination.is_ipv6(), resolved.via_v4, resolved.via_v6) {
                        (false, Some(v4), _) => Action::Via(IpAddr::V4(v4)),
                        (true, _, Some(v6)) => Action::Via(IpAddr::V6(v6)),
                        // No address of this family on the warp: fail closed.
                        _ => Action::Block,
                    },
                })
                .collect();
            plan.entries.sort();
            plan.entries.dedup();
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

/// Every address of `container`, on all its networks, sorted.
fn addresses(container: &Container) -> Vec<IpAddr> {
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

/// A target's rules: its rules label, else the global rules.
fn target_rules(settings: &PlanSettings, target: &Container) -> Result<Vec<Rule>, BlockReason> {
    match target.labels.get(&settings.rules_label) {
        Some(value) => parse_rules(value).map_err(|error| BlockReason::InvalidRules {
            label: settings.rules_label.clone(),
            value: value.clone(),
            error,
        }),
        None => Ok(settings.global_rules.clone()),
    }
}

/// `target` runs in the namespace `reference` names. That is served only
/// when it belongs to a running target in its own namespace with the same
/// warp and rules: then that target's plan (which is programmed) is the
/// answer. Every other owner is refused.
fn shared_namespace(
    world: &World,
    settings: &PlanSettings,
    target: &Container,
    warp: &str,
    reference: &str,
) -> Result<TargetPlan, RefuseReason> {
    let container = target.name.clone();
    let Some(owner) = world
        .containers
        .iter()
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
    Ok(plan_target(world, settings, owner, owner_warp.trim()))
}

fn blocked(
    mut plan: TargetPlan,
    settings: &PlanSettings,
    rules: &[Rule],
    reason: BlockReason,
) -> TargetPlan {
    match settings.on_warp_down {
        OnWarpDown::Block => {
            plan.entries = Entry::all(rules, Action::Block);
            plan.state = TargetState::Blocked(reason);
        }
        OnWarpDown::Bypass => {
            plan.entries.clear();
            plan.state = TargetState::Bypassed(reason);
        }
    }
    plan
}

struct ResolvedWarp {
    network: String,
    warp_pid: Option<u32>,
    warp_mac: Option<String>,
    warp_macs: Vec<String>,
    via_v4: Option<Ipv4Addr>,
    via_v6: Option<Ipv6Addr>,
    target_mac: Option<String>,
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

/// The container a target's warp label names: the container of that name,
/// or else a task of the Swarm service of that name on this node (a global
/// service has one; of several, a running one, then the first by name, so
/// that every pass picks the same).
pub fn find_warp<'a>(world: &'a World, name: &str) -> Option<&'a Container> {
    world
        .containers
        .iter()
        .find(|c| c.name == name)
        .or_else(|| {
            world
                .containers
                .iter()
                .filter(|c| c.labels.get(SWARM_SERVICE_LABEL).is_some_and(|s| s == name))
                .min_by(|a, b| (!a.running, &a.name).cmp(&(!b.running, &b.name)))
        })
}

fn resolve_warp(
    world: &World,
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
    let Some(warp) = find_warp(world, warp_name) else {
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
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Endpoint;

    /// Settings with the default labels and `rules` as the global rules.
    pub(super) fn settings(rules: &str) -> PlanSettings {
        PlanSettings {
            warp_name_pattern: "warp-*".into(),
            target_label: "netwarp.target".into(),
            network_label: "netwarp.network".into(),
            rules_label: "netwarp.rules".into(),
            global_rules: parse_rules(rules).unwrap(),
            on_warp_down: OnWarpDown::Block,
            caps: CapSettings::default(),
            max_prefixes_per_target: 4096,
            rule_capacity: None,
        }
    }

    pub(super) fn endpoint(v4: &str, v6: Option<&str>) -> Endpoint {
        Endpoint {
            ipv4: Some(v4.parse().unwrap()),
            ipv6: v6.map(|v| v.parse().unwrap()),
            mac: Some(format!("02:42:{v4}")),
            network_id: None,
        }
    }

    pub(super) fn container(
        name: &str,
        labels: &[(&str, &str)],
        networks: &[(&str, Endpoint)],
    ) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            running: true,
            health: Health::None,
            pid: Some(100),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: networks
                .iter()
                .map(|(n, e)| (n.to_string(), e.clone()))
                .collect::<BTreeMap<_, _>>(),
            network_mode: NetworkMode::Own,
        }
    }

    fn warp() -> Container {
        container("warp-vpn", &[], &[("net", endpoint("172.20.0.2", None))])
    }

    fn target(labels: &[(&str, &str)]) -> Container {
        let mut all = vec![("netwarp.target", "warp-vpn")];
        all.extend_from_slice(labels);
        container("app", &all, &[("net", endpoint("172.20.0.3", None))])
    }

    fn only_target(world: &World, settings: &PlanSettings) -> TargetPlan {
        let plan = plan(world, settings);
        assert_eq!(plan.targets.len(), 1, "{plan:?}");
        plan.targets.into_iter().next().unwrap()
    }

    fn via(ip: &str) -> Action {
        Action::Via(ip.parse().unwrap())
    }

    #[test]
    fn steers_global_rules_through_the_warp() {
        let world = World {
            containers: vec![warp(), target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert_eq!(
            t.state,
            TargetState::Steered {
                network: "net".into(),
                via_v4: Some("172.20.0.2".parse().unwrap()),
                via_v6: None
            }
        );
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.entries[0].action, via("172.20.0.2"));
        assert_eq!(t.mac_on_network.as_deref(), Some("02:42:172.20.0.3"));
    }

    /// A task container of the Swarm service `service`, as Swarm names it.
    fn swarm_task(service: &str, task: &str, ip: &str) -> Container {
        container(
            &format!("{service}.1.{task}"),
            &[(SWARM_SERVICE_LABEL, service)],
            &[("net", endpoint(ip, None))],
        )
    }

    #[test]
    fn a_swarm_service_name_finds_its_task_and_the_pattern_matches_the_service() {
        let mut settings = settings("203.0.113.0/24");
        settings.warp_name_pattern = "vpn_warp*".into();
        let mut target = target(&[]);
        target
            .labels
            .insert("netwarp.target".into(), "vpn_warp".into());
        let world = World {
            containers: vec![swarm_task("vpn_warp", "x7k2", "172.20.0.7"), target.clone()],
        };
        let t = only_target(&world, &settings);
        assert_eq!(t.entries[0].action, via("172.20.0.7"), "{t:?}");

        // A task of a service outside the pattern is no warp.
        let other = World {
            containers: vec![swarm_task("vpn_other", "x7k2", "172.20.0.7"), {
                let mut t = target.clone();
                t.labels.insert("netwarp.target".into(), "vpn_other".into());
                t
            }],
        };
        assert_eq!(
            only_target(&other, &settings).state,
            TargetState::Blocked(BlockReason::WarpNameMismatch {
                warp: "vpn_other.1.x7k2".into(),
                pattern: "vpn_warp*".into(),
            })
        );
    }

    #[test]
    fn of_several_swarm_tasks_a_running_one_is_chosen_and_a_name_beats_a_service() {
        let mut exited = swarm_task("warp-svc", "a111", "172.20.0.7");
        exited.running = false;
        let running = swarm_task("warp-svc", "b222", "172.20.0.8");
        let world = World {
            containers: vec![exited.clone(), running.clone()],
        };
        assert_eq!(find_warp(&world, "warp-svc"), Some(&running));
        let mut both_running = exited.clone();
        both_running.running = true;
        let world = World {
            containers: vec![running.clone(), both_running.clone()],
        };
        assert_eq!(
            find_warp(&world, "warp-svc"),
            Some(&both_running),
            "first by name"
        );
        let named = container("warp-svc", &[], &[("net", endpoint("172.20.0.9", None))]);
        let world = World {
            containers: vec![running, named.clone()],
        };
        assert_eq!(find_warp(&world, "warp-svc"), Some(&named));
        assert_eq!(find_warp(&world, "warp-none"), None);
    }

    #[test]
    fn a_swarm_warp_guards_its_other_networks_for_its_targets() {
        let mut target = target(&[]);
        target
            .labels
            .insert("netwarp.target".into(), "warp-svc".into());
        let mut warp = swarm_task("warp-svc", "x7k2", "172.20.0.7");
        warp.networks
            .insert("outer".into(), endpoint("172.30.0.7", None));
        warp.labels.insert("netwarp.network".into(), "net".into());
        let world = World {
            containers: vec![warp, target],
        };
        let guards = plan_guards(&world, &settings("203.0.113.0/24"));
        let outer = guards.iter().find(|g| g.network == "outer");
        assert!(
            outer.is_some_and(|g| g
                .forwarded
                .iter()
                .any(|(source, _)| *source == "172.20.0.3".parse::<IpAddr>().unwrap())),
            "the target's address is not blocked as a source on the warp's other network: \
             {guards:?}"
        );
    }

    #[test]
    fn unlabelled_and_stopped_containers_are_not_targets() {
        let plain = container("plain", &[], &[("net", endpoint("172.20.0.9", None))]);
        let mut stopped = target(&[]);
        stopped.running = false;
        let world = World {
            containers: vec![warp(), plain, stopped],
        };
        assert!(plan(&world, &settings("203.0.113.0/24")).targets.is_empty());
    }

    #[test]
    fn rules_label_overrides_the_global_rules() {
        let world = World {
            containers: vec![
                warp(),
                target(&[("netwarp.rules", "198.51.100.0/24,tcp:443,udp:5000-5100")]),
            ],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        let rules: Vec<String> = t.entries.iter().map(|e| e.rule.to_string()).collect();
        assert_eq!(
            rules,
            ["198.51.100.0/24 tcp:443", "198.51.100.0/24 udp:5000-5100"]
        );
    }

    #[test]
    fn a_missing_warp_blocks() {
        let world = World {
            containers: vec![target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert_eq!(
            t.state,
            TargetState::Blocked(BlockReason::WarpMissing {
                warp: "warp-vpn".into()
            })
        );
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.entries[0].action, Action::Block);
    }

    #[test]
    fn a_stopped_warp_blocks_and_keeps_the_target_mac() {
        let mut w = warp();
        w.running = false;
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::WarpNotRunning { .. })
        ));
        assert!(t.entries.iter().all(|e| e.action == Action::Block));
        assert!(t.mac_on_network.is_some());
    }

    #[test]
    fn an_unhealthy_warp_counts_as_down() {
        let mut w = warp();
        w.health = Health::Unhealthy;
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::WarpUnhealthy { .. })
        ));
    }

    #[test]
    fn a_healthy_warp_or_one_without_a_healthcheck_is_up() {
        for health in [Health::None, Health::Healthy] {
            let mut w = warp();
            w.health = health;
            let world = World {
                containers: vec![w, target(&[])],
            };
            let t = only_target(&world, &settings("203.0.113.0/24"));
            assert!(matches!(t.state, TargetState::Steered { .. }), "{health:?}");
        }
    }

    #[test]
    fn a_starting_warp_counts_as_down() {
        let mut w = warp();
        w.health = Health::Starting;
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::WarpStarting { .. })
        ));
        assert!(t.entries.iter().all(|e| e.action == Action::Block));
        assert_eq!(
            TargetState::Blocked(BlockReason::WarpStarting {
                warp: "warp-vpn".into()
            }),
            t.state,
        );
    }

    #[test]
    fn bypass_leaves_traffic_alone_while_the_warp_is_down() {
        let mut s = settings("203.0.113.0/24");
        s.on_warp_down = OnWarpDown::Bypass;
        let world = World {
            containers: vec![target(&[])],
        };
        let t = only_target(&world, &s);
        assert!(matches!(
            t.state,
            TargetState::Bypassed(BlockReason::WarpMissing { .. })
        ));
        assert!(t.entries.is_empty());
    }

    #[test]
    fn ambiguous_networks_block_and_name_every_network() {
        let w = container(
            "warp-vpn",
            &[],
            &[
                ("front", endpoint("172.21.0.2", None)),
                ("net", endpoint("172.20.0.2", None)),
            ],
        );
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        let TargetState::Blocked(reason) = &t.state else {
            panic!("{t:?}")
        };
        assert_eq!(
            reason.to_string(),
            "warp container warp-vpn is on several networks (front, net); set the label \
             netwarp.network on it to choose one"
        );
    }

    #[test]
    fn the_network_label_resolves_the_ambiguity() {
        let w = container(
            "warp-vpn",
            &[("netwarp.network", "net")],
            &[
                ("front", endpoint("172.21.0.2", None)),
                ("net", endpoint("172.20.0.2", None)),
            ],
        );
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert_eq!(t.entries[0].action, via("172.20.0.2"));
    }

    #[test]
    fn a_network_label_naming_a_foreign_network_blocks() {
        let w = container(
            "warp-vpn",
            &[("netwarp.network", "elsewhere")],
            &[("net", endpoint("172.20.0.2", None))],
        );
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::UnknownNetwork { .. })
        ));
    }

    #[test]
    fn a_target_off_the_warps_network_blocks() {
        let app = container(
            "app",
            &[("netwarp.target", "warp-vpn")],
            &[("other", endpoint("172.30.0.3", None))],
        );
        let world = World {
            containers: vec![warp(), app],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::NotOnNetwork { .. })
        ));
    }

    #[test]
    fn ipv6_rules_block_when_the_warp_has_no_ipv6_address() {
        let world = World {
            containers: vec![warp(), target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24,2001:db8::/32"));
        let actions: Vec<(String, Action)> = t
            .entries
            .iter()
            .map(|e| (e.rule.destination.to_string(), e.action))
            .collect();
        assert!(actions.contains(&("203.0.113.0/24".into(), via("172.20.0.2"))));
        assert!(actions.contains(&("2001:db8::/32".into(), Action::Block)));
    }

    #[test]
    fn ipv6_rules_steer_when_the_warp_has_ipv6() {
        let w = container(
            "warp-vpn",
            &[],
            &[("net", endpoint("172.20.0.2", Some("fd00:20::2")))],
        );
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("2001:db8::/32"));
        assert_eq!(t.entries[0].action, via("fd00:20::2"));
    }

    #[test]
    fn a_warp_outside_the_name_pattern_is_refused() {
        let w = container("vpn", &[], &[("net", endpoint("172.20.0.2", None))]);
        let app = container(
            "app",
            &[("netwarp.target", "vpn")],
            &[("net", endpoint("172.20.0.3", None))],
        );
        let world = World {
            containers: vec![w, app],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(
            t.state,
            TargetState::Blocked(BlockReason::WarpNameMismatch { .. })
        ));
    }

    #[test]
    fn malformed_labels_block_on_the_global_rules_and_name_the_label() {
        let cases = [
            (
                "netwarp.rules",
                "203.0.113.0/33",
                "label netwarp.rules=`203.0.113.0/33` is invalid: `203.0.113.0/33`: prefix length 33 is longer than 32",
            ),
            (
                "netwarp.rules",
                "203.0.113.0/24,tcp:9000-80",
                "label netwarp.rules=`203.0.113.0/24,tcp:9000-80` is invalid: port range `9000-80` is empty: its start is above its end",
            ),
            (
                "netwarp.rules",
                "203.0.113.0/24,gre",
                "label netwarp.rules=`203.0.113.0/24,gre` is invalid: unknown protocol `gre` (expected tcp, udp or icmp)",
            ),
            (
                "netwarp.target",
                " ",
                "label netwarp.target is empty; set it to the warp container's name",
            ),
        ];
        for (label, value, message) in cases {
            let app = container(
                "app",
                &[("netwarp.target", "warp-vpn"), (label, value)],
                &[("net", endpoint("172.20.0.3", None))],
            );
            let world = World {
                containers: vec![warp(), app],
            };
            let t = only_target(&world, &settings("192.0.2.0/24"));
            let TargetState::Blocked(reason) = &t.state else {
                panic!("{label}={value}: {t:?}")
            };
            assert_eq!(reason.to_string(), message);
            assert_eq!(t.entries.len(), 1, "{label}={value}");
            assert_eq!(t.entries[0].action, Action::Block);
        }
    }

    #[test]
    fn one_bad_target_does_not_affect_another() {
        let bad = container(
            "bad",
            &[
                ("netwarp.target", "warp-vpn"),
                ("netwarp.rules", "nonsense"),
            ],
            &[("net", endpoint("172.20.0.4", None))],
        );
        let world = World {
            containers: vec![warp(), bad, target(&[])],
        };
        let plan = plan(&world, &settings("203.0.113.0/24"));
        assert_eq!(plan.targets.len(), 2);
        let good = plan.targets.iter().find(|t| t.name == "app").unwrap();
        assert!(matches!(good.state, TargetState::Steered { .. }));
    }

    #[test]
    fn a_recreated_warp_with_a_new_ip_is_followed() {
        let mut w = warp();
        let world = World {
            containers: vec![w.clone(), target(&[])],
        };
        let before = only_target(&world, &settings("203.0.113.0/24"));
        w.networks
            .insert("net".into(), endpoint("172.20.0.7", None));
        let world = World {
            containers: vec![w, target(&[])],
        };
        let after = only_target(&world, &settings("203.0.113.0/24"));
        assert_eq!(before.entries[0].action, via("172.20.0.2"));
        assert_eq!(after.entries[0].action, via("172.20.0.7"));
    }

    #[test]
    fn planning_is_deterministic_whatever_the_listing_order() {
        let a = World {
            containers: vec![warp(), target(&[]), {
                let mut c = target(&[]);
                c.id = "id-b".into();
                c.name = "b".into();
                c
            }],
        };
        let mut b = a.clone();
        b.containers.reverse();
        assert_eq!(
            plan(&a, &settings("203.0.113.0/24")),
            plan(&b, &settings("203.0.113.0/24"))
        );
    }

    fn with_mode(mut c: Container, mode: NetworkMode) -> Container {
        // Docker lists no endpoints for a container in another's namespace.
        if matches!(mode, NetworkMode::Container(_)) {
            c.networks.clear();
        }
        c.network_mode = mode;
        c
    }

    fn refusal(t: &TargetPlan) -> String {
        let TargetState::Refused(reason) = &t.state else {
            panic!("not refused: {t:?}")
        };
        reason.to_string()
    }

    /// Nothing of a refused target reaches a dataplane.
    fn assert_untouched(t: &TargetPlan) {
        assert_eq!(t.pid, None, "{t:?}");
        assert!(t.entries.is_empty(), "{t:?}");
        assert_eq!(t.mac_on_network, None);
        assert_eq!(t.warp_pid, None);
    }

    #[test]
    fn a_host_network_target_is_refused_and_gets_no_pid() {
        let app = with_mode(target(&[("netwarp.rules", "0.0.0.0/0")]), NetworkMode::Host);
        let world = World {
            containers: vec![warp(), app],
        };
        for on_warp_down in [OnWarpDown::Block, OnWarpDown::Bypass] {
            let mut s = settings("203.0.113.0/24");
            s.on_warp_down = on_warp_down;
            let t = only_target(&world, &s);
            assert_untouched(&t);
            assert_eq!(t.state.name(), "refused");
            let reason = refusal(&t);
            assert!(
                reason.starts_with("app runs with --network host"),
                "{reason}"
            );
            assert!(
                reason.contains("run it on the warp's Docker network"),
                "{reason}"
            );
            assert!(plan(&world, &s).guards.is_empty(), "no guard for it");
        }
    }

    #[test]
    fn a_target_without_network_has_nothing_to_steer() {
        let app = with_mode(target(&[]), NetworkMode::NoNetwork);
        let world = World {
            containers: vec![warp(), app],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert_untouched(&t);
        assert_eq!(
            refusal(&t),
            "app runs with --network none: it has no network, so there is nothing to steer"
        );
    }

    fn sharing(other: &str, labels: &[(&str, &str)]) -> Container {
        let mut all = vec![("netwarp.target", "warp-vpn")];
        all.extend_from_slice(labels);
        let mut c = container("side", &all, &[]);
        c.network_mode = NetworkMode::Container(other.into());
        c
    }

    fn find<'a>(plan: &'a Plan, name: &str) -> &'a TargetPlan {
        plan.targets.iter().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn a_target_in_a_steered_targets_namespace_is_served_by_it_once() {
        // Docker records the owner's full id; a name or prefix works too.
        for reference in ["id-app", "app", "id-a"] {
            let world = World {
                containers: vec![warp(), target(&[]), sharing(reference, &[])],
            };
            let p = plan(&world, &settings("203.0.113.0/24"));
            let owner = find(&p, "app");
            let side = find(&p, "side");
            assert!(matches!(owner.state, TargetState::Steered { .. }));
            assert_eq!(owner.pid, Some(100), "the owner programs the namespace");
            assert_eq!(side.state, owner.state, "{reference}");
            assert_eq!(side.entries, owner.entries);
            assert_eq!(side.pid, None, "never programmed twice");
            assert_eq!(side.mac_on_network, None);
            assert_eq!(side.warp_pid, None);
            assert_eq!(side.shares_namespace_of.as_deref(), Some("app"));
            assert_eq!(
                side.sharing_note().as_deref(),
                Some("shares the namespace of app, which netwarp steers")
            );
        }
        // The same rules given explicitly (in another order) are the same.
        let world = World {
            containers: vec![
                warp(),
                target(&[("netwarp.rules", "198.51.100.0/24,203.0.113.0/24")]),
                sharing(
                    "app",
                    &[("netwarp.rules", "203.0.113.0/24, 198.51.100.0/24")],
                ),
            ],
        };
        let p = plan(&world, &settings("192.0.2.0/24"));
        assert_eq!(find(&p, "side").shares_namespace_of.as_deref(), Some("app"));
        // While the warp is down the owner's block serves both.
        let world = World {
            containers: vec![target(&[]), sharing("id-app", &[])],
        };
        let p = plan(&world, &settings("203.0.113.0/24"));
        let side = find(&p, "side");
        assert!(matches!(side.state, TargetState::Blocked(_)));
        assert_eq!(side.pid, None);
        assert_eq!(
            side.sharing_note().as_deref(),
            Some("shares the namespace of app, which netwarp blocks")
        );
    }

    #[test]
    fn every_other_shared_namespace_is_refused() {
        let plain = container("plain", &[], &[("net", endpoint("172.20.0.9", None))]);
        let other_warp = container("warp-b", &[], &[("net", endpoint("172.20.0.8", None))]);
        let elsewhere = container(
            "elsewhere",
            &[("netwarp.target", "warp-b")],
            &[("net", endpoint("172.20.0.7", None))],
        );
        let mut host = target(&[]);
        host.name = "hosted".into();
        host.id = "id-hosted".into();
        host.network_mode = NetworkMode::Host;
        type Case<'a> = (Container, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (plain.clone(), vec![], "which is not a netwarp target"),
            (
                warp(),
                vec![],
                "shares the namespace of warp container warp-vpn",
            ),
            (
                elsewhere.clone(),
                vec![],
                "which has another warp or other rules",
            ),
            (
                target(&[]),
                vec![("netwarp.rules", "198.51.100.0/24")],
                "which has another warp or other rules",
            ),
            (
                target(&[]),
                vec![("netwarp.rules", "nonsense")],
                "which has another warp or other rules",
            ),
            (host, vec![], "which itself runs with --network host"),
        ];
        for (owner, labels, expected) in cases {
            let reference = owner.id.clone();
            let world = World {
                containers: vec![
                    warp(),
                    other_warp.clone(),
                    owner,
                    sharing(&reference, &labels),
                ],
            };
            let p = plan(&world, &settings("203.0.113.0/24"));
            let side = find(&p, "side");
            assert_untouched(side);
            let reason = refusal(side);
            assert!(reason.contains(expected), "{reason} (want {expected})");
            assert!(reason.starts_with("side "), "names the container: {reason}");
        }
        // A missing or stopped owner.
        let mut stopped = plain;
        stopped.running = false;
        for containers in [vec![warp()], vec![warp(), stopped]] {
            let mut containers = containers;
            containers.push(sharing("id-plain", &[]));
            let p = plan(&World { containers }, &settings("203.0.113.0/24"));
            let side = find(&p, "side");
            assert_untouched(side);
            assert!(
                refusal(side).contains("id-plain is not running"),
                "{}",
                refusal(side)
            );
        }
    }

    #[test]
    fn a_host_network_warp_is_refused_and_its_targets_block() {
        for mode in [
            NetworkMode::Host,
            NetworkMode::NoNetwork,
            NetworkMode::Container("x".into()),
        ] {
            let w = with_mode(warp(), mode.clone());
            let world = World {
                containers: vec![w, target(&[])],
            };
            let t = only_target(&world, &settings("203.0.113.0/24"));
            let TargetState::Blocked(reason) = &t.state else {
                panic!("{mode:?}: {t:?}")
            };
            assert_eq!(
                *reason,
                BlockReason::WarpNetworkMode {
                    warp: "warp-vpn".into(),
                    mode: mode.clone()
                }
            );
            assert!(
                reason
                    .to_string()
                    .starts_with(&format!("warp container warp-vpn runs with --network {mode}, so netwarp refuses it as a warp")),
                "{reason}"
            );
            assert_eq!(t.warp_pid, None, "the warp's namespace is never entered");
            assert!(t.entries.iter().all(|e| e.action == Action::Block));
            assert_eq!(
                t.pid,
                Some(100),
                "the target's own namespace gets the block"
            );
        }
    }
}
