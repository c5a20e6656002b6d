//! Layered configuration: CLI flags over `NETWARP_*` environment variables
//! over the TOML file over documented defaults. Every value remembers where
//! it came from, and every error names that place, the key and the reason.
mod keys;
mod layer;
mod reload;

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use keys::{Apply, KEYS, KeySpec};
pub use layer::{Layer, Origin};
pub use reload::Reloaded;

use crate::{
    model::{Rate, RateError, Rule, parse_rate, parse_size},
    plan::{CapEnforcement, CapSettings, DnsPolicy, OnWarpDown, PlanSettings},
    warp_probe::ProbeSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass an existing file with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        origin: Origin,
        key: String,
        hint: String,
    },
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: Origin,
        key: String,
        reason: String,
    },
}

/// How netwarp reaches the Docker engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerConnection {
    /// A unix socket path.
    Unix(String),
    /// Plain HTTP over TCP, e.g. `tcp://127.0.0.1:2375`.
    Tcp(String),
    /// HTTPS over TCP with client certificates.
    Tls {
        address: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneMode {
    Auto,
    Ebpf,
    Routes,
    /// A simulation: plans and records what it would program, touches no
    /// kernel state and needs no privileges.
    DryRun,
}

impl fmt::Display for DataplaneMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::Routes => "routes",
            Self::DryRun => "dry-run",
        })
    }
}

pub use crate::dataplane::ebpf::FromContainerHook;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub docker: DockerConnection,
    /// `major.minor`; `None` negotiates with the engine.
    pub docker_api_version: Option<(usize, usize)>,
    pub warp_name_pattern: String,
    pub target_label: String,
    pub network_label: String,
    pub rules_label: String,
    pub routing_rules: Vec<Rule>,
    pub on_warp_down: OnWarpDown,
    pub exclude_own_networks: bool,
    pub dns_policy: DnsPolicy,
    pub dns_label: String,
    pub allow_label: String,
    pub deny_label: String,
    pub caps: CapSettings,
    pub dataplane: DataplaneMode,
    /// `dry-run`: where the simulated dataplane records what it would program.
    pub dry_run_record: Option<PathBuf>,
    pub resync_interval: Duration,
    /// routes: the first of the bridge guard's three host rule priorities.
    pub host_guard_priority: u32,
    pub bpf_pin_dir: PathBuf,
    /// Where host pids are visible: `/proc`, or the host's /proc mounted
    /// into netwarp's container.
    pub host_proc_dir: PathBuf,
    /// ebpf: the entries of each rule trie (one per address family).
    pub ebpf_rules_capacity: u32,
    /// ebpf: whether steered packets may enter their warp by a peer redirect.
    pub ebpf_peer_redirect: bool,
    /// ebpf: the hook of the from-container program on uncapped targets.
    pub ebpf_from_container_hook: FromContainerHook,
    /// The most destination prefixes one target's rules may list.
    pub max_prefixes_per_target: usize,
    /// The label naming a warp's probe.
    pub probe_label: String,
    pub probes: ProbeSettings,
    /// How long a recovered failover member waits to take traffic back.
    pub failover_hold_down: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// The Prometheus endpoint; `None` when `metrics.listen = "off"`.
    pub metrics_listen: Option<SocketAddr>,
    /// The unix socket `netwarp status` reads from.
    pub control_socket: PathBuf,
    /// The effective value of every key as text, with its origin.
    pub effective: BTreeMap<&'static str, (String, Origin)>,
}

impl Config {
    /// Merges the layers (highest precedence first) and validates every key.
    pub fn resolve(layers: &[Layer]) -> Result<Self, ConfigError> {
        for layer in layers {
            layer.check_known_keys()?;
        }
        let mut effective = BTreeMap::new();
        let mut value = |spec: &'static KeySpec| -> Result<(layer::Value, Origin), ConfigError> {
            let (value, origin) = layers
                .iter()
                .find_map(|l| l.get(spec.name).cloned())
                .unwrap_or_else(|| (layer::Value::Text(spec.default.to_owned()), Origin::Default));
            effective.insert(spec.name, (value.to_string(), origin.clone()));
            Ok((value, origin))
        };
        let text = |spec: &'static KeySpec, v: (layer::Value, Origin)| v.0.as_text(spec.name, &v.1);

        let method_value = value(&keys::CONNECTION_METHOD)?;
        let method_origin = method_value.1.clone();
        let method = text(&keys::CONNECTION_METHOD, method_value)?;
        let socket = value(&keys::DOCKER_SOCKET)?;
        let socket_text = text(&keys::DOCKER_SOCKET, socket.clone())?;
        let tls_paths = [
            &keys::DOCKER_TLS_CA,
            &keys::DOCKER_TLS_CERT,
            &keys::DOCKER_TLS_KEY,
        ]
        .map(|spec| value(spec).and_then(|v| text(spec, v)));
        let [ca, cert, key] = tls_paths;
        let (ca, cert, key) = (ca?, cert?, key?);
        let docker = parse_connection(
            (&method, &method_origin),
            (socket_text, &socket.1),
            [ca, cert, key],
        )?;

        let api = value(&keys::DOCKER_API_VERSION)?;
        let api_text = text(&keys::DOCKER_API_VERSION, api.clone())?;
        let docker_api_version = parse_api_version(&api_text)
            .map_err(|reason| invalid(&api.1, keys::DOCKER_API_VERSION.name, reason))?;

        let rules = value(&keys::ROUTING_RULES)?;
        let routing_rules = rules.0.as_rules(keys::ROUTING_RULES.name, &rules.1)?;

        let dns = value(&keys::DNS_POLICY)?;
        let dns_policy: DnsPolicy = (text(&keys::DNS_POLICY, dns.clone())?.parse())
            .map_err(|reason: String| invalid(&dns.1, keys::DNS_POLICY.name, reason))?;

        let exclude = value(&keys::EXCLUDE_OWN_NETWORKS)?;
        let exclude_own_networks = exclude
            .0
            .as_bool(keys::EXCLUDE_OWN_NETWORKS.name, &exclude.1)?;

        let on_down = value(&keys::ON_WARP_DOWN)?;
        let on_warp_down = match text(&keys::ON_WARP_DOWN, on_down.clone())?.as_str() {
            "block" => OnWarpDown::Block,
            "bypass" => OnWarpDown::Bypass,
            other => {
                return Err(invalid(
                    &on_down.1,
                    keys::ON_WARP_DOWN.name,
                    format!("`{other}` is neither `block` nor `bypass`"),
                ));
            }
        };
        let mode = value(&keys::DATAPLANE_MODE)?;
        let dataplane = match text(&keys::DATAPLANE_MODE, mode.clone())?.as_str() {
            "auto" => DataplaneMode::Auto,
            "ebpf" => DataplaneMode::Ebpf,
            "routes" => DataplaneMode::Routes,
            "dry-run" => DataplaneMode::DryRun,
            other => {
                return Err(invalid(
                    &mode.1,
                    keys::DATAPLANE_MODE.name,
                    format!("`{other}` is not one of auto, ebpf, routes, dry-run"),
                ));
            }
        };
        let record = value(&keys::DRY_RUN_RECORD)?;
        let record_text = text(&keys::DRY_RUN_RECORD, record.clone())?;
        let dry_run_record = match (record_text.is_empty(), dataplane) {
            (true, _) => None,
            (false, DataplaneMode::DryRun) => Some(PathBuf::from(record_text)),
            (false, _) => {
                return Err(invalid(
                    &record.1,
                    keys::DRY_RUN_RECORD.name,
                    format!(
                        "is only meaningful with {} = dry-run",
                        keys::DATAPLANE_MODE.name
                    ),
                ));
            }
        };
        let resync = value(&keys::RESYNC_INTERVAL)?;
        let resync_secs = resync.0.as_integer(keys::RESYNC_INTERVAL.name, &resync.1)?;
        if !(1..=3600).contains(&resync_secs) {
            return Err(invalid(
                &resync.1,
                keys::RESYNC_INTERVAL.name,
                format!("{resync_secs} is outside 1..=3600 seconds"),
            ));
        }
        let guard = value(&keys::HOST_GUARD_PRIORITY)?;
        let guard_priority = guard
            .0
            .as_integer(keys::HOST_GUARD_PRIORITY.name, &guard.1)?;
        // After `local` (0), and its three rules before `main` (32766).
        if !(1..=32_763).contains(&guard_priority) {
            return Err(invalid(
                &guard.1,
                keys::HOST_GUARD_PRIORITY.name,
                format!("{guard_priority} is outside 1..=32763"),
            ));
        }
        let pin = value(&keys::BPF_PIN_DIR)?;
        let bpf_pin_dir = text(&keys::BPF_PIN_DIR, pin.clone())?;
        if !bpf_pin_dir.starts_with("/sys/fs/bpf/") {
            return Err(invalid(
                &pin.1,
                keys::BPF_PIN_DIR.name,
                format!("`{bpf_pin_dir}` is not a directory under /sys/fs/bpf/"),
            ));
        }
        let proc = value(&keys::HOST_PROC_DIR)?;
        let host_proc_dir = text(&keys::HOST_PROC_DIR, proc.clone())?;
        if !host_proc_dir.starts_with('/') {
            return Err(invalid(
                &proc.1,
                keys::HOST_PROC_DIR.name,
                format!("`{host_proc_dir}` is not an absolute path"),
            ));
        }
        let capacity = value(&keys::EBPF_RULES_CAPACITY)?;
        let ebpf_rules_capacity = capacity
            .0
            .as_integer(keys::EBPF_RULES_CAPACITY.name, &capacity.1)?;
        // Below a few dozen rows not even the guards fit; above 2^24 the
        // kernel's memory accounting, not this bound, is the real limit.
        if !(64..=16_777_216).contains(&ebpf_rules_capacity) {
            return Err(invalid(
                &capacity.1,
                keys::EBPF_RULES_CAPACITY.name,
                format!("{ebpf_rules_capacity} is outside 64..=16777216 entries"),
            ));
        }
        let peer = value(&keys::EBPF_PEER_REDIRECT)?;
        let ebpf_peer_redirect = peer.0.as_bool(keys::EBPF_PEER_REDIRECT.name, &peer.1)?;
        let hook = value(&keys::EBPF_FROM_CONTAINER_HOOK)?;
        let ebpf_from_container_hook =
            match text(&keys::EBPF_FROM_CONTAINER_HOOK, hook.clone())?.as_str() {
                "tc" => FromContainerHook::Tc,
                "xdp" => FromContainerHook::Xdp,
                other => {
                    return Err(invalid(
                        &hook.1,
                        keys::EBPF_FROM_CONTAINER_HOOK.name,
                        format!("`{other}` is neither `tc` nor `xdp`"),
                    ));
                }
            };
        let max = value(&keys::MAX_PREFIXES)?;
        let max_prefixes_per_target = max.0.as_integer(keys::MAX_PREFIXES.name, &max.1)?;
        if !(1..=1_048_576).contains(&max_prefixes_per_target) {
            return Err(invalid(
                &max.1,
                keys::MAX_PREFIXES.name,
                format!("{max_prefixes_per_target} is outside 1..=1048576 prefixes"),
            ));
        }
        let level = value(&keys::LOG_LEVEL)?;
        let log_level = text(&keys::LOG_LEVEL, level.clone())?;
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(invalid(
                &level.1,
                keys::LOG_LEVEL.name,
                format!("`{log_level}` is not one of error, warn, info, debug, trace"),
            ));
        }
        let format = value(&keys::LOG_FORMAT)?;
        let log_format = match text(&keys::LOG_FORMAT, format.clone())?.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    &format.1,
                    keys::LOG_FORMAT.name,
                    format!("`{other}` is neither `text` nor `json`"),
                ));
            }
        };
        let listen = value(&keys::METRICS_LISTEN)?;
        let listen_text = text(&keys::METRICS_LISTEN, listen.clone())?;
        let metrics_listen = match listen_text.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|_| {
                invalid(
                    &listen.1,
                    keys::METRICS_LISTEN.name,
                    format!("`{text}` is not an address:port such as 127.0.0.1:9477, nor `off`"),
                )
            })?),
        };
        let socket = value(&keys::CONTROL_SOCKET)?;
        let control_socket = text(&keys::CONTROL_SOCKET, socket.clone())?;
        if !control_socket.starts_with('/') {
            return Err(invalid(
                &socket.1,
                keys::CONTROL_SOCKET.name,
                format!("`{control_socket}` is not an absolute path"),
            ));
        }
        let mut label = |spec: &'static KeySpec| -> Result<String, ConfigError> {
            let v = value(spec)?;
            let s = text(spec, v.clone())?;
            if s.trim().is_empty() {
                return Err(invalid(&v.1, spec.name, "must not be empty".into()));
            }
            Ok(s)
        };
        let warp_name_pattern = label(&keys::WARP_PATTERN)?;
        let target_label = label(&keys::TARGET_LABEL)?;
        let network_label = label(&keys::NETWORK_LABEL)?;
        let rules_label = label(&keys::RULES_LABEL)?;
        let egress_label = label(&keys::RATE_EGRESS_LABEL)?;
        let ingress_label = label(&keys::RATE_INGRESS_LABEL)?;
        let burst_label = label(&keys::RATE_BURST_LABEL)?;
        let probe_label = label(&keys::PROBE_LABEL)?;
        let dns_label = label(&keys::DNS_LABEL)?;
        let allow_label = label(&keys::ALLOW_LABEL)?;
        let deny_label = label(&keys::DENY_LABEL)?;
        let mut optional = |spec: &'static KeySpec, parse: fn(&str) -> Result<u64, RateError>| {
            let v = value(spec)?;
            let s = text(spec, v.clone())?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            parse(&s)
                .map(Some)
                .map_err(|e| invalid(&v.1, spec.name, e.to_string()))
        };
        let rate_bits = |s: &str| parse_rate(s).map(Rate::bits_per_second);
        let default_egress = optional(&keys::RATE_DEFAULT_EGRESS, rate_bits)?;
        let default_ingress = optional(&keys::RATE_DEFAULT_INGRESS, rate_bits)?;
        let default_burst = optional(&keys::RATE_DEFAULT_BURST, parse_size)?;
        let enforcement_value = value(&keys::RATE_ENFORCEMENT)?;
        let enforcement = match text(&keys::RATE_ENFORCEMENT, enforcement_value.clone())?.as_str() {
            "shaper" => CapEnforcement::Shaper,
            "policer" if dataplane == DataplaneMode::Routes => {
                return Err(invalid(
                    &enforcement_value.1,
                    keys::RATE_ENFORCEMENT.name,
                    "policer needs the eBPF dataplane, but dataplane.mode is routes; use shaper"
                        .into(),
                ));
            }
            "policer" => CapEnforcement::Policer,
            other => {
                return Err(invalid(
                    &enforcement_value.1,
                    keys::RATE_ENFORCEMENT.name,
                    format!("`{other}` is neither `shaper` nor `policer`"),
                ));
            }
        };
        let probes = probe_settings(&mut value)?;
        let hold = value(&keys::FAILOVER_HOLD_DOWN)?;
        let hold_down_secs = hold.0.as_integer(keys::FAILOVER_HOLD_DOWN.name, &hold.1)?;
        if hold_down_secs > 3600 {
            return Err(invalid(
                &hold.1,
                keys::FAILOVER_HOLD_DOWN.name,
                format!("{hold_down_secs} is outside 0..=3600 seconds"),
            ));
        }
        let caps = CapSettings {
            enforcement,
            egress_label,
            ingress_label,
            burst_label,
            default_egress: default_egress.map(Rate::from_bits_per_second),
            default_ingress: default_ingress.map(Rate::from_bits_per_second),
            default_burst,
        };

        Ok(Self {
            docker,
            docker_api_version,
            warp_name_pattern,
            target_label,
            network_label,
            rules_label,
            routing_rules,
            on_warp_down,
            exclude_own_networks,
            dns_policy,
            dns_label,
            allow_label,
            deny_label,
            caps,
            dataplane,
            dry_run_record,
            resync_interval: Duration::from_secs(resync_secs),
            host_guard_priority: guard_priority as u32,
            bpf_pin_dir: bpf_pin_dir.into(),
            host_proc_dir: host_proc_dir.into(),
            ebpf_rules_capacity: ebpf_rules_capacity as u32,
            ebpf_peer_redirect,
            ebpf_from_container_hook,
            max_prefixes_per_target: max_prefixes_per_target as usize,
            probe_label,
            probes,
            failover_hold_down: Duration::from_secs(hold_down_secs),
            log_level,
            log_format,
            metrics_listen,
            control_socket: control_socket.into(),
            effective,
        })
    }

    /// The settings the planner needs.
    pub fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            warp_name_pattern: self.warp_name_pattern.clone(),
            target_label: self.target_label.clone(),
            network_label: self.network_label.clone(),
            rules_label: self.rules_label.clone(),
            global_rules: self.routing_rules.clone(),
            on_warp_down: self.on_warp_down,
            exclude_own_networks: self.exclude_own_networks,
            dns: self.dns_policy,
            dns_label: self.dns_label.clone(),
            allow_label: self.allow_label.clone(),
            deny_label: self.deny_label.clone(),
            caps: self.caps.clone(),
            max_prefixes_per_target: self.max_prefixes_per_target,
            probe_label: self.probe_label.clone(),
            // Filled by the pass from the dataplane it drives.
            rule_capacity: None,
        }
    }
}

/// The `[probes]` keys, each in its range and consistent with the others.
fn probe_settings(
    value: &mut impl FnMut(&'static KeySpec) -> Result<(layer::Value, Origin), ConfigError>,
) -> Result<ProbeSettings, ConfigError> {
    let mut integer = |spec: &'static KeySpec, range: std::ops::RangeInclusive<u64>, unit: &str| {
        let v = value(spec)?;
        let n = v.0.as_integer(spec.name, &v.1)?;
        if !range.contains(&n) {
            return Err(invalid(
                &v.1,
                spec.name,
                format!("{n} is outside {}..={} {unit}", range.start(), range.end()),
            ));
        }
        Ok((n, v.1))
    };
    let (interval, _) = integer(&keys::PROBE_INTERVAL, 1..=3600, "seconds")?;
    let (timeout, timeout_origin) = integer(&keys::PROBE_TIMEOUT, 10..=60_000, "milliseconds")?;
    let (failures, _) = integer(&keys::PROBE_FAILURES, 1..=32, "probes")?;
    let (window, window_origin) = integer(&keys::PROBE_WINDOW, 1..=32, "probes")?;
    if timeout >= interval * 1000 {
        return Err(invalid(
            &timeout_origin,
            keys::PROBE_TIMEOUT.name,
            format!(
                "{timeout} ms is not less than {} ({interval} s); a probe must end before the next",
                keys::PROBE_INTERVAL.name
            ),
        ));
    }
    if window < failures {
        return Err(invalid(
            &window_origin,
            keys::PROBE_WINDOW.name,
            format!(
                "{window} is less than {} ({failures}): no window could hold that many failures",
                keys::PROBE_FAILURES.name
            ),
        ));
    }
    Ok(ProbeSettings {
        interval: Duration::from_secs(interval),
        timeout: Duration::from_millis(timeout),
        failures: failures as usize,
        window: window as usize,
    })
}

fn invalid(origin: &Origin, key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.clone(),
        key: key.to_owned(),
        reason,
    }
}

fn parse_connection(
    (method, method_origin): (&str, &Origin),
    (socket, origin): (String, &Origin),
    [ca, cert, key]: [String; 3],
) -> Result<DockerConnection, ConfigError> {
    let key_name = keys::DOCKER_SOCKET.name;
    match method {
        "unix" | "socket" => {
            let path = socket.strip_prefix("unix://").unwrap_or(&socket).to_owned();
            if !path.starts_with('/') {
                return Err(invalid(
                    origin,
                    key_name,
                    format!("`{socket}` is not an absolute unix socket path"),
                ));
            }
            Ok(DockerConnection::Unix(path))
        }
        "tcp" | "tls" => {
            let address = socket.strip_prefix("tcp://").ok_or_else(|| {
                invalid(
                    origin,
                    key_name,
                    format!("`{socket}` must look like tcp://HOST:PORT for method {method}"),
                )
            })?;
            if address.is_empty() || !address.contains(':') {
                return Err(invalid(
                    origin,
                    key_name,
                    format!("`{socket}` has no HOST:PORT"),
                ));
            }
            if method == "tcp" {
                return Ok(DockerConnection::Tcp(socket));
            }
            if ca.is_empty() || cert.is_empty() || key.is_empty() {
                return Err(invalid(
                    origin,
                    keys::CONNECTION_METHOD.name,
                    "tls needs docker.tls_ca, docker.tls_cert and docker.tls_key".into(),
                ));
            }
            Ok(DockerConnection::Tls {
                address: socket,
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
            })
        }
        other => Err(ConfigError::Invalid {
            origin: method_origin.clone(),
            key: keys::CONNECTION_METHOD.name.into(),
            reason: format!("`{other}` is not one of unix, tcp, tls"),
        }),
    }
}

fn parse_api_version(text: &str) -> Result<Option<(usize, usize)>, String> {
    if text.is_empty() || text == "auto" {
        return Ok(None);
    }
    let parsed = text
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match parsed {
        Some((1, minor)) if minor >= 41 => Ok(Some((1, minor))),
        Some(_) => Err(format!(
            "API {text} is older than 1.41 (Docker 20.10), the oldest netwarp supports"
        )),
        None => Err(format!("`{text}` is not a version such as 1.41, or `auto`")),
    }
}

#[cfg(test)]
mod tests;
