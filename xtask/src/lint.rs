//! `cargo xtask lint`: formatting and clippy, warnings denied.

use crate::command::{cargo, run_inherit, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    run_inherit(
        cargo()
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    run_inherit(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("lint: fmt and clippy are clean");
    Ok(())
}
