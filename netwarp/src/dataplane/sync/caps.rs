//! Caps, for the routes and eBPF dataplanes: tbf qdiscs (shaper) in
//! either, BPF token buckets (policer) in eBPF. Remembers what it
//! programmed per container.

use std::collections::{HashMap, HashSet};

use tracing::warn;

use super::{PassScope, host::HostNetlink};
use crate::{
    dataplane::{
        caps::{CapsError, ProgrammedCaps, interfaces, program_ebpf, program_qdiscs},
        ebpf::EbpfDataplane,
        settled::Settled,
    },
    model::{Caps, World, short_id},
    plan::{CapEnforcement, CapPlan},
};

#[derive(Default)]
pub struct CapsState {
    /// Caps last programmed, by container id.
    last: HashMap<String, ProgrammedCaps>,
    /// The plans that produced `last`, to skip unchanged ones.
    settled: Settled<(CapPlan, CapEnforcement)>,
    /// For the ingress qdiscs on host-side veths.
    pub host: HostNetlink,
}

impl CapsState {
    /// The host-side interfaces that carry caps now.
    pub fn host_ifindexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.last.values().flat_map(|c| c.host_ifindexes())
    }

    /// Brings one container's caps to its plan; `policer` is the eBPF
    /// dataplane, when there is one. Returns whether anything changed.
    pub async fn sync(
        &mut self,
        policer: Option<&mut EbpfDataplane>,
        scope: &mut PassScope,
        enforcement: CapEnforcement,
        plan: &CapPlan,
    ) -> Result<bool, CapsError> {
        let settled = (plan.clone(), enforcement);
        if (self.settled).unchanged(&plan.id, &settled, scope.verifies(&plan.id)) {
            return Ok(false);
        }
        let result = self.program(policer, scope, enforcement, plan).await;
        self.settled.record(&plan.id, &settled, &result);
        result
    }

    async fn program(
        &mut self,
        policer: Option<&mut EbpfDataplane>,
        scope: &mut PassScope,
        enforcement: CapEnforcement,
        plan: &CapPlan,
    ) -> Result<bool, CapsError> {
        let Some(pid) = plan.pid else {
            return Ok(false);
        };
        let namespace = scope.owned(pid, short_id(&plan.id)).await?;
        let desired = ProgrammedCaps {
            caps: plan.caps,
            enforcement,
            interfaces: interfaces(&namespace, &plan.macs).await?,
        };
        let previous = self.last.get(&plan.id);
        let changed_caps = previous != Some(&desired);
        let host = self.host.handle().map_err(CapsError::HostNetlink)?;
        let mut policer = policer;
        // A reload switched the enforcement: undo the other mechanism first.
        if let Some(previous) = previous.filter(|p| p.enforcement != enforcement) {
            match (policer.as_deref_mut(), previous.enforcement) {
                (Some(ebpf), CapEnforcement::Policer) => {
                    ebpf.remove_caps(&previous.host_ifindexes())?;
                }
                (ebpf, _) => {
                    let uncapped = ProgrammedCaps {
                        caps: Caps::default(),
                        ..previous.clone()
                    };
                    program_qdiscs(&namespace, host, &uncapped, true).await?;
                    if let Some(ebpf) = ebpf {
                        ebpf.set_ingress_shaped(&previous.host_ifindexes(), false)?;
                    }
                }
            }
        }
        let changed = match (policer, enforcement) {
            (Some(ebpf), CapEnforcement::Policer) => {
                if changed_caps {
                    if let Some(previous) = previous {
                        ebpf.remove_caps(&previous.host_ifindexes())?;
                    }
                    program_ebpf(ebpf, &desired)?;
                }
                changed_caps
            }
            (mut ebpf, _) => {
                // The eBPF dataplane's peer redirects skip a host veth's
                // qdisc: told before an ingress tbf goes on, after it is off.
                let shaped = desired.caps.ingress.is_some();
                if shaped && let Some(ebpf) = ebpf.as_deref_mut() {
                    ebpf.set_ingress_shaped(&desired.host_ifindexes(), true)?;
                }
                let changed = program_qdiscs(&namespace, host, &desired, changed_caps).await?;
                if !shaped && let Some(ebpf) = ebpf {
                    ebpf.set_ingress_shaped(&desired.host_ifindexes(), false)?;
                }
                changed
            }
        };
        self.last.insert(plan.id.clone(), desired);
        Ok(changed)
    }

    /// Uncaps the containers that lost their caps but still run, and
    /// forgets those that left. Returns the caps of containers that left.
    pub async fn release(
        &mut self,
        mut policer: Option<&mut EbpfDataplane>,
        scope: &mut PassScope,
        world: &World,
        wanted: &HashSet<&str>,
        enforcement: CapEnforcement,
    ) -> Vec<ProgrammedCaps> {
        let gone: Vec<String> = (self.last.keys())
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        let mut departed = Vec::new();
        for id in gone {
            self.settled.forget(&id);
            let container = world.containers.iter().find(|c| c.id == id && c.running);
            if let (Some(container), CapEnforcement::Shaper) = (container, enforcement) {
                // Still running without caps (a default was dropped): remove
                // the qdiscs. A stopped container's veths took them along.
                let uncapped = CapPlan {
                    id: id.clone(),
                    name: container.name.clone(),
                    pid: container.pid,
                    macs: (container.networks.values())
                        .filter_map(|e| e.mac.clone())
                        .collect(),
                    caps: Caps::default(),
                    problems: Vec::new(),
                };
                let removed = self
                    .program(
                        policer.as_deref_mut(),
                        scope,
                        CapEnforcement::Shaper,
                        &uncapped,
                    )
                    .await;
                if let Err(e) = removed {
                    warn!(container = %container.name, error = %e, "removing the caps failed; will retry");
                    continue;
                }
            }
            if let Some(programmed) = self.last.remove(&id) {
                if let Some(ebpf) = policer.as_deref_mut()
                    && let Err(e) = ebpf.remove_caps(&programmed.host_ifindexes())
                {
                    warn!(id = %short_id(&id), error = %e, "removing the caps failed");
                }
                departed.push(programmed);
            }
        }
        departed
    }
}
