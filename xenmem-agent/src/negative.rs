//! `negative=`: hypercalls whose answers Xen's own test suites know, made
//! through the library, with the library's typed answer to each refusal and
//! the region table and Xen's count checked unchanged afterwards.
//!
//! Every check uses one frame, the highest free RAM frame, released and
//! populated once first ([`warm_up`]) so that the identity map's page
//! table for it is made before the table's snapshot is taken.
//!
//! - **XSA-277** (XTF `tests/xsa-277`): `decrease_reservation` of the same
//!   frame three times. The first goes through the reservation engine
//!   ([`Engine::release_frames`]); the two repeats go straight to
//!   [`Hypervisor::decrease_reservation`], since the engine refuses a frame
//!   it has ballooned before asking Xen ([`ReservationError::NotFree`], the
//!   library's answer, asked once more afterwards). Reported:
//!   `report: neg-xsa277 results=A,B,C library=NAME library_hypercalls=N`.
//! - **XSA-472-3**: release then populate the same frame
//!   ([`Engine::populate_frames`]), [`XSA472_ITERATIONS`] times, as XTF's
//!   loop does. Reported: the first pair that is not `1,1` (or `1,1`), and
//!   how many pairs were `1,1`.
//! - **XSA-231**: the frame ballooned, `populate_frames` of it with NUMA node
//!   bits in `mem_flags` that Xen must refuse (see [`node_sweep`]); each
//!   refusal is Xen's 0 and the engine's
//!   [`ReservationError::Shortfall`]; anything populated is counted and
//!   given back at once. Then a populate without flags brings it back.
//! - **acquire_resource** (Xen's `tools/tests/resource`): the grant-table
//!   size query of another domain (a helper this run creates with
//!   `negative-gnttab=` frames, or the `peer=` domain), a map of that many
//!   frames in one call (more than Xen's batches of 32), read back, a map
//!   one frame past the end (refused: [`AcquireError::OutOfRange`]), and
//!   the release. An unprivileged caller reports the refusal of the size
//!   query instead.
//!
//! The agent does not judge Xen's answers: the runner compares them with
//! the known ones. The run fails on what the agent itself must keep: the
//! table (its digest) and Xen's count the same before and after
//! (`report: neg-after`), every handle released, no library error other
//! than the refusals asked for.

use alloc::string::String;
use core::fmt::Write;

use crate::agent::{account, Survey};
use crate::arch::Verdict;
use crate::cmdline::{NegativeSet, Options};
use xenmem::acquire::{self, AcquireError, Resource, ResourceMap};
use xenmem::addr::{DomId, Order, PageCount, PAGE_SIZE};
use xenmem::grant::Bytes;
use xenmem::mapping::{MapTarget, VaSpace};
use xenmem::region::{FrameRange, RegionKind, RegionTable};
use xenmem::reservation::{self, Engine, ReservationError, Strategy};
use xenmem::xen::domctl::{CreateDomain, DEFAULT_MAX_GRANT_FRAMES};
use xenmem::xen::{Features, Hypervisor, MemFlags, XenError};

/// Decrease/populate pairs of the XSA-472-3 loop (XTF's `MAX_ITER`).
pub const XSA472_ITERATIONS: u32 = 100;

/// Xen 4.17's `MAX_NUMNODES` on this architecture: 64 on x86
/// (`NODES_SHIFT` 6), 1 on Arm (no NUMA).
pub const MAX_NUMNODES: u8 = if cfg!(target_arch = "aarch64") { 1 } else { 64 };

/// The `mem_flags` whose populate Xen must refuse (0 extents) for this
/// caller on a one-node machine (`propagate_node`, `get_free_buddy`):
/// - the hardware/control domain: every exact request but node 0's (nodes
///   1 to `MAX_NUMNODES - 1` have no memory, the rest are out of range),
///   and every plain node from `MAX_NUMNODES` on;
/// - any other domain: every exact request (a plain node is ignored).
///
/// Node 255 is left out: its field spills into the populate-on-demand bit.
pub fn node_sweep(privileged: bool) -> impl Iterator<Item = MemFlags> {
    let exact_from = u8::from(privileged);
    let plain_from = if privileged { MAX_NUMNODES } else { u8::MAX };
    (exact_from..u8::MAX)
        .filter_map(MemFlags::exact_node)
        .chain((plain_from..u8::MAX).filter_map(MemFlags::node))
}

/// What Xen answered one reservation call: extents done, or an error (which
/// Xen never returns for these; the trait allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Extents done.
    Extents(u64),
    /// An error.
    Error(XenError),
}

impl core::fmt::Display for Answer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Answer::Extents(n) => write!(f, "{n}"),
            Answer::Error(XenError::Errno(e)) => write!(f, "{}", e.name()),
            Answer::Error(_) => write!(f, "error"),
        }
    }
}

impl From<Result<usize, XenError>> for Answer {
    fn from(r: Result<usize, XenError>) -> Self {
        match r {
            Ok(n) => Answer::Extents(n as u64),
            Err(e) => Answer::Error(e),
        }
    }
}

/// One call through the engine: what Xen answered (the extents the engine
/// recorded Xen doing), the hypercalls the engine made, and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Extents Xen did, by the engine's count of its answers.
    pub extents: u64,
    /// Hypercalls the engine made (0: it refused before asking Xen).
    pub hypercalls: u64,
    /// The library's answer.
    pub result: Result<(), ReservationError>,
}

fn step<H: Hypervisor>(
    e: &mut Engine<'_, H>,
    f: impl FnOnce(&mut Engine<'_, H>) -> Result<(), ReservationError>,
) -> Step {
    let (x, h) = (e.stats.extents[0], e.stats.hypercalls);
    let result = f(e);
    Step {
        extents: e.stats.extents[0] - x,
        hypercalls: e.stats.hypercalls - h,
        result,
    }
}

/// A short name of the library's answer, for reports.
pub fn reservation_name(r: &Result<(), ReservationError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(ReservationError::Xen { .. }) => "xen",
        Err(ReservationError::Table(_)) => "table",
        Err(ReservationError::Shortfall { .. }) => "shortfall",
        Err(ReservationError::Inconsistent { .. }) => "inconsistent",
        Err(ReservationError::DirectMapped) => "direct-mapped",
        Err(ReservationError::IdentityMap(_)) => "identity-map",
        Err(ReservationError::NotFree(_)) => "not-free",
        Err(ReservationError::NotBallooned(_)) => "not-ballooned",
        Err(ReservationError::OutOfMemory(_)) => "out-of-memory",
        Err(_) => "other",
    }
}

/// A short name of an acquisition's refusal, for reports.
pub fn acquire_name(e: &AcquireError) -> &'static str {
    match e {
        AcquireError::NoSuchDomain(_) => "no-such-domain",
        AcquireError::OwnDomain(_) => "own-domain",
        AcquireError::NotPermitted(_) => "not-permitted",
        AcquireError::NotHardwareDomain => "not-hardware-domain",
        AcquireError::OutOfRange { .. } => "out-of-range",
        AcquireError::SelfDomain => "self-domain",
        AcquireError::Xen(_) => "xen",
        _ => "other",
    }
}

/// What the XSA-277 sequence gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xsa277 {
    /// Xen's answers to the three decreases.
    pub results: [Answer; 3],
    /// The library's answer to a fourth release of the frame.
    pub library: Step,
}

/// What the XSA-472-3 loop gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xsa472 {
    /// Pairs done.
    pub iterations: u32,
    /// The first pair (decrease, populate) that differs from `1,1`, or
    /// `1,1` if none does.
    pub results: (u64, u64),
    /// Pairs that were `1,1`.
    pub ok: u32,
}

/// What the XSA-231 sweep gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xsa231 {
    /// Populate calls made with node bits.
    pub calls: u32,
    /// Of them, answered with 0 extents.
    pub zero: u32,
    /// Of them, populated (given back at once).
    pub populated: u32,
    /// The library's answer to the first refused one (all of them, when
    /// `same` says so).
    pub library: Result<(), ReservationError>,
    /// Every refused call got the same answer from the library.
    pub same: bool,
    /// The populate without flags afterwards.
    pub control: u64,
}

/// The frame the reservation checks use: the highest free RAM frame,
/// released and populated once through `e` so that the identity map has
/// its page table for it now (taken from free RAM, once), not during the
/// checks. `None` (logged) if there is none or it did not come back.
pub fn warm_up<H: Hypervisor>(e: &mut Engine<'_, H>, t: &mut RegionTable) -> Option<FrameRange> {
    let Some(g) = t
        .highest_aligned_extents(RegionKind::Ram, Order::ZERO, 1)
        .next()
    else {
        xm_error!("negative: no free RAM frame");
        return None;
    };
    let warm = step(e, |e| e.release_frames(t, g));
    let back = step(e, |e| e.populate_frames(t, g, MemFlags::NONE));
    if warm.result.is_err() || back.result.is_err() {
        xm_error!(
            "negative: frame {} did not go and come back: {=str}/{=str}",
            g.start(),
            reservation_name(&warm.result),
            reservation_name(&back.result)
        );
        restore(e, t, g);
        return None;
    }
    Some(g)
}

/// The reservation half of the run (XSA-277, -472-3, -231) on frame `g`
/// (free RAM, see [`warm_up`]), through `e`; `None` (logged) when something
/// the run must keep broke. The frame is left as it was found.
pub fn reservation_checks<H: Hypervisor>(
    hv: &H,
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    g: FrameRange,
    set: NegativeSet,
    privileged: bool,
) -> Option<(Option<Xsa277>, Option<Xsa472>, Option<Xsa231>)> {
    let mut x277 = None;
    let mut x472 = None;
    let mut x231 = None;
    if set.contains(NegativeSet::XSA277) {
        x277 = Some(xsa277(hv, e, t, g)?);
    }
    if set.contains(NegativeSet::XSA472) {
        x472 = Some(xsa472(e, t, g)?);
    }
    if set.contains(NegativeSet::XSA231) {
        x231 = Some(xsa231(e, t, g, privileged)?);
    }
    Some((x277, x472, x231))
}

/// Bring `g` back (ballooned by a check that stopped), logged.
fn restore<H: Hypervisor>(e: &mut Engine<'_, H>, t: &mut RegionTable, g: FrameRange) {
    if t.region_at(g.start()).map(|r| r.kind) == Some(RegionKind::Ballooned) {
        if let Err(err) = e.populate_frames(t, g, MemFlags::NONE) {
            xm_error!("negative: repopulating {}: {}", g.start(), disp(&err));
        }
    }
}

fn xsa277<H: Hypervisor>(
    hv: &H,
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    g: FrameRange,
) -> Option<Xsa277> {
    let first = step(e, |e| e.release_frames(t, g));
    if let Err(err) = first.result {
        xm_error!("neg-xsa277: first release: {}", disp(&err));
        restore(e, t, g);
        return None;
    }
    let again = || {
        // The mutant populates the frame again before each repeat.
        if crate::mutant::is("xsa277-repopulated") {
            let mut back = [g.start()];
            let _ = hv.populate_physmap(DomId::SELF, Order::ZERO, MemFlags::NONE, &mut back);
        }
        Answer::from(hv.decrease_reservation(DomId::SELF, Order::ZERO, &[g.start()]))
    };
    let results = [Answer::Extents(first.extents), again(), again()];
    let library = step(e, |e| e.release_frames(t, g));
    restore(e, t, g);
    let mut line = String::new();
    let _ = write!(line, "{},{},{}", results[0], results[1], results[2]);
    xm_info!(
        "report: neg-xsa277 gfn={} results={=str} library={=str} library_hypercalls={=u64}",
        g.start(),
        line.as_str(),
        reservation_name(&library.result),
        library.hypercalls
    );
    Some(Xsa277 { results, library })
}

fn xsa472<H: Hypervisor>(
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    g: FrameRange,
) -> Option<Xsa472> {
    let mut out = Xsa472 {
        iterations: 0,
        results: (1, 1),
        ok: 0,
    };
    for _ in 0..XSA472_ITERATIONS {
        let d = step(e, |e| e.release_frames(t, g));
        let p = step(e, |e| e.populate_frames(t, g, MemFlags::NONE));
        out.iterations += 1;
        if (d.extents, p.extents) == (1, 1) {
            out.ok += 1;
        } else if out.results == (1, 1) {
            out.results = (d.extents, p.extents);
        }
        if let Err(err) = d.result.and(p.result) {
            xm_error!(
                "neg-xsa472: iteration {=u32}: {}",
                out.iterations,
                disp(&err)
            );
            restore(e, t, g);
            return None;
        }
    }
    xm_info!(
        "report: neg-xsa472 gfn={} iterations={=u32} results={=u64},{=u64} ok={=u32}",
        g.start(),
        out.iterations,
        out.results.0,
        out.results.1,
        out.ok
    );
    Some(out)
}

fn xsa231<H: Hypervisor>(
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    g: FrameRange,
    privileged: bool,
) -> Option<Xsa231> {
    if let Err(err) = e.release_frames(t, g) {
        xm_error!("neg-xsa231: release: {}", disp(&err));
        restore(e, t, g);
        return None;
    }
    let mut out = Xsa231 {
        calls: 0,
        zero: 0,
        populated: 0,
        library: Ok(()),
        same: true,
        control: 0,
    };
    let mut first_refusal = None;
    for f in node_sweep(privileged) {
        // The mutant's sweep never passes its node bits to Xen.
        let f = if crate::mutant::is("xsa231-no-node") {
            MemFlags::NONE
        } else {
            f
        };
        let s = step(e, |e| e.populate_frames(t, g, f));
        out.calls += 1;
        if s.extents == 0 {
            out.zero += 1;
            match first_refusal {
                None => first_refusal = Some(s.result),
                Some(r) => out.same &= r == s.result,
            }
        } else {
            out.populated += 1;
            xm_warn!(
                "neg-xsa231: mem_flags {=u32:#x} populated {}",
                f.raw(),
                g.start()
            );
            // Give it back at once: the sweep goes on from a ballooned frame.
            if let Err(err) = e.release_frames(t, g) {
                xm_error!("neg-xsa231: release: {}", disp(&err));
                restore(e, t, g);
                return None;
            }
        }
    }
    out.library = first_refusal.unwrap_or(Ok(()));
    let control = step(e, |e| e.populate_frames(t, g, MemFlags::NONE));
    out.control = control.extents;
    if let Err(err) = control.result {
        xm_error!("neg-xsa231: populate without flags: {}", disp(&err));
        return None;
    }
    xm_info!(
        "report: neg-xsa231 gfn={} calls={=u32} zero={=u32} populated={=u32} library={=str} same={=str} control={=u64}",
        g.start(),
        out.calls,
        out.zero,
        out.populated,
        reservation_name(&out.library),
        if out.same { "yes" } else { "no" },
        out.control
    );
    Some(out)
}

/// What the acquire_resource checks gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// The domain acquired from.
    pub target: DomId,
    /// The size query's answer (frames).
    pub size: u32,
    /// Frames mapped in one call.
    pub mapped: u64,
    /// Every frame read back through the mapping.
    pub readable: bool,
    /// The library's answer to a map one frame past the end.
    pub past: Option<AcquireError>,
}

/// Acquire `target`'s grant table: size, a map of all of it, one frame past
/// the end, release. `Err` for a refusal of the size query (typed, nothing
/// left behind) or of the map.
pub fn acquire_checks<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    target: DomId,
) -> Result<Acquired, AcquireError> {
    let size = acquire::grant_table_size(hv, target)?;
    let m = acquire::acquire(
        hv,
        t,
        pt,
        vas,
        target,
        Resource::GrantTableShared,
        0,
        size,
        false,
    )?;
    let mut readable = true;
    for i in 0..m.frames().0 {
        readable &= m.read_obj::<u64>(i * PAGE_SIZE + PAGE_SIZE - 8).is_ok()
            && m.read_obj::<u64>(i * PAGE_SIZE).is_ok();
    }
    let mapped = m.frames().0;
    release(hv, t, pt, vas, m)?;
    let past = acquire::acquire(
        hv,
        t,
        pt,
        vas,
        target,
        Resource::GrantTableShared,
        u64::from(size),
        1,
        false,
    );
    let past = match past {
        Ok(m) => {
            release(hv, t, pt, vas, m)?;
            None
        }
        Err(e) => Some(e),
    };
    Ok(Acquired {
        target,
        size,
        mapped,
        readable,
        past,
    })
}

/// Release `m`, once more if the first attempt stopped part-way.
fn release<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    m: ResourceMap,
) -> Result<(), AcquireError> {
    match m.release(hv, t, pt, vas) {
        Ok(()) => Ok(()),
        Err(e) => e
            .into_parts()
            .0
            .release(hv, t, pt, vas)
            .map_err(|e| e.into_error()),
    }
}

/// The acquire half: from the `peer` domain, or (privileged, no peer) a
/// helper created here with `gnttab` frames and destroyed afterwards; an
/// unprivileged caller's size query of dom0 must be refused.
pub fn acquire_run<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    privileged: bool,
    peer: Option<DomId>,
    gnttab: Option<u32>,
) -> Verdict {
    if !privileged {
        let target = peer.unwrap_or(DomId(0));
        return match acquire::grant_table_size(hv, target) {
            Ok(n) => {
                xm_info!(
                    "report: neg-acquire target={} size={=u32} refused=no",
                    target,
                    n
                );
                Verdict::Pass
            }
            Err(e) => {
                xm_info!(
                    "report: neg-acquire target={} size=none refused={=str}",
                    target,
                    acquire_name(&e)
                );
                Verdict::Pass
            }
        };
    }
    let ctl = match peer {
        Some(_) => None,
        None => match xenmem::domctl::DomainControl::new(hv) {
            Ok(c) => Some(c),
            Err(e) => {
                xm_error!("neg-acquire: {}", disp(&e));
                return Verdict::Fail;
            }
        },
    };
    let helper = match &ctl {
        None => None,
        Some(c) => {
            let cfg = CreateDomain {
                // The mutant creates the helper with Xen's default table
                // size instead of the one asked for.
                max_grant_frames: Some(if crate::mutant::is("neg-gnttab-default") {
                    DEFAULT_MAX_GRANT_FRAMES
                } else {
                    gnttab.unwrap_or(DEFAULT_MAX_GRANT_FRAMES)
                }),
                ..CreateDomain::native_helper()
            };
            match c.create(&cfg, None) {
                Ok(d) => Some(d),
                Err(e) => {
                    xm_error!("neg-acquire: createdomain: {}", disp(&e));
                    return Verdict::Fail;
                }
            }
        }
    };
    let target = match (&helper, peer) {
        (Some(d), _) => d.domid(),
        (None, Some(p)) => p,
        (None, None) => return Verdict::Fail,
    };
    let r = acquire_checks(hv, t, pt, vas, target);
    let mut v = Verdict::Pass;
    match r {
        Ok(a) => xm_info!(
            "report: neg-acquire target={} helper={=str} size={=u32} mapped={=u64} readable={=str} past={=str}",
            a.target,
            if helper.is_some() { "yes" } else { "no" },
            a.size,
            a.mapped,
            if a.readable { "yes" } else { "no" },
            a.past.as_ref().map_or("mapped", acquire_name)
        ),
        Err(e) => {
            xm_error!("neg-acquire: {}", disp(&e));
            v = Verdict::Fail;
        }
    }
    if let (Some(c), Some(d)) = (&ctl, helper) {
        let id = d.domid();
        match c.destroy(d) {
            Ok(_) => xm_info!("report: neg-helper domid={} destroyed=yes gone=yes", id),
            Err(e) => {
                xm_error!("neg-acquire: destroy: {}", disp(&e));
                v = Verdict::Fail;
            }
        }
    }
    v
}

/// `negative=`: the hook of [`crate::agent::run`]. Reports `neg-frame`,
/// `neg-before` (Xen's count and the table's digest once the frame is
/// ready), each check, and `neg-after` (the same two, which must not have
/// changed, and the table's accounting against Xen's count).
pub fn run<H: Hypervisor>(hv: &H, t: &mut RegionTable, s: &Survey, opts: &Options) -> Verdict {
    let set = opts.negative.unwrap_or_default();
    let Ok(start) = hv.current_reservation(DomId::SELF) else {
        xm_error!("negative: current_reservation failed");
        return Verdict::Fail;
    };
    let mut verdict = Verdict::Pass;
    let mut leaked = PageCount(0);
    let reservation = NegativeSet::XSA277 | NegativeSet::XSA472 | NegativeSet::XSA231;
    let max_order = reservation::xen_max_order(s.privileged);
    let e = Engine::new(hv, Strategy::xenmem(max_order), start, s.features);
    #[cfg(target_os = "none")]
    let e = e.with_identity_map(&xenmem::paging::BootIdentityMap);
    let mut e = e;
    let mut frame = None;
    if set.intersects(reservation) {
        if s.features.contains(Features::DIRECT_MAPPED) {
            // Xen keeps a direct-mapped domain's pages (its count never goes
            // down): the engine refuses to balloon it.
            xm_info!("report: neg-frame skipped=direct-mapped");
        } else {
            let digest = t.digest();
            frame = warm_up(&mut e, t);
            match frame {
                Some(g) => xm_info!(
                    "report: neg-frame gfn={} warmup=yes table_changed={=str}",
                    g.start(),
                    if t.digest() == digest { "no" } else { "yes" }
                ),
                None => return Verdict::Fail,
            }
        }
    }
    let before = match e.verify() {
        Ok(c) => c,
        Err(err) => {
            xm_error!("negative: {}", disp(&err));
            return Verdict::Fail;
        }
    };
    let digest = t.digest();
    xm_info!(
        "report: neg-before current={} table_digest={=u64:#x}",
        before,
        digest
    );
    if let Some(g) = frame {
        if reservation_checks(hv, &mut e, t, g, set, s.privileged).is_none() {
            verdict = Verdict::Fail;
        }
        leaked = PageCount(e.stats.leaked_by_xen);
    }
    if set.contains(NegativeSet::ACQUIRE) && acquire_hook(hv, t, s, opts) == Verdict::Fail {
        verdict = Verdict::Fail;
    }
    let end = match e.verify() {
        Ok(c) => c,
        Err(err) => {
            xm_error!("negative: {}", disp(&err));
            return Verdict::Fail;
        }
    };
    let a = account(t, s, end, leaked);
    let same = t.digest() == digest;
    xm_info!(
        "report: neg-after current={} current_before={} table={=str} table_digest={=u64:#x} unaccounted={=i64}",
        end,
        before,
        if same { "same" } else { "changed" },
        t.digest(),
        a.unaccounted()
    );
    if end != before || !same || a.unaccounted() != 0 {
        xm_error!(
            "negative: Xen's count is {} pages where it was {}, the table {=str}, {=i64} pages unaccounted",
            end,
            before,
            if same { "the same" } else { "changed" },
            a.unaccounted()
        );
        verdict = Verdict::Fail;
    }
    verdict
}

#[cfg(target_os = "none")]
fn acquire_hook<H: Hypervisor>(hv: &H, t: &mut RegionTable, s: &Survey, opts: &Options) -> Verdict {
    let mut pt = match crate::arch::imp::paging::page_tables() {
        Ok(pt) => pt,
        Err(e) => {
            xm_error!("neg-acquire: page tables: {}", disp(&e));
            return Verdict::Fail;
        }
    };
    let mut vas = VaSpace::new(crate::xenview::window(&*pt));
    let v = acquire_run(
        hv,
        t,
        &mut *pt,
        &mut vas,
        s.privileged,
        opts.peer,
        opts.negative_gnttab,
    );
    xm_info!("report: neg-acquire-after window_pages={=u64}", vas.used());
    v
}

#[cfg(not(target_os = "none"))]
fn acquire_hook<H: Hypervisor>(_: &H, _: &mut RegionTable, _: &Survey, _: &Options) -> Verdict {
    xm_info!("report: neg-acquire skipped=host");
    Verdict::Pass
}

/// Show a `Display` value in a log line (with or without defmt).
#[cfg(feature = "defmt")]
fn disp<T: core::fmt::Display>(v: &T) -> defmt::Display2Format<'_, T> {
    defmt::Display2Format(v)
}

#[cfg(not(feature = "defmt"))]
fn disp<T: core::fmt::Display>(v: &T) -> &T {
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{build_table, run as agent_run, survey};
    use xenmem::addr::Gfn;
    use xenmem_model::window::BufTables;
    use xenmem_model::{DomainConfig, Fault, Op, XenModel};

    use crate::agent::test_boot::pvh as boot;

    fn model(cfg: DomainConfig) -> XenModel {
        let m = XenModel::new(1 << 16);
        let id = cfg.domid;
        m.add_domain(cfg).unwrap();
        m.set_current(id).unwrap();
        m
    }

    /// The model's answers to the three sequences, as the agent reads them,
    /// and the table and Xen's count as they were.
    fn sequences(m: &XenModel, privileged: bool) -> (Xsa277, Xsa472, Xsa231) {
        let b = boot(b"");
        let s = survey(m, &b, &Options::default()).unwrap();
        let mut t = build_table(&s, &b, None).unwrap();
        let mut e = Engine::new(
            m,
            Strategy::xenmem(Order::new_const(9)),
            s.current,
            s.features,
        );
        let g = warm_up(&mut e, &mut t).unwrap();
        let before = t.clone();
        let (a, b, c) =
            reservation_checks(m, &mut e, &mut t, g, NegativeSet::all(), privileged).unwrap();
        assert_eq!(t, before);
        assert_eq!(e.verify(), Ok(s.current));
        assert_eq!(account(&t, &s, s.current, PageCount(0)).unaccounted(), 0);
        m.check_conservation().unwrap();
        (a.unwrap(), b.unwrap(), c.unwrap())
    }

    #[test]
    fn the_sequences_give_xtfs_answers_typed() {
        let refused = Err(ReservationError::Shortfall {
            asked: PageCount(1),
            done: PageCount(0),
        });
        for (cfg, privileged, calls) in [
            (DomainConfig::pvh_dom0(4096), true, 254 + 191),
            (DomainConfig::pvh_domu(DomId(3), 4096), false, 255),
        ] {
            let m = model(cfg);
            let (a, b, c) = sequences(&m, privileged);
            assert_eq!(
                a.results,
                [Answer::Extents(1), Answer::Extents(0), Answer::Extents(0)]
            );
            assert_eq!(a.library.hypercalls, 0);
            assert!(matches!(
                a.library.result,
                Err(ReservationError::NotFree(_))
            ));
            assert_eq!(
                b,
                Xsa472 {
                    iterations: XSA472_ITERATIONS,
                    results: (1, 1),
                    ok: XSA472_ITERATIONS
                }
            );
            assert_eq!(
                c,
                Xsa231 {
                    calls,
                    zero: calls,
                    populated: 0,
                    library: refused,
                    same: true,
                    control: 1
                }
            );
        }
        assert_eq!(node_sweep(true).count(), 445);
        assert_eq!(node_sweep(false).count(), 255);
        assert!(node_sweep(true).all(|f| f.raw() & MemFlags::POPULATE_ON_DEMAND == 0));
    }

    #[test]
    fn the_whole_run_passes_and_leaves_everything_as_it_was() {
        let m = model(DomainConfig::pvh_dom0(4096));
        let o = agent_run(&m, &boot(b"negative=all"), None);
        assert_eq!(o.verdict, Verdict::Pass);
        assert_eq!(m.current_reservation(DomId::SELF), Ok(PageCount(4096)));
        assert!(m.leaked(DomId(0)).is_empty());
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_frame_xen_does_not_give_back_fails_the_run() {
        // Xen refuses the warm-up's populate: the frame stays out.
        let m = model(DomainConfig::pvh_dom0(4096));
        m.inject(Fault::ShortAt {
            op: Op::PopulatePhysmap,
            after_extents: 0,
        });
        assert_eq!(
            agent_run(&m, &boot(b"negative=xsa277"), None).verdict,
            Verdict::Fail
        );
        // An error inside the XSA-472-3 loop (the frame is brought back):
        // a library error the run did not ask for fails it.
        let m = model(DomainConfig::pvh_dom0(4096));
        m.inject(Fault::ErrnoOnCall {
            op: Op::PopulatePhysmap,
            nth: 4,
            errno: xenmem::xen::Errno::ENOMEM,
        });
        assert_eq!(
            agent_run(&m, &boot(b"negative=xsa472"), None).verdict,
            Verdict::Fail
        );
        assert_eq!(m.current_reservation(DomId::SELF), Ok(PageCount(4096)));
        // A populate that maps nothing but keeps the page (Xen's leak)
        // (the first populate, the warm-up's): Xen's count moves, the run fails.
        let m = model(DomainConfig::pvh_dom0(4096));
        m.inject(Fault::MapFailAt { after_extents: 0 });
        let o = agent_run(&m, &boot(b"negative=xsa231"), None);
        assert_eq!(o.verdict, Verdict::Fail);
    }

    #[test]
    fn the_grant_table_is_sized_mapped_whole_and_released() {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        m.set_current(DomId(0)).unwrap();
        let mut t = RegionTable::new();
        t.add(xenmem::region::Region::new(
            FrameRange::new(Gfn(0x100000), PageCount(0x1000)).unwrap(),
            RegionKind::Hole,
            xenmem::region::RegionFlags::empty(),
        ))
        .unwrap();
        let mut pt = BufTables::new(64).on_model(&m, DomId(0));
        let mut vas = VaSpace::new(pt.window());
        let before = t.clone();
        assert_eq!(
            acquire_run(&m, &mut t, &mut pt, &mut vas, true, None, Some(40)),
            Verdict::Pass
        );
        assert_eq!(t, before);
        assert_eq!(vas.used(), 0);
        assert!(pt.map.is_empty());
        // The helper is gone.
        assert!(m.domain_info(DomId(1)).is_err());
        // The checks themselves, against a helper that stays.
        let cfg = CreateDomain {
            max_grant_frames: Some(40),
            ..CreateDomain::x86_pvh_helper()
        };
        let h = m
            .domctl_createdomain(DomId(0), &mut cfg.to_abi().unwrap())
            .unwrap();
        let a = acquire_checks(&m, &mut t, &mut pt, &mut vas, h).unwrap();
        assert_eq!(
            a,
            Acquired {
                target: h,
                size: 40,
                mapped: 40,
                readable: true,
                past: Some(AcquireError::OutOfRange {
                    frame: 40,
                    count: 1,
                    size: None
                })
            }
        );
        assert_eq!(t, before);
        // An unprivileged caller's query is refused, and that passes.
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(1024)).unwrap();
        m.add_domain(DomainConfig::arm_domu(DomId(1), 1024))
            .unwrap();
        m.set_current(DomId(1)).unwrap();
        assert_eq!(
            acquire::grant_table_size(&m, DomId(0)),
            Err(AcquireError::NotPermitted(DomId(0)))
        );
        assert_eq!(
            acquire_run(&m, &mut t, &mut pt, &mut vas, false, None, None),
            Verdict::Pass
        );
    }
}
