//! Compiling a target's plan entries into LPM trie rows (pure).
//!
//! The data path does one longest-prefix lookup per packet, so each row
//! must carry everything that applies to its prefix: the selectors of
//! every rule whose destination contains it are folded in.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use netwarp_common::{
    ACTION_BLOCK, ACTION_STEER, GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, GUARD_ALLOW_MAC, GuardAllowKey,
    MAX_SELECTORS, REASON_POLICY, REASON_WARP_DOWN, RuleValue, Selector,
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
    let mut by_destination: BTreeMap<Cidr, Action> = BTreeMap::new();
    for entry in entries {
        by_destination
            .entry(entry.rule.destination)
            .and_modify(|a| *a = (*a).max(entry.action))
            .or_insert(entry.action);
    }
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
    let mut rows = Vec::with_capacity(by_destination.len());
    for (destination, action) in by_destination {
        let mut covering: Vec<usize> = (lengths[usize::from(destination.is_ipv6())].iter())
            .take_while(|&&len| len <= destination.prefix_len())
            .filter_map(|&len| by_prefix.get(&destination.truncated(len)))
            .flatten()
            .copied()
            .collect();
        // In the entries' order, so a row's selectors do not depend on how
        // they were found.
        covering.sort_unstable();
        let covering = covering.into_iter().map(|index| &entries[index]);
        let mut value = RuleValue {
            // Interim: one action per row (the program passes action 0).
            action: match action {
                Action::Via(_) => ACTION_STEER,
                Action::Direct => 0,
                Action::Deny | Action::Block => ACTION_BLOCK,
            },
            block_reason: match (action, warp_usable) {
                (Action::Via(_) | Action::Direct, _) => 0,
                (Action::Deny, _) | (Action::Block, true) => REASON_POLICY,
                (Action::Block, false) => REASON_WARP_DOWN,
            },
            ..RuleValue::default()
        };
        let mut selectors: Vec<Selector> = Vec::new();
        for entry in covering {
            match entry.rule.protocol {
                None => value.any_protocol = 1,
                Some(protocol) => {
                    let (port_lo, port_hi) = entry.rule.ports.map_or((0, 0), |p| (p.start, p.end));
                    let selector = Selector {
                        ip_proto: protocol.ip_proto(destination.is_ipv6()),
                        _pad: 0,
                        port_lo,
                        port_hi,
                    };
                    if !selectors.contains(&selector) {
                        selectors.push(selector);
                    }
                }
            }
        }
        if value.any_protocol == 0 {
            if selectors.len() > MAX_SELECTORS {
                return Err(CompileError::TooManySelectors {
                    destination,
                    count: selectors.len(),
                });
            }
            value.selector_count = selectors.len() as u8;
            value.selectors[..selectors.len()].copy_from_slice(&selectors);
        }
        rows.push(CompiledPrefix { destination, value });
    }
    Ok(rows)
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
    use crate::model::parse_rules;

    fn entries(rules: &str, action: Action) -> Vec<Entry> {
        Entry::all(&parse_rules(rules).unwrap(), action)
    }

    fn via() -> Action {
        Action::Via("172.20.0.2".parse().unwrap())
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
        assert_eq!(v.action, ACTION_STEER);
        assert_eq!(v.any_protocol, 0);
        assert_eq!(v.selector_count, 2);
        assert_eq!(
            (
                v.selectors[0].ip_proto,
                v.selectors[0].port_lo,
                v.selectors[0].port_hi
            ),
            (6, 443, 443)
        );
        assert_eq!(
            (
                v.selectors[1].ip_proto,
                v.selectors[1].port_lo,
                v.selectors[1].port_hi
            ),
            (17, 5000, 5100)
        );
    }

    #[test]
    fn a_longer_prefix_inherits_the_selectors_that_contain_it() {
        let mut all = entries("10.0.0.0/8", via());
        all.extend(entries("10.1.0.0/16,tcp:22", via()));
        let rows = compile(&all, true).unwrap();
        let inner = rows
            .iter()
            .find(|r| r.destination.to_string() == "10.1.0.0/16")
            .unwrap();
        // 10.0.0.0/8 takes every protocol, so its /16 inside must too.
        assert_eq!(inner.value.any_protocol, 1);
        let outer = rows
            .iter()
            .find(|r| r.destination.to_string() == "10.0.0.0/8")
            .unwrap();
        assert_eq!(outer.value.any_protocol, 1);
    }

    #[test]
    fn an_outer_prefix_does_not_inherit_inner_selectors() {
        let mut all = entries("10.0.0.0/8,udp:53", via());
        all.extend(entries("10.1.0.0/16,tcp:22", via()));
        let rows = compile(&all, true).unwrap();
        let outer = rows
            .iter()
            .find(|r| r.destination.to_string() == "10.0.0.0/8")
            .unwrap();
        assert_eq!(outer.value.selector_count, 1);
        let inner = rows
            .iter()
            .find(|r| r.destination.to_string() == "10.1.0.0/16")
            .unwrap();
        assert_eq!(inner.value.selector_count, 2);
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
        assert_eq!(v4.value.action, ACTION_BLOCK);
        assert_eq!(v4.value.block_reason, REASON_POLICY);
        let down = compile(&entries("192.0.2.0/24", Action::Block), false).unwrap();
        assert_eq!(down[0].value.block_reason, REASON_WARP_DOWN);
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
            let action = if i % 3 == 0 { Action::Block } else { via() };
            all.extend(entries(rules, action));
        }
        let rows = compile(&all, true).unwrap();
        for row in &rows {
            let d = row.destination;
            let scanned: Vec<&Entry> = (all.iter())
                .filter(|e| {
                    let c = e.rule.destination;
                    c.is_ipv6() == d.is_ipv6()
                        && c.prefix_len() <= d.prefix_len()
                        && c.contains(d.addr())
                })
                .collect();
            let any = scanned.iter().any(|e| e.rule.protocol.is_none());
            assert_eq!(row.value.any_protocol == 1, any, "{d}");
            if !any {
                let mut want: Vec<(u8, u16, u16)> = Vec::new();
                for e in &scanned {
                    let p = e.rule.protocol.unwrap();
                    let (lo, hi) = e.rule.ports.map_or((0, 0), |r| (r.start, r.end));
                    let s = (p.ip_proto(d.is_ipv6()), lo, hi);
                    if !want.contains(&s) {
                        want.push(s);
                    }
                }
                let got: Vec<(u8, u16, u16)> = row.value.selectors
                    [..usize::from(row.value.selector_count)]
                    .iter()
                    .map(|s| (s.ip_proto, s.port_lo, s.port_hi))
                    .collect();
                assert_eq!(got, want, "{d}");
            }
        }
        assert_eq!(rows.len(), 10);
    }
}
