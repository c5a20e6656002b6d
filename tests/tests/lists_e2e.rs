//! Egress allow and deny lists on containers without a warp, in both
//! dataplanes: an isolated container (allow list) reaches its list and
//! nothing else, IPv4 or IPv6; a container with a deny list reaches
//! everything but it.
//!
//! Three peers on an internal dual-stack network count, with iptables and
//! ip6tables rules in their namespaces, the packets each source sends
//! them. The isolated container may reach only `allowed`; the deny-listed
//! one may not reach `denied`. A control pings `denied` too, so the
//! counter that must stay at 0 is shown to count. Off the network, the
//! leak sink's prefix stands for "anywhere else".
//!
//! Network safety: the network is `--internal` with a unique ULA /64; the
//! sink's prefix is a unique 198.18.N.0/24 routed to the counting sink;
//! every ping is bounded; every fixture is a drop guard.

use std::time::Duration;

use netwarp_tests::{
    chaos::{LeakSink, SteeredPrefix},
    command::run,
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork},
    observe::{status_json, status_target},
    skip, skip_if,
    steering::NamespaceRule,
};

const CONVERGE: Duration = Duration::from_secs(30);

fn ipv6_of(container: &Container) -> String {
    let template = "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}";
    let ip = run(
        "docker",
        &["inspect", "--format", template, container.name()],
    )
    .expect("docker inspect");
    let ip = ip.trim().to_owned();
    assert!(!ip.is_empty(), "{} has no IPv6 address", container.name());
    ip
}

/// Counts what `source` sends to `peer` (IPv4, or IPv6 with `ip6tables`).
fn counter(peer: &Container, source: &str) -> NamespaceRule {
    let rule = ["-s", source, "-j", "ACCEPT"];
    let chain = "INPUT";
    if source.contains(':') {
        NamespaceRule::insert_v6(peer, chain, &rule).expect("an ip6tables counter")
    } else {
        NamespaceRule::insert(peer, chain, &rule).expect("an iptables counter")
    }
}

fn count(counter: &NamespaceRule) -> u64 {
    counter.packets().expect("a counter")
}

fn ping(from: &Container, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-W", "1", to]).is_ok()
}

struct Peer {
    container: Container,
    v4: String,
    v6: String,
}

impl Peer {
    fn start(network: &DockerNetwork) -> Self {
        let container = Container::run("nwlp", network, &[], &["sleep", "600"]).expect("peer");
        let v4 = container.ipv4(network).expect("peer address");
        let v6 = ipv6_of(&container);
        Self { container, v4, v6 }
    }
}

fn lists(mode: &str) {
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_ipv6("nwl").expect("network");
    let bridge = network.bridge().expect("bridge");
    let (sink, SteeredPrefix { remote, .. }) =
        LeakSink::for_unique_prefix(&bridge).expect("a leak sink that counts");
    let (allowed, denied) = (Peer::start(&network), Peer::start(&network));
    let isolated = Container::run(
        "nwli",
        &network,
        &[
            "--label",
            &labels.allow_label(&format!("{}/32", allowed.v4)),
        ],
        &["sleep", "600"],
    )
    .expect("isolated container");
    let deny_listed = Container::run(
        "nwld",
        &network,
        &[
            "--label",
            &labels.deny_label(&format!("{}/32,{}/128", denied.v4, denied.v6)),
        ],
        &["sleep", "600"],
    )
    .expect("deny-listed container");
    let control = Container::run("nwlc", &network, &[], &["sleep", "600"]).expect("control");
    let (i4, i6) = (isolated.ipv4(&network).expect("v4"), ipv6_of(&isolated));
    let (d4, d6) = (
        deny_listed.ipv4(&network).expect("v4"),
        ipv6_of(&deny_listed),
    );
    let c4 = control.ipv4(&network).expect("v4");

    let daemon = Daemon::start(&labels, mode, "").expect("daemon");
    let filtered = |c: &Container| {
        status_json(&daemon)
            .is_ok_and(|s| status_target(&s, c.name()).is_some_and(|t| t["state"] == "filtered"))
    };
    for container in [&isolated, &deny_listed] {
        assert!(
            eventually(CONVERGE, || filtered(container)),
            "{mode}: {} was never shown filtered",
            container.name()
        );
    }
    // Programmed once the deny list holds (the status is the plan).
    assert!(
        eventually(CONVERGE, || !ping(&deny_listed, &denied.v4)),
        "{mode}: the deny list never took effect"
    );

    // Isolated: its one allowed address answers; nothing else is reached.
    let counters = [
        counter(&denied.container, &i4),
        counter(&denied.container, &i6),
        counter(&allowed.container, &i6),
    ];
    let leaked = sink.packets();
    assert!(
        ping(&isolated, &allowed.v4),
        "{mode}: the allowed address did not answer"
    );
    for to in [&denied.v4, &denied.v6, &allowed.v6, &remote] {
        assert!(
            !ping(&isolated, to),
            "{mode}: the isolated container reached {to}"
        );
    }
    for counter in &counters {
        assert_eq!(
            count(counter),
            0,
            "{mode}: a packet of the isolated container got out"
        );
    }
    assert_eq!(
        sink.packets() - leaked,
        0,
        "{mode}: the isolated container leaked off the host"
    );

    // Deny-listed: everything but the denied peer, IPv4 and IPv6.
    let (from_d4, from_d6) = (
        counter(&denied.container, &d4),
        counter(&denied.container, &d6),
    );
    assert!(
        ping(&deny_listed, &allowed.v4),
        "{mode}: the deny list refused too much"
    );
    assert!(
        ping(&deny_listed, &allowed.v6),
        "{mode}: the deny list refused too much (IPv6)"
    );
    assert!(!ping(&deny_listed, &denied.v4) && !ping(&deny_listed, &denied.v6));
    assert_eq!(
        count(&from_d4) + count(&from_d6),
        0,
        "{mode}: a denied peer was reached"
    );

    // The control reaches the denied peer: the counters count.
    let from_control = counter(&denied.container, &c4);
    assert!(
        ping(&control, &denied.v4),
        "{mode}: the control did not reach the peer"
    );
    assert!(
        count(&from_control) > 0,
        "{mode}: the peer's counter saw nothing"
    );
}

#[test]
fn allow_and_deny_lists_without_a_warp_routes() {
    let test = "allow_and_deny_lists_without_a_warp_routes";
    skip_if!(test, skip::missing_docker());
    lists("routes");
}

#[test]
fn allow_and_deny_lists_without_a_warp_ebpf() {
    let test = "allow_and_deny_lists_without_a_warp_ebpf";
    skip_if!(test, skip::missing_docker());
    lists("ebpf");
}
