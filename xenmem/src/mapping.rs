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
//! [`ForeignMap::release`]; dropping it unreleased is logged as a leak (the
//! mapping cannot be torn down without the hypervisor, the table and the page
//! tables, which a `Drop` does not have).
//!
//! Unmapping (a release or an unwind) removes the entries with
//! `XENMEM_remove_from_physmap` batched in multicalls
//! ([`Hypervisor::remove_from_physmap_batch`], [`MULTICALL_MAX`] per
//! hypercall, one call per frame where Xen refuses multicalls). Every frame
//! is tried; a frame Xen does not let go stays recorded as foreign, out of
//! the table's holes, and is reported by index; the others go back.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DomId, Gfn, PageCount, VirtAddr, PAGE_SIZE};
use crate::paging::{self, Attrs, FrameSource, PagingError};
use crate::region::{
    Backing, Change, FrameRange, Op, Region, RegionError, RegionFlags, RegionKind, RegionTable,
};
use crate::xen::{Hypervisor, XenError, XenStatus, MULTICALL_MAX};

/// The most entries one `add_to_physmap_batch` carries (its `size` is 16
/// bits; a smaller batch keeps the status list on the stack small).
pub const BATCH: usize = 512;

/// What the page tables offer this module: map and unmap runs of 4 KiB pages
/// in the mapping window. Implemented by [`paging::PageTable`]; host tests
/// use a fake.
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
    /// Unmap `pages` pages at `va`, flushed.
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
#[derive(Clone, Debug)]
pub struct VaSpace {
    window: paging::Window,
    /// Allocations: first page index in the window -> pages.
    used: BTreeMap<u64, u64>,
}

impl VaSpace {
    /// All of `window` free.
    pub fn new(window: paging::Window) -> Self {
        VaSpace {
            window,
            used: BTreeMap::new(),
        }
    }

    /// `pages` consecutive free pages.
    pub fn alloc(&mut self, pages: PageCount) -> Option<VirtAddr> {
        let total = self.window.size() / PAGE_SIZE;
        let mut at = 0u64;
        for (&s, &n) in &self.used {
            if s - at >= pages.0 {
                break;
            }
            at = s + n;
        }
        if pages.0 == 0 || at.checked_add(pages.0)? > total {
            return None;
        }
        self.used.insert(at, pages.0);
        Some(VirtAddr(self.window.start().0 + at * PAGE_SIZE))
    }

    /// Give back an allocation made at `va`.
    pub fn free(&mut self, va: VirtAddr) {
        if let Some(off) = va.0.checked_sub(self.window.start().0) {
            self.used.remove(&(off / PAGE_SIZE));
        }
    }

    /// Pages in use.
    pub fn used(&self) -> u64 {
        self.used.values().sum()
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
        }
    }
}

impl From<RegionError> for MapError {
    fn from(e: RegionError) -> Self {
        MapError::Table(e)
    }
}

/// Another domain's frames, mapped. Read and write them with
/// [`Bytes`](crate::grant::Bytes) (bounds-checked, volatile; writes refused
/// when read-only).
#[must_use = "a mapping must be given back with ForeignMap::release"]
#[derive(Debug)]
pub struct ForeignMap {
    va: VirtAddr,
    gfns: FrameRange,
    dom: DomId,
    writable: bool,
    released: bool,
}

impl ForeignMap {
    /// Where it is mapped.
    pub fn va(&self) -> VirtAddr {
        self.va
    }

    /// The hole frames it occupies in the agent's physmap.
    pub fn gfns(&self) -> FrameRange {
        self.gfns
    }

    /// The domain the frames belong to.
    pub fn domain(&self) -> DomId {
        self.dom
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.gfns.len().0 * PAGE_SIZE
    }

    /// Never: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Give the mapping back: unmap it from the window, remove the foreign
    /// entries from the physmap ([`MULTICALL_MAX`] per multicall), and
    /// return the hole to the table. Every frame is tried; those Xen does
    /// not remove stay marked foreign (out of the holes) and are reported by
    /// index ([`MapError::Unmap`]). The handle is gone either way.
    pub fn release(
        mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), MapError> {
        self.released = true;
        pt.unmap(self.va, self.gfns.len(), table)
            .map_err(MapError::Paging)?;
        vas.free(self.va);
        // Every frame was mapped: here even ENOENT is an error.
        remove_to_holes(hv, table, self.gfns, |_| false)
    }
}

impl Drop for ForeignMap {
    fn drop(&mut self) {
        if !self.released {
            xm_error!(
                "mapping: {=u64} foreign frames at {} dropped without release: leaked",
                self.gfns.len().0,
                self.va
            );
        }
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
    remove_each(hv, gfns, not_mapped, |_| {}).map(|f| f.err)
}

/// `XENMEM_remove_from_physmap` for every frame of `gfns`, batched
/// ([`Hypervisor::remove_from_physmap_batch`], one multicall per
/// [`MULTICALL_MAX`] frames, from a buffer on the stack; after a multicall
/// that failed as a whole, one call per frame); all are tried. `failed(i)`
/// is told the index of every frame whose error is not `expected`, in
/// order; the first of them and the count are returned.
fn remove_each(
    hv: &impl Hypervisor,
    gfns: FrameRange,
    expected: impl Fn(&XenError) -> bool,
    mut failed: impl FnMut(u64),
) -> Option<UnmapFailure> {
    let mut first: Option<UnmapFailure> = None;
    let mut count = 0u64;
    let mut list = [Gfn(0); MULTICALL_MAX];
    let mut results = [Ok(()); MULTICALL_MAX];
    let mut at = gfns.start().0;
    let mut batched = true;
    while at < gfns.end().0 {
        let n = (gfns.end().0 - at).min(MULTICALL_MAX as u64) as usize;
        for (i, g) in list[..n].iter_mut().enumerate() {
            *g = Gfn(at + i as u64);
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
        for (i, r) in results.iter().enumerate() {
            let Err(e) = r else { continue };
            if expected(e) {
                continue;
            }
            let index = at - gfns.start().0 + i as u64;
            count += 1;
            failed(index);
            first.get_or_insert(UnmapFailure {
                index,
                gfn: Gfn(at + i as u64),
                err: *e,
                failed: 0,
            });
        }
        at += n as u64;
    }
    first.map(|f| UnmapFailure { failed: count, ..f })
}

/// Remove every frame of `gfns` (recorded as foreign in `table`) from the
/// physmap and give the frames Xen let go back to the holes; those whose
/// removal failed with an error that is not `expected` stay foreign and
/// are reported ([`MapError::Unmap`], the first by index).
fn remove_to_holes(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    gfns: FrameRange,
    expected: impl Fn(&XenError) -> bool,
) -> Result<(), MapError> {
    // Runs of frames that went, given back between the failed ones (which
    // come in order).
    let mut run_start = 0u64;
    let mut table_err = None;
    let mut give_back = |table: &mut RegionTable, from: u64, to: u64| {
        if to > from {
            let r = FrameRange::new(Gfn(gfns.start().0 + from), PageCount(to - from))
                .and_then(|r| table.modify(r, back_to_hole()));
            if let Err(e) = r {
                table_err.get_or_insert(e);
            }
        }
    };
    let failure = remove_each(hv, gfns, expected, |i| {
        give_back(table, run_start, i);
        run_start = i + 1;
    });
    give_back(table, run_start, gfns.len().0);
    match (failure, table_err) {
        (Some(f), _) => Err(MapError::Unmap(f)),
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
    let va = vas.alloc(n).ok_or(MapError::NoVirtualSpace(n))?;
    // Record the mapping first, one region per run of consecutive frames.
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
        ops.push(Op::Add(Region {
            range,
            kind: RegionKind::Foreign,
            flags,
            backing: Backing::Foreign {
                dom,
                gfn: frames[i],
            },
        }));
        i = j;
    }
    if let Err((e, _)) = table.apply(&ops) {
        vas.free(va);
        return Err(MapError::Table(e));
    }
    // Ask Xen, batch by batch; on any refusal take back what was mapped.
    let gfns: Vec<Gfn> = (hole.start().0..hole.end().0).map(Gfn).collect();
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
            Ok(asked) => remove_to_holes(hv, table, asked, not_mapped),
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
        va,
        gfns: hole,
        dom,
        writable,
        released: false,
    })
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
            for i in 0..pages.0 {
                self.map
                    .remove(&(va.0 + i * PAGE_SIZE))
                    .ok_or(PagingError::NotMapped(VirtAddr(va.0 + i * PAGE_SIZE)))?;
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
        assert_eq!(
            fm.release(&m, &mut t, &mut pt, &mut vas).unwrap_err(),
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
        // Removing the last entry by hand makes everything as before.
        m.remove_from_physmap(bad).unwrap();
        t.modify(r.range, back_to_hole()).unwrap();
        assert_eq!(t, before);
        m.check_conservation().unwrap();
    }

    #[test]
    fn entries_taken_away_behind_the_handle_are_each_reported() {
        let (m, mut t, mut pt, mut vas, _, fm) = mapped(N);
        let hole = fm.gfns().start().0;
        // Something removed frames 3 and N - 1 already: ENOENT for them.
        m.remove_from_physmap(Gfn(hole + 3)).unwrap();
        m.remove_from_physmap(Gfn(hole + N - 1)).unwrap();
        assert_eq!(
            fm.release(&m, &mut t, &mut pt, &mut vas).unwrap_err(),
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
