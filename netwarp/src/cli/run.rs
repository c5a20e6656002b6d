//! `netwarp run`: the daemon.

use std::process::ExitCode;

use crate::daemon::{DaemonError, Reload, run_daemon};

pub fn execute(args: super::ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let reload: Reload = Box::new(move || args.load());
    let _log = super::init_logging(&config);
    // In a container without the host's namespaces netwarp would program
    // the wrong namespace or none: refuse before touching anything.
    let environment = crate::probe::environment::Environment::detect(&config.host_proc_dir);
    if let Some(refusal) = environment.refusal() {
        tracing::error!("{refusal}");
        return Ok(ExitCode::from(super::EXIT_MISSING_PRIVILEGE));
    }
    for warning in environment.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        container = environment.container.as_deref().unwrap_or("no"),
        host_pid = %environment.host_pid.answer,
        host_pid_detail = %environment.host_pid.detail,
        host_network = %environment.host_net.answer,
        host_network_detail = %environment.host_net.detail,
        "environment"
    );
    tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match runtime.block_on(run_daemon(config, reload)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(DaemonError::MissingCapabilities(missing)) => Ok(super::missing_privilege(&missing)),
        Err(e) => Err(e.into()),
    }
}

/// glibc's malloc, tuned for a daemon whose passes allocate and free a
/// few large buffers (a list body of about 1 KiB per container) among many
/// small objects. By default glibc raises its mmap threshold to the size of
/// each large block freed, so later list bodies come from the heap and
/// leave it fragmented, and each thread may get an arena of its own: the
/// resident size then grows to a multiple of what is in use. A fixed
/// threshold returns every large buffer to the kernel when it is freed.
/// One arena: a task's memory is freed into the arena of the thread that
/// allocated it, so per-worker arenas each hold their own peak (about a
/// mebibyte more at the 10k scale bench's peak); two workers rarely
/// contend for the one lock.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
        const ARENAS: libc::c_int = 1;
        // SAFETY: mallopt only sets allocator parameters; called before
        // the runtime's threads start. A refusal (0) leaves the default.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}
