//! The agent's own page tables: 4 KiB mappings in *mapping windows*.
//!
//! One walker ([`PageTable`]) implements walk, map, unmap and translate for
//! every architecture; what differs between architectures is only
//!
//! - the **entry format** ([`Format`]): how table, block and page entries are
//!   encoded, how many levels a walk has, which virtual addresses exist. The
//!   formats are pure data and live here, so that they are tested on the
//!   host bit by bit: [`x86_64::X86_64`] (4-level IA-32e paging) and
//!   [`aarch64::Stage1`] (VMSAv8-64 stage 1, 4 KiB granule, 3 or 4 levels);
//! - the **instructions** ([`Tlb`]): TLB invalidation and the barrier that
//!   publishes a new table. Those are in the architecture modules
//!   (`arch::<arch>::paging`), together with the code that adopts the boot
//!   page tables and the on-target self-test.
//!
//! The walker reaches table memory through [`TableMemory`] (on the target the
//! identity map, [`IdentityMemory`]; in host tests an arena of fake frames)
//! and takes new table frames from a [`FrameSource`] (on the target the
//! region table's frame allocator, see [`system`]; in host tests a counter).
//!
//! # Levels
//!
//! Levels are numbered from the leaf: level 0 holds 4 KiB pages, level `n`
//! translates virtual-address bits `[12 + 9n, 21 + 9n)`, so a level-1 leaf is
//! a 2 MiB block and a level-2 leaf a 1 GiB block. The root is level
//! `F::LEVELS - 1`. (Intel calls levels 3..0 PML4, PDPT, PD, PT; Arm calls
//! them 0..3, the other way round.)
//!
//! # Windows
//!
//! A [`PageTable`] maps and unmaps only inside its [`Window`], a range of
//! virtual addresses that the boot map leaves alone; everything outside it
//! (the identity map) can be translated but never changed. Tables whose whole
//! range lies inside the window belong to the walker: it creates them on
//! demand and frees them when an unmap leaves them empty.
//!
//! # TLB maintenance
//!
//! Every map and unmap returns a [`Flush`] that must be used: `.flush()`
//! invalidates the TLB for the pages of an unmap (through [`Tlb`]) and
//! publishes the new entries of a map ([`Tlb::publish_mapping`]: a map only
//! ever fills invalid entries, which no TLB caches), `.ignore()` says in
//! so many words that the caller will do it otherwise (e.g. one
//! [`Tlb::invalidate_all`] after a batch). An unmapped page may still be
//! reachable through the TLB until its flush: do not reuse or give away the
//! frame before. Tables freed by an unmap are invalidated by the walker itself
//! before their frames go back to the [`FrameSource`].

use core::fmt;
use core::sync::atomic::AtomicU64;

use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::alloc_util::OutOfMemory;

pub mod aarch64;
mod flush;
pub mod identity;
#[cfg(target_os = "none")]
pub mod selftest;
pub mod system;
mod walk;
pub mod x86_64;

#[cfg(test)]
mod tests;

pub use flush::{Flush, MapFlush, UnmapFlush, FLUSH_ALL_THRESHOLD};
pub use identity::{IdentityFrames, IdentitySpec};
#[cfg(target_os = "none")]
pub use system::BootIdentityMap;
pub use system::{trim_identity, AdoptOnce, IdentityMemory, Trimmed};
pub use walk::PageTable;

/// Entries in one translation table (4 KiB of 8-byte entries).
pub const ENTRIES: usize = 512;
/// Virtual-address bits translated per level.
pub const BITS_PER_LEVEL: u32 = 9;
/// The most levels a [`Format`] may have.
pub const MAX_LEVELS: usize = 4;

/// One translation table, as the walker sees it. Atomic, because the MMU
/// reads it concurrently and (x86) writes the accessed and dirty bits.
pub type Table = [AtomicU64; ENTRIES];

/// The shift of the virtual-address bits that index a table of `level`.
pub const fn level_shift(level: usize) -> u32 {
    PAGE_SHIFT + BITS_PER_LEVEL * level as u32
}

/// The bytes a leaf entry of `level` maps (4 KiB, 2 MiB, 1 GiB, 512 GiB).
pub const fn level_size(level: usize) -> u64 {
    1 << level_shift(level)
}

/// How a mapping may be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Access {
    /// Reads only: a write faults.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// The memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemoryType {
    /// Normal memory, write-back cacheable (x86: WB; Arm: `MAIR` index 1,
    /// inner shareable).
    Cacheable,
    /// Normal memory, not cached (x86: UC- through PCD; Arm: `MAIR` index 2,
    /// Normal non-cacheable).
    NonCacheable,
    /// Device memory, strongly ordered (x86: UC through PCD|PWT; Arm:
    /// `MAIR` index 0, Device-nGnRnE).
    Device,
}

/// The attributes of a mapping. Never executable unless asked for with
/// [`Attrs::executable`] (and mapping windows refuse that).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Attrs {
    /// Read-only or read-write.
    pub access: Access,
    /// Cacheable, non-cacheable or device.
    pub memory: MemoryType,
    /// Whether the agent (EL1 / supervisor) may execute from it.
    pub executable: bool,
}

impl Attrs {
    /// Read-only, cacheable, never executable.
    pub const READ_ONLY: Attrs = Attrs {
        access: Access::ReadOnly,
        memory: MemoryType::Cacheable,
        executable: false,
    };
    /// Read-write, cacheable, never executable.
    pub const READ_WRITE: Attrs = Attrs {
        access: Access::ReadWrite,
        memory: MemoryType::Cacheable,
        executable: false,
    };

    /// The same with memory type `memory`.
    pub const fn with_memory(self, memory: MemoryType) -> Attrs {
        Attrs { memory, ..self }
    }

    /// The same as device memory.
    pub const fn device(self) -> Attrs {
        self.with_memory(MemoryType::Device)
    }

    /// The same, executable: the only way to ask for it.
    pub const fn executable(self) -> Attrs {
        Attrs {
            executable: true,
            ..self
        }
    }

    /// Whether writes are allowed.
    pub const fn is_writable(self) -> bool {
        matches!(self.access, Access::ReadWrite)
    }
}

impl Default for Attrs {
    /// [`Attrs::READ_ONLY`]: the least a mapping can allow.
    fn default() -> Self {
        Attrs::READ_ONLY
    }
}

/// What a table entry at one level restricts for everything below it
/// (x86: RW and NX at every level; Arm: `APTable[1]`, `PXNTable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableLimits {
    /// Whether writes below may be allowed.
    pub writable: bool,
    /// Whether execution below may be allowed.
    pub executable: bool,
}

impl TableLimits {
    /// No restriction.
    pub const NONE: TableLimits = TableLimits {
        writable: true,
        executable: true,
    };

    /// `attrs` as restricted by this entry.
    pub const fn apply(self, attrs: Attrs) -> Attrs {
        Attrs {
            access: if self.writable {
                attrs.access
            } else {
                Access::ReadOnly
            },
            memory: attrs.memory,
            executable: attrs.executable && self.executable,
        }
    }

    /// Both restrictions together.
    pub const fn and(self, other: TableLimits) -> TableLimits {
        TableLimits {
            writable: self.writable && other.writable,
            executable: self.executable && other.executable,
        }
    }
}

/// A decoded table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Not valid: translation stops with a fault.
    Invalid,
    /// Points at the next level's table.
    Table {
        /// The next table's frame.
        next: GuestPhysAddr,
        /// What the entry restricts below.
        limits: TableLimits,
    },
    /// Maps [`level_size`]`(level)` bytes: a page at level 0, a block above.
    Leaf {
        /// The first byte mapped.
        pa: GuestPhysAddr,
        /// Its attributes (this entry's; the walker adds the tables' limits).
        attrs: Attrs,
    },
    /// Valid, but an encoding this format does not use at this level (x86:
    /// PS in a PML4 entry; Arm: a level-0 block, which needs FEAT_LPA2).
    Unsupported,
}

/// The encoding of translation-table entries of one architecture. Pure data:
/// no instruction, no memory access.
pub trait Format {
    /// A name for messages.
    const NAME: &'static str;
    /// Virtual-address bits a walk translates (48 on x86_64; on aarch64
    /// `64 - T0SZ`).
    const VA_BITS: u32;
    /// Levels of a walk: `ceil((VA_BITS - 12) / 9)`.
    const LEVELS: usize = (Self::VA_BITS - PAGE_SHIFT).div_ceil(BITS_PER_LEVEL) as usize;
    /// Physical-address bits an entry can hold (52 on x86_64, 48 on aarch64
    /// without FEAT_LPA). The CPU may allow fewer:
    /// [`PageTable::limit_phys_bits`].
    const PA_BITS: u32;
    /// The end of the range `[0, LOW_VA_END)` of virtual addresses that these
    /// tables translate from 0 upwards; mapping windows must lie inside it.
    /// (x86_64 also translates the upper canonical half.)
    const LOW_VA_END: u64;

    /// Whether the tables translate `va` at all (x86_64: canonical; aarch64
    /// `TTBR0_EL1`: below `2^VA_BITS`).
    fn is_canonical(va: VirtAddr) -> bool;
    /// A table entry pointing at the table in frame `next`.
    fn table(next: GuestPhysAddr) -> u64;
    /// A level-0 entry mapping the 4 KiB page at `pa` with `attrs`.
    fn page(pa: GuestPhysAddr, attrs: Attrs) -> u64;
    /// A block entry of `level` mapping `pa` (aligned to
    /// [`level_size`]`(level)`), or `None` where the format has no blocks.
    fn block(pa: GuestPhysAddr, attrs: Attrs, level: usize) -> Option<u64>;
    /// Decode an entry found in a table of `level`.
    fn decode(entry: u64, level: usize) -> Entry;
}

/// Access to translation-table memory by guest-physical address.
///
/// # Safety
/// For every frame for which [`table`](TableMemory::table) returns `Some`,
/// the reference must be to the 4 KiB of memory that the MMU reads when a
/// table entry points at that frame, valid for as long as it is borrowed, and
/// not used as anything but a translation table by anyone else while the
/// frame is part of the tree (or being prepared for it).
pub unsafe trait TableMemory {
    /// The table in frame `frame`, or `None` if this memory cannot reach it
    /// (not page-aligned, not mapped, not RAM).
    fn table(&self, frame: GuestPhysAddr) -> Option<&Table>;
}

/// Where new table frames come from, and where freed ones go.
///
/// # Safety
///
/// Every frame [`alloc_frame`](FrameSource::alloc_frame) returns is RAM
/// (populated, reachable through the [`TableMemory`] in use) that nothing
/// else uses until it is given back with
/// [`free_frame`](FrameSource::free_frame): the walker zeroes it and writes
/// page tables into it. As `x86_64`'s `FrameAllocator`, implementing it is
/// the promise:
///
/// ```compile_fail
/// struct Any;
/// impl xenmem::paging::FrameSource for Any {
///     fn alloc_frame(&mut self) -> Result<xenmem::addr::GuestPhysAddr, xenmem::paging::PagingError> {
///         Ok(xenmem::addr::GuestPhysAddr(0x1000))
///     }
///     fn free_frame(&mut self, _: xenmem::addr::GuestPhysAddr) {}
/// }
/// ```
pub unsafe trait FrameSource {
    /// One free 4 KiB frame (contents undefined: the walker zeroes it), or
    /// why there is none: [`PagingError::OutOfFrames`] when none is left,
    /// [`PagingError::OutOfMemory`] when the source could not record it.
    fn alloc_frame(&mut self) -> Result<GuestPhysAddr, PagingError>;
    /// Give back a frame that [`alloc_frame`](FrameSource::alloc_frame)
    /// returned and that is no longer used.
    fn free_frame(&mut self, frame: GuestPhysAddr);
    /// Make sure that `frames` frames can be given back later without the
    /// source needing memory it might not get (a source that records its
    /// frames in a table that grows). Nothing by default.
    fn prepare_free(&mut self, frames: usize) -> Result<(), PagingError> {
        let _ = frames;
        Ok(())
    }
}

/// The architecture's TLB maintenance (static: the flush handles carry no
/// reference).
///
/// # Safety
///
/// An implementation's invalidations take effect as documented: the page
/// tables rely on them before they reuse a frame or hand one back, and a
/// stale translation would reach memory the program no longer owns.
pub unsafe trait Tlb {
    /// Make all table writes so far visible to the table walker and drop any
    /// cached translation of the page at `va`, at every level of the walk.
    fn invalidate_page(va: VirtAddr);
    /// Make all table writes so far visible and drop every cached
    /// translation of the agent's address space.
    fn invalidate_all();
    /// Make the writes that filled a new table visible to the table walker
    /// before an entry that points at it is written.
    fn publish_table();

    /// Make `pages` pages from `start`, just mapped where every entry
    /// written was invalid (new leaves, and new tables linked into invalid
    /// slots), usable by the instructions after this returns. A TLB never
    /// caches an invalid entry (Arm ARM, TLB maintenance requirements: an
    /// entry that generates a Translation fault is never held in a TLB;
    /// Intel SDM 4.10.2.3: no translation is cached unless the present flag
    /// is 1 in each entry of the walk), so nothing stale can stand in the way and no
    /// invalidation is needed, only the barriers that make the stores
    /// visible to the walker. The default invalidates as after a change
    /// (always correct, slower); Arm overrides it with `dsb ishst; isb`.
    fn publish_mapping(start: VirtAddr, pages: u64) {
        flush::invalidate::<Self>(start, pages);
    }

    /// Whether a valid block entry may be replaced, in place, by a table
    /// entry whose table maps the same addresses with the same attributes.
    /// x86: yes. Arm: only with FEAT_BBM level 2; without it the change
    /// needs break-before-make, which the agent cannot do to the block it
    /// runs in, so such changes are made in a copy of the tree and switched
    /// to with [`switch_root`](Tlb::switch_root).
    const SPLIT_IN_PLACE: bool;

    /// Make the tree rooted at `root` the one the MMU uses, with every
    /// cached translation of the old tree dropped and no moment in which
    /// translations of both could be cached together (Arm: the MMU off
    /// around the `TTBR0_EL1` write and a full TLB invalidation). The new
    /// tree must translate the code, stack and data in use as the old one
    /// does (only block sizes may differ), and be complete and published.
    ///
    /// # Safety
    ///
    /// `root` is the root frame of such a tree: complete, published (its
    /// writes visible to the walker) and translating everything the program
    /// uses exactly as the current tree does, for as long as it stays the
    /// root. Calling it outside `unsafe` does not compile:
    ///
    /// ```compile_fail
    /// use xenmem::{addr::GuestPhysAddr, paging::Tlb};
    /// fn switch<T: Tlb>(root: GuestPhysAddr) {
    ///     T::switch_root(root)
    /// }
    /// ```
    /// ```
    /// use xenmem::{addr::GuestPhysAddr, paging::Tlb};
    /// /// # Safety: as `Tlb::switch_root`'s.
    /// unsafe fn switch<T: Tlb>(root: GuestPhysAddr) {
    ///     // SAFETY: forwarded from the caller.
    ///     unsafe { T::switch_root(root) }
    /// }
    /// ```
    unsafe fn switch_root(root: GuestPhysAddr);
}

/// A page-aligned range of virtual addresses `[start, end)` in which a
/// [`PageTable`] may map and unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Window {
    start: VirtAddr,
    end: VirtAddr,
}

impl Window {
    /// `[start, start + size)`; `None` if unaligned, empty or wrapping.
    pub const fn new(start: VirtAddr, size: u64) -> Option<Window> {
        if start.0 % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || size == 0 {
            return None;
        }
        match start.0.checked_add(size) {
            Some(end) => Some(Window {
                start,
                end: VirtAddr(end),
            }),
            None => None,
        }
    }

    /// The first address.
    pub const fn start(&self) -> VirtAddr {
        self.start
    }

    /// One past the last address.
    pub const fn end(&self) -> VirtAddr {
        self.end
    }

    /// The size in bytes.
    pub const fn size(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Whether `va` lies inside.
    pub const fn contains(&self, va: VirtAddr) -> bool {
        self.start.0 <= va.0 && va.0 < self.end.0
    }

    /// Whether all of `[start, start + len)` lies inside.
    pub const fn covers(&self, start: u64, len: u64) -> bool {
        match start.checked_add(len) {
            Some(end) => self.start.0 <= start && end <= self.end.0,
            None => false,
        }
    }
}

/// Why a paging operation failed. Every error leaves the tables as they
/// were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PagingError {
    /// A virtual address that is not page-aligned.
    MisalignedVirt(VirtAddr),
    /// A physical address that is not page-aligned.
    MisalignedPhys(GuestPhysAddr),
    /// A virtual address the tables cannot translate (x86_64:
    /// non-canonical; aarch64: above `2^VA_BITS`).
    NonCanonical(VirtAddr),
    /// A virtual address outside the mapping window.
    OutsideWindow(VirtAddr),
    /// A physical address beyond what the entries or the CPU can hold.
    PhysTooHigh(GuestPhysAddr),
    /// An executable mapping was asked for: mapping windows never are.
    Executable,
    /// The page is mapped already.
    AlreadyMapped {
        /// The page.
        va: VirtAddr,
        /// What it is mapped to.
        pa: GuestPhysAddr,
    },
    /// The page is not mapped.
    NotMapped(VirtAddr),
    /// A block (huge page) covers the address at this level.
    HugePage {
        /// The address.
        va: VirtAddr,
        /// The level of the block entry.
        level: u8,
    },
    /// An entry on the way has an encoding the format does not support.
    BadEntry {
        /// The address.
        va: VirtAddr,
        /// The level of the entry.
        level: u8,
    },
    /// The frame source has no frame left for a table.
    OutOfFrames,
    /// A table frame the table memory cannot reach.
    Unreachable(GuestPhysAddr),
    /// A range that runs past the end of the address space.
    Overflow,
    /// The CPU or the boot page tables are not set up as this code needs.
    Unsupported(&'static str),
    /// The page tables are in use by someone else.
    Busy,
    /// The on-target self-test found a mismatch.
    SelfTest(&'static str),
    /// An identity-map change for frames that are not all ballooned: the
    /// identity map of anything else is never touched.
    NotBallooned(GuestPhysAddr),
    /// An identity-map removal of frames among which some are memory the
    /// identity map must keep (RAM, the agent's own, firmware's).
    Backed(GuestPhysAddr),
    /// The heap has no room for what the operation needed (an identity-map
    /// plan, or the region table's record of a table frame).
    OutOfMemory(OutOfMemory),
}

impl From<OutOfMemory> for PagingError {
    fn from(e: OutOfMemory) -> Self {
        PagingError::OutOfMemory(e)
    }
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingError::MisalignedVirt(va) => {
                write!(f, "virtual address {va} is not page-aligned")
            }
            PagingError::MisalignedPhys(pa) => {
                write!(f, "physical address {pa} is not page-aligned")
            }
            PagingError::NonCanonical(va) => {
                write!(f, "virtual address {va} is not translated by these tables")
            }
            PagingError::OutsideWindow(va) => {
                write!(f, "virtual address {va} is outside the mapping window")
            }
            PagingError::PhysTooHigh(pa) => write!(f, "physical address {pa} is too high"),
            PagingError::Executable => write!(f, "mapping windows are never executable"),
            PagingError::AlreadyMapped { va, pa } => write!(f, "{va} is already mapped to {pa}"),
            PagingError::NotMapped(va) => write!(f, "{va} is not mapped"),
            PagingError::HugePage { va, level } => {
                write!(f, "a level-{level} block covers {va}")
            }
            PagingError::BadEntry { va, level } => {
                write!(
                    f,
                    "the level-{level} entry for {va} has an unsupported encoding"
                )
            }
            PagingError::OutOfFrames => write!(f, "no free frame for a page table"),
            PagingError::Unreachable(pa) => write!(f, "table frame {pa} is not reachable"),
            PagingError::Overflow => write!(f, "range runs past the end of the address space"),
            PagingError::Unsupported(why) => write!(f, "unsupported: {why}"),
            PagingError::Busy => write!(f, "the page tables are in use"),
            PagingError::SelfTest(why) => write!(f, "self-test: {why}"),
            PagingError::NotBallooned(pa) => {
                write!(f, "the frames from {pa} are not all ballooned")
            }
            PagingError::Backed(pa) => {
                write!(
                    f,
                    "the frames from {pa} include memory the identity map keeps"
                )
            }
            PagingError::OutOfMemory(e) => write!(f, "{e}"),
        }
    }
}
