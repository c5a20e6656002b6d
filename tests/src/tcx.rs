//! What is attached through TCX to a host interface.

use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType};

/// The programs attached to `veth`, ingress first, each with its direction
/// (`"Ingress"` or `"Egress"`).
pub fn tcx_programs(veth: &str) -> Vec<(&'static str, ProgramInfo)> {
    let mut all = Vec::new();
    for (attach_type, direction) in [
        (TcAttachType::Ingress, "Ingress"),
        (TcAttachType::Egress, "Egress"),
    ] {
        let (_, programs) = SchedClassifier::query_tcx(veth, attach_type).expect("query_tcx");
        all.extend(programs.into_iter().map(|p| (direction, p)));
    }
    all
}

/// The XDP program attached to `veth` (from `ip -d link`), if any.
pub fn xdp_program(veth: &str) -> Option<ProgramInfo> {
    let listing = crate::command::run("ip", &["-j", "-d", "link", "show", "dev", veth]).ok()?;
    let links: serde_json::Value = serde_json::from_str(&listing).ok()?;
    let id = links.get(0)?.get("xdp")?.get("prog")?.get("id")?.as_u64()?;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| u64::from(p.id()) == id)
}

/// A program's name as the kernel keeps it (truncated to 15 bytes).
pub fn program_name(program: &ProgramInfo) -> String {
    program.name_as_str().unwrap_or("?").to_owned()
}

/// Turns the kernel's BPF run-time statistics
/// (`/proc/sys/kernel/bpf_stats_enabled`) on, and restores the previous
/// setting on drop.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    /// `None` when the setting cannot be read or written (not root).
    pub fn enable() -> Option<Self> {
        let previous = std::fs::read_to_string(Self::PATH).ok()?;
        std::fs::write(Self::PATH, "1").ok()?;
        Some(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.previous.trim());
    }
}

/// A program's cumulative run statistics at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub id: u32,
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// The run statistics of every program attached to `veth` (its XDP
/// program first, if any), one entry per program (a program attached in
/// both directions counts once).
pub fn program_stats(veth: &str) -> Vec<ProgramStats> {
    let mut stats: Vec<ProgramStats> = Vec::new();
    let xdp = xdp_program(veth).map(|p| ("Xdp", p));
    for (_, program) in xdp.into_iter().chain(tcx_programs(veth)) {
        if stats.iter().any(|s| s.id == program.id()) {
            continue;
        }
        stats.push(ProgramStats {
            id: program.id(),
            name: program_name(&program),
            run_count: program.run_count(),
            run_time_ns: program.run_time().as_nanos() as u64,
        });
    }
    stats
}

impl ProgramStats {
    /// What ran between `earlier` (the same program, sampled before) and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            run_count: self.run_count.saturating_sub(earlier.run_count),
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
        }
    }

    /// Average nanoseconds per run (per packet: per skb, so a GSO packet
    /// counts once), if it ran.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}
