//! Fallible allocation.
//!
//! The library never lets a heap allocation fail into
//! `handle_alloc_error` (which aborts: `Vec::push` and friends on a full
//! heap end the program). Every allocation reserves first, with
//! `Vec::try_reserve` and the helpers here, and a refusal surfaces as
//! [`OutOfMemory`], wrapped in the operation's own error type
//! (`RegionError::OutOfMemory`, `PagingError::OutOfMemory`, ...). The
//! operations reserve before they change anything, so a refusal leaves
//! everything as it was.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The heap could not provide memory an operation needed. The operation
/// changed nothing (see each operation's documentation for the exceptions:
/// work another party already did, such as Xen's, is kept and accounted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutOfMemory {
    /// What the memory was for.
    pub what: &'static str,
    /// How many more bytes were asked for, at least (a growing buffer may
    /// ask for more at once).
    pub bytes: usize,
}

impl OutOfMemory {
    /// `count` more values of type `T` for `what`.
    pub const fn of<T>(what: &'static str, count: usize) -> Self {
        OutOfMemory {
            what,
            bytes: count.saturating_mul(core::mem::size_of::<T>()),
        }
    }
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory: {} needed {} more bytes",
            self.what, self.bytes
        )
    }
}

impl core::error::Error for OutOfMemory {}

/// Fallible growth of a `Vec` (the crate's own, `Vec::push` aborts).
pub(crate) trait TryVec<T> {
    /// Room for `additional` more values, or [`OutOfMemory`] (nothing
    /// changed).
    fn try_room(&mut self, additional: usize, what: &'static str) -> Result<(), OutOfMemory>;
    /// Append `value`, or [`OutOfMemory`] (nothing changed).
    fn try_push(&mut self, value: T, what: &'static str) -> Result<(), OutOfMemory>;
    /// Append a copy of `values`, or [`OutOfMemory`] (nothing changed).
    fn try_extend_from_slice(
        &mut self,
        values: &[T],
        what: &'static str,
    ) -> Result<(), OutOfMemory>
    where
        T: Clone;
}

impl<T> TryVec<T> for Vec<T> {
    fn try_room(&mut self, additional: usize, what: &'static str) -> Result<(), OutOfMemory> {
        self.try_reserve(additional)
            .map_err(|_| OutOfMemory::of::<T>(what, additional))
    }

    fn try_push(&mut self, value: T, what: &'static str) -> Result<(), OutOfMemory> {
        self.try_room(1, what)?;
        // Cannot reallocate: room for one more was made just above.
        self.push(value);
        Ok(())
    }

    fn try_extend_from_slice(&mut self, values: &[T], what: &'static str) -> Result<(), OutOfMemory>
    where
        T: Clone,
    {
        self.try_room(values.len(), what)?;
        // Cannot reallocate: the room was made just above.
        self.extend_from_slice(values);
        Ok(())
    }
}

/// An empty `Vec` with room for `capacity` values, or [`OutOfMemory`].
pub(crate) fn try_with_capacity<T>(
    capacity: usize,
    what: &'static str,
) -> Result<Vec<T>, OutOfMemory> {
    let mut v = Vec::new();
    v.try_room(capacity, what)?;
    Ok(v)
}

/// The values of `iter` in a `Vec`, or [`OutOfMemory`]. Reserves the
/// iterator's lower size bound at once (exact for ranges, slices and maps
/// of them), then grows as needed.
pub(crate) fn try_collect<T>(
    iter: impl IntoIterator<Item = T>,
    what: &'static str,
) -> Result<Vec<T>, OutOfMemory> {
    let iter = iter.into_iter();
    let mut v = try_with_capacity(iter.size_hint().0, what)?;
    for x in iter {
        v.try_push(x, what)?;
    }
    Ok(v)
}

/// A copy of `text` on the heap, or [`OutOfMemory`].
pub(crate) fn try_string(text: &str, what: &'static str) -> Result<String, OutOfMemory> {
    let mut s = String::new();
    s.try_reserve_exact(text.len())
        .map_err(|_| OutOfMemory::of::<u8>(what, text.len()))?;
    // Within the room made above: no allocation.
    s.push_str(text);
    Ok(s)
}

/// Room for `additional` more values in a `VecDeque`, or [`OutOfMemory`].
pub(crate) fn try_room_deque<T>(
    q: &mut VecDeque<T>,
    additional: usize,
    what: &'static str,
) -> Result<(), OutOfMemory> {
    q.try_reserve(additional)
        .map_err(|_| OutOfMemory::of::<T>(what, additional))
}

/// Up to `N` values held in place, without the heap: for results whose size
/// has a small bound. Derefs to the slice of the values held.
#[derive(Clone, Copy)]
pub struct FixedVec<T: Copy, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy, const N: usize> FixedVec<T, N> {
    /// No values (`fill` stands in the unused places, never seen).
    pub const fn new(fill: T) -> Self {
        FixedVec {
            items: [fill; N],
            len: 0,
        }
    }

    /// Append `value`, or give it back if all `N` places are taken.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = value;
                self.len += 1;
                Ok(())
            }
            None => Err(value),
        }
    }

    /// Take out the value at `index` (the later ones move up), if there is
    /// one.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = *self.get(index)?;
        self.items.copy_within(index + 1..self.len, index);
        self.len -= 1;
        Some(value)
    }

    /// How many values it can hold.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T: Copy, const N: usize> core::ops::Deref for FixedVec<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy, const N: usize> core::ops::DerefMut for FixedVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }
}

impl<T: Copy + fmt::Debug, const N: usize> fmt::Debug for FixedVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + PartialEq, const N: usize> PartialEq for FixedVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Eq, const N: usize> Eq for FixedVec<T, N> {}

impl<T: Copy + PartialEq, const N: usize, const M: usize> PartialEq<[T; M]> for FixedVec<T, N> {
    fn eq(&self, other: &[T; M]) -> bool {
        **self == other[..]
    }
}
