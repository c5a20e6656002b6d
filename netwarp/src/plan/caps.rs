//! Planning bandwidth caps: which running containers get which caps.
//!
//! Labels cap any container that carries them. The configured defaults cap
//! targets only: they are the containers netwarp manages, and a default
//! must not throttle every container on the host.

use crate::model::{
    Cap, Caps, Container, NetworkMode, Rate, RateError, World, parse_rate, parse_size,
};

/// How caps are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapEnforcement {
    /// A tbf qdisc per interface, configured by netlink: a real queue, so
    /// TCP is shaped instead of losing packets. Both dataplanes.
    #[default]
    Shaper,
    /// The BPF token bucket in the tc programs (`ebpf` dataplane only): no
    /// queue, so it drops. Measured: local TCP collapses to 10-60% of the
    /// cap, because a sub-millisecond RTT leaves TCP no window small
    /// enough to stay under a policer; fine for UDP and long-RTT paths.
    Policer,
}

/// Label names and defaults for caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapSettings {
    pub enforcement: CapEnforcement,
    pub egress_label: String,
    pub ingress_label: String,
    pub burst_label: String,
    pub default_egress: Option<Rate>,
    pub default_ingress: Option<Rate>,
    pub default_burst: Option<u64>,
}

impl Default for CapSettings {
    fn default() -> Self {
        Self {
            enforcement: CapEnforcement::Shaper,
            egress_label: "netwarp.egress-rate".into(),
            ingress_label: "netwarp.ingress-rate".into(),
            burst_label: "netwarp.burst".into(),
            default_egress: None,
            default_ingress: None,
            default_burst: None,
        }
    }
}

/// One container's caps, and how to find its interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapPlan {
    pub id: String,
    pub name: String,
    pub pid: Option<u32>,
    /// The container's MAC on each of its networks: one veth each, and
    /// the cap is shared by all of them.
    pub macs: Vec<String>,
    pub caps: Caps,
    /// Malformed labels, each naming the label; such a direction falls
    /// back to the configured default (targets) or stays uncapped.
    pub problems: Vec<String>,
}

/// Every running container that has a cap, sorted by id.
pub fn plan_caps(world: &World, settings: &super::PlanSettings) -> Vec<CapPlan> {
    let mut plans: Vec<CapPlan> = world
        .containers
        .iter()
        .filter(|c| c.running)
        .filter_map(|c| plan_one(c, settings))
        .collect();
    plans.sort_by(|a, b| a.id.cmp(&b.id));
    plans
}

fn plan_one(container: &Container, settings: &super::PlanSettings) -> Option<CapPlan> {
    let cap_settings = &settings.caps;
    let is_target = container.labels.contains_key(&settings.target_label);
    let mut problems = Vec::new();
    let mut label = |name: &str, parse: fn(&str) -> Result<u64, RateError>| {
        let value = container.labels.get(name)?;
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                problems.push(format!("label {name}=`{value}` is invalid: {error}"));
                None
            }
        }
    };
    let rate_bits = |s: &str| parse_rate(s).map(Rate::bits_per_second);
    let egress = label(&cap_settings.egress_label, rate_bits);
    let ingress = label(&cap_settings.ingress_label, rate_bits);
    let burst = label(&cap_settings.burst_label, parse_size);
    let defaults = |rate: Option<Rate>| rate.filter(|_| is_target);
    let burst = burst.or_else(|| cap_settings.default_burst.filter(|_| is_target));
    let cap = |labelled: Option<u64>, default: Option<Rate>| {
        labelled
            .map(Rate::from_bits_per_second)
            .or(defaults(default))
            .map(|rate| Cap::new(rate, burst))
    };
    let caps = Caps {
        egress: cap(egress, cap_settings.default_egress),
        ingress: cap(ingress, cap_settings.default_ingress),
    };
    if caps.is_empty() && problems.is_empty() {
        return None;
    }
    // A namespace that is not the container's own (the host's, another
    // container's) is never shaped: the plan only reports why.
    if container.network_mode != NetworkMode::Own {
        return Some(CapPlan {
            id: container.id.clone(),
            name: container.name.clone(),
            pid: None,
            macs: Vec::new(),
            caps: Caps::default(),
            problems: vec![format!(
                "{} runs with --network {}, and netwarp caps only a container in a \
                 namespace of its own on a Docker network; its caps are ignored",
                container.name, container.network_mode
            )],
        });
    }
    Some(CapPlan {
        id: container.id.clone(),
        name: container.name.clone(),
        pid: container.pid,
        macs: container
            .networks
            .values()
            .filter_map(|e| e.mac.clone())
            .collect(),
        caps,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use crate::model::SmallMap;

    use super::*;
    use crate::{
        model::{Endpoint, default_burst},
        plan::PlanSettings,
    };

    fn settings(caps: CapSettings) -> PlanSettings {
        PlanSettings {
            global_rules: Vec::new(),
            caps,
            ..crate::plan::tests::settings("203.0.113.0/24")
        }
    }

    fn container(name: &str, labels: &[(&str, &str)]) -> Container {
        let endpoint = |mac: &str| Endpoint {
            ipv4: None,
            ipv6: None,
            mac: Some(mac.into()),
            network_id: None,
            ..Endpoint::default()
        };
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            running: true,
            pid: Some(7),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: SmallMap::from([
                ("a".to_string(), endpoint("02:00:00:00:00:01")),
                ("b".to_string(), endpoint("02:00:00:00:00:02")),
            ]),
            ..Container::default()
        }
    }

    fn mbit(n: u64) -> Rate {
        Rate::from_bits_per_second(n * 1_000_000)
    }

    fn plan_of(containers: Vec<Container>, caps: CapSettings) -> Vec<CapPlan> {
        plan_caps(&World { containers }, &settings(caps))
    }

    #[test]
    fn a_container_outside_its_own_namespace_is_never_capped() {
        for mode in [
            NetworkMode::Host,
            NetworkMode::NoNetwork,
            NetworkMode::Container("x".into()),
        ] {
            let mut app = container("app", &[("netwarp.egress-rate", "20mbit")]);
            app.network_mode = mode.clone();
            let plans = plan_of(vec![app], CapSettings::default());
            assert_eq!(plans.len(), 1, "{mode:?}");
            assert_eq!(plans[0].pid, None, "no namespace to enter: {mode:?}");
            assert!(plans[0].caps.is_empty(), "{mode:?}");
            assert!(
                plans[0].problems[0].contains(&format!("--network {mode}")),
                "{:?}",
                plans[0].problems
            );
        }
    }

    #[test]
    fn labels_cap_any_container_on_every_network() {
        let plans = plan_of(
            vec![
                container(
                    "app",
                    &[
                        ("netwarp.egress-rate", "20mbit"),
                        ("netwarp.ingress-rate", "100mbit"),
                        ("netwarp.burst", "64kb"),
                    ],
                ),
                container("plain", &[]),
            ],
            CapSettings::default(),
        );
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        assert_eq!(plan.name, "app");
        assert_eq!(plan.macs, ["02:00:00:00:00:01", "02:00:00:00:00:02"]);
        assert_eq!(plan.caps.egress, Some(Cap::new(mbit(20), Some(64 << 10))));
        assert_eq!(plan.caps.ingress, Some(Cap::new(mbit(100), Some(64 << 10))));
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn defaults_cap_targets_only_and_labels_override_them() {
        let caps = CapSettings {
            default_egress: Some(mbit(10)),
            default_ingress: Some(mbit(50)),
            ..CapSettings::default()
        };
        let plans = plan_of(
            vec![
                container("bystander", &[]),
                container("target", &[("netwarp.target", "warp-a")]),
                container(
                    "tuned",
                    &[
                        ("netwarp.target", "warp-a"),
                        ("netwarp.egress-rate", "1gbit"),
                    ],
                ),
            ],
            caps,
        );
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["target", "tuned"]);
        assert_eq!(plans[0].caps.egress, Some(Cap::new(mbit(10), None)));
        assert_eq!(plans[0].caps.ingress, Some(Cap::new(mbit(50), None)));
        assert_eq!(plans[1].caps.egress, Some(Cap::new(mbit(1000), None)));
        assert_eq!(
            plans[1].caps.egress.unwrap().burst_bytes,
            default_burst(mbit(1000))
        );
    }

    #[test]
    fn malformed_labels_name_the_label_and_fall_back() {
        let caps = CapSettings {
            default_egress: Some(mbit(10)),
            ..CapSettings::default()
        };
        let plans = plan_of(
            vec![
                container(
                    "target",
                    &[
                        ("netwarp.target", "warp-a"),
                        ("netwarp.egress-rate", "fast"),
                        ("netwarp.ingress-rate", "20mbit"),
                        ("netwarp.burst", "10"),
                    ],
                ),
                container("other", &[("netwarp.ingress-rate", "20")]),
            ],
            caps,
        );
        let other = &plans[0];
        assert_eq!(other.name, "other");
        assert_eq!(other.caps, Caps::default());
        assert_eq!(
            other.problems,
            [
                "label netwarp.ingress-rate=`20` is invalid: `20` has no unit; write e.g. 20mbit (bits) or 20mbps (bytes)"
            ]
        );
        let target = &plans[1];
        assert_eq!(target.caps.egress, Some(Cap::new(mbit(10), None)));
        assert_eq!(target.caps.ingress, Some(Cap::new(mbit(20), None)));
        assert_eq!(
            target.problems,
            [
                "label netwarp.egress-rate=`fast` is invalid: `fast` is not a rate (expected e.g. 500kbit, 20mbit, 1gbit or 10mbps)",
                "label netwarp.burst=`10` is invalid: burst `10` is outside 1514..=1073741824 bytes",
            ]
        );
    }

    #[test]
    fn stopped_containers_have_no_caps() {
        let mut stopped = container("stopped", &[("netwarp.egress-rate", "1mbit")]);
        stopped.running = false;
        assert!(plan_of(vec![stopped], CapSettings::default()).is_empty());
    }
}
