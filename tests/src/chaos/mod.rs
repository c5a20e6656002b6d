//! The reliability ("chaos") harness: a warp, a target sending continuous
//! bounded traffic to a steered destination, an unlabelled bystander, a
//! real daemon, and faults injected one after another. After every fault
//! it checks that the programmed state equals what the plan implies and
//! that nothing is orphaned; all along it counts packets that leaked.
//!
//! Network safety: the steered prefix (a 198.18.N.0/24 benchmarking
//! prefix unique to the scenario) is routed on the host into a sink
//! network namespace that counts and drops every packet reaching it, so
//! whatever leaks out of the target's default path ends there and nothing
//! leaves the machine. The destination itself is owned by the warp's
//! loopback (behind the tunnel, in the WireGuard scenario). Networks are
//! `--internal`, except the WireGuard scenario's, which is routed so that
//! its warp reaches its server through the host (and what it forwards
//! untunnelled takes the host's path into the sink). Every loop is bounded
//! in count and in time; every fixture is a drop guard.
//!
//! Modules: [`sink`] (the leak sink), [`scenario`] (the world and its
//! checks against the plan), [`faults`] (the table of faults and how each
//! is run), [`vpn`] (the same faults' counterpart with a real WireGuard
//! warp), [`failover`] (a two-warp failover group under member kills,
//! flaps and silent deaths), [`report`] (what is saved for RELIABILITY.md), [`pins`] (reading
//! the daemon's pinned maps), [`dockerd`] (the dockerd restart fault).

use std::time::Duration;

pub mod dockerd;
pub mod failover;
pub mod faults;
pub mod pins;
pub mod report;
pub mod scenario;
pub mod sink;
pub mod vpn;

pub use dockerd::{EngineGuard, docker_answers, restart_dockerd, start_dockerd};
pub use faults::{Counts, FaultWorld, run_all, run_fault};
pub use pins::{guard_drops, guard_installed};
pub use report::{FaultResult, ScenarioReport, save_report, save_text};
pub use scenario::{Expect, Scenario, host_ifindex_by_mac, netwarp_entries, start_warp_at};
pub use sink::{LeakSink, SteeredPrefix};

/// How long a fault may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// The daemon's periodic resync in chaos runs (it repairs what no Docker
/// event reports, such as a deleted pin).
pub const RESYNC_SECS: u64 = 2;

/// A unique steered /24 in 198.18.0.0/15 (RFC 2544 benchmarking space).
pub fn unique_prefix_octet() -> u8 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ((std::process::id().wrapping_mul(7) + n * 31) % 250 + 1) as u8
}
