//! Property tests: long random sequences of region-table operations checked,
//! after every step, against a naive page-by-page model and the table's
//! invariants.

use std::collections::BTreeMap;

use proptest::prelude::*;
use xenmem::addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount};
use xenmem::region::{
    Backing, Change, FrameRange, GrantRef, Op, Region, RegionError, RegionFlags, RegionKind,
    RegionTable, ReservedUse,
};

const UNIVERSE: u64 = 96;

type Page = (RegionKind, RegionFlags, Backing);

#[derive(Clone, Default, Debug, PartialEq)]
struct Model(BTreeMap<u64, Page>);

impl Model {
    fn add(&mut self, r: &Region) -> Result<(), String> {
        if r.backing.offset(r.range.len().0 - 1).is_none() {
            return Err("backing".into());
        }
        for g in r.range.start().0..r.range.end().0 {
            if let Some((k, _, _)) = self.0.get(&g) {
                if !k.replaceable_by(r.kind) {
                    return Err(format!("overlap@{g}"));
                }
            }
        }
        for (i, g) in (r.range.start().0..r.range.end().0).enumerate() {
            self.0
                .insert(g, (r.kind, r.flags, r.backing.offset(i as u64).unwrap()));
        }
        Ok(())
    }

    fn covered(&self, range: FrameRange, expect: Option<RegionKind>) -> Result<(), String> {
        for g in range.start().0..range.end().0 {
            match self.0.get(&g) {
                None => return Err(format!("missing@{g}")),
                Some((k, _, _)) if expect.is_some_and(|e| e != *k) => {
                    return Err(format!("kind@{g}"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn modify(&mut self, range: FrameRange, c: &Change) -> Result<(), String> {
        if let Some(b) = c.backing {
            if b.offset(range.len().0 - 1).is_none() {
                return Err("backing".into());
            }
        }
        self.covered(range, c.expect)?;
        for (i, g) in (range.start().0..range.end().0).enumerate() {
            let p = self.0.get_mut(&g).unwrap();
            if let Some(k) = c.kind {
                p.0 = k;
            }
            p.1 = (p.1 | c.set) & !c.clear;
            if let Some(b) = c.backing {
                p.2 = b.offset(i as u64).unwrap();
            }
        }
        Ok(())
    }

    fn delete(&mut self, range: FrameRange) -> Result<(), String> {
        self.covered(range, None)?;
        for g in range.start().0..range.end().0 {
            self.0.remove(&g);
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Add(r) => self.add(r),
            Op::Modify(range, c) => self.modify(*range, c),
            Op::Delete(range) => self.delete(*range),
        }
    }
}

fn pages_of(t: &RegionTable) -> Model {
    let mut m = Model::default();
    for r in t.iter() {
        for (i, g) in (r.range.start().0..r.range.end().0).enumerate() {
            m.0.insert(g, (r.kind, r.flags, r.backing.offset(i as u64).unwrap()));
        }
    }
    m
}

/// The model's error tag for a table error, so that both sides agree on what
/// went wrong and where.
fn tag(e: &RegionError, t: &RegionTable, op: &Op) -> String {
    match e {
        RegionError::Overlap { existing } => {
            // The first conflicting frame lies in `existing`.
            let Op::Add(r) = op else {
                return "overlap-not-add".into();
            };
            let first = (r.range.start().0..r.range.end().0)
                .find(|g| {
                    t.region_at(Gfn(*g))
                        .is_some_and(|x| !x.kind.replaceable_by(r.kind))
                })
                .unwrap();
            assert!(
                existing.range.contains(Gfn(first)),
                "{existing:?} does not hold {first}"
            );
            format!("overlap@{first}")
        }
        RegionError::NotCovered(g) => format!("missing@{}", g.0),
        RegionError::UnexpectedKind { at, .. } => format!("kind@{}", at.0),
        RegionError::BackingOverflow => "backing".into(),
        other => format!("{other:?}"),
    }
}

fn kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![
        Just(RegionKind::Ram),
        Just(RegionKind::Hole),
        Just(RegionKind::Grant),
        Just(RegionKind::Foreign),
        Just(RegionKind::Mmio),
        Just(RegionKind::Contiguous),
        Just(RegionKind::Reserved(ReservedUse::Heap)),
    ]
}

fn flags() -> impl Strategy<Value = RegionFlags> {
    (0u16..8).prop_map(RegionFlags::from_bits_truncate)
}

fn backing() -> impl Strategy<Value = Backing> {
    prop_oneof![
        Just(Backing::None),
        (0u64..200).prop_map(|m| Backing::Machine(Mfn(m))),
        Just(Backing::Machine(Mfn(u64::MAX - 2))),
        (0u16..2, 0u32..50).prop_map(|(d, g)| Backing::Grant {
            dom: DomId(d),
            gref: GrantRef(g)
        }),
        (0u64..50).prop_map(|g| Backing::Foreign {
            dom: DomId(1),
            gfn: Gfn(g)
        }),
    ]
}

fn range() -> impl Strategy<Value = FrameRange> {
    (0..UNIVERSE, 1u64..24).prop_map(|(s, n)| FrameRange::new(Gfn(s), PageCount(n)).unwrap())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (range(), kind(), flags(), backing()).prop_map(|(range, kind, flags, backing)| Op::Add(Region { range, kind, flags, backing })),
        3 => (range(), proptest::option::of(kind()), flags(), flags(), proptest::option::of(backing()), proptest::option::weighted(0.2, kind()))
            .prop_map(|(r, kind, set, clear, backing, expect)| Op::Modify(r, Change { kind, set, clear, backing, expect })),
        1 => range().prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn table_equals_page_model(steps in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..60)) {
        let mut t = RegionTable::new();
        let mut m = Model::default();
        for batch in &steps {
            let before = t.clone();
            let result = if batch.len() == 1 {
                t.apply(batch).map_err(|(e, _)| e)
            } else {
                t.apply(batch).map_err(|(e, _)| e)
            };
            // Model: apply all or nothing.
            let mut m2 = m.clone();
            let mut model_err = None;
            for (i, op) in batch.iter().enumerate() {
                if let Err(e) = m2.apply(op) {
                    model_err = Some((e, i));
                    break;
                }
            }
            match (&result, &model_err) {
                (Ok(()), None) => m = m2,
                (Err(e), Some((me, i))) => {
                    // Re-run the batch up to the failing op to name the error the same way.
                    let mut probe = before.clone();
                    probe.apply(&batch[..*i]).unwrap();
                    prop_assert_eq!(&tag(e, &probe, &batch[*i]), me);
                    prop_assert_eq!(&t, &before, "a failed batch changed the table");
                }
                _ => prop_assert!(false, "table {:?} vs model {:?} for {:?}", result, model_err, batch),
            }
            prop_assert_eq!(pages_of(&t), m.clone());
            prop_assert_eq!(t.check_invariants(), Ok(()));
        }
    }

    #[test]
    fn info_returns_the_region_holding_the_address(steps in proptest::collection::vec(op(), 1..40), probe in 0..UNIVERSE * 4096) {
        let mut t = RegionTable::new();
        for op in &steps {
            let _ = t.apply(std::slice::from_ref(op));
        }
        let a = GuestPhysAddr(probe);
        match t.info(a) {
            Some(r) => prop_assert!(r.range.start_addr() <= a && a < r.range.end_addr()),
            None => prop_assert!(t.iter().all(|r| !r.range.contains(a.frame()))),
        }
    }
}

fn fr(s: u64, n: u64) -> FrameRange {
    FrameRange::new(Gfn(s), PageCount(n)).unwrap()
}

fn ram(s: u64, n: u64) -> Region {
    Region::new(
        fr(s, n),
        RegionKind::Ram,
        RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
    )
}

#[test]
fn range_errors() {
    assert_eq!(
        FrameRange::new(Gfn(1), PageCount(0)),
        Err(RegionError::Empty)
    );
    assert_eq!(
        FrameRange::new(Gfn(u64::MAX), PageCount(2)),
        Err(RegionError::Overflow)
    );
    assert_eq!(
        FrameRange::new(Gfn(1 << 40), PageCount(1)),
        Err(RegionError::Overflow)
    );
    assert_eq!(
        FrameRange::from_frames(Gfn(5), Gfn(5)),
        Err(RegionError::Empty)
    );
    assert_eq!(
        FrameRange::from_addrs(GuestPhysAddr(0x1000), GuestPhysAddr(0x2800)),
        Err(RegionError::Unaligned(GuestPhysAddr(0x2800)))
    );
    assert_eq!(
        FrameRange::from_addrs(GuestPhysAddr(0x1000), GuestPhysAddr(0x3000)),
        Ok(fr(1, 2))
    );
}

#[test]
fn add_merge_split_delete() {
    let mut t = RegionTable::new();
    t.add(ram(0, 16)).unwrap();
    t.add(ram(16, 16)).unwrap();
    assert_eq!(t.len(), 1, "identical neighbours merge");
    assert_eq!(
        t.add(ram(8, 1)),
        Err(RegionError::Overlap {
            existing: ram(0, 32)
        })
    );
    t.modify(
        fr(4, 4),
        Change {
            kind: Some(RegionKind::Reserved(ReservedUse::Heap)),
            ..Change::default()
        },
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    let info = t.info(GuestPhysAddr(0x5123)).unwrap();
    assert_eq!(
        (info.range, info.kind),
        (fr(4, 4), RegionKind::Reserved(ReservedUse::Heap))
    );
    assert_eq!(t.info(GuestPhysAddr(0x3000)).unwrap().range, fr(0, 4));
    t.modify(
        fr(4, 4),
        Change {
            kind: Some(RegionKind::Ram),
            ..Change::default()
        },
    )
    .unwrap();
    assert_eq!(t.len(), 1, "changing back merges again");
    t.delete(fr(10, 2)).unwrap();
    assert_eq!(
        t.iter().map(|r| r.range).collect::<Vec<_>>(),
        [fr(0, 10), fr(12, 20)]
    );
    assert_eq!(t.delete(fr(9, 2)), Err(RegionError::NotCovered(Gfn(10))));
    assert_eq!(
        t.modify(fr(30, 4), Change::default()),
        Err(RegionError::NotCovered(Gfn(32)))
    );
    assert!(t.info(GuestPhysAddr(0xa000)).is_none());
    t.check_invariants().unwrap();
}

#[test]
fn holes_become_mappings_but_ram_is_never_replaced() {
    let mut t = RegionTable::new();
    t.add(Region::new(
        fr(100, 50),
        RegionKind::Hole,
        RegionFlags::empty(),
    ))
    .unwrap();
    t.add(ram(0, 100)).unwrap();
    let g = Region {
        range: fr(110, 4),
        kind: RegionKind::Grant,
        flags: RegionFlags::READ,
        backing: Backing::Grant {
            dom: DomId(1),
            gref: GrantRef(8),
        },
    };
    t.add(g).unwrap();
    assert_eq!(t.info(GuestPhysAddr(112 << 12)).unwrap(), g);
    let over_ram = Region {
        range: fr(98, 4),
        ..g
    };
    assert!(matches!(t.add(over_ram), Err(RegionError::Overlap { .. })));
    assert_eq!(
        t.find_hole(PageCount(8), Order::new(3).unwrap(), Gfn(0)),
        Some(fr(120, 8))
    );
    assert_eq!(
        t.find_hole(PageCount(10), Order::new(0).unwrap(), Gfn(0)),
        Some(fr(100, 10))
    );
    assert_eq!(
        t.find_hole(PageCount(40), Order::new(0).unwrap(), Gfn(0)),
        None
    );
}

#[test]
fn machine_contiguity_is_kept() {
    let mut t = RegionTable::new();
    let c = |s, m| Region {
        range: fr(s, 4),
        kind: RegionKind::Contiguous,
        flags: RegionFlags::READ,
        backing: Backing::Machine(Mfn(m)),
    };
    t.add(c(0, 100)).unwrap();
    t.add(c(4, 104)).unwrap();
    assert_eq!(t.len(), 1, "machine-contiguous neighbours merge");
    t.add(c(8, 200)).unwrap();
    assert_eq!(
        t.len(),
        2,
        "a neighbour that is not contiguous in machine memory stays apart"
    );
    t.modify(
        fr(2, 1),
        Change {
            set: RegionFlags::PINNED,
            ..Change::default()
        },
    )
    .unwrap();
    let mid = t.info(GuestPhysAddr(2 << 12)).unwrap();
    assert_eq!(
        mid.backing,
        Backing::Machine(Mfn(102)),
        "a split keeps each piece's machine frame"
    );
    assert_eq!(
        t.info(GuestPhysAddr(3 << 12)).unwrap().backing,
        Backing::Machine(Mfn(103))
    );
}

#[test]
fn batches_are_all_or_nothing() {
    let mut t = RegionTable::new();
    t.add(ram(0, 64)).unwrap();
    let before = t.clone();
    let heap = Change {
        kind: Some(RegionKind::Reserved(ReservedUse::Heap)),
        expect: Some(RegionKind::Ram),
        ..Change::default()
    };
    let err = t.apply(&[
        Op::Modify(fr(0, 8), heap),
        Op::Delete(fr(8, 8)),
        Op::Modify(fr(4, 8), heap),
    ]);
    assert_eq!(
        err,
        Err((
            RegionError::UnexpectedKind {
                at: Gfn(4),
                found: RegionKind::Reserved(ReservedUse::Heap)
            },
            2
        ))
    );
    assert_eq!(t, before);
    t.apply(&[Op::Modify(fr(0, 8), heap), Op::Delete(fr(8, 8))])
        .unwrap();
    assert_eq!(
        t.count(RegionKind::Reserved(ReservedUse::Heap)),
        PageCount(8)
    );
    assert_eq!(t.count(RegionKind::Ram), PageCount(48));
}

#[test]
fn superpage_extents() {
    let mut t = RegionTable::new();
    t.add(ram(100, 1500)).unwrap();
    let ext: Vec<_> = t.aligned_ram_extents(Order::new(9).unwrap()).collect();
    assert_eq!(ext, [fr(512, 512), fr(1024, 512)]);
    t.modify(
        fr(600, 1),
        Change {
            set: RegionFlags::PINNED,
            ..Change::default()
        },
    )
    .unwrap();
    let ext: Vec<_> = t.aligned_ram_extents(Order::new(9).unwrap()).collect();
    assert_eq!(
        ext,
        [fr(1024, 512)],
        "a pinned frame takes its superpage out"
    );
}

#[test]
fn backing_overflow_is_refused() {
    let mut t = RegionTable::new();
    let r = Region {
        range: fr(0, 4),
        kind: RegionKind::Contiguous,
        flags: RegionFlags::empty(),
        backing: Backing::Machine(Mfn(u64::MAX - 1)),
    };
    assert_eq!(t.add(r), Err(RegionError::BackingOverflow));
    assert!(t.is_empty());
}

#[test]
fn frame_allocator_records_what_it_hands_out() {
    let mut t = RegionTable::new();
    t.add(ram(0, 100)).unwrap();
    t.add(Region::new(
        fr(100, 28),
        RegionKind::Reserved(ReservedUse::Image),
        RegionFlags::PINNED,
    ))
    .unwrap();
    t.add(ram(128, 512)).unwrap();
    let pt = ReservedUse::PageTables;
    let a = t
        .alloc_frames(PageCount(4), Order::new(0).unwrap(), pt)
        .unwrap();
    assert_eq!(a, fr(0, 4));
    let b = t.alloc_frames(PageCount(200), Order::new(9).unwrap(), pt);
    assert_eq!(
        b,
        Err(RegionError::NoFreeRam {
            count: PageCount(200)
        }),
        "no 2 MiB-aligned run of 200"
    );
    let c = t
        .alloc_frames(PageCount(128), Order::new(7).unwrap(), ReservedUse::Heap)
        .unwrap();
    assert_eq!(c, fr(128, 128), "aligned, across nothing reserved");
    assert_eq!(t.count(RegionKind::Reserved(pt)), PageCount(4));
    assert_eq!(
        t.free_frames(c, pt),
        Err(RegionError::UnexpectedKind {
            at: Gfn(128),
            found: RegionKind::Reserved(ReservedUse::Heap)
        }),
        "freeing with the wrong purpose is refused"
    );
    t.free_frames(a, pt).unwrap();
    t.free_frames(c, ReservedUse::Heap).unwrap();
    assert_eq!(t.count(RegionKind::Ram), PageCount(612));
    assert_eq!(t.len(), 3, "freed frames merge back");
    assert!(t.free_frames(a, pt).is_err(), "double free is refused");
}

#[test]
fn shared_table_batches_are_atomic_across_threads() {
    use std::sync::Arc;
    use xenmem::region::SharedTable;
    let shared = Arc::new(SharedTable::new(RegionTable::new()));
    shared.update(|t| t.add(ram(0, 4096))).unwrap();
    let pt = ReservedUse::PageTables;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in 0..200 {
                    let r = s
                        .alloc_frames(PageCount(3), Order::new(0).unwrap(), pt)
                        .unwrap();
                    // Every allocation is disjoint from every other one.
                    mine.push(r);
                    if mine.len() > 5 {
                        let r = mine.remove(0);
                        s.free_frames(r, pt).unwrap();
                    }
                    // A reader never sees a half-applied batch.
                    s.read(|t| t.check_invariants()).unwrap();
                }
                mine
            })
        })
        .collect();
    let held: Vec<FrameRange> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let total: u64 = held.iter().map(|r| r.len().0).sum();
    assert_eq!(
        shared.read(|t| t.count(RegionKind::Reserved(pt))),
        PageCount(total)
    );
    assert_eq!(
        shared.read(|t| t.count(RegionKind::Ram)),
        PageCount(4096 - total)
    );
}

#[test]
fn the_identity_map_keeps_memory_only() {
    use xenmem::region::ReservedUse as U;
    let kept = [
        RegionKind::Ram,
        RegionKind::Contiguous,
        RegionKind::Reserved(U::Image),
        RegionKind::Reserved(U::Stack),
        RegionKind::Reserved(U::PageTables),
        RegionKind::Reserved(U::Heap),
        RegionKind::Reserved(U::Boot),
        RegionKind::Reserved(U::Allocated),
    ];
    let dropped = [
        RegionKind::Ballooned,
        RegionKind::Hole,
        RegionKind::Mmio,
        RegionKind::Grant,
        RegionKind::Foreign,
        RegionKind::Reserved(U::Unusable),
        RegionKind::Reserved(U::Firmware),
        RegionKind::Reserved(U::Acpi),
    ];
    assert!(kept.iter().all(|k| k.identity_mapped()));
    assert!(dropped.iter().all(|k| !k.identity_mapped()));
}
