//! The leak sink: the host routes a steered prefix into a namespace that
//! counts and drops every packet reaching it, so whatever leaks out of a
//! target's default path (or a warp's) ends there and nothing leaves the
//! machine.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{
    command::{output, run, run_quietly},
    daemon::eventually,
    netns::{Netns, Veth},
};

/// Counts and drops every packet the host forwards to the steered prefix:
/// a namespace behind a veth, with the prefix routed to it on the host.
pub struct LeakSink {
    // Field order is drop order: the forward rules, the veth, the netns.
    forward_rules: Vec<Vec<String>>,
    host_route: String,
    veth: Veth,
    netns: Netns,
    prefix: String,
}

/// A unique steered /24 in 198.18.0.0/15 and the warp's address in it.
pub struct SteeredPrefix {
    /// `198.18.N.0/24`.
    pub prefix: String,
    /// `198.18.N.1`: the warp's own address, the steered destination.
    pub remote: String,
}

impl LeakSink {
    /// A fresh steered prefix with its sink on `bridge`, self-tested, so a
    /// count of 0 later means "nothing leaked", not "nothing counted".
    pub fn for_unique_prefix(bridge: &str) -> anyhow::Result<(Self, SteeredPrefix)> {
        let octet = super::unique_prefix_octet();
        let steered = SteeredPrefix {
            prefix: format!("198.18.{octet}.0/24"),
            remote: format!("198.18.{octet}.1"),
        };
        let sink = Self::install(&steered.prefix, &[bridge.to_owned()])?;
        sink.self_test(&format!("198.18.{octet}.9"))?;
        Ok((sink, steered))
    }

    /// Routes `prefix` (e.g. 198.18.7.0/24) into a new sink namespace and
    /// lets the bridges in `bridges` forward to it (Docker's isolation
    /// rules would otherwise drop a leak before anything could count it).
    pub fn install(prefix: &str, bridges: &[String]) -> anyhow::Result<Self> {
        let netns = Netns::create("nwk")?;
        let veth = Veth::create(&netns)?;
        let octet = prefix
            .split('.')
            .nth(2)
            .context("an IPv4 prefix")?
            .to_owned();
        let host_addr = format!("169.254.{octet}.1");
        let sink_addr = format!("169.254.{octet}.2");
        veth.address(
            &netns,
            &format!("{host_addr}/30"),
            &format!("{sink_addr}/30"),
        )?;
        // Counted (and dropped) as they arrive, before any routing.
        netns.exec(&[
            "iptables",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-d",
            prefix,
            "-j",
            "DROP",
        ])?;
        let mut sink = Self {
            forward_rules: Vec::new(),
            host_route: prefix.to_owned(),
            veth,
            netns,
            prefix: prefix.to_owned(),
        };
        run(
            "ip",
            &[
                "route",
                "add",
                prefix,
                "via",
                &sink_addr,
                "dev",
                &sink.veth.host,
            ],
        )?;
        for bridge in bridges {
            let rule: Vec<String> = [
                "DOCKER-USER",
                "-i",
                bridge,
                "-o",
                &sink.veth.host,
                "-d",
                prefix,
                "-j",
                "ACCEPT",
            ]
            .map(str::to_owned)
            .to_vec();
            let mut args = vec!["-I"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args)?;
            sink.forward_rules.push(rule);
        }
        Ok(sink)
    }

    /// Packets that reached the sink so far.
    pub fn packets(&self) -> u64 {
        let listing = self
            .netns
            .exec(&[
                "iptables",
                "-t",
                "raw",
                "-L",
                "PREROUTING",
                "-v",
                "-x",
                "-n",
            ])
            .unwrap_or_default();
        listing
            .lines()
            .find(|l| l.contains(&self.prefix) && l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// Proves the sink counts: sends two datagrams from the host itself.
    pub fn self_test(&self, address: &str) -> anyhow::Result<()> {
        let before = self.packets();
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..2 {
            socket.send_to(b"leak-sink self test", (address, 9))?;
        }
        let counted = eventually(Duration::from_secs(3), || self.packets() >= before + 2);
        if !counted {
            bail!(
                "the leak sink did not count the host's datagrams ({before} -> {})",
                self.packets()
            );
        }
        Ok(())
    }

    /// Zero point of the leak count (the self test's packets).
    pub fn baseline(&self) -> u64 {
        self.packets()
    }
}

impl Drop for LeakSink {
    fn drop(&mut self) {
        for rule in &self.forward_rules {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            run_quietly("iptables", &args);
        }
        let _ = output("ip", &["route", "del", &self.host_route]);
    }
}
