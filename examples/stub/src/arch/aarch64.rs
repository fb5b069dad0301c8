//! aarch64: the arm64 Image entry, the boot identity map, exception
//! vectors and the first Rust code.
//!
//! Xen enters at the Image's first byte in EL1h with the MMU and caches off,
//! interrupts masked and `x0` = the device tree's guest-physical address;
//! the Image may sit anywhere in RAM, and is linked at 0. Until the
//! relocations are applied only PC-relative addressing works. The entry
//! enables FP/SIMD (rustc emits NEON), turns the MMU on with [`STUB_L1`] (a
//! complete, position-independent table: no pointer in it), fails the boot
//! if Xen put the device tree where `.bss` will be (`.bss` is not in the
//! Image file, see `linker/aarch64.ld`), applies the relative relocations
//! (`R_AARCH64_RELATIVE` in `.rela.dyn`, packed ones in `.relr.dyn`), zeroes
//! `.bss`, paints the stack, and calls [`stub_aarch64_main`] on it. The MMU
//! must be on before Rust runs: with it off every access is Device memory,
//! where the exclusives behind atomics and spin locks (and unaligned
//! accesses) do not work.
//!
//! The map (39-bit VA, 4 KiB granule, walks from level 1, virtual address =
//! guest-physical address) is what `xenmem::arch::aarch64::paging` adopts:
//! it carves its mapping window out of the last GiB.
//!
//! | range | as |
//! |---|---|
//! | `0 .. 1 GiB` | Device-nGnRnE, never executable: the GIC, the UART, Xen's grant and magic pages of a domU (those are only used through the window) |
//! | `1 GiB .. 512 GiB` | Normal write-back: RAM (QEMU `virt` and Xen's guest RAM start at 1 GiB) |

use core::arch::global_asm;
use core::cell::UnsafeCell;

use xenmem::addr::GuestPhysAddr;
use xenmem::boot::{BootInfo, Firmware, PhysSpan};

use crate::{stack, Verdict};

/// `MAIR_EL1`: attribute 0 Device-nGnRnE, 1 Normal write-back RWA, 2 Normal
/// non-cacheable (the indices xenmem's aarch64 format uses).
const MAIR: u64 = 0x44_ff_00;
/// `TCR_EL1` but `IPS` (added from `ID_AA64MMFR0_EL1.PARange`): `T0SZ` = 25
/// (39-bit VA), walks inner/outer write-back and inner-shareable, 4 KiB
/// granule; `TTBR1` walks off (`EPD1`, `TG1` = 4 KiB).
const TCR: u64 = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 2 << 30;

const _: () = {
    use xenmem::paging::aarch64 as f;
    assert!(MAIR & 0xff == 0x00 && f::MAIR_DEVICE == 0);
    assert!((MAIR >> 8) & 0xff == 0xff && f::MAIR_NORMAL_WB == 1);
    assert!((MAIR >> 16) & 0xff == 0x44 && f::MAIR_NORMAL_NC == 2);
    assert!(<f::Stage1Va39 as xenmem::paging::Format>::VA_BITS == 64 - 25);
};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 3 << 8;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const NORMAL: u64 = BLOCK | AF | SH_INNER | (1 << 2) | UXN;
const DEVICE: u64 = BLOCK | AF | PXN | UXN;

/// A translation table the MMU reads and xenmem's page tables write (after
/// adoption, through raw pointers: never through a Rust reference).
#[repr(C, align(4096))]
pub struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: Rust never makes a reference to the array: the MMU reads it, and
// only xenmem's adopted page tables (one handle, behind a lock) write it.
unsafe impl Sync for Table {}

const fn level1() -> [u64; 512] {
    let mut t = [0u64; 512];
    t[0] = DEVICE;
    let mut i = 1;
    while i < 512 {
        t[i] = (i as u64 * GIB) | NORMAL;
        i += 1;
    }
    t
}

/// The level-1 table (`TTBR0_EL1`): 512 blocks of 1 GiB.
#[unsafe(no_mangle)]
pub static STUB_L1: Table = Table(UnsafeCell::new(level1()));

global_asm!(
    r#"
    .section .text.stub_head, "ax"
    .global _start
_start:
    b       stub_entry                      // code0
    .long   0                               // code1
    .quad   0                               // text_offset
    .quad   __image_size                    // image_size, .bss included
    .quad   0xa                             // little-endian, 4 KiB, anywhere
    .quad   0, 0, 0                         // res2-res4
    .ascii  "ARM"
    .byte   0x64
    .long   0                               // res5

stub_entry:
    msr     daifset, #0xf
    mov     x19, x0                         // device tree
    mov     x1, #(3 << 20)                  // CPACR_EL1.FPEN: no FP/SIMD traps
    msr     cpacr_el1, x1
    isb
    adr     x20, _start                     // run-time base

    ldr     x1, ={mair}
    msr     mair_el1, x1
    ldr     x1, ={tcr}
    mrs     x2, id_aa64mmfr0_el1            // IPS = PARange, at most 48 bits
    and     x2, x2, #7
    cmp     x2, #5
    mov     x3, #5
    csel    x2, x2, x3, ls
    orr     x1, x1, x2, lsl #32
    msr     tcr_el1, x1
    adrp    x1, STUB_L1
    add     x1, x1, :lo12:STUB_L1
    msr     ttbr0_el1, x1
    isb
    tlbi    vmalle1
    ic      iallu
    dsb     nsh
    isb
    mrs     x1, sctlr_el1
    orr     x1, x1, #(1 << 0)               // M
    orr     x1, x1, #(1 << 2)               // C
    orr     x1, x1, #(1 << 12)              // I
    bic     x1, x1, #(1 << 1)               // A: no alignment faults
    bic     x1, x1, #(1 << 19)              // WXN
    bic     x1, x1, #(1 << 25)              // EE: little-endian
    msr     sctlr_el1, x1
    isb

    // The device tree must not lie in .bss (not in the file: see the linker
    // script), which is about to be zeroed.
    adrp    x1, __image_end
    add     x1, x1, :lo12:__image_end
    cmp     x19, x20
    b.lo    2f
    cmp     x19, x1
    b.lo    stub_early_fail

    // RELA: *(base + r_offset) = base + r_addend for R_AARCH64_RELATIVE
    // (1027); x21 counts any other type (reported, not applied).
2:  adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
    mov     x21, #0
20: cmp     x1, x2
    b.hs    22f
    ldp     x3, x4, [x1], #16
    ldr     x5, [x1], #8
    cmp     x4, #1027
    b.ne    21f
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       20b
21: add     x21, x21, #1
    b       20b

    // RELR: an even word is the offset of a word to relocate (add the base
    // to it) and sets x6 just past it; an odd word is a bitmap whose bits
    // 1..63 stand for the 63 words from x6, which then moves past them.
22: adrp    x1, __relr_start
    add     x1, x1, :lo12:__relr_start
    adrp    x2, __relr_end
    add     x2, x2, :lo12:__relr_end
    mov     x6, #0
23: cmp     x1, x2
    b.hs    4f
    ldr     x3, [x1], #8
    tbnz    x3, #0, 24f
    ldr     x4, [x20, x3]
    add     x4, x4, x20
    str     x4, [x20, x3]
    add     x6, x3, #8
    b       23b
24: lsr     x3, x3, #1
    mov     x7, x6
25: cbz     x3, 27f
    tbz     x3, #0, 26f
    ldr     x4, [x20, x7]
    add     x4, x4, x20
    str     x4, [x20, x7]
26: lsr     x3, x3, #1
    add     x7, x7, #8
    b       25b
27: add     x6, x6, #(63 * 8)
    b       23b

4:  adrp    x1, __bss_start                 // zero .bss
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
5:  cmp     x1, x2
    b.hs    6f
    stp     xzr, xzr, [x1], #16
    b       5b
6:  adrp    x1, stub_stack_bottom           // paint the stack
    add     x1, x1, :lo12:stub_stack_bottom
    adrp    x2, stub_stack_top
    add     x2, x2, :lo12:stub_stack_top
    ldr     x3, =0xa5a5a5a5a5a5a5a5
7:  cmp     x1, x2
    b.hs    8f
    stp     x3, x3, [x1], #16
    b       7b
8:  mov     sp, x2
    adrp    x1, stub_vectors
    add     x1, x1, :lo12:stub_vectors
    msr     vbar_el1, x1
    isb
    mov     x0, x19
    mov     x1, x21
    mov     x29, #0
    mov     x30, #0
    bl      {main}
9:  wfi
    b       9b

    // Nothing can be said yet: semihosting SYS_EXIT with status 1.
stub_early_fail:
    mov     x0, #0x18
    adr     x1, 28f
    hlt     #0xf000
    b       stub_early_fail
    .balign 8
28: .quad   0x20026, 35
    .ltorg

    // Every exception: report the slot and syndrome, fail the run.
    .section .text.stub_vectors, "ax"
    .balign 2048
stub_vectors:
    .irp    slot, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\slot
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    bl      {trap}
    .endr

    .section .bss.stub_stack, "aw", %nobits
    .balign 4096
    .global stub_stack_bottom
stub_stack_bottom:
    .space  {stack}
    .global stub_stack_top
stub_stack_top:
"#,
    mair = const MAIR,
    tcr = const TCR,
    stack = const stack::SIZE,
    main = sym stub_aarch64_main,
    trap = sym stub_aarch64_trap,
);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static stub_stack_bottom: u8;
}

/// The stub's guest-physical extent (identity map: its addresses).
fn image_span() -> PhysSpan {
    PhysSpan {
        start: GuestPhysAddr(&raw const __image_start as u64),
        end: GuestPhysAddr(&raw const __image_end as u64),
    }
}

/// The lowest byte of the stack.
pub fn stack_bottom() -> *const u8 {
    &raw const stub_stack_bottom
}

/// The device tree header's size.
const FDT_HEADER: u64 = 40;
/// The largest device tree accepted.
const FDT_MAX: u64 = 2 << 20;

/// The device tree Xen passed at `addr`, as long as its header says.
fn device_tree(addr: u64, image: PhysSpan) -> Result<&'static [u8], &'static str> {
    let normal = |len: u64| addr >= GIB && addr.checked_add(len).is_some_and(|e| e <= 512 * GIB);
    let overlaps = |len: u64| addr < image.end.0 && addr + len > image.start.0;
    if addr % 8 != 0 || !normal(FDT_HEADER) || overlaps(FDT_HEADER) {
        return Err("the device tree is not 8-byte aligned RAM outside the image");
    }
    // SAFETY: 8 aligned bytes of RAM (Normal memory in the boot map) outside
    // the image, where Xen put the tree's header.
    let header = unsafe { (addr as usize as *const [u8; 8]).read_volatile() };
    let len = xenmem::fdt::total_size(&header).map_err(|e| e.as_str())? as u64;
    if !(FDT_HEADER..=FDT_MAX).contains(&len) || !normal(len) || overlaps(len) {
        return Err("the device tree's size is out of range or it overlaps the image");
    }
    // SAFETY: `len` bytes of RAM outside the image that nothing writes for
    // the rest of the run.
    Ok(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len as usize) })
}

/// Called by the entry code with the MMU on, the image relocated and `.bss`
/// zeroed: `dtb` from Xen's `x0`, `bad_relocs` the relocations that were not
/// `R_AARCH64_RELATIVE` (and so were not applied).
extern "C" fn stub_aarch64_main(dtb: u64, bad_relocs: u64) -> ! {
    if bad_relocs != 0 {
        crate::say!("stub: boot: {bad_relocs} relocations are not R_AARCH64_RELATIVE");
        exit(Verdict::Fail);
    }
    let image = image_span();
    let blob = match device_tree(dtb, image) {
        Ok(b) => b,
        Err(why) => {
            crate::say!("stub: boot: {why} (x0={dtb:#x})");
            exit(Verdict::Fail);
        }
    };
    let cmdline = match xenmem::fdt::Fdt::new(blob).and_then(|t| t.property("/chosen", "bootargs"))
    {
        Ok(v) => {
            let v = v.unwrap_or(&[]);
            &v[..v.iter().position(|&b| b == 0).unwrap_or(v.len())]
        }
        Err(e) => {
            crate::say!("stub: boot: device tree: {e}");
            exit(Verdict::Fail);
        }
    };
    let boot = BootInfo {
        cmdline,
        firmware: Firmware::DeviceTree(blob),
        image,
    };
    exit(crate::run(&boot))
}

/// Called by every exception vector: say where, fail the run.
extern "C" fn stub_aarch64_trap(slot: u64, esr: u64, elr: u64, far: u64) -> ! {
    crate::say!("stub: exception slot={slot} esr={esr:#x} elr={elr:#x} far={far:#x}");
    crate::say!("stub: verdict FAIL");
    exit(Verdict::Fail)
}

/// Leave QEMU through semihosting `SYS_EXIT` with the verdict.
pub fn exit(v: Verdict) -> ! {
    xenmem::arch::imp::exit_host(v)
}
