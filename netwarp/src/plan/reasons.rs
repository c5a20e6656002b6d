//! Why a target is not steered, or not programmed at all: the reasons the
//! planner gives, shown in status, metrics and logs.

use std::fmt;

use super::capacity::{MAX_PREFIXES_KEY, RULES_CAPACITY_KEY};
use crate::model::{NetworkMode, RuleError};

/// Why a target is not steered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    EmptyWarpName {
        label: String,
    },
    WarpMissing {
        warp: String,
    },
    WarpNameMismatch {
        warp: String,
        pattern: String,
    },
    WarpNotRunning {
        warp: String,
    },
    WarpUnhealthy {
        warp: String,
    },
    WarpStarting {
        warp: String,
    },
    /// No member of the target's failover group is usable.
    NoWarpUsable {
        warps: Vec<String>,
        /// Why, member by member, in priority order.
        reasons: Vec<String>,
    },
    /// The warp has a probe, and it has not answered yet.
    WarpProbePending {
        warp: String,
        probe: String,
    },
    /// The warp's probe fails: `failed` of its last `of` probes.
    WarpProbeFailing {
        warp: String,
        probe: String,
        failed: usize,
        of: usize,
        error: String,
    },
    /// The warp's probe label cannot be read.
    WarpProbeInvalid {
        warp: String,
        label: String,
        error: String,
    },
    /// The warp has no namespace of its own on a Docker network (`host`,
    /// `none`, `container:`): it is refused as a warp.
    WarpNetworkMode {
        warp: String,
        mode: NetworkMode,
    },
    AmbiguousNetwork {
        warp: String,
        networks: Vec<String>,
        label: String,
    },
    UnknownNetwork {
        warp: String,
        network: String,
        label: String,
    },
    NotOnNetwork {
        warp: String,
        network: String,
    },
    InvalidRules {
        label: String,
        value: String,
        error: RuleError,
    },
    /// Another label netwarp reads from a target cannot be read.
    InvalidLabel {
        label: String,
        value: String,
        error: String,
    },
    /// The rules list more destination prefixes than
    /// `limits.max_prefixes_per_target`: everything is blocked.
    TooManyPrefixes {
        count: usize,
        limit: usize,
    },
    /// The eBPF rule trie of a family has no room for the target's rows
    /// (and what it adds to its networks' guards): everything is blocked.
    Capacity {
        map: &'static str,
        needed: usize,
        used: usize,
        capacity: usize,
    },
}

impl BlockReason {
    /// Blocked entirely by a limit (prefixes, capacity), not by its warp.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::TooManyPrefixes { .. } | Self::Capacity { .. })
    }

    /// A short name for status and metrics: `capacity` and
    /// `too_many_prefixes` for the limits, `configuration` for a bad label,
    /// `warp` for everything about the warp.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooManyPrefixes { .. } => "too_many_prefixes",
            Self::Capacity { .. } => "capacity",
            Self::InvalidRules { .. } | Self::InvalidLabel { .. } | Self::EmptyWarpName { .. } => {
                "configuration"
            }
            _ => "warp",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyWarpName { label } => {
                write!(
                    f,
                    "label {label} is empty; set it to the warp container's name"
                )
            }
            Self::WarpMissing { warp } => write!(f, "warp container {warp} does not exist"),
            Self::WarpNameMismatch { warp, pattern } => write!(
                f,
                "{warp} does not match the warp name pattern `{pattern}`, so it is not a warp container"
            ),
            Self::WarpNotRunning { warp } => write!(f, "warp container {warp} is not running"),
            Self::WarpUnhealthy { warp } => write!(f, "warp container {warp} is unhealthy"),
            Self::WarpStarting { warp } => write!(
                f,
                "warp container {warp} is starting: its healthcheck has not passed yet"
            ),
            Self::NoWarpUsable { warps, reasons } => write!(
                f,
                "no warp of its group ({}) is usable: {}",
                warps.join(", "),
                reasons.join("; ")
            ),
            Self::WarpProbePending { warp, probe } => write!(
                f,
                "warp container {warp}'s probe {probe} has not answered yet"
            ),
            Self::WarpProbeFailing {
                warp,
                probe,
                failed,
                of,
                error,
            } => write!(
                f,
                "warp container {warp}'s probe {probe} failed {failed} of its last {of} times \
                 (last: {error}): its tunnel does not carry traffic"
            ),
            Self::WarpProbeInvalid { warp, label, error } => write!(
                f,
                "label {label} on warp container {warp} is invalid, so the warp is not \
                 trusted: {error}"
            ),
            Self::WarpNetworkMode { warp, mode } => write!(
                f,
                "warp container {warp} runs with --network {mode}, so netwarp refuses it as a \
                 warp: a warp needs a namespace of its own on the targets' Docker network; \
                 recreate it on that network"
            ),
            Self::AmbiguousNetwork {
                warp,
                networks,
                label,
            } if networks.is_empty() => write!(
                f,
                "warp container {warp} is on no network (disconnected?); connect it to the \
                 targets' network (the label {label} chooses one if it has several)"
            ),
            Self::AmbiguousNetwork {
                warp,
                networks,
                label,
            } => write!(
                f,
                "warp container {warp} is on several networks ({}); set the label {label} on it to choose one",
                networks.join(", ")
            ),
            Self::UnknownNetwork {
                warp,
                network,
                label,
            } => write!(
                f,
                "label {label}={network} on {warp} names a network it is not attached to"
            ),
            Self::NotOnNetwork { warp, network } => write!(
                f,
                "the target is not attached to network {network}, which warp container {warp} uses"
            ),
            Self::InvalidRules {
                label,
                value,
                error,
            } => write!(f, "label {label}=`{value}` is invalid: {error}"),
            Self::InvalidLabel {
                label,
                value,
                error,
            } => write!(
                f,
                "label {label}=`{value}` is invalid: {error}; its traffic is held closed \
                 until the label is fixed"
            ),
            Self::TooManyPrefixes { count, limit } => write!(
                f,
                "its rules list {count} destination prefixes, more than the limit of {limit} \
                 ({MAX_PREFIXES_KEY}), so all its traffic is blocked; merge the prefixes into \
                 fewer, shorter ones, split the rules across containers, or raise \
                 {MAX_PREFIXES_KEY}"
            ),
            Self::Capacity {
                map,
                needed,
                used,
                capacity,
            } => write!(
                f,
                "capacity: the eBPF map {map} cannot take the {needed} entries this target \
                 needs (its rules and its networks' guards): {used} of {capacity} are in use \
                 or reserved, so all its traffic is blocked; raise {RULES_CAPACITY_KEY} \
                 (restart) or give it fewer prefixes"
            ),
        }
    }
}

/// Why netwarp will not program a target's namespace at all: it is not
/// the target's own, or there is nothing in it to steer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// `--network host`: the namespace is the host's.
    HostNetwork { container: String },
    /// `--network none`: only a loopback interface.
    NoNetwork { container: String },
    /// `--network container:X`, and X is no running container.
    SharesMissing { container: String, other: String },
    /// `--network container:X`, and X is not a target.
    SharesUnmanaged { container: String, other: String },
    /// `--network container:X`, and X is a warp.
    SharesWarp { container: String, other: String },
    /// `--network container:X`, and X is a target of another warp, or
    /// with other rules.
    SharesOtherPolicy {
        container: String,
        other: String,
        target_label: String,
        rules_label: String,
    },
    /// `--network container:X`, and X has no namespace of its own either.
    SharesIndirect {
        container: String,
        other: String,
        mode: NetworkMode,
    },
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostNetwork { container } => write!(
                f,
                "{container} runs with --network host: its namespace is the host's, which \
                 netwarp never programs, so its traffic is neither steered nor blocked; run it \
                 on the warp's Docker network instead"
            ),
            Self::NoNetwork { container } => write!(
                f,
                "{container} runs with --network none: it has no network, so there is nothing \
                 to steer"
            ),
            Self::SharesMissing { container, other } => write!(
                f,
                "{container} runs with --network container:{other}, and {other} is not running: \
                 netwarp does not program a namespace it cannot attribute; run {container} on \
                 the warp's Docker network instead"
            ),
            Self::SharesUnmanaged { container, other } => write!(
                f,
                "{container} shares the namespace of {other} (--network container:{other}), \
                 which is not a netwarp target, and netwarp never programs another \
                 container's namespace; label {other} as a target of the same warp, or run \
                 {container} on the warp's Docker network"
            ),
            Self::SharesWarp { container, other } => write!(
                f,
                "{container} shares the namespace of warp container {other} \
                 (--network container:{other}), and netwarp never programs a warp's \
                 namespace; run {container} on the warp's Docker network instead"
            ),
            Self::SharesOtherPolicy {
                container,
                other,
                target_label,
                rules_label,
            } => write!(
                f,
                "{container} shares the namespace of target {other} \
                 (--network container:{other}), which has another warp or other rules, and \
                 netwarp programs one policy per namespace; give both the same {target_label} \
                 and {rules_label} labels"
            ),
            Self::SharesIndirect {
                container,
                other,
                mode,
            } => write!(
                f,
                "{container} shares the namespace of {other} (--network container:{other}), \
                 which itself runs with --network {mode}; netwarp never programs a namespace \
                 that is not its target's own: run {container} on the warp's Docker network"
            ),
        }
    }
}
