use super::*;
use crate::model::{Endpoint, SmallMap, parse_rules};

/// Settings with the default labels and `rules` as the global rules.
pub(super) fn settings(rules: &str) -> PlanSettings {
    PlanSettings {
        warp_name_pattern: "warp-*".into(),
        target_label: "netwarp.target".into(),
        network_label: "netwarp.network".into(),
        rules_label: "netwarp.rules".into(),
        global_rules: parse_rules(rules).unwrap(),
        on_warp_down: OnWarpDown::Block,
        caps: CapSettings::default(),
        max_prefixes_per_target: 4096,
        probe_label: "netwarp.probe".into(),
        exclude_own_networks: true,
        dns: crate::plan::DnsPolicy::Follow,
        dns_label: "netwarp.dns".into(),
        allow_label: "netwarp.allow".into(),
        deny_label: "netwarp.deny".into(),
        rule_capacity: None,
    }
}

pub(super) fn endpoint(v4: &str, v6: Option<&str>) -> Endpoint {
    Endpoint {
        ipv4: Some(v4.parse().unwrap()),
        ipv6: v6.map(|v| v.parse().unwrap()),
        mac: Some(format!("02:42:{v4}")),
        network_id: None,
        // No subnet: exclusions of own networks are tested on their own.
        ipv4_prefix_len: None,
        ipv6_prefix_len: None,
    }
}

pub(super) fn container(
    name: &str,
    labels: &[(&str, &str)],
    networks: &[(&str, Endpoint)],
) -> Container {
    Container {
        id: format!("id-{name}"),
        name: name.into(),
        running: true,
        health: Health::None,
        pid: Some(100),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        networks: networks
            .iter()
            .map(|(n, e)| (n.to_string(), e.clone()))
            .collect(),
        network_mode: NetworkMode::Own,
    }
}

fn warp() -> Container {
    container("warp-vpn", &[], &[("net", endpoint("172.20.0.2", None))])
}

fn target(labels: &[(&str, &str)]) -> Container {
    let mut all = vec![("netwarp.target", "warp-vpn")];
    all.extend_from_slice(labels);
    container("app", &all, &[("net", endpoint("172.20.0.3", None))])
}

fn only_target(world: &World, settings: &PlanSettings) -> TargetPlan {
    let plan = plan(world, settings);
    assert_eq!(plan.targets.len(), 1, "{plan:?}");
    Arc::unwrap_or_clone(plan.targets.into_iter().next().unwrap())
}

fn via(ip: &str) -> Action {
    Action::Via(ip.parse().unwrap())
}

#[test]
fn steers_global_rules_through_the_warp() {
    let world = World {
        containers: vec![warp(), target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert_eq!(
        t.state,
        TargetState::Steered {
            network: "net".into(),
            via_v4: Some("172.20.0.2".parse().unwrap()),
            via_v6: None
        }
    );
    assert_eq!(t.entries.len(), 1);
    assert_eq!(t.entries[0].action, via("172.20.0.2"));
    assert_eq!(t.mac_on_network.as_deref(), Some("02:42:172.20.0.3"));
}

/// A task container of the Swarm service `service`, as Swarm names it.
fn swarm_task(service: &str, task: &str, ip: &str) -> Container {
    container(
        &format!("{service}.1.{task}"),
        &[(SWARM_SERVICE_LABEL, service)],
        &[("net", endpoint(ip, None))],
    )
}

#[test]
fn a_swarm_service_name_finds_its_task_and_the_pattern_matches_the_service() {
    let mut settings = settings("203.0.113.0/24");
    settings.warp_name_pattern = "vpn_warp*".into();
    let mut target = target(&[]);
    target
        .labels
        .insert("netwarp.target".into(), "vpn_warp".into());
    let world = World {
        containers: vec![swarm_task("vpn_warp", "x7k2", "172.20.0.7"), target.clone()],
    };
    let t = only_target(&world, &settings);
    assert_eq!(t.entries[0].action, via("172.20.0.7"), "{t:?}");

    // A task of a service outside the pattern is no warp.
    let other = World {
        containers: vec![swarm_task("vpn_other", "x7k2", "172.20.0.7"), {
            let mut t = target.clone();
            t.labels.insert("netwarp.target".into(), "vpn_other".into());
            t
        }],
    };
    assert_eq!(
        only_target(&other, &settings).state,
        TargetState::Blocked(BlockReason::WarpNameMismatch {
            warp: "vpn_other.1.x7k2".into(),
            pattern: "vpn_warp*".into(),
        })
    );
}

#[test]
fn of_several_swarm_tasks_a_running_one_is_chosen_and_a_name_beats_a_service() {
    let mut exited = swarm_task("warp-svc", "a111", "172.20.0.7");
    exited.running = false;
    let running = swarm_task("warp-svc", "b222", "172.20.0.8");
    let world = World {
        containers: vec![exited.clone(), running.clone()],
    };
    assert_eq!(Index::new(&world).warp("warp-svc"), Some(&running));
    let mut both_running = exited.clone();
    both_running.running = true;
    let world = World {
        containers: vec![running.clone(), both_running.clone()],
    };
    assert_eq!(
        Index::new(&world).warp("warp-svc"),
        Some(&both_running),
        "first by name"
    );
    let named = container("warp-svc", &[], &[("net", endpoint("172.20.0.9", None))]);
    let world = World {
        containers: vec![running, named.clone()],
    };
    assert_eq!(Index::new(&world).warp("warp-svc"), Some(&named));
    assert_eq!(Index::new(&world).warp("warp-none"), None);
}

#[test]
fn a_swarm_warp_guards_its_other_networks_for_its_targets() {
    let mut target = target(&[]);
    target
        .labels
        .insert("netwarp.target".into(), "warp-svc".into());
    let mut warp = swarm_task("warp-svc", "x7k2", "172.20.0.7");
    warp.networks
        .insert("outer".into(), endpoint("172.30.0.7", None));
    warp.labels.insert("netwarp.network".into(), "net".into());
    let world = World {
        containers: vec![warp, target],
    };
    let guards = plan_guards(&world, &settings("203.0.113.0/24"));
    let outer = guards.iter().find(|g| g.network == "outer");
    assert!(
        outer.is_some_and(|g| g
            .forwarded
            .iter()
            .any(|(source, _)| *source == "172.20.0.3".parse::<IpAddr>().unwrap())),
        "the target's address is not blocked as a source on the warp's other network: \
         {guards:?}"
    );
}

#[test]
fn unlabelled_and_stopped_containers_are_not_targets() {
    let plain = container("plain", &[], &[("net", endpoint("172.20.0.9", None))]);
    let mut stopped = target(&[]);
    stopped.running = false;
    let world = World {
        containers: vec![warp(), plain, stopped],
    };
    assert!(plan(&world, &settings("203.0.113.0/24")).targets.is_empty());
}

#[test]
fn rules_label_overrides_the_global_rules() {
    let world = World {
        containers: vec![
            warp(),
            target(&[("netwarp.rules", "198.51.100.0/24,tcp:443,udp:5000-5100")]),
        ],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    let rules: Vec<String> = t.entries.iter().map(|e| e.rule.to_string()).collect();
    assert_eq!(
        rules,
        ["198.51.100.0/24 tcp:443", "198.51.100.0/24 udp:5000-5100"]
    );
}

#[test]
fn a_missing_warp_blocks() {
    let world = World {
        containers: vec![target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert_eq!(
        t.state,
        TargetState::Blocked(BlockReason::WarpMissing {
            warp: "warp-vpn".into()
        })
    );
    assert_eq!(t.entries.len(), 1);
    assert_eq!(t.entries[0].action, Action::Block);
}

#[test]
fn a_stopped_warp_blocks_and_keeps_the_target_mac() {
    let mut w = warp();
    w.running = false;
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::WarpNotRunning { .. })
    ));
    assert!(t.entries.iter().all(|e| e.action == Action::Block));
    assert!(t.mac_on_network.is_some());
}

#[test]
fn an_unhealthy_warp_counts_as_down() {
    let mut w = warp();
    w.health = Health::Unhealthy;
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::WarpUnhealthy { .. })
    ));
}

/// What earlier passes know of the group of target `app`: its active
/// member(s) (a spread group's joined by commas) and the warps usable for
/// the whole hold-down.
fn history(active: Option<&str>, settled: &[&str]) -> Observed {
    Observed {
        probes: WarpProbes::new(),
        failover: Failover {
            active: active
                .map(|a| ("id-app".to_owned(), a.to_owned()))
                .into_iter()
                .collect(),
            settled: Some(settled.iter().map(|r| (*r).to_owned()).collect()),
        },
    }
}

/// A group member on network `net`.
fn member(name: &str, ip: &str, running: bool) -> Container {
    let mut w = container(name, &[], &[("net", endpoint(ip, None))]);
    w.running = running;
    w
}

/// A failover group: the first usable member carries the traffic; a
/// member that recovers takes it back only once its hold-down is over
/// (unless the active one fails meanwhile); none usable fails closed.
#[test]
fn a_failover_group_uses_the_first_usable_member_with_hysteresis() {
    let world = |a_runs: bool, b_runs: bool| World {
        containers: vec![
            member("warp-a", "172.20.0.2", a_runs),
            member("warp-b", "172.20.0.5", b_runs),
            container(
                "app",
                &[("netwarp.target", " warp-a , warp-b ")],
                &[("net", endpoint("172.20.0.3", None))],
            ),
        ],
    };
    let settings = settings("203.0.113.0/24");
    // `settled`: the members usable for the whole hold-down.
    let chosen = |world: &World, active: Option<&str>, settled: &[&str]| {
        let plan = plan_observed(world, &settings, &history(active, settled));
        let target = plan.targets.into_iter().next().unwrap();
        assert_eq!(target.warp_group, ["warp-a", "warp-b"]);
        (target.warp.clone(), target.state.clone())
    };
    let steered_via = |(warp, state): (String, TargetState)| match state {
        TargetState::Steered { via_v4, .. } => (warp, via_v4.map(|v| v.to_string())),
        other => panic!("{other:?}"),
    };
    let both = world(true, true);
    // No active member yet (a new target, a restarted daemon): the first
    // usable, settled or not.
    assert_eq!(
        steered_via(chosen(&both, None, &[])),
        ("warp-a".into(), Some("172.20.0.2".into()))
    );
    // The primary dies: the backup, in the same pass.
    let a_down = world(false, true);
    assert_eq!(
        steered_via(chosen(&a_down, Some("warp-a"), &["warp-a", "warp-b"])),
        ("warp-b".into(), Some("172.20.0.5".into()))
    );
    // It is back, inside its hold-down: the traffic stays on the backup...
    assert_eq!(chosen(&both, Some("warp-b"), &["warp-b"]).0, "warp-b");
    // ...and moves back once the hold-down is over.
    assert_eq!(
        chosen(&both, Some("warp-b"), &["warp-a", "warp-b"]).0,
        "warp-a"
    );
    // The backup dies while the primary is still in its hold-down: the
    // primary, since nothing else is usable.
    let b_down = world(true, false);
    assert_eq!(chosen(&b_down, Some("warp-b"), &[]).0, "warp-a");
    // None usable: fail closed, every member's reason named.
    let (_, state) = chosen(&world(false, false), Some("warp-a"), &[]);
    let TargetState::Blocked(reason) = state else {
        panic!("{state:?}")
    };
    assert_eq!(
        reason.to_string(),
        "no warp of its group (warp-a, warp-b) is usable: warp container warp-a is not \
         running; warp container warp-b is not running"
    );
    // An empty member name is a configuration error, not a warp.
    let mut bad = world(true, true);
    bad.containers[2]
        .labels
        .insert("netwarp.target".into(), "warp-a,,warp-b".into());
    let plan = plan(&bad, &settings);
    assert!(matches!(
        plan.targets[0].state,
        TargetState::Blocked(BlockReason::EmptyWarpName { .. })
    ));
}

/// A spread group: every usable member carries flows, in label order,
/// the first one's address in the `via` entries; a recovering member
/// waits out its hold-down unless no active member is usable; none
/// usable fails closed; a label that cannot be read blocks, naming it.
#[test]
fn a_spread_group_uses_every_usable_member() {
    let world = |label: &str, runs: [bool; 3]| World {
        containers: vec![
            member("warp-a", "172.20.0.2", runs[0]),
            member("warp-b", "172.20.0.5", runs[1]),
            member("warp-c", "172.20.0.6", runs[2]),
            container(
                "app",
                &[("netwarp.target", label)],
                &[("net", endpoint("172.20.0.3", None))],
            ),
        ],
    };
    let label = "spread:warp-a,warp-b,warp-c";
    let settings = settings("203.0.113.0/24");
    let planned = |world: &World, active: Option<&str>, settled: &[&str]| {
        let plan = plan_observed(world, &settings, &history(active, settled));
        Arc::unwrap_or_clone(plan.targets.into_iter().next().unwrap())
    };
    let names = |t: &TargetPlan| t.active_warps();
    let all = world(label, [true; 3]);
    let t = planned(&all, None, &[]);
    assert_eq!(t.group_mode, GroupMode::Spread);
    assert_eq!(t.warp_group, ["warp-a", "warp-b", "warp-c"]);
    assert_eq!(names(&t), "warp-a,warp-b,warp-c");
    assert_eq!(t.warp, "warp-a");
    assert_eq!(
        t.entries,
        Entry::all(
            &t.entries.iter().map(|e| e.rule).collect::<Vec<_>>(),
            via("172.20.0.2")
        )
    );
    assert_eq!(
        (t.spread.iter())
            .map(|m| (
                m.name.as_str(),
                m.via_v4.unwrap().to_string(),
                m.mac.clone().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            ("warp-a", "172.20.0.2".into(), "02:42:172.20.0.2".into()),
            ("warp-b", "172.20.0.5".into(), "02:42:172.20.0.5".into()),
            ("warp-c", "172.20.0.6".into(), "02:42:172.20.0.6".into()),
        ]
    );
    assert_eq!(t.spread[1].pid, Some(100));
    // The three count as carrying it.
    let plan = plan(&all, &settings);
    assert!(
        plan.warps.iter().all(|w| w.targets == 1),
        "{:?}",
        plan.warps
    );
    // A member leaves: the others carry on, the first usable one's
    // address in the entries.
    let a_down = world(label, [false, true, true]);
    let t = planned(&a_down, Some("warp-a,warp-b,warp-c"), &["warp-b", "warp-c"]);
    assert_eq!(names(&t), "warp-b,warp-c");
    assert!(
        matches!(t.state, TargetState::Steered { via_v4: Some(v4), .. } if v4.to_string() == "172.20.0.5")
    );
    // It is back within its hold-down: it waits...
    assert_eq!(
        names(&planned(&all, Some("warp-b,warp-c"), &["warp-b", "warp-c"])),
        "warp-b,warp-c"
    );
    // ...and joins once the hold-down is over.
    assert_eq!(
        names(&planned(
            &all,
            Some("warp-b,warp-c"),
            &["warp-a", "warp-b", "warp-c"]
        )),
        "warp-a,warp-b,warp-c"
    );
    // A member already carrying flows stays, settled or not.
    assert_eq!(
        names(&planned(&all, Some("warp-a,warp-c"), &["warp-c"])),
        "warp-a,warp-c"
    );
    // No active member usable: every usable one, settled or not.
    let c_down = world(label, [true, true, false]);
    assert_eq!(
        names(&planned(&c_down, Some("warp-c"), &[])),
        "warp-a,warp-b"
    );
    // None usable: fail closed, every member's reason named.
    let t = planned(&world(label, [false; 3]), Some("warp-a"), &[]);
    let TargetState::Blocked(reason) = &t.state else {
        panic!("{:?}", t.state)
    };
    assert!(t.spread.is_empty());
    assert!(t.entries.iter().all(|e| e.action == Action::Block));
    assert_eq!(
        reason.to_string(),
        "no warp of its group (warp-a, warp-b, warp-c) is usable: warp container warp-a is not \
         running; warp container warp-b is not running; warp container warp-c is not running"
    );
    // A member on another network than the first usable one is left out:
    // the target's frames reach the members over one network.
    let mut split = world(label, [true; 3]);
    split.containers[2] = container("warp-c", &[], &[("other", endpoint("172.21.0.6", None))]);
    let app = &mut split.containers[3];
    app.networks
        .insert("other".into(), endpoint("172.21.0.3", None));
    assert_eq!(names(&planned(&split, None, &[])), "warp-a,warp-b");
    // A spread group of one is that warp, spread over one member.
    let one = planned(&world("spread:warp-b", [true; 3]), None, &[]);
    assert_eq!(
        (one.warp.as_str(), names(&one).as_str()),
        ("warp-b", "warp-b")
    );
    // A failover group never fills `spread`.
    let failover = planned(&world("warp-a,warp-b", [true; 3]), None, &[]);
    assert!(failover.spread.is_empty());
    assert_eq!(failover.group_mode, GroupMode::Failover);
    // Bad labels block, with the label's error.
    for (bad, error) in [
        ("spraed:warp-a,warp-b", "unknown group mode `spraed`"),
        (
            "spread:w1,w2,w3,w4,w5,w6,w7,w8,w9",
            "a spread group has at most 8 members",
        ),
    ] {
        let t = planned(&world(bad, [true; 3]), None, &[]);
        let TargetState::Blocked(reason) = &t.state else {
            panic!("{:?}", t.state)
        };
        assert_eq!(reason.kind(), "configuration");
        let text = reason.to_string();
        assert!(
            text.contains("netwarp.target") && text.contains(error),
            "{text}"
        );
        assert!(t.entries.iter().all(|e| e.action == Action::Block));
    }
    let t = planned(&world("spread:warp-a,,warp-b", [true; 3]), None, &[]);
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::EmptyWarpName { .. })
    ));
}

/// A plan with what the warps' probes say and no failover history.
fn plan_probed(world: &World, settings: &PlanSettings, probes: &WarpProbes) -> Plan {
    let observed = Observed {
        probes: probes.clone(),
        failover: Failover::default(),
    };
    plan_observed(world, settings, &observed)
}

/// A warp with a probe label is usable only while its probe answers:
/// before any verdict and while it fails, its targets are blocked, with
/// the probe named; a label that cannot be read is not trusted.
#[test]
fn a_probed_warp_is_usable_only_while_its_probe_answers() {
    use crate::warp_probe::ProbeVerdict;
    let probed = |label: &str| {
        let mut w = warp();
        w.labels.insert("netwarp.probe".into(), label.into());
        World {
            containers: vec![w, target(&[])],
        }
    };
    let settings = settings("203.0.113.0/24");
    let world = probed("tcp:198.51.100.7:443");
    let state = |verdict: Option<ProbeVerdict>| {
        let probes: WarpProbes = verdict
            .into_iter()
            .map(|v| ("id-warp-vpn".into(), v))
            .collect();
        let plan = plan_probed(&world, &settings, &probes);
        (plan.targets[0].state.clone(), plan.warps[0].state)
    };
    let (pending, warp_state) = state(None);
    assert_eq!(
        pending,
        TargetState::Blocked(BlockReason::WarpProbePending {
            warp: "warp-vpn".into(),
            probe: "tcp:198.51.100.7:443".into(),
        })
    );
    assert_eq!(warp_state, WarpState::ProbePending);
    assert_eq!(state(Some(ProbeVerdict::Unknown)).0, pending);
    let (up, warp_state) = state(Some(ProbeVerdict::Up));
    assert!(matches!(up, TargetState::Steered { .. }), "{up:?}");
    assert_eq!(warp_state, WarpState::Up);
    let (down, warp_state) = state(Some(ProbeVerdict::Down {
        failed: 3,
        of: 5,
        last_error: "no answer within 2s".into(),
    }));
    assert_eq!(warp_state, WarpState::ProbeFailing);
    let TargetState::Blocked(reason) = down else {
        panic!("{down:?}")
    };
    assert_eq!(
        reason.to_string(),
        "warp container warp-vpn's probe tcp:198.51.100.7:443 failed 3 of its last 5 times \
         (last: no answer within 2s): its tunnel does not carry traffic"
    );

    let invalid = plan_probed(&probed("ping 198.51.100.7"), &settings, &WarpProbes::new());
    assert_eq!(invalid.warps[0].state, WarpState::ProbeInvalid);
    let TargetState::Blocked(BlockReason::WarpProbeInvalid { label, error, .. }) =
        &invalid.targets[0].state
    else {
        panic!("{:?}", invalid.targets[0].state)
    };
    assert_eq!(label, "netwarp.probe");
    assert!(error.contains("tcp:ADDRESS:PORT"), "{error}");
    // Without a probe label, verdicts are not consulted.
    let unprobed = World {
        containers: vec![warp(), target(&[])],
    };
    let plan = plan_probed(&unprobed, &settings, &WarpProbes::new());
    assert!(matches!(plan.targets[0].state, TargetState::Steered { .. }));
}

#[test]
fn a_healthy_warp_or_one_without_a_healthcheck_is_up() {
    for health in [Health::None, Health::Healthy] {
        let mut w = warp();
        w.health = health;
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        assert!(matches!(t.state, TargetState::Steered { .. }), "{health:?}");
    }
}

#[test]
fn a_starting_warp_counts_as_down() {
    let mut w = warp();
    w.health = Health::Starting;
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::WarpStarting { .. })
    ));
    assert!(t.entries.iter().all(|e| e.action == Action::Block));
    assert_eq!(
        TargetState::Blocked(BlockReason::WarpStarting {
            warp: "warp-vpn".into()
        }),
        t.state,
    );
}

#[test]
fn bypass_leaves_traffic_alone_while_the_warp_is_down() {
    let mut s = settings("203.0.113.0/24");
    s.on_warp_down = OnWarpDown::Bypass;
    let world = World {
        containers: vec![target(&[])],
    };
    let t = only_target(&world, &s);
    assert!(matches!(
        t.state,
        TargetState::Bypassed(BlockReason::WarpMissing { .. })
    ));
    assert!(t.entries.is_empty());
}

#[test]
fn ambiguous_networks_block_and_name_every_network() {
    let w = container(
        "warp-vpn",
        &[],
        &[
            ("front", endpoint("172.21.0.2", None)),
            ("net", endpoint("172.20.0.2", None)),
        ],
    );
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    let TargetState::Blocked(reason) = &t.state else {
        panic!("{t:?}")
    };
    assert_eq!(
        reason.to_string(),
        "warp container warp-vpn is on several networks (front, net); set the label \
         netwarp.network on it to choose one"
    );
}

#[test]
fn the_network_label_resolves_the_ambiguity() {
    let w = container(
        "warp-vpn",
        &[("netwarp.network", "net")],
        &[
            ("front", endpoint("172.21.0.2", None)),
            ("net", endpoint("172.20.0.2", None)),
        ],
    );
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert_eq!(t.entries[0].action, via("172.20.0.2"));
}

#[test]
fn a_network_label_naming_a_foreign_network_blocks() {
    let w = container(
        "warp-vpn",
        &[("netwarp.network", "elsewhere")],
        &[("net", endpoint("172.20.0.2", None))],
    );
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::UnknownNetwork { .. })
    ));
}

#[test]
fn a_target_off_the_warps_network_blocks() {
    let app = container(
        "app",
        &[("netwarp.target", "warp-vpn")],
        &[("other", endpoint("172.30.0.3", None))],
    );
    let world = World {
        containers: vec![warp(), app],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::NotOnNetwork { .. })
    ));
}

#[test]
fn ipv6_rules_block_when_the_warp_has_no_ipv6_address() {
    let world = World {
        containers: vec![warp(), target(&[])],
    };
    let t = only_target(&world, &settings("203.0.113.0/24,2001:db8::/32"));
    let actions: Vec<(String, Action)> = t
        .entries
        .iter()
        .map(|e| (e.rule.destination.to_string(), e.action))
        .collect();
    assert!(actions.contains(&("203.0.113.0/24".into(), via("172.20.0.2"))));
    assert!(actions.contains(&("2001:db8::/32".into(), Action::Block)));
}

#[test]
fn ipv6_rules_steer_when_the_warp_has_ipv6() {
    let w = container(
        "warp-vpn",
        &[],
        &[("net", endpoint("172.20.0.2", Some("fd00:20::2")))],
    );
    let world = World {
        containers: vec![w, target(&[])],
    };
    let t = only_target(&world, &settings("2001:db8::/32"));
    assert_eq!(t.entries[0].action, via("fd00:20::2"));
}

#[test]
fn a_warp_outside_the_name_pattern_is_refused() {
    let w = container("vpn", &[], &[("net", endpoint("172.20.0.2", None))]);
    let app = container(
        "app",
        &[("netwarp.target", "vpn")],
        &[("net", endpoint("172.20.0.3", None))],
    );
    let world = World {
        containers: vec![w, app],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert!(matches!(
        t.state,
        TargetState::Blocked(BlockReason::WarpNameMismatch { .. })
    ));
}

#[test]
fn malformed_labels_block_on_the_global_rules_and_name_the_label() {
    let cases = [
        (
            "netwarp.rules",
            "203.0.113.0/33",
            "label netwarp.rules=`203.0.113.0/33` is invalid: `203.0.113.0/33`: prefix length 33 is longer than 32",
        ),
        (
            "netwarp.rules",
            "203.0.113.0/24,tcp:9000-80",
            "label netwarp.rules=`203.0.113.0/24,tcp:9000-80` is invalid: port range `9000-80` is empty: its start is above its end",
        ),
        (
            "netwarp.rules",
            "203.0.113.0/24,gre",
            "label netwarp.rules=`203.0.113.0/24,gre` is invalid: unknown protocol `gre` (expected tcp, udp or icmp)",
        ),
        (
            "netwarp.target",
            " ",
            "label netwarp.target is empty; set it to the warp container's name",
        ),
    ];
    for (label, value, message) in cases {
        let app = container(
            "app",
            &[("netwarp.target", "warp-vpn"), (label, value)],
            &[("net", endpoint("172.20.0.3", None))],
        );
        let world = World {
            containers: vec![warp(), app],
        };
        let t = only_target(&world, &settings("192.0.2.0/24"));
        let TargetState::Blocked(reason) = &t.state else {
            panic!("{label}={value}: {t:?}")
        };
        assert_eq!(reason.to_string(), message);
        assert_eq!(t.entries.len(), 1, "{label}={value}");
        assert_eq!(t.entries[0].action, Action::Block);
    }
}

#[test]
fn one_bad_target_does_not_affect_another() {
    let bad = container(
        "bad",
        &[
            ("netwarp.target", "warp-vpn"),
            ("netwarp.rules", "nonsense"),
        ],
        &[("net", endpoint("172.20.0.4", None))],
    );
    let world = World {
        containers: vec![warp(), bad, target(&[])],
    };
    let plan = plan(&world, &settings("203.0.113.0/24"));
    assert_eq!(plan.targets.len(), 2);
    let good = plan.targets.iter().find(|t| t.name == "app").unwrap();
    assert!(matches!(good.state, TargetState::Steered { .. }));
}

#[test]
fn a_recreated_warp_with_a_new_ip_is_followed() {
    let mut w = warp();
    let world = World {
        containers: vec![w.clone(), target(&[])],
    };
    let before = only_target(&world, &settings("203.0.113.0/24"));
    w.networks
        .insert("net".into(), endpoint("172.20.0.7", None));
    let world = World {
        containers: vec![w, target(&[])],
    };
    let after = only_target(&world, &settings("203.0.113.0/24"));
    assert_eq!(before.entries[0].action, via("172.20.0.2"));
    assert_eq!(after.entries[0].action, via("172.20.0.7"));
}

#[test]
fn planning_is_deterministic_whatever_the_listing_order() {
    let a = World {
        containers: vec![warp(), target(&[]), {
            let mut c = target(&[]);
            c.id = "id-b".into();
            c.name = "b".into();
            c
        }],
    };
    let mut b = a.clone();
    b.containers.reverse();
    assert_eq!(
        plan(&a, &settings("203.0.113.0/24")),
        plan(&b, &settings("203.0.113.0/24"))
    );
}

fn with_mode(mut c: Container, mode: NetworkMode) -> Container {
    // Docker lists no endpoints for a container in another's namespace.
    if matches!(mode, NetworkMode::Container(_)) {
        c.networks = SmallMap::default();
    }
    c.network_mode = mode;
    c
}

fn refusal(t: &TargetPlan) -> String {
    let TargetState::Refused(reason) = &t.state else {
        panic!("not refused: {t:?}")
    };
    reason.to_string()
}

/// Nothing of a refused target reaches a dataplane.
fn assert_untouched(t: &TargetPlan) {
    assert_eq!(t.pid, None, "{t:?}");
    assert!(t.entries.is_empty(), "{t:?}");
    assert_eq!(t.mac_on_network, None);
    assert_eq!(t.warp_pid, None);
}

#[test]
fn a_host_network_target_is_refused_and_gets_no_pid() {
    let app = with_mode(target(&[("netwarp.rules", "0.0.0.0/0")]), NetworkMode::Host);
    let world = World {
        containers: vec![warp(), app],
    };
    for on_warp_down in [OnWarpDown::Block, OnWarpDown::Bypass] {
        let mut s = settings("203.0.113.0/24");
        s.on_warp_down = on_warp_down;
        let t = only_target(&world, &s);
        assert_untouched(&t);
        assert_eq!(t.state.name(), "refused");
        let reason = refusal(&t);
        assert!(
            reason.starts_with("app runs with --network host"),
            "{reason}"
        );
        assert!(
            reason.contains("run it on the warp's Docker network"),
            "{reason}"
        );
        assert!(plan(&world, &s).guards.is_empty(), "no guard for it");
    }
}

#[test]
fn a_target_without_network_has_nothing_to_steer() {
    let app = with_mode(target(&[]), NetworkMode::NoNetwork);
    let world = World {
        containers: vec![warp(), app],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert_untouched(&t);
    assert_eq!(
        refusal(&t),
        "app runs with --network none: it has no network, so there is nothing to steer"
    );
}

fn sharing(other: &str, labels: &[(&str, &str)]) -> Container {
    let mut all = vec![("netwarp.target", "warp-vpn")];
    all.extend_from_slice(labels);
    let mut c = container("side", &all, &[]);
    c.network_mode = NetworkMode::Container(other.into());
    c
}

fn find<'a>(plan: &'a Plan, name: &str) -> &'a TargetPlan {
    plan.targets.iter().find(|t| t.name == name).unwrap()
}

#[test]
fn a_target_in_a_steered_targets_namespace_is_served_by_it_once() {
    // Docker records the owner's full id; a name or prefix works too.
    for reference in ["id-app", "app", "id-a"] {
        let world = World {
            containers: vec![warp(), target(&[]), sharing(reference, &[])],
        };
        let p = plan(&world, &settings("203.0.113.0/24"));
        let owner = find(&p, "app");
        let side = find(&p, "side");
        assert!(matches!(owner.state, TargetState::Steered { .. }));
        assert_eq!(owner.pid, Some(100), "the owner programs the namespace");
        assert_eq!(side.state, owner.state, "{reference}");
        assert_eq!(side.entries, owner.entries);
        assert_eq!(side.pid, None, "never programmed twice");
        assert_eq!(side.mac_on_network, None);
        assert_eq!(side.warp_pid, None);
        assert_eq!(side.shares_namespace_of.as_deref(), Some("app"));
        assert_eq!(
            side.sharing_note().as_deref(),
            Some("shares the namespace of app, which netwarp steers")
        );
    }
    // The same rules given explicitly (in another order) are the same.
    let world = World {
        containers: vec![
            warp(),
            target(&[("netwarp.rules", "198.51.100.0/24,203.0.113.0/24")]),
            sharing(
                "app",
                &[("netwarp.rules", "203.0.113.0/24, 198.51.100.0/24")],
            ),
        ],
    };
    let p = plan(&world, &settings("192.0.2.0/24"));
    assert_eq!(find(&p, "side").shares_namespace_of.as_deref(), Some("app"));
    // While the warp is down the owner's block serves both.
    let world = World {
        containers: vec![target(&[]), sharing("id-app", &[])],
    };
    let p = plan(&world, &settings("203.0.113.0/24"));
    let side = find(&p, "side");
    assert!(matches!(side.state, TargetState::Blocked(_)));
    assert_eq!(side.pid, None);
    assert_eq!(
        side.sharing_note().as_deref(),
        Some("shares the namespace of app, which netwarp blocks")
    );
}

#[test]
fn every_other_shared_namespace_is_refused() {
    let plain = container("plain", &[], &[("net", endpoint("172.20.0.9", None))]);
    let other_warp = container("warp-b", &[], &[("net", endpoint("172.20.0.8", None))]);
    let elsewhere = container(
        "elsewhere",
        &[("netwarp.target", "warp-b")],
        &[("net", endpoint("172.20.0.7", None))],
    );
    let mut host = target(&[]);
    host.name = "hosted".into();
    host.id = "id-hosted".into();
    host.network_mode = NetworkMode::Host;
    type Case<'a> = (Container, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (plain.clone(), vec![], "which is not a netwarp target"),
        (
            warp(),
            vec![],
            "shares the namespace of warp container warp-vpn",
        ),
        (
            elsewhere.clone(),
            vec![],
            "which has another warp or other rules",
        ),
        (
            target(&[]),
            vec![("netwarp.rules", "198.51.100.0/24")],
            "which has another warp or other rules",
        ),
        (
            target(&[]),
            vec![("netwarp.rules", "nonsense")],
            "which has another warp or other rules",
        ),
        (host, vec![], "which itself runs with --network host"),
    ];
    for (owner, labels, expected) in cases {
        let reference = owner.id.clone();
        let world = World {
            containers: vec![
                warp(),
                other_warp.clone(),
                owner,
                sharing(&reference, &labels),
            ],
        };
        let p = plan(&world, &settings("203.0.113.0/24"));
        let side = find(&p, "side");
        assert_untouched(side);
        let reason = refusal(side);
        assert!(reason.contains(expected), "{reason} (want {expected})");
        assert!(reason.starts_with("side "), "names the container: {reason}");
    }
    // A missing or stopped owner.
    let mut stopped = plain;
    stopped.running = false;
    for containers in [vec![warp()], vec![warp(), stopped]] {
        let mut containers = containers;
        containers.push(sharing("id-plain", &[]));
        let p = plan(&World { containers }, &settings("203.0.113.0/24"));
        let side = find(&p, "side");
        assert_untouched(side);
        assert!(
            refusal(side).contains("id-plain is not running"),
            "{}",
            refusal(side)
        );
    }
}

#[test]
fn a_host_network_warp_is_refused_and_its_targets_block() {
    for mode in [
        NetworkMode::Host,
        NetworkMode::NoNetwork,
        NetworkMode::Container("x".into()),
    ] {
        let w = with_mode(warp(), mode.clone());
        let world = World {
            containers: vec![w, target(&[])],
        };
        let t = only_target(&world, &settings("203.0.113.0/24"));
        let TargetState::Blocked(reason) = &t.state else {
            panic!("{mode:?}: {t:?}")
        };
        assert_eq!(
            *reason,
            BlockReason::WarpNetworkMode {
                warp: "warp-vpn".into(),
                mode: mode.clone()
            }
        );
        assert!(
            reason
                .to_string()
                .starts_with(&format!("warp container warp-vpn runs with --network {mode}, so netwarp refuses it as a warp")),
            "{reason}"
        );
        assert_eq!(t.warp_pid, None, "the warp's namespace is never entered");
        assert!(t.entries.iter().all(|e| e.action == Action::Block));
        assert_eq!(
            t.pid,
            Some(100),
            "the target's own namespace gets the block"
        );
    }
}

/// Two warps with a target each, a target of a warp that is missing, and
/// an unrelated container.
fn cached_world() -> World {
    let on = |ip: &str| [("net", endpoint(ip, None))];
    World {
        containers: vec![
            container("warp-a", &[], &on("172.20.0.2")),
            container("warp-b", &[], &on("172.20.0.3")),
            container("app-a", &[("netwarp.target", "warp-a")], &on("172.20.0.10")),
            container("app-b", &[("netwarp.target", "warp-b")], &on("172.20.0.11")),
            container("app-c", &[("netwarp.target", "warp-c")], &on("172.20.0.12")),
            container("other", &[], &on("172.20.0.20")),
        ],
    }
}

/// `before` changed into `after` (the containers of `changed`, by name,
/// as they were and as they are), planned with the cache of `before`'s plan.
fn replan(before: &World, after: &World, changed: &[&str]) -> (Plan, Plan) {
    let settings = settings("203.0.113.0/24");
    let observed = Observed::default();
    let mut cache = PlanCache::default();
    let first = plan_cached(before, &settings, &observed, &Changes::All, &mut cache);
    let mut changes = Changes::none();
    for c in (before.containers.iter()).chain(&after.containers) {
        if changed.contains(&c.name.as_str()) {
            changes.note(c);
        }
    }
    let second = plan_cached(after, &settings, &observed, &changes, &mut cache);
    assert_eq!(second, plan(after, &settings), "the cache changes no plan");
    (first, second)
}

fn shared(first: &Plan, second: &Plan, name: &str) -> bool {
    let find = |plan: &Plan| Arc::clone(plan.targets.iter().find(|t| t.name == name).unwrap());
    Arc::ptr_eq(&find(first), &find(second))
}

#[test]
fn a_cached_plan_is_reused_only_where_nothing_it_depends_on_changed() {
    let before = cached_world();
    // Nothing changed: every plan is the last one's.
    let (first, second) = replan(&before, &before, &[]);
    for name in ["app-a", "app-b", "app-c"] {
        assert!(shared(&first, &second, name), "{name}");
    }

    // warp-a moved to another address: its target is planned again.
    let mut after = cached_world();
    after.containers[0].networks = [("net".to_owned(), endpoint("172.20.0.9", None))].into();
    let (first, second) = replan(&before, &after, &["warp-a"]);
    assert!(!shared(&first, &second, "app-a"));
    assert!(shared(&first, &second, "app-b"));

    // A warp of the missing name appears: its target is steered now.
    let mut after = cached_world();
    (after.containers).push(container(
        "warp-c",
        &[],
        &[("net", endpoint("172.20.0.4", None))],
    ));
    let (_, second) = replan(&before, &after, &["warp-c"]);
    let app_c = second.targets.iter().find(|t| t.name == "app-c").unwrap();
    assert!(
        matches!(app_c.state, TargetState::Steered { .. }),
        "{app_c:?}"
    );

    // warp-b is gone (as it was is all a change knows of it).
    let mut after = cached_world();
    after.containers.remove(1);
    let (_, second) = replan(&before, &after, &["warp-b"]);
    let app_b = second.targets.iter().find(|t| t.name == "app-b").unwrap();
    assert!(matches!(app_b.state, TargetState::Blocked(_)), "{app_b:?}");

    // A target stopped: it is no longer a running target.
    let mut after = cached_world();
    after.containers[2].running = false;
    let (_, second) = replan(&before, &after, &["app-a"]);
    assert!(!second.targets.iter().any(|t| t.name == "app-a"));
}

#[test]
fn a_plan_equal_to_the_last_keeps_its_allocation_even_after_a_full_listing() {
    let settings = settings("203.0.113.0/24");
    let observed = Observed::default();
    let mut cache = PlanCache::default();
    let world = cached_world();
    let first = plan_cached(&world, &settings, &observed, &Changes::All, &mut cache);
    let second = plan_cached(&world, &settings, &observed, &Changes::All, &mut cache);
    assert_eq!(first, second);
    assert!(shared(&first, &second, "app-a"));
}

#[test]
fn new_settings_or_observations_plan_every_target_again() {
    let world = cached_world();
    let observed = Observed::default();
    let mut cache = PlanCache::default();
    let old = settings("203.0.113.0/24");
    plan_cached(&world, &old, &observed, &Changes::All, &mut cache);
    let new = settings("198.51.100.0/24");
    let replanned = plan_cached(&world, &new, &observed, &Changes::none(), &mut cache);
    assert_eq!(replanned, plan(&world, &new));
    let probing = Observed {
        failover: Failover {
            settled: Some(HashSet::new()),
            ..Failover::default()
        },
        ..Observed::default()
    };
    let replanned = plan_cached(&world, &new, &probing, &Changes::none(), &mut cache);
    assert_eq!(replanned, plan_observed(&world, &new, &probing));
}

/// The target on two networks with subnets: the warp's `net`
/// (172.20.0.0/16) and `side` (10.77.0.0/24).
fn full_tunnel_target(rules: &str) -> Container {
    let subnet = |mut e: Endpoint, len| {
        e.ipv4_prefix_len = Some(len);
        e
    };
    container(
        "app",
        &[("netwarp.target", "warp-vpn"), ("netwarp.rules", rules)],
        &[
            ("net", subnet(endpoint("172.20.0.3", None), 16)),
            ("side", subnet(endpoint("10.77.0.5", None), 24)),
        ],
    )
}

fn shown_entries(t: &TargetPlan) -> Vec<String> {
    (t.entries.iter())
        .map(|e| format!("{} {}", e.rule, e.action))
        .collect()
}

#[test]
fn a_full_tunnel_leaves_the_targets_own_networks_alone() {
    let world = World {
        containers: vec![warp(), full_tunnel_target("0.0.0.0/0")],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    assert_eq!(
        shown_entries(&t),
        [
            "0.0.0.0/0 via 172.20.0.2",
            "direct 10.77.0.0/24 direct",
            "direct 172.20.0.0/16 direct"
        ]
    );
    let excluded: Vec<String> = t.excluded.iter().map(ToString::to_string).collect();
    assert_eq!(excluded, ["10.77.0.0/24", "172.20.0.0/16"]);

    // A narrower rule leaves the networks out of nothing: no exclusions.
    let world = World {
        containers: vec![warp(), full_tunnel_target("203.0.113.0/24")],
    };
    assert!(
        only_target(&world, &settings("192.0.2.0/24"))
            .excluded
            .is_empty()
    );

    // Turned off, the full tunnel takes the networks too.
    let mut off = settings("192.0.2.0/24");
    off.exclude_own_networks = false;
    let world = World {
        containers: vec![warp(), full_tunnel_target("0.0.0.0/0")],
    };
    assert_eq!(
        shown_entries(&only_target(&world, &off)),
        ["0.0.0.0/0 via 172.20.0.2"]
    );
}

#[test]
fn rule_actions_and_the_global_rules_in_a_label() {
    let world = World {
        containers: vec![
            warp(),
            full_tunnel_target("global; direct 198.51.100.0/24; block 0.0.0.0/0,tcp:25"),
        ],
    };
    let mut settings = settings("0.0.0.0/0");
    settings.exclude_own_networks = false;
    let t = only_target(&world, &settings);
    assert_eq!(
        shown_entries(&t),
        [
            "0.0.0.0/0 via 172.20.0.2",
            "block 0.0.0.0/0 tcp:25 deny",
            "direct 198.51.100.0/24 direct"
        ]
    );
}

#[test]
fn a_down_warp_blocks_only_what_goes_through_it() {
    let label = "0.0.0.0/0; direct 198.51.100.0/24; block 0.0.0.0/0,tcp:25";
    let world = World {
        containers: vec![full_tunnel_target(label)],
    };
    let mut settings = settings("192.0.2.0/24");
    settings.exclude_own_networks = false;
    let t = only_target(&world, &settings);
    assert!(matches!(t.state, TargetState::Blocked(_)), "{:?}", t.state);
    assert_eq!(
        shown_entries(&t),
        [
            "0.0.0.0/0 block",
            "block 0.0.0.0/0 tcp:25 deny",
            "direct 198.51.100.0/24 direct"
        ]
    );
    // Bypassing, the via rule takes the normal path; the block rule holds,
    // and the exclusion still carves from it (the longer prefix wins).
    settings.on_warp_down = OnWarpDown::Bypass;
    let t = only_target(&world, &settings);
    assert_eq!(
        shown_entries(&t),
        [
            "block 0.0.0.0/0 tcp:25 deny",
            "direct 198.51.100.0/24 direct"
        ]
    );
}

#[test]
fn a_malformed_policy_label_fails_closed_naming_the_label() {
    let world = World {
        containers: vec![warp(), full_tunnel_target("0.0.0.0/0; steer 10.0.0.0/8")],
    };
    let t = only_target(&world, &settings("203.0.113.0/24"));
    let TargetState::Blocked(reason) = &t.state else {
        panic!("{:?}", t.state);
    };
    let message = reason.to_string();
    assert!(message.contains("netwarp.rules"), "{message}");
    assert!(message.contains("unknown action `steer`"), "{message}");
    // On the global rules meanwhile.
    assert_eq!(shown_entries(&t), ["203.0.113.0/24 block"]);
}
