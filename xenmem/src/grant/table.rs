//! The agent's own grant table: its frames in holes of the physmap and in the
//! mapping window, the grants it issues and ends.

use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU16, Ordering};

use super::{window_ptr, GrantError, GrantRef, Undo, DOMID_FIRST_RESERVED, TABLE_FRAME_KIND};
use crate::addr::{DomId, Gfn, Order, PageCount, VirtAddr, PAGE_SIZE};
use crate::alloc_util::TryVec;
use crate::leak::{self, Leak, LeakKind, Outstanding};
use crate::mapping::{MapTarget, VaSpace};
use crate::paging::Attrs;
use crate::region::{
    Backing, Change, FrameRange, Region, RegionFlags, RegionKind, RegionTable, ReservedUse,
};
use crate::xen::abi::{gnttab as g, physmap};
use crate::xen::Hypervisor;

/// Version-1 entries per frame.
const PER_FRAME: u32 = g::ENTRIES_PER_FRAME_V1;
/// Bytes of a version-1 entry.
const ENTRY_SIZE: u64 = 8;
/// Compare-and-swap attempts of [`GrantTable::end_access`] against a flags
/// word that keeps changing (Xen pinning and unpinning) before it gives up
/// and reports the grant in use.
const END_ACCESS_TRIES: usize = 64;

/// A grant the table issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The domain allowed access.
    pub dom: DomId,
    /// The agent's frame it may access.
    pub frame: Gfn,
    /// Whether it may only read.
    pub readonly: bool,
}

/// A grant and what its entry says now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantState {
    /// The grant.
    pub grant: Grant,
    /// `GTF_reading`: the grantee has it mapped or is copying from it.
    pub reading: bool,
    /// `GTF_writing`: the grantee has it mapped writable or is copying to it.
    pub writing: bool,
}

/// Frames added in one go: one hole range, one window allocation, and how
/// far a release got with them.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    gfns: FrameRange,
    va: VirtAddr,
    /// Still mapped in the window.
    window: bool,
    /// Frames (from the first) already removed from the physmap.
    removed: u64,
}

/// The agent's own (version 1) grant table, mapped into its window.
///
/// Set up with [`GrantTable::setup`], grown with [`GrantTable::grow`]; the
/// frames stay until [`GrantTable::release`] (which needs every grant
/// ended). The table owns the grants it issues: a grant
/// [`GrantTable::end_access`] refuses (the other side still uses it) stays
/// recorded here and is ended by a later call, and the table cannot be
/// released while it has any. A release that fails part-way keeps what is
/// left recorded and the next one continues; a table dropped with frames
/// still held reports a [`Leak`] (see [`crate::leak`]).
#[derive(Debug)]
pub struct GrantTable {
    chunks: Vec<Chunk>,
    /// Window address of each table frame, by frame index.
    frame_va: Vec<VirtAddr>,
    max_frames: u32,
    /// The free references, one bit each (bit `r % 64` of word `r / 64`),
    /// for every frame mapped in the window: sized when frames are added,
    /// so that ending a grant needs no memory.
    free: Vec<u64>,
    /// The grants issued and not ended, sorted by reference.
    active: Vec<(u32, Grant)>,
}

/// Words of the free bitmap per table frame.
const FREE_WORDS_PER_FRAME: usize = (PER_FRAME / 64) as usize;

/// The change that gives table frames back to the holes.
fn to_hole() -> Change {
    Change {
        kind: Some(RegionKind::Hole),
        clear: RegionFlags::all(),
        backing: Some(Backing::None),
        expect: Some(TABLE_FRAME_KIND),
        ..Change::default()
    }
}

fn back_to_hole(table: &mut RegionTable, range: FrameRange) {
    // Cannot fail: the range was recorded as a grant region just before.
    let _ = table.modify(range, to_hole());
}

impl GrantTable {
    /// Set up the table with `frames` frames (at least one; more may be
    /// added with [`GrantTable::grow`] up to Xen's maximum for the domain).
    pub fn setup(
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        frames: u32,
    ) -> Result<GrantTable, GrantError> {
        if frames == 0 {
            return Err(GrantError::Empty);
        }
        let q = hv.gnttab_query_size(DomId::SELF).map_err(GrantError::Xen)?;
        if !q.status().is_ok() {
            return Err(GrantError::Status(q.status()));
        }
        let mut t = GrantTable {
            chunks: Vec::new(),
            frame_va: Vec::new(),
            max_frames: q.max_nr_frames,
            free: Vec::new(),
            active: Vec::new(),
        };
        t.add_frames(hv, table, pt, vas, frames)?;
        Ok(t)
    }

    /// Add `more` frames to the table.
    pub fn grow(
        &mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        more: u32,
    ) -> Result<(), GrantError> {
        self.add_frames(hv, table, pt, vas, more)
    }

    fn add_frames(
        &mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        more: u32,
    ) -> Result<(), GrantError> {
        if more == 0 {
            return Err(GrantError::Empty);
        }
        if self.chunks.iter().any(|c| !c.window) {
            return Err(GrantError::Releasing);
        }
        let first = self.frame_va.len() as u32;
        let total = first.saturating_add(more);
        if total > self.max_frames {
            return Err(GrantError::TableSize {
                asked: total,
                max: self.max_frames,
            });
        }
        let n = PageCount(u64::from(more));
        let hole = table
            .find_hole(n, Order::ZERO, Gfn(1))
            .ok_or(GrantError::NoHole(n))?;
        // Room for the new frames' records before anything changes (they
        // are written after the hypercalls, when a refusal would leave Xen
        // holding frames the table does not know of).
        let words = (more as usize).saturating_mul(FREE_WORDS_PER_FRAME);
        self.chunks.try_room(1, "grant-table chunks")?;
        self.frame_va
            .try_room(more as usize, "grant-table frame addresses")?;
        self.free.try_room(words, "grant-table free references")?;
        let va = vas.try_alloc(n)?.ok_or(GrantError::NoVirtualSpace(n))?;
        let region = Region {
            range: hole,
            kind: TABLE_FRAME_KIND,
            flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
            backing: Backing::None,
        };
        if let Err(e) = table.add(region) {
            vas.free(va);
            return Err(e.into());
        }
        let gfn = |i: u32| Gfn(hole.start().0 + u64::from(i));
        // Take back the frames Xen placed, and the hole; `Err` if Xen
        // refuses (then the table keeps the frames out of its holes).
        let undo = |table: &mut RegionTable, placed: u32| -> Result<(), GrantError> {
            for j in 0..placed {
                hv.remove_from_physmap(gfn(j))
                    .map_err(|e| GrantError::Unwind(Undo::Physmap(gfn(j), e)))?;
            }
            back_to_hole(table, hole);
            Ok(())
        };
        for i in 0..more {
            let idx = u64::from(first + i);
            if let Err(e) = hv.add_to_physmap(physmap::SPACE_GRANT_TABLE, idx, gfn(i)) {
                vas.free(va);
                undo(table, i)?;
                return Err(GrantError::Xen(e));
            }
        }
        if let Err(e) = pt.map(va, hole.start_addr(), n, Attrs::READ_WRITE, table) {
            vas.free(va);
            undo(table, more)?;
            return Err(GrantError::Paging(e));
        }
        // Within the room made above: no allocation.
        self.chunks.push(Chunk {
            gfns: hole,
            va,
            window: true,
            removed: 0,
        });
        // Within the room made above: no allocation.
        self.free.resize(self.free.len() + words, 0);
        for i in 0..more {
            // Within the room made above: no allocation.
            self.frame_va
                .push(VirtAddr(va.0 + u64::from(i) * PAGE_SIZE));
            let idx = first + i;
            for r in idx * PER_FRAME..(idx + 1) * PER_FRAME {
                // Skip the reserved entries, and any entry something else
                // (a toolstack) already uses.
                let unused = self
                    .flags(r)
                    .is_some_and(|f| f.load(Ordering::Acquire) == 0);
                if r >= g::NR_RESERVED_ENTRIES && unused {
                    self.set_free(r, true);
                }
            }
        }
        Ok(())
    }

    /// Mark reference `r` (of a mapped frame) free or taken.
    fn set_free(&mut self, r: u32, free: bool) {
        if let Some(w) = self.free.get_mut((r / 64) as usize) {
            let bit = 1u64 << (r % 64);
            if free {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    /// The lowest free reference.
    fn first_free(&self) -> Option<u32> {
        let (i, w) = self.free.iter().enumerate().find(|(_, w)| **w != 0)?;
        u32::try_from(i * 64)
            .ok()
            .map(|base| base + w.trailing_zeros())
    }

    /// Where grant `r` is in `active`.
    fn active_index(&self, r: u32) -> Result<usize, usize> {
        self.active.binary_search_by_key(&r, |&(x, _)| x)
    }

    /// The window address of entry `r` (of a mapped frame).
    fn entry_va(&self, r: u32) -> Option<u64> {
        let frame = self.frame_va.get((r / PER_FRAME) as usize)?;
        Some(frame.0 + u64::from(r % PER_FRAME) * ENTRY_SIZE)
    }

    /// The flags word of entry `r`, if `r` is in a mapped frame.
    fn flags(&self, r: u32) -> Option<&AtomicU16> {
        let p = window_ptr(self.entry_va(r)?) as *mut u16;
        // SAFETY: entry `r` lies in a frame of this table, mapped read-write
        // in the window for as long as `self` holds the frame (the borrow
        // of `self` bounds the reference's life); entries are 8-byte
        // aligned; Xen reads and writes the word atomically (cmpxchg) too,
        // never non-atomically.
        Some(unsafe { AtomicU16::from_ptr(p) })
    }

    /// Grant domain `dom` access to the agent's frame `frame`, read-only or
    /// read-write. The entry's frame and domid are written first, then a
    /// write barrier, then its flags, so Xen never sees a half-written
    /// grant. The lowest free reference is used (8 in a fresh table).
    pub fn grant_access(
        &mut self,
        table: &RegionTable,
        dom: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        // Only RAM the agent may share: free RAM, a contiguous buffer, or
        // frames allocated for the purpose — never its image, heap, stacks,
        // page tables or boot data, which the table reserves.
        let kind = table.region_at(frame).map(|r| r.kind);
        if !matches!(
            kind,
            Some(
                RegionKind::Ram
                    | RegionKind::Contiguous
                    | RegionKind::Reserved(ReservedUse::Allocated)
            )
        ) {
            return Err(GrantError::NotGrantable { frame, kind });
        }
        self.grant_access_unchecked(dom, frame, readonly)
    }

    /// [`GrantTable::grant_access`] without the region-table check (for the
    /// crate's tests, whose frames are the model's).
    pub(crate) fn grant_access_unchecked(
        &mut self,
        dom: DomId,
        frame: Gfn,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        if dom.0 >= DOMID_FIRST_RESERVED {
            return Err(GrantError::BadDomain(dom));
        }
        let f = u32::try_from(frame.0).map_err(|_| GrantError::FrameTooLarge(frame))?;
        let r = self.first_free().ok_or(GrantError::TableFull)?;
        // Room for the record before the entry is written.
        self.active.try_room(1, "grant-table grants")?;
        let at = match self.active_index(r) {
            // Cannot happen: a free reference is not active.
            Ok(_) => return Err(GrantError::TableFull),
            Err(at) => at,
        };
        self.set_free(r, false);
        let (Some(va), Some(word)) = (self.entry_va(r), self.flags(r)) else {
            // Cannot happen: free references are in mapped frames.
            return Err(GrantError::TableFull);
        };
        // SAFETY: entry `r` lies in a table frame mapped read-write in the
        // window (see `flags`); its flags are 0 (free), so Xen does not look
        // at the frame and domid, which only the agent writes; the fields
        // are naturally aligned (entry + 4, entry + 2).
        unsafe {
            (window_ptr(va + 4) as *mut u32).write_volatile(f);
            (window_ptr(va + 2) as *mut u16).write_volatile(dom.0);
        }
        // The other side must never see the flags before frame and domid.
        fence(Ordering::Release);
        let flags = g::GTF_PERMIT_ACCESS | if readonly { g::GTF_READONLY } else { 0 };
        word.store(flags, Ordering::Release);
        // Within the room made above: no allocation.
        self.active.insert(
            at,
            (
                r,
                Grant {
                    dom,
                    frame,
                    readonly,
                },
            ),
        );
        Ok(GrantRef(r))
    }

    /// End grant `r`, unless the grantee still has it mapped or is copying
    /// through it ([`GrantError::InUse`]: it stays granted; try again once
    /// the other side has unmapped). The flags are cleared with a
    /// compare-and-swap that fails if Xen set `GTF_reading`/`GTF_writing` in
    /// the meantime, as Linux's `gnttab_end_foreign_access_ref` does.
    pub fn end_access(&mut self, r: GrantRef) -> Result<(), GrantError> {
        let Ok(at) = self.active_index(r.0) else {
            return Err(GrantError::NotGranted(r));
        };
        let Some(word) = self.flags(r.0) else {
            return Err(GrantError::NotGranted(r));
        };
        let mut cur = word.load(Ordering::Acquire);
        for _ in 0..END_ACCESS_TRIES {
            if cur & (g::GTF_READING | g::GTF_WRITING) != 0 {
                return Err(GrantError::InUse(r));
            }
            match word.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.active.remove(at);
                    self.set_free(r.0, true);
                    return Ok(());
                }
                Err(now) => cur = now,
            }
        }
        Err(GrantError::InUse(r))
    }

    /// A grant this table issued, with what its entry says now.
    pub fn state(&self, r: GrantRef) -> Option<GrantState> {
        let grant = self.active.get(self.active_index(r.0).ok()?)?.1;
        let f = self.flags(r.0)?.load(Ordering::Acquire);
        Some(GrantState {
            grant,
            reading: f & g::GTF_READING != 0,
            writing: f & g::GTF_WRITING != 0,
        })
    }

    /// The grants issued and not ended, by reference.
    pub fn grants(&self) -> impl Iterator<Item = (GrantRef, Grant)> + '_ {
        self.active.iter().map(|&(r, gr)| (GrantRef(r), gr))
    }

    /// How many grants are issued and not ended.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// How many more grants fit without growing.
    pub fn available(&self) -> usize {
        self.free.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Frames the agent has mapped.
    pub fn frames(&self) -> u32 {
        self.frame_va.len() as u32
    }

    /// Xen's maximum for this domain.
    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// The physmap frames the table occupies, in frame-index order.
    pub fn frame_gfns(&self) -> impl Iterator<Item = Gfn> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| (c.gfns.start().0..c.gfns.end().0).map(Gfn))
    }

    /// Where each table frame is mapped in the window, in frame-index order
    /// (pairs with [`GrantTable::frame_gfns`]).
    pub fn frame_vas(&self) -> impl Iterator<Item = VirtAddr> + '_ {
        self.frame_va.iter().copied()
    }

    /// What is still to be undone: the frames mapped in the window, in the
    /// physmap, and held out of the holes.
    pub fn outstanding(&self) -> Outstanding {
        let mut o = Outstanding::default();
        for c in &self.chunks {
            let n = c.gfns.len().0;
            if c.window {
                o.window_pages += n;
            }
            o.in_xen += n - c.removed;
            o.held += n;
        }
        o
    }

    /// Unmap the table's frames from the window, remove them from the
    /// physmap and give the holes back. Refused while grants are active
    /// (nothing changes). Xen keeps the table itself; a later
    /// [`GrantTable::grow`] maps it again.
    ///
    /// The frames go back in groups (as they were added, the last first).
    /// On a failure — the page tables refused ([`GrantError::Paging`]), Xen
    /// refused to remove a frame ([`GrantError::Unwind`]), the table
    /// refused the holes back ([`GrantError::Table`]) — the table keeps
    /// what is left recorded (no grant can be issued in frames unmapped
    /// from the window, and [`GrantTable::grow`] is refused until the
    /// release is finished), and calling this again continues where it
    /// stopped, each step done once.
    pub fn release(
        &mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), GrantError> {
        if !self.active.is_empty() {
            return Err(GrantError::GrantsActive(self.active.len()));
        }
        while let Some(c) = self.chunks.last_mut() {
            if c.window {
                pt.unmap(c.va, c.gfns.len(), table)
                    .map_err(GrantError::Paging)?;
                vas.free(c.va);
                c.window = false;
                // Only the chunks mapped in the window are in `frame_va`,
                // and they come first.
                let keep = self.frame_va.len().saturating_sub(c.gfns.len().0 as usize);
                self.frame_va.truncate(keep);
                self.free.truncate(keep * FREE_WORDS_PER_FRAME);
            }
            while c.removed < c.gfns.len().0 {
                let gfn = Gfn(c.gfns.start().0 + c.removed);
                hv.remove_from_physmap(gfn)
                    .map_err(|e| GrantError::Unwind(Undo::Physmap(gfn, e)))?;
                c.removed += 1;
            }
            table.modify(c.gfns, to_hole())?;
            self.chunks.pop();
        }
        Ok(())
    }
}

impl Drop for GrantTable {
    fn drop(&mut self) {
        if let Some(c) = self.chunks.first() {
            leak::report(&Leak {
                kind: LeakKind::GrantTable,
                domain: None,
                frames: Some(c.gfns),
                va: c.window.then_some(c.va),
                outstanding: self.outstanding(),
                grants: self.active.len(),
            });
        }
    }
}
