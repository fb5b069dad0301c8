//! The x86 memory-map sanitiser: an e820 (`XENMEM_memory_map`) or PVH
//! start-info map, read into a [`MemoryMap`] and turned into the initial
//! region table, against a reference computed page by page from the raw
//! entries.
//!
//! Input: one byte of flags (bit 0: start-info instead of e820, bit 1: Arm's
//! gap policy, bits 2-3: the mapping limit, bit 7: compact entries), then
//! entries: packed 20-byte e820 entries (`addr`, `size`, `type`,
//! little-endian; the seed is a real dump), or with bit 7 five-byte entries
//! (`addr` and `size` in 256-byte units, `type`) whose ranges overlap and
//! split pages densely.
//!
//! The reference, per page `p` below the table's limit: RAM if the union
//! of the RAM entries covers the whole page and no other entry touches it;
//! otherwise the highest-priority non-RAM entry touching it (types 5 > 4 >
//! 3 > 2 and unknown); otherwise a gap (MMIO below 4 GiB on x86, a hole
//! above; MMIO everywhere on Arm). `partial_ram_pages` is the number of
//! pages a RAM entry touches without the RAM entries together covering it.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use xenmem::addr::{Gfn, PAGE_SIZE};
use xenmem::layout::{initial_table, partial_ram_pages, GapPolicy, LayoutError};
use xenmem::memmap::{MemKind, MemMapError, MemoryMap, MAX_RANGES};
use xenmem::region::{RegionFlags, RegionKind, ReservedUse, MAX_FRAME};
use xenmem::xen::abi::{E820Entry, HvmMemmapEntry};

const FOUR_GIB_FRAME: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
struct Raw {
    addr: u64,
    size: u64,
    kind: u32,
}

fn entries(data: &[u8], compact: bool) -> Vec<Raw> {
    if compact {
        data.chunks_exact(5)
            .map(|c| Raw {
                addr: u64::from(u16::from_le_bytes([c[0], c[1]])) * 256,
                size: u64::from(u16::from_le_bytes([c[2], c[3]])) * 256,
                kind: u32::from(c[4] % 7),
            })
            .collect()
    } else {
        data.chunks_exact(20)
            .map(|c| Raw {
                addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                size: u64::from_le_bytes(c[8..16].try_into().unwrap()),
                kind: u32::from_le_bytes(c[16..20].try_into().unwrap()),
            })
            .collect()
    }
}

/// The reference's own reading of an e820 type: (is RAM, priority).
fn class(kind: u32) -> (bool, u8) {
    match kind {
        1 => (true, 1),
        3 => (false, 3),
        4 => (false, 4),
        5 => (false, 5),
        _ => (false, 2),
    }
}

fn table_kind(prio: u8) -> (RegionKind, RegionFlags) {
    match prio {
        1 => (
            RegionKind::Ram,
            RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        ),
        2 => (
            RegionKind::Reserved(ReservedUse::Firmware),
            RegionFlags::empty(),
        ),
        3 | 4 => (
            RegionKind::Reserved(ReservedUse::Acpi),
            RegionFlags::empty(),
        ),
        _ => (
            RegionKind::Reserved(ReservedUse::Unusable),
            RegionFlags::empty(),
        ),
    }
}

struct Reference {
    /// Non-empty entries as byte ranges `[start, end)` (u128: no overflow).
    ranges: Vec<(u128, u128, u32)>,
    /// The union of the RAM entries, merged.
    ram: Vec<(u128, u128)>,
}

impl Reference {
    fn new(ranges: Vec<(u128, u128, u32)>) -> Self {
        let mut r: Vec<(u128, u128)> = ranges
            .iter()
            .filter(|e| class(e.2).0)
            .map(|e| (e.0, e.1))
            .collect();
        r.sort();
        let mut ram: Vec<(u128, u128)> = Vec::new();
        for (s, e) in r {
            match ram.last_mut() {
                Some(l) if s <= l.1 => l.1 = l.1.max(e),
                _ => ram.push((s, e)),
            }
        }
        Reference { ranges, ram }
    }

    fn page(p: u64) -> (u128, u128) {
        let s = u128::from(p) * u128::from(PAGE_SIZE);
        (s, s + u128::from(PAGE_SIZE))
    }

    fn ram_covers(&self, p: u64) -> bool {
        let (s, e) = Self::page(p);
        self.ram.iter().any(|&(a, b)| a <= s && e <= b)
    }

    /// The winning priority of page `p`, if any entry claims it.
    fn winner(&self, p: u64) -> Option<u8> {
        let (s, e) = Self::page(p);
        let mut best = None;
        for &(a, b, k) in &self.ranges {
            let (ram, prio) = class(k);
            if !ram && a < e && s < b {
                best = best.max(Some(prio));
            }
        }
        if best.is_none() && self.ram_covers(p) {
            best = Some(1);
        }
        best
    }
}

fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let start_info = flags & 1 != 0;
    let policy = if flags & 2 != 0 {
        GapPolicy::DeviceTree
    } else {
        GapPolicy::X86
    };
    let limit = Gfn(match (flags >> 2) & 3 {
        0 => 0,
        1 => FOUR_GIB_FRAME + 5,
        2 => MAX_FRAME - 1,
        _ => u64::MAX,
    });
    let raw = entries(rest, flags & 0x80 != 0);

    let map = if start_info {
        let e: Vec<HvmMemmapEntry> = raw
            .iter()
            .map(|r| HvmMemmapEntry {
                addr: r.addr,
                size: r.size,
                kind: r.kind,
                reserved: 0,
            })
            .collect();
        MemoryMap::from_start_info(&e)
    } else {
        let e: Vec<E820Entry> = raw
            .iter()
            .map(|r| E820Entry {
                addr: r.addr,
                size: r.size,
                kind: r.kind,
            })
            .collect();
        MemoryMap::from_e820(&e)
    };

    // Reading the map: empty entries dropped, overflow and too many refused.
    let mut want_err = None;
    let mut kept = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        if r.size == 0 {
            continue;
        }
        if r.addr.checked_add(r.size).is_none() {
            want_err = Some(MemMapError::Overflow { index: i });
            break;
        }
        if kept.len() == MAX_RANGES {
            want_err = Some(MemMapError::TooMany);
            break;
        }
        kept.push((
            u128::from(r.addr),
            u128::from(r.addr) + u128::from(r.size),
            r.kind,
        ));
    }
    let map = match (map, want_err) {
        (Err(e), Some(w)) => {
            assert_eq!(e, w);
            return;
        }
        (Ok(m), None) => m,
        (got, want) => panic!("reading the map: {got:?}, expected {want:?}"),
    };
    assert_eq!(map.ranges().len(), kept.len());
    for (r, k) in map.ranges().iter().zip(&kept) {
        assert_eq!((u128::from(r.start.0), u128::from(r.end.0)), (k.0, k.1));
        assert_eq!(r.kind == MemKind::Ram, class(k.2).0);
    }

    let reference = Reference::new(kept.clone());

    // partial_ram_pages.
    let mut partial = BTreeSet::new();
    for &(a, b, k) in &kept {
        if !class(k).0 {
            continue;
        }
        let ps = (a / u128::from(PAGE_SIZE)) as u64;
        let pe = ((b - 1) / u128::from(PAGE_SIZE)) as u64;
        for p in [ps, pe] {
            let (s, e) = Reference::page(p);
            let whole_by_this = a <= s && e <= b;
            if !whole_by_this && !reference.ram_covers(p) {
                partial.insert(p);
            }
        }
    }
    assert_eq!(
        partial_ram_pages(&map),
        partial.len() as u64,
        "partial_ram_pages"
    );

    // The table. Interesting page boundaries: every entry's first and last
    // page and the pages after them, 4 GiB, the limit, MAX_FRAME.
    let mut points = BTreeSet::from([0u64, FOUR_GIB_FRAME, MAX_FRAME]);
    let mut span_end = 0u64;
    for &(a, b, _) in &kept {
        for x in [a, b - 1] {
            let p = (x / u128::from(PAGE_SIZE)).min(u128::from(MAX_FRAME)) as u64;
            points.insert(p);
            points.insert((p + 1).min(MAX_FRAME));
        }
    }
    // Where the claimed pages end (the last interval with a winner).
    let pts: Vec<u64> = points.iter().copied().collect();
    let mut any_ram = false;
    for w in pts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if let Some(prio) = reference.winner(a) {
            span_end = b;
            any_ram |= prio == 1;
        }
        // Within an interval every page is alike; check that the reference
        // agrees at both ends.
        assert_eq!(reference.winner(a), reference.winner(b - 1));
    }
    let top = span_end.max(limit.0).min(MAX_FRAME);

    let t = match initial_table(&map, policy, limit, &[]) {
        Err(LayoutError::NoRam) => {
            assert!(!any_ram, "NoRam, but the reference has RAM pages");
            return;
        }
        Err(e) => panic!("initial_table: {e:?}"),
        Ok(t) => t,
    };
    assert!(any_ram, "a table without RAM in the reference");
    assert_eq!(t.check_invariants(), Ok(()));
    // The table covers exactly [0, top).
    let mut at = 0;
    for r in t.iter() {
        assert_eq!(r.range.start().0, at, "a gap in the table at {at:#x}");
        at = r.range.end().0;
    }
    assert_eq!(at, top, "the table ends at {at:#x}, expected {top:#x}");

    let mut pts = pts;
    pts.push(top);
    pts.sort_unstable();
    pts.dedup();
    for w in pts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a >= top {
            break;
        }
        for p in [a, b - 1] {
            let want = match reference.winner(p) {
                Some(prio) => table_kind(prio),
                None => (
                    match policy {
                        GapPolicy::X86 if p >= FOUR_GIB_FRAME => RegionKind::Hole,
                        _ => RegionKind::Mmio,
                    },
                    RegionFlags::empty(),
                ),
            };
            let r = t.region_at(Gfn(p)).expect("covered");
            assert_eq!((r.kind, r.flags), want, "page {p:#x}");
        }
    }
    let ram_pages: u64 = pts
        .windows(2)
        .filter(|w| w[0] < top && reference.winner(w[0]) == Some(1))
        .map(|w| w[1] - w[0])
        .sum();
    assert_eq!(t.count(RegionKind::Ram).0, ram_pages, "RAM pages");
}

fuzz_target!(|data: &[u8]| check(data));
