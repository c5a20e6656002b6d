//! A simulated Docker Engine API on a unix socket, **for scale simulation
//! and unit tests only**: it never stands in for a real engine in an
//! end-to-end test.
//!
//! It speaks the subset of the API that netwarp (through bollard) uses, in
//! the shapes of API 1.41 (Docker 20.10), with or without a `/v1.xx`
//! prefix: `/_ping`, `/version` (which offers 1.41, so bollard's
//! negotiation settles there), `GET /containers/json` (`all=true` too;
//! `label`, `status` and `id` filters honoured), `GET /networks/{id}` (a bridge
//! network by id or name),
//! `GET /containers/{id}/json` (404 with Docker's JSON message when
//! missing) and a streaming `GET /events` (one JSON object per line with
//! `timeNano`; `type` and `event` filters honoured). Anything else gets a
//! 404 and is counted, so a harness can report requests it did not expect.
//!
//! The server is hyper 1's own HTTP/1.1 server (`server`, `http1`) on a
//! tokio `UnixListener`: the same hyper that bollard's client already
//! uses, so no new crate, and chunked streaming for `/events` comes for
//! free. It runs on its own tokio runtime (one worker), so synchronous
//! tests and the bench binary can drive it.
//!
//! State changes happen before their events are sent, as in Docker. Each
//! events subscriber has a bounded queue; a sender waits when it is full
//! (backpressure, like a slow socket), so a storm cannot grow memory
//! without bound on either side.
mod world;

use std::{
    collections::HashSet,
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use netwarp::model::{Health, World};
use tokio::sync::mpsc;
pub use world::{NETWORK_LABEL, RULES_LABEL, Role, TARGET_LABEL, WorldSpec};

/// The API version the fake offers.
pub const API_VERSION: &str = "1.41";

/// Requests served, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    pub ping: AtomicU64,
    pub version: AtomicU64,
    pub list: AtomicU64,
    pub inspect: AtomicU64,
    pub inspect_missing: AtomicU64,
    pub events_subscriptions: AtomicU64,
    pub events_sent: AtomicU64,
    pub unexpected: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub ping: u64,
    pub version: u64,
    pub list: u64,
    pub inspect: u64,
    pub inspect_missing: u64,
    pub events_subscriptions: u64,
    pub events_sent: u64,
    pub unexpected: u64,
}

impl CounterSnapshot {
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            ping: self.ping - earlier.ping,
            version: self.version - earlier.version,
            list: self.list - earlier.list,
            inspect: self.inspect - earlier.inspect,
            inspect_missing: self.inspect_missing - earlier.inspect_missing,
            events_subscriptions: self.events_subscriptions - earlier.events_subscriptions,
            events_sent: self.events_sent - earlier.events_sent,
            unexpected: self.unexpected - earlier.unexpected,
        }
    }
}

struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    /// `None`: no filter on that field.
    types: Option<HashSet<String>>,
    actions: Option<HashSet<String>>,
}

impl Subscriber {
    fn wants(&self, kind: &str, action: &str) -> bool {
        // Docker matches `health_status: healthy` against `health_status`.
        let base = action.split(':').next().unwrap_or(action).trim();
        self.types.as_ref().is_none_or(|t| t.contains(kind))
            && self
                .actions
                .as_ref()
                .is_none_or(|a| a.contains(action) || a.contains(base))
    }
}

struct Shared {
    state: Mutex<world::State>,
    /// The last list body per `all`, with the generation it was built at.
    list_cache: Mutex<[Option<(u64, Bytes)>; 2]>,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    counters: Counters,
}

/// Per-subscriber queue of event lines.
const SUBSCRIBER_QUEUE: usize = 4096;

pub struct FakeDocker {
    socket: PathBuf,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What a storm did.
#[derive(Clone, Debug, Default)]
pub struct StormReport {
    /// Events delivered to subscribers (each event counts once per subscriber).
    pub events_sent: u64,
    /// State changes behind them.
    pub changes: u64,
    pub elapsed: Duration,
}

/// A bounded event storm: about `rate` events per second for `duration`,
/// each with a state change behind it.
#[derive(Clone, Debug)]
pub struct StormSpec {
    pub rate: u64,
    pub duration: Duration,
    pub seed: u64,
}

impl FakeDocker {
    /// Starts serving `spec`'s world on a new socket in `dir`.
    pub fn start(dir: &Path, spec: &WorldSpec) -> anyhow::Result<Self> {
        let socket = dir.join("fake-docker.sock");
        let _ = std::fs::remove_file(&socket);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-docker")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(world::State::generate(spec)),
            list_cache: Mutex::new([None, None]),
            subscribers: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket) })?;
        let server_shared = Arc::clone(&shared);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&server_shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(route(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            socket,
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            ping: get(&c.ping),
            version: get(&c.version),
            list: get(&c.list),
            inspect: get(&c.inspect),
            inspect_missing: get(&c.inspect_missing),
            events_subscriptions: get(&c.events_subscriptions),
            events_sent: get(&c.events_sent),
            unexpected: get(&c.unexpected),
        }
    }

    /// What netwarp should see now.
    pub fn truth(&self) -> World {
        self.shared.state.lock().expect("state").truth()
    }

    /// The fake's own expectation per running target: `steered` or `blocked`.
    pub fn expected_states(&self) -> std::collections::BTreeMap<String, &'static str> {
        self.shared.state.lock().expect("state").expected_states()
    }

    /// Ids of the containers with `role`, running or not.
    pub fn ids(&self, role: Role) -> Vec<String> {
        let state = self.shared.state.lock().expect("state");
        state
            .containers
            .iter()
            .filter(|c| c.role == role)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Event subscribers connected now.
    pub fn subscribers(&self) -> usize {
        let mut subs = self.shared.subscribers.lock().expect("subscribers");
        subs.retain(|s| !s.tx.is_closed());
        subs.len()
    }

    /// Restarts a container (new pid, new endpoint ids): `die`, then `start`.
    pub fn restart(&self, id: &str) {
        self.change(id, |state, i| {
            state.stop(i);
            let die = state.event_json(i, "die");
            state.start(i);
            vec![die, state.event_json(i, "start")]
        });
    }

    pub fn stop(&self, id: &str) {
        self.change(id, |state, i| {
            state.stop(i);
            vec![state.event_json(i, "die"), state.event_json(i, "stop")]
        });
    }

    pub fn start_container(&self, id: &str) {
        self.change(id, |state, i| {
            state.start(i);
            vec![state.event_json(i, "start")]
        });
    }

    pub fn set_health(&self, id: &str, health: Health) {
        self.change(id, |state, i| {
            state.set_health(i, health);
            let word = match health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                _ => "starting",
            };
            vec![state.event_json(i, &format!("health_status: {word}"))]
        });
    }

    fn change(
        &self,
        id: &str,
        apply: impl FnOnce(&mut world::State, usize) -> Vec<(&'static str, String, Vec<u8>)>,
    ) {
        let events = {
            let mut state = self.shared.state.lock().expect("state");
            let i = state
                .find(id)
                .unwrap_or_else(|| panic!("no container {id}"));
            apply(&mut state, i)
        };
        let shared = Arc::clone(&self.shared);
        self.runtime().block_on(async move {
            for (kind, action, line) in events {
                emit(&shared, kind, &action, Bytes::from(line)).await;
            }
        });
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("running")
    }

    /// Runs a bounded storm: in 10 ms ticks, `rate / 100` events, each
    /// behind a change: restarts and stop/starts of targets, health flips
    /// and stop/starts of warps, and restarts of unrelated containers.
    pub fn storm(&self, spec: &StormSpec) -> StormReport {
        let targets = self.ids(Role::Target);
        let warps = self.ids(Role::Warp);
        let others = self.ids(Role::Unrelated);
        let mut rng = spec.seed | 1;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        let started = Instant::now();
        let sent_before = self.counters().events_sent;
        let total = spec.rate * spec.duration.as_millis() as u64 / 1000;
        let per_tick = (spec.rate / 100).max(1);
        let mut events = 0u64;
        let mut changes = 0u64;
        let mut tick = 0u64;
        while events < total {
            let mut batch = Vec::new();
            {
                let mut state = self.shared.state.lock().expect("state");
                let mut in_tick = 0;
                while in_tick < per_tick && events + in_tick < total {
                    let roll = next(100);
                    let (pool, is_warp) = match roll {
                        0..=44 => (&others, false),
                        45..=89 => (&targets, false),
                        _ => (&warps, true),
                    };
                    let i = state.find(&pool[next(pool.len())]).expect("known");
                    let running = state.containers[i].running;
                    let produced = if is_warp && roll < 97 && running {
                        let health = if state.containers[i].health == Some(Health::Unhealthy) {
                            Health::Healthy
                        } else {
                            Health::Unhealthy
                        };
                        state.set_health(i, health);
                        let word = if health == Health::Healthy {
                            "healthy"
                        } else {
                            "unhealthy"
                        };
                        vec![state.event_json(i, &format!("health_status: {word}"))]
                    } else if !running {
                        state.start(i);
                        vec![state.event_json(i, "start")]
                    } else if roll % 3 == 0 {
                        state.stop(i);
                        vec![state.event_json(i, "die")]
                    } else {
                        state.stop(i);
                        let die = state.event_json(i, "die");
                        state.start(i);
                        vec![die, state.event_json(i, "start")]
                    };
                    changes += 1;
                    in_tick += produced.len() as u64;
                    batch.extend(produced);
                }
                events += in_tick;
            }
            let shared = Arc::clone(&self.shared);
            self.runtime().block_on(async move {
                for (kind, action, line) in batch {
                    emit(&shared, kind, &action, Bytes::from(line)).await;
                }
            });
            tick += 1;
            let due = Duration::from_millis(10 * tick);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        StormReport {
            events_sent: self.counters().events_sent - sent_before,
            changes,
            elapsed: started.elapsed(),
        }
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn emit(shared: &Shared, kind: &str, action: &str, line: Bytes) {
    let subscribers: Vec<Arc<Subscriber>> = shared
        .subscribers
        .lock()
        .expect("subscribers")
        .iter()
        .filter(|s| s.wants(kind, action))
        .cloned()
        .collect();
    for s in subscribers {
        if s.tx.send(line.clone()).await.is_ok() {
            shared.counters.events_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Api-Version", API_VERSION)
        .header("Server", "Docker/20.10.24+netwarp-fake (linux)")
        .body(Full::new(body.into()).boxed())
        .expect("valid response")
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "message": text })).expect("json"),
    )
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let counters = &shared.counters;
    let path = req.uri().path();
    // bollard prefixes every path with the negotiated `/v1.xx`.
    let path = match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => path,
    };
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/_ping") => {
            counters.ping.fetch_add(1, Ordering::Relaxed);
            Response::builder()
                .header("Content-Type", "text/plain; charset=utf-8")
                .header("Api-Version", API_VERSION)
                .header("Cache-Control", "no-cache, no-store, must-revalidate")
                .body(Full::new(Bytes::from_static(b"OK")).boxed())
                .expect("valid response")
        }
        (&Method::GET, "/version") => {
            counters.version.fetch_add(1, Ordering::Relaxed);
            json(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({
                    "Platform": {"Name": "netwarp fake Docker API (simulation)"},
                    "Version": "20.10.24+netwarp-fake",
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.12",
                    "Os": "linux",
                    "Arch": "amd64",
                    "KernelVersion": "simulated",
                    "Components": [],
                }))
                .expect("json"),
            )
        }
        (&Method::GET, "/containers/json") => {
            counters.list.fetch_add(1, Ordering::Relaxed);
            let all = matches!(query_param(query, "all").as_deref(), Some("1" | "true"));
            let filters: Option<serde_json::Value> =
                query_param(query, "filters").and_then(|f| serde_json::from_str(&f).ok());
            if let Some(filters) = filters {
                let values = |key: &str| -> Vec<String> {
                    filters
                        .get(key)
                        .and_then(|v| v.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let state = shared.state.lock().expect("state");
                let body = state.list_json_filtered(
                    all,
                    &values("label"),
                    &values("status"),
                    &values("id"),
                );
                return json(StatusCode::OK, Bytes::from(body));
            }
            let generation = shared.state.lock().expect("state").generation;
            let cached = shared.list_cache.lock().expect("cache")[all as usize]
                .as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, body)| body.clone());
            let body = cached.unwrap_or_else(|| {
                let state = shared.state.lock().expect("state");
                let body = Bytes::from(state.list_json(all));
                shared.list_cache.lock().expect("cache")[all as usize] =
                    Some((state.generation, body.clone()));
                body
            });
            json(StatusCode::OK, body)
        }
        (&Method::GET, "/events") => {
            counters
                .events_subscriptions
                .fetch_add(1, Ordering::Relaxed);
            let filters: serde_json::Value = query_param(query, "filters")
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default();
            let set = |key: &str| -> Option<HashSet<String>> {
                let values = filters.get(key)?;
                // Docker accepts both ["a","b"] and {"a":true,"b":true}.
                let names: HashSet<String> = match values {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                    serde_json::Value::Object(o) => o.keys().cloned().collect(),
                    _ => return None,
                };
                Some(names)
            };
            let (tx, rx) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
            shared
                .subscribers
                .lock()
                .expect("subscribers")
                .push(Arc::new(Subscriber {
                    tx,
                    types: set("type"),
                    actions: set("event"),
                }));
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let line = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(line)), rx))
            });
            Response::builder()
                .header("Content-Type", "application/json")
                .header("Api-Version", API_VERSION)
                .body(StreamBody::new(stream).boxed())
                .expect("valid response")
        }
        (&Method::GET, p) if p.starts_with("/containers/") && p.ends_with("/json") => {
            counters.inspect.fetch_add(1, Ordering::Relaxed);
            let key = &p["/containers/".len()..p.len() - "/json".len()];
            let state = shared.state.lock().expect("state");
            match state.find(key) {
                Some(i) => json(StatusCode::OK, state.inspect_json(i)),
                None => {
                    counters.inspect_missing.fetch_add(1, Ordering::Relaxed);
                    message(StatusCode::NOT_FOUND, &format!("No such container: {key}"))
                }
            }
        }
        (&Method::GET, p) if p.starts_with("/networks/") => {
            let key = &p["/networks/".len()..];
            let state = shared.state.lock().expect("state");
            match state.network_json(key) {
                Some(body) => json(StatusCode::OK, body),
                None => message(StatusCode::NOT_FOUND, &format!("network {key} not found")),
            }
        }
        _ => {
            counters.unexpected.fetch_add(1, Ordering::Relaxed);
            message(StatusCode::NOT_FOUND, "page not found")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = "all=true&filters=%7B%22type%22%3A%5B%22container%22%5D%7D";
        assert_eq!(query_param(q, "all").as_deref(), Some("true"));
        assert_eq!(
            query_param(q, "filters").as_deref(),
            Some(r#"{"type":["container"]}"#)
        );
        assert_eq!(query_param(q, "since"), None);
    }

    #[test]
    fn health_events_match_the_health_status_filter() {
        let (tx, _rx) = mpsc::channel(1);
        let s = Subscriber {
            tx,
            types: Some(["container".to_owned()].into()),
            actions: Some(["health_status".to_owned(), "start".to_owned()].into()),
        };
        assert!(s.wants("container", "health_status: unhealthy"));
        assert!(s.wants("container", "start"));
        assert!(!s.wants("container", "exec_start"));
        assert!(!s.wants("image", "start"));
    }
}
