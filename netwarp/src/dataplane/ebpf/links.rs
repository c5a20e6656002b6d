//! netwarp's attachments: one set of links keyed by interface and hook,
//! each pinned (with a pin directory) at `links/<ifindex>-<hook>`, so it
//! outlives the daemon and a restart adopts it.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use super::{
    error::EbpfError,
    hooks::Hook,
    interfaces::interface_name,
    loader::{classifier, xdp},
};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, qdisc_add_clsact},
        xdp::{XdpLink, XdpLinkId, XdpMode},
    },
};

/// This process's handle on a link: a tc or an XDP one.
enum LinkId {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// Every attachment by (ifindex, hook). With a pin directory each link is
/// pinned and the pin holds it; the id, when present, is this process's
/// own handle on it.
#[derive(Default)]
pub(super) struct Links {
    held: HashMap<(u32, Hook), Option<LinkId>>,
    /// `<pin dir>/links`, if links are pinned.
    dir: Option<PathBuf>,
}

impl Links {
    pub(super) fn new(pin_dir: Option<&Path>) -> Self {
        Self {
            held: HashMap::new(),
            dir: pin_dir.map(|d| d.join("links")),
        }
    }

    fn pin(&self, ifindex: u32, hook: Hook) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(hook.pin_name(ifindex)))
    }

    /// The interfaces `hook` is attached to (or was adopted on).
    pub(super) fn ifindexes(&self, hook: Hook) -> BTreeSet<u32> {
        self.held
            .keys()
            .filter(|(_, h)| *h == hook)
            .map(|(ifindex, _)| *ifindex)
            .collect()
    }

    /// Whether `hook` is attached to `ifindex` (by this process or adopted).
    pub(super) fn holds(&self, ifindex: u32, hook: Hook) -> bool {
        self.held.contains_key(&(ifindex, hook))
    }

    /// Adopts the links pinned by an earlier run: each switches atomically
    /// to this build's program, so steering and blocking never stop across
    /// a restart. Pins of vanished interfaces, and unusable ones, are removed.
    pub(super) fn adopt_pinned(&mut self, ebpf: &mut Ebpf) -> Result<(), EbpfError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let entries = std::fs::read_dir(&dir).map_err(|source| EbpfError::PinDir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some((ifindex, hook)) = Hook::parse_pin(&entry.file_name().to_string_lossy())
            else {
                continue;
            };
            if interface_name(ifindex).is_none() {
                // The interface is gone, and its link with it.
                drop_stale_pin(&path);
                continue;
            }
            if let Some(id) = adopt(ebpf, &path, ifindex, hook)? {
                self.held.insert((ifindex, hook), Some(id));
            }
        }
        Ok(())
    }

    /// Attaches `hook`'s program to an interface, first in its chain.
    /// Attaching twice is a no-op; a link whose pin was deleted by hand is
    /// pinned again, or attached anew when the pin was its only reference.
    pub(super) fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        hook: Hook,
    ) -> Result<(), EbpfError> {
        let key = (ifindex, hook);
        let pin = self.pin(ifindex, hook);
        if let Some(held) = self.held.remove(&key) {
            match repin_if_removed(ebpf, held, hook.program(), pin.as_deref())? {
                Some(held) => {
                    self.held.insert(key, held);
                    return Ok(());
                }
                None => tracing::warn!(
                    ifindex,
                    hook = hook.pin_suffix(),
                    "a pinned link was removed behind netwarp's back; attaching again"
                ),
            }
        }
        let interface = interface_name(ifindex).ok_or(EbpfError::NoInterface(ifindex))?;
        // A pin netwarp does not hold yet (left by an attempt that failed
        // after pinning, or by another run since the load): adopted, not
        // attached a second time beside it.
        if let Some(path) = pin.as_deref().filter(|p| p.exists())
            && let Some(id) = adopt(ebpf, path, ifindex, hook)?
        {
            tracing::info!(
                ifindex,
                hook = hook.pin_suffix(),
                "adopted an existing pinned link"
            );
            self.held.insert(key, Some(id));
            return Ok(());
        }
        let id = attach_first(ebpf, &interface, hook, pin)?;
        self.held.insert(key, id);
        Ok(())
    }

    /// Attaches `hook`'s program to an interface while `wanted`, else
    /// detaches it if attached.
    pub(super) fn set(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        hook: Hook,
        wanted: bool,
    ) -> Result<(), EbpfError> {
        if wanted {
            self.attach(ebpf, ifindex, hook)
        } else if self.holds(ifindex, hook) {
            self.detach(ebpf, ifindex, hook)
        } else {
            Ok(())
        }
    }

    /// Detaches `hook`'s program from an interface, if attached, and
    /// removes its pin.
    pub(super) fn detach(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        hook: Hook,
    ) -> Result<(), EbpfError> {
        if let Some(Some(id)) = self.held.remove(&(ifindex, hook)) {
            let program = hook.program();
            let detached = match id {
                LinkId::Tc(id) => classifier(ebpf, program)?.detach(id),
                LinkId::Xdp(id) => xdp(ebpf, program)?.detach(id),
            };
            detached.map_err(|source| EbpfError::Program { program, source })?;
        }
        match self.pin(ifindex, hook) {
            Some(path) => remove_pin(&path),
            None => Ok(()),
        }
    }
}

/// Adopts the link pinned at `path` for `hook` on `ifindex`: switches it
/// atomically to this build's program. An unusable pin (not a tc link, or
/// a link no longer in the interface's chain) is removed and None
/// returned, so the caller attaches anew.
fn adopt(
    ebpf: &mut Ebpf,
    path: &Path,
    ifindex: u32,
    hook: Hook,
) -> Result<Option<LinkId>, EbpfError> {
    if hook.is_xdp() {
        return adopt_xdp(ebpf, path, hook);
    }
    let Some(link) = pinned_link::<SchedClassifierLink>(path) else {
        return Ok(None);
    };
    let program = hook.program();
    let prog = classifier(ebpf, program)?;
    let id = match prog.attach_to_link(link) {
        Ok(id) => id,
        Err(e) if severed(&e, path) => return Ok(None),
        Err(source) => return Err(EbpfError::Program { program, source }),
    };
    if let Some(interface) = interface_name(ifindex)
        && !in_chain(prog, &interface, hook)
    {
        tracing::warn!(path = %path.display(), interface, "dropping a pinned link its interface does not run");
        prog.detach(id)
            .map_err(|source| EbpfError::Program { program, source })?;
        drop_stale_pin(path);
        return Ok(None);
    }
    Ok(Some(LinkId::Tc(id)))
}

/// [`adopt`] for an XDP link: an interface runs one XDP program, and its
/// link holds it there until the interface goes (then the update fails).
fn adopt_xdp(ebpf: &mut Ebpf, path: &Path, hook: Hook) -> Result<Option<LinkId>, EbpfError> {
    let Some(link) = pinned_link::<XdpLink>(path) else {
        return Ok(None);
    };
    let program = hook.program();
    match xdp(ebpf, program)?.attach_to_link(link) {
        Ok(id) => Ok(Some(LinkId::Xdp(id))),
        Err(e) if severed(&e, path) => Ok(None),
        Err(source) => Err(EbpfError::Program { program, source }),
    }
}

/// The link pinned at `path`, as a link of type `L`; an unusable pin (of
/// another type, or unreadable) is removed and None returned.
fn pinned_link<L>(path: &Path) -> Option<L>
where
    L: TryFrom<FdLink>,
    <L as TryFrom<FdLink>>::Error: std::fmt::Display,
{
    let adopted = PinnedLink::from_pin(path)
        .map_err(|e| e.to_string())
        .and_then(|pinned| L::try_from(FdLink::from(pinned)).map_err(|e| e.to_string()));
    match adopted {
        Ok(link) => Some(link),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "dropping an unusable pinned link");
            drop_stale_pin(path);
            None
        }
    }
}

/// Whether switching the link pinned at `path` failed because its
/// interface went away (its pin is then removed). A pinned link outlives
/// its interface, detached ("severed"): the pin of another interface
/// that got its ifindex would hold nothing.
fn severed(error: &ProgramError, path: &Path) -> bool {
    let gone = matches!(error, ProgramError::SyscallError(e)
        if e.io_error.raw_os_error() == Some(libc::ENOLINK));
    if gone {
        tracing::warn!(path = %path.display(), "dropping a pinned link whose interface went away");
        drop_stale_pin(path);
    }
    gone
}

/// Whether `prog` runs in `interface`'s TCX chain for `hook`; true when
/// that cannot be asked (no TCX: then no link is pinned either).
fn in_chain(prog: &SchedClassifier, interface: &str, hook: Hook) -> bool {
    let Ok(ours) = prog.info().map(|info| info.id()) else {
        return true;
    };
    match SchedClassifier::query_tcx(interface, hook.attach_type()) {
        Ok((_, chain)) => chain.iter().any(|p| p.id() == ours),
        Err(_) => true,
    }
}

/// Removes the pin of a link that holds nothing netwarp relies on; a
/// failure only leaves a dead file, so it is logged, not fatal.
fn drop_stale_pin(path: &Path) {
    if let Err(e) = remove_pin(path) {
        tracing::warn!(error = %e, "removing a stale link pin failed");
    }
}

fn remove_pin(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::PinDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Attaches first in the interface's TCX chain (a clsact filter without
/// TCX) and pins the link at `pin` if given. Returns this process's
/// handle, which a pinned link does not need.
fn attach_first(
    ebpf: &mut Ebpf,
    interface: &str,
    hook: Hook,
    pin: Option<PathBuf>,
) -> Result<Option<LinkId>, EbpfError> {
    if hook.is_xdp() {
        return attach_xdp(ebpf, interface, hook, pin);
    }
    let program = hook.program();
    let prog: &mut SchedClassifier = classifier(ebpf, program)?;
    let attach_error = |source| EbpfError::Attach {
        program,
        interface: interface.to_owned(),
        source,
    };
    // First in the TCX chain, so policy applies whatever other tc programs
    // return; netwarp passes what it leaves alone on to them. Kernels
    // without TCX (< 6.6) get a clsact filter instead.
    let id = match prog.attach_with_options(
        interface,
        hook.attach_type(),
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    ) {
        Ok(id) => id,
        Err(tcx_error) => {
            tracing::debug!(interface, error = %tcx_error, "TCX attach failed; trying clsact");
            // An existing clsact qdisc is fine; a real failure shows in the attach.
            let _ = qdisc_add_clsact(interface);
            prog.attach(interface, hook.attach_type())
                .map_err(attach_error)?
        }
    };
    let Some(path) = pin else {
        return Ok(Some(LinkId::Tc(id)));
    };
    let link = prog.take_link(id).map_err(attach_error)?;
    pin_link(link, &path)?;
    Ok(None)
}

/// Attaches `hook`'s XDP program to an interface in native (driver) mode
/// and pins the link at `pin` if given.
fn attach_xdp(
    ebpf: &mut Ebpf,
    interface: &str,
    hook: Hook,
    pin: Option<PathBuf>,
) -> Result<Option<LinkId>, EbpfError> {
    let program = hook.program();
    let prog = xdp(ebpf, program)?;
    let attach_error = |source| EbpfError::Attach {
        program,
        interface: interface.to_owned(),
        source,
    };
    let id = (prog.attach(interface, XdpMode::Driver)).map_err(attach_error)?;
    let Some(path) = pin else {
        return Ok(Some(LinkId::Xdp(id)));
    };
    let link = prog.take_link(id).map_err(attach_error)?;
    pin_link(link, &path)?;
    Ok(None)
}

/// Pins a link; the pin keeps it attached once our handle drops.
fn pin_link<L>(link: L, path: &Path) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let pin_error = |reason: String| EbpfError::Pin {
        path: path.to_owned(),
        reason,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| pin_error(e.to_string()))?;
    fd_link.pin(path).map_err(|e| pin_error(e.to_string()))?;
    Ok(())
}

/// Checks an attachment this process made or adopted (`held`). Someone
/// may delete a link's pin by hand: if this process holds the link it is
/// pinned again; if the pin was its only reference, the link (and with it
/// steering and blocking) is gone. Returns what to keep holding, or None
/// when the caller must attach anew.
fn repin_if_removed(
    ebpf: &mut Ebpf,
    held: Option<LinkId>,
    program: &'static str,
    pin: Option<&Path>,
) -> Result<Option<Option<LinkId>>, EbpfError> {
    let Some(path) = pin else {
        return Ok(Some(held));
    };
    if path.exists() {
        return Ok(Some(held));
    }
    let Some(id) = held else {
        return Ok(None);
    };
    let program_error = |source| EbpfError::Program { program, source };
    match id {
        LinkId::Tc(id) => pin_link(
            classifier(ebpf, program)?
                .take_link(id)
                .map_err(program_error)?,
            path,
        )?,
        LinkId::Xdp(id) => pin_link(
            xdp(ebpf, program)?.take_link(id).map_err(program_error)?,
            path,
        )?,
    }
    tracing::warn!(path = %path.display(), "a link's pin was removed by hand; pinned it again");
    Ok(Some(None))
}
