//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1.
//!
//! hyper 1 (already in the tree through bollard's Docker client) with
//! hyper-util's tokio glue: no framework, no extra runtime. Each
//! connection runs in its own task with a header read timeout, a limit on
//! the whole exchange and capped buffers, so a slow, stuck or malformed
//! client costs one task and never the controller. Connections are
//! admitted up to a bound; past it the oldest idle one is shed, never the
//! newcomer ([`super::admission`]), so idle clients cannot lock out a
//! scrape.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{
    Shared,
    admission::{self, Admission},
    metrics,
};

/// At most this many connections at once (fewer when the file descriptor
/// limit is low: see [`admission::bound`]). An idle one costs about 12 KiB.
pub const MAX_CONNECTIONS: usize = 1024;
/// Its share of the file descriptor limit: at most 1/4.
pub const FD_SHARE: u64 = 4;
/// The request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's read buffer grows to at most this (hyper's minimum); a
/// request head larger than that is refused.
const MAX_BUF_SIZE: usize = 8 * 1024;
/// A whole connection (one request; no keep-alive) ends after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Reading the counters for one scrape may take this long.
pub const COUNTERS_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, connections: Arc<Admission>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed("metrics endpoint", &e, &connections).await;
                continue;
            }
        };
        let (slot, shed, shed_other) = connections.admit();
        if shed_other {
            debug!(
                %peer,
                bound = connections.bound(),
                "metrics endpoint: at the connection bound; shed the oldest idle connection"
            );
        }
        let slot = Arc::new(slot);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn({
                let slot = slot.clone();
                move |request| {
                    slot.serving();
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(respond(request, &shared).await) }
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_BUF_SIZE)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                done = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "metrics endpoint: connection failed"),
                    Err(_) => debug!(%peer, "metrics endpoint: connection timed out"),
                },
                _ = shed => debug!(%peer, "metrics endpoint: connection shed"),
            }
            drop(slot);
        });
    }
}

/// After a failed accept(2): out of file descriptors, shed an idle
/// connection to free one and retry soon; otherwise back off instead of
/// spinning.
pub async fn accept_failed(endpoint: &str, error: &std::io::Error, connections: &Admission) {
    let pause = if admission::out_of_fds(error) && connections.shed_idle() {
        warn!(%error, "{endpoint}: out of file descriptors; shed the oldest idle connection");
        Duration::from_millis(10)
    } else {
        warn!(%error, "{endpoint}: accept failed");
        Duration::from_millis(100)
    };
    tokio::time::sleep(pause).await;
}

async fn respond(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {}
        (&Method::GET, "/") => {
            return text(
                StatusCode::OK,
                "netwarp: metrics at /metrics\n".into(),
                "text/plain; charset=utf-8",
            );
        }
        (_, "/metrics") => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET\n".into(),
                "text/plain; charset=utf-8",
            );
        }
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found; metrics are at /metrics\n".into(),
                "text/plain; charset=utf-8",
            );
        }
    }
    let published = shared.snapshot();
    let counters = tokio::time::timeout(COUNTERS_TIMEOUT, shared.counters.read(&published.targets))
        .await
        .unwrap_or_else(|_| {
            warn!("metrics endpoint: reading counters timed out; serving without them");
            Default::default()
        });
    let guard_drops = shared.counters.read_guard_drops(&published.guards);
    let warp_leaks = shared.counters.read_warp_leaks(&published.warps);
    match metrics::render(
        &shared.metrics,
        published,
        counters,
        guard_drops,
        warp_leaks,
    ) {
        Ok(body) => text(StatusCode::OK, body, metrics::CONTENT_TYPE),
        Err(e) => {
            warn!(error = %e, "metrics endpoint: encoding failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
                "text/plain; charset=utf-8",
            )
        }
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
