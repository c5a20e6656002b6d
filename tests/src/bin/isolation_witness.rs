//! The suite-wide isolation witness: one unlabelled container that lives
//! through a whole test suite, whose routes, rules, qdiscs and tc
//! attachments must be byte-identical afterwards (issue 8, item 6).
//!
//! ```text
//! cargo build -p netwarp-tests --bin isolation_witness
//! target/debug/isolation_witness start  STATE_FILE   # before the suite
//! target/debug/isolation_witness check  STATE_FILE   # after it
//! target/debug/isolation_witness remove STATE_FILE   # cleanup only
//! ```
//!
//! `start` creates an `--internal` network and, on it, a container from
//! the test image (`sleep 7200`, `--restart always`, so a dockerd restart
//! brings it back) with no label at all, snapshots its state
//! (`netwarp_tests::isolation::unlabelled_state`, the same snapshot the
//! chaos scenarios take of their bystander) and writes
//! `{container, network, state}` to STATE_FILE. Both are left running; if
//! `start` fails halfway, whatever it created is removed.
//!
//! `check` waits (bounded) for the container to run again, snapshots it,
//! compares byte for byte, prints the lines that changed, and always
//! removes the container, the network and STATE_FILE.
//!
//! Exit status: 0 when started / unchanged / removed, 1 when `check`
//! found a change, 2 on any error (including a panic).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use netwarp_tests::{
    command::{output, run},
    docker::{Container, DockerNetwork},
    isolation::{describe_change, unlabelled_state},
};
use serde::{Deserialize, Serialize};

const USAGE: &str = "usage: isolation_witness start|check|remove STATE_FILE";

/// Names of the witness's container and network start with this.
const PREFIX: &str = "nwiso";

/// How long `check` waits for the container to run again (after a dockerd
/// restart, `--restart always` brings it back).
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Serialize, Deserialize)]
struct Saved {
    container: String,
    network: String,
    state: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, file] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let file = PathBuf::from(file);
    // Drop guards run while a panic unwinds, so a panic still cleans up;
    // it only has to become exit status 2.
    let outcome = std::panic::catch_unwind(|| match command.as_str() {
        "start" => start(&file).map(|()| true),
        "check" => check(&file),
        "remove" => remove(&file).map(|()| true),
        _ => Err(anyhow!("{USAGE}")),
    });
    match outcome {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("isolation witness: error: {e:#}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("isolation witness: error: panicked (see above)");
            ExitCode::from(2)
        }
    }
}

fn start(file: &Path) -> anyhow::Result<()> {
    // Guards first: until they are disarmed below, a failure removes
    // whatever was created (the container drops before the network).
    let network = DockerNetwork::create_internal(PREFIX)?;
    let container = Container::run(
        PREFIX,
        &network,
        &["--restart", "always", "--stop-timeout", "1"],
        &["sleep", "7200"],
    )?;
    let saved = Saved {
        container: container.name().to_owned(),
        network: network.name().to_owned(),
        state: unlabelled_state(&container).context("snapshotting the witness")?,
    };
    let json = serde_json::to_string_pretty(&saved)?;
    let partial = file.with_extension("partial");
    std::fs::write(&partial, json)
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("writing {}", file.display()))?;
    let (container, network) = (container.keep(), network.keep());
    println!(
        "isolation witness: started unlabelled container {container} on internal network \
         {network}; its state is in {}",
        file.display()
    );
    Ok(())
}

/// Whether the witness is unchanged. Removes it whatever happens.
fn check(file: &Path) -> anyhow::Result<bool> {
    let saved = read(file)?;
    let network = DockerNetwork::adopt(&saved.network);
    let container = Container::adopt(&saved.container);
    let now = wait_running(&container)
        .and_then(|()| unlabelled_state(&container).context("snapshotting the witness"));
    let removed = remove_witness(container, network);
    if removed.is_ok() {
        let _ = std::fs::remove_file(file);
    }
    if let Err(e) = &removed {
        eprintln!("isolation witness: {e:#}");
    }
    let now = now?;
    if now != saved.state {
        println!(
            "isolation witness: CHANGED: the routes, rules, qdiscs or tc attachments of the \
             unlabelled container {} differ from before the suite (- before, + after):\n{}",
            saved.container,
            describe_change(&saved.state, &now).trim_end()
        );
        return Ok(false);
    }
    removed?;
    println!(
        "isolation witness: unchanged: the routes, rules, qdiscs and tc attachments of the \
         unlabelled container {} are byte-identical ({} bytes)",
        saved.container,
        now.len()
    );
    Ok(true)
}

fn remove(file: &Path) -> anyhow::Result<()> {
    if !file.exists() {
        println!(
            "isolation witness: {} does not exist, nothing to remove",
            file.display()
        );
        return Ok(());
    }
    let saved = read(file)?;
    remove_witness(
        Container::adopt(&saved.container),
        DockerNetwork::adopt(&saved.network),
    )?;
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    println!(
        "isolation witness: removed {} and {}",
        saved.container, saved.network
    );
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<Saved> {
    let json =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&json).with_context(|| format!("parsing {}", file.display()))
}

/// Removes the container, then the network; something already gone counts
/// as removed. Reports failures instead of only printing them.
fn remove_witness(container: Container, network: DockerNetwork) -> anyhow::Result<()> {
    let (container, network) = (container.keep(), network.keep());
    let mut failures = Vec::new();
    if let Err(e) = docker_remove(&["rm", "--force", &container]) {
        failures.push(format!("{e:#}"));
    }
    // The endpoint can take a moment to go after the container.
    let mut network_removed = docker_remove(&["network", "rm", &network]);
    for _ in 0..5 {
        if network_removed.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        network_removed = docker_remove(&["network", "rm", &network]);
    }
    if let Err(e) = network_removed {
        failures.push(format!("{e:#}"));
    }
    if !failures.is_empty() {
        bail!(
            "removing the witness left something behind: {}",
            failures.join("; ")
        );
    }
    Ok(())
}

fn docker_remove(args: &[&str]) -> anyhow::Result<()> {
    let out = output("docker", args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("No such") || stderr.contains("not found") {
        return Ok(());
    }
    bail!("`docker {}` failed: {}", args.join(" "), stderr.trim())
}

/// Waits until the container runs (with a process), for at most
/// `RUNNING_TIMEOUT`; Docker itself may still be restarting meanwhile.
fn wait_running(container: &Container) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    loop {
        let last = match run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.Pid}}",
                container.name(),
            ],
        ) {
            Ok(status)
                if status.trim().starts_with("running ") && !status.trim().ends_with(" 0") =>
            {
                return Ok(());
            }
            Ok(status) => format!("its state is `{}`", status.trim()),
            Err(e) if format!("{e:#}").contains("No such") => {
                bail!(
                    "the witness container {} no longer exists: something removed it",
                    container.name()
                );
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "the witness container {} did not run again within {} s: {last}",
                container.name(),
                RUNNING_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
