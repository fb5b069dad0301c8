//! The x86_64 counter: the TSC, with the frequency Xen reports.
//!
//! Xen's CPUID time leaf (`XEN_CPUID_LEAF(3)`, sub-leaf 0) gives the guest's
//! TSC frequency in kHz in ECX: what the TSC ticks at as the guest sees it,
//! whether Xen lets `RDTSC` run natively or emulates it (then each read
//! traps, which costs microseconds and does not change the rate).

use core::arch::asm;

use super::{cpuid, xen_cpuid_base};

/// The counter's name in reports.
pub const SOURCE: &str = "tsc";

/// Xen's time leaf, relative to its CPUID base.
const XEN_TIME_LEAF: u32 = 3;

/// The TSC now. `LFENCE` first, so that earlier instructions have finished
/// before the counter is read.
pub fn now() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC read the time-stamp counter and touch no
    // memory; RDTSC is allowed at CPL 0 whatever CR4.TSD says.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags)
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The TSC's frequency in Hz, from Xen's time leaf.
pub fn frequency() -> Result<u64, &'static str> {
    let base = xen_cpuid_base().ok_or("no Xen CPUID leaves")?;
    let [max, ..] = cpuid(base, 0);
    if max < base + XEN_TIME_LEAF {
        return Err("Xen's CPUID leaves stop before the time leaf");
    }
    let [_, _, khz, _] = cpuid(base + XEN_TIME_LEAF, 0);
    if khz == 0 {
        return Err("Xen's time leaf reports a TSC frequency of 0");
    }
    Ok(u64::from(khz) * 1000)
}
