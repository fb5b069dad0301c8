//! `#[repr(C)]` structures and constants from Xen 4.17's public headers.
//!
//! Every structure carries compile-time checks of its size and field offsets.
//! They are checked for whichever target is being built, so building for the
//! host, `x86_64-unknown-none` and `aarch64-unknown-none` checks the layout on
//! both architectures. A guest handle is 64 bits on both (a pointer on
//! x86_64, `union { T *p; uint64_aligned_t q; }` on Arm), which
//! [`GuestHandle`] models.

use core::marker::PhantomData;
use core::mem::{offset_of, size_of};

/// Hypercall numbers (`__HYPERVISOR_*`, `public/xen.h`).
pub mod op {
    /// `__HYPERVISOR_memory_op`.
    pub const MEMORY_OP: usize = 12;
    /// `__HYPERVISOR_xen_version`.
    pub const XEN_VERSION: usize = 17;
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: usize = 18;
    /// `__HYPERVISOR_grant_table_op`.
    pub const GRANT_TABLE_OP: usize = 20;
    /// `__HYPERVISOR_sched_op`.
    pub const SCHED_OP: usize = 29;
    /// `__HYPERVISOR_domctl`.
    pub const DOMCTL: usize = 36;
}

/// `XENVER_*` sub-commands (`public/version.h`).
pub mod xenver {
    /// `XENVER_version`: returns `major << 16 | minor`.
    pub const VERSION: usize = 0;
    /// `XENVER_extraversion`: fills a 16-byte string.
    pub const EXTRAVERSION: usize = 1;
    /// `XENVER_get_features`: fills a [`super::XenFeatureInfo`].
    pub const GET_FEATURES: usize = 6;
}

/// `XENMEM_*` sub-commands (`public/memory.h`).
pub mod xenmem {
    /// `XENMEM_increase_reservation`.
    pub const INCREASE_RESERVATION: usize = 0;
    /// `XENMEM_decrease_reservation`.
    pub const DECREASE_RESERVATION: usize = 1;
    /// `XENMEM_current_reservation` (arg: `domid_t *`).
    pub const CURRENT_RESERVATION: usize = 3;
    /// `XENMEM_maximum_reservation` (arg: `domid_t *`).
    pub const MAXIMUM_RESERVATION: usize = 4;
    /// `XENMEM_populate_physmap`.
    pub const POPULATE_PHYSMAP: usize = 6;
    /// `XENMEM_memory_map` (arg: [`super::XenMemoryMap`]).
    pub const MEMORY_MAP: usize = 9;
    /// `XENMEM_maximum_gpfn` (arg: `domid_t *`).
    pub const MAXIMUM_GPFN: usize = 14;
}

/// `struct xen_memory_reservation`: the argument of
/// `XENMEM_{increase,decrease}_reservation` and `XENMEM_populate_physmap`.
#[repr(C)]
#[derive(Debug)]
pub struct XenMemoryReservation {
    /// IN: GFN bases (decrease, populate); OUT: MFN bases (increase) or GMFN
    /// bases (populate).
    pub extent_start: GuestHandle<u64>,
    /// Number of extents.
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*` flags (address bits in the low byte).
    pub mem_flags: u32,
    /// The domain (`DOMID_SELF` for unprivileged callers).
    pub domid: u16,
}

const _: () = {
    assert!(size_of::<XenMemoryReservation>() == 32);
    assert!(offset_of!(XenMemoryReservation, nr_extents) == 8);
    assert!(offset_of!(XenMemoryReservation, extent_order) == 16);
    assert!(offset_of!(XenMemoryReservation, mem_flags) == 20);
    assert!(offset_of!(XenMemoryReservation, domid) == 24);
};

/// `struct xen_memory_exchange` (`XENMEM_exchange`, 11).
#[repr(C)]
#[derive(Debug)]
pub struct XenMemoryExchange {
    /// The extents given up (GMFN bases).
    pub input: XenMemoryReservation,
    /// The extents wanted: IN GPFN bases to populate, OUT GMFN bases.
    pub output: XenMemoryReservation,
    /// OUT: input extents exchanged. Must be zero on entry.
    pub nr_exchanged: u64,
}

const _: () = {
    assert!(size_of::<XenMemoryExchange>() == 72);
    assert!(offset_of!(XenMemoryExchange, output) == 32);
    assert!(offset_of!(XenMemoryExchange, nr_exchanged) == 64);
};

/// `XENMEM_exchange`.
pub const XENMEM_EXCHANGE: usize = 11;

/// Physmap operations for mappings (`public/memory.h`).
pub mod physmap {
    /// `XENMEM_maximum_ram_page`: the highest MFN of RAM (no argument).
    pub const MAXIMUM_RAM_PAGE: usize = 2;
    /// `XENMEM_machphys_mfn_list`: the MFNs of the machine-to-phys table.
    pub const MACHPHYS_MFN_LIST: usize = 5;
    /// `XENMEM_add_to_physmap`.
    pub const ADD_TO_PHYSMAP: usize = 7;
    /// `XENMEM_remove_from_physmap`.
    pub const REMOVE_FROM_PHYSMAP: usize = 15;
    /// `XENMEM_add_to_physmap_batch`.
    pub const ADD_TO_PHYSMAP_BATCH: usize = 23;
    /// `XENMEM_acquire_resource`.
    pub const ACQUIRE_RESOURCE: usize = 28;
    /// `XENMAPSPACE_shared_info`.
    pub const SPACE_SHARED_INFO: u16 = 0;
    /// `XENMAPSPACE_grant_table`.
    pub const SPACE_GRANT_TABLE: u16 = 1;
    /// `XENMAPSPACE_gmfn_foreign` (`add_to_physmap_batch` only).
    pub const SPACE_GMFN_FOREIGN: u16 = 4;
    /// `XENMEM_resource_grant_table`.
    pub const RESOURCE_GRANT_TABLE: u16 = 1;
    /// `XENMEM_resource_grant_table_id_shared`.
    pub const RESOURCE_GRANT_TABLE_ID_SHARED: u32 = 0;
}

/// `struct xen_machphys_mfn_list`.
#[repr(C)]
#[derive(Debug)]
pub struct XenMachphysMfnList {
    /// IN: capacity of `extent_start`.
    pub max_extents: u32,
    /// OUT: MFNs of the 2 MiB chunks of the M2P table.
    pub extent_start: GuestHandle<u64>,
    /// OUT: how many were written.
    pub nr_extents: u32,
}

const _: () = {
    assert!(size_of::<XenMachphysMfnList>() == 24);
    assert!(offset_of!(XenMachphysMfnList, extent_start) == 8);
    assert!(offset_of!(XenMachphysMfnList, nr_extents) == 16);
};

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Debug)]
pub struct XenAddToPhysmap {
    /// The domain whose physmap changes.
    pub domid: u16,
    /// Pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space (grant-table frame, ...).
    pub idx: u64,
    /// Where to map it.
    pub gpfn: u64,
}

const _: () = {
    assert!(size_of::<XenAddToPhysmap>() == 24);
    assert!(offset_of!(XenAddToPhysmap, space) == 4);
    assert!(offset_of!(XenAddToPhysmap, idx) == 8);
    assert!(offset_of!(XenAddToPhysmap, gpfn) == 16);
};

/// `struct xen_add_to_physmap_batch` (Xen 4.7 and later layout).
#[repr(C)]
#[derive(Debug)]
pub struct XenAddToPhysmapBatch {
    /// The domain whose physmap changes.
    pub domid: u16,
    /// `XENMAPSPACE_*`.
    pub space: u16,
    /// Entries in the three lists.
    pub size: u16,
    /// `foreign_domid` for `XENMAPSPACE_gmfn_foreign`, else 0.
    pub foreign_domid: u16,
    /// Indexes (frames of the foreign domain).
    pub idxs: GuestHandle<u64>,
    /// Where to map each.
    pub gpfns: GuestHandle<u64>,
    /// OUT: per-entry error (0 or `-errno`).
    pub errs: GuestHandle<i32>,
}

const _: () = {
    assert!(size_of::<XenAddToPhysmapBatch>() == 32);
    assert!(offset_of!(XenAddToPhysmapBatch, foreign_domid) == 6);
    assert!(offset_of!(XenAddToPhysmapBatch, idxs) == 8);
    assert!(offset_of!(XenAddToPhysmapBatch, gpfns) == 16);
    assert!(offset_of!(XenAddToPhysmapBatch, errs) == 24);
};

/// `struct xen_remove_from_physmap`.
#[repr(C)]
#[derive(Debug)]
pub struct XenRemoveFromPhysmap {
    /// The domain whose physmap changes.
    pub domid: u16,
    /// The frame to unmap.
    pub gpfn: u64,
}

const _: () = {
    assert!(size_of::<XenRemoveFromPhysmap>() == 16);
    assert!(offset_of!(XenRemoveFromPhysmap, gpfn) == 8);
};

/// `struct xen_mem_acquire_resource`.
#[repr(C)]
#[derive(Debug)]
pub struct XenMemAcquireResource {
    /// The domain owning the resource.
    pub domid: u16,
    /// `XENMEM_resource_*`.
    pub kind: u16,
    /// Which resource of that type.
    pub id: u32,
    /// IN: frames to map (0 with a NULL list: ask the size); OUT: frames.
    pub nr_frames: u32,
    /// Must be zero.
    pub pad: u32,
    /// First frame of the resource.
    pub frame: u64,
    /// GFNs to map the frames at (translated callers).
    pub frame_list: GuestHandle<u64>,
}

const _: () = {
    assert!(size_of::<XenMemAcquireResource>() == 32);
    assert!(offset_of!(XenMemAcquireResource, nr_frames) == 8);
    assert!(offset_of!(XenMemAcquireResource, frame) == 16);
    assert!(offset_of!(XenMemAcquireResource, frame_list) == 24);
};

/// `CONSOLEIO_write` (`public/xen.h`).
pub const CONSOLEIO_WRITE: usize = 0;
/// `SCHEDOP_yield` (`public/sched.h`).
pub const SCHEDOP_YIELD: usize = 0;
/// `SCHEDOP_shutdown` (`public/sched.h`).
pub const SCHEDOP_SHUTDOWN: usize = 2;
/// Length of `xen_extraversion_t`.
pub const XEN_EXTRAVERSION_LEN: usize = 16;

/// A `XEN_GUEST_HANDLE(T)`: a guest address of a `T`, 64 bits on both
/// architectures. Xen reads PVH and Arm handles as guest-virtual addresses.
#[repr(transparent)]
pub struct GuestHandle<T> {
    addr: u64,
    _t: PhantomData<*mut T>,
}

impl<T> Clone for GuestHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GuestHandle<T> {}

impl<T> core::fmt::Debug for GuestHandle<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestHandle({:#x})", self.addr)
    }
}

impl<T> GuestHandle<T> {
    /// The NULL handle (asks some operations for a size).
    pub const fn null() -> Self {
        Self {
            addr: 0,
            _t: PhantomData,
        }
    }

    /// A handle to the first element of `buf`.
    pub fn from_slice(buf: &mut [T]) -> Self {
        Self {
            addr: buf.as_mut_ptr() as usize as u64,
            _t: PhantomData,
        }
    }

    /// A handle to `v`.
    pub fn from_mut(v: &mut T) -> Self {
        Self {
            addr: v as *mut T as usize as u64,
            _t: PhantomData,
        }
    }

    /// The same address as a handle to another element type of the same size
    /// (`Gfn`/`Mfn` lists are `xen_pfn_t` lists).
    pub const fn cast<U>(self) -> GuestHandle<U> {
        assert!(core::mem::size_of::<T>() == core::mem::size_of::<U>());
        GuestHandle {
            addr: self.addr,
            _t: PhantomData,
        }
    }

    /// A handle Xen only reads through.
    pub fn from_ref(v: &[T]) -> Self {
        Self {
            addr: v.as_ptr() as usize as u64,
            _t: PhantomData,
        }
    }
}

/// The `hvm_start_info` magic ("xEn3" with the top bit of 'E' set).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info` (`arch-x86/hvm/start_info.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC`].
    pub magic: u32,
    /// Structure version: 0, or 1 with a memory map.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of [`HvmModlistEntry`].
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Version 1: physical address of the [`HvmMemmapEntry`] table.
    pub memmap_paddr: u64,
    /// Version 1: number of memory-map entries.
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<HvmStartInfo>() == 56);
    assert!(offset_of!(HvmStartInfo, nr_modules) == 12);
    assert!(offset_of!(HvmStartInfo, modlist_paddr) == 16);
    assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 24);
    assert!(offset_of!(HvmStartInfo, rsdp_paddr) == 32);
    assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);
    assert!(offset_of!(HvmStartInfo, memmap_entries) == 48);
};

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of its command line.
    pub cmdline_paddr: u64,
    /// Reserved.
    pub reserved: u64,
}

const _: () = assert!(size_of::<HvmModlistEntry>() == 32);

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    /// Base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// e820 type.
    pub kind: u32,
    /// Must be zero.
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<HvmMemmapEntry>() == 24);
    assert!(offset_of!(HvmMemmapEntry, kind) == 16);
};

/// An e820 entry as `XENMEM_memory_map` returns it: packed, 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct E820Entry {
    /// Base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `E820_*` type: 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable.
    pub kind: u32,
}

const _: () = {
    assert!(size_of::<E820Entry>() == 20);
    assert!(offset_of!(E820Entry, size) == 8);
    assert!(offset_of!(E820Entry, kind) == 16);
};

/// `struct xen_memory_map`.
#[repr(C)]
#[derive(Debug)]
pub struct XenMemoryMap {
    /// In: capacity of `buffer`; out: entries written.
    pub nr_entries: u32,
    /// The e820 buffer.
    pub buffer: GuestHandle<E820Entry>,
}

const _: () = {
    assert!(size_of::<XenMemoryMap>() == 16);
    assert!(offset_of!(XenMemoryMap, buffer) == 8);
};

/// `struct xen_feature_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenFeatureInfo {
    /// In: which 32-bit submap.
    pub submap_idx: u32,
    /// Out: the submap.
    pub submap: u32,
}

const _: () = assert!(size_of::<XenFeatureInfo>() == 8);

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

const _: () = assert!(size_of::<SchedShutdown>() == 4);

/// `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.17.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;
/// `XEN_DOMCTL_getdomaininfo`.
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
/// `XEN_DOMINF_dying`.
pub const XEN_DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_shutdown`.
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
/// `XEN_DOMINF_shutdownshift`: where the shutdown code sits in `flags`.
pub const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;
/// `XEN_DOMINF_shutdownmask`.
pub const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;

/// `struct xen_domctl_getdomaininfo`, up to its architecture-specific tail
/// (which the union's 128 bytes cover on both architectures).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DomctlGetDomainInfo {
    /// The domain (echoed).
    pub domain: u16,
    /// Padding.
    pub pad1: u16,
    /// `XEN_DOMINF_*`.
    pub flags: u32,
    /// Pages held.
    pub tot_pages: u64,
    /// Maximum pages.
    pub max_pages: u64,
    /// Outstanding claim.
    pub outstanding_pages: u64,
    /// Shared pages.
    pub shr_pages: u64,
    /// Paged-out pages.
    pub paged_pages: u64,
    /// GMFN of the shared-info page.
    pub shared_info_frame: u64,
    /// CPU time used, ns.
    pub cpu_time: u64,
    /// vCPUs online.
    pub nr_online_vcpus: u32,
    /// Highest vCPU id.
    pub max_vcpu_id: u32,
    /// XSM label.
    pub ssidref: u32,
    /// The toolstack's handle (UUID).
    pub handle: [u8; 16],
    /// CPU pool.
    pub cpupool: u32,
    /// Guest-physical address width.
    pub gpaddr_bits: u8,
    /// Padding.
    pub pad2: [u8; 7],
}

const _: () = {
    assert!(offset_of!(DomctlGetDomainInfo, flags) == 4);
    assert!(offset_of!(DomctlGetDomainInfo, tot_pages) == 8);
    assert!(offset_of!(DomctlGetDomainInfo, max_pages) == 16);
    assert!(offset_of!(DomctlGetDomainInfo, cpu_time) == 56);
    assert!(offset_of!(DomctlGetDomainInfo, nr_online_vcpus) == 64);
    assert!(offset_of!(DomctlGetDomainInfo, handle) == 76);
    assert!(offset_of!(DomctlGetDomainInfo, cpupool) == 92);
    assert!(offset_of!(DomctlGetDomainInfo, gpaddr_bits) == 96);
    // arch_config follows at 104: 8 bytes on x86, 12 on Arm; within the union.
    assert!(size_of::<DomctlGetDomainInfo>() == 104);
};

/// The operation-specific part of `struct xen_domctl`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union DomctlPayload {
    /// `XEN_DOMCTL_getdomaininfo`.
    pub getdomaininfo: DomctlGetDomainInfo,
    /// The union's declared size (`uint8_t pad[128]`), 8-byte aligned.
    pub pad: [u64; 16],
}

/// `struct xen_domctl`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Domctl {
    /// `XEN_DOMCTL_*`.
    pub cmd: u32,
    /// [`XEN_DOMCTL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// The target domain.
    pub domain: u16,
    /// Padding.
    pub pad: [u16; 3],
    /// Operation-specific data.
    pub u: DomctlPayload,
}

const _: () = {
    assert!(size_of::<Domctl>() == 144);
    assert!(offset_of!(Domctl, domain) == 8);
    assert!(offset_of!(Domctl, u) == 16);
};

impl Domctl {
    /// A zeroed domctl for `cmd` on `domain`.
    pub const fn new(cmd: u32, domain: u16) -> Self {
        Self {
            cmd,
            interface_version: XEN_DOMCTL_INTERFACE_VERSION,
            domain,
            pad: [0; 3],
            u: DomctlPayload { pad: [0; 16] },
        }
    }
}
