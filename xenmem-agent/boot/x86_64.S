/*
 * xenmem: the x86_64 PVH entry and the CPU exception stubs.
 *
 * Included by src/arch/x86_64/boot.rs with
 *     global_asm!(include_str!("../../../boot/x86_64.S"), options(att_syntax))
 * so this text is also a Rust format string: it must not contain curly
 * braces. Comments use the C style or the hash sign only.
 *
 * Xen enters at xenmem_pvh_start (named by the XEN_ELFNOTE_PHYS32_ENTRY note
 * below) in 32-bit protected mode, paging off, with flat 4 GiB CS/DS, an
 * undefined GDT, no stack and %ebx = the physical address of
 * struct hvm_start_info. This code:
 *   1. loads its own GDT and data segments;
 *   2. zeroes .bss (nothing in it is in use yet);
 *   3. builds page tables that identity-map the first 4 GiB with 2 MiB pages,
 *      except the 2 MiB region holding the boot stack's guard page, which is
 *      mapped with 4 KiB pages and leaves the guard page not present;
 *   4. enables PAE, EFER.LME (and EFER.NXE if the CPU has NX), paging;
 *   5. far-jumps to 64-bit code, loads the segment registers, switches to the
 *      boot stack and calls xenmem_x86_64_pvh_main(start_info_paddr).
 * Interrupts stay off throughout (and in the agent).
 *
 * The image is linked at 1 MiB with a static relocation model, so every
 * symbol's link address is its physical address.
 */

    .set XENMEM_CS64, 0x08
    .set XENMEM_DS, 0x10

    .set CR0_PG, 0x80000000
    .set CR4_PAE, 0x20
    .set MSR_EFER, 0xc0000080
    .set EFER_LME, 0x100
    .set EFER_NXE, 0x800

    .set PTE_P, 0x1
    .set PTE_RW, 0x2
    .set PTE_PS, 0x80

    .set BOOT_STACK_SIZE, 0x20000   /* 128 KiB */

/* ---- the Xen ELF note --------------------------------------------------- */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen" and its NUL */
    .long 4                         /* descsz: one 32-bit address */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long xenmem_pvh_start
    .balign 4

/* ---- 32-bit entry ------------------------------------------------------- */

    .section .text.xenmem_boot, "ax", @progbits
    .code32
    .globl xenmem_pvh_start
    .type xenmem_pvh_start, @function
xenmem_pvh_start:
    cli
    cld
    /* Keep the start_info address in %ebp until the call into Rust: cpuid
     * below overwrites %ebx, and nothing here writes %ebp. */
    mov %ebx, %ebp
    lgdt xenmem_gdt_ptr
    mov $XENMEM_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs

    /* Zero .bss: the stack and the page tables live there but are not in
     * use yet. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* Page directories: 4 x 512 entries of 2 MiB, entry i maps i * 2 MiB. */
    mov $xenmem_boot_pd, %edi
    xor %ecx, %ecx
.Lfill_pd:
    mov %ecx, %eax
    shl $21, %eax
    or $(PTE_P | PTE_RW | PTE_PS), %eax
    mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb .Lfill_pd

    /* PDPT: four entries, one per page directory. */
    mov $xenmem_boot_pdpt, %edi
    mov $xenmem_boot_pd, %eax
    or $(PTE_P | PTE_RW), %eax
    xor %ecx, %ecx
.Lfill_pdpt:
    mov %eax, (%edi,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb .Lfill_pdpt

    /* PML4: one entry. */
    mov $xenmem_boot_pml4, %edi
    mov $xenmem_boot_pdpt, %eax
    or $(PTE_P | PTE_RW), %eax
    mov %eax, (%edi)

    /* The 2 MiB region that holds the guard page, in 4 KiB pages. */
    mov $xenmem_boot_stack_guard, %edx
    and $0xffe00000, %edx           /* region base */
    mov $xenmem_boot_pt, %edi
    xor %ecx, %ecx
.Lfill_pt:
    mov %ecx, %eax
    shl $12, %eax
    add %edx, %eax
    or $(PTE_P | PTE_RW), %eax
    mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb .Lfill_pt
    mov $xenmem_boot_stack_guard, %eax
    shr $12, %eax
    and $511, %eax
    movl $0, (%edi,%eax,8)          /* the guard page: not present */
    mov $xenmem_boot_stack_guard, %eax
    shr $21, %eax                   /* its page-directory index */
    mov $xenmem_boot_pd, %edi
    mov $xenmem_boot_pt, %edx
    or $(PTE_P | PTE_RW), %edx
    mov %edx, (%edi,%eax,8)

    /* PAE, then long mode (and NX where the CPU has it), then paging. */
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $xenmem_boot_pml4, %eax
    mov %eax, %cr3

    mov $0x80000000, %eax
    cpuid
    mov $EFER_LME, %esi
    cmp $0x80000001, %eax
    jb .Lno_nx
    mov $0x80000001, %eax
    cpuid
    bt $20, %edx                    /* CPUID.80000001h:EDX.NX */
    jnc .Lno_nx
    or $EFER_NXE, %esi
.Lno_nx:
    mov $MSR_EFER, %ecx
    rdmsr
    or %esi, %eax
    wrmsr

    mov %cr0, %eax
    or $CR0_PG, %eax
    mov %eax, %cr0

    ljmp $XENMEM_CS64, $xenmem_pvh_start64
    .size xenmem_pvh_start, . - xenmem_pvh_start

/* ---- 64-bit entry ------------------------------------------------------- */

    .code64
    .type xenmem_pvh_start64, @function
xenmem_pvh_start64:
    mov $XENMEM_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $xenmem_boot_stack_top, %rsp
    mov %ebp, %edi                  /* zero-extends: start_info paddr */
    xor %ebp, %ebp                  /* end of the frame-pointer chain */
    call xenmem_x86_64_pvh_main
.Lentry_returned:
    cli
    hlt
    jmp .Lentry_returned
    .size xenmem_pvh_start64, . - xenmem_pvh_start64

/* ---- exception stubs ---------------------------------------------------- */
/*
 * Each stub leaves the same frame on the stack, lowest address first:
 *     vector, error code (0 if the CPU pushes none), rip, cs, rflags, rsp, ss
 * and calls xenmem_x86_64_exception(&frame), which never returns.
 */

    .section .text.xenmem_exceptions, "ax", @progbits

    .macro XENMEM_EXC_NOERR vec
    .balign 16
xenmem_exc_\vec:
    pushq $0
    pushq $\vec
    jmp xenmem_exc_common
    .endm

    .macro XENMEM_EXC_ERR vec
    .balign 16
xenmem_exc_\vec:
    pushq $\vec
    jmp xenmem_exc_common
    .endm

    .irp vec, 0, 1, 2, 3, 4, 5, 6, 7, 9, 15, 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31
    XENMEM_EXC_NOERR \vec
    .endr
    /* #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX push an error code. */
    .irp vec, 8, 10, 11, 12, 13, 14, 17, 21, 29, 30
    XENMEM_EXC_ERR \vec
    .endr

    .balign 16
    .type xenmem_exc_common, @function
xenmem_exc_common:
    cld
    mov %rsp, %rdi
    and $-16, %rsp
    call xenmem_x86_64_exception
.Lexc_returned:
    cli
    hlt
    jmp .Lexc_returned
    .size xenmem_exc_common, . - xenmem_exc_common

    /* The stubs' addresses, by vector, for the IDT. */
    .section .rodata.xenmem_exceptions, "a", @progbits
    .balign 8
    .globl xenmem_x86_64_exception_stubs
xenmem_x86_64_exception_stubs:
    .irp vec, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    .quad xenmem_exc_\vec
    .endr
    .size xenmem_x86_64_exception_stubs, . - xenmem_x86_64_exception_stubs

/* ---- GDT ---------------------------------------------------------------- */
/*
 * Writable: the boot code fills the TSS descriptor (slots 3 and 4) and ltr
 * sets its busy bit.
 */

    .section .data.xenmem_gdt, "aw", @progbits
    .balign 16
    .globl xenmem_gdt
xenmem_gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: flat data, DPL 0 */
    .quad 0                         /* 0x18: TSS, low half (filled by Rust) */
    .quad 0                         /* 0x20: TSS, high half */
xenmem_gdt_end:
    .size xenmem_gdt, xenmem_gdt_end - xenmem_gdt

    .balign 8
    .word 0                         /* pad: the base below is 8-aligned */
    .word 0
    .word 0
xenmem_gdt_ptr:
    .word xenmem_gdt_end - xenmem_gdt - 1
    .quad xenmem_gdt                /* lgdt in 32-bit mode reads the low half */

/* ---- boot page tables and stack (.bss) ---------------------------------- */

    .section .bss.xenmem_boot, "aw", @nobits
    .balign 4096
xenmem_boot_pml4:
    .skip 4096
xenmem_boot_pdpt:
    .skip 4096
xenmem_boot_pd:
    .skip 4 * 4096
xenmem_boot_pt:
    .skip 4096
    /* One unmapped page below the stack: an overflow faults instead of
     * overwriting .data. */
    .globl xenmem_boot_stack_guard
xenmem_boot_stack_guard:
    .skip 4096
    .globl xenmem_boot_stack_bottom
xenmem_boot_stack_bottom:
    .skip BOOT_STACK_SIZE
    .globl xenmem_boot_stack_top
xenmem_boot_stack_top:
