//! Recompiling a rule set after a small change to its entries (pure):
//! only the rows the change can reach are compiled again.
//!
//! A row carries what every entry whose destination contains it says (see
//! [`compile`]), so a changed entry reaches the row of its own destination
//! and the rows of the destinations inside it, and no other. A bridge
//! guard holds the union of its network's targets' prefixes (tens of
//! thousands with heavy rules labels), and most passes change none of
//! them or a few (an ordinary target came or went): compiling the whole
//! union again each time made every such pass pay for the heavy labels.

use std::collections::BTreeSet;

use super::compile::{CompileError, CompiledPrefix, compile};
use crate::{model::Cidr, plan::Entry};

/// Past this many reached destinations, compiling everything costs about
/// as much as finding what to recompile.
const MAX_REACHED: usize = 4096;

/// The rows of `entries`, given `rows`, the rows of `before` compiled with
/// the same `warp_usable`: the rows no changed entry reaches are kept, the
/// others compiled again. Equal to `compile(entries, warp_usable)`. Both
/// entry lists are sorted (as plans keep them); when either is not, or
/// the change reaches many rows, everything is compiled.
pub fn recompile(
    before: &[Entry],
    rows: &[CompiledPrefix],
    entries: &[Entry],
    warp_usable: bool,
) -> Result<Vec<CompiledPrefix>, CompileError> {
    let sorted = |list: &[Entry]| list.is_sorted();
    let rows_sorted = rows.is_sorted_by(|a, b| a.destination < b.destination);
    if !(sorted(before) && sorted(entries) && rows_sorted) {
        return compile(entries, warp_usable);
    }
    let changed = changed_destinations(before, entries);
    if changed.is_empty() {
        return Ok(rows.to_vec());
    }
    let Some(reached) = reached(&changed, entries) else {
        return compile(entries, warp_usable);
    };
    // The entries that say something about a reached row: those of its
    // destination and of every destination containing it. Compiled on
    // their own (in the entries' order, which orders a row's selectors),
    // they give the same rows for the reached destinations.
    let mut involved: Vec<usize> = Vec::new();
    for destination in &reached {
        for len in 0..=destination.prefix_len() {
            involved.extend(with_destination(entries, destination.truncated(len)));
        }
    }
    involved.sort_unstable();
    involved.dedup();
    let involved: Vec<Entry> = involved.into_iter().map(|i| entries[i]).collect();
    let fresh = (compile(&involved, warp_usable)?.into_iter())
        .filter(|row| reached.contains(&row.destination));
    let kept = (rows.iter())
        .filter(|row| !reached.contains(&row.destination))
        .cloned();
    Ok(merge(kept, fresh))
}

/// The destinations of the entries in one list and not the other, sorted.
fn changed_destinations(before: &[Entry], entries: &[Entry]) -> Vec<Cidr> {
    let mut changed = Vec::new();
    let (mut old, mut new) = (before.iter().peekable(), entries.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(a), Some(b)) if a == b => {
                old.next();
                new.next();
            }
            (Some(a), Some(b)) if a < b => {
                changed.push(a.rule.destination);
                old.next();
            }
            (_, Some(b)) => {
                changed.push(b.rule.destination);
                new.next();
            }
            (Some(a), None) => {
                changed.push(a.rule.destination);
                old.next();
            }
            (None, None) => break,
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// The destinations whose rows a change of the entries of `changed` can
/// reach: those, and every destination of `entries` inside one of them.
/// `None` past [`MAX_REACHED`].
fn reached(changed: &[Cidr], entries: &[Entry]) -> Option<BTreeSet<Cidr>> {
    if changed.len() > MAX_REACHED {
        return None;
    }
    let mut reached: BTreeSet<Cidr> = changed.iter().copied().collect();
    for outer in changed {
        // Sorted by destination, the prefixes inside `outer` follow it.
        let start = entries.partition_point(|e| e.rule.destination < *outer);
        for entry in &entries[start..] {
            let inner = entry.rule.destination;
            if !outer.contains(inner.addr()) {
                break;
            }
            if inner.prefix_len() >= outer.prefix_len() {
                reached.insert(inner);
                if reached.len() > MAX_REACHED {
                    return None;
                }
            }
        }
    }
    Some(reached)
}

/// The indexes of the entries whose destination is `destination`.
fn with_destination(entries: &[Entry], destination: Cidr) -> std::ops::Range<usize> {
    let start = entries.partition_point(|e| e.rule.destination < destination);
    let end = start + entries[start..].partition_point(|e| e.rule.destination == destination);
    start..end
}

/// Two row lists sorted by destination, with no destination in both, as one.
fn merge(
    a: impl Iterator<Item = CompiledPrefix>,
    b: impl Iterator<Item = CompiledPrefix>,
) -> Vec<CompiledPrefix> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let mut rows = Vec::new();
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.destination < y.destination => a.next(),
            (_, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => break,
        };
        rows.extend(next);
    }
    rows
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{model::parse_rules, plan::Action};

    /// Nested and disjoint prefixes of both families, with and without
    /// selectors: every kind of containment a change can reach through.
    const ITEMS: [&str; 14] = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "10.1.2.4/32",
        "10.2.0.0/16",
        "192.0.2.0/24",
        "192.0.2.0/25",
        "0.0.0.0/0",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "2001:db8:1::1/128",
        "::/0",
        "198.51.100.7/32",
    ];
    const SELECTORS: [&str; 4] = ["", ",tcp:443", ",udp:53", ",icmp"];

    /// A small deterministic generator (no dependency for a test).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    /// Action 0 blocks, 1 steers, 2 leaves alone, 3 denies.
    fn entry(item: usize, selector: usize, action: usize) -> Entry {
        let rules = parse_rules(&format!("{}{}", ITEMS[item], SELECTORS[selector])).unwrap();
        let rule = rules[0];
        let action = match (action, rule.destination.is_ipv6()) {
            (1, false) => Action::Via(IpAddr::from([172, 30, 0, 2])),
            (1, true) => Action::Via("fd00::2".parse().unwrap()),
            (2, _) => Action::Direct,
            (3, _) => Action::Deny,
            _ => Action::Block,
        };
        Entry { rule, action }
    }

    fn random_entries(rng: &mut Lcg, count: usize) -> Vec<Entry> {
        let mut entries: Vec<Entry> = (0..count)
            .map(|_| {
                entry(
                    rng.below(ITEMS.len()),
                    rng.below(SELECTORS.len()),
                    rng.below(4),
                )
            })
            .collect();
        entries.sort();
        entries.dedup();
        entries
    }

    #[test]
    fn recompiling_a_change_gives_what_compiling_everything_gives() {
        let mut rng = Lcg(21);
        for round in 0..2000 {
            let count = 1 + rng.below(12);
            let before = random_entries(&mut rng, count);
            // A few entries added or removed.
            let mut entries = before.clone();
            for _ in 0..1 + rng.below(3) {
                if rng.below(2) == 0 && !entries.is_empty() {
                    entries.remove(rng.below(entries.len()));
                } else {
                    entries.extend(random_entries(&mut rng, 1));
                }
            }
            entries.sort();
            entries.dedup();
            let warp_usable = round % 2 == 0;
            let rows = compile(&before, warp_usable).unwrap();
            assert_eq!(
                recompile(&before, &rows, &entries, warp_usable).unwrap(),
                compile(&entries, warp_usable).unwrap(),
                "round {round}: {before:?} -> {entries:?}"
            );
        }
    }

    #[test]
    fn an_unchanged_set_keeps_its_rows_and_a_change_outside_them_adds_one() {
        let heavy: Vec<Entry> = (0..500)
            .map(|i| Entry {
                rule: parse_rules(&format!("10.202.{}.{}/32", i / 250, i % 250)).unwrap()[0],
                action: Action::Block,
            })
            .collect();
        let rows = compile(&heavy, false).unwrap();
        assert_eq!(recompile(&heavy, &rows, &heavy, false).unwrap(), rows);
        let mut entries = heavy.clone();
        entries.push(entry(6, 0, 0));
        entries.sort();
        let recompiled = recompile(&heavy, &rows, &entries, false).unwrap();
        assert_eq!(recompiled.len(), rows.len() + 1);
        assert_eq!(recompiled, compile(&entries, false).unwrap());
    }

    #[test]
    fn unsorted_entries_are_compiled_whole() {
        let before = vec![entry(0, 0, 0)];
        let rows = compile(&before, false).unwrap();
        let entries = vec![entry(9, 0, 0), entry(1, 1, 0)];
        assert_eq!(
            recompile(&before, &rows, &entries, false).unwrap(),
            compile(&entries, false).unwrap()
        );
    }
}
