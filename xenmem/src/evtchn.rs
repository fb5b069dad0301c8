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
///
/// # Safety
/// Nothing in this domain may be using the memory at `gfn` (Xen takes it
/// away); [`place_shared_info`] picks and records a hole itself.
pub unsafe fn map_shared_info(hv: &impl Hypervisor, gfn: Gfn) -> Result<(), XenError> {
    hv.add_to_physmap(physmap::SPACE_SHARED_INFO, 0, gfn)
}

/// Why [`place_shared_info`] failed; the table is as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// The region table has no hole frame.
    NoHole,
    /// Recording the frame failed.
    Table(crate::region::RegionError),
    /// Xen refused to place it.
    Xen(XenError),
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::NoHole => f.write_str("no hole frame for shared_info"),
            PlaceError::Table(e) => write!(f, "recording shared_info: {e}"),
            PlaceError::Xen(e) => write!(f, "placing shared_info: {e}"),
        }
    }
}

/// Steps 1 and 2 of [`map_shared_info`], safely: take a frame from the
/// table's holes, record it as a page of Xen's placed there (kind
/// [`RegionKind::Grant`](crate::region::RegionKind::Grant), as the grant
/// table's own frames), and put shared_info there. Returns the frame; on
/// error the table is as it was.
pub fn place_shared_info(
    hv: &impl Hypervisor,
    t: &mut crate::region::RegionTable,
) -> Result<Gfn, PlaceError> {
    use crate::region::{Backing, Region, RegionFlags, RegionKind};
    let hole = t
        .find_hole(crate::addr::PageCount(1), crate::addr::Order::ZERO, Gfn(1))
        .ok_or(PlaceError::NoHole)?;
    t.add(Region {
        range: hole,
        kind: RegionKind::Grant,
        flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        backing: Backing::None,
    })
    .map_err(PlaceError::Table)?;
    // SAFETY: `hole` was a hole of the table (free guest-physical space:
    // nothing uses it) and is now recorded as shared_info's frame.
    if let Err(e) = unsafe { map_shared_info(hv, hole.start()) } {
        let _ = t.modify(
            hole,
            crate::region::Change {
                kind: Some(RegionKind::Hole),
                clear: RegionFlags::all(),
                backing: Some(Backing::None),
                expect: Some(RegionKind::Grant),
                ..crate::region::Change::default()
            },
        );
        return Err(PlaceError::Xen(e));
    }
    Ok(hole.start())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::DomId;
    use crate::xen::model::{evt::PollRecord, DomainConfig, Op, XenModel};
    use crate::xen::Errno;
    use alloc::boxed::Box;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::{Cell, RefCell};
    use proptest::prelude::*;

    fn heap_page() -> Box<SharedInfoPage> {
        Box::new(SharedInfoPage([0; 512]))
    }

    fn on(page: &mut SharedInfoPage, layout: SharedInfoLayout) -> EventChannels {
        // SAFETY: the page outlives the handle in every test, and is only
        // read through the handle while it is used.
        unsafe { EventChannels::new(NonNull::from(page), layout) }
    }

    #[test]
    fn bits_sit_where_each_architecture_has_them() {
        for (layout, pending_word, mask_word) in [
            (SharedInfoLayout::X86_64, 2048 / 8, 2560 / 8),
            (SharedInfoLayout::ARM, 48 / 8, 560 / 8),
        ] {
            let mut page = heap_page();
            let ptr = NonNull::from(&mut *page);
            // Every access below goes through `ptr`, as the handle's do.
            let raw = ptr.as_ptr().cast::<u64>();
            // SAFETY: the page outlives the handle.
            let ev = unsafe { EventChannels::new(ptr, layout) };
            // Xen sets port 67 pending: word 1 of evtchn_pending, bit 3.
            // SAFETY: a word of the test's page.
            unsafe { *raw.add(pending_word + 1) = 1 << 3 };
            assert_eq!(ev.is_pending(67), Ok(true));
            assert_eq!(ev.is_pending(66), Ok(false));
            assert_eq!(ev.clear(67), Ok(true));
            assert_eq!(ev.clear(67), Ok(false), "taken once");
            // SAFETY: as above.
            assert_eq!(unsafe { *raw.add(pending_word + 1) }, 0);
            ev.mask(130).unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { *raw.add(mask_word + 2) }, 1 << 2);
            assert_eq!(ev.is_masked(130), Ok(true));
            ev.mask_all();
            // SAFETY: as above.
            assert!((0..64).all(|i| unsafe { *raw.add(mask_word + i) } == u64::MAX));
            // The bitmaps' neighbours are untouched.
            // SAFETY: as above.
            assert_eq!(unsafe { *raw.add(mask_word + 64) }, 0);
            // SAFETY: as above.
            assert_eq!(unsafe { *raw.add(pending_word - 1) }, 0);
        }
    }

    #[test]
    fn out_of_range_ports_are_errors() {
        let mut page = heap_page();
        let ev = on(&mut page, SharedInfoLayout::NATIVE);
        assert_eq!(ev.is_pending(NR_PORTS), Err(EvtchnError::BadPort(4096)));
        assert_eq!(ev.clear(u32::MAX), Err(EvtchnError::BadPort(u32::MAX)));
        assert_eq!(
            ev.mask_all_known(&[1, 2, 9999]),
            Err(EvtchnError::BadPort(9999))
        );
        assert_eq!(ev.is_masked(1), Ok(false), "nothing masked on error");
        ev.mask_all_known(&[1, 4095]).unwrap();
        assert_eq!(ev.is_masked(4095), Ok(true));
        assert_eq!(
            ev.take_pending(&[1; 129]),
            Err(EvtchnError::TooManyPorts(129))
        );
    }

    #[test]
    fn pvclock_time() {
        let t = VcpuTimeInfo {
            version: 2,
            tsc_timestamp: 1000,
            system_time: 5_000,
            // 0.5 ns per (tick << 1) = 1 ns per tick.
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1,
            ..Default::default()
        };
        assert_eq!(xen_time_at(&t, 1000), 5_000);
        assert_eq!(xen_time_at(&t, 3000), 7_000);
        assert_eq!(xen_time_at(&t, 10), 5_000, "before the stamp");
        let mut page = heap_page();
        // vcpu_info[0].time at byte 32: version, stamp, time, mul|shift.
        page.0[4] = 2;
        page.0[5] = 1000;
        page.0[6] = 5000;
        page.0[7] = (1 << 31) | (1 << 32);
        let ev = on(&mut page, SharedInfoLayout::X86_64);
        assert_eq!(ev.vcpu0_time(), Some(t));
        page.0[4] = 3;
        let ev = on(&mut page, SharedInfoLayout::X86_64);
        assert_eq!(ev.vcpu0_time(), None, "Xen mid-update every time");
        let ev = on(&mut page, SharedInfoLayout::ARM);
        assert_eq!(ev.vcpu0_time(), None, "Arm keeps no time there");
    }

    /// The agent (domU 1) and a peer (domU 2) with `n` channels between
    /// them: the agent's ports and the peer's.
    fn linked(n: usize) -> (XenModel, EventChannels, Vec<u32>, Vec<u32>) {
        let m = XenModel::new(1 << 12);
        m.add_domain(DomainConfig::pvh_domu(DomId(1), 256)).unwrap();
        m.add_domain(DomainConfig::pvh_domu(DomId(2), 256)).unwrap();
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..n {
            let p = m.evtchn_alloc_unbound(DomId(2)).unwrap();
            m.set_current(DomId(2)).unwrap();
            let l = m.evtchn_bind_interdomain(DomId(1), p).unwrap();
            m.set_current(DomId(1)).unwrap();
            mine.push(p);
            theirs.push(l);
        }
        let page = m.shared_info_page(DomId(1)).unwrap();
        let layout = m.shared_info_layout(DomId(1)).unwrap();
        // SAFETY: the model keeps the page while domain 1 lives (the whole
        // test), and reaches it only through atomics.
        let ev = unsafe { EventChannels::new(page, layout) };
        ev.mask_all();
        (m, ev, mine, theirs)
    }

    fn peer_send(m: &XenModel, port: u32) {
        let back = m.current().unwrap();
        m.set_current(DomId(2)).unwrap();
        m.evtchn_send(port).unwrap();
        m.set_current(back).unwrap();
    }

    #[test]
    fn a_pending_event_is_taken_without_polling() {
        let (m, ev, mine, theirs) = linked(2);
        peer_send(&m, theirs[1]);
        let f = ev
            .wait(&m, &mine, WaitLimit::FOREVER, &mut NoClock)
            .unwrap();
        assert_eq!(f.ports(&mine).collect::<Vec<_>>(), [mine[1]]);
        assert_eq!(m.calls(Op::SchedPoll), 0, "looked at the bits first");
        assert_eq!(ev.is_pending(mine[1]), Ok(false), "taken");
        // Masked all along: no upcall was asked for.
        assert!(!ev.upcall_pending());
    }

    #[test]
    fn blocks_until_the_peer_sends_and_rides_out_spurious_wake_ups() {
        let (m, ev, mine, theirs) = linked(3);
        let wakes = Rc::new(Cell::new(0u32));
        let w = wakes.clone();
        let peer_port = theirs[2];
        m.set_poll_hook(Some(Box::new(move |m: &XenModel, r: &PollRecord| {
            assert_eq!(r.timeout, 0);
            w.set(w.get() + 1);
            // Two spurious wake-ups, then the peer's event.
            if w.get() == 3 {
                peer_send(m, peer_port);
            }
        })));
        let f = ev
            .wait(&m, &mine, WaitLimit::FOREVER, &mut NoClock)
            .unwrap();
        assert_eq!(f.ports(&mine).collect::<Vec<_>>(), [mine[2]]);
        assert_eq!(wakes.get(), 3);
        assert_eq!(m.blocked_polls(), 3);
        let polls = m.polls();
        assert!(polls.iter().all(|p| p.ports == mine));
    }

    #[test]
    fn bounded_waits_end_without_hanging() {
        let (m, ev, mine, _) = linked(1);
        // No hook: every poll "returns" with nothing pending.
        assert_eq!(
            ev.wait(&m, &mine, WaitLimit::polls(5), &mut NoClock),
            Err(EvtchnError::TimedOut { polls: 5 })
        );
        assert_eq!(
            ev.wait(&m, &mine, WaitLimit::polls(0), &mut NoClock),
            Err(EvtchnError::TimedOut { polls: 0 })
        );
        assert_eq!(m.blocked_polls(), 5);
        // A deadline with a clock: polls until the clock passes it.
        let now = Cell::new(100u64);
        let mut clock = || {
            now.set(now.get() + 10);
            now.get()
        };
        assert_eq!(
            ev.wait(&m, &mine, WaitLimit::until(150, None), &mut clock),
            Err(EvtchnError::TimedOut { polls: 5 })
        );
        assert!(m.polls().iter().skip(5).all(|p| p.timeout == 150));
        // A deadline without a clock: the first empty wake-up ends it.
        assert_eq!(
            ev.wait(&m, &mine, WaitLimit::until(150, None), &mut NoClock),
            Err(EvtchnError::TimedOut { polls: 1 })
        );
        assert_eq!(
            ev.wait(&m, &[], WaitLimit::FOREVER, &mut NoClock),
            Err(EvtchnError::NothingToWaitFor)
        );
        // Xen's refusal of a port not in use comes back typed.
        assert_eq!(
            ev.wait(&m, &[mine[0], 9], WaitLimit::polls(3), &mut NoClock),
            Err(EvtchnError::Xen(XenError::Errno(Errno::EINVAL)))
        );
    }

    #[test]
    fn send_and_unmask_go_to_xen() {
        let (m, ev, mine, theirs) = linked(1);
        ev.send(&m, mine[0]).unwrap();
        assert_eq!(m.evtchn_is_pending(DomId(2), theirs[0]), Some(true));
        assert_eq!(send(&m, 5000), Err(EvtchnError::BadPort(5000)));
        assert_eq!(
            send(&m, 7),
            Err(EvtchnError::Xen(XenError::Errno(Errno::EINVAL)))
        );
        assert_eq!(ev.is_masked(mine[0]), Ok(true));
        ev.unmask(&m, mine[0]).unwrap();
        assert_eq!(ev.is_masked(mine[0]), Ok(false));
        assert_eq!(ev.unmask(&m, 4096), Err(EvtchnError::BadPort(4096)));
    }

    #[test]
    fn shared_info_is_placed_at_the_callers_frame() {
        let m = XenModel::new(1 << 12);
        m.add_domain(DomainConfig::pvh_domu(DomId(1), 256)).unwrap();
        let hole = crate::addr::Gfn(0x20_0000);
        // SAFETY: a frame beyond the domain's RAM: nothing uses it.
        unsafe { map_shared_info(&m, hole) }.unwrap();
        let p = m.page_ptr(DomId(1), hole).unwrap();
        assert_eq!(
            Some(p),
            m.shared_info_page(DomId(1))
                .map(|p| p.as_ptr().cast::<u8>())
        );
    }

    #[test]
    fn shared_info_is_placed_in_a_hole_of_the_table() {
        use crate::region::{FrameRange, Region, RegionFlags, RegionKind, RegionTable};
        let m = XenModel::new(1 << 12);
        m.add_domain(DomainConfig::pvh_domu(DomId(1), 256)).unwrap();
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::from_frames(crate::addr::Gfn(0), crate::addr::Gfn(256)).unwrap(),
            RegionKind::Ram,
            RegionFlags::empty(),
        ))
        .unwrap();
        // No hole: refused, nothing changed.
        let before: Vec<_> = t.iter().copied().collect();
        assert_eq!(place_shared_info(&m, &mut t), Err(PlaceError::NoHole));
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), before);
        t.add(Region::new(
            FrameRange::from_frames(crate::addr::Gfn(0x100000), crate::addr::Gfn(0x100010))
                .unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        let g = place_shared_info(&m, &mut t).unwrap();
        assert_eq!(g, crate::addr::Gfn(0x100000));
        assert_eq!(
            t.info(g.addr().unwrap()).map(|r| r.kind),
            Some(RegionKind::Grant)
        );
        assert!(m.shared_info_page(DomId(1)).is_some());
        // Xen refuses (a fault): the frame goes back to the holes.
        m.gnttab_inject(crate::xen::model::GntFault::Errno {
            op: crate::xen::model::GntOp::AddToPhysmap,
            errno: Errno::EINVAL,
        });
        let holes = t.count(RegionKind::Hole);
        assert!(place_shared_info(&m, &mut t).is_err());
        assert_eq!(t.count(RegionKind::Hole), holes);
    }

    #[derive(Clone, Debug)]
    enum Act {
        /// The peer sends on channel `k`.
        Send(usize),
        /// Wait on every channel with one poll allowed; during a block the
        /// peer sends on `wake` if given.
        Wait { wake: Option<usize> },
        /// Take channel `k`'s event directly.
        Clear(usize),
        /// Mask or unmask channel `k` (through Xen).
        Mask(usize, bool),
    }

    const N: usize = 3;

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            (0..N).prop_map(Act::Send),
            proptest::option::of(0..N).prop_map(|wake| Act::Wait { wake }),
            (0..N).prop_map(Act::Clear),
            ((0..N), any::<bool>()).prop_map(|(k, b)| Act::Mask(k, b)),
        ]
    }

    proptest! {
        /// Every event is reported exactly once: sends before a take
        /// coalesce into one report, nothing is lost across masks, polls or
        /// direct clears, and a wait reports nothing that was not sent.
        #[test]
        fn no_event_is_lost_or_reported_twice(acts in proptest::collection::vec(act(), 1..60)) {
            let (m, ev, mine, theirs) = linked(N);
            let wake: Rc<RefCell<Option<u32>>> = Rc::new(RefCell::new(None));
            let w = wake.clone();
            m.set_poll_hook(Some(Box::new(move |m: &XenModel, _: &PollRecord| {
                if let Some(p) = w.borrow_mut().take() {
                    peer_send(m, p);
                }
            })));
            let mut outstanding = [false; N];
            for a in &acts {
                match *a {
                    Act::Send(k) => {
                        peer_send(&m, theirs[k]);
                        outstanding[k] = true;
                    }
                    Act::Clear(k) => {
                        prop_assert_eq!(ev.clear(mine[k]), Ok(outstanding[k]));
                        outstanding[k] = false;
                    }
                    Act::Mask(k, true) => ev.mask(mine[k]).unwrap(),
                    Act::Mask(k, false) => ev.unmask(&m, mine[k]).unwrap(),
                    Act::Wait { wake: wk } => {
                        *wake.borrow_mut() = wk.map(|k| theirs[k]);
                        let before = m.calls(Op::SchedPoll);
                        let r = ev.wait(&m, &mine, WaitLimit::polls(1), &mut NoClock);
                        let polled = m.calls(Op::SchedPoll) - before;
                        let expect: Vec<u32> = (0..N).filter(|&k| outstanding[k]).map(|k| mine[k]).collect();
                        if !expect.is_empty() {
                            let got: Vec<u32> = r.unwrap().ports(&mine).collect();
                            prop_assert_eq!(got, expect);
                            prop_assert_eq!(polled, 0);
                            outstanding = [false; N];
                        } else if let Some(k) = wk {
                            let got: Vec<u32> = r.unwrap().ports(&mine).collect();
                            prop_assert_eq!(got, alloc::vec![mine[k]]);
                            prop_assert_eq!(polled, 1);
                        } else {
                            prop_assert_eq!(r, Err(EvtchnError::TimedOut { polls: 1 }));
                        }
                        *wake.borrow_mut() = None;
                    }
                }
                for k in 0..N {
                    prop_assert_eq!(ev.is_pending(mine[k]), Ok(outstanding[k]));
                }
            }
        }
    }
}
