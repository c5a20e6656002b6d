//! netwarp's XDP pass program on a warp's end of its veth, inside the
//! warp's namespace (`dataplane.ebpf_from_container_hook = "xdp"`).
//!
//! A veth takes frames that XDP redirects to it (`ndo_xdp_xmit`) only
//! while its peer runs NAPI, which an XDP program on the peer turns on;
//! without one the kernel drops them. The program passes every frame, so
//! the warp sees what it saw before. It is netwarp's by its name, and the
//! only thing netwarp puts in a warp's namespace: `netwarp cleanup`
//! removes it. An interface that already runs someone else's XDP program
//! has NAPI on and is left alone.

use futures_util::TryStreamExt as _;
use netwarp_common::PROG_XDP_PASS;
use rtnetlink::{
    Handle, LinkUnspec,
    packet_route::link::{LinkAttribute, LinkMessage, LinkXdp},
};

use super::netns::{NamespaceHandle, NetnsError};

/// XDP_FLAGS_DRV_MODE: native XDP, which is what turns on the veth's NAPI.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The program attached to a link (native mode), if any.
fn attached_program(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

/// Whether the loaded program `id` is netwarp's pass program (by name,
/// which the kernel cuts to 15 bytes).
fn is_netwarp_pass(id: u32) -> bool {
    let kernel_name = &PROG_XDP_PASS[..PROG_XDP_PASS.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .is_some_and(|p| p.name_as_str() == Some(kernel_name))
}

/// Sets (`fd`) or clears (`-1`) the native XDP program of `ifindex`.
async fn set_program(handle: &Handle, ifindex: u32, fd: i32) -> Result<(), rtnetlink::Error> {
    let message = LinkUnspec::new_with_index(ifindex)
        .append_extra_attribute(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(fd),
            LinkXdp::Flags(XDP_FLAGS_DRV_MODE),
        ]))
        .build();
    handle.link().set(message).execute().await
}

/// Puts the pass program (`program`: its fd and id) on the interface with
/// `mac` in `namespace`, unless an XDP program runs there already (this
/// load's is kept, an earlier load's replaced, another's left alone).
/// Returns whether it attached.
pub async fn ensure(
    namespace: &NamespaceHandle,
    mac: &str,
    program: (i32, u32),
) -> Result<bool, NetnsError> {
    let handle = namespace.netlink_handle()?;
    // The link dump carries each link's XDP program too.
    let Some(link) = namespace.link_by_mac(mac).await? else {
        return Ok(false);
    };
    match attached_program(&link) {
        Some(id) if id == program.1 || !is_netwarp_pass(id) => Ok(false),
        _ => {
            set_program(handle, link.header.index, program.0)
                .await
                .map_err(namespace.netlink("XDP attach"))?;
            Ok(true)
        }
    }
}

/// Removes netwarp's pass program from every interface `handle` sees.
/// Returns how many it removed.
pub async fn remove_all(handle: &Handle) -> Result<usize, rtnetlink::Error> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let mut removed = 0;
    for link in links {
        if attached_program(&link).is_some_and(is_netwarp_pass) {
            set_program(handle, link.header.index, -1).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
