//! The TLB flush a map or unmap leaves to its caller.

use core::marker::PhantomData;

use super::Tlb;
use crate::addr::{VirtAddr, PAGE_SIZE};

/// Above this many pages, [`Flush::flush`] invalidates the whole TLB instead
/// of page by page.
pub const FLUSH_ALL_THRESHOLD: u64 = 32;

/// TLB invalidation still owed for `pages` pages from `start` after they were
/// mapped or unmapped (the analogue of `x86_64::structures::paging::MapperFlush`).
///
/// Dropping it unused is a warning: call [`flush`](Flush::flush), or
/// [`ignore`](Flush::ignore) when the caller invalidates otherwise. A new
/// mapping needs its flush too: on aarch64 it carries the `dsb`/`isb` that
/// make the entry visible to the table walker (x86 would do without).
#[must_use = "the TLB may still hold the old translation: call .flush(), or .ignore() on purpose"]
#[derive(Debug)]
pub struct Flush<T: Tlb> {
    start: VirtAddr,
    pages: u64,
    tlb: PhantomData<fn() -> T>,
}

/// What [`PageTable::map_4k`](super::PageTable::map_4k) returns.
pub type MapFlush<T> = Flush<T>;
/// What [`PageTable::unmap_4k`](super::PageTable::unmap_4k) returns.
pub type UnmapFlush<T> = Flush<T>;

impl<T: Tlb> Flush<T> {
    pub(super) fn new(start: VirtAddr, pages: u64) -> Self {
        Flush {
            start,
            pages,
            tlb: PhantomData,
        }
    }

    /// The first page.
    pub fn start(&self) -> VirtAddr {
        self.start
    }

    /// How many pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Invalidate the pages' translations (after the barrier that makes the
    /// table writes visible to the walker).
    pub fn flush(self) {
        if self.pages > FLUSH_ALL_THRESHOLD {
            T::invalidate_all();
            return;
        }
        for i in 0..self.pages {
            T::invalidate_page(VirtAddr(self.start.0.wrapping_add(i * PAGE_SIZE)));
        }
    }

    /// Do nothing: the caller takes care of the TLB itself.
    pub fn ignore(self) {}
}
