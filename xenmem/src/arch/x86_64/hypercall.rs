//! Hypercalls on x86_64: `vmmcall` on AMD and Hygon CPUs, `vmcall` on the
//! others, issued directly (never through the hypercall page, see XSA-466).
//!
//! Xen's 64-bit HVM hypercall ABI: the number in `rax`, arguments in `rdi`,
//! `rsi`, `rdx`, `r10`, `r8`, the result in `rax`. Debug builds of Xen
//! deliberately scribble over argument registers a hypercall does not use,
//! so all five are treated as clobbered.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use super::{cpuid, xen_cpuid_base};

/// Not looked at yet.
const UNKNOWN: u8 = 0;
/// Xen on an Intel-style CPU: `vmcall`.
const VMCALL: u8 = 1;
/// Xen on an AMD-style CPU: `vmmcall`.
const VMMCALL: u8 = 2;
/// No Xen signature in CPUID: every hypercall fails with `-ENOSYS`.
const NO_XEN: u8 = 3;

/// `-ENOSYS`, what [`raw`] returns when there is no Xen to call.
const ENOSYS: isize = -38;

/// The instruction [`raw`] issues, decided once.
static INSTRUCTION: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Which instruction this CPU needs, from the CPUID vendor string.
fn detect() -> u8 {
    if xen_cpuid_base().is_none() {
        return NO_XEN;
    }
    let [_, b, c, d] = cpuid(0, 0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&b.to_le_bytes());
    vendor[4..8].copy_from_slice(&d.to_le_bytes());
    vendor[8..12].copy_from_slice(&c.to_le_bytes());
    match &vendor {
        b"AuthenticAMD" | b"HygonGenuine" => VMMCALL,
        _ => VMCALL,
    }
}

fn instruction() -> u8 {
    match INSTRUCTION.load(Ordering::Relaxed) {
        UNKNOWN => {
            let i = detect();
            INSTRUCTION.store(i, Ordering::Relaxed);
            i
        }
        i => i,
    }
}

/// Detect Xen and the hypercall instruction now rather than at the first
/// hypercall. Optional.
pub fn init() {
    let _ = instruction();
}

/// Whether the CPU runs under Xen (its CPUID signature is there).
pub fn xen_present() -> bool {
    instruction() != NO_XEN
}

/// Issue hypercall `op` with arguments `args` and return Xen's raw result
/// (`-errno` on failure). Returns `-ENOSYS` without trapping when the CPU
/// does not run under Xen.
///
/// # Safety
/// Every pointer among `args` must be valid for what Xen reads and writes
/// through it for the whole call (as guest-virtual addresses of this
/// identity-mapped guest), and the operation must not break memory safety by
/// itself (e.g. by unmapping memory that Rust still uses).
pub unsafe fn raw(op: usize, args: [usize; 5]) -> isize {
    let [a1, a2, a3, a4, a5] = args;
    let ret: isize;
    match instruction() {
        VMMCALL => {
            // SAFETY: Xen is present (detected above) and handles `vmmcall`
            // as a hypercall; the caller vouches for the arguments. Memory
            // may be read and written (no `nomem`); the stack is untouched.
            unsafe {
                asm!(
                    "vmmcall",
                    inlateout("rax") op as isize => ret,
                    inlateout("rdi") a1 => _,
                    inlateout("rsi") a2 => _,
                    inlateout("rdx") a3 => _,
                    inlateout("r10") a4 => _,
                    inlateout("r8") a5 => _,
                    options(nostack),
                );
            }
        }
        VMCALL => {
            // SAFETY: as above, with Intel's `vmcall`.
            unsafe {
                asm!(
                    "vmcall",
                    inlateout("rax") op as isize => ret,
                    inlateout("rdi") a1 => _,
                    inlateout("rsi") a2 => _,
                    inlateout("rdx") a3 => _,
                    inlateout("r10") a4 => _,
                    inlateout("r8") a5 => _,
                    options(nostack),
                );
            }
        }
        _ => ret = ENOSYS,
    }
    ret
}
