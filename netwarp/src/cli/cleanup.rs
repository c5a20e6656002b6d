//! `netwarp cleanup`: remove every netwarp entry in every running container.

use std::process::ExitCode;

use crate::dataplane::cleanup::{CleanupError, cleanup};

pub fn execute(args: super::ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let _log = super::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(cleanup(&config)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(CleanupError::MissingCapabilities(missing)) => Ok(super::missing_privilege(&missing)),
        Err(e) => Err(e.into()),
    }
}
