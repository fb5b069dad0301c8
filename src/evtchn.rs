//! Event channels: sending, and waiting for events without burning CPU.
//!
//! An event channel port is one bit of state in two bitmaps of the domain's
//! `shared_info` page (the 2-level ABI, which every Xen guest starts with):
//! `evtchn_pending`, set by Xen when the other end sends (and cleared by the
//! guest), and `evtchn_mask`, set by the guest to keep the event from being
//! delivered as an upcall. [`EventChannels`] works on a mapped shared_info
//! page in the layout of its architecture ([`SharedInfoLayout`]: x86_64 and
//! Arm differ in where the bitmaps sit).
//!
//! # Waiting
//!
//! The agent never takes an upcall: its interrupts stay off, and it masks the
//! ports it uses. It waits in [`EventChannels::wait`]: take (test-and-clear)
//! whichever of its ports are pending; if none is, block the vCPU in
//! `SCHEDOP_poll` on them. Xen checks the pending bits itself before it
//! blocks (an event that came after our look is not lost) and wakes the vCPU
//! when one of them becomes pending — masked or not — or at the timeout. A
//! wake-up says nothing about why (a poll of several ports wakes on *any*
//! event of the domain; the timeout; an unmasked port's upcall kick), so the
//! bits are looked at again and a wake-up that found nothing is spurious:
//! poll again, within the caller's [`WaitLimit`].
//!
//! # Time
//!
//! `SCHEDOP_poll`'s timeout is an absolute Xen system time (ns since Xen
//! booted; 0: none). On x86 Xen keeps the time in `vcpu_info[0].time` of
//! shared_info ([`EventChannels::vcpu0_time`] and [`xen_time_at`] with the
//! TSC). On Arm Xen 4.17 writes no time there (`update_vcpu_system_time` is
//! empty); Xen's system time is the physical counter since Xen's boot, the
//! guest's virtual counter counts from the domain's creation, so a deadline
//! computed from the virtual counter is at or before the one meant: it ends
//! a wait early, never late. Without a clock the caller bounds a wait with
//! a number of polls.
//!
//! # Setting up shared_info
//!
//! See [`map_shared_info`] for what the caller does before
//! [`EventChannels::new`].

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::Gfn;
use crate::xen::abi::{
    physmap, SharedInfoLayout, SharedInfoPage, VcpuTimeInfo, EVTCHN_2L_NR_CHANNELS,
    SCHED_POLL_MAX_PORTS,
};
use crate::xen::{Hypervisor, XenError};

/// Ports of the 2-level ABI (x86_64 and Arm): 0..4096.
pub const NR_PORTS: u32 = EVTCHN_2L_NR_CHANNELS;

/// The most ports one wait takes (what one `SCHEDOP_poll` takes).
pub const MAX_WAIT_PORTS: usize = SCHED_POLL_MAX_PORTS;

/// What an event channel operation could not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnError {
    /// The port is beyond the 2-level ABI's [`NR_PORTS`].
    BadPort(u32),
    /// More ports than one `SCHEDOP_poll` takes ([`MAX_WAIT_PORTS`]).
    TooManyPorts(usize),
    /// A wait on no port that nothing bounds would never end.
    NothingToWaitFor,
    /// None of the ports fired within the limit (`polls` polls done).
    TimedOut {
        /// `SCHEDOP_poll` calls made.
        polls: u32,
    },
    /// Xen refused an operation.
    Xen(XenError),
}

impl From<XenError> for EvtchnError {
    fn from(e: XenError) -> Self {
        EvtchnError::Xen(e)
    }
}

impl fmt::Display for EvtchnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvtchnError::BadPort(p) => write!(f, "event channel port {p} is beyond {NR_PORTS}"),
            EvtchnError::TooManyPorts(n) => {
                write!(f, "{n} ports to wait on, at most {MAX_WAIT_PORTS}")
            }
            EvtchnError::NothingToWaitFor => write!(f, "an unbounded wait on no port"),
            EvtchnError::TimedOut { polls } => {
                write!(f, "no event within the limit ({polls} polls)")
            }
            EvtchnError::Xen(e) => write!(f, "event channel operation failed: {e}"),
        }
    }
}

/// The ports that fired in one [`EventChannels::wait`] or
/// [`EventChannels::take_pending`]: bit `i` stands for `ports[i]` of the list
/// given (a port listed twice is reported once, at its first index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fired(u128);

impl Fired {
    /// Nothing fired.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many fired.
    pub const fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether `ports[index]` fired.
    pub const fn contains(self, index: usize) -> bool {
        index < 128 && self.0 >> index & 1 == 1
    }

    /// The indices (into the list given) that fired, in order.
    pub fn indices(self) -> impl Iterator<Item = usize> {
        (0..128).filter(move |&i| self.contains(i))
    }

    /// The ports of `ports` (the list given) that fired, in order.
    pub fn ports(self, ports: &[u32]) -> impl Iterator<Item = u32> + '_ {
        self.indices().filter_map(|i| ports.get(i).copied())
    }
}

/// How long [`EventChannels::wait`] may wait when nothing fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WaitLimit {
    /// Absolute Xen system time (ns) to give every `SCHEDOP_poll`; 0: none.
    pub deadline_ns: u64,
    /// The most `SCHEDOP_poll` calls; `None`: no bound on their number.
    pub max_polls: Option<u32>,
}

impl WaitLimit {
    /// Until something fires, however many wake-ups that takes.
    pub const FOREVER: WaitLimit = WaitLimit {
        deadline_ns: 0,
        max_polls: None,
    };

    /// At most `n` polls (0: only look at the bits), no timeout.
    pub const fn polls(n: u32) -> WaitLimit {
        WaitLimit {
            deadline_ns: 0,
            max_polls: Some(n),
        }
    }

    /// Until Xen system time `deadline_ns` (absolute; 0 means none), and at
    /// most `max_polls` polls if given.
    pub const fn until(deadline_ns: u64, max_polls: Option<u32>) -> WaitLimit {
        WaitLimit {
            deadline_ns,
            max_polls,
        }
    }
}

/// Xen system time now, for telling a deadline from a spurious wake-up.
pub trait XenClock {
    /// Xen system time in ns, or `None` where it cannot be told.
    fn xen_now_ns(&mut self) -> Option<u64>;
}

/// No clock: a wait with a deadline ends at the first wake-up that finds
/// nothing (it may end early on a spurious wake-up; it never polls again
/// with a deadline that has passed, which would return at once, forever).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClock;

impl XenClock for NoClock {
    fn xen_now_ns(&mut self) -> Option<u64> {
        None
    }
}

impl<F: FnMut() -> u64> XenClock for F {
    fn xen_now_ns(&mut self) -> Option<u64> {
        Some(self())
    }
}

/// `XENMEM_add_to_physmap(XENMAPSPACE_shared_info, 0, gfn)`: put this
/// domain's shared_info page at its frame `gfn`.
///
/// What the caller does:
///
/// 1. **Pick `gfn`** from a hole of the region table, never RAM: Xen
///    replaces what is there (on x86 a RAM page there is freed, on Arm it is
///    lost to the domain). On x86 PVH any free frame outside the e820's RAM
///    and the MMIO gap works; on Arm take it from the `/hypervisor` node's
///    region (the guest-physical range Xen offers for grant-table and
///    shared_info mappings). Record the frame in the table as taken, as the
///    grant-table frames are.
/// 2. **Call this.** On Arm a page that is mapped already is refused with
///    EBUSY (Xen 4.17 wants it removed first, `XENMEM_remove_from_physmap`);
///    on x86 it moves. `idx` other than 0 is EINVAL.
/// 3. **Map it** with [`PageTable::map_pinned`](crate::paging::PageTable::map_pinned)
///    as Normal write-back memory (Xen writes it through a cacheable
///    mapping; on Arm a Device or uncached view of it would not be coherent),
///    and keep the mapping for as long as [`EventChannels`] is used.
/// 4. **Wrap it**: [`EventChannels::native`] with the mapped address, then
///    [`EventChannels::mask_all`] before binding or waiting, so that no event
///    asks for an upcall the agent never takes.
pub fn map_shared_info(hv: &impl Hypervisor, gfn: Gfn) -> Result<(), XenError> {
    hv.add_to_physmap(physmap::SPACE_SHARED_INFO, 0, gfn)
}

/// `EVTCHNOP_send` on local `port`: notify its other end.
pub fn send(hv: &impl Hypervisor, port: u32) -> Result<(), EvtchnError> {
    if port >= NR_PORTS {
        return Err(EvtchnError::BadPort(port));
    }
    hv.evtchn_send(port).map_err(EvtchnError::Xen)
}

/// Xen system time (ns) at TSC value `tsc`, from a consistent copy of a
/// `vcpu_time_info` (the pvclock formula of `public/xen.h`); a TSC before
/// the record's timestamp counts as the timestamp.
pub fn xen_time_at(t: &VcpuTimeInfo, tsc: u64) -> u64 {
    let mut delta = tsc.saturating_sub(t.tsc_timestamp);
    if t.tsc_shift >= 0 {
        delta = delta
            .checked_shl(u32::from(t.tsc_shift.unsigned_abs()))
            .unwrap_or(0);
    } else {
        delta = delta
            .checked_shr(u32::from(t.tsc_shift.unsigned_abs()))
            .unwrap_or(0);
    }
    let ns = (u128::from(delta) * u128::from(t.tsc_to_system_mul)) >> 32;
    t.system_time
        .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The event bitmaps of a mapped shared_info page.
#[derive(Debug)]
pub struct EventChannels {
    page: NonNull<SharedInfoPage>,
    layout: SharedInfoLayout,
}

// SAFETY: the page is shared memory reached only through atomics; moving the
// handle to another CPU changes nothing about that (contract of `new`).
unsafe impl Send for EventChannels {}

impl EventChannels {
    /// The shared_info page at `page`, laid out as `layout` says.
    ///
    /// # Safety
    /// `page` must point at this domain's shared_info page (or, in tests, a
    /// page standing for it), 8-byte aligned, mapped readable and writable as normal
    /// cacheable memory for as long as the value is used, and laid out as
    /// `layout` (the architecture's). Everyone else in this domain must
    /// reach its words through atomics only while the value is used.
    pub const unsafe fn new(page: NonNull<SharedInfoPage>, layout: SharedInfoLayout) -> Self {
        EventChannels { page, layout }
    }

    /// [`new`](Self::new) with the layout of the architecture built for.
    ///
    /// # Safety
    /// As for [`new`](Self::new).
    pub const unsafe fn native(page: NonNull<SharedInfoPage>) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { Self::new(page, SharedInfoLayout::NATIVE) }
    }

    /// The layout it reads.
    pub const fn layout(&self) -> SharedInfoLayout {
        self.layout
    }

    /// The address the page is reached at.
    pub fn page_addr(&self) -> usize {
        self.page.as_ptr() as usize
    }

    /// The word at byte offset `off` (8-aligned, inside the page).
    fn word_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off < 4096);
        // SAFETY: `off` is an 8-aligned offset inside the page (the
        // layouts' offsets, checked at compile time in `abi`, plus a word
        // index below 64), and the page is mapped and only reached through
        // atomics while `self` lives (contract of `new`).
        unsafe { AtomicU64::from_ptr(self.page.as_ptr().cast::<u8>().add(off).cast::<u64>()) }
    }

    /// The word and bit of `port` in the bitmap at byte offset `base`.
    fn bit(&self, base: usize, port: u32) -> Result<(&AtomicU64, u64), EvtchnError> {
        if port >= NR_PORTS {
            return Err(EvtchnError::BadPort(port));
        }
        Ok((
            self.word_at(base + 8 * (port / 64) as usize),
            1u64 << (port % 64),
        ))
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: u32) -> Result<bool, EvtchnError> {
        let (w, b) = self.bit(self.layout.evtchn_pending, port)?;
        Ok(w.load(Ordering::SeqCst) & b != 0)
    }

    /// Take `port`'s event: clear its pending bit atomically (Xen sets bits
    /// of the same word meanwhile); whether it was pending.
    pub fn clear(&self, port: u32) -> Result<bool, EvtchnError> {
        let (w, b) = self.bit(self.layout.evtchn_pending, port)?;
        Ok(w.fetch_and(!b, Ordering::SeqCst) & b != 0)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: u32) -> Result<bool, EvtchnError> {
        let (w, b) = self.bit(self.layout.evtchn_mask, port)?;
        Ok(w.load(Ordering::SeqCst) & b != 0)
    }

    /// Mask `port`: an event on it marks no upcall (it still sets the
    /// pending bit and still ends a `SCHEDOP_poll` on it).
    pub fn mask(&self, port: u32) -> Result<(), EvtchnError> {
        let (w, b) = self.bit(self.layout.evtchn_mask, port)?;
        w.fetch_or(b, Ordering::SeqCst);
        Ok(())
    }

    /// Mask every port of `ports`; nothing is masked if one is out of range.
    pub fn mask_all_known(&self, ports: &[u32]) -> Result<(), EvtchnError> {
        if let Some(&p) = ports.iter().find(|&&p| p >= NR_PORTS) {
            return Err(EvtchnError::BadPort(p));
        }
        for &p in ports {
            self.mask(p)?;
        }
        Ok(())
    }

    /// Mask all [`NR_PORTS`] ports (what Mini-OS does at start): events on
    /// ports the agent does not know (a toolstack's) then mark no upcall.
    pub fn mask_all(&self) {
        for i in 0..(NR_PORTS / 64) as usize {
            self.word_at(self.layout.evtchn_mask + 8 * i)
                .store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// Unmask `port` with `EVTCHNOP_unmask`, the safe sequence: Xen clears
    /// the mask bit and, if the port is pending, marks the vCPU's upcall
    /// pending (which a vCPU with interrupts off only sees as spurious
    /// wake-ups of later polls).
    pub fn unmask(&self, hv: &impl Hypervisor, port: u32) -> Result<(), EvtchnError> {
        if port >= NR_PORTS {
            return Err(EvtchnError::BadPort(port));
        }
        hv.evtchn_unmask(port).map_err(EvtchnError::Xen)
    }

    /// `EVTCHNOP_send` on `port` (see [`send`]).
    pub fn send(&self, hv: &impl Hypervisor, port: u32) -> Result<(), EvtchnError> {
        send(hv, port)
    }

    fn check_ports(ports: &[u32]) -> Result<(), EvtchnError> {
        if ports.len() > MAX_WAIT_PORTS {
            return Err(EvtchnError::TooManyPorts(ports.len()));
        }
        match ports.iter().find(|&&p| p >= NR_PORTS) {
            Some(&p) => Err(EvtchnError::BadPort(p)),
            None => Ok(()),
        }
    }

    /// Take the events of `ports` that are pending now (each bit cleared
    /// atomically, so each event is reported once).
    pub fn take_pending(&self, ports: &[u32]) -> Result<Fired, EvtchnError> {
        Self::check_ports(ports)?;
        let mut fired = 0u128;
        for (i, &p) in ports.iter().enumerate() {
            if self.clear(p)? {
                fired |= 1 << i;
            }
        }
        Ok(Fired(fired))
    }

    /// Wait until one of `ports` fires, and take (clear) every one of them
    /// that is pending then.
    ///
    /// Looks at the bits first; only when none is pending does it block in
    /// `SCHEDOP_poll` (which looks again before blocking, so an event that
    /// comes in between is not lost). A wake-up that finds nothing is
    /// spurious and polls again, unless `limit` says stop: `max_polls` polls
    /// done, or the deadline passed (by `clock`; with [`NoClock`] the first
    /// empty wake-up after a poll with a deadline counts as the deadline).
    /// Then [`EvtchnError::TimedOut`]. Xen's EINVAL means a port that is not
    /// in use.
    pub fn wait(
        &self,
        hv: &impl Hypervisor,
        ports: &[u32],
        limit: WaitLimit,
        clock: &mut impl XenClock,
    ) -> Result<Fired, EvtchnError> {
        Self::check_ports(ports)?;
        if ports.is_empty() && limit.deadline_ns == 0 && limit.max_polls.is_none() {
            return Err(EvtchnError::NothingToWaitFor);
        }
        let mut polls = 0u32;
        loop {
            let fired = self.take_pending(ports)?;
            if !fired.is_empty() {
                return Ok(fired);
            }
            if limit.max_polls.is_some_and(|m| polls >= m) {
                return Err(EvtchnError::TimedOut { polls });
            }
            if limit.deadline_ns != 0 && polls > 0 {
                match clock.xen_now_ns() {
                    Some(now) if now < limit.deadline_ns => {}
                    _ => return Err(EvtchnError::TimedOut { polls }),
                }
            }
            hv.sched_poll(ports, limit.deadline_ns)?;
            polls = polls.saturating_add(1);
        }
    }

    /// A consistent copy of `vcpu_info[0].time` (the version read before
    /// and after is the same and even), where the layout has one Xen keeps
    /// (x86); `None` on Arm, or if Xen was mid-update every time of a
    /// bounded number of tries.
    pub fn vcpu0_time(&self) -> Option<VcpuTimeInfo> {
        let base = self.layout.vcpu0_time?;
        for _ in 0..1000 {
            let v0 = self.word_at(base).load(Ordering::SeqCst) as u32;
            if v0 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let tsc_timestamp = self.word_at(base + 8).load(Ordering::SeqCst);
            let system_time = self.word_at(base + 16).load(Ordering::SeqCst);
            let w3 = self.word_at(base + 24).load(Ordering::SeqCst);
            let v1 = self.word_at(base).load(Ordering::SeqCst) as u32;
            if v0 == v1 {
                return Some(VcpuTimeInfo {
                    version: v0,
                    pad0: 0,
                    tsc_timestamp,
                    system_time,
                    tsc_to_system_mul: w3 as u32,
                    tsc_shift: (w3 >> 32) as u8 as i8,
                    flags: (w3 >> 40) as u8,
                    pad1: [0; 2],
                });
            }
        }
        None
    }

    /// `vcpu_info[0].evtchn_upcall_pending` (set by Xen when an unmasked
    /// port becomes pending; the agent never clears it).
    pub fn upcall_pending(&self) -> bool {
        let off = self.layout.vcpu0_upcall_pending;
        let w = self.word_at(off & !7).load(Ordering::SeqCst);
        w >> (8 * (off % 8)) & 0xff != 0
    }
}
