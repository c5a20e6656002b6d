//! Capability checks, so a missing privilege is named up front instead of
//! surfacing later as a bare EPERM.

use std::fmt;

/// A Linux capability netwarp may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "to change routes, rules and tc attachments",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "to enter containers' network namespaces (setns)",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "for eBPF programs that read packet data",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "to load eBPF programs and maps",
};

/// What the routes dataplane needs.
pub const ROUTES_CAPABILITIES: &[Capability] = &[CAP_NET_ADMIN, CAP_SYS_ADMIN];
/// What the eBPF dataplane needs.
pub const EBPF_CAPABILITIES: &[Capability] = &[CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON];

/// The calling thread's effective capability set.
#[derive(Clone, Copy, Debug)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    /// Reads `CapEff` from /proc/self/status.
    pub fn current() -> std::io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Ok(Self::from_status(&status).unwrap_or(Self(0)))
    }

    pub fn from_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.0 & (1 << cap.bit) != 0
    }

    /// The capabilities of `needed` that are missing. CAP_SYS_ADMIN covers
    /// CAP_BPF and CAP_PERFMON, as it does in the kernel.
    pub fn missing(&self, needed: &[Capability]) -> Vec<Capability> {
        needed
            .iter()
            .copied()
            .filter(|cap| {
                let covered =
                    matches!(cap.name, "CAP_BPF" | "CAP_PERFMON") && self.has(CAP_SYS_ADMIN);
                !self.has(*cap) && !covered
            })
            .collect()
    }
}

/// Missing capabilities, with the way to grant them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingCapabilities(pub Vec<Capability>);

impl fmt::Display for MissingCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "netwarp lacks these capabilities:")?;
        for cap in &self.0 {
            writeln!(f, "  {} ({})", cap.name, cap.why)?;
        }
        let names: Vec<&str> = self.0.iter().map(|c| c.name).collect();
        write!(
            f,
            "Grant them by running netwarp as root, or under systemd with \
             AmbientCapabilities={} (see packaging/netwarp.service), or with \
             `setcap {}+ep /usr/local/bin/netwarp`",
            names.join(" "),
            names
                .iter()
                .map(|n| n.to_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

impl std::error::Error for MissingCapabilities {}

/// Fails, naming every capability of `needed` the process lacks. An
/// unreadable capability set is logged and let through: the kernel will
/// still refuse what is not allowed.
pub fn require(needed: &[Capability]) -> Result<(), MissingCapabilities> {
    let missing = match CapabilitySet::current() {
        Ok(caps) => caps.missing(needed),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read capabilities; continuing");
            return Ok(());
        }
    };
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapabilities(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let root = CapabilitySet::from_status("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(root.missing(EBPF_CAPABILITIES).is_empty());
        let none = CapabilitySet::from_status("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(
            none.missing(ROUTES_CAPABILITIES),
            vec![CAP_NET_ADMIN, CAP_SYS_ADMIN]
        );
    }

    #[test]
    fn sys_admin_covers_bpf_and_perfmon() {
        let caps = CapabilitySet((1 << 12) | (1 << 21));
        assert!(caps.missing(EBPF_CAPABILITIES).is_empty());
        let net_only = CapabilitySet(1 << 12);
        assert_eq!(
            net_only.missing(EBPF_CAPABILITIES),
            vec![CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON]
        );
    }

    #[test]
    fn the_message_names_each_capability_and_the_fix() {
        let text = MissingCapabilities(vec![CAP_NET_ADMIN, CAP_BPF]).to_string();
        assert!(text.contains("CAP_NET_ADMIN (to change routes"));
        assert!(text.contains("CAP_BPF (to load eBPF"));
        assert!(text.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_BPF"));
        assert!(text.contains("setcap cap_net_admin,cap_bpf+ep"));
    }
}
