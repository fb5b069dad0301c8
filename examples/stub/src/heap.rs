//! The stub's allocator: power-of-two size classes over one static arena.
//!
//! A block of class `k` is `2^k` bytes (16 bytes to 64 KiB), aligned to its
//! size up to 4 KiB. Freed blocks go on their class's free list (the link
//! lives in the block) and are reused first; otherwise blocks are cut from
//! the arena's unused end. Nothing is ever coalesced or returned to the
//! arena: the library's allocations are a region table, a few vectors and a
//! grant table's bookkeeping, which reach a steady state quickly. The stub
//! runs on one vCPU with interrupts off and the allocator never calls
//! itself, so no lock is needed.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// The arena's size.
pub const SIZE: usize = 64 << 10;

/// The smallest class: 16 bytes (a link, and the alignment of `u128`).
const MIN_SHIFT: u32 = 4;
/// The largest class: the whole arena.
const MAX_SHIFT: u32 = SIZE.trailing_zeros();
/// Blocks are aligned to their size up to this.
const MAX_ALIGN: usize = 4096;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;

const _: () = assert!(SIZE.is_power_of_two() && SIZE >= MAX_ALIGN);

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; SIZE]>);

struct State {
    /// Offset of the arena's unused end.
    next: usize,
    /// Per class: the first free block, or null.
    free: [*mut u8; CLASSES],
    /// Bytes in blocks handed out now, and the most there ever were.
    used: usize,
    peak: usize,
}

/// The global allocator.
pub struct Heap {
    arena: Arena,
    state: UnsafeCell<State>,
}

// SAFETY: one vCPU, interrupts off, and no allocator method calls another
// or itself: no two accesses to the state or a block ever overlap.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap {
    arena: Arena(UnsafeCell::new([0; SIZE])),
    state: UnsafeCell::new(State {
        next: 0,
        free: [ptr::null_mut(); CLASSES],
        used: 0,
        peak: 0,
    }),
};

/// The class of `layout`, or `None` if no class holds it.
fn class(layout: Layout) -> Option<usize> {
    if layout.align() > MAX_ALIGN {
        return None;
    }
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = size.checked_next_power_of_two()?.trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

const fn class_size(k: usize) -> usize {
    1 << (k as u32 + MIN_SHIFT)
}

// SAFETY: a block is handed out at most once until it is freed: it comes
// either from its class's free list (and is unlinked) or from the arena's
// unused end (which then moves past it); it is aligned to its class size up
// to MAX_ALIGN, which covers every layout its class takes (`class`).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(k) = class(layout) else {
            return ptr::null_mut();
        };
        // SAFETY: no other reference to the state exists (see `Sync`).
        let s = unsafe { &mut *self.state.get() };
        let size = class_size(k);
        let block = if !s.free[k].is_null() {
            let b = s.free[k];
            // SAFETY: a free block of this class holds the next free
            // block's address in its first (aligned) word.
            s.free[k] = unsafe { b.cast::<*mut u8>().read() };
            b
        } else {
            let at = s.next.next_multiple_of(size.min(MAX_ALIGN));
            if at > SIZE - size {
                return ptr::null_mut();
            }
            s.next = at + size;
            // SAFETY: `at + size <= SIZE`: inside the arena.
            unsafe { self.arena.0.get().cast::<u8>().add(at) }
        };
        s.used += size;
        s.peak = s.peak.max(s.used);
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // The caller's layout is the one the block was allocated with, so
        // it has a class.
        let Some(k) = class(layout) else { return };
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.state.get() };
        // SAFETY: the block is the caller's no more; its first word (it is
        // at least 16 bytes and aligned) now links it into the free list.
        unsafe { block.cast::<*mut u8>().write(s.free[k]) };
        s.free[k] = block;
        s.used -= class_size(k);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Same class: the block already has room.
        let same = Layout::from_size_align(new_size, layout.align())
            .ok()
            .and_then(class)
            .is_some_and(|k| class(layout) == Some(k));
        if same {
            return block;
        }
        // SAFETY: the caller's contract for `realloc` (`new_size` non-zero
        // and valid for the alignment) makes this a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded from the caller.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not
            // overlap (the old one is still allocated).
            unsafe {
                ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        new
    }
}

/// (bytes handed out now, the most ever, the arena's size).
pub fn stats() -> (usize, usize, usize) {
    // SAFETY: read between allocations (see `Sync`).
    let s = unsafe { &*HEAP.state.get() };
    (s.used, s.peak, SIZE)
}
