//! `cargo xtask run`: setup, build, and run the daemon against the local
//! Docker engine with the example config.

use std::process::Command;

use anyhow::Context as _;

use crate::command::{cargo, run_inherit, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Arguments for `netwarp` (default: `run --config examples/netwarp.toml`).
    #[arg(last = true)]
    netwarp_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    let root = workspace_root();
    run_inherit(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "--package", "netwarp"]),
    )?;
    let netwarp_args = if args.netwarp_args.is_empty() {
        vec![
            "run".to_owned(),
            "--config".to_owned(),
            root.join("examples/netwarp.toml").display().to_string(),
        ]
    } else {
        args.netwarp_args
    };
    let binary = root.join("target/release/netwarp");
    println!(
        "xtask: running {} {}",
        binary.display(),
        netwarp_args.join(" ")
    );
    // exec, so signals (Ctrl-C, SIGTERM) reach the daemon directly.
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(&binary).args(&netwarp_args).exec();
    Err(err).with_context(|| format!("executing {}", binary.display()))
}
