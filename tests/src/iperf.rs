//! Bounded iperf3 runs between test containers (iperf3 comes from the
//! host through the `HOST_TOOLS` bind mounts).

use anyhow::{Context as _, bail};

use crate::{command::output, docker::Container};

/// What one iperf3 run measured.
#[derive(Clone, Debug)]
pub struct IperfResult {
    /// Goodput at the receiver, bit/s.
    pub received_bps: f64,
    /// TCP retransmissions at the sender.
    pub retransmits: u64,
    pub seconds: f64,
    /// Goodput of each one-second interval, bit/s.
    pub intervals_bps: Vec<f64>,
}

/// Options of one run.
#[derive(Clone, Copy, Debug)]
pub struct IperfRun<'a> {
    pub server: &'a str,
    pub port: u16,
    pub seconds: u32,
    pub streams: u32,
    /// The server sends (iperf3 `--reverse`): measures what the client receives.
    pub reverse: bool,
    /// Target rate per stream (iperf3 `--bitrate`), e.g. `2G`.
    pub bitrate: Option<&'a str>,
    pub udp: bool,
}

impl<'a> IperfRun<'a> {
    pub fn new(server: &'a str, port: u16, seconds: u32) -> Self {
        Self {
            server,
            port,
            seconds,
            streams: 1,
            reverse: false,
            bitrate: None,
            udp: false,
        }
    }

    pub fn streams(self, streams: u32) -> Self {
        Self { streams, ..self }
    }

    pub fn reverse(self, reverse: bool) -> Self {
        Self { reverse, ..self }
    }

    pub fn udp(self) -> Self {
        Self { udp: true, ..self }
    }

    pub fn bitrate(self, bitrate: &'a str) -> Self {
        Self {
            bitrate: Some(bitrate),
            ..self
        }
    }

    /// Runs the client in `client`, bounded by `timeout` at 3× the run.
    pub fn run(&self, client: &Container) -> anyhow::Result<IperfResult> {
        let timeout = (self.seconds * 3 + 10).to_string();
        let (time, port, streams) = (
            self.seconds.to_string(),
            self.port.to_string(),
            self.streams.to_string(),
        );
        let mut args = vec![
            "exec",
            client.name(),
            "timeout",
            timeout.as_str(),
            "/usr/bin/iperf3",
            "--client",
            self.server,
            "--port",
            port.as_str(),
            "--time",
            time.as_str(),
            "--parallel",
            streams.as_str(),
            "--connect-timeout",
            "3000",
            "--json",
        ];
        if self.reverse {
            args.push("--reverse");
        }
        if let Some(bitrate) = self.bitrate {
            args.extend(["--bitrate", bitrate]);
        }
        if self.udp {
            args.push("--udp");
        }
        let out = output("docker", &args)?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(error) = report["error"].as_str() {
            bail!("iperf3: {error}");
        }
        let end = &report["end"];
        Ok(IperfResult {
            received_bps: end["sum_received"]["bits_per_second"]
                .as_f64()
                .with_context(|| format!("no sum_received in {end}"))?,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            seconds: end["sum_received"]["seconds"].as_f64().unwrap_or(0.0),
            intervals_bps: report["intervals"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Starts an iperf3 server on `port` in `container`, ending by itself
/// after `seconds`.
pub fn start_server(container: &Container, port: u16, seconds: u32) -> anyhow::Result<()> {
    container.exec_detached(&[
        "timeout",
        &seconds.to_string(),
        "/usr/bin/iperf3",
        "--server",
        "--port",
        &port.to_string(),
    ])
}
