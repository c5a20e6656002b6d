//! What a target's entries do with one packet: the semantics every
//! dataplane compiles to, written once and plainly, for the tests.
//!
//! Of the entries whose destination contains the packet's and whose
//! protocol and ports take it, the one with the longest prefix wins; on
//! one prefix, the narrowest selector (a port range, narrower first, then
//! a protocol, then every protocol); still tied, the greater [`Action`]
//! (a drop before `direct` before `via`). No entry: netwarp leaves the
//! packet alone, as `direct` does.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use super::{Action, Entry};
use crate::model::{Cidr, Verb};

/// The action that takes a packet to `destination` of IP protocol
/// `ip_proto` and destination port `dport`, if any entry does.
pub fn decide(
    entries: &[Entry],
    destination: IpAddr,
    ip_proto: u8,
    dport: Option<u16>,
) -> Option<Action> {
    (entries.iter())
        .filter(|e| e.rule.destination.contains(destination) && e.rule.selects(ip_proto, dport))
        .max_by_key(|e| {
            (
                e.rule.destination.prefix_len(),
                Reverse(e.rule.selector_rank()),
                e.action,
            )
        })
        .map(|e| e.action)
}

/// Puts a target's entries in the form the dataplanes and the guards
/// rely on: a `via` rule of every protocol to a prefix that a `direct`
/// rule names too is dropped (`direct` wins that tie, whatever the warp's
/// state), and so are the `direct` entries that carve from nothing (no
/// other entry's prefix covers theirs: they would only cost rows).
pub fn prune_direct(entries: &mut Vec<Entry>) {
    let direct: HashSet<Cidr> = (entries.iter())
        .filter(|e| e.action == Action::Direct)
        .map(|e| e.rule.destination)
        .collect();
    if direct.is_empty() {
        // Nothing to prune (most targets): no index of thousands of
        // prefixes built each pass for a heavy label.
        return;
    }
    entries.retain(|e| {
        !(e.rule.verb == Verb::Via
            && e.rule.protocol.is_none()
            && direct.contains(&e.rule.destination))
    });
    let taken: HashSet<Cidr> = (entries.iter())
        .filter(|e| e.action != Action::Direct)
        .map(|e| e.rule.destination)
        .collect();
    let lengths: [BTreeSet<u8>; 2] = {
        let mut lengths: [BTreeSet<u8>; 2] = Default::default();
        for cidr in &taken {
            lengths[usize::from(cidr.is_ipv6())].insert(cidr.prefix_len());
        }
        lengths
    };
    entries.retain(|e| {
        let d = e.rule.destination;
        e.action != Action::Direct
            || (lengths[usize::from(d.is_ipv6())].iter())
                .take_while(|&&len| len <= d.prefix_len())
                .any(|&len| taken.contains(&d.truncated(len)))
    });
}

/// Random plans and packets for the dataplanes' tests against [`decide`].
#[cfg(test)]
pub(crate) mod samples {
    use std::net::IpAddr;

    use super::{Action, Entry};
    use crate::model::{Verb, parse_rules};

    /// Nested prefixes of both families, and overlapping selectors.
    pub const PREFIXES: [&str; 8] = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "203.0.113.0/24",
        "::/0",
        "2001:db8::/32",
        "2001:db8:1::/48",
    ];
    const SELECTORS: [&str; 8] = [
        "",
        ",tcp",
        ",udp",
        ",tcp:80",
        ",tcp:80-90",
        ",tcp:85-100",
        ",udp:53",
        ",icmp",
    ];

    /// `rounds` random plans of up to 7 rules over the first `prefixes`
    /// of [`PREFIXES`], with every action (a via rule of a warp that is
    /// down is a block), normalized as the planner does.
    pub fn plans(rounds: usize, prefixes: usize) -> Vec<Vec<Entry>> {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let via = Action::Via("172.20.0.2".parse().unwrap());
        (0..rounds)
            .map(|_| {
                let mut plan: Vec<Entry> = Vec::new();
                for _ in 0..1 + next(7) {
                    let prefix = PREFIXES[next(prefixes)];
                    let (verb, action) = match next(4) {
                        0 => (Verb::Via, via),
                        1 => (Verb::Direct, Action::Direct),
                        2 => (Verb::Block, Action::Deny),
                        _ => (Verb::Via, Action::Block),
                    };
                    let selector = match verb {
                        Verb::Direct => "",
                        _ => SELECTORS[next(SELECTORS.len())],
                    };
                    for rule in parse_rules(&format!("{prefix}{selector}")).unwrap() {
                        plan.push(Entry {
                            rule: rule.with_verb(verb),
                            action,
                        });
                    }
                }
                plan.sort();
                plan.dedup();
                super::prune_direct(&mut plan);
                plan
            })
            .collect()
    }

    /// Packets (destination, IP protocol, port) to each of `addresses`:
    /// TCP and UDP at the selectors' edges, ICMP of the family, and GRE.
    pub fn packets(addresses: &[&str]) -> Vec<(IpAddr, u8, u16)> {
        (addresses.iter())
            .flat_map(|ip| {
                let ip: IpAddr = ip.parse().unwrap();
                let icmp = if ip.is_ipv6() { 58 } else { 1 };
                [
                    (6, 80),
                    (6, 85),
                    (6, 95),
                    (6, 443),
                    (17, 53),
                    (17, 54),
                    (icmp, 0),
                    (47, 0),
                ]
                .map(|(proto, port)| (ip, proto, port))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_policy;

    fn entries(policy: &str) -> Vec<Entry> {
        let via = Action::Via("172.18.0.2".parse().unwrap());
        crate::plan::entries(&parse_policy(policy).unwrap().rules, |_| Some(via))
    }

    fn at(entries: &[Entry], ip: &str, proto: u8, port: Option<u16>) -> Option<Action> {
        decide(entries, ip.parse().unwrap(), proto, port)
    }

    #[test]
    fn the_longest_prefix_wins() {
        let e = entries("0.0.0.0/0; direct 10.0.0.0/8; block 10.1.0.0/16");
        let via = Some(Action::Via("172.18.0.2".parse().unwrap()));
        assert_eq!(at(&e, "198.51.100.1", 6, Some(80)), via);
        assert_eq!(at(&e, "10.2.0.1", 6, Some(80)), Some(Action::Direct));
        assert_eq!(at(&e, "10.1.0.1", 17, Some(53)), Some(Action::Deny));
        assert_eq!(at(&e, "2001:db8::1", 6, Some(80)), None);
    }

    #[test]
    fn on_one_prefix_the_narrowest_selector_wins() {
        let e = entries("0.0.0.0/0; block 0.0.0.0/0,tcp:25; 0.0.0.0/0,tcp:20-30");
        let via = Some(Action::Via("172.18.0.2".parse().unwrap()));
        assert_eq!(at(&e, "198.51.100.1", 6, Some(25)), Some(Action::Deny));
        assert_eq!(at(&e, "198.51.100.1", 6, Some(26)), via);
        assert_eq!(at(&e, "198.51.100.1", 17, Some(25)), via);
        // A longer prefix beats a narrower selector.
        let e = entries("block 0.0.0.0/0,tcp:443; 203.0.113.0/24");
        assert_eq!(at(&e, "203.0.113.9", 6, Some(443)), via);
        assert_eq!(at(&e, "198.51.100.1", 6, Some(443)), Some(Action::Deny));
        assert_eq!(at(&e, "198.51.100.1", 6, Some(80)), None);
    }

    #[test]
    fn ties_go_to_the_safer_action() {
        // The via rule is gone, so a warp going down does not turn it into
        // a block that would win the tie; the direct one then carves from
        // nothing, so nothing is left.
        let e = entries("10.0.0.0/8; direct 10.0.0.0/8");
        assert!(e.is_empty());
        let e = entries("0.0.0.0/0; 10.0.0.0/8; direct 10.0.0.0/8");
        assert_eq!(at(&e, "10.0.0.1", 1, None), Some(Action::Direct));
        let e = entries("10.0.0.0/8; block 10.0.0.0/8");
        assert_eq!(at(&e, "10.0.0.1", 1, None), Some(Action::Deny));
    }

    #[test]
    fn direct_entries_that_carve_from_nothing_are_dropped() {
        let e = entries("203.0.113.0/24; direct 10.0.0.0/8; direct 203.0.113.128/25");
        let shown: Vec<String> = e.iter().map(|e| e.rule.to_string()).collect();
        assert_eq!(shown, ["203.0.113.0/24", "direct 203.0.113.128/25"]);
        // Covered by a block rule of its own prefix: kept (the block wins).
        assert_eq!(entries("block 10.0.0.0/8; direct 10.0.0.0/8").len(), 2);
        // A via rule of one protocol on the same prefix: both kept.
        assert_eq!(entries("10.0.0.0/8,udp:53; direct 10.0.0.0/8").len(), 2);
    }
}
