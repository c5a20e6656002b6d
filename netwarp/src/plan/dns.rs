//! DNS policy: where a target's DNS queries may go (UDP and TCP port 53,
//! to any destination; Docker's embedded resolver makes its upstream
//! queries from the target's own namespace and address, so they are the
//! target's traffic too).

use std::{fmt, net::IpAddr, str::FromStr};

use crate::model::{Cidr, PortRange, Protocol, Rule, Verb};

/// A target's DNS policy (`dns`, or its `netwarp.dns` label).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsPolicy {
    /// What the rules say, like any other traffic.
    #[default]
    Follow,
    /// Every query through the warp (refused while it is unusable), even
    /// to a destination a `direct` rule or an exclusion leaves alone.
    Warp,
    /// Queries the rules do not send through the warp are refused.
    Block,
}

impl FromStr for DnsPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "follow" => Ok(Self::Follow),
            "warp" => Ok(Self::Warp),
            "block" => Ok(Self::Block),
            _ => Err(format!("`{s}` is not one of follow, warp, block")),
        }
    }
}

impl fmt::Display for DnsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Follow => "follow",
            Self::Warp => "warp",
            Self::Block => "block",
        })
    }
}

const DNS_PORT: PortRange = PortRange { start: 53, end: 53 };

fn dns_rule(destination: Cidr, protocol: Protocol, verb: Verb) -> Rule {
    Rule {
        destination,
        protocol: Some(protocol),
        ports: Some(DNS_PORT),
        verb,
    }
}

fn everything(ipv6: bool) -> Cidr {
    let addr: IpAddr = if ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    Cidr::new(addr, 0).expect("a /0 prefix is valid")
}

/// The rules that carry out `policy` beside a target's `rules` (its
/// exclusions included). Each is on `/0` or on a `direct` prefix with
/// port 53 as its selector, so it wins over those (the narrower selector
/// on one prefix), and loses only to longer prefixes:
///
/// - `warp`: `via` on `/0` of both families and on every `direct` prefix;
/// - `block`: `block` on every `direct` prefix, and on `/0` of a family
///   unless a `via` rule on `/0` of that family already takes port 53.
///
/// A longer `via` rule takes its own queries through the warp either way,
/// and a longer `block` rule refuses them.
pub fn dns_rules(policy: DnsPolicy, rules: &[Rule]) -> Vec<Rule> {
    let direct: Vec<Cidr> = (rules.iter())
        .filter(|r| r.verb == Verb::Direct)
        .map(|r| r.destination)
        .collect();
    let mut extra = Vec::new();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        match policy {
            DnsPolicy::Follow => {}
            DnsPolicy::Warp => {
                let prefixes = [everything(false), everything(true)].into_iter();
                extra.extend(
                    (prefixes.chain(direct.iter().copied()))
                        .map(|p| dns_rule(p, protocol, Verb::Via)),
                );
            }
            DnsPolicy::Block => {
                for ipv6 in [false, true] {
                    let all = everything(ipv6);
                    let steered = rules.iter().any(|r| {
                        r.verb == Verb::Via
                            && r.destination == all
                            && r.selects(protocol.ip_proto(ipv6), Some(53))
                    });
                    if !steered {
                        extra.push(dns_rule(all, protocol, Verb::Block));
                    }
                }
                extra.extend(direct.iter().map(|p| dns_rule(*p, protocol, Verb::Block)));
            }
        }
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::parse_policy,
        plan::{Action, decide},
    };

    /// What `policy` does with a query to `server` by UDP, beside `label`.
    fn query(label: &str, policy: DnsPolicy, server: &str) -> Option<Action> {
        let mut rules = parse_policy(label).unwrap().rules;
        rules.extend(dns_rules(policy, &rules));
        let via = Action::Via("172.20.0.2".parse().unwrap());
        let entries = crate::plan::entries(&rules, |_| Some(via));
        let server: IpAddr = server.parse().unwrap();
        decide(&entries, server, 17, Some(53))
    }

    #[test]
    fn each_policy_decides_where_queries_go() {
        let via = Some(Action::Via("172.20.0.2".parse().unwrap()));
        let full = "0.0.0.0/0; direct 192.168.10.0/24";
        let split = "203.0.113.0/24,tcp:443";
        // follow: what the rules say.
        assert_eq!(query(full, DnsPolicy::Follow, "9.9.9.9"), via);
        assert_eq!(
            query(full, DnsPolicy::Follow, "192.168.10.1"),
            Some(Action::Direct)
        );
        assert_eq!(query(split, DnsPolicy::Follow, "9.9.9.9"), None);
        // warp: every query through the warp, excluded servers too.
        assert_eq!(query(full, DnsPolicy::Warp, "192.168.10.1"), via);
        assert_eq!(query(split, DnsPolicy::Warp, "9.9.9.9"), via);
        assert_eq!(query(split, DnsPolicy::Warp, "2001:db8::53"), via);
        // block: refused unless the rules take it through the warp.
        assert_eq!(query(full, DnsPolicy::Block, "9.9.9.9"), via);
        assert_eq!(
            query(full, DnsPolicy::Block, "192.168.10.1"),
            Some(Action::Deny)
        );
        assert_eq!(
            query(split, DnsPolicy::Block, "9.9.9.9"),
            Some(Action::Deny)
        );
        assert_eq!(
            query(split, DnsPolicy::Block, "2001:db8::53"),
            Some(Action::Deny)
        );
        let dns_steered = "0.0.0.0/0,udp:53";
        assert_eq!(query(dns_steered, DnsPolicy::Block, "9.9.9.9"), via);
        // A longer block rule still refuses.
        let refused = "0.0.0.0/0; block 9.9.9.0/24";
        assert_eq!(
            query(refused, DnsPolicy::Warp, "9.9.9.9"),
            Some(Action::Deny)
        );
    }

    #[test]
    fn policies_parse_with_a_clear_error() {
        assert_eq!("Warp".parse::<DnsPolicy>(), Ok(DnsPolicy::Warp));
        assert_eq!(
            "tunnel".parse::<DnsPolicy>().unwrap_err(),
            "`tunnel` is not one of follow, warp, block"
        );
    }
}
