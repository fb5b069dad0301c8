//! The walker's surroundings on the target, shared by the architectures:
//! table memory through the identity map, table frames from the region
//! table, and the one adopted set of page tables.

use super::{
    Format, FrameSource, IdentityFrames, IdentitySpec, PageTable, PagingError, Table, TableMemory,
    Tlb,
};
use crate::addr::{Gfn, GuestPhysAddr, Order, PageCount, PAGE_SIZE};
use crate::region::{
    Change, FrameRange, RegionError, RegionFlags, RegionKind, RegionTable, ReservedUse,
};

/// Table memory reached through an identity map (virtual address ==
/// guest-physical address) of `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityMemory {
    start: u64,
    end: u64,
}

impl IdentityMemory {
    /// Tables in frames inside `[start, end)` (frame 0 never: its address is
    /// the null pointer).
    ///
    /// # Safety
    /// Every page in `[start, end)` that will be handed to the walker as a
    /// table (the tables of the tree it adopts, the frames its
    /// [`FrameSource`] returns) must be mapped at its own address as
    /// readable and writable Normal memory for as long as this value is
    /// used, and not be used as anything else while it is a table.
    pub const unsafe fn new(start: GuestPhysAddr, end: GuestPhysAddr) -> Self {
        IdentityMemory {
            start: start.0,
            end: end.0,
        }
    }

    /// The first address tables may be at.
    pub const fn start(&self) -> GuestPhysAddr {
        GuestPhysAddr(self.start)
    }

    /// One past the last address tables may be at.
    pub const fn end(&self) -> GuestPhysAddr {
        GuestPhysAddr(self.end)
    }

    /// Whether the page at `frame` is reachable.
    pub fn reaches(&self, frame: GuestPhysAddr) -> bool {
        frame.is_page_aligned()
            && frame.0 != 0
            && frame.0 >= self.start
            && frame
                .0
                .checked_add(PAGE_SIZE)
                .is_some_and(|e| e <= self.end)
            && usize::try_from(frame.0).is_ok()
    }
}

// SAFETY: `table` only hands out frames inside the range that `new`'s
// caller promised is identity-mapped RAM used for nothing else; the
// reference is to atomics, so the MMU's concurrent accesses are fine.
unsafe impl TableMemory for IdentityMemory {
    fn table(&self, frame: GuestPhysAddr) -> Option<&Table> {
        if !self.reaches(frame) {
            return None;
        }
        let ptr = frame.0 as usize as *const Table;
        // SAFETY: non-null, page-aligned (so aligned for `AtomicU64`), and
        // mapped at its own address for as long as `self` is used (the
        // contract of `new`).
        Some(unsafe { &*ptr })
    }
}

/// The region table as the source of table frames: one free RAM frame at a
/// time (the lowest, never frame 0), recorded as
/// `Reserved(PageTables)`, pinned.
// SAFETY: a frame is handed out only while the table records it as free RAM
// (and is recorded as page tables from then on): free RAM of the table is
// what its maker vouched nothing uses (see `RealXen::new`: a table passed to
// the library records everything the program uses as reserved), and a frame
// comes back to the pool only through `free_frame`.
unsafe impl FrameSource for RegionTable {
    fn alloc_frame(&mut self) -> Result<GuestPhysAddr, PagingError> {
        let range = self
            .find_free(RegionKind::Ram, PageCount(1), Order::ZERO, Gfn(1))
            .ok_or(PagingError::OutOfFrames)?;
        let addr = range.start().addr().ok_or(PagingError::OutOfFrames)?;
        self.modify(
            range,
            Change {
                kind: Some(RegionKind::Reserved(ReservedUse::PageTables)),
                set: RegionFlags::PINNED,
                expect: Some(RegionKind::Ram),
                ..Change::default()
            },
        )
        .map_err(|e| match e {
            RegionError::OutOfMemory(e) => PagingError::OutOfMemory(e),
            // The frame was just found free: nothing else can refuse it.
            _ => PagingError::OutOfFrames,
        })?;
        Ok(addr)
    }

    fn free_frame(&mut self, frame: GuestPhysAddr) {
        if let Ok(range) = FrameRange::new(frame.frame(), PageCount(1)) {
            // Fails for a frame `alloc_frame` did not hand out, which then
            // is not the table's to take back; and for want of memory, if
            // the frame splits a run of table frames and nothing made room
            // (`prepare_free`, or giving back the latest frames first): the
            // frame then stays recorded as a table frame, never handed out.
            let _ = self.free_frames(range, ReservedUse::PageTables);
        }
    }

    fn prepare_free(&mut self, frames: usize) -> Result<(), PagingError> {
        // Each frame given back splits at most one region in three.
        self.reserve(frames.saturating_mul(2)).map_err(|e| match e {
            RegionError::OutOfMemory(e) => PagingError::OutOfMemory(e),
            _ => PagingError::OutOfFrames,
        })
    }
}

/// The region table knows what every frame is.
impl IdentityFrames for RegionTable {
    fn unbacked(&self, range: FrameRange) -> bool {
        // Frames no region covers are nothing: unbacked too.
        self.overlapping_regions(range)
            .all(|r| !r.kind.identity_mapped())
    }

    fn all_ballooned(&self, range: FrameRange) -> bool {
        let mut g = range.start();
        while g < range.end() {
            match self.region_at(g) {
                Some(r) if r.kind == RegionKind::Ballooned => g = r.range.end(),
                _ => return false,
            }
        }
        true
    }

    fn is_table_frame(&self, frame: GuestPhysAddr) -> bool {
        matches!(
            self.region_at(frame.frame()),
            Some(r) if r.kind == RegionKind::Reserved(ReservedUse::PageTables)
        )
    }
}

/// What [`trim_identity`] took out of the identity map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Runs of frames unmapped (one [`PageTable::unmap_identity`] each).
    pub ranges: usize,
    /// Frames in them.
    pub frames: PageCount,
}

/// Take everything below `spec.end` that is not the guest's memory out of
/// the identity map: the complement of the regions whose kind is
/// [`identity_mapped`](RegionKind::identity_mapped) (holes, device and
/// unusable space, ballooned frames, mappings, and frames no region
/// covers), one [`PageTable::unmap_identity`] per run. The boot code maps
/// the low address space wholesale; this makes it what the region table
/// says. Stops at the first error (each call is all or nothing; earlier runs
/// stay unmapped).
pub fn trim_identity<F: Format, M: TableMemory, T: Tlb>(
    pt: &mut PageTable<F, M, T>,
    spec: IdentitySpec,
    table: &mut RegionTable,
) -> Result<Trimmed, PagingError> {
    let end = spec.end.frame();
    let mut done = Trimmed::default();
    let mut from = Gfn(0);
    // One run at a time, found afresh in the table each time (the unmaps
    // take table frames from free RAM, which stays identity-mapped: the
    // runs do not move).
    while let Some(r) = next_unkept(table, from, end)? {
        pt.unmap_identity(r, spec, table)?;
        done.ranges += 1;
        done.frames = PageCount(done.frames.0 + r.len().0);
        from = r.end();
    }
    Ok(done)
}

/// The first run of frames in `[from, end)` that no identity-mapped region
/// covers.
fn next_unkept(
    table: &RegionTable,
    from: Gfn,
    end: Gfn,
) -> Result<Option<FrameRange>, PagingError> {
    let mut next = from;
    let kept = table
        .iter()
        .filter(|r| r.kind.identity_mapped() && r.range.end() > from)
        .map(|r| (r.range.start(), r.range.end()))
        .chain([(end, end)]);
    for (start, stop) in kept {
        let stop_gap = start.min(end);
        if next < stop_gap {
            return FrameRange::from_frames(next, stop_gap)
                .map(Some)
                .map_err(|_| PagingError::Overflow);
        }
        next = next.max(stop);
        if next >= end {
            break;
        }
    }
    Ok(None)
}

/// The reservation engine's hook for the boot identity map of either
/// architecture: the adopted page tables (`arch::<arch>::paging`) with the
/// boot map's [`IdentitySpec`], table frames from the
/// region table. See [`PageTable::unmap_identity`](super::PageTable::unmap_identity).
#[cfg(target_os = "none")]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootIdentityMap;

#[cfg(target_os = "none")]
impl crate::reservation::IdentityMap for BootIdentityMap {
    fn unmap(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        use crate::arch::imp::paging::{page_tables, IDENTITY};
        // The engine only ever unmaps frames it just ballooned: anything
        // else is a bug to refuse, not merely memory that may go.
        if !t.all_ballooned(range) {
            return Err(PagingError::NotBallooned(range.start_addr()));
        }
        page_tables()?.unmap_identity(range, IDENTITY, t)
    }

    fn map(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        use crate::arch::imp::paging::{page_tables, IDENTITY};
        page_tables()?.map_identity(range, IDENTITY, t)
    }
}

/// The page tables of type `P`, adopted once, on first use, and then handed
/// out one user at a time.
pub struct AdoptOnce<P> {
    cell: spin::Once<Result<spin::Mutex<P>, PagingError>>,
}

impl<P> AdoptOnce<P> {
    /// Not adopted yet.
    pub const fn new() -> Self {
        AdoptOnce {
            cell: spin::Once::new(),
        }
    }

    /// The page tables: `adopt` runs on the first call only, and its error
    /// is every call's. [`PagingError::Busy`] while another user holds them
    /// (the agent has one vCPU: waiting would never end).
    pub fn get(
        &self,
        adopt: impl FnOnce() -> Result<P, PagingError>,
    ) -> Result<spin::MutexGuard<'_, P>, PagingError> {
        match self.cell.call_once(|| adopt().map(spin::Mutex::new)) {
            Ok(m) => m.try_lock().ok_or(PagingError::Busy),
            Err(e) => Err(*e),
        }
    }
}

impl<P> Default for AdoptOnce<P> {
    fn default() -> Self {
        Self::new()
    }
}
