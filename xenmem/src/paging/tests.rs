//! Host tests: the walker on fake frames, in every format; the formats bit
//! by bit; the region table as a frame source; a model-based property test.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::aarch64::{self as a64, Stage1Va39, Stage1Va48};
use super::x86_64::{self as x86, X86_64};
use super::*;
use crate::addr::{Gfn, PageCount, PAGE_SIZE};
use crate::region::{FrameRange, Region, RegionFlags, RegionKind, RegionTable, ReservedUse};

// ---- the fake machine -------------------------------------------------------

/// What the walker did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Invalidate(u64),
    InvalidateAll,
    Publish,
    /// [`Tlb::publish_mapping`] of (start, pages), where overridden.
    PublishMapping(u64, u64),
    Alloc(u64),
    Free(u64),
    SwitchRoot(u64),
}

thread_local! {
    static EVENTS: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
}

fn record(e: Event) {
    if matches!(
        e,
        Event::Publish | Event::InvalidateAll | Event::SwitchRoot(_)
    ) {
        WATCHED.with(|w| {
            if let Some(arena) = &*w.borrow() {
                let copy = arena
                    .frames
                    .iter()
                    .map(|t| t.iter().map(|e| e.load(Ordering::Relaxed)).collect())
                    .collect();
                MEMORY_AT.with(|m| m.borrow_mut().push((e.clone(), copy)));
            }
        });
    }
    EVENTS.with(|l| l.borrow_mut().push(e));
}

/// The arena's frames, entry by entry.
type Memory = Vec<Vec<u64>>;

thread_local! {
    /// An arena whose contents are copied at every barrier, flush and switch.
    static WATCHED: RefCell<Option<Rc<Arena>>> = const { RefCell::new(None) };
    /// Those copies, with the event.
    static MEMORY_AT: RefCell<Vec<(Event, Memory)>> = const { RefCell::new(Vec::new()) };
}

/// Copy `arena`'s contents at every barrier, flush and switch from now on
/// (on this thread).
fn watch(arena: &Rc<Arena>) {
    WATCHED.with(|w| *w.borrow_mut() = Some(arena.clone()));
    MEMORY_AT.with(|m| m.borrow_mut().clear());
}

/// The copies taken since the last call.
fn take_memory_at() -> Vec<(Event, Memory)> {
    MEMORY_AT.with(|m| std::mem::take(&mut *m.borrow_mut()))
}

fn take_events() -> Vec<Event> {
    EVENTS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

struct RecordingTlb;

// SAFETY: a test double: no real translation is cached.
unsafe impl Tlb for RecordingTlb {
    fn invalidate_page(va: VirtAddr) {
        record(Event::Invalidate(va.0));
    }
    fn invalidate_all() {
        record(Event::InvalidateAll);
    }
    fn publish_table() {
        record(Event::Publish);
    }
    const SPLIT_IN_PLACE: bool = true;
    unsafe fn switch_root(root: GuestPhysAddr) {
        record(Event::SwitchRoot(root.0));
    }
}

/// The same, for an architecture that needs break-before-make (Arm).
struct BbmTlb;

// SAFETY: a test double: no real translation is cached.
unsafe impl Tlb for BbmTlb {
    fn invalidate_page(va: VirtAddr) {
        RecordingTlb::invalidate_page(va);
    }
    fn invalidate_all() {
        RecordingTlb::invalidate_all();
    }
    fn publish_table() {
        RecordingTlb::publish_table();
    }
    const SPLIT_IN_PLACE: bool = false;
    unsafe fn switch_root(root: GuestPhysAddr) {
        // SAFETY: forwarded.
        unsafe { RecordingTlb::switch_root(root) };
    }
}

/// An architecture whose fresh mappings need publishing only (Arm's
/// [`Tlb::publish_mapping`]: invalid entries are never cached).
#[derive(Debug)]
struct FreshTlb;

// SAFETY: a test double: no real translation is cached.
unsafe impl Tlb for FreshTlb {
    fn invalidate_page(va: VirtAddr) {
        RecordingTlb::invalidate_page(va);
    }
    fn invalidate_all() {
        RecordingTlb::invalidate_all();
    }
    fn publish_table() {
        RecordingTlb::publish_table();
    }
    fn publish_mapping(start: VirtAddr, pages: u64) {
        record(Event::PublishMapping(start.0, pages));
    }
    const SPLIT_IN_PLACE: bool = false;
    unsafe fn switch_root(root: GuestPhysAddr) {
        // SAFETY: forwarded.
        unsafe { RecordingTlb::switch_root(root) };
    }
}

/// Frames `base + i * 4096`; frame 0 of the arena is the root.
struct Arena {
    base: u64,
    frames: Vec<Box<Table>>,
}

impl Arena {
    fn frame(&self, pa: GuestPhysAddr) -> Option<&Table> {
        if pa.0 % PAGE_SIZE != 0 || pa.0 < self.base {
            return None;
        }
        self.frames
            .get(((pa.0 - self.base) / PAGE_SIZE) as usize)
            .map(|b| &**b)
    }
}

struct FakeMemory(Rc<Arena>);

// SAFETY: every frame is its own boxed table, used for nothing else.
unsafe impl TableMemory for FakeMemory {
    fn table(&self, frame: GuestPhysAddr) -> Option<&Table> {
        self.0.frame(frame)
    }
}

/// Hands out the arena's frames 1.., last freed first, filled with garbage
/// (valid-looking entries) so that a table the walker forgets to zero shows.
struct FakeFrames {
    arena: Rc<Arena>,
    free: Vec<u64>,
    live: BTreeSet<u64>,
    /// A frame to hand out that the memory cannot reach.
    bogus: Option<u64>,
}

// SAFETY: frames of the test arena, used by nothing else.
unsafe impl FrameSource for FakeFrames {
    fn alloc_frame(&mut self) -> Result<GuestPhysAddr, PagingError> {
        if let Some(b) = self.bogus.take() {
            self.live.insert(b);
            record(Event::Alloc(b));
            return Ok(GuestPhysAddr(b));
        }
        let pa = self.free.pop().ok_or(PagingError::OutOfFrames)?;
        for e in self.arena.frame(GuestPhysAddr(pa)).unwrap() {
            e.store(0xdead_beef_0000_0fff, Ordering::Relaxed);
        }
        assert!(self.live.insert(pa));
        record(Event::Alloc(pa));
        Ok(GuestPhysAddr(pa))
    }

    fn free_frame(&mut self, frame: GuestPhysAddr) {
        assert!(self.live.remove(&frame.0), "double or foreign free");
        record(Event::Free(frame.0));
        if self.arena.frame(frame).is_some() {
            self.free.push(frame.0);
        }
    }
}

const ARENA_BASE: u64 = 0x10_0000;

type Pt<F, T = RecordingTlb> = PageTable<F, FakeMemory, T>;

/// A page table of format `F` with an empty root and `pool` table frames.
fn setup<F: Format>(window: Window, pool: usize) -> (Pt<F>, FakeFrames) {
    setup_with::<F, RecordingTlb>(window, pool)
}

/// [`setup`] with the TLB instructions `T`.
fn setup_with<F: Format, T: Tlb>(window: Window, pool: usize) -> (Pt<F, T>, FakeFrames) {
    let arena = Rc::new(Arena {
        base: ARENA_BASE,
        frames: (0..=pool)
            .map(|_| Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect(),
    });
    let frames = FakeFrames {
        arena: arena.clone(),
        free: (1..=pool as u64)
            .rev()
            .map(|i| ARENA_BASE + i * PAGE_SIZE)
            .collect(),
        live: BTreeSet::new(),
        bogus: None,
    };
    // SAFETY: a fresh, empty root in the arena; nothing else uses it.
    let pt =
        unsafe { PageTable::new(GuestPhysAddr(ARENA_BASE), window, FakeMemory(arena)) }.unwrap();
    take_events();
    (pt, frames)
}

/// The table of `level` on the way to `va` (which must exist).
fn table_at<F: Format, T: Tlb>(pt: &Pt<F, T>, va: VirtAddr, level: usize) -> GuestPhysAddr {
    let mut t = pt.root();
    for l in (level + 1..F::LEVELS).rev() {
        let e = raw(pt, t, va, l);
        match F::decode(e, l) {
            Entry::Table { next, .. } => t = next,
            other => panic!("no table at level {l}: {other:?}"),
        }
    }
    t
}

fn slot<F: Format, T: Tlb>(
    pt: &Pt<F, T>,
    table: GuestPhysAddr,
    va: VirtAddr,
    level: usize,
) -> &AtomicU64 {
    let i = ((va.0 >> level_shift(level)) % ENTRIES as u64) as usize;
    &pt.memory().table(table).unwrap()[i]
}

fn raw<F: Format, T: Tlb>(pt: &Pt<F, T>, table: GuestPhysAddr, va: VirtAddr, level: usize) -> u64 {
    slot(pt, table, va, level).load(Ordering::Relaxed)
}

fn leaf_entry<F: Format>(pt: &Pt<F>, va: VirtAddr) -> u64 {
    raw(pt, table_at(pt, va, 0), va, 0)
}

fn root_is_empty<F: Format>(pt: &Pt<F>) -> bool {
    pt.memory()
        .table(pt.root())
        .unwrap()
        .iter()
        .all(|e| e.load(Ordering::Relaxed) == 0)
}

const ALL_ATTRS: [Attrs; 6] = [
    Attrs::READ_ONLY,
    Attrs::READ_WRITE,
    Attrs::READ_ONLY.with_memory(MemoryType::NonCacheable),
    Attrs::READ_WRITE.with_memory(MemoryType::NonCacheable),
    Attrs::READ_ONLY.device(),
    Attrs::READ_WRITE.device(),
];

// ---- the walker, in every format --------------------------------------------

/// `bad`: an entry the format does not support, and its level (written on
/// the way to the window's ninth page once its tables exist).
fn round_trip<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let w = window.start().0;
    let vas = [w, w + PAGE_SIZE, w + 0x20_0000, window.end().0 - PAGE_SIZE];
    for (i, &va) in vas.iter().enumerate() {
        let pa = GuestPhysAddr(0x4000_0000 + i as u64 * 0x7000);
        let attrs = ALL_ATTRS[i % ALL_ATTRS.len()];
        let flush = pt.map_4k(VirtAddr(va), pa, attrs, &mut frames).unwrap();
        assert_eq!((flush.start(), flush.pages()), (VirtAddr(va), 1));
        flush.flush();
        assert_eq!(
            pt.translate(VirtAddr(va + 0x321)),
            Some((GuestPhysAddr(pa.0 + 0x321), attrs))
        );
        assert_eq!(leaf_entry(&pt, VirtAddr(va)), F::page(pa, attrs));
    }
    // Every attribute combination round-trips through the entry.
    for attrs in ALL_ATTRS
        .into_iter()
        .chain([Attrs::READ_WRITE.executable()])
    {
        assert_eq!(
            F::decode(F::page(GuestPhysAddr(0x5000), attrs), 0),
            Entry::Leaf {
                pa: GuestPhysAddr(0x5000),
                attrs
            }
        );
    }
    assert!(!frames.live.is_empty());
    for (i, &va) in vas.iter().enumerate() {
        let (pa, flush) = pt.unmap_4k(VirtAddr(va), &mut frames).unwrap();
        flush.flush();
        assert_eq!(pa, GuestPhysAddr(0x4000_0000 + i as u64 * 0x7000));
        assert_eq!(pt.translate(VirtAddr(va)), None);
    }
    assert!(frames.live.is_empty(), "tables left: {:?}", frames.live);
    assert!(root_is_empty(&pt));
}

/// `map_pinned`: the window's last page, mapped and taken out of the
/// window for good; a second one comes below it; out of frames, nothing
/// changes.
fn pinned<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let last = VirtAddr(window.end().0 - PAGE_SIZE);
    let va = pt
        .map_pinned(GuestPhysAddr(0x39000), Attrs::READ_WRITE, &mut frames)
        .unwrap();
    assert_eq!(va, last);
    assert_eq!(
        pt.translate(last),
        Some((GuestPhysAddr(0x39000), Attrs::READ_WRITE))
    );
    assert_eq!(pt.window().end(), last);
    assert_eq!(pt.window().start(), window.start());
    // Nothing can map over it or unmap it any more.
    assert_eq!(
        pt.map_4k(last, GuestPhysAddr(0x8000), Attrs::READ_WRITE, &mut frames)
            .err(),
        Some(PagingError::OutsideWindow(last))
    );
    assert_eq!(
        pt.unmap_4k(last, &mut frames).err(),
        Some(PagingError::OutsideWindow(last))
    );
    let second = pt
        .map_pinned(GuestPhysAddr(0x3a000), Attrs::READ_ONLY, &mut frames)
        .unwrap();
    assert_eq!(second, VirtAddr(last.0 - PAGE_SIZE));
    // Out of table frames: the window is as it was.
    let (mut pt, mut frames) = setup::<F>(window, 0);
    assert!(pt
        .map_pinned(GuestPhysAddr(0x39000), Attrs::READ_WRITE, &mut frames)
        .is_err());
    assert_eq!(pt.window(), window);
}

/// A map's flush publishes what it wrote into invalid entries and
/// invalidates nothing; an unmap's flush, and a failed map's roll-back,
/// still invalidate.
fn fresh_flushes<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup_with::<F, FreshTlb>(window, 16);
    let va = VirtAddr(window.start().0 + 3 * PAGE_SIZE);
    let n = FLUSH_ALL_THRESHOLD + 1;
    let f = pt
        .map_range(
            va,
            GuestPhysAddr(0),
            PageCount(n),
            Attrs::READ_WRITE,
            &mut frames,
        )
        .unwrap();
    take_events();
    f.flush();
    assert_eq!(take_events(), [Event::PublishMapping(va.0, n)]);
    let one = VirtAddr(va.0 + n * PAGE_SIZE);
    pt.map_4k(one, GuestPhysAddr(0x8000), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .flush();
    assert_eq!(take_events(), [Event::PublishMapping(one.0, 1)]);
    pt.unmap_4k(one, &mut frames).unwrap().1.flush();
    assert_eq!(take_events(), [Event::Invalidate(one.0)]);
    // A map that runs into a mapped page rolls back: the pages it had
    // mapped are unmapped and invalidated, not published.
    let before = VirtAddr(va.0 - 2 * PAGE_SIZE);
    let e = pt.map_range(
        before,
        GuestPhysAddr(0x10_0000),
        PageCount(3),
        Attrs::READ_WRITE,
        &mut frames,
    );
    assert!(matches!(e, Err(PagingError::AlreadyMapped { .. })), "{e:?}");
    let ev = take_events();
    assert!(ev.contains(&Event::Invalidate(before.0)), "{ev:?}");
    assert!(
        !ev.iter().any(|e| matches!(e, Event::PublishMapping(..))),
        "{ev:?}"
    );
    pt.unmap_range(va, PageCount(n), &mut frames)
        .unwrap()
        .flush();
    let ev = take_events();
    assert_eq!(ev.last(), Some(&Event::InvalidateAll), "{ev:?}");
}

fn flushes<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let va = VirtAddr(window.start().0 + 3 * PAGE_SIZE);
    let f = pt
        .map_4k(va, GuestPhysAddr(0x8000), Attrs::READ_WRITE, &mut frames)
        .unwrap();
    // One new table per level below the root, each zeroed and published
    // before it is linked; nothing invalidated yet.
    let ev = take_events();
    assert_eq!(ev.len(), 2 * (F::LEVELS - 1));
    for pair in ev.chunks(2) {
        assert!(matches!(pair, [Event::Alloc(_), Event::Publish]), "{ev:?}");
    }
    f.flush();
    assert_eq!(take_events(), [Event::Invalidate(va.0)]);
    let f = pt
        .map_4k(
            VirtAddr(va.0 + PAGE_SIZE),
            GuestPhysAddr(0x9000),
            Attrs::READ_ONLY,
            &mut frames,
        )
        .unwrap();
    f.ignore();
    assert_eq!(take_events(), []);
    // Unmapping the last page frees the tables: invalidated before freed.
    pt.unmap_4k(VirtAddr(va.0 + PAGE_SIZE), &mut frames)
        .unwrap()
        .1
        .flush();
    assert_eq!(take_events(), [Event::Invalidate(va.0 + PAGE_SIZE)]);
    let (_, f) = pt.unmap_4k(va, &mut frames).unwrap();
    let ev = take_events();
    assert_eq!(ev[0], Event::Invalidate(va.0));
    assert_eq!(ev.len(), F::LEVELS);
    assert!(ev[1..].iter().all(|e| matches!(e, Event::Free(_))));
    f.flush();
    assert_eq!(take_events(), [Event::Invalidate(va.0)]);
    // A long range is flushed whole.
    let f = pt
        .map_range(
            va,
            GuestPhysAddr(0),
            PageCount(FLUSH_ALL_THRESHOLD + 1),
            Attrs::READ_ONLY,
            &mut frames,
        )
        .unwrap();
    take_events();
    f.flush();
    assert_eq!(take_events(), [Event::InvalidateAll]);
    let f = pt
        .unmap_range(va, PageCount(FLUSH_ALL_THRESHOLD), &mut frames)
        .unwrap();
    take_events();
    f.flush();
    assert_eq!(take_events().len(), FLUSH_ALL_THRESHOLD as usize);
}

fn errors<F: Format>(window: Window, non_canonical: u64) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let va = VirtAddr(window.start().0 + 0x40_0000);
    let pa = GuestPhysAddr(0x1234_5000);
    let rw = Attrs::READ_WRITE;
    let mut map =
        |pt: &mut Pt<F>, va, pa, attrs| pt.map_4k(va, pa, attrs, &mut frames).map(Flush::ignore);
    assert_eq!(
        map(&mut pt, VirtAddr(va.0 + 8), pa, rw),
        Err(PagingError::MisalignedVirt(VirtAddr(va.0 + 8)))
    );
    assert_eq!(
        map(&mut pt, va, GuestPhysAddr(pa.0 + 1), rw),
        Err(PagingError::MisalignedPhys(GuestPhysAddr(pa.0 + 1)))
    );
    let below = VirtAddr(window.start().0 - PAGE_SIZE);
    assert_eq!(
        map(&mut pt, below, pa, rw),
        Err(PagingError::OutsideWindow(below))
    );
    // (The aarch64 39-bit window ends where the address space does.)
    let end_error = if F::is_canonical(window.end()) {
        PagingError::OutsideWindow(window.end())
    } else {
        PagingError::NonCanonical(window.end())
    };
    assert_eq!(map(&mut pt, window.end(), pa, rw), Err(end_error));
    assert_eq!(
        map(&mut pt, VirtAddr(non_canonical), pa, rw),
        Err(PagingError::NonCanonical(VirtAddr(non_canonical)))
    );
    assert_eq!(pt.translate(VirtAddr(non_canonical)), None);
    assert_eq!(
        map(&mut pt, va, pa, rw.executable()),
        Err(PagingError::Executable)
    );
    let too_high = GuestPhysAddr(1 << F::PA_BITS);
    assert_eq!(
        map(&mut pt, va, too_high, rw),
        Err(PagingError::PhysTooHigh(too_high))
    );
    pt.limit_phys_bits(40);
    assert_eq!(pt.phys_end(), GuestPhysAddr(1 << 40));
    assert_eq!(
        map(&mut pt, va, GuestPhysAddr(1 << 40), rw),
        Err(PagingError::PhysTooHigh(GuestPhysAddr(1 << 40)))
    );
    assert_eq!(take_events(), [], "a refused map touched the tables");
    map(&mut pt, va, pa, rw).unwrap();
    assert_eq!(
        map(&mut pt, va, GuestPhysAddr(0x7000), Attrs::READ_ONLY),
        Err(PagingError::AlreadyMapped { va, pa })
    );
    assert_eq!(pt.translate(va), Some((pa, rw)), "a refused map changed it");
    let next = VirtAddr(va.0 + PAGE_SIZE);
    assert_eq!(
        pt.unmap_4k(next, &mut frames).map(|(p, f)| {
            f.ignore();
            p
        }),
        Err(PagingError::NotMapped(next))
    );
    assert_eq!(
        pt.unmap_4k(below, &mut frames).map(|(p, f)| {
            f.ignore();
            p
        }),
        Err(PagingError::OutsideWindow(below))
    );
    // Nothing mapped where the walk ends early, either.
    let far = VirtAddr(window.end().0 - PAGE_SIZE);
    if !window.covers(va.0 & !(level_size(1) - 1), level_size(1))
        || far.0 >> level_shift(1) != va.0 >> level_shift(1)
    {
        assert_eq!(
            pt.unmap_4k(far, &mut frames).map(|(p, f)| {
                f.ignore();
                p
            }),
            Err(PagingError::NotMapped(far))
        );
    }
}

fn out_of_frames<F: Format>(window: Window) {
    // One frame short of the tables a first mapping needs.
    let (mut pt, mut frames) = setup::<F>(window, F::LEVELS - 2);
    let va = window.start();
    assert_eq!(
        pt.map_4k(va, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::OutOfFrames)
    );
    // The tables it did create are gone again, invalidated before freed.
    assert!(frames.live.is_empty());
    assert!(root_is_empty(&pt));
    let ev = take_events();
    let first_free = ev.iter().position(|e| matches!(e, Event::Free(_)));
    if let Some(i) = first_free {
        assert_eq!(ev[i - 1], Event::Invalidate(va.0), "{ev:?}");
    }
    // A frame the memory cannot reach is given back and refused.
    let (mut pt, mut frames) = setup::<F>(window, 4);
    frames.bogus = Some(0x7777_0000);
    assert_eq!(
        pt.map_4k(va, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::Unreachable(GuestPhysAddr(0x7777_0000)))
    );
    assert!(frames.live.is_empty());
    assert!(root_is_empty(&pt));
}

fn huge_pages<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let anchor = VirtAddr(window.start().0);
    pt.map_4k(anchor, GuestPhysAddr(0x1000), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .ignore();
    // A 2 MiB block next to the anchor's level-0 table.
    let block_va = VirtAddr(anchor.0 + level_size(1));
    let l1 = table_at(&pt, anchor, 1);
    let block = F::block(GuestPhysAddr(0x20_0000), Attrs::READ_WRITE, 1).unwrap();
    slot(&pt, l1, block_va, 1).store(block, Ordering::Relaxed);
    let inside = VirtAddr(block_va.0 + 0x5000);
    assert_eq!(
        pt.translate(VirtAddr(inside.0 + 0x10)),
        Some((GuestPhysAddr(0x20_5010), Attrs::READ_WRITE))
    );
    assert_eq!(
        pt.map_4k(inside, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::HugePage {
            va: inside,
            level: 1
        })
    );
    assert_eq!(
        pt.unmap_4k(inside, &mut frames).map(|(p, f)| {
            f.ignore();
            p
        }),
        Err(PagingError::HugePage {
            va: inside,
            level: 1
        })
    );
    // A range running into the block maps nothing.
    let before = VirtAddr(block_va.0 - 2 * PAGE_SIZE);
    assert_eq!(
        pt.map_range(
            before,
            GuestPhysAddr(0),
            PageCount(4),
            Attrs::READ_ONLY,
            &mut frames
        )
        .map(Flush::ignore),
        Err(PagingError::HugePage {
            va: block_va,
            level: 1
        })
    );
    assert_eq!(pt.translate(before), None);
    assert_eq!(
        pt.unmap_range(anchor, PageCount(1), &mut frames)
            .map(Flush::ignore),
        Ok(())
    );
    // The block keeps its tables alive.
    assert!(!frames.live.is_empty());
    assert_eq!(F::block(GuestPhysAddr(0), Attrs::READ_ONLY, 0), None);
}

/// `bad_level`: a level where `bad` (an unsupported encoding) can stand.
fn bad_entries<F: Format>(window: Window, bad: u64, bad_level: usize) {
    let (mut pt, mut frames) = setup::<F>(window, 16);
    let anchor = window.start();
    pt.map_4k(anchor, GuestPhysAddr(0x1000), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .ignore();
    assert_eq!(F::decode(bad, bad_level), Entry::Unsupported);
    let target = VirtAddr(anchor.0 + 8 * PAGE_SIZE);
    let t = table_at(&pt, target, bad_level);
    slot(&pt, t, target, bad_level).store(bad, Ordering::Relaxed);
    let level = bad_level as u8;
    assert_eq!(
        pt.map_4k(target, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::BadEntry { va: target, level })
    );
    assert_eq!(
        pt.unmap_4k(target, &mut frames).map(|(p, f)| {
            f.ignore();
            p
        }),
        Err(PagingError::BadEntry { va: target, level })
    );
    assert_eq!(pt.translate(target), None);
}

fn ranges<F: Format>(window: Window) {
    let (mut pt, mut frames) = setup::<F>(window, 32);
    // Across a 2 MiB boundary: two level-0 tables.
    let va = VirtAddr(window.start().0 + level_size(1) - 2 * PAGE_SIZE);
    let pa = GuestPhysAddr(0x300_0000);
    pt.map_range(va, pa, PageCount(5), Attrs::READ_WRITE, &mut frames)
        .unwrap()
        .flush();
    for i in 0..5 {
        assert_eq!(
            pt.translate(VirtAddr(va.0 + i * PAGE_SIZE)),
            Some((GuestPhysAddr(pa.0 + i * PAGE_SIZE), Attrs::READ_WRITE))
        );
    }
    // Unmapping needs every page mapped.
    let hole = VirtAddr(va.0 + 5 * PAGE_SIZE);
    assert_eq!(
        pt.unmap_range(va, PageCount(6), &mut frames)
            .map(Flush::ignore),
        Err(PagingError::NotMapped(hole))
    );
    assert!(
        pt.translate(va).is_some(),
        "a refused unmap changed something"
    );
    pt.unmap_range(va, PageCount(5), &mut frames)
        .unwrap()
        .flush();
    assert!(frames.live.is_empty());
    // All or nothing: a mapped page in the middle undoes the pages before.
    let mid = VirtAddr(va.0 + 3 * PAGE_SIZE);
    pt.map_4k(mid, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .ignore();
    let live = frames.live.clone();
    take_events();
    assert_eq!(
        pt.map_range(va, pa, PageCount(5), Attrs::READ_WRITE, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::AlreadyMapped {
            va: mid,
            pa: GuestPhysAddr(0)
        })
    );
    for i in [0, 1, 2, 4] {
        assert_eq!(pt.translate(VirtAddr(va.0 + i * PAGE_SIZE)), None);
    }
    assert_eq!(frames.live, live);
    let ev = take_events();
    for i in 0..3 {
        assert!(
            ev.contains(&Event::Invalidate(va.0 + i * PAGE_SIZE)),
            "{ev:?}"
        );
    }
    // Ranges are checked whole before anything changes.
    let last = VirtAddr(window.end().0 - PAGE_SIZE);
    assert_eq!(
        pt.map_range(last, pa, PageCount(2), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::OutsideWindow(window.end()))
    );
    assert_eq!(
        pt.map_range(
            va,
            pa,
            PageCount(2),
            Attrs::READ_ONLY.executable(),
            &mut frames
        )
        .map(Flush::ignore),
        Err(PagingError::Executable)
    );
    assert_eq!(
        pt.map_range(va, pa, PageCount(u64::MAX), Attrs::READ_ONLY, &mut frames)
            .map(Flush::ignore),
        Err(PagingError::Overflow)
    );
    assert_eq!(
        pt.map_range(
            va,
            GuestPhysAddr((1 << F::PA_BITS) - PAGE_SIZE),
            PageCount(2),
            Attrs::READ_ONLY,
            &mut frames
        )
        .map(Flush::ignore),
        Err(PagingError::PhysTooHigh(GuestPhysAddr(1 << F::PA_BITS)))
    );
    assert_eq!(pt.translate(va), None);
    let empty = pt
        .map_range(va, pa, PageCount(0), Attrs::READ_ONLY, &mut frames)
        .unwrap();
    assert_eq!(empty.pages(), 0);
    empty.flush();
    pt.unmap_range(va, PageCount(0), &mut frames)
        .unwrap()
        .ignore();
    assert_eq!(take_events(), []);
}

fn small_windows<F: Format>(start: VirtAddr) {
    // A window smaller than the tables above it: those stay after the
    // last unmap (they map outside the window too); the level-0 table,
    // inside the window, goes.
    let window = Window::new(start, level_size(1)).unwrap();
    let (mut pt, mut frames) = setup::<F>(window, 16);
    pt.map_4k(start, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .ignore();
    let all = frames.live.len();
    assert_eq!(all, F::LEVELS - 1);
    pt.unmap_4k(start, &mut frames).unwrap().1.ignore();
    assert_eq!(frames.live.len(), all - 1);
    pt.map_4k(start, GuestPhysAddr(0), Attrs::READ_ONLY, &mut frames)
        .unwrap()
        .ignore();
    assert_eq!(frames.live.len(), all);
}

fn construction<F: Format>(window: Window) {
    let arena = Rc::new(Arena {
        base: ARENA_BASE,
        frames: vec![Box::new(std::array::from_fn(|_| AtomicU64::new(0)))],
    });
    let mem = || FakeMemory(arena.clone());
    // SAFETY (all three): an empty root in the arena.
    let bad_root = unsafe { Pt::<F>::new(GuestPhysAddr(ARENA_BASE + 8), window, mem()) };
    assert_eq!(
        bad_root.err(),
        Some(PagingError::MisalignedPhys(GuestPhysAddr(ARENA_BASE + 8)))
    );
    let far_root = unsafe { Pt::<F>::new(GuestPhysAddr(0x1000), window, mem()) };
    assert_eq!(
        far_root.err(),
        Some(PagingError::Unreachable(GuestPhysAddr(0x1000)))
    );
    let high = Window::new(VirtAddr(F::LOW_VA_END - PAGE_SIZE), 2 * PAGE_SIZE).unwrap();
    let high_window = unsafe { Pt::<F>::new(GuestPhysAddr(ARENA_BASE), high, mem()) };
    assert_eq!(
        high_window.err(),
        Some(PagingError::NonCanonical(VirtAddr(
            F::LOW_VA_END + PAGE_SIZE - 1
        )))
    );
    let ok = unsafe { Pt::<F>::new(GuestPhysAddr(ARENA_BASE), window, mem()) }.unwrap();
    assert_eq!(ok.window(), window);
    assert!(format!("{ok:?}").contains(F::NAME));
}

// ---- the property test --------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Map {
        slot: usize,
        frame: u64,
        attrs: usize,
    },
    Unmap {
        slot: usize,
    },
    MapRange {
        slot: usize,
        frame: u64,
        pages: u64,
    },
    UnmapRange {
        slot: usize,
        pages: u64,
    },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0..64usize, 0..1024u64, 0..ALL_ATTRS.len()).prop_map(|(slot, frame, attrs)| Op::Map {
            slot,
            frame,
            attrs
        }),
        (0..64usize).prop_map(|slot| Op::Unmap { slot }),
        (0..64usize, 0..1024u64, 1..6u64).prop_map(|(slot, frame, pages)| Op::MapRange {
            slot,
            frame,
            pages
        }),
        (0..64usize, 1..6u64).prop_map(|(slot, pages)| Op::UnmapRange { slot, pages }),
    ];
    prop::collection::vec(op, 1..120)
}

/// Pages of the window the property test uses: near the boundaries of every
/// level, so that tables are shared, created and freed.
fn slots(window: Window) -> Vec<u64> {
    let mut v = Vec::new();
    for boundary in [
        0,
        level_size(1),
        level_size(2),
        level_size(3),
        window.size(),
    ] {
        for delta in [-2i64, -1, 0, 1, 2, 3] {
            let off = boundary as i64 + delta * PAGE_SIZE as i64;
            if off >= 0 && (off as u64) < window.size() {
                v.push(window.start().0 + off as u64);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn check_model<F: Format>(window: Window, ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut pt, mut frames) = setup::<F>(window, 64);
    let slots = slots(window);
    let mut model: HashMap<u64, (GuestPhysAddr, Attrs)> = HashMap::new();
    let in_window = |va: u64| window.contains(VirtAddr(va));
    for op in ops {
        match *op {
            Op::Map { slot, frame, attrs } => {
                let va = slots[slot % slots.len()];
                let (pa, attrs) = (GuestPhysAddr(frame * PAGE_SIZE), ALL_ATTRS[attrs]);
                let r = pt
                    .map_4k(VirtAddr(va), pa, attrs, &mut frames)
                    .map(Flush::flush);
                match model.get(&va) {
                    Some(&(old, _)) => prop_assert_eq!(
                        r,
                        Err(PagingError::AlreadyMapped {
                            va: VirtAddr(va),
                            pa: old
                        })
                    ),
                    None => {
                        prop_assert_eq!(r, Ok(()));
                        model.insert(va, (pa, attrs));
                    }
                }
            }
            Op::Unmap { slot } => {
                let va = slots[slot % slots.len()];
                let r = pt.unmap_4k(VirtAddr(va), &mut frames).map(|(p, f)| {
                    f.flush();
                    p
                });
                match model.remove(&va) {
                    Some((pa, _)) => prop_assert_eq!(r, Ok(pa)),
                    None => prop_assert_eq!(r, Err(PagingError::NotMapped(VirtAddr(va)))),
                }
            }
            Op::MapRange { slot, frame, pages } => {
                let va = slots[slot % slots.len()];
                let pa = GuestPhysAddr(frame * PAGE_SIZE);
                let r = pt
                    .map_range(
                        VirtAddr(va),
                        pa,
                        PageCount(pages),
                        Attrs::READ_WRITE,
                        &mut frames,
                    )
                    .map(Flush::flush);
                let vas: Vec<u64> = (0..pages).map(|i| va + i * PAGE_SIZE).collect();
                if let Some(&out) = vas.iter().find(|&&v| !in_window(v)) {
                    prop_assert_eq!(r, Err(PagingError::OutsideWindow(VirtAddr(out))));
                } else if let Some(&busy) = vas.iter().find(|v| model.contains_key(v)) {
                    prop_assert_eq!(
                        r,
                        Err(PagingError::AlreadyMapped {
                            va: VirtAddr(busy),
                            pa: model[&busy].0
                        })
                    );
                } else {
                    prop_assert_eq!(r, Ok(()));
                    for (i, v) in vas.into_iter().enumerate() {
                        let p = GuestPhysAddr(pa.0 + i as u64 * PAGE_SIZE);
                        model.insert(v, (p, Attrs::READ_WRITE));
                    }
                }
            }
            Op::UnmapRange { slot, pages } => {
                let va = slots[slot % slots.len()];
                let r = pt
                    .unmap_range(VirtAddr(va), PageCount(pages), &mut frames)
                    .map(Flush::flush);
                let vas: Vec<u64> = (0..pages).map(|i| va + i * PAGE_SIZE).collect();
                if let Some(&out) = vas.iter().find(|&&v| !in_window(v)) {
                    prop_assert_eq!(r, Err(PagingError::OutsideWindow(VirtAddr(out))));
                } else if let Some(&hole) = vas.iter().find(|v| !model.contains_key(v)) {
                    prop_assert_eq!(r, Err(PagingError::NotMapped(VirtAddr(hole))));
                } else {
                    prop_assert_eq!(r, Ok(()));
                    for v in vas {
                        model.remove(&v);
                    }
                }
            }
        }
        // Every page near a slot translates as the model says.
        for &s in &slots {
            for va in [s, s + PAGE_SIZE, s + 2 * PAGE_SIZE] {
                let want = model.get(&va).copied();
                prop_assert_eq!(pt.translate(VirtAddr(va)), want, "at {:#x}", va);
            }
        }
    }
    take_events();
    // Unmapping what is left frees every table.
    for (&va, &(pa, _)) in &model {
        let (got, f) = pt.unmap_4k(VirtAddr(va), &mut frames).unwrap();
        f.flush();
        prop_assert_eq!(got, pa);
    }
    if window.covers(
        window.start().0 & !(level_size(F::LEVELS - 1) - 1),
        level_size(F::LEVELS - 1),
    ) {
        prop_assert!(frames.live.is_empty(), "tables left: {:?}", frames.live);
        prop_assert!(root_is_empty(&pt));
    } else {
        // A window smaller than a root entry's range: the tables shared
        // with the outside stay, but hold nothing but each other.
        for &t in &frames.live {
            for e in pt.memory().table(GuestPhysAddr(t)).unwrap() {
                let e = e.load(Ordering::Relaxed);
                prop_assert!(
                    e == 0 || frames.live.contains(&(e & x86::ADDR_MASK & a64::ADDR_MASK)),
                    "entry {:#x} left in table {:#x}",
                    e,
                    t
                );
            }
        }
    }
    // Every table frame was invalidated before it was freed.
    let ev = take_events();
    for (i, e) in ev.iter().enumerate() {
        if matches!(e, Event::Free(_)) {
            prop_assert!(ev[..i].iter().any(|e| matches!(e, Event::Invalidate(_))));
        }
    }
    Ok(())
}

// ---- ranges against page by page --------------------------------------------

/// [`PageTable::map_range`] as it was before it wrote a level-0 table's
/// entries in one go: `map_4k` page by page, undone by `unmap_4k`.
fn map_range_per_page<F: Format>(
    pt: &mut Pt<F>,
    va: VirtAddr,
    pa: GuestPhysAddr,
    pages: u64,
    frames: &mut FakeFrames,
) -> Result<u64, PagingError> {
    // The whole-range checks as `map_range` makes them (the operations
    // below stay in bounds but for the window's end).
    if pages == 0 {
        return pt
            .map_range(va, pa, PageCount(0), Attrs::READ_WRITE, frames)
            .map(|f| f.pages());
    }
    let last = VirtAddr(va.0 + (pages - 1) * PAGE_SIZE);
    if !pt.window().contains(last) {
        return Err(PagingError::OutsideWindow(pt.window().end()));
    }
    for i in 0..pages {
        let off = i * PAGE_SIZE;
        match pt.map_4k(
            VirtAddr(va.0 + off),
            GuestPhysAddr(pa.0 + off),
            Attrs::READ_WRITE,
            frames,
        ) {
            Ok(f) => f.ignore(),
            Err(e) => {
                for j in 0..i {
                    pt.unmap_4k(VirtAddr(va.0 + j * PAGE_SIZE), frames)
                        .unwrap()
                        .1
                        .ignore();
                }
                return Err(e);
            }
        }
    }
    Ok(pages)
}

/// [`PageTable::unmap_range`] as it was: every page checked, then
/// `unmap_4k` page by page.
fn unmap_range_per_page<F: Format>(
    pt: &mut Pt<F>,
    va: VirtAddr,
    pages: u64,
    frames: &mut FakeFrames,
) -> Result<u64, PagingError> {
    if pages == 0 {
        return Ok(0);
    }
    let last = VirtAddr(va.0 + (pages - 1) * PAGE_SIZE);
    if !pt.window().contains(last) {
        return Err(PagingError::OutsideWindow(pt.window().end()));
    }
    for i in 0..pages {
        let page = VirtAddr(va.0 + i * PAGE_SIZE);
        if pt.translate(page).is_none() {
            return Err(PagingError::NotMapped(page));
        }
    }
    for i in 0..pages {
        pt.unmap_4k(VirtAddr(va.0 + i * PAGE_SIZE), frames)
            .unwrap()
            .1
            .ignore();
    }
    Ok(pages)
}

#[derive(Clone, Debug)]
enum RangeOp {
    Page {
        at: usize,
        delta: i64,
    },
    Map {
        at: usize,
        delta: i64,
        pages: u64,
        frame: u64,
    },
    Unmap {
        at: usize,
        delta: i64,
        pages: u64,
    },
}

fn range_ops() -> impl Strategy<Value = Vec<RangeOp>> {
    let delta = -600i64..600;
    let op = prop_oneof![
        (0..4usize, delta.clone()).prop_map(|(at, delta)| RangeOp::Page { at, delta }),
        (0..4usize, delta.clone(), 0..1200u64, 0..4096u64).prop_map(|(at, delta, pages, frame)| {
            RangeOp::Map {
                at,
                delta,
                pages,
                frame,
            }
        }),
        (0..4usize, delta, 0..1200u64).prop_map(|(at, delta, pages)| RangeOp::Unmap {
            at,
            delta,
            pages
        }),
    ];
    prop::collection::vec(op, 1..24)
}

/// The same operations on two trees, ranges through `map_range` /
/// `unmap_range` on one and page by page on the other: the same results,
/// and afterwards the same entries in every table frame and the same
/// frames in use (tables made and freed alike, in the same order).
fn ranges_match_page_by_page<F: Format>(
    window: Window,
    pool: usize,
    ops: &[RangeOp],
) -> Result<(), TestCaseError> {
    let (mut a, mut fa) = setup::<F>(window, pool);
    let (mut b, mut fb) = setup::<F>(window, pool);
    let anchors = [0, level_size(1), 2 * level_size(1), level_size(2)];
    let va_of = |at: usize, delta: i64| {
        let off = anchors[at] as i64 + delta * PAGE_SIZE as i64;
        VirtAddr(
            window.start().0
                + off.clamp(0, window.size() as i64 - 1) as u64 / PAGE_SIZE * PAGE_SIZE,
        )
    };
    for op in ops {
        match *op {
            RangeOp::Page { at, delta } => {
                let va = va_of(at, delta);
                let pa = GuestPhysAddr(0x7000_0000);
                let ra = a
                    .map_4k(va, pa, Attrs::READ_ONLY, &mut fa)
                    .map(Flush::ignore);
                let rb = b
                    .map_4k(va, pa, Attrs::READ_ONLY, &mut fb)
                    .map(Flush::ignore);
                prop_assert_eq!(ra, rb);
            }
            RangeOp::Map {
                at,
                delta,
                pages,
                frame,
            } => {
                let va = va_of(at, delta);
                let pa = GuestPhysAddr(frame * PAGE_SIZE);
                let ra = a
                    .map_range(va, pa, PageCount(pages), Attrs::READ_WRITE, &mut fa)
                    .map(|f| {
                        let n = f.pages();
                        f.ignore();
                        n
                    });
                let rb = map_range_per_page(&mut b, va, pa, pages, &mut fb);
                prop_assert_eq!(ra, rb, "map {:#x} + {}", va.0, pages);
            }
            RangeOp::Unmap { at, delta, pages } => {
                let va = va_of(at, delta);
                let ra = a.unmap_range(va, PageCount(pages), &mut fa).map(|f| {
                    let n = f.pages();
                    f.ignore();
                    n
                });
                let rb = unmap_range_per_page(&mut b, va, pages, &mut fb);
                prop_assert_eq!(ra, rb, "unmap {:#x} + {}", va.0, pages);
            }
        }
        prop_assert_eq!(&fa.live, &fb.live);
        prop_assert_eq!(&fa.free, &fb.free);
        for f in std::iter::once(ARENA_BASE).chain(fa.live.iter().copied()) {
            let (ta, tb) = (
                a.memory().table(GuestPhysAddr(f)).unwrap(),
                b.memory().table(GuestPhysAddr(f)).unwrap(),
            );
            for (i, (x, y)) in ta.iter().zip(tb.iter()).enumerate() {
                prop_assert_eq!(
                    x.load(Ordering::Relaxed),
                    y.load(Ordering::Relaxed),
                    "frame {:#x} entry {}",
                    f,
                    i
                );
            }
        }
    }
    take_events();
    Ok(())
}

// ---- per format -----------------------------------------------------------------

/// The agent's x86_64 window: PML4 slot 4 (2 TiB, 512 GiB).
fn x86_window() -> Window {
    Window::new(VirtAddr(0x200_0000_0000), 512 << 30).unwrap()
}

/// The agent's aarch64 window: the top GiB of the 39-bit space.
fn a64_39_window() -> Window {
    Window::new(VirtAddr(511 << 30), 1 << 30).unwrap()
}

/// A 48-bit window: one level-0 slot (512 GiB) at 1 TiB.
fn a64_48_window() -> Window {
    Window::new(VirtAddr(1 << 40), 512 << 30).unwrap()
}

macro_rules! walker_tests {
    ($name:ident, $format:ty, $window:expr, $non_canonical:expr, $bad:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn map_translate_unmap() {
                round_trip::<$format>($window);
            }

            #[test]
            fn flushes_are_owed_and_tables_invalidated_before_freeing() {
                flushes::<$format>($window);
            }

            #[test]
            fn fresh_mappings_are_published_not_invalidated() {
                fresh_flushes::<$format>($window);
            }

            #[test]
            fn a_pinned_page_leaves_the_window() {
                pinned::<$format>($window);
            }

            #[test]
            fn refusals() {
                errors::<$format>($window, $non_canonical);
            }

            #[test]
            fn out_of_frames_rolls_back() {
                out_of_frames::<$format>($window);
            }

            #[test]
            fn huge_pages_in_the_way() {
                huge_pages::<$format>($window);
            }

            #[test]
            fn unsupported_entries() {
                let (bad, level) = $bad;
                bad_entries::<$format>($window, bad, level);
            }

            #[test]
            fn range_operations() {
                ranges::<$format>($window);
            }

            #[test]
            fn tables_shared_with_the_outside_stay() {
                small_windows::<$format>(VirtAddr($window.start().0 + (5 << 21)));
            }

            #[test]
            fn construction_checks() {
                construction::<$format>($window);
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(96))]
                #[test]
                fn agrees_with_a_model(ops in ops()) {
                    check_model::<$format>($window, &ops)?;
                }

                #[test]
                fn ranges_match_page_by_page(ops in range_ops(), pool in 2..12usize) {
                    super::ranges_match_page_by_page::<$format>($window, pool, &ops)?;
                }

                #[test]
                fn agrees_with_a_model_in_a_small_window(ops in ops()) {
                    let w = Window::new(VirtAddr($window.start().0 + level_size(1) - 4 * PAGE_SIZE), 9 * PAGE_SIZE).unwrap();
                    check_model::<$format>(w, &ops)?;
                }
            }
        }
    };
}

walker_tests!(
    walk_x86_64,
    X86_64,
    x86_window(),
    0x0000_8000_0000_0000,
    (x86::PRESENT | x86::HUGE | 0x1000, 3)
);
walker_tests!(
    walk_aarch64_va39,
    Stage1Va39,
    a64_39_window(),
    1 << 39,
    (a64::VALID | 0x1000, 0)
);
walker_tests!(
    walk_aarch64_va48,
    Stage1Va48,
    a64_48_window(),
    1 << 48,
    (a64::VALID | 0x1000, 3)
);

// ---- the formats, bit by bit ----------------------------------------------------

#[test]
fn x86_64_entries_are_bit_exact() {
    let pa = GuestPhysAddr(0x1234_5000);
    // P (0) | R/W (1), XD (63).
    assert_eq!(X86_64::page(pa, Attrs::READ_WRITE), 0x8000_0000_1234_5003);
    assert_eq!(X86_64::page(pa, Attrs::READ_ONLY), 0x8000_0000_1234_5001);
    // + PCD (4): UC-.
    assert_eq!(
        X86_64::page(pa, Attrs::READ_ONLY.with_memory(MemoryType::NonCacheable)),
        0x8000_0000_1234_5011
    );
    // + PCD (4) | PWT (3): UC.
    assert_eq!(
        X86_64::page(pa, Attrs::READ_WRITE.device()),
        0x8000_0000_1234_501b
    );
    assert_eq!(
        X86_64::page(pa, Attrs::READ_WRITE.executable()),
        0x0000_0000_1234_5003
    );
    // Bits 12..=51 only.
    assert_eq!(
        X86_64::page(GuestPhysAddr(0xfff0_0000_0000_1000), Attrs::READ_ONLY),
        0x8000_0000_0000_1001
    );
    // Tables: P | R/W, nothing else.
    assert_eq!(X86_64::table(GuestPhysAddr(0xabc_d000)), 0xabc_d003);
    // Blocks: + PS (7); address aligned to the block.
    assert_eq!(
        X86_64::block(GuestPhysAddr(0x4000_0000), Attrs::READ_WRITE, 2),
        Some(0x8000_0000_4000_0083)
    );
    assert_eq!(
        X86_64::block(GuestPhysAddr(0x20_1000), Attrs::READ_ONLY, 1),
        Some(0x8000_0000_0020_0081)
    );
    assert_eq!(X86_64::block(pa, Attrs::READ_ONLY, 3), None);
}

#[test]
fn x86_64_decodes_the_boot_map() {
    // boot/x86_64.S: PML4[0] = pdpt | P | RW; PDPT[i] = pd | P | RW;
    // PD[i] = i * 2 MiB | P | RW | PS; PT[i] = page | P | RW.
    let table = Entry::Table {
        next: GuestPhysAddr(0x10_3000),
        limits: TableLimits::NONE,
    };
    assert_eq!(X86_64::decode(0x10_3003, 3), table);
    assert_eq!(X86_64::decode(0x10_3003, 2), table);
    let rwx = Attrs::READ_WRITE.executable();
    assert_eq!(
        X86_64::decode(0x60_0083, 1),
        Entry::Leaf {
            pa: GuestPhysAddr(0x60_0000),
            attrs: rwx
        }
    );
    assert_eq!(
        X86_64::decode(0x10_5003, 0),
        Entry::Leaf {
            pa: GuestPhysAddr(0x10_5000),
            attrs: rwx
        }
    );
    // Not present, whatever else is set.
    assert_eq!(X86_64::decode(0x8000_0000_1234_5002, 0), Entry::Invalid);
    // PS in a PML4 entry is reserved.
    assert_eq!(X86_64::decode(0x83, 3), Entry::Unsupported);
    // PAT (12) of a 2 MiB leaf is not address; PAT (7) of a PTE is not PS;
    // A, D, G, U/S do not change the attributes.
    assert_eq!(
        X86_64::decode(0x60_1083, 1),
        Entry::Leaf {
            pa: GuestPhysAddr(0x60_0000),
            attrs: rwx
        }
    );
    assert_eq!(
        X86_64::decode(
            0x10_5003 | x86::HUGE | x86::ACCESSED | x86::DIRTY | x86::GLOBAL | x86::USER,
            0
        ),
        Entry::Leaf {
            pa: GuestPhysAddr(0x10_5000),
            attrs: rwx
        }
    );
    // PWT alone is write-through: cacheable.
    assert_eq!(
        X86_64::decode(0x10_5009, 0),
        Entry::Leaf {
            pa: GuestPhysAddr(0x10_5000),
            attrs: Attrs::READ_ONLY.executable()
        }
    );
    // Tables without R/W or with XD restrict what is below.
    assert_eq!(
        X86_64::decode(0x8000_0000_0010_3001, 2),
        Entry::Table {
            next: GuestPhysAddr(0x10_3000),
            limits: TableLimits {
                writable: false,
                executable: false
            }
        }
    );
    assert!(X86_64::is_canonical(VirtAddr(0x0000_7fff_ffff_f000)));
    assert!(X86_64::is_canonical(VirtAddr(0xffff_8000_0000_0000)));
    assert!(!X86_64::is_canonical(VirtAddr(0x0000_8000_0000_0000)));
    assert!(!X86_64::is_canonical(VirtAddr(0xfff7_8000_0000_0000)));
}

#[test]
fn aarch64_entries_are_bit_exact() {
    let pa = GuestPhysAddr(0x4000_1000);
    // valid (0) | page (1) | AttrIndx=1 (4:2) | SH=0b11 (9:8) | AF (10) |
    // PXN (53) | UXN (54).
    assert_eq!(
        Stage1Va39::page(pa, Attrs::READ_WRITE),
        0x0060_0000_4000_1707
    );
    // + AP[2] (7).
    assert_eq!(
        Stage1Va39::page(pa, Attrs::READ_ONLY),
        0x0060_0000_4000_1787
    );
    // AttrIndx=2, Normal non-cacheable.
    assert_eq!(
        Stage1Va39::page(pa, Attrs::READ_WRITE.with_memory(MemoryType::NonCacheable)),
        0x0060_0000_4000_170b
    );
    // AttrIndx=0, Device-nGnRnE: no SH.
    let dev = GuestPhysAddr(0x0900_0000);
    assert_eq!(
        Stage1Va39::page(dev, Attrs::READ_WRITE.device()),
        0x0060_0000_0900_0403
    );
    assert_eq!(
        Stage1Va39::page(dev, Attrs::READ_ONLY.device()),
        0x0060_0000_0900_0483
    );
    // Executable at EL1: PXN clear, UXN still set.
    assert_eq!(
        Stage1Va39::page(pa, Attrs::READ_WRITE.executable()),
        0x0040_0000_4000_1707
    );
    // Bits 12..=47 only.
    assert_eq!(
        Stage1Va48::page(GuestPhysAddr(0xffff_0000_0000_1000), Attrs::READ_WRITE),
        0x0060_0000_0000_1707
    );
    // Tables: valid | table, no table attributes.
    assert_eq!(Stage1Va39::table(GuestPhysAddr(0x4008_0000)), 0x4008_0003);
    // Blocks: bit 1 clear, address aligned to the block.
    assert_eq!(
        Stage1Va39::block(GuestPhysAddr(0x4000_0000), Attrs::READ_WRITE, 2),
        Some(0x0060_0000_4000_0705)
    );
    assert_eq!(
        Stage1Va39::block(GuestPhysAddr(0x4020_1000), Attrs::READ_ONLY, 1),
        Some(0x0060_0000_4020_0785)
    );
    assert_eq!(Stage1Va48::block(pa, Attrs::READ_WRITE, 3), None);
}

#[test]
fn aarch64_decodes_the_boot_map() {
    // src/arch/aarch64/mmu.rs: NORMAL_BLOCK = block | AF | SH inner |
    // AttrIndx 1 | UXN; DEVICE_BLOCK = block | AF | AttrIndx 0 | PXN | UXN;
    // L1[0] = l2 | 0b11.
    let normal_block = 0b01 | (1 << 10) | (0b11 << 8) | (1 << 2) | (1 << 54);
    let device_block = 0b01 | (1 << 10) | (1 << 53) | (1 << 54);
    assert_eq!(
        Stage1Va39::decode((5 << 30) | normal_block, 2),
        Entry::Leaf {
            pa: GuestPhysAddr(5 << 30),
            attrs: Attrs::READ_WRITE.executable()
        }
    );
    assert_eq!(
        Stage1Va39::decode((3 << 21) | device_block, 1),
        Entry::Leaf {
            pa: GuestPhysAddr(3 << 21),
            attrs: Attrs::READ_WRITE.device()
        }
    );
    assert_eq!(
        Stage1Va39::decode(0x4008_0003, 2),
        Entry::Table {
            next: GuestPhysAddr(0x4008_0000),
            limits: TableLimits::NONE
        }
    );
    // Invalid whatever else is set; 0b01 at the last level is reserved; a
    // level-0 block needs FEAT_LPA2.
    assert_eq!(Stage1Va39::decode(0x0060_0000_4000_1706, 0), Entry::Invalid);
    assert_eq!(Stage1Va39::decode(0x4000_1705, 0), Entry::Unsupported);
    assert_eq!(Stage1Va48::decode(0x4000_0705, 3), Entry::Unsupported);
    // APTable[1] (62) and PXNTable (59) restrict what is below.
    assert_eq!(
        Stage1Va48::decode(0x4008_0003 | a64::AP_TABLE_READ_ONLY | a64::PXN_TABLE, 3),
        Entry::Table {
            next: GuestPhysAddr(0x4008_0000),
            limits: TableLimits {
                writable: false,
                executable: false
            }
        }
    );
    // MAIR indices 3..=7 are 0 in the boot MAIR: Device-nGnRnE. EL0-writable
    // (AP = 0b01) is never executable at EL1.
    assert_eq!(
        Stage1Va39::decode(0x4000_1000 | 0b11 | a64::ACCESS_FLAG | (5 << 2), 0),
        Entry::Leaf {
            pa: GuestPhysAddr(0x4000_1000),
            attrs: Attrs::READ_WRITE.device().executable()
        }
    );
    assert_eq!(
        Stage1Va39::decode(
            0x4000_1000 | 0b11 | a64::ACCESS_FLAG | (1 << 2) | a64::AP_EL0,
            0
        ),
        Entry::Leaf {
            pa: GuestPhysAddr(0x4000_1000),
            attrs: Attrs::READ_WRITE
        }
    );
    assert!(Stage1Va39::is_canonical(VirtAddr((1 << 39) - 1)));
    assert!(!Stage1Va39::is_canonical(VirtAddr(1 << 39)));
    assert!(Stage1Va48::is_canonical(VirtAddr(1 << 39)));
    assert!(!Stage1Va48::is_canonical(VirtAddr(0xffff_0000_0000_0000)));
}

#[test]
fn translate_applies_the_limits_of_the_tables_above() {
    let (mut pt, mut frames) = setup::<X86_64>(x86_window(), 8);
    let va = x86_window().start();
    pt.map_4k(va, GuestPhysAddr(0x5000), Attrs::READ_WRITE, &mut frames)
        .unwrap()
        .ignore();
    let l1 = table_at(&pt, va, 1);
    let e = slot(&pt, l1, va, 1);
    e.store(
        e.load(Ordering::Relaxed) & !x86::WRITABLE,
        Ordering::Relaxed,
    );
    assert_eq!(
        pt.translate(va),
        Some((GuestPhysAddr(0x5000), Attrs::READ_ONLY))
    );
}

// ---- the surroundings ---------------------------------------------------------------

#[test]
fn the_region_table_hands_out_table_frames() {
    let mut t = RegionTable::new();
    let ram = |s, e| Region {
        range: FrameRange::from_frames(Gfn(s), Gfn(e)).unwrap(),
        kind: RegionKind::Ram,
        flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        backing: crate::region::Backing::None,
    };
    t.add(ram(0, 3)).unwrap();
    let before = t.clone();
    // Never frame 0: on an identity map, it is the null pointer.
    let a = t.alloc_frame().unwrap();
    let b = t.alloc_frame().unwrap();
    assert_eq!((a, b), (GuestPhysAddr(0x1000), GuestPhysAddr(0x2000)));
    assert_eq!(t.alloc_frame(), Err(PagingError::OutOfFrames));
    let r = t.region_at(Gfn(1)).unwrap();
    assert_eq!(r.kind, RegionKind::Reserved(ReservedUse::PageTables));
    assert!(r.flags.contains(RegionFlags::PINNED));
    t.free_frame(b);
    t.free_frame(a);
    assert_eq!(t, before);
    // Freeing a frame that is not a table frame changes nothing.
    t.free_frame(GuestPhysAddr(0x1000));
    t.free_frame(GuestPhysAddr(0x7000_0000));
    assert_eq!(t, before);
    t.check_invariants().unwrap();
}

#[test]
fn identity_memory_reaches_its_range_only() {
    // SAFETY: only `reaches` is called, which dereferences nothing.
    let m = unsafe { IdentityMemory::new(GuestPhysAddr(0x1000), GuestPhysAddr(0x10_0000)) };
    assert!(m.reaches(GuestPhysAddr(0x1000)));
    assert!(m.reaches(GuestPhysAddr(0xf_f000)));
    assert!(!m.reaches(GuestPhysAddr(0x10_0000)));
    assert!(!m.reaches(GuestPhysAddr(0x2008)));
    // SAFETY: as above.
    let from0 = unsafe { IdentityMemory::new(GuestPhysAddr(0), GuestPhysAddr(0x10_0000)) };
    assert!(!from0.reaches(GuestPhysAddr(0)));
    assert_eq!(m.table(GuestPhysAddr(0x10_0000)).map(|_| ()), None);
}

#[test]
fn adoption_happens_once() {
    let once: AdoptOnce<u32> = AdoptOnce::new();
    let mut runs = 0;
    {
        let mut g = once
            .get(|| {
                runs += 1;
                Ok(7)
            })
            .unwrap();
        *g += 1;
        // Held: a second user is refused instead of spinning forever.
        assert_eq!(once.get(|| Ok(0)).err(), Some(PagingError::Busy));
    }
    assert_eq!(*once.get(|| Ok(0)).unwrap(), 8);
    assert_eq!(runs, 1);
    let failed: AdoptOnce<u32> = AdoptOnce::default();
    let e = PagingError::Unsupported("no");
    assert_eq!(failed.get(|| Err(e)).err(), Some(e));
    assert_eq!(failed.get(|| Ok(1)).err(), Some(e));
}

#[test]
fn windows_and_errors_describe_themselves() {
    assert_eq!(Window::new(VirtAddr(0x1000), 0), None);
    assert_eq!(Window::new(VirtAddr(0x1001), 0x1000), None);
    assert_eq!(Window::new(VirtAddr(0x1000), 0x1800), None);
    assert_eq!(Window::new(VirtAddr(u64::MAX - 0xfff), 0x2000), None);
    let w = Window::new(VirtAddr(0x1000), 0x2000).unwrap();
    assert_eq!(
        (w.start(), w.end(), w.size()),
        (VirtAddr(0x1000), VirtAddr(0x3000), 0x2000)
    );
    assert!(w.contains(VirtAddr(0x2fff)) && !w.contains(VirtAddr(0x3000)));
    assert!(w.covers(0x1000, 0x2000) && !w.covers(0x1000, 0x2001) && !w.covers(u64::MAX, 2));
    assert_eq!(Attrs::default(), Attrs::READ_ONLY);
    assert!(Attrs::READ_WRITE.is_writable() && !Attrs::READ_ONLY.is_writable());
    let msg = PagingError::HugePage {
        va: VirtAddr(0x20_0000),
        level: 1,
    }
    .to_string();
    assert_eq!(msg, "a level-1 block covers 0x200000");
    assert_eq!(level_size(2), 1 << 30);
}

mod identity;
