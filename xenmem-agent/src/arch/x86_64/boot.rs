//! The PVH boot glue: the entry assembly (`boot/x86_64.S`) and the first Rust
//! code after it, which checks Xen's `hvm_start_info`, gathers the
//! [`BootInfo`] and hands over to [`crate::rt::start`].

use crate::arch::Verdict;
use xenmem::addr::GuestPhysAddr;
use xenmem::boot::{BootInfo, Firmware, PhysSpan};
use xenmem::xen::abi::{HvmMemmapEntry, HvmStartInfo, HVM_START_MAGIC};

use super::IDENTITY_MAP_END;

core::arch::global_asm!(include_str!("../../../boot/x86_64.S"), options(att_syntax));

extern "C" {
    /// First byte of the image (linker script).
    static __image_start: u8;
    /// One past the image's last byte, boot stack and page tables included
    /// (linker script).
    static __image_end: u8;
}

/// The longest command line read from `cmdline_paddr`, NUL excluded.
const CMDLINE_MAX: usize = 4096;

/// The image's guest-physical extent (identity-mapped: link address ==
/// physical address).
fn image_span() -> PhysSpan {
    // Only the symbols' addresses are taken, never their contents.
    PhysSpan {
        start: GuestPhysAddr(&raw const __image_start as u64),
        end: GuestPhysAddr(&raw const __image_end as u64),
    }
}

/// Whether `[paddr, paddr + len)` lies in the identity-mapped memory.
fn mapped(paddr: u64, len: u64) -> bool {
    paddr != 0
        && paddr
            .checked_add(len)
            .is_some_and(|end| end <= IDENTITY_MAP_END.raw())
}

/// The NUL-terminated command line at `paddr` (at most [`CMDLINE_MAX`]
/// bytes, never past the identity map); empty for `paddr == 0`.
///
/// # Safety
/// Unless 0, `paddr` must be where Xen put the command line, in memory that
/// stays unchanged for the rest of the run.
unsafe fn cmdline_at(paddr: u64) -> &'static [u8] {
    if paddr == 0 || !mapped(paddr, 1) {
        return &[];
    }
    let limit = (IDENTITY_MAP_END.raw() - paddr).min(CMDLINE_MAX as u64) as usize;
    let p = paddr as *const u8;
    let mut len = 0;
    // SAFETY: `p + len` stays below the identity map's end and inside the
    // string Xen wrote (it stops at the NUL).
    while len < limit && unsafe { p.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes were just read; the caller guarantees that
    // they stay unchanged.
    unsafe { core::slice::from_raw_parts(p, len) }
}

/// The most start-info memory-map entries taken (as many as the agent's
/// memory map holds).
const MEMMAP_MAX: usize = xenmem::memmap::MAX_RANGES;

/// The start info's memory map: version 1 and later, when Xen gave one that
/// lies in the identity map; empty otherwise.
fn start_info_memmap(si: &HvmStartInfo) -> &'static [HvmMemmapEntry] {
    let n = si.memmap_entries as usize;
    let bytes = (n * core::mem::size_of::<HvmMemmapEntry>()) as u64;
    if si.version < 1
        || n == 0
        || n > MEMMAP_MAX
        || !mapped(si.memmap_paddr, bytes)
        || si.memmap_paddr % core::mem::align_of::<HvmMemmapEntry>() as u64 != 0
    {
        return &[];
    }
    // SAFETY: Xen wrote `n` entries at `memmap_paddr`, which is mapped and
    // aligned (checked above) and not written afterwards.
    unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const HvmMemmapEntry, n) }
}

/// The first Rust code: called by `boot/x86_64.S` in 64-bit mode on the boot
/// stack, with the identity map up, `.bss` zeroed and interrupts off.
#[unsafe(no_mangle)]
extern "C" fn xenmem_x86_64_pvh_main(start_info_paddr: u32) -> ! {
    xenmem::timer::mark(xenmem::timer::Stamp::Entry);
    super::exceptions::init();
    super::hypercall::init();

    let si = u64::from(start_info_paddr);
    if !mapped(si, core::mem::size_of::<HvmStartInfo>() as u64)
        || si % core::mem::align_of::<HvmStartInfo>() as u64 != 0
    {
        super::exit_host(Verdict::Fail);
    }
    // SAFETY: Xen passes the address of its hvm_start_info in %ebx; it is
    // mapped and aligned (checked above), and nothing writes it afterwards.
    let start_info: &'static HvmStartInfo = unsafe { &*(si as *const HvmStartInfo) };
    if start_info.magic != HVM_START_MAGIC {
        // Not started by Xen's PVH loader: nothing to log through yet
        // (there may be no Xen console either).
        super::exit_host(Verdict::Fail);
    }
    // SAFETY: Xen wrote the command line there; nothing overwrites it.
    let cmdline = unsafe { cmdline_at(start_info.cmdline_paddr) };
    let boot = BootInfo {
        cmdline,
        firmware: Firmware::Pvh {
            start_info,
            memmap: start_info_memmap(start_info),
        },
        image: image_span(),
    };
    crate::rt::start(&boot)
}
