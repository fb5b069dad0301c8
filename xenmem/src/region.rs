//! The agent's pseudo-physical region table.
//!
//! Every guest-physical range the agent knows about, with its [`RegionKind`],
//! [`RegionFlags`] and [`Backing`]. The analogue of QNX qvm's
//! `gasp_region_set()` / `gasp_region_info()`, typed and atomic:
//!
//! - [`RegionTable::add`] inserts a region; it is refused if it overlaps
//!   another, unless the kinds allow replacing (a hole becoming a mapping).
//! - [`RegionTable::modify`] changes kind, flags or backing over any sub-range,
//!   splitting the regions it cuts.
//! - [`RegionTable::delete`] removes a range, splitting likewise.
//! - [`RegionTable::info`] returns the region that contains an address, with
//!   its current extent.
//! - [`RegionTable::apply`] applies a batch of those all-or-nothing.
//!
//! Adjacent regions with identical attributes merge, so the table stays small;
//! regions whose backing is not continuous (machine frames, grant references,
//! foreign frames) never merge, so a machine-contiguous run stays one region
//! and is never joined to memory that is not contiguous with it.
//!
//! The table is a `BTreeMap` keyed by first frame: lookups and updates are
//! O(log n). Every error leaves the table exactly as it was.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Bound;

use crate::addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount, PAGE_SIZE};

/// A grant reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GrantRef(pub u32);

/// A non-empty range of guest frames `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameRange {
    start: Gfn,
    end: Gfn,
}

impl FrameRange {
    /// `count` frames from `start`.
    pub fn new(start: Gfn, count: PageCount) -> Result<Self, RegionError> {
        if count.0 == 0 {
            return Err(RegionError::Empty);
        }
        let end = start.0.checked_add(count.0).ok_or(RegionError::Overflow)?;
        if end > MAX_FRAME {
            return Err(RegionError::Overflow);
        }
        Ok(Self {
            start,
            end: Gfn(end),
        })
    }

    /// Frames `[start, end)`.
    pub fn from_frames(start: Gfn, end: Gfn) -> Result<Self, RegionError> {
        if end.0 <= start.0 {
            return Err(RegionError::Empty);
        }
        Self::new(start, PageCount(end.0 - start.0))
    }

    /// The frames of the guest-physical bytes `[start, end)`; both ends must be
    /// page-aligned.
    pub fn from_addrs(start: GuestPhysAddr, end: GuestPhysAddr) -> Result<Self, RegionError> {
        for a in [start, end] {
            if !a.is_page_aligned() {
                return Err(RegionError::Unaligned(a));
            }
        }
        Self::from_frames(start.frame(), end.frame())
    }

    /// First frame.
    pub const fn start(&self) -> Gfn {
        self.start
    }

    /// One past the last frame.
    pub const fn end(&self) -> Gfn {
        self.end
    }

    /// Number of frames.
    pub const fn len(&self) -> PageCount {
        PageCount(self.end.0 - self.start.0)
    }

    /// Always false: ranges are non-empty by construction.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether `gfn` lies inside.
    pub const fn contains(&self, gfn: Gfn) -> bool {
        self.start.0 <= gfn.0 && gfn.0 < self.end.0
    }

    /// Guest-physical address of the first byte.
    pub const fn start_addr(&self) -> GuestPhysAddr {
        GuestPhysAddr(self.start.0 * PAGE_SIZE)
    }

    /// Guest-physical address one past the last byte.
    pub const fn end_addr(&self) -> GuestPhysAddr {
        GuestPhysAddr(self.end.0 * PAGE_SIZE)
    }
}

/// Frames above this are out of range (52-bit guest-physical addresses).
pub const MAX_FRAME: u64 = 1 << (52 - 12);

/// What a reserved range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReservedUse {
    /// Firmware: e820 reserved, device-tree reserved memory.
    Firmware,
    /// ACPI tables and NVS.
    Acpi,
    /// Unusable memory.
    Unusable,
    /// The agent's own image (text, data, bss).
    Image,
    /// A stack.
    Stack,
    /// Page tables.
    PageTables,
    /// The heap.
    Heap,
    /// Boot modules, start info, the device tree.
    Boot,
    /// Frames handed out by the frame allocator for another purpose.
    Allocated,
    /// Pages the toolstack populated outside RAM (ACPI tables, console and
    /// xenstore rings, ...): counted by Xen, not the agent's to give away
    /// (see [`crate::special`]).
    Special,
}

/// The kind of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegionKind {
    /// RAM that Xen has populated and nobody uses: free for allocation or
    /// ballooning.
    Ram,
    /// RAM given back to Xen: the frames exist in the map but have no backing.
    Ballooned,
    /// In use or not to be touched.
    Reserved(ReservedUse),
    /// Device memory.
    Mmio,
    /// Another domain's grant, mapped here.
    Grant,
    /// Another domain's frame, mapped here as foreign.
    Foreign,
    /// A machine-contiguous buffer.
    Contiguous,
    /// Neither RAM nor device: free guest-physical space for mappings.
    Hole,
}

impl RegionKind {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            RegionKind::Ram => "ram",
            RegionKind::Ballooned => "ballooned",
            RegionKind::Reserved(u) => match u {
                ReservedUse::Firmware => "reserved:firmware",
                ReservedUse::Acpi => "reserved:acpi",
                ReservedUse::Unusable => "reserved:unusable",
                ReservedUse::Image => "reserved:image",
                ReservedUse::Stack => "reserved:stack",
                ReservedUse::PageTables => "reserved:page-tables",
                ReservedUse::Heap => "reserved:heap",
                ReservedUse::Boot => "reserved:boot",
                ReservedUse::Allocated => "reserved:allocated",
                ReservedUse::Special => "reserved:special",
            },
            RegionKind::Mmio => "mmio",
            RegionKind::Grant => "grant",
            RegionKind::Foreign => "foreign",
            RegionKind::Contiguous => "contiguous",
            RegionKind::Hole => "hole",
        }
    }

    /// Whether the frames are the guest's own populated RAM: free RAM, RAM the
    /// agent uses (image, stacks, page tables, heap, boot data, allocations)
    /// and contiguous buffers. These are what Xen counts in the reservation.
    pub const fn is_populated_ram(self) -> bool {
        matches!(
            self,
            RegionKind::Ram
                | RegionKind::Contiguous
                | RegionKind::Reserved(
                    ReservedUse::Image
                        | ReservedUse::Stack
                        | ReservedUse::PageTables
                        | ReservedUse::Heap
                        | ReservedUse::Boot
                        | ReservedUse::Allocated
                        | ReservedUse::Special
                )
        )
    }

    /// Whether the agent's identity map keeps these frames mapped: exactly
    /// the guest's populated RAM ([`is_populated_ram`](Self::is_populated_ram)).
    /// Everything else is unmapped there: ballooned frames, holes, unusable
    /// and device space, grant and foreign mappings (reached through the
    /// mapping window), and firmware's reservations — which on x86 are often
    /// device space (the BIOS ROM below 4 GiB, on real hosts the IOAPIC,
    /// HPET, PCI configuration space) and on Arm may be `no-map` memory;
    /// nothing in the agent reads them.
    pub const fn identity_mapped(self) -> bool {
        self.is_populated_ram()
    }

    /// Whether [`RegionTable::add`] may put a region of kind `new` over one of
    /// this kind: only a hole may be replaced, by a mapping or device range.
    pub const fn replaceable_by(self, new: RegionKind) -> bool {
        matches!(
            (self, new),
            (
                RegionKind::Hole,
                RegionKind::Grant | RegionKind::Foreign | RegionKind::Mmio
            )
        )
    }
}

bitflags::bitflags! {
    /// Attributes of a region.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RegionFlags: u16 {
        /// May be read.
        const READ = 1 << 0;
        /// May be written.
        const WRITE = 1 << 1;
        /// May be executed (never for grant or foreign mappings).
        const EXEC = 1 << 2;
        /// Mapped cacheable (normal memory); without it, device memory.
        const CACHEABLE = 1 << 3;
        /// Must stay where it is: never ballooned, exchanged or moved.
        const PINNED = 1 << 4;
        /// Lies below 4 GiB in machine memory (for 32-bit DMA).
        const BELOW_4G = 1 << 5;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for RegionFlags {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=u16:#x}", self.bits())
    }
}

/// What backs a region, when known. The frame or reference given is that of
/// the region's first frame; frame `i` of the region is backed by the `i`-th
/// one after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Backing {
    /// Unknown or not applicable.
    None,
    /// A machine-contiguous run starting at this machine frame.
    Machine(Mfn),
    /// Consecutive grant references of domain `dom`.
    Grant {
        /// The granting domain.
        dom: DomId,
        /// The first reference.
        gref: GrantRef,
    },
    /// Consecutive frames of a foreign domain.
    Foreign {
        /// The foreign domain.
        dom: DomId,
        /// Its first frame.
        gfn: Gfn,
    },
}

impl Backing {
    /// The backing of the frame `offset` frames further on, or `None` if that
    /// would overflow.
    pub fn offset(self, offset: u64) -> Option<Backing> {
        Some(match self {
            Backing::None => Backing::None,
            Backing::Machine(m) => Backing::Machine(Mfn(m.0.checked_add(offset)?)),
            Backing::Grant { dom, gref } => Backing::Grant {
                dom,
                gref: GrantRef(u32::try_from(u64::from(gref.0).checked_add(offset)?).ok()?),
            },
            Backing::Foreign { dom, gfn } => Backing::Foreign {
                dom,
                gfn: Gfn(gfn.0.checked_add(offset)?),
            },
        })
    }
}

/// One region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// Its frames.
    pub range: FrameRange,
    /// What it is.
    pub kind: RegionKind,
    /// Its attributes.
    pub flags: RegionFlags,
    /// What backs it.
    pub backing: Backing,
}

impl Region {
    /// A region with no backing.
    pub const fn new(range: FrameRange, kind: RegionKind, flags: RegionFlags) -> Self {
        Self {
            range,
            kind,
            flags,
            backing: Backing::None,
        }
    }

    /// Whether `next` continues this region seamlessly: adjacent, same kind and
    /// flags, and backing that continues where this one ends.
    fn merges_with(&self, next: &Region) -> bool {
        self.range.end == next.range.start
            && self.kind == next.kind
            && self.flags == next.flags
            && self.backing.offset(self.range.len().0) == Some(next.backing)
    }

    /// The part of this region inside `[start, end)` (which must overlap it).
    fn clip(&self, start: Gfn, end: Gfn) -> Region {
        let s = self.range.start.0.max(start.0);
        let e = self.range.end.0.min(end.0);
        Region {
            range: FrameRange {
                start: Gfn(s),
                end: Gfn(e),
            },
            // In range: the clipped part's backing is within the original's.
            backing: self
                .backing
                .offset(s - self.range.start.0)
                .unwrap_or(self.backing),
            ..*self
        }
    }
}

/// What [`RegionTable::modify`] changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The new kind, if it changes.
    pub kind: Option<RegionKind>,
    /// Flags to set.
    pub set: RegionFlags,
    /// Flags to clear.
    pub clear: RegionFlags,
    /// The new backing of the range's first frame, if it changes.
    pub backing: Option<Backing>,
    /// Only change frames that are of this kind now; any other kind in the
    /// range is an error (a guard against changing the wrong thing).
    pub expect: Option<RegionKind>,
}

impl Default for RegionFlags {
    fn default() -> Self {
        RegionFlags::empty()
    }
}

/// One operation of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`RegionTable::add`].
    Add(Region),
    /// [`RegionTable::modify`].
    Modify(FrameRange, Change),
    /// [`RegionTable::delete`].
    Delete(FrameRange),
}

/// Why a table operation was refused. The table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// An address is not page-aligned.
    Unaligned(GuestPhysAddr),
    /// A range with no frames.
    Empty,
    /// A range that runs past [`MAX_FRAME`].
    Overflow,
    /// The new region overlaps `existing`, whose kind may not be replaced.
    Overlap {
        /// The region in the way.
        existing: Region,
    },
    /// Part of the range is not in the table (the first missing frame).
    NotCovered(Gfn),
    /// A frame in the range is not of the kind the change expected.
    UnexpectedKind {
        /// Where.
        at: Gfn,
        /// What it is.
        found: RegionKind,
    },
    /// The new backing would run past the end of its number space.
    BackingOverflow,
    /// No run of free RAM is long enough.
    NoFreeRam {
        /// Frames asked for.
        count: PageCount,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionError::Unaligned(a) => write!(f, "address {a} is not page-aligned"),
            RegionError::Empty => write!(f, "empty range"),
            RegionError::Overflow => write!(f, "range runs past the guest-physical address space"),
            RegionError::Overlap { existing } => write!(
                f,
                "overlaps the {} region {:#x}..{:#x}",
                existing.kind.name(),
                existing.range.start_addr().0,
                existing.range.end_addr().0
            ),
            RegionError::NotCovered(g) => write!(f, "frame {g} is not in the table"),
            RegionError::UnexpectedKind { at, found } => {
                write!(f, "frame {at} is {}, not the kind expected", found.name())
            }
            RegionError::BackingOverflow => {
                write!(f, "backing runs past the end of its number space")
            }
            RegionError::NoFreeRam { count } => write!(f, "no run of {count} free RAM frames"),
        }
    }
}

/// A record of one splice, to undo a batch.
struct Undo {
    removed: Vec<Region>,
    inserted: Vec<Gfn>,
}

/// The region table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionTable {
    map: BTreeMap<Gfn, Region>,
}

impl RegionTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table has no regions.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The regions in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Region> + '_ {
        self.map.values()
    }

    /// The region containing frame `gfn`.
    pub fn region_at(&self, gfn: Gfn) -> Option<&Region> {
        self.map
            .range(..=gfn)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.range.contains(gfn))
    }

    /// The region containing the guest-physical address `addr`, with its
    /// current extent (the `gasp_region_info()` analogue).
    pub fn info(&self, addr: GuestPhysAddr) -> Option<Region> {
        self.region_at(addr.frame()).copied()
    }

    /// The regions overlapping `range`, in order (whole, not clipped).
    pub fn overlapping_regions(&self, range: FrameRange) -> impl Iterator<Item = &Region> + '_ {
        self.overlapping(range.start(), range.end())
    }

    /// Regions overlapping `[start, end)`, in order.
    fn overlapping(&self, start: Gfn, end: Gfn) -> impl Iterator<Item = &Region> + '_ {
        let first = self.region_at(start).map_or(start, |r| r.range.start);
        self.map
            .range((Bound::Included(first), Bound::Excluded(end)))
            .map(|(_, r)| r)
    }

    /// Replace the regions in `removed_keys` with `insert`, merging the edges
    /// with their neighbours, and log the change.
    fn splice(&mut self, range: FrameRange, insert: &[Region], log: Option<&mut Vec<Undo>>) {
        let mut removed: Vec<Region> = self.overlapping(range.start, range.end).copied().collect();
        for r in &removed {
            self.map.remove(&r.range.start);
        }
        // Parts of the removed regions outside the range stay.
        let mut pieces: Vec<Region> = Vec::with_capacity(insert.len() + 2);
        if let Some(first) = removed.first() {
            if first.range.start < range.start {
                pieces.push(first.clip(first.range.start, range.start));
            }
        }
        pieces.extend_from_slice(insert);
        if let Some(last) = removed.last() {
            if last.range.end > range.end {
                pieces.push(last.clip(range.end, last.range.end));
            }
        }
        // Merge with the neighbours just outside.
        if let Some(prev) = pieces
            .first()
            .and_then(|p| self.region_before(p.range.start))
        {
            if prev.merges_with(&pieces[0]) {
                self.map.remove(&prev.range.start);
                removed.insert(0, prev);
                pieces.insert(0, prev);
            }
        }
        if let Some(next) = pieces
            .last()
            .and_then(|p| self.map.get(&p.range.end).copied())
        {
            if pieces.last().is_some_and(|p| p.merges_with(&next)) {
                self.map.remove(&next.range.start);
                removed.push(next);
                pieces.push(next);
            }
        }
        // Merge runs inside.
        let mut merged: Vec<Region> = Vec::with_capacity(pieces.len());
        for p in pieces {
            match merged.last_mut() {
                Some(m) if m.merges_with(&p) => m.range.end = p.range.end,
                _ => merged.push(p),
            }
        }
        let inserted = merged.iter().map(|r| r.range.start).collect();
        for r in merged {
            self.map.insert(r.range.start, r);
        }
        if let Some(log) = log {
            log.push(Undo { removed, inserted });
        }
    }

    fn region_before(&self, gfn: Gfn) -> Option<Region> {
        self.map
            .range(..gfn)
            .next_back()
            .map(|(_, r)| *r)
            .filter(|r| r.range.end == gfn)
    }

    fn check_add(&self, region: &Region) -> Result<(), RegionError> {
        if region.backing.offset(region.range.len().0 - 1).is_none() {
            return Err(RegionError::BackingOverflow);
        }
        for r in self.overlapping(region.range.start, region.range.end) {
            if !r.kind.replaceable_by(region.kind) {
                return Err(RegionError::Overlap { existing: *r });
            }
        }
        Ok(())
    }

    fn do_add(&mut self, region: Region, log: Option<&mut Vec<Undo>>) -> Result<(), RegionError> {
        self.check_add(&region)?;
        self.splice(region.range, &[region], log);
        Ok(())
    }

    /// Add a region. Refused if it overlaps a region whose kind may not be
    /// replaced by it (see [`RegionKind::replaceable_by`]).
    pub fn add(&mut self, region: Region) -> Result<(), RegionError> {
        self.do_add(region, None)
    }

    /// Check that `[start, end)` is covered without gaps; call `each` on the
    /// clipped pieces.
    fn covered(
        &self,
        range: FrameRange,
        mut each: impl FnMut(Region) -> Result<(), RegionError>,
    ) -> Result<(), RegionError> {
        let mut at = range.start;
        for r in self.overlapping(range.start, range.end) {
            if r.range.start > at {
                return Err(RegionError::NotCovered(at));
            }
            each(r.clip(range.start, range.end))?;
            at = r.range.end;
        }
        if at < range.end {
            return Err(RegionError::NotCovered(at));
        }
        Ok(())
    }

    fn do_modify(
        &mut self,
        range: FrameRange,
        change: Change,
        log: Option<&mut Vec<Undo>>,
    ) -> Result<(), RegionError> {
        if let Some(b) = change.backing {
            if b.offset(range.len().0 - 1).is_none() {
                return Err(RegionError::BackingOverflow);
            }
        }
        let mut pieces = Vec::new();
        self.covered(range, |mut piece| {
            if let Some(expect) = change.expect {
                if piece.kind != expect {
                    return Err(RegionError::UnexpectedKind {
                        at: piece.range.start,
                        found: piece.kind,
                    });
                }
            }
            if let Some(k) = change.kind {
                piece.kind = k;
            }
            piece.flags = (piece.flags | change.set) & !change.clear;
            if let Some(b) = change.backing {
                // Checked above for the whole range.
                piece.backing = b.offset(piece.range.start.0 - range.start.0).unwrap_or(b);
            }
            pieces.push(piece);
            Ok(())
        })?;
        self.splice(range, &pieces, log);
        Ok(())
    }

    /// Change kind, flags or backing over `range`, which must be covered by
    /// regions without gaps; regions it cuts are split (the
    /// `gasp_region_set()` analogue for existing ranges).
    pub fn modify(&mut self, range: FrameRange, change: Change) -> Result<(), RegionError> {
        self.do_modify(range, change, None)
    }

    fn do_delete(
        &mut self,
        range: FrameRange,
        log: Option<&mut Vec<Undo>>,
    ) -> Result<(), RegionError> {
        self.covered(range, |_| Ok(()))?;
        self.splice(range, &[], log);
        Ok(())
    }

    /// Remove `range`, which must be covered without gaps; regions it cuts are
    /// split.
    pub fn delete(&mut self, range: FrameRange) -> Result<(), RegionError> {
        self.do_delete(range, None)
    }

    /// Apply a batch of operations all-or-nothing: on the first failure every
    /// earlier operation is undone and the error says which one failed.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), (RegionError, usize)> {
        let mut log = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let r = match *op {
                Op::Add(region) => self.do_add(region, Some(&mut log)),
                Op::Modify(range, change) => self.do_modify(range, change, Some(&mut log)),
                Op::Delete(range) => self.do_delete(range, Some(&mut log)),
            };
            if let Err(e) = r {
                self.undo(log);
                return Err((e, i));
            }
        }
        Ok(())
    }

    fn undo(&mut self, log: Vec<Undo>) {
        for u in log.into_iter().rev() {
            for k in u.inserted {
                self.map.remove(&k);
            }
            for r in u.removed {
                self.map.insert(r.range.start, r);
            }
        }
    }

    /// Pages in regions of kind `kind`.
    pub fn count(&self, kind: RegionKind) -> PageCount {
        PageCount(
            self.iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.range.len().0)
                .sum(),
        )
    }

    /// Pages in regions for which `pred` holds.
    pub fn count_where(&self, pred: impl Fn(&Region) -> bool) -> PageCount {
        PageCount(
            self.iter()
                .filter(|r| pred(r))
                .map(|r| r.range.len().0)
                .sum(),
        )
    }

    /// The first `count` frames of a hole, aligned to `2^align` frames, at or
    /// above `min` (the place for a new grant or foreign mapping).
    pub fn find_hole(&self, count: PageCount, align: Order, min: Gfn) -> Option<FrameRange> {
        self.find_free(RegionKind::Hole, count, align, min)
    }

    /// The first `count` frames of kind `kind`, contiguous across regions of
    /// that kind that are not pinned, aligned to `2^align` frames, at or above
    /// `min`.
    pub fn find_free(
        &self,
        kind: RegionKind,
        count: PageCount,
        align: Order,
        min: Gfn,
    ) -> Option<FrameRange> {
        if count.0 == 0 {
            return None;
        }
        let mask = align.pages().0 - 1;
        let mut run: Option<(Gfn, Gfn)> = None; // a run of usable frames
        for r in self
            .map
            .range(self.region_at(min).map_or(min, |r| r.range.start)..)
            .map(|(_, r)| r)
        {
            let usable = r.kind == kind && !r.flags.contains(RegionFlags::PINNED);
            if !usable {
                run = None;
                continue;
            }
            let start = r.range.start.max(min);
            run = match run {
                Some((s, e)) if e == r.range.start => Some((s, r.range.end)),
                _ => Some((start, r.range.end)),
            };
            let (s, e) = run.unwrap_or((start, r.range.end));
            let aligned = s.0.checked_add(mask)? & !mask;
            if aligned.checked_add(count.0)? <= e.0 {
                return FrameRange::new(Gfn(aligned), count).ok();
            }
        }
        None
    }

    /// Allocate `count` frames of free RAM aligned to `2^align` frames and
    /// record them as `Reserved(what)`, pinned. The frame allocator of the
    /// agent: the heap, page tables and mappings all take frames here, so they
    /// never collide.
    pub fn alloc_frames(
        &mut self,
        count: PageCount,
        align: Order,
        what: ReservedUse,
    ) -> Result<FrameRange, RegionError> {
        let range = self
            .find_free(RegionKind::Ram, count, align, Gfn(0))
            .ok_or(RegionError::NoFreeRam { count })?;
        self.modify(
            range,
            Change {
                kind: Some(RegionKind::Reserved(what)),
                set: RegionFlags::PINNED,
                expect: Some(RegionKind::Ram),
                ..Change::default()
            },
        )?;
        Ok(range)
    }

    /// Give frames from [`RegionTable::alloc_frames`] back: every frame of
    /// `range` must be `Reserved(what)`.
    pub fn free_frames(&mut self, range: FrameRange, what: ReservedUse) -> Result<(), RegionError> {
        self.modify(
            range,
            Change {
                kind: Some(RegionKind::Ram),
                clear: RegionFlags::PINNED,
                expect: Some(RegionKind::Reserved(what)),
                ..Change::default()
            },
        )
    }

    /// Extents of `2^order` frames, `2^order`-aligned, made entirely of
    /// regions of kind `kind` that are not pinned (they may span several
    /// regions, e.g. RAM split by flags), in address order.
    pub fn aligned_extents(
        &self,
        kind: RegionKind,
        order: Order,
    ) -> impl Iterator<Item = FrameRange> + '_ {
        let n = order.pages().0;
        // Maximal runs of usable frames (adjacent usable regions join).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for r in self.iter() {
            if r.kind != kind || r.flags.contains(RegionFlags::PINNED) {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.1 == r.range.start.0 => last.1 = r.range.end.0,
                _ => runs.push((r.range.start.0, r.range.end.0)),
            }
        }
        runs.into_iter().flat_map(move |(s, e)| {
            let first = s.div_ceil(n) * n;
            (first..e)
                .step_by(n as usize)
                .take_while(move |x| x + n <= e)
                .filter_map(move |x| FrameRange::new(Gfn(x), PageCount(n)).ok())
        })
    }

    /// Runs of free RAM aligned to `2^order` frames and `2^order` long: the
    /// extents that can be ballooned as superpages.
    pub fn aligned_ram_extents(&self, order: Order) -> impl Iterator<Item = FrameRange> + '_ {
        self.aligned_extents(RegionKind::Ram, order)
    }

    /// Check the table's invariants: sorted, non-overlapping, keys match, and
    /// no two adjacent regions that should have merged. For tests and debug
    /// assertions.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut prev: Option<&Region> = None;
        for (k, r) in &self.map {
            if *k != r.range.start {
                return Err("key does not match region start");
            }
            if r.range.start >= r.range.end {
                return Err("empty region");
            }
            if let Some(p) = prev {
                if p.range.end > r.range.start {
                    return Err("regions overlap");
                }
                if p.merges_with(r) {
                    return Err("adjacent regions with identical attributes did not merge");
                }
            }
            prev = Some(r);
        }
        Ok(())
    }
}

/// The region table shared by the agent's parts, behind a spin lock. Each
/// call takes the lock once, so a batch ([`SharedTable::apply`]) is the unit
/// of atomicity: other users see the table before it or after it, never half
/// of it.
#[derive(Debug, Default)]
pub struct SharedTable(spin::Mutex<RegionTable>);

impl SharedTable {
    /// Share `table`.
    pub const fn new(table: RegionTable) -> Self {
        Self(spin::Mutex::new(table))
    }

    /// Apply a batch all-or-nothing (see [`RegionTable::apply`]).
    pub fn apply(&self, ops: &[Op]) -> Result<(), (RegionError, usize)> {
        self.0.lock().apply(ops)
    }

    /// The region containing `addr`.
    pub fn info(&self, addr: GuestPhysAddr) -> Option<Region> {
        self.0.lock().info(addr)
    }

    /// Allocate frames (see [`RegionTable::alloc_frames`]).
    pub fn alloc_frames(
        &self,
        count: PageCount,
        align: Order,
        what: ReservedUse,
    ) -> Result<FrameRange, RegionError> {
        self.0.lock().alloc_frames(count, align, what)
    }

    /// Free frames (see [`RegionTable::free_frames`]).
    pub fn free_frames(&self, range: FrameRange, what: ReservedUse) -> Result<(), RegionError> {
        self.0.lock().free_frames(range, what)
    }

    /// Read the table under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&RegionTable) -> R) -> R {
        f(&self.0.lock())
    }

    /// Change the table under the lock; `f` should leave it consistent (use
    /// batches for multi-step changes).
    pub fn update<R>(&self, f: impl FnOnce(&mut RegionTable) -> R) -> R {
        f(&mut self.0.lock())
    }
}
