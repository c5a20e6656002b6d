//! Reliability under faults, in both dataplanes (see
//! `netwarp_tests::chaos`): daemon SIGKILL and restart, warp flapping and
//! recreation with a new IP, target restarts, the warp disconnected from
//! its network, a target's host veth deleted, a pinned link deleted by
//! hand; all while the target pings the steered destination and a leak
//! sink counts every packet that takes the host's path.
//!
//! `cargo xtask test` runs a few of each (`Counts::SHORT`); `cargo xtask
//! chaos` sets NETWARP_CHAOS=full for the full counts, which add dockerd
//! restarts. dockerd restarts are left out of the short run: they would
//! stop every other test's containers, and docker_restart_e2e covers them.

use netwarp_tests::{
    chaos::{self, Counts},
    skip, skip_if,
};

fn chaos_in(mode: &str) {
    let counts = Counts::from_env();
    let report = chaos::run_all(mode, counts).expect("the chaos scenario runs");
    chaos::save_report(&format!("chaos-{mode}"), &report);
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    let failures: Vec<String> = report
        .faults
        .iter()
        .flat_map(|f| f.failures.iter().map(move |e| format!("{}: {e}", f.fault)))
        .collect();
    // Faults that open a window can leak within it: a (re)started target
    // runs before netwarp programs its new namespace, and a deleted link
    // pin is only repaired at the next resync. Such leaks are reported
    // (RELIABILITY.md) and bounded here; every other fault leaks nothing.
    for fault in &report.faults {
        if fault.leak_window {
            assert!(
                fault.leaked_packets <= 10 * u64::from(fault.injected),
                "{mode}: {}: more than the window leaked: {fault:#?}",
                fault.fault
            );
        } else {
            assert_eq!(
                fault.leaked_packets, 0,
                "{mode}: {} leaked: {fault:#?}",
                fault.fault
            );
        }
    }
    assert_eq!(report.lost_state(), 0, "{mode}: {failures:#?}");
    assert!(
        report.bystander_unchanged,
        "{mode}: the unlabelled container changed"
    );
    assert!(
        report.probes_delivered > 0,
        "{mode}: no probe was ever delivered through the warp"
    );
}

#[test]
fn chaos_routes() {
    skip_if!("chaos_routes", skip::missing_docker());
    chaos_in("routes");
}

#[test]
fn chaos_ebpf() {
    skip_if!("chaos_ebpf", skip::missing_docker());
    chaos_in("ebpf");
}
