//! Dataplanes: how desired policy reaches the kernel (or, for dry-run, a
//! simulation's record).
pub mod dry_run;
pub mod ebpf;
pub mod routes;
