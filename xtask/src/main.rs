//! netwarp's development harness. It only orchestrates: installs tools,
//! starts the Docker engine, builds, and runs the daemon, tests and lints.
mod bench;
mod chaos;
mod command;
mod image;
mod lint;
mod run;
mod setup;
mod test;
mod witness;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netwarp's development harness")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Installs and starts everything the build and the tests need (idempotent).
    Setup,
    /// Sets up, builds, and runs the daemon against the local Docker engine.
    Run(run::Args),
    /// Sets up, then runs every test: unit, privileged netns, and Docker end-to-end.
    Test(test::Args),
    /// Builds the release binary and the `netwarp:<version>` image on an
    /// empty base (no registry needed).
    Image(image::Args),
    /// Checks formatting and runs clippy with warnings denied.
    Lint,
    /// Benchmarks on real containers: throughput, latency, eBPF cost,
    /// convergence, caps, controller scale. Writes target/bench/results.json.
    Bench(bench::Args),
    /// The full reliability suite (faults, dockerd restarts, an event
    /// flood); writes RELIABILITY.md. Restarts dockerd: run it alone.
    Chaos(chaos::ChaosArgs),
    /// Runs every cargo-fuzz target for N minutes (needs nightly and cargo-fuzz).
    Fuzz(chaos::FuzzArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Run(args) => run::run(args),
        Task::Test(args) => test::run(args),
        Task::Image(args) => image::run(args),
        Task::Lint => lint::run(),
        Task::Bench(args) => bench::run(args),
        Task::Chaos(args) => chaos::chaos(args),
        Task::Fuzz(args) => chaos::fuzz(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
