//! The aarch64 counter: the generic timer's virtual count, `CNTVCT_EL0`,
//! at the frequency in `CNTFRQ_EL0`.
//!
//! Xen offsets a domain's virtual counter when it creates the domain, so the
//! count starts near zero there.

use core::arch::asm;

/// The counter's name in reports.
pub const SOURCE: &str = "cntvct";

/// `CNTVCT_EL0` now. `ISB` first, so that the read is not hoisted above
/// earlier instructions.
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: ISB and a read of CNTVCT_EL0 (always readable at EL1) touch no
    // memory.
    unsafe {
        asm!("isb", "mrs {v}, cntvct_el0", v = out(reg) v, options(nomem, nostack, preserves_flags));
    }
    v
}

/// `CNTFRQ_EL0`: the counter's frequency in Hz as firmware (here Xen) set it.
pub fn frequency() -> Result<u64, &'static str> {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 (always readable at EL1) touches no memory.
    unsafe {
        asm!("mrs {f}, cntfrq_el0", f = out(reg) f, options(nomem, nostack, preserves_flags));
    }
    match f & 0xffff_ffff {
        0 => Err("CNTFRQ_EL0 is 0"),
        hz => Ok(hz),
    }
}
