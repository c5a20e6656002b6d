//! `netwarp probe`: kernel features, privileges and surroundings (a
//! container or not, the host's namespaces, bpffs, Docker), and the
//! dataplane that `auto` picks.

use std::process::ExitCode;

use crate::probe::{ProbeReport, probe};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The configuration names the pin dir and the Docker socket to check.
    #[command(flatten)]
    config: super::ConfigArgs,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let report = probe(&args.config.load()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(report: &ProbeReport) {
    println!("{:<28} {:<6} DETAIL", "CHECK", "OK");
    for check in &report.checks {
        println!(
            "{:<28} {:<6} {}",
            check.name,
            if check.ok { "yes" } else { "no" },
            check.detail
        );
        if let Some(fix) = &check.fix {
            println!("{:<28} {:<6} fix: {fix}", "", "");
        }
    }
    if let Some(refusal) = report.environment.refusal() {
        println!("netwarp run would refuse to start here:\n{refusal}");
    }
    println!("auto picks: {} ({})", report.auto_choice, report.reason);
}
