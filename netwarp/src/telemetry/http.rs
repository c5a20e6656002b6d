//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1.
//!
//! hyper 1 (already in the tree through bollard's Docker client) with
//! hyper-util's tokio glue: no framework, no extra runtime. Each
//! connection runs in its own task with a header read timeout, a limit on
//! the whole exchange and a cap on concurrent connections, so a slow,
//! stuck or malformed client costs one task and never the controller.

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
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use super::{Shared, metrics};

/// At most this many connections are served at once; more are closed.
const MAX_CONNECTIONS: usize = 16;
/// The request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (one request; no keep-alive) ends after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Reading the counters for one scrape may take this long.
pub const COUNTERS_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics endpoint: too many connections; closing this one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(request, &shared).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics endpoint: connection failed"),
                Err(_) => debug!(%peer, "metrics endpoint: connection timed out"),
            }
        });
    }
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
