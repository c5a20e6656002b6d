//! Observability: what the controller publishes after each reconcile, and
//! the two readers of it, the Prometheus endpoint ([`http`]) and the
//! control socket behind `netwarp status` ([`control`]).
//!
//! The controller never waits for a reader. At the end of every pass it
//! replaces one `Arc<Published>` in a `tokio::sync::watch` channel (a
//! pointer swap under a lock held for nanoseconds); readers clone the
//! `Arc` and work on their copy. Per-container counters are read by the
//! readers themselves at request time ([`counters`]), so a slow or stuck
//! scrape costs the controller nothing and a removed container's series
//! vanish with the next published snapshot.
pub mod admission;
pub mod control;
pub mod counters;
pub mod http;
pub mod metrics;
pub mod status;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tracing::{Span, debug, info, info_span};

use crate::{
    config::{Config, DataplaneMode},
    dataplane::host_guard::GuardCounts,
    model::short_id,
    plan::{Plan, TargetPlan},
};

pub use metrics::Metrics;

/// The soft limit on open files is raised to the hard one, up to this.
const FD_LIMIT_CEILING: u64 = 65_536;

/// What the controller knows about one warp container after a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarpView {
    pub name: String,
    /// Short (12 character) id; `None` when no such container runs.
    pub id: Option<String>,
    pub state: WarpState,
    /// Targets naming this warp.
    pub targets: usize,
    /// eBPF: its host-side veths that carry the warp program (all its
    /// networks, while a target is steered through it).
    pub ports: Vec<u32>,
    /// What its probe says, when it has a probe label and has been probed.
    pub probe: Option<ProbeReport>,
}

pub use crate::warp_probe::ProbeReport;

pub use crate::dataplane::sync::{FailureReason, MapUse, TargetInterfaces};

pub use crate::plan::WarpState;

/// One target after a pass: its plan, what the dataplane tied it to, and
/// whether programming it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetView {
    /// Shared with the pass's plan.
    pub plan: Arc<TargetPlan>,
    /// eBPF: the host-side veth carrying its policy, and the warp's veth.
    pub host_ifindex: Option<u32>,
    pub warp_ifindex: Option<u32>,
    /// eBPF: why routes in its namespace steer it instead, if they do.
    pub routed: Option<String>,
    /// Why its last programming failed, until one succeeds. Boxed, as
    /// are the caps: a view per target is published after every pass,
    /// and few targets have either.
    pub failure: Option<Box<TargetFailure>>,
    /// The bandwidth caps planned for it; `None`: uncapped.
    pub caps: Option<Box<crate::model::Caps>>,
}

impl TargetView {
    /// The bandwidth caps planned for it (empty: uncapped).
    pub fn planned_caps(&self) -> crate::model::Caps {
        self.caps.as_deref().copied().unwrap_or_default()
    }
}

/// A target whose last programming failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetFailure {
    pub error: String,
    pub reason: FailureReason,
    /// What is in the kernel holds its traffic closed meanwhile (see
    /// the README, "Target states").
    pub held_closed: bool,
}

/// The state the controller publishes after each pass.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub pass: u64,
    pub finished_at: Option<SystemTime>,
    pub duration: Option<Duration>,
    pub warps: Vec<WarpView>,
    pub targets: Vec<TargetView>,
    /// The bridge guards of this pass.
    pub guards: Vec<GuardView>,
    /// How full each eBPF map is (empty for the other dataplanes).
    pub maps: Vec<MapUse>,
    /// routes: what the host guard holds, as last written.
    pub host_guard: Option<GuardCounts>,
    /// SIGHUP reloads since start, and what the last one did.
    pub reloads: u64,
    pub last_reload: Option<ReloadView>,
}

/// What one SIGHUP reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadView {
    pub at: SystemTime,
    /// Live keys whose value changed: applied from the next pass on.
    pub applied: Vec<String>,
    /// Restart-only keys whose value changed: the running value is kept.
    pub needs_restart: Vec<String>,
    /// Why the file was rejected (nothing changed), if it was.
    pub error: Option<String>,
}

/// One bridge guard: the network it covers and its bridge interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardView {
    pub network: String,
    pub bridge: String,
}

/// Facts about the running daemon that do not change per pass.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    pub mode: DataplaneMode,
    pub docker_endpoint: String,
    pub metrics_listen: Option<SocketAddr>,
    pub control_socket: PathBuf,
    pub started: Instant,
}

/// The controller's side: metrics it updates and the snapshot it publishes.
pub struct Telemetry {
    metrics: Metrics,
    published: watch::Sender<Arc<Published>>,
    pass: u64,
    ever_connected: bool,
    /// Removes the control socket when the daemon exits.
    _socket: Option<control::SocketGuard>,
}

impl Telemetry {
    /// Metrics and a snapshot nobody reads (tests, and before `start`).
    pub fn disabled() -> Self {
        Self {
            metrics: Metrics::new(DataplaneMode::Routes),
            published: watch::Sender::new(Arc::default()),
            pass: 0,
            ever_connected: false,
            _socket: None,
        }
    }

    /// Binds the metrics endpoint and the control socket and serves them
    /// from their own tasks. Fails when either cannot be bound.
    pub async fn start(config: &Config, mode: DataplaneMode) -> anyhow::Result<Self> {
        let metrics = Metrics::new(mode);
        let published = watch::Sender::new(Arc::<Published>::default());
        let counters = Arc::new(counters::CounterReader::new(mode, &config.bpf_pin_dir));
        let mut info = DaemonInfo {
            mode,
            docker_endpoint: crate::docker::describe(&config.docker),
            metrics_listen: None,
            control_socket: config.control_socket.clone(),
            started: Instant::now(),
        };
        let listener = match config.metrics_listen {
            Some(address) => {
                let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {address} for metrics (metrics.listen): {e}; \
                         choose another address, or `off`"
                    )
                })?;
                let bound = listener.local_addr()?;
                info!(listen = %bound, "metrics endpoint listening on http://{bound}/metrics");
                info.metrics_listen = Some(bound);
                Some(listener)
            }
            None => {
                info!("metrics endpoint disabled (metrics.listen = off)");
                None
            }
        };
        let (socket, guard) = control::bind(&config.control_socket)?;
        info!(socket = %config.control_socket.display(), "control socket listening");
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            published: published.subscribe(),
            counters,
            info,
        });
        // Each endpoint may hold a share of the descriptors; the rest stay
        // for the controller.
        let fd_limit = admission::raise_fd_limit(FD_LIMIT_CEILING);
        if let Some(listener) = listener {
            let bound = admission::bound(http::MAX_CONNECTIONS, http::FD_SHARE, fd_limit);
            debug!(bound, fd_limit, "metrics endpoint: connection bound");
            tokio::spawn(http::serve(
                listener,
                shared.clone(),
                admission::Admission::new(bound),
            ));
        }
        let bound = admission::bound(control::MAX_CONNECTIONS, control::FD_SHARE, fd_limit);
        debug!(bound, fd_limit, "control socket: connection bound");
        tokio::spawn(control::serve(
            socket,
            shared,
            admission::Admission::new(bound),
        ));
        Ok(Self {
            metrics,
            published,
            pass: 0,
            ever_connected: false,
            _socket: Some(guard),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The snapshot the last pass published.
    pub fn latest(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// Starts the next pass: its number, and the span its logs go under.
    pub fn next_pass(&mut self) -> Span {
        self.pass += 1;
        info_span!("reconcile", pass = self.pass)
    }

    /// Connected to Docker; every connection after the first is a reconnect.
    pub fn docker_connected(&mut self) {
        if self.ever_connected {
            self.metrics.docker_reconnects.inc();
        }
        self.ever_connected = true;
        self.metrics.docker_connected.set(1);
    }

    pub fn docker_disconnected(&self) {
        self.metrics.docker_connected.set(0);
    }

    /// Records a reload and shows it at once: a rejected file starts no pass.
    pub fn reloaded(&mut self, reload: ReloadView) {
        let result = if reload.error.is_some() {
            "rejected"
        } else {
            "applied"
        };
        (self.metrics.config_reloads)
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        if reload.error.is_none() {
            let pending = i64::try_from(reload.needs_restart.len()).unwrap_or(i64::MAX);
            self.metrics.config_restart_pending.set(pending);
        }
        self.published.send_modify(|published| {
            let published = Arc::make_mut(published);
            published.reloads += 1;
            published.last_reload = Some(reload);
        });
    }

    /// Publishes the outcome of a pass.
    pub fn publish(&mut self, outcome: PassOutcome<'_>) {
        let PassOutcome {
            plan,
            guards,
            host_guard,
            interfaces,
            maps,
            failures,
            probes,
            duration,
        } = outcome;
        // Warp views carry short ids.
        let probes: HashMap<String, ProbeReport> = (probes.into_iter())
            .map(|(id, report)| (crate::model::short_id(&id).to_owned(), report))
            .collect();
        self.metrics
            .reconcile_duration
            .observe(duration.as_secs_f64());
        let caps: HashMap<&str, crate::model::Caps> =
            plan.caps.iter().map(|c| (c.id.as_str(), c.caps)).collect();
        // The warp-side ports of each warp's targets (eBPF only).
        let mut ports_of: HashMap<&str, Vec<u32>> = HashMap::new();
        for target in &plan.targets {
            if let Some(interface) = interfaces.get(&target.id) {
                (ports_of.entry(target.warp.as_str()).or_default())
                    .extend(interface.warp_ports.iter().copied());
            }
        }
        let published = Published {
            pass: self.pass,
            finished_at: Some(SystemTime::now()),
            duration: Some(duration),
            warps: warp_views(plan)
                .into_iter()
                .map(|mut warp| {
                    let mut ports = ports_of
                        .get(warp.name.as_str())
                        .cloned()
                        .unwrap_or_default();
                    ports.sort_unstable();
                    ports.dedup();
                    warp.ports = ports;
                    warp.probe = (warp.id.as_ref()).and_then(|id| probes.get(id).cloned());
                    warp
                })
                .collect(),
            targets: plan
                .targets
                .iter()
                .map(|plan| {
                    let interface = interfaces.get(&plan.id);
                    TargetView {
                        plan: Arc::clone(plan),
                        host_ifindex: interface.map(|i| i.host_ifindex).filter(|i| *i != 0),
                        routed: interface.and_then(|i| i.routed.clone()),
                        warp_ifindex: interface.map(|i| i.warp_ifindex).filter(|i| *i != 0),
                        failure: failures.get(&plan.id).cloned().map(Box::new),
                        caps: (caps.get(plan.id.as_str()))
                            .filter(|caps| !caps.is_empty())
                            .map(|caps| Box::new(*caps)),
                    }
                })
                .collect(),
            guards,
            host_guard,
            reloads: self.published.borrow().reloads,
            last_reload: self.published.borrow().last_reload.clone(),
            maps,
        };
        self.published.send_replace(Arc::new(published));
    }
}

/// What one reconcile pass did, for [`Telemetry::publish`].
pub struct PassOutcome<'a> {
    pub plan: &'a Plan,
    pub guards: Vec<GuardView>,
    /// routes: what the host guard holds, as last written.
    pub host_guard: Option<GuardCounts>,
    /// The eBPF interfaces, by target id: host veth, warp veth.
    pub interfaces: HashMap<String, TargetInterfaces>,
    /// How full each eBPF map is.
    pub maps: Vec<MapUse>,
    /// Why a target's last programming failed, by target id.
    pub failures: HashMap<String, TargetFailure>,
    /// The warps' probe reports, by warp container id.
    pub probes: HashMap<String, ProbeReport>,
    pub duration: Duration,
}

/// Everything the readers (metrics and control socket) share.
pub struct Shared {
    pub metrics: Metrics,
    pub published: watch::Receiver<Arc<Published>>,
    pub counters: Arc<counters::CounterReader>,
    pub info: DaemonInfo,
}

impl Shared {
    /// The latest snapshot; the channel's lock is held only to clone the Arc.
    pub fn snapshot(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }
}

/// The plan's warps, as status and metrics show them.
pub fn warp_views(plan: &Plan) -> Vec<WarpView> {
    (plan.warps.iter())
        .map(|warp| WarpView {
            name: warp.name.clone(),
            id: warp.id.clone(),
            state: warp.state,
            targets: warp.targets,
            ports: Vec::new(),
            probe: None,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        model::{Container, Health, NetworkMode, World},
        plan::{CapSettings, OnWarpDown, PlanSettings},
    };

    /// Labels `t` (target), `n` (network), `r` (rules); warps `warp-*`.
    pub(crate) fn settings() -> PlanSettings {
        PlanSettings {
            warp_name_pattern: "warp-*".into(),
            target_label: "t".into(),
            network_label: "n".into(),
            rules_label: "r".into(),
            global_rules: Vec::new(),
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

    fn container(name: &str, health: Health, labels: &[(&str, &str)]) -> Container {
        Container {
            id: format!("{name:0>20}"),
            name: name.into(),
            running: true,
            health,
            pid: Some(1),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: Default::default(),
            network_mode: NetworkMode::Own,
        }
    }

    #[test]
    fn only_connections_after_the_first_are_reconnects() {
        let mut telemetry = Telemetry::disabled();
        telemetry.docker_connected();
        assert_eq!(telemetry.metrics().docker_reconnects.get(), 0);
        assert_eq!(telemetry.metrics().docker_connected.get(), 1);
        telemetry.docker_disconnected();
        assert_eq!(telemetry.metrics().docker_connected.get(), 0);
        telemetry.docker_connected();
        telemetry.docker_disconnected();
        telemetry.docker_connected();
        assert_eq!(telemetry.metrics().docker_reconnects.get(), 2);
    }

    #[test]
    fn a_pass_publishes_what_readers_see() {
        let mut telemetry = Telemetry::disabled();
        let reader = telemetry.published.subscribe();
        let world = World {
            containers: vec![
                container("warp-a", Health::None, &[]),
                container("app1", Health::None, &[("t", "warp-a")]),
            ],
        };
        let plan = crate::plan::plan(&world, &settings());
        let _span = telemetry.next_pass();
        let app = plan.targets[0].id.clone();
        telemetry.publish(PassOutcome {
            plan: &plan,
            guards: Vec::new(),
            host_guard: None,
            interfaces: HashMap::from([(
                app.clone(),
                TargetInterfaces {
                    host_ifindex: 7,
                    ..TargetInterfaces::default()
                },
            )]),
            probes: HashMap::new(),
            maps: Vec::new(),
            failures: HashMap::from([(
                app,
                TargetFailure {
                    error: "boom".to_owned(),
                    reason: FailureReason::MapFull,
                    held_closed: true,
                },
            )]),
            duration: Duration::from_millis(3),
        });
        let seen = reader.borrow().clone();
        assert_eq!(seen.pass, 1);
        assert_eq!(seen.duration, Some(Duration::from_millis(3)));
        assert_eq!(seen.targets.len(), 1);
        assert_eq!(seen.targets[0].host_ifindex, Some(7));
        assert_eq!(seen.targets[0].warp_ifindex, None, "0 means no warp veth");
        let failure = seen.targets[0]
            .failure
            .as_ref()
            .expect("the failure is published");
        assert_eq!(failure.error, "boom");
        assert_eq!(seen.warps.len(), 1);
        let text = metrics::render(
            telemetry.metrics(),
            seen,
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
        )
        .unwrap();
        assert!(
            text.contains("netwarp_reconcile_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"warp="warp-a",state="failed"} 1"#),
            "a failed target is not shown as its plan's state: {text}"
        );
        assert!(
            text.contains(r#"netwarp_target_held_closed{container="app1""#),
            "{text}"
        );
        assert!(
            text.contains(r#"netwarp_targets{state="failed"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn warps_are_pattern_matches_and_named_ones() {
        let world = World {
            containers: vec![
                container("warp-a", Health::None, &[]),
                container("warp-sick", Health::Unhealthy, &[]),
                container("vpn", Health::None, &[]),
                container("app1", Health::None, &[("t", "warp-a")]),
                container("app2", Health::None, &[("t", "warp-gone")]),
                container("app3", Health::None, &[("t", "vpn")]),
                container("plain", Health::None, &[]),
            ],
        };
        let plan = crate::plan::plan(&world, &settings());
        let views = warp_views(&plan);
        let summary: Vec<(&str, &str, usize, bool)> = views
            .iter()
            .map(|w| (w.name.as_str(), w.state.as_str(), w.targets, w.id.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("vpn", "not-a-warp", 1, true),
                ("warp-a", "up", 1, true),
                ("warp-gone", "missing", 1, false),
                ("warp-sick", "unhealthy", 0, true),
            ]
        );
    }
}
