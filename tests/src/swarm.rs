//! A single-node Docker Swarm on the test engine, and stacks deployed on
//! it. Joining a swarm changes the engine every concurrent test shares, so
//! a test holds it briefly; the guard leaves the swarm on drop (panics
//! included) and removes the `docker_gwbridge` network the swarm created.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    command::{combined_output, output, run, run_quietly},
    daemon::eventually,
};

/// The address pool for the swarm's networks; [`Swarm::init`] checks that
/// the host routes none of it.
pub const ADDRESS_POOL: &str = "10.123.0.0/16";
const POOL_PREFIX: &str = "10.123.";

pub struct Swarm {
    /// Whether `docker_gwbridge` existed before the swarm, so is not ours.
    gwbridge_existed: bool,
}

fn swarm_state() -> String {
    run("docker", &["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Swarm {
    /// Why a swarm cannot be created here, if it cannot.
    pub fn missing() -> Option<String> {
        if let Some(reason) = crate::skip::missing_docker() {
            return Some(reason);
        }
        let state = swarm_state();
        if state != "inactive" {
            return Some(format!(
                "needs an engine outside any swarm (it creates and leaves its own); \
                 the engine's swarm state is `{state}`"
            ));
        }
        let routes = run("ip", &["route"]).unwrap_or_default();
        if routes.lines().any(|l| l.starts_with(POOL_PREFIX)) {
            return Some(format!(
                "the host routes part of {ADDRESS_POOL}, which the swarm's networks would use"
            ));
        }
        None
    }

    /// `docker swarm init` on loopback, with networks from [`ADDRESS_POOL`].
    pub fn init() -> anyhow::Result<Self> {
        let gwbridge_existed = output("docker", &["network", "inspect", "docker_gwbridge"])
            .is_ok_and(|o| o.status.success());
        // Guard first: a half-done init is still left.
        let swarm = Self { gwbridge_existed };
        run(
            "docker",
            &[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                "127.0.0.1:2377",
                "--default-addr-pool",
                ADDRESS_POOL,
            ],
        )?;
        Ok(swarm)
    }

    /// `docker stack deploy` of `compose_yaml` as `name`.
    pub fn deploy(&self, name: &str, compose_yaml: &str) -> anyhow::Result<Stack> {
        self.deploy_with_env(name, compose_yaml, &[])
    }

    /// `docker stack deploy` of `compose_yaml` as `name`, with `env` for
    /// the file's `${VARIABLE}` substitutions.
    pub fn deploy_with_env(
        &self,
        name: &str,
        compose_yaml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Stack> {
        let dir = std::env::temp_dir().join(crate::unique_name("nwstack"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("stack.yaml");
        std::fs::write(&file, compose_yaml)?;
        let stack = Stack {
            name: name.to_owned(),
            dir,
        };
        let out = std::process::Command::new("docker")
            .args(["stack", "deploy", "--compose-file"])
            .arg(&file)
            .arg(name)
            .envs(env.iter().copied())
            .output()
            .context("running docker stack deploy")?;
        if !out.status.success() {
            bail!(
                "docker stack deploy {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stack)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        run_quietly("docker", &["swarm", "leave", "--force"]);
        if !self.gwbridge_existed {
            run_quietly("docker", &["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// A deployed stack, removed on drop (waiting, bounded, for its
/// containers and networks to go).
pub struct Stack {
    name: String,
    dir: PathBuf,
}

impl Stack {
    /// The running task container of `service` (the stack's name is
    /// prepended), waiting for it for at most `timeout`.
    pub fn task_container(&self, service: &str, timeout: Duration) -> anyhow::Result<String> {
        let filter = format!(
            "label=com.docker.swarm.service.name={}_{service}",
            self.name
        );
        let mut name = String::new();
        eventually(timeout, || {
            name = run(
                "docker",
                &["ps", "--filter", &filter, "--format", "{{.Names}}"],
            )
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
            !name.is_empty()
        });
        if name.is_empty() {
            let tasks = run(
                "docker",
                &[
                    "service",
                    "ps",
                    "--no-trunc",
                    &format!("{}_{service}", self.name),
                ],
            )
            .unwrap_or_default();
            bail!(
                "no running task of {}_{service}; tasks:\n{tasks}",
                self.name
            );
        }
        Ok(name)
    }

    /// The state and error of `service`'s tasks, newest first
    /// (`docker service ps`).
    pub fn task_states(&self, service: &str) -> String {
        run(
            "docker",
            &[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.CurrentState}} | {{.Error}}",
                &format!("{}_{service}", self.name),
            ],
        )
        .unwrap_or_default()
    }

    /// What `service`'s tasks logged.
    pub fn service_logs(&self, service: &str) -> String {
        combined_output(
            "docker",
            &[
                "service",
                "logs",
                "--raw",
                &format!("{}_{service}", self.name),
            ],
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        run_quietly("docker", &["stack", "rm", &self.name]);
        let filter = format!("label=com.docker.stack.namespace={}", self.name);
        let gone = || {
            run("docker", &["ps", "--all", "--quiet", "--filter", &filter])
                .is_ok_and(|ids| ids.trim().is_empty())
                && run("docker", &["network", "ls", "--quiet", "--filter", &filter])
                    .is_ok_and(|ids| ids.trim().is_empty())
        };
        if !eventually(Duration::from_secs(30), gone) {
            eprintln!("stack {} was not gone within 30 s", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
