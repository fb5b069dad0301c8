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
//! The table is a vector of regions sorted by first frame: a lookup is a
//! binary search (O(log n)); a change moves the regions after it along
//! (O(n) copies of 40-byte regions: a few microseconds at the 10^4 regions
//! beyond anything the agent meets, where the tables hold tens). Unlike a
//! `BTreeMap`, whose node allocations cannot fail gracefully, the vector
//! lets every change make room before it writes: running out of memory is
//! [`RegionError::OutOfMemory`], and [`RegionTable::set_aside`] keeps room
//! for the changes that must not fail. Every error leaves the table exactly
//! as it was.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount, PAGE_SIZE};
use crate::alloc_util::{OutOfMemory, TryVec};

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

    /// The one frame `gfn` (`None` from [`MAX_FRAME`] on). A `const fn`.
    pub const fn single(gfn: Gfn) -> Option<Self> {
        if gfn.0 < MAX_FRAME {
            Some(Self {
                start: gfn,
                end: Gfn(gfn.0 + 1),
            })
        } else {
            None
        }
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
    /// The heap has no room for the table to grow (or for a batch's undo
    /// record).
    OutOfMemory(OutOfMemory),
}

impl From<OutOfMemory> for RegionError {
    fn from(e: OutOfMemory) -> Self {
        RegionError::OutOfMemory(e)
    }
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
            RegionError::OutOfMemory(e) => write!(f, "{e}"),
        }
    }
}

/// Room for one batch's undo: each step replaced the regions at `at` with
/// `inserted` others; the regions it replaced are the last `removed` of
/// [`UndoLog::removed`].
#[derive(Debug, Default)]
struct UndoLog {
    removed: Vec<Region>,
    steps: Vec<Step>,
}

#[derive(Clone, Copy, Debug)]
struct Step {
    at: usize,
    removed: usize,
    inserted: usize,
}

const UNDO_LOG: &str = "region table undo log";
const TABLE: &str = "region table";

impl UndoLog {
    /// Before a step: copy the regions it may replace (`window`) and make
    /// room for its record. Fails for want of memory only.
    fn begin(&mut self, window: &[Region]) -> Result<(), OutOfMemory> {
        self.steps.try_room(1, UNDO_LOG)?;
        self.removed.try_extend_from_slice(window, UNDO_LOG)
    }

    /// After the step: `inserted` regions stand at `at` in place of the
    /// window. Cannot fail: [`UndoLog::begin`] made the room.
    fn finish(&mut self, at: usize, removed: usize, inserted: usize) {
        self.steps.push(Step {
            at,
            removed,
            inserted,
        });
    }
}

/// What a change writes over the frames of its range.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// One new region over the whole range ([`RegionTable::add`]).
    Region(Region),
    /// The regions there, changed ([`RegionTable::modify`]).
    Change(Change),
    /// Nothing ([`RegionTable::delete`]).
    Nothing,
}

/// Where a change's room for more regions comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    /// Its own reservation (beyond the room set aside).
    Own,
    /// The room set aside ([`RegionTable::set_aside`]) first.
    SetAside,
}

impl Change {
    /// `piece` (a part of `range`) with the change made.
    fn applied(&self, mut piece: Region, range: FrameRange) -> Region {
        if let Some(k) = self.kind {
            piece.kind = k;
        }
        piece.flags = (piece.flags | self.set) & !self.clear;
        if let Some(b) = self.backing {
            // Checked for the whole range before any change.
            piece.backing = b.offset(piece.range.start.0 - range.start.0).unwrap_or(b);
        }
        piece
    }
}

/// Replace `v[lo..hi]` with `new`. Does not allocate if `v` has room for
/// `new.len() - (hi - lo)` more values (when that is positive).
fn replace(v: &mut Vec<Region>, lo: usize, hi: usize, new: &[Region]) {
    let (n, m) = (hi - lo, new.len());
    let common = n.min(m);
    v[lo..lo + common].copy_from_slice(&new[..common]);
    if m < n {
        v.drain(lo + m..hi);
    } else if m > n {
        debug_assert!(v.capacity() - v.len() >= m - n, "room was made");
        v.extend_from_slice(&new[n..]);
        v[hi..].rotate_right(m - n);
    }
}

/// The region table.
#[derive(Debug, Default)]
pub struct RegionTable {
    /// The regions, sorted by first frame, not overlapping, no two adjacent
    /// ones that would merge.
    regions: Vec<Region>,
    /// Room for this many more regions is kept in `regions`' capacity for
    /// [`RegionTable::modify_set_aside`]: always
    /// `capacity >= len + set_aside`.
    set_aside: usize,
}

/// A copy of the regions, holding exactly them (no room set aside, no room
/// to grow). Allocates as `Vec::clone` does (for tests and hosts; the
/// library never copies a table).
impl Clone for RegionTable {
    fn clone(&self) -> Self {
        RegionTable {
            regions: self.regions.clone(),
            set_aside: 0,
        }
    }
}

/// Tables are equal when they hold the same regions (room set aside aside).
impl PartialEq for RegionTable {
    fn eq(&self, other: &Self) -> bool {
        self.regions == other.regions
    }
}

impl Eq for RegionTable {}

impl RegionTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            regions: Vec::new(),
            set_aside: 0,
        }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the table has no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Region> + '_ {
        self.regions.iter()
    }

    /// A digest of the regions (64-bit FNV-1a over them): tells whether the
    /// table changed without the memory a copy would take.
    pub fn digest(&self) -> u64 {
        use core::hash::{Hash, Hasher};
        struct Fnv(u64);
        impl Hasher for Fnv {
            fn write(&mut self, bytes: &[u8]) {
                for &b in bytes {
                    self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            fn finish(&self) -> u64 {
                self.0
            }
        }
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        self.regions.hash(&mut h);
        h.finish()
    }

    /// Bytes of heap the table holds now (its capacity, used or not).
    pub fn heap_bytes(&self) -> usize {
        self.regions.capacity() * core::mem::size_of::<Region>()
    }

    /// The index of the first region that starts at or after `gfn`.
    fn first_from(&self, gfn: Gfn) -> usize {
        self.regions.partition_point(|r| r.range.start < gfn)
    }

    /// The index of the region containing `gfn`.
    fn index_at(&self, gfn: Gfn) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.range.start <= gfn);
        i.checked_sub(1)
            .filter(|&i| self.regions.get(i).is_some_and(|r| r.range.contains(gfn)))
    }

    /// The region containing frame `gfn`.
    pub fn region_at(&self, gfn: Gfn) -> Option<&Region> {
        self.index_at(gfn).and_then(|i| self.regions.get(i))
    }

    /// The region containing the guest-physical address `addr`, with its
    /// current extent (the `gasp_region_info()` analogue).
    pub fn info(&self, addr: GuestPhysAddr) -> Option<Region> {
        self.region_at(addr.frame()).copied()
    }

    /// The regions overlapping `range`, in order (whole, not clipped).
    pub fn overlapping_regions(
        &self,
        range: FrameRange,
    ) -> impl DoubleEndedIterator<Item = &Region> + '_ {
        self.overlapping(range.start(), range.end())
    }

    /// The indices `[lo, hi)` of the regions overlapping `[start, end)`
    /// (`start < end`); `lo == hi`, where such regions would go, if none
    /// does.
    fn span(&self, start: Gfn, end: Gfn) -> (usize, usize) {
        let lo = self
            .index_at(start)
            .unwrap_or_else(|| self.first_from(start));
        (lo, self.first_from(end).max(lo))
    }

    /// Regions overlapping `[start, end)`, in order.
    fn overlapping(&self, start: Gfn, end: Gfn) -> core::slice::Iter<'_, Region> {
        let (lo, hi) = self.span(start, end);
        self.regions.get(lo..hi).unwrap_or(&[]).iter()
    }

    /// Make sure the capacity holds `grow` more regions for a change of
    /// the table: beyond the room set aside ([`Room::Own`]), or in it as
    /// far as it goes ([`Room::SetAside`]). Changes nothing but capacity.
    fn make_room(&mut self, grow: usize, room: Room) -> Result<(), RegionError> {
        let extra = match room {
            Room::Own => grow.checked_add(self.set_aside),
            Room::SetAside => Some(grow.max(self.set_aside)),
        }
        .ok_or(OutOfMemory::of::<Region>(TABLE, usize::MAX))?;
        // No allocation when the capacity holds `extra` more already.
        self.regions.try_room(extra, TABLE)?;
        Ok(())
    }

    /// Write `fill` over the frames of `range`, keeping the parts of the
    /// regions it cuts that lie outside it, and merge what then merges with
    /// its neighbours. The caller has checked that the change is allowed;
    /// this only makes room (and the undo record, with a `log`) and then
    /// writes: on error nothing has changed.
    fn splice(
        &mut self,
        range: FrameRange,
        fill: Fill,
        room: Room,
        log: Option<&mut UndoLog>,
    ) -> Result<(), RegionError> {
        let (lo, hi) = self.span(range.start, range.end);
        let cut = self.regions.get(lo..hi).unwrap_or(&[]);
        let keep_left = cut
            .first()
            .filter(|r| r.range.start < range.start)
            .map(|r| r.clip(r.range.start, range.start));
        let keep_right = cut
            .last()
            .filter(|r| r.range.end > range.end)
            .map(|r| r.clip(range.end, r.range.end));
        let keeps = usize::from(keep_left.is_some()) + usize::from(keep_right.is_some());
        // What stands in place of `[lo, hi)` before merging.
        let written = match fill {
            Fill::Region(_) => keeps + 1,
            Fill::Change(_) => (hi - lo) + keeps,
            Fill::Nothing => keeps,
        };
        let grow = written.saturating_sub(hi - lo);
        // Merges reach one region either side.
        let wlo = lo.saturating_sub(1);
        let whi = (hi + 1).min(self.regions.len());
        self.make_room(grow, room)?;
        let before = self.regions.len();
        let mut log = log;
        if let Some(log) = log.as_deref_mut() {
            log.begin(&self.regions[wlo..whi])?;
        }
        // From here nothing fails, and nothing allocates: the room is made.
        match fill {
            Fill::Change(c) => {
                for r in &mut self.regions[lo..hi] {
                    *r = c.applied(r.clip(range.start, range.end), range);
                }
                if let Some(k) = keep_right {
                    self.regions.insert(hi, k);
                }
                if let Some(k) = keep_left {
                    self.regions.insert(lo, k);
                }
            }
            Fill::Region(region) => {
                let new = [keep_left, Some(region), keep_right];
                let mut buf = [region; 3];
                let mut n = 0;
                for r in new.into_iter().flatten() {
                    buf[n] = r;
                    n += 1;
                }
                replace(&mut self.regions, lo, hi, &buf[..n]);
            }
            Fill::Nothing => {
                let mut buf = [keep_left, keep_right].into_iter().flatten();
                match (buf.next(), buf.next()) {
                    (Some(a), Some(b)) => replace(&mut self.regions, lo, hi, &[a, b]),
                    (Some(a), None) => replace(&mut self.regions, lo, hi, &[a]),
                    _ => replace(&mut self.regions, lo, hi, &[]),
                }
            }
        }
        let end = self.merge(wlo, whi - (hi - lo) + written);
        if let Some(log) = log {
            log.finish(wlo, whi - wlo, end - wlo);
        }
        if room == Room::SetAside {
            let grew = self.regions.len().saturating_sub(before);
            self.set_aside = self.set_aside.saturating_sub(grew);
        }
        Ok(())
    }

    /// Merge what merges among `regions[a..b]`; returns the new `b`.
    fn merge(&mut self, a: usize, b: usize) -> usize {
        if b <= a + 1 {
            return b;
        }
        let mut w = a;
        for i in a + 1..b {
            let r = self.regions[i];
            if self.regions[w].merges_with(&r) {
                self.regions[w].range.end = r.range.end;
            } else {
                w += 1;
                self.regions[w] = r;
            }
        }
        self.regions.drain(w + 1..b);
        w + 1
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

    fn do_add(&mut self, region: Region, log: Option<&mut UndoLog>) -> Result<(), RegionError> {
        self.check_add(&region)?;
        self.splice(region.range, Fill::Region(region), Room::Own, log)
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

    fn check_modify(&self, range: FrameRange, change: &Change) -> Result<(), RegionError> {
        if let Some(b) = change.backing {
            if b.offset(range.len().0 - 1).is_none() {
                return Err(RegionError::BackingOverflow);
            }
        }
        self.covered(range, |piece| match change.expect {
            Some(expect) if piece.kind != expect => Err(RegionError::UnexpectedKind {
                at: piece.range.start,
                found: piece.kind,
            }),
            _ => Ok(()),
        })
    }

    fn do_modify(
        &mut self,
        range: FrameRange,
        change: Change,
        room: Room,
        log: Option<&mut UndoLog>,
    ) -> Result<(), RegionError> {
        self.check_modify(range, &change)?;
        self.splice(range, Fill::Change(change), room, log)
    }

    /// Change kind, flags or backing over `range`, which must be covered by
    /// regions without gaps; regions it cuts are split (the
    /// `gasp_region_set()` analogue for existing ranges).
    pub fn modify(&mut self, range: FrameRange, change: Change) -> Result<(), RegionError> {
        self.do_modify(range, change, Room::Own, None)
    }

    /// Set aside room for `regions` more regions, on top of what is set
    /// aside already, for [`modify_set_aside`](Self::modify_set_aside):
    /// for the record that must follow something that cannot be taken back
    /// (frames Xen has just released or populated). Every other change
    /// makes room of its own beyond it, so the room stays whatever happens
    /// in between. A change of a range inside one region adds at most 2
    /// regions; merging with its neighbours only ever removes some.
    pub fn set_aside(&mut self, regions: usize) -> Result<(), RegionError> {
        let total = self
            .set_aside
            .checked_add(regions)
            .ok_or(OutOfMemory::of::<Region>(TABLE, usize::MAX))?;
        self.regions.try_room(total, TABLE)?;
        self.set_aside = total;
        Ok(())
    }

    /// The room set aside now, in regions.
    pub fn set_aside_room(&self) -> usize {
        self.set_aside
    }

    /// Give up the room set aside (its memory stays with the table, for
    /// later growth).
    pub fn clear_set_aside(&mut self) {
        self.set_aside = 0;
    }

    /// [`modify`](Self::modify), growing into the room set aside
    /// ([`set_aside`](Self::set_aside)): it cannot fail for want of memory
    /// while the regions it adds fit in that room. (Beyond it, it makes
    /// room as `modify` does, which may fail.) Every other error is
    /// `modify`'s.
    pub fn modify_set_aside(
        &mut self,
        range: FrameRange,
        change: Change,
    ) -> Result<(), RegionError> {
        self.do_modify(range, change, Room::SetAside, None)
    }

    /// Make room for `regions` more regions beyond the room set aside, for
    /// changes about to be made: as long as together they add no more than
    /// that (counting, for each, the 2 a cut region may add before merging),
    /// they do not fail for want of memory.
    pub fn reserve(&mut self, regions: usize) -> Result<(), RegionError> {
        self.make_room(regions, Room::Own)
    }

    fn do_delete(
        &mut self,
        range: FrameRange,
        log: Option<&mut UndoLog>,
    ) -> Result<(), RegionError> {
        self.covered(range, |_| Ok(()))?;
        self.splice(range, Fill::Nothing, Room::Own, log)
    }

    /// Remove `range`, which must be covered without gaps; regions it cuts are
    /// split.
    pub fn delete(&mut self, range: FrameRange) -> Result<(), RegionError> {
        self.do_delete(range, None)
    }

    /// Apply a batch of operations all-or-nothing: on the first failure
    /// (running out of memory included) every earlier operation is undone
    /// and the error says which one failed.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), (RegionError, usize)> {
        let mut log = UndoLog::default();
        for (i, op) in ops.iter().enumerate() {
            let r = match *op {
                Op::Add(region) => self.do_add(region, Some(&mut log)),
                Op::Modify(range, change) => {
                    self.do_modify(range, change, Room::Own, Some(&mut log))
                }
                Op::Delete(range) => self.do_delete(range, Some(&mut log)),
            };
            if let Err(e) = r {
                self.undo(log);
                return Err((e, i));
            }
        }
        Ok(())
    }

    /// Undo a batch's steps, last first. Never allocates: each step brings
    /// the table back to a length it had before, within the capacity it had
    /// then (a `Vec` never gives capacity back by itself).
    fn undo(&mut self, mut log: UndoLog) {
        while let Some(s) = log.steps.pop() {
            let from = log.removed.len() - s.removed;
            replace(
                &mut self.regions,
                s.at,
                s.at + s.inserted,
                &log.removed[from..],
            );
            log.removed.truncate(from);
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
        let from = self.index_at(min).unwrap_or_else(|| self.first_from(min));
        let mut run: Option<(Gfn, Gfn)> = None; // a run of usable frames
        for r in self.regions.get(from..).unwrap_or(&[]) {
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
    /// `range` must be `Reserved(what)`. Giving back the frames of the
    /// latest allocations, latest first, needs no memory: each brings the
    /// table back to a length it had.
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
    /// regions, e.g. RAM split by flags), in address order (`.rev()`:
    /// highest first). Allocates nothing.
    pub fn aligned_extents(
        &self,
        kind: RegionKind,
        order: Order,
    ) -> impl DoubleEndedIterator<Item = FrameRange> + '_ {
        let n = order.pages().0;
        Runs {
            rest: &self.regions,
            kind,
        }
        .flat_map(move |(s, e)| {
            let first = s.div_ceil(n) * n;
            let count = e.saturating_sub(first) / n;
            (0..count).filter_map(move |i| FrameRange::new(Gfn(first + i * n), PageCount(n)).ok())
        })
    }

    /// [`aligned_extents`](Self::aligned_extents) that start at or above
    /// `from`, which must be `2^order`-aligned. Allocates nothing.
    pub fn aligned_extents_from(
        &self,
        kind: RegionKind,
        order: Order,
        from: Gfn,
    ) -> impl DoubleEndedIterator<Item = FrameRange> + '_ {
        let n = order.pages().0;
        let at = self.index_at(from).unwrap_or_else(|| self.first_from(from));
        Runs {
            rest: self.regions.get(at..).unwrap_or(&[]),
            kind,
        }
        .flat_map(move |(s, e)| {
            let first = (s.div_ceil(n) * n).max(from.0);
            let count = e.saturating_sub(first) / n;
            (0..count).filter_map(move |i| FrameRange::new(Gfn(first + i * n), PageCount(n)).ok())
        })
    }

    /// The highest `count` of the [`aligned_extents`](Self::aligned_extents)
    /// (all of them if there are fewer), in address order. Finding where
    /// they start takes one pass over the regions, not the extents; nothing
    /// is allocated.
    pub fn highest_aligned_extents(
        &self,
        kind: RegionKind,
        order: Order,
        count: u64,
    ) -> impl Iterator<Item = FrameRange> + '_ {
        let n = order.pages().0;
        let mut need = count;
        let mut from = Gfn(0);
        for (s, e) in (Runs {
            rest: &self.regions,
            kind,
        })
        .rev()
        {
            let first = s.div_ceil(n) * n;
            let here = e.saturating_sub(first) / n;
            if here >= need {
                from = Gfn(first + (here - need) * n);
                break;
            }
            need -= here;
        }
        self.aligned_extents_from(kind, order, from)
            .take(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Runs of free RAM aligned to `2^order` frames and `2^order` long: the
    /// extents that can be ballooned as superpages.
    pub fn aligned_ram_extents(
        &self,
        order: Order,
    ) -> impl DoubleEndedIterator<Item = FrameRange> + '_ {
        self.aligned_extents(RegionKind::Ram, order)
    }

    /// Check the table's invariants: sorted, non-overlapping, and no two
    /// adjacent regions that should have merged. For tests and debug
    /// assertions.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut prev: Option<&Region> = None;
        for r in &self.regions {
            if r.range.start >= r.range.end {
                return Err("empty region");
            }
            if let Some(p) = prev {
                if p.range.start >= r.range.start {
                    return Err("regions out of order");
                }
                if p.range.end > r.range.start {
                    return Err("regions overlap");
                }
                if p.merges_with(r) {
                    return Err("adjacent regions with identical attributes did not merge");
                }
            }
            prev = Some(r);
        }
        if self.regions.capacity() - self.regions.len() < self.set_aside {
            return Err("less room than set aside");
        }
        Ok(())
    }
}

/// Maximal runs `(start, end)` of adjacent regions of one kind that are not
/// pinned, from either end.
struct Runs<'a> {
    rest: &'a [Region],
    kind: RegionKind,
}

impl Runs<'_> {
    fn usable(kind: RegionKind, r: &Region) -> bool {
        r.kind == kind && !r.flags.contains(RegionFlags::PINNED)
    }
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let kind = self.kind;
        let Some(at) = self.rest.iter().position(|r| Self::usable(kind, r)) else {
            self.rest = &[];
            return None;
        };
        let run = &self.rest[at..];
        let (s, mut e) = (run[0].range.start.0, run[0].range.end.0);
        let mut used = 1;
        for r in &run[1..] {
            if !Self::usable(kind, r) || r.range.start.0 != e {
                break;
            }
            e = r.range.end.0;
            used += 1;
        }
        self.rest = &run[used..];
        Some((s, e))
    }
}

impl DoubleEndedIterator for Runs<'_> {
    fn next_back(&mut self) -> Option<(u64, u64)> {
        let kind = self.kind;
        let Some(at) = self.rest.iter().rposition(|r| Self::usable(kind, r)) else {
            self.rest = &[];
            return None;
        };
        let run = &self.rest[..=at];
        let (mut s, e) = (run[at].range.start.0, run[at].range.end.0);
        let mut used = 1;
        for r in run[..at].iter().rev() {
            if !Self::usable(kind, r) || r.range.end.0 != s {
                break;
            }
            s = r.range.start.0;
            used += 1;
        }
        self.rest = &run[..run.len() - used];
        Some((s, e))
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
