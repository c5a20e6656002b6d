//! Shared capacity no target can take from the others, against a real
//! daemon and real containers: in eBPF mode a target whose rules do not
//! fit the rule tries is blocked entirely while an ordinary neighbour is
//! still steered; in routes mode a target over the per-target prefix
//! limit is blocked entirely. Both show the reason in `netwarp status`
//! and in `netwarp_target_state`.
//!
//! The heavy labels list prefixes inside 10.201.0.0/16, which nothing here
//! routes to; the traffic probes go to the warp's REMOTE address only.

use std::time::Duration;

use aya::maps::lpm_trie::Key;
use netwarp::dataplane::ebpf::PinnedMaps;
use netwarp_common::{
    ACTION_BLOCK, REASON_POLICY, RULE_SET_BITS, RULES_V4_MAP, RuleKeyV4, RuleValue, TargetPolicy,
};
use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{Exposition, status_json, status_target},
    skip, skip_if,
    steering::{REMOTE, connect_error, reaches, start_target, start_warp},
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(20);

/// `n` distinct /32 prefixes inside 10.201.0.0/16, then REMOTE's prefix
/// (so the probe to REMOTE is one of the target's own rules).
fn heavy_rules(n: usize) -> String {
    let mut rules: Vec<String> = (0..n)
        .map(|i| format!("10.201.{}.{}/32", i / 256, i % 256))
        .collect();
    rules.push("203.0.113.0/24".into());
    rules.join(",")
}

/// Waits until `status` reports `target` blocked with a reason of `kind`,
/// and returns its entry.
fn blocked_for(daemon: &Daemon, target: &Container, kind: &str) -> Value {
    let mut status = Value::Null;
    let reported = eventually(CONVERGE, || {
        status = status_json(daemon).expect("status");
        status_target(&status, target.name())
            .is_some_and(|t| t["state"] == "blocked" && t["reason_kind"] == kind)
    });
    assert!(
        reported,
        "{} never reported blocked for {kind}: {status:#}",
        target.name()
    );
    status_target(&status, target.name())
        .expect("reported")
        .clone()
}

/// The `netwarp_target_state` sample of `target`, by its labels.
fn state_metric(daemon: &Daemon, target: &Container, state: &str, reason: Option<&str>) -> f64 {
    let address = daemon
        .metrics_address(Duration::from_secs(5))
        .expect("metrics address");
    let metrics = Exposition::scrape(address).expect("scrape");
    let mut labels = vec![("container", target.name()), ("state", state)];
    if let Some(reason) = reason {
        labels.push(("reason", reason));
    }
    metrics
        .value("netwarp_target_state", &labels)
        .unwrap_or_else(|e| panic!("{e}:\n{}", metrics.text))
}

/// The heavy target's traffic does not leave: REMOTE (one of its rules,
/// reached through the warp by its neighbour) is refused at once by its
/// prohibit routes. With `neighbour`, an address on its own network, that
/// is checked too: the eBPF program drops even bridged traffic (routes
/// mode leaves the network's own subnet to the connected route).
fn held_closed(heavy: &Container, neighbour: Option<&str>) {
    assert!(!reaches(heavy, 8080), "{} reached {REMOTE}", heavy.name());
    let denied = connect_error(heavy, 8080);
    assert!(denied.contains("Permission denied"), "{denied}");
    let Some(neighbour) = neighbour else {
        return;
    };
    let probe = format!("sleep 1 | nc -w 2 {neighbour} 8080");
    let out = output("docker", &["exec", heavy.name(), "sh", "-c", &probe]).expect("docker exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("hello") && !out.status.success(),
        "{} reached its neighbour {neighbour}: {stdout}",
        heavy.name()
    );
}

/// A warp, a heavy target listing `heavy` prefixes, an ordinary target
/// steering REMOTE's prefix, all on one network, and a daemon in `mode`
/// with `env`; returns once the ordinary target is steered.
struct World {
    warp_ip: String,
    heavy: Container,
    ordinary: Container,
    daemon: Daemon,
    // Dropped last: the containers leave the network first.
    _warp: Container,
    _network: DockerNetwork,
}

fn start(mode: &str, heavy: usize, env: &[(&str, &str)]) -> World {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwc").expect("network");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let warp_ip = warp.ipv4(&network).expect("the warp's address");
    let target = |prefix, rules: &str| {
        let labels = [labels.target_label(&warp_name), labels.rules_label(rules)];
        start_target(prefix, &network, &labels)
    };
    let heavy = target("nwh", &heavy_rules(heavy));
    let ordinary = target("nwo", "203.0.113.0/24");
    let daemon = Daemon::start_with_env(&labels, mode, "", env).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&ordinary, 8080)),
        "{mode}: the ordinary target was never steered; log:\n{}",
        daemon.log()
    );
    World {
        warp_ip,
        heavy,
        ordinary,
        daemon,
        _warp: warp,
        _network: network,
    }
}

#[test]
fn a_target_the_rule_tries_cannot_hold_is_blocked_and_its_neighbour_steered_ebpf() {
    let test = "a_target_the_rule_tries_cannot_hold_is_blocked_and_its_neighbour_steered_ebpf";
    skip_if!(test, skip::missing_docker());
    // 201 rows of its own and 201 in the guard: more than a 300-entry trie
    // holds next to the ordinary target and a switch's headroom.
    let world = start(
        "ebpf",
        200,
        &[("NETWARP_DATAPLANE_EBPF_RULES_CAPACITY", "300")],
    );
    let (heavy, ordinary, daemon) = (&world.heavy, &world.ordinary, &world.daemon);
    let reported = blocked_for(daemon, heavy, "capacity");
    let reason = reported["reason"].as_str().expect("a reason");
    for needle in [
        "NETWARP_RULES_V4",
        "dataplane.ebpf_rules_capacity",
        "of 300",
    ] {
        assert!(reason.contains(needle), "`{needle}` not in: {reason}");
    }
    assert_eq!(reported["error"], Value::Null, "{reported:#}");
    held_closed(heavy, Some(&world.warp_ip));
    // Its veth holds the catch-all too, read straight from the kernel: any
    // address finds a block row, counted as policy (a limit), not as a warp
    // that is down.
    let (host_ifindex, _) = heavy.host_veth().expect("the heavy target's veth");
    let maps = PinnedMaps::new(daemon.pin_dir());
    let policy: TargetPolicy = (maps.iface_state(host_ifindex))
        .expect("the state map")
        .policy()
        .expect("a policy on the heavy target's veth");
    let trie = (maps.lpm_trie::<RuleKeyV4, RuleValue>(RULES_V4_MAP)).expect("the v4 rules");
    let any: std::net::Ipv4Addr = world.warp_ip.parse().expect("an address");
    let key = RuleKeyV4 {
        rule_set: policy.rule_set.to_be_bytes(),
        addr: any.octets(),
    };
    let row = (trie.get(&Key::new(RULE_SET_BITS + 32, key), 0)).expect("a catch-all row");
    assert_eq!(
        (row.default_action, row.block_reason),
        (ACTION_BLOCK, REASON_POLICY)
    );
    assert_eq!(
        state_metric(daemon, heavy, "blocked", Some("capacity")),
        1.0
    );
    assert_eq!(state_metric(daemon, ordinary, "steered", None), 1.0);
    // The map use, in status and metrics, stays within the capacity.
    let status = status_json(daemon).expect("status");
    let v4 = (status["maps"].as_array().into_iter().flatten())
        .find(|m| m["map"] == "NETWARP_RULES_V4")
        .unwrap_or_else(|| panic!("no NETWARP_RULES_V4 in {status:#}"));
    assert_eq!(v4["capacity"], 300, "{v4}");
    let entries = v4["entries"].as_u64().expect("entries");
    // The ordinary target's row, its guard's, the heavy one's catch-all.
    assert!((3..=300).contains(&entries), "{v4}");
    let metrics =
        Exposition::scrape(daemon.metrics_address(CONVERGE).expect("metrics")).expect("scrape");
    let capacity = metrics.value("netwarp_map_capacity", &[("map", "NETWARP_RULES_V4")]);
    assert_eq!(capacity.expect("capacity gauge"), 300.0);
    // The guard was programmed: it was never crowded out.
    let log = daemon.log();
    assert!(log.contains("bridge guard written"), "{log}");
    assert!(
        !daemon.log().contains("programming the bridge guard failed"),
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("bpf_map_update_elem failed"),
        "a write hit the trie's limit:\n{}",
        daemon.log()
    );
}

#[test]
fn a_target_over_the_prefix_limit_is_blocked_entirely_routes() {
    let test = "a_target_over_the_prefix_limit_is_blocked_entirely_routes";
    skip_if!(test, skip::missing_docker());
    let world = start(
        "routes",
        60,
        &[("NETWARP_LIMITS_MAX_PREFIXES_PER_TARGET", "50")],
    );
    let (heavy, daemon) = (&world.heavy, &world.daemon);
    let reported = blocked_for(daemon, heavy, "too_many_prefixes");
    let reason = reported["reason"].as_str().expect("a reason");
    for needle in [
        "61 destination prefixes",
        "limit of 50",
        "limits.max_prefixes_per_target",
    ] {
        assert!(reason.contains(needle), "`{needle}` not in: {reason}");
    }
    // Blocked entirely: one catch-all per family, whatever it asked for.
    let rules: Vec<&str> = (reported["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(rules, ["0.0.0.0/0", "::/0"], "{reported:#}");
    held_closed(heavy, None);
    assert_eq!(
        state_metric(daemon, heavy, "blocked", Some("too_many_prefixes")),
        1.0
    );
}
