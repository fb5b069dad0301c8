//! aarch64: the instructions behind [`crate::paging`] (`tlbi` with its
//! barriers), the adoption of the boot page tables, and the on-target
//! self-test.
//!
//! The entry format is [`crate::paging::aarch64::Stage1Va39`] (pure data,
//! tested on the host). The boot map (see `mmu`) covers the whole 39-bit
//! `TTBR0_EL1` space, 0–512 GiB, so there is no unmapped room for a window;
//! adoption carves one out of the top: the level-1 entry of
//! `511 GiB .. 512 GiB` ([`WINDOW_START`], `L1[511]`), a 1 GiB Normal block
//! of the identity map, is made invalid (break, then `tlbi vmalle1is`), and
//! the walker builds a level-2 table there on the first mapping. That GiB is
//! not RAM on these machines: QEMU `virt` puts RAM at 1 GiB and its
//! high MMIO at 256 GiB and from 512 GiB; a dom0less domU's RAM banks are at
//! 1 GiB (3 GiB) and 8 GiB (populated only as far as the domain's memory
//! goes, so 511 GiB would need more than 500 GiB of guest RAM);
//! [`crate::paging::selftest::run`] checks the region table to make sure.
//! Other choices were worse: a window inside the first 1 GiB would take
//! device space; switching to 48-bit or `TTBR1_EL1` means changing `TCR_EL1`
//! behind the boot code's back.
//!
//! After adoption the identity map ends at 511 GiB ([`IDENTITY`]).
//!
//! At start-up it is trimmed to the region table's memory
//! ([`crate::paging::trim_identity`]: the first GiB's device blocks and
//! every GiB without RAM go), and ballooned frames are taken out of it
//! through [`crate::paging::BootIdentityMap`]. The 1 GiB blocks the boot map
//! uses for RAM are split into 2 MiB blocks (and those into pages) in copies
//! of the tree, switched to by [`Aarch64Tlb`]'s `switch_root` with the MMU
//! off for a few instructions, because the Cortex-A57 has no FEAT_BBM and
//! the block being split is the one the agent runs in.

use core::arch::asm;
use core::sync::atomic::Ordering;

use aarch64_cpu::registers::{Readable, SCTLR_EL1, TCR_EL1, TTBR0_EL1};

use crate::addr::{GuestPhysAddr, VirtAddr};
use crate::paging::aarch64::{Stage1Va39, ADDR_MASK};
use crate::paging::{
    level_shift, AdoptOnce, Attrs, Entry, Format, IdentityMemory, IdentitySpec, PageTable,
    PagingError, TableMemory, Tlb, Window,
};
use crate::region::RegionTable;

/// The first address of the mapping window: 511 GiB, `L1[511]`.
pub const WINDOW_START: VirtAddr = VirtAddr(511 << 30);
/// The window's size: one level-1 entry's 1 GiB.
pub const WINDOW_SIZE: u64 = 1 << level_shift(2);
/// Where the identity map ends once the window is carved out of it.
pub const IDENTITY_END_AFTER_ADOPTION: GuestPhysAddr = GuestPhysAddr(WINDOW_START.0);
/// Where RAM starts on the machines the agent runs on (QEMU `virt`, Xen's
/// guest layout); below it the boot map is Device memory, never a table.
const RAM_START: GuestPhysAddr = GuestPhysAddr(1 << 30);

const WINDOW_SLOT: usize = (WINDOW_START.0 >> level_shift(2)) as usize % 512;
/// The walker's level of the root table (Arm's level 1).
const ROOT_LEVEL: usize = <Stage1Va39 as Format>::LEVELS - 1;

const _: () = {
    assert!(WINDOW_START.0 + WINDOW_SIZE == <Stage1Va39 as Format>::LOW_VA_END);
    assert!(WINDOW_START.0 + WINDOW_SIZE == super::IDENTITY_MAP_END.0);
    assert!(super::UNMAPPED_PROBE.0 >= WINDOW_START.0 + WINDOW_SIZE);
    assert!(ROOT_LEVEL == 2);
};

/// TLB maintenance with `tlbi` and the barriers around it.
#[derive(Clone, Copy, Debug)]
pub struct Aarch64Tlb;

// SAFETY: each invalidation is complete (dsb ish; isb) when it returns.
unsafe impl Tlb for Aarch64Tlb {
    fn invalidate_page(va: VirtAddr) {
        // TLBI VAAE1IS takes VA[55:12] in bits 43:0, any ASID, and drops
        // cached entries of every level of the walk.
        let arg = (va.0 >> 12) & ((1 << 44) - 1);
        // SAFETY: barriers and TLB invalidation only; the entry stores before
        // them complete first (dsb ishst), and the invalidation is complete
        // (dsb ish) and seen by later instructions (isb) when this returns.
        // Not `nomem`: the compiler must not move entry stores across it.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vaae1is, {}",
                "dsb ish",
                "isb",
                in(reg) arg,
                options(nostack, preserves_flags),
            );
        }
    }

    fn invalidate_all() {
        // SAFETY: as above, for every stage-1 EL1&0 entry of this VMID.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags),
            );
        }
    }

    fn publish_table() {
        // SAFETY: a barrier only: the zeroing stores complete before the
        // store of the entry that points at the table.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    }

    fn publish_mapping(_start: VirtAddr, _pages: u64) {
        // Invalid entries are never held in a TLB (Arm ARM, TLB maintenance
        // requirements: an entry that generates a Translation fault is not
        // cached), so entries that were invalid need no TLBI: the
        // stores complete for the walker (dsb ishst, as Linux's
        // `set_pte` of a valid kernel entry) and later instructions see
        // them (isb).
        // SAFETY: barriers only. Not `nomem`: the entry stores stay before.
        unsafe { asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
    }

    // A block may become a table only with break-before-make (Arm ARM
    // D8.16.1) unless FEAT_BBM level 2; the Cortex-A57 has no FEAT_BBM.
    const SPLIT_IN_PLACE: bool = false;

    unsafe fn switch_root(root: GuestPhysAddr) {
        // The MMU is off (and interrupts masked) while TTBR0_EL1 changes:
        // the TLB is invalidated with no translation in use, so entries of
        // the old tree (a 1 GiB block) and of the new (2 MiB blocks, pages)
        // are never cached together, which could raise a TLB conflict
        // abort. Between the two SCTLR_EL1 writes the code runs from its
        // physical addresses, which the identity map makes its virtual
        // ones, and touches no memory (data accesses would be Device,
        // missing the cache).
        // SAFETY: the caller hands a complete, published tree that maps the
        // running code, stack and data as the current one does, so every
        // access after the switch translates as before. ASID and CnP bits of
        // TTBR0_EL1 are kept.
        unsafe {
            asm!(
                "mrs {daif}, daif",
                "msr daifset, #0xf",
                "dsb ish",
                "mrs {sctlr}, sctlr_el1",
                "bic {tmp}, {sctlr}, #1",
                "msr sctlr_el1, {tmp}",
                "isb",
                "tlbi vmalle1is",
                "dsb ish",
                "mrs {tmp}, ttbr0_el1",
                "and {tmp}, {tmp}, {keep}",
                "orr {tmp}, {tmp}, {root}",
                "msr ttbr0_el1, {tmp}",
                "isb",
                "msr sctlr_el1, {sctlr}",
                "isb",
                "msr daif, {daif}",
                daif = out(reg) _,
                sctlr = out(reg) _,
                tmp = out(reg) _,
                keep = in(reg) !ADDR_MASK,
                root = in(reg) root.0 & ADDR_MASK,
                options(nostack),
            );
        }
    }
}

/// The boot identity map (`mmu`) once the window is carved out: Normal
/// write-back, read-write, executable at EL1 (`NORMAL_BLOCK`), up to 511 GiB.
pub const IDENTITY: IdentitySpec = IdentitySpec {
    end: IDENTITY_END_AFTER_ADOPTION,
    attrs: Attrs::READ_WRITE.executable(),
};

/// The agent's page tables: the boot tables with the mapping window.
pub type AgentPageTable = PageTable<Stage1Va39, IdentityMemory, Aarch64Tlb>;

static TABLES: AdoptOnce<AgentPageTable> = AdoptOnce::new();

/// Physical-address bits from `TCR_EL1.IPS`.
fn ips_bits() -> u32 {
    match TCR_EL1.read(TCR_EL1::IPS) {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// Take over the boot page tables (the root in `TTBR0_EL1`) and carve the
/// window out of them.
///
/// Checks that the MMU runs the boot map's configuration (MMU on, 4 KiB
/// granule, `T0SZ = 25`, TTBR0 walks enabled) and that `L1[511]` is a
/// block or invalid, not a table someone else built.
fn adopt() -> Result<AgentPageTable, PagingError> {
    if !SCTLR_EL1.matches_all(SCTLR_EL1::M::Enable) {
        return Err(PagingError::Unsupported("the MMU is off"));
    }
    if TCR_EL1.read(TCR_EL1::T0SZ) != u64::from(64 - <Stage1Va39 as Format>::VA_BITS)
        || !TCR_EL1.matches_all(TCR_EL1::TG0::KiB_4 + TCR_EL1::EPD0::EnableTTBR0Walks)
    {
        return Err(PagingError::Unsupported(
            "TCR_EL1 is not 39-bit, 4 KiB granule, TTBR0 walks on",
        ));
    }
    // SAFETY: the boot map identity-maps [1 GiB, 511 GiB) (the window's GiB
    // excluded) as writable Normal memory; the boot tables live in the image
    // (RAM, above 1 GiB), table frames come from the region table's RAM, and
    // nothing else uses either as anything but tables.
    let mem = unsafe { IdentityMemory::new(RAM_START, IDENTITY_END_AFTER_ADOPTION) };
    let root = GuestPhysAddr(TTBR0_EL1.get_baddr() & ADDR_MASK);
    let l1 = mem.table(root).ok_or(PagingError::Unreachable(root))?;
    let slot = &l1[WINDOW_SLOT];
    match Stage1Va39::decode(slot.load(Ordering::Relaxed), ROOT_LEVEL) {
        Entry::Table { .. } => {
            return Err(PagingError::Unsupported(
                "the window's level-1 entry is a table already",
            ))
        }
        Entry::Invalid => {}
        Entry::Leaf { .. } | Entry::Unsupported => {
            // Break the identity block (before anything can be made there)
            // and drop every cached piece of it: a TLB may hold a 1 GiB
            // block as smaller entries.
            slot.store(0, Ordering::Relaxed);
            Aarch64Tlb::invalidate_all();
        }
    }
    let window =
        Window::new(WINDOW_START, WINDOW_SIZE).ok_or(PagingError::Unsupported("window"))?;
    // SAFETY: `root` is the level-1 table the MMU uses, which the boot code
    // built in this format; `mem` reaches it (it is in the image). Only the
    // page-table handle in `TABLES` (adopted once) changes `L1[511]`, now
    // invalid, so every table below it will come from the region table that
    // its users pass.
    let mut pt = unsafe { PageTable::new(root, window, mem) }?;
    pt.limit_phys_bits(ips_bits());
    Ok(pt)
}

/// The agent's page tables, adopted on the first call (which removes the
/// identity map's last GiB). Fails with [`PagingError::Busy`] while another
/// caller holds them.
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
