//! The bridge guard of the `routes` dataplane: policy rules in the host's
//! own network namespace, through rtnetlink.
//!
//! A target that (re)starts sends before netwarp has programmed its
//! namespace; its routed traffic enters the host through its network's
//! bridge. For each guarded bridge the host gets, per family in use:
//!
//! ```text
//! 5000: iif BRIDGE from ALLOWED/32 goto 5002      (one per allowed source)
//! 5001: iif BRIDGE to PREFIX [ipproto P] [dport R] prohibit   (one per entry)
//! 5001: iif BRIDGE from TARGET to PREFIX [ipproto P] [dport R] prohibit
//!                                   (a warp's untunnelled forwards, see below)
//! 5002: nop                                        (the goto's landing point)
//! ```
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
//! and one of the three guard priorities; netwarp lists and removes exactly
//! those, and nothing else.

use std::{cmp::Reverse, collections::BTreeSet, fmt, net::IpAddr, sync::OnceLock};

use rtnetlink::{
    Handle,
    packet_route::rule::{RuleAction, RuleAttribute, RuleMessage},
};
use tracing::{debug, warn};

use super::{
    policy_rule::OwnedRule,
    policy_rule::{TaggedRule, dump_rules, match_selector, match_source, tagged_rule},
};
use crate::{model::Cidr, plan::GuardPlan};

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

/// The guard's `prohibit` rules, right after the allowed sources.
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

/// How many dump-diff-apply passes one call makes: one does it, unless
/// someone else changed the rules between the dump and the changes.
const MAX_PASSES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum HostGuardError {
    #[error("netlink rule dump in the host namespace failed: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error(
        "{failed} host guard rule change(s) failed in the host namespace; the first, \
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
}

/// One guard rule netwarp owns on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostRule {
    /// `iif BRIDGE from SOURCE goto` the continue priority.
    Allow { bridge: String, source: IpAddr },
    /// `iif BRIDGE [from SOURCE] to DEST [ipproto P] [dport RANGE] prohibit`.
    Block {
        bridge: String,
        source: Option<IpAddr>,
        selector: OwnedRule,
    },
    /// The `nop` the allow rules of one family jump to.
    Continue { ipv6: bool },
}

impl HostRule {
    fn ipv6(&self) -> bool {
        match self {
            Self::Allow { source, .. } => source.is_ipv6(),
            Self::Block { selector, .. } => selector.destination.is_ipv6(),
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
            } => {
                let mut message = tagged_rule(self.ipv6(), block_priority(), RuleAction::Prohibit);
                message
                    .attributes
                    .push(RuleAttribute::Iifname(bridge.clone()));
                if let Some(source) = source {
                    match_source(&mut message, host_prefix(*source));
                }
                match_selector(&mut message, selector);
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
        let matches_all = tagged.selector.destination.prefix_len() == 0
            && tagged.selector.ip_proto.is_none()
            && tagged.selector.ports.is_none();
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
            (1, RuleAction::Prohibit, Some(bridge), source)
                if source.is_none_or(|s| s == host_prefix(s.addr())) =>
            {
                Ok(Self::Block {
                    bridge,
                    source: source.map(|s| s.addr()),
                    selector: tagged.selector,
                })
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
            } => {
                write!(f, "{}: ", block_priority())?;
                if let Some(source) = source {
                    write!(f, "from {} ", host_prefix(*source))?;
                }
                write!(f, "to {} iif {bridge}", selector.destination)?;
                if let Some(proto) = selector.ip_proto {
                    write!(f, " ipproto {proto}")?;
                }
                if let Some(ports) = selector.ports {
                    write!(f, " dport {ports}")?;
                }
                f.write_str(" prohibit")
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

/// The host rules that enforce `guards` (bridge name, plan). Every entry
/// is blocked whatever its action (a guard only blocks); an allowed source
/// gets a rule only in a family the bridge blocks something in. A bridge
/// name no interface could have is skipped, so it cannot fail the others.
pub fn desired_host_rules(guards: &[(String, &GuardPlan)]) -> BTreeSet<HostRule> {
    let mut rules = BTreeSet::new();
    for (bridge, plan) in guards {
        if !is_valid_ifname(bridge) {
            warn!(%bridge, network = %plan.network, "not an interface name; no host guard");
            continue;
        }
        let mut blocked_families = BTreeSet::new();
        for entry in &plan.entries {
            blocked_families.insert(entry.rule.destination.is_ipv6());
            rules.insert(HostRule::Block {
                bridge: bridge.clone(),
                source: None,
                selector: OwnedRule::from_rule(&entry.rule),
            });
        }
        for (source, entry) in &plan.forwarded {
            rules.insert(HostRule::Block {
                bridge: bridge.clone(),
                source: Some(*source),
                selector: OwnedRule::from_rule(&entry.rule),
            });
        }
        for source in &plan.allowed_sources {
            if blocked_families.contains(&source.is_ipv6()) {
                rules.insert(HostRule::Allow {
                    bridge: bridge.clone(),
                    source: *source,
                });
                rules.insert(HostRule::Continue {
                    ipv6: source.is_ipv6(),
                });
            }
        }
    }
    rules
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

/// The guard rules found on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledGuard {
    pub rules: BTreeSet<HostRule>,
    /// Rules with netwarp's tag and a guard priority but a shape netwarp
    /// does not write (say, from another version): removed.
    pub strays: Vec<RuleMessage>,
}

/// One change to the host's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Add(HostRule),
    Delete(HostRule),
    DeleteStray(RuleMessage),
}

impl Step {
    /// Whether this step may let through what was blocked: skipped once an
    /// add failed, so a half-applied change stays closed.
    fn loosens(&self) -> bool {
        matches!(
            self,
            Self::Delete(HostRule::Block { .. }) | Self::DeleteStray(_)
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add(rule) => write!(f, "rule add {rule}"),
            Self::Delete(rule) => write!(f, "rule del {rule}"),
            Self::DeleteStray(message) => write!(f, "rule del (stray) {message:?}"),
        }
    }
}

/// The steps that turn `installed` into `desired`, in the order to apply.
///
/// Tightening comes before loosening, so the host never blocks less than
/// both the old and the new guard: landing points and new blocks first,
/// then allowed sources that are no longer allowed go, then new ones come,
/// then old blocks go, landing points last.
///
/// A rule delete is a pattern match: it removes the first rule (in the
/// kernel's order) that its set fields fit, and an unset protocol or port
/// range fits any. Deleting a stale `to P prohibit` could remove a kept
/// `to P ipproto tcp dport 443 prohibit` listed before it instead. So each
/// kept rule a stale block's delete could hit is first deleted and added
/// again, which moves it behind the stale one, whose delete then hits
/// itself; meanwhile the stale rule, broader, still blocks what the kept
/// one does. Stale blocks go narrowest first, so no stale rule is in the
/// way of a broader one's delete either.
pub fn diff(installed: &InstalledGuard, desired: &BTreeSet<HostRule>) -> Vec<Step> {
    let added = |kind: fn(&HostRule) -> bool| {
        desired
            .difference(&installed.rules)
            .filter(move |rule| kind(rule))
            .cloned()
            .map(Step::Add)
    };
    let stale = |kind: fn(&HostRule) -> bool| {
        installed
            .rules
            .difference(desired)
            .filter(move |rule| kind(rule))
    };
    let is_allow = |rule: &HostRule| matches!(rule, HostRule::Allow { .. });
    let is_block = |rule: &HostRule| matches!(rule, HostRule::Block { .. });
    let is_continue = |rule: &HostRule| matches!(rule, HostRule::Continue { .. });

    let mut steps: Vec<Step> = added(is_continue).chain(added(is_block)).collect();
    steps.extend(stale(is_allow).cloned().map(Step::Delete));
    steps.extend(added(is_allow));
    let mut stale_blocks: Vec<&HostRule> = stale(is_block).collect();
    stale_blocks.sort_by_key(|rule| Reverse(specificity(rule)));
    for stale_block in stale_blocks {
        let mut in_the_way: Vec<&HostRule> = installed
            .rules
            .intersection(desired)
            .filter(|kept| delete_fits(stale_block, kept))
            .collect();
        in_the_way.sort_by_key(|rule| Reverse(specificity(rule)));
        for kept in in_the_way {
            steps.push(Step::Delete(kept.clone()));
            steps.push(Step::Add(kept.clone()));
        }
        steps.push(Step::Delete(stale_block.clone()));
    }
    steps.extend(installed.strays.iter().cloned().map(Step::DeleteStray));
    steps.extend(stale(is_continue).cloned().map(Step::Delete));
    steps
}

/// How much a rule's delete pins down beyond its kind, bridge and
/// destination: a source, a port range, a protocol.
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
            },
            HostRule::Block {
                bridge,
                source,
                selector,
            },
        ) => {
            pattern_bridge == bridge
                && pattern_source.is_none_or(|s| *source == Some(s))
                && pattern.destination == selector.destination
                && pattern
                    .ip_proto
                    .is_none_or(|p| selector.ip_proto == Some(p))
                && pattern.ports.is_none_or(|p| selector.ports == Some(p))
        }
        _ => pattern == rule,
    }
}

/// Programs the host guards for `guards` (bridge name, plan) in the
/// namespace of `handle` (the host's), level-triggered: adds what is
/// missing, removes netwarp's guard rules that are not wanted, and leaves
/// every other rule alone. Returns whether anything changed.
///
/// A bridge that does not exist yet is no error: the kernel keeps a rule
/// naming a missing `iif` (`[detached]`) and applies it once the device
/// appears, so the guard is in place before the bridge's first packet.
pub async fn program_host_guards(
    handle: &Handle,
    guards: &[(String, &GuardPlan)],
) -> Result<bool, HostGuardError> {
    Ok(converge(handle, &desired_host_rules(guards)).await? > 0)
}

/// Removes every guard rule netwarp owns on the host (`netwarp cleanup`);
/// returns how many it removed.
pub async fn remove_host_guards(handle: &Handle) -> Result<usize, HostGuardError> {
    converge(handle, &BTreeSet::new()).await
}

/// Reads the guard rules netwarp owns on the host, both families.
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
    Ok(installed)
}

/// Dump, diff and apply until nothing differs; returns how many changes
/// the kernel made.
async fn converge(handle: &Handle, desired: &BTreeSet<HostRule>) -> Result<usize, HostGuardError> {
    let mut applied = 0;
    for _ in 0..MAX_PASSES {
        let steps = diff(&installed_host_guards(handle).await?, desired);
        if steps.is_empty() {
            return Ok(applied);
        }
        applied += apply(handle, &steps).await?;
    }
    let remaining = diff(&installed_host_guards(handle).await?, desired);
    if remaining.is_empty() {
        return Ok(applied);
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
/// except that nothing loosens after a failed add. Returns how many
/// changes the kernel made.
async fn apply(handle: &Handle, steps: &[Step]) -> Result<usize, HostGuardError> {
    let mut applied = 0;
    let mut failures = Vec::new();
    let mut add_failed = false;
    for step in steps {
        if add_failed && step.loosens() {
            warn!(%step, "skipped: an earlier host guard rule add failed");
            continue;
        }
        debug!(%step, "host guard");
        let result = match step {
            Step::Add(rule) => {
                let mut request = handle.rule().add();
                *request.message_mut() = rule.message();
                request.execute().await
            }
            Step::Delete(rule) => handle.rule().del(rule.message()).execute().await,
            Step::DeleteStray(message) => handle.rule().del(message.clone()).execute().await,
        };
        // Someone else's change between our dump and this step: the
        // kernel already is as this step wanted.
        let benign = |e: &rtnetlink::Error| {
            let errno = match step {
                Step::Add(_) => libc::EEXIST,
                _ => libc::ENOENT,
            };
            matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
        };
        match result {
            Ok(()) => applied += 1,
            Err(e) if benign(&e) => debug!(%step, "already done"),
            Err(e) => {
                warn!(%step, error = %e, "host guard rule change failed");
                add_failed |= matches!(step, Step::Add(_));
                failures.push((step.to_string(), e));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::parse_rules,
        plan::{Action, Entry},
    };

    fn plan(rules: &str, sources: &[&str]) -> GuardPlan {
        GuardPlan {
            network: "net".into(),
            entries: Entry::all(&parse_rules(rules).unwrap(), Action::Block),
            allowed_sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            ..GuardPlan::default()
        }
    }

    fn shown(rules: &BTreeSet<HostRule>) -> Vec<String> {
        rules.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_guard_allows_its_sources_then_blocks_each_selector() {
        let guard = plan("203.0.113.0/24,tcp:443,udp:5000-5100,icmp", &["172.20.0.4"]);
        let rules = desired_host_rules(&[("br-0123456789ab".into(), &guard)]);
        assert_eq!(
            shown(&rules),
            [
                "5000: from 172.20.0.4/32 iif br-0123456789ab goto 5002",
                "5001: to 203.0.113.0/24 iif br-0123456789ab ipproto 1 prohibit",
                "5001: to 203.0.113.0/24 iif br-0123456789ab ipproto 6 dport 443 prohibit",
                "5001: to 203.0.113.0/24 iif br-0123456789ab ipproto 17 dport 5000-5100 prohibit",
                "5002: nop (inet)",
            ]
        );
    }

    #[test]
    fn ipv6_blocks_use_icmpv6_and_allow_only_sources_of_a_blocked_family() {
        let guard = plan("2001:db8::/32,icmp", &["172.20.0.4", "fd00::4"]);
        let rules = desired_host_rules(&[("br-a".into(), &guard)]);
        assert_eq!(
            shown(&rules),
            [
                "5000: from fd00::4/128 iif br-a goto 5002",
                "5001: to 2001:db8::/32 iif br-a ipproto 58 prohibit",
                "5002: nop (inet6)",
            ]
        );
    }

    #[test]
    fn a_guard_without_allowed_sources_needs_no_landing_point() {
        let guard = plan("0.0.0.0/0", &[]);
        let rules = desired_host_rules(&[("br-a".into(), &guard)]);
        assert_eq!(shown(&rules), ["5001: to 0.0.0.0/0 iif br-a prohibit"]);
    }

    #[test]
    fn bridges_are_guarded_apart_and_an_impossible_name_is_skipped() {
        let a = plan("203.0.113.0/24", &["172.20.0.4"]);
        let b = plan("198.51.100.0/24", &["172.21.0.4"]);
        let rules = desired_host_rules(&[
            ("br-a".into(), &a),
            ("a-name-far-too-long".into(), &b),
            ("br b".into(), &b),
            ("br-b".into(), &b),
        ]);
        assert_eq!(
            shown(&rules),
            [
                "5000: from 172.20.0.4/32 iif br-a goto 5002",
                "5000: from 172.21.0.4/32 iif br-b goto 5002",
                "5001: to 203.0.113.0/24 iif br-a prohibit",
                "5001: to 198.51.100.0/24 iif br-b prohibit",
                "5002: nop (inet)",
            ]
        );
    }

    #[test]
    fn rules_survive_a_netlink_round_trip_and_foreign_ones_are_not_ours() {
        let guard = plan(
            "0.0.0.0/0,203.0.113.0/24,2001:db8::/32,tcp:8000-8100,icmp",
            &["172.20.0.4", "fd00::4"],
        );
        for rule in desired_host_rules(&[("br-a".into(), &guard)]) {
            assert_eq!(
                HostRule::parse(&rule.message()),
                Some(Ok(rule.clone())),
                "{rule}"
            );
            let mut foreign = rule.message();
            foreign
                .attributes
                .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
            assert_eq!(HostRule::parse(&foreign), None, "{rule}");
        }
        // netwarp's in-namespace rules carry the tag at another priority.
        let mut other = HostRule::Continue { ipv6: false }.message();
        other
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::Priority(_)));
        other.attributes.push(RuleAttribute::Priority(10_000));
        assert_eq!(HostRule::parse(&other), None);
        // The tag and a guard priority in a shape netwarp never writes.
        let mut stray = HostRule::Continue { ipv6: false }.message();
        stray.attributes.push(RuleAttribute::Iifname("br-a".into()));
        assert_eq!(HostRule::parse(&stray), Some(Err(())));
    }

    fn installed(rules: &BTreeSet<HostRule>) -> InstalledGuard {
        InstalledGuard {
            rules: rules.clone(),
            strays: vec![],
        }
    }

    #[test]
    fn diff_is_empty_when_converged() {
        let guard = plan("203.0.113.0/24,tcp:443", &["172.20.0.4"]);
        let rules = desired_host_rules(&[("br-a".into(), &guard)]);
        assert_eq!(diff(&installed(&rules), &rules), vec![]);
    }

    #[test]
    fn diff_tightens_before_it_loosens() {
        let old = desired_host_rules(&[(
            "br-a".into(),
            &plan("203.0.113.0/24", &["172.20.0.4", "172.20.0.5"]),
        )]);
        let new = desired_host_rules(&[(
            "br-a".into(),
            &plan("203.0.112.0/23", &["172.20.0.5", "172.20.0.6"]),
        )]);
        let mut from = installed(&old);
        let stray = HostRule::Continue { ipv6: true }.message();
        from.strays.push(stray.clone());
        let steps: Vec<String> = diff(&from, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            steps,
            [
                "rule add 5001: to 203.0.112.0/23 iif br-a prohibit",
                "rule del 5000: from 172.20.0.4/32 iif br-a goto 5002",
                "rule add 5000: from 172.20.0.6/32 iif br-a goto 5002",
                "rule del 5001: to 203.0.113.0/24 iif br-a prohibit",
                &format!("rule del (stray) {stray:?}"),
            ]
        );
        let gone: Vec<String> = diff(&installed(&new), &BTreeSet::new())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            gone,
            [
                "rule del 5000: from 172.20.0.5/32 iif br-a goto 5002",
                "rule del 5000: from 172.20.0.6/32 iif br-a goto 5002",
                "rule del 5001: to 203.0.112.0/23 iif br-a prohibit",
                "rule del 5002: nop (inet)",
            ]
        );
        let first: Vec<String> = diff(&InstalledGuard::default(), &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(first[0], "rule add 5002: nop (inet)");
    }

    fn block(label: &str) -> HostRule {
        HostRule::Block {
            bridge: "br-a".into(),
            source: None,
            selector: OwnedRule::from_rule(&parse_rules(label).unwrap()[0]),
        }
    }

    fn block_from(source: &str, label: &str) -> HostRule {
        HostRule::Block {
            bridge: "br-a".into(),
            source: Some(source.parse().unwrap()),
            selector: OwnedRule::from_rule(&parse_rules(label).unwrap()[0]),
        }
    }

    #[test]
    fn a_warp_network_refuses_its_targets_sources_toward_their_prefixes() {
        let blocked = |label| Entry::all(&parse_rules(label).unwrap(), Action::Block)[0];
        let guard = GuardPlan {
            network: "outer".into(),
            forwarded: [
                (
                    "172.20.0.3".parse().unwrap(),
                    blocked("203.0.113.0/24,tcp:443"),
                ),
                ("fd00:20::3".parse().unwrap(), blocked("2001:db8::/32")),
            ]
            .into(),
            ..GuardPlan::default()
        };
        let rules = desired_host_rules(&[("br-outer".into(), &guard)]);
        assert_eq!(
            shown(&rules),
            [
                "5001: from 172.20.0.3/32 to 203.0.113.0/24 iif br-outer ipproto 6 dport 443 prohibit",
                "5001: from fd00:20::3/128 to 2001:db8::/32 iif br-outer prohibit",
            ]
        );
        for rule in &rules {
            assert_eq!(HostRule::parse(&rule.message()), Some(Ok(rule.clone())));
        }
    }

    #[test]
    fn a_stale_block_delete_cannot_take_a_kept_sourced_block() {
        let sourced = block_from("172.20.0.3", "203.0.113.0/24");
        assert!(delete_fits(&block("203.0.113.0/24"), &sourced));
        assert!(!delete_fits(&sourced, &block("203.0.113.0/24")));
        assert!(!delete_fits(
            &block_from("172.20.0.9", "203.0.113.0/24"),
            &sourced
        ));
        let mut from = InstalledGuard::default();
        from.rules
            .extend([block("203.0.113.0/24"), sourced.clone()]);
        let steps: Vec<String> = diff(&from, &[sourced].into())
            .iter()
            .map(ToString::to_string)
            .collect();
        let rule = "5001: from 172.20.0.3/32 to 203.0.113.0/24 iif br-a prohibit";
        assert_eq!(
            steps,
            [
                format!("rule del {rule}"),
                format!("rule add {rule}"),
                "rule del 5001: to 203.0.113.0/24 iif br-a prohibit".to_owned(),
            ]
        );
    }

    #[test]
    fn kept_rules_a_stale_delete_could_hit_move_behind_it_first() {
        let tcp_443 = block("203.0.113.0/24,tcp:443");
        let udp_range = block("203.0.113.0/24,udp:5000-5100");
        let kept = [tcp_443.clone(), udp_range, block("198.51.100.0/24")];
        let stale = [block("203.0.113.0/24"), block("203.0.113.0/24,tcp")];
        let mut from = InstalledGuard::default();
        from.rules.extend(kept.iter().chain(&stale).cloned());
        let steps: Vec<String> = diff(&from, &kept.into_iter().collect())
            .iter()
            .map(ToString::to_string)
            .collect();
        let rule = |suffix: &str| format!("5001: to 203.0.113.0/24 iif br-a {suffix}prohibit");
        assert_eq!(
            steps,
            [
                format!("rule del {}", rule("ipproto 6 dport 443 ")),
                format!("rule add {}", rule("ipproto 6 dport 443 ")),
                format!("rule del {}", rule("ipproto 6 ")),
                format!("rule del {}", rule("ipproto 6 dport 443 ")),
                format!("rule add {}", rule("ipproto 6 dport 443 ")),
                format!("rule del {}", rule("ipproto 17 dport 5000-5100 ")),
                format!("rule add {}", rule("ipproto 17 dport 5000-5100 ")),
                format!("rule del {}", rule("")),
            ]
        );
        assert!(delete_fits(&block("203.0.113.0/24,tcp"), &tcp_443));
        assert!(!delete_fits(&tcp_443, &block("203.0.113.0/24,tcp")));
        assert!(!delete_fits(&block("198.51.100.0/24"), &tcp_443));
    }

    #[test]
    fn only_loosening_steps_wait_for_failed_adds() {
        let block = block("203.0.113.0/24");
        let allow = HostRule::Allow {
            bridge: "br-a".into(),
            source: "172.20.0.4".parse().unwrap(),
        };
        assert!(Step::Delete(block.clone()).loosens());
        assert!(Step::DeleteStray(block.message()).loosens());
        assert!(!Step::Delete(allow.clone()).loosens());
        assert!(!Step::Add(allow).loosens());
        assert!(!Step::Add(block).loosens());
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        for good in ["br-0123456789ab", "docker0", "a"] {
            assert!(is_valid_ifname(good), "{good}");
        }
        for bad in ["", ".", "..", "br/x", "br:x", "br x", "br-0123456789abc"] {
            assert!(!is_valid_ifname(bad), "{bad}");
        }
    }
}
