//! The routes dataplane with a large label, in real containers: thousands
//! of prefixes cost routes in netwarp's tables, never policy rules, in the
//! target's namespace and on the host. Routes mode only (the eBPF
//! dataplane has no per-prefix rules to count), so it is not part of the
//! steering suite that runs once per dataplane.

use std::time::Duration;

use netwarp_tests::{
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::DockerNetwork,
    skip, skip_if,
    steering::{REMOTE, connect_error, is_netwarp_rule, looked_up, netwarp_entries, reaches},
    steering::{start_target, start_warp},
};

const PREFIXES: usize = 3000;
const CONVERGE: Duration = Duration::from_secs(60);

/// The host's netwarp rules for `bridge`, as `ip rule show` prints them.
fn host_rules(bridge: &str) -> Vec<String> {
    run("ip", &["-4", "rule", "show"])
        .expect("ip rule show")
        .lines()
        .filter(|l| l.contains("proto 87"))
        .filter(|l| l.contains(&format!("iif {bridge} ")) || l.ends_with(&format!("iif {bridge}")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn routes_steering_of_a_large_label_costs_one_rule_per_selector_group() {
    let test = "routes_steering_of_a_large_label_costs_one_rule_per_selector_group";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let bridge = network.bridge().expect("the network's bridge");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let warp_ip = warp.ipv4(&network).expect("the warp's address");
    // REMOTE's prefix and 3,000 test-only /32s in 10.200.0.0/16, tcp:8080
    // only: one selector group.
    let mut rules = vec!["203.0.113.0/24".to_owned()];
    rules.extend((0..PREFIXES).map(|i| format!("10.200.{}.{}/32", i / 256, i % 256)));
    rules.push("tcp:8080".into());
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&labels.warp_name("gw")),
            labels.rules_label(&rules.join(",")),
        ],
    );

    let mut daemon = Daemon::start(&labels, "routes", "").expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "tcp:8080 to {REMOTE} never went through the warp; log:\n{}",
        daemon.log()
    );
    let (ns_rules, ns_routes) = netwarp_entries(&target, "-4").expect("netwarp's entries");
    assert_eq!(ns_rules.len(), 1, "one rule for tcp:8080: {ns_rules:?}");
    assert!(!ns_rules[0].contains(" to "), "{ns_rules:?}");
    assert!(
        ns_rules[0].contains("ipproto tcp dport 8080 lookup"),
        "{ns_rules:?}"
    );
    assert_eq!(ns_routes.len(), PREFIXES + 1);
    let table = looked_up(&ns_rules[0]).expect("a table").to_owned();

    // A steered destination goes via the warp from netwarp's table; the
    // same destination on another port finds no route there and falls
    // through to `main`.
    let steered = target
        .ip(&[
            "route",
            "get",
            "10.200.3.7",
            "ipproto",
            "tcp",
            "dport",
            "8080",
        ])
        .expect("ip route get");
    assert!(
        steered.contains(&format!("via {warp_ip} ")) && steered.contains(&format!("table {table}")),
        "{steered}"
    );
    let unsteered = target
        .ip(&[
            "route",
            "get",
            "10.200.3.7",
            "ipproto",
            "tcp",
            "dport",
            "9090",
        ])
        .expect("ip route get");
    assert!(
        !unsteered.contains("table") && !unsteered.contains(&format!("via {warp_ip} ")),
        "{unsteered}"
    );
    assert!(!reaches(&target, 9090), "tcp:9090 was steered");

    // The host: a handful of rules for the bridge, the prefixes in a table.
    let host = host_rules(&bridge);
    assert!(
        (1..=4).contains(&host.len()),
        "the host holds {} netwarp rules for {bridge}: {host:?}",
        host.len()
    );
    let lookups: Vec<&String> = host.iter().filter(|l| l.contains("lookup")).collect();
    assert_eq!(lookups.len(), 1, "{host:?}");
    let guard_table = looked_up(lookups[0]).expect("a guard table");
    let guarded = run("ip", &["-4", "route", "show", "table", guard_table]).expect("guard table");
    assert_eq!(
        guarded
            .lines()
            .filter(|l| l.starts_with("prohibit "))
            .count(),
        PREFIXES + 1,
        "the guard table's routes"
    );

    // A stray of an earlier version's shape, added while the daemon is
    // stopped: the next start adopts the tables and removes the stray.
    daemon.stop(libc::SIGTERM).expect("stopping the daemon");
    for args in [
        &[
            "rule",
            "add",
            "pref",
            "10000",
            "to",
            "10.200.250.0/24",
            "lookup",
            "20055",
            "proto",
            "87",
        ][..],
        &[
            "route",
            "add",
            "prohibit",
            "10.200.250.0/24",
            "table",
            "20055",
            "proto",
            "87",
        ][..],
    ] {
        target.ip(args).expect("adding a stray");
    }
    daemon
        .restart(libc::SIGKILL)
        .expect("restarting the daemon");
    // Awaits the whole state: the stray alone is also one rule.
    assert!(
        eventually(CONVERGE, || netwarp_entries(&target, "-4").is_ok_and(
            |(rules, routes)| rules == ns_rules && routes == ns_routes
        )),
        "the stray rule stayed or netwarp's entries changed: {:?}",
        netwarp_entries(&target, "-4")
    );
    let (after_rules, after_routes) = netwarp_entries(&target, "-4").expect("entries");
    assert_eq!(after_rules, ns_rules, "the restart changed the rule");
    assert_eq!(after_routes, ns_routes, "the restart changed the routes");
    let legacy = target
        .ip(&["route", "show", "table", "20055"])
        .unwrap_or_default();
    assert!(legacy.trim().is_empty(), "the stray route stayed: {legacy}");
    assert!(reaches(&target, 8080));

    // The warp goes: every prefix is refused at once (EACCES), still with
    // one rule.
    run("docker", &["stop", "--time", "0", warp.name()]).expect("stopping the warp");
    assert!(
        eventually(CONVERGE, || connect_error(&target, 8080)
            .contains("Permission denied")),
        "not blocked while the warp was down: {}",
        connect_error(&target, 8080)
    );
    let (blocked_rules, blocked_routes) = netwarp_entries(&target, "-4").expect("entries");
    assert_eq!(blocked_rules.len(), 1, "{blocked_rules:?}");
    assert!(is_netwarp_rule(&blocked_rules[0]));
    assert_eq!(
        blocked_routes
            .iter()
            .filter(|r| r.starts_with("prohibit "))
            .count(),
        PREFIXES + 1
    );
    drop(warp);
}
