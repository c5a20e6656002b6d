//! Probing the kernel and the daemon's privileges to choose a dataplane.

use crate::{
    config::DataplaneMode,
    dataplane::ebpf::EbpfDataplane,
    privileges::{CapabilitySet, EBPF_CAPABILITIES, MissingCapabilities, ROUTES_CAPABILITIES},
};

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub struct ProbeReport {
    pub checks: Vec<Check>,
    pub auto_choice: DataplaneMode,
    pub reason: String,
}

impl ProbeReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "checks": self.checks.iter().map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
            "auto_choice": self.auto_choice.to_string(),
            "reason": self.reason,
        })
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_owned())
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
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= (6, 6))
}

pub fn probe() -> ProbeReport {
    let mut checks = Vec::new();
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
    });
    let release = kernel_release();
    checks.push(Check {
        name: "tcx",
        ok: has_tcx(&release),
        detail: format!("kernel {release}; TCX needs 6.6 or later, older kernels use clsact"),
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
    });
    let load = EbpfDataplane::load();
    checks.push(Check {
        name: "bpf() test load",
        ok: load.is_ok(),
        detail: match &load {
            Ok(_) => "netwarp's tc programs loaded and verified".into(),
            Err(e) => e.to_string(),
        },
    });
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
