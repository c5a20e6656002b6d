//! Loading netwarp's eBPF object: its programs, its maps (pinned by name
//! under the pin directory, so they outlive the daemon), and the
//! retirement of pins an older build left with another layout.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use netwarp_common::{
    GUARD_ALLOW_MAP, GUARD_DROPS_MAP, GUARDS_MAP, GuardAllowKey, POLICY_MAP, RATE_BUCKETS_MAP,
    RATE_SLOTS_MAP, RULES_V4_MAP, RULES_V6_MAP, RateBuckets, RuleKeyV4, RuleKeyV6, RuleValue,
    TRAFFIC_MAP, TargetPolicy, TrafficCounters, TrafficKey, VERDICTS_MAP, VerdictCounters,
    WARP_LEAKS_MAP, WARP_PEERS_MAP, WarpPeerKey,
};

use super::{error::EbpfError, hooks::Hook};

/// The object built from `netwarp-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwarp-programs"));

/// The reader of the programs' aya-log ring buffer.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Every map, pinned by name under the pin directory, with its key and
/// value sizes as this build's programs use them; the LPM keys carry a
/// 4-byte prefix length.
fn map_layouts() -> [(&'static str, usize, usize); 12] {
    use std::mem::size_of;
    let counters = size_of::<TrafficCounters>();
    [
        (TRAFFIC_MAP, size_of::<TrafficKey>(), counters),
        (POLICY_MAP, size_of::<u32>(), size_of::<TargetPolicy>()),
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
        (RATE_SLOTS_MAP, size_of::<u32>(), size_of::<u32>()),
        (RATE_BUCKETS_MAP, size_of::<u32>(), size_of::<RateBuckets>()),
        (GUARDS_MAP, size_of::<u32>(), size_of::<u32>()),
        (GUARD_ALLOW_MAP, size_of::<GuardAllowKey>(), 1),
        (GUARD_DROPS_MAP, size_of::<u32>(), counters),
        (WARP_PEERS_MAP, size_of::<WarpPeerKey>(), size_of::<u32>()),
        (WARP_LEAKS_MAP, size_of::<u32>(), counters),
    ]
}

/// Unpins maps an older netwarp pinned with another layout, so that this
/// build creates them afresh; the controller then rewrites their contents
/// (counters restart). Programs still attached keep their old maps until
/// the adopted links switch to the new programs.
fn retire_incompatible_pins(pin_dir: &Path) -> Result<(), EbpfError> {
    for (name, key_size, value_size) in map_layouts() {
        let path = pin_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            tracing::warn!(
                map = name,
                pinned_key = info.key_size(),
                pinned_value = info.value_size(),
                key_size,
                value_size,
                "a pinned map has an older layout; replacing it (its contents are rebuilt)"
            );
            // Left in place, the loader would fail on the mismatch.
            std::fs::remove_file(&path).map_err(|source| EbpfError::PinDir { path, source })?;
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
/// pinned under `pin_dir`, reusing maps an earlier run pinned there.
pub(super) fn load_object(pin_dir: Option<&Path>, debug_logs: bool) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    if let Some(pin_dir) = pin_dir {
        let pin_error = |source: std::io::Error| EbpfError::PinDir {
            path: pin_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(pin_dir.join("links")).map_err(pin_error)?;
        std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(pin_error)?;
        retire_incompatible_pins(pin_dir)?;
        for (name, _, _) in map_layouts() {
            loader.map_pin_path(name, pin_dir.join(name));
        }
    }
    let level = program_log_level(debug_logs);
    loader.override_global(aya_log::LEVEL, &level, true);
    Ok(loader.load(PROGRAMS_OBJECT)?)
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
        classifier(ebpf, program)?
            .load()
            .map_err(|source| EbpfError::Program { program, source })?;
    }
    Ok(logger)
}

/// One of the object's tc programs.
pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program {
            program: name,
            source,
        })
}
