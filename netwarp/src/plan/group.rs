//! Warp groups as a target's label names them: one warp, a failover group
//! (`warp-a,warp-b`, or `failover:warp-a,warp-b`) or a spread group
//! (`spread:warp-a,warp-b,warp-c`), and the members a spread group's
//! target is steered through.

use std::net::{Ipv4Addr, Ipv6Addr};

/// How a group's members share a target's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupMode {
    /// The first usable member carries everything (one warp is a group of
    /// one in this mode).
    #[default]
    Failover,
    /// Every usable member carries flows, picked by a hash of the flow.
    Spread,
}

impl GroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::Spread => "spread",
        }
    }
}

/// The most members a spread group may name: the eBPF member table has
/// [`netwarp_common::SPREAD_SLOTS`] slots, so each member gets at least 8.
pub const MAX_SPREAD_MEMBERS: usize = 8;

/// A target label read as a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarpGroup<'a> {
    pub mode: GroupMode,
    /// The members in label order (priority order for failover); blanks
    /// around names are ignored, repeats kept once. A name may be empty:
    /// the planner reports that as [`super::BlockReason::EmptyWarpName`].
    pub members: Vec<&'a str>,
}

/// Reads a target label: `[MODE:]NAME[,NAME...]`. Docker names (and Swarm
/// service names) never hold a colon, so a colon always ends a mode.
/// The error says what is wrong and how to write it.
pub fn parse_group(label: &str) -> Result<WarpGroup<'_>, String> {
    let (mode, names) = match label.split_once(':') {
        None => (GroupMode::Failover, label),
        Some((mode, names)) => match mode.trim() {
            "failover" => (GroupMode::Failover, names),
            "spread" => (GroupMode::Spread, names),
            other => {
                return Err(format!(
                    "unknown group mode `{other}`: write failover:WARP,WARP or \
                     spread:WARP,WARP (or just WARP,WARP for failover)"
                ));
            }
        },
    };
    let mut members: Vec<&str> = Vec::new();
    for name in names.split(',').map(str::trim) {
        if !members.contains(&name) {
            members.push(name);
        }
    }
    if mode == GroupMode::Spread && members.len() > MAX_SPREAD_MEMBERS {
        return Err(format!(
            "a spread group has at most {MAX_SPREAD_MEMBERS} members, this one names {}: \
             drop some, or use several groups for several targets",
            members.len()
        ));
    }
    Ok(WarpGroup { mode, members })
}

/// The names a target label lists, whatever its mode (for status while
/// the label cannot be read, and for the warps' target counts).
pub fn warp_group(label: &str) -> Vec<&str> {
    let names = label.split_once(':').map_or(label, |(_, names)| names);
    let mut group: Vec<&str> = Vec::new();
    for name in names.split(',').map(str::trim) {
        if !group.contains(&name) {
            group.push(name);
        }
    }
    group
}

/// One member of a spread group carrying a target's flows: what the
/// dataplanes need to send flows to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadMember {
    pub name: String,
    /// The warp's init pid (its namespace holds its veths' peers).
    pub pid: Option<u32>,
    /// Its MAC on the target's network: frames to it are addressed so, and
    /// its veth there is found by it.
    pub mac: Option<String>,
    /// Its MACs on all its networks, sorted: each of its veths is guarded.
    pub macs: Vec<String>,
    /// Its addresses on the target's network: the next hops of the routes
    /// dataplane's nexthop groups.
    pub via_v4: Option<Ipv4Addr>,
    pub via_v6: Option<Ipv6Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_prefix_is_optional_and_failover_by_default() {
        let read = |label| parse_group(label).unwrap();
        assert_eq!(
            read("warp-a"),
            WarpGroup {
                mode: GroupMode::Failover,
                members: vec!["warp-a"],
            }
        );
        assert_eq!(
            read(" warp-a , warp-b ,warp-a").members,
            ["warp-a", "warp-b"]
        );
        assert_eq!(read("warp-a,warp-b").mode, GroupMode::Failover);
        assert_eq!(
            read("failover:warp-a,warp-b"),
            read("warp-a,warp-b"),
            "failover: says the default"
        );
        let spread = read(" spread : warp-a, warp-b,warp-c,warp-d");
        assert_eq!(spread.mode, GroupMode::Spread);
        assert_eq!(spread.members, ["warp-a", "warp-b", "warp-c", "warp-d"]);
        // A spread group of one is one warp spread over one member.
        assert_eq!(read("spread:warp-a").members, ["warp-a"]);
        // Empty names are kept: the planner names the label.
        assert_eq!(read("spread:").members, [""]);
        assert_eq!(
            read("spread:warp-a,,warp-b").members,
            ["warp-a", "", "warp-b"]
        );
    }

    #[test]
    fn every_error_says_what_is_wrong_and_how_to_write_it() {
        assert_eq!(
            parse_group("spraed:warp-a,warp-b").unwrap_err(),
            "unknown group mode `spraed`: write failover:WARP,WARP or spread:WARP,WARP \
             (or just WARP,WARP for failover)"
        );
        assert_eq!(
            parse_group(":warp-a").unwrap_err(),
            "unknown group mode ``: write failover:WARP,WARP or spread:WARP,WARP \
             (or just WARP,WARP for failover)"
        );
        let nine = "spread:w1,w2,w3,w4,w5,w6,w7,w8,w9";
        assert_eq!(
            parse_group(nine).unwrap_err(),
            "a spread group has at most 8 members, this one names 9: drop some, or use \
             several groups for several targets"
        );
        // The limit is spread's: a failover group may be longer.
        assert!(parse_group("w1,w2,w3,w4,w5,w6,w7,w8,w9").is_ok());
        assert!(parse_group("spread:w1,w2,w3,w4,w5,w6,w7,w8").is_ok());
    }

    #[test]
    fn the_names_are_listed_whatever_the_mode() {
        assert_eq!(warp_group("spread:warp-a, warp-b"), ["warp-a", "warp-b"]);
        assert_eq!(warp_group("bogus:warp-a"), ["warp-a"]);
        assert_eq!(warp_group("warp-a"), ["warp-a"]);
    }
}
