//! Sections 1-3: throughput (iperf3), request/response latency (the bench's
//! own TCP ping-pong) and the per-packet cost of each eBPF program, for a
//! target reaching its warp container three ways:
//! - unsteered: straight to the warp's bridge IP, no netwarp running (the
//!   baseline, measured before and after the steered paths; the ratios use
//!   their mean);
//! - routes: to REMOTE (203.0.113.1, on the warp's loopback) steered by the
//!   routes dataplane;
//! - ebpf: to REMOTE steered by the tc programs, which deliver into the
//!   warp by a peer redirect (the default);
//! - ebpf classic: the same with `dataplane.ebpf_peer_redirect = false`
//!   (a redirect to the warp's host-side veth);
//! - ebpf-xdp: the same with `dataplane.ebpf_from_container_hook = "xdp"`:
//!   the XDP program steers, tc decides what it passes. Its warp carries an
//!   XDP pass program, which slows all it receives, the baseline included:
//!   compare its absolute figures with the others', not only its ratios.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, HOST_TOOLS},
    iperf::{IperfRun, start_server},
    steering::{GLOBAL_RULES, REMOTE, reaches, start_warp},
    tcx::{BpfStats, program_stats},
};
use serde::Serialize;

use crate::{
    Section,
    report::{Goal, Table, fmt_num, ratio},
};

const IPERF_PORT: u16 = 5201;
const PINGPONG_PORT: u16 = 7000;
const PINGPONG_SIZE: usize = 64;
/// Ping-pong rounds per path and mode.
const LATENCY_ROUNDS: usize = 10;
/// Where the bench binary appears inside the containers.
pub const BENCH_IN_CONTAINER: &str = "/nwbench";

pub struct Params {
    pub seconds: u32,
    pub round_trips: usize,
}

#[derive(Clone, Debug, Serialize)]
struct Throughput {
    path: String,
    streams: u32,
    gbit_per_sec: f64,
    retransmits: u64,
    ratio_to_unsteered: f64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RttSummary {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl RttSummary {
    pub fn of(rtts_ns: &[u64]) -> Self {
        let mut us: Vec<f64> = rtts_ns.iter().map(|&ns| ns as f64 / 1e3).collect();
        us.sort_by(f64::total_cmp);
        let p = |q| crate::report::percentile(&us, q);
        Self {
            count: us.len(),
            p50_us: p(0.5),
            p90_us: p(0.9),
            p99_us: p(0.99),
            max_us: p(1.0),
            mean_us: us.iter().sum::<f64>() / us.len().max(1) as f64,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Latency {
    path: String,
    rtt: RttSummary,
    p50_ratio_to_unsteered: f64,
    p99_ratio_to_unsteered: f64,
}

#[derive(Clone, Debug, Serialize)]
struct ProgramCost {
    /// The path whose traffic ran it; [`BASELINE_COSTS`] for the baseline.
    path: String,
    program: String,
    run_cnt: u64,
    run_time_ns: u64,
    ns_per_packet: f64,
    /// Host-wide steal time during the window (a VM's CPUs taken away).
    window_steal_secs: f64,
}

/// One steered path measured against the baseline, interleaved A B B A
/// (A: the unlabelled twin to the warp's bridge IP, B: the target to
/// REMOTE) so that drift on a shared machine hits both alike.
struct ModeRun {
    mode: &'static str,
    /// (streams, baseline Gbit/s, steered Gbit/s, baseline retransmits, steered retransmits)
    iperf: Vec<(u32, f64, f64, u64, u64)>,
    baseline_rtt: RttSummary,
    steered_rtt: RttSummary,
}

/// Production-like daemons: info logs.
pub const DAEMON_ENV: &[(&str, &str)] = &[("NETWARP_LOGGING_LEVEL", "info")];

/// One steered path: its name in the tables, the dataplane mode, and the
/// daemon's environment.
struct SteeredPath {
    name: &'static str,
    mode: &'static str,
    env: &'static [(&'static str, &'static str)],
}

/// The eBPF path with the defaults: the one the goals judge.
const EBPF_DEFAULT: &str = "ebpf";
/// The XDP hook's path.
const EBPF_XDP: &str = "ebpf-xdp";
const PATHS: [SteeredPath; 4] = [
    SteeredPath {
        name: "routes",
        mode: "routes",
        env: DAEMON_ENV,
    },
    SteeredPath {
        name: EBPF_DEFAULT,
        mode: "ebpf",
        env: DAEMON_ENV,
    },
    SteeredPath {
        name: "ebpf classic",
        mode: "ebpf",
        env: &[
            ("NETWARP_LOGGING_LEVEL", "info"),
            ("NETWARP_DATAPLANE_EBPF_PEER_REDIRECT", "false"),
        ],
    },
    SteeredPath {
        name: EBPF_XDP,
        mode: "ebpf",
        env: &[
            ("NETWARP_LOGGING_LEVEL", "info"),
            ("NETWARP_DATAPLANE_EBPF_FROM_CONTAINER_HOOK", "xdp"),
        ],
    },
];

/// Section 3's baseline row: netwarp's from-container program on the
/// unlabelled twin's veth, where it finds no state row and passes.
const BASELINE_COSTS: &str = "unsteered twin, no state";

pub fn run(params: &Params, bench_binary: &Path) -> anyhow::Result<Section> {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwbp")?;
    let mount = format!("{}:{BENCH_IN_CONTAINER}:ro", bench_binary.display());
    let mut tool_args: Vec<&str> = HOST_TOOLS.to_vec();
    tool_args.extend(["--volume", mount.as_str()]);
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &tool_args);
    let warp_ip = warp.ipv4(&network)?;
    // Servers end by themselves: every run is bounded.
    let lifetime = 1800;
    start_server(&warp, IPERF_PORT, lifetime)?;
    warp.exec_detached(&[
        "timeout",
        &lifetime.to_string(),
        BENCH_IN_CONTAINER,
        "pingpong-server",
        "--port",
        &PINGPONG_PORT.to_string(),
        "--size",
        &PINGPONG_SIZE.to_string(),
        "--seconds",
        &lifetime.to_string(),
    ])?;
    let target_label = labels.target_label(&warp_name);
    let mut target_args = tool_args.clone();
    target_args.extend(["--label", target_label.as_str()]);
    // The baseline: the same container without netwarp's label, so netwarp
    // never touches it, going straight to the warp's bridge IP.
    let twin = Container::run("nwbu", &network, &tool_args, &["sleep", "1800"])?;

    let mut runs = Vec::new();
    let mut costs = Vec::new();
    for path in &PATHS {
        let mode = path.name;
        // A fresh target per mode: what one dataplane left in a target's
        // namespace never meets the other, and no `netwarp cleanup` (which
        // sweeps every container on the host) is needed.
        let target = Container::run("nwbt", &network, &target_args, &["sleep", "1800"])?;
        std::thread::sleep(Duration::from_millis(300));
        if reaches(&target, 8080) {
            bail!("REMOTE is reachable without netwarp: the steered figures would be wrong");
        }
        let mut daemon = Daemon::start_with_env(&labels, path.mode, GLOBAL_RULES, path.env)?;
        if !eventually(Duration::from_secs(20), || reaches(&target, 8080)) {
            bail!("{mode}: the target never reached REMOTE through its warp");
        }
        if reaches(&twin, 8080) {
            bail!("{mode}: the unlabelled baseline container reaches REMOTE");
        }
        runs.push(measure_mode(mode, &twin, &warp_ip, &target, params)?);
        if path.mode == "ebpf" {
            costs.extend(program_costs(mode, &target, REMOTE, params)?);
        }
        if mode == EBPF_DEFAULT {
            costs.extend(baseline_costs(&twin, &warp_ip, params)?);
        }
        // Dropping the daemon removes its pins, which detaches its programs.
        daemon.stop(libc::SIGTERM)?;
        drop(daemon);
        drop(target);
    }
    // The program alone per packet kind: the stats above mix steered and
    // unsteered packets (ACKs to the warp, ARP) in one average.
    let mut timed = Vec::new();
    for (name, peer) in [(EBPF_DEFAULT, true), ("ebpf classic", false)] {
        let timings = netwarp_tests::fastpath::time_from_container(TIMED_RUNS, peer)
            .context("timing the from-container program by BPF_PROG_TEST_RUN")?;
        timed.extend(timings.into_iter().map(|t| (name, t)));
    }
    // XDP's verdicts: 4 redirect, 2 pass (to the tc program behind it).
    let xdp = netwarp_tests::fastpath::time_xdp_from_container(TIMED_RUNS)
        .context("timing the XDP from-container program by BPF_PROG_TEST_RUN")?;
    timed.extend(xdp.into_iter().map(|t| (EBPF_XDP, t)));
    Ok(tabulate(&runs, costs, &timed, params))
}

/// BPF_PROG_TEST_RUN repeats per packet kind.
const TIMED_RUNS: u32 = 1_000_000;

fn iperf(
    client: &Container,
    dest: &str,
    streams: u32,
    params: &Params,
) -> anyhow::Result<(f64, u64)> {
    let r = IperfRun::new(dest, IPERF_PORT, params.seconds)
        .streams(streams)
        .run(client)
        .with_context(|| format!("iperf3 from {} to {dest}, {streams} streams", client.name()))?;
    if r.received_bps <= 0.0 {
        bail!("no traffic flowed from {} to {dest}", client.name());
    }
    Ok((r.received_bps / 1e9, r.retransmits))
}

fn measure_mode(
    mode: &'static str,
    twin: &Container,
    warp_ip: &str,
    target: &Container,
    params: &Params,
) -> anyhow::Result<ModeRun> {
    eprintln!("bench: {mode}: iperf3 and ping-pong, baseline and steered interleaved");
    let mut iperf_rows = Vec::new();
    for streams in [1, 4] {
        let a1 = iperf(twin, warp_ip, streams, params)?;
        let b1 = iperf(target, REMOTE, streams, params)?;
        let b2 = iperf(target, REMOTE, streams, params)?;
        let a2 = iperf(twin, warp_ip, streams, params)?;
        iperf_rows.push((
            streams,
            (a1.0 + a2.0) / 2.0,
            (b1.0 + b2.0) / 2.0,
            a1.1 + a2.1,
            b1.1 + b2.1,
        ));
    }
    // Latency is the most noise-sensitive figure: short rounds, alternating
    // which path goes first, with every round trip pooled per path.
    let per_round = params.round_trips.div_ceil(LATENCY_ROUNDS);
    let (mut baseline, mut steered) = (Vec::new(), Vec::new());
    for round in 0..LATENCY_ROUNDS {
        if round % 2 == 0 {
            baseline.extend(ping_pong(twin, warp_ip, per_round)?);
            steered.extend(ping_pong(target, REMOTE, per_round)?);
        } else {
            steered.extend(ping_pong(target, REMOTE, per_round)?);
            baseline.extend(ping_pong(twin, warp_ip, per_round)?);
        }
    }
    Ok(ModeRun {
        mode,
        iperf: iperf_rows,
        baseline_rtt: RttSummary::of(&baseline),
        steered_rtt: RttSummary::of(&steered),
    })
}

/// Runs the bench's ping-pong client in `client` against `dest`.
/// Each round trip's time in nanoseconds.
pub fn ping_pong(client: &Container, dest: &str, round_trips: usize) -> anyhow::Result<Vec<u64>> {
    let addr = format!("{dest}:{PINGPONG_PORT}");
    let count = round_trips.to_string();
    let mut last_error = String::new();
    for _ in 0..3 {
        let out = output(
            "docker",
            &[
                "exec",
                client.name(),
                "timeout",
                "120",
                BENCH_IN_CONTAINER,
                "pingpong-client",
                "--addr",
                &addr,
                "--size",
                &PINGPONG_SIZE.to_string(),
                "--warmup",
                "200",
                "--count",
                &count,
            ],
        )?;
        if out.status.success() {
            let rtts: Vec<u64> = serde_json::from_slice(&out.stdout)
                .context("the ping-pong client printed no round-trip times")?;
            if rtts.len() != round_trips {
                bail!("{} of {round_trips} round trips", rtts.len());
            }
            return Ok(rtts);
        }
        last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("ping-pong client failed: {last_error}")
}

/// The baseline of section 3: a private copy of netwarp's programs on the
/// unlabelled twin's host veth (no state row: the from-container program
/// looks for one and passes), measured as [`program_costs`] measures the
/// target's, with the twin's traffic to the warp's bridge IP. What the
/// stats' clock reads and a program's entry cost per packet.
fn baseline_costs(
    twin: &Container,
    warp_ip: &str,
    params: &Params,
) -> anyhow::Result<Vec<ProgramCost>> {
    let (ifindex, _) = twin.host_veth()?;
    let mut programs = netwarp::dataplane::ebpf::EbpfDataplane::load()
        .context("loading a private copy of the programs")?;
    programs
        .attach_ifindex(ifindex)
        .context("attaching to the twin's veth")?;
    let costs = program_costs(BASELINE_COSTS, twin, warp_ip, params);
    // Dropping the copy detaches it.
    drop(programs);
    costs
}

/// Per-packet cost of the programs on `client`'s host veth, from the
/// kernel's BPF stats over one bounded iperf3 run and one ping-pong run
/// from it to `dest`.
fn program_costs(
    path: &str,
    client: &Container,
    dest: &str,
    params: &Params,
) -> anyhow::Result<Vec<ProgramCost>> {
    let stats = BpfStats::enable()
        .with_context(|| format!("cannot enable BPF stats at {}", BpfStats::PATH))?;
    let (_, veth) = client.host_veth()?;
    let before = program_stats(&veth);
    let cpu_before = netwarp_tests::cpu::CpuTimes::now()?;
    IperfRun::new(dest, IPERF_PORT, params.seconds).run(client)?;
    ping_pong(client, dest, params.round_trips)?;
    let after = program_stats(&veth);
    let steal = netwarp_tests::cpu::CpuTimes::now()?.steal_secs_since(&cpu_before);
    drop(stats);
    if after.is_empty() {
        bail!("no programs attached to {veth}");
    }
    let costs: Vec<ProgramCost> = after
        .iter()
        .map(|a| match before.iter().find(|b| b.id == a.id) {
            Some(b) => a.since(b),
            None => a.clone(),
        })
        // A program that saw no packet (the tc program behind XDP may see
        // none) has no cost to report.
        .filter_map(|delta| {
            let ns_per_packet = delta.ns_per_run()?;
            Some(ProgramCost {
                path: path.to_owned(),
                program: delta.name,
                run_cnt: delta.run_count,
                run_time_ns: delta.run_time_ns,
                ns_per_packet,
                window_steal_secs: steal,
            })
        })
        .collect();
    if costs.is_empty() {
        bail!("no program on {veth} ran while traffic flowed");
    }
    Ok(costs)
}

fn tabulate(
    runs: &[ModeRun],
    costs: Vec<ProgramCost>,
    timed: &[(&str, netwarp_tests::fastpath::Timing)],
    params: &Params,
) -> Section {
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    for run in runs {
        let baseline = format!("unsteered (paired with {})", run.mode);
        for &(streams, base, steered, base_rx, steered_rx) in &run.iperf {
            throughput.push(Throughput {
                path: baseline.clone(),
                streams,
                gbit_per_sec: base,
                retransmits: base_rx,
                ratio_to_unsteered: 1.0,
            });
            throughput.push(Throughput {
                path: run.mode.to_owned(),
                streams,
                gbit_per_sec: steered,
                retransmits: steered_rx,
                ratio_to_unsteered: ratio(steered, base),
            });
        }
        latency.push(Latency {
            path: baseline,
            rtt: run.baseline_rtt.clone(),
            p50_ratio_to_unsteered: 1.0,
            p99_ratio_to_unsteered: 1.0,
        });
        latency.push(Latency {
            path: run.mode.to_owned(),
            rtt: run.steered_rtt.clone(),
            p50_ratio_to_unsteered: ratio(run.steered_rtt.p50_us, run.baseline_rtt.p50_us),
            p99_ratio_to_unsteered: ratio(run.steered_rtt.p99_us, run.baseline_rtt.p99_us),
        });
    }

    let mut t1 = Table::new(
        "1. Steering throughput (iperf3, target -> warp)",
        &format!(
            "{} s per run; unsteered = an unlabelled twin of the target straight to the \
             warp's bridge IP (netwarp never touches it), routes/ebpf/ebpf classic/ebpf-xdp = \
             the target to REMOTE 203.0.113.1 through the warp (ebpf: tc hook, peer redirect \
             into the warp, the default, which the goals judge; ebpf classic: \
             ebpf_peer_redirect = false; ebpf-xdp: ebpf_from_container_hook = \"xdp\", whose \
             pass program on the warp slows its baseline too); runs interleaved unsteered, steered, steered, \
             unsteered and averaged; retransmits summed over both runs",
            params.seconds
        ),
        &["path", "streams", "Gbit/s", "retransmits", "x unsteered"],
    );
    for t in &throughput {
        t1.row(vec![
            t.path.clone(),
            t.streams.to_string(),
            fmt_num(t.gbit_per_sec),
            t.retransmits.to_string(),
            fmt_num(t.ratio_to_unsteered),
        ]);
    }
    let mut t2 = Table::new(
        "2. Request/response latency (TCP ping-pong, 64 B each way)",
        &format!(
            "{} timed round trips on one TCP connection (TCP_NODELAY) after 200 untimed, \
             each timed on its own; in 10 rounds per path, alternating which path goes \
             first, all round trips of a path pooled",
            params.round_trips
        ),
        &[
            "path", "p50 us", "p90 us", "p99 us", "max us", "p50 x", "p99 x",
        ],
    );
    for l in &latency {
        t2.row(vec![
            l.path.clone(),
            fmt_num(l.rtt.p50_us),
            fmt_num(l.rtt.p90_us),
            fmt_num(l.rtt.p99_us),
            fmt_num(l.rtt.max_us),
            fmt_num(l.p50_ratio_to_unsteered),
            fmt_num(l.p99_ratio_to_unsteered),
        ]);
    }
    let mut t3 = Table::new(
        "3. Per-packet cost of the eBPF programs",
        &format!(
            "kernel BPF stats (bpf_stats_enabled, restored afterwards) over one 1-stream iperf3 \
             run plus one ping-pong run on each eBPF path, daemon at info level: run_time_ns / \
             run_cnt. A packet is one skb: a GSO/GRO super-packet counts once. The stats' own \
             clock reads are included: the `{BASELINE_COSTS}` row is the same measurement of \
             a private copy of the from-container program on the unlabelled twin's veth (its \
             traffic to the warp's bridge IP), which finds no state row and passes; a path's \
             row minus it is roughly the program's own work. Steered and unsteered packets \
             (ACKs, ARP) are mixed; see 3b for each kind. The to-container program is \
             attached only under an ingress cap, so an uncapped target lists none."
        ),
        &[
            "path",
            "program",
            "run_cnt",
            "run_time_ns",
            "ns/packet",
            "host steal s",
        ],
    );
    for c in &costs {
        t3.row(vec![
            c.path.clone(),
            c.program.clone(),
            c.run_cnt.to_string(),
            c.run_time_ns.to_string(),
            fmt_num(c.ns_per_packet),
            fmt_num(c.window_steal_secs),
        ]);
    }

    let mut t4 = Table::new(
        "3b. Per-packet cost of the from-container programs by packet kind",
        &format!(
            "BPF_PROG_TEST_RUN, {TIMED_RUNS} runs per kind on a private copy of the programs \
             (nothing attached): a 54-byte IPv4 TCP frame from a target whose policy steers \
             203.0.113.0/24; steered = to 203.0.113.1, no rule = to 198.51.100.5; then \
             under `{}` (block rules by port ahead of the steered default, an \
             exclusion): the same steered packet, and excluded = to 203.0.113.200; \
             {EBPF_DEFAULT} = netwarp_tc_from_container with the steered packet's peer \
             redirect, ebpf classic = with the classic redirect (both verdicts \
             TC_ACT_REDIRECT), {EBPF_XDP} = netwarp_xdp_from_container (verdicts XDP's: 4 \
             redirect, 2 pass to the tc program). The kernel's average per run, without the \
             stats' clock reads",
            netwarp_tests::fastpath::ACTIONS_POLICY
        ),
        &["path", "packet", "verdict", "ns/packet"],
    );
    for (path, t) in timed {
        t4.row(vec![
            path.to_string(),
            t.packet.to_owned(),
            t.verdict.to_string(),
            fmt_num(t.ns_per_run),
        ]);
    }

    // The goals judge the defaults (peer redirect); the classic path's
    // rows are there to compare.
    let mut goals = Vec::new();
    for (_, t) in timed.iter().filter(|(path, _)| *path == EBPF_DEFAULT) {
        goals.push(Goal::at_most(
            "bpf cost",
            &format!("netwarp_tc_from_container, {} packet (test run)", t.packet),
            t.ns_per_run,
            "ns/packet",
            100.0,
        ));
    }
    for t in throughput.iter().filter(|t| t.path == EBPF_DEFAULT) {
        goals.push(Goal::at_least(
            "throughput",
            &format!("ebpf {} stream(s) / unsteered", t.streams),
            t.ratio_to_unsteered,
            "x",
            1.0,
        ));
    }
    for l in latency.iter().filter(|l| l.path == EBPF_DEFAULT) {
        goals.push(Goal::at_most(
            "latency",
            "ebpf p99 RTT / unsteered",
            l.p99_ratio_to_unsteered,
            "x",
            1.05,
        ));
    }
    // Over real traffic, the stats' own clock reads (and, on a VM, their
    // cost) are in every row: the program's own work is its row minus the
    // baseline's, the same program finding no state on the twin's veth.
    let baseline_ns = (costs.iter())
        .find(|c| c.path == BASELINE_COSTS)
        .map_or(f64::NAN, |c| c.ns_per_packet);
    for c in costs.iter().filter(|c| c.path == EBPF_DEFAULT) {
        // The to-container program has one job (an ingress cap); on an
        // uncapped target, as here, it is not attached at all.
        let goal = if c.program.starts_with("netwarp_tc_to_c") {
            50.0
        } else {
            100.0
        };
        goals.push(Goal::at_most(
            "bpf cost",
            &format!("{}, real traffic, minus the no-state baseline", c.program),
            c.ns_per_packet - baseline_ns,
            "ns/packet",
            goal,
        ));
    }
    Section {
        name: "paths",
        data: serde_json::json!({
            "seconds": params.seconds,
            "round_trips": params.round_trips,
            "throughput": throughput,
            "latency": latency,
            "bpf_programs": costs,
            "from_container_test_runs": timed.iter().map(|(path, t)| serde_json::json!({
                "path": path,
                "packet": t.packet,
                "verdict": t.verdict,
                "ns_per_packet": t.ns_per_run,
            })).collect::<Vec<_>>(),
        }),
        tables: vec![t1, t2, t3, t4],
        goals,
    }
}
