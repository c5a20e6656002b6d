//! `netwarp status` against a real daemon, in both dataplanes: what it
//! reports matches what is programmed, checked independently of netwarp's
//! own code (Docker's view of the containers, the routing table inside the
//! target's namespace, and the pinned BPF maps read directly).

use std::time::Duration;

use aya::maps::lpm_trie::Key;
use netwarp::dataplane::ebpf::PinnedMaps;
use netwarp_common::{
    ACTION_BLOCK, ACTION_STEER, RULE_SET_BITS, RULES_V4_MAP, RuleKeyV4, RuleValue, TargetPolicy,
};
use netwarp_tests::{
    command::{output, run},
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_table, status_target},
    skip, skip_if,
    steering::{GLOBAL_RULES, REMOTE, TABLE, reaches, row_actions, start_target, start_warp},
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(20);

fn inspect(container: &Container, template: &str) -> String {
    run(
        "docker",
        &["inspect", "--format", template, container.name()],
    )
    .expect("docker inspect")
    .trim()
    .to_owned()
}

fn mac_on(container: &Container, network: &DockerNetwork) -> String {
    inspect(
        container,
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").MacAddress}}}}",
            network.name()
        ),
    )
}

/// The pinned policy of a host veth, read straight from the kernel.
fn pinned_policy(daemon: &Daemon, ifindex: u32) -> Option<TargetPolicy> {
    PinnedMaps::new(daemon.pin_dir())
        .iface_state(ifindex)
        .expect("the state map")
        .policy()
}

/// The pinned rule for REMOTE in a policy's live rule set.
fn pinned_rule(daemon: &Daemon, policy: &TargetPolicy) -> Option<RuleValue> {
    let trie = PinnedMaps::new(daemon.pin_dir())
        .lpm_trie::<RuleKeyV4, RuleValue>(RULES_V4_MAP)
        .expect("the v4 rules");
    let addr: std::net::Ipv4Addr = REMOTE.parse().expect("an address");
    let key = Key::new(
        RULE_SET_BITS + 32,
        RuleKeyV4 {
            rule_set: policy.rule_set.to_be_bytes(),
            addr: addr.octets(),
        },
    );
    trie.get(&key, 0).ok()
}

/// What the dataplane holds for `target`, checked against `status`.
fn check_programmed(
    mode: &str,
    daemon: &Daemon,
    status: &Value,
    target: &Container,
    warp: Option<&Container>,
    network: &DockerNetwork,
) {
    let name = target.name();
    // In ebpf mode a steered target has no table at all.
    let routes = target
        .ip(&["route", "show", "table", TABLE])
        .unwrap_or_default();
    let steered = status["state"] == "steered";
    match (mode, steered) {
        ("routes", true) => {
            let via = status["next_hop_v4"].as_str().expect("a next hop");
            assert!(
                routes.contains(&format!("203.0.113.0/24 via {via}")),
                "{mode}: {name}'s table does not route via {via}:\n{routes}"
            );
        }
        (_, false) => assert!(
            routes.contains("prohibit 203.0.113.0/24"),
            "{mode}: {name} is reported blocked but its table has no prohibit route:\n{routes}"
        ),
        _ => {}
    }
    if mode != "ebpf" {
        assert_eq!(status["host_ifindex"], Value::Null, "{mode}: {status}");
        return;
    }
    let (host_ifindex, host_name) = target.host_veth().expect("the target's veth");
    assert_eq!(
        status["host_ifindex"],
        json!(host_ifindex),
        "{mode}: {status}"
    );
    assert_eq!(
        status["host_interface"],
        json!(host_name),
        "{mode}: {status}"
    );
    let policy = pinned_policy(daemon, host_ifindex)
        .unwrap_or_else(|| panic!("{mode}: no pinned policy for {name}'s veth {host_ifindex}"));
    let rule = pinned_rule(daemon, &policy)
        .unwrap_or_else(|| panic!("{mode}: no pinned rule for {REMOTE} in {name}'s rule set"));
    if steered {
        let warp = warp.expect("a steered target has a warp");
        let (warp_ifindex, _) = warp.host_veth().expect("the warp's veth");
        assert_eq!(
            policy.warp_ifindex, warp_ifindex,
            "{mode}: pinned warp veth"
        );
        assert_eq!(
            status["warp_ifindex"],
            json!(warp_ifindex),
            "{mode}: {status}"
        );
        let mac: netwarp::dataplane::mac::MacAddr = mac_on(warp, network).parse().expect("MAC");
        assert_eq!(policy.warp_mac, mac.0);
        assert_eq!(
            row_actions(&rule),
            [ACTION_STEER],
            "{mode}: {name}'s pinned rule"
        );
    } else {
        assert_eq!(
            row_actions(&rule),
            [ACTION_BLOCK],
            "{mode}: {name}'s pinned rule"
        );
    }
}

fn status_matches_the_programmed_state(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nws").expect("network");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let wide = start_target("nwt", &network, &[labels.target_label(&warp_name)]);
    // Cap labels are private to this test's daemon (see TestLabels).
    let narrow = start_target(
        "nwn",
        &network,
        &[
            labels.target_label(&warp_name),
            labels.rules_label("203.0.113.0/24,tcp:8080"),
            format!("{}=10mbit", labels.egress_rate),
            format!("{}=64kb", labels.burst),
        ],
    );
    let config = GLOBAL_RULES;
    let mut daemon = Daemon::start(&labels, mode, config).expect("daemon");
    for target in [&wide, &narrow] {
        assert!(
            eventually(CONVERGE, || reaches(target, 8080)),
            "{mode}: {} was never steered",
            target.name()
        );
    }
    // Let a scrape-free moment pass so counters are non-zero and a pass
    // has completed after the traffic.
    let warp_ip = warp.ipv4(&network).expect("warp address");
    let mut status = Value::Null;
    assert!(
        eventually(CONVERGE, || {
            status = status_json(&daemon).expect("status");
            status["targets"].as_array().is_some_and(|t| t.len() == 2)
                && status["targets"].as_array().is_some_and(|t| {
                    t.iter()
                        .all(|t| t["counters"]["tx"]["bytes"].as_u64() > Some(0))
                })
        }),
        "{mode}: status never showed both targets with counters: {status:#}"
    );
    println!("{mode}: {status:#}");

    assert_eq!(status["mode"], mode);
    assert_eq!(status["format_version"], 1);
    assert_eq!(status["docker"]["connected"], true);
    assert!(status["reconcile"]["passes"].as_u64() >= Some(1));
    let metrics = daemon
        .metrics_address(Duration::from_secs(5))
        .expect("metrics address");
    assert_eq!(status["metrics_listen"], json!(metrics.to_string()));
    // routes: the bridge guard holds one lookup rule per selector group
    // (all traffic, tcp:8080), the warp's allow and the nop, and one
    // prohibit route per group; eBPF writes no host rules.
    let host_guard = match mode {
        "routes" => json!({"rules": 4, "tables": 2, "routes": 2}),
        _ => json!(null),
    };
    assert_eq!(status["host_guard"], host_guard, "{mode}: {status:#}");
    if mode == "routes" {
        let (_, scrape) = netwarp_tests::observe::scrape(metrics).expect("a scrape");
        assert!(
            scrape.lines().any(|l| l == "netwarp_host_guard_rules 4"),
            "{scrape}"
        );
    }
    // The warp terminates what it gets (it owns the destination), so it
    // forwards nothing untunnelled: eBPF counts 0 drops; routes keeps no
    // such counter.
    let untunnelled_drops = match mode {
        "ebpf" => json!({"packets": 0, "bytes": 0}),
        _ => json!(null),
    };
    assert_eq!(
        status["warps"],
        json!([{
            "name": warp_name,
            "id": inspect(&warp, "{{.Id}}")[..12],
            "up": true,
            "state": "up",
            "targets": 2,
            "untunnelled_drops": untunnelled_drops,
        }])
    );
    let no_caps = json!({"egress_bits_per_second": null, "ingress_bits_per_second": null,
        "burst_bytes": null, "egress_burst_bytes": null, "ingress_burst_bytes": null});
    let narrow_caps = json!({"egress_bits_per_second": 10_000_000, "ingress_bits_per_second": null,
        "burst_bytes": 65536, "egress_burst_bytes": 65536, "ingress_burst_bytes": null});
    for (target, rules, caps) in [
        (
            &wide,
            json!([{"rule": "203.0.113.0/24", "action": format!("via {warp_ip}")}]),
            &no_caps,
        ),
        (
            &narrow,
            json!([{"rule": "203.0.113.0/24 tcp:8080", "action": format!("via {warp_ip}")}]),
            &narrow_caps,
        ),
    ] {
        let reported = status_target(&status, target.name())
            .unwrap_or_else(|| panic!("{mode}: {} missing from {status:#}", target.name()));
        assert_eq!(reported["id"], json!(inspect(target, "{{.Id}}")[..12]));
        assert_eq!(reported["warp"], json!(warp_name));
        assert_eq!(reported["state"], "steered");
        assert_eq!(reported["reason"], Value::Null);
        assert_eq!(reported["network"], json!(network.name()));
        assert_eq!(reported["next_hop_v4"], json!(warp_ip));
        assert_eq!(reported["next_hop_v6"], Value::Null);
        assert_eq!(reported["rules"], rules, "{mode}: {}", target.name());
        // The caps as planned from the labels (enforcement is the
        // dataplane's and is tested with it).
        assert_eq!(&reported["caps"], caps, "{mode}: {}", target.name());
        assert_eq!(reported["error"], Value::Null);
        let counters = &reported["counters"];
        assert!(counters["rx"]["bytes"].as_u64() > Some(0), "{counters}");
        match mode {
            "ebpf" => assert!(
                counters["steered"]["packets"].as_u64() > Some(0),
                "{counters}"
            ),
            _ => assert_eq!(counters["steered"], Value::Null),
        }
        check_programmed(mode, &daemon, reported, target, Some(&warp), &network);
    }
    // The narrow target's policy rule selects tcp port 8080 only.
    if mode == "routes" {
        let rules = narrow.ip(&["rule", "show"]).expect("ip rule");
        assert!(
            rules.contains(&format!("ipproto tcp dport 8080 lookup {TABLE}")),
            "{rules}"
        );
    }

    let table = status_table(&daemon).expect("status table");
    println!("{table}");
    for needle in [
        format!("dataplane: {mode}"),
        warp_name.clone(),
        wide.name().to_owned(),
        narrow.name().to_owned(),
        "steered".to_owned(),
        warp_ip.clone(),
        "rule 203.0.113.0/24 tcp:8080 -> via".to_owned(),
        "caps: egress 10.0 Mbit/s, burst 64.0 KiB".to_owned(),
    ] {
        assert!(
            table.contains(&needle),
            "{mode}: no `{needle}` in:\n{table}"
        );
    }

    // The warp goes away: both targets are reported blocked, and are.
    drop(warp);
    assert!(
        eventually(CONVERGE, || {
            status = status_json(&daemon).expect("status");
            status["warps"][0]["state"] == "missing"
                && status["targets"]
                    .as_array()
                    .is_some_and(|t| t.iter().all(|t| t["state"] == "blocked"))
        }),
        "{mode}: never reported blocked: {status:#}"
    );
    assert_eq!(
        status["warps"],
        json!([{"name": warp_name, "id": null, "up": false, "state": "missing", "targets": 2,
            "untunnelled_drops": null}])
    );
    for target in [&wide, &narrow] {
        let reported = status_target(&status, target.name()).expect("listed");
        assert_eq!(
            reported["reason"],
            json!(format!("warp container {warp_name} does not exist"))
        );
        assert_eq!(reported["next_hop_v4"], Value::Null);
        assert!(
            reported["rules"]
                .as_array()
                .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r["action"] == "block")),
            "{mode}: {reported}"
        );
        // Blocked in the eBPF maps too, keyed by the same veth (the target
        // is still on the network, so its veth and policy stay).
        if mode == "ebpf" {
            let (ifindex, _) = target.host_veth().expect("veth");
            let policy = pinned_policy(&daemon, ifindex).expect("policy");
            let rule = pinned_rule(&daemon, &policy).expect("rule");
            assert_eq!(
                row_actions(&rule),
                [ACTION_BLOCK],
                "{mode}: {}",
                target.name()
            );
        } else {
            check_programmed(mode, &daemon, reported, target, None, &network);
        }
    }

    // Once the daemon has stopped, status says so and fails.
    daemon.stop(libc::SIGTERM).expect("stopping the daemon");
    let socket = daemon.control_socket().to_str().expect("utf-8").to_owned();
    let out = output(
        netwarp_binary().to_str().expect("utf-8"),
        &["status", "--control-socket", &socket],
    )
    .expect("running status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is netwarp running? socket {socket}: ")),
        "{stderr}"
    );
}

#[test]
fn status_matches_the_programmed_state_routes() {
    let test = "status_matches_the_programmed_state_routes";
    skip_if!(test, skip::missing_docker());
    status_matches_the_programmed_state("routes");
}

#[test]
fn status_matches_the_programmed_state_ebpf() {
    let test = "status_matches_the_programmed_state_ebpf";
    skip_if!(test, skip::missing_docker());
    status_matches_the_programmed_state("ebpf");
}

/// A second daemon on the same control socket refuses to start rather
/// than steal the socket; a stale socket file (daemon killed) is reused.
#[test]
fn one_daemon_per_control_socket() {
    let test = "one_daemon_per_control_socket";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let mut first = Daemon::start(&labels, "routes", "").expect("daemon");
    first
        .wait_for_log("control socket listening", CONVERGE)
        .expect("listening");
    let socket = first.control_socket().to_str().expect("utf-8").to_owned();
    // Bounded: a daemon that wrongly started would be stopped after 30 s.
    let out = output(
        "timeout",
        &[
            "30",
            netwarp_binary().to_str().expect("utf-8"),
            "run",
            "--config",
            first.config_path().to_str().expect("utf-8"),
        ],
    )
    .expect("a second daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another netwarp daemon answers on the control socket {socket}"
        )),
        "{stderr}"
    );
    status_json(&first).expect("the first daemon still answers");

    // SIGKILL leaves the socket file behind; a new daemon replaces it.
    first.restart(libc::SIGKILL).expect("restart");
    assert!(
        eventually(CONVERGE, || status_json(&first).is_ok()),
        "the restarted daemon never answered on {socket}:\n{}",
        first.log()
    );
}

/// A target the eBPF dataplane cannot hold (more protocol selectors on one
/// prefix than it supports) is published as failed, not steered: with its
/// error, the failure's reason and whether it is held closed (its
/// network's guard blocks the whole prefix, which the other target steers,
/// so it is), counted by reason; the other target is steered.
#[test]
fn a_target_whose_programming_fails_is_published_failed() {
    use netwarp_tests::observe::{Exposition, missing_parser};
    let test = "a_target_whose_programming_fails_is_published_failed";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, missing_parser());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwf").expect("network");
    let warp_name = labels.warp_name("gw");
    let _warp = start_warp(&warp_name, &network, &[]);
    let good = start_target("nwg", &network, &[labels.target_label(&warp_name)]);
    let ports: Vec<String> = (8081..=8089).map(|p| format!("tcp:{p}")).collect();
    let bad = start_target(
        "nwb",
        &network,
        &[
            labels.target_label(&warp_name),
            labels.rules_label(&format!("203.0.113.0/24,{}", ports.join(","))),
        ],
    );
    let daemon = Daemon::start(&labels, "ebpf", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&good, 8080)),
        "the good target was never steered:\n{}",
        daemon.log()
    );
    let mut status = Value::Null;
    assert!(
        eventually(CONVERGE, || {
            status = status_json(&daemon).expect("status");
            status_target(&status, bad.name()).is_some_and(|t| t["state"] == "failed")
        }),
        "the bad target was never published failed: {status:#}"
    );
    let reported = status_target(&status, bad.name()).expect("the bad target");
    assert_eq!(reported["planned_state"], "steered");
    assert_eq!(reported["failure_reason"], "compile");
    assert_eq!(reported["held_closed"], true, "{reported:#}");
    let error = reported["error"].as_str().unwrap_or_default();
    assert!(error.contains("protocol selectors"), "{error}");
    let good_status = status_target(&status, good.name()).expect("the good target");
    assert_eq!(good_status["state"], "steered");
    assert_eq!(good_status["error"], Value::Null);
    let table = status_table(&daemon).expect("status table");
    assert!(
        table.contains("failed (compile), planned steered: "),
        "{table}"
    );

    let address = daemon
        .metrics_address(Duration::from_secs(5))
        .expect("metrics address");
    let metrics = Exposition::scrape(address).expect("a scrape");
    let failures = |object| {
        let labels = [("object", object), ("reason", "compile")];
        metrics
            .value("netwarp_programming_failures_total", &labels)
            .unwrap_or(0.0)
    };
    assert!(failures("target") >= 1.0, "{}", metrics.text);
    assert_eq!(
        failures("guard"),
        0.0,
        "the guard compiles: {}",
        metrics.text
    );
    let state = [("container", bad.name()), ("state", "failed")];
    assert_eq!(
        metrics.value("netwarp_target_state", &state).ok(),
        Some(1.0),
        "{}",
        metrics.text
    );
    assert_eq!(
        metrics
            .value("netwarp_target_held_closed", &[("container", bad.name())])
            .ok(),
        Some(1.0)
    );
}
