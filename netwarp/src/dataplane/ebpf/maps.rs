//! Typed access to netwarp's maps: one accessor for the dataplane's own
//! maps, one read-only view of the pinned maps for other readers
//! (telemetry, status, tests), one per-CPU sum, and one diffing writer
//! for rows that carry their own key and value.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
};
use netwarp_common::{
    GUARD_ALLOW_MAP, GuardAllowKey, IFACE_SLOT_MASK, IFACES_HIGH_MAP, IFACES_MAP, IfaceState,
    TrafficCounters, VERDICTS_LOW_MAP, VERDICTS_MAP, VerdictCounters, WARP_PEERS_MAP, WarpPeerKey,
};

use super::error::EbpfError;

/// Packets and bytes seen on one host-side interface, per direction (its
/// statistics: received on the host side is what the container sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTraffic {
    pub from_container: TrafficCounters,
    pub to_container: TrafficCounters,
}

pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> EbpfError {
    move |source| EbpfError::Map { map, source }
}

/// Whether a removal failed only because the key was already gone.
pub(super) fn already_gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Whether a write failed because the map has no room left: a full hash
/// map answers E2BIG, a full LPM trie ENOSPC.
pub fn map_is_full(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(e) => {
            matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
        }
        _ => false,
    }
}

/// One of the dataplane's maps as its typed view (a hash map, an LPM
/// trie, a per-CPU map), checked against the map's key and value sizes.
pub(super) fn typed<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, EbpfError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
    M::try_from(map).map_err(map_error(name))
}

/// [`typed`] for a hash map, with its key and value types spelled out.
pub(super) fn hash_map<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>, EbpfError> {
    typed(ebpf, name)
}

/// [`typed`] for an LPM trie.
pub(super) fn lpm_trie<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, K, V>, EbpfError> {
    typed(ebpf, name)
}

/// One entry of a hash map, None when absent.
pub(super) fn lookup<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &BpfHashMap<T, K, V>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>, EbpfError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_error(name)(e)),
    }
}

/// Every entry of a hash map; entries removed while it is read are skipped.
pub(super) fn read_all<T: Borrow<MapData>, K: Pod + Ord, V: Pod>(
    map: &BpfHashMap<T, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, EbpfError> {
    let mut all = BTreeMap::new();
    for entry in map.iter() {
        match entry {
            Ok((k, v)) => {
                all.insert(k, v);
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(name)(e)),
        }
    }
    Ok(all)
}

/// Per-CPU counter values that fold into one total.
pub trait CpuSum: Pod + Default {
    fn plus(self, other: Self) -> Self;
}

impl CpuSum for TrafficCounters {
    fn plus(self, other: Self) -> Self {
        self.saturating_add(other)
    }
}

impl CpuSum for VerdictCounters {
    fn plus(self, other: Self) -> Self {
        self.saturating_add(other)
    }
}

/// A per-CPU counter map, typed.
pub type CounterMap<T, K, V> = PerCpuHashMap<T, K, V>;

/// The maps a target's verdict counters are read from: the state array
/// (which says where they are), the per-CPU array and the per-CPU hash map.
pub type VerdictMaps<T> = (
    Array<T, IfaceState>,
    PerCpuArray<T, VerdictCounters>,
    CounterMap<T, u32, VerdictCounters>,
);

/// One key's entry of a per-CPU map, summed over all CPUs (zero when absent).
pub fn cpu_sum<T: Borrow<MapData>, K: Pod, V: CpuSum>(
    map: &CounterMap<T, K, V>,
    key: &K,
) -> Result<V, MapError> {
    match map.get(key, 0) {
        Ok(per_cpu) => Ok(per_cpu.iter().fold(V::default(), |sum, c| sum.plus(*c))),
        Err(MapError::KeyNotFound) => Ok(V::default()),
        Err(e) => Err(e),
    }
}

/// The verdict counters of the target whose host-side veth is `ifindex`,
/// summed over all CPUs: from the per-CPU array at its slot while its
/// state row holds that slot, else from the per-CPU hash map.
pub fn verdict_sum<T: Borrow<MapData>>(
    (states, low, high): &VerdictMaps<T>,
    ifindex: u32,
) -> Result<VerdictCounters, EbpfError> {
    let slot = ifindex & IFACE_SLOT_MASK;
    let holder = states.get(&slot, 0).map_err(map_error(IFACES_MAP))?.ifindex;
    if holder != ifindex {
        return cpu_sum(high, &ifindex).map_err(map_error(VERDICTS_MAP));
    }
    let per_cpu = low.get(&slot, 0).map_err(map_error(VERDICTS_LOW_MAP))?;
    Ok(per_cpu
        .iter()
        .fold(VerdictCounters::default(), |sum, c| sum.plus(*c)))
}

/// One of the dataplane's own per-CPU maps, for reading.
pub(super) fn counter_map<'a, K: Pod, V: CpuSum>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<CounterMap<&'a MapData, K, V>, EbpfError> {
    let map = ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
    PerCpuHashMap::try_from(map).map_err(map_error(name))
}

/// A read-only view of the maps a running daemon pinned under its pin
/// directory. Each open is this reader's own file descriptor on the
/// kernel map, so readers never wait for the daemon (nor it for them).
#[derive(Clone, Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
}

impl PinnedMaps {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            dir: pin_dir.to_owned(),
        }
    }

    /// A pinned map as its typed view, with this reader's own descriptor.
    pub fn open<M: TryFrom<Map, Error = MapError>>(
        &self,
        name: &'static str,
    ) -> Result<M, EbpfError> {
        MapData::from_pin(self.dir.join(name))
            .and_then(Map::from_map_data)
            .and_then(M::try_from)
            .map_err(map_error(name))
    }

    /// A pinned hash map (e.g. the policies, rate slots, warp peers).
    pub fn hash_map<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<MapData, K, V>, EbpfError> {
        self.open(name)
    }

    /// A pinned LPM trie (the rule sets).
    pub fn lpm_trie<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<LpmTrie<MapData, K, V>, EbpfError> {
        self.open(name)
    }

    /// A pinned per-CPU counter map; sum its entries with [`cpu_sum`].
    pub fn counters<K: Pod, V: CpuSum>(
        &self,
        name: &'static str,
    ) -> Result<CounterMap<MapData, K, V>, EbpfError> {
        self.open(name)
    }

    /// One entry of a pinned hash map, None when absent.
    pub fn get<K: Pod, V: Pod>(&self, name: &'static str, key: &K) -> Result<Option<V>, EbpfError> {
        lookup(&self.hash_map(name)?, name, key)
    }

    /// One interface's state row, without its placement (zero when
    /// netwarp programs none).
    pub fn iface_state(&self, ifindex: u32) -> Result<IfaceState, EbpfError> {
        let array: Array<MapData, IfaceState> = self.open(IFACES_MAP)?;
        let row = (array.get(&(ifindex & IFACE_SLOT_MASK), 0)).map_err(map_error(IFACES_MAP))?;
        if row.ifindex == ifindex {
            return Ok(row.unplaced());
        }
        let row: Option<IfaceState> = self.get(IFACES_HIGH_MAP, &ifindex)?;
        Ok(row.map(IfaceState::unplaced).unwrap_or_default())
    }

    /// Every state row, by ifindex, without placement (a scan of the array).
    pub fn iface_states(&self) -> Result<BTreeMap<u32, IfaceState>, EbpfError> {
        let mut rows: BTreeMap<u32, IfaceState> = read_all(
            &self.hash_map::<u32, IfaceState>(IFACES_HIGH_MAP)?,
            IFACES_HIGH_MAP,
        )?
        .into_iter()
        .map(|(ifindex, row)| (ifindex, row.unplaced()))
        .collect();
        rows.extend(super::state::array_rows(&self.open(IFACES_MAP)?)?);
        Ok(rows)
    }

    /// The verdict maps, to read many targets with [`verdict_sum`].
    pub fn verdict_maps(&self) -> Result<VerdictMaps<MapData>, EbpfError> {
        Ok((
            self.open(IFACES_MAP)?,
            self.open(VERDICTS_LOW_MAP)?,
            self.counters(VERDICTS_MAP)?,
        ))
    }

    /// One target's verdict counters, summed over all CPUs.
    pub fn verdicts(&self, ifindex: u32) -> Result<VerdictCounters, EbpfError> {
        verdict_sum(&self.verdict_maps()?, ifindex)
    }

    /// One entry of a pinned per-CPU map, summed over all CPUs.
    pub fn sum<K: Pod, V: CpuSum>(&self, name: &'static str, key: &K) -> Result<V, EbpfError> {
        cpu_sum(&self.counters(name)?, key).map_err(map_error(name))
    }
}

/// A row of a hash map that knows its own key and value, so that one
/// writer can diff what is wanted against what was written.
pub trait Row {
    const MAP: &'static str;
    type Key: Pod + Ord;
    type Value: Pod + PartialEq;
    fn key(&self) -> Self::Key;
    fn value(&self) -> Self::Value;
}

/// A source a bridge guard lets pass (the value is unused).
impl Row for GuardAllowKey {
    const MAP: &'static str = GUARD_ALLOW_MAP;
    type Key = GuardAllowKey;
    type Value = u8;
    fn key(&self) -> GuardAllowKey {
        *self
    }
    fn value(&self) -> u8 {
        1
    }
}

/// A target's address on a warp veth, to the target's host-side veth.
impl Row for (WarpPeerKey, u32) {
    const MAP: &'static str = WARP_PEERS_MAP;
    type Key = WarpPeerKey;
    type Value = u32;
    fn key(&self) -> WarpPeerKey {
        self.0
    }
    fn value(&self) -> u32 {
        self.1
    }
}

/// What one sync changes: rows to write (new or changed), keys to delete.
#[derive(Debug, PartialEq, Eq)]
pub struct RowDiff<K, V> {
    pub put: Vec<(K, V)>,
    pub delete: Vec<K>,
}

/// The rows of one map this process wrote (or adopted from an earlier run
/// with one scan at load), so that syncs write only the difference and
/// deletes touch only known keys.
pub(super) struct Rows<R: Row> {
    written: BTreeMap<R::Key, R::Value>,
}

impl<R: Row> Rows<R> {
    /// Adopts what the map holds (one scan).
    pub(super) fn adopt(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            written: read_all(&hash_map(ebpf, R::MAP)?, R::MAP)?,
        })
    }

    /// Replaces what is recorded in scope with what the kernel holds
    /// (`installed`, read by the caller), so the next sync repairs any
    /// difference made behind netwarp's back.
    pub(super) fn adopt_scope(
        &mut self,
        in_scope: impl Fn(&R::Key) -> bool,
        installed: &BTreeMap<R::Key, R::Value>,
    ) {
        self.written.retain(|k, _| !in_scope(k));
        self.written
            .extend(installed.iter().filter(|(k, _)| in_scope(k)));
    }

    pub(super) fn written(&self) -> &BTreeMap<R::Key, R::Value> {
        &self.written
    }

    /// The changes that make the rows `in_scope` exactly `desired` (pure).
    pub(super) fn diff<'a>(
        &self,
        in_scope: impl Fn(&R::Key) -> bool,
        desired: impl IntoIterator<Item = &'a R>,
    ) -> RowDiff<R::Key, R::Value>
    where
        R: 'a,
    {
        let desired: BTreeMap<R::Key, R::Value> =
            desired.into_iter().map(|r| (r.key(), r.value())).collect();
        diff_rows(&self.written, in_scope, &desired)
    }

    /// Writes rows whose value differs from what was written.
    pub(super) fn put(
        &mut self,
        ebpf: &mut Ebpf,
        rows: impl IntoIterator<Item = (R::Key, R::Value)>,
    ) -> Result<(), EbpfError> {
        let mut map = hash_map::<R::Key, R::Value>(ebpf, R::MAP)?;
        for (key, value) in rows {
            if self.written.get(&key) == Some(&value) {
                continue;
            }
            map.insert(key, value, 0).map_err(map_error(R::MAP))?;
            self.written.insert(key, value);
        }
        Ok(())
    }

    /// Deletes rows; a key already gone is not an error, any other failure
    /// is returned and the row stays recorded, so the next sync retries.
    pub(super) fn delete(
        &mut self,
        ebpf: &mut Ebpf,
        keys: impl IntoIterator<Item = R::Key>,
    ) -> Result<usize, EbpfError> {
        let mut map = hash_map::<R::Key, R::Value>(ebpf, R::MAP)?;
        let mut deleted = 0;
        for key in keys {
            match map.remove(&key) {
                Ok(()) => deleted += 1,
                Err(e) if already_gone(&e) => {}
                Err(e) => return Err(map_error(R::MAP)(e)),
            }
            self.written.remove(&key);
        }
        Ok(deleted)
    }

    /// Deletes every written row whose key is in scope.
    pub(super) fn delete_where(
        &mut self,
        ebpf: &mut Ebpf,
        in_scope: impl Fn(&R::Key) -> bool,
    ) -> Result<usize, EbpfError> {
        let doomed: Vec<R::Key> = self
            .written
            .keys()
            .filter(|k| in_scope(k))
            .copied()
            .collect();
        self.delete(ebpf, doomed)
    }
}

/// The puts and deletes that turn the rows of `written` in scope into
/// `desired` (pure; rows out of scope are left alone).
pub fn diff_rows<K: Ord + Copy, V: PartialEq + Copy>(
    written: &BTreeMap<K, V>,
    in_scope: impl Fn(&K) -> bool,
    desired: &BTreeMap<K, V>,
) -> RowDiff<K, V> {
    let put = desired
        .iter()
        .filter(|(k, v)| written.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let delete = written
        .keys()
        .filter(|k| in_scope(k) && !desired.contains_key(k))
        .copied()
        .collect();
    RowDiff { put, delete }
}

/// Removes LPM keys; keys already gone are not an error.
pub(super) fn remove_trie_keys<K: Pod, V: Pod>(
    trie: &mut LpmTrie<&mut MapData, K, V>,
    name: &'static str,
    keys: impl IntoIterator<Item = Key<K>>,
) -> Result<(), EbpfError> {
    for key in keys {
        match trie.remove(&key) {
            Ok(()) => {}
            Err(e) if already_gone(&e) => {}
            Err(e) => return Err(map_error(name)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_writes_what_changed_and_deletes_only_in_scope() {
        let written = BTreeMap::from([(1u32, 10u32), (2, 20), (3, 30), (100, 1)]);
        let desired = BTreeMap::from([(1, 10), (2, 21), (4, 40)]);
        let diff = diff_rows(&written, |k| *k < 100, &desired);
        assert_eq!(diff.put, vec![(2, 21), (4, 40)]);
        assert_eq!(diff.delete, vec![3]);
    }

    #[test]
    fn an_unchanged_set_needs_no_write() {
        let rows = BTreeMap::from([(1u32, 1u8), (2, 1)]);
        let diff = diff_rows(&rows, |_| true, &rows);
        assert!(diff.put.is_empty() && diff.delete.is_empty());
    }
}
