//! The eBPF dataplane's errors; each says what to do about it.

use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError};

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
    #[error(
        "the pinned rule trie {map} holds {rows} rows (its largest rule set {largest}), more \
         than dataplane.ebpf_rules_capacity = {capacity} holds with room to switch a set; \
         raise it to at least {needed}, or run `netwarp cleanup` to start from empty tries"
    )]
    RulesCapacity {
        map: &'static str,
        rows: usize,
        largest: usize,
        capacity: u32,
        needed: usize,
    },
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}
