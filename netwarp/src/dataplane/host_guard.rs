//! The bridge guard of the `routes` dataplane: policy rules and
//! netwarp-owned routing tables in the host's own network namespace,
//! through rtnetlink.
//!
//! A target that (re)starts sends before netwarp has programmed its
//! namespace; its routed traffic enters the host through its network's
//! bridge. For each guarded bridge the host gets, per family in use:
//!
//! ```text
//! 5000: iif BRIDGE from ALLOWED/32 goto 5002      (one per allowed source)
//! 5001: iif BRIDGE [ipproto P] [dport R] lookup GUARD_TABLE
//!                                   (one per selector group)
//! 5001: iif BRIDGE from TARGET [ipproto P] [dport R] lookup GUARD_TABLE
//!                                   (a warp's untunnelled forwards, see below)
//! 5002: nop                                        (the goto's landing point)
//! ```
//!
//! Each `lookup` rule has a table of its own (one per bridge, source and
//! selector group) holding the group's prefixes as `prohibit` routes: a
//! packet to one of them is refused, any other finds no route there and
//! goes on to the host's next rule (see [`super::tables`]). So the host's
//! rule list, which the kernel walks for every routed packet, holds a
//! handful of rules per guarded network however many prefixes the labels
//! list.
//!
//! Every network a warp is on (its tunnel's network too) also refuses its
//! targets' addresses as sources toward their prefixes: a VPN client whose
//! tunnel is down forwards what it gets by its default route, unchanged.
//!
//! Known non-targets skip the block rules and continue with the host's own
//! rules; anyone else routed to a guarded prefix gets an ICMP "administratively
//! prohibited" at once. Traffic between containers of one bridge is switched,
//! never routed, so it never meets these rules; nor does traffic to the host's
//! own addresses (the `local` rule at 0 comes first).
//!
//! Ownership: netwarp's rules carry the protocol tag
//! [`NETWARP_PROTOCOL`](super::policy_rule::NETWARP_PROTOCOL)
//! and one of the three guard priorities; its routes carry the same tag in
//! a table of [`guard_tables`]: `0x57000000 + first priority * 0x1000`,
//! 4096 ids (`0x58388000`-`0x58388fff` for the default 5000), far from the
//! ids others use (`main` 254, Tailscale 52, wg-quick 51820, Docker none)
//! and apart for each netwarp instance (each has its own priorities).
//! netwarp lists and removes exactly those, and nothing else.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::RangeInclusive,
    sync::OnceLock,
};

use rtnetlink::{
    Handle,
    packet_route::rule::{RuleAction, RuleAttribute, RuleMessage},
};
use tracing::{debug, warn};

use super::{
    policy_rule::{
        OwnedRule, Selector, TaggedRule, dump_rules, match_selector, match_source, tagged_rule,
    },
    tables::{
        RouteAction, TablesExhausted, allocate, concurrently, dump_owned_routes,
        route_delete_message, route_message,
    },
};
use crate::{
    model::Cidr,
    plan::{Action, GuardPlan},
};

/// The default first priority of the guard's rules: allowed sources jump
/// over the block rules from here (`dataplane.host_guard_priority`).
///
/// The guard must come before any host rule that could route a guarded
/// prefix elsewhere, or it never fires: Tailscale's `lookup 52` (5270, with
/// its exit node's default route) and its other rules start at 5210, AWS VPC
/// CNI uses 512/1024/1536, strongSwan 220, Cilium 9, 10 and 100, wg-quick
/// 32764-32765. It must come after `local` (0), so traffic to the host's own
/// addresses is delivered as before. Docker adds no rules. 5000-5002 is free
/// in all of these.
pub const DEFAULT_GUARD_PRIORITY: u32 = 5000;

/// The configured first priority. The guard owns exactly its three
/// priorities (with netwarp's protocol tag), so netwarp instances on one
/// host must each have their own; set once at start-up.
static GUARD_PRIORITY: OnceLock<u32> = OnceLock::new();

/// Sets the first of the three priorities (once; later calls are ignored).
pub fn set_guard_priority(first: u32) {
    let _ = GUARD_PRIORITY.set(first);
}

/// Allowed sources' `goto` rules.
pub fn allow_priority() -> u32 {
    *GUARD_PRIORITY.get_or_init(|| DEFAULT_GUARD_PRIORITY)
}

/// The guard's `lookup` rules, right after the allowed sources.
pub fn block_priority() -> u32 {
    allow_priority() + 1
}

/// A `nop` rule the allowed sources' `goto` lands on. A goto needs a rule
/// at exactly its target priority: without one the kernel skips the goto
/// and the packet falls into the block rules (fail closed, but it would
/// block the allowed sources too).
pub fn continue_priority() -> u32 {
    allow_priority() + 2
}

const GUARD_TABLE_BASE: u32 = 0x5700_0000;
const GUARD_TABLES_PER_INSTANCE: u32 = 0x1000;

/// Every id a guard of any priority could use (1..=32763 configured).
pub const ALL_GUARD_TABLES: RangeInclusive<u32> = GUARD_TABLE_BASE..=0x5eff_ffff;

/// The host routing tables this instance's guard owns, derived from its
/// first priority so instances never share one.
pub fn guard_tables() -> RangeInclusive<u32> {
    let first =
        GUARD_TABLE_BASE.saturating_add(allow_priority().saturating_mul(GUARD_TABLES_PER_INSTANCE));
    first..=first.saturating_add(GUARD_TABLES_PER_INSTANCE - 1)
}

/// How many dump-diff-apply passes one call makes: one does it, unless
/// someone else changed the rules between the dump and the changes.
const MAX_PASSES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum HostGuardError {
    #[error("netlink rule or route dump in the host namespace failed: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error(
        "{failed} host guard change(s) failed in the host namespace; the first, \
         `{operation}`: {source}"
    )]
    Apply {
        failed: usize,
        operation: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("host guard rules still differ after {passes} passes: {remaining}")]
    NotConverged { passes: usize, remaining: String },
    #[error("host guard: {0}")]
    Tables(#[from] TablesExhausted),
}

/// One guard rule netwarp owns on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostRule {
    /// `iif BRIDGE from SOURCE goto` the continue priority.
    Allow { bridge: String, source: IpAddr },
    /// `iif BRIDGE [from SOURCE] [ipproto P] [dport RANGE] lookup TABLE`;
    /// the table holds the group's prefixes as `prohibit` routes.
    Block {
        bridge: String,
        source: Option<IpAddr>,
        selector: Selector,
        table: u32,
    },
    /// The `nop` the allow rules of one family jump to.
    Continue { ipv6: bool },
}

impl HostRule {
    fn ipv6(&self) -> bool {
        match self {
            Self::Allow { source, .. } => source.is_ipv6(),
            Self::Block { selector, .. } => selector.ipv6,
            Self::Continue { ipv6 } => *ipv6,
        }
    }

    fn message(&self) -> RuleMessage {
        match self {
            Self::Allow { bridge, source } => {
                let mut message = tagged_rule(self.ipv6(), allow_priority(), RuleAction::Goto);
                message
                    .attributes
                    .push(RuleAttribute::Iifname(bridge.clone()));
                match_source(&mut message, host_prefix(*source));
                message
                    .attributes
                    .push(RuleAttribute::Goto(continue_priority()));
                message
            }
            Self::Block {
                bridge,
                source,
                selector,
                table,
            } => {
                let mut message = tagged_rule(self.ipv6(), block_priority(), RuleAction::ToTable);
                message
                    .attributes
                    .push(RuleAttribute::Iifname(bridge.clone()));
                if let Some(source) = source {
                    match_source(&mut message, host_prefix(*source));
                }
                match_selector(&mut message, selector);
                message.attributes.push(RuleAttribute::Table(*table));
                message
            }
            Self::Continue { ipv6 } => tagged_rule(*ipv6, continue_priority(), RuleAction::Nop),
        }
    }

    /// Reads back a rule netwarp owns: `None` when it is not a guard rule,
    /// `Some(Err(()))` when it has a guard priority and netwarp's tag but
    /// a shape netwarp does not write (a stray, to remove).
    fn parse(rule: &RuleMessage) -> Option<Result<Self, ()>> {
        let tagged = TaggedRule::parse(rule)?;
        let priority = tagged.priority?;
        if !(allow_priority()..=continue_priority()).contains(&priority) {
            return None;
        }
        let group = tagged.group();
        let matches_all = group.is_some_and(|g| g.ip_proto.is_none() && g.ports.is_none());
        let table = tagged.table.filter(|t| guard_tables().contains(t));
        // Which of the three: 0 allow, 1 block, 2 continue.
        let parsed = match (
            priority - allow_priority(),
            tagged.action,
            tagged.iif,
            tagged.source,
        ) {
            (0, RuleAction::Goto, Some(bridge), Some(source))
                if tagged.goto == Some(continue_priority())
                    && source == host_prefix(source.addr())
                    && matches_all =>
            {
                Ok(Self::Allow {
                    bridge,
                    source: source.addr(),
                })
            }
            (1, RuleAction::ToTable, Some(bridge), source)
                if source.is_none_or(|s| s == host_prefix(s.addr())) =>
            {
                match (group, table) {
                    (Some(selector), Some(table)) => Ok(Self::Block {
                        bridge,
                        source: source.map(|s| s.addr()),
                        selector,
                        table,
                    }),
                    _ => Err(()),
                }
            }
            (2, RuleAction::Nop, None, None) if matches_all => {
                Ok(Self::Continue { ipv6: tagged.ipv6 })
            }
            _ => Err(()),
        };
        Some(parsed)
    }
}

impl fmt::Display for HostRule {
    /// In `ip rule` syntax (numeric protocols), for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { bridge, source } => write!(
                f,
                "{}: from {} iif {bridge} goto {}",
                allow_priority(),
                host_prefix(*source),
                continue_priority()
            ),
            Self::Block {
                bridge,
                source,
                selector,
                table,
            } => {
                write!(f, "{}: ", block_priority())?;
                if let Some(source) = source {
                    write!(f, "from {} ", host_prefix(*source))?;
                }
                write!(f, "iif {bridge}{selector} lookup {table:#x}")
            }
            Self::Continue { ipv6 } => write!(
                f,
                "{}: nop ({})",
                continue_priority(),
                if *ipv6 { "inet6" } else { "inet" }
            ),
        }
    }
}

fn host_prefix(addr: IpAddr) -> Cidr {
    let len = if addr.is_ipv6() { 128 } else { 32 };
    Cidr::new(addr, len).expect("a full-length prefix has no host bits")
}

/// Which lookup rule a prefix belongs to: one table each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuardKey {
    pub bridge: String,
    pub source: Option<IpAddr>,
    pub selector: Selector,
}

/// What `guards` need, before tables are assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardGroups {
    /// Each lookup rule's routes: `prohibit`, and `throw` for the prefixes
    /// carved out of what the others block.
    pub blocks: BTreeMap<GuardKey, BTreeMap<Cidr, RouteAction>>,
    /// The allow and continue rules.
    pub others: BTreeSet<HostRule>,
}

/// Groups `guards` (bridge name, plan). Every entry is blocked whatever
/// its action, except `direct` ones: those carve a prefix out of every
/// table of their family that the same rules (bridge, source) look up, as
/// a `throw` route, so no table steers what another lets through (a
/// prefix blocked in its own right stays blocked). An allowed source gets
/// a rule only in a family the bridge blocks something in. A bridge name
/// no interface could have is skipped, so it cannot fail the others.
pub fn guard_groups(guards: &[(String, &GuardPlan)]) -> GuardGroups {
    let mut groups = GuardGroups::default();
    for (bridge, plan) in guards {
        if !is_valid_ifname(bridge) {
            warn!(%bridge, network = %plan.network, "not an interface name; no host guard");
            continue;
        }
        let mut carved: Vec<(Option<IpAddr>, Cidr)> = Vec::new();
        // A guard holds tens of thousands of prefixes with heavy rules
        // labels, in a handful of groups: gathered by (source, selector)
        // first, so that a key (and its bridge name) is made per group,
        // not per prefix, and each group's map is built in one go.
        let mut gathered: BTreeMap<(Option<IpAddr>, Selector), Vec<Cidr>> = BTreeMap::new();
        let mut blocked_families = BTreeSet::new();
        let entries = (plan.entries.iter().map(|entry| (None, entry))).chain(
            plan.forwarded
                .iter()
                .map(|(source, entry)| (Some(*source), entry)),
        );
        for (source, entry) in entries {
            if entry.action == Action::Direct {
                carved.push((source, entry.rule.destination));
                continue;
            }
            if source.is_none() {
                blocked_families.insert(entry.rule.destination.is_ipv6());
            }
            let rule = OwnedRule::from_rule(&entry.rule);
            let group = gathered.entry((source, Selector::of(&rule))).or_default();
            group.push(rule.destination);
        }
        for ((source, selector), prefixes) in gathered {
            let key = GuardKey {
                bridge: bridge.clone(),
                source,
                selector,
            };
            let routes = groups.blocks.entry(key).or_default();
            let prohibit = prefixes.into_iter().map(|p| (p, RouteAction::Prohibit));
            if routes.is_empty() {
                // In one go (the entries are sorted), not one insert each.
                *routes = prohibit.collect();
            } else {
                routes.extend(prohibit);
            }
        }
        for (key, routes) in groups
            .blocks
            .iter_mut()
            .filter(|(k, _)| &k.bridge == bridge)
        {
            for (source, prefix) in &carved {
                if key.source == *source && key.selector.ipv6 == prefix.is_ipv6() {
                    routes.entry(*prefix).or_insert(RouteAction::Throw);
                }
            }
        }
        for source in &plan.allowed_sources {
            if blocked_families.contains(&source.is_ipv6()) {
                groups.others.insert(HostRule::Allow {
                    bridge: bridge.clone(),
                    source: *source,
                });
                groups.others.insert(HostRule::Continue {
                    ipv6: source.is_ipv6(),
                });
            }
        }
    }
    groups
}

/// The kernel's `dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
fn is_valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

/// The host's guard, as wanted or as found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardState {
    pub rules: BTreeSet<HostRule>,
    /// `prohibit` and `throw` routes, by table and destination.
    pub routes: BTreeMap<(u32, Cidr), RouteAction>,
}

/// How much of the host the guard holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounts {
    pub rules: usize,
    pub tables: usize,
    pub routes: usize,
}

impl GuardState {
    pub fn counts(&self) -> GuardCounts {
        let tables: BTreeSet<u32> = (self.rules.iter())
            .filter_map(|rule| match rule {
                HostRule::Block { table, .. } => Some(*table),
                _ => None,
            })
            .collect();
        GuardCounts {
            rules: self.rules.len(),
            tables: tables.len(),
            routes: self.routes.len(),
        }
    }
}

/// `groups` with tables: a lookup rule keeps the table its installed rule
/// uses; a new one gets the lowest free id of [`guard_tables`].
pub fn desired_guard(
    groups: &GuardGroups,
    installed: &InstalledGuard,
) -> Result<GuardState, TablesExhausted> {
    let claimed: Vec<(GuardKey, u32)> = (installed.rules.iter())
        .filter_map(|rule| match rule {
            HostRule::Block {
                bridge,
                source,
                selector,
                table,
            } => Some((
                GuardKey {
                    bridge: bridge.clone(),
                    source: *source,
                    selector: *selector,
                },
                *table,
            )),
            _ => None,
        })
        .collect();
    let reserved: BTreeSet<u32> = installed.routes.keys().map(|(t, _)| *t).collect();
    let wanted: BTreeSet<GuardKey> = groups.blocks.keys().cloned().collect();
    let tables = allocate(&claimed, &reserved, &wanted, guard_tables())?;
    let mut state = GuardState {
        rules: groups.others.clone(),
        routes: BTreeMap::new(),
    };
    let mut all_routes = Vec::with_capacity(groups.blocks.values().map(BTreeMap::len).sum());
    for (key, routes) in &groups.blocks {
        let table = tables[key];
        state.rules.insert(HostRule::Block {
            bridge: key.bridge.clone(),
            source: key.source,
            selector: key.selector,
            table,
        });
        all_routes.extend((routes.iter()).map(|(prefix, action)| ((table, *prefix), *action)));
    }
    // Built in one go (sorted runs), not one insert per route.
    state.routes = all_routes.into_iter().collect();
    Ok(state)
}

/// The guard found on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledGuard {
    pub rules: BTreeSet<HostRule>,
    /// Rules with netwarp's tag and a guard priority but a shape netwarp
    /// does not write (say, from another version): removed.
    pub strays: Vec<RuleMessage>,
    /// netwarp's routes in the guard's tables, whatever their type (one
    /// not `prohibit` is replaced).
    pub routes: BTreeMap<(u32, Cidr), RouteAction>,
}

impl InstalledGuard {
    /// What the host holds once every step towards `desired` succeeded.
    pub fn holding(desired: &GuardState) -> Self {
        Self {
            rules: desired.rules.clone(),
            strays: Vec::new(),
            routes: desired.routes.clone(),
        }
    }
}

/// One change to the host's rules or the guard's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Adds (or replaces in place) a `prohibit` or `throw` route.
    PutRoute(u32, Cidr, RouteAction),
    Add(HostRule),
    Delete(HostRule),
    DeleteStray(RuleMessage),
    DeleteRoute(u32, Cidr),
}

impl Step {
    /// Whether this step may let through what was blocked: skipped once a
    /// tightening step failed, so a half-applied change stays closed.
    fn loosens(&self) -> bool {
        matches!(
            self,
            Self::Delete(HostRule::Block { .. })
                | Self::DeleteStray(_)
                | Self::DeleteRoute(..)
                | Self::PutRoute(_, _, RouteAction::Throw)
        )
    }

    fn tightens(&self) -> bool {
        matches!(
            self,
            Self::Add(_) | Self::PutRoute(_, _, RouteAction::Prohibit)
        )
    }

    fn is_route(&self) -> bool {
        matches!(self, Self::PutRoute(..) | Self::DeleteRoute(..))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PutRoute(table, dst, action) => {
                let kind = match action {
                    RouteAction::Throw => "throw",
                    _ => "prohibit",
                };
                write!(f, "route replace {kind} {dst} table {table:#x}")
            }
            Self::Add(rule) => write!(f, "rule add {rule}"),
            Self::Delete(rule) => write!(f, "rule del {rule}"),
            Self::DeleteStray(message) => write!(f, "rule del (stray) {message:?}"),
            Self::DeleteRoute(table, dst) => write!(f, "route del {dst} table {table:#x}"),
        }
    }
}

/// The steps that turn `installed` into `desired`, in the order to apply.
///
/// Tightening comes before loosening, so the host never blocks less than
/// both the old and the new guard: the tables' new routes first (a table
/// no rule looks up yet is inert), then landing points and new lookup
/// rules, then allowed sources that are no longer allowed go, then new
/// ones come, then old lookup rules go, landing points after them, and
/// the routes no table needs any more last.
///
/// A rule delete is a pattern match: it removes the first rule (in the
/// kernel's order) that its set fields fit, and an unset protocol or port
/// range fits any. Every lookup rule has a table of its own, which the
/// delete names, so this only matters if two rules share a table (a
/// tampered host): then each kept rule a stale one's delete could hit is
/// first deleted and added again, which moves it behind the stale one,
/// whose delete then hits itself. Stale rules go narrowest first.
pub fn diff(installed: &InstalledGuard, desired: &GuardState) -> Vec<Step> {
    let added = |kind: fn(&HostRule) -> bool| {
        desired
            .rules
            .difference(&installed.rules)
            .filter(move |rule| kind(rule))
            .cloned()
            .map(Step::Add)
    };
    let stale = |kind: fn(&HostRule) -> bool| {
        installed
            .rules
            .difference(&desired.rules)
            .filter(move |rule| kind(rule))
    };
    let is_allow = |rule: &HostRule| matches!(rule, HostRule::Allow { .. });
    let is_block = |rule: &HostRule| matches!(rule, HostRule::Block { .. });
    let is_continue = |rule: &HostRule| matches!(rule, HostRule::Continue { .. });

    let (mut put, stale_routes) = route_changes(installed, desired);
    let throws: Vec<Step> = (put.extract_if(.., |step| {
        matches!(step, Step::PutRoute(_, _, RouteAction::Throw))
    }))
    .collect();
    // Carve-outs loosen: they come with the other loosening steps.
    let mut steps: Vec<Step> = put;
    steps.extend(added(is_continue).chain(added(is_block)));
    steps.extend(stale(is_allow).cloned().map(Step::Delete));
    steps.extend(added(is_allow));
    let mut stale_blocks: Vec<&HostRule> = stale(is_block).collect();
    stale_blocks.sort_by_key(|rule| Reverse(specificity(rule)));
    for stale_block in stale_blocks {
        let mut in_the_way: Vec<&HostRule> = installed
            .rules
            .intersection(&desired.rules)
            .filter(|kept| delete_fits(stale_block, kept))
            .collect();
        in_the_way.sort_by_key(|rule| Reverse(specificity(rule)));
        for kept in in_the_way {
            steps.push(Step::Delete(kept.clone()));
            steps.push(Step::Add(kept.clone()));
        }
        steps.push(Step::Delete(stale_block.clone()));
    }
    steps.extend(throws);
    steps.extend(installed.strays.iter().cloned().map(Step::DeleteStray));
    steps.extend(stale(is_continue).cloned().map(Step::Delete));
    steps.extend(stale_routes);
    steps
}

/// The routes to put (missing, or of another type) and to delete (not
/// wanted), by one walk of both sorted maps: a guard of tens of thousands
/// of routes usually changes a few.
fn route_changes(installed: &InstalledGuard, desired: &GuardState) -> (Vec<Step>, Vec<Step>) {
    let (mut put, mut delete) = (Vec::new(), Vec::new());
    let mut held = installed.routes.iter().peekable();
    for (&(table, dst), action) in &desired.routes {
        while let Some(((t, d), _)) = held.next_if(|(key, _)| **key < (table, dst)) {
            delete.push(Step::DeleteRoute(*t, *d));
        }
        match held.next_if(|(key, _)| **key == (table, dst)) {
            Some((_, held_action)) if held_action == action => {}
            _ => put.push(Step::PutRoute(table, dst, *action)),
        }
    }
    delete.extend(held.map(|((t, d), _)| Step::DeleteRoute(*t, *d)));
    (put, delete)
}

/// How much a rule's delete pins down beyond its kind, bridge and
/// table: a source, a port range, a protocol.
fn specificity(rule: &HostRule) -> (bool, bool, bool) {
    match rule {
        HostRule::Block {
            source, selector, ..
        } => (
            source.is_some(),
            selector.ports.is_some(),
            selector.ip_proto.is_some(),
        ),
        _ => (false, false, false),
    }
}

/// Whether the kernel could remove `rule` for a delete of `pattern`.
fn delete_fits(pattern: &HostRule, rule: &HostRule) -> bool {
    match (pattern, rule) {
        (
            HostRule::Block {
                bridge: pattern_bridge,
                source: pattern_source,
                selector: pattern,
                table: pattern_table,
            },
            HostRule::Block {
                bridge,
                source,
                selector,
                table,
            },
        ) => {
            pattern_bridge == bridge
                && pattern_table == table
                && pattern.ipv6 == selector.ipv6
                && pattern_source.is_none_or(|s| *source == Some(s))
                && pattern
                    .ip_proto
                    .is_none_or(|p| selector.ip_proto == Some(p))
                && pattern.ports.is_none_or(|p| selector.ports == Some(p))
        }
        _ => pattern == rule,
    }
}

/// What one programming call did and what the guard holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardWrite {
    /// Changes the kernel made.
    pub changes: usize,
    pub held: GuardCounts,
}

/// Programs the host guards for `guards` (bridge name, plan) in the
/// namespace of `handle` (the host's), level-triggered: adds what is
/// missing, removes netwarp's guard rules and routes that are not wanted,
/// and leaves every other rule and route alone.
///
/// A bridge that does not exist yet is no error: the kernel keeps a rule
/// naming a missing `iif` (`[detached]`) and applies it once the device
/// appears, so the guard is in place before the bridge's first packet.
pub async fn program_host_guards(
    handle: &Handle,
    guards: &[(String, &GuardPlan)],
    known: Option<InstalledGuard>,
) -> Result<(GuardWrite, InstalledGuard), HostGuardError> {
    converge(handle, &guard_groups(guards), known).await
}

/// Removes every guard rule and route netwarp owns on the host (`netwarp
/// cleanup`); returns how many it removed.
pub async fn remove_host_guards(handle: &Handle) -> Result<usize, HostGuardError> {
    Ok(converge(handle, &GuardGroups::default(), None)
        .await?
        .0
        .changes)
}

/// Reads the guard rules and routes netwarp owns on the host, both families.
pub async fn installed_host_guards(handle: &Handle) -> Result<InstalledGuard, HostGuardError> {
    let mut installed = InstalledGuard::default();
    for rule in dump_rules(handle).await.map_err(HostGuardError::Dump)? {
        match HostRule::parse(&rule) {
            Some(Ok(ours)) => {
                installed.rules.insert(ours);
            }
            Some(Err(())) => installed.strays.push(rule),
            None => {}
        }
    }
    let tables = guard_tables();
    installed.routes = dump_owned_routes(handle, |t| tables.contains(&t))
        .await
        .map_err(HostGuardError::Dump)?;
    Ok(installed)
}

/// Diff and apply until nothing differs; returns what the host holds.
///
/// `known` is what the last successful call returned: trusted instead of a
/// dump, and a change whose every step the kernel acknowledged is taken as
/// done without one either, so a guard of many thousand prefixes costs
/// its changes, not two dumps of the host's routes. Without `known` (the
/// first write, a resync's verification, after a failure) the host is
/// dumped, and dumped again after the changes to catch someone else's.
async fn converge(
    handle: &Handle,
    groups: &GuardGroups,
    known: Option<InstalledGuard>,
) -> Result<(GuardWrite, InstalledGuard), HostGuardError> {
    let trusted = known.is_some();
    let mut installed = match known {
        Some(known) => known,
        None => installed_host_guards(handle).await?,
    };
    let mut applied = 0;
    for _ in 0..MAX_PASSES {
        let desired = desired_guard(groups, &installed)?;
        let steps = diff(&installed, &desired);
        if steps.is_empty() {
            let write = GuardWrite {
                changes: applied,
                held: desired.counts(),
            };
            return Ok((write, installed));
        }
        applied += apply(handle, &steps).await?;
        if trusted {
            // Every step acknowledged: the host holds `desired`, which
            // its tables' claims would plan again unchanged.
            let write = GuardWrite {
                changes: applied,
                held: desired.counts(),
            };
            return Ok((write, InstalledGuard::holding(&desired)));
        }
        installed = installed_host_guards(handle).await?;
    }
    let desired = desired_guard(groups, &installed)?;
    let remaining = diff(&installed, &desired);
    if remaining.is_empty() {
        let write = GuardWrite {
            changes: applied,
            held: desired.counts(),
        };
        return Ok((write, installed));
    }
    Err(HostGuardError::NotConverged {
        passes: MAX_PASSES,
        remaining: remaining
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Applies `steps` in order; a failed step does not stop the others,
/// except that nothing loosens after a failed tightening step. Returns how
/// many changes the kernel made.
async fn apply(handle: &Handle, steps: &[Step]) -> Result<usize, HostGuardError> {
    let mut applied = 0;
    let mut failures = Vec::new();
    let mut tightening_failed = false;
    // Route steps in a row go out together (their order among themselves
    // does not matter); rule steps one at a time, in order.
    for run in steps.chunk_by(|a, b| a.is_route() && a.loosens() == b.loosens() && b.is_route()) {
        if tightening_failed && run[0].loosens() {
            for step in run {
                warn!(%step, "skipped: an earlier host guard change that blocks failed");
            }
            continue;
        }
        for (step, result) in concurrently(run, |step| execute(handle, step)).await {
            // Someone else's change between our dump and this step: the
            // kernel already is as this step wanted.
            let benign = |e: &rtnetlink::Error| {
                let errnos: &[i32] = match step {
                    Step::Add(_) => &[libc::EEXIST],
                    Step::PutRoute(..) => &[],
                    Step::DeleteRoute(..) => &[libc::ESRCH, libc::ENOENT],
                    _ => &[libc::ENOENT],
                };
                matches!(e, rtnetlink::Error::NetlinkError(m) if errnos.iter().any(|errno| m.raw_code() == -errno))
            };
            match result {
                Ok(()) => applied += 1,
                Err(e) if benign(&e) => debug!(%step, "already done"),
                Err(e) => {
                    warn!(%step, error = %e, "host guard change failed");
                    tightening_failed |= step.tightens();
                    failures.push((step.to_string(), e));
                }
            }
        }
    }
    let failed = failures.len();
    match failures.into_iter().next() {
        None => Ok(applied),
        Some((operation, source)) => Err(HostGuardError::Apply {
            failed,
            operation,
            source,
        }),
    }
}

async fn execute(handle: &Handle, step: &Step) -> Result<(), rtnetlink::Error> {
    debug!(%step, "host guard");
    match step {
        Step::PutRoute(table, dst, action) => {
            (handle.route())
                .add(route_message(*table, *dst, *action, None))
                .replace()
                .execute()
                .await
        }
        Step::Add(rule) => {
            let mut request = handle.rule().add();
            *request.message_mut() = rule.message();
            request.execute().await
        }
        Step::Delete(rule) => handle.rule().del(rule.message()).execute().await,
        Step::DeleteStray(message) => handle.rule().del(message.clone()).execute().await,
        Step::DeleteRoute(table, dst) => {
            (handle.route())
                .del(route_delete_message(*table, *dst))
                .execute()
                .await
        }
    }
}

#[cfg(test)]
mod tests;
