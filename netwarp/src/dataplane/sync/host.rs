//! The host namespace's netlink socket and netwarp's guard rules there
//! (routes mode), shared by the dataplanes that need them.

use tracing::{info, warn};

use super::FailureReason;
use crate::{
    dataplane::host_guard::{GuardCounts, InstalledGuard, program_host_guards, remove_host_guards},
    plan::GuardPlan,
};

/// A netlink socket in the host's namespace, opened on first use, and
/// what the guard last wrote through it.
#[derive(Default)]
pub struct HostNetlink {
    handle: Option<rtnetlink::Handle>,
    /// What the host guard holds after its last successful write.
    held: Option<GuardCounts>,
    /// The host's guard rules and routes as last written, trusted by the
    /// next write instead of a dump; dropped after a failure and for a
    /// verifying write.
    installed: Option<InstalledGuard>,
}

impl HostNetlink {
    pub fn handle(&mut self) -> Result<&mut rtnetlink::Handle, String> {
        if self.handle.is_none() {
            let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            self.handle = Some(handle);
        }
        Ok(self.handle.as_mut().expect("just set"))
    }

    /// The host guard's rules, tables and routes as last written; `None`
    /// before the first successful write.
    pub fn guard_counts(&self) -> Option<GuardCounts> {
        self.held
    }

    /// Brings the host's guard rules to the plan (the rules are diffed
    /// against what is installed: as last written, or as dumped when
    /// `verify`). Returns whether that succeeded.
    pub async fn program_guards(
        &mut self,
        guards: &[(String, &GuardPlan)],
        verify: bool,
    ) -> Result<(), FailureReason> {
        let known = self.installed.take().filter(|_| !verify);
        let handle = match self.handle() {
            Ok(handle) => handle,
            Err(e) => {
                warn!(error = %e, "no netlink socket for the host's guard rules; will retry");
                return Err(FailureReason::Netlink);
            }
        };
        match program_host_guards(handle, guards, known).await {
            Ok((written, installed)) => {
                self.installed = Some(installed);
                if written.changes > 0 {
                    info!(
                        guards = guards.len(),
                        changes = written.changes,
                        rules = written.held.rules,
                        tables = written.held.tables,
                        routes = written.held.routes,
                        "host guard written"
                    );
                }
                self.held = Some(written.held);
            }
            Err(e) => {
                warn!(error = %e, "programming the host guard rules failed; will retry on the next reconcile");
                return Err(FailureReason::Netlink);
            }
        }
        Ok(())
    }

    /// Removes host guard rules an earlier routes-mode run left.
    pub async fn remove_guards(&mut self) {
        self.installed = None;
        let Ok(handle) = self.handle() else {
            return;
        };
        match remove_host_guards(handle).await {
            Ok(0) => {}
            Ok(removed) => {
                self.held = None;
                info!(removed, "removed the host guard rules of a routes-mode run");
            }
            Err(e) => warn!(error = %e, "removing old host guard rules failed"),
        }
    }
}
