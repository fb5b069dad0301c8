//! x86_64: the instructions behind [`crate::paging`] (`invlpg`, `CR3`
//! reloads), the adoption of the boot page tables, and the on-target
//! self-test.
//!
//! The entry format is [`crate::paging::x86_64::X86_64`] (pure data, tested
//! on the host). The boot code (`boot/x86_64.S`) identity-maps the first
//! 4 GiB through `PML4[0]`; the agent's mapping window is the whole of
//! `PML4[4]`, [`WINDOW_START`] (2 TiB) to 2.5 TiB: above the identity map,
//! clear of [`UNMAPPED_PROBE`](super::UNMAPPED_PROBE) (1 TiB, `PML4[2]`,
//! which must stay unmapped), in the lower canonical half. The walker
//! creates the tables below `PML4[4]` on demand and frees them when they
//! empty.

use core::arch::asm;
use core::sync::atomic::{compiler_fence, Ordering};

use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SIZE};
use crate::paging::x86_64::{ADDR_MASK, X86_64};
use crate::paging::{
    level_shift, AdoptOnce, Attrs, Entry, Format, IdentityMemory, IdentitySpec, PageTable,
    PagingError, TableMemory, Tlb, Window,
};
use crate::region::RegionTable;

/// The first address of the mapping window: `PML4[4]`, 2 TiB.
pub const WINDOW_START: VirtAddr = VirtAddr(0x200_0000_0000);
/// The window's size: one PML4 entry's 512 GiB.
pub const WINDOW_SIZE: u64 = 1 << level_shift(3);

const WINDOW_SLOT: usize = (WINDOW_START.0 >> level_shift(3)) as usize;

const _: () = {
    assert!(WINDOW_START.0 % WINDOW_SIZE == 0);
    assert!(WINDOW_START.0 >= super::IDENTITY_MAP_END.0);
    assert!(
        super::UNMAPPED_PROBE.0 < WINDOW_START.0
            || super::UNMAPPED_PROBE.0 >= WINDOW_START.0 + WINDOW_SIZE
    );
    assert!(WINDOW_START.0 + WINDOW_SIZE <= <X86_64 as Format>::LOW_VA_END);
};

/// `CR0.WP`: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
/// `CR4.PAE`.
const CR4_PAE: u64 = 1 << 5;
/// `CR4.LA57`: 5-level paging.
const CR4_LA57: u64 = 1 << 12;
/// `IA32_EFER`.
const MSR_EFER: u32 = 0xc000_0080;
/// `EFER.LMA`: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// `EFER.NXE`: bit 63 of entries is XD (else it is reserved).
const EFER_NXE: u64 = 1 << 11;

/// TLB maintenance with `invlpg` and `CR3` reloads.
#[derive(Clone, Copy, Debug)]
pub struct X86Tlb;

impl Tlb for X86Tlb {
    fn invalidate_page(va: VirtAddr) {
        // SAFETY: `invlpg` only drops cached translations (TLB and
        // paging-structure caches) of `va`; it reads no memory. Not `nomem`:
        // the entry stores before it must not move after it.
        unsafe { asm!("invlpg [{}]", in(reg) va.0, options(nostack, preserves_flags)) };
    }

    fn invalidate_all() {
        // SAFETY: writing CR3 back unchanged keeps the address space and
        // drops every non-global translation (the agent has no global ones).
        unsafe {
            asm!(
                "mov {tmp}, cr3",
                "mov cr3, {tmp}",
                tmp = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    }

    fn publish_table() {
        // Stores are not reordered with other stores (x86-TSO) and the
        // walker's loads are coherent: only the compiler must keep the
        // zeroing before the entry.
        compiler_fence(Ordering::SeqCst);
    }

    // A 2 MiB page may become a table with the same translation in place
    // (SDM Vol. 3A, 4.10.4.2: the TLB may hold either until invalidated).
    const SPLIT_IN_PLACE: bool = true;

    fn switch_root(root: GuestPhysAddr) {
        // SAFETY: the caller hands a complete tree that translates the
        // running code, stack and data as the current one does; writing CR3
        // switches to it and drops every non-global translation (the agent
        // has no global ones). CR3's flag bits (PWT, PCD) are kept.
        unsafe {
            asm!(
                "mov {tmp}, cr3",
                "and {tmp}, {flags}",
                "or {tmp}, {root}",
                "mov cr3, {tmp}",
                tmp = out(reg) _,
                flags = in(reg) 0xfffu64,
                root = in(reg) root.0,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// The agent's page tables: the boot tables with the mapping window.
pub type AgentPageTable = PageTable<X86_64, IdentityMemory, X86Tlb>;

static TABLES: AdoptOnce<AgentPageTable> = AdoptOnce::new();

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_efer() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: IA32_EFER exists on every x86_64 CPU (long mode needs it);
    // reading it has no side effects.
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") MSR_EFER,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `MAXPHYADDR` from CPUID leaf 0x8000_0008 (36 if the CPU lacks the leaf).
fn max_phys_bits() -> u32 {
    let [max_ext, ..] = super::cpuid(0x8000_0000, 0);
    if max_ext >= 0x8000_0008 {
        super::cpuid(0x8000_0008, 0)[0] & 0xff
    } else {
        36
    }
}

/// Take over the boot page tables (the root in `CR3`) for the window.
///
/// Checks that the CPU runs 4-level paging with NX enabled and that
/// `PML4[4]` is empty; turns on `CR0.WP`, so that read-only mappings hold
/// for the agent itself.
fn adopt() -> Result<AgentPageTable, PagingError> {
    if read_cr4() & (CR4_PAE | CR4_LA57) != CR4_PAE || read_efer() & EFER_LMA == 0 {
        return Err(PagingError::Unsupported("not in 4-level long-mode paging"));
    }
    if read_efer() & EFER_NXE == 0 {
        return Err(PagingError::Unsupported(
            "EFER.NXE is off: no never-executable mappings",
        ));
    }
    // SAFETY: the boot code identity-maps [0, 4 GiB) (but for the boot
    // stack's guard page, which lies in the image and so is never a table or
    // a frame from the region table) as writable RAM-backed memory; the boot
    // tables live in the image, table frames come from the region table's
    // RAM, and nothing else uses either as anything but tables.
    let mem = unsafe { IdentityMemory::new(GuestPhysAddr(PAGE_SIZE), super::IDENTITY_MAP_END) };
    let root = GuestPhysAddr(read_cr3() & ADDR_MASK);
    let pml4 = mem.table(root).ok_or(PagingError::Unreachable(root))?;
    if X86_64::decode(pml4[WINDOW_SLOT].load(Ordering::Relaxed), 3) != Entry::Invalid {
        return Err(PagingError::Unsupported(
            "the window's PML4 entry is in use",
        ));
    }
    let window =
        Window::new(WINDOW_START, WINDOW_SIZE).ok_or(PagingError::Unsupported("window"))?;
    // SAFETY: `root` is the PML4 the MMU uses, which the boot code built in
    // this format; `mem` reaches its tables (they are in the image). Only
    // the page-table handle in `TABLES` (adopted once) changes
    // `PML4[WINDOW_SLOT]`, which is empty, so every table below it will come
    // from the region table that its users pass.
    let mut pt = unsafe { PageTable::new(root, window, mem) }?;
    pt.limit_phys_bits(max_phys_bits());
    let cr0 = read_cr0();
    if cr0 & CR0_WP == 0 {
        // SAFETY: setting CR0.WP only makes supervisor writes to read-only
        // pages fault; the boot map has none.
        unsafe {
            asm!("mov cr0, {}", in(reg) cr0 | CR0_WP, options(nostack, preserves_flags));
        }
    }
    Ok(pt)
}

/// The agent's page tables, adopted on the first call. Fails with
/// [`PagingError::Busy`] while another caller holds them.
pub fn page_tables() -> Result<spin::MutexGuard<'static, AgentPageTable>, PagingError> {
    TABLES.get(adopt)
}

/// Adopt the page tables (if not done yet) and test them: map RAM frames
/// from `table` into the window, write and read through both mappings,
/// unmap, check that translate finds nothing and that every table frame
/// went back to `table`. See [`crate::paging::selftest::run`].
pub fn self_test(table: &mut RegionTable) -> Result<(), PagingError> {
    let mut pt = page_tables()?;
    crate::paging::selftest::run(&mut pt, table)
}

/// The boot identity map (`boot/x86_64.S`): `[0, 4 GiB)` in 2 MiB pages of
/// `PTE_P | PTE_RW | PTE_PS`: read-write, write-back, NX clear.
pub const IDENTITY: IdentitySpec = IdentitySpec {
    end: super::IDENTITY_MAP_END,
    attrs: Attrs::READ_WRITE.executable(),
};
