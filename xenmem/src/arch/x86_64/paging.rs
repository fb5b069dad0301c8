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

use core::sync::atomic::{compiler_fence, Ordering};

use x86_64::instructions::tlb;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::PhysFrame;

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

/// TLB maintenance with `invlpg` and `CR3` reloads.
#[derive(Clone, Copy, Debug)]
pub struct X86Tlb;

// SAFETY: `invlpg` and CR3 reloads take effect when they return.
unsafe impl Tlb for X86Tlb {
    fn invalidate_page(va: VirtAddr) {
        // `invlpg` (its `asm!` is not `nomem`: the entry stores before it
        // stay before it). Window addresses are canonical; anything else is
        // not cached, but a full flush costs only time.
        match x86_64::VirtAddr::try_new(va.0) {
            Ok(va) => tlb::flush(va),
            Err(_) => tlb::flush_all(),
        }
    }

    fn invalidate_all() {
        // CR3 written back unchanged: drops every non-global translation
        // (the agent has no global ones).
        tlb::flush_all();
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

    unsafe fn switch_root(root: GuestPhysAddr) {
        let frame = x86_64::PhysAddr::try_new(root.0)
            .ok()
            .and_then(|a| PhysFrame::from_start_address(a).ok());
        let Some(frame) = frame else {
            // Not a frame: the walker never hands one; keep the tree.
            return;
        };
        let (_, flags) = Cr3::read();
        // SAFETY: the caller hands a complete tree that translates the
        // running code, stack and data as the current one does; writing CR3
        // switches to it and drops every non-global translation (the agent
        // has no global ones). CR3's flags (PWT, PCD) are kept.
        unsafe { Cr3::write(frame, flags) };
    }
}

/// The agent's page tables: the boot tables with the mapping window.
pub type AgentPageTable = PageTable<X86_64, IdentityMemory, X86Tlb>;

static TABLES: AdoptOnce<AgentPageTable> = AdoptOnce::new();

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
    let cr4 = Cr4::read();
    let efer = Efer::read();
    if !cr4.contains(Cr4Flags::PHYSICAL_ADDRESS_EXTENSION)
        || cr4.contains(Cr4Flags::L5_PAGING)
        || !efer.contains(EferFlags::LONG_MODE_ACTIVE)
    {
        return Err(PagingError::Unsupported("not in 4-level long-mode paging"));
    }
    if !efer.contains(EferFlags::NO_EXECUTE_ENABLE) {
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
    let root = GuestPhysAddr(Cr3::read_raw().0.start_address().as_u64() & ADDR_MASK);
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
    if !Cr0::read().contains(Cr0Flags::WRITE_PROTECT) {
        // SAFETY: setting CR0.WP only makes supervisor writes to read-only
        // pages fault; the boot map has none.
        unsafe { Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT)) };
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
