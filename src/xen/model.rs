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
//! Compiled for the crate's own tests and with the `model` feature.
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
//!   *caller's* limit, not the target's.
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

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use super::{
    abi, DomainInfo, Errno, ExchangeOutcome, ExchangeRequest, Features, Hypervisor, MemFlags,
    ShutdownReason, XenError, XenVersion,
};
use crate::addr::{DomId, Gfn, Mfn, Order, PageCount, PAGE_SHIFT};

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
}

const OP_COUNT: usize = 16;

impl Op {
    const fn index(self) -> usize {
        self as usize
    }
}

/// A fault to inject with [`XenModel::inject`].
///
/// `ShortAt`, `PartialExtent`, `MapFailAt` and `Errno` are queued and consumed
/// by the next call of their operation (whether or not that call reaches the
/// extent named); `ExchangeUnsupported` stays until
/// [`XenModel::clear_faults`]; `ExhaustPool` acts at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next call of `op` stops at extent index `after_extents`, as when
    /// the allocator finds no chunk (increase, populate; exchange: ENOMEM for
    /// the chunk holding that input extent, so `exchanged` is rounded down to
    /// a chunk) or when `guest_remove_page` fails on the extent's first page
    /// (decrease). Nothing of that extent is done.
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
            Fault::ShortAt { op, .. } | Fault::Errno { op, .. } => Some(op),
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
        }
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
}

impl Domain {
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
            dying: false,
        }
    }
}

struct State {
    machine: Machine,
    domains: BTreeMap<u16, Domain>,
    current: Option<u16>,
    version: XenVersion,
    console: Vec<u8>,
    faults: Vec<Fault>,
    exchange_unsupported: bool,
    calls: [u64; OP_COUNT],
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
    fn enter(&mut self, op: Op) -> Option<Fault> {
        self.calls[op.index()] += 1;
        let i = self.faults.iter().position(|f| f.op() == Some(op))?;
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
        if !self.xsm_target(d) {
            return None;
        }
        if order.get() > self.caller()?.cfg.max_order {
            return None;
        }
        Some((d, limit))
    }

    /// `alloc_domheap_pages(d, order, MEMF_bits)`: a machine-contiguous,
    /// aligned chunk assigned to `d` (its frames get no GFN), or `None` when
    /// no chunk is free or `assign_pages` refuses it (`max_pages`).
    fn alloc_domheap(&mut self, d: u16, order: u32, limit: u64) -> Option<u64> {
        let n = 1u64 << order;
        let dom = self.domains.get_mut(&d)?;
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
                faults: Vec::new(),
                exchange_unsupported: false,
                calls: [0; OP_COUNT],
            }),
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
        let mut dom = Domain {
            cfg,
            tot_pages: 0,
            frames: BTreeMap::new(),
            p2m: BTreeMap::new(),
            max_mapped: 0,
            shutdown: None,
            foreign: BTreeMap::new(),
        };
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
        Ok(())
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

    fn maximum_ram_page(&self) -> Result<Mfn, XenError> {
        Ok(Mfn(self.total_frames().saturating_sub(1)))
    }

    // The machine-to-phys table is not modelled.
    fn machphys_mfn_list(&self, _: &mut [Mfn]) -> Result<usize, XenError> {
        Err(XenError::Errno(Errno::ENOSYS))
    }

    /// `xenmem_add_to_physmap_batch` with `XENMAPSPACE_gmfn_foreign`
    /// (`p2m_add_foreign`): per index, ESRCH for `DOMID_SELF` or an unknown
    /// domain, EPERM for the caller itself or an unprivileged caller (XSM),
    /// EINVAL for a foreign frame that is not populated RAM. What was at the
    /// caller's GFN goes: a RAM page is removed and freed (Xen does that;
    /// the agent must never ask it), a foreign entry is replaced.
    fn map_foreign_batch(
        &self,
        foreign: DomId,
        frames: &[Gfn],
        gfns: &[Gfn],
        errs: &mut [super::XenStatus],
    ) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        if let Some(Fault::Errno { errno, .. }) = s.enter(Op::MapForeignBatch) {
            return Err(err(errno));
        }
        if frames.len() != gfns.len() || errs.len() != frames.len() {
            return Err(err(Errno::EINVAL));
        }
        let caller = s.current.ok_or(err(Errno::ESRCH))?;
        let (translated, privileged) = {
            let c = s.domains.get(&caller).ok_or(err(Errno::ESRCH))?;
            (c.cfg.translated, c.cfg.privileged)
        };
        if !translated {
            return Err(err(Errno::EACCES));
        }
        for i in 0..frames.len() {
            let status = (|| {
                if foreign == DomId::SELF {
                    return Err(Errno::ESRCH);
                }
                if foreign.0 == caller || !privileged {
                    return Err(Errno::EPERM);
                }
                let fd = s.domains.get(&foreign.0).ok_or(Errno::ESRCH)?;
                let m = *fd.p2m.get(&frames[i]).ok_or(Errno::EINVAL)?;
                let g = gfns[i];
                let c = s.domains.get(&caller).ok_or(Errno::ESRCH)?;
                if g.0 >= c.cfg.gfn_limit {
                    return Err(Errno::EINVAL);
                }
                if c.p2m.contains_key(&g) {
                    s.guest_remove_page(caller, g.0)?;
                }
                let c = s.domains.get_mut(&caller).ok_or(Errno::ESRCH)?;
                c.foreign.insert(g, (foreign.0, m));
                c.max_mapped = c.max_mapped.max(g.0);
                Ok(())
            })();
            errs[i] = super::XenStatus(status.map_or_else(|e| -(e as i32), |()| 0));
        }
        Ok(())
    }

    /// `XENMEM_remove_from_physmap`: a foreign entry goes; a RAM page is
    /// removed as by `guest_remove_page`; nothing there is ENOENT.
    fn remove_from_physmap(&self, gfn: Gfn) -> Result<(), XenError> {
        let mut s = self.state.borrow_mut();
        if let Some(Fault::Errno { errno, .. }) = s.enter(Op::RemoveFromPhysmap) {
            return Err(err(errno));
        }
        let caller = s.current.ok_or(err(Errno::ESRCH))?;
        let c = s.domains.get_mut(&caller).ok_or(err(Errno::ESRCH))?;
        if c.foreign.remove(&gfn).is_some() {
            return Ok(());
        }
        if c.p2m.contains_key(&gfn) {
            return s.guest_remove_page(caller, gfn.0).map_err(err);
        }
        Err(err(Errno::ENOENT))
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
