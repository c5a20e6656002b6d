//! `cargo xtask bench`: builds release binaries and runs netwarp-tests'
//! `bench` binary, which does the measuring on real containers (see
//! tests/src/bin/bench). Writes `target/bench/results.json`, and for full
//! runs (or with `--markdown`) the committed `BENCHMARKS.md`.

use std::{process::Command, time::Instant};

use anyhow::bail;

use crate::command::{cargo, run_inherit, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Fewer iterations and shorter runs (about 4 minutes on a set-up machine).
    #[arg(long)]
    quick: bool,
    /// Write BENCHMARKS.md even for a quick run (full runs always write it).
    #[arg(long)]
    markdown: bool,
    /// Do not write BENCHMARKS.md, even for a full run.
    #[arg(long, conflicts_with = "markdown")]
    no_markdown: bool,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
    /// Only these sections (comma-separated): paths, convergence, load, caps,
    /// scale, wireguard.
    #[arg(long)]
    sections: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.no_setup {
        crate::setup::run()?;
    }
    let root = workspace_root();
    // One build for both packages: building them apart would resolve
    // features differently and rebuild the shared dependencies each time.
    run_inherit(cargo().current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "netwarp",
        "--package",
        "netwarp-tests",
        "--bins",
    ]))?;
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let json = out_dir.join("results.json");
    let mut bench = Command::new(root.join("target/release/bench"));
    bench
        .current_dir(&root)
        .env("NETWARP_BIN", root.join("target/release/netwarp"))
        .arg("--json")
        .arg(&json);
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(sections) = &args.sections {
        bench.args(["--sections", sections]);
    }
    let markdown = !args.no_markdown && (args.markdown || !args.quick);
    if markdown {
        bench.arg("--markdown").arg(root.join("BENCHMARKS.md"));
    }
    let measured = Instant::now();
    let status = bench.status()?;
    println!(
        "xtask bench: measuring took {:.0}s, {:.0}s in all (setup and build included); \
         results in {}{}",
        measured.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        json.display(),
        if markdown { " and BENCHMARKS.md" } else { "" }
    );
    if !status.success() {
        bail!("the bench could not measure everything ({status}); see the errors above");
    }
    Ok(())
}
