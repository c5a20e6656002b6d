//! The reconcile pass itself, in-process, with the dry-run dataplane
//! against the simulated Docker API (`netwarp_tests::fake_docker`): what
//! only root-and-Docker tests reached before, observed through the dry-run
//! record. No privileges, no kernel state, no Docker engine.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::SystemTime,
};

use netwarp::{
    config::{Config, Layer},
    dataplane::{
        dry_run::{DryRunRecord, read_record},
        sync::Dataplane,
    },
    docker,
    model::Health,
    pass::Reconciler,
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
    client: bollard::Docker,
    reconciler: Reconciler,
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
        let dataplane = Dataplane::dry_run(Some(record.clone()));
        let reconciler = Reconciler::new(config.plan_settings(), dataplane);
        Self {
            runtime,
            fake,
            client,
            reconciler,
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
        let mut pending: HashMap<String, SystemTime> = (named.iter())
            .map(|id| ((*id).to_owned(), SystemTime::now()))
            .collect();
        (self.runtime.block_on(
            self.reconciler
                .reconcile(&self.client, &mut pending, &|| arriving),
        ))
        .expect("the pass reaches the fake");
        read_record(&self.record).expect("the pass wrote its record")
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
    // The next pass owes the resync and may not stop early again, so
    // every target is reached even while events keep arriving.
    let next = bench.pass_while(&[], true);
    assert!(
        (next.visits.iter()).all(|(id, v)| *v == cut.visits[id] + 1),
        "the owed resync checks every target: {:?}",
        next.visits
    );
}
