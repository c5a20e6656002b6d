//! A netwarp daemon under test: its own config (labels and warp pattern
//! unique to the test, so parallel tests never manage each other's
//! containers), its log in a file, killed on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Labels and names one test uses.
#[derive(Clone, Debug)]
pub struct TestLabels {
    /// Prefix of warp container names, matched by `{prefix}*`.
    pub warp_prefix: String,
    pub target: String,
    pub network: String,
    pub rules: String,
    pub dns: String,
    pub allow: String,
    pub deny: String,
    /// Cap labels, so that parallel tests never cap each other's containers.
    pub egress_rate: String,
    pub ingress_rate: String,
    pub burst: String,
}

impl TestLabels {
    pub fn unique() -> Self {
        let id = crate::unique_name("t");
        Self {
            warp_prefix: format!("warp-{id}-"),
            target: format!("nwtest.{id}.target"),
            network: format!("nwtest.{id}.network"),
            rules: format!("nwtest.{id}.rules"),
            dns: format!("nwtest.{id}.dns"),
            allow: format!("nwtest.{id}.allow"),
            deny: format!("nwtest.{id}.deny"),
            egress_rate: format!("nwtest.{id}.egress-rate"),
            ingress_rate: format!("nwtest.{id}.ingress-rate"),
            burst: format!("nwtest.{id}.burst"),
        }
    }

    pub fn warp_name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.warp_prefix)
    }

    pub fn target_label(&self, warp: &str) -> String {
        format!("{}={warp}", self.target)
    }

    pub fn rules_label(&self, rules: &str) -> String {
        format!("{}={rules}", self.rules)
    }

    pub fn allow_label(&self, allowed: &str) -> String {
        format!("{}={allowed}", self.allow)
    }

    pub fn deny_label(&self, denied: &str) -> String {
        format!("{}={denied}", self.deny)
    }

    /// The DNS policy label's key.
    pub fn dns_label(&self) -> &str {
        &self.dns
    }

    pub fn network_label(&self, network: &str) -> String {
        format!("{}={network}", self.network)
    }
}

/// The netwarp binary `cargo xtask test` built, or the debug build.
pub fn netwarp_binary() -> PathBuf {
    std::env::var_os("NETWARP_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netwarp"),
        PathBuf::from,
    )
}

/// Host guard rule priorities of their own for each test daemon: the
/// guard owns its three priorities, and daemons run side by side.
pub fn unique_guard_priority() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    6_000 + 3 * ((std::process::id().wrapping_mul(37) + n) % 8_000)
}

/// The priority of each of netwarp's rules (`proto 87`) in the host's
/// `ip FAMILY rule` listing at the three guard priorities from `first`.
fn host_guard_rules(family: &str, first: u32) -> anyhow::Result<Vec<u32>> {
    let rules = crate::command::run("ip", &[family, "rule", "show"])?;
    Ok(rules
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let priority: u32 = words.next()?.strip_suffix(':')?.parse().ok()?;
            let tagged = words
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["proto", "87"]);
            ((first..first + 3).contains(&priority) && tagged).then_some(priority)
        })
        .collect())
}

/// Deletes the host guard rules at a daemon's three priorities and the
/// routes of its guard tables (which a stopped daemon keeps, to fail
/// closed): as many rule deletions as there are rules, in one `ip -batch`
/// per family, then one flush per table.
pub fn remove_host_guard_rules(first: u32) {
    for family in ["-4", "-6"] {
        let Ok(priorities) = host_guard_rules(family, first) else {
            continue;
        };
        if priorities.is_empty() {
            continue;
        }
        let batch: String = priorities
            .iter()
            .map(|p| format!("rule del priority {p} protocol 87\n"))
            .collect();
        let file = std::env::temp_dir().join(crate::unique_name("nwr"));
        if std::fs::write(&file, batch).is_ok() {
            let path = file.to_string_lossy();
            crate::command::run_quietly("ip", &[family, "-force", "-batch", &path]);
        }
        let _ = std::fs::remove_file(&file);
    }
    // Then the tables those rules looked up.
    let mut tables: Vec<(&str, u32)> = guard_table_routes(first)
        .into_iter()
        .map(|(family, table, _)| (family, table))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    for (family, table) in tables {
        let table = table.to_string();
        let _ = crate::command::output(
            "ip",
            &[family, "route", "flush", "table", &table, "proto", "87"],
        );
    }
}

/// The host's routes in the guard tables of the daemon whose first guard
/// priority is `first`: family, table, and the route as `ip` prints it.
pub fn guard_table_routes(first: u32) -> Vec<(&'static str, u32, String)> {
    let start = 0x5700_0000u32 + first * 0x1000;
    let tables = start..start + 0x1000;
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let shown = crate::command::run(
            "ip",
            &[family, "route", "show", "table", "all", "proto", "87"],
        )
        .unwrap_or_default();
        for line in shown.lines() {
            let table = (line.split_whitespace())
                .skip_while(|w| *w != "table")
                .nth(1)
                .and_then(|t| t.parse().ok());
            if let Some(table) = table.filter(|t| tables.contains(t)) {
                routes.push((family, table, line.to_owned()));
            }
        }
    }
    routes
}

/// The eBPF dataplane's from-container hook the tests' daemons use:
/// NETWARP_TEST_EBPF_HOOK (`tc` or `xdp`), else the daemon's default.
pub fn test_ebpf_hook() -> Option<String> {
    std::env::var("NETWARP_TEST_EBPF_HOOK")
        .ok()
        .filter(|h| !h.is_empty())
}

/// A daemon config for `labels` with `rules_toml` appended: the test's own
/// pin dir, guard priorities and control socket, metrics on a free port,
/// and the eBPF hook of [`test_ebpf_hook`].
pub fn config_toml(
    labels: &TestLabels,
    mode: &str,
    rules_toml: &str,
    pin_dir: &std::path::Path,
    guard_priority: u32,
    socket: &std::path::Path,
) -> String {
    let hook = test_ebpf_hook()
        .map(|h| format!("ebpf_from_container_hook = \"{h}\"\n"))
        .unwrap_or_default();
    format!(
        "warp_container_name_pattern = \"{}*\"\ntarget_container_label = \"{}\"\n\
         network_preference_label = \"{}\"\nrules_label = \"{}\"\ndns_label = \"{}\"\n\
         allow_label = \"{}\"\ndeny_label = \"{}\"\n\
         [dataplane]\nmode = \"{mode}\"\nresync_interval_secs = 5\n{hook}\
         bpf_pin_dir = \"{}\"\nhost_guard_priority = {}\n\
         [rate_limits]\negress_label = \"{}\"\ningress_label = \"{}\"\n\
         burst_label = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [control]\nsocket = \"{}\"\n\
         [logging]\nlevel = \"debug\"\n{rules_toml}",
        labels.warp_prefix,
        labels.target,
        labels.network,
        labels.rules,
        labels.dns,
        labels.allow,
        labels.deny,
        pin_dir.display(),
        guard_priority,
        labels.egress_rate,
        labels.ingress_rate,
        labels.burst,
        socket.display()
    )
}

pub struct Daemon {
    child: Option<Child>,
    /// The first of its host guard rule priorities.
    guard_priority: u32,
    /// The eBPF pin directory, private to this daemon.
    pin_dir: PathBuf,
    config: PathBuf,
    /// The daemon's private control socket (`netwarp status`).
    socket: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    /// Run under a seccomp filter that denies bpf(2).
    deny_bpf: bool,
    /// `NETWARP_*` variables for the daemon.
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes a config for `labels` with `rules_toml` appended, and starts
    /// `netwarp run` in `mode`.
    pub fn start(labels: &TestLabels, mode: &str, rules_toml: &str) -> anyhow::Result<Self> {
        Self::start_with(labels, mode, rules_toml, false)
    }

    /// Like [`Self::start`], optionally with bpf(2) denied by seccomp.
    pub fn start_with(
        labels: &TestLabels,
        mode: &str,
        rules_toml: &str,
        deny_bpf: bool,
    ) -> anyhow::Result<Self> {
        Self::create(labels, mode, rules_toml, deny_bpf, &[])
    }

    fn create(
        labels: &TestLabels,
        mode: &str,
        rules_toml: &str,
        deny_bpf: bool,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name("nwd"));
        fs::create_dir_all(&dir)?;
        let config = dir.join("netwarp.toml");
        let guard_priority = unique_guard_priority();
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(dir.file_name().expect("named"));
        let socket = dir.join("netwarp.sock");
        fs::write(
            &config,
            config_toml(labels, mode, rules_toml, &pin_dir, guard_priority, &socket),
        )?;
        let mut daemon = Self {
            child: None,
            guard_priority,
            pin_dir,
            config,
            socket,
            log: dir.join("netwarp.log"),
            extra_args: Vec::new(),
            deny_bpf,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Like [`Self::start`], with extra environment variables (which beat
    /// the config file).
    pub fn start_with_env(
        labels: &TestLabels,
        mode: &str,
        rules_toml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::create(labels, mode, rules_toml, false, env)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(netwarp_binary());
        if self.deny_bpf {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the filter setup only makes prctl calls.
            unsafe {
                command.pre_exec(crate::seccomp::deny_bpf_syscall);
            }
        }
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(&self.extra_args)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", netwarp_binary().display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, for at most `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the daemon never logged `{needle}`; its log:\n{}",
            self.log()
        )
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(&mut self, signal: i32) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            child.wait()?;
        }
        Ok(())
    }

    /// Sends `signal` to the running daemon without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn restart(&mut self, signal: i32) -> anyhow::Result<()> {
        self.stop(signal)?;
        self.spawn()
    }

    /// The first of the daemon's three host guard priorities.
    pub fn guard_priority(&self) -> u32 {
        self.guard_priority
    }

    /// The host's routes (both families) in the daemon's guard tables, as
    /// `ip route` prints them.
    pub fn host_guard_routes(&self) -> Vec<String> {
        guard_table_routes(self.guard_priority)
            .into_iter()
            .map(|(_, _, route)| route)
            .collect()
    }

    /// The running daemon's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many rules netwarp holds in the host's namespace at this
    /// daemon's guard priorities (`proto 87`, routes mode), per family:
    /// `(IPv4, IPv6)`.
    pub fn host_guard_rule_counts(&self) -> anyhow::Result<(usize, usize)> {
        Ok((
            host_guard_rules("-4", self.guard_priority)?.len(),
            host_guard_rules("-6", self.guard_priority)?.len(),
        ))
    }

    /// The daemon's private eBPF pin directory.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// The daemon's control socket.
    pub fn control_socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The metrics address the daemon bound (it listens on port 0 and logs
    /// the port it got), waiting for it for at most `timeout`. After a
    /// restart, the latest one.
    pub fn metrics_address(&self, timeout: Duration) -> anyhow::Result<std::net::SocketAddr> {
        const KEY: &str = "listen=";
        let mut found = None;
        eventually(timeout, || {
            found = self
                .log()
                .lines()
                .filter(|l| l.contains("metrics endpoint listening"))
                .filter_map(|l| l.split(KEY).nth(1)?.split_whitespace().next()?.parse().ok())
                .next_back();
            found.is_some()
        });
        found.with_context(|| {
            format!(
                "the daemon never logged its metrics address; log:\n{}",
                self.log()
            )
        })
    }

    /// The config file the daemon reads, for running other subcommands.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Stops the daemon (SIGTERM) and runs `netwarp cleanup` with its
    /// config, so that the next daemon starts from a clean host.
    pub fn stop_and_clean_up(&mut self) -> anyhow::Result<()> {
        self.stop(libc::SIGTERM)?;
        let out = Command::new(netwarp_binary())
            .arg("cleanup")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .output()
            .context("running netwarp cleanup")?;
        if !out.status.success() {
            bail!(
                "netwarp cleanup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The `latency_ms` of every `target programmed after event` line
    /// (the daemon's own measure from a Docker event's timestamp until the
    /// target is programmed), of `container` only when given.
    pub fn event_latencies_ms(&self, container: Option<&str>) -> Vec<f64> {
        self.log()
            .lines()
            .filter(|l| l.contains("target programmed after event"))
            .filter(|l| container.is_none_or(|c| log_field(l, "container") == Some(c)))
            .filter_map(|l| log_field(l, "latency_ms")?.parse().ok())
            .collect()
    }
}

/// The value of `key=value` in a text-format log line (a field or a span
/// field), matched as a whole key and a whole value.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut rest = line;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().next_back();
        let value = &rest[at + needle.len()..];
        if before.is_none_or(|c| c == ' ' || c == '{') {
            let end = value.find([' ', '}']).unwrap_or(value.len());
            return Some(&value[..end]);
        }
        rest = value;
    }
    None
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- netwarp log ---\n{}", self.log());
        }
        let _ = self.stop(libc::SIGKILL);
        // Removing the pins detaches the daemon's eBPF links.
        let _ = fs::remove_dir_all(&self.pin_dir);
        remove_host_guard_rules(self.guard_priority);
        if let Some(dir) = self.config.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Polls `check` every 100 ms until it returns true, for at most `timeout`.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
