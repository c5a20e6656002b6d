//! The daemon without each capability it needs, one at a time, in each
//! dataplane that needs it: every run names the missing capability and
//! exits with the documented code 77 (EX_NOPERM-style "missing
//! privilege"). Complements privileges.rs, which drops them in the
//! default dataplane.

use netwarp_tests::{command::output, daemon::netwarp_binary, skip, skip_if};

const EXIT_MISSING_PRIVILEGE: i32 = 77;

/// Runs `netwarp run --dataplane MODE` with `capabilities` (comma
/// separated) dropped from the bounding and inheritable sets, and so from
/// the effective set of the exec'd daemon. Bounded by `timeout`: a daemon
/// that does not notice keeps running, and must not hang the test.
fn run_without(mode: &str, capabilities: &str) -> (i32, String) {
    let binary = netwarp_binary();
    let dropped: Vec<String> = capabilities.split(',').map(|c| format!("-{c}")).collect();
    let dropped = dropped.join(",");
    let out = output(
        "timeout",
        &[
            "20",
            "setpriv",
            "--bounding-set",
            &dropped,
            "--inh-caps",
            &dropped,
            binary.to_str().expect("utf-8 path"),
            "run",
            "--dataplane",
            mode,
            "--docker-socket",
            "/nonexistent/docker.sock",
        ],
    )
    .expect("setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_needed_capability_is_named_when_missing() {
    let test = "each_needed_capability_is_named_when_missing";
    skip_if!(test, skip::missing_root());
    // CAP_SYS_ADMIN also grants bpf() and perf (the kernel's own rule,
    // which netwarp follows), so CAP_BPF and CAP_PERFMON are only missing
    // when CAP_SYS_ADMIN is gone too.
    let cases: [(&str, &str, &[&str]); 6] = [
        ("routes", "net_admin", &["CAP_NET_ADMIN"]),
        ("routes", "sys_admin", &["CAP_SYS_ADMIN"]),
        ("ebpf", "net_admin", &["CAP_NET_ADMIN"]),
        ("ebpf", "sys_admin", &["CAP_SYS_ADMIN"]),
        ("ebpf", "bpf,sys_admin", &["CAP_BPF", "CAP_SYS_ADMIN"]),
        (
            "ebpf",
            "perfmon,sys_admin",
            &["CAP_PERFMON", "CAP_SYS_ADMIN"],
        ),
    ];
    for (mode, capabilities, names) in cases {
        let (code, stderr) = run_without(mode, capabilities);
        assert_eq!(
            code, EXIT_MISSING_PRIVILEGE,
            "{mode} without {capabilities}: exit {code}\n{stderr}"
        );
        for name in names {
            assert!(
                stderr.contains(name),
                "{mode} without {capabilities}: {name} is not named:\n{stderr}"
            );
        }
        assert!(
            stderr.contains("AmbientCapabilities="),
            "{mode} without {capabilities}: no way to grant it:\n{stderr}"
        );
    }
}
