//! The stub's one stack (in `.bss`, set up by the entry code) and how much
//! of it was used: the entry code paints it with `0xa5` before Rust runs.

/// The stack's size in bytes.
pub const SIZE: usize = 32 << 10;

/// The byte the entry code paints the stack with.
const PAINT: u8 = 0xa5;

/// The stack's high-water mark so far, in bytes (a little more than the
/// truth if the deepest frames happened to leave `0xa5` bytes behind).
pub fn used() -> usize {
    let bottom = crate::arch::stack_bottom();
    let mut untouched = 0;
    // SAFETY: the bytes from the bottom up to the first one that is not
    // paint lie in the stack's own `.bss` space below every live frame (the
    // stack grows down from the top); they are only read.
    while untouched < SIZE && unsafe { bottom.add(untouched).read_volatile() } == PAINT {
        untouched += 1;
    }
    SIZE - untouched
}
