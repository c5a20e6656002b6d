//! The per-interface state rows the container programs look up, one per
//! host-side veth netwarp programs: the target's policy and its cap slot.
//! Small ifindexes index an array (the verifier inlines its lookup), the
//! rest a hash map. These rows are the only record of policies and cap
//! slots: the controller keeps what it wrote (adopted by one scan at load)
//! and reads single rows back to compare.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
};
use netwarp_common::{
    IFACE_ARRAY_SIZE, IFACES_HIGH_MAP, IFACES_MAP, IfaceState, VERDICTS_LOW_MAP, VERDICTS_MAP,
    VerdictCounters,
};

use super::{
    error::EbpfError,
    maps::{already_gone, hash_map, map_error, read_all, typed},
};

/// The state rows netwarp wrote (non-zero ones), by ifindex.
#[derive(Default)]
pub(super) struct States {
    written: BTreeMap<u32, IfaceState>,
}

impl States {
    /// Adopts what the maps hold: one scan of the array and the hash map.
    pub(super) fn adopt(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        let mut written = read_all(
            &hash_map::<u32, IfaceState>(ebpf, IFACES_HIGH_MAP)?,
            IFACES_HIGH_MAP,
        )?;
        let array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
        written.extend(non_zero_rows(&array)?);
        Ok(Self { written })
    }

    pub(super) fn written(&self) -> &BTreeMap<u32, IfaceState> {
        &self.written
    }

    /// The recorded row of `ifindex` (zero when none).
    pub(super) fn get(&self, ifindex: u32) -> IfaceState {
        self.written.get(&ifindex).copied().unwrap_or_default()
    }

    /// Writes `ifindex`'s row (one map update); a zero row clears it.
    pub(super) fn put(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        state: IfaceState,
    ) -> Result<(), EbpfError> {
        if self.get(ifindex) == IfaceState::default() && state != IfaceState::default() {
            // A newly programmed interface counts from zero, whatever an
            // earlier interface with its ifindex left.
            zero_verdicts(ebpf, ifindex)?;
        }
        write(ebpf, ifindex, state)?;
        if state == IfaceState::default() {
            self.written.remove(&ifindex);
        } else {
            self.written.insert(ifindex, state);
        }
        Ok(())
    }

    /// Changes `ifindex`'s row with `change`, writing it only if it differs
    /// from what the kernel holds.
    pub(super) fn update(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        change: impl FnOnce(&mut IfaceState),
    ) -> Result<(), EbpfError> {
        let installed = read(ebpf, ifindex)?;
        let mut state = installed;
        change(&mut state);
        if state == installed && self.get(ifindex) == state {
            return Ok(());
        }
        self.put(ebpf, ifindex, state)
    }
}

/// Clears the verdict counters of `ifindex` on every CPU.
fn zero_verdicts(ebpf: &mut Ebpf, ifindex: u32) -> Result<(), EbpfError> {
    if ifindex >= IFACE_ARRAY_SIZE {
        let mut map: PerCpuHashMap<&mut MapData, u32, VerdictCounters> = typed(ebpf, VERDICTS_MAP)?;
        return match map.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if already_gone(&e) => Ok(()),
            Err(e) => Err(map_error(VERDICTS_MAP)(e)),
        };
    }
    let cpus_error = |io_error| {
        map_error(VERDICTS_LOW_MAP)(MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error,
        }))
    };
    let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| cpus_error(e))?;
    let zeros =
        PerCpuValues::try_from(vec![VerdictCounters::default(); nr_cpus]).map_err(cpus_error)?;
    let mut array: PerCpuArray<&mut MapData, VerdictCounters> = typed(ebpf, VERDICTS_LOW_MAP)?;
    array
        .set(ifindex, zeros, 0)
        .map_err(map_error(VERDICTS_LOW_MAP))
}

/// The row of `ifindex` as the kernel holds it (zero when none).
pub(super) fn read(ebpf: &mut Ebpf, ifindex: u32) -> Result<IfaceState, EbpfError> {
    if ifindex < IFACE_ARRAY_SIZE {
        let array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
        return array.get(&ifindex, 0).map_err(map_error(IFACES_MAP));
    }
    let map = hash_map::<u32, IfaceState>(ebpf, IFACES_HIGH_MAP)?;
    Ok(super::maps::lookup(&map, IFACES_HIGH_MAP, &ifindex)?.unwrap_or_default())
}

/// Writes one row: in place in the array, or as one hash map update (a
/// zero row is deleted there).
pub(super) fn write(ebpf: &mut Ebpf, ifindex: u32, state: IfaceState) -> Result<(), EbpfError> {
    if ifindex < IFACE_ARRAY_SIZE {
        let mut array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
        return array.set(ifindex, state, 0).map_err(map_error(IFACES_MAP));
    }
    let mut map: BpfHashMap<&mut MapData, u32, IfaceState> = hash_map(ebpf, IFACES_HIGH_MAP)?;
    if state != IfaceState::default() {
        return map
            .insert(ifindex, state, 0)
            .map_err(map_error(IFACES_HIGH_MAP));
    }
    match map.remove(&ifindex) {
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) => Ok(()),
        Err(e) => Err(map_error(IFACES_HIGH_MAP)(e)),
    }
}

/// The non-zero rows of a state array, by index.
pub(super) fn non_zero_rows<T: std::borrow::Borrow<MapData>>(
    array: &Array<T, IfaceState>,
) -> Result<BTreeMap<u32, IfaceState>, EbpfError> {
    let mut rows = BTreeMap::new();
    for (index, row) in array.iter().enumerate() {
        let row = row.map_err(map_error(IFACES_MAP))?;
        if row != IfaceState::default() {
            rows.insert(index as u32, row);
        }
    }
    Ok(rows)
}
