//! The toolstack's special pages: frames Xen counts in the domain's
//! reservation that lie outside the memory map's RAM.
//!
//! A domain built by a toolstack (`xl create`) holds more than its RAM: on
//! x86 PVH libxl loads ACPI tables into an e820 ACPI range and libxc
//! populates eight special pages (console and xenstore rings, ioreq pages,
//! ...) in an e820 reserved range below 4 GiB; on Arm libxc populates four
//! "magic" pages (console, xenstore, monitor, vUART rings) at a frame the
//! device tree does not describe at all. `XENMEM_current_reservation` counts
//! them all, so a table that knows only RAM cannot equal it.
//!
//! Which frames they are is not inferred from a layout: the candidates are
//! every page of the map's reserved, ACPI and NVS ranges and the aligned
//! groups of [`GROUP`] frames around the frames the HVM parameters name
//! (console and xenstore rings), and Xen says for each whether it is
//! populated — a one-byte `GNTTABOP_copy` from the frame (`DOMID_SELF`, a
//! frame, not a grant) succeeds for the domain's RAM and fails with
//! `GNTST_bad_page` for anything else, without changing either side. The
//! frames found become [`ReservedUse::Special`] in the region table, which
//! counts them as populated (and keeps them in the identity map: the console
//! ring is written through it).

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DomId, Gfn, PageCount, PAGE_SIZE};
use crate::alloc_util::{try_collect, try_with_capacity, FixedVec, OutOfMemory, TryVec};
use crate::memmap::{MemKind, MemoryMap, MAX_RANGES};
use crate::region::ReservedUse;
use crate::region::{Change, FrameRange, RegionError, RegionFlags, RegionKind, RegionTable};
use crate::xen::abi::gnttab::{CopyPtr, GntCopy, GntStatus};
use crate::xen::abi::hvm_param;
use crate::xen::{Hypervisor, XenError};

/// Frames probed around each frame an HVM parameter names (aligned): x86's
/// eight special pages and Arm's four magic pages each lie in one group.
pub const GROUP: u64 = 16;
/// The most candidate frames probed; a map with more reserved space than
/// this (a host's dom0) is probed up to it and the rest reported skipped.
pub const MAX_CANDIDATES: u64 = 1 << 16;
/// Copies per `GNTTABOP_copy` call.
pub const BATCH: usize = 256;
/// The most named frames [`candidates`] takes groups around (the groups of
/// any further ones count as skipped).
pub const MAX_NAMED: usize = 16;
/// The HVM parameters whose frames start a group: the ones a guest may read
/// of itself on both architectures (x86 refuses the others with EPERM).
pub const PARAMS: [u32; 2] = [hvm_param::CONSOLE_PFN, hvm_param::STORE_PFN];

/// Why the probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialError {
    /// `GNTTABOP_copy` itself failed.
    Xen(XenError),
    /// A copy failed with a status other than okay or `bad_page`.
    Copy {
        /// The frame probed.
        gfn: Gfn,
        /// What Xen said.
        status: GntStatus,
    },
    /// Recording a found frame in the table failed (nothing was recorded;
    /// running out of memory as the table grows among the reasons).
    Table(RegionError),
    /// The heap has no room for the list of found frames, or for the
    /// batch that records them (nothing was recorded).
    OutOfMemory(OutOfMemory),
    /// A populated frame lies where the table has something other than a
    /// firmware reservation or device space (RAM, a hole, a mapping).
    Unexpected {
        /// The frame.
        gfn: Gfn,
        /// What the table has there.
        kind: RegionKind,
    },
}

impl fmt::Display for SpecialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecialError::Xen(e) => write!(f, "GNTTABOP_copy failed: {e}"),
            SpecialError::Copy { gfn, status } => {
                write!(f, "probing frame {gfn}: GNTTABOP_copy said {status:?}")
            }
            SpecialError::Table(e) => write!(f, "recording special pages: {e}"),
            SpecialError::OutOfMemory(e) => write!(f, "special pages: {e}"),
            SpecialError::Unexpected { gfn, kind } => write!(
                f,
                "populated frame {gfn} lies in a {} region of the table",
                kind.name()
            ),
        }
    }
}

/// What the probe found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The populated frames, as sorted runs.
    pub runs: Vec<FrameRange>,
    /// Candidate frames probed.
    pub probed: u64,
    /// Candidate frames not probed ([`MAX_CANDIDATES`]).
    pub skipped: u64,
}

impl Found {
    /// Populated frames in all.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.len().0).sum()
    }
}

/// Stands in the unused places of [`Candidates`].
const NO_RANGE: FrameRange = match FrameRange::single(Gfn(0)) {
    Some(r) => r,
    None => panic!("frame 0 is a range"),
};

/// The frames [`PARAMS`] name, in that order (derefs to a slice).
pub type ParamFrames = FixedVec<Gfn, { PARAMS.len() }>;

/// The candidate runs of frames [`candidates`] finds (derefs to a slice):
/// one per reserved, ACPI or NVS range of a map and per named group at
/// most.
pub type Candidates = FixedVec<FrameRange, { MAX_RANGES + MAX_NAMED }>;

/// The frames named by [`PARAMS`] (0 and refused parameters left out).
pub fn param_frames(hv: &impl Hypervisor) -> ParamFrames {
    let mut out = ParamFrames::new(Gfn(0));
    for v in PARAMS
        .iter()
        .filter_map(|&p| hv.hvm_get_param(p).ok())
        .filter(|&v| v != 0)
    {
        // Cannot be full: one place per parameter.
        let _ = out.push(Gfn(v));
    }
    out
}

/// The candidate frames, sorted, without duplicates: every page of the map's
/// reserved, ACPI and NVS ranges that holds no RAM (a page shared with RAM is
/// counted as partial RAM elsewhere), and the [`GROUP`] around each of
/// `named` (the first [`MAX_NAMED`] of them; the groups of the others count
/// as skipped); at most [`MAX_CANDIDATES`] (the count left out is
/// returned). Uses no heap.
pub fn candidates(map: &MemoryMap, named: &[Gfn]) -> (Candidates, u64) {
    let ram_touches = |f: u64| {
        map.ranges().iter().any(|r| {
            r.kind == MemKind::Ram && r.start.0 < (f + 1) * PAGE_SIZE && f * PAGE_SIZE < r.end.0
        })
    };
    let mut skipped = 0;
    let mut spans = FixedVec::<(u64, u64), { MAX_RANGES + MAX_NAMED }>::new((0, 0));
    let groups = named.iter().enumerate().filter_map(|(i, g)| {
        if i >= MAX_NAMED {
            skipped += GROUP;
            return None;
        }
        let s = g.0 / GROUP * GROUP;
        Some((s, s.saturating_add(GROUP)))
    });
    for span in map
        .ranges()
        .iter()
        .filter(|r| matches!(r.kind, MemKind::Reserved | MemKind::Acpi | MemKind::Nvs))
        .map(|r| (r.start.0 / PAGE_SIZE, r.end.0.div_ceil(PAGE_SIZE)))
        .chain(groups)
        .filter(|(s, e)| s < e)
    {
        // Cannot be full: a map has at most MAX_RANGES ranges.
        let _ = spans.push(span);
    }
    spans.sort_unstable();
    let mut merged = FixedVec::<(u64, u64), { MAX_RANGES + MAX_NAMED }>::new((0, 0));
    for &(s, e) in spans.iter() {
        match merged.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            // Cannot be full: no more than the spans.
            _ => {
                let _ = merged.push((s, e));
            }
        }
    }
    // Drop the pages shared with RAM at the ends of each span.
    let mut out = Candidates::new(NO_RANGE);
    let mut budget = MAX_CANDIDATES;
    for &(mut s, mut e) in merged.iter() {
        while s < e && ram_touches(s) {
            s += 1;
        }
        while e > s && ram_touches(e - 1) {
            e -= 1;
        }
        if s == 0 {
            // Frame 0 is never a special page, and its address is null.
            s = 1;
        }
        if s >= e {
            continue;
        }
        let take = (e - s).min(budget);
        skipped += e - s - take;
        budget -= take;
        if take > 0 {
            if let Ok(r) = FrameRange::from_frames(Gfn(s), Gfn(s + take)) {
                // Cannot be full: no more than the merged spans.
                let _ = out.push(r);
            }
        }
    }
    (out, skipped)
}

/// Ask Xen which frames of `candidates` are this domain's populated memory:
/// one byte of each is copied to byte 0 of `sink` (a frame of the caller's
/// own RAM that nothing else uses meanwhile), [`BATCH`] per call.
pub fn probe(
    hv: &impl Hypervisor,
    candidates: &[FrameRange],
    sink: Gfn,
    skipped: u64,
) -> Result<Found, SpecialError> {
    let mut found = Found {
        skipped,
        ..Found::default()
    };
    // The sink first (onto itself): if it is not RAM, every copy below would
    // fail with bad_page and look like an unpopulated frame.
    let mut check = [copy_op(sink, sink)];
    hv.gnttab_copy(&mut check).map_err(SpecialError::Xen)?;
    if check[0].status() != GntStatus::Okay {
        return Err(SpecialError::Copy {
            gfn: sink,
            status: check[0].status(),
        });
    }
    let mut frames = candidates.iter().flat_map(|r| r.start().0..r.end().0);
    let mut ops: Vec<GntCopy> =
        try_with_capacity(BATCH, "special-page probe").map_err(SpecialError::OutOfMemory)?;
    loop {
        ops.clear();
        // Within the capacity made above: no allocation.
        ops.extend(frames.by_ref().take(BATCH).map(|f| copy_op(Gfn(f), sink)));
        if ops.is_empty() {
            break;
        }
        hv.gnttab_copy(&mut ops).map_err(SpecialError::Xen)?;
        for op in &ops {
            let gfn = Gfn(op.source.u);
            // The frame after it; a frame number from Xen's parameters at the
            // very top of the space has none (RegionError::Overflow).
            let next = gfn
                .checked_add(PageCount(1))
                .ok_or(SpecialError::Table(RegionError::Overflow))?;
            found.probed += 1;
            match op.status() {
                GntStatus::Okay => match found.runs.last_mut() {
                    Some(r) if r.end() == gfn => {
                        *r = FrameRange::from_frames(r.start(), next)
                            .map_err(SpecialError::Table)?;
                    }
                    _ => found
                        .runs
                        .try_push(
                            FrameRange::from_frames(gfn, next).map_err(SpecialError::Table)?,
                            "special-page runs",
                        )
                        .map_err(SpecialError::OutOfMemory)?,
                },
                GntStatus::BadPage => {}
                status => return Err(SpecialError::Copy { gfn, status }),
            }
        }
    }
    Ok(found)
}

/// One byte from frame `from` to frame `to`, both this domain's.
fn copy_op(from: Gfn, to: Gfn) -> GntCopy {
    let frame = |g: Gfn| CopyPtr {
        u: g.0,
        domid: DomId::SELF.raw(),
        offset: 0,
    };
    GntCopy {
        source: frame(from),
        dest: frame(to),
        len: 1,
        flags: 0,
        status: 0,
    }
}

/// Whether a populated special page may replace a region of `kind`: firmware
/// and ACPI reservations (x86's e820) and device space (Arm's undescribed
/// gaps), or a special page already.
const fn may_hold_special(kind: RegionKind) -> bool {
    matches!(
        kind,
        RegionKind::Reserved(ReservedUse::Firmware | ReservedUse::Acpi | ReservedUse::Special)
            | RegionKind::Mmio
    )
}

/// Record `found` in the table as [`ReservedUse::Special`], all or nothing.
pub fn record(t: &mut RegionTable, found: &Found) -> Result<(), SpecialError> {
    for run in &found.runs {
        for r in t
            .iter()
            .filter(|x| x.range.start() < run.end() && run.start() < x.range.end())
        {
            if !may_hold_special(r.kind) {
                return Err(SpecialError::Unexpected {
                    gfn: r.range.start().max(run.start()),
                    kind: r.kind,
                });
            }
        }
    }
    let ops: Vec<crate::region::Op> = try_collect(
        found.runs.iter().map(|&range| {
            crate::region::Op::Modify(
                range,
                Change {
                    kind: Some(RegionKind::Reserved(ReservedUse::Special)),
                    set: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::PINNED,
                    ..Change::default()
                },
            )
        }),
        "special-page batch",
    )
    .map_err(SpecialError::OutOfMemory)?;
    t.apply(&ops).map_err(|(e, _)| SpecialError::Table(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::MemoryMap;
    use crate::xen::abi::E820Entry;
    use crate::xen::model::{
        DomainConfig, XenModel, XL_ACPI_GFN, XL_ACPI_PAGES, XL_SPECIAL_GFN, XL_SPECIAL_PAGES,
    };

    const RAM: u64 = 16384;

    fn xl_domu() -> (XenModel, MemoryMap) {
        let m = XenModel::new(1 << 16);
        let cfg = DomainConfig::xl_pvh_domu(DomId(1), RAM);
        let e820 = cfg.e820.clone().unwrap();
        m.add_domain(cfg).unwrap();
        m.set_current(DomId(1)).unwrap();
        (m, MemoryMap::from_e820(&e820).unwrap())
    }

    fn range(s: u64, n: u64) -> FrameRange {
        FrameRange::from_frames(Gfn(s), Gfn(s + n)).unwrap()
    }

    #[test]
    fn finds_the_toolstack_pages_xen_counts() {
        let (m, map) = xl_domu();
        let named = param_frames(&m);
        assert_eq!(named, [Gfn(XL_SPECIAL_GFN + 7), Gfn(XL_SPECIAL_GFN + 4)]);
        let (c, skipped) = candidates(&map, &named);
        assert_eq!(skipped, 0);
        // The ACPI range, and the reserved range merged with the group of
        // the named frames (0xfeff0..0xff000).
        assert_eq!(c, [range(XL_ACPI_GFN, 9), range(0xfeff0, 16)]);
        let f = probe(&m, &c, Gfn(5), 0).unwrap();
        assert_eq!(
            f.runs,
            [
                range(XL_ACPI_GFN, XL_ACPI_PAGES),
                range(XL_SPECIAL_GFN, XL_SPECIAL_PAGES)
            ]
        );
        assert_eq!(f.pages(), 17);
        assert_eq!(f.probed, 25);
        // Xen counts exactly RAM + these.
        let cur = m.current_reservation(DomId::SELF).unwrap().0;
        assert_eq!(cur, RAM + f.pages());
        // The probe changed nothing.
        assert_eq!(m.current_reservation(DomId::SELF).unwrap().0, cur);
        m.check_conservation().unwrap();
    }

    #[test]
    fn recorded_pages_count_as_populated_and_the_rest_stays() {
        let (m, map) = xl_domu();
        let mut t =
            crate::layout::initial_table(&map, crate::layout::GapPolicy::X86, Gfn(1 << 20), &[])
                .unwrap();
        let before = t.count_where(|r| r.kind.is_populated_ram()).0;
        assert_eq!(before, RAM);
        let (c, s) = candidates(&map, &param_frames(&m));
        let f = probe(&m, &c, Gfn(5), s).unwrap();
        record(&mut t, &f).unwrap();
        assert_eq!(t.count_where(|r| r.kind.is_populated_ram()).0, RAM + 17);
        assert_eq!(t.count(RegionKind::Reserved(ReservedUse::Special)).0, 17);
        // The group's unpopulated frames are still MMIO.
        assert_eq!(
            t.info(Gfn(0xfeff0).addr().unwrap()).map(|r| r.kind),
            Some(RegionKind::Mmio)
        );
        // Recording again is harmless (all or nothing, same result).
        record(&mut t, &f).unwrap();
        assert_eq!(t.count(RegionKind::Reserved(ReservedUse::Special)).0, 17);
    }

    #[test]
    fn a_populated_frame_over_ram_or_a_hole_is_refused_and_nothing_changes() {
        let (_, map) = xl_domu();
        let mut t =
            crate::layout::initial_table(&map, crate::layout::GapPolicy::X86, Gfn(1 << 21), &[])
                .unwrap();
        let snapshot: Vec<_> = t.iter().copied().collect();
        for (gfn, kind) in [(100, RegionKind::Ram), (1 << 20, RegionKind::Hole)] {
            let f = Found {
                runs: alloc::vec![range(XL_ACPI_GFN, 1), range(gfn, 1)],
                probed: 2,
                skipped: 0,
            };
            assert_eq!(
                record(&mut t, &f),
                Err(SpecialError::Unexpected {
                    gfn: Gfn(gfn),
                    kind
                })
            );
            assert_eq!(t.iter().copied().collect::<Vec<_>>(), snapshot);
        }
    }

    #[test]
    fn ram_shared_pages_frame_zero_and_the_cap() {
        // A RAM entry ending inside a reserved page: that page is not probed.
        let e = [
            E820Entry {
                addr: 0,
                size: 0x9f800,
                kind: 1,
            },
            E820Entry {
                addr: 0x9f800,
                size: 0x800 + 0x1000,
                kind: 2,
            },
            E820Entry {
                addr: 0x1_0000_0000,
                size: (MAX_CANDIDATES + 10) << 12,
                kind: 2,
            },
        ];
        let map = MemoryMap::from_e820(&e).unwrap();
        // The group around frame 3 lies in RAM: nothing of it is probed.
        let (c, skipped) = candidates(&map, &[Gfn(3)]);
        assert_eq!(c[0], range(0xa0, 1));
        assert_eq!(c[1].len().0, MAX_CANDIDATES - 1);
        assert_eq!(skipped, 11);
        // Frame 0 never is (a reserved range from 0).
        let e0 = [
            E820Entry {
                addr: 0,
                size: 0x3000,
                kind: 2,
            },
            E820Entry {
                addr: 0x3000,
                size: 0x10000,
                kind: 1,
            },
        ];
        let (c, _) = candidates(&MemoryMap::from_e820(&e0).unwrap(), &[]);
        assert_eq!(c, [range(1, 2)]);
    }

    #[test]
    fn other_copy_errors_are_errors() {
        let (m, _) = xl_domu();
        // The sink frame is not RAM: every copy would fail with bad_page on
        // the destination, which must not pass for "unpopulated".
        let r = probe(&m, &[range(XL_ACPI_GFN, 2)], Gfn(XL_SPECIAL_GFN - 1), 0);
        assert_eq!(
            r,
            Err(SpecialError::Copy {
                gfn: Gfn(XL_SPECIAL_GFN - 1),
                status: GntStatus::BadPage
            })
        );
        // A refused hypercall is reported.
        m.inject(crate::xen::model::Fault::Errno {
            op: crate::xen::model::Op::HvmGetParam,
            errno: crate::xen::Errno::EPERM,
        });
        assert_eq!(param_frames(&m), [Gfn(XL_SPECIAL_GFN + 4)]);
    }
}
