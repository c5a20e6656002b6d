//! Loading netwarp's eBPF object: its programs, its maps (pinned by name
//! under the pin directory, so they outlive the daemon), and the
//! retirement of pins an older build left with another layout.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Map, MapData,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, Xdp},
};
use netwarp_common::{
    GLOBAL_PEER_SETS_PACKET_TYPE, GUARD_ALLOW_MAP, GUARD_DROPS_MAP, GUARDS_MAP, GuardAllowKey,
    IFACES_HIGH_MAP, IFACES_MAP, IfaceState, MAX_SELECTORS, PROG_XDP_PASS, RATE_BUCKETS_MAP,
    RETIRED_POLICY_MAP, RETIRED_RATE_SLOTS_MAP, RETIRED_TRAFFIC_MAP, RULES_V4_MAP, RULES_V6_MAP,
    RateBuckets, RuleKeyV4, RuleKeyV6, RuleValue, SPREAD_MAP, SpreadTable, TargetPolicy,
    TrafficCounters, VERDICTS_LOW_MAP, VERDICTS_MAP, VerdictCounters, WARP_LEAKS_MAP,
    WARP_PEERS_MAP, WarpPeerKey,
};

use super::{
    error::EbpfError,
    hooks::Hook,
    maps::{lpm_trie, map_error},
    peer::peer_sets_packet_type,
};
use crate::probe::read_kernel_release;

/// The object built from `netwarp-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwarp-programs"));

/// The reader of the programs' aya-log ring buffer.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Every map, pinned by name under the pin directory, with its key and
/// value sizes as this build's programs use them; the LPM keys carry a
/// 4-byte prefix length.
fn map_layouts() -> [(&'static str, usize, usize); 13] {
    use std::mem::size_of;
    let counters = size_of::<TrafficCounters>();
    [
        (IFACES_MAP, size_of::<u32>(), size_of::<IfaceState>()),
        (IFACES_HIGH_MAP, size_of::<u32>(), size_of::<IfaceState>()),
        (
            RULES_V4_MAP,
            4 + size_of::<RuleKeyV4>(),
            size_of::<RuleValue>(),
        ),
        (
            RULES_V6_MAP,
            4 + size_of::<RuleKeyV6>(),
            size_of::<RuleValue>(),
        ),
        (VERDICTS_MAP, size_of::<u32>(), size_of::<VerdictCounters>()),
        (
            VERDICTS_LOW_MAP,
            size_of::<u32>(),
            size_of::<VerdictCounters>(),
        ),
        (RATE_BUCKETS_MAP, size_of::<u32>(), size_of::<RateBuckets>()),
        (GUARDS_MAP, size_of::<u32>(), size_of::<u32>()),
        (GUARD_ALLOW_MAP, size_of::<GuardAllowKey>(), 1),
        (GUARD_DROPS_MAP, size_of::<u32>(), counters),
        (WARP_PEERS_MAP, size_of::<WarpPeerKey>(), size_of::<u32>()),
        (WARP_LEAKS_MAP, size_of::<u32>(), counters),
        (SPREAD_MAP, size_of::<u32>(), size_of::<SpreadTable>()),
    ]
}

/// Unpins maps an older netwarp pinned with another layout, so that this
/// build creates them afresh; the controller then rewrites their contents
/// (counters restart). Programs still attached keep their old maps until
/// the adopted links switch to the new programs.
///
/// A rule trie pinned with another capacity, or holding rows of the
/// single-action layout (see [`upgrade_rule_row`]), is replaced too, but
/// its rows are returned (in this build's layout), to be written into the
/// new trie before any program uses it: the policies and guards that name
/// them keep holding meanwhile.
fn retire_incompatible_pins(pin_dir: &Path, rules_capacity: u32) -> Result<CarriedRows, EbpfError> {
    let mut carried = CarriedRows::default();
    let mut retire = Vec::new();
    for (name, key_size, value_size) in map_layouts() {
        let path = pin_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let is_rules = name == RULES_V4_MAP || name == RULES_V6_MAP;
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            tracing::warn!(
                map = name,
                pinned_key = info.key_size(),
                pinned_value = info.value_size(),
                key_size,
                value_size,
                "a pinned map has an older layout; replacing it (its contents are rebuilt)"
            );
        } else if is_rules
            && (info.max_entries() != rules_capacity || holds_single_action_rows(&path, name)?)
        {
            tracing::info!(
                map = name,
                pinned = info.max_entries(),
                configured = rules_capacity,
                "replacing a rule trie (resized, or rows of an earlier layout); its rows are \
                 carried over"
            );
            // Checked before anything is unpinned: a trie too small for
            // the live sets (and one switch) would never let a set change.
            if name == RULES_V4_MAP {
                carried.v4 = read_trie(&path, name)?;
                fits(name, &carried.v4, |k| k.rule_set, rules_capacity)?;
            } else {
                carried.v6 = read_trie(&path, name)?;
                fits(name, &carried.v6, |k| k.rule_set, rules_capacity)?;
            }
        } else {
            continue;
        }
        retire.push(path);
    }
    for path in retire {
        // Left in place, the loader would reuse it as it is.
        std::fs::remove_file(&path).map_err(|source| EbpfError::PinDir { path, source })?;
    }
    Ok(carried)
}

/// Whether `rows` fit a trie of `capacity` with room to switch their
/// largest rule set.
fn fits<K: Pod>(
    map: &'static str,
    rows: &[(Key<K>, RuleValue)],
    rule_set: fn(&K) -> [u8; 4],
    capacity: u32,
) -> Result<(), EbpfError> {
    let mut sets: std::collections::HashMap<[u8; 4], usize> = std::collections::HashMap::new();
    for (key, _) in rows {
        *sets.entry(rule_set(&key.data())).or_default() += 1;
    }
    let largest = sets.into_values().max().unwrap_or(0);
    let needed = rows.len() + largest;
    if needed > capacity as usize {
        return Err(EbpfError::RulesCapacity {
            map,
            rows: rows.len(),
            largest,
            capacity,
            needed,
        });
    }
    Ok(())
}

/// Rows of the rule tries being resized, by family.
#[derive(Default)]
struct CarriedRows {
    v4: Vec<(Key<RuleKeyV4>, RuleValue)>,
    v6: Vec<(Key<RuleKeyV6>, RuleValue)>,
    /// State rows built from an earlier release's policy and rate slot
    /// maps, with the pins to remove once they are written.
    states: (BTreeMap<u32, IfaceState>, Vec<PathBuf>),
}

impl CarriedRows {
    /// Writes the rows into the new maps (the tries were checked by
    /// [`fits`]), then removes the retired pins they came from.
    fn write(self, ebpf: &mut Ebpf) -> Result<(), EbpfError> {
        write_trie(ebpf, RULES_V4_MAP, self.v4)?;
        write_trie(ebpf, RULES_V6_MAP, self.v6)?;
        let (states, retired) = self.states;
        for (ifindex, state) in states {
            super::state::write(ebpf, ifindex, state)?;
        }
        for path in retired {
            std::fs::remove_file(&path).map_err(|source| EbpfError::PinDir { path, source })?;
        }
        Ok(())
    }
}

/// The policy and rate slot rows an earlier release pinned in maps of
/// their own, as state rows, so its targets stay steered and capped from
/// the first packet these programs see; and the pins of every map it
/// pinned that this build no longer uses, to retire.
fn read_retired_states(
    pin_dir: &Path,
) -> Result<(BTreeMap<u32, IfaceState>, Vec<PathBuf>), EbpfError> {
    fn rows<V: Pod>(path: &Path, name: &'static str) -> Result<Vec<(u32, V)>, EbpfError> {
        let map: aya::maps::HashMap<MapData, u32, V> = MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .and_then(aya::maps::HashMap::try_from)
            .map_err(map_error(name))?;
        // A row removed while listing is simply not carried.
        Ok(map.iter().filter_map(Result::ok).collect())
    }
    let mut policies = BTreeMap::new();
    let mut slots = BTreeMap::new();
    let mut retired = Vec::new();
    let policy_pin = pin_dir.join(RETIRED_POLICY_MAP);
    if policy_pin.exists() {
        policies.extend(rows::<TargetPolicy>(&policy_pin, RETIRED_POLICY_MAP)?);
        retired.push(policy_pin);
    }
    let slots_pin = pin_dir.join(RETIRED_RATE_SLOTS_MAP);
    if slots_pin.exists() {
        slots.extend(rows::<u32>(&slots_pin, RETIRED_RATE_SLOTS_MAP)?);
        retired.push(slots_pin);
    }
    let traffic_pin = pin_dir.join(RETIRED_TRAFFIC_MAP);
    if traffic_pin.exists() {
        retired.push(traffic_pin);
    }
    let states = (policies.keys().chain(slots.keys()))
        .map(|ifindex| {
            let state = IfaceState::of(policies.get(ifindex).copied(), slots.get(ifindex).copied());
            (*ifindex, state)
        })
        .collect();
    Ok((states, retired))
}

fn open_trie<K: Pod>(
    path: &Path,
    name: &'static str,
) -> Result<LpmTrie<MapData, K, RuleValue>, EbpfError> {
    MapData::from_pin(path)
        .and_then(Map::from_map_data)
        .and_then(LpmTrie::try_from)
        .map_err(map_error(name))
}

/// The pinned trie's rows, in this build's layout.
fn read_trie<K: Pod>(
    path: &Path,
    name: &'static str,
) -> Result<Vec<(Key<K>, RuleValue)>, EbpfError> {
    let trie = open_trie::<K>(path, name)?;
    // A row removed while listing is simply not carried.
    Ok((trie.iter().filter_map(Result::ok))
        .map(|(key, value)| (key, upgrade_rule_row(value)))
        .collect())
}

/// Whether the pinned trie holds rows of the single-action layout. One
/// daemon at a time writes a trie, and every row tells its layout, so
/// its first row answers for all.
fn holds_single_action_rows(path: &Path, name: &'static str) -> Result<bool, EbpfError> {
    // The key's layout does not matter for reading a value.
    let first = if name == RULES_V4_MAP {
        (open_trie::<RuleKeyV4>(path, name)?
            .iter()
            .find_map(Result::ok))
        .map(|(_, v)| v)
    } else {
        (open_trie::<RuleKeyV6>(path, name)?
            .iter()
            .find_map(Result::ok))
        .map(|(_, v)| v)
    };
    Ok(first.is_some_and(|v| is_single_action_row(&v)))
}

/// Whether `row` was written by an earlier release, whose rows had one
/// action (in what is now `default_action`) for every selector: those
/// set what is now `_pad` for a row of every protocol (`any_protocol`),
/// else had selectors without an action. This build writes neither.
fn is_single_action_row(row: &RuleValue) -> bool {
    let used = usize::from(row.selector_count).min(MAX_SELECTORS);
    row._pad != 0 || row.selectors[..used].iter().any(|s| s.action == 0)
}

/// `row` in this build's layout, making the same decisions: a row of every
/// protocol gets its action as the default, a row of selectors gives each
/// of them its action and has no default.
fn upgrade_rule_row(row: RuleValue) -> RuleValue {
    if !is_single_action_row(&row) {
        return row;
    }
    let mut upgraded = RuleValue {
        block_reason: row.block_reason,
        ..RuleValue::default()
    };
    if row._pad != 0 {
        upgraded.default_action = row.default_action;
    } else {
        let used = usize::from(row.selector_count).min(MAX_SELECTORS);
        upgraded.selector_count = used as u8;
        upgraded.selectors[..used].copy_from_slice(&row.selectors[..used]);
        for selector in &mut upgraded.selectors[..used] {
            selector.action = row.default_action;
        }
    }
    upgraded
}

fn write_trie<K: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    rows: Vec<(Key<K>, RuleValue)>,
) -> Result<(), EbpfError> {
    let total = rows.len();
    let mut trie = lpm_trie::<K, RuleValue>(ebpf, name)?;
    for (written, (key, value)) in rows.into_iter().enumerate() {
        if let Err(e) = trie.insert(&key, value, 0) {
            tracing::warn!(
                map = name,
                written,
                total,
                error = %e,
                "the resized rule trie did not take every carried row; the first pass rewrites them"
            );
            break;
        }
    }
    Ok(())
}

/// aya-log levels the programs keep: debug, or none (a load-time
/// constant, so disabled log calls cost one compare).
fn program_log_level(debug_logs: bool) -> u8 {
    if debug_logs {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Loads the object with private maps (no pin directory) or with its maps
/// pinned under `pin_dir`, reusing maps an earlier run pinned there. Each
/// rule trie gets `rules_capacity` entries.
pub(super) fn load_object(
    pin_dir: Option<&Path>,
    debug_logs: bool,
    rules_capacity: u32,
) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    // No preallocation: a trie's nodes are allocated as rows go in, so the
    // capacity is a ceiling, not memory taken up front.
    loader.map_max_entries(RULES_V4_MAP, rules_capacity);
    loader.map_max_entries(RULES_V6_MAP, rules_capacity);
    let mut carried = CarriedRows::default();
    if let Some(pin_dir) = pin_dir {
        let pin_error = |source: std::io::Error| EbpfError::PinDir {
            path: pin_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(pin_dir.join("links")).map_err(pin_error)?;
        std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(pin_error)?;
        carried = retire_incompatible_pins(pin_dir, rules_capacity)?;
        carried.states = read_retired_states(pin_dir)?;
        for (name, _, _) in map_layouts() {
            loader.map_pin_path(name, pin_dir.join(name));
        }
    }
    let level = program_log_level(debug_logs);
    loader.override_global(aya_log::LEVEL, &level, true);
    let sets_type = read_kernel_release().map_or(true, |r| peer_sets_packet_type(&r)) as u8;
    loader.override_global(GLOBAL_PEER_SETS_PACKET_TYPE, &sets_type, true);
    let mut ebpf = loader.load(PROGRAMS_OBJECT)?;
    carried.write(&mut ebpf)?;
    Ok(ebpf)
}

/// Opens the programs' log (before they load: they need its map) and
/// loads every program into the kernel; nothing is attached yet.
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<Option<ProgramLogger>, EbpfError> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            tracing::warn!(error = %e, "the eBPF programs' log is unavailable");
            None
        }
    };
    for hook in Hook::ALL {
        let program = hook.program();
        let loaded = match hook.is_xdp() {
            false => classifier(ebpf, program)?.load(),
            true => xdp(ebpf, program)?.load(),
        };
        loaded.map_err(|source| EbpfError::Program { program, source })?;
    }
    xdp(ebpf, PROG_XDP_PASS)?
        .load()
        .map_err(|source| EbpfError::Program {
            program: PROG_XDP_PASS,
            source,
        })?;
    Ok(logger)
}

/// One of the object's XDP programs.
pub(super) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, EbpfError> {
    program(ebpf, name)
}

/// One of the object's tc programs.
pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    program(ebpf, name)
}

/// One of the object's programs, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program {
            program: name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use netwarp_common::{ACTION_BLOCK, ACTION_STEER, REASON_WARP_DOWN, RuleValue, Selector};

    use super::{is_single_action_row, upgrade_rule_row};

    fn tcp(port: u16, action: u8) -> Selector {
        Selector {
            ip_proto: 6,
            action,
            port_lo: port,
            port_hi: port,
        }
    }

    #[test]
    fn rows_of_the_single_action_layout_keep_their_decisions() {
        // Every protocol, blocked while the warp is down: byte 1 was
        // `any_protocol`.
        let any = RuleValue {
            default_action: ACTION_BLOCK,
            _pad: 1,
            block_reason: REASON_WARP_DOWN,
            ..RuleValue::default()
        };
        assert!(is_single_action_row(&any));
        assert_eq!(
            upgrade_rule_row(any),
            RuleValue {
                default_action: ACTION_BLOCK,
                block_reason: REASON_WARP_DOWN,
                ..RuleValue::default()
            }
        );
        // Steered selectors: each gets the row's action, and the row no
        // default (it steered nothing else).
        let mut selectors = RuleValue {
            default_action: ACTION_STEER,
            selector_count: 2,
            ..RuleValue::default()
        };
        selectors.selectors[..2].copy_from_slice(&[tcp(443, 0), tcp(80, 0)]);
        assert!(is_single_action_row(&selectors));
        let upgraded = upgrade_rule_row(selectors);
        assert_eq!(upgraded.default_action, 0);
        assert_eq!(upgraded.selector_count, 2);
        assert_eq!(
            upgraded.selectors[..2],
            [tcp(443, ACTION_STEER), tcp(80, ACTION_STEER)]
        );
        // This build's rows are left as they are.
        assert!(!is_single_action_row(&upgraded));
        assert_eq!(upgrade_rule_row(upgraded), upgraded);
        let steered = RuleValue {
            default_action: ACTION_STEER,
            ..RuleValue::default()
        };
        assert_eq!(upgrade_rule_row(steered), steered);
    }
}
