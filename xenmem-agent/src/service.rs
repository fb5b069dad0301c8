//! The balloon service (`mode=service`): the toolstack drives the agent.
//!
//! Under a toolstack, memory is set with `xl mem-set`, which writes the
//! domain's `memory/target` (KiB) in xenstore, and `xl shutdown` / `xl
//! reboot` write `control/shutdown`. The service watches both keys and:
//!
//! - balloons the reservation to `target / 4 KiB + the toolstack's pages
//!   outside RAM` (what Linux's driver reaches too: Xen's `nr_pages` =
//!   the target + the special pages), with the reservation engine
//!   (superpages first), in steps of at most [`STEP`] pages so that a new
//!   target arriving mid-way supersedes the old one; after every step Xen's
//!   count, the engine's and the region table's agree (or the service
//!   stops with a failure);
//! - never goes below the [`floor`] it states at start (the agent's own
//!   pages, the special pages and a [`MARGIN`]), nor above what Xen allows
//!   (`maximum_reservation`) or what the memory map holds: a target outside
//!   is clamped, with one log line;
//! - keeps its last good target when `memory/target` is malformed (empty,
//!   not a number, negative, absurdly large) or cannot be read, with one
//!   log line; when the xenstore connection breaks (xenstored gone, a
//!   corrupt ring) it says so, keeps the reservation it has, and waits
//!   without using the CPU until xenstored signals again
//!   ([`Control::park`]), then watches again and goes on;
//! - ends on `control/shutdown` = `poweroff`/`halt` (shutdown reason
//!   poweroff) or `reboot` (reboot), acknowledging by writing the key back
//!   empty, as Linux does; `suspend` is refused (not supported) and the
//!   agent keeps running.
//!
//! Xenstore and waiting come through [`Control`], so the logic runs on the
//! host against the model of Xen and a fake xenstore.

use alloc::string::String;

use xenmem::addr::PageCount;
use xenmem::region::{RegionKind, RegionTable, ReservedUse};
use xenmem::reservation::{Engine, ReservationError};
use xenmem::xen::Hypervisor;

/// The most pages one balloon step moves (32 MiB: 16 order-9 extents), so
/// that a new target is seen within one step.
pub const STEP: u64 = 8192;
/// Pages kept above the agent's own pages as a margin (1 MiB).
pub const MARGIN: u64 = 256;
/// The xenstore key with the target, KiB (relative to the domain's home).
pub const TARGET_KEY: &str = "memory/target";
/// The xenstore key with shutdown requests.
pub const SHUTDOWN_KEY: &str = "control/shutdown";
/// Written `1` at start: "this guest balloons" (libxl 4.17 does not create
/// it, so the write may be refused with EACCES; nothing in 4.17 reads it).
pub const FEATURE_BALLOON_KEY: &str = "control/feature-balloon";

/// Why a [`Control`] operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Xenstore answered with this error name (`ENOENT`, `EACCES`, ...).
    Store(String),
    /// The transport broke (xenstored gone, a corrupt ring, a wait that
    /// never ended): the service cannot go on.
    Broken(String),
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ControlError::Store(e) => write!(f, "xenstore said {e}"),
            ControlError::Broken(e) => write!(f, "xenstore connection broken: {e}"),
        }
    }
}

/// A watch that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// `memory/target` (or below it) changed.
    Target,
    /// `control/shutdown` changed.
    Shutdown,
}

/// What the service needs from xenstore and the event channels.
pub trait Control {
    /// Read a key; `Ok(None)` if it does not exist.
    fn read(&mut self, path: &str) -> Result<Option<String>, ControlError>;
    /// Write a key.
    fn write(&mut self, path: &str, value: &str) -> Result<(), ControlError>;
    /// Watch [`TARGET_KEY`] and [`SHUTDOWN_KEY`] (each fires once at once,
    /// as xenstored does on registration).
    fn watch(&mut self) -> Result<(), ControlError>;
    /// The next watch event: without blocking (`wait == false`: `None` if
    /// there is none), or waiting for one without using the CPU.
    fn next(&mut self, wait: bool) -> Result<Option<Watched>, ControlError>;
    /// The connection broke: wait, without using the CPU, until xenstored
    /// may be back (its event channel fires). `false`: it never will; give
    /// up.
    fn park(&mut self) -> bool;
}

/// [`Control`] over the real xenstore client: reads, writes and the two
/// watches (tokens `target` and `shutdown`) through an
/// [`XsClient`](xenmem::xenstore::XsClient), whose wait closure blocks in the
/// event channel (no CPU while nothing comes).
pub struct XsControl<N, W, P> {
    /// The client.
    pub xs: xenmem::xenstore::XsClient<N, W>,
    /// [`Control::park`]: block until the xenstore event channel fires.
    pub park: P,
}

impl<N, W, P> core::fmt::Debug for XsControl<N, W, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XsControl")
            .field("xs", &self.xs)
            .finish_non_exhaustive()
    }
}

const TARGET_TOKEN: &str = "target";
const SHUTDOWN_TOKEN: &str = "shutdown";

fn xs_error(e: xenmem::xenstore::XsError) -> ControlError {
    use xenmem::xenstore::XsError;
    match e {
        XsError::Server(errno) => ControlError::Store(alloc::format!("{errno}")),
        other => ControlError::Broken(alloc::format!("{other}")),
    }
}

impl<N, W, P> Control for XsControl<N, W, P>
where
    N: FnMut(u32) -> Result<(), xenmem::xen::XenError>,
    W: FnMut(u32) -> Result<(), xenmem::xen::XenError>,
    P: FnMut() -> bool,
{
    fn park(&mut self) -> bool {
        (self.park)()
    }

    fn read(&mut self, path: &str) -> Result<Option<String>, ControlError> {
        use xenmem::xenstore::{wire::XsErrno, XsError};
        match self.xs.read(path) {
            // A value that is not UTF-8 is malformed: pass it on lossily,
            // the parser refuses it.
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(XsError::Server(XsErrno::ENOENT)) => Ok(None),
            Err(e) => Err(xs_error(e)),
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), ControlError> {
        self.xs.write(path, value.as_bytes()).map_err(xs_error)
    }

    fn watch(&mut self) -> Result<(), ControlError> {
        self.xs.watch(TARGET_KEY, TARGET_TOKEN).map_err(xs_error)?;
        self.xs
            .watch(SHUTDOWN_KEY, SHUTDOWN_TOKEN)
            .map_err(xs_error)
    }

    fn next(&mut self, wait: bool) -> Result<Option<Watched>, ControlError> {
        loop {
            let ev = if wait {
                self.xs.next_event()
            } else {
                self.xs.poll_event()
            }
            .map_err(xs_error)?;
            let Some(ev) = ev else {
                return Ok(None);
            };
            match ev.token.as_str() {
                TARGET_TOKEN => return Ok(Some(Watched::Target)),
                SHUTDOWN_TOKEN => return Ok(Some(Watched::Shutdown)),
                // Not ours (a watch set before, by someone else): skip it.
                _ => continue,
            }
        }
    }
}

/// How the service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// `control/shutdown` = `poweroff` (or `halt`).
    Poweroff,
    /// `control/shutdown` = `reboot`.
    Reboot,
    /// Something went wrong (logged); the run fails.
    Failed,
}

/// The least reservation the service keeps: every page the table holds
/// that is not free RAM (the agent's image, heap, page tables, boot data,
/// allocations, the toolstack's special pages, contiguous buffers) plus
/// [`MARGIN`].
pub fn floor(t: &RegionTable) -> PageCount {
    let used = t.count_where(|r| r.kind.is_populated_ram() && r.kind != RegionKind::Ram);
    PageCount(used.0 + MARGIN)
}

/// The toolstack's pages outside RAM, which Xen counts beside the target.
pub fn special_pages(t: &RegionTable) -> PageCount {
    t.count(RegionKind::Reserved(ReservedUse::Special))
}

/// A `memory/target` value (KiB, decimal): `None` unless it is a plain
/// non-negative decimal number of at most 2^40 KiB (1 PiB).
pub fn parse_target_kib(v: &str) -> Option<u64> {
    let v = v.trim_end_matches('\0');
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|&k| k <= 1 << 40)
}

/// What a `control/shutdown` value asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Nothing,
    Poweroff,
    Reboot,
    Unsupported,
}

fn request(v: &str) -> Request {
    match v.trim_end_matches('\0') {
        "" => Request::Nothing,
        "poweroff" | "halt" => Request::Poweroff,
        "reboot" => Request::Reboot,
        _ => Request::Unsupported,
    }
}

/// The service's state between events.
struct State {
    /// The reservation to reach.
    target: PageCount,
    /// The least reservation allowed.
    floor: PageCount,
    /// Pages Xen counts beside the target.
    special: PageCount,
    /// The most the memory map and Xen allow.
    ceiling: PageCount,
    /// The counter when the current target was set.
    since: u64,
    /// Whether the current target was reported reached.
    reached: bool,
}

/// Run the service until the toolstack ends it. `e` is the reservation
/// engine (counting from Xen's current reservation), `verify` checks Xen's
/// count against the engine and the table after every step (and reports
/// the accounting); `map_pages` is the RAM the memory map holds.
pub fn serve<H: Hypervisor>(
    hv: &H,
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    map_pages: PageCount,
    ctl: &mut impl Control,
    verify: &mut impl FnMut(&mut Engine<'_, H>, &RegionTable) -> Option<PageCount>,
) -> Ended {
    let special = special_pages(t);
    let mut st = State {
        target: e.expected(),
        floor: floor(t),
        special,
        ceiling: PageCount(map_pages.0 + special.0),
        since: xenmem::timer::now(),
        reached: true,
    };
    // The clock's frequency turns the reports' ticks into time (0: none).
    let hz = xenmem::timer::system().map_or(0, |c| c.frequency());
    xm_info!(
        "report: service floor={} special={} ceiling={} current={} step={=u64} hz={=u64}",
        st.floor,
        st.special,
        st.ceiling,
        e.expected(),
        STEP,
        hz
    );
    match ctl.write(FEATURE_BALLOON_KEY, "1") {
        Ok(()) => xm_info!("report: service feature_balloon=written"),
        Err(ControlError::Store(err)) => {
            // libxl 4.17 does not create the key for the guest (later
            // versions make it writable); xl mem-set does not read it.
            xm_warn!(
                "service: writing {=str}: {=str} (the toolstack did not create it; ballooning goes on)",
                FEATURE_BALLOON_KEY,
                err.as_str()
            );
            xm_info!("report: service feature_balloon=refused");
        }
        Err(err) => broken(&err),
    }
    loop {
        match connected(hv, e, t, ctl, verify, &mut st) {
            Ok(end) => return end,
            Err(err) => {
                broken(&err);
                xm_warn!(
                    "service: keeping {} pages; waiting for xenstored",
                    e.expected()
                );
                xm_info!("report: service-parked current={}", e.expected());
                if !ctl.park() {
                    return Ended::Failed;
                }
                xm_info!("report: service-unparked current={}", e.expected());
            }
        }
    }
}

/// The service while xenstore answers: `Err` when the connection breaks.
fn connected<H: Hypervisor>(
    hv: &H,
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    ctl: &mut impl Control,
    verify: &mut impl FnMut(&mut Engine<'_, H>, &RegionTable) -> Option<PageCount>,
    st: &mut State,
) -> Result<Ended, ControlError> {
    ctl.watch()?;
    xm_info!(
        "report: service-watch target={=str} shutdown={=str}",
        TARGET_KEY,
        SHUTDOWN_KEY
    );
    loop {
        // Take every event there is before moving memory.
        while let Some(w) = ctl.next(false)? {
            if let Some(end) = handle(hv, w, ctl, st)? {
                return Ok(end);
            }
        }
        let now = e.expected();
        // Mutant: ballooning down stops 16 pages above the target.
        let goal = if crate::mutant::is("service-stops-short") && st.target < now {
            PageCount(st.target.0 + 16).min(now)
        } else {
            st.target
        };
        if now != goal {
            let next = if goal < now {
                PageCount(goal.0.max(now.0.saturating_sub(STEP)))
            } else {
                PageCount(goal.0.min(now.0 + STEP))
            };
            let t0 = xenmem::timer::now();
            if let Err(err) = e.balloon_to(t, next) {
                return Ok(step_failed(&err));
            }
            let t1 = xenmem::timer::now();
            let Some(cur) = verify(e, t) else {
                return Ok(Ended::Failed);
            };
            let t2 = xenmem::timer::now();
            xm_info!(
                "report: service-step target={} current={} released={=u64} populated={=u64} hypercalls={=u64} engine_ticks={=u64} xen_ticks={=u64} identity_ticks={=u64} verify_ticks={=u64}",
                st.target,
                cur,
                e.stats.released,
                e.stats.populated,
                e.stats.hypercalls,
                t1.wrapping_sub(t0),
                e.stats.xen_ticks,
                e.stats.identity_ticks,
                t2.wrapping_sub(t1)
            );
            continue;
        }
        if !st.reached {
            st.reached = true;
            let ticks = xenmem::timer::now().wrapping_sub(st.since);
            xm_info!(
                "report: service-reached target={} current={} ticks={=u64} hypercalls={=u64} xen_ticks={=u64} identity_ticks={=u64}",
                st.target,
                // Mutant: it says it holds the target.
                if crate::mutant::is("service-stops-short") {
                    st.target
                } else {
                    e.expected()
                },
                ticks,
                e.stats.hypercalls,
                e.stats.xen_ticks,
                e.stats.identity_ticks
            );
        }
        if let Some(w) = ctl.next(true)? {
            if let Some(end) = handle(hv, w, ctl, st)? {
                return Ok(end);
            }
        }
    }
}

fn broken(err: &ControlError) {
    xm_error!("service: {}", defmt_display(err));
}

fn step_failed(err: &ReservationError) -> Ended {
    xm_error!("service: balloon step: {}", defmt_display(err));
    Ended::Failed
}

/// React to one watch event; `Some` ends the service, `Err` is a broken
/// connection.
fn handle<H: Hypervisor>(
    hv: &H,
    w: Watched,
    ctl: &mut impl Control,
    st: &mut State,
) -> Result<Option<Ended>, ControlError> {
    match w {
        Watched::Target => {
            let v = match ctl.read(TARGET_KEY) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    xm_info!("report: service-target none=yes kept={}", st.target);
                    return Ok(None);
                }
                Err(ControlError::Store(err)) => {
                    xm_warn!(
                        "service: reading {=str}: {=str}; keeping the target of {} pages",
                        TARGET_KEY,
                        err.as_str(),
                        st.target
                    );
                    return Ok(None);
                }
                Err(err) => return Err(err),
            };
            let Some(kib) = parse_target_kib(&v) else {
                xm_error!(
                    "service: {=str} = \"{=str}\" is not a size in KiB; keeping the target of {} pages",
                    TARGET_KEY,
                    printable(&v),
                    st.target
                );
                xm_info!("report: service-target malformed=yes kept={}", st.target);
                return Ok(None);
            };
            let wanted = PageCount((kib / 4).saturating_add(st.special.0));
            // What Xen allows now (xl mem-set raises max_pages first).
            let max = hv
                .maximum_reservation(xenmem::addr::DomId::SELF)
                .map_or(st.ceiling, |m| PageCount(m.0.min(st.ceiling.0)));
            let target = if wanted < st.floor {
                xm_warn!(
                    "service: a target of {} pages is below the floor of {} pages; going to the floor",
                    wanted,
                    st.floor
                );
                st.floor
            } else if wanted > max {
                xm_warn!(
                    "service: a target of {} pages is above what this domain may hold ({} pages); going there",
                    wanted,
                    max
                );
                max
            } else {
                wanted
            };
            xm_info!(
                "report: service-target kib={=u64} wanted={} target={} floor={} max={}",
                kib,
                wanted,
                target,
                st.floor,
                max
            );
            if target != st.target || !st.reached {
                st.since = xenmem::timer::now();
            }
            st.target = target;
            st.reached = false;
            Ok(None)
        }
        Watched::Shutdown => {
            let v = match ctl.read(SHUTDOWN_KEY) {
                Ok(v) => v.unwrap_or_default(),
                Err(ControlError::Store(err)) => {
                    xm_warn!(
                        "service: reading {=str}: {=str}",
                        SHUTDOWN_KEY,
                        err.as_str()
                    );
                    return Ok(None);
                }
                Err(err) => return Err(err),
            };
            let req = request(&v);
            if req == Request::Nothing {
                return Ok(None);
            }
            // Acknowledge, as Linux does, so the toolstack sees it taken.
            if let Err(err) = ctl.write(SHUTDOWN_KEY, "") {
                xm_warn!(
                    "service: acknowledging {=str}: {}",
                    SHUTDOWN_KEY,
                    defmt_display(&err)
                );
            }
            match req {
                Request::Poweroff => {
                    xm_info!("report: service-shutdown request=poweroff");
                    Ok(Some(Ended::Poweroff))
                }
                Request::Reboot => {
                    xm_info!("report: service-shutdown request=reboot");
                    Ok(Some(Ended::Reboot))
                }
                Request::Unsupported => {
                    xm_warn!(
                        "service: control/shutdown = \"{=str}\" is not supported; running on",
                        printable(&v)
                    );
                    xm_info!("report: service-shutdown request=refused");
                    Ok(None)
                }
                Request::Nothing => Ok(None),
            }
        }
    }
}

/// `v` if it is short printable ASCII, else a placeholder (log lines stay
/// one line and parseable).
fn printable(v: &str) -> &str {
    if v.len() <= 64 && v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"') {
        v
    } else {
        "<unprintable>"
    }
}

/// Show a `Display` value in a log line (with or without defmt).
#[cfg(feature = "defmt")]
fn defmt_display<T: core::fmt::Display>(v: &T) -> defmt::Display2Format<'_, T> {
    defmt::Display2Format(v)
}

#[cfg(not(feature = "defmt"))]
fn defmt_display<T: core::fmt::Display>(v: &T) -> &T {
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::{BTreeMap, VecDeque};
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use xenmem::addr::{DomId, Gfn, Order};
    use xenmem::layout::{initial_table, GapPolicy};
    use xenmem::memmap::MemoryMap;
    use xenmem::reservation::Strategy;
    use xenmem::special;
    use xenmem_model::{DomainConfig, XenModel};

    const MIB: u64 = 256;
    /// What Xen counts beside RAM for an xl-made PVH domU.
    const SPECIAL: u64 = 17;

    /// A scripted xenstore: an event is handed out by a blocking `next` (the
    /// toolstack acts once the service waits), or, with `Some(at)`, also by
    /// a non-blocking one once `next(false)` has been called `at` times (the
    /// toolstack acts mid-way); its write is applied just then.
    /// A scripted event: when it may come, which watch, what the toolstack
    /// wrote.
    type Step = (Option<usize>, Watched, Option<(&'static str, &'static str)>);

    struct Script {
        store: BTreeMap<String, String>,
        events: VecDeque<Step>,
        polls: usize,
        writes: Vec<(String, String)>,
        refuse: Vec<&'static str>,
        /// Reads of these keys fail with EIO.
        fail_reads: Vec<&'static str>,
        /// The connection breaks once `next(false)` was called this often.
        break_after: Option<usize>,
        /// Whether it comes back after the first park.
        recover: bool,
        parks: u32,
    }

    impl Script {
        fn new(events: &[Step]) -> Self {
            let mut store = BTreeMap::new();
            store.insert(TARGET_KEY.to_string(), (256 * 1024).to_string());
            Script {
                store,
                events: events.iter().cloned().collect(),
                polls: 0,
                writes: Vec::new(),
                refuse: alloc::vec![FEATURE_BALLOON_KEY],
                fail_reads: Vec::new(),
                break_after: None,
                recover: false,
                parks: 0,
            }
        }

        fn deliver(&mut self) -> Option<Watched> {
            let (_, w, set) = self.events.pop_front()?;
            if let Some((k, v)) = set {
                self.store.insert(k.to_string(), v.to_string());
            }
            Some(w)
        }
    }

    impl Control for Script {
        fn read(&mut self, path: &str) -> Result<Option<String>, ControlError> {
            if self.fail_reads.contains(&path) {
                return Err(ControlError::Store("EIO".into()));
            }
            Ok(self.store.get(path).cloned())
        }

        fn write(&mut self, path: &str, value: &str) -> Result<(), ControlError> {
            if self.refuse.contains(&path) {
                return Err(ControlError::Store("EACCES".into()));
            }
            self.writes.push((path.to_string(), value.to_string()));
            self.store.insert(path.to_string(), value.to_string());
            Ok(())
        }

        fn watch(&mut self) -> Result<(), ControlError> {
            // xenstored fires each watch once on registration.
            self.events.push_front((Some(0), Watched::Shutdown, None));
            self.events.push_front((Some(0), Watched::Target, None));
            Ok(())
        }

        fn park(&mut self) -> bool {
            self.parks += 1;
            // xenstored "comes back" once.
            self.parks == 1 && self.recover
        }

        fn next(&mut self, wait: bool) -> Result<Option<Watched>, ControlError> {
            if let Some(n) = self.break_after {
                if self.polls >= n && self.parks == 0 {
                    return Err(ControlError::Broken("the ring is corrupt".into()));
                }
            }
            if wait {
                return match self.deliver() {
                    Some(w) => Ok(Some(w)),
                    None => Err(ControlError::Broken("the script ended".into())),
                };
            }
            self.polls += 1;
            match self.events.front() {
                Some(&(Some(at), ..)) if at <= self.polls => Ok(self.deliver()),
                _ => Ok(None),
            }
        }
    }

    /// An xl-made PVH domU of 256 MiB on the model, its table with the
    /// special pages found, and an engine at Xen's count.
    fn domu() -> (XenModel, RegionTable) {
        let m = XenModel::new(1 << 18);
        let cfg = DomainConfig::xl_pvh_domu(DomId(1), MIB * 256);
        let e820 = cfg.e820.clone().unwrap();
        m.add_domain(cfg).unwrap();
        m.set_current(DomId(1)).unwrap();
        let map = MemoryMap::from_e820(&e820).unwrap();
        let mut t = initial_table(&map, GapPolicy::X86, Gfn(1 << 20), &[]).unwrap();
        // The agent's own pages: 1 MiB at 1 MiB.
        t.modify(
            xenmem::region::FrameRange::from_frames(Gfn(0x100), Gfn(0x200)).unwrap(),
            xenmem::region::Change {
                kind: Some(RegionKind::Reserved(ReservedUse::Image)),
                ..Default::default()
            },
        )
        .unwrap();
        let (c, skipped) = special::candidates(&map, &special::param_frames(&m));
        let f = special::probe(&m, &c, Gfn(5), skipped).unwrap();
        special::record(&mut t, &f).unwrap();
        (m, t)
    }

    fn run(m: &XenModel, t: &mut RegionTable, ctl: &mut Script) -> (Ended, Vec<u64>) {
        let cur = m.current_reservation(DomId::SELF).unwrap();
        let features = m.features().unwrap();
        let mut e = Engine::new(m, Strategy::xenmem(Order::new_const(9)), cur, features);
        let mut seen = Vec::new();
        let mut verify = |e: &mut Engine<'_, XenModel>, t: &RegionTable| {
            let cur = e.verify().ok()?;
            let table = t.count_where(|r| r.kind.is_populated_ram());
            (table == cur).then(|| {
                seen.push(cur.0);
                cur
            })
        };
        let end = serve(m, &mut e, t, PageCount(MIB * 256), ctl, &mut verify);
        (end, seen)
    }

    fn pages(mib: u64) -> u64 {
        mib * 256 + SPECIAL
    }

    #[test]
    fn targets_are_reached_exactly_and_poweroff_ends_it() {
        let (m, mut t) = domu();
        let mut ctl = Script::new(&[
            (None, Watched::Target, Some((TARGET_KEY, "65536"))),
            (None, Watched::Target, Some((TARGET_KEY, "204800"))),
            (None, Watched::Target, Some((TARGET_KEY, "131072"))),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, "poweroff"))),
        ]);
        let (end, seen) = run(&m, &mut t, &mut ctl);
        assert_eq!(end, Ended::Poweroff);
        // Every step was checked against Xen; the last target is reached.
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(128));
        assert!(seen.contains(&pages(64)) && seen.contains(&pages(200)));
        // At most STEP pages per step: 192 MiB down is 6 steps.
        assert!(seen.windows(2).all(|w| w[0].abs_diff(w[1]) <= STEP));
        // The request was acknowledged by clearing the key.
        assert!(ctl
            .writes
            .contains(&(SHUTDOWN_KEY.to_string(), String::new())));
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_new_target_supersedes_the_old_one_mid_way() {
        let (m, mut t) = domu();
        // 64 MiB asked; after two steps (64 MiB gone) 200 MiB is asked.
        let mut ctl = Script::new(&[
            (None, Watched::Target, Some((TARGET_KEY, "65536"))),
            (Some(6), Watched::Target, Some((TARGET_KEY, "204800"))),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, "reboot"))),
        ]);
        let (end, seen) = run(&m, &mut t, &mut ctl);
        assert_eq!(end, Ended::Reboot);
        // Two steps down were taken, then the new target turned it round.
        assert!(seen.contains(&(pages(256) - 2 * STEP)), "{seen:?}");
        assert!(
            !seen.contains(&pages(64)),
            "the old target was reached: {seen:?}"
        );
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(200));
    }

    #[test]
    fn malformed_and_out_of_range_targets() {
        let (m, mut t) = domu();
        let fl = floor(&t);
        let mut ctl = Script::new(&[
            (None, Watched::Target, Some((TARGET_KEY, "65536"))),
            (None, Watched::Target, Some((TARGET_KEY, "abc"))),
            (None, Watched::Target, Some((TARGET_KEY, "-5"))),
            (None, Watched::Target, Some((TARGET_KEY, ""))),
            (
                None,
                Watched::Target,
                Some((TARGET_KEY, "99999999999999999999999")),
            ),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, "suspend"))),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, ""))),
        ]);
        let (end, _) = run(&m, &mut t, &mut ctl);
        // The script ran out while the service kept running.
        assert_eq!(end, Ended::Failed);
        // Malformed values kept the last good target; suspend was refused.
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(64));
        // Below the floor: the floor is reached, not the target.
        let mut ctl = Script::new(&[(None, Watched::Target, Some((TARGET_KEY, "1024")))]);
        let (m, mut t) = domu();
        run(&m, &mut t, &mut ctl);
        assert_eq!(m.current_reservation(DomId::SELF).unwrap(), fl);
        // Above the map (and max_pages): clamped to what the map holds.
        let mut ctl = Script::new(&[(None, Watched::Target, Some((TARGET_KEY, "1048576")))]);
        let (m, mut t) = domu();
        run(&m, &mut t, &mut ctl);
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(MIB));
        m.check_conservation().unwrap();
    }

    #[test]
    fn values() {
        assert_eq!(parse_target_kib("65536"), Some(65536));
        assert_eq!(parse_target_kib("65536\0"), Some(65536));
        for bad in [
            "",
            "abc",
            "-5",
            "1.5",
            " 5",
            "5 ",
            "99999999999999999999999",
            "0x10",
        ] {
            assert_eq!(parse_target_kib(bad), None, "{bad:?}");
        }
        assert_eq!(parse_target_kib("2000000000000"), None);
        assert_eq!(request("poweroff"), Request::Poweroff);
        assert_eq!(request("halt"), Request::Poweroff);
        assert_eq!(request("reboot"), Request::Reboot);
        assert_eq!(request("suspend"), Request::Unsupported);
        assert_eq!(request(""), Request::Nothing);
        assert_eq!(printable("a\"b"), "<unprintable>");
    }

    #[test]
    fn the_real_xenstore_client_drives_it() {
        use core::cell::RefCell;
        use xenmem::xenstore::XsClient;
        use xenmem_model::xenstore::XsModel;
        let (m, mut t) = domu();
        let xs = RefCell::new(XsModel::new(1, u32::MAX - 300));
        xs.borrow_mut().external_write("memory/target", b"262144");
        // What the toolstack does each time the service waits with nothing
        // to do: xl mem-set 64, a malformed value, xl mem-set 128, xl
        // shutdown.
        let script: RefCell<VecDeque<(&str, &[u8])>> = RefCell::new(
            [
                ("memory/target", &b"65536"[..]),
                ("memory/target", b"lots"),
                ("memory/target", b"131072"),
                ("control/shutdown", b"poweroff"),
            ]
            .into_iter()
            .collect(),
        );
        let waits = core::cell::Cell::new(0u32);
        let notify = |_| {
            xs.borrow_mut().notify();
            Ok(())
        };
        let wait = |_| {
            waits.set(waits.get() + 1);
            if waits.get() > 100_000 {
                return Err(xenmem::xen::XenError::Contract("the test ran away"));
            }
            let mut x = xs.borrow_mut();
            // The toolstack acts only while the service waits for an event
            // (no request in the ring, no reply on its way).
            let (req_cons, req_prod, rsp_cons, rsp_prod) = x.indices();
            if x.queued() == 0 && req_cons == req_prod && rsp_cons == rsp_prod {
                if let Some((k, v)) = script.borrow_mut().pop_front() {
                    x.external_write(k, v);
                }
            }
            x.step();
            Ok(())
        };
        let page = xs.borrow().page();
        // SAFETY: the model owns the page and outlives the client.
        let client = unsafe { XsClient::new(page, 5, notify, wait, 8) };
        let mut ctl = XsControl {
            xs: client,
            park: || false,
        };
        let cur = m.current_reservation(DomId::SELF).unwrap();
        let features = m.features().unwrap();
        let mut e = Engine::new(&m, Strategy::xenmem(Order::new_const(9)), cur, features);
        let mut verify = |e: &mut Engine<'_, XenModel>, _: &RegionTable| e.verify().ok();
        let end = serve(
            &m,
            &mut e,
            &mut t,
            PageCount(MIB * 256),
            &mut ctl,
            &mut verify,
        );
        drop(ctl);
        assert_eq!(end, Ended::Poweroff);
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(128));
        assert!(script.borrow().is_empty());
        // Acknowledged; feature-balloon written (the model allows it).
        let x = xs.borrow();
        assert_eq!(x.value(&x.absolute("control/shutdown")), Some(&b""[..]));
        assert_eq!(
            x.value(&x.absolute("control/feature-balloon")),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn a_read_error_keeps_the_target_and_a_broken_connection_parks() {
        // EIO reading memory/target: the target is kept, the service runs on.
        let (m, mut t) = domu();
        let mut ctl = Script::new(&[
            (None, Watched::Target, Some((TARGET_KEY, "65536"))),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, "poweroff"))),
        ]);
        ctl.fail_reads.push(TARGET_KEY);
        let (end, _) = run(&m, &mut t, &mut ctl);
        assert_eq!(end, Ended::Poweroff);
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(256));
        // The connection breaks mid-way down to 64 MiB: the reservation is
        // kept where it is (Xen and the table agree), the service parks;
        // xenstored comes back, the watches are set again and the target
        // (read again at once) is reached.
        let (m, mut t) = domu();
        let mut ctl = Script::new(&[
            (None, Watched::Target, Some((TARGET_KEY, "65536"))),
            (None, Watched::Shutdown, Some((SHUTDOWN_KEY, "poweroff"))),
        ]);
        ctl.break_after = Some(5);
        ctl.recover = true;
        let (end, seen) = run(&m, &mut t, &mut ctl);
        assert_eq!(end, Ended::Poweroff);
        assert_eq!(ctl.parks, 1);
        assert!(seen.contains(&(pages(256) - 2 * STEP)), "{seen:?}");
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, pages(64));
        // It never comes back: the run ends failed, the reservation as it
        // was when the connection broke.
        let (m, mut t) = domu();
        let mut ctl = Script::new(&[(None, Watched::Target, Some((TARGET_KEY, "65536")))]);
        ctl.break_after = Some(5);
        let (end, seen) = run(&m, &mut t, &mut ctl);
        assert_eq!(end, Ended::Failed);
        let now = m.current_reservation(DomId::SELF).unwrap().0;
        assert_eq!(Some(&now), seen.last());
        assert!(now > pages(64));
        m.check_conservation().unwrap();
    }
}
