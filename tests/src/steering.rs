//! Shared pieces of the end-to-end steering tests: a warp container that
//! owns the "remote" address, targets, and probes of what a container can
//! reach and what is programmed in it.

use crate::{
    command::{output, run},
    docker::{Container, DockerNetwork, TEST_IMAGE},
};

/// The "remote" destination (TEST-NET-3), owned by the warp's loopback so
/// that steered traffic ends inside the test.
pub const REMOTE: &str = "203.0.113.1";
/// Global rules that steer REMOTE's prefix.
pub const GLOBAL_RULES: &str = "[[routing_rules]]\ndestination = \"203.0.113.0/24\"\n";
/// The first of netwarp's routing tables in a target namespace, as `ip`
/// prints it: the table of a target with one selector group.
pub const TABLE: &str = "1314324480";
/// The priorities of netwarp's rules in a target namespace, as `ip rule`
/// prints them: port classes, protocols, every protocol.
pub const RULE_PRIORITIES: [&str; 3] = ["10000:", "10001:", "10002:"];

/// Whether an `ip rule` line is one of netwarp's in a target namespace.
pub fn is_netwarp_rule(line: &str) -> bool {
    RULE_PRIORITIES.iter().any(|p| line.starts_with(p)) && line.contains("proto 87")
}

/// The warp's command (`sh -c`): own REMOTE and serve "hello" on tcp 8080
/// and 9090 of it.
pub fn warp_script() -> String {
    format!(
        "ip addr add {REMOTE}/32 dev lo; \
         (while true; do echo hello | nc -l -p 9090; done) & \
         while true; do echo hello | nc -l -p 8080; done"
    )
}

/// Starts a warp container `name` that serves "hello" on tcp 8080 and 9090
/// of REMOTE. `extra` goes to `docker run` (labels, restart policy).
pub fn start_warp(name: &str, network: &DockerNetwork, extra: &[&str]) -> Container {
    run_warp(name, network, &warp_script(), extra).expect("starting the warp container")
}

/// Starts a warp container `name` on `network` (with NET_ADMIN, for its
/// own addresses) whose main process is `script`; `extra` goes to
/// `docker run`.
pub fn run_warp(
    name: &str,
    network: &DockerNetwork,
    script: &str,
    extra: &[&str],
) -> anyhow::Result<Container> {
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
    args.extend([TEST_IMAGE, "sh", "-c", script]);
    // Guard first, so a half-failed start is still removed.
    let container = Container::adopt(name);
    run("docker", &args)?;
    Ok(container)
}

/// Which warp answered a one-off connection from `target` to `remote`:8080
/// (a warp serving `carried-by-NAME` there), if any; bounded by nc's timeout.
pub fn carried_by(target: &Container, remote: &str) -> Option<String> {
    let out = target
        .exec(&["sh", "-c", &format!("sleep 1 | nc -w 2 {remote} 8080")])
        .ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("carried-by-"))
        .map(str::to_owned)
}

/// Starts an idle container with `labels` (each `key=value`).
pub fn start_target(prefix: &str, network: &DockerNetwork, labels: &[String]) -> Container {
    let mut extra = Vec::new();
    for label in labels {
        extra.push("--label");
        extra.push(label.as_str());
    }
    Container::run(prefix, network, &extra, &["sleep", "600"]).expect("starting a target")
}

fn connect_command(port: u16) -> String {
    // stdin stays open for 1 s so busybox nc waits for the reply.
    format!("sleep 1 | nc -w 2 {REMOTE} {port}")
}

/// Connects to REMOTE:port from `container`; true when the warp answered.
pub fn reaches(container: &Container, port: u16) -> bool {
    container
        .exec(&["sh", "-c", &connect_command(port)])
        .is_ok_and(|out| out.contains("hello"))
}

/// The error a connection to REMOTE:port gives, if any.
pub fn connect_error(container: &Container, port: u16) -> String {
    match output(
        "docker",
        &["exec", container.name(), "sh", "-c", &connect_command(port)],
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => e.to_string(),
    }
}

/// netwarp's entries in a container: its IPv4 rules and the routes of
/// the tables they look up.
pub fn owned_state(container: &Container) -> String {
    let (rules, routes) = netwarp_entries(container, "-4").unwrap_or_default();
    format!("{}\n--\n{}", rules.join("\n"), routes.join("\n"))
}

/// netwarp's rules of one family (`-4` or `-6`) in a container
/// ([`RULE_PRIORITIES`], protocol 87), one per line, and the routes of the tables they
/// look up, each `ROUTE` with its table's rules in order.
pub fn netwarp_entries(
    container: &Container,
    family: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let rules: Vec<String> = container
        .ip(&[family, "rule", "show"])?
        .lines()
        .filter(|l| is_netwarp_rule(l))
        .map(|l| l.replace('\t', " "))
        .collect();
    let mut routes = Vec::new();
    for table in rules.iter().filter_map(|l| looked_up(l)) {
        let shown = match container.ip(&[family, "route", "show", "table", table]) {
            Ok(shown) => shown,
            // The table exists only while it holds a route.
            Err(e) if e.to_string().contains("does not exist") => String::new(),
            Err(e) => return Err(e),
        };
        routes.extend(
            shown
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{} ", l.trim())),
        );
    }
    Ok((rules, routes))
}

/// The table a rule line looks up.
pub fn looked_up(rule: &str) -> Option<&str> {
    rule.split_whitespace()
        .skip_while(|w| *w != "lookup")
        .nth(1)
}

/// What `full_routing` reads: the rules, the routes of every table, and the
/// IPv6 rules.
const ROUTING_VIEWS: [&[&str]; 4] = [
    &["rule", "show"],
    &["route", "show", "table", "all"],
    &["-6", "rule", "show"],
    &["nexthop", "show"],
];

/// Every rule, route and nexthop of a container, for "untouched" checks. A view
/// that cannot be read counts as empty; see `try_full_routing`.
pub fn full_routing(container: &Container) -> String {
    ROUTING_VIEWS
        .map(|args| container.ip(args).unwrap_or_default())
        .join("\n")
}

/// `full_routing`, failing when any view cannot be read (so that an
/// unreadable namespace never passes for an unchanged one).
pub fn try_full_routing(container: &Container) -> anyhow::Result<String> {
    let views = ROUTING_VIEWS
        .iter()
        .map(|args| container.ip(args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(views.join("\n"))
}

/// The test-only range heavy rules labels are drawn from: no host, no
/// Docker network and no other fixture uses 10.202.0.0/15.
pub const HEAVY_RANGE: &str = "10.202.0.0/15";

/// A rules label value of `count` distinct /32s for heavy target `index`:
/// the `count` addresses of [`HEAVY_RANGE`] from `10.202.0.0 + index *
/// count`, so that no two heavy targets share a prefix (the worst case
/// for the guard, which merges shared prefixes).
pub fn heavy_rules(index: u32, count: u32) -> String {
    const FIRST: u32 = u32::from_be_bytes([10, 202, 0, 0]);
    assert!(
        (index + 1) * count <= 1 << 17,
        "heavy rules beyond {HEAVY_RANGE}: target {index} with {count} prefixes"
    );
    (0..count)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(FIRST + index * count + i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts an idle target of `target_label` whose rules label holds
/// [`heavy_rules`]`(index, count)`. The label is one `docker run`
/// argument, which Linux caps at 128 KiB (`--label-file` lines are capped
/// at 64 KiB by the CLI), so about 7,500 /32s at most.
pub fn start_heavy_target(
    prefix: &str,
    network: &DockerNetwork,
    labels: &crate::daemon::TestLabels,
    target_label: &str,
    index: u32,
    count: u32,
) -> anyhow::Result<Container> {
    let rules = labels.rules_label(&heavy_rules(index, count));
    if rules.len() >= 128 * 1024 {
        anyhow::bail!(
            "a rules label of {count} prefixes is {} bytes, over the 128 KiB one argument may hold",
            rules.len()
        );
    }
    Container::run(
        prefix,
        network,
        &["--label", target_label, "--label", &rules],
        &["sleep", "3600"],
    )
}

/// An iptables rule of the test's inside a container's namespace,
/// inserted first in its chain, tagged with a unique comment so that its
/// counter can be read; deleted on drop (and with the namespace).
pub struct NamespaceRule {
    pid: String,
    /// `iptables` or `ip6tables`.
    tool: &'static str,
    /// Chain first, then the match and target, the comment last.
    rule: Vec<String>,
}

impl NamespaceRule {
    /// Inserts `chain` + `rule` (e.g. `["-p", "tcp", "-j", "DROP"]`) in
    /// the namespace of `container`.
    pub fn insert(container: &Container, chain: &str, rule: &[&str]) -> anyhow::Result<Self> {
        Self::insert_with("iptables", container, chain, rule)
    }

    /// [`Self::insert`] for IPv6, with ip6tables.
    pub fn insert_v6(container: &Container, chain: &str, rule: &[&str]) -> anyhow::Result<Self> {
        Self::insert_with("ip6tables", container, chain, rule)
    }

    fn insert_with(
        tool: &'static str,
        container: &Container,
        chain: &str,
        rule: &[&str],
    ) -> anyhow::Result<Self> {
        let mut full = vec![chain.to_owned()];
        full.extend(rule.iter().map(|s| (*s).to_owned()));
        let comment = crate::unique_name("nwrule");
        full.extend(["-m", "comment", "--comment", &comment].map(str::to_owned));
        let inserted = Self {
            pid: container.pid()?.to_string(),
            tool,
            rule: full,
        };
        inserted.iptables("-I")?;
        Ok(inserted)
    }

    fn iptables(&self, action: &str) -> anyhow::Result<String> {
        let mut args = vec!["-t", self.pid.as_str(), "-n", self.tool, "-w", action];
        args.extend(self.rule.iter().map(String::as_str));
        run("nsenter", &args)
    }

    /// The packets the rule matched so far.
    pub fn packets(&self) -> anyhow::Result<u64> {
        let chain = self.rule[0].as_str();
        let listing = run(
            "nsenter",
            &[
                "-t", &self.pid, "-n", self.tool, "-w", "-L", chain, "-v", "-x", "-n",
            ],
        )?;
        let comment = self.rule.last().expect("the comment");
        listing
            .lines()
            .find(|l| l.contains(comment.as_str()))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("rule {comment} is not listed:\n{listing}"))
    }
}

impl Drop for NamespaceRule {
    fn drop(&mut self) {
        let mut args = vec!["-t", self.pid.as_str(), "-n", self.tool, "-w", "-D"];
        args.extend(self.rule.iter().map(String::as_str));
        crate::command::run_quietly("nsenter", &args);
    }
}

/// A warp's tunnel dead without a sign Docker could see: a TCP port
/// dropped inside the warp's namespace (what a probe of that port checks),
/// its process untouched. Alive again on drop.
pub struct DeadTunnel {
    _dropped: NamespaceRule,
}

impl DeadTunnel {
    pub fn kill(warp: &Container, port: u16) -> anyhow::Result<Self> {
        let port = port.to_string();
        let rule = ["-p", "tcp", "--dport", port.as_str(), "-j", "DROP"];
        Ok(Self {
            _dropped: NamespaceRule::insert(warp, "INPUT", &rule)?,
        })
    }
}

/// The actions an eBPF rule row can give, as `ACTION_*` values: its
/// selectors' in order, then its default (when it has one). A row of one
/// action for all it takes gives one value.
pub fn row_actions(row: &netwarp_common::RuleValue) -> Vec<u8> {
    let mut actions: Vec<u8> = (row.selectors[..usize::from(row.selector_count)].iter())
        .map(|s| s.action)
        .chain((row.default_action != 0).then_some(row.default_action))
        .collect();
    actions.dedup();
    actions
}
