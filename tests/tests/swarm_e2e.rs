//! Swarm service tasks as targets and warps, on a single-node swarm the
//! test creates (and leaves, even on panic): netwarp on the node steers a
//! target task through a warp task on an internal overlay network, matched
//! by the warp's service name. And netwarp itself as a global service
//! (examples/stack.netwarp.yaml): a Swarm service cannot share the host's
//! pid namespace, so it opens targets' namespaces through the host's /proc
//! mounted into its task, and steers the same target; without that mount
//! it refuses to run (exit 77) naming the fix.
//!
//! Everything runs in one test, to hold the shared engine in swarm mode
//! as briefly as possible.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use netwarp_tests::{
    command::{combined_output, run},
    container::{image, missing_image},
    daemon::{
        Daemon, TestLabels, config_toml, eventually, netwarp_binary, remove_host_guard_rules,
        unique_guard_priority,
    },
    docker::{Container, TEST_IMAGE},
    observe::status_target,
    skip_if,
    steering::{GLOBAL_RULES, REMOTE, owned_state, reaches, warp_script},
    swarm::{Stack, Swarm},
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

#[test]
fn swarm_tasks_are_steered_also_by_netwarp_as_a_global_service() {
    let test = "swarm_tasks_are_steered_also_by_netwarp_as_a_global_service";
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

    // Both dataplanes. An overlay task's veth peer lives in the overlay
    // network's namespace, not the host's, so in eBPF mode no host veth
    // can carry its policy: routes in its namespace steer it, and status
    // says so (README, "Run on Swarm").
    for mode in ["routes", "ebpf"] {
        let mut daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
        assert!(
            eventually(CONVERGE, || reaches(&target, 8080)),
            "{mode}: the target task never reached {REMOTE} through the warp task; \
             state:\n{}\nlog:\n{}",
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
        let entry = status_target(&status, target.name())
            .unwrap_or_else(|| panic!("{} is not in the status: {status:#}", target.name()));
        assert_eq!(entry["state"], "steered", "{mode}: {entry:#}");
        assert_eq!(entry["warp"], format!("{stack_name}_gw"), "{entry:#}");
        assert_eq!(entry["network"], format!("{stack_name}_steer"), "{entry:#}");
        if mode == "ebpf" {
            assert!(
                entry["routed"]
                    .as_str()
                    .is_some_and(|why| why.contains("overlay")),
                "ebpf: the overlay target is not reported as steered by routes: {entry:#}"
            );
            assert_eq!(entry["host_ifindex"], serde_json::Value::Null, "{entry:#}");
        } else {
            assert_eq!(entry["routed"], serde_json::Value::Null, "{entry:#}");
        }
        // This daemon's state goes: the next one must program it anew.
        daemon.stop_and_clean_up().expect("netwarp cleanup");
        drop(daemon);
        assert!(
            eventually(CONVERGE, || !reaches(&target, 8080)),
            "{mode}: the target still reaches the warp after netwarp cleanup"
        );
    }

    // netwarp as a global service, from examples/stack.netwarp.yaml: no
    // `pid: host` in Swarm, so the host's /proc is mounted instead.
    let service = NetwarpService::deploy(&swarm, &labels, &image).expect("netwarp stack deploy");
    let task = service
        .stack()
        .task_container("netwarp", TASK_START)
        .expect("the netwarp task");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "netwarp as a service never steered the target task; tasks: {}\nlog:\n{}",
        service.stack().task_states("netwarp"),
        service.stack().service_logs("netwarp")
    );
    let status = run(
        "docker",
        &["exec", &task, "/usr/bin/netwarp", "status", "--json"],
    )
    .expect("netwarp status in the service's task");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let entry = status_target(&status, target.name())
        .unwrap_or_else(|| panic!("{} is not in the status: {status:#}", target.name()));
    assert_eq!(entry["state"], "steered", "{entry:#}");
    let logs = combined_output("docker", &["logs", &task]);
    assert!(
        logs.contains("host pids are visible in /host/proc"),
        "the task did not log how it sees host pids:\n{logs}"
    );
    drop(service);

    // Without the host's /proc it refuses (exit 77), naming the fix.
    let refused = swarm
        .deploy(
            &format!("{}x", netwarp_testing_name(&labels)),
            &without_host_proc(&image),
        )
        .expect("stack deploy");
    assert!(
        eventually(TASK_START, || refused
            .task_states("netwarp")
            .contains("(77)")),
        "the netwarp task did not exit 77: {}",
        refused.task_states("netwarp")
    );
    let logs = refused.service_logs("netwarp");
    assert!(
        logs.contains("without the host's pids")
            && logs.contains("--pid host")
            && logs.contains("NETWARP_DATAPLANE_HOST_PROC_DIR"),
        "the task's log does not name the fix:\n{logs}"
    );
    target.keep();
    drop(refused);
    drop(stack);
    drop(swarm);
}

/// netwarp deployed from examples/stack.netwarp.yaml with the test's
/// config; its guard rules are removed on drop, after the stack.
struct NetwarpService {
    stack: Option<Stack>,
    dir: PathBuf,
    guard_priority: u32,
}

impl NetwarpService {
    fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("deployed")
    }

    fn deploy(swarm: &Swarm, labels: &TestLabels, image: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(netwarp_tests::unique_name("nwsvc"));
        std::fs::create_dir_all(&dir)?;
        let guard_priority = unique_guard_priority();
        let config = dir.join("netwarp.toml");
        std::fs::write(
            &config,
            config_toml(
                labels,
                "routes",
                GLOBAL_RULES,
                &PathBuf::from("/sys/fs/bpf").join(dir.file_name().expect("a name")),
                guard_priority,
                Path::new("/run/netwarp/netwarp.sock"),
            ),
        )?;
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stack.netwarp.yaml");
        let yaml = std::fs::read_to_string(&file)?;
        let config_path = config.display().to_string();
        let stack = swarm.deploy_with_env(
            &netwarp_testing_name(labels),
            &yaml,
            &[("NETWARP_IMAGE", image), ("NETWARP_CONFIG", &config_path)],
        );
        match stack {
            Ok(stack) => Ok(Self {
                stack: Some(stack),
                dir,
                guard_priority,
            }),
            Err(e) => {
                remove_host_guard_rules(guard_priority);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for NetwarpService {
    fn drop(&mut self) {
        // The stack first (its Drop waits for the task to go), then what
        // the daemon left on the host.
        drop(self.stack.take());
        remove_host_guard_rules(self.guard_priority);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example stack without the host's /proc.
fn without_host_proc(image: &str) -> String {
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

fn netwarp_testing_name(labels: &TestLabels) -> String {
    format!(
        "nw{}",
        labels
            .warp_prefix
            .trim_end_matches('-')
            .trim_start_matches("warp-")
    )
}
