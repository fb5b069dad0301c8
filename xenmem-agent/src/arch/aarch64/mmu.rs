//! The boot identity map (stage 1, EL1, `TTBR0_EL1`, 4 KiB granule).
//!
//! A stop-gap until a proper page-table module replaces it: two static
//! tables, complete at link time except for `L1[0]` (the pointer to the
//! level-2 table, which depends on the load address and is written by the
//! entry code in `boot/aarch64.S` just before it turns the MMU on).
//!
//! The virtual address space is 39 bits (`T0SZ = 25`), so the walk starts at
//! level 1 and covers `0 .. 512 GiB`, virtual address = guest-physical
//! address:
//!
//! | range | mapped as | why |
//! |---|---|---|
//! | `0 .. 0x3800_0000` | Device-nGnRnE, 2 MiB blocks, execute-never | dom0: the host's MMIO (GIC, PL011, PCIe...); domU: Xen's virtual GIC, PL011 |
//! | `0x3800_0000 .. 0x3a00_0000` | Normal write-back, 2 MiB blocks | domU: Xen's grant-table region (`GUEST_GNTTAB_BASE`, 16 MiB, the `/hypervisor` region) and magic pages (`GUEST_MAGIC_BASE`, 16 MiB) |
//! | `0x3a00_0000 .. 1 GiB` | Device-nGnRnE, 2 MiB blocks, execute-never | as the first row |
//! | `1 GiB .. 512 GiB` | Normal write-back, 1 GiB blocks | RAM: QEMU virt's RAM and a domU's RAM0 bank start at 1 GiB, a domU's RAM1 bank at 8 GiB; dom0's `/hypervisor` region (`0x4020_0000`) |
//!
//! Once the region table is built the agent trims this map to the guest's
//! memory (`xenmem::paging::trim_identity`), so the table above describes the
//! boot map only; [`is_normal`] answers for it (the device-tree check at
//! entry), not for the trimmed map.
//!
//! Normal memory is inner-shareable, write-back read/write-allocate; all of
//! it is writable and executable at EL1 (no W^X yet), never at EL0. The
//! stage-2 attributes Xen applies combine with these (the stronger wins), so
//! a Normal mapping of something Xen maps as a device stays a device access.

use core::cell::UnsafeCell;

/// Index into `MAIR_EL1` of Device-nGnRnE.
pub const ATTR_DEVICE_NGNRNE: u64 = 0;
/// Index into `MAIR_EL1` of Normal, inner and outer write-back
/// read/write-allocate non-transient.
pub const ATTR_NORMAL_WB: u64 = 1;
/// Index into `MAIR_EL1` of Normal non-cacheable (unused by the boot map;
/// there for later users, e.g. shared rings with a non-coherent peer).
pub const ATTR_NORMAL_NC: u64 = 2;

/// `MAIR_EL1`: attribute 0 Device-nGnRnE (0x00), 1 Normal WB RWA (0xff),
/// 2 Normal non-cacheable (0x44).
pub const MAIR: u64 = mair_attr(ATTR_DEVICE_NGNRNE, 0x00)
    | mair_attr(ATTR_NORMAL_WB, 0xff)
    | mair_attr(ATTR_NORMAL_NC, 0x44);

const fn mair_attr(index: u64, attr: u64) -> u64 {
    attr << (8 * index)
}

/// The size of the virtual address space, in bits.
pub const VA_BITS: u32 = 39;

/// `TCR_EL1` without `IPS` (the entry code ORs in
/// `ID_AA64MMFR0_EL1.PARange`, at most 48 bits): `T0SZ` for [`VA_BITS`],
/// table walks inner/outer write-back write-allocate and inner-shareable,
/// 4 KiB granule for TTBR0; TTBR1 walks disabled (`EPD1`, with a valid
/// `TG1` of 4 KiB).
pub const TCR: u64 =
    TCR_T0SZ | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA | TCR_SH0_INNER | TCR_TG0_4K | TCR_EPD1 | TCR_TG1_4K;

const TCR_T0SZ: u64 = 64 - VA_BITS as u64;
const TCR_IRGN0_WBWA: u64 = 0b01 << 8;
const TCR_ORGN0_WBWA: u64 = 0b01 << 10;
const TCR_SH0_INNER: u64 = 0b11 << 12;
const TCR_TG0_4K: u64 = 0b00 << 14;
const TCR_EPD1: u64 = 1 << 23;
const TCR_TG1_4K: u64 = 0b10 << 30;

/// The end of the identity map: every address below it is mapped.
pub const MAP_END: u64 = 1 << VA_BITS;

const _: () = assert!(MAP_END == super::IDENTITY_MAP_END.raw());
const _: () = assert!(super::UNMAPPED_PROBE.raw() >= MAP_END);

/// The Normal-memory ranges inside the first GiB, as `[start, end)` pairs
/// (2 MiB aligned). Everything else in the first GiB is Device-nGnRnE.
pub const LOW_NORMAL: [(u64, u64); 1] = [(0x3800_0000, 0x3a00_0000)];

const L1_BLOCK: u64 = 1 << 30;
const L2_BLOCK: u64 = 1 << 21;

const DESC_BLOCK: u64 = 0b01;
const DESC_AF: u64 = 1 << 10;
const DESC_SH_INNER: u64 = 0b11 << 8;
const DESC_PXN: u64 = 1 << 53;
const DESC_UXN: u64 = 1 << 54;

const fn attr(index: u64) -> u64 {
    index << 2
}

const NORMAL_BLOCK: u64 = DESC_BLOCK | DESC_AF | DESC_SH_INNER | attr(ATTR_NORMAL_WB) | DESC_UXN;
const DEVICE_BLOCK: u64 = DESC_BLOCK | DESC_AF | attr(ATTR_DEVICE_NGNRNE) | DESC_PXN | DESC_UXN;

/// One 4 KiB translation table, written by the entry code (`L1[0]`) before
/// the MMU is on and read by the table walker.
#[repr(C, align(4096))]
pub struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: no Rust reference to the array is ever made: the entry code writes
// them (one store, before anything else runs), the MMU reads them, and after
// boot `arch::aarch64::paging` writes `BOOT_L1` entries through `AtomicU64`
// views at its physical address.
unsafe impl Sync for Table {}

/// Whether `addr` (in the first GiB) is in one of the [`LOW_NORMAL`] ranges.
const fn low_is_normal(addr: u64) -> bool {
    let mut i = 0;
    while i < LOW_NORMAL.len() {
        if addr >= LOW_NORMAL[i].0 && addr < LOW_NORMAL[i].1 {
            return true;
        }
        i += 1;
    }
    false
}

const fn level1() -> [u64; 512] {
    // Entry 0 stays invalid until the entry code points it at the L2 table.
    let mut t = [0u64; 512];
    let mut i = 1;
    while i < 512 {
        t[i] = (i as u64 * L1_BLOCK) | NORMAL_BLOCK;
        i += 1;
    }
    t
}

const fn level2() -> [u64; 512] {
    let mut t = [0u64; 512];
    let mut i = 0;
    while i < 512 {
        let addr = i as u64 * L2_BLOCK;
        t[i] = addr
            | if low_is_normal(addr) {
                NORMAL_BLOCK
            } else {
                DEVICE_BLOCK
            };
        i += 1;
    }
    t
}

/// The level-1 table (`TTBR0_EL1`): 1 GiB blocks, entry 0 -> [`BOOT_L2`].
pub static BOOT_L1: Table = Table(UnsafeCell::new(level1()));
/// The level-2 table of the first GiB: 2 MiB blocks.
pub static BOOT_L2: Table = Table(UnsafeCell::new(level2()));

/// Whether all of `[start, start + len)` is mapped as Normal write-back
/// memory (so that unaligned and exclusive accesses work there).
pub fn is_normal(start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    if end > MAP_END {
        return false;
    }
    let mut a = start & !(L2_BLOCK - 1);
    while a < end.min(L1_BLOCK) {
        if !low_is_normal(a) {
            return false;
        }
        a += L2_BLOCK;
    }
    true
}

// The format and the boot map agree on the MAIR indices and the VA size.
const _: () = {
    use xenmem::paging::aarch64 as format;
    assert!(format::MAIR_DEVICE == ATTR_DEVICE_NGNRNE);
    assert!(format::MAIR_NORMAL_WB == ATTR_NORMAL_WB);
    assert!(format::MAIR_NORMAL_NC == ATTR_NORMAL_NC);
    assert!(<xenmem::paging::aarch64::Stage1Va39 as xenmem::paging::Format>::VA_BITS == VA_BITS);
};
