//! Typed hypercalls over the architecture's instruction (bare-metal targets;
//! on a host build every hypercall fails with `ENOSYS`, so that the types and
//! their signatures are the same everywhere).

use super::abi::{
    self, op, physmap, xenmem, xenver, Domctl, GuestHandle, MulticallEntry, XenAddToPhysmapBatch,
    XenFeatureInfo, XenMachphysMfnList, XenMemoryExchange, XenMemoryMap, XenMemoryReservation,
    XenRemoveFromPhysmap,
};
use super::{
    ChannelStatus, DomainInfo, ExchangeOutcome, ExchangeRequest, Features, Hypervisor, MemFlags,
    MulticallOutcome, ShutdownReason, XenError, XenStatus, XenVersion, MULTICALL_MAX,
};
use crate::addr::{DomId, Gfn, Mfn, Order, PageCount};
#[cfg(target_os = "none")]
use crate::arch::imp::hypercall::raw;

/// A host build has no hypervisor: every hypercall fails with `ENOSYS`.
///
/// # Safety
/// None needed (nothing is read or written); `unsafe` to match the target's.
#[cfg(not(target_os = "none"))]
unsafe fn raw(_op: usize, _args: [usize; 5]) -> isize {
    -(super::Errno::ENOSYS as isize)
}

/// Issue hypercall `op` with up to five arguments and classify its return.
///
/// # Safety
/// Every pointer among `args` must be valid for what Xen reads and writes
/// through it for the whole call.
unsafe fn call(op: usize, args: [usize; 5]) -> Result<u64, XenError> {
    // SAFETY: forwarded from the caller.
    let ret = unsafe { raw(op, args) };
    XenError::check(ret as i64)
}

/// Write `bytes` to Xen's console (`CONSOLEIO_write`), in as many calls as
/// Xen needs.
pub fn console_write(mut bytes: &[u8]) -> Result<(), XenError> {
    while !bytes.is_empty() {
        // SAFETY: Xen reads `len` bytes from a live buffer.
        let n = unsafe {
            call(
                op::CONSOLE_IO,
                [
                    abi::CONSOLEIO_WRITE,
                    bytes.len(),
                    bytes.as_ptr() as usize,
                    0,
                    0,
                ],
            )
        }?;
        // Xen 4.17 returns 0 once it has written everything (older versions
        // returned the count); treat 0 and anything out of range as "all".
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 || n >= bytes.len() {
            break;
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Read what has arrived on Xen's serial input for this domain
/// (`CONSOLEIO_read`) into `buf`; returns how many bytes were read, 0 if none.
///
/// Only the hardware domain may read (others get `EPERM`); Xen gives it the
/// characters typed while serial input is switched to it (`CTRL-a` three
/// times rotates input among Xen, dom0 and the boot-time domUs).
pub fn console_read(buf: &mut [u8]) -> Result<usize, XenError> {
    let len = buf.len().min(i32::MAX as usize);
    // SAFETY: Xen writes at most `len` bytes into a live buffer of that size.
    let n = unsafe {
        call(
            op::CONSOLE_IO,
            [abi::CONSOLEIO_READ, len, buf.as_mut_ptr() as usize, 0, 0],
        )
    }?;
    Ok(usize::try_from(n).unwrap_or(0).min(len))
}

/// `HVMOP_get_param` of `index` for this domain. A free function (as
/// [`console_write`]) so that the logger can find its console ring without a
/// [`RealXen`].
pub fn hvm_get_param(index: u32) -> Result<u64, XenError> {
    let mut p = abi::HvmParam {
        domid: DomId::SELF.raw(),
        index,
        value: 0,
    };
    // SAFETY: Xen reads and writes one xen_hvm_param in a live local.
    unsafe {
        call(
            op::HVM_OP,
            [abi::HVMOP_GET_PARAM, &mut p as *mut _ as usize, 0, 0, 0],
        )
    }?;
    Ok(p.value)
}

/// `EVTCHNOP_send` on local `port`.
pub fn evtchn_send(port: u32) -> Result<(), XenError> {
    let mut s = abi::EvtchnSend { port };
    // SAFETY: Xen reads one evtchn_send from a live local.
    unsafe {
        call(
            op::EVENT_CHANNEL_OP,
            [abi::EVTCHNOP_SEND, &mut s as *mut _ as usize, 0, 0, 0],
        )
    }?;
    Ok(())
}

/// The real hypervisor: every operation is a hypercall.
///
/// It is the capability to change what this domain's memory is: give frames
/// back ([`Hypervisor::decrease_reservation`]), change the physmap
/// ([`Hypervisor::add_to_physmap`], [`Hypervisor::remove_from_physmap`]),
/// map grants over frames ([`Hypervisor::gnttab_map`]). Those methods are
/// safe to call on a `RealXen` only because making one is not: see
/// [`RealXen::new`]. (A model of Xen implements the same trait safely: its
/// memory is not the program's.)
#[derive(Debug)]
pub struct RealXen(());

impl RealXen {
    /// The hypervisor this code runs on.
    ///
    /// # Safety
    ///
    /// The caller runs as a Xen guest whose hypercall interface is set up
    /// (x86: [`crate::arch`]'s hypercall init has run), and vouches for every
    /// use of the value, and of every copy of it, for as long as any lives:
    /// no frame it gives back, no physmap slot it replaces or removes, no
    /// frame a grant or foreign mapping goes over is memory that the program
    /// (its image, stacks, heap, live references) or a mapping it holds
    /// still uses. The library's own operations keep that promise for the
    /// caller as long as the region tables handed to them record every byte
    /// the program uses as something other than free RAM or a hole.
    ///
    /// Calling it outside `unsafe` does not compile:
    ///
    /// ```compile_fail
    /// let hv = xenmem::xen::RealXen::new();
    /// ```
    /// ```
    /// // SAFETY: (a host build: every hypercall fails with ENOSYS.)
    /// let hv = unsafe { xenmem::xen::RealXen::new() };
    /// ```
    pub const unsafe fn new() -> Self {
        RealXen(())
    }

    fn domid_query(cmd: usize, dom: DomId) -> Result<u64, XenError> {
        let mut d = dom.raw();
        // SAFETY: Xen reads one domid_t from a live local.
        unsafe { call(op::MEMORY_OP, [cmd, &mut d as *mut u16 as usize, 0, 0, 0]) }
    }
}

impl Hypervisor for RealXen {
    fn version(&self) -> Result<XenVersion, XenError> {
        // SAFETY: XENVER_version takes no buffer.
        let v = unsafe { call(op::XEN_VERSION, [xenver::VERSION, 0, 0, 0, 0]) }?;
        let mut extra = [0u8; abi::XEN_EXTRAVERSION_LEN];
        // SAFETY: Xen writes exactly XEN_EXTRAVERSION_LEN bytes.
        unsafe {
            call(
                op::XEN_VERSION,
                [xenver::EXTRAVERSION, extra.as_mut_ptr() as usize, 0, 0, 0],
            )
        }?;
        Ok(XenVersion {
            major: (v >> 16) as u16,
            minor: v as u16,
            extra,
        })
    }

    fn features(&self) -> Result<Features, XenError> {
        let mut fi = XenFeatureInfo::default();
        // SAFETY: Xen fills one xen_feature_info in a live local.
        unsafe {
            call(
                op::XEN_VERSION,
                [xenver::GET_FEATURES, &mut fi as *mut _ as usize, 0, 0, 0],
            )
        }?;
        Ok(Features::from_bits_retain(fi.submap))
    }

    fn console_write(&self, bytes: &[u8]) -> Result<(), XenError> {
        console_write(bytes)
    }

    fn current_reservation(&self, dom: DomId) -> Result<PageCount, XenError> {
        Self::domid_query(xenmem::CURRENT_RESERVATION, dom).map(PageCount)
    }

    fn maximum_reservation(&self, dom: DomId) -> Result<PageCount, XenError> {
        Self::domid_query(xenmem::MAXIMUM_RESERVATION, dom).map(PageCount)
    }

    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, XenError> {
        Self::domid_query(xenmem::MAXIMUM_GPFN, dom).map(Gfn)
    }

    fn memory_map(&self, buf: &mut [abi::E820Entry]) -> Result<usize, XenError> {
        let cap = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let mut map = XenMemoryMap {
            nr_entries: cap,
            buffer: GuestHandle::from_slice(buf),
        };
        // SAFETY: Xen writes at most `nr_entries` entries into `buf`.
        unsafe {
            call(
                op::MEMORY_OP,
                [xenmem::MEMORY_MAP, &mut map as *mut _ as usize, 0, 0, 0],
            )
        }?;
        if map.nr_entries > cap {
            return Err(XenError::Contract(
                "memory_map wrote more entries than asked",
            ));
        }
        Ok(map.nr_entries as usize)
    }

    fn domain_info(&self, dom: DomId) -> Result<DomainInfo, XenError> {
        let mut d = Domctl::new(abi::XEN_DOMCTL_GETDOMAININFO, dom.raw());
        // SAFETY: Xen reads and writes one xen_domctl in a live local.
        unsafe { call(op::DOMCTL, [&mut d as *mut _ as usize, 0, 0, 0, 0]) }?;
        // SAFETY: getdomaininfo fills the union's getdomaininfo member.
        let info = unsafe { d.u.getdomaininfo };
        if info.domain != dom.raw() {
            // getdomaininfo answers for the first domain at or above the one
            // asked for: another domid means ours does not exist.
            return Err(XenError::Errno(super::Errno::ESRCH));
        }
        let shutdown = (info.flags & abi::XEN_DOMINF_SHUTDOWN != 0).then_some(
            (info.flags >> abi::XEN_DOMINF_SHUTDOWNSHIFT) & abi::XEN_DOMINF_SHUTDOWNMASK,
        );
        Ok(DomainInfo {
            domid: dom,
            tot_pages: PageCount(info.tot_pages),
            max_pages: PageCount(info.max_pages),
            shutdown,
            dying: info.flags & abi::XEN_DOMINF_DYING != 0,
        })
    }

    fn shutdown(&self, reason: ShutdownReason) -> Result<(), XenError> {
        let mut s = abi::SchedShutdown {
            reason: reason.code(),
        };
        // SAFETY: Xen reads one sched_shutdown from a live local.
        unsafe {
            call(
                op::SCHED_OP,
                [abi::SCHEDOP_SHUTDOWN, &mut s as *mut _ as usize, 0, 0, 0],
            )
        }?;
        Ok(())
    }

    fn yield_cpu(&self) -> Result<(), XenError> {
        // SAFETY: SCHEDOP_yield takes no argument.
        unsafe { call(op::SCHED_OP, [abi::SCHEDOP_YIELD, 0, 0, 0, 0]) }?;
        Ok(())
    }

    fn hvm_get_param(&self, index: u32) -> Result<u64, XenError> {
        hvm_get_param(index)
    }

    fn evtchn_send(&self, port: u32) -> Result<(), XenError> {
        evtchn_send(port)
    }

    fn own_domid(&self) -> Option<DomId> {
        #[cfg(target_os = "none")]
        return crate::arch::imp::own_domid();
        #[cfg(not(target_os = "none"))]
        None
    }

    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<u32, XenError> {
        let mut a = abi::EvtchnAllocUnbound {
            dom: DomId::SELF.raw(),
            remote_dom: remote.raw(),
            port: 0,
        };
        // SAFETY: Xen reads and writes one evtchn_alloc_unbound in a live local.
        unsafe { evtchn_op(abi::EVTCHNOP_ALLOC_UNBOUND, &mut a) }?;
        Ok(a.port)
    }

    fn evtchn_bind_interdomain(
        &self,
        remote_dom: DomId,
        remote_port: u32,
    ) -> Result<u32, XenError> {
        let mut b = abi::EvtchnBindInterdomain {
            remote_dom: remote_dom.raw(),
            remote_port,
            local_port: 0,
        };
        // SAFETY: Xen reads and writes one evtchn_bind_interdomain in a live
        // local.
        unsafe { evtchn_op(abi::EVTCHNOP_BIND_INTERDOMAIN, &mut b) }?;
        Ok(b.local_port)
    }

    fn evtchn_close(&self, port: u32) -> Result<(), XenError> {
        let mut c = abi::EvtchnPort { port };
        // SAFETY: Xen reads one evtchn_close from a live local.
        unsafe { evtchn_op(abi::EVTCHNOP_CLOSE, &mut c) }
    }

    fn evtchn_unmask(&self, port: u32) -> Result<(), XenError> {
        let mut u = abi::EvtchnPort { port };
        // SAFETY: Xen reads one evtchn_unmask from a live local.
        unsafe { evtchn_op(abi::EVTCHNOP_UNMASK, &mut u) }
    }

    fn evtchn_status(&self, dom: DomId, port: u32) -> Result<ChannelStatus, XenError> {
        let mut st = abi::EvtchnStatus {
            dom: dom.raw(),
            port,
            ..Default::default()
        };
        // SAFETY: Xen reads and writes one evtchn_status in a live local.
        unsafe { evtchn_op(abi::EVTCHNOP_STATUS, &mut st) }?;
        ChannelStatus::from_abi(&st)
    }

    fn sched_poll(&self, ports: &[u32], timeout: u64) -> Result<(), XenError> {
        if ports.len() > abi::SCHED_POLL_MAX_PORTS {
            return Err(XenError::Errno(super::Errno::EINVAL));
        }
        let mut p = abi::SchedPoll {
            ports: GuestHandle::from_ref(ports),
            nr_ports: ports.len() as u32,
            timeout,
        };
        // SAFETY: Xen reads one sched_poll from a live local and
        // `nr_ports` ports from a live slice of that length.
        unsafe {
            call(
                op::SCHED_OP,
                [abi::SCHEDOP_POLL, &mut p as *mut _ as usize, 0, 0, 0],
            )
        }?;
        Ok(())
    }

    fn increase_reservation(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        out: &mut [Mfn],
    ) -> Result<usize, XenError> {
        let handle = GuestHandle::from_slice(out).cast();
        reservation_op(
            xenmem::INCREASE_RESERVATION,
            dom,
            order,
            flags,
            handle,
            out.len(),
        )
    }

    fn decrease_reservation(
        &self,
        dom: DomId,
        order: Order,
        gfns: &[Gfn],
    ) -> Result<usize, XenError> {
        let handle = GuestHandle::from_ref(gfns).cast();
        reservation_op(
            xenmem::DECREASE_RESERVATION,
            dom,
            order,
            MemFlags::NONE,
            handle,
            gfns.len(),
        )
    }

    fn populate_physmap(
        &self,
        dom: DomId,
        order: Order,
        flags: MemFlags,
        gfns: &mut [Gfn],
    ) -> Result<usize, XenError> {
        let handle = GuestHandle::from_slice(gfns).cast();
        reservation_op(
            xenmem::POPULATE_PHYSMAP,
            dom,
            order,
            flags,
            handle,
            gfns.len(),
        )
    }

    fn maximum_ram_page(&self) -> Result<Mfn, XenError> {
        maximum_ram_page()
    }

    fn machphys_mfn_list(&self, out: &mut [Mfn]) -> Result<usize, XenError> {
        let cap = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let mut l = XenMachphysMfnList {
            max_extents: cap,
            extent_start: GuestHandle::from_slice(out).cast(),
            nr_extents: 0,
        };
        Self::physmap(physmap::MACHPHYS_MFN_LIST, &mut l)?;
        if l.nr_extents > cap {
            return Err(XenError::Contract(
                "machphys_mfn_list wrote more than asked",
            ));
        }
        Ok(l.nr_extents as usize)
    }

    fn map_foreign_batch(
        &self,
        foreign: DomId,
        frames: &[Gfn],
        gfns: &[Gfn],
        errs: &mut [XenStatus],
    ) -> Result<(), XenError> {
        let n = frames.len();
        if gfns.len() != n || errs.len() != n {
            return Err(XenError::Errno(super::Errno::EINVAL));
        }
        let size = u16::try_from(n).map_err(|_| XenError::Errno(super::Errno::E2BIG))?;
        let mut b = XenAddToPhysmapBatch {
            domid: DomId::SELF.raw(),
            space: physmap::SPACE_GMFN_FOREIGN,
            size,
            foreign_domid: foreign.raw(),
            idxs: GuestHandle::from_ref(frames).cast(),
            gpfns: GuestHandle::from_ref(gfns).cast(),
            errs: GuestHandle::from_slice(errs).cast(),
        };
        Self::physmap(physmap::ADD_TO_PHYSMAP_BATCH, &mut b).map(|_| ())
    }

    fn remove_from_physmap(&self, gfn: Gfn) -> Result<(), XenError> {
        let mut r = XenRemoveFromPhysmap {
            domid: DomId::SELF.raw(),
            gpfn: gfn.0,
        };
        Self::physmap(physmap::REMOVE_FROM_PHYSMAP, &mut r).map(|_| ())
    }

    fn multicall_remove_from_physmap(
        &self,
        gfns: &[Gfn],
        results: &mut [Result<(), XenError>],
    ) -> MulticallOutcome {
        let refuse = |e| MulticallOutcome {
            reached: 0,
            result: Err(XenError::Errno(e)),
        };
        let n = gfns.len();
        if results.len() != n {
            return refuse(super::Errno::EINVAL);
        }
        if n > MULTICALL_MAX {
            return refuse(super::Errno::E2BIG);
        }
        // The argument blocks and the entries pointing at them live here
        // for the whole call (Xen reads each block while it carries out
        // its entry, possibly after a continuation).
        let mut args = [XenRemoveFromPhysmap::default(); MULTICALL_MAX];
        let mut calls = [MulticallEntry::default(); MULTICALL_MAX];
        for ((g, a), c) in gfns.iter().zip(args.iter_mut()).zip(calls.iter_mut()) {
            *a = XenRemoveFromPhysmap {
                domid: DomId::SELF.raw(),
                gpfn: g.0,
            };
            *c = MulticallEntry {
                op: op::MEMORY_OP as u64,
                result: MulticallEntry::NOT_REACHED,
                args: [
                    physmap::REMOVE_FROM_PHYSMAP as u64,
                    a as *mut XenRemoveFromPhysmap as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            };
        }
        // SAFETY: Xen reads and writes `n` entries of `calls`, a live local
        // array, and through each entry reads one xen_remove_from_physmap
        // of `args`, also live and not otherwise borrowed until the call
        // returns. Removing a foreign or hole frame from the physmap touches
        // no memory Rust uses (the callers unmap such frames first).
        let r = unsafe { call(op::MULTICALL, [calls.as_mut_ptr() as usize, n, 0, 0, 0]) };
        super::multicall_results(&calls[..n], r, results)
    }

    fn exchange(&self, req: &mut ExchangeRequest<'_>) -> ExchangeOutcome {
        let reservation =
            |h: GuestHandle<u64>, n: usize, order: Order, flags: MemFlags| XenMemoryReservation {
                extent_start: h,
                nr_extents: n as u64,
                extent_order: u32::from(order.get()),
                mem_flags: flags.raw(),
                domid: req.dom.raw(),
            };
        let mut x = XenMemoryExchange {
            input: reservation(
                GuestHandle::from_ref(req.input).cast(),
                req.input.len(),
                req.in_order,
                MemFlags::NONE,
            ),
            output: reservation(
                GuestHandle::from_slice(req.output).cast(),
                req.output.len(),
                req.out_order,
                req.out_flags,
            ),
            // memory.h: "THIS FIELD MUST BE INITIALISED TO ZERO BY THE CALLER!"
            nr_exchanged: 0,
        };
        // SAFETY: Xen reads `input` and reads and writes `output`, both live
        // slices of the lengths given, and the exchange struct, a live local.
        let r = unsafe {
            call(
                op::MEMORY_OP,
                [abi::XENMEM_EXCHANGE, &mut x as *mut _ as usize, 0, 0, 0],
            )
        };
        ExchangeOutcome {
            exchanged: usize::try_from(x.nr_exchanged)
                .unwrap_or(usize::MAX)
                .min(req.input.len()),
            result: r.map(|_| ()),
        }
    }

    fn add_to_physmap(&self, space: u16, idx: u64, gfn: Gfn) -> Result<(), XenError> {
        let mut a = abi::XenAddToPhysmap {
            domid: DomId::SELF.raw(),
            size: 0,
            space: u32::from(space),
            idx,
            gpfn: gfn.0,
        };
        Self::physmap(physmap::ADD_TO_PHYSMAP, &mut a).map(|_| ())
    }

    fn gnttab_query_size(&self, dom: DomId) -> Result<abi::gnttab::QuerySize, XenError> {
        let mut q = abi::gnttab::QuerySize {
            dom: dom.raw(),
            status: abi::gnttab::STATUS_NOT_DONE,
            ..Default::default()
        };
        // SAFETY: Xen reads and writes one gnttab_query_size in a live local.
        unsafe { grant_table_op(abi::gnttab::QUERY_SIZE, &mut q as *mut _ as usize, 1) }?;
        Ok(q)
    }

    fn gnttab_map(&self, ops: &mut [abi::gnttab::MapGrantRef]) -> Result<(), XenError> {
        // SAFETY: Xen reads and writes `ops.len()` entries of a live slice.
        unsafe {
            grant_table_op(
                abi::gnttab::MAP_GRANT_REF,
                ops.as_mut_ptr() as usize,
                ops.len(),
            )
        }
    }

    fn gnttab_unmap(&self, ops: &mut [abi::gnttab::UnmapGrantRef]) -> Result<(), XenError> {
        // SAFETY: Xen reads and writes `ops.len()` entries of a live slice.
        unsafe {
            grant_table_op(
                abi::gnttab::UNMAP_GRANT_REF,
                ops.as_mut_ptr() as usize,
                ops.len(),
            )
        }
    }

    fn gnttab_copy(&self, ops: &mut [abi::gnttab::GntCopy]) -> Result<(), XenError> {
        // SAFETY: Xen reads and writes `ops.len()` entries of a live slice.
        unsafe { grant_table_op(abi::gnttab::COPY, ops.as_mut_ptr() as usize, ops.len()) }
    }

    fn domctl_createdomain(
        &self,
        domid: DomId,
        config: &mut abi::DomctlCreateDomain,
    ) -> Result<DomId, XenError> {
        let mut d = abi::DomctlOf::new(abi::XEN_DOMCTL_CREATEDOMAIN, domid.raw(), *config);
        domctl_call(&mut d)?;
        // SAFETY: createdomain copies the whole domctl back, the union's
        // createdomain member included (a plain-data structure).
        *config = unsafe { d.u.op };
        if d.domain == 0 || d.domain >= DomId::SELF.raw() {
            return Err(XenError::Contract("createdomain gave a reserved domid"));
        }
        Ok(DomId(d.domain))
    }

    fn domctl_max_mem(&self, dom: DomId, max_kib: u64) -> Result<(), XenError> {
        let mut d = abi::DomctlOf::new(
            abi::XEN_DOMCTL_MAX_MEM,
            dom.raw(),
            abi::DomctlMaxMem { max_memkb: max_kib },
        );
        domctl_call(&mut d)
    }

    fn domctl_destroydomain(&self, dom: DomId) -> Result<(), XenError> {
        let mut d = abi::DomctlOf::new(abi::XEN_DOMCTL_DESTROYDOMAIN, dom.raw(), ());
        domctl_call(&mut d)
    }

    fn acquire_resource_size(&self, dom: DomId, kind: u16, id: u32) -> Result<u32, XenError> {
        let mut r = abi::XenMemAcquireResource {
            domid: dom.raw(),
            kind,
            id,
            nr_frames: 0,
            pad: 0,
            frame: 0,
            frame_list: GuestHandle::null(),
        };
        Self::physmap(physmap::ACQUIRE_RESOURCE, &mut r)?;
        Ok(r.nr_frames)
    }

    fn acquire_resource(
        &self,
        dom: DomId,
        kind: u16,
        id: u32,
        frame: u64,
        gfns: &mut [Gfn],
    ) -> Result<(), XenError> {
        let nr_frames =
            u32::try_from(gfns.len()).map_err(|_| XenError::Errno(super::Errno::EINVAL))?;
        let mut r = abi::XenMemAcquireResource {
            domid: dom.raw(),
            kind,
            id,
            nr_frames,
            pad: 0,
            frame,
            frame_list: GuestHandle::from_slice(gfns).cast(),
        };
        Self::physmap(physmap::ACQUIRE_RESOURCE, &mut r).map(|_| ())
    }
}

/// One `__HYPERVISOR_event_channel_op` of `cmd` with its argument `arg`.
///
/// # Safety
/// `T` must be the argument structure of `cmd` (Xen reads and writes that
/// many bytes at `arg`).
unsafe fn evtchn_op<T>(cmd: usize, arg: &mut T) -> Result<(), XenError> {
    // SAFETY: `arg` is live and exclusively borrowed for the call; its type
    // is `cmd`'s (the caller's contract).
    unsafe { call(op::EVENT_CHANNEL_OP, [cmd, arg as *mut T as usize, 0, 0, 0]) }?;
    Ok(())
}

/// One `__HYPERVISOR_domctl` with a live [`abi::DomctlOf`]; Xen reads and
/// writes the whole 144-byte structure.
fn domctl_call<T: Copy>(d: &mut abi::DomctlOf<T>) -> Result<(), XenError> {
    // SAFETY: `d` is a live, exclusively borrowed xen_domctl of the size Xen
    // copies in and out; its payloads hold no guest handles.
    unsafe {
        call(
            op::DOMCTL,
            [d as *mut abi::DomctlOf<T> as usize, 0, 0, 0, 0],
        )
    }?;
    Ok(())
}

/// One `__HYPERVISOR_grant_table_op` call of `count` operations at `ptr`.
/// Xen continues long batches itself (the guest sees one call); a positive
/// return would be a continuation count a guest never sees.
///
/// # Safety
/// `ptr` must point to `count` live operation structures of `cmd`'s type
/// that Xen may read and write for the whole call.
unsafe fn grant_table_op(cmd: usize, ptr: usize, count: usize) -> Result<(), XenError> {
    let count = u32::try_from(count)
        .ok()
        .filter(|&c| c <= i32::MAX as u32)
        .ok_or(XenError::Errno(super::Errno::EINVAL))?;
    // SAFETY: forwarded from the caller.
    let r = unsafe { call(op::GRANT_TABLE_OP, [cmd, ptr, count as usize, 0, 0]) }?;
    if r != 0 {
        return Err(XenError::Contract(
            "grant_table_op returned a positive count",
        ));
    }
    Ok(())
}

impl RealXen {
    fn physmap<T>(cmd: usize, arg: &mut T) -> Result<u64, XenError> {
        // SAFETY: Xen reads and writes one live argument structure; handles
        // inside it are set up by the callers below for live buffers.
        unsafe { call(op::MEMORY_OP, [cmd, arg as *mut T as usize, 0, 0, 0]) }
    }
}

/// Physmap operations (part of the `Hypervisor` implementation, kept apart
/// for legibility).
pub(super) fn maximum_ram_page() -> Result<Mfn, XenError> {
    // SAFETY: XENMEM_maximum_ram_page takes no argument.
    unsafe { call(op::MEMORY_OP, [physmap::MAXIMUM_RAM_PAGE, 0, 0, 0, 0]) }.map(Mfn)
}

/// One `XENMEM_{increase,decrease}_reservation` or `populate_physmap` call.
fn reservation_op(
    cmd: usize,
    dom: DomId,
    order: Order,
    flags: MemFlags,
    extents: GuestHandle<u64>,
    n: usize,
) -> Result<usize, XenError> {
    let mut r = XenMemoryReservation {
        extent_start: extents,
        nr_extents: n as u64,
        extent_order: u32::from(order.get()),
        mem_flags: flags.raw(),
        domid: dom.raw(),
    };
    // SAFETY: the caller passes a handle to a live list of `n` xen_pfn_t that
    // Xen may read and (for increase and populate) write.
    let done = unsafe { call(op::MEMORY_OP, [cmd, &mut r as *mut _ as usize, 0, 0, 0]) }?;
    let done = usize::try_from(done).unwrap_or(usize::MAX);
    if done > n {
        return Err(XenError::Contract("more extents done than asked"));
    }
    Ok(done)
}
