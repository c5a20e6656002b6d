//! `netwarp probe`: kernel features and privileges, and the dataplane that
//! `auto` picks.

use std::process::ExitCode;

use crate::probe::{ProbeReport, probe};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let report = probe();
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
    }
    println!("auto picks: {} ({})", report.auto_choice, report.reason);
}
