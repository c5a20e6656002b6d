//! Controller scale bench: the real netwarp binary in the dry-run dataplane
//! against a simulated Docker API (see `netwarp_tests::scale`).
//!
//! ```text
//! cargo build --release -p netwarp -p netwarp-tests --bin scale_bench
//! target/release/scale_bench --netwarp target/release/netwarp \
//!     --sizes 1000,10000 --latency-events 50 --storm-rate 10000 --storm-secs 10 \
//!     --json /tmp/netwarp-scale.json
//! ```
//!
//! Prints a table and, with `--json PATH`, writes the reports as JSON for
//! `cargo xtask bench` and `cargo xtask chaos` to fold in.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    fake_docker::{StormSpec, WorldSpec},
    scale::{self, LABEL, ScaleSpec},
};

struct Args {
    netwarp: PathBuf,
    sizes: Vec<usize>,
    latency_events: usize,
    storm_rate: u64,
    storm_secs: f64,
    resync_secs: u64,
    json: Option<PathBuf>,
}

const USAGE: &str = "usage: scale_bench [--netwarp PATH] [--sizes 1000,10000] [--latency-events 50] \
[--storm-rate 10000] [--storm-secs 10] [--resync-secs 30] [--json PATH]\n\
--storm-rate 0 skips the storm. Everything measured is a simulation: simulated Docker API, dry-run dataplane.";

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        netwarp: netwarp_tests::daemon::netwarp_binary(),
        sizes: vec![1000, 10_000],
        latency_events: 50,
        storm_rate: 10_000,
        storm_secs: 10.0,
        resync_secs: 30,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--netwarp" => args.netwarp = value.into(),
            "--sizes" => {
                args.sizes = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--sizes")?
            }
            "--latency-events" => {
                args.latency_events = value.parse().context("--latency-events")?
            }
            "--storm-rate" => args.storm_rate = value.parse().context("--storm-rate")?,
            "--storm-secs" => args.storm_secs = value.parse().context("--storm-secs")?,
            "--resync-secs" => args.resync_secs = value.parse().context("--resync-secs")?,
            "--json" => args.json = Some(value.into()),
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !(0.0..=60.0).contains(&args.storm_secs) {
        bail!("--storm-secs must be within 0..=60 (storms are bounded)");
    }
    if args.storm_rate > 100_000 {
        bail!("--storm-rate must be at most 100000 events/s (storms are bounded)");
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("scale_bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = parse()?;
    let mut reports = Vec::new();
    for &size in &args.sizes {
        eprintln!("[{LABEL}] {size} containers ...");
        let spec = ScaleSpec {
            world: WorldSpec::mix(size),
            latency_events: args.latency_events,
            storm: (args.storm_rate > 0 && args.storm_secs > 0.0).then(|| StormSpec {
                rate: args.storm_rate,
                duration: Duration::from_secs_f64(args.storm_secs),
                seed: 0x5eed ^ size as u64,
            }),
            resync_interval_secs: args.resync_secs,
            timeout: Duration::from_secs(120),
        };
        reports.push(scale::run(&spec, &args.netwarp)?);
    }
    print!("{}", scale::table(&reports));
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "label": LABEL,
            "netwarp": args.netwarp.display().to_string(),
            "reports": reports,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    // Correctness, not speed, decides the exit code.
    Ok(reports
        .iter()
        .all(|r| r.initial_correct && r.storm.as_ref().is_none_or(|s| s.final_correct)))
}
