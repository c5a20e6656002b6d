//! Swarm service tasks as targets and warps, on a single-node swarm the
//! test creates (and leaves, even on panic): netwarp on the node steers a
//! target task through a warp task on an internal overlay network, matched
//! by the warp's service name. And netwarp itself as a global service: a
//! Swarm service cannot share the host's pid namespace, so it refuses to
//! run (exit 77) naming the fix.
//!
//! Everything runs in one test, to hold the shared engine in swarm mode
//! as briefly as possible.

use std::time::Duration;

use netwarp_tests::{
    command::run,
    container::{image, missing_image},
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::{Container, TEST_IMAGE},
    skip_if,
    steering::{GLOBAL_RULES, REMOTE, owned_state, reaches, warp_script},
    swarm::Swarm,
};

const CONVERGE: Duration = Duration::from_secs(30);
const TASK_START: Duration = Duration::from_secs(90);

fn tasks_stack(labels: &TestLabels, stack: &str) -> String {
    // Service-level `labels` reach the task containers; `deploy.labels`
    // stay on the service. dnsrr: no virtual IP, so no IPVS needed.
    format!(
        r#"version: "3.8"
services:
  gw:
    image: {TEST_IMAGE}
    command: ["sh", "-c", "{script}"]
    cap_add: [NET_ADMIN]
    networks: [steer]
    deploy:
      endpoint_mode: dnsrr
  app:
    image: {TEST_IMAGE}
    command: ["sleep", "600"]
    labels:
      {target}: {stack}_gw
    networks: [steer]
    deploy:
      endpoint_mode: dnsrr
      labels:
        {target}: not-on-the-container
networks:
  steer:
    driver: overlay
    internal: true
"#,
        script = warp_script(),
        target = labels.target,
    )
}

fn netwarp_stack(image: &str) -> String {
    format!(
        r#"version: "3.8"
services:
  netwarp:
    image: {image}
    command: ["run", "--dataplane", "routes"]
    cap_add: [NET_ADMIN, SYS_ADMIN, SYS_PTRACE]
    networks: [hostnet]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
    deploy:
      mode: global
      restart_policy:
        condition: none
networks:
  hostnet:
    external: true
    name: host
"#
    )
}

#[test]
fn swarm_tasks_are_steered_and_netwarp_as_a_service_refuses() {
    let test = "swarm_tasks_are_steered_and_netwarp_as_a_service_refuses";
    skip_if!(test, Swarm::missing());
    skip_if!(test, missing_image());
    let image = image();
    let labels = TestLabels::unique();
    // The services' names (`<stack>_gw`) match the daemon's warp pattern.
    let stack_name = format!("{}s", labels.warp_prefix);
    let swarm = Swarm::init().expect("docker swarm init");
    let stack = swarm
        .deploy(&stack_name, &tasks_stack(&labels, &stack_name))
        .expect("stack deploy");
    let warp_task = stack.task_container("gw", TASK_START).expect("warp task");
    assert!(
        warp_task.starts_with(&format!("{stack_name}_gw.1.")),
        "task containers are named <stack>_<service>.<slot>.<task id>: {warp_task}"
    );
    let target = Container::adopt(
        &stack
            .task_container("app", TASK_START)
            .expect("target task"),
    );
    assert!(
        !reaches(&target, 8080),
        "reached the warp before netwarp ran"
    );

    // Routes only: an overlay task's veth peer lives in the overlay
    // network's namespace, not the host's, where the eBPF dataplane does
    // not attach yet (README, "Run on Swarm").
    let daemon = Daemon::start(&labels, "routes", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "the target task never reached {REMOTE} through the warp task; state:\n{}\nlog:\n{}",
        owned_state(&target),
        daemon.log()
    );
    let status = run(
        &netwarp_binary().display().to_string(),
        &[
            "status",
            "--json",
            "--config",
            &daemon.config_path().display().to_string(),
        ],
    )
    .expect("netwarp status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let entry = status["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["name"] == target.name()))
        .unwrap_or_else(|| panic!("{} is not in the status: {status:#}", target.name()));
    assert_eq!(entry["state"], "steered", "{entry:#}");
    assert_eq!(entry["warp"], format!("{stack_name}_gw"), "{entry:#}");
    assert_eq!(entry["network"], format!("{stack_name}_steer"), "{entry:#}");
    drop(daemon);
    target.keep();

    // netwarp as a global service: Swarm has no `pid: host`.
    let service_stack = swarm
        .deploy(&netwarp_testing_name(&labels), &netwarp_stack(&image))
        .expect("netwarp stack deploy");
    assert!(
        eventually(TASK_START, || service_stack
            .task_states("netwarp")
            .contains("(77)")),
        "the netwarp task did not exit 77: {}",
        service_stack.task_states("netwarp")
    );
    let logs = service_stack.service_logs("netwarp");
    assert!(
        logs.contains("without the host's pid namespace") && logs.contains("--pid host"),
        "the task's log does not name the fix:\n{logs}"
    );
    drop(service_stack);
    drop(stack);
    drop(swarm);
}

fn netwarp_testing_name(labels: &TestLabels) -> String {
    format!(
        "nw{}",
        labels
            .warp_prefix
            .trim_end_matches('-')
            .trim_start_matches("warp-")
    )
}
