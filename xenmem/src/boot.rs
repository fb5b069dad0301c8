//! What the boot glue hands to the portable code.

use crate::addr::GuestPhysAddr;

/// A half-open guest-physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PhysSpan {
    /// First byte.
    pub start: GuestPhysAddr,
    /// One past the last byte.
    pub end: GuestPhysAddr,
}

/// Where the firmware description of the guest came from.
#[derive(Clone, Copy, Debug)]
pub enum Firmware<'a> {
    /// x86 PVH: Xen's `hvm_start_info` (already checked for its magic), and
    /// its memory map when the structure's version (1 and later) has one
    /// (empty otherwise: then the agent asks `XENMEM_memory_map`).
    Pvh {
        /// The start info.
        start_info: &'a crate::xen::abi::HvmStartInfo,
        /// Its memory map (version 1 and later; may be empty).
        memmap: &'a [crate::xen::abi::HvmMemmapEntry],
    },
    /// Arm: the flattened device tree Xen passed in `x0` (header checked,
    /// slice as long as the header's `totalsize`).
    DeviceTree(&'a [u8]),
}

/// Everything the architecture's boot glue found, for the portable agent.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    /// The raw command line (PVH `cmdline_paddr`, or the device tree's
    /// `/chosen/bootargs`); empty if there was none. Not yet validated as UTF-8.
    pub cmdline: &'a [u8],
    /// The firmware description.
    pub firmware: Firmware<'a>,
    /// The agent's own image in guest-physical memory: text, data, bss, the
    /// boot stack and the boot page tables.
    pub image: PhysSpan,
}
