use super::*;
use crate::{
    model::parse_rules,
    plan::{Action, Entry},
};

/// The default priority's first guard table.
const T0: u32 = 0x5838_8000;

fn plan(rules: &str, sources: &[&str]) -> GuardPlan {
    GuardPlan {
        network: "net".into(),
        entries: Entry::all(&parse_rules(rules).unwrap(), Action::Block),
        allowed_sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
        ..GuardPlan::default()
    }
}

fn fresh(guards: &[(String, &GuardPlan)]) -> GuardState {
    desired_guard(&guard_groups(guards), &InstalledGuard::default()).unwrap()
}

fn shown(state: &GuardState) -> Vec<String> {
    state.rules.iter().map(ToString::to_string).collect()
}

fn routes(state: &GuardState) -> Vec<String> {
    (state.routes.iter())
        .map(|((table, dst), action)| match action {
            RouteAction::Throw => format!("throw {dst} table {table:#x}"),
            _ => format!("{dst} table {table:#x}"),
        })
        .collect()
}

/// What the kernel holds after `steps`.
fn applied(installed: &InstalledGuard, steps: &[Step]) -> InstalledGuard {
    let mut state = installed.clone();
    for step in steps {
        match step {
            Step::PutRoute(table, dst, action) => {
                state.routes.insert((*table, *dst), *action);
            }
            Step::Add(rule) => {
                state.rules.insert(rule.clone());
            }
            Step::Delete(rule) => {
                state.rules.remove(rule);
            }
            Step::DeleteStray(message) => state.strays.retain(|m| m != message),
            Step::DeleteRoute(table, dst) => {
                state.routes.remove(&(*table, *dst));
            }
        }
    }
    state
}

fn installed(state: &GuardState) -> InstalledGuard {
    applied(
        &InstalledGuard::default(),
        &diff(&InstalledGuard::default(), state),
    )
}

#[test]
fn the_default_tables_sit_far_from_everyone_elses() {
    let tables = guard_tables();
    assert_eq!(tables, T0..=T0 + 0xfff);
    for common in [52, 253, 254, 255, 0x4e57, 51820] {
        assert!(!tables.contains(&common), "{common}");
    }
}

#[test]
fn a_guard_allows_its_sources_then_looks_up_one_table_per_selector() {
    let guard = plan(
        "203.0.113.0/24,198.51.100.0/24,tcp:443,udp:5000-5100,icmp",
        &["172.20.0.4"],
    );
    let state = fresh(&[("br-0123456789ab".into(), &guard)]);
    assert_eq!(
        shown(&state),
        [
            "5000: from 172.20.0.4/32 iif br-0123456789ab goto 5002",
            "5001: iif br-0123456789ab ipproto 1 lookup 0x58388000",
            "5001: iif br-0123456789ab ipproto 6 dport 443 lookup 0x58388001",
            "5001: iif br-0123456789ab ipproto 17 dport 5000-5100 lookup 0x58388002",
            "5002: nop (inet)",
        ]
    );
    assert_eq!(state.routes.len(), 6);
    assert_eq!(
        state.counts(),
        GuardCounts {
            rules: 5,
            tables: 3,
            routes: 6
        }
    );
}

#[test]
fn a_large_label_costs_routes_not_rules() {
    let label: Vec<String> = (0..3000)
        .map(|i| format!("10.{}.{}.{}/32", 200 + i / 65536, i / 256 % 256, i % 256))
        .chain(["2001:db8::/32".into(), "tcp:443".into()])
        .collect();
    let guard = plan(&label.join(","), &["172.20.0.4"]);
    let state = fresh(&[("br-a".into(), &guard)]);
    assert_eq!(state.counts().rules, 4, "{:?}", shown(&state));
    assert_eq!(state.counts().routes, 3001);
}

#[test]
fn ipv6_blocks_use_icmpv6_and_allow_only_sources_of_a_blocked_family() {
    let guard = plan("2001:db8::/32,icmp", &["172.20.0.4", "fd00::4"]);
    let state = fresh(&[("br-a".into(), &guard)]);
    assert_eq!(
        shown(&state),
        [
            "5000: from fd00::4/128 iif br-a goto 5002",
            "5001: iif br-a ipproto 58 lookup 0x58388000",
            "5002: nop (inet6)",
        ]
    );
    assert_eq!(routes(&state), ["2001:db8::/32 table 0x58388000"]);
}

#[test]
fn a_guard_without_allowed_sources_needs_no_landing_point() {
    let guard = plan("0.0.0.0/0", &[]);
    let state = fresh(&[("br-a".into(), &guard)]);
    assert_eq!(shown(&state), ["5001: iif br-a lookup 0x58388000"]);
    assert_eq!(routes(&state), ["0.0.0.0/0 table 0x58388000"]);
}

#[test]
fn bridges_are_guarded_apart_and_an_impossible_name_is_skipped() {
    let a = plan("203.0.113.0/24", &["172.20.0.4"]);
    let b = plan("198.51.100.0/24", &["172.21.0.4"]);
    let state = fresh(&[
        ("br-a".into(), &a),
        ("a-name-far-too-long".into(), &b),
        ("br b".into(), &b),
        ("br-b".into(), &b),
    ]);
    assert_eq!(
        shown(&state),
        [
            "5000: from 172.20.0.4/32 iif br-a goto 5002",
            "5000: from 172.21.0.4/32 iif br-b goto 5002",
            "5001: iif br-a lookup 0x58388000",
            "5001: iif br-b lookup 0x58388001",
            "5002: nop (inet)",
        ]
    );
    assert_eq!(
        routes(&state),
        [
            "203.0.113.0/24 table 0x58388000",
            "198.51.100.0/24 table 0x58388001"
        ]
    );
}

#[test]
fn rules_survive_a_netlink_round_trip_and_foreign_ones_are_not_ours() {
    let guard = plan(
        "0.0.0.0/0,203.0.113.0/24,2001:db8::/32,tcp:8000-8100,icmp",
        &["172.20.0.4", "fd00::4"],
    );
    for rule in fresh(&[("br-a".into(), &guard)]).rules {
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
    // An earlier version's per-prefix prohibit rule.
    let mut per_prefix = tagged_rule(false, block_priority(), RuleAction::Prohibit);
    per_prefix
        .attributes
        .push(RuleAttribute::Iifname("br-a".into()));
    per_prefix.header.dst_len = 24;
    per_prefix
        .attributes
        .push(RuleAttribute::Destination("203.0.113.0".parse().unwrap()));
    assert_eq!(HostRule::parse(&per_prefix), Some(Err(())));
    // A lookup outside the guard's tables.
    let mut elsewhere = block("203.0.113.0/24").message();
    elsewhere
        .attributes
        .retain(|a| !matches!(a, RuleAttribute::Table(_)));
    elsewhere.attributes.push(RuleAttribute::Table(254));
    assert_eq!(HostRule::parse(&elsewhere), Some(Err(())));
}

#[test]
fn diff_is_empty_when_converged_and_tables_are_readopted() {
    let guard = plan("203.0.113.0/24,198.51.100.0/24,tcp:443", &["172.20.0.4"]);
    let groups = guard_groups(&[("br-a".into(), &guard)]);
    let first = desired_guard(&groups, &InstalledGuard::default()).unwrap();
    let host = installed(&first);
    // A restarted daemon finds the same tables.
    let again = desired_guard(&groups, &host).unwrap();
    assert_eq!(again, first);
    assert_eq!(diff(&host, &again), vec![]);
}

#[test]
fn diff_tightens_before_it_loosens() {
    let old = plan("203.0.113.0/24", &["172.20.0.4", "172.20.0.5"]);
    let new = plan("203.0.112.0/23", &["172.20.0.5", "172.20.0.6"]);
    let mut host = installed(&fresh(&[("br-a".into(), &old)]));
    let stray = HostRule::Continue { ipv6: true }.message();
    host.strays.push(stray.clone());
    let desired = desired_guard(&guard_groups(&[("br-a".into(), &new)]), &host).unwrap();
    let steps = diff(&host, &desired);
    let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "route replace prohibit 203.0.112.0/23 table 0x58388000",
            "rule del 5000: from 172.20.0.4/32 iif br-a goto 5002",
            "rule add 5000: from 172.20.0.6/32 iif br-a goto 5002",
            &format!("rule del (stray) {stray:?}"),
            "route del 203.0.113.0/24 table 0x58388000",
        ]
    );
    let host = applied(&host, &steps);
    let gone: Vec<String> = diff(&host, &GuardState::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        gone,
        [
            "rule del 5000: from 172.20.0.5/32 iif br-a goto 5002",
            "rule del 5000: from 172.20.0.6/32 iif br-a goto 5002",
            "rule del 5001: iif br-a lookup 0x58388000",
            "rule del 5002: nop (inet)",
            "route del 203.0.112.0/23 table 0x58388000",
        ]
    );
    let first: Vec<String> = diff(&InstalledGuard::default(), &desired)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        first[..2],
        [
            "route replace prohibit 203.0.112.0/23 table 0x58388000",
            "rule add 5002: nop (inet)"
        ]
    );
}

#[test]
fn a_new_selector_gets_a_new_table_before_the_old_rule_goes() {
    let old = plan("203.0.113.0/24", &[]);
    let new = plan("203.0.113.0/24,tcp:443", &[]);
    let host = installed(&fresh(&[("br-a".into(), &old)]));
    let desired = desired_guard(&guard_groups(&[("br-a".into(), &new)]), &host).unwrap();
    let shown: Vec<String> = diff(&host, &desired)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "route replace prohibit 203.0.113.0/24 table 0x58388001",
            "rule add 5001: iif br-a ipproto 6 dport 443 lookup 0x58388001",
            "rule del 5001: iif br-a lookup 0x58388000",
            "route del 203.0.113.0/24 table 0x58388000",
        ]
    );
}

#[test]
fn a_route_of_another_type_in_a_guard_table_is_replaced() {
    let guard = plan("203.0.113.0/24", &[]);
    let desired = fresh(&[("br-a".into(), &guard)]);
    let mut host = installed(&desired);
    let key = (T0, "203.0.113.0/24".parse().unwrap());
    host.routes
        .insert(key, RouteAction::Via("192.0.2.1".parse().unwrap()));
    assert_eq!(
        diff(&host, &desired),
        vec![Step::PutRoute(key.0, key.1, RouteAction::Prohibit)]
    );
}

fn block(label: &str) -> HostRule {
    HostRule::Block {
        bridge: "br-a".into(),
        source: None,
        selector: Selector::of(&OwnedRule::from_rule(&parse_rules(label).unwrap()[0])),
        table: T0,
    }
}

fn block_from(source: &str, label: &str) -> HostRule {
    let HostRule::Block {
        bridge,
        selector,
        table,
        ..
    } = block(label)
    else {
        unreachable!()
    };
    HostRule::Block {
        bridge,
        source: Some(source.parse().unwrap()),
        selector,
        table,
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
            (
                "172.20.0.3".parse().unwrap(),
                blocked("198.51.100.0/24,tcp:443"),
            ),
            ("fd00:20::3".parse().unwrap(), blocked("2001:db8::/32")),
        ]
        .into(),
        ..GuardPlan::default()
    };
    let state = fresh(&[("br-outer".into(), &guard)]);
    assert_eq!(
        shown(&state),
        [
            "5001: from 172.20.0.3/32 iif br-outer ipproto 6 dport 443 lookup 0x58388000",
            "5001: from fd00:20::3/128 iif br-outer lookup 0x58388001",
        ]
    );
    assert_eq!(state.routes.len(), 3);
    for rule in &state.rules {
        assert_eq!(HostRule::parse(&rule.message()), Some(Ok(rule.clone())));
    }
}

#[test]
fn a_stale_delete_cannot_take_a_kept_rule_sharing_its_table() {
    // Two rules looking up one table only happen on a tampered host.
    let sourced = block_from("172.20.0.3", "203.0.113.0/24");
    assert!(delete_fits(&block("203.0.113.0/24"), &sourced));
    assert!(!delete_fits(&sourced, &block("203.0.113.0/24")));
    assert!(!delete_fits(
        &block_from("172.20.0.9", "203.0.113.0/24"),
        &sourced
    ));
    let HostRule::Block { table, .. } = &sourced else {
        unreachable!()
    };
    let mut other_table = block("203.0.113.0/24");
    if let HostRule::Block { table: t, .. } = &mut other_table {
        *t = table + 1;
    }
    assert!(!delete_fits(&other_table, &sourced));
    let mut from = InstalledGuard::default();
    from.rules
        .extend([block("203.0.113.0/24"), sourced.clone()]);
    let desired = GuardState {
        rules: [sourced].into(),
        routes: BTreeMap::new(),
    };
    let steps: Vec<String> = diff(&from, &desired)
        .iter()
        .map(ToString::to_string)
        .collect();
    let rule = "5001: from 172.20.0.3/32 iif br-a lookup 0x58388000";
    assert_eq!(
        steps,
        [
            format!("rule del {rule}"),
            format!("rule add {rule}"),
            "rule del 5001: iif br-a lookup 0x58388000".to_owned(),
        ]
    );
}

#[test]
fn only_loosening_steps_wait_for_failed_tightening() {
    let block = block("203.0.113.0/24");
    let allow = HostRule::Allow {
        bridge: "br-a".into(),
        source: "172.20.0.4".parse().unwrap(),
    };
    let dst: Cidr = "203.0.113.0/24".parse().unwrap();
    assert!(Step::Delete(block.clone()).loosens());
    assert!(Step::DeleteStray(block.message()).loosens());
    assert!(Step::DeleteRoute(T0, dst).loosens());
    assert!(!Step::Delete(allow.clone()).loosens());
    assert!(!Step::Add(allow).loosens());
    assert!(!Step::Add(block).loosens());
    let prohibit = Step::PutRoute(T0, dst, RouteAction::Prohibit);
    assert!(prohibit.tightens() && !prohibit.loosens());
    let throw = Step::PutRoute(T0, dst, RouteAction::Throw);
    assert!(throw.loosens() && !throw.tightens());
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

#[test]
fn route_changes_put_what_is_missing_and_delete_what_is_not_wanted_in_one_walk() {
    let cidr = |c: &str| -> Cidr { c.parse().unwrap() };
    let prohibit = RouteAction::Prohibit;
    let desired = GuardState {
        rules: BTreeSet::new(),
        routes: [
            ((T0, cidr("10.0.0.1/32")), prohibit),
            ((T0, cidr("10.0.0.3/32")), prohibit),
            ((T0, cidr("10.0.0.4/32")), RouteAction::Throw),
            ((T0 + 1, cidr("10.0.0.1/32")), prohibit),
        ]
        .into(),
    };
    let host = InstalledGuard {
        routes: [
            ((T0, cidr("10.0.0.0/32")), prohibit),
            ((T0, cidr("10.0.0.1/32")), prohibit),
            ((T0, cidr("10.0.0.2/32")), prohibit),
            (
                (T0, cidr("10.0.0.3/32")),
                RouteAction::Via("192.0.2.1".parse().unwrap()),
            ),
            ((T0, cidr("10.0.0.4/32")), prohibit),
            ((T0 + 2, cidr("10.0.0.1/32")), prohibit),
        ]
        .into(),
        ..InstalledGuard::default()
    };
    let (put, delete) = route_changes(&host, &desired);
    assert_eq!(
        put,
        [
            Step::PutRoute(T0, cidr("10.0.0.3/32"), prohibit),
            Step::PutRoute(T0, cidr("10.0.0.4/32"), RouteAction::Throw),
            Step::PutRoute(T0 + 1, cidr("10.0.0.1/32"), prohibit)
        ]
    );
    assert_eq!(
        delete,
        [
            Step::DeleteRoute(T0, cidr("10.0.0.0/32")),
            Step::DeleteRoute(T0, cidr("10.0.0.2/32")),
            Step::DeleteRoute(T0 + 2, cidr("10.0.0.1/32"))
        ]
    );
    assert_eq!(
        route_changes(&InstalledGuard::holding(&desired), &desired),
        (vec![], vec![])
    );
}
