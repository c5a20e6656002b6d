//! Host interface lookups by name and by index (libc, no netlink).

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

/// Whether the host interface `host_ifindex` is the peer of the veth
/// `container_ifindex`: its `iflink` (sysfs, of the network namespace
/// netwarp runs in, the host's) names that veth. A veth's peer ifindex is
/// numbered in the peer's own namespace, so a peer in another namespace
/// (an overlay network's) can share its number with an unrelated host
/// interface; this cross-check tells them apart.
pub fn is_host_peer_of(host_ifindex: u32, container_ifindex: u32) -> bool {
    interface_name(host_ifindex)
        .and_then(|name| std::fs::read_to_string(format!("/sys/class/net/{name}/iflink")).ok())
        .and_then(|iflink| iflink.trim().parse::<u32>().ok())
        == Some(container_ifindex)
}
