//! Dataplanes: how desired policy reaches the kernel.
pub mod caps;
pub mod ebpf;
pub mod qdisc;
pub mod routes;
