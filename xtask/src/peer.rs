//! Build `xenmem-peer` (the `peer/` crate), the static Linux program the
//! rig's dom0 runs to ask Xen itself about the agent's domain.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::agent::cargo;
use crate::boot::Arch;

/// The peer's binary name (also its path in the rig's initramfs, `/bin/`).
pub const BIN: &str = "xenmem-peer";

/// The Linux target the peer is built for on `arch`: musl, statically
/// linked, so it needs nothing from dom0's root.
pub fn triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-musl",
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
    }
}

/// Build the peer for `arch` (release, stripped) and return its path.
pub fn build(arch: Arch) -> Result<PathBuf> {
    let t = triple(arch);
    eprintln!("xtask: building {BIN} for {t}");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", t, "-p", BIN, "--bin", BIN])
        // No cross C toolchain is needed: Rust's own lld links the musl
        // target with the C runtime rustup ships for it.
        .env(
            format!("CARGO_TARGET_{}_LINKER", t.to_uppercase().replace('-', "_")),
            "rust-lld",
        )
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                t.to_uppercase().replace('-', "_")
            ),
            "-C strip=symbols",
        )
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd.status().context("running cargo build for the peer")?;
    if !out.success() {
        bail!("building {BIN} for {t} failed ({out}); see the compiler output above");
    }
    let p = crate::agent::target_dir().join(t).join("release").join(BIN);
    if !p.is_file() {
        bail!("cargo built no {}", p.display());
    }
    Ok(p)
}
