//! Table-driven bad input through netwarp's public API, each case with
//! its exact message: label values on containers (rules, target, network
//! and cap labels, through the planner) and config keys the unit tests in
//! netwarp/src/config/tests.rs do not cover. No privileges needed.

use std::path::Path;

use netwarp::{
    config::{Config, Layer},
    model::{Container, Endpoint, Health, World, parse_rules},
    plan::{Action, CapSettings, OnWarpDown, PlanSettings, TargetState, plan},
};

fn settings() -> PlanSettings {
    PlanSettings {
        warp_name_pattern: "warp-*".into(),
        target_label: "netwarp.target".into(),
        network_label: "netwarp.network".into(),
        rules_label: "netwarp.rules".into(),
        global_rules: parse_rules("192.0.2.0/24").expect("rules"),
        on_warp_down: OnWarpDown::Block,
        caps: CapSettings::default(),
        max_prefixes_per_target: 4096,
        probe_label: "netwarp.probe".into(),
        exclude_own_networks: true,
        dns: netwarp::plan::DnsPolicy::Follow,
        dns_label: "netwarp.dns".into(),
        allow_label: "netwarp.allow".into(),
        deny_label: "netwarp.deny".into(),
        rule_capacity: None,
    }
}

fn container(name: &str, labels: &[(&str, &str)], networks: &[(&str, &str)]) -> Container {
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
            .map(|(network, ip)| {
                (
                    network.to_string(),
                    Endpoint {
                        ipv4: Some(ip.parse().expect("an address")),
                        ipv6: None,
                        mac: Some(format!("02:42:{ip}")),
                        network_id: None,
                        ..Endpoint::default()
                    },
                )
            })
            .collect(),
        ..Container::default()
    }
}

/// The block reason of the single target in a world of `warp` and `app`.
fn blocked_reason(warp: Container, app: Container) -> String {
    let world = World {
        containers: vec![warp, app],
    };
    let plan = plan(&world, &settings());
    assert_eq!(plan.targets.len(), 1, "{plan:?}");
    let target = &plan.targets[0];
    match &target.state {
        TargetState::Blocked(reason) => {
            // Fail closed: every entry blocks.
            assert!(
                target.entries.iter().all(|e| e.action == Action::Block),
                "{target:?}"
            );
            reason.to_string()
        }
        other => format!("accepted: {other:?}"),
    }
}

#[test]
fn malformed_rules_labels_block_and_say_why() {
    let cases = [
        ("", "label netwarp.rules=`` is invalid: empty item in ``"),
        (
            "tcp:443",
            "label netwarp.rules=`tcp:443` is invalid: no destination CIDR in `tcp:443`; list at least one, e.g. 203.0.113.0/24,tcp:443",
        ),
        (
            "203.0.113.0/24,,tcp:443",
            "label netwarp.rules=`203.0.113.0/24,,tcp:443` is invalid: empty item in `203.0.113.0/24,,tcp:443`",
        ),
        (
            "203.0.113.7/24",
            "label netwarp.rules=`203.0.113.7/24` is invalid: `203.0.113.7/24` has host bits set; did you mean 203.0.113.0/24?",
        ),
        (
            "2001:db8::/129",
            "label netwarp.rules=`2001:db8::/129` is invalid: `2001:db8::/129`: prefix length 129 is longer than 128",
        ),
        (
            "example.com/24",
            "label netwarp.rules=`example.com/24` is invalid: `example.com/24` is not a CIDR (expected e.g. 203.0.113.0/24 or 2001:db8::/32)",
        ),
        (
            "203.0.113.0/24,tcp:0",
            "label netwarp.rules=`203.0.113.0/24,tcp:0` is invalid: port 0 is not a valid destination port in `0`",
        ),
        (
            "203.0.113.0/24,tcp:70000",
            "label netwarp.rules=`203.0.113.0/24,tcp:70000` is invalid: `70000` is not a port or port range (expected e.g. 443 or 5000-5100)",
        ),
        (
            "203.0.113.0/24,tcp:80-",
            "label netwarp.rules=`203.0.113.0/24,tcp:80-` is invalid: `80-` is not a port or port range (expected e.g. 443 or 5000-5100)",
        ),
        (
            "203.0.113.0/24,icmp:8",
            "label netwarp.rules=`203.0.113.0/24,icmp:8` is invalid: icmp has no ports: `icmp:8`",
        ),
    ];
    let mut wrong = Vec::new();
    for (value, message) in cases {
        let warp = container("warp-vpn", &[], &[("net", "172.20.0.2")]);
        let app = container(
            "app",
            &[("netwarp.target", "warp-vpn"), ("netwarp.rules", value)],
            &[("net", "172.20.0.3")],
        );
        let reason = blocked_reason(warp, app);
        if reason != message {
            wrong.push(format!(
                "rules `{value}`:\n  got  {reason}\n  want {message}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn malformed_target_and_network_labels_block_and_say_why() {
    type Labels<'a> = &'a [(&'a str, &'a str)];
    // (warp labels, target labels, message)
    let cases: [(Labels, Labels, &str); 4] = [
        // The target label is empty.
        (
            &[],
            &[("netwarp.target", "")],
            "label netwarp.target is empty; set it to the warp container's name",
        ),
        // It names a container outside the warp pattern.
        (
            &[],
            &[("netwarp.target", "vpn")],
            "warp container vpn does not exist",
        ),
        // The network label names a network the warp is not on.
        (
            &[("netwarp.network", "elsewhere")],
            &[("netwarp.target", "warp-vpn")],
            "label netwarp.network=elsewhere on warp-vpn names a network it is not attached to",
        ),
        // The network label is empty.
        (
            &[("netwarp.network", "")],
            &[("netwarp.target", "warp-vpn")],
            "label netwarp.network= on warp-vpn names a network it is not attached to",
        ),
    ];
    let mut wrong = Vec::new();
    for (warp_labels, app_labels, message) in cases {
        let warp = container("warp-vpn", warp_labels, &[("net", "172.20.0.2")]);
        let app = container("app", app_labels, &[("net", "172.20.0.3")]);
        let reason = blocked_reason(warp, app);
        if reason != message {
            wrong.push(format!(
                "warp {warp_labels:?}, target {app_labels:?}:\n  got  {reason}\n  want {message}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn malformed_cap_labels_name_the_label_and_the_reason() {
    let cases = [
        (
            "netwarp.egress-rate",
            "0mbit",
            "label netwarp.egress-rate=`0mbit` is invalid: rate `0mbit` is outside 8000..=400000000000 bit/s",
        ),
        (
            "netwarp.egress-rate",
            "-5mbit",
            "label netwarp.egress-rate=`-5mbit` is invalid: `-5mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "netwarp.egress-rate",
            "1.5.5mbit",
            "label netwarp.egress-rate=`1.5.5mbit` is invalid: `1.5.5mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "netwarp.egress-rate",
            "mbit",
            "label netwarp.egress-rate=`mbit` is invalid: `mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "netwarp.egress-rate",
            "5 mbit",
            "label netwarp.egress-rate=`5 mbit` is invalid: `5 mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "netwarp.ingress-rate",
            "99999gbit",
            "label netwarp.ingress-rate=`99999gbit` is invalid: rate `99999gbit` is outside 8000..=400000000000 bit/s",
        ),
        (
            "netwarp.ingress-rate",
            "1.0000000001mbit",
            "label netwarp.ingress-rate=`1.0000000001mbit` is invalid: `1.0000000001mbit` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "netwarp.burst",
            "2gb",
            "label netwarp.burst=`2gb` is invalid: burst `2gb` is outside 1514..=1073741824 bytes",
        ),
        (
            "netwarp.burst",
            "1.5",
            "label netwarp.burst=`1.5` is invalid: burst `1.5` is outside 1514..=1073741824 bytes",
        ),
        (
            "netwarp.burst",
            "",
            "label netwarp.burst=`` is invalid: `` is not a size (expected e.g. 32kb, 1mb or 20000 bytes)",
        ),
    ];
    let mut wrong = Vec::new();
    for (label, value, message) in cases {
        let app = container(
            "app",
            &[("netwarp.target", "warp-vpn"), (label, value)],
            &[("net", "172.20.0.3")],
        );
        let warp = container("warp-vpn", &[], &[("net", "172.20.0.2")]);
        let world = World {
            containers: vec![warp, app],
        };
        let caps = netwarp::plan::plan(&world, &settings()).caps;
        let problems: Vec<String> = caps.iter().flat_map(|c| c.problems.clone()).collect();
        if problems != [message.to_owned()] {
            wrong.push(format!(
                "{label}=`{value}`:\n  got  {problems:?}\n  want {message}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn config_keys_without_unit_coverage_give_exact_errors() {
    let cases = [
        (
            "network_preference_label = \"\"\n",
            "config file /etc/netwarp.toml: key `network_preference_label`: must not be empty",
        ),
        (
            "rules_label = \"\"\n",
            "config file /etc/netwarp.toml: key `rules_label`: must not be empty",
        ),
        (
            "[rate_limits]\ningress_label = \"\"\n",
            "config file /etc/netwarp.toml: key `rate_limits.ingress_label`: must not be empty",
        ),
        (
            "[rate_limits]\nburst_label = \"\"\n",
            "config file /etc/netwarp.toml: key `rate_limits.burst_label`: must not be empty",
        ),
        (
            "[dataplane]\nbpf_pin_dir = \"netwarp\"\n",
            "config file /etc/netwarp.toml: key `dataplane.bpf_pin_dir`: `netwarp` is not a directory under /sys/fs/bpf/",
        ),
        (
            "[docker]\napi_version = \"latest\"\n",
            "config file /etc/netwarp.toml: key `docker.api_version`: `latest` is not a version such as 1.41, or `auto`",
        ),
        (
            "[dataplane]\nresync_interval_secs = 3601\n",
            "config file /etc/netwarp.toml: key `dataplane.resync_interval_secs`: 3601 is outside 1..=3600 seconds",
        ),
        (
            "[dataplane]\nresync_interval_secs = -1\n",
            "config file /etc/netwarp.toml: key `dataplane.resync_interval_secs`: -1 is negative",
        ),
        (
            "[rate_limits]\ndefault_egress = \"0kbit\"\n",
            "config file /etc/netwarp.toml: key `rate_limits.default_egress`: rate `0kbit` is outside 8000..=400000000000 bit/s",
        ),
        (
            "[rate_limits]\ndefault_burst = \"100\"\n",
            "config file /etc/netwarp.toml: key `rate_limits.default_burst`: burst `100` is outside 1514..=1073741824 bytes",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:99999\"\n",
            "config file /etc/netwarp.toml: key `metrics.listen`: `127.0.0.1:99999` is not an address:port such as 127.0.0.1:9477, nor `off`",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nprotocol = \"icmp\"\nport_range = \"8\"\n",
            "config file /etc/netwarp.toml: key `routing_rules[0]`: icmp has no ports: `icmp:8`",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nport_range = \"443\"\n",
            "config file /etc/netwarp.toml: key `routing_rules[0]`: port range `443` needs a protocol: set protocol to tcp or udp",
        ),
        (
            "[unknown_section]\nkey = 1\n",
            "config file /etc/netwarp.toml: unknown key `unknown_section`; run `netwarp check-config --keys` to list the keys",
        ),
        (
            "on_warp_down = true\n",
            "config file /etc/netwarp.toml: key `on_warp_down`: expected a string, found boolean",
        ),
    ];
    let path = Path::new("/etc/netwarp.toml");
    let mut wrong = Vec::new();
    for (toml, message) in cases {
        let got = Layer::from_toml(toml, path)
            .and_then(|layer| Config::resolve(&[layer]))
            .map(|_| "accepted".to_owned())
            .unwrap_or_else(|e| e.to_string());
        if got != message {
            wrong.push(format!("{toml:?}:\n  got  {got}\n  want {message}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
