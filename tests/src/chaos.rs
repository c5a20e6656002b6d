//! The reliability ("chaos") harness: a warp, a target sending continuous
//! bounded traffic to a steered destination, an unlabelled bystander, a
//! real daemon, and faults injected one after another. After every fault
//! it checks that the programmed state equals what the plan implies and
//! that nothing is orphaned; all along it counts packets that leaked.
//!
//! Network safety: the steered prefix (a 198.18.N.0/24 benchmarking
//! prefix unique to the scenario) is routed on the host into a sink
//! network namespace that counts and drops every packet reaching it, so
//! whatever leaks out of the target's default path ends there and nothing
//! leaves the machine. The destination itself is owned by the warp's
//! loopback. Networks are `--internal`. Every loop is bounded in count and
//! in time; every fixture is a drop guard.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, lpm_trie::LpmTrie};
use netwarp_common::{
    ACTION_BLOCK, ACTION_STEER, GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, GUARD_ALLOW_MAP, GUARDS_MAP,
    GuardAllowKey, POLICY_MAP, RATE_BUCKETS_MAP, RATE_SLOTS_MAP, RULES_V4_MAP, RULES_V6_MAP,
    RuleKeyV4, RuleKeyV6, RuleValue, TargetPolicy, WARP_PEERS_MAP, WarpPeerKey,
};
use serde::Serialize;

use crate::{
    command::{output, run, run_quietly},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, TEST_IMAGE},
    isolation::unlabelled_state,
    netns::{Netns, Veth},
    steering::TABLE,
};

/// How long a fault may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// The daemon's periodic resync in chaos runs (it repairs what no Docker
/// event reports, such as a deleted pin).
pub const RESYNC_SECS: u64 = 2;

/// How many times each fault runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Counts {
    pub daemon_kill: u32,
    pub dockerd_restart: u32,
    pub warp_flap: u32,
    pub target_restart: u32,
    pub warp_disconnect: u32,
    pub veth_delete: u32,
    pub pin_delete: u32,
}

impl Counts {
    /// `cargo xtask test`: a few of each (dockerd restarts are covered by
    /// docker_restart_e2e there).
    pub const SHORT: Self = Self {
        daemon_kill: 2,
        dockerd_restart: 0,
        warp_flap: 2,
        target_restart: 2,
        warp_disconnect: 1,
        veth_delete: 1,
        pin_delete: 1,
    };
    /// `cargo xtask chaos`.
    pub const FULL: Self = Self {
        daemon_kill: 20,
        dockerd_restart: 5,
        warp_flap: 100,
        target_restart: 100,
        warp_disconnect: 10,
        veth_delete: 5,
        pin_delete: 5,
    };

    /// FULL when `NETWARP_CHAOS=full`, else SHORT; without dockerd
    /// restarts when `NETWARP_CHAOS_DOCKERD=0` (a machine others share).
    pub fn from_env() -> Self {
        let mut counts = match std::env::var("NETWARP_CHAOS").as_deref() {
            Ok("full") => Self::FULL,
            _ => Self::SHORT,
        };
        if std::env::var("NETWARP_CHAOS_DOCKERD").as_deref() == Ok("0") {
            counts.dockerd_restart = 0;
        }
        counts
    }
}

/// The outcome of one kind of fault.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultResult {
    pub fault: String,
    pub injected: u32,
    /// Converged to the planned state with nothing orphaned.
    pub survived: u32,
    /// Never converged (state lost or wrong), with the first reasons.
    pub lost_state: u32,
    pub leaked_packets: u64,
    pub failures: Vec<String>,
    /// Deviations that are reported but neither lose state nor leak.
    pub notes: Vec<String>,
    /// Whether the fault opens a window before netwarp notices (a
    /// (re)started target runs before netwarp programs its new namespace;
    /// a deleted link pin is only seen at the next resync), which only the
    /// bridge guard holds closed.
    pub leak_window: bool,
    pub total_secs: f64,
}

/// The outcome of a scenario in one dataplane.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    pub mode: String,
    pub faults: Vec<FaultResult>,
    pub leaked_packets: u64,
    /// Probes the target sent before netwarp first programmed it (it
    /// starts before the daemon): expected, and not counted as leaks.
    pub leaked_before_first_reconcile: u64,
    pub probes_delivered: u64,
    pub probes_failed: u64,
    pub delivered_fraction: f64,
    pub bystander_unchanged: bool,
    pub daemon_peak_rss_kib: u64,
    pub total_secs: f64,
}

impl ScenarioReport {
    pub fn faults_survived(&self) -> u32 {
        self.faults.iter().map(|f| f.survived).sum()
    }
    pub fn faults_injected(&self) -> u32 {
        self.faults.iter().map(|f| f.injected).sum()
    }
    pub fn lost_state(&self) -> u32 {
        self.faults.iter().map(|f| f.lost_state).sum()
    }
}

/// A unique steered /24 in 198.18.0.0/15 (RFC 2544 benchmarking space).
pub fn unique_prefix_octet() -> u8 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ((std::process::id().wrapping_mul(7) + n * 31) % 250 + 1) as u8
}

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

impl LeakSink {
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

/// The probe loop a target runs as its main process: one ping every
/// 50 ms, `D` (delivered) or `F` (failed) on stdout, bounded in count.
/// It restarts with the container.
fn probe_script(remote: &str, count: u32) -> String {
    format!(
        "i=0; while [ $i -lt {count} ]; do \
         if ping -c 1 -W 1 {remote} >/dev/null 2>&1; then echo D; else echo F; fi; \
         i=$((i+1)); usleep 50000; done; sleep 3600"
    )
}

/// The whole scenario.
pub struct Scenario {
    pub mode: String,
    pub labels: TestLabels,
    pub prefix: String,
    pub remote: String,
    // Drop order: daemon and containers first, then the sink, then the network.
    pub daemon: Daemon,
    pub target: Container,
    pub bystander: Container,
    pub warp: Option<Container>,
    pub warp_name: String,
    pub sink: LeakSink,
    pub network: DockerNetwork,
    bystander_before: String,
    /// Sink packets before the first convergence: the self test, and the
    /// target's probes before netwarp had ever programmed it.
    pub leak_baseline: u64,
    /// Of those, the target's own (not the self test's).
    pub leaked_before_first_reconcile: u64,
    /// Containers get `--restart always` (dockerd restarts bring them back).
    restart_policy: bool,
}

/// What the dataplane should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Steered,
    Blocked,
}

impl Scenario {
    pub fn start(mode: &str, restart_policy: bool) -> anyhow::Result<Self> {
        let labels = TestLabels::unique();
        let octet = unique_prefix_octet();
        let prefix = format!("198.18.{octet}.0/24");
        let remote = format!("198.18.{octet}.1");
        let network = DockerNetwork::create_internal_steerable("nwc")?;
        let sink = LeakSink::install(&prefix, &[network.bridge()?])?;
        sink.self_test(&format!("198.18.{octet}.9"))?;
        let after_self_test = sink.baseline();
        let warp_name = labels.warp_name("gw");
        let policy: &[&str] = if restart_policy {
            &["--restart", "always", "--stop-timeout", "1"]
        } else {
            &[]
        };
        let warp = start_warp_at(&warp_name, &network, &remote, policy)?;
        let target_label = labels.target_label(&warp_name);
        let mut target_args = vec!["--label", target_label.as_str()];
        target_args.extend_from_slice(policy);
        let script = probe_script(&remote, 200_000);
        // Bounded anyway: the script's count, and the scenario's lifetime.
        let target = Container::run("nwct", &network, &target_args, &["sh", "-c", &script])?;
        let bystander = Container::run("nwcu", &network, policy, &["sleep", "3600"])?;
        let bystander_before = unlabelled_state(&bystander)?;
        let daemon = Daemon::start_with_env(
            &labels,
            mode,
            &format!("[[routing_rules]]\ndestination = \"{prefix}\"\n"),
            &[("NETWARP_DATAPLANE_RESYNC_INTERVAL_SECS", "2")],
        )?;
        let mut scenario = Self {
            mode: mode.to_owned(),
            labels,
            prefix,
            remote,
            daemon,
            target,
            bystander,
            warp: Some(warp),
            warp_name,
            sink,
            network,
            bystander_before,
            leak_baseline: 0,
            leaked_before_first_reconcile: 0,
            restart_policy,
        };
        scenario
            .converge(Expect::Steered, CONVERGE)
            .context("the first reconcile")?;
        scenario.leak_baseline = scenario.sink.baseline();
        scenario.leaked_before_first_reconcile = scenario.leak_baseline - after_self_test;
        Ok(scenario)
    }

    /// Waits until the state is as expected; the last mismatch otherwise.
    pub fn converge(&self, expect: Expect, timeout: Duration) -> anyhow::Result<()> {
        let mut last = String::new();
        let ok = eventually(timeout, || match self.check(expect) {
            Ok(()) => true,
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        if ok {
            Ok(())
        } else {
            bail!("{} did not converge to {expect:?}: {last}", self.mode)
        }
    }

    /// Like [`Self::converge`], for the target's namespace only.
    pub fn converge_netns(&self, expect: Expect, timeout: Duration) -> anyhow::Result<()> {
        let mut last = String::new();
        let ok = eventually(timeout, || match self.check_netns(expect) {
            Ok(()) => true,
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        if !ok {
            bail!(
                "{}: the netns did not converge to {expect:?}: {last}",
                self.mode
            );
        }
        Ok(())
    }

    /// Compares what is programmed with what the plan implies.
    pub fn check(&self, expect: Expect) -> anyhow::Result<()> {
        self.check_netns(expect)?;
        if self.mode == "routes" {
            self.check_host_guard()?;
        } else {
            self.check_ebpf(expect)?;
        }
        Ok(())
    }

    /// The target namespace's netwarp rules and routes.
    pub fn check_netns(&self, expect: Expect) -> anyhow::Result<()> {
        let warp_ip = match expect {
            Expect::Steered => Some(self.warp_ip()?),
            Expect::Blocked => None,
        };
        let (rules, routes) = netwarp_entries(&self.target)?;
        match self.mode.as_str() {
            "routes" => {
                expect_lines(&rules, &[&format!("to {}", self.prefix)], "rules")?;
                let route = match &warp_ip {
                    Some(ip) => format!("{} via {ip} ", self.prefix),
                    None => format!("prohibit {} ", self.prefix),
                };
                expect_lines(&routes, &[&route], "routes")?;
            }
            _ => {
                // The tc drop is silent, so blocked prefixes also get
                // prohibit routes; steered ones get nothing in the netns.
                match expect {
                    Expect::Steered => {
                        expect_lines(&rules, &[], "rules")?;
                        expect_lines(&routes, &[], "routes")?;
                    }
                    Expect::Blocked => {
                        expect_lines(&rules, &[&format!("to {}", self.prefix)], "rules")?;
                        expect_lines(&routes, &[&format!("prohibit {} ", self.prefix)], "routes")?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_ebpf(&self, expect: Expect) -> anyhow::Result<()> {
        let pins = self.daemon.pin_dir();
        let (target_ifindex, veth) = self.target.host_veth()?;
        let policies = read_policies(pins)?;
        let keys: BTreeSet<u32> = policies.iter().map(|(k, _)| *k).collect();
        if keys != BTreeSet::from([target_ifindex]) {
            bail!("policy map keys {keys:?}, expected only the target's veth {target_ifindex}");
        }
        let policy = policies[0].1;
        let guard_rule_set = self.check_guard(pins)?;
        let rows = read_rule_sets(pins)?;
        let live: BTreeSet<u32> = BTreeSet::from([policy.rule_set, guard_rule_set]);
        let orphans: Vec<_> = rows.iter().filter(|(set, _)| !live.contains(set)).collect();
        if !orphans.is_empty() {
            bail!("orphaned rule rows: {orphans:?}");
        }
        let guard_actions: Vec<u8> = rows
            .iter()
            .filter(|(set, _)| *set == guard_rule_set)
            .map(|(_, v)| v.action)
            .collect();
        if guard_actions != [ACTION_BLOCK] {
            bail!("bridge guard rule actions {guard_actions:?}, expected [{ACTION_BLOCK}]");
        }
        let actions: Vec<u8> = rows
            .iter()
            .filter(|(set, _)| *set == policy.rule_set)
            .map(|(_, v)| v.action)
            .collect();
        let want = match expect {
            Expect::Steered => ACTION_STEER,
            Expect::Blocked => ACTION_BLOCK,
        };
        if actions != [want] {
            bail!("rule actions {actions:?}, expected [{want}]");
        }
        // The warp program's peers: while steered, the target's addresses
        // on the warp's veth, pointing at the target's veth; else none.
        let peers: BpfHashMap<_, WarpPeerKey, u32> =
            BpfHashMap::try_from(open_map(pins, WARP_PEERS_MAP)?)?;
        let peers: Vec<(WarpPeerKey, u32)> = peers.iter().filter_map(Result::ok).collect();
        let mut want_links = Vec::new();
        if expect == Expect::Steered {
            let warp = self.warp.as_ref().context("no warp")?;
            let warp_ifindex = host_ifindex_by_mac(warp, &self.warp_mac()?)?;
            if peers.is_empty()
                || peers
                    .iter()
                    .any(|(k, v)| k.warp_ifindex != warp_ifindex || *v != target_ifindex)
            {
                bail!(
                    "warp peers {peers:?}, expected the target's addresses on the warp's veth \
                     {warp_ifindex} to its veth {target_ifindex}"
                );
            }
            want_links.push(format!("{warp_ifindex}-warp"));
            let warp_veth = netwarp::dataplane::ebpf::interface_name(warp_ifindex)
                .with_context(|| format!("no host interface {warp_ifindex}"))?;
            expect_one_netwarp_program(&warp_veth, "Ingress")?;
            if policy.warp_ifindex != warp_ifindex {
                bail!(
                    "policy steers to ifindex {}, the warp's veth is {warp_ifindex}",
                    policy.warp_ifindex
                );
            }
            let mac = parse_mac(&self.warp_mac()?)?;
            if policy.warp_mac != mac {
                bail!(
                    "policy warp MAC {:02x?}, the warp's is {mac:02x?}",
                    policy.warp_mac
                );
            }
        }
        // Links: exactly one pinned per direction, for the live veth only,
        // and exactly one netwarp program attached per direction.
        let mut links: Vec<String> = std::fs::read_dir(pins.join("links"))
            .context("the links pin directory")?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        links.sort();
        let bridge_ifindex = interface_ifindex(&self.network.bridge()?)?;
        if expect == Expect::Blocked && !peers.is_empty() {
            bail!("warp peers {peers:?} while the target is blocked, expected none");
        }
        want_links.extend([
            format!("{target_ifindex}-egress"),
            format!("{target_ifindex}-ingress"),
            format!("{bridge_ifindex}-guard"),
        ]);
        want_links.sort();
        if links != want_links {
            bail!("link pins {links:?}, expected {want_links:?}");
        }
        for direction in ["Ingress", "Egress"] {
            expect_one_netwarp_program(&veth, direction)?;
        }
        // No caps in this scenario: the rate maps stay empty.
        for name in [RATE_SLOTS_MAP, RATE_BUCKETS_MAP] {
            let entries = map_keys_u32(pins, name)?;
            if !entries.is_empty() {
                bail!("orphaned entries in {name}: {entries:?}");
            }
        }
        Ok(())
    }

    /// routes: the host's guard rules for this network's bridge: one block
    /// for the prefix, and an allow for the bystander and the running warp.
    fn check_host_guard(&self) -> anyhow::Result<()> {
        let bridge = self.network.bridge()?;
        let rules = run("ip", &["-4", "rule", "show"])?;
        let ours: Vec<&str> = rules
            .lines()
            .filter(|l| {
                l.contains(&format!("iif {bridge} ")) || l.ends_with(&format!("iif {bridge}"))
            })
            .collect();
        let blocks: Vec<&&str> = ours.iter().filter(|l| l.contains("prohibit")).collect();
        if blocks.len() != 1 || !blocks[0].contains(&format!("to {}", self.prefix)) {
            bail!(
                "host guard blocks {blocks:?}, expected one for {}",
                self.prefix
            );
        }
        let mut allowed: Vec<String> = ours
            .iter()
            .filter(|l| l.contains("goto"))
            .filter_map(|l| {
                let from = l.split_whitespace().skip_while(|w| *w != "from").nth(1)?;
                Some(from.trim_end_matches("/32").to_owned())
            })
            .collect();
        allowed.sort();
        let mut want = vec![self.bystander.ipv4(&self.network)?];
        if let Some(warp) = &self.warp
            && let Ok(ip) = warp.ipv4(&self.network)
        {
            want.push(ip);
        }
        want.sort();
        if allowed != want {
            bail!("the host guard allows {allowed:?}, expected {want:?}: {ours:#?}");
        }
        Ok(())
    }

    /// The network's bridge guard: the only one, for this network's
    /// bridge, with the bystander (and the warp, while it runs) allowed and
    /// nothing else; exactly one netwarp program on the bridge's ingress.
    /// Returns the guard's rule set.
    fn check_guard(&self, pins: &Path) -> anyhow::Result<u32> {
        let bridge = self.network.bridge()?;
        let bridge_ifindex = interface_ifindex(&bridge)?;
        let guards: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(open_map(pins, GUARDS_MAP)?)?;
        let guards: Vec<(u32, u32)> = guards.iter().filter_map(Result::ok).collect();
        let [(guarded, rule_set)] = guards[..] else {
            bail!("bridge guards {guards:?}, expected one for {bridge} ({bridge_ifindex})");
        };
        if guarded != bridge_ifindex {
            bail!("the guard is on ifindex {guarded}, the network's bridge is {bridge_ifindex}");
        }
        let allow: BpfHashMap<_, GuardAllowKey, u8> =
            BpfHashMap::try_from(open_map(pins, GUARD_ALLOW_MAP)?)?;
        let mut allowed: Vec<String> = allow
            .keys()
            .filter_map(Result::ok)
            .map(|k| match k.kind {
                GUARD_ALLOW_IPV4 => {
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&k.addr[..4]).expect("four bytes"))
                        .to_string()
                }
                GUARD_ALLOW_IPV6 => std::net::Ipv6Addr::from(k.addr).to_string(),
                _ => k.addr[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            })
            .collect();
        allowed.sort();
        let mut want = vec![self.bystander.ipv4(&self.network)?];
        if let Some(warp) = &self.warp
            && let Ok(ip) = warp.ipv4(&self.network)
        {
            want.push(ip);
            want.push(self.warp_mac()?);
        }
        want.sort();
        if allowed != want {
            bail!("the guard allows {allowed:?}, expected {want:?}");
        }
        expect_one_netwarp_program(&bridge, "Ingress")?;
        Ok(rule_set)
    }

    pub fn warp(&self) -> anyhow::Result<&Container> {
        self.warp.as_ref().context("the warp is not running")
    }

    pub fn warp_ip(&self) -> anyhow::Result<String> {
        self.warp()?.ipv4(&self.network)
    }

    fn warp_mac(&self) -> anyhow::Result<String> {
        let template = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").MacAddress}}}}",
            self.network.name()
        );
        Ok(run(
            "docker",
            &["inspect", "--format", &template, &self.warp_name],
        )?
        .trim()
        .to_owned())
    }

    /// (delivered, failed) probes of the target so far, over restarts.
    pub fn probes(&self) -> (u64, u64) {
        let out = output("docker", &["logs", self.target.name()])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let delivered = out.lines().filter(|l| *l == "D").count() as u64;
        let failed = out.lines().filter(|l| *l == "F").count() as u64;
        (delivered, failed)
    }

    /// Whether the bystander's routes, rules, qdiscs and tc attachments are
    /// byte-identical to what they were before the scenario.
    pub fn bystander_unchanged(&self) -> anyhow::Result<bool> {
        let now = unlabelled_state(&self.bystander)?;
        if now != self.bystander_before {
            eprintln!(
                "chaos {}: the bystander changed:\n{}",
                self.mode,
                crate::isolation::describe_change(&self.bystander_before, &now)
            );
        }
        Ok(now == self.bystander_before)
    }

    fn restart_args(&self) -> &'static [&'static str] {
        if self.restart_policy {
            &["--restart", "always", "--stop-timeout", "1"]
        } else {
            &[]
        }
    }

    /// Replaces the warp by a new one under the same name; a filler takes
    /// the old address first, so the new warp gets a new one.
    pub fn recreate_warp(&mut self) -> anyhow::Result<(String, String)> {
        let old_ip = self.warp_ip()?;
        self.warp = None; // removes it
        let filler = Container::run("nwcf", &self.network, &[], &["sleep", "3600"])?;
        let warp = start_warp_at(
            &self.warp_name,
            &self.network,
            &self.remote,
            self.restart_args(),
        )?;
        self.warp = Some(warp);
        let new_ip = self.warp_ip()?;
        drop(filler);
        Ok((old_ip, new_ip))
    }
}

/// The host-side ifindex of a container's interface with `mac` (after a
/// network disconnect and connect it is no longer `eth0`).
pub fn host_ifindex_by_mac(container: &Container, mac: &str) -> anyhow::Result<u32> {
    let links = container.ip(&["-o", "link", "show"])?;
    let line = links
        .lines()
        .find(|l| l.contains(&format!("link/ether {mac}")))
        .with_context(|| format!("no interface with MAC {mac} in {}", container.name()))?;
    // `12: eth1@if5466: <...`
    line.split(':')
        .nth(1)
        .and_then(|name| name.split("@if").nth(1))
        .and_then(|index| index.trim().parse().ok())
        .with_context(|| format!("no peer ifindex in `{line}`"))
}

/// Starts a warp that owns `remote` on its loopback and answers pings.
pub fn start_warp_at(
    name: &str,
    network: &DockerNetwork,
    remote: &str,
    extra: &[&str],
) -> anyhow::Result<Container> {
    let script = format!("ip addr add {remote}/32 dev lo; exec sleep 3600");
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        network.name(),
        "--cap-add",
        "NET_ADMIN",
    ];
    args.extend_from_slice(extra);
    args.extend([TEST_IMAGE, "sh", "-c", script.as_str()]);
    let container = Container::adopt(name);
    run("docker", &args)?;
    Ok(container)
}

/// netwarp's rules (those that look up its table) and its table's routes
/// in a container's namespace, one per line.
pub fn netwarp_entries(container: &Container) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let rules = container.ip(&["rule", "show"])?;
    let rules = rules
        .lines()
        .filter(|l| l.contains(&format!("lookup {TABLE}")))
        .map(str::to_owned)
        .collect();
    let routes = match container.ip(&["route", "show", "table", TABLE]) {
        Ok(routes) => routes,
        // The table exists only while it holds a route.
        Err(e) if e.to_string().contains("does not exist") => String::new(),
        Err(e) => return Err(e),
    };
    let routes = routes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{} ", l.trim()))
        .collect();
    Ok((rules, routes))
}

/// Exactly one line per needle, each containing its needle.
fn expect_lines(lines: &[String], needles: &[&str], what: &str) -> anyhow::Result<()> {
    let matched = lines.len() == needles.len()
        && needles
            .iter()
            .all(|needle| lines.iter().any(|l| l.contains(needle)));
    if !matched {
        bail!("{what} are {lines:?}, expected one each of {needles:?}");
    }
    Ok(())
}

fn open_map(pins: &Path, name: &str) -> anyhow::Result<Map> {
    let data = MapData::from_pin(pins.join(name)).with_context(|| format!("the pinned {name}"))?;
    Map::from_map_data(data).with_context(|| format!("the map type of {name}"))
}

/// Packets the guard on `bridge` dropped, from the daemon's pinned maps.
pub fn guard_drops(pins: &Path, bridge: &str) -> anyhow::Result<u64> {
    let drops: aya::maps::PerCpuHashMap<_, u32, netwarp_common::TrafficCounters> =
        aya::maps::PerCpuHashMap::try_from(open_map(pins, netwarp_common::GUARD_DROPS_MAP)?)?;
    match drops.get(&interface_ifindex(bridge)?, 0) {
        Ok(per_cpu) => Ok(per_cpu.iter().map(|c| c.packets).sum()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether the daemon's pinned maps hold a guard for `bridge`.
pub fn guard_installed(pins: &Path, bridge: &str) -> anyhow::Result<bool> {
    let guards: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(open_map(pins, GUARDS_MAP)?)?;
    Ok(guards.get(&interface_ifindex(bridge)?, 0).is_ok())
}

/// Exactly one netwarp program attached through TCX to `interface` in
/// `direction` ("Ingress" or "Egress").
fn expect_one_netwarp_program(interface: &str, direction: &str) -> anyhow::Result<()> {
    let netwarp = crate::tcx::tcx_programs(interface)
        .iter()
        // The kernel keeps 15 characters of a program's name.
        .filter(|(d, p)| *d == direction && crate::tcx::program_name(p).starts_with("netwarp_tc"))
        .count();
    if netwarp != 1 {
        bail!("{netwarp} netwarp programs on {interface} {direction}, expected 1");
    }
    Ok(())
}

fn interface_ifindex(name: &str) -> anyhow::Result<u32> {
    let index = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .with_context(|| format!("the interface {name}"))?;
    Ok(index.trim().parse()?)
}

fn read_policies(pins: &Path) -> anyhow::Result<Vec<(u32, TargetPolicy)>> {
    let map: BpfHashMap<_, u32, TargetPolicy> = BpfHashMap::try_from(open_map(pins, POLICY_MAP)?)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// Every (rule set, value) row in both rule tries.
fn read_rule_sets(pins: &Path) -> anyhow::Result<Vec<(u32, RuleValue)>> {
    let v4: LpmTrie<_, RuleKeyV4, RuleValue> = LpmTrie::try_from(open_map(pins, RULES_V4_MAP)?)?;
    let v6: LpmTrie<_, RuleKeyV6, RuleValue> = LpmTrie::try_from(open_map(pins, RULES_V6_MAP)?)?;
    let mut rows = Vec::new();
    for (key, value) in v4.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    for (key, value) in v6.iter().filter_map(Result::ok) {
        rows.push((u32::from_be_bytes(key.data().rule_set), value));
    }
    Ok(rows)
}

fn map_keys_u32(pins: &Path, name: &str) -> anyhow::Result<Vec<u32>> {
    let map = open_map(pins, name)?;
    Ok(if name == RATE_SLOTS_MAP {
        let hash: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map)?;
        hash.keys().filter_map(Result::ok).collect()
    } else {
        let hash: BpfHashMap<_, u32, netwarp_common::RateBuckets> = BpfHashMap::try_from(map)?;
        hash.keys().filter_map(Result::ok).collect()
    })
}

fn parse_mac(mac: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC `{mac}`"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC `{mac}` is not six octets"))
}

/// Runs `fault` `count` times; each time `fault` injects, then returns
/// the state to expect, and the harness waits for it.
pub fn run_fault(
    scenario: &mut Scenario,
    name: &str,
    count: u32,
    leak_window: bool,
    mut fault: impl FnMut(&mut Scenario, u32, &mut Vec<String>) -> anyhow::Result<Vec<Expect>>,
) -> FaultResult {
    let started = Instant::now();
    let mut result = FaultResult {
        fault: name.to_owned(),
        leak_window,
        ..FaultResult::default()
    };
    for i in 0..count {
        let before = scenario.sink.packets();
        result.injected += 1;
        let mut notes = Vec::new();
        let outcome = fault(scenario, i, &mut notes).and_then(|expects| {
            // The final expectation is checked by the fault itself for
            // intermediate ones; here, the state it ends in.
            match expects.last() {
                Some(expect) => scenario.converge(*expect, CONVERGE),
                None => Ok(()),
            }
        });
        let leaked = scenario.sink.packets().saturating_sub(before);
        result.leaked_packets += leaked;
        for note in notes {
            eprintln!("chaos {}/{name} #{i}: note: {note}", scenario.mode);
            if result.notes.len() < 3 && !result.notes.contains(&note) {
                result.notes.push(note);
            }
        }
        match outcome {
            Ok(()) => result.survived += 1,
            Err(e) => {
                result.lost_state += 1;
                if result.failures.len() < 3 {
                    result.failures.push(format!("#{i}: {e:#}"));
                }
                eprintln!("chaos {}/{name} #{i}: {e:#}", scenario.mode);
                // Bring the world back so later iterations are meaningful.
                let _ = recover(scenario);
            }
        }
        if leaked > 0 {
            eprintln!(
                "chaos {}/{name} #{i}: {leaked} packets reached the leak sink",
                scenario.mode
            );
        }
    }
    result.total_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "chaos {}/{name}: {}/{} survived, {} leaked, {:.1} s",
        scenario.mode, result.survived, result.injected, result.leaked_packets, result.total_secs
    );
    result
}

/// After a failed iteration: warp and target running, daemon running.
fn recover(scenario: &mut Scenario) -> anyhow::Result<()> {
    if scenario.warp.is_none() {
        scenario.warp = Some(start_warp_at(
            &scenario.warp_name,
            &scenario.network,
            &scenario.remote,
            scenario.restart_args(),
        )?);
    }
    let _ = output("docker", &["start", &scenario.warp_name]);
    let _ = output(
        "docker",
        &[
            "network",
            "connect",
            scenario.network.name(),
            &scenario.warp_name,
        ],
    );
    let _ = output("docker", &["restart", "-t", "0", scenario.target.name()]);
    scenario.converge(Expect::Steered, CONVERGE)
}

/// Whether docker answers.
pub fn docker_answers() -> bool {
    output("docker", &["version", "--format", "{{.Server.Version}}"])
        .is_ok_and(|o| o.status.success())
}

fn dockerd_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Starts a detached dockerd, as `cargo xtask setup` does, once the old
/// one has exited; returns whether the engine answers.
pub fn start_dockerd() -> bool {
    use std::os::unix::process::CommandExt as _;
    if !eventually(Duration::from_secs(90), || dockerd_pid().is_none()) {
        return false;
    }
    let log_path = std::env::temp_dir().join("netwarp-chaos-dockerd.log");
    let Ok(log) = std::fs::File::create(&log_path) else {
        return false;
    };
    let mut dockerd = std::process::Command::new("dockerd");
    dockerd.stdin(std::process::Stdio::null());
    if let Ok(stdout) = log.try_clone() {
        dockerd.stdout(stdout).stderr(log);
    }
    // SAFETY: setsid is async-signal-safe; it detaches dockerd from the test.
    unsafe {
        dockerd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    dockerd.spawn().is_ok() && eventually(Duration::from_secs(60), docker_answers)
}

/// SIGTERM to dockerd, then a fresh one.
pub fn restart_dockerd() -> anyhow::Result<()> {
    let pid = dockerd_pid().context("no running dockerd with a pid file")?;
    // SAFETY: signalling dockerd by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !start_dockerd() {
        bail!("dockerd did not stop and come back");
    }
    Ok(())
}

/// Leaves an answering engine behind even when a dockerd fault fails.
pub struct EngineGuard;

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if !docker_answers() && !start_dockerd() {
            eprintln!("could not bring dockerd back; later Docker tests will fail");
        }
    }
}

/// Every fault, in both dataplanes' shared form. Returns the report.
pub fn run_all(mode: &str, counts: Counts) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let _engine = (counts.dockerd_restart > 0).then_some(EngineGuard);
    let mut s = Scenario::start(mode, counts.dockerd_restart > 0)?;
    let mut faults = Vec::new();

    faults.push(run_fault(
        &mut s,
        "daemon SIGKILL + restart",
        counts.daemon_kill,
        false,
        |s, _, _| {
            s.daemon.restart(libc::SIGKILL)?;
            // Steering holds while it is down and after it adopts the state.
            s.check(Expect::Steered)?;
            Ok(vec![Expect::Steered])
        },
    ));

    // Warp flapping, alternately: stop and start, and recreation with a
    // new IP while another container takes the old one. The latter opens
    // a window in the routes dataplane: until netwarp reacts, the target's
    // route still names the old IP, now another container's, which
    // forwards (Docker containers inherit the host's ip_forward).
    let flaps = counts.warp_flap;
    faults.push(run_fault(
        &mut s,
        "warp flap: stop/start",
        flaps.div_ceil(2),
        false,
        |s, _, _| {
            run("docker", &["stop", "-t", "0", &s.warp_name])?;
            s.converge(Expect::Blocked, CONVERGE)?;
            run("docker", &["start", &s.warp_name])?;
            Ok(vec![Expect::Steered])
        },
    ));
    faults.push(run_fault(
        &mut s,
        "warp flap: recreated with a new IP, old IP reused",
        flaps / 2,
        mode == "routes",
        |s, _, notes| {
            let (old, new) = s.recreate_warp()?;
            if old == new {
                notes.push(format!("the recreated warp kept its address {old}"));
            }
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "target restart",
        counts.target_restart,
        true,
        |s, _, _| {
            run("docker", &["restart", "-t", "0", s.target.name()])?;
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "warp network disconnect/connect",
        counts.warp_disconnect,
        false,
        |s, _, notes| {
            run(
                "docker",
                &["network", "disconnect", s.network.name(), &s.warp_name],
            )?;
            if s.mode == "routes" {
                s.converge(Expect::Blocked, CONVERGE)?;
            } else {
                // The prohibit routes in the target's namespace block at once;
                // the BPF policy is checked separately and reported.
                s.converge_netns(Expect::Blocked, CONVERGE)?;
                std::thread::sleep(Duration::from_secs(RESYNC_SECS + 1));
                if let Err(e) = s.check(Expect::Blocked) {
                    notes.push(format!(
                        "while the warp was disconnected the netns blocked, but the BPF policy \
                     was not rewritten: {e:#}"
                    ));
                }
            }
            run(
                "docker",
                &["network", "connect", s.network.name(), &s.warp_name],
            )?;
            Ok(vec![Expect::Steered])
        },
    ));

    faults.push(run_fault(
        &mut s,
        "target host veth deleted",
        counts.veth_delete,
        true,
        |s, _, notes| {
            let (ifindex, veth) = s.target.host_veth()?;
            run("ip", &["link", "del", &veth])?;
            // Two resyncs later, nothing may remain for the dead interface.
            std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
            if s.mode != "routes" {
                let stale: Vec<u32> = read_policies(s.daemon.pin_dir())?
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| *k == ifindex)
                    .collect();
                let pins: Vec<String> = std::fs::read_dir(s.daemon.pin_dir().join("links"))?
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .filter(|n| n.starts_with(&format!("{ifindex}-")))
                    .collect();
                if !stale.is_empty() || !pins.is_empty() {
                    notes.push(format!(
                        "after its veth {veth} (ifindex {ifindex}) was deleted the daemon kept \
                     its policy ({stale:?}) and link pins ({pins:?}) until the target got a \
                     new veth"
                    ));
                }
            }
            // Docker still thinks the target is attached; a restart gives it
            // a new veth, which must be programmed.
            run("docker", &["restart", "-t", "0", s.target.name()])?;
            Ok(vec![Expect::Steered])
        },
    ));

    if mode != "routes" {
        faults.push(run_fault(
            &mut s,
            "link pin deleted by hand",
            counts.pin_delete,
            true,
            |s, _, _| {
                let (ifindex, _) = s.target.host_veth()?;
                let pin = s
                    .daemon
                    .pin_dir()
                    .join("links")
                    .join(format!("{ifindex}-ingress"));
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing {}", pin.display()))?;
                // No Docker event: only the periodic resync can repair it.
                std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
                s.check(Expect::Steered)
                    .context("not repaired by the next resyncs")?;
                Ok(vec![Expect::Steered])
            },
        ));
    }

    if counts.dockerd_restart > 0 {
        faults.push(run_fault(
            &mut s,
            "dockerd restart",
            counts.dockerd_restart,
            true,
            |s, _, _| {
                restart_dockerd()?;
                // Restart policies bring warp and target back in new netns.
                s.daemon
                    .wait_for_log("Docker connection lost", Duration::from_secs(10))?;
                Ok(vec![Expect::Steered])
            },
        ));
    }

    if faults.iter().any(|f| f.lost_state > 0) {
        let log = s.daemon.log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("eBPF policy"))
            .collect();
        eprintln!(
            "--- the {mode} daemon's warnings, errors and policy writes (last 80) ---\n{}",
            notable[notable.len().saturating_sub(80)..].join("\n")
        );
        save_text(&format!("daemon-{mode}.log"), &log);
    }
    let (delivered, failed) = s.probes();
    let leaked = s.sink.packets().saturating_sub(s.leak_baseline);
    let bystander_unchanged = s.bystander_unchanged()?;
    let rss = s.daemon_peak_rss();
    Ok(ScenarioReport {
        mode: mode.to_owned(),
        faults,
        leaked_packets: leaked,
        leaked_before_first_reconcile: s.leaked_before_first_reconcile,
        probes_delivered: delivered,
        probes_failed: failed,
        delivered_fraction: delivered as f64 / (delivered + failed).max(1) as f64,
        bystander_unchanged,
        daemon_peak_rss_kib: rss,
        total_secs: started.elapsed().as_secs_f64(),
    })
}

impl Scenario {
    /// The daemon's VmHWM now, in KiB (0 if unknown).
    pub fn daemon_peak_rss(&self) -> u64 {
        self.daemon
            .pid()
            .map_or(0, |pid| crate::scale::rss_kib(pid).1)
    }
}

/// Writes `reports` as JSON to `$NETWARP_CHAOS_REPORT_DIR/<name>.json`, if set.
pub fn save_report<T: Serialize>(name: &str, report: &T) {
    let Some(dir) = std::env::var_os("NETWARP_CHAOS_REPORT_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{name}.json"));
    match serde_json::to_string_pretty(report) {
        Ok(json) => {
            if let Err(e) = std::fs::write(&path, json) {
                eprintln!("could not write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("could not serialise the {name} report: {e}"),
    }
}

/// Writes `text` to `$NETWARP_CHAOS_REPORT_DIR/<name>`, if set.
pub fn save_text(name: &str, text: &str) {
    if let Some(dir) = std::env::var_os("NETWARP_CHAOS_REPORT_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(name), text);
    }
}
