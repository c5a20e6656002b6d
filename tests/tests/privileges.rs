//! Missing capabilities are named, with the way to grant them, and give
//! the documented exit code 77.

use netwarp_tests::{command::output, daemon::netwarp_binary, skip, skip_if};

const EXIT_MISSING_PRIVILEGE: i32 = 77;

fn run_without(dropped: &str) -> (i32, String) {
    let binary = netwarp_binary();
    let out = output(
        "setpriv",
        &[
            "--bounding-set",
            dropped,
            "--inh-caps",
            dropped,
            binary.to_str().expect("utf-8 path"),
            "run",
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
fn each_missing_capability_is_named() {
    let test = "each_missing_capability_is_named";
    skip_if!(test, skip::missing_root());
    for (dropped, names) in [
        ("-net_admin", vec!["CAP_NET_ADMIN"]),
        ("-sys_admin", vec!["CAP_SYS_ADMIN"]),
        (
            "-net_admin,-sys_admin",
            vec!["CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
        ),
    ] {
        let (code, stderr) = run_without(dropped);
        assert_eq!(code, EXIT_MISSING_PRIVILEGE, "without {dropped}: {stderr}");
        for name in &names {
            assert!(
                stderr.contains(name),
                "without {dropped}, {name} is not named:\n{stderr}"
            );
        }
        assert!(
            stderr.contains("AmbientCapabilities="),
            "no way to grant them:\n{stderr}"
        );
    }
}
