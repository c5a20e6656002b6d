//! `netwarp run`: the daemon.

use std::process::ExitCode;

pub fn execute(args: super::ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let reload: crate::reconcile::Reload = Box::new(move || args.load());
    super::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(crate::reconcile::run_daemon(config, reload))
}
