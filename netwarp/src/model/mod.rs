//! Domain types: what netwarp knows about containers, independent of Docker's API.
mod id;
mod map;
mod rate;
mod rule;

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

/// Sets and maps of container ids on a pass's hot paths (thousands of
/// lookups per pass): a fast seeded hash instead of SipHash.
pub type IdSet = HashSet<String, foldhash::fast::RandomState>;
pub type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

pub use id::{ContainerId, IdError};
pub use map::SmallMap;
pub use rate::{Cap, Caps, Rate, RateError, default_burst, parse_rate, parse_size};
pub use rule::{
    Cidr, Policy, PortRange, Protocol, Rule, RuleError, Verb, parse_policy, parse_rules,
};

/// Docker's health status for a container with a healthcheck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Health {
    /// No healthcheck configured.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A container's attachment to one Docker network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The prefix lengths of the network's subnets, as Docker reports them
    /// with the addresses (`IPPrefixLen`, `GlobalIPv6PrefixLen`).
    pub ipv4_prefix_len: Option<u8>,
    pub ipv6_prefix_len: Option<u8>,
    pub mac: Option<String>,
    /// Docker's id of the network (it names the network's bridge).
    pub network_id: Option<String>,
}

impl Endpoint {
    /// The subnets this endpoint's addresses are on.
    pub fn subnets(&self) -> impl Iterator<Item = Cidr> + '_ {
        let v4 = (self.ipv4.zip(self.ipv4_prefix_len))
            .and_then(|(addr, len)| Cidr::containing(addr.into(), len));
        let v6 = (self.ipv6.zip(self.ipv6_prefix_len))
            .and_then(|(addr, len)| Cidr::containing(addr.into(), len));
        v4.into_iter().chain(v6)
    }
}

/// Whose network namespace a container runs in: Docker's
/// `HostConfig.NetworkMode`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Its own namespace, attached to Docker networks (`bridge`,
    /// `default`, a network's name; also what an unknown mode means).
    #[default]
    Own,
    /// `host`: the host's own namespace.
    Host,
    /// `none`: its own namespace with only a loopback interface.
    NoNetwork,
    /// `container:<id or name>`: another container's namespace.
    Container(String),
}

impl NetworkMode {
    /// Parses Docker's `NetworkMode`.
    pub fn parse(mode: &str) -> Self {
        match mode {
            "host" => Self::Host,
            "none" => Self::NoNetwork,
            _ => match mode.strip_prefix("container:") {
                Some(other) => Self::Container(other.to_owned()),
                None => Self::Own,
            },
        }
    }
}

impl std::fmt::Display for NetworkMode {
    /// As `docker run --network` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Own => f.write_str("bridge"),
            Self::Host => f.write_str("host"),
            Self::NoNetwork => f.write_str("none"),
            Self::Container(other) => write!(f, "container:{}", short_reference(other)),
        }
    }
}

/// A container reference as `docker ps` would show it: a full id shortened
/// to 12 characters, a name as it is.
pub fn short_reference(reference: &str) -> &str {
    if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        &reference[..12]
    } else {
        reference
    }
}

/// The first 12 characters of a container (or network) id, as `docker ps`
/// shows it.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// What netwarp reads about one container on each reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub running: bool,
    pub health: Health,
    /// The init process, whose network namespace is the container's.
    pub pid: Option<u32>,
    /// Only the labels the planner reads (see [`crate::inventory`]).
    pub labels: SmallMap<String>,
    /// Endpoints by network name.
    pub networks: SmallMap<Endpoint>,
    pub network_mode: NetworkMode,
}

impl Container {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }

    /// Whether `reference` (from `container:<reference>`) names this
    /// container: Docker records the full id, a user may give a name or
    /// an id prefix.
    pub fn is_named_by(&self, reference: &str) -> bool {
        !reference.is_empty() && (self.id.starts_with(reference) || self.name == reference)
    }
}

/// A snapshot of every container netwarp can see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    pub containers: Vec<Container>,
}
