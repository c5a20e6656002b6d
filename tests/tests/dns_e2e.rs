//! Where a target's DNS goes: Docker's embedded resolver (127.0.0.11 in
//! the target's namespace) makes its upstream queries from the target's
//! own namespace and address, so a target's rules decide whether they go
//! through the warp, like the rest of its traffic (README, "DNS: where a
//! target's queries leave").
//!
//! A target names the warp's address as its upstream (`--dns`): with
//! rules that take every protocol to the steered prefix, then (a network,
//! warp and daemon of its own) with rules that take only tcp:8080. The warp counts UDP queries to port 53 reaching it
//! (an iptables counter in its namespace); the leak sink counts what
//! leaves by any other path: nothing of the first target's, and the
//! second one's queries, which no rule selects.
//!
//! Network safety: the network is `--internal`; the upstream is the
//! warp's loopback address in a unique 198.18.N.0/24, whose host route
//! ends in the counting sink; each lookup is bounded by `timeout`; every
//! fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix, start_warp_at},
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    skip, skip_if,
    steering::NamespaceRule,
};

const CONVERGE: Duration = Duration::from_secs(30);

/// Counts UDP queries to `upstream`:53 reaching `warp` (an accepting
/// iptables rule in its namespace).
fn query_counter(warp: &Container, upstream: &str) -> NamespaceRule {
    let rule = ["-d", upstream, "-p", "udp", "--dport", "53", "-j", "ACCEPT"];
    NamespaceRule::insert(warp, "INPUT", &rule).expect("a query counter in the warp")
}

fn counted(counter: &NamespaceRule) -> u64 {
    counter.packets().expect("the query counter")
}

/// One lookup through the embedded resolver; its answer does not matter
/// (the warp serves no DNS), only where the upstream query went.
fn look_up(target: &Container) {
    let _ = target.exec(&["timeout", "3", "nslookup", "netwarp-dns-probe.test"]);
}

/// Why this engine cannot run the test, if it cannot: Docker 26.0, 25.0.4
/// and 23.0.11 and later do not forward DNS upstream for a container only
/// on `--internal` networks (CVE-2024-29018), and the test keeps to
/// internal networks.
fn forwards_for_internal_only() -> Option<String> {
    let version = run("docker", &["version", "--format", "{{.Server.Version}}"]).ok()?;
    let numbers: Vec<u32> = (version.trim().split(['.', '-', '+']))
        .take(3)
        .map_while(|n| n.parse().ok())
        .collect();
    let refuses = match numbers[..] {
        [major, ..] if major >= 26 => true,
        [25, 0, patch] => patch >= 4,
        [major, ..] if major > 23 && major < 25 => false,
        [23, 0, patch] => patch >= 11,
        _ => false,
    };
    refuses.then(|| {
        format!(
            "needs an engine that forwards DNS for internal-only containers (Docker {} does not: \
             CVE-2024-29018); the test keeps to --internal networks",
            version.trim()
        )
    })
}

/// A target whose upstream DNS server is the warp's address, on a network
/// of its own (a neighbour steering DNS would put it under the bridge
/// guard), with `rules` built from the steered prefix; returns the queries
/// the warp counted and the packets the sink counted during three lookups
/// once the target is programmed (known by `programmed`).
fn lookups(
    mode: &str,
    rules: impl Fn(&str) -> String,
    programmed: impl Fn(&Container, &Daemon, &str) -> bool,
) -> (u64, u64) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwd").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { prefix, remote }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp_at(&warp_name, &network, &remote, &[]).expect("warp");
    let counter = query_counter(&warp, &remote);
    let target = Container::run(
        "nwdt",
        &network,
        &[
            "--label",
            &labels.target_label(&warp_name),
            "--label",
            &labels.rules_label(&rules(&prefix)),
            "--dns",
            &remote,
        ],
        &["sleep", "600"],
    )
    .expect("target");
    let resolv = target
        .exec(&["cat", "/etc/resolv.conf"])
        .expect("resolv.conf");
    assert!(
        resolv.contains("127.0.0.11"),
        "the target does not use Docker's embedded resolver:\n{resolv}"
    );
    let daemon = Daemon::start(&labels, mode, "").expect("daemon");
    assert!(
        eventually(CONVERGE, || programmed(&target, &daemon, &remote)),
        "{mode}: the target was never programmed"
    );
    let (queries, leaked) = (counted(&counter), sink.packets());
    for _ in 0..3 {
        look_up(&target);
    }
    (counted(&counter) - queries, sink.packets() - leaked)
}

/// One ping to the warp's address answered: the target is steered.
fn answered(target: &Container, _: &Daemon, remote: &str) -> bool {
    target.exec(&["ping", "-c", "1", "-W", "1", remote]).is_ok()
}

/// tcp:8080 only is steered: the warp's address answers no ping, so wait
/// for the daemon to report the target steered.
fn reported_steered(target: &Container, daemon: &Daemon, _: &str) -> bool {
    status_json(daemon).is_ok_and(|status| {
        status_target(&status, target.name()).is_some_and(|t| t["state"] == "steered")
    })
}

fn dns_follows_the_rules(mode: &str) {
    // Every protocol to the prefix: the resolver's upstream query is the
    // target's own traffic, and goes through the warp, none around it.
    let (queries, leaked) = lookups(mode, |prefix| prefix.to_owned(), answered);
    assert!(
        queries >= 3,
        "{mode}: {queries} of 3 DNS queries of a steered target reached the warp"
    );
    assert_eq!(
        leaked, 0,
        "{mode}: a steered target's DNS query left around the warp"
    );

    // tcp:8080 only: DNS is not selected, so it takes the target's default
    // path (Docker 20.10 gives internal networks one; the host routes the
    // prefix to the sink) and never the warp: a split tunnel's DNS leaves
    // around the warp unless a rule selects it.
    let (queries, leaked) = lookups(
        mode,
        |prefix| format!("{prefix},tcp:8080"),
        reported_steered,
    );
    assert_eq!(
        queries, 0,
        "{mode}: a DNS query no rule selects went through the warp"
    );
    assert!(
        leaked > 0,
        "{mode}: an unselected DNS query took neither the warp nor the default path"
    );
}

#[test]
fn dns_upstream_queries_follow_the_rules_routes() {
    let test = "dns_upstream_queries_follow_the_rules_routes";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, forwards_for_internal_only());
    dns_follows_the_rules("routes");
}

#[test]
fn dns_upstream_queries_follow_the_rules_ebpf() {
    let test = "dns_upstream_queries_follow_the_rules_ebpf";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, forwards_for_internal_only());
    dns_follows_the_rules("ebpf");
}

/// One target with DNS policy `policy` on a full tunnel whose DNS server
/// X is excluded (`0.0.0.0/0; direct X/32`, `--dns X`), on a network, warp
/// and sink of its own: the bridge guard cannot tell targets apart, so
/// another target steering X beside it would refuse its direct path.
struct PolicyWorld {
    // Field order is drop order: containers before their network.
    target: Container,
    warp: Container,
    sink: LeakSink,
    _network: DockerNetwork,
    server: String,
    remote: String,
    address: String,
}

impl PolicyWorld {
    fn start(labels: &TestLabels, policy: &str) -> Self {
        let network = DockerNetwork::create_internal_steerable("nwq").expect("network");
        let bridge = network.bridge().expect("bridge");
        let (sink, SteeredPrefix { prefix, remote }) =
            LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
        let server = prefix.replace(".0/24", ".53");
        let warp_name = labels.warp_name(policy);
        let warp = start_warp_at(&warp_name, &network, &remote, &[]).expect("warp");
        warp.ip(&["addr", "add", &format!("{server}/32"), "dev", "lo"])
            .expect("the server's address on the warp");
        let dns_label = format!("{}={policy}", labels.dns_label());
        let target = Container::run(
            "nwqt",
            &network,
            &[
                "--label",
                &labels.target_label(&warp_name),
                "--label",
                &labels.rules_label(&format!("0.0.0.0/0; direct {server}/32")),
                "--label",
                &dns_label,
                "--dns",
                &server,
            ],
            &["sleep", "600"],
        )
        .expect("target");
        let address = target.ipv4(&network).expect("the target's address");
        Self {
            target,
            warp,
            sink,
            _network: network,
            server,
            remote,
            address,
        }
    }

    /// Queries through the warp (counted there, by source) and around it
    /// (counted by the sink) during two lookups of each kind: through the
    /// embedded resolver, and to X directly.
    fn lookups(&self) -> (u64, u64) {
        let rule = [
            "-s",
            &self.address,
            "-d",
            &self.server,
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "ACCEPT",
        ];
        let counter = NamespaceRule::insert(&self.warp, "INPUT", &rule).expect("a counter");
        let leaked = self.sink.packets();
        for _ in 0..2 {
            look_up(&self.target);
            let direct = [
                "timeout",
                "3",
                "nslookup",
                "netwarp-dns-probe.test",
                &self.server,
            ];
            let _ = self.target.exec(&direct);
        }
        (counted(&counter), self.sink.packets() - leaked)
    }
}

fn dns_policies(mode: &str) {
    let labels = TestLabels::unique();
    let worlds: Vec<(&str, PolicyWorld)> = ["follow", "warp", "block"]
        .into_iter()
        .map(|policy| (policy, PolicyWorld::start(&labels, policy)))
        .collect();
    let daemon = Daemon::start(&labels, mode, "").expect("daemon");
    for (policy, world) in &worlds {
        assert!(
            eventually(CONVERGE, || answered(&world.target, &daemon, &world.remote)),
            "{mode}: the dns={policy} target was never steered"
        );
    }
    for (policy, world) in &worlds {
        let (through_warp, around) = world.lookups();
        match *policy {
            "follow" => {
                assert_eq!(
                    through_warp, 0,
                    "{mode}: dns=follow sent excluded DNS into the warp"
                );
                assert!(
                    around > 0,
                    "{mode}: dns=follow: the excluded server got no query"
                );
            }
            "warp" => {
                assert!(
                    through_warp >= 4,
                    "{mode}: dns=warp: {through_warp} queries reached the warp"
                );
                assert_eq!(
                    around, 0,
                    "{mode}: dns=warp: {around} DNS packets left around the warp"
                );
            }
            _ => {
                assert_eq!(
                    through_warp, 0,
                    "{mode}: dns=block: a query reached the warp"
                );
                assert_eq!(
                    around, 0,
                    "{mode}: dns=block: {around} DNS packets left around the warp"
                );
            }
        }
    }
}

#[test]
fn dns_policies_on_a_full_tunnel_routes() {
    let test = "dns_policies_on_a_full_tunnel_routes";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, forwards_for_internal_only());
    dns_policies("routes");
}

#[test]
fn dns_policies_on_a_full_tunnel_ebpf() {
    let test = "dns_policies_on_a_full_tunnel_ebpf";
    skip_if!(test, skip::missing_docker());
    skip_if!(test, forwards_for_internal_only());
    dns_policies("ebpf");
}
