//! Steering rules: destination CIDR, optional protocol and port range.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IPv4 or IPv6 prefix, always stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("`{0}` is not a CIDR (expected e.g. 203.0.113.0/24 or 2001:db8::/32)")]
    Cidr(String),
    #[error("`{input}`: prefix length {len} is longer than {max}")]
    PrefixLength { input: String, len: u8, max: u8 },
    #[error("`{input}` has host bits set; did you mean {suggestion}?")]
    HostBits { input: String, suggestion: Cidr },
    #[error("unknown protocol `{0}` (expected tcp, udp or icmp)")]
    Protocol(String),
    #[error("`{0}` is not a port or port range (expected e.g. 443 or 5000-5100)")]
    Port(String),
    #[error("port range `{0}` is empty: its start is above its end")]
    PortOrder(String),
    #[error("port 0 is not a valid destination port in `{0}`")]
    PortZero(String),
    #[error("icmp has no ports: `{0}`")]
    IcmpPorts(String),
    #[error("port range `{0}` needs a protocol: set protocol to tcp or udp")]
    PortsWithoutProtocol(PortRange),
    #[error("no destination CIDR in `{0}`; list at least one, e.g. 203.0.113.0/24,tcp:443")]
    NoDestination(String),
    #[error("empty item in `{0}`")]
    EmptyItem(String),
    /// The clause; its first word is the unknown action.
    #[error(
        "unknown action `{word}` in `{0}` (expected via, direct or block before the \
         destinations, e.g. `direct 10.0.0.0/8`)",
        word = .0.split_whitespace().next().unwrap_or_default()
    )]
    Verb(String),
    #[error("empty clause in `{0}`: remove the extra `;`")]
    EmptyClause(String),
    #[error("`global` stands alone in a clause (`global; direct 10.0.0.0/8`), not in `{0}`")]
    GlobalWithItems(String),
    #[error("`global` names the global rules: it has no meaning inside them")]
    GlobalInGlobal,
    #[error(
        "`{0}`: a direct rule excludes whole destinations and takes no protocol or ports; \
         write `direct <cidr>` (use block for one protocol or port)"
    )]
    DirectWithSelector(String),
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, RuleError> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(RuleError::PrefixLength {
                input: format!("{addr}/{prefix_len}"),
                len: prefix_len,
                max,
            });
        }
        let cidr = Self {
            addr: mask(addr, prefix_len),
            prefix_len,
        };
        if cidr.addr != addr {
            return Err(RuleError::HostBits {
                input: format!("{addr}/{prefix_len}"),
                suggestion: cidr,
            });
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.addr.is_ipv6() && mask(ip, self.prefix_len) == self.addr
    }

    /// The prefix of length `prefix_len` that contains `addr` (an
    /// interface's subnet); `None` when the length is too long.
    pub fn containing(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= max_prefix(addr)).then(|| Self {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// Whether `other` lies within this prefix (or is it).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.addr)
    }

    /// The prefix of length `prefix_len` (at most this one's) that
    /// contains this one.
    pub fn truncated(&self, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(self.prefix_len);
        Self {
            addr: mask(self.addr, prefix_len),
            prefix_len,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = RuleError;

    /// Accepts `addr/len`, or a bare address as a host route.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RuleError::Cidr(s.to_owned());
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                (addr, len)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, max_prefix(addr))
            }
        };
        Cidr::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The L4 protocols a rule can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// The IP protocol number; for ICMP over IPv6 it is ICMPv6's.
    pub fn ip_proto(self, ipv6: bool) -> u8 {
        match (self, ipv6) {
            (Self::Tcp, _) => 6,
            (Self::Udp, _) => 17,
            (Self::Icmp, false) => 1,
            (Self::Icmp, true) => 58,
        }
    }
}

impl FromStr for Protocol {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" => Ok(Self::Icmp),
            _ => Err(RuleError::Protocol(s.to_owned())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        })
    }
}

/// An inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl FromStr for PortRange {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| RuleError::Port(s.to_owned()))
        };
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if start == 0 {
            return Err(RuleError::PortZero(s.to_owned()));
        }
        if start > end {
            return Err(RuleError::PortOrder(s.to_owned()));
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// What a rule does with the traffic it selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// Through the warp (fail closed while it is unusable).
    #[default]
    Via,
    /// Never steered: the container's own path (an exclusion).
    Direct,
    /// Refused, whatever the warp's state.
    Block,
}

impl FromStr for Verb {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "via" => Ok(Self::Via),
            "direct" => Ok(Self::Direct),
            "block" => Ok(Self::Block),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Via => "via",
            Self::Direct => "direct",
            Self::Block => "block",
        })
    }
}

/// One rule: what it selects (destination CIDR, optional protocol and
/// port range) and what it does with it. `protocol: None` selects every
/// protocol; `ports` is only set with tcp or udp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub destination: Cidr,
    pub protocol: Option<Protocol>,
    pub ports: Option<PortRange>,
    pub verb: Verb,
}

impl Rule {
    pub fn new(
        destination: Cidr,
        protocol: Option<Protocol>,
        ports: Option<PortRange>,
    ) -> Result<Self, RuleError> {
        match (protocol, ports) {
            (Some(Protocol::Icmp), Some(p)) => Err(RuleError::IcmpPorts(format!("icmp:{p}"))),
            (None, Some(p)) => Err(RuleError::PortsWithoutProtocol(p)),
            _ => Ok(Self {
                destination,
                protocol,
                ports,
                verb: Verb::Via,
            }),
        }
    }

    /// The same selection with another verb.
    pub fn with_verb(self, verb: Verb) -> Self {
        Self { verb, ..self }
    }

    /// Whether this rule's protocol and ports take a packet of `ip_proto`
    /// (its IP protocol number) to `dport` (`None`: no port was read).
    pub fn selects(&self, ip_proto: u8, dport: Option<u16>) -> bool {
        let Some(protocol) = self.protocol else {
            return true;
        };
        protocol.ip_proto(self.destination.is_ipv6()) == ip_proto
            && self
                .ports
                .is_none_or(|p| dport.is_some_and(|d| p.start <= d && d <= p.end))
    }

    /// How narrow the selector is, for ties between rules of one prefix:
    /// lower is narrower (a port range by its width, then a protocol, then
    /// every protocol).
    pub fn selector_rank(&self) -> u32 {
        match (self.protocol, self.ports) {
            (_, Some(p)) => u32::from(p.end - p.start),
            (Some(_), None) => 1 << 16,
            (None, _) => 1 << 17,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.verb != Verb::Via {
            write!(f, "{} ", self.verb)?;
        }
        write!(f, "{}", self.destination)?;
        if let Some(protocol) = self.protocol {
            write!(f, " {protocol}")?;
        }
        if let Some(ports) = self.ports {
            write!(f, ":{ports}")?;
        }
        Ok(())
    }
}

/// A protocol, optionally narrowed to ports: `tcp`, `tcp:443`, `udp:5000-5100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Selector {
    protocol: Protocol,
    ports: Option<PortRange>,
}

impl FromStr for Selector {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (protocol, ports) = match s.split_once(':') {
            Some((proto, ports)) => (proto.parse()?, Some(ports.parse()?)),
            None => (s.parse()?, None),
        };
        if protocol == Protocol::Icmp && ports.is_some() {
            return Err(RuleError::IcmpPorts(s.to_owned()));
        }
        Ok(Self { protocol, ports })
    }
}

/// Parses the rules label, e.g. `203.0.113.0/24,2001:db8::/32,tcp:443,udp:5000-5100`.
///
/// Items are comma separated. CIDR items are the destinations; protocol items
/// (`tcp`, `udp:53`, `tcp:8000-8100`, `icmp`) narrow every destination. With no
/// protocol item, every protocol to those destinations is selected. The
/// result is the cross product, sorted and without duplicates.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut destinations = Vec::new();
    let mut selectors = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(RuleError::EmptyItem(text.to_owned()));
        }
        let is_address = item.contains('/') || item.parse::<IpAddr>().is_ok();
        let looks_like_protocol = !is_address
            && item
                .split(':')
                .next()
                .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphabetic()));
        if looks_like_protocol {
            selectors.push(item.parse::<Selector>()?);
        } else {
            destinations.push(item.parse::<Cidr>()?);
        }
    }
    if destinations.is_empty() {
        return Err(RuleError::NoDestination(text.to_owned()));
    }
    let mut rules = Vec::new();
    for destination in &destinations {
        if selectors.is_empty() {
            rules.push(Rule::new(*destination, None, None)?);
        }
        for selector in &selectors {
            rules.push(Rule::new(
                *destination,
                Some(selector.protocol),
                selector.ports,
            )?);
        }
    }
    rules.sort();
    rules.dedup();
    Ok(rules)
}

/// A rules label or setting: its rules, and whether it includes the
/// global rules (the clause `global`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Sorted, without duplicates.
    pub rules: Vec<Rule>,
    pub with_global: bool,
}

/// Parses a policy: clauses separated by `;`, each an optional verb (`via`,
/// `direct`, `block`; `via` when left out) and then a list in the
/// [`parse_rules`] syntax, or the single word `global` (the global rules
/// are included; without it, a label replaces them). For example:
/// `global; direct 10.0.0.0/8; block 0.0.0.0/0,tcp:25`.
pub fn parse_policy(text: &str) -> Result<Policy, RuleError> {
    let mut policy = Policy::default();
    let clauses: Vec<&str> = text.split(';').map(str::trim).collect();
    for (index, clause) in clauses.iter().enumerate() {
        if clause.is_empty() {
            // One trailing `;` is harmless; anything else is a typo.
            if index > 0 && index + 1 == clauses.len() {
                continue;
            }
            if clauses.len() == 1 {
                return Err(RuleError::EmptyItem(text.to_owned()));
            }
            return Err(RuleError::EmptyClause(text.to_owned()));
        }
        if clause.parse::<Verb>().is_ok() {
            return Err(RuleError::NoDestination((*clause).to_owned()));
        }
        if clause.eq_ignore_ascii_case("global") {
            policy.with_global = true;
            continue;
        }
        let (verb, list) = match clause.split_once(char::is_whitespace) {
            Some((word, rest)) if !word.contains([',', '/', ':', '.']) => {
                let verb =
                    (word.parse::<Verb>()).map_err(|()| RuleError::Verb((*clause).to_owned()))?;
                (verb, rest.trim())
            }
            _ => (Verb::Via, *clause),
        };
        if list
            .split(',')
            .any(|item| item.trim().eq_ignore_ascii_case("global"))
        {
            return Err(RuleError::GlobalWithItems((*clause).to_owned()));
        }
        let rules = parse_rules(list)?;
        if verb == Verb::Direct && rules.iter().any(|rule| rule.protocol.is_some()) {
            return Err(RuleError::DirectWithSelector((*clause).to_owned()));
        }
        policy
            .rules
            .extend(rules.into_iter().map(|rule| rule.with_verb(verb)));
    }
    policy.rules.sort();
    policy.rules.dedup();
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_and_v6_cidrs() {
        assert_eq!(cidr("203.0.113.0/24").to_string(), "203.0.113.0/24");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_cidrs_with_reasons() {
        assert_eq!(
            "203.0.113.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "`203.0.113.0/33`: prefix length 33 is longer than 32"
        );
        assert_eq!(
            "203.0.113.5/24".parse::<Cidr>().unwrap_err().to_string(),
            "`203.0.113.5/24` has host bits set; did you mean 203.0.113.0/24?"
        );
        assert!(matches!(
            "300.0.0.0/8".parse::<Cidr>(),
            Err(RuleError::Cidr(_))
        ));
        assert!(matches!("".parse::<Cidr>(), Err(RuleError::Cidr(_))));
    }

    #[test]
    fn contains_respects_family_and_prefix() {
        let net = cidr("203.0.113.0/24");
        assert!(net.contains("203.0.113.9".parse().unwrap()));
        assert!(!net.contains("203.0.114.9".parse().unwrap()));
        assert!(!cidr("::/0").contains("203.0.113.9".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn parses_the_documented_label_example() {
        let rules = parse_rules("203.0.113.0/24,tcp:443,udp:5000-5100").unwrap();
        let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["203.0.113.0/24 tcp:443", "203.0.113.0/24 udp:5000-5100"]
        );
    }

    #[test]
    fn cidrs_alone_select_every_protocol() {
        let rules = parse_rules("2001:db8::/32, 198.51.100.0/24").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(
            rules
                .iter()
                .all(|r| r.protocol.is_none() && r.ports.is_none())
        );
    }

    #[test]
    fn selectors_apply_to_every_destination() {
        let rules = parse_rules("fd00::/8,192.0.2.0/24,icmp,tcp").unwrap();
        assert_eq!(rules.len(), 4);
    }

    #[test]
    fn duplicates_collapse() {
        let rules = parse_rules("192.0.2.0/24,192.0.2.0/24,tcp:80,tcp:80").unwrap();
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn malformed_labels_are_refused_with_reasons() {
        let cases = [
            (
                "203.0.113.0/24,tcp:9000-80",
                "port range `9000-80` is empty: its start is above its end",
            ),
            (
                "203.0.113.0/24,sctp:80",
                "unknown protocol `sctp` (expected tcp, udp or icmp)",
            ),
            (
                "203.0.113.0/24,tcp:http",
                "`http` is not a port or port range (expected e.g. 443 or 5000-5100)",
            ),
            (
                "203.0.113.0/24,tcp:70000",
                "`70000` is not a port or port range (expected e.g. 443 or 5000-5100)",
            ),
            (
                "203.0.113.0/24,tcp:0",
                "port 0 is not a valid destination port in `0`",
            ),
            ("203.0.113.0/24,icmp:8", "icmp has no ports: `icmp:8`"),
            (
                "tcp:443",
                "no destination CIDR in `tcp:443`; list at least one, e.g. 203.0.113.0/24,tcp:443",
            ),
            ("203.0.113.0/24,,tcp", "empty item in `203.0.113.0/24,,tcp`"),
            ("", "empty item in ``"),
            (
                "203.0.113.0/40",
                "`203.0.113.0/40`: prefix length 40 is longer than 32",
            ),
            (
                "not-a-cidr",
                "`not-a-cidr` is not a CIDR (expected e.g. 203.0.113.0/24 or 2001:db8::/32)",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                parse_rules(input).unwrap_err().to_string(),
                message,
                "input `{input}`"
            );
        }
    }

    fn shown(policy: &Policy) -> Vec<String> {
        policy.rules.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_plain_list_is_a_policy_of_via_rules() {
        let policy = parse_policy("203.0.113.0/24,tcp:443").unwrap();
        assert_eq!(shown(&policy), ["203.0.113.0/24 tcp:443"]);
        assert!(!policy.with_global);
        assert_eq!(policy.rules[0].verb, Verb::Via);
    }

    #[test]
    fn clauses_carry_their_own_verbs_protocols_and_ports() {
        let policy = parse_policy(
            "203.0.113.0/24; via 0.0.0.0/0,::/0,udp:53,tcp:53; direct 203.0.113.128/25; \
             BLOCK 203.0.113.7,tcp:25;",
        )
        .unwrap();
        let mut got = shown(&policy);
        got.sort();
        let mut want = [
            "block 203.0.113.7/32 tcp:25",
            "0.0.0.0/0 tcp:53",
            "0.0.0.0/0 udp:53",
            "::/0 tcp:53",
            "::/0 udp:53",
            "203.0.113.0/24",
            "direct 203.0.113.128/25",
        ];
        want.sort();
        assert_eq!(got, want);
        let verbs: Vec<Verb> = policy.rules.iter().map(|r| r.verb).collect();
        assert_eq!(verbs.iter().filter(|v| **v == Verb::Direct).count(), 1);
        assert_eq!(verbs.iter().filter(|v| **v == Verb::Block).count(), 1);
    }

    #[test]
    fn global_includes_the_global_rules() {
        let policy = parse_policy("global; direct 10.0.0.0/8").unwrap();
        assert!(policy.with_global);
        assert_eq!(shown(&policy), ["direct 10.0.0.0/8"]);
        assert!(parse_policy("global").unwrap().rules.is_empty());
    }

    #[test]
    fn malformed_policies_are_refused_with_reasons() {
        let cases = [
            (
                "steer 10.0.0.0/8",
                "unknown action `steer` in `steer 10.0.0.0/8` (expected via, direct or block \
                 before the destinations, e.g. `direct 10.0.0.0/8`)",
            ),
            (
                "10.0.0.0/8;;tcp",
                "empty clause in `10.0.0.0/8;;tcp`: remove the extra `;`",
            ),
            (
                ";10.0.0.0/8",
                "empty clause in `;10.0.0.0/8`: remove the extra `;`",
            ),
            (
                "direct",
                "no destination CIDR in `direct`; list at least one, e.g. 203.0.113.0/24,tcp:443",
            ),
            (
                "global,10.0.0.0/8",
                "`global` stands alone in a clause (`global; direct 10.0.0.0/8`), not in \
                 `global,10.0.0.0/8`",
            ),
            (
                "direct 10.0.0.0/8,tcp:0",
                "port 0 is not a valid destination port in `0`",
            ),
            (
                "direct 10.0.0.0/8,tcp:22",
                "`direct 10.0.0.0/8,tcp:22`: a direct rule excludes whole destinations and takes \
                 no protocol or ports; write `direct <cidr>` (use block for one protocol or port)",
            ),
            (
                "block tcp:25",
                "no destination CIDR in `tcp:25`; list at least one, e.g. 203.0.113.0/24,tcp:443",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                parse_policy(input).unwrap_err().to_string(),
                message,
                "input `{input}`"
            );
        }
    }

    #[test]
    fn selects_by_protocol_and_port() {
        let rules = parse_rules("203.0.113.0/24,tcp:400-500,icmp").unwrap();
        let tcp = rules
            .iter()
            .find(|r| r.protocol == Some(Protocol::Tcp))
            .unwrap();
        assert!(tcp.selects(6, Some(443)));
        assert!(!tcp.selects(6, Some(80)));
        assert!(!tcp.selects(6, None));
        assert!(!tcp.selects(17, Some(443)));
        let icmp = rules
            .iter()
            .find(|r| r.protocol == Some(Protocol::Icmp))
            .unwrap();
        assert!(icmp.selects(1, None));
        let any = parse_rules("203.0.113.0/24").unwrap()[0];
        assert!(any.selects(47, None));
        assert!(tcp.selector_rank() < icmp.selector_rank());
        assert!(icmp.selector_rank() < any.selector_rank());
    }

    #[test]
    fn icmp_protocol_number_depends_on_family() {
        assert_eq!(Protocol::Icmp.ip_proto(false), 1);
        assert_eq!(Protocol::Icmp.ip_proto(true), 58);
        assert_eq!(Protocol::Tcp.ip_proto(true), 6);
    }
}
