//! `netwarp status`: what is programmed now.
//!
//! Not yet: it needs the daemon's control socket (the observability issue).

use std::process::ExitCode;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args.json;
    bail!("`netwarp status` is not implemented yet; the daemon's logs show each target's state")
}
