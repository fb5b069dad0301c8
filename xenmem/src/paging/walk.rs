//! The walker: one implementation of translate, map and unmap for every
//! [`Format`].

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{
    level_shift, level_size, Attrs, Entry, Flush, Format, FrameSource, MapFlush, PagingError,
    TableLimits, TableMemory, Tlb, UnmapFlush, Window, ENTRIES, MAX_LEVELS,
};
use crate::addr::{GuestPhysAddr, PageCount, VirtAddr, PAGE_SIZE};

/// Page tables of format `F`, reached through `M`, invalidated through `T`,
/// that map and unmap 4 KiB pages inside one [`Window`].
///
/// Mapping and unmapping are safe operations: nothing inside the window is
/// reachable from safe code, and whoever turns a window address into a
/// pointer or reference is responsible (in the `unsafe` block that does so)
/// for the page being mapped as long as it is used. Outside the window the
/// tables are read-only to this type, so the agent's own memory cannot be
/// unmapped by mistake.
pub struct PageTable<F, M, T> {
    root: GuestPhysAddr,
    window: Window,
    mem: M,
    /// Physical addresses must be below this.
    pa_end: u64,
    /// How often [`set_root`](Self::set_root) moved the root.
    root_switches: u64,
    marker: PhantomData<fn() -> (F, T)>,
}

/// Where a walk for one address ended.
enum Found {
    /// At a leaf of `level` mapping `pa` (its first byte) with `attrs`
    /// (restricted by the tables above).
    Leaf {
        level: usize,
        pa: GuestPhysAddr,
        attrs: Attrs,
    },
    /// At an invalid entry of `level`.
    Invalid,
    /// At an entry of `level` the format does not support.
    Unsupported { level: usize },
    /// At a table the memory cannot reach.
    Unreachable(GuestPhysAddr),
}

/// The tables a walk went through: `tables[level]` is the table of `level`,
/// for every level from the root down to `deepest`.
#[derive(Clone, Copy)]
struct Path {
    tables: [GuestPhysAddr; MAX_LEVELS],
    deepest: usize,
}

pub(super) fn index(va: u64, level: usize) -> usize {
    ((va >> level_shift(level)) as usize) % ENTRIES
}

pub(super) fn load(slot: &AtomicU64) -> u64 {
    // Relaxed is enough: the compiler may not move it across the TLB
    // instructions (`asm!` without `nomem`), and the hardware walker is
    // ordered by the barriers in `Tlb`.
    slot.load(Ordering::Relaxed)
}

pub(super) fn store(slot: &AtomicU64, value: u64) {
    slot.store(value, Ordering::Relaxed);
}

/// Zero every entry of `t`, a table no walker can reach yet (not linked),
/// in one `memset` rather than 512 separate entry stores.
fn zero_table(t: &super::Table) {
    // SAFETY: `AtomicU64` has the size and layout of `u64` and lives in an
    // `UnsafeCell`, so writing through the pointer a shared reference gives
    // is allowed; the table is not linked yet, so no other access (nor the
    // hardware walker) runs meanwhile, and `size_of_val(t)` bytes from its
    // start are exactly the table. All-zero bytes are a valid `AtomicU64`.
    unsafe {
        core::ptr::write_bytes(
            t.as_ptr().cast::<u8>().cast_mut(),
            0,
            core::mem::size_of_val(t),
        );
    }
}

impl<F: Format, M: TableMemory, T: Tlb> PageTable<F, M, T> {
    /// Take over the tree of tables rooted at `root`, to map and unmap in
    /// `window`.
    ///
    /// Checks that the root is reachable and that the window lies in the
    /// range the format translates from 0 (`F::LOW_VA_END`).
    ///
    /// # Safety
    /// `root` must be the root of a valid tree of format `F` (e.g. the one
    /// the MMU uses), every table of which `mem` reaches. While the
    /// `PageTable` exists, nothing else may change the entries that
    /// translate window addresses, and there must be no other `PageTable`
    /// for the same tree and window. Tables whose whole range lies in the
    /// window must have come from the [`FrameSource`] later passed to
    /// [`unmap_4k`](Self::unmap_4k), which frees them when they empty.
    pub unsafe fn new(root: GuestPhysAddr, window: Window, mem: M) -> Result<Self, PagingError> {
        const {
            assert!(F::LEVELS >= 1 && F::LEVELS <= MAX_LEVELS);
            assert!(F::PA_BITS < 64);
        };
        if !root.is_page_aligned() {
            return Err(PagingError::MisalignedPhys(root));
        }
        if window.end().0 > F::LOW_VA_END {
            return Err(PagingError::NonCanonical(VirtAddr(window.end().0 - 1)));
        }
        if mem.table(root).is_none() {
            return Err(PagingError::Unreachable(root));
        }
        Ok(PageTable {
            root,
            window,
            mem,
            pa_end: 1 << F::PA_BITS,
            root_switches: 0,
            marker: PhantomData,
        })
    }

    /// Refuse physical addresses from `2^bits` on (the CPU's limit: x86
    /// `MAXPHYADDR`, Arm `TCR_EL1.IPS`), if that is below the format's.
    pub fn limit_phys_bits(&mut self, bits: u32) {
        if bits < F::PA_BITS {
            self.pa_end = 1u64 << bits.max(crate::addr::PAGE_SHIFT);
        }
    }

    /// Map `pa` with `attrs` at the window's last page for as long as these
    /// page tables exist, and take that page out of the window: later
    /// [`window`](Self::window) users never see it, and nothing can unmap
    /// it. For mappings the runtime keeps (the console ring). Missing tables
    /// come from `frames`; on error nothing has changed.
    pub fn map_pinned(
        &mut self,
        pa: GuestPhysAddr,
        attrs: Attrs,
        frames: &mut impl FrameSource,
    ) -> Result<VirtAddr, PagingError> {
        let size = self.window.size();
        let smaller = Window::new(self.window.start(), size - PAGE_SIZE)
            .ok_or(PagingError::OutsideWindow(self.window.start()))?;
        let va = VirtAddr(self.window.end().0 - PAGE_SIZE);
        self.map_4k(va, pa, attrs, frames)?.flush();
        self.window = smaller;
        Ok(va)
    }

    /// The root table's frame.
    pub fn root(&self) -> GuestPhysAddr {
        self.root
    }

    /// Make `root` the root of the tree this handle changes, after
    /// [`Tlb::switch_root`] made it the MMU's (see `identity`).
    pub(super) fn set_root(&mut self, root: GuestPhysAddr) {
        self.root = root;
        self.root_switches += 1;
    }

    /// How many times the root moved to a new copy of the tree (Arm, when
    /// a live block was split: see [`unmap_identity`](Self::unmap_identity)).
    pub fn root_switches(&self) -> u64 {
        self.root_switches
    }

    /// The mapping window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// One past the highest physical address a mapping may use.
    pub fn phys_end(&self) -> GuestPhysAddr {
        GuestPhysAddr(self.pa_end)
    }

    fn walk(&self, va: VirtAddr, path: &mut Path) -> Found {
        let mut table = self.root;
        let mut limits = TableLimits::NONE;
        for level in (0..F::LEVELS).rev() {
            path.tables[level] = table;
            path.deepest = level;
            let Some(t) = self.mem.table(table) else {
                return Found::Unreachable(table);
            };
            match F::decode(load(&t[index(va.0, level)]), level) {
                Entry::Invalid => return Found::Invalid,
                Entry::Unsupported => return Found::Unsupported { level },
                Entry::Leaf { pa, attrs } => {
                    return Found::Leaf {
                        level,
                        pa,
                        attrs: limits.apply(attrs),
                    }
                }
                Entry::Table { next, limits: l } if level > 0 => {
                    table = next;
                    limits = limits.and(l);
                }
                Entry::Table { .. } => break,
            }
        }
        Found::Unsupported { level: 0 }
    }

    fn new_path(&self) -> Path {
        Path {
            tables: [self.root; MAX_LEVELS],
            deepest: F::LEVELS - 1,
        }
    }

    /// Where `va` is mapped to (the byte, not the page) and with what
    /// attributes, anywhere in the address space (the identity map too);
    /// `None` if it is not mapped or not translatable.
    pub fn translate(&self, va: VirtAddr) -> Option<(GuestPhysAddr, Attrs)> {
        if !F::is_canonical(va) {
            return None;
        }
        match self.walk(va, &mut self.new_path()) {
            Found::Leaf { level, pa, attrs } => {
                let offset = va.0 & (level_size(level) - 1);
                Some((GuestPhysAddr(pa.0.checked_add(offset)?), attrs))
            }
            _ => None,
        }
    }

    fn check_va(&self, va: VirtAddr) -> Result<(), PagingError> {
        if va.0 % PAGE_SIZE != 0 {
            Err(PagingError::MisalignedVirt(va))
        } else if !F::is_canonical(va) {
            Err(PagingError::NonCanonical(va))
        } else if !self.window.contains(va) {
            Err(PagingError::OutsideWindow(va))
        } else {
            Ok(())
        }
    }

    /// The last page of a range that starts inside the window: the first
    /// page outside it is the error.
    fn check_last(&self, last_va: u64) -> Result<(), PagingError> {
        if last_va >= self.window.end().0 {
            Err(PagingError::OutsideWindow(self.window.end()))
        } else {
            Ok(())
        }
    }

    fn check_pa(&self, pa: GuestPhysAddr) -> Result<(), PagingError> {
        if !pa.is_page_aligned() {
            Err(PagingError::MisalignedPhys(pa))
        } else if pa.0 >= self.pa_end {
            Err(PagingError::PhysTooHigh(pa))
        } else {
            Ok(())
        }
    }

    /// A zeroed table from `frames`, made visible to the walker.
    pub(super) fn new_table(
        &self,
        frames: &mut impl FrameSource,
    ) -> Result<GuestPhysAddr, PagingError> {
        let frame = frames.alloc_frame()?;
        let Some(t) = self
            .mem
            .table(frame)
            .filter(|_| frame.is_page_aligned() && frame.0 < self.pa_end)
        else {
            frames.free_frame(frame);
            return Err(PagingError::Unreachable(frame));
        };
        zero_table(t);
        T::publish_table();
        Ok(frame)
    }

    /// Map the 4 KiB page at `va` (in the window) to `pa` with `attrs`;
    /// missing tables come from `frames`.
    ///
    /// On error nothing has changed (tables this call created are freed).
    pub fn map_4k(
        &mut self,
        va: VirtAddr,
        pa: GuestPhysAddr,
        attrs: Attrs,
        frames: &mut impl FrameSource,
    ) -> Result<MapFlush<T>, PagingError> {
        self.check_va(va)?;
        self.check_pa(pa)?;
        if attrs.executable {
            return Err(PagingError::Executable);
        }
        let mut path = self.new_path();
        let mut created = 0u32;
        match self.map_walk(va, F::page(pa, attrs), frames, &mut path, &mut created) {
            Ok(()) => Ok(Flush::fresh(va, 1)),
            Err(e) => {
                self.prune(va, &path, created, frames);
                Err(e)
            }
        }
    }

    /// The walk of [`map_4k`](Self::map_4k): creates missing tables (bit
    /// `level` of `created` for each) and writes `leaf`.
    fn map_walk(
        &self,
        va: VirtAddr,
        leaf: u64,
        frames: &mut impl FrameSource,
        path: &mut Path,
        created: &mut u32,
    ) -> Result<(), PagingError> {
        let mut table = self.root;
        for level in (0..F::LEVELS).rev() {
            path.tables[level] = table;
            path.deepest = level;
            let t = self
                .mem
                .table(table)
                .ok_or(PagingError::Unreachable(table))?;
            let slot = &t[index(va.0, level)];
            let entry = F::decode(load(slot), level);
            let bad = PagingError::BadEntry {
                va,
                level: level as u8,
            };
            if level == 0 {
                return match entry {
                    Entry::Invalid => {
                        store(slot, leaf);
                        Ok(())
                    }
                    Entry::Leaf { pa, .. } => Err(PagingError::AlreadyMapped { va, pa }),
                    _ => Err(bad),
                };
            }
            table = match entry {
                Entry::Table { next, .. } => next,
                Entry::Leaf { .. } => {
                    return Err(PagingError::HugePage {
                        va,
                        level: level as u8,
                    })
                }
                Entry::Unsupported => return Err(bad),
                Entry::Invalid => {
                    let next = self.new_table(frames)?;
                    store(slot, F::table(next));
                    *created |= 1 << (level - 1);
                    next
                }
            };
        }
        Ok(())
    }

    /// Free the tables on `path` that are empty and the walker's own (their
    /// whole range in the window, or `created` by the failed call), from the
    /// deepest up: unlink, invalidate, then give the frames back.
    fn prune(&self, va: VirtAddr, path: &Path, created: u32, frames: &mut impl FrameSource) {
        let mut freed = [GuestPhysAddr(0); MAX_LEVELS];
        let mut n = 0;
        for level in path.deepest..F::LEVELS - 1 {
            let span = level_size(level + 1);
            let ours = created & (1 << level) != 0 || self.window.covers(va.0 & !(span - 1), span);
            if !ours {
                break;
            }
            let (Some(t), Some(parent)) = (
                self.mem.table(path.tables[level]),
                self.mem.table(path.tables[level + 1]),
            ) else {
                break;
            };
            if !t
                .iter()
                .all(|e| F::decode(load(e), level) == Entry::Invalid)
            {
                break;
            }
            store(&parent[index(va.0, level + 1)], 0);
            freed[n] = path.tables[level];
            n += 1;
        }
        if n > 0 {
            // Walk caches may still point at the unlinked tables: drop them
            // before the frames can be reused.
            T::invalidate_page(va);
            for &frame in &freed[..n] {
                frames.free_frame(frame);
            }
        }
    }

    /// Unmap the 4 KiB page at `va` (in the window); returns the frame it
    /// mapped. Tables left empty are freed to `frames`.
    ///
    /// The page may stay reachable through the TLB until the returned flush
    /// is done: do not reuse the frame before.
    pub fn unmap_4k(
        &mut self,
        va: VirtAddr,
        frames: &mut impl FrameSource,
    ) -> Result<(GuestPhysAddr, UnmapFlush<T>), PagingError> {
        self.check_va(va)?;
        let mut path = self.new_path();
        match self.walk(va, &mut path) {
            Found::Leaf { level: 0, pa, .. } => {
                let t = self
                    .mem
                    .table(path.tables[0])
                    .ok_or(PagingError::Unreachable(path.tables[0]))?;
                store(&t[index(va.0, 0)], 0);
                self.prune(va, &path, 0, frames);
                Ok((pa, Flush::new(va, 1)))
            }
            Found::Leaf { level, .. } => Err(PagingError::HugePage {
                va,
                level: level as u8,
            }),
            Found::Invalid => Err(PagingError::NotMapped(va)),
            Found::Unsupported { level } => Err(PagingError::BadEntry {
                va,
                level: level as u8,
            }),
            Found::Unreachable(t) => Err(PagingError::Unreachable(t)),
        }
    }

    /// The last page of `pages` pages from `va`, or `None` for none.
    fn last_page(va: u64, pages: PageCount) -> Result<Option<u64>, PagingError> {
        if pages.0 == 0 {
            return Ok(None);
        }
        let len = pages.bytes().ok_or(PagingError::Overflow)?;
        va.checked_add(len - PAGE_SIZE)
            .map(Some)
            .ok_or(PagingError::Overflow)
    }

    /// Map `pages` pages from `va` to the frames from `pa`, all or nothing:
    /// on error, the pages this call mapped are unmapped (and invalidated)
    /// again.
    pub fn map_range(
        &mut self,
        va: VirtAddr,
        pa: GuestPhysAddr,
        pages: PageCount,
        attrs: Attrs,
        frames: &mut impl FrameSource,
    ) -> Result<Flush<T>, PagingError> {
        self.check_va(va)?;
        self.check_pa(pa)?;
        if attrs.executable {
            return Err(PagingError::Executable);
        }
        let Some(last_va) = Self::last_page(va.0, pages)? else {
            return Ok(Flush::new(va, 0));
        };
        self.check_last(last_va)?;
        let last_pa = Self::last_page(pa.0, pages)?.unwrap_or(pa.0);
        self.check_pa(GuestPhysAddr(last_pa))?;
        // One walk per level-0 table (512 pages), not per page: the first
        // page of each run goes through `map_4k` (which makes the missing
        // tables), the rest of the run is written straight into its
        // level-0 table. The errors are those of `map_4k` page by page.
        let mut i = 0;
        while i < pages.0 {
            let run = Self::run_len(va.0 + i * PAGE_SIZE, pages.0 - i);
            if let Err(e) = self.map_run(va, pa, i, run, attrs, frames) {
                let (done, e) = e;
                for j in 0..done {
                    // Cannot fail: this call just mapped the page.
                    if let Ok((_, f)) = self.unmap_4k(VirtAddr(va.0 + j * PAGE_SIZE), frames) {
                        f.ignore();
                    }
                }
                Flush::<T>::new(va, done).flush();
                return Err(e);
            }
            i += run;
        }
        // Every entry written was invalid (`map_walk` and `map_run` write
        // into nothing else): publication, no invalidation.
        Ok(Flush::fresh(va, pages.0))
    }

    /// How many of `left` pages from `va` share its level-0 table.
    fn run_len(va: u64, left: u64) -> u64 {
        let in_table = (ENTRIES - index(va, 0)) as u64;
        in_table.min(left)
    }

    /// Map pages `first..first + run` of a [`map_range`](Self::map_range)
    /// (all in one level-0 table). On error, how many pages of the range
    /// are mapped (all before the failing one) and the error.
    fn map_run(
        &self,
        va: VirtAddr,
        pa: GuestPhysAddr,
        first: u64,
        run: u64,
        attrs: Attrs,
        frames: &mut impl FrameSource,
    ) -> Result<(), (u64, PagingError)> {
        let at = |i: u64| {
            (
                VirtAddr(va.0 + i * PAGE_SIZE),
                GuestPhysAddr(pa.0 + i * PAGE_SIZE),
            )
        };
        // The first page as `map_4k` maps it (the range was checked
        // whole: in the window, canonical, below the physical limit).
        let (v, p) = at(first);
        let mut path = self.new_path();
        let mut created = 0u32;
        if let Err(e) = self.map_walk(v, F::page(p, attrs), frames, &mut path, &mut created) {
            self.prune(v, &path, created, frames);
            return Err((first, e));
        }
        // The level-0 table the walk ended in (`map_walk` succeeds only
        // there).
        let leaf = path.tables[0];
        let t = self
            .mem
            .table(leaf)
            .ok_or((first + 1, PagingError::Unreachable(leaf)))?;
        // The run's slots are consecutive in the table (one level-0 table,
        // `run_len`): walked as a slice, no index computed per page.
        let from = index(at(first + 1).0 .0, 0);
        let slots = t
            .get(from..from + (run - 1) as usize)
            .ok_or((first + 1, PagingError::Unreachable(leaf)))?;
        let mut p = at(first + 1).1;
        for (k, slot) in slots.iter().enumerate() {
            match F::decode(load(slot), 0) {
                Entry::Invalid => store(slot, F::page(p, attrs)),
                Entry::Leaf { pa, .. } => {
                    let i = first + 1 + k as u64;
                    return Err((i, PagingError::AlreadyMapped { va: at(i).0, pa }));
                }
                _ => {
                    let i = first + 1 + k as u64;
                    return Err((
                        i,
                        PagingError::BadEntry {
                            va: at(i).0,
                            level: 0,
                        },
                    ));
                }
            }
            p = GuestPhysAddr(p.0 + PAGE_SIZE);
        }
        Ok(())
    }

    /// Unmap `pages` pages from `va`, all or nothing: every page must be
    /// mapped with a 4 KiB entry, or nothing changes.
    pub fn unmap_range(
        &mut self,
        va: VirtAddr,
        pages: PageCount,
        frames: &mut impl FrameSource,
    ) -> Result<Flush<T>, PagingError> {
        self.check_va(va)?;
        let Some(last_va) = Self::last_page(va.0, pages)? else {
            return Ok(Flush::new(va, 0));
        };
        self.check_last(last_va)?;
        // Checked whole first, one walk per level-0 table; then each
        // table's entries cleared in one go and the table freed (if it
        // emptied) once, not scanned after every page.
        let mut i = 0;
        while i < pages.0 {
            let run = Self::run_len(va.0 + i * PAGE_SIZE, pages.0 - i);
            self.leaf_table_of_run(VirtAddr(va.0 + i * PAGE_SIZE), run)?;
            i += run;
        }
        let mut i = 0;
        while i < pages.0 {
            let start = VirtAddr(va.0 + i * PAGE_SIZE);
            let run = Self::run_len(start.0, pages.0 - i);
            let mut path = self.new_path();
            let t = match self.leaf_table_of_run_on(start, run, &mut path) {
                Ok(t) => t,
                Err(e) => {
                    // Not expected after the check above; leave nothing
                    // stale behind.
                    Flush::<T>::new(va, i).flush();
                    return Err(e);
                }
            };
            for k in 0..run {
                store(&t[index(start.0 + k * PAGE_SIZE, 0)], 0);
            }
            self.prune(start, &path, 0, frames);
            i += run;
        }
        Ok(Flush::new(va, pages.0))
    }

    /// Check that the `run` pages from `va` (all in one level-0 table) are
    /// each mapped by a 4 KiB entry; the errors are those of
    /// [`unmap_4k`](Self::unmap_4k) for the first page that is not.
    fn leaf_table_of_run(&self, va: VirtAddr, run: u64) -> Result<(), PagingError> {
        self.leaf_table_of_run_on(va, run, &mut self.new_path())
            .map(|_| ())
    }

    /// [`leaf_table_of_run`](Self::leaf_table_of_run), giving the level-0
    /// table, with the tables above it in `path`.
    fn leaf_table_of_run_on(
        &self,
        va: VirtAddr,
        run: u64,
        path: &mut Path,
    ) -> Result<&super::Table, PagingError> {
        match self.walk(va, path) {
            Found::Leaf { level: 0, .. } => {}
            Found::Leaf { level, .. } => {
                return Err(PagingError::HugePage {
                    va,
                    level: level as u8,
                })
            }
            Found::Invalid => return Err(PagingError::NotMapped(va)),
            Found::Unsupported { level } => {
                return Err(PagingError::BadEntry {
                    va,
                    level: level as u8,
                })
            }
            Found::Unreachable(t) => return Err(PagingError::Unreachable(t)),
        }
        let leaf = path.tables[0];
        let t = self.mem.table(leaf).ok_or(PagingError::Unreachable(leaf))?;
        for k in 1..run {
            let page = VirtAddr(va.0 + k * PAGE_SIZE);
            match F::decode(load(&t[index(page.0, 0)]), 0) {
                Entry::Leaf { .. } => {}
                Entry::Invalid => return Err(PagingError::NotMapped(page)),
                _ => return Err(PagingError::BadEntry { va: page, level: 0 }),
            }
        }
        Ok(t)
    }
}

impl<F, M, T> core::fmt::Debug for PageTable<F, M, T>
where
    F: Format,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("window", &self.window)
            .field("pa_end", &self.pa_end)
            .finish()
    }
}
