//! The chaos scenario: a warp that owns the destination, a target sending
//! continuous bounded probes to it, an unlabelled bystander and a real
//! daemon; and the checks that compare what is programmed with the plan.

use std::{collections::BTreeSet, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use netwarp::dataplane::mac::MacAddr;
use netwarp_common::{
    ACTION_BLOCK, ACTION_STEER, GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, GUARD_ALLOW_MAP, GUARDS_MAP,
    GuardAllowKey, RATE_BUCKETS_MAP, RateBuckets, WARP_PEERS_MAP, WarpPeerKey,
};

use super::{
    CONVERGE, LeakSink, SteeredPrefix,
    pins::{
        expect_no_netwarp_program, expect_one_netwarp_program, hash_rows, interface_ifindex,
        map_keys_u32, read_capped, read_policies, read_rule_sets,
    },
};
use crate::{
    command::{output, run},
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    isolation::unlabelled_state,
};

/// The probe loop a target runs as its main process: one ping every
/// 50 ms, `D` (delivered) or `F` (failed) on stdout, bounded in count.
/// It restarts with the container.
pub(super) fn probe_script(remote: &str, count: u32) -> String {
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
        let network = DockerNetwork::create_internal_steerable("nwc")?;
        let (sink, SteeredPrefix { prefix, remote }) =
            LeakSink::for_unique_prefix(&network.bridge()?)?;
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
        until_ok(timeout, || self.check(expect))
            .with_context(|| format!("{} did not converge to {expect:?}", self.mode))
    }

    /// Like [`Self::converge`], for the target's namespace only.
    pub fn converge_netns(&self, expect: Expect, timeout: Duration) -> anyhow::Result<()> {
        until_ok(timeout, || self.check_netns(expect))
            .with_context(|| format!("{}: the netns did not converge to {expect:?}", self.mode))
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
                // One rule for the prefix's selector group, none per prefix.
                expect_lines(&rules, &["lookup"], "rules")?;
                if rules.iter().any(|r| r.contains(" to ")) {
                    bail!("a rule names a destination: {rules:?}");
                }
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
                        // One rule for the prefix's selector group, none per prefix.
                        expect_lines(&rules, &["lookup"], "rules")?;
                        if rules.iter().any(|r| r.contains(" to ")) {
                            bail!("a rule names a destination: {rules:?}");
                        }
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
            .flat_map(|(_, v)| crate::steering::row_actions(v))
            .collect();
        if guard_actions != [ACTION_BLOCK] {
            bail!("bridge guard rule actions {guard_actions:?}, expected [{ACTION_BLOCK}]");
        }
        let actions: Vec<u8> = rows
            .iter()
            .filter(|(set, _)| *set == policy.rule_set)
            .flat_map(|(_, v)| crate::steering::row_actions(v))
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
        let peers: Vec<(WarpPeerKey, u32)> = hash_rows(pins, WARP_PEERS_MAP)?;
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
            let mac: MacAddr = self.warp_mac()?.parse()?;
            if policy.warp_mac != mac.0 {
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
        // No caps: no to-container (egress) program.
        want_links.extend([
            format!("{target_ifindex}-ingress"),
            format!("{bridge_ifindex}-guard"),
        ]);
        want_links.sort();
        if links != want_links {
            bail!("link pins {links:?}, expected {want_links:?}");
        }
        expect_one_netwarp_program(&veth, "Ingress")?;
        expect_no_netwarp_program(&veth, "Egress")?;
        // No caps in this scenario: the rate maps stay empty.
        for (name, entries) in [
            ("capped state rows", read_capped(pins)?),
            (
                RATE_BUCKETS_MAP,
                map_keys_u32::<RateBuckets>(pins, RATE_BUCKETS_MAP)?,
            ),
        ] {
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
        // One lookup rule, whose table refuses the prefix.
        let blocks: Vec<&&str> = ours.iter().filter(|l| l.contains("lookup")).collect();
        let refused = match blocks.as_slice() {
            [block] => match crate::steering::looked_up(block) {
                Some(table) => run("ip", &["-4", "route", "show", "table", table])?,
                None => String::new(),
            },
            _ => String::new(),
        };
        if !refused
            .lines()
            .any(|l| l.trim() == format!("prohibit {} proto 87", self.prefix))
        {
            bail!(
                "host guard blocks {blocks:?} (table: {refused:?}), expected one for {}",
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
        let guards: Vec<(u32, u32)> = hash_rows(pins, GUARDS_MAP)?;
        let [(guarded, rule_set)] = guards[..] else {
            bail!("bridge guards {guards:?}, expected one for {bridge} ({bridge_ifindex})");
        };
        if guarded != bridge_ifindex {
            bail!("the guard is on ifindex {guarded}, the network's bridge is {bridge_ifindex}");
        }
        let allow: Vec<(GuardAllowKey, u8)> = hash_rows(pins, GUARD_ALLOW_MAP)?;
        let mut allowed: Vec<String> = allow
            .into_iter()
            .map(|(k, _)| match k.kind {
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
        probe_counts(&self.target)
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

    pub(super) fn restart_args(&self) -> &'static [&'static str] {
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

/// Polls `check` (every 100 ms, for at most `timeout`) until it passes;
/// its last error otherwise.
pub fn until_ok(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last = None;
    if eventually(timeout, || match check() {
        Ok(()) => true,
        Err(e) => {
            last = Some(e);
            false
        }
    }) {
        return Ok(());
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("never checked")))
}

/// (delivered, failed) probes of a container running [`probe_script`],
/// over its restarts.
pub(super) fn probe_counts(container: &Container) -> (u64, u64) {
    let out = output("docker", &["logs", container.name()])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let delivered = out.lines().filter(|l| *l == "D").count() as u64;
    let failed = out.lines().filter(|l| *l == "F").count() as u64;
    (delivered, failed)
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
    crate::steering::run_warp(name, network, &script, extra)
}

/// netwarp's IPv4 rules and the routes of the tables they look up in a
/// container's namespace, one per line.
pub fn netwarp_entries(container: &Container) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    crate::steering::netwarp_entries(container, "-4")
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

impl Scenario {
    /// The daemon's VmHWM now, in KiB (0 if unknown).
    pub fn daemon_peak_rss(&self) -> u64 {
        self.daemon
            .pid()
            .map_or(0, |pid| crate::scale::rss_kib(pid).1)
    }
}
