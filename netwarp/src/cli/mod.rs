//! The command line: one module per subcommand.
mod check_config;
mod cleanup;
mod config_args;
mod probe;
mod run;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
pub use config_args::ConfigArgs;

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

/// Lines queued for the log writer thread before a logging call waits.
const LOG_QUEUE_LINES: usize = 8192;

/// Installs the tracing subscriber in the configured level and format.
/// Lines go to stderr through a writer thread, so a pass never waits on
/// the terminal or the journal; the returned guard flushes what is queued
/// when it is dropped, so hold it until the subcommand returns.
pub fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETWARP_LOG").unwrap_or_else(|_| {
        // netwarp_programs: the eBPF programs' aya-log records.
        let level = &config.log_level;
        tracing_subscriber::EnvFilter::new(format!("netwarp={level},netwarp_programs={level}"))
    });
    // Colours only on a terminal: logs in files and journals stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Not lossy: a full queue makes the logging call wait rather than
    // drop a line (a warning must never vanish). The queue is allocated
    // whole up front (32 bytes a line): the default 128,000 lines would
    // be 4 MiB, resident for the daemon's life, for a backlog a writer
    // thread drains in milliseconds.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("netwarp-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
