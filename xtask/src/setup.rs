//! `cargo xtask setup`: everything the build and the tests need, idempotent.
//!
//! Each step checks first and acts only when something is missing, so a
//! second run is quick.

use std::{
    fs,
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::command::{capture, run_inherit, succeeds, workspace_root};

/// Debian packages the tests use as tools.
const APT_PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "iproute2",
    "iperf3",
    // The reference OpenMetrics parser the metrics tests check the endpoint with.
    "python3-prometheus-client",
    // `systemd-analyze verify` for the unit file test (nothing is started).
    "systemd",
    // Validates examples/compose.yaml.
    "docker-compose",
    // The VPN test world: userspace WireGuard (no kernel module needed,
    // only /dev/net/tun) and `wg` for keys and configuration.
    "wireguard-go",
    "wireguard-tools",
];
/// The local test image; bump the version when its contents change.
pub const TEST_IMAGE: &str = "netwarp-test:latest";
const TEST_IMAGE_VERSION: &str = "1";
const TEST_IMAGE_LABEL: &str = "io.netwarp.test-image-version";
const BPF_LINKER_VERSION: &str = "0.13";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const DOCKER_PID_FILE: &str = "/var/run/docker.pid";
const DOCKER_START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    require_root()?;
    step("Debian packages", ensure_apt_packages)?;
    step("nightly rust-src", ensure_nightly_rust_src)?;
    step("bpf-linker", ensure_bpf_linker)?;
    step("bpffs at /sys/fs/bpf", ensure_bpffs)?;
    step("Docker engine", ensure_docker)?;
    step("test image", ensure_test_image)?;
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(name: &str, f: fn() -> anyhow::Result<String>) -> anyhow::Result<()> {
    let outcome = f().with_context(|| format!("setup step `{name}` failed"))?;
    println!("setup: {name}: {outcome}");
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "setup must run as root (uid 0), not uid {euid}: it installs packages, \
             mounts bpffs, starts dockerd and loads eBPF programs. Run it with \
             `sudo -E cargo xtask setup` or from a root shell"
        );
    }
    Ok(())
}

fn ensure_apt_packages() -> anyhow::Result<String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .map(|status| status != "install ok installed")
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok("already installed".into());
    }
    println!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        run_inherit(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("the nightly toolchain is needed to build the eBPF programs")
}

fn ensure_nightly_rust_src() -> anyhow::Result<String> {
    if !succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        run_inherit(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let library = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if library.is_dir() {
        return Ok("already installed".into());
    }
    run_inherit(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    Ok("installed".into())
}

/// The nightly's LLVM: its major version and the file name of its libLLVM.
struct NightlyLlvm {
    major: String,
    library: String,
    sysroot_lib: PathBuf,
}

fn nightly_llvm() -> anyhow::Result<NightlyLlvm> {
    let verbose = capture(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` prints no LLVM version")?;
    let major = version
        .split('.')
        .next()
        .filter(|m| !m.is_empty())
        .with_context(|| format!("unexpected LLVM version `{version}`"))?
        .to_owned();
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let library = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("listing {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| {
            format!(
                "no libLLVM.so.{major}* in {}; is the nightly toolchain complete?",
                sysroot_lib.display()
            )
        })?;
    Ok(NightlyLlvm {
        major,
        library,
        sysroot_lib,
    })
}

fn bpf_linker_path() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    cargo_home.join("bin/bpf-linker")
}

fn ensure_bpf_linker() -> anyhow::Result<String> {
    let llvm = nightly_llvm()?;
    let linker = bpf_linker_path();
    if bpf_linker_matches(&linker, &llvm) {
        return Ok(format!(
            "bpf-linker {BPF_LINKER_VERSION} already built against {}",
            llvm.library
        ));
    }
    // llvm-sys wants an LLVM prefix with an unversioned libLLVM.so; the
    // nightly ships only versioned names, so give it a prefix of symlinks.
    let prefix = workspace_root().join("target/xtask/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", llvm.library.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(llvm.sysroot_lib.join(&llvm.library), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {} (takes a few minutes)",
        llvm.major
    );
    // The rpath points at the toolchain itself, so the binary keeps working
    // after `cargo clean` removes the symlink prefix.
    let rustflags = format!("-C link-arg=-Wl,-rpath,{}", llvm.sysroot_lib.display());
    run_inherit(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{}", llvm.major),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", rustflags),
    )?;
    if !bpf_linker_matches(&linker, &llvm) {
        bail!(
            "bpf-linker was built but {} does not run against {}",
            linker.display(),
            llvm.library
        );
    }
    Ok(format!("built against {}", llvm.library))
}

/// True when the installed bpf-linker is the wanted version, runs, and links
/// the nightly's own libLLVM.
fn bpf_linker_matches(linker: &Path, llvm: &NightlyLlvm) -> bool {
    let version = capture(Command::new(linker).arg("--version")).unwrap_or_default();
    if !version.starts_with(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return false;
    }
    capture(Command::new("ldd").arg(linker))
        .map(|libs| {
            libs.lines()
                .any(|l| l.contains(&llvm.library) && !l.contains("not found"))
        })
        .unwrap_or(false)
}

fn ensure_bpffs() -> anyhow::Result<String> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok("already mounted".into());
    }
    fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    run_inherit(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs; is this a kernel with CONFIG_BPF_SYSCALL?")?;
    Ok("mounted".into())
}

fn docker_answers() -> bool {
    succeeds(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
}

fn ensure_docker() -> anyhow::Result<String> {
    if docker_answers() {
        return Ok(format!("reusing the engine on {DOCKER_SOCKET}"));
    }
    remove_stale_pid_file()?;
    let log_path = workspace_root().join("target/xtask/dockerd.log");
    fs::create_dir_all(log_path.parent().expect("log has a parent"))?;
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut dockerd = Command::new("dockerd");
    dockerd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches dockerd from our
    // session so it outlives xtask and ignores the terminal's signals.
    unsafe {
        dockerd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = dockerd
        .spawn()
        .context("starting dockerd; is the docker.io package installed?")?;
    let deadline = Instant::now() + DOCKER_START_TIMEOUT;
    while Instant::now() < deadline {
        if docker_answers() {
            return Ok(format!(
                "started dockerd (pid {}, log {})",
                child.id(),
                log_path.display()
            ));
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "dockerd exited with {status} while starting; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "dockerd did not answer on {DOCKER_SOCKET} within {}s; see {}",
        DOCKER_START_TIMEOUT.as_secs(),
        log_path.display()
    )
}

/// A killed dockerd leaves its pid file behind, and a new one refuses to
/// start while it names a pid; remove it when that process is gone.
fn remove_stale_pid_file() -> anyhow::Result<()> {
    let Ok(pid) = fs::read_to_string(DOCKER_PID_FILE) else {
        return Ok(());
    };
    let pid = pid.trim();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dockerd" {
        bail!(
            "dockerd (pid {pid}) is running but does not answer on {DOCKER_SOCKET}; \
             stop it or fix it, then run setup again"
        );
    }
    println!("setup: removing stale {DOCKER_PID_FILE} (pid {pid} is gone)");
    fs::remove_file(DOCKER_PID_FILE).with_context(|| format!("removing {DOCKER_PID_FILE}"))
}

fn ensure_test_image() -> anyhow::Result<String> {
    let template = format!("{{{{index .Config.Labels \"{TEST_IMAGE_LABEL}\"}}}}");
    let current = capture(
        Command::new("docker").args(["image", "inspect", "--format", &template, TEST_IMAGE]),
    );
    if current.as_deref().is_ok_and(|v| v == TEST_IMAGE_VERSION) {
        return Ok(format!("{TEST_IMAGE} is current"));
    }
    // A root filesystem of busybox-static and its applet links; tools that
    // busybox lacks (iperf3) come from read-only bind mounts of the host.
    let root = workspace_root().join("target/xtask/test-image");
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox; is busybox-static installed?")?;
    let applets = capture(Command::new(root.join("bin/busybox")).arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    crate::image::import_rootfs(
        &root,
        &[
            "CMD [\"/bin/sh\"]".to_owned(),
            "ENV PATH=/bin:/usr/bin".to_owned(),
            format!("LABEL {TEST_IMAGE_LABEL}={TEST_IMAGE_VERSION}"),
        ],
        TEST_IMAGE,
    )?;
    Ok(format!("built {TEST_IMAGE} from busybox-static"))
}
