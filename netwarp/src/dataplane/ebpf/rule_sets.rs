//! Rule sets in the LPM tries.
//!
//! Targets' policies share sets by content ([`RuleSets::acquire`]): every
//! target on the same rules and warp state (most hosts: the global rules)
//! reads one set, written once. A policy changes by acquiring its new set
//! (written first if no target holds it yet), one state write switching to
//! it, then releasing the old one, removed when its last user leaves.
//! Bridge guards (owner: the bridge) are switched in as a double buffer
//! under the owner's two ids when first written, then change in place
//! ([`RuleSets::update_in_place`]): their rows only block, so no mixture of
//! old and new rows lets anything out.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, Hash, Hasher},
    net::IpAddr,
};

use aya::{
    Ebpf, Pod,
    maps::{
        MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use netwarp_common::{RULE_SET_BITS, RULES_V4_MAP, RULES_V6_MAP, RuleKeyV4, RuleKeyV6, RuleValue};

use super::{
    compile::CompiledPrefix,
    error::EbpfError,
    maps::{lpm_trie, map_error, remove_trie_keys},
};
use crate::model::Cidr;

/// The id that follows `current` for `owner`: two ids per owner,
/// alternating; the low bit is the generation. Owners are interfaces
/// (ifindexes below 2^30), so these ids stay below [`SHARED_BASE`].
pub fn next_rule_set(owner: u32, current: Option<u32>) -> u32 {
    (owner << 1) | current.map_or(0, |id| (id & 1) ^ 1)
}

/// The first id of the sets shared by content; owners' ids lie below it.
pub const SHARED_BASE: u32 = 1 << 31;

/// The rows written under each rule set id, adopted with one scan at load
/// and kept since, so removals delete known keys and a restart's adoption
/// compares without scanning again.
pub(super) struct RuleSets {
    written: HashMap<u32, BTreeMap<Cidr, RuleValue>>,
    /// How many of `written` are IPv4 and IPv6 rows, kept as they change:
    /// status reads it every pass, and a count would walk every row.
    rows: Rows,
    /// The shared sets by a hash of their rows (a hit is confirmed by
    /// comparing the rows), so a set's content is not kept twice.
    by_content: HashMap<u64, Vec<u32>>,
    /// The policies reading each shared set. A shared set without users
    /// is inert: one whose write failed half-way, or one a crashed run
    /// left. The next new set is written over it (see [`Self::acquire`]).
    users: HashMap<u32, usize>,
    /// Where the search for a free shared id starts.
    next_shared: u32,
}

/// Rows held per family.
#[derive(Clone, Copy, Debug, Default)]
struct Rows {
    v4: usize,
    v6: usize,
}

impl Rows {
    fn of(&mut self, destination: Cidr) -> &mut usize {
        if destination.is_ipv6() {
            &mut self.v6
        } else {
            &mut self.v4
        }
    }
}

impl RuleSets {
    /// Adopts what the tries hold (one scan of each); `policies` are the
    /// rule set ids the adopted state rows read, one per policy.
    pub(super) fn adopt(
        ebpf: &mut Ebpf,
        policies: impl IntoIterator<Item = u32>,
    ) -> Result<Self, EbpfError> {
        let mut written: HashMap<u32, BTreeMap<Cidr, RuleValue>> = HashMap::new();
        let mut rows = Rows::default();
        for (rule_set, row) in scan(ebpf)? {
            let set = written.entry(rule_set).or_default();
            if set.insert(row.destination, row.value).is_none() {
                *rows.of(row.destination) += 1;
            }
        }
        let mut users: HashMap<u32, usize> = HashMap::new();
        for rule_set in policies.into_iter().filter(|id| *id >= SHARED_BASE) {
            *users.entry(rule_set).or_default() += 1;
        }
        let mut by_content: HashMap<u64, Vec<u32>> = HashMap::new();
        for (id, set) in written.iter().filter(|(id, _)| **id >= SHARED_BASE) {
            users.entry(*id).or_default();
            by_content.entry(content_hash(set)).or_default().push(*id);
        }
        Ok(Self {
            written,
            rows,
            by_content,
            users,
            next_shared: SHARED_BASE,
        })
    }

    /// A shared set holding exactly `rows`, with one more user: the one
    /// already written if any, else a new one. An inert set (no users) is
    /// brought to `rows` rather than a fresh id written, so what a failed
    /// write left is finished, not rewritten. On a failed write the new
    /// set stays inert (never live); its rows are recorded as written.
    pub(super) fn acquire(
        &mut self,
        ebpf: &mut Ebpf,
        rows: &[CompiledPrefix],
    ) -> Result<u32, EbpfError> {
        let wanted: BTreeMap<Cidr, RuleValue> =
            rows.iter().map(|r| (r.destination, r.value)).collect();
        let hash = content_hash(&wanted);
        let existing = (self.by_content.get(&hash).into_iter().flatten())
            .copied()
            .find(|id| self.written.get(id) == Some(&wanted));
        if let Some(id) = existing {
            *self.users.entry(id).or_default() += 1;
            return Ok(id);
        }
        let inert = (self.users.iter())
            .filter(|(_, users)| **users == 0)
            .map(|(id, _)| *id)
            .min();
        let id = match inert {
            Some(id) => {
                self.forget_content(id);
                id
            }
            None => self.free_shared_id(),
        };
        self.users.insert(id, 0);
        let written = self.finish(ebpf, id, rows, &wanted);
        // Indexed by what it holds now, complete or not: a later acquire
        // of the same rows must not take a half-written set as its own.
        if let Some(set) = self.written.get(&id) {
            self.by_content
                .entry(content_hash(set))
                .or_default()
                .push(id);
        }
        written?;
        self.users.insert(id, 1);
        Ok(id)
    }

    /// One user of `rule_set` fewer; the set is removed with its last one.
    /// An owner's set (below [`SHARED_BASE`], as an older run wrote
    /// policies) has one user and is removed.
    pub(super) fn release(&mut self, ebpf: &mut Ebpf, rule_set: u32) -> Result<(), EbpfError> {
        if rule_set < SHARED_BASE {
            return self.remove(ebpf, rule_set);
        }
        let users = self.users.entry(rule_set).or_default();
        *users = users.saturating_sub(1);
        if *users > 0 {
            return Ok(());
        }
        // Inert until removed: a failure here leaves it for the next
        // acquire to write over.
        self.remove(ebpf, rule_set)?;
        self.forget_content(rule_set);
        self.users.remove(&rule_set);
        Ok(())
    }

    fn forget_content(&mut self, rule_set: u32) {
        for ids in self.by_content.values_mut() {
            ids.retain(|id| *id != rule_set);
        }
        self.by_content.retain(|_, ids| !ids.is_empty());
    }

    /// A shared id no set holds.
    fn free_shared_id(&mut self) -> u32 {
        loop {
            let id = self.next_shared;
            self.next_shared = self.next_shared.checked_add(1).unwrap_or(SHARED_BASE);
            if !self.written.contains_key(&id) && !self.users.contains_key(&id) {
                return id;
            }
        }
    }

    /// The rows written (or adopted) in each trie, IPv4 then IPv6: what
    /// the kernel holds, without a scan.
    pub(super) fn rows_per_family(&self) -> (usize, usize) {
        (self.rows.v4, self.rows.v6)
    }

    /// The rows written (or adopted) under `rule_set`, by destination.
    pub(super) fn rows(&self, rule_set: u32) -> Vec<CompiledPrefix> {
        (self.written.get(&rule_set).into_iter().flatten())
            .map(|(destination, value)| CompiledPrefix {
                destination: *destination,
                value: *value,
            })
            .collect()
    }

    /// Writes `rows` under `owner`'s other id, calls `switch` with that id
    /// (the one write that makes it live), then removes the old set.
    /// Returns the new id. The other id is inert until the switch, so what
    /// an earlier, failed attempt left there is finished, not rewritten:
    /// rows it holds that `rows` does not want are removed (they never
    /// become live), rows it already holds as wanted are kept.
    pub(super) fn switch(
        &mut self,
        ebpf: &mut Ebpf,
        owner: u32,
        current: Option<u32>,
        rows: &[CompiledPrefix],
        switch: impl FnOnce(&mut Ebpf, u32) -> Result<(), EbpfError>,
    ) -> Result<u32, EbpfError> {
        let rule_set = next_rule_set(owner, current);
        let wanted: BTreeMap<Cidr, RuleValue> =
            rows.iter().map(|r| (r.destination, r.value)).collect();
        self.finish(ebpf, rule_set, rows, &wanted)?;
        switch(ebpf, rule_set)?;
        if let Some(old) = current
            && old != rule_set
        {
            self.remove(ebpf, old)?;
        }
        Ok(rule_set)
    }

    /// Brings the inert set `rule_set` to `rows` (`wanted`, by
    /// destination): removes the rows it holds that are not wanted, then
    /// writes only those missing, so what an earlier attempt left there is
    /// finished, not rewritten.
    fn finish(
        &mut self,
        ebpf: &mut Ebpf,
        rule_set: u32,
        rows: &[CompiledPrefix],
        wanted: &BTreeMap<Cidr, RuleValue>,
    ) -> Result<(), EbpfError> {
        let held = self.written.get(&rule_set);
        let stale: Vec<Cidr> = (held.into_iter().flatten())
            .filter(|(destination, value)| wanted.get(destination) != Some(value))
            .map(|(destination, _)| *destination)
            .collect();
        self.remove_rows(ebpf, rule_set, stale)?;
        let held = self.written.get(&rule_set);
        let missing: Vec<CompiledPrefix> = (rows.iter())
            .filter(|r| held.and_then(|h| h.get(&r.destination)) != Some(&r.value))
            .cloned()
            .collect();
        self.write(ebpf, rule_set, &missing)
    }

    /// Brings the live set `rule_set` to `rows` in place: changed and new
    /// rows are written first, then the rows no longer wanted removed.
    /// For a bridge guard, whose rows only ever block: each row changes
    /// atomically, a row added early only blocks sooner, and its cost is
    /// the change, not the whole set written twice as a switch would.
    pub(super) fn update_in_place(
        &mut self,
        ebpf: &mut Ebpf,
        rule_set: u32,
        rows: &[CompiledPrefix],
    ) -> Result<(), EbpfError> {
        let empty = BTreeMap::new();
        let held = self.written.get(&rule_set).unwrap_or(&empty);
        let (changed, unwanted) = in_place_changes(held, rows);
        self.write(ebpf, rule_set, &changed)?;
        self.remove_rows(ebpf, rule_set, unwanted)
    }

    fn write(
        &mut self,
        ebpf: &mut Ebpf,
        rule_set: u32,
        rows: &[CompiledPrefix],
    ) -> Result<(), EbpfError> {
        let written = self.written.entry(rule_set).or_default();
        let counts = &mut self.rows;
        for row in rows {
            match row_key(rule_set, row.destination) {
                RowKey::V4(key) => lpm_trie::<RuleKeyV4, RuleValue>(ebpf, RULES_V4_MAP)?
                    .insert(&key, row.value, 0)
                    .map_err(map_error(RULES_V4_MAP))?,
                RowKey::V6(key) => lpm_trie::<RuleKeyV6, RuleValue>(ebpf, RULES_V6_MAP)?
                    .insert(&key, row.value, 0)
                    .map_err(map_error(RULES_V6_MAP))?,
            }
            if written.insert(row.destination, row.value).is_none() {
                *counts.of(row.destination) += 1;
            }
        }
        Ok(())
    }

    /// Removes the rows written under `rule_set`. On failure the rows not
    /// yet removed stay recorded, so the next switch to this id removes
    /// them before writing.
    pub(super) fn remove(&mut self, ebpf: &mut Ebpf, rule_set: u32) -> Result<(), EbpfError> {
        let destinations: Vec<Cidr> = (self.written.get(&rule_set).into_iter().flatten())
            .map(|(destination, _)| *destination)
            .collect();
        self.remove_rows(ebpf, rule_set, destinations)?;
        self.written.remove(&rule_set);
        Ok(())
    }

    /// Removes `destinations` from `rule_set`, each forgotten as it goes
    /// (one already gone counts as removed), so a failure leaves exactly
    /// the rows still there recorded.
    fn remove_rows(
        &mut self,
        ebpf: &mut Ebpf,
        rule_set: u32,
        destinations: Vec<Cidr>,
    ) -> Result<(), EbpfError> {
        for destination in destinations {
            match row_key(rule_set, destination) {
                RowKey::V4(key) => remove_trie_keys(
                    &mut lpm_trie::<_, RuleValue>(ebpf, RULES_V4_MAP)?,
                    RULES_V4_MAP,
                    [key],
                )?,
                RowKey::V6(key) => remove_trie_keys(
                    &mut lpm_trie::<_, RuleValue>(ebpf, RULES_V6_MAP)?,
                    RULES_V6_MAP,
                    [key],
                )?,
            }
            if let Some(written) = self.written.get_mut(&rule_set)
                && written.remove(&destination).is_some()
            {
                *self.rows.of(destination) -= 1;
            }
        }
        Ok(())
    }
}

/// A hash of a set's rows, to find a shared set by its content.
fn content_hash(rows: &BTreeMap<Cidr, RuleValue>) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0).build_hasher();
    rows.len().hash(&mut hasher);
    for (destination, value) in rows {
        destination.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    hasher.finish()
}

/// What bringing `held` to `rows` in place takes: the rows to write (new
/// or changed) and the destinations to remove. One walk of both when
/// `rows` is sorted by destination, as compiled (a bridge guard holds
/// tens of thousands of rows, and most passes change none or a few).
fn in_place_changes(
    held: &BTreeMap<Cidr, RuleValue>,
    rows: &[CompiledPrefix],
) -> (Vec<CompiledPrefix>, Vec<Cidr>) {
    if !rows.is_sorted_by(|a, b| a.destination < b.destination) {
        let wanted: BTreeMap<Cidr, RuleValue> =
            rows.iter().map(|r| (r.destination, r.value)).collect();
        let sorted: Vec<CompiledPrefix> = (wanted.into_iter())
            .map(|(destination, value)| CompiledPrefix { destination, value })
            .collect();
        return in_place_changes(held, &sorted);
    }
    let (mut changed, mut unwanted) = (Vec::new(), Vec::new());
    let mut held = held.iter().peekable();
    for row in rows {
        while let Some((destination, _)) = held.next_if(|(d, _)| **d < row.destination) {
            unwanted.push(*destination);
        }
        match held.next_if(|(d, _)| **d == row.destination) {
            Some((_, value)) if *value == row.value => {}
            _ => changed.push(row.clone()),
        }
    }
    unwanted.extend(held.map(|(destination, _)| *destination));
    (changed, unwanted)
}

enum RowKey {
    V4(Key<RuleKeyV4>),
    V6(Key<RuleKeyV6>),
}

/// The LPM key of `destination` in `rule_set`: the id's 32 bits, then the
/// prefix.
fn row_key(rule_set: u32, destination: Cidr) -> RowKey {
    let prefix_len = RULE_SET_BITS + u32::from(destination.prefix_len());
    let rule_set = rule_set.to_be_bytes();
    match destination.addr() {
        IpAddr::V4(addr) => RowKey::V4(Key::new(
            prefix_len,
            RuleKeyV4 {
                rule_set,
                addr: addr.octets(),
            },
        )),
        IpAddr::V6(addr) => RowKey::V6(Key::new(
            prefix_len,
            RuleKeyV6 {
                rule_set,
                addr: addr.octets(),
            },
        )),
    }
}

/// Every row of both tries with its rule set id.
fn scan(ebpf: &mut Ebpf) -> Result<Vec<(u32, CompiledPrefix)>, EbpfError> {
    let mut rows = Vec::new();
    scan_trie::<RuleKeyV4>(
        ebpf,
        RULES_V4_MAP,
        |k| (k.rule_set, IpAddr::from(k.addr)),
        &mut rows,
    )?;
    scan_trie::<RuleKeyV6>(
        ebpf,
        RULES_V6_MAP,
        |k| (k.rule_set, IpAddr::from(k.addr)),
        &mut rows,
    )?;
    Ok(rows)
}

fn scan_trie<K: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    split: impl Fn(&K) -> ([u8; 4], IpAddr),
    out: &mut Vec<(u32, CompiledPrefix)>,
) -> Result<(), EbpfError> {
    let trie: LpmTrie<&mut MapData, K, RuleValue> = lpm_trie(ebpf, name)?;
    for entry in trie.iter() {
        let (key, value) = match entry {
            Ok(row) => row,
            // Removed between listing its key and reading it.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_error(name)(e)),
        };
        let (id, addr) = split(&key.data());
        let Some(destination) = u8::try_from(key.prefix_len().saturating_sub(RULE_SET_BITS))
            .ok()
            .and_then(|len| Cidr::new(addr, len).ok())
        else {
            continue;
        };
        out.push((
            u32::from_be_bytes(id),
            CompiledPrefix { destination, value },
        ));
    }
    Ok(())
}

/// The rows of one rule set as the kernel holds them, sorted by
/// destination (to verify an installed set, e.g. one an earlier run left).
pub(super) fn installed_rows(
    ebpf: &mut Ebpf,
    rule_set: u32,
) -> Result<Vec<CompiledPrefix>, EbpfError> {
    let mut rows: Vec<CompiledPrefix> = scan(ebpf)?
        .into_iter()
        .filter(|(id, _)| *id == rule_set)
        .map(|(_, row)| row)
        .collect();
    rows.sort_by_key(|r| r.destination);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(destination: &str, action: u8) -> CompiledPrefix {
        CompiledPrefix {
            destination: destination.parse().unwrap(),
            value: RuleValue {
                default_action: action,
                ..RuleValue::default()
            },
        }
    }

    #[test]
    fn an_in_place_update_writes_new_and_changed_rows_and_removes_the_rest() {
        let held: BTreeMap<Cidr, RuleValue> = [
            row("10.0.0.0/8", 1),
            row("10.1.0.0/16", 1),
            row("192.0.2.0/24", 1),
            row("2001:db8::/32", 1),
        ]
        .into_iter()
        .map(|r| (r.destination, r.value))
        .collect();
        let rows = [
            row("10.0.0.0/8", 1),
            row("10.2.0.0/16", 1),
            row("192.0.2.0/24", 2),
            row("198.51.100.0/24", 1),
        ];
        let (changed, unwanted) = in_place_changes(&held, &rows);
        let expected_changed = [rows[1].clone(), rows[2].clone(), rows[3].clone()];
        let expected_unwanted: Vec<Cidr> = ["10.1.0.0/16", "2001:db8::/32"]
            .map(|c| c.parse().unwrap())
            .to_vec();
        assert_eq!(changed, expected_changed);
        assert_eq!(unwanted, expected_unwanted);
        // Unsorted rows (not as compiled) are diffed the same.
        let mut reversed = rows.to_vec();
        reversed.reverse();
        assert_eq!(
            in_place_changes(&held, &reversed),
            (expected_changed.to_vec(), expected_unwanted)
        );
        assert_eq!(in_place_changes(&held, &[]).1.len(), held.len());
    }

    #[test]
    fn rule_sets_alternate_between_an_owners_two_ids() {
        let first = next_rule_set(7, None);
        assert_eq!(first, 14);
        let second = next_rule_set(7, Some(first));
        assert_eq!(second, 15);
        assert_eq!(next_rule_set(7, Some(second)), first);
    }
}
