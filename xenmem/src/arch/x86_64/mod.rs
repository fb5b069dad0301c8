//! x86_64: a PVH guest of Xen.
//!
//! Provides the architecture seam (see [`crate::arch`]): [`hypercall::raw`]
//! (`vmcall`/`vmmcall` from the CPU vendor), [`own_domid`], [`exit_host`]
//! (QEMU's isa-debug-exit), [`halt`] and [`NAME`]. With the `rt` feature it
//! also holds the PVH boot glue (`boot/x86_64.S` and the `boot` module) and
//! the CPU exception vectors.

use core::arch::asm;

use crate::addr::{DomId, GuestPhysAddr, VirtAddr};
use crate::arch::Verdict;

pub mod hypercall;
pub mod paging;
pub mod timer;

/// The architecture's name.
pub const NAME: &str = "x86_64";

/// The I/O port of QEMU's `isa-debug-exit` device, as the runner configures
/// it: `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The byte [`exit_host`] writes to [`DEBUG_EXIT_PORT`] for [`Verdict::Pass`].
pub const DEBUG_EXIT_PASS: u8 = 0x10;
/// The byte [`exit_host`] writes to [`DEBUG_EXIT_PORT`] for [`Verdict::Fail`].
pub const DEBUG_EXIT_FAIL: u8 = 0x11;
/// QEMU's exit status after [`exit_host`]`(Verdict::Pass)`: isa-debug-exit
/// exits with `(value << 1) | 1`, here `(0x10 << 1) | 1`.
pub const QEMU_EXIT_PASS: i32 = ((DEBUG_EXIT_PASS as i32) << 1) | 1;
/// QEMU's exit status after [`exit_host`]`(Verdict::Fail)`: `(0x11 << 1) | 1`.
pub const QEMU_EXIT_FAIL: i32 = ((DEBUG_EXIT_FAIL as i32) << 1) | 1;

const _: () = {
    assert!(QEMU_EXIT_PASS == 33);
    assert!(QEMU_EXIT_FAIL == 35);
};

/// How much guest-physical memory the boot page tables identity-map, from 0:
/// the first 4 GiB (2 MiB pages), except the boot stack's guard page.
pub const IDENTITY_MAP_END: GuestPhysAddr = GuestPhysAddr(1 << 32);

/// An address the boot page tables leave unmapped (1 TiB, canonical), for
/// testing the exception path: reading it raises `#PF`.
pub const UNMAPPED_PROBE: VirtAddr = VirtAddr(0x100_0000_0000);

/// The first CPUID leaf where a hypervisor may put its leaves; Xen's are at
/// the first 0x100-aligned base from here with its signature.
const HV_CPUID_FIRST: u32 = 0x4000_0000;
/// How far [`xen_cpuid_base`] looks (Linux looks as far).
const HV_CPUID_LAST: u32 = 0x4001_0000;
/// "XenVMMXenVMM" in EBX, ECX, EDX.
const XEN_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];
/// Xen's HVM feature leaf, relative to the base (`XEN_CPUID_LEAF(4)`).
const XEN_HVM_LEAF: u32 = 4;
/// `XEN_HVM_CPUID_DOMID_PRESENT`: the HVM leaf's ECX holds the domain id.
const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;

/// `CPUID` leaf `leaf`, sub-leaf `sub`: `[eax, ebx, ecx, edx]`.
pub(crate) fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    // The intrinsic is safe from Rust 1.87 on and `unsafe` before; the crate
    // supports both.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, sub) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The CPUID base of Xen's leaves (`0x4000_0000`, `0x4000_0100`, ...), or
/// `None` if this CPU does not run under Xen.
pub fn xen_cpuid_base() -> Option<u32> {
    (HV_CPUID_FIRST..HV_CPUID_LAST)
        .step_by(0x100)
        .find(|&base| {
            let [max, b, c, d] = cpuid(base, 0);
            [b, c, d] == XEN_SIGNATURE && max >= base + 2
        })
}

/// This domain's id, from Xen's HVM CPUID leaf when Xen fills it in
/// (`XEN_HVM_CPUID_DOMID_PRESENT`); `None` otherwise or outside Xen.
pub fn own_domid() -> Option<DomId> {
    let base = xen_cpuid_base()?;
    let [max, ..] = cpuid(base, 0);
    if max < base + XEN_HVM_LEAF {
        return None;
    }
    let [flags, _, domid, _] = cpuid(base + XEN_HVM_LEAF, 0);
    if flags & XEN_HVM_CPUID_DOMID_PRESENT == 0 {
        return None;
    }
    u16::try_from(domid).ok().map(DomId)
}

/// The guest's physical address width (CPUID leaf 0x8000_0008, EAX bits 7..0),
/// or `None` where the CPU does not report it.
pub fn phys_addr_bits() -> Option<u8> {
    let [max, ..] = cpuid(0x8000_0000, 0);
    if max < 0x8000_0008 {
        return None;
    }
    let [eax, ..] = cpuid(0x8000_0008, 0);
    u8::try_from(eax & 0xff).ok().filter(|&b| b >= 32)
}

/// Write one byte to an I/O port.
///
/// # Safety
/// The write must have no effect that breaks memory safety (a PVH dom0 may
/// reach real devices).
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded from the caller; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// Leave QEMU with `verdict` as its exit status through isa-debug-exit
/// ([`QEMU_EXIT_PASS`] or [`QEMU_EXIT_FAIL`]). Without that device (or
/// outside QEMU) the write does nothing and the vCPU halts.
pub fn exit_host(verdict: Verdict) -> ! {
    signal_host(verdict);
    halt()
}

/// Tell QEMU's isa-debug-exit the verdict, which ends the machine if the
/// device is there (a dom0). In a domU no device answers the port and this
/// returns.
pub fn signal_host(verdict: Verdict) {
    let value = match verdict {
        Verdict::Pass => DEBUG_EXIT_PASS,
        Verdict::Fail => DEBUG_EXIT_FAIL,
    };
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit in every configuration the
    // agent runs in; elsewhere it is an unused ISA port (a domU's port
    // accesses go to Xen's emulation, which ignores it).
    unsafe { outb(DEBUG_EXIT_PORT, value) };
}

/// Stop this vCPU for good: interrupts off, `hlt` forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory; with
        // IF clear only an NMI wakes the vCPU, and the loop halts it again.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
