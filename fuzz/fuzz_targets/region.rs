//! Region-table operation sequences against a page-by-page model.
//!
//! Every batch of `add` / `modify` / `delete` (through `apply`, all or
//! nothing), `alloc_frames` / `free_frames` and every query (`region_at`,
//! `count`, `find_free`, `aligned_extents`, `highest_aligned_extents`) is
//! checked against a map from frame to (kind, flags, backing): after each
//! step the table's pages equal the model's, a refused batch left the table
//! as it was, and the invariants hold.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use xenmem::addr::{DomId, Gfn, Mfn, Order, PageCount};
use xenmem::region::{
    Backing, Change, FrameRange, GrantRef, Op, Region, RegionError, RegionFlags, RegionKind,
    RegionTable, ReservedUse, MAX_FRAME,
};

/// Frames the operations touch, from `base`.
const UNIVERSE: u64 = 160;

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
            let b = r.backing.offset(i as u64).unwrap();
            self.0.insert(g, (r.kind, r.flags, b));
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

    /// Frame `g` is of `kind` and not pinned: usable by the finders.
    fn usable(&self, g: u64, kind: RegionKind) -> bool {
        self.0
            .get(&g)
            .is_some_and(|p| p.0 == kind && !p.1.contains(RegionFlags::PINNED))
    }

    fn find_free(&self, kind: RegionKind, count: u64, align: u64, min: u64) -> Option<(u64, u64)> {
        if count == 0 {
            return None;
        }
        let (first, last) = (*self.0.keys().next()?, *self.0.keys().next_back()?);
        let mut g = min.max(first).div_ceil(align) * align;
        while g <= last {
            if (g..g + count).all(|x| self.usable(x, kind)) {
                return Some((g, g + count));
            }
            g += align;
        }
        None
    }

    fn aligned_extents(&self, kind: RegionKind, n: u64) -> Vec<(u64, u64)> {
        let (Some(&first), Some(&last)) = (self.0.keys().next(), self.0.keys().next_back()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut a = first.div_ceil(n) * n;
        while a + n <= last + 1 {
            if (a..a + n).all(|x| self.usable(x, kind)) {
                out.push((a, a + n));
            }
            a += n;
        }
        out
    }
}

fn pages_of(t: &RegionTable) -> Model {
    let mut m = Model::default();
    for r in t.iter() {
        for (i, g) in (r.range.start().0..r.range.end().0).enumerate() {
            let b = r
                .backing
                .offset(i as u64)
                .expect("a region's backing overflows");
            m.0.insert(g, (r.kind, r.flags, b));
        }
    }
    m
}

/// The model's name for a table error, so that both sides agree on what
/// went wrong and where.
fn tag(e: &RegionError, t: &RegionTable, op: &Op) -> String {
    match e {
        RegionError::Overlap { existing } => {
            let Op::Add(r) = op else {
                return "overlap-not-add".into();
            };
            let first = (r.range.start().0..r.range.end().0)
                .find(|g| {
                    t.region_at(Gfn(*g))
                        .is_some_and(|x| !x.kind.replaceable_by(r.kind))
                })
                .expect("Overlap without an overlapping frame");
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

const KINDS: [RegionKind; 9] = [
    RegionKind::Ram,
    RegionKind::Hole,
    RegionKind::Grant,
    RegionKind::Foreign,
    RegionKind::Mmio,
    RegionKind::Contiguous,
    RegionKind::Ballooned,
    RegionKind::Reserved(ReservedUse::Heap),
    RegionKind::Reserved(ReservedUse::PageTables),
];

struct Gen<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    base: u64,
}

impl Gen<'_, '_> {
    fn kind(&mut self) -> AResult<RegionKind> {
        Ok(*self.u.choose(&KINDS)?)
    }
    fn flags(&mut self) -> AResult<RegionFlags> {
        Ok(RegionFlags::from_bits_truncate(
            self.u.int_in_range(0..=63)?,
        ))
    }
    fn backing(&mut self) -> AResult<Backing> {
        Ok(match self.u.int_in_range(0..=5)? {
            0 | 1 => Backing::None,
            2 => Backing::Machine(Mfn(self.u.int_in_range(0..=300)?)),
            3 => Backing::Machine(Mfn(u64::MAX - self.u.int_in_range(0..=40)?)),
            4 => Backing::Grant {
                dom: DomId(self.u.int_in_range(0..=1)?),
                gref: GrantRef(if self.u.arbitrary()? {
                    u32::MAX - self.u.int_in_range(0..=40)?
                } else {
                    self.u.int_in_range(0..=60)?
                }),
            },
            _ => Backing::Foreign {
                dom: DomId(1),
                gfn: Gfn(self.u.int_in_range(0..=60)?),
            },
        })
    }
    fn range(&mut self) -> AResult<FrameRange> {
        let s = self.u.int_in_range(0..=UNIVERSE - 1)?;
        let n = self.u.int_in_range(1..=UNIVERSE - s)?;
        Ok(FrameRange::new(Gfn(self.base + s), PageCount(n)).expect("a range in the universe"))
    }
    fn op(&mut self) -> AResult<Op> {
        Ok(match self.u.int_in_range(0..=6)? {
            0..=2 => Op::Add(Region {
                range: self.range()?,
                kind: self.kind()?,
                flags: self.flags()?,
                backing: self.backing()?,
            }),
            3..=5 => {
                let range = self.range()?;
                let kind = if self.u.arbitrary()? {
                    Some(self.kind()?)
                } else {
                    None
                };
                let (set, clear) = (self.flags()?, self.flags()?);
                let backing = if self.u.ratio(1, 3)? {
                    Some(self.backing()?)
                } else {
                    None
                };
                let expect = if self.u.ratio(1, 4)? {
                    Some(self.kind()?)
                } else {
                    None
                };
                Op::Modify(
                    range,
                    Change {
                        kind,
                        set,
                        clear,
                        backing,
                        expect,
                    },
                )
            }
            _ => Op::Delete(self.range()?),
        })
    }
}

fn check(t: &RegionTable, m: &Model) {
    assert_eq!(&pages_of(t), m, "the table's pages differ from the model's");
    assert_eq!(t.check_invariants(), Ok(()));
}

fn run(u: &mut Unstructured<'_>) -> AResult<()> {
    // Near address 0 or right below the table's limit.
    let base = if u.ratio(1, 4)? {
        MAX_FRAME - UNIVERSE
    } else {
        0
    };
    let mut g = Gen { u, base };
    let mut t = RegionTable::new();
    let mut m = Model::default();
    let mut steps = 0;
    while !g.u.is_empty() && steps < 64 {
        steps += 1;
        match g.u.int_in_range(0..=9)? {
            0..=5 => {
                let n = g.u.int_in_range(1..=3)?;
                let batch = (0..n).map(|_| g.op()).collect::<AResult<Vec<Op>>>()?;
                let before = t.clone();
                let result = t.apply(&batch);
                let mut m2 = m.clone();
                let model_err = batch
                    .iter()
                    .enumerate()
                    .find_map(|(i, op)| m2.apply(op).err().map(|e| (e, i)));
                match (&result, &model_err) {
                    (Ok(()), None) => m = m2,
                    (Err((e, at)), Some((me, i))) => {
                        assert_eq!(at, i, "failed at op {at}, the model at {i}: {batch:?}");
                        let mut probe = before.clone();
                        probe.apply(&batch[..*i]).expect("the batch's prefix");
                        assert_eq!(&tag(e, &probe, &batch[*i]), me, "{batch:?}");
                        assert_eq!(t, before, "a refused batch changed the table");
                    }
                    _ => panic!("table {result:?} vs model {model_err:?} for {batch:?}"),
                }
            }
            6 => {
                // alloc_frames / free_frames.
                let count = g.u.int_in_range(1..=20u64)?;
                let align = Order::new(g.u.int_in_range(0..=4)?).unwrap();
                let what = if g.u.arbitrary()? {
                    ReservedUse::Allocated
                } else {
                    ReservedUse::PageTables
                };
                let before = t.clone();
                let want = m.find_free(RegionKind::Ram, count, align.pages().0, 0);
                match t.alloc_frames(PageCount(count), align, what) {
                    Ok(r) => {
                        assert_eq!(Some((r.start().0, r.end().0)), want, "alloc_frames");
                        let c = Change {
                            kind: Some(RegionKind::Reserved(what)),
                            set: RegionFlags::PINNED,
                            ..Change::default()
                        };
                        m.modify(r, &c).expect("model: the allocated frames");
                    }
                    Err(e) => {
                        assert_eq!(
                            want, None,
                            "alloc_frames refused ({e:?}) but the model has room"
                        );
                        assert_eq!(
                            e,
                            RegionError::NoFreeRam {
                                count: PageCount(count)
                            }
                        );
                        assert_eq!(t, before);
                    }
                }
                if g.u.arbitrary()? {
                    let r = g.range()?;
                    let before = t.clone();
                    let c = Change {
                        kind: Some(RegionKind::Ram),
                        clear: RegionFlags::PINNED,
                        expect: Some(RegionKind::Reserved(what)),
                        ..Change::default()
                    };
                    let mut m2 = m.clone();
                    match (t.free_frames(r, what), m2.modify(r, &c)) {
                        (Ok(()), Ok(())) => m = m2,
                        (Err(e), Err(me)) => {
                            assert_eq!(tag(&e, &before, &Op::Modify(r, c)), me);
                            assert_eq!(t, before);
                        }
                        (a, b) => panic!("free_frames: table {a:?}, model {b:?}"),
                    }
                }
            }
            7 => {
                let kind = g.kind()?;
                let count = g.u.int_in_range(0..=40u64)?;
                let align = Order::new(g.u.int_in_range(0..=5)?).unwrap();
                let min = g.base + g.u.int_in_range(0..=UNIVERSE)?;
                let got = t.find_free(kind, PageCount(count), align, Gfn(min));
                let want = m.find_free(kind, count, align.pages().0, min);
                assert_eq!(
                    got.map(|r| (r.start().0, r.end().0)),
                    want,
                    "find_free({kind:?}, {count}, {align:?}, {min})"
                );
            }
            8 => {
                let kind = g.kind()?;
                let order = Order::new(g.u.int_in_range(0..=6)?).unwrap();
                let n = order.pages().0;
                let want = m.aligned_extents(kind, n);
                let got: Vec<_> = t
                    .aligned_extents(kind, order)
                    .map(|r| (r.start().0, r.end().0))
                    .collect();
                assert_eq!(got, want, "aligned_extents({kind:?}, {order:?})");
                let mut rev: Vec<_> = t
                    .aligned_extents(kind, order)
                    .rev()
                    .map(|r| (r.start().0, r.end().0))
                    .collect();
                rev.reverse();
                assert_eq!(rev, want, "aligned_extents(..).rev()");
                let count = g.u.int_in_range(0..=12u64)?;
                let high: Vec<_> = t
                    .highest_aligned_extents(kind, order, count)
                    .map(|r| (r.start().0, r.end().0))
                    .collect();
                let from = want.len().saturating_sub(count as usize);
                assert_eq!(
                    high,
                    want[from..],
                    "highest_aligned_extents({kind:?}, {order:?}, {count})"
                );
            }
            _ => {
                let g0 = g.base + g.u.int_in_range(0..=UNIVERSE)?;
                let r = t.region_at(Gfn(g0));
                match m.0.get(&g0) {
                    None => assert!(
                        r.is_none(),
                        "region_at({g0}) = {r:?} where the model has nothing"
                    ),
                    Some(p) => {
                        let r = r.expect("region_at: the model has a page");
                        assert!(r.range.contains(Gfn(g0)));
                        assert_eq!((r.kind, r.flags), (p.0, p.1));
                        assert_eq!(r.backing.offset(g0 - r.range.start().0), Some(p.2));
                    }
                }
                let kind = g.kind()?;
                let want = m.0.values().filter(|p| p.0 == kind).count() as u64;
                assert_eq!(t.count(kind), PageCount(want), "count({kind:?})");
            }
        }
        check(&t, &m);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
