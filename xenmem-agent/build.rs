//! Link the agent binary with its architecture's linker script (bare-metal
//! targets only; the library and host builds are untouched).

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
    for asm in ["x86_64.S", "aarch64.S"] {
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("boot").join(asm).display()
        );
    }
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    // defmt's own script (found through the search path defmt's build adds).
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
