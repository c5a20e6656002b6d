//! Docker's container list and inspect responses, decoded into only what
//! netwarp reads. Docker's full models (bollard's) carry dozens of fields
//! per container (image, command, mounts, ports, every label...); decoding
//! them for thousands of containers costs more than everything netwarp
//! does with them. Here every field netwarp does not read is skipped by
//! the decoder, labels are kept only when the planner reads them, and a
//! list is turned into domain containers one entry at a time as its body
//! arrives, so neither the whole body nor a full decoded copy is ever
//! held.
//!
//! The shapes are those of API 1.41 (Docker 20.10) to the current API:
//! the list's `Health` object is new in 1.52 (before, the health is only in
//! the human-readable `Status`). A value that is present but of the wrong
//! type (an id that is not a string, a pid that is not a number) fails the
//! whole response with serde's message (what was found, what was expected,
//! where): netwarp then retries the pass rather than guess. An entry
//! without an id is left out. An address that does not parse is
//! taken as absent, as an empty one is.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize,
    de::{DeserializeSeed, SeqAccess, Visitor},
};

use crate::model::{Container, Endpoint, Health, NetworkMode, SmallMap};

/// Which labels a container keeps: the planner's own.
pub type KeepLabel<'a> = &'a dyn Fn(&str) -> bool;

/// One endpoint, as both the list and the inspect give it.
#[derive(Debug, Default, Deserialize)]
pub struct WireEndpoint {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: Option<String>,
    #[serde(rename = "NetworkID")]
    pub network_id: Option<String>,
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: Option<u8>,
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: Option<String>,
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: Option<u8>,
    #[serde(rename = "MacAddress")]
    pub mac_address: Option<String>,
}

impl WireEndpoint {
    /// The domain type: empty strings and unparseable addresses are absent.
    pub fn to_endpoint(&self) -> Endpoint {
        fn nonempty(s: &Option<String>) -> Option<&str> {
            s.as_deref().filter(|s| !s.is_empty())
        }
        Endpoint {
            ipv4: nonempty(&self.ip_address).and_then(|s| s.parse().ok()),
            ipv6: nonempty(&self.global_ipv6_address).and_then(|s| s.parse().ok()),
            // Docker reports 0 with an empty address.
            ipv4_prefix_len: self.ip_prefix_len.filter(|len| *len > 0),
            ipv6_prefix_len: self.global_ipv6_prefix_len.filter(|len| *len > 0),
            mac: nonempty(&self.mac_address).map(str::to_owned),
            network_id: nonempty(&self.network_id).map(str::to_owned),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct WireNetworks {
    #[serde(rename = "Networks")]
    pub networks: Option<BTreeMap<String, WireEndpoint>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireHostConfig {
    #[serde(rename = "NetworkMode")]
    pub network_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireHealth {
    #[serde(rename = "Status")]
    pub status: Option<String>,
}

impl WireHealth {
    fn health(&self) -> Option<Health> {
        match self.status.as_deref()? {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        }
    }
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Default, Deserialize)]
pub struct ListEntry {
    #[serde(rename = "Id")]
    pub id: Option<String>,
    #[serde(rename = "Names")]
    pub names: Option<Vec<String>>,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`
    /// or `dead`.
    #[serde(rename = "State")]
    pub state: Option<String>,
    /// Human-readable, such as `Up 5 minutes (healthy)`.
    #[serde(rename = "Status")]
    pub status: Option<String>,
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "HostConfig")]
    pub host_config: Option<WireHostConfig>,
    #[serde(rename = "NetworkSettings")]
    pub network_settings: Option<WireNetworks>,
    /// API 1.52 and later.
    #[serde(rename = "Health")]
    pub health: Option<WireHealth>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireState {
    #[serde(rename = "Running")]
    pub running: Option<bool>,
    #[serde(rename = "Paused")]
    pub paused: Option<bool>,
    #[serde(rename = "Pid")]
    pub pid: Option<i64>,
    #[serde(rename = "Health")]
    pub health: Option<WireHealth>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireConfig {
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `GET /containers/{id}/json`.
#[derive(Debug, Default, Deserialize)]
pub struct Inspect {
    #[serde(rename = "Id")]
    pub id: Option<String>,
    #[serde(rename = "Name")]
    pub name: Option<String>,
    #[serde(rename = "State")]
    pub state: Option<WireState>,
    #[serde(rename = "Config")]
    pub config: Option<WireConfig>,
    #[serde(rename = "HostConfig")]
    pub host_config: Option<WireHostConfig>,
    #[serde(rename = "NetworkSettings")]
    pub network_settings: Option<WireNetworks>,
}

fn kept_labels(labels: Option<BTreeMap<String, String>>, keep: KeepLabel<'_>) -> SmallMap<String> {
    (labels.unwrap_or_default().into_iter())
        .filter(|(key, _)| keep(key))
        .collect()
}

fn network_mode(host_config: Option<&WireHostConfig>) -> NetworkMode {
    NetworkMode::parse(
        host_config
            .and_then(|h| h.network_mode.as_deref())
            .unwrap_or_default(),
    )
}

impl Inspect {
    /// The domain type; `None` without an id.
    pub fn into_container(self, keep: KeepLabel<'_>) -> Option<Container> {
        let id = self.id?;
        let name = (self.name.as_deref().unwrap_or_default())
            .trim_start_matches('/')
            .to_owned();
        let state = self.state.unwrap_or_default();
        let health = (state.health.as_ref())
            .and_then(WireHealth::health)
            .unwrap_or(Health::None);
        let networks = (self.network_settings.and_then(|n| n.networks))
            .unwrap_or_default()
            .into_iter()
            .map(|(network, endpoint)| (network, endpoint.to_endpoint()))
            .collect();
        Some(Container {
            id,
            name,
            running: state.running.unwrap_or(false) && !state.paused.unwrap_or(false),
            health,
            pid: (state.pid)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            labels: kept_labels(self.config.and_then(|c| c.labels), keep),
            networks,
            network_mode: network_mode(self.host_config.as_ref()),
        })
    }
}

/// What the list says about a container that, when it changes, means a
/// cached inspect may be stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub name: String,
    pub state: Option<String>,
    pub health: Health,
    /// Sorted endpoint ids, one per attached network.
    pub endpoints: Vec<String>,
}

impl ListEntry {
    /// The domain type (without a pid, and with the health only as a
    /// hint), plus its change marker; `None` without an id.
    pub fn into_container(self, keep: KeepLabel<'_>) -> Option<(Container, Marker)> {
        let id = self.id?;
        // Links add names such as `/other/alias`; the container's own name
        // is the one without a second slash.
        let names = self.names.unwrap_or_default();
        let name = (names.iter())
            .map(|n| n.trim_start_matches('/'))
            .find(|n| !n.contains('/'))
            .or_else(|| names.first().map(|n| n.trim_start_matches('/')))
            .unwrap_or_default()
            .to_owned();
        let health = (self.health.as_ref().and_then(WireHealth::health))
            .unwrap_or_else(|| health_from_status(self.status.as_deref().unwrap_or_default()));
        let mut endpoints = Vec::new();
        let networks = (self.network_settings.and_then(|n| n.networks))
            .unwrap_or_default()
            .into_iter()
            .map(|(network, endpoint)| {
                endpoints.push(endpoint.endpoint_id.clone().unwrap_or_default());
                (network, endpoint.to_endpoint())
            })
            .collect();
        endpoints.sort();
        let container = Container {
            id,
            name: name.clone(),
            running: self.state.as_deref() == Some("running"),
            health,
            pid: None,
            labels: kept_labels(self.labels, keep),
            networks,
            // The list has it too, so containers that are never inspected
            // (the one a target shares a namespace with) are classified.
            network_mode: network_mode(self.host_config.as_ref()),
        };
        let marker = Marker {
            name,
            state: self.state,
            health,
            endpoints,
        };
        Some((container, marker))
    }
}

/// The health in a list entry's human-readable status, such as
/// `Up 5 minutes (unhealthy)` (the only place it is before API 1.52).
pub fn health_from_status(status: &str) -> Health {
    if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

/// Decodes a list body entry by entry, handing each to `each` as soon as
/// it is read.
pub fn decode_list(body: &[u8], each: impl FnMut(ListEntry)) -> Result<(), serde_json::Error> {
    let mut decoder = serde_json::Deserializer::from_slice(body);
    EachEntry(each).deserialize(&mut decoder)?;
    decoder.end()
}

/// [`decode_list`] for a body read from `body` as it arrives: a list of
/// thousands of containers is megabytes, and is never held whole.
pub fn decode_list_from(
    body: impl std::io::Read,
    each: impl FnMut(ListEntry),
) -> Result<(), serde_json::Error> {
    let body = std::io::BufReader::with_capacity(64 * 1024, body);
    let mut decoder = serde_json::Deserializer::from_reader(body);
    EachEntry(each).deserialize(&mut decoder)?;
    decoder.end()
}

struct EachEntry<F>(F);

impl<'de, F: FnMut(ListEntry)> DeserializeSeed<'de> for EachEntry<F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, decoder: D) -> Result<(), D::Error> {
        decoder.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(ListEntry)> Visitor<'de> for EachEntry<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of containers")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<ListEntry>()? {
            (self.0)(entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
