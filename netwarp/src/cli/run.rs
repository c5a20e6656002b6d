//! `netwarp run`: the daemon.

use std::process::ExitCode;

use crate::daemon::{DaemonError, Reload, run_daemon};

pub fn execute(args: super::ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let reload: Reload = Box::new(move || args.load());
    super::init_logging(&config);
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
