//! The routes dataplane's host guard in a real kernel: policy rules
//! written, diffed and removed through rtnetlink in a throwaway namespace
//! that plays the host, and the traffic they let through or refuse, all
//! between namespaces the test creates.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use netwarp::{
    dataplane::host_guard::{GuardWrite, InstalledGuard, program_host_guards, remove_host_guards},
    model::parse_rules,
    plan::{Action, Entry, GuardPlan},
};
use netwarp_tests::{
    command::{output, run},
    netns::{EnteredNetns, Netns, Veth},
    skip, skip_if, unique_name,
};

/// An rtnetlink connection in the calling thread's namespace, driven by
/// a runtime of its own.
struct HostRules {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    /// What the last write left, trusted by the next one as the daemon
    /// trusts it.
    known: RefCell<Option<InstalledGuard>>,
}

impl HostRules {
    fn open() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // The socket is created here, in the thread's (test) namespace.
        let handle = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
            tokio::spawn(connection);
            handle
        });
        Self {
            runtime,
            handle,
            known: RefCell::new(None),
        }
    }

    /// Whether anything changed.
    fn program(&self, guards: &[(String, &GuardPlan)]) -> bool {
        self.write(guards).changes > 0
    }

    /// Writes as the daemon does between resyncs: against what the last
    /// write left, without dumping the host.
    fn write(&self, guards: &[(String, &GuardPlan)]) -> GuardWrite {
        let known = self.known.borrow_mut().take();
        self.write_against(guards, known)
    }

    /// Writes as a resync does: against a dump of the host.
    fn verify(&self, guards: &[(String, &GuardPlan)]) -> GuardWrite {
        self.write_against(guards, None)
    }

    fn write_against(
        &self,
        guards: &[(String, &GuardPlan)],
        known: Option<InstalledGuard>,
    ) -> GuardWrite {
        let (written, installed) = self
            .runtime
            .block_on(program_host_guards(&self.handle, guards, known))
            .expect("programming the host guards");
        *self.known.borrow_mut() = Some(installed);
        written
    }

    fn remove(&self) -> usize {
        *self.known.borrow_mut() = None;
        self.runtime
            .block_on(remove_host_guards(&self.handle))
            .expect("removing the host guards")
    }
}

fn plan(labels: &[&str], sources: &[&str]) -> GuardPlan {
    let mut entries: Vec<Entry> = labels
        .iter()
        .flat_map(|label| Entry::all(&parse_rules(label).unwrap(), Action::Block))
        .collect();
    entries.sort();
    entries.dedup();
    GuardPlan {
        network: "net".into(),
        entries,
        allowed_sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
        ..GuardPlan::default()
    }
}

/// The rules at the guard's priorities (5000-5002), as `ip rule show`
/// prints them, with one family's rules apart from the other's. A
/// `lookup TABLE` shows what the table holds instead of its id:
/// `lookup [prohibit 203.0.113.0/24, ...]`.
fn guard_rules(netns: &Netns) -> (BTreeSet<String>, BTreeSet<String>) {
    let show = |family: &str| {
        run("ip", &["-n", netns.name(), family, "rule", "show"])
            .expect("ip rule show")
            .lines()
            .filter(|line| {
                ["5000:", "5001:", "5002:"]
                    .iter()
                    .any(|p| line.starts_with(p))
            })
            .map(|line| {
                let line = line.replace('\t', " ");
                match line.split_once(" lookup ") {
                    Some((head, tail)) => {
                        let (table, rest) = tail.split_once(' ').unwrap_or((tail, ""));
                        let held = table_routes(netns, family, table).join(", ");
                        format!("{head} lookup [{held}] {rest}")
                            .trim_end()
                            .to_string()
                    }
                    None => line,
                }
            })
            .collect()
    };
    (show("-4"), show("-6"))
}

/// A table's routes of one family, `TYPE PREFIX` each, sorted.
fn table_routes(netns: &Netns, family: &str, table: &str) -> Vec<String> {
    let mut routes: Vec<String> = run(
        "ip",
        &["-n", netns.name(), family, "route", "show", "table", table],
    )
    .expect("ip route show table")
    .lines()
    .map(|line| {
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    })
    .collect();
    routes.sort();
    routes
}

/// How many routes carry netwarp's protocol tag (87) in any table.
fn netwarp_routes(netns: &Netns) -> usize {
    ["-4", "-6"]
        .iter()
        .map(|family| {
            run(
                "ip",
                &[
                    "-n",
                    netns.name(),
                    family,
                    "route",
                    "show",
                    "table",
                    "all",
                    "proto",
                    "87",
                ],
            )
            .expect("ip route show table all")
            .lines()
            .count()
        })
        .sum()
}

fn lines(lines: &[String]) -> BTreeSet<String> {
    lines.iter().cloned().collect()
}

#[test]
fn host_guard_rules_are_programmed_diffed_and_removed() {
    let test = "host_guard_rules_are_programmed_diffed_and_removed";
    skip_if!(test, skip::missing_root());

    let host = EnteredNetns::enter("nwg").expect("entering a test netns");
    let netns = host.netns();
    let bridge = unique_name("br-");
    run("ip", &["link", "add", &bridge, "type", "bridge"]).expect("creating a bridge");
    // A bridge whose network exists but whose interface does not (yet).
    let missing = unique_name("br-");
    // Someone else's rule, at a guard priority and with a guard's selector:
    // only the protocol tag tells it apart.
    run(
        "ip",
        &[
            "rule",
            "add",
            "pref",
            "5001",
            "iif",
            &bridge,
            "to",
            "203.0.113.0/24",
            "prohibit",
        ],
    )
    .expect("adding a foreign rule");
    let foreign = format!("5001: from all to 203.0.113.0/24 iif {bridge} prohibit");
    // Strays with netwarp's tag: an earlier version's per-prefix rule, and
    // a route in a guard table no rule looks up.
    run(
        "ip",
        &[
            "rule",
            "add",
            "pref",
            "5001",
            "iif",
            &bridge,
            "to",
            "10.200.9.0/24",
            "prohibit",
            "proto",
            "87",
        ],
    )
    .expect("adding a stray rule");
    let stray_table = (0x5838_8000u32 + 7).to_string();
    run(
        "ip",
        &[
            "route",
            "add",
            "prohibit",
            "10.200.8.0/24",
            "table",
            &stray_table,
            "proto",
            "87",
        ],
    )
    .expect("adding a stray route");

    let rules = HostRules::open();
    let first = plan(
        &[
            "203.0.113.0/24,2001:db8::/32",
            "198.51.100.0/24,tcp:443,udp:5000-5100",
            "198.51.100.0/24,icmp",
        ],
        &["172.30.0.2", "172.30.0.3", "fd00:30::2"],
    );
    let elsewhere = plan(&["192.0.2.0/24"], &["172.31.0.2"]);
    assert!(rules.program(&[(bridge.clone(), &first), (missing.clone(), &elsewhere)]));
    let (v4, v6) = guard_rules(netns);
    assert_eq!(
        v4,
        lines(&[
            format!("5000: from 172.30.0.2 iif {bridge} goto 5002 proto 87"),
            format!("5000: from 172.30.0.3 iif {bridge} goto 5002 proto 87"),
            format!("5000: from 172.31.0.2 iif {missing} [detached] goto 5002 proto 87"),
            foreign.clone(),
            format!("5001: from all iif {bridge} lookup [prohibit 203.0.113.0/24] proto 87"),
            format!(
                "5001: from all iif {bridge} ipproto tcp dport 443 lookup [prohibit 198.51.100.0/24] proto 87"
            ),
            format!(
                "5001: from all iif {bridge} ipproto udp dport 5000-5100 lookup [prohibit 198.51.100.0/24] proto 87"
            ),
            format!(
                "5001: from all iif {bridge} ipproto icmp lookup [prohibit 198.51.100.0/24] proto 87"
            ),
            format!(
                "5001: from all iif {missing} [detached] lookup [prohibit 192.0.2.0/24] proto 87"
            ),
            "5002: from all nop proto 87".into(),
        ])
    );
    assert_eq!(
        v6,
        lines(&[
            format!("5000: from fd00:30::2 iif {bridge} goto 5002 proto 87"),
            format!("5001: from all iif {bridge} lookup [prohibit 2001:db8::/32] proto 87"),
            "5002: from all nop proto 87".into(),
        ])
    );
    assert_eq!(
        netwarp_routes(netns),
        6,
        "one route per prefix and group; the stray route is gone"
    );

    // A source leaves and a prefix changes: only the difference moves.
    let second = plan(
        &[
            "203.0.112.0/23,2001:db8::/32",
            "198.51.100.0/24,tcp:443,udp:5000-5100",
            "198.51.100.0/24,icmp",
        ],
        &["172.30.0.2", "fd00:30::2"],
    );
    let second_v4 = lines(&[
        format!("5000: from 172.30.0.2 iif {bridge} goto 5002 proto 87"),
        format!("5000: from 172.31.0.2 iif {missing} [detached] goto 5002 proto 87"),
        foreign.clone(),
        format!("5001: from all iif {bridge} lookup [prohibit 203.0.112.0/23] proto 87"),
        format!(
            "5001: from all iif {bridge} ipproto tcp dport 443 lookup [prohibit 198.51.100.0/24] proto 87"
        ),
        format!(
            "5001: from all iif {bridge} ipproto udp dport 5000-5100 lookup [prohibit 198.51.100.0/24] proto 87"
        ),
        format!(
            "5001: from all iif {bridge} ipproto icmp lookup [prohibit 198.51.100.0/24] proto 87"
        ),
        format!("5001: from all iif {missing} [detached] lookup [prohibit 192.0.2.0/24] proto 87"),
        "5002: from all nop proto 87".into(),
    ]);
    let guards = [(bridge.clone(), &second), (missing.clone(), &elsewhere)];
    let written = rules.write(&guards);
    // delete allow, put route, delete route.
    assert_eq!(written.changes, 3, "{written:?}");
    assert_eq!(guard_rules(netns), (second_v4.clone(), v6.clone()));
    assert!(!rules.program(&guards), "a converged guard changes nothing");

    // One more prefix in a group is one more route, no rule.
    let wider = plan(
        &[
            "203.0.112.0/23,2001:db8::/32,10.200.0.0/24",
            "198.51.100.0/24,tcp:443,udp:5000-5100",
            "198.51.100.0/24,icmp",
        ],
        &["172.30.0.2", "fd00:30::2"],
    );
    let written = rules.write(&[(bridge.clone(), &wider), (missing.clone(), &elsewhere)]);
    assert_eq!(written.changes, 1, "{written:?}");
    let (wider_v4, _) = guard_rules(netns);
    assert!(wider_v4.contains(&format!(
        "5001: from all iif {bridge} lookup [prohibit 10.200.0.0/24, prohibit 203.0.112.0/23] proto 87"
    )));
    assert_eq!(wider_v4.len(), second_v4.len());
    assert!(rules.program(&guards));
    assert_eq!(guard_rules(netns), (second_v4.clone(), v6.clone()));

    // What the writes above trusted is what the host holds.
    let verified = rules.verify(&guards);
    assert_eq!(verified.changes, 0, "{verified:?}");
    let held = rules.write(&guards).held;
    let ours = second_v4.len() - 1 + v6.len();
    assert_eq!((held.rules, held.tables, held.routes), (ours, 6, 6));
    assert_eq!(netwarp_routes(netns), held.routes);
    assert_eq!(
        rules.remove(),
        ours + held.routes,
        "every netwarp rule and route, counted once"
    );
    assert_eq!(guard_rules(netns), (lines(&[foreign]), BTreeSet::new()));
    assert_eq!(netwarp_routes(netns), 0);
    assert_eq!(rules.remove(), 0);
}

/// A label of thousands of prefixes costs the host thousands of routes
/// in the guard's tables and a fixed handful of rules.
#[test]
fn a_large_label_keeps_the_hosts_rule_list_short() {
    let test = "a_large_label_keeps_the_hosts_rule_list_short";
    skip_if!(test, skip::missing_root());
    const PREFIXES: usize = 3000;

    let host = EnteredNetns::enter("nwg").expect("entering a test netns");
    let netns = host.netns();
    let bridge = unique_name("br-");
    // Test-only ranges inside 10.200.0.0/16, a /32 each.
    let label: Vec<String> = (0..PREFIXES)
        .map(|i| format!("10.200.{}.{}/32", i / 256, i % 256))
        .collect();
    let guard = plan(&[&label.join(",")], &["172.30.0.2"]);
    let mut forwarded = guard.clone();
    forwarded.forwarded = guard
        .entries
        .iter()
        .map(|entry| ("172.30.0.9".parse().unwrap(), *entry))
        .collect();
    let rules = HostRules::open();
    let written = rules.write(&[(bridge.clone(), &forwarded)]);
    let (v4, v6) = guard_rules(netns);
    // allow, lookup, lookup from the warp's target, nop.
    assert_eq!(v4.len(), 4, "{v4:?}");
    assert!(v6.is_empty());
    assert_eq!(written.held.rules, 4);
    assert_eq!(written.held.tables, 2);
    assert_eq!(written.held.routes, 2 * PREFIXES);
    assert_eq!(netwarp_routes(netns), 2 * PREFIXES);
    assert!(!rules.program(&[(bridge.clone(), &forwarded)]));
    // A third of the prefixes dropped, written against what the first
    // write left (no dump), and checked against the host by a verify.
    let fewer = plan(&[&label[..2 * PREFIXES / 3].join(",")], &["172.30.0.2"]);
    let written = rules.write(&[(bridge.clone(), &fewer)]);
    assert_eq!(written.held.routes, 2 * PREFIXES / 3);
    assert_eq!(netwarp_routes(netns), 2 * PREFIXES / 3);
    assert_eq!(rules.verify(&[(bridge.clone(), &fewer)]).changes, 0);
    assert_eq!(rules.remove(), 3 + 2 * PREFIXES / 3);
    assert_eq!(netwarp_routes(netns), 0);
}

/// What a TCP connect to a closed port says about the path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The sink answered (a reset): the SYN was routed through.
    Delivered,
    /// EHOSTUNREACH at once: a router's ICMP "administratively prohibited".
    Prohibited,
    Other(String),
}

/// Connects `count` times from `netns` and counts the outcomes.
fn connects(netns: &Netns, to: &str, count: usize) -> Vec<Outcome> {
    let to: SocketAddr = to.parse().unwrap();
    (0..count)
        .map(|_| {
            let result = netns
                .run_inside(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
                .expect("running inside the source netns");
            match result {
                Ok(_) => Outcome::Other("a listener answered on a closed port".into()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Delivered,
                Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Outcome::Prohibited,
                Err(e) => Outcome::Other(e.to_string()),
            }
        })
        .collect()
}

fn all(outcome: Outcome, count: usize) -> Vec<Outcome> {
    vec![outcome; count]
}

/// busybox ping's summary line, whatever its exit status: three echoes,
/// a second for the last reply.
fn ping(netns: &Netns, to: &str) -> String {
    let out = output(
        "ip",
        &[
            "netns",
            "exec",
            netns.name(),
            "busybox",
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            to,
        ],
    )
    .expect("running ping");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string()
}

/// A namespace on the test bridge at `address`, routed through the host.
fn source(bridge: &str, address: &str) -> (Netns, Veth) {
    let netns = Netns::create("nwc").expect("creating a source netns");
    let veth = Veth::create(&netns).expect("creating a veth pair");
    run("ip", &["link", "set", &veth.host, "master", bridge, "up"]).expect("enslaving the veth");
    for command in [
        vec!["ip", "addr", "add", address, "dev", &veth.peer],
        vec!["ip", "link", "set", &veth.peer, "up"],
        vec!["ip", "route", "add", "default", "via", "172.30.0.1"],
    ] {
        netns.exec(&command).expect("configuring a source");
    }
    (netns, veth)
}

#[test]
fn the_host_guard_refuses_unknown_sources_and_passes_known_ones() {
    let test = "the_host_guard_refuses_unknown_sources_and_passes_known_ones";
    skip_if!(test, skip::missing_root());
    const TRIES: usize = 5;

    // The test thread's namespace plays the host: a bridge with two
    // containers on it, and a sink behind a routed veth.
    let host = EnteredNetns::enter("nwg").expect("entering a test netns");
    host.netns()
        .exec(&[
            "sh",
            "-c",
            // Forwarding on; no ICMP rate limit, so every refusal is told.
            "echo 1 > /proc/sys/net/ipv4/ip_forward; \
             echo 0 > /proc/sys/net/ipv4/icmp_ratelimit",
        ])
        .expect("host sysctls");
    let bridge = unique_name("br-");
    run("ip", &["link", "add", &bridge, "type", "bridge"]).expect("creating a bridge");
    run("ip", &["addr", "add", "172.30.0.1/24", "dev", &bridge]).expect("bridge address");
    run("ip", &["link", "set", &bridge, "up"]).expect("bridge up");
    let (known, _known_veth) = source(&bridge, "172.30.0.2/24");
    let (unknown, _unknown_veth) = source(&bridge, "172.30.0.3/24");
    let sink = Netns::create("nws").expect("creating the sink netns");
    let sink_veth = Veth::create(&sink).expect("creating the sink veth");
    run(
        "ip",
        &["addr", "add", "198.51.100.1/24", "dev", &sink_veth.host],
    )
    .expect("sink route");
    run("ip", &["link", "set", &sink_veth.host, "up"]).expect("sink veth up");
    for command in [
        vec![
            "ip",
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            &sink_veth.peer,
        ],
        vec!["ip", "link", "set", &sink_veth.peer, "up"],
        vec!["ip", "route", "add", "default", "via", "198.51.100.1"],
    ] {
        sink.exec(&command).expect("configuring the sink");
    }

    let guarded = "198.51.100.2:443";
    let unguarded = "198.51.100.2:80";
    // Without a guard both sources reach the sink.
    assert_eq!(
        connects(&unknown, guarded, TRIES),
        all(Outcome::Delivered, TRIES)
    );

    let rules = HostRules::open();
    let guard = plan(&["198.51.100.0/24,tcp:443,icmp"], &["172.30.0.2"]);
    assert!(rules.program(&[(bridge.clone(), &guard)]));

    assert_eq!(
        connects(&known, guarded, TRIES),
        all(Outcome::Delivered, TRIES)
    );
    assert_eq!(
        connects(&unknown, guarded, TRIES),
        all(Outcome::Prohibited, TRIES)
    );
    assert_eq!(
        connects(&unknown, unguarded, TRIES),
        all(Outcome::Delivered, TRIES),
        "another port is not guarded"
    );
    let summary = ping(&known, "198.51.100.2");
    assert!(
        summary.contains("3 packets received"),
        "known source: {summary}"
    );
    let summary = ping(&unknown, "198.51.100.2");
    assert!(
        summary.contains("0 packets received"),
        "unknown source: {summary}"
    );

    assert!(rules.remove() > 0);
    assert_eq!(
        connects(&unknown, guarded, TRIES),
        all(Outcome::Delivered, TRIES)
    );
}
