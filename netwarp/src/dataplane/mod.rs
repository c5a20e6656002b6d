//! Dataplanes: how desired policy reaches the kernel.
pub mod ebpf;
pub mod routes;
