//! Probing the kernel, the daemon's privileges and its surroundings (a
//! container or not, the host's namespaces, bpffs, Docker) to choose a
//! dataplane and to name what is missing.

pub mod environment;

use std::path::Path;

use crate::{
    config::{Config, DataplaneMode, DockerConnection},
    dataplane::ebpf::EbpfDataplane,
    privileges::{CapabilitySet, EBPF_CAPABILITIES, MissingCapabilities, ROUTES_CAPABILITIES},
};

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// The Compose or `docker run` line that fixes a failed check.
    pub fix: Option<String>,
}

pub struct ProbeReport {
    pub environment: environment::Environment,
    /// The engine's version and API version, when it answered.
    pub docker: Option<(String, String)>,
    pub checks: Vec<Check>,
    pub auto_choice: DataplaneMode,
    pub reason: String,
}

impl ProbeReport {
    pub fn to_json(&self) -> serde_json::Value {
        let env = &self.environment;
        serde_json::json!({
            "environment": {
                "container": env.container.is_some(),
                "container_signs": env.container,
                "host_pid_namespace": env.host_pid.answer.to_string(),
                "host_pid_namespace_detail": env.host_pid.detail,
                "host_network_namespace": env.host_net.answer.to_string(),
                "host_network_namespace_detail": env.host_net.detail,
                "docker_version": self.docker.as_ref().map(|d| &d.0),
                "docker_api_version": self.docker.as_ref().map(|d| &d.1),
            },
            "checks": self.checks.iter().map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix})).collect::<Vec<_>>(),
            "auto_choice": self.auto_choice.to_string(),
            "reason": self.reason,
        })
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub(crate) fn read_kernel_release() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned())
}

/// The (major, minor) version of a kernel release such as
/// `6.18.44-fc-v857`; None where it names no two numbers.
pub(crate) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    Some((parts.next()?, parts.next()?))
}

fn kernel_release() -> String {
    read_kernel_release().unwrap_or_else(|e| format!("unknown ({e})"))
}

/// True for kernels >= 6.6, which have TCX.
/// Whether the fq qdisc is built in (loaded) or available as a module.
fn has_sch_fq(release: &str) -> bool {
    std::path::Path::new("/sys/module/sch_fq").exists()
        || ["sch_fq.ko", "sch_fq.ko.xz", "sch_fq.ko.zst", "sch_fq.ko.gz"]
            .iter()
            .any(|f| {
                std::path::Path::new(&format!("/lib/modules/{release}/kernel/net/sched/{f}"))
                    .exists()
            })
}

fn has_tcx(release: &str) -> bool {
    kernel_version(release).is_some_and(|version| version >= (6, 6))
}

/// Linux's `BPF_FS_MAGIC`, the `f_type` statfs reports for bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether the pin directory (or the nearest directory above it that
/// exists, where netwarp would create it) is on a writable bpffs.
fn bpffs_check(pin_dir: &Path) -> Check {
    const FIX: &str = "Compose: `volumes: [\"/sys/fs/bpf:/sys/fs/bpf\"]`; docker run: \
         `--volume /sys/fs/bpf:/sys/fs/bpf` (writable; on the host: `mount -t bpf bpf /sys/fs/bpf`)";
    let existing = pin_dir
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    let Ok(c_path) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return Check {
            name: "bpffs at the pin dir",
            ok: false,
            detail: format!("{} is not a valid path", pin_dir.display()),
            fix: None,
        };
    };
    // SAFETY: statfs and access read a NUL-terminated path and write only
    // into the struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let (on_bpffs, writable) = unsafe {
        let on_bpffs =
            libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC;
        (on_bpffs, libc::access(c_path.as_ptr(), libc::W_OK) == 0)
    };
    let (ok, detail) = match (on_bpffs, writable) {
        (true, true) => (
            true,
            format!("{} is on a writable bpffs", existing.display()),
        ),
        (true, false) => (
            false,
            format!("{} is on bpffs but not writable", existing.display()),
        ),
        (false, _) => (
            false,
            format!(
                "{} (for the pin dir {}) is not on bpffs; the eBPF dataplane cannot pin",
                existing.display(),
                pin_dir.display()
            ),
        ),
    };
    Check {
        name: "bpffs at the pin dir",
        ok,
        detail,
        fix: (!ok).then(|| FIX.to_owned()),
    }
}

/// Asks the engine for its version, for at most a few seconds.
fn docker_version(config: &Config) -> Result<(String, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let ask = async {
            let client = crate::docker::connect(&config.docker, config.docker_api_version)
                .await
                .map_err(|e| e.to_string())?;
            let version = client.version().await.map_err(|e| e.to_string())?;
            Ok((
                version.version.unwrap_or_else(|| "?".into()),
                version.api_version.unwrap_or_else(|| "?".into()),
            ))
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), ask)
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()))
    })
}

fn docker_check(config: &Config, answer: &Result<(String, String), String>) -> Check {
    let fix = match &config.docker {
        DockerConnection::Unix(path) => Some(format!(
            "Compose: `volumes: [\"{path}:{path}\"]`; docker run: `--volume {path}:{path}`"
        )),
        _ => None,
    };
    match answer {
        Ok((engine, api)) => Check {
            name: "docker",
            ok: true,
            detail: format!(
                "{} answers: engine {engine}, API {api}",
                crate::docker::describe(&config.docker)
            ),
            fix: None,
        },
        Err(e) => Check {
            name: "docker",
            ok: false,
            detail: e.clone(),
            fix,
        },
    }
}

fn environment_checks(env: &environment::Environment) -> Vec<Check> {
    use environment::{Answer, FIX_NET, FIX_PID};
    let in_container = env.container.is_some();
    let mut checks = vec![Check {
        name: "container",
        // Informational: both are fine.
        ok: true,
        detail: env
            .container
            .clone()
            .unwrap_or_else(|| "no sign of a container".into()),
        fix: None,
    }];
    for (name, finding, fix) in [
        ("host pid namespace", &env.host_pid, FIX_PID),
        ("host network namespace", &env.host_net, FIX_NET),
    ] {
        checks.push(Check {
            name,
            ok: finding.answer == Answer::Yes,
            detail: if finding.answer == Answer::Unknown {
                format!("unknown: {}", finding.detail)
            } else {
                finding.detail.clone()
            },
            fix: (in_container && finding.answer != Answer::Yes).then(|| fix.to_owned()),
        });
    }
    checks
}

pub fn probe(config: &Config) -> ProbeReport {
    let environment = environment::Environment::detect(&config.host_proc_dir);
    let mut checks = environment_checks(&environment);
    let in_container = environment.container.is_some();
    let caps_fix = || in_container.then(|| environment::FIX_CAPS.to_owned());
    let caps = CapabilitySet::current();
    let (routes_missing, ebpf_missing) = match &caps {
        Ok(caps) => (
            caps.missing(ROUTES_CAPABILITIES),
            caps.missing(EBPF_CAPABILITIES),
        ),
        Err(_) => (ROUTES_CAPABILITIES.to_vec(), EBPF_CAPABILITIES.to_vec()),
    };
    checks.push(Check {
        name: "capabilities (routes)",
        ok: routes_missing.is_empty(),
        detail: if routes_missing.is_empty() {
            "CAP_NET_ADMIN, CAP_SYS_ADMIN".into()
        } else {
            MissingCapabilities(routes_missing.clone())
                .to_string()
                .replace('\n', " ")
        },
        fix: (!routes_missing.is_empty()).then(caps_fix).flatten(),
    });
    checks.push(Check {
        name: "capabilities (ebpf)",
        ok: ebpf_missing.is_empty(),
        detail: if ebpf_missing.is_empty() {
            "CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN)".into()
        } else {
            MissingCapabilities(ebpf_missing.clone())
                .to_string()
                .replace('\n', " ")
        },
        fix: (!ebpf_missing.is_empty()).then(caps_fix).flatten(),
    });
    let release = kernel_release();
    checks.push(Check {
        name: "tcx",
        ok: has_tcx(&release),
        detail: format!("kernel {release}; TCX needs 6.6 or later, older kernels use clsact"),
        fix: None,
    });
    let fq = has_sch_fq(&release);
    checks.push(Check {
        name: "sch_fq (EDT pacing)",
        ok: fq,
        detail: if fq {
            "present; netwarp does not use EDT pacing yet: caps use the tbf shaper (default) \
             or the BPF policer"
                .into()
        } else {
            "absent; caps use the tbf shaper (rate_limits.enforcement = shaper, the default) \
             or the BPF policer, which drops and hurts TCP"
                .into()
        },
        fix: None,
    });
    let load = EbpfDataplane::load();
    checks.push(Check {
        name: "bpf() test load",
        ok: load.is_ok(),
        detail: match &load {
            Ok(_) => "netwarp's tc programs loaded and verified".into(),
            Err(e) => e.to_string(),
        },
        fix: None,
    });
    checks.push(bpffs_check(&config.bpf_pin_dir));
    let docker = docker_version(config);
    checks.push(docker_check(config, &docker));
    // The same rule as `netwarp run --dataplane auto`.
    let (auto_choice, reason) = if ebpf_missing.is_empty() && load.is_ok() {
        (
            DataplaneMode::Ebpf,
            "the privileges are present and the programs load".to_owned(),
        )
    } else if routes_missing.is_empty() {
        (
            DataplaneMode::Routes,
            "the eBPF checks above failed; routes needs only CAP_NET_ADMIN and CAP_SYS_ADMIN"
                .to_owned(),
        )
    } else {
        (
            DataplaneMode::Routes,
            "routes, but the capabilities above are missing, so it will fail".to_owned(),
        )
    };
    ProbeReport {
        environment,
        docker: docker.ok(),
        checks,
        auto_choice,
        reason,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcx_needs_6_6() {
        assert!(super::has_tcx("6.18.44-fc-v769"));
        assert!(super::has_tcx("6.6.0"));
        assert!(!super::has_tcx("6.5.13-generic"));
        assert!(!super::has_tcx("5.15.0"));
    }
}
