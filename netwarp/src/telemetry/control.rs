//! The control socket behind `netwarp status`.
//!
//! Why a socket into the running daemon rather than a CLI that inspects
//! the system itself: only the daemon knows its plan — why a target is
//! blocked, which next hop and rules it chose, which veth it tied a target
//! to, which programming failed — and it knows them without re-reading
//! Docker or entering namespaces. A unix socket keeps that local and
//! guarded by file permissions (mode 0600, root only), needs no port, and
//! fails in an obvious way when no daemon runs.
//!
//! The protocol is the simplest that can work: connect, and the daemon
//! writes one JSON document ([`super::status::StatusDoc`]) and closes the
//! connection. Anything the client sends is ignored.
//!
//! Idle clients cannot starve it: every connection is accepted up to a
//! bound, past which the oldest is shed ([`super::admission`]); a client
//! that does not take its document within [`WRITE_TIMEOUT`] is dropped;
//! and clients arriving together share one document instead of each
//! reading the counters.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{io::AsyncWriteExt as _, net::UnixListener};
use tracing::debug;

use super::{
    Shared,
    admission::Admission,
    http::{COUNTERS_TIMEOUT, accept_failed},
    status,
};

/// At most this many connections at once (fewer when the file descriptor
/// limit is low: see [`super::admission::bound`]).
pub const MAX_CONNECTIONS: usize = 256;
/// Its share of the file descriptor limit: at most 1/8.
pub const FD_SHARE: u64 = 8;
/// A client that does not take the document within this is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the socket file when dropped (daemon exit).
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the control socket at `path` with mode 0600. A socket file left
/// by a dead daemon is replaced; one a live daemon answers on is not.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketGuard)> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the control socket", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another netwarp daemon answers on the control socket {} (control.socket); \
                 stop it, or give this one its own socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "cannot bind the control socket {} (control.socket)",
            path.display()
        )
    })?;
    let guard = SocketGuard(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok((listener, guard))
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, connections: Arc<Admission>) {
    let latest = Arc::new(Latest::default());
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed("control socket", &e, &connections).await;
                continue;
            }
        };
        let arrived = Instant::now();
        let (slot, shed, shed_other) = connections.admit();
        if shed_other {
            debug!(
                bound = connections.bound(),
                "control socket: at the connection bound; shed the oldest connection"
            );
        }
        let shared = shared.clone();
        let latest = latest.clone();
        tokio::spawn(async move {
            let exchange = tokio::time::timeout(WRITE_TIMEOUT, async {
                let body = latest.get(arrived, || document(&shared)).await;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            });
            tokio::select! {
                written = exchange => match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "control socket: write failed"),
                    Err(_) => debug!("control socket: client too slow; dropped"),
                },
                _ = shed => debug!("control socket: connection shed"),
            }
            drop(slot);
        });
    }
}

/// The last status document and when building it started. Clients share
/// a document whose building started after they connected, so it is as
/// fresh as one of their own, and a burst of clients costs one counter
/// read rather than one each.
#[derive(Default)]
struct Latest(tokio::sync::Mutex<Option<(Instant, Arc<str>)>>);

impl Latest {
    async fn get<F, Fut>(&self, arrived: Instant, build: F) -> Arc<str>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let mut latest = self.0.lock().await;
        if let Some((started, doc)) = &*latest
            && *started >= arrived
        {
            return doc.clone();
        }
        let started = Instant::now();
        let doc: Arc<str> = build().await.into();
        *latest = Some((started, doc.clone()));
        doc
    }
}

async fn document(shared: &Shared) -> String {
    let published = shared.snapshot();
    let counters = tokio::time::timeout(COUNTERS_TIMEOUT, shared.counters.read(&published.targets))
        .await
        .unwrap_or_default();
    let warp_leaks = shared.counters.read_warp_leaks(&published.warps);
    let doc = status::build(
        &shared.info,
        &shared.metrics,
        &published,
        &counters,
        &warp_leaks,
    );
    let mut body = serde_json::to_string(&doc).unwrap_or_else(|e| {
        serde_json::json!({"error": format!("encoding the status failed: {e}")}).to_string()
    });
    body.push('\n');
    body
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn clients_waiting_together_share_one_document() {
        let latest = Arc::new(Latest::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let build = |builds: Arc<AtomicUsize>| async move {
            let n = builds.fetch_add(1, Ordering::SeqCst);
            // Lets the other clients run and queue behind this build.
            tokio::task::yield_now().await;
            format!("doc {n}")
        };
        let clients: Vec<_> = (0..10)
            .map(|_| {
                let latest = latest.clone();
                let builds = builds.clone();
                let arrived = Instant::now();
                tokio::spawn(async move { latest.get(arrived, || build(builds)).await })
            })
            .collect();
        let mut docs = Vec::new();
        for client in clients {
            docs.push(client.await.expect("no panic"));
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(docs.iter().all(|d| &**d == "doc 0"), "{docs:?}");
    }

    #[tokio::test]
    async fn a_client_never_gets_a_document_older_than_its_connection() {
        let latest = Latest::default();
        let first = latest
            .get(Instant::now(), || async { "old".to_owned() })
            .await;
        assert_eq!(&*first, "old");
        std::thread::sleep(Duration::from_millis(1));
        let later = Instant::now();
        let second = latest.get(later, || async { "new".to_owned() }).await;
        assert_eq!(&*second, "new");
        // One that connected before "new" started building shares it.
        let shared = latest.get(later, || async { "unused".to_owned() }).await;
        assert_eq!(&*shared, "new");
    }
}
