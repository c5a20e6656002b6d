//! netwarp's benchmarks on real containers, run by `cargo xtask bench`.
//!
//! ```text
//! bench [--quick] [--json PATH] [--markdown PATH] [--sections paths,convergence,load,failover,caps,scale,wireguard]
//! bench pingpong-server --port P --size B --seconds S     (inside a container)
//! bench pingpong-client --addr A:P --size B --warmup W --count N
//! ```
//!
//! Every run is bounded; every figure is a ratio against a baseline taken
//! in the same run, or a latency measured by the daemon or the kernel.
//! The exit code says whether everything could be measured and looked
//! right (traffic flowed, state was correct), never whether it was fast.

mod caps;
mod convergence;
mod failover;
mod load;
mod paths;
mod report;
mod wireguard;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    fake_docker::{StormSpec, WorldSpec},
    scale::{self, ScaleSpec},
};
use serde::Serialize;

use report::{Goal, Machine, Table, fmt_num, goals_table};

/// One section's results.
pub struct Section {
    pub name: &'static str,
    pub data: serde_json::Value,
    pub tables: Vec<Table>,
    pub goals: Vec<Goal>,
}

const SECTIONS: [&str; 7] = [
    "paths",
    "convergence",
    "load",
    "failover",
    "caps",
    "scale",
    "wireguard",
];

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    sections: Vec<String>,
}

const USAGE: &str = "usage: bench [--quick] [--json PATH] [--markdown PATH] \
[--sections paths,convergence,load,failover,caps,scale,wireguard]\n       \
bench pingpong-server --port P --size B --seconds S\n       \
bench pingpong-client --addr HOST:PORT --size B --warmup W --count N";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("pingpong-server") => pingpong_server(&argv[1..]).map(|()| true),
        Some("pingpong-client") => pingpong_client(&argv[1..]).map(|()| true),
        _ => parse(&argv).and_then(bench),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--flag value` pairs.
fn flags(argv: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            out.push((flag.as_str(), ""));
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        out.push((flag.as_str(), value.as_str()));
    }
    Ok(out)
}

fn parse(argv: &[String]) -> anyhow::Result<Args> {
    let mut args = Args {
        quick: false,
        json: None,
        markdown: None,
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
    };
    for (flag, value) in flags(argv)? {
        match flag {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(value.into()),
            "--markdown" => args.markdown = Some(value.into()),
            "--sections" => {
                args.sections = value.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = args
                    .sections
                    .iter()
                    .find(|s| !SECTIONS.contains(&s.as_str()))
                {
                    bail!("unknown section {bad}; sections: {}", SECTIONS.join(","));
                }
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn pingpong_server(argv: &[String]) -> anyhow::Result<()> {
    let (mut port, mut size, mut seconds) = (7000u16, 64usize, 60u64);
    for (flag, value) in flags(argv)? {
        match flag {
            "--port" => port = value.parse()?,
            "--size" => size = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if seconds > 3600 {
        bail!("--seconds must be at most 3600 (servers are bounded)");
    }
    netwarp_tests::pingpong::serve(port, size, Duration::from_secs(seconds))
}

fn pingpong_client(argv: &[String]) -> anyhow::Result<()> {
    let (mut addr, mut size, mut warmup, mut count) = (String::new(), 64usize, 200usize, 1000);
    for (flag, value) in flags(argv)? {
        match flag {
            "--addr" => addr = value.to_owned(),
            "--size" => size = value.parse()?,
            "--warmup" => warmup = value.parse()?,
            "--count" => count = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if count == 0 || count > 1_000_000 {
        bail!("--count must be within 1..=1000000");
    }
    let rtts =
        netwarp_tests::pingpong::client(&addr, size, warmup, count, Duration::from_secs(100))?;
    // Every round trip, in nanoseconds: the caller pools rounds.
    println!("{}", serde_json::to_string(&rtts)?);
    Ok(())
}

#[derive(Serialize)]
struct Results<'a> {
    schema: u32,
    quick: bool,
    started_at: String,
    duration_secs: f64,
    machine: &'a Machine,
    load_average_at_end: String,
    netwarp: String,
    results: serde_json::Map<String, serde_json::Value>,
    goals: &'a [Goal],
    tables: &'a [Table],
    errors: &'a [String],
}

fn bench(args: Args) -> anyhow::Result<bool> {
    if netwarp_tests::skip::missing_docker().is_some() {
        bail!(
            "the bench needs root and a Docker engine: {}",
            netwarp_tests::skip::missing_docker().unwrap_or_default()
        );
    }
    let started = Instant::now();
    let started_at = report::rfc3339(report::now_ns());
    let machine = Machine::probe();
    let netwarp = netwarp_tests::daemon::netwarp_binary();
    if !netwarp.exists() {
        bail!(
            "no netwarp binary at {} (set NETWARP_BIN)",
            netwarp.display()
        );
    }
    let me = std::env::current_exe().context("the bench binary's own path")?;
    let quick = args.quick;
    eprintln!(
        "bench: {} run on {} ({} cores, kernel {}), netwarp {}",
        if quick { "quick" } else { "full" },
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        netwarp.display()
    );

    let mut sections = Vec::new();
    let mut errors = Vec::new();
    for name in &args.sections {
        let section_started = Instant::now();
        let result = match name.as_str() {
            "paths" => paths::run(
                &paths::Params {
                    seconds: if quick { 2 } else { 10 },
                    round_trips: if quick { 2000 } else { 20_000 },
                },
                &me,
            ),
            "convergence" => {
                if quick {
                    convergence::run_section(10, &["ebpf"])
                } else {
                    convergence::run_section(50, &["ebpf", "routes"])
                }
            }
            "load" => load::run_section(
                &load::Params {
                    sizes: if quick { vec![1, 20] } else { vec![1, 50, 200] },
                    starts: if quick { 10 } else { 30 },
                    heavy_targets: if quick { 3 } else { 10 },
                    heavy_prefixes: if quick { 2000 } else { 7000 },
                    ordinary_starts: if quick { 3 } else { 10 },
                },
                &["ebpf", "routes"],
            ),
            "failover" => failover::run_section(
                &failover::Params {
                    kills: if quick { 5 } else { 20 },
                    silent_deaths: if quick { 3 } else { 10 },
                },
                &["ebpf", "routes"],
            ),
            "caps" => caps::run_section(&caps::Params {
                rates: if quick {
                    vec!["100mbit"]
                } else {
                    vec!["20mbit", "100mbit", "1gbit"]
                },
                streams: if quick { vec![1] } else { vec![1, 4] },
                seconds: if quick { 4 } else { 10 },
            }),
            "scale" => scale_section(quick),
            "wireguard" => wireguard::run_section(if quick { 2 } else { 10 }),
            _ => unreachable!("sections are checked when parsed"),
        };
        eprintln!(
            "bench: section {name} took {:.1}s",
            section_started.elapsed().as_secs_f64()
        );
        match result {
            Ok(section) => {
                for table in &section.tables {
                    println!("{}", table.text());
                }
                sections.push(section);
            }
            Err(e) => {
                let message = format!("{name}: {e:#}");
                eprintln!("bench: FAILED {message}");
                errors.push(message);
            }
        }
    }

    let goals: Vec<Goal> = sections.iter().flat_map(|s| s.goals.clone()).collect();
    let goal_table = goals_table(&goals);
    println!("{}", goal_table.text());
    let mut tables: Vec<Table> = sections.iter().flat_map(|s| s.tables.clone()).collect();
    tables.push(goal_table);
    let duration = started.elapsed().as_secs_f64();
    let results = Results {
        schema: 1,
        quick,
        started_at: started_at.clone(),
        duration_secs: duration,
        machine: &machine,
        load_average_at_end: report::load_average(),
        netwarp: netwarp.display().to_string(),
        results: sections
            .iter()
            .map(|s| (s.name.to_owned(), s.data.clone()))
            .collect(),
        goals: &goals,
        tables: &tables,
        errors: &errors,
    };
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown(&results))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    let met = goals.iter().filter(|g| g.met).count();
    eprintln!(
        "bench: done in {duration:.0}s; goals met {met}/{}; {} section(s) failed",
        goals.len(),
        errors.len()
    );
    for e in &errors {
        eprintln!("bench: error: {e}");
    }
    Ok(errors.is_empty())
}

/// Issue 19's figures for 10k containers before the controller work:
/// first reconcile ms, event p99 ms, storm converge ms, peak RSS MiB.
const SCALE_10K_BEFORE: [f64; 4] = [898.0, 734.0, 3828.0, 131.0];
/// Issue 19's goals for the same figures (each: below).
const SCALE_10K_GOALS: [f64; 4] = [500.0, 50.0, 500.0, 48.0];

/// Section 6: the controller scale harness (simulated Docker API, dry-run
/// dataplane) for 1k, 10k and 50k containers, each with an event storm.
/// Goals apply to 10k; 50k is reported without one.
fn scale_section(quick: bool) -> anyhow::Result<Section> {
    let netwarp = netwarp_tests::daemon::netwarp_binary();
    let mut reports = Vec::new();
    for size in [1000usize, 10_000, 50_000] {
        eprintln!("bench: scale: {size} containers ({})", scale::LABEL);
        let spec = ScaleSpec {
            world: WorldSpec::mix(size),
            latency_events: if quick { 10 } else { 50 },
            storm: Some(StormSpec {
                rate: 10_000,
                duration: Duration::from_secs(if quick { 2 } else { 10 }),
                seed: 0x5eed ^ size as u64,
            }),
            resync_interval_secs: 30,
            timeout: Duration::from_secs(120),
        };
        let report = scale::run(&spec, &netwarp)?;
        if !report.initial_correct {
            bail!("{size} containers: the first reconcile's state was wrong");
        }
        if report.storm.as_ref().is_some_and(|s| !s.final_correct) {
            bail!("{size} containers: the state after the storm was wrong");
        }
        reports.push(report);
    }
    let mut table = Table::new(
        &format!("6. Controller scale ({})", scale::LABEL),
        "the real netwarp binary in the dry-run dataplane against netwarp-tests' fake Docker \
         API: it measures the controller (list, inspect, plan, coalescing), not the kernel \
         dataplane and not dockerd",
        &[
            "containers",
            "warps/targets",
            "first reconcile ms",
            "event p50/p99 ms",
            "storm events (rate)",
            "storm converge ms",
            "storm reconciles",
            "peak RSS MiB",
        ],
    );
    let mut before = Table::new(
        "6b. Controller scale at 10k containers against the figures before issue 19",
        "ratio: now / before (below 1 is better)",
        &["figure", "before", "now", "ratio", "goal"],
    );
    let mut goals = Vec::new();
    for r in &reports {
        let storm = r.storm.as_ref();
        table.row(vec![
            r.containers.to_string(),
            format!("{}/{}", r.warps, r.targets),
            fmt_num(r.first_reconcile_ms),
            format!(
                "{} / {} (n={})",
                fmt_num(r.latency.p50_ms),
                fmt_num(r.latency.p99_ms),
                r.latency.count
            ),
            storm.map_or("-".into(), |s| {
                format!("{} ({:.0}/s)", s.events_sent, s.achieved_rate_per_sec)
            }),
            storm.map_or("-".into(), |s| {
                s.converge_ms.map_or("never".into(), fmt_num)
            }),
            storm.map_or("-".into(), |s| s.reconciles.to_string()),
            fmt_num(r.peak_rss_kib as f64 / 1024.0),
        ]);
        if r.containers == 10_000 {
            let measured = [
                r.first_reconcile_ms,
                r.latency.p99_ms,
                storm.and_then(|s| s.converge_ms).unwrap_or(f64::NAN),
                r.peak_rss_kib as f64 / 1024.0,
            ];
            let names = [
                ("10k first reconcile", "ms"),
                ("10k event p99", "ms"),
                ("10k storm converged after its end", "ms"),
                ("10k peak RSS", "MiB"),
            ];
            for (i, (name, unit)) in names.into_iter().enumerate() {
                goals.push(Goal::below(
                    "scale (simulated)",
                    name,
                    measured[i],
                    unit,
                    SCALE_10K_GOALS[i],
                ));
                before.row(vec![
                    name.to_owned(),
                    format!("{} {unit}", fmt_num(SCALE_10K_BEFORE[i])),
                    format!("{} {unit}", fmt_num(measured[i])),
                    fmt_num(report::ratio(measured[i], SCALE_10K_BEFORE[i])),
                    format!("< {} {unit}", SCALE_10K_GOALS[i]),
                ]);
            }
        }
    }
    Ok(Section {
        name: "scale",
        data: serde_json::json!({ "label": scale::LABEL, "reports": reports }),
        tables: vec![table, before],
        goals,
    })
}

fn markdown(results: &Results<'_>) -> String {
    let m = results.machine;
    let mut out = String::from("# netwarp benchmarks\n\n");
    out.push_str(&format!(
        "Written by `cargo xtask bench{}` on {} (took {:.0} s). Regenerate with the same \
         command; `target/bench/results.json` holds every figure.\n\n",
        if results.quick { " --quick" } else { "" },
        results.started_at,
        results.duration_secs
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&format!(
        "| | |\n|---|---|\n| CPU | {} |\n| cores | {} |\n| kernel | {} |\n| memory | {:.1} GiB |\n\
         | Docker | {} |\n| CPU mitigations | {} |\n| date | {} |\n| load average (1/5/15 min) at start / end | {} / {} |\n\n",
        m.cpu_model,
        m.cores,
        m.kernel,
        m.memory_gib,
        m.docker,
        m.cpu_mitigations,
        results.started_at,
        m.load_average_at_start,
        results.load_average_at_end
    ));
    out.push_str(
        "Every figure is a ratio against a baseline taken in the same run, or a latency \
         measured by the daemon or the kernel. The goals are targets, not assertions: the \
         bench fails only when something could not be measured or was wrong.\n\n\
         Caveats: on a small shared VM, p99 latencies follow the host's other work, and \
         the caps' CPU column is host-wide sys+softirq time, so anything else running \
         during a run lands in it; compare it only between rows run back to back. BPF \
         per-packet costs include the kernel's own stats overhead and, where the CPU \
         mitigations above are active, their tax on every helper call and return.\n\n",
    );
    if !results.errors.is_empty() {
        out.push_str("## Errors\n\n");
        for e in results.errors {
            out.push_str(&format!("- {e}\n"));
        }
        out.push('\n');
    }
    out.push_str("## Results\n\n");
    // The goals first, then each section.
    if let Some(goals) = results.tables.last() {
        out.push_str(&goals.markdown());
        out.push('\n');
    }
    for table in &results.tables[..results.tables.len().saturating_sub(1)] {
        out.push_str(&table.markdown());
        out.push('\n');
    }
    out
}
