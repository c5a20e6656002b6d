//! `cargo xtask test`: setup, then every test in the workspace, with a
//! summary that reports loud skips separately from passes, all inside the
//! suite-wide isolation witness (see `crate::witness`).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::Stdio,
    thread,
};

use anyhow::{Context as _, bail};

use crate::{
    command::{cargo, workspace_root},
    witness::Witness,
};

/// Marker printed by `netwarp_tests::skip::record`.
const SKIP_MARKER: &str = "NETWARP-SKIP";

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (for quick local loops on a set-up machine).
    #[arg(long)]
    no_setup: bool,
    /// Only test this package (for example netwarp or netwarp-tests).
    #[arg(long, short)]
    package: Option<String>,
    /// Accept skipped tests. Without it, a skip after a successful setup
    /// fails the run: setup promised everything the tests need.
    #[arg(long)]
    allow_skips: bool,
    /// Only run tests whose names contain these filters.
    filters: Vec<String>,
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    suites: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    let root = workspace_root();
    let skip_log = root.join("target/xtask/skipped-tests.log");
    fs::create_dir_all(skip_log.parent().expect("has a parent"))?;
    let _ = fs::remove_file(&skip_log);

    // The end-to-end tests run the daemon binary itself.
    crate::command::run_inherit(cargo().current_dir(&root).args([
        "build",
        "--package",
        "netwarp",
    ]))?;
    // The suite-wide isolation witness: an unlabelled container that must
    // come out of every test run below byte-identical. Only around the
    // Docker suites (netwarp-tests).
    let runs_docker_suites = args.package.as_deref().is_none_or(|p| p == "netwarp-tests");
    // The container-mode tests run this build as an image of its own.
    if runs_docker_suites {
        let tag = crate::image::test_image_tag();
        crate::image::build_image(&root.join("target/debug/netwarp"), &tag)?;
    }
    let witness = if runs_docker_suites {
        Some(Witness::start(
            &root,
            root.join("target/xtask/isolation-witness.json"),
        )?)
    } else {
        None
    };
    let mut totals = Totals::default();
    let mut all_succeeded = true;

    let mut cmd = cargo();
    cmd.current_dir(&root).args(["test", "--no-fail-fast"]);
    match &args.package {
        Some(package) => cmd.args(["--package", package]),
        None => cmd.arg("--workspace"),
    };
    cmd.arg("--").args(&args.filters);
    all_succeeded &= run_tests(cmd, &root, &skip_log, &mut totals)?;

    // The steering and heavy-labels suites again, against the eBPF
    // dataplane. (The guard and VPN suites, guard_e2e and vpn_e2e, run
    // each dataplane themselves.)
    if runs_docker_suites {
        println!("\n=== steering and heavy-labels end-to-end suites, eBPF dataplane ===");
        let mut cmd = cargo();
        cmd.current_dir(&root)
            .args([
                "test",
                "--package",
                "netwarp-tests",
                "--test",
                "steering_e2e",
                "--test",
                "heavy_labels_e2e",
                "--",
            ])
            .args(&args.filters)
            .env("NETWARP_TEST_DATAPLANE", "ebpf");
        all_succeeded &= run_tests(cmd, &root, &skip_log, &mut totals)?;
    }
    let status_ok = all_succeeded;
    let witness = witness.map(|w| {
        println!("\n=== isolation witness ===");
        w.check()
    });

    let skipped: Vec<String> = fs::read_to_string(&skip_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(SKIP_MARKER))
        .map(|l| l.trim().to_owned())
        .collect();
    let skipped_count = skipped.len() as u64;
    println!();
    println!("==================== netwarp test summary ====================");
    println!(
        "{} suites: {} passed, {} failed, {} skipped, {} ignored",
        totals.suites,
        totals.passed.saturating_sub(skipped_count),
        totals.failed,
        skipped_count,
        totals.ignored
    );
    for skip in &skipped {
        println!("SKIPPED {skip}");
    }
    if let Some(witness) = &witness {
        println!("{}", witness.summary());
    }
    if !status_ok || totals.failed > 0 {
        bail!("tests failed");
    }
    if witness.as_ref().is_some_and(|w| !w.unchanged()) {
        bail!("the isolation witness did not come out of the suite unchanged");
    }
    if skipped_count > 0 && !args.allow_skips {
        bail!(
            "{skipped_count} tests were skipped although setup succeeded; fix what they \
             need, or pass --allow-skips to accept that"
        );
    }
    Ok(())
}

/// Runs one `cargo test` command, echoing its output and adding its
/// `test result:` lines to `totals`. Returns whether it succeeded.
fn run_tests(
    mut cmd: std::process::Command,
    root: &std::path::Path,
    skip_log: &std::path::Path,
    totals: &mut Totals,
) -> anyhow::Result<bool> {
    cmd.env("NETWARP_SKIP_LOG", skip_log)
        .env("NETWARP_BIN", root.join("target/debug/netwarp"))
        .env("NETWARP_IMAGE", crate::image::test_image_tag())
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning cargo test")?;
    // Echo stderr (build output, skip markers) as it comes.
    let stderr = child.stderr.take().expect("piped");
    let echo_stderr = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            totals.add(result);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let _ = echo_stderr.join();
    Ok(status.success())
}

impl Totals {
    /// Adds one `test result:` line, e.g.
    /// `ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ...`.
    fn add(&mut self, result: &str) {
        self.suites += 1;
        for part in result.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}
