//! The eBPF dataplane: loads netwarp's tc programs and reads their maps.
//!
//! For now it attaches the traffic counters to host-side veths; steering,
//! fail-closed drops and shaping join the same object later.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapError, PerCpuHashMap},
    programs::{ProgramError, SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use netwarp_common::{
    Direction, PROG_TC_FROM_CONTAINER, PROG_TC_TO_CONTAINER, TRAFFIC_MAP, TrafficCounters,
    TrafficKey,
};

/// The object built from `netwarp-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwarp"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "loading netwarp's eBPF object failed: {0}; netwarp needs root or CAP_BPF with \
         CAP_NET_ADMIN and CAP_PERFMON (see `netwarp probe`)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`; the build is inconsistent, rebuild netwarp")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`; the build is inconsistent, rebuild netwarp")]
    MissingMap(&'static str),
    #[error("program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching `{program}` to interface `{interface}` failed: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("reading map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Packets and bytes seen on one host-side interface, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTraffic {
    pub from_container: TrafficCounters,
    pub to_container: TrafficCounters,
}

/// netwarp's loaded programs and the attachments it made.
pub struct EbpfDataplane {
    ebpf: Ebpf,
    /// Links by (interface name, direction); dropping a link detaches it.
    links: HashMap<(String, u32), SchedClassifierLinkId>,
}

impl EbpfDataplane {
    /// Loads every program into the kernel; nothing is attached yet.
    pub fn load() -> Result<Self, EbpfError> {
        let mut ebpf = Ebpf::load(PROGRAMS_OBJECT)?;
        for name in [PROG_TC_FROM_CONTAINER, PROG_TC_TO_CONTAINER] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| EbpfError::Program {
                    program: name,
                    source,
                })?;
        }
        Ok(Self {
            ebpf,
            links: HashMap::new(),
        })
    }

    /// Attaches the counters to both directions of a container's host-side
    /// interface. Attaching twice is a no-op.
    pub fn attach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        for (program, attach_type, direction) in [
            (
                PROG_TC_FROM_CONTAINER,
                TcAttachType::Ingress,
                Direction::FromContainer,
            ),
            (
                PROG_TC_TO_CONTAINER,
                TcAttachType::Egress,
                Direction::ToContainer,
            ),
        ] {
            let key = (interface.to_owned(), direction as u32);
            if self.links.contains_key(&key) {
                continue;
            }
            // On kernels >= 6.6 aya attaches through TCX, which needs no qdisc.
            let link = classifier(&mut self.ebpf, program)?
                .attach(interface, attach_type)
                .map_err(|source| EbpfError::Attach {
                    program,
                    interface: interface.to_owned(),
                    source,
                })?;
            self.links.insert(key, link);
        }
        Ok(())
    }

    /// Detaches the counters from an interface, if they are attached.
    pub fn detach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        for (program, direction) in [
            (PROG_TC_FROM_CONTAINER, Direction::FromContainer),
            (PROG_TC_TO_CONTAINER, Direction::ToContainer),
        ] {
            if let Some(link) = self.links.remove(&(interface.to_owned(), direction as u32)) {
                classifier(&mut self.ebpf, program)?
                    .detach(link)
                    .map_err(|source| EbpfError::Program { program, source })?;
            }
        }
        Ok(())
    }

    /// Reads the counters of one interface, summed over all CPUs.
    pub fn traffic(&self, ifindex: u32) -> Result<InterfaceTraffic, EbpfError> {
        let map = self
            .ebpf
            .map(TRAFFIC_MAP)
            .ok_or(EbpfError::MissingMap(TRAFFIC_MAP))?;
        let map: PerCpuHashMap<_, TrafficKey, TrafficCounters> = PerCpuHashMap::try_from(map)
            .map_err(|source| EbpfError::Map {
                map: TRAFFIC_MAP,
                source,
            })?;
        let read = |direction| -> Result<TrafficCounters, EbpfError> {
            match map.get(&TrafficKey::new(ifindex, direction), 0) {
                Ok(per_cpu) => Ok(per_cpu
                    .iter()
                    .fold(TrafficCounters::default(), |sum, c| sum.saturating_add(*c))),
                Err(MapError::KeyNotFound) => Ok(TrafficCounters::default()),
                Err(source) => Err(EbpfError::Map {
                    map: TRAFFIC_MAP,
                    source,
                }),
            }
        };
        Ok(InterfaceTraffic {
            from_container: read(Direction::FromContainer)?,
            to_container: read(Direction::ToContainer)?,
        })
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program {
            program: name,
            source,
        })
}
