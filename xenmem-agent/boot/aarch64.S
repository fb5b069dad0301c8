// The aarch64 entry of the xenmem agent: a Linux arm64 Image header, the
// entry code and the EL1 exception vectors.
//
// Included from src/arch/aarch64/boot.rs with
// `global_asm!(include_str!("../../../boot/aarch64.S"), ...)`, which
// substitutes the operands written in braces below (Rust constants and
// symbols); so no other braces may appear in this file.
//
// Xen enters at the first byte of the Image in EL1h, MMU and caches off,
// interrupts masked, x0 = guest-physical address of the device tree, with the
// image anywhere in RAM. The image is linked at 0 (linker/aarch64.ld) and
// built position-independent, so until the relocations are applied only
// PC-relative addressing (adr/adrp) may be used.
//
// Register use until the hand-over to Rust:
//   x19  device tree address from Xen
//   x20  run-time base of the image (= address of _start)
//   x21  number of relocations that are not R_AARCH64_RELATIVE (ignored)

    .equ    BOOT_STACK_SIZE, 0x10000        // 64 KiB
    .equ    EXCEPTION_STACK_SIZE, 0x4000    // 16 KiB
    .equ    R_AARCH64_RELATIVE, 1027
    .equ    TRAP_FRAME_SIZE, 272            // 34 u64: x0-x30, sp, elr, spsr

// ---- the Image header (Documentation/arch/arm64/booting.rst) ----------------

    .section .text.head, "ax"
    .global _start
    .type   _start, %function
_start:
    b       xenmem_entry                    // code0
    .long   0                               // code1
    .quad   0                               // text_offset
    .quad   __image_size                    // image_size: incl. bss and stacks
    .quad   0xa                             // flags: LE, 4K pages, anywhere
    .quad   0                               // res2
    .quad   0                               // res3
    .quad   0                               // res4
    .ascii  "ARM"                           // magic "ARM\x64"
    .byte   0x64
    .long   0                               // res5 (no PE header)

// ---- entry -----------------------------------------------------------------

xenmem_entry:
    msr     daifset, #0xf
    mov     x19, x0

    // FP/SIMD: CPACR_EL1.FPEN = 0b11 (rustc emits NEON, e.g. in memset).
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb

    adr     x20, _start

    // -- MMU on, with the identity map of src/arch/aarch64/mmu.rs ------------
    // The tables are static data, complete except for L1[0], the pointer to
    // the level-2 table of the first GiB, which depends on the load address.
    adrp    x1, {l1}
    add     x1, x1, :lo12:{l1}
    adrp    x2, {l2}
    add     x2, x2, :lo12:{l2}
    orr     x2, x2, #3                      // table descriptor
    str     x2, [x1]
    // That store went to memory (MMU off: Device-nGnRnE). Drop any stale
    // (clean) cache line of it, so that the cacheable table walk sees it.
    dsb     sy
    dc      ivac, x1
    dsb     sy

    movz    x2, #(({mair}) & 0xffff)
    movk    x2, #((({mair}) >> 16) & 0xffff), lsl #16
    movk    x2, #((({mair}) >> 32) & 0xffff), lsl #32
    movk    x2, #((({mair}) >> 48) & 0xffff), lsl #48
    msr     mair_el1, x2

    // TCR_EL1: the fixed fields, IPS = ID_AA64MMFR0_EL1.PARange (max 48 bits).
    movz    x2, #(({tcr}) & 0xffff)
    movk    x2, #((({tcr}) >> 16) & 0xffff), lsl #16
    movk    x2, #((({tcr}) >> 32) & 0xffff), lsl #32
    mrs     x3, id_aa64mmfr0_el1
    and     x3, x3, #7
    cmp     x3, #5
    mov     x4, #5
    csel    x3, x3, x4, ls
    orr     x2, x2, x3, lsl #32
    msr     tcr_el1, x2
    msr     ttbr0_el1, x1
    isb
    tlbi    vmalle1
    ic      iallu
    dsb     nsh
    isb

    // SCTLR_EL1: M, C, I on; A (alignment check), WXN and EE off.
    mrs     x2, sctlr_el1
    orr     x2, x2, #(1 << 0)
    orr     x2, x2, #(1 << 2)
    orr     x2, x2, #(1 << 12)
    bic     x2, x2, #(1 << 1)
    bic     x2, x2, #(1 << 19)
    bic     x2, x2, #(1 << 25)
    msr     sctlr_el1, x2
    isb

    // -- relocations: *(base + r_offset) = base + r_addend --------------------
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
    mov     x21, #0
1:  cmp     x1, x2
    b.hs    3f
    ldp     x3, x4, [x1], #16               // r_offset, r_info
    ldr     x5, [x1], #8                    // r_addend
    cmp     x4, #R_AARCH64_RELATIVE         // type 1027, symbol 0
    b.ne    2f
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b
2:  add     x21, x21, #1                    // reported by Rust, not applied
    b       1b
3:

    // -- the device tree must not lie in .bss -----------------------------------
    // .bss is not in the Image file (linker/aarch64.ld): Xen and libxc place
    // the device tree above the file's end rounded up to 2 MiB (or below the
    // image), and the linker keeps .bss within 2 MiB. Should a loader put
    // the tree there anyway, zeroing .bss would erase it: leave with FAIL
    // through semihosting (SYS_EXIT, ADP_Stopped_ApplicationExit, code 35),
    // else halt, so the run fails instead of reading a wiped tree.
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __image_end
    add     x2, x2, :lo12:__image_end
    cmp     x19, x1
    b.lo    3f
    cmp     x19, x2
    b.hs    3f
    mov     x0, #0x18
    adr     x1, 9f
    hlt     #0xf000
8:  wfi
    b       8b
    .balign 8
9:  .quad   0x20026, 35
3:

    // -- zero .bss (the stacks included; nothing in it is in use yet) --------
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
4:  cmp     x1, x2
    b.hs    5f
    stp     xzr, xzr, [x1], #16
    b       4b
5:

    // -- stack, vectors, Rust -------------------------------------------------
    adrp    x1, __boot_stack_top
    add     x1, x1, :lo12:__boot_stack_top
    mov     sp, x1
    adrp    x1, xenmem_vectors
    add     x1, x1, :lo12:xenmem_vectors
    msr     vbar_el1, x1
    isb

    mov     x0, x19
    mov     x1, x21
    mov     x29, #0
    mov     x30, #0
    bl      {start}
6:  wfi
    b       6b
    .size   _start, . - _start

// ---- exception vectors -------------------------------------------------------
//
// 16 slots of 0x80 bytes. Each stub switches to the exception stack (so that
// a bad SP still gets reported), saves x0-x30, the interrupted SP, ELR_EL1
// and SPSR_EL1 in a trap frame there and calls
// {exception}(slot, frame), which never returns.
// TPIDR_EL1 and TPIDRRO_EL0 serve as scratch registers: nothing else uses them.

    .section .text.vectors, "ax"
    .balign 2048
    .global xenmem_vectors
xenmem_vectors:
    .irp    slot, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    msr     tpidr_el1, x0
    mov     x0, sp
    msr     tpidrro_el0, x0
    adrp    x0, __exception_stack_top
    add     x0, x0, :lo12:__exception_stack_top
    sub     sp, x0, #TRAP_FRAME_SIZE
    mov     x0, #\slot
    b       xenmem_exception_common
    .endr

xenmem_exception_common:
    stp     x1, x2, [sp, #8 * 1]
    stp     x3, x4, [sp, #8 * 3]
    stp     x5, x6, [sp, #8 * 5]
    stp     x7, x8, [sp, #8 * 7]
    stp     x9, x10, [sp, #8 * 9]
    stp     x11, x12, [sp, #8 * 11]
    stp     x13, x14, [sp, #8 * 13]
    stp     x15, x16, [sp, #8 * 15]
    stp     x17, x18, [sp, #8 * 17]
    stp     x19, x20, [sp, #8 * 19]
    stp     x21, x22, [sp, #8 * 21]
    stp     x23, x24, [sp, #8 * 23]
    stp     x25, x26, [sp, #8 * 25]
    stp     x27, x28, [sp, #8 * 27]
    stp     x29, x30, [sp, #8 * 29]
    mrs     x1, tpidr_el1
    str     x1, [sp, #8 * 0]
    mrs     x1, tpidrro_el0
    str     x1, [sp, #8 * 31]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x1, x2, [sp, #8 * 32]
    mov     x1, sp
    mov     x29, #0
    bl      {exception}
7:  wfi
    b       7b

// ---- stacks ------------------------------------------------------------------
// In .bss, which the flat Image carries as zeros (see linker/aarch64.ld).
// No guard pages: the boot map has no 4 KiB granularity.

    .section .bss.xenmem_stacks, "aw", %nobits
    .balign 4096
    .space  BOOT_STACK_SIZE
    .global __boot_stack_top
__boot_stack_top:
    .space  EXCEPTION_STACK_SIZE
    .global __exception_stack_top
__exception_stack_top:
