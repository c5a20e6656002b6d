//! `cargo xtask image`: the netwarp binary on an empty base, with no
//! registry: a root filesystem of the binary, exactly the shared libraries
//! `ldd` lists and the ELF loader, imported with `docker import`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::command::{capture, cargo, run_inherit, workspace_root};

/// Where the binary lives in the image.
pub const IMAGE_BINARY: &str = "/usr/bin/netwarp";

#[derive(clap::Args)]
pub struct Args {
    /// Package the debug build instead of the release build.
    #[arg(long)]
    debug: bool,
    /// The image name (default: netwarp:<version>).
    #[arg(long)]
    tag: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tag = args
        .tag
        .unwrap_or_else(|| format!("netwarp:{}", env!("CARGO_PKG_VERSION")));
    let root = workspace_root();
    let mut build = cargo();
    build
        .current_dir(&root)
        .args(["build", "--package", "netwarp"]);
    if !args.debug {
        build.arg("--release");
    }
    run_inherit(&mut build)?;
    let profile = if args.debug { "debug" } else { "release" };
    let size = build_image(&root.join("target").join(profile).join("netwarp"), &tag)?;
    println!("xtask: built {tag} ({:.1} MB)", size as f64 / 1_000_000.0);
    Ok(())
}

/// The image `cargo xtask test` builds from this worktree's debug binary,
/// so that worktrees sharing one engine never overwrite each other's.
pub fn test_image_tag() -> String {
    let dir = workspace_root()
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let dir: String = dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("netwarp:dev-{}", dir.trim_matches('-'))
}

/// Builds `tag` from `binary`; returns the image's size in bytes.
pub fn build_image(binary: &Path, tag: &str) -> anyhow::Result<u64> {
    let work = workspace_root().join("target/xtask/image");
    let rootfs = work.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    // Mount points and the directories netwarp writes to (its control
    // socket's, and the config's for a bind mount).
    for dir in ["usr/bin", "etc/netwarp", "run/netwarp", "tmp", "sys/fs/bpf"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    let in_image = rootfs.join(IMAGE_BINARY.trim_start_matches('/'));
    // Debug info is most of a binary's size and nothing the daemon uses.
    run_inherit(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&in_image)
            .arg(binary),
    )
    .with_context(|| format!("copying {} (is binutils installed?)", binary.display()))?;
    for library in shared_libraries(binary)? {
        let dest = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        fs::create_dir_all(dest.parent().expect("a library has a directory"))?;
        // fs::copy follows symlinks: the file lands under the name the
        // loader asks for.
        fs::copy(&library, &dest).with_context(|| format!("copying {}", library.display()))?;
    }
    import_rootfs(
        &rootfs,
        &[
            format!("ENTRYPOINT [\"{IMAGE_BINARY}\"]"),
            "CMD [\"run\"]".to_owned(),
            format!(
                "LABEL org.opencontainers.image.title=netwarp \
                 org.opencontainers.image.version={}",
                env!("CARGO_PKG_VERSION")
            ),
        ],
        tag,
    )?;
    let size =
        capture(Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", tag]))?;
    size.parse()
        .with_context(|| format!("image size `{size}` of {tag}"))
}

/// Imports the directory `rootfs` as the image `tag` (`docker import`,
/// no registry), owned by root, with Dockerfile `changes`.
pub fn import_rootfs(rootfs: &Path, changes: &[String], tag: &str) -> anyhow::Result<()> {
    let tarball = rootfs.with_extension("tar");
    run_inherit(
        Command::new("tar")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    )?;
    let mut import = Command::new("docker");
    import.arg("import");
    for change in changes {
        import.arg("--change").arg(change);
    }
    let imported = run_inherit(import.arg(&tarball).arg(tag).stdout(Stdio::null()));
    let _ = fs::remove_file(&tarball);
    imported
}

/// The files `ldd` resolves for `binary`, the loader included; fails when
/// one is not found (the image would not start).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = capture(Command::new("ldd").arg(binary))?;
    let mut libraries = Vec::new();
    for line in listing.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the
        // loader as `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vdso has no
        // file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    if libraries.is_empty() {
        bail!(
            "ldd lists no libraries for {}; a static binary needs none, but netwarp's \
             glibc build does",
            binary.display()
        );
    }
    Ok(libraries)
}
