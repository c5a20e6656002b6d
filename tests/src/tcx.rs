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

/// A program's name as the kernel keeps it (truncated to 15 bytes).
pub fn program_name(program: &ProgramInfo) -> String {
    program.name_as_str().unwrap_or("?").to_owned()
}
