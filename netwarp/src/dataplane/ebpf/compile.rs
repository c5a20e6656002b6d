//! Compiling a target's plan entries into LPM trie rows (pure).
//!
//! The data path does one longest-prefix lookup per packet, so each row
//! must carry everything that applies to its prefix: every entry whose
//! destination contains it, as selectors in the order of the reference
//! decision ([`crate::plan::decide`]), so that the first one that takes a
//! packet is the one that decides it.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netwarp_common::{
    ACTION_BLOCK, ACTION_DENY, ACTION_DIRECT, ACTION_STEER, GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6,
    GUARD_ALLOW_MAC, GuardAllowKey, MAX_SELECTORS, REASON_POLICY, REASON_WARP_DOWN, RuleValue,
    Selector,
};

use crate::{
    dataplane::routes::parse_mac,
    model::Cidr,
    plan::{Action, Entry, GuardPlan},
};

/// The allow-map keys of a bridge's guard: its allowed source addresses
/// and its warps' MACs (a malformed MAC is left out: fail closed).
pub fn guard_allow_keys(bridge_ifindex: u32, guard: &GuardPlan) -> BTreeSet<GuardAllowKey> {
    let key = |kind, bytes: &[u8]| {
        let mut addr = [0; 16];
        addr[..bytes.len()].copy_from_slice(bytes);
        GuardAllowKey {
            bridge_ifindex,
            kind,
            addr,
        }
    };
    let sources = guard.allowed_sources.iter().map(|source| match source {
        IpAddr::V4(v4) => key(GUARD_ALLOW_IPV4, &v4.octets()),
        IpAddr::V6(v6) => key(GUARD_ALLOW_IPV6, &v6.octets()),
    });
    let macs = guard
        .warp_macs
        .iter()
        .map(|mac| parse_mac(mac))
        .filter(|bytes| bytes.len() == 6)
        .map(|bytes| key(GUARD_ALLOW_MAC, &bytes));
    sources.chain(macs).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "destination {destination} needs {count} protocol selectors, more than the {MAX_SELECTORS} \
         the eBPF dataplane supports per prefix; merge port ranges or use --dataplane routes"
    )]
    TooManySelectors { destination: Cidr, count: usize },
}

/// One LPM row: a prefix and what to do with its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPrefix {
    pub destination: Cidr,
    pub value: RuleValue,
}

/// Compiles entries into rows, one per distinct destination prefix.
/// `warp_usable` says whether blocks are policy (the warp is up but cannot
/// carry this family) or the warp being down, for the drop counters.
pub fn compile(entries: &[Entry], warp_usable: bool) -> Result<Vec<CompiledPrefix>, CompileError> {
    // Each destination's covering entries are found by looking up its
    // ancestors at the prefix lengths in use, not by scanning every entry:
    // a bridge guard holds the union of its network's targets, and a scan
    // per row made its compile quadratic in that union.
    let mut by_prefix: BTreeMap<Cidr, Vec<usize>> = BTreeMap::new();
    let mut lengths: [BTreeSet<u8>; 2] = Default::default();
    for (index, entry) in entries.iter().enumerate() {
        let d = entry.rule.destination;
        by_prefix.entry(d).or_default().push(index);
        lengths[usize::from(d.is_ipv6())].insert(d.prefix_len());
    }
    let mut rows = Vec::with_capacity(by_prefix.len());
    for &destination in by_prefix.keys() {
        let mut covering: Vec<usize> = (lengths[usize::from(destination.is_ipv6())].iter())
            .take_while(|&&len| len <= destination.prefix_len())
            .filter_map(|&len| by_prefix.get(&destination.truncated(len)))
            .flatten()
            .copied()
            .collect();
        // In the entries' order, so a row does not depend on how its
        // entries were found.
        covering.sort_unstable();
        let value = row(
            destination,
            covering.into_iter().map(|index| &entries[index]),
            warp_usable,
        )?;
        rows.push(CompiledPrefix { destination, value });
    }
    Ok(rows)
}

/// The program's code for an action.
fn action_code(action: Action) -> u8 {
    match action {
        Action::Via(_) => ACTION_STEER,
        Action::Direct => ACTION_DIRECT,
        Action::Deny => ACTION_DENY,
        Action::Block => ACTION_BLOCK,
    }
}

/// The row of `destination` from the entries whose prefixes contain it:
/// their selectors ranked as [`crate::plan::decide`] ranks them (longer
/// prefix, narrower selector, greater action first; the sort is stable,
/// so equal ranks keep the entries' order), each with its action, until
/// the first entry of every protocol, which becomes the row's default: a
/// packet none of them takes gets it (or is left alone without one).
fn row<'a>(
    destination: Cidr,
    covering: impl Iterator<Item = &'a Entry>,
    warp_usable: bool,
) -> Result<RuleValue, CompileError> {
    let mut covering: Vec<&Entry> = covering.collect();
    covering.sort_by_key(|e| {
        (
            Reverse(e.rule.destination.prefix_len()),
            e.rule.selector_rank(),
            Reverse(e.action),
        )
    });
    let mut value = RuleValue::default();
    let mut selectors: Vec<Selector> = Vec::new();
    for entry in covering {
        let action = action_code(entry.action);
        if entry.action == Action::Block {
            value.block_reason = if warp_usable {
                REASON_POLICY
            } else {
                REASON_WARP_DOWN
            };
        }
        let Some(protocol) = entry.rule.protocol else {
            value.default_action = action;
            break;
        };
        let (port_lo, port_hi) = entry.rule.ports.map_or((0, 0), |p| (p.start, p.end));
        let ip_proto = protocol.ip_proto(destination.is_ipv6());
        // The same selector again ranks lower: the first one decides.
        if !(selectors.iter())
            .any(|s| (s.ip_proto, s.port_lo, s.port_hi) == (ip_proto, port_lo, port_hi))
        {
            selectors.push(Selector {
                ip_proto,
                action,
                port_lo,
                port_hi,
            });
        }
    }
    // Selectors at the end that do what the default does (`direct` does
    // what no default does) change nothing; dropping them keeps rows
    // short, for the program's loop and MAX_SELECTORS.
    let same = |a: u8, b: u8| a == b || (a == ACTION_DIRECT && b == 0);
    while selectors
        .last()
        .is_some_and(|s| same(s.action, value.default_action))
    {
        selectors.pop();
    }
    if selectors.len() > MAX_SELECTORS {
        return Err(CompileError::TooManySelectors {
            destination,
            count: selectors.len(),
        });
    }
    value.selector_count = selectors.len() as u8;
    value.selectors[..selectors.len()].copy_from_slice(&selectors);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_allow_keys_hold_addresses_and_well_formed_warp_macs() {
        let guard = GuardPlan {
            allowed_sources: ["172.20.0.4".parse().unwrap(), "fd00::4".parse().unwrap()].into(),
            warp_macs: ["02:42:ac:14:00:02".to_string(), "nonsense".to_string()].into(),
            ..GuardPlan::default()
        };
        let keys: Vec<(u32, u32, Vec<u8>)> = guard_allow_keys(7, &guard)
            .into_iter()
            .map(|k| (k.bridge_ifindex, k.kind, k.addr.to_vec()))
            .collect();
        let padded = |bytes: &[u8]| {
            let mut addr = bytes.to_vec();
            addr.resize(16, 0);
            addr
        };
        let v6: std::net::Ipv6Addr = "fd00::4".parse().unwrap();
        assert_eq!(
            keys,
            vec![
                (7, GUARD_ALLOW_MAC, padded(&[0x02, 0x42, 0xac, 0x14, 0, 2])),
                (7, GUARD_ALLOW_IPV4, padded(&[172, 20, 0, 4])),
                (7, GUARD_ALLOW_IPV6, v6.octets().to_vec()),
            ]
        );
    }
    use crate::model::{Verb, parse_policy, parse_rules};

    fn entries(rules: &str, action: Action) -> Vec<Entry> {
        Entry::all(&parse_rules(rules).unwrap(), action)
    }

    fn via() -> Action {
        Action::Via("172.20.0.2".parse().unwrap())
    }

    /// A target's entries from a policy label, as the planner makes them.
    fn policy(label: &str) -> Vec<Entry> {
        let mut entries: Vec<Entry> = (parse_policy(label).unwrap().rules.into_iter())
            .map(|rule| Entry {
                rule,
                action: match rule.verb {
                    Verb::Via => via(),
                    Verb::Direct => Action::Direct,
                    Verb::Block => Action::Deny,
                },
            })
            .collect();
        entries.sort();
        entries.dedup();
        crate::plan::prune_direct(&mut entries);
        entries
    }

    fn find(rows: &[CompiledPrefix], destination: &str) -> RuleValue {
        (rows.iter())
            .find(|r| r.destination.to_string() == destination)
            .unwrap_or_else(|| panic!("no row for {destination}"))
            .value
    }

    /// (ip_proto, action, port_lo, port_hi) of a row's selectors.
    fn selectors(v: &RuleValue) -> Vec<(u8, u8, u16, u16)> {
        v.selectors[..usize::from(v.selector_count)]
            .iter()
            .map(|s| (s.ip_proto, s.action, s.port_lo, s.port_hi))
            .collect()
    }

    /// What the from-container program does with a whole packet: the
    /// longest prefix row (the LPM trie's lookup), its first selector
    /// that takes the packet, else its default; 0 without a row.
    fn evaluate(rows: &[CompiledPrefix], dst: IpAddr, ip_proto: u8, dport: Option<u16>) -> u8 {
        let Some(row) = (rows.iter())
            .filter(|r| r.destination.contains(dst))
            .max_by_key(|r| r.destination.prefix_len())
        else {
            return 0;
        };
        let v = &row.value;
        (v.selectors[..usize::from(v.selector_count)].iter())
            .find(|s| {
                s.ip_proto == ip_proto
                    && (s.port_lo == 0 || dport.is_some_and(|p| s.port_lo <= p && p <= s.port_hi))
            })
            .map_or(v.default_action, |s| s.action)
    }

    #[test]
    fn one_row_per_prefix_with_its_selectors() {
        let rows = compile(
            &entries("203.0.113.0/24,tcp:443,udp:5000-5100", via()),
            true,
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        let v = rows[0].value;
        assert_eq!(v.default_action, 0);
        // Narrower first: one port before a range of 101.
        assert_eq!(
            selectors(&v),
            [(6, ACTION_STEER, 443, 443), (17, ACTION_STEER, 5000, 5100)]
        );
    }

    #[test]
    fn a_longer_prefix_inherits_the_rules_that_contain_it() {
        let mut all = entries("10.0.0.0/8", via());
        all.extend(entries("10.1.0.0/16,tcp:22", via()));
        let rows = compile(&all, true).unwrap();
        // 10.0.0.0/8 takes every protocol, so its /16 inside must too; the
        // /16's own selector does what that default does, so it goes.
        let inner = find(&rows, "10.1.0.0/16");
        assert_eq!(
            (inner.default_action, inner.selector_count),
            (ACTION_STEER, 0)
        );
        let outer = find(&rows, "10.0.0.0/8");
        assert_eq!(
            (outer.default_action, outer.selector_count),
            (ACTION_STEER, 0)
        );
    }

    #[test]
    fn an_outer_prefix_does_not_inherit_inner_selectors() {
        let mut all = entries("10.0.0.0/8,udp:53", via());
        all.extend(entries("10.1.0.0/16,tcp:22", via()));
        let rows = compile(&all, true).unwrap();
        assert_eq!(find(&rows, "10.0.0.0/8").selector_count, 1);
        // The longer prefix's selector first.
        assert_eq!(
            selectors(&find(&rows, "10.1.0.0/16")),
            [(6, ACTION_STEER, 22, 22), (17, ACTION_STEER, 53, 53)]
        );
    }

    #[test]
    fn a_block_rule_with_a_port_inside_a_full_tunnel_drops_only_that_port() {
        // The case one action per row got wrong: it blocked everything.
        let rows = compile(&policy("0.0.0.0/0; block 0.0.0.0/0,tcp:25"), true).unwrap();
        assert_eq!(rows.len(), 1);
        let v = rows[0].value;
        assert_eq!(v.default_action, ACTION_STEER);
        assert_eq!(selectors(&v), [(6, ACTION_DENY, 25, 25)]);
    }

    #[test]
    fn a_direct_exclusion_is_an_explicit_pass_that_shadows_the_steered_prefix() {
        let rows = compile(&policy("0.0.0.0/0; direct 172.20.0.0/16"), true).unwrap();
        let inner = find(&rows, "172.20.0.0/16");
        assert_eq!(
            (inner.default_action, inner.selector_count),
            (ACTION_DIRECT, 0)
        );
        // A steered selector inside the exclusion's prefix still wins on
        // its longer prefix; the exclusion's default passes the rest.
        let rows = compile(
            &policy("0.0.0.0/0; direct 172.20.0.0/16; 172.20.5.0/24,udp:53"),
            true,
        )
        .unwrap();
        let dns = find(&rows, "172.20.5.0/24");
        assert_eq!(dns.default_action, ACTION_DIRECT);
        assert_eq!(selectors(&dns), [(17, ACTION_STEER, 53, 53)]);
    }

    #[test]
    fn icmp_uses_the_family_protocol_number() {
        let rows = compile(
            &entries("2001:db8::/32,192.0.2.0/24,icmp", Action::Block),
            true,
        )
        .unwrap();
        let v6 = rows.iter().find(|r| r.destination.is_ipv6()).unwrap();
        let v4 = rows.iter().find(|r| !r.destination.is_ipv6()).unwrap();
        assert_eq!(v6.value.selectors[0].ip_proto, 58);
        assert_eq!(v4.value.selectors[0].ip_proto, 1);
        assert_eq!(v4.value.selectors[0].action, ACTION_BLOCK);
        assert_eq!(v4.value.block_reason, REASON_POLICY);
        let down = compile(&entries("192.0.2.0/24", Action::Block), false).unwrap();
        assert_eq!(
            (down[0].value.default_action, down[0].value.block_reason),
            (ACTION_BLOCK, REASON_WARP_DOWN)
        );
    }

    #[test]
    fn too_many_selectors_are_refused_not_truncated() {
        let ports: Vec<String> = (1..=9).map(|p| format!("tcp:{p}")).collect();
        let rules = format!("192.0.2.0/24,{}", ports.join(","));
        let err = compile(&entries(&rules, via()), true).unwrap_err();
        assert_eq!(
            err,
            CompileError::TooManySelectors {
                destination: "192.0.2.0/24".parse().unwrap(),
                count: 9
            }
        );
    }

    /// The ancestor lookup finds exactly what a scan of every entry finds,
    /// across nested prefixes, both families and mixed selectors.
    #[test]
    fn covering_entries_are_those_a_full_scan_finds() {
        let mut all = Vec::new();
        for (i, rules) in [
            "10.0.0.0/8,udp:53",
            "10.1.0.0/16,tcp:22",
            "10.1.2.0/24",
            "10.1.2.128/25,tcp:443",
            "10.1.2.129/32,udp:5000-5100",
            "10.2.0.0/16,tcp:80",
            "0.0.0.0/0,icmp",
            "2001:db8::/32,tcp:443",
            "2001:db8:1::/48",
            "2001:db8:1:2::/64,udp:53",
            "10.1.2.0/24,tcp:8080",
        ]
        .iter()
        .enumerate()
        {
            let action = match i % 3 {
                0 => Action::Block,
                1 => Action::Deny,
                _ => via(),
            };
            all.extend(entries(rules, action));
        }
        let rows = compile(&all, true).unwrap();
        for r in &rows {
            let d = r.destination;
            let scanned = (all.iter()).filter(|e| {
                let c = e.rule.destination;
                c.is_ipv6() == d.is_ipv6()
                    && c.prefix_len() <= d.prefix_len()
                    && c.contains(d.addr())
            });
            assert_eq!(r.value, row(d, scanned, true).unwrap(), "{d}");
        }
        assert_eq!(rows.len(), 10);
    }

    /// The compiled rows, evaluated as the program does, decide every
    /// packet as the reference decision does, over random plans of both
    /// families, every action and overlapping selectors.
    #[test]
    fn the_rows_decide_every_packet_as_the_planner_does() {
        use crate::plan::{decide, samples};
        let packets = samples::packets(&[
            "10.1.2.3",
            "10.1.9.9",
            "10.2.0.1",
            "203.0.113.5",
            "198.51.100.1",
            "2001:db8:1::5",
            "2001:db8:2::5",
            "fd00::1",
        ]);
        let mut compared = 0;
        for (round, plan) in samples::plans(1000, samples::PREFIXES.len())
            .into_iter()
            .enumerate()
        {
            let rows = compile(&plan, round % 2 == 0).unwrap();
            for &(dst, proto, port) in &packets {
                let dport = (proto == 6 || proto == 17).then_some(port);
                let want = decide(&plan, dst, proto, dport).map_or(0, action_code);
                assert_eq!(
                    evaluate(&rows, dst, proto, dport),
                    want,
                    "round {round}: {dst} proto {proto} port {port} with {plan:?}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 1000 * packets.len());
    }
}
