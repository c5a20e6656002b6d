//! The netwarp binary: parses the command line and hands off to a
//! subcommand. anyhow lives only at this edge.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = netwarp::cli::Cli::parse();
    match netwarp::cli::execute(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("netwarp: error: {error:#}");
            std::process::ExitCode::from(netwarp::cli::EXIT_ERROR)
        }
    }
}
