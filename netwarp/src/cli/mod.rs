//! The command line: one module per subcommand.
mod check_config;
mod cleanup;
mod probe;
mod run;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{Config, Layer, LogFormat, Origin};

/// Exit code for configuration and runtime errors.
pub const EXIT_ERROR: u8 = 1;
/// Exit code when a needed capability or kernel feature is missing.
pub const EXIT_MISSING_PRIVILEGE: u8 = 77;

#[derive(Parser)]
#[command(
    name = "netwarp",
    version,
    about = "Steers Docker containers' traffic through warp (VPN) containers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArgs),
    /// Validate the configuration and print every effective value with its source.
    CheckConfig(check_config::Args),
    /// Show what is programmed now.
    Status(status::Args),
    /// Report kernel features and privileges, and the dataplane `auto` would pick.
    Probe(probe::Args),
    /// Remove everything netwarp created, in every container.
    Cleanup(ConfigArgs),
}

/// Flags shared by the subcommands that read the configuration. Each flag
/// overrides the matching `NETWARP_*` variable and config key.
#[derive(clap::Args, Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (default: /etc/netwarp/netwarp.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Dataplane: auto, ebpf, routes or dry-run (dataplane.mode).
    #[arg(long)]
    dataplane: Option<String>,
    /// Docker socket path or tcp://HOST:PORT (docker.socket).
    #[arg(long)]
    docker_socket: Option<String>,
    /// unix, tcp or tls (docker_connection_method).
    #[arg(long)]
    docker_connection_method: Option<String>,
    /// Glob naming warp containers (warp_container_name_pattern).
    #[arg(long)]
    warp_pattern: Option<String>,
    /// block or bypass (on_warp_down).
    #[arg(long)]
    on_warp_down: Option<String>,
    /// error, warn, info, debug or trace (logging.level).
    #[arg(long)]
    log_level: Option<String>,
    /// text or json (logging.format).
    #[arg(long)]
    log_format: Option<String>,
    /// Prometheus endpoint address (metrics.listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Unix socket the daemon answers `netwarp status` on (control.socket).
    #[arg(long)]
    control_socket: Option<String>,
    /// Seconds between full resyncs (dataplane.resync_interval_secs).
    #[arg(long)]
    resync_interval_secs: Option<u64>,
}

const DEFAULT_CONFIG: &str = "/etc/netwarp/netwarp.toml";

impl ConfigArgs {
    /// Flags over environment over file over defaults.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut flags = Layer::default();
        let flag_values = [
            ("dataplane.mode", "--dataplane", self.dataplane.clone()),
            (
                "docker.socket",
                "--docker-socket",
                self.docker_socket.clone(),
            ),
            (
                "docker_connection_method",
                "--docker-connection-method",
                self.docker_connection_method.clone(),
            ),
            (
                "warp_container_name_pattern",
                "--warp-pattern",
                self.warp_pattern.clone(),
            ),
            ("on_warp_down", "--on-warp-down", self.on_warp_down.clone()),
            ("logging.level", "--log-level", self.log_level.clone()),
            ("logging.format", "--log-format", self.log_format.clone()),
            (
                "metrics.listen",
                "--metrics-listen",
                self.metrics_listen.clone(),
            ),
            (
                "control.socket",
                "--control-socket",
                self.control_socket.clone(),
            ),
            (
                "dataplane.resync_interval_secs",
                "--resync-interval-secs",
                self.resync_interval_secs.map(|s| s.to_string()),
            ),
        ];
        for (key, flag, value) in flag_values {
            if let Some(value) = value {
                flags.set(key, value, Origin::Flag(flag.into()));
            }
        }
        let env = Layer::from_env(std::env::vars());
        let file = match &self.config {
            Some(path) => Layer::from_file(path)?,
            None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                Layer::from_file(DEFAULT_CONFIG.as_ref())?
            }
            None => Layer::default(),
        };
        Ok(Config::resolve(&[flags, env, file])?)
    }
}

/// Runs the chosen subcommand and returns the process exit code.
pub fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::execute(args),
        Command::CheckConfig(args) => check_config::execute(args),
        Command::Status(args) => status::execute(args),
        Command::Probe(args) => probe::execute(args),
        Command::Cleanup(args) => cleanup::execute(args),
    }
}

/// Logs what is missing and returns the exit code that says so.
fn missing_privilege(missing: &crate::privileges::MissingCapabilities) -> ExitCode {
    tracing::error!("{missing}");
    ExitCode::from(EXIT_MISSING_PRIVILEGE)
}

/// Installs the tracing subscriber in the configured level and format.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETWARP_LOG").unwrap_or_else(|_| {
        // netwarp_programs: the eBPF programs' aya-log records.
        let level = &config.log_level;
        tracing_subscriber::EnvFilter::new(format!("netwarp={level},netwarp_programs={level}"))
    });
    // Colours only on a terminal: logs in files and journals stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
