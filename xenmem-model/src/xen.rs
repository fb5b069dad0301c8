//! A host-side model of Xen 4.17's memory operations, with fault injection.
//!
//! [`XenModel`] implements [`Hypervisor`] over a simulated machine (a pool of
//! machine frames) and simulated domains (a p2m, `tot_pages`, `max_pages`
//! each), so that the reservation engine can be tested on the host, fast and
//! adversarially. It is never meant to be *more forgiving* than real Xen: where
//! Xen returns a short count, a 0 or an error, so does the model, and where Xen
//! silently loses a frame for the guest (allocates it to the domain without a
//! GFN), the model does too and reports it through [`XenModel::leaked`].
//!
//! The dev-dependency of `xenmem` and `xenmem-agent`.
//!
//! # Source
//!
//! Modelled on Xen `RELEASE-4.17.7` (`stable-4.17`):
//! `xen/common/memory.c` (`do_memory_op`, `construct_memop_from_reservation`,
//! `max_order`, `increase_reservation`, `populate_physmap`,
//! `guest_remove_page`, `decrease_reservation`, `memory_exchange`),
//! `xen/common/page_alloc.c` (`alloc_domheap_pages`, `assign_pages`,
//! `get_free_buddy`, `bits_to_zone`), `xen/arch/x86/mm/physmap.c` and
//! `xen/arch/x86/mm/p2m.c` (`guest_physmap_add_page`, `p2m_add_page`,
//! `guest_physmap_remove_page`), `xen/arch/arm/p2m.c`
//! (`guest_physmap_add_entry`, `p2m_remove_mapping`), `steal_page` in
//! `xen/arch/{x86,arm}/mm.c`, `domain_get_maximum_gpfn`, the x86
//! `XENMEM_memory_map` in `arch_memory_op`, `XEN_DOMCTL_getdomaininfo` in
//! `xen/common/domctl.c`, `XENVER_get_features` in `xen/common/kernel.c`, and
//! the dummy XSM policy in `xen/include/xsm/dummy.h`.
//!
//! # What is modelled
//!
//! * **Calls and their early exits** (`do_memory_op`): for increase, decrease
//!   and populate every early exit returns the *start extent*, 0, never an
//!   error: more than `UINT_MAX >> MEMOP_EXTENT_SHIFT` extents, an empty list,
//!   an unknown domain, an `address_bits` of 12 or less (when it is below the
//!   machine's width), an XSM refusal (an unprivileged caller naming another
//!   domain), and an extent order above `max_order(current->domain)` — the
//!   *caller's* limit, not the target's. NUMA node bits in `mem_flags`
//!   (`propagate_node`, XSA-231) on a machine with one node, node 0: the
//!   hardware/control domain's node at or above `MAX_NUMNODES` (64 on x86,
//!   1 on Arm) returns 0, its exact request for another node than 0 finds
//!   no memory (0 extents); any other caller's exact request returns 0 and
//!   its plain node is ignored. `XENMEMF_vnode` (no domain has vNUMA) makes
//!   Xen ignore the node; the populate-on-demand bit is not modelled.
//! * **`increase_reservation`**: per extent `alloc_domheap_pages` (a
//!   naturally aligned, machine-contiguous chunk under the `address_bits`
//!   limit, refused when `tot_pages + 2^order > max_pages`); the MFN is written
//!   back **only for PV** domains. A translated domain's pages get no GFN: they
//!   count in `tot_pages` and are lost to the guest ([`XenModel::leaked`]).
//! * **`populate_physmap`**: per extent allocate as above, then
//!   `guest_physmap_add_page`. Over an already populated GFN the old frame
//!   stays allocated to the domain with no GFN (x86 `p2m_add_page` only
//!   invalidates its M2P entry; Arm overwrites the entry): leaked. If the
//!   mapping fails after the allocation (a GFN beyond the domain's p2m limit,
//!   or [`Fault::MapFailAt`]), memory.c does not free the pages: leaked too.
//!   PV domains get the MFN written back; translated ones keep their GFN.
//!   A direct-mapped domain (Arm dom0) never allocates: populate at GFN `g`
//!   succeeds only if machine frames `g..g+2^order` all belong to it.
//! * **`decrease_reservation`**: per extent, per page `guest_remove_page`; the
//!   first page that is not populated (or, for PV, not owned) ends the call,
//!   which returns the number of *whole* extents done: pages already removed
//!   from the failing extent stay removed. A direct-mapped domain keeps the
//!   frames (no `put_page_alloc_ref`), so its `tot_pages` does not go down and
//!   the frames can be populated back at GFN == MFN.
//! * **`exchange`** (`memory_exchange`): the order of checks is Xen's (EPERM
//!   for an order above the caller's max order, EINVAL for size mismatches, 0
//!   for an empty request, ESRCH, EPERM from XSM), then per chunk: steal the
//!   input pages (EINVAL for an unpopulated or foreign page; **EOPNOTSUPP for a
//!   translated domain**, as `steal_page` refuses them since XSA-217), allocate
//!   the output chunk (ENOMEM), then commit. `exchanged` counts the input
//!   extents of the chunks committed. Only PV domains can ever succeed.
//! * **Queries**: `current_reservation`/`maximum_reservation`/`maximum_gpfn`
//!   give ESRCH for an unknown domain and EPERM for an unprivileged caller
//!   naming another domain; `maximum_gpfn` is a high-water mark (the p2m's
//!   `max_mapped_pfn`), which never goes down. `domain_info` needs a
//!   privileged (control) caller even for itself (XSM_XS_PRIV); `DOMID_SELF`
//!   is EINVAL there.
//!
//! # PV domains
//!
//! For a PV domain the lists that decrease and exchange take are *machine*
//! frame numbers (a PV guest's GMFN is its MFN) and populate's GFNs are only
//! the M2P entries Xen records. [`XenModel::p2m`] of a PV domain is that M2P
//! view (GFN to the newest MFN populated there; an older MFN populated at the
//! same GFN loses its entry, where Xen leaves it stale), and `maximum_gpfn` is
//! the highest GFN populated (Xen gives the `max_pfn` the guest wrote). The
//! project does not target PV; the PV model is faithful but simple.
//!
//! # Deliberate simplifications
//!
//! * The allocator takes the highest naturally aligned free chunk that fits
//!   (Xen's buddy allocator scans zones from the highest down, then takes the
//!   head of the smallest free list that fits): the *placement* differs, the
//!   contract (alignment, contiguity, `address_bits`, failure when no aligned
//!   chunk is free, MFN 0 never handed out) does not. NUMA, claims,
//!   scrubbing, the DMA zone and hypercall continuations (invisible to the
//!   guest) are not modelled.
//! * Populate-on-demand, shared, paged, grant and foreign p2m entries are not
//!   modelled; no page ever has extra references.
//! * Reservation calls report [`Fault::Errno`] as an error although real Xen
//!   never returns an error for them: the trait allows it, so the engine must
//!   cope.
//! * `SCHEDOP_shutdown` records the reason and returns `Ok(())` (a real
//!   domain would never run again).

#[path = "window.rs"]
pub mod window;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use xenmem::addr::{DomId, Gfn, Mfn, Order, PageCount, PAGE_SHIFT};
use xenmem::xen::{
    abi, DomainInfo, Errno, ExchangeOutcome, ExchangeRequest, Features, Hypervisor, MemFlags,
    ShutdownReason, XenError, XenVersion,
};

/// `CONFIG_DOMU_MAX_ORDER` (x86 and Arm): the largest extent order an ordinary
/// domain may ask for.
pub const DOMU_MAX_ORDER: u8 = 9;
/// `CONFIG_HWDOM_MAX_ORDER` on x86.
pub const X86_HWDOM_MAX_ORDER: u8 = 12;
/// `CONFIG_HWDOM_MAX_ORDER` on Arm.
pub const ARM_HWDOM_MAX_ORDER: u8 = 10;
/// The control domain's limit (`CONFIG_PAGEALLOC_MAX_ORDER`: 18 on x86 and Arm).
/// Dom0 is both hardware and control domain, so it gets this.
pub const CTLDOM_MAX_ORDER: u8 = 18;
/// `UINT_MAX >> MEMOP_EXTENT_SHIFT`: a reservation call with more extents than
/// this returns 0 without doing anything.
pub const MAX_NR_EXTENTS: u64 = (u32::MAX >> 6) as u64;
/// `DOMID_FIRST_RESERVED`: domain ids from here on are special.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
/// Default p2m limit of an x86 translated domain: 48-bit guest-physical
/// addresses (4-level EPT/NPT).
pub const X86_GFN_LIMIT: u64 = 1 << (48 - PAGE_SHIFT);
/// Default p2m limit of an Arm domain: 40-bit IPA.
pub const ARM_GFN_LIMIT: u64 = 1 << (40 - PAGE_SHIFT);
/// Where libxl puts an x86 PVH domU's ACPI tables (0xfc000000), and how many
/// pages they took with `memory=64` (measured).
pub const XL_ACPI_GFN: u64 = 0xfc000;
/// See [`XL_ACPI_GFN`].
pub const XL_ACPI_PAGES: u64 = 9;
/// libxc's special pages of an x86 HVM/PVH domU: `0xff000 - 8`.
pub const XL_SPECIAL_GFN: u64 = 0xfeff8;
/// See [`XL_SPECIAL_GFN`].
pub const XL_SPECIAL_PAGES: u64 = 8;
/// `GUEST_RAM0_BASE` of an Arm domU, as a frame number (0x40000000).
pub const ARM_GUEST_RAM0_GFN: u64 = 0x40000;

/// Largest order the initial RAM of a domain is built with (1 GiB superpages,
/// as the domain builders try first).
const BUILD_MAX_ORDER: u32 = 18;

/// An operation of the [`Hypervisor`] trait, for [`Fault`]s and
/// [`XenModel::calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`Hypervisor::version`].
    Version,
    /// [`Hypervisor::features`].
    Features,
    /// [`Hypervisor::console_write`].
    ConsoleWrite,
    /// [`Hypervisor::current_reservation`].
    CurrentReservation,
    /// [`Hypervisor::maximum_reservation`].
    MaximumReservation,
    /// [`Hypervisor::maximum_gpfn`].
    MaximumGpfn,
    /// [`Hypervisor::memory_map`].
    MemoryMap,
    /// [`Hypervisor::domain_info`].
    DomainInfo,
    /// [`Hypervisor::shutdown`].
    Shutdown,
    /// [`Hypervisor::yield_cpu`].
    Yield,
    /// [`Hypervisor::increase_reservation`].
    IncreaseReservation,
    /// [`Hypervisor::decrease_reservation`].
    DecreaseReservation,
    /// [`Hypervisor::populate_physmap`].
    PopulatePhysmap,
    /// [`Hypervisor::exchange`].
    Exchange,
    /// [`Hypervisor::map_foreign_batch`].
    MapForeignBatch,
    /// [`Hypervisor::remove_from_physmap`].
    RemoveFromPhysmap,
    /// [`Hypervisor::domctl_createdomain`].
    CreateDomain,
    /// [`Hypervisor::domctl_max_mem`].
    MaxMem,
    /// [`Hypervisor::domctl_destroydomain`].
    DestroyDomain,
    /// [`Hypervisor::acquire_resource_size`] and
    /// [`Hypervisor::acquire_resource`].
    AcquireResource,
    /// [`Hypervisor::hvm_get_param`].
    HvmGetParam,
    /// [`Hypervisor::evtchn_send`].
    EvtchnSend,
    /// [`Hypervisor::evtchn_alloc_unbound`].
    EvtchnAllocUnbound,
    /// [`Hypervisor::evtchn_bind_interdomain`].
    EvtchnBindInterdomain,
    /// [`Hypervisor::evtchn_close`].
    EvtchnClose,
    /// [`Hypervisor::evtchn_unmask`].
    EvtchnUnmask,
    /// [`Hypervisor::evtchn_status`].
    EvtchnStatus,
    /// [`Hypervisor::sched_poll`].
    SchedPoll,
    /// [`Hypervisor::multicall_remove_from_physmap`]: the multicall itself;
    /// each entry is also a call of [`Op::RemoveFromPhysmap`], as in Xen,
    /// where it is a `memory_op` sub-call.
    Multicall,
}

const OP_COUNT: usize = 29;

impl Op {
    const fn index(self) -> usize {
        self as usize
    }
}

/// A fault to inject with [`XenModel::inject`].
///
/// `ShortAt`, `PartialExtent`, `MapFailAt` and `Errno` are queued and consumed
/// by the next call of their operation (whether or not that call reaches the
/// extent named); `ErrnoOnCall` lets `nth` calls pass first;
/// `ExchangeUnsupported` stays until [`XenModel::clear_faults`];
/// `ExhaustPool` acts at once. Only the first queued fault of an operation
/// is looked at per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next call of `op` stops at extent index `after_extents`, as when
    /// the allocator finds no chunk (increase, populate; exchange: ENOMEM for
    /// the chunk holding that input extent, so `exchanged` is rounded down to
    /// a chunk) or when `guest_remove_page` fails on the extent's first page
    /// (decrease). Nothing of that extent is done. For [`Op::Multicall`]:
    /// the first `after_extents` entries are carried out, then the multicall
    /// fails with EFAULT, as when Xen cannot read the next entry.
    ShortAt {
        /// The operation.
        op: Op,
        /// Extents done before the failure.
        after_extents: usize,
    },
    /// The next `decrease_reservation` removes the first `pages` pages of
    /// extent `after_extents`, then fails: it returns `after_extents`, and
    /// those pages are gone.
    PartialExtent {
        /// Whole extents done before the failing one.
        after_extents: usize,
        /// Pages of the failing extent removed before it fails.
        pages: u64,
    },
    /// The next `populate_physmap` allocates extent `after_extents` but fails
    /// to enter it in the p2m (a p2m pool out of pages): memory.c does not free
    /// the extent, so its frames stay with the domain with no GFN (leaked).
    MapFailAt {
        /// Extents done before the failing one.
        after_extents: usize,
    },
    /// The next call of `op` fails with `errno` and does nothing.
    Errno {
        /// The operation.
        op: Op,
        /// The error.
        errno: Errno,
    },
    /// The next `nth` calls of `op` pass; the one after fails with `errno`
    /// and does nothing (as [`Fault::Errno`]). With
    /// [`Op::RemoveFromPhysmap`] this fails one entry in the middle of a
    /// multicall: entry `nth` of the next one (when nothing else removes a
    /// frame in between).
    ErrnoOnCall {
        /// The operation.
        op: Op,
        /// Calls that pass first.
        nth: u32,
        /// The error.
        errno: Errno,
    },
    /// Every exchange fails with EOPNOTSUPP at its first page, as for a
    /// translated domain, even for PV domains.
    ExchangeUnsupported,
    /// Pin free frames, highest first, until only `leave_free` are free (a
    /// host whose memory went elsewhere).
    ExhaustPool {
        /// Free frames left.
        leave_free: u64,
    },
}

impl Fault {
    fn op(&self) -> Option<Op> {
        match *self {
            Fault::ShortAt { op, .. } | Fault::Errno { op, .. } | Fault::ErrnoOnCall { op, .. } => {
                Some(op)
            }
            Fault::PartialExtent { .. } => Some(Op::DecreaseReservation),
            Fault::MapFailAt { .. } => Some(Op::PopulatePhysmap),
            Fault::ExchangeUnsupported | Fault::ExhaustPool { .. } => None,
        }
    }
}

/// What [`XenModel`]'s set-up methods refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// A domain with this id exists already.
    DuplicateDomain(DomId),
    /// No domain with this id.
    NoSuchDomain(DomId),
    /// Not enough free frames to build the domain's RAM.
    OutOfMemory,
    /// The configuration is inconsistent (the reason).
    BadConfig(&'static str),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::DuplicateDomain(d) => write!(f, "domain {d} exists already"),
            ModelError::NoSuchDomain(d) => write!(f, "no domain {d}"),
            ModelError::OutOfMemory => write!(f, "not enough free machine frames"),
            ModelError::BadConfig(why) => write!(f, "bad domain configuration: {why}"),
        }
    }
}

/// How to build a domain of the model.
#[derive(Clone, Debug)]
pub struct DomainConfig {
    /// Its id (below [`DOMID_FIRST_RESERVED`]).
    pub domid: DomId,
    /// Xen translates its frames (PVH, HVM, Arm): `paging_mode_translate`.
    pub translated: bool,
    /// Guest-physical == machine address (Arm dom0); needs `translated`.
    pub direct_mapped: bool,
    /// The control domain: passes XSM checks on other domains
    /// (`is_control_domain`).
    pub privileged: bool,
    /// May write to Xen's console (`is_console`: dom0, dom0less domUs);
    /// others get EPERM from a release build of Xen.
    pub console: bool,
    /// `max_pages` (Xen keeps it in 32 bits; larger values are clamped).
    pub max_pages: u64,
    /// `max_order()` of this domain when it is the caller.
    pub max_order: u8,
    /// RAM populated at creation: `(first GFN, pages)` ranges. For a
    /// direct-mapped domain the machine frames are the same numbers and must
    /// be free.
    pub ram: Vec<(Gfn, u64)>,
    /// What `XENMEM_memory_map` gives it; `None`: ENOSYS (Arm).
    pub e820: Option<Vec<abi::E820Entry>>,
    /// What `XENVER_get_features` gives it.
    pub features: Features,
    /// The guest can learn its domid (x86 CPUID); not on Arm.
    pub cpuid_domid: bool,
    /// For a translated domain: GFNs at or above this cannot be mapped.
    pub gfn_limit: u64,
    /// `HVM_PARAM_*` values `HVMOP_get_param` returns (unset ones read 0, as
    /// in Xen).
    pub hvm_params: Vec<(u32, u64)>,
    /// Populate-on-demand (x86 HVM/PVH, `memory < maxmem`): GFN ranges that
    /// are PoD entries at creation (not populated, not counted), and
    /// `pod_cache` pages allocated to the domain for them (counted in
    /// `tot_pages`, in no p2m entry). See [`XenModel`]'s PoD notes.
    pub pod_entries: Vec<(Gfn, u64)>,
    /// See [`DomainConfig::pod_entries`].
    pub pod_cache: u64,
}

fn dom_pod_entries(r: &[(Gfn, u64)]) -> alloc::collections::BTreeSet<u64> {
    r.iter().flat_map(|&(g, n)| g.0..g.0 + n).collect()
}

fn ram_e820(gfn: Gfn, pages: u64) -> Vec<abi::E820Entry> {
    alloc::vec![abi::E820Entry {
        addr: gfn.0 << PAGE_SHIFT,
        size: pages << PAGE_SHIFT,
        kind: 1,
    }]
}

fn one_range(gfn: Gfn, pages: u64) -> Vec<(Gfn, u64)> {
    if pages > 0 {
        alloc::vec![(gfn, pages)]
    } else {
        Vec::new()
    }
}

impl DomainConfig {
    fn x86_features(translated: bool, hwdom: bool) -> Features {
        let mut f = Features::MEMORY_OP_VNODE;
        if translated {
            f |= Features::WRITABLE_PAGE_TABLES
                | Features::AUTO_TRANSLATED_PHYSMAP
                | Features::HVM_SAFE_PVCLOCK
                | Features::HVM_CALLBACK_VECTOR
                | Features::NOT_DIRECT_MAPPED;
        } else {
            f |= Features::DIRECT_MAPPED;
        }
        if hwdom {
            f |= Features::DOM0;
        }
        f
    }

    fn arm_features(direct_mapped: bool, hwdom: bool) -> Features {
        let mut f = Features::MEMORY_OP_VNODE
            | Features::WRITABLE_PAGE_TABLES
            | Features::AUTO_TRANSLATED_PHYSMAP
            | Features::ARM_SMCCC;
        f |= if direct_mapped {
            Features::DIRECT_MAPPED
        } else {
            Features::NOT_DIRECT_MAPPED
        };
        if hwdom {
            f |= Features::DOM0;
        }
        f
    }

    /// An x86 PVH domU built by a toolstack: `ram_pages` of RAM at GFN 0,
    /// `max_pages` = RAM, max order 9, an e820 with that RAM, no console.
    pub fn pvh_domu(domid: DomId, ram_pages: u64) -> Self {
        Self {
            domid,
            translated: true,
            direct_mapped: false,
            privileged: false,
            console: false,
            max_pages: ram_pages,
            max_order: DOMU_MAX_ORDER,
            ram: one_range(Gfn(0), ram_pages),
            e820: Some(ram_e820(Gfn(0), ram_pages)),
            features: Self::x86_features(true, false),
            cpuid_domid: true,
            gfn_limit: X86_GFN_LIMIT,
            hvm_params: Vec::new(),
            pod_entries: Vec::new(),
            pod_cache: 0,
        }
    }

    /// An x86 PVH domU as `xl create` builds it (`memory=maxmem`, measured
    /// under Xen 4.17): `ram_pages` of RAM at GFN 0, 9 pages of ACPI tables
    /// populated at 0xfc000 (an e820 ACPI range), 8 special pages populated at
    /// 0xfeff8 (an e820 reserved range: console ring at 0xfefff, xenstore at
    /// 0xfeffc), `max_pages` = RAM + 17 + 1 MiB, the console and xenstore HVM
    /// parameters set, no console_io.
    pub fn xl_pvh_domu(domid: DomId, ram_pages: u64) -> Self {
        let e820 = |addr: u64, pages: u64, kind: u32| abi::E820Entry {
            addr: addr << PAGE_SHIFT,
            size: pages << PAGE_SHIFT,
            kind,
        };
        let mut ram = one_range(Gfn(0), ram_pages);
        ram.push((Gfn(XL_ACPI_GFN), XL_ACPI_PAGES));
        ram.push((Gfn(XL_SPECIAL_GFN), XL_SPECIAL_PAGES));
        Self {
            max_pages: ram_pages + XL_ACPI_PAGES + XL_SPECIAL_PAGES + 256,
            ram,
            e820: Some(alloc::vec![
                e820(0, ram_pages, 1),
                e820(XL_ACPI_GFN, XL_ACPI_PAGES, 3),
                e820(XL_SPECIAL_GFN, XL_SPECIAL_PAGES, 2),
            ]),
            hvm_params: alloc::vec![
                (abi::hvm_param::STORE_PFN, XL_SPECIAL_GFN + 4),
                (abi::hvm_param::STORE_EVTCHN, 1),
                (abi::hvm_param::CONSOLE_PFN, XL_SPECIAL_GFN + 7),
                (abi::hvm_param::CONSOLE_EVTCHN, 2),
            ],
            ..Self::pvh_domu(domid, ram_pages)
        }
    }

    /// An x86 PVH domU made by `xl create` with `memory < maxmem`
    /// (populate-on-demand), as [`DomainConfig::xl_pvh_domu`] otherwise: the
    /// e820 has `maxmem_pages` of RAM, of which the first `low_pages` are
    /// populated and the rest are PoD entries, with a PoD cache that makes
    /// `tot_pages` = `memory_pages` + the 17 special pages (measured:
    /// nr_pages=16401 for memory=64 maxmem=128).
    pub fn xl_pvh_pod_domu(
        domid: DomId,
        memory_pages: u64,
        maxmem_pages: u64,
        low_pages: u64,
    ) -> Self {
        let mut c = Self::xl_pvh_domu(domid, maxmem_pages);
        c.ram[0] = (Gfn(0), low_pages);
        c.pod_entries = alloc::vec![(Gfn(low_pages), maxmem_pages - low_pages)];
        c.pod_cache = memory_pages - low_pages;
        c
    }

    /// An x86 PVH dom0: domid 0, privileged, console, max order 18,
    /// `max_pages` unlimited (`u32::MAX`, as observed).
    pub fn pvh_dom0(ram_pages: u64) -> Self {
        Self {
            domid: DomId(0),
            privileged: true,
            console: true,
            max_pages: u64::from(u32::MAX),
            max_order: CTLDOM_MAX_ORDER,
            features: Self::x86_features(true, true),
            ..Self::pvh_domu(DomId(0), ram_pages)
        }
    }

    /// An x86 PV domU: not translated (decrease and exchange take MFNs).
    pub fn pv_domu(domid: DomId, ram_pages: u64) -> Self {
        Self {
            translated: false,
            features: Self::x86_features(false, false),
            ..Self::pvh_domu(domid, ram_pages)
        }
    }

    /// An Arm dom0less domU: RAM at GFN 0x40000, `max_pages` = RAM, console
    /// (dom0less domUs have `is_console`), no e820, no CPUID domid.
    pub fn arm_domu(domid: DomId, ram_pages: u64) -> Self {
        Self {
            domid,
            translated: true,
            direct_mapped: false,
            privileged: false,
            console: true,
            max_pages: ram_pages,
            max_order: DOMU_MAX_ORDER,
            ram: one_range(Gfn(ARM_GUEST_RAM0_GFN), ram_pages),
            e820: None,
            features: Self::arm_features(false, false),
            cpuid_domid: false,
            gfn_limit: ARM_GFN_LIMIT,
            hvm_params: Vec::new(),
            pod_entries: Vec::new(),
            pod_cache: 0,
        }
    }

    /// An Arm dom0: direct-mapped RAM at machine frames `first_mfn..` (GFN ==
    /// MFN), privileged, `max_pages` = RAM (as observed), max order 18.
    pub fn arm_dom0(first_mfn: Mfn, ram_pages: u64) -> Self {
        Self {
            domid: DomId(0),
            direct_mapped: true,
            privileged: true,
            max_order: CTLDOM_MAX_ORDER,
            ram: one_range(Gfn(first_mfn.0), ram_pages),
            features: Self::arm_features(true, true),
            ..Self::arm_domu(DomId(0), ram_pages)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Pinned,
    /// Frame 0: Xen's, never in the heap (so no chunk can start there).
    Xen,
    Dom(u16),
}

/// The machine: frames `0..total`, who holds each, and a free bitmap.
struct Machine {
    total: u64,
    owner: Vec<Owner>,
    free: Vec<u64>,
    free_count: u64,
    pinned_count: u64,
}

impl Machine {
    fn new(total: u64) -> Self {
        let n = usize::try_from(total).unwrap_or(usize::MAX);
        let words = n.div_ceil(64);
        let mut free = alloc::vec![u64::MAX; words];
        if n % 64 != 0 {
            if let Some(last) = free.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        let mut m = Machine {
            total: n as u64,
            owner: alloc::vec![Owner::Free; n],
            free,
            free_count: n as u64,
            pinned_count: 0,
        };
        if n > 0 {
            m.take(0, Owner::Xen);
        }
        m
    }

    /// `get_order_from_pages(max_page) + PAGE_SHIFT`: address bits at or
    /// above this do not restrict anything.
    fn address_bits(&self) -> u32 {
        let order = if self.total <= 1 {
            0
        } else {
            64 - (self.total - 1).leading_zeros()
        };
        order + PAGE_SHIFT
    }

    fn owner(&self, m: u64) -> Option<Owner> {
        usize::try_from(m)
            .ok()
            .and_then(|i| self.owner.get(i).copied())
    }

    fn is_free(&self, m: u64) -> bool {
        self.owner(m) == Some(Owner::Free)
    }

    /// Give free frame `m` to `owner` (Pinned or a domain).
    fn take(&mut self, m: u64, owner: Owner) {
        let i = m as usize;
        if self.owner[i] == Owner::Free {
            self.free[i / 64] &= !(1u64 << (i % 64));
            self.free_count -= 1;
        }
        if owner == Owner::Pinned {
            self.pinned_count += 1;
        }
        self.owner[i] = owner;
    }

    /// Return frame `m` to the free pool.
    fn release(&mut self, m: u64) {
        let i = m as usize;
        match self.owner[i] {
            Owner::Free | Owner::Xen => return,
            Owner::Pinned => self.pinned_count -= 1,
            Owner::Dom(_) => {}
        }
        self.owner[i] = Owner::Free;
        self.free[i / 64] |= 1u64 << (i % 64);
        self.free_count += 1;
    }

    /// The highest free, naturally aligned chunk of `2^order` frames that ends
    /// at or below frame `limit`.
    fn find_chunk(&self, order: u32, limit: u64) -> Option<u64> {
        let n = 1u64.checked_shl(order)?;
        let end = self.total.min(limit);
        if order >= 64 || n > end {
            return None;
        }
        if n < 64 {
            let full = (1u64 << n) - 1;
            let mut w = ((end - 1) / 64) as usize;
            loop {
                let lo = w as u64 * 64;
                let mut word = self.free[w];
                if end - lo < 64 {
                    word &= (1u64 << (end - lo)) - 1;
                }
                if word != 0 {
                    let mut off = 64 - n;
                    loop {
                        if (word >> off) & full == full {
                            return Some(lo + off);
                        }
                        if off == 0 {
                            break;
                        }
                        off -= n;
                    }
                }
                if w == 0 {
                    return None;
                }
                w -= 1;
            }
        } else {
            let words = (n / 64) as usize;
            let mut base = (end - n) & !(n - 1);
            loop {
                let w0 = (base / 64) as usize;
                if self.free[w0..w0 + words].iter().all(|&x| x == u64::MAX) {
                    return Some(base);
                }
                if base == 0 {
                    return None;
                }
                base -= n;
            }
        }
    }
}

/// A domain of the model.
struct Domain {
    cfg: DomainConfig,
    tot_pages: u64,
    /// Frames allocated to the domain, each with the GFN it is mapped at
    /// (translated: its p2m entry; PV: its M2P entry) or `None`.
    frames: BTreeMap<Mfn, Option<Gfn>>,
    /// Translated: Xen's p2m. PV: the M2P view (GFN to newest MFN).
    p2m: BTreeMap<Gfn, Mfn>,
    /// `max_mapped_pfn`: the highest GFN ever mapped.
    max_mapped: u64,
    shutdown: Option<u32>,
    /// Translated: p2m entries of type `p2m_map_foreign` (another domain's
    /// frame, not owned, not counted in `tot_pages`).
    foreign: BTreeMap<Gfn, (u16, Mfn)>,
    /// Killed by destroydomain, kept while something refers to its pages
    /// (see [`dctl`]).
    dying: bool,
    /// Translated: p2m entries of another domain's grant-table frames mapped
    /// by acquire_resource: GFN to (domain, table frame index); see [`dctl`].
    acquired: BTreeMap<Gfn, (u16, u32)>,
    /// Populate-on-demand entries (GFNs).
    pod: alloc::collections::BTreeSet<u64>,
    /// The PoD cache: frames allocated to the domain, in no p2m entry.
    pod_cache: Vec<Mfn>,
}

impl Domain {
    /// An Arm domain (the model tells them by `XENFEAT_ARM_SMCCC_supported`,
    /// which only Arm domains get).
    fn is_arm(&self) -> bool {
        self.cfg.features.contains(Features::ARM_SMCCC)
    }

    /// `guest_physmap_add_page` for `n` frames from `mfn` at `gfn` (all owned
    /// by the domain; for a translated domain the range is within its limit).
    fn physmap_add(&mut self, gfn: u64, mfn: u64, n: u64) {
        for j in 0..n {
            let g = Gfn(gfn.wrapping_add(j));
            let m = Mfn(mfn + j);
            // The new frame's old mapping elsewhere goes (p2m_add_page's
            // m->p pass).
            if let Some(Some(og)) = self.frames.get(&m).copied() {
                if og != g && self.p2m.get(&og) == Some(&m) {
                    self.p2m.remove(&og);
                }
            }
            // The old frame at this GFN loses its GFN but stays allocated.
            if let Some(om) = self.p2m.insert(g, m) {
                if om != m {
                    if let Some(e) = self.frames.get_mut(&om) {
                        *e = None;
                    }
                }
            }
            self.frames.insert(m, Some(g));
        }
        if n > 0 {
            self.max_mapped = self.max_mapped.max(gfn.saturating_add(n - 1));
        }
    }

    fn info(&self) -> DomainInfo {
        DomainInfo {
            domid: self.cfg.domid,
            tot_pages: PageCount(self.tot_pages),
            max_pages: PageCount(self.cfg.max_pages),
            shutdown: self.shutdown,
            dying: self.dying,
        }
    }
}

/// Machine frames one 2 MiB chunk of the M2P covers (8 bytes an entry).
const M2P_CHUNK_FRAMES: u64 = (2 << 20) / 8;

struct State {
    machine: Machine,
    domains: BTreeMap<u16, Domain>,
    current: Option<u16>,
    version: XenVersion,
    console: Vec<u8>,
    /// `(domid, port)` of every `EVTCHNOP_send`, in order.
    sends: Vec<(u16, u32)>,
    faults: Vec<Fault>,
    exchange_unsupported: bool,
    calls: [u64; OP_COUNT],
    /// createdomain's `rover`: the last domid it picked (see [`dctl`]).
    rover: u16,
    /// Event channels and shared_info pages (see [`evt`]).
    evt: evt::EvtModel,
    /// The machine-to-phys table, once [`XenModel::enable_m2p`] made it:
    /// per 2 MiB chunk, its first frame, or `None` where no RAM lies in the
    /// machine frames the chunk covers (Xen never fills those).
    m2p: Option<Vec<Option<u64>>>,
}

fn err(e: Errno) -> XenError {
    XenError::Errno(e)
}

/// `bits_to_zone()`: allocations with `address_bits` `b` come from zones up to
/// this one, i.e. frames below `2^bits_to_zone(b)`.
fn bits_to_zone(b: u32) -> u32 {
    if b < PAGE_SHIFT + 1 {
        1
    } else {
        b - PAGE_SHIFT
    }
}

impl State {
    /// The 512 entries of the M2P page in machine frame `frame`, if it is
    /// one: per machine frame, the GFN its owner has it at, or
    /// `INVALID_M2P_ENTRY` (all-ones: free, Xen's, not RAM, no GFN).
    fn m2p_page(&self, frame: u64) -> Option<Vec<u64>> {
        let chunks = self.m2p.as_ref()?;
        let (c, base) = chunks.iter().enumerate().find_map(|(c, b)| {
            b.filter(|b| (*b..*b + 512).contains(&frame))
                .map(|b| (c, b))
        })?;
        let first = c as u64 * M2P_CHUNK_FRAMES + (frame - base) * 512;
        Some(
            (first..first + 512)
                .map(|m| match self.machine.owner(m) {
                    Some(Owner::Dom(d)) => self
                        .domains
                        .get(&d)
                        .and_then(|dom| dom.frames.get(&Mfn(m)).copied().flatten())
                        .map_or(u64::MAX, |g| g.0),
                    _ => u64::MAX,
                })
                .collect(),
        )
    }

    fn enter(&mut self, op: Op) -> Option<Fault> {
        self.calls[op.index()] += 1;
        let i = self.faults.iter().position(|f| f.op() == Some(op))?;
        if let Fault::ErrnoOnCall { nth, errno, .. } = &mut self.faults[i] {
            if *nth > 0 {
                *nth -= 1;
                return None;
            }
            let errno = *errno;
            self.faults.remove(i);
            return Some(Fault::Errno { op, errno });
        }
        Some(self.faults.remove(i))
    }

    fn caller(&self) -> Option<&Domain> {
        self.current.and_then(|c| self.domains.get(&c))
    }

    /// `rcu_lock_domain_by_any_id`.
    fn lookup_any(&self, dom: DomId) -> Option<u16> {
        if dom == DomId::SELF {
            self.current.filter(|c| self.domains.contains_key(c))
        } else {
            self.domains.contains_key(&dom.0).then_some(dom.0)
        }
    }

    /// The dummy XSM policy's `XSM_TARGET`: itself, or the control domain.
    fn xsm_target(&self, target: u16) -> bool {
        match self.caller() {
            Some(c) => c.cfg.domid.0 == target || c.cfg.privileged,
            None => false,
        }
    }

    /// `do_memory_op` and `construct_memop_from_reservation` for the three
    /// reservation calls, plus their `max_order(current->domain)` check:
    /// the target domain and the frame limit of allocations, or `None` when
    /// Xen returns 0 at once.
    fn reservation_target(
        &self,
        dom: DomId,
        nr: usize,
        order: Order,
        flags: MemFlags,
    ) -> Option<(u16, u64)> {
        if nr as u64 > MAX_NR_EXTENTS || nr == 0 {
            return None;
        }
        let d = self.lookup_any(dom)?;
        let limit = match flags.get_address_bits() {
            Some(b) if u32::from(b) < self.machine.address_bits() => {
                if u32::from(b) <= PAGE_SHIFT {
                    return None;
                }
                1u64 << bits_to_zone(u32::from(b))
            }
            _ => u64::MAX,
        };
        let limit = if self.node_has_memory(flags)? {
            limit
        } else {
            0
        };
        if !self.xsm_target(d) {
            return None;
        }
        if order.get() > self.caller()?.cfg.max_order {
            return None;
        }
        Some((d, limit))
    }

    /// `propagate_node` (with `construct_memop_from_reservation`'s
    /// `XENMEMF_vnode` branch, for domains without vNUMA: the node bits are
    /// then ignored), against a machine with one NUMA node, node 0:
    /// `None` when Xen refuses the flags (the call returns 0: a node at or
    /// above `MAX_NUMNODES` from the hardware/control domain, an exact
    /// request from any other caller, which otherwise has its node
    /// ignored); `Some(false)` when allocations must come from a node
    /// without memory (an exact request for a node other than 0: they
    /// fail, as `get_free_buddy` gives up on an exact node).
    /// `MAX_NUMNODES` is 64 on x86 and 1 on Arm (Xen 4.17 has no Arm NUMA).
    fn node_has_memory(&self, flags: MemFlags) -> Option<bool> {
        const XENMEMF_VNODE: u32 = 1 << 18;
        let Some(node) = flags.get_node() else {
            return Some(true);
        };
        if flags.raw() & XENMEMF_VNODE != 0 {
            return Some(true);
        }
        let caller = self.caller()?;
        if !caller.cfg.privileged {
            return (!flags.is_exact_node()).then_some(true);
        }
        let max_numnodes = if caller.is_arm() { 1 } else { 64 };
        if node >= max_numnodes {
            return None;
        }
        Some(!flags.is_exact_node() || node == 0)
    }

    /// `alloc_domheap_pages(d, order, MEMF_bits)`: a machine-contiguous,
    /// aligned chunk assigned to `d` (its frames get no GFN), or `None` when
    /// no chunk is free or `assign_pages` refuses it (`max_pages`, a dying
    /// domain).
    fn alloc_domheap(&mut self, d: u16, order: u32, limit: u64) -> Option<u64> {
        let n = 1u64 << order;
        let dom = self.domains.get_mut(&d)?;
        if dom.dying {
            return None;
        }
        if dom.tot_pages > dom.cfg.max_pages || n > dom.cfg.max_pages - dom.tot_pages {
            return None;
        }
        let base = self.machine.find_chunk(order, limit)?;
        for m in base..base + n {
            self.machine.take(m, Owner::Dom(d));
            dom.frames.insert(Mfn(m), None);
        }
        dom.tot_pages += n;
        Some(base)
    }

    /// `guest_remove_page(d, gmfn)`.
    /// `p2m_pod_decrease_reservation` (x86, Xen 4.17) for the extent of `n`
    /// frames at `g`: PoD entries in it are dropped; while there are more
    /// entries than cache pages, populated pages of the extent move into the
    /// cache instead of going back to Xen ("steal for cache"); afterwards a
    /// cache larger than the entries left shrinks to them, freeing pages.
    /// `true` if the extent needs nothing more; `false` sends the rest of it
    /// down the ordinary path, page by page.
    fn pod_decrease(&mut self, d: u16, g: u64, n: u64) -> bool {
        let Some(dom) = self.domains.get_mut(&d) else {
            return false;
        };
        let steal = dom.pod.len() > dom.pod_cache.len();
        let pod = dom.pod.range(g..g + n).count();
        if pod == 0 && !steal {
            return false;
        }
        let mut nonpod = 0;
        for f in g..g + n {
            if dom.pod.remove(&f) {
                continue;
            }
            match dom.p2m.get(&Gfn(f)).copied() {
                Some(m) if dom.pod.len() > dom.pod_cache.len() => {
                    dom.p2m.remove(&Gfn(f));
                    dom.frames.insert(m, None);
                    dom.pod_cache.push(m);
                }
                Some(_) => nonpod += 1,
                None => {}
            }
        }
        while dom.pod.len() < dom.pod_cache.len() {
            let Some(m) = dom.pod_cache.pop() else { break };
            dom.frames.remove(&m);
            dom.tot_pages -= 1;
            self.machine.release(m.0);
        }
        nonpod == 0
    }

    fn guest_remove_page(&mut self, d: u16, g: u64) -> Result<(), Errno> {
        let dom = self.domains.get_mut(&d).ok_or(Errno::ESRCH)?;
        if dom.cfg.translated {
            // x86: -ENOENT for p2m_invalid; Arm: -EINVAL for INVALID_MFN.
            let m = dom.p2m.remove(&Gfn(g)).ok_or(Errno::EINVAL)?;
            if dom.cfg.direct_mapped {
                // The page is kept allocated (no put_page_alloc_ref).
                dom.frames.insert(m, None);
            } else {
                dom.frames.remove(&m);
                dom.tot_pages -= 1;
                self.machine.release(m.0);
            }
        } else {
            // PV: the GMFN is the MFN.
            if g >= self.machine.total {
                return Err(Errno::EINVAL);
            }
            if self.machine.owner(g) != Some(Owner::Dom(d)) {
                return Err(Errno::ENXIO);
            }
            if let Some(Some(gfn)) = dom.frames.remove(&Mfn(g)) {
                if dom.p2m.get(&gfn) == Some(&Mfn(g)) {
                    dom.p2m.remove(&gfn);
                }
            }
            dom.tot_pages -= 1;
            self.machine.release(g);
        }
        Ok(())
    }

    fn increase_reservation(
        &mut self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        out: &mut [Mfn],
    ) -> Result<usize, XenError> {
        let fault = self.enter(Op::IncreaseReservation);
        if let Some(Fault::Errno { errno, .. }) = fault {
            return Err(err(errno));
        }
        let Some((d, limit)) = self.reservation_target(dom, out.len(), order, flags) else {
            return Ok(0);
        };
        let translated = self.domains.get(&d).is_some_and(|x| x.cfg.translated);
        let mut i = 0;
        while i < out.len() {
            if matches!(fault, Some(Fault::ShortAt { after_extents, .. }) if after_extents == i) {
                break;
            }
            let Some(m) = self.alloc_domheap(d, u32::from(order.get()), limit) else {
                break;
            };
            // Only a PV domain is told the machine address.
            if !translated {
                out[i] = Mfn(m);
            }
            i += 1;
        }
        Ok(i)
    }

    fn populate_physmap(
        &mut self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        gfns: &mut [Gfn],
    ) -> Result<usize, XenError> {
        let fault = self.enter(Op::PopulatePhysmap);
        if let Some(Fault::Errno { errno, .. }) = fault {
            return Err(err(errno));
        }
        let Some((d, limit)) = self.reservation_target(dom, gfns.len(), order, flags) else {
            return Ok(0);
        };
        let n = order.pages().0;
        let Some(cfg) = self.domains.get(&d).map(|x| x.cfg.clone()) else {
            return Ok(0);
        };
        let mut i = 0;
        while i < gfns.len() {
            if matches!(fault, Some(Fault::ShortAt { after_extents, .. }) if after_extents == i) {
                break;
            }
            let gpfn = gfns[i].0;
            let mfn = if cfg.direct_mapped {
                // mfn = gpfn; every frame must be valid and the domain's.
                let ok = gpfn.checked_add(n).is_some_and(|e| e <= self.machine.total)
                    && (gpfn..gpfn + n).all(|m| self.machine.owner(m) == Some(Owner::Dom(d)));
                if !ok {
                    break;
                }
                gpfn
            } else {
                match self.alloc_domheap(d, u32::from(order.get()), limit) {
                    Some(m) => m,
                    None => break,
                }
            };
            // guest_physmap_add_page; on failure the allocated extent is not
            // freed (memory.c just stops): its frames are leaked.
            let map_fail =
                matches!(fault, Some(Fault::MapFailAt { after_extents }) if after_extents == i);
            let fits = match gpfn.checked_add(n) {
                Some(end) => !cfg.translated || end <= cfg.gfn_limit,
                None => false,
            };
            if map_fail || !fits {
                break;
            }
            if let Some(x) = self.domains.get_mut(&d) {
                x.physmap_add(gpfn, mfn, n);
            }
            if !cfg.translated {
                gfns[i] = Gfn(mfn);
            }
            i += 1;
        }
        Ok(i)
    }

    fn decrease_reservation(
        &mut self,
        dom: DomId,
        order: Order,
        gfns: &[Gfn],
    ) -> Result<usize, XenError> {
        let fault = self.enter(Op::DecreaseReservation);
        if let Some(Fault::Errno { errno, .. }) = fault {
            return Err(err(errno));
        }
        let Some((d, _)) = self.reservation_target(dom, gfns.len(), order, MemFlags::NONE) else {
            return Ok(0);
        };
        let n = order.pages().0;
        let mut i = 0;
        'out: while i < gfns.len() {
            if matches!(fault, Some(Fault::ShortAt { after_extents, .. }) if after_extents == i) {
                break;
            }
            let stop_at = match fault {
                Some(Fault::PartialExtent {
                    after_extents,
                    pages,
                }) if after_extents == i => Some(pages),
                _ => None,
            };
            let gmfn = gfns[i].0;
            if stop_at.is_none() && self.pod_decrease(d, gmfn, n) {
                i += 1;
                continue;
            }
            for j in 0..n {
                if stop_at == Some(j) {
                    break 'out;
                }
                let Some(g) = gmfn.checked_add(j) else {
                    break 'out;
                };
                if self.guest_remove_page(d, g).is_err() {
                    break 'out;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn exchange(&mut self, req: &mut ExchangeRequest<'_>) -> ExchangeOutcome {
        let fail = |exchanged: u64, e: Errno| ExchangeOutcome {
            exchanged: exchanged as usize,
            result: Err(err(e)),
        };
        let fault = self.enter(Op::Exchange);
        if let Some(Fault::Errno { errno, .. }) = fault {
            return fail(0, errno);
        }
        let Some(caller_max) = self.caller().map(|c| c.cfg.max_order) else {
            return fail(0, Errno::ESRCH);
        };
        let in_order = u32::from(req.in_order.get());
        let out_order = u32::from(req.out_order.get());
        if req.in_order.get().max(req.out_order.get()) > caller_max {
            return fail(0, Errno::EPERM);
        }
        let in_nr = req.input.len() as u64;
        let out_nr = req.output.len() as u64;
        if (u64::MAX >> in_order) < in_nr
            || (u64::MAX >> out_order) < out_nr
            || (in_nr << in_order) != (out_nr << out_order)
        {
            return fail(0, Errno::EINVAL);
        }
        if in_nr == 0 {
            return ExchangeOutcome {
                exchanged: 0,
                result: Ok(()),
            };
        }
        let Some(d) = self.lookup_any(req.dom) else {
            return fail(0, Errno::ESRCH);
        };
        if !self.xsm_target(d) {
            return fail(0, Errno::EPERM);
        }
        let limit = match req.out_flags.get_address_bits() {
            Some(b) => 1u64 << bits_to_zone(u32::from(b)).min(63),
            None => u64::MAX,
        };
        let (in_chunk, out_chunk) = if in_order <= out_order {
            (out_order - in_order, 0)
        } else {
            (0, in_order - out_order)
        };
        let Some(cfg) = self.domains.get(&d).map(|x| x.cfg.clone()) else {
            return fail(0, Errno::ESRCH);
        };
        let n_in = 1u64 << in_order;
        let n_out = 1u64 << out_order;
        for i in 0..(in_nr >> in_chunk) {
            let done = i << in_chunk;
            if matches!(fault, Some(Fault::ShortAt { after_extents, .. })
                if (after_extents as u64) >> in_chunk == i)
            {
                return fail(done, Errno::ENOMEM);
            }
            // Steal a chunk's worth of input pages.
            let mut stolen: Vec<u64> = Vec::new();
            let mut seen: BTreeSet<u64> = BTreeSet::new();
            for j in 0..(1u64 << in_chunk) {
                let gmfn = req.input[(done + j) as usize].0;
                for k in 0..n_in {
                    let Some(g) = gmfn.checked_add(k) else {
                        return fail(done, Errno::EINVAL);
                    };
                    let mfn = if cfg.translated {
                        self.domains
                            .get(&d)
                            .and_then(|x| x.p2m.get(&Gfn(g)))
                            .map(|m| m.0)
                    } else {
                        (g < self.machine.total).then_some(g)
                    };
                    let Some(mfn) = mfn else {
                        return fail(done, Errno::EINVAL);
                    };
                    // steal_page: translated domains (paging_mode_external on
                    // x86, always on Arm) cannot give pages up.
                    if cfg.translated || self.exchange_unsupported {
                        return fail(done, Errno::EOPNOTSUPP);
                    }
                    if self.machine.owner(mfn) != Some(Owner::Dom(d)) || !seen.insert(mfn) {
                        return fail(done, Errno::EINVAL);
                    }
                    stolen.push(mfn);
                }
            }
            // Allocate a chunk's worth of output extents (MEMF_no_refcount:
            // max_pages does not apply).
            let mut outs: Vec<u64> = Vec::new();
            for _ in 0..(1u64 << out_chunk) {
                match self.machine.find_chunk(out_order, limit) {
                    Some(b) => {
                        for m in b..b + n_out {
                            self.machine.take(m, Owner::Dom(d));
                        }
                        outs.push(b);
                    }
                    None => {
                        for &b in &outs {
                            for m in b..b + n_out {
                                self.machine.release(m);
                            }
                        }
                        return fail(done, Errno::ENOMEM);
                    }
                }
            }
            // Commit: free the input pages, map the output extents. tot_pages
            // does not change (as many pages in as out).
            let Some(dom) = self.domains.get_mut(&d) else {
                return fail(done, Errno::ESRCH);
            };
            for m in stolen {
                if let Some(Some(g)) = dom.frames.remove(&Mfn(m)) {
                    if dom.p2m.get(&g) == Some(&Mfn(m)) {
                        dom.p2m.remove(&g);
                    }
                }
                self.machine.release(m);
            }
            for (j, b) in outs.into_iter().enumerate() {
                let idx = ((i << out_chunk) as usize) + j;
                for m in b..b + n_out {
                    dom.frames.insert(Mfn(m), None);
                }
                let gpfn = req.output[idx].0;
                let fits = match gpfn.checked_add(n_out) {
                    Some(end) => !cfg.translated || end <= cfg.gfn_limit,
                    None => false,
                };
                if fits {
                    dom.physmap_add(gpfn, b, n_out);
                }
                if !cfg.translated {
                    req.output[idx] = Gfn(b);
                }
            }
        }
        ExchangeOutcome {
            exchanged: req.input.len(),
            result: Ok(()),
        }
    }

    /// XENMEM_{current,maximum}_reservation and maximum_gpfn: the domain, or
    /// ESRCH / EPERM.
    fn stat_target(&self, dom: DomId) -> Result<&Domain, XenError> {
        let d = self.lookup_any(dom).ok_or(err(Errno::ESRCH))?;
        if !self.xsm_target(d) {
            return Err(err(Errno::EPERM));
        }
        self.domains.get(&d).ok_or(err(Errno::ESRCH))
    }

    fn errno_fault(&mut self, op: Op) -> Result<(), XenError> {
        match self.enter(op) {
            Some(Fault::Errno { errno, .. }) => Err(err(errno)),
            _ => Ok(()),
        }
    }
}

/// A model of Xen 4.17 and its domains; see the [module docs](self).
///
/// Operations act as [`XenModel::current`] ("self") calling Xen.
pub struct XenModel {
    state: RefCell<State>,
    /// Grant tables, grant mappings and page contents (see [`gnt`]).
    gnt: RefCell<gnt::GntModel>,
    /// What a blocking `SCHEDOP_poll` runs (see [`evt`]).
    poll_hook: RefCell<Option<evt::PollHook>>,
}

impl fmt::Debug for XenModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("XenModel")
            .field("total_mfns", &s.machine.total)
            .field("free", &s.machine.free_count)
            .field("pinned", &s.machine.pinned_count)
            .field("domains", &s.domains.keys().collect::<Vec<_>>())
            .field("current", &s.current)
            .finish()
    }
}

/// SplitMix64, for [`XenModel::fragment`].
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl XenModel {
    /// A machine of `total_mfns` frames (`0..total_mfns`) and no domain. All
    /// are free except MFN 0, which Xen keeps (its heap never holds it, so no
    /// chunk starts there). The model keeps about 4 bytes of state per frame.
    pub fn new(total_mfns: u64) -> Self {
        let mut extra = [0u8; abi::XEN_EXTRAVERSION_LEN];
        extra[..2].copy_from_slice(b".7");
        XenModel {
            state: RefCell::new(State {
                machine: Machine::new(total_mfns),
                domains: BTreeMap::new(),
                current: None,
                version: XenVersion {
                    major: 4,
                    minor: 17,
                    extra,
                },
                console: Vec::new(),
                sends: Vec::new(),
                faults: Vec::new(),
                exchange_unsupported: false,
                calls: [0; OP_COUNT],
                rover: 0,
                evt: evt::EvtModel::default(),
                m2p: None,
            }),
            gnt: RefCell::new(gnt::GntModel::default()),
            poll_hook: RefCell::new(None),
        }
    }

    /// Set what `XENVER_version`/`XENVER_extraversion` answer (default 4.17.7).
    pub fn set_version(&self, v: XenVersion) {
        self.state.borrow_mut().version = v;
    }

    /// Create a domain and populate its initial RAM (with the largest aligned
    /// chunks that fit, up to 1 GiB). The first domain added becomes the
    /// current one.
    pub fn add_domain(&self, cfg: DomainConfig) -> Result<(), ModelError> {
        let mut s = self.state.borrow_mut();
        let s = &mut *s;
        let id = cfg.domid.0;
        if id >= DOMID_FIRST_RESERVED {
            return Err(ModelError::BadConfig("domid is a reserved one"));
        }
        if s.domains.contains_key(&id) {
            return Err(ModelError::DuplicateDomain(cfg.domid));
        }
        if cfg.direct_mapped && !cfg.translated {
            return Err(ModelError::BadConfig("direct-mapped needs translated"));
        }
        let mut cfg = cfg;
        cfg.max_pages = cfg.max_pages.min(u64::from(u32::MAX));
        cfg.max_order = cfg.max_order.min(Order::MAX);
        // Check the ranges: no overflow, within limits, no overlap.
        let mut total: u64 = 0;
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for &(g, n) in &cfg.ram {
            let end =
                g.0.checked_add(n)
                    .ok_or(ModelError::BadConfig("RAM range overflows"))?;
            if cfg.translated && end > cfg.gfn_limit {
                return Err(ModelError::BadConfig("RAM beyond the p2m limit"));
            }
            if cfg.direct_mapped && end > s.machine.total {
                return Err(ModelError::BadConfig(
                    "direct-mapped RAM beyond the machine",
                ));
            }
            if seen.range(..end).next_back().is_some_and(|(_, &e)| e > g.0) {
                return Err(ModelError::BadConfig("RAM ranges overlap"));
            }
            if n > 0 {
                seen.insert(g.0, end);
            }
            total = total
                .checked_add(n)
                .ok_or(ModelError::BadConfig("RAM too large"))?;
        }
        if total > cfg.max_pages {
            return Err(ModelError::BadConfig("RAM above max_pages"));
        }
        if cfg.direct_mapped {
            for &(g, n) in &cfg.ram {
                if !(g.0..g.0 + n).all(|m| s.machine.is_free(m)) {
                    return Err(ModelError::BadConfig("direct-mapped RAM is not free"));
                }
            }
        } else if total > s.machine.free_count {
            return Err(ModelError::OutOfMemory);
        }
        if total + cfg.pod_cache > cfg.max_pages {
            return Err(ModelError::BadConfig("RAM and PoD cache above max_pages"));
        }
        let cfg_pod = cfg.pod_entries.clone();
        let mut dom = Domain {
            cfg,
            tot_pages: 0,
            frames: BTreeMap::new(),
            p2m: BTreeMap::new(),
            max_mapped: 0,
            shutdown: None,
            foreign: BTreeMap::new(),
            dying: false,
            acquired: BTreeMap::new(),
            pod: dom_pod_entries(&cfg_pod),
            pod_cache: Vec::new(),
        };
        for _ in 0..dom.cfg.pod_cache {
            let m = s
                .machine
                .find_chunk(0, u64::MAX)
                .ok_or(ModelError::OutOfMemory)?;
            s.machine.take(m, Owner::Dom(id));
            dom.frames.insert(Mfn(m), None);
            dom.pod_cache.push(Mfn(m));
            dom.tot_pages += 1;
        }
        let ram = dom.cfg.ram.clone();
        for (g, n) in ram {
            let (start, end) = (g.0, g.0 + n);
            let mut at = start;
            while at < end {
                if dom.cfg.direct_mapped {
                    s.machine.take(at, Owner::Dom(id));
                    dom.frames.insert(Mfn(at), None);
                    dom.physmap_add(at, at, 1);
                    dom.tot_pages += 1;
                    at += 1;
                    continue;
                }
                let align = if at == 0 { 63 } else { at.trailing_zeros() };
                let fit = 63 - (end - at).leading_zeros();
                let mut order = BUILD_MAX_ORDER.min(align).min(fit);
                let base = loop {
                    if let Some(b) = s.machine.find_chunk(order, u64::MAX) {
                        break b;
                    }
                    if order == 0 {
                        // Unreachable: free_count was checked above.
                        return Err(ModelError::OutOfMemory);
                    }
                    order -= 1;
                };
                let k = 1u64 << order;
                for m in base..base + k {
                    s.machine.take(m, Owner::Dom(id));
                    dom.frames.insert(Mfn(m), None);
                }
                dom.physmap_add(at, base, k);
                dom.tot_pages += k;
                at += k;
            }
        }
        s.domains.insert(id, dom);
        if s.current.is_none() {
            s.current = Some(id);
        }
        Ok(())
    }

    /// Make `dom` the calling domain (what `DOMID_SELF` means).
    pub fn set_current(&self, dom: DomId) -> Result<(), ModelError> {
        let mut s = self.state.borrow_mut();
        if !s.domains.contains_key(&dom.0) {
            return Err(ModelError::NoSuchDomain(dom));
        }
        s.current = Some(dom.0);
        Ok(())
    }

    /// The calling domain.
    pub fn current(&self) -> Option<DomId> {
        self.state.borrow().current.map(DomId)
    }

    /// Set a domain's `max_pages` (`XEN_DOMCTL_max_mem` from a toolstack);
    /// clamped to 32 bits. It may go below `tot_pages`, as in Xen.
    pub fn set_max_pages(&self, dom: DomId, pages: u64) -> Result<(), ModelError> {
        let mut s = self.state.borrow_mut();
        let d = s
            .domains
            .get_mut(&dom.0)
            .ok_or(ModelError::NoSuchDomain(dom))?;
        d.cfg.max_pages = pages.min(u64::from(u32::MAX));
        Ok(())
    }

    /// Pin each free frame with probability `fraction` (a deterministic
    /// function of `seed`), so that aligned high-order chunks become scarce;
    /// returns the number of frames pinned.
    pub fn fragment(&self, seed: u64, fraction: f64) -> u64 {
        let mut s = self.state.borrow_mut();
        let mut rng = SplitMix(seed);
        let all = fraction >= 1.0;
        let threshold = if fraction > 0.0 {
            (fraction * 18_446_744_073_709_551_616.0) as u64
        } else {
            0
        };
        let mut pinned = 0;
        for m in 0..s.machine.total {
            let r = rng.next();
            if s.machine.is_free(m) && (all || r < threshold) {
                s.machine.take(m, Owner::Pinned);
                pinned += 1;
            }
        }
        pinned
    }

    /// Make the machine-to-phys table as Xen's `paging_init` does: the
    /// frames of `holes` (first frame, count) are no RAM (taken out of the
    /// heap for good); each 2 MiB chunk of the table (2^18 machine frames)
    /// that covers some RAM gets 512 frames of its own (order 9, Xen's),
    /// the others none, and `XENMEM_machphys_mfn_list` repeats the frame
    /// before them there. Call it before adding domains. Refused if a hole
    /// frame is not free or the first chunk (which Xen asserts) has no RAM.
    pub fn enable_m2p(&self, holes: &[(Mfn, u64)]) -> Result<(), ModelError> {
        let mut s = self.state.borrow_mut();
        let total = s.machine.total;
        for &(first, n) in holes {
            let end = first.0.checked_add(n).filter(|e| *e <= total);
            let end = end.ok_or(ModelError::BadConfig("hole beyond the machine"))?;
            if !(first.0..end).all(|m| s.machine.is_free(m) || m == 0) {
                return Err(ModelError::BadConfig("hole frames are not free"));
            }
            for m in first.0..end {
                s.machine.take(m, Owner::Xen);
            }
        }
        let in_hole = |m: u64| holes.iter().any(|&(f, n)| (f.0..f.0 + n).contains(&m));
        let mut chunks = Vec::new();
        for c in 0..total.div_ceil(M2P_CHUNK_FRAMES) {
            let lo = c * M2P_CHUNK_FRAMES;
            let hi = (lo + M2P_CHUNK_FRAMES).min(total);
            let ram = (lo..hi).any(|m| m != 0 && !in_hole(m));
            if !ram && c == 0 {
                return Err(ModelError::BadConfig("no RAM in the first M2P chunk"));
            }
            if !ram {
                chunks.push(None);
                continue;
            }
            // From the bottom, so that domains' frames reach the table's
            // last entries.
            let b = (1..total / 512)
                .map(|k| k * 512)
                .find(|b| (*b..b + 512).all(|m| s.machine.is_free(m)))
                .ok_or(ModelError::OutOfMemory)?;
            for m in b..b + 512 {
                s.machine.take(m, Owner::Xen);
            }
            chunks.push(Some(b));
        }
        s.m2p = Some(chunks);
        Ok(())
    }

    /// Pin the free frames among `first..first+count`; returns how many.
    pub fn pin_range(&self, first: Mfn, count: u64) -> u64 {
        let mut s = self.state.borrow_mut();
        let end = first.0.saturating_add(count).min(s.machine.total);
        let mut pinned = 0;
        for m in first.0..end {
            if s.machine.is_free(m) {
                s.machine.take(m, Owner::Pinned);
                pinned += 1;
            }
        }
        pinned
    }

    /// Return every pinned frame to the pool.
    pub fn unpin_all(&self) {
        let mut s = self.state.borrow_mut();
        for m in 0..s.machine.total {
            if s.machine.owner(m) == Some(Owner::Pinned) {
                s.machine.release(m);
            }
        }
    }

    /// Inject a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        let mut s = self.state.borrow_mut();
        match fault {
            Fault::ExchangeUnsupported => s.exchange_unsupported = true,
            Fault::ExhaustPool { leave_free } => {
                let mut m = s.machine.total;
                while m > 0 && s.machine.free_count > leave_free {
                    m -= 1;
                    if s.machine.is_free(m) {
                        s.machine.take(m, Owner::Pinned);
                    }
                }
            }
            f => s.faults.push(f),
        }
    }

    /// Drop queued faults and `ExchangeUnsupported` (pinned frames stay
    /// pinned: see [`XenModel::unpin_all`]).
    pub fn clear_faults(&self) {
        let mut s = self.state.borrow_mut();
        s.faults.clear();
        s.exchange_unsupported = false;
    }

    /// One `XENMEM_remove_from_physmap` (a hypercall of its own or a
    /// multicall entry).
    fn remove_one(&self, gfn: Gfn) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        if let Some(Fault::Errno { errno, .. }) = s.enter(Op::RemoveFromPhysmap) {
            return Err(err(errno));
        }
        let caller = s.current.ok_or(err(Errno::ESRCH))?;
        let c = s.domains.get_mut(&caller).ok_or(err(Errno::ESRCH))?;
        if c.foreign.remove(&gfn).is_some() || c.acquired.remove(&gfn).is_some() {
            drop(s);
            // A dying domain whose last referenced page this was goes now
            // (see `dctl`).
            self.dctl_reap();
            return Ok(());
        }
        if c.p2m.contains_key(&gfn) {
            return s.guest_remove_page(caller, gfn.0).map_err(err);
        }
        // The shared_info page is unhooked (see `evt`).
        if s.evt.shared_info_gfn(caller) == Some(gfn) {
            s.evt.unhook_shared_info(caller);
            return Ok(());
        }
        // Grant-table frames and (x86) grant mappings (see `gnt`).
        if self.gnt.borrow_mut().remove_from_physmap(&s, caller, gfn) {
            return Ok(());
        }
        Err(err(Errno::ENOENT))
    }

    /// Faults queued and not consumed yet.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.state.borrow().faults.clone()
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> u64 {
        self.state.borrow().calls[op.index()]
    }

    /// Machine frames in the model.
    pub fn total_frames(&self) -> u64 {
        self.state.borrow().machine.total
    }

    /// Free machine frames.
    pub fn free_frames(&self) -> u64 {
        self.state.borrow().machine.free_count
    }

    /// Frames pinned by fragmentation or pool exhaustion.
    pub fn pinned_frames(&self) -> u64 {
        self.state.borrow().machine.pinned_count
    }

    /// The machine frames allocated to `dom` (mapped or not), in order;
    /// empty for an unknown domain.
    pub fn owned_frames(&self, dom: DomId) -> Vec<Mfn> {
        let s = self.state.borrow();
        s.domains
            .get(&dom.0)
            .map(|d| d.frames.keys().copied().collect())
            .unwrap_or_default()
    }

    /// A snapshot of `dom`'s p2m (for PV: the M2P view); empty for an unknown
    /// domain.
    pub fn p2m(&self, dom: DomId) -> BTreeMap<Gfn, Mfn> {
        let s = self.state.borrow();
        s.domains
            .get(&dom.0)
            .map(|d| d.p2m.clone())
            .unwrap_or_default()
    }

    /// The foreign entries in `dom`'s p2m: GFN to (foreign domain, MFN).
    pub fn foreign(&self, dom: DomId) -> BTreeMap<Gfn, (DomId, Mfn)> {
        let s = self.state.borrow();
        s.domains
            .get(&dom.0)
            .map(|d| {
                d.foreign
                    .iter()
                    .map(|(g, (f, m))| (*g, (DomId(*f), *m)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Frames allocated to `dom` with no GFN: for a translated domain, lost to
    /// the guest (increase_reservation, populate over a populated GFN, a failed
    /// p2m insertion), except that a direct-mapped domain can populate them
    /// back at GFN == MFN; for PV, frames with no M2P entry (the guest knows
    /// their MFNs).
    pub fn leaked(&self, dom: DomId) -> Vec<Mfn> {
        let s = self.state.borrow();
        s.domains
            .get(&dom.0)
            .map(|d| {
                d.frames
                    .iter()
                    .filter(|(_, g)| g.is_none())
                    .map(|(&m, _)| m)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `dom`'s `tot_pages`.
    pub fn tot_pages(&self, dom: DomId) -> Option<u64> {
        self.state.borrow().domains.get(&dom.0).map(|d| d.tot_pages)
    }

    /// `dom`'s `max_pages`.
    pub fn max_pages(&self, dom: DomId) -> Option<u64> {
        self.state
            .borrow()
            .domains
            .get(&dom.0)
            .map(|d| d.cfg.max_pages)
    }

    /// The shutdown code `dom` asked for, if it did.
    pub fn shutdown_code(&self, dom: DomId) -> Option<u32> {
        self.state
            .borrow()
            .domains
            .get(&dom.0)
            .and_then(|d| d.shutdown)
    }

    /// Everything written to the console so far.
    pub fn console_output(&self) -> Vec<u8> {
        self.state.borrow().console.clone()
    }

    /// `(domid, port)` of every `EVTCHNOP_send` so far, in order.
    pub fn evtchn_sends(&self) -> Vec<(u16, u32)> {
        self.state.borrow().sends.clone()
    }

    /// Check that no frame is lost or shared: every machine frame is exactly
    /// one of free, pinned, Xen's (MFN 0 only), or allocated to exactly one
    /// domain (mapped in its p2m or leaked); the free bitmap and counters agree; each domain's p2m
    /// and frame list agree; `tot_pages` counts the domain's frames; a
    /// direct-mapped domain maps GFN == MFN.
    pub fn check_conservation(&self) -> Result<(), String> {
        let s = self.state.borrow();
        let mc = &s.machine;
        let (mut free, mut pinned) = (0u64, 0u64);
        let mut per_dom: BTreeMap<u16, u64> = BTreeMap::new();
        for (i, o) in mc.owner.iter().enumerate() {
            let bit = mc.free[i / 64] >> (i % 64) & 1 == 1;
            if bit != (*o == Owner::Free) {
                return Err(format!("frame {i:#x}: free bit {bit} but owner {o:?}"));
            }
            match *o {
                Owner::Free => free += 1,
                Owner::Pinned => pinned += 1,
                Owner::Xen if i == 0 => {}
                Owner::Xen => return Err(format!("frame {i:#x} is Xen's")),
                Owner::Dom(d) => {
                    let Some(dom) = s.domains.get(&d) else {
                        return Err(format!("frame {i:#x} owned by unknown domain {d}"));
                    };
                    if !dom.frames.contains_key(&Mfn(i as u64)) {
                        return Err(format!("frame {i:#x} owned by d{d} but not in its list"));
                    }
                    *per_dom.entry(d).or_default() += 1;
                }
            }
        }
        if free != mc.free_count || pinned != mc.pinned_count {
            return Err(format!(
                "counters: free {free} vs {}, pinned {pinned} vs {}",
                mc.free_count, mc.pinned_count
            ));
        }
        for (&id, d) in &s.domains {
            let owned = per_dom.get(&id).copied().unwrap_or(0);
            if d.frames.len() as u64 != owned {
                return Err(format!(
                    "d{id}: lists {} frames, the machine gives it {owned}",
                    d.frames.len()
                ));
            }
            if d.tot_pages != owned {
                return Err(format!("d{id}: tot_pages {} but owns {owned}", d.tot_pages));
            }
            for (&g, &m) in &d.p2m {
                if d.frames.get(&m) != Some(&Some(g)) {
                    return Err(format!("d{id}: p2m {g:?} -> {m:?} not in its frame list"));
                }
                if d.cfg.direct_mapped && g.0 != m.0 {
                    return Err(format!("d{id}: direct-mapped but {g:?} -> {m:?}"));
                }
            }
            for (&m, g) in &d.frames {
                if let Some(g) = g {
                    if d.p2m.get(g) != Some(&m) {
                        return Err(format!("d{id}: frame {m:?} claims {g:?}, p2m disagrees"));
                    }
                }
            }
        }
        drop(s);
        self.dctl_check()
    }
}

impl Hypervisor for XenModel {
    fn version(&self) -> Result<XenVersion, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::Version)?;
        Ok(s.version)
    }

    fn features(&self) -> Result<Features, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::Features)?;
        Ok(s.caller().map_or(Features::empty(), |c| c.cfg.features))
    }

    /// Captured for [`XenModel::console_output`]; EPERM unless the caller is
    /// a console domain or privileged (`xsm_console_io`, release build).
    fn console_write(&self, bytes: &[u8]) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::ConsoleWrite)?;
        let allowed = s
            .caller()
            .is_some_and(|c| c.cfg.console || c.cfg.privileged);
        if !allowed {
            return Err(err(Errno::EPERM));
        }
        s.console.extend_from_slice(bytes);
        Ok(())
    }

    fn current_reservation(&self, dom: DomId) -> Result<PageCount, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::CurrentReservation)?;
        s.stat_target(dom).map(|d| PageCount(d.tot_pages))
    }

    fn maximum_reservation(&self, dom: DomId) -> Result<PageCount, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::MaximumReservation)?;
        s.stat_target(dom).map(|d| PageCount(d.cfg.max_pages))
    }

    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::MaximumGpfn)?;
        s.stat_target(dom).map(|d| Gfn(d.max_mapped))
    }

    /// The caller's e820, truncated to `buf` without telling (as Xen does);
    /// ENOSYS for a domain without one (Arm).
    fn memory_map(&self, buf: &mut [abi::E820Entry]) -> Result<usize, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::MemoryMap)?;
        let Some(e820) = s.caller().and_then(|c| c.cfg.e820.as_ref()) else {
            return Err(err(Errno::ENOSYS));
        };
        if e820.is_empty() {
            return Err(err(Errno::ENOSYS));
        }
        let n = e820.len().min(buf.len());
        buf[..n].copy_from_slice(&e820[..n]);
        Ok(n)
    }

    /// `XEN_DOMCTL_getdomaininfo` as `RealXen` reports it: EINVAL
    /// for a reserved domid (`DOMID_SELF` included), ESRCH for an unknown one
    /// (Xen answers for the next domain up, which RealXen turns into ESRCH
    /// unless none exists), EPERM unless the caller is privileged — even for
    /// itself.
    fn domain_info(&self, dom: DomId) -> Result<DomainInfo, XenError> {
        // Dying domains nothing refers to any more are gone (see `dctl`).
        self.dctl_reap();
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::DomainInfo)?;
        let target = if s.domains.contains_key(&dom.0) {
            dom.0
        } else if dom.0 >= DOMID_FIRST_RESERVED {
            return Err(err(Errno::EINVAL));
        } else {
            match s.domains.range(dom.0..).next() {
                Some((&id, _)) => id,
                None => return Err(err(Errno::ESRCH)),
            }
        };
        if !s.caller().is_some_and(|c| c.cfg.privileged) {
            return Err(err(Errno::EPERM));
        }
        if target != dom.0 {
            return Err(err(Errno::ESRCH));
        }
        s.domains
            .get(&target)
            .map(Domain::info)
            .ok_or(err(Errno::ESRCH))
    }

    /// Records the reason on the caller and returns `Ok(())`.
    fn shutdown(&self, reason: ShutdownReason) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::Shutdown)?;
        if let Some(c) = s.current {
            if let Some(d) = s.domains.get_mut(&c) {
                d.shutdown = Some(reason.code());
            }
        }
        Ok(())
    }

    fn yield_cpu(&self) -> Result<(), XenError> {
        self.state.borrow_mut().errno_fault(Op::Yield)
    }

    /// The caller's [`DomainConfig::hvm_params`] value (0 when unset);
    /// EINVAL for an index beyond `HVM_NR_PARAMS` (40 in 4.17).
    fn hvm_get_param(&self, index: u32) -> Result<u64, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::HvmGetParam)?;
        if index >= 40 {
            return Err(err(Errno::EINVAL));
        }
        let c = s.caller().ok_or(err(Errno::ESRCH))?;
        Ok(c.cfg
            .hvm_params
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |&(_, v)| v))
    }

    /// `evtchn_send` (see [`evt`]); every send that succeeds is recorded
    /// for [`XenModel::evtchn_sends`].
    fn evtchn_send(&self, port: u32) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnSend)?;
        let d = s.current.ok_or(err(Errno::ESRCH))?;
        s.evt_send(d, port)?;
        s.sends.push((d, port));
        Ok(())
    }

    /// `evtchn_alloc_unbound` (see [`evt`]).
    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<u32, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnAllocUnbound)?;
        s.evt_alloc_unbound(DomId::SELF, remote)
    }

    /// `evtchn_bind_interdomain` (see [`evt`]).
    fn evtchn_bind_interdomain(
        &self,
        remote_dom: DomId,
        remote_port: u32,
    ) -> Result<u32, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnBindInterdomain)?;
        s.evt_bind_interdomain(remote_dom, remote_port)
    }

    /// `evtchn_close` (see [`evt`]).
    fn evtchn_close(&self, port: u32) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnClose)?;
        s.evt_close(port)
    }

    /// `evtchn_unmask` (see [`evt`]).
    fn evtchn_unmask(&self, port: u32) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnUnmask)?;
        s.evt_unmask(port)
    }

    /// `evtchn_status` (see [`evt`]).
    fn evtchn_status(&self, dom: DomId, port: u32) -> Result<xenmem::xen::ChannelStatus, XenError> {
        let mut s = self.state.borrow_mut();
        s.errno_fault(Op::EvtchnStatus)?;
        s.evt_status(dom, port)
    }

    /// `do_poll` (see [`evt`]): never blocks; a poll that would block is
    /// recorded and runs the hook of [`XenModel::set_poll_hook`].
    fn sched_poll(&self, ports: &[u32], timeout: u64) -> Result<(), XenError> {
        self.evt_sched_poll(ports, timeout)
    }

    fn own_domid(&self) -> Option<DomId> {
        let s = self.state.borrow();
        s.caller()
            .filter(|c| c.cfg.cpuid_domid)
            .map(|c| c.cfg.domid)
    }

    /// See the [module docs](self): no MFN is written for a translated domain.
    fn increase_reservation(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        out: &mut [Mfn],
    ) -> Result<usize, XenError> {
        self.state
            .borrow_mut()
            .increase_reservation(dom, order, flags, out)
    }

    fn decrease_reservation(
        &self,
        dom: DomId,
        order: Order,
        gfns: &[Gfn],
    ) -> Result<usize, XenError> {
        self.state
            .borrow_mut()
            .decrease_reservation(dom, order, gfns)
    }

    fn populate_physmap(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        gfns: &mut [Gfn],
    ) -> Result<usize, XenError> {
        self.state
            .borrow_mut()
            .populate_physmap(dom, order, flags, gfns)
    }

    fn exchange(&self, req: &mut ExchangeRequest<'_>) -> ExchangeOutcome {
        self.state.borrow_mut().exchange(req)
    }

    /// `XENMEM_maximum_ram_page` answers Xen's `max_page`: one past the
    /// highest machine frame (`common/memory.c`), here the machine's size.
    fn maximum_ram_page(&self) -> Result<Mfn, XenError> {
        Ok(Mfn(self.total_frames()))
    }

    /// `XENMEM_machphys_mfn_list` (`arch/x86/x86_64/mm.c`): one frame per
    /// 2 MiB chunk of the table up to `max_page`; a chunk Xen never filled
    /// repeats the frame listed before it. ENOSYS until
    /// [`XenModel::enable_m2p`] made the table.
    fn machphys_mfn_list(&self, out: &mut [Mfn]) -> Result<usize, XenError> {
        let s = self.state.borrow();
        let chunks = s.m2p.as_ref().ok_or(err(Errno::ENOSYS))?;
        let mut last = 0;
        let mut n = 0;
        for (slot, c) in out.iter_mut().zip(chunks) {
            last = c.unwrap_or(last);
            *slot = Mfn(last);
            n += 1;
        }
        Ok(n)
    }

    /// `xenmem_add_to_physmap_batch` with `XENMAPSPACE_gmfn_foreign`
    /// (`p2m_add_foreign`): per index, ESRCH for `DOMID_SELF` or an unknown
    /// domain, for the caller's own domid on Arm (`get_pg_owner` refuses
    /// it); EPERM for it on x86 and for an unprivileged caller (XSM),
    /// EINVAL for a foreign frame that is not populated RAM. What was at the
    /// caller's GFN goes: a RAM page is removed and freed (Xen does that;
    /// the agent must never ask it), a foreign entry is replaced.
    fn map_foreign_batch(
        &self,
        foreign: DomId,
        frames: &[Gfn],
        gfns: &[Gfn],
        errs: &mut [xenmem::xen::XenStatus],
    ) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        if let Some(Fault::Errno { errno, .. }) = s.enter(Op::MapForeignBatch) {
            return Err(err(errno));
        }
        if frames.len() != gfns.len() || errs.len() != frames.len() {
            return Err(err(Errno::EINVAL));
        }
        let caller = s.current.ok_or(err(Errno::ESRCH))?;
        let (translated, privileged, arm) = {
            let c = s.domains.get(&caller).ok_or(err(Errno::ESRCH))?;
            (c.cfg.translated, c.cfg.privileged, c.is_arm())
        };
        if !translated {
            return Err(err(Errno::EACCES));
        }
        for i in 0..frames.len() {
            let status = (|| {
                if foreign == DomId::SELF {
                    return Err(Errno::ESRCH);
                }
                if foreign.0 == caller && arm {
                    // Measured under Xen 4.17 (x86 answers EPERM).
                    return Err(Errno::ESRCH);
                }
                if foreign.0 == caller || !privileged {
                    return Err(Errno::EPERM);
                }
                let m = if foreign == DomId::XEN {
                    // p2m_add_foreign for DOMID_XEN: the frame is an MFN
                    // of a page Xen shares (here: the M2P's only), mapped
                    // with the table's entries as they are now.
                    let m = Mfn(frames[i].0);
                    let words = s.m2p_page(m.0).ok_or(Errno::EINVAL)?;
                    self.gnt.borrow_mut().fill(m, &words);
                    m
                } else {
                    let fd = s.domains.get(&foreign.0).ok_or(Errno::ESRCH)?;
                    *fd.p2m.get(&frames[i]).ok_or(Errno::EINVAL)?
                };
                let g = gfns[i];
                let c = s.domains.get(&caller).ok_or(Errno::ESRCH)?;
                // Real Xen 4.17 (x86 and Arm): a GFN beyond the p2m gives
                // ENOENT for the entry, as for acquire_resource.
                if g.0 >= c.cfg.gfn_limit {
                    return Err(Errno::ENOENT);
                }
                if c.p2m.contains_key(&g) {
                    s.guest_remove_page(caller, g.0)?;
                }
                let c = s.domains.get_mut(&caller).ok_or(Errno::ESRCH)?;
                c.foreign.insert(g, (foreign.0, m));
                c.max_mapped = c.max_mapped.max(g.0);
                Ok(())
            })();
            errs[i] = xenmem::xen::XenStatus(status.map_or_else(|e| -(e as i32), |()| 0));
        }
        Ok(())
    }

    /// `XENMEM_remove_from_physmap`: a foreign entry goes; a RAM page is
    /// removed as by `guest_remove_page`; nothing there is ENOENT.
    fn remove_from_physmap(&self, gfn: Gfn) -> Result<(), XenError> {
        self.remove_one(gfn)
    }

    /// `__HYPERVISOR_multicall` of `XENMEM_remove_from_physmap` entries
    /// (`do_multicall`): each entry is one [`Hypervisor::remove_from_physmap`]
    /// (counted and faulted as [`Op::RemoveFromPhysmap`]), carried out in
    /// order whatever the others returned. The guest-side limits of the
    /// trait (E2BIG, EINVAL) come first; [`Fault::Errno`] of
    /// [`Op::Multicall`] refuses the whole call, [`Fault::ShortAt`] stops it
    /// with EFAULT after some entries. Xen's preemption of a long list is
    /// invisible to the guest and not modelled.
    fn multicall_remove_from_physmap(
        &self,
        gfns: &[Gfn],
        results: &mut [Result<(), XenError>],
    ) -> xenmem::xen::MulticallOutcome {
        let out = |reached, result| xenmem::xen::MulticallOutcome { reached, result };
        if results.len() != gfns.len() {
            return out(0, Err(err(Errno::EINVAL)));
        }
        if gfns.len() > xenmem::xen::MULTICALL_MAX {
            return out(0, Err(err(Errno::E2BIG)));
        }
        let stop = match self.state.borrow_mut().enter(Op::Multicall) {
            Some(Fault::Errno { errno, .. }) => return out(0, Err(err(errno))),
            Some(Fault::ShortAt { after_extents, .. }) => Some(after_extents),
            _ => None,
        };
        for (i, (g, r)) in gfns.iter().zip(results.iter_mut()).enumerate() {
            if stop == Some(i) {
                return out(i, Err(err(Errno::EFAULT)));
            }
            *r = self.remove_one(*g);
        }
        out(gfns.len(), Ok(()))
    }

    /// `XENMEM_add_to_physmap` for the caller; `XENMAPSPACE_grant_table`
    /// (see [`gnt`]) and `XENMAPSPACE_shared_info` (see [`evt`]) are
    /// modelled.
    fn add_to_physmap(&self, space: u16, idx: u64, gfn: Gfn) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        self.gnt
            .borrow_mut()
            .add_to_physmap(&mut s, space, idx, gfn)
    }

    /// `GNTTABOP_query_size` (see [`gnt`]).
    fn gnttab_query_size(&self, dom: DomId) -> Result<abi::gnttab::QuerySize, XenError> {
        let s = self.state.borrow();
        self.gnt.borrow_mut().query_size(&s, dom)
    }

    /// `GNTTABOP_map_grant_ref` (see [`gnt`]).
    fn gnttab_map(&self, ops: &mut [abi::gnttab::MapGrantRef]) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        self.gnt.borrow_mut().map(&mut s, ops)
    }

    /// `GNTTABOP_unmap_grant_ref` (see [`gnt`]).
    fn gnttab_unmap(&self, ops: &mut [abi::gnttab::UnmapGrantRef]) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        self.gnt.borrow_mut().unmap(&mut s, ops)
    }

    /// `GNTTABOP_copy` (see [`gnt`]).
    fn gnttab_copy(&self, ops: &mut [abi::gnttab::GntCopy]) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        self.gnt.borrow_mut().copy(&mut s, ops)
    }

    /// `XEN_DOMCTL_createdomain` (see [`dctl`]).
    fn domctl_createdomain(
        &self,
        domid: DomId,
        config: &mut abi::DomctlCreateDomain,
    ) -> Result<DomId, XenError> {
        self.dctl_createdomain(domid, config)
    }

    /// `XEN_DOMCTL_max_mem` (see [`dctl`]).
    fn domctl_max_mem(&self, dom: DomId, max_kib: u64) -> Result<(), XenError> {
        self.state.borrow_mut().dctl_max_mem(dom, max_kib)
    }

    /// `XEN_DOMCTL_destroydomain` (see [`dctl`]).
    fn domctl_destroydomain(&self, dom: DomId) -> Result<(), XenError> {
        self.dctl_destroydomain(dom)
    }

    /// `XENMEM_acquire_resource` size query (see [`dctl`]).
    fn acquire_resource_size(&self, dom: DomId, kind: u16, id: u32) -> Result<u32, XenError> {
        self.dctl_acquire(dom, kind, id, 0, None)
    }

    /// `XENMEM_acquire_resource` (see [`dctl`]).
    fn acquire_resource(
        &self,
        dom: DomId,
        kind: u16,
        id: u32,
        frame: u64,
        gfns: &mut [Gfn],
    ) -> Result<(), XenError> {
        self.dctl_acquire(dom, kind, id, frame, Some(gfns))
            .map(|_| ())
    }
}

pub use gnt::{GntFault, GntOp, GrantHostMap};

/// Grant tables in the model: Xen 4.17's `xen/common/grant_table.c`
/// (`map_grant_ref`, `unmap_common`, `unmap_common_complete`,
/// `_set_status_v1`, `reduce_status_for_pin`, `get_paged_frame`,
/// `acquire_grant_for_copy`, `release_grant_for_copy`, `gnttab_copy_*`,
/// `gnttab_query_size`, `gnttab_grow_table`, `gnttab_map_frame_begin`),
/// `create_grant_p2m_mapping`/`replace_grant_p2m_mapping`
/// (`xen/arch/x86/hvm/grant_table.c`) with `p2m_add_page`
/// (`xen/arch/x86/mm/p2m.c`), `create_grant_host_mapping`/
/// `replace_grant_host_mapping` (`xen/arch/arm/mm.c`) with Arm's
/// `guest_physmap_add_entry`/`p2m_remove_mapping`, and
/// `xenmem_add_to_physmap_one` for `XENMAPSPACE_grant_table` (both
/// architectures).
///
/// # What is modelled
///
/// * **Tables**: version 1 only; each domain's table starts with one frame
///   and grows (through `add_to_physmap` of a higher index) up to
///   [`gnt::DEFAULT_MAX_GRANT_FRAMES`] (`gnttab_max_frames`, settable). Entries
///   live in real memory ([`XenModel::page_ptr`] of a table frame's GFN), so
///   a guest's writes through its own mapping and Xen's `GTF_reading`/
///   `GTF_writing` updates meet in the same words; tests write entries on a
///   domain's behalf with [`XenModel::gnttab_write_entry`].
/// * **Map** (`map_grant_ref`), in Xen's order of checks: neither
///   `GNTMAP_host_map` nor `GNTMAP_device_map` is `GNTST_bad_gntref`; device,
///   application or PTE mappings by a translated caller are
///   `general_error`; an unknown granter, or `DOMID_SELF` (looked up by id
///   only), is `bad_domain`; no free maptrack handle is `no_space`; a
///   reference beyond the granter's table is `bad_gntref`; an entry already
///   pinned by another domain (or whose 8-bit pin counter has reached 128)
///   is `general_error`; when not pinned, an entry that is not
///   `GTF_permit_access` for the caller's own domid (`GTF_sub_page` set, a
///   stale domid) is `general_error`, as is a writable map of a
///   `GTF_readonly` grant; a granted frame that is not the granter's RAM is
///   `bad_page`. Xen sets `GTF_reading` (and `GTF_writing`) in the entry
///   while pinned and clears them when the last pin goes. The host mapping
///   then goes into the caller's physmap at `host_addr >> 12` (any flag but
///   `host_map|readonly` is `general_error`, as is a GFN beyond the p2m):
///   - **x86** (`p2m_add_page`): over a grant or foreign entry (another
///     domain's grant-table frame mapped by `acquire_resource` is one) the caller is
///     *crashed* (`domain_crash`, shutdown code 3) and the op fails; over RAM
///     the old page loses its GFN and stays allocated (leaked); and a page of
///     the caller's own (its own grant) is unhooked from the GFN it had —
///     for good: it reads all-ones there even after the unmap, as observed.
///   - **Arm** (`p2m_set_entry`): whatever was there is replaced (RAM is
///     leaked, a foreign or grant entry dropped); an own grant stays visible
///     at both GFNs.
///
///   `dev_bus_addr` is the machine address; handles are the lowest free
///   (Xen's per-vCPU free lists differ in order, not in uniqueness).
/// * **Unmap** (`unmap_common`): an unknown handle is `bad_handle`; a
///   `host_addr` of 0 does nothing and says okay (the handle stays); on x86
///   the GFN must hold a grant entry of that frame (else `general_error`,
///   nothing undone); on Arm a GFN holding nothing is fine (the handle is
///   freed), one holding another frame is `general_error`.
/// * **Copy** (`gnttab_copy`): a frame on either side must be the caller's
///   (`DOMID_SELF`, else `permission_denied`) and its RAM (`bad_page`); a
///   grant is acquired as for a map (reading for the source, writing for the
///   destination: a read-only grant as destination is `general_error`) and
///   released after the copy; offset plus length beyond the page is
///   `bad_copy_arg`. Bytes really move ([`XenModel::page_ptr`]).
/// * **`add_to_physmap(grant_table, idx, gfn)`**: `idx` is truncated to 32
///   bits (Xen's `unsigned int`), grows the table up to its maximum (beyond:
///   EINVAL); a frame already mapped elsewhere moves; what was at `gfn`
///   goes: x86 frees RAM (`guest_remove_page`), refuses a grant mapping
///   (ENXIO) and drops a foreign entry or an acquired table frame; Arm leaks
///   RAM and drops anything else. `shared_info` (index 0 only, else
///   EINVAL) replaces what is at `gfn` the same way; mapped again, it moves
///   on x86 and is EBUSY on Arm. Other map spaces: ENOSYS (not modelled), `gmfn_foreign` ENOSYS
///   as in Xen.
/// * **`remove_from_physmap`** of a grant-table frame unhooks it; of an x86
///   grant mapping removes the entry (its handle stays, and its unmap then
///   fails); of an Arm grant mapping is ENOENT.
///
/// # Simplifications
///
/// The dummy XSM policy (Debian's Arm build uses SILO, which also refuses
/// grants between two domUs); no version 2, transitive or sub-page grants,
/// no device mappings, no PV (non-translated) mappings (`general_error`);
/// grant entries and table frames sit beside the p2m, and the reservation and
/// foreign-map calls do not look at them (the agent puts both in holes of its
/// region table, so they never meet); page contents are kept only for frames
/// grant operations and tests touch, and are not scrubbed when a page is
/// freed.
pub mod gnt {
    use super::*;
    use alloc::boxed::Box;
    use core::sync::atomic::{AtomicU64, Ordering};
    use xenmem::xen::abi::gnttab::{self as g, GntStatus, GrantEntryV1};

    /// `gnttab_max_frames`' default.
    pub const DEFAULT_MAX_GRANT_FRAMES: u32 = 64;
    /// Handles a domain may hold: 1024 maptrack frames (the default) of 256
    /// 16-byte entries.
    pub const DEFAULT_MAPTRACK_HANDLES: u32 = 1024 * 256;
    /// A pin counter (8 bits in Xen) refuses another pin from here on.
    const PIN_LIMIT: u32 = 128;
    const WORDS: usize = 512;

    /// A grant operation, for [`GntFault`] and [`XenModel::gnttab_calls`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum GntOp {
        /// [`Hypervisor::add_to_physmap`].
        AddToPhysmap,
        /// [`Hypervisor::gnttab_query_size`].
        QuerySize,
        /// [`Hypervisor::gnttab_map`].
        Map,
        /// [`Hypervisor::gnttab_unmap`].
        Unmap,
        /// [`Hypervisor::gnttab_copy`].
        Copy,
    }

    /// A fault for the next call of a grant operation
    /// ([`XenModel::gnttab_inject`]); consumed by that call.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum GntFault {
        /// The call fails with `errno` and does nothing.
        Errno {
            /// The operation.
            op: GntOp,
            /// The error.
            errno: Errno,
        },
        /// The call `nth` calls from now (0: the next one) fails with
        /// `errno` and does nothing; the calls before it are not affected.
        ErrnoOnCall {
            /// The operation.
            op: GntOp,
            /// Calls to let through first.
            nth: u32,
            /// The error.
            errno: Errno,
        },
        /// The call does its first `done` entries, then fails with EFAULT
        /// (as when Xen cannot read entry `done` from the guest); the rest
        /// keep the status the caller set.
        EfaultAfter {
            /// The operation (map, unmap or copy).
            op: GntOp,
            /// Entries done.
            done: usize,
        },
    }

    impl GntFault {
        fn op(&self) -> GntOp {
            match *self {
                GntFault::Errno { op, .. }
                | GntFault::ErrnoOnCall { op, .. }
                | GntFault::EfaultAfter { op, .. } => op,
            }
        }
    }

    /// A grant mapping in a domain's physmap.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct GrantHostMap {
        /// The granting domain.
        pub granter: DomId,
        /// The reference.
        pub gref: u32,
        /// The granted machine frame.
        pub mfn: Mfn,
        /// Mapped read-only.
        pub readonly: bool,
    }

    /// One page of memory, as words.
    pub(super) struct PageMem([AtomicU64; WORDS]);

    impl PageMem {
        pub(super) fn zeroed() -> Box<PageMem> {
            Box::new(PageMem(core::array::from_fn(|_| AtomicU64::new(0))))
        }

        pub(super) fn ptr(&self) -> *mut u8 {
            self.0.as_ptr() as *mut u8
        }

        /// Word `i` (byte offset `8 * i`).
        pub(super) fn word(&self, i: usize) -> Option<&AtomicU64> {
            self.0.get(i)
        }

        fn read(&self, off: usize, out: &mut [u8]) {
            for (i, b) in out.iter_mut().enumerate() {
                let at = off + i;
                let w = self.0[at / 8].load(Ordering::Relaxed);
                *b = (w >> ((at % 8) * 8)) as u8;
            }
        }

        fn write(&self, off: usize, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                let at = off + i;
                let shift = (at % 8) * 8;
                let w = &self.0[at / 8];
                let v = w.load(Ordering::Relaxed);
                w.store(
                    (v & !(0xff << shift)) | (u64::from(*b) << shift),
                    Ordering::Relaxed,
                );
            }
        }
    }

    #[derive(Clone, Copy, Debug, Default)]
    struct Active {
        /// Host read pins (`GNTPIN_hstr`).
        hr: u32,
        /// Host write pins (`GNTPIN_hstw`).
        hw: u32,
        /// The domain holding the pins (`act->domid`).
        mapper: u16,
        /// The pinned frame (`act->mfn`).
        mfn: Mfn,
    }

    impl Active {
        fn pin(&self) -> u32 {
            self.hr + self.hw
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Track {
        dom: u16,
        gref: u32,
        flags: u32,
    }

    struct Table {
        max_frames: u32,
        frames: Vec<Box<PageMem>>,
        frame_gfn: Vec<Option<Gfn>>,
        active: BTreeMap<u32, Active>,
        maptrack: BTreeMap<u32, Track>,
        maptrack_limit: u32,
        host_maps: BTreeMap<Gfn, GrantHostMap>,
    }

    impl Table {
        fn new() -> Self {
            Table {
                max_frames: DEFAULT_MAX_GRANT_FRAMES,
                frames: alloc::vec![PageMem::zeroed()],
                frame_gfn: alloc::vec![None],
                active: BTreeMap::new(),
                maptrack: BTreeMap::new(),
                maptrack_limit: DEFAULT_MAPTRACK_HANDLES,
                host_maps: BTreeMap::new(),
            }
        }

        fn nr_entries(&self) -> u32 {
            self.frames.len() as u32 * g::ENTRIES_PER_FRAME_V1
        }

        fn word(&self, gref: u32) -> &AtomicU64 {
            let per = g::ENTRIES_PER_FRAME_V1;
            &self.frames[(gref / per) as usize].0[(gref % per) as usize]
        }

        fn entry(&self, gref: u32) -> GrantEntryV1 {
            let w = self.word(gref).load(Ordering::SeqCst);
            GrantEntryV1 {
                flags: w as u16,
                domid: (w >> 16) as u16,
                frame: (w >> 32) as u32,
            }
        }

        fn set_flags(&self, gref: u32, flags: u16) {
            let w = self.word(gref);
            let v = w.load(Ordering::SeqCst);
            w.store((v & !0xffff) | u64::from(flags), Ordering::SeqCst);
        }

        fn grow(&mut self, frames: u32) {
            while (self.frames.len() as u32) < frames.min(self.max_frames) {
                self.frames.push(PageMem::zeroed());
                self.frame_gfn.push(None);
            }
        }

        /// The lowest free handle below the limit.
        fn free_handle(&self) -> Option<u32> {
            let mut h = 0u32;
            for &k in self.maptrack.keys() {
                if k != h {
                    break;
                }
                h += 1;
            }
            (h < self.maptrack_limit).then_some(h)
        }

        /// `_set_status_v1` for a pin of `gref` by `ld` (`unpinned`: no pin
        /// yet, so the entry's type and domid are checked).
        fn set_status(
            &self,
            gref: u32,
            unpinned: bool,
            ro: bool,
            ld: u16,
            mapflag: bool,
        ) -> Result<(), GntStatus> {
            let e = self.entry(gref);
            let mask = g::GTF_TYPE_MASK | if mapflag { g::GTF_SUB_PAGE } else { 0 };
            if unpinned && ((e.flags & mask) != g::GTF_PERMIT_ACCESS || e.domid != ld) {
                return Err(GntStatus::GeneralError);
            }
            let mut f = e.flags | g::GTF_READING;
            if !ro {
                if e.flags & g::GTF_READONLY != 0 {
                    return Err(GntStatus::GeneralError);
                }
                f |= g::GTF_WRITING;
            }
            self.set_flags(gref, f);
            Ok(())
        }

        /// `reduce_status_for_pin`.
        fn reduce_status(&self, gref: u32, ro: bool) {
            let act = self.active.get(&gref).copied().unwrap_or_default();
            let mut clear = if act.pin() == 0 { g::GTF_READING } else { 0 };
            if !ro && act.hw == 0 {
                clear |= g::GTF_WRITING;
            }
            if clear != 0 {
                let f = self.entry(gref).flags;
                self.set_flags(gref, f & !clear);
            }
        }
    }

    /// What a domain's physmap holds at a GFN.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum At {
        Nothing,
        Ram(Mfn),
        Foreign(Mfn),
        Grant(Mfn),
        TableFrame(usize),
        /// Another domain's grant-table frame, mapped by
        /// `acquire_resource` (a `p2m_map_foreign` entry; see `dctl`).
        Acquired(u16, u32),
        /// The domain's own shared_info page (see [`evt`](super::evt)).
        SharedInfo,
    }

    /// The model's grant state.
    #[derive(Default)]
    pub struct GntModel {
        tables: BTreeMap<u16, Table>,
        mem: BTreeMap<u64, Box<PageMem>>,
        faults: Vec<GntFault>,
        calls: [u64; 5],
    }

    impl GntModel {
        fn enter(&mut self, op: GntOp) -> Option<GntFault> {
            self.calls[op as usize] += 1;
            let i = self.faults.iter().position(|f| f.op() == op)?;
            if let GntFault::ErrnoOnCall { nth, errno, .. } = &mut self.faults[i] {
                if *nth > 0 {
                    *nth -= 1;
                    return None;
                }
                let errno = *errno;
                self.faults.remove(i);
                return Some(GntFault::Errno { op, errno });
            }
            Some(self.faults.remove(i))
        }

        /// The table of domain `d` (which must exist), created on first use.
        fn table(&mut self, d: u16) -> &mut Table {
            self.tables.entry(d).or_insert_with(Table::new)
        }

        fn mem(&mut self, mfn: Mfn) -> &PageMem {
            self.mem.entry(mfn.0).or_insert_with(PageMem::zeroed)
        }

        /// Set the words of frame `mfn`'s page (the M2P's, when mapped).
        pub(super) fn fill(&mut self, mfn: Mfn, words: &[u64]) {
            let p = self.mem(mfn);
            for (i, w) in words.iter().enumerate() {
                if let Some(x) = p.word(i) {
                    x.store(*w, Ordering::Relaxed);
                }
            }
        }

        fn at(&self, s: &State, d: u16, gfn: Gfn) -> At {
            let Some(dom) = s.domains.get(&d) else {
                return At::Nothing;
            };
            if let Some(&m) = dom.p2m.get(&gfn) {
                return At::Ram(m);
            }
            if let Some(&(_, m)) = dom.foreign.get(&gfn) {
                return At::Foreign(m);
            }
            if let Some(&(f, i)) = dom.acquired.get(&gfn) {
                return At::Acquired(f, i);
            }
            if s.evt.shared_info_gfn(d) == Some(gfn) {
                return At::SharedInfo;
            }
            if let Some(t) = self.tables.get(&d) {
                if let Some(h) = t.host_maps.get(&gfn) {
                    return At::Grant(h.mfn);
                }
                if let Some(i) = t.frame_gfn.iter().position(|x| *x == Some(gfn)) {
                    return At::TableFrame(i);
                }
            }
            At::Nothing
        }

        /// Take the RAM page at `gfn` off the physmap without freeing it (it
        /// stays allocated with no GFN: leaked).
        fn unhook_ram(s: &mut State, d: u16, gfn: Gfn) {
            if let Some(dom) = s.domains.get_mut(&d) {
                if let Some(m) = dom.p2m.remove(&gfn) {
                    dom.frames.insert(m, None);
                }
            }
        }

        /// `get_paged_frame`: the granter's own RAM frame at `frame`.
        fn paged_frame(s: &State, rd: u16, frame: u64) -> Result<Mfn, GntStatus> {
            let dom = s.domains.get(&rd).ok_or(GntStatus::BadPage)?;
            if dom.cfg.translated {
                dom.p2m.get(&Gfn(frame)).copied().ok_or(GntStatus::BadPage)
            } else if s.machine.owner(frame) == Some(Owner::Dom(rd)) {
                Ok(Mfn(frame))
            } else {
                Err(GntStatus::BadPage)
            }
        }

        // ---- add_to_physmap / remove_from_physmap ----

        pub(super) fn add_to_physmap(
            &mut self,
            s: &mut State,
            space: u16,
            idx: u64,
            gfn: Gfn,
        ) -> Result<(), XenError> {
            match self.enter(GntOp::AddToPhysmap) {
                Some(GntFault::Errno { errno, .. }) => return Err(err(errno)),
                // (`enter` turns a due ErrnoOnCall into Errno.)
                Some(GntFault::EfaultAfter { .. } | GntFault::ErrnoOnCall { .. }) => {
                    return Err(err(Errno::EFAULT))
                }
                None => {}
            }
            let ld = s.current.ok_or(err(Errno::ESRCH))?;
            let (translated, limit, arm) = {
                let d = s.domains.get(&ld).ok_or(err(Errno::ESRCH))?;
                (d.cfg.translated, d.cfg.gfn_limit, d.is_arm())
            };
            if space == abi::physmap::SPACE_GMFN_FOREIGN {
                return Err(err(Errno::ENOSYS));
            }
            if !translated {
                return Err(err(Errno::EACCES));
            }
            if space == abi::physmap::SPACE_SHARED_INFO {
                return self.map_shared_info(s, ld, idx, gfn, limit, arm);
            }
            if space != abi::physmap::SPACE_GRANT_TABLE {
                return Err(err(Errno::ENOSYS));
            }
            // gnttab_map_frame_begin takes an unsigned long, and
            // gnttab_get_shared_frame_mfn an unsigned int.
            let idx = idx as u32;
            {
                let t = self.table(ld);
                if idx >= t.frames.len() as u32 {
                    match idx.checked_add(1) {
                        Some(n) if n <= t.max_frames => t.grow(n),
                        _ => return Err(err(Errno::EINVAL)),
                    }
                }
            }
            let idx = idx as usize;
            if gfn.0 >= limit {
                return Err(err(Errno::EINVAL));
            }
            match self.at(s, ld, gfn) {
                At::Nothing => {}
                At::TableFrame(j) => {
                    if j != idx {
                        self.table(ld).frame_gfn[j] = None;
                    }
                }
                At::Ram(_) if !arm => {
                    s.guest_remove_page(ld, gfn.0).map_err(err)?;
                }
                At::Ram(_) => Self::unhook_ram(s, ld, gfn),
                At::Foreign(_) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.foreign.remove(&gfn);
                    }
                }
                // A xenheap page: "special pages are simply unhooked" (x86);
                // replaced (Arm).
                At::Acquired(..) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.acquired.remove(&gfn);
                    }
                }
                At::Grant(_) if !arm => return Err(err(Errno::ENXIO)),
                At::Grant(_) => {
                    self.table(ld).host_maps.remove(&gfn);
                }
                // A xenheap page, unhooked as a table frame is.
                At::SharedInfo => s.evt.unhook_shared_info(ld),
            }
            self.table(ld).frame_gfn[idx] = Some(gfn);
            if let Some(d) = s.domains.get_mut(&ld) {
                d.max_mapped = d.max_mapped.max(gfn.0);
            }
            Ok(())
        }

        /// `add_to_physmap(shared_info, idx, gfn)` (x86 `xenmem_add_to_physmap_one`
        /// in `arch/x86/mm/p2m.c`, Arm's in `arch/arm/mm.c`): `idx` must be 0
        /// (EINVAL); on Arm a page that is mapped already is EBUSY (it must be
        /// removed first), on x86 it moves; what was at `gfn` goes as for a
        /// grant-table frame.
        fn map_shared_info(
            &mut self,
            s: &mut State,
            ld: u16,
            idx: u64,
            gfn: Gfn,
            limit: u64,
            arm: bool,
        ) -> Result<(), XenError> {
            if idx != 0 {
                return Err(err(Errno::EINVAL));
            }
            if arm && s.evt.shared_info_gfn(ld).is_some() {
                return Err(err(Errno::EBUSY));
            }
            if gfn.0 >= limit {
                return Err(err(Errno::EINVAL));
            }
            match self.at(s, ld, gfn) {
                At::Nothing | At::SharedInfo => {}
                At::TableFrame(j) => self.table(ld).frame_gfn[j] = None,
                At::Ram(_) if !arm => s.guest_remove_page(ld, gfn.0).map_err(err)?,
                At::Ram(_) => Self::unhook_ram(s, ld, gfn),
                At::Foreign(_) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.foreign.remove(&gfn);
                    }
                }
                At::Acquired(..) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.acquired.remove(&gfn);
                    }
                }
                At::Grant(_) if !arm => return Err(err(Errno::ENXIO)),
                At::Grant(_) => {
                    self.table(ld).host_maps.remove(&gfn);
                }
            }
            let State { domains, evt, .. } = s;
            evt.map_shared_info(domains, ld, gfn);
            if let Some(d) = s.domains.get_mut(&ld) {
                d.max_mapped = d.max_mapped.max(gfn.0);
            }
            Ok(())
        }

        /// The grant part of `XENMEM_remove_from_physmap`: whether `gfn`
        /// held something of it (now removed).
        pub(super) fn remove_from_physmap(&mut self, s: &State, d: u16, gfn: Gfn) -> bool {
            let arm = s.domains.get(&d).is_some_and(|x| x.is_arm());
            match self.at(s, d, gfn) {
                At::TableFrame(i) => {
                    self.table(d).frame_gfn[i] = None;
                    true
                }
                At::Grant(_) if !arm => {
                    self.table(d).host_maps.remove(&gfn);
                    true
                }
                _ => false,
            }
        }

        // ---- query_size ----

        pub(super) fn query_size(
            &mut self,
            s: &State,
            dom: DomId,
        ) -> Result<g::QuerySize, XenError> {
            match self.enter(GntOp::QuerySize) {
                Some(GntFault::Errno { errno, .. }) => return Err(err(errno)),
                // (`enter` turns a due ErrnoOnCall into Errno.)
                Some(GntFault::EfaultAfter { .. } | GntFault::ErrnoOnCall { .. }) => {
                    return Err(err(Errno::EFAULT))
                }
                None => {}
            }
            let mut q = g::QuerySize {
                dom: dom.0,
                ..Default::default()
            };
            let status = match s.lookup_any(dom) {
                None => GntStatus::BadDomain,
                Some(d) if !s.xsm_target(d) => GntStatus::PermissionDenied,
                Some(d) => {
                    let t = self.table(d);
                    q.nr_frames = t.frames.len() as u32;
                    q.max_nr_frames = t.max_frames;
                    GntStatus::Okay
                }
            };
            q.status = status.raw();
            Ok(q)
        }

        // ---- batches ----

        fn batch<T>(
            &mut self,
            op: GntOp,
            s: &mut State,
            ops: &mut [T],
            mut one: impl FnMut(&mut Self, &mut State, u16, &mut T),
        ) -> Result<(), XenError> {
            let fault = self.enter(op);
            if let Some(GntFault::Errno { errno, .. }) = fault {
                return Err(err(errno));
            }
            if ops.len() > i32::MAX as usize {
                return Err(err(Errno::EINVAL));
            }
            let ld = s.current.ok_or(err(Errno::ESRCH))?;
            if !s.domains.contains_key(&ld) {
                return Err(err(Errno::ESRCH));
            }
            for (i, o) in ops.iter_mut().enumerate() {
                if matches!(fault, Some(GntFault::EfaultAfter { done, .. }) if done == i) {
                    return Err(err(Errno::EFAULT));
                }
                one(self, s, ld, o);
            }
            Ok(())
        }

        pub(super) fn map(
            &mut self,
            s: &mut State,
            ops: &mut [g::MapGrantRef],
        ) -> Result<(), XenError> {
            self.batch(GntOp::Map, s, ops, |m, s, ld, op| {
                match m.map_one(s, ld, op) {
                    Ok((handle, mfn)) => {
                        op.handle = handle;
                        op.dev_bus_addr = mfn.0 << PAGE_SHIFT;
                        op.status = GntStatus::Okay.raw();
                    }
                    Err(st) => op.status = st.raw(),
                }
            })
        }

        pub(super) fn unmap(
            &mut self,
            s: &mut State,
            ops: &mut [g::UnmapGrantRef],
        ) -> Result<(), XenError> {
            self.batch(GntOp::Unmap, s, ops, |m, s, ld, op| {
                op.status = match m.unmap_one(s, ld, op) {
                    Ok(()) => GntStatus::Okay.raw(),
                    Err(st) => st.raw(),
                };
            })
        }

        pub(super) fn copy(
            &mut self,
            s: &mut State,
            ops: &mut [g::GntCopy],
        ) -> Result<(), XenError> {
            self.batch(GntOp::Copy, s, ops, |m, s, ld, op| {
                op.status = match m.copy_one(s, ld, op) {
                    Ok(()) => GntStatus::Okay.raw(),
                    Err(st) => st.raw(),
                };
            })
        }

        // ---- map ----

        fn map_one(
            &mut self,
            s: &mut State,
            ld: u16,
            op: &g::MapGrantRef,
        ) -> Result<(u32, Mfn), GntStatus> {
            let ro = op.flags & g::GNTMAP_READONLY != 0;
            if op.flags & (g::GNTMAP_HOST_MAP | g::GNTMAP_DEVICE_MAP) == 0 {
                return Err(GntStatus::BadGntref);
            }
            let translated = s.domains.get(&ld).is_some_and(|d| d.cfg.translated);
            let pv_only = g::GNTMAP_DEVICE_MAP | g::GNTMAP_APPLICATION_MAP | g::GNTMAP_CONTAINS_PTE;
            if !translated || op.flags & pv_only != 0 {
                return Err(GntStatus::GeneralError);
            }
            let rd = op.dom;
            if rd >= DOMID_FIRST_RESERVED || !s.domains.contains_key(&rd) {
                return Err(GntStatus::BadDomain);
            }
            let handle = self.table(ld).free_handle().ok_or(GntStatus::NoSpace)?;
            let mfn = self.pin(s, ld, rd, op.gref, ro, true)?;
            if let Err(e) = self.host_mapping(s, ld, rd, op, mfn, ro) {
                self.unpin(rd, op.gref, ro);
                return Err(e);
            }
            self.table(ld).maptrack.insert(
                handle,
                Track {
                    dom: rd,
                    gref: op.gref,
                    flags: op.flags,
                },
            );
            Ok((handle, mfn))
        }

        /// Pin `gref` of `rd` for `ld` (a map, or one side of a copy).
        fn pin(
            &mut self,
            s: &State,
            ld: u16,
            rd: u16,
            gref: u32,
            ro: bool,
            mapflag: bool,
        ) -> Result<Mfn, GntStatus> {
            let t = self.table(rd);
            if gref >= t.nr_entries() {
                return Err(GntStatus::BadGntref);
            }
            let mut act = t.active.get(&gref).copied().unwrap_or_default();
            let counter = if ro { act.hr } else { act.hw };
            if act.pin() > 0 && (act.mapper != ld || counter >= PIN_LIMIT) {
                return Err(GntStatus::GeneralError);
            }
            if act.pin() == 0 || (!ro && act.hw == 0) {
                t.set_status(gref, act.pin() == 0, ro, ld, mapflag)?;
                if act.pin() == 0 || !mapflag {
                    let frame = u64::from(t.entry(gref).frame);
                    let mfn = match Self::paged_frame(s, rd, frame) {
                        Ok(m) => m,
                        Err(e) => {
                            t.reduce_status(gref, ro);
                            return Err(e);
                        }
                    };
                    if act.pin() == 0 {
                        act.mapper = ld;
                        act.mfn = mfn;
                    } else if act.mfn != mfn {
                        // acquire_grant_for_copy: the entry changed under
                        // an existing pin.
                        t.reduce_status(gref, ro);
                        return Err(GntStatus::GeneralError);
                    }
                }
            } else if !mapflag && s.machine.owner(act.mfn.0) != Some(Owner::Dom(rd)) {
                t.reduce_status(gref, ro);
                return Err(GntStatus::BadDomain);
            }
            if ro {
                act.hr += 1;
            } else {
                act.hw += 1;
            }
            t.active.insert(gref, act);
            Ok(act.mfn)
        }

        fn unpin(&mut self, rd: u16, gref: u32, ro: bool) {
            let t = self.table(rd);
            if let Some(a) = t.active.get_mut(&gref) {
                if ro {
                    a.hr = a.hr.saturating_sub(1);
                } else {
                    a.hw = a.hw.saturating_sub(1);
                }
            }
            t.reduce_status(gref, ro);
        }

        fn crash(s: &mut State, d: u16) {
            if let Some(dom) = s.domains.get_mut(&d) {
                dom.shutdown = Some(ShutdownReason::Crash.code());
            }
        }

        /// `create_grant_host_mapping` / `create_grant_p2m_mapping`.
        fn host_mapping(
            &mut self,
            s: &mut State,
            ld: u16,
            rd: u16,
            op: &g::MapGrantRef,
            mfn: Mfn,
            ro: bool,
        ) -> Result<(), GntStatus> {
            if op.flags & !g::GNTMAP_READONLY != g::GNTMAP_HOST_MAP {
                return Err(GntStatus::GeneralError);
            }
            let gfn = Gfn(op.host_addr >> PAGE_SHIFT);
            let (limit, arm) = match s.domains.get(&ld) {
                Some(d) => (d.cfg.gfn_limit, d.is_arm()),
                None => return Err(GntStatus::GeneralError),
            };
            if gfn.0 >= limit {
                return Err(GntStatus::GeneralError);
            }
            match (self.at(s, ld, gfn), arm) {
                (At::Nothing, _) => {}
                (At::Foreign(_) | At::Grant(_) | At::Acquired(..), false) => {
                    // p2m_add_page: "not permitted", domain_crash(d).
                    Self::crash(s, ld);
                    return Err(GntStatus::GeneralError);
                }
                (At::Ram(_), _) => Self::unhook_ram(s, ld, gfn),
                (At::TableFrame(i), _) => self.table(ld).frame_gfn[i] = None,
                (At::SharedInfo, _) => s.evt.unhook_shared_info(ld),
                (At::Foreign(_), true) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.foreign.remove(&gfn);
                    }
                }
                (At::Acquired(..), true) => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.acquired.remove(&gfn);
                    }
                }
                (At::Grant(_), true) => {
                    self.table(ld).host_maps.remove(&gfn);
                }
            }
            if !arm && s.machine.owner(mfn.0) == Some(Owner::Dom(ld)) {
                // p2m_add_page's m->p pass: the caller's own page leaves the
                // GFN it was at.
                if let Some(d) = s.domains.get_mut(&ld) {
                    if let Some(Some(og)) = d.frames.get(&mfn).copied() {
                        if og != gfn && d.p2m.get(&og) == Some(&mfn) {
                            d.p2m.remove(&og);
                            d.frames.insert(mfn, None);
                        }
                    }
                }
            }
            self.table(ld).host_maps.insert(
                gfn,
                GrantHostMap {
                    granter: DomId(rd),
                    gref: op.gref,
                    mfn,
                    readonly: ro,
                },
            );
            if let Some(d) = s.domains.get_mut(&ld) {
                d.max_mapped = d.max_mapped.max(gfn.0);
            }
            Ok(())
        }

        // ---- unmap ----

        fn unmap_one(
            &mut self,
            s: &mut State,
            ld: u16,
            op: &g::UnmapGrantRef,
        ) -> Result<(), GntStatus> {
            let track = *self
                .table(ld)
                .maptrack
                .get(&op.handle)
                .ok_or(GntStatus::BadHandle)?;
            if op.host_addr == 0 || track.flags & g::GNTMAP_HOST_MAP == 0 {
                // Nothing asked that this mapping has: nothing done, okay.
                return Ok(());
            }
            let ro = track.flags & g::GNTMAP_READONLY != 0;
            let act_mfn = self
                .table(track.dom)
                .active
                .get(&track.gref)
                .map_or(Mfn(u64::MAX), |a| a.mfn);
            let gfn = Gfn(op.host_addr >> PAGE_SHIFT);
            let arm = s.domains.get(&ld).is_some_and(|x| x.is_arm());
            match (self.at(s, ld, gfn), arm) {
                (At::Grant(m), _) if m == act_mfn => {
                    self.table(ld).host_maps.remove(&gfn);
                }
                (At::Nothing, true) => {}
                (At::Ram(m), true) if m == act_mfn => Self::unhook_ram(s, ld, gfn),
                (At::Foreign(m), true) if m == act_mfn => {
                    if let Some(d) = s.domains.get_mut(&ld) {
                        d.foreign.remove(&gfn);
                    }
                }
                _ => return Err(GntStatus::GeneralError),
            }
            self.table(ld).maptrack.remove(&op.handle);
            self.unpin(track.dom, track.gref, ro);
            Ok(())
        }

        // ---- copy ----

        /// `gnttab_copy_lock_domain`.
        fn copy_domain(s: &State, domid: u16, is_gref: bool) -> Result<u16, GntStatus> {
            if domid != DomId::SELF.0 && !is_gref {
                return Err(GntStatus::PermissionDenied);
            }
            s.lookup_any(DomId(domid)).ok_or(GntStatus::BadDomain)
        }

        /// `gnttab_copy_claim_buf`: the frame behind one side, and whether a
        /// grant was pinned for it (to release).
        fn claim(
            &mut self,
            s: &State,
            ld: u16,
            d: u16,
            p: &g::CopyPtr,
            is_gref: bool,
            ro: bool,
        ) -> Result<Mfn, GntStatus> {
            if is_gref {
                self.pin(s, ld, d, p.u as u32, ro, false)
            } else {
                Self::paged_frame(s, d, p.u)
            }
        }

        fn copy_one(&mut self, s: &mut State, ld: u16, op: &g::GntCopy) -> Result<(), GntStatus> {
            let src_gref = op.flags & g::GNTCOPY_SOURCE_GREF != 0;
            let dst_gref = op.flags & g::GNTCOPY_DEST_GREF != 0;
            let sd = Self::copy_domain(s, op.source.domid, src_gref)?;
            let dd = Self::copy_domain(s, op.dest.domid, dst_gref)?;
            let src = self.claim(s, ld, sd, &op.source, src_gref, true)?;
            let dst = match self.claim(s, ld, dd, &op.dest, dst_gref, false) {
                Ok(m) => m,
                Err(e) => {
                    if src_gref {
                        self.unpin(sd, op.source.u as u32, true);
                    }
                    return Err(e);
                }
            };
            let page = PAGE_SIZE_BYTES;
            let r = if usize::from(op.source.offset) + usize::from(op.len) > page
                || usize::from(op.dest.offset) + usize::from(op.len) > page
            {
                Err(GntStatus::BadCopyArg)
            } else {
                let mut buf = alloc::vec![0u8; usize::from(op.len)];
                self.mem(src).read(usize::from(op.source.offset), &mut buf);
                self.mem(dst).write(usize::from(op.dest.offset), &buf);
                Ok(())
            };
            if src_gref {
                self.unpin(sd, op.source.u as u32, true);
            }
            if dst_gref {
                self.unpin(dd, op.dest.u as u32, false);
            }
            r
        }

        // ---- for XenModel's set-up and inspection methods ----

        /// The memory `d` sees at `gfn`.
        fn page<'a>(&'a mut self, s: &'a State, d: u16, gfn: Gfn) -> Option<&'a PageMem> {
            match self.at(s, d, gfn) {
                At::SharedInfo => s.evt.shared_info_mem(d),
                At::Nothing => None,
                At::Ram(m) | At::Foreign(m) | At::Grant(m) => Some(self.mem(m)),
                At::TableFrame(i) => self
                    .tables
                    .get(&d)
                    .and_then(|t| t.frames.get(i))
                    .map(|b| &**b),
                At::Acquired(f, i) => self
                    .tables
                    .get(&f)
                    .and_then(|t| t.frames.get(i as usize))
                    .map(|b| &**b),
            }
        }

        fn page_ptr(&mut self, s: &State, d: u16, gfn: Gfn) -> Option<*mut u8> {
            self.page(s, d, gfn).map(PageMem::ptr)
        }
    }

    const PAGE_SIZE_BYTES: usize = 1 << PAGE_SHIFT;

    impl XenModel {
        /// A pointer to the memory `dom` sees at its frame `gfn` (its RAM, a
        /// foreign or grant mapping, a grant-table frame), `None` for
        /// nothing. The page stays where it is for the model's life, so the
        /// pointer can stand for a mapping of it in host tests; it is only
        /// valid for 4096 bytes, and only while no other pointer to the
        /// same page is being used.
        pub fn page_ptr(&self, dom: DomId, gfn: Gfn) -> Option<*mut u8> {
            let s = self.state.borrow();
            self.gnt.borrow_mut().page_ptr(&s, dom.0, gfn)
        }

        /// Read what `dom` sees at `gfn` from byte `offset`; false if nothing
        /// is there or the range leaves the page.
        pub fn read_guest(&self, dom: DomId, gfn: Gfn, offset: usize, buf: &mut [u8]) -> bool {
            self.with_guest_page(dom, gfn, offset, buf.len(), |p| p.read(offset, buf))
        }

        /// Write to what `dom` sees at `gfn`, as the domain itself would
        /// (through a read-only grant mapping too: the model does not guard
        /// it); false if nothing is there or the range leaves the page.
        pub fn write_guest(&self, dom: DomId, gfn: Gfn, offset: usize, data: &[u8]) -> bool {
            self.with_guest_page(dom, gfn, offset, data.len(), |p| p.write(offset, data))
        }

        /// `f` on the page `dom` sees at `gfn`, if there is one and
        /// `[offset, offset + len)` lies in it; whether `f` ran.
        fn with_guest_page(
            &self,
            dom: DomId,
            gfn: Gfn,
            offset: usize,
            len: usize,
            f: impl FnOnce(&PageMem),
        ) -> bool {
            if offset.checked_add(len).is_none_or(|e| e > PAGE_SIZE_BYTES) {
                return false;
            }
            let s = self.state.borrow();
            let mut g = self.gnt.borrow_mut();
            match g.page(&s, dom.0, gfn) {
                Some(p) => {
                    f(p);
                    true
                }
                None => false,
            }
        }

        /// Write grant entry `gref` of `dom`'s table as the domain does:
        /// `frame` and `domid` first, then `flags`.
        pub fn gnttab_write_entry(
            &self,
            dom: DomId,
            gref: u32,
            entry: GrantEntryV1,
        ) -> Result<(), ModelError> {
            let s = self.state.borrow();
            if !s.domains.contains_key(&dom.0) {
                return Err(ModelError::NoSuchDomain(dom));
            }
            let mut g = self.gnt.borrow_mut();
            let t = g.table(dom.0);
            if gref >= t.nr_entries() {
                return Err(ModelError::BadConfig("grant reference beyond the table"));
            }
            let w = t.word(gref);
            let old = w.load(Ordering::SeqCst);
            let body = (u64::from(entry.frame) << 32) | (u64::from(entry.domid) << 16);
            w.store((old & 0xffff) | body, Ordering::SeqCst);
            w.store(body | u64::from(entry.flags), Ordering::SeqCst);
            Ok(())
        }

        /// Entry `gref` of `dom`'s grant table.
        pub fn gnttab_entry(&self, dom: DomId, gref: u32) -> Option<GrantEntryV1> {
            let g = self.gnt.borrow();
            let t = g.tables.get(&dom.0)?;
            (gref < t.nr_entries()).then(|| t.entry(gref))
        }

        /// `(nr_frames, max_nr_frames)` of `dom`'s table (1 and the default
        /// maximum before first use); `None` for an unknown domain.
        pub fn gnttab_size(&self, dom: DomId) -> Option<(u32, u32)> {
            if !self.state.borrow().domains.contains_key(&dom.0) {
                return None;
            }
            let mut g = self.gnt.borrow_mut();
            let t = g.table(dom.0);
            Some((t.frames.len() as u32, t.max_frames))
        }

        /// Where each of `dom`'s grant-table frames is in its physmap.
        pub fn gnttab_frame_gfns(&self, dom: DomId) -> Vec<Option<Gfn>> {
            let g = self.gnt.borrow();
            g.tables
                .get(&dom.0)
                .map(|t| t.frame_gfn.clone())
                .unwrap_or_default()
        }

        /// Set `dom`'s `max_grant_frames` (not below its current size).
        pub fn gnttab_set_max_frames(&self, dom: DomId, frames: u32) -> Result<(), ModelError> {
            if !self.state.borrow().domains.contains_key(&dom.0) {
                return Err(ModelError::NoSuchDomain(dom));
            }
            let mut g = self.gnt.borrow_mut();
            let t = g.table(dom.0);
            if frames < t.frames.len() as u32 {
                return Err(ModelError::BadConfig("fewer frames than the table has"));
            }
            t.max_frames = frames;
            Ok(())
        }

        /// Set how many maptrack handles `dom` may hold.
        pub fn gnttab_set_maptrack_limit(
            &self,
            dom: DomId,
            handles: u32,
        ) -> Result<(), ModelError> {
            if !self.state.borrow().domains.contains_key(&dom.0) {
                return Err(ModelError::NoSuchDomain(dom));
            }
            self.gnt.borrow_mut().table(dom.0).maptrack_limit = handles;
            Ok(())
        }

        /// The grant mappings in `dom`'s physmap.
        pub fn gnttab_host_maps(&self, dom: DomId) -> BTreeMap<Gfn, GrantHostMap> {
            let g = self.gnt.borrow();
            g.tables
                .get(&dom.0)
                .map(|t| t.host_maps.clone())
                .unwrap_or_default()
        }

        /// Maptrack handles `dom` holds.
        pub fn gnttab_handles(&self, dom: DomId) -> usize {
            self.gnt
                .borrow()
                .tables
                .get(&dom.0)
                .map_or(0, |t| t.maptrack.len())
        }

        /// `(read pins, write pins)` on entry `gref` of `dom`'s table.
        pub fn gnttab_pins(&self, dom: DomId, gref: u32) -> (u32, u32) {
            self.gnt
                .borrow()
                .tables
                .get(&dom.0)
                .and_then(|t| t.active.get(&gref))
                .map_or((0, 0), |a| (a.hr, a.hw))
        }

        /// Queue a fault for a grant operation.
        pub fn gnttab_inject(&self, fault: GntFault) {
            self.gnt.borrow_mut().faults.push(fault);
        }

        /// How many times grant operation `op` was called.
        pub fn gnttab_calls(&self, op: GntOp) -> u64 {
            self.gnt.borrow().calls[op as usize]
        }
    }

    // ---- Hooks for domain control and acquire_resource (`super::dctl`).
    // ---- Additive only: appended with the domctl/acquire work.

    impl GntModel {
        /// `d`'s table size and maximum (`(nr_frames, max_grant_frames)`;
        /// the table is created on first use, as everywhere here).
        pub(super) fn dctl_size(&mut self, d: u16) -> (u32, u32) {
            let t = self.table(d);
            (t.frames.len() as u32, t.max_frames)
        }

        /// `gnttab_get_shared_frame_mfn`'s growth: grow `d`'s table to
        /// `frames` frames if within its maximum; whether it has them now.
        pub(super) fn dctl_grow(&mut self, d: u16, frames: u32) -> bool {
            let t = self.table(d);
            if frames <= t.max_frames {
                t.grow(frames);
            }
            t.frames.len() as u32 >= frames
        }

        /// `grant_table_init` for a domain createdomain builds: a fresh
        /// table of one frame (replacing anything left under that id).
        pub(super) fn dctl_new_table(&mut self, d: u16, max_frames: u32, handles: u32) {
            let mut t = Table::new();
            t.max_frames = max_frames;
            t.maptrack_limit = handles;
            self.tables.insert(d, t);
        }

        /// `grant_table_destroy`: the table of a domain that is gone.
        pub(super) fn dctl_drop_table(&mut self, d: u16) {
            self.tables.remove(&d);
        }

        /// The memory of frame `i` of `d`'s table.
        pub(super) fn dctl_frame_ptr(&self, d: u16, i: u32) -> Option<*mut u8> {
            let t = self.tables.get(&d)?;
            t.frames.get(i as usize).map(|f| f.ptr())
        }

        /// Machine frames some domain has grant-mapped (each mapping holds
        /// a reference on the granter's page).
        pub(super) fn dctl_pinned(&self) -> BTreeSet<Mfn> {
            self.tables
                .values()
                .flat_map(|t| t.host_maps.values().map(|h| h.mfn))
                .collect()
        }

        /// Whether `d` has a grant mapping at `gfn`.
        pub(super) fn dctl_grant_at(&self, d: u16, gfn: Gfn) -> bool {
            self.tables
                .get(&d)
                .is_some_and(|t| t.host_maps.contains_key(&gfn))
        }

        /// Take `d`'s own table frame off `gfn`, if one is there (a plain
        /// p2m overwrite: the frame stays in the table).
        pub(super) fn dctl_unhook_frame(&mut self, d: u16, gfn: Gfn) {
            if let Some(t) = self.tables.get_mut(&d) {
                for g in t.frame_gfn.iter_mut() {
                    if *g == Some(gfn) {
                        *g = None;
                    }
                }
            }
        }
    }
}

/// Domain control and `XENMEM_acquire_resource` in the model: Xen 4.17's
/// `do_domctl` (`xen/common/domctl.c`: the interface-version check, the
/// lookup, the dummy XSM policy's `XSM_PRIV`, `XEN_DOMCTL_createdomain`'s
/// domid `rover`, `XEN_DOMCTL_max_mem`, `XEN_DOMCTL_destroydomain`),
/// `domain_create`/`sanitise_domain_config`/`domain_kill`
/// (`xen/common/domain.c`), `arch_sanitise_domain_config` and
/// `emulation_flags_ok` (`xen/arch/{x86,arm}/domain.c`), `grant_table_init`,
/// `gnttab_resource_max_frames` and `gnttab_acquire_resource`
/// (`xen/common/grant_table.c`), `acquire_resource` (`xen/common/memory.c`)
/// and x86's `set_foreign_p2m_entry` (`xen/arch/x86/mm/p2m.c`).
///
/// # What is modelled
///
/// * **Every domctl**: a Xen other than 4.17 ([`XenModel::set_version`]) has
///   another interface version, so it answers `EACCES`; then (all but
///   createdomain) an unknown domain, `DOMID_SELF` included, is `ESRCH`;
///   then a caller that is not the control domain gets `EPERM`.
/// * **createdomain**: the domid comes first: an explicit one
///   (`0 < id < DOMID_FIRST_RESERVED`) in use is `EEXIST`; otherwise the
///   `rover` moves to the next free id after the last one picked (wrapping
///   to 1), and stays moved if the creation then fails. Then the
///   configuration, in Xen's order, `EINVAL` unless said otherwise: unknown
///   flags or grant options, no vCPU, HAP without HVM, an IOMMU (none in the
///   model), IOMMU options without it, vmtrace or vPMU (not available),
///   x86 S3 integrity (no tboot);
///   x86: more than 128 vCPUs (HVM; 8192 PV), nested virtualisation without
///   HAP, unknown `misc_flags`, unknown emulation flags, emulation flags
///   other than LAPIC only or all-but-vPCI for HVM (or 0/PIT for PV):
///   `EOPNOTSUPP`, HVM without HAP (Debian's build has no shadow paging):
///   `EOPNOTSUPP`; Arm: flags other than HVM|HAP (plus IOMMU/vPMU), more
///   than 128 vCPUs; then the grant table: version 0 or above the
///   architecture's maximum (x86 2, Arm 1), more than 64 grant frames or
///   1024 maptrack frames (negative: those defaults), fewer than one grant
///   frame; then a CPU pool other than 0: `ESRCH`. The new domain is
///   translated if HVM, holds no memory and has `max_pages` 0, and gets a
///   fresh grant table of one frame.
/// * **max_mem**: `max_pages = min(max_memkb / 4, u32::MAX)`, below
///   `tot_pages` too.
/// * **destroydomain**: the caller itself is `EINVAL`; a dying domain, 0.
///   Otherwise the domain dies: its p2m, its foreign and acquired mappings
///   go, and its pages are freed unless another domain still maps them
///   (foreign mappings and grant mappings hold page references); it stays,
///   dying, until the last such page, and the last of its grant-table
///   frames another domain acquired, is unmapped (`remove_from_physmap`),
///   then it is gone (with its grant table). A dying domain allocates
///   nothing, and its frames cannot be mapped (`EINVAL`); max_mem and
///   acquire_resource still work on it.
/// * **acquire_resource**: x86: a translated caller that is not the
///   hardware domain: `EACCES`, first; `frame` or `frame + nr_frames`
///   beyond 32 bits: `EINVAL`; an unknown domain (or `DOMID_SELF`): `ESRCH`;
///   the caller itself: `EPERM`; an unprivileged caller: `EPERM`
///   (`XSM_DM_PRIV`); a size of 0: `EINVAL`. The size of the grant table's
///   shared frames is its `max_grant_frames`; of its status frames, 0 (v1
///   tables) on Arm and `max_grant_frames / 8` rounded up on x86 (v2 is
///   possible there), but mapping them needs a v2 table: `EINVAL`; of an
///   x86 HVM domain's ioreq server, 2 (none exists to map: `ENOENT`); of a
///   vmtrace buffer, 0; an unknown type answers its size as
///   `(u32)-EOPNOTSUPP` (4294967201), as Xen's `unsigned int` does (all
///   observed under Xen 4.17.7). A NULL list with frames is `EINVAL`; a list of 0
///   frames, `EINVAL`. Mapping goes by batches of 32: the table grows to
///   the batch's last frame (`EINVAL` beyond the maximum), then frame by
///   frame into the caller's p2m (`set_foreign_p2m_entry`): a GFN beyond the
///   p2m is `ENOENT`; over RAM the old page loses its GFN (leaked); over a
///   foreign, grant or acquired entry (other than the very same frame) x86
///   *crashes the caller* (shutdown code 3) and fails with `EPERM`. A
///   failure after the first frame of a batch is `-EIO`; of the first
///   frame of a batch (the 33rd frame, say), its own error; nothing done
///   before is undone. Each entry holds a page reference (x86's
///   `p2m_entry_modify`): destroying the domain leaves it a dying zombie
///   until the entry is removed (all observed under Xen 4.17.7).
///
/// # Simplifications
///
/// vCPUs are not modelled (the domain never runs); the arch part of the
/// configuration is checked as the build architecture's (x86 on the host);
/// Arm's GIC version is not checked; ioreq servers and vmtrace buffers do
/// not exist; PV callers of
/// acquire_resource are not modelled (`ENOSYS`); on Arm, mapping over a
/// grant mapping is refused (`EINVAL`) where Xen would replace it; grant
/// mappings a dying domain itself holds are dropped without unpinning the
/// granter's entries.
pub mod dctl {
    use super::*;

    /// `HVM_MAX_VCPUS`.
    const HVM_MAX_VCPUS: u32 = 128;
    /// x86 `MAX_VIRT_CPUS` (PV).
    const X86_PV_MAX_VCPUS: u32 = 8192;
    /// Arm `MAX_VIRT_CPUS` (64-bit).
    const ARM_MAX_VCPUS: u32 = 128;
    /// `opt_max_grant_frames`' default.
    const MAX_GRANT_FRAMES: u32 = 64;
    /// `opt_max_maptrack_frames`' default.
    const MAX_MAPTRACK_FRAMES: u32 = 1024;
    /// Maptrack entries per frame (16 bytes each).
    const MAPTRACK_PER_FRAME: u32 = 256;
    /// Frames `acquire_resource` handles per round.
    const ACQUIRE_BATCH: usize = 32;

    /// What a created domain's grant table gets.
    struct GrantLimits {
        frames: u32,
        maptrack: u32,
    }

    impl State {
        /// `do_domctl`'s prologue for a domctl on an existing domain.
        fn dctl_target(&self, dom: DomId) -> Result<u16, XenError> {
            if (self.version.major, self.version.minor) != (4, 17) {
                return Err(err(Errno::EACCES));
            }
            if !self.domains.contains_key(&dom.0) {
                return Err(err(Errno::ESRCH));
            }
            if !self.caller().is_some_and(|c| c.cfg.privileged) {
                return Err(err(Errno::EPERM));
            }
            Ok(dom.0)
        }

        pub(super) fn dctl_max_mem(&mut self, dom: DomId, kib: u64) -> Result<(), XenError> {
            self.errno_fault(Op::MaxMem)?;
            let d = self.dctl_target(dom)?;
            if let Some(x) = self.domains.get_mut(&d) {
                x.cfg.max_pages = (kib >> 2).min(u64::from(u32::MAX));
            }
            Ok(())
        }

        /// The domid createdomain uses, moving the rover.
        fn dctl_domid(&mut self, want: u16) -> Result<u16, Errno> {
            if want > 0 && want < DOMID_FIRST_RESERVED {
                return if self.domains.contains_key(&want) {
                    Err(Errno::EEXIST)
                } else {
                    Ok(want)
                };
            }
            let rover = self.rover;
            let mut d = rover.wrapping_add(1);
            while d != rover {
                if d >= DOMID_FIRST_RESERVED {
                    d = 1;
                    if d == rover {
                        break;
                    }
                }
                if !self.domains.contains_key(&d) {
                    self.rover = d;
                    return Ok(d);
                }
                d = d.wrapping_add(1);
            }
            Err(Errno::ENOMEM)
        }

        /// `sanitise_domain_config`, the arch checks of `domain_create`
        /// and `grant_table_init`, for a caller of architecture `arm`.
        fn dctl_check_config(c: &abi::DomctlCreateDomain, arm: bool) -> Result<GrantLimits, Errno> {
            let hvm = c.flags & abi::cdf::HVM != 0;
            let hap = c.flags & abi::cdf::HAP != 0;
            if c.flags & !abi::cdf::ALL != 0
                || c.grant_opts & !abi::XEN_DOMCTL_GRANT_VERSION_MASK != 0
                || c.max_vcpus < 1
                || (hap && !hvm)
                || c.flags & abi::cdf::IOMMU != 0
                || c.iommu_opts != 0
                || c.vmtrace_size != 0
                || c.flags & abi::cdf::VPMU != 0
                || (!arm && c.flags & abi::cdf::S3_INTEGRITY != 0)
            {
                return Err(Errno::EINVAL);
            }
            if arm {
                let optional = abi::cdf::IOMMU | abi::cdf::VPMU;
                if c.flags & !optional != abi::cdf::HVM | abi::cdf::HAP
                    || c.max_vcpus > ARM_MAX_VCPUS
                {
                    return Err(Errno::EINVAL);
                }
            } else {
                let max = if hvm { HVM_MAX_VCPUS } else { X86_PV_MAX_VCPUS };
                if c.max_vcpus > max || (c.flags & abi::cdf::NESTED_VIRT != 0 && !hap) {
                    return Err(Errno::EINVAL);
                }
                Self::dctl_check_x86_arch(c, hvm)?;
                if hvm && !hap {
                    // No shadow paging: shadow_domain_init refuses HVM.
                    return Err(Errno::EOPNOTSUPP);
                }
            }
            let version = c.grant_opts & abi::XEN_DOMCTL_GRANT_VERSION_MASK;
            let max_version = if arm { 1 } else { 2 };
            if version == 0 || version > max_version {
                return Err(Errno::EINVAL);
            }
            let frames = u32::try_from(c.max_grant_frames).unwrap_or(MAX_GRANT_FRAMES);
            let maptrack = u32::try_from(c.max_maptrack_frames).unwrap_or(MAX_MAPTRACK_FRAMES);
            if !(1..=MAX_GRANT_FRAMES).contains(&frames) || maptrack > MAX_MAPTRACK_FRAMES {
                return Err(Errno::EINVAL);
            }
            if c.cpupool_id != 0 {
                return Err(Errno::ESRCH);
            }
            Ok(GrantLimits { frames, maptrack })
        }

        #[cfg(not(target_arch = "aarch64"))]
        fn dctl_check_x86_arch(c: &abi::DomctlCreateDomain, hvm: bool) -> Result<(), Errno> {
            use abi::x86_emu as e;
            if c.arch.misc_flags & !e::MSR_RELAXED != 0 || c.arch.emulation_flags & !e::ALL != 0 {
                return Err(Errno::EINVAL);
            }
            let f = c.arch.emulation_flags;
            let ok = if hvm {
                f == e::LAPIC || f == e::ALL & !e::VPCI
            } else {
                f == 0 || f == e::PIT
            };
            if ok {
                Ok(())
            } else {
                Err(Errno::EOPNOTSUPP)
            }
        }

        #[cfg(target_arch = "aarch64")]
        fn dctl_check_x86_arch(_: &abi::DomctlCreateDomain, _: bool) -> Result<(), Errno> {
            // The Arm layout carries no x86 part.
            Ok(())
        }

        /// createdomain up to the grant table (which the caller sets up):
        /// the new id and its grant limits.
        fn dctl_create(
            &mut self,
            want: DomId,
            c: &abi::DomctlCreateDomain,
        ) -> Result<(u16, GrantLimits), XenError> {
            self.errno_fault(Op::CreateDomain)?;
            if (self.version.major, self.version.minor) != (4, 17) {
                return Err(err(Errno::EACCES));
            }
            let caller = self.caller().ok_or(err(Errno::ESRCH))?;
            if !caller.cfg.privileged {
                return Err(err(Errno::EPERM));
            }
            let arm = caller.is_arm();
            let cpuid_domid = caller.cfg.cpuid_domid;
            let id = self.dctl_domid(want.0).map_err(err)?;
            let limits = Self::dctl_check_config(c, arm).map_err(err)?;
            let hvm = c.flags & abi::cdf::HVM != 0;
            let features = if arm {
                DomainConfig::arm_features(false, false)
            } else {
                DomainConfig::x86_features(hvm, false)
            };
            let cfg = DomainConfig {
                domid: DomId(id),
                translated: hvm,
                direct_mapped: false,
                privileged: false,
                console: false,
                max_pages: 0,
                max_order: DOMU_MAX_ORDER,
                ram: Vec::new(),
                e820: None,
                features,
                cpuid_domid,
                gfn_limit: if arm { ARM_GFN_LIMIT } else { X86_GFN_LIMIT },
                hvm_params: Vec::new(),
                pod_entries: Vec::new(),
                pod_cache: 0,
            };
            self.domains.insert(
                id,
                Domain {
                    cfg,
                    tot_pages: 0,
                    frames: BTreeMap::new(),
                    p2m: BTreeMap::new(),
                    max_mapped: 0,
                    shutdown: None,
                    foreign: BTreeMap::new(),
                    dying: false,
                    acquired: BTreeMap::new(),
                    pod: alloc::collections::BTreeSet::new(),
                    pod_cache: Vec::new(),
                },
            );
            Ok((id, limits))
        }

        /// `domain_kill` of `dom` (the prologue done by the caller).
        fn dctl_kill(&mut self, d: u16) -> Result<(), XenError> {
            if self.current == Some(d) {
                return Err(err(Errno::EINVAL));
            }
            let Some(dom) = self.domains.get_mut(&d) else {
                return Err(err(Errno::ESRCH));
            };
            if dom.dying {
                return Ok(());
            }
            dom.dying = true;
            dom.foreign.clear();
            dom.acquired.clear();
            dom.p2m.clear();
            for g in dom.frames.values_mut() {
                *g = None;
            }
            Ok(())
        }

        /// Free the unreferenced pages of dying domains; remove those left
        /// with none. Returns the ids removed.
        fn dctl_reap(&mut self, pinned: &BTreeSet<Mfn>) -> Vec<u16> {
            let mut refs: BTreeSet<Mfn> = pinned.clone();
            let mut acquired_from: BTreeSet<u16> = BTreeSet::new();
            for d in self.domains.values() {
                refs.extend(d.foreign.values().map(|&(_, m)| m));
                acquired_from.extend(d.acquired.values().map(|&(f, _)| f));
            }
            let dying: Vec<u16> = self
                .domains
                .iter()
                .filter(|(_, d)| d.dying)
                .map(|(&id, _)| id)
                .collect();
            let mut gone = Vec::new();
            for id in dying {
                let Some(dom) = self.domains.get_mut(&id) else {
                    continue;
                };
                let free: Vec<Mfn> = dom
                    .frames
                    .keys()
                    .filter(|m| !refs.contains(m))
                    .copied()
                    .collect();
                for m in free {
                    dom.frames.remove(&m);
                    dom.tot_pages -= 1;
                    self.machine.release(m.0);
                }
                if !acquired_from.contains(&id)
                    && self.domains.get(&id).is_some_and(|d| d.frames.is_empty())
                {
                    self.domains.remove(&id);
                    gone.push(id);
                }
            }
            gone
        }

        /// `acquire_resource`'s checks before the size: the target.
        fn dctl_acquire_target(
            &mut self,
            dom: DomId,
            frame: u64,
            nr: u64,
        ) -> Result<u16, XenError> {
            self.errno_fault(Op::AcquireResource)?;
            let c = self.caller().ok_or(err(Errno::ESRCH))?;
            // arch_acquire_resource_check (x86 only).
            if !c.is_arm() && c.cfg.translated && !c.cfg.privileged {
                return Err(err(Errno::EACCES));
            }
            let privileged = c.cfg.privileged;
            let caller = c.cfg.domid.0;
            if frame >> 32 != 0 || frame.checked_add(nr).is_none_or(|e| e >> 32 != 0) {
                return Err(err(Errno::EINVAL));
            }
            // rcu_lock_remote_domain_by_id: ids only.
            if !self.domains.contains_key(&dom.0) {
                return Err(err(Errno::ESRCH));
            }
            if dom.0 == caller {
                return Err(err(Errno::EPERM));
            }
            if !privileged {
                return Err(err(Errno::EPERM));
            }
            Ok(dom.0)
        }

        /// `set_foreign_p2m_entry` of frame `idx` of `target`'s grant table
        /// at the caller's `gfn`. `grant_here`: a grant mapping is there.
        fn dctl_set_foreign(
            &mut self,
            gfn: Gfn,
            target: u16,
            idx: u32,
            grant_here: bool,
        ) -> Result<(), Errno> {
            let caller = self.current.ok_or(Errno::ESRCH)?;
            let c = self.domains.get_mut(&caller).ok_or(Errno::ESRCH)?;
            if gfn.0 >= c.cfg.gfn_limit {
                return Err(Errno::ENOENT);
            }
            if c.acquired.get(&gfn) == Some(&(target, idx)) {
                return Ok(());
            }
            let special =
                grant_here || c.acquired.contains_key(&gfn) || c.foreign.contains_key(&gfn);
            if special {
                if c.is_arm() {
                    if grant_here {
                        return Err(Errno::EINVAL);
                    }
                    c.acquired.remove(&gfn);
                    c.foreign.remove(&gfn);
                } else {
                    // "not permitted": domain_crash(d).
                    c.shutdown = Some(ShutdownReason::Crash.code());
                    return Err(Errno::EPERM);
                }
            }
            if let Some(m) = c.p2m.remove(&gfn) {
                // Overwritten: the page stays the caller's, with no GFN.
                c.frames.insert(m, None);
            }
            c.acquired.insert(gfn, (target, idx));
            c.max_mapped = c.max_mapped.max(gfn.0);
            Ok(())
        }
    }

    impl XenModel {
        pub(super) fn dctl_createdomain(
            &self,
            want: DomId,
            c: &mut abi::DomctlCreateDomain,
        ) -> Result<DomId, XenError> {
            let (id, limits) = self.state.borrow_mut().dctl_create(want, c)?;
            self.gnt.borrow_mut().dctl_new_table(
                id,
                limits.frames,
                limits.maptrack.saturating_mul(MAPTRACK_PER_FRAME),
            );
            Ok(DomId(id))
        }

        pub(super) fn dctl_destroydomain(&self, dom: DomId) -> Result<(), XenError> {
            {
                let mut s = self.state.borrow_mut();
                s.errno_fault(Op::DestroyDomain)?;
                let d = s.dctl_target(dom)?;
                s.dctl_kill(d)?;
            }
            self.dctl_reap();
            Ok(())
        }

        /// Remove the dying domains nothing refers to any more.
        pub(super) fn dctl_reap(&self) {
            let pinned = self.gnt.borrow().dctl_pinned();
            let gone = self.state.borrow_mut().dctl_reap(&pinned);
            let mut g = self.gnt.borrow_mut();
            for id in gone {
                g.dctl_drop_table(id);
            }
        }

        /// The checks [`XenModel::check_conservation`] adds for this part:
        /// no foreign entry points at a frame its domain no longer owns, no
        /// acquired entry at the table of a domain that is gone, and a dying
        /// domain maps nothing.
        pub(super) fn dctl_check(&self) -> Result<(), String> {
            let s = self.state.borrow();
            for (&id, d) in &s.domains {
                for (g, &(f, m)) in &d.foreign {
                    if s.machine.owner(m.0) != Some(Owner::Dom(f)) {
                        return Err(format!(
                            "d{id}: foreign entry {g:?} -> d{f} {m:?} dangles (frame freed)"
                        ));
                    }
                }
                for (g, &(f, i)) in &d.acquired {
                    if !s.domains.contains_key(&f) {
                        return Err(format!(
                            "d{id}: acquired entry {g:?} -> d{f} grant frame {i} dangles (domain gone)"
                        ));
                    }
                }
                if d.dying && (!d.p2m.is_empty() || !d.foreign.is_empty()) {
                    return Err(format!("d{id}: dying but still maps frames"));
                }
            }
            Ok(())
        }

        /// `XENMEM_acquire_resource`: with `gfns` `None`, the size query.
        pub(super) fn dctl_acquire(
            &self,
            dom: DomId,
            kind: u16,
            id: u32,
            frame: u64,
            gfns: Option<&mut [Gfn]>,
        ) -> Result<u32, XenError> {
            let nr = gfns.as_ref().map_or(0, |l| l.len() as u64);
            let (target, arm, translated, target_hvm) = {
                let mut s = self.state.borrow_mut();
                let t = s.dctl_acquire_target(dom, frame, nr)?;
                let c = s.caller().ok_or(err(Errno::ESRCH))?;
                let hvm = s.domains.get(&t).is_some_and(|d| d.cfg.translated);
                (t, c.is_arm(), c.cfg.translated, hvm)
            };
            // resource_max_frames (an unsigned int: -EOPNOTSUPP wraps).
            let eopnotsupp = (Errno::EOPNOTSUPP as i32).wrapping_neg() as u32;
            let max = match (kind, id) {
                (
                    abi::physmap::RESOURCE_GRANT_TABLE,
                    abi::physmap::RESOURCE_GRANT_TABLE_ID_SHARED,
                ) => self.gnt.borrow_mut().dctl_size(target).1,
                (abi::physmap::RESOURCE_GRANT_TABLE, abi::RESOURCE_GRANT_TABLE_ID_STATUS) => {
                    if arm {
                        0
                    } else {
                        // grant_to_status_frames: v2 entries (256 a frame)
                        // of 2-byte status each.
                        let entries = self.gnt.borrow_mut().dctl_size(target).1 * 256;
                        (entries * 2).div_ceil(4096)
                    }
                }
                (abi::physmap::RESOURCE_GRANT_TABLE, _) | (abi::RESOURCE_VMTRACE_BUF, _) => 0,
                // ioreq_server_max_frames: the buffered ring and one frame
                // per 128 vCPUs (HVM domains have at most 128) on x86;
                // Arm's build has no ioreq servers.
                (abi::RESOURCE_IOREQ_SERVER, _) => {
                    if target_hvm && !arm {
                        2
                    } else {
                        0
                    }
                }
                _ => eopnotsupp,
            };
            if max == 0 {
                return Err(err(Errno::EINVAL));
            }
            let Some(list) = gfns else {
                return Ok(max);
            };
            if list.is_empty() || nr > MAX_NR_EXTENTS {
                return Err(err(Errno::EINVAL));
            }
            if kind == abi::RESOURCE_IOREQ_SERVER {
                // No ioreq server exists in the model (an id beyond 16 bits
                // is EINVAL first).
                return Err(err(if id > u32::from(u16::MAX) {
                    Errno::EINVAL
                } else {
                    Errno::ENOENT
                }));
            }
            if kind > abi::RESOURCE_VMTRACE_BUF {
                return Err(err(Errno::EOPNOTSUPP));
            }
            if !translated {
                return Err(err(Errno::ENOSYS));
            }
            let first = frame as u32;
            for (b, chunk) in list.chunks(ACQUIRE_BATCH).enumerate() {
                let base = first + (b * ACQUIRE_BATCH) as u32;
                // _acquire_resource: only shared grant frames are mappable.
                if kind != abi::physmap::RESOURCE_GRANT_TABLE
                    || id != abi::physmap::RESOURCE_GRANT_TABLE_ID_SHARED
                {
                    return Err(err(Errno::EINVAL));
                }
                let last = base + chunk.len() as u32 - 1;
                if !self.gnt.borrow_mut().dctl_grow(target, last + 1) {
                    return Err(err(Errno::EINVAL));
                }
                for (i, &g) in chunk.iter().enumerate() {
                    let caller = self.state.borrow().current.unwrap_or(0);
                    let grant_here = self.gnt.borrow().dctl_grant_at(caller, g);
                    let r = self.state.borrow_mut().dctl_set_foreign(
                        g,
                        target,
                        base + i as u32,
                        grant_here,
                    );
                    match r {
                        Ok(()) => self.gnt.borrow_mut().dctl_unhook_frame(caller, g),
                        Err(_) if i > 0 => return Err(err(Errno::EIO)),
                        Err(e) => return Err(err(e)),
                    }
                }
            }
            Ok(0)
        }

        /// The acquired grant-table frames in `dom`'s physmap: GFN to
        /// (domain, frame index).
        pub fn acquired(&self, dom: DomId) -> BTreeMap<Gfn, (DomId, u32)> {
            let s = self.state.borrow();
            s.domains
                .get(&dom.0)
                .map(|d| {
                    d.acquired
                        .iter()
                        .map(|(g, &(f, i))| (*g, (DomId(f), i)))
                        .collect()
                })
                .unwrap_or_default()
        }

        /// The memory of the grant-table frame `dom` acquired at `gfn` (see
        /// [`XenModel::page_ptr`] for the rules of its use).
        pub fn acquired_ptr(&self, dom: DomId, gfn: Gfn) -> Option<*mut u8> {
            let (f, i) = *self
                .state
                .borrow()
                .domains
                .get(&dom.0)?
                .acquired
                .get(&gfn)?;
            self.gnt.borrow().dctl_frame_ptr(f, i)
        }

        /// Whether `dom` is dying (`None`: no such domain).
        pub fn is_dying(&self, dom: DomId) -> Option<bool> {
            self.state.borrow().domains.get(&dom.0).map(|d| d.dying)
        }

        /// The domains that exist, dying ones included.
        pub fn domain_ids(&self) -> Vec<DomId> {
            self.state
                .borrow()
                .domains
                .keys()
                .map(|&d| DomId(d))
                .collect()
        }

        /// createdomain's rover: the last domid it picked (0: none yet).
        pub fn rover(&self) -> u16 {
            self.state.borrow().rover
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use xenmem::xen::domctl::CreateDomain;

        const D0: DomId = DomId(0);
        const SELF: DomId = DomId::SELF;
        const GT: u16 = abi::physmap::RESOURCE_GRANT_TABLE;
        const SHARED: u32 = abi::physmap::RESOURCE_GRANT_TABLE_ID_SHARED;

        fn e(x: Errno) -> XenError {
            XenError::Errno(x)
        }

        fn ok(x: &XenModel) {
            if let Err(m) = x.check_conservation() {
                panic!("conservation: {m}");
            }
        }

        fn helper() -> abi::DomctlCreateDomain {
            CreateDomain::x86_pvh_helper().to_abi().unwrap()
        }

        /// A PVH dom0 (the caller) on a machine of 64 Ki frames.
        fn world() -> XenModel {
            let x = XenModel::new(1 << 16);
            x.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
            x
        }

        fn create(x: &XenModel) -> DomId {
            x.domctl_createdomain(D0, &mut helper()).unwrap()
        }

        #[test]
        fn createdomain_picks_ids_with_a_rover() {
            let x = world();
            let a = create(&x);
            let b = create(&x);
            assert_eq!((a, b), (DomId(1), DomId(2)));
            // A new domain: paused, no memory, none allowed, a fresh table.
            let i = x.domain_info(a).unwrap();
            assert_eq!((i.tot_pages.0, i.max_pages.0, i.dying), (0, 0, false));
            assert_eq!(x.gnttab_size(a), Some((1, 64)));
            // Destroyed ids are not reused at once: the rover moves on.
            x.domctl_destroydomain(a).unwrap();
            assert_eq!(x.domain_info(a), Err(e(Errno::ESRCH)));
            assert_eq!(create(&x), DomId(3));
            // An explicit id: free or EEXIST.
            assert_eq!(x.domctl_createdomain(a, &mut helper()), Ok(a));
            assert_eq!(
                x.domctl_createdomain(a, &mut helper()),
                Err(e(Errno::EEXIST))
            );
            // DOMID_SELF and other reserved ids mean "pick one".
            assert_eq!(x.domctl_createdomain(SELF, &mut helper()), Ok(DomId(4)));
            assert_eq!(x.rover(), 4);
            ok(&x);
        }

        #[test]
        fn createdomain_checks_the_configuration_like_xen() {
            let x = world();
            let bad = |f: &dyn Fn(&mut abi::DomctlCreateDomain)| {
                let mut c = helper();
                f(&mut c);
                x.domctl_createdomain(D0, &mut c)
            };
            use abi::{cdf, x86_emu};
            assert_eq!(bad(&|c| c.flags |= 1 << 8), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.grant_opts = 0x11), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.max_vcpus = 0), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.max_vcpus = 129), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.flags = cdf::HAP), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.flags |= cdf::IOMMU), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.vmtrace_size = 4096), Err(e(Errno::EINVAL)));
            assert_eq!(
                bad(&|c| c.flags |= cdf::S3_INTEGRITY),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(bad(&|c| c.arch.misc_flags = 2), Err(e(Errno::EINVAL)));
            assert_eq!(
                bad(&|c| c.arch.emulation_flags = 1 << 11),
                Err(e(Errno::EINVAL))
            );
            // Valid bits, but not a set Xen allows for an HVM domU.
            assert_eq!(
                bad(&|c| c.arch.emulation_flags = x86_emu::ALL),
                Err(e(Errno::EOPNOTSUPP))
            );
            assert_eq!(
                bad(&|c| c.arch.emulation_flags = x86_emu::LAPIC | x86_emu::IOAPIC),
                Err(e(Errno::EOPNOTSUPP))
            );
            // HVM without HAP needs shadow paging, which the build lacks.
            assert_eq!(bad(&|c| c.flags = cdf::HVM), Err(e(Errno::EOPNOTSUPP)));
            // Grant table limits.
            assert_eq!(bad(&|c| c.grant_opts = 0), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.grant_opts = 3), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.max_grant_frames = 65), Err(e(Errno::EINVAL)));
            assert_eq!(bad(&|c| c.max_grant_frames = 0), Err(e(Errno::EINVAL)));
            assert_eq!(
                bad(&|c| c.max_maptrack_frames = 1025),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(bad(&|c| c.cpupool_id = 1), Err(e(Errno::ESRCH)));
            // Every failure above moved the rover: ids 1..=19 were tried.
            assert_eq!(x.rover(), 19);
            assert_eq!(x.domain_ids(), [D0]);
            // Defaults (-1) and the all-but-vPCI HVM set are fine.
            let d = bad(&|c| {
                c.max_grant_frames = -1;
                c.max_maptrack_frames = -1;
                c.grant_opts = 2;
                c.arch.emulation_flags = x86_emu::ALL & !x86_emu::VPCI;
            })
            .unwrap();
            assert_eq!(d, DomId(20));
            assert_eq!(x.gnttab_size(d), Some((1, 64)));
            // Nested virtualisation with HAP is fine.
            bad(&|c| c.flags |= cdf::NESTED_VIRT).unwrap();
            // A PV domain: PIT only.
            let pv = bad(&|c| {
                c.flags = 0;
                c.arch.emulation_flags = x86_emu::PIT;
            })
            .unwrap();
            x.set_current(pv).unwrap();
            assert!(!x
                .features()
                .unwrap()
                .contains(Features::AUTO_TRANSLATED_PHYSMAP));
            x.set_current(D0).unwrap();
            ok(&x);
        }

        #[test]
        fn domctls_need_4_17_and_the_control_domain() {
            let x = world();
            x.add_domain(DomainConfig::pvh_domu(DomId(5), 64)).unwrap();
            x.set_current(DomId(5)).unwrap();
            assert_eq!(
                x.domctl_createdomain(D0, &mut helper()),
                Err(e(Errno::EPERM))
            );
            assert_eq!(x.domctl_max_mem(D0, 1024), Err(e(Errno::EPERM)));
            assert_eq!(x.domctl_destroydomain(D0), Err(e(Errno::EPERM)));
            // The lookup comes before XSM.
            assert_eq!(x.domctl_destroydomain(DomId(9)), Err(e(Errno::ESRCH)));
            assert_eq!(x.domctl_max_mem(SELF, 1024), Err(e(Errno::ESRCH)));
            x.set_current(D0).unwrap();
            let mut v = x.version().unwrap();
            v.minor = 18;
            x.set_version(v);
            assert_eq!(
                x.domctl_createdomain(D0, &mut helper()),
                Err(e(Errno::EACCES))
            );
            assert_eq!(x.domctl_destroydomain(DomId(5)), Err(e(Errno::EACCES)));
            assert_eq!(x.rover(), 0, "refused before the domid is picked");
        }

        #[test]
        fn max_mem_and_memory_for_another_domain() {
            let x = world();
            let h = create(&x);
            let free = x.free_frames();
            // No memory allowed yet: populate does nothing.
            let mut g = [Gfn(0x1000)];
            assert_eq!(
                x.populate_physmap(h, Order::ZERO, MemFlags::NONE, &mut g),
                Ok(0)
            );
            x.domctl_max_mem(h, 64).unwrap();
            assert_eq!(x.max_pages(h), Some(16));
            let mut gs: Vec<Gfn> = (0x1000..0x1010).map(Gfn).collect();
            assert_eq!(
                x.populate_physmap(h, Order::ZERO, MemFlags::NONE, &mut gs),
                Ok(16)
            );
            let mut more = [Gfn(0x2000)];
            assert_eq!(
                x.populate_physmap(h, Order::ZERO, MemFlags::NONE, &mut more),
                Ok(0)
            );
            assert_eq!(x.tot_pages(h), Some(16));
            assert_eq!(free - x.free_frames(), 16);
            // Order 9 at an aligned GFN, once max_mem allows it.
            x.domctl_max_mem(h, (16 + 512) * 4).unwrap();
            let mut big = [Gfn(0x200)];
            assert_eq!(
                x.populate_physmap(h, Order::new_const(9), MemFlags::NONE, &mut big),
                Ok(1)
            );
            // max_mem clamps to 32 bits and may go below tot_pages.
            x.domctl_max_mem(h, u64::MAX).unwrap();
            assert_eq!(x.max_pages(h), Some(u64::from(u32::MAX)));
            x.domctl_max_mem(h, 4).unwrap();
            assert_eq!(x.max_pages(h), Some(1));
            ok(&x);
            x.domctl_destroydomain(h).unwrap();
            assert_eq!(x.free_frames(), free, "every page came back");
            ok(&x);
        }

        fn populated(x: &XenModel) -> DomId {
            let h = create(x);
            x.domctl_max_mem(h, 64).unwrap();
            let mut gs: Vec<Gfn> = (0x1000..0x1010).map(Gfn).collect();
            assert_eq!(
                x.populate_physmap(h, Order::ZERO, MemFlags::NONE, &mut gs),
                Ok(16)
            );
            h
        }

        #[test]
        fn a_foreign_map_of_the_callers_own_domid_is_eperm_on_x86_and_esrch_on_arm() {
            let mut st = [xenmem::xen::XenStatus(0)];
            let x = world();
            x.map_foreign_batch(D0, &[Gfn(0x10)], &[Gfn(0x100000)], &mut st)
                .unwrap();
            assert_eq!(st[0].result(), Err(e(Errno::EPERM)));
            let arm = XenModel::new(1 << 16);
            arm.add_domain(DomainConfig::arm_dom0(Mfn(0x8000), 4096))
                .unwrap();
            arm.map_foreign_batch(D0, &[Gfn(0x8000)], &[Gfn(0x100000)], &mut st)
                .unwrap();
            assert_eq!(st[0].result(), Err(e(Errno::ESRCH)));
            assert!(arm.foreign(D0).is_empty());
        }

        #[test]
        fn a_mapped_domain_stays_a_zombie_until_unmapped() {
            let x = world();
            let free = x.free_frames();
            let h = populated(&x);
            let mut st = [xenmem::xen::XenStatus(0); 2];
            x.map_foreign_batch(
                h,
                &[Gfn(0x1000), Gfn(0x1001)],
                &[Gfn(0x100000), Gfn(0x100001)],
                &mut st,
            )
            .unwrap();
            assert_eq!(st, [xenmem::xen::XenStatus(0); 2]);
            assert_eq!(x.domctl_destroydomain(D0), Err(e(Errno::EINVAL)));
            x.domctl_destroydomain(h).unwrap();
            // Two pages are still mapped: the domain is a dying zombie.
            let i = x.domain_info(h).unwrap();
            assert!(i.dying);
            assert_eq!(i.tot_pages.0, 2);
            assert_eq!(x.is_dying(h), Some(true));
            ok(&x);
            // Destroying again is fine; it allocates nothing any more.
            x.domctl_destroydomain(h).unwrap();
            x.domctl_max_mem(h, 1 << 20).unwrap();
            let mut g = [Gfn(0)];
            assert_eq!(
                x.populate_physmap(h, Order::ZERO, MemFlags::NONE, &mut g),
                Ok(0)
            );
            // Nothing to map there any more.
            let mut st1 = [xenmem::xen::XenStatus(0)];
            x.map_foreign_batch(h, &[Gfn(0x1002)], &[Gfn(0x100002)], &mut st1)
                .unwrap();
            assert_eq!(st1[0].result(), Err(e(Errno::EINVAL)));
            x.remove_from_physmap(Gfn(0x100000)).unwrap();
            assert_eq!(x.is_dying(h), Some(true));
            x.remove_from_physmap(Gfn(0x100001)).unwrap();
            assert_eq!(x.is_dying(h), None, "gone with its last page");
            assert_eq!(x.domain_info(h), Err(e(Errno::ESRCH)));
            assert_eq!(x.free_frames(), free);
            ok(&x);
        }

        #[test]
        fn acquire_query_and_map() {
            let x = world();
            let h = populated(&x);
            assert_eq!(x.acquire_resource_size(h, GT, SHARED), Ok(64));
            // Status frames: v2 is possible on x86 (64 * 256 * 2 bytes).
            assert_eq!(
                x.acquire_resource_size(h, GT, abi::RESOURCE_GRANT_TABLE_ID_STATUS),
                Ok(8)
            );
            // What Xen 4.17.7 answered for the other types.
            assert_eq!(
                x.acquire_resource_size(h, abi::RESOURCE_IOREQ_SERVER, 0),
                Ok(2)
            );
            assert_eq!(
                x.acquire_resource_size(h, abi::RESOURCE_VMTRACE_BUF, 0),
                Err(e(Errno::EINVAL))
            );
            let mut io = [Gfn(0x100100)];
            assert_eq!(
                x.acquire_resource(h, abi::RESOURCE_IOREQ_SERVER, 0, 0, &mut io),
                Err(e(Errno::ENOENT))
            );
            assert_eq!(x.acquire_resource_size(h, GT, 7), Err(e(Errno::EINVAL)));
            // An unknown type: Xen's unsigned int holds -EOPNOTSUPP.
            assert_eq!(x.acquire_resource_size(h, 9, 0), Ok(0xffff_ffa1));
            let mut g = [Gfn(0x100000)];
            x.acquire_resource(h, GT, SHARED, 0, &mut g).unwrap();
            assert_eq!(x.acquired(D0)[&Gfn(0x100000)], (h, 0));
            // Frame 4: the table grows to 5 frames.
            let mut g4 = [Gfn(0x100004)];
            x.acquire_resource(h, GT, SHARED, 4, &mut g4).unwrap();
            assert_eq!(x.gnttab_size(h), Some((5, 64)));
            // What the table says is what the acquired frame shows.
            x.gnttab_write_entry(
                h,
                8,
                abi::gnttab::GrantEntryV1 {
                    flags: 1,
                    domid: 0,
                    frame: 0x1000,
                },
            )
            .unwrap();
            let p = x.acquired_ptr(D0, Gfn(0x100000)).unwrap();
            // SAFETY: the model keeps the frame alive; 4096 bytes.
            let w = unsafe { (p as *const u64).add(8).read() };
            assert_eq!(w, 0x1000_0000_0001);
            // Beyond the table, status frames of a v1 table, a 0-length list.
            let mut g64 = [Gfn(0x100010)];
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 64, &mut g64),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(
                x.acquire_resource(h, GT, abi::RESOURCE_GRANT_TABLE_ID_STATUS, 0, &mut g64),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut []),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 1 << 32, &mut g64),
                Err(e(Errno::EINVAL))
            );
            assert!(!x.acquired(D0).contains_key(&Gfn(0x100010)));
            // Remove and they are gone.
            x.remove_from_physmap(Gfn(0x100000)).unwrap();
            x.remove_from_physmap(Gfn(0x100004)).unwrap();
            assert!(x.acquired(D0).is_empty());
            assert_eq!(x.remove_from_physmap(Gfn(0x100000)), Err(e(Errno::ENOENT)));
            ok(&x);
        }

        #[test]
        fn acquire_refusals() {
            let x = world();
            let h = populated(&x);
            let mut g = [Gfn(0x100000)];
            assert_eq!(
                x.acquire_resource_size(SELF, GT, SHARED),
                Err(e(Errno::ESRCH))
            );
            assert_eq!(
                x.acquire_resource_size(D0, GT, SHARED),
                Err(e(Errno::EPERM))
            );
            assert_eq!(
                x.acquire_resource_size(DomId(77), GT, SHARED),
                Err(e(Errno::ESRCH))
            );
            assert_eq!(
                x.acquire_resource(SELF, GT, SHARED, 0, &mut g),
                Err(e(Errno::ESRCH))
            );
            // An unprivileged x86 PVH domU: EACCES before anything else.
            x.add_domain(DomainConfig::pvh_domu(DomId(5), 64)).unwrap();
            x.set_current(DomId(5)).unwrap();
            assert_eq!(
                x.acquire_resource_size(SELF, GT, SHARED),
                Err(e(Errno::EACCES))
            );
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut g),
                Err(e(Errno::EACCES))
            );
            // An unprivileged Arm domU: ESRCH, own domid EPERM, XSM EPERM.
            x.add_domain(DomainConfig::arm_domu(DomId(6), 64)).unwrap();
            x.set_current(DomId(6)).unwrap();
            assert_eq!(
                x.acquire_resource_size(SELF, GT, SHARED),
                Err(e(Errno::ESRCH))
            );
            assert_eq!(
                x.acquire_resource_size(DomId(6), GT, SHARED),
                Err(e(Errno::EPERM))
            );
            assert_eq!(x.acquire_resource_size(h, GT, SHARED), Err(e(Errno::EPERM)));
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut g),
                Err(e(Errno::EPERM))
            );
            assert!(x.acquired(DomId(6)).is_empty());
            ok(&x);
        }

        #[test]
        fn a_failure_midway_leaves_the_frames_before_it_mapped() {
            let x = world();
            let h = populated(&x);
            // The second GFN is beyond the p2m: EIO, the first stays mapped.
            let mut g = [Gfn(X86_GFN_LIMIT - 1), Gfn(X86_GFN_LIMIT)];
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut g),
                Err(e(Errno::EIO))
            );
            assert_eq!(x.acquired(D0).len(), 1);
            // The first frame of a batch failing: its own error.
            let mut g1 = [Gfn(X86_GFN_LIMIT)];
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut g1),
                Err(e(Errno::ENOENT))
            );
            // ... even after 32 frames were mapped (the 33rd starts a batch).
            let mut many: Vec<Gfn> = (0..33).map(|i| Gfn(0x200000 + i)).collect();
            many[32] = Gfn(X86_GFN_LIMIT);
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut many),
                Err(e(Errno::ENOENT))
            );
            assert_eq!(x.acquired(D0).len(), 33);
            // Mapping over RAM leaks the page; over a foreign entry crashes.
            let ram = *x.p2m(D0).keys().nth(100).unwrap();
            let mut r = [ram];
            x.acquire_resource(h, GT, SHARED, 0, &mut r).unwrap();
            assert_eq!(x.leaked(D0).len(), 1);
            let mut st = [xenmem::xen::XenStatus(0)];
            x.map_foreign_batch(h, &[Gfn(0x1000)], &[Gfn(0x300000)], &mut st)
                .unwrap();
            let mut f = [Gfn(0x300000)];
            assert_eq!(
                x.acquire_resource(h, GT, SHARED, 0, &mut f),
                Err(e(Errno::EPERM))
            );
            assert_eq!(x.shutdown_code(D0), Some(3), "Xen crashes the caller");
            ok(&x);
        }

        #[test]
        fn an_acquired_frame_keeps_its_domain_a_zombie() {
            let x = world();
            let free = x.free_frames();
            let h = populated(&x);
            let mut g = [Gfn(0x100000)];
            x.acquire_resource(h, GT, SHARED, 0, &mut g).unwrap();
            x.domctl_destroydomain(h).unwrap();
            // Its pages are freed, but the entry holds the domain.
            let i = x.domain_info(h).unwrap();
            assert!(i.dying);
            assert_eq!(i.tot_pages.0, 0);
            assert_eq!(x.free_frames(), free);
            assert_eq!(x.acquire_resource_size(h, GT, SHARED), Ok(64));
            ok(&x);
            x.remove_from_physmap(Gfn(0x100000)).unwrap();
            assert_eq!(x.domain_info(h), Err(e(Errno::ESRCH)));
            ok(&x);
        }

        #[test]
        fn faults_reach_the_new_calls() {
            let x = world();
            x.inject(Fault::Errno {
                op: Op::DestroyDomain,
                errno: Errno::ERESTART,
            });
            let h = create(&x);
            assert_eq!(x.domctl_destroydomain(h), Err(e(Errno::ERESTART)));
            assert_eq!(x.domctl_destroydomain(h), Ok(()));
            assert_eq!(x.calls(Op::DestroyDomain), 2);
            assert_eq!(x.calls(Op::CreateDomain), 1);
        }
    }
}

/// Event channels in the model: Xen 4.17's `xen/common/event_channel.c`
/// (`evtchn_init`, `get_free_port`, `evtchn_allocate_port`,
/// `evtchn_alloc_unbound`, `evtchn_bind_interdomain`, `evtchn_close`,
/// `evtchn_free`, `evtchn_send`, `evtchn_status`, `evtchn_unmask`),
/// `xen/common/event_2l.c` (the 2-level ABI: pending and mask bitmaps in
/// shared_info) and `do_poll` in `xen/common/sched/core.c`.
///
/// # What is modelled
///
/// * **Ports per domain**, created on first use: `valid_evtchns` grows in
///   buckets of 64; port 0 is `ECS_RESERVED`; `get_free_port` takes the
///   lowest free port up to the domain's `max_evtchn_port`
///   ([`XenModel::evtchn_set_max_port`], default 4095, the 2-level limit),
///   else ENOSPC. States: free, reserved, unbound (offered to a domain),
///   interdomain, and an interdomain end whose peer is outside the model
///   (the console and xenstore daemons of a toolstack domU: the ports named
///   by [`DomainConfig::hvm_params`] `STORE_EVTCHN` and `CONSOLE_EVTCHN`
///   are bound to dom0 that way when the domain's event channels are first
///   used). PIRQ, VIRQ and IPI ports, FIFO ABI and XSM beyond the dummy
///   policy are not modelled.
/// * **alloc_unbound**: `DOMID_SELF` only (the trait's form); the remote
///   domain need not exist; `DOMID_SELF` as remote means the caller.
/// * **bind_interdomain**: ESRCH for no such remote domain; ENOSPC when no
///   local port is free; EINVAL for a remote port beyond its
///   `valid_evtchns`, not unbound, or offered to another domain (Xen gives
///   EINVAL here, not EPERM). Loopback (`DOMID_SELF`) works. The new local
///   port is set pending, as Xen does.
/// * **close**: EINVAL for an invalid, free or reserved port; the port's
///   pending bit is cleared (`evtchn_free`); an interdomain peer becomes
///   unbound, offered to the closer.
/// * **send**: EINVAL for an invalid, free or reserved port; interdomain:
///   the peer's pending bit (`evtchn_2l_set_pending`: if it was clear and the
///   port is unmasked, `evtchn_pending_sel` and `evtchn_upcall_pending` of
///   vCPU 0 too); unbound: dropped silently; external: recorded only.
/// * **unmask**: EINVAL for an invalid port; a usable port's mask bit is
///   cleared and, if it is pending, `evtchn_pending_sel` and
///   `evtchn_upcall_pending` are set (`evtchn_2l_unmask`).
/// * **status**: ESRCH, EINVAL (invalid port), EPERM (another domain,
///   unprivileged caller); free and reserved ports are "closed".
/// * **`SCHEDOP_poll`** (`do_poll`): EINVAL for more than 128 ports, a port
///   beyond `valid_evtchns` or one not in use; returns at once when a polled
///   port is pending. Otherwise the real vCPU would block: the model records
///   the poll as [`PollOutcome::Blocked`](evt::PollOutcome::Blocked), runs the hook of
///   [`XenModel::set_poll_hook`] (which may make something pending, as a
///   peer would, or do nothing: a timeout or a spurious wake-up) and
///   returns `Ok(())` — it never hangs. The interrupts of the guest are
///   taken to be off, so `local_events_need_delivery()` never ends a poll.
/// * **shared_info**: one page per domain in the layout of its architecture
///   ([`abi::SharedInfoLayout`]), which the pending and mask bits live in
///   whether or not it is mapped; `add_to_physmap(shared_info, 0, gfn)`
///   maps it (see [`gnt`]), [`XenModel::page_ptr`] then reaches it at
///   `gfn`, and [`XenModel::shared_info_page`] always does.
/// * A destroyed domain's ports are closed (its peers become unbound), as
///   `evtchn_destroy` does, the next time an event channel operation runs.
pub mod evt {
    use super::gnt::PageMem;
    use super::*;
    use alloc::boxed::Box;
    use core::ptr::NonNull;
    use core::sync::atomic::Ordering;
    use xenmem::xen::abi::{SharedInfoLayout, SharedInfoPage, EVTCHN_2L_NR_CHANNELS};
    use xenmem::xen::{ChannelState, ChannelStatus};

    /// `EVTCHNS_PER_BUCKET` (a 64-byte `struct evtchn`): `valid_evtchns`
    /// grows in these steps.
    const BUCKET: u32 = 64;

    /// A blocking poll's hook: runs with the model unborrowed, so it may
    /// call anything on it (switch the current domain, send, raise).
    pub type PollHook = Box<dyn FnMut(&XenModel, &PollRecord)>;

    /// A port's state (`ECS_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Chan {
        /// `ECS_FREE`.
        Free,
        /// `ECS_RESERVED` (port 0).
        Reserved,
        /// `ECS_UNBOUND`, offered to `remote`.
        Unbound {
            /// `u.unbound.remote_domid`.
            remote: DomId,
        },
        /// `ECS_INTERDOMAIN` with a peer in the model.
        Interdomain {
            /// The peer's domain.
            remote: DomId,
            /// The peer's port.
            port: u32,
        },
        /// `ECS_INTERDOMAIN` with a peer outside the model (a toolstack
        /// daemon): sends are only recorded, [`XenModel::evtchn_raise`]
        /// stands for the peer's. `EVTCHNOP_status` gives the local port
        /// number as the peer's (the model does not know it).
        External {
            /// The peer's domain.
            remote: DomId,
        },
    }

    impl Chan {
        /// `evtchn_usable`: `state > ECS_RESERVED`.
        fn usable(self) -> bool {
            !matches!(self, Chan::Free | Chan::Reserved)
        }
    }

    /// What a `SCHEDOP_poll` did.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PollOutcome {
        /// A polled port was pending: returned at once.
        Immediate,
        /// Nothing was pending: the vCPU would have blocked.
        Blocked,
    }

    /// One `SCHEDOP_poll` that passed its checks.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct PollRecord {
        /// The polling domain.
        pub dom: DomId,
        /// The ports polled.
        pub ports: Vec<u32>,
        /// The timeout given (absolute Xen system time, 0: none).
        pub timeout: u64,
        /// What it did.
        pub outcome: PollOutcome,
    }

    struct EvtDom {
        chans: Vec<Chan>,
        max_port: u32,
        layout: SharedInfoLayout,
        page: Box<PageMem>,
        gfn: Option<Gfn>,
    }

    impl EvtDom {
        fn new(d: &Domain) -> EvtDom {
            let mut e = EvtDom {
                chans: alloc::vec![Chan::Free; BUCKET as usize],
                max_port: EVTCHN_2L_NR_CHANNELS - 1,
                layout: if d.is_arm() {
                    SharedInfoLayout::ARM
                } else {
                    SharedInfoLayout::X86_64
                },
                page: PageMem::zeroed(),
                gfn: None,
            };
            e.chans[0] = Chan::Reserved;
            // The toolstack's channels to its daemons in dom0.
            for idx in [abi::hvm_param::STORE_EVTCHN, abi::hvm_param::CONSOLE_EVTCHN] {
                if let Some(&(_, v)) = d.cfg.hvm_params.iter().find(|(i, _)| *i == idx) {
                    if let Ok(p) = u32::try_from(v) {
                        if p != 0 && e.allocate(p).is_ok() {
                            e.chans[p as usize] = Chan::External { remote: DomId(0) };
                        }
                    }
                }
            }
            e
        }

        fn valid(&self) -> u32 {
            self.chans.len() as u32
        }

        fn chan(&self, port: u32) -> Option<Chan> {
            self.chans.get(port as usize).copied()
        }

        /// `evtchn_allocate_port`: make `port` valid (growing by buckets);
        /// ENOSPC beyond the limits, EBUSY if in use.
        fn allocate(&mut self, port: u32) -> Result<(), Errno> {
            if port > self.max_port || port >= EVTCHN_2L_NR_CHANNELS {
                return Err(Errno::ENOSPC);
            }
            while port >= self.valid() {
                let n = self.chans.len() + BUCKET as usize;
                self.chans.resize(n, Chan::Free);
            }
            if self.chans[port as usize] != Chan::Free {
                return Err(Errno::EBUSY);
            }
            Ok(())
        }

        /// `get_free_port`.
        fn free_port(&mut self) -> Result<u32, Errno> {
            for p in 0..=self.max_port {
                match self.allocate(p) {
                    Ok(()) => return Ok(p),
                    Err(Errno::EBUSY) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(Errno::ENOSPC)
        }

        fn word(&self, off: usize) -> &core::sync::atomic::AtomicU64 {
            // Offsets come from the layouts, all inside the page.
            self.page
                .word(off / 8)
                .expect("shared_info offset inside the page")
        }

        fn bit(&self, base: usize, port: u32) -> (&core::sync::atomic::AtomicU64, u64) {
            (self.word(base + 8 * (port / 64) as usize), 1 << (port % 64))
        }

        fn is_pending(&self, port: u32) -> bool {
            let (w, b) = self.bit(self.layout.evtchn_pending, port);
            w.load(Ordering::SeqCst) & b != 0
        }

        fn is_masked(&self, port: u32) -> bool {
            let (w, b) = self.bit(self.layout.evtchn_mask, port);
            w.load(Ordering::SeqCst) & b != 0
        }

        /// `evtchn_pending_sel` bit and `evtchn_upcall_pending` of vCPU 0.
        fn mark_upcall(&self, port: u32) {
            let sel = self.word(self.layout.vcpu0_pending_sel);
            sel.fetch_or(1 << (port / 64), Ordering::SeqCst);
            let off = self.layout.vcpu0_upcall_pending;
            self.word(off)
                .fetch_or(1 << (8 * (off % 8)), Ordering::SeqCst);
        }

        /// `evtchn_2l_set_pending`.
        fn set_pending(&self, port: u32) {
            let (w, b) = self.bit(self.layout.evtchn_pending, port);
            if w.fetch_or(b, Ordering::SeqCst) & b != 0 {
                return;
            }
            if !self.is_masked(port) {
                self.mark_upcall(port);
            }
        }

        fn clear_pending(&self, port: u32) {
            let (w, b) = self.bit(self.layout.evtchn_pending, port);
            w.fetch_and(!b, Ordering::SeqCst);
        }

        /// `evtchn_2l_unmask`.
        fn unmask(&self, port: u32) {
            let (w, b) = self.bit(self.layout.evtchn_mask, port);
            if w.fetch_and(!b, Ordering::SeqCst) & b != 0 && self.is_pending(port) {
                self.mark_upcall(port);
            }
        }

        /// `evtchn_free`.
        fn free(&mut self, port: u32) {
            self.clear_pending(port);
            self.chans[port as usize] = Chan::Free;
        }
    }

    /// The model's event channel state.
    #[derive(Default)]
    pub struct EvtModel {
        doms: BTreeMap<u16, EvtDom>,
        polls: Vec<PollRecord>,
    }

    impl EvtModel {
        /// Close the ports of domains that are gone or dying
        /// (`evtchn_destroy`): their peers become unbound.
        fn sync(&mut self, domains: &BTreeMap<u16, Domain>) {
            let gone: Vec<u16> = self
                .doms
                .keys()
                .filter(|id| domains.get(id).is_none_or(|d| d.dying))
                .copied()
                .collect();
            for id in gone {
                let Some(e) = self.doms.remove(&id) else {
                    continue;
                };
                for c in e.chans {
                    if let Chan::Interdomain { remote, port } = c {
                        if let Some(r) = self.doms.get_mut(&remote.0) {
                            r.chans[port as usize] = Chan::Unbound { remote: DomId(id) };
                        }
                    }
                }
            }
        }

        /// Domain `id`'s state, created on first use; `None` if no such
        /// (live) domain.
        fn dom(&mut self, domains: &BTreeMap<u16, Domain>, id: u16) -> Option<&mut EvtDom> {
            let d = domains.get(&id).filter(|d| !d.dying)?;
            Some(self.doms.entry(id).or_insert_with(|| EvtDom::new(d)))
        }

        pub(super) fn shared_info_gfn(&self, d: u16) -> Option<Gfn> {
            self.doms.get(&d).and_then(|e| e.gfn)
        }

        pub(super) fn shared_info_mem(&self, d: u16) -> Option<&PageMem> {
            self.doms.get(&d).map(|e| &*e.page)
        }

        pub(super) fn map_shared_info(
            &mut self,
            domains: &BTreeMap<u16, Domain>,
            d: u16,
            gfn: Gfn,
        ) {
            if let Some(e) = self.dom(domains, d) {
                e.gfn = Some(gfn);
            }
        }

        pub(super) fn unhook_shared_info(&mut self, d: u16) {
            if let Some(e) = self.doms.get_mut(&d) {
                e.gfn = None;
            }
        }
    }

    impl State {
        /// The caller and the event state, synced.
        fn evt_caller(&mut self) -> Result<u16, XenError> {
            self.evt.sync(&self.domains);
            self.current
                .filter(|c| self.domains.get(c).is_some_and(|d| !d.dying))
                .ok_or(err(Errno::ESRCH))
        }

        fn evt_dom(&mut self, id: u16) -> Result<&mut EvtDom, XenError> {
            self.evt.dom(&self.domains, id).ok_or(err(Errno::ESRCH))
        }

        pub(super) fn evt_alloc_unbound(
            &mut self,
            dom: DomId,
            remote: DomId,
        ) -> Result<u32, XenError> {
            let caller = self.evt_caller()?;
            let d = self.lookup_any(dom).ok_or(err(Errno::ESRCH))?;
            let e = self.evt_dom(d)?;
            let port = e.free_port().map_err(err)?;
            if !self.xsm_target(d) {
                // (The port was only looked at: check_free_port.)
                return Err(err(Errno::EPERM));
            }
            let remote = if remote == DomId::SELF {
                DomId(caller)
            } else {
                remote
            };
            self.evt_dom(d)?.chans[port as usize] = Chan::Unbound { remote };
            Ok(port)
        }

        pub(super) fn evt_bind_interdomain(
            &mut self,
            rdom: DomId,
            rport: u32,
        ) -> Result<u32, XenError> {
            let ld = self.evt_caller()?;
            let rd = self.lookup_any(rdom).ok_or(err(Errno::ESRCH))?;
            self.evt_dom(rd)?;
            let lport = self.evt_dom(ld)?.free_port().map_err(err)?;
            let rchan = self.evt_dom(rd)?.chan(rport);
            if rchan != Some(Chan::Unbound { remote: DomId(ld) }) {
                return Err(err(Errno::EINVAL));
            }
            self.evt_dom(ld)?.chans[lport as usize] = Chan::Interdomain {
                remote: DomId(rd),
                port: rport,
            };
            self.evt_dom(rd)?.chans[rport as usize] = Chan::Interdomain {
                remote: DomId(ld),
                port: lport,
            };
            self.evt_dom(ld)?.set_pending(lport);
            Ok(lport)
        }

        pub(super) fn evt_close(&mut self, port: u32) -> Result<(), XenError> {
            let ld = self.evt_caller()?;
            let e = self.evt_dom(ld)?;
            match e.chan(port) {
                None | Some(Chan::Free | Chan::Reserved) => Err(err(Errno::EINVAL)),
                Some(Chan::Unbound { .. } | Chan::External { .. }) => {
                    e.free(port);
                    Ok(())
                }
                Some(Chan::Interdomain {
                    remote,
                    port: rport,
                }) => {
                    e.free(port);
                    self.evt_dom(remote.0)?.chans[rport as usize] =
                        Chan::Unbound { remote: DomId(ld) };
                    Ok(())
                }
            }
        }

        pub(super) fn evt_send(&mut self, ld: u16, port: u32) -> Result<(), XenError> {
            self.evt.sync(&self.domains);
            let e = self.evt_dom(ld)?;
            match e.chan(port) {
                None | Some(Chan::Free | Chan::Reserved) => Err(err(Errno::EINVAL)),
                Some(Chan::Unbound { .. } | Chan::External { .. }) => Ok(()),
                Some(Chan::Interdomain {
                    remote,
                    port: rport,
                }) => {
                    self.evt_dom(remote.0)?.set_pending(rport);
                    Ok(())
                }
            }
        }

        pub(super) fn evt_unmask(&mut self, port: u32) -> Result<(), XenError> {
            let ld = self.evt_caller()?;
            let e = self.evt_dom(ld)?;
            let c = e.chan(port).ok_or(err(Errno::EINVAL))?;
            if c.usable() {
                e.unmask(port);
            }
            Ok(())
        }

        pub(super) fn evt_status(
            &mut self,
            dom: DomId,
            port: u32,
        ) -> Result<ChannelStatus, XenError> {
            self.evt_caller()?;
            let d = self.lookup_any(dom).ok_or(err(Errno::ESRCH))?;
            let c = self.evt_dom(d)?.chan(port).ok_or(err(Errno::EINVAL))?;
            if !self.xsm_target(d) {
                return Err(err(Errno::EPERM));
            }
            let state = match c {
                Chan::Free | Chan::Reserved => ChannelState::Closed,
                Chan::Unbound { remote } => ChannelState::Unbound { remote },
                Chan::Interdomain { remote, port } => ChannelState::Interdomain { remote, port },
                Chan::External { remote } => ChannelState::Interdomain { remote, port },
            };
            Ok(ChannelStatus { state, vcpu: 0 })
        }

        /// `do_poll` up to the block: `Ok(true)` if a polled port is pending.
        fn evt_poll(&mut self, ports: &[u32]) -> Result<(u16, bool), XenError> {
            let ld = self.evt_caller()?;
            if ports.len() > abi::SCHED_POLL_MAX_PORTS {
                return Err(err(Errno::EINVAL));
            }
            let e = self.evt_dom(ld)?;
            for &p in ports {
                // evtchn_port_poll: -EINVAL unless valid and usable, else
                // whether it is pending; the first pending one ends the scan.
                match e.chan(p) {
                    Some(c) if c.usable() => {
                        if e.is_pending(p) {
                            return Ok((ld, true));
                        }
                    }
                    _ => return Err(err(Errno::EINVAL)),
                }
            }
            Ok((ld, false))
        }
    }

    impl XenModel {
        pub(super) fn evt_sched_poll(&self, ports: &[u32], timeout: u64) -> Result<(), XenError> {
            let rec = {
                let mut s = self.state.borrow_mut();
                s.errno_fault(Op::SchedPoll)?;
                let (ld, pending) = s.evt_poll(ports)?;
                let rec = PollRecord {
                    dom: DomId(ld),
                    ports: ports.to_vec(),
                    timeout,
                    outcome: if pending {
                        PollOutcome::Immediate
                    } else {
                        PollOutcome::Blocked
                    },
                };
                s.evt.polls.push(rec.clone());
                rec
            };
            if rec.outcome == PollOutcome::Blocked {
                let hook = self.poll_hook.borrow_mut().take();
                if let Some(mut h) = hook {
                    h(self, &rec);
                    let mut slot = self.poll_hook.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(h);
                    }
                }
            }
            Ok(())
        }

        /// Run `hook` whenever a `SCHEDOP_poll` would block (after it is
        /// recorded). It may make a port pending (as the peer that wakes the
        /// vCPU) or not (a timeout or a spurious wake-up). `None` removes it.
        pub fn set_poll_hook(&self, hook: Option<PollHook>) {
            *self.poll_hook.borrow_mut() = hook;
        }

        /// Every `SCHEDOP_poll` that passed its checks, in order.
        pub fn polls(&self) -> Vec<PollRecord> {
            self.state.borrow().evt.polls.clone()
        }

        /// How many polls would have blocked.
        pub fn blocked_polls(&self) -> usize {
            self.state
                .borrow()
                .evt
                .polls
                .iter()
                .filter(|p| p.outcome == PollOutcome::Blocked)
                .count()
        }

        /// Set `port` of `dom` pending as its peer's send would (for a
        /// peer outside the model: the console or xenstore daemon). The port
        /// must be in use.
        pub fn evtchn_raise(&self, dom: DomId, port: u32) -> Result<(), ModelError> {
            let mut s = self.state.borrow_mut();
            let s = &mut *s;
            s.evt.sync(&s.domains);
            let e = s
                .evt_dom(dom.0)
                .map_err(|_| ModelError::NoSuchDomain(dom))?;
            match e.chan(port) {
                Some(c) if c.usable() => {
                    e.set_pending(port);
                    Ok(())
                }
                _ => Err(ModelError::BadConfig("port not in use")),
            }
        }

        /// `dom`'s `max_evtchn_port` (what `xl`'s `max_event_channels`
        /// sets; default 4095 here).
        pub fn evtchn_set_max_port(&self, dom: DomId, max_port: u32) -> Result<(), ModelError> {
            let mut s = self.state.borrow_mut();
            let e = s
                .evt_dom(dom.0)
                .map_err(|_| ModelError::NoSuchDomain(dom))?;
            e.max_port = max_port.min(EVTCHN_2L_NR_CHANNELS - 1);
            Ok(())
        }

        /// The state of `port` of `dom` (`None`: no such domain or port
        /// beyond `valid_evtchns`).
        pub fn evtchn_state(&self, dom: DomId, port: u32) -> Option<Chan> {
            let mut s = self.state.borrow_mut();
            let s = &mut *s;
            s.evt.sync(&s.domains);
            s.evt.dom(&s.domains, dom.0)?.chan(port)
        }

        /// Whether `port` of `dom` is pending in its shared_info.
        pub fn evtchn_is_pending(&self, dom: DomId, port: u32) -> Option<bool> {
            let mut s = self.state.borrow_mut();
            let e = s.evt_dom(dom.0).ok()?;
            (port < EVTCHN_2L_NR_CHANNELS).then(|| e.is_pending(port))
        }

        /// Whether `port` of `dom` is masked in its shared_info.
        pub fn evtchn_is_masked(&self, dom: DomId, port: u32) -> Option<bool> {
            let mut s = self.state.borrow_mut();
            let e = s.evt_dom(dom.0).ok()?;
            (port < EVTCHN_2L_NR_CHANNELS).then(|| e.is_masked(port))
        }

        /// `evtchn_upcall_pending` of `dom`'s vCPU 0.
        pub fn evtchn_upcall_pending(&self, dom: DomId) -> Option<bool> {
            let mut s = self.state.borrow_mut();
            let e = s.evt_dom(dom.0).ok()?;
            let off = e.layout.vcpu0_upcall_pending;
            Some(e.word(off).load(Ordering::SeqCst) >> (8 * (off % 8)) & 0xff != 0)
        }

        /// `dom`'s shared_info page, mapped or not. It stays where it is
        /// while the domain lives, so the pointer can stand for a mapping
        /// of it in host tests (all access through atomics).
        pub fn shared_info_page(&self, dom: DomId) -> Option<NonNull<SharedInfoPage>> {
            let mut s = self.state.borrow_mut();
            let e = s.evt_dom(dom.0).ok()?;
            NonNull::new(e.page.ptr().cast::<SharedInfoPage>())
        }

        /// The layout of `dom`'s shared_info (its architecture's).
        pub fn shared_info_layout(&self, dom: DomId) -> Option<SharedInfoLayout> {
            let mut s = self.state.borrow_mut();
            s.evt_dom(dom.0).ok().map(|e| e.layout)
        }

        /// Where `dom`'s shared_info is mapped, if it is.
        pub fn shared_info_gfn(&self, dom: DomId) -> Option<Gfn> {
            self.state.borrow().evt.shared_info_gfn(dom.0)
        }

        /// Clear `port`'s pending bit as the guest would; whether it was set.
        #[cfg(test)]
        fn evtchn_clear_for_test(&self, dom: DomId, port: u32) -> bool {
            let mut s = self.state.borrow_mut();
            let Ok(e) = s.evt_dom(dom.0) else {
                return false;
            };
            let was = e.is_pending(port);
            e.clear_pending(port);
            was
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use xenmem::xen::abi::physmap::{SPACE_GRANT_TABLE, SPACE_SHARED_INFO};

        fn e(x: Errno) -> XenError {
            XenError::Errno(x)
        }

        /// Two x86 PVH domUs (1 and 2), 1 current.
        fn two() -> XenModel {
            let m = XenModel::new(1 << 12);
            m.add_domain(DomainConfig::pvh_domu(DomId(1), 256)).unwrap();
            m.add_domain(DomainConfig::pvh_domu(DomId(2), 256)).unwrap();
            m
        }

        fn as_dom<T>(m: &XenModel, d: u16, f: impl FnOnce() -> T) -> T {
            let back = m.current().unwrap();
            m.set_current(DomId(d)).unwrap();
            let r = f();
            m.set_current(back).unwrap();
            r
        }

        #[test]
        fn offer_bind_send_close_rebind() {
            let m = two();
            let p = m.evtchn_alloc_unbound(DomId(2)).unwrap();
            assert_eq!(p, 1, "port 0 is reserved");
            assert_eq!(
                m.evtchn_state(DomId(1), p),
                Some(Chan::Unbound { remote: DomId(2) })
            );
            let l = as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), p)).unwrap();
            assert_eq!(l, 1);
            // The bind sets the new local port pending, nothing on the other end.
            assert_eq!(m.evtchn_is_pending(DomId(2), l), Some(true));
            assert_eq!(m.evtchn_is_pending(DomId(1), p), Some(false));
            assert_eq!(
                m.evtchn_status(DomId::SELF, p).unwrap().state,
                ChannelState::Interdomain {
                    remote: DomId(2),
                    port: l
                }
            );
            // Unmasked: a send marks the upcall too.
            as_dom(&m, 2, || m.evtchn_send(l)).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(1), p), Some(true));
            assert_eq!(m.evtchn_upcall_pending(DomId(1)), Some(true));
            assert_eq!(m.evtchn_sends(), alloc::vec![(2, l)]);
            // Close on 2's side: 1's port is offered to 2 again; 2's is free
            // and its pending bit gone.
            as_dom(&m, 2, || m.evtchn_close(l)).unwrap();
            assert_eq!(m.evtchn_state(DomId(2), l), Some(Chan::Free));
            assert_eq!(m.evtchn_is_pending(DomId(2), l), Some(false));
            assert_eq!(
                m.evtchn_state(DomId(1), p),
                Some(Chan::Unbound { remote: DomId(2) })
            );
            assert_eq!(as_dom(&m, 2, || m.evtchn_close(l)), Err(e(Errno::EINVAL)));
            assert_eq!(as_dom(&m, 2, || m.evtchn_send(l)), Err(e(Errno::EINVAL)));
            // Sending into an unbound port is dropped silently.
            let before = m.evtchn_is_pending(DomId(2), l);
            m.evtchn_send(p).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(2), l), before);
            assert_eq!(
                as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), p)),
                Ok(l)
            );
        }

        #[test]
        fn errors_are_xens() {
            let m = two();
            let p = m.evtchn_alloc_unbound(DomId(3)).unwrap();
            // Not offered to 2: EINVAL (Xen's answer, not EPERM).
            assert_eq!(
                as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), p)),
                Err(e(Errno::EINVAL))
            );
            // ... and 2's port it took for the attempt is free again.
            assert_eq!(m.evtchn_state(DomId(2), 1), Some(Chan::Free));
            for bad in [0, 2, 63, 64, 5000] {
                assert_eq!(
                    as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), bad)),
                    Err(e(Errno::EINVAL)),
                    "remote port {bad}"
                );
                assert_eq!(m.evtchn_close(bad), Err(e(Errno::EINVAL)), "close {bad}");
                assert_eq!(m.evtchn_send(bad), Err(e(Errno::EINVAL)), "send {bad}");
            }
            assert_eq!(m.evtchn_bind_interdomain(DomId(9), 1), Err(e(Errno::ESRCH)));
            assert_eq!(m.evtchn_unmask(64), Err(e(Errno::EINVAL)));
            assert_eq!(m.evtchn_unmask(5), Ok(()), "a free but valid port");
            assert_eq!(m.evtchn_status(DomId(2), 0), Err(e(Errno::EPERM)));
            assert_eq!(m.evtchn_status(DomId(9), 0), Err(e(Errno::ESRCH)));
            assert_eq!(m.evtchn_status(DomId::SELF, 64), Err(e(Errno::EINVAL)));
            assert_eq!(
                m.evtchn_status(DomId::SELF, 0).unwrap().state,
                ChannelState::Closed
            );
            // Ports run out at max_evtchn_port.
            m.evtchn_set_max_port(DomId(1), 3).unwrap();
            assert_eq!(m.evtchn_alloc_unbound(DomId(2)), Ok(2));
            assert_eq!(m.evtchn_alloc_unbound(DomId(2)), Ok(3));
            assert_eq!(m.evtchn_alloc_unbound(DomId(2)), Err(e(Errno::ENOSPC)));
            // Ports beyond the first bucket are made valid as needed.
            m.evtchn_set_max_port(DomId(1), 4095).unwrap();
            for _ in 4..70 {
                m.evtchn_alloc_unbound(DomId(2)).unwrap();
            }
            assert_eq!(
                m.evtchn_state(DomId(1), 69),
                Some(Chan::Unbound { remote: DomId(2) })
            );
            assert_eq!(m.evtchn_state(DomId(1), 128), None);
            // Injected faults.
            m.inject(Fault::Errno {
                op: Op::SchedPoll,
                errno: Errno::EFAULT,
            });
            assert_eq!(m.sched_poll(&[1], 0), Err(e(Errno::EFAULT)));
        }

        #[test]
        fn loopback() {
            let m = two();
            let p = m.evtchn_alloc_unbound(DomId::SELF).unwrap();
            assert_eq!(
                m.evtchn_state(DomId(1), p),
                Some(Chan::Unbound { remote: DomId(1) })
            );
            let l = m.evtchn_bind_interdomain(DomId::SELF, p).unwrap();
            assert_ne!(l, p);
            assert!(m.evtchn_clear_for_test(DomId(1), l));
            m.evtchn_send(l).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(1), p), Some(true));
            assert_eq!(m.evtchn_is_pending(DomId(1), l), Some(false));
        }

        #[test]
        fn toolstack_ports_reach_dom0_daemons() {
            let m = XenModel::new(1 << 16);
            m.add_domain(DomainConfig::xl_pvh_domu(DomId(5), 4096))
                .unwrap();
            // xl_pvh_domu: STORE_EVTCHN 1, CONSOLE_EVTCHN 2.
            for p in [1, 2] {
                assert_eq!(
                    m.evtchn_state(DomId(5), p),
                    Some(Chan::External { remote: DomId(0) })
                );
                m.evtchn_send(p).unwrap();
            }
            assert_eq!(m.evtchn_send(3), Err(e(Errno::EINVAL)));
            assert_eq!(m.evtchn_sends(), alloc::vec![(5, 1), (5, 2)]);
            assert_eq!(m.evtchn_is_pending(DomId(5), 2), Some(false));
            m.evtchn_raise(DomId(5), 2).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(5), 2), Some(true));
            assert!(m.evtchn_raise(DomId(5), 3).is_err());
            assert_eq!(m.evtchn_alloc_unbound(DomId(0)), Ok(3));
        }

        #[test]
        fn poll_checks_ports_returns_on_pending_and_records_blocks() {
            let m = two();
            let p = m.evtchn_alloc_unbound(DomId(2)).unwrap();
            let l = as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), p)).unwrap();
            assert_eq!(m.sched_poll(&[p, 7], 0), Err(e(Errno::EINVAL)), "free port");
            assert_eq!(
                m.sched_poll(&[0], 0),
                Err(e(Errno::EINVAL)),
                "reserved port"
            );
            assert_eq!(m.sched_poll(&[p; 129], 0), Err(e(Errno::EINVAL)));
            assert!(m.polls().is_empty());
            // Nothing pending: it would block; no hook, so it just returns.
            m.sched_poll(&[p], 1234).unwrap();
            assert_eq!(m.blocked_polls(), 1);
            // A hook stands for the peer that wakes us.
            m.set_poll_hook(Some(Box::new(move |m: &XenModel, r: &PollRecord| {
                assert_eq!(r.dom, DomId(1));
                m.set_current(DomId(2)).unwrap();
                m.evtchn_send(l).unwrap();
                m.set_current(DomId(1)).unwrap();
            })));
            m.sched_poll(&[p], 0).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(1), p), Some(true));
            // Pending: returns at once, the hook does not run.
            m.sched_poll(&[p], 0).unwrap();
            let polls = m.polls();
            assert_eq!(polls.len(), 3);
            assert_eq!(polls[0].timeout, 1234);
            assert_eq!(polls[1].outcome, PollOutcome::Blocked);
            assert_eq!(polls[2].outcome, PollOutcome::Immediate);
            assert_eq!(m.evtchn_sends().len(), 1);
            assert_eq!(m.calls(Op::SchedPoll), 3 + 3);
        }

        #[test]
        fn masked_ports_still_pend_but_mark_no_upcall() {
            let m = two();
            let p = m.evtchn_alloc_unbound(DomId(2)).unwrap();
            let l = as_dom(&m, 2, || m.evtchn_bind_interdomain(DomId(1), p)).unwrap();
            let page = m.shared_info_page(DomId(1)).unwrap();
            let lay = m.shared_info_layout(DomId(1)).unwrap();
            // Mask port p as the guest does (bit p of word 0 of evtchn_mask).
            let w = unsafe {
                // SAFETY: the model's page lives as long as the domain; all
                // access is atomic.
                core::sync::atomic::AtomicU64::from_ptr(
                    page.as_ptr()
                        .cast::<u8>()
                        .add(lay.evtchn_mask)
                        .cast::<u64>(),
                )
            };
            w.fetch_or(1 << p, Ordering::SeqCst);
            as_dom(&m, 2, || m.evtchn_send(l)).unwrap();
            assert_eq!(m.evtchn_is_pending(DomId(1), p), Some(true));
            assert_eq!(m.evtchn_upcall_pending(DomId(1)), Some(false));
            // EVTCHNOP_unmask of a pending port marks the upcall.
            m.evtchn_unmask(p).unwrap();
            assert_eq!(m.evtchn_is_masked(DomId(1), p), Some(false));
            assert_eq!(m.evtchn_upcall_pending(DomId(1)), Some(true));
        }

        #[test]
        fn shared_info_mapping() {
            let m = two();
            let hole = Gfn(0x10_0000);
            let page = m.shared_info_page(DomId(1)).unwrap().as_ptr().cast::<u8>();
            assert_eq!(
                m.add_to_physmap(SPACE_SHARED_INFO, 1, hole),
                Err(e(Errno::EINVAL))
            );
            assert_eq!(m.page_ptr(DomId(1), hole), None);
            m.add_to_physmap(SPACE_SHARED_INFO, 0, hole).unwrap();
            assert_eq!(m.shared_info_gfn(DomId(1)), Some(hole));
            assert_eq!(m.page_ptr(DomId(1), hole), Some(page));
            // x86: mapped again elsewhere, it moves.
            m.add_to_physmap(SPACE_SHARED_INFO, 0, Gfn(hole.0 + 1))
                .unwrap();
            assert_eq!(m.page_ptr(DomId(1), hole), None);
            assert_eq!(m.page_ptr(DomId(1), Gfn(hole.0 + 1)), Some(page));
            // A grant-table frame put over it unhooks it.
            m.add_to_physmap(SPACE_GRANT_TABLE, 0, Gfn(hole.0 + 1))
                .unwrap();
            assert_eq!(m.shared_info_gfn(DomId(1)), None);
            // Over RAM on x86 the RAM page is freed.
            let tot = m.tot_pages(DomId(1)).unwrap();
            m.add_to_physmap(SPACE_SHARED_INFO, 0, Gfn(5)).unwrap();
            assert_eq!(m.tot_pages(DomId(1)), Some(tot - 1));
            assert_eq!(m.page_ptr(DomId(1), Gfn(5)), Some(page));
            m.remove_from_physmap(Gfn(5)).unwrap();
            assert_eq!(m.shared_info_gfn(DomId(1)), None);
            assert_eq!(m.remove_from_physmap(Gfn(5)), Err(e(Errno::ENOENT)));
            m.check_conservation().unwrap();
        }

        #[test]
        fn arm_shared_info_layout_and_ebusy() {
            let m = XenModel::new(1 << 18);
            m.add_domain(DomainConfig::arm_domu(DomId(1), 1024))
                .unwrap();
            assert_eq!(m.shared_info_layout(DomId(1)), Some(SharedInfoLayout::ARM));
            let hole = Gfn(0x38000);
            m.add_to_physmap(SPACE_SHARED_INFO, 0, hole).unwrap();
            assert_eq!(
                m.add_to_physmap(SPACE_SHARED_INFO, 0, Gfn(hole.0 + 1)),
                Err(e(Errno::EBUSY))
            );
            m.remove_from_physmap(hole).unwrap();
            m.add_to_physmap(SPACE_SHARED_INFO, 0, Gfn(hole.0 + 1))
                .unwrap();
            // Loopback pending bit at Arm's offset: evtchn_pending at 48.
            let p = m.evtchn_alloc_unbound(DomId::SELF).unwrap();
            let l = m.evtchn_bind_interdomain(DomId::SELF, p).unwrap();
            let mut w = [0u8; 8];
            assert!(m.read_guest(DomId(1), Gfn(hole.0 + 1), 48, &mut w));
            assert_eq!(u64::from_le_bytes(w), 1 << l, "the bind's own pending bit");
        }

        #[test]
        fn a_destroyed_peers_ports_close() {
            let m = XenModel::new(1 << 14);
            m.add_domain(DomainConfig::pvh_dom0(1024)).unwrap();
            m.add_domain(DomainConfig::pvh_domu(DomId(1), 256)).unwrap();
            let p = m.evtchn_alloc_unbound(DomId(1)).unwrap();
            let l = as_dom(&m, 1, || m.evtchn_bind_interdomain(DomId(0), p)).unwrap();
            assert_eq!(l, 1);
            m.domctl_destroydomain(DomId(1)).unwrap();
            assert_eq!(
                m.evtchn_state(DomId(0), p),
                Some(Chan::Unbound { remote: DomId(1) })
            );
            m.evtchn_send(p).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D0: DomId = DomId(0);
    const D1: DomId = DomId(1);
    const D7: DomId = DomId(7);
    const SELF: DomId = DomId::SELF;

    fn o(n: u8) -> Order {
        Order::new(n).unwrap()
    }

    fn bits(b: u8) -> MemFlags {
        MemFlags::address_bits(b).unwrap()
    }

    fn gfns(v: impl IntoIterator<Item = u64>) -> Vec<Gfn> {
        v.into_iter().map(Gfn).collect()
    }

    /// A machine of `total` frames with one PVH domU (d1, current) of `ram`
    /// pages.
    fn pvh(total: u64, ram: u64) -> XenModel {
        let x = XenModel::new(total);
        x.add_domain(DomainConfig::pvh_domu(D1, ram)).unwrap();
        x.check_conservation().unwrap();
        x
    }

    fn ok(x: &XenModel) {
        if let Err(e) = x.check_conservation() {
            panic!("conservation: {e}");
        }
    }

    fn errno(e: Errno) -> XenError {
        XenError::Errno(e)
    }

    #[test]
    fn creation_and_round_trip() {
        let x = pvh(4096, 1024);
        assert_eq!(x.tot_pages(D1), Some(1024));
        // MFN 0 is Xen's.
        assert_eq!(x.free_frames(), 4096 - 1024 - 1);
        assert_eq!(x.p2m(D1).len(), 1024);
        assert!(x.leaked(D1).is_empty());
        assert_eq!(x.current_reservation(SELF), Ok(PageCount(1024)));
        assert_eq!(x.maximum_reservation(SELF), Ok(PageCount(1024)));

        let mut g = gfns(10..14);
        assert_eq!(x.decrease_reservation(SELF, o(0), &g), Ok(4));
        assert_eq!(x.tot_pages(D1), Some(1020));
        assert!((10..14).all(|i| !x.p2m(D1).contains_key(&Gfn(i))));
        assert_eq!(x.free_frames(), 4096 - 1020 - 1);
        ok(&x);

        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut g),
            Ok(4)
        );
        // Translated: the list still holds the GFNs.
        assert_eq!(g, gfns(10..14));
        assert!((10..14).all(|i| x.p2m(D1).contains_key(&Gfn(i))));
        assert_eq!(x.current_reservation(D1), Ok(PageCount(1024)));
        ok(&x);
    }

    /// XTF's XSA-277 and XSA-472-3 sequences give real Xen's answers:
    /// decrease of the same GFN 1, 0, 0; decrease then populate 1, 1.
    #[test]
    fn repeated_decrease_and_cycles_give_xtfs_answers() {
        for x in [pvh(4096, 1024), {
            let x = XenModel::new(1 << 18);
            x.add_domain(DomainConfig::arm_domu(D1, 1024)).unwrap();
            x
        }] {
            let g = x.p2m(D1).keys().next_back().copied().unwrap();
            let before = x.tot_pages(D1);
            let r: Vec<_> = (0..3)
                .map(|_| x.decrease_reservation(SELF, o(0), &[g]))
                .collect();
            assert_eq!(r, [Ok(1), Ok(0), Ok(0)]);
            for _ in 0..100 {
                let mut l = [g];
                assert_eq!(
                    x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut l),
                    Ok(1)
                );
                assert_eq!(x.decrease_reservation(SELF, o(0), &[g]), Ok(1));
            }
            let mut l = [g];
            assert_eq!(
                x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut l),
                Ok(1)
            );
            assert_eq!(x.tot_pages(D1), before);
            assert!(x.leaked(D1).is_empty());
            ok(&x);
        }
    }

    /// XSA-231: node bits in `mem_flags` (`propagate_node`) on a one-node
    /// machine.
    #[test]
    fn node_bits_are_refused_as_xen_refuses_them() {
        let node = |n| MemFlags::node(n).unwrap();
        let exact = |n| MemFlags::exact_node(n).unwrap();
        // (caller, flags, extents populated)
        let x86 = XenModel::new(1 << 16);
        x86.add_domain(DomainConfig::pvh_dom0(1024)).unwrap();
        x86.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
        let arm = XenModel::new(1 << 18);
        arm.add_domain(DomainConfig::arm_domu(D1, 1024)).unwrap();
        arm.add_domain(DomainConfig::arm_dom0(Mfn(0x10000), 1024))
            .unwrap();
        let try_at = |x: &XenModel, dom: DomId, g: Gfn, f: MemFlags| {
            x.set_current(dom).unwrap();
            let before = x.tot_pages(dom);
            let mut l = [g];
            let r = x.populate_physmap(SELF, o(0), f, &mut l).unwrap();
            if r == 1 {
                assert_eq!(x.decrease_reservation(SELF, o(0), &[g]), Ok(1));
            }
            assert_eq!(x.tot_pages(dom), before);
            ok(x);
            r
        };
        // x86 dom0: MAX_NUMNODES 64; only node 0 has memory.
        let hole = Gfn(0x80000);
        assert_eq!(try_at(&x86, D0, hole, node(0)), 1);
        assert_eq!(try_at(&x86, D0, hole, node(63)), 1, "falls back to node 0");
        assert_eq!(try_at(&x86, D0, hole, exact(0)), 1);
        for n in 1..255 {
            assert_eq!(try_at(&x86, D0, hole, exact(n)), 0, "exact {n}");
        }
        for n in 64..255 {
            assert_eq!(try_at(&x86, D0, hole, node(n)), 0, "node {n}");
        }
        // A domU: a plain node is ignored, an exact one refused.
        let g = x86.p2m(D1).keys().next_back().copied().unwrap();
        x86.set_current(D1).unwrap();
        assert_eq!(x86.decrease_reservation(SELF, o(0), &[g]), Ok(1));
        for n in 0..255 {
            assert_eq!(try_at(&x86, D1, g, exact(n)), 0, "domU exact {n}");
            assert_eq!(try_at(&x86, D1, g, node(n)), 1, "domU node {n}");
        }
        // Arm: MAX_NUMNODES 1; the dom0less domU as the x86 domU.
        let g = arm.p2m(D1).keys().next_back().copied().unwrap();
        arm.set_current(D1).unwrap();
        assert_eq!(arm.decrease_reservation(SELF, o(0), &[g]), Ok(1));
        for n in 0..255 {
            assert_eq!(try_at(&arm, D1, g, exact(n)), 0, "arm domU exact {n}");
        }
        assert_eq!(try_at(&arm, D1, g, MemFlags::NONE), 1);
        arm.set_current(D0).unwrap();
        let g0 = Gfn(0x10000 + 1023);
        assert_eq!(arm.decrease_reservation(SELF, o(0), &[g0]), Ok(1));
        for n in 1..255 {
            assert_eq!(try_at(&arm, D0, g0, node(n)), 0, "arm dom0 node {n}");
            assert_eq!(try_at(&arm, D0, g0, exact(n)), 0, "arm dom0 exact {n}");
        }
    }

    /// A PVH dom0 (current) that has foreign-mapped `n` frames of a domU at
    /// hole frames from 0x100000.
    fn foreign_mapped(n: u64) -> (XenModel, Vec<Gfn>) {
        let x = XenModel::new(1 << 16);
        x.add_domain(DomainConfig::pvh_dom0(1024)).unwrap();
        x.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
        x.set_current(D0).unwrap();
        let at = gfns(0x100000..0x100000 + n);
        let mut st = vec![xenmem::xen::XenStatus(0); n as usize];
        x.map_foreign_batch(D1, &gfns(0..n), &at, &mut st).unwrap();
        assert!(st.iter().all(|s| s.0 == 0));
        (x, at)
    }

    #[test]
    fn multicall_removes_entry_by_entry() {
        let (x, at) = foreign_mapped(8);
        let mut r = [Ok(()); 8];
        // Entry 5 names a frame with nothing mapped: ENOENT for it alone.
        let mut list = at.clone();
        list[5] = Gfn(0x200000);
        let o = x.multicall_remove_from_physmap(&list, &mut r);
        assert_eq!(
            o,
            xenmem::xen::MulticallOutcome {
                reached: 8,
                result: Ok(())
            }
        );
        assert_eq!(r[5], Err(errno(Errno::ENOENT)));
        assert!(r.iter().enumerate().all(|(i, r)| i == 5 || r.is_ok()));
        assert_eq!(x.foreign(D0).keys().copied().collect::<Vec<_>>(), [at[5]]);
        assert_eq!(x.calls(Op::Multicall), 1);
        assert_eq!(
            x.calls(Op::RemoveFromPhysmap),
            8,
            "each entry is a sub-call"
        );
        // The guest-side limits: nothing done.
        let mut r9 = [Ok(()); 9];
        let big = gfns(0..xenmem::xen::MULTICALL_MAX as u64 + 1);
        let mut rbig = vec![Ok(()); big.len()];
        assert_eq!(
            x.multicall_remove_from_physmap(&big, &mut rbig).result,
            Err(errno(Errno::E2BIG))
        );
        assert_eq!(
            x.multicall_remove_from_physmap(&at, &mut r9).result,
            Err(errno(Errno::EINVAL))
        );
        assert_eq!(x.foreign(D0).len(), 1);
        ok(&x);
    }

    #[test]
    fn multicall_faults() {
        let (x, at) = foreign_mapped(8);
        let mut r = [Ok(()); 8];
        // Refused whole: nothing reached, nothing removed.
        x.inject(Fault::Errno {
            op: Op::Multicall,
            errno: Errno::ENOSYS,
        });
        assert_eq!(
            x.multicall_remove_from_physmap(&at, &mut r),
            xenmem::xen::MulticallOutcome {
                reached: 0,
                result: Err(errno(Errno::ENOSYS))
            }
        );
        assert_eq!(x.foreign(D0).len(), 8);
        // Stopped after 3 entries: those are done.
        x.inject(Fault::ShortAt {
            op: Op::Multicall,
            after_extents: 3,
        });
        let o = x.multicall_remove_from_physmap(&at, &mut r);
        assert_eq!((o.reached, o.result), (3, Err(errno(Errno::EFAULT))));
        assert_eq!(x.foreign(D0).len(), 5);
        // Entry 2 of the next one fails; the others go on.
        x.inject(Fault::ErrnoOnCall {
            op: Op::RemoveFromPhysmap,
            nth: 2,
            errno: Errno::EBUSY,
        });
        let o = x.multicall_remove_from_physmap(&at[3..], &mut r[..5]);
        assert_eq!((o.reached, o.result), (5, Ok(())));
        assert_eq!(
            r[..5],
            [Ok(()), Ok(()), Err(errno(Errno::EBUSY)), Ok(()), Ok(())]
        );
        assert_eq!(x.foreign(D0).keys().copied().collect::<Vec<_>>(), [at[5]]);
        assert!(x.pending_faults().is_empty());
        ok(&x);
    }

    #[test]
    fn batch_removal_falls_back_to_single_calls() {
        use xenmem::xen::{RemoveBatch, MULTICALL_MAX};
        let n = MULTICALL_MAX as u64 * 2 + 10;
        let (x, at) = foreign_mapped(n);
        let mut r = vec![Ok(()); at.len()];
        assert_eq!(
            x.remove_from_physmap_batch(&at, &mut r[1..]),
            Err(errno(Errno::EINVAL))
        );
        // The second multicall stops after 7 entries: the rest of it, and
        // the third chunk, go one call each.
        x.inject(Fault::ShortAt {
            op: Op::Multicall,
            after_extents: 7,
        });
        // ... once the first multicall has passed.
        let first = x.pending_faults();
        x.clear_faults();
        let _ = first;
        let b = x.remove_from_physmap_batch(&at[..MULTICALL_MAX], &mut r[..MULTICALL_MAX]);
        assert_eq!(
            b,
            Ok(RemoveBatch {
                multicalls: 1,
                single_calls: 0,
                failed: 0,
                multicall_error: None
            })
        );
        x.inject(Fault::ShortAt {
            op: Op::Multicall,
            after_extents: 7,
        });
        let rest = &at[MULTICALL_MAX..];
        let b = x
            .remove_from_physmap_batch(rest, &mut r[MULTICALL_MAX..])
            .unwrap();
        assert_eq!(
            b,
            RemoveBatch {
                multicalls: 1,
                single_calls: rest.len() - 7,
                failed: 0,
                multicall_error: Some(errno(Errno::EFAULT))
            }
        );
        assert_eq!(b.hypercalls(), 1 + rest.len() - 7);
        assert!(r.iter().all(|r| r.is_ok()));
        assert!(x.foreign(D0).is_empty());
        assert_eq!(x.calls(Op::RemoveFromPhysmap), n);
        ok(&x);
    }

    #[test]
    fn decrease_counts_whole_extents() {
        let x = pvh(4096, 1024);
        // Extent 1 is not populated: one extent done, extent 2 untouched.
        assert_eq!(
            x.decrease_reservation(SELF, o(0), &gfns([5, 2000, 6])),
            Ok(1)
        );
        let p = x.p2m(D1);
        assert!(!p.contains_key(&Gfn(5)));
        assert!(p.contains_key(&Gfn(6)));
        assert_eq!(x.tot_pages(D1), Some(1023));

        // An order-2 extent whose third page is missing: returns 0, but the
        // first two pages are gone.
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns([102])), Ok(1));
        assert_eq!(x.decrease_reservation(SELF, o(2), &gfns([100])), Ok(0));
        let p = x.p2m(D1);
        assert!(!p.contains_key(&Gfn(100)) && !p.contains_key(&Gfn(101)));
        assert!(p.contains_key(&Gfn(103)));
        assert_eq!(x.tot_pages(D1), Some(1020));
        ok(&x);

        // The same GFN twice: the second time it is gone.
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns([7, 7])), Ok(1));
        // Empty list, unknown GFN at the start.
        assert_eq!(x.decrease_reservation(SELF, o(0), &[]), Ok(0));
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns([9999, 8])), Ok(0));
        assert!(x.p2m(D1).contains_key(&Gfn(8)));
        ok(&x);
    }

    #[test]
    fn extent_order_above_callers_max_does_nothing() {
        let x = pvh(1 << 14, 2048);
        // Order 9 is the domU limit...
        assert_eq!(x.decrease_reservation(SELF, o(9), &gfns([0, 512])), Ok(2));
        // ...order 10 returns 0, no error, nothing done.
        assert_eq!(
            x.populate_physmap(SELF, o(10), MemFlags::NONE, &mut gfns([0])),
            Ok(0)
        );
        assert_eq!(x.tot_pages(D1), Some(1024));
        assert_eq!(x.decrease_reservation(SELF, o(10), &gfns([1024])), Ok(0));
        assert_eq!(x.tot_pages(D1), Some(1024));
        let mut out = [Mfn(0); 1];
        assert_eq!(
            x.increase_reservation(SELF, o(10), MemFlags::NONE, &mut out),
            Ok(0)
        );
        assert_eq!(
            x.populate_physmap(SELF, o(9), MemFlags::NONE, &mut gfns([0, 512])),
            Ok(2)
        );
        assert_eq!(x.tot_pages(D1), Some(2048));

        // The limit is the caller's: dom0 (max order 18) may use order 10 on
        // the domU.
        x.add_domain(DomainConfig::pvh_dom0(256)).unwrap();
        x.set_current(D0).unwrap();
        assert_eq!(x.decrease_reservation(D1, o(10), &gfns([0])), Ok(1));
        assert_eq!(
            x.populate_physmap(D1, o(10), MemFlags::NONE, &mut gfns([0])),
            Ok(1)
        );
        assert_eq!(x.tot_pages(D1), Some(2048));
        ok(&x);
    }

    #[test]
    fn max_pages_limits_populate_and_increase() {
        let x = pvh(4096, 1024);
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns(0..8)), Ok(8));
        let mut g = gfns(0..10);
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut g),
            Ok(8)
        );
        assert_eq!(x.tot_pages(D1), Some(1024));
        // Room for 7 pages: an order-3 extent does not fit.
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns(0..7)), Ok(7));
        assert_eq!(
            x.populate_physmap(SELF, o(3), MemFlags::NONE, &mut gfns([0])),
            Ok(0)
        );
        let mut out = [Mfn(0); 2];
        assert_eq!(
            x.increase_reservation(SELF, o(3), MemFlags::NONE, &mut out),
            Ok(0)
        );
        x.set_max_pages(D1, 1025).unwrap();
        assert_eq!(
            x.populate_physmap(SELF, o(3), MemFlags::NONE, &mut gfns([0, 8])),
            Ok(1)
        );
        assert_eq!(x.tot_pages(D1), Some(1025));
        ok(&x);
    }

    #[test]
    fn address_bits_and_contiguity() {
        // 4 GiB machine: 32 address bits.
        let x = XenModel::new(1 << 20);
        let mut cfg = DomainConfig::pvh_domu(D1, 1024);
        cfg.max_pages = 8192;
        x.add_domain(cfg).unwrap();
        // Without a limit memory comes from the top.
        assert!(x.owned_frames(D1).iter().all(|m| m.0 >= (1 << 20) - 2048));

        let mut g = gfns([0x10000, 0x10200, 0x10400]);
        assert_eq!(x.populate_physmap(SELF, o(9), bits(30), &mut g), Ok(3));
        let p = x.p2m(D1);
        for base in [0x10000u64, 0x10200, 0x10400] {
            let m = p[&Gfn(base)].0;
            assert_eq!(m % 512, 0, "aligned");
            for j in 0..512 {
                assert_eq!(p[&Gfn(base + j)], Mfn(m + j), "contiguous");
            }
            assert!(m + 512 <= 1 << 18, "below 1 GiB");
        }
        // 32 bits or more is no limit on this machine.
        assert_eq!(
            x.populate_physmap(SELF, o(0), bits(32), &mut gfns([0x20000])),
            Ok(1)
        );
        assert!(x.p2m(D1)[&Gfn(0x20000)].0 >= 1 << 19);
        // 12 bits or fewer: the call does nothing.
        assert_eq!(
            x.populate_physmap(SELF, o(0), bits(12), &mut gfns([0x20001])),
            Ok(0)
        );
        // 13 bits: frames below 2, and MFN 0 is Xen's.
        assert_eq!(
            x.populate_physmap(SELF, o(0), bits(13), &mut gfns([0x20001, 0x20002])),
            Ok(1)
        );
        assert_eq!(x.p2m(D1)[&Gfn(0x20001)], Mfn(1));
        ok(&x);
    }

    #[test]
    fn fragmentation_starves_high_orders() {
        let x = pvh(1 << 16, 2048);
        assert_eq!(x.decrease_reservation(SELF, o(9), &gfns([0])), Ok(1));
        let pinned = x.fragment(42, 0.05);
        assert!(pinned > 2000 && pinned < 4500, "{pinned}");
        assert_eq!(
            x.populate_physmap(SELF, o(9), MemFlags::NONE, &mut gfns([0])),
            Ok(0)
        );
        let mut g = gfns(0..512);
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut g),
            Ok(512)
        );
        assert_eq!(x.tot_pages(D1), Some(2048));
        ok(&x);
        x.unpin_all();
        assert_eq!(x.pinned_frames(), 0);
        ok(&x);
        assert_eq!(x.fragment(1, 1.0), x.free_frames() + x.pinned_frames());
        assert_eq!(x.free_frames(), 0);
        ok(&x);
    }

    #[test]
    fn increase_reservation_leaks_for_translated_guests() {
        let x = pvh(4096, 1024);
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns(0..4)), Ok(4));
        let mut out = [Mfn(0xdead); 4];
        assert_eq!(
            x.increase_reservation(SELF, o(1), MemFlags::NONE, &mut out),
            Ok(2)
        );
        // Nothing written back, pages counted, no GFN.
        assert_eq!(out, [Mfn(0xdead); 4]);
        assert_eq!(x.tot_pages(D1), Some(1024));
        assert_eq!(x.leaked(D1).len(), 4);
        assert_eq!(x.p2m(D1).len(), 1020);
        ok(&x);

        // PV: the MFNs are written.
        let y = XenModel::new(4096);
        let mut cfg = DomainConfig::pv_domu(D1, 64);
        cfg.max_pages = 128;
        y.add_domain(cfg).unwrap();
        let mut out = [Mfn(0); 2];
        assert_eq!(
            y.increase_reservation(SELF, o(2), MemFlags::NONE, &mut out),
            Ok(2)
        );
        let owned = y.owned_frames(D1);
        for m in out {
            assert_eq!(m.0 % 4, 0);
            assert!((0..4).all(|j| owned.contains(&Mfn(m.0 + j))));
        }
        ok(&y);
    }

    #[test]
    fn populate_over_populated_gfn_leaks_old_frame() {
        let x = pvh(4096, 1024);
        x.set_max_pages(D1, 1025).unwrap();
        let old = x.p2m(D1)[&Gfn(5)];
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([5])),
            Ok(1)
        );
        assert_ne!(x.p2m(D1)[&Gfn(5)], old);
        assert_eq!(x.leaked(D1), [old]);
        assert_eq!(x.tot_pages(D1), Some(1025));
        ok(&x);
    }

    #[test]
    fn mapping_failure_after_allocation_leaks() {
        let x = pvh(4096, 1024);
        x.set_max_pages(D1, 2048).unwrap();
        // Beyond the p2m: allocated, not mapped, not freed.
        let mut g = gfns([X86_GFN_LIMIT - 1]);
        assert_eq!(
            x.populate_physmap(SELF, o(1), MemFlags::NONE, &mut g),
            Ok(0)
        );
        assert_eq!(x.tot_pages(D1), Some(1026));
        assert_eq!(x.leaked(D1).len(), 2);
        // Injected p2m failure at extent 1.
        x.inject(Fault::MapFailAt { after_extents: 1 });
        let mut g = gfns([3000, 3001, 3002]);
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut g),
            Ok(1)
        );
        assert_eq!(x.tot_pages(D1), Some(1028));
        assert_eq!(x.leaked(D1).len(), 3);
        assert!(x.pending_faults().is_empty());
        ok(&x);
    }

    #[test]
    fn maximum_gpfn_is_a_high_water_mark() {
        let x = pvh(4096, 1024);
        assert_eq!(x.maximum_gpfn(SELF), Ok(Gfn(1023)));
        x.set_max_pages(D1, 1025).unwrap();
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([5000])),
            Ok(1)
        );
        assert_eq!(x.maximum_gpfn(SELF), Ok(Gfn(5000)));
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns([5000])), Ok(1));
        assert_eq!(x.maximum_gpfn(SELF), Ok(Gfn(5000)));
    }

    #[test]
    fn arm_dom0_is_direct_mapped() {
        let x = XenModel::new(1 << 16);
        x.add_domain(DomainConfig::arm_dom0(Mfn(0x8000), 4096))
            .unwrap();
        let p = x.p2m(D0);
        assert!(p.iter().all(|(g, m)| g.0 == m.0));
        assert_eq!(x.own_domid(), None);
        assert_eq!(
            x.memory_map(&mut [abi::E820Entry::default(); 4]),
            Err(errno(Errno::ENOSYS))
        );

        // Decrease does not lower the count: the frames stay the domain's.
        assert_eq!(
            x.decrease_reservation(SELF, o(0), &gfns(0x8000..0x8004)),
            Ok(4)
        );
        assert_eq!(x.tot_pages(D0), Some(4096));
        assert_eq!(x.current_reservation(SELF), Ok(PageCount(4096)));
        assert_eq!(x.leaked(D0), (0x8000..0x8004).map(Mfn).collect::<Vec<_>>());
        ok(&x);
        // They come back at GFN == MFN, with no allocation.
        let free = x.free_frames();
        let mut g = gfns([0x8000, 0x8002]);
        assert_eq!(
            x.populate_physmap(SELF, o(1), MemFlags::NONE, &mut g),
            Ok(2)
        );
        assert_eq!(x.free_frames(), free);
        assert!(x.leaked(D0).is_empty());
        // Repopulating a populated GFN is harmless.
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([0x8001])),
            Ok(1)
        );
        // Beyond its RAM, or another frame: 0.
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([0x100])),
            Ok(0)
        );
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([0x20000])),
            Ok(0)
        );
        assert_eq!(
            x.populate_physmap(SELF, o(1), MemFlags::NONE, &mut gfns([0x8fff])),
            Ok(0)
        );
        ok(&x);
    }

    #[test]
    fn arm_domu_populates_beyond_ram() {
        let x = XenModel::new(1 << 16);
        x.add_domain(DomainConfig::arm_domu(D1, 8192)).unwrap();
        assert_eq!(x.maximum_gpfn(SELF), Ok(Gfn(ARM_GUEST_RAM0_GFN + 8191)));
        let g = gfns(ARM_GUEST_RAM0_GFN..ARM_GUEST_RAM0_GFN + 16);
        assert_eq!(x.decrease_reservation(SELF, o(4), &g[..1]), Ok(1));
        assert_eq!(x.tot_pages(D1), Some(8192 - 16));
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns([0x38000])),
            Ok(1)
        );
        ok(&x);
    }

    #[test]
    fn exchange_is_not_supported_for_translated_guests() {
        let x = pvh(4096, 1024);
        let input = gfns(0..2);
        let mut output = gfns([0x1000]);
        let mut req = ExchangeRequest {
            dom: SELF,
            in_order: o(0),
            input: &input,
            out_order: o(1),
            output: &mut output,
            out_flags: bits(31),
        };
        let r = x.exchange(&mut req);
        assert_eq!(r.exchanged, 0);
        assert_eq!(r.result, Err(errno(Errno::EOPNOTSUPP)));
        assert_eq!(output, gfns([0x1000]));
        assert_eq!(x.p2m(D1).len(), 1024);
        ok(&x);

        let ex = |input: &[Gfn], in_order: u8, output: &mut [Gfn], out_order: u8, dom| {
            x.exchange(&mut ExchangeRequest {
                dom,
                in_order: o(in_order),
                input,
                out_order: o(out_order),
                output,
                out_flags: MemFlags::NONE,
            })
        };
        let e = |r: ExchangeOutcome| r.result.err().and_then(XenError::errno);
        // An unpopulated first page is found before steal_page refuses.
        assert_eq!(
            e(ex(&gfns([5000]), 0, &mut gfns([0]), 0, SELF)),
            Some(Errno::EINVAL)
        );
        // Sizes must match.
        assert_eq!(
            e(ex(&gfns([0, 1]), 0, &mut gfns([0]), 0, SELF)),
            Some(Errno::EINVAL)
        );
        // Orders above the caller's max: EPERM first.
        assert_eq!(
            e(ex(&gfns([0]), 10, &mut gfns([0]), 10, SELF)),
            Some(Errno::EPERM)
        );
        // Nothing to do: success.
        assert_eq!(ex(&[], 0, &mut [], 0, SELF).result, Ok(()));
        assert_eq!(
            e(ex(&gfns([0]), 0, &mut gfns([0]), 0, D7)),
            Some(Errno::ESRCH)
        );
        ok(&x);
    }

    fn pv_model() -> XenModel {
        let x = XenModel::new(1 << 16);
        x.add_domain(DomainConfig::pv_domu(D1, 1024)).unwrap();
        x
    }

    #[test]
    fn pv_exchange_makes_contiguous_memory() {
        let x = pv_model();
        let input: Vec<Gfn> = x.p2m(D1).values().take(512).map(|m| Gfn(m.0)).collect();
        let mut output = gfns([0x10000]);
        let r = x.exchange(&mut ExchangeRequest {
            dom: SELF,
            in_order: o(0),
            input: &input,
            out_order: o(9),
            output: &mut output,
            out_flags: bits(27),
        });
        assert_eq!(
            r,
            ExchangeOutcome {
                exchanged: 512,
                result: Ok(())
            }
        );
        let base = output[0].0;
        assert_eq!(base % 512, 0);
        assert!(base + 512 <= 1 << 15);
        let owned = x.owned_frames(D1);
        assert!(input.iter().all(|g| !owned.contains(&Mfn(g.0))));
        assert_eq!(x.p2m(D1)[&Gfn(0x10000 + 7)], Mfn(base + 7));
        assert_eq!(x.tot_pages(D1), Some(1024));
        ok(&x);

        // And back: one order-9 extent for 512 pages.
        let mut output = gfns(0..512);
        let r = x.exchange(&mut ExchangeRequest {
            dom: D1,
            in_order: o(9),
            input: &[Gfn(base)],
            out_order: o(0),
            output: &mut output,
            out_flags: MemFlags::NONE,
        });
        assert_eq!(
            r,
            ExchangeOutcome {
                exchanged: 1,
                result: Ok(())
            }
        );
        assert!(output.iter().all(|m| !owned.contains(&Mfn(m.0))));
        assert_eq!(x.tot_pages(D1), Some(1024));
        ok(&x);
    }

    #[test]
    fn pv_exchange_partial_and_refused() {
        let x = pv_model();
        let mine: Vec<Gfn> = x.owned_frames(D1).iter().map(|m| Gfn(m.0)).collect();
        let ex = |input: &[Gfn], in_order: u8, output: &mut [Gfn], out_order: u8| {
            x.exchange(&mut ExchangeRequest {
                dom: SELF,
                in_order: o(in_order),
                input,
                out_order: o(out_order),
                output,
                out_flags: MemFlags::NONE,
            })
        };
        // Chunks of two inputs: a failure at input 3 keeps chunk 0 only.
        x.inject(Fault::ShortAt {
            op: Op::Exchange,
            after_extents: 3,
        });
        let r = ex(&mine[..4], 0, &mut gfns([0, 2]), 1);
        assert_eq!(
            r,
            ExchangeOutcome {
                exchanged: 2,
                result: Err(errno(Errno::ENOMEM))
            }
        );
        let owned = x.owned_frames(D1);
        assert!(!owned.contains(&Mfn(mine[0].0)) && !owned.contains(&Mfn(mine[1].0)));
        assert!(owned.contains(&Mfn(mine[2].0)) && owned.contains(&Mfn(mine[3].0)));
        ok(&x);

        // A page twice in one chunk, a foreign page: EINVAL, nothing done.
        let before = x.owned_frames(D1);
        let r = ex(&[mine[2], mine[2]], 0, &mut gfns([0]), 1);
        assert_eq!(
            r,
            ExchangeOutcome {
                exchanged: 0,
                result: Err(errno(Errno::EINVAL))
            }
        );
        let r = ex(&[mine[0]], 0, &mut gfns([0]), 0);
        assert_eq!(r.result, Err(errno(Errno::EINVAL)));
        assert_eq!(x.owned_frames(D1), before);

        // Forced EOPNOTSUPP, sticky until cleared.
        x.inject(Fault::ExchangeUnsupported);
        for _ in 0..2 {
            let r = ex(&[mine[2]], 0, &mut gfns([0]), 0);
            assert_eq!(
                r,
                ExchangeOutcome {
                    exchanged: 0,
                    result: Err(errno(Errno::EOPNOTSUPP))
                }
            );
        }
        x.clear_faults();
        assert_eq!(ex(&[mine[2]], 0, &mut gfns([0]), 0).result, Ok(()));

        // No memory for the output.
        x.inject(Fault::ExhaustPool { leave_free: 0 });
        let r = ex(&[mine[3]], 0, &mut gfns([0]), 0);
        assert_eq!(r.result, Err(errno(Errno::ENOMEM)));
        assert!(x.owned_frames(D1).contains(&Mfn(mine[3].0)));
        ok(&x);
    }

    #[test]
    fn pv_decrease_takes_mfns() {
        let x = pv_model();
        let m = x.owned_frames(D1)[0];
        assert_eq!(x.decrease_reservation(SELF, o(0), &[Gfn(m.0)]), Ok(1));
        // Not its frame any more (ENXIO), or not a frame at all (EINVAL).
        assert_eq!(x.decrease_reservation(SELF, o(0), &[Gfn(m.0)]), Ok(0));
        assert_eq!(x.decrease_reservation(SELF, o(0), &[Gfn(1 << 40)]), Ok(0));
        assert_eq!(x.tot_pages(D1), Some(1023));
        let mut g = gfns([77]);
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut g),
            Ok(1)
        );
        assert_ne!(g[0], Gfn(77));
        assert_eq!(x.p2m(D1)[&Gfn(77)], Mfn(g[0].0));
        ok(&x);
    }

    /// dom0 (privileged), d1 and d7 (unprivileged PVH domUs).
    fn three() -> XenModel {
        let x = XenModel::new(1 << 16);
        x.add_domain(DomainConfig::pvh_dom0(1024)).unwrap();
        x.add_domain(DomainConfig::pvh_domu(D1, 512)).unwrap();
        x.add_domain(DomainConfig::pvh_domu(D7, 512)).unwrap();
        x
    }

    #[test]
    fn domid_rules_for_unprivileged_callers() {
        let x = three();
        x.set_current(D1).unwrap();
        assert_eq!(x.current_reservation(SELF), Ok(PageCount(512)));
        assert_eq!(x.current_reservation(D1), Ok(PageCount(512)));
        assert_eq!(x.current_reservation(D0), Err(errno(Errno::EPERM)));
        assert_eq!(x.maximum_gpfn(D7), Err(errno(Errno::EPERM)));
        assert_eq!(x.maximum_reservation(DomId(3)), Err(errno(Errno::ESRCH)));
        // Reservation calls on another or an unknown domain: 0, no error.
        assert_eq!(x.decrease_reservation(D7, o(0), &gfns([0])), Ok(0));
        assert_eq!(x.decrease_reservation(DomId(3), o(0), &gfns([0])), Ok(0));
        assert_eq!(x.tot_pages(D7), Some(512));
        // Its own explicit domid is fine.
        assert_eq!(x.decrease_reservation(D1, o(0), &gfns([0])), Ok(1));
        // getdomaininfo: privileged only, even for itself.
        assert_eq!(x.domain_info(D1), Err(errno(Errno::EPERM)));
        assert_eq!(x.domain_info(SELF), Err(errno(Errno::EINVAL)));
        assert_eq!(x.domain_info(DomId(9)), Err(errno(Errno::ESRCH)));
        // Exchange on another domain.
        let r = x.exchange(&mut ExchangeRequest {
            dom: D7,
            in_order: o(0),
            input: &gfns([1]),
            out_order: o(0),
            output: &mut gfns([1]),
            out_flags: MemFlags::NONE,
        });
        assert_eq!(r.result, Err(errno(Errno::EPERM)));
    }

    #[test]
    fn privileged_caller() {
        let x = three();
        assert_eq!(x.current(), Some(D0));
        assert_eq!(x.maximum_reservation(SELF), Ok(PageCount(u32::MAX.into())));
        let i = x.domain_info(D7).unwrap();
        assert_eq!(
            (i.domid, i.tot_pages, i.max_pages),
            (D7, PageCount(512), PageCount(512))
        );
        // Xen answers for d7 when asked for d5: RealXen (and the model) say ESRCH.
        assert_eq!(x.domain_info(DomId(5)), Err(errno(Errno::ESRCH)));
        assert_eq!(x.domain_info(DomId(8)), Err(errno(Errno::ESRCH)));
        assert_eq!(x.domain_info(DomId::SELF), Err(errno(Errno::EINVAL)));
        assert_eq!(x.decrease_reservation(D1, o(0), &gfns([3])), Ok(1));
        assert_eq!(x.current_reservation(D1), Ok(PageCount(511)));
        assert!(x.features().unwrap().contains(Features::DOM0));
        x.shutdown(ShutdownReason::Reboot).unwrap();
        assert_eq!(x.shutdown_code(D0), Some(1));
        assert_eq!(x.domain_info(D0).unwrap().shutdown, Some(1));
        ok(&x);
    }

    #[test]
    fn faults() {
        let x = pvh(4096, 1024);
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns(0..64)), Ok(64));

        x.inject(Fault::ShortAt {
            op: Op::PopulatePhysmap,
            after_extents: 3,
        });
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns(0..5)),
            Ok(3)
        );
        assert_eq!(x.tot_pages(D1), Some(963));

        x.inject(Fault::Errno {
            op: Op::PopulatePhysmap,
            errno: Errno::EFAULT,
        });
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns(3..5)),
            Err(errno(Errno::EFAULT))
        );
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns(3..5)),
            Ok(2)
        );

        x.inject(Fault::PartialExtent {
            after_extents: 1,
            pages: 3,
        });
        assert_eq!(
            x.decrease_reservation(SELF, o(2), &gfns([100, 104, 108])),
            Ok(1)
        );
        let p = x.p2m(D1);
        assert!((100..107).all(|g| !p.contains_key(&Gfn(g))));
        assert!(p.contains_key(&Gfn(107)) && p.contains_key(&Gfn(108)));
        assert_eq!(x.tot_pages(D1), Some(965 - 7));

        x.inject(Fault::ShortAt {
            op: Op::DecreaseReservation,
            after_extents: 0,
        });
        assert_eq!(x.decrease_reservation(SELF, o(0), &gfns([200])), Ok(0));
        assert!(x.p2m(D1).contains_key(&Gfn(200)));

        x.inject(Fault::ExhaustPool { leave_free: 10 });
        assert_eq!(x.free_frames(), 10);
        assert_eq!(
            x.populate_physmap(SELF, o(0), MemFlags::NONE, &mut gfns(0..20)),
            Ok(10)
        );
        x.inject(Fault::Errno {
            op: Op::CurrentReservation,
            errno: Errno::EAGAIN,
        });
        assert_eq!(x.current_reservation(SELF), Err(errno(Errno::EAGAIN)));
        assert_eq!(x.calls(Op::CurrentReservation), 1);
        assert_eq!(x.calls(Op::PopulatePhysmap), 4);
        ok(&x);
    }

    #[test]
    fn console_version_features_memory_map() {
        let x = three();
        x.console_write(b"hello ").unwrap();
        x.set_current(D1).unwrap();
        // A toolstack-made domU on a release build: EPERM.
        assert_eq!(x.console_write(b"no"), Err(errno(Errno::EPERM)));
        x.set_current(D0).unwrap();
        x.console_write(b"world").unwrap();
        assert_eq!(x.console_output(), b"hello world");

        let v = x.version().unwrap();
        assert_eq!((v.major, v.minor, v.extra_str()), (4, 17, ".7"));
        x.set_current(D1).unwrap();
        let f = x.features().unwrap();
        assert!(f.contains(Features::AUTO_TRANSLATED_PHYSMAP | Features::NOT_DIRECT_MAPPED));
        assert!(!f.contains(Features::DOM0));
        assert_eq!(x.own_domid(), Some(D1));

        let mut cfg = DomainConfig::pvh_domu(DomId(2), 16);
        let e = |a: u64, k: u32| abi::E820Entry {
            addr: a,
            size: 4096,
            kind: k,
        };
        cfg.e820 = Some(vec![e(0, 1), e(0x1000, 2), e(0x2000, 1)]);
        x.add_domain(cfg).unwrap();
        x.set_current(DomId(2)).unwrap();
        let mut buf = [abi::E820Entry::default(); 2];
        // Truncated without a word.
        assert_eq!(x.memory_map(&mut buf), Ok(2));
        assert_eq!({ buf[1].kind }, 2);
        let mut buf = [abi::E820Entry::default(); 8];
        assert_eq!(x.memory_map(&mut buf), Ok(3));
        x.yield_cpu().unwrap();
    }

    #[test]
    fn set_up_errors() {
        let x = XenModel::new(64);
        assert_eq!(
            x.add_domain(DomainConfig::pvh_domu(D1, 64)),
            Err(ModelError::OutOfMemory)
        );
        x.add_domain(DomainConfig::pvh_domu(D1, 63)).unwrap();
        assert_eq!(x.free_frames(), 0);
        assert!(!x.owned_frames(D1).contains(&Mfn(0)));
        assert_eq!(
            x.add_domain(DomainConfig::pvh_domu(D1, 0)),
            Err(ModelError::DuplicateDomain(D1))
        );
        assert!(x
            .add_domain(DomainConfig::pvh_domu(DomId::SELF, 0))
            .is_err());
        let mut c = DomainConfig::pvh_domu(D7, 8);
        c.ram = vec![(Gfn(0), 4), (Gfn(2), 4)];
        assert_eq!(
            x.add_domain(c),
            Err(ModelError::BadConfig("RAM ranges overlap"))
        );
        let mut c = DomainConfig::pvh_domu(D7, 0);
        c.max_pages = 0;
        x.add_domain(c).unwrap();
        assert_eq!(
            x.set_current(DomId(99)),
            Err(ModelError::NoSuchDomain(DomId(99)))
        );
        assert!(x.add_domain(DomainConfig::arm_dom0(Mfn(60), 8)).is_err());
        ok(&x);
        assert!(format!("{x:?}").contains("total_mfns: 64"));
    }

    // ---- random operation sequences ----

    const PV: DomId = DomId(3);
    const DM: DomId = DomId(4);

    #[derive(Clone, Debug)]
    enum Act {
        Current(u8),
        Decrease(u8, u8, Vec<u64>),
        Populate(u8, u8, Option<u8>, Vec<u64>),
        Increase(u8, u8, Option<u8>, usize),
        Exchange(u8, u8, Vec<usize>, u8),
        Inject(u8, usize, u64),
        Fragment(u64),
        Unpin,
        MaxPages(u8, u64),
    }

    fn dom_of(i: u8) -> DomId {
        [DomId::SELF, D0, D1, PV, DM, DomId(9)][usize::from(i) % 6]
    }

    /// Mostly small orders and 2 MiB, sometimes above the domU limit.
    fn ord() -> impl Strategy<Value = u8> {
        prop_oneof![4 => 0u8..4, 2 => Just(9u8), 1 => 0u8..11]
    }

    /// Mostly DOMID_SELF.
    fn dom() -> impl Strategy<Value = u8> {
        prop_oneof![3 => Just(0u8), 1 => 0u8..6]
    }

    fn act() -> impl Strategy<Value = Act> {
        let list = || proptest::collection::vec(0u64..1400, 0..10);
        prop_oneof![
            (0u8..4).prop_map(Act::Current),
            (dom(), ord(), list()).prop_map(|(d, o, l)| Act::Decrease(d, o, l)),
            (dom(), ord(), proptest::option::of(10u8..30), list())
                .prop_map(|(d, o, b, l)| Act::Populate(d, o, b, l)),
            (dom(), 0u8..4, proptest::option::of(10u8..30), 0usize..6)
                .prop_map(|(d, o, b, n)| Act::Increase(d, o, b, n)),
            (
                0u8..4,
                0u8..4,
                proptest::collection::vec(0usize..2000, 0..9),
                0u8..2
            )
                .prop_map(|(i, o, l, b)| Act::Exchange(i, o, l, b)),
            (0u8..7, 0usize..6, 0u64..4).prop_map(|(k, a, p)| Act::Inject(k, a, p)),
            any::<u64>().prop_map(Act::Fragment),
            Just(Act::Unpin),
            (0u8..6, 0u64..2000).prop_map(|(d, n)| Act::MaxPages(d, n)),
        ]
    }

    fn world() -> XenModel {
        let x = XenModel::new(4096);
        // The direct-mapped domain first, so its frames are free.
        let mut dm = DomainConfig::arm_dom0(Mfn(0x200), 256);
        dm.domid = DM;
        dm.privileged = false;
        x.add_domain(dm).unwrap();
        x.add_domain(DomainConfig::pvh_dom0(256)).unwrap();
        let mut d1 = DomainConfig::pvh_domu(D1, 1024);
        d1.max_pages = 1200;
        x.add_domain(d1).unwrap();
        x.add_domain(DomainConfig::pv_domu(PV, 256)).unwrap();
        x.set_current(D1).unwrap();
        x
    }

    fn target(x: &XenModel, d: DomId) -> Option<DomId> {
        if d == DomId::SELF {
            x.current()
        } else {
            Some(d)
        }
    }

    fn tot(x: &XenModel, d: Option<DomId>) -> u64 {
        d.and_then(|d| x.tot_pages(d)).unwrap_or(0)
    }

    fn step(x: &XenModel, a: &Act) -> Result<(), TestCaseError> {
        match a {
            Act::Current(i) => {
                x.set_current([D0, D1, PV, DM][usize::from(*i) % 4])
                    .unwrap();
            }
            Act::Decrease(d, ord, l) => {
                let dom = dom_of(*d);
                let t = target(x, dom);
                let before = tot(x, t);
                let n = 1u64 << ord;
                let list: Vec<Gfn> = if t == Some(PV) {
                    let owned = x.owned_frames(PV);
                    l.iter()
                        .map(|&i| owned.get(i as usize).map_or(Gfn(i), |m| Gfn(m.0)))
                        .collect()
                } else {
                    l.iter()
                        .map(|&g| Gfn(g + if t == Some(DM) { 0x200 } else { 0 }))
                        .collect()
                };
                let done = x.decrease_reservation(dom, o(*ord), &list).unwrap();
                prop_assert!(done <= list.len());
                let removed = before - tot(x, t);
                if t == Some(DM) {
                    prop_assert_eq!(removed, 0);
                } else if done == list.len() {
                    prop_assert_eq!(removed, done as u64 * n);
                } else {
                    prop_assert!(removed >= done as u64 * n && removed < (done as u64 + 1) * n);
                }
            }
            Act::Populate(d, ord, b, l) => {
                let dom = dom_of(*d);
                let t = target(x, dom);
                let before = tot(x, t);
                let n = 1u64 << ord;
                let flags = b.and_then(MemFlags::address_bits).unwrap_or(MemFlags::NONE);
                let mut list: Vec<Gfn> = l
                    .iter()
                    .map(|&g| Gfn(g + if t == Some(DM) { 0x200 } else { 0 }))
                    .collect();
                let done = x.populate_physmap(dom, o(*ord), flags, &mut list).unwrap();
                prop_assert!(done <= list.len());
                let added = tot(x, t) - before;
                if t == Some(DM) {
                    prop_assert_eq!(added, 0);
                } else {
                    prop_assert!(added == done as u64 * n || added == (done as u64 + 1) * n);
                }
                if let (Some(t), true) = (t, t != Some(PV)) {
                    let p = x.p2m(t);
                    for g in &list[..done] {
                        prop_assert!(p.contains_key(g));
                    }
                    // The last extent done is not overwritten by a later one:
                    // machine-contiguous and aligned.
                    if let (Some(g), false) = (list[..done].last(), t == DM) {
                        let m = p[g].0;
                        prop_assert_eq!(m % n, 0);
                        for j in 0..n {
                            prop_assert_eq!(p.get(&Gfn(g.0 + j)), Some(&Mfn(m + j)));
                        }
                    }
                }
            }
            Act::Increase(d, ord, b, k) => {
                let dom = dom_of(*d);
                let t = target(x, dom);
                let before = tot(x, t);
                let flags = b.and_then(MemFlags::address_bits).unwrap_or(MemFlags::NONE);
                let mut out = vec![Mfn(0); *k];
                let done = x
                    .increase_reservation(dom, o(*ord), flags, &mut out)
                    .unwrap();
                prop_assert!(done <= *k);
                prop_assert_eq!(tot(x, t) - before, done as u64 * (1u64 << ord));
            }
            Act::Exchange(in_order, out_order, picks, b) => {
                let cur = x.current();
                let totals: Vec<u64> = [D0, D1, PV, DM].iter().map(|&d| tot(x, Some(d))).collect();
                let owned = cur.map(|c| x.owned_frames(c)).unwrap_or_default();
                let p2m = cur.map(|c| x.p2m(c)).unwrap_or_default();
                let keys: Vec<Gfn> = p2m.keys().copied().collect();
                let input: Vec<Gfn> = picks
                    .iter()
                    .map(|&i| {
                        if cur == Some(PV) {
                            owned
                                .get(i % owned.len().max(1))
                                .map_or(Gfn(i as u64), |m| Gfn(m.0))
                        } else {
                            keys.get(i % keys.len().max(1))
                                .copied()
                                .unwrap_or(Gfn(i as u64))
                        }
                    })
                    .collect();
                let (io, oo) = (u32::from(*in_order), u32::from(*out_order));
                let pages = (input.len() as u64) << io;
                let out_n = (pages >> oo) as usize;
                let mut output: Vec<Gfn> =
                    (0..out_n).map(|i| Gfn(5000 + (i as u64) * 16)).collect();
                let flags = if *b == 1 { bits(24) } else { MemFlags::NONE };
                let r = x.exchange(&mut ExchangeRequest {
                    dom: DomId::SELF,
                    in_order: o(*in_order),
                    input: &input,
                    out_order: o(*out_order),
                    output: &mut output,
                    out_flags: flags,
                });
                prop_assert!(r.exchanged <= input.len());
                if cur != Some(PV) && !input.is_empty() && (pages >> oo) << oo == pages {
                    prop_assert_eq!(r.exchanged, 0);
                    prop_assert!(r.result.is_err());
                }
                let after: Vec<u64> = [D0, D1, PV, DM].iter().map(|&d| tot(x, Some(d))).collect();
                prop_assert_eq!(totals, after);
            }
            Act::Inject(k, a, p) => {
                let f = match k {
                    0 => Fault::ShortAt {
                        op: Op::PopulatePhysmap,
                        after_extents: *a,
                    },
                    1 => Fault::ShortAt {
                        op: Op::DecreaseReservation,
                        after_extents: *a,
                    },
                    2 => Fault::ShortAt {
                        op: Op::Exchange,
                        after_extents: *a,
                    },
                    3 => Fault::PartialExtent {
                        after_extents: *a,
                        pages: *p,
                    },
                    4 => Fault::MapFailAt { after_extents: *a },
                    5 => Fault::ExchangeUnsupported,
                    _ => Fault::ExhaustPool {
                        leave_free: (*a as u64) * 100,
                    },
                };
                x.inject(f);
            }
            Act::Fragment(seed) => {
                x.fragment(*seed, 0.02);
            }
            Act::Unpin => {
                x.unpin_all();
                x.clear_faults();
            }
            Act::MaxPages(d, n) => {
                if let Some(t) = target(x, dom_of(*d)) {
                    let _ = x.set_max_pages(t, *n);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn random_sequences_conserve_frames(acts in proptest::collection::vec(act(), 1..60)) {
            let x = world();
            for a in &acts {
                step(&x, a)?;
                if let Err(e) = x.check_conservation() {
                    return Err(TestCaseError::fail(format!("after {a:?}: {e}")));
                }
                let owned: u64 = [D0, D1, PV, DM].iter().map(|&d| x.tot_pages(d).unwrap()).sum();
                // Direct-mapped frames are counted once; MFN 0 is Xen's.
                prop_assert_eq!(owned + x.free_frames() + x.pinned_frames() + 1, x.total_frames());
            }
        }
    }
}
