//! CPU exceptions: an IDT for the 32 exception vectors, a TSS whose IST1
//! stack takes double faults (so that a boot-stack overflow into the guard
//! page is still reported), and the Rust side of the stubs in
//! `boot/x86_64.S`, which reports through [`crate::rt::exception`].
//!
//! Nothing here returns: every exception ends the run with a failure.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::Verdict;
use crate::rt::ExceptionReport;
use xenmem::addr::VirtAddr;

/// The 64-bit code selector `boot/x86_64.S` loads.
const KERNEL_CS: u16 = 0x08;
/// The TSS selector: GDT slots 3 and 4.
const TSS_SELECTOR: u16 = 0x18;
/// GDT slot of the TSS descriptor's low half.
const TSS_GDT_SLOT: usize = 3;
/// The IST slot (1-based, as the gate encodes it) for double faults.
const DF_IST: u8 = 1;
/// The double-fault vector.
const VECTOR_DF: usize = 8;
/// The page-fault vector.
const VECTOR_PF: u32 = 14;
/// The number of CPU exception vectors (and IDT entries).
const VECTORS: usize = 32;
/// Size of the double-fault stack.
const DF_STACK_SIZE: usize = 16 * 1024;

/// Each vector's mnemonic.
const NAMES: [&str; VECTORS] = [
    "#DE",
    "#DB",
    "NMI",
    "#BP",
    "#OF",
    "#BR",
    "#UD",
    "#NM",
    "#DF",
    "coprocessor segment overrun",
    "#TS",
    "#NP",
    "#SS",
    "#GP",
    "#PF",
    "reserved 15",
    "#MF",
    "#AC",
    "#MC",
    "#XM",
    "#VE",
    "#CP",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV",
    "#VC",
    "#SX",
    "reserved 31",
];

extern "C" {
    /// The stubs' addresses, by vector (`boot/x86_64.S`).
    static xenmem_x86_64_exception_stubs: [u64; VECTORS];
    /// The GDT (`boot/x86_64.S`): null, code, data, TSS low, TSS high.
    static mut xenmem_gdt: [u64; 5];
    /// The unmapped page below the boot stack (`boot/x86_64.S`).
    static xenmem_boot_stack_guard: u8;
}

/// Whether `addr` is in the boot stack's guard page.
fn in_stack_guard(addr: u64) -> bool {
    let guard = &raw const xenmem_boot_stack_guard as u64;
    (guard..guard + xenmem::addr::PAGE_SIZE).contains(&addr)
}

/// An IDT gate descriptor (16 bytes).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Gate([u64; 2]);

impl Gate {
    const MISSING: Gate = Gate([0, 0]);

    /// A present DPL-0 interrupt gate (IF cleared on entry) to `handler`.
    fn interrupt(handler: u64, ist: u8) -> Gate {
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (u64::from(ist & 7) << 32)
            | (0x8e << 40)
            | ((handler >> 16) & 0xffff) << 48;
        Gate([low, handler >> 32])
    }
}

/// The 64-bit task-state segment: only the IST pointers are used.
#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct Stack([u8; DF_STACK_SIZE]);

/// Memory written once, by [`init`], on the boot vCPU before anything else
/// runs, and afterwards only read (by the CPU).
struct BootCell<T>(UnsafeCell<T>);

// SAFETY: written only by `init`, which runs once on the single boot vCPU
// before anything else; afterwards only the CPU reads it.
unsafe impl<T> Sync for BootCell<T> {}

static IDT: BootCell<[Gate; VECTORS]> = BootCell(UnsafeCell::new([Gate::MISSING; VECTORS]));
static TSS: BootCell<Tss> = BootCell(UnsafeCell::new(Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    // No I/O permission bitmap (only matters outside ring 0).
    iomap_base: core::mem::size_of::<Tss>() as u16,
}));
static DF_STACK: BootCell<Stack> = BootCell(UnsafeCell::new(Stack([0; DF_STACK_SIZE])));

/// The operand of `lidt`.
#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Install the TSS (IST1 for double faults) and the IDT. Called once, first
/// thing, by the boot code.
pub(super) fn init() {
    let tss = TSS.0.get();
    let stack_top = DF_STACK.0.get() as u64 + DF_STACK_SIZE as u64;
    // SAFETY: `init` runs once before anything else could use the TSS.
    unsafe { (*tss).ist[usize::from(DF_IST) - 1] = stack_top };

    let base = tss as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let gdt = &raw mut xenmem_gdt;
    // SAFETY: the GDT's TSS slots are unused until the `ltr` below, and this
    // is the only writer; `ltr` reads the descriptor just written.
    unsafe {
        (*gdt)[TSS_GDT_SLOT] = low;
        (*gdt)[TSS_GDT_SLOT + 1] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));
    }

    // SAFETY: the stub table is initialised, read-only data.
    let stubs = unsafe { &xenmem_x86_64_exception_stubs };
    let idt = IDT.0.get();
    for (vector, &stub) in stubs.iter().enumerate() {
        let ist = if vector == VECTOR_DF { DF_IST } else { 0 };
        // SAFETY: `init` is the only writer and runs before `lidt` below.
        unsafe { (*idt)[vector] = Gate::interrupt(stub, ist) };
    }
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; VECTORS]>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is complete, lives forever and points at stubs that
    // follow the frame layout `xenmem_x86_64_exception` expects.
    unsafe { asm!("lidt [{0}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
struct Frame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Set while an exception is being reported: a second one gives up at once.
static REPORTING: AtomicBool = AtomicBool::new(false);

fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {0}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    cr2
}

/// Called by the stubs in `boot/x86_64.S` with their frame; never returns.
#[unsafe(no_mangle)]
extern "C" fn xenmem_x86_64_exception(frame: &Frame) -> ! {
    let cr2 = read_cr2();
    if REPORTING.swap(true, Ordering::Relaxed) {
        // Faulted while reporting a fault: don't loop.
        super::exit_host(Verdict::Fail);
    }
    let number = frame.vector as u32;
    if number as usize == VECTOR_DF && in_stack_guard(cr2) {
        // The CPU cannot push a #PF frame on an overflowed stack and raises
        // #DF instead (its frame's pc is then unreliable): say why.
        xm_error!(
            "boot stack overflow: CR2={=u64:#x} is in the guard page below the stack",
            cr2
        );
    }
    let report = ExceptionReport {
        vector: NAMES.get(number as usize).copied().unwrap_or("?"),
        number,
        syndrome: frame.error_code,
        pc: VirtAddr(frame.rip),
        fault_addr: (number == VECTOR_PF).then_some(VirtAddr(cr2)),
    };
    crate::rt::exception(&report)
}
