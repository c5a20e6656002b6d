//! The Docker side: connecting, snapshotting the containers as domain
//! types, and the event stream that only ever *triggers* a reconcile.

use std::{collections::BTreeMap, time::Duration};

use bollard::{
    API_DEFAULT_VERSION, ClientVersion, Docker,
    models::{ContainerInspectResponse, EndpointSettings, EventMessage, HealthStatusEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::Stream;

use crate::{
    config::DockerConnection,
    model::{Container, Endpoint, Health, NetworkMode, World},
};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot set up the Docker client for {endpoint}: {source}")]
    Client {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "Docker at {endpoint} does not answer: {source}; is dockerd running, and may \
         netwarp use its socket (root or the docker group)?"
    )]
    Unreachable {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("listing containers failed: {0}")]
    List(#[source] bollard::errors::Error),
}

/// Request timeout for the Docker API, in seconds.
const REQUEST_TIMEOUT_SECS: u64 = 30;

/// Event actions that can change what netwarp should program.
const RELEVANT_EVENTS: &[&str] = &[
    "start",
    "die",
    "stop",
    "kill",
    "restart",
    "destroy",
    "pause",
    "unpause",
    "connect",
    "disconnect",
    "health_status",
    "rename",
];

/// Connects, then negotiates the API version unless one is pinned.
pub async fn connect(
    connection: &DockerConnection,
    api_version: Option<(usize, usize)>,
) -> Result<Docker, DockerError> {
    let version = match api_version {
        Some((major_version, minor_version)) => ClientVersion {
            major_version,
            minor_version,
        },
        None => *API_DEFAULT_VERSION,
    };
    let endpoint = describe(connection);
    let client = match connection {
        DockerConnection::Unix(path) => {
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, &version)
        }
        DockerConnection::Tcp(address) => {
            Docker::connect_with_http(address, REQUEST_TIMEOUT_SECS, &version)
        }
        DockerConnection::Tls {
            address,
            ca,
            cert,
            key,
        } => Docker::connect_with_ssl(address, key, cert, ca, REQUEST_TIMEOUT_SECS, &version),
    }
    .map_err(|source| DockerError::Client {
        endpoint: endpoint.clone(),
        source,
    })?;
    let client = if api_version.is_none() {
        client
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Unreachable {
                endpoint: endpoint.clone(),
                source,
            })?
    } else {
        client
    };
    client
        .ping()
        .await
        .map_err(|source| DockerError::Unreachable { endpoint, source })?;
    Ok(client)
}

/// A short description of where Docker is, for messages.
pub fn describe(connection: &DockerConnection) -> String {
    match connection {
        DockerConnection::Unix(path) => format!("unix://{path}"),
        DockerConnection::Tcp(address) => address.clone(),
        DockerConnection::Tls { address, .. } => format!("{address} (tls)"),
    }
}

/// Lists the running containers and inspects each one. A container that
/// disappears between the list and the inspect is simply left out.
pub async fn snapshot(docker: &Docker) -> Result<World, DockerError> {
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(DockerError::List)?;
    let mut containers = Vec::with_capacity(summaries.len());
    for id in summaries.into_iter().filter_map(|s| s.id) {
        match docker.inspect_container(&id, None).await {
            Ok(inspect) => containers.extend(to_container(inspect)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(DockerError::List(e)),
        }
    }
    Ok(World { containers })
}

/// Turns Docker's inspect output into the domain type.
pub fn to_container(inspect: ContainerInspectResponse) -> Option<Container> {
    let id = inspect.id?;
    let name = inspect
        .name
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let state = inspect.state.unwrap_or_default();
    let health = match state.health.and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::None,
    };
    let network_mode = NetworkMode::parse(
        inspect
            .host_config
            .and_then(|h| h.network_mode)
            .as_deref()
            .unwrap_or_default(),
    );
    let labels = inspect
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    let networks = inspect
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(network, endpoint)| (network, to_endpoint(endpoint)))
        .collect();
    Some(Container {
        id,
        name,
        running: state.running.unwrap_or(false) && !state.paused.unwrap_or(false),
        health,
        pid: state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
        labels,
        networks,
        network_mode,
    })
}

/// Turns one of Docker's endpoint settings (inspect or list) into the domain type.
pub fn to_endpoint(endpoint: EndpointSettings) -> Endpoint {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Endpoint {
        ipv4: nonempty(endpoint.ip_address).and_then(|s| s.parse().ok()),
        ipv6: nonempty(endpoint.global_ipv6_address).and_then(|s| s.parse().ok()),
        mac: nonempty(endpoint.mac_address),
        network_id: nonempty(endpoint.network_id),
    }
}

/// Container and network events that may change the plan. The stream ends
/// or yields an error when the connection drops.
pub fn events(
    docker: &Docker,
) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> + use<> {
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "type".to_owned(),
        vec!["container".to_owned(), "network".to_owned()],
    );
    filters.insert(
        "event".to_owned(),
        RELEVANT_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
    );
    docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }))
}

/// Capped exponential backoff with full jitter, for reconnecting.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            | 1;
        Self {
            attempt: 0,
            base,
            cap,
            seed,
        }
    }

    /// The next delay: uniform in [ceiling/2, ceiling], where the ceiling
    /// doubles per attempt up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = ceiling / 2;
        let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(self.seed % half_nanos)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << i)
                .min(Duration::from_secs(5));
            assert!(
                *d >= ceiling / 2 && *d <= ceiling,
                "attempt {i}: {d:?} vs {ceiling:?}"
            );
        }
        assert!(delays[11] >= Duration::from_millis(2500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn inspect_output_becomes_a_container() {
        let json = serde_json::json!({
            "Id": "0123456789abcdef",
            "Name": "/warp-vpn",
            "State": {"Running": true, "Paused": false, "Pid": 4242, "Health": {"Status": "unhealthy"}},
            "Config": {"Labels": {"netwarp.network": "front"}},
            "NetworkSettings": {"Networks": {
                "front": {"IPAddress": "172.20.0.2", "GlobalIPv6Address": "", "MacAddress": "02:42:ac:14:00:02"},
                "back": {"IPAddress": "172.21.0.2", "GlobalIPv6Address": "fd00::2", "MacAddress": ""}
            }}
        });
        let inspect: ContainerInspectResponse = serde_json::from_value(json).unwrap();
        let c = to_container(inspect).unwrap();
        assert_eq!(c.name, "warp-vpn");
        assert_eq!(c.short_id(), "0123456789ab");
        assert!(c.running);
        assert_eq!(c.health, Health::Unhealthy);
        assert_eq!(c.pid, Some(4242));
        assert_eq!(
            c.networks["front"].ipv4,
            Some("172.20.0.2".parse().unwrap())
        );
        assert_eq!(c.networks["front"].ipv6, None);
        assert_eq!(c.networks["back"].ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(c.networks["back"].mac, None);
        assert_eq!(c.network_mode, NetworkMode::Own, "no HostConfig");
    }

    #[test]
    fn the_network_mode_is_read_from_the_host_config() {
        for (mode, expected) in [
            ("host", NetworkMode::Host),
            ("none", NetworkMode::NoNetwork),
            (
                "container:0123abcd",
                NetworkMode::Container("0123abcd".into()),
            ),
            ("bridge", NetworkMode::Own),
            ("default", NetworkMode::Own),
            ("my-net", NetworkMode::Own),
        ] {
            let inspect: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
                "Id": "0123456789abcdef", "Name": "/x", "HostConfig": {"NetworkMode": mode}
            }))
            .unwrap();
            assert_eq!(
                to_container(inspect).unwrap().network_mode,
                expected,
                "{mode}"
            );
        }
    }
}
