//! Dataplanes: how desired policy reaches the kernel (or, for dry-run, a
//! simulation's record).
pub mod caps;
pub mod cleanup;
pub mod dry_run;
pub mod ebpf;
pub mod host_guard;
pub mod mac;
pub mod netns;
pub mod nexthop;
pub(crate) mod policy_rule;
pub mod qdisc;
pub mod routes;
pub mod settled;
pub mod sync;
pub mod tables;
pub mod xdp_pass;
