//! `netwarp cleanup`: remove every netwarp entry in every running container.

use std::process::ExitCode;

pub fn execute(args: super::ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    super::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::reconcile::cleanup(config))
}
