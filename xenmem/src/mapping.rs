//! Other domains' frames (and Xen's) in the agent's own address space.
//!
//! A foreign mapping takes free guest-physical frames from a hole of the
//! region table (never RAM: mapping over RAM would make Xen free the RAM page
//! and split the superpages behind it), asks Xen to put the foreign frames
//! there (`XENMEM_add_to_physmap_batch`, `XENMAPSPACE_gmfn_foreign`, many per
//! hypercall, each entry with its own status), and maps those frames into the
//! agent's mapping window, never executable. Every failure unwinds what was
//! done: the entries Xen did map are removed again, the table gets its hole
//! back, and nothing is half-mapped.
//!
//! The handle, [`ForeignMap`], must be given back with
//! [`ForeignMap::release`] (the mapping cannot be torn down without the
//! hypervisor, the table and the page tables, which a `Drop` does not have).
//! A release that fails part-way gives the handle back
//! ([`ReleaseError`]) recording what is still to
//! be undone, so that releasing it again finishes the job; dropping it
//! unreleased reports a [`Leak`] (see [`crate::leak`]).
//!
//! Unmapping (a release or an unwind) removes the entries with
//! `XENMEM_remove_from_physmap` batched in multicalls
//! ([`Hypervisor::remove_from_physmap_batch`], [`MULTICALL_MAX`] per
//! hypercall, one call per frame where Xen refuses multicalls). Every frame
//! is tried; a frame Xen does not let go stays recorded as foreign, out of
//! the table's holes, and is reported by index; the others go back.

use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;

use crate::addr::{DomId, Gfn, PageCount, VirtAddr, PAGE_SIZE};
use crate::alloc_util::{try_collect, try_with_capacity, OutOfMemory, TryVec};
use crate::leak::{self, Leak, LeakKind, Outstanding, ReleaseError};
use crate::paging::{self, Attrs, FrameSource, PagingError};
use crate::region::{
    Backing, Change, FrameRange, Op, Region, RegionError, RegionFlags, RegionKind, RegionTable,
};
use crate::xen::{Hypervisor, XenError, XenStatus, MULTICALL_MAX};

/// The most entries one `add_to_physmap_batch` carries (its `size` is 16
/// bits; a smaller batch keeps the status list on the stack small).
pub const BATCH: usize = 512;

/// What the page tables offer this module: map and unmap runs of 4 KiB pages
/// in the mapping window, each all or nothing. Implemented by
/// [`paging::PageTable`]; host tests use a fake.
pub trait MapTarget {
    /// Map `pages` pages from `pa` at `va`, flushed.
    fn map(
        &mut self,
        va: VirtAddr,
        pa: crate::addr::GuestPhysAddr,
        pages: PageCount,
        attrs: Attrs,
        frames: &mut RegionTable,
    ) -> Result<(), PagingError>;
    /// Unmap `pages` pages at `va`, flushed; on an error nothing was
    /// unmapped (a release that stops there can be tried again).
    fn unmap(
        &mut self,
        va: VirtAddr,
        pages: PageCount,
        frames: &mut RegionTable,
    ) -> Result<(), PagingError>;
    /// The window mappings may go in.
    fn window(&self) -> paging::Window;
}

impl<F: paging::Format, M: paging::TableMemory, T: paging::Tlb> MapTarget
    for paging::PageTable<F, M, T>
where
    RegionTable: FrameSource,
{
    fn map(
        &mut self,
        va: VirtAddr,
        pa: crate::addr::GuestPhysAddr,
        pages: PageCount,
        attrs: Attrs,
        frames: &mut RegionTable,
    ) -> Result<(), PagingError> {
        self.map_range(va, pa, pages, attrs, frames)
            .map(|f| f.flush())
    }

    fn unmap(
        &mut self,
        va: VirtAddr,
        pages: PageCount,
        frames: &mut RegionTable,
    ) -> Result<(), PagingError> {
        self.unmap_range(va, pages, frames).map(|f| f.flush())
    }

    fn window(&self) -> paging::Window {
        paging::PageTable::window(self)
    }
}

/// First-fit allocation of virtual pages in the mapping window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaSpace {
    window: paging::Window,
    /// Allocations, by first page index in the window: (first page,
    /// pages), sorted and disjoint.
    used: Vec<(u64, u64)>,
}

impl VaSpace {
    /// All of `window` free.
    pub fn new(window: paging::Window) -> Self {
        VaSpace {
            window,
            used: Vec::new(),
        }
    }

    /// `pages` consecutive free pages; `None` when there is no room, or
    /// when the heap cannot record the allocation (see
    /// [`VaSpace::try_alloc`], which tells the two apart).
    pub fn alloc(&mut self, pages: PageCount) -> Option<VirtAddr> {
        self.try_alloc(pages).ok().flatten()
    }

    /// `pages` consecutive free pages (`Ok(None)`: no room), or
    /// [`OutOfMemory`] if the record of the allocation cannot grow
    /// (nothing changed).
    pub fn try_alloc(&mut self, pages: PageCount) -> Result<Option<VirtAddr>, OutOfMemory> {
        let total = self.window.size() / PAGE_SIZE;
        let mut at = 0u64;
        let mut index = self.used.len();
        for (i, &(s, n)) in self.used.iter().enumerate() {
            if s - at >= pages.0 {
                index = i;
                break;
            }
            at = s + n;
        }
        match at.checked_add(pages.0) {
            Some(end) if pages.0 != 0 && end <= total => {}
            _ => return Ok(None),
        }
        self.used.try_room(1, "mapping-window allocations")?;
        // Within the room made above: no allocation.
        self.used.insert(index, (at, pages.0));
        Ok(Some(VirtAddr(self.window.start().0 + at * PAGE_SIZE)))
    }

    /// Give back an allocation made at `va`.
    pub fn free(&mut self, va: VirtAddr) {
        if let Some(off) = va.0.checked_sub(self.window.start().0) {
            let first = off / PAGE_SIZE;
            if let Ok(i) = self.used.binary_search_by_key(&first, |&(s, _)| s) {
                self.used.remove(i);
            }
        }
    }

    /// Pages in use.
    pub fn used(&self) -> u64 {
        self.used.iter().map(|&(_, n)| n).sum()
    }
}

/// Why a mapping failed. Nothing of it is left mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No request: zero frames.
    Empty,
    /// No hole of that many frames in the region table.
    NoHole(PageCount),
    /// No room in the mapping window.
    NoVirtualSpace(PageCount),
    /// Xen refused the batch as a whole.
    Xen(XenError),
    /// Xen refused entry `index` (the first one refused), foreign frame
    /// `frame`.
    Refused {
        /// Index in the request.
        index: usize,
        /// The foreign frame.
        frame: Gfn,
        /// What Xen said.
        err: XenError,
    },
    /// The page tables refused.
    Paging(PagingError),
    /// The region table refused (a bug: the frames came from it).
    Table(RegionError),
    /// Undoing a failed mapping failed too: the frames whose removal failed
    /// may still hold foreign entries; they are kept out of the table's
    /// holes (the others went back).
    Unwind(XenError),
    /// Giving a mapping back failed for some frames (every frame was tried):
    /// they may still hold foreign entries and stay out of the table's holes,
    /// marked foreign; the others went back.
    Unmap(UnmapFailure),
    /// The heap could not provide the memory the mapping needed (nothing
    /// was mapped).
    OutOfMemory(OutOfMemory),
}

/// Which frames of a mapping could not be removed from the physmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapFailure {
    /// Index in the mapping (as in the request) of the first that failed.
    pub index: u64,
    /// Its frame in the agent's physmap.
    pub gfn: Gfn,
    /// What Xen said for it.
    pub err: XenError,
    /// How many failed in all.
    pub failed: u64,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Empty => write!(f, "no frames to map"),
            MapError::NoHole(n) => write!(f, "no hole of {n} frames in the guest-physical map"),
            MapError::NoVirtualSpace(n) => write!(f, "no room for {n} pages in the mapping window"),
            MapError::Xen(e) => write!(f, "add_to_physmap_batch failed: {e}"),
            MapError::Refused { index, frame, err } => {
                write!(
                    f,
                    "Xen refused entry {index} (foreign frame {frame}): {err}"
                )
            }
            MapError::Paging(e) => write!(f, "page tables: {e:?}"),
            MapError::Table(e) => write!(f, "region table: {e}"),
            MapError::Unwind(e) => write!(f, "could not undo a failed mapping: {e}"),
            MapError::Unmap(u) => write!(
                f,
                "could not remove {} frame(s) from the physmap; the first is entry {} (frame {}): {}",
                u.failed, u.index, u.gfn, u.err
            ),
            MapError::OutOfMemory(e) => write!(f, "mapping: {e}"),
        }
    }
}

impl From<RegionError> for MapError {
    fn from(e: RegionError) -> Self {
        MapError::Table(e)
    }
}

impl From<OutOfMemory> for MapError {
    fn from(e: OutOfMemory) -> Self {
        MapError::OutOfMemory(e)
    }
}

/// Another domain's frames, mapped. Read and write them with
/// [`Bytes`](crate::grant::Bytes) (bounds-checked, volatile; writes refused
/// when read-only).
#[must_use = "a mapping must be given back with ForeignMap::release"]
#[derive(Debug)]
pub struct ForeignMap {
    undo: Teardown,
    dom: DomId,
    writable: bool,
}

impl ForeignMap {
    /// Where it is (or was) mapped in the window.
    pub fn va(&self) -> VirtAddr {
        self.undo.va()
    }

    /// Where it is mapped in the window; `None` once a release that
    /// stopped part-way has unmapped it there (no byte access then).
    pub fn window(&self) -> Option<VirtAddr> {
        self.undo.window()
    }

    /// The hole frames it occupies in the agent's physmap.
    pub fn gfns(&self) -> FrameRange {
        self.undo.gfns()
    }

    /// The domain the frames belong to.
    pub fn domain(&self) -> DomId {
        self.dom
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.gfns().len().0 * PAGE_SIZE
    }

    /// Never: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// What is still to be undone (all of it until a release starts).
    pub fn outstanding(&self) -> Outstanding {
        self.undo.outstanding()
    }

    /// Give the mapping back: unmap it from the window, remove the foreign
    /// entries from the physmap ([`MULTICALL_MAX`] per multicall), and
    /// return the hole to the table. Every frame is tried; the frames Xen
    /// let go go back to the holes.
    ///
    /// On a failure the handle comes back with the error, recording what
    /// is left, and a second release continues from there (each step is
    /// done once): the page tables refused ([`MapError::Paging`]: nothing
    /// changed), Xen kept some frames ([`MapError::Unmap`], the first by
    /// index: they stay marked foreign, out of the holes, and are tried
    /// again), or the table refused to take frames back
    /// ([`MapError::Table`]). A frame whose entry was already gone
    /// (`ENOENT`: something removed it behind the handle) is reported too;
    /// Xen holds nothing there, so the next release only gives it back.
    pub fn release(
        mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), ReleaseError<ForeignMap, MapError>> {
        // Every frame was mapped: here even ENOENT is an error.
        match self.undo.release_physmap(hv, table, pt, vas, false) {
            Ok(()) => Ok(()),
            Err(s) => Err(ReleaseError::new(self, s.into())),
        }
    }
}

impl Drop for ForeignMap {
    fn drop(&mut self) {
        if !self.undo.is_done() {
            leak::report(&self.undo.leak(LeakKind::ForeignMap, Some(self.dom)));
        }
    }
}

/// Where a frame of a mapping is in its teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Xen maps something there; the table records it.
    Mapped,
    /// Xen said in this release that nothing is there (`ENOENT`:
    /// something took it away behind the handle): reported, and given back
    /// by the next release.
    Vanished,
    /// Xen let go; the table still records it.
    Unmapped,
    /// Back in the holes.
    Done,
}

/// Where [`Teardown::release_physmap`] stopped.
pub(crate) enum Stopped {
    /// The page tables refused the window's unmap (nothing changed).
    Window(PagingError),
    /// Xen kept some entries (the first by index).
    Unmap(UnmapFailure),
    /// The table refused frames back.
    Table(RegionError),
}

impl From<Stopped> for MapError {
    fn from(s: Stopped) -> Self {
        match s {
            Stopped::Window(e) => MapError::Paging(e),
            Stopped::Unmap(f) => MapError::Unmap(f),
            Stopped::Table(e) => MapError::Table(e),
        }
    }
}

/// What of a mapping in hole frames and the window is still to be undone,
/// frame by frame: the record a handle keeps so that a release that failed
/// part-way can be continued and never undoes a step twice. Shared by
/// [`ForeignMap`], [`crate::grant::GrantMap`] and
/// [`crate::acquire::ResourceMap`].
#[derive(Debug)]
pub(crate) struct Teardown {
    va: VirtAddr,
    gfns: FrameRange,
    /// Still mapped in the window.
    window: bool,
    steps: Vec<Step>,
}

impl Teardown {
    /// All of `gfns` mapped by Xen, recorded in the table and mapped at
    /// `va` (made before the mapping, so that it cannot fail after), or
    /// [`OutOfMemory`] for its list of steps.
    pub(crate) fn try_new(va: VirtAddr, gfns: FrameRange) -> Result<Self, OutOfMemory> {
        let n = gfns.len().0 as usize;
        let mut steps = try_with_capacity(n, "mapping teardown steps")?;
        // Within the room made above: no allocation.
        steps.resize(n, Step::Mapped);
        Ok(Teardown {
            va,
            gfns,
            window: true,
            steps,
        })
    }

    pub(crate) fn va(&self) -> VirtAddr {
        self.va
    }

    pub(crate) fn gfns(&self) -> FrameRange {
        self.gfns
    }

    /// The window address while mapped there.
    pub(crate) fn window(&self) -> Option<VirtAddr> {
        self.window.then_some(self.va)
    }

    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub(crate) fn set(&mut self, i: usize, step: Step) {
        if let Some(s) = self.steps.get_mut(i) {
            *s = step;
        }
    }

    /// Frame `i`.
    pub(crate) fn frame(&self, i: usize) -> Gfn {
        Gfn(self.gfns.start().0 + i as u64)
    }

    /// Everything undone.
    pub(crate) fn is_done(&self) -> bool {
        !self.window && self.steps.iter().all(|s| *s == Step::Done)
    }

    pub(crate) fn outstanding(&self) -> Outstanding {
        let count = |f: fn(&Step) -> bool| self.steps.iter().filter(|s| f(s)).count() as u64;
        Outstanding {
            window_pages: if self.window { self.gfns.len().0 } else { 0 },
            in_xen: count(|s| *s == Step::Mapped),
            held: count(|s| *s != Step::Done),
        }
    }

    /// What a drop now leaks.
    pub(crate) fn leak(&self, kind: LeakKind, domain: Option<DomId>) -> Leak {
        Leak {
            kind,
            domain,
            frames: Some(self.gfns),
            va: self.window(),
            outstanding: self.outstanding(),
            grants: 0,
        }
    }

    /// The release of a handle whose frames are physmap entries (a foreign
    /// or resource map): the window, the entries Xen still maps (`ENOENT`
    /// counts as removed when `enoent_ok`), the frames back to the holes,
    /// each step done once. Which step stopped it; Xen's refusal is told
    /// before the table's.
    pub(crate) fn release_physmap(
        &mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        enoent_ok: bool,
    ) -> Result<(), Stopped> {
        self.unmap_window(table, pt, vas).map_err(Stopped::Window)?;
        let failure = self.remove_mapped(hv, enoent_ok);
        let table_err = self.give_back(table, back_to_hole()).err();
        match (failure, table_err) {
            (Some(f), _) => Err(Stopped::Unmap(f)),
            (None, Some(e)) => Err(Stopped::Table(e)),
            (None, None) => Ok(()),
        }
    }

    /// Step 1: unmap the window (once).
    pub(crate) fn unmap_window(
        &mut self,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), PagingError> {
        if self.window {
            pt.unmap(self.va, self.gfns.len(), table)?;
            vas.free(self.va);
            self.window = false;
        }
        Ok(())
    }

    /// Step 2 for physmap entries: remove the frames Xen still maps (all of
    /// them tried, batched). `ENOENT` counts as removed when `enoent_ok`,
    /// else the frame is [`Step::Vanished`] and reported. The first
    /// failure (by index) and how many failed.
    pub(crate) fn remove_mapped(
        &mut self,
        hv: &impl Hypervisor,
        enoent_ok: bool,
    ) -> Option<UnmapFailure> {
        let mut first: Option<UnmapFailure> = None;
        let mut count = 0u64;
        let gfns = self.gfns;
        // Read by one closure, written by the other (each frame is asked
        // about before its result comes).
        let steps = Cell::from_mut(&mut self.steps[..]).as_slice_of_cells();
        remove_each(
            hv,
            gfns,
            |i| {
                steps
                    .get(i as usize)
                    .is_some_and(|s| s.get() == Step::Mapped)
            },
            |i, r| {
                let step = match r {
                    Ok(()) => Step::Unmapped,
                    Err(e) if not_mapped(&e) && enoent_ok => Step::Unmapped,
                    Err(e) => {
                        count += 1;
                        first.get_or_insert(UnmapFailure {
                            index: i,
                            gfn: Gfn(gfns.start().0 + i),
                            err: e,
                            failed: 0,
                        });
                        if not_mapped(&e) {
                            Step::Vanished
                        } else {
                            Step::Mapped
                        }
                    }
                };
                if let Some(s) = steps.get(i as usize) {
                    s.set(step);
                }
            },
        );
        first.map(|f| UnmapFailure { failed: count, ..f })
    }

    /// Step 3: give every frame Xen let go back to the table with
    /// `change` (one change per run of them); the frames that vanished in
    /// this release go back in the next one. The first refusal; the runs
    /// before and after it are still tried.
    pub(crate) fn give_back(
        &mut self,
        table: &mut RegionTable,
        change: Change,
    ) -> Result<(), RegionError> {
        let mut first = Ok(());
        let mut i = 0usize;
        while i < self.steps.len() {
            if self.steps[i] != Step::Unmapped {
                i += 1;
                continue;
            }
            let run = self.steps[i..]
                .iter()
                .take_while(|s| **s == Step::Unmapped)
                .count();
            let r = FrameRange::new(self.frame(i), PageCount(run as u64))
                .and_then(|r| table.modify(r, change));
            match r {
                Ok(()) => self.steps[i..i + run].fill(Step::Done),
                Err(e) => first = first.and(Err(e)),
            }
            i += run;
        }
        for s in &mut self.steps {
            if *s == Step::Vanished {
                *s = Step::Unmapped;
            }
        }
        first
    }
}

/// `ENOENT`: Xen mapped nothing there, as an unwind expects of entries
/// that were never mapped.
fn not_mapped(e: &XenError) -> bool {
    *e == XenError::Errno(crate::xen::Errno::ENOENT)
}

/// Remove every frame of `gfns` from the physmap, as an unwind does:
/// `ENOENT` (Xen mapped nothing there) is expected. The first other error,
/// if any.
pub(crate) fn remove_all(hv: &impl Hypervisor, gfns: FrameRange) -> Option<XenError> {
    let mut first = None;
    remove_each(
        hv,
        gfns,
        |_| true,
        |_, r| {
            if let Err(e) = r {
                if !not_mapped(&e) {
                    first.get_or_insert(e);
                }
            }
        },
    );
    first
}

/// `XENMEM_remove_from_physmap` for every frame `i` of `gfns` that `todo(i)`
/// names, in order, batched ([`Hypervisor::remove_from_physmap_batch`], one
/// multicall per [`MULTICALL_MAX`] of them, from a buffer on the stack;
/// after a multicall that failed as a whole, one call per frame); all are
/// tried. `each(i, result)` is told every result, in order, after the
/// hypercall that carried it (so `todo` of later frames is asked after
/// `each` of earlier ones).
fn remove_each(
    hv: &impl Hypervisor,
    gfns: FrameRange,
    todo: impl Fn(u64) -> bool,
    mut each: impl FnMut(u64, Result<(), XenError>),
) {
    let mut list = [Gfn(0); MULTICALL_MAX];
    let mut results = [Ok(()); MULTICALL_MAX];
    let mut next = 0u64;
    let len = gfns.len().0;
    let mut batched = true;
    loop {
        let mut n = 0usize;
        while next < len && n < MULTICALL_MAX {
            if todo(next) {
                list[n] = Gfn(gfns.start().0 + next);
                n += 1;
            }
            next += 1;
        }
        if n == 0 {
            return;
        }
        let results = &mut results[..n];
        if batched {
            match hv.remove_from_physmap_batch(&list[..n], results) {
                // Once a multicall failed, the rest go one call each, as
                // the batch call itself does after one.
                Ok(b) => batched = b.multicall_error.is_none(),
                // Lengths agree: this cannot happen, but stay total: count
                // every frame of the chunk as failed then.
                Err(e) => results.fill(Err(e)),
            }
        } else {
            for (g, r) in list[..n].iter().zip(results.iter_mut()) {
                *r = hv.remove_from_physmap(*g);
            }
        }
        for (g, r) in list[..n].iter().zip(results.iter()) {
            each(g.0 - gfns.start().0, *r);
        }
    }
}

/// Remove every frame of `gfns` (recorded as foreign in `table`) from the
/// physmap, as an unwind does (`ENOENT`: Xen mapped nothing there, as
/// expected), and give the frames Xen let go back to the holes; those whose
/// removal failed otherwise stay foreign and are reported
/// ([`MapError::Unmap`], the first by index).
fn remove_to_holes(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    gfns: FrameRange,
) -> Result<(), MapError> {
    // Runs of frames that went, given back between the failed ones (which
    // come in order).
    let mut run_start = 0u64;
    let mut table_err = None;
    let mut first: Option<UnmapFailure> = None;
    let mut count = 0u64;
    let mut give_back = |table: &mut RegionTable, from: u64, to: u64| {
        if to > from {
            let r = FrameRange::new(Gfn(gfns.start().0 + from), PageCount(to - from))
                .and_then(|r| table.modify(r, back_to_hole()));
            if let Err(e) = r {
                table_err.get_or_insert(e);
            }
        }
    };
    remove_each(
        hv,
        gfns,
        |_| true,
        |i, r| match r {
            Err(e) if !not_mapped(&e) => {
                give_back(table, run_start, i);
                run_start = i + 1;
                count += 1;
                first.get_or_insert(UnmapFailure {
                    index: i,
                    gfn: Gfn(gfns.start().0 + i),
                    err: e,
                    failed: 0,
                });
            }
            _ => {}
        },
    );
    give_back(table, run_start, gfns.len().0);
    match (first, table_err) {
        (Some(f), _) => Err(MapError::Unmap(UnmapFailure { failed: count, ..f })),
        (None, Some(e)) => Err(MapError::Table(e)),
        (None, None) => Ok(()),
    }
}

/// The change that gives frames recorded as `Foreign` back to the holes.
pub fn back_to_hole() -> Change {
    Change {
        kind: Some(RegionKind::Hole),
        clear: RegionFlags::all(),
        backing: Some(Backing::None),
        expect: Some(RegionKind::Foreign),
        ..Change::default()
    }
}

/// Map frames `frames` of domain `dom` into the agent, read-only or
/// read-write (never executable, cacheable).
pub fn map_foreign(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    dom: DomId,
    frames: &[Gfn],
    writable: bool,
) -> Result<ForeignMap, MapError> {
    let n = PageCount(frames.len() as u64);
    if frames.is_empty() {
        return Err(MapError::Empty);
    }
    let hole = table
        .find_hole(n, crate::addr::Order::ZERO, Gfn(1))
        .ok_or(MapError::NoHole(n))?;
    let va = vas.try_alloc(n)?.ok_or(MapError::NoVirtualSpace(n))?;
    // What the mapping needs from the heap, before anything changes.
    let (ops, gfns, undo) = match prepare_foreign(hole, va, dom, frames, writable) {
        Ok(p) => p,
        Err(e) => {
            vas.free(va);
            return Err(e);
        }
    };
    // Record the mapping first, one region per run of consecutive frames.
    if let Err((e, _)) = table.apply(&ops) {
        vas.free(va);
        return Err(MapError::Table(e));
    }
    drop(ops);
    let mut mapped = 0usize;
    let mut failure = None;
    for (k, chunk) in frames.chunks(BATCH).enumerate() {
        let base = k * BATCH;
        let mut errs = [XenStatus::default(); BATCH];
        let errs = &mut errs[..chunk.len()];
        match hv.map_foreign_batch(dom, chunk, &gfns[base..base + chunk.len()], errs) {
            Err(e) => {
                failure = Some(MapError::Xen(e));
                // Nothing of a refused call is assumed mapped, but clear the
                // batch's frames anyway (harmless where nothing is).
                mapped = base + chunk.len();
                break;
            }
            Ok(()) => {
                if let Some((i, e)) = errs
                    .iter()
                    .enumerate()
                    .find_map(|(i, s)| s.result().err().map(|e| (i, e)))
                {
                    failure = Some(MapError::Refused {
                        index: base + i,
                        frame: chunk[i],
                        err: e,
                    });
                    mapped = base + chunk.len();
                    break;
                }
                mapped = base + chunk.len();
            }
        }
    }
    // Take out what Xen was asked to map (ENOENT where it mapped nothing)
    // and give the hole back, but for frames whose removal failed.
    let unwind = |table: &mut RegionTable, upto: usize| -> Result<(), XenError> {
        let upto = (upto as u64).min(n.0);
        let asked = FrameRange::new(hole.start(), PageCount(upto));
        let r = match asked {
            Ok(asked) => remove_to_holes(hv, table, asked),
            Err(_) => Ok(()),
        };
        if let Ok(rest) = FrameRange::new(Gfn(hole.start().0 + upto), PageCount(n.0 - upto)) {
            let _ = table.modify(rest, back_to_hole());
        }
        match r {
            Err(MapError::Unmap(f)) => Err(f.err),
            _ => Ok(()),
        }
    };
    if let Some(f) = failure {
        vas.free(va);
        unwind(table, mapped).map_err(MapError::Unwind)?;
        return Err(f);
    }
    let attrs = if writable {
        Attrs::READ_WRITE
    } else {
        Attrs::READ_ONLY
    };
    if let Err(e) = pt.map(va, hole.start_addr(), n, attrs, table) {
        vas.free(va);
        unwind(table, frames.len()).map_err(MapError::Unwind)?;
        return Err(MapError::Paging(e));
    }
    Ok(ForeignMap {
        undo,
        dom,
        writable,
    })
}

/// The table operations recording a foreign mapping of `frames` at `hole`
/// (one region per run of consecutive frames), the hole's frames, and the
/// mapping's teardown record: all the heap memory [`map_foreign`] needs.
#[allow(clippy::type_complexity)]
fn prepare_foreign(
    hole: FrameRange,
    va: VirtAddr,
    dom: DomId,
    frames: &[Gfn],
    writable: bool,
) -> Result<(Vec<Op>, Vec<Gfn>, Teardown), MapError> {
    let flags = RegionFlags::READ
        | RegionFlags::CACHEABLE
        | if writable {
            RegionFlags::WRITE
        } else {
            RegionFlags::empty()
        };
    let mut ops = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut j = i + 1;
        while j < frames.len() && frames[j].0 == frames[j - 1].0.wrapping_add(1) {
            j += 1;
        }
        let range = FrameRange::new(Gfn(hole.start().0 + i as u64), PageCount((j - i) as u64))?;
        ops.try_push(
            Op::Add(Region {
                range,
                kind: RegionKind::Foreign,
                flags,
                backing: Backing::Foreign {
                    dom,
                    gfn: frames[i],
                },
            }),
            "foreign mapping records",
        )?;
        i = j;
    }
    let gfns = try_collect(
        (hole.start().0..hole.end().0).map(Gfn),
        "foreign mapping frames",
    )?;
    let undo = Teardown::try_new(va, hole)?;
    Ok((ops, gfns, undo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{GuestPhysAddr, Mfn};
    use crate::xen::model::{DomainConfig, Fault, Op as XOp, XenModel};
    use crate::xen::Errno;
    use std::collections::HashMap;

    /// Page tables reduced to what this module needs.
    #[derive(Default)]
    struct FakeTables {
        map: HashMap<u64, (u64, Attrs)>,
        fail_map: bool,
        /// Refuse unmaps (nothing is unmapped).
        fail_unmap: bool,
    }

    impl MapTarget for FakeTables {
        fn map(
            &mut self,
            va: VirtAddr,
            pa: GuestPhysAddr,
            pages: PageCount,
            attrs: Attrs,
            _: &mut RegionTable,
        ) -> Result<(), PagingError> {
            if self.fail_map {
                return Err(PagingError::OutOfFrames);
            }
            for i in 0..pages.0 {
                let v = va.0 + i * PAGE_SIZE;
                if let Some(&(pa, _)) = self.map.get(&v) {
                    return Err(PagingError::AlreadyMapped {
                        va: VirtAddr(v),
                        pa: GuestPhysAddr(pa),
                    });
                }
                self.map.insert(v, (pa.0 + i * PAGE_SIZE, attrs));
            }
            Ok(())
        }
        fn unmap(
            &mut self,
            va: VirtAddr,
            pages: PageCount,
            _: &mut RegionTable,
        ) -> Result<(), PagingError> {
            if self.fail_unmap {
                return Err(PagingError::OutOfFrames);
            }
            let pages = (0..pages.0).map(|i| va.0 + i * PAGE_SIZE);
            if let Some(v) = pages.clone().find(|v| !self.map.contains_key(v)) {
                return Err(PagingError::NotMapped(VirtAddr(v)));
            }
            for v in pages {
                self.map.remove(&v);
            }
            Ok(())
        }
        fn window(&self) -> paging::Window {
            paging::Window::new(VirtAddr(0x200_0000_0000), 1 << 30).unwrap()
        }
    }

    const D0: DomId = DomId(0);
    const DU: DomId = DomId(1);

    /// A privileged PVH dom0 with a hole above its RAM, and a domU to map.
    fn setup() -> (XenModel, RegionTable, FakeTables, VaSpace) {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        m.add_domain(DomainConfig::pvh_domu(DU, 1024)).unwrap();
        m.set_current(D0).unwrap();
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(0), PageCount(4096)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ,
        ))
        .unwrap();
        t.add(Region::new(
            FrameRange::new(Gfn(0x100000), PageCount(0x1000)).unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        let pt = FakeTables::default();
        let vas = VaSpace::new(pt.window());
        (m, t, pt, vas)
    }

    #[test]
    fn map_read_release() {
        let (m, mut t, mut pt, mut vas) = setup();
        let before = t.clone();
        let frames: Vec<Gfn> = (10..20).map(Gfn).chain([Gfn(500)]).collect();
        let fm = map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &frames, false).unwrap();
        assert_eq!(
            fm.gfns(),
            FrameRange::new(Gfn(0x100000), PageCount(11)).unwrap()
        );
        // Xen's side: foreign entries, the domU's own frames.
        let f = m.foreign(D0);
        let du = m.p2m(DU);
        assert_eq!(f.len(), 11);
        assert_eq!(f[&Gfn(0x100000)], (DU, du[&Gfn(10)]));
        assert_eq!(f[&Gfn(0x10000a)], (DU, du[&Gfn(500)]));
        // The table: two regions (frames 10..20 are consecutive, 500 is not).
        let r = t.info(GuestPhysAddr(0x100000 << 12)).unwrap();
        assert_eq!(
            (r.kind, r.backing),
            (
                RegionKind::Foreign,
                Backing::Foreign {
                    dom: DU,
                    gfn: Gfn(10)
                }
            )
        );
        assert_eq!(r.range.len(), PageCount(10));
        // The page tables: read-only, never executable.
        assert_eq!(pt.map.len(), 11);
        assert!(pt.map.values().all(|(_, a)| *a == Attrs::READ_ONLY));
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
        assert!(m.foreign(D0).is_empty() && pt.map.is_empty() && vas.used() == 0);
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_batch_with_bad_frames_is_undone_whole() {
        let (m, mut t, mut pt, mut vas) = setup();
        let before = t.clone();
        // Frame 5000 is not populated in the domU: EINVAL for that entry.
        let frames = [Gfn(1), Gfn(2), Gfn(5000), Gfn(3)];
        let e = map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &frames, true).unwrap_err();
        assert_eq!(
            e,
            MapError::Refused {
                index: 2,
                frame: Gfn(5000),
                err: XenError::Errno(Errno::EINVAL)
            }
        );
        assert!(
            m.foreign(D0).is_empty(),
            "the good entries were removed again"
        );
        assert_eq!(t, before);
        assert!(pt.map.is_empty() && vas.used() == 0);
    }

    #[test]
    fn refusals_and_failures_leave_nothing_behind() {
        let (m, mut t, mut pt, mut vas) = setup();
        let before = t.clone();
        for (dom, want) in [
            (DomId::SELF, Errno::ESRCH),
            (D0, Errno::EPERM),
            (DomId(7), Errno::ESRCH),
        ] {
            let e = map_foreign(&m, &mut t, &mut pt, &mut vas, dom, &[Gfn(1)], false).unwrap_err();
            assert_eq!(
                e,
                MapError::Refused {
                    index: 0,
                    frame: Gfn(1),
                    err: XenError::Errno(want)
                }
            );
        }
        // An unprivileged caller: EPERM, as Xen's XSM check says.
        m.set_current(DU).unwrap();
        let e = map_foreign(&m, &mut t, &mut pt, &mut vas, D0, &[Gfn(1)], false).unwrap_err();
        assert!(matches!(
            e,
            MapError::Refused {
                err: XenError::Errno(Errno::EPERM),
                ..
            }
        ));
        m.set_current(D0).unwrap();
        // The whole call refused.
        m.inject(Fault::Errno {
            op: XOp::MapForeignBatch,
            errno: Errno::EFAULT,
        });
        assert_eq!(
            map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &[Gfn(1)], false).unwrap_err(),
            MapError::Xen(XenError::Errno(Errno::EFAULT))
        );
        // The page tables refuse after Xen mapped: Xen's entries go again.
        pt.fail_map = true;
        assert_eq!(
            map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &[Gfn(1), Gfn(2)], false).unwrap_err(),
            MapError::Paging(PagingError::OutOfFrames)
        );
        assert!(m.foreign(D0).is_empty());
        assert_eq!(t, before);
        assert_eq!(vas.used(), 0);
        assert_eq!(
            map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &[], false).unwrap_err(),
            MapError::Empty
        );
        let many: Vec<Gfn> = (0..0x1001).map(Gfn).collect();
        assert_eq!(
            map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &many, false).unwrap_err(),
            MapError::NoHole(PageCount(0x1001))
        );
        let _ = Mfn(0);
    }

    /// Frames 0..n of the domU mapped read-only; the table before.
    fn mapped(
        n: u64,
    ) -> (
        XenModel,
        RegionTable,
        FakeTables,
        VaSpace,
        RegionTable,
        ForeignMap,
    ) {
        let (m, mut t, mut pt, mut vas) = setup();
        let before = t.clone();
        let frames: Vec<Gfn> = (0..n).map(Gfn).collect();
        let fm = map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &frames, false).unwrap();
        assert_eq!(m.foreign(D0).len() as u64, n);
        (m, t, pt, vas, before, fm)
    }

    /// Frames over several multicalls, and a partial last one.
    const N: u64 = 2 * MULTICALL_MAX as u64 + 44;

    #[test]
    fn release_removes_every_frame_in_multicalls() {
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(N);
        let singles = m.calls(XOp::RemoveFromPhysmap);
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
        assert!(m.foreign(D0).is_empty() && pt.map.is_empty() && vas.used() == 0);
        assert_eq!(
            m.calls(XOp::Multicall),
            3,
            "one multicall per MULTICALL_MAX frames"
        );
        assert_eq!(
            m.calls(XOp::RemoveFromPhysmap) - singles,
            N,
            "each frame once"
        );
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_failed_entry_is_reported_by_index_and_the_rest_go() {
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(N);
        let hole = fm.gfns();
        // Entry 150 (in the second multicall) fails; the others go on.
        m.inject(Fault::ErrnoOnCall {
            op: XOp::RemoveFromPhysmap,
            nth: 150,
            errno: Errno::EBUSY,
        });
        let bad = Gfn(hole.start().0 + 150);
        let (fm, e) = fm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert_eq!(
            e,
            MapError::Unmap(UnmapFailure {
                index: 150,
                gfn: bad,
                err: XenError::Errno(Errno::EBUSY),
                failed: 1,
            })
        );
        // Xen kept that entry alone; the table says so: that frame is still
        // foreign (with its own backing), every other one is a hole again.
        assert_eq!(m.foreign(D0).keys().copied().collect::<Vec<_>>(), [bad]);
        assert_eq!(t.count(RegionKind::Foreign), PageCount(1));
        let r = t.info(bad.addr().unwrap()).unwrap();
        assert_eq!(r.range, FrameRange::new(bad, PageCount(1)).unwrap());
        assert_eq!(
            r.backing,
            Backing::Foreign {
                dom: DU,
                gfn: Gfn(150)
            }
        );
        assert!(pt.map.is_empty() && vas.used() == 0);
        // The handle came back knowing that frame alone is left: releasing
        // it again removes that one entry and makes everything as before.
        assert_eq!(
            fm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 1,
                held: 1
            }
        );
        let singles = m.calls(XOp::RemoveFromPhysmap);
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(m.calls(XOp::RemoveFromPhysmap) - singles, 1);
        assert_eq!(t, before);
        assert!(m.foreign(D0).is_empty());
        m.check_conservation().unwrap();
    }

    #[test]
    fn entries_taken_away_behind_the_handle_are_each_reported() {
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(N);
        let hole = fm.gfns().start().0;
        // Something removed frames 3 and N - 1 already: ENOENT for them.
        m.remove_from_physmap(Gfn(hole + 3)).unwrap();
        m.remove_from_physmap(Gfn(hole + N - 1)).unwrap();
        let (fm, e) = fm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert_eq!(
            e,
            MapError::Unmap(UnmapFailure {
                index: 3,
                gfn: Gfn(hole + 3),
                err: XenError::Errno(Errno::ENOENT),
                failed: 2,
            })
        );
        assert!(m.foreign(D0).is_empty());
        assert_eq!(t.count(RegionKind::Foreign), PageCount(2));
        for g in [hole + 3, hole + N - 1] {
            assert_eq!(
                t.info(Gfn(g).addr().unwrap()).unwrap().kind,
                RegionKind::Foreign
            );
        }
        // Xen holds nothing there: the next release only gives them back.
        assert_eq!(
            fm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 0,
                held: 2
            }
        );
        let singles = m.calls(XOp::RemoveFromPhysmap);
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(m.calls(XOp::RemoveFromPhysmap), singles, "no removal again");
        assert_eq!(t, before);
    }

    #[test]
    fn a_refused_multicall_falls_back_to_one_call_per_frame() {
        // Refused whole (a Xen without multicalls): every frame one call.
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(N);
        let singles = m.calls(XOp::RemoveFromPhysmap);
        m.inject(Fault::Errno {
            op: XOp::Multicall,
            errno: Errno::ENOSYS,
        });
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
        assert!(m.foreign(D0).is_empty());
        assert_eq!(m.calls(XOp::Multicall), 1, "not tried again");
        assert_eq!(m.calls(XOp::RemoveFromPhysmap) - singles, N);
        // Stopped half-way (EFAULT after 40 entries of the second): the
        // rest one call each, each frame once.
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(N);
        let singles = m.calls(XOp::RemoveFromPhysmap);
        m.inject(Fault::ErrnoOnCall {
            op: XOp::Multicall,
            nth: 1,
            errno: Errno::EFAULT,
        });
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
        assert!(m.foreign(D0).is_empty());
        assert_eq!(m.calls(XOp::Multicall), 2);
        assert_eq!(m.calls(XOp::RemoveFromPhysmap) - singles, N);
        m.check_conservation().unwrap();
    }

    #[test]
    fn an_unwind_keeps_only_the_frames_xen_kept() {
        let (m, mut t, mut pt, mut vas) = setup();
        let before = t.clone();
        // The page tables refuse after Xen mapped 200 frames, and the
        // unwind's removal of entry 70 fails: only that frame stays out of
        // the holes.
        pt.fail_map = true;
        m.inject(Fault::ErrnoOnCall {
            op: XOp::RemoveFromPhysmap,
            nth: 70,
            errno: Errno::EBUSY,
        });
        let frames: Vec<Gfn> = (0..200).map(Gfn).collect();
        assert_eq!(
            map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &frames, false).unwrap_err(),
            MapError::Unwind(XenError::Errno(Errno::EBUSY))
        );
        assert_eq!(m.foreign(D0).len(), 1);
        assert_eq!(t.count(RegionKind::Foreign), PageCount(1));
        assert_eq!(vas.used(), 0);
        let g = *m.foreign(D0).keys().next().unwrap();
        m.remove_from_physmap(g).unwrap();
        t.modify(FrameRange::new(g, PageCount(1)).unwrap(), back_to_hole())
            .unwrap();
        assert_eq!(t, before);
    }

    /// Make the table refuse to give `gfn` back (a release expects
    /// `Foreign` there), or accept it again.
    fn tamper(t: &mut RegionTable, gfn: Gfn, refuse: bool) {
        let (from, to) = if refuse {
            (RegionKind::Foreign, RegionKind::Grant)
        } else {
            (RegionKind::Grant, RegionKind::Foreign)
        };
        t.modify(
            FrameRange::new(gfn, PageCount(1)).unwrap(),
            Change {
                kind: Some(to),
                expect: Some(from),
                ..Change::default()
            },
        )
        .unwrap();
    }

    /// A release stopped at each of its steps in turn: the error, the
    /// handle given back with exactly what is left, and a second release
    /// that finishes, each frame removed from the physmap once. Nothing is
    /// left: page tables, window, holes, Xen's foreign entries; no leak.
    #[test]
    fn every_step_of_a_release_fails_once_and_the_retry_finishes() {
        use crate::grant::{AccessError, Bytes};
        use crate::leak::test_hook::take;
        let n = 200u64;
        let all = Outstanding {
            window_pages: n,
            in_xen: n,
            held: n,
        };
        let clean = |m: &XenModel,
                     t: &RegionTable,
                     before: &RegionTable,
                     pt: &FakeTables,
                     vas: &VaSpace| {
            assert_eq!(t, before);
            assert!(m.foreign(D0).is_empty());
            assert!(pt.map.is_empty());
            assert_eq!(vas.used(), 0);
            m.check_conservation().unwrap();
        };
        take();

        // 1. The page tables refuse: nothing changed, it still reads.
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(n);
        pt.fail_unmap = true;
        let (fm, e) = fm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert_eq!(e, MapError::Paging(PagingError::OutOfFrames));
        assert_eq!(fm.outstanding(), all);
        assert_eq!(m.calls(XOp::Multicall), 0, "Xen was not asked");
        assert!(fm.window().is_some());
        pt.fail_unmap = false;
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        clean(&m, &t, &before, &pt, &vas);

        // 2. Xen refuses the first frame of the second multicall: the
        // window is gone (no byte access), every other frame is a hole
        // again, and the retry removes that one alone.
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(n);
        m.inject(Fault::ErrnoOnCall {
            op: XOp::RemoveFromPhysmap,
            nth: MULTICALL_MAX as u32,
            errno: Errno::EBUSY,
        });
        let (fm, e) = fm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert!(
            matches!(e, MapError::Unmap(UnmapFailure { index, failed: 1, .. }) if index == MULTICALL_MAX as u64),
            "{e:?}"
        );
        assert_eq!(
            fm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 1,
                held: 1
            }
        );
        assert_eq!(fm.read_obj::<u64>(0), Err(AccessError::NotMapped));
        let singles = m.calls(XOp::RemoveFromPhysmap);
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(m.calls(XOp::RemoveFromPhysmap) - singles, 1);
        clean(&m, &t, &before, &pt, &vas);

        // 3. The table refuses the holes back: Xen let go of everything;
        // the retry asks Xen nothing.
        let (m, mut t, mut pt, mut vas, before, fm) = mapped(n);
        let at = Gfn(fm.gfns().start().0 + 7);
        tamper(&mut t, at, true);
        let (fm, e) = fm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert!(matches!(e, MapError::Table(_)), "{e:?}");
        assert_eq!(
            fm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 0,
                held: n
            }
        );
        assert!(m.foreign(D0).is_empty());
        tamper(&mut t, at, false);
        let singles = m.calls(XOp::RemoveFromPhysmap);
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(m.calls(XOp::RemoveFromPhysmap), singles);
        clean(&m, &t, &before, &pt, &vas);

        assert_eq!(take(), [], "nothing leaked");
    }

    #[test]
    fn a_dropped_foreign_map_is_reported_to_the_hook() {
        use crate::leak::{test_hook::take, LeakKind};
        let (m, mut t, mut pt, mut vas, _, fm) = mapped(3);
        take();
        let (gfns, va) = (fm.gfns(), fm.va());
        drop(fm);
        let leaks = take();
        assert_eq!(leaks.len(), 1);
        assert_eq!(
            (leaks[0].kind, leaks[0].domain, leaks[0].frames, leaks[0].va),
            (LeakKind::ForeignMap, Some(DU), Some(gfns), Some(va))
        );
        assert_eq!(
            leaks[0].outstanding,
            Outstanding {
                window_pages: 3,
                in_xen: 3,
                held: 3
            }
        );
        let fm = map_foreign(&m, &mut t, &mut pt, &mut vas, DU, &[Gfn(9)], false).unwrap();
        fm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(take(), []);
    }

    #[test]
    fn va_space_first_fit() {
        let w = paging::Window::new(VirtAddr(0x1000_0000), 16 * PAGE_SIZE).unwrap();
        let mut v = VaSpace::new(w);
        let a = v.alloc(PageCount(4)).unwrap();
        let b = v.alloc(PageCount(4)).unwrap();
        assert_eq!((a.0, b.0), (0x1000_0000, 0x1000_4000));
        v.free(a);
        assert_eq!(v.alloc(PageCount(2)), Some(a), "first fit reuses the gap");
        assert_eq!(v.alloc(PageCount(3)).map(|x| x.0), Some(0x1000_8000));
        assert_eq!(v.alloc(PageCount(6)), None);
        assert_eq!(v.alloc(PageCount(0)), None);
    }
}
