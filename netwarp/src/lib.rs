//! netwarp: steers Docker containers' traffic through warp containers.
pub mod dataplane;
