//! The eBPF dataplane: loads netwarp's tc programs, attaches them to
//! host-side veths, writes each target's policy and reads the counters.
//!
//! The program on a target's veth counts, then steers matching packets to
//! the warp's veth (rewriting the destination MAC) or drops them while the
//! warp is unusable. Interfaces without a policy are only counted.
//!
//! The program on a guarded network's bridge (ingress: what containers
//! send to be routed) drops traffic to the network's steered prefixes from
//! sources netwarp does not know, i.e. targets it has not programmed yet.
//!
//! The program on each of a warp's veths (see [`warp`]) drops what the warp
//! forwards of its targets' steered traffic untransformed, and delivers
//! what the warp sends to a target straight to the target's veth.
pub mod compile;
mod warp;

pub use warp::warp_peer_key;

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap as BpfHashMap, MapError, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, qdisc_add_clsact},
    },
};
use netwarp_common::{
    Direction, GUARD_ALLOW_MAP, GUARD_DROPS_MAP, GUARDS_MAP, GuardAllowKey, POLICY_MAP,
    PROG_TC_BRIDGE_GUARD, PROG_TC_FROM_CONTAINER, PROG_TC_FROM_WARP, PROG_TC_TO_CONTAINER,
    RATE_BUCKETS_MAP, RATE_SLOTS_MAP, RULE_SET_BITS, RULES_V4_MAP, RULES_V6_MAP, RateBuckets,
    RuleKeyV4, RuleKeyV6, RuleValue, TRAFFIC_MAP, TargetPolicy, TrafficCounters, TrafficKey,
    VERDICTS_MAP, VerdictCounters, WARP_LEAKS_MAP, WARP_PEERS_MAP, WarpPeerKey,
};

use compile::CompiledPrefix;

/// The object built from `netwarp-ebpf` by build.rs.
static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwarp-programs"));

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
    #[error("no host interface has ifindex {0}; the container's veth is gone")]
    NoInterface(u32),
    #[error("no host interface is named {0}")]
    NoInterfaceNamed(String),
    #[error(
        "cannot use the pin directory {path}: {source}; is bpffs mounted at /sys/fs/bpf \
         (`mount -t bpf bpf /sys/fs/bpf`)?"
    )]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning a link at {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("map `{map}`: {source}")]
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

/// The programs attached once per interface (tc ingress), each with the
/// pin name suffix of its link (`<ifindex>-guard`, `<ifindex>-warp`).
const SINGLE_ATTACHMENTS: [(&str, &str); 2] = [
    (PROG_TC_BRIDGE_GUARD, "-guard"),
    (PROG_TC_FROM_WARP, "-warp"),
];

/// The two attachments on a container's host-side veth.
const ATTACHMENTS: [(&str, TcAttachType, Direction, &str); 2] = [
    (
        PROG_TC_FROM_CONTAINER,
        TcAttachType::Ingress,
        Direction::FromContainer,
        "ingress",
    ),
    (
        PROG_TC_TO_CONTAINER,
        TcAttachType::Egress,
        Direction::ToContainer,
        "egress",
    ),
];

/// Every map, pinned by name under the pin directory, with its key and
/// value sizes as this build's programs use them; the LPM keys carry a 4-byte prefix length.
fn map_layouts() -> [(&'static str, usize, usize); 12] {
    use std::mem::size_of;
    [
        (
            TRAFFIC_MAP,
            size_of::<TrafficKey>(),
            size_of::<TrafficCounters>(),
        ),
        (POLICY_MAP, size_of::<u32>(), size_of::<TargetPolicy>()),
        (
            RULES_V4_MAP,
            4 + size_of::<RuleKeyV4>(),
            size_of::<RuleValue>(),
        ),
        (
            RULES_V6_MAP,
            4 + size_of::<RuleKeyV6>(),
            size_of::<RuleValue>(),
        ),
        (VERDICTS_MAP, size_of::<u32>(), size_of::<VerdictCounters>()),
        (RATE_SLOTS_MAP, size_of::<u32>(), size_of::<u32>()),
        (RATE_BUCKETS_MAP, size_of::<u32>(), size_of::<RateBuckets>()),
        (GUARDS_MAP, size_of::<u32>(), size_of::<u32>()),
        (GUARD_ALLOW_MAP, size_of::<GuardAllowKey>(), 1),
        (
            GUARD_DROPS_MAP,
            size_of::<u32>(),
            size_of::<TrafficCounters>(),
        ),
        (WARP_PEERS_MAP, size_of::<WarpPeerKey>(), size_of::<u32>()),
        (
            WARP_LEAKS_MAP,
            size_of::<u32>(),
            size_of::<TrafficCounters>(),
        ),
    ]
}

/// Unpins maps an older netwarp pinned with another layout, so that this
/// build creates them afresh; the controller then rewrites their contents
/// (counters restart). Programs still attached keep their old maps until
/// the adopted links switch to the new programs.
fn retire_incompatible_pins(pin_dir: &Path) {
    for (name, key_size, value_size) in map_layouts() {
        let path = pin_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            tracing::warn!(
                map = name,
                pinned_key = info.key_size(),
                pinned_value = info.value_size(),
                key_size,
                value_size,
                "a pinned map has an older layout; replacing it (its contents are rebuilt)"
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// netwarp's loaded programs and the attachments it made.
pub struct EbpfDataplane {
    ebpf: Ebpf,
    /// Attachments by (ifindex, direction). With a pin directory, each link
    /// is also pinned there, so it outlives the daemon; the id, when
    /// present, is this process's handle on it.
    links: HashMap<(u32, u32), Option<SchedClassifierLinkId>>,
    /// Bridge guard and warp attachments by (ifindex, program), pinned
    /// like `links`.
    single_links: HashMap<(u32, &'static str), Option<SchedClassifierLinkId>>,
    pin_dir: Option<PathBuf>,
    /// Reads the programs' aya-log records; see [`Self::take_logger`].
    logger: Option<ProgramLogger>,
}

/// The reader of the programs' aya-log ring buffer.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// aya-log levels the programs keep: debug, or none (a load-time
/// constant, so disabled log calls cost one compare).
fn program_log_level(debug_logs: bool) -> u8 {
    if debug_logs {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

impl EbpfDataplane {
    /// Loads every program with private maps and logs off; nothing is
    /// attached yet. Everything goes away with this value (tests, probes).
    pub fn load() -> Result<Self, EbpfError> {
        let level = program_log_level(false);
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(PROGRAMS_OBJECT)?;
        Self::with_programs(ebpf, None)
    }

    /// Loads the programs with their maps pinned under `pin_dir` (reusing
    /// maps pinned by an earlier run), and adopts the links pinned there:
    /// each is switched atomically to the new program, so steering and
    /// blocking never stop across a restart. Pins of vanished interfaces
    /// are removed.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, EbpfError> {
        Self::load_pinned_logging(pin_dir, false)
    }

    /// Like [`Self::load_pinned`]; with `debug_logs` the programs send
    /// debug records (drops and why) through aya-log.
    pub fn load_pinned_logging(pin_dir: &Path, debug_logs: bool) -> Result<Self, EbpfError> {
        let pin_error = |source: std::io::Error| EbpfError::PinDir {
            path: pin_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(pin_dir.join("links")).map_err(pin_error)?;
        std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(pin_error)?;
        retire_incompatible_pins(pin_dir);
        let mut loader = EbpfLoader::new();
        for (name, _, _) in map_layouts() {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let level = program_log_level(debug_logs);
        loader.override_global(aya_log::LEVEL, &level, true);
        let ebpf = loader.load(PROGRAMS_OBJECT)?;
        let mut dataplane = Self::with_programs(ebpf, Some(pin_dir.to_owned()))?;
        dataplane.adopt_pinned_links()?;
        Ok(dataplane)
    }

    fn with_programs(mut ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, EbpfError> {
        // Before the programs load: they need the log map open.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::warn!(error = %e, "the eBPF programs' log is unavailable");
                None
            }
        };
        for name in [
            PROG_TC_FROM_CONTAINER,
            PROG_TC_TO_CONTAINER,
            PROG_TC_BRIDGE_GUARD,
            PROG_TC_FROM_WARP,
        ] {
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
            single_links: HashMap::new(),
            pin_dir,
            logger,
        })
    }

    /// The reader of the programs' log records, for the daemon to poll;
    /// left here, records are dropped once its ring buffer is full.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    fn link_pin(&self, ifindex: u32, suffix: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|dir| dir.join("links").join(format!("{ifindex}-{suffix}")))
    }

    fn adopt_pinned_links(&mut self) -> Result<(), EbpfError> {
        let Some(dir) = self.pin_dir.as_ref().map(|d| d.join("links")) else {
            return Ok(());
        };
        let entries = std::fs::read_dir(&dir).map_err(|source| EbpfError::PinDir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let single = SINGLE_ATTACHMENTS.iter().find_map(|&(program, suffix)| {
                let ifindex = name.strip_suffix(suffix)?.parse::<u32>().ok()?;
                Some((ifindex, program))
            });
            if let Some((ifindex, program)) = single {
                self.adopt_single_link(ifindex, program, &path)?;
                continue;
            }
            let parsed = name.split_once('-').and_then(|(index, suffix)| {
                let attachment = ATTACHMENTS.iter().find(|a| a.3 == suffix)?;
                Some((index.parse::<u32>().ok()?, attachment))
            });
            let Some((ifindex, &(program, _, direction, _))) = parsed else {
                continue;
            };
            if interface_name(ifindex).is_none() {
                // The veth is gone, and its link with it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let adopted = PinnedLink::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|pinned| {
                    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
                });
            let link = match adopted {
                Ok(link) => link,
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "dropping an unusable pinned link");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let id = classifier(&mut self.ebpf, program)?
                .attach_to_link(link)
                .map_err(|source| EbpfError::Program { program, source })?;
            self.links.insert((ifindex, direction as u32), Some(id));
        }
        Ok(())
    }

    fn adopt_single_link(
        &mut self,
        ifindex: u32,
        program: &'static str,
        path: &Path,
    ) -> Result<(), EbpfError> {
        if interface_name(ifindex).is_none() {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        let adopted = PinnedLink::from_pin(path)
            .map_err(|e| e.to_string())
            .and_then(|pinned| {
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
            });
        match adopted {
            Ok(link) => {
                let id = classifier(&mut self.ebpf, program)?
                    .attach_to_link(link)
                    .map_err(|source| EbpfError::Program { program, source })?;
                self.single_links.insert((ifindex, program), Some(id));
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "dropping an unusable pinned link");
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// The interfaces this dataplane has attached to (or adopted).
    pub fn attached_ifindexes(&self) -> std::collections::BTreeSet<u32> {
        self.links.keys().map(|(ifindex, _)| *ifindex).collect()
    }

    /// Attaches the programs to both directions of a container's host-side
    /// interface. Attaching twice is a no-op.
    pub fn attach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        let ifindex = interface_index(interface)
            .ok_or_else(|| EbpfError::NoInterfaceNamed(interface.to_owned()))?;
        for (program, attach_type, direction, suffix) in ATTACHMENTS {
            let key = (ifindex, direction as u32);
            let pin = self.link_pin(ifindex, suffix);
            if let Some(held) = self.links.remove(&key) {
                match self.repin_if_removed(held, program, pin.as_deref())? {
                    Some(held) => {
                        self.links.insert(key, held);
                        continue;
                    }
                    None => tracing::warn!(
                        interface,
                        direction = suffix,
                        "a pinned link was removed behind netwarp's back; attaching again"
                    ),
                }
            }
            let id = self.attach_first(interface, program, attach_type, pin)?;
            self.links.insert(key, id);
        }
        Ok(())
    }

    /// Attaches the guard to a bridge's ingress (what its containers send
    /// to be routed). Attaching twice is a no-op.
    pub fn attach_guard(&mut self, bridge_ifindex: u32) -> Result<(), EbpfError> {
        self.attach_single(bridge_ifindex, PROG_TC_BRIDGE_GUARD)
    }

    /// Attaches `program` (one of [`SINGLE_ATTACHMENTS`]) to an
    /// interface's ingress. Attaching twice is a no-op.
    fn attach_single(&mut self, ifindex: u32, program: &'static str) -> Result<(), EbpfError> {
        let interface = interface_name(ifindex).ok_or(EbpfError::NoInterface(ifindex))?;
        let pin = self.single_pin(ifindex, program);
        let key = (ifindex, program);
        if let Some(held) = self.single_links.remove(&key) {
            match self.repin_if_removed(held, program, pin.as_deref())? {
                Some(held) => {
                    self.single_links.insert(key, held);
                    return Ok(());
                }
                None => tracing::warn!(
                    interface,
                    program,
                    "a pinned link was removed behind netwarp's back; attaching again"
                ),
            }
        }
        let id = self.attach_first(&interface, program, TcAttachType::Ingress, pin)?;
        self.single_links.insert(key, id);
        Ok(())
    }

    /// Detaches `program` (one of [`SINGLE_ATTACHMENTS`]) from an
    /// interface and removes its pin.
    fn detach_single(&mut self, ifindex: u32, program: &'static str) -> Result<(), EbpfError> {
        if let Some(Some(id)) = self.single_links.remove(&(ifindex, program)) {
            classifier(&mut self.ebpf, program)?
                .detach(id)
                .map_err(|source| EbpfError::Program { program, source })?;
        }
        if let Some(path) = self.single_pin(ifindex, program) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(EbpfError::PinDir { path, source }),
            }
        }
        Ok(())
    }

    /// The interfaces `program` (one of [`SINGLE_ATTACHMENTS`]) is attached to.
    fn single_ifindexes(&self, program: &'static str) -> impl Iterator<Item = u32> + '_ {
        self.single_links
            .keys()
            .filter(move |(_, p)| *p == program)
            .map(|(ifindex, _)| *ifindex)
    }

    /// Attaches `program` first in the interface's TCX chain (a clsact
    /// filter without TCX) and pins the link at `pin` if given. Returns
    /// this process's handle, which a pinned link does not need.
    fn attach_first(
        &mut self,
        interface: &str,
        program: &'static str,
        attach_type: TcAttachType,
        pin: Option<PathBuf>,
    ) -> Result<Option<SchedClassifierLinkId>, EbpfError> {
        // On kernels >= 6.6 aya attaches through TCX, which needs no qdisc.
        let prog = classifier(&mut self.ebpf, program)?;
        let attach_error = |source| EbpfError::Attach {
            program,
            interface: interface.to_owned(),
            source,
        };
        // First in the TCX chain, so policy applies whatever other tc
        // programs return; netwarp passes what it leaves alone on to
        // them. Kernels without TCX get a clsact filter instead.
        let id = match prog.attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        ) {
            Ok(id) => id,
            Err(tcx_error) => {
                tracing::debug!(interface, error = %tcx_error, "TCX attach failed; trying clsact");
                let _ = qdisc_add_clsact(interface);
                prog.attach(interface, attach_type).map_err(attach_error)?
            }
        };
        let Some(path) = pin else {
            return Ok(Some(id));
        };
        let link = prog.take_link(id).map_err(attach_error)?;
        let pin_error = |reason: String| EbpfError::Pin {
            path: path.clone(),
            reason,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
        // The pin keeps the link; dropping our handle keeps it attached.
        fd_link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
        Ok(None)
    }

    /// Checks an attachment this process made or adopted (`held`). Someone
    /// may delete a link's pin by hand: if this process holds the link it
    /// is pinned again; if the pin was its only reference, the link (and
    /// with it steering and blocking) is gone. Returns what to keep
    /// holding, or None when the caller must attach anew.
    fn repin_if_removed(
        &mut self,
        held: Option<SchedClassifierLinkId>,
        program: &'static str,
        pin: Option<&Path>,
    ) -> Result<Option<Option<SchedClassifierLinkId>>, EbpfError> {
        let Some(path) = pin else {
            return Ok(Some(held));
        };
        if path.exists() {
            return Ok(Some(held));
        }
        let Some(id) = held else {
            return Ok(None);
        };
        let link = classifier(&mut self.ebpf, program)?
            .take_link(id)
            .map_err(|source| EbpfError::Program { program, source })?;
        let pin_error = |reason: String| EbpfError::Pin {
            path: path.to_owned(),
            reason,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
        fd_link.pin(path).map_err(|e| pin_error(e.to_string()))?;
        tracing::warn!(path = %path.display(), "a link's pin was removed by hand; pinned it again");
        Ok(Some(None))
    }

    fn single_pin(&self, ifindex: u32, program: &'static str) -> Option<PathBuf> {
        let (_, suffix) = SINGLE_ATTACHMENTS.iter().find(|(p, _)| *p == program)?;
        self.pin_dir
            .as_ref()
            .map(|dir| dir.join("links").join(format!("{ifindex}{suffix}")))
    }

    /// Detaches the programs from an interface, if they are attached, and
    /// removes their pins.
    pub fn detach_ifindex(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        for (program, _, direction, suffix) in ATTACHMENTS {
            if let Some(Some(link)) = self.links.remove(&(ifindex, direction as u32)) {
                classifier(&mut self.ebpf, program)?
                    .detach(link)
                    .map_err(|source| EbpfError::Program { program, source })?;
            }
            if let Some(path) = self.link_pin(ifindex, suffix) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(EbpfError::PinDir { path, source }),
                }
            }
        }
        Ok(())
    }

    /// Detaches by interface name (see [`Self::detach_ifindex`]).
    pub fn detach_counters(&mut self, interface: &str) -> Result<(), EbpfError> {
        match interface_index(interface) {
            Some(ifindex) => self.detach_ifindex(ifindex),
            None => Ok(()),
        }
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

impl EbpfDataplane {
    /// Attaches the programs to the host interface with `ifindex`.
    pub fn attach_ifindex(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let name = interface_name(ifindex).ok_or(EbpfError::NoInterface(ifindex))?;
        self.attach_counters(&name)
    }

    /// Installs a target's policy atomically: the new rows go in under a
    /// fresh rule set id, then one write to the policy map switches to it,
    /// then the old rows are removed.
    pub fn set_policy(
        &mut self,
        ifindex: u32,
        warp_ifindex: u32,
        warp_mac: [u8; 6],
        rows: &[CompiledPrefix],
    ) -> Result<(), EbpfError> {
        let old = self.policy(ifindex)?;
        // Two ids per target, alternating; the low bit is the generation.
        let generation = old.map_or(0, |p| (p.rule_set & 1) ^ 1);
        let rule_set = (ifindex << 1) | generation;
        self.write_rows(rule_set, rows)?;
        let policy = TargetPolicy {
            rule_set,
            warp_ifindex,
            warp_mac,
            _pad: [0; 2],
        };
        let mut policies = self.policies()?;
        policies
            .insert(ifindex, policy, 0)
            .map_err(map_error(POLICY_MAP))?;
        if let Some(old) = old
            && old.rule_set != rule_set
        {
            self.remove_rows(old.rule_set)?;
        }
        Ok(())
    }

    /// Removes a target's policy and its rows; its traffic is then only counted.
    pub fn remove_policy(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let Some(old) = self.policy(ifindex)? else {
            return Ok(());
        };
        let mut policies = self.policies()?;
        match policies.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(POLICY_MAP)(e)),
        }
        self.remove_rows(old.rule_set)
    }

    /// The interfaces that have a policy.
    pub fn policy_ifindexes(&mut self) -> Result<Vec<u32>, EbpfError> {
        let policies = self.policies()?;
        policies
            .keys()
            .collect::<Result<Vec<u32>, MapError>>()
            .map_err(map_error(POLICY_MAP))
    }

    pub fn policy(&mut self, ifindex: u32) -> Result<Option<TargetPolicy>, EbpfError> {
        let policies = self.policies()?;
        match policies.get(&ifindex, 0) {
            Ok(p) => Ok(Some(p)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(POLICY_MAP)(e)),
        }
    }

    /// Installs a bridge's guard: the prefixes it blocks (`rows`, under a
    /// fresh rule set, switched in by one write) and the sources it lets
    /// pass. New sources are allowed before the switch, stale ones removed
    /// after it.
    pub fn set_guard(
        &mut self,
        bridge_ifindex: u32,
        rows: &[CompiledPrefix],
        allowed: &std::collections::BTreeSet<GuardAllowKey>,
    ) -> Result<(), EbpfError> {
        let old = self.guard_rule_set(bridge_ifindex)?;
        let rule_set = (bridge_ifindex << 1) | old.map_or(0, |id| (id & 1) ^ 1);
        self.write_rows(rule_set, rows)?;
        let mut allow = self.guard_allow()?;
        let stale: Vec<GuardAllowKey> = allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.bridge_ifindex == bridge_ifindex && !allowed.contains(k))
            .collect();
        for key in allowed {
            allow
                .insert(*key, 1, 0)
                .map_err(map_error(GUARD_ALLOW_MAP))?;
        }
        self.guards()?
            .insert(bridge_ifindex, rule_set, 0)
            .map_err(map_error(GUARDS_MAP))?;
        if let Some(old) = old
            && old != rule_set
        {
            self.remove_rows(old)?;
        }
        let mut allow = self.guard_allow()?;
        for key in stale {
            let _ = allow.remove(&key);
        }
        Ok(())
    }

    /// Removes a bridge's guard: its rule set, its allowed sources, its
    /// attachment and pin.
    pub fn remove_guard(&mut self, bridge_ifindex: u32) -> Result<(), EbpfError> {
        self.detach_single(bridge_ifindex, PROG_TC_BRIDGE_GUARD)?;
        if let Some(old) = self.guard_rule_set(bridge_ifindex)? {
            match self.guards()?.remove(&bridge_ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(GUARDS_MAP)(e)),
            }
            self.remove_rows(old)?;
        }
        let mut allow = self.guard_allow()?;
        let keys: Vec<GuardAllowKey> = allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.bridge_ifindex == bridge_ifindex)
            .collect();
        for key in keys {
            let _ = allow.remove(&key);
        }
        Ok(())
    }

    /// Bridges with a guard in the map or an attachment.
    pub fn guard_ifindexes(&mut self) -> Result<std::collections::BTreeSet<u32>, EbpfError> {
        let mut all: std::collections::BTreeSet<u32> = self
            .guards()?
            .keys()
            .collect::<Result<_, MapError>>()
            .map_err(map_error(GUARDS_MAP))?;
        all.extend(self.single_ifindexes(PROG_TC_BRIDGE_GUARD));
        Ok(all)
    }

    /// The sources a bridge's guard lets pass.
    pub fn guard_allowed(
        &mut self,
        bridge_ifindex: u32,
    ) -> Result<std::collections::BTreeSet<GuardAllowKey>, EbpfError> {
        Ok(self
            .guard_allow()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.bridge_ifindex == bridge_ifindex)
            .collect())
    }

    /// What a bridge's guard dropped, over all CPUs.
    pub fn guard_drops(&self, bridge_ifindex: u32) -> Result<TrafficCounters, EbpfError> {
        self.per_cpu_traffic(GUARD_DROPS_MAP, bridge_ifindex)
    }

    /// One ifindex's entry of a per-CPU [`TrafficCounters`] map, summed
    /// over all CPUs (zero when absent).
    fn per_cpu_traffic(
        &self,
        name: &'static str,
        ifindex: u32,
    ) -> Result<TrafficCounters, EbpfError> {
        let map = self.ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
        let map: PerCpuHashMap<_, u32, TrafficCounters> =
            PerCpuHashMap::try_from(map).map_err(map_error(name))?;
        match map.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(per_cpu
                .iter()
                .fold(TrafficCounters::default(), |a, c| a.saturating_add(*c))),
            Err(MapError::KeyNotFound) => Ok(TrafficCounters::default()),
            Err(e) => Err(map_error(name)(e)),
        }
    }

    fn guard_rule_set(&mut self, bridge_ifindex: u32) -> Result<Option<u32>, EbpfError> {
        match self.guards()?.get(&bridge_ifindex, 0) {
            Ok(id) => Ok(Some(id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(GUARDS_MAP)(e)),
        }
    }

    fn guards(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, u32>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(GUARDS_MAP)
            .ok_or(EbpfError::MissingMap(GUARDS_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(GUARDS_MAP))
    }

    fn guard_allow(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, GuardAllowKey, u8>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(GUARD_ALLOW_MAP)
            .ok_or(EbpfError::MissingMap(GUARD_ALLOW_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(GUARD_ALLOW_MAP))
    }

    /// Caps the container whose host-side veths are `ifindexes`: one set
    /// of buckets under `slot`, shared by all of them. Writing the buckets
    /// refills them, so the caller only writes when the caps change.
    pub fn set_caps(
        &mut self,
        slot: u32,
        ifindexes: &[u32],
        buckets: RateBuckets,
    ) -> Result<(), EbpfError> {
        let mut all = self.rate_buckets()?;
        all.insert(slot, buckets, 0)
            .map_err(map_error(RATE_BUCKETS_MAP))?;
        let mut slots = self.rate_slots()?;
        for ifindex in ifindexes {
            slots
                .insert(*ifindex, slot, 0)
                .map_err(map_error(RATE_SLOTS_MAP))?;
        }
        Ok(())
    }

    /// Uncaps interfaces and removes the buckets of slots no interface uses.
    pub fn remove_caps(&mut self, ifindexes: &[u32]) -> Result<(), EbpfError> {
        let mut slots = self.rate_slots()?;
        for ifindex in ifindexes {
            match slots.remove(ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(map_error(RATE_SLOTS_MAP)(e)),
            }
        }
        let used: std::collections::HashSet<u32> = self.cap_slots()?.into_values().collect();
        let mut all = self.rate_buckets()?;
        let unused: Vec<u32> = all
            .keys()
            .filter_map(Result::ok)
            .filter(|slot| !used.contains(slot))
            .collect();
        for slot in unused {
            let _ = all.remove(&slot);
        }
        Ok(())
    }

    /// Every capped interface and its slot.
    pub fn cap_slots(&mut self) -> Result<HashMap<u32, u32>, EbpfError> {
        let slots = self.rate_slots()?;
        slots
            .iter()
            .collect::<Result<HashMap<u32, u32>, MapError>>()
            .map_err(map_error(RATE_SLOTS_MAP))
    }

    /// The buckets of one cap slot, as the programs left them.
    pub fn rate_buckets_of(&mut self, slot: u32) -> Result<Option<RateBuckets>, EbpfError> {
        match self.rate_buckets()?.get(&slot, 0) {
            Ok(b) => Ok(Some(b)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(RATE_BUCKETS_MAP)(e)),
        }
    }

    fn rate_slots(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, u32>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(RATE_SLOTS_MAP)
            .ok_or(EbpfError::MissingMap(RATE_SLOTS_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(RATE_SLOTS_MAP))
    }

    fn rate_buckets(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, RateBuckets>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(RATE_BUCKETS_MAP)
            .ok_or(EbpfError::MissingMap(RATE_BUCKETS_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(RATE_BUCKETS_MAP))
    }

    /// Steered and blocked packets and bytes of one target, over all CPUs.
    pub fn verdicts(&self, ifindex: u32) -> Result<VerdictCounters, EbpfError> {
        let map = self
            .ebpf
            .map(VERDICTS_MAP)
            .ok_or(EbpfError::MissingMap(VERDICTS_MAP))?;
        let map: PerCpuHashMap<_, u32, VerdictCounters> =
            PerCpuHashMap::try_from(map).map_err(map_error(VERDICTS_MAP))?;
        match map.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(per_cpu
                .iter()
                .fold(VerdictCounters::default(), |a, c| a.saturating_add(*c))),
            Err(MapError::KeyNotFound) => Ok(VerdictCounters::default()),
            Err(e) => Err(map_error(VERDICTS_MAP)(e)),
        }
    }

    /// Runs the from-container program once on `packet`, as if it arrived
    /// on the host interface `ifindex` (BPF_PROG_TEST_RUN). Returns the tc
    /// verdict and the packet as the program left it. Redirects are only
    /// reported, not performed.
    pub fn test_run_from_container(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        self.test_run(PROG_TC_FROM_CONTAINER, ifindex, packet)
    }

    /// Like [`Self::test_run_from_container`], for the bridge guard, as if
    /// the packet arrived on the bridge with `ifindex`.
    pub fn test_run_bridge_guard(
        &mut self,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        self.test_run(PROG_TC_BRIDGE_GUARD, ifindex, packet)
    }

    fn test_run(
        &mut self,
        program_name: &'static str,
        ifindex: u32,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), EbpfError> {
        // A __sk_buff prefix up to and including `ifindex` (offset 40); the
        // kernel requires every other field in it to be zero.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut data_out = vec![0u8; packet.len() + 256];
        let program = classifier(&mut self.ebpf, program_name)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .map_err(|source| EbpfError::Program {
                program: program_name,
                source,
            })?;
        data_out.truncate(result.data_size_out as usize);
        Ok((result.return_value as i32, data_out))
    }

    fn policies(
        &mut self,
    ) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, TargetPolicy>, EbpfError> {
        let map = self
            .ebpf
            .map_mut(POLICY_MAP)
            .ok_or(EbpfError::MissingMap(POLICY_MAP))?;
        BpfHashMap::try_from(map).map_err(map_error(POLICY_MAP))
    }

    fn write_rows(&mut self, rule_set: u32, rows: &[CompiledPrefix]) -> Result<(), EbpfError> {
        let id = rule_set.to_be_bytes();
        for row in rows {
            let prefix_len = RULE_SET_BITS + u32::from(row.destination.prefix_len());
            match row.destination.addr() {
                IpAddr::V4(addr) => {
                    let mut trie = self.trie::<RuleKeyV4>(RULES_V4_MAP)?;
                    let key = Key::new(
                        prefix_len,
                        RuleKeyV4 {
                            rule_set: id,
                            addr: addr.octets(),
                        },
                    );
                    trie.insert(&key, row.value, 0)
                        .map_err(map_error(RULES_V4_MAP))?;
                }
                IpAddr::V6(addr) => {
                    let mut trie = self.trie::<RuleKeyV6>(RULES_V6_MAP)?;
                    let key = Key::new(
                        prefix_len,
                        RuleKeyV6 {
                            rule_set: id,
                            addr: addr.octets(),
                        },
                    );
                    trie.insert(&key, row.value, 0)
                        .map_err(map_error(RULES_V6_MAP))?;
                }
            }
        }
        Ok(())
    }

    /// The rows of one rule set, sorted by destination (what an earlier
    /// run left, for adopting it without a rewrite).
    fn rows(&mut self, rule_set: u32) -> Result<Vec<CompiledPrefix>, EbpfError> {
        let id = rule_set.to_be_bytes();
        let mut rows = Vec::new();
        let row = |addr: IpAddr, prefix_len: u32, value: RuleValue| {
            let len = u8::try_from(prefix_len.saturating_sub(RULE_SET_BITS)).ok()?;
            Some(CompiledPrefix {
                destination: crate::model::Cidr::new(addr, len).ok()?,
                value,
            })
        };
        let v4 = self.trie::<RuleKeyV4>(RULES_V4_MAP)?;
        for (key, value) in v4.iter().filter_map(Result::ok) {
            if key.data().rule_set == id {
                rows.extend(row(IpAddr::from(key.data().addr), key.prefix_len(), value));
            }
        }
        let v6 = self.trie::<RuleKeyV6>(RULES_V6_MAP)?;
        for (key, value) in v6.iter().filter_map(Result::ok) {
            if key.data().rule_set == id {
                rows.extend(row(IpAddr::from(key.data().addr), key.prefix_len(), value));
            }
        }
        rows.sort_by_key(|r| r.destination);
        Ok(rows)
    }

    /// Whether a target's installed policy is exactly this one (so a
    /// restarted daemon adopts it instead of rewriting it).
    pub fn policy_is(
        &mut self,
        ifindex: u32,
        warp_ifindex: u32,
        warp_mac: [u8; 6],
        rows: &[CompiledPrefix],
    ) -> Result<bool, EbpfError> {
        let Some(policy) = self.policy(ifindex)? else {
            return Ok(false);
        };
        Ok(policy.warp_ifindex == warp_ifindex
            && policy.warp_mac == warp_mac
            && self.rows(policy.rule_set)? == sorted(rows))
    }

    /// Whether a bridge's installed guard is exactly this one.
    pub fn guard_is(
        &mut self,
        bridge_ifindex: u32,
        rows: &[CompiledPrefix],
        allowed: &std::collections::BTreeSet<GuardAllowKey>,
    ) -> Result<bool, EbpfError> {
        let Some(rule_set) = self.guard_rule_set(bridge_ifindex)? else {
            return Ok(false);
        };
        Ok(self.rows(rule_set)? == sorted(rows) && &self.guard_allowed(bridge_ifindex)? == allowed)
    }

    fn remove_rows(&mut self, rule_set: u32) -> Result<(), EbpfError> {
        let id = rule_set.to_be_bytes();
        remove_keys(&mut self.trie::<RuleKeyV4>(RULES_V4_MAP)?, |k| {
            k.rule_set == id
        });
        remove_keys(&mut self.trie::<RuleKeyV6>(RULES_V6_MAP)?, |k| {
            k.rule_set == id
        });
        Ok(())
    }

    /// One of the rule LPM tries (`RULES_V4_MAP` or `RULES_V6_MAP`).
    fn trie<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut aya::maps::MapData, K, RuleValue>, EbpfError> {
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(map_error(name))
    }
}

/// Removes every key of `trie` whose data satisfies `doomed`; keys that
/// vanish meanwhile are not an error.
fn remove_keys<K: aya::Pod>(
    trie: &mut LpmTrie<&mut aya::maps::MapData, K, RuleValue>,
    doomed: impl Fn(&K) -> bool,
) {
    let keys: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| doomed(&k.data()))
        .collect();
    for key in keys {
        let _ = trie.remove(&key);
    }
}

fn sorted(rows: &[CompiledPrefix]) -> Vec<CompiledPrefix> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.destination);
    rows
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> EbpfError {
    move |source| EbpfError::Map { map, source }
}

/// The ifindex of a host interface, or None if there is none named so.
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of a host interface, or None if there is none with `ifindex`.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
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
