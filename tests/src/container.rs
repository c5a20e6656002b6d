//! netwarp as a container: the image `cargo xtask test` builds from this
//! worktree's binary (named by `NETWARP_IMAGE`), one-shot runs of it, and
//! the Compose deployment of examples/compose.netwarp.yaml. Each is removed
//! on drop, with the pins and host guard rules its daemon left.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    command::{combined_output, output, run, run_quietly},
    daemon::{TestLabels, config_toml, eventually, remove_host_guard_rules, unique_guard_priority},
    docker::Container,
};

/// Why the container tests cannot run, if they cannot.
pub fn missing_image() -> Option<String> {
    if let Some(reason) = crate::skip::missing_docker() {
        return Some(reason);
    }
    let Ok(image) = std::env::var("NETWARP_IMAGE") else {
        return Some(
            "needs NETWARP_IMAGE, the netwarp image `cargo xtask test` builds from this build"
                .to_owned(),
        );
    };
    let found = output(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", &image],
    )
    .is_ok_and(|out| out.status.success());
    (!found).then(|| {
        format!(
            "needs the image {image} (`cargo xtask test` builds it; or \
             `cargo xtask image --debug --tag {image}`)"
        )
    })
}

/// The netwarp image under test (check [`missing_image`] first).
pub fn image() -> String {
    std::env::var("NETWARP_IMAGE").expect("NETWARP_IMAGE is set")
}

/// A finished one-shot container.
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `image netwarp_args...` with `docker_args`, waits (bounded) for it
/// to exit, and returns its exit code and output. The container is removed
/// in any case.
pub fn run_once(
    image: &str,
    docker_args: &[&str],
    netwarp_args: &[&str],
) -> anyhow::Result<Finished> {
    let name = crate::unique_name("nwimg");
    let _guard = Container::adopt(&name);
    let mut args = vec!["run", "--detach", "--name", name.as_str()];
    args.extend_from_slice(docker_args);
    args.push(image);
    args.extend_from_slice(netwarp_args);
    run("docker", &args)?;
    let state = || {
        run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &name,
            ],
        )
        .unwrap_or_default()
    };
    if !eventually(Duration::from_secs(60), || state().starts_with("exited")) {
        bail!("{name} did not exit within 60 s: {}", state());
    }
    let code = state()
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("exit code")?;
    let logs = output("docker", &["logs", &name])?;
    Ok(Finished {
        code,
        stdout: String::from_utf8_lossy(&logs.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&logs.stderr).into_owned(),
    })
}

/// The Compose file this deploys.
pub fn compose_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/compose.netwarp.yaml")
}

/// netwarp deployed with examples/compose.netwarp.yaml under a project of
/// its own, with a config (mounted from a file) whose pin dir, guard
/// priorities and labels belong to the test.
pub struct Compose {
    project: String,
    dir: PathBuf,
    pin_dir: PathBuf,
    guard_priority: u32,
}

impl Compose {
    /// Brings the deployment up with `mode` in the config file and `env`
    /// (`NETWARP_*` variables the Compose file passes on) for docker-compose.
    pub fn up(
        image: &str,
        labels: &TestLabels,
        mode: &str,
        rules_toml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let project = crate::unique_name("nwcompose");
        let dir = std::env::temp_dir().join(&project);
        fs::create_dir_all(&dir)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&project);
        let guard_priority = unique_guard_priority();
        // Guard first, so a half-failed start is still removed.
        let compose = Self {
            project,
            dir,
            pin_dir,
            guard_priority,
        };
        let config = compose.dir.join("netwarp.toml");
        // The control socket is in the container's own /run, where the
        // healthcheck's `netwarp status` (same config) finds it.
        fs::write(
            &config,
            config_toml(
                labels,
                mode,
                rules_toml,
                &compose.pin_dir,
                guard_priority,
                Path::new("/run/netwarp/netwarp.sock"),
            ),
        )?;
        let out = compose.compose(&["up", "--detach"], Some(image), env)?;
        if !out.status.success() {
            bail!(
                "docker-compose up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(compose)
    }

    fn compose(
        &self,
        args: &[&str],
        image: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<std::process::Output> {
        let mut command = std::process::Command::new("docker-compose");
        command
            .arg("--file")
            .arg(compose_file())
            .args(["--project-name", &self.project])
            .args(args)
            .env("NETWARP_CONFIG", self.dir.join("netwarp.toml"))
            .env("NETWARP_CONTAINER_NAME", &self.project)
            .envs(env.iter().copied());
        if let Some(image) = image {
            command.env("NETWARP_IMAGE", image);
        }
        command.output().context("running docker-compose")
    }

    /// The daemon's container name.
    pub fn container(&self) -> &str {
        &self.project
    }

    /// The daemon's eBPF pin directory on the host.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn logs(&self) -> String {
        combined_output("docker", &["logs", &self.project])
    }

    /// Docker's view of the healthcheck: starting, healthy or unhealthy.
    pub fn health(&self) -> String {
        run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                &self.project,
            ],
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
    }

    /// Runs `netwarp args...` inside the daemon's container.
    pub fn netwarp(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = vec!["exec", self.project.as_str(), "/usr/bin/netwarp"];
        command.extend_from_slice(args);
        run("docker", &command)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} logs ---\n{}", self.project, self.logs());
        }
        let down = self.compose(&["down", "--timeout", "1"], None, &[]);
        if !down.is_ok_and(|o| o.status.success()) {
            run_quietly("docker", &["rm", "--force", &self.project]);
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        remove_host_guard_rules(self.guard_priority);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
