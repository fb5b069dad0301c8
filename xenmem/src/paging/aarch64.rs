//! The aarch64 entry format: VMSAv8-64 stage-1 descriptors of the EL1&0
//! regime (`TTBR0_EL1`), 4 KiB granule, `VA_BITS` = `64 - TCR_EL1.T0SZ`
//! virtual-address bits (39: 3 levels, the walk starts at Arm level 1; 48:
//! 4 levels, from Arm level 0), 48-bit output addresses (no FEAT_LPA).
//!
//! Bit positions from the Arm ARM (DDI 0487), "VMSAv8-64 translation table
//! format descriptors" (table, block and page descriptor layouts) and
//! "Memory attribute fields in the VMSAv8-64 translation table format
//! descriptors" (stage 1):
//!
//! | bits | name | here |
//! |---|---|---|
//! | 0 | valid | every valid entry |
//! | 1 | table/page (1) vs block (0) | 1 for tables (levels 0–2) and pages (level 3); 0 for blocks (levels 1–2) |
//! | 4:2 | AttrIndx | index into `MAIR_EL1`: [`MAIR_DEVICE`], [`MAIR_NORMAL_WB`], [`MAIR_NORMAL_NC`] (the boot map's `MAIR`) |
//! | 5 | NS | 0 |
//! | 6 | AP\[1\] | 0: no EL0 access |
//! | 7 | AP\[2\] | 1 for [`Access::ReadOnly`] |
//! | 9:8 | SH | 0b11 (inner shareable) for Normal memory; 0b00 for Device (ignored there) |
//! | 10 | AF | 1 (no access-flag faults) |
//! | 11 | nG | 0 (global: the agent uses no ASIDs) |
//! | 47:12 | output address | the frame (of the next table, page or block) |
//! | 52 | Contiguous | 0 |
//! | 53 | PXN | 1 unless executable |
//! | 54 | UXN | 1 always (never executable at EL0) |
//! | 59, 60 | PXNTable, UXNTable (table descriptors) | 0 in tables the walker writes; honoured by `translate` |
//! | 62:61 | APTable (table descriptors) | 0; `APTable[1]` (bit 62) honoured by `translate` |
//!
//! Level numbers in this module are the walker's (0 = pages, see
//! [`super`]); Arm's level is `3 - level`.

use super::{level_size, Access, Attrs, Entry, Format, MemoryType, TableLimits, BITS_PER_LEVEL};
use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SHIFT};

/// bit 0: valid.
pub const VALID: u64 = 1 << 0;
/// bit 1: a table (levels above the last) or a page (the last level); clear
/// in a block.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// The shift of AttrIndx\[2:0\].
pub const ATTR_INDEX_SHIFT: u32 = 2;
/// AP\[1\]: EL0 may access.
pub const AP_EL0: u64 = 1 << 6;
/// AP\[2\]: read-only.
pub const AP_READ_ONLY: u64 = 1 << 7;
/// SH\[1:0\] = 0b11: inner shareable.
pub const SH_INNER: u64 = 0b11 << 8;
/// AF: access flag.
pub const ACCESS_FLAG: u64 = 1 << 10;
/// nG: not global.
pub const NOT_GLOBAL: u64 = 1 << 11;
/// Contiguous hint.
pub const CONTIGUOUS: u64 = 1 << 52;
/// PXN: privileged (EL1) execute-never.
pub const PXN: u64 = 1 << 53;
/// UXN: unprivileged (EL0) execute-never.
pub const UXN: u64 = 1 << 54;
/// PXNTable (table descriptors): nothing below executes at EL1.
pub const PXN_TABLE: u64 = 1 << 59;
/// UXNTable (table descriptors): nothing below executes at EL0.
pub const UXN_TABLE: u64 = 1 << 60;
/// APTable\[1\] (table descriptors): nothing below is writable.
pub const AP_TABLE_READ_ONLY: u64 = 1 << 62;
/// The output-address field, bits 12..=47.
pub const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// `MAIR_EL1` index of Device-nGnRnE (as the boot map programs it).
pub const MAIR_DEVICE: u64 = 0;
/// `MAIR_EL1` index of Normal write-back.
pub const MAIR_NORMAL_WB: u64 = 1;
/// `MAIR_EL1` index of Normal non-cacheable.
pub const MAIR_NORMAL_NC: u64 = 2;

/// Stage-1 descriptors for a `TTBR0_EL1` space of `VA_BITS` bits (25..=48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1<const VA_BITS: u32>;

/// The boot map's configuration: 39-bit VA (`T0SZ = 25`), 3 levels.
pub type Stage1Va39 = Stage1<39>;
/// 48-bit VA (`T0SZ = 16`), 4 levels.
pub type Stage1Va48 = Stage1<48>;

fn leaf_bits(attrs: Attrs) -> u64 {
    let (index, shareable) = match attrs.memory {
        MemoryType::Cacheable => (MAIR_NORMAL_WB, SH_INNER),
        MemoryType::NonCacheable => (MAIR_NORMAL_NC, SH_INNER),
        MemoryType::Device => (MAIR_DEVICE, 0),
    };
    let mut e = ACCESS_FLAG | (index << ATTR_INDEX_SHIFT) | shareable | UXN;
    if attrs.access == Access::ReadOnly {
        e |= AP_READ_ONLY;
    }
    if !attrs.executable {
        e |= PXN;
    }
    e
}

fn leaf_attrs(e: u64) -> Attrs {
    Attrs {
        access: if e & AP_READ_ONLY != 0 {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
        // The MAIR bytes the boot map leaves 0 (indices 3..=7) are
        // Device-nGnRnE.
        memory: match (e >> ATTR_INDEX_SHIFT) & 0b111 {
            MAIR_NORMAL_WB => MemoryType::Cacheable,
            MAIR_NORMAL_NC => MemoryType::NonCacheable,
            _ => MemoryType::Device,
        },
        // EL1 never executes what EL0 may write (AP = 0b01).
        executable: e & PXN == 0 && e & (AP_EL0 | AP_READ_ONLY) != AP_EL0,
    }
}

impl<const VA_BITS: u32> Format for Stage1<VA_BITS> {
    const NAME: &'static str = "aarch64 stage 1, 4 KiB granule";
    const VA_BITS: u32 = {
        assert!(VA_BITS >= 25 && VA_BITS <= 48);
        VA_BITS
    };
    const PA_BITS: u32 = 48;
    const LOW_VA_END: u64 = 1 << VA_BITS;

    fn is_canonical(va: VirtAddr) -> bool {
        va.0 >> VA_BITS == 0
    }

    fn table(next: GuestPhysAddr) -> u64 {
        (next.0 & ADDR_MASK) | VALID | TABLE_OR_PAGE
    }

    fn page(pa: GuestPhysAddr, attrs: Attrs) -> u64 {
        (pa.0 & ADDR_MASK) | VALID | TABLE_OR_PAGE | leaf_bits(attrs)
    }

    fn block(pa: GuestPhysAddr, attrs: Attrs, level: usize) -> Option<u64> {
        match level {
            1 | 2 => Some((pa.0 & ADDR_MASK & !(level_size(level) - 1)) | VALID | leaf_bits(attrs)),
            _ => None,
        }
    }

    fn decode(e: u64, level: usize) -> Entry {
        if e & VALID == 0 {
            return Entry::Invalid;
        }
        let table = e & TABLE_OR_PAGE != 0;
        match level {
            0 if table => Entry::Leaf {
                pa: GuestPhysAddr(e & ADDR_MASK),
                attrs: leaf_attrs(e),
            },
            1..=3 if table => Entry::Table {
                next: GuestPhysAddr(e & ADDR_MASK),
                limits: TableLimits {
                    writable: e & AP_TABLE_READ_ONLY == 0,
                    executable: e & PXN_TABLE == 0,
                },
            },
            1 | 2 => Entry::Leaf {
                pa: GuestPhysAddr(e & ADDR_MASK & !(level_size(level) - 1)),
                attrs: leaf_attrs(e),
            },
            // 0b01 at the last level is reserved; a level-0 block needs
            // FEAT_LPA2.
            _ => Entry::Unsupported,
        }
    }
}

const _: () = assert!(<Stage1Va39 as Format>::LEVELS == 3);
const _: () = assert!(<Stage1Va48 as Format>::LEVELS == 4);
const _: () = assert!(<Stage1Va48 as Format>::VA_BITS == PAGE_SHIFT + 4 * BITS_PER_LEVEL);
