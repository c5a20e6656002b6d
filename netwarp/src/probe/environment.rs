//! Where netwarp runs: in a container or not, and whether it shares the
//! host's network and pid namespaces, which it needs to reach the host's
//! veths and guard rules and to open targets' `/proc/PID/ns/net`.
//!
//! [`Facts::read`] gathers raw observations once; every decision is a pure
//! function of them, so the rules are unit-tested without containers.

use std::path::Path;

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`), fixed
/// since Linux 3.8: a process that sees it shares the host's pids.
pub const PID_INIT_INO: u64 = 0xEFFF_FFFC;
/// The inode of the initial network namespace on kernels that number it
/// statically (`PROC_NET_INIT_INO`, recent kernels); older kernels number it
/// dynamically, so only a match is evidence, a mismatch is not.
pub const NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// The fixes, as a Compose key and a `docker run` flag.
pub const FIX_PID: &str = "Compose: `pid: host`; docker run: `--pid host`; where neither \
     exists (a Swarm service), mount the host's /proc (`/proc:/host/proc:ro`) and set \
     NETWARP_DATAPLANE_HOST_PROC_DIR=/host/proc";
pub const FIX_NET: &str = "Compose: `network_mode: host`; docker run: `--network host`";
/// SYS_ADMIN also grants what BPF and PERFMON would (and older engines,
/// such as Docker 20.10, reject those two names); SYS_PTRACE opens the
/// `/proc/PID/ns/net` of containers holding capabilities netwarp lacks (a
/// privileged warp, for example), which the kernel refuses otherwise.
pub const FIX_CAPS: &str = "Compose: `cap_add: [NET_ADMIN, SYS_ADMIN, SYS_PTRACE]`; \
     docker run: `--cap-add NET_ADMIN --cap-add SYS_ADMIN --cap-add SYS_PTRACE`";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    Unknown,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Yes => "yes",
            Answer::No => "no",
            Answer::Unknown => "unknown",
        })
    }
}

/// An answer and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub answer: Answer,
    pub detail: String,
}

impl Finding {
    fn new(answer: Answer, detail: impl Into<String>) -> Self {
        Self {
            answer,
            detail: detail.into(),
        }
    }
}

/// Raw observations of the process's surroundings.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `/.dockerenv` exists (Docker creates it in every container).
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (Podman's equivalent).
    pub containerenv: bool,
    /// `/proc/self/cgroup`.
    pub cgroup: String,
    /// `/proc/self/mountinfo`.
    pub mountinfo: String,
    pub own_pid: u32,
    /// Inodes of `/proc/self/ns/{pid,net}`.
    pub pid_ns: Option<u64>,
    pub net_ns: Option<u64>,
    /// A visible process named `dockerd`: its pid, and its network
    /// namespace's inode or why that cannot be read.
    pub dockerd: Option<(u32, Result<u64, String>)>,
    /// `/proc/1/ns/net`'s inode, or why it cannot be read (some sandboxes
    /// deny it even to root).
    pub init_net_ns: Result<u64, String>,
    /// `dataplane.host_proc_dir` when it is not `/proc`: the directory, and
    /// the pid its `self` names (netwarp as that procfs numbers it).
    pub host_proc: Option<(String, Result<u32, String>)>,
}

fn ns_inode(path: &Path) -> Result<u64, String> {
    let link =
        std::fs::read_link(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = link.to_string_lossy();
    // The link reads `net:[4026531833]`.
    text.split_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected {} -> {text}", path.display()))
}

/// The first process named `dockerd` in `proc` (bounded by its size).
fn find_dockerd(proc: &Path) -> Option<u32> {
    std::fs::read_dir(proc)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(proc.join(format!("{pid}/comm")))
                .is_ok_and(|c| c.trim() == "dockerd")
        })
}

impl Facts {
    /// Observes the surroundings; host pids are looked up in `host_proc`
    /// (`dataplane.host_proc_dir`).
    pub fn read(host_proc: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            dockerenv: Path::new("/.dockerenv").exists(),
            containerenv: Path::new("/run/.containerenv").exists(),
            cgroup: read("/proc/self/cgroup"),
            mountinfo: read("/proc/self/mountinfo"),
            own_pid: std::process::id(),
            pid_ns: ns_inode(Path::new("/proc/self/ns/pid")).ok(),
            net_ns: ns_inode(Path::new("/proc/self/ns/net")).ok(),
            dockerd: find_dockerd(host_proc)
                .map(|pid| (pid, ns_inode(&host_proc.join(format!("{pid}/ns/net"))))),
            init_net_ns: ns_inode(&host_proc.join("1/ns/net")),
            host_proc: (host_proc != Path::new("/proc")).then(|| {
                let own = std::fs::read_link(host_proc.join("self"))
                    .map_err(|e| format!("cannot read {}/self: {e}", host_proc.display()))
                    .and_then(|link| {
                        (link.to_string_lossy().parse::<u32>()).map_err(|e| {
                            format!("{}/self -> {}: {e}", host_proc.display(), link.display())
                        })
                    });
                (host_proc.display().to_string(), own)
            }),
        }
    }
}

/// Why netwarp believes it runs in a container (every sign found), or
/// `None`. Signs: Docker's `/.dockerenv`, Podman's `/run/.containerenv`, a
/// container runtime in `/proc/self/cgroup` (cgroup v1, or v2 without a
/// cgroup namespace), and Docker's per-container bind mounts (`/etc/hostname`
/// and friends from `/var/lib/docker/containers/<id>/`) in
/// `/proc/self/mountinfo`, which remain visible under cgroup v2.
pub fn container(facts: &Facts) -> Option<String> {
    let mut signs = Vec::new();
    if facts.dockerenv {
        signs.push("/.dockerenv exists");
    }
    if facts.containerenv {
        signs.push("/run/.containerenv exists");
    }
    let runtime_cgroup = facts.cgroup.lines().any(|l| {
        let path = l.splitn(3, ':').nth(2).unwrap_or_default();
        [
            "/docker/",
            "/docker-",
            "/libpod-",
            "/kubepods",
            "/containerd/",
        ]
        .iter()
        .any(|s| path.contains(s))
    });
    if runtime_cgroup {
        signs.push("/proc/self/cgroup names a container runtime");
    }
    let docker_mounts = facts.mountinfo.lines().any(|l| {
        // Field 4 is the mount's root within its filesystem.
        l.split_whitespace()
            .nth(3)
            .is_some_and(|root| root.contains("/docker/containers/"))
    });
    if docker_mounts {
        signs.push("/proc/self/mountinfo shows Docker's per-container mounts");
    }
    (!signs.is_empty()).then(|| signs.join(", "))
}

/// Whether netwarp shares the host's pid namespace.
pub fn host_pid(facts: &Facts, in_container: bool) -> Finding {
    if facts.pid_ns == Some(PID_INIT_INO) {
        return Finding::new(Answer::Yes, "the initial pid namespace");
    }
    // Another procfs that numbers netwarp differently belongs to an
    // ancestor pid namespace: the host's, mounted into the container.
    if let Some((dir, own)) = &facts.host_proc {
        return match own {
            Ok(pid) if *pid != facts.own_pid => Finding::new(
                Answer::Yes,
                format!(
                    "host pids are visible in {dir} (dataplane.host_proc_dir), where netwarp is pid {pid}"
                ),
            ),
            Ok(_) => Finding::new(
                Answer::No,
                format!(
                    "{dir} (dataplane.host_proc_dir) numbers netwarp as its own pid namespace does: it is not the host's /proc"
                ),
            ),
            Err(e) => Finding::new(Answer::No, format!("dataplane.host_proc_dir: {e}")),
        };
    }
    if let Some((pid, _)) = &facts.dockerd {
        return Finding::new(Answer::Yes, format!("dockerd is visible as pid {pid}"));
    }
    if facts.own_pid == 1 {
        return Finding::new(
            Answer::No,
            "netwarp is pid 1: a pid namespace of its own, where targets' processes are invisible",
        );
    }
    if in_container {
        return Finding::new(
            Answer::No,
            "not the initial pid namespace, and no dockerd process is visible",
        );
    }
    Finding::new(
        Answer::Unknown,
        "not the initial pid namespace, and no dockerd process is visible (is Docker on another machine?)",
    )
}

/// Whether netwarp shares the host's (dockerd's) network namespace.
pub fn host_net(facts: &Facts, host_pid: Answer) -> Finding {
    let Some(own) = facts.net_ns else {
        return Finding::new(Answer::Unknown, "cannot read /proc/self/ns/net");
    };
    if own == NET_INIT_INO {
        return Finding::new(Answer::Yes, "the initial network namespace");
    }
    let mut unknown = Vec::new();
    match &facts.dockerd {
        Some((pid, Ok(dockerd))) => {
            return if *dockerd == own {
                Finding::new(Answer::Yes, format!("the same as dockerd's (pid {pid})"))
            } else {
                Finding::new(
                    Answer::No,
                    format!("net:[{own}], dockerd's (pid {pid}) is net:[{dockerd}]"),
                )
            };
        }
        Some((_, Err(e))) => unknown.push(e.clone()),
        None => unknown.push("no dockerd process is visible".to_owned()),
    }
    // /proc/1 is the host's init only in the host's pid namespace.
    if host_pid == Answer::Yes {
        match &facts.init_net_ns {
            Ok(init) if *init == own => {
                return Finding::new(Answer::Yes, "the same as pid 1's");
            }
            Ok(init) => {
                return Finding::new(Answer::No, format!("net:[{own}], pid 1's is net:[{init}]"));
            }
            Err(e) => unknown.push(e.clone()),
        }
    } else {
        unknown.push("pid 1 is not the host's init".to_owned());
    }
    Finding::new(Answer::Unknown, unknown.join("; "))
}

/// The whole picture, decided from `facts`.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The signs of a container, `None` when there are none.
    pub container: Option<String>,
    pub host_pid: Finding,
    pub host_net: Finding,
}

impl Environment {
    pub fn decide(facts: &Facts) -> Self {
        let container = container(facts);
        let host_pid = host_pid(facts, container.is_some());
        let host_net = host_net(facts, host_pid.answer);
        Self {
            container,
            host_pid,
            host_net,
        }
    }

    pub fn detect(host_proc: &Path) -> Self {
        Self::decide(&Facts::read(host_proc))
    }

    /// Why `netwarp run` must not start here, with the fix, if it must not:
    /// in a container without the host's pid namespace it cannot open
    /// targets' network namespaces, and in one with a network namespace
    /// of its own it would program the wrong namespace. Unknown answers
    /// do not refuse; [`Self::warnings`] names them.
    pub fn refusal(&self) -> Option<String> {
        self.container.as_ref()?;
        let mut reasons = Vec::new();
        if self.host_pid.answer == Answer::No {
            reasons.push(format!(
                "netwarp runs in a container without the host's pids ({}), so it \
                 cannot open targets' /proc/PID/ns/net; fix: {FIX_PID}",
                self.host_pid.detail
            ));
        }
        if self.host_net.answer == Answer::No {
            reasons.push(format!(
                "netwarp runs in a container without the host's network namespace ({}), so \
                 it cannot reach the containers' veths or the host's routing; fix: {FIX_NET}",
                self.host_net.detail
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("\n"))
    }

    /// Doubts worth a warning at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (what, finding, fix) in [
            ("pid", &self.host_pid, FIX_PID),
            ("network", &self.host_net, FIX_NET),
        ] {
            if finding.answer == Answer::Unknown {
                warnings.push(format!(
                    "cannot tell whether netwarp shares the host's {what} namespace ({}); \
                     in a container it needs {fix}",
                    finding.detail
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process on the host, as seen on a recent kernel.
    fn host() -> Facts {
        Facts {
            dockerenv: false,
            containerenv: false,
            cgroup: "0::/system.slice/ssh.service\n".into(),
            mountinfo: "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n".into(),
            own_pid: 4242,
            pid_ns: Some(PID_INIT_INO),
            net_ns: Some(NET_INIT_INO),
            dockerd: Some((700, Ok(NET_INIT_INO))),
            init_net_ns: Ok(NET_INIT_INO),
            host_proc: None,
        }
    }

    /// `docker run` with neither `--pid host` nor `--network host`, cgroup v2.
    fn plain_container() -> Facts {
        Facts {
            dockerenv: true,
            containerenv: false,
            cgroup: "0::/\n".into(),
            mountinfo: "600 590 254:0 /var/lib/docker/containers/ab12/hostname /etc/hostname \
                        rw,relatime - ext4 /dev/vda rw\n"
                .into(),
            own_pid: 1,
            pid_ns: Some(4026532500),
            net_ns: Some(4026532600),
            dockerd: None,
            init_net_ns: Ok(4026532600),
            host_proc: None,
        }
    }

    /// A Swarm service: host network, no host pid namespace, the host's
    /// /proc mounted at /host/proc (where init's links are denied).
    fn swarm_service(host_proc_self: Result<u32, String>) -> Facts {
        Facts {
            own_pid: 1,
            net_ns: Some(NET_INIT_INO),
            dockerd: Some((700, Err("cannot read /host/proc/700/ns/net: denied".into()))),
            init_net_ns: Err("cannot read /host/proc/1/ns/net: denied".into()),
            host_proc: Some(("/host/proc".into(), host_proc_self)),
            ..plain_container()
        }
    }

    #[test]
    fn the_hosts_proc_mounted_in_a_container_gives_host_pids() {
        let env = Environment::decide(&swarm_service(Ok(31337)));
        assert_eq!(env.host_pid.answer, Answer::Yes, "{:?}", env.host_pid);
        assert!(env.host_pid.detail.contains("/host/proc"));
        assert_eq!(env.host_net.answer, Answer::Yes);
        assert_eq!(env.refusal(), None);
    }

    #[test]
    fn a_host_proc_dir_that_is_not_the_hosts_is_refused_naming_it() {
        // netwarp's own /proc mounted elsewhere numbers it as pid 1 too.
        let env = Environment::decide(&swarm_service(Ok(1)));
        assert_eq!(env.host_pid.answer, Answer::No);
        let refusal = env.refusal().expect("refused");
        assert!(refusal.contains("host_proc_dir"), "{refusal}");
        assert!(
            refusal.contains("NETWARP_DATAPLANE_HOST_PROC_DIR"),
            "{refusal}"
        );
        let env = Environment::decide(&swarm_service(Err("cannot read /host/proc/self".into())));
        assert_eq!(env.host_pid.answer, Answer::No);
    }

    #[test]
    fn the_host_is_no_container_and_shares_everything() {
        let env = Environment::decide(&host());
        assert_eq!(env.container, None);
        assert_eq!(env.host_pid.answer, Answer::Yes);
        assert_eq!(env.host_net.answer, Answer::Yes);
        assert_eq!(env.refusal(), None);
        assert!(env.warnings().is_empty());
    }

    #[test]
    fn each_container_sign_is_named() {
        let mut facts = host();
        facts.mountinfo = plain_container().mountinfo;
        assert_eq!(
            container(&facts).as_deref(),
            Some("/proc/self/mountinfo shows Docker's per-container mounts")
        );
        facts.mountinfo.clear();
        facts.cgroup = "12:pids:/docker/0123abcd\n".into();
        assert_eq!(
            container(&facts).as_deref(),
            Some("/proc/self/cgroup names a container runtime")
        );
        facts.cgroup = "0::/system.slice/docker-0123.scope\n".into();
        assert!(container(&facts).is_some());
        facts.cgroup = "0::/system.slice/docker.service\n".into();
        assert_eq!(
            container(&facts),
            None,
            "dockerd's own cgroup is no container"
        );
        facts.containerenv = true;
        assert_eq!(
            container(&facts).as_deref(),
            Some("/run/.containerenv exists")
        );
    }

    #[test]
    fn a_plain_container_is_refused_with_both_fixes() {
        let env = Environment::decide(&plain_container());
        assert!(env.container.is_some());
        assert_eq!(env.host_pid.answer, Answer::No);
        // pid 1 is the container's own init, so its netns says nothing.
        assert_eq!(env.host_net.answer, Answer::Unknown);
        let refusal = env.refusal().expect("refused");
        assert!(refusal.contains("--pid host") && refusal.contains("`pid: host`"));
        assert!(env.warnings()[0].contains("--network host"));
    }

    #[test]
    fn host_pid_but_own_network_is_refused_for_the_network() {
        let mut facts = plain_container();
        facts.own_pid = 31337;
        facts.pid_ns = Some(PID_INIT_INO);
        facts.dockerd = Some((700, Ok(4026531840)));
        let env = Environment::decide(&facts);
        assert_eq!(env.host_pid.answer, Answer::Yes);
        assert_eq!(env.host_net.answer, Answer::No);
        let refusal = env.refusal().expect("refused");
        assert!(!refusal.contains("--pid host"));
        assert!(refusal.contains("--network host"));
    }

    #[test]
    fn host_namespaces_in_a_container_run() {
        let mut facts = plain_container();
        facts.own_pid = 31337;
        facts.pid_ns = Some(PID_INIT_INO);
        facts.net_ns = Some(4026531840);
        facts.dockerd = Some((700, Ok(4026531840)));
        let env = Environment::decide(&facts);
        assert!(env.container.is_some());
        assert_eq!(env.refusal(), None);
    }

    #[test]
    fn dockerd_in_a_nested_pid_namespace_still_counts_as_host_pid() {
        let mut facts = plain_container();
        facts.own_pid = 77;
        facts.dockerd = Some((12, Ok(4026532600)));
        let env = Environment::decide(&facts);
        assert_eq!(env.host_pid.answer, Answer::Yes);
        assert_eq!(env.host_net.answer, Answer::Yes);
    }

    #[test]
    fn unreadable_namespaces_are_unknown_and_never_refused() {
        let mut facts = host();
        facts.net_ns = Some(4026531840); // an older kernel: no static inode
        facts.dockerd = Some((700, Err("cannot read /proc/700/ns/net: denied".into())));
        facts.init_net_ns = Err("cannot read /proc/1/ns/net: Permission denied".into());
        facts.dockerenv = true;
        let env = Environment::decide(&facts);
        assert_eq!(env.host_net.answer, Answer::Unknown);
        assert!(env.host_net.detail.contains("/proc/1/ns/net"));
        assert_eq!(env.refusal(), None);
        assert_eq!(env.warnings().len(), 1);
    }

    #[test]
    fn off_the_docker_host_pid_is_unknown() {
        let mut facts = host();
        facts.pid_ns = Some(4026532999);
        facts.dockerd = None;
        let finding = host_pid(&facts, false);
        assert_eq!(finding.answer, Answer::Unknown);
    }
}
