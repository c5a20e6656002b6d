//! Reading the daemon's pinned eBPF maps (through netwarp's own read-only
//! [`PinnedMaps`] view) and the interfaces' tc attachments, to compare
//! what is programmed with the plan.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::Pod;
use netwarp::dataplane::ebpf::PinnedMaps;
use netwarp_common::{
    GUARD_DROPS_MAP, GUARDS_MAP, RuleKeyV4, RuleKeyV6, RuleValue, TargetPolicy, TrafficCounters,
};

/// Every row of a pinned hash map.
pub(super) fn hash_rows<K: Pod, V: Pod>(
    pins: &Path,
    name: &'static str,
) -> anyhow::Result<Vec<(K, V)>> {
    let map = PinnedMaps::new(pins).hash_map::<K, V>(name)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// Packets the guard on `bridge` dropped, from the daemon's pinned maps.
pub fn guard_drops(pins: &Path, bridge: &str) -> anyhow::Result<u64> {
    let drops: TrafficCounters =
        PinnedMaps::new(pins).sum(GUARD_DROPS_MAP, &interface_ifindex(bridge)?)?;
    Ok(drops.packets)
}

/// Whether the daemon's pinned maps hold a guard for `bridge`.
pub fn guard_installed(pins: &Path, bridge: &str) -> anyhow::Result<bool> {
    let rule_set: Option<u32> =
        PinnedMaps::new(pins).get(GUARDS_MAP, &interface_ifindex(bridge)?)?;
    Ok(rule_set.is_some())
}

/// Exactly one netwarp program attached through TCX to `interface` in
/// `direction` ("Ingress" or "Egress").
pub(super) fn expect_one_netwarp_program(interface: &str, direction: &str) -> anyhow::Result<()> {
    expect_netwarp_programs(interface, direction, 1)
}

pub(super) fn expect_no_netwarp_program(interface: &str, direction: &str) -> anyhow::Result<()> {
    expect_netwarp_programs(interface, direction, 0)
}

fn expect_netwarp_programs(interface: &str, direction: &str, want: usize) -> anyhow::Result<()> {
    let netwarp = crate::tcx::tcx_programs(interface)
        .iter()
        // The kernel keeps 15 characters of a program's name.
        .filter(|(d, p)| *d == direction && crate::tcx::program_name(p).starts_with("netwarp_tc"))
        .count();
    if netwarp != want {
        bail!("{netwarp} netwarp programs on {interface} {direction}, expected {want}");
    }
    Ok(())
}

pub(super) fn interface_ifindex(name: &str) -> anyhow::Result<u32> {
    let index = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .with_context(|| format!("the interface {name}"))?;
    Ok(index.trim().parse()?)
}

/// Every target's policy, from the pinned state rows.
pub(super) fn read_policies(pins: &Path) -> anyhow::Result<Vec<(u32, TargetPolicy)>> {
    Ok((PinnedMaps::new(pins).iface_states()?.into_iter())
        .filter_map(|(ifindex, state)| Some((ifindex, state.policy()?)))
        .collect())
}

/// Every capped interface, from the pinned state rows.
pub(super) fn read_capped(pins: &Path) -> anyhow::Result<Vec<u32>> {
    Ok((PinnedMaps::new(pins).iface_states()?.into_iter())
        .filter(|(_, state)| state.cap_slot().is_some())
        .map(|(ifindex, _)| ifindex)
        .collect())
}

/// Every (rule set, value) row in both rule tries.
pub(super) fn read_rule_sets(pins: &Path) -> anyhow::Result<Vec<(u32, RuleValue)>> {
    let maps = PinnedMaps::new(pins);
    let v4 = maps.lpm_trie::<RuleKeyV4, RuleValue>(netwarp_common::RULES_V4_MAP)?;
    let v6 = maps.lpm_trie::<RuleKeyV6, RuleValue>(netwarp_common::RULES_V6_MAP)?;
    let mut rows = Vec::new();
    for (key, value) in v4.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    for (key, value) in v6.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    Ok(rows)
}

/// The keys of a pinned hash map keyed by `u32` with values of type `V`.
pub(super) fn map_keys_u32<V: Pod>(pins: &Path, name: &'static str) -> anyhow::Result<Vec<u32>> {
    Ok(hash_rows::<u32, V>(pins, name)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}
