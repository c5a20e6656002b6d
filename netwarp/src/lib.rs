//! netwarp: steers Docker containers' traffic through warp containers.
pub mod dataplane;
pub mod glob;
pub mod model;
pub mod plan;
