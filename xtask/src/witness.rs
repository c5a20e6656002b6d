//! The suite-wide isolation witness around `cargo xtask test` and
//! `cargo xtask chaos`: netwarp-tests' `isolation_witness` binary starts an
//! unlabelled container before the suite and checks after it that its
//! routes, rules, qdiscs and tc attachments are byte-identical.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::command::{cargo, run_inherit};

/// What `check` found.
pub enum Outcome {
    /// Byte-identical.
    Unchanged,
    /// Something changed; the binary's message with the changed lines.
    Changed(String),
    /// The check could not be made (exit 2); what went wrong.
    Error(String),
}

impl Outcome {
    pub fn unchanged(&self) -> bool {
        matches!(self, Self::Unchanged)
    }

    /// For summaries: "isolation witness: unchanged", or what changed, or
    /// the error.
    pub fn summary(&self) -> String {
        match self {
            Self::Unchanged => "isolation witness: unchanged".to_owned(),
            Self::Changed(message) => message.clone(),
            Self::Error(error) => format!("isolation witness: ERROR: {error}"),
        }
    }
}

/// A started witness. Dropping it without `check` (an early error or a
/// panic in xtask) removes the container and network.
pub struct Witness {
    binary: PathBuf,
    state_file: PathBuf,
    armed: bool,
}

impl Witness {
    /// Builds the binary and starts the witness, keeping its state in
    /// `state_file`. A state file left by an interrupted run is cleaned
    /// up first.
    pub fn start(root: &Path, state_file: PathBuf) -> anyhow::Result<Self> {
        run_inherit(cargo().current_dir(root).args([
            "build",
            "--package",
            "netwarp-tests",
            "--bin",
            "isolation_witness",
        ]))?;
        let binary = root.join("target/debug/isolation_witness");
        if state_file.exists() {
            println!(
                "xtask: removing the witness an interrupted run left ({})",
                state_file.display()
            );
            let status = Command::new(&binary)
                .arg("remove")
                .arg(&state_file)
                .status()
                .context("running isolation_witness remove")?;
            if !status.success() {
                bail!(
                    "could not remove the witness an earlier run left in {}",
                    state_file.display()
                );
            }
        }
        if let Some(dir) = state_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let status = Command::new(&binary)
            .arg("start")
            .arg(&state_file)
            .status()
            .context("running isolation_witness start")?;
        if !status.success() {
            bail!("isolation_witness start failed ({status})");
        }
        Ok(Self {
            binary,
            state_file,
            armed: true,
        })
    }

    /// Re-snapshots and compares; the binary removes the witness whatever
    /// it finds.
    pub fn check(mut self) -> Outcome {
        self.armed = false;
        let output = Command::new(&self.binary)
            .arg("check")
            .arg(&self.state_file)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                // It never ran, so it removed nothing.
                self.remove();
                return Outcome::Error(format!("running isolation_witness check: {e}"));
            }
        };
        let message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("{message}");
        match output.status.code() {
            Some(0) => Outcome::Unchanged,
            Some(1) => Outcome::Changed(message),
            _ => Outcome::Error(format!(
                "isolation_witness check failed ({}); see its output above",
                output.status
            )),
        }
    }

    fn remove(&self) {
        match Command::new(&self.binary)
            .arg("remove")
            .arg(&self.state_file)
            .stdin(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("xtask: isolation_witness remove failed ({status})"),
            Err(e) => eprintln!("xtask: running isolation_witness remove: {e}"),
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        if self.armed {
            self.remove();
        }
    }
}
