//! Xen: ABI structures, error numbers and typed operations.
//!
//! [`Hypervisor`] is the seam between the agent's logic and Xen. [`RealXen`]
//! implements it with real hypercalls on the bare-metal targets (on a host
//! build every hypercall fails with `ENOSYS`); host tests implement it with
//! a model of Xen (crate `xenmem-model`).

pub mod abi;
pub mod domctl;
pub mod errno;
mod hypercall;

/// The model of Xen (crate `xenmem-model`), compiled into the unit tests.
#[cfg(test)]
#[path = "../../../xenmem-model/src/xen.rs"]
pub mod model;

use core::fmt;

use crate::addr::{DomId, Gfn, Mfn, Order, PageCount};
pub use errno::Errno;

pub use hypercall::{console_read, console_write, evtchn_send, hvm_get_param, RealXen};

/// A failed hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenError {
    /// Xen returned `-errno` for an error number it defines.
    Errno(Errno),
    /// Xen returned a negative value that `public/errno.h` does not define.
    Unknown(i64),
    /// Xen returned something the operation's contract rules out (a count
    /// larger than asked for, a version field out of range, ...).
    Contract(&'static str),
}

impl XenError {
    /// Classify a hypercall's raw return: `Ok(v)` for `v >= 0`.
    pub fn check(ret: i64) -> Result<u64, XenError> {
        if ret >= 0 {
            Ok(ret as u64)
        } else {
            let e = ret.unsigned_abs();
            Err(i64::try_from(e)
                .ok()
                .and_then(Errno::from_raw)
                .map_or(XenError::Unknown(ret), XenError::Errno))
        }
    }

    /// The errno, if Xen gave one it defines.
    pub fn errno(self) -> Option<Errno> {
        match self {
            XenError::Errno(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XenError::Errno(e) => write!(f, "{} ({})", e.name(), e.description()),
            XenError::Unknown(v) => write!(f, "unknown Xen error {v}"),
            XenError::Contract(what) => write!(f, "Xen broke the call's contract: {what}"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for XenError {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            XenError::Errno(e) => defmt::write!(f, "{=str} ({=str})", e.name(), e.description()),
            XenError::Unknown(v) => defmt::write!(f, "unknown Xen error {=i64}", v),
            XenError::Contract(what) => {
                defmt::write!(f, "Xen broke the call's contract: {=str}", what)
            }
        }
    }
}

/// Xen's version, as `XENVER_version` and `XENVER_extraversion` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenVersion {
    /// Major version (4 for Xen 4.17).
    pub major: u16,
    /// Minor version (17 for Xen 4.17).
    pub minor: u16,
    /// The extra version string (".7" for 4.17.7), NUL-padded.
    pub extra: [u8; abi::XEN_EXTRAVERSION_LEN],
}

impl XenVersion {
    /// The extra version as text (up to its first NUL; `"?"` if not UTF-8).
    pub fn extra_str(&self) -> &str {
        let n = self
            .extra
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.extra.len());
        core::str::from_utf8(&self.extra[..n]).unwrap_or("?")
    }
}

bitflags::bitflags! {
    /// The first word of Xen's feature bitmap (`XENVER_get_features`, submap 0).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u32 {
        /// `XENFEAT_writable_page_tables`.
        const WRITABLE_PAGE_TABLES = 1 << 0;
        /// `XENFEAT_auto_translated_physmap`: Xen translates the guest's
        /// frames (PVH, HVM, Arm); GFNs are not MFNs.
        const AUTO_TRANSLATED_PHYSMAP = 1 << 2;
        /// `XENFEAT_supervisor_mode_kernel`.
        const SUPERVISOR_MODE_KERNEL = 1 << 3;
        /// `XENFEAT_hvm_callback_vector`.
        const HVM_CALLBACK_VECTOR = 1 << 8;
        /// `XENFEAT_hvm_safe_pvclock`.
        const HVM_SAFE_PVCLOCK = 1 << 9;
        /// `XENFEAT_hvm_pirqs`.
        const HVM_PIRQS = 1 << 10;
        /// `XENFEAT_dom0`: this domain is the hardware domain.
        const DOM0 = 1 << 11;
        /// `XENFEAT_grant_map_identity`.
        const GRANT_MAP_IDENTITY = 1 << 12;
        /// `XENFEAT_memory_op_vnode_supported`.
        const MEMORY_OP_VNODE = 1 << 13;
        /// `XENFEAT_ARM_SMCCC_supported`.
        const ARM_SMCCC = 1 << 14;
        /// `XENFEAT_linux_rsdp_unrestricted`.
        const LINUX_RSDP_UNRESTRICTED = 1 << 15;
        /// `XENFEAT_not_direct_mapped`.
        const NOT_DIRECT_MAPPED = 1 << 16;
        /// `XENFEAT_direct_mapped`: guest-physical == machine address (Arm dom0).
        const DIRECT_MAPPED = 1 << 17;
        /// Bits this crate does not name.
        const _ = !0;
    }
}

/// Why a domain shuts down (`SHUTDOWN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`: exited normally.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_crash`: tell the controller we crashed.
    Crash,
}

impl ShutdownReason {
    /// The `SHUTDOWN_*` code.
    pub const fn code(self) -> u32 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Crash => 3,
        }
    }
}

/// What `XEN_DOMCTL_getdomaininfo` says about a domain (the part we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain asked about.
    pub domid: DomId,
    /// Pages it holds now.
    pub tot_pages: PageCount,
    /// Its maximum.
    pub max_pages: PageCount,
    /// `Some(code)` once it has shut down, with its `SHUTDOWN_*` code.
    pub shutdown: Option<u32>,
    /// It is dying (being destroyed).
    pub dying: bool,
}

/// `XENMEMF_*` flags of an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemFlags(u32);

impl MemFlags {
    /// No restriction.
    pub const NONE: MemFlags = MemFlags(0);

    /// Only machine memory addressable with `bits` bits (`XENMEMF_address_bits`);
    /// `None` for 0 or more than 64 bits.
    pub const fn address_bits(bits: u8) -> Option<MemFlags> {
        if bits == 0 || bits > 64 {
            None
        } else {
            Some(MemFlags(bits as u32))
        }
    }

    /// The address-bits limit, if any.
    pub const fn get_address_bits(self) -> Option<u8> {
        match (self.0 & 0xff) as u8 {
            0 => None,
            b => Some(b),
        }
    }

    /// The raw `mem_flags` word.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// `XENMEMF_exact_node_request`: allocate on the node asked for or fail.
    pub const EXACT_NODE_REQUEST: u32 = 1 << 17;

    /// `XENMEMF_populate_on_demand`: where `XENMEMF_node(255)` spills to.
    pub const POPULATE_ON_DEMAND: u32 = 1 << 16;

    /// Prefer NUMA node `node` (`XENMEMF_node(node)`, `(node + 1) << 8`).
    /// `None` for 255: its field would spill into the populate-on-demand
    /// bit (and 254 is the highest node the byte can name).
    pub const fn node(node: u8) -> Option<MemFlags> {
        if node == u8::MAX {
            None
        } else {
            Some(MemFlags((node as u32 + 1) << 8))
        }
    }

    /// Node `node` and nothing else (`XENMEMF_exact_node(node)`): Xen
    /// refuses an unprivileged caller's request outright, and a privileged
    /// one's for a node it does not have. `None` as for [`MemFlags::node`].
    pub const fn exact_node(node: u8) -> Option<MemFlags> {
        match Self::node(node) {
            Some(f) => Some(MemFlags(f.0 | Self::EXACT_NODE_REQUEST)),
            None => None,
        }
    }

    /// These flags and those of `other` (an address limit with a node).
    pub const fn with(self, other: MemFlags) -> MemFlags {
        MemFlags(self.0 | other.0)
    }

    /// The node asked for (`XENMEMF_get_node`), if any.
    pub const fn get_node(self) -> Option<u8> {
        match (self.0 >> 8) & 0xff {
            0 => None,
            n => Some((n - 1) as u8),
        }
    }

    /// Whether the request is for that node only.
    pub const fn is_exact_node(self) -> bool {
        self.0 & Self::EXACT_NODE_REQUEST != 0
    }
}

/// A `XENMEM_exchange` request: give up `input` extents of `in_order`, get
/// `output` extents of `out_order` populated at the GFNs in `output` (which
/// Xen overwrites with the GMFN bases it allocated).
#[derive(Debug)]
pub struct ExchangeRequest<'a> {
    /// The domain (Xen requires the same on both sides).
    pub dom: DomId,
    /// Order of the extents given up.
    pub in_order: Order,
    /// GFN bases given up.
    pub input: &'a [Gfn],
    /// Order of the extents wanted.
    pub out_order: Order,
    /// IN: GFN bases to populate; OUT: GMFN bases allocated.
    pub output: &'a mut [Gfn],
    /// Flags of the new memory (address bits).
    pub out_flags: MemFlags,
}

/// What `XENMEM_exchange` did: `exchanged` input extents are done (their
/// output extents populated) even when `result` is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// `nr_exchanged`.
    pub exchanged: usize,
    /// The hypercall's return.
    pub result: Result<(), XenError>,
}

/// A per-entry status of a batch (`0` or `-errno`), as Xen writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct XenStatus(pub i32);

impl XenStatus {
    /// `Ok(())` for 0, the named error otherwise.
    pub fn result(self) -> Result<(), XenError> {
        XenError::check(i64::from(self.0)).map(|_| ())
    }
}

/// The most entries one `__HYPERVISOR_multicall` carries
/// ([`Hypervisor::multicall_remove_from_physmap`]). `RealXen` keeps the
/// entries and their argument blocks on the stack: 80 bytes each, 10 KiB.
pub const MULTICALL_MAX: usize = 128;

/// What one multicall did: `reached` entries were carried out (a prefix of
/// the list; each has its own result), even when `result`, the multicall's
/// own return, is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticallOutcome {
    /// Entries Xen carried out, from the first.
    pub reached: usize,
    /// The multicall hypercall's return.
    pub result: Result<(), XenError>,
}

/// Read back a multicall of `calls` (each `result` preset to
/// [`abi::MulticallEntry::NOT_REACHED`]) whose hypercall returned `ret`:
/// Xen writes the results in order as it goes, so the entries reached are
/// those before the first still holding the marker. `results[i]` gets entry
/// `i`'s result for each of them: `Ok` for 0, the error for `-errno`, a
/// contract error for anything else (a sub-call that returns a value is not
/// one of these).
pub fn multicall_results(
    calls: &[abi::MulticallEntry],
    ret: Result<u64, XenError>,
    results: &mut [Result<(), XenError>],
) -> MulticallOutcome {
    let reached = calls
        .iter()
        .position(|c| c.result == abi::MulticallEntry::NOT_REACHED)
        .unwrap_or(calls.len())
        .min(results.len());
    for (c, res) in calls[..reached].iter().zip(results.iter_mut()) {
        *res = match XenError::check(c.result as i64) {
            Ok(0) => Ok(()),
            Ok(_) => Err(XenError::Contract("a multicall entry returned a value")),
            Err(e) => Err(e),
        };
    }
    MulticallOutcome {
        reached,
        result: match ret {
            Ok(0) => Ok(()),
            Ok(_) => Err(XenError::Contract("multicall returned a positive value")),
            Err(e) => Err(e),
        },
    }
}

/// What [`Hypervisor::remove_from_physmap_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoveBatch {
    /// Multicalls issued (a refused one included).
    pub multicalls: usize,
    /// Single `XENMEM_remove_from_physmap` hypercalls: the frames no
    /// multicall reached.
    pub single_calls: usize,
    /// Frames whose removal failed (their results are errors).
    pub failed: usize,
    /// The first error of a multicall itself, if one failed; the frames it
    /// did not reach, and every later one, went one call each.
    pub multicall_error: Option<XenError>,
}

impl RemoveBatch {
    /// Hypercalls made in all.
    pub fn hypercalls(&self) -> usize {
        self.multicalls + self.single_calls
    }
}

/// What `EVTCHNOP_status` says an event channel port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ChannelState {
    /// `EVTCHNSTAT_closed`: free (or reserved, as port 0).
    Closed,
    /// `EVTCHNSTAT_unbound`: offered to `remote`.
    Unbound {
        /// The domain that may bind to it.
        remote: DomId,
    },
    /// `EVTCHNSTAT_interdomain`: connected to `port` of `remote`.
    Interdomain {
        /// The other end's domain.
        remote: DomId,
        /// The other end's port.
        port: u32,
    },
    /// `EVTCHNSTAT_pirq`.
    Pirq(u32),
    /// `EVTCHNSTAT_virq`.
    Virq(u32),
    /// `EVTCHNSTAT_ipi`.
    Ipi,
}

/// `EVTCHNOP_status`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelStatus {
    /// What the port is.
    pub state: ChannelState,
    /// The vCPU it notifies.
    pub vcpu: u32,
}

impl ChannelStatus {
    /// Decode Xen's `struct evtchn_status`; a status Xen does not define is
    /// a contract error.
    pub fn from_abi(s: &abi::EvtchnStatus) -> Result<ChannelStatus, XenError> {
        use abi::evtchnstat as st;
        let state = match s.status {
            st::CLOSED => ChannelState::Closed,
            st::UNBOUND => ChannelState::Unbound {
                remote: DomId(s.u[0] as u16),
            },
            st::INTERDOMAIN => ChannelState::Interdomain {
                remote: DomId(s.u[0] as u16),
                port: s.u[1],
            },
            st::PIRQ => ChannelState::Pirq(s.u[0]),
            st::VIRQ => ChannelState::Virq(s.u[0]),
            st::IPI => ChannelState::Ipi,
            _ => return Err(XenError::Contract("unknown EVTCHNSTAT value")),
        };
        Ok(ChannelStatus {
            state,
            vcpu: s.vcpu,
        })
    }

    /// Xen's `struct evtchn_status` for this answer (for models).
    pub fn to_abi(self, dom: DomId, port: u32) -> abi::EvtchnStatus {
        use abi::evtchnstat as st;
        let (status, u) = match self.state {
            ChannelState::Closed => (st::CLOSED, [0, 0]),
            ChannelState::Unbound { remote } => (st::UNBOUND, [u32::from(remote.0), 0]),
            ChannelState::Interdomain { remote, port } => {
                (st::INTERDOMAIN, [u32::from(remote.0), port])
            }
            ChannelState::Pirq(p) => (st::PIRQ, [p, 0]),
            ChannelState::Virq(v) => (st::VIRQ, [v, 0]),
            ChannelState::Ipi => (st::IPI, [0, 0]),
        };
        abi::EvtchnStatus {
            dom: dom.0,
            port,
            status,
            vcpu: self.vcpu,
            u,
        }
    }
}

/// A ring page the toolstack gave this domain and the event channel that
/// goes with it, named by two HVM parameters (console:
/// `HVM_PARAM_CONSOLE_PFN`/`_EVTCHN`; xenstore: `HVM_PARAM_STORE_PFN`/
/// `_EVTCHN`; the same on x86 and Arm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RingParams {
    /// The ring page's frame.
    pub gfn: Gfn,
    /// The local event channel port to notify.
    pub port: u32,
}

impl RingParams {
    /// The PV console's ring ([`RingParams::read`]).
    pub fn console(hv: &impl Hypervisor) -> Result<Option<RingParams>, XenError> {
        Self::read(
            hv,
            abi::hvm_param::CONSOLE_PFN,
            abi::hvm_param::CONSOLE_EVTCHN,
        )
    }

    /// The xenstore ring ([`RingParams::read`]).
    pub fn xenstore(hv: &impl Hypervisor) -> Result<Option<RingParams>, XenError> {
        Self::read(hv, abi::hvm_param::STORE_PFN, abi::hvm_param::STORE_EVTCHN)
    }

    /// Read the two parameters. `None` when the domain has no such ring (the
    /// frame is 0: dom0, dom0less domUs); an error when Xen refuses them.
    pub fn read(
        hv: &impl Hypervisor,
        pfn: u32,
        evtchn: u32,
    ) -> Result<Option<RingParams>, XenError> {
        Self::from_values(hv.hvm_get_param(pfn)?, hv.hvm_get_param(evtchn)?)
    }

    /// The parameters from the two raw values (see [`RingParams::read`]).
    pub fn from_values(pfn: u64, evtchn: u64) -> Result<Option<RingParams>, XenError> {
        if pfn == 0 {
            return Ok(None);
        }
        let port = u32::try_from(evtchn)
            .map_err(|_| XenError::Contract("event channel beyond 32 bits"))?;
        Ok(Some(RingParams {
            gfn: Gfn(pfn),
            port,
        }))
    }
}

/// The typed operations the agent asks of Xen.
///
/// Implemented by `RealXen` (real hypercalls, bare-metal targets) and by host
/// models in tests.
pub trait Hypervisor {
    /// `XENVER_version` and `XENVER_extraversion`.
    fn version(&self) -> Result<XenVersion, XenError>;
    /// `XENVER_get_features`, submap 0.
    fn features(&self) -> Result<Features, XenError>;
    /// `CONSOLEIO_write` of the whole buffer.
    fn console_write(&self, bytes: &[u8]) -> Result<(), XenError>;
    /// `XENMEM_current_reservation`: pages the domain holds.
    fn current_reservation(&self, dom: DomId) -> Result<PageCount, XenError>;
    /// `XENMEM_maximum_reservation`: the most pages the domain may hold.
    fn maximum_reservation(&self, dom: DomId) -> Result<PageCount, XenError>;
    /// `XENMEM_maximum_gpfn`: the highest GFN the domain has populated.
    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, XenError>;
    /// `XENMEM_memory_map`: the domain's e820, into `buf`; returns the number
    /// of entries written.
    fn memory_map(&self, buf: &mut [abi::E820Entry]) -> Result<usize, XenError>;
    /// `XEN_DOMCTL_getdomaininfo` (privileged callers only).
    fn domain_info(&self, dom: DomId) -> Result<DomainInfo, XenError>;
    /// `SCHEDOP_shutdown`. Returns only if Xen refused.
    fn shutdown(&self, reason: ShutdownReason) -> Result<(), XenError>;
    /// `SCHEDOP_yield`: let other vCPUs run.
    fn yield_cpu(&self) -> Result<(), XenError>;
    /// `HVMOP_get_param` of this domain (`DOMID_SELF`): the value of
    /// `HVM_PARAM_*` `index` (see [`abi::hvm_param`]). A toolstack domU's
    /// console and xenstore rings are named this way on x86 and Arm.
    fn hvm_get_param(&self, index: u32) -> Result<u64, XenError>;
    /// `EVTCHNOP_send`: notify the other end of local event channel `port`.
    fn evtchn_send(&self, port: u32) -> Result<(), XenError>;
    /// The caller's domain id, where Xen's interface tells it (x86: a CPUID
    /// leaf); `None` where it cannot (Arm).
    fn own_domid(&self) -> Option<DomId>;
    /// `EVTCHNOP_alloc_unbound` in the caller's domain: a fresh port that
    /// `remote` (`DOMID_SELF`: the caller itself) may bind to with
    /// [`evtchn_bind_interdomain`](Self::evtchn_bind_interdomain). `remote`
    /// need not exist yet. ENOSPC when the domain's ports are used up.
    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<u32, XenError>;
    /// `EVTCHNOP_bind_interdomain`: connect a fresh local port to
    /// `remote_port` of `remote_dom`, which must be unbound and offered to
    /// the caller (else EINVAL; ESRCH for no such domain). Xen sets the new
    /// local port pending (a notification sent before the bind may be lost).
    /// Returns the local port.
    fn evtchn_bind_interdomain(&self, remote_dom: DomId, remote_port: u32)
        -> Result<u32, XenError>;
    /// `EVTCHNOP_close` of a local port: it becomes free (its pending bit is
    /// cleared); an interdomain peer goes back to unbound, offered to the
    /// caller again. EINVAL for a free or reserved port.
    fn evtchn_close(&self, port: u32) -> Result<(), XenError>;
    /// `EVTCHNOP_unmask`: clear the port's mask bit; if it is pending, Xen
    /// marks the vCPU's upcall pending (a vCPU that never takes upcalls
    /// only sees a spurious wake-up from it).
    fn evtchn_unmask(&self, port: u32) -> Result<(), XenError>;
    /// `EVTCHNOP_status` of `port` of `dom` (`DOMID_SELF` allowed; another
    /// domain needs privilege).
    fn evtchn_status(&self, dom: DomId, port: u32) -> Result<ChannelStatus, XenError>;
    /// `SCHEDOP_poll`: return at once if one of `ports` is pending (EINVAL if
    /// one is not a port in use, or more than 128 are given), otherwise block
    /// the vCPU — no CPU used — until one of them becomes pending, `timeout`
    /// (absolute Xen system time in ns; 0: none) passes, or anything else
    /// wakes it (any event of the domain when polling more than one port).
    /// Waking says nothing about why: look at the pending bits.
    fn sched_poll(&self, ports: &[u32], timeout: u64) -> Result<(), XenError>;

    /// `XENMEM_increase_reservation`: allocate `out.len()` extents of `order`
    /// to `dom` without placing them in its physmap. For a PV guest their MFN
    /// bases are written to `out`; for a translated guest Xen writes nothing,
    /// and the pages, which get no GFN, are lost to it: never use it for PVH
    /// or Arm guests. Returns the number of extents done (a short count is a
    /// partial failure, not an error; so is 0, which also hides bad arguments).
    fn increase_reservation(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        out: &mut [Mfn],
    ) -> Result<usize, XenError>;

    /// `XENMEM_decrease_reservation`: give back the extents of `order` at the
    /// GFN bases in `gfns`. Returns the number of extents done; the pages of a
    /// partly done extent are gone too.
    fn decrease_reservation(
        &self,
        dom: DomId,
        order: Order,
        gfns: &[Gfn],
    ) -> Result<usize, XenError>;

    /// `XENMEM_populate_physmap`: populate extents of `order` at the GFN bases
    /// in `gfns` (overwritten with the GMFN bases Xen allocated: the same GFNs
    /// for a translated guest). Returns the number of extents done.
    fn populate_physmap(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        gfns: &mut [Gfn],
    ) -> Result<usize, XenError>;

    /// `XENMEM_exchange`.
    fn exchange(&self, req: &mut ExchangeRequest<'_>) -> ExchangeOutcome;

    /// `XENMEM_maximum_ram_page`: Xen's `max_page`, one past the highest
    /// machine frame (the number of M2P entries), not a frame itself.
    fn maximum_ram_page(&self) -> Result<Mfn, XenError>;

    /// `XENMEM_machphys_mfn_list`: the machine frames of the M2P table (one
    /// per 2 MiB chunk) into `out`; returns how many were written.
    fn machphys_mfn_list(&self, out: &mut [Mfn]) -> Result<usize, XenError>;

    /// `XENMEM_add_to_physmap_batch` with `XENMAPSPACE_gmfn_foreign`: map
    /// frame `frames[i]` of domain `foreign` (its GFN; for `DOMID_XEN`, an
    /// MFN) at `gfns[i]` of the caller. Each entry's outcome is written to
    /// `errs[i]`; the call's own result is for the whole batch.
    fn map_foreign_batch(
        &self,
        foreign: DomId,
        frames: &[Gfn],
        gfns: &[Gfn],
        errs: &mut [XenStatus],
    ) -> Result<(), XenError>;

    /// `XENMEM_remove_from_physmap` of the caller's frame `gfn`.
    fn remove_from_physmap(&self, gfn: Gfn) -> Result<(), XenError>;

    /// One `__HYPERVISOR_multicall` of a `XENMEM_remove_from_physmap` of
    /// the caller's frame `gfns[i]` per entry, in order (at most
    /// [`MULTICALL_MAX`]; more is E2BIG, a `results` of another length
    /// EINVAL, and nothing is done). Xen carries out every entry whatever
    /// the entries before it returned, and writes each result: `results[i]`
    /// for `i < reached` of the outcome. A multicall Xen refuses or stops
    /// (`EFAULT`) reaches fewer; Xen's own preemption of a long list is
    /// invisible (it re-enters the call where it stopped).
    ///
    /// The default has no multicall: ENOSYS, nothing reached — so that
    /// [`remove_from_physmap_batch`](Self::remove_from_physmap_batch) falls
    /// back to one call per frame.
    fn multicall_remove_from_physmap(
        &self,
        gfns: &[Gfn],
        results: &mut [Result<(), XenError>],
    ) -> MulticallOutcome {
        let _ = (gfns, results);
        MulticallOutcome {
            reached: 0,
            result: Err(XenError::Errno(Errno::ENOSYS)),
        }
    }

    /// `XENMEM_remove_from_physmap` of each of the caller's frames `gfns`,
    /// [`MULTICALL_MAX`] per multicall: `results[i]` is frame `gfns[i]`'s
    /// outcome. Every frame is tried: the entries a multicall did not reach
    /// (Xen refused or stopped it), and all frames after that, go one
    /// `remove_from_physmap` each. `Err` only for a `results` of another
    /// length (EINVAL; nothing done).
    fn remove_from_physmap_batch(
        &self,
        gfns: &[Gfn],
        results: &mut [Result<(), XenError>],
    ) -> Result<RemoveBatch, XenError> {
        if results.len() != gfns.len() {
            return Err(XenError::Errno(Errno::EINVAL));
        }
        let mut out = RemoveBatch::default();
        for (chunk, res) in gfns
            .chunks(MULTICALL_MAX)
            .zip(results.chunks_mut(MULTICALL_MAX))
        {
            let mut reached = 0;
            if out.multicall_error.is_none() {
                out.multicalls += 1;
                let o = self.multicall_remove_from_physmap(chunk, res);
                reached = o.reached.min(chunk.len());
                if let Err(e) = o.result {
                    out.multicall_error = Some(e);
                } else if reached < chunk.len() {
                    out.multicall_error = Some(XenError::Contract("multicall left entries undone"));
                }
            }
            for (g, r) in chunk.iter().zip(res.iter_mut()).skip(reached) {
                out.single_calls += 1;
                *r = self.remove_from_physmap(*g);
            }
        }
        out.failed = results.iter().filter(|r| r.is_err()).count();
        Ok(out)
    }

    /// `XENMEM_add_to_physmap` for the caller: put frame `idx` of map space
    /// `space` (`abi::physmap::SPACE_*`; the agent uses
    /// `SPACE_GRANT_TABLE`, whose index is a grant-table frame, which Xen
    /// grows the table to include up to its maximum) at the caller's `gfn`.
    /// What was at `gfn` goes (RAM is freed or lost): use hole frames.
    fn add_to_physmap(&self, space: u16, idx: u64, gfn: Gfn) -> Result<(), XenError>;

    /// `GNTTABOP_query_size` of `dom`'s grant table (`DOMID_SELF` allowed).
    /// The call's own result is `Ok` even when the operation failed: check
    /// the returned structure's status.
    fn gnttab_query_size(&self, dom: DomId) -> Result<abi::gnttab::QuerySize, XenError>;

    /// `GNTTABOP_map_grant_ref` of every entry of `ops`, in one hypercall.
    /// Xen writes each entry's status, handle and bus address; an `Ok`
    /// says nothing about the entries: check each status. On an `Err`,
    /// entries whose status is still what the caller set were not reached.
    fn gnttab_map(&self, ops: &mut [abi::gnttab::MapGrantRef]) -> Result<(), XenError>;

    /// `GNTTABOP_unmap_grant_ref` of every entry of `ops`, in one
    /// hypercall; each entry's status must be checked.
    fn gnttab_unmap(&self, ops: &mut [abi::gnttab::UnmapGrantRef]) -> Result<(), XenError>;

    /// `GNTTABOP_copy` of every entry of `ops`, in one hypercall; each
    /// entry's status must be checked.
    fn gnttab_copy(&self, ops: &mut [abi::gnttab::GntCopy]) -> Result<(), XenError>;

    /// `XEN_DOMCTL_createdomain` (control domain only): build a domain as
    /// `config` says, paused, with no memory (`max_pages` 0) and no vCPU
    /// structures yet. `domid` 0 (or a reserved id) lets Xen choose; Xen
    /// writes the configuration's OUT fields back (Arm: the GIC version).
    /// Returns the new domain's id.
    fn domctl_createdomain(
        &self,
        domid: DomId,
        config: &mut abi::DomctlCreateDomain,
    ) -> Result<DomId, XenError>;

    /// `XEN_DOMCTL_max_mem`: set `dom`'s `max_pages` to `max_kib / 4`
    /// (clamped to 32 bits). It may go below what the domain holds.
    fn domctl_max_mem(&self, dom: DomId, max_kib: u64) -> Result<(), XenError>;

    /// `XEN_DOMCTL_destroydomain`: kill `dom` (never the caller). Xen frees
    /// its memory; the domain itself goes once nothing refers to its pages
    /// any more (until then it is a dying zombie). Destroying a dying domain
    /// again returns `Ok`.
    fn domctl_destroydomain(&self, dom: DomId) -> Result<(), XenError>;

    /// `XENMEM_acquire_resource` with `nr_frames = 0` and a NULL
    /// `frame_list`: the size in frames of resource `kind`/`id` of `dom`.
    fn acquire_resource_size(&self, dom: DomId, kind: u16, id: u32) -> Result<u32, XenError>;

    /// `XENMEM_acquire_resource`: map frames `frame..frame + gfns.len()` of
    /// resource `kind`/`id` of `dom` at the caller's `gfns` (a translated
    /// caller; a PV caller gets MFNs written back). On an error some entries
    /// may be mapped (`-EIO`: those before the failing one) and must be
    /// removed by the caller.
    fn acquire_resource(
        &self,
        dom: DomId,
        kind: u16,
        id: u32,
        frame: u64,
        gfns: &mut [Gfn],
    ) -> Result<(), XenError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_returns_become_named_errors() {
        assert_eq!(XenError::check(0), Ok(0));
        assert_eq!(XenError::check(42), Ok(42));
        assert_eq!(XenError::check(-38), Err(XenError::Errno(Errno::ENOSYS)));
        assert_eq!(
            XenError::check(-95),
            Err(XenError::Errno(Errno::EOPNOTSUPP))
        );
        assert_eq!(XenError::check(-1000), Err(XenError::Unknown(-1000)));
        assert_eq!(XenError::check(i64::MIN), Err(XenError::Unknown(i64::MIN)));
        assert_eq!(
            XenError::Errno(Errno::EPERM).to_string(),
            "EPERM (Operation not permitted)"
        );
    }

    #[test]
    fn multicall_results_are_read_entry_by_entry() {
        let entry = |result: u64| abi::MulticallEntry {
            result,
            ..Default::default()
        };
        let enoent = (-2i64) as u64;
        let not = abi::MulticallEntry::NOT_REACHED;
        let mut r = [Ok(()); 5];
        // All reached; entry 1 refused, entry 3 a value no remove returns.
        let calls = [entry(0), entry(enoent), entry(0), entry(7), entry(0)];
        let o = multicall_results(&calls, Ok(0), &mut r);
        assert_eq!(
            o,
            MulticallOutcome {
                reached: 5,
                result: Ok(())
            }
        );
        assert_eq!(r[1], Err(XenError::Errno(Errno::ENOENT)));
        assert!(matches!(r[3], Err(XenError::Contract(_))));
        assert!(r[0].is_ok() && r[2].is_ok() && r[4].is_ok());
        // Stopped after two: the rest untouched, the call's error kept.
        let mut r = [Err(XenError::Unknown(-1)); 5];
        let calls = [entry(0), entry(enoent), entry(not), entry(not), entry(not)];
        let o = multicall_results(&calls, Err(XenError::Errno(Errno::EFAULT)), &mut r);
        assert_eq!(o.reached, 2);
        assert_eq!(o.result, Err(XenError::Errno(Errno::EFAULT)));
        assert_eq!(r[..2], [Ok(()), Err(XenError::Errno(Errno::ENOENT))]);
        assert!(r[2..].iter().all(|r| *r == Err(XenError::Unknown(-1))));
        // Refused whole.
        let calls = [entry(not); 5];
        assert_eq!(
            multicall_results(&calls, Err(XenError::Errno(Errno::ENOSYS)), &mut r).reached,
            0
        );
        // A positive return of the multicall itself is Xen's breach.
        let calls = [entry(0); 5];
        assert!(matches!(
            multicall_results(&calls, Ok(1), &mut r).result,
            Err(XenError::Contract(_))
        ));
    }

    #[test]
    fn node_flags_are_xens_encoding() {
        // XENMEMF_node(n) = (n + 1) << 8; exact adds bit 17.
        assert_eq!(MemFlags::node(0).unwrap().raw(), 0x100);
        assert_eq!(MemFlags::node(63).unwrap().raw(), 0x4000);
        assert_eq!(MemFlags::node(254).unwrap().raw(), 0xff00);
        assert_eq!(MemFlags::node(255), None);
        assert_eq!(MemFlags::exact_node(255), None);
        let f = MemFlags::exact_node(1).unwrap();
        assert_eq!(f.raw(), 0x200 | (1 << 17));
        assert_eq!((f.get_node(), f.is_exact_node()), (Some(1), true));
        assert_eq!(MemFlags::NONE.get_node(), None);
        assert!(!MemFlags::node(7).unwrap().is_exact_node());
        // No node value reaches the populate-on-demand bit.
        for n in 0..255 {
            let f = MemFlags::exact_node(n).unwrap();
            assert_eq!(f.raw() & MemFlags::POPULATE_ON_DEMAND, 0, "{n}");
            assert_eq!(f.get_node(), Some(n));
        }
        let both = MemFlags::address_bits(32)
            .unwrap()
            .with(MemFlags::node(2).unwrap());
        assert_eq!(
            (both.get_address_bits(), both.get_node()),
            (Some(32), Some(2))
        );
    }

    #[test]
    fn extra_version_text() {
        let mut extra = [0u8; abi::XEN_EXTRAVERSION_LEN];
        extra[..2].copy_from_slice(b".7");
        let v = XenVersion {
            major: 4,
            minor: 17,
            extra,
        };
        assert_eq!(v.extra_str(), ".7");
    }
}
