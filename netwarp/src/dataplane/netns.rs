//! Network namespace handles: an rtnetlink connection bound to one
//! container's namespace, and the lookups every dataplane makes there
//! (interfaces by MAC, veth peers). The host's own namespace is refused.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::link::{LinkAttribute, LinkMessage},
};

use super::{mac::parse_mac, nexthop::NexthopSocket};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "cannot enter the network namespace of pid {pid}: {reason}; netwarp needs \
         CAP_SYS_ADMIN and CAP_NET_ADMIN, and the host's pids (`pid: host`, or the \
         host's /proc named by dataplane.host_proc_dir; see `netwarp probe`)"
    )]
    Netns { pid: u32, reason: String },
    #[error(
        "refusing to enter the network namespace of pid {pid}: it is the host's own \
         namespace, which netwarp never programs (only its tagged guard rules live there)"
    )]
    HostNamespace { pid: u32 },
    #[error(
        "refusing to program the network namespace of pid {pid} for container {owner}: \
         container {other} already uses it in this pass, and netwarp programs each \
         namespace for one container only"
    )]
    NamespaceClaimed {
        pid: u32,
        owner: String,
        other: String,
    },
    #[error(
        "the network namespace of pid {pid} was opened for reading only; writes need \
         NamespaceHandle::open_owned"
    )]
    ReadOnly { pid: u32 },
    #[error(
        "cannot set {setting} in the network namespace of pid {pid}: {reason}; a spread \
         group's nexthop groups need it to hash flows without their source port, so that \
         open TCP connections keep their member when the routes change"
    )]
    Sysctl {
        pid: u32,
        setting: &'static str,
        reason: String,
    },
    #[error(
        "cannot turn the transmit checksum offload of interface {ifindex} {state} in the \
         network namespace of pid {pid}: {reason}; the XDP hook \
         (dataplane.ebpf_from_container_hook = \"xdp\") needs it off, since XDP redirects \
         frames whose checksum was left to the device; use \"tc\" otherwise"
    )]
    TxChecksum {
        pid: u32,
        ifindex: u32,
        state: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Tables(#[from] super::tables::TablesExhausted),
    #[error(
        "nexthop {operation} in the namespace of pid {pid} failed: {source}; a spread \
         group's routes need nexthop objects (resilient groups: Linux 5.13 or later)"
    )]
    Nexthop {
        pid: u32,
        operation: String,
        #[source]
        source: super::nexthop::NexthopError,
    },
    #[error(
        "the target in the namespace of pid {pid} has no interface on its warps' network \
         (none with its MAC {mac:?}): a spread group's next hops need one"
    )]
    NexthopInterface { pid: u32, mac: Option<String> },
    #[error("netlink {operation} in the namespace of pid {pid} failed: {source}")]
    Netlink {
        pid: u32,
        operation: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Where host pids are visible (`dataplane.host_proc_dir`): `/proc`, or
/// the host's /proc mounted into netwarp's container (a Swarm service
/// cannot share the host's pid namespace). Read once at start, like every
/// restart-only key; every namespace netwarp opens goes through it.
static HOST_PROC_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets where host pids are visible (once; later calls are ignored).
pub fn set_host_proc_dir(dir: &Path) {
    let _ = HOST_PROC_DIR.set(dir.to_owned());
}

fn host_proc_dir() -> &'static Path {
    HOST_PROC_DIR.get_or_init(|| PathBuf::from("/proc"))
}

/// The nsfs file of `pid`'s network namespace, as the host numbers pids.
pub fn net_namespace_path(pid: u32) -> PathBuf {
    host_proc_dir().join(pid.to_string()).join("ns/net")
}

/// Runs `create` inside the network namespace of `pid` and returns what it
/// made: for sockets, which stay bound to the namespace they were created
/// in wherever they are used afterwards.
///
/// setns changes the calling thread, and a tokio worker must never be
/// moved, so `create` runs on a short-lived dedicated OS thread; the
/// caller awaits its answer instead of joining it.
pub async fn inside_namespace<T: Send + 'static>(
    pid: u32,
    create: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    let path = net_namespace_path(pid);
    let (answer, made) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            let made = netns_rs::get_from_path(&path)
                .map_err(|e| e.to_string())
                .and_then(|netns| {
                    netns
                        .run(|_| create())
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                });
            let _ = answer.send(made);
        })
        .map_err(|e| NetnsError::Netns {
            pid,
            reason: e.to_string(),
        })?;
    let made = made.await.map_err(|_| NetnsError::Netns {
        pid,
        reason: "the namespace thread panicked".into(),
    })?;
    made.map_err(|reason| NetnsError::Netns { pid, reason })
}

/// Treats a netlink change the kernel already reflects as done (e.g.
/// EEXIST on an add, ENOENT/ESRCH on a delete): someone else's change, or
/// an earlier partial attempt, got there first, so every change can be
/// repeated after a partial failure.
pub(crate) fn already_done(
    errnos: &'static [i32],
) -> impl Fn(rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    move |e| match &e {
        rtnetlink::Error::NetlinkError(m) if errnos.iter().any(|n| m.raw_code() == -n) => Ok(()),
        _ => Err(e),
    }
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    fn of(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether this is the host's namespace: init's, or netwarp's own
    /// (which `run` checked is the host's).
    fn is_host(self) -> bool {
        [net_namespace_path(1), PathBuf::from("/proc/self/ns/net")]
            .into_iter()
            .any(|path| Self::of(path).is_ok_and(|host| host == self))
    }
}

/// The namespaces claimed for writing in one pass, each by one container:
/// a second container that resolves to the same namespace is refused.
#[derive(Debug, Default)]
pub struct NamespaceClaims {
    owners: HashMap<NamespaceId, String>,
}

impl NamespaceClaims {
    pub fn new() -> Self {
        Self::default()
    }
}

/// An rtnetlink connection bound to one container's network namespace.
///
/// Every namespace netwarp enters goes through [`NamespaceHandle::open`],
/// which refuses the host's own namespace, whoever asks. Writes need a
/// handle from [`NamespaceHandle::open_owned`], which also claims the
/// namespace for one container in the pass.
pub struct NamespaceHandle {
    pub(super) pid: u32,
    pub(super) handle: Handle,
    /// Nexthop requests, which rtnetlink does not model (see
    /// [`super::nexthop`]); opened with `handle`, in the same namespace.
    pub(super) nexthops: std::sync::Arc<NexthopSocket>,
    writable: bool,
}

impl NamespaceHandle {
    /// Opens the namespace of `pid` for writing on behalf of the container
    /// `owner`, after checking it is not the host's and that no other
    /// container claimed it in this pass.
    pub async fn open_owned(
        pid: u32,
        claims: &mut NamespaceClaims,
        owner: &str,
    ) -> Result<Self, NetnsError> {
        let (mut namespace, id) = Self::enter(pid).await?;
        match claims.owners.get(&id) {
            Some(other) if other != owner => {
                return Err(NetnsError::NamespaceClaimed {
                    pid,
                    owner: owner.to_owned(),
                    other: other.clone(),
                });
            }
            Some(_) => {}
            None => {
                claims.owners.insert(id, owner.to_owned());
            }
        }
        namespace.writable = true;
        Ok(namespace)
    }

    /// Opens the namespace of `pid` for reading (dumps only).
    pub async fn open(pid: u32) -> Result<Self, NetnsError> {
        Ok(Self::enter(pid).await?.0)
    }

    /// Opens a netlink socket inside the namespace of `pid`, unless that
    /// namespace is the host's.
    ///
    /// Only socket creation happens inside the namespace, on a short-lived
    /// dedicated OS thread: setns changes the calling thread, and a tokio
    /// worker must never be moved. The socket then stays bound to the
    /// namespace wherever it is polled. The namespace is identified from
    /// inside, so a pid reused meanwhile cannot point the check elsewhere.
    async fn enter(pid: u32) -> Result<(Self, NamespaceId), NetnsError> {
        let runtime = tokio::runtime::Handle::current();
        let opened = inside_namespace(pid, move || {
            let _runtime = runtime.enter();
            let id = NamespaceId::of("/proc/thread-self/ns/net")?;
            // Refused before the socket exists: nothing can be sent into
            // the host's namespace through it.
            if id.is_host() {
                return Ok(None);
            }
            let connection = rtnetlink::new_connection()?;
            Ok(Some((connection, NexthopSocket::open()?, id)))
        })
        .await?;
        let ((connection, handle, _), nexthops, id) =
            opened.ok_or(NetnsError::HostNamespace { pid })?;
        tokio::spawn(connection);
        let namespace = Self {
            pid,
            handle,
            nexthops: std::sync::Arc::new(nexthops),
            writable: false,
        };
        Ok((namespace, id))
    }

    /// Makes the namespace's nexthop groups pick a member by a hash of
    /// the flow's addresses, protocol and destination port, without its
    /// source port (see [`multipath_hash_settings`]). Written from a
    /// thread inside the namespace (sysctls under /proc/sys/net are the
    /// opening thread's namespace's), only where it differs. A namespace
    /// without IPv6 has no IPv6 setting: skipped.
    pub async fn hash_multipath_without_source_port(&self) -> Result<(), NetnsError> {
        let pid = self.pid;
        self.write_inside(move || {
            let failed = |setting, e: std::io::Error| NetnsError::Sysctl {
                pid,
                setting,
                reason: e.to_string(),
            };
            for ipv6 in [false, true] {
                let exists = |setting: &str| Path::new(&sysctl_path(setting)).exists();
                let (policy, fields) = multipath_hash_sysctls(ipv6);
                if !exists(policy) {
                    continue;
                }
                for setting in multipath_hash_settings(ipv6, exists(fields)) {
                    let path = sysctl_path(setting.name);
                    let current =
                        std::fs::read_to_string(&path).map_err(|e| failed(setting.name, e))?;
                    if current.trim() != setting.value {
                        std::fs::write(&path, setting.value)
                            .map_err(|e| failed(setting.name, e))?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Turns the transmit checksum offload of the interface `ifindex`
    /// here on or off (the ethtool ioctl, from a thread inside the
    /// namespace), only where it differs. Returns whether it changed.
    ///
    /// Off for the XDP hook: a frame the stack left to the device to
    /// checksum (CHECKSUM_PARTIAL) and that XDP redirects is delivered
    /// with its checksum unfinished, and the receiver drops it.
    pub async fn set_tx_checksum(&self, ifindex: u32, on: bool) -> Result<bool, NetnsError> {
        let pid = self.pid;
        let state = if on { "on" } else { "off" };
        self.write_inside(move || {
            ethtool_tx_checksum(ifindex, on).map_err(|e| NetnsError::TxChecksum {
                pid,
                ifindex,
                state,
                reason: e.to_string(),
            })
        })
        .await
    }

    /// Runs `write` on a thread inside this namespace, for settings that
    /// only the namespace's own threads reach (sysctls, ioctls); only on a
    /// writable handle, and checked again from inside, so a reused pid
    /// never leads to the host's namespace.
    async fn write_inside<T: Send + 'static>(
        &self,
        write: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
    ) -> Result<T, NetnsError> {
        self.writable()?;
        let pid = self.pid;
        inside_namespace(pid, move || {
            if NamespaceId::of("/proc/thread-self/ns/net")?.is_host() {
                return Ok(Err(NetnsError::HostNamespace { pid }));
            }
            Ok(write())
        })
        .await?
    }

    pub(super) fn writable(&self) -> Result<&Handle, NetnsError> {
        if self.writable {
            Ok(&self.handle)
        } else {
            Err(NetnsError::ReadOnly { pid: self.pid })
        }
    }

    /// Runs `request` on the namespace's nexthop socket, on a blocking
    /// thread (the socket is a blocking one; the kernel answers at once).
    pub(super) async fn nexthop_request<T: Send + 'static>(
        &self,
        operation: impl Into<String>,
        request: impl FnOnce(&NexthopSocket) -> Result<T, super::nexthop::NexthopError> + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (socket, pid, operation) = (self.nexthops.clone(), self.pid, operation.into());
        let done = tokio::task::spawn_blocking(move || request(&socket))
            .await
            .map_err(|e| NetnsError::Netns {
                pid,
                reason: format!("the nexthop request's thread failed: {e}"),
            })?;
        done.map_err(|source| NetnsError::Nexthop {
            pid,
            operation,
            source,
        })
    }

    pub(super) fn netlink(
        &self,
        operation: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetnsError {
        let pid = self.pid;
        let operation = operation.into();
        move |source| NetnsError::Netlink {
            pid,
            operation,
            source,
        }
    }

    /// For the interface with `mac` in this namespace, the ifindex of its
    /// veth peer in the host namespace (IFLA_LINK).
    pub async fn peer_ifindex_by_mac(&self, mac: &str) -> Result<Option<u32>, NetnsError> {
        Ok(self.link_by_mac(mac).await?.and_then(|link| peer_of(&link)))
    }

    /// For each interface here whose MAC is one of `macs`, the ifindex of
    /// its veth peer in the host namespace, from one dump; sorted.
    pub async fn peer_ifindexes_by_macs(&self, macs: &[String]) -> Result<Vec<u32>, NetnsError> {
        let wanted: Vec<Vec<u8>> = macs.iter().map(|m| parse_mac(m)).collect();
        let mut peers: Vec<u32> = self
            .links()
            .await?
            .iter()
            .filter(|link| {
                link.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(addr) if wanted.contains(addr)))
            })
            .filter_map(peer_of)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Ok(peers)
    }

    /// Both ends of the veth with `mac` in this namespace, from one dump:
    /// (its ifindex here, its peer's ifindex on the host).
    pub async fn veth_ends_by_mac(&self, mac: &str) -> Result<Option<(u32, u32)>, NetnsError> {
        Ok(self
            .link_by_mac(mac)
            .await?
            .and_then(|link| Some((link.header.index, peer_of(&link)?))))
    }

    /// The interfaces here whose veth peer on the host is one of `peers`.
    pub async fn interfaces_with_peers(
        &self,
        peers: &std::collections::BTreeSet<u32>,
    ) -> Result<Vec<u32>, NetnsError> {
        Ok((self.links().await?.iter())
            .filter(|link| peer_of(link).is_some_and(|peer| peers.contains(&peer)))
            .map(|link| link.header.index)
            .collect())
    }

    /// The netlink handle bound to this namespace, for writes: only a
    /// handle from [`NamespaceHandle::open_owned`] has one.
    pub fn netlink_handle(&self) -> Result<&Handle, NetnsError> {
        self.writable()
    }

    /// The netlink handle bound to this namespace, for dumps only.
    pub fn dump_handle(&self) -> &Handle {
        &self.handle
    }

    pub(super) async fn ifindex_by_mac(&self, mac: &str) -> Result<Option<u32>, NetnsError> {
        Ok(self.link_by_mac(mac).await?.map(|link| link.header.index))
    }

    /// The interface in this namespace whose hardware address is `mac`.
    pub(super) async fn link_by_mac(&self, mac: &str) -> Result<Option<LinkMessage>, NetnsError> {
        let wanted = parse_mac(mac);
        Ok(self.links().await?.into_iter().find(|link| {
            link.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(addr) if *addr == wanted))
        }))
    }
}

impl NamespaceHandle {
    async fn links(&self) -> Result<Vec<LinkMessage>, NetnsError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink("link dump"))
    }
}

/// The peer ifindex a veth end names (IFLA_LINK).
fn peer_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(peer) => Some(*peer),
        _ => None,
    })
}

/// Sets the transmit checksum offload of `ifindex` in the calling
/// thread's namespace (ETHTOOL_GTXCSUM, then ETHTOOL_STXCSUM where it
/// differs); returns whether it changed.
fn ethtool_tx_checksum(ifindex: u32, on: bool) -> std::io::Result<bool> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut ifreq = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: std::ptr::null_mut(),
        _pad: [0; 16],
    };
    // SAFETY: the buffer holds IFNAMSIZ bytes, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, ifreq.name.as_mut_ptr()) }.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut call = |cmd: u32, data: u32| -> std::io::Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        ifreq.data = &mut value;
        // SAFETY: ifreq and the value it points at live across the call.
        if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut ifreq) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(value.data)
    };
    if (call(ETHTOOL_GTXCSUM, 0)? != 0) == on {
        return Ok(false);
    }
    call(ETHTOOL_STXCSUM, u32::from(on))?;
    Ok(true)
}

/// `fib_multipath_hash_fields` bits (include/net/ip_fib.h): source IP
/// (0x01), destination IP (0x02), IP protocol (0x04) and destination port
/// (0x20); not the IPv6 flow label (0x08) nor the source port (0x10).
const HASH_FIELDS_WITHOUT_SOURCE_PORT: &str = "39";

/// One sysctl (by its dotted name) and the value netwarp wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: &'static str,
}

/// The file of the sysctl `name` (`net.ipv4.x` is /proc/sys/net/ipv4/x).
fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// The multipath hash policy and fields sysctls of one family.
fn multipath_hash_sysctls(ipv6: bool) -> (&'static str, &'static str) {
    if ipv6 {
        (
            "net.ipv6.fib_multipath_hash_policy",
            "net.ipv6.fib_multipath_hash_fields",
        )
    } else {
        (
            "net.ipv4.fib_multipath_hash_policy",
            "net.ipv4.fib_multipath_hash_fields",
        )
    }
}

/// A spread target's multipath hash settings of one family, in the order
/// to write them: the custom policy (3) over
/// [`HASH_FIELDS_WITHOUT_SOURCE_PORT`], the fields first so the policy
/// never applies other fields. Without the source port because a
/// connecting TCP socket's first route lookup hashes a random source port
/// (its own is not chosen yet; Linux 6.16 and later) and it is routed
/// again by its real one at the next routing change in the namespace:
/// most open connections would change member (and be reset, as each warp
/// NATs) whenever any member leaves. The kernel draws that random port
/// only when the source port is hashed. Without `custom` (no
/// `fib_multipath_hash_fields`, before Linux 5.14): layer 4 (1), the
/// nearest there is.
pub fn multipath_hash_settings(ipv6: bool, custom: bool) -> Vec<Setting> {
    let (policy, fields) = multipath_hash_sysctls(ipv6);
    if !custom {
        return vec![Setting {
            name: policy,
            value: "1",
        }];
    }
    vec![
        Setting {
            name: fields,
            value: HASH_FIELDS_WITHOUT_SOURCE_PORT,
        },
        Setting {
            name: policy,
            value: "3",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_hash_settings_leave_out_the_source_port_in_both_families() {
        for ipv6 in [false, true] {
            let family = if ipv6 { "ipv6" } else { "ipv4" };
            let settings = multipath_hash_settings(ipv6, true);
            let names: Vec<&str> = settings.iter().map(|s| s.name).collect();
            assert_eq!(
                names,
                [
                    format!("net.{family}.fib_multipath_hash_fields"),
                    format!("net.{family}.fib_multipath_hash_policy"),
                ]
            );
            assert_eq!(settings[1].value, "3");
            let fields: u32 = settings[0].value.parse().unwrap();
            // Source and destination IP, protocol, destination port.
            assert_eq!(fields, 0x01 | 0x02 | 0x04 | 0x20);
            assert_eq!(fields & 0x10, 0, "the source port is hashed");
            assert_eq!(fields & 0x08, 0, "the flow label is hashed");
        }
    }

    #[test]
    fn multipath_hash_settings_fall_back_to_layer_4_without_custom_fields() {
        assert_eq!(
            multipath_hash_settings(true, false),
            [Setting {
                name: "net.ipv6.fib_multipath_hash_policy",
                value: "1"
            }]
        );
        assert_eq!(
            sysctl_path("net.ipv4.fib_multipath_hash_fields"),
            Path::new("/proc/sys/net/ipv4/fib_multipath_hash_fields")
        );
    }
}
