//! Every configuration key: its TOML name, environment variable, default,
//! meaning, whether a reload (SIGHUP) applies it, and the command-line
//! flag that sets it, if any. `check-config`, the CLI flags, the reload's
//! restart warnings and the docs all derive from this one table.

/// When a changed value takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// A reload (SIGHUP) applies it on the next pass.
    Live,
    /// Read once at start; a reload warns, naming the key, and keeps the
    /// running value.
    Restart,
}

pub struct KeySpec {
    /// The TOML name; dotted for keys inside a section (`logging.level`).
    pub name: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    pub apply: Apply,
    /// The long flag (without `--`) that sets it, if any.
    pub flag: Option<&'static str>,
}

macro_rules! keys {
    ($($ident:ident = $name:literal, $env:literal, $default:literal, $apply:ident,
        flag $flag:tt, $doc:literal;)*) => {
        $(pub const $ident: KeySpec = KeySpec {
            name: $name,
            env: $env,
            default: $default,
            doc: $doc,
            apply: Apply::$apply,
            flag: keys!(@flag $flag),
        };)*
        /// All keys, in documentation order.
        pub const KEYS: &[&KeySpec] = &[$(&$ident),*];
    };
    (@flag -) => { None };
    (@flag $flag:literal) => { Some($flag) };
}

keys! {
    CONNECTION_METHOD = "docker_connection_method", "NETWARP_DOCKER_CONNECTION_METHOD", "unix",
        Restart, flag "docker-connection-method",
        "How to reach Docker: unix, tcp or tls";
    DOCKER_SOCKET = "docker.socket", "NETWARP_DOCKER_SOCKET", "/var/run/docker.sock",
        Restart, flag "docker-socket",
        "Unix socket path, or tcp://HOST:PORT for tcp and tls";
    DOCKER_API_VERSION = "docker.api_version", "NETWARP_DOCKER_API_VERSION", "auto",
        Restart, flag -,
        "Docker API version (1.41 or later), or auto to negotiate";
    DOCKER_TLS_CA = "docker.tls_ca", "NETWARP_DOCKER_TLS_CA", "",
        Restart, flag -,
        "CA certificate for tls";
    DOCKER_TLS_CERT = "docker.tls_cert", "NETWARP_DOCKER_TLS_CERT", "",
        Restart, flag -,
        "Client certificate for tls";
    DOCKER_TLS_KEY = "docker.tls_key", "NETWARP_DOCKER_TLS_KEY", "",
        Restart, flag -,
        "Client key for tls";
    WARP_PATTERN = "warp_container_name_pattern", "NETWARP_WARP_CONTAINER_NAME_PATTERN", "warp-*",
        Live, flag "warp-pattern",
        "Glob (* and ?) that names warp containers";
    TARGET_LABEL = "target_container_label", "NETWARP_TARGET_CONTAINER_LABEL", "netwarp.target",
        Live, flag -,
        "Label whose value names a target's warp container, or a group: warp-a,warp-b (failover) or spread:warp-a,warp-b (flows over all)";
    NETWORK_LABEL = "network_preference_label", "NETWARP_NETWORK_PREFERENCE_LABEL", "netwarp.network",
        Live, flag -,
        "Label on a warp container naming the network to steer over";
    RULES_LABEL = "rules_label", "NETWARP_RULES_LABEL", "netwarp.rules",
        Live, flag -,
        "Label on a target with its rules, e.g. `global; direct 10.0.0.0/8; block 0.0.0.0/0,tcp:25`: replaces routing_rules unless it says `global`";
    ROUTING_RULES = "routing_rules", "NETWARP_ROUTING_RULES", "",
        Live, flag -,
        "Global rules: [[routing_rules]] tables (destination, protocol, port_range, action = via|direct|block), or the label syntax in the environment";
    DNS_POLICY = "dns", "NETWARP_DNS", "follow",
        Live, flag -,
        "Targets' DNS queries (UDP and TCP 53): follow (what the rules say), warp (all through the warp) or block (refused unless through the warp)";
    DNS_LABEL = "dns_label", "NETWARP_DNS_LABEL", "netwarp.dns",
        Live, flag -,
        "Label on a target with its own dns policy (follow, warp, block)";
    ALLOW_LABEL = "allow_label", "NETWARP_ALLOW_LABEL", "netwarp.allow",
        Live, flag -,
        "Label on any container with the only destinations it may reach (CIDRs; everything else refused, IPv6 too)";
    DENY_LABEL = "deny_label", "NETWARP_DENY_LABEL", "netwarp.deny",
        Live, flag -,
        "Label on any container with destinations (and protocols, ports) it may not reach";
    EXCLUDE_OWN_NETWORKS = "exclude_own_networks", "NETWARP_EXCLUDE_OWN_NETWORKS", "true",
        Live, flag -,
        "Leave each target's own Docker networks out of its via rules (a full tunnel still reaches its neighbours directly)";
    ON_WARP_DOWN = "on_warp_down", "NETWARP_ON_WARP_DOWN", "block",
        Live, flag "on-warp-down",
        "block (fail closed) or bypass while a warp container is down";
    DATAPLANE_MODE = "dataplane.mode", "NETWARP_DATAPLANE_MODE", "auto",
        Restart, flag "dataplane",
        "auto, ebpf, routes, or dry-run (a simulation: plans and records, programs nothing, needs no privileges)";
    DRY_RUN_RECORD = "dataplane.dry_run_record", "NETWARP_DATAPLANE_DRY_RUN_RECORD", "",
        Restart, flag -,
        "dry-run only: JSON file the simulated dataplane rewrites with what it would program";
    BPF_PIN_DIR = "dataplane.bpf_pin_dir", "NETWARP_DATAPLANE_BPF_PIN_DIR", "/sys/fs/bpf/netwarp",
        Restart, flag -,
        "Where the eBPF dataplane pins its maps and links (on bpffs), so they outlive the daemon";
    HOST_PROC_DIR = "dataplane.host_proc_dir", "NETWARP_DATAPLANE_HOST_PROC_DIR", "/proc",
        Restart, flag -,
        "The host's /proc, where targets' PID/ns/net are opened; in a container without `pid: host` (a Swarm service), mount the host's /proc elsewhere (e.g. /host/proc) and name it here";
    EBPF_RULES_CAPACITY = "dataplane.ebpf_rules_capacity", "NETWARP_DATAPLANE_EBPF_RULES_CAPACITY", "262144",
        Restart, flag -,
        "ebpf: entries of each rule trie (IPv4 and IPv6), shared by every target's rules, the bridge guards and one switch's second copy; allocated only as used";
    EBPF_PEER_REDIRECT = "dataplane.ebpf_peer_redirect", "NETWARP_DATAPLANE_EBPF_PEER_REDIRECT", "true",
        Restart, flag -,
        "ebpf: deliver steered packets into the warp's namespace by a peer redirect (skipping its host veth's egress) where no ingress cap on the warp sits there; false: always the classic redirect";
    EBPF_FROM_CONTAINER_HOOK = "dataplane.ebpf_from_container_hook", "NETWARP_DATAPLANE_EBPF_FROM_CONTAINER_HOOK", "tc",
        Restart, flag -,
        "ebpf: where an uncapped target's traffic is steered: tc (the veth's tc ingress) or xdp (its XDP hook, with tc behind it for what XDP passes; puts an XDP pass program on each warp's veth)";
    RESYNC_INTERVAL = "dataplane.resync_interval_secs", "NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS", "30",
        Restart, flag "resync-interval-secs",
        "Seconds between full resyncs, the safety net behind events";
    HOST_GUARD_PRIORITY = "dataplane.host_guard_priority", "NETWARP_DATAPLANE_HOST_GUARD_PRIORITY", "5000",
        Restart, flag -,
        "routes: first of the three host policy-rule priorities of the bridge guard (must be free; distinct per netwarp instance)";
    MAX_PREFIXES = "limits.max_prefixes_per_target", "NETWARP_LIMITS_MAX_PREFIXES_PER_TARGET", "4096",
        Live, flag "max-prefixes-per-target",
        "Most destination prefixes one target's rules may list; a target over it is blocked entirely";
    FAILOVER_HOLD_DOWN = "failover.hold_down_secs", "NETWARP_FAILOVER_HOLD_DOWN_SECS", "30",
        Restart, flag -,
        "Seconds a recovered warp of a failover group (netwarp.target=warp-a,warp-b) waits before it takes its targets back";
    PROBE_LABEL = "probes.label", "NETWARP_PROBES_LABEL", "netwarp.probe",
        Live, flag -,
        "Label on a warp naming a probe netwarp runs from the warp's namespace, e.g. tcp:198.51.100.7:443; a warp whose probe fails is unusable";
    PROBE_INTERVAL = "probes.interval_secs", "NETWARP_PROBES_INTERVAL_SECS", "5",
        Restart, flag -,
        "Seconds between two probes of a warp";
    PROBE_TIMEOUT = "probes.timeout_ms", "NETWARP_PROBES_TIMEOUT_MS", "2000",
        Restart, flag -,
        "Milliseconds a probe waits for its answer (less than the interval)";
    PROBE_FAILURES = "probes.failures", "NETWARP_PROBES_FAILURES", "3",
        Restart, flag -,
        "A warp is unusable while this many of its last probes.window probes failed";
    PROBE_WINDOW = "probes.window", "NETWARP_PROBES_WINDOW", "5",
        Restart, flag -,
        "How many of a warp's last probes are judged (at least probes.failures, at most 32)";
    RATE_ENFORCEMENT = "rate_limits.enforcement", "NETWARP_RATE_LIMITS_ENFORCEMENT", "shaper",
        Live, flag -,
        "shaper (a tbf qdisc per interface, TCP-friendly) or policer (the BPF token bucket; ebpf dataplane only)";
    RATE_EGRESS_LABEL = "rate_limits.egress_label", "NETWARP_RATE_LIMITS_EGRESS_LABEL", "netwarp.egress-rate",
        Live, flag -,
        "Label capping what a container sends, e.g. 20mbit, 500kbit, 1gbit or 10mbps (bytes)";
    RATE_INGRESS_LABEL = "rate_limits.ingress_label", "NETWARP_RATE_LIMITS_INGRESS_LABEL", "netwarp.ingress-rate",
        Live, flag -,
        "Label capping what a container receives";
    RATE_BURST_LABEL = "rate_limits.burst_label", "NETWARP_RATE_LIMITS_BURST_LABEL", "netwarp.burst",
        Live, flag -,
        "Label setting the burst of a container's caps, e.g. 64kb or 1mb";
    RATE_DEFAULT_EGRESS = "rate_limits.default_egress", "NETWARP_RATE_LIMITS_DEFAULT_EGRESS", "",
        Live, flag -,
        "Egress cap for targets without the egress label; empty for none";
    RATE_DEFAULT_INGRESS = "rate_limits.default_ingress", "NETWARP_RATE_LIMITS_DEFAULT_INGRESS", "",
        Live, flag -,
        "Ingress cap for targets without the ingress label; empty for none";
    RATE_DEFAULT_BURST = "rate_limits.default_burst", "NETWARP_RATE_LIMITS_DEFAULT_BURST", "",
        Live, flag -,
        "Burst for targets without the burst label; empty for 20 ms at the rate, at least 128kb";
    LOG_LEVEL = "logging.level", "NETWARP_LOGGING_LEVEL", "info",
        Restart, flag "log-level",
        "error, warn, info, debug or trace";
    LOG_FORMAT = "logging.format", "NETWARP_LOGGING_FORMAT", "text",
        Restart, flag "log-format",
        "text or json";
    METRICS_LISTEN = "metrics.listen", "NETWARP_METRICS_LISTEN", "127.0.0.1:9477",
        Restart, flag "metrics-listen",
        "Address (host:port) of the Prometheus endpoint, or off to disable it; port 0 picks a free port and logs it";
    CONTROL_SOCKET = "control.socket", "NETWARP_CONTROL_SOCKET", "/run/netwarp/netwarp.sock",
        Restart, flag "control-socket",
        "Unix socket (mode 0600) on which the daemon answers `netwarp status`";
}
