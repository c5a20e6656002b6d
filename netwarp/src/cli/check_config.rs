//! `netwarp check-config`: validate, then print every effective value and
//! where it came from.

use std::process::ExitCode;

use crate::config::{Apply, KEYS};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArgs,
    /// List every key with its environment variable, default, meaning,
    /// whether a reload applies it, and its flag.
    #[arg(long)]
    keys: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    if args.keys {
        for key in KEYS {
            let apply = match key.apply {
                Apply::Live => "a reload applies it",
                Apply::Restart => "needs a restart",
            };
            let flag = key
                .flag
                .map(|f| format!("; flag --{f}"))
                .unwrap_or_default();
            println!(
                "{:<32} {:<42} default `{}`\n    {}\n    ({apply}{flag})",
                key.name, key.env, key.default, key.doc
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = args.config.load()?;
    println!("{:<32} {:<40} SOURCE", "KEY", "VALUE");
    for (key, (value, origin)) in &config.effective {
        let shown = if value.is_empty() {
            "(none)"
        } else {
            value.as_str()
        };
        println!("{key:<32} {shown:<40} {origin}");
    }
    for rule in &config.routing_rules {
        println!("rule: {rule}");
    }
    println!("configuration is valid");
    Ok(ExitCode::SUCCESS)
}
