//! Address and count newtypes.
//!
//! Guest frames, machine frames, guest-physical and virtual addresses, page
//! counts and extent orders are distinct types, so that a frame number is never
//! passed where an address is expected. Nothing crosses a module boundary as a
//! bare `u64`. Their arithmetic is checked (`checked_add`, `checked_sub`,
//! `frames_since`: `None` at the edges of the 64-bit space, never a wrap);
//! there are no operators that could panic or wrap.

use core::fmt;

/// log2 of the page size every Xen guest on x86_64 and arm64 uses.
pub const PAGE_SHIFT: u32 = 12;
/// The page size, in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

macro_rules! newtype {
    ($(#[$m:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value, for the ABI boundary.
            #[inline]
            pub const fn raw(self) -> $inner {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(", $fmt, ")"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, $fmt, self.0)
            }
        }
    };
}

newtype!(
    /// A guest frame number: a guest-physical address shifted right by
    /// [`PAGE_SHIFT`] (Xen's GFN, "gpfn" or "gmfn" for translated guests).
    Gfn(u64), "{:#x}"
);
newtype!(
    /// A machine frame number (Xen's MFN): a host-physical page.
    Mfn(u64), "{:#x}"
);
newtype!(
    /// A guest-physical address (what the guest's own page tables map to).
    GuestPhysAddr(u64), "{:#x}"
);
newtype!(
    /// A virtual address in the agent's own address space.
    VirtAddr(u64), "{:#x}"
);
newtype!(
    /// A number of 4 KiB pages.
    PageCount(u64), "{}"
);
newtype!(
    /// A Xen domain id.
    DomId(u16), "{}"
);

impl DomId {
    /// `DOMID_SELF`: the calling domain, as Xen's interfaces spell it.
    pub const SELF: DomId = DomId(0x7ff0);
    /// `DOMID_XEN`: the hypervisor's own pseudo-domain.
    pub const XEN: DomId = DomId(0x7ff2);
}

impl Gfn {
    /// The guest-physical address of the frame's first byte, or `None` if it
    /// does not fit in 64 bits.
    pub const fn addr(self) -> Option<GuestPhysAddr> {
        if self.0 > (u64::MAX >> PAGE_SHIFT) {
            None
        } else {
            Some(GuestPhysAddr(self.0 << PAGE_SHIFT))
        }
    }
}

impl Gfn {
    /// The frame `n` frames after this one, or `None` past the last frame.
    #[inline]
    pub const fn checked_add(self, n: PageCount) -> Option<Gfn> {
        match self.0.checked_add(n.0) {
            Some(g) => Some(Gfn(g)),
            None => None,
        }
    }

    /// The frame `n` frames before this one, or `None` before frame 0.
    #[inline]
    pub const fn checked_sub(self, n: PageCount) -> Option<Gfn> {
        match self.0.checked_sub(n.0) {
            Some(g) => Some(Gfn(g)),
            None => None,
        }
    }

    /// How many frames `self` lies after `earlier`, or `None` if it lies
    /// before it.
    #[inline]
    pub const fn frames_since(self, earlier: Gfn) -> Option<PageCount> {
        match self.0.checked_sub(earlier.0) {
            Some(n) => Some(PageCount(n)),
            None => None,
        }
    }
}

impl Mfn {
    /// The frame `n` frames after this one, or `None` past the last frame.
    #[inline]
    pub const fn checked_add(self, n: PageCount) -> Option<Mfn> {
        match self.0.checked_add(n.0) {
            Some(m) => Some(Mfn(m)),
            None => None,
        }
    }
}

impl GuestPhysAddr {
    /// The address `bytes` further on, or `None` past the end of the 64-bit
    /// space.
    #[inline]
    pub const fn checked_add(self, bytes: u64) -> Option<GuestPhysAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(GuestPhysAddr(a)),
            None => None,
        }
    }

    /// The address `bytes` before this one, or `None` below 0.
    #[inline]
    pub const fn checked_sub(self, bytes: u64) -> Option<GuestPhysAddr> {
        match self.0.checked_sub(bytes) {
            Some(a) => Some(GuestPhysAddr(a)),
            None => None,
        }
    }

    /// The frame that contains this address.
    pub const fn frame(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// Whether the address is the start of a page.
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl VirtAddr {
    /// The address `bytes` further on, or `None` past the end of the 64-bit
    /// space.
    #[inline]
    pub const fn checked_add(self, bytes: u64) -> Option<VirtAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(VirtAddr(a)),
            None => None,
        }
    }

    /// The address `bytes` before this one, or `None` below 0.
    #[inline]
    pub const fn checked_sub(self, bytes: u64) -> Option<VirtAddr> {
        match self.0.checked_sub(bytes) {
            Some(a) => Some(VirtAddr(a)),
            None => None,
        }
    }
}

impl PageCount {
    /// The sum, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, other: PageCount) -> Option<PageCount> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(PageCount(n)),
            None => None,
        }
    }

    /// The difference, or `None` if `other` is larger.
    #[inline]
    pub const fn checked_sub(self, other: PageCount) -> Option<PageCount> {
        match self.0.checked_sub(other.0) {
            Some(n) => Some(PageCount(n)),
            None => None,
        }
    }

    /// The difference, or zero if `other` is larger.
    #[inline]
    pub const fn saturating_sub(self, other: PageCount) -> PageCount {
        PageCount(self.0.saturating_sub(other.0))
    }

    /// `n` times as many pages, or `None` on overflow.
    #[inline]
    pub const fn checked_mul(self, n: u64) -> Option<PageCount> {
        match self.0.checked_mul(n) {
            Some(p) => Some(PageCount(p)),
            None => None,
        }
    }

    /// The size in bytes, or `None` on overflow.
    pub const fn bytes(self) -> Option<u64> {
        self.0.checked_mul(PAGE_SIZE)
    }

    /// The number of whole pages in `bytes` bytes (rounded down).
    pub const fn from_bytes_floor(bytes: u64) -> PageCount {
        PageCount(bytes >> PAGE_SHIFT)
    }
}

/// The order of an extent: `2^order` contiguous pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Order(u8);

impl Order {
    /// The largest order a 64-bit frame count can express.
    pub const MAX: u8 = 63 - PAGE_SHIFT as u8;

    /// Order 0: one page.
    pub const ZERO: Order = Order(0);

    /// An order known at compile time to be valid (clamped to [`Order::MAX`]).
    pub const fn new_const(order: u8) -> Order {
        if order <= Self::MAX {
            Order(order)
        } else {
            Order(Self::MAX)
        }
    }

    /// An order, or `None` if `2^order` pages would not fit in the address space.
    pub const fn new(order: u8) -> Option<Order> {
        if order <= Self::MAX {
            Some(Order(order))
        } else {
            None
        }
    }

    /// The order as the number Xen's ABI takes.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The number of pages in an extent of this order.
    pub const fn pages(self) -> PageCount {
        PageCount(1 << self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_addresses() {
        assert_eq!(Gfn(0x1234).addr(), Some(GuestPhysAddr(0x1234000)));
        assert_eq!(Gfn(u64::MAX).addr(), None);
        assert_eq!(GuestPhysAddr(0x1234fff).frame(), Gfn(0x1234));
        assert!(GuestPhysAddr(0x2000).is_page_aligned());
        assert!(!GuestPhysAddr(0x2001).is_page_aligned());
    }

    #[test]
    fn orders_and_counts() {
        assert_eq!(Order::new(9).map(Order::pages), Some(PageCount(512)));
        assert_eq!(Order::new(Order::MAX + 1), None);
        assert_eq!(PageCount(3).bytes(), Some(3 * 4096));
        assert_eq!(PageCount(u64::MAX).bytes(), None);
        assert_eq!(PageCount::from_bytes_floor(8191), PageCount(1));
        assert_eq!(format!("{:?}", Gfn(16)), "Gfn(0x10)");
        assert_eq!(format!("{}", DomId(3)), "3");
    }

    #[test]
    fn checked_arithmetic_stops_at_the_edges() {
        let n = PageCount;
        assert_eq!(Gfn(10).checked_add(n(5)), Some(Gfn(15)));
        assert_eq!(Gfn(u64::MAX).checked_add(n(1)), None);
        assert_eq!(Gfn(10).checked_sub(n(10)), Some(Gfn(0)));
        assert_eq!(Gfn(10).checked_sub(n(11)), None);
        assert_eq!(Gfn(15).frames_since(Gfn(10)), Some(n(5)));
        assert_eq!(Gfn(9).frames_since(Gfn(10)), None);
        assert_eq!(Mfn(u64::MAX - 1).checked_add(n(1)), Some(Mfn(u64::MAX)));
        assert_eq!(Mfn(u64::MAX).checked_add(n(1)), None);
        assert_eq!(GuestPhysAddr(u64::MAX).checked_add(1), None);
        assert_eq!(GuestPhysAddr(0x1000).checked_sub(0x1001), None);
        assert_eq!(
            GuestPhysAddr(0x1000).checked_sub(0x1000),
            Some(GuestPhysAddr(0))
        );
        assert_eq!(VirtAddr(u64::MAX - 4095).checked_add(4096), None);
        assert_eq!(VirtAddr(0x2000).checked_sub(0x1000), Some(VirtAddr(0x1000)));
        assert_eq!(n(u64::MAX).checked_add(n(1)), None);
        assert_eq!(n(3).checked_sub(n(4)), None);
        assert_eq!(n(3).saturating_sub(n(4)), n(0));
        assert_eq!(n(u64::MAX / 2 + 1).checked_mul(2), None);
        assert_eq!(n(512).checked_mul(4), Some(n(2048)));
    }
}
