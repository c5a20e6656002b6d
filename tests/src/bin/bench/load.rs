//! Section `load`: convergence under load on real containers, per
//! dataplane (tables 4b and 4c).
//!
//! (a) Population: a target's start -> programmed (the daemon's own
//!     `latency_ms`, from the Docker start event's timestamp) while 1, 50
//!     or 200 idle targets of the same warp are already programmed. One
//!     population grows from size to size; for each size and dataplane a
//!     fresh daemon programs it in its first pass (whose duration is
//!     reported too), then new targets start one at a time, each removed
//!     once programmed so that the population stays at its size.
//! (b) Heavy labels: targets whose rules label holds thousands of distinct
//!     /32s (from a test-only range). With the daemon running, each heavy
//!     target starts in turn (start -> programmed, or what stopped it);
//!     then ordinary targets (the global rule only) start beside them.
//!     Then the daemon restarts with the heavy targets running: its first
//!     pass's duration. Reported besides: netwarp's rules in the host's
//!     `ip rule`/`ip -6 rule` (the routes guard) and each heavy target's
//!     state in `netwarp status --json`, read generically so that new
//!     states show as they are.
//!
//! Network safety: `--internal` networks on a /22 of 10.200.0.0/16, heavy
//! prefixes in 10.202.0.0/15 (neither is the machine's), no traffic but
//! one bounded probe to the warp's own REMOTE address; every container and
//! daemon is a drop guard, and the daemons' host rules are removed by
//! `netwarp cleanup` before they drop.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually, log_field},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    steering::{GLOBAL_RULES, reaches, run_warp, start_heavy_target, warp_script},
};
use serde::Serialize;

use crate::{
    Section,
    paths::DAEMON_ENV,
    report::{Goal, Spread, Table, fmt_num, ratio},
};

pub struct Params {
    /// Population sizes, ascending.
    pub sizes: Vec<usize>,
    /// Measured starts per size and dataplane.
    pub starts: usize,
    pub heavy_targets: u32,
    pub heavy_prefixes: u32,
    /// Ordinary targets started beside the heavy ones.
    pub ordinary_starts: usize,
}

/// `docker run`s in flight while a population grows (2 cores: more only
/// queues inside dockerd).
const PARALLEL_STARTS: usize = 6;
const WAIT: Duration = Duration::from_secs(20);
/// A heavy target's programming, or a first pass over heavy targets.
const HEAVY_WAIT: Duration = Duration::from_secs(120);
/// The heavy part raises the prefix limit above its labels' size (the
/// default, 4,096, would block each of them whole, cheaply): it measures
/// what programming them costs the others.
const HEAVY_ENV: &[(&str, &str)] = &[
    ("NETWARP_LOGGING_LEVEL", "info"),
    ("NETWARP_LIMITS_MAX_PREFIXES_PER_TARGET", "8192"),
];
const FIRST_PASS_WAIT: Duration = Duration::from_secs(300);
/// How long a target may still become programmed after a warning.
const AFTER_WARNING: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct PopulationRun {
    mode: &'static str,
    /// Targets already programmed.
    size: usize,
    first_pass_ms: f64,
    /// The daemon's VmRSS right after its first pass, MiB.
    rss_after_first_pass_mib: f64,
    /// The daemon's VmHWM once the measured starts are done, MiB.
    peak_rss_mib: f64,
    start_ms: Vec<f64>,
    start: Spread,
}

#[derive(Debug, Serialize)]
struct HeavyTarget {
    name: String,
    /// Start -> programmed with the daemon running; None if it never was.
    start_ms: Option<f64>,
    /// The first warning the daemon logged for it, if any.
    warning: Option<String>,
    /// `state (reason; error)` from `netwarp status --json` once every heavy
    /// target started, and after the daemon restarted.
    state_running: String,
    state_after_restart: String,
}

#[derive(Debug, Serialize)]
struct HeavyRun {
    mode: &'static str,
    prefixes_per_target: u32,
    targets: Vec<HeavyTarget>,
    /// Ordinary targets started beside the heavy ones; the starts stop at
    /// the first that is never programmed.
    ordinary_starts: usize,
    ordinary_start_ms: Vec<f64>,
    ordinary_start: Spread,
    /// Why an ordinary target was never programmed (the daemon's warning).
    ordinary_failure: Option<String>,
    /// The first ordinary target reached REMOTE through its warp.
    ordinary_reaches_remote: bool,
    /// netwarp's host rules (IPv4, IPv6) with every heavy target started.
    host_rules_running: (usize, usize),
    /// The restarted daemon's first pass, with the heavy targets running.
    first_pass_ms: f64,
    host_rules_after_restart: (usize, usize),
}

pub fn run_section(params: &Params, modes: &[&'static str]) -> anyhow::Result<Section> {
    let started = Instant::now();
    let population = population(params, modes)?;
    let population_secs = started.elapsed().as_secs_f64();
    let mut heavy = Vec::new();
    for &mode in modes {
        heavy.push(heavy_labels(params, mode)?);
    }
    let heavy_secs = started.elapsed().as_secs_f64() - population_secs;
    tabulate(params, population, heavy, population_secs, heavy_secs)
}

fn population(params: &Params, modes: &[&'static str]) -> anyhow::Result<Vec<PopulationRun>> {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable_in_test_range("nwbl")?;
    let warp_name = labels.warp_name("gw");
    let _warp = run_warp(&warp_name, &network, &warp_script(), &[])?;
    let target_label = labels.target_label(&warp_name);
    let target_args = ["--label", target_label.as_str()];
    let mut population = Vec::new();
    let mut runs = Vec::new();
    for &size in &params.sizes {
        let grow_started = Instant::now();
        start_many(
            &network,
            &target_args,
            size.saturating_sub(population.len()),
            &mut population,
        )?;
        eprintln!(
            "bench: load: population of {size} running ({:.0}s to start)",
            grow_started.elapsed().as_secs_f64()
        );
        for &mode in modes {
            let mut daemon = Daemon::start_with_env(&labels, mode, GLOBAL_RULES, DAEMON_ENV)?;
            let first_pass_ms = first_pass_ms(&daemon, WAIT + Duration::from_secs(size as u64))?;
            let (rss_after_first_pass_mib, _) = daemon_rss_mib(&daemon);
            let steered = steered_count(&daemon)?;
            if steered < size {
                bail!("{mode}: {steered} of {size} targets steered after the first pass");
            }
            if !reaches(&population[0], 8080) {
                bail!("{mode}: a programmed target does not reach REMOTE through its warp");
            }
            eprintln!(
                "bench: load, {mode}: {size} programmed; {} starts",
                params.starts
            );
            let mut start_ms = Vec::new();
            for i in 0..params.starts {
                let target = Container::run("nwbs", &network, &target_args, &["sleep", "600"])?;
                let latency = wait_programmed(&daemon, target.name(), WAIT)
                    .latency
                    .with_context(|| {
                        format!(
                            "{mode}, {size} programmed, start {i}: {} was never programmed",
                            target.name()
                        )
                    })?;
                start_ms.push(latency);
                drop(target);
                // Let the daemon see the removal before the next start.
                std::thread::sleep(Duration::from_millis(200));
            }
            let (_, peak_rss_mib) = daemon_rss_mib(&daemon);
            daemon.stop_and_clean_up()?;
            runs.push(PopulationRun {
                mode,
                size,
                first_pass_ms,
                rss_after_first_pass_mib,
                peak_rss_mib,
                start: Spread::of(&start_ms),
                start_ms,
            });
        }
    }
    Ok(runs)
}

/// Starts `count` idle targets with `args`, at most [`PARALLEL_STARTS`] at
/// a time, into `population`; stops at the first failure.
fn start_many(
    network: &DockerNetwork,
    args: &[&str],
    count: usize,
    population: &mut Vec<Container>,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let started = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_STARTS.min(count) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed)
                    && next.fetch_add(1, Ordering::Relaxed) < count
                {
                    match Container::run("nwbp", network, args, &["sleep", "3600"]) {
                        Ok(c) => started.lock().expect("not poisoned").push(c),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    population.extend(started.into_inner().expect("not poisoned"));
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e.context("starting the population")),
        None => Ok(()),
    }
}

fn heavy_labels(params: &Params, mode: &'static str) -> anyhow::Result<HeavyRun> {
    let (n, prefixes) = (params.heavy_targets, params.heavy_prefixes);
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable_in_test_range("nwbh")?;
    let warp_name = labels.warp_name("gw");
    let _warp = run_warp(&warp_name, &network, &warp_script(), &[])?;
    let target_label = labels.target_label(&warp_name);
    let mut daemon = Daemon::start_with_env(&labels, mode, GLOBAL_RULES, HEAVY_ENV)?;
    daemon.wait_for_log("initial reconcile complete", WAIT)?;

    eprintln!("bench: load, {mode}: {n} heavy targets of {prefixes} prefixes, one at a time");
    let mut heavy = Vec::new();
    let mut outcomes = Vec::new();
    for index in 0..n {
        let target = start_heavy_target("nwbH", &network, &labels, &target_label, index, prefixes)?;
        let outcome = wait_programmed(&daemon, target.name(), HEAVY_WAIT);
        eprintln!(
            "bench: load, {mode}: heavy {index}: {}",
            outcome.latency.map_or_else(
                || format!(
                    "not programmed ({})",
                    outcome.warning.as_deref().unwrap_or("no warning")
                ),
                |ms| format!("{ms:.0} ms"),
            )
        );
        heavy.push(target);
        outcomes.push(outcome);
    }
    let host_rules_running = settled_host_rules(&daemon)?;
    let states_running = states(&daemon, &heavy);

    eprintln!(
        "bench: load, {mode}: {} ordinary starts beside them",
        params.ordinary_starts
    );
    let mut ordinary_start_ms = Vec::new();
    let mut ordinary_failure = None;
    let mut ordinary_reaches_remote = false;
    let ordinary_args = ["--label", target_label.as_str()];
    for i in 0..params.ordinary_starts {
        let target = Container::run("nwbo", &network, &ordinary_args, &["sleep", "600"])?;
        let outcome = wait_programmed(&daemon, target.name(), HEAVY_WAIT);
        let Some(latency) = outcome.latency else {
            // What the heavy targets cost the others: reported, and no
            // more starts (each would only wait as long).
            let why = outcome.warning.unwrap_or_else(|| "no warning".into());
            eprintln!("bench: load, {mode}: ordinary start {i} was never programmed: {why}");
            ordinary_failure = Some(why);
            break;
        };
        ordinary_start_ms.push(latency);
        if i == 0 {
            ordinary_reaches_remote = eventually(WAIT, || reaches(&target, 8080));
        }
        drop(target);
        std::thread::sleep(Duration::from_millis(200));
    }

    eprintln!("bench: load, {mode}: daemon restart with the heavy targets running");
    daemon.stop_and_clean_up()?;
    drop(daemon);
    let mut daemon = Daemon::start_with_env(&labels, mode, GLOBAL_RULES, HEAVY_ENV)?;
    let first_pass_ms = first_pass_ms(&daemon, FIRST_PASS_WAIT)?;
    let host_rules_after_restart = settled_host_rules(&daemon)?;
    let states_after_restart = states(&daemon, &heavy);
    daemon.stop_and_clean_up()?;
    let left = daemon.host_guard_rule_counts()?;
    if left != (0, 0) {
        bail!("{mode}: netwarp cleanup left {left:?} host rules");
    }

    let targets = heavy
        .iter()
        .zip(outcomes)
        .zip(states_running.into_iter().zip(states_after_restart))
        .map(|((target, outcome), (running, restarted))| HeavyTarget {
            name: target.name().to_owned(),
            start_ms: outcome.latency,
            warning: outcome.warning,
            state_running: running,
            state_after_restart: restarted,
        })
        .collect();
    Ok(HeavyRun {
        mode,
        prefixes_per_target: prefixes,
        targets,
        ordinary_starts: params.ordinary_starts,
        ordinary_start: Spread::of(&ordinary_start_ms),
        ordinary_start_ms,
        ordinary_failure,
        ordinary_reaches_remote,
        host_rules_running,
        first_pass_ms,
        host_rules_after_restart,
    })
}

struct Programmed {
    latency: Option<f64>,
    warning: Option<String>,
}

/// Waits for `container`'s `target programmed after event` line, for at
/// most `timeout`, and at most [`AFTER_WARNING`] once the daemon logged a
/// warning for it (a failure it only retries on later passes).
fn wait_programmed(daemon: &Daemon, container: &str, timeout: Duration) -> Programmed {
    let mut outcome = Programmed {
        latency: None,
        warning: None,
    };
    let mut deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for line in daemon.log().lines() {
            if log_field(line, "container") != Some(container) {
                continue;
            }
            if line.contains("target programmed after event") {
                outcome.latency = log_field(line, "latency_ms").and_then(|v| v.parse().ok());
                if outcome.latency.is_some() {
                    return outcome;
                }
            }
            if outcome.warning.is_none() && (line.contains(" WARN ") || line.contains(" ERROR ")) {
                outcome.warning = Some(warning_text(line));
                deadline = deadline.min(Instant::now() + AFTER_WARNING);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    outcome
}

/// A log line without its timestamp and span, shortened for a table.
fn warning_text(line: &str) -> String {
    let text = line.split_once(": ").map_or(line, |(_, rest)| rest);
    let text = text
        .strip_prefix("netwarp::")
        .and_then(|t| t.split_once(": "))
        .map_or(text, |(_, rest)| rest);
    text.chars().take(160).collect()
}

/// The daemon's `(VmRSS, VmHWM)` in MiB (NaN if it does not run).
fn daemon_rss_mib(daemon: &Daemon) -> (f64, f64) {
    let Some(pid) = daemon.pid() else {
        return (f64::NAN, f64::NAN);
    };
    let (rss, peak) = netwarp_tests::scale::rss_kib(pid);
    let mib = |kib: u64| {
        if kib == 0 {
            f64::NAN
        } else {
            kib as f64 / 1024.0
        }
    };
    (mib(rss), mib(peak))
}

/// The `duration_ms` of the daemon's `initial reconcile complete` line.
fn first_pass_ms(daemon: &Daemon, timeout: Duration) -> anyhow::Result<f64> {
    daemon.wait_for_log("initial reconcile complete", timeout)?;
    daemon
        .log()
        .lines()
        .find(|l| l.contains("initial reconcile complete"))
        .and_then(|l| log_field(l, "duration_ms")?.parse().ok())
        .context("no duration_ms in `initial reconcile complete`")
}

/// netwarp's host rules once the count holds still for two seconds (the
/// routes guard is written after the targets of a pass), for at most
/// [`HEAVY_WAIT`].
fn settled_host_rules(daemon: &Daemon) -> anyhow::Result<(usize, usize)> {
    let deadline = Instant::now() + HEAVY_WAIT;
    let mut last = daemon.host_guard_rule_counts()?;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = daemon.host_guard_rule_counts()?;
        if now == last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Targets `netwarp status` shows as steered.
fn steered_count(daemon: &Daemon) -> anyhow::Result<usize> {
    let status = status_json(daemon)?;
    Ok(status["targets"]
        .as_array()
        .context("status has no targets")?
        .iter()
        .filter(|t| t["state"] == "steered")
        .count())
}

/// Each container's `state (reason; error)` in `netwarp status --json`,
/// whatever the states are called.
fn states(daemon: &Daemon, containers: &[Container]) -> Vec<String> {
    let status = status_json(daemon);
    containers
        .iter()
        .map(|c| match &status {
            Err(e) => format!("status failed: {e:#}"),
            Ok(status) => status_target(status, c.name()).map_or("not listed".into(), |t| {
                let mut text = t["state"].as_str().unwrap_or("?").to_owned();
                let details: Vec<&str> = [&t["reason"], &t["error"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                if !details.is_empty() {
                    let details: String = details.join("; ").chars().take(160).collect();
                    text.push_str(&format!(" ({details})"));
                }
                text
            }),
        })
        .collect()
}

fn tabulate(
    params: &Params,
    population: Vec<PopulationRun>,
    heavy: Vec<HeavyRun>,
    population_secs: f64,
    heavy_secs: f64,
) -> anyhow::Result<Section> {
    let mut table = Table::new(
        "4b. Target start with many targets programmed (real containers)",
        &format!(
            "Docker start event of a new idle target -> its policy programmed (the daemon's own \
             latency_ms), while N targets of the same warp are already programmed; each new \
             target is removed once programmed. First pass: a fresh daemon programming the N \
             (the real-engine counterpart of section 6); RSS: the daemon's VmRSS right after \
             that pass, and its peak (VmHWM) once the starts are done. Took {population_secs:.0} s"
        ),
        &[
            "dataplane",
            "programmed",
            "first pass ms",
            "RSS MiB",
            "peak RSS MiB",
            "n",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
    );
    let mut goals = Vec::new();
    for run in &population {
        table.row(vec![
            run.mode.to_owned(),
            run.size.to_string(),
            fmt_num(run.first_pass_ms),
            fmt_num(run.rss_after_first_pass_mib),
            fmt_num(run.peak_rss_mib),
            run.start.count.to_string(),
            fmt_num(run.start.p50),
            fmt_num(run.start.p99),
            fmt_num(run.start.max),
        ]);
        goals.push(Goal::below(
            "load",
            &format!("{} start p99, {} programmed", run.mode, run.size),
            run.start.p99,
            "ms",
            60.0,
        ));
    }
    let (smallest, largest) = (params.sizes.first(), params.sizes.last());
    for mode in population
        .iter()
        .map(|r| r.mode)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let p99 = |size: Option<&usize>| {
            population
                .iter()
                .find(|r| r.mode == mode && Some(&r.size) == size)
                .map_or(f64::NAN, |r| r.start.p99)
        };
        if let (Some(s), Some(l)) = (smallest, largest) {
            goals.push(Goal::at_most(
                "load",
                &format!("{mode} start p99, {l} / {s} programmed"),
                ratio(p99(largest), p99(smallest)),
                "x",
                1.3,
            ));
        }
    }

    let mut heavy_table = Table::new(
        "4c. Heavy rules labels (real containers)",
        &format!(
            "{} targets, each with a rules label of {} distinct /32s (10.202.0.0/15; the daemon's \
             limits.max_prefixes_per_target raised to 8192 so that they are programmed, not \
             blocked whole), started one at a time with the daemon running: start -> programmed (or the daemon's warning), \
             and their state in netwarp status once all started / after a daemon restart. Then \
             {} ordinary targets (the global rule) started beside them; then the daemon \
             restarted with the heavy targets running (its first pass). Host rules: netwarp's \
             rules (proto 87) in the host's ip rule / ip -6 rule. Took {heavy_secs:.0} s",
            params.heavy_targets, params.heavy_prefixes, params.ordinary_starts
        ),
        &[
            "dataplane",
            "target",
            "start -> programmed ms",
            "state (all started)",
            "state (after restart)",
        ],
    );
    let mut summary = Table::new(
        "4c. Heavy rules labels: summary",
        "the same runs as above",
        &[
            "dataplane",
            "heavy programmed",
            "ordinary programmed",
            "ordinary start p50 / max ms",
            "ordinary reaches warp",
            "first pass ms (restart)",
            "host rules v4/v6 (running)",
            "host rules v4/v6 (restart)",
        ],
    );
    for run in &heavy {
        for (i, t) in run.targets.iter().enumerate() {
            heavy_table.row(vec![
                run.mode.to_owned(),
                format!("heavy {i}"),
                t.start_ms.map_or_else(
                    || format!("never: {}", t.warning.as_deref().unwrap_or("timed out")),
                    fmt_num,
                ),
                t.state_running.clone(),
                t.state_after_restart.clone(),
            ]);
        }
        let programmed = run.targets.iter().filter(|t| t.start_ms.is_some()).count();
        goals.push(Goal::at_least(
            "load",
            &format!("{} ordinary targets programmed beside heavy ones", run.mode),
            ratio(run.ordinary_start.count as f64, run.ordinary_starts as f64),
            "of starts",
            1.0,
        ));
        // Issue 11's start goal, beside heavy labels as without them.
        goals.push(Goal::below(
            "load",
            &format!("{} ordinary start p99 beside heavy ones", run.mode),
            run.ordinary_start.p99,
            "ms",
            60.0,
        ));
        summary.row(vec![
            run.mode.to_owned(),
            format!("{programmed}/{}", run.targets.len()),
            match &run.ordinary_failure {
                None => format!("{}/{}", run.ordinary_start.count, run.ordinary_starts),
                Some(why) => format!(
                    "{}/{} (start {} never: {why})",
                    run.ordinary_start.count,
                    run.ordinary_starts,
                    run.ordinary_start.count + 1
                ),
            },
            format!(
                "{} / {}",
                fmt_num(run.ordinary_start.p50),
                fmt_num(run.ordinary_start.max)
            ),
            if run.ordinary_reaches_remote {
                "yes"
            } else {
                "NO"
            }
            .to_owned(),
            fmt_num(run.first_pass_ms),
            format!("{}/{}", run.host_rules_running.0, run.host_rules_running.1),
            format!(
                "{}/{}",
                run.host_rules_after_restart.0, run.host_rules_after_restart.1
            ),
        ]);
    }
    Ok(Section {
        name: "load",
        data: serde_json::json!({
            "population": population,
            "population_secs": population_secs,
            "heavy": heavy,
            "heavy_secs": heavy_secs,
        }),
        tables: vec![table, heavy_table, summary],
        goals,
    })
}
