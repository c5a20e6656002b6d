//! netwarp: steers Docker containers' traffic through warp containers.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod docker;
pub mod glob;
pub mod inventory;
pub mod model;
pub mod pass;
pub mod plan;
pub mod privileges;
pub mod probe;
pub mod telemetry;
pub mod warp_probe;
pub mod wire;
