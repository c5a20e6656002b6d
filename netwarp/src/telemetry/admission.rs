//! Which connections the metrics endpoint and the control socket keep.
//!
//! Both accept every connection, up to a bound derived from the file
//! descriptor limit. At the bound a new connection is still taken, and the
//! *oldest connection that has not yet sent its request* is shed to make
//! room (the oldest of all when every one is mid-request). Refusing the
//! newcomer instead, as a plain semaphore does, lets any local process
//! blind monitoring by holding the slots with connections that send
//! nothing; shedding the oldest idle one means such a client has to open
//! connections faster than a well-behaved client sends its request line to
//! keep it out. Idle connections also end on their own after a short
//! header timeout, so the bound is only reached under a flood.
//!
//! A connection costs one task and its buffers (the HTTP read buffer is
//! capped at [`super::http`]'s `MAX_BUF_SIZE`), so the bound is also a cap on
//! memory, and the file descriptors it may take are a fraction of the
//! process limit, so a flood cannot starve the controller of descriptors.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// How far a connection has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the client's request: idle or slow, shed first.
    Waiting,
    /// Its request arrived and is being answered.
    Serving,
}

struct Entry {
    phase: Phase,
    /// Dropping it tells the connection's task to close the connection.
    _shed: oneshot::Sender<()>,
}

/// The live connections of one endpoint, keyed by admission order.
#[derive(Default)]
struct Registry {
    next: u64,
    /// Ids only grow, so the first entry is the oldest connection.
    live: BTreeMap<u64, Entry>,
}

impl Registry {
    /// The connection to shed to make room: the oldest still waiting for
    /// its request, else the oldest.
    fn victim(&self) -> Option<u64> {
        self.live
            .iter()
            .find(|(_, e)| e.phase == Phase::Waiting)
            .or_else(|| self.live.iter().next())
            .map(|(id, _)| *id)
    }

    fn oldest_waiting(&self) -> Option<u64> {
        self.live
            .iter()
            .find(|(_, e)| e.phase == Phase::Waiting)
            .map(|(id, _)| *id)
    }
}

/// The connections of one endpoint, at most `bound` at once.
pub struct Admission {
    bound: usize,
    registry: Mutex<Registry>,
}

/// Resolves (with an error: its sender was dropped) when the connection is
/// shed; the connection's task then closes it.
pub type Shed = oneshot::Receiver<()>;

impl Admission {
    pub fn new(bound: usize) -> Arc<Self> {
        Arc::new(Self {
            bound: bound.max(1),
            registry: Mutex::default(),
        })
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The lock guards plain map updates that cannot panic halfway.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a new connection (in [`Phase::Waiting`]); at the bound, sheds
    /// one first. Returns its slot, the signal that it was shed, and
    /// whether another connection was shed for it.
    pub fn admit(self: &Arc<Self>) -> (Slot, Shed, bool) {
        let (tx, rx) = oneshot::channel();
        let mut registry = self.registry();
        let mut shed = false;
        while registry.live.len() >= self.bound {
            let Some(victim) = registry.victim() else {
                break;
            };
            registry.live.remove(&victim);
            shed = true;
        }
        let id = registry.next;
        registry.next += 1;
        registry.live.insert(
            id,
            Entry {
                phase: Phase::Waiting,
                _shed: tx,
            },
        );
        let slot = Slot {
            admission: self.clone(),
            id,
        };
        (slot, rx, shed)
    }

    /// Sheds the oldest connection still waiting for its request, to free
    /// a file descriptor when accept(2) fails for lack of them. Returns
    /// whether there was one.
    pub fn shed_idle(&self) -> bool {
        let mut registry = self.registry();
        match registry.oldest_waiting() {
            Some(victim) => {
                registry.live.remove(&victim);
                true
            }
            None => false,
        }
    }

    /// Connections currently held.
    pub fn held(&self) -> usize {
        self.registry().live.len()
    }
}

/// One admitted connection; dropping it frees its place.
pub struct Slot {
    admission: Arc<Admission>,
    id: u64,
}

impl Slot {
    /// The request arrived: shed this connection only when no idle one is
    /// left to shed.
    pub fn serving(&self) {
        if let Some(entry) = self.admission.registry().live.get_mut(&self.id) {
            entry.phase = Phase::Serving;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.registry().live.remove(&self.id);
    }
}

/// The connection bound of an endpoint: `ceiling`, but never more than
/// `1/share` of the process's file descriptor limit, so that a flood of
/// connections leaves descriptors for the controller (netlink sockets,
/// namespace files, BPF maps, Docker's socket) and the other endpoint.
pub fn bound(ceiling: usize, share: u64, fd_limit: u64) -> usize {
    let by_fds = usize::try_from(fd_limit / share.max(1)).unwrap_or(usize::MAX);
    ceiling.min(by_fds).max(1)
}

/// Raises the soft limit on open files to the hard limit (at most
/// `ceiling`), the way most daemons and runtimes do at start: the default
/// soft limit of 1024 is a relic of select(2), which netwarp does not use,
/// and it spawns no programs that could inherit the raised limit. Returns
/// the soft limit now in force.
pub fn raise_fd_limit(ceiling: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let wanted = limit.rlim_max.min(ceiling);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return wanted;
        }
    }
    limit.rlim_cur
}

/// Whether accept(2) failed for lack of file descriptors (then shedding an
/// idle connection helps, and retrying at once would spin).
pub fn out_of_fds(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shed(rx: &mut Shed) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    #[test]
    fn admits_up_to_the_bound_without_shedding() {
        let admission = Admission::new(3);
        let mut held: Vec<_> = (0..3).map(|_| admission.admit()).collect();
        assert_eq!(admission.held(), 3);
        assert!(held.iter().all(|(_, _, shed)| !shed));
        assert!(held.iter_mut().all(|(_, rx, _)| !shed(rx)));
    }

    #[test]
    fn at_the_bound_the_oldest_idle_connection_is_shed() {
        let admission = Admission::new(3);
        let mut a = admission.admit();
        let mut b = admission.admit();
        let mut c = admission.admit();
        // The oldest is mid-request; the oldest idle one is `b`.
        a.0.serving();
        let (_d, mut d_rx, shed_one) = admission.admit();
        assert!(shed_one);
        assert!(!shed(&mut a.1), "a connection mid-request was shed");
        assert!(shed(&mut b.1), "the oldest idle connection was kept");
        assert!(!shed(&mut c.1));
        assert!(!shed(&mut d_rx), "the newcomer was refused");
        // A shed connection's slot, dropped later, frees nothing twice.
        drop(b);
        assert_eq!(admission.held(), 3);
    }

    #[test]
    fn when_all_are_mid_request_the_oldest_is_shed() {
        let admission = Admission::new(2);
        let mut a = admission.admit();
        let mut b = admission.admit();
        a.0.serving();
        b.0.serving();
        let (_c, mut c_rx, shed_one) = admission.admit();
        assert!(shed_one);
        assert!(shed(&mut a.1));
        assert!(!shed(&mut b.1));
        assert!(!shed(&mut c_rx));
    }

    #[test]
    fn a_finished_connection_frees_its_place() {
        let admission = Admission::new(2);
        let a = admission.admit();
        let mut b = admission.admit();
        drop(a);
        assert_eq!(admission.held(), 1);
        let (_c, _, shed_one) = admission.admit();
        assert!(!shed_one);
        assert!(!shed(&mut b.1));
    }

    #[test]
    fn a_flood_of_idle_connections_never_outgrows_the_bound() {
        let admission = Admission::new(16);
        let held: Vec<_> = (0..1000).map(|_| admission.admit()).collect();
        assert_eq!(admission.held(), 16);
        // The survivors are the newest.
        let mut survivors: Vec<_> = held
            .into_iter()
            .enumerate()
            .filter_map(|(i, (_, mut rx, _))| (!shed(&mut rx)).then_some(i))
            .collect();
        survivors.sort_unstable();
        assert_eq!(survivors, (984..1000).collect::<Vec<_>>());
    }

    #[test]
    fn out_of_descriptors_sheds_only_idle_connections() {
        let admission = Admission::new(4);
        let mut a = admission.admit();
        let mut b = admission.admit();
        a.0.serving();
        assert!(admission.shed_idle());
        assert!(shed(&mut b.1));
        assert!(!admission.shed_idle(), "shed a connection mid-request");
        assert!(!shed(&mut a.1));
    }

    #[test]
    fn the_bound_leaves_descriptors_for_the_rest_of_the_daemon() {
        assert_eq!(bound(1024, 4, 65_536), 1024);
        assert_eq!(bound(1024, 4, 1024), 256);
        assert_eq!(bound(256, 8, 1024), 128);
        assert_eq!(bound(1024, 4, 2), 1);
        assert_eq!(bound(1024, 0, 64), 64);
    }

    #[test]
    fn out_of_fds_is_emfile_or_enfile() {
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_fds(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_fds(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
