//! Policy rules as netlink messages, shared by the routes dataplane's
//! rules in target namespaces and the host guard's rules on the host: one
//! way to write netwarp's tag and a rule's selector, one way to read them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion,
    packet_route::{
        AddressFamily,
        route::RouteProtocol,
        rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
    },
};

use crate::model::{Cidr, PortRange, Rule};

/// The route (and rule) protocol id that tags netwarp's entries.
pub const NETWARP_PROTOCOL: u8 = 0x57;
/// One plan entry's match: `to DEST [ipproto P [dport RANGE]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedRule {
    pub destination: Cidr,
    pub ip_proto: Option<u8>,
    pub ports: Option<PortRange>,
}

impl OwnedRule {
    /// The selector of a plan rule (the host guard uses it too).
    pub fn from_rule(rule: &Rule) -> Self {
        Self {
            destination: rule.destination,
            ip_proto: rule
                .protocol
                .map(|p| p.ip_proto(rule.destination.is_ipv6())),
            ports: rule.ports,
        }
    }
}

/// A match without a destination, shared by every prefix of one selector
/// group: netwarp writes one rule per group, and the group's prefixes as
/// routes in the table that rule looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub ipv6: bool,
    pub ip_proto: Option<u8>,
    pub ports: Option<PortRange>,
}

impl Selector {
    pub fn of(rule: &OwnedRule) -> Self {
        Self {
            ipv6: rule.destination.is_ipv6(),
            ip_proto: rule.ip_proto,
            ports: rule.ports,
        }
    }
}

impl std::fmt::Display for Selector {
    /// As `ip rule` writes it (numeric protocols); empty for all traffic.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(proto) = self.ip_proto {
            write!(f, " ipproto {proto}")?;
        }
        if let Some(ports) = self.ports {
            write!(f, " dport {ports}")?;
        }
        Ok(())
    }
}

/// Every policy rule of both families in the namespace of `handle`, in
/// the kernel's order.
pub(crate) async fn dump_rules(handle: &Handle) -> Result<Vec<RuleMessage>, rtnetlink::Error> {
    let mut rules = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let family: Vec<RuleMessage> = handle.rule().get(version).execute().try_collect().await?;
        rules.extend(family);
    }
    Ok(rules)
}

/// An empty rule of one family at `priority`, tagged with
/// [`NETWARP_PROTOCOL`] so netwarp can tell its rules from everyone else's.
pub(crate) fn tagged_rule(ipv6: bool, priority: u32, action: RuleAction) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    message.header.action = action;
    message.attributes.push(RuleAttribute::Priority(priority));
    message
        .attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            NETWARP_PROTOCOL,
        )));
    message
}

/// Adds `[ipproto P] [dport RANGE]` (any destination).
pub(crate) fn match_selector(message: &mut RuleMessage, selector: &Selector) {
    if let Some(proto) = selector.ip_proto {
        message
            .attributes
            .push(RuleAttribute::IpProtocol(proto.into()));
    }
    if let Some(ports) = selector.ports {
        message
            .attributes
            .push(RuleAttribute::DestinationPortRange(RulePortRange {
                start: ports.start,
                end: ports.end,
            }));
    }
}

/// Adds `from SRC`.
pub(crate) fn match_source(message: &mut RuleMessage, source: Cidr) {
    message.header.src_len = source.prefix_len();
    if source.prefix_len() > 0 {
        message
            .attributes
            .push(RuleAttribute::Source(source.addr()));
    }
}

/// What netwarp reads back from a rule that carries its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaggedRule {
    pub ipv6: bool,
    pub priority: Option<u32>,
    pub action: RuleAction,
    pub table: Option<u32>,
    pub goto: Option<u32>,
    pub iif: Option<String>,
    /// `None` for `from all`.
    pub source: Option<Cidr>,
    /// The destination is `0/0` of the rule's family for `to all`.
    pub selector: OwnedRule,
}

impl TaggedRule {
    /// The selector group of a rule `to all`; `None` if it has a destination.
    pub(crate) fn group(&self) -> Option<Selector> {
        (self.selector.destination.prefix_len() == 0).then(|| Selector::of(&self.selector))
    }
}

impl TaggedRule {
    /// `None` for a rule without netwarp's tag, or one whose prefixes make
    /// no sense.
    pub(crate) fn parse(rule: &RuleMessage) -> Option<Self> {
        let ipv6 = rule.header.family == AddressFamily::Inet6;
        let mut tagged = false;
        let mut parsed = Self {
            ipv6,
            priority: None,
            action: rule.header.action,
            table: None,
            goto: None,
            iif: None,
            source: None,
            selector: OwnedRule {
                destination: Cidr::new(unspecified(ipv6), 0).ok()?,
                ip_proto: None,
                ports: None,
            },
        };
        let mut destination = None;
        let mut source = None;
        for attribute in &rule.attributes {
            match attribute {
                RuleAttribute::Priority(p) => parsed.priority = Some(*p),
                RuleAttribute::Protocol(p) => {
                    tagged = *p == RouteProtocol::Other(NETWARP_PROTOCOL);
                }
                RuleAttribute::Table(t) => parsed.table = Some(*t),
                RuleAttribute::Goto(g) => parsed.goto = Some(*g),
                RuleAttribute::Iifname(name) => parsed.iif = Some(name.clone()),
                RuleAttribute::Destination(d) => destination = Some(*d),
                RuleAttribute::Source(s) => source = Some(*s),
                RuleAttribute::IpProtocol(p) => parsed.selector.ip_proto = Some(u8::from(*p)),
                RuleAttribute::DestinationPortRange(r) => {
                    parsed.selector.ports = Some(PortRange {
                        start: r.start,
                        end: r.end,
                    });
                }
                _ => {}
            }
        }
        if !tagged {
            return None;
        }
        parsed.selector.destination = Cidr::new(
            destination.unwrap_or(unspecified(ipv6)),
            rule.header.dst_len,
        )
        .ok()?;
        if source.is_some() || rule.header.src_len > 0 {
            parsed.source =
                Some(Cidr::new(source.unwrap_or(unspecified(ipv6)), rule.header.src_len).ok()?);
        }
        Some(parsed)
    }
}

fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}
