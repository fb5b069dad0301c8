//! Region-table cost at 10^2, 10^4 and 10^5 regions, beside a plain sorted
//! vector doing the same work. Prints a table; asserts nothing.
//!
//! Run: `cargo bench --bench region_table` (or `cargo xtask bench`).
//! Each cell is the median of 7 runs, with the spread (max/min) beside it.

use std::hint::black_box;
use std::time::Instant;

use xenmem::addr::{Gfn, GuestPhysAddr, PageCount};
use xenmem::region::{
    Change, FrameRange, Region, RegionFlags, RegionKind, RegionTable, ReservedUse,
};

/// Frames per region.
const SPAN: u64 = 16;

fn kind(i: u64) -> RegionKind {
    // Alternate so that neighbours never merge.
    if i % 2 == 0 {
        RegionKind::Ram
    } else {
        RegionKind::Reserved(ReservedUse::Firmware)
    }
}

fn region(i: u64) -> Region {
    Region::new(
        FrameRange::new(Gfn(i * SPAN), PageCount(SPAN)).unwrap(),
        kind(i),
        RegionFlags::READ,
    )
}

/// The baseline: regions in a sorted `Vec`, binary search to find, `insert`
/// and `remove` to split and merge.
struct SortedVec(Vec<Region>);

impl SortedVec {
    fn find(&self, g: Gfn) -> Option<usize> {
        let i = self.0.partition_point(|r| r.range.start() <= g);
        i.checked_sub(1).filter(|&i| self.0[i].range.contains(g))
    }

    /// Change one frame's kind: split its region in three.
    fn split_one(&mut self, g: Gfn, k: RegionKind) {
        let i = self.find(g).unwrap();
        let r = self.0[i];
        let mid = Region::new(FrameRange::new(g, PageCount(1)).unwrap(), k, r.flags);
        let left = FrameRange::from_frames(r.range.start(), g)
            .ok()
            .map(|x| Region { range: x, ..r });
        let right = FrameRange::from_frames(Gfn(g.0 + 1), r.range.end())
            .ok()
            .map(|x| Region { range: x, ..r });
        self.0
            .splice(i..=i, [left, Some(mid), right].into_iter().flatten());
    }

    /// Undo `split_one`: merge the three pieces back.
    fn merge_one(&mut self, g: Gfn) {
        let i = self.find(g).unwrap();
        let (l, r) = (self.0[i - 1], self.0[i + 1]);
        self.0.drain(i - 1..=i + 1);
        self.0.insert(
            i - 1,
            Region {
                range: FrameRange::from_frames(l.range.start(), r.range.end()).unwrap(),
                ..l
            },
        );
    }
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Median and max/min of `runs` timings of `f`, in ns per operation.
fn measure(runs: usize, ops: u64, mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[runs / 2], t[runs - 1] / t[0])
}

fn main() {
    const OPS: u64 = 20_000;
    const RUNS: usize = 7;
    println!(
        "Region table vs sorted Vec (ns per operation, median of {RUNS} runs; spread = max/min)"
    );
    println!(
        "| regions | table lookup | Vec lookup | table update | Vec update | Vec/table update | table bytes/region |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [100u64, 10_000, 100_000] {
        let mut table = RegionTable::new();
        let mut vec = SortedVec(Vec::with_capacity(n as usize * 3));
        for i in 0..n {
            table.add(region(i)).unwrap();
            vec.0.push(region(i));
        }
        assert_eq!(table.len() as u64, n);
        let mut seed = 7;
        let probes: Vec<Gfn> = (0..OPS).map(|_| Gfn(lcg(&mut seed) % (n * SPAN))).collect();
        // Update probes: a frame strictly inside a region, so the update splits
        // it in three and the undo merges it back.
        let inner: Vec<Gfn> = probes
            .iter()
            .map(|g| Gfn(g.0 / SPAN * SPAN + 1 + g.0 % (SPAN - 2)))
            .collect();

        let (tl, tl_s) = measure(RUNS, OPS, || {
            for g in &probes {
                black_box(table.info(GuestPhysAddr(g.0 << 12)));
            }
        });
        let (vl, vl_s) = measure(RUNS, OPS, || {
            for g in &probes {
                black_box(vec.find(*g));
            }
        });
        let upd = |k| Change {
            kind: Some(k),
            ..Change::default()
        };
        let (tu, tu_s) = measure(RUNS, OPS * 2, || {
            for g in &inner {
                let r = FrameRange::new(*g, PageCount(1)).unwrap();
                let old = table.region_at(*g).unwrap().kind;
                table.modify(r, upd(RegionKind::Hole)).unwrap();
                table.modify(r, upd(old)).unwrap();
            }
        });
        let (vu, vu_s) = measure(RUNS, OPS * 2, || {
            for g in &inner {
                vec.split_one(*g, RegionKind::Hole);
                vec.merge_one(*g);
            }
        });
        assert_eq!(table.len() as u64, n, "updates were undone");
        // The table is a sorted vector of regions: its payload per region
        // (the spare capacity it keeps for the next changes comes on top).
        let per_region = std::mem::size_of::<Region>() as f64;
        println!(
            "| {n} | {tl:.0} (x{tl_s:.2}) | {vl:.0} (x{vl_s:.2}) | {tu:.0} (x{tu_s:.2}) | {vu:.0} (x{vu_s:.2}) | {:.1} | ~{per_region:.0} |",
            vu / tu
        );
    }
    println!();
    println!("Both are sorted vectors: lookups grow with log n, updates with n (each moves the tail); the table's extra cost is its checks, merges and undo record.");
}
