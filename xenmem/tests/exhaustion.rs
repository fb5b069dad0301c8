//! Heap exhaustion (issue 13, item 4): every operation runs with a heap
//! that refuses the k-th allocation and every one after it, for k = 0, 1,
//! 2, ... until the operation succeeds. Each refusal must come back as the
//! operation's typed out-of-memory error (never an abort: `Vec::push` on a
//! refused allocation calls `handle_alloc_error`, which ends the test
//! binary), and the region table and the page tables must be as they were
//! before the operation. The reservation engine talks to Xen in batches: a
//! refusal between two batches keeps what the first did, so there the
//! check is that the table, Xen's p2m and the engine's accounting agree.
//!
//! The budget is per thread and only counts while an operation runs; the
//! model of Xen (whose own allocations are not the library's) runs outside
//! it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use xenmem::addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount, VirtAddr, PAGE_SIZE};
use xenmem::layout::{initial_table, GapPolicy, LayoutError, Reservation, ReserveRule};
use xenmem::memmap::{MemKind, MemoryMap};
use xenmem::paging::aarch64::Stage1Va39;
use xenmem::paging::x86_64::X86_64;
use xenmem::paging::{
    Attrs, Entry, Format, FrameSource, IdentitySpec, PageTable, PagingError, Table, TableMemory,
    Tlb, Window,
};
use xenmem::region::{
    Backing, Change, FrameRange, Op, Region, RegionError, RegionFlags, RegionKind, RegionTable,
    ReservedUse,
};
use xenmem::reservation::{Engine, IdentityMap, ReservationError, Strategy as Batching};
use xenmem::special::{self, SpecialError};
use xenmem::xen::abi::E820Entry;
use xenmem::xen::{self, Hypervisor};
use xenmem_model::{DomainConfig, XenModel};

// ---- a heap that runs out --------------------------------------------------

struct Budgeted;

thread_local! {
    /// Allocations this thread may still make (`u64::MAX`: no limit).
    static LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Whether one was refused since the limit was set.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

fn may_allocate() -> bool {
    LEFT.try_with(|left| match left.get() {
        u64::MAX => true,
        0 => {
            let _ = REFUSED.try_with(|r| r.set(true));
            false
        }
        n => {
            left.set(n - 1);
            true
        }
    })
    .unwrap_or(true)
}

// SAFETY: forwards to the system allocator, or refuses (null), which the
// `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !may_allocate() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !may_allocate() {
            return std::ptr::null_mut();
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the system allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !may_allocate() {
            return std::ptr::null_mut();
        }
        // SAFETY: as `alloc`; `ptr` came from the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static HEAP: Budgeted = Budgeted;

/// Run `f` with `k` allocations allowed; whether one was refused.
fn with_budget<R>(k: u64, f: impl FnOnce() -> R) -> (R, bool) {
    REFUSED.with(|r| r.set(false));
    LEFT.with(|l| l.set(k));
    let r = f();
    LEFT.with(|l| l.set(u64::MAX));
    (r, REFUSED.with(|r| r.get()))
}

/// While it lives, this thread's allocations are not counted (Xen's model
/// at work, not the library).
struct Unbudgeted(u64);

impl Unbudgeted {
    fn new() -> Self {
        Unbudgeted(LEFT.with(|l| l.replace(u64::MAX)))
    }
}

impl Drop for Unbudgeted {
    fn drop(&mut self) {
        LEFT.with(|l| l.set(self.0));
    }
}

/// The most allocations an operation here makes (a loop guard).
const MAX_BUDGET: u64 = 100_000;

/// Run `op` on a fresh `setup()` with budgets 0, 1, 2, ... until it
/// succeeds. After every failure: a refusal happened, `oom` recognises the
/// error, and `check` accepts the state (given `snap` of the state before).
/// Returns the budget it succeeded with (the allocations it makes).
fn exhaust<S, T, R, E: Debug>(
    name: &str,
    setup: impl Fn() -> S,
    snap: impl Fn(&S) -> T,
    op: impl Fn(&mut S) -> Result<R, E>,
    oom: impl Fn(&E) -> bool,
    check: impl Fn(&S, &T),
) -> u64 {
    for k in 0..MAX_BUDGET {
        let mut s = setup();
        let before = snap(&s);
        let (r, refused) = with_budget(k, || op(&mut s));
        match r {
            Ok(_) => {
                assert!(
                    !refused,
                    "{name}: a refused allocation was swallowed (budget {k})"
                );
                return k;
            }
            Err(e) => {
                assert!(
                    refused,
                    "{name}: budget {k}: failed without running out: {e:?}"
                );
                assert!(
                    oom(&e),
                    "{name}: budget {k}: not the out-of-memory error: {e:?}"
                );
                check(&s, &before);
            }
        }
    }
    panic!("{name}: still failing after {MAX_BUDGET} allocations");
}

fn region_oom(e: &RegionError) -> bool {
    matches!(e, RegionError::OutOfMemory(_))
}

fn paging_oom(e: &PagingError) -> bool {
    matches!(e, PagingError::OutOfMemory(_))
}

/// The table as it was, and sound.
fn table_unchanged(t: &RegionTable, before: &RegionTable) {
    assert_eq!(t, before, "the table changed");
    assert_eq!(t.check_invariants(), Ok(()));
}

// ---- building the table from real memory maps ------------------------------

fn dom0_e820() -> MemoryMap {
    let raw = include_bytes!("data/xen-4.17-x86-pvh-dom0.e820");
    let entries: Vec<E820Entry> = raw
        .chunks_exact(20)
        .map(|c| E820Entry {
            addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
            size: u64::from_le_bytes(c[8..16].try_into().unwrap()),
            kind: u32::from_le_bytes(c[16..20].try_into().unwrap()),
        })
        .collect();
    MemoryMap::from_e820(&entries).unwrap()
}

/// The largest map the agent takes (`MAX_RANGES` entries): RAM cut by
/// reserved pages, every one of them a region of its own.
fn largest_map() -> MemoryMap {
    let mut m = MemoryMap::new(xenmem::memmap::MapSource::XenE820);
    let mut at = 0u64;
    for i in 0..xenmem::memmap::MAX_RANGES {
        let (size, kind) = if i % 2 == 0 {
            (0x10_0000, MemKind::Ram)
        } else {
            (0x1000, MemKind::Reserved)
        };
        m.push(i, at, size, kind).unwrap();
        at += size + if i % 4 == 3 { 0x1000 } else { 0 };
    }
    m
}

fn image_at(start: u64, pages: u64) -> [Reservation; 2] {
    [
        Reservation {
            range: FrameRange::new(Gfn(start), PageCount(pages)).unwrap(),
            what: ReservedUse::Image,
            rule: ReserveRule::InRam,
        },
        Reservation {
            range: FrameRange::new(Gfn(start + 4), PageCount(8)).unwrap(),
            what: ReservedUse::Heap,
            rule: ReserveRule::Carve(ReservedUse::Image),
        },
    ]
}

#[test]
fn building_the_table_from_real_maps() {
    let maps = [
        ("x86 PVH dom0 e820", dom0_e820(), GapPolicy::X86),
        (
            "arm64 dom0 device tree",
            MemoryMap::from_fdt(include_bytes!("data/xen-4.17-arm64-dom0.dtb")).unwrap(),
            GapPolicy::DeviceTree,
        ),
        (
            "arm64 domU device tree",
            MemoryMap::from_fdt(include_bytes!("data/xen-4.17-arm64-domu.dtb")).unwrap(),
            GapPolicy::DeviceTree,
        ),
        ("the largest map", largest_map(), GapPolicy::X86),
    ];
    for (name, map, policy) in maps {
        // The image 64 pages into the first RAM range of 1 MiB or more.
        let ram = map
            .ranges()
            .iter()
            .find(|r| r.kind == MemKind::Ram && r.whole_pages().0 >= 256)
            .unwrap();
        let reserve = image_at(ram.start.0.div_ceil(PAGE_SIZE) + 64, 64);
        let allocations = exhaust(
            name,
            || (),
            |_| (),
            |_| initial_table(&map, policy, Gfn(1 << 21), &reserve),
            |e| {
                matches!(
                    e,
                    LayoutError::OutOfMemory(_) | LayoutError::Table(RegionError::OutOfMemory(_))
                )
            },
            |_, _| {},
        );
        assert!(allocations > 0, "{name}");
        let t = initial_table(&map, policy, Gfn(1 << 21), &reserve).unwrap();
        assert_eq!(t.check_invariants(), Ok(()));
    }
}

// ---- region-table operations -----------------------------------------------

const UNIVERSE: u64 = 256;

fn kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![
        Just(RegionKind::Ram),
        Just(RegionKind::Ballooned),
        Just(RegionKind::Hole),
        Just(RegionKind::Mmio),
        Just(RegionKind::Reserved(ReservedUse::Firmware)),
        Just(RegionKind::Reserved(ReservedUse::PageTables)),
        Just(RegionKind::Grant),
        Just(RegionKind::Foreign),
    ]
}

fn flags() -> impl Strategy<Value = RegionFlags> {
    (0u16..64).prop_map(RegionFlags::from_bits_truncate)
}

fn backing() -> impl Strategy<Value = Backing> {
    prop_oneof![
        3 => Just(Backing::None),
        1 => (0u64..1 << 20).prop_map(|m| Backing::Machine(Mfn(m))),
        1 => (0u64..1 << 20).prop_map(|g| Backing::Foreign { dom: DomId(3), gfn: Gfn(g) }),
    ]
}

fn range() -> impl Strategy<Value = FrameRange> {
    (0..UNIVERSE, 1u64..48)
        .prop_map(|(s, n)| FrameRange::new(Gfn(s), PageCount(n.min(UNIVERSE - s).max(1))).unwrap())
}

/// Mostly single frames and short ranges: the changes that split regions.
fn small_range() -> impl Strategy<Value = FrameRange> {
    (0..UNIVERSE, 1u64..4).prop_map(|(s, n)| FrameRange::new(Gfn(s), PageCount(n)).unwrap())
}

fn change() -> impl Strategy<Value = Change> {
    (
        proptest::option::of(kind()),
        flags(),
        flags(),
        proptest::option::of(backing()),
        proptest::option::weighted(0.2, kind()),
    )
        .prop_map(|(kind, set, clear, backing, expect)| Change {
            kind,
            set,
            clear,
            backing,
            expect,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (range(), kind(), flags(), backing()).prop_map(|(range, kind, flags, backing)| {
            Op::Add(Region { range, kind, flags, backing })
        }),
        4 => (prop_oneof![range(), small_range()], change()).prop_map(|(r, c)| Op::Modify(r, c)),
        1 => small_range().prop_map(Op::Delete),
    ]
}

/// A table of the whole universe: RAM and holes, then `ops` (those that
/// apply) on top.
fn table_after(ops: &[Op]) -> RegionTable {
    let mut t = RegionTable::new();
    for (s, e, k) in [
        (0, 96, RegionKind::Ram),
        (96, 160, RegionKind::Hole),
        (160, UNIVERSE, RegionKind::Ram),
    ] {
        t.add(Region::new(
            FrameRange::from_frames(Gfn(s), Gfn(e)).unwrap(),
            k,
            RegionFlags::READ,
        ))
        .unwrap();
    }
    for op in ops {
        let _ = t.apply(std::slice::from_ref(op));
    }
    t
}

fn one(t: &mut RegionTable, op: Op) -> Result<(), RegionError> {
    match op {
        Op::Add(r) => t.add(r),
        Op::Modify(r, c) => t.modify(r, c),
        Op::Delete(r) => t.delete(r),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each operation alone, and the batch: every refusal leaves the table
    /// as it was.
    #[test]
    fn every_table_change_is_all_or_nothing(
        history in proptest::collection::vec(op(), 0..40),
        batch in proptest::collection::vec(op(), 1..12),
    ) {
        let t0 = table_after(&history);
        // Changes the table refuses for what they are are not about memory:
        // only those that apply, one after the other, are tried.
        let mut scratch = t0.clone();
        let valid: Vec<Op> =
            batch.iter().copied().filter(|&o| one(&mut scratch, o).is_ok()).collect();
        let valid_alone: Vec<Op> =
            batch.iter().copied().filter(|&o| one(&mut t0.clone(), o).is_ok()).collect();
        for &o in &valid_alone {
            exhaust(
                "one change",
                || t0.clone(),
                |t| t.clone(),
                |t| one(t, o).map_err(|e| (e, 0)),
                |(e, _)| region_oom(e),
                table_unchanged,
            );
        }
        exhaust(
            "a batch",
            || t0.clone(),
            |t| t.clone(),
            |t| t.apply(&valid),
            |(e, _)| region_oom(e),
            table_unchanged,
        );
    }

    /// Room set aside is there for the changes that need it, whatever
    /// happens in between: with the heap exhausted, changes of ranges
    /// inside one region each go through, while other changes are refused
    /// without touching it.
    #[test]
    fn room_set_aside_stays_for_its_changes(
        history in proptest::collection::vec(op(), 0..40),
        marks in proptest::collection::vec(small_range(), 1..8),
        others in proptest::collection::vec(op(), 0..8),
    ) {
        let mut t = table_after(&history);
        t.set_aside(2 * marks.len()).unwrap();
        let (r, _) = with_budget(0, || {
            for (i, m) in marks.iter().enumerate() {
                if let Some(&o) = others.get(i) {
                    let before = t.clone_unbudgeted();
                    if let Err(e) = one(&mut t, o) {
                        if region_oom(&e) {
                            let _u = Unbudgeted::new();
                            table_unchanged(&t, &before);
                        }
                    }
                }
                // The mark clipped to the one region at its start (none
                // there: nothing to mark).
                let Some(reg) = t.region_at(m.start()).copied() else {
                    continue;
                };
                let Ok(r) = FrameRange::from_frames(m.start(), m.end().min(reg.range.end())) else {
                    continue;
                };
                let change = Change {
                    set: RegionFlags::PINNED,
                    clear: RegionFlags::READ,
                    ..Change::default()
                };
                t.modify_set_aside(r, change)?;
            }
            Ok::<(), RegionError>(())
        });
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(t.check_invariants(), Ok(()));
    }
}

trait CloneUnbudgeted {
    fn clone_unbudgeted(&self) -> Self;
}

impl CloneUnbudgeted for RegionTable {
    fn clone_unbudgeted(&self) -> Self {
        let _u = Unbudgeted::new();
        self.clone()
    }
}

#[test]
fn frames_handed_out_go_back_without_memory() {
    let mut t = table_after(&[]);
    let mut got = Vec::new();
    for n in [1u64, 3, 1, 7, 2] {
        got.push(
            t.alloc_frames(PageCount(n), Order::ZERO, ReservedUse::Allocated)
                .unwrap(),
        );
        got.push(
            t.alloc_frames(PageCount(1), Order::ZERO, ReservedUse::PageTables)
                .unwrap(),
        );
    }
    let (r, refused) = with_budget(0, || {
        for (i, &r) in got.iter().enumerate().rev() {
            let what = if i % 2 == 0 {
                ReservedUse::Allocated
            } else {
                ReservedUse::PageTables
            };
            t.free_frames(r, what)?;
        }
        Ok::<(), RegionError>(())
    });
    assert_eq!((r, refused), (Ok(()), false));
    assert_eq!(t, table_after(&[]));
}

#[test]
fn frame_allocation_is_all_or_nothing() {
    // RAM cut into many regions by pinned frames: every allocation splits.
    let mut t0 = table_after(&[]);
    for g in (0..96).step_by(5) {
        t0.modify(
            FrameRange::new(Gfn(g), PageCount(1)).unwrap(),
            Change {
                set: RegionFlags::PINNED,
                ..Change::default()
            },
        )
        .unwrap();
    }
    for (n, align) in [(1u64, 0u8), (2, 0), (3, 1), (4, 2)] {
        exhaust(
            "alloc_frames",
            || t0.clone(),
            |t| t.clone(),
            |t| {
                t.alloc_frames(
                    PageCount(n),
                    Order::new(align).unwrap(),
                    ReservedUse::Allocated,
                )
            },
            region_oom,
            table_unchanged,
        );
        exhaust(
            "alloc_frame (page tables)",
            || t0.clone(),
            |t| t.clone(),
            |t| t.alloc_frame(),
            paging_oom,
            table_unchanged,
        );
    }
}

#[test]
fn special_pages_are_recorded_all_or_nothing() {
    let m = XenModel::new(1 << 16);
    let cfg = DomainConfig::xl_pvh_domu(DomId(1), 16384);
    let e820 = cfg.e820.clone().unwrap();
    m.add_domain(cfg).unwrap();
    m.set_current(DomId(1)).unwrap();
    let map = MemoryMap::from_e820(&e820).unwrap();
    let t0 = initial_table(&map, GapPolicy::X86, Gfn(1 << 20), &[]).unwrap();
    let (c, skipped) = special::candidates(&map, &special::param_frames(&m));
    let x = Model(&m);
    let allocations = exhaust(
        "special::probe",
        || (),
        |_| (),
        |_| special::probe(&x, &c, Gfn(5), skipped),
        |e| matches!(e, SpecialError::OutOfMemory(_)),
        |_, _| {},
    );
    assert!(allocations > 0);
    let found = special::probe(&m, &c, Gfn(5), skipped).unwrap();
    assert!(found.pages() > 0);
    exhaust(
        "special::record",
        || t0.clone(),
        |t| t.clone(),
        |t| special::record(t, &found),
        |e| {
            matches!(
                e,
                SpecialError::OutOfMemory(_) | SpecialError::Table(RegionError::OutOfMemory(_))
            )
        },
        table_unchanged,
    );
}

// ---- the identity map ------------------------------------------------------

/// Table frames `[0, FRAMES)` in host memory.
const FRAMES: usize = 1024;

struct Arena(Vec<Box<Table>>);

impl Arena {
    fn new() -> Self {
        Arena(
            (0..FRAMES)
                .map(|_| Box::new(std::array::from_fn(|_| AtomicU64::new(!0))))
                .collect(),
        )
    }
}

// SAFETY: frames of the arena, used by nothing else, for as long as it lives.
unsafe impl TableMemory for Arena {
    fn table(&self, frame: GuestPhysAddr) -> Option<&Table> {
        if !frame.is_page_aligned() || frame.0 == 0 {
            return None;
        }
        self.0
            .get(usize::try_from(frame.0 / PAGE_SIZE).ok()?)
            .map(|t| &**t)
    }
}

/// A host TLB: nothing to invalidate; x86's rules (`SPLIT` true) or Arm's.
struct HostTlb<const SPLIT: bool>;

// SAFETY: nothing caches translations of the arena's tables.
unsafe impl<const SPLIT: bool> Tlb for HostTlb<SPLIT> {
    fn invalidate_page(_: VirtAddr) {}
    fn invalidate_all() {}
    fn publish_table() {}
    const SPLIT_IN_PLACE: bool = SPLIT;
    unsafe fn switch_root(_: GuestPhysAddr) {}
}

type Pt<F, const SPLIT: bool> = PageTable<F, Arena, HostTlb<SPLIT>>;

const GIB: u64 = 1 << 30;

/// A table whose RAM `[1, FRAMES)` holds the page tables (so the walker
/// reaches every frame the table hands out), ballooned frames `balloon`
/// (what the identity map may drop), holes elsewhere up to `end`.
fn identity_table(balloon: &[(u64, u64)], end: u64) -> RegionTable {
    let mut t = RegionTable::new();
    t.add(Region::new(
        FrameRange::from_frames(Gfn(0), Gfn(end)).unwrap(),
        RegionKind::Hole,
        RegionFlags::empty(),
    ))
    .unwrap();
    t.delete(FrameRange::from_frames(Gfn(0), Gfn(FRAMES as u64)).unwrap())
        .unwrap();
    t.add(Region::new(
        FrameRange::from_frames(Gfn(1), Gfn(FRAMES as u64)).unwrap(),
        RegionKind::Ram,
        RegionFlags::READ | RegionFlags::WRITE,
    ))
    .unwrap();
    for &(s, e) in balloon {
        let r = FrameRange::from_frames(Gfn(s), Gfn(e)).unwrap();
        t.delete(r).unwrap();
        t.add(Region::new(r, RegionKind::Ballooned, RegionFlags::empty()))
            .unwrap();
    }
    // Cut the RAM so that table frames split regions.
    for g in (3..64).step_by(7) {
        t.modify(
            FrameRange::new(Gfn(g), PageCount(1)).unwrap(),
            Change {
                set: RegionFlags::PINNED,
                ..Change::default()
            },
        )
        .unwrap();
    }
    t
}

/// Every table reachable from the root, with its entries.
fn tables<F: Format, const S: bool>(pt: &Pt<F, S>) -> BTreeMap<u64, Vec<u64>> {
    fn visit<F: Format, const S: bool>(
        pt: &Pt<F, S>,
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
        if level > 0 {
            for &e in &entries {
                if let Entry::Table { next, .. } = F::decode(e, level) {
                    visit(pt, next, level - 1, out);
                }
            }
        }
        out.insert(t.0, entries);
    }
    let mut out = BTreeMap::new();
    visit(pt, pt.root(), F::LEVELS - 1, &mut out);
    out
}

/// x86_64's boot map: `[0, 4 GiB)` in 2 MiB pages, tables from `t`.
fn x86_tree(t: &mut RegionTable) -> Pt<X86_64, true> {
    let arena = Arena::new();
    let mut frame = || t.alloc_frame().unwrap();
    let (root, pdpt) = (frame(), frame());
    let pds = [frame(), frame(), frame(), frame()];
    let zero = |f: GuestPhysAddr| {
        for e in arena.table(f).unwrap() {
            e.store(0, Ordering::Relaxed);
        }
    };
    zero(root);
    zero(pdpt);
    arena.table(root).unwrap()[0].store(X86_64::table(pdpt), Ordering::Relaxed);
    for (g, &pd) in pds.iter().enumerate() {
        arena.table(pdpt).unwrap()[g].store(X86_64::table(pd), Ordering::Relaxed);
        for (i, e) in arena.table(pd).unwrap().iter().enumerate() {
            let pa = GuestPhysAddr(g as u64 * GIB + ((i as u64) << 21));
            e.store(
                X86_64::block(pa, X86_IDENT.attrs, 1).unwrap(),
                Ordering::Relaxed,
            );
        }
    }
    let window = Window::new(VirtAddr(0x200_0000_0000), 1 << 39).unwrap();
    // SAFETY: a complete tree in the arena, used by nothing else.
    unsafe { PageTable::new(root, window, arena) }.unwrap()
}

const X86_IDENT: IdentitySpec = IdentitySpec {
    end: GuestPhysAddr(4 * GIB),
    attrs: Attrs::READ_WRITE.executable(),
};

/// aarch64's boot map: the first GiB in 2 MiB Device blocks, `[1, 511)`
/// GiB in 1 GiB blocks, tables from `t`.
fn arm_tree(t: &mut RegionTable) -> Pt<Stage1Va39, false> {
    let arena = Arena::new();
    let root = t.alloc_frame().unwrap();
    let low = t.alloc_frame().unwrap();
    for (i, e) in arena.table(low).unwrap().iter().enumerate() {
        let b = Stage1Va39::block(
            GuestPhysAddr((i as u64) << 21),
            Attrs::READ_WRITE.device(),
            1,
        );
        e.store(b.unwrap(), Ordering::Relaxed);
    }
    let r = arena.table(root).unwrap();
    r[0].store(Stage1Va39::table(low), Ordering::Relaxed);
    for (i, e) in r.iter().enumerate() {
        if i == 0 {
            continue;
        }
        let v = if i < 511 {
            Stage1Va39::block(GuestPhysAddr(i as u64 * GIB), ARM_IDENT.attrs, 2).unwrap()
        } else {
            0
        };
        e.store(v, Ordering::Relaxed);
    }
    let window = Window::new(VirtAddr(511 * GIB), GIB).unwrap();
    // SAFETY: a complete tree in the arena, used by nothing else.
    unsafe { PageTable::new(root, window, arena) }.unwrap()
}

const ARM_IDENT: IdentitySpec = IdentitySpec {
    end: GuestPhysAddr(511 * GIB),
    attrs: Attrs::READ_WRITE.executable(),
};

/// Frames `[s, e)` as a range.
fn frames(s: u64, e: u64) -> FrameRange {
    FrameRange::from_frames(Gfn(s), Gfn(e)).unwrap()
}

#[test]
fn identity_map_changes_are_all_or_nothing_x86() {
    // A partial block (split: a new table), a whole one (cleared), a
    // partial one in the second GiB.
    let balloon = [(0x6f0, 0x700), (0x800, 0xa00), (0x40010, 0x40020)];
    let end = 8 * GIB / PAGE_SIZE;
    for &(s, e) in &balloon {
        // (A copy of the table: no room to grow, so every growth asks.)
        let setup = || {
            let mut t = identity_table(&balloon, end);
            let pt = x86_tree(&mut t);
            (pt, t.clone())
        };
        let snap = |(pt, t): &(Pt<X86_64, true>, RegionTable)| (tables(pt), t.clone());
        let unchanged = |s: &(Pt<X86_64, true>, RegionTable), b: &(_, RegionTable)| {
            assert_eq!(snap(s).0, b.0, "the page tables changed");
            table_unchanged(&s.1, &b.1);
        };
        let k = exhaust(
            "unmap_identity (x86_64)",
            setup,
            snap,
            |(pt, t)| pt.unmap_identity(frames(s, e), X86_IDENT, t),
            paging_oom,
            unchanged,
        );
        assert!(k > 0);
        // And back.
        exhaust(
            "map_identity (x86_64)",
            || {
                let (mut pt, mut t) = setup();
                pt.unmap_identity(frames(s, e), X86_IDENT, &mut t).unwrap();
                (pt, t.clone())
            },
            snap,
            |(pt, t)| pt.map_identity(frames(s, e), X86_IDENT, t),
            paging_oom,
            unchanged,
        );
    }
}

#[test]
fn identity_map_changes_are_all_or_nothing_arm() {
    // Splitting a live 1 GiB block: copies up to the root, then a switch.
    let balloon = [(0x40100, 0x40180), (0x80000, 0x80200)];
    let end = 8 * GIB / PAGE_SIZE;
    for &(s, e) in &balloon {
        let setup = || {
            let mut t = identity_table(&balloon, end);
            let pt = arm_tree(&mut t);
            (pt, t.clone())
        };
        let snap =
            |(pt, t): &(Pt<Stage1Va39, false>, RegionTable)| (pt.root(), tables(pt), t.clone());
        let k = exhaust(
            "unmap_identity (aarch64)",
            setup,
            snap,
            |(pt, t)| pt.unmap_identity(frames(s, e), ARM_IDENT, t),
            paging_oom,
            |s, b| {
                let now = snap(s);
                assert_eq!((now.0, &now.1), (b.0, &b.1), "the page tables changed");
                table_unchanged(&s.1, &b.2);
            },
        );
        assert!(k > 0);
    }
}

#[test]
fn trimming_the_identity_map_is_all_or_nothing() {
    // One run to take out: ballooned frames amid RAM (frame 0 is boot
    // data, kept too).
    let end = 4 * GIB / PAGE_SIZE;
    let setup = || {
        let mut t = RegionTable::new();
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        for (s, e, k) in [
            (0, 1, RegionKind::Reserved(ReservedUse::Boot)),
            (1, 0x6f0, RegionKind::Ram),
            (0x6f0, 0x700, RegionKind::Ballooned),
            (0x700, end, RegionKind::Ram),
        ] {
            t.add(Region::new(frames(s, e), k, rw)).unwrap();
        }
        let pt = x86_tree(&mut t);
        (pt, t.clone())
    };
    let k = exhaust(
        "trim_identity",
        setup,
        |(pt, t)| (tables(pt), t.clone()),
        |(pt, t)| xenmem::paging::trim_identity(pt, X86_IDENT, t),
        paging_oom,
        |s, b| {
            assert_eq!(tables(&s.0), b.0, "the page tables changed");
            table_unchanged(&s.1, &b.1);
        },
    );
    assert!(k > 0);
}

// ---- the reservation engine against the model ------------------------------

const DOM: DomId = DomId(1);
const SELF: DomId = DomId::SELF;

/// The model, its own allocations not counted.
struct Model<'a>(&'a XenModel);

macro_rules! unbudgeted {
    ($($name:ident(&self $(, $a:ident: $t:ty)*) -> $r:ty;)*) => {
        $(fn $name(&self $(, $a: $t)*) -> $r {
            let _u = Unbudgeted::new();
            self.0.$name($($a),*)
        })*
    };
}

impl Hypervisor for Model<'_> {
    unbudgeted! {
        version(&self) -> Result<xen::XenVersion, xen::XenError>;
        features(&self) -> Result<xen::Features, xen::XenError>;
        console_write(&self, bytes: &[u8]) -> Result<(), xen::XenError>;
        current_reservation(&self, dom: DomId) -> Result<PageCount, xen::XenError>;
        maximum_reservation(&self, dom: DomId) -> Result<PageCount, xen::XenError>;
        maximum_gpfn(&self, dom: DomId) -> Result<Gfn, xen::XenError>;
        memory_map(&self, buf: &mut [E820Entry]) -> Result<usize, xen::XenError>;
        domain_info(&self, dom: DomId) -> Result<xen::DomainInfo, xen::XenError>;
        shutdown(&self, reason: xen::ShutdownReason) -> Result<(), xen::XenError>;
        yield_cpu(&self) -> Result<(), xen::XenError>;
        hvm_get_param(&self, index: u32) -> Result<u64, xen::XenError>;
        evtchn_send(&self, port: u32) -> Result<(), xen::XenError>;
        own_domid(&self) -> Option<DomId>;
        evtchn_alloc_unbound(&self, remote: DomId) -> Result<u32, xen::XenError>;
        evtchn_bind_interdomain(&self, remote_dom: DomId, remote_port: u32) -> Result<u32, xen::XenError>;
        evtchn_close(&self, port: u32) -> Result<(), xen::XenError>;
        evtchn_unmask(&self, port: u32) -> Result<(), xen::XenError>;
        evtchn_status(&self, dom: DomId, port: u32) -> Result<xen::ChannelStatus, xen::XenError>;
        sched_poll(&self, ports: &[u32], timeout: u64) -> Result<(), xen::XenError>;
        increase_reservation(&self, dom: DomId, order: Order, flags: xen::MemFlags, out: &mut [Mfn]) -> Result<usize, xen::XenError>;
        decrease_reservation(&self, dom: DomId, order: Order, gfns: &[Gfn]) -> Result<usize, xen::XenError>;
        populate_physmap(&self, dom: DomId, order: Order, flags: xen::MemFlags, gfns: &mut [Gfn]) -> Result<usize, xen::XenError>;
        exchange(&self, req: &mut xen::ExchangeRequest<'_>) -> xen::ExchangeOutcome;
        maximum_ram_page(&self) -> Result<Mfn, xen::XenError>;
        machphys_mfn_list(&self, out: &mut [Mfn]) -> Result<usize, xen::XenError>;
        map_foreign_batch(&self, foreign: DomId, frames: &[Gfn], gfns: &[Gfn], errs: &mut [xen::XenStatus]) -> Result<(), xen::XenError>;
        remove_from_physmap(&self, gfn: Gfn) -> Result<(), xen::XenError>;
        multicall_remove_from_physmap(&self, gfns: &[Gfn], results: &mut [Result<(), xen::XenError>]) -> xen::MulticallOutcome;
        add_to_physmap(&self, space: u16, idx: u64, gfn: Gfn) -> Result<(), xen::XenError>;
        gnttab_query_size(&self, dom: DomId) -> Result<xen::abi::gnttab::QuerySize, xen::XenError>;
        gnttab_map(&self, ops: &mut [xen::abi::gnttab::MapGrantRef]) -> Result<(), xen::XenError>;
        gnttab_unmap(&self, ops: &mut [xen::abi::gnttab::UnmapGrantRef]) -> Result<(), xen::XenError>;
        gnttab_copy(&self, ops: &mut [xen::abi::gnttab::GntCopy]) -> Result<(), xen::XenError>;
        domctl_createdomain(&self, domid: DomId, config: &mut xen::abi::DomctlCreateDomain) -> Result<DomId, xen::XenError>;
        domctl_max_mem(&self, dom: DomId, max_kib: u64) -> Result<(), xen::XenError>;
        domctl_destroydomain(&self, dom: DomId) -> Result<(), xen::XenError>;
        acquire_resource_size(&self, dom: DomId, kind: u16, id: u32) -> Result<u32, xen::XenError>;
        acquire_resource(&self, dom: DomId, kind: u16, id: u32, frame: u64, gfns: &mut [Gfn]) -> Result<(), xen::XenError>;
    }
}

/// A PVH domU with `pages` of RAM, its RAM cut by pinned frames every
/// `cut` frames (0: none), and the agent's table for it.
fn domu(pages: u64, cut: u64) -> (XenModel, RegionTable) {
    let m = XenModel::new(1 << 16);
    m.add_domain(DomainConfig::pvh_domu(DOM, pages)).unwrap();
    m.set_current(DOM).unwrap();
    let mut buf = [E820Entry::default(); 8];
    let n = m.memory_map(&mut buf).unwrap();
    let map = MemoryMap::from_e820(&buf[..n]).unwrap();
    let mut t = initial_table(&map, GapPolicy::X86, Gfn(pages), &image_at(0x100, 0x100)).unwrap();
    if cut > 0 {
        for g in (0x200..pages).step_by(cut as usize) {
            t.modify(
                FrameRange::new(Gfn(g), PageCount(1)).unwrap(),
                Change {
                    set: RegionFlags::PINNED,
                    ..Change::default()
                },
            )
            .unwrap();
        }
    }
    (m, t)
}

/// An identity map that takes a table frame from the table for every
/// change of less than a 2 MiB block and gives it back (as a split and a
/// later merge would): allocation amid the engine's records.
struct TableTaking;

impl IdentityMap for TableTaking {
    fn unmap(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        if range.len().0 % 512 != 0 {
            let f = t.alloc_frame()?;
            t.free_frame(f);
        }
        Ok(())
    }

    fn map(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        self.unmap(t, range)
    }
}

/// The table agrees with the model's p2m frame by frame, and Xen's count
/// with the engine's accounting.
fn consistent(m: &XenModel, t: &RegionTable, expected: PageCount) {
    m.check_conservation().unwrap();
    let p2m = m.p2m(DOM);
    for r in t.iter() {
        for g in r.range.start().0..r.range.end().0 {
            if r.kind.is_populated_ram() {
                assert!(p2m.contains_key(&Gfn(g)), "{g:#x} is not populated");
            } else if r.kind == RegionKind::Ballooned {
                assert!(
                    !p2m.contains_key(&Gfn(g)),
                    "{g:#x} is ballooned but populated"
                );
            }
        }
    }
    let tot = m.tot_pages(DOM).unwrap();
    assert_eq!(t.count_where(|r| r.kind.is_populated_ram()).0, tot);
    assert_eq!(expected.0, tot, "the engine's accounting vs Xen");
    assert_eq!(t.check_invariants(), Ok(()));
}

fn reservation_oom(e: &ReservationError) -> bool {
    matches!(
        e,
        ReservationError::OutOfMemory(_)
            | ReservationError::Table(RegionError::OutOfMemory(_))
            | ReservationError::IdentityMap(PagingError::OutOfMemory(_))
    )
}

#[derive(Clone, Copy, Debug)]
enum Balloon {
    Down(u64),
    Up(u64),
    Release(u64, u64),
}

/// `step` after `before` (done with an unlimited heap), under every budget.
fn engine_step(strategy: Batching, cut: u64, identity: bool, before: &[Balloon], step: Balloon) {
    let run = |e: &mut Engine<'_, Model<'_>>, t: &mut RegionTable, s: Balloon| match s {
        Balloon::Down(n) => e.decrease(t, PageCount(n)),
        Balloon::Up(n) => e.increase(t, PageCount(n)),
        Balloon::Release(s, n) => {
            e.release_frames(t, FrameRange::new(Gfn(s), PageCount(n)).unwrap())
        }
    };
    let name = format!("{step:?} after {before:?} ({strategy:?}, cut {cut}, identity {identity})");
    for k in 0..MAX_BUDGET {
        let (m, mut t) = domu(4096, cut);
        let x = Model(&m);
        let cur = x.current_reservation(SELF).unwrap();
        let mut e = Engine::new(&x, strategy, cur, x.features().unwrap());
        if identity {
            e = e.with_identity_map(&TableTaking);
        }
        for &s in before {
            run(&mut e, &mut t, s).unwrap();
        }
        // No room to grow: every growth asks the heap.
        let mut t = t.clone();
        let snapshot = t.clone();
        let calls = m.calls(xenmem_model::Op::DecreaseReservation)
            + m.calls(xenmem_model::Op::PopulatePhysmap);
        let (r, refused) = with_budget(k, || run(&mut e, &mut t, step));
        consistent(&m, &t, e.expected());
        match r {
            Ok(()) => {
                assert!(
                    !refused,
                    "{name}: a refused allocation was swallowed (budget {k})"
                );
                return;
            }
            Err(err) => {
                assert!(
                    refused,
                    "{name}: budget {k}: failed without running out: {err:?}"
                );
                assert!(reservation_oom(&err), "{name}: budget {k}: {err:?}");
                let now = m.calls(xenmem_model::Op::DecreaseReservation)
                    + m.calls(xenmem_model::Op::PopulatePhysmap);
                if now == calls {
                    // Nothing asked of Xen: nothing changed.
                    table_unchanged(&t, &snapshot);
                }
            }
        }
    }
    panic!("{name}: still failing after {MAX_BUDGET} allocations");
}

#[test]
fn ballooning_against_the_model_loses_nothing() {
    let o9 = Batching::xenmem(Order::new(9).unwrap());
    for (strategy, cut) in [(o9, 0), (Batching::MINI_OS, 0), (Batching::MINI_OS, 37)] {
        for identity in [false, true] {
            engine_step(strategy, cut, identity, &[], Balloon::Down(1024 + 5));
            engine_step(
                strategy,
                cut,
                identity,
                &[Balloon::Down(1024 + 5)],
                Balloon::Up(700),
            );
            engine_step(
                strategy,
                cut,
                identity,
                &[Balloon::Down(1024 + 5)],
                Balloon::Up(1024 + 5),
            );
            // Between two pinned frames of the cut table.
            engine_step(strategy, cut, identity, &[], Balloon::Release(772, 30));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random sequences, the last step under every budget.
    #[test]
    fn random_balloon_steps_lose_nothing(
        before in proptest::collection::vec(
            prop_oneof![
                (1u64..600).prop_map(Balloon::Down),
                (1u64..600).prop_map(Balloon::Up),
            ],
            0..4,
        ),
        last in prop_oneof![(1u64..900).prop_map(Balloon::Down), (1u64..900).prop_map(Balloon::Up)],
        cut in prop_oneof![Just(0u64), 5u64..60],
        identity in any::<bool>(),
    ) {
        // Steps that cannot be done (more than there is) are dropped.
        let (m, mut t) = domu(4096, cut);
        let x = Model(&m);
        let cur = x.current_reservation(SELF).unwrap();
        let mut e = Engine::new(&x, Batching::MINI_OS, cur, x.features().unwrap());
        let mut ok = Vec::new();
        for &s in &before {
            let r = match s {
                Balloon::Down(n) => e.decrease(&mut t, PageCount(n)),
                Balloon::Up(n) => e.increase(&mut t, PageCount(n)),
                Balloon::Release(..) => Ok(()),
            };
            if r.is_ok() {
                ok.push(s);
            } else {
                break;
            }
        }
        let last_ok = match last {
            Balloon::Down(n) => e.decrease(&mut t, PageCount(n)).is_ok(),
            Balloon::Up(n) => e.increase(&mut t, PageCount(n)).is_ok(),
            Balloon::Release(..) => false,
        };
        if last_ok && ok.len() == before.len() {
            engine_step(Batching::MINI_OS, cut, identity, &ok, last);
        }
    }
}

// ---- the xenstore client ---------------------------------------------------

/// One request of each kind, with the heap refusing its k-th allocation on:
/// the typed error, and the client goes on (the next request gets its own
/// reply: a reply skipped for want of memory is not taken for another's).
#[test]
fn xenstore_requests_fail_cleanly_and_the_client_goes_on() {
    use std::cell::RefCell;
    use xenmem::xenstore::{XsClient, XsError};
    use xenmem_model::xenstore::XsModel;

    type Req = fn(&mut dyn Requests) -> Result<(), XsError>;
    trait Requests {
        fn write(&mut self, p: &str, v: &[u8]) -> Result<(), XsError>;
        fn read(&mut self, p: &str) -> Result<Vec<u8>, XsError>;
        fn directory(&mut self, p: &str) -> Result<Vec<String>, XsError>;
        fn domain_path(&mut self) -> Result<String, XsError>;
        fn watch(&mut self, p: &str, t: &str) -> Result<(), XsError>;
    }
    impl<N, W> Requests for XsClient<N, W>
    where
        N: FnMut(u32) -> Result<(), xen::XenError>,
        W: FnMut(u32) -> Result<(), xen::XenError>,
    {
        fn write(&mut self, p: &str, v: &[u8]) -> Result<(), XsError> {
            XsClient::write(self, p, v)
        }
        fn read(&mut self, p: &str) -> Result<Vec<u8>, XsError> {
            XsClient::read(self, p)
        }
        fn directory(&mut self, p: &str) -> Result<Vec<String>, XsError> {
            XsClient::directory(self, p)
        }
        fn domain_path(&mut self) -> Result<String, XsError> {
            XsClient::domain_path(self, DomId(1))
        }
        fn watch(&mut self, p: &str, t: &str) -> Result<(), XsError> {
            XsClient::watch(self, p, t)
        }
    }
    let requests: [(&str, Req); 5] = [
        ("write", |c| c.write("data/y", b"2")),
        ("read", |c| c.read("data/x").map(|v| assert_eq!(v, b"1"))),
        ("directory", |c| {
            c.directory("data").map(|d| assert_eq!(d, ["x"]))
        }),
        ("domain_path", |c| {
            c.domain_path().map(|p| assert_eq!(p, "/local/domain/1"))
        }),
        ("watch", |c| c.watch("data", "tok")),
    ];
    for (name, req) in requests {
        let mut done = false;
        for k in 0..MAX_BUDGET {
            let m = RefCell::new(XsModel::new(1, u32::MAX - 100));
            m.borrow_mut().external_write("data/x", b"1");
            let page = m.borrow().page();
            let notify = |_| {
                let _u = Unbudgeted::new();
                m.borrow_mut().notify();
                Ok(())
            };
            let wait = |_| {
                let _u = Unbudgeted::new();
                m.borrow_mut().step();
                Ok(())
            };
            // SAFETY: the model owns the page and outlives the client.
            let mut c = unsafe { XsClient::new(page, 9, notify, wait, 50) };
            let (r, refused) = with_budget(k, || req(&mut c));
            match r {
                Ok(()) => {
                    assert!(!refused, "{name}: a refused allocation was swallowed ({k})");
                    done = true;
                }
                Err(e) => {
                    assert!(refused, "{name}: budget {k}: {e:?}");
                    assert!(matches!(e, XsError::OutOfMemory(_)), "{name}: {k}: {e:?}");
                }
            }
            assert_eq!(c.read("data/x").unwrap(), b"1", "{name}: budget {k}");
            if done {
                assert!(k > 0, "{name} allocates nothing?");
                break;
            }
        }
        assert!(done, "{name}");
    }
}

// ---- grants, foreign maps and acquired resources against the model ---------

mod mappings {
    use super::*;
    use xenmem::acquire::{acquire, AcquireError, Resource};
    use xenmem::grant::{map_grants, GrantError, GrantMap, GrantRef, GrantTable};
    use xenmem::leak::ReleaseError;
    use xenmem::mapping::{map_foreign, ForeignMap, MapError, MapTarget, VaSpace};
    use xenmem::xen::abi::gnttab::{GrantEntryV1, GTF_PERMIT_ACCESS};
    use xenmem::xen::domctl::CreateDomain;
    use xenmem_model::window::BufTables;

    const D0: DomId = DomId(0);
    const D1: DomId = DomId(1);

    /// The model's page tables, their own allocations not counted.
    struct Tables<'m>(BufTables<'m>);

    impl MapTarget for Tables<'_> {
        fn map(
            &mut self,
            va: VirtAddr,
            pa: GuestPhysAddr,
            pages: PageCount,
            attrs: Attrs,
            t: &mut RegionTable,
        ) -> Result<(), PagingError> {
            let _u = Unbudgeted::new();
            self.0.map(va, pa, pages, attrs, t)
        }

        fn unmap(
            &mut self,
            va: VirtAddr,
            pages: PageCount,
            t: &mut RegionTable,
        ) -> Result<(), PagingError> {
            let _u = Unbudgeted::new();
            self.0.unmap(va, pages, t)
        }

        fn window(&self) -> Window {
            MapTarget::window(&self.0)
        }
    }

    /// Dom0's agent: its RAM, a hole above it, page tables reaching the
    /// model's memory and a window.
    struct Agent<'m> {
        t: RegionTable,
        pt: Tables<'m>,
        vas: VaSpace,
    }

    /// A PVH dom0 (the caller) and a domU; the domU grants dom0 its frames
    /// 0x10.. at references 8..16 (read-write).
    fn world() -> XenModel {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        m.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
        for r in 8..16u32 {
            m.gnttab_write_entry(
                D1,
                r,
                GrantEntryV1 {
                    flags: GTF_PERMIT_ACCESS,
                    domid: 0,
                    frame: 0x10 + r,
                },
            )
            .unwrap();
        }
        m.set_current(D0).unwrap();
        m
    }

    fn agent(m: &XenModel) -> Agent<'_> {
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(0), PageCount(4096)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        ))
        .unwrap();
        t.add(Region::new(
            FrameRange::new(Gfn(0x100000), PageCount(0x1000)).unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        let pt = Tables(BufTables::new(16).on_model(m, D0));
        let vas = VaSpace::new(MapTarget::window(&pt));
        Agent { t, pt, vas }
    }

    /// What Xen holds for dom0: grant mappings and handles, foreign and
    /// acquired frames, its grant table's frames and entries, its p2m.
    fn xen_state(m: &XenModel) -> Vec<(&'static str, String)> {
        // The size first: asking makes the model's table, which it
        // otherwise makes on the first grant-table hypercall.
        let size = m.gnttab_size(D0);
        let frames = format!("{size:?} {:?}", m.gnttab_frame_gfns(D0));
        let entries = format!(
            "{:?}",
            (0..1024).map(|r| m.gnttab_entry(D0, r)).collect::<Vec<_>>()
        );
        vec![
            ("grant-table frames", frames),
            ("grant entries", entries),
            ("grant mappings", format!("{:?}", m.gnttab_host_maps(D0))),
            ("grant handles", format!("{:?}", m.gnttab_handles(D0))),
            ("foreign frames", format!("{:?}", m.foreign(D0))),
            ("acquired frames", format!("{:?}", m.acquired(D0))),
            ("p2m", format!("{:?}", m.p2m(D0))),
        ]
    }

    /// What changed in Xen's state (by name), if anything.
    fn xen_changes(
        now: &[(&'static str, String)],
        before: &[(&'static str, String)],
    ) -> Vec<&'static str> {
        now.iter()
            .zip(before)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }

    /// `op` on a fresh world after `prepare` (unlimited), under budgets 0,
    /// 1, 2, ... until it succeeds. Every failure is the typed
    /// out-of-memory error (`oom`), and the region table, the page-table
    /// map, the window, what Xen holds and `snap` of the prepared state are
    /// as before. Returns the budget it succeeded with.
    fn on_model<P, R, E: Debug>(
        name: &str,
        prepare: impl Fn(&Model<'_>, &mut Agent<'_>) -> P,
        snap: impl Fn(&P) -> String,
        op: impl Fn(&Model<'_>, &mut Agent<'_>, &mut P) -> Result<R, E>,
        oom: impl Fn(&E) -> bool,
    ) -> u64 {
        for k in 0..MAX_BUDGET {
            let m = world();
            let x = Model(&m);
            let mut a = agent(&m);
            let mut p = prepare(&x, &mut a);
            let before = (
                a.t.clone(),
                a.pt.0.map.clone(),
                a.vas.clone(),
                xen_state(&m),
                snap(&p),
            );
            let (r, refused) = with_budget(k, || op(&x, &mut a, &mut p));
            match r {
                Ok(_) => {
                    assert!(
                        !refused,
                        "{name}: a refused allocation was swallowed (budget {k})"
                    );
                    return k;
                }
                Err(e) => {
                    assert!(
                        refused,
                        "{name}: budget {k}: failed without running out: {e:?}"
                    );
                    assert!(
                        oom(&e),
                        "{name}: budget {k}: not the out-of-memory error: {e:?}"
                    );
                    table_unchanged(&a.t, &before.0);
                    assert_eq!(
                        a.pt.0.map, before.1,
                        "{name}: budget {k}: the page tables changed"
                    );
                    assert_eq!(a.vas, before.2, "{name}: budget {k}: the window changed");
                    let changed = xen_changes(&xen_state(&m), &before.3);
                    assert!(
                        changed.is_empty(),
                        "{name}: budget {k}: Xen's {changed:?} changed"
                    );
                    assert_eq!(snap(&p), before.4, "{name}: budget {k}: the handle changed");
                }
            }
        }
        panic!("{name}: still failing after {MAX_BUDGET} allocations");
    }

    fn grant_oom(e: &GrantError) -> bool {
        matches!(
            e,
            GrantError::OutOfMemory(_)
                | GrantError::Table(RegionError::OutOfMemory(_))
                | GrantError::Paging(PagingError::OutOfMemory(_))
        )
    }

    fn map_oom(e: &MapError) -> bool {
        matches!(
            e,
            MapError::OutOfMemory(_)
                | MapError::Table(RegionError::OutOfMemory(_))
                | MapError::Paging(PagingError::OutOfMemory(_))
        )
    }

    fn acquire_oom(e: &AcquireError) -> bool {
        matches!(
            e,
            AcquireError::OutOfMemory(_)
                | AcquireError::Table(RegionError::OutOfMemory(_))
                | AcquireError::Paging(PagingError::OutOfMemory(_))
        )
    }

    /// References 8, 9, 10 and 13 (two runs: two table records).
    fn refs() -> [GrantRef; 4] {
        [GrantRef(8), GrantRef(9), GrantRef(10), GrantRef(13)]
    }

    fn map_some(x: &Model<'_>, a: &mut Agent<'_>) -> Result<GrantMap, GrantError> {
        map_grants(x, &mut a.t, &mut a.pt, &mut a.vas, D1, &refs(), false)
    }

    /// Put a refused release's handle back where it was.
    fn keep<H, E>(slot: &mut Option<H>, r: Result<(), ReleaseError<H, E>>) -> Result<(), E> {
        r.map_err(|e| {
            let (h, e) = e.into_parts();
            *slot = Some(h);
            e
        })
    }

    #[test]
    fn grant_maps_and_releases_fail_cleanly() {
        let k = on_model(
            "map_grants",
            |_, _| (),
            |_| String::new(),
            |x, a, _| map_some(x, a),
            grant_oom,
        );
        assert!(k > 0, "map_grants allocates nothing?");
        on_model(
            "GrantMap::release",
            |x, a| Some(map_some(x, a).unwrap()),
            |g: &Option<GrantMap>| format!("{:?}", g.as_ref().map(|g| g.outstanding())),
            |x, a, g| {
                let h = g.take().unwrap();
                keep(g, h.release(x, &mut a.t, &mut a.pt, &mut a.vas))
            },
            grant_oom,
        );
    }

    fn table_of(x: &Model<'_>, a: &mut Agent<'_>) -> GrantTable {
        GrantTable::setup(x, &mut a.t, &mut a.pt, &mut a.vas, 2).unwrap()
    }

    fn grants(gt: &GrantTable) -> String {
        format!(
            "{:?}",
            (gt.grants().collect::<Vec<_>>(), gt.available(), gt.frames())
        )
    }

    #[test]
    fn the_grant_table_fails_cleanly() {
        let k = on_model(
            "GrantTable::setup",
            |_, _| (),
            |_| String::new(),
            |x, a, _| {
                // A refused setup leaves nothing to release.
                GrantTable::setup(x, &mut a.t, &mut a.pt, &mut a.vas, 2)
                    .map(|mut gt| gt.release(x, &mut a.t, &mut a.pt, &mut a.vas).unwrap())
            },
            grant_oom,
        );
        assert!(k > 0, "setup allocates nothing?");
        on_model(
            "GrantTable::grow",
            table_of,
            grants,
            |x, a, gt| gt.grow(x, &mut a.t, &mut a.pt, &mut a.vas, 1),
            grant_oom,
        );
        let k = on_model(
            "GrantTable::grant_access",
            |x, a| {
                // Four grants: the list is full (a fifth needs memory).
                let mut gt = table_of(x, a);
                for g in 0x20..0x24 {
                    gt.grant_access(&a.t, D1, Gfn(g), true).unwrap();
                }
                gt
            },
            grants,
            |_, a, gt| gt.grant_access(&a.t, D1, Gfn(0x24), false),
            grant_oom,
        );
        assert!(k > 0, "grant_access allocates nothing?");
        let k = on_model(
            "GrantTable::end_access",
            |x, a| {
                let mut gt = table_of(x, a);
                let r = gt.grant_access(&a.t, D1, Gfn(0x20), true).unwrap();
                (gt, r)
            },
            |(gt, _)| grants(gt),
            |_, _, (gt, r)| gt.end_access(*r),
            grant_oom,
        );
        assert_eq!(k, 0, "ending a grant needs no memory");
        on_model(
            "GrantTable::release",
            table_of,
            grants,
            |x, a, gt| gt.release(x, &mut a.t, &mut a.pt, &mut a.vas),
            grant_oom,
        );
    }

    fn foreign_some(x: &Model<'_>, a: &mut Agent<'_>) -> Result<ForeignMap, MapError> {
        let frames = [Gfn(0x10), Gfn(0x11), Gfn(0x30), Gfn(0x12)];
        map_foreign(x, &mut a.t, &mut a.pt, &mut a.vas, D1, &frames, true)
    }

    #[test]
    fn foreign_maps_and_releases_fail_cleanly() {
        let k = on_model(
            "map_foreign",
            |_, _| (),
            |_| String::new(),
            |x, a, _| foreign_some(x, a),
            map_oom,
        );
        assert!(k > 0, "map_foreign allocates nothing?");
        on_model(
            "ForeignMap::release",
            |x, a| Some(foreign_some(x, a).unwrap()),
            |f: &Option<ForeignMap>| format!("{:?}", f.as_ref().map(|f| f.outstanding())),
            |x, a, f| {
                let h = f.take().unwrap();
                keep(f, h.release(x, &mut a.t, &mut a.pt, &mut a.vas))
            },
            map_oom,
        );
    }

    /// A helper domain dom0 made (its grant table can be acquired).
    fn helper(x: &Model<'_>) -> DomId {
        let _u = Unbudgeted::new();
        let mut c = CreateDomain::x86_pvh_helper().to_abi().unwrap();
        x.0.domctl_createdomain(D0, &mut c).unwrap()
    }

    #[test]
    fn acquisitions_and_releases_fail_cleanly() {
        let k = on_model(
            "acquire",
            |x, _| helper(x),
            |_| String::new(),
            |x, a, h| {
                acquire(
                    x,
                    &mut a.t,
                    &mut a.pt,
                    &mut a.vas,
                    *h,
                    Resource::GrantTableShared,
                    0,
                    1,
                    true,
                )
            },
            acquire_oom,
        );
        assert!(k > 0, "acquire allocates nothing?");
        on_model(
            "ResourceMap::release",
            |x, a| {
                let h = helper(x);
                Some(
                    acquire(
                        x,
                        &mut a.t,
                        &mut a.pt,
                        &mut a.vas,
                        h,
                        Resource::GrantTableShared,
                        0,
                        1,
                        true,
                    )
                    .unwrap(),
                )
            },
            |r| format!("{:?}", r.as_ref().map(|r| r.outstanding())),
            |x, a, r| {
                let h = r.take().unwrap();
                keep(r, h.release(x, &mut a.t, &mut a.pt, &mut a.vas))
            },
            acquire_oom,
        );
    }
}

/// A machine-contiguous buffer (the repopulate path on a PVH domU, where
/// Xen refuses exchange), under every budget: a refusal before Xen was
/// asked anything leaves the table as it was; after, the table, Xen's p2m
/// and the engine's accounting agree.
#[test]
fn contiguous_buffers_lose_nothing() {
    for pages in [1u64, 16, 64] {
        let name = format!("alloc_contiguous of {pages} pages");
        let mut done = false;
        for k in 0..MAX_BUDGET {
            let (m, t) = domu(4096, 0);
            let x = Model(&m);
            let cur = x.current_reservation(SELF).unwrap();
            let mut e = Engine::new(
                &x,
                Batching::xenmem(Order::new(9).unwrap()),
                cur,
                x.features().unwrap(),
            );
            // No room to grow: every growth asks the heap.
            let mut t = t.clone();
            let snapshot = t.clone();
            let calls = || {
                m.calls(xenmem_model::Op::DecreaseReservation)
                    + m.calls(xenmem_model::Op::PopulatePhysmap)
            };
            let before = calls();
            let (r, refused) = with_budget(k, || {
                e.alloc_contiguous(&mut t, pages * PAGE_SIZE, pages * PAGE_SIZE, None)
            });
            consistent(&m, &t, e.expected());
            match r {
                Ok(buf) => {
                    assert!(!refused, "{name}: a refused allocation was swallowed ({k})");
                    e.free_contiguous(&mut t, buf).unwrap();
                    done = true;
                    break;
                }
                Err(err) => {
                    assert!(
                        refused,
                        "{name}: budget {k}: failed without running out: {err:?}"
                    );
                    assert!(reservation_oom(&err), "{name}: budget {k}: {err:?}");
                    if calls() == before {
                        table_unchanged(&t, &snapshot);
                    }
                }
            }
        }
        assert!(done, "{name}: still failing after {MAX_BUDGET} allocations");
    }
}
