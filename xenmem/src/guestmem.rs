//! Byte access by guest-physical address, across regions.
//!
//! In the spirit of rust-vmm's `GuestMemory` + `Bytes`: a [`GuestMemory`] is
//! a view of the agent's guest-physical address space, built from the region
//! table, the way the agent reaches its own RAM, and the mappings it holds
//! (grants, foreign frames, acquired resources). A read or write at a
//! guest-physical address may span regions; each piece goes to the right
//! place — the agent's own RAM, or the window address of the live mapping
//! that covers it. The whole range is checked before any memory is touched:
//! a piece in a hole, in device memory, in ballooned memory, under a mapping
//! with no live handle, or (for writes) in a read-only mapping or in the
//! agent's own image, heap, stacks or page tables, refuses the whole access
//! with a typed error. Accesses are volatile: the other side of a grant or
//! foreign mapping may change the memory at any time.

use core::fmt;

use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SIZE};
use crate::region::{FrameRange, RegionKind, RegionTable, ReservedUse};

/// A live mapping of other memory at guest frames of the agent: what
/// [`crate::grant::GrantMap`], [`crate::mapping::ForeignMap`] and
/// [`crate::acquire::ResourceMap`] are.
///
/// # Safety
///
/// For as long as the value lives and [`va`](Mapped::va) returns
/// `Some(va)`, `va` is the start of `gfns().len()` pages mapped in the
/// program's address space (page tables in use), readable, and writable
/// when [`writable`](Mapped::writable) says so: [`GuestMemory`] reads and
/// writes through that address. A safe implementation could name any
/// address, so implementing it is the promise:
///
/// ```compile_fail
/// use xenmem::{addr::VirtAddr, region::FrameRange};
/// struct Anywhere(FrameRange);
/// impl xenmem::guestmem::Mapped for Anywhere {
///     fn gfns(&self) -> FrameRange { self.0 }
///     fn va(&self) -> Option<VirtAddr> { Some(VirtAddr(0xdead_0000)) }
///     fn writable(&self) -> bool { true }
/// }
/// ```
pub unsafe trait Mapped {
    /// The guest frames it occupies.
    fn gfns(&self) -> FrameRange;
    /// Where those frames are mapped in the agent's address space; `None`
    /// when they are not (a handle whose release stopped after unmapping
    /// it from the window).
    fn va(&self) -> Option<VirtAddr>;
    /// Whether writes are allowed.
    fn writable(&self) -> bool;
}

// SAFETY: a grant map owns its window pages while `window()` says it has
// them mapped.
unsafe impl Mapped for crate::grant::GrantMap {
    fn gfns(&self) -> FrameRange {
        crate::grant::GrantMap::gfns(self)
    }
    fn va(&self) -> Option<VirtAddr> {
        crate::grant::GrantMap::window(self)
    }
    fn writable(&self) -> bool {
        crate::grant::GrantMap::writable(self)
    }
}

// SAFETY: a foreign map owns its window pages while `window()` says it has
// them mapped.
unsafe impl Mapped for crate::mapping::ForeignMap {
    fn gfns(&self) -> FrameRange {
        crate::mapping::ForeignMap::gfns(self)
    }
    fn va(&self) -> Option<VirtAddr> {
        crate::mapping::ForeignMap::window(self)
    }
    fn writable(&self) -> bool {
        crate::mapping::ForeignMap::writable(self)
    }
}

// SAFETY: a resource map owns its window pages while `window()` says it
// has them mapped.
unsafe impl Mapped for crate::acquire::ResourceMap {
    fn gfns(&self) -> FrameRange {
        crate::acquire::ResourceMap::gfns(self)
    }
    fn va(&self) -> Option<VirtAddr> {
        crate::acquire::ResourceMap::window(self)
    }
    fn writable(&self) -> bool {
        crate::acquire::ResourceMap::writable(self)
    }
}

/// How the agent reaches its own RAM.
///
/// # Safety
/// Where [`OwnRam::va`] returns `Some`, the byte at `gpa` must be mapped
/// readable and writable at that address for as long as the value lives.
pub unsafe trait OwnRam {
    /// The address the agent reads `gpa` at, if it can.
    fn va(&self, gpa: GuestPhysAddr) -> Option<VirtAddr>;
}

/// The boot identity map: virtual == guest-physical below `end`.
#[derive(Clone, Copy, Debug)]
pub struct IdentityRam {
    end: u64,
}

impl IdentityRam {
    /// RAM identity-mapped below `end`.
    ///
    /// # Safety
    /// Every populated RAM page below `end` must be mapped read-write at its
    /// own address while the value lives (the boot page tables do that for
    /// `arch::IDENTITY_MAP_END`).
    pub const unsafe fn new(end: GuestPhysAddr) -> Self {
        IdentityRam { end: end.0 }
    }
}

// SAFETY: `new`'s contract.
unsafe impl OwnRam for IdentityRam {
    fn va(&self, gpa: GuestPhysAddr) -> Option<VirtAddr> {
        // Never address 0 (the null pointer).
        (gpa.0 != 0 && gpa.0 < self.end).then_some(VirtAddr(gpa.0))
    }
}

/// Why an access was refused. Memory was not touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemError {
    /// The range runs past the end of the address space.
    Overflow,
    /// No region holds this address.
    NoRegion(GuestPhysAddr),
    /// The region is not memory the agent may access (hole, device,
    /// ballooned, firmware).
    NotAccessible {
        /// Where.
        gpa: GuestPhysAddr,
        /// What the region is.
        kind: RegionKind,
    },
    /// A grant or foreign region with no live mapping handle here, or
    /// with one no longer mapped in the window (a release under way).
    NotMapped(GuestPhysAddr),
    /// A write to a read-only mapping, or to the agent's own image, heap,
    /// stacks, page tables or boot data.
    ReadOnly(GuestPhysAddr),
    /// The agent cannot reach this RAM (beyond its identity map).
    Unreachable(GuestPhysAddr),
}

impl fmt::Display for GuestMemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMemError::Overflow => write!(f, "the range runs past the address space"),
            GuestMemError::NoRegion(a) => write!(f, "no region holds {a}"),
            GuestMemError::NotAccessible { gpa, kind } => {
                write!(f, "{gpa} is in a {} region", kind.name())
            }
            GuestMemError::NotMapped(a) => write!(f, "{a} is in a mapping with no live handle"),
            GuestMemError::ReadOnly(a) => write!(f, "{a} may not be written"),
            GuestMemError::Unreachable(a) => write!(f, "{a} is beyond what the agent maps"),
        }
    }
}

/// The agent's guest-physical address space, for byte access.
pub struct GuestMemory<'a> {
    table: &'a RegionTable,
    ram: &'a dyn OwnRam,
    maps: &'a [&'a dyn Mapped],
}

/// One piece of an access: where it goes and how long it is.
#[derive(Clone, Copy)]
struct Piece {
    va: u64,
    len: usize,
}

impl<'a> GuestMemory<'a> {
    /// A view from the table, the way to own RAM, and the live mappings.
    pub fn new(table: &'a RegionTable, ram: &'a dyn OwnRam, maps: &'a [&'a dyn Mapped]) -> Self {
        GuestMemory { table, ram, maps }
    }

    /// Where the byte at `gpa` is, and how many bytes from it stay in the
    /// same page.
    fn locate(&self, gpa: u64, write: bool) -> Result<Piece, GuestMemError> {
        let addr = GuestPhysAddr(gpa);
        let r = self.table.info(addr).ok_or(GuestMemError::NoRegion(addr))?;
        let in_page = (PAGE_SIZE - gpa % PAGE_SIZE) as usize;
        match r.kind {
            RegionKind::Grant | RegionKind::Foreign => {
                let m = self
                    .maps
                    .iter()
                    .find(|m| m.gfns().contains(addr.frame()))
                    .ok_or(GuestMemError::NotMapped(addr))?;
                if write && !m.writable() {
                    return Err(GuestMemError::ReadOnly(addr));
                }
                let va = m.va().ok_or(GuestMemError::NotMapped(addr))?;
                let off = gpa - m.gfns().start_addr().0;
                Ok(Piece {
                    va: va.0 + off,
                    len: in_page,
                })
            }
            k if k.is_populated_ram() => {
                let own = matches!(
                    k,
                    RegionKind::Reserved(
                        ReservedUse::Image
                            | ReservedUse::Heap
                            | ReservedUse::Stack
                            | ReservedUse::PageTables
                            | ReservedUse::Boot
                    )
                );
                if write && own {
                    return Err(GuestMemError::ReadOnly(addr));
                }
                let va = self.ram.va(addr).ok_or(GuestMemError::Unreachable(addr))?;
                Ok(Piece {
                    va: va.0,
                    len: in_page,
                })
            }
            kind => Err(GuestMemError::NotAccessible { gpa: addr, kind }),
        }
    }

    /// Check the whole range `[gpa, gpa + len)`, then call `each` on its
    /// pieces in order with their offset into the caller's buffer.
    fn pieces(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
        write: bool,
        mut each: impl FnMut(usize, Piece),
    ) -> Result<(), GuestMemError> {
        let end = gpa
            .0
            .checked_add(len as u64)
            .ok_or(GuestMemError::Overflow)?;
        // Check first, so that a refused access touches nothing.
        let mut at = gpa.0;
        while at < end {
            let p = self.locate(at, write)?;
            at += p.len as u64;
        }
        let mut at = gpa.0;
        while at < end {
            let mut p = self.locate(at, write)?;
            p.len = p.len.min((end - at) as usize);
            each((at - gpa.0) as usize, p);
            at += p.len as u64;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes from `gpa`.
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), GuestMemError> {
        let len = buf.len();
        self.pieces(gpa, len, false, |off, p| {
            for i in 0..p.len {
                // SAFETY: `locate` found the piece in a live mapping or in
                // RAM that `OwnRam` reaches; it stays within one page.
                buf[off + i] = unsafe { ((p.va + i as u64) as usize as *const u8).read_volatile() };
            }
        })
    }

    /// Write `data` at `gpa`.
    pub fn write(&self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), GuestMemError> {
        self.pieces(gpa, data.len(), true, |off, p| {
            for i in 0..p.len {
                // SAFETY: as in `read`, and `locate` checked the piece is
                // writable (not a read-only mapping, not the agent's own).
                unsafe { ((p.va + i as u64) as usize as *mut u8).write_volatile(data[off + i]) };
            }
        })
    }

    /// Read a little-endian `u64` at `gpa`.
    pub fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, GuestMemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian `u64` at `gpa`.
    pub fn write_u64(&self, gpa: GuestPhysAddr, v: u64) -> Result<(), GuestMemError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gfn, PageCount};
    use crate::region::{Region, RegionFlags};
    use std::cell::UnsafeCell;

    /// Host memory standing in for guest frames `base..base + pages`.
    struct Buf {
        base: u64,
        mem: Box<[UnsafeCell<u8>]>,
    }

    impl Buf {
        fn new(base: u64, pages: usize) -> Buf {
            Buf {
                base,
                mem: (0..pages * PAGE_SIZE as usize)
                    .map(|_| UnsafeCell::new(0))
                    .collect(),
            }
        }
        fn addr(&self, gpa: u64) -> Option<VirtAddr> {
            let off = gpa.checked_sub(self.base * PAGE_SIZE)?;
            ((off as usize) < self.mem.len())
                .then(|| VirtAddr(self.mem[off as usize].get() as usize as u64))
        }
        fn byte(&self, gpa: u64) -> u8 {
            // SAFETY: test memory, no other access meanwhile.
            unsafe { *self.mem[(gpa - self.base * PAGE_SIZE) as usize].get() }
        }
    }

    // SAFETY: the buffer lives as long as the value and is read-write.
    unsafe impl OwnRam for Buf {
        fn va(&self, gpa: GuestPhysAddr) -> Option<VirtAddr> {
            self.addr(gpa.0)
        }
    }

    struct FakeMap {
        gfns: FrameRange,
        buf: Buf,
        writable: bool,
        /// Still mapped (a handle whose release stopped after the window
        /// unmap says no).
        mapped: bool,
    }

    // SAFETY: the fake's pages are host memory it owns for its whole life.
    unsafe impl Mapped for FakeMap {
        fn gfns(&self) -> FrameRange {
            self.gfns
        }
        fn va(&self) -> Option<VirtAddr> {
            self.buf
                .addr(self.buf.base * PAGE_SIZE)
                .filter(|_| self.mapped)
        }
        fn writable(&self) -> bool {
            self.writable
        }
    }

    fn fr(s: u64, n: u64) -> FrameRange {
        FrameRange::new(Gfn(s), PageCount(n)).unwrap()
    }

    /// RAM at frames 0x10..0x14 (0x10 the image), a grant at 0x14..0x16, a
    /// read-only foreign frame at 0x16, a hole after.
    fn setup() -> (RegionTable, Buf, FakeMap, FakeMap) {
        let mut t = RegionTable::new();
        t.add(Region::new(
            fr(0x10, 1),
            RegionKind::Reserved(ReservedUse::Image),
            RegionFlags::PINNED,
        ))
        .unwrap();
        t.add(Region::new(
            fr(0x11, 3),
            RegionKind::Ram,
            RegionFlags::READ | RegionFlags::WRITE,
        ))
        .unwrap();
        t.add(Region::new(
            fr(0x14, 2),
            RegionKind::Grant,
            RegionFlags::READ | RegionFlags::WRITE,
        ))
        .unwrap();
        t.add(Region::new(
            fr(0x16, 1),
            RegionKind::Foreign,
            RegionFlags::READ,
        ))
        .unwrap();
        t.add(Region::new(
            fr(0x17, 9),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        let ram = Buf::new(0x10, 4);
        let grant = FakeMap {
            gfns: fr(0x14, 2),
            buf: Buf::new(0x14, 2),
            writable: true,
            mapped: true,
        };
        let foreign = FakeMap {
            gfns: fr(0x16, 1),
            buf: Buf::new(0x16, 1),
            writable: false,
            mapped: true,
        };
        (t, ram, grant, foreign)
    }

    #[test]
    fn an_access_spans_ram_and_mappings() {
        let (t, ram, grant, foreign) = setup();
        let maps: [&dyn Mapped; 2] = [&grant, &foreign];
        let gm = GuestMemory::new(&t, &ram, &maps);
        // 8 KiB from the last RAM page across both grant frames' start.
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let at = 0x13800u64;
        gm.write(GuestPhysAddr(at), &data).unwrap();
        assert_eq!(ram.byte(0x13800), data[0]);
        assert_eq!(grant.buf.byte(0x14000), data[0x800]);
        assert_eq!(grant.buf.byte(0x15000 + 0x7ff), data[0x17ff]);
        let mut back = vec![0u8; data.len()];
        gm.read(GuestPhysAddr(at), &mut back).unwrap();
        assert_eq!(back, data);
        gm.write_u64(GuestPhysAddr(0x15ffc), 0x1122_3344_5566_7788)
            .unwrap_err();
        assert_eq!(gm.read_u64(GuestPhysAddr(0x11008)).unwrap(), 0);
    }

    #[test]
    fn refused_accesses_touch_nothing() {
        let (t, ram, grant, foreign) = setup();
        let maps: [&dyn Mapped; 2] = [&grant, &foreign];
        let gm = GuestMemory::new(&t, &ram, &maps);
        // A write that ends in the read-only foreign frame: nothing written.
        let r = gm.write(GuestPhysAddr(0x15ff0), &[0xaa; 32]);
        assert_eq!(r, Err(GuestMemError::ReadOnly(GuestPhysAddr(0x16000))));
        assert_eq!(grant.buf.byte(0x15ff0), 0, "checked before touching");
        // Reading it is fine; writing the agent's image is not.
        let mut b = [0u8; 16];
        gm.read(GuestPhysAddr(0x16000), &mut b).unwrap();
        assert_eq!(
            gm.write(GuestPhysAddr(0x10000), &[1]),
            Err(GuestMemError::ReadOnly(GuestPhysAddr(0x10000)))
        );
        gm.read(GuestPhysAddr(0x10000), &mut b).unwrap();
        // A hole, nothing at all, a mapping with no handle, overflow.
        assert!(matches!(
            gm.read(GuestPhysAddr(0x16ff8), &mut b),
            Err(GuestMemError::NotAccessible {
                kind: RegionKind::Hole,
                ..
            })
        ));
        assert_eq!(
            gm.read(GuestPhysAddr(0x100000), &mut b),
            Err(GuestMemError::NoRegion(GuestPhysAddr(0x100000)))
        );
        let only_grant: [&dyn Mapped; 1] = [&grant];
        let gm2 = GuestMemory::new(&t, &ram, &only_grant);
        assert_eq!(
            gm2.read(GuestPhysAddr(0x16000), &mut b),
            Err(GuestMemError::NotMapped(GuestPhysAddr(0x16000)))
        );
        assert_eq!(
            gm.read(GuestPhysAddr(u64::MAX - 3), &mut b),
            Err(GuestMemError::Overflow)
        );
    }

    #[test]
    fn a_handle_no_longer_in_the_window_is_not_reached() {
        let (t, ram, mut grant, foreign) = setup();
        grant.mapped = false;
        let maps: [&dyn Mapped; 2] = [&grant, &foreign];
        let gm = GuestMemory::new(&t, &ram, &maps);
        let mut b = [0u8; 8];
        // Its frames are refused whole, even where the access starts in RAM.
        assert_eq!(
            gm.read(GuestPhysAddr(0x13ffc), &mut b),
            Err(GuestMemError::NotMapped(GuestPhysAddr(0x14000)))
        );
        assert_eq!(
            gm.write(GuestPhysAddr(0x14008), &[1]),
            Err(GuestMemError::NotMapped(GuestPhysAddr(0x14008)))
        );
        gm.read(GuestPhysAddr(0x16000), &mut b).unwrap();
    }
}
