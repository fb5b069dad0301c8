//! The initial region table, built from the firmware memory map.
//!
//! The map is sanitised the way Mini-OS's and Linux's e820 code do it: sorted,
//! overlaps resolved by type priority (the higher e820 type wins, so any
//! reserved type beats RAM, and Xen's free `/hypervisor` space loses to
//! everything), RAM rounded inwards to whole pages and everything else
//! outwards. Gaps become [`RegionKind::Hole`] where guest-physical space is
//! free for mappings, and [`RegionKind::Mmio`] where devices may live (see
//! [`GapPolicy`]). Then the agent's own image, boot data and other ranges it
//! must keep are marked reserved.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Gfn, PAGE_SHIFT, PAGE_SIZE};
use crate::alloc_util::{try_collect, try_with_capacity, OutOfMemory, TryVec};
use crate::memmap::{MemKind, MemRange, MemoryMap};
use crate::region::{
    Change, FrameRange, Region, RegionError, RegionFlags, RegionKind, RegionTable, ReservedUse,
    MAX_FRAME,
};

/// What unlisted guest-physical space is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapPolicy {
    /// x86: gaps below 4 GiB may hold devices (the PCI hole, APICs) and are
    /// MMIO; gaps above 4 GiB are holes.
    X86,
    /// Arm: the device tree lists RAM and Xen's free region; every other gap
    /// may be a device and is MMIO.
    DeviceTree,
}

/// Why the initial table could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A range the agent must reserve is not inside RAM the map describes.
    ReserveOutsideRam {
        /// What it is.
        what: ReservedUse,
        /// Its first frame.
        start: Gfn,
    },
    /// A table operation failed (running out of memory as the table
    /// grows among them: [`RegionError::OutOfMemory`]).
    Table(RegionError),
    /// The map has no RAM.
    NoRam,
    /// The heap has no room for the sanitised copy of the map.
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::ReserveOutsideRam { what, start } => {
                write!(f, "{what:?} at frame {start} is not in RAM")
            }
            LayoutError::Table(e) => write!(f, "{e}"),
            LayoutError::NoRam => write!(f, "the memory map has no RAM"),
            LayoutError::OutOfMemory(e) => write!(f, "{e}"),
        }
    }
}

impl From<RegionError> for LayoutError {
    fn from(e: RegionError) -> Self {
        LayoutError::Table(e)
    }
}

impl From<OutOfMemory> for LayoutError {
    fn from(e: OutOfMemory) -> Self {
        LayoutError::OutOfMemory(e)
    }
}

/// A memory-map entry on whole pages, with its priority.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
    kind: MemKind,
}

/// Higher wins where entries overlap.
const fn priority(k: MemKind) -> u8 {
    match k {
        MemKind::Hypervisor => 0,
        MemKind::Ram => 1,
        MemKind::Reserved => 2,
        MemKind::Acpi => 3,
        MemKind::Nvs => 4,
        MemKind::Unusable => 5,
    }
}

fn region_kind(k: MemKind) -> (RegionKind, RegionFlags) {
    let rw = RegionFlags::READ | RegionFlags::WRITE;
    match k {
        MemKind::Ram => (RegionKind::Ram, rw | RegionFlags::CACHEABLE),
        MemKind::Reserved => (
            RegionKind::Reserved(ReservedUse::Firmware),
            RegionFlags::empty(),
        ),
        MemKind::Acpi | MemKind::Nvs => (
            RegionKind::Reserved(ReservedUse::Acpi),
            RegionFlags::empty(),
        ),
        MemKind::Unusable => (
            RegionKind::Reserved(ReservedUse::Unusable),
            RegionFlags::empty(),
        ),
        MemKind::Hypervisor => (RegionKind::Hole, RegionFlags::empty()),
    }
}

const SANITISED: &str = "sanitised memory map";

/// Sanitise `map` into sorted, non-overlapping, page-granular spans.
/// Whether every byte of page `page` is RAM in the union of the map's RAM
/// ranges (two RAM entries may meet inside a page: the page is whole RAM).
/// Quadratic in the ranges, which are at most [`MAX_RANGES`]; allocates
/// nothing.
///
/// [`MAX_RANGES`]: crate::memmap::MAX_RANGES
fn whole_ram_page(map: &MemoryMap, page: u64) -> bool {
    let (Some(mut at), Some(end)) = (
        page.checked_mul(PAGE_SIZE),
        page.checked_add(1).and_then(|p| p.checked_mul(PAGE_SIZE)),
    ) else {
        return false;
    };
    // Extend the covered prefix with any RAM range that contains its end.
    while at < end {
        match map
            .ranges()
            .iter()
            .filter(|r| r.kind == MemKind::Ram && r.start.0 <= at && at < r.end.0)
            .map(|r| r.end.0)
            .max()
        {
            Some(e) => at = e,
            None => return false,
        }
    }
    true
}

/// The RAM range's whole pages `[first, end)`, counting a page it shares
/// with other RAM ranges (entries meeting inside a page) when together
/// they cover it.
fn ram_pages(map: &MemoryMap, r: &MemRange) -> (u64, u64) {
    let head = r.start.0 / PAGE_SIZE;
    let first = if r.start.is_page_aligned() || whole_ram_page(map, head) {
        head
    } else {
        head + 1
    };
    let tail = r.end.0 / PAGE_SIZE;
    let end = if !r.end.is_page_aligned() && whole_ram_page(map, tail) {
        tail + 1
    } else {
        tail
    };
    (first, end)
}

fn sanitise(map: &MemoryMap) -> Result<Vec<Span>, OutOfMemory> {
    // Page-granular spans: RAM inwards (a page RAM entries share counts when
    // they cover it together), the rest outwards.
    let mut spans: Vec<Span> = try_collect(
        map.ranges().iter().filter_map(|r| {
            let (s, e) = if r.kind == MemKind::Ram {
                ram_pages(map, r)
            } else {
                (r.start.0 / PAGE_SIZE, r.end.0.div_ceil(PAGE_SIZE))
            };
            let e = e.min(MAX_FRAME);
            (s < e).then_some(Span {
                start: s,
                end: e,
                kind: r.kind,
            })
        }),
        SANITISED,
    )?;
    // Sweep over the boundaries: between two consecutive boundaries the
    // highest-priority span covering the interval wins.
    let mut points: Vec<u64> = try_with_capacity(2 * spans.len(), SANITISED)?;
    for s in &spans {
        points.try_extend_from_slice(&[s.start, s.end], SANITISED)?;
    }
    points.sort_unstable();
    points.dedup();
    // Unstable (a stable sort allocates): spans that start together are
    // told apart by priority below, which differs with the kind.
    spans.sort_unstable_by_key(|s| s.start);
    let mut out: Vec<Span> = Vec::new();
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let best = spans
            .iter()
            .take_while(|s| s.start <= a)
            .filter(|s| s.end > a)
            .max_by_key(|s| priority(s.kind));
        if let Some(s) = best {
            match out.last_mut() {
                Some(l) if l.end == a && l.kind == s.kind => l.end = b,
                _ => out.try_push(
                    Span {
                        start: a,
                        end: b,
                        kind: s.kind,
                    },
                    SANITISED,
                )?,
            }
        }
    }
    Ok(out)
}

/// How a range the agent keeps is marked reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveRule {
    /// The whole range must be RAM (the agent's image).
    InRam,
    /// The whole range must lie in an already reserved range of this use
    /// (the heap, inside the image), which it is carved out of.
    Carve(ReservedUse),
    /// Only the parts that are RAM are reserved; the rest is left as it is
    /// (boot data that Xen may put in RAM or in reserved memory).
    RamParts,
}

/// A range the agent keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The frames.
    pub range: FrameRange,
    /// What it holds.
    pub what: ReservedUse,
    /// How to mark it.
    pub rule: ReserveRule,
}

/// Pages the sanitised table does not count as RAM although the raw map has
/// RAM in them: RAM entries that start or end inside a page (x86 PVH dom0's
/// last RAM page shares a page with the ACPI tables). Xen counts such a page
/// in the reservation; the table cannot give it out.
pub fn partial_ram_pages(map: &MemoryMap) -> u64 {
    let rams = || {
        map.ranges()
            .iter()
            .filter(|r| r.kind == MemKind::Ram && r.start < r.end)
    };
    // The pages a RAM range starts or ends inside of.
    let edges = |r: &MemRange| {
        let head = (!r.start.is_page_aligned()).then_some(r.start.0 / PAGE_SIZE);
        let tail = (!r.end.is_page_aligned()).then_some((r.end.0 - 1) / PAGE_SIZE);
        [head, tail.filter(|&t| Some(t) != head)]
    };
    // Each such page once (the first range that has it), and only if the
    // RAM ranges together do not cover it.
    rams()
        .enumerate()
        .flat_map(|(i, r)| edges(r).into_iter().flatten().map(move |p| (i, p)))
        .filter(|&(i, p)| !rams().take(i).any(|q| edges(q).contains(&Some(p))))
        .filter(|&(_, p)| !whole_ram_page(map, p))
        .count() as u64
}

/// Build the initial table: the sanitised map, gaps as holes or MMIO up to
/// `limit` (one past the highest frame the guest may use for mappings; at
/// least the end of the map), then `reserve` (what the agent must keep: its
/// image, heap, boot data, ...) applied in order.
pub fn initial_table(
    map: &MemoryMap,
    policy: GapPolicy,
    limit: Gfn,
    reserve: &[Reservation],
) -> Result<RegionTable, LayoutError> {
    let spans = sanitise(map)?;
    if !spans.iter().any(|s| s.kind == MemKind::Ram) {
        return Err(LayoutError::NoRam);
    }
    let top = spans
        .last()
        .map_or(0, |s| s.end)
        .max(limit.0)
        .min(MAX_FRAME);
    let mut t = RegionTable::new();
    let mut at = 0u64;
    let gap = |t: &mut RegionTable, s: u64, e: u64| -> Result<(), RegionError> {
        const FOUR_GIB: u64 = 1 << (32 - PAGE_SHIFT);
        let mut add = |s: u64, e: u64, kind| {
            if s < e {
                t.add(Region::new(
                    FrameRange::from_frames(Gfn(s), Gfn(e))?,
                    kind,
                    RegionFlags::empty(),
                ))
            } else {
                Ok(())
            }
        };
        match policy {
            GapPolicy::DeviceTree => add(s, e, RegionKind::Mmio),
            GapPolicy::X86 => {
                let split = FOUR_GIB.clamp(s, e);
                add(s, split, RegionKind::Mmio)?;
                add(split, e, RegionKind::Hole)
            }
        }
    };
    for s in &spans {
        gap(&mut t, at, s.start)?;
        let (kind, flags) = region_kind(s.kind);
        t.add(Region::new(
            FrameRange::from_frames(Gfn(s.start), Gfn(s.end))?,
            kind,
            flags,
        ))?;
        at = s.end;
    }
    gap(&mut t, at, top)?;
    for r in reserve {
        reserve_one(&mut t, r)?;
    }
    Ok(t)
}

fn reserve_one(t: &mut RegionTable, r: &Reservation) -> Result<(), LayoutError> {
    let to = |expect| Change {
        kind: Some(RegionKind::Reserved(r.what)),
        set: RegionFlags::PINNED,
        expect: Some(expect),
        ..Change::default()
    };
    let outside = |e| match e {
        RegionError::UnexpectedKind { .. } | RegionError::NotCovered(_) => {
            LayoutError::ReserveOutsideRam {
                what: r.what,
                start: r.range.start(),
            }
        }
        other => LayoutError::Table(other),
    };
    match r.rule {
        ReserveRule::InRam => t.modify(r.range, to(RegionKind::Ram)).map_err(outside),
        ReserveRule::Carve(from) => t
            .modify(r.range, to(RegionKind::Reserved(from)))
            .map_err(outside),
        ReserveRule::RamParts => {
            // One RAM part at a time, found afresh: each change leaves the
            // parts after it as they were.
            let mut from = r.range.start();
            loop {
                let part = t
                    .overlapping_regions(r.range)
                    .filter(|x| x.kind == RegionKind::Ram && x.range.end() > from)
                    .find_map(|x| {
                        FrameRange::from_frames(
                            x.range.start().max(from),
                            x.range.end().min(r.range.end()),
                        )
                        .ok()
                    });
                let Some(p) = part else {
                    return Ok(());
                };
                t.modify(p, to(RegionKind::Ram))?;
                from = p.end();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{GuestPhysAddr, PageCount};
    use crate::xen::abi::E820Entry;

    fn e(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    fn kinds(t: &RegionTable) -> Vec<(u64, u64, &'static str)> {
        t.iter()
            .map(|r| (r.range.start().0, r.range.end().0, r.kind.name()))
            .collect()
    }

    /// Two RAM entries meeting inside a page (issue 14's fuzzing): the page
    /// is whole RAM, in the table once and never partial.
    #[test]
    fn ram_entries_meeting_inside_a_page_keep_the_page() {
        let map = MemoryMap::from_e820(&[
            e(0x100000, 0x100800, 1), // ends inside page 0x200
            e(0x200800, 0xff800, 1),  // starts there: together they cover it
            e(0x300000, 0x800, 1),    // a lone half page: partial
        ])
        .unwrap();
        let t = initial_table(&map, GapPolicy::X86, Gfn(0x400), &[]).unwrap();
        assert_eq!(t.count(RegionKind::Ram), PageCount(0x200));
        assert_eq!(
            kinds(&t)
                .into_iter()
                .filter(|k| k.2 == "ram")
                .collect::<Vec<_>>(),
            [(0x100, 0x300, "ram")]
        );
        assert_eq!(partial_ram_pages(&map), 1);
        t.check_invariants().unwrap();
    }

    #[test]
    fn overlapping_unsorted_unaligned_e820() {
        let map = MemoryMap::from_e820(&[
            e(0x100000, 0x7f00000, 1),
            e(0, 0x9fc00, 1),        // RAM rounded in: 0..0x9f
            e(0x9fc00, 0x400, 2),    // reserved rounded out: 0x9f..0xa0
            e(0xf0000, 0x10000, 2),  // BIOS
            e(0x7000000, 0x2000, 2), // reserved inside RAM wins
            e(0xfc000000, 0x1000, 3),
            e(0x4000_0000, 0, 1), // empty
        ])
        .unwrap();
        let t = initial_table(&map, GapPolicy::X86, Gfn(0x110000), &[]).unwrap();
        assert_eq!(
            kinds(&t),
            [
                (0, 0x9f, "ram"),
                (0x9f, 0xa0, "reserved:firmware"),
                (0xa0, 0xf0, "mmio"),
                (0xf0, 0x100, "reserved:firmware"),
                (0x100, 0x7000, "ram"),
                (0x7000, 0x7002, "reserved:firmware"),
                (0x7002, 0x8000, "ram"),
                (0x8000, 0xfc000, "mmio"),
                (0xfc000, 0xfc001, "reserved:acpi"),
                (0xfc001, 0x100000, "mmio"),
                (0x100000, 0x110000, "hole"),
            ]
        );
        t.check_invariants().unwrap();
        // RAM ends inside page 0x9f (at 0x9fc00): one page partly RAM.
        assert_eq!(partial_ram_pages(&map), 1);
    }

    #[test]
    fn device_tree_layout_with_reservations() {
        let map = MemoryMap::from_fdt(include_bytes!("../tests/data/domu-like.dtb")).unwrap();
        let image = FrameRange::new(Gfn(0x40000), PageCount(0x100)).unwrap();
        let heap = FrameRange::new(Gfn(0x40080), PageCount(0x40)).unwrap();
        let dtb = FrameRange::new(Gfn(0x47fff), PageCount(0x10)).unwrap();
        let reserve = [
            Reservation {
                range: image,
                what: ReservedUse::Image,
                rule: ReserveRule::InRam,
            },
            Reservation {
                range: heap,
                what: ReservedUse::Heap,
                rule: ReserveRule::Carve(ReservedUse::Image),
            },
            Reservation {
                range: dtb,
                what: ReservedUse::Boot,
                rule: ReserveRule::RamParts,
            },
        ];
        let t = initial_table(&map, GapPolicy::DeviceTree, Gfn(0), &reserve).unwrap();
        assert_eq!(
            kinds(&t),
            [
                (0, 0x38000, "mmio"),
                (0x38000, 0x39000, "hole"),
                (0x39000, 0x40000, "mmio"),
                (0x40000, 0x40080, "reserved:image"),
                (0x40080, 0x400c0, "reserved:heap"),
                (0x400c0, 0x40100, "reserved:image"),
                (0x40100, 0x47fff, "ram"),
                (0x47fff, 0x48000, "reserved:boot"),
                (0x48000, 0x50000, "mmio"),
                (0x50000, 0x50200, "reserved:firmware"),
            ]
        );
        let r = t.info(GuestPhysAddr(0x4000_0000)).unwrap();
        assert!(r.flags.contains(RegionFlags::PINNED));
    }

    #[test]
    fn real_x86_pvh_dom0_map_accounts_for_xens_reservation() {
        let map = MemoryMap::from_e820(&crate::memmap::real_x86_pvh_dom0_e820()).unwrap();
        let t = initial_table(&map, GapPolicy::X86, Gfn(0x10061), &[]).unwrap();
        // Xen said current_reservation = 65536 with this map.
        let ram = t.count(RegionKind::Ram).0;
        assert_eq!(ram + partial_ram_pages(&map), 65536);
        assert_eq!(
            t.info(GuestPhysAddr(0x1006_0000)).unwrap().kind,
            RegionKind::Reserved(ReservedUse::Acpi)
        );
        assert_eq!(
            t.info(GuestPhysAddr(0x2_0000_0000)).unwrap().kind,
            RegionKind::Hole
        );
        assert_eq!(
            t.info(GuestPhysAddr(0xc000_0000)).unwrap().kind,
            RegionKind::Mmio
        );
    }

    #[test]
    fn real_arm64_domu_tree_has_holes_for_mappings() {
        let map =
            MemoryMap::from_fdt(include_bytes!("../tests/data/xen-4.17-arm64-domu.dtb")).unwrap();
        let t = initial_table(&map, GapPolicy::DeviceTree, Gfn(0x48000), &[]).unwrap();
        assert_eq!(t.count(RegionKind::Ram), PageCount(32768));
        let hole = t
            .find_hole(PageCount(16), crate::addr::Order::new(0).unwrap(), Gfn(0))
            .unwrap();
        assert_eq!(
            hole.start_addr(),
            GuestPhysAddr(0x3800_0000),
            "the grant-table region comes first"
        );
    }

    #[test]
    fn reservations_must_be_in_ram() {
        let map = MemoryMap::from_e820(&[e(0, 0x100000, 1), e(0x100000, 0x1000, 2)]).unwrap();
        let bad = FrameRange::new(Gfn(0xff), PageCount(2)).unwrap();
        let r = Reservation {
            range: bad,
            what: ReservedUse::Image,
            rule: ReserveRule::InRam,
        };
        assert_eq!(
            initial_table(&map, GapPolicy::X86, Gfn(0), &[r]).unwrap_err(),
            LayoutError::ReserveOutsideRam {
                what: ReservedUse::Image,
                start: Gfn(0xff)
            }
        );
        let heap = Reservation {
            range: bad,
            what: ReservedUse::Heap,
            rule: ReserveRule::Carve(ReservedUse::Image),
        };
        assert!(
            initial_table(&map, GapPolicy::X86, Gfn(0), &[heap]).is_err(),
            "the heap must lie in the image"
        );
        let boot = Reservation {
            range: bad,
            what: ReservedUse::Boot,
            rule: ReserveRule::RamParts,
        };
        let t = initial_table(&map, GapPolicy::X86, Gfn(0), &[boot]).unwrap();
        assert_eq!(
            t.count(RegionKind::Reserved(ReservedUse::Boot)),
            PageCount(1)
        );
        let none = MemoryMap::from_e820(&[e(0, 0x1000, 2)]).unwrap();
        assert_eq!(
            initial_table(&none, GapPolicy::X86, Gfn(0), &[]).unwrap_err(),
            LayoutError::NoRam
        );
    }
}
