//! End-to-end steering on real containers with a real daemon.
//!
//! The "remote" destination is 203.0.113.1 (TEST-NET-3), owned by the warp
//! container's loopback, so steered traffic ends inside the test. Networks
//! are `--internal`; anything leaking towards the host is dropped and
//! counted by a DOCKER-USER rule (the leak sink).
//!
//! The dataplane comes from NETWARP_TEST_DATAPLANE (default `routes`), so
//! the same suite can run against every dataplane.

use std::time::Duration;

use netwarp_tests::{
    command::{output, run, run_quietly},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    skip, skip_if,
    steering::{
        GLOBAL_RULES, REMOTE, connect_error, full_routing, is_netwarp_rule, netwarp_entries,
        owned_state, reaches, start_target, start_warp,
    },
};

const CONVERGE: Duration = Duration::from_secs(15);

fn mode() -> String {
    std::env::var("NETWARP_TEST_DATAPLANE").unwrap_or_else(|_| "routes".into())
}

/// What the eBPF dataplane has programmed for a target: the programs
/// attached through TCX to its host veth (one from-container program, and
/// a to-container one only under an ingress cap; more means something was
/// attached twice) and the daemon's pinned links.
fn ebpf_state(target: &Container, daemon: &Daemon) -> String {
    let (_, veth) = target.host_veth().expect("host veth");
    let programs = netwarp_tests::tcx::tcx_programs(&veth);
    let mut lines = Vec::new();
    let xdp = netwarp_tests::tcx::xdp_program(&veth);
    lines.push(format!(
        "Xdp: {}",
        xdp.map(|p| netwarp_tests::tcx::program_name(&p))
            .unwrap_or_default()
    ));
    for direction in ["Ingress", "Egress"] {
        let names: Vec<String> = programs
            .iter()
            .filter(|(d, _)| *d == direction)
            .map(|(_, program)| netwarp_tests::tcx::program_name(program))
            .collect();
        lines.push(format!("{direction}: {}", names.join(",")));
    }
    let mut pins: Vec<String> = std::fs::read_dir(daemon.pin_dir().join("links"))
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    pins.sort();
    lines.push(format!("pins: {}", pins.join(",")));
    lines.join("\n")
}

/// What the active dataplane has programmed for `target`.
fn programmed_state(target: &Container, daemon: &Daemon) -> String {
    match mode().as_str() {
        "routes" => owned_state(target),
        _ => ebpf_state(target, daemon),
    }
}

/// True when `target`'s matching traffic is refused at once: both
/// dataplanes install a prohibit route for blocked prefixes (EACCES), and
/// the eBPF one also drops at the veth.
fn is_blocked(target: &Container) -> bool {
    connect_error(target, 8080).contains("Permission denied")
}

fn start_gateway(labels: &TestLabels, network: &DockerNetwork, extra: &[&str]) -> Container {
    start_warp(&warp_name(labels), network, extra)
}

/// Counts packets that try to leave the bridge towards 203.0.113.0/24, and
/// drops them: the host's default path.
struct LeakSink {
    rule: Vec<String>,
    comment: String,
}

impl LeakSink {
    fn install(network: &DockerNetwork) -> Self {
        let bridge = network.bridge().expect("bridge name");
        let comment = netwarp_tests::unique_name("leak");
        let rule: Vec<String> = [
            "DOCKER-USER",
            "-i",
            &bridge,
            "!",
            "-o",
            &bridge,
            "-d",
            "203.0.113.0/24",
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DROP",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut args = vec!["-I"];
        args.extend(rule.iter().map(String::as_str));
        run("iptables", &args).expect("installing the leak sink");
        Self { rule, comment }
    }

    fn packets(&self) -> u64 {
        let listing =
            run("iptables", &["-L", "DOCKER-USER", "-v", "-x", "-n"]).expect("iptables -L");
        listing
            .lines()
            .find(|l| l.contains(&self.comment))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("the leak sink rule is listed")
    }
}

impl Drop for LeakSink {
    fn drop(&mut self) {
        let mut args = vec!["-D"];
        args.extend(self.rule.iter().map(String::as_str));
        run_quietly("iptables", &args);
    }
}

#[test]
fn steers_a_target_and_leaves_others_alone() {
    let test = "steers_a_target_and_leaves_others_alone";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_gateway(&labels, &network, &[]);
    let target = start_target("nwt", &network, &[labels.target_label(&warp_name(&labels))]);
    let plain = start_target("nwu", &network, &[]);
    let plain_before = full_routing(&plain);

    // netwarp has never run: nothing is steered.
    assert!(
        !reaches(&target, 8080),
        "reached the warp before netwarp ran"
    );

    let daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "the target never reached {REMOTE} through the warp; state:\n{}",
        owned_state(&target)
    );
    if mode() == "ebpf" {
        // The hook the run asked for steers: XDP first, with tc behind it.
        let xdp = netwarp_tests::daemon::test_ebpf_hook().as_deref() == Some("xdp");
        let state = ebpf_state(&target, &daemon);
        assert_eq!(
            state.lines().next(),
            Some(if xdp { "Xdp: netwarp_xdp_fro" } else { "Xdp: " }),
            "{state}"
        );
        assert!(state.contains("Ingress: netwarp_tc_from"), "{state}");
    }
    assert!(
        !reaches(&plain, 8080),
        "an unlabelled container was steered"
    );
    assert_eq!(
        full_routing(&plain),
        plain_before,
        "an unlabelled container was modified"
    );
    drop(warp);
}

fn warp_name(labels: &TestLabels) -> String {
    labels.warp_name("gw")
}

#[test]
fn both_start_orders_converge() {
    let test = "both_start_orders_converge";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let _daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");

    // Target first, then its warp.
    let early = start_target("nwt", &network, &[labels.target_label(&warp_name(&labels))]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!reaches(&early, 8080));
    let warp = start_gateway(&labels, &network, &[]);
    assert!(
        eventually(CONVERGE, || reaches(&early, 8080)),
        "target-first never converged"
    );

    // Warp already up, then a new target.
    let late = start_target("nwt", &network, &[labels.target_label(&warp_name(&labels))]);
    assert!(
        eventually(CONVERGE, || reaches(&late, 8080)),
        "warp-first never converged"
    );
    drop(warp);
}

#[test]
fn a_down_warp_fails_closed_and_a_recreated_one_is_followed() {
    let test = "a_down_warp_fails_closed_and_a_recreated_one_is_followed";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let sink = LeakSink::install(&network);
    let warp = start_gateway(&labels, &network, &[]);
    let old_ip = warp.ipv4(&network).expect("warp ip");
    let target = start_target("nwt", &network, &[labels.target_label(&warp_name(&labels))]);
    let daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "never steered"
    );
    // Probes sent before netwarp programmed the target took the default
    // path; from here on, nothing may.
    let baseline = sink.packets();

    run("docker", &["stop", "--time", "0", warp.name()]).expect("stopping the warp");
    assert!(
        eventually(CONVERGE, || is_blocked(&target)),
        "matching traffic was not refused while the warp was down: {}\nstate:\n{}",
        connect_error(&target, 8080),
        owned_state(&target)
    );
    // A bounded burst while down: none of it may reach the host's path.
    for _ in 0..5 {
        let _ = target.exec(&["sh", "-c", &format!("nc -w 1 {REMOTE} 8080 </dev/null")]);
    }
    assert_eq!(
        sink.packets() - baseline,
        0,
        "packets leaked towards the default path"
    );

    // Recreate the warp under the same name with a different address: a
    // filler takes the old one first.
    drop(warp);
    let filler = start_target("nwf", &network, &[]);
    let warp = start_gateway(&labels, &network, &[]);
    let new_ip = warp.ipv4(&network).expect("warp ip");
    assert_ne!(old_ip, new_ip, "the recreated warp kept its address");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "traffic did not follow the recreated warp; state:\n{}",
        owned_state(&target)
    );
    if mode() == "routes" {
        assert!(
            owned_state(&target).contains(&new_ip),
            "{}",
            owned_state(&target)
        );
    }
    assert_eq!(
        sink.packets() - baseline,
        0,
        "packets leaked towards the default path"
    );
    daemon
        .wait_for_log("is not running", Duration::from_secs(1))
        .expect("the block was logged with its reason");
    drop(filler);
}

#[test]
fn ambiguous_networks_block_until_the_network_label_chooses() {
    let test = "ambiguous_networks_block_until_the_network_label_chooses";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let front = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let back = DockerNetwork::create_internal("nwb").expect("second network");
    let warp = start_gateway(&labels, &front, &[]);
    run("docker", &["network", "connect", back.name(), warp.name()]).expect("second network");
    let target = start_target("nwt", &front, &[labels.target_label(&warp_name(&labels))]);
    let daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");

    daemon
        .wait_for_log("is on several networks", CONVERGE)
        .expect("the ambiguity was reported");
    let log = daemon.log();
    assert!(
        log.contains(front.name()) && log.contains(back.name()),
        "both networks are named"
    );
    assert!(
        eventually(CONVERGE, || is_blocked(&target)),
        "the pair is not blocked"
    );

    drop(warp);
    let network_label = labels.network_label(front.name());
    let warp = start_gateway(&labels, &front, &["--label", &network_label]);
    run("docker", &["network", "connect", back.name(), warp.name()]).expect("second network");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "the label did not resolve it"
    );
    drop(warp);
}

#[test]
fn protocol_and_port_rules_steer_only_what_they_select() {
    let test = "protocol_and_port_rules_steer_only_what_they_select";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_gateway(&labels, &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&warp_name(&labels)),
            labels.rules_label("203.0.113.0/24,tcp:8080"),
        ],
    );
    let _daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "tcp:8080 was not steered"
    );
    // The warp serves 9090 too, so reaching it would prove it was steered.
    assert!(
        !reaches(&target, 9090),
        "tcp:9090 was steered although no rule selects it"
    );
    drop(warp);
}

/// A block rule with a port inside a steered prefix, on real containers:
/// the port reaches nothing and nothing of it leaves; the target's other
/// ports are still steered. In eBPF mode its drops are counted under the
/// rule's own reason.
#[test]
fn a_block_rule_inside_a_steered_prefix_drops_only_its_port() {
    let test = "a_block_rule_inside_a_steered_prefix_drops_only_its_port";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let sink = LeakSink::install(&network);
    let warp = start_gateway(&labels, &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&warp_name(&labels)),
            labels.rules_label("203.0.113.0/24; block 203.0.113.0/24,tcp:9090"),
        ],
    );
    let daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "the target's other ports were not steered"
    );
    let baseline = sink.packets();
    assert!(!reaches(&target, 9090), "the blocked port reached the warp");
    assert_eq!(
        sink.packets() - baseline,
        0,
        "the blocked port leaked towards the default path"
    );
    if mode() == "ebpf" {
        let status = status_json(&daemon).expect("status");
        let listed = status_target(&status, target.name()).expect("the target in status");
        let rule_drops = listed["counters"]["dropped"]["rule"]["packets"].as_u64();
        assert!(
            rule_drops.is_some_and(|p| p > 0),
            "the block rule's drops are not counted under their reason: {listed}"
        );
    }
    drop(warp);
}

/// A `direct` exclusion inside a steered prefix, on real containers: the
/// excluded address takes the target's own path (the leak sink counts it
/// there) while the rest of the prefix is steered.
#[test]
fn an_exclusion_inside_a_steered_prefix_takes_the_direct_path() {
    let test = "an_exclusion_inside_a_steered_prefix_takes_the_direct_path";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let sink = LeakSink::install(&network);
    let warp = start_gateway(&labels, &network, &[]);
    // A second address of the warp's: in the steered prefix, not excluded.
    const SECOND: &str = "203.0.113.2";
    warp.exec(&["ip", "addr", "add", &format!("{SECOND}/32"), "dev", "lo"])
        .expect("a second remote address on the warp");
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&warp_name(&labels)),
            labels.rules_label(&format!("203.0.113.0/24; direct {REMOTE}/32")),
        ],
    );
    let _daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    let reaches_second = || {
        (target.exec(&["sh", "-c", &format!("sleep 1 | nc -w 2 {SECOND} 8080")]))
            .is_ok_and(|out| out.contains("hello"))
    };
    assert!(
        eventually(CONVERGE, reaches_second),
        "the rest of the prefix was not steered"
    );
    let baseline = sink.packets();
    assert!(
        !reaches(&target, 8080),
        "the excluded address was steered to the warp"
    );
    assert!(
        sink.packets() > baseline,
        "the excluded traffic did not take the target's own path"
    );
    drop(warp);
}

#[test]
fn restarts_adopt_the_state_without_duplicates() {
    let test = "restarts_adopt_the_state_without_duplicates";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_gateway(&labels, &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[
            labels.target_label(&warp_name(&labels)),
            labels.rules_label("203.0.113.0/24,tcp:8080,udp:53"),
        ],
    );
    let mut daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(eventually(CONVERGE, || reaches(&target, 8080)));
    let before = programmed_state(&target, &daemon);
    if mode() == "routes" {
        // One rule per selector group (tcp:8080, udp:53), in two tables.
        let rules: Vec<&str> = before.lines().filter(|l| is_netwarp_rule(l)).collect();
        assert_eq!(rules.len(), 2, "{before}");
        assert!(rules.iter().all(|r| !r.contains(" to ")), "{before}");
    } else {
        // TCX program names are truncated to 15 characters by the kernel.
        assert!(
            before.contains("Ingress: netwarp_tc_from")
                && !before.contains("Ingress: netwarp_tc_from_c,"),
            "{before}"
        );
        assert_eq!(
            before.matches("netwarp_tc").count(),
            1,
            "uncapped: the from-container program only: {before}"
        );
    }
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        daemon.stop(signal).expect("stopping the daemon");
        // Stopped: the state stays and still steers.
        assert_eq!(
            programmed_state(&target, &daemon),
            before,
            "state changed while the daemon was stopped"
        );
        assert!(reaches(&target, 8080), "steering stopped with the daemon");
        daemon.restart(libc::SIGKILL).expect("restarting");
        std::thread::sleep(Duration::from_secs(2));
        assert!(reaches(&target, 8080));
        assert_eq!(
            programmed_state(&target, &daemon),
            before,
            "state differs after restart (signal {signal})"
        );
    }
    drop(warp);
}

#[test]
fn malformed_labels_warn_and_others_are_still_served() {
    let test = "malformed_labels_warn_and_others_are_still_served";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_gateway(&labels, &network, &[]);
    let warp_label = labels.target_label(&warp_name(&labels));
    let bad_values = [
        ("bad-cidr", labels.rules_label("203.0.113.0/33")),
        (
            "bad-range",
            labels.rules_label("203.0.113.0/24,tcp:9000-80"),
        ),
        ("bad-proto", labels.rules_label("203.0.113.0/24,sctp:80")),
    ];
    let mut bad = Vec::new();
    for (kind, rules) in &bad_values {
        bad.push((
            kind,
            start_target("nwx", &network, &[warp_label.clone(), rules.clone()]),
        ));
    }
    let empty = start_target("nwx", &network, &[format!("{}=", labels.target)]);
    let good = start_target("nwt", &network, std::slice::from_ref(&warp_label));
    let daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");

    assert!(
        eventually(CONVERGE, || reaches(&good, 8080)),
        "a good target was not served"
    );
    for (kind, container) in &bad {
        daemon
            .wait_for_log(&format!("container={}", container.name()), CONVERGE)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(
            !reaches(container, 8080),
            "{kind}: a malformed target was steered"
        );
    }
    let log = daemon.log();
    for needle in [
        "prefix length 33 is longer than 32",
        "port range `9000-80` is empty",
        "unknown protocol `sctp`",
        &labels.rules,
        &format!("label {} is empty", labels.target),
    ] {
        assert!(
            log.contains(needle),
            "the log does not mention `{needle}`:\n{log}"
        );
    }
    assert!(
        log.contains(empty.name()),
        "the empty-label container is not named"
    );
    drop(warp);
}

#[test]
fn ipv6_rules_steer_and_fail_closed() {
    let test = "ipv6_rules_steer_and_fail_closed";
    skip_if!(test, skip::missing_docker());
    const REMOTE_V6: &str = "2001:db8::1";
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_ipv6("nw6").expect("an IPv6 network");
    let ipv6 = ["--sysctl", "net.ipv6.conf.all.disable_ipv6=0"];
    let warp = start_gateway(&labels, &network, &ipv6);
    warp.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{REMOTE_V6}/128"),
        "dev",
        "lo",
    ])
    .expect("the warp's IPv6 address");
    let mut target_args: Vec<String> = ipv6.iter().map(|s| s.to_string()).collect();
    for label in [
        labels.target_label(&warp_name(&labels)),
        labels.rules_label("2001:db8::/32"),
    ] {
        target_args.push("--label".into());
        target_args.push(label);
    }
    let args: Vec<&str> = target_args.iter().map(String::as_str).collect();
    let target = Container::run("nwt", &network, &args, &["sleep", "600"]).expect("target");
    let connect = format!("sleep 1 | nc -w 2 {REMOTE_V6} 8080");
    let reaches_v6 = || {
        target
            .exec(&["sh", "-c", &connect])
            .is_ok_and(|o| o.contains("hello"))
    };
    assert!(!reaches_v6(), "reached {REMOTE_V6} before netwarp ran");

    let _daemon = Daemon::start(&labels, &mode(), GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, reaches_v6),
        "IPv6 was not steered; state:\n{}",
        netwarp_entries(&target, "-6")
            .unwrap_or_default()
            .1
            .join("\n")
    );
    run("docker", &["stop", "--time", "0", warp.name()]).expect("stopping the warp");
    let refused = || {
        let out = output("docker", &["exec", target.name(), "sh", "-c", &connect]).expect("exec");
        String::from_utf8_lossy(&out.stderr).contains("Permission denied")
    };
    assert!(
        eventually(CONVERGE, refused),
        "IPv6 was not blocked while the warp was down"
    );
    drop(warp);
}
