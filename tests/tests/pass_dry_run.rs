//! The reconcile pass itself, in-process, with the dry-run dataplane
//! against the simulated Docker API (`netwarp_tests::fake_docker`): what
//! only root-and-Docker tests reached before, observed through the dry-run
//! record. No privileges, no kernel state, no Docker engine.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use netwarp::{
    config::{Config, Layer},
    dataplane::{
        dry_run::{DryRunDataplane, DryRunFaults, DryRunRecord, read_record},
        sync::Dataplane,
    },
    docker,
    model::Health,
    pass::{Pending, Reconciler},
};
use netwarp_tests::{
    fake_docker::{FakeDocker, Role, WorldSpec},
    scale::write_config,
};

/// A fake world, a reconciler over it, and the record it writes.
struct Bench {
    /// The fake serves on its own runtime; the pass runs on this one.
    runtime: tokio::runtime::Runtime,
    fake: FakeDocker,
    client: docker::Client,
    reconciler: Reconciler,
    faults: DryRunFaults,
    record: PathBuf,
    dir: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("netwarp-pass-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = WorldSpec {
            containers: 20,
            warps: 2,
            targets: 8,
            exited: 0,
        };
        let fake = FakeDocker::start(&dir, &spec).expect("the fake Docker API starts");
        let record = dir.join("record.json");
        let config = load(&write_config(&dir, fake.socket(), &record, 3600).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = (runtime.block_on(docker::connect(&config.docker, config.docker_api_version)))
            .expect("connecting to the fake");
        let faults = DryRunFaults::default();
        let dataplane = DryRunDataplane::new(Some(record.clone())).with_faults(faults.clone());
        let reconciler = Reconciler::new(config.plan_settings(), Dataplane::DryRun(dataplane));
        Self {
            runtime,
            fake,
            client,
            reconciler,
            faults,
            record,
            dir,
        }
    }

    /// One pass, with events naming `named`.
    fn pass(&mut self, named: &[&str]) -> DryRunRecord {
        self.pass_while(named, false)
    }

    /// One pass, with events naming `named`; `arriving`: another event
    /// comes in while the pass runs.
    fn pass_while(&mut self, named: &[&str], arriving: bool) -> DryRunRecord {
        self.pass_until(named, &|| arriving)
    }

    /// One pass, with events naming `named`; `arriving` says when another
    /// event has come in.
    fn pass_until(&mut self, named: &[&str], arriving: &dyn Fn() -> bool) -> DryRunRecord {
        let mut pending: Pending = named.iter().copied().collect();
        (self.runtime.block_on(
            self.reconciler
                .reconcile(&self.client, &mut pending, arriving),
        ))
        .expect("the pass reaches the fake");
        self.reconciler.flush_record();
        read_record(&self.record).expect("the pass wrote its record")
    }

    /// The published status of target `id`: state, error, held closed.
    fn published(&mut self, id: &str) -> (String, Option<String>, Option<bool>) {
        let published = self.reconciler.telemetry_mut().latest();
        let view = (published.targets.iter())
            .find(|t| t.plan.id == id)
            .expect("the target is published");
        let failure = view.failure.as_ref();
        (
            netwarp::telemetry::status::state_name(view).to_owned(),
            failure.map(|f| f.error.clone()),
            failure.map(|f| f.held_closed),
        )
    }

    fn failures(&mut self, object: &'static str, reason: &str) -> u64 {
        let metrics = self.reconciler.telemetry_mut().metrics();
        let labels = vec![("object", object.to_owned()), ("reason", reason.to_owned())];
        metrics.programming_failures.get_or_create(&labels).get()
    }

    fn states(record: &DryRunRecord) -> BTreeMap<String, &str> {
        (record.targets.iter())
            .map(|(id, t)| (id.clone(), t.state.as_str()))
            .collect()
    }
}

fn load(path: &Path) -> Config {
    Config::resolve(&[Layer::from_file(path).unwrap()]).unwrap()
}

#[test]
fn a_targets_classification_follows_its_warps_health() {
    let mut bench = Bench::start("health");
    let first = bench.pass(&[]);
    assert_eq!(Bench::states(&first), bench.fake.expected_states());
    assert!(
        first.targets.values().any(|t| t.state == "steered"),
        "the world has steered targets: {first:?}"
    );
    let warp = bench.fake.ids(Role::Warp)[0].clone();
    let warp_name = bench
        .fake
        .truth()
        .containers
        .iter()
        .find(|c| c.id == warp)
        .unwrap()
        .name
        .clone();
    bench.fake.set_health(&warp, Health::Unhealthy);
    let unhealthy = bench.pass(&[&warp]);
    assert_eq!(Bench::states(&unhealthy), bench.fake.expected_states());
    let through_warp: Vec<_> = (unhealthy.targets.values())
        .filter(|t| t.warp == warp_name)
        .collect();
    assert!(!through_warp.is_empty(), "some targets use {warp_name}");
    assert!(
        through_warp.iter().all(|t| t.state == "blocked"),
        "an unhealthy warp blocks its targets: {through_warp:?}"
    );
    assert!(
        (unhealthy.targets.values())
            .filter(|t| t.warp != warp_name)
            .all(|t| first.targets.values().any(|f| f == t)),
        "the other warp's targets are as they were"
    );
    bench.fake.set_health(&warp, Health::Healthy);
    let healthy = bench.pass(&[&warp]);
    assert_eq!(
        healthy.targets, first.targets,
        "a healthy warp steers again"
    );
}

#[test]
fn an_event_pass_leaves_unchanged_targets_alone() {
    let mut bench = Bench::start("unchanged");
    let first = bench.pass(&[]);
    assert!(first.visits.len() >= 2, "{first:?}");
    assert!(
        first.visits.values().all(|v| *v == 1),
        "the first pass checks every target once: {:?}",
        first.visits
    );
    // The next pass confirms what the first wrote, finding it unchanged.
    let confirmed = bench.pass(&[]);
    assert!(
        confirmed.visits.values().all(|v| *v == 2),
        "{:?}",
        confirmed.visits
    );
    let restarted = bench.fake.ids(Role::Target)[0].clone();
    bench.fake.restart(&restarted);
    let after = bench.pass(&[&restarted]);
    assert_eq!(after.passes, 3);
    assert_ne!(
        after.targets[&restarted].pid, first.targets[&restarted].pid,
        "the restart was seen"
    );
    assert_eq!(after.visits[&restarted], 3, "the named target is checked");
    for (id, visits) in after.visits.iter().filter(|(id, _)| **id != restarted) {
        assert_eq!(*visits, 2, "target {id} did not change and was not touched");
    }
    // An ordinary pass confirms the restarted target's write, and only it.
    let after = bench.pass(&[]);
    assert_eq!(after.visits[&restarted], 4);
    assert!((after.visits.iter()).all(|(id, v)| *id == restarted || *v == 2));
    // The periodic resync checks every target against the kernel again.
    bench.reconciler.resync_all();
    let resync = bench.pass(&[]);
    assert!(
        (resync.visits.iter()).all(|(id, v)| *v == after.visits[id] + 1),
        "a resync checks every target: {:?}",
        resync.visits
    );
}

#[test]
fn an_event_arriving_during_a_pass_is_served_next() {
    let mut bench = Bench::start("arriving");
    let first = bench.pass(&[]);
    let named = bench.fake.ids(Role::Target)[0].clone();
    // A resync pass, during which another event arrives: it stops after
    // the target its own event named.
    bench.reconciler.resync_all();
    let cut = bench.pass_while(&[&named], true);
    assert_eq!(cut.visits[&named], 2, "the named target is served");
    for (id, visits) in cut.visits.iter().filter(|(id, _)| **id != named) {
        assert_eq!(*visits, 1, "target {id} waits for the next pass");
    }
    assert_eq!(cut.targets, first.targets, "nothing left the record");
    // The next passes owe the resync: each serves at least one target the
    // last one left before it may stop again, so every target is reached
    // even while events keep arriving.
    let mut next = cut.clone();
    for _ in 0..cut.visits.len() {
        next = bench.pass_while(&[], true);
        if (next.visits.iter()).all(|(id, v)| *v == cut.visits[id] + 1) {
            break;
        }
    }
    assert!(
        (next.visits.iter()).all(|(id, v)| *v == cut.visits[id] + 1),
        "the owed resync checks every target: {:?}",
        next.visits
    );
}

#[test]
fn a_target_whose_write_fails_is_published_failed_until_one_succeeds() {
    let mut bench = Bench::start("failed");
    let first = bench.pass(&[]);
    let (id, target) = (first.targets.iter())
        .find(|(_, t)| t.state == "steered")
        .map(|(id, t)| (id.clone(), t.clone()))
        .expect("the world has a steered target");
    assert_eq!(bench.published(&id), ("steered".into(), None, None));
    assert_eq!(bench.failures("target", "map_full"), 0);

    // Its writes fail, and so do the guards': what holds it is unknown.
    bench.faults.fail_target(&target.name, true);
    bench.faults.fail_guards(true);
    bench.fake.restart(&id);
    let failing = bench.pass(&[&id]);
    let (state, error, held) = bench.published(&id);
    assert_eq!(
        state, "failed",
        "a target whose write failed is not steered"
    );
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("bpf_map_update_elem")),
        "{error:?}"
    );
    assert_eq!(held, Some(false), "no guard is known to be in place");
    assert_ne!(
        failing.targets[&id].pid,
        bench
            .fake
            .truth()
            .containers
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .pid,
        "the failed write changed nothing"
    );
    assert_eq!(bench.failures("target", "map_full"), 1);
    assert!(
        bench.failures("guard", "map_full") >= 1,
        "guard failures count"
    );

    // An ordinary pass (no event) still knows it failed; the guards are
    // written now and cover it.
    bench.faults.fail_guards(false);
    bench.reconciler.resync_all();
    bench.pass(&[]);
    let (state, _, held) = bench.published(&id);
    assert_eq!(state, "failed");
    assert_eq!(held, Some(true), "its network's guard blocks its prefixes");
    assert_eq!(
        bench.failures("target", "map_full"),
        2,
        "retried, failed again"
    );

    // A pass cut short before reaching it keeps its failure.
    let other = (first.targets.keys()).find(|t| **t != id).unwrap().clone();
    bench.pass_while(&[&other], true);
    assert_eq!(bench.published(&id).0, "failed");

    bench.faults.fail_target(&target.name, false);
    let healed = bench.pass(&[&id]);
    assert_eq!(bench.published(&id), ("steered".into(), None, None));
    assert_eq!(
        Bench::states(&healed),
        bench.fake.expected_states(),
        "the retried write reached the plan"
    );
}

#[test]
fn an_ordinary_start_is_programmed_before_heavy_writes_finish() {
    let mut bench = Bench::start("fair");
    let targets = bench.fake.ids(Role::Target);
    let ordinary = targets[0].clone();
    // The first pass after a connect arms the guards, then writes targets;
    // an event arrives during the first write (a heavy one, say).
    let faults = bench.faults.clone();
    let first = bench.pass_until(&[], &|| !faults.written().is_empty());
    let written = faults.written();
    assert_eq!(
        written.len(),
        1,
        "it stops after the write in progress: {written:?}"
    );
    assert!(first.targets.len() < targets.len(), "{first:?}");
    // The event: the ordinary target (re)starts. It is served first,
    // while the targets the first pass left are still being written.
    bench.fake.restart(&ordinary);
    let before = faults.written().len();
    let next = bench.pass_until(&[&ordinary], &|| faults.written().len() > before);
    let written = faults.written();
    assert_eq!(
        written[before], ordinary,
        "the event's target is written first"
    );
    assert_eq!(
        next.targets[&ordinary].pid,
        bench
            .fake
            .truth()
            .containers
            .iter()
            .find(|c| c.id == ordinary)
            .unwrap()
            .pid,
        "and programmed"
    );
    assert!(
        next.targets.len() < targets.len(),
        "before the other writes finish: {next:?}"
    );
    // Events keep arriving: every pass still writes one more, so every
    // target is reached.
    let mut last = next;
    for _ in 0..targets.len() {
        if Bench::states(&last) == bench.fake.expected_states() {
            break;
        }
        let before = faults.written().len();
        last = bench.pass_until(&[], &|| faults.written().len() > before);
        assert!(faults.written().len() > before, "each pass makes progress");
    }
    assert_eq!(Bench::states(&last), bench.fake.expected_states());
}

/// A pass for a few events lists only the containers they name and
/// patches the last snapshot; it must end exactly where a full pass over
/// a fresh listing ends, whatever the events did.
#[test]
fn a_pass_for_a_few_events_ends_where_a_full_pass_ends() {
    let mut bench = Bench::start("partial");
    bench.pass(&[]);
    let targets = bench.fake.ids(Role::Target);
    let warps = bench.fake.ids(Role::Warp);
    type Change<'a> = &'a dyn Fn(&FakeDocker);
    let steps: [(&str, Change); 5] = [
        ("a target stops", &|fake| fake.stop(&targets[0])),
        ("a warp stops", &|fake| fake.stop(&warps[0])),
        ("the warp starts", &|fake| fake.start_container(&warps[0])),
        ("the target starts", &|fake| {
            fake.start_container(&targets[0])
        }),
        ("a warp turns unhealthy", &|fake| {
            fake.set_health(&warps[1], Health::Unhealthy)
        }),
    ];
    for (step, change) in steps {
        change(&bench.fake);
        let named: Vec<&str> = [&targets[0], &warps[0], &warps[1]]
            .map(String::as_str)
            .to_vec();
        let before = bench.fake.counters();
        let partial = bench.pass(&named);
        let used = bench.fake.counters().since(&before);
        assert!(
            used.inspect <= named.len() as u64,
            "{step}: only the named containers are inspected ({} inspects)",
            used.inspect
        );
        assert_eq!(
            Bench::states(&partial),
            bench.fake.expected_states(),
            "{step}"
        );
        // A full pass over a fresh listing changes nothing.
        bench.reconciler.resync_all();
        let full = bench.pass(&[]);
        assert_eq!(partial.targets, full.targets, "{step}");
    }
}
