//! In-guest benchmarks (`bench=` on the agent's command line), printed as
//! tables; `cargo xtask bench` boots them and collects the tables.
//!
//! Every measurement is repeated [`Params::reps`] times and reported as its
//! median with the spread (max/min); every figure is either a ratio or is
//! printed beside its baseline from the same boot. Each table row is one
//! `report: bench-<table> key=value ...` line; goals are `report: bench-goal`
//! lines with a `status` of `PASS`, `MISS` or `PENDING`. A missed goal is not
//! a failure of the run: the verdict fails only when something did not work
//! (a hypercall error, Xen and the table disagreeing, memory that does not
//! read back).
//!
//! | set | table | what |
//! |---|---|---|
//! | `balloon` | `bench-balloon`, `bench-balloon-profile`, `bench-balloon-scale` | 256 MiB out and back in with xenmem's strategy, Linux's and Mini-OS's, all on the same arena of frames; the profile replays each strategy's hypercalls without the engine, to split the time between Xen and the guest; the scale row repeats xenmem's round trip over as much free RAM as there is (up to 1 GiB) for hypercalls per GiB |
//! | `floor` | `bench-floor` | writing every byte of the same arena through the identity map, beside xenmem's populate time |
//! | `grant` | `bench-grant`, `bench-grant-profile`, `bench-grant-ceiling`, `bench-helper` | 1024 grants of a helper domain mapped with the grant library one op per hypercall, 64 and 1024 per hypercall (see [`GrantMapper`]); the profile maps them with the hypercalls alone, and the ceiling line fits Xen's batching ceiling (h + p) / p through those rows per repetition ([`batching_ceiling`]) |
//! | `foreign` | `bench-foreign`, `bench-foreign-unmap`, `bench-foreign-unmap-nothing` | 4096 foreign frames (the helper domain's, or Arm's dom0less domU) mapped with `add_to_physmap_batch` at batch sizes 1, 64, 512 and 4096, and unmapped one `remove_from_physmap` per frame and in multicalls ([`Hypervisor::remove_from_physmap_batch`]); the unmap profile times multicalls of 1, 16 and [`MULTICALL_MAX`] entries to split the hypercall's cost from Xen's per entry, and multicalls of frames with nothing mapped (`bench-foreign-unmap-nothing`: each entry ENOENT) for the cost per entry without the p2m change |
//! | `footprint` | `bench-footprint` | image, heap, region sizes, boot stamps |
//!
//! Besides the rows: `bench-context` (clock, role, reservation) first,
//! `bench-balloon-rep` / `bench-floor-rep` / `bench-foreign-rep` per
//! repetition (for profiling; the runner does not render them),
//! `bench-goal` per goal and `bench-done`
//! with the whole run's time on the guest's clock (the runner puts it beside
//! its wall clock, a check of the clock's calibration).
//!
//! The arena: the engine picks the highest free 2 MiB extents; the balloon
//! and floor benchmarks take exactly [`Params::balloon_pages`] of them and pin
//! every other free RAM frame for the duration, so that all three strategies
//! and the floor work on the same frames (and the order-0 strategies do not
//! list all of RAM); the lowest free frames below the arena stay free for the
//! page tables the identity map may need. The pins are removed afterwards;
//! the table ends as it started (but for those page tables on the target),
//! and Xen's reservation too (checked after every repetition).
//!
//! The engine is the agent's own (`agent::engine_with`): on the
//! bare-metal targets it takes ballooned frames out of the boot identity map
//! and puts them back, and that work is part of every round trip measured.
//! The page tables are lent to tables 3 and 4 only afterwards
//! ([`LendMaps`]).
//!
//! The helper domain (tables 3 and 4, privileged agents on Xen 4.17): built
//! with `domctl::CrossDomain` (created paused, never run; given
//! [`Params::grants`] pages whose pattern it checks through a foreign
//! mapping; its grant table acquired and seeded with one grant per page to
//! this domain), plus [`Params::foreign_frames`] more pages for table 4 when
//! no [`Params::foreign_peer`] is given. It is destroyed afterwards, and the
//! region table, the mapping window and the reservation must be as before
//! (`bench-helper` says so; the run fails otherwise).

use alloc::vec::Vec;
use core::fmt;

use crate::agent::Survey;
use crate::arch::Verdict;
use crate::cmdline::BenchSet;
use xenmem::addr::{DomId, Gfn, Order, PageCount, PAGE_SIZE};
use xenmem::domctl::{
    self, CrossDomain, DomainControl, DomctlError, FlowConfig, FlowError, SeededGrant,
};
use xenmem::grant::{self, Bytes, GrantError, GrantMap, GrantRef};
use xenmem::mapping::{MapTarget, VaSpace};
use xenmem::paging::Attrs;
use xenmem::region::{
    Backing, Change, FrameRange, Region, RegionError, RegionFlags, RegionKind, RegionTable,
};
use xenmem::reservation::{self, Engine, ReservationError, Stats, Strategy};
use xenmem::timer::{self, Clock, Stamp};
use xenmem::xen::abi::gnttab::{MapGrantRef, UnmapGrantRef};
use xenmem::xen::{Features, Hypervisor, MemFlags, XenError, XenStatus, MULTICALL_MAX};

/// The most repetitions a row can hold.
pub const MAX_REPS: usize = 9;

/// The most repetitions of table 3 (grant mapping, [`Params::grant_reps`]).
pub const GRANT_MAX_REPS: usize = 21;

/// What the benchmarks measure, and how often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Repetitions per row (1 to [`MAX_REPS`]).
    pub reps: usize,
    /// Repetitions of table 3 (1 to [`GRANT_MAX_REPS`]): its goals take
    /// the minimum over them (a map of 1024 grants takes a few ms to
    /// ~25 ms, so one host preemption moves a sample by tens of percent;
    /// more repetitions cost little).
    pub grant_reps: usize,
    /// How much to balloon out and back in (a multiple of 2 MiB).
    pub balloon_pages: PageCount,
    /// The most to balloon in the xenmem-only scale row (hypercalls per GiB
    /// at a size where one call per direction is not the whole story): as
    /// much as free RAM allows, in steps of `balloon_pages`, up to this.
    pub scale_max_pages: PageCount,
    /// Grants to map (table 3): the helper domain seeds this many (at most
    /// 32760, what 64 grant-table frames hold beside the 8 reserved
    /// entries).
    pub grants: usize,
    /// Foreign frames to map (table 4).
    pub foreign_frames: usize,
    /// The `add_to_physmap_batch` sizes to compare; the first is the
    /// baseline.
    pub foreign_batches: [usize; 4],
    /// Whose frames to map for table 4, if this setup has such a domain
    /// (`None`: the helper domain's, when [`Params::helper`]).
    pub foreign_peer: Option<ForeignPeer>,
    /// Build a helper domain for table 3 (and for table 4 without a
    /// `foreign_peer`); needs a privileged agent on Xen 4.17.
    pub helper: bool,
}

/// A domain whose frames the foreign-mapping benchmark maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignPeer {
    /// The domain.
    pub dom: DomId,
    /// Its first frame to map; the next [`Params::foreign_frames`] must be
    /// populated RAM of that domain.
    pub first: Gfn,
    /// It runs (a domU booted beside the agent): wait until it has shut
    /// down before measuring, so that it does not share the CPU.
    pub runs: bool,
}

/// Arm's `GUEST_RAM0_BASE` (0x4000_0000) as a frame: where a dom0less
/// domU's RAM starts.
const ARM_GUEST_RAM0_GFN: u64 = 0x40000;

impl Params {
    /// The benchmarks as `cargo xtask bench` runs them: 5 repetitions
    /// (15 of table 3), 256 MiB, 1024 grants, 4096 foreign frames, a helper domain.
    pub const DEFAULT: Params = Params {
        reps: 5,
        grant_reps: 15,
        balloon_pages: PageCount(256 << 8),
        scale_max_pages: PageCount(1024 << 8),
        grants: 1024,
        foreign_frames: 4096,
        foreign_batches: [1, 64, 512, 4096],
        foreign_peer: None,
        helper: true,
    };

    /// [`Params::DEFAULT`] with the foreign peer this architecture has. On
    /// Arm, dom0 maps the first dom0less domU (domain 1, RAM at
    /// `GUEST_RAM0_BASE`; it is booted beside dom0 by `cargo xtask bench`).
    /// On x86 there is no second domain: table 4 maps the helper domain's
    /// frames.
    pub fn for_this_target() -> Params {
        Params {
            foreign_peer: cfg!(target_arch = "aarch64").then_some(ForeignPeer {
                dom: DomId(1),
                first: Gfn(ARM_GUEST_RAM0_GFN),
                runs: true,
            }),
            ..Params::DEFAULT
        }
    }
}

/// Touching the guest's RAM directly (the floor benchmark).
pub trait Memory {
    /// Write `byte` over every byte of `range`. `false` (nothing written) if
    /// the range cannot be reached.
    ///
    /// # Safety
    ///
    /// `range` is populated RAM that nothing else uses while it is written
    /// (free RAM of the caller's region table). Calling it outside `unsafe`
    /// does not compile:
    ///
    /// ```compile_fail
    /// use xenmem_agent::bench::{IdentityMemory, Memory};
    /// fn clobber(r: xenmem::region::FrameRange) -> bool {
    ///     IdentityMemory.fill(r, 0)
    /// }
    /// ```
    /// ```
    /// use xenmem_agent::bench::{IdentityMemory, Memory};
    /// /// # Safety: as `Memory::fill`'s.
    /// unsafe fn clobber(r: xenmem::region::FrameRange) -> bool {
    ///     // SAFETY: forwarded from the caller.
    ///     unsafe { IdentityMemory.fill(r, 0) }
    /// }
    /// ```
    unsafe fn fill(&self, range: FrameRange, byte: u8) -> bool;
    /// Whether the first and the last byte of every page of `range` hold
    /// `byte`; `None` if the range cannot be reached.
    fn holds(&self, range: FrameRange, byte: u8) -> Option<bool>;
}

/// RAM through the boot identity map (bare-metal targets; the host build
/// reaches nothing).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMemory;

impl IdentityMemory {
    #[cfg(target_os = "none")]
    fn reachable(range: FrameRange) -> bool {
        range.start().0 != 0 && range.end_addr().0 <= crate::arch::imp::IDENTITY_MAP_END.0
    }
}

impl Memory for IdentityMemory {
    unsafe fn fill(&self, range: FrameRange, byte: u8) -> bool {
        #[cfg(target_os = "none")]
        {
            if !Self::reachable(range) {
                return false;
            }
            let len = (range.len().0 * PAGE_SIZE) as usize;
            // SAFETY: the caller hands over RAM used by no one (the
            // contract), identity-mapped below IDENTITY_MAP_END and not at
            // address 0 (checked above).
            unsafe { core::ptr::write_bytes(range.start_addr().0 as usize as *mut u8, byte, len) };
            true
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = (range, byte);
            false
        }
    }

    fn holds(&self, range: FrameRange, byte: u8) -> Option<bool> {
        #[cfg(target_os = "none")]
        {
            if !Self::reachable(range) {
                return None;
            }
            let mut ok = true;
            for g in range.start().0..range.end().0 {
                let p = (g * PAGE_SIZE) as usize as *const u8;
                // SAFETY: as in `fill`: RAM of the range, identity-mapped;
                // both offsets stay inside the page.
                ok &= unsafe { p.read_volatile() == byte && p.add(4095).read_volatile() == byte };
            }
            Some(ok)
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = (range, byte);
            None
        }
    }
}

/// A fixed-point number with two decimals (`123` is `1.23`), for ratios
/// and rates in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fixed2(pub u64);

impl Fixed2 {
    /// `num / den`, rounded to two decimals; `None` if `den` is 0.
    pub fn ratio(num: u64, den: u64) -> Option<Fixed2> {
        if den == 0 {
            return None;
        }
        let v = (u128::from(num) * 100 + u128::from(den) / 2) / u128::from(den);
        Some(Fixed2(u64::try_from(v).unwrap_or(u64::MAX)))
    }

    /// A whole number.
    pub const fn whole(n: u64) -> Fixed2 {
        Fixed2(n.saturating_mul(100))
    }
}

impl fmt::Display for Fixed2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Fixed2 {
    fn format(&self, f: defmt::Formatter<'_>) {
        let frac = (self.0 % 100) as u8;
        defmt::write!(f, "{=u64}.{=u8}{=u8}", self.0 / 100, frac / 10, frac % 10)
    }
}

/// A value for reports that may be missing (`n/a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Maybe(Option<Fixed2>);

#[cfg(feature = "defmt")]
impl defmt::Format for Maybe {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self.0 {
            Some(v) => defmt::write!(f, "{}", v),
            None => defmt::write!(f, "n/a"),
        }
    }
}

/// A signed fixed-point number with two decimals (`-123` is `-1.23`): a
/// guest's share of a time beside Xen's, which noise can make negative,
/// and the goals' targets and measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Signed2(pub i64);

impl From<Fixed2> for Signed2 {
    fn from(f: Fixed2) -> Self {
        Signed2(i64::try_from(f.0).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Signed2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}", Fixed2(self.0.unsigned_abs()))
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Signed2 {
    fn format(&self, f: defmt::Formatter<'_>) {
        let sign = if self.0 < 0 { "-" } else { "" };
        defmt::write!(f, "{=str}{}", sign, Fixed2(self.0.unsigned_abs()))
    }
}

/// `num / den` as a [`Signed2`], rounded half away from zero; `None` if
/// `den` is not positive or the result does not fit.
fn signed_ratio(num: i128, den: i128) -> Option<Signed2> {
    if den <= 0 {
        return None;
    }
    let x = num.checked_mul(100)?;
    let q = if x >= 0 {
        (x + den / 2) / den
    } else {
        (x - den / 2) / den
    };
    i64::try_from(q).ok().map(Signed2)
}

/// The guest's own share of a piece of work, in percent of Xen's time for
/// the same work: 100 × (`path_us` − `xen_us`) / `xen_us`, where `path_us`
/// is the whole path (the engine, the grant library) and `xen_us` the
/// Xen-only replay of its hypercalls. Negative when the replay took longer
/// (noise). `None` if `xen_us` is 0.
pub fn share_of_xen(path_us: u64, xen_us: u64) -> Option<Signed2> {
    signed_ratio(
        i128::from(path_us) * 100 - i128::from(xen_us) * 100,
        i128::from(xen_us),
    )
}

/// The engine's own time in a round trip of `trip_us`, of which
/// `in_hypercalls_us` were inside its hypercalls (its own counter, same
/// trip), in percent of the Xen-only replay's `xen_us`: 100 × (`trip_us` −
/// `in_hypercalls_us`) / `xen_us`. Unlike [`share_of_xen`], both terms of
/// the difference come from the same trip, so Xen's run-to-run noise (more
/// than 5% on a shared machine) does not land in it. `None` if `xen_us` is
/// 0.
pub fn own_share(trip_us: u64, in_hypercalls_us: u64, xen_us: u64) -> Option<Signed2> {
    signed_ratio(
        i128::from(trip_us) * 100 - i128::from(in_hypercalls_us) * 100,
        i128::from(xen_us),
    )
}

/// The most batching can gain: `time = hypercalls × h + operations × p`
/// fitted through `single` and `batched` (each (hypercalls, µs) for the
/// same `ops` operations, `single` with more hypercalls), and (h + p) / p
/// returned as a fraction (numerator, denominator) — h is what a hypercall
/// costs beyond its operations, p what one operation costs. `None` if the
/// fit has no positive p, the rows do not differ in hypercalls, or
/// batching gains nothing.
pub fn batching_ceiling(single: (u64, u64), batched: (u64, u64), ops: u64) -> Option<(i128, i128)> {
    let (c1, r1) = (i128::from(single.0), i128::from(single.1));
    let (cn, rn) = (i128::from(batched.0), i128::from(batched.1));
    let ops = i128::from(ops);
    let d = c1 - cn;
    if d <= 0 || ops <= 0 {
        return None;
    }
    // h = (r1 - rn) / d; p = (rn - h cn) / ops; both over d · ops:
    let num = (r1 - rn) * (ops - cn) + rn * d; // (h + p) · d · ops
    let den = rn * d - (r1 - rn) * cn; // p · d · ops
    (den > 0 && num >= den).then_some((num, den))
}

/// How much of Xen's batching ceiling a path reaches, in percent: its own
/// speed-up (`single_us` / `batched_us`) ÷ the ceiling (h + p) / p of
/// [`batching_ceiling`]. `None` if `batched_us` is 0 or there is no
/// ceiling.
pub fn of_ceiling(single_us: u64, batched_us: u64, ceiling: (i128, i128)) -> Option<Signed2> {
    let (num, den) = ceiling;
    let n = i128::from(single_us).checked_mul(den)?.checked_mul(100)?;
    signed_ratio(n, i128::from(batched_us).checked_mul(num)?)
}

/// A signed value for reports that may be missing (`n/a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MaybeSigned(Option<Signed2>);

#[cfg(feature = "defmt")]
impl defmt::Format for MaybeSigned {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self.0 {
            Some(v) => defmt::write!(f, "{}", v),
            None => defmt::write!(f, "n/a"),
        }
    }
}

/// The repetitions of a signed measurement (shares), up to `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedSamples<const N: usize = MAX_REPS> {
    v: [i64; N],
    n: usize,
}

impl<const N: usize> Default for SignedSamples<N> {
    fn default() -> Self {
        SignedSamples { v: [0; N], n: 0 }
    }
}

impl<const N: usize> SignedSamples<N> {
    /// Add one (beyond `N` it is dropped).
    pub fn push(&mut self, x: Signed2) {
        if self.n < N {
            self.v[self.n] = x.0;
            self.n += 1;
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The median (the mean of the middle two for an even count, rounded
    /// towards zero); `None` if empty.
    pub fn median(&self) -> Option<Signed2> {
        let mut s = self.v;
        let s = &mut s[..self.n];
        s.sort_unstable();
        let n = s.len();
        match n {
            0 => None,
            n if n % 2 == 1 => Some(Signed2(s[n / 2])),
            n => {
                let m = (i128::from(s[n / 2 - 1]) + i128::from(s[n / 2])) / 2;
                Some(Signed2(m as i64))
            }
        }
    }
}

/// The repetitions of one measurement, up to `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Samples<const N: usize = MAX_REPS> {
    v: [u64; N],
    n: usize,
}

impl<const N: usize> Default for Samples<N> {
    fn default() -> Self {
        Samples { v: [0; N], n: 0 }
    }
}

impl<const N: usize> Samples<N> {
    /// Add one (beyond `N` it is dropped).
    pub fn push(&mut self, x: u64) {
        if self.n < N {
            self.v[self.n] = x;
            self.n += 1;
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn sorted(&self) -> [u64; N] {
        let mut s = self.v;
        s[..self.n].sort_unstable();
        s
    }

    /// The median (the mean of the middle two for an even count; 0 if
    /// empty).
    pub fn median(&self) -> u64 {
        let s = self.sorted();
        match self.n {
            0 => 0,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] / 2) + (s[n / 2] / 2) + (s[n / 2 - 1] % 2 + s[n / 2] % 2) / 2,
        }
    }

    /// The smallest.
    pub fn min(&self) -> u64 {
        self.v[..self.n].iter().copied().min().unwrap_or(0)
    }

    /// The largest.
    pub fn max(&self) -> u64 {
        self.v[..self.n].iter().copied().max().unwrap_or(0)
    }

    /// max / min (`None` if empty or the smallest is 0).
    pub fn spread(&self) -> Option<Fixed2> {
        if self.n == 0 {
            return None;
        }
        Fixed2::ratio(self.max(), self.min())
    }
}

/// Why a benchmark could not be done. The run fails with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchError {
    /// The reservation engine failed.
    Reservation(ReservationError),
    /// A hypercall failed.
    Xen {
        /// Which.
        op: &'static str,
        /// What Xen said.
        err: XenError,
    },
    /// The region table refused an update.
    Table(RegionError),
    /// Not enough free 2 MiB extents of RAM for the arena.
    NotEnoughRam {
        /// Pages wanted.
        want: PageCount,
        /// Pages in free 2 MiB extents.
        have: PageCount,
    },
    /// No hole large enough for the mappings.
    NoHole(PageCount),
    /// The grant library failed.
    Grant(GrantError),
    /// Domain control of the helper domain failed (step, error).
    Domctl(&'static str, DomctlError),
    /// Building or tearing down the helper domain failed.
    Flow(FlowError),
    /// Something measured did not check out.
    Check(&'static str),
}

impl From<ReservationError> for BenchError {
    fn from(e: ReservationError) -> Self {
        BenchError::Reservation(e)
    }
}

impl From<RegionError> for BenchError {
    fn from(e: RegionError) -> Self {
        BenchError::Table(e)
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Reservation(e) => write!(f, "reservation: {e}"),
            BenchError::Xen { op, err } => write!(f, "{op} failed: {err}"),
            BenchError::Table(e) => write!(f, "region table: {e}"),
            BenchError::NotEnoughRam { want, have } => write!(
                f,
                "{want} pages of free 2 MiB extents wanted, {have} available"
            ),
            BenchError::NoHole(n) => write!(f, "no hole of {n} frames for the mappings"),
            BenchError::Grant(e) => write!(f, "grant: {e}"),
            BenchError::Domctl(step, e) => write!(f, "helper domain: {step}: {e}"),
            BenchError::Flow(e) => write!(f, "helper domain: {e}"),
            BenchError::Check(what) => f.write_str(what),
        }
    }
}

/// Show a `Display` value in a log line (with or without defmt).
#[cfg(feature = "defmt")]
fn shown<T: fmt::Display>(v: &T) -> defmt::Display2Format<'_, T> {
    defmt::Display2Format(v)
}

#[cfg(not(feature = "defmt"))]
fn shown<T: fmt::Display>(v: &T) -> &T {
    v
}

fn xen_err(op: &'static str) -> impl Fn(XenError) -> BenchError {
    move |err| BenchError::Xen { op, err }
}

/// Run the benchmarks in `set` (the `bench=` hook of [`crate::agent::run`])
/// with the architecture's counter, the identity map,
/// [`Params::for_this_target`] and, for the helper domain (tables 3 and 4
/// of a privileged agent), the agent's page tables and a window allocator
/// of their own (held while tables 3 and 4 run, and only then: the balloon
/// benchmarks' engine changes the identity map through the same page
/// tables, as the agent's does).
pub fn run<H: Hypervisor>(
    hv: &H,
    table: &mut RegionTable,
    survey: &crate::agent::Survey,
    set: BenchSet,
) -> Verdict {
    #[cfg(target_os = "none")]
    {
        let clock = match timer::system() {
            Ok(c) => c,
            Err(why) => {
                xm_error!("bench: no timer: {=str}", why);
                return Verdict::Fail;
            }
        };
        let p = Params::for_this_target();
        let maps = BootMaps {
            wanted: survey.privileged && p.helper,
        };
        run_with(hv, &clock, &IdentityMemory, table, survey, set, &p, maps)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, table, survey, set);
        xm_error!("bench: no timer on the host build");
        Verdict::Fail
    }
}

/// What [`LendMaps::lend`] runs with the page tables and the window.
pub type WithMaps<'f, P> = dyn FnMut(Option<Maps<'_, P>>) -> Result<(), BenchError> + 'f;

/// Lends the page tables and the mapping window to tables 3 and 4 for as
/// long as they run.
pub trait LendMaps<P> {
    /// Call `f` with the page tables and the window (`None`: there are
    /// none) and return what it returns.
    fn lend(&mut self, f: &mut WithMaps<'_, P>) -> Result<(), BenchError>;
}

/// Page tables and a window the caller holds (the host tests).
impl<P> LendMaps<P> for Option<Maps<'_, P>> {
    fn lend(&mut self, f: &mut WithMaps<'_, P>) -> Result<(), BenchError> {
        f(self.as_mut().map(|m| Maps {
            pt: &mut *m.pt,
            vas: &mut *m.vas,
        }))
    }
}

/// The agent's page tables (taken when lent, if `wanted`) and a window
/// allocator of their own.
#[cfg(target_os = "none")]
struct BootMaps {
    wanted: bool,
}

#[cfg(target_os = "none")]
impl LendMaps<crate::arch::imp::paging::AgentPageTable> for BootMaps {
    fn lend(
        &mut self,
        f: &mut WithMaps<'_, crate::arch::imp::paging::AgentPageTable>,
    ) -> Result<(), BenchError> {
        if !self.wanted {
            return f(None);
        }
        match crate::arch::imp::paging::page_tables() {
            Ok(mut g) => {
                let mut vas = VaSpace::new(crate::xenview::window(&*g));
                f(Some(Maps {
                    pt: &mut *g,
                    vas: &mut vas,
                }))
            }
            Err(e) => {
                // `mapping_tables` reports the missing tables where they
                // are needed.
                xm_error!("bench: page tables: {}", e);
                f(None)
            }
        }
    }
}

/// Everything a benchmark needs.
struct Ctx<'a, H, C, M> {
    hv: &'a H,
    clock: &'a C,
    mem: &'a M,
    survey: &'a Survey,
    p: &'a Params,
}

impl<H: Hypervisor, C: Clock, M: Memory> Ctx<'_, H, C, M> {
    fn us(&self, ticks: u64) -> u64 {
        self.clock.us(ticks)
    }
}

/// Run the benchmarks in `set` with this clock, memory and parameters;
/// `maps` lends the page tables and window the helper domain needs (tables
/// 3 and 4), after the balloon benchmarks. The table, the window and Xen's
/// reservation end as they started.
#[allow(clippy::too_many_arguments)]
pub fn run_with<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    hv: &H,
    clock: &C,
    mem: &M,
    table: &mut RegionTable,
    survey: &Survey,
    set: BenchSet,
    params: &Params,
    mut maps: impl LendMaps<P>,
) -> Verdict {
    let began = clock.now();
    let mut p = *params;
    p.reps = p.reps.clamp(1, MAX_REPS);
    p.grant_reps = p.grant_reps.clamp(1, GRANT_MAX_REPS);
    let ctx = Ctx {
        hv,
        clock,
        mem,
        survey,
        p: &p,
    };
    xm_info!(
        "report: bench-context arch={=str} role={=str} clock={=str} hz={=u64} reps={=usize} current={} max_order={=u8}",
        arch_name(),
        if survey.privileged { "dom0" } else { "domu" },
        clock.source(),
        clock.hz(),
        p.reps,
        survey.current,
        reservation::xen_max_order(survey.privileged).get()
    );
    let mut goals = Goals::default();
    let mut verdict = Verdict::Pass;
    let mut check = |what: &str, r: Result<(), BenchError>| {
        if let Err(e) = r {
            xm_error!("bench: {=str}: {}", what, shown(&e));
            verdict = Verdict::Fail;
        }
    };
    // First, while the heap and the boot stamps are as the boot left them.
    if set.contains(BenchSet::FOOTPRINT) {
        footprint(&ctx, table);
    }
    if set.intersects(BenchSet::BALLOON | BenchSet::FLOOR) {
        check("balloon", balloon_and_floor(&ctx, table, set, &mut goals));
    }
    if set.intersects(BenchSet::GRANT | BenchSet::FOREIGN) {
        let r = maps.lend(&mut |m| mapping_tables(&ctx, table, m, set, &mut goals));
        check("grant/foreign", r);
    }
    goals.report(set);
    // For checking the clock against the runner's wall clock.
    xm_info!(
        "report: bench-done elapsed_us={=u64}",
        clock.us(clock.now().wrapping_sub(began))
    );
    verdict
}

fn arch_name() -> &'static str {
    #[cfg(target_os = "none")]
    {
        crate::arch::imp::NAME
    }
    #[cfg(not(target_os = "none"))]
    {
        "host"
    }
}

// ---- goals ------------------------------------------------------------------

/// The measured values the goals are checked against.
///
/// The goals (issue 14): the engine's own share of a round trip at most 5%
/// of Xen's time for the same hypercalls; batched grant mapping at least
/// 95% of Xen's own ceiling with the grant library's share at most 5%; at
/// most 2 hypercalls per GiB; populate at most 3x the memset floor; foreign
/// unmapping at most 1.2x mapping. How each is computed is on its field.
#[derive(Clone, Copy, Debug, Default)]
struct Goals {
    /// xenmem's round trip with the agent's engine: its own time (the
    /// round trip less the time inside its hypercalls) against the Xen-only
    /// replay of its hypercalls in the same repetition, percent; the median
    /// over repetitions of [`own_share`].
    engine_share: Option<Signed2>,
    /// xenmem's hypercalls per GiB moved (out and in counted apart), and
    /// the size of the round trip it was measured on (MiB).
    calls_per_gib: Option<Fixed2>,
    calls_basis_mib: u64,
    /// The size of the main balloon round trips, MiB.
    balloon_mib: u64,
    /// xenmem's populate time / the memset floor.
    populate_vs_floor: Option<Fixed2>,
    /// The grant library's speed-up at the largest batch over one op per
    /// hypercall, as a percentage of the ceiling (h + p) / p fitted through
    /// the Xen-only rows of the same repetition ([`of_ceiling`]); median
    /// over repetitions.
    grant_of_ceiling: Option<Signed2>,
    /// The grant library's map time at the largest batch against the
    /// Xen-only map of the same grants in the same repetition: median of
    /// [`share_of_xen`], percent.
    grant_share: Option<Signed2>,
    /// Foreign frames unmapped in multicalls, time ÷ mapping them at the
    /// largest batch (paired median).
    foreign_unmap_vs_map: Option<Fixed2>,
}

/// One goal: `measured op target`.
struct Goal {
    name: &'static str,
    /// `true`: measured >= target passes; `false`: measured <= target.
    at_least: bool,
    target: Signed2,
    measured: Option<Signed2>,
    /// `pct`: a percentage; `x`: a ratio.
    unit: &'static str,
    /// Set the goal belongs to (its status is PENDING when measured is None
    /// and the set ran, absent when the set did not run).
    set: BenchSet,
    /// The balloon size it was measured on, MiB (0: not a balloon goal).
    basis_mib: u64,
}

/// What a goal's measurement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Judged {
    pass: bool,
    /// By how much it is met (target over measured for an upper bound,
    /// measured over target for a lower one): >= 1 when met; `None` where
    /// the ratio means nothing (a value not above zero).
    factor: Option<Fixed2>,
    /// By how much it is missed (1 when met); `None` as for `factor`.
    off_by: Option<Fixed2>,
}

impl Goal {
    fn judge(&self, m: Signed2) -> Judged {
        let ratio = |a: Signed2, b: Signed2| match (u64::try_from(a.0), u64::try_from(b.0)) {
            (Ok(a), Ok(b)) if a > 0 => Fixed2::ratio(a, b),
            _ => None,
        };
        let (pass, factor, off) = if self.at_least {
            (
                m >= self.target,
                ratio(m, self.target),
                ratio(self.target, m),
            )
        } else {
            (
                m <= self.target,
                ratio(self.target, m),
                ratio(m, self.target),
            )
        };
        Judged {
            pass,
            factor,
            off_by: if pass { Some(Fixed2::whole(1)) } else { off },
        }
    }
}

impl Goals {
    fn list(&self) -> [Goal; 6] {
        let f = |v: Option<Fixed2>| v.map(Signed2::from);
        [
            Goal {
                name: "engine-share",
                at_least: false,
                target: Signed2(500),
                measured: self.engine_share,
                unit: "pct",
                set: BenchSet::BALLOON,
                basis_mib: self.balloon_mib,
            },
            Goal {
                name: "hypercalls-per-gib",
                at_least: false,
                target: Signed2(200),
                measured: f(self.calls_per_gib),
                unit: "x",
                set: BenchSet::BALLOON,
                basis_mib: self.calls_basis_mib,
            },
            Goal {
                name: "populate-vs-floor",
                at_least: false,
                target: Signed2(300),
                measured: f(self.populate_vs_floor),
                unit: "x",
                set: BenchSet::BALLOON.union(BenchSet::FLOOR),
                basis_mib: self.balloon_mib,
            },
            Goal {
                name: "grant-batched-of-ceiling",
                at_least: true,
                target: Signed2(9500),
                measured: self.grant_of_ceiling,
                unit: "pct",
                set: BenchSet::GRANT,
                basis_mib: 0,
            },
            Goal {
                name: "grant-library-share",
                at_least: false,
                target: Signed2(500),
                measured: self.grant_share,
                unit: "pct",
                set: BenchSet::GRANT,
                basis_mib: 0,
            },
            Goal {
                name: "foreign-unmap-vs-map",
                at_least: false,
                target: Signed2(120),
                measured: f(self.foreign_unmap_vs_map),
                unit: "x",
                set: BenchSet::FOREIGN,
                basis_mib: 0,
            },
        ]
    }

    /// Print every goal whose benchmarks ran: PASS or MISS with the factor
    /// by which it is met (>= 1) or missed (how far off), PENDING if not
    /// measured.
    fn report(&self, ran: BenchSet) {
        for g in self.list() {
            if !ran.contains(g.set) {
                continue;
            }
            let op = if g.at_least { "ge" } else { "le" };
            match g.measured {
                Some(m) => {
                    let j = g.judge(m);
                    xm_info!(
                        "report: bench-goal name={=str} op={=str} target={} measured={} unit={=str} status={=str} factor={} off_by={} basis_mib={=u64}",
                        g.name,
                        op,
                        g.target,
                        m,
                        g.unit,
                        if j.pass { "PASS" } else { "MISS" },
                        Maybe(j.factor),
                        Maybe(j.off_by),
                        g.basis_mib
                    );
                }
                None => xm_info!(
                    "report: bench-goal name={=str} op={=str} target={} measured=n/a unit={=str} status=PENDING factor=n/a off_by=n/a basis_mib={=u64}",
                    g.name,
                    op,
                    g.target,
                    g.unit,
                    g.basis_mib
                ),
            }
        }
    }
}

// ---- footprint --------------------------------------------------------------

fn footprint<H: Hypervisor, C: Clock, M: Memory>(ctx: &Ctx<'_, H, C, M>, table: &RegionTable) {
    let item = |name: &str, value: u64, unit: &str| {
        xm_info!(
            "report: bench-footprint item={=str} value={=u64} unit={=str}",
            name,
            value,
            unit
        );
    };
    let image = ctx.survey.image;
    item(
        "image-memory",
        image.end.0.saturating_sub(image.start.0),
        "bytes",
    );
    if let Some((size, used)) = heap_use() {
        item("heap-size", size as u64, "bytes");
        item("heap-used", used as u64, "bytes");
    }
    item(
        "region-size",
        core::mem::size_of::<Region>() as u64,
        "bytes",
    );
    item("table-regions", table.len() as u64, "count");
    item("clock-hz", ctx.clock.hz(), "hz");
    let now = ctx.clock.now();
    let entry = timer::stamp(Stamp::Entry);
    let first = timer::stamp(Stamp::FirstLine);
    match entry {
        Some(e) => item("counter-at-entry", ctx.us(e), "us"),
        None => xm_info!(
            "report: bench-footprint item=counter-at-entry value=n/a unit=us note=\"no timer::mark(Stamp::Entry) in the boot glue\""
        ),
    }
    match (entry, first) {
        (Some(e), Some(f)) => item("entry-to-first-line", ctx.us(f.wrapping_sub(e)), "us"),
        _ => xm_info!(
            "report: bench-footprint item=entry-to-first-line value=n/a unit=us note=\"needs timer::mark(Stamp::Entry) and timer::mark(Stamp::FirstLine)\""
        ),
    }
    item("counter-at-footprint", ctx.us(now), "us");
}

/// The heap's size and the bytes in use, from the allocator's own counters.
/// `None` without the runtime's heap.
fn heap_use() -> Option<(usize, usize)> {
    #[cfg(all(feature = "rt", target_os = "none"))]
    {
        Some(crate::rt::heap_stats())
    }
    #[cfg(not(all(feature = "rt", target_os = "none")))]
    {
        None
    }
}

// ---- balloon and floor ------------------------------------------------------

/// The frames the balloon and floor benchmarks work on, and the free RAM
/// pinned meanwhile.
struct Arena {
    /// 2 MiB extents, merged into runs, ascending.
    runs: Vec<FrameRange>,
    /// Free RAM pinned for the duration.
    pinned: Vec<FrameRange>,
}

impl Arena {
    fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.len().0).sum()
    }
}

const O9: Order = Order::new_const(9);

/// Free RAM frames left unpinned below the arena for the identity map's
/// new page tables, beyond one per 2 MiB of the arena: the engine's
/// identity-map hook takes table frames from the lowest free RAM (a 2 MiB
/// block split for order-0 extents, Arm's 1 GiB blocks split and the tables
/// above them copied), and without this reserve it would take them from
/// the arena, which would then be short.
const TABLE_RESERVE_EXTRA: u64 = 64;

/// Take the highest `pages` of free 2 MiB extents and pin every other free
/// RAM frame, except a reserve for page tables: the lowest free frames
/// below the arena, one per 2 MiB of it plus [`TABLE_RESERVE_EXTRA`]. The
/// engine releases the highest free frames first, so it releases exactly
/// the arena.
fn arena_setup(t: &mut RegionTable, pages: PageCount) -> Result<Arena, BenchError> {
    let per = O9.pages().0;
    let want = pages.0.div_ceil(per) as usize;
    let ext: Vec<FrameRange> = t.aligned_ram_extents(O9).collect();
    if ext.len() < want || want == 0 {
        return Err(BenchError::NotEnoughRam {
            want: PageCount(want as u64 * per),
            have: PageCount(ext.len() as u64 * per),
        });
    }
    let mut runs: Vec<FrameRange> = Vec::new();
    for e in &ext[ext.len() - want..] {
        match runs.last_mut() {
            Some(last) if last.end() == e.start() => {
                *last = FrameRange::from_frames(last.start(), e.end())?;
            }
            _ => runs.push(*e),
        }
    }
    let below = runs.first().map_or(Gfn(0), |r| r.start());
    let mut reserve = want as u64 + TABLE_RESERVE_EXTRA;
    let free: Vec<FrameRange> = t
        .iter()
        .filter(|r| r.kind == RegionKind::Ram && !r.flags.contains(RegionFlags::PINNED))
        .map(|r| r.range)
        .collect();
    let mut pinned = Vec::new();
    for f in free {
        let mut at = f.start();
        // Frame 0 is never a table frame (`FrameSource for RegionTable`).
        let first = at.max(Gfn(1));
        let keep = reserve.min(
            below
                .0
                .saturating_sub(first.0)
                .min(f.end().0.saturating_sub(first.0)),
        );
        if keep > 0 {
            if at < first {
                pinned.push(FrameRange::from_frames(at, first)?);
            }
            at = Gfn(first.0 + keep);
            reserve -= keep;
        }
        for a in runs
            .iter()
            .filter(|a| a.start() < f.end() && f.start() < a.end())
        {
            if at < a.start() {
                pinned.push(FrameRange::from_frames(at, a.start())?);
            }
            at = at.max(a.end());
        }
        if at < f.end() {
            pinned.push(FrameRange::from_frames(at, f.end())?);
        }
    }
    let mut arena = Arena {
        runs,
        pinned: Vec::new(),
    };
    for r in pinned {
        let pin = Change {
            set: RegionFlags::PINNED,
            expect: Some(RegionKind::Ram),
            ..Change::default()
        };
        if let Err(e) = t.modify(r, pin) {
            arena_teardown(t, &arena)?;
            return Err(e.into());
        }
        arena.pinned.push(r);
    }
    Ok(arena)
}

fn arena_teardown(t: &mut RegionTable, a: &Arena) -> Result<(), BenchError> {
    let mut first = Ok(());
    for r in &a.pinned {
        let unpin = Change {
            clear: RegionFlags::PINNED,
            expect: Some(RegionKind::Ram),
            ..Change::default()
        };
        if let Err(e) = t.modify(*r, unpin) {
            if first.is_ok() {
                first = Err(e.into());
            }
        }
    }
    first
}

/// The strategies of table 1; xenmem's first.
fn strategies(privileged: bool) -> [(&'static str, Strategy); 3] {
    [
        (
            "xenmem",
            Strategy::xenmem(reservation::xen_max_order(privileged)),
        ),
        ("linux", Strategy::LINUX),
        ("mini-os", Strategy::MINI_OS),
    ]
}

/// One strategy's measurements.
#[derive(Clone, Copy, Debug, Default)]
struct Row {
    out: Samples,
    inn: Samples,
    total: Samples,
    calls: Samples,
    /// (this strategy's time / xenmem's) per repetition, in hundredths:
    /// round trip, out, in.
    vs_xenmem: Samples,
    vs_out: Samples,
    vs_in: Samples,
    /// The raw replay: Xen's share.
    xen_out: Samples,
    xen_in: Samples,
    /// The engine's own share of the round trip, percent of the replay's
    /// time in the same repetition ([`share_of_xen`]; repetitions whose
    /// replay came back short are left out).
    share: SignedSamples,
    /// Inside the engine's round trip (its own counters, µs): the time in
    /// its decrease/populate hypercalls and in the identity-map hook.
    in_xen: Samples,
    identity: Samples,
    /// The engine's own time in its round trip (the round trip less the
    /// time inside its hypercalls, same trip), percent of the Xen-only
    /// replay's round trip in the same repetition ([`own_share`]).
    own: SignedSamples,
    /// Short counts (order fallback) over all repetitions.
    short: u64,
    /// Extents of the last repetition, by order.
    extents: [u64; 20],
}

/// One engine round trip. With `identity` the engine is the agent's own
/// ([`crate::agent::engine_with`]), so on the bare-metal targets the
/// identity-map changes are part of what is measured; without, the plain
/// engine (the order-0 strategies of table 1, which the agent never uses:
/// with the hook each of their 65536 frames a direction costs an identity-map
/// change and a TLB flush, some 30 s a round trip on x86 under TCG).
struct Trip {
    out: u64,
    inn: u64,
    stats: Stats,
}

fn engine_trip<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    s: Strategy,
    pages: PageCount,
    start: PageCount,
    identity: bool,
) -> Result<Trip, BenchError> {
    let mut e = if identity {
        crate::agent::engine_with(ctx.hv, ctx.survey, s, start)
    } else {
        Engine::new(ctx.hv, s, start, ctx.survey.features)
    };
    let c = ctx.clock;
    let t0 = c.now();
    let r = e.decrease(t, pages);
    let t1 = c.now();
    let r = r.and_then(|()| {
        let t2 = c.now();
        let r = e.increase(t, pages);
        let t3 = c.now();
        r.map(|()| (t1.wrapping_sub(t0), t3.wrapping_sub(t2)))
    });
    let stats = e.stats;
    match r {
        Ok((out, inn)) => {
            let now = e.verify()?;
            if now != start || t.count(RegionKind::Ballooned).0 != 0 {
                return Err(BenchError::Check(
                    "a round trip did not leave the reservation where it started",
                ));
            }
            Ok(Trip { out, inn, stats })
        }
        Err(err) => {
            // Bring back whatever is out, then report the first error.
            let _ = e.balloon_to(t, start);
            Err(err.into())
        }
    }
}

/// The hypercalls a strategy issues for the arena, without the engine: the
/// same extents, orders and batches, no table work. Returns (out, in)
/// ticks, or `None` if Xen came back short on populate (that repetition
/// does not count; everything was brought back).
fn raw_trip<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    a: &Arena,
    s: Strategy,
    start: PageCount,
) -> Result<Option<(u64, u64)>, BenchError> {
    let order = s.max_order.min(O9);
    let n = order.pages().0;
    let mut extents: Vec<Gfn> = a
        .runs
        .iter()
        .flat_map(|r| (r.start().0..r.end().0).step_by(n as usize).map(Gfn))
        .collect();
    let mut back = extents.clone();
    let batch = s.batch.max(1);
    let self_ = DomId::SELF;
    let c = ctx.clock;
    let t0 = c.now();
    let (out_done, failed) = in_batches(
        &mut extents,
        batch,
        (
            "decrease_reservation",
            "Xen released fewer extents than asked",
        ),
        |chunk| ctx.hv.decrease_reservation(self_, order, chunk),
    );
    let t1 = c.now();
    if let Some(f) = failed {
        // Xen may also have removed the first pages of the extent it
        // stopped at.
        let partial = extents.get(out_done).copied();
        recover(ctx, t, &extents[..out_done], partial, order, start)?;
        return Err(f);
    }
    let t2 = c.now();
    let (in_done, failed) = in_batches(
        &mut back,
        batch,
        ("populate_physmap", "short populate"),
        |chunk| ctx.hv.populate_physmap(self_, order, MemFlags::NONE, chunk),
    );
    let t3 = c.now();
    if let Some(f) = failed {
        recover(ctx, t, &extents[in_done..], None, order, start)?;
        return match f {
            // Xen had no memory of this order: skip the repetition.
            BenchError::Check(_) => Ok(None),
            other => Err(other),
        };
    }
    let now = ctx
        .hv
        .current_reservation(self_)
        .map_err(xen_err("current_reservation"))?;
    if now != start {
        return Err(BenchError::Reservation(ReservationError::Inconsistent {
            expected: start,
            actual: now,
        }));
    }
    Ok(Some((t1.wrapping_sub(t0), t3.wrapping_sub(t2))))
}

/// `call` on `extents` in batches of `batch`, stopping at the first error
/// or short batch; the extents done and, if it stopped, why
/// ([`BenchError::Xen`] named `what.0`, or [`BenchError::Check`] `what.1`).
fn in_batches(
    extents: &mut [Gfn],
    batch: usize,
    what: (&'static str, &'static str),
    mut call: impl FnMut(&mut [Gfn]) -> Result<usize, XenError>,
) -> (usize, Option<BenchError>) {
    let mut done = 0usize;
    for chunk in extents.chunks_mut(batch) {
        match call(chunk) {
            Ok(n) => {
                done += n;
                if n < chunk.len() {
                    return (done, Some(BenchError::Check(what.1)));
                }
            }
            Err(err) => return (done, Some(BenchError::Xen { op: what.0, err })),
        }
    }
    (done, None)
}

/// After a raw replay failed: the extents starting at `out` (of `order`)
/// are no longer populated, nor (after a short decrease) the first pages of
/// the extent at `partial`, as many as Xen's count says. Record them as
/// ballooned and let the engine bring them back (with its order fallback
/// and short-count handling).
fn recover<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    out: &[Gfn],
    partial: Option<Gfn>,
    order: Order,
    start: PageCount,
) -> Result<(), BenchError> {
    let n = order.pages().0;
    let now = ctx
        .hv
        .current_reservation(DomId::SELF)
        .map_err(xen_err("current_reservation"))?;
    let to_ballooned = Change {
        kind: Some(RegionKind::Ballooned),
        expect: Some(RegionKind::Ram),
        ..Change::default()
    };
    for g in out {
        t.modify(FrameRange::new(*g, PageCount(n))?, to_ballooned)?;
    }
    if let Some(g) = partial {
        let gone = start
            .0
            .saturating_sub(out.len() as u64 * n)
            .saturating_sub(now.0);
        if gone > 0 && gone < n {
            t.modify(FrameRange::new(g, PageCount(gone))?, to_ballooned)?;
        }
    }
    // Not the agent's engine: the replay never took these frames out of the
    // identity map, so there is nothing to put back.
    let mut e = Engine::new(ctx.hv, Strategy::xenmem(order), now, ctx.survey.features);
    e.balloon_to(t, start)?;
    e.verify()?;
    Ok(())
}

fn balloon_and_floor<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    set: BenchSet,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let balloon = set.contains(BenchSet::BALLOON);
    if balloon && ctx.survey.features.contains(Features::DIRECT_MAPPED) {
        xm_info!(
            "report: bench-balloon status=skipped reason=\"direct-mapped domain: Xen does not balloon it\""
        );
        if !set.contains(BenchSet::FLOOR) {
            return Ok(());
        }
    }
    let balloon = balloon && !ctx.survey.features.contains(Features::DIRECT_MAPPED);
    let floor = set.contains(BenchSet::FLOOR);
    let start = ctx
        .hv
        .current_reservation(DomId::SELF)
        .map_err(xen_err("current_reservation"))?;
    let arena = arena_setup(t, ctx.p.balloon_pages)?;
    let r = measure(ctx, t, &arena, start, balloon, floor, goals);
    let down = arena_teardown(t, &arena);
    r.and(down)?;
    if !balloon {
        return Ok(());
    }
    // The scale row: xenmem alone, as large as free RAM allows.
    let step = ctx.p.balloon_pages.0.max(1);
    let free = t.aligned_ram_extents(O9).count() as u64 * O9.pages().0;
    let pages = free.min(ctx.p.scale_max_pages.0) / step * step;
    if pages <= step {
        xm_info!(
            "report: bench-balloon-scale status=skipped reason=\"not enough free RAM for more than one step\" free_mib={=u64}",
            free / 256
        );
        return Ok(());
    }
    let arena = arena_setup(t, PageCount(pages))?;
    let r = scale(ctx, t, &arena, start, goals);
    let down = arena_teardown(t, &arena);
    r.and(down)
}

/// xenmem's round trip over a larger arena: hypercalls and time per GiB.
fn scale<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    arena: &Arena,
    start: PageCount,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let pages = PageCount(arena.pages());
    let (name, s) = strategies(ctx.survey.privileged)[0];
    let mut row = Row::default();
    for _ in 0..ctx.p.reps {
        let trip = engine_trip(ctx, t, s, pages, start, true)?;
        row.out.push(ctx.us(trip.out));
        row.inn.push(ctx.us(trip.inn));
        row.total.push(ctx.us(trip.out + trip.inn));
        row.calls.push(trip.stats.hypercalls);
        row.short += trip.stats.short_counts;
    }
    let mib = pages.0 / 256;
    let calls = row.calls.median();
    let per_gib = Fixed2::ratio(calls * 1024, 2 * mib);
    let total = row.total.median();
    xm_info!(
        "report: bench-balloon-scale strategy={=str} order={=u8} batch={=usize} mib={=u64} hypercalls={=u64} per_gib={} out_us={=u64} in_us={=u64} total_us={=u64} spread={} mib_s={} short={=u64}",
        name,
        s.max_order.get(),
        s.batch,
        mib,
        calls,
        Maybe(per_gib),
        row.out.median(),
        row.inn.median(),
        total,
        Maybe(row.total.spread()),
        Maybe(Fixed2::ratio(2 * mib * 1_000_000, total)),
        row.short
    );
    goals.calls_per_gib = per_gib;
    goals.calls_basis_mib = mib;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    arena: &Arena,
    start: PageCount,
    balloon: bool,
    floor: bool,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let pages = PageCount(arena.pages());
    let strats = strategies(ctx.survey.privileged);
    let mut rows = [Row::default(); 3];
    let mut fill = <Samples>::default();
    let mut filled_ok = true;
    let mut floor_reached = true;
    for rep in 0..ctx.p.reps {
        if balloon {
            for (i, (name, s)) in strats.iter().enumerate() {
                // xenmem's strategy (the first) is the agent's engine.
                let trip = engine_trip(ctx, t, *s, pages, start, i == 0)?;
                xm_info!(
                    "report: bench-balloon-rep rep={=usize} strategy={=str} out_us={=u64} in_us={=u64} hypercalls={=u64} in_xen_us={=u64} identity_us={=u64}",
                    rep,
                    name,
                    ctx.us(trip.out),
                    ctx.us(trip.inn),
                    trip.stats.hypercalls,
                    ctx.us(trip.stats.xen_ticks),
                    ctx.us(trip.stats.identity_ticks)
                );
                let row = &mut rows[i];
                row.in_xen.push(ctx.us(trip.stats.xen_ticks));
                row.identity.push(ctx.us(trip.stats.identity_ticks));
                row.out.push(ctx.us(trip.out));
                row.inn.push(ctx.us(trip.inn));
                row.total.push(ctx.us(trip.out + trip.inn));
                row.calls.push(trip.stats.hypercalls);
                row.short += trip.stats.short_counts;
                row.extents = trip.stats.extents;
            }
            let (base, base_out, base_in) =
                (rows[0].total.v[rep], rows[0].out.v[rep], rows[0].inn.v[rep]);
            for row in &mut rows {
                let r = |x: u64, b: u64| Fixed2::ratio(x, b).map_or(0, |f| f.0);
                row.vs_xenmem.push(r(row.total.v[rep], base));
                row.vs_out.push(r(row.out.v[rep], base_out));
                row.vs_in.push(r(row.inn.v[rep], base_in));
            }
            for (i, (name, s)) in strats.iter().enumerate() {
                if let Some((o, n)) = raw_trip(ctx, t, arena, *s, start)? {
                    xm_info!(
                        "report: bench-balloon-rep rep={=usize} strategy={=str} raw=yes out_us={=u64} in_us={=u64}",
                        rep,
                        name,
                        ctx.us(o),
                        ctx.us(n)
                    );
                    let row = &mut rows[i];
                    row.xen_out.push(ctx.us(o));
                    row.xen_in.push(ctx.us(n));
                    let xen = ctx.us(o + n);
                    if let Some(sh) = share_of_xen(row.total.v[rep], xen) {
                        row.share.push(sh);
                    }
                    let own = own_share(row.total.v[rep], row.in_xen.v[rep], xen);
                    if let Some(sh) = own {
                        row.own.push(sh);
                    }
                }
            }
        }
        if floor {
            let byte = 0x5a ^ rep as u8;
            let c = ctx.clock;
            let t0 = c.now();
            for r in &arena.runs {
                // SAFETY: the arena's runs are free RAM of the agent's table
                // (aligned extents `arena_setup` took), populated again
                // above, and nothing else uses them while the benchmark runs.
                floor_reached &= unsafe { ctx.mem.fill(*r, byte) };
            }
            let t1 = c.now();
            if !floor_reached {
                break;
            }
            fill.push(ctx.us(t1.wrapping_sub(t0)));
            xm_info!(
                "report: bench-floor-rep rep={=usize} memset_us={=u64}",
                rep,
                ctx.us(t1.wrapping_sub(t0))
            );
            for r in &arena.runs {
                filled_ok &= ctx.mem.holds(*r, byte) == Some(true);
            }
        }
    }
    let mib = pages.0 / 256;
    if balloon {
        report_balloon(&strats, &rows, mib, goals);
    }
    if floor {
        if !floor_reached {
            xm_info!(
                "report: bench-floor status=skipped reason=\"the arena is not reachable through the identity map\""
            );
            return Ok(());
        }
        if !filled_ok {
            return Err(BenchError::Check(
                "memory written by the floor benchmark does not read back",
            ));
        }
        let f = fill.median();
        let (pop, rel) = if balloon {
            (
                Fixed2::ratio(rows[0].inn.median(), f),
                Fixed2::ratio(rows[0].out.median(), f),
            )
        } else {
            (None, None)
        };
        goals.populate_vs_floor = pop;
        goals.balloon_mib = mib;
        xm_info!(
            "report: bench-floor mib={=u64} memset_us={=u64} spread={} mib_s={} populate_us={=u64} populate_vs_floor={} release_us={=u64} release_vs_floor={} checked=yes",
            mib,
            f,
            Maybe(fill.spread()),
            Maybe(Fixed2::ratio(mib * 1_000_000, f)),
            if balloon { rows[0].inn.median() } else { 0 },
            Maybe(pop),
            if balloon { rows[0].out.median() } else { 0 },
            Maybe(rel)
        );
    }
    Ok(())
}

fn report_balloon(
    strats: &[(&'static str, Strategy); 3],
    rows: &[Row; 3],
    mib: u64,
    goals: &mut Goals,
) {
    for ((name, s), row) in strats.iter().zip(rows) {
        let calls = row.calls.median();
        // Per GiB moved: out and in each move `mib`.
        let per_gib = Fixed2::ratio(calls * 1024, 2 * mib);
        let total = row.total.median();
        xm_info!(
            "report: bench-balloon strategy={=str} order={=u8} batch={=usize} mib={=u64} hypercalls={=u64} per_gib={} out_us={=u64} in_us={=u64} total_us={=u64} spread={} mib_s={} vs_xenmem={} vs_spread={} out_vs={} in_vs={} short={=u64} order9={=u64} order0={=u64}",
            name,
            s.max_order.get(),
            s.batch,
            mib,
            calls,
            Maybe(per_gib),
            row.out.median(),
            row.inn.median(),
            total,
            Maybe(row.total.spread()),
            Maybe(Fixed2::ratio(2 * mib * 1_000_000, total)),
            Fixed2(row.vs_xenmem.median()),
            Maybe(row.vs_xenmem.spread()),
            Fixed2(row.vs_out.median()),
            Fixed2(row.vs_in.median()),
            row.short,
            row.extents[9],
            row.extents[0]
        );
    }
    for ((name, _), row) in strats.iter().zip(rows) {
        let (xo, xi) = (row.xen_out.median(), row.xen_in.median());
        let (eo, ei) = (row.out.median(), row.inn.median());
        let share = row.share.median();
        xm_info!(
            "report: bench-balloon-profile strategy={=str} reps={=usize} xen_out_us={=u64} xen_in_us={=u64} engine_out_us={=u64} engine_in_us={=u64} share_pct={} share_reps={=usize} engine_in_xen_us={=u64} engine_identity_us={=u64} own_pct={} identity={=str}",
            name,
            row.xen_out.len(),
            xo,
            xi,
            eo,
            ei,
            MaybeSigned(share),
            row.share.len(),
            row.in_xen.median(),
            row.identity.median(),
            MaybeSigned(row.own.median()),
            if *name == "xenmem" { "yes" } else { "no" }
        );
    }
    goals.engine_share = rows[0].own.median();
    goals.calls_per_gib = Fixed2::ratio(rows[0].calls.median() * 1024, 2 * mib);
    goals.calls_basis_mib = mib;
    goals.balloon_mib = mib;
}

// ---- grant mapping ----------------------------------------------------------

/// What table 3 needs: map and unmap a peer's grants with a chosen number of
/// `GNTTABOP_map_grant_ref` operations per hypercall. [`LibGrants`] is the
/// grant library's whole path (`grant::map_grants_per_call`, what an agent
/// uses), [`RawGrants`] the hypercalls alone (the profile).
pub trait GrantMapper {
    /// Map the first `count` grants into free frames, `per_call`
    /// operations per hypercall; returns the hypercalls issued.
    fn map(&mut self, count: usize, per_call: usize) -> Result<u64, BenchError>;
    /// Unmap everything [`GrantMapper::map`] mapped, `per_call` operations
    /// per hypercall; returns the hypercalls issued.
    fn unmap(&mut self, per_call: usize) -> Result<u64, BenchError>;
    /// Whether what is mapped reads as it should (checked untimed between
    /// the map and the unmap; `true` when the mapper cannot tell).
    fn check(&self) -> bool {
        true
    }
    /// The frames the last [`GrantMapper::map`] put grants in, while they
    /// are mapped (`None` when the mapper cannot tell).
    fn mapped_frames(&self) -> Option<FrameRange> {
        None
    }
    /// Map `frames` (frames that hold something, e.g. another mapper's
    /// grants) into the window with the page tables alone and unmap them
    /// again, timing both on `clock`: (map, unmap) ticks, or `None` when
    /// the mapper has no page tables. What the library's path spends in
    /// its page tables.
    fn page_tables<C: Clock>(
        &mut self,
        _frames: FrameRange,
        _clock: &C,
    ) -> Result<Option<(u64, u64)>, BenchError> {
        Ok(None)
    }
}

/// The ops-per-hypercall sizes of table 3: one op per hypercall (the
/// baseline, as Mini-OS's `gntmap` and Solo5 map), then batched; the last is
/// the size the goal is checked at (all of [`Params::grants`] in one
/// hypercall when it is as large).
const GRANT_BATCHES: [usize; 3] = [1, 64, 1024];

/// The grants of a helper domain, mapped with the grant library
/// (`grant::map_grants_per_call`, read-write, and
/// `GrantMap::release_per_call`): hole frames, the region table, the
/// hypercalls with every status checked, and the page tables.
pub struct LibGrants<'a, H, P> {
    hv: &'a H,
    t: &'a mut RegionTable,
    pt: &'a mut P,
    vas: &'a mut VaSpace,
    dom: DomId,
    /// The seeded grants: the i-th grants helper frame `seeded[i].gfn`,
    /// which holds `domctl::pattern_word(gfn, 0..512)`.
    seeded: &'a [SeededGrant],
    refs: Vec<GrantRef>,
    mapped: Option<GrantMap>,
}

impl<'a, H: Hypervisor, P: MapTarget> LibGrants<'a, H, P> {
    /// Map `dom`'s grants `seeded` through the agent's table, page tables
    /// and window.
    pub fn new(
        hv: &'a H,
        t: &'a mut RegionTable,
        pt: &'a mut P,
        vas: &'a mut VaSpace,
        dom: DomId,
        seeded: &'a [SeededGrant],
    ) -> Self {
        LibGrants {
            hv,
            t,
            pt,
            vas,
            dom,
            seeded,
            refs: seeded.iter().map(|s| s.gref).collect(),
            mapped: None,
        }
    }
}

impl<H: Hypervisor, P: MapTarget> GrantMapper for LibGrants<'_, H, P> {
    fn map(&mut self, count: usize, per_call: usize) -> Result<u64, BenchError> {
        if self.mapped.is_some() {
            return Err(BenchError::Check("grants mapped twice"));
        }
        let refs = self.refs.get(..count).ok_or(BenchError::Check(
            "more grants asked for than the helper seeded",
        ))?;
        let m = grant::map_grants_per_call(
            self.hv, self.t, self.pt, self.vas, self.dom, refs, false, per_call,
        )
        .map_err(BenchError::Grant)?;
        self.mapped = Some(m);
        Ok(count.div_ceil(per_call.max(1)) as u64)
    }

    fn unmap(&mut self, per_call: usize) -> Result<u64, BenchError> {
        let Some(m) = self.mapped.take() else {
            return Ok(0);
        };
        let n = m.refs().len();
        if let Err(e) = m.release_per_call(self.hv, self.t, self.pt, self.vas, per_call) {
            // Kept, knowing what is left: the next unmap finishes it.
            let (m, e) = e.into_parts();
            self.mapped = Some(m);
            return Err(BenchError::Grant(e));
        }
        Ok(n.div_ceil(per_call.max(1)) as u64)
    }

    fn page_tables<C: Clock>(
        &mut self,
        frames: FrameRange,
        clock: &C,
    ) -> Result<Option<(u64, u64)>, BenchError> {
        let n = frames.len();
        let va = self
            .vas
            .try_alloc(n)
            .map_err(|e| BenchError::Grant(GrantError::OutOfMemory(e)))?
            .ok_or(BenchError::Grant(GrantError::NoVirtualSpace(n)))?;
        let t0 = clock.now();
        let mapped = self
            .pt
            .map(va, frames.start_addr(), n, Attrs::READ_WRITE, self.t);
        let t1 = clock.now();
        if let Err(e) = mapped {
            self.vas.free(va);
            return Err(BenchError::Grant(GrantError::Paging(e)));
        }
        let t2 = clock.now();
        // On an error the pages stay mapped and the window allocation
        // with them (the run fails).
        self.pt
            .unmap(va, n, self.t)
            .map_err(|e| BenchError::Grant(GrantError::Paging(e)))?;
        let t3 = clock.now();
        self.vas.free(va);
        Ok(Some((t1.wrapping_sub(t0), t3.wrapping_sub(t2))))
    }

    fn check(&self) -> bool {
        let Some(m) = &self.mapped else {
            return false;
        };
        let last = PAGE_SIZE / 8 - 1;
        self.seeded
            .iter()
            .take(m.refs().len())
            .enumerate()
            .all(|(i, s)| {
                let page = i as u64 * PAGE_SIZE;
                m.read_obj::<u64>(page) == Ok(domctl::pattern_word(s.gfn, 0))
                    && m.read_obj::<u64>(page + last * 8) == Ok(domctl::pattern_word(s.gfn, last))
            })
    }
}

/// The same grants mapped with nothing but the hypercalls: into a hole the
/// caller reserved in the region table, no page tables, no table updates.
/// What is left of [`LibGrants`]' time once this is taken away is the
/// guest's own share.
pub struct RawGrants<'a, H> {
    hv: &'a H,
    dom: DomId,
    refs: Vec<GrantRef>,
    hole: FrameRange,
    ops: Vec<MapGrantRef>,
    /// An unmap failed: some hole frames may still hold grant mappings.
    stuck: bool,
}

impl<'a, H: Hypervisor> RawGrants<'a, H> {
    /// Map `dom`'s grants `refs` into `hole` (at least as many frames,
    /// reserved by the caller).
    pub fn new(hv: &'a H, dom: DomId, refs: Vec<GrantRef>, hole: FrameRange) -> Self {
        RawGrants {
            hv,
            dom,
            refs,
            hole,
            ops: Vec::new(),
            stuck: false,
        }
    }

    /// Whether an unmap failed (the hole must then stay out of the table's
    /// holes).
    pub fn stuck(&self) -> bool {
        self.stuck
    }

    /// Unmap the entries of `self.ops` Xen mapped, `per_call` a hypercall.
    fn unmap_done(&mut self, per_call: usize) -> Result<u64, BenchError> {
        let mut un: Vec<UnmapGrantRef> = self
            .ops
            .iter()
            .filter(|o| o.status().is_ok())
            .map(|o| UnmapGrantRef::host(o.host_addr, o.handle))
            .collect();
        self.ops.clear();
        let mut calls = 0;
        let mut first = Ok(());
        for c in un.chunks_mut(per_call.max(1)) {
            calls += 1;
            if let Err(err) = self.hv.gnttab_unmap(c) {
                first = first.and(Err(BenchError::Xen {
                    op: "GNTTABOP_unmap_grant_ref",
                    err,
                }));
            }
        }
        if first.is_ok() && un.iter().any(|u| !u.status().is_ok()) {
            first = Err(BenchError::Check("Xen refused to unmap a grant"));
        }
        if first.is_err() {
            self.stuck = true;
        }
        first.map(|()| calls)
    }
}

impl<H: Hypervisor> GrantMapper for RawGrants<'_, H> {
    fn map(&mut self, count: usize, per_call: usize) -> Result<u64, BenchError> {
        if self.stuck || !self.ops.is_empty() {
            return Err(BenchError::Check("grant frames still mapped"));
        }
        if count > self.refs.len() || count as u64 > self.hole.len().0 {
            return Err(BenchError::Check(
                "more grants asked for than the helper seeded",
            ));
        }
        let start = self.hole.start().0;
        self.ops = self.refs[..count]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let addr = Gfn(start + i as u64).addr().map_or(0, |a| a.0);
                MapGrantRef::host(addr, r.0, self.dom.0, false)
            })
            .collect();
        let mut calls = 0;
        let mut failed = None;
        for c in self.ops.chunks_mut(per_call.max(1)) {
            calls += 1;
            if let Err(err) = self.hv.gnttab_map(c) {
                failed = Some(BenchError::Xen {
                    op: "GNTTABOP_map_grant_ref",
                    err,
                });
                break;
            }
        }
        if failed.is_none() && self.ops.iter().any(|o| !o.status().is_ok()) {
            failed = Some(BenchError::Check("Xen refused to map a seeded grant"));
        }
        match failed {
            None => Ok(calls),
            Some(e) => {
                // Take back what Xen did map; the first error is the story.
                let _ = self.unmap_done(count.max(1));
                Err(e)
            }
        }
    }

    fn unmap(&mut self, per_call: usize) -> Result<u64, BenchError> {
        self.unmap_done(per_call)
    }

    fn mapped_frames(&self) -> Option<FrameRange> {
        if self.stuck || self.ops.is_empty() {
            return None;
        }
        FrameRange::new(self.hole.start(), PageCount(self.ops.len() as u64)).ok()
    }
}

/// Samples of table 3 ([`Params::grant_reps`] of them).
type GrantSamples = Samples<GRANT_MAX_REPS>;

/// One per-call size's measurements.
#[derive(Clone, Copy, Debug, Default)]
struct GrantRow {
    map: GrantSamples,
    unmap: GrantSamples,
    calls: u64,
    unmap_calls: u64,
    /// (one-per-call time / this one's), paired per repetition, hundredths.
    vs: GrantSamples,
    /// The raw hypercalls alone.
    raw_map: GrantSamples,
    raw_unmap: GrantSamples,
    raw_vs: GrantSamples,
    /// The library's own share of the map time, percent of the raw map's
    /// in the same repetition ([`share_of_xen`]).
    share: SignedSamples<GRANT_MAX_REPS>,
}

impl GrantRow {
    /// The library's share from the minima of both sides:
    /// [`share_of_xen`] of the fastest library map and the fastest
    /// Xen-only map (`None` without the profile).
    fn share_of_minima(&self) -> Option<Signed2> {
        if self.raw_map.is_empty() {
            return None;
        }
        share_of_xen(self.map.min(), self.raw_map.min())
    }
}

/// Against Xen's batching ceiling (the largest batch): per repetition, the
/// ceiling (h + p) / p fitted through the raw rows, the library's
/// speed-up, and that speed-up as a percentage of the ceiling (the paired
/// medians, for information); and the page tables alone.
#[derive(Clone, Copy, Debug, Default)]
struct CeilingRow {
    ceiling: GrantSamples,
    speedup: GrantSamples,
    of_ceiling: SignedSamples<GRANT_MAX_REPS>,
    /// The library's page tables alone, mapping and unmapping the grants
    /// the raw hypercalls just mapped, µs.
    tables_map: GrantSamples,
    tables_unmap: GrantSamples,
}

/// The goals of table 3 from the minima over the repetitions: for fixed
/// work under additive, never negative noise (host preemption, Xen's own
/// interrupts) the fastest repetition is the best estimate of the work,
/// and each side of each ratio gets the same estimator. `first` is the
/// one-per-call row, `last` the largest batch, `n` the grants. Returns
/// (the ceiling (h + p) / p, the library's speed-up, % of the ceiling).
fn ceiling_of_minima(
    first: &GrantRow,
    last: &GrantRow,
    n: usize,
) -> Option<((i128, i128), Fixed2, Signed2)> {
    if first.raw_map.is_empty() || last.raw_map.is_empty() {
        return None;
    }
    let c = batching_ceiling(
        (first.calls, first.raw_map.min()),
        (last.calls, last.raw_map.min()),
        n as u64,
    )?;
    let speedup = Fixed2::ratio(first.map.min(), last.map.min())?;
    let of = of_ceiling(first.map.min(), last.map.min(), c)?;
    Some((c, speedup, of))
}

/// Table 3 with a working [`GrantMapper`]: map [`Params::grants`] grants at
/// every size of [`GRANT_BATCHES`] (larger ones are clamped to the grant
/// count), [`Params::grant_reps`] times each, interleaved; with `raw`, the
/// same with the hypercalls alone after each (the profile rows), and at the
/// largest batch, while the raw hypercalls' grants are mapped, the
/// library's page tables alone ([`GrantMapper::page_tables`]).
fn grant_table<H, C, M, G, R>(
    ctx: &Ctx<'_, H, C, M>,
    m: &mut G,
    mut raw: Option<&mut R>,
    dom: DomId,
    goals: &mut Goals,
) -> Result<(), BenchError>
where
    H: Hypervisor,
    C: Clock,
    M: Memory,
    G: GrantMapper,
    R: GrantMapper,
{
    let n = ctx.p.grants;
    if n == 0 {
        return Err(BenchError::Check("no grants to map"));
    }
    let sizes = GRANT_BATCHES.map(|b| b.clamp(1, n));
    let mut rows = [GrantRow::default(); GRANT_BATCHES.len()];
    let mut top = CeilingRow::default();
    let c = ctx.clock;
    let reps = ctx.p.grant_reps.clamp(1, GRANT_MAX_REPS);
    for rep in 0..reps {
        for (i, (row, &per)) in rows.iter_mut().zip(&sizes).enumerate() {
            let t0 = c.now();
            row.calls = m.map(n, per)?;
            let t1 = c.now();
            if !m.check() {
                let _ = m.unmap(per);
                return Err(BenchError::Check(
                    "mapped grants do not read the helper's pattern",
                ));
            }
            let t2 = c.now();
            row.unmap_calls = m.unmap(per)?;
            let t3 = c.now();
            row.map.push(ctx.us(t1.wrapping_sub(t0)));
            row.unmap.push(ctx.us(t3.wrapping_sub(t2)));
            if let Some(r) = raw.as_deref_mut() {
                let t0 = c.now();
                r.map(n, per)?;
                let t1 = c.now();
                let tables = match r.mapped_frames() {
                    Some(f) if i == sizes.len() - 1 => m.page_tables(f, c),
                    _ => Ok(None),
                };
                let t2 = c.now();
                // The raw grants go whatever the page tables did.
                let unmapped = r.unmap(per);
                let t3 = c.now();
                if let Some((tm, tu)) = tables? {
                    top.tables_map.push(ctx.us(tm));
                    top.tables_unmap.push(ctx.us(tu));
                }
                unmapped?;
                row.raw_map.push(ctx.us(t1.wrapping_sub(t0)));
                row.raw_unmap.push(ctx.us(t3.wrapping_sub(t2)));
            }
            let last = |s: &GrantSamples| s.v[..s.n].last().copied().unwrap_or(0);
            xm_info!(
                "report: bench-grant-rep rep={=usize} per_call={=usize} map_us={=u64} unmap_us={=u64} raw_map_us={=u64} raw_unmap_us={=u64}",
                rep,
                per,
                last(&row.map),
                last(&row.unmap),
                last(&row.raw_map),
                last(&row.raw_unmap)
            );
        }
        let (base, raw_base) = (rows[0].map.v[rep], rows[0].raw_map.v[rep]);
        for row in &mut rows {
            row.vs
                .push(Fixed2::ratio(base, row.map.v[rep]).map_or(0, |f| f.0));
            if !row.raw_map.is_empty() {
                row.raw_vs
                    .push(Fixed2::ratio(raw_base, row.raw_map.v[rep]).map_or(0, |f| f.0));
                if let Some(sh) = share_of_xen(row.map.v[rep], row.raw_map.v[rep]) {
                    row.share.push(sh);
                }
            }
        }
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        if !first.raw_map.is_empty() {
            let ceiling = batching_ceiling(
                (first.calls, first.raw_map.v[rep]),
                (last.calls, last.raw_map.v[rep]),
                n as u64,
            );
            if let Some(c) = ceiling {
                let (num, den) = c;
                let as_fixed = signed_ratio(num, den).map_or(0, |v| v.0.max(0) as u64);
                top.ceiling.push(as_fixed);
                top.speedup
                    .push(Fixed2::ratio(first.map.v[rep], last.map.v[rep]).map_or(0, |f| f.0));
                if let Some(v) = of_ceiling(first.map.v[rep], last.map.v[rep], c) {
                    top.of_ceiling.push(v);
                }
            }
        }
    }
    for (i, (row, per)) in rows.iter().zip(sizes).enumerate() {
        let us = row.map.median();
        xm_info!(
            "report: bench-grant mode={=str} per_call={=usize} grants={=usize} dom={} hypercalls={=u64} map_us={=u64} spread={} maps_s={=u64} ns_per_grant={=u64} unmap_us={=u64} unmap_hypercalls={=u64} speedup={} speedup_spread={} reps={=usize}",
            if i == 0 { "one-per-call" } else { "batched" },
            per,
            n,
            dom,
            row.calls,
            us,
            Maybe(row.map.spread()),
            (n as u64).saturating_mul(1_000_000).checked_div(us).unwrap_or(0),
            us.saturating_mul(1000) / n as u64,
            row.unmap.median(),
            row.unmap_calls,
            Fixed2(row.vs.median()),
            Maybe(row.vs.spread()),
            row.map.len()
        );
    }
    for (row, per) in rows.iter().zip(sizes) {
        if row.raw_map.is_empty() {
            continue;
        }
        xm_info!(
            "report: bench-grant-profile per_call={=usize} hypercalls={=u64} xen_map_us={=u64} xen_unmap_us={=u64} lib_map_us={=u64} lib_unmap_us={=u64} share_pct={} xen_speedup={} xen_map_min_us={=u64} lib_map_min_us={=u64} share_min_pct={}",
            per,
            row.calls,
            row.raw_map.median(),
            row.raw_unmap.median(),
            row.map.median(),
            row.unmap.median(),
            MaybeSigned(row.share.median()),
            Fixed2(row.raw_vs.median()),
            row.raw_map.min(),
            row.map.min(),
            MaybeSigned(row.share_of_minima())
        );
    }
    if raw.is_some() {
        let per = sizes[sizes.len() - 1];
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        let minima = ceiling_of_minima(first, last, n);
        let of = minima.map(|(_, _, of)| of);
        xm_info!(
            "report: bench-grant-ceiling per_call={=usize} reps={=usize} ceiling={} speedup={} of_ceiling_pct={} lib_single_us={=u64} lib_batched_us={=u64} xen_single_us={=u64} xen_batched_us={=u64} paired_ceiling={} paired_speedup={} paired_of_ceiling_pct={}",
            per,
            last.map.len(),
            Maybe(minima.and_then(|((num, den), _, _)| signed_ratio(num, den).map(|v| Fixed2(v.0.max(0) as u64)))),
            Maybe(minima.map(|(_, s, _)| s)),
            MaybeSigned(of),
            first.map.min(),
            last.map.min(),
            first.raw_map.min(),
            last.raw_map.min(),
            Maybe((!top.ceiling.is_empty()).then(|| Fixed2(top.ceiling.median()))),
            Maybe((!top.speedup.is_empty()).then(|| Fixed2(top.speedup.median()))),
            MaybeSigned(top.of_ceiling.median())
        );
        if !top.tables_map.is_empty() {
            let (lib, xen) = (last.map.min(), last.raw_map.min());
            xm_info!(
                "report: bench-grant-tables per_call={=usize} grants={=usize} reps={=usize} lib_map_us={=u64} xen_map_us={=u64} own_us={=i64} tables_map_us={=u64} tables_unmap_us={=u64} lib_unmap_us={=u64} xen_unmap_us={=u64}",
                per,
                n,
                top.tables_map.len(),
                lib,
                xen,
                i64::try_from(lib).unwrap_or(i64::MAX) - i64::try_from(xen).unwrap_or(i64::MAX),
                top.tables_map.min(),
                top.tables_unmap.min(),
                last.unmap.min(),
                last.raw_unmap.min()
            );
        }
        goals.grant_of_ceiling = of;
        goals.grant_share = last.share_of_minima();
    }
    Ok(())
}

// ---- the helper domain (tables 3 and 4) -------------------------------------

/// The agent's page tables and mapping window, for the benchmarks that map
/// through them (the helper domain's set-up and table 3).
pub struct Maps<'a, P> {
    /// The page tables.
    pub pt: &'a mut P,
    /// The window's allocator.
    pub vas: &'a mut VaSpace,
}

/// Where the helper's granted frames start (as in `domctl::FlowConfig`).
const HELPER_GRANT_GFN: Gfn = Gfn(0x1000);
/// Where the helper's frames for table 4 start (2 MiB-aligned, clear of
/// the granted ones: a helper's grant table holds at most 32760 grants).
const HELPER_FOREIGN_GFN: Gfn = Gfn(0x10000);

/// What the helper domain holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HelperLayout {
    /// Pages from [`HELPER_GRANT_GFN`] (the first `grants` granted).
    grant_pages: u64,
    grants: u32,
    gnttab_frames: u32,
    /// Pages from [`HELPER_FOREIGN_GFN`] for table 4 (0: none).
    foreign_pages: u64,
}

/// The largest extent order that divides `pages` (2 MiB or 4 KiB).
fn extent_order(pages: u64) -> Order {
    if pages % O9.pages().0 == 0 {
        O9
    } else {
        Order::ZERO
    }
}

impl HelperLayout {
    fn of(p: &Params, grants: bool, foreign: bool) -> Result<Self, BenchError> {
        let per_frame = u64::from(xenmem::xen::abi::gnttab::ENTRIES_PER_FRAME_V1);
        let reserved = u64::from(xenmem::xen::abi::gnttab::NR_RESERVED_ENTRIES);
        // The flow needs at least one seeded grant and one page.
        let g = if grants { p.grants.max(1) as u64 } else { 1 };
        let frames = g.saturating_add(reserved).div_ceil(per_frame);
        let max = u64::from(xenmem::xen::domctl::DEFAULT_MAX_GRANT_FRAMES);
        if frames > max || HELPER_GRANT_GFN.0.saturating_add(g) > HELPER_FOREIGN_GFN.0 {
            return Err(BenchError::Check(
                "more grants than the helper's grant table holds",
            ));
        }
        Ok(HelperLayout {
            grant_pages: g,
            grants: g as u32,
            gnttab_frames: frames as u32,
            foreign_pages: if foreign { p.foreign_frames as u64 } else { 0 },
        })
    }

    fn flow(&self, grantee: DomId) -> FlowConfig {
        FlowConfig {
            gfn: HELPER_GRANT_GFN,
            pages: self.grant_pages,
            order: extent_order(self.grant_pages),
            grants: self.grants,
            gnttab_frames: self.gnttab_frames,
            grantee,
        }
    }
}

/// Tables 3 and 4 (the parts that need another domain). Grants come from a
/// helper domain the agent builds (`domctl::CrossDomain`: created, given
/// memory, its grant table acquired and seeded with grants to this domain),
/// as do table 4's frames when [`Params::foreign_peer`] names no domain;
/// the helper is destroyed afterwards and the region table, the window and
/// the reservation must be as before. With a `foreign_peer` (Arm's
/// dom0less domU), table 4 maps that domain after the helper is gone.
fn mapping_tables<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    maps: Option<Maps<'_, P>>,
    set: BenchSet,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let grant = set.contains(BenchSet::GRANT);
    let foreign = set.contains(BenchSet::FOREIGN);
    if !ctx.survey.privileged {
        if grant {
            xm_info!("report: bench-grant status=skipped reason=\"needs a privileged domain\"");
        }
        if foreign {
            xm_info!("report: bench-foreign status=skipped reason=\"needs a privileged domain\"");
        }
        return Ok(());
    }
    let helper_foreign = foreign && ctx.p.foreign_peer.is_none();
    // A peer that runs shares the CPU: wait until it has shut down before
    // measuring anything here.
    let peer = match (foreign, ctx.p.foreign_peer) {
        (true, Some(peer)) => Some((peer, wait_quiet(ctx, peer)?)),
        _ => None,
    };
    let mut r = Ok(());
    if (grant || helper_foreign) && ctx.p.helper {
        let Some(maps) = maps else {
            return Err(BenchError::Check(
                "no page tables to map the helper domain through",
            ));
        };
        r = with_helper(ctx, t, maps, grant, helper_foreign, goals);
    } else {
        if grant {
            xm_info!(
                "report: bench-grant status=skipped reason=\"no helper domain (Params::helper is off)\" grants={=usize}",
                ctx.p.grants
            );
        }
        if helper_foreign {
            xm_info!(
                "report: bench-foreign status=skipped reason=\"no peer domain and no helper domain\" frames={=usize}",
                ctx.p.foreign_frames
            );
        }
    }
    match peer {
        Some((peer, Some(quiet))) => {
            let kind = if peer.runs { "domu" } else { "peer" };
            let f = foreign_table(ctx, t, peer, kind, quiet, goals);
            if let (Err(e), Err(_)) = (&f, &r) {
                xm_error!("bench: foreign: {}", shown(e));
            }
            r.and(f)
        }
        Some((peer, None)) => {
            xm_info!(
                "report: bench-foreign status=skipped reason=\"no domain {}\"",
                peer.dom
            );
            r
        }
        None => r,
    }
}

/// Build the helper, run tables 3 and/or 4 against it, destroy it, and check
/// that the agent's table, window and reservation are as they were.
fn with_helper<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    maps: Maps<'_, P>,
    grant: bool,
    foreign: bool,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let Maps { pt, vas } = maps;
    let Some(mut h) = helper_build(ctx, t, pt, vas, grant, foreign)? else {
        return Ok(());
    };
    let t0 = ctx.clock.now();
    let r = core::mem::replace(&mut h.ready, Ok(()))
        .and_then(|()| helper_measure(ctx, t, pt, vas, &h, grant, foreign, goals));
    let bench_us = ctx.us(ctx.clock.now().wrapping_sub(t0));
    helper_finish(ctx, t, pt, vas, h, r, bench_us)
}

/// The helper domain while the benchmarks use it, and what must be as
/// before once it is gone.
struct Helper<'h, H: Hypervisor> {
    ctl: DomainControl<'h, H>,
    cd: CrossDomain,
    layout: HelperLayout,
    /// Whether the pages for table 4 were given (the helper exists either
    /// way and must be torn down).
    ready: Result<(), BenchError>,
    before: RegionTable,
    window: u64,
    start: PageCount,
    setup_us: u64,
}

/// Create the helper (`CrossDomain::setup`: memory, pattern, grant table,
/// grants to this domain) and give it the pages for table 4. `None` (and
/// the tables reported not applicable) when Xen is not 4.17.
fn helper_build<'h, H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'h, H, C, M>,
    t: &mut RegionTable,
    pt: &mut P,
    vas: &mut VaSpace,
    grant: bool,
    foreign: bool,
) -> Result<Option<Helper<'h, H>>, BenchError> {
    let ctl = match DomainControl::new(ctx.hv) {
        Ok(c) => c,
        Err(e @ DomctlError::UnsupportedXen { .. }) => {
            // Not applicable rather than failed: the domctl ABI is 4.17's.
            if grant {
                xm_info!("report: bench-grant status=n/a reason=\"{}\"", shown(&e));
            }
            if foreign {
                xm_info!("report: bench-foreign status=n/a reason=\"{}\"", shown(&e));
            }
            return Ok(None);
        }
        Err(e) => return Err(BenchError::Domctl("xen_version", e)),
    };
    let layout = HelperLayout::of(ctx.p, grant, foreign)?;
    let before = t.clone();
    let window = vas.used();
    let start = ctx
        .hv
        .current_reservation(DomId::SELF)
        .map_err(xen_err("current_reservation"))?;
    let me = ctx.survey.domid.map_or(DomId(0), |(d, _)| d);
    let t0 = ctx.clock.now();
    let cd = CrossDomain::setup(&ctl, t, pt, vas, layout.flow(me)).map_err(BenchError::Flow)?;
    let dom = cd.domid();
    let ready = if layout.foreign_pages > 0 {
        let pages = PageCount(layout.grant_pages.saturating_add(layout.foreign_pages));
        ctl.set_max_pages(dom, pages)
            .map_err(|e| BenchError::Domctl("max_mem", e))
            .and_then(|()| {
                ctl.populate(
                    dom,
                    HELPER_FOREIGN_GFN,
                    layout.foreign_pages,
                    extent_order(layout.foreign_pages),
                )
                .map_err(|e| BenchError::Domctl("populate_physmap", e))
            })
    } else {
        Ok(())
    };
    let setup_us = ctx.us(ctx.clock.now().wrapping_sub(t0));
    Ok(Some(Helper {
        ctl,
        cd,
        layout,
        ready,
        before,
        window,
        start,
        setup_us,
    }))
}

/// Tables 3 and/or 4 against the helper.
#[allow(clippy::too_many_arguments)]
fn helper_measure<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    pt: &mut P,
    vas: &mut VaSpace,
    h: &Helper<'_, H>,
    grant: bool,
    foreign: bool,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    if grant {
        helper_grants(ctx, t, pt, vas, &h.cd, goals)?;
    }
    if foreign {
        let peer = ForeignPeer {
            dom: h.cd.domid(),
            first: HELPER_FOREIGN_GFN,
            runs: false,
        };
        foreign_table(ctx, t, peer, "helper", true, goals)?;
    }
    Ok(())
}

/// Tear the helper down (`CrossDomain::teardown`: grants revoked, mappings
/// released, the domain destroyed and gone), check that the agent's table,
/// window and reservation are as before, and report it all
/// (`bench-helper`). `r` is how the measurements went: its error comes
/// first.
fn helper_finish<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    pt: &mut P,
    vas: &mut VaSpace,
    h: Helper<'_, H>,
    r: Result<(), BenchError>,
    bench_us: u64,
) -> Result<(), BenchError> {
    let dom = h.cd.domid();
    let t0 = ctx.clock.now();
    let down = h.cd.teardown(&h.ctl, t, pt, vas);
    let teardown_us = ctx.us(ctx.clock.now().wrapping_sub(t0));
    let table_ok = *t == h.before;
    let window_ok = vas.used() == h.window;
    let reservation_ok = ctx.hv.current_reservation(DomId::SELF) == Ok(h.start);
    let gone = down.as_ref().is_ok_and(|d| d.domid == dom);
    let l = h.layout;
    xm_info!(
        "report: bench-helper domid={} grant_pages={=u64} grants={=u32} gnttab_frames={=u32} foreign_pages={=u64} order={=u8} setup_us={=u64} bench_us={=u64} teardown_us={=u64} destroyed={=str} table_restored={=str} window_restored={=str} reservation_restored={=str}",
        dom,
        l.grant_pages,
        l.grants,
        l.gnttab_frames,
        l.foreign_pages,
        extent_order(l.grant_pages).get(),
        h.setup_us,
        bench_us,
        teardown_us,
        yes(gone),
        yes(table_ok),
        yes(window_ok),
        yes(reservation_ok)
    );
    if let (Err(e), Err(_)) = (&down, &r) {
        xm_error!("bench: helper teardown: {}", shown(e));
    }
    r?;
    down.map_err(BenchError::Flow)?;
    if !(table_ok && window_ok && reservation_ok) {
        return Err(BenchError::Check(
            "the helper left the region table, the window or the reservation changed",
        ));
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Table 3 against the helper: the library path and the raw hypercalls
/// (into a hole reserved for the duration).
fn helper_grants<H: Hypervisor, C: Clock, M: Memory, P: MapTarget>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    pt: &mut P,
    vas: &mut VaSpace,
    cd: &CrossDomain,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let dom = cd.domid();
    let seeded = cd.seeded();
    let refs: Vec<GrantRef> = seeded.iter().map(|s| s.gref).collect();
    let n = PageCount(refs.len() as u64);
    let hole = t
        .find_hole(n, Order::ZERO, Gfn(1))
        .ok_or(BenchError::NoHole(n))?;
    t.add(Region {
        range: hole,
        kind: RegionKind::Grant,
        flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        backing: Backing::Grant {
            dom,
            gref: refs.first().copied().unwrap_or(GrantRef(0)),
        },
    })?;
    let mut raw = RawGrants::new(ctx.hv, dom, refs, hole);
    let r = {
        let mut lib = LibGrants::new(ctx.hv, t, pt, vas, dom, seeded);
        let r = grant_table(ctx, &mut lib, Some(&mut raw), dom, goals);
        // After a failure, whatever is still mapped goes (errors after the
        // first are the same story).
        let _ = lib.unmap(ctx.p.grants.max(1));
        r
    };
    if raw.stuck() {
        // Some frames may still hold grant mappings: keep them out of
        // every later choice (as `grant` does).
        return r;
    }
    t.modify(
        hole,
        Change {
            kind: Some(RegionKind::Hole),
            clear: RegionFlags::all(),
            backing: Some(Backing::None),
            expect: Some(RegionKind::Grant),
            ..Change::default()
        },
    )?;
    r
}

// ---- foreign mapping --------------------------------------------------------

/// The most `SCHEDOP_yield`s spent waiting for the peer to go quiet.
const PEER_POLLS: u32 = 2_000_000;

/// Wait until `peer` has shut down if it runs (Arm's domU), so that it
/// does not share the CPU with the measurements (a shut-down domain's
/// memory stays mappable). `Some(quiet)`: it exists, and whether it is
/// quiet (`false`: still running after [`PEER_POLLS`] yields); `None`: there
/// is no such domain.
fn wait_quiet<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    peer: ForeignPeer,
) -> Result<Option<bool>, BenchError> {
    for _ in 0..PEER_POLLS {
        match ctx.hv.domain_info(peer.dom) {
            Ok(info) if info.shutdown.is_some() || !peer.runs => return Ok(Some(true)),
            Ok(_) => {}
            Err(XenError::Errno(xenmem::xen::Errno::ESRCH)) => return Ok(None),
            Err(err) => {
                return Err(BenchError::Xen {
                    op: "getdomaininfo",
                    err,
                })
            }
        }
        ctx.hv.yield_cpu().map_err(xen_err("SCHEDOP_yield"))?;
    }
    Ok(Some(false))
}

/// Table 4: map `peer`'s frames into a hole at every batch size, unmap
/// them one call per frame and in multicalls, and profile the multicalls.
/// `kind` names the peer in the rows (`helper`, `domu`); `quiet`: it does
/// not run while measured.
fn foreign_table<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    t: &mut RegionTable,
    peer: ForeignPeer,
    kind: &'static str,
    quiet: bool,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let n = ctx.p.foreign_frames;
    let hole = t
        .find_hole(PageCount(n as u64), Order::ZERO, Gfn(1))
        .ok_or(BenchError::NoHole(PageCount(n as u64)))?;
    t.add(Region {
        range: hole,
        kind: RegionKind::Foreign,
        flags: RegionFlags::READ | RegionFlags::CACHEABLE,
        backing: Backing::Foreign {
            dom: peer.dom,
            gfn: peer.first,
        },
    })?;
    let r = foreign_rows(ctx, peer, hole, quiet, kind, goals);
    if matches!(r, Err(BenchError::Xen { op: UNMAP_OP, .. })) {
        // Some frames may still hold foreign entries: keep them out of
        // every later choice (as `mapping` does).
        return r;
    }
    t.modify(hole, xenmem::mapping::back_to_hole())?;
    r
}

/// The error op of a failed removal: the frames may hold entries.
const UNMAP_OP: &str = "remove_from_physmap";
/// The error op of a multicall that failed as a whole; its frames were
/// then removed one call each (else the error is [`UNMAP_OP`]'s).
const UNMAP_MULTICALL_OP: &str = "multicall of remove_from_physmap";

/// Entries per multicall in the unmap profile (`bench-foreign-unmap`):
/// with the hypercall's own cost spread over more entries, what is left is
/// Xen's cost per entry.
const UNMAP_PROFILE: [usize; 3] = [1, 16, MULTICALL_MAX];

/// Map all of `frames` at `gfns`, `b` per `add_to_physmap_batch`: the
/// ticks it took, how many frames were asked for, and whether Xen mapped
/// every one.
fn foreign_map_all<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    dom: DomId,
    frames: &[Gfn],
    gfns: &[Gfn],
    errs: &mut [XenStatus],
    b: usize,
) -> (u64, usize, Result<(), BenchError>) {
    let c = ctx.clock;
    errs.fill(XenStatus::default());
    let t0 = c.now();
    let mut res = Ok(());
    let mut mapped = 0;
    for ((f, g), e) in frames.chunks(b).zip(gfns.chunks(b)).zip(errs.chunks_mut(b)) {
        res = ctx.hv.map_foreign_batch(dom, f, g, e);
        mapped += f.len();
        if res.is_err() {
            break;
        }
    }
    let t1 = c.now();
    let res = res.map_err(xen_err("add_to_physmap_batch")).and_then(|()| {
        match errs[..mapped].iter().find_map(|s| s.result().err()) {
            Some(err) => Err(BenchError::Xen {
                op: "add_to_physmap_batch entry",
                err,
            }),
            None => Ok(()),
        }
    });
    (t1.wrapping_sub(t0), mapped, res)
}

/// Remove `gfns` one `remove_from_physmap` per frame: the ticks, and the
/// first error but ENOENT (nothing mapped there).
fn foreign_unmap_single<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    gfns: &[Gfn],
) -> (u64, Result<(), BenchError>) {
    let t0 = ctx.clock.now();
    let mut first = None;
    for g in gfns {
        match ctx.hv.remove_from_physmap(*g) {
            Ok(()) | Err(XenError::Errno(xenmem::xen::Errno::ENOENT)) => {}
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let t1 = ctx.clock.now();
    let r = match first {
        Some(err) => Err(BenchError::Xen { op: UNMAP_OP, err }),
        None => Ok(()),
    };
    (t1.wrapping_sub(t0), r)
}

/// After a failure with `gfns` mapped or partly mapped: take out what is
/// there, one call per frame (ENOENT expected), and return `err` (or the
/// removal's error, which says frames may hold entries).
fn foreign_cleanup<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    gfns: &[Gfn],
    err: BenchError,
) -> BenchError {
    match foreign_unmap_single(ctx, gfns).1 {
        Err(e) => e,
        Ok(()) => err,
    }
}

/// Remove every frame of `gfns`, which are all mapped, with the batch call
/// (multicalls of [`MULTICALL_MAX`]): the ticks and the hypercalls made.
/// Any failed entry or multicall is an error (after a clean-up).
fn foreign_unmap_batched<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    gfns: &[Gfn],
    results: &mut [Result<(), XenError>],
) -> Result<(u64, usize), BenchError> {
    let results = &mut results[..gfns.len()];
    let t0 = ctx.clock.now();
    let b = ctx.hv.remove_from_physmap_batch(gfns, results);
    let t1 = ctx.clock.now();
    let b = match b {
        Ok(b) => b,
        Err(err) => {
            let e = BenchError::Xen {
                op: UNMAP_MULTICALL_OP,
                err,
            };
            return Err(foreign_cleanup(ctx, gfns, e));
        }
    };
    if let Some(err) = results.iter().find_map(|r| r.err()) {
        return Err(foreign_cleanup(
            ctx,
            gfns,
            BenchError::Xen { op: UNMAP_OP, err },
        ));
    }
    if let Some(err) = b.multicall_error {
        // Every frame went (one call each where the multicall did not
        // reach), but this is not the batched time.
        return Err(BenchError::Xen {
            op: UNMAP_MULTICALL_OP,
            err,
        });
    }
    Ok((t1.wrapping_sub(t0), b.hypercalls()))
}

/// Remove every frame of `gfns`, which are all mapped, `per` to a
/// multicall ([`Hypervisor::multicall_remove_from_physmap`] alone): the
/// ticks. Anything not removed is an error (after a clean-up).
fn foreign_unmap_multicalls<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    gfns: &[Gfn],
    results: &mut [Result<(), XenError>],
    per: usize,
) -> Result<u64, BenchError> {
    let results = &mut results[..gfns.len()];
    let t0 = ctx.clock.now();
    let mut failed = None;
    for (g, r) in gfns.chunks(per).zip(results.chunks_mut(per)) {
        let o = ctx.hv.multicall_remove_from_physmap(g, r);
        if let Err(err) = o.result {
            failed = Some(BenchError::Xen {
                op: UNMAP_MULTICALL_OP,
                err,
            });
            break;
        }
        if o.reached < g.len() {
            failed = Some(BenchError::Check("a multicall left entries undone"));
            break;
        }
    }
    let t1 = ctx.clock.now();
    if let Some(e) = failed {
        return Err(foreign_cleanup(ctx, gfns, e));
    }
    if let Some(err) = results.iter().find_map(|r| r.err()) {
        return Err(foreign_cleanup(
            ctx,
            gfns,
            BenchError::Xen { op: UNMAP_OP, err },
        ));
    }
    Ok(t1.wrapping_sub(t0))
}

/// Multicalls of [`MULTICALL_MAX`] removals of frames where nothing is
/// mapped: the ticks. Each entry must come back ENOENT: Xen looked the
/// frame up and changed nothing, so this is the multicall's and the
/// sub-call's own cost per entry without the p2m change.
fn foreign_unmap_nothing<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    gfns: &[Gfn],
    results: &mut [Result<(), XenError>],
) -> Result<u64, BenchError> {
    let results = &mut results[..gfns.len()];
    let t0 = ctx.clock.now();
    for (g, r) in gfns
        .chunks(MULTICALL_MAX)
        .zip(results.chunks_mut(MULTICALL_MAX))
    {
        let o = ctx.hv.multicall_remove_from_physmap(g, r);
        o.result.map_err(xen_err(UNMAP_MULTICALL_OP))?;
        if o.reached < g.len() {
            return Err(BenchError::Check("a multicall left entries undone"));
        }
    }
    let t1 = ctx.clock.now();
    let enoent = Err(XenError::Errno(xenmem::xen::Errno::ENOENT));
    match results.iter().find(|r| **r != enoent) {
        Some(Ok(())) => Err(BenchError::Check(
            "a frame that should hold nothing was removed",
        )),
        Some(Err(err)) => Err(BenchError::Xen {
            op: UNMAP_OP,
            err: *err,
        }),
        None => Ok(t1.wrapping_sub(t0)),
    }
}

fn foreign_rows<H: Hypervisor, C: Clock, M: Memory>(
    ctx: &Ctx<'_, H, C, M>,
    peer: ForeignPeer,
    hole: FrameRange,
    quiet: bool,
    kind: &'static str,
    goals: &mut Goals,
) -> Result<(), BenchError> {
    let n = ctx.p.foreign_frames;
    let frames: Vec<Gfn> = (peer.first.0..peer.first.0 + n as u64).map(Gfn).collect();
    let gfns: Vec<Gfn> = (hole.start().0..hole.end().0).map(Gfn).collect();
    let mut errs: Vec<XenStatus> = alloc::vec![XenStatus::default(); n];
    let mut results: Vec<Result<(), XenError>> = alloc::vec![Ok(()); n];
    let batches = ctx.p.foreign_batches.map(|b| b.clamp(1, u16::MAX as usize));
    let largest = batches.iter().copied().max().unwrap_or(1);
    let mut map = [<Samples>::default(); 4];
    let mut unmap = [<Samples>::default(); 4];
    let mut batched = [<Samples>::default(); 4];
    let mut ratio = [<Samples>::default(); 4];
    let mut unmap_calls = [0usize; 4];
    let mut vs = [<Samples>::default(); 4];
    let mut profile = [<Samples>::default(); UNMAP_PROFILE.len()];
    let mut nothing = <Samples>::default();
    // Map everything, `b` per call, or fail with nothing left mapped.
    let map_all = |errs: &mut [XenStatus], b: usize| -> Result<u64, BenchError> {
        let (ticks, mapped, r) = foreign_map_all(ctx, peer.dom, &frames, &gfns, errs, b);
        match r {
            Ok(()) => Ok(ticks),
            Err(e) => Err(foreign_cleanup(ctx, &gfns[..mapped], e)),
        }
    };
    for _ in 0..ctx.p.reps {
        for (i, &b) in batches.iter().enumerate() {
            // Map, and take everything out one call per frame ...
            let m = map_all(&mut errs, b)?;
            let (u, r) = foreign_unmap_single(ctx, &gfns);
            r?;
            // ... then again, taken out in multicalls.
            map_all(&mut errs, b)?;
            let (ub, calls) = foreign_unmap_batched(ctx, &gfns, &mut results)?;
            xm_info!(
                "report: bench-foreign-rep rep={=usize} batch={=usize} map_us={=u64} unmap_us={=u64} unmap_batched_us={=u64}",
                map[i].len(),
                b,
                ctx.us(m),
                ctx.us(u),
                ctx.us(ub)
            );
            map[i].push(ctx.us(m));
            unmap[i].push(ctx.us(u));
            batched[i].push(ctx.us(ub));
            ratio[i].push(Fixed2::ratio(ub, m).map_or(0, |f| f.0));
            unmap_calls[i] = calls;
        }
        let last = map[0].len() - 1;
        let base = map[0].v[last];
        for (i, s) in vs.iter_mut().enumerate() {
            s.push(Fixed2::ratio(base, map[i].v[last]).map_or(0, |f| f.0));
        }
        // The profile: multicalls of 1, 16 and MULTICALL_MAX entries.
        for (k, &per) in UNMAP_PROFILE.iter().enumerate() {
            map_all(&mut errs, largest)?;
            let t = foreign_unmap_multicalls(ctx, &gfns, &mut results, per)?;
            profile[k].push(ctx.us(t));
        }
        // And once more with nothing mapped (all ENOENT).
        nothing.push(ctx.us(foreign_unmap_nothing(ctx, &gfns, &mut results)?));
    }
    for (i, b) in batches.iter().enumerate() {
        let us = map[i].median();
        xm_info!(
            "report: bench-foreign batch={=usize} frames={=usize} dom={} peer_kind={=str} hypercalls={=usize} map_us={=u64} spread={} ns_per_frame={=u64} speedup={} speedup_spread={} unmap_us={=u64} unmap_batched_us={=u64} unmap_batched_spread={} unmap_hypercalls={=usize} per_multicall={=usize} unmap_vs_map={} unmap_vs_map_spread={} peer_quiet={=str}",
            b,
            n,
            peer.dom,
            kind,
            n.div_ceil(*b),
            us,
            Maybe(map[i].spread()),
            us * 1000 / n.max(1) as u64,
            Fixed2(vs[i].median()),
            Maybe(vs[i].spread()),
            unmap[i].median(),
            batched[i].median(),
            Maybe(batched[i].spread()),
            unmap_calls[i],
            MULTICALL_MAX,
            Fixed2(ratio[i].median()),
            Maybe(ratio[i].spread()),
            if quiet { "yes" } else { "no" }
        );
    }
    for (k, per) in UNMAP_PROFILE.iter().enumerate() {
        let us = profile[k].median();
        xm_info!(
            "report: bench-foreign-unmap per_multicall={=usize} multicalls={=usize} frames={=usize} unmap_us={=u64} spread={} ns_per_frame={=u64}",
            per,
            n.div_ceil(*per),
            n,
            us,
            Maybe(profile[k].spread()),
            us * 1000 / n.max(1) as u64
        );
    }
    let us = nothing.median();
    xm_info!(
        "report: bench-foreign-unmap-nothing per_multicall={=usize} multicalls={=usize} frames={=usize} unmap_us={=u64} spread={} ns_per_frame={=u64}",
        MULTICALL_MAX,
        n.div_ceil(MULTICALL_MAX),
        n,
        us,
        Maybe(nothing.spread()),
        us * 1000 / n.max(1) as u64
    );
    // The goal: at the largest batch, multicalls against the map.
    if let Some(i) = batches.iter().position(|&b| b == largest) {
        goals.foreign_unmap_vs_map = Some(Fixed2(ratio[i].median()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{build_table, survey, DomidSource};
    use crate::cmdline::Options;
    use std::cell::Cell;
    use xenmem::xen::abi::gnttab::{GrantEntryV1, GTF_PERMIT_ACCESS};
    use xenmem::xen::ShutdownReason;
    use xenmem_model::window::{clean, BufTables};
    use xenmem_model::{DomainConfig, Op, XenModel};

    /// No page tables (benchmarks that do not map).
    fn no_maps() -> Option<Maps<'static, BufTables<'static>>> {
        None
    }

    /// Page tables over real (leaked) host memory whose pages every handle
    /// reaches (`grant::testmem`): each window page is routed to the model's
    /// memory for the frame dom0 has there (a mapped grant, a foreign or
    /// acquired frame), else to the window's own memory.
    fn bench_tables(m: &XenModel, pages: u64) -> BufTables<'_> {
        BufTables::new(pages).on_model(m, DomId(0))
    }

    /// A clock that advances 1000 ticks (1 us at 1 GHz) per read.
    struct StepClock(Cell<u64>);

    impl Clock for StepClock {
        fn now(&self) -> u64 {
            self.0.set(self.0.get() + 1000);
            self.0.get()
        }
        fn hz(&self) -> u64 {
            1_000_000_000
        }
        fn source(&self) -> &'static str {
            "step"
        }
    }

    /// Memory that remembers the last byte written per range.
    #[derive(Default)]
    struct FakeMemory(std::cell::RefCell<std::collections::HashMap<u64, u8>>);

    impl Memory for FakeMemory {
        unsafe fn fill(&self, range: FrameRange, byte: u8) -> bool {
            self.0.borrow_mut().insert(range.start().0, byte);
            true
        }
        fn holds(&self, range: FrameRange, byte: u8) -> Option<bool> {
            Some(self.0.borrow().get(&range.start().0) == Some(&byte))
        }
    }

    #[test]
    fn samples_and_fixed_point() {
        let mut s = <Samples>::default();
        assert_eq!((s.median(), s.spread()), (0, None));
        for x in [5, 1, 3] {
            s.push(x);
        }
        assert_eq!((s.median(), s.min(), s.max()), (3, 1, 5));
        assert_eq!(s.spread(), Some(Fixed2(500)));
        s.push(4);
        assert_eq!(s.median(), 3, "mean of 3 and 4, rounded down");
        for x in 0..20 {
            s.push(x);
        }
        assert_eq!(s.len(), MAX_REPS);
        assert_eq!(Fixed2::ratio(2, 3), Some(Fixed2(67)));
        assert_eq!(Fixed2::ratio(1, 0), None);
        assert_eq!(Fixed2(1234).to_string(), "12.34");
        assert_eq!(Fixed2(5).to_string(), "0.05");
        assert_eq!(Fixed2::whole(3), Fixed2(300));
    }

    #[test]
    fn shares_ceilings_and_signed_values() {
        // (path - Xen) / Xen, in percent, signed.
        assert_eq!(share_of_xen(105, 100), Some(Signed2(500)));
        assert_eq!(share_of_xen(1035, 1030), Some(Signed2(49)));
        assert_eq!(share_of_xen(97, 100), Some(Signed2(-300)));
        assert_eq!(share_of_xen(100, 100), Some(Signed2(0)));
        assert_eq!(share_of_xen(5, 0), None);
        // The engine's own time from its own counters: a 1000 us trip with
        // 950 us in hypercalls, beside a 1100 us replay: 50 / 1100.
        assert_eq!(own_share(1000, 950, 1100), Some(Signed2(455)));
        assert_eq!(own_share(1000, 1000, 900), Some(Signed2(0)));
        assert_eq!(own_share(1000, 950, 0), None);
        assert_eq!(Signed2(-300).to_string(), "-3.00");
        assert_eq!(Signed2(-5).to_string(), "-0.05");
        assert_eq!(Signed2(1234).to_string(), "12.34");
        // h = 52.9, p = 15.1 (x86's record): 1024 grants one per call take
        // 1024 (h + p) = 69632 us, in one call h + 1024 p = 15515 us
        // (rounded); (h + p) / p = 68 / 15.1 = 4.50.
        let c = batching_ceiling((1024, 69632), (1, 15515), 1024).unwrap();
        assert_eq!(signed_ratio(c.0, c.1), Some(Signed2(450)));
        // A library that reaches 4.39x of it: 97.5%.
        let lib = of_ceiling(4390, 1000, c).unwrap();
        assert!(lib > Signed2(9740) && lib < Signed2(9760), "{lib}");
        // The fit through 16 calls of 64 and one of 1024 (h = 10, p = 1):
        // 16 * 10 + 1024 = 1184, 10 + 1024 = 1034; (h + p) / p = 11.
        let c = batching_ceiling((16, 1184), (1, 1034), 1024).unwrap();
        assert_eq!(signed_ratio(c.0, c.1), Some(Signed2(1100)));
        // Hypercalls that cost nothing beyond their operations: 1x.
        let c = batching_ceiling((1024, 1000), (1, 1000), 1024).unwrap();
        assert_eq!(signed_ratio(c.0, c.1), Some(Signed2(100)));
        // No ceiling: rows that do not differ in hypercalls, batching that
        // costs more (h < 0), no time left for the operations (p <= 0).
        assert_eq!(batching_ceiling((1, 100), (1, 90), 1024), None);
        assert_eq!(batching_ceiling((1024, 1000), (1, 2000), 1024), None);
        assert_eq!(batching_ceiling((1024, 1000), (1, 0), 1024), None);
        // Medians of signed samples.
        let mut m = <SignedSamples>::default();
        assert_eq!(m.median(), None);
        for v in [300, -100, 50] {
            m.push(Signed2(v));
        }
        assert_eq!(m.median(), Some(Signed2(50)));
        m.push(Signed2(-200));
        assert_eq!(m.median(), Some(Signed2(-25)), "mean of -100 and 50");
    }

    #[test]
    fn the_engine_share_goal_is_xenmems_own_time() {
        let strats = strategies(true);
        let mut rows = [Row::default(); 3];
        for (i, row) in rows.iter_mut().enumerate() {
            for v in [300, 100, 200] {
                row.own.push(Signed2(v * (i as i64 + 1) * 10));
                row.share.push(Signed2(-v));
            }
        }
        let mut g = Goals::default();
        report_balloon(&strats, &rows, 256, &mut g);
        assert_eq!(g.engine_share, Some(Signed2(2000)), "xenmem's, not Linux's");
        // No replay came back whole: no measurement, not a pass.
        rows[0].own = <SignedSamples>::default();
        report_balloon(&strats, &rows, 256, &mut g);
        assert_eq!(g.engine_share, None);
    }

    #[test]
    fn goals_pass_and_miss_as_their_bounds_say() {
        let goals = Goals {
            engine_share: Some(Signed2(-120)),
            calls_per_gib: Some(Fixed2(400)),
            grant_of_ceiling: Some(Signed2(9400)),
            grant_share: Some(Signed2(500)),
            ..Goals::default()
        };
        let l = goals.list();
        let by = |name| l.iter().find(|g| g.name == name).unwrap();
        let judged = |name| {
            let g = by(name);
            g.judge(g.measured.unwrap())
        };
        // A negative share (the replay was slower) is met, with no factor.
        assert_eq!(
            judged("engine-share"),
            Judged {
                pass: true,
                factor: None,
                off_by: Some(Fixed2(100))
            }
        );
        // At the bound passes.
        assert_eq!(
            judged("grant-library-share"),
            Judged {
                pass: true,
                factor: Some(Fixed2(100)),
                off_by: Some(Fixed2(100))
            }
        );
        // 94% of the ceiling against >= 95%: missed by 95 / 94.
        assert_eq!(
            judged("grant-batched-of-ceiling"),
            Judged {
                pass: false,
                factor: Some(Fixed2(99)),
                off_by: Some(Fixed2(101))
            }
        );
        // 4 hypercalls per GiB against <= 2: missed by 2x.
        assert_eq!(
            judged("hypercalls-per-gib"),
            Judged {
                pass: false,
                factor: Some(Fixed2(50)),
                off_by: Some(Fixed2(200))
            }
        );
        // The targets of issue 14, and no goal against a strategy.
        let targets: Vec<_> = l
            .iter()
            .map(|g| (g.name, g.at_least, g.target, g.unit))
            .collect();
        assert_eq!(
            targets,
            [
                ("engine-share", false, Signed2(500), "pct"),
                ("hypercalls-per-gib", false, Signed2(200), "x"),
                ("populate-vs-floor", false, Signed2(300), "x"),
                ("grant-batched-of-ceiling", true, Signed2(9500), "pct"),
                ("grant-library-share", false, Signed2(500), "pct"),
                ("foreign-unmap-vs-map", false, Signed2(120), "x"),
            ]
        );
        assert!(by("populate-vs-floor").measured.is_none());
    }

    fn x86_dom0(m: &XenModel, pages: u64) -> (Survey, RegionTable) {
        m.add_domain(DomainConfig::pvh_dom0(pages)).unwrap();
        m.set_current(DomId(0)).unwrap();
        let boot = crate::agent::test_boot::pvh(b"");
        let s = survey(m, &boot, &Options::default()).unwrap();
        let t = build_table(&s, &boot, None).unwrap();
        (s, t)
    }

    fn small() -> Params {
        Params {
            reps: 3,
            grant_reps: 5,
            balloon_pages: PageCount(8 << 8),
            scale_max_pages: PageCount(32 << 8),
            grants: 16,
            foreign_frames: 64,
            foreign_batches: [1, 8, 32, 64],
            foreign_peer: None,
            helper: false,
        }
    }

    #[test]
    fn balloon_and_floor_leave_table_and_reservation_as_they_were() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = x86_dom0(&m, 1 << 14);
        let before = t.clone();
        let clock = StepClock(Cell::new(0));
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            BenchSet::all(),
            &small(),
            no_maps(),
        );
        assert_eq!(v, Verdict::Pass);
        assert_eq!(t, before, "the table ends as it started");
        assert_eq!(m.tot_pages(DomId(0)), Some(s.current.0));
        m.check_conservation().unwrap();
        // Engine and raw replay for each of the three strategies, 3 times
        // (xenmem 1, Linux 4 = 2048 pages / 512, Mini-OS 32; doubled by the
        // replay), then the 32 MiB scale row: 1 per repetition.
        assert_eq!(
            m.calls(Op::DecreaseReservation),
            3 * 2 * (1 + 4 + 32) + 3,
            "decrease calls"
        );
        // The goals: on the step clock the engine's round trip and the
        // replay each take 1 us a direction, and the host's engine counts
        // no time in its hypercalls (no counter there): all of its 2 us
        // are its own, 100% of the replay's.
        let p = small();
        let mem = FakeMemory::default();
        let ctx = Ctx {
            hv: &m,
            clock: &clock,
            mem: &mem,
            survey: &s,
            p: &p,
        };
        let mut g = Goals::default();
        balloon_and_floor(&ctx, &mut t, BenchSet::all(), &mut g).unwrap();
        assert_eq!(g.engine_share, Some(Signed2(10000)));
        // The scale row: one call each way for 32 MiB, 2 × 1024 / (2 × 32).
        assert_eq!(g.calls_per_gib, Some(Fixed2(3200)));
        assert!(g.populate_vs_floor.is_some());
        assert_eq!(t, before);
    }

    /// An identity map that needs a new table frame for the first change in
    /// each 2 MiB block, from the table (the lowest free RAM frame), as the
    /// x86_64 one does when it splits a 2 MiB page.
    #[derive(Default)]
    struct SplittingIdentity {
        split: std::cell::RefCell<std::collections::BTreeSet<u64>>,
        frames: std::cell::RefCell<Vec<xenmem::addr::GuestPhysAddr>>,
    }

    impl reservation::IdentityMap for SplittingIdentity {
        fn unmap(
            &self,
            t: &mut RegionTable,
            range: FrameRange,
        ) -> Result<(), xenmem::paging::PagingError> {
            use xenmem::paging::FrameSource;
            if range.len().0 < 512 && self.split.borrow_mut().insert(range.start().0 >> 9) {
                self.frames.borrow_mut().push(t.alloc_frame()?);
            }
            Ok(())
        }
        fn map(
            &self,
            _: &mut RegionTable,
            _: FrameRange,
        ) -> Result<(), xenmem::paging::PagingError> {
            Ok(())
        }
    }

    #[test]
    fn the_arena_leaves_frames_for_the_identity_maps_tables() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = x86_dom0(&m, 1 << 14);
        let arena = arena_setup(&mut t, PageCount(8 << 8)).unwrap();
        let pages = PageCount(arena.pages());
        let id = SplittingIdentity::default();
        // Linux's strategy: order 0, a split per 2 MiB.
        let mut e = Engine::new(&m, Strategy::LINUX, s.current, s.features).with_identity_map(&id);
        e.decrease(&mut t, pages).unwrap();
        use xenmem::paging::IdentityFrames;
        assert!(
            arena.runs.iter().all(|r| t.all_ballooned(*r)),
            "the arena went, all of it"
        );
        assert_eq!(t.count(RegionKind::Ballooned), pages);
        e.increase(&mut t, pages).unwrap();
        assert_eq!(e.verify(), Ok(s.current));
        let frames = id.frames.borrow();
        assert_eq!(frames.len(), 4, "one table per 2 MiB of the arena");
        let low = arena.runs[0].start_addr();
        assert!(frames.iter().all(|f| *f < low), "{frames:?} below {low:?}");
        arena_teardown(&mut t, &arena).unwrap();
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_short_raw_replay_is_undone() {
        use xenmem_model::Fault;
        let m = XenModel::new(1 << 16);
        let (s, mut t) = x86_dom0(&m, 1 << 14);
        let before = t.clone();
        let clock = StepClock(Cell::new(0));
        let p = small();
        let ctx = Ctx {
            hv: &m,
            clock: &clock,
            mem: &FakeMemory::default(),
            survey: &s,
            p: &p,
        };
        let arena = arena_setup(&mut t, p.balloon_pages).unwrap();
        // Xen releases one extent and 100 pages of the next, then stops.
        m.inject(Fault::PartialExtent {
            after_extents: 1,
            pages: 100,
        });
        let r = raw_trip(&ctx, &mut t, &arena, strategies(true)[0].1, s.current);
        assert!(matches!(r, Err(BenchError::Check(_))), "{r:?}");
        // A populate that comes back short: the repetition is dropped.
        m.inject(Fault::ShortAt {
            op: Op::PopulatePhysmap,
            after_extents: 2,
        });
        let r = raw_trip(&ctx, &mut t, &arena, strategies(true)[0].1, s.current);
        assert!(matches!(r, Ok(None)), "{r:?}");
        arena_teardown(&mut t, &arena).unwrap();
        assert_eq!(t, before, "everything was brought back");
        assert_eq!(m.tot_pages(DomId(0)), Some(s.current.0));
        m.check_conservation().unwrap();
    }

    #[test]
    fn a_short_arena_is_an_error_and_changes_nothing() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = x86_dom0(&m, 1 << 10);
        let before = t.clone();
        let clock = StepClock(Cell::new(0));
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            BenchSet::BALLOON,
            &small(),
            no_maps(),
        );
        assert_eq!(v, Verdict::Fail);
        assert_eq!(t, before);
    }

    #[test]
    fn foreign_maps_a_peer_at_every_batch_size_and_unmaps_it() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = x86_dom0(&m, 1 << 12);
        m.add_domain(DomainConfig::pvh_domu(DomId(1), 1024))
            .unwrap();
        m.set_current(DomId(1)).unwrap();
        m.shutdown(ShutdownReason::Poweroff).unwrap();
        m.set_current(DomId(0)).unwrap();
        // The model's dom0 table ends with its RAM: add room for mappings.
        let room = FrameRange::new(Gfn(1 << 20), PageCount(256)).unwrap();
        t.add(Region::new(room, RegionKind::Hole, RegionFlags::empty()))
            .unwrap();
        let before = t.clone();
        let mut p = small();
        p.foreign_peer = Some(ForeignPeer {
            dom: DomId(1),
            first: Gfn(0),
            runs: true,
        });
        let clock = StepClock(Cell::new(0));
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            BenchSet::FOREIGN,
            &p,
            no_maps(),
        );
        assert_eq!(v, Verdict::Pass);
        assert_eq!(t, before);
        assert!(m.foreign(DomId(0)).is_empty(), "everything unmapped");
        // 64 + 8 + 2 + 1 batches per repetition, twice (one unmap per
        // frame, one in multicalls), and 3 maps of one batch for the
        // multicall profile.
        assert_eq!(m.calls(Op::MapForeignBatch), 3 * (2 * (64 + 8 + 2 + 1) + 3));
        // One multicall per row (64 frames), then 64 + 4 + 1 in the profile
        // and 1 with nothing mapped.
        assert_eq!(m.calls(Op::Multicall), 3 * (4 + 64 + 4 + 1 + 1));
        // A multicall Xen refuses fails the run, with nothing left mapped.
        m.inject(xenmem_model::Fault::ErrnoOnCall {
            op: Op::Multicall,
            nth: 2,
            errno: xenmem::xen::Errno::ENOSYS,
        });
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            BenchSet::FOREIGN,
            &p,
            no_maps(),
        );
        assert_eq!(v, Verdict::Fail);
        assert_eq!(t, before);
        assert!(m.foreign(DomId(0)).is_empty());
        // Without a peer and without a helper the tables are skipped, not
        // failed; with a helper but no page tables the run fails.
        p.foreign_peer = None;
        let sets = BenchSet::FOREIGN | BenchSet::GRANT | BenchSet::FOOTPRINT;
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            sets,
            &p,
            no_maps(),
        );
        assert_eq!(v, Verdict::Pass);
        p.helper = true;
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            sets,
            &p,
            no_maps(),
        );
        assert_eq!(v, Verdict::Fail);
        assert_eq!(t, before);
        assert_eq!(m.domain_ids(), [DomId(0), DomId(1)]);
    }

    /// A grant mapper that takes `call_us` per hypercall and `op_us` per
    /// op (on the step clock).
    struct FakeGrants<'a> {
        clock: &'a StepClock,
        call_us: u64,
        op_us: u64,
        mapped: usize,
        /// The maps (counted from 1) that take `spike_us` more (a host
        /// preemption).
        spikes: &'a [u64],
        spike_us: u64,
        maps: u64,
    }

    impl GrantMapper for FakeGrants<'_> {
        fn map(&mut self, count: usize, per_call: usize) -> Result<u64, BenchError> {
            let calls = count.div_ceil(per_call) as u64;
            let c = self.clock.0.get();
            self.maps += 1;
            let spike = if self.spikes.contains(&self.maps) {
                self.spike_us
            } else {
                0
            };
            self.clock
                .0
                .set(c + (calls * self.call_us + count as u64 * self.op_us + spike) * 1000);
            self.mapped = count;
            Ok(calls)
        }
        fn unmap(&mut self, per_call: usize) -> Result<u64, BenchError> {
            let calls = self.mapped.div_ceil(per_call) as u64;
            self.mapped = 0;
            Ok(calls)
        }
    }

    #[test]
    fn grant_table_compares_batched_with_single() {
        let m = XenModel::new(1 << 16);
        let (s, _) = x86_dom0(&m, 1 << 12);
        let clock = StepClock(Cell::new(0));
        let p = Params {
            grants: 1024,
            ..small()
        };
        let ctx = Ctx {
            hv: &m,
            clock: &clock,
            mem: &FakeMemory::default(),
            survey: &s,
            p: &p,
        };
        let mut g = Goals::default();
        let fake = |call_us, op_us| FakeGrants {
            clock: &clock,
            call_us,
            op_us,
            mapped: 0,
            spikes: &[],
            spike_us: 0,
            maps: 0,
        };
        let (mut lib, mut raw) = (fake(10, 1), fake(5, 1));
        grant_table(&ctx, &mut lib, Some(&mut raw), DomId(1), &mut g).unwrap();
        // Each timed map reads the clock twice (+1 us). The library: one per
        // call 1024 * 11 + 1 = 11265 us, one call 10 + 1024 + 1 = 1035 us
        // (10.88x); Xen alone: 1024 * 6 + 1 = 6145 and 5 + 1024 + 1 = 1030.
        // The fit through Xen's rows: h = 5115 / 1023 = 5 us, p = 1025 /
        // 1024 us, (h + p) / p = 5.995; 10.88 / 5.995 = 181.55%. The
        // library's share of the one-call map: 5 / 1030 = 0.49%.
        assert_eq!(g.grant_of_ceiling, Some(Signed2(18155)));
        assert_eq!(g.grant_share, Some(Signed2(49)));
        assert_eq!((lib.mapped, raw.mapped), (0, 0));
        // Host preemptions of 3 ms. Maps go one-per-call, 64, 1024 in each
        // repetition: the library's one-per-call map is slowed in
        // repetitions 1 to 3 (maps 4, 7, 10), its one-call map in 0 to 2
        // (3, 6, 9), the raw one-call map in 4 (15). Every row keeps a
        // quiet repetition, so the minima (both sides of each ratio) give
        // the same goals as above; the medians of the paired
        // per-repetition ratios do not (3 of 5 are off the same way).
        let spiky = |call_us, op_us, spikes| FakeGrants {
            spikes,
            spike_us: 3000,
            ..fake(call_us, op_us)
        };
        let (mut lib, mut raw) = (spiky(10, 1, &[3, 4, 6, 7, 9, 10]), spiky(5, 1, &[15]));
        let mut g = Goals::default();
        grant_table(&ctx, &mut lib, Some(&mut raw), DomId(1), &mut g).unwrap();
        assert_eq!(g.grant_of_ceiling, Some(Signed2(18155)));
        assert_eq!(g.grant_share, Some(Signed2(49)));
        // Without the profile there is no ceiling and no share: no goal.
        let mut g = Goals::default();
        let none: Option<&mut FakeGrants<'_>> = None;
        grant_table(&ctx, &mut lib, none, DomId(1), &mut g).unwrap();
        assert_eq!((g.grant_of_ceiling, g.grant_share), (None, None));
        // No grants: an error, not a division by zero.
        let p0 = Params { grants: 0, ..p };
        let ctx0 = Ctx { p: &p0, ..ctx };
        let none: Option<&mut FakeGrants<'_>> = None;
        assert!(grant_table(&ctx0, &mut lib, none, DomId(1), &mut g).is_err());
    }

    /// An x86 dom0 of the model with room for mappings above its RAM.
    fn dom0_with_room(m: &XenModel) -> (Survey, RegionTable) {
        let (s, mut t) = x86_dom0(m, 1 << 12);
        let room = FrameRange::new(Gfn(1 << 20), PageCount(512)).unwrap();
        t.add(Region::new(room, RegionKind::Hole, RegionFlags::empty()))
            .unwrap();
        (s, t)
    }

    #[test]
    fn the_helper_serves_tables_3_and_4_and_is_destroyed() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = dom0_with_room(&m);
        let before = t.clone();
        let free = m.free_frames();
        let mut pt = bench_tables(&m, 256);
        let mut vas = VaSpace::new(pt.window());
        let p = Params {
            helper: true,
            ..small()
        };
        let clock = StepClock(Cell::new(0));
        let ctx = Ctx {
            hv: &m,
            clock: &clock,
            mem: &FakeMemory::default(),
            survey: &s,
            p: &p,
        };
        let h = helper_build(&ctx, &mut t, &mut pt, &mut vas, true, true)
            .unwrap()
            .unwrap();
        assert_eq!(h.ready, Ok(()));
        let dom = h.cd.domid();
        assert_eq!(h.layout.gnttab_frames, 1);
        assert_eq!(m.tot_pages(dom), Some(16 + 64));
        // The flow wrote the pattern and the grant entries through its own
        // mappings, whose pages are the model's here: the helper's memory
        // and grant table hold them, as real memory would.
        for g in h.cd.seeded() {
            let mut page = [0u8; 4096];
            for w in 0..512u64 {
                let v = domctl::pattern_word(g.gfn, w).to_le_bytes();
                page[w as usize * 8..][..8].copy_from_slice(&v);
            }
            let mut seen = [0u8; 4096];
            assert!(m.read_guest(dom, g.gfn, 0, &mut seen));
            assert!(seen == page, "pattern of helper frame {}", g.gfn);
            let e = GrantEntryV1 {
                flags: GTF_PERMIT_ACCESS,
                domid: 0,
                frame: g.gfn.0 as u32,
            };
            assert_eq!(m.gnttab_entry(dom, g.gref.0), Some(e));
        }
        let foreign_before = m.calls(Op::MapForeignBatch);
        let mut goals = Goals::default();
        helper_measure(&ctx, &mut t, &mut pt, &mut vas, &h, true, true, &mut goals).unwrap();
        assert!(goals.grant_of_ceiling.is_some());
        assert!(goals.grant_share.is_some());
        assert!(goals.foreign_unmap_vs_map.is_some());
        // 64 + 8 + 2 + 1 batches per repetition, twice, and 3 for the
        // multicall profile, of the helper's frames.
        assert_eq!(
            m.calls(Op::MapForeignBatch) - foreign_before,
            3 * (2 * (64 + 8 + 2 + 1) + 3)
        );
        // Nothing of the measurements is left mapped.
        let g0 = h.cd.seeded()[0].gref;
        assert_eq!(m.gnttab_entry(dom, g0.0).unwrap().flags, GTF_PERMIT_ACCESS);
        // A raw batch with a reference that grants nothing is refused and
        // undone.
        let hole = t.find_hole(PageCount(17), Order::ZERO, Gfn(1)).unwrap();
        let mut refs: Vec<GrantRef> = h.cd.seeded().iter().map(|g| g.gref).collect();
        refs.push(GrantRef(g0.0 + 16));
        let mut raw = RawGrants::new(&m, dom, refs, hole);
        assert!(matches!(raw.map(17, 4), Err(BenchError::Check(_))));
        assert!(!raw.stuck());
        assert_eq!(m.gnttab_entry(dom, g0.0).unwrap().flags, GTF_PERMIT_ACCESS);
        assert_eq!(raw.map(18, 1).map_err(|_| ()), Err(()));
        helper_finish(&ctx, &mut t, &mut pt, &mut vas, h, Ok(()), 0).unwrap();
        clean(&m, free, &t, &before, &pt, &vas);
    }

    #[test]
    fn a_refused_grant_fails_the_run_and_the_helper_still_goes() {
        let m = XenModel::new(1 << 16);
        let (s, mut t) = dom0_with_room(&m);
        let before = t.clone();
        let free = m.free_frames();
        let mut pt = bench_tables(&m, 256);
        let mut vas = VaSpace::new(pt.window());
        let p = Params {
            helper: true,
            ..small()
        };
        let clock = StepClock(Cell::new(0));
        // The survey names the wrong domain (as a wrong `domid=` would): the
        // helper seeds its grants for domain 7, and Xen (the model) refuses
        // every map of them by dom0.
        let wrong = Survey {
            domid: Some((DomId(7), DomidSource::Cmdline)),
            ..s.clone()
        };
        let ctx = Ctx {
            hv: &m,
            clock: &clock,
            mem: &FakeMemory::default(),
            survey: &wrong,
            p: &p,
        };
        let maps = Some(Maps {
            pt: &mut pt,
            vas: &mut vas,
        });
        let set = BenchSet::GRANT | BenchSet::FOREIGN;
        let r = mapping_tables(&ctx, &mut t, maps, set, &mut Goals::default());
        assert!(
            matches!(r, Err(BenchError::Grant(GrantError::Refused(_)))),
            "{r:?}"
        );
        clean(&m, free, &t, &before, &pt, &vas);
        // The same through `run_with`: the run fails.
        let maps = Some(Maps {
            pt: &mut pt,
            vas: &mut vas,
        });
        let mem = FakeMemory::default();
        let v = run_with(&m, &clock, &mem, &mut t, &wrong, set, &p, maps);
        assert_eq!(v, Verdict::Fail);
        assert_eq!(m.calls(Op::CreateDomain), 2);
        clean(&m, free, &t, &before, &pt, &vas);
        // Unprivileged: skipped, nothing tried.
        let s2 = Survey {
            privileged: false,
            ..s.clone()
        };
        let maps = Some(Maps {
            pt: &mut pt,
            vas: &mut vas,
        });
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s2,
            BenchSet::GRANT | BenchSet::FOREIGN,
            &p,
            maps,
        );
        assert_eq!(v, Verdict::Pass);
        assert_eq!(m.calls(Op::CreateDomain), 2);
        // Not Xen 4.17: not applicable, nothing created.
        let mut ver = m.version().unwrap();
        ver.minor = 18;
        m.set_version(ver);
        let maps = Some(Maps {
            pt: &mut pt,
            vas: &mut vas,
        });
        let v = run_with(
            &m,
            &clock,
            &FakeMemory::default(),
            &mut t,
            &s,
            BenchSet::GRANT | BenchSet::FOREIGN,
            &p,
            maps,
        );
        assert_eq!(v, Verdict::Pass);
        assert_eq!(m.calls(Op::CreateDomain), 2);
        clean(&m, free, &t, &before, &pt, &vas);
    }

    #[test]
    fn helper_layouts() {
        let l = HelperLayout::of(&Params::DEFAULT, true, true).unwrap();
        assert_eq!(
            (l.grant_pages, l.grants, l.gnttab_frames, l.foreign_pages),
            (1024, 1024, 3, 4096)
        );
        assert_eq!(extent_order(l.grant_pages), O9);
        assert_eq!(l.flow(DomId(0)).order, O9);
        // Table 4 alone still seeds one grant (the flow wants one).
        let l = HelperLayout::of(&Params::DEFAULT, false, true).unwrap();
        assert_eq!((l.grant_pages, l.gnttab_frames), (1, 1));
        assert_eq!(extent_order(1), Order::ZERO);
        let too_many = Params {
            grants: 64 * 512,
            ..Params::DEFAULT
        };
        assert!(HelperLayout::of(&too_many, true, false).is_err());
        let most = Params {
            grants: 64 * 512 - 8,
            ..Params::DEFAULT
        };
        let l = HelperLayout::of(&most, true, false).unwrap();
        assert_eq!(l.gnttab_frames, 64);
    }
}
