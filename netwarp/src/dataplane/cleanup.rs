//! `netwarp cleanup`: removes netwarp's entries from every running
//! container (its rules, and the routes of its tables), the host's guard
//! rules, the routes of its guard tables and its qdiscs, the XDP pass
//! program on warps' veths, and the eBPF pins; it turns the transmit
//! checksum offload of every target the pins name back on (the XDP hook
//! turns it off). Other entries are only read, never touched.

use std::{collections::BTreeSet, path::Path};

use tracing::{error, info};

use super::{
    caps::CapsError,
    ebpf::Hook,
    host_guard::{remove_host_guards, set_guard_priority},
    netns::{NamespaceClaims, NamespaceHandle, set_host_proc_dir},
    qdisc::remove_every_tbf,
    routes::{Desired, RoutesError, diff},
};
use crate::{
    config::Config,
    docker::{self, DockerError},
    model::Container,
    privileges::{self, MissingCapabilities, ROUTES_CAPABILITIES},
};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    MissingCapabilities(#[from] MissingCapabilities),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cleanup failed in {0} places; see the log above")]
    Failed(usize),
}

pub async fn cleanup(config: &Config) -> Result<(), CleanupError> {
    set_guard_priority(config.host_guard_priority);
    set_host_proc_dir(&config.host_proc_dir);
    privileges::require(ROUTES_CAPABILITIES)?;
    let client = docker::connect(&config.docker, config.docker_api_version).await?;
    let world = docker::snapshot(&client).await?;
    let mut failures = 0;
    // The host's namespace is refused (its guard rules are removed below);
    // a namespace shared by several containers is cleaned once.
    let mut claims = NamespaceClaims::new();
    let targets = programmed_targets(&config.bpf_pin_dir);
    for container in world.containers.iter().filter(|c| c.running) {
        let Some(pid) = container.pid else { continue };
        let (name, id) = (&container.name, container.short_id());
        match clean_container(container, pid, &mut claims, &targets).await {
            Ok(0) => {}
            Ok(removed) => info!(container = %name, %id, removed, "removed netwarp entries"),
            Err(CapsError::Routes(
                e @ (RoutesError::HostNamespace { .. } | RoutesError::NamespaceClaimed { .. }),
            )) => info!(container = %name, %id, reason = %e, "skipped"),
            // A container that exited since the listing took its
            // namespace, and netwarp's entries in it, along.
            Err(_) if !config.host_proc_dir.join(pid.to_string()).exists() => {
                info!(container = %name, %id, "exited during the cleanup; skipped")
            }
            Err(e) => {
                failures += 1;
                error!(container = %name, %id, error = %e, "cleanup failed");
            }
        }
    }
    failures += clean_host().await;
    // The eBPF dataplane's pins: removing a link's pin detaches it.
    let dir = config.bpf_pin_dir.display();
    match std::fs::remove_dir_all(&config.bpf_pin_dir) {
        Ok(()) => info!(%dir, "removed the pinned eBPF maps and links"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            failures += 1;
            error!(%dir, error = %e, "removing the eBPF pins failed");
        }
    }
    if failures > 0 {
        return Err(CleanupError::Failed(failures));
    }
    info!("cleanup complete");
    Ok(())
}

/// The host-side veths the eBPF dataplane programmed as targets', from
/// its pinned links (read before the pins go); none without pins.
fn programmed_targets(pin_dir: &Path) -> BTreeSet<u32> {
    let Ok(links) = std::fs::read_dir(pin_dir.join("links")) else {
        return BTreeSet::new();
    };
    (links.filter_map(Result::ok))
        .filter_map(|entry| Hook::parse_pin(&entry.file_name().to_string_lossy()))
        .filter(|(_, hook)| matches!(hook, Hook::FromContainer | Hook::XdpFromContainer))
        .map(|(ifindex, _)| ifindex)
        .collect()
}

/// Removes netwarp's routes, rules, qdiscs and XDP pass program from one container's
/// namespace. Returns how many entries went.
async fn clean_container(
    container: &Container,
    pid: u32,
    claims: &mut NamespaceClaims,
    targets: &BTreeSet<u32>,
) -> Result<usize, CapsError> {
    let namespace = NamespaceHandle::open_owned(pid, claims, container.short_id()).await?;
    // The XDP hook turns a target's transmit checksum offload off.
    let mut restored = 0;
    for ifindex in namespace.interfaces_with_peers(targets).await? {
        if namespace.set_tx_checksum(ifindex, true).await? {
            restored += 1;
        }
    }
    let installed = namespace.installed().await?;
    let changes = diff(&installed, &Desired::default()).map_err(RoutesError::from)?;
    if !changes.is_empty() {
        namespace.apply(&changes, None).await?;
    }
    let qdiscs = remove_every_tbf(namespace.netlink_handle()?).await?;
    let xdp = super::xdp_pass::remove_all(namespace.netlink_handle()?)
        .await
        .map_err(namespace.netlink("XDP removal"))?;
    Ok(xdp
        + restored
        + changes.delete_rules.len()
        + changes.delete_strays.len()
        + changes.delete_routes.len()
        + changes.nexthops.delete_groups.len()
        + changes.nexthops.delete_hops.len()
        + qdiscs)
}

/// Ingress caps' qdiscs sit on host-side veths; guard rules in the host's
/// rule list, and their prefixes in the guard's tables. Returns the number
/// of failures (0 or 1).
async fn clean_host() -> usize {
    let removed = async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| CapsError::HostNetlink(e.to_string()))?;
        tokio::spawn(connection);
        let qdiscs = remove_every_tbf(&handle).await?;
        let rules = remove_host_guards(&handle)
            .await
            .map_err(|e| CapsError::HostNetlink(e.to_string()))?;
        Ok::<_, CapsError>((qdiscs, rules))
    }
    .await;
    match removed {
        Ok((0, 0)) => 0,
        Ok((qdiscs, guard)) => {
            info!(
                qdiscs,
                guard, "removed netwarp's qdiscs, guard rules and guard routes from the host"
            );
            0
        }
        Err(e) => {
            error!(error = %e, "removing netwarp's qdiscs and guard entries from the host failed");
            1
        }
    }
}
