//! The real netwarp, in the dry-run dataplane, against the simulated
//! Docker API (`netwarp_tests::fake_docker`): 1,000 containers, per-event
//! reconciles, then a short bounded storm. Asserts correctness only, never
//! timing: the dry-run record must equal the plan for the fake world, and
//! the controller must inspect only what events name and coalesce a storm.
//!
//! A simulation: no Docker engine, no privileges and no kernel state are
//! involved. It needs the netwarp binary (`cargo build -p netwarp`, or
//! `NETWARP_BIN`), like the other tests that start the daemon.

use std::time::Duration;

use netwarp_tests::{
    daemon::netwarp_binary,
    fake_docker::{StormSpec, WorldSpec},
    scale::{self, ScaleSpec},
};

#[test]
fn thousand_containers_and_a_storm_end_in_the_planned_state() {
    let binary = netwarp_binary();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p netwarp` (or set NETWARP_BIN)",
        binary.display()
    );
    let spec = ScaleSpec {
        world: WorldSpec::mix(1000),
        latency_events: 5,
        storm: Some(StormSpec {
            rate: 2000,
            duration: Duration::from_secs(1),
            seed: 7,
        }),
        // No periodic resync during the test: every inspect after the
        // first pass is then due to an event or a lost event.
        resync_interval_secs: 3600,
        timeout: Duration::from_secs(60),
    };
    let report = scale::run(&spec, &binary).expect("the scenario runs");
    eprint!("{}", scale::table(std::slice::from_ref(&report)));
    assert!(report.initial_correct, "the first reconcile is wrong");
    assert_eq!(
        report.first_reconcile_inspects, 510,
        "the first pass inspects exactly the running targets and warps"
    );
    assert_eq!(report.latency.count, 5, "every restart was programmed");
    assert!(
        report.inspects_per_event <= 2.0,
        "an event re-inspects only the container it names: {}",
        report.inspects_per_event
    );
    let storm = report.storm.expect("a storm ran");
    assert!(
        storm.final_correct,
        "after the storm the record differs from the plan for {} targets",
        storm.mismatches
    );
    assert!(storm.events_sent >= 2000, "{storm:?}");
    assert!(
        storm.reconciles < storm.events_sent / 4,
        "events were not coalesced: {} reconciles for {} events",
        storm.reconciles,
        storm.events_sent
    );
    assert_eq!(report.errors, 0);
    assert_eq!(report.unexpected_requests, 0);
}
