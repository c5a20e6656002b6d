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

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, sync::Semaphore};
use tracing::{debug, warn};

use super::{Shared, http::COUNTERS_TIMEOUT, status};

const MAX_CONNECTIONS: usize = 8;
/// A client that does not take the document within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("control socket: too many connections; closing this one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let body = document(&shared).await;
            let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "control socket: write failed"),
                Err(_) => debug!("control socket: client too slow; dropped"),
            }
        });
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
