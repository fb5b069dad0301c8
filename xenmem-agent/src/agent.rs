//! The agent: what it does once booted.
//!
//! [`run`] reads the command line, surveys what Xen says about this domain
//! (version, domid, privilege, memory map, reservation), reports it, does what
//! the options ask, and returns the [`Outcome`]. It only talks to Xen through
//! [`Hypervisor`], so host tests run it against a model.
//!
//! Every report line has the form `report: <topic> key=value ...`; the runner
//! (`cargo xtask`) parses them and checks them against what it configured.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::Verdict;
use crate::cmdline::{self, FaultKind, Options};
use xenmem::addr::{DomId, Gfn, PageCount, PAGE_SIZE};
use xenmem::boot::{BootInfo, Firmware, PhysSpan};
use xenmem::layout::{self, GapPolicy, LayoutError, Reservation, ReserveRule};
use xenmem::leak::ReleaseError;
use xenmem::m2p::{self, M2pError};
use xenmem::memmap::{MemMapError, MemoryMap};
use xenmem::region::{FrameRange, RegionKind, RegionTable, ReservedUse};
use xenmem::reservation::{self, Engine, ReservationError, Strategy};
use xenmem::xen::abi::E820Entry;
use xenmem::xen::{Features, Hypervisor, XenError, XenVersion};

/// How the run leaves the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitPath {
    /// Tell QEMU directly (isa-debug-exit, semihosting): the run is over.
    Host,
    /// `SCHEDOP_shutdown`, so that another domain can see the verdict.
    XenShutdown,
}

/// What a run ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Pass or fail.
    pub verdict: Verdict,
    /// How to leave.
    pub exit: ExitPath,
    /// The toolstack asked for a reboot (`xl reboot`): a passing run that
    /// leaves through Xen says reboot instead of poweroff.
    pub reboot: bool,
}

/// How the agent knows its domain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomidSource {
    /// Xen's interface told it (x86 CPUID leaf).
    Xen,
    /// The `domid=` option (Arm: a guest cannot ask Xen).
    Cmdline,
}

impl DomidSource {
    /// The name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            DomidSource::Xen => "cpuid",
            DomidSource::Cmdline => "cmdline",
        }
    }
}

/// Why the survey failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SurveyError {
    /// A hypercall failed.
    Xen {
        /// Which operation.
        op: &'static str,
        /// What Xen said.
        err: XenError,
    },
    /// The memory map could not be read.
    MemMap(MemMapError),
    /// `domid=` disagrees with what Xen says.
    DomidMismatch {
        /// From Xen.
        xen: DomId,
        /// From the command line.
        cmdline: DomId,
    },
}

/// What the agent found out about its domain.
#[derive(Clone, Debug)]
pub struct Survey {
    /// Xen's version.
    pub version: XenVersion,
    /// Xen's feature bits (submap 0).
    pub features: Features,
    /// The domain id and how it is known (`None`: unknown).
    pub domid: Option<(DomId, DomidSource)>,
    /// The hardware domain (`XENFEAT_dom0`).
    pub privileged: bool,
    /// The memory map.
    pub memmap: MemoryMap,
    /// `XENMEM_current_reservation`.
    pub current: PageCount,
    /// `XENMEM_maximum_reservation`.
    pub maximum: PageCount,
    /// `XENMEM_maximum_gpfn`.
    pub maximum_gpfn: Gfn,
    /// The agent's own image.
    pub image: PhysSpan,
    /// The guest-physical address width, where the CPU tells it (x86).
    pub phys_addr_bits: Option<u8>,
}

fn xen<T>(op: &'static str, r: Result<T, XenError>) -> Result<T, SurveyError> {
    r.map_err(|err| SurveyError::Xen { op, err })
}

/// Find out what Xen says about this domain.
pub fn survey(
    hv: &impl Hypervisor,
    boot: &BootInfo<'_>,
    opts: &Options,
) -> Result<Survey, SurveyError> {
    let version = xen("xen_version", hv.version())?;
    let features = xen("get_features", hv.features())?;
    let domid = match (hv.own_domid(), opts.domid) {
        (Some(x), Some(c)) if x != c => {
            return Err(SurveyError::DomidMismatch { xen: x, cmdline: c })
        }
        (Some(x), _) => Some((x, DomidSource::Xen)),
        (None, Some(c)) => Some((c, DomidSource::Cmdline)),
        (None, None) => None,
    };
    let memmap = match boot.firmware {
        Firmware::DeviceTree(blob) => MemoryMap::from_fdt(blob).map_err(SurveyError::MemMap)?,
        Firmware::Pvh { memmap, .. } if !memmap.is_empty() => {
            MemoryMap::from_start_info(memmap).map_err(SurveyError::MemMap)?
        }
        Firmware::Pvh { .. } => {
            let mut buf = [E820Entry::default(); xenmem::memmap::MAX_RANGES];
            let n = xen("memory_map", hv.memory_map(&mut buf))?;
            MemoryMap::from_e820(&buf[..n]).map_err(SurveyError::MemMap)?
        }
    };
    Ok(Survey {
        version,
        features,
        domid,
        privileged: features.contains(Features::DOM0),
        memmap,
        current: xen("current_reservation", hv.current_reservation(DomId::SELF))?,
        maximum: xen("maximum_reservation", hv.maximum_reservation(DomId::SELF))?,
        maximum_gpfn: xen("maximum_gpfn", hv.maximum_gpfn(DomId::SELF))?,
        image: image_of(boot),
        phys_addr_bits: phys_addr_bits(),
    })
}

#[cfg(target_os = "none")]
fn phys_addr_bits() -> Option<u8> {
    crate::arch::imp::phys_addr_bits()
}

#[cfg(not(target_os = "none"))]
fn phys_addr_bits() -> Option<u8> {
    None
}

fn report(s: &Survey) {
    xm_info!(
        "report: xen version={=u16}.{=u16} extra={=str}",
        s.version.major,
        s.version.minor,
        s.version.extra_str()
    );
    let privileged = if s.privileged { "yes" } else { "no" };
    match s.domid {
        Some((d, src)) => xm_info!(
            "report: domain domid={} source={=str} privileged={=str} features={=u32:#x}",
            if crate::mutant::is("wrong-domid") {
                DomId(d.0.wrapping_add(1))
            } else {
                d
            },
            src.name(),
            privileged,
            s.features.bits()
        ),
        None => xm_info!(
            "report: domain domid=unknown source=none privileged={=str} features={=u32:#x}",
            privileged,
            s.features.bits()
        ),
    }
    xm_info!(
        "report: memmap source={=str} entries={=usize}",
        s.memmap.source.name(),
        s.memmap.ranges().len()
    );
    for r in s.memmap.ranges() {
        // The mutant leaves its RAM above 4 GiB (Arm's GUEST_RAM1) out of
        // the report.
        if crate::mutant::is("ram1-bank-unreported")
            && r.kind == xenmem::memmap::MemKind::Ram
            && r.start.0 >= 1 << 32
        {
            continue;
        }
        xm_info!(
            "report: region start={} end={} kind={=str}",
            r.start,
            r.end,
            r.kind.name()
        );
    }
    xm_info!("report: memmap ram_pages={}", s.memmap.ram_pages());
    xm_info!(
        "report: reservation current={} max={} maximum_gpfn={}",
        s.current,
        // Mutant: a maximum one page off what Xen said.
        PageCount(s.maximum.0 + u64::from(crate::mutant::is("max-misread"))),
        s.maximum_gpfn
    );
    xm_info!("report: image start={} end={}", s.image.start, s.image.end);
}

/// The frames of a byte span, rounded outwards; `None` if empty.
fn span_frames(start: u64, len: u64) -> Option<FrameRange> {
    let end = start.checked_add(len)?;
    FrameRange::from_frames(Gfn(start / PAGE_SIZE), Gfn(end.div_ceil(PAGE_SIZE))).ok()
}

/// The agent's image as the boot code found it (its linker symbols).
fn image_of(boot: &BootInfo<'_>) -> PhysSpan {
    let mut img = boot.image;
    // The mutant's image ends a page early (as if the linker script's end
    // symbol came before the last page of .bss): reported so and reserved so.
    if crate::mutant::is("image-end-early") {
        img.end = xenmem::addr::GuestPhysAddr(img.end.0.saturating_sub(PAGE_SIZE));
    }
    img
}

/// What the agent must keep out of the allocator: its image, its heap (inside
/// the image), and the boot data Xen left in memory. The agent runs
/// identity-mapped, so a pointer's value is its guest-physical address.
fn reservations(boot: &BootInfo<'_>, heap: Option<PhysSpan>) -> Vec<Reservation> {
    let mut out = Vec::new();
    let mut keep = |start: u64, len: u64, what, rule| {
        if let Some(range) = span_frames(start, len) {
            out.push(Reservation { range, what, rule });
        }
    };
    let img = image_of(boot);
    keep(
        img.start.0,
        img.end.0.saturating_sub(img.start.0),
        ReservedUse::Image,
        ReserveRule::InRam,
    );
    if let Some(h) = heap {
        keep(
            h.start.0,
            h.end.0.saturating_sub(h.start.0),
            ReservedUse::Heap,
            ReserveRule::Carve(ReservedUse::Image),
        );
    }
    match boot.firmware {
        Firmware::Pvh { start_info: si, .. } => {
            let size = core::mem::size_of_val(si) as u64;
            keep(
                si as *const _ as usize as u64,
                size,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
            if !boot.cmdline.is_empty() {
                let len = boot.cmdline.len() as u64 + 1;
                keep(
                    boot.cmdline.as_ptr() as usize as u64,
                    len,
                    ReservedUse::Boot,
                    ReserveRule::RamParts,
                );
            }
            let modlist = u64::from(si.nr_modules) * 32;
            keep(
                si.modlist_paddr,
                modlist,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
            if si.version >= 1 {
                let memmap = u64::from(si.memmap_entries) * 24;
                keep(
                    si.memmap_paddr,
                    memmap,
                    ReservedUse::Boot,
                    ReserveRule::RamParts,
                );
            }
        }
        Firmware::DeviceTree(blob) => {
            keep(
                blob.as_ptr() as usize as u64,
                blob.len() as u64,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
        }
    }
    out
}

/// Build the agent's region table from the survey.
pub fn build_table(
    s: &Survey,
    boot: &BootInfo<'_>,
    heap: Option<PhysSpan>,
) -> Result<RegionTable, LayoutError> {
    let policy = match boot.firmware {
        Firmware::Pvh { .. } => GapPolicy::X86,
        Firmware::DeviceTree(_) => GapPolicy::DeviceTree,
    };
    let limit = Gfn(s.maximum_gpfn.0.saturating_add(1)).max(x86_hole_top(s.phys_addr_bits));
    layout::initial_table(&s.memmap, policy, limit, &reservations(boot, heap))
}

/// Where free guest-physical space above 4 GiB ends on x86: the address
/// width the CPU reports, but never into `[0xfd_0000_0000, 1 TiB)` (AMD's
/// HyperTransport range, which Xen and Linux keep reserved). A toolstack
/// domU's `maximum_gpfn` ends below 4 GiB (its special pages), so without
/// this it would have no hole at all for grant and foreign mappings; dom0's
/// p2m already reaches the same top.
fn x86_hole_top(bits: Option<u8>) -> Gfn {
    const HT_START: u64 = 0xfd_0000_0000;
    match bits {
        Some(b) if b < 64 => Gfn((1u64 << b).min(HT_START) >> xenmem::addr::PAGE_SHIFT),
        _ => Gfn(0),
    }
}

/// A page of the agent's own for [`special::probe`] to copy into.
#[cfg(target_os = "none")]
#[repr(C, align(4096))]
struct SinkPage([u8; PAGE_SIZE as usize]);

/// Where the log goes (`report: console`): Xen's console, or the PV
/// console ring, which from here on is written through a Normal mapping of
/// its own in the page tables' window (see [`crate::rt::console_to_window`]).
/// The ring's frame must be a special page the table keeps.
#[cfg(feature = "rt")]
fn console_run(t: &mut RegionTable) -> Verdict {
    let (channel, identity) = crate::rt::console_channel();
    let Some(identity) = identity else {
        xm_info!("report: console channel={=str}", channel);
        return Verdict::Pass;
    };
    let frame = xenmem::addr::GuestPhysAddr(identity.0);
    let kind = t.info(frame).map(|r| r.kind);
    if kind != Some(RegionKind::Reserved(ReservedUse::Special)) {
        xm_error!(
            "console: the ring at {} is not a special page of the table",
            frame
        );
        return Verdict::Fail;
    }
    match crate::rt::console_to_window(t) {
        Ok(va) => {
            xm_info!(
                "report: console channel=ring frame={} va={}",
                frame,
                va.unwrap_or(identity)
            );
            Verdict::Pass
        }
        Err(e) => {
            xm_error!("console: mapping the ring: {}", defmt_display(&e));
            Verdict::Fail
        }
    }
}

/// Without the runtime the embedder owns the console.
#[cfg(not(feature = "rt"))]
fn console_run(_: &mut RegionTable) -> Verdict {
    Verdict::Pass
}

/// A frame of the agent's own for [`special::probe`]: a heap page (the
/// agent runs identity-mapped, so its address is its frame's), kept alive by
/// the returned box until the probe is over.
#[cfg(target_os = "none")]
fn probe_sink(_: &RegionTable) -> Option<(alloc::boxed::Box<SinkPage>, Gfn)> {
    let sink = alloc::boxed::Box::new(SinkPage([0; PAGE_SIZE as usize]));
    let gfn = Gfn(&*sink as *const SinkPage as usize as u64 / PAGE_SIZE);
    Some((sink, gfn))
}

/// On the host (a model of Xen) heap addresses are no frames: the first
/// free RAM frame of the table stands in.
#[cfg(not(target_os = "none"))]
fn probe_sink(t: &RegionTable) -> Option<((), Gfn)> {
    t.iter()
        .find(|r| r.kind == RegionKind::Ram)
        .map(|r| ((), r.range.start()))
}

/// Find the pages Xen counts outside the map's RAM (a toolstack's ACPI
/// tables and special pages, see [`xenmem::special`]) and record them in the
/// table. Probes only where there is something to find: the HVM parameters
/// name a console or xenstore ring, or Xen counts more pages than the table
/// holds. Reports `special`.
fn special_run(hv: &impl Hypervisor, t: &mut RegionTable, s: &Survey) -> Verdict {
    use xenmem::special;
    let named = special::param_frames(hv);
    let surplus = account(t, s, s.current, PageCount(0)).unaccounted();
    if named.is_empty() && surplus <= 0 {
        xm_info!("report: special pages=0 runs=0 probed=0 skipped=0");
        return Verdict::Pass;
    }
    let (candidates, skipped) = special::candidates(&s.memmap, &named);
    let Some((_sink, sink_gfn)) = probe_sink(t) else {
        xm_error!("special: no frame to probe into");
        return Verdict::Fail;
    };
    let found = match special::probe(hv, &candidates, sink_gfn, skipped) {
        Ok(f) => f,
        Err(e) => {
            xm_error!("special: {}", defmt_display(&e));
            return Verdict::Fail;
        }
    };
    xm_info!(
        "report: special pages={=u64} runs={=usize} probed={=u64} skipped={=u64}",
        found.pages(),
        found.runs.len(),
        found.probed,
        found.skipped
    );
    for r in &found.runs {
        xm_info!(
            "report: special-run start={} end={}",
            r.start_addr(),
            r.end_addr()
        );
    }
    if let Err(e) = special::record(t, &found) {
        xm_error!("special: {}", defmt_display(&e));
        return Verdict::Fail;
    }
    Verdict::Pass
}

/// How the table's RAM compares with Xen's reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    /// Pages the table holds as populated RAM (free or in use by the agent).
    pub table_ram: PageCount,
    /// Pages that are partly RAM in the firmware map (counted by Xen, not
    /// usable as RAM by the table).
    pub partial: PageCount,
    /// Pages Xen assigned but could not map (see
    /// [`reservation::Stats::leaked_by_xen`]).
    pub leaked: PageCount,
    /// `XENMEM_current_reservation`.
    pub current: PageCount,
}

impl Accounting {
    /// Pages Xen counts that the agent cannot account for (negative: the table
    /// claims more RAM than Xen gave).
    pub fn unaccounted(&self) -> i64 {
        self.current.0 as i64
            - self.table_ram.0 as i64
            - self.partial.0 as i64
            - self.leaked.0 as i64
    }

    /// The pages the agent says Xen counts: the table's RAM, the partial
    /// pages and those Xen assigned but could not map (what the runner
    /// compares with Xen's own `nr_pages`, see [`crate::xenview`]).
    pub fn claimed(&self) -> PageCount {
        PageCount(
            self.table_ram
                .0
                .saturating_add(self.partial.0)
                .saturating_add(self.leaked.0)
                .saturating_add(u64::from(crate::mutant::is("claim-off-by-one"))),
        )
    }
}

/// Compare the table with Xen's reservation `current`.
pub fn account(t: &RegionTable, s: &Survey, current: PageCount, leaked: PageCount) -> Accounting {
    Accounting {
        table_ram: t.count_where(|r| r.kind.is_populated_ram()),
        partial: PageCount(layout::partial_ram_pages(&s.memmap)),
        leaked,
        current,
    }
}

fn report_table(t: &RegionTable, a: &Accounting) {
    xm_info!(
        "report: table regions={=usize} ram={} reserved={} hole={} mmio={}",
        t.len(),
        t.count(RegionKind::Ram),
        t.count_where(|r| matches!(r.kind, RegionKind::Reserved(_))),
        t.count(RegionKind::Hole),
        t.count(RegionKind::Mmio)
    );
    // The mutant leaves its first RAM region out of the report.
    let dropped = crate::mutant::is("table-entry-dropped")
        .then(|| t.iter().position(|r| r.kind == RegionKind::Ram))
        .flatten();
    for (i, r) in t.iter().enumerate() {
        if Some(i) == dropped {
            continue;
        }
        xm_info!(
            "report: table-region start={} end={} kind={=str} flags={=u16:#x}",
            r.range.start_addr(),
            r.range.end_addr(),
            r.kind.name(),
            r.flags.bits()
        );
    }
    report_accounting(a);
}

fn report_accounting(a: &Accounting) {
    xm_info!(
        "report: accounting table_ram={} partial={} leaked={} current={} unaccounted={=i64}",
        a.table_ram,
        a.partial,
        a.leaked,
        a.current,
        a.unaccounted()
    );
}

/// The pattern word `i` of frame `g` that [`pattern_check`] writes.
#[cfg(target_os = "none")]
fn pattern_word(g: u64, i: usize) -> u64 {
    g.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64
}

/// Write a pattern derived from each frame number over every page of
/// `range`, noting first whether the pages were zero (reported, not
/// promised: Xen does not scrub pages a running domain frees), and read it
/// back. Returns (were zero, pattern read back).
///
/// Only on the bare-metal targets, where the boot page tables identity-map
/// guest RAM; on the host it touches nothing and returns `None`.
fn pattern_check(range: FrameRange) -> Option<(bool, bool)> {
    #[cfg(target_os = "none")]
    {
        if range.start().0 == 0 || range.end_addr().0 > crate::arch::imp::IDENTITY_MAP_END.0 {
            return None;
        }
        let mut zero = true;
        for g in range.start().0..range.end().0 {
            let p = (g * PAGE_SIZE) as usize as *mut u64;
            for i in 0..(PAGE_SIZE / 8) as usize {
                // SAFETY: the frame is populated RAM that the region table
                // gives to no one else, identity-mapped below
                // IDENTITY_MAP_END (checked above); `i` stays in the page.
                unsafe {
                    let w = p.add(i);
                    zero &= w.read_volatile() == 0;
                    w.write_volatile(pattern_word(g, i));
                }
            }
        }
        Some((zero, pattern_check_readonly(range)?))
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = range;
        None
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn report_engine<H: Hypervisor>(
    phase: &str,
    target: PageCount,
    e: &Engine<'_, H>,
    current: PageCount,
) {
    let st = &e.stats;
    xm_info!(
        "report: balloon phase={=str} target={} current={} expected={} released={=u64} populated={=u64} hypercalls={=u64} order18={=u64} order9={=u64} order0={=u64} short={=u64} stuck={=u64}",
        phase,
        target,
        current,
        e.expected(),
        st.released,
        st.populated,
        st.hypercalls,
        st.extents[18],
        st.extents[9],
        st.extents[0],
        st.short_counts,
        st.stuck
    );
}

/// Whether the table and Xen's count agree at start-up: `Ok(None)` if they
/// do, `Ok(Some(surplus))` for a populate-on-demand guest whose memory map
/// has `surplus` more RAM pages than Xen backs (`xl create` with `memory <
/// maxmem` on x86), an error (logged) otherwise.
fn pod_surplus(acc: &Accounting, s: &Survey) -> Result<Option<PageCount>, ()> {
    let u = acc.unaccounted();
    if u == 0 {
        return Ok(None);
    }
    if u > 0 {
        xm_error!(
            "table: {=i64} pages of Xen's reservation are not in the table",
            u
        );
        return Err(());
    }
    // More RAM in the map than Xen counts: only populate-on-demand does that
    // (an x86 HVM/PVH domU; Xen 4.17 has no PoD on Arm, and dom0 none).
    let pod_capable = !s.privileged
        && s.memmap.source != xenmem::memmap::MapSource::DeviceTree
        && s.features
            .contains(xenmem::xen::Features::AUTO_TRANSLATED_PHYSMAP);
    if !pod_capable {
        xm_error!(
            "table: it holds {=i64} more pages than Xen's reservation, and this guest cannot be populate-on-demand",
            -u
        );
        return Err(());
    }
    Ok(Some(PageCount(u.unsigned_abs())))
}

/// Populate-on-demand: the memory map has `surplus` RAM pages more than Xen
/// backs (`memory < maxmem`). As Linux's balloon driver does at boot, give
/// `surplus` pages back before touching more than what is backed: Xen then
/// drops PoD entries (or moves populated pages into the PoD cache) and its
/// count does not change, so the engine starts from `current + surplus`
/// and must end at `current`. Afterwards the table and Xen agree as for any
/// other guest. Reports `pod`.
fn pod_run<H: Hypervisor>(hv: &H, t: &mut RegionTable, s: &Survey, surplus: PageCount) -> Verdict {
    let mut e = engine_for(hv, s, PageCount(s.current.0 + surplus.0));
    xm_info!(
        "report: pod surplus={} target={} map_ram={}",
        surplus,
        s.current,
        s.memmap.ram_pages()
    );
    if let Err(err) = e.balloon_to(t, s.current) {
        xm_error!("pod: {}", defmt_display(&err));
        return Verdict::Fail;
    }
    match verified("pod", &mut e, t, s) {
        Some(cur) => {
            report_engine("pod", s.current, &e, cur);
            Verdict::Pass
        }
        None => Verdict::Fail,
    }
}

/// The reservation engine for this domain, counting from `start` pages;
/// ballooned frames leave the boot identity map, and come back.
fn engine_for<'h, H: Hypervisor>(hv: &'h H, s: &Survey, start: PageCount) -> Engine<'h, H> {
    let max_order = reservation::xen_max_order(s.privileged);
    engine_with(hv, s, Strategy::xenmem(max_order), start)
}

/// The reservation engine as the agent builds it, with `strategy`: on the
/// bare-metal targets ballooned frames leave the boot identity map
/// ([`xenmem::paging::BootIdentityMap`]) and come back. The benchmarks use
/// it too, so that what they measure includes the identity-map work.
pub(crate) fn engine_with<'h, H: Hypervisor>(
    hv: &'h H,
    s: &Survey,
    strategy: Strategy,
    start: PageCount,
) -> Engine<'h, H> {
    let e = Engine::new(hv, strategy, start, s.features);
    #[cfg(target_os = "none")]
    let e = e.with_identity_map(&xenmem::paging::BootIdentityMap);
    e
}

/// Ask Xen for the reservation and check it against the engine's
/// accounting and the table (`report: accounting`): the count, or `None`
/// with what is wrong logged under `what`.
fn verified<H: Hypervisor>(
    what: &str,
    e: &mut Engine<'_, H>,
    t: &RegionTable,
    s: &Survey,
) -> Option<PageCount> {
    match e.verify() {
        Ok(cur) => {
            let a = account(t, s, cur, PageCount(e.stats.leaked_by_xen));
            report_accounting(&a);
            if a.unaccounted() != 0 {
                xm_error!(
                    "{=str}: {=i64} pages of Xen's reservation are not in the table",
                    what,
                    a.unaccounted()
                );
                return None;
            }
            if !crate::xenview::pause(e.hypervisor(), what, a.claimed(), s.maximum) {
                return None;
            }
            Some(cur)
        }
        Err(err) => {
            xm_error!("{=str}: {}", what, defmt_display(&err));
            None
        }
    }
}

/// What `balloon=`, `balloon-then=` and `contig=` ask: drive the reservation
/// engine under real Xen and check every step against Xen's count.
fn reservation_run<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    s: &Survey,
    opts: &Options,
) -> Verdict {
    let max_order = reservation::xen_max_order(s.privileged);
    let mut e = engine_for(hv, s, s.current);
    xm_info!(
        "report: engine max_order={=u8} batch={=usize} translated={=str} direct_mapped={=str}",
        max_order.get(),
        Strategy::xenmem(max_order).batch,
        yes(s
            .features
            .contains(xenmem::xen::Features::AUTO_TRANSLATED_PHYSMAP)),
        yes(s.features.contains(xenmem::xen::Features::DIRECT_MAPPED))
    );
    let verdict = reservation_steps(hv, &mut e, t, s, opts);
    // Whatever happened, Xen and the table must still agree.
    let Some(cur) = verified("reservation", &mut e, t, s) else {
        return Verdict::Fail;
    };
    xm_info!("report: reservation-after current={}", cur);
    verdict
}

fn reservation_steps<H: Hypervisor>(
    hv: &H,
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    s: &Survey,
    opts: &Options,
) -> Verdict {
    let fail = |what: &str, err: ReservationError| {
        xm_error!("{=str}: {}", what, defmt_display(&err));
        Verdict::Fail
    };
    for (phase, size) in [("first", opts.balloon), ("then", opts.balloon_then)] {
        let Some(size) = size else { continue };
        let target = PageCount::from_bytes_floor(size);
        if target > s.maximum {
            xm_error!(
                "balloon: a target of {} pages is beyond the maximum reservation of {} pages",
                target,
                s.maximum
            );
            return Verdict::Fail;
        }
        let refill: Vec<FrameRange> = t
            .iter()
            .filter(|r| r.kind == RegionKind::Ballooned)
            .map(|r| r.range)
            .collect();
        // The mutant skips the repopulate and says it reached the target.
        let skipped = phase == "then" && crate::mutant::is("skip-repopulate");
        if !skipped {
            if let Err(err) = e.balloon_to(t, target) {
                return fail("balloon", err);
            }
        }
        let cur = match e.verify() {
            Ok(c) => c,
            Err(err) => return fail("balloon", err),
        };
        report_engine(phase, target, e, if skipped { target } else { cur });
        let a = account(t, s, cur, PageCount(e.stats.leaked_by_xen));
        if !crate::xenview::pause(hv, phase, a.claimed(), s.maximum) {
            return Verdict::Fail;
        }
        if !identity_report(t, phase) {
            return Verdict::Fail;
        }
        // Memory that came back: usable. (Whether it is zeroed is reported but
        // not promised: Xen does not scrub pages a running domain frees, so
        // repopulated pages may hold stale contents.)
        let back: Vec<FrameRange> = refill
            .into_iter()
            .flat_map(|r| {
                t.iter()
                    .filter(move |x| {
                        x.kind == RegionKind::Ram
                            && x.range.start() < r.end()
                            && r.start() < x.range.end()
                    })
                    .map(move |x| {
                        FrameRange::from_frames(
                            x.range.start().max(r.start()),
                            x.range.end().min(r.end()),
                        )
                    })
            })
            .filter_map(Result::ok)
            .collect();
        if !back.is_empty() {
            let pages: u64 = back.iter().map(|r| r.len().0).sum();
            if !identity_back_report(&back) {
                return Verdict::Fail;
            }
            let checks: Vec<_> = back.iter().map(|r| pattern_check(*r)).collect();
            if checks.iter().all(Option::is_some) {
                let zero = checks.iter().all(|c| c.is_some_and(|c| c.0));
                let ok = checks.iter().all(|c| c.is_some_and(|c| c.1));
                xm_info!(
                    "report: balloon-check pages={=u64} zeroed={=str} pattern={=str}",
                    pages,
                    yes(zero),
                    if ok { "ok" } else { "bad" }
                );
                if !ok {
                    xm_error!("balloon: repopulated memory does not read back what was written");
                    return Verdict::Fail;
                }
            }
        }
    }
    if let Some(size) = opts.contig {
        // Exchange first, on a page of its own (above 1 MiB: never frame 0,
        // whose address is the null pointer): Xen refuses it for PVH and Arm
        // guests, and the page must still be ours, contents and all.
        if let Some(page) = t.find_free(
            RegionKind::Ram,
            PageCount(1),
            xenmem::addr::Order::ZERO,
            Gfn(0x100),
        ) {
            let before = pattern_check(page);
            match e.probe_exchange(t, page.start()) {
                Ok(supported) => {
                    let kept = match (before, pattern_check_readonly(page)) {
                        (Some(_), Some(same)) => yes(supported || same),
                        _ => "unchecked",
                    };
                    xm_info!(
                        "report: exchange supported={=str} page={} kept={=str}",
                        yes(supported),
                        page.start_addr(),
                        kept
                    );
                    // A refused exchange must leave the page as it was: a
                    // changed page is a failed run, not a report.
                    if kept == "no" {
                        xm_error!("exchange: Xen refused it but the offered page changed");
                        return Verdict::Fail;
                    }
                }
                Err(err) => return fail("exchange", err),
            }
        }
        let bits = opts.contig_bits;
        // The mutant populates without the address limit it reports.
        let asked = if crate::mutant::is("contig-bits-dropped") {
            None
        } else {
            bits
        };
        let made = e.alloc_contiguous(t, size, PAGE_SIZE, asked);
        if let Some(err) = e.take_identity_error() {
            return fail("contiguous", ReservationError::IdentityMap(err));
        }
        match made {
            Ok(buf) => {
                // What was written must read back: `bad` fails the run.
                let pattern = match pattern_check(buf.range()) {
                    Some((_, true)) => "ok",
                    Some((_, false)) => "bad",
                    None => "unchecked",
                };
                let mut buf = buf;
                if buf.machine().is_none() && s.privileged {
                    // A privileged agent can read Xen's machine-to-phys table.
                    match lookup_machine(hv, t, buf.range()) {
                        Ok(mfns) => {
                            let first = m2p::contiguous(&mfns);
                            let end = mfns.iter().map(|m| m.0 + 1).max().unwrap_or(0) * PAGE_SIZE;
                            xm_info!(
                                "report: contiguous-m2p frames={=usize} contiguous={=str} first={=u64:#x} below_4g={=str}",
                                mfns.len(),
                                yes(first.is_some()),
                                mfns.first().map_or(0, |m| m.0 * PAGE_SIZE),
                                yes(end <= 1 << 32)
                            );
                            match first {
                                // The buffer and its region learn it (and
                                // whether it lies below 4 GiB).
                                Some(m) => {
                                    if let Err(err) = buf.set_machine(t, m) {
                                        xm_error!("contiguous: {}", defmt_display(&err));
                                        return free_then_fail(e, t, buf);
                                    }
                                }
                                None => {
                                    xm_error!("contiguous: Xen's M2P says the buffer is not machine-contiguous");
                                    return free_then_fail(e, t, buf);
                                }
                            }
                        }
                        Err(err) => {
                            xm_error!("contiguous: M2P lookup: {}", defmt_display(&err));
                            return free_then_fail(e, t, buf);
                        }
                    }
                }
                if buf.machine().is_none() && opts.contig_bus == Some(cmdline::ContigBus::Grant) {
                    let me = s.domid.map(|(d, _)| d);
                    match contig_bus_by_grant(hv, t, &buf, me) {
                        Some(m) => {
                            if let Err(err) = buf.set_machine(t, m) {
                                xm_error!("contiguous: {}", defmt_display(&err));
                                return free_then_fail(e, t, buf);
                            }
                        }
                        None => return free_then_fail(e, t, buf),
                    }
                }
                match buf.machine() {
                    Some(m) => xm_info!(
                        "report: contiguous gpa={} size={=u64:#x} order={=u8} machine={=u64:#x} method={=str} bits={=u8} pattern={=str}",
                        buf.range().start_addr(),
                        buf.range().len().0 * PAGE_SIZE,
                        buf.order().get(),
                        m.0 * PAGE_SIZE
                            + if crate::mutant::is("wrong-bus-address") {
                                2 << 20
                            } else {
                                0
                            },
                        buf.method().name(),
                        bits.unwrap_or(0),
                        pattern
                    ),
                    None => xm_info!(
                        "report: contiguous gpa={} size={=u64:#x} order={=u8} machine=unknown method={=str} bits={=u8} pattern={=str}",
                        buf.range().start_addr(),
                        buf.range().len().0 * PAGE_SIZE,
                        buf.order().get(),
                        buf.method().name(),
                        bits.unwrap_or(0),
                        pattern
                    ),
                }
                if pattern == "bad" {
                    xm_error!("contiguous: the buffer does not read back what was written");
                    return free_then_fail(e, t, buf);
                }
                if let Err(err) = retry_release(buf, |b| e.free_contiguous(t, b)) {
                    return fail("contiguous", err);
                }
            }
            Err(err) => return fail("contiguous", err),
        }
    }
    Verdict::Pass
}

/// `contig-bus=grant`: where the buffer lies in machine memory, learnt as an
/// unprivileged, non-direct-mapped guest can: grant the buffer's first and
/// last pages to itself, map both grants, and take the bus addresses Xen
/// returns (`dev_bus_addr`: `map_grant_ref` sets it to the granted frame's
/// machine address for every map). Reports `contiguous-grant`; the buffer's
/// first machine frame, or `None` with the reason logged.
///
/// Sound where:
/// - the buffer is one populated extent (its length is `2^order`): Xen's
///   `populate_physmap` backs an extent with one buddy allocation, so the
///   frames are machine-contiguous and two ends tell the whole; the last
///   page's address must be the first's plus the buffer's size less a page,
///   or the answer is refused;
/// - mapping one's own grant leaves the page at its GFN (Arm; on x86 it
///   takes the page away, so the agent refuses there);
/// - the mapped pages read what the buffer holds (checked: the pattern
///   `pattern_check` wrote, word by word), so the addresses are of the
///   buffer's frames and not of some other page.
fn contig_bus_by_grant<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    buf: &reservation::ContiguousBuffer,
    me: Option<DomId>,
) -> Option<xenmem::addr::Mfn> {
    let range = buf.range();
    if !cfg!(target_arch = "aarch64") {
        xm_error!("contig-bus=grant: only on Arm (on x86 mapping one's own grant takes the page from its GFN)");
        return None;
    }
    if range.len().0 != 1u64 << buf.order().get() {
        xm_error!("contig-bus=grant: the buffer is not one populated extent");
        return None;
    }
    let Some(me) = me else {
        xm_error!("contig-bus=grant: needs the domain's id (domid=)");
        return None;
    };
    #[cfg(target_os = "none")]
    {
        use xenmem::grant::{self, Bytes, GrantTable};
        use xenmem::mapping::VaSpace;
        let mut pt = page_tables_for("contig-bus")?;
        let mut vas = VaSpace::new(crate::xenview::window(&*pt));
        let mut gt = match GrantTable::setup(hv, t, &mut *pt, &mut vas, 1) {
            Ok(g) => g,
            Err(err) => {
                grant_fail("contig-bus: table set-up", err);
                return None;
            }
        };
        let ends = [range.start(), Gfn(range.end().0 - 1)];
        let mut refs = Vec::new();
        let mut answer = None;
        for g in ends {
            match gt.grant_access(t, me, g, true) {
                Ok(r) => refs.push(r),
                Err(err) => {
                    grant_fail("contig-bus: grant_access", err);
                    break;
                }
            }
        }
        if refs.len() == ends.len() {
            match grant::map_grants(hv, t, &mut *pt, &mut vas, me, &refs, true) {
                Err(err) => {
                    grant_fail("contig-bus: map own grants", err);
                }
                Ok(gm) => {
                    // Each mapped page must read what the buffer's frame
                    // holds: the pattern of its GFN.
                    let same = ends.iter().enumerate().all(|(k, g)| {
                        (0..(PAGE_SIZE / 8) as usize).all(|i| {
                            gm.read_obj::<u64>(k as u64 * PAGE_SIZE + i as u64 * 8)
                                .is_ok_and(|w| w == pattern_word(g.0, i))
                        })
                    });
                    let bus = gm.bus_addrs();
                    let size = range.len().0 * PAGE_SIZE;
                    // The mutants ignore Xen's answer and take the buffer's
                    // guest-physical addresses for machine ones (on the
                    // RAM1 domU those lie above 4 GiB).
                    let (first, last) = if crate::mutant::is("contig-bus-gpa")
                        || crate::mutant::is("ram1-bus-gfn")
                    {
                        let gpa = range.start_addr().0;
                        (gpa, gpa + size - PAGE_SIZE)
                    } else {
                        (
                            bus.first().copied().unwrap_or(0),
                            bus.get(1).copied().unwrap_or(0),
                        )
                    };
                    let contiguous = first.checked_add(size - PAGE_SIZE) == Some(last);
                    let end = first.saturating_add(size);
                    xm_info!(
                        "report: contiguous-grant pages={=usize} first={=u64:#x} last={=u64:#x} same={=str} contiguous={=str} below_4g={=str}",
                        bus.len(),
                        first,
                        last,
                        yes(same),
                        yes(contiguous),
                        yes(end <= 1 << 32)
                    );
                    let wrong = if !same {
                        Some("a page mapped through its grant does not read what the buffer holds")
                    } else if !contiguous || first % PAGE_SIZE != 0 {
                        Some("the bus addresses of the buffer's ends are not one contiguous run")
                    } else {
                        None
                    };
                    if let Err(err) = retry_release(gm, |m| m.release(hv, t, &mut *pt, &mut vas)) {
                        grant_fail("contig-bus: release", err);
                    } else if let Some(why) = wrong {
                        xm_error!("contig-bus: {=str}", why);
                    } else {
                        answer = Some(xenmem::addr::Mfn(first / PAGE_SIZE));
                    }
                }
            }
        }
        for r in refs {
            if let Err(err) = gt.end_access(r) {
                grant_fail("contig-bus: end_access", err);
                answer = None;
            }
        }
        if let Err(err) = table_released(&mut gt, hv, t, &mut *pt, &mut vas) {
            grant_fail("contig-bus: table release", err);
            answer = None;
        }
        answer
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, t, me);
        None
    }
}

/// Give `buf` back (trying twice) and fail: the
/// buffer is not left behind on a failed run.
fn free_then_fail<H: Hypervisor>(
    e: &mut Engine<'_, H>,
    t: &mut RegionTable,
    buf: reservation::ContiguousBuffer,
) -> Verdict {
    if let Err(err) = retry_release(buf, |b| e.free_contiguous(t, b)) {
        xm_error!("contiguous: free: {}", defmt_display(&err));
    }
    Verdict::Fail
}

/// Release a handle with `release`, and once more if the first attempt
/// stopped part-way (the handle comes back knowing where: the second
/// attempt continues there). A handle refused twice is dropped, and the
/// leak hook reports what it still held.
fn retry_release<M, E: core::fmt::Display>(
    handle: M,
    mut release: impl FnMut(M) -> Result<(), ReleaseError<M, E>>,
) -> Result<(), E> {
    match release(handle) {
        Ok(()) => Ok(()),
        Err(e) => {
            let (handle, first) = e.into_parts();
            xm_warn!("release stopped ({}): trying again", defmt_display(&first));
            release(handle).map_err(ReleaseError::into_error)
        }
    }
}

/// [`retry_release`] for the agent's own grant table (released in place).
#[cfg(target_os = "none")]
fn table_released<H: Hypervisor>(
    gt: &mut xenmem::grant::GrantTable,
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
) -> Result<(), xenmem::grant::GrantError> {
    gt.release(hv, t, pt, vas).or_else(|first| {
        xm_warn!(
            "grant table release stopped ({}): trying again",
            defmt_display(&first)
        );
        gt.release(hv, t, pt, vas)
    })
}

/// The agent's page tables for `what`, or `None` with the reason logged.
#[cfg(target_os = "none")]
fn page_tables_for(
    what: &str,
) -> Option<spin::MutexGuard<'static, crate::arch::imp::paging::AgentPageTable>> {
    match crate::arch::imp::paging::page_tables() {
        Ok(pt) => Some(pt),
        Err(e) => {
            xm_error!("{=str}: page tables: {}", what, defmt_display(&e));
            None
        }
    }
}

/// Make the boot identity map what the region table says (only the guest's
/// memory mapped: [`xenmem::paging::trim_identity`]), then check it with the
/// walker: every frame of a kept region below the map's end translates to
/// itself, and a sample of every other range (its first and last page and
/// one page per 2 MiB) translates to nothing. Reports `identity-trim`.
fn trim_run(t: &mut RegionTable) -> Verdict {
    #[cfg(target_os = "none")]
    {
        use crate::arch::imp::paging::IDENTITY;
        use xenmem::addr::VirtAddr;
        let Some(mut pt) = page_tables_for("identity-trim") else {
            return Verdict::Fail;
        };
        let end = IDENTITY.end.0;
        // Kept frames the boot map leaves unmapped on purpose (x86: the boot
        // stack's guard page): they must stay so, all others mapped. (Not
        // collected: a big domain's kept pages would not fit the heap.)
        let unmapped_at_boot: Vec<u64> = kept_pages(t, end)
            .filter(|&pa| pt.translate(VirtAddr(pa)).is_none())
            .collect();
        // The mutant leaves the boot map as it is (and, below, ignores its
        // own walker's check of that).
        let skip = crate::mutant::is("trim-skipped");
        let trimmed = if skip {
            Ok(xenmem::paging::Trimmed::default())
        } else {
            xenmem::paging::trim_identity(&mut pt, IDENTITY, t)
        };
        let done = match trimmed {
            Ok(d) => d,
            Err(err) => {
                xm_error!("identity-trim: {}", defmt_display(&err));
                return Verdict::Fail;
            }
        };
        let (mut kept, mut kept_wrong) = (0u64, 0u64);
        for pa in kept_pages(t, end) {
            kept += 1;
            let want = !unmapped_at_boot.contains(&pa);
            let is = pt.translate(VirtAddr(pa)).is_some_and(|(to, _)| to.0 == pa);
            if is != want {
                kept_wrong += 1;
            }
        }
        let (mut sampled, mut still_mapped) = (0u64, 0u64);
        for r in t.iter() {
            let (lo, hi) = (r.range.start_addr().0, r.range.end_addr().0.min(end));
            if lo >= hi || r.kind.identity_mapped() {
                continue;
            }
            {
                let blocks = (lo..hi).step_by(xenmem::paging::level_size(1) as usize);
                let samples = [lo, hi - PAGE_SIZE].into_iter().chain(
                    blocks
                        .map(|b| b & !(xenmem::paging::level_size(1) - 1))
                        .filter(|&b| b >= lo),
                );
                for pa in samples {
                    sampled += 1;
                    if pt.translate(VirtAddr(pa)).is_some() {
                        still_mapped += 1;
                    }
                }
            }
        }
        xm_info!(
            "report: identity-trim ranges={=usize} frames={} root_switches={=u64} kept_mapped={=str} kept={=u64} unmapped_at_boot={=usize} others_unmapped={=str} sampled={=u64}",
            done.ranges,
            done.frames,
            pt.root_switches(),
            yes(kept_wrong == 0),
            kept,
            unmapped_at_boot.len(),
            yes(still_mapped == 0),
            sampled
        );
        if (kept_wrong != 0 || still_mapped != 0) && !skip {
            xm_error!(
                "identity-trim: {=u64} kept frames not mapped, {=u64} sampled others still mapped",
                kept_wrong,
                still_mapped
            );
            return Verdict::Fail;
        }
        // The walker against the live, trimmed tables at every boot: RAM
        // frames of the table mapped into the window, written through it
        // and read back through the identity map (and the other way), the
        // refusals, the unmap, and every table frame back in the table.
        if let Err(err) = xenmem::paging::selftest::run(&mut *pt, t) {
            xm_error!("paging-selftest: {}", defmt_display(&err));
            return Verdict::Fail;
        }
        xm_info!(
            "report: paging-selftest frames={=u64} result=pass",
            xenmem::paging::selftest::TEST_FRAMES
        );
        // The trim took the device space away: a domU's UART (its serial
        // input for xen-view pauses) moves to the window's last page.
        if let Err(err) = crate::xenview::map_uart(&mut *pt, t) {
            xm_error!("xen-view: mapping the UART: {}", defmt_display(&err));
            return Verdict::Fail;
        }
        Verdict::Pass
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = t;
        Verdict::Pass
    }
}

/// The addresses of the pages below `end` that the identity map keeps
/// ([`RegionKind::identity_mapped`]).
#[cfg(target_os = "none")]
fn kept_pages(t: &RegionTable, end: u64) -> impl Iterator<Item = u64> + '_ {
    t.iter()
        .filter(|r| r.kind.identity_mapped())
        .flat_map(move |r| {
            (r.range.start_addr().0..r.range.end_addr().0.min(end)).step_by(PAGE_SIZE as usize)
        })
}

/// Check with the walker's `translate` that every ballooned frame
/// below the identity map's end is unmapped (reading one would fault; it is
/// not read). Reports `identity-map`; `false` if one is still mapped.
fn identity_report(t: &RegionTable, phase: &str) -> bool {
    #[cfg(target_os = "none")]
    {
        let Some(pt) = page_tables_for("identity-map") else {
            return false;
        };
        let end = crate::arch::imp::paging::IDENTITY.end.0 / PAGE_SIZE;
        let (mut checked, mut mapped) = (0u64, 0u64);
        // Where the ballooned frames lie (guest-physical, `[low, high)`;
        // both 0 when none are out): the runner checks them against the
        // guest's memory banks.
        let (mut low, mut high) = (u64::MAX, 0u64);
        for r in t.iter().filter(|r| r.kind == RegionKind::Ballooned) {
            low = low.min(r.range.start_addr().0);
            high = high.max(r.range.end_addr().0);
            for g in r.range.start().0..r.range.end().0.min(end) {
                checked += 1;
                if pt
                    .translate(xenmem::addr::VirtAddr(g * PAGE_SIZE))
                    .is_some()
                {
                    mapped += 1;
                }
            }
        }
        xm_info!(
            "report: identity-map phase={=str} ballooned_unmapped={=str} checked={=u64} mapped={=u64} root_switches={=u64} low={=u64:#x} high={=u64:#x}",
            phase,
            yes(mapped == 0),
            checked,
            mapped,
            pt.root_switches(),
            if high == 0 { 0 } else { low },
            high
        );
        if mapped != 0 {
            xm_error!(
                "identity-map: {=u64} ballooned frames are still mapped",
                mapped
            );
        }
        mapped == 0
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (t, phase);
        true
    }
}

/// Check that every repopulated frame of `back` translates to itself
/// again (before the pattern check writes to it). Reports
/// `identity-map-back`; `false` if one does not.
fn identity_back_report(back: &[FrameRange]) -> bool {
    #[cfg(target_os = "none")]
    {
        let Some(pt) = page_tables_for("identity-map") else {
            return false;
        };
        let end = crate::arch::imp::paging::IDENTITY.end.0 / PAGE_SIZE;
        let (mut checked, mut wrong) = (0u64, 0u64);
        for r in back {
            for g in r.start().0..r.end().0.min(end) {
                checked += 1;
                let pa = g * PAGE_SIZE;
                let ok = pt
                    .translate(xenmem::addr::VirtAddr(pa))
                    .is_some_and(|(to, attrs)| to.0 == pa && attrs.is_writable());
                if !ok {
                    wrong += 1;
                }
            }
        }
        xm_info!(
            "report: identity-map-back repopulated_mapped={=str} checked={=u64} wrong={=u64}",
            yes(wrong == 0),
            checked,
            wrong
        );
        if wrong != 0 {
            xm_error!(
                "identity-map: {=u64} repopulated frames are not mapped",
                wrong
            );
        }
        wrong == 0
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = back;
        true
    }
}

/// The machine frames behind `range`, from Xen's M2P table (privileged x86;
/// needs the agent's page tables for the mapping window).
fn lookup_machine<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    range: FrameRange,
) -> Result<Vec<xenmem::addr::Mfn>, M2pError> {
    #[cfg(target_os = "none")]
    {
        let mut pt = crate::arch::imp::paging::page_tables()
            .map_err(|e| M2pError::Map(xenmem::mapping::MapError::Paging(e)))?;
        let mut vas = xenmem::mapping::VaSpace::new(crate::xenview::window(&*pt));
        let l = m2p::lookup(hv, t, &mut *pt, &mut vas, range)?;
        report_m2p_layout(&l.layout, l.highest_valid);
        Ok(l.mfns)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, t, range);
        Err(M2pError::Unsupported)
    }
}

/// The M2P table as Xen gave it, and how far the scan saw valid entries
/// (the runner compares it with Xen's e820).
#[cfg(target_os = "none")]
fn report_m2p_layout(l: &m2p::Layout, highest_valid: Option<xenmem::addr::Mfn>) {
    xm_info!(
        "report: m2p-table max_page={=u64:#x} chunks={=usize} unfilled={=usize} pages={=u64} highest_valid={=u64:#x}",
        l.end().0,
        l.chunks(),
        l.unfilled(),
        l.pages().0,
        highest_valid.map_or(0, |m| m.0)
    );
}

/// The M2P with the helper domain's frames in it: the entries at the
/// machine frames Xen gave as the grant mappings' bus addresses must be the
/// helper's GFNs, and dom0's own frames at those GFNs are claimed twice
/// (the lookup says so instead of picking one). False on a mismatch.
#[cfg(target_os = "none")]
fn helper_m2p<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
    seeded: &[xenmem::domctl::SeededGrant],
    bus: &[u64],
) -> bool {
    let mfns: Vec<xenmem::addr::Mfn> = bus
        .iter()
        .map(|b| xenmem::addr::Mfn(b / PAGE_SIZE))
        .collect();
    let entries = match m2p::entries_at(hv, t, pt, vas, &mfns) {
        Ok(e) => e,
        Err(e) => {
            xm_error!("helper: M2P entries: {}", defmt_display(&e));
            return false;
        }
    };
    let matched = seeded
        .iter()
        .zip(&entries)
        .filter(|(s, e)| **e == Some(s.gfn))
        .count();
    let ok = matched == seeded.len() && entries.len() == seeded.len();
    xm_info!(
        "report: m2p-helper frames={=usize} entries={=str} first_bus={=u64:#x}",
        seeded.len(),
        if ok { "ok" } else { "bad" },
        bus.first().copied().unwrap_or(0)
    );
    if !ok {
        xm_error!("helper: the M2P does not have the helper's GFNs at the frames Xen mapped");
        return false;
    }
    // Dom0's own frames at the helper's GFNs (where dom0 has RAM there).
    if let Some(first) = seeded.first() {
        let n = seeded.len() as u64;
        // Only where dom0's table has the whole range as its memory.
        let own = FrameRange::new(first.gfn, PageCount(n)).ok().filter(|r| {
            let mut covered = 0;
            let all = t.overlapping_regions(*r).all(|g| {
                covered += g.range.len().0;
                matches!(g.kind, RegionKind::Ram | RegionKind::Reserved(_))
            });
            all && covered >= n
        });
        if let Some(r) = own {
            let answer = match m2p::lookup(hv, t, pt, vas, r) {
                Ok(l) => {
                    report_m2p_layout(&l.layout, l.highest_valid);
                    "unique"
                }
                Err(M2pError::Ambiguous { .. }) => "ambiguous",
                Err(M2pError::NotFound(_)) => "not-found",
                Err(e) => {
                    xm_error!("helper: M2P lookup: {}", defmt_display(&e));
                    return false;
                }
            };
            xm_info!(
                "report: m2p-own-at-helper-gfns gfn={} frames={=u64} answer={=str}",
                r.start(),
                n,
                answer
            );
        }
    }
    true
}

/// Read `len` (at most 8) bytes at `gpa` as a little-endian number through
/// [`xenmem::guestmem::GuestMemory`] over the table, the identity-mapped own
/// RAM and `maps`.
#[cfg(target_os = "none")]
fn guestmem_read(
    t: &RegionTable,
    maps: &[&dyn xenmem::guestmem::Mapped],
    gpa: xenmem::addr::GuestPhysAddr,
    len: usize,
) -> Result<u64, xenmem::guestmem::GuestMemError> {
    // SAFETY: the boot page tables map populated RAM read-write at its own
    // address below IDENTITY_MAP_END for the whole run.
    let ram = unsafe { xenmem::guestmem::IdentityRam::new(crate::arch::imp::IDENTITY_MAP_END) };
    let mem = xenmem::guestmem::GuestMemory::new(t, &ram, maps);
    let mut b = [0u8; 8];
    mem.read(gpa, &mut b[..len.min(8)])?;
    Ok(u64::from_le_bytes(b))
}

/// Whether the pattern [`pattern_check`] wrote in `range` is still there.
fn pattern_check_readonly(range: FrameRange) -> Option<bool> {
    #[cfg(target_os = "none")]
    {
        if range.start().0 == 0 || range.end_addr().0 > crate::arch::imp::IDENTITY_MAP_END.0 {
            return None;
        }
        let mut ok = true;
        for g in range.start().0..range.end().0 {
            let p = (g * PAGE_SIZE) as usize as *const u64;
            for i in 0..(PAGE_SIZE / 8) as usize {
                // SAFETY: as in `pattern_check`: our RAM, identity-mapped.
                ok &= unsafe { p.add(i).read_volatile() } == pattern_word(g, i);
            }
        }
        Some(ok)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = range;
        None
    }
}

/// The most `SCHEDOP_yield`s spent waiting for a peer before giving up (the
/// runner's timeout is the real backstop; this keeps the loop finite).
const PEER_POLLS: u32 = 5_000_000;

/// After a failure, the most polls spent waiting for the peer to finish, so
/// that its closing lines reach the console before the machine goes (a few
/// seconds under TCG; a peer that waits for this domain never finishes).
const PEER_POLLS_AFTER_FAILURE: u32 = 200_000;

/// Wait (at most `polls` `SCHEDOP_yield`s) for `peer` to shut down; `Pass`
/// if it powered off.
fn wait_for_peer(hv: &impl Hypervisor, peer: DomId, polls: u32) -> Verdict {
    for _ in 0..polls {
        match hv.domain_info(peer) {
            Ok(info) => {
                if let Some(code) = info.shutdown {
                    let name = match code {
                        0 => "poweroff",
                        1 => "reboot",
                        2 => "suspend",
                        3 => "crash",
                        4 => "watchdog",
                        _ => "other",
                    };
                    xm_info!(
                        "report: peer domid={} shutdown={=str} code={=u32} tot_pages={}",
                        peer,
                        name,
                        code,
                        info.tot_pages
                    );
                    return if code == 0 {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    };
                }
            }
            // Not created yet (or already gone): keep polling.
            Err(XenError::Errno(xenmem::xen::Errno::ESRCH)) => {}
            Err(e) => {
                xm_error!("peer: getdomaininfo of domain {} failed: {}", peer, e);
                return Verdict::Fail;
            }
        }
        if let Err(e) = hv.yield_cpu() {
            xm_error!("peer: SCHEDOP_yield failed: {}", e);
            return Verdict::Fail;
        }
    }
    xm_error!("peer: domain {} did not shut down in time", peer);
    Verdict::Fail
}

// ---- grants (grant=self, grant-xchg=REF) ----

/// What a domU writes in the page it grants (word `i`: seed ^ i).
#[cfg(target_os = "none")]
const GRANT_OFFER_SEED: u64 = 0x6772_616e_745f_6f66;
/// What dom0 writes back (word 0 last: the domU's signal).
#[cfg(target_os = "none")]
const GRANT_ANSWER_SEED: u64 = 0x6772_616e_745f_616e;
/// Polls (each a `SCHEDOP_yield`) spent waiting for the other side.
#[cfg(target_os = "none")]
const GRANT_POLLS: u32 = 5_000_000;

/// The words of a page, through the identity map (the agent's own RAM).
#[cfg(target_os = "none")]
fn page_words(range: FrameRange) -> Option<*mut u64> {
    if range.start().0 == 0 || range.end_addr().0 > crate::arch::imp::IDENTITY_MAP_END.0 {
        return None;
    }
    Some(range.start_addr().0 as usize as *mut u64)
}

#[cfg(target_os = "none")]
fn fill_page(p: *mut u64, seed: u64) {
    for i in 0..(PAGE_SIZE / 8) as usize {
        // SAFETY: `p` is a page of the agent's own RAM, reserved for this
        // and identity-mapped (see `page_words`); `i` stays in the page.
        unsafe { p.add(i).write_volatile(seed ^ i as u64) };
    }
}

/// How many words of the page, from word `from`, differ from the pattern.
#[cfg(target_os = "none")]
fn page_mismatches(p: *const u64, seed: u64, from: usize) -> usize {
    (from..(PAGE_SIZE / 8) as usize)
        // SAFETY: as in `fill_page`.
        .filter(|&i| unsafe { p.add(i).read_volatile() } != seed ^ i as u64)
        .count()
}

/// `grant=` and `grant-xchg=`: the grant library under real Xen.
fn grant_run<H: Hypervisor>(hv: &H, t: &mut RegionTable, s: &Survey, opts: &Options) -> Verdict {
    #[cfg(target_os = "none")]
    {
        use xenmem::mapping::VaSpace;
        let Some(mut pt) = page_tables_for("grant") else {
            return Verdict::Fail;
        };
        let mut vas = VaSpace::new(crate::xenview::window(&*pt));
        let me = s.domid.map(|(d, _)| d);
        if opts.grant_self == Some(true)
            && grant_self(hv, t, &mut *pt, &mut vas, me) == Verdict::Fail
        {
            return Verdict::Fail;
        }
        if let Some(r) = opts.grant_xchg {
            let r = xenmem::grant::GrantRef(r);
            let holes = t.count(RegionKind::Hole);
            let v = match (me, opts.peer) {
                (Some(DomId(0)), Some(peer)) => grant_map_peer(hv, t, &mut *pt, &mut vas, peer, r),
                (Some(d), _) if d.0 != 0 => grant_offer(hv, t, &mut *pt, &mut vas, d, r),
                _ => {
                    xm_error!("grant-xchg: needs a domid (and peer= for dom0)");
                    return Verdict::Fail;
                }
            };
            // Nothing of the exchange may be left mapped: the window is
            // empty, every hole frame is back, and Xen's count still
            // matches the table.
            let window = vas.used();
            let after = t.count(RegionKind::Hole);
            xm_info!(
                "report: mappings-after window_pages={=u64} hole_pages={} hole_pages_before={}",
                window,
                after,
                holes
            );
            let cur = match hv.current_reservation(DomId::SELF) {
                Ok(c) => c,
                Err(e) => {
                    xm_error!("grant-xchg: current_reservation: {}", e);
                    return Verdict::Fail;
                }
            };
            let a = account(t, s, cur, PageCount(0));
            report_accounting(&a);
            if window != 0 || after != holes || a.unaccounted() != 0 {
                xm_error!("grant-xchg: mappings left behind or pages unaccounted for");
                return Verdict::Fail;
            }
            return v;
        }
        Verdict::Pass
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, t, s, opts);
        Verdict::Pass
    }
}

/// One mapping made or released, for the report's list of mappings:
/// `kind` grant (another domain's grant; `remote` = its reference), foreign
/// (another domain's frame; `remote` = its GFN), gnttab (another domain's
/// grant-table frame, acquired; `remote` = the frame's index) or own-gnttab
/// (the agent's own table frame; `remote` = its index); `gfn` is where it
/// sits in the agent's physmap, `va` where in its window.
#[cfg(target_os = "none")]
fn report_mapping(
    kind: &str,
    dom: DomId,
    gfns: FrameRange,
    va: xenmem::addr::VirtAddr,
    remote: u64,
    state: &str,
) {
    xm_info!(
        "report: mapping kind={=str} dom={} gfn={} pages={} va={} remote={=u64:#x} state={=str}",
        kind,
        dom,
        gfns.start(),
        gfns.len(),
        va,
        remote,
        state
    );
}

#[cfg(target_os = "none")]
fn grant_fail(what: &str, e: xenmem::grant::GrantError) -> Verdict {
    xm_error!("grant: {=str}: {}", what, defmt_display(&e));
    Verdict::Fail
}

/// Set up the own table, grant a page to itself, map the grant, copy through
/// it, end it, release everything.
#[cfg(target_os = "none")]
fn grant_self<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
    me: Option<DomId>,
) -> Verdict {
    use xenmem::grant::{self, Bytes, CopySeg, GrantError, GrantTable};
    let mut gt = match GrantTable::setup(hv, t, pt, vas, 1) {
        Ok(g) => g,
        Err(e) => return grant_fail("table set-up", e),
    };
    xm_info!(
        "report: grant-table frames={=u32} max={=u32} gfn={} available={=usize}",
        gt.frames(),
        gt.max_frames(),
        gt.frame_gfns().next().unwrap_or(Gfn(0)),
        gt.available()
    );
    // The page granted (given up for good on x86: mapping one's own grant
    // unhooks it from its GFN) and a page to copy into.
    let pages = match t.alloc_frames(
        PageCount(2),
        xenmem::addr::Order::ZERO,
        ReservedUse::Allocated,
    ) {
        Ok(p) => p,
        Err(e) => return grant_fail("pages", GrantError::Table(e)),
    };
    let (Some(p), Some(me)) = (page_words(pages), me) else {
        xm_error!("grant: no domid or the pages are not identity-mapped");
        return Verdict::Fail;
    };
    let page = FrameRange::new(pages.start(), PageCount(1)).unwrap_or(pages);
    let copy_to = Gfn(pages.start().0 + 1);
    // SAFETY: the second page is ours, like the first (`page_words`).
    let q = unsafe { p.add((PAGE_SIZE / 8) as usize) };
    fill_page(p, GRANT_OFFER_SEED);
    let r = match gt.grant_access(t, me, page.start(), false) {
        Ok(r) => r,
        Err(e) => return grant_fail("grant_access", e),
    };
    xm_info!(
        "report: grant-issue ref={=u32} dom={} gfn={}",
        r.0,
        me,
        page.start()
    );
    let seg = CopySeg {
        gref: r,
        grant_offset: 0,
        local: copy_to,
        local_offset: 0,
        len: PAGE_SIZE as u16,
    };
    // The mutant copies from the reference after its grant (never issued).
    let copy_before = if crate::mutant::is("grant-copy-wrong-ref") {
        let next = grant::GrantRef(r.0 + 1);
        grant::copy_from_grant(hv, me, &[CopySeg { gref: next, ..seg }])
    } else {
        grant::copy_from_grant(hv, me, &[seg])
    };
    let copied = page_mismatches(q, GRANT_OFFER_SEED, 0) == 0;
    let self_status = match grant::map_grants(hv, t, pt, vas, DomId::SELF, &[r], true) {
        Err(GrantError::Refused(f)) => f.first().map_or("?", |x| x.status.name()),
        Ok(m) => {
            let _ = retry_release(m, |m| m.release(hv, t, pt, vas));
            "okay"
        }
        Err(_) => "error",
    };
    let gm = match grant::map_grants(hv, t, pt, vas, me, &[r], false) {
        Ok(m) => m,
        Err(e) => return grant_fail("map own grant", e),
    };
    let mut word = [0u64; 2];
    let seen = gm.read_obj::<u64>(8).unwrap_or(0);
    // The same word by guest-physical address, through GuestMemory; and a
    // read running past the mapping into the hole after it is refused whole.
    let gpa = gm.gfns().start_addr();
    let by_gpa = guestmem_read(t, &[&gm], xenmem::addr::GuestPhysAddr(gpa.0 + 8), 8);
    let past = guestmem_read(
        t,
        &[&gm],
        xenmem::addr::GuestPhysAddr(gpa.0 + PAGE_SIZE - 4),
        8,
    );
    let guestmem = match (by_gpa, past) {
        (Ok(v), Err(_)) if v == seen => "ok",
        _ => "bad",
    };
    xm_info!(
        "report: guestmem gpa={} via=grant read={=str}",
        gpa,
        guestmem
    );
    let st = gt.state(r);
    let wrote = gm.write_obj::<u64>(16, 0x5eed).is_ok();
    // SAFETY: as in `fill_page`.
    word[0] = unsafe { p.add(2).read_volatile() };
    let end_mapped = match gt.end_access(r) {
        Err(GrantError::InUse(_)) => "in-use",
        Ok(()) => "ended",
        Err(_) => "error",
    };
    let bus = gm.bus_addrs().first().copied().unwrap_or(0);
    if let Err(e) = retry_release(gm, |m| m.release(hv, t, pt, vas)) {
        return grant_fail("release", e);
    }
    // SAFETY: as in `fill_page`.
    word[1] = unsafe { p.add(2).read_volatile() };
    let copy_after = grant::copy_from_grant(hv, me, &[seg]);
    let status = |r: &Result<(), GrantError>| match r {
        Ok(()) => "GNTST_okay",
        Err(GrantError::Refused(f)) => f.first().map_or("?", |x| x.status.name()),
        Err(_) => "error",
    };
    xm_info!(
        "report: grant-self ref={=u32} map_domid_self={=str} pattern={=str} wrote={=str} reading={=str} writing={=str} end_while_mapped={=str} own_gfn_during={=u64:#x} own_gfn_after={=u64:#x} bus={=u64:#x} copy_before={=str} copied={=str} copy_after={=str}",
        r.0,
        self_status,
        if seen == GRANT_OFFER_SEED ^ 1 { "ok" } else { "bad" },
        yes(wrote),
        yes(st.is_some_and(|s| s.reading)),
        yes(st.is_some_and(|s| s.writing)),
        end_mapped,
        word[0],
        word[1],
        bus,
        status(&copy_before),
        yes(copied),
        status(&copy_after)
    );
    if end_mapped != "ended" {
        if let Err(e) = gt.end_access(r) {
            return grant_fail("end_access", e);
        }
    }
    if let Err(e) = table_released(&mut gt, hv, t, pt, vas) {
        return grant_fail("table release", e);
    }
    // The granted page stays reserved (on x86 it has no GFN any more); the
    // copy target goes back.
    let _ = t.free_frames(
        FrameRange::new(copy_to, PageCount(1)).unwrap_or(pages),
        ReservedUse::Allocated,
    );
    if seen != GRANT_OFFER_SEED ^ 1 || !wrote || copy_before.is_err() || !copied {
        xm_error!("grant: own grant: data or copy wrong");
        return Verdict::Fail;
    }
    Verdict::Pass
}

/// A domU: grant a page with a pattern to dom0, wait for dom0's answer in
/// it, end the grant.
#[cfg(target_os = "none")]
fn grant_offer<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
    me: DomId,
    want: xenmem::grant::GrantRef,
) -> Verdict {
    use xenmem::grant::{GrantError, GrantTable};
    let mut gt = match GrantTable::setup(hv, t, pt, vas, 1) {
        Ok(g) => g,
        Err(e) => return grant_fail("table set-up", e),
    };
    let own: Vec<_> = gt.frame_gfns().zip(gt.frame_vas()).collect();
    for (i, &(g, va)) in own.iter().enumerate() {
        if let Ok(one) = FrameRange::new(g, PageCount(1)) {
            report_mapping("own-gnttab", me, one, va, i as u64, "made");
        }
    }
    let page = match t.alloc_frames(
        PageCount(1),
        xenmem::addr::Order::ZERO,
        ReservedUse::Allocated,
    ) {
        Ok(p) => p,
        Err(e) => return grant_fail("page", GrantError::Table(e)),
    };
    let Some(p) = page_words(page) else {
        xm_error!("grant: page not identity-mapped");
        return Verdict::Fail;
    };
    // The mutant grants the page without writing what dom0 will check.
    if !crate::mutant::is("pattern-not-written") {
        fill_page(p, GRANT_OFFER_SEED);
    }
    let r = match gt.grant_access(t, DomId(0), page.start(), false) {
        Ok(r) => r,
        Err(e) => return grant_fail("grant_access", e),
    };
    xm_info!(
        "report: grant-offer ref={=u32} dom=0 gfn={} table_gfn={}",
        r.0,
        page.start(),
        gt.frame_gfns().next().unwrap_or(Gfn(0))
    );
    if r != want {
        xm_error!("grant: got ref {=u32}, agreed on {=u32}", r.0, want.0);
        return Verdict::Fail;
    }
    // dom0 writes word 0 last.
    let mut polls = 0u32;
    // SAFETY: as in `fill_page`.
    while unsafe { p.read_volatile() } != GRANT_ANSWER_SEED && polls < GRANT_POLLS {
        let _ = hv.yield_cpu();
        polls += 1;
    }
    let answered = polls < GRANT_POLLS;
    let bad = page_mismatches(p, GRANT_ANSWER_SEED, 0);
    let mut tries = 0u32;
    let ended = loop {
        tries += 1;
        match gt.end_access(r) {
            Ok(()) => break true,
            Err(GrantError::InUse(_)) if tries < GRANT_POLLS => {
                let _ = hv.yield_cpu();
            }
            Err(_) => break false,
        }
    };
    xm_info!(
        "report: grant-offer-done ref={=u32} answered={=str} polls={=u32} peer_wrote={=str} bad_words={=usize} end_access={=str} end_tries={=u32}",
        r.0,
        yes(answered),
        polls,
        if bad == 0 { "ok" } else { "bad" },
        bad,
        if ended { "ok" } else { "failed" },
        tries
    );
    if ended {
        if let Err(e) = table_released(&mut gt, hv, t, pt, vas) {
            return grant_fail("table release", e);
        }
        for (i, &(g, va)) in own.iter().enumerate() {
            if let Ok(one) = FrameRange::new(g, PageCount(1)) {
                report_mapping("own-gnttab", me, one, va, i as u64, "released");
            }
        }
    }
    if answered && bad == 0 && ended {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// `dom0-peer=grant`: the rounds' sizes.
#[cfg(target_os = "none")]
const DOM0_PEER_ROUNDS: [u64; 3] = [1, 64, 1024];
/// Where the agent and the dom0 peer talk (relative: the agent's own
/// `/local/domain/<domid>/data/xenmem/`, writable by both).
#[cfg(target_os = "none")]
const DOM0_PEER_DIR: &str = "data/xenmem";

/// The pattern word `i` of page `j` of a round (`seed` is
/// [`GRANT_OFFER_SEED`] or [`GRANT_ANSWER_SEED`]); `xenmem-peer grant`
/// computes the same.
#[cfg(target_os = "none")]
fn round_seed(seed: u64, j: u64) -> u64 {
    seed ^ (j << 20)
}

/// Frames for an exchange with dom0: `n` frames of free RAM, each filled
/// with `seed`'s pattern ([`round_seed`]); returns what the table holds
/// (one frame more than `n`: the first free frame may be frame 0, which is
/// no pointer), the `n` frames used, and their words. Logged and `None` if
/// there is no room or a frame is not identity-mapped.
#[cfg(target_os = "none")]
fn pattern_pages(
    t: &mut RegionTable,
    n: u64,
    seed: u64,
) -> Option<(FrameRange, FrameRange, Vec<*mut u64>)> {
    let held = match t.alloc_frames(
        PageCount(n + 1),
        xenmem::addr::Order::ZERO,
        ReservedUse::Allocated,
    ) {
        Ok(p) => p,
        Err(e) => {
            xm_error!("dom0-peer: pages: {}", defmt_display(&e));
            return None;
        }
    };
    let pages = FrameRange::new(Gfn(held.start().0 + 1), PageCount(n)).ok()?;
    let mut words = Vec::new();
    for j in 0..n {
        let Some(p) = FrameRange::new(Gfn(pages.start().0 + j), PageCount(1))
            .ok()
            .and_then(page_words)
        else {
            xm_error!("dom0-peer: page not identity-mapped");
            return None;
        };
        fill_page(p, round_seed(seed, j));
        words.push(p);
    }
    Some((held, pages, words))
}

/// The peer's count in a value such as `1 read bad=K`.
#[cfg(target_os = "none")]
fn peer_bad_words(v: &str) -> Option<u64> {
    v.split_whitespace()
        .find_map(|w| w.strip_prefix("bad="))
        .and_then(|v| v.parse::<u64>().ok())
}

/// A count for a report, `?` if there is none.
#[cfg(target_os = "none")]
fn or_unknown(v: Option<u64>) -> alloc::string::String {
    v.map_or(alloc::string::String::from("?"), |b| alloc::format!("{b}"))
}

/// The agent's side of the hand-overs with the dom0 peer: values in
/// xenstore under [`DOM0_PEER_DIR`], each one followed by an event on an
/// interdomain channel the agent offered dom0 (`port`, published there);
/// the agent waits for the peer's values blocked on that port
/// (`SCHEDOP_poll`, no CPU), not on xenstore watches.
#[cfg(target_os = "none")]
struct Handover<'a, H: Hypervisor, N, W> {
    hv: &'a H,
    xs: &'a mut xenmem::xenstore::XsClient<N, W>,
    ev: &'static xenmem::evtchn::EventChannels,
    port: u32,
    /// Events sent and received.
    sent: u64,
    received: u64,
}

#[cfg(target_os = "none")]
impl<H: Hypervisor, N, W> Handover<'_, H, N, W>
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    /// Write `value` at `path` and notify the peer.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), xenmem::xenstore::XsError> {
        self.xs.write(path, value)?;
        if !crate::mutant::is("peer-events-unsent") {
            self.hv
                .evtchn_send(self.port)
                .map_err(xenmem::xenstore::XsError::Xen)?;
        }
        self.sent += 1;
        Ok(())
    }

    /// Block on the channel until `key` under [`DOM0_PEER_DIR`] holds a
    /// value starting with `prefix`; returns it.
    fn wait(
        &mut self,
        key: &str,
        prefix: &str,
    ) -> Result<alloc::string::String, xenmem::xenstore::XsError> {
        use xenmem::evtchn::{EvtchnError, NoClock, WaitLimit};
        use xenmem::xenstore::{wire::XsErrno, XsError};
        let path = alloc::format!("{DOM0_PEER_DIR}/{key}");
        loop {
            match self.xs.read_string(&path) {
                Ok(v) if v.starts_with(prefix) => {
                    // Found without waiting: an event that came meanwhile
                    // is taken and counted (what the channel delivered,
                    // not how often the agent was the slower side).
                    if self
                        .ev
                        .take_pending(&[self.port])
                        .is_ok_and(|f| !f.is_empty())
                    {
                        self.received += 1;
                    }
                    return Ok(v);
                }
                Ok(_) | Err(XsError::Server(XsErrno::ENOENT)) => {}
                Err(e) => return Err(e),
            }
            match self
                .ev
                .wait(self.hv, &[self.port], WaitLimit::FOREVER, &mut NoClock)
            {
                Ok(_) => self.received += 1,
                Err(EvtchnError::Xen(x)) => return Err(XsError::Xen(x)),
                Err(_) => return Err(XsError::Xen(XenError::Contract("event channel wait"))),
            }
        }
    }
}

/// [`Handover::wait`] (the name the exchanges use).
#[cfg(target_os = "none")]
fn dom0_peer_wait<H: Hypervisor, N, W>(
    h: &mut Handover<'_, H, N, W>,
    key: &str,
    prefix: &str,
) -> Result<alloc::string::String, xenmem::xenstore::XsError>
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    h.wait(key, prefix)
}

/// `dom0-peer=grant`: rounds of 1, 64 and 1024 pages granted to dom0,
/// where `xenmem-peer grant` (Linux's gntdev through rust-vmm's
/// vm-memory) maps them. Per round: fill the pages with a pattern, grant
/// them (consecutive references, as vm-memory maps them), publish
/// `grant` = `ROUND PAGES FIRST_REF FIRST_GFN`; when dom0 says `mapped`, check its
/// write-back and try `end_access` (refused while mapped), say `checked`;
/// when dom0 says `unmapped`, end every grant (must work now), say `ended`;
/// dom0 then tries to map the first reference again (must fail) and says
/// how it went. Reports `dom0-peer-grant` per round.
#[cfg(target_os = "none")]
fn dom0_peer_run<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    s: &Survey,
    what: cmdline::Dom0Peer,
) -> Verdict {
    use xenmem::grant::GrantTable;
    use xenmem::mapping::VaSpace;
    let mut ctl = match control_for(hv, t) {
        Ok(c) => c,
        Err(e) => {
            xm_error!("dom0-peer: {}", defmt_display(&e));
            return Verdict::Fail;
        }
    };
    let (ctl, ev) = &mut ctl;
    // The channel every hand-over signals on, offered to dom0.
    let port = match hv.evtchn_alloc_unbound(DomId(0)) {
        Ok(p) => p,
        Err(e) => {
            xm_error!("dom0-peer: EVTCHNOP_alloc_unbound: {}", e);
            return Verdict::Fail;
        }
    };
    if let Err(e) = ctl.xs.write(
        &alloc::format!("{DOM0_PEER_DIR}/port"),
        alloc::format!("{port}").as_bytes(),
    ) {
        xm_error!("dom0-peer: publishing the port: {}", e);
        return Verdict::Fail;
    }
    xm_info!("report: dom0-peer-channel port={=u32} remote=0", port);
    let mut h = Handover {
        hv,
        xs: &mut ctl.xs,
        ev,
        port,
        sent: 0,
        received: 0,
    };
    let xs = &mut h;
    let Some(mut pt) = page_tables_for("dom0-peer") else {
        return Verdict::Fail;
    };
    let mut vas = VaSpace::new(crate::xenview::window(&*pt));
    if what != cmdline::Dom0Peer::Grant {
        let v = if what == cmdline::Dom0Peer::Gntalloc {
            dom0_peer_gntalloc(hv, xs, t, &mut *pt, &mut vas)
        } else if what == cmdline::Dom0Peer::PeerDies {
            dom0_peer_dies(hv, xs, t, &mut *pt, &mut vas)
        } else if what == cmdline::Dom0Peer::EndedMidUse {
            dom0_peer_ended_mid_use(hv, xs, t, &mut *pt, &mut vas)
        } else {
            // The engine's identity map takes the page tables itself.
            drop(pt);
            dom0_peer_foreign(hv, xs, t, s)
        };
        let end = if v == Verdict::Pass { "done" } else { "failed" };
        if let Err(e) = xs.write(&alloc::format!("{DOM0_PEER_DIR}/agent"), end.as_bytes()) {
            xm_warn!("dom0-peer: telling the peer {=str}: {}", end, e);
        }
        xm_info!(
            "report: dom0-peer-events port={=u32} sent={=u64} received={=u64}",
            xs.port,
            xs.sent,
            xs.received
        );
        xm_info!(
            "report: dom0-peer-done grants_active=0 window_pages={=u64}",
            vas.used()
        );
        return v;
    }
    // 1024 v1 entries and the 8 reserved ones: 3 frames.
    let mut gt = match GrantTable::setup(hv, t, &mut *pt, &mut vas, 3) {
        Ok(g) => g,
        Err(e) => return grant_fail("table set-up", e),
    };
    let v = dom0_peer_rounds(xs, &mut gt, t, s);
    // The peer stops at `done` or `failed`.
    let end = if v == Verdict::Pass { "done" } else { "failed" };
    if let Err(e) = xs.write(&alloc::format!("{DOM0_PEER_DIR}/agent"), end.as_bytes()) {
        xm_warn!("dom0-peer: telling the peer {=str}: {}", end, e);
    }
    let active = gt.active();
    if active == 0 {
        if let Err(e) = table_released(&mut gt, hv, t, &mut *pt, &mut vas) {
            return grant_fail("table release", e);
        }
    } else {
        // Grants the peer may still hold stay, and so does the table
        // (reported below).
        core::mem::forget(gt);
    }
    xm_info!(
        "report: dom0-peer-events port={=u32} sent={=u64} received={=u64}",
        xs.port,
        xs.sent,
        xs.received
    );
    xm_info!(
        "report: dom0-peer-done grants_active={=usize} window_pages={=u64}",
        active,
        vas.used()
    );
    v
}

/// What `xenmem-peer gntalloc` writes in the pages it allocates (word `i`
/// of page `j`: `seed ^ (j << 20) ^ i`), and the agent's answer.
#[cfg(target_os = "none")]
const GNTALLOC_SEED: u64 = 0x676e_7461_6c6c_6f63;
/// See [`GNTALLOC_SEED`].
#[cfg(target_os = "none")]
const GNTALLOC_ANSWER_SEED: u64 = 0x676e_7461_6e73_7772;

/// `dom0-peer=gntalloc`: wait for dom0's `alloc` = `1 PAGES RANGES`
/// (references as `a-b,c,...`), map them all in one batch, count the words
/// that differ from dom0's pattern, write the answer, release the mapping,
/// say `1 released bad=K`, and wait for dom0's `1 freed ...`. Reports
/// `dom0-peer-gntalloc`.
#[cfg(target_os = "none")]
fn dom0_peer_gntalloc<H: Hypervisor, N, W>(
    hv: &H,
    xs: &mut Handover<'_, H, N, W>,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
) -> Verdict
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    use xenmem::grant::{self, Bytes, GrantRef};
    let key = |k: &str| alloc::format!("{DOM0_PEER_DIR}/{k}");
    xm_info!("report: dom0-peer-ready dir={=str}", DOM0_PEER_DIR);
    let v = match dom0_peer_wait(xs, "alloc", "1 ") {
        Ok(v) => v,
        Err(e) => {
            xm_error!("dom0-peer: xenstore: {}", e);
            return Verdict::Fail;
        }
    };
    let refs = match parse_ref_ranges(&v) {
        Some(r) => r,
        None => {
            xm_error!(
                "dom0-peer: alloc = \"{=str}\" is not `1 PAGES RANGES`",
                printable_value(&v)
            );
            return Verdict::Fail;
        }
    };
    let n = refs.len() as u64;
    let before = vas.used();
    let holes = t.count(RegionKind::Hole);
    // Bad input first, each refused by Xen with a typed error and nothing
    // left behind: a reference dom0 never granted (beside a good one: the
    // batch is refused by reference, the good one undone), and a domain
    // that does not exist.
    let never = GrantRef(refs.iter().map(|r| r.0).max().unwrap_or(0) + 1000);
    let bad_ref = match grant::map_grants(hv, t, pt, vas, DomId(0), &[refs[0], never], false) {
        Err(xenmem::grant::GrantError::Refused(f)) => f
            .first()
            .filter(|x| x.index == 1 && x.gref == never)
            .map_or("refused-wrong-entry", |x| x.status.name()),
        Err(_) => "other-error",
        Ok(m) => {
            let _ = retry_release(m, |m| m.release(hv, t, pt, vas));
            "mapped"
        }
    };
    let no_dom = match grant::map_grants(hv, t, pt, vas, DomId(0x7ff0 - 1), &refs[..1], false) {
        Err(xenmem::grant::GrantError::Refused(f)) => f.first().map_or("?", |x| x.status.name()),
        Err(_) => "other-error",
        Ok(m) => {
            let _ = retry_release(m, |m| m.release(hv, t, pt, vas));
            "mapped"
        }
    };
    let clean = vas.used() == before && t.count(RegionKind::Hole) == holes;
    xm_info!(
        "report: dom0-peer-bad-input never_granted_ref={=u32} ref_status={=str} no_such_domain={} domain_status={=str} nothing_left={=str}",
        never.0,
        bad_ref,
        DomId(0x7ff0 - 1),
        no_dom,
        yes(clean)
    );
    let t0 = xenmem::timer::now();
    let gm = match grant::map_grants(hv, t, pt, vas, DomId(0), &refs, false) {
        Ok(m) => m,
        Err(e) => return grant_fail("mapping dom0's gntalloc pages", e),
    };
    let map_ticks = xenmem::timer::now().wrapping_sub(t0);
    let mut bad = 0u64;
    let mut page = [0u8; PAGE_SIZE as usize];
    for j in 0..n {
        if gm.read(j * PAGE_SIZE, &mut page).is_err() {
            bad += PAGE_SIZE / 8;
            continue;
        }
        for (i, w) in page.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            if u64::from_le_bytes(b) != round_seed(GNTALLOC_SEED, j) ^ i as u64 {
                bad += 1;
            }
        }
        for (i, w) in page.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(round_seed(GNTALLOC_ANSWER_SEED, j) ^ i as u64).to_le_bytes());
        }
        if let Err(e) = gm.write(j * PAGE_SIZE, &page) {
            xm_error!("dom0-peer: writing the answer: {}", defmt_display(&e));
            bad += PAGE_SIZE / 8;
        }
    }
    let first: GrantRef = refs[0];
    let t1 = xenmem::timer::now();
    let released = retry_release(gm, |m| m.release(hv, t, pt, vas));
    let unmap_ticks = xenmem::timer::now().wrapping_sub(t1);
    let hz = xenmem::timer::system().map_or(0, |c| c.frequency());
    let released_ok = released.is_ok();
    if let Err(e) = released {
        xm_error!("dom0-peer: releasing the mapping: {}", defmt_display(&e));
    }
    let freed = xs
        .write(
            &key("agent"),
            alloc::format!("1 released bad={bad}").as_bytes(),
        )
        .and_then(|()| dom0_peer_wait(xs, "peer", "1 freed"));
    let freed = match freed {
        Ok(v) => v,
        Err(e) => {
            xm_error!("dom0-peer: xenstore: {}", e);
            return Verdict::Fail;
        }
    };
    let peer_bad = peer_bad_words(&freed);
    xm_info!(
        "report: dom0-peer-gntalloc pages={=u64} first_ref={=u32} bad_words={=u64} peer_bad_words={=str} released={=str} window_pages_before={=u64} window_pages_after={=u64} map_ticks={=u64} unmap_ticks={=u64} hz={=u64}",
        n,
        first.0,
        bad,
        or_unknown(peer_bad).as_str(),
        if released_ok { "ok" } else { "failed" },
        before,
        vas.used(),
        map_ticks,
        unmap_ticks,
        hz
    );
    if bad == 0
        && peer_bad == Some(0)
        && released_ok
        && vas.used() == before
        && clean
        && bad_ref != "mapped"
        && no_dom != "mapped"
    {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// What the agent writes in the frames dom0 maps as foreign memory (word
/// `i` of page `j`: `seed ^ (j << 20) ^ i`); `xenmem-peer foreign` knows it.
#[cfg(target_os = "none")]
const FOREIGN_SEED: u64 = 0x666f_7265_6967_6e21;
/// `dom0-peer=foreign`: frames dom0 maps.
#[cfg(target_os = "none")]
const FOREIGN_PAGES: u64 = 64;

/// `dom0-peer=foreign`: fill [`FOREIGN_PAGES`] frames with a pattern,
/// publish `foreign` = `1 PAGES FIRST_GFN`, wait for dom0's `1 read bad=K`
/// (it has mapped, read and unmapped them), balloon exactly those frames
/// out ([`Engine::release_frames`], checked against Xen's count), say
/// `1 released`, and wait for dom0's `1 remap-refused|remap-mapped`.
/// Reports `dom0-peer-foreign`.
#[cfg(target_os = "none")]
fn dom0_peer_foreign<H: Hypervisor, N, W>(
    hv: &H,
    xs: &mut Handover<'_, H, N, W>,
    t: &mut RegionTable,
    s: &Survey,
) -> Verdict
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    let key = |k: &str| alloc::format!("{DOM0_PEER_DIR}/{k}");
    let n = FOREIGN_PAGES;
    let Some((held, pages, _)) = pattern_pages(t, n, FOREIGN_SEED) else {
        return Verdict::Fail;
    };
    // Mutant: dom0 is told (and the report says) the frames start one
    // past the pattern's first.
    let told = Gfn(pages.start().0 + u64::from(crate::mutant::is("peer-gfn-off-by-one")));
    xm_info!("report: dom0-peer-ready dir={=str}", DOM0_PEER_DIR);
    let read = xs
        .write(
            &key("foreign"),
            alloc::format!("1 {n} {}", told.0).as_bytes(),
        )
        .and_then(|()| dom0_peer_wait(xs, "peer", "1 read"));
    let read = match read {
        Ok(v) => v,
        Err(e) => {
            xm_error!("dom0-peer: xenstore: {}", e);
            return Verdict::Fail;
        }
    };
    let peer_bad = peer_bad_words(&read);
    // dom0 has unmapped them: back to the table as free RAM, then out.
    if let Err(e) = t.free_frames(held, ReservedUse::Allocated) {
        xm_error!("dom0-peer: freeing the pages: {}", defmt_display(&e));
        return Verdict::Fail;
    }
    let cur = match hv.current_reservation(DomId::SELF) {
        Ok(c) => c,
        Err(e) => {
            xm_error!("dom0-peer: current_reservation: {}", e);
            return Verdict::Fail;
        }
    };
    let mut e = engine_for(hv, s, cur);
    let released = e.release_frames(t, pages);
    if let Err(err) = &released {
        xm_error!("dom0-peer: releasing the frames: {}", defmt_display(err));
    }
    let Some(after) = verified("dom0-peer", &mut e, t, s) else {
        return Verdict::Fail;
    };
    let remap = xs
        .write(&key("agent"), b"1 released")
        .and_then(|()| dom0_peer_wait(xs, "peer", "1 remap-"));
    let remap = match remap {
        Ok(v) => v,
        Err(e) => {
            xm_error!("dom0-peer: xenstore: {}", e);
            return Verdict::Fail;
        }
    };
    let refused = remap.split_whitespace().nth(1) == Some("remap-refused");
    xm_info!(
        "report: dom0-peer-foreign pages={=u64} first_gfn={} peer_bad_words={=str} released={=str} current_before={} current_after={} remap={=str}",
        n,
        told,
        or_unknown(peer_bad).as_str(),
        if released.is_ok() { "ok" } else { "failed" },
        cur,
        after,
        if refused { "refused" } else { "mapped" }
    );
    if peer_bad == Some(0) && released.is_ok() && refused && after.0 + n == cur.0 {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// `dom0-peer=peer-dies`: grant 64 pages to dom0 (`grant` = `1 PAGES
/// FIRST_REF FIRST_GFN`, as a round of `dom0-peer=grant`); `xenmem-peer
/// grant-die` maps them, says `1 mapped bad=K` and kills itself with them
/// mapped. `end_access` is refused while the dead process's mappings
/// last; the agent retries (yielding the CPU, bounded) until every grant
/// has ended, then gives the pages back to the table, takes them again and
/// writes them (reused). Reports `dom0-peer-dies`.
#[cfg(target_os = "none")]
fn dom0_peer_dies<H: Hypervisor, N, W>(
    hv: &H,
    xs: &mut Handover<'_, H, N, W>,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
) -> Verdict
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    use xenmem::grant::{GrantError, GrantRef, GrantTable};
    let n = FOREIGN_PAGES;
    let mut gt = match GrantTable::setup(hv, t, pt, vas, 1) {
        Ok(g) => g,
        Err(e) => return grant_fail("table set-up", e),
    };
    let Some((held, pages, _)) = pattern_pages(t, n, GRANT_OFFER_SEED) else {
        return Verdict::Fail;
    };
    let mut refs: Vec<GrantRef> = Vec::new();
    for j in 0..n {
        let g = Gfn(pages.start().0 + j);
        match gt.grant_access(t, DomId(0), g, false) {
            Ok(r) => refs.push(r),
            Err(e) => return grant_fail("grant_access", e),
        }
    }
    let first = refs[0];
    xm_info!("report: dom0-peer-ready dir={=str}", DOM0_PEER_DIR);
    let mapped = xs
        .write(
            &alloc::format!("{DOM0_PEER_DIR}/grant"),
            alloc::format!("1 {n} {} {}", first.0, pages.start().0).as_bytes(),
        )
        .and_then(|()| dom0_peer_wait(xs, "peer", "1 mapped"));
    if let Err(e) = mapped {
        xm_error!("dom0-peer: xenstore: {}", e);
        return Verdict::Fail;
    }
    let while_mapped = gt.end_access(first);
    let refused = matches!(while_mapped, Err(GrantError::InUse(_)));
    // The peer kills itself on this, its mapping in place.
    if let Err(e) = xs.write(&alloc::format!("{DOM0_PEER_DIR}/agent"), b"1 checked") {
        xm_error!("dom0-peer: xenstore: {}", e);
        return Verdict::Fail;
    }
    let mut left: Vec<GrantRef> = refs
        .iter()
        .copied()
        .filter(|&r| !(r == first && while_mapped.is_ok()))
        .collect();
    let mut polls = 0u32;
    while !left.is_empty() && polls < GRANT_POLLS {
        left.retain(|&r| gt.end_access(r).is_err());
        if !left.is_empty() {
            let _ = hv.yield_cpu();
            polls += 1;
        }
    }
    let ended = left.is_empty();
    // Every page back to the table, then taken again and written.
    let mut reused = false;
    if ended && t.free_frames(held, ReservedUse::Allocated).is_ok() {
        if let Ok(again) = t.alloc_frames(
            PageCount(n + 1),
            xenmem::addr::Order::ZERO,
            ReservedUse::Allocated,
        ) {
            reused = again == held;
            for j in 1..=n {
                if let Some(p) = FrameRange::new(Gfn(again.start().0 + j), PageCount(1))
                    .ok()
                    .and_then(page_words)
                {
                    fill_page(p, round_seed(GRANT_ANSWER_SEED, j));
                    reused &= page_mismatches(p, round_seed(GRANT_ANSWER_SEED, j), 0) == 0;
                }
            }
            reused &= t.free_frames(again, ReservedUse::Allocated).is_ok();
        }
    }
    if ended {
        if let Err(e) = table_released(&mut gt, hv, t, pt, vas) {
            return grant_fail("table release", e);
        }
    } else {
        core::mem::forget(gt);
    }
    xm_info!(
        "report: dom0-peer-dies pages={=u64} first_ref={=u32} end_while_mapped={=str} ended_after_death={=str} polls={=u32} reused={=str}",
        n,
        first.0,
        if refused { "refused" } else { "ended" },
        yes(ended),
        polls,
        yes(reused)
    );
    if refused && ended && reused {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// `dom0-peer=ended-mid-use`: map dom0's gntalloc grants (`alloc` = `1
/// PAGES RANGES`) in one batch, check them, say `1 mapped`; dom0 ends
/// them under the mapping and says `1 ended`; the pages must still read
/// the same through the mapping and take writes, and the release must
/// work. Reports `dom0-peer-ended-mid-use`.
#[cfg(target_os = "none")]
fn dom0_peer_ended_mid_use<H: Hypervisor, N, W>(
    hv: &H,
    xs: &mut Handover<'_, H, N, W>,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
) -> Verdict
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    use xenmem::grant::{self, Bytes};
    xm_info!("report: dom0-peer-ready dir={=str}", DOM0_PEER_DIR);
    let v = match dom0_peer_wait(xs, "alloc", "1 ") {
        Ok(v) => v,
        Err(e) => {
            xm_error!("dom0-peer: xenstore: {}", e);
            return Verdict::Fail;
        }
    };
    let Some(refs) = parse_ref_ranges(&v) else {
        xm_error!(
            "dom0-peer: alloc = \"{=str}\" is not `1 PAGES RANGES`",
            printable_value(&v)
        );
        return Verdict::Fail;
    };
    let n = refs.len() as u64;
    let before = vas.used();
    let gm = match grant::map_grants(hv, t, pt, vas, DomId(0), &refs, false) {
        Ok(m) => m,
        Err(e) => return grant_fail("mapping dom0's gntalloc pages", e),
    };
    let count_bad = |gm: &xenmem::grant::GrantMap| -> u64 {
        let mut bad = 0u64;
        let mut page = [0u8; PAGE_SIZE as usize];
        for j in 0..n {
            if gm.read(j * PAGE_SIZE, &mut page).is_err() {
                bad += PAGE_SIZE / 8;
                continue;
            }
            for (i, w) in page.chunks_exact(8).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                if u64::from_le_bytes(b) != round_seed(GNTALLOC_SEED, j) ^ i as u64 {
                    bad += 1;
                }
            }
        }
        bad
    };
    let bad_before = count_bad(&gm);
    let ended = xs
        .write(&alloc::format!("{DOM0_PEER_DIR}/agent"), b"1 mapped")
        .and_then(|()| dom0_peer_wait(xs, "peer", "1 ended"));
    if let Err(e) = ended {
        xm_error!("dom0-peer: xenstore: {}", e);
        let _ = retry_release(gm, |m| m.release(hv, t, pt, vas));
        return Verdict::Fail;
    }
    // Ended by dom0 under the mapping: still the same pages.
    let bad_after = count_bad(&gm);
    let wrote = gm.write(0, &[0x5a; 8]).is_ok();
    let released = retry_release(gm, |m| m.release(hv, t, pt, vas));
    if let Err(e) = &released {
        xm_error!("dom0-peer: releasing the mapping: {}", defmt_display(e));
    }
    let _ = xs.write(&alloc::format!("{DOM0_PEER_DIR}/agent"), b"1 released");
    xm_info!(
        "report: dom0-peer-ended-mid-use pages={=u64} bad_words_before={=u64} bad_words_after_end={=u64} wrote_after_end={=str} released={=str} window_pages_after={=u64}",
        n,
        bad_before,
        bad_after,
        yes(wrote),
        if released.is_ok() { "ok" } else { "failed" },
        vas.used()
    );
    if bad_before == 0 && bad_after == 0 && wrote && released.is_ok() && vas.used() == before {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// `1 PAGES a-b,c,...` as references (`None` if malformed or the count
/// disagrees).
#[cfg(target_os = "none")]
fn parse_ref_ranges(v: &str) -> Option<Vec<xenmem::grant::GrantRef>> {
    let mut w = v.split_whitespace();
    let (_round, n, ranges) = (w.next()?, w.next()?.parse::<usize>().ok()?, w.next()?);
    if w.next().is_some() || n == 0 || n > 4096 {
        return None;
    }
    let mut refs = Vec::new();
    for r in ranges.split(',') {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
        if b < a || refs.len() + (b - a) as usize >= n {
            return None;
        }
        refs.extend((a..=b).map(xenmem::grant::GrantRef));
    }
    (refs.len() == n).then_some(refs)
}

/// `v` for a log line: itself if short and plain, else a placeholder.
#[cfg(target_os = "none")]
fn printable_value(v: &str) -> &str {
    if v.len() <= 64 && v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"') {
        v
    } else {
        "(long or unprintable)"
    }
}

/// The rounds of [`dom0_peer_grant`] (its grant table set up, its
/// xenstore connection made).
#[cfg(target_os = "none")]
fn dom0_peer_rounds<H: Hypervisor, N, W>(
    xs: &mut Handover<'_, H, N, W>,
    gt: &mut xenmem::grant::GrantTable,
    t: &mut RegionTable,
    s: &Survey,
) -> Verdict
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    use xenmem::grant::{GrantError, GrantRef};
    let key = |k: &str| alloc::format!("{DOM0_PEER_DIR}/{k}");
    let me = s.domid.map_or(DomId::SELF, |(d, _)| d);
    xm_info!(
        "report: dom0-peer-ready dom={} dir={=str}",
        me,
        DOM0_PEER_DIR
    );
    let mut ok = true;
    for (round, &n) in DOM0_PEER_ROUNDS.iter().enumerate() {
        let round = round as u64 + 1;
        let Some((held, pages, words)) = pattern_pages(t, n, GRANT_OFFER_SEED) else {
            return Verdict::Fail;
        };
        let mut refs: Vec<GrantRef> = Vec::new();
        for j in 0..n {
            match gt.grant_access(t, DomId(0), Gfn(pages.start().0 + j), false) {
                Ok(r) => refs.push(r),
                Err(e) => return grant_fail("grant_access", e),
            }
        }
        let first = refs[0];
        if refs
            .iter()
            .enumerate()
            .any(|(j, r)| r.0 != first.0 + j as u32)
        {
            xm_error!("dom0-peer: the references are not consecutive");
            return Verdict::Fail;
        }
        let step = |xs: &mut Handover<'_, H, N, W>, k: &str, v: &str, wait: &str| {
            xs.write(&key(k), v.as_bytes())?;
            if wait.is_empty() {
                return Ok(alloc::string::String::new());
            }
            dom0_peer_wait(xs, "peer", wait)
        };
        let r = (|| {
            let mapped = step(
                xs,
                "grant",
                &alloc::format!("{round} {n} {} {}", first.0, pages.start().0),
                &alloc::format!("{round} mapped"),
            )?;
            let bad: usize = words
                .iter()
                .enumerate()
                .map(|(j, &p)| page_mismatches(p, round_seed(GRANT_ANSWER_SEED, j as u64), 0))
                .sum();
            let while_mapped = gt.end_access(first);
            let unmapped = step(
                xs,
                "agent",
                &alloc::format!("{round} checked"),
                &alloc::format!("{round} unmapped"),
            )?;
            let mut failed_ends = 0usize;
            for &r in &refs {
                if matches!(while_mapped, Ok(())) && r == first {
                    continue;
                }
                if gt.end_access(r).is_err() {
                    failed_ends += 1;
                }
            }
            let remap = step(
                xs,
                "agent",
                &alloc::format!("{round} ended"),
                &alloc::format!("{round} remap-"),
            )?;
            Ok::<_, xenmem::xenstore::XsError>((
                mapped,
                bad,
                while_mapped,
                unmapped,
                failed_ends,
                remap,
            ))
        })();
        let (mapped, bad, while_mapped, _unmapped, failed_ends, remap) = match r {
            Ok(v) => v,
            Err(e) => {
                xm_error!("dom0-peer: xenstore: {}", e);
                return Verdict::Fail;
            }
        };
        // The peer's own verdict on our pattern: `ROUND mapped bad=K`.
        let peer_bad = peer_bad_words(&mapped);
        let refused = matches!(while_mapped, Err(GrantError::InUse(_)));
        let remap_refused = remap.split_whitespace().nth(1) == Some("remap-refused");
        xm_info!(
            "report: dom0-peer-grant round={=u64} pages={=u64} first_ref={=u32} gfn={} peer_bad_words={=str} agent_bad_words={=usize} end_while_mapped={=str} ends_failed_after_unmap={=usize} remap={=str}",
            round,
            n,
            // Mutant: a reference other than the one dom0 was given.
            first.0 + u32::from(crate::mutant::is("peer-ref-misreported")),
            pages.start(),
            or_unknown(peer_bad).as_str(),
            bad,
            if refused { "refused" } else if while_mapped.is_ok() { "ended" } else { "error" },
            failed_ends,
            if remap_refused { "refused" } else { "mapped" }
        );
        ok &= peer_bad == Some(0) && bad == 0 && refused && failed_ends == 0 && remap_refused;
        if failed_ends == 0 && gt.active() == 0 {
            if let Err(e) = t.free_frames(held, ReservedUse::Allocated) {
                xm_error!("dom0-peer: freeing the pages: {}", defmt_display(&e));
                return Verdict::Fail;
            }
        }
    }
    if ok {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// Dom0: map the peer's grant `r` (retrying until the peer has issued it),
/// check its pattern, acquire the peer's grant table and read entry `r`
/// (permitted to dom0, in use, the frame granted), foreign-map that frame
/// and check the pattern there too, write an answer through the grant and
/// see it through the foreign mapping, unmap that, copy the page out through
/// `GNTTABOP_copy`, signal (word 0, last: the peer waits for it), unmap.
#[cfg(target_os = "none")]
fn grant_map_peer<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
    peer: DomId,
    r: xenmem::grant::GrantRef,
) -> Verdict {
    use xenmem::grant::{self, Bytes, CopySeg, GntStatus, GrantError};
    let mut tries = 0u32;
    let mut first: Option<GntStatus> = None;
    let gm = loop {
        tries += 1;
        match grant::map_grants(hv, t, pt, vas, peer, &[r], false) {
            Ok(m) => break m,
            Err(GrantError::Refused(f)) if tries < GRANT_POLLS => {
                let st = f.first().map_or(GntStatus::Unknown(0), |x| x.status);
                first.get_or_insert(st);
                if !matches!(
                    st,
                    GntStatus::GeneralError | GntStatus::BadGntref | GntStatus::BadDomain
                ) {
                    return grant_fail("map peer grant", GrantError::Refused(f));
                }
                let _ = hv.yield_cpu();
            }
            Err(e) => return grant_fail("map peer grant", e),
        }
    };
    report_mapping("grant", peer, gm.gfns(), gm.va(), u64::from(r.0), "made");
    // A batch with bad references: the good one is undone, the bad ones
    // are named with their statuses; nothing is left behind.
    let holes = t.count(xenmem::region::RegionKind::Hole);
    // The mutant's "past the table" reference is inside it.
    let past = if crate::mutant::is("bad-batch-in-table") {
        r.0 + 2
    } else {
        600
    };
    let bad_refs = [
        r,
        xenmem::grant::GrantRef(past),
        xenmem::grant::GrantRef(r.0 + 1),
    ];
    match grant::map_grants(hv, t, pt, vas, peer, &bad_refs, true) {
        Err(GrantError::Refused(f)) => {
            let mut it = f.iter();
            let (a, b) = (it.next(), it.next());
            xm_info!(
                "report: grant-bad-batch refused={=usize} of={=usize} first_ref={=u32} first={=str} second_ref={=u32} second={=str} holes_kept={=str}",
                f.total(),
                f.of(),
                a.map_or(0, |x| x.gref.0),
                a.map_or("none", |x| x.status.name()),
                b.map_or(0, |x| x.gref.0),
                b.map_or("none", |x| x.status.name()),
                yes(t.count(xenmem::region::RegionKind::Hole) == holes)
            );
        }
        Ok(m) => {
            xm_error!("grant: a batch with bad references was mapped");
            let _ = retry_release(m, |m| m.release(hv, t, pt, vas));
            return Verdict::Fail;
        }
        Err(e) => return grant_fail("bad batch", e),
    }
    let words = PAGE_SIZE / 8;
    let bad_offer = (0..words)
        .filter(|&i| gm.read_obj::<u64>(i * 8) != Ok(GRANT_OFFER_SEED ^ i))
        .count();
    // Two more paths to the same page while the peer waits for the answer:
    // its grant table, acquired, names the frame REF grants; that frame,
    // foreign-mapped, must hold the same pattern and show what is written
    // through the grant.
    let entry = peer_gnttab_entry(hv, t, pt, vas, peer, r);
    let fm = entry.and_then(|e| {
        // The mutant maps the peer's frame after the one the entry names.
        let off = u64::from(crate::mutant::is("foreign-wrong-frame"));
        let frame = Gfn(u64::from(e.frame) + off);
        match xenmem::mapping::map_foreign(hv, t, pt, vas, peer, &[frame], false) {
            Ok(m) => {
                report_mapping("foreign", peer, m.gfns(), m.va(), frame.0, "made");
                Some(m)
            }
            Err(err) => {
                xm_error!(
                    "grant: foreign map of frame {} of domain {}: {}",
                    frame,
                    peer,
                    defmt_display(&err)
                );
                None
            }
        }
    });
    let foreign_bad = fm.as_ref().map(|f| {
        (0..words)
            .filter(|&i| f.read_obj::<u64>(i * 8) != Ok(GRANT_OFFER_SEED ^ i))
            .count()
    });
    let mut wrote = true;
    // The mutant signals its answer (word 0, below) without writing it.
    if !crate::mutant::is("answer-not-written") {
        for i in 1..words {
            wrote &= gm.write_obj::<u64>(i * 8, GRANT_ANSWER_SEED ^ i).is_ok();
        }
    }
    let foreign_sees = fm
        .as_ref()
        .map(|f| (1..words).all(|i| f.read_obj::<u64>(i * 8) == Ok(GRANT_ANSWER_SEED ^ i)));
    let foreign_released = match fm {
        Some(f) => {
            let (gfns, va) = (f.gfns(), f.va());
            match retry_release(f, |m| m.release(hv, t, pt, vas)) {
                Ok(()) => {
                    let frame = entry.map_or(0, |e| u64::from(e.frame));
                    report_mapping("foreign", peer, gfns, va, frame, "released");
                    true
                }
                Err(e) => {
                    xm_error!("grant: foreign release: {}", defmt_display(&e));
                    false
                }
            }
        }
        None => false,
    };
    let ok_str = |v: Option<bool>| match v {
        Some(true) => "ok",
        Some(false) => "bad",
        None => "unchecked",
    };
    xm_info!(
        "report: peer-foreign domid={} frames=1 gfn={=u64:#x} pattern={=str} writeback={=str} released={=str}",
        peer,
        entry.map_or(0, |e| u64::from(e.frame)),
        ok_str(foreign_bad.map(|b| b == 0)),
        ok_str(foreign_sees),
        yes(foreign_released)
    );
    let foreign_ok = foreign_bad == Some(0) && foreign_sees == Some(true) && foreign_released;
    // Copy the page out with GNTTABOP_copy while still mapped and granted.
    let copy = t
        .alloc_frames(
            PageCount(1),
            xenmem::addr::Order::ZERO,
            ReservedUse::Allocated,
        )
        .ok()
        .and_then(|f| page_words(f).map(|p| (f, p)));
    let copied = match copy {
        Some((f, p)) => {
            let seg = CopySeg {
                gref: r,
                grant_offset: 0,
                local: f.start(),
                local_offset: 0,
                len: PAGE_SIZE as u16,
            };
            // Refused segments first: past the page, a hole as local frame.
            // (The mutant's first one ends inside the page.)
            let len = if crate::mutant::is("bad-copy-in-page") {
                96
            } else {
                200
            };
            let bad = [
                CopySeg {
                    grant_offset: 4000,
                    len,
                    ..seg
                },
                CopySeg {
                    local: gm.gfns().start(),
                    ..seg
                },
            ];
            match grant::copy_from_grant(hv, peer, &bad) {
                Err(GrantError::Refused(f)) => {
                    let mut it = f.iter();
                    let (a, b) = (it.next(), it.next());
                    xm_info!(
                        "report: grant-bad-copy refused={=usize} first={=str} second={=str}",
                        f.total(),
                        a.map_or("none", |x| x.status.name()),
                        b.map_or("none", |x| x.status.name())
                    );
                }
                r => xm_error!("grant: bad copies: {=bool}", r.is_ok()),
            }
            let ok = grant::copy_from_grant(hv, peer, &[seg]).is_ok()
                && page_mismatches(p, GRANT_ANSWER_SEED, 1) == 0
                // SAFETY: as in `fill_page`.
                && unsafe { p.read_volatile() } == GRANT_OFFER_SEED;
            let _ = t.free_frames(f, ReservedUse::Allocated);
            ok
        }
        None => false,
    };
    // The signal, last.
    wrote &= gm.write_obj::<u64>(0, GRANT_ANSWER_SEED).is_ok();
    let bus = gm.bus_addrs().first().copied().unwrap_or(0);
    let (gfns, va) = (gm.gfns(), gm.va());
    let gfn = gfns.start();
    if let Err(e) = retry_release(gm, |m| m.release(hv, t, pt, vas)) {
        return grant_fail("release", e);
    }
    report_mapping("grant", peer, gfns, va, u64::from(r.0), "released");
    xm_info!(
        "report: grant-map peer={} ref={=u32} tries={=u32} waiting_status={=str} gfn={} bus={=u64:#x} pattern={=str} wrote={=str} copy={=str} released=yes",
        peer,
        r.0,
        tries,
        first.map_or("none", |s| s.name()),
        gfn,
        bus,
        if bad_offer == 0 { "ok" } else { "bad" },
        yes(wrote),
        if copied { "ok" } else { "bad" }
    );
    // The entry: access permitted to dom0, for the frame dom0 just read
    // through two paths, and marked in use by Xen (dom0 had it mapped
    // read-write when it was read).
    let entry_ok = entry.is_some_and(|e| {
        use xenmem::xen::abi::gnttab::{
            GTF_PERMIT_ACCESS, GTF_READING, GTF_TYPE_MASK, GTF_WRITING,
        };
        e.flags & GTF_TYPE_MASK == GTF_PERMIT_ACCESS
            && e.flags & (GTF_READING | GTF_WRITING) == GTF_READING | GTF_WRITING
            && e.domid == 0
    });
    if bad_offer == 0 && wrote && copied && entry_ok && foreign_ok {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// Dom0, while the peer waits: acquire (read-only) the frame of the peer's
/// grant table that holds entry `r`, after querying the table's size, read
/// the entry, release. Reports `peer-gnttab` and the mapping; the entry if
/// it was read and the mapping released.
#[cfg(target_os = "none")]
fn peer_gnttab_entry<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    pt: &mut impl xenmem::mapping::MapTarget,
    vas: &mut xenmem::mapping::VaSpace,
    peer: DomId,
    r: xenmem::grant::GrantRef,
) -> Option<xenmem::xen::abi::gnttab::GrantEntryV1> {
    use xenmem::acquire::{self, Resource};
    use xenmem::xen::abi::gnttab::{GTF_PERMIT_ACCESS, GTF_READING, GTF_TYPE_MASK, GTF_WRITING};
    let max = match acquire::grant_table_size(hv, peer) {
        Ok(m) => m,
        Err(e) => {
            xm_error!("peer-gnttab: size of domain {}'s table: {}", peer, e);
            return None;
        }
    };
    let index = acquire::grant_v1_frame(r.0);
    if index >= max {
        xm_error!(
            "peer-gnttab: ref {=u32} is in frame {=u32}, beyond the table's {=u32}",
            r.0,
            index,
            max
        );
        return None;
    }
    let m = match acquire::acquire(
        hv,
        t,
        pt,
        vas,
        peer,
        Resource::GrantTableShared,
        u64::from(index),
        1,
        false,
    ) {
        Ok(m) => m,
        Err(e) => {
            xm_error!("peer-gnttab: acquire frame {=u32}: {}", index, e);
            return None;
        }
    };
    let (gfns, va) = (m.gfns(), m.va());
    report_mapping("gnttab", peer, gfns, va, u64::from(index), "made");
    // The mutant reads the entry after REF's (one the peer never issued).
    let entry = m.grant_entry_v1(r.0 + u32::from(crate::mutant::is("peer-gnttab-wrong-entry")));
    // The mutant keeps the peer's table frame mapped (and says nothing).
    if crate::mutant::is("gnttab-kept") {
        core::mem::forget(m);
    } else {
        if let Err(e) = retry_release(m, |m| m.release(hv, t, pt, vas)) {
            xm_error!("peer-gnttab: release: {}", e);
            return None;
        }
        report_mapping("gnttab", peer, gfns, va, u64::from(index), "released");
    }
    let Some(e) = entry else {
        xm_error!("peer-gnttab: entry {=u32} not in the frame mapped", r.0);
        return None;
    };
    xm_info!(
        "report: peer-gnttab domid={} frames_max={=u32} frame_index={=u32} entry_ref={=u32} flags={=u16:#x} permit={=str} reading={=str} writing={=str} entry_domid={=u16} frame={=u32:#x} released=yes",
        peer,
        max,
        index,
        r.0,
        e.flags,
        yes(e.flags & GTF_TYPE_MASK == GTF_PERMIT_ACCESS),
        yes(e.flags & GTF_READING != 0),
        yes(e.flags & GTF_WRITING != 0),
        e.domid,
        e.frame
    );
    Some(e)
}

/// Touch an address the agent's page tables do not map, to test the
/// exception path. Only on the bare-metal targets.
fn fault(kind: FaultKind, t: &RegionTable) {
    #[cfg(target_os = "none")]
    {
        let addr = match kind {
            FaultKind::Unmapped => crate::arch::imp::UNMAPPED_PROBE.0,
            FaultKind::Unpopulated => {
                let end = crate::arch::imp::paging::IDENTITY.end.0;
                let found = t.iter().find(|r| {
                    matches!(
                        r.kind,
                        RegionKind::Hole
                            | RegionKind::Reserved(xenmem::region::ReservedUse::Unusable)
                    ) && r.range.start().0 != 0
                        && r.range.start_addr().0 < end
                });
                let Some(r) = found else {
                    xm_error!("fault: no unpopulated range inside the identity map's span");
                    return;
                };
                xm_info!(
                    "report: fault kind=unpopulated addr={} region={=str}",
                    r.range.start_addr(),
                    r.kind.name()
                );
                r.range.start_addr().0
            }
        };
        xm_info!("fault: reading unmapped address {=u64:#x}", addr);
        // SAFETY: deliberately not sound: the read faults (nothing maps the
        // address: above the identity map, or trimmed from it), and the
        // exception handler ends the run without returning here.
        let v = unsafe { core::ptr::read_volatile(addr as usize as *const u64) };
        xm_error!("fault: read of an unmapped address returned {=u64:#x}", v);
    }
    #[cfg(not(target_os = "none"))]
    let _ = (kind, t);
}

/// `helper=`: the cross-domain flow of a privileged x86 PVH dom0 (see
/// [`xenmem::domctl::CrossDomain`]), with the seeded grants mapped through
/// the grant path and compared with what the foreign path wrote.
fn helper_run<H: Hypervisor>(hv: &H, t: &mut RegionTable, mode: cmdline::HelperMode) -> Verdict {
    #[cfg(target_os = "none")]
    {
        use xenmem::domctl::{cross_domain_flow, pattern_word, FlowConfig};
        use xenmem::grant::Bytes;
        let Some(mut pt) = page_tables_for("helper") else {
            return Verdict::Fail;
        };
        let mut vas = xenmem::mapping::VaSpace::new(crate::xenview::window(&*pt));
        let cfg = match mode {
            cmdline::HelperMode::Small => FlowConfig::default(),
            cmdline::HelperMode::Superpage => FlowConfig {
                pages: 512,
                order: xenmem::addr::Order::new_const(9),
                ..FlowConfig::default()
            },
        };
        let r = cross_domain_flow(hv, t, &mut *pt, &mut vas, cfg, |cd, t, pt, vas| {
            let mut refs: Vec<_> = cd.seeded().iter().map(|s| s.gref).collect();
            // The mutant maps the seeded grants in the wrong order.
            if crate::mutant::is("helper-grants-reversed") {
                refs.reverse();
            }
            let gm = match xenmem::grant::map_grants(hv, t, pt, vas, cd.domid(), &refs, false) {
                Ok(m) => m,
                Err(e) => {
                    xm_error!("helper: map_grants: {}", defmt_display(&e));
                    return false;
                }
            };
            let mut ok = true;
            let mut wb = true;
            let mut in_use = true;
            for (i, s) in cd.seeded().iter().enumerate() {
                for w in 0..(PAGE_SIZE / 8) {
                    let off = i as u64 * PAGE_SIZE + w * 8;
                    ok &= gm.read_obj::<u64>(off).ok() == Some(pattern_word(s.gfn, w));
                }
                // Written through the grant, read through the foreign map.
                let v = 0x6772_616e_7400_0000 | i as u64;
                wb &= gm.write_obj::<u64>(i as u64 * PAGE_SIZE + 8, v).is_ok();
                wb &= cd.foreign_word(i as u64, 1) == Some(v);
                let f = cd.grant_flags(s.gref).unwrap_or(0);
                let mask =
                    xenmem::xen::abi::gnttab::GTF_READING | xenmem::xen::abi::gnttab::GTF_WRITING;
                in_use &= f & mask == mask;
            }
            let m2p_ok = helper_m2p(hv, t, pt, vas, cd.seeded(), gm.bus_addrs());
            xm_info!(
                "report: helper-grants domid={} mapped={=usize} pattern={=str} writeback={=str} in_use={=str}",
                cd.domid(),
                refs.len(),
                if ok { "ok" } else { "bad" },
                if wb { "ok" } else { "bad" },
                yes(in_use)
            );
            if let Err(e) = retry_release(gm, |m| m.release(hv, t, pt, vas)) {
                xm_error!("helper: grant release: {}", defmt_display(&e));
                return false;
            }
            ok && wb && in_use && m2p_ok
        });
        match r {
            Ok(_) => Verdict::Pass,
            Err(e) => {
                xm_error!("helper: {}", e);
                Verdict::Fail
            }
        }
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, t, mode);
        Verdict::Fail
    }
}

/// `probe=N`: an unprivileged domain's foreign map and acquire_resource of
/// domain N must both be refused (EPERM) and leave nothing behind.
fn probe_run<H: Hypervisor>(
    hv: &H,
    t: &mut RegionTable,
    target: DomId,
    privileged: bool,
) -> Verdict {
    if privileged {
        // A privileged agent would be allowed: nothing to probe.
        xm_info!("report: unprivileged skipped=privileged");
        return Verdict::Pass;
    }
    #[cfg(target_os = "none")]
    {
        let Some(mut pt) = page_tables_for("probe") else {
            return Verdict::Fail;
        };
        let mut vas = xenmem::mapping::VaSpace::new(crate::xenview::window(&*pt));
        let p = xenmem::domctl::unprivileged_probe(hv, t, &mut *pt, &mut vas, target, Gfn(0x100));
        if p.refused_cleanly() {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (hv, t, target);
        Verdict::Fail
    }
}

/// Run the agent. `heap` is the heap's span, when the agent's heap lies in
/// its image (the runtime's), so that the table records it.
pub fn run(hv: &impl Hypervisor, boot: &BootInfo<'_>, heap: Option<PhysSpan>) -> Outcome {
    // Every handle dropped unreleased (the library logs each) fails the run.
    xenmem::leak::set_leak_hook(count_leak);
    let leaks_before = LEAKS.load(Ordering::Relaxed);
    let mut exit = ExitPath::Host;
    let mut reboot = false;
    // The peer (`peer=`) not waited for yet.
    let mut peer = None;
    let verdict = (|| {
        let line = match cmdline::as_text(boot.cmdline) {
            Ok(l) => l,
            Err(e) => {
                xm_error!("cmdline: {}", e);
                return Verdict::Fail;
            }
        };
        xenmem::timer::mark(xenmem::timer::Stamp::FirstLine);
        xm_info!("report: agent cmdline=\"{=str}\"", line);
        // Honoured even if another option is malformed (see exit_path).
        exit = Options::exit_path(line).unwrap_or(ExitPath::Host);
        let opts = match Options::parse(line, |e| xm_error!("cmdline: {}", e)) {
            Ok(o) => o,
            Err(_) => return Verdict::Fail,
        };
        peer = opts.peer;
        // The mutant domU (the agent without a peer) leaves saying reboot.
        reboot |= opts.peer.is_none() && crate::mutant::is("domu-says-reboot");
        let s = match survey(hv, boot, &opts) {
            Ok(s) => s,
            Err(e) => {
                log_survey_error(&e);
                return Verdict::Fail;
            }
        };
        report(&s);
        if let Some(secs) = opts.xen_view {
            crate::xenview::enable(secs, crate::xenview::input_for(s.privileged, boot));
        }
        let table = match build_table(&s, boot, heap) {
            Ok(t) => t,
            Err(e) => {
                xm_error!("table: {}", defmt_display(&e));
                return Verdict::Fail;
            }
        };
        let mut table = table;
        if special_run(hv, &mut table, &s) == Verdict::Fail {
            return Verdict::Fail;
        }
        if console_run(&mut table) == Verdict::Fail {
            return Verdict::Fail;
        }
        let acc = account(&table, &s, s.current, PageCount(0));
        report_table(&table, &acc);
        if !crate::xenview::pause(hv, "start", acc.claimed(), s.maximum) {
            return Verdict::Fail;
        }
        let pod = match pod_surplus(&acc, &s) {
            Ok(p) => p,
            Err(()) => return Verdict::Fail,
        };
        if trim_run(&mut table) == Verdict::Fail {
            return Verdict::Fail;
        }
        if let Some(surplus) = pod {
            if pod_run(hv, &mut table, &s, surplus) == Verdict::Fail {
                return Verdict::Fail;
            }
        }
        if (opts.balloon.is_some() || opts.balloon_then.is_some() || opts.contig.is_some())
            && reservation_run(hv, &mut table, &s, &opts) == Verdict::Fail
        {
            return Verdict::Fail;
        }
        if let Some(set) = opts.bench {
            if crate::bench::run(hv, &mut table, &s, set) == Verdict::Fail {
                return Verdict::Fail;
            }
        }
        if (opts.grant_self.is_some() || opts.grant_xchg.is_some())
            && grant_run(hv, &mut table, &s, &opts) == Verdict::Fail
        {
            return Verdict::Fail;
        }
        if let Some(mode) = opts.helper {
            if helper_run(hv, &mut table, mode) == Verdict::Fail {
                return Verdict::Fail;
            }
        }
        if let Some(p) = opts.dom0_peer {
            #[cfg(target_os = "none")]
            if dom0_peer_run(hv, &mut table, &s, p) == Verdict::Fail {
                return Verdict::Fail;
            }
            #[cfg(not(target_os = "none"))]
            let _ = p;
        }
        if opts.negative.is_some()
            && crate::negative::run(hv, &mut table, &s, &opts) == Verdict::Fail
        {
            return Verdict::Fail;
        }
        if let Some(target) = opts.probe {
            if probe_run(hv, &mut table, target, s.privileged) == Verdict::Fail {
                return Verdict::Fail;
            }
        }
        if let Some(kind) = opts.fault {
            fault(kind, &table);
            return Verdict::Fail;
        }
        if opts.mode == Some(cmdline::RunMode::Service) {
            return match service_run(hv, &mut table, &s) {
                crate::service::Ended::Poweroff => {
                    // The toolstack asked: leave through Xen whatever
                    // exit= said.
                    exit = ExitPath::XenShutdown;
                    Verdict::Pass
                }
                crate::service::Ended::Reboot => {
                    exit = ExitPath::XenShutdown;
                    reboot = true;
                    Verdict::Pass
                }
                crate::service::Ended::Failed => Verdict::Fail,
            };
        }
        let end = account(&table, &s, s.current, PageCount(0));
        if !crate::xenview::pause(hv, "end", end.claimed(), s.maximum) {
            return Verdict::Fail;
        }
        match peer.take() {
            Some(p) => wait_for_peer(hv, p, PEER_POLLS),
            None => Verdict::Pass,
        }
    })();
    let leaks = LEAKS.load(Ordering::Relaxed).wrapping_sub(leaks_before);
    let verdict = if leaks == 0 {
        verdict
    } else {
        xm_error!(
            "leak: {=usize} handles were dropped without release: leaked",
            leaks
        );
        Verdict::Fail
    };
    // The mutant says it passed whatever happened.
    let verdict = if crate::mutant::is("verdict-forged") {
        Verdict::Pass
    } else {
        verdict
    };
    match verdict {
        Verdict::Pass => xm_info!("verdict: PASS"),
        Verdict::Fail => xm_error!("verdict: FAIL"),
    }
    // Failed before waiting for the peer: give it a moment to finish, so
    // that exiting the machine does not cut off its closing lines.
    if let Some(p) = peer {
        xm_info!("peer: waiting for domain {} to finish before exiting", p);
        let _ = wait_for_peer(hv, p, PEER_POLLS_AFTER_FAILURE);
    }
    Outcome {
        verdict,
        exit,
        reboot,
    }
}

/// Handles the library reported dropped unreleased (see [`count_leak`]).
static LEAKS: AtomicUsize = AtomicUsize::new(0);

/// The agent's leak hook: the library has logged the leak already (defmt);
/// count it, so that the run fails.
fn count_leak(_: &xenmem::leak::Leak) {
    LEAKS.fetch_add(1, Ordering::Relaxed);
}

/// No xenstore here (the host build): every operation says so.
#[cfg(not(target_os = "none"))]
struct NoControl;

#[cfg(not(target_os = "none"))]
impl crate::service::Control for NoControl {
    fn read(
        &mut self,
        _: &str,
    ) -> Result<Option<alloc::string::String>, crate::service::ControlError> {
        Err(no_store())
    }
    fn write(&mut self, _: &str, _: &str) -> Result<(), crate::service::ControlError> {
        Err(no_store())
    }
    fn watch(&mut self) -> Result<(), crate::service::ControlError> {
        Err(no_store())
    }
    fn next(
        &mut self,
        _: bool,
    ) -> Result<Option<crate::service::Watched>, crate::service::ControlError> {
        Err(no_store())
    }
    fn park(&mut self) -> bool {
        false
    }
}

#[cfg(not(target_os = "none"))]
fn no_store() -> crate::service::ControlError {
    crate::service::ControlError::Broken("no xenstore connection in this build".into())
}

/// The host build has no xenstore ring to map.
#[cfg(not(target_os = "none"))]
fn control_for<H: Hypervisor>(
    _: &H,
    _: &mut RegionTable,
) -> Result<(NoControl, ()), crate::service::ControlError> {
    Err(no_store())
}

/// The service's xenstore connection: the ring named by the HVM parameters
/// (a special page of the table), mapped Normal write-back at a pinned
/// window page; shared_info placed in a hole and mapped the same way, for
/// the event channel bits; requests notify xenstored with `EVTCHNOP_send`,
/// and every wait blocks in `SCHEDOP_poll` on the xenstore port (no CPU
/// while nothing comes; a xenstored that never answers leaves the agent
/// blocked, not spinning). Reports `service-xenstore`.
#[cfg(target_os = "none")]
// The client's notify and wait closures have no names to alias.
#[allow(clippy::type_complexity)]
fn control_for<'a, H: Hypervisor>(
    hv: &'a H,
    t: &mut RegionTable,
) -> Result<
    (
        crate::service::XsControl<
            impl FnMut(u32) -> Result<(), XenError> + 'a,
            impl FnMut(u32) -> Result<(), XenError> + 'a,
            impl FnMut() -> bool + 'a,
        >,
        &'static xenmem::evtchn::EventChannels,
    ),
    crate::service::ControlError,
> {
    use crate::service::ControlError;
    use xenmem::evtchn::{EventChannels, NoClock, WaitLimit};
    use xenmem::paging::Attrs;
    let broken = |what: &str, e: &dyn core::fmt::Display| {
        ControlError::Broken(alloc::format!("{what}: {e}"))
    };
    let params = xenmem::xen::RingParams::xenstore(hv)
        .map_err(|e| broken("HVM_PARAM_STORE_PFN/_EVTCHN", &e))?
        .ok_or_else(|| ControlError::Broken("this domain has no xenstore ring".into()))?;
    let ring_pa = params
        .gfn
        .addr()
        .ok_or_else(|| ControlError::Broken("ring frame".into()))?;
    if t.info(ring_pa).map(|r| r.kind) != Some(RegionKind::Reserved(ReservedUse::Special)) {
        return Err(ControlError::Broken(alloc::format!(
            "the xenstore ring at {ring_pa} is not a special page of the table"
        )));
    }
    let mut pt = crate::arch::imp::paging::page_tables().map_err(|e| broken("page tables", &e))?;
    let ring_va = pt
        .map_pinned(ring_pa, Attrs::READ_WRITE, t)
        .map_err(|e| broken("mapping the xenstore ring", &e))?;
    // shared_info: in a hole frame of the table, then mapped.
    let si_gfn = xenmem::evtchn::place_shared_info(hv, t).map_err(|e| broken("shared_info", &e))?;
    let si_pa = si_gfn
        .addr()
        .ok_or_else(|| ControlError::Broken("shared_info frame".into()))?;
    let si_va = pt
        .map_pinned(si_pa, Attrs::READ_WRITE, t)
        .map_err(|e| broken("mapping shared_info", &e))?;
    drop(pt);
    let si = core::ptr::NonNull::new(si_va.0 as usize as *mut xenmem::xen::abi::SharedInfoPage)
        .ok_or_else(|| ControlError::Broken("shared_info address".into()))?;
    // SAFETY: this domain's shared_info, placed at `hole` and mapped Normal
    // read-write at `si_va` for as long as the page tables exist (pinned);
    // leaked, so it outlives every user.
    let ev: &'static EventChannels =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(unsafe { EventChannels::native(si) }));
    ev.mask_all();
    let port = params.port;
    xm_info!(
        "report: service-xenstore ring={} ring_va={} port={=u32} shared_info={} shared_info_va={}",
        ring_pa,
        ring_va,
        port,
        si_pa,
        si_va
    );
    let notify = move |p: u32| hv.evtchn_send(p);
    let wait = move |p: u32| {
        ev.wait(hv, &[p], WaitLimit::FOREVER, &mut NoClock)
            .map(drop)
            .map_err(|e| match e {
                xenmem::evtchn::EvtchnError::Xen(x) => x,
                _ => XenError::Contract("event channel wait"),
            })
    };
    let page = core::ptr::NonNull::new(
        ring_va.0 as usize as *mut xenmem::xenstore::wire::XenstoreDomainInterface,
    )
    .ok_or_else(|| ControlError::Broken("ring address".into()))?;
    // SAFETY: the xenstore ring page, mapped read-write at a pinned window
    // page for as long as the page tables exist; the service's client is
    // the only user of the ring in this domain.
    let xs = unsafe { xenmem::xenstore::XsClient::new(page, port, notify, wait, 64) };
    // Parked: blocked until xenstored notifies the port again.
    let park = move || {
        ev.wait(hv, &[port], WaitLimit::FOREVER, &mut NoClock)
            .is_ok()
    };
    Ok((crate::service::XsControl { xs, park }, ev))
}

/// `mode=service`: serve the toolstack's targets and requests until it ends
/// the domain (see [`crate::service`]).
fn service_run<H: Hypervisor>(hv: &H, t: &mut RegionTable, s: &Survey) -> crate::service::Ended {
    let mut ctl = match control_for(hv, t) {
        Ok((c, _)) => c,
        Err(e) => {
            xm_error!("service: {}", defmt_display(&e));
            return crate::service::Ended::Failed;
        }
    };
    let mut e = engine_for(hv, s, s.current);
    let mut verify = |e: &mut Engine<'_, H>, t: &RegionTable| verified("service", e, t, s);
    crate::service::serve(hv, &mut e, t, s.memmap.ram_pages(), &mut ctl, &mut verify)
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

fn log_survey_error(e: &SurveyError) {
    match e {
        SurveyError::Xen { op, err } => xm_error!("survey: {=str} failed: {}", op, err),
        SurveyError::MemMap(m) => xm_error!("survey: memory map: {}", m),
        SurveyError::DomidMismatch { xen, cmdline } => xm_error!(
            "survey: domid={} on the command line, but Xen says this is domain {}",
            cmdline,
            xen
        ),
    }
}

/// A PVH boot for host tests: Xen's start info without a memory map
/// (the survey asks `XENMEM_memory_map`), the image at 1-2 MiB.
#[cfg(test)]
pub(crate) mod test_boot {
    use xenmem::addr::GuestPhysAddr;
    use xenmem::boot::{BootInfo, Firmware, PhysSpan};
    use xenmem::xen::abi::{HvmStartInfo, HVM_START_MAGIC};

    /// The start info, with no memory map.
    pub(crate) const START_INFO: HvmStartInfo = HvmStartInfo {
        magic: HVM_START_MAGIC,
        version: 0,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: 0,
        rsdp_paddr: 0,
        memmap_paddr: 0,
        memmap_entries: 0,
        reserved: 0,
    };

    /// A boot with `cmdline`.
    pub(crate) fn pvh(cmdline: &[u8]) -> BootInfo<'_> {
        BootInfo {
            cmdline,
            firmware: Firmware::Pvh {
                start_info: &START_INFO,
                memmap: &[],
            },
            image: PhysSpan {
                start: GuestPhysAddr(0x100000),
                end: GuestPhysAddr(0x200000),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use xenmem::addr::GuestPhysAddr;
    use xenmem::addr::{Mfn, Order};
    use xenmem::xen::{
        DomainInfo, Errno, ExchangeOutcome, ExchangeRequest, MemFlags, ShutdownReason,
    };

    /// A small stand-in for Xen: fixed answers, a scripted peer.
    struct FakeXen {
        domid: Option<DomId>,
        features: Features,
        e820: Vec<E820Entry>,
        peer: RefCell<Vec<Result<Option<u32>, XenError>>>,
        yields: Cell<u32>,
        current: PageCount,
    }

    impl FakeXen {
        fn new() -> Self {
            FakeXen {
                domid: Some(DomId(0)),
                features: Features::DOM0 | Features::AUTO_TRANSLATED_PHYSMAP,
                e820: vec![
                    E820Entry {
                        addr: 0,
                        size: 0x9f000,
                        kind: 1,
                    },
                    E820Entry {
                        addr: 0x100000,
                        size: 0xff00000,
                        kind: 1,
                    },
                    E820Entry {
                        addr: 0xfc000000,
                        size: 0x1000,
                        kind: 2,
                    },
                ],
                peer: RefCell::new(Vec::new()),
                yields: Cell::new(0),
                // The e820's RAM, as Xen would count it.
                current: PageCount(0x9f + 0xff00),
            }
        }
    }

    impl Hypervisor for FakeXen {
        fn version(&self) -> Result<XenVersion, XenError> {
            let mut extra = [0; 16];
            extra[..2].copy_from_slice(b".7");
            Ok(XenVersion {
                major: 4,
                minor: 17,
                extra,
            })
        }
        fn features(&self) -> Result<Features, XenError> {
            Ok(self.features)
        }
        fn hvm_get_param(&self, _: u32) -> Result<u64, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }

        fn evtchn_send(&self, _: u32) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn evtchn_alloc_unbound(&self, _: DomId) -> Result<u32, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn evtchn_bind_interdomain(&self, _: DomId, _: u32) -> Result<u32, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn evtchn_close(&self, _: u32) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn evtchn_unmask(&self, _: u32) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn evtchn_status(&self, _: DomId, _: u32) -> Result<xenmem::xen::ChannelStatus, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn sched_poll(&self, _: &[u32], _: u64) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }

        fn console_write(&self, _: &[u8]) -> Result<(), XenError> {
            Ok(())
        }
        fn current_reservation(&self, _: DomId) -> Result<PageCount, XenError> {
            Ok(self.current)
        }
        fn maximum_reservation(&self, _: DomId) -> Result<PageCount, XenError> {
            Ok(PageCount(65536))
        }
        fn maximum_gpfn(&self, _: DomId) -> Result<Gfn, XenError> {
            Ok(Gfn(0xfffff))
        }
        fn memory_map(&self, buf: &mut [E820Entry]) -> Result<usize, XenError> {
            buf[..self.e820.len()].copy_from_slice(&self.e820);
            Ok(self.e820.len())
        }
        fn domain_info(&self, dom: DomId) -> Result<DomainInfo, XenError> {
            let next = self.peer.borrow_mut().remove(0);
            next.map(|shutdown| DomainInfo {
                domid: dom,
                tot_pages: PageCount(32768),
                max_pages: PageCount(32768),
                shutdown,
                dying: false,
            })
        }
        fn shutdown(&self, _: ShutdownReason) -> Result<(), XenError> {
            Ok(())
        }
        fn yield_cpu(&self) -> Result<(), XenError> {
            self.yields.set(self.yields.get() + 1);
            Ok(())
        }
        fn own_domid(&self) -> Option<DomId> {
            self.domid
        }
        fn increase_reservation(
            &self,
            _: DomId,
            _: Order,
            _: MemFlags,
            _: &mut [Mfn],
        ) -> Result<usize, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn decrease_reservation(&self, _: DomId, _: Order, _: &[Gfn]) -> Result<usize, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn populate_physmap(
            &self,
            _: DomId,
            _: Order,
            _: MemFlags,
            _: &mut [Gfn],
        ) -> Result<usize, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn maximum_ram_page(&self) -> Result<Mfn, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn machphys_mfn_list(&self, _: &mut [Mfn]) -> Result<usize, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn map_foreign_batch(
            &self,
            _: DomId,
            _: &[Gfn],
            _: &[Gfn],
            _: &mut [xenmem::xen::XenStatus],
        ) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn remove_from_physmap(&self, _: Gfn) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn exchange(&self, _: &mut ExchangeRequest<'_>) -> ExchangeOutcome {
            ExchangeOutcome {
                exchanged: 0,
                result: Err(XenError::Errno(Errno::EOPNOTSUPP)),
            }
        }
        fn add_to_physmap(&self, _: u16, _: u64, _: Gfn) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn gnttab_query_size(
            &self,
            _: DomId,
        ) -> Result<xenmem::xen::abi::gnttab::QuerySize, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn gnttab_map(
            &self,
            _: &mut [xenmem::xen::abi::gnttab::MapGrantRef],
        ) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn gnttab_unmap(
            &self,
            _: &mut [xenmem::xen::abi::gnttab::UnmapGrantRef],
        ) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn gnttab_copy(&self, _: &mut [xenmem::xen::abi::gnttab::GntCopy]) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn domctl_createdomain(
            &self,
            _: DomId,
            _: &mut xenmem::xen::abi::DomctlCreateDomain,
        ) -> Result<DomId, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn domctl_max_mem(&self, _: DomId, _: u64) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn domctl_destroydomain(&self, _: DomId) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn acquire_resource_size(&self, _: DomId, _: u16, _: u32) -> Result<u32, XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
        fn acquire_resource(
            &self,
            _: DomId,
            _: u16,
            _: u32,
            _: u64,
            _: &mut [Gfn],
        ) -> Result<(), XenError> {
            Err(XenError::Errno(Errno::ENOSYS))
        }
    }

    use super::test_boot::{pvh as boot, START_INFO};

    #[test]
    fn survey_reports_what_xen_says() {
        let hv = FakeXen::new();
        let s = survey(&hv, &boot(b""), &Options::default()).unwrap();
        assert_eq!(s.domid, Some((DomId(0), DomidSource::Xen)));
        assert!(s.privileged);
        assert_eq!(s.memmap.ranges().len(), 3);
        assert_eq!(s.memmap.ram_pages(), PageCount(0x9f + 0xff00));
        assert_eq!(s.current, PageCount(0x9f + 0xff00));
        assert_eq!(run(&hv, &boot(b""), None).verdict, Verdict::Pass);
    }

    #[test]
    fn the_table_accounts_for_every_page_xen_counts() {
        let mut hv = FakeXen::new();
        let b = boot(b"");
        let heap = PhysSpan {
            start: GuestPhysAddr(0x180000),
            end: GuestPhysAddr(0x1c0000),
        };
        let s = survey(&hv, &b, &Options::default()).unwrap();
        let t = build_table(&s, &b, Some(heap)).unwrap();
        assert_eq!(
            t.count(RegionKind::Reserved(ReservedUse::Heap)),
            PageCount(0x40)
        );
        assert_eq!(
            t.count(RegionKind::Reserved(ReservedUse::Image)),
            PageCount(0xc0)
        );
        assert_eq!(account(&t, &s, s.current, PageCount(0)).unaccounted(), 0);
        // A page Xen counts that the table does not know fails the run.
        hv.current = PageCount(0x9f + 0xff00 + 1);
        assert_eq!(run(&hv, &b, None).verdict, Verdict::Fail);
        // So does an image outside RAM.
        hv.current = PageCount(0x9f + 0xff00);
        let mut outside = boot(b"");
        outside.image = PhysSpan {
            start: GuestPhysAddr(0xa0000),
            end: GuestPhysAddr(0x101000),
        };
        assert_eq!(run(&hv, &outside, None).verdict, Verdict::Fail);
    }

    #[test]
    fn domid_from_the_command_line_where_xen_cannot_tell() {
        let mut hv = FakeXen::new();
        hv.domid = None;
        hv.features = Features::empty();
        let opts = Options {
            domid: Some(DomId(1)),
            ..Options::default()
        };
        let s = survey(&hv, &boot(b""), &opts).unwrap();
        assert_eq!(s.domid, Some((DomId(1), DomidSource::Cmdline)));
        assert!(!s.privileged);
        hv.domid = Some(DomId(0));
        assert_eq!(
            survey(&hv, &boot(b""), &opts).unwrap_err(),
            SurveyError::DomidMismatch {
                xen: DomId(0),
                cmdline: DomId(1)
            }
        );
    }

    #[test]
    fn bad_command_lines_fail_the_run() {
        let hv = FakeXen::new();
        for line in [&b"bogus=1"[..], b"domid=x", b"\xff"] {
            assert_eq!(run(&hv, &boot(line), None).verdict, Verdict::Fail);
        }
        let o = run(&hv, &boot(b"exit=shutdown"), None);
        assert_eq!(
            o,
            Outcome {
                verdict: Verdict::Pass,
                exit: ExitPath::XenShutdown,
                reboot: false,
            }
        );
    }

    #[test]
    fn start_info_memory_map_is_used_when_present() {
        use xenmem::xen::abi::HvmMemmapEntry;
        let hv = FakeXen::new();
        let memmap = [
            HvmMemmapEntry {
                addr: 0,
                size: 0x9f000,
                kind: 1,
                reserved: 0,
            },
            HvmMemmapEntry {
                addr: 0x100000,
                size: 0xff00000,
                kind: 1,
                reserved: 0,
            },
        ];
        let mut b = boot(b"");
        b.firmware = Firmware::Pvh {
            start_info: &START_INFO,
            memmap: &memmap,
        };
        let s = survey(&hv, &b, &Options::default()).unwrap();
        assert_eq!(s.memmap.source, xenmem::memmap::MapSource::StartInfo);
        assert_eq!(s.memmap.ranges().len(), 2);
        assert_eq!(run(&hv, &b, None).verdict, Verdict::Pass);
    }

    #[test]
    fn memory_map_errors_fail_the_run() {
        let mut hv = FakeXen::new();
        hv.e820.push(E820Entry {
            addr: u64::MAX,
            size: 2,
            kind: 1,
        });
        assert_eq!(run(&hv, &boot(b""), None).verdict, Verdict::Fail);
    }

    #[test]
    fn peer_verdict_follows_its_shutdown_code() {
        let hv = FakeXen::new();
        *hv.peer.borrow_mut() = vec![Err(XenError::Errno(Errno::ESRCH)), Ok(None), Ok(Some(0))];
        assert_eq!(run(&hv, &boot(b"peer=1"), None).verdict, Verdict::Pass);
        assert_eq!(hv.yields.get(), 2);
        *hv.peer.borrow_mut() = vec![Ok(Some(3))];
        assert_eq!(run(&hv, &boot(b"peer=1"), None).verdict, Verdict::Fail);
        *hv.peer.borrow_mut() = vec![Err(XenError::Errno(Errno::EPERM))];
        assert_eq!(run(&hv, &boot(b"peer=1"), None).verdict, Verdict::Fail);
        assert!(hv.peer.borrow().is_empty(), "asked once, not again");
    }

    #[test]
    fn a_failed_run_still_lets_the_peer_finish() {
        let mut hv = FakeXen::new();
        hv.e820.push(E820Entry {
            addr: u64::MAX,
            size: 2,
            kind: 1,
        });
        *hv.peer.borrow_mut() = vec![Ok(None), Ok(Some(0))];
        assert_eq!(run(&hv, &boot(b"peer=1"), None).verdict, Verdict::Fail);
        assert!(hv.peer.borrow().is_empty(), "waited for the peer");
        assert_eq!(hv.yields.get(), 1);
    }

    /// An x86 PVH domU as `xl create` makes it, on the model.
    fn xl_model(cfg: xenmem_model::DomainConfig) -> xenmem_model::XenModel {
        let m = xenmem_model::XenModel::new(1 << 17);
        let id = cfg.domid;
        m.add_domain(cfg).unwrap();
        m.set_current(id).unwrap();
        m
    }

    #[test]
    fn an_xl_domu_accounts_for_the_toolstack_pages() {
        use xenmem_model::DomainConfig;
        let m = xl_model(DomainConfig::xl_pvh_domu(DomId(3), 16384));
        let b = boot(b"exit=shutdown");
        let s = survey(&m, &b, &Options::default()).unwrap();
        assert_eq!(s.current, PageCount(16384 + 17));
        let mut t = build_table(&s, &b, None).unwrap();
        assert_eq!(account(&t, &s, s.current, PageCount(0)).unaccounted(), 17);
        assert_eq!(special_run(&m, &mut t, &s), Verdict::Pass);
        assert_eq!(account(&t, &s, s.current, PageCount(0)).unaccounted(), 0);
        assert_eq!(
            t.count(RegionKind::Reserved(ReservedUse::Special)),
            PageCount(17)
        );
        // Holes for mappings exist only with an address width (the CPU's):
        // the domU's maximum_gpfn ends below 4 GiB.
        assert_eq!(t.count(RegionKind::Hole), PageCount(0));
        let wide = Survey {
            phys_addr_bits: Some(40),
            ..s.clone()
        };
        let t = build_table(&wide, &b, None).unwrap();
        assert_eq!(
            t.count(RegionKind::Hole),
            PageCount((0xfd_0000_0000u64 - (1 << 32)) >> 12)
        );
        // The whole run passes and ends by shutdown.
        let o = run(&m, &b, None);
        assert_eq!(o.verdict, Verdict::Pass);
        assert_eq!(o.exit, ExitPath::XenShutdown);
    }

    #[test]
    fn a_populate_on_demand_domu_gives_back_its_surplus_first() {
        use xenmem_model::DomainConfig;
        // memory=64 maxmem=128, as measured: nr_pages=16401.
        let m = xl_model(DomainConfig::xl_pvh_pod_domu(DomId(4), 16384, 32768, 1536));
        let b = boot(b"");
        let s = survey(&m, &b, &Options::default()).unwrap();
        assert_eq!(s.current, PageCount(16401));
        assert_eq!(s.memmap.ram_pages(), PageCount(32768));
        let mut t = build_table(&s, &b, None).unwrap();
        assert_eq!(special_run(&m, &mut t, &s), Verdict::Pass);
        let acc = account(&t, &s, s.current, PageCount(0));
        assert_eq!(acc.unaccounted(), -16384);
        assert_eq!(pod_surplus(&acc, &s), Ok(Some(PageCount(16384))));
        assert_eq!(pod_run(&m, &mut t, &s, PageCount(16384)), Verdict::Pass);
        // Xen's count did not move; the table now says the same.
        assert_eq!(m.current_reservation(DomId::SELF), Ok(PageCount(16401)));
        assert_eq!(account(&t, &s, s.current, PageCount(0)).unaccounted(), 0);
        assert_eq!(t.count(RegionKind::Ballooned), PageCount(16384));
        m.check_conservation().unwrap();
        // The same through the whole run.
        let m = xl_model(DomainConfig::xl_pvh_pod_domu(DomId(4), 16384, 32768, 1536));
        assert_eq!(run(&m, &b, None).verdict, Verdict::Pass);
        assert_eq!(m.current_reservation(DomId::SELF), Ok(PageCount(16401)));
        // A privileged guest with more map RAM than Xen counts is not PoD.
        let dom0ish = Survey {
            privileged: true,
            ..s.clone()
        };
        assert_eq!(pod_surplus(&acc, &dom0ish), Err(()));
    }
}
