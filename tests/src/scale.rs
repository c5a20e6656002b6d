//! The controller scale harness: the real netwarp binary, in the dry-run
//! dataplane, against the simulated Docker API of [`crate::fake_docker`].
//! Every figure it reports is labelled "simulated Docker API, dry-run
//! dataplane": it measures netwarp's controller (list, inspect cache,
//! planner, coalescing), not the kernel dataplane and not a real dockerd.
//!
//! Measured, from the daemon's own log (JSON lines) and /proc:
//! - the first full reconcile (`initial reconcile complete`, duration_ms);
//! - per-event latency: a target restarted in the fake world (die + start,
//!   `timeNano` stamped) until `target programmed after event` (latency_ms,
//!   which netwarp computes from the event's own timestamp);
//! - RSS: VmRSS and the peak VmHWM of the daemon;
//! - a bounded event storm: events sent, reconcile passes (coalescing),
//!   requests served, time to converge, and whether the dry-run record then
//!   equals the plan for the fake world's final state.
//!
//! Nothing here asserts on time; callers decide what to check.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use netwarp::{
    config::{Config, Layer},
    dataplane::dry_run::{DryRunTarget, expected_targets, read_record},
    plan::{PlanSettings, plan},
};
use serde::Serialize;

use crate::fake_docker::{CounterSnapshot, FakeDocker, Role, StormSpec, WorldSpec};

/// Printed with every table, and stored in every JSON report.
pub const LABEL: &str = "simulated Docker API, dry-run dataplane";

/// One scenario.
#[derive(Clone, Debug)]
pub struct ScaleSpec {
    pub world: WorldSpec,
    /// Targets restarted one at a time to measure per-event latency.
    pub latency_events: usize,
    pub storm: Option<StormSpec>,
    pub resync_interval_secs: u64,
    /// How long to wait for each milestone.
    pub timeout: Duration,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StormResult {
    pub rate_per_sec: u64,
    pub duration_secs: f64,
    pub events_sent: u64,
    pub changes: u64,
    pub achieved_rate_per_sec: f64,
    /// Reconcile passes from the storm's start until convergence.
    pub reconciles: u64,
    /// Requests the fake served meanwhile.
    pub list_calls: u64,
    pub inspect_calls: u64,
    /// From the storm's last event until the record equals the plan.
    pub converge_ms: Option<f64>,
    /// `target programmed after event` latencies during the storm.
    pub latency: Percentiles,
    pub final_correct: bool,
    pub mismatches: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleReport {
    pub label: String,
    pub containers: usize,
    pub running_containers: usize,
    pub warps: usize,
    pub targets: usize,
    /// netwarp's own `duration_ms` for its first full reconcile.
    pub first_reconcile_ms: f64,
    /// Of that, the list plus inspects.
    pub first_snapshot_ms: f64,
    pub first_reconcile_inspects: u64,
    /// From spawning the daemon until that reconcile was logged.
    pub start_to_first_reconcile_ms: f64,
    pub initial_correct: bool,
    pub latency: Percentiles,
    /// Inspects the fake served per latency event (each is a die + start).
    pub inspects_per_event: f64,
    pub rss_after_initial_kib: u64,
    /// VmHWM then: the peak of the first reconcile.
    pub peak_rss_after_initial_kib: u64,
    pub storm: Option<StormResult>,
    /// VmHWM at the end.
    pub peak_rss_kib: u64,
    pub warnings: usize,
    pub errors: usize,
    pub unexpected_requests: u64,
}

/// The daemon's log, read incrementally.
struct DaemonLog {
    reader: BufReader<fs::File>,
    pending: String,
    max_pass: u64,
    /// (short id, latency_ms) of `target programmed after event`.
    latencies: Vec<(String, f64)>,
    initial: Option<serde_json::Value>,
    warnings: usize,
    errors: usize,
}

impl DaemonLog {
    fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            reader: BufReader::new(fs::File::open(path)?),
            pending: String::new(),
            max_pass: 0,
            latencies: Vec::new(),
            initial: None,
            warnings: 0,
            errors: 0,
        })
    }

    fn pump(&mut self) -> anyhow::Result<()> {
        loop {
            let read = self.reader.read_line(&mut self.pending)?;
            if read == 0 || !self.pending.ends_with('\n') {
                // Partial line: keep it, and read it again later.
                if read > 0 {
                    let back = self.pending.len() as i64;
                    self.reader.seek(SeekFrom::Current(-back))?;
                    self.pending.clear();
                }
                return Ok(());
            }
            let line = std::mem::take(&mut self.pending);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match v["level"].as_str() {
                Some("WARN") => self.warnings += 1,
                Some("ERROR") => self.errors += 1,
                _ => {}
            }
            let fields = &v["fields"];
            match fields["message"].as_str() {
                Some("target programmed after event") => {
                    if let (Some(id), Some(ms)) =
                        (v["span"]["id"].as_str(), fields["latency_ms"].as_f64())
                    {
                        self.latencies.push((id.to_owned(), ms));
                    }
                }
                Some(m) if m.starts_with("dry-run pass") => {
                    self.max_pass = self.max_pass.max(fields["pass"].as_u64().unwrap_or(0));
                }
                Some("initial reconcile complete") if self.initial.is_none() => {
                    self.initial = Some(fields.clone());
                }
                _ => {}
            }
        }
    }
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill() on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(VmRSS, VmHWM)` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The config a scale daemon runs with.
pub fn write_config(
    dir: &Path,
    socket: &Path,
    record: &Path,
    resync: u64,
) -> anyhow::Result<PathBuf> {
    // A private control socket too: another daemon on the host (a real
    // one, or a test's) must not make this one refuse to start.
    let path = dir.join("netwarp.toml");
    fs::write(
        &path,
        format!(
            "docker_connection_method = \"unix\"\n\
             [docker]\nsocket = \"{}\"\n\
             [dataplane]\nmode = \"dry-run\"\ndry_run_record = \"{}\"\nresync_interval_secs = {resync}\n\
             [logging]\nlevel = \"info\"\nformat = \"json\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [control]\nsocket = \"{}\"\n\
             [[routing_rules]]\ndestination = \"203.0.113.0/24\"\n\
             [[routing_rules]]\ndestination = \"2001:db8::/32\"\nprotocol = \"tcp\"\nport_range = \"443\"\n",
            socket.display(),
            record.display(),
            dir.join("netwarp.sock").display(),
        ),
    )?;
    Ok(path)
}

/// How far the dry-run record is from what `settings` plan for the fake
/// world now: the number of targets that differ (0: correct).
fn mismatches(fake: &FakeDocker, settings: &PlanSettings, record_path: &Path) -> usize {
    let expected: BTreeMap<String, DryRunTarget> = expected_targets(&plan(&fake.truth(), settings));
    let Ok(record) = read_record(record_path) else {
        return expected.len().max(1);
    };
    let mut differ = expected
        .iter()
        .filter(|(id, t)| record.targets.get(*id) != Some(*t))
        .count();
    differ += record
        .targets
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .count();
    // The fake's own, planner-independent view of steered versus blocked.
    differ += fake
        .expected_states()
        .iter()
        .filter(|(id, state)| record.targets.get(*id).is_some_and(|t| t.state != **state))
        .count();
    differ
}

fn wait_until(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one scenario with the netwarp binary at `netwarp`.
pub fn run(spec: &ScaleSpec, netwarp: &Path) -> anyhow::Result<ScaleReport> {
    let dir = std::env::temp_dir().join(crate::unique_name("nwscale"));
    fs::create_dir_all(&dir)?;
    let result = run_in(spec, netwarp, &dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_in(spec: &ScaleSpec, netwarp: &Path, dir: &Path) -> anyhow::Result<ScaleReport> {
    let fake = FakeDocker::start(dir, &spec.world)?;
    let record = dir.join("dry-run-record.json");
    let config = write_config(dir, fake.socket(), &record, spec.resync_interval_secs)?;
    let settings = Config::resolve(&[Layer::from_file(&config)?])?.plan_settings();
    let log_path = dir.join("netwarp.log");
    let log_file = fs::File::create(&log_path)?;
    let spawned = Instant::now();
    let child = Command::new(netwarp)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NETWARP_LOG", "netwarp=info,netwarp::dry_run=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| {
            format!(
                "starting {}; build it first (cargo build -p netwarp)",
                netwarp.display()
            )
        })?;
    let pid = child.id();
    let mut daemon = Daemon { child };
    let mut log = DaemonLog::open(&log_path)?;
    let mut report = ScaleReport {
        label: LABEL.into(),
        containers: spec.world.containers,
        running_containers: spec.world.containers - spec.world.exited,
        warps: spec.world.warps,
        targets: spec.world.targets,
        ..ScaleReport::default()
    };

    let mut exited = None;
    let got_initial = wait_until(spec.timeout, || {
        log.pump()?;
        exited = daemon.child.try_wait()?;
        Ok(log.initial.is_some() || exited.is_some())
    })?;
    let Some(initial) = log.initial.clone().filter(|_| got_initial) else {
        bail!(
            "netwarp never completed its first reconcile (exit: {exited:?}); its log:\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
    };
    report.start_to_first_reconcile_ms = spawned.elapsed().as_secs_f64() * 1e3;
    report.first_reconcile_ms = initial["duration_ms"].as_f64().unwrap_or(f64::NAN);
    report.first_snapshot_ms = initial["snapshot_ms"].as_f64().unwrap_or(f64::NAN);
    report.first_reconcile_inspects = initial["inspected"].as_u64().unwrap_or(0);
    report.initial_correct = wait_until(spec.timeout, || {
        Ok(mismatches(&fake, &settings, &record) == 0)
    })?;
    (
        report.rss_after_initial_kib,
        report.peak_rss_after_initial_kib,
    ) = rss_kib(pid);
    // The event stream must be up before events mean anything.
    wait_until(spec.timeout, || Ok(fake.subscribers() > 0))?;

    // Per-event latency: one target restart at a time.
    let targets = fake.ids(Role::Target);
    let before = fake.counters();
    let mut latencies = Vec::new();
    for k in 0..spec.latency_events.min(targets.len()) {
        let id = &targets[(k * 7919) % targets.len()];
        let short = &id[..12];
        log.pump()?;
        let seen = log.latencies.len();
        fake.restart(id);
        let found = wait_until(spec.timeout, || {
            log.pump()?;
            Ok(log.latencies[seen..].iter().any(|(s, _)| s == short))
        })?;
        if !found {
            bail!(
                "no `target programmed after event` for {short} within {:?}",
                spec.timeout
            );
        }
        latencies.extend(
            log.latencies[seen..]
                .iter()
                .filter(|(s, _)| s == short)
                .map(|(_, ms)| *ms),
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let used = fake.counters().since(&before);
    report.latency = Percentiles::of(latencies);
    if spec.latency_events > 0 {
        report.inspects_per_event = used.inspect as f64 / spec.latency_events as f64;
    }

    if let Some(storm) = &spec.storm {
        log.pump()?;
        let passes_before = log.max_pass;
        let latencies_before = log.latencies.len();
        let before: CounterSnapshot = fake.counters();
        let sent = fake.storm(storm);
        let storm_end = Instant::now();
        let converged = wait_until(spec.timeout, || {
            log.pump()?;
            Ok(mismatches(&fake, &settings, &record) == 0)
        })?;
        let converge_ms = converged.then(|| storm_end.elapsed().as_secs_f64() * 1e3);
        // Let a pass that was already running finish before counting.
        std::thread::sleep(Duration::from_millis(200));
        log.pump()?;
        let used = fake.counters().since(&before);
        let remaining = mismatches(&fake, &settings, &record);
        report.storm = Some(StormResult {
            rate_per_sec: storm.rate,
            duration_secs: storm.duration.as_secs_f64(),
            events_sent: sent.events_sent,
            changes: sent.changes,
            achieved_rate_per_sec: sent.events_sent as f64 / sent.elapsed.as_secs_f64(),
            reconciles: log.max_pass - passes_before,
            list_calls: used.list,
            inspect_calls: used.inspect,
            converge_ms,
            latency: Percentiles::of(
                log.latencies[latencies_before..]
                    .iter()
                    .map(|(_, ms)| *ms)
                    .collect(),
            ),
            final_correct: remaining == 0,
            mismatches: remaining,
        });
    }
    log.pump()?;
    report.peak_rss_kib = rss_kib(pid).1;
    report.warnings = log.warnings;
    report.errors = log.errors;
    report.unexpected_requests = fake.counters().unexpected;
    drop(daemon);
    Ok(report)
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

/// A plain-text table of `reports`.
pub fn table(reports: &[ScaleReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&ScaleReport) -> String| {
        rows.push((name.to_owned(), reports.iter().map(f).collect()));
    };
    row("containers (running)", &|r| {
        format!("{} ({})", r.containers, r.running_containers)
    });
    row("warps / targets", &|r| {
        format!("{} / {}", r.warps, r.targets)
    });
    row("first reconcile ms", &|r| ms(r.first_reconcile_ms));
    row("  of which list+inspect ms", &|r| ms(r.first_snapshot_ms));
    row("  inspects", &|r| r.first_reconcile_inspects.to_string());
    row("start to first reconcile ms", &|r| {
        ms(r.start_to_first_reconcile_ms)
    });
    row("initial state correct", &|r| r.initial_correct.to_string());
    row("event latency p50 / p99 ms", &|r| {
        format!(
            "{} / {} (n={})",
            ms(r.latency.p50_ms),
            ms(r.latency.p99_ms),
            r.latency.count
        )
    });
    row("inspects per event", &|r| {
        format!("{:.1}", r.inspects_per_event)
    });
    row("RSS after first reconcile MiB", &|r| {
        format!("{:.1}", r.rss_after_initial_kib as f64 / 1024.0)
    });
    row("peak RSS by then MiB", &|r| {
        format!("{:.1}", r.peak_rss_after_initial_kib as f64 / 1024.0)
    });
    row("storm events sent", &|r| {
        r.storm.as_ref().map_or("-".into(), |s| {
            format!("{} ({:.0}/s)", s.events_sent, s.achieved_rate_per_sec)
        })
    });
    row("storm state changes", &|r| {
        r.storm
            .as_ref()
            .map_or("-".into(), |s| s.changes.to_string())
    });
    row("storm reconciles", &|r| {
        r.storm
            .as_ref()
            .map_or("-".into(), |s| s.reconciles.to_string())
    });
    row("storm list / inspect calls", &|r| {
        r.storm.as_ref().map_or("-".into(), |s| {
            format!("{} / {}", s.list_calls, s.inspect_calls)
        })
    });
    row("storm latency p50 / p99 ms", &|r| {
        r.storm.as_ref().map_or("-".into(), |s| {
            format!("{} / {}", ms(s.latency.p50_ms), ms(s.latency.p99_ms))
        })
    });
    row("storm converge ms", &|r| {
        r.storm
            .as_ref()
            .map_or("-".into(), |s| s.converge_ms.map_or("never".into(), ms))
    });
    row("storm final state correct", &|r| {
        r.storm.as_ref().map_or("-".into(), |s| {
            format!("{} ({} mismatches)", s.final_correct, s.mismatches)
        })
    });
    row("peak RSS (VmHWM) MiB", &|r| {
        format!("{:.1}", r.peak_rss_kib as f64 / 1024.0)
    });
    row("warnings / errors logged", &|r| {
        format!("{} / {}", r.warnings, r.errors)
    });
    row("unexpected API requests", &|r| {
        r.unexpected_requests.to_string()
    });
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let col = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(String::len))
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!("netwarp controller scale ({LABEL})\n");
    for (name, values) in rows {
        out.push_str(&format!("{name:<width$}"));
        for v in values {
            out.push_str(&format!("  {v:>col$}"));
        }
        out.push('\n');
    }
    out
}
