//! The x86_64 entry format: 4-level paging (IA-32e, `CR4.PAE`,
//! `EFER.LME`, `CR4.LA57` clear), 4 KiB pages, 2 MiB and 1 GiB pages.
//!
//! Bit positions from the Intel SDM, Vol. 3A, §4.5 "4-Level Paging and
//! 5-Level Paging", the tables "Format of a PML4 Entry", "Format of a
//! Page-Directory-Pointer-Table Entry (PDPTE) that Maps a 1-GByte Page",
//! "... that References a Page Directory", "Format of a Page-Directory Entry
//! that Maps a 2-MByte Page", "... that References a Page Table" and "Format
//! of a Page-Table Entry that Maps a 4-KByte Page" (same in the AMD APM
//! Vol. 2, §5.3 "Long-Mode Page Translation"):
//!
//! | bit | name | here |
//! |---|---|---|
//! | 0 | P, present | every valid entry |
//! | 1 | R/W | set in table entries; in leaves for [`Access::ReadWrite`] (enforced for the kernel with `CR0.WP`) |
//! | 2 | U/S | never set: supervisor only |
//! | 3 | PWT | [`MemoryType::Device`] |
//! | 4 | PCD | [`MemoryType::NonCacheable`] (UC-) and [`MemoryType::Device`] (with PWT: UC) |
//! | 5, 6 | A, D | left to the CPU |
//! | 7 | PS (PDPTE, PDE) / PAT (PTE) | PS marks 1 GiB and 2 MiB leaves; PAT never set (the default PAT makes PCD/PWT mean what the table above says) |
//! | 8 | G | never set |
//! | 12 | PAT of 1 GiB / 2 MiB leaves | never set; masked out of their address |
//! | 12..=51 | address | the frame (of the next table or the page) |
//! | 63 | XD / NX | set in leaves unless executable (needs `EFER.NXE`) |

use super::{level_size, Access, Attrs, Entry, Format, MemoryType, TableLimits, BITS_PER_LEVEL};
use crate::addr::{GuestPhysAddr, VirtAddr, PAGE_SHIFT};

/// P: present.
pub const PRESENT: u64 = 1 << 0;
/// R/W: writable.
pub const WRITABLE: u64 = 1 << 1;
/// U/S: user-accessible.
pub const USER: u64 = 1 << 2;
/// PWT: page-level write-through.
pub const WRITE_THROUGH: u64 = 1 << 3;
/// PCD: page-level cache disable.
pub const CACHE_DISABLE: u64 = 1 << 4;
/// A: accessed (set by the CPU).
pub const ACCESSED: u64 = 1 << 5;
/// D: dirty (set by the CPU, leaves only).
pub const DIRTY: u64 = 1 << 6;
/// PS: page size, a 1 GiB (PDPTE) or 2 MiB (PDE) leaf.
pub const HUGE: u64 = 1 << 7;
/// G: global.
pub const GLOBAL: u64 = 1 << 8;
/// XD/NX: execute disable.
pub const NO_EXECUTE: u64 = 1 << 63;
/// The address field, bits 12..=51.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The x86_64 4-level format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86_64;

fn leaf_bits(attrs: Attrs) -> u64 {
    let mut e = PRESENT;
    if attrs.access == Access::ReadWrite {
        e |= WRITABLE;
    }
    e |= match attrs.memory {
        MemoryType::Cacheable => 0,
        MemoryType::NonCacheable => CACHE_DISABLE,
        MemoryType::Device => CACHE_DISABLE | WRITE_THROUGH,
    };
    if !attrs.executable {
        e |= NO_EXECUTE;
    }
    e
}

fn leaf_attrs(e: u64) -> Attrs {
    Attrs {
        access: if e & WRITABLE != 0 {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        },
        // With the default PAT: PCD|PWT is UC, PCD alone UC-, PWT alone
        // write-through (cacheable).
        memory: match (e & CACHE_DISABLE != 0, e & WRITE_THROUGH != 0) {
            (true, true) => MemoryType::Device,
            (true, false) => MemoryType::NonCacheable,
            (false, _) => MemoryType::Cacheable,
        },
        executable: e & NO_EXECUTE == 0,
    }
}

impl Format for X86_64 {
    const NAME: &'static str = "x86_64 4-level";
    const VA_BITS: u32 = 48;
    const PA_BITS: u32 = 52;
    const LOW_VA_END: u64 = 1 << 47;

    fn is_canonical(va: VirtAddr) -> bool {
        // Bits 63..=47 all equal.
        (((va.0 as i64) << 16) >> 16) as u64 == va.0
    }

    fn table(next: GuestPhysAddr) -> u64 {
        (next.0 & ADDR_MASK) | PRESENT | WRITABLE
    }

    fn page(pa: GuestPhysAddr, attrs: Attrs) -> u64 {
        (pa.0 & ADDR_MASK) | leaf_bits(attrs)
    }

    fn block(pa: GuestPhysAddr, attrs: Attrs, level: usize) -> Option<u64> {
        match level {
            1 | 2 => Some((pa.0 & ADDR_MASK & !(level_size(level) - 1)) | HUGE | leaf_bits(attrs)),
            _ => None,
        }
    }

    fn decode(e: u64, level: usize) -> Entry {
        if e & PRESENT == 0 {
            return Entry::Invalid;
        }
        let table = Entry::Table {
            next: GuestPhysAddr(e & ADDR_MASK),
            limits: TableLimits {
                writable: e & WRITABLE != 0,
                executable: e & NO_EXECUTE == 0,
            },
        };
        match level {
            0 => Entry::Leaf {
                pa: GuestPhysAddr(e & ADDR_MASK),
                attrs: leaf_attrs(e),
            },
            1 | 2 if e & HUGE != 0 => Entry::Leaf {
                pa: GuestPhysAddr(e & ADDR_MASK & !(level_size(level) - 1)),
                attrs: leaf_attrs(e),
            },
            1 | 2 => table,
            3 if e & HUGE == 0 => table,
            // PS is reserved in a PML4 entry; there is no level 4.
            _ => Entry::Unsupported,
        }
    }
}

const _: () = assert!(X86_64::VA_BITS == PAGE_SHIFT + 4 * BITS_PER_LEVEL);
const _: () = assert!(<X86_64 as Format>::LEVELS == 4);
