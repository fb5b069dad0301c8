//! The memory map Xen gives the guest, as a list of typed ranges.
//!
//! Sources: on x86 the e820 from `XENMEM_memory_map` or the PVH start-info
//! table; on Arm the device tree's `/memory` nodes, `/reserved-memory` and the
//! `/hypervisor` node (free guest-physical space for grant and foreign
//! mappings). The map keeps entries as the firmware gave them, checked for
//! overflow and emptiness; building the region table from it (sorting,
//! resolving overlaps, rounding to pages) is the region table's job.

use core::fmt;

use crate::addr::{GuestPhysAddr, PageCount, PAGE_SIZE};
use crate::fdt::{read_cells, Event, Fdt, FdtError};
use crate::xen::abi::{E820Entry, HvmMemmapEntry};

/// The most ranges a [`MemoryMap`] holds.
pub const MAX_RANGES: usize = 128;

/// What a range of guest-physical memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemKind {
    /// Usable RAM (e820 type 1, device-tree `/memory`).
    Ram,
    /// Reserved (e820 type 2 or unknown types, device-tree `/reserved-memory`).
    Reserved,
    /// ACPI tables, reclaimable (e820 type 3).
    Acpi,
    /// ACPI non-volatile storage (e820 type 4).
    Nvs,
    /// Unusable (e820 type 5).
    Unusable,
    /// Xen's `/hypervisor` region: guest-physical space Xen leaves free for
    /// grant-table, shared-info and foreign mappings (Arm).
    Hypervisor,
}

impl MemKind {
    /// The kind of an e820 type (unknown types are reserved, as the e820
    /// specification says).
    pub const fn from_e820(kind: u32) -> MemKind {
        match kind {
            1 => MemKind::Ram,
            3 => MemKind::Acpi,
            4 => MemKind::Nvs,
            5 => MemKind::Unusable,
            _ => MemKind::Reserved,
        }
    }

    /// A lower-case name, as the agent's report prints it.
    pub const fn name(self) -> &'static str {
        match self {
            MemKind::Ram => "ram",
            MemKind::Reserved => "reserved",
            MemKind::Acpi => "acpi",
            MemKind::Nvs => "nvs",
            MemKind::Unusable => "unusable",
            MemKind::Hypervisor => "hypervisor",
        }
    }
}

/// One range `[start, end)` of a memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub start: GuestPhysAddr,
    /// One past the last byte.
    pub end: GuestPhysAddr,
    /// What it is.
    pub kind: MemKind,
}

impl MemRange {
    /// Whole pages inside the range (partial pages at either end excluded).
    pub fn whole_pages(&self) -> PageCount {
        let start = self.start.0.div_ceil(PAGE_SIZE);
        let end = self.end.0 / PAGE_SIZE;
        PageCount(end.saturating_sub(start))
    }
}

/// Where a memory map came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MapSource {
    /// `XENMEM_memory_map`.
    XenE820,
    /// The PVH `hvm_start_info` memory map (version 1 and later).
    StartInfo,
    /// The device tree.
    DeviceTree,
}

impl MapSource {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            MapSource::XenE820 => "e820",
            MapSource::StartInfo => "start_info",
            MapSource::DeviceTree => "fdt",
        }
    }
}

/// Why a memory map could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemMapError {
    /// An entry's end overflows 64 bits.
    Overflow {
        /// Index of the entry in the firmware's list.
        index: usize,
    },
    /// More entries than [`MAX_RANGES`].
    TooMany,
    /// The device tree is malformed.
    DeviceTree(FdtError),
}

impl fmt::Display for MemMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemMapError::Overflow { index } => {
                write!(
                    f,
                    "memory-map entry {index} runs past the end of the address space"
                )
            }
            MemMapError::TooMany => write!(f, "more than {MAX_RANGES} memory-map entries"),
            MemMapError::DeviceTree(why) => write!(f, "device tree: {why}"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for MemMapError {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            MemMapError::Overflow { index } => defmt::write!(
                f,
                "memory-map entry {=usize} runs past the end of the address space",
                index
            ),
            MemMapError::TooMany => {
                defmt::write!(f, "more than {=usize} memory-map entries", MAX_RANGES)
            }
            MemMapError::DeviceTree(why) => defmt::write!(f, "device tree: {=str}", why.as_str()),
        }
    }
}

/// A memory map: up to [`MAX_RANGES`] ranges, in the firmware's order.
#[derive(Clone, Debug)]
pub struct MemoryMap {
    ranges: [MemRange; MAX_RANGES],
    len: usize,
    /// Where it came from.
    pub source: MapSource,
}

impl MemoryMap {
    /// An empty map from `source`.
    pub const fn new(source: MapSource) -> Self {
        Self {
            ranges: [MemRange {
                start: GuestPhysAddr(0),
                end: GuestPhysAddr(0),
                kind: MemKind::Reserved,
            }; MAX_RANGES],
            len: 0,
            source,
        }
    }

    /// Add `[base, base + size)`. Empty ranges are dropped (firmware emits
    /// them; they describe nothing).
    pub fn push(
        &mut self,
        index: usize,
        base: u64,
        size: u64,
        kind: MemKind,
    ) -> Result<(), MemMapError> {
        if size == 0 {
            return Ok(());
        }
        let end = base
            .checked_add(size)
            .ok_or(MemMapError::Overflow { index })?;
        let slot = self.ranges.get_mut(self.len).ok_or(MemMapError::TooMany)?;
        *slot = MemRange {
            start: GuestPhysAddr(base),
            end: GuestPhysAddr(end),
            kind,
        };
        self.len += 1;
        Ok(())
    }

    /// The ranges.
    pub fn ranges(&self) -> &[MemRange] {
        &self.ranges[..self.len]
    }

    /// Whole pages of RAM, over all RAM ranges (assumes RAM ranges do not
    /// overlap, which holds for Xen's maps; the region table resolves it in
    /// general).
    pub fn ram_pages(&self) -> PageCount {
        PageCount(
            self.ranges()
                .iter()
                .filter(|r| r.kind == MemKind::Ram)
                .map(|r| r.whole_pages().0)
                .sum(),
        )
    }

    /// From `XENMEM_memory_map`'s e820.
    pub fn from_e820(entries: &[E820Entry]) -> Result<Self, MemMapError> {
        let mut map = Self::new(MapSource::XenE820);
        for (i, e) in entries.iter().enumerate() {
            let (addr, size, kind) = (e.addr, e.size, e.kind);
            map.push(i, addr, size, MemKind::from_e820(kind))?;
        }
        Ok(map)
    }

    /// From the PVH start-info memory map.
    pub fn from_start_info(entries: &[HvmMemmapEntry]) -> Result<Self, MemMapError> {
        let mut map = Self::new(MapSource::StartInfo);
        for (i, e) in entries.iter().enumerate() {
            map.push(i, e.addr, e.size, MemKind::from_e820(e.kind))?;
        }
        Ok(map)
    }

    /// From a flattened device tree: `/memory*` nodes (RAM),
    /// `/reserved-memory` children (reserved) and every `/hypervisor` `reg`
    /// entry (the first is the region every Xen leaves for grant-table and
    /// shared-info mappings; Xen 4.17 adds "extended regions", also free
    /// guest-physical space, for foreign and grant mappings). `reg`
    /// values are read with the parent's `#address-cells`/`#size-cells`.
    pub fn from_fdt(blob: &[u8]) -> Result<Self, MemMapError> {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Top {
            Memory,
            Hypervisor,
            ReservedMemory,
            Other,
        }
        let tree = Fdt::new(blob).map_err(MemMapError::DeviceTree)?;
        let mut map = Self::new(MapSource::DeviceTree);
        let mut cells = [(2u32, 1u32); crate::fdt::MAX_DEPTH];
        let mut top = Top::Other;
        let mut index = 0usize;
        let mut push_err = None;
        let walked = tree.walk(|depth, ev| {
            match ev {
                Event::Begin(name) => {
                    cells[depth] = (2, 1);
                    if depth == 1 {
                        top = match name.split('@').next().unwrap_or("") {
                            "memory" => Top::Memory,
                            "hypervisor" => Top::Hypervisor,
                            "reserved-memory" => Top::ReservedMemory,
                            _ => Top::Other,
                        };
                    }
                }
                Event::Prop(name, value) => match name {
                    "#address-cells" => {
                        cells[depth].0 = read_cells(value, 1).unwrap_or(u64::MAX) as u32
                    }
                    "#size-cells" => {
                        cells[depth].1 = read_cells(value, 1).unwrap_or(u64::MAX) as u32
                    }
                    "reg" => {
                        let kind = match (depth, top) {
                            (1, Top::Memory) => MemKind::Ram,
                            (1, Top::Hypervisor) => MemKind::Hypervisor,
                            (2, Top::ReservedMemory) => MemKind::Reserved,
                            _ => return Ok(()),
                        };
                        let (ac, sc) = cells[depth - 1];
                        if !(1..=2).contains(&ac) || sc > 2 {
                            return Err(FdtError::BadProperty(
                                "unsupported #address-cells or #size-cells",
                            ));
                        }
                        let stride = ((ac + sc) * 4) as usize;
                        if value.is_empty() || value.len() % stride != 0 {
                            return Err(FdtError::BadProperty(
                                "reg is not a whole number of entries",
                            ));
                        }
                        for entry in value.chunks(stride) {
                            let base = read_cells(entry, ac).unwrap_or(0);
                            let size = if sc == 0 {
                                0
                            } else {
                                read_cells(&entry[ac as usize * 4..], sc).unwrap_or(0)
                            };
                            if let Err(e) = map.push(index, base, size, kind) {
                                push_err = Some(e);
                                return Err(FdtError::BadProperty("memory map"));
                            }
                            index += 1;
                        }
                    }
                    _ => {}
                },
                Event::End => {}
            }
            Ok(())
        });
        if let Some(e) = push_err {
            return Err(e);
        }
        walked.map_err(MemMapError::DeviceTree)?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn e820_kinds_and_pages() {
        let map = MemoryMap::from_e820(&[
            e(0, 0x9f000, 1),
            e(0x9f000, 0x1000, 2),
            e(0xf0000, 0x10000, 2),
            e(0x100000, 0x0fe0_0000, 1),
            e(0xfc00_0000, 0x1000, 3),
            e(0xfc00_1000, 0x1000, 4),
            e(0xfd00_0000, 0, 1),
            e(0xfe00_0000, 0x1000, 99),
        ])
        .unwrap();
        assert_eq!(map.ranges().len(), 7, "the empty entry is dropped");
        assert_eq!(map.ram_pages(), PageCount(0x9f + 0xfe00));
        assert_eq!(
            map.ranges()[6].kind,
            MemKind::Reserved,
            "unknown types are reserved"
        );
        assert_eq!(map.ranges()[4].kind.name(), "acpi");
    }

    #[test]
    fn overflow_and_too_many() {
        assert_eq!(
            MemoryMap::from_e820(&[e(0, 1, 1), e(u64::MAX, 2, 1)]).unwrap_err(),
            MemMapError::Overflow { index: 1 }
        );
        let many = vec![e(0, 0x1000, 1); MAX_RANGES + 1];
        assert_eq!(
            MemoryMap::from_e820(&many).unwrap_err(),
            MemMapError::TooMany
        );
    }

    #[test]
    fn partial_pages_are_not_ram_pages() {
        let r = MemRange {
            start: GuestPhysAddr(0x800),
            end: GuestPhysAddr(0x3800),
            kind: MemKind::Ram,
        };
        assert_eq!(r.whole_pages(), PageCount(2));
    }

    #[test]
    fn fdt_errors_are_typed() {
        assert_eq!(
            MemoryMap::from_fdt(&[0u8; 64]).unwrap_err(),
            MemMapError::DeviceTree(FdtError::BadMagic)
        );
        assert!(matches!(
            MemoryMap::from_fdt(&[0xd0, 0x0d]),
            Err(MemMapError::DeviceTree(_))
        ));
    }
}

/// The e820 Xen 4.17 gave a PVH dom0 (`tests/data/xen-4.17-x86-pvh-dom0.e820`:
/// packed 20-byte little-endian entries).
#[cfg(test)]
pub(crate) fn real_x86_pvh_dom0_e820() -> Vec<E820Entry> {
    include_bytes!("../tests/data/xen-4.17-x86-pvh-dom0.e820")
        .chunks_exact(20)
        .map(|c| E820Entry {
            addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
            size: u64::from_le_bytes(c[8..16].try_into().unwrap()),
            kind: u32::from_le_bytes(c[16..20].try_into().unwrap()),
        })
        .collect()
}

#[cfg(test)]
mod real_xen_tests {
    //! Inputs that Xen 4.17 gave the agent under QEMU (saved by the boot
    //! tests' set-up; see tests/data/README.md).
    use super::*;

    fn spans(map: &MemoryMap) -> Vec<(u64, u64, MemKind)> {
        map.ranges()
            .iter()
            .map(|r| (r.start.0, r.end.0, r.kind))
            .collect()
    }

    #[test]
    fn arm64_dom0_tree() {
        let map =
            MemoryMap::from_fdt(include_bytes!("../tests/data/xen-4.17-arm64-dom0.dtb")).unwrap();
        assert_eq!(
            spans(&map),
            [
                (0x4020_0000, 0x4024_0000, MemKind::Hypervisor),
                (0x4040_0000, 0x7c00_0000, MemKind::Hypervisor),
                (0x7c00_0000, 0x7e00_0000, MemKind::Ram),
            ]
        );
        assert_eq!(map.ram_pages(), PageCount(8192), "dom0_mem=32M");
    }

    #[test]
    fn arm64_domu_tree() {
        let map =
            MemoryMap::from_fdt(include_bytes!("../tests/data/xen-4.17-arm64-domu.dtb")).unwrap();
        assert_eq!(
            spans(&map),
            [
                (0x4000_0000, 0x4800_0000, MemKind::Ram),
                (0x3800_0000, 0x3900_0000, MemKind::Hypervisor),
                (0x4800_0000, 0x1_0000_0000, MemKind::Hypervisor),
                (0x2_0000_0000, 0x100_0000_0000, MemKind::Hypervisor),
            ]
        );
        assert_eq!(map.ram_pages(), PageCount(32768), "memory = 131072 KiB");
    }

    #[test]
    fn x86_pvh_dom0_e820() {
        let map = MemoryMap::from_e820(&real_x86_pvh_dom0_e820()).unwrap();
        assert_eq!(map.ranges().len(), 9);
        // 159 + 65376 whole pages; the page at 0x10060000 is shared with ACPI.
        assert_eq!(map.ram_pages(), PageCount(65535));
    }

    #[test]
    fn every_truncation_of_the_real_trees_is_an_error() {
        for blob in [
            &include_bytes!("../tests/data/xen-4.17-arm64-dom0.dtb")[..],
            &include_bytes!("../tests/data/xen-4.17-arm64-domu.dtb")[..],
        ] {
            for len in (0..blob.len()).step_by(7) {
                assert!(MemoryMap::from_fdt(&blob[..len]).is_err(), "len {len}");
            }
        }
    }
}

#[cfg(test)]
mod fdt_tests {
    use super::*;
    use crate::fdt::Fdt;

    const DOMU: &[u8] = include_bytes!("../tests/data/domu-like.dtb");

    #[test]
    fn domu_tree() {
        let map = MemoryMap::from_fdt(DOMU).unwrap();
        let got: Vec<_> = map
            .ranges()
            .iter()
            .map(|r| (r.start.0, r.end.0, r.kind))
            .collect();
        assert_eq!(
            got,
            [
                (0x4000_0000, 0x4800_0000, MemKind::Ram),
                (0x5000_0000, 0x5020_0000, MemKind::Reserved),
                (0x3800_0000, 0x3900_0000, MemKind::Hypervisor),
            ]
        );
        assert_eq!(map.ram_pages(), PageCount(32768));
    }

    #[test]
    fn corrupted_trees_are_errors_not_panics() {
        let mut seed = 1u64;
        let mut errors = 0;
        for _ in 0..20_000 {
            let mut b = DOMU.to_vec();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % b.len();
                b[i] = (seed >> 17) as u8;
            }
            errors += usize::from(MemoryMap::from_fdt(&b).is_err());
            let _ = Fdt::new(&b).and_then(|t| t.property("/chosen", "bootargs"));
        }
        assert!(errors > 1000, "mutations should mostly be caught: {errors}");
    }

    #[test]
    fn chosen_bootargs() {
        let t = Fdt::new(DOMU).unwrap();
        assert_eq!(
            t.property("/chosen", "bootargs").unwrap(),
            Some(&b"domid=1\0"[..])
        );
        assert_eq!(t.property("/chosen", "nope").unwrap(), None);
        assert_eq!(
            t.property("/memory", "device_type").unwrap(),
            Some(&b"memory\0"[..])
        );
        assert_eq!(
            t.property("/reserved-memory/shm", "reg")
                .unwrap()
                .map(<[u8]>::len),
            Some(16)
        );
        assert_eq!(t.property("/hypervisor/x", "reg").unwrap(), None);
    }

    #[test]
    fn truncated_tree_is_an_error_not_a_panic() {
        for len in [0, 8, 40, DOMU.len() / 2, DOMU.len() - 1] {
            assert!(MemoryMap::from_fdt(&DOMU[..len]).is_err(), "len {len}");
        }
    }
}
