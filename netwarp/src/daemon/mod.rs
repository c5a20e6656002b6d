//! The daemon's lifecycle: privileges, the dataplane's choice, signals,
//! the Docker connection with its backoff, and the event loop that runs
//! reconcile passes ([`crate::pass`]). The programmed state stays in place
//! on exit, so targets stay steered (or blocked) while netwarp is down.

mod connected;

use std::time::Duration;

use tokio::signal::unix::SignalKind;
use tracing::{info, warn};

pub use connected::Reload;
use connected::{LoopExit, run_connected};

use crate::{
    config::{Config, DataplaneMode},
    dataplane::{
        ebpf::{EbpfDataplane, EbpfError, ProgramLogger},
        host_guard::set_guard_priority,
        netns::set_host_proc_dir,
        sync::Dataplane,
    },
    docker::{self, Backoff},
    pass::Reconciler,
    privileges::{
        self, CapabilitySet, EBPF_CAPABILITIES, MissingCapabilities, ROUTES_CAPABILITIES,
    },
    telemetry::Telemetry,
};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    MissingCapabilities(#[from] MissingCapabilities),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("{0:#}")]
    Telemetry(anyhow::Error),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[from] std::io::Error),
}

/// The signals the daemon acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: tokio::signal::unix::signal(SignalKind::terminate())?,
            int: tokio::signal::unix::signal(SignalKind::interrupt())?,
            hup: tokio::signal::unix::signal(SignalKind::hangup())?,
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run_daemon(config: Config, reload: Reload) -> Result<(), DaemonError> {
    set_guard_priority(config.host_guard_priority);
    set_host_proc_dir(&config.host_proc_dir);
    let mut dataplane = choose_dataplane(&config)?;
    let mode = dataplane.mode();
    info!(mode = %mode, docker = %docker::describe(&config.docker), "netwarp starting");
    if let Some(logger) = dataplane.take_logger() {
        forward_program_logs(logger);
    }
    let telemetry = Telemetry::start(&config, mode)
        .await
        .map_err(DaemonError::Telemetry)?;
    let mut reconciler = Reconciler::new(config.plan_settings(), dataplane)
        .with_telemetry(telemetry)
        .with_probe_settings(config.probes)
        .with_failover_hold_down(config.failover_hold_down);
    let mut signals = Signals::install()?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let connected = tokio::select! {
            result = docker::connect(&config.docker, config.docker_api_version) => result,
            _ = signals.term.recv() => return stopped("SIGTERM"),
            _ = signals.int.recv() => return stopped("SIGINT"),
        };
        let exit = match connected {
            Ok(client) => {
                backoff.reset();
                reconciler.telemetry_mut().docker_connected();
                info!("connected to Docker; resyncing");
                run_connected(&client, &config, &mut reconciler, &mut signals, &reload).await
            }
            Err(e) => LoopExit::ConnectionLost(e.to_string()),
        };
        match exit {
            LoopExit::Shutdown => return Ok(()),
            LoopExit::ConnectionLost(reason) => {
                reconciler.telemetry_mut().docker_disconnected();
                reconciler.forget_guard_sources().await;
                let delay = backoff.next_delay();
                warn!(%reason, retry_in_ms = delay.as_millis() as u64, "Docker connection lost; keeping the dataplane as it is and reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signals.term.recv() => return stopped("SIGTERM"),
                    _ = signals.int.recv() => return stopped("SIGINT"),
                }
            }
        }
    }
}

/// The configured dataplane, after checking its privileges. dry-run
/// touches no kernel state, so it needs none; an explicit ebpf mode names
/// every capability it lacks at once.
fn choose_dataplane(config: &Config) -> Result<Dataplane, DaemonError> {
    match config.dataplane {
        DataplaneMode::DryRun => {
            warn!(
                record = ?config.dry_run_record,
                "dataplane dry-run: SIMULATION ONLY; nothing will be programmed, no target is steered or blocked"
            );
            Ok(Dataplane::dry_run(config.dry_run_record.clone()))
        }
        DataplaneMode::Routes => {
            privileges::require(ROUTES_CAPABILITIES)?;
            Ok(Dataplane::routes())
        }
        DataplaneMode::Auto => {
            privileges::require(ROUTES_CAPABILITIES)?;
            Ok(choose_automatically(config))
        }
        DataplaneMode::Ebpf => {
            privileges::require(EBPF_CAPABILITIES)?;
            let ebpf = load_ebpf(config)?;
            Ok(Dataplane::ebpf(ebpf))
        }
    }
}

/// `auto`: the eBPF dataplane when the privileges and a real load allow
/// it, else routes, saying why.
fn choose_automatically(config: &Config) -> Dataplane {
    let missing = CapabilitySet::current()
        .map(|caps| caps.missing(EBPF_CAPABILITIES))
        .unwrap_or_else(|_| EBPF_CAPABILITIES.to_vec());
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
        info!(missing = %names.join(", "), "dataplane auto: using routes, eBPF lacks capabilities");
        return Dataplane::routes();
    }
    match load_ebpf(config) {
        Ok(ebpf) => {
            info!(pins = %config.bpf_pin_dir.display(), "dataplane auto: using ebpf");
            Dataplane::ebpf(ebpf)
        }
        Err(e) => {
            info!(error = %e, "dataplane auto: using routes, the eBPF programs did not load");
            Dataplane::routes()
        }
    }
}

/// Loads the eBPF dataplane as configured.
fn load_ebpf(config: &Config) -> Result<EbpfDataplane, EbpfError> {
    let mut ebpf = EbpfDataplane::load_pinned_logging(
        &config.bpf_pin_dir,
        debug_logs(config),
        config.ebpf_rules_capacity,
    )?;
    ebpf.set_peer_redirect(config.ebpf_peer_redirect)?;
    ebpf.set_from_container_hook(config.ebpf_from_container_hook);
    Ok(ebpf)
}

fn debug_logs(config: &Config) -> bool {
    matches!(config.log_level.as_str(), "debug" | "trace")
}

/// Forwards the eBPF programs' aya-log records to the log, as they come.
fn forward_program_logs(logger: ProgramLogger) {
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

fn shutdown(signal: &str) {
    info!(signal, "shutting down; programmed state stays in place");
}

fn stopped(signal: &str) -> Result<(), DaemonError> {
    shutdown(signal);
    Ok(())
}
