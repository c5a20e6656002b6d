//! Domain types: what netwarp knows about containers, independent of Docker's API.
mod rate;
mod rule;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

pub use rate::{Cap, Caps, Rate, RateError, default_burst, parse_rate, parse_size};
pub use rule::{Cidr, PortRange, Protocol, Rule, RuleError, parse_rules};

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
    pub mac: Option<String>,
    /// Docker's id of the network (it names the network's bridge).
    pub network_id: Option<String>,
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
    pub labels: BTreeMap<String, String>,
    /// Endpoints by network name.
    pub networks: BTreeMap<String, Endpoint>,
}

impl Container {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// A snapshot of every container netwarp can see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    pub containers: Vec<Container>,
}
