//! Byte access through a mapping handle, in the spirit of vm-memory's
//! `Bytes`: bounds-checked, volatile (another domain may change the memory
//! at any time), and a write through a read-only handle is refused before
//! memory is touched. The one way the agent reads and writes what it has
//! mapped into its window: grants ([`GrantMap`]), foreign frames
//! ([`ForeignMap`]) and acquired resources ([`ResourceMap`]).

use core::fmt;
use core::mem::size_of;

use super::{window_ptr, GrantMap};
use crate::acquire::ResourceMap;
use crate::addr::VirtAddr;
use crate::mapping::ForeignMap;

mod sealed {
    pub trait Sealed {}
}

/// Plain integers, read and written whole by [`Bytes::read_obj`] and
/// [`Bytes::write_obj`] (naturally aligned, so a single access: another
/// domain sees all of it or none).
pub trait Plain: Copy + sealed::Sealed {}

macro_rules! plain {
    ($($t:ty)*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {}
    )*};
}
plain!(u8 u16 u32 u64 i8 i16 i32 i64);

/// Why a byte access was refused. Memory was not touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// A write through a read-only mapping.
    ReadOnly,
    /// The range leaves the mapping.
    OutOfBounds {
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The mapping's size.
        size: u64,
    },
    /// An object access not aligned to the object's size.
    Misaligned {
        /// Where it starts.
        offset: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// The handle is no longer mapped in the window: a release that failed
    /// part-way gave it back after unmapping it there.
    NotMapped,
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::ReadOnly => write!(f, "write through a read-only mapping"),
            AccessError::OutOfBounds { offset, len, size } => write!(
                f,
                "{len} bytes at offset {offset:#x} leave a mapping of {size:#x} bytes"
            ),
            AccessError::Misaligned { offset, align } => {
                write!(f, "offset {offset:#x} is not {align}-byte aligned")
            }
            AccessError::NotMapped => {
                write!(
                    f,
                    "the mapping is no longer in the window (release under way)"
                )
            }
        }
    }
}

/// Byte access to memory the agent has mapped.
///
/// # Safety
/// An implementor guarantees that the [`Bytes::mapped_len`] bytes from
/// [`Bytes::mapped_va`] are mapped readable in the agent's address space
/// for as long as the value lives and says so, and writable too when
/// [`Bytes::mapped_writable`] says so; the provided methods access nothing
/// else. A length of 0 means nothing is mapped (every access is refused
/// with [`AccessError::NotMapped`]).
pub unsafe trait Bytes {
    /// Where the mapping starts.
    fn mapped_va(&self) -> VirtAddr;
    /// Its size in bytes (0: not mapped).
    fn mapped_len(&self) -> u64;
    /// Whether it may be written.
    fn mapped_writable(&self) -> bool;

    /// Read `buf.len()` bytes from byte `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let va = span(self, offset, buf.len() as u64)?;
        let mut i = 0usize;
        while i < buf.len() {
            let a = va + i as u64;
            if a % 8 == 0 && buf.len() - i >= 8 {
                // SAFETY: inside the mapping (checked by `span`), readable
                // (the trait's contract), 8-byte aligned (so within a page).
                let w = unsafe { (window_ptr(a) as *const u64).read_volatile() };
                buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                buf[i] = unsafe { window_ptr(a).read_volatile() };
                i += 1;
            }
        }
        Ok(())
    }

    /// Write `buf` at byte `offset`; refused for a read-only mapping.
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), AccessError> {
        if !self.mapped_writable() {
            return Err(AccessError::ReadOnly);
        }
        let va = span(self, offset, buf.len() as u64)?;
        let mut i = 0usize;
        while i < buf.len() {
            let a = va + i as u64;
            if a % 8 == 0 && buf.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&buf[i..i + 8]);
                // SAFETY: inside the mapping (checked by `span`), writable
                // (checked above, and the trait's contract), 8-byte aligned.
                unsafe { (window_ptr(a) as *mut u64).write_volatile(u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                unsafe { window_ptr(a).write_volatile(buf[i]) };
                i += 1;
            }
        }
        Ok(())
    }

    /// Read the integer at byte `offset` (aligned to its size), in one
    /// access.
    fn read_obj<T: Plain>(&self, offset: u64) -> Result<T, AccessError> {
        let va = obj_span::<T>(self, offset)?;
        // SAFETY: inside the mapping, readable, aligned for `T` (checked by
        // `obj_span`); every bit pattern is a valid `T` (a plain integer).
        Ok(unsafe { (window_ptr(va) as *const T).read_volatile() })
    }

    /// Write the integer `v` at byte `offset` (aligned to its size), in one
    /// access; refused for a read-only mapping.
    fn write_obj<T: Plain>(&self, offset: u64, v: T) -> Result<(), AccessError> {
        if !self.mapped_writable() {
            return Err(AccessError::ReadOnly);
        }
        let va = obj_span::<T>(self, offset)?;
        // SAFETY: inside the mapping, writable (checked above), aligned for
        // `T` (checked by `obj_span`).
        unsafe { (window_ptr(va) as *mut T).write_volatile(v) };
        Ok(())
    }
}

/// The address of `len` bytes at `offset`, if they lie inside the mapping.
fn span<B: Bytes + ?Sized>(b: &B, offset: u64, len: u64) -> Result<u64, AccessError> {
    let size = b.mapped_len();
    if size == 0 {
        return Err(AccessError::NotMapped);
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(b.mapped_va().0 + offset),
        _ => Err(AccessError::OutOfBounds { offset, len, size }),
    }
}

fn obj_span<T: Plain>(b: &(impl Bytes + ?Sized), offset: u64) -> Result<u64, AccessError> {
    let len = size_of::<T>() as u64;
    let va = span(b, offset, len)?;
    if va % len != 0 {
        return Err(AccessError::Misaligned { offset, align: len });
    }
    Ok(va)
}

/// [`Bytes`] for mapping handles that know their `window()`, `len()` and
/// `writable()`. Each invocation says why that handle's mapping lives as
/// long as the handle says it does.
macro_rules! handle_bytes {
    ($($ty:ty;)*) => {$(
        // SAFETY: as the invocation's comment says: while `window()` is
        // `Some(va)`, the handle's pages are mapped at `va` for `len()`
        // bytes, readable, writable iff `writable()`; a release unmaps them
        // only after (or as) it makes `window()` `None`, and consumes the
        // handle when it returns it no more.
        unsafe impl Bytes for $ty {
            fn mapped_va(&self) -> VirtAddr {
                self.va()
            }
            fn mapped_len(&self) -> u64 {
                if self.window().is_some() {
                    self.len()
                } else {
                    0
                }
            }
            fn mapped_writable(&self) -> bool {
                self.writable()
            }
        }
    )*};
}

handle_bytes! {
    // Mapped by `map_grants` (writable unless read-only) until
    // `GrantMap::release` unmaps the window.
    GrantMap;
    // Mapped by `crate::mapping::map_foreign` until `ForeignMap::release`
    // unmaps the window.
    ForeignMap;
    // All its frames, mapped by `crate::acquire::acquire` until
    // `ResourceMap::release` unmaps the window.
    ResourceMap;
}
