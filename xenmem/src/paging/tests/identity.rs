//! Host tests of `identity`: the x86_64 boot map (2 MiB pages, changed in
//! place) and the aarch64 one (1 GiB blocks, split in copies and switched
//! to), with a property test of both against a model.

use super::*;
use std::collections::BTreeMap;

use crate::region::{Region, RegionFlags, RegionKind, RegionTable, ReservedUse};

// ---- the x86_64 identity map ------------------------------------------------

/// The fake frames plus the set of ballooned frames (by number).
struct Ballooned<'a> {
    frames: &'a mut FakeFrames,
    gfns: BTreeSet<u64>,
}

// SAFETY: forwards to the region table's frames (free RAM of the test).
unsafe impl FrameSource for Ballooned<'_> {
    fn alloc_frame(&mut self) -> Result<GuestPhysAddr, PagingError> {
        self.frames.alloc_frame()
    }
    fn free_frame(&mut self, frame: GuestPhysAddr) {
        self.frames.free_frame(frame)
    }
}

impl IdentityFrames for Ballooned<'_> {
    fn unbacked(&self, range: FrameRange) -> bool {
        self.all_ballooned(range)
    }
    fn all_ballooned(&self, range: FrameRange) -> bool {
        (range.start().0..range.end().0).all(|g| self.gfns.contains(&g))
    }
    fn is_table_frame(&self, frame: GuestPhysAddr) -> bool {
        self.frames.live.contains(&frame.0)
    }
}

/// The boot code's 2 MiB page entry for block `i` (`PTE_P | PTE_RW | PTE_PS`).
fn boot_pde(i: u64) -> u64 {
    (i << 21) | x86::PRESENT | x86::WRITABLE | x86::HUGE
}

const IDENT: IdentitySpec = IdentitySpec {
    end: GuestPhysAddr(1 << 30),
    attrs: Attrs::READ_WRITE.executable(),
};

/// An x86_64 tree with the boot code's identity map of the first GiB (one
/// page directory of 2 MiB pages), `pool` spare table frames.
fn identity_setup(pool: usize) -> (Pt<X86_64>, FakeFrames, GuestPhysAddr) {
    let window = Window::new(VirtAddr(0x200_0000_0000), 1 << 39).unwrap();
    let (pt, mut frames) = setup::<X86_64>(window, pool + 2);
    let pdpt = frames.alloc_frame().unwrap();
    let pd = frames.alloc_frame().unwrap();
    let mem = pt.memory();
    for (i, e) in mem.table(pd).unwrap().iter().enumerate() {
        e.store(boot_pde(i as u64), Ordering::Relaxed);
    }
    for e in mem.table(pdpt).unwrap() {
        e.store(0, Ordering::Relaxed);
    }
    mem.table(pdpt).unwrap()[0].store(X86_64::table(pd), Ordering::Relaxed);
    mem.table(pt.root()).unwrap()[0].store(X86_64::table(pdpt), Ordering::Relaxed);
    take_events();
    (pt, frames, pd)
}

fn pde(pt: &Pt<X86_64>, pd: GuestPhysAddr, i: usize) -> u64 {
    pt.memory().table(pd).unwrap()[i].load(Ordering::Relaxed)
}

fn frames_of(start: u64, end: u64) -> FrameRange {
    FrameRange::from_addrs(GuestPhysAddr(start), GuestPhysAddr(end)).unwrap()
}

fn gfns(r: FrameRange) -> BTreeSet<u64> {
    (r.start().0..r.end().0).collect()
}

fn snapshot(pt: &Pt<X86_64>, tables: &[GuestPhysAddr]) -> Vec<u64> {
    tables
        .iter()
        .flat_map(|&t| pt.memory().table(t).unwrap().iter())
        .map(|e| e.load(Ordering::Relaxed))
        .collect()
}

#[test]
fn identity_a_whole_block_is_cleared_and_restored_as_a_2mib_page() {
    let (mut pt, mut frames, pd) = identity_setup(4);
    let r = frames_of(0x40_0000, 0x80_0000); // blocks 2 and 3
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    pt.unmap_identity(r, IDENT, &mut b).unwrap();
    assert_eq!(take_events(), vec![Event::InvalidateAll]);
    assert_eq!(
        (
            pde(&pt, pd, 1),
            pde(&pt, pd, 2),
            pde(&pt, pd, 3),
            pde(&pt, pd, 4)
        ),
        (boot_pde(1), 0, 0, boot_pde(4))
    );
    for pa in (0x3f_f000..0x81_0000).step_by(PAGE_SIZE as usize) {
        assert_eq!(
            mapped_as(&pt, pa, IDENT),
            !(0x40_0000..0x80_0000).contains(&pa)
        );
    }
    pt.map_identity(r, IDENT, &mut b).unwrap();
    assert_eq!(take_events(), vec![Event::InvalidateAll]);
    for i in 0..ENTRIES {
        assert_eq!(pde(&pt, pd, i), boot_pde(i as u64), "entry {i}");
    }
    assert_eq!(b.frames.live.len(), 2, "no table taken");
}

#[test]
fn identity_partial_blocks_are_split_into_4k_pages() {
    let (mut pt, mut frames, pd) = identity_setup(4);
    // The last two pages of block 2, all of block 3, the first page of 4.
    let r = frames_of(0x5f_e000, 0x80_1000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    pt.unmap_identity(r, IDENT, &mut b).unwrap();
    let ev = take_events();
    assert_eq!(
        ev.iter().filter(|e| matches!(e, Event::Alloc(_))).count(),
        2
    );
    assert_eq!(ev.last(), Some(&Event::InvalidateAll));
    assert_eq!(pde(&pt, pd, 3), 0);
    for i in [2usize, 4] {
        let Entry::Table { next, .. } = X86_64::decode(pde(&pt, pd, i), 1) else {
            panic!("block {i} not split: {:#x}", pde(&pt, pd, i));
        };
        // The split keeps every other page as the boot code mapped it.
        for (j, e) in pt.memory().table(next).unwrap().iter().enumerate() {
            let pa = (i as u64) << 21 | (j as u64) << 12;
            let want = if r.contains(Gfn(pa >> 12)) {
                0
            } else {
                X86_64::page(GuestPhysAddr(pa), IDENT.attrs)
            };
            assert_eq!(e.load(Ordering::Relaxed), want, "{pa:#x}");
        }
    }
    for pa in (0x40_0000..0xa0_0000).step_by(PAGE_SIZE as usize) {
        assert_eq!(
            mapped_as(&pt, pa, IDENT),
            !r.contains(Gfn(pa >> 12)),
            "{pa:#x}"
        );
    }
    // Back, in two calls (a partial map of an empty block gets a table).
    let first = frames_of(0x5f_e000, 0x60_1000);
    let rest = frames_of(0x60_1000, 0x80_1000);
    pt.map_identity(first, IDENT, &mut b).unwrap();
    assert_eq!(
        take_events()
            .iter()
            .filter(|e| matches!(e, Event::Alloc(_)))
            .count(),
        1
    );
    for pa in (0x5f_0000..0x60_1000).step_by(PAGE_SIZE as usize) {
        assert!(mapped_as(&pt, pa, IDENT), "{pa:#x}");
    }
    assert!(!mapped_as(&pt, 0x60_1000, IDENT));
    pt.map_identity(rest, IDENT, &mut b).unwrap();
    for pa in (0x40_0000..0xa0_0000).step_by(PAGE_SIZE as usize) {
        assert!(mapped_as(&pt, pa, IDENT), "{pa:#x}");
    }
}

#[test]
fn identity_refuses_frames_that_are_not_ballooned_and_changes_nothing() {
    let (mut pt, mut frames, pd) = identity_setup(4);
    let before = snapshot(&pt, &[pd]);
    let r = frames_of(0x40_0000, 0x60_1000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(frames_of(0x40_0000, 0x60_0000)),
    };
    assert_eq!(
        pt.unmap_identity(r, IDENT, &mut b),
        Err(PagingError::Backed(GuestPhysAddr(0x40_0000)))
    );
    assert_eq!(
        pt.map_identity(r, IDENT, &mut b),
        Err(PagingError::NotBallooned(GuestPhysAddr(0x40_0000)))
    );
    assert_eq!(snapshot(&pt, &[pd]), before);
    assert!(take_events().is_empty());
}

#[test]
fn identity_out_of_table_frames_changes_nothing() {
    let (mut pt, mut frames, pd) = identity_setup(1);
    let before = snapshot(&pt, &[pd]);
    // Two partial blocks need two tables; there is one.
    let r = frames_of(0x5f_f000, 0x60_1000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    assert_eq!(
        pt.unmap_identity(r, IDENT, &mut b),
        Err(PagingError::OutOfFrames)
    );
    assert_eq!(snapshot(&pt, &[pd]), before);
    assert_eq!(b.frames.live.len(), 2, "the table taken is given back");
}

#[test]
fn identity_leaves_addresses_above_its_end_alone() {
    let (mut pt, mut frames, pd) = identity_setup(4);
    let before = snapshot(&pt, &[pd]);
    let r = frames_of(1 << 30, (1 << 30) + 0x40_0000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    pt.unmap_identity(r, IDENT, &mut b).unwrap();
    pt.map_identity(r, IDENT, &mut b).unwrap();
    assert_eq!(snapshot(&pt, &[pd]), before);
    assert!(take_events().is_empty());
}

// ---- the aarch64 identity map -----------------------------------------------

const GIB: u64 = 1 << 30;

/// The boot map's RAM: Normal write-back, read-write, executable at EL1.
const ARM_IDENT: IdentitySpec = IdentitySpec {
    end: GuestPhysAddr(511 * GIB),
    attrs: Attrs::READ_WRITE.executable(),
};

type ArmPt = Pt<Stage1Va39, BbmTlb>;

/// A tree like `arch::aarch64::mmu`'s boot map after adoption: `L1[0]` a
/// table of Device 2 MiB blocks, `L1[1..511]` 1 GiB Normal blocks, `L1[511]`
/// the (empty) window. Neither the root nor the first GiB's table came from
/// the frame source (the boot code's are in the image). Returns the first
/// GiB's table too.
fn arm_setup(pool: usize) -> (ArmPt, FakeFrames, GuestPhysAddr) {
    let window = Window::new(VirtAddr(511 * GIB), GIB).unwrap();
    let (pt, mut frames) = setup_with::<Stage1Va39, BbmTlb>(window, pool + 1);
    let low = frames.alloc_frame().unwrap();
    frames.live.remove(&low.0);
    let mem = pt.memory();
    for (i, e) in mem.table(low).unwrap().iter().enumerate() {
        let b = Stage1Va39::block(
            GuestPhysAddr((i as u64) << 21),
            Attrs::READ_WRITE.device(),
            1,
        );
        e.store(b.unwrap(), Ordering::Relaxed);
    }
    let root = mem.table(pt.root()).unwrap();
    root[0].store(Stage1Va39::table(low), Ordering::Relaxed);
    for (i, e) in root.iter().enumerate().take(511).skip(1) {
        let b = Stage1Va39::block(GuestPhysAddr(i as u64 * GIB), ARM_IDENT.attrs, 2);
        e.store(b.unwrap(), Ordering::Relaxed);
    }
    take_events();
    (pt, frames, low)
}

/// Whether `pa` is identity-mapped with the boot attributes (and not mapped
/// in any other way).
fn mapped_as<F: Format, T: Tlb>(pt: &Pt<F, T>, pa: u64, spec: IdentitySpec) -> bool {
    match pt.translate(VirtAddr(pa)) {
        Some((to, attrs)) => {
            assert_eq!((to.0, attrs), (pa, spec.attrs), "{pa:#x}");
            true
        }
        None => false,
    }
}

/// Every table reachable from the root (level 1 and 0 ones included), with
/// its entries.
fn tables<F: Format, T: Tlb>(pt: &Pt<F, T>) -> BTreeMap<u64, Vec<u64>> {
    fn visit<F: Format, T: Tlb>(
        pt: &Pt<F, T>,
        t: GuestPhysAddr,
        level: usize,
        out: &mut BTreeMap<u64, Vec<u64>>,
    ) {
        let entries: Vec<u64> = pt
            .memory()
            .table(t)
            .unwrap()
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .collect();
        for &e in &entries {
            if let Entry::Table { next, .. } = F::decode(e, level) {
                visit(pt, next, level - 1, out);
            }
        }
        out.insert(t.0, entries);
    }
    let mut out = BTreeMap::new();
    visit(pt, pt.root(), F::LEVELS - 1, &mut out);
    out
}

/// Break-before-make: no valid entry of a table the MMU could use before
/// (`before`) was changed except to invalid.
fn assert_no_live_make<F: Format, T: Tlb>(before: &BTreeMap<u64, Vec<u64>>, pt: &Pt<F, T>) {
    for (&t, entries) in before {
        let now = pt.memory().table(GuestPhysAddr(t)).unwrap();
        for (i, (&was, e)) in entries.iter().zip(now.iter()).enumerate() {
            let is = e.load(Ordering::Relaxed);
            assert!(
                was & a64::VALID == 0 || is == was || is == 0,
                "table {t:#x}[{i}]: live {was:#x} became {is:#x}"
            );
        }
    }
}

fn count(ev: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    ev.iter().filter(|e| f(e)).count()
}

#[test]
fn arm_whole_blocks_split_the_gib_in_a_copy_and_switch_to_it() {
    let (mut pt, mut frames, _) = arm_setup(8);
    let old_root = pt.root();
    let before = tables(&pt);
    let r = frames_of(GIB + 0x40_0000, GIB + 0x80_0000); // blocks 2 and 3 of GiB 1
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    pt.unmap_identity(r, ARM_IDENT, &mut b).unwrap();
    let ev = take_events();
    // The GiB's table and the root's copy; then the switch, and no free
    // (the boot root is not the source's).
    assert_eq!(count(&ev, |e| matches!(e, Event::Alloc(_))), 2);
    assert_eq!(ev.last(), Some(&Event::SwitchRoot(pt.root().0)));
    assert_ne!(pt.root(), old_root);
    assert_eq!(count(&ev, |e| matches!(e, Event::Free(_))), 0);
    assert_no_live_make(&before, &pt);
    assert_eq!(tables(&pt).len(), 3, "root copy, first GiB, GiB 1 split");
    for pa in (GIB + 0x3f_f000..GIB + 0x81_0000).step_by(PAGE_SIZE as usize) {
        assert_eq!(mapped_as(&pt, pa, ARM_IDENT), !r.contains(Gfn(pa >> 12)));
    }
    assert!(mapped_as(&pt, GIB, ARM_IDENT) && mapped_as(&pt, 2 * GIB - PAGE_SIZE, ARM_IDENT));
    assert!(mapped_as(&pt, 2 * GIB, ARM_IDENT) && mapped_as(&pt, 510 * GIB, ARM_IDENT));
    // Back: the blocks are made in place (no split, no switch).
    let before = tables(&pt);
    let root = pt.root();
    pt.map_identity(r, ARM_IDENT, &mut b).unwrap();
    assert_eq!(take_events(), vec![Event::InvalidateAll]);
    assert_eq!(pt.root(), root);
    assert_no_live_make(&before, &pt);
    for pa in (GIB + 0x3f_f000..GIB + 0x81_0000).step_by(PAGE_SIZE as usize) {
        assert!(mapped_as(&pt, pa, ARM_IDENT), "{pa:#x}");
    }
}

#[test]
fn arm_partial_blocks_are_split_in_copies_and_the_replaced_tables_freed() {
    let (mut pt, mut frames, _) = arm_setup(16);
    let whole = frames_of(GIB + 0x40_0000, GIB + 0x60_0000);
    let part = frames_of(GIB + 0xa0_0000, GIB + 0xa0_3000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(whole).union(&gfns(part)).copied().collect(),
    };
    pt.unmap_identity(whole, ARM_IDENT, &mut b).unwrap();
    take_events();
    let root_copy = pt.root();
    let gib_table = table_at(&pt, VirtAddr(GIB), 1);
    let before = tables(&pt);
    pt.unmap_identity(part, ARM_IDENT, &mut b).unwrap();
    let ev = take_events();
    // A page table for block 5, copies of GiB 1's table and of the root;
    // the switch; then the two replaced tables (both the source's) freed.
    assert_eq!(count(&ev, |e| matches!(e, Event::Alloc(_))), 3);
    let switch = ev
        .iter()
        .position(|e| *e == Event::SwitchRoot(pt.root().0))
        .expect("switched");
    let mut freed: Vec<_> = ev[switch..]
        .iter()
        .filter_map(|e| match e {
            Event::Free(f) => Some(*f),
            _ => None,
        })
        .collect();
    freed.sort();
    let mut want = vec![root_copy.0, gib_table.0];
    want.sort();
    assert_eq!(freed, want);
    assert_no_live_make(&before, &pt);
    for pa in (GIB + 0x3f_f000..GIB + 0xc0_1000).step_by(PAGE_SIZE as usize) {
        let gone = whole.contains(Gfn(pa >> 12)) || part.contains(Gfn(pa >> 12));
        assert_eq!(mapped_as(&pt, pa, ARM_IDENT), !gone, "{pa:#x}");
    }
    // Back in place: the page table's entries are made again.
    pt.map_identity(part, ARM_IDENT, &mut b).unwrap();
    assert_eq!(take_events(), vec![Event::InvalidateAll]);
    for pa in (GIB + 0xa0_0000..GIB + 0xa1_0000).step_by(PAGE_SIZE as usize) {
        assert!(mapped_as(&pt, pa, ARM_IDENT), "{pa:#x}");
    }
}

#[test]
fn arm_the_mapping_window_survives_a_switch() {
    let (mut pt, mut frames, _) = arm_setup(8);
    let va = VirtAddr(511 * GIB + 0x1234_5000);
    pt.map_4k(
        va,
        GuestPhysAddr(GIB + 0x10_0000),
        Attrs::READ_ONLY,
        &mut frames,
    )
    .unwrap()
    .flush();
    let r = frames_of(2 * GIB + 0x20_0000, 2 * GIB + 0x20_1000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    pt.unmap_identity(r, ARM_IDENT, &mut b).unwrap();
    assert!(take_events().contains(&Event::SwitchRoot(pt.root().0)));
    assert_eq!(
        pt.translate(va),
        Some((GuestPhysAddr(GIB + 0x10_0000), Attrs::READ_ONLY))
    );
    let live = b.frames.live.len();
    pt.unmap_4k(va, b.frames).unwrap().1.flush();
    assert_eq!(pt.translate(va), None);
    assert_eq!(b.frames.live.len(), live - 2, "the window's tables freed");
}

#[test]
fn arm_a_whole_gib_is_cleared_in_place_and_restored_in_2mib_blocks() {
    let (mut pt, mut frames, _) = arm_setup(4);
    let r = frames_of(2 * GIB, 3 * GIB);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    let root = pt.root();
    pt.unmap_identity(r, ARM_IDENT, &mut b).unwrap();
    assert_eq!(take_events(), vec![Event::InvalidateAll]);
    assert_eq!(pt.root(), root);
    for pa in [2 * GIB - PAGE_SIZE, 2 * GIB, 3 * GIB - PAGE_SIZE, 3 * GIB] {
        assert_eq!(mapped_as(&pt, pa, ARM_IDENT), !r.contains(Gfn(pa >> 12)));
    }
    pt.map_identity(r, ARM_IDENT, &mut b).unwrap();
    let ev = take_events();
    assert_eq!(count(&ev, |e| matches!(e, Event::Alloc(_))), 1);
    assert_eq!(ev.last(), Some(&Event::InvalidateAll));
    let t = table_at(&pt, VirtAddr(2 * GIB), 1);
    for (i, e) in pt.memory().table(t).unwrap().iter().enumerate() {
        let pa = GuestPhysAddr(2 * GIB + ((i as u64) << 21));
        assert_eq!(
            e.load(Ordering::Relaxed),
            Stage1Va39::block(pa, ARM_IDENT.attrs, 1).unwrap()
        );
    }
}

#[test]
fn arm_a_table_made_by_a_restore_is_split_later_in_copies() {
    let (mut pt, mut frames, _) = arm_setup(8);
    let gib = frames_of(2 * GIB, 3 * GIB);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(gib),
    };
    pt.unmap_identity(gib, ARM_IDENT, &mut b).unwrap();
    // Back in two pieces: a new (empty) table for the GiB, a 2 MiB block, and
    // a page table for the partial block.
    let first = frames_of(2 * GIB, 2 * GIB + 0x20_1000);
    pt.map_identity(first, ARM_IDENT, &mut b).unwrap();
    let ev = take_events();
    assert_eq!(count(&ev, |e| matches!(e, Event::Alloc(_))), 2);
    assert!(!ev.iter().any(|e| matches!(e, Event::SwitchRoot(_))));
    let made = table_at(&pt, VirtAddr(2 * GIB), 1);
    for g in first.start().0..first.end().0 {
        b.gfns.remove(&g);
    }
    // Give back a page of a 2 MiB block the restore made: the block is live,
    // so the restore's table and the root are copied, and the restore's
    // table (the source's) is freed after the switch.
    let page = frames_of(2 * GIB + 0x10_0000, 2 * GIB + 0x10_1000);
    b.gfns.extend(gfns(page));
    let before = tables(&pt);
    pt.unmap_identity(page, ARM_IDENT, &mut b).unwrap();
    let ev = take_events();
    assert_eq!(count(&ev, |e| matches!(e, Event::Alloc(_))), 3);
    assert!(ev.contains(&Event::SwitchRoot(pt.root().0)));
    assert!(ev.contains(&Event::Free(made.0)));
    assert_no_live_make(&before, &pt);
    for pa in (2 * GIB..2 * GIB + 0x20_2000).step_by(PAGE_SIZE as usize) {
        let gone = page.contains(Gfn(pa >> 12)) || pa >= 2 * GIB + 0x20_1000;
        assert_eq!(mapped_as(&pt, pa, ARM_IDENT), !gone, "{pa:#x}");
    }
    assert!(!mapped_as(&pt, 3 * GIB - PAGE_SIZE, ARM_IDENT));
    assert!(mapped_as(&pt, 3 * GIB, ARM_IDENT));
}

#[test]
fn arm_out_of_frames_or_not_ballooned_changes_nothing() {
    // A partial block in GiB 1 needs three tables (split, its GiB's split,
    // the root's copy); there are two.
    let (mut pt, mut frames, _) = arm_setup(2);
    let before = tables(&pt);
    let root = pt.root();
    let r = frames_of(GIB + 0x1000, GIB + 0x3000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r),
    };
    assert_eq!(
        pt.unmap_identity(r, ARM_IDENT, &mut b),
        Err(PagingError::OutOfFrames)
    );
    assert_eq!((tables(&pt), pt.root()), (before.clone(), root));
    assert!(b.frames.live.is_empty(), "the tables taken are given back");
    assert!(!take_events()
        .iter()
        .any(|e| matches!(e, Event::SwitchRoot(_))));
    b.gfns.remove(&(r.start().0 + 1));
    assert_eq!(
        pt.unmap_identity(r, ARM_IDENT, &mut b),
        Err(PagingError::Backed(r.start_addr()))
    );
    assert_eq!((tables(&pt), pt.root()), (before, root));
}

/// A 48-bit (4-level) Arm tree: the root's first two entries point at
/// tables of 1 GiB blocks for `[0, 1 TiB)` (the boot code's: not the
/// source's). Returns them with the root.
fn arm48_setup(pool: usize) -> (Pt<Stage1Va48, BbmTlb>, FakeFrames, [GuestPhysAddr; 3]) {
    let window = Window::new(VirtAddr(1 << 47), GIB).unwrap();
    let (pt, mut frames) = setup_with::<Stage1Va48, BbmTlb>(window, pool + 2);
    let low = [frames.alloc_frame().unwrap(), frames.alloc_frame().unwrap()];
    let mem = pt.memory();
    for (k, &t) in low.iter().enumerate() {
        frames.live.remove(&t.0);
        for (i, e) in mem.table(t).unwrap().iter().enumerate() {
            let pa = GuestPhysAddr((k as u64 * 512 + i as u64) * GIB);
            e.store(
                Stage1Va48::block(pa, ARM_IDENT.attrs, 2).unwrap(),
                Ordering::Relaxed,
            );
        }
        mem.table(pt.root()).unwrap()[k].store(Stage1Va48::table(t), Ordering::Relaxed);
    }
    take_events();
    let root = pt.root();
    (pt, frames, [root, low[0], low[1]])
}

#[test]
fn arm_four_levels_copy_every_table_up_to_the_root() {
    let spec = IdentitySpec {
        end: GuestPhysAddr(1 << 46),
        ..ARM_IDENT
    };
    let (mut pt, mut frames, boot) = arm48_setup(16);
    // Partial blocks on both sides of 512 GiB: two level-2 tables split.
    let r = frames_of(512 * GIB - 0x1000, 512 * GIB + 0x3000);
    let more = frames_of(512 * GIB - 0x20_1000, 512 * GIB - 0x1f_f000);
    let mut b = Ballooned {
        frames: &mut frames,
        gfns: gfns(r).union(&gfns(more)).copied().collect(),
    };
    for step in [r, more] {
        let before = tables(&pt);
        pt.unmap_identity(step, spec, &mut b).unwrap();
        assert!(take_events().contains(&Event::SwitchRoot(pt.root().0)));
        assert_no_live_make(&before, &pt);
        // Every table frame the source handed out is in the tree, and the
        // tree holds only those and the boot code's.
        let in_tree: BTreeSet<u64> = tables(&pt).keys().copied().collect();
        assert!(b.frames.live.iter().all(|f| in_tree.contains(f)));
        assert!(in_tree
            .iter()
            .all(|t| b.frames.live.contains(t) || boot.iter().any(|f| f.0 == *t)));
    }
    for pa in (512 * GIB - 0x40_0000..512 * GIB + 0x40_0000).step_by(PAGE_SIZE as usize) {
        let gone = r.contains(Gfn(pa >> 12)) || more.contains(Gfn(pa >> 12));
        assert_eq!(mapped_as(&pt, pa, spec), !gone, "{pa:#x}");
    }
    pt.map_identity(r, spec, &mut b).unwrap();
    pt.map_identity(more, spec, &mut b).unwrap();
    for pa in (512 * GIB - 0x40_0000..512 * GIB + 0x40_0000).step_by(PAGE_SIZE as usize) {
        assert!(mapped_as(&pt, pa, spec), "{pa:#x}");
    }
}

// ---- both, against a model --------------------------------------------------

/// One step: give back (or take again) up to `len` pages from page `start`
/// of the test range, whichever the first page allows.
#[derive(Clone, Copy, Debug)]
struct Step {
    start: u64,
    len: u64,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (0u64..2048, prop_oneof![1u64..40, Just(512u64), 1u64..1200])
        .prop_map(|(start, len)| Step { start, len });
    proptest::collection::vec(step, 1..24)
}

/// Run `steps` over `[base, base + 8 MiB)` and check after each: every page
/// is mapped iff the model says it is RAM, its neighbours outside are
/// untouched, a failed step changed nothing, (`bbm`, Arm) nothing live was
/// made without a break, and every table frame taken is in the tree.
fn check_identity<F: Format, T: Tlb>(
    mut pt: Pt<F, T>,
    mut frames: FakeFrames,
    spec: IdentitySpec,
    base: u64,
    steps: &[Step],
    foreign: &[GuestPhysAddr],
    bbm: bool,
) -> Result<(), TestCaseError> {
    const PAGES: u64 = 2048;
    let arena = pt.memory().0.clone();
    watch(&arena);
    let mut ballooned: BTreeSet<u64> = BTreeSet::new();
    let first = base >> 12;
    for s in steps {
        let start = first + s.start;
        let was = ballooned.contains(&start);
        let mut end = start;
        while end < first + PAGES && end < start + s.len && ballooned.contains(&end) == was {
            end += 1;
        }
        let r = FrameRange::from_frames(Gfn(start), Gfn(end)).unwrap();
        let before = tables(&pt);
        let root = pt.root();
        let mut b = Ballooned {
            frames: &mut frames,
            gfns: ballooned.iter().copied().chain(start..end).collect(),
        };
        let res = if was {
            pt.map_identity(r, spec, &mut b)
        } else {
            pt.unmap_identity(r, spec, &mut b)
        };
        let now: Memory = arena
            .frames
            .iter()
            .map(|t| t.iter().map(|e| e.load(Ordering::Relaxed)).collect())
            .collect();
        let at = take_memory_at();
        if res.is_ok() && at.iter().any(|(e, _)| *e != Event::Publish) {
            // Every write came before the closing flush or switch...
            let (last, before_flush) = at.last().unwrap();
            prop_assert!(matches!(last, Event::InvalidateAll | Event::SwitchRoot(_)));
            prop_assert!(before_flush == &now, "a table was written after the flush");
            // ... and every table new in the tree was complete at the barrier
            // before the live entries were written.
            if let Some((_, published)) = at.iter().rev().find(|(e, _)| *e == Event::Publish) {
                for (&t, entries) in &tables(&pt) {
                    if !before.contains_key(&t) {
                        let i = ((t - ARENA_BASE) / PAGE_SIZE) as usize;
                        prop_assert!(
                            &published[i] == entries,
                            "table {:#x} was written after the barrier",
                            t
                        );
                    }
                }
            }
        }
        match res {
            Ok(()) => {
                if was {
                    (start..end).for_each(|g| {
                        ballooned.remove(&g);
                    });
                } else {
                    ballooned.extend(start..end);
                }
            }
            Err(PagingError::OutOfFrames) => {
                prop_assert_eq!(&tables(&pt), &before);
                prop_assert_eq!(pt.root(), root);
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        }
        if bbm {
            assert_no_live_make(&before, &pt);
        }
        for g in first - 1..=first + PAGES {
            let inside = (first..first + PAGES).contains(&g);
            let want = !(inside && ballooned.contains(&g));
            prop_assert_eq!(mapped_as(&pt, g << 12, spec), want, "page {:#x}", g << 12);
        }
        // No table frame leaks: every frame the source handed out is in the
        // tree, and every table in the tree is the source's or the boot
        // code's.
        let in_tree: BTreeSet<u64> = tables(&pt).keys().copied().collect();
        prop_assert!(frames.live.iter().all(|f| in_tree.contains(f)));
        prop_assert!(in_tree
            .iter()
            .all(|t| frames.live.contains(t) || foreign.iter().any(|f| f.0 == *t)));
        take_events();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn x86_identity_agrees_with_a_model(pool in 0usize..12, steps in steps()) {
        let (pt, frames, _) = identity_setup(pool);
        let root = pt.root();
        check_identity(pt, frames, IDENT, 0x80_0000, &steps, &[root], false)?;
    }

    #[test]
    fn arm_identity_agrees_with_a_model(pool in 0usize..16, steps in steps()) {
        let (pt, frames, low) = arm_setup(pool);
        let root = pt.root();
        // Straddles GiBs 1 and 2.
        check_identity(pt, frames, ARM_IDENT, 2 * GIB - 0x40_0000, &steps, &[root, low], true)?;
    }
}

// ---- trimming the boot map to the region table ------------------------------

fn region(start: u64, end: u64, kind: RegionKind) -> Region {
    Region {
        range: FrameRange::from_addrs(GuestPhysAddr(start), GuestPhysAddr(end)).unwrap(),
        kind,
        flags: RegionFlags::empty(),
        backing: crate::region::Backing::None,
    }
}

/// A region table over `[0, end)`: `layout`'s regions, the arena's first
/// `fixed` frames (root, boot tables) as the image, the next `pool` as RAM
/// for new tables, and holes wherever nothing else is.
fn layout_table(layout: &[(u64, u64, RegionKind)], fixed: u64, pool: u64) -> RegionTable {
    let mut t = RegionTable::new();
    let arena = ARENA_BASE + fixed * PAGE_SIZE;
    t.add(region(
        ARENA_BASE,
        arena,
        RegionKind::Reserved(ReservedUse::Image),
    ))
    .unwrap();
    t.add(region(arena, arena + pool * PAGE_SIZE, RegionKind::Ram))
        .unwrap();
    for &(s, e, k) in layout {
        t.add(region(s, e, k)).unwrap();
    }
    t
}

/// Whether `pa` translates (to itself: the map is an identity map).
fn translates<F: Format, T: Tlb>(pt: &Pt<F, T>, pa: u64) -> bool {
    match pt.translate(VirtAddr(pa)) {
        Some((to, _)) => {
            assert_eq!(to.0, pa);
            true
        }
        None => false,
    }
}

/// Every table frame the region table handed out is in the tree.
fn no_table_leaks<F: Format, T: Tlb>(pt: &Pt<F, T>, t: &RegionTable) {
    let in_tree: BTreeSet<u64> = tables(pt).keys().copied().collect();
    for r in t
        .iter()
        .filter(|r| r.kind == RegionKind::Reserved(ReservedUse::PageTables))
    {
        for g in r.range.start().0..r.range.end().0 {
            assert!(
                in_tree.contains(&(g << 12)),
                "table frame {:#x} leaked",
                g << 12
            );
        }
    }
}

#[test]
fn trim_leaves_x86_with_only_memory_mapped() {
    let (mut pt, _, _) = identity_setup(8);
    let mut t = layout_table(
        &[
            (0, 0xa_0000, RegionKind::Reserved(ReservedUse::Boot)),
            (0xa_0000, 0x10_0000, RegionKind::Mmio),
            (0x40_0000, 0x400_0000, RegionKind::Ram),
            (
                0x400_0000,
                0x800_0000,
                RegionKind::Reserved(ReservedUse::Unusable),
            ),
            (
                0x800_0000,
                0x801_0000,
                RegionKind::Reserved(ReservedUse::Acpi),
            ),
            (0x801_0000, GIB, RegionKind::Mmio),
        ],
        // Root, PDPT and PD (from the fake frames in `identity_setup`).
        3,
        8,
    );
    let done = trim_identity(&mut pt, IDENT, &mut t).unwrap();
    // [0xa0000, 1 MiB), after the arena up to 4 MiB, [64 MiB, 1 GiB)
    // (unusable, ACPI — firmware's, not memory the agent keeps — and mmio).
    assert_eq!(done.ranges, 3);
    let ev = take_events();
    assert!(
        !ev.iter().any(|e| matches!(e, Event::SwitchRoot(_))),
        "x86 splits in place"
    );
    for (pa, kept) in [
        (0, true),
        (0x9_f000, true),
        (0xa_0000, false),
        (0xf_f000, false),
        (ARENA_BASE, true),
        (0x3f_f000, false),
        (0x40_0000, true),
        (0x3ff_f000, true),
        (0x400_0000, false),
        (0x7ff_f000, false),
        (0x800_0000, false),
        (0x800_f000, false),
        (0x801_0000, false),
        (0x2000_0000, false),
        (GIB - PAGE_SIZE, false),
    ] {
        assert_eq!(translates(&pt, pa), kept, "{pa:#x}");
    }
    no_table_leaks(&pt, &t);
    // Trimming again finds nothing left to change, and RAM is refused.
    trim_identity(&mut pt, IDENT, &mut t).unwrap();
    assert_eq!(
        pt.unmap_identity(frames_of(0x40_0000, 0x40_1000), IDENT, &mut t),
        Err(PagingError::Backed(GuestPhysAddr(0x40_0000)))
    );
}

#[test]
fn trim_leaves_arm_with_only_memory_mapped_through_copies() {
    let (mut pt, _, _) = arm_setup(8);
    let boot_root = pt.root();
    let before = tables(&pt);
    let mut t = layout_table(
        &[
            (0, ARENA_BASE, RegionKind::Mmio),
            (GIB, GIB + 0x800_0000, RegionKind::Ram),
            (4 * GIB, 8 * GIB, RegionKind::Mmio),
        ],
        // The boot root and its first GiB's table.
        2,
        8,
    );
    let done = trim_identity(&mut pt, ARM_IDENT, &mut t).unwrap();
    // [0, arena), after the arena to 1 GiB, [1 GiB + 128 MiB, 511 GiB).
    assert_eq!(done.ranges, 3);
    assert_eq!(done.frames.0, ((511 * GIB) >> 12) - (0x800_0000 >> 12) - 10);
    let ev = take_events();
    // The partial device block under the arena, then GiB 1: two switches.
    assert_eq!(count(&ev, |e| matches!(e, Event::SwitchRoot(_))), 2);
    assert_ne!(pt.root(), boot_root);
    assert_no_live_make(&before, &pt);
    for (pa, kept) in [
        (0, false),
        (ARENA_BASE - PAGE_SIZE, false),
        (ARENA_BASE, true),
        (ARENA_BASE + 9 * PAGE_SIZE, true),
        (ARENA_BASE + 10 * PAGE_SIZE, false),
        (0x3800_0000, false),
        (GIB - PAGE_SIZE, false),
        (GIB, true),
        (GIB + 0x7ff_f000, true),
        (GIB + 0x800_0000, false),
        (2 * GIB, false),
        (5 * GIB, false),
        (300 * GIB, false),
        (511 * GIB - PAGE_SIZE, false),
    ] {
        assert_eq!(translates(&pt, pa), kept, "{pa:#x}");
    }
    // RAM keeps the boot attributes.
    assert!(mapped_as(&pt, GIB + 0x10_0000, ARM_IDENT));
    no_table_leaks(&pt, &t);
}
