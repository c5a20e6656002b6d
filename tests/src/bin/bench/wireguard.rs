//! Section 7: throughput through a real WireGuard tunnel (userspace
//! `wireguard-go`, see `netwarp_tests::vpn`): iperf3 from a target that
//! netwarp steers into a WireGuard warp, against an unlabelled twin routed
//! to the same warp by hand, both to an iperf3 server on the destination
//! behind the tunnel (in the VPN server's namespace), interleaved twin,
//! target, target, twin, in `routes` and in `ebpf` mode.
//!
//! The network is routed (the warp reaches its server through the host);
//! the steered prefix ends in the leak sink, which must count nothing.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, HOST_TOOLS},
    iperf::IperfRun,
    observe::{status_json, status_target},
    vpn::{RoutedVpn, VpnServer, answered, health, missing_wireguard},
};
use serde::Serialize;

use crate::{
    Section,
    paths::DAEMON_ENV,
    report::{Goal, Table, fmt_num, ratio},
};

const IPERF_PORT: u16 = 5201;
/// How long the iperf3 server may live (it is stopped when done).
const SERVER_SECS: u32 = 900;

#[derive(Clone, Debug, Serialize)]
struct Row {
    mode: &'static str,
    twin_mbit_per_sec: f64,
    steered_mbit_per_sec: f64,
    twin_retransmits: u64,
    steered_retransmits: u64,
    ratio_to_twin: f64,
}

/// An iperf3 server on the destination inside the VPN server's
/// namespace, stopped on drop (`timeout` bounds it anyway).
struct IperfServer(Child);

impl IperfServer {
    fn start(server: &VpnServer, address: &str) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", server.netns().name(), "timeout"])
            .arg(SERVER_SECS.to_string())
            .args(["iperf3", "--server", "--bind", address, "--port"])
            .arg(IPERF_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 in the VPN server's namespace")?;
        Ok(Self(child))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        // SIGTERM to `timeout` (exec'd by `ip netns exec`), which passes
        // it on to iperf3.
        // SAFETY: kill() on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn run_section(seconds: u32) -> anyhow::Result<Section> {
    if let Some(reason) = missing_wireguard() {
        bail!("the WireGuard section {reason}");
    }
    let labels = TestLabels::unique();
    // Whatever the warp forwarded untunnelled would end in its leak sink,
    // not on the host's default route.
    let world = RoutedVpn::create("nwbw")?;
    let (network, addresses) = (&world.network, world.addresses);
    let destination = addresses.destination();
    let _iperf_server = IperfServer::start(&world.server, &destination)?;
    let warp_name = labels.warp_name("wg");
    let warp = world.start_warp(&warp_name, true)?;
    if !eventually(Duration::from_secs(30), || health(&warp) == "healthy") {
        bail!("the WireGuard warp never became healthy");
    }
    // The twin: unlabelled (netwarp never touches it), routed to the warp
    // by hand.
    let twin = Container::run("nwbu", network, HOST_TOOLS, &["sleep", "1800"])?;
    twin.ip(&[
        "route",
        "add",
        &addresses.prefix(),
        "via",
        &warp.ipv4(network)?,
    ])?;
    if !eventually(Duration::from_secs(30), || answered(&twin, &destination)) {
        bail!("the twin never reached the destination through the tunnel");
    }
    let target_label = labels.target_label(&warp_name);
    let mut target_args = HOST_TOOLS.to_vec();
    target_args.extend(["--label", target_label.as_str()]);

    let mut rows = Vec::new();
    for mode in ["routes", "ebpf"] {
        // A fresh target per mode, started while the daemon runs (it is
        // held closed until programmed).
        let mut daemon =
            Daemon::start_with_env(&labels, mode, &addresses.rules_toml(), DAEMON_ENV)?;
        let target = Container::run("nwbt", network, &target_args, &["sleep", "1800"])?;
        // Nothing is sent before netwarp has programmed it: on a network
        // that had no target, no guard holds a new one's first packets.
        let steered = || {
            status_json(&daemon).is_ok_and(|status| {
                status_target(&status, target.name()).is_some_and(|t| t["state"] == "steered")
            })
        };
        if !eventually(Duration::from_secs(30), steered) {
            bail!("{mode}: netwarp never steered the target");
        }
        if !eventually(Duration::from_secs(45), || answered(&target, &destination)) {
            bail!("{mode}: the target was never served through the tunnel");
        }
        eprintln!("bench: wireguard {mode}: iperf3, twin and steered target interleaved");
        let a1 = iperf(&twin, &destination, seconds)?;
        let b1 = iperf(&target, &destination, seconds)?;
        let b2 = iperf(&target, &destination, seconds)?;
        let a2 = iperf(&twin, &destination, seconds)?;
        let (twin_mbit, steered_mbit) = ((a1.0 + a2.0) / 2.0, (b1.0 + b2.0) / 2.0);
        rows.push(Row {
            mode,
            twin_mbit_per_sec: twin_mbit,
            steered_mbit_per_sec: steered_mbit,
            twin_retransmits: a1.1 + a2.1,
            steered_retransmits: b1.1 + b2.1,
            ratio_to_twin: ratio(steered_mbit, twin_mbit),
        });
        daemon.stop(libc::SIGTERM)?;
        drop(daemon);
        drop(target);
        let leaked = world.leaks();
        if leaked > 0 {
            bail!("{mode}: {leaked} packets reached the leak sink");
        }
    }
    Ok(tabulate(&rows, seconds))
}

/// Mbit/s at the receiver, and retransmits.
fn iperf(client: &Container, dest: &str, seconds: u32) -> anyhow::Result<(f64, u64)> {
    let r = IperfRun::new(dest, IPERF_PORT, seconds)
        .run(client)
        .with_context(|| format!("iperf3 from {} to {dest}", client.name()))?;
    if r.received_bps <= 0.0 {
        bail!("no traffic flowed from {} to {dest}", client.name());
    }
    Ok((r.received_bps / 1e6, r.retransmits))
}

fn tabulate(rows: &[Row], seconds: u32) -> Section {
    let mut table = Table::new(
        "7. Throughput through a WireGuard tunnel (iperf3, 1 stream)",
        &format!(
            "{seconds} s per run; a userspace wireguard-go warp and server, iperf3 server on \
             the destination behind the tunnel; twin = an unlabelled container routed to the \
             warp by hand, steered = a target netwarp steers into the same warp; interleaved \
             twin, steered, steered, twin and averaged; 0 packets reached the leak sink"
        ),
        &["path", "Mbit/s", "retransmits", "x twin"],
    );
    let mut goals = Vec::new();
    for r in rows {
        table.row(vec![
            format!("twin (paired with {})", r.mode),
            fmt_num(r.twin_mbit_per_sec),
            r.twin_retransmits.to_string(),
            fmt_num(1.0),
        ]);
        table.row(vec![
            r.mode.to_owned(),
            fmt_num(r.steered_mbit_per_sec),
            r.steered_retransmits.to_string(),
            fmt_num(r.ratio_to_twin),
        ]);
        goals.push(Goal::at_least(
            "wireguard",
            &format!("{} through WireGuard / twin", r.mode),
            r.ratio_to_twin,
            "x",
            0.9,
        ));
    }
    Section {
        name: "wireguard",
        data: serde_json::json!({ "seconds": seconds, "throughput": rows }),
        tables: vec![table],
        goals,
    }
}
