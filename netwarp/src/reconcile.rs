//! The level-triggered controller. Docker events only mark the world dirty;
//! each reconcile lists every container (inspecting only the targets and
//! warps whose cached inspect may be stale, see [`crate::inventory`]),
//! plans from scratch, diffs against what is installed, and applies the
//! difference. A periodic resync re-inspects everything and is the safety
//! net, so lost events, reconnects and restarts cannot corrupt state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bollard::Docker;
use futures_util::StreamExt as _;
use netwarp_common::{GuardAllowKey, WarpPeerKey};
use tokio::{signal::unix::SignalKind, sync::mpsc};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{
    cli::EXIT_MISSING_PRIVILEGE,
    config::{Config, DataplaneMode},
    dataplane::{
        caps::{CapsError, ProgrammedCaps, interfaces, program_ebpf, program_qdiscs},
        dry_run::DryRunDataplane,
        ebpf::{
            EbpfDataplane, EbpfError,
            compile::{CompileError, CompiledPrefix, compile, guard_allow_keys},
            interface_name, warp_peer_key,
        },
        host_guard::{program_host_guards, remove_host_guards, set_guard_priority},
        qdisc::remove_every_tbf,
        routes::{
            NamespaceClaims, NamespaceHandle, OwnedState, RoutesError, desired_state, diff,
            parse_mac,
        },
    },
    docker::{self, Backoff},
    inventory::Inventory,
    model::{Caps, World},
    plan::{CapEnforcement, CapPlan, GuardPlan, PlanSettings, TargetPlan, TargetState, plan},
    privileges::{CapabilitySet, EBPF_CAPABILITIES, MissingCapabilities, ROUTES_CAPABILITIES},
    telemetry::{GuardView, TargetInterfaces, Telemetry},
};

/// Why one target could not be programmed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Endpoint(String),
}

/// The dataplane the reconciler programs.
pub enum Dataplane {
    Routes,
    Ebpf(Box<EbpfDataplane>),
    /// A simulation that programs nothing; see [`crate::dataplane::dry_run`].
    DryRun(DryRunDataplane),
}

/// Coalescing window: events arriving within it cause one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the event loop stopped.
enum LoopExit {
    Shutdown,
    ConnectionLost(String),
}

/// Re-reads the configuration from the same sources (for SIGHUP).
pub type Reload = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// The signals the daemon acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads. The programmed
/// state stays in place on exit, so targets stay steered (or blocked) while
/// it is down.
pub async fn run_daemon(config: Config, reload: Reload) -> anyhow::Result<ExitCode> {
    set_guard_priority(config.host_guard_priority);
    // dry-run touches no kernel state, so it needs no capabilities. An
    // explicit ebpf mode names every capability it lacks at once.
    let needed = match config.dataplane {
        DataplaneMode::Ebpf => EBPF_CAPABILITIES,
        _ => ROUTES_CAPABILITIES,
    };
    if config.dataplane != DataplaneMode::DryRun
        && let Some(code) = check_privileges(needed)
    {
        return Ok(code);
    }
    let (mode, mut dataplane) = match config.dataplane {
        DataplaneMode::DryRun => {
            warn!(
                record = ?config.dry_run_record,
                "dataplane dry-run: SIMULATION ONLY; nothing will be programmed, no target is steered or blocked"
            );
            (
                DataplaneMode::DryRun,
                Dataplane::DryRun(DryRunDataplane::new(config.dry_run_record.clone())),
            )
        }
        DataplaneMode::Routes => (DataplaneMode::Routes, Dataplane::Routes),
        DataplaneMode::Auto => choose_automatically(&config),
        DataplaneMode::Ebpf => {
            if let Some(code) = check_privileges(EBPF_CAPABILITIES) {
                return Ok(code);
            }
            let ebpf =
                EbpfDataplane::load_pinned_logging(&config.bpf_pin_dir, debug_logs(&config))?;
            (DataplaneMode::Ebpf, Dataplane::Ebpf(Box::new(ebpf)))
        }
    };
    info!(mode = %mode, docker = %docker::describe(&config.docker), "netwarp starting");
    if let Dataplane::Ebpf(ebpf) = &mut dataplane
        && let Some(logger) = ebpf.take_logger()
    {
        forward_program_logs(logger);
    }
    let telemetry = Telemetry::start(&config, mode).await?;
    let mut reconciler =
        Reconciler::new(config.plan_settings(), dataplane).with_telemetry(telemetry);
    let mut signals = Signals {
        term: tokio::signal::unix::signal(SignalKind::terminate())?,
        int: tokio::signal::unix::signal(SignalKind::interrupt())?,
        hup: tokio::signal::unix::signal(SignalKind::hangup())?,
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let connected = tokio::select! {
            result = docker::connect(&config.docker, config.docker_api_version) => result,
            _ = signals.term.recv() => return Ok(shutdown("SIGTERM")),
            _ = signals.int.recv() => return Ok(shutdown("SIGINT")),
        };
        let exit = match connected {
            Ok(client) => {
                backoff.reset();
                reconciler.telemetry.docker_connected();
                info!("connected to Docker; resyncing");
                run_connected(&client, &config, &mut reconciler, &mut signals, &reload).await
            }
            Err(e) => LoopExit::ConnectionLost(e.to_string()),
        };
        match exit {
            LoopExit::Shutdown => return Ok(ExitCode::SUCCESS),
            LoopExit::ConnectionLost(reason) => {
                reconciler.telemetry.docker_disconnected();
                reconciler.forget_guard_sources().await;
                let delay = backoff.next_delay();
                warn!(%reason, retry_in_ms = delay.as_millis() as u64, "Docker connection lost; keeping the dataplane as it is and reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signals.term.recv() => return Ok(shutdown("SIGTERM")),
                    _ = signals.int.recv() => return Ok(shutdown("SIGINT")),
                }
            }
        }
    }
}

/// `auto`: the eBPF dataplane when the privileges and a real load allow
/// it, else routes, saying why.
fn choose_automatically(config: &Config) -> (DataplaneMode, Dataplane) {
    let missing = CapabilitySet::current()
        .map(|caps| caps.missing(EBPF_CAPABILITIES))
        .unwrap_or_else(|_| EBPF_CAPABILITIES.to_vec());
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
        info!(missing = %names.join(", "), "dataplane auto: using routes, eBPF lacks capabilities");
        return (DataplaneMode::Routes, Dataplane::Routes);
    }
    match EbpfDataplane::load_pinned_logging(&config.bpf_pin_dir, debug_logs(config)) {
        Ok(ebpf) => {
            info!(pins = %config.bpf_pin_dir.display(), "dataplane auto: using ebpf");
            (DataplaneMode::Ebpf, Dataplane::Ebpf(Box::new(ebpf)))
        }
        Err(e) => {
            info!(error = %e, "dataplane auto: using routes, the eBPF programs did not load");
            (DataplaneMode::Routes, Dataplane::Routes)
        }
    }
}

fn debug_logs(config: &Config) -> bool {
    matches!(config.log_level.as_str(), "debug" | "trace")
}

/// Forwards the eBPF programs' aya-log records to the log, as they come.
fn forward_program_logs(logger: crate::dataplane::ebpf::ProgramLogger) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and
    // the same until the AsyncFd (which owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let logger = match registered {
        Ok(logger) => logger,
        Err(e) => {
            warn!(error = %e, "cannot poll the eBPF programs' log");
            return;
        }
    };
    tokio::spawn(async move {
        let mut logger = logger;
        loop {
            let Ok(mut ready) = logger.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

fn shutdown(signal: &str) -> ExitCode {
    info!(signal, "shutting down; programmed state stays in place");
    ExitCode::SUCCESS
}

fn check_privileges(needed: &[crate::privileges::Capability]) -> Option<ExitCode> {
    let missing = match CapabilitySet::current() {
        Ok(caps) => caps.missing(needed),
        Err(e) => {
            warn!(error = %e, "cannot read capabilities; continuing");
            return None;
        }
    };
    if missing.is_empty() {
        return None;
    }
    error!("{}", MissingCapabilities(missing));
    Some(ExitCode::from(EXIT_MISSING_PRIVILEGE))
}

async fn run_connected(
    client: &Docker,
    config: &Config,
    reconciler: &mut Reconciler,
    signals: &mut Signals,
    reload: &Reload,
) -> LoopExit {
    // The event reader only forwards "something changed", with the event's
    // own time for latency measurements; it never carries state.
    let (dirty_tx, mut dirty_rx) = mpsc::channel::<(String, SystemTime)>(1024);
    // Set when an event found the channel full: its id is lost, so the next
    // reconcile must re-inspect everything instead of only what is pending.
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflowed_reader = Arc::clone(&overflowed);
    reconciler.reconnected();
    let mut events = docker::events(client);
    let metrics = reconciler.telemetry.metrics().clone();
    let reader = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let kind = event.typ.map(|t| t.to_string()).unwrap_or_default();
                    metrics.docker_event(&kind, event.action.as_deref().unwrap_or_default());
                    // A network event's actor is the network; the container
                    // it concerns is an attribute.
                    let id = event
                        .actor
                        .and_then(|a| {
                            a.attributes
                                .and_then(|mut attrs| attrs.remove("container"))
                                .or(a.id)
                        })
                        .unwrap_or_default();
                    debug!(action = event.action.as_deref().unwrap_or(""), container = %id, "docker event");
                    // Docker's own timestamp, so latency covers the whole path.
                    let at = event
                        .time_nano
                        .and_then(|n| u64::try_from(n).ok())
                        .map_or_else(SystemTime::now, |n| UNIX_EPOCH + Duration::from_nanos(n));
                    // A full channel already guarantees a reconcile.
                    if dirty_tx.try_send((id, at)).is_err() {
                        overflowed_reader.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
        "the event stream ended".to_owned()
    });
    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: HashMap<String, SystemTime> = HashMap::new();
    let exit = loop {
        tokio::select! {
            _ = resync.tick() => reconciler.resync_all(),
            event = dirty_rx.recv() => {
                let Some((id, at)) = event else {
                    break LoopExit::ConnectionLost("the event reader stopped".into());
                };
                pending.entry(id).or_insert(at);
                tokio::time::sleep(DEBOUNCE).await;
                while let Ok((id, at)) = dirty_rx.try_recv() {
                    pending.entry(id).or_insert(at);
                }
            }
            _ = signals.term.recv() => break shutdown_exit("SIGTERM"),
            _ = signals.int.recv() => break shutdown_exit("SIGINT"),
            _ = signals.hup.recv() => reload_config(config, reconciler, reload),
        }
        if reader.is_finished() {
            break LoopExit::ConnectionLost("the event stream ended".into());
        }
        if overflowed.swap(false, Ordering::Relaxed) {
            reconciler.resync_all();
        }
        let span = reconciler.telemetry.next_pass();
        if let Err(e) = reconciler
            .reconcile(client, &mut pending)
            .instrument(span)
            .await
        {
            // Losing Docker mid-reconcile: reconnect and resync.
            break LoopExit::ConnectionLost(e.to_string());
        }
    };
    reader.abort();
    exit
}

/// SIGHUP: re-reads the configuration and applies what a running daemon
/// can (labels, rules, on_warp_down, caps) on the next pass, which follows
/// at once. Caps change in place, so connections are not dropped. A bad
/// file changes nothing.
fn reload_config(running: &Config, reconciler: &mut Reconciler, reload: &Reload) {
    let new = match reload() {
        Ok(new) => new,
        Err(e) => {
            error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; keeping the running one");
            return;
        }
    };
    let reloaded = running.reload(&new);
    for key in &reloaded.needs_restart {
        warn!(
            key,
            "SIGHUP: this key changed, but only applies at start; restart netwarp to apply it"
        );
    }
    reconciler.update_settings(reloaded.settings);
    info!(applied = ?reloaded.applied, "SIGHUP: configuration reloaded");
}

fn shutdown_exit(signal: &str) -> LoopExit {
    shutdown(signal);
    LoopExit::Shutdown
}

/// Remembers the last logged state per target, so that a classification
/// is logged when it changes, not on every resync.
pub struct Reconciler {
    settings: PlanSettings,
    dataplane: Dataplane,
    last_state: HashMap<String, TargetState>,
    /// eBPF: what was last written per target, to skip unchanged rewrites.
    last_ebpf: HashMap<String, EbpfTarget>,
    /// eBPF: each bridge guard last written, by bridge ifindex.
    last_guards: HashMap<u32, EbpfGuard>,
    /// routes: the guards last planned, by bridge.
    last_host_guards: Vec<(String, GuardPlan)>,
    /// Caps last programmed, by container id.
    last_caps: HashMap<String, ProgrammedCaps>,
    /// Cap label problems last logged, by container id.
    last_cap_problems: HashMap<String, Vec<String>>,
    /// routes: a netlink socket in the host's namespace, for the qdiscs
    /// on host-side veths; opened on first use.
    host_netlink: Option<rtnetlink::Handle>,
    /// The container snapshot, with its cache of inspects.
    inventory: Inventory,
    /// No pass has completed since the last (re)connect.
    initial_pass: bool,
    /// Metrics, and the snapshot `netwarp status` and scrapes read.
    telemetry: Telemetry,
}

/// What the eBPF dataplane holds for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EbpfTarget {
    host_ifindex: u32,
    warp_ifindex: u32,
    warp_mac: [u8; 6],
    rows: Vec<CompiledPrefix>,
    /// While steered: the warp's host-side veths on all its networks, and
    /// the target's addresses on each of them (to its veth).
    warp_ports: Vec<u32>,
    peers: Vec<(WarpPeerKey, u32)>,
}

/// What the eBPF dataplane holds for one bridge guard.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EbpfGuard {
    rows: Vec<CompiledPrefix>,
    allowed: BTreeSet<GuardAllowKey>,
}

impl Reconciler {
    pub fn new(settings: PlanSettings, dataplane: Dataplane) -> Self {
        Self {
            inventory: Inventory::new(&settings),
            settings,
            dataplane,
            last_state: HashMap::new(),
            last_ebpf: HashMap::new(),
            last_guards: HashMap::new(),
            last_host_guards: Vec::new(),
            last_caps: HashMap::new(),
            last_cap_problems: HashMap::new(),
            host_netlink: None,
            initial_pass: true,
            telemetry: Telemetry::disabled(),
        }
    }

    pub fn with_telemetry(self, telemetry: Telemetry) -> Self {
        Self { telemetry, ..self }
    }

    /// New planner settings (a reload); the next pass re-inspects everything.
    pub fn update_settings(&mut self, settings: PlanSettings) {
        self.inventory = Inventory::new(&settings);
        self.settings = settings;
    }

    /// The next pass re-inspects every target and warp (the periodic
    /// resync, or events were lost).
    pub fn resync_all(&mut self) {
        self.inventory.refresh_all();
    }

    /// Docker is gone, perhaps restarting: every container may come back
    /// with another address, and a target with a known one. Until the next
    /// pass the guards know no source: they keep their prefixes and drop
    /// their allowed sources and warp MACs (fail closed).
    pub async fn forget_guard_sources(&mut self) {
        match &mut self.dataplane {
            Dataplane::Ebpf(ebpf) => {
                for (ifindex, guard) in &mut self.last_guards {
                    if guard.allowed.is_empty() {
                        continue;
                    }
                    match ebpf.set_guard(*ifindex, &guard.rows, &BTreeSet::new()) {
                        Ok(()) => guard.allowed.clear(),
                        Err(e) => {
                            warn!(ifindex, error = %e, "withdrawing a guard's sources failed")
                        }
                    }
                }
            }
            Dataplane::Routes => {
                let mut changed = false;
                for (_, guard) in &mut self.last_host_guards {
                    changed |= !guard.allowed_sources.is_empty();
                    guard.allowed_sources.clear();
                }
                if changed {
                    let guards: Vec<(String, &GuardPlan)> = self
                        .last_host_guards
                        .iter()
                        .map(|(bridge, guard)| (bridge.clone(), guard))
                        .collect();
                    program_guards_routes(&mut self.host_netlink, &guards).await;
                }
            }
            Dataplane::DryRun(_) => {}
        }
    }

    /// A new Docker connection: forget every cached inspect.
    pub fn reconnected(&mut self) {
        self.inventory.forget();
        self.initial_pass = true;
    }

    /// One full pass. Per-target failures are logged and retried on the
    /// next pass; only a Docker failure aborts the pass.
    pub async fn reconcile(
        &mut self,
        client: &Docker,
        pending: &mut HashMap<String, SystemTime>,
    ) -> Result<(), docker::DockerError> {
        let started = Instant::now();
        let (world, snapshot) = self.inventory.snapshot(client, pending).await?;
        let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
        let plan = plan(&world, &self.settings);
        let mut seen = HashSet::new();
        let mut failures = HashMap::new();
        // Targets an event named (or whose warp it named) go first, so the
        // latency of an event does not grow with the number of targets;
        // every other target is still checked in the same pass.
        let ids_by_name: HashMap<&str, &str> = world
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.id.as_str()))
            .collect();
        let urgent = |t: &TargetPlan| {
            pending.contains_key(&t.id)
                || ids_by_name
                    .get(t.warp.as_str())
                    .is_some_and(|id| pending.contains_key(*id))
        };
        let mut order: Vec<&TargetPlan> = plan.targets.iter().collect();
        order.sort_by_key(|t| !urgent(t));
        // Each namespace is written for one container per pass, and the
        // host's never (NamespaceHandle refuses it).
        let mut claims = NamespaceClaims::new();
        for target in order {
            seen.insert(target.id.clone());
            let span = info_span!("target", container = %target.name, id = %short(&target.id));
            self.log_classification(target);
            let programmed = match &mut self.dataplane {
                Dataplane::Routes => program_target(&mut claims, target)
                    .instrument(span.clone())
                    .await
                    .map_err(TargetError::from),
                Dataplane::Ebpf(ebpf) => {
                    program_target_ebpf(ebpf, &mut self.last_ebpf, &mut claims, target)
                        .instrument(span.clone())
                        .await
                }
                Dataplane::DryRun(dry) => Ok(dry.program(target)),
            };
            match programmed {
                Ok(changed) => {
                    let _enter = span.enter();
                    if let Some(event_at) = pending.remove(&target.id) {
                        let latency = SystemTime::now()
                            .duration_since(event_at)
                            .unwrap_or_default();
                        let metrics = self.telemetry.metrics();
                        metrics.event_latency.observe(latency.as_secs_f64());
                        info!(
                            changed,
                            latency_ms = latency.as_secs_f64() * 1e3,
                            "target programmed after event"
                        );
                    } else if changed {
                        info!("target programmed on resync");
                    }
                }
                Err(e) => {
                    let _enter = span.enter();
                    self.telemetry.metrics().target_failures.inc();
                    failures.insert(target.id.clone(), e.to_string());
                    warn!(error = %e, "programming the target failed; will retry on the next reconcile");
                }
            }
        }
        self.last_state.retain(|id, _| seen.contains(id));
        let (guards, guards_complete) = self.inventory.guard_bridges(client, &plan.guards).await;
        match &mut self.dataplane {
            Dataplane::Ebpf(ebpf) => {
                program_guards_ebpf(ebpf, &mut self.last_guards, &guards, guards_complete);
                if self.initial_pass {
                    // A routes-mode run may have left its host rules.
                    remove_routes_guards(&mut self.host_netlink).await;
                }
            }
            Dataplane::Routes if guards_complete => {
                program_guards_routes(&mut self.host_netlink, &guards).await;
                self.last_host_guards = guards
                    .iter()
                    .map(|(bridge, guard)| (bridge.clone(), (*guard).clone()))
                    .collect();
            }
            // A guard whose network could not be inspected would look
            // unneeded: keep every installed rule until all resolve.
            Dataplane::Routes => debug!("a guarded network is unresolved; host guard rules kept"),
            Dataplane::DryRun(_) => {}
        }
        let departed_caps = self.reconcile_caps(&plan.caps, &world, &mut claims).await;
        if let Dataplane::Ebpf(ebpf) = &mut self.dataplane {
            // Only interfaces known to have left are released: a target
            // that merely failed this pass keeps its policy (fail closed).
            let mut departed: Vec<u32> = self
                .last_ebpf
                .iter()
                .filter(|(id, _)| !seen.contains(*id))
                .map(|(_, t)| t.host_ifindex)
                .collect();
            departed.extend(departed_caps.iter().flat_map(|c| c.host_ifindexes()));
            // A target whose veth vanished (deleted, or the container is
            // between namespaces) holds nothing live: its policy and pins go.
            self.last_ebpf
                .retain(|id, t| seen.contains(id) && interface_name(t.host_ifindex).is_some());
            let live: HashSet<u32> = self
                .last_ebpf
                .values()
                .map(|t| t.host_ifindex)
                .chain(self.last_caps.values().flat_map(|c| c.host_ifindexes()))
                .collect();
            release_interfaces(ebpf, &departed, &live);
            release_warp_ports(ebpf, &self.last_ebpf);
        }
        if let Dataplane::DryRun(dry) = &mut self.dataplane {
            dry.finish_pass(&seen);
        }
        pending.clear();
        let interfaces = self
            .last_ebpf
            .iter()
            .map(|(id, t)| {
                let interfaces = TargetInterfaces {
                    host_ifindex: t.host_ifindex,
                    warp_ifindex: t.warp_ifindex,
                    warp_ports: t.warp_ports.clone(),
                };
                (id.clone(), interfaces)
            })
            .collect();
        let settings = &self.settings;
        let elapsed = started.elapsed();
        let guard_views = guards
            .iter()
            .map(|(bridge, guard)| GuardView {
                network: guard.network.clone(),
                bridge: bridge.clone(),
            })
            .collect();
        (self.telemetry).publish(
            &world,
            settings,
            &plan,
            guard_views,
            &interfaces,
            &failures,
            elapsed,
        );
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        if std::mem::take(&mut self.initial_pass) {
            info!(
                targets = plan.targets.len(),
                containers = world.containers.len(),
                inspected = snapshot.inspected,
                snapshot_ms,
                duration_ms,
                "initial reconcile complete"
            );
        } else {
            debug!(
                targets = plan.targets.len(),
                containers = world.containers.len(),
                relevant = snapshot.relevant,
                inspected = snapshot.inspected,
                full = snapshot.full,
                snapshot_ms,
                duration_ms,
                "reconciled"
            );
        }
        Ok(())
    }

    /// Programs every container's caps, and uncaps containers that lost
    /// theirs but still run. Returns the caps of containers that left.
    async fn reconcile_caps(
        &mut self,
        plans: &[CapPlan],
        world: &World,
        claims: &mut NamespaceClaims,
    ) -> Vec<ProgrammedCaps> {
        for cap_plan in plans {
            let span = info_span!("caps", container = %cap_plan.name, id = %short(&cap_plan.id));
            if self.last_cap_problems.get(&cap_plan.id) != Some(&cap_plan.problems) {
                for problem in &cap_plan.problems {
                    warn!(parent: &span, %problem, "ignoring a malformed cap label");
                }
                self.last_cap_problems
                    .insert(cap_plan.id.clone(), cap_plan.problems.clone());
            }
            let programmed = program_caps(
                &mut self.dataplane,
                self.settings.caps.enforcement,
                &mut self.host_netlink,
                &mut self.last_caps,
                claims,
                &cap_plan.id,
                cap_plan.pid,
                &cap_plan.macs,
                cap_plan.caps,
            )
            .instrument(span.clone())
            .await;
            match programmed {
                Ok(true) => info!(
                    parent: &span,
                    egress = ?cap_plan.caps.egress.map(|c| c.rate.to_string()),
                    ingress = ?cap_plan.caps.ingress.map(|c| c.rate.to_string()),
                    "caps programmed"
                ),
                Ok(false) => {}
                Err(e) => {
                    warn!(parent: &span, error = %e, "programming the caps failed; will retry on the next reconcile")
                }
            }
        }
        let wanted: HashSet<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        self.last_cap_problems
            .retain(|id, _| wanted.contains(id.as_str()));
        let gone: Vec<String> = self
            .last_caps
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        let mut departed = Vec::new();
        for id in gone {
            let container = world.containers.iter().find(|c| c.id == id && c.running);
            let shaped = self.settings.caps.enforcement == CapEnforcement::Shaper;
            if let (Some(container), true) = (container, shaped) {
                // Still running without caps (a default was dropped): remove
                // the qdiscs. A stopped container's veths took them along.
                let macs: Vec<String> = container
                    .networks
                    .values()
                    .filter_map(|e| e.mac.clone())
                    .collect();
                let removed = program_caps(
                    &mut self.dataplane,
                    CapEnforcement::Shaper,
                    &mut self.host_netlink,
                    &mut self.last_caps,
                    claims,
                    &id,
                    container.pid,
                    &macs,
                    Caps::default(),
                )
                .await;
                if let Err(e) = removed {
                    warn!(container = %container.name, error = %e, "removing the caps failed; will retry");
                    continue;
                }
            }
            if let Some(programmed) = self.last_caps.remove(&id) {
                if let Dataplane::Ebpf(ebpf) = &mut self.dataplane
                    && let Err(e) = ebpf.remove_caps(&programmed.host_ifindexes())
                {
                    warn!(id = %short(&id), error = %e, "removing the caps failed");
                }
                departed.push(programmed);
            }
        }
        departed
    }

    fn log_classification(&mut self, target: &TargetPlan) {
        if self.last_state.get(&target.id) == Some(&target.state) {
            return;
        }
        let id = short(&target.id);
        match &target.state {
            _ if target.shares_namespace_of.is_some() => info!(
                container = %target.name, %id, warp = %target.warp,
                state = target.state.name(), note = ?target.sharing_note(),
                "target runs in another target's namespace; that target's policy serves both"
            ),
            TargetState::Steered {
                network,
                via_v4,
                via_v6,
            } => info!(
                container = %target.name, %id, warp = %target.warp, %network,
                via_v4 = ?via_v4, via_v6 = ?via_v6, rules = target.entries.len(),
                "target steered through its warp container"
            ),
            TargetState::Blocked(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target blocked (fail closed)"
            ),
            TargetState::Bypassed(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target bypassed (on_warp_down = bypass)"
            ),
            TargetState::Refused(reason) => warn!(
                container = %target.name, %id, warp = %target.warp, %reason,
                "target refused: netwarp does not touch its namespace"
            ),
        }
        self.last_state
            .insert(target.id.clone(), target.state.clone());
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Brings one target's namespace to its plan. Returns whether anything changed.
async fn program_target(
    claims: &mut NamespaceClaims,
    target: &TargetPlan,
) -> Result<bool, RoutesError> {
    let Some(pid) = target.pid else {
        return Ok(false);
    };
    let namespace = NamespaceHandle::open_owned(pid, claims, short(&target.id)).await?;
    let installed = namespace.installed().await?;
    let changes = diff(&installed, &desired_state(&target.entries));
    if changes.is_empty() {
        return Ok(false);
    }
    info!(
        put_routes = changes.put_routes.len(),
        add_rules = changes.add_rules.len(),
        delete_rules = changes.delete_rules.len(),
        delete_routes = changes.delete_routes.len(),
        "applying changes"
    );
    namespace
        .apply(&changes, target.mac_on_network.as_deref())
        .await?;
    Ok(true)
}

/// Brings one target's eBPF policy to its plan. Returns whether anything changed.
async fn program_target_ebpf(
    ebpf: &mut EbpfDataplane,
    last: &mut HashMap<String, EbpfTarget>,
    claims: &mut NamespaceClaims,
    target: &TargetPlan,
) -> Result<bool, TargetError> {
    let Some(pid) = target.pid else {
        return Ok(false);
    };
    let namespace = NamespaceHandle::open_owned(pid, claims, short(&target.id)).await?;
    // The tc drop is silent, so blocked prefixes also get prohibit routes
    // in the target's namespace: senders fail at once with EACCES, and the
    // block holds on every interface, even one netwarp cannot identify.
    let blocked: Vec<_> = target
        .entries
        .iter()
        .filter(|e| e.action == crate::plan::Action::Block)
        .copied()
        .collect();
    let route_changes = diff(&namespace.installed().await?, &desired_state(&blocked));
    if !route_changes.is_empty() {
        namespace.apply(&route_changes, None).await?;
    }
    let host_ifindex = match target.mac_on_network.as_deref() {
        Some(mac) => namespace.peer_ifindex_by_mac(mac).await?.ok_or_else(|| {
            TargetError::Endpoint(format!("no veth with MAC {mac} in the target's namespace"))
        })?,
        // The network is unknown now (e.g. the warp was disconnected): the
        // veth that was steered gets the block, so no stale steering row
        // outlives the plan. The prohibit routes above hold it meanwhile.
        None => match last.get(&target.id) {
            Some(previous) if interface_name(previous.host_ifindex).is_some() => {
                previous.host_ifindex
            }
            _ => return Ok(!route_changes.is_empty()),
        },
    };
    let (warp_ifindex, warp_mac, warp_ports) = match (target.warp_pid, target.warp_mac.as_deref()) {
        (Some(warp_pid), Some(warp_mac)) => {
            let warp_ns = NamespaceHandle::open(warp_pid).await?;
            let ifindex = warp_ns
                .peer_ifindex_by_mac(warp_mac)
                .await?
                .ok_or_else(|| {
                    TargetError::Endpoint(format!(
                        "no veth with MAC {warp_mac} in the warp's namespace"
                    ))
                })?;
            let bytes: [u8; 6] = parse_mac(warp_mac)
                .try_into()
                .map_err(|_| TargetError::Endpoint(format!("malformed warp MAC {warp_mac}")))?;
            // Every veth of the warp: a VPN client whose tunnel is down
            // forwards by its default route, on whichever network that is.
            let ports = warp_ns.peer_ifindexes_by_macs(&target.warp_macs).await?;
            (ifindex, bytes, ports)
        }
        // Blocked: nothing is redirected, so no warp interface is needed.
        _ => (0, [0; 6], Vec::new()),
    };
    let peers = warp_ports
        .iter()
        .flat_map(|&port| {
            (target.addresses.iter()).map(move |&addr| (warp_peer_key(port, addr), host_ifindex))
        })
        .collect();
    let desired = EbpfTarget {
        host_ifindex,
        warp_ifindex,
        warp_mac,
        rows: compile(
            &target.entries,
            matches!(target.state, TargetState::Steered { .. }),
        )?,
        warp_ports,
        peers,
    };
    // Every pass, not only on changes: it also repairs an attachment whose
    // pin was deleted by hand (a stat per direction when all is well).
    ebpf.attach_ifindex(host_ifindex)?;
    // Before the policy steers into the warp, its veths know the target:
    // what the warp forwards untransformed is dropped from the first packet.
    for port in &desired.warp_ports {
        ebpf.attach_warp(*port)?;
    }
    if last.get(&target.id) == Some(&desired) {
        return Ok(!route_changes.is_empty());
    }
    ebpf.put_warp_peers(&desired.peers)?;
    if !last.contains_key(&target.id)
        && ebpf.policy_is(host_ifindex, warp_ifindex, warp_mac, &desired.rows)?
    {
        // Left by an earlier run (a restart): adopted as it is.
        last.insert(target.id.clone(), desired);
        return Ok(!route_changes.is_empty());
    }
    ebpf.set_policy(host_ifindex, warp_ifindex, warp_mac, &desired.rows)?;
    info!(
        host_ifindex,
        warp_ifindex,
        prefixes = desired.rows.len(),
        "eBPF policy written"
    );
    last.insert(target.id.clone(), desired);
    Ok(true)
}

/// Brings every bridge guard to its plan, and removes the guards of
/// bridges that no longer carry a target (only when every planned guard
/// was resolved, so a failed lookup never opens a guard). A guard that
/// fails is logged and retried on the next pass; the others go on.
fn program_guards_ebpf(
    ebpf: &mut EbpfDataplane,
    last: &mut HashMap<u32, EbpfGuard>,
    guards: &[(String, &GuardPlan)],
    complete: bool,
) {
    let mut wanted = HashSet::new();
    // A network only a warp is on blocks nothing here: the program on the
    // warp's veths drops its untunnelled forwards (`GuardPlan::forwarded`).
    for (bridge, guard) in guards.iter().filter(|(_, g)| !g.entries.is_empty()) {
        let span = info_span!("guard", network = %guard.network, bridge = %bridge);
        let _enter = span.enter();
        let Some(ifindex) = crate::dataplane::ebpf::interface_index(bridge) else {
            warn!("the network's bridge interface does not exist; its guard waits for it");
            continue;
        };
        wanted.insert(ifindex);
        let programmed = compile(&guard.entries, false)
            .map_err(TargetError::from)
            .and_then(|rows| {
                ebpf.attach_guard(ifindex)?;
                let desired = EbpfGuard {
                    rows,
                    allowed: guard_allow_keys(ifindex, guard),
                };
                if last.get(&ifindex) == Some(&desired) {
                    return Ok(());
                }
                if !last.contains_key(&ifindex)
                    && ebpf.guard_is(ifindex, &desired.rows, &desired.allowed)?
                {
                    // Left by an earlier run (a restart): adopted as it is.
                    last.insert(ifindex, desired);
                    return Ok(());
                }
                ebpf.set_guard(ifindex, &desired.rows, &desired.allowed)?;
                info!(
                    prefixes = desired.rows.len(),
                    allowed = desired.allowed.len(),
                    "bridge guard written"
                );
                last.insert(ifindex, desired);
                Ok(())
            });
        if let Err(e) = programmed {
            warn!(error = %e, "programming the bridge guard failed; will retry on the next reconcile");
        }
    }
    let installed = ebpf.guard_ifindexes().unwrap_or_default();
    let vanished = |i: &u32| interface_name(*i).is_none();
    for ifindex in installed
        .into_iter()
        .filter(|i| !wanted.contains(i) && (complete || vanished(i)))
    {
        last.remove(&ifindex);
        match ebpf.remove_guard(ifindex) {
            Ok(()) => info!(ifindex, "removed the guard of a bridge without targets"),
            Err(e) => warn!(ifindex, error = %e, "removing a bridge guard failed"),
        }
    }
}

/// A netlink socket in the host's namespace, opened on first use.
fn host_handle(slot: &mut Option<rtnetlink::Handle>) -> Result<&mut rtnetlink::Handle, String> {
    if slot.is_none() {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        *slot = Some(handle);
    }
    Ok(slot.as_mut().expect("just set"))
}

/// routes: brings the host's guard rules to the plan (every guard, every
/// pass: the function diffs against what is installed).
async fn program_guards_routes(
    host_netlink: &mut Option<rtnetlink::Handle>,
    guards: &[(String, &GuardPlan)],
) {
    let handle = match host_handle(host_netlink) {
        Ok(handle) => handle,
        Err(e) => {
            warn!(error = %e, "no netlink socket for the host's guard rules; will retry");
            return;
        }
    };
    match program_host_guards(handle, guards).await {
        Ok(true) => info!(guards = guards.len(), "host guard rules written"),
        Ok(false) => {}
        Err(e) => {
            warn!(error = %e, "programming the host guard rules failed; will retry on the next reconcile")
        }
    }
}

/// Removes host guard rules an earlier routes-mode run left.
async fn remove_routes_guards(host_netlink: &mut Option<rtnetlink::Handle>) {
    let Ok(handle) = host_handle(host_netlink) else {
        return;
    };
    match remove_host_guards(handle).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, "removed the host guard rules of a routes-mode run"),
        Err(e) => warn!(error = %e, "removing old host guard rules failed"),
    }
}

/// Brings one container's caps to `caps`. Returns whether anything changed.
#[allow(clippy::too_many_arguments)]
async fn program_caps(
    dataplane: &mut Dataplane,
    enforcement: CapEnforcement,
    host_netlink: &mut Option<rtnetlink::Handle>,
    last: &mut HashMap<String, ProgrammedCaps>,
    claims: &mut NamespaceClaims,
    id: &str,
    pid: Option<u32>,
    macs: &[String],
    caps: Caps,
) -> Result<bool, CapsError> {
    let (Some(pid), false) = (pid, matches!(dataplane, Dataplane::DryRun(_))) else {
        // The dry-run simulation models steering only.
        return Ok(false);
    };
    let namespace = NamespaceHandle::open_owned(pid, claims, short(id)).await?;
    let desired = ProgrammedCaps {
        caps,
        enforcement,
        interfaces: interfaces(&namespace, macs).await?,
    };
    let previous = last.get(id);
    let changed_caps = previous != Some(&desired);
    let host = host_handle(host_netlink).map_err(CapsError::HostNetlink)?;
    // A reload switched the enforcement: undo the other mechanism first.
    if let Some(previous) = previous.filter(|p| p.enforcement != enforcement) {
        match (&mut *dataplane, previous.enforcement) {
            (Dataplane::Ebpf(ebpf), CapEnforcement::Policer) => {
                ebpf.remove_caps(&previous.host_ifindexes())?;
            }
            _ => {
                let uncapped = ProgrammedCaps {
                    caps: Caps::default(),
                    ..previous.clone()
                };
                program_qdiscs(&namespace, host, &uncapped, true).await?;
            }
        }
    }
    let changed = match (dataplane, enforcement) {
        (Dataplane::Ebpf(ebpf), CapEnforcement::Policer) => {
            if changed_caps {
                if let Some(previous) = previous {
                    ebpf.remove_caps(&previous.host_ifindexes())?;
                }
                program_ebpf(ebpf, &desired)?;
            }
            changed_caps
        }
        (_, _) => program_qdiscs(&namespace, host, &desired, changed_caps).await?,
    };
    last.insert(id.to_owned(), desired);
    Ok(changed)
}

/// Removes the policy and attachments of interfaces that left (their
/// target is gone) or no longer exist, unless a live target uses them.
fn release_interfaces(ebpf: &mut EbpfDataplane, departed: &[u32], live: &HashSet<u32>) {
    let mut candidates: HashSet<u32> = departed.iter().copied().collect();
    let vanished = ebpf
        .policy_ifindexes()
        .unwrap_or_default()
        .into_iter()
        .chain(ebpf.attached_ifindexes())
        .chain(ebpf.cap_slots().unwrap_or_default().into_keys())
        .filter(|i| crate::dataplane::ebpf::interface_name(*i).is_none());
    candidates.extend(vanished);
    for ifindex in candidates.into_iter().filter(|i| !live.contains(i)) {
        let released = ebpf
            .remove_policy(ifindex)
            .and_then(|()| ebpf.remove_caps(&[ifindex]))
            .and_then(|()| ebpf.detach_ifindex(ifindex));
        match released {
            Ok(()) => info!(ifindex, "released the eBPF policy of a departed target"),
            Err(e) => warn!(ifindex, error = %e, "releasing a departed target's eBPF state failed"),
        }
    }
}

/// Removes the peer rows no programmed target wants, and the warp program
/// from veths no steered target uses (their warp is down, gone or has no
/// steered target left). A target that failed this pass keeps what it had.
fn release_warp_ports(ebpf: &mut EbpfDataplane, targets: &HashMap<String, EbpfTarget>) {
    let wanted_peers: BTreeMap<WarpPeerKey, u32> = targets
        .values()
        .flat_map(|t| t.peers.iter().copied())
        .collect();
    let wanted_ports: HashSet<u32> = targets
        .values()
        .flat_map(|t| t.warp_ports.iter().copied())
        .collect();
    for port in ebpf.warp_ifindexes() {
        if wanted_ports.contains(&port) {
            continue;
        }
        match ebpf.detach_warp(port) {
            Ok(()) => info!(
                ifindex = port,
                "detached the warp program from a veth no target uses"
            ),
            Err(e) => warn!(ifindex = port, error = %e, "detaching the warp program failed"),
        }
    }
    match ebpf.retain_warp_peers(&wanted_peers) {
        Ok(0) => {}
        Ok(removed) => debug!(removed, "removed stale warp peer rows"),
        Err(e) => warn!(error = %e, "removing stale warp peer rows failed"),
    }
}

/// `netwarp cleanup`: removes netwarp's entries from every running
/// container. Other entries are only read, never touched.
pub async fn cleanup(config: Config) -> anyhow::Result<ExitCode> {
    set_guard_priority(config.host_guard_priority);
    if let Some(code) = check_privileges(ROUTES_CAPABILITIES) {
        return Ok(code);
    }
    let client = docker::connect(&config.docker, config.docker_api_version).await?;
    let world = docker::snapshot(&client).await?;
    let mut failures = 0;
    // The host's namespace is refused (its guard rules are removed below);
    // a namespace shared by several containers is cleaned once.
    let mut claims = NamespaceClaims::new();
    for container in world.containers.iter().filter(|c| c.running) {
        let Some(pid) = container.pid else { continue };
        let result = async {
            let namespace =
                NamespaceHandle::open_owned(pid, &mut claims, container.short_id()).await?;
            let installed = namespace.installed().await?;
            let changes = diff(&installed, &OwnedState::default());
            if !changes.is_empty() {
                namespace.apply(&changes, None).await?;
            }
            let qdiscs = remove_every_tbf(namespace.netlink_handle()?).await?;
            Ok::<_, CapsError>(changes.delete_rules.len() + changes.delete_routes.len() + qdiscs)
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(removed) => {
                info!(container = %container.name, id = %container.short_id(), removed, "removed netwarp entries")
            }
            Err(CapsError::Routes(
                e @ (RoutesError::HostNamespace { .. } | RoutesError::NamespaceClaimed { .. }),
            )) => {
                info!(container = %container.name, id = %container.short_id(), reason = %e, "skipped");
            }
            Err(e) => {
                failures += 1;
                error!(container = %container.name, id = %container.short_id(), error = %e, "cleanup failed");
            }
        }
    }
    // Ingress caps' qdiscs sit on host-side veths.
    let host_qdiscs = async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| CapsError::HostNetlink(e.to_string()))?;
        tokio::spawn(connection);
        let qdiscs = remove_every_tbf(&handle).await?;
        let rules = remove_host_guards(&handle)
            .await
            .map_err(|e| CapsError::HostNetlink(e.to_string()))?;
        Ok::<_, CapsError>((qdiscs, rules))
    }
    .await;
    match host_qdiscs {
        Ok((0, 0)) => {}
        Ok((qdiscs, rules)) => {
            info!(
                qdiscs,
                rules, "removed netwarp's qdiscs and guard rules from the host"
            )
        }
        Err(e) => {
            failures += 1;
            error!(error = %e, "removing netwarp's qdiscs and guard rules from the host failed");
        }
    }
    // The eBPF dataplane's pins: removing a link's pin detaches it.
    match std::fs::remove_dir_all(&config.bpf_pin_dir) {
        Ok(()) => {
            info!(dir = %config.bpf_pin_dir.display(), "removed the pinned eBPF maps and links")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            failures += 1;
            error!(dir = %config.bpf_pin_dir.display(), error = %e, "removing the eBPF pins failed");
        }
    }
    if failures > 0 {
        anyhow::bail!("cleanup failed in {failures} places; see the log above");
    }
    info!("cleanup complete");
    Ok(ExitCode::SUCCESS)
}
