//! Reading the daemon's pinned eBPF maps and the interfaces' tc
//! attachments, to compare what is programmed with the plan.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, lpm_trie::LpmTrie};
use netwarp_common::{
    GUARDS_MAP, POLICY_MAP, RATE_SLOTS_MAP, RULES_V4_MAP, RULES_V6_MAP, RuleKeyV4, RuleKeyV6,
    RuleValue, TargetPolicy,
};

pub(super) fn open_map(pins: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(pins.join(name)).with_context(|| format!("the pinned {name}"))?;
    Map::from_map_data(data).with_context(|| format!("the map type of {name}"))
}

/// Packets the guard on `bridge` dropped, from the daemon's pinned maps.
pub fn guard_drops(pins: &Path, bridge: &str) -> anyhow::Result<u64> {
    let drops: aya::maps::PerCpuHashMap<_, u32, netwarp_common::TrafficCounters> =
        aya::maps::PerCpuHashMap::try_from(open_map(pins, netwarp_common::GUARD_DROPS_MAP)?)?;
    match drops.get(&interface_ifindex(bridge)?, 0) {
        Ok(per_cpu) => Ok(per_cpu.iter().map(|c| c.packets).sum()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether the daemon's pinned maps hold a guard for `bridge`.
pub fn guard_installed(pins: &Path, bridge: &str) -> anyhow::Result<bool> {
    let guards: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(open_map(pins, GUARDS_MAP)?)?;
    Ok(guards.get(&interface_ifindex(bridge)?, 0).is_ok())
}

/// Exactly one netwarp program attached through TCX to `interface` in
/// `direction` ("Ingress" or "Egress").
pub(super) fn expect_one_netwarp_program(interface: &str, direction: &str) -> anyhow::Result<()> {
    let netwarp = crate::tcx::tcx_programs(interface)
        .iter()
        // The kernel keeps 15 characters of a program's name.
        .filter(|(d, p)| *d == direction && crate::tcx::program_name(p).starts_with("netwarp_tc"))
        .count();
    if netwarp != 1 {
        bail!("{netwarp} netwarp programs on {interface} {direction}, expected 1");
    }
    Ok(())
}

pub(super) fn interface_ifindex(name: &str) -> anyhow::Result<u32> {
    let index = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .with_context(|| format!("the interface {name}"))?;
    Ok(index.trim().parse()?)
}

pub(super) fn read_policies(pins: &Path) -> anyhow::Result<Vec<(u32, TargetPolicy)>> {
    let map: BpfHashMap<_, u32, TargetPolicy> = BpfHashMap::try_from(open_map(pins, POLICY_MAP)?)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// Every (rule set, value) row in both rule tries.
pub(super) fn read_rule_sets(pins: &Path) -> anyhow::Result<Vec<(u32, RuleValue)>> {
    let v4: LpmTrie<_, RuleKeyV4, RuleValue> = LpmTrie::try_from(open_map(pins, RULES_V4_MAP)?)?;
    let v6: LpmTrie<_, RuleKeyV6, RuleValue> = LpmTrie::try_from(open_map(pins, RULES_V6_MAP)?)?;
    let mut rows = Vec::new();
    for (key, value) in v4.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    for (key, value) in v6.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    Ok(rows)
}

pub(super) fn map_keys_u32(pins: &Path, name: &str) -> anyhow::Result<Vec<u32>> {
    let map = open_map(pins, name)?;
    Ok(if name == RATE_SLOTS_MAP {
        let hash: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map)?;
        hash.keys().filter_map(Result::ok).collect()
    } else {
        let hash: BpfHashMap<_, u32, netwarp_common::RateBuckets> = BpfHashMap::try_from(map)?;
        hash.keys().filter_map(Result::ok).collect()
    })
}

pub(super) fn parse_mac(mac: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC `{mac}`"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC `{mac}` is not six octets"))
}
