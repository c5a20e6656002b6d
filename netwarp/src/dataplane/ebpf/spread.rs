//! A spread target's member table: which member each of its
//! [`SPREAD_SLOTS`] slots (flow hashes) goes to.
//!
//! Members get equal shares (the first `SPREAD_SLOTS % n` one slot more).
//! A slot keeps its member while that member stays and is within its
//! share; only the others are handed out, to the members below their
//! share, in order. So when a member leaves, only its slots (its flows)
//! move; when one joins, it takes just its share from the others.

use netwarp_common::{SPREAD_SLOTS, SpreadSlot, SpreadTable};

/// The table for `members` (distinct, in label order, at least one),
/// moving as few slots of `previous` as the new shares allow.
pub fn assign(previous: Option<&SpreadTable>, members: &[SpreadSlot]) -> SpreadTable {
    let n = members.len().max(1);
    let share = |i: usize| SPREAD_SLOTS / n + usize::from(i < SPREAD_SLOTS % n);
    let mut counts = vec![0usize; members.len()];
    let mut slots: [Option<usize>; SPREAD_SLOTS] = [None; SPREAD_SLOTS];
    if let Some(previous) = previous {
        for (slot, was) in slots.iter_mut().zip(previous.slots.iter()) {
            if let Some(i) = members.iter().position(|m| m == was)
                && counts[i] < share(i)
            {
                counts[i] += 1;
                *slot = Some(i);
            }
        }
    }
    let mut next = 0;
    let mut table = SpreadTable {
        slots: [SpreadSlot::default(); SPREAD_SLOTS],
    };
    for (slot, kept) in table.slots.iter_mut().zip(slots) {
        let member = kept.or_else(|| {
            while next < members.len() && counts[next] >= share(next) {
                next += 1;
            }
            let i = (next < members.len()).then_some(next)?;
            counts[i] += 1;
            Some(i)
        });
        if let Some(i) = member {
            *slot = members[i];
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(ifindex: u32) -> SpreadSlot {
        SpreadSlot {
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            _pad: [0; 2],
        }
    }

    fn counts(table: &SpreadTable) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for slot in &table.slots {
            *counts.entry(slot.ifindex).or_default() += 1;
        }
        counts
    }

    fn moved(a: &SpreadTable, b: &SpreadTable) -> Vec<(u32, u32)> {
        (a.slots.iter().zip(b.slots.iter()))
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.ifindex, y.ifindex))
            .collect()
    }

    #[test]
    fn members_get_equal_shares() {
        let four: Vec<SpreadSlot> = (1..=4).map(member).collect();
        let table = assign(None, &four);
        assert_eq!(counts(&table), [(1, 16), (2, 16), (3, 16), (4, 16)].into());
        let three = assign(None, &four[..3]);
        assert_eq!(counts(&three), [(1, 22), (2, 21), (3, 21)].into());
        assert_eq!(counts(&assign(None, &four[..1])), [(1, 64)].into());
        // The same members, the same table: nothing moves.
        assert_eq!(assign(Some(&table), &four), table);
    }

    #[test]
    fn a_member_leaving_moves_only_its_slots() {
        let four: Vec<SpreadSlot> = (1..=4).map(member).collect();
        let before = assign(None, &four);
        for gone in 0..4 {
            let mut left = four.clone();
            let gone = left.remove(gone).ifindex;
            let after = assign(Some(&before), &left);
            let moved = moved(&before, &after);
            assert_eq!(moved.len(), 16, "{moved:?}");
            assert!(moved.iter().all(|(from, to)| *from == gone && *to != gone));
            let shares: Vec<usize> = counts(&after).into_values().collect();
            assert!(shares.iter().all(|s| (21..=22).contains(s)), "{shares:?}");
        }
        // Down to one, then none left to move to but it.
        let one = assign(Some(&before), &four[3..]);
        assert_eq!(moved(&before, &one).len(), 48);
    }

    #[test]
    fn a_member_joining_takes_only_its_share() {
        let four: Vec<SpreadSlot> = (1..=4).map(member).collect();
        let three = assign(None, &four[..3]);
        let after = assign(Some(&three), &four);
        let moved = moved(&three, &after);
        assert_eq!(moved.len(), 16);
        assert!(moved.iter().all(|(_, to)| *to == 4));
        assert_eq!(counts(&after), [(1, 16), (2, 16), (3, 16), (4, 16)].into());
        // A member's veth changing (it restarted) is a leave and a join:
        // the others keep theirs.
        let mut restarted = four.clone();
        restarted[1] = member(9);
        let again = assign(Some(&after), &restarted);
        assert!(moved_only(&after, &again, 2));
    }

    fn moved_only(a: &SpreadTable, b: &SpreadTable, from: u32) -> bool {
        moved(a, b).iter().all(|(f, _)| *f == from)
    }
}
