//! aarch64 (Armv8-A, EL1) under Xen: hypercalls, exits and, with the `rt`
//! feature, the boot glue.
//!
//! The agent is a Linux arm64 `Image` that Xen loads anywhere in the guest's
//! RAM (as dom0 or as a dom0less domU). The entry code (`boot/aarch64.S`)
//! enables FP/SIMD, turns on the MMU with the identity map of `mmu`,
//! applies its own `R_AARCH64_RELATIVE` relocations, zeroes `.bss`, installs
//! the exception vectors and calls into `boot`, which checks the device
//! tree and hands over to `rt::start`.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use aarch64_cpu::registers::{Writeable, DAIF};

use super::Verdict;
use crate::addr::{DomId, GuestPhysAddr, VirtAddr};

pub mod hypercall;
pub mod paging;
pub mod timer;

/// The architecture's name.
pub const NAME: &str = "aarch64";

/// QEMU's exit status for [`Verdict::Pass`]: the `SYS_EXIT` subcode. Not 0,
/// which is also what QEMU returns when Xen powers the machine off, so that
/// a runner can tell the agent's exit from Xen's; the same numbers as the
/// x86 isa-debug-exit's.
pub const QEMU_EXIT_PASS: i32 = 33;
/// QEMU's exit status for [`Verdict::Fail`].
pub const QEMU_EXIT_FAIL: i32 = 35;

/// How much guest-physical memory the boot identity map covers, from 0:
/// 512 GiB (39-bit virtual addresses; see `mmu` for the attributes) until
/// [`paging::page_tables`] adopts the tables, 511 GiB after (the top GiB
/// becomes the mapping window).
pub const IDENTITY_MAP_END: GuestPhysAddr = GuestPhysAddr(1 << 39);

/// An address the boot identity map leaves unmapped (1 TiB, beyond the
/// 39-bit address space), for testing the exception path: reading it raises
/// a level-0 translation fault (a data abort, "sync, current EL, SPx").
pub const UNMAPPED_PROBE: VirtAddr = VirtAddr(0x100_0000_0000);

/// Semihosting operation `SYS_EXIT`.
const SYS_EXIT: usize = 0x18;
/// `ADP_Stopped_ApplicationExit`: `SYS_EXIT`'s reason for an ordinary exit
/// whose status is the block's second word.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Set once [`exit_host`] has started, so that a trap out of the semihosting
/// call (no semihosting: `hlt` is undefined) halts instead of exiting again.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether [`exit_host`] has been entered.
pub fn exiting() -> bool {
    EXITING.load(Ordering::Relaxed)
}

/// The domain id, if the hardware interface tells it: never on Arm (a
/// guest cannot ask Xen for its own domid).
pub fn own_domid() -> Option<DomId> {
    None
}

/// The guest's physical address width, where the hardware interface tells
/// it: `None` on Arm (free guest-physical space comes from the device tree's
/// `/hypervisor` node instead).
pub fn phys_addr_bits() -> Option<u8> {
    None
}

/// Leave QEMU with the verdict as its exit status, through semihosting
/// `SYS_EXIT` (`hlt #0xf000`; QEMU needs
/// `-semihosting-config enable=on,target=native`). Without semihosting the
/// `hlt` traps, and the vCPU halts instead.
pub fn exit_host(v: Verdict) -> ! {
    signal_host(v);
    halt()
}

/// Semihosting `SYS_EXIT` with the verdict (once): ends the whole machine
/// where QEMU has semihosting on; returns only where it has not (the `hlt`
/// traps and Xen carries on).
pub fn signal_host(v: Verdict) {
    let code = match v {
        Verdict::Pass => QEMU_EXIT_PASS,
        Verdict::Fail => QEMU_EXIT_FAIL,
    };
    if !EXITING.swap(true, Ordering::Relaxed) {
        let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, code as u64];
        // SAFETY: the semihosting host reads the two-word parameter block
        // from a live local and ends the machine; should it return, it has
        // changed only x0.
        unsafe {
            asm!(
                "hlt #0xf000",
                inlateout("x0") SYS_EXIT => _,
                in("x1") block.as_ptr(),
                options(nostack, readonly),
            );
        }
    }
}

/// Stop this vCPU for good: interrupts masked, `wfi` forever.
pub fn halt() -> ! {
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    loop {
        // With everything masked `wfi` may return spuriously, hence the loop.
        aarch64_cpu::asm::wfi();
    }
}
