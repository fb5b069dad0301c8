//! The aarch64 boot glue (feature `rt`): the entry assembly, the first Rust
//! code and the exception report.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, Ordering};

use super::mmu;
use crate::arch::Verdict;
use crate::rt::ExceptionReport;
use xenmem::addr::{GuestPhysAddr, VirtAddr};
use xenmem::boot::{BootInfo, Firmware, PhysSpan};

global_asm!(
    include_str!("../../../boot/aarch64.S"),
    l1 = sym mmu::BOOT_L1,
    l2 = sym mmu::BOOT_L2,
    mair = const mmu::MAIR,
    tcr = const mmu::TCR,
    start = sym xenmem_aarch64_start,
    exception = sym xenmem_aarch64_exception,
);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// The size of the device tree header.
const FDT_HEADER_LEN: usize = 40;
/// The largest device tree the agent accepts (Linux's limit, too).
const FDT_MAX_LEN: usize = 2 << 20;

/// The registers the exception stubs save, on the exception stack.
#[repr(C)]
pub struct TrapFrame {
    /// `x0`-`x30` at the exception.
    pub x: [u64; 31],
    /// The interrupted stack pointer.
    pub sp: u64,
    /// `ELR_EL1`: where the exception was taken.
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted PSTATE.
    pub spsr: u64,
}

// `TRAP_FRAME_SIZE` in boot/aarch64.S.
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 272);

/// Where the image is, from the linker's symbols (virtual = guest-physical:
/// identity map).
fn image_span() -> PhysSpan {
    // Only the addresses of the linker-defined symbols are taken.
    let start = &raw const __image_start as u64;
    let end = &raw const __image_end as u64;
    PhysSpan {
        start: GuestPhysAddr(start),
        end: GuestPhysAddr(end),
    }
}

/// Fail the run before the agent started.
fn boot_fail() -> ! {
    xm_error!("verdict: FAIL");
    super::exit_host(Verdict::Fail)
}

/// Check the device tree Xen passed at `addr` and return it as a slice as
/// long as its header's `totalsize`.
fn device_tree(addr: u64, image: PhysSpan) -> Result<&'static [u8], &'static str> {
    if addr == 0 || addr % 8 != 0 {
        return Err("device tree address is null or not 8-byte aligned");
    }
    if !mmu::is_normal(addr, FDT_HEADER_LEN as u64) {
        return Err("device tree is not in memory the boot map treats as RAM");
    }
    if addr < image.end.raw() && addr + FDT_HEADER_LEN as u64 > image.start.raw() {
        return Err("device tree overlaps the image (is .bss padded into the Image file?)");
    }
    // SAFETY: the header lies in mapped Normal memory outside the image
    // (checked above) and is 8-byte aligned; Xen put a device tree there.
    let header = unsafe { (addr as *const [u8; 8]).read_volatile() };
    let len = xenmem::fdt::total_size(&header).map_err(|e| e.as_str())?;
    if !(FDT_HEADER_LEN..=FDT_MAX_LEN).contains(&len) {
        return Err("device tree totalsize out of range");
    }
    if !mmu::is_normal(addr, len as u64) {
        return Err("device tree is not in memory the boot map treats as RAM");
    }
    if addr < image.end.raw() && addr + len as u64 > image.start.raw() {
        return Err("device tree overlaps the image (is .bss padded into the Image file?)");
    }
    // SAFETY: `len` bytes from `addr` are mapped RAM outside the image that
    // nothing writes to for the rest of the run.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// `/chosen/bootargs` up to its first NUL, or empty if there is none.
fn bootargs(blob: &'static [u8]) -> Result<&'static [u8], xenmem::fdt::FdtError> {
    let tree = xenmem::fdt::Fdt::new(blob)?;
    let v = tree.property("/chosen", "bootargs")?.unwrap_or(&[]);
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    Ok(&v[..end])
}

/// The first Rust code: called by the entry assembly with the MMU on, the
/// image relocated, `.bss` zeroed and the boot stack set.
///
/// `dtb` is what Xen passed in `x0`; `bad_relocs` counts the `.rela.dyn`
/// entries that were not `R_AARCH64_RELATIVE` and so were not applied.
extern "C" fn xenmem_aarch64_start(dtb: u64, bad_relocs: u64) -> ! {
    xenmem::timer::mark(xenmem::timer::Stamp::Entry);
    if bad_relocs != 0 {
        xm_error!(
            "boot: {=u64} relocations other than R_AARCH64_RELATIVE in .rela.dyn",
            bad_relocs
        );
        boot_fail();
    }
    let image = image_span();
    let blob = match device_tree(dtb, image) {
        Ok(b) => b,
        Err(why) => {
            xm_error!("boot: {=str} (x0={=u64:#x})", why, dtb);
            boot_fail();
        }
    };
    let cmdline = match bootargs(blob) {
        Ok(c) => c,
        Err(e) => {
            xm_error!(
                "boot: the device tree at {=u64:#x}: {=str}",
                dtb,
                e.as_str()
            );
            boot_fail();
        }
    };
    let boot = BootInfo {
        cmdline,
        firmware: Firmware::DeviceTree(blob),
        image,
    };
    crate::rt::start(&boot)
}

/// The vector-table slot names (`VBAR_EL1 + 0x80 * slot`).
const VECTORS: [&str; 16] = [
    "sync, current EL, SP0",
    "IRQ, current EL, SP0",
    "FIQ, current EL, SP0",
    "SError, current EL, SP0",
    "sync, current EL, SPx",
    "IRQ, current EL, SPx",
    "FIQ, current EL, SPx",
    "SError, current EL, SPx",
    "sync, lower EL, AArch64",
    "IRQ, lower EL, AArch64",
    "FIQ, lower EL, AArch64",
    "SError, lower EL, AArch64",
    "sync, lower EL, AArch32",
    "IRQ, lower EL, AArch32",
    "FIQ, lower EL, AArch32",
    "SError, lower EL, AArch32",
];

/// `ESR_EL1.EC` values whose `FAR_EL1` holds the faulting address.
const EC_INSTRUCTION_ABORT_LOWER: u64 = 0x20;
const EC_INSTRUCTION_ABORT_SAME: u64 = 0x21;
const EC_DATA_ABORT_LOWER: u64 = 0x24;
const EC_DATA_ABORT_SAME: u64 = 0x25;
/// `ESR_EL1.ISS.FnV`: `FAR_EL1` is not valid (aborts only).
const ESR_FNV: u64 = 1 << 10;

static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

/// Called by every exception stub with its slot and the saved registers.
extern "C" fn xenmem_aarch64_exception(slot: u64, frame: &TrapFrame) -> ! {
    // A trap out of the exit path (semihosting off) or out of the report
    // itself: nothing left that could report it.
    if super::exiting() || IN_EXCEPTION.swap(true, Ordering::Relaxed) {
        super::halt();
    }
    let (esr, far): (u64, u64);
    // SAFETY: reading EL1 syndrome registers has no side effects.
    unsafe {
        asm!(
            "mrs {esr}, esr_el1",
            "mrs {far}, far_el1",
            esr = out(reg) esr,
            far = out(reg) far,
            options(nomem, nostack, preserves_flags),
        );
    }
    let slot = (slot & 15) as usize;
    let sync = slot % 4 == 0;
    let serror = slot % 4 == 3;
    let ec = (esr >> 26) & 0x3f;
    let abort = matches!(
        ec,
        EC_INSTRUCTION_ABORT_LOWER
            | EC_INSTRUCTION_ABORT_SAME
            | EC_DATA_ABORT_LOWER
            | EC_DATA_ABORT_SAME
    );
    xm_error!(
        "aarch64 trap frame: sp={=u64:#x} lr={=u64:#x} spsr={=u64:#x}",
        frame.sp,
        frame.x[30],
        frame.spsr
    );
    crate::rt::exception(&ExceptionReport {
        vector: VECTORS[slot],
        number: slot as u32,
        syndrome: if sync || serror { esr } else { 0 },
        pc: VirtAddr(frame.elr),
        fault_addr: (sync && abort && esr & ESR_FNV == 0).then_some(VirtAddr(far)),
    })
}
