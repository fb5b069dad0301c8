//! # xenmem-stub
//!
//! A firmware-like program that links [`xenmem`] as a plain library: no
//! runtime (`xenmem-agent`'s `rt`), no defmt. It brings its own entry (a PVH
//! ELF note on x86_64, an arm64 `Image` header on aarch64), its own console
//! writer (whole text lines through Xen's `CONSOLEIO_write`), its own
//! allocator and stack, and then uses the library to
//!
//! 1. build the region table from the memory map (`memmap`, `layout`),
//! 2. balloon 16 MiB out and back (`reservation::Engine`),
//! 3. allocate a machine-contiguous 2 MiB buffer,
//! 4. grant a page of it (its own grant table in a hole, `grant`) and have
//!    Xen copy the page through the grant,
//!
//! saying each step as a `stub: <step> key=value ...` line and ending with
//! `stub: verdict PASS` or `FAIL` and QEMU's exit device (isa-debug-exit on
//! x86_64, semihosting on aarch64). It runs where `CONSOLEIO_write` works: a
//! dom0, or a dom0less domU. `cargo xtask test --only stub` boots it under
//! Xen on both architectures and checks the lines against what the runner
//! configured and what Xen itself printed.
//!
//! A host build is a plain program that only says so.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(target_os = "none")]
extern crate alloc;

/// Say one line on the console (`format_args!` syntax; the newline is
/// added).
#[cfg(target_os = "none")]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::console::line(format_args!($($t)*))
    };
}
#[cfg(target_os = "none")]
pub(crate) use say;

#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod stack;
#[cfg(target_os = "none")]
mod steps;

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
#[path = "arch/x86_64.rs"]
mod arch;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
#[path = "arch/aarch64.rs"]
mod arch;

#[cfg(target_os = "none")]
use xenmem::arch::Verdict;

#[cfg(target_os = "none")]
use steps::run;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // One line: `PanicInfo`'s own Display puts the message on a second one.
    match info.location() {
        Some(l) => say!(
            "stub: panic: {} at {}:{}",
            info.message(),
            l.file(),
            l.line()
        ),
        None => say!("stub: panic: {}", info.message()),
    }
    say!("stub: verdict FAIL");
    arch::exit(Verdict::Fail)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "xenmem-stub runs under Xen only: build it for x86_64-unknown-none or \
         aarch64-unknown-none (`cargo xtask test --only stub` boots it)"
    );
    std::process::exit(2);
}
