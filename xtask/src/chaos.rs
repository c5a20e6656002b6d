//! `cargo xtask chaos` (the full reliability suite and its report) and
//! `cargo xtask fuzz` (every cargo-fuzz target for N minutes).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    command::{capture, cargo, run_inherit, workspace_root},
    witness::Witness,
};

const FUZZ_TARGETS: [&str; 4] = ["rules", "rate", "config", "packet"];

/// The isolation witness's result, in `report_dir()`.
const WITNESS_JSON: &str = "witness.json";

/// The chaos scenarios chaos_e2e saves (`<file>.json` in `report_dir()`),
/// with the label of their rows in the report.
const SCENARIOS: [(&str, &str); 6] = [
    ("chaos-routes", "routes"),
    ("chaos-ebpf", "ebpf"),
    ("chaos-vpn-routes", "routes, WireGuard warp"),
    ("chaos-vpn-ebpf", "ebpf, WireGuard warp"),
    ("chaos-failover-routes", "routes, failover group"),
    ("chaos-failover-ebpf", "ebpf, failover group"),
];

/// The guarantee the suite checks, and its limits, as RELIABILITY.md
/// states them.
const GUARANTEE: &str = "Guarantee: a target's steered traffic leaves the host only after its \
warp has tunnelled or NATed it: 0 packets leaked in every fault below, in both dataplanes, with a \
real WireGuard warp (userspace `wireguard-go`) among them. Limits: a warp on `--network host` is \
refused, not guarded; routes mode drops what a warp forwards untunnelled but has no per-warp \
counter of it (eBPF counts it as `untunnelled_drops`); the guard matches source addresses, which a \
container on the same network could spoof; a network's first target is guarded only once netwarp \
has seen it, so on a routed network its first packets can leave (the scenarios below keep that \
window out of their counts).";

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Also run every fuzz target for this many minutes first (0: reuse
    /// the last `cargo xtask fuzz` results, if any).
    #[arg(long, default_value_t = 0)]
    fuzz_minutes: u64,
    /// The short counts of `cargo xtask test` (no dockerd restarts), for a
    /// report on a machine other work shares.
    #[arg(long)]
    short: bool,
    /// Full counts, but no dockerd restarts (safe while others use Docker).
    #[arg(long)]
    no_dockerd: bool,
    /// Only render the report again from the JSON in target/chaos/ (for
    /// example after `cargo xtask fuzz`), describing the run as given by
    /// the other flags.
    #[arg(long)]
    render_only: bool,
    /// Where to write the report.
    #[arg(long, default_value = "RELIABILITY.md")]
    report: PathBuf,
}

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Minutes per target.
    #[arg(default_value_t = 1)]
    minutes: u64,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

fn report_dir() -> PathBuf {
    workspace_root().join("target/chaos")
}

/// `cargo xtask fuzz [MINUTES] [TARGETS...]`.
pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("netwarp/fuzz");
    let target_dir = root.join("target/fuzz");
    run_inherit(
        Command::new("cargo")
            .current_dir(root.join("netwarp"))
            .env("CARGO_TARGET_DIR", &target_dir)
            .args(["+nightly", "fuzz", "build", "-O"]),
    )
    .context("building the fuzz targets (needs nightly and `cargo install cargo-fuzz`)")?;
    let binaries = target_dir.join("x86_64-unknown-linux-gnu/release");
    let targets: Vec<String> = if args.targets.is_empty() {
        FUZZ_TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets
    };
    // Merged with earlier results, so targets can be run one at a time.
    let mut results = match read_json(&report_dir().join("fuzz.json")) {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        let crashes_before = count_crashes(&artifacts);
        let warnings_before = kernel_warnings();
        println!("xtask: fuzzing {target} for {} min", args.minutes);
        let output = Command::new(binaries.join(target))
            .current_dir(&fuzz_dir)
            .arg(format!("-max_total_time={}", args.minutes * 60))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .output()
            .with_context(|| format!("running the {target} fuzz target"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let execs: u64 = log
            .lines()
            .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .filter_map(|v| v.trim().parse().ok())
            .next_back()
            .unwrap_or(0);
        let crashes = count_crashes(&artifacts) - crashes_before;
        let new_warnings = kernel_warnings().saturating_sub(warnings_before);
        println!(
            "xtask: {target}: {execs} executions, {crashes} crashes, {new_warnings} new kernel \
             WARN/BUG lines, exit {}",
            output.status
        );
        results.insert(
            target.clone(),
            serde_json::json!({
                "minutes": args.minutes,
                "executions": execs,
                "crashes": crashes,
                "kernel_warnings": new_warnings,
                "exit_ok": output.status.success(),
            }),
        );
    }
    fs::create_dir_all(report_dir())?;
    fs::write(
        report_dir().join("fuzz.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let failed: Vec<&String> = results
        .iter()
        .filter(|(t, _)| targets.contains(t))
        .filter(|(_, r)| {
            r["crashes"].as_u64() != Some(0) || r["kernel_warnings"].as_u64() != Some(0)
        })
        .map(|(t, _)| t)
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets found problems: {failed:?} (see netwarp/fuzz/artifacts)");
    }
    Ok(())
}

fn count_crashes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    ["crash-", "leak-", "timeout-", "oom-"]
                        .iter()
                        .any(|p| name.starts_with(p))
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// WARN/BUG lines in the kernel log so far.
fn kernel_warnings() -> u64 {
    capture(&mut Command::new("dmesg"))
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("WARNING:") || l.contains("BUG:"))
                .count() as u64
        })
        .unwrap_or(0)
}

/// `cargo xtask chaos`: the full fault counts (including dockerd
/// restarts, so nothing else may use Docker meanwhile), the flood, and
/// the report.
pub fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    if args.render_only {
        let passed = results_pass(&report_dir());
        let report = render(&report_dir(), passed, args.short)?;
        let report = if args.no_dockerd && !args.short {
            report.replacen(
                "Suite result",
                "Run with `--no-dockerd`: no dockerd restarts. Suite result",
                1,
            )
        } else {
            report
        };
        fs::write(root.join(&args.report), &report)?;
        println!("{report}\nxtask: wrote {}", args.report.display());
        return Ok(());
    }
    if args.fuzz_minutes > 0 {
        fuzz(FuzzArgs {
            minutes: args.fuzz_minutes,
            targets: Vec::new(),
        })?;
    }
    // The daemon as operators run it: a release build (the flood's
    // event rate is the daemon's to sustain, not a debug build's).
    run_inherit(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "--package", "netwarp"]),
    )?;
    let dir = report_dir();
    fs::create_dir_all(&dir)?;
    let stale = SCENARIOS
        .iter()
        .map(|(file, _)| format!("{file}.json"))
        .chain(["flood.json".to_owned(), WITNESS_JSON.to_owned()]);
    for stale in stale {
        let _ = fs::remove_file(dir.join(stale));
    }
    // An unlabelled container that lives through the whole suite (dockerd
    // restarts included) and must come out byte-identical.
    let witness = Witness::start(&root, dir.join("isolation-witness-state.json"))?;
    let status = cargo()
        .current_dir(&root)
        .args([
            "test",
            "--package",
            "netwarp-tests",
            "--test",
            "chaos_e2e",
            "--",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("NETWARP_CHAOS", if args.short { "short" } else { "full" })
        .env("NETWARP_CHAOS_REPORT_DIR", &dir)
        .env(
            "NETWARP_CHAOS_DOCKERD",
            if args.no_dockerd { "0" } else { "1" },
        )
        .env("NETWARP_BIN", root.join("target/release/netwarp"))
        .status()
        .context("running chaos_e2e")?;
    println!("\n=== isolation witness ===");
    let witness = witness.check();
    fs::write(
        dir.join(WITNESS_JSON),
        serde_json::to_string_pretty(&serde_json::json!({
            "unchanged": witness.unchanged(),
            "summary": witness.summary(),
        }))?,
    )?;
    let passed = status.success() && witness.unchanged();
    let mut report = render(&dir, passed, args.short)?;
    if args.no_dockerd && !args.short {
        report = report.replacen(
            "Suite result",
            "Run with `--no-dockerd`: no dockerd restarts. Suite result",
            1,
        );
    }
    fs::write(root.join(&args.report), &report)?;
    println!("{report}\nxtask: wrote {}", args.report.display());
    if !status.success() {
        bail!("the chaos suite failed; see {}", args.report.display());
    }
    if !witness.unchanged() {
        bail!("{}", witness.summary());
    }
    Ok(())
}

/// What chaos_e2e asserts, judged from the JSON it wrote: no lost state,
/// no leak at all (the bridge guard holds every fault's window), the
/// bystander unchanged, the flood correct; and the suite-wide witness
/// unchanged.
fn results_pass(dir: &Path) -> bool {
    let scenarios_ok = SCENARIOS.iter().all(|(file, _)| {
        read_json(&dir.join(format!("{file}.json"))).is_some_and(|r| {
            r["bystander_unchanged"].as_bool() == Some(true)
                && r["faults"].as_array().is_some_and(|faults| {
                    faults.iter().all(|f| {
                        f["lost_state"].as_u64() == Some(0)
                            && f["leaked_packets"].as_u64() == Some(0)
                    })
                })
        })
    });
    let flood_ok = read_json(&dir.join("flood.json"))
        .is_some_and(|f| f["storm"]["final_correct"].as_bool() == Some(true));
    let witness_ok =
        read_json(&dir.join(WITNESS_JSON)).is_some_and(|w| w["unchanged"].as_bool() == Some(true));
    scenarios_ok && flood_ok && witness_ok
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// The Markdown report from the JSON the tests and the fuzzer wrote.
fn render(dir: &Path, passed: bool, short: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# netwarp reliability report\n")?;
    writeln!(
        out,
        "Written by `cargo xtask chaos{}` ({} counts: `NETWARP_CHAOS={} cargo test -p \
         netwarp-tests --test chaos_e2e`). Suite result: **{}**.\n",
        if short { " --short" } else { "" },
        if short { "short" } else { "full" },
        if short { "short" } else { "full" },
        if passed { "passed" } else { "FAILED" }
    )?;
    writeln!(out, "{GUARANTEE}\n")?;
    writeln!(
        out,
        "| dataplane | fault | injected | survived | lost state | leaked packets | notes |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---|")?;
    let mut summary = Vec::new();
    for (file, mode) in SCENARIOS {
        let Some(report) = read_json(&dir.join(format!("{file}.json"))) else {
            writeln!(
                out,
                "| {mode} | (no report: the scenario did not finish) | | | | | |"
            )?;
            continue;
        };
        for fault in report["faults"].as_array().into_iter().flatten() {
            let notes: Vec<String> = fault["notes"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(fault["failures"].as_array().into_iter().flatten())
                .filter_map(|n| n.as_str().map(|s| s.replace('|', "/")))
                .collect();
            writeln!(
                out,
                "| {mode} | {} | {} | {} | {} | {}{} | {} |",
                fault["fault"].as_str().unwrap_or("?"),
                fault["injected"],
                fault["survived"],
                fault["lost_state"],
                fault["leaked_packets"],
                if fault["leak_window"].as_bool() == Some(true) {
                    " (window)"
                } else {
                    ""
                },
                notes.join("; ")
            )?;
        }
        summary.push(format!(
            "- {mode}: leaked packets {} in total {}; probes delivered \
             {} / failed {} ({:.1}% delivered, blocked periods included); unlabelled \
             container unchanged: {}; daemon peak RSS {} KiB; {:.0} s",
            report["leaked_packets"],
            if file.starts_with("chaos-vpn") || file.starts_with("chaos-failover") {
                "over the whole scenario"
            } else {
                "after the first reconcile"
            },
            report["probes_delivered"],
            report["probes_failed"],
            report["delivered_fraction"].as_f64().unwrap_or(0.0) * 100.0,
            report["bystander_unchanged"],
            report["daemon_peak_rss_kib"],
            report["total_secs"].as_f64().unwrap_or(0.0),
        ));
    }
    writeln!(out, "\n{}\n", summary.join("\n"))?;
    match read_json(&dir.join(WITNESS_JSON)) {
        Some(witness) => {
            writeln!(
                out,
                "Unlabelled witness container across the whole suite: routes, rules, qdiscs \
                 and tc attachments byte-identical: {}\n",
                witness["unchanged"]
            )?;
            if witness["unchanged"].as_bool() != Some(true) {
                writeln!(
                    out,
                    "```text\n{}\n```\n",
                    witness["summary"].as_str().unwrap_or("?")
                )?;
            }
        }
        None => writeln!(
            out,
            "Unlabelled witness container across the whole suite: no result (target/chaos/{} \
             is missing).\n",
            WITNESS_JSON
        )?,
    }
    if let Some(flood) = read_json(&dir.join("flood.json")) {
        let storm = &flood["storm"];
        writeln!(
            out,
            "## Event flood (simulated Docker API, dry-run dataplane)\n\n\
             {} events at {} /s requested ({:.0} /s achieved) against {} containers: {} \
             reconcile passes (coalesced), {} inspects, converged in {} ms, final state \
             correct: {} ({} mismatches); daemon peak RSS {} KiB.\n",
            storm["events_sent"],
            storm["rate_per_sec"],
            storm["achieved_rate_per_sec"].as_f64().unwrap_or(0.0),
            flood["containers"],
            storm["reconciles"],
            storm["inspect_calls"],
            storm["converge_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0}")),
            storm["final_correct"],
            storm["mismatches"],
            flood["peak_rss_kib"],
        )?;
    }
    writeln!(out, "## Fuzzing\n")?;
    match read_json(&dir.join("fuzz.json")) {
        Some(Value::Object(targets)) => {
            writeln!(
                out,
                "| target | minutes | executions | crashes | new kernel WARN/BUG |"
            )?;
            writeln!(out, "|---|---:|---:|---:|---:|")?;
            for (name, r) in targets {
                writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} |",
                    r["minutes"], r["executions"], r["crashes"], r["kernel_warnings"]
                )?;
            }
        }
        _ => writeln!(
            out,
            "No `cargo xtask fuzz` results in target/chaos/fuzz.json."
        )?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scenario's rows render under its label, the guarantee is
    /// stated, and a missing or leaking scenario fails the suite.
    #[test]
    fn render_has_a_row_per_scenario_and_judges_every_one() {
        let dir = std::env::temp_dir().join(format!("xtask-chaos-render-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let scenario = |leaked: u64| {
            serde_json::json!({
                "mode": "x", "leaked_packets": leaked, "probes_delivered": 1,
                "probes_failed": 0, "delivered_fraction": 1.0, "bystander_unchanged": true,
                "daemon_peak_rss_kib": 1, "total_secs": 1.0,
                "faults": [{"fault": "a fault", "injected": 1, "survived": 1, "lost_state": 0,
                            "leaked_packets": leaked, "notes": [], "failures": [],
                            "leak_window": false}],
            })
            .to_string()
        };
        for (file, _) in SCENARIOS {
            fs::write(dir.join(format!("{file}.json")), scenario(0)).unwrap();
        }
        fs::write(
            dir.join("flood.json"),
            r#"{"storm": {"final_correct": true}}"#,
        )
        .unwrap();
        fs::write(dir.join(WITNESS_JSON), r#"{"unchanged": true}"#).unwrap();
        assert!(results_pass(&dir));
        let report = render(&dir, true, false).unwrap();
        assert!(report.contains("Guarantee: "), "{report}");
        for label in [
            "routes",
            "ebpf",
            "routes, WireGuard warp",
            "ebpf, WireGuard warp",
        ] {
            assert!(
                report.contains(&format!("| {label} | a fault |")),
                "{report}"
            );
        }

        fs::write(dir.join("chaos-vpn-ebpf.json"), scenario(1)).unwrap();
        assert!(!results_pass(&dir), "a leak passed");
        fs::remove_file(dir.join("chaos-vpn-routes.json")).unwrap();
        let report = render(&dir, false, false).unwrap();
        assert!(
            report.contains("| routes, WireGuard warp | (no report"),
            "{report}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
