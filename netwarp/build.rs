//! Builds the eBPF object from `netwarp-ebpf` with aya-build, so that a plain
//! `cargo build` produces a daemon with its programs embedded.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR unset")?;
    // The workspace layout is fixed: netwarp-ebpf sits beside this crate.
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../netwarp-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the netwarp-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netwarp-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup`, which installs \
         the nightly toolchain's rust-src and bpf-linker",
    )
}
