//! What a reload (SIGHUP) applies to a running daemon, and which changed
//! keys wait for a restart: both read from the key table's [`Apply`].

use super::{Apply, Config, KEYS, KeySpec};
use crate::plan::PlanSettings;

/// The outcome of comparing a re-read configuration with the running one.
#[derive(Debug)]
pub struct Reloaded {
    /// What the planner reads from now on (every live key).
    pub settings: PlanSettings,
    /// Live keys whose value changed, applied by `settings`.
    pub applied: Vec<&'static str>,
    /// Restart-only keys whose value changed; the running value stays, so
    /// the caller warns, naming each.
    pub needs_restart: Vec<&'static str>,
}

impl Config {
    /// Compares `new` (re-read from the same sources) with this running
    /// configuration, which keeps its restart-only values.
    pub fn reload(&self, new: &Config) -> Reloaded {
        let changed = |spec: &KeySpec| {
            let value = |c: &Config| c.effective.get(spec.name).map(|(v, _)| v.clone());
            value(self) != value(new)
        };
        let changed_with = |apply: Apply| {
            KEYS.iter()
                .filter(|spec| spec.apply == apply)
                .filter(|spec| changed(spec))
                .map(|spec| spec.name)
                .collect()
        };
        Reloaded {
            settings: new.plan_settings(),
            applied: changed_with(Apply::Live),
            needs_restart: changed_with(Apply::Restart),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Layer, Origin};

    /// For every key, values that change it (with the keys a valid change
    /// needs alongside). A key missing here fails the test: classify it
    /// in the key table and give it a value.
    const CHANGES: &[(&str, &[(&str, &str)])] = &[
        (
            "docker_connection_method",
            &[
                ("docker_connection_method", "tcp"),
                ("docker.socket", "tcp://127.0.0.1:2375"),
            ],
        ),
        (
            "docker.socket",
            &[("docker.socket", "/run/other/docker.sock")],
        ),
        ("docker.api_version", &[("docker.api_version", "1.43")]),
        ("docker.tls_ca", &[("docker.tls_ca", "/etc/netwarp/ca.pem")]),
        (
            "docker.tls_cert",
            &[("docker.tls_cert", "/etc/netwarp/cert.pem")],
        ),
        (
            "docker.tls_key",
            &[("docker.tls_key", "/etc/netwarp/key.pem")],
        ),
        (
            "warp_container_name_pattern",
            &[("warp_container_name_pattern", "vpn-*")],
        ),
        (
            "target_container_label",
            &[("target_container_label", "other.target")],
        ),
        (
            "network_preference_label",
            &[("network_preference_label", "other.network")],
        ),
        ("rules_label", &[("rules_label", "other.rules")]),
        (
            "routing_rules",
            &[("routing_rules", "203.0.113.0/24,tcp:443")],
        ),
        ("on_warp_down", &[("on_warp_down", "bypass")]),
        ("exclude_own_networks", &[("exclude_own_networks", "false")]),
        ("dns", &[("dns", "warp")]),
        ("dns_label", &[("dns_label", "example.dns")]),
        ("allow_label", &[("allow_label", "example.allow")]),
        ("deny_label", &[("deny_label", "example.deny")]),
        ("dataplane.mode", &[("dataplane.mode", "routes")]),
        (
            "dataplane.dry_run_record",
            &[
                ("dataplane.mode", "dry-run"),
                ("dataplane.dry_run_record", "/tmp/netwarp-record.json"),
            ],
        ),
        (
            "dataplane.bpf_pin_dir",
            &[("dataplane.bpf_pin_dir", "/sys/fs/bpf/other")],
        ),
        (
            "dataplane.host_proc_dir",
            &[("dataplane.host_proc_dir", "/host/proc")],
        ),
        (
            "dataplane.ebpf_rules_capacity",
            &[("dataplane.ebpf_rules_capacity", "512")],
        ),
        (
            "dataplane.ebpf_peer_redirect",
            &[("dataplane.ebpf_peer_redirect", "false")],
        ),
        (
            "dataplane.ebpf_from_container_hook",
            &[("dataplane.ebpf_from_container_hook", "xdp")],
        ),
        (
            "dataplane.resync_interval_secs",
            &[("dataplane.resync_interval_secs", "7")],
        ),
        (
            "dataplane.host_guard_priority",
            &[("dataplane.host_guard_priority", "6000")],
        ),
        (
            "limits.max_prefixes_per_target",
            &[("limits.max_prefixes_per_target", "100")],
        ),
        ("probes.label", &[("probes.label", "other.probe")]),
        (
            "failover.hold_down_secs",
            &[("failover.hold_down_secs", "5")],
        ),
        ("probes.interval_secs", &[("probes.interval_secs", "9")]),
        ("probes.timeout_ms", &[("probes.timeout_ms", "900")]),
        ("probes.failures", &[("probes.failures", "2")]),
        ("probes.window", &[("probes.window", "7")]),
        (
            "rate_limits.enforcement",
            &[("rate_limits.enforcement", "policer")],
        ),
        (
            "rate_limits.egress_label",
            &[("rate_limits.egress_label", "other.egress")],
        ),
        (
            "rate_limits.ingress_label",
            &[("rate_limits.ingress_label", "other.ingress")],
        ),
        (
            "rate_limits.burst_label",
            &[("rate_limits.burst_label", "other.burst")],
        ),
        (
            "rate_limits.default_egress",
            &[("rate_limits.default_egress", "20mbit")],
        ),
        (
            "rate_limits.default_ingress",
            &[("rate_limits.default_ingress", "20mbit")],
        ),
        (
            "rate_limits.default_burst",
            &[("rate_limits.default_burst", "1mb")],
        ),
        ("logging.level", &[("logging.level", "debug")]),
        ("logging.format", &[("logging.format", "json")]),
        ("metrics.listen", &[("metrics.listen", "127.0.0.1:9999")]),
        ("control.socket", &[("control.socket", "/run/other.sock")]),
    ];

    fn changed(key: &str) -> Config {
        let (_, values) = CHANGES
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("`{key}` has no change in CHANGES; classify and add it"));
        let mut layer = Layer::default();
        for (k, v) in *values {
            layer.set(k, (*v).into(), Origin::Env("TEST".into()));
        }
        Config::resolve(&[layer]).unwrap_or_else(|e| panic!("`{key}`: {e}"))
    }

    #[test]
    fn a_reload_applies_every_live_key() {
        let running = Config::resolve(&[]).unwrap();
        for spec in KEYS.iter().filter(|s| s.apply == Apply::Live) {
            let reloaded = running.reload(&changed(spec.name));
            assert_eq!(reloaded.applied, [spec.name]);
            assert!(reloaded.needs_restart.is_empty(), "{}", spec.name);
            assert_ne!(
                reloaded.settings,
                running.plan_settings(),
                "`{}` is live, but the planner does not see its change",
                spec.name
            );
        }
    }

    #[test]
    fn a_reload_names_every_restart_only_key_it_cannot_apply() {
        let running = Config::resolve(&[]).unwrap();
        for spec in KEYS.iter().filter(|s| s.apply == Apply::Restart) {
            let reloaded = running.reload(&changed(spec.name));
            assert!(
                reloaded.needs_restart.contains(&spec.name),
                "`{}` changed without a warning: {:?}",
                spec.name,
                reloaded.needs_restart
            );
            assert!(reloaded.applied.is_empty(), "{}", spec.name);
            assert_eq!(reloaded.settings, running.plan_settings(), "{}", spec.name);
        }
    }

    #[test]
    fn the_guard_priority_needs_a_restart() {
        // Its rules are placed once at start; a silent change would leave
        // the guard where it was while the operator thinks it moved.
        let running = Config::resolve(&[]).unwrap();
        let reloaded = running.reload(&changed("dataplane.host_guard_priority"));
        assert_eq!(reloaded.needs_restart, ["dataplane.host_guard_priority"]);
    }

    #[test]
    fn the_prefix_limit_is_live_and_the_trie_capacity_needs_a_restart() {
        // The limit is the planner's alone; the tries are sized at load.
        let running = Config::resolve(&[]).unwrap();
        let reloaded = running.reload(&changed("limits.max_prefixes_per_target"));
        assert_eq!(reloaded.applied, ["limits.max_prefixes_per_target"]);
        assert_eq!(reloaded.settings.max_prefixes_per_target, 100);
        let reloaded = running.reload(&changed("dataplane.ebpf_rules_capacity"));
        assert_eq!(reloaded.needs_restart, ["dataplane.ebpf_rules_capacity"]);
        assert_eq!(reloaded.settings, running.plan_settings());
    }

    #[test]
    fn every_key_has_a_reload_test_value() {
        for spec in KEYS {
            changed(spec.name);
        }
        assert_eq!(
            CHANGES.len(),
            KEYS.len(),
            "CHANGES names a key the table lacks"
        );
    }

    #[test]
    fn an_unchanged_reload_applies_and_warns_nothing() {
        let running = Config::resolve(&[]).unwrap();
        let reloaded = running.reload(&Config::resolve(&[]).unwrap());
        assert!(reloaded.applied.is_empty() && reloaded.needs_restart.is_empty());
    }
}
