//! Running the tools tests may use (`ip`, `docker`, `iperf3`).

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// Runs `program args...` and returns its stdout; fails with stderr on a
/// non-zero exit.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = output(program, args)?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command and returns its raw output, whatever its exit status.
pub fn output(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning `{program} {}`", args.join(" ")))
}

/// What a command wrote, stdout then stderr, whatever its exit status
/// (empty when it cannot run): for logs in failure messages.
pub fn combined_output(program: &str, args: &[&str]) -> String {
    output(program, args)
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
}

/// Runs a command for cleanup: failures are printed, never raised, because
/// it runs from `Drop`.
pub fn run_quietly(program: &str, args: &[&str]) {
    match output(program, args) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cleanup: `{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("cleanup: {e:#}"),
    }
}
