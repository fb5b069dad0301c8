//! x86_64: the PVH entry and the first Rust code.
//!
//! Xen starts a PVH guest at the address of its `XEN_ELFNOTE_PHYS32_ENTRY`
//! note, in 32-bit protected mode with paging off, flat segments, no GDT of
//! its own and `%ebx` = the physical address of `struct hvm_start_info`. The
//! entry below loads a GDT, zeroes `.bss`, identity-maps the first 4 GiB
//! with 2 MiB pages (what `xenmem::arch::x86_64::paging` adopts: it adds its
//! mapping window in `PML4[4]`, and grant-table frames go there), enables
//! PAE, long mode and NX, and calls [`stub_pvh_main`] on its own stack.
//! Interrupts stay off; there is no IDT (a CPU exception ends the domain,
//! and Xen reports it).

use core::arch::global_asm;

use xenmem::addr::GuestPhysAddr;
use xenmem::arch::imp::IDENTITY_MAP_END;
use xenmem::boot::{BootInfo, Firmware, PhysSpan};
use xenmem::xen::abi::{HvmMemmapEntry, HvmStartInfo, HVM_START_MAGIC};

use crate::{stack, Verdict};

global_asm!(
    r#"
    .set STUB_CS64, 0x08
    .set STUB_DS, 0x10

    /* XEN_ELFNOTE_PHYS32_ENTRY (18): where Xen enters, 32-bit. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18
    .asciz "Xen"
    .balign 4
    .long stub_pvh_start
    .balign 4

    .section .text.stub_entry, "ax", @progbits
    .code32
    .globl stub_pvh_start
stub_pvh_start:
    cli
    cld
    mov %ebx, %esi                  /* start info: kept in esi */
    lgdt stub_gdt_ptr
    mov $STUB_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs

    /* Zero .bss, then paint the stack (its high-water mark is measured). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $stub_stack_bottom, %edi
    mov $stub_stack_top, %ecx
    sub %edi, %ecx
    mov $0xa5, %al
    rep stosb

    /* 2048 page-directory entries of 2 MiB: [0, 4 GiB), present, writable. */
    mov $stub_pd, %edi
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b
    /* Four PDPT entries, one per page directory; PML4[0] -> the PDPT. */
    mov $stub_pdpt, %edi
    mov $stub_pd + 3, %eax
    xor %ecx, %ecx
3:  mov %eax, (%edi,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb 3b
    movl $stub_pdpt + 3, stub_pml4

    /* PAE; EFER.LME, and EFER.NXE where CPUID.80000001h:EDX.NX says so; paging. */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $stub_pml4, %eax
    mov %eax, %cr3
    mov $0x100, %edi
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 4f
    mov $0x80000001, %eax
    cpuid
    bt $20, %edx
    jnc 4f
    or $0x800, %edi
4:  mov $0xc0000080, %ecx
    rdmsr
    or %edi, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $STUB_CS64, $5f

    .code64
5:  mov $STUB_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $stub_stack_top, %rsp
    mov %esi, %edi
    xor %ebp, %ebp
    call stub_pvh_main
6:  cli
    hlt
    jmp 6b

    /* Flat 64-bit code and data, accessed bits preset. */
    .section .data.stub_gdt, "aw", @progbits
    .balign 16
stub_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
stub_gdt_end:
    .balign 4
    .word 0
stub_gdt_ptr:
    .word stub_gdt_end - stub_gdt - 1
    .long stub_gdt

    .section .bss.stub_boot, "aw", @nobits
    .balign 4096
stub_pml4:
    .skip 4096
stub_pdpt:
    .skip 4096
stub_pd:
    .skip 4 * 4096
    .globl stub_stack_bottom
stub_stack_bottom:
    .skip {stack}
    .globl stub_stack_top
stub_stack_top:
"#,
    stack = const stack::SIZE,
    options(att_syntax)
);

/// The longest command line read, NUL excluded.
const CMDLINE_MAX: u64 = 1024;

/// Whether `[paddr, paddr + len)` is non-null and inside the identity map.
fn mapped(paddr: u64, len: u64) -> bool {
    paddr != 0
        && paddr
            .checked_add(len)
            .is_some_and(|end| end <= IDENTITY_MAP_END.0)
}

/// The NUL-terminated string Xen left at `paddr` (empty for 0).
///
/// # Safety
/// Unless 0, `paddr` is where Xen put the command line, unchanged for the
/// rest of the run.
unsafe fn cmdline_at(paddr: u64) -> &'static [u8] {
    if !mapped(paddr, 1) {
        return &[];
    }
    let limit = (IDENTITY_MAP_END.0 - paddr).min(CMDLINE_MAX) as usize;
    let p = paddr as usize as *const u8;
    let mut len = 0;
    // SAFETY: every byte read lies below the identity map's end and inside
    // the string (the loop stops at its NUL).
    while len < limit && unsafe { p.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes were just read and stay unchanged (caller).
    unsafe { core::slice::from_raw_parts(p, len) }
}

/// The start info's memory map (version 1 and later), or empty.
fn memmap(si: &HvmStartInfo) -> &'static [HvmMemmapEntry] {
    let n = si.memmap_entries as usize;
    let bytes = (n * core::mem::size_of::<HvmMemmapEntry>()) as u64;
    if si.version < 1
        || n == 0
        || n > xenmem::memmap::MAX_RANGES
        || !mapped(si.memmap_paddr, bytes)
        || si.memmap_paddr % core::mem::align_of::<HvmMemmapEntry>() as u64 != 0
    {
        return &[];
    }
    // SAFETY: Xen wrote `n` entries there (mapped and aligned, checked
    // above) and nothing writes them afterwards.
    unsafe { core::slice::from_raw_parts(si.memmap_paddr as usize as *const HvmMemmapEntry, n) }
}

/// Called by the entry code in 64-bit mode, on the stub's stack.
#[unsafe(no_mangle)]
extern "C" fn stub_pvh_main(start_info: u32) -> ! {
    let si = u64::from(start_info);
    if !mapped(si, core::mem::size_of::<HvmStartInfo>() as u64)
        || si % core::mem::align_of::<HvmStartInfo>() as u64 != 0
    {
        crate::say!("stub: boot: start info at {si:#x} is not in the identity map");
        exit(Verdict::Fail);
    }
    // SAFETY: Xen passes its hvm_start_info in %ebx: mapped and aligned
    // (checked above), never written afterwards.
    let si: &'static HvmStartInfo = unsafe { &*(si as usize as *const HvmStartInfo) };
    if si.magic != HVM_START_MAGIC {
        crate::say!("stub: boot: no PVH start info (magic {:#x})", si.magic);
        exit(Verdict::Fail);
    }
    let boot = BootInfo {
        // SAFETY: Xen put the command line there and nothing overwrites it.
        cmdline: unsafe { cmdline_at(si.cmdline_paddr) },
        firmware: Firmware::Pvh {
            start_info: si,
            memmap: memmap(si),
        },
        image: image_span(),
    };
    exit(crate::run(&boot))
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static stub_stack_bottom: u8;
}

/// The stub's guest-physical extent (linked where it runs).
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

/// Leave QEMU through isa-debug-exit with the verdict.
pub fn exit(v: Verdict) -> ! {
    xenmem::arch::imp::exit_host(v)
}
