//! Egress allow and deny lists, for any container (a target, or one
//! without a warp, which is then *filtered*): what it may not reach, and
//! the only destinations it may reach.

use super::{Action, BlockReason, PlanSettings, RefuseReason, TargetPlan, TargetState, capacity};
use crate::model::{Cidr, Container, NetworkMode, Rule, Verb, parse_policy, short_reference};

/// A deny list: destinations and selectors in the rules syntax (clauses
/// allowed), each refused.
pub fn parse_deny(text: &str) -> Result<Vec<Rule>, String> {
    let rules = list(text)?;
    Ok(rules
        .into_iter()
        .map(|r| r.with_verb(Verb::Block))
        .collect())
}

/// An allow list: destinations only.
pub fn parse_allow(text: &str) -> Result<Vec<Cidr>, String> {
    let rules = list(text)?;
    if let Some(rule) = rules.iter().find(|r| r.protocol.is_some()) {
        return Err(format!(
            "`{rule}`: an allow list names destinations only, no protocol or port; \
             refuse ports with the deny list"
        ));
    }
    let mut allowed: Vec<Cidr> = rules.iter().map(|r| r.destination).collect();
    allowed.sort();
    allowed.dedup();
    Ok(allowed)
}

fn list(text: &str) -> Result<Vec<Rule>, String> {
    let policy = parse_policy(text).map_err(|e| e.to_string())?;
    if policy.with_global {
        return Err("`global` has no meaning in an allow or deny list".into());
    }
    if let Some(rule) = policy.rules.iter().find(|r| r.verb != Verb::Via) {
        return Err(format!(
            "`{rule}`: a list takes destinations and selectors, not actions"
        ));
    }
    Ok(policy.rules)
}

/// `rules` with the container's deny list added and its allow list
/// applied ([`allow_only`]). A list that cannot be read fails closed.
pub(super) fn apply(
    settings: &PlanSettings,
    container: &Container,
    mut rules: Vec<Rule>,
) -> Result<Vec<Rule>, BlockReason> {
    let invalid = |label: &String, value: &String, error| BlockReason::InvalidLabel {
        label: label.clone(),
        value: value.clone(),
        error,
    };
    if let Some(value) = container.labels.get(&settings.deny_label) {
        let deny = parse_deny(value).map_err(|e| invalid(&settings.deny_label, value, e))?;
        rules.extend(deny);
    }
    if let Some(value) = container.labels.get(&settings.allow_label) {
        let allowed = parse_allow(value).map_err(|e| invalid(&settings.allow_label, value, e))?;
        rules = allow_only(&rules, &allowed);
    }
    Ok(rules)
}

/// `rules` restricted to the `allowed` destinations: everything else, of
/// both families, is refused (a kill switch). Within an allowed prefix the
/// rules apply as before: those inside it keep their prefixes, and those
/// that contain it apply to it as if written for it (per selector the
/// longest, without those a longer one with a covering selector shadows).
/// An allowed prefix no rule of every protocol takes is reached directly.
pub fn allow_only(rules: &[Rule], allowed: &[Cidr]) -> Vec<Rule> {
    let mut out: Vec<Rule> = (rules.iter())
        .filter(|r| allowed.iter().any(|a| a.covers(&r.destination)))
        .copied()
        .collect();
    for a in allowed {
        let containing: Vec<&Rule> = (rules.iter())
            .filter(|r| r.destination.covers(a) && r.destination != *a)
            .collect();
        let shadowed = |r: &Rule| {
            (containing.iter()).any(|o| {
                o.destination.prefix_len() > r.destination.prefix_len() && selector_covers(o, r)
            })
        };
        out.extend((containing.iter()).filter(|r| !shadowed(r)).map(|r| Rule {
            destination: *a,
            ..**r
        }));
        if !out
            .iter()
            .any(|r| r.destination == *a && r.protocol.is_none())
        {
            out.push(whole(*a, Verb::Direct));
        }
    }
    for all in ["0.0.0.0/0", "::/0"] {
        out.push(whole(all.parse().expect("a /0 prefix"), Verb::Block));
    }
    out.sort();
    out.dedup();
    out
}

fn whole(destination: Cidr, verb: Verb) -> Rule {
    Rule {
        destination,
        protocol: None,
        ports: None,
        verb,
    }
}

/// Whether `outer`'s selector takes every packet `inner`'s does.
fn selector_covers(outer: &Rule, inner: &Rule) -> bool {
    match (outer.protocol, inner.protocol) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => {
            o == i
                && match (outer.ports, inner.ports) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(o), Some(i)) => o.start <= i.start && i.end <= o.end,
                }
        }
    }
}

/// The plan of a container with lists and no warp: its lists, enforced in
/// its own namespace (and on its veth by the eBPF dataplane).
pub(super) fn plan_filtered(settings: &PlanSettings, container: &Container) -> TargetPlan {
    let mut plan = TargetPlan {
        id: container.id.clone(),
        name: container.name.clone(),
        pid: container.pid,
        warp: String::new(),
        warp_group: Vec::new(),
        group_mode: crate::plan::GroupMode::Failover,
        spread: Vec::new(),
        state: TargetState::Filtered,
        entries: Vec::new(),
        mac_on_network: container.networks.values().find_map(|e| e.mac.clone()),
        warp_pid: None,
        warp_mac: None,
        warp_macs: Vec::new(),
        addresses: super::addresses(container),
        excluded: Vec::new(),
        shares_namespace_of: None,
    };
    let name = container.name.clone();
    let refused = match &container.network_mode {
        NetworkMode::Own => None,
        NetworkMode::Host => Some(RefuseReason::HostNetwork { container: name }),
        NetworkMode::NoNetwork => Some(RefuseReason::NoNetwork { container: name }),
        NetworkMode::Container(reference) => Some(RefuseReason::SharesUnmanaged {
            container: name,
            other: short_reference(reference).to_owned(),
        }),
    };
    if let Some(reason) = refused {
        plan.pid = None;
        plan.state = TargetState::Refused(reason);
        return plan;
    }
    match apply(settings, container, Vec::new()) {
        Ok(rules) => {
            plan.entries = super::entries(&rules, |_| Some(Action::Block));
            plan
        }
        Err(reason) => capacity::block_everything(plan, reason),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::plan::decide;

    fn decided(rules: &[Rule], dst: &str, proto: u8, port: Option<u16>) -> Option<Action> {
        let via = Action::Via("172.20.0.2".parse().unwrap());
        let entries = crate::plan::entries(rules, |_| Some(via));
        decide(&entries, dst.parse::<IpAddr>().unwrap(), proto, port)
    }

    #[test]
    fn an_allow_list_refuses_everything_else_of_both_families() {
        let rules = allow_only(&[], &parse_allow("10.9.0.0/16, 2001:db8::/48").unwrap());
        assert_eq!(
            decided(&rules, "10.9.1.1", 6, Some(443)),
            Some(Action::Direct)
        );
        assert_eq!(
            decided(&rules, "10.8.1.1", 6, Some(443)),
            Some(Action::Deny)
        );
        assert_eq!(
            decided(&rules, "2001:db8::1", 17, Some(53)),
            Some(Action::Direct)
        );
        assert_eq!(decided(&rules, "2001:db9::1", 58, None), Some(Action::Deny));
    }

    #[test]
    fn allowed_destinations_keep_what_the_rules_do_with_them() {
        let via = Some(Action::Via("172.20.0.2".parse().unwrap()));
        let rules = parse_policy("0.0.0.0/0; direct 10.9.0.0/16; block 0.0.0.0/0,tcp:25")
            .unwrap()
            .rules;
        let allowed = allow_only(&rules, &parse_allow("203.0.113.0/24,10.9.0.0/16").unwrap());
        // Steered by the full tunnel, and its block rule still holds.
        assert_eq!(decided(&allowed, "203.0.113.5", 6, Some(443)), via);
        assert_eq!(
            decided(&allowed, "203.0.113.5", 6, Some(25)),
            Some(Action::Deny)
        );
        // The exclusion inside the list stays direct.
        assert_eq!(
            decided(&allowed, "10.9.0.5", 6, Some(443)),
            Some(Action::Direct)
        );
        // Off the list: refused, whatever the rules said.
        assert_eq!(
            decided(&allowed, "198.51.100.1", 6, Some(443)),
            Some(Action::Deny)
        );
        // A longer rule shadows a shorter one of the same selector.
        let rules = parse_policy("block 0.0.0.0/0; 203.0.0.0/8").unwrap().rules;
        let allowed = allow_only(&rules, &parse_allow("203.0.113.0/24").unwrap());
        assert_eq!(decided(&allowed, "203.0.113.5", 1, None), via);
    }

    #[test]
    fn lists_refuse_what_they_cannot_mean() {
        assert_eq!(
            parse_allow("10.0.0.0/8,tcp:443").unwrap_err(),
            "`10.0.0.0/8 tcp:443`: an allow list names destinations only, no protocol or port; \
             refuse ports with the deny list"
        );
        assert_eq!(
            parse_deny("direct 10.0.0.0/8").unwrap_err(),
            "`direct 10.0.0.0/8`: a list takes destinations and selectors, not actions"
        );
        assert_eq!(
            parse_deny("global").unwrap_err(),
            "`global` has no meaning in an allow or deny list"
        );
        assert!(
            parse_deny("10.0.0.0/33")
                .unwrap_err()
                .contains("prefix length 33")
        );
        let deny = parse_deny("10.0.0.0/8; 0.0.0.0/0,tcp:25").unwrap();
        assert!(deny.iter().all(|r| r.verb == Verb::Block) && deny.len() == 2);
    }
}
