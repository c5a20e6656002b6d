//! What netwarp will not touch, on real containers with a real daemon in
//! both dataplanes: a target with `--network host` (with a `0.0.0.0/0`
//! rule, so a write in the host's namespace would take the host off the
//! network), a target in an unlabelled container's namespace
//! (`--network container:X`), and a warp with `--network host`. A target
//! in a steered target's namespace is served through that one, and an
//! ordinary target on the same daemon stays steered throughout.
//!
//! The host-network target's rules come from its own rules label: the
//! daemon's global rules stay the test's usual 203.0.113.0/24.

use std::time::Duration;

use netwarp_tests::{
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, TEST_IMAGE},
    isolation::{describe_change, host_changes, host_state, unlabelled_state},
    observe::status_json,
    skip, skip_if,
    steering::{GLOBAL_RULES, reaches, start_target, start_warp},
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// Starts an idle container `name` with `--network NETWORK` and `labels`.
fn start_named(name: &str, network: &str, labels: &[String]) -> Container {
    // Guard first, so a half-failed start is still removed.
    let container = Container::adopt(name);
    let mut args = vec!["run", "--detach", "--name", name, "--network", network];
    for label in labels {
        args.extend(["--label", label.as_str()]);
    }
    args.extend([TEST_IMAGE, "sleep", "600"]);
    run("docker", &args).expect("starting a container");
    container
}

fn start_with_network(prefix: &str, network: &str, labels: &[String]) -> Container {
    start_named(&netwarp_tests::unique_name(prefix), network, labels)
}

fn target_status<'a>(status: &'a Value, container: &Container) -> Option<&'a Value> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == container.name())
}

fn reason(status: &Value, container: &Container) -> String {
    target_status(status, container)
        .and_then(|t| t["reason"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn leaves_other_namespaces_alone(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwm").expect("network");
    let warp_name = labels.warp_name("gw");
    let _warp = start_warp(&warp_name, &network, &[]);
    let target_label = labels.target_label(&warp_name);
    let ordinary = start_target("nwmo", &network, std::slice::from_ref(&target_label));
    // A target whose namespace a second target of the same policy joins.
    let owner = start_target("nwmw", &network, std::slice::from_ref(&target_label));
    let joined = start_with_network(
        "nwmj",
        &format!("container:{}", owner.name()),
        std::slice::from_ref(&target_label),
    );
    // An unlabelled container, and a target in its namespace.
    let plain = start_target("nwmu", &network, &[]);
    let intruder = start_with_network(
        "nwmi",
        &format!("container:{}", plain.name()),
        std::slice::from_ref(&target_label),
    );
    // A warp on the host's network, and a target of it.
    let host_warp_name = labels.warp_name("host");
    let _host_warp = start_named(&host_warp_name, "host", &[]);
    let orphan = start_target("nwmp", &network, &[labels.target_label(&host_warp_name)]);

    let plain_before = unlabelled_state(&plain).expect("the unlabelled container's state");
    let host_before = host_state().expect("the host's state");
    // The host-network target: everything, on the host's own namespace.
    let host_target = start_with_network(
        "nwmh",
        "host",
        &[target_label.clone(), labels.rules_label("0.0.0.0/0")],
    );

    let daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&ordinary, 8080)),
        "{mode}: the ordinary target was never steered:\n{}",
        daemon.log()
    );
    let mut status = Value::Null;
    let all = [&ordinary, &owner, &joined, &intruder, &orphan, &host_target];
    assert!(
        eventually(CONVERGE, || {
            status = status_json(&daemon).unwrap_or_default();
            all.iter().all(|c| target_status(&status, c).is_some())
                && status["reconcile"]["passes"].as_u64() >= Some(2)
        }),
        "{mode}: status never listed every target: {status:#}"
    );
    println!("{mode}: {status:#}");
    let state = |c: &Container| target_status(&status, c).map(|t| t["state"].clone());

    // The host-network target: refused, with a reason naming it and the fix.
    assert_eq!(state(&host_target), Some("refused".into()), "{mode}");
    let why = reason(&status, &host_target);
    assert!(
        why.starts_with(&format!("{} runs with --network host", host_target.name()))
            && why.contains("run it on the warp's Docker network"),
        "{mode}: {why}"
    );
    // The target in an unlabelled container's namespace: refused.
    assert_eq!(state(&intruder), Some("refused".into()), "{mode}");
    let why = reason(&status, &intruder);
    assert!(
        why.contains(&format!("shares the namespace of {}", plain.name()))
            && why.contains("which is not a netwarp target"),
        "{mode}: {why}"
    );
    // The target of the host-network warp: blocked, naming the warp.
    assert_eq!(state(&orphan), Some("blocked".into()), "{mode}");
    let why = reason(&status, &orphan);
    assert!(
        why.starts_with(&format!(
            "warp container {host_warp_name} runs with --network host, so netwarp refuses it"
        )),
        "{mode}: {why}"
    );
    let warp_state = status["warps"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == host_warp_name.as_str()))
        .map(|w| w["state"].clone());
    assert_eq!(warp_state, Some("refused".into()), "{mode}");
    // The target in a steered target's namespace: steered through it,
    // programmed once (no error), and its traffic really goes the warp's way.
    assert_eq!(state(&owner), Some("steered".into()), "{mode}");
    let joined_status = target_status(&status, &joined).expect("listed");
    assert_eq!(joined_status["state"], "steered", "{mode}");
    assert_eq!(joined_status["shares_namespace_of"], owner.name(), "{mode}");
    assert_eq!(
        reason(&status, &joined),
        format!(
            "shares the namespace of {}, which netwarp steers",
            owner.name()
        )
    );
    for c in all {
        assert_eq!(
            target_status(&status, c).map(|t| t["error"].clone()),
            Some(Value::Null),
            "{mode}: {} failed to program",
            c.name()
        );
    }
    assert!(reaches(&joined, 8080), "{mode}: the joined target");
    // The refusal is logged once per classification.
    let log = daemon.log();
    assert!(
        log.contains("target refused: netwarp does not touch its namespace")
            && log.contains(host_target.name()),
        "{mode}: no refusal in the log"
    );
    assert!(
        !log.contains("refusing to"),
        "{mode}: a write was attempted:\n{log}"
    );

    // Let a few more passes (and the resync) run, then compare.
    std::thread::sleep(Duration::from_secs(6));
    let host_after = host_state().expect("the host's state");
    let changed = host_changes(&host_before, &host_after);
    assert!(
        changed.is_empty(),
        "{mode}: netwarp changed the host's namespace:\n{changed}"
    );
    let plain_after = unlabelled_state(&plain).expect("the unlabelled container's state");
    assert!(
        plain_before == plain_after,
        "{mode}: netwarp changed the unlabelled container's namespace:\n{}",
        describe_change(&plain_before, &plain_after)
    );
    assert!(
        reaches(&ordinary, 8080),
        "{mode}: the ordinary target is no longer steered"
    );
    assert!(
        netwarp_tests::steering::connect_error(&orphan, 8080).contains("Permission denied"),
        "{mode}: the host-network warp's target is not blocked"
    );
    let metrics = daemon
        .metrics_address(Duration::from_secs(5))
        .expect("metrics address");
    let (_, body) = netwarp_tests::observe::scrape(metrics).expect("scrape");
    let series = format!(
        "netwarp_target_state{{container=\"{}\",",
        host_target.name()
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with(&series) && l.contains("state=\"refused\"")),
        "{mode}: no refused state series for the host-network target"
    );
}

#[test]
fn leaves_other_namespaces_alone_routes() {
    let test = "leaves_other_namespaces_alone_routes";
    skip_if!(test, skip::missing_docker());
    leaves_other_namespaces_alone("routes");
}

#[test]
fn leaves_other_namespaces_alone_ebpf() {
    let test = "leaves_other_namespaces_alone_ebpf";
    skip_if!(test, skip::missing_docker());
    leaves_other_namespaces_alone("ebpf");
}

/// The one entry point into namespaces refuses the host's, a second
/// container in one pass, and writes through a handle opened for reading.
#[test]
fn namespace_handle_refuses_the_host_and_a_second_owner() {
    use netwarp::dataplane::{
        netns::{NamespaceClaims, NamespaceHandle},
        routes::{Changes, RoutesError},
    };
    let test = "namespace_handle_refuses_the_host_and_a_second_owner";
    skip_if!(test, skip::missing_root());
    let netns = netwarp_tests::netns::Netns::create("nwmn").expect("netns");
    let sleeper = netwarp_tests::netns::Sleeper::start(&netns).expect("a process in the namespace");
    let pid = sleeper.pid();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for host in [std::process::id()] {
            let refused = NamespaceHandle::open(host).await.err();
            assert!(
                matches!(refused, Some(RoutesError::HostNamespace { .. })),
                "pid {host}: {refused:?}"
            );
            let mut claims = NamespaceClaims::new();
            let refused = NamespaceHandle::open_owned(host, &mut claims, "a")
                .await
                .err();
            assert!(
                matches!(refused, Some(RoutesError::HostNamespace { .. })),
                "pid {host}: {refused:?}"
            );
        }
        let mut claims = NamespaceClaims::new();
        let first = NamespaceHandle::open_owned(pid, &mut claims, "a").await;
        assert!(first.is_ok(), "{:?}", first.err());
        let same = NamespaceHandle::open_owned(pid, &mut claims, "a").await;
        assert!(same.is_ok(), "the same container twice: {:?}", same.err());
        let second = NamespaceHandle::open_owned(pid, &mut claims, "b")
            .await
            .err();
        assert!(
            matches!(&second, Some(RoutesError::NamespaceClaimed { other, .. }) if other == "a"),
            "{second:?}"
        );
        let reader = NamespaceHandle::open(pid).await.expect("read-only");
        let write = reader.apply(&Changes::default(), None).await.err();
        assert!(
            matches!(write, Some(RoutesError::ReadOnly { .. })),
            "{write:?}"
        );
        assert!(reader.netlink_handle().is_err());
    });
    drop(sleeper);
}

/// Routes-mode changes can be repeated after a partial failure: a route or
/// rule already there, or already gone, is done, not an error.
#[test]
fn route_and_rule_changes_repeat_when_already_there_or_gone() {
    use netwarp::{
        dataplane::{
            netns::{NamespaceClaims, NamespaceHandle},
            routes::{Desired, OwnedState, desired_state, diff},
        },
        model::parse_rules,
        plan::{Action, Entry},
    };
    let test = "route_and_rule_changes_repeat_when_already_there_or_gone";
    skip_if!(test, skip::missing_root());
    let netns = netwarp_tests::netns::Netns::create("nwri").expect("netns");
    netns
        .exec(&[
            "ip", "link", "add", "nwa0", "type", "veth", "peer", "name", "nwb0",
        ])
        .and_then(|_| netns.exec(&["ip", "addr", "add", "10.252.0.1/24", "dev", "nwa0"]))
        .and_then(|_| netns.exec(&["ip", "link", "set", "nwb0", "up"]))
        .and_then(|_| netns.exec(&["ip", "link", "set", "nwa0", "up"]))
        .expect("a gateway's network in the namespace");
    let sleeper = netwarp_tests::netns::Sleeper::start(&netns).expect("a process in the namespace");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut claims = NamespaceClaims::new();
        let namespace = NamespaceHandle::open_owned(sleeper.pid(), &mut claims, "t")
            .await
            .expect("the namespace");
        let rules = parse_rules("203.0.113.0/24,198.51.100.0/24,tcp:443").unwrap();
        let entries = Entry::all(&rules, Action::Via("10.252.0.2".parse().unwrap()));
        let desired = desired_state(&entries);
        let add = diff(&OwnedState::default(), &desired).expect("tables");
        assert!(
            !add.add_rules.is_empty() && !add.put_routes.is_empty(),
            "{add:?}"
        );
        for attempt in 0..2 {
            namespace
                .apply(&add, None)
                .await
                .unwrap_or_else(|e| panic!("adding, attempt {attempt}: {e}"));
            let installed = namespace.installed().await.unwrap();
            let left = diff(&installed, &desired).expect("tables");
            assert!(left.is_empty(), "attempt {attempt}: {left:?}");
        }
        let remove =
            diff(&namespace.installed().await.unwrap(), &Desired::default()).expect("tables");
        assert!(!remove.delete_rules.is_empty() && !remove.delete_routes.is_empty());
        for attempt in 0..2 {
            namespace
                .apply(&remove, None)
                .await
                .unwrap_or_else(|e| panic!("removing, attempt {attempt}: {e}"));
            assert_eq!(namespace.installed().await.unwrap(), OwnedState::default());
        }
    });
    drop(sleeper);
}
