//! Section 4: convergence on real containers, per dataplane.
//!
//! (a) target start: a new target container starts; the daemon's own
//!     `latency_ms` of `target programmed after event` (from the Docker
//!     start event's timestamp until its policy is in the BPF maps).
//! (b) warp recreate with a new IP, the way docker-compose recreates: the
//!     old warp is renamed (it keeps its IP), a new one starts under the
//!     warp's name (so it gets another IP and MAC, and a new veth), and the
//!     old one is removed. Measured from the new warp's `start` event
//!     (`docker events` TimeNano) until the daemon's log line
//!     `target programmed ...` for the *last* of the warp's targets after
//!     it classified that target as steered via the new IP (log
//!     timestamps, microseconds, same host clock).

use std::time::Duration;

use anyhow::{Context as _, bail};
use netwarp_tests::{
    command::run,
    daemon::{Daemon, TestLabels, eventually, log_field},
    docker::{Container, DockerNetwork},
    steering::{GLOBAL_RULES, reaches, start_warp},
};
use serde::Serialize;

use crate::{
    Section,
    report::{Goal, Spread, Table, fmt_num, now_ns, parse_rfc3339_utc_ns},
};

/// Targets that stay attached to the warp while it is recreated.
const RECREATE_TARGETS: usize = 3;
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct Convergence {
    mode: &'static str,
    target_start_ms: Vec<f64>,
    target_start: Spread,
    targets_per_warp: usize,
    /// Per recreate: until the last of the targets is re-programmed.
    warp_recreate_ms: Vec<f64>,
    warp_recreate: Spread,
    /// Per recreate: until the first of the targets is re-programmed.
    warp_recreate_first_ms: Vec<f64>,
}

pub fn run_section(iterations: usize, modes: &[&'static str]) -> anyhow::Result<Section> {
    let mut results = Vec::new();
    for &mode in modes {
        results.push(measure(mode, iterations)?);
    }
    tabulate(results)
}

fn measure(mode: &'static str, iterations: usize) -> anyhow::Result<Convergence> {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwbv")?;
    let warp_name = labels.warp_name("gw");
    let mut warp = start_warp(&warp_name, &network, &[]);
    // The classification a reprogramming is timed from is a debug line.
    let env = [("NETWARP_LOG", "netwarp=info,netwarp::pass=debug")];
    let daemon = Daemon::start_with_env(&labels, mode, GLOBAL_RULES, &env)?;
    daemon.wait_for_log("connected to Docker", WAIT)?;
    let target_label = labels.target_label(&warp_name);

    eprintln!("bench: convergence, {mode}: (a) {iterations} target starts");
    let mut targets = Vec::new();
    let mut start_ms = Vec::new();
    for i in 0..iterations {
        let target = Container::run(
            "nwbs",
            &network,
            &["--label", &target_label],
            &["sleep", "1800"],
        )?;
        let mut latency = None;
        eventually(WAIT, || {
            latency = daemon
                .event_latencies_ms(Some(target.name()))
                .first()
                .copied();
            latency.is_some()
        });
        let latency = latency
            .with_context(|| format!("start {i}: {} was never programmed", target.name()))?;
        start_ms.push(latency);
        targets.push(target);
    }
    targets.truncate(RECREATE_TARGETS);
    if !targets.first().is_some_and(|t| reaches(t, 8080)) {
        bail!("a programmed target does not reach REMOTE through its warp");
    }

    eprintln!("bench: convergence, {mode}: (b) {iterations} warp recreates");
    let mut recreate_ms = Vec::new();
    let mut recreate_first_ms = Vec::new();
    for i in 0..iterations {
        let old_ip = warp.ipv4(&network)?;
        let log_offset = daemon.log().len();
        let since = (now_ns() / 1_000_000_000 - 2).to_string();
        warp.rename(&netwarp_tests::unique_name("nwbold"))?;
        let old = warp;
        warp = start_warp(&warp_name, &network, &[]);
        let new_ip = warp.ipv4(&network)?;
        if new_ip == old_ip {
            bail!("recreate {i}: the new warp got the old IP {old_ip}");
        }
        let mut programmed: Vec<Option<i128>> = vec![None; targets.len()];
        eventually(WAIT, || {
            let log = daemon.log();
            let fresh = log.get(log_offset..).unwrap_or("");
            for (slot, target) in programmed.iter_mut().zip(&targets) {
                if slot.is_none() {
                    *slot = reprogrammed_at(fresh, target.name(), &new_ip);
                }
            }
            programmed.iter().all(Option::is_some)
        });
        let programmed: Vec<i128> =
            programmed
                .into_iter()
                .collect::<Option<_>>()
                .with_context(|| {
                    format!("recreate {i}: the targets were not all re-steered via {new_ip}")
                })?;
        let started = start_event_ns(&warp, &since)?;
        let last = programmed.iter().max().copied().unwrap_or(started);
        let first = programmed.iter().min().copied().unwrap_or(started);
        recreate_ms.push((last - started) as f64 / 1e6);
        recreate_first_ms.push((first - started) as f64 / 1e6);
        drop(old);
        std::thread::sleep(Duration::from_millis(200));
    }
    if !reaches(&targets[0], 8080) {
        bail!("after the recreates the target no longer reaches REMOTE through the warp");
    }
    drop(targets);
    drop(daemon);
    drop(warp);

    Ok(Convergence {
        mode,
        target_start: Spread::of(&start_ms),
        target_start_ms: start_ms,
        targets_per_warp: RECREATE_TARGETS,
        warp_recreate: Spread::of(&recreate_ms),
        warp_recreate_ms: recreate_ms,
        warp_recreate_first_ms: recreate_first_ms,
    })
}

fn tabulate(results: Vec<Convergence>) -> anyhow::Result<Section> {
    let mut table = Table::new(
        "4. Convergence (real containers)",
        &format!(
            "(a) Docker start event of a new target -> its policy programmed (the daemon's own \
             latency_ms, from the event's timestamp). (b) warp recreated compose-style (old \
             renamed, new started under the name with a new IP, old removed): the new warp's \
             start event (docker events TimeNano) -> the last of its {RECREATE_TARGETS} targets \
             re-programmed via the new IP (daemon log timestamps)"
        ),
        &["dataplane", "figure", "n", "p50 ms", "p99 ms", "max ms"],
    );
    let mut goals = Vec::new();
    for result in &results {
        for (name, s) in [
            ("(a) target start -> programmed", &result.target_start),
            (
                "(b) warp recreate -> targets re-steered",
                &result.warp_recreate,
            ),
        ] {
            table.row(vec![
                result.mode.to_owned(),
                name.to_owned(),
                s.count.to_string(),
                fmt_num(s.p50),
                fmt_num(s.p99),
                fmt_num(s.max),
            ]);
        }
        goals.push(Goal::below(
            "convergence",
            &format!("{} target start p99", result.mode),
            result.target_start.p99,
            "ms",
            100.0,
        ));
        goals.push(Goal::below(
            "convergence",
            &format!("{} warp recreate p99", result.mode),
            result.warp_recreate.p99,
            "ms",
            200.0,
        ));
    }
    Ok(Section {
        name: "convergence",
        data: serde_json::to_value(&results)?,
        tables: vec![table],
        goals,
    })
}

/// The log timestamp (ns) of the first `target programmed` line of
/// `target` after a line classifying it as steered via `new_ip`.
fn reprogrammed_at(log: &str, target: &str, new_ip: &str) -> Option<i128> {
    let via = format!("Some({new_ip})");
    let mut steered = false;
    for line in log.lines() {
        if log_field(line, "container") != Some(target) {
            continue;
        }
        if line.contains("target steered through its warp container")
            && log_field(line, "via_v4") == Some(via.as_str())
        {
            steered = true;
        } else if steered && line.contains("target programmed") {
            return parse_rfc3339_utc_ns(line.split_whitespace().next()?);
        }
    }
    None
}

/// The `start` event time of `container` since `since` (unix seconds).
fn start_event_ns(container: &Container, since: &str) -> anyhow::Result<i128> {
    let id = run(
        "docker",
        &["inspect", "--format", "{{.Id}}", container.name()],
    )?;
    let now = now_ns();
    let until = format!("{}.{:09}", now / 1_000_000_000, now % 1_000_000_000);
    let events = run(
        "docker",
        &[
            "events",
            "--since",
            since,
            "--until",
            &until,
            "--filter",
            &format!("container={}", id.trim()),
            "--filter",
            "event=start",
            "--format",
            "{{.TimeNano}}",
        ],
    )?;
    events
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no start event for {}", container.name()))
}
