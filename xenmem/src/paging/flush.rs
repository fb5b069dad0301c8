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
/// make the entry visible to the table walker (x86 would do without); it
/// invalidates nothing there ([`Tlb::publish_mapping`]).
#[must_use = "the TLB may still hold the old translation: call .flush(), or .ignore() on purpose"]
#[derive(Debug)]
pub struct Flush<T: Tlb> {
    start: VirtAddr,
    pages: u64,
    /// The pages were mapped where nothing was mapped: publishing the new
    /// entries is enough ([`Tlb::publish_mapping`]).
    fresh: bool,
    tlb: PhantomData<fn() -> T>,
}

/// What [`PageTable::map_4k`](super::PageTable::map_4k) returns.
pub type MapFlush<T> = Flush<T>;
/// What [`PageTable::unmap_4k`](super::PageTable::unmap_4k) returns.
pub type UnmapFlush<T> = Flush<T>;

impl<T: Tlb> Flush<T> {
    /// Invalidation owed after entries changed or were cleared.
    pub(super) fn new(start: VirtAddr, pages: u64) -> Self {
        Flush {
            start,
            pages,
            fresh: false,
            tlb: PhantomData,
        }
    }

    /// What is owed after `pages` pages from `start` were mapped into
    /// invalid entries only: their publication, no invalidation.
    pub(super) fn fresh(start: VirtAddr, pages: u64) -> Self {
        Flush {
            fresh: true,
            ..Self::new(start, pages)
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
    /// table writes visible to the walker); after a map into invalid
    /// entries, publish them ([`Tlb::publish_mapping`]).
    pub fn flush(self) {
        if self.fresh {
            if self.pages > 0 {
                T::publish_mapping(self.start, self.pages);
            }
            return;
        }
        invalidate::<T>(self.start, self.pages);
    }

    /// Do nothing: the caller takes care of the TLB itself.
    pub fn ignore(self) {}
}

/// Invalidate `pages` pages from `start`: page by page, or all of the TLB
/// above [`FLUSH_ALL_THRESHOLD`] pages.
pub(super) fn invalidate<T: Tlb + ?Sized>(start: VirtAddr, pages: u64) {
    if pages > FLUSH_ALL_THRESHOLD {
        T::invalidate_all();
        return;
    }
    for i in 0..pages {
        T::invalidate_page(VirtAddr(start.0.wrapping_add(i * PAGE_SIZE)));
    }
}
