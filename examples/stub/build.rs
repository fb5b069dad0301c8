//! Link the stub with its architecture's linker script (bare-metal targets
//! only; a host build is a plain program that says it needs Xen).

use std::env;
use std::path::PathBuf;

fn main() {
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    if os != "none" {
        return;
    }
    let script = dir.join("linker").join(format!("{arch}.ld"));
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    if arch == "aarch64" {
        // Relative relocations as RELR bitmaps (a few hundred bytes instead
        // of 24 per pointer); the entry code applies both kinds.
        println!("cargo:rustc-link-arg-bins=-zpack-relative-relocs");
    }
}
