//! Network namespace and veth guards.

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};

use crate::command::{run, run_quietly};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(prefix);
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        // No IPv6 autoconfiguration: its RS/ND/MLD packets would add noise
        // to exact packet counts.
        netns.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ])?;
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Runs `f` on a fresh thread inside the namespace (the sockets it
    /// opens live there); the caller's thread stays where it is.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let netns = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<T> {
                    setns(&netns)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread inside netns {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quietly("ip", &["netns", "del", &self.name]);
    }
}

/// A process kept in a namespace (what a container's pid is to netwarp),
/// killed on drop.
pub struct Sleeper(std::process::Child);

impl Sleeper {
    /// Starts `sleep` inside `netns` and waits until it is there.
    pub fn start(netns: &Netns) -> anyhow::Result<Self> {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns.name(), "sleep", "600"])
            .spawn()
            .context("starting a process in the namespace")?;
        let sleeper = Self(child);
        let pid = sleeper.pid();
        let own = std::fs::read_link("/proc/self/ns/net").context("own namespace")?;
        let entered = crate::daemon::eventually(std::time::Duration::from_secs(10), || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != own)
        });
        if !entered {
            bail!("the process never entered netns {}", netns.name());
        }
        Ok(sleeper)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Moves the calling thread into a fresh named namespace, and moves it back
/// on drop. Everything the test then creates with `ip` (run from this thread)
/// lives in that namespace and dies with it.
///
/// Namespaces are per thread, so use it from a test's own thread, never from
/// an async worker that other tasks share.
pub struct EnteredNetns {
    netns: Netns,
    previous: File,
}

impl EnteredNetns {
    pub fn enter(prefix: &str) -> anyhow::Result<Self> {
        let previous =
            File::open("/proc/thread-self/ns/net").context("opening the current netns")?;
        let netns = Netns::create(prefix)?;
        let target = File::open(format!("/run/netns/{}", netns.name()))
            .with_context(|| format!("opening netns {}", netns.name()))?;
        setns(&target)?;
        Ok(Self { netns, previous })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous) {
            // The thread would stay in a namespace that is about to go away.
            panic!("could not return to the original netns: {e:#}");
        }
    }
}

fn setns(netns: &File) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A veth pair whose first end sits in the caller's namespace and whose
/// peer is moved into `peer_netns`. Deleting one end deletes both.
pub struct Veth {
    pub host: String,
    pub peer: String,
}

impl Veth {
    pub fn create(peer_netns: &Netns) -> anyhow::Result<Self> {
        let host = crate::unique_name("nwh");
        let peer = crate::unique_name("nwp");
        run(
            "ip",
            &[
                "link",
                "add",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                peer_netns.name(),
            ],
        )?;
        Ok(Self { host, peer })
    }

    /// Puts `host_cidr` on the host end and `peer_cidr` on the peer end
    /// (inside `peer_netns`) and brings both up.
    pub fn address(
        &self,
        peer_netns: &Netns,
        host_cidr: &str,
        peer_cidr: &str,
    ) -> anyhow::Result<()> {
        run("ip", &["addr", "add", host_cidr, "dev", &self.host])?;
        run("ip", &["link", "set", &self.host, "up"])?;
        peer_netns.exec(&["ip", "addr", "add", peer_cidr, "dev", &self.peer])?;
        peer_netns.exec(&["ip", "link", "set", &self.peer, "up"])?;
        Ok(())
    }

    /// The host end's ifindex, in the caller's namespace.
    pub fn host_ifindex(&self) -> anyhow::Result<u32> {
        // /sys shows the namespace of whoever mounted it, so ask ip instead.
        let out = run("ip", &["-o", "link", "show", "dev", &self.host])?;
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("parsing the ifindex of {} from `{out}`", self.host))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Gone already when its namespace was deleted first.
        let _ = crate::command::output("ip", &["link", "del", &self.host]);
    }
}
