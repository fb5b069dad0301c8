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
    /// The device tree is malformed (the text says how).
    DeviceTree(&'static str),
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
            MemMapError::DeviceTree(why) => defmt::write!(f, "device tree: {=str}", why),
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
    /// `/reserved-memory` children (reserved) and `/hypervisor`'s first `reg`
    /// entry (the region Xen leaves for grant and foreign mappings).
    pub fn from_fdt(blob: &[u8]) -> Result<Self, MemMapError> {
        let fdt = fdt::Fdt::new(blob).map_err(|e| MemMapError::DeviceTree(fdt_error(e)))?;
        let mut map = Self::new(MapSource::DeviceTree);
        let mut index = 0;
        let root = fdt
            .find_node("/")
            .ok_or(MemMapError::DeviceTree("no root node"))?;
        for node in root.children() {
            let name = node.name.split('@').next().unwrap_or("");
            let kind = match name {
                "memory" => MemKind::Ram,
                "hypervisor" => MemKind::Hypervisor,
                "reserved-memory" => {
                    for child in node.children() {
                        for r in child.reg().into_iter().flatten() {
                            let size = r.size.unwrap_or(0) as u64;
                            map.push(
                                index,
                                r.starting_address as usize as u64,
                                size,
                                MemKind::Reserved,
                            )?;
                            index += 1;
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let mut regs = node.reg().ok_or(MemMapError::DeviceTree(
                "memory or hypervisor node without reg",
            ))?;
            if kind == MemKind::Hypervisor {
                // Only the first entry is the free region; later ones are
                // extended regions on newer Xen, also free, but we report the
                // one every Xen provides.
                if let Some(r) = regs.next() {
                    map.push(
                        index,
                        r.starting_address as usize as u64,
                        r.size.unwrap_or(0) as u64,
                        kind,
                    )?;
                    index += 1;
                }
                continue;
            }
            for r in regs {
                map.push(
                    index,
                    r.starting_address as usize as u64,
                    r.size.unwrap_or(0) as u64,
                    kind,
                )?;
                index += 1;
            }
        }
        Ok(map)
    }
}

fn fdt_error(e: fdt::FdtError) -> &'static str {
    match e {
        fdt::FdtError::BadMagic => "bad magic",
        fdt::FdtError::BadPtr => "bad pointer",
        fdt::FdtError::BufferTooSmall => "truncated (buffer smaller than the header's totalsize)",
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
            MemMapError::DeviceTree("bad magic")
        );
        assert!(matches!(
            MemoryMap::from_fdt(&[0xd0, 0x0d]),
            Err(MemMapError::DeviceTree(_))
        ));
    }
}
