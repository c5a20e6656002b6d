//! The per-interface state rows the container programs look up, one per
//! host-side veth netwarp programs: the target's policy and its cap slot.
//! A row sits in an array at its ifindex's slot, tagged with the ifindex
//! (the verifier inlines the lookup), or, when another veth holds that
//! slot, in a hash map by ifindex. These rows are the only record of policies and cap
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
    IFACE_SLOT_MASK, IFACES_HIGH_MAP, IFACES_MAP, IfaceState, VERDICTS_LOW_MAP, VERDICTS_MAP,
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
        let mut written: BTreeMap<u32, IfaceState> = read_all(
            &hash_map::<u32, IfaceState>(ebpf, IFACES_HIGH_MAP)?,
            IFACES_HIGH_MAP,
        )?
        .into_iter()
        .map(|(ifindex, row)| (ifindex, row.unplaced()))
        .collect();
        let array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
        written.extend(array_rows(&array)?);
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
        let slot = placement(ebpf, ifindex)?;
        if self.get(ifindex) == IfaceState::default() && state != IfaceState::default() {
            // A newly programmed interface counts from zero, whatever an
            // earlier interface in its place left.
            zero_verdicts(ebpf, ifindex, slot)?;
        }
        write_at(ebpf, ifindex, state, slot)?;
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

/// Where `ifindex`'s row goes: its array slot when already its own, or
/// free and the row is not in the hash map; None (the hash map)
/// otherwise. A row never moves, so neither do its verdict counters.
fn placement(ebpf: &mut Ebpf, ifindex: u32) -> Result<Option<u32>, EbpfError> {
    let slot = ifindex & IFACE_SLOT_MASK;
    let array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
    let holder = array.get(&slot, 0).map_err(map_error(IFACES_MAP))?.ifindex;
    if holder == ifindex {
        return Ok(Some(slot));
    }
    if holder != 0 {
        return Ok(None);
    }
    let map = hash_map::<u32, IfaceState>(ebpf, IFACES_HIGH_MAP)?;
    let in_hash = super::maps::lookup(&map, IFACES_HIGH_MAP, &ifindex)?.is_some();
    Ok((!in_hash).then_some(slot))
}

/// Clears the verdict counters of `ifindex` on every CPU, where its row
/// is placed (`slot`, or the hash map).
fn zero_verdicts(ebpf: &mut Ebpf, ifindex: u32, slot: Option<u32>) -> Result<(), EbpfError> {
    let Some(slot) = slot else {
        let mut map: PerCpuHashMap<&mut MapData, u32, VerdictCounters> = typed(ebpf, VERDICTS_MAP)?;
        return match map.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if already_gone(&e) => Ok(()),
            Err(e) => Err(map_error(VERDICTS_MAP)(e)),
        };
    };
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
        .set(slot, zeros, 0)
        .map_err(map_error(VERDICTS_LOW_MAP))
}

/// The row of `ifindex` as the kernel holds it, without its placement
/// (zero when none).
pub(super) fn read(ebpf: &mut Ebpf, ifindex: u32) -> Result<IfaceState, EbpfError> {
    let array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
    let row = (array.get(&(ifindex & IFACE_SLOT_MASK), 0)).map_err(map_error(IFACES_MAP))?;
    if row.ifindex == ifindex {
        return Ok(row.unplaced());
    }
    let map = hash_map::<u32, IfaceState>(ebpf, IFACES_HIGH_MAP)?;
    let row = super::maps::lookup(&map, IFACES_HIGH_MAP, &ifindex)?;
    Ok(row.map(IfaceState::unplaced).unwrap_or_default())
}

/// Writes one row where it goes (see [`placement`]): in place in the
/// array, or as one hash map update; a zero row frees its slot or is
/// deleted.
pub(super) fn write(ebpf: &mut Ebpf, ifindex: u32, state: IfaceState) -> Result<(), EbpfError> {
    let slot = placement(ebpf, ifindex)?;
    write_at(ebpf, ifindex, state, slot)
}

fn write_at(
    ebpf: &mut Ebpf,
    ifindex: u32,
    state: IfaceState,
    slot: Option<u32>,
) -> Result<(), EbpfError> {
    let clear = state == IfaceState::default();
    if let Some(slot) = slot {
        let row = if clear {
            IfaceState::default()
        } else {
            state.placed(ifindex, false)
        };
        let mut array: Array<&mut MapData, IfaceState> = typed(ebpf, IFACES_MAP)?;
        array.set(slot, row, 0).map_err(map_error(IFACES_MAP))?;
    }
    let mut map: BpfHashMap<&mut MapData, u32, IfaceState> = hash_map(ebpf, IFACES_HIGH_MAP)?;
    if slot.is_none() && !clear {
        return map
            .insert(ifindex, state.placed(ifindex, true), 0)
            .map_err(map_error(IFACES_HIGH_MAP));
    }
    match map.remove(&ifindex) {
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) => Ok(()),
        Err(e) => Err(map_error(IFACES_HIGH_MAP)(e)),
    }
}

/// The rows of a state array, by the ifindex each is tagged with, without
/// their placement.
pub(super) fn array_rows<T: std::borrow::Borrow<MapData>>(
    array: &Array<T, IfaceState>,
) -> Result<BTreeMap<u32, IfaceState>, EbpfError> {
    let mut rows = BTreeMap::new();
    for row in array.iter() {
        let row = row.map_err(map_error(IFACES_MAP))?;
        if row.ifindex != 0 {
            rows.insert(row.ifindex, row.unplaced());
        }
    }
    Ok(rows)
}
