//! Loud skips. Rust's test harness has no "skipped" outcome, so a test that
//! cannot run prints a marker line and records itself in the file named by
//! `NETWARP_SKIP_LOG`; `cargo xtask test` reports those tests as skipped and
//! does not count them as passed.

use std::io::Write as _;

/// The marker `cargo xtask test` looks for in test output.
pub const SKIP_MARKER: &str = "NETWARP-SKIP";

/// Records that `test` was skipped and why.
pub fn record(test: &str, reason: &str) {
    let line = format!("{SKIP_MARKER} {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("NETWARP_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("could not record the skip in {}: {e}", path.display());
        }
    }
}

/// Why the current process cannot run privileged tests, if it cannot.
pub fn missing_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| {
        format!("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF); running as uid {euid}")
    })
}

/// Why Docker tests cannot run, if they cannot.
pub fn missing_docker() -> Option<String> {
    if let Some(reason) = missing_root() {
        return Some(reason);
    }
    match crate::command::output("docker", &["version", "--format", "{{.Server.Version}}"]) {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "needs a Docker engine on /var/run/docker.sock (run `cargo xtask setup`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("needs the docker CLI: {e:#}")),
    }
}

/// Skips the calling test (returns from it) when `$reason` is `Some`.
#[macro_export]
macro_rules! skip_if {
    ($test:expr, $reason:expr) => {
        if let Some(reason) = $reason {
            $crate::skip::record($test, &reason);
            return;
        }
    };
}
