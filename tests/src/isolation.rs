//! What "left alone" means for an unlabelled container: its routes, rules,
//! tc attachments and host-veth qdiscs, as one string to compare byte for
//! byte. The chaos scenarios check their bystander with it, and the
//! `isolation_witness` binary checks one container across a whole suite.

use std::fmt::Write as _;

use crate::{command::run, docker::Container, steering::try_full_routing, tcx::tcx_programs};

/// The container's rules and routes (every table, and the IPv6 rules), the
/// programs attached through TCX to its host veth, and that veth's qdiscs.
/// Fails when any part cannot be read.
pub fn unlabelled_state(container: &Container) -> anyhow::Result<String> {
    let (_, veth) = container.host_veth()?;
    let mut state = try_full_routing(container)?;
    for (direction, program) in tcx_programs(&veth) {
        let _ = writeln!(state, "{direction}: {}", program.id());
    }
    // The host veth's name changes when the container gets a new one
    // (dockerd restarts); its qdiscs must not.
    let qdiscs = run("tc", &["qdisc", "show", "dev", &veth])?;
    state.push_str(&qdiscs.replace(&veth, "VETH"));
    // Docker may give the container other addresses when it restarts it
    // (a dockerd restart); that is Docker's doing, not netwarp's.
    let addresses = run(
        "docker",
        &[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container.name(),
        ],
    )?;
    for (i, address) in addresses.split_whitespace().enumerate() {
        state = state.replace(address, &format!("ADDRESS{i}"));
    }
    Ok(state)
}

/// What netwarp could write in the host's own namespace: every policy
/// rule and every route of every table (both families), and the qdiscs and
/// TCX programs of each of the host's interfaces.
///
/// Other tests run in parallel and legitimately change the host: Docker
/// adds and removes bridges and veths (with their routes, link-local and
/// local-table entries, qdiscs and programs), tests add namespaces' veths,
/// and their daemons add and remove host guard rules. [`host_changes`]
/// therefore leaves out exactly that churn: netwarp's tagged guard rules
/// (`proto 87` with an `iif`, or the guard's `nop`: what netwarp may own on
/// the host) and the routes of its guard tables, the kernel's own `proto kernel` routes (they follow
/// addresses), and untagged lines on `br-*`/`veth*` interfaces or on
/// interfaces that did not exist both before and after. What a host
/// namespace wrongly programmed as a target's would show (rules at
/// priority 10000 looking up a target table, routes in one, qdiscs or
/// programs on the host's own interfaces) is always kept.
#[derive(Clone, Debug)]
pub struct HostState {
    routing: Vec<String>,
    /// qdiscs and TCX programs, by interface (bridges and veths left out).
    interfaces: std::collections::BTreeMap<String, String>,
}

fn tagged(line: &str) -> bool {
    line.contains("proto 87") || tables(line).any(is_target_table)
}

/// The tables a rule looks up or a route sits in.
fn tables(line: &str) -> impl Iterator<Item = u32> + '_ {
    let words: Vec<&str> = line.split_whitespace().collect();
    let tables: Vec<u32> = (words.windows(2))
        .filter(|pair| matches!(pair[0], "lookup" | "table"))
        .filter_map(|pair| pair[1].parse().ok())
        .collect();
    tables.into_iter()
}

fn is_target_table(table: u32) -> bool {
    netwarp::dataplane::tables::TARGET_TABLES.contains(&table)
        || table == netwarp::dataplane::tables::LEGACY_TARGET_TABLE
}

/// A host guard rule or guard-table route of some netwarp daemon (this
/// test's or another's).
fn guard_rule(line: &str) -> bool {
    line.contains("proto 87")
        && !tables(line).any(is_target_table)
        && (line.contains(" iif ")
            || line.trim_end().ends_with("nop proto 87")
            || tables(line).any(|t| netwarp::dataplane::host_guard::ALL_GUARD_TABLES.contains(&t)))
}

/// The host's state now; fails when a view cannot be read.
pub fn host_state() -> anyhow::Result<HostState> {
    let mut routing = Vec::new();
    for family in ["-4", "-6"] {
        for view in [
            &["rule", "show"][..],
            &["route", "show", "table", "all"][..],
        ] {
            let mut args = vec![family];
            args.extend_from_slice(view);
            routing.extend(
                run("ip", &args)?
                    .lines()
                    .map(|line| format!("{family} {line}")),
            );
        }
    }
    let mut interfaces = std::collections::BTreeMap::new();
    for interface in run("ip", &["-o", "link", "show"])?
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_owned()))
        .filter(|name| !name.starts_with("br-") && !name.starts_with("veth"))
    {
        // Gone since the listing: another test's interface.
        let Ok(mut state) = run("tc", &["qdisc", "show", "dev", &interface]) else {
            continue;
        };
        for (direction, program) in tcx_programs(&interface) {
            let _ = writeln!(state, "{direction}: {}", program.id());
        }
        interfaces.insert(interface, state);
    }
    Ok(HostState {
        routing,
        interfaces,
    })
}

/// What changed on the host between two snapshots, leaving out the churn
/// [`HostState`] describes; empty when nothing netwarp could own changed.
pub fn host_changes(before: &HostState, after: &HostState) -> String {
    let stable: Vec<&String> = before
        .interfaces
        .keys()
        .filter(|name| after.interfaces.contains_key(*name))
        .collect();
    let keep = |line: &&String| {
        if guard_rule(line) {
            return false;
        }
        if tagged(line) {
            return true;
        }
        // The kernel's own routes follow addresses (other tests' interfaces
        // get link-local ones late); netwarp's routes are all proto 87.
        if line.contains("proto kernel") {
            return false;
        }
        match line.split_once(" dev ") {
            Some((_, rest)) => {
                let dev = rest.split_whitespace().next().unwrap_or_default();
                stable.iter().any(|s| s.as_str() == dev)
            }
            None => true,
        }
    };
    let routing = |state: &HostState| {
        let lines: Vec<&String> = state.routing.iter().filter(keep).collect();
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    let mut changes = describe_change(&routing(before), &routing(after));
    for name in stable {
        let change = describe_change(&before.interfaces[name], &after.interfaces[name]);
        if !change.is_empty() {
            let _ = write!(changes, "on {name}:\n{change}");
        }
    }
    changes
}

/// The lines that differ between two states, `- ` for lines only
/// `before` has and `+ ` for lines only `after` has, in order (a longest
/// common subsequence diff). Empty when the states are equal.
pub fn describe_change(before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    let old: Vec<&str> = before.split('\n').collect();
    let new: Vec<&str> = after.split('\n').collect();
    // common[i][j]: the longest common subsequence of old[i..] and new[j..].
    let mut common = vec![vec![0usize; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            i += 1;
            j += 1;
        } else if j == new.len() || (i < old.len() && common[i + 1][j] >= common[i][j + 1]) {
            let _ = writeln!(out, "- {}", old[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", new[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{HostState, describe_change, host_changes};

    fn host(routing: &[&str], interfaces: &[(&str, &str)]) -> HostState {
        HostState {
            routing: routing.iter().map(|l| l.to_string()).collect(),
            interfaces: interfaces
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn host_changes_keep_what_netwarp_could_write_and_drop_others_churn() {
        let base = &[
            "-4 0:\tfrom all lookup local",
            "-4 default via 192.0.2.1 dev eth0",
        ];
        let qdisc = [("eth0", "qdisc pfifo_fast 0: root\n")];
        let before = host(base, &qdisc);
        // Churn: another daemon's guard rules, another test's bridge.
        let churn = host(
            &[
                base[0],
                "-4 6003:\tfrom all iif br-0123 to 203.0.113.0/24 prohibit proto 87",
                "-4 6004:\tfrom all iif br-0123 lookup 1485963264 proto 87",
                "-4 6005:\tfrom all nop proto 87",
                "-4 prohibit 203.0.113.0/24 table 1485963264 proto 87",
                "-4 172.30.0.0/16 dev br-0123 proto kernel scope link src 172.30.0.1",
                base[1],
            ],
            &[qdisc[0], ("nwx0", "qdisc noqueue 0: root\n")],
        );
        assert_eq!(host_changes(&before, &churn), "");
        // What a host namespace programmed as a target's shows.
        let written = host(
            &[
                base[0],
                "-4 10000:\tfrom all lookup 1314324480 proto 87",
                base[1],
                "-4 prohibit default table 1314324480 proto 87 metric 1024",
            ],
            &qdisc,
        );
        let changed = host_changes(&before, &written);
        assert!(changed.contains("+ -4 10000:"), "{changed}");
        assert!(changed.contains("table 1314324480"), "{changed}");
        let shaped = host(base, &[("eth0", "qdisc tbf 8001: root rate 10Mbit\n")]);
        assert!(host_changes(&before, &shaped).starts_with("on eth0:"));
    }

    #[test]
    fn equal_states_have_no_change() {
        assert_eq!(describe_change("a\nb\n", "a\nb\n"), "");
    }

    #[test]
    fn added_and_removed_lines_are_listed_in_order() {
        let before = "default via 172.18.0.1 dev eth0\nqdisc noqueue 0: dev VETH root\n";
        let after = "default via 172.18.0.1 dev eth0\n192.0.2.0/24 dev eth0\n\
                     qdisc tbf 8001: dev VETH root\n";
        assert_eq!(
            describe_change(before, after),
            "- qdisc noqueue 0: dev VETH root\n+ 192.0.2.0/24 dev eth0\n\
             + qdisc tbf 8001: dev VETH root\n"
        );
    }

    #[test]
    fn a_whitespace_only_change_is_still_reported() {
        assert_eq!(describe_change("a \n", "a\n"), "- a \n+ a\n");
    }
}
