//! Section 5: an ingress cap (traffic to the container) three ways, each
//! on a fresh container, measured with a bounded iperf3 `--reverse` run
//! (the server sends to the capped container):
//! - `tc tbf`, as docker-tc does it: `tc qdisc add dev <host veth> root tbf
//!   rate R burst B latency 50ms`, by hand, with B = netwarp's default
//!   burst for R (so that the two tbfs are configured alike);
//! - netwarp's shaper (the default enforcement; ebpf mode): a tbf it puts
//!   on the host veth through netlink;
//! - netwarp's policer (ebpf mode, `NETWARP_RATE_LIMITS_ENFORCEMENT=policer`):
//!   a BPF token bucket in the tc program.
//!
//! CPU is system plus softirq time from `/proc/stat` over the run, for the
//! whole host: compare the ratios, not the absolute seconds.

use std::time::Duration;

use anyhow::{Context as _, bail};
use netwarp::model::{default_burst, parse_rate};
use netwarp_tests::{
    command::{run, run_quietly},
    cpu::CpuTimes,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, HOST_TOOLS},
    iperf::{IperfRun, start_server},
};
use serde::Serialize;

use crate::{
    Section,
    report::{Goal, Table, fmt_num, ratio},
};

const IPERF_PORT: u16 = 5201;
const TOLERANCE: f64 = 0.05;

pub struct Params {
    pub rates: Vec<&'static str>,
    pub streams: Vec<u32>,
    pub seconds: u32,
}

#[derive(Clone, Debug, Serialize)]
struct CapRun {
    method: &'static str,
    rate: &'static str,
    cap_bps: f64,
    burst_bytes: u64,
    streams: u32,
    goodput_mbit_per_sec: f64,
    goodput_over_cap: f64,
    retransmits: u64,
    cpu_sys_softirq_secs: f64,
    cpu_steal_secs: f64,
    goodput_ratio_to_tbf: f64,
    cpu_ratio_to_tbf: f64,
    retransmits_ratio_to_tbf: f64,
}

fn tools_container(network: &DockerNetwork, labels: &[String]) -> anyhow::Result<Container> {
    let mut args: Vec<&str> = HOST_TOOLS.to_vec();
    for label in labels {
        args.extend(["--label", label.as_str()]);
    }
    Container::run("nwbc", network, &args, &["sleep", "1800"])
}

/// A tbf put on a host interface by hand, deleted on drop.
struct HandTbf {
    dev: String,
}

impl HandTbf {
    fn add(dev: &str, rate: &str, burst: u64) -> anyhow::Result<Self> {
        let burst = burst.to_string();
        run(
            "tc",
            &[
                "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", &burst,
                "latency", "50ms",
            ],
        )?;
        Ok(Self {
            dev: dev.to_owned(),
        })
    }
}

impl Drop for HandTbf {
    fn drop(&mut self) {
        // The veth may be gone with its container already.
        if std::path::Path::new(&format!("/sys/class/net/{}", self.dev)).exists() {
            run_quietly("tc", &["qdisc", "del", "dev", &self.dev, "root"]);
        }
    }
}

pub fn run_section(params: &Params) -> anyhow::Result<Section> {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal("nwbc")?;
    let server = tools_container(&network, &[])?;
    let server_ip = server.ipv4(&network)?;
    start_server(&server, IPERF_PORT, 1800)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut runs = Vec::new();

    for &rate in &params.rates {
        let burst = default_burst(parse_rate(rate).with_context(|| format!("rate {rate}"))?);
        eprintln!("bench: caps: tc tbf {rate}");
        let capped = tools_container(&network, &[])?;
        let (_, veth) = capped.host_veth()?;
        let _tbf = HandTbf::add(&veth, rate, burst)?;
        measure(
            "tc tbf", rate, burst, &capped, &server_ip, params, &mut runs,
        )?;
    }
    for enforcement in ["shaper", "policer"] {
        let mut daemon = Daemon::start_with_env(
            &labels,
            "ebpf",
            "",
            &[
                ("NETWARP_RATE_LIMITS_ENFORCEMENT", enforcement),
                ("NETWARP_LOGGING_LEVEL", "info"),
            ],
        )?;
        daemon.wait_for_log("connected to Docker", Duration::from_secs(15))?;
        let method = if enforcement == "shaper" {
            "netwarp shaper"
        } else {
            "netwarp policer"
        };
        for &rate in &params.rates {
            eprintln!("bench: caps: {method} {rate}");
            let burst = default_burst(parse_rate(rate)?);
            let capped = tools_container(&network, &[format!("{}={rate}", labels.ingress_rate)])?;
            let programmed = eventually(Duration::from_secs(20), || {
                daemon
                    .log()
                    .lines()
                    .any(|l| l.contains("caps programmed") && l.contains(capped.name()))
            });
            if !programmed {
                bail!(
                    "{method}: the cap of {} was never programmed",
                    capped.name()
                );
            }
            measure(method, rate, burst, &capped, &server_ip, params, &mut runs)?;
        }
        // No `netwarp cleanup`: it sweeps every container on the host. The
        // capped containers are gone, and dropping the daemon removes its pins.
        daemon.stop(libc::SIGTERM)?;
        drop(daemon);
    }
    drop(server);
    drop(network);
    Ok(tabulate(runs, params))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    method: &'static str,
    rate: &'static str,
    burst: u64,
    capped: &Container,
    server_ip: &str,
    params: &Params,
    runs: &mut Vec<CapRun>,
) -> anyhow::Result<()> {
    let cap_bps = parse_rate(rate)?.bits_per_second() as f64;
    for &streams in &params.streams {
        let before = CpuTimes::now()?;
        let result = IperfRun::new(server_ip, IPERF_PORT, params.seconds)
            .streams(streams)
            .reverse(true)
            .run(capped)
            .with_context(|| format!("{method} {rate} {streams} stream(s)"))?;
        let after = CpuTimes::now()?;
        let cpu = after.sys_softirq_secs_since(&before);
        if result.received_bps <= 0.0 {
            bail!("{method} {rate}: no traffic flowed");
        }
        runs.push(CapRun {
            method,
            rate,
            cap_bps,
            burst_bytes: burst,
            streams,
            goodput_mbit_per_sec: result.received_bps / 1e6,
            goodput_over_cap: result.received_bps / cap_bps,
            retransmits: result.retransmits,
            cpu_sys_softirq_secs: cpu,
            cpu_steal_secs: after.steal_secs_since(&before),
            goodput_ratio_to_tbf: f64::NAN,
            cpu_ratio_to_tbf: f64::NAN,
            retransmits_ratio_to_tbf: f64::NAN,
        });
    }
    Ok(())
}

fn tabulate(mut runs: Vec<CapRun>, params: &Params) -> Section {
    let baseline: Vec<CapRun> = runs
        .iter()
        .filter(|r| r.method == "tc tbf")
        .cloned()
        .collect();
    for r in &mut runs {
        if let Some(b) = baseline
            .iter()
            .find(|b| b.rate == r.rate && b.streams == r.streams)
        {
            r.goodput_ratio_to_tbf = ratio(r.goodput_mbit_per_sec, b.goodput_mbit_per_sec);
            r.cpu_ratio_to_tbf = ratio(r.cpu_sys_softirq_secs, b.cpu_sys_softirq_secs);
            r.retransmits_ratio_to_tbf = ratio(r.retransmits as f64, b.retransmits as f64);
        }
    }
    runs.sort_by_key(|r| {
        (
            params.rates.iter().position(|x| *x == r.rate),
            r.streams,
            ["tc tbf", "netwarp shaper", "netwarp policer"]
                .iter()
                .position(|m| *m == r.method),
        )
    });
    let mut table = Table::new(
        "5. Caps: ingress cap vs tc tbf (as docker-tc does it)",
        &format!(
            "{} s iperf3 --reverse per run into a fresh container; goodput is TCP payload \
             (a perfect cap on the wire gives 0.956 at MTU 1500); CPU = host-wide sys+softirq \
             seconds over the run from /proc/stat; x tbf = ratio to the tc tbf row",
            params.seconds
        ),
        &[
            "rate",
            "streams",
            "method",
            "Mbit/s",
            "goodput/cap",
            "retrans",
            "CPU s",
            "goodput x tbf",
            "retrans x tbf",
            "CPU x tbf",
        ],
    );
    let mut goals = Vec::new();
    for r in &runs {
        table.row(vec![
            r.rate.to_owned(),
            r.streams.to_string(),
            r.method.to_owned(),
            fmt_num(r.goodput_mbit_per_sec),
            fmt_num(r.goodput_over_cap),
            r.retransmits.to_string(),
            fmt_num(r.cpu_sys_softirq_secs),
            fmt_num(r.goodput_ratio_to_tbf),
            fmt_num(r.retransmits_ratio_to_tbf),
            fmt_num(r.cpu_ratio_to_tbf),
        ]);
        if r.method != "tc tbf" {
            goals.push(Goal::within(
                "caps",
                &format!(
                    "{} {} {} stream(s) goodput/cap",
                    r.method, r.rate, r.streams
                ),
                r.goodput_over_cap,
                1.0,
                TOLERANCE,
            ));
        }
    }
    Section {
        name: "caps",
        data: serde_json::json!({
            "seconds": params.seconds,
            "direction": "ingress (to the container)",
            "runs": runs,
        }),
        tables: vec![table],
        goals,
    }
}
