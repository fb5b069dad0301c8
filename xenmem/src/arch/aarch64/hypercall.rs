//! The Arm hypercall instruction.

use core::arch::asm;

/// Issue hypercall `op` with five arguments: `hvc #0xEA1`, the number in
/// `x16`, the arguments in `x0`-`x4`, the result in `x0`. Xen may clobber
/// `x0`-`x4` and `x16`.
///
/// # Safety
/// Every pointer among `args` must be valid for what Xen reads and writes
/// through it for the whole call (identity-mapped: Xen translates buffer
/// addresses through the guest's stage-1 tables).
#[inline]
pub unsafe fn raw(op: usize, args: [usize; 5]) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the pointers in `args`; the hypercall
    // touches no other guest state than the declared registers and the
    // memory those pointers describe (no `nomem`, so the compiler assumes it
    // may read and write any memory).
    unsafe {
        asm!(
            "hvc #0xEA1",
            inlateout("x0") args[0] => ret,
            inlateout("x1") args[1] => _,
            inlateout("x2") args[2] => _,
            inlateout("x3") args[3] => _,
            inlateout("x4") args[4] => _,
            inlateout("x16") op => _,
            options(nostack),
        );
    }
    ret
}
