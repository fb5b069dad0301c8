//! Keeping the boot identity map to the guest's own memory, on both
//! architectures: taking ballooned frames (and, once at start-up,
//! everything that is not memory) out of it, and putting ballooned frames
//! back.
//!
//! The boot code identity-maps the low address space wholesale with blocks:
//! `[0, 4 GiB)` in 2 MiB pages on x86_64 (`PD` entries below `PDPT`s);
//! on aarch64 the first GiB in 2 MiB Device blocks and `[1 GiB, 511 GiB)`
//! in 1 GiB blocks (level-1 entries of the root). Frames that are not the
//! guest's memory — unpopulated space, device space, firmware's
//! reservations, frames given back to Xen — must not stay mapped as if they
//! were RAM, so [`PageTable::unmap_identity`] clears their entries (at
//! start-up for all of them through
//! [`trim_identity`](super::system::trim_identity), later for frames the
//! reservation engine balloons) and [`PageTable::map_identity`] restores
//! ballooned ones before they are RAM again.
//!
//! Per 1 GiB (walker level 2) and then per 2 MiB (level 1) of the range:
//!
//! - a block the range covers entirely is cleared (a 1 GiB block too); a
//!   2 MiB block is restored as a 2 MiB block with the boot attributes
//!   ([`IdentitySpec`]) — restoring never makes a 1 GiB block;
//! - a block the range covers in part is *split* into a table of 512
//!   entries one level down with the same translation and attributes, and
//!   the entries of the range are then cleared or restored one by one; a
//!   block restored in part from an invalid entry gets a new table with only
//!   those entries;
//! - a table already there has its entries changed.
//!
//! Split tables stay (they are not merged back); their frames, like every
//! new table's, come from the [`IdentityFrames`] source.
//!
//! # Splitting a live block
//!
//! x86 may replace a 2 MiB page by a table with the same translation in
//! place ([`Tlb::SPLIT_IN_PLACE`]). Arm requires break-before-make for that
//! (unless the CPU has FEAT_BBM level 2, which the Cortex-A57 that QEMU and
//! Xen run here does not), and the break would unmap the block the agent is
//! running in. So there the change is made on copies: every live table that
//! gets a split entry, and every table above it up to the root, is copied;
//! the splits and all other changes to those tables are written into the
//! copies (the live tree never sees a block turn into a table); then
//! [`Tlb::switch_root`] makes the new root the one the MMU uses with every
//! old translation dropped, and the replaced tables go back to the frame
//! source if they came from it ([`IdentityFrames::is_table_frame`]; the boot
//! code's tables in the image do not). Tables no split touches are shared
//! between the old and the new tree, the mapping window's among them.
//!
//! Clearing a live entry (a break) and filling an invalid one (a make) are
//! done in place on both architectures.
//!
//! # All or nothing
//!
//! Only frames the source says may go ([`IdentityFrames::unbacked`]) are
//! unmapped, and only ballooned ones mapped back; only addresses below
//! [`IdentitySpec::end`] are touched (above it nothing was ever
//! identity-mapped). Every call plans first — reading the tables, checking
//! every entry it will change, counting the tables it needs — then takes all
//! table frames, and only then writes; on any error nothing has changed.
//! It ends with a full TLB flush ([`Tlb::invalidate_all`]) or the root switch.

use alloc::vec::Vec;

use super::walk::{index, load, store};
use super::{
    level_size, Attrs, Entry, Format, FrameSource, PageTable, PagingError, TableMemory, Tlb,
};
use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SIZE};
use crate::alloc_util::TryVec;
use crate::region::FrameRange;

/// A [`FrameSource`] that also knows what the frames are: which the identity
/// map may drop, which are ballooned (given back to Xen), and which are its
/// page-table frames. The region table on the target.
pub trait IdentityFrames: FrameSource {
    /// Whether no frame of `range` is memory the identity map must keep:
    /// all are ballooned, unpopulated (holes, unusable), device space or
    /// another domain's (grant and foreign mappings).
    fn unbacked(&self, range: FrameRange) -> bool;
    /// Whether every frame of `range` is ballooned: the only frames
    /// [`PageTable::map_identity`] puts back.
    fn all_ballooned(&self, range: FrameRange) -> bool;
    /// Whether `frame` is a page-table frame this source handed out and takes
    /// back: a table replaced by a copy is freed only then.
    fn is_table_frame(&self, frame: GuestPhysAddr) -> bool;
}

/// What the boot identity map looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentitySpec {
    /// One past the last identity-mapped address.
    pub end: GuestPhysAddr,
    /// The attributes the boot code gives its pages (restored with them).
    pub attrs: Attrs,
}

/// 2 MiB: one level-1 entry.
const BLOCK: u64 = level_size(1);
/// 1 GiB: one level-2 entry.
const GIB: u64 = level_size(2);

/// A table the plan writes: one of the live tree, or the plan's new table
/// number `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tab {
    Live(GuestPhysAddr),
    New(usize),
}

/// What a new table holds before the plan's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Nothing (all entries invalid).
    Empty,
    /// The leaf of `level + 1` that maps `base` with `attrs`, as 512 leaves
    /// of `level`: the same translation.
    Split {
        base: u64,
        attrs: Attrs,
        level: usize,
    },
    /// The entries of this live table (which the new tree replaces).
    Copy(GuestPhysAddr),
}

/// One change to a table.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Entry `index` of `table` := a table entry pointing at `to`.
    Link { table: Tab, index: usize, to: Tab },
    /// Entry `index` of `table` := `value` (0, or a restored block).
    Value {
        table: Tab,
        index: usize,
        value: u64,
    },
    /// The level-0 entries of `table` for `[lo, hi)`: identity pages with
    /// `attrs`, or cleared (`None`).
    Pages {
        table: Tab,
        lo: u64,
        hi: u64,
        attrs: Option<Attrs>,
    },
}

impl Write {
    fn table(&self) -> Tab {
        match *self {
            Write::Link { table, .. } | Write::Value { table, .. } | Write::Pages { table, .. } => {
                table
            }
        }
    }
}

/// The live tables that translate an address, by walker level (entries
/// below the deepest one known are unused).
type Path = [GuestPhysAddr; super::MAX_LEVELS];

/// Everything one call will do, decided before anything is written.
#[derive(Debug, Default)]
struct Plan {
    /// The new tables, numbered.
    new: Vec<Fill>,
    /// The changes, in no particular order (new tables are written first).
    writes: Vec<Write>,
    /// Live tables replaced by copies (break-before-make architectures), with
    /// the copy's number; the root among them if any is. A handful at most:
    /// the tables above a split, up to the root.
    copies: Vec<(GuestPhysAddr, usize)>,
}

const PLAN: &str = "identity-map plan";

impl Plan {
    fn add(&mut self, fill: Fill) -> Result<usize, PagingError> {
        self.new.try_push(fill, PLAN)?;
        Ok(self.new.len() - 1)
    }

    fn write(&mut self, w: Write) -> Result<(), PagingError> {
        Ok(self.writes.try_push(w, PLAN)?)
    }

    /// The copy of live table `t`, if it has one.
    fn copy_of(&self, t: GuestPhysAddr) -> Option<usize> {
        self.copies.iter().find(|c| c.0 == t).map(|c| c.1)
    }

    /// The table that writes aimed at `tab` go to: its copy if it has one.
    fn target(&self, tab: Tab) -> Tab {
        match tab {
            Tab::Live(t) => self.copy_of(t).map_or(tab, Tab::New),
            Tab::New(_) => tab,
        }
    }

    /// Copy the live tables `path[level..=top]` (the tables that translate
    /// `va`, by level, `top` the root's) and link each copy from its
    /// parent's copy.
    fn copy_chain(
        &mut self,
        path: &Path,
        level: usize,
        top: usize,
        va: u64,
    ) -> Result<(), PagingError> {
        for l in level..=top {
            let t = path[l];
            if self.copy_of(t).is_some() {
                // Its parents are copied and linked already.
                return Ok(());
            }
            self.copies.try_push((t, 0), PLAN)?;
            let n = self.add(Fill::Copy(t))?;
            if let Some(c) = self.copies.last_mut() {
                c.1 = n;
            }
            if l < top {
                self.write(Write::Link {
                    table: Tab::Live(path[l + 1]),
                    index: index(va, l + 1),
                    to: Tab::New(n),
                })?;
            }
        }
        Ok(())
    }
}

/// The error for an entry of `level` at `va` this code does not handle.
fn bad(va: u64, level: usize) -> PagingError {
    PagingError::BadEntry {
        va: VirtAddr(va),
        level: level as u8,
    }
}

impl<F: Format, M: TableMemory, T: Tlb> PageTable<F, M, T> {
    /// Take the frames of `range` out of the identity map: their addresses
    /// fault from now on. For ballooned frames, and at start-up for
    /// everything that is not the guest's memory (see
    /// [`trim_identity`](super::system::trim_identity)). New tables come from
    /// `frames`.
    ///
    /// Fails with [`PagingError::Backed`] unless `frames` says no frame is
    /// memory the map must keep ([`IdentityFrames::unbacked`]); on any error
    /// nothing has changed.
    pub fn unmap_identity(
        &mut self,
        range: FrameRange,
        spec: IdentitySpec,
        frames: &mut impl IdentityFrames,
    ) -> Result<(), PagingError> {
        self.change_identity(range, spec, false, frames)
    }

    /// Put the frames of `range` back into the identity map with the boot
    /// attributes (before they are RAM again: they must still be ballooned
    /// in `frames`). New tables come from `frames`.
    ///
    /// Fails with [`PagingError::NotBallooned`] unless `frames` says every
    /// frame is ballooned; on any error nothing has changed.
    pub fn map_identity(
        &mut self,
        range: FrameRange,
        spec: IdentitySpec,
        frames: &mut impl IdentityFrames,
    ) -> Result<(), PagingError> {
        self.change_identity(range, spec, true, frames)
    }

    fn change_identity(
        &mut self,
        range: FrameRange,
        spec: IdentitySpec,
        present: bool,
        frames: &mut impl IdentityFrames,
    ) -> Result<(), PagingError> {
        if present && !frames.all_ballooned(range) {
            return Err(PagingError::NotBallooned(range.start_addr()));
        }
        if !present && !frames.unbacked(range) {
            return Err(PagingError::Backed(range.start_addr()));
        }
        let start = range.start_addr().0;
        let stop = range.end_addr().0.min(spec.end.0);
        if start >= stop {
            return Ok(());
        }
        let mut plan = Plan::default();
        let mut g = start & !(GIB - 1);
        while g < stop {
            self.plan_gib(&mut plan, g, start.max(g), stop.min(g + GIB), present, spec)?;
            g += GIB;
        }
        self.apply(&plan, frames)
    }

    /// Plan `[lo, hi)`, inside the GiB at `g`.
    fn plan_gib(
        &self,
        plan: &mut Plan,
        g: u64,
        lo: u64,
        hi: u64,
        present: bool,
        spec: IdentitySpec,
    ) -> Result<(), PagingError> {
        // The tables from the root down to the one with the 1 GiB entries,
        // all tables.
        if F::LEVELS < 3 {
            return Err(PagingError::Unsupported("fewer than 3 levels"));
        }
        let mut path: Path = [GuestPhysAddr(0); super::MAX_LEVELS];
        let mut table = self.root();
        for level in (2..F::LEVELS).rev() {
            path[level] = table;
            if level == 2 {
                break;
            }
            let t = self.table(table)?;
            table = match F::decode(load(&t[index(g, level)]), level) {
                Entry::Table { next, .. } => next,
                Entry::Invalid if !present => return Ok(()),
                Entry::Invalid => return Err(PagingError::NotMapped(VirtAddr(g))),
                Entry::Leaf { .. } => {
                    return Err(PagingError::HugePage {
                        va: VirtAddr(g),
                        level: level as u8,
                    })
                }
                Entry::Unsupported => return Err(bad(g, level)),
            };
        }
        let l2 = path[2];
        let slot = index(g, 2);
        let full = lo == g && hi == g + GIB;
        let l1 = match F::decode(load(&self.table(l2)?[slot]), 2) {
            Entry::Leaf { pa, attrs } => {
                if pa.0 != g {
                    return Err(PagingError::Unsupported(
                        "a 1 GiB block that is not an identity mapping",
                    ));
                }
                if present {
                    return Ok(());
                }
                if full {
                    plan.write(Write::Value {
                        table: Tab::Live(l2),
                        index: slot,
                        value: 0,
                    })?;
                    return Ok(());
                }
                F::block(GuestPhysAddr(g), attrs, 1)
                    .ok_or(PagingError::Unsupported("no 2 MiB blocks"))?;
                let n = plan.add(Fill::Split {
                    base: g,
                    attrs,
                    level: 1,
                })?;
                self.link_split(plan, &path, 2, g, n)?;
                Tab::New(n)
            }
            Entry::Invalid if !present => return Ok(()),
            Entry::Invalid => {
                let n = plan.add(Fill::Empty)?;
                plan.write(Write::Link {
                    table: Tab::Live(l2),
                    index: slot,
                    to: Tab::New(n),
                })?;
                Tab::New(n)
            }
            Entry::Table { next, .. } => Tab::Live(next),
            Entry::Unsupported => return Err(bad(g, 2)),
        };
        let mut b = lo & !(BLOCK - 1);
        while b < hi {
            self.plan_block(
                plan,
                l1,
                path,
                b,
                lo.max(b),
                hi.min(b + BLOCK),
                present,
                spec,
            )?;
            b += BLOCK;
        }
        Ok(())
    }

    /// Plan `[lo, hi)`, inside the 2 MiB block at `b`, whose entry is in the
    /// level-1 table `l1` (below the live tables of `path`).
    #[allow(clippy::too_many_arguments)]
    fn plan_block(
        &self,
        plan: &mut Plan,
        l1: Tab,
        path: Path,
        b: u64,
        lo: u64,
        hi: u64,
        present: bool,
        spec: IdentitySpec,
    ) -> Result<(), PagingError> {
        let slot = index(b, 1);
        let full = lo == b && hi == b + BLOCK;
        let entry = match l1 {
            Tab::Live(t) => F::decode(load(&self.table(t)?[slot]), 1),
            Tab::New(n) => match plan.new[n] {
                Fill::Split { attrs, .. } => Entry::Leaf {
                    pa: GuestPhysAddr(b),
                    attrs,
                },
                Fill::Empty | Fill::Copy(_) => Entry::Invalid,
            },
        };
        match entry {
            Entry::Leaf { pa, attrs } => {
                if pa.0 != b {
                    return Err(PagingError::Unsupported(
                        "a 2 MiB block that is not an identity mapping",
                    ));
                }
                if present {
                    return Ok(());
                }
                if full {
                    plan.write(Write::Value {
                        table: l1,
                        index: slot,
                        value: 0,
                    })?;
                    return Ok(());
                }
                let n = plan.add(Fill::Split {
                    base: b,
                    attrs,
                    level: 0,
                })?;
                plan.write(Write::Pages {
                    table: Tab::New(n),
                    lo,
                    hi,
                    attrs: None,
                })?;
                match l1 {
                    Tab::Live(t) => {
                        // A live block becomes a table: copies on Arm.
                        let mut path = path;
                        path[1] = t;
                        self.link_split(plan, &path, 1, b, n)?;
                    }
                    Tab::New(_) => plan.write(Write::Link {
                        table: l1,
                        index: slot,
                        to: Tab::New(n),
                    })?,
                }
            }
            Entry::Invalid if !present => {}
            Entry::Invalid if full => {
                let value = F::block(GuestPhysAddr(b), spec.attrs, 1)
                    .ok_or(PagingError::Unsupported("no 2 MiB blocks"))?;
                plan.write(Write::Value {
                    table: l1,
                    index: slot,
                    value,
                })?;
            }
            Entry::Invalid => {
                let n = plan.add(Fill::Empty)?;
                plan.write(Write::Pages {
                    table: Tab::New(n),
                    lo,
                    hi,
                    attrs: Some(spec.attrs),
                })?;
                plan.write(Write::Link {
                    table: l1,
                    index: slot,
                    to: Tab::New(n),
                })?;
            }
            Entry::Table { next, .. } => {
                // Every entry in the range must be empty or map its own
                // address: nothing else is the identity map's.
                let t = self.table(next)?;
                let mut a = lo;
                while a < hi {
                    match F::decode(load(&t[index(a, 0)]), 0) {
                        Entry::Invalid => {}
                        Entry::Leaf { pa, .. } if pa.0 == a => {}
                        _ => return Err(bad(a, 0)),
                    }
                    a += PAGE_SIZE;
                }
                plan.write(Write::Pages {
                    table: Tab::Live(next),
                    lo,
                    hi,
                    attrs: present.then_some(spec.attrs),
                })?;
            }
            Entry::Unsupported => return Err(bad(b, 1)),
        }
        Ok(())
    }

    /// Link the split table `n` in place of the live block that the table
    /// `path[level]` holds for `va`: in place where the architecture allows
    /// it, else in copies of `path[level..]` (up to the root).
    fn link_split(
        &self,
        plan: &mut Plan,
        path: &Path,
        level: usize,
        va: u64,
        n: usize,
    ) -> Result<(), PagingError> {
        if !T::SPLIT_IN_PLACE {
            plan.copy_chain(path, level, F::LEVELS - 1, va)?;
        }
        plan.write(Write::Link {
            table: Tab::Live(path[level]),
            index: index(va, level),
            to: Tab::New(n),
        })
    }

    fn table(&self, frame: GuestPhysAddr) -> Result<&super::Table, PagingError> {
        self.memory()
            .table(frame)
            .ok_or(PagingError::Unreachable(frame))
    }

    /// Take the frames, fill the new tables, write, and make it take effect.
    fn apply(&mut self, plan: &Plan, frames: &mut impl IdentityFrames) -> Result<(), PagingError> {
        if plan.writes.is_empty() {
            return Ok(());
        }
        let mut got: Vec<GuestPhysAddr> = Vec::new();
        got.try_room(plan.new.len(), PLAN)?;
        let mut taken = Ok(());
        for _ in &plan.new {
            match self.new_table(frames) {
                // Cannot reallocate: the room was made above.
                Ok(t) => got.push(t),
                Err(e) => {
                    taken = Err(e);
                    break;
                }
            }
        }
        // The replaced tables go back once the new tree is in use: make
        // sure the source can take them then.
        if taken.is_ok() {
            let old = plan.copies.iter().filter(|c| frames.is_table_frame(c.0));
            taken = frames.prepare_free(old.count());
        }
        if let Err(e) = taken {
            // Latest first: each brings the source back to a state it was
            // in, which a table that records its frames holds without
            // needing memory.
            for &t in got.iter().rev() {
                frames.free_frame(t);
            }
            return Err(e);
        }
        // From here nothing fails: every table was reached while planning
        // (the live ones) or by `new_table` (the new ones).
        let frame = |tab: Tab| match plan.target(tab) {
            Tab::Live(t) => t,
            Tab::New(n) => got[n],
        };
        for (n, fill) in plan.new.iter().enumerate() {
            let Ok(t) = self.table(got[n]) else { continue };
            match *fill {
                Fill::Empty => {}
                Fill::Split { base, attrs, level } => {
                    for (i, e) in t.iter().enumerate() {
                        let pa = GuestPhysAddr(base + i as u64 * level_size(level));
                        let v = if level == 0 {
                            F::page(pa, attrs)
                        } else {
                            // Checked while planning.
                            F::block(pa, attrs, level).unwrap_or(0)
                        };
                        store(e, v);
                    }
                }
                Fill::Copy(src) => {
                    if let Ok(s) = self.table(src) {
                        for (to, from) in t.iter().zip(s.iter()) {
                            store(to, load(from));
                        }
                    }
                }
            }
        }
        // New tables first, then (once they are visible) the live ones.
        for new_first in [true, false] {
            if !new_first && !plan.new.is_empty() {
                T::publish_table();
            }
            for w in &plan.writes {
                if matches!(plan.target(w.table()), Tab::New(_)) != new_first {
                    continue;
                }
                let Ok(t) = self.table(frame(w.table())) else {
                    continue;
                };
                match *w {
                    Write::Link { index, to, .. } => store(&t[index], F::table(frame(to))),
                    Write::Value {
                        index: i, value, ..
                    } => store(&t[i], value),
                    Write::Pages { lo, hi, attrs, .. } => {
                        let mut a = lo;
                        while a < hi {
                            let v = attrs.map_or(0, |at| F::page(GuestPhysAddr(a), at));
                            store(&t[index(a, 0)], v);
                            a += PAGE_SIZE;
                        }
                    }
                }
            }
        }
        match plan.copy_of(self.root()) {
            Some(n) => {
                // SAFETY: the copy is complete and published (every table
                // of it written and `publish_table` done above) and maps
                // what the current tree maps with the same attributes (the
                // plan only splits blocks and drops ranges that are not
                // memory in use: ballooned frames).
                unsafe { T::switch_root(got[n]) };
                self.set_root(got[n]);
                for &(old, _) in &plan.copies {
                    if frames.is_table_frame(old) {
                        frames.free_frame(old);
                    }
                }
            }
            None => T::invalidate_all(),
        }
        Ok(())
    }
}
