//! Fixtures for netwarp's privileged and end-to-end tests.
//!
//! Every fixture is a drop guard: whatever a test creates (namespaces,
//! veths, Docker networks, containers) is removed when the guard drops,
//! including when the test panics.
pub mod chaos;
pub mod command;
pub mod container;
pub mod cpu;
pub mod daemon;
pub mod docker;
pub mod fake_docker;
pub mod fastpath;
pub mod iperf;
pub mod isolation;
pub mod netns;
pub mod observe;
pub mod pingpong;
pub mod scale;
pub mod seccomp;
pub mod skip;
pub mod steering;
pub mod swarm;
pub mod tcx;
pub mod vpn;

/// A name unique to this process and call, short enough for an interface
/// name (15 bytes max): `<prefix><pid-hex><counter-hex>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n:x}", std::process::id());
    assert!(name.len() <= 15, "name {name} is too long for an interface");
    name
}
