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
                let path = format!("/containers/json?{query}");
                return self.get_list(what, &path, each).await;
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
        let uri = self.uri(path);
        let request = async {
            let (response, sender) = self.request(&uri).await?;
            let status = response.status();
            let body = read_body(response).await?;
            self.keep(sender);
            Ok::<_, BoxError>((status, body))
        };
        let (status, body) = within_timeout(what, request).await?;
        match status.as_u16() {
            200..=299 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(status_error(what, status, &body)),
        }
    }

    /// A GET of a container list, each entry decoded as the body arrives
    /// and handed to `each` (see [`decode_streamed`]).
    async fn get_list(
        &self,
        what: &str,
        path: &str,
        each: impl FnMut(ListEntry),
    ) -> Result<(), DockerError> {
        let uri = self.uri(path);
        let request = async {
            let (response, sender) =
                (self.request(&uri).await).map_err(|e| request_error(what, &e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                let body =
                    (read_body(response).await).map_err(|e| request_error(what, &e.to_string()))?;
                return Err(status_error(what, status, &body));
            }
            decode_streamed(what, response.into_body(), each).await?;
            self.keep(sender);
            Ok(())
        };
        let timeout = Duration::from_secs(REQUEST_TIMEOUT_SECS);
        (tokio::time::timeout(timeout, request).await)
            .unwrap_or_else(|_| Err(request_error(what, "no answer within the request timeout")))
    }

    /// `path` under the negotiated API version.
    fn uri(&self, path: &str) -> String {
        let version = self.docker.client_version();
        format!(
            "/v{}.{}{path}",
            version.major_version, version.minor_version
        )
    }

    /// Sends a GET on a kept connection, or a new one: the answer with its
    /// body still to read, and the connection, for [`Client::keep`] once
    /// the body is read.
    async fn request(
        &self,
        uri: &str,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Sender), BoxError> {
        // A kept connection Docker has closed meanwhile fails before any
        // answer: a GET is repeated on a new one.
        if let Some(mut sender) = self.idle_connection()
            && let Ok(response) = send_get(&mut sender, uri).await
        {
            return Ok((response, sender));
        }
        let mut sender = self.connect_plain().await?;
        let response = send_get(&mut sender, uri).await?;
        Ok((response, sender))
    }

    /// Keeps a connection whose answer was read for the next GET, while
    /// Docker keeps it open.
    fn keep(&self, sender: Sender) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(sender);
            }
        }
    }
}

/// `request` within the request timeout; an error names `what`.
async fn within_timeout<T>(
    what: &str,
    request: impl Future<Output = Result<T, impl std::fmt::Display>>,
) -> Result<T, DockerError> {
    let timeout = Duration::from_secs(REQUEST_TIMEOUT_SECS);
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(request_error(what, &e.to_string())),
        Err(_) => Err(request_error(what, "no answer within the request timeout")),
    }
}

/// A non-2xx answer as an error: Docker's errors are `{"message": "..."}`.
fn status_error(what: &str, status: hyper::StatusCode, body: &[u8]) -> DockerError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    request_error(
        what,
        &format!("Docker answered {}: {message}", status.as_u16()),
    )
}

/// Body chunks in flight between the connection and the list decoder.
const STREAM_CHUNKS: usize = 2;
/// Decoded entries go to the caller in batches of this many (one wake-up
/// per batch, not per entry), a few batches in flight.
const STREAM_BATCH: usize = 64;
const STREAM_BATCHES: usize = 4;

/// Decodes a list `body` while it arrives: the decoder (serde_json, which
/// reads synchronously) runs on a blocking thread and reads the chunks as
/// the connection yields them, and each entry comes back to `each` on
/// this task. Only a few chunks and entries are in flight at once, never
/// the whole body.
async fn decode_streamed<B>(
    what: &str,
    mut body: B,
    mut each: impl FnMut(ListEntry),
) -> Result<(), DockerError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (chunks, chunks_out) = tokio::sync::mpsc::channel::<Bytes>(STREAM_CHUNKS);
    let (batches_in, mut batches) = tokio::sync::mpsc::channel::<Vec<ListEntry>>(STREAM_BATCHES);
    let decoder = tokio::task::spawn_blocking(move || {
        let body = ChunkReader {
            chunks: chunks_out,
            current: Bytes::new(),
        };
        // A closed channel: the caller is gone, and the rest is moot.
        let mut batch = Vec::with_capacity(STREAM_BATCH);
        let decoded = wire::decode_list_from(body, |entry| {
            batch.push(entry);
            if batch.len() == STREAM_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(STREAM_BATCH));
                let _ = batches_in.blocking_send(full);
            }
        });
        if !batch.is_empty() {
            let _ = batches_in.blocking_send(batch);
        }
        decoded
    });
    let pump = async move {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            // The decoder stopped early: its error says why.
            if let Ok(data) = frame.into_data()
                && chunks.send(data).await.is_err()
            {
                break;
            }
        }
        // Dropping `chunks` ends the body for the decoder.
        Ok::<_, String>(())
    };
    let consume = async {
        while let Some(batch) = batches.recv().await {
            batch.into_iter().for_each(&mut each);
        }
    };
    let (pumped, ()) = tokio::join!(pump, consume);
    let decoded = (decoder.await).map_err(|e| request_error(what, &e.to_string()))?;
    pumped.map_err(|e| request_error(what, &e))?;
    decoded.map_err(|source| DockerError::Decode {
        what: what.into(),
        source,
    })
}

/// The body chunks a connection yields, as a blocking reader.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                // The end of the body.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
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

/// Sends one GET on an HTTP/1.1 connection; the body is still to read.
async fn send_get(
    sender: &mut Sender,
    uri: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, BoxError> {
    sender.ready().await?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?)
}

/// An answer's whole body.
async fn read_body(response: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, BoxError> {
    // Into one buffer of the announced size, frame by frame: collecting
    // the frames first and joining them would hold a large body twice.
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
    Ok(Bytes::from(buffer))
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
    // A created target is a dormant one, which its bridge guard covers
    // before it starts; a partial pass lists only what events name.
    "create",
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

    const LIST: &str = include_str!("wire/fixtures/list-1.52.json");

    type Frame = Result<hyper::body::Frame<Bytes>, String>;
    type Chunked =
        http_body_util::StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Frame>>>;

    /// `body` in chunks of `step` bytes, then `end` (an error) if given.
    fn chunked(body: &str, step: usize, end: Option<&str>) -> Chunked {
        let mut frames: Vec<Frame> = (body.as_bytes().chunks(step))
            .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.extend(end.map(|e| Err(e.to_owned())));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    fn ids(body: &str) -> Vec<String> {
        let mut ids = Vec::new();
        wire::decode_list(body.as_bytes(), |e| ids.extend(e.id)).unwrap();
        ids
    }

    #[tokio::test]
    async fn a_list_is_decoded_as_its_chunks_arrive() {
        for step in [1, 5, 1 << 16] {
            let mut listed = Vec::new();
            decode_streamed("listing", chunked(LIST, step, None), |e| {
                listed.extend(e.id)
            })
            .await
            .unwrap();
            assert!(!listed.is_empty());
            assert_eq!(listed, ids(LIST), "{step}");
        }
    }

    #[tokio::test]
    async fn a_list_cut_short_or_malformed_says_which() {
        let cut = &LIST[..LIST.len() / 2];
        let error = decode_streamed("listing", chunked(cut, 9, Some("connection reset")), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&error, DockerError::Request { detail, .. } if detail == "connection reset"),
            "{error}"
        );
        let error = decode_streamed("listing", chunked(cut, 9, None), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, DockerError::Decode { .. }), "{error}");
        let error = decode_streamed("listing", chunked("[{\"Id\": 5}]", 3, None), |_| {})
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
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
