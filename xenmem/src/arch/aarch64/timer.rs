//! The aarch64 counter: the generic timer's virtual count, `CNTVCT_EL0`,
//! at the frequency in `CNTFRQ_EL0`.
//!
//! Xen offsets a domain's virtual counter when it creates the domain, so the
//! count starts near zero there.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTVCT_EL0};

/// The counter's name in reports.
pub const SOURCE: &str = "cntvct";

/// `CNTVCT_EL0` now. `ISB` first, so that the read is not hoisted above
/// earlier instructions.
pub fn now() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// `CNTFRQ_EL0`: the counter's frequency in Hz as firmware (here Xen) set it.
pub fn frequency() -> Result<u64, &'static str> {
    match CNTFRQ_EL0.get() & 0xffff_ffff {
        0 => Err("CNTFRQ_EL0 is 0"),
        hz => Ok(hz),
    }
}
