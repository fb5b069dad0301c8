//! What the stub does with xenmem, one step after the other, each said as
//! one `stub: <step> key=value ...` line (the runner parses them).

use alloc::vec::Vec;
use core::fmt;

use xenmem::addr::{DomId, Gfn, PageCount, PAGE_SIZE};
use xenmem::boot::{BootInfo, Firmware};
use xenmem::grant::{self, CopySeg, GrantError, GrantTable};
use xenmem::layout::{self, GapPolicy, LayoutError, Reservation, ReserveRule};
use xenmem::mapping::{MapTarget, VaSpace};
use xenmem::memmap::{MemMapError, MemoryMap};
use xenmem::paging::PagingError;
use xenmem::region::{FrameRange, RegionKind, RegionTable, ReservedUse};
use xenmem::reservation::{self, Engine, ReservationError, Strategy};
use xenmem::xen::abi::E820Entry;
use xenmem::xen::{Features, Hypervisor, RealXen, XenError};

use crate::Verdict;

/// What is ballooned out and back: 16 MiB.
const BALLOON: PageCount = PageCount(4096);
/// The contiguous buffer: 2 MiB (one order-9 extent), 2 MiB aligned.
const CONTIG_BYTES: u64 = 2 << 20;
/// ... whose machine frames lie below 4 GiB.
const CONTIG_ADDRESS_BITS: u8 = 32;
/// On x86 the gaps above 4 GiB up to here become holes for mappings (the
/// grant table's frame): 64 GiB, inside every x86_64 CPU's 36 or more
/// physical address bits, far below the HyperTransport range at 1012 GiB.
const X86_HOLES_END: Gfn = Gfn((64 << 30) / PAGE_SIZE);
/// The pattern word `i` of the granted page.
const fn pattern(i: usize) -> u64 {
    0x5eed_5eed_0000_0000 ^ i as u64
}

/// Why a step failed.
enum Failure {
    Xen(&'static str, XenError),
    MemMap(MemMapError),
    Layout(LayoutError),
    Reservation(&'static str, ReservationError),
    Grant(&'static str, GrantError),
    Paging(PagingError),
    Check(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Xen(op, e) => write!(f, "{op}: {e}"),
            Failure::MemMap(e) => write!(f, "memory map: {e}"),
            Failure::Layout(e) => write!(f, "region table: {e}"),
            Failure::Reservation(what, e) => write!(f, "{what}: {e}"),
            Failure::Grant(what, e) => write!(f, "grant {what}: {e}"),
            Failure::Paging(e) => write!(f, "page tables: {e}"),
            Failure::Check(what) => f.write_str(what),
        }
    }
}

fn xen<T>(op: &'static str, r: Result<T, XenError>) -> Result<T, Failure> {
    r.map_err(|e| Failure::Xen(op, e))
}

fn check(ok: bool, what: &'static str) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure::Check(what))
    }
}

/// Run every step, say the footprint and the verdict, and return it.
pub fn run(boot: &BootInfo<'_>) -> Verdict {
    // SAFETY: the stub runs as a Xen guest (the hypercall instruction is
    // chosen from CPUID on x86, `hvc` on Arm). Every frame the library gives
    // back to Xen, repopulates, or puts a grant-table frame over is one the
    // region table built in `steps` calls free RAM or a hole, and that table
    // records the stub's whole image (code, data, and .bss with the heap,
    // the stack and the boot page tables) and every piece of boot data Xen
    // left (start info, command line, module list and memory map, or the
    // device tree) as reserved. The stub touches no other memory except
    // frames the library handed to it from that table (the contiguous
    // buffer) and the window mappings it made.
    let hv = unsafe { RealXen::new() };
    let verdict = match steps(&hv, boot) {
        Ok(()) => Verdict::Pass,
        Err(f) => {
            say!("stub: FAIL {f}");
            Verdict::Fail
        }
    };
    let (_, heap_peak, heap_size) = crate::heap::stats();
    say!(
        "stub: footprint image_bytes={} heap_peak={heap_peak} heap_size={heap_size} stack_used={} stack_size={}",
        boot.image.end.0 - boot.image.start.0,
        crate::stack::used(),
        crate::stack::SIZE
    );
    // A line Xen refused cannot be said; the verdict carries it.
    let verdict = if crate::console::lost() != 0 {
        Verdict::Fail
    } else {
        verdict
    };
    say!(
        "stub: verdict {}",
        match verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    );
    verdict
}

fn steps(hv: &RealXen, boot: &BootInfo<'_>) -> Result<(), Failure> {
    // 1. The region table from the memory map, checked against Xen's count.
    let features = xen("get_features", hv.features())?;
    let map = memory_map(hv, boot)?;
    let current = xen("current_reservation", hv.current_reservation(DomId::SELF))?;
    let max_gpfn = xen("maximum_gpfn", hv.maximum_gpfn(DomId::SELF))?;
    let mut t = region_table(boot, &map, max_gpfn)?;
    let partial = PageCount(layout::partial_ram_pages(&map));
    let ram = populated(&t);
    say!(
        "stub: table regions={} ram_pages={} partial={} xen={} map={} holes={}",
        t.len(),
        ram.0,
        partial.0,
        current.0,
        map.source.name(),
        t.count(RegionKind::Hole).0
    );
    check(
        ram.0 + partial.0 == current.0,
        "the table's RAM is not what Xen counts",
    )?;

    // 2. 16 MiB out and back, Xen's count read at every step.
    let privileged = features.contains(Features::DOM0);
    let strategy = Strategy::xenmem(reservation::xen_max_order(privileged));
    let mut e = Engine::new(hv, strategy, current, features);
    let out = PageCount(current.0.checked_sub(BALLOON.0).ok_or(Failure::Check(
        "less memory than the balloon step gives back",
    ))?);
    e.balloon_to(&mut t, out)
        .map_err(|x| Failure::Reservation("balloon out", x))?;
    let xen_out = xen("current_reservation", hv.current_reservation(DomId::SELF))?;
    let ballooned = t.count(RegionKind::Ballooned);
    e.balloon_to(&mut t, current)
        .map_err(|x| Failure::Reservation("balloon back", x))?;
    let xen_after = e
        .verify()
        .map_err(|x| Failure::Reservation("balloon back", x))?;
    say!(
        "stub: balloon out={} back={} xen_before={} xen_out={} xen_after={} table_ballooned={} hypercalls={}",
        current.0.saturating_sub(xen_out.0),
        xen_after.0.saturating_sub(xen_out.0),
        current.0,
        xen_out.0,
        xen_after.0,
        ballooned.0,
        e.stats.hypercalls
    );
    check(
        xen_out == out && ballooned == BALLOON && xen_after == current,
        "ballooning did not move Xen's count by 16 MiB and back",
    )?;
    check(
        t.count(RegionKind::Ballooned).0 == 0,
        "frames are still ballooned",
    )?;

    // 3. A machine-contiguous buffer below 4 GiB (Xen's count unchanged).
    let buf = e
        .alloc_contiguous(
            &mut t,
            CONTIG_BYTES,
            CONTIG_BYTES,
            Some(CONTIG_ADDRESS_BITS),
        )
        .map_err(|x| Failure::Reservation("contiguous buffer", x))?;
    let xen_now = e
        .verify()
        .map_err(|x| Failure::Reservation("contiguous buffer", x))?;
    match buf.machine() {
        Some(m) => say!(
            "stub: contig gfn={} pages={} method={} mfn={m} xen={}",
            buf.range().start(),
            buf.range().len().0,
            buf.method().name(),
            xen_now.0
        ),
        None => say!(
            "stub: contig gfn={} pages={} method={} mfn=unknown xen={}",
            buf.range().start(),
            buf.range().len().0,
            buf.method().name(),
            xen_now.0
        ),
    }
    check(
        buf.range().len().0 * PAGE_SIZE == CONTIG_BYTES && xen_now == current,
        "the contiguous buffer is not 2 MiB, or Xen's count moved",
    )?;

    // 4. Grant the buffer's first page (to this domain itself, the one
    // domain sure to be there) and have Xen copy it through the grant.
    let me = hv
        .own_domid()
        .or_else(|| cmdline_domid(boot.cmdline))
        .ok_or(Failure::Check(
            "no domid: Xen does not tell it here and the command line has no domid=",
        ))?;
    grant_step(hv, &mut t, buf.range(), me)?;

    // The buffer goes back to the table; the table still matches Xen.
    // A failed free gives the buffer back with the error; the run ends
    // here, so it is only reported.
    e.free_contiguous(&mut t, buf)
        .map_err(|x| Failure::Reservation("free contiguous buffer", x.into_error()))?;
    let end = xen("current_reservation", hv.current_reservation(DomId::SELF))?;
    let ram = populated(&t);
    say!(
        "stub: accounting table_ram={} partial={} xen={}",
        ram.0,
        partial.0,
        end.0
    );
    check(
        ram.0 + partial.0 == end.0,
        "the table's RAM is not what Xen counts at the end",
    )
}

/// Pages the table holds as this domain's populated RAM.
fn populated(t: &RegionTable) -> PageCount {
    t.count_where(|r| r.kind.is_populated_ram())
}

/// The memory map: the device tree, the PVH start info's (version 1), or
/// `XENMEM_memory_map` (a PVH dom0: version 0 has none).
fn memory_map(hv: &RealXen, boot: &BootInfo<'_>) -> Result<MemoryMap, Failure> {
    match boot.firmware {
        Firmware::DeviceTree(blob) => MemoryMap::from_fdt(blob),
        Firmware::Pvh { memmap, .. } if !memmap.is_empty() => MemoryMap::from_start_info(memmap),
        Firmware::Pvh { .. } => {
            let mut e820 = [E820Entry::default(); xenmem::memmap::MAX_RANGES];
            let n = xen("memory_map", hv.memory_map(&mut e820))?;
            MemoryMap::from_e820(&e820[..n])
        }
    }
    .map_err(Failure::MemMap)
}

/// The frames `[start, start + len)` touches; `None` if empty.
fn frames(start: u64, len: u64) -> Option<FrameRange> {
    let end = start.checked_add(len)?.div_ceil(PAGE_SIZE);
    FrameRange::from_frames(Gfn(start / PAGE_SIZE), Gfn(end)).ok()
}

/// The table: the map's ranges, gaps as MMIO or holes, and what the stub
/// must keep (its image, Xen's boot data) reserved.
fn region_table(
    boot: &BootInfo<'_>,
    map: &MemoryMap,
    max_gpfn: Gfn,
) -> Result<RegionTable, Failure> {
    let mut keep = Vec::new();
    let mut add = |start: u64, len: u64, what: ReservedUse, rule: ReserveRule| {
        if let Some(range) = frames(start, len) {
            keep.push(Reservation { range, what, rule });
        }
    };
    let image = boot.image;
    add(
        image.start.0,
        image.end.0 - image.start.0,
        ReservedUse::Image,
        ReserveRule::InRam,
    );
    let (policy, limit) = match boot.firmware {
        Firmware::Pvh { start_info, .. } => {
            let at = |r: &_| r as *const _ as usize as u64;
            add(
                at(start_info),
                core::mem::size_of_val(start_info) as u64,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
            if !boot.cmdline.is_empty() {
                add(
                    boot.cmdline.as_ptr() as usize as u64,
                    boot.cmdline.len() as u64 + 1,
                    ReservedUse::Boot,
                    ReserveRule::RamParts,
                );
            }
            add(
                start_info.modlist_paddr,
                u64::from(start_info.nr_modules)
                    * core::mem::size_of::<xenmem::xen::abi::HvmModlistEntry>() as u64,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
            if start_info.version >= 1 {
                add(
                    start_info.memmap_paddr,
                    u64::from(start_info.memmap_entries)
                        * core::mem::size_of::<xenmem::xen::abi::HvmMemmapEntry>() as u64,
                    ReservedUse::Boot,
                    ReserveRule::RamParts,
                );
            }
            (GapPolicy::X86, X86_HOLES_END)
        }
        Firmware::DeviceTree(blob) => {
            add(
                blob.as_ptr() as usize as u64,
                blob.len() as u64,
                ReservedUse::Boot,
                ReserveRule::RamParts,
            );
            (GapPolicy::DeviceTree, Gfn(0))
        }
    };
    let limit = limit.max(Gfn(max_gpfn.0.saturating_add(1)));
    layout::initial_table(map, policy, limit, &keep).map_err(Failure::Layout)
}

/// `domid=N` from the command line (Arm: a guest cannot ask Xen).
fn cmdline_domid(cmdline: &[u8]) -> Option<DomId> {
    core::str::from_utf8(cmdline)
        .ok()?
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("domid="))?
        .parse()
        .ok()
        .map(DomId)
}

/// The identity-mapped words of frame `g`, if the boot map covers it.
fn words(g: Gfn) -> Result<*mut u64, Failure> {
    let end = xenmem::arch::imp::paging::IDENTITY.end.0;
    match g.0.checked_mul(PAGE_SIZE) {
        Some(a) if a != 0 && a < end => Ok(a as usize as *mut u64),
        _ => Err(Failure::Check("a buffer frame is outside the identity map")),
    }
}

/// Own grant table in a hole; grant `buf`'s first page to `me`; Xen copies
/// it through the grant into the second page; end the grant, release the
/// table.
fn grant_step(
    hv: &RealXen,
    t: &mut RegionTable,
    buf: FrameRange,
    me: DomId,
) -> Result<(), Failure> {
    const WORDS: usize = (PAGE_SIZE / 8) as usize;
    let page = buf.start();
    let into = Gfn(page.0 + 1);
    check(buf.len().0 >= 2, "the buffer has fewer than two pages")?;
    let (p, q) = (words(page)?, words(into)?);
    for i in 0..WORDS {
        // SAFETY: both frames belong to the contiguous buffer, which the
        // table gives to nothing else, and the boot map identity-maps them
        // (`words`); `i` stays inside the page.
        unsafe {
            p.add(i).write_volatile(pattern(i));
            q.add(i).write_volatile(0);
        }
    }
    let mut pt = xenmem::arch::imp::paging::page_tables().map_err(Failure::Paging)?;
    let mut vas = VaSpace::new(MapTarget::window(&*pt));
    let mut gt = GrantTable::setup(hv, t, &mut *pt, &mut vas, 1)
        .map_err(|e| Failure::Grant("table set-up", e))?;
    let table_gfn = gt.frame_gfns().next().unwrap_or(Gfn(0));
    let table_kind = t.region_at(table_gfn).map_or("none", |x| x.kind.name());
    let r = gt
        .grant_access(t, me, page, false)
        .map_err(|e| Failure::Grant("access", e))?;
    let seg = CopySeg {
        gref: r,
        grant_offset: 0,
        local: into,
        local_offset: 0,
        len: PAGE_SIZE as u16,
    };
    let copied = grant::copy_from_grant(hv, me, &[seg]);
    // SAFETY: as above.
    let same = (0..WORDS).all(|i| unsafe { q.add(i).read_volatile() } == pattern(i));
    let ended = gt.end_access(r);
    let released = gt.release(hv, t, &mut *pt, &mut vas);
    say!(
        "stub: grant ref={} dom={me} frame={page} table_gfn={table_gfn} table_kind={} copy={}",
        r.0,
        table_kind,
        if copied.is_ok() && same { "ok" } else { "bad" }
    );
    copied.map_err(|e| Failure::Grant("copy", e))?;
    ended.map_err(|e| Failure::Grant("end", e))?;
    released.map_err(|e| Failure::Grant("table release", e))?;
    check(
        same,
        "the page Xen copied through the grant is not the granted page",
    )
}
