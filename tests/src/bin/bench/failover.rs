//! Section 8: failover time (real containers). A target names two warps
//! (`netwarp.target=A,B`); a ping stream from the target to the steered
//! address, which both warps own, tells by the reply's TTL which warp
//! answered (B's namespace sends with TTL 63, A's with 64). The time is
//! from just before `docker kill` of A (or the silent death of its tunnel:
//! its probed port dropped in its namespace) to the first reply from B,
//! as the bench process reads the ping's output.
//!
//! Network safety: an `--internal` network; the steered address is the
//! warps' loopback in a unique 198.18.N.0/24 whose host route ends in the
//! counting sink; the ping stream is bounded (it stops with the section).

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix},
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    steering::{DeadTunnel, run_warp},
};

use crate::{
    Section,
    report::{Goal, Spread, Table, fmt_num},
};

pub struct Params {
    pub kills: usize,
    pub silent_deaths: usize,
}

const PROBE_INTERVAL_SECS: u64 = 1;
const WAIT: Duration = Duration::from_secs(30);

/// The replies of a ping stream from the target, with when each was read:
/// `true` for the backup's (TTL 63).
struct PingStream {
    child: Child,
    replies: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl PingStream {
    fn start(target: &Container, remote: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("docker")
            .args([
                "exec",
                target.name(),
                "ping",
                "-i",
                "0.01",
                "-W",
                "1",
                remote,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the ping stream")?;
        let stdout = child.stdout.take().context("the ping's output")?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&replies), Arc::clone(&stop));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                if line.contains("ttl=") {
                    let backup = line.contains("ttl=63");
                    sink.lock().expect("replies").push((Instant::now(), backup));
                }
            }
        });
        Ok(Self {
            child,
            replies,
            stop,
        })
    }

    /// The first reply after `since` from the backup (`true`) or the
    /// primary (`false`), waiting up to `WAIT`.
    fn first_after(&self, since: Instant, backup: bool) -> Option<Instant> {
        let mut found = None;
        eventually(WAIT, || {
            found = (self.replies.lock().expect("replies").iter())
                .find(|(at, from_backup)| *at >= since && *from_backup == backup)
                .map(|(at, _)| *at);
            found.is_some()
        });
        found
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    mode: &'static str,
    kill_ms: Vec<f64>,
    silent_ms: Vec<f64>,
    leaked: u64,
}

fn measure(mode: &'static str, params: &Params) -> anyhow::Result<Run> {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwbf")?;
    let bridge = network.bridge()?;
    let (sink, SteeredPrefix { prefix, remote }) = LeakSink::for_unique_prefix(&bridge)?;
    let script = format!("ip addr add {remote}/32 dev lo; exec sleep 3600");
    let primary = labels.warp_name("a");
    let backup = labels.warp_name("b");
    let probe = format!("netwarp.probe=tcp:{remote}:8080@lo");
    // The primary serves the probed port; its TTL is the default 64.
    let primary_script = format!(
        "ip addr add {remote}/32 dev lo; \
         while true; do echo up | nc -l -p 8080; done"
    );
    let primary_warp = run_warp(&primary, &network, &primary_script, &["--label", &probe])?;
    let _backup_warp = run_warp(
        &backup,
        &network,
        &script,
        &["--sysctl", "net.ipv4.ip_default_ttl=63"],
    )?;
    let target = Container::run(
        "nwbft",
        &network,
        &[
            "--label",
            &labels.target_label(&format!("{primary},{backup}")),
        ],
        &["sleep", "3600"],
    )?;
    let interval = PROBE_INTERVAL_SECS.to_string();
    let _daemon = Daemon::start_with_env(
        &labels,
        mode,
        &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
        &[
            // Back to the primary as soon as it is usable: each iteration
            // starts from it.
            ("NETWARP_FAILOVER_HOLD_DOWN_SECS", "0"),
            ("NETWARP_PROBES_INTERVAL_SECS", &interval),
            ("NETWARP_PROBES_TIMEOUT_MS", "300"),
            ("NETWARP_PROBES_FAILURES", "2"),
            ("NETWARP_PROBES_WINDOW", "3"),
        ],
    )?;
    let pings = PingStream::start(&target, &remote)?;
    let on_primary = |pings: &PingStream| {
        let since = Instant::now();
        // Two replies in a row from the primary: settled on it.
        pings.first_after(since, false).is_some()
            && pings.first_after(Instant::now(), false).is_some()
    };
    if !on_primary(&pings) {
        bail!("{mode}: the primary never carried the target");
    }
    let leaked_before = sink.packets();
    let mut kill_ms = Vec::new();
    for i in 0..params.kills {
        let t0 = Instant::now();
        run("docker", &["kill", &primary])?;
        let Some(at) = pings.first_after(t0, true) else {
            bail!("{mode}: kill {i}: the backup never answered");
        };
        kill_ms.push(at.duration_since(t0).as_secs_f64() * 1e3);
        run("docker", &["start", &primary])?;
        if !on_primary(&pings) {
            bail!("{mode}: kill {i}: the primary never took the traffic back");
        }
    }
    let mut silent_ms = Vec::new();
    for i in 0..params.silent_deaths {
        let t0 = Instant::now();
        let dead = DeadTunnel::kill(&primary_warp, 8080)?;
        let Some(at) = pings.first_after(t0, true) else {
            bail!("{mode}: silent death {i}: the backup never answered");
        };
        silent_ms.push(at.duration_since(t0).as_secs_f64() * 1e3);
        drop(dead);
        if !on_primary(&pings) {
            bail!("{mode}: silent death {i}: the primary never took the traffic back");
        }
    }
    drop(pings);
    Ok(Run {
        mode,
        kill_ms,
        silent_ms,
        leaked: sink.packets() - leaked_before,
    })
}

pub fn run_section(params: &Params, modes: &[&'static str]) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut runs = Vec::new();
    for mode in modes {
        eprintln!(
            "bench: failover, {mode}: {} kills, {} silent deaths",
            params.kills, params.silent_deaths
        );
        runs.push(measure(mode, params)?);
    }
    let mut table = Table::new(
        "8. Failover time (real containers)",
        &format!(
            "a target of a two-warp group (netwarp.target=A,B), a ping every 10 ms from it to \
             the steered address both warps own (B answers with TTL 63): from just before \
             `docker kill` of A, or before A's probed port is dropped in its namespace (a \
             silent death; probes every {PROBE_INTERVAL_SECS} s, down at 2 failures of 3, 300 \
             ms timeout), to the first reply from B; A is restarted or revived between \
             iterations (hold-down 0). Took {:.0} s",
            started.elapsed().as_secs_f64()
        ),
        &[
            "dataplane",
            "death",
            "n",
            "p50 ms",
            "p99 ms",
            "max ms",
            "leaked packets",
        ],
    );
    let mut goals = Vec::new();
    for run in &runs {
        for (death, samples, goal) in [
            ("docker kill", &run.kill_ms, 300.0),
            (
                "silent (probe)",
                &run.silent_ms,
                3.0 * PROBE_INTERVAL_SECS as f64 * 1e3,
            ),
        ] {
            let spread = Spread::of(samples);
            table.row(vec![
                run.mode.to_owned(),
                death.to_owned(),
                spread.count.to_string(),
                fmt_num(spread.p50),
                fmt_num(spread.p99),
                fmt_num(spread.max),
                run.leaked.to_string(),
            ]);
            goals.push(Goal::below(
                "failover",
                &format!("{} failover p99, {death}", run.mode),
                spread.p99,
                "ms",
                goal,
            ));
        }
        goals.push(Goal::at_most(
            "failover",
            &format!("{} packets leaked during failovers", run.mode),
            run.leaked as f64,
            "packets",
            0.0,
        ));
    }
    let data = serde_json::json!(
        runs.iter()
            .map(|r| serde_json::json!({
                "mode": r.mode,
                "kill_ms": r.kill_ms,
                "silent_ms": r.silent_ms,
                "leaked": r.leaked,
            }))
            .collect::<Vec<_>>()
    );
    Ok(Section {
        name: "failover",
        data,
        tables: vec![table],
        goals,
    })
}
