use std::path::Path;

use super::*;

fn file(text: &str) -> Layer {
    Layer::from_toml(text, Path::new("/etc/netwarp.toml")).unwrap()
}

fn resolve(layers: &[Layer]) -> Result<Config, String> {
    Config::resolve(layers).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_documented_values() {
    let config = resolve(&[]).unwrap();
    assert_eq!(
        config.docker,
        DockerConnection::Unix("/var/run/docker.sock".into())
    );
    assert_eq!(config.warp_name_pattern, "warp-*");
    assert_eq!(config.target_label, "netwarp.target");
    assert_eq!(config.network_label, "netwarp.network");
    assert_eq!(config.rules_label, "netwarp.rules");
    assert_eq!(config.on_warp_down, OnWarpDown::Block);
    assert_eq!(config.dataplane, DataplaneMode::Auto);
    assert_eq!(config.docker_api_version, None);
    assert_eq!(config.metrics_listen.unwrap().to_string(), "127.0.0.1:9477");
    assert_eq!(
        config.control_socket,
        std::path::Path::new("/run/netwarp/netwarp.sock")
    );
    assert!(config.routing_rules.is_empty());
    assert_eq!(config.caps, CapSettings::default());
    assert_eq!(config.max_prefixes_per_target, 4096);
    assert_eq!(config.ebpf_rules_capacity, 262_144);
    assert!(config.ebpf_peer_redirect);
    assert_eq!(config.ebpf_from_container_hook, FromContainerHook::Tc);
    assert!(
        config
            .effective
            .values()
            .all(|(_, o)| *o == Origin::Default)
    );
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let toml = file(
        "warp_container_name_pattern = \"vpn-*\"\non_warp_down = \"bypass\"\n[logging]\nlevel = \"debug\"\n",
    );
    let env = Layer::from_env([
        (
            "NETWARP_WARP_CONTAINER_NAME_PATTERN".to_string(),
            "gw-*".to_string(),
        ),
        ("NETWARP_LOGGING_LEVEL".to_string(), "warn".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ]);
    let mut flags = Layer::default();
    flags.set(
        "logging.level",
        "trace".into(),
        Origin::Flag("--log-level".into()),
    );
    let config = resolve(&[flags, env, toml]).unwrap();
    assert_eq!(config.log_level, "trace");
    assert_eq!(config.warp_name_pattern, "gw-*");
    assert_eq!(config.on_warp_down, OnWarpDown::Bypass);
    assert_eq!(config.dataplane, DataplaneMode::Auto);
    let origin = |k: &str| config.effective[k].1.to_string();
    assert_eq!(origin("logging.level"), "command-line flag --log-level");
    assert_eq!(
        origin("warp_container_name_pattern"),
        "environment variable NETWARP_WARP_CONTAINER_NAME_PATTERN"
    );
    assert_eq!(origin("on_warp_down"), "config file /etc/netwarp.toml");
    assert_eq!(origin("dataplane.mode"), "default");
}

#[test]
fn routing_rules_come_from_tables() {
    let config = resolve(&[file(
        r#"
[[routing_rules]]
destination = "203.0.113.0/24"
protocol = "tcp"
port_range = "443"

[[routing_rules]]
destination = "2001:db8::/32"

[[routing_rules]]
destination = "198.51.100.0/24"
protocol = "udp"
port_range = 53
"#,
    )])
    .unwrap();
    let rules: Vec<String> = config
        .routing_rules
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rules,
        [
            "198.51.100.0/24 udp:53",
            "203.0.113.0/24 tcp:443",
            "2001:db8::/32"
        ]
    );
}

#[test]
fn routing_rules_from_the_environment_use_the_label_syntax() {
    let env = Layer::from_env([(
        "NETWARP_ROUTING_RULES".to_string(),
        "192.0.2.0/24,tcp:80".to_string(),
    )]);
    let config = resolve(&[env]).unwrap();
    assert_eq!(config.routing_rules.len(), 1);
}

#[test]
fn tls_and_tcp_connections() {
    let config = resolve(&[file(
        "docker_connection_method = \"tls\"\n[docker]\nsocket = \"tcp://10.0.0.1:2376\"\ntls_ca = \"/c/ca.pem\"\ntls_cert = \"/c/cert.pem\"\ntls_key = \"/c/key.pem\"\napi_version = \"1.41\"\n",
    )])
    .unwrap();
    assert!(matches!(config.docker, DockerConnection::Tls { .. }));
    assert_eq!(config.docker_api_version, Some((1, 41)));
    let config = resolve(&[file(
        "docker_connection_method = \"tcp\"\n[docker]\nsocket = \"tcp://127.0.0.1:2375\"\n",
    )])
    .unwrap();
    assert_eq!(
        config.docker,
        DockerConnection::Tcp("tcp://127.0.0.1:2375".into())
    );
}

#[test]
fn every_bad_value_names_the_file_the_key_and_the_reason() {
    let cases = [
        (
            "on_warp_down = \"leak\"",
            "config file /etc/netwarp.toml: key `on_warp_down`: `leak` is neither `block` nor `bypass`",
        ),
        (
            "[dataplane]\nmode = \"xdp\"",
            "config file /etc/netwarp.toml: key `dataplane.mode`: `xdp` is not one of auto, ebpf, routes, dry-run",
        ),
        (
            "[dataplane]\nresync_interval_secs = 0",
            "config file /etc/netwarp.toml: key `dataplane.resync_interval_secs`: 0 is outside 1..=3600 seconds",
        ),
        (
            "[dataplane]\nresync_interval_secs = \"often\"",
            "config file /etc/netwarp.toml: key `dataplane.resync_interval_secs`: expected an integer, found string",
        ),
        (
            "[limits]\nmax_prefixes_per_target = 0",
            "config file /etc/netwarp.toml: key `limits.max_prefixes_per_target`: 0 is outside 1..=1048576 prefixes",
        ),
        (
            "[dataplane]\nebpf_rules_capacity = 10",
            "config file /etc/netwarp.toml: key `dataplane.ebpf_rules_capacity`: 10 is outside 64..=16777216 entries",
        ),
        (
            "[dataplane]\nebpf_peer_redirect = \"sometimes\"",
            "config file /etc/netwarp.toml: key `dataplane.ebpf_peer_redirect`: expected true or false, found string",
        ),
        (
            "[dataplane]\nebpf_from_container_hook = \"tcx\"",
            "config file /etc/netwarp.toml: key `dataplane.ebpf_from_container_hook`: `tcx` is neither `tc` nor `xdp`",
        ),
        (
            "[probes]\ninterval_secs = 0",
            "config file /etc/netwarp.toml: key `probes.interval_secs`: 0 is outside 1..=3600 seconds",
        ),
        (
            "[probes]\ninterval_secs = 2\ntimeout_ms = 2000",
            "config file /etc/netwarp.toml: key `probes.timeout_ms`: 2000 ms is not less than probes.interval_secs (2 s); a probe must end before the next",
        ),
        (
            "[probes]\nfailures = 4\nwindow = 3",
            "config file /etc/netwarp.toml: key `probes.window`: 3 is less than probes.failures (4): no window could hold that many failures",
        ),
        (
            "[probes]\nlabel = \" \"",
            "config file /etc/netwarp.toml: key `probes.label`: must not be empty",
        ),
        (
            "[logging]\nlevel = \"loud\"",
            "config file /etc/netwarp.toml: key `logging.level`: `loud` is not one of error, warn, info, debug, trace",
        ),
        (
            "[logging]\nformat = \"xml\"",
            "config file /etc/netwarp.toml: key `logging.format`: `xml` is neither `text` nor `json`",
        ),
        (
            "[metrics]\nlisten = \"localhost\"",
            "config file /etc/netwarp.toml: key `metrics.listen`: `localhost` is not an address:port such as 127.0.0.1:9477, nor `off`",
        ),
        (
            "[control]\nsocket = \"netwarp.sock\"",
            "config file /etc/netwarp.toml: key `control.socket`: `netwarp.sock` is not an absolute path",
        ),
        (
            "[docker]\napi_version = \"1.40\"",
            "config file /etc/netwarp.toml: key `docker.api_version`: API 1.40 is older than 1.41 (Docker 20.10), the oldest netwarp supports",
        ),
        (
            "[docker]\nsocket = \"docker.sock\"",
            "config file /etc/netwarp.toml: key `docker.socket`: `docker.sock` is not an absolute unix socket path",
        ),
        (
            "docker_connection_method = \"ssh\"",
            "config file /etc/netwarp.toml: key `docker_connection_method`: `ssh` is not one of unix, tcp, tls",
        ),
        (
            "docker_connection_method = \"tls\"\n[docker]\nsocket = \"tcp://h:2376\"",
            "config file /etc/netwarp.toml: key `docker_connection_method`: tls needs docker.tls_ca, docker.tls_cert and docker.tls_key",
        ),
        (
            "warp_container_name_pattern = \"\"",
            "config file /etc/netwarp.toml: key `warp_container_name_pattern`: must not be empty",
        ),
        (
            "target_container_label = 7",
            "config file /etc/netwarp.toml: key `target_container_label`: expected a string, found integer",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/33\"",
            "config file /etc/netwarp.toml: key `routing_rules[0].destination`: `203.0.113.0/33`: prefix length 33 is longer than 32",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nprotocol = \"tcp\"\nport_range = \"9000-80\"",
            "config file /etc/netwarp.toml: key `routing_rules[0].port_range`: port range `9000-80` is empty: its start is above its end",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nprotocol = \"gre\"",
            "config file /etc/netwarp.toml: key `routing_rules[0].protocol`: unknown protocol `gre` (expected tcp, udp or icmp)",
        ),
        (
            "[[routing_rules]]\nprotocol = \"tcp\"",
            "config file /etc/netwarp.toml: key `routing_rules[0].destination`: is required",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nport_range = \"80\"",
            "config file /etc/netwarp.toml: key `routing_rules[0]`: port range `80` needs a protocol: set protocol to tcp or udp",
        ),
        (
            "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\nport = 80",
            "config file /etc/netwarp.toml: unknown key `routing_rules[0].port`; a rule has destination, protocol, port_range and action",
        ),
        (
            "routing_rules = \"203.0.113.0/24\"",
            "config file /etc/netwarp.toml: key `routing_rules`: expected [[routing_rules]] tables, found string",
        ),
        (
            "[rate_limits]\nenforcement = \"edt\"",
            "config file /etc/netwarp.toml: key `rate_limits.enforcement`: `edt` is neither `shaper` nor `policer`",
        ),
        (
            "[rate_limits]\nenforcement = \"policer\"\n[dataplane]\nmode = \"routes\"",
            "config file /etc/netwarp.toml: key `rate_limits.enforcement`: policer needs the eBPF dataplane, but dataplane.mode is routes; use shaper",
        ),
        (
            "[rate_limits]\ndefault_egress = \"fast\"",
            "config file /etc/netwarp.toml: key `rate_limits.default_egress`: `fast` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
        ),
        (
            "[rate_limits]\ndefault_ingress = \"100\"",
            "config file /etc/netwarp.toml: key `rate_limits.default_ingress`: `100` has no unit; write e.g. 100mbit (bits) or 100mbps (bytes)",
        ),
        (
            "[rate_limits]\ndefault_burst = \"1kbit\"",
            "config file /etc/netwarp.toml: key `rate_limits.default_burst`: `1kbit` is not a size (expected e.g. 32kb, 1mb or 20000 bytes)",
        ),
        (
            "[rate_limits]\negress_label = \" \"",
            "config file /etc/netwarp.toml: key `rate_limits.egress_label`: must not be empty",
        ),
        (
            "warp_pattern = \"x\"",
            "config file /etc/netwarp.toml: unknown key `warp_pattern`; run `netwarp check-config --keys` to list the keys",
        ),
        (
            "[logging]\nlvl = \"info\"",
            "config file /etc/netwarp.toml: unknown key `logging.lvl`; run `netwarp check-config --keys` to list the keys",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(resolve(&[file(text)]).unwrap_err(), message, "for:\n{text}");
    }
}

#[test]
fn syntax_errors_name_the_file() {
    let err = Layer::from_toml("on_warp_down = ", Path::new("/etc/netwarp.toml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("config file /etc/netwarp.toml is not valid TOML:"),
        "{text}"
    );
}

#[test]
fn bad_env_values_name_the_variable() {
    let env = Layer::from_env([("NETWARP_ON_WARP_DOWN".to_string(), "maybe".to_string())]);
    assert_eq!(
        resolve(&[env]).unwrap_err(),
        "environment variable NETWARP_ON_WARP_DOWN: key `on_warp_down`: `maybe` is neither `block` nor `bypass`"
    );
}

#[test]
fn a_missing_file_says_how_to_fix_it() {
    let err = Layer::from_file(Path::new("/nonexistent/netwarp.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("pass an existing file with --config"),
        "{err}"
    );
}

#[test]
fn rate_limit_defaults_parse_from_the_file() {
    let config = resolve(&[file(
        "[rate_limits]\ndefault_egress = \"20mbit\"\ndefault_ingress = \"1gbit\"\ndefault_burst = \"256kb\"\nburst_label = \"x.burst\"",
    )])
    .unwrap();
    assert_eq!(
        config.caps.default_egress.map(|r| r.bits_per_second()),
        Some(20_000_000)
    );
    assert_eq!(
        config.caps.default_ingress.map(|r| r.bits_per_second()),
        Some(1_000_000_000)
    );
    assert_eq!(config.caps.default_burst, Some(256 << 10));
    assert_eq!(config.caps.burst_label, "x.burst");
}

#[test]
fn dry_run_mode_and_its_record_file() {
    let config = resolve(&[file(
        "[dataplane]\nmode = \"dry-run\"\ndry_run_record = \"/tmp/record.json\"\n",
    )])
    .unwrap();
    assert_eq!(config.dataplane, DataplaneMode::DryRun);
    assert_eq!(config.dataplane.to_string(), "dry-run");
    assert_eq!(
        config.dry_run_record.as_deref(),
        Some(Path::new("/tmp/record.json"))
    );
    let err = resolve(&[file(
        "[dataplane]\nmode = \"routes\"\ndry_run_record = \"/tmp/record.json\"\n",
    )])
    .unwrap_err();
    assert!(err.contains("dataplane.dry_run_record"), "{err}");
    assert!(err.contains("only meaningful"), "{err}");
    assert_eq!(resolve(&[]).unwrap().dry_run_record, None);
}

#[test]
fn limits_come_from_their_section() {
    let config = resolve(&[file(
        "[limits]\nmax_prefixes_per_target = 300\n[dataplane]\nebpf_rules_capacity = 512",
    )])
    .unwrap();
    assert_eq!(config.max_prefixes_per_target, 300);
    assert_eq!(config.plan_settings().max_prefixes_per_target, 300);
    assert_eq!(config.ebpf_rules_capacity, 512);
}

#[test]
fn the_planner_names_the_limit_keys_as_the_table_does() {
    // Its block reasons tell the operator which key to raise.
    assert_eq!(
        super::keys::MAX_PREFIXES.name,
        crate::plan::MAX_PREFIXES_KEY
    );
    assert_eq!(
        super::keys::EBPF_RULES_CAPACITY.name,
        crate::plan::RULES_CAPACITY_KEY
    );
}
