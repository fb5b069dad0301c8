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
    /// `__HYPERVISOR_multicall`: a list of [`super::MulticallEntry`].
    pub const MULTICALL: usize = 13;
    /// `__HYPERVISOR_xen_version`.
    pub const XEN_VERSION: usize = 17;
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: usize = 18;
    /// `__HYPERVISOR_grant_table_op`.
    pub const GRANT_TABLE_OP: usize = 20;
    /// `__HYPERVISOR_sched_op`.
    pub const SCHED_OP: usize = 29;
    /// `__HYPERVISOR_event_channel_op`.
    pub const EVENT_CHANNEL_OP: usize = 32;
    /// `__HYPERVISOR_hvm_op`.
    pub const HVM_OP: usize = 34;
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
    /// `XENMEM_maximum_ram_page`: `max_page`, one past the highest MFN (no
    /// argument).
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// `struct multicall_entry` (`public/xen.h`): one hypercall of a
/// `__HYPERVISOR_multicall` list. `xen_ulong_t` is 64 bits on both targets
/// (`unsigned long` on x86_64, `uint64_t` on Arm), so the layout is the
/// same: 64 bytes.
///
/// Xen reads `op` and `args` and writes `result` of each entry it carries
/// out; it may also rewrite the entry with a sub-call's continuation, and a
/// debug build scribbles over everything but `result` afterwards: only
/// `result` is to be read back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MulticallEntry {
    /// The hypercall number (`__HYPERVISOR_*`, [`op`]).
    pub op: u64,
    /// OUT: what the hypercall returned (`long`: `-errno` or a value).
    pub result: u64,
    /// Its arguments; unused ones are ignored. A 32-bit Arm guest must keep
    /// the upper halves zero (Xen crashes it otherwise); a 64-bit one need
    /// not.
    pub args: [u64; 6],
}

impl MulticallEntry {
    /// What the caller puts in `result` to tell the entries Xen did not
    /// reach: no hypercall returns it (`-errno` is at most 4095 below zero;
    /// `remove_from_physmap` returns 0 or `-errno`).
    pub const NOT_REACHED: u64 = 0x8000_0000_0000_0000;
}

const _: () = {
    assert!(size_of::<MulticallEntry>() == 64);
    assert!(offset_of!(MulticallEntry, op) == 0);
    assert!(offset_of!(MulticallEntry, result) == 8);
    assert!(offset_of!(MulticallEntry, args) == 16);
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
/// `CONSOLEIO_read` (`public/xen.h`): the hardware domain's serial input.
pub const CONSOLEIO_READ: usize = 1;
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

/// `HVMOP_get_param` (`public/hvm/hvm_op.h`).
pub const HVMOP_GET_PARAM: usize = 1;

/// `HVM_PARAM_*` indices (`public/hvm/params.h`) the agent reads. The same
/// parameters describe a toolstack domU's special pages on x86 (PVH) and Arm.
pub mod hvm_param {
    /// `HVM_PARAM_STORE_PFN`: the xenstore ring's frame.
    pub const STORE_PFN: u32 = 1;
    /// `HVM_PARAM_STORE_EVTCHN`: the xenstore ring's event channel.
    pub const STORE_EVTCHN: u32 = 2;
    /// `HVM_PARAM_IOREQ_PFN`.
    pub const IOREQ_PFN: u32 = 5;
    /// `HVM_PARAM_BUFIOREQ_PFN`.
    pub const BUFIOREQ_PFN: u32 = 6;
    /// `HVM_PARAM_PAGING_RING_PFN`.
    pub const PAGING_RING_PFN: u32 = 27;
    /// `HVM_PARAM_MONITOR_RING_PFN`.
    pub const MONITOR_RING_PFN: u32 = 28;
    /// `HVM_PARAM_SHARING_RING_PFN`.
    pub const SHARING_RING_PFN: u32 = 29;
    /// `HVM_PARAM_CONSOLE_PFN`: the PV console ring's frame.
    pub const CONSOLE_PFN: u32 = 17;
    /// `HVM_PARAM_CONSOLE_EVTCHN`: the PV console's event channel.
    pub const CONSOLE_EVTCHN: u32 = 18;
    /// Every parameter that names a frame the toolstack populated for the
    /// guest (the special pages), in the order the agent reads them.
    pub const FRAMES: [u32; 7] = [
        CONSOLE_PFN,
        STORE_PFN,
        IOREQ_PFN,
        BUFIOREQ_PFN,
        PAGING_RING_PFN,
        MONITOR_RING_PFN,
        SHARING_RING_PFN,
    ];
}

/// `struct xen_hvm_param`: the argument of `HVMOP_{get,set}_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmParam {
    /// IN: the domain (`DOMID_SELF` allowed).
    pub domid: u16,
    /// IN: the parameter, `HVM_PARAM_*`.
    pub index: u32,
    /// OUT (get): its value.
    pub value: u64,
}

const _: () = {
    assert!(size_of::<HvmParam>() == 16);
    assert!(offset_of!(HvmParam, index) == 4);
    assert!(offset_of!(HvmParam, value) == 8);
};

/// `EVTCHNOP_send` (`public/event_channel.h`).
pub const EVTCHNOP_SEND: usize = 4;

/// `struct evtchn_send`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSend {
    /// IN: the local port to notify through.
    pub port: u32,
}

const _: () = assert!(size_of::<EvtchnSend>() == 4);

/// `EVTCHNOP_bind_interdomain` (`public/event_channel.h`; 0, not 1: 1 is
/// `EVTCHNOP_bind_virq`).
pub const EVTCHNOP_BIND_INTERDOMAIN: usize = 0;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: usize = 3;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: usize = 5;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: usize = 9;

/// Ports of the 2-level event channel ABI with a 64-bit `xen_ulong_t`
/// (x86_64 and Arm): `BITS_PER_EVTCHN_WORD * BITS_PER_EVTCHN_WORD`.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 64 * 64;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain the port is allocated in (`DOMID_SELF` unless privileged).
    pub dom: u16,
    /// IN: the domain that may bind to it (`DOMID_SELF`: loopback).
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: u32,
}

const _: () = {
    assert!(size_of::<EvtchnAllocUnbound>() == 8);
    assert!(offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
    assert!(offset_of!(EvtchnAllocUnbound, port) == 4);
};

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain (`DOMID_SELF`: loopback).
    pub remote_dom: u16,
    /// IN: its unbound port, offered to the caller.
    pub remote_port: u32,
    /// OUT: the caller's new port.
    pub local_port: u32,
}

const _: () = {
    assert!(size_of::<EvtchnBindInterdomain>() == 12);
    assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
    assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);
};

/// `struct evtchn_close` and `struct evtchn_unmask` (one port each).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnPort {
    /// IN: the local port.
    pub port: u32,
}

const _: () = assert!(size_of::<EvtchnPort>() == 4);

/// `EVTCHNSTAT_*`: what `EVTCHNOP_status` says a port is.
pub mod evtchnstat {
    /// `EVTCHNSTAT_closed`: not in use.
    pub const CLOSED: u32 = 0;
    /// `EVTCHNSTAT_unbound`: waiting for an interdomain connection.
    pub const UNBOUND: u32 = 1;
    /// `EVTCHNSTAT_interdomain`: connected to a remote domain.
    pub const INTERDOMAIN: u32 = 2;
    /// `EVTCHNSTAT_pirq`.
    pub const PIRQ: u32 = 3;
    /// `EVTCHNSTAT_virq`.
    pub const VIRQ: u32 = 4;
    /// `EVTCHNSTAT_ipi`.
    pub const IPI: u32 = 5;
}

/// `struct evtchn_status`. The union `u` is two 32-bit words: `unbound.dom`
/// and `interdomain.dom` are the low 16 bits of `u[0]` (little-endian),
/// `interdomain.port` is `u[1]`, `pirq`/`virq` are `u[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnStatus {
    /// IN: the domain (`DOMID_SELF` allowed).
    pub dom: u16,
    /// IN: the port.
    pub port: u32,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU it notifies.
    pub vcpu: u32,
    /// OUT: the union.
    pub u: [u32; 2],
}

const _: () = {
    assert!(size_of::<EvtchnStatus>() == 24);
    assert!(offset_of!(EvtchnStatus, port) == 4);
    assert!(offset_of!(EvtchnStatus, status) == 8);
    assert!(offset_of!(EvtchnStatus, vcpu) == 12);
    assert!(offset_of!(EvtchnStatus, u) == 16);
};

/// `SCHEDOP_poll` (`public/sched.h`): block until one of the ports is
/// pending, or the timeout.
pub const SCHEDOP_POLL: usize = 3;
/// The most ports one `SCHEDOP_poll` takes (`do_poll`: "Fairly arbitrary
/// limit"; more is EINVAL).
pub const SCHED_POLL_MAX_PORTS: usize = 128;

/// `struct sched_poll`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SchedPoll {
    /// IN: the ports (`XEN_GUEST_HANDLE(evtchn_port_t)`).
    pub ports: GuestHandle<u32>,
    /// IN: how many.
    pub nr_ports: u32,
    /// IN: absolute Xen system time (ns) to wake at; 0: no timeout.
    pub timeout: u64,
}

const _: () = {
    assert!(size_of::<SchedPoll>() == 24);
    assert!(offset_of!(SchedPoll, nr_ports) == 8);
    assert!(offset_of!(SchedPoll, timeout) == 16);
};

/// `struct vcpu_time_info` (`public/xen.h`), the same on x86_64 and Arm
/// (Arm's Xen 4.17 never writes it: `update_vcpu_system_time` is empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// The TSC at the last update.
    pub tsc_timestamp: u64,
    /// Xen system time (ns since Xen's boot) at the last update.
    pub system_time: u64,
    /// TSC to ns multiplier (32.32 fixed point, after `tsc_shift`).
    pub tsc_to_system_mul: u32,
    /// Shift of the TSC delta before the multiplication.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*`.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

const _: () = {
    assert!(size_of::<VcpuTimeInfo>() == 32);
    assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
    assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
    assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
    assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
    assert!(offset_of!(VcpuTimeInfo, flags) == 29);
};

/// `struct vcpu_info` of x86_64 (`public/xen.h` with `arch-x86/xen-x86_64.h`'s
/// `arch_vcpu_info`; `XEN_HAVE_PV_UPCALL_MASK` is defined): 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuInfoX86 {
    /// `evtchn_upcall_pending`.
    pub evtchn_upcall_pending: u8,
    /// `evtchn_upcall_mask`.
    pub evtchn_upcall_mask: u8,
    /// Padding to `evtchn_pending_sel`.
    pub pad: [u8; 6],
    /// `evtchn_pending_sel`: one bit per word of `evtchn_pending`.
    pub evtchn_pending_sel: u64,
    /// `arch.cr2`.
    pub cr2: u64,
    /// `arch.pad`.
    pub arch_pad: u64,
    /// `time`.
    pub time: VcpuTimeInfo,
}

const _: () = {
    assert!(size_of::<VcpuInfoX86>() == 64);
    assert!(offset_of!(VcpuInfoX86, evtchn_upcall_mask) == 1);
    assert!(offset_of!(VcpuInfoX86, evtchn_pending_sel) == 8);
    assert!(offset_of!(VcpuInfoX86, time) == 32);
};

/// `struct vcpu_info` of Arm (`arch-arm.h`: an empty `arch_vcpu_info`, no
/// `XEN_HAVE_PV_UPCALL_MASK`, so byte 1 is `pad0`): 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuInfoArm {
    /// `evtchn_upcall_pending`.
    pub evtchn_upcall_pending: u8,
    /// `pad0` (no upcall mask on Arm).
    pub pad0: u8,
    /// Padding to `evtchn_pending_sel`.
    pub pad: [u8; 6],
    /// `evtchn_pending_sel`.
    pub evtchn_pending_sel: u64,
    /// `time` (never written by Xen 4.17 on Arm).
    pub time: VcpuTimeInfo,
}

const _: () = {
    assert!(size_of::<VcpuInfoArm>() == 48);
    assert!(offset_of!(VcpuInfoArm, evtchn_pending_sel) == 8);
    assert!(offset_of!(VcpuInfoArm, time) == 16);
};

/// `struct shared_info` of x86_64: `vcpu_info[XEN_LEGACY_MAX_VCPUS = 32]`,
/// the 2-level event bitmaps (64 `xen_ulong_t` = u64 each), the wallclock
/// and `arch_shared_info` (no `wc_sec_hi` there: that is i386 only).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedInfoX86 {
    /// `vcpu_info`.
    pub vcpu_info: [VcpuInfoX86; 32],
    /// `evtchn_pending`: bit `p % 64` of word `p / 64` for port `p`.
    pub evtchn_pending: [u64; 64],
    /// `evtchn_mask`: as `evtchn_pending`.
    pub evtchn_mask: [u64; 64],
    /// `wc_version`.
    pub wc_version: u32,
    /// `wc_sec`.
    pub wc_sec: u32,
    /// `wc_nsec`.
    pub wc_nsec: u32,
    /// `wc_sec_hi`.
    pub wc_sec_hi: u32,
    /// `arch.max_pfn`.
    pub max_pfn: u64,
    /// `arch.pfn_to_mfn_frame_list_list`.
    pub pfn_to_mfn_frame_list_list: u64,
    /// `arch.nmi_reason`.
    pub nmi_reason: u64,
    /// `arch.p2m_cr3`.
    pub p2m_cr3: u64,
    /// `arch.p2m_vaddr`.
    pub p2m_vaddr: u64,
    /// `arch.p2m_generation`.
    pub p2m_generation: u64,
}

const _: () = {
    assert!(size_of::<SharedInfoX86>() == 3136);
    assert!(offset_of!(SharedInfoX86, evtchn_pending) == 2048);
    assert!(offset_of!(SharedInfoX86, evtchn_mask) == 2560);
    assert!(offset_of!(SharedInfoX86, wc_version) == 3072);
    assert!(offset_of!(SharedInfoX86, wc_sec_hi) == 3084);
    assert!(offset_of!(SharedInfoX86, max_pfn) == 3088);
    assert!(offset_of!(SharedInfoX86, p2m_generation) == 3128);
};

/// `struct shared_info` of Arm: one `vcpu_info` (`XEN_LEGACY_MAX_VCPUS =
/// 1`), the 2-level bitmaps (`xen_ulong_t` is `uint64_t` on Arm), the
/// wallclock and an empty `arch_shared_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedInfoArm {
    /// `vcpu_info`.
    pub vcpu_info: [VcpuInfoArm; 1],
    /// `evtchn_pending`.
    pub evtchn_pending: [u64; 64],
    /// `evtchn_mask`.
    pub evtchn_mask: [u64; 64],
    /// `wc_version`.
    pub wc_version: u32,
    /// `wc_sec`.
    pub wc_sec: u32,
    /// `wc_nsec`.
    pub wc_nsec: u32,
    /// `wc_sec_hi`.
    pub wc_sec_hi: u32,
}

const _: () = {
    assert!(size_of::<SharedInfoArm>() == 1088);
    assert!(offset_of!(SharedInfoArm, evtchn_pending) == 48);
    assert!(offset_of!(SharedInfoArm, evtchn_mask) == 560);
    assert!(offset_of!(SharedInfoArm, wc_version) == 1072);
    assert!(offset_of!(SharedInfoArm, wc_sec_hi) == 1084);
};

/// Where the parts of a `shared_info` page are, per architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfoLayout {
    /// Byte offset of `evtchn_pending`.
    pub evtchn_pending: usize,
    /// Byte offset of `evtchn_mask`.
    pub evtchn_mask: usize,
    /// Byte offset of `vcpu_info[0].evtchn_upcall_pending`.
    pub vcpu0_upcall_pending: usize,
    /// Byte offset of `vcpu_info[0].evtchn_pending_sel`.
    pub vcpu0_pending_sel: usize,
    /// Byte offset of `vcpu_info[0].time`, where Xen maintains it (x86).
    pub vcpu0_time: Option<usize>,
    /// Bytes of the structure.
    pub size: usize,
}

impl SharedInfoLayout {
    /// x86_64 ([`SharedInfoX86`]).
    pub const X86_64: SharedInfoLayout = SharedInfoLayout {
        evtchn_pending: offset_of!(SharedInfoX86, evtchn_pending),
        evtchn_mask: offset_of!(SharedInfoX86, evtchn_mask),
        vcpu0_upcall_pending: offset_of!(VcpuInfoX86, evtchn_upcall_pending),
        vcpu0_pending_sel: offset_of!(VcpuInfoX86, evtchn_pending_sel),
        vcpu0_time: Some(offset_of!(VcpuInfoX86, time)),
        size: size_of::<SharedInfoX86>(),
    };
    /// Arm ([`SharedInfoArm`]).
    pub const ARM: SharedInfoLayout = SharedInfoLayout {
        evtchn_pending: offset_of!(SharedInfoArm, evtchn_pending),
        evtchn_mask: offset_of!(SharedInfoArm, evtchn_mask),
        vcpu0_upcall_pending: offset_of!(VcpuInfoArm, evtchn_upcall_pending),
        vcpu0_pending_sel: offset_of!(VcpuInfoArm, evtchn_pending_sel),
        vcpu0_time: None,
        size: size_of::<SharedInfoArm>(),
    };
    /// The layout of the architecture this is built for (the host's in
    /// host tests: x86_64 on an x86_64 or any non-Arm host).
    #[cfg(not(target_arch = "aarch64"))]
    pub const NATIVE: SharedInfoLayout = Self::X86_64;
    /// The layout of the architecture this is built for.
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: SharedInfoLayout = Self::ARM;
}

const _: () = {
    // Both fit a page, and the bitmaps are 8-byte aligned.
    assert!(SharedInfoLayout::X86_64.size <= 4096 && SharedInfoLayout::ARM.size <= 4096);
    assert!(SharedInfoLayout::X86_64.evtchn_pending % 8 == 0);
    assert!(SharedInfoLayout::ARM.evtchn_pending % 8 == 0);
    assert!(SharedInfoLayout::ARM.evtchn_mask % 8 == 0);
};

/// The page `XENMAPSPACE_shared_info` maps: 512 words, read and written
/// only through atomics at [`SharedInfoLayout`] offsets (Xen changes it
/// concurrently).
#[repr(C, align(8))]
pub struct SharedInfoPage(pub [u64; 512]);

const _: () = assert!(size_of::<SharedInfoPage>() == 4096);

/// `struct xencons_interface` (`public/io/console.h`): the PV console ring
/// page. Indices are free-running; an index's slot is `index % size`.
#[repr(C)]
pub struct XenconsInterface {
    /// Input from the console daemon (`in`).
    pub input: [u8; 1024],
    /// Output to the console daemon (`out`).
    pub output: [u8; 2048],
    /// `in_cons`.
    pub in_cons: u32,
    /// `in_prod`.
    pub in_prod: u32,
    /// `out_cons`: advanced by the daemon.
    pub out_cons: u32,
    /// `out_prod`: advanced by the guest.
    pub out_prod: u32,
}

const _: () = {
    assert!(size_of::<XenconsInterface>() == 3088);
    assert!(offset_of!(XenconsInterface, output) == 1024);
    assert!(offset_of!(XenconsInterface, in_cons) == 3072);
    assert!(offset_of!(XenconsInterface, in_prod) == 3076);
    assert!(offset_of!(XenconsInterface, out_cons) == 3080);
    assert!(offset_of!(XenconsInterface, out_prod) == 3084);
};

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

pub mod gnttab {
    //! Grant tables (`public/grant_table.h`): sub-commands, flags, status
    //! codes and the structures of the operations the agent uses, with
    //! layout checks.
    //!
    //! For a translated guest (PVH, Arm) `host_addr` of
    //! [`MapGrantRef`]/[`UnmapGrantRef`] with [`GNTMAP_HOST_MAP`] is a
    //! *guest-physical* address: Xen puts the granted frame into the caller's
    //! physmap at that frame (replacing whatever is there, so it must be a
    //! hole, never RAM), and the guest maps it into its own page tables
    //! itself.

    use super::GuestHandle;
    use core::fmt;
    use core::mem::{offset_of, size_of};

    /// `GNTTABOP_map_grant_ref`.
    pub const MAP_GRANT_REF: usize = 0;
    /// `GNTTABOP_unmap_grant_ref`.
    pub const UNMAP_GRANT_REF: usize = 1;
    /// `GNTTABOP_setup_table`.
    pub const SETUP_TABLE: usize = 2;
    /// `GNTTABOP_dump_table`.
    pub const DUMP_TABLE: usize = 3;
    /// `GNTTABOP_transfer`.
    pub const TRANSFER: usize = 4;
    /// `GNTTABOP_copy`.
    pub const COPY: usize = 5;
    /// `GNTTABOP_query_size`.
    pub const QUERY_SIZE: usize = 6;
    /// `GNTTABOP_unmap_and_replace`.
    pub const UNMAP_AND_REPLACE: usize = 7;
    /// `GNTTABOP_set_version`.
    pub const SET_VERSION: usize = 8;
    /// `GNTTABOP_get_status_frames`.
    pub const GET_STATUS_FRAMES: usize = 9;
    /// `GNTTABOP_get_version`.
    pub const GET_VERSION: usize = 10;
    /// `GNTTABOP_swap_grant_ref`.
    pub const SWAP_GRANT_REF: usize = 11;
    /// `GNTTABOP_cache_flush`.
    pub const CACHE_FLUSH: usize = 12;

    /// `GNTMAP_device_map`: map for device (bus) access.
    pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
    /// `GNTMAP_host_map`: map for host (CPU) access; for a translated guest,
    /// into its physmap at `host_addr`.
    pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
    /// `GNTMAP_readonly`: read-only mapping.
    pub const GNTMAP_READONLY: u32 = 1 << 2;
    /// `GNTMAP_application_map` (PV only).
    pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
    /// `GNTMAP_contains_pte` (PV only).
    pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

    /// `GTF_invalid`: the entry grants nothing.
    pub const GTF_INVALID: u16 = 0;
    /// `GTF_permit_access`: `domid` may map or copy `frame`.
    pub const GTF_PERMIT_ACCESS: u16 = 1;
    /// `GTF_accept_transfer`.
    pub const GTF_ACCEPT_TRANSFER: u16 = 2;
    /// `GTF_transitive` (v2 only).
    pub const GTF_TRANSITIVE: u16 = 3;
    /// `GTF_type_mask`.
    pub const GTF_TYPE_MASK: u16 = 3;
    /// `GTF_readonly`: the grantee may only read.
    pub const GTF_READONLY: u16 = 1 << 2;
    /// `GTF_reading`: set by Xen while the grantee has the frame pinned.
    pub const GTF_READING: u16 = 1 << 3;
    /// `GTF_writing`: set by Xen while the grantee has it pinned writable.
    pub const GTF_WRITING: u16 = 1 << 4;
    /// `GTF_PWT` (x86 cache attribute).
    pub const GTF_PWT: u16 = 1 << 5;
    /// `GTF_PCD` (x86 cache attribute).
    pub const GTF_PCD: u16 = 1 << 6;
    /// `GTF_PAT` (x86 cache attribute).
    pub const GTF_PAT: u16 = 1 << 7;
    /// `GTF_sub_page` (v2 only).
    pub const GTF_SUB_PAGE: u16 = 1 << 8;

    /// `GNTCOPY_source_gref`: the source is a grant reference.
    pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
    /// `GNTCOPY_dest_gref`: the destination is a grant reference.
    pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

    /// `GNTTAB_NR_RESERVED_ENTRIES`: entries 0..8 are kept across version
    /// changes and may be filled in by the toolstack at domain creation
    /// (`GNTTAB_RESERVED_CONSOLE` 0, `GNTTAB_RESERVED_XENSTORE` 1).
    pub const NR_RESERVED_ENTRIES: u32 = 8;
    /// Version-1 entries per grant-table frame (4096 / 8).
    pub const ENTRIES_PER_FRAME_V1: u32 = 512;

    /// A `GNTST_*` status of one grant operation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    pub enum GntStatus {
        /// `GNTST_okay` (0).
        Okay,
        /// `GNTST_general_error` (-1).
        GeneralError,
        /// `GNTST_bad_domain` (-2).
        BadDomain,
        /// `GNTST_bad_gntref` (-3).
        BadGntref,
        /// `GNTST_bad_handle` (-4).
        BadHandle,
        /// `GNTST_bad_virt_addr` (-5).
        BadVirtAddr,
        /// `GNTST_bad_dev_addr` (-6).
        BadDevAddr,
        /// `GNTST_no_device_space` (-7).
        NoDeviceSpace,
        /// `GNTST_permission_denied` (-8).
        PermissionDenied,
        /// `GNTST_bad_page` (-9).
        BadPage,
        /// `GNTST_bad_copy_arg` (-10).
        BadCopyArg,
        /// `GNTST_address_too_big` (-11).
        AddressTooBig,
        /// `GNTST_eagain` (-12).
        Eagain,
        /// `GNTST_no_space` (-13).
        NoSpace,
        /// A value `grant_table.h` does not define (or one Xen never wrote:
        /// a status field left as the caller set it).
        Unknown(i16),
    }

    impl GntStatus {
        /// The status Xen wrote.
        pub const fn from_raw(v: i16) -> Self {
            match v {
                0 => GntStatus::Okay,
                -1 => GntStatus::GeneralError,
                -2 => GntStatus::BadDomain,
                -3 => GntStatus::BadGntref,
                -4 => GntStatus::BadHandle,
                -5 => GntStatus::BadVirtAddr,
                -6 => GntStatus::BadDevAddr,
                -7 => GntStatus::NoDeviceSpace,
                -8 => GntStatus::PermissionDenied,
                -9 => GntStatus::BadPage,
                -10 => GntStatus::BadCopyArg,
                -11 => GntStatus::AddressTooBig,
                -12 => GntStatus::Eagain,
                -13 => GntStatus::NoSpace,
                v => GntStatus::Unknown(v),
            }
        }

        /// The raw value.
        pub const fn raw(self) -> i16 {
            match self {
                GntStatus::Okay => 0,
                GntStatus::GeneralError => -1,
                GntStatus::BadDomain => -2,
                GntStatus::BadGntref => -3,
                GntStatus::BadHandle => -4,
                GntStatus::BadVirtAddr => -5,
                GntStatus::BadDevAddr => -6,
                GntStatus::NoDeviceSpace => -7,
                GntStatus::PermissionDenied => -8,
                GntStatus::BadPage => -9,
                GntStatus::BadCopyArg => -10,
                GntStatus::AddressTooBig => -11,
                GntStatus::Eagain => -12,
                GntStatus::NoSpace => -13,
                GntStatus::Unknown(v) => v,
            }
        }

        /// Whether the operation succeeded.
        pub const fn is_ok(self) -> bool {
            matches!(self, GntStatus::Okay)
        }

        /// The name in `grant_table.h` (`"GNTST_bad_gntref"`).
        pub const fn name(self) -> &'static str {
            match self {
                GntStatus::Okay => "GNTST_okay",
                GntStatus::GeneralError => "GNTST_general_error",
                GntStatus::BadDomain => "GNTST_bad_domain",
                GntStatus::BadGntref => "GNTST_bad_gntref",
                GntStatus::BadHandle => "GNTST_bad_handle",
                GntStatus::BadVirtAddr => "GNTST_bad_virt_addr",
                GntStatus::BadDevAddr => "GNTST_bad_dev_addr",
                GntStatus::NoDeviceSpace => "GNTST_no_device_space",
                GntStatus::PermissionDenied => "GNTST_permission_denied",
                GntStatus::BadPage => "GNTST_bad_page",
                GntStatus::BadCopyArg => "GNTST_bad_copy_arg",
                GntStatus::AddressTooBig => "GNTST_address_too_big",
                GntStatus::Eagain => "GNTST_eagain",
                GntStatus::NoSpace => "GNTST_no_space",
                GntStatus::Unknown(_) => "GNTST_unknown",
            }
        }

        /// Xen's message for it (`GNTTABOP_error_msgs`).
        pub const fn description(self) -> &'static str {
            match self {
                GntStatus::Okay => "okay",
                GntStatus::GeneralError => "undefined error",
                GntStatus::BadDomain => "unrecognised domain id",
                GntStatus::BadGntref => "invalid grant reference",
                GntStatus::BadHandle => "invalid mapping handle",
                GntStatus::BadVirtAddr => "invalid virtual address",
                GntStatus::BadDevAddr => "invalid device address",
                GntStatus::NoDeviceSpace => "no spare translation slot in the I/O MMU",
                GntStatus::PermissionDenied => "permission denied",
                GntStatus::BadPage => "bad page",
                GntStatus::BadCopyArg => "copy arguments cross page boundary",
                GntStatus::AddressTooBig => "page address size too large",
                GntStatus::Eagain => "operation not done; try again",
                GntStatus::NoSpace => "out of space",
                GntStatus::Unknown(_) => "unknown status",
            }
        }
    }

    impl fmt::Display for GntStatus {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                GntStatus::Unknown(v) => write!(f, "GNTST {v} (unknown status)"),
                s => write!(f, "{} ({})", s.name(), s.description()),
            }
        }
    }

    /// What a status field holds before Xen writes it: not a `GNTST_*`
    /// value, so an operation Xen never reached is told from one it did.
    pub const STATUS_NOT_DONE: i16 = i16::MAX;

    /// `struct grant_entry_v1`: one entry of a version-1 grant table, as the
    /// granting guest writes it (`frame` and `domid` first, then `flags`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GrantEntryV1 {
        /// `GTF_*`.
        pub flags: u16,
        /// The domain allowed access.
        pub domid: u16,
        /// The granted frame (a GFN for a translated guest).
        pub frame: u32,
    }

    const _: () = {
        assert!(size_of::<GrantEntryV1>() == 8);
        assert!(offset_of!(GrantEntryV1, domid) == 2);
        assert!(offset_of!(GrantEntryV1, frame) == 4);
    };

    /// `struct gnttab_map_grant_ref`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MapGrantRef {
        /// IN: where to map (a guest-physical address for translated
        /// guests with [`GNTMAP_HOST_MAP`]).
        pub host_addr: u64,
        /// IN: `GNTMAP_*`.
        pub flags: u32,
        /// IN: the grant reference.
        pub gref: u32,
        /// IN: the granting domain.
        pub dom: u16,
        /// OUT: `GNTST_*`.
        pub status: i16,
        /// OUT: the mapping's handle, for the unmap.
        pub handle: u32,
        /// OUT: the bus address of the frame (its machine address).
        pub dev_bus_addr: u64,
    }

    const _: () = {
        assert!(size_of::<MapGrantRef>() == 32);
        assert!(offset_of!(MapGrantRef, flags) == 8);
        assert!(offset_of!(MapGrantRef, gref) == 12);
        assert!(offset_of!(MapGrantRef, dom) == 16);
        assert!(offset_of!(MapGrantRef, status) == 18);
        assert!(offset_of!(MapGrantRef, handle) == 20);
        assert!(offset_of!(MapGrantRef, dev_bus_addr) == 24);
    };

    impl MapGrantRef {
        /// A host mapping of `gref` of domain `dom` at guest-physical
        /// address `host_addr`, read-only or not; status [`STATUS_NOT_DONE`].
        pub const fn host(host_addr: u64, gref: u32, dom: u16, readonly: bool) -> Self {
            MapGrantRef {
                host_addr,
                flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
                gref,
                dom,
                status: STATUS_NOT_DONE,
                handle: 0,
                dev_bus_addr: 0,
            }
        }

        /// The status Xen wrote.
        pub const fn status(&self) -> GntStatus {
            GntStatus::from_raw(self.status)
        }
    }

    /// `struct gnttab_unmap_grant_ref`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct UnmapGrantRef {
        /// IN: the address mapped at (0: leave the host mapping alone —
        /// Xen then does nothing and says okay).
        pub host_addr: u64,
        /// IN: the bus address, for a device mapping (0 otherwise).
        pub dev_bus_addr: u64,
        /// IN: the handle the map returned.
        pub handle: u32,
        /// OUT: `GNTST_*`.
        pub status: i16,
    }

    const _: () = {
        assert!(size_of::<UnmapGrantRef>() == 24);
        assert!(offset_of!(UnmapGrantRef, dev_bus_addr) == 8);
        assert!(offset_of!(UnmapGrantRef, handle) == 16);
        assert!(offset_of!(UnmapGrantRef, status) == 20);
    };

    impl UnmapGrantRef {
        /// Unmap the host mapping `handle` at `host_addr`; status
        /// [`STATUS_NOT_DONE`].
        pub const fn host(host_addr: u64, handle: u32) -> Self {
            UnmapGrantRef {
                host_addr,
                dev_bus_addr: 0,
                handle,
                status: STATUS_NOT_DONE,
            }
        }

        /// The status Xen wrote.
        pub const fn status(&self) -> GntStatus {
            GntStatus::from_raw(self.status)
        }
    }

    /// `struct gnttab_copy_ptr`: one side of a copy. `u` is the union
    /// `{ grant_ref_t ref; xen_pfn_t gmfn; }`, 64 bits on both
    /// architectures; both targets are little-endian, so a reference is the
    /// low 32 bits.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CopyPtr {
        /// A grant reference (with the matching `GNTCOPY_*_gref` flag) or
        /// the caller's own frame (a GFN for translated guests).
        pub u: u64,
        /// The domain: the granting domain for a reference, `DOMID_SELF`
        /// for a frame (Xen refuses frames of any other domain).
        pub domid: u16,
        /// Byte offset in the page.
        pub offset: u16,
    }

    const _: () = {
        assert!(size_of::<CopyPtr>() == 16);
        assert!(offset_of!(CopyPtr, domid) == 8);
        assert!(offset_of!(CopyPtr, offset) == 10);
    };

    /// `struct gnttab_copy`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GntCopy {
        /// IN: where from.
        pub source: CopyPtr,
        /// IN: where to.
        pub dest: CopyPtr,
        /// IN: bytes.
        pub len: u16,
        /// IN: `GNTCOPY_*`.
        pub flags: u16,
        /// OUT: `GNTST_*`.
        pub status: i16,
    }

    const _: () = {
        assert!(size_of::<GntCopy>() == 40);
        assert!(offset_of!(GntCopy, dest) == 16);
        assert!(offset_of!(GntCopy, len) == 32);
        assert!(offset_of!(GntCopy, flags) == 34);
        assert!(offset_of!(GntCopy, status) == 36);
    };

    impl GntCopy {
        /// The status Xen wrote.
        pub const fn status(&self) -> GntStatus {
            GntStatus::from_raw(self.status)
        }
    }

    /// `struct gnttab_query_size`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct QuerySize {
        /// IN: the domain (`DOMID_SELF` allowed).
        pub dom: u16,
        /// OUT: frames the table has now.
        pub nr_frames: u32,
        /// OUT: frames it may grow to.
        pub max_nr_frames: u32,
        /// OUT: `GNTST_*`.
        pub status: i16,
    }

    const _: () = {
        assert!(size_of::<QuerySize>() == 16);
        assert!(offset_of!(QuerySize, nr_frames) == 4);
        assert!(offset_of!(QuerySize, max_nr_frames) == 8);
        assert!(offset_of!(QuerySize, status) == 12);
    };

    impl QuerySize {
        /// The status Xen wrote.
        pub const fn status(&self) -> GntStatus {
            GntStatus::from_raw(self.status)
        }
    }

    /// `struct gnttab_setup_table` (PV guests learn their table's frames
    /// here; translated guests use `XENMEM_add_to_physmap` instead).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct SetupTable {
        /// IN: the domain.
        pub dom: u16,
        /// IN: frames wanted.
        pub nr_frames: u32,
        /// OUT: `GNTST_*`.
        pub status: i16,
        /// OUT: the frames.
        pub frame_list: GuestHandle<u64>,
    }

    const _: () = {
        assert!(size_of::<SetupTable>() == 24);
        assert!(offset_of!(SetupTable, nr_frames) == 4);
        assert!(offset_of!(SetupTable, status) == 8);
        assert!(offset_of!(SetupTable, frame_list) == 16);
    };

    /// `struct gnttab_set_version`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SetVersion {
        /// IN/OUT: 1 or 2; Xen writes back the version in force.
        pub version: u32,
    }

    const _: () = assert!(size_of::<SetVersion>() == 4);

    /// `struct gnttab_get_version`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GetVersion {
        /// IN: the domain.
        pub dom: u16,
        /// Padding.
        pub pad: u16,
        /// OUT: the version.
        pub version: u32,
    }

    const _: () = {
        assert!(size_of::<GetVersion>() == 8);
        assert!(offset_of!(GetVersion, version) == 4);
    };
}

// ---------------------------------------------------------------------------
// Domain control: XEN_DOMCTL_createdomain, max_mem, destroydomain,
// pausedomain/unpausedomain (`public/domctl.h`, `arch-x86/xen.h`,
// `arch-arm.h` of Xen 4.17, interface version 0x15).
// ---------------------------------------------------------------------------

/// `XEN_DOMCTL_createdomain`.
pub const XEN_DOMCTL_CREATEDOMAIN: u32 = 1;
/// `XEN_DOMCTL_destroydomain`.
pub const XEN_DOMCTL_DESTROYDOMAIN: u32 = 2;
/// `XEN_DOMCTL_pausedomain`.
pub const XEN_DOMCTL_PAUSEDOMAIN: u32 = 3;
/// `XEN_DOMCTL_unpausedomain`.
pub const XEN_DOMCTL_UNPAUSEDOMAIN: u32 = 4;
/// `XEN_DOMCTL_max_mem`.
pub const XEN_DOMCTL_MAX_MEM: u32 = 11;

/// `XEN_DOMCTL_CDF_*`: flags of `xen_domctl_createdomain`.
pub mod cdf {
    /// `XEN_DOMCTL_CDF_hvm`: an HVM (or PVH) guest, not PV. Required on Arm.
    pub const HVM: u32 = 1 << 0;
    /// `XEN_DOMCTL_CDF_hap`: hardware-assisted paging. Required on Arm.
    pub const HAP: u32 = 1 << 1;
    /// `XEN_DOMCTL_CDF_s3_integrity`.
    pub const S3_INTEGRITY: u32 = 1 << 2;
    /// `XEN_DOMCTL_CDF_oos_off`.
    pub const OOS_OFF: u32 = 1 << 3;
    /// `XEN_DOMCTL_CDF_xs_domain`.
    pub const XS_DOMAIN: u32 = 1 << 4;
    /// `XEN_DOMCTL_CDF_iommu`.
    pub const IOMMU: u32 = 1 << 5;
    /// `XEN_DOMCTL_CDF_nested_virt`.
    pub const NESTED_VIRT: u32 = 1 << 6;
    /// `XEN_DOMCTL_CDF_vpmu`.
    pub const VPMU: u32 = 1 << 7;
    /// Every flag Xen 4.17 knows (`sanitise_domain_config` refuses others).
    pub const ALL: u32 =
        HVM | HAP | S3_INTEGRITY | OOS_OFF | XS_DOMAIN | IOMMU | NESTED_VIRT | VPMU;
}

/// `XEN_DOMCTL_GRANT_version_mask`: `grant_opts` holds the highest grant
/// table version the domain may use in its low 4 bits.
pub const XEN_DOMCTL_GRANT_VERSION_MASK: u32 = 0xf;

/// `XEN_DOMCTL_GRANT_version(v)`.
pub const fn xen_domctl_grant_version(v: u32) -> u32 {
    v & XEN_DOMCTL_GRANT_VERSION_MASK
}

/// `XEN_X86_EMU_*`: devices Xen emulates for an x86 domain.
pub mod x86_emu {
    /// `XEN_X86_EMU_LAPIC`.
    pub const LAPIC: u32 = 1 << 0;
    /// `XEN_X86_EMU_HPET`.
    pub const HPET: u32 = 1 << 1;
    /// `XEN_X86_EMU_PM`.
    pub const PM: u32 = 1 << 2;
    /// `XEN_X86_EMU_RTC`.
    pub const RTC: u32 = 1 << 3;
    /// `XEN_X86_EMU_IOAPIC`.
    pub const IOAPIC: u32 = 1 << 4;
    /// `XEN_X86_EMU_PIC`.
    pub const PIC: u32 = 1 << 5;
    /// `XEN_X86_EMU_VGA`.
    pub const VGA: u32 = 1 << 6;
    /// `XEN_X86_EMU_IOMMU`.
    pub const IOMMU: u32 = 1 << 7;
    /// `XEN_X86_EMU_PIT`.
    pub const PIT: u32 = 1 << 8;
    /// `XEN_X86_EMU_USE_PIRQ`.
    pub const USE_PIRQ: u32 = 1 << 9;
    /// `XEN_X86_EMU_VPCI`.
    pub const VPCI: u32 = 1 << 10;
    /// `XEN_X86_EMU_ALL`.
    pub const ALL: u32 =
        LAPIC | HPET | PM | RTC | IOAPIC | PIC | VGA | IOMMU | PIT | USE_PIRQ | VPCI;
    /// `XEN_X86_MSR_RELAXED` (`misc_flags`).
    pub const MSR_RELAXED: u32 = 1 << 0;
}

/// `XEN_DOMCTL_CONFIG_GIC_*` (Arm `gic_version`).
pub mod arm_gic {
    /// `XEN_DOMCTL_CONFIG_GIC_NATIVE`: whatever the host has (Xen writes
    /// back the version chosen).
    pub const NATIVE: u8 = 0;
    /// `XEN_DOMCTL_CONFIG_GIC_V2`.
    pub const V2: u8 = 1;
    /// `XEN_DOMCTL_CONFIG_GIC_V3`.
    pub const V3: u8 = 2;
    /// `XEN_DOMCTL_CONFIG_TEE_NONE` (`tee_type`).
    pub const TEE_NONE: u16 = 0;
}

/// `struct xen_arch_domainconfig` of x86 (`arch-x86/xen.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86ArchDomainConfig {
    /// `XEN_X86_EMU_*`.
    pub emulation_flags: u32,
    /// `XEN_X86_MSR_RELAXED` or 0.
    pub misc_flags: u32,
}

const _: () = {
    assert!(size_of::<X86ArchDomainConfig>() == 8);
    assert!(offset_of!(X86ArchDomainConfig, misc_flags) == 4);
};

/// `struct xen_arch_domainconfig` of Arm (`arch-arm.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmArchDomainConfig {
    /// IN/OUT: `XEN_DOMCTL_CONFIG_GIC_*`.
    pub gic_version: u8,
    /// Padding (implicit in C).
    pub pad: u8,
    /// IN: `XEN_DOMCTL_CONFIG_TEE_*`.
    pub tee_type: u16,
    /// IN: shared peripheral interrupts to emulate.
    pub nr_spis: u32,
    /// OUT: the device tree's timer clock-frequency, or 0.
    pub clock_frequency: u32,
}

const _: () = {
    assert!(size_of::<ArmArchDomainConfig>() == 12);
    assert!(offset_of!(ArmArchDomainConfig, tee_type) == 2);
    assert!(offset_of!(ArmArchDomainConfig, nr_spis) == 4);
    assert!(offset_of!(ArmArchDomainConfig, clock_frequency) == 8);
};

/// The `xen_arch_domainconfig` of the architecture being built (x86 on the
/// host, for the model).
#[cfg(not(target_arch = "aarch64"))]
pub type ArchDomainConfig = X86ArchDomainConfig;
/// The `xen_arch_domainconfig` of the architecture being built.
#[cfg(target_arch = "aarch64")]
pub type ArchDomainConfig = ArmArchDomainConfig;

/// `struct xen_domctl_createdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlCreateDomain {
    /// XSM label (ignored by the dummy policy).
    pub ssidref: u32,
    /// The toolstack's handle (a UUID).
    pub handle: [u8; 16],
    /// `XEN_DOMCTL_CDF_*` ([`cdf`]).
    pub flags: u32,
    /// `XEN_DOMCTL_IOMMU_*`; 0 unless `cdf::IOMMU`.
    pub iommu_opts: u32,
    /// vCPUs (at least 1).
    pub max_vcpus: u32,
    /// Highest event channel port.
    pub max_evtchn_port: u32,
    /// Grant-table frames (< 0: Xen's default, `gnttab_max_frames`, 64).
    pub max_grant_frames: i32,
    /// Maptrack frames (< 0: Xen's default, 1024).
    pub max_maptrack_frames: i32,
    /// `XEN_DOMCTL_GRANT_version(v)`: the highest grant version allowed.
    pub grant_opts: u32,
    /// Per-vCPU trace buffer bytes, 0 to disable.
    pub vmtrace_size: u32,
    /// CPU pool (0: the default pool).
    pub cpupool_id: u32,
    /// Architecture-specific part.
    pub arch: ArchDomainConfig,
}

const _: () = {
    assert!(offset_of!(DomctlCreateDomain, handle) == 4);
    assert!(offset_of!(DomctlCreateDomain, flags) == 20);
    assert!(offset_of!(DomctlCreateDomain, iommu_opts) == 24);
    assert!(offset_of!(DomctlCreateDomain, max_vcpus) == 28);
    assert!(offset_of!(DomctlCreateDomain, max_evtchn_port) == 32);
    assert!(offset_of!(DomctlCreateDomain, max_grant_frames) == 36);
    assert!(offset_of!(DomctlCreateDomain, max_maptrack_frames) == 40);
    assert!(offset_of!(DomctlCreateDomain, grant_opts) == 44);
    assert!(offset_of!(DomctlCreateDomain, vmtrace_size) == 48);
    assert!(offset_of!(DomctlCreateDomain, cpupool_id) == 52);
    assert!(offset_of!(DomctlCreateDomain, arch) == 56);
    // 8 bytes of arch config on x86, 12 on Arm; 4-byte aligned.
    #[cfg(not(target_arch = "aarch64"))]
    assert!(size_of::<DomctlCreateDomain>() == 64);
    #[cfg(target_arch = "aarch64")]
    assert!(size_of::<DomctlCreateDomain>() == 68);
};

/// `struct xen_domctl_max_mem`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlMaxMem {
    /// The new maximum, in KiB (Xen keeps `max_memkb >> 2` pages, clamped
    /// to 32 bits).
    pub max_memkb: u64,
}

const _: () = assert!(size_of::<DomctlMaxMem>() == 8);

/// The operation-specific part of a `struct xen_domctl` for one operation:
/// the payload `T`, inside the union's 128 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union DomctlPayloadOf<T: Copy> {
    /// The operation's structure.
    pub op: T,
    /// The union's declared size (`uint8_t pad[128]`), 8-byte aligned.
    pub pad: [u64; 16],
}

/// `struct xen_domctl` carrying payload `T` (`()` for operations without
/// one, such as destroydomain). Same layout as [`Domctl`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DomctlOf<T: Copy> {
    /// `XEN_DOMCTL_*`.
    pub cmd: u32,
    /// [`XEN_DOMCTL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// The target domain (IN); for createdomain, OUT the new domain's id.
    pub domain: u16,
    /// Padding.
    pub pad: [u16; 3],
    /// Operation-specific data.
    pub u: DomctlPayloadOf<T>,
}

impl<T: Copy> DomctlOf<T> {
    /// A domctl for `cmd` on `domain` carrying `op`, the rest of the union
    /// zeroed.
    pub fn new(cmd: u32, domain: u16, op: T) -> Self {
        let mut u = DomctlPayloadOf { pad: [0; 16] };
        u.op = op;
        Self {
            cmd,
            interface_version: XEN_DOMCTL_INTERFACE_VERSION,
            domain,
            pad: [0; 3],
            u,
        }
    }
}

const _: () = {
    assert!(size_of::<DomctlOf<DomctlCreateDomain>>() == 144);
    assert!(size_of::<DomctlOf<DomctlMaxMem>>() == 144);
    assert!(size_of::<DomctlOf<()>>() == 144);
    assert!(offset_of!(DomctlOf<DomctlCreateDomain>, domain) == 8);
    assert!(offset_of!(DomctlOf<DomctlCreateDomain>, u) == 16);
    assert!(offset_of!(DomctlOf<DomctlMaxMem>, u) == 16);
};

/// `XENMEM_resource_grant_table_id_status` (grant v2 status frames).
pub const RESOURCE_GRANT_TABLE_ID_STATUS: u32 = 1;
/// `XENMEM_resource_ioreq_server`.
pub const RESOURCE_IOREQ_SERVER: u16 = 0;
/// `XENMEM_resource_vmtrace_buf`.
pub const RESOURCE_VMTRACE_BUF: u16 = 2;
