//! x86_64: taking ballooned frames out of the boot identity map and putting
//! them back.
//!
//! The boot code identity-maps guest RAM with 2 MiB pages (`PD` entries).
//! Frames the agent gives back to Xen must not stay mapped as if they were
//! RAM, so [`PageTable::unmap_identity`] clears their entries and
//! [`PageTable::map_identity`] restores them before they are RAM again:
//!
//! - a 2 MiB block the range covers entirely: its `PD` entry is cleared, or
//!   restored as a 2 MiB page with the boot attributes ([`IdentitySpec`]);
//! - a block the range covers in part: the 2 MiB page is *split* into a page
//!   table of 512 4 KiB entries with the same translation and attributes
//!   (filled, published, then linked in place of the `PD` entry; x86 needs no
//!   break-before-make for a change that keeps every translation), and the
//!   entries of the range are cleared or restored one by one. A block
//!   restored in part from an empty `PD` entry gets a fresh table with only
//!   those entries. Split tables stay (at most one frame per 2 MiB block,
//!   taken from the [`FrameSource`]); they are not merged back.
//!
//! Only frames that are all ballooned ([`BalloonedFrames`]) are accepted, and
//! only addresses below [`IdentitySpec::end`] are touched (above it nothing
//! was ever identity-mapped). Every call is all or nothing: the entries are
//! checked and the (at most two) table frames allocated before anything is
//! written. It ends with a full TLB flush (`CR3` reload through
//! [`Tlb::invalidate_all`]).
//!
//! Only for [`X86_64`]: Arm would need break-before-make for the split (and
//! the agent's own RAM shares a 1 GiB block with guest RAM there).

use super::walk::{index, load, store};
use super::x86_64::X86_64;
use super::{
    level_size, Attrs, Entry, Format, FrameSource, PageTable, PagingError, TableMemory, Tlb,
};
use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SIZE};
use crate::region::FrameRange;

/// A [`FrameSource`] that also knows which frames are ballooned (given back
/// to Xen): the region table on the target.
pub trait BalloonedFrames: FrameSource {
    /// Whether every frame of `range` is ballooned.
    fn all_ballooned(&self, range: FrameRange) -> bool;
}

/// What the boot identity map looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentitySpec {
    /// One past the last identity-mapped address.
    pub end: GuestPhysAddr,
    /// The attributes the boot code gives its pages (restored with them).
    pub attrs: Attrs,
}

/// 2 MiB: one `PD` entry.
const BLOCK: u64 = level_size(1);
/// The most blocks one range covers in part (its first and its last).
const MAX_NEW_TABLES: usize = 2;

/// What one 2 MiB block needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Nothing: already as asked.
    Nothing,
    /// Clear the `PD` entry.
    ClearBlock,
    /// Restore the `PD` entry as a 2 MiB page.
    SetBlock,
    /// Split the 2 MiB page (with its attributes) into a new table, then
    /// change the entries.
    Split(Attrs),
    /// Link a new empty table, then set the entries.
    NewTable,
    /// Change the entries of this existing table.
    Entries(GuestPhysAddr),
}

impl Action {
    fn needs_table(self) -> bool {
        matches!(self, Action::Split(_) | Action::NewTable)
    }
}

impl<M: TableMemory, T: Tlb> PageTable<X86_64, M, T> {
    /// Take the ballooned frames of `range` out of the identity map: their
    /// addresses fault from now on. Split tables come from `frames`.
    ///
    /// Fails with [`PagingError::NotBallooned`] unless `frames` says every
    /// frame is ballooned; on any error nothing has changed.
    pub fn unmap_identity(
        &mut self,
        range: FrameRange,
        spec: IdentitySpec,
        frames: &mut impl BalloonedFrames,
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
        frames: &mut impl BalloonedFrames,
    ) -> Result<(), PagingError> {
        self.change_identity(range, spec, true, frames)
    }

    fn change_identity(
        &mut self,
        range: FrameRange,
        spec: IdentitySpec,
        present: bool,
        frames: &mut impl BalloonedFrames,
    ) -> Result<(), PagingError> {
        if !frames.all_ballooned(range) {
            return Err(PagingError::NotBallooned(range.start_addr()));
        }
        let start = range.start_addr().0;
        let stop = range.end_addr().0.min(spec.end.0);
        if start >= stop {
            return Ok(());
        }
        // Check every block and count the tables needed, changing nothing.
        let mut needed = 0;
        let mut b = start & !(BLOCK - 1);
        while b < stop {
            if self.action(b, start, stop, present)?.needs_table() {
                needed += 1;
            }
            b += BLOCK;
        }
        let mut tables = [GuestPhysAddr(0); MAX_NEW_TABLES];
        for i in 0..needed.min(MAX_NEW_TABLES) {
            match self.new_table(frames) {
                Ok(t) => tables[i] = t,
                Err(e) => {
                    for &t in &tables[..i] {
                        frames.free_frame(t);
                    }
                    return Err(e);
                }
            }
        }
        let mut next_table = tables[..needed.min(MAX_NEW_TABLES)].iter().copied();
        let mut changed = false;
        let mut b = start & !(BLOCK - 1);
        while b < stop {
            let lo = start.max(b);
            let hi = stop.min(b + BLOCK);
            let action = self.action(b, start, stop, present)?;
            let pd = self.pd_of(b)?;
            let slot = &pd[index(b, 1)];
            let pt = match action {
                Action::Nothing => None,
                Action::ClearBlock => {
                    store(slot, 0);
                    None
                }
                Action::SetBlock => {
                    let e = X86_64::block(GuestPhysAddr(b), spec.attrs, 1)
                        .ok_or(PagingError::Unsupported("no 2 MiB pages"))?;
                    store(slot, e);
                    None
                }
                Action::Split(attrs) => {
                    // Counted above: a frame is there.
                    let frame = next_table.next().ok_or(PagingError::OutOfFrames)?;
                    let t = self
                        .memory()
                        .table(frame)
                        .ok_or(PagingError::Unreachable(frame))?;
                    for (i, e) in t.iter().enumerate() {
                        store(
                            e,
                            X86_64::page(GuestPhysAddr(b + i as u64 * PAGE_SIZE), attrs),
                        );
                    }
                    T::publish_table();
                    store(slot, X86_64::table(frame));
                    Some(frame)
                }
                Action::NewTable => {
                    let frame = next_table.next().ok_or(PagingError::OutOfFrames)?;
                    // Zeroed by `new_table`; the entries are set below, the
                    // table is linked after them.
                    Some(frame)
                }
                Action::Entries(t) => Some(t),
            };
            if let Some(frame) = pt {
                let t = self
                    .memory()
                    .table(frame)
                    .ok_or(PagingError::Unreachable(frame))?;
                let mut a = lo;
                while a < hi {
                    let e = if present {
                        X86_64::page(GuestPhysAddr(a), spec.attrs)
                    } else {
                        0
                    };
                    store(&t[index(a, 0)], e);
                    a += PAGE_SIZE;
                }
                if action == Action::NewTable {
                    T::publish_table();
                    store(slot, X86_64::table(frame));
                }
            }
            changed |= action != Action::Nothing;
            b += BLOCK;
        }
        if changed {
            T::invalidate_all();
        }
        Ok(())
    }

    /// The page directory that maps the 2 MiB block at `b`.
    fn pd_of(&self, b: u64) -> Result<&super::Table, PagingError> {
        let va = VirtAddr(b);
        let mut table = self.root();
        for level in [3, 2] {
            let t = self
                .memory()
                .table(table)
                .ok_or(PagingError::Unreachable(table))?;
            table = match X86_64::decode(load(&t[index(b, level)]), level) {
                Entry::Table { next, .. } => next,
                Entry::Leaf { .. } => {
                    return Err(PagingError::HugePage {
                        va,
                        level: level as u8,
                    })
                }
                Entry::Invalid => return Err(PagingError::NotMapped(va)),
                Entry::Unsupported => {
                    return Err(PagingError::BadEntry {
                        va,
                        level: level as u8,
                    })
                }
            };
        }
        self.memory()
            .table(table)
            .ok_or(PagingError::Unreachable(table))
    }

    /// What the block at `b` needs for `[start, stop)` to become `present`
    /// (or not).
    fn action(&self, b: u64, start: u64, stop: u64, present: bool) -> Result<Action, PagingError> {
        let full = start <= b && b + BLOCK <= stop;
        let va = VirtAddr(b);
        let pd = self.pd_of(b)?;
        Ok(match X86_64::decode(load(&pd[index(b, 1)]), 1) {
            Entry::Leaf { pa, attrs } => {
                if pa.0 != b {
                    return Err(PagingError::Unsupported(
                        "a 2 MiB page that is not an identity mapping",
                    ));
                }
                match (present, full) {
                    (true, _) => Action::Nothing,
                    (false, true) => Action::ClearBlock,
                    (false, false) => Action::Split(attrs),
                }
            }
            Entry::Invalid => match (present, full) {
                (false, _) => Action::Nothing,
                (true, true) => Action::SetBlock,
                (true, false) => Action::NewTable,
            },
            Entry::Table { next, .. } => {
                let t = self
                    .memory()
                    .table(next)
                    .ok_or(PagingError::Unreachable(next))?;
                // Every entry in the range must be empty or map its own
                // address: nothing else is the identity map's.
                let mut a = start.max(b);
                while a < stop.min(b + BLOCK) {
                    match X86_64::decode(load(&t[index(a, 0)]), 0) {
                        Entry::Invalid => {}
                        Entry::Leaf { pa, .. } if pa.0 == a => {}
                        _ => {
                            return Err(PagingError::BadEntry {
                                va: VirtAddr(a),
                                level: 0,
                            })
                        }
                    }
                    a += PAGE_SIZE;
                }
                Action::Entries(next)
            }
            Entry::Unsupported => return Err(PagingError::BadEntry { va, level: 1 }),
        })
    }
}
