//! Every configuration key: its TOML name, environment variable, default
//! and meaning. `check-config` and the docs are generated from this table.

pub struct KeySpec {
    /// The TOML name; dotted for keys inside a section (`logging.level`).
    pub name: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

impl KeySpec {
    pub fn default_value(&self) -> super::layer::Value {
        super::layer::Value::Text(self.default.to_owned())
    }
}

macro_rules! keys {
    ($($ident:ident = $name:literal, $env:literal, $default:literal, $doc:literal;)*) => {
        $(pub const $ident: KeySpec = KeySpec { name: $name, env: $env, default: $default, doc: $doc };)*
        /// All keys, in documentation order.
        pub const KEYS: &[&KeySpec] = &[$(&$ident),*];
    };
}

keys! {
    CONNECTION_METHOD = "docker_connection_method", "NETWARP_DOCKER_CONNECTION_METHOD", "unix",
        "How to reach Docker: unix, tcp or tls";
    DOCKER_SOCKET = "docker.socket", "NETWARP_DOCKER_SOCKET", "/var/run/docker.sock",
        "Unix socket path, or tcp://HOST:PORT for tcp and tls";
    DOCKER_API_VERSION = "docker.api_version", "NETWARP_DOCKER_API_VERSION", "auto",
        "Docker API version (1.41 or later), or auto to negotiate";
    DOCKER_TLS_CA = "docker.tls_ca", "NETWARP_DOCKER_TLS_CA", "",
        "CA certificate for tls";
    DOCKER_TLS_CERT = "docker.tls_cert", "NETWARP_DOCKER_TLS_CERT", "",
        "Client certificate for tls";
    DOCKER_TLS_KEY = "docker.tls_key", "NETWARP_DOCKER_TLS_KEY", "",
        "Client key for tls";
    WARP_PATTERN = "warp_container_name_pattern", "NETWARP_WARP_CONTAINER_NAME_PATTERN", "warp-*",
        "Glob (* and ?) that names warp containers";
    TARGET_LABEL = "target_container_label", "NETWARP_TARGET_CONTAINER_LABEL", "netwarp.target",
        "Label whose value names a target's warp container";
    NETWORK_LABEL = "network_preference_label", "NETWARP_NETWORK_PREFERENCE_LABEL", "netwarp.network",
        "Label on a warp container naming the network to steer over";
    RULES_LABEL = "rules_label", "NETWARP_RULES_LABEL", "netwarp.rules",
        "Label on a target overriding routing_rules, e.g. 203.0.113.0/24,tcp:443";
    ROUTING_RULES = "routing_rules", "NETWARP_ROUTING_RULES", "",
        "Global rules: [[routing_rules]] tables (destination, protocol, port_range), or the label syntax in the environment";
    ON_WARP_DOWN = "on_warp_down", "NETWARP_ON_WARP_DOWN", "block",
        "block (fail closed) or bypass while a warp container is down";
    DATAPLANE_MODE = "dataplane.mode", "NETWARP_DATAPLANE_MODE", "auto",
        "auto, ebpf, routes, or dry-run (a simulation: plans and records, programs nothing, needs no privileges)";
    DRY_RUN_RECORD = "dataplane.dry_run_record", "NETWARP_DATAPLANE_DRY_RUN_RECORD", "",
        "dry-run only: JSON file the simulated dataplane rewrites with what it would program";
    BPF_PIN_DIR = "dataplane.bpf_pin_dir", "NETWARP_DATAPLANE_BPF_PIN_DIR", "/sys/fs/bpf/netwarp",
        "Where the eBPF dataplane pins its maps and links (on bpffs), so they outlive the daemon";
    RESYNC_INTERVAL = "dataplane.resync_interval_secs", "NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS", "30",
        "Seconds between full resyncs, the safety net behind events";
    HOST_GUARD_PRIORITY = "dataplane.host_guard_priority", "NETWARP_DATAPLANE_HOST_GUARD_PRIORITY", "5000",
        "routes: first of the three host policy-rule priorities of the bridge guard (must be free; distinct per netwarp instance)";
    RATE_ENFORCEMENT = "rate_limits.enforcement", "NETWARP_RATE_LIMITS_ENFORCEMENT", "shaper",
        "shaper (a tbf qdisc per interface, TCP-friendly) or policer (the BPF token bucket; ebpf dataplane only)";
    RATE_EGRESS_LABEL = "rate_limits.egress_label", "NETWARP_RATE_LIMITS_EGRESS_LABEL", "netwarp.egress-rate",
        "Label capping what a container sends, e.g. 20mbit, 500kbit, 1gbit or 10mbps (bytes)";
    RATE_INGRESS_LABEL = "rate_limits.ingress_label", "NETWARP_RATE_LIMITS_INGRESS_LABEL", "netwarp.ingress-rate",
        "Label capping what a container receives";
    RATE_BURST_LABEL = "rate_limits.burst_label", "NETWARP_RATE_LIMITS_BURST_LABEL", "netwarp.burst",
        "Label setting the burst of a container's caps, e.g. 64kb or 1mb";
    RATE_DEFAULT_EGRESS = "rate_limits.default_egress", "NETWARP_RATE_LIMITS_DEFAULT_EGRESS", "",
        "Egress cap for targets without the egress label; empty for none";
    RATE_DEFAULT_INGRESS = "rate_limits.default_ingress", "NETWARP_RATE_LIMITS_DEFAULT_INGRESS", "",
        "Ingress cap for targets without the ingress label; empty for none";
    RATE_DEFAULT_BURST = "rate_limits.default_burst", "NETWARP_RATE_LIMITS_DEFAULT_BURST", "",
        "Burst for targets without the burst label; empty for 20 ms at the rate, at least 128kb";
    LOG_LEVEL = "logging.level", "NETWARP_LOGGING_LEVEL", "info",
        "error, warn, info, debug or trace";
    LOG_FORMAT = "logging.format", "NETWARP_LOGGING_FORMAT", "text",
        "text or json";
    METRICS_LISTEN = "metrics.listen", "NETWARP_METRICS_LISTEN", "127.0.0.1:9477",
        "Address (host:port) of the Prometheus endpoint, or off to disable it; port 0 picks a free port and logs it";
    CONTROL_SOCKET = "control.socket", "NETWARP_CONTROL_SOCKET", "/run/netwarp/netwarp.sock",
        "Unix socket (mode 0600) on which the daemon answers `netwarp status`";
}
