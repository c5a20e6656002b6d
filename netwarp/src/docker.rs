//! The Docker side: connecting, snapshotting the containers as domain
//! types, and the event stream that only ever *triggers* a reconcile.

use std::{collections::HashMap, ops::Deref, path::PathBuf, time::Duration};

use bollard::{
    API_DEFAULT_VERSION, ClientVersion, Docker,
    models::EventMessage,
    query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions},
};
use futures_util::Stream;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::{
    config::DockerConnection,
    model::World,
    wire::{self, Inspect, ListEntry},
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
    #[error("{what} failed: {detail}")]
    Request { what: String, detail: String },
    #[error(
        "{what}: Docker's answer does not have the expected shape: {source}; is the \
         API version (docker_api_version) one netwarp supports (1.41 or later)?"
    )]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A Docker connection: bollard's client (connection, API version
/// negotiation, events, network inspects, TLS), plus plain GETs for the
/// container list and inspects, whose bodies netwarp decodes itself into
/// only what it reads (see [`crate::wire`]).
pub struct Client {
    docker: Docker,
    /// Keep-alive connections for the plain GETs.
    idle: std::sync::Mutex<Vec<Sender>>,
    /// Where the plain GETs go; `None` over TLS, where bollard fetches and
    /// its models are handed to the same decoder.
    plain: Option<PlainEndpoint>,
}

enum PlainEndpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Deref for Client {
    type Target = Docker;

    fn deref(&self) -> &Docker {
        &self.docker
    }
}

impl Client {
    /// Running containers (`all`: every container), with Docker's
    /// `filters`, each turned into the domain type as it is decoded.
    pub async fn list(
        &self,
        all: bool,
        filters: &HashMap<String, Vec<String>>,
        mut each: impl FnMut(ListEntry),
    ) -> Result<(), DockerError> {
        let what = "listing containers";
        let body = match &self.plain {
            Some(_) => {
                let mut query = format!("all={all}");
                if !filters.is_empty() {
                    let json =
                        serde_json::to_string(filters).map_err(|source| DockerError::Decode {
                            what: what.into(),
                            source,
                        })?;
                    query.push_str("&filters=");
                    query.push_str(&percent_encode(&json));
                }
                match self.get(what, &format!("/containers/json?{query}")).await? {
                    Some(body) => body,
                    None => return Err(request_error(what, "404 Not Found")),
                }
            }
            None => {
                let options = ListContainersOptions {
                    all,
                    filters: (!filters.is_empty()).then(|| filters.clone()),
                    ..Default::default()
                };
                let list = (self.docker.list_containers(Some(options)).await)
                    .map_err(DockerError::List)?;
                to_body(what, &list)?
            }
        };
        wire::decode_list(&body, &mut each).map_err(|source| DockerError::Decode {
            what: what.into(),
            source,
        })
    }

    /// One container's inspect; `None` when it no longer exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<Inspect>, DockerError> {
        let what = format!("inspecting container {}", crate::model::short_id(id));
        let body = match &self.plain {
            Some(_) => match self.get(&what, &format!("/containers/{id}/json")).await? {
                Some(body) => body,
                None => return Ok(None),
            },
            None => match (self.docker)
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => to_body(&what, &inspect)?,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(None),
                Err(e) => return Err(DockerError::List(e)),
            },
        };
        (serde_json::from_slice(&body).map(Some))
            .map_err(|source| DockerError::Decode { what, source })
    }

    /// A plain GET of `path` under the negotiated API version: the body
    /// of a 2xx answer, `None` for a 404, an error naming `what` for the
    /// rest.
    async fn get(&self, what: &str, path: &str) -> Result<Option<Bytes>, DockerError> {
        let version = self.docker.client_version();
        let uri = format!(
            "/v{}.{}{path}",
            version.major_version, version.minor_version
        );
        let request = async {
            let idle = self.idle_connection();
            // A kept connection Docker has closed meanwhile fails before
            // any answer: a GET is repeated on a new one.
            let (answer, sender) = match idle {
                Some(mut sender) => match get_over(&mut sender, &uri).await {
                    Ok(answer) => (answer, sender),
                    Err(_) => {
                        let mut sender = self.connect_plain().await?;
                        (get_over(&mut sender, &uri).await?, sender)
                    }
                },
                None => {
                    let mut sender = self.connect_plain().await?;
                    (get_over(&mut sender, &uri).await?, sender)
                }
            };
            // Kept for the next GET while Docker keeps the connection.
            if !sender.is_closed() {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE_CONNECTIONS {
                    idle.push(sender);
                }
            }
            Ok::<_, BoxError>(answer)
        };
        let timeout = Duration::from_secs(REQUEST_TIMEOUT_SECS);
        let (status, body) = match tokio::time::timeout(timeout, request).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(request_error(what, &e.to_string())),
            Err(_) => return Err(request_error(what, "no answer within the request timeout")),
        };
        match status.as_u16() {
            200..=299 => Ok(Some(body)),
            404 => Ok(None),
            code => {
                // Docker's errors are `{"message": "..."}`.
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                Err(request_error(
                    what,
                    &format!("Docker answered {code}: {message}"),
                ))
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Idle keep-alive connections kept for plain GETs: as many as inspects
/// run at once.
const MAX_IDLE_CONNECTIONS: usize = 16;

impl Client {
    /// A kept connection that is still open.
    fn idle_connection(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A new HTTP/1.1 connection to the plain endpoint.
    async fn connect_plain(&self) -> Result<Sender, BoxError> {
        match self.plain.as_ref().expect("plain GETs have an endpoint") {
            PlainEndpoint::Unix(socket) => {
                handshake(tokio::net::UnixStream::connect(socket).await?).await
            }
            PlainEndpoint::Tcp(address) => {
                handshake(tokio::net::TcpStream::connect(address.as_str()).await?).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; an error shows in the next
        // request's result.
        let _ = connection.await;
    });
    Ok(sender)
}

fn request_error(what: &str, detail: &str) -> DockerError {
    DockerError::Request {
        what: what.to_owned(),
        detail: detail.to_owned(),
    }
}

/// What bollard decoded, as Docker's JSON again (over TLS only).
fn to_body(what: &str, value: &impl serde::Serialize) -> Result<Bytes, DockerError> {
    (serde_json::to_vec(value).map(Bytes::from)).map_err(|source| DockerError::Decode {
        what: what.to_owned(),
        source,
    })
}

/// The largest body buffer allocated up front from a Content-Length; a
/// larger body grows past it as it arrives.
const MAX_PRESIZED_BODY: usize = 256 << 20;

/// One GET on an HTTP/1.1 connection.
async fn get_over(sender: &mut Sender, uri: &str) -> Result<(hyper::StatusCode, Bytes), BoxError> {
    sender.ready().await?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    // Into one buffer of the announced size, frame by frame: collecting
    // the frames first and joining them would hold a large list twice.
    let length = (response.headers().get(hyper::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = response.into_body();
    let mut buffer = Vec::with_capacity(length.min(MAX_PRESIZED_BODY));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok((status, Bytes::from(buffer)))
}

/// A query value with everything but RFC 3986's unreserved characters
/// percent-encoded.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
) -> Result<Client, DockerError> {
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
    let plain = match connection {
        DockerConnection::Unix(path) => Some(PlainEndpoint::Unix(path.into())),
        DockerConnection::Tcp(address) => {
            let address = (["tcp://", "http://"].iter())
                .find_map(|scheme| address.strip_prefix(scheme))
                .unwrap_or(address);
            Some(PlainEndpoint::Tcp(address.trim_end_matches('/').to_owned()))
        }
        DockerConnection::Tls { .. } => None,
    };
    Ok(Client {
        docker: client,
        idle: std::sync::Mutex::new(Vec::new()),
        plain,
    })
}

/// A short description of where Docker is, for messages.
pub fn describe(connection: &DockerConnection) -> String {
    match connection {
        DockerConnection::Unix(path) => format!("unix://{path}"),
        DockerConnection::Tcp(address) => address.clone(),
        DockerConnection::Tls { address, .. } => format!("{address} (tls)"),
    }
}

/// Lists the running containers and inspects each one, keeping every
/// label. A container that disappears between the list and the inspect is
/// simply left out.
pub async fn snapshot(client: &Client) -> Result<World, DockerError> {
    let mut ids = Vec::new();
    client
        .list(false, &HashMap::new(), |entry| ids.extend(entry.id))
        .await?;
    let mut containers = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(inspect) = client.inspect(&id).await? {
            containers.extend(inspect.into_container(&|_| true));
        }
    }
    Ok(World { containers })
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
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["netwarp.target"]}"#),
            "%7B%22label%22%3A%5B%22netwarp.target%22%5D%7D"
        );
        assert_eq!(percent_encode("a-b_c.d~e f"), "a-b_c.d~e%20f");
    }
}
