//! netwarp as a container: its environment detection in real containers
//! (each case `docker run` can create), and the Compose deployment of
//! examples/compose.netwarp.yaml steering a target in both dataplanes.

use std::time::Duration;

use netwarp_tests::{
    container::{Compose, compose_file, image, missing_image, run_once},
    daemon::{TestLabels, eventually},
    docker::DockerNetwork,
    skip, skip_if,
    steering::{GLOBAL_RULES, REMOTE, owned_state, reaches, start_target, start_warp},
};

const CONVERGE: Duration = Duration::from_secs(30);
/// The exit code for a missing privilege or namespace.
const EXIT_MISSING_PRIVILEGE: i32 = 77;
/// What the Compose file gives, as `docker run` flags.
const CAPS: &[&str] = &[
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "SYS_PTRACE",
];

fn probe_json(image: &str, docker_args: &[&str]) -> serde_json::Value {
    let finished = run_once(image, docker_args, &["probe", "--json"]).expect("probe ran");
    assert_eq!(finished.code, 0, "probe failed: {}", finished.stderr);
    serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("probe --json printed no JSON ({e}):\n{}", finished.stdout))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check `{name}` in {report:#}"))
}

#[test]
fn run_without_the_host_pid_namespace_refuses_with_the_fix() {
    let test = "run_without_the_host_pid_namespace_refuses_with_the_fix";
    skip_if!(test, missing_image());
    let image = image();
    // Everything else it needs, so that only the pid namespace is missing.
    let mut args = vec![
        "--network",
        "host",
        "--volume",
        "/var/run/docker.sock:/var/run/docker.sock",
    ];
    args.extend_from_slice(CAPS);
    let finished = run_once(&image, &args, &["run", "--dataplane", "routes"]).expect("ran");
    assert_eq!(
        finished.code, EXIT_MISSING_PRIVILEGE,
        "stderr:\n{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("without the host's pids")
            && finished.stderr.contains("--pid host")
            && finished.stderr.contains("`pid: host`"),
        "the refusal does not name the fix:\n{}",
        finished.stderr
    );
}

#[test]
fn run_in_a_network_namespace_of_its_own_refuses_with_the_fix() {
    let test = "run_in_a_network_namespace_of_its_own_refuses_with_the_fix";
    skip_if!(test, missing_image());
    let image = image();
    let mut args = vec!["--pid", "host", "--network", "none"];
    args.extend_from_slice(CAPS);
    let finished = run_once(&image, &args, &["run", "--dataplane", "routes"]).expect("ran");
    assert_eq!(
        finished.code, EXIT_MISSING_PRIVILEGE,
        "stderr:\n{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("without the host's network namespace")
            && finished.stderr.contains("--network host")
            && !finished.stderr.contains("without the host's pids"),
        "the refusal does not name (only) the network fix:\n{}",
        finished.stderr
    );
}

#[test]
fn probe_in_a_plain_container_names_every_missing_piece() {
    let test = "probe_in_a_plain_container_names_every_missing_piece";
    skip_if!(test, missing_image());
    let image = image();
    let report = probe_json(&image, &["--network", "none"]);
    let env = &report["environment"];
    assert_eq!(env["container"], true, "{report:#}");
    assert_eq!(env["host_pid_namespace"], "no", "{report:#}");
    assert_ne!(env["host_network_namespace"], "yes", "{report:#}");
    for (name, fix) in [
        ("host pid namespace", "--pid host"),
        ("host network namespace", "--network host"),
        (
            "docker",
            "--volume /var/run/docker.sock:/var/run/docker.sock",
        ),
        ("bpffs at the pin dir", "--volume /sys/fs/bpf:/sys/fs/bpf"),
        ("capabilities (routes)", "--cap-add NET_ADMIN"),
    ] {
        let check = check(&report, name);
        assert_eq!(check["ok"], false, "{check:#}");
        assert!(
            check["fix"].as_str().is_some_and(|f| f.contains(fix)),
            "`{name}` does not name `{fix}`: {check:#}"
        );
    }
}

#[test]
fn probe_with_the_compose_options_finds_everything() {
    let test = "probe_with_the_compose_options_finds_everything";
    skip_if!(test, missing_image());
    let image = image();
    let mut args = vec![
        "--pid",
        "host",
        "--network",
        "host",
        "--volume",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--volume",
        "/sys/fs/bpf:/sys/fs/bpf",
    ];
    args.extend_from_slice(CAPS);
    let report = probe_json(&image, &args);
    let env = &report["environment"];
    assert_eq!(env["container"], true, "{report:#}");
    assert_eq!(env["host_pid_namespace"], "yes", "{report:#}");
    assert_eq!(env["host_network_namespace"], "yes", "{report:#}");
    let engine_api =
        netwarp_tests::command::run("docker", &["version", "--format", "{{.Server.APIVersion}}"])
            .expect("docker version");
    assert_eq!(env["docker_api_version"], engine_api.trim(), "{report:#}");
    for name in [
        "host pid namespace",
        "host network namespace",
        "docker",
        "bpffs at the pin dir",
        "capabilities (routes)",
        "capabilities (ebpf)",
    ] {
        let check = check(&report, name);
        assert_eq!(check["ok"], true, "{check:#}");
        assert!(check["fix"].is_null(), "{check:#}");
    }
}

#[test]
fn compose_file_is_accepted() {
    let test = "compose_file_is_accepted";
    skip_if!(test, skip::missing_docker());
    let out = netwarp_tests::command::output(
        "docker-compose",
        &[
            "--file",
            &compose_file().display().to_string(),
            "config",
            "--quiet",
        ],
    )
    .expect("docker-compose runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "docker-compose config rejects the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `file_mode` goes in the mounted config file; `env_mode`, when given, in
/// NETWARP_DATAPLANE_MODE, which must win.
fn compose_deployment_steers(test: &str, file_mode: &str, env_mode: Option<&str>) {
    skip_if!(test, missing_image());
    let image = image();
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp_name = labels.warp_name("gw");
    let warp = start_warp(&warp_name, &network, &[]);
    let target = start_target("nwt", &network, &[labels.target_label(&warp_name)]);
    assert!(
        !reaches(&target, 8080),
        "reached the warp before netwarp ran"
    );

    let env: Vec<(&str, &str)> = env_mode
        .map(|mode| ("NETWARP_DATAPLANE_MODE", mode))
        .into_iter()
        .collect();
    let compose = Compose::up(&image, &labels, file_mode, GLOBAL_RULES, &env).expect("compose up");
    let mode = env_mode.unwrap_or(file_mode);
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "the target never reached {REMOTE} through the warp; state:\n{}\nlogs:\n{}",
        owned_state(&target),
        compose.logs()
    );
    assert!(
        eventually(CONVERGE, || compose.health() == "healthy"),
        "the healthcheck never passed: {}",
        compose.health()
    );
    let status = compose.netwarp(&["status", "--json"]).expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["mode"], mode, "{status:#}");
    if mode == "ebpf" {
        assert!(
            compose.pin_dir().join("links").is_dir(),
            "no pinned links under {}",
            compose.pin_dir().display()
        );
    }
    drop(warp);
}

#[test]
fn compose_deployment_steers_with_routes() {
    compose_deployment_steers("compose_deployment_steers_with_routes", "routes", None);
}

#[test]
fn compose_deployment_steers_with_ebpf() {
    // The file says routes; the variable beats it.
    compose_deployment_steers(
        "compose_deployment_steers_with_ebpf",
        "routes",
        Some("ebpf"),
    );
}
