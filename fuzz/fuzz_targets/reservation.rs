//! The reservation engine against the model of Xen (`xenmem-model`), with
//! injected faults.
//!
//! A domain (a PVH domU bare or as xl builds it, a PVH dom0, an Arm domU or
//! a direct-mapped Arm dom0; not PV, which the engine does not serve)
//! and its region table; then a sequence of engine calls (decrease,
//! increase, balloon_to, release_frames, alloc_contiguous,
//! free_contiguous, verify, probe_exchange) between faults injected into
//! the model (short counts, partial extents, populate that cannot map,
//! errnos, exchange refused, an exhausted pool) and into the identity map
//! (a refused change). After every call:
//!
//! - Xen's `tot_pages` equals the table's populated RAM plus what Xen
//!   leaked, and the engine's own count; frame by frame, populated RAM is
//!   in Xen's p2m and ballooned frames are not; machine frames are
//!   conserved;
//! - an error is one of the typed answers a caller can act on (never the
//!   engine's "table refused" bug branch or an inconsistency it caused);
//! - a refusal that asked Xen nothing changed nothing; one the API
//!   promises before any hypercall made none;
//! - the identity map only takes page-table frames Xen backs and only maps
//!   populated frames.
#![no_main]

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use xenmem::addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount};
use xenmem::layout::{initial_table, GapPolicy, Reservation, ReserveRule};
use xenmem::memmap::MemoryMap;
use xenmem::paging::{FrameSource, IdentityFrames, PagingError};
use xenmem::region::{
    Change, FrameRange, Region, RegionFlags, RegionKind, RegionTable, ReservedUse,
};
use xenmem::reservation::{ContiguousBuffer, Engine, IdentityMap, ReservationError, Strategy};
use xenmem::xen::abi::E820Entry;
use xenmem::xen::{Errno, Hypervisor};
use xenmem_model::{DomainConfig, Fault, Op, XenModel};

/// An identity map that takes a page-table frame from the table for every
/// change smaller than a 2 MiB block (keeping it, as a split table stays)
/// and checks what it is asked to do against Xen's p2m.
struct CheckingIdentity<'m> {
    m: &'m XenModel,
    dom: DomId,
    tables: RefCell<Vec<GuestPhysAddr>>,
    unmapped: RefCell<BTreeSet<u64>>,
    fail_next: Cell<bool>,
}

impl CheckingIdentity<'_> {
    fn backed(&self, g: u64) -> bool {
        self.m.p2m(self.dom).contains_key(&Gfn(g))
    }

    fn table_frame(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        if range.start().0.is_multiple_of(512) && range.len().0.is_multiple_of(512) {
            return Ok(());
        }
        let f = t.alloc_frame()?;
        assert!(
            self.backed(f.frame().0),
            "a page table written into frame {:#x}, which Xen does not back",
            f.frame().0
        );
        self.tables.borrow_mut().push(f);
        Ok(())
    }
}

impl IdentityMap for CheckingIdentity<'_> {
    fn unmap(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        assert!(t.all_ballooned(range), "unmap of {range:?}: not ballooned");
        if self.fail_next.replace(false) {
            return Err(PagingError::OutOfFrames);
        }
        self.table_frame(t, range)?;
        let mut u = self.unmapped.borrow_mut();
        u.extend(range.start().0..range.end().0);
        Ok(())
    }

    fn map(&self, t: &mut RegionTable, range: FrameRange) -> Result<(), PagingError> {
        assert!(t.all_ballooned(range), "map of {range:?}: not ballooned");
        let p2m = self.m.p2m(self.dom);
        for g in range.start().0..range.end().0 {
            assert!(
                p2m.contains_key(&Gfn(g)),
                "map of frame {g:#x}, which Xen does not back"
            );
        }
        if self.fail_next.replace(false) {
            return Err(PagingError::OutOfFrames);
        }
        self.table_frame(t, range)?;
        let mut u = self.unmapped.borrow_mut();
        for g in range.start().0..range.end().0 {
            u.remove(&g);
        }
        Ok(())
    }
}

fn consistent(
    m: &XenModel,
    dom: DomId,
    t: &RegionTable,
    e: &Engine<'_, XenModel>,
    what: &str,
    full: bool,
) {
    if full {
        // Every machine frame once: the costliest check, not every step.
        m.check_conservation().expect("machine frames conserved");
    }
    let p2m = m.p2m(dom);
    for r in t
        .iter()
        .filter(|r| r.kind.is_populated_ram() || r.kind == RegionKind::Ballooned)
    {
        for g in r.range.start().0..r.range.end().0 {
            if r.kind.is_populated_ram() {
                assert!(
                    p2m.contains_key(&Gfn(g)),
                    "{what}: {g:#x} ({}) is not populated",
                    r.kind.name()
                );
            } else if r.kind == RegionKind::Ballooned {
                assert!(
                    !p2m.contains_key(&Gfn(g)),
                    "{what}: {g:#x} is ballooned but populated"
                );
            }
        }
    }
    let table = t.count_where(|r| r.kind.is_populated_ram()).0;
    let tot = m.tot_pages(dom).expect("the domain");
    assert_eq!(
        table + e.stats.leaked_by_xen,
        tot,
        "{what}: the table (+ leaked) vs Xen's tot_pages"
    );
    assert_eq!(e.expected().0, tot, "{what}: the engine's count vs Xen's");
    assert_eq!(
        m.leaked(dom).len() as u64,
        e.stats.leaked_by_xen,
        "{what}: leaked"
    );
    assert_eq!(t.check_invariants(), Ok(()), "{what}");
}

/// Free RAM (not pinned) in the table, merged into runs `[start, end)`,
/// read region by region.
fn free_runs(t: &RegionTable) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for r in t.iter() {
        if r.kind != RegionKind::Ram || r.flags.contains(RegionFlags::PINNED) {
            continue;
        }
        let (s, e) = (r.range.start().0, r.range.end().0);
        match runs.last_mut() {
            Some(l) if l.1 == s => l.1 = e,
            _ => runs.push((s, e)),
        }
    }
    runs
}

/// Whether free RAM holds a naturally aligned extent of `order` ending at
/// or below frame `limit`.
fn has_free_extent(t: &RegionTable, order: u32, limit: u64) -> bool {
    let n = 1u64 << order;
    free_runs(t).iter().any(|&(s, e)| {
        let first = s.div_ceil(n) * n;
        first + n <= e.min(limit)
    })
}

/// Calls that move memory other than exchange (which the domains here, all
/// translated, are refused at the first page).
fn balloon_calls(m: &XenModel) -> u64 {
    [
        Op::DecreaseReservation,
        Op::PopulatePhysmap,
        Op::IncreaseReservation,
    ]
    .iter()
    .map(|&o| m.calls(o))
    .sum()
}

fn moving_calls(m: &XenModel) -> u64 {
    [
        Op::DecreaseReservation,
        Op::PopulatePhysmap,
        Op::Exchange,
        Op::IncreaseReservation,
    ]
    .iter()
    .map(|&o| m.calls(o))
    .sum()
}

struct Setup {
    m: XenModel,
    dom: DomId,
    t: RegionTable,
}

fn setup(u: &mut Unstructured<'_>) -> AResult<Setup> {
    let pages = u.int_in_range(64..=2048u64)?;
    let kind = u.int_in_range(0..=4)?;
    let dom = if kind == 2 || kind == 4 {
        DomId(0)
    } else {
        DomId(1)
    };
    let extra = u.int_in_range(0..=1024u64)?;
    let arm_first = 0x200u64;
    let m = XenModel::new(arm_first + pages + extra + 64);
    let cfg = match kind {
        0 => DomainConfig::pvh_domu(dom, pages),
        1 => DomainConfig::xl_pvh_domu(dom, pages),
        2 => DomainConfig::pvh_dom0(pages),
        3 => DomainConfig::arm_domu(dom, pages),
        _ => DomainConfig::arm_dom0(Mfn(arm_first), pages),
    };
    m.add_domain(cfg).expect("the domain");
    m.set_current(dom).expect("current");
    let image = |start: u64| Reservation {
        range: FrameRange::new(Gfn(start), PageCount(16)).unwrap(),
        what: ReservedUse::Image,
        rule: ReserveRule::InRam,
    };
    let t = if kind <= 2 {
        let mut buf = [E820Entry::default(); 8];
        let n = m.memory_map(&mut buf).expect("an e820");
        let map = MemoryMap::from_e820(&buf[..n]).expect("the e820");
        let mut t =
            initial_table(&map, GapPolicy::X86, Gfn(pages), &[image(16)]).expect("the table");
        // The pages Xen counts outside RAM (xl's ACPI tables and special
        // pages), as the agent records them (`xenmem::special`).
        let p2m = m.p2m(dom);
        let outside: Vec<Gfn> = t
            .iter()
            .filter(|r| {
                matches!(
                    r.kind,
                    RegionKind::Reserved(ReservedUse::Acpi | ReservedUse::Firmware)
                )
            })
            .flat_map(|r| (r.range.start().0..r.range.end().0).map(Gfn))
            .filter(|g| p2m.contains_key(g))
            .collect();
        for g in outside {
            t.modify(
                FrameRange::single(g).unwrap(),
                Change {
                    kind: Some(RegionKind::Reserved(ReservedUse::Special)),
                    ..Change::default()
                },
            )
            .expect("a special page");
        }
        t
    } else {
        let first = if kind == 3 { 0x40000 } else { arm_first };
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(first), PageCount(pages)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        ))
        .unwrap();
        t.modify(
            image(first).range,
            Change {
                kind: Some(RegionKind::Reserved(ReservedUse::Image)),
                ..Change::default()
            },
        )
        .unwrap();
        t
    };
    Ok(Setup { m, dom, t })
}

fn fault(u: &mut Unstructured<'_>) -> AResult<Fault> {
    let op = *u.choose(&[
        Op::DecreaseReservation,
        Op::PopulatePhysmap,
        Op::Exchange,
        Op::IncreaseReservation,
        Op::CurrentReservation,
    ])?;
    let errno = *u.choose(&[
        Errno::EFAULT,
        Errno::ENOMEM,
        Errno::EINVAL,
        Errno::EPERM,
        Errno::ESRCH,
    ])?;
    Ok(match u.int_in_range(0..=6)? {
        0 => Fault::ShortAt {
            op,
            after_extents: u.int_in_range(0..=8)?,
        },
        1 => Fault::PartialExtent {
            after_extents: u.int_in_range(0..=4)?,
            pages: u.int_in_range(0..=600)?,
        },
        2 => Fault::MapFailAt {
            after_extents: u.int_in_range(0..=4)?,
        },
        3 => Fault::Errno { op, errno },
        4 => Fault::ErrnoOnCall {
            op,
            nth: u.int_in_range(0..=3)?,
            errno,
        },
        5 => Fault::ExchangeUnsupported,
        _ => Fault::ExhaustPool {
            leave_free: u.int_in_range(0..=1024)?,
        },
    })
}

/// Errors a caller can act on. `Table` is the engine's bug branch;
/// `Inconsistent` means the engine lost track of Xen's count.
fn acceptable(e: &ReservationError) -> bool {
    !matches!(
        e,
        ReservationError::Table(_) | ReservationError::Inconsistent { .. }
    )
}

fn run(u: &mut Unstructured<'_>) -> AResult<()> {
    let Setup { m, dom, mut t } = setup(u)?;
    let id = CheckingIdentity {
        m: &m,
        dom,
        tables: RefCell::new(Vec::new()),
        unmapped: RefCell::new(BTreeSet::new()),
        fail_next: Cell::new(false),
    };
    let features = m.features().expect("features");
    let cur = m.current_reservation(DomId::SELF).expect("current");
    let max = if dom == DomId(0) { 18 } else { 9 };
    let strategy = match u.int_in_range(0..=3)? {
        0 => Strategy::LINUX,
        1 => Strategy::MINI_OS,
        2 => Strategy::xenmem(Order::new(u.int_in_range(0..=max)?).unwrap()),
        _ => Strategy {
            max_order: Order::new(u.int_in_range(0..=max)?).unwrap(),
            batch: u.int_in_range(0..=5)?,
        },
    };
    let trace = std::env::var_os("XENMEM_FUZZ_TRACE").is_some();
    if trace {
        eprintln!(
            "domain {dom:?}: {} pages, {strategy:?}, table {:?}",
            cur.0,
            t.iter().collect::<Vec<_>>()
        );
    }
    let mut e = Engine::new(&m, strategy, cur, features);
    let identity = u.arbitrary()?;
    if identity {
        e = e.with_identity_map(&id);
    }
    let pages = cur.0;
    let mut bufs: Vec<ContiguousBuffer> = Vec::new();
    let direct = features.contains(xenmem::xen::Features::DIRECT_MAPPED);
    // Frames to aim at: the domain's RAM, and now and then anywhere in the
    // table (holes, MMIO, beyond).
    let ram_lo = t
        .iter()
        .find(|r| r.kind == RegionKind::Ram)
        .map_or(0, |r| r.range.start().0);
    let ram_hi = t
        .iter()
        .rfind(|r| r.kind == RegionKind::Ram)
        .map_or(0, |r| r.range.end().0);
    let table_end = t.iter().next_back().map_or(0, |r| r.range.end().0);
    let frame = |u: &mut Unstructured<'_>| -> AResult<u64> {
        if u.ratio(1, 8)? {
            u.int_in_range(0..=table_end)
        } else {
            u.int_in_range(ram_lo..=ram_hi)
        }
    };

    for step in 0..24 {
        if u.is_empty() {
            break;
        }
        let snapshot = t.clone();
        let calls = moving_calls(&m);
        let balloons = balloon_calls(&m);
        let ballooned = t.count(RegionKind::Ballooned).0;
        // A short count left unsettled by the last call is settled first.
        let was_unsettled = e.unsettled();
        let op = u.int_in_range(0..=12)?;
        if trace {
            eprintln!("step {step}: op {op}");
        }
        let what = format!("step {step} op {op}");
        let result: Result<(), ReservationError> = match op {
            0 | 1 => {
                let free: u64 = free_runs(&t).iter().map(|(s, e)| e - s).sum();
                // A third of the time (nearly) all the free RAM: the batch
                // then starts at the lowest free frame, which the identity
                // map takes its table frames from.
                let n = if u.ratio(1, 3)? {
                    free.saturating_sub(u.int_in_range(0..=16)?)
                } else {
                    u.int_in_range(0..=pages + 8)?
                };
                // Xen takes every page offered when nothing is injected (and
                // no identity map takes table frames from the free RAM).
                let quiet = m.pending_faults().is_empty() && !identity && !was_unsettled;
                let r = e.decrease(&mut t, PageCount(n));
                match &r {
                    Err(ReservationError::Shortfall {
                        done: PageCount(0), ..
                    }) if moving_calls(&m) == calls => {
                        assert!(free < n, "decrease({n}) refused with {free} pages free");
                    }
                    Err(ReservationError::IdentityMap(_)) | Err(ReservationError::DirectMapped) => {
                    }
                    Err(err) if quiet && free >= n => {
                        panic!("decrease({n}) with {free} free: {err:?}")
                    }
                    _ => {}
                }
                r
            }
            2 | 3 => {
                let n = if u.ratio(1, 3)? {
                    ballooned.saturating_sub(u.int_in_range(0..=16)?)
                } else {
                    u.int_in_range(0..=pages + 8)?
                };
                let r = e.increase(&mut t, PageCount(n));
                if n > ballooned && !was_unsettled {
                    // Refused before any hypercall.
                    assert!(
                        matches!(
                            r,
                            Err(ReservationError::Shortfall {
                                done: PageCount(0),
                                ..
                            })
                        ),
                        "increase({n}) beyond the {ballooned} ballooned: {r:?}"
                    );
                    assert_eq!(
                        moving_calls(&m),
                        calls,
                        "increase beyond the ballooned asked Xen"
                    );
                }
                r
            }
            4 => e.balloon_to(&mut t, PageCount(u.int_in_range(0..=pages + 8)?)),
            5 => {
                let s = frame(u)?;
                let n = u.int_in_range(1..=64)?;
                match FrameRange::new(Gfn(s), PageCount(n)) {
                    Ok(r) => e.release_frames(&mut t, r),
                    Err(_) => Ok(()),
                }
            }
            6 => {
                // Mostly a size that needs an order the strategy allows.
                let size = if u.ratio(1, 4)? {
                    u.int_in_range(0..=(2u64 << 20) + 1)?
                } else {
                    let o = u.int_in_range(0..=strategy.max_order.get().min(9))?;
                    let top = 4096u64 << o;
                    u.int_in_range(top / 2 + 1..=top)?
                };
                let align = if u.ratio(1, 4)? {
                    1u64 << u.int_in_range(0..=22)?
                } else {
                    4096
                };
                let bits = if u.arbitrary()? {
                    Some(u.int_in_range(0..=70)?)
                } else {
                    None
                };
                let pages = size.div_ceil(4096).max(1);
                let order = pages.next_power_of_two().trailing_zeros();
                let limit = match bits {
                    Some(b) if direct && b < 64 => (1u64 << b) >> 12,
                    _ => u64::MAX,
                };
                let had = has_free_extent(&t, order, limit);
                let r = e
                    .alloc_contiguous(&mut t, size, align, bits)
                    .map(|b| bufs.push(b));
                if let Err(ReservationError::Shortfall {
                    done: PageCount(0), ..
                }) = r
                {
                    if balloon_calls(&m) == balloons && !was_unsettled {
                        assert!(
                            !had,
                            "alloc_contiguous of order {order}: Shortfall with a free extent"
                        );
                    }
                }
                r
            }
            7 => {
                if bufs.is_empty() {
                    Ok(())
                } else {
                    let i = u.choose_index(bufs.len())?;
                    let b = bufs.swap_remove(i);
                    let range = b.range();
                    match e.free_contiguous(&mut t, b) {
                        Ok(()) => {
                            assert!(t
                                .region_at(range.start())
                                .is_some_and(|r| r.kind == RegionKind::Ram));
                            Ok(())
                        }
                        Err(back) => panic!(
                            "free_contiguous of a live buffer refused: {:?}",
                            back.error()
                        ),
                    }
                }
            }
            8 => e.verify().map(|_| ()),
            9 => {
                let g = Gfn(frame(u)?);
                if t.region_at(g).is_some_and(|r| {
                    r.kind == RegionKind::Ram && !r.flags.contains(RegionFlags::PINNED)
                }) {
                    e.probe_exchange(&mut t, g).map(|_| ())
                } else {
                    Ok(())
                }
            }
            10 => {
                let f = fault(u)?;
                if trace {
                    eprintln!("inject {f:?}");
                }
                m.inject(f);
                Ok(())
            }
            11 => {
                id.fail_next.set(true);
                Ok(())
            }
            _ => {
                // Split free RAM by flags: pinned (the agent keeps it) or
                // marked below 4 GiB.
                // Half the time across the middle of one of the highest
                // aligned extents of some order, where buffers are taken.
                let (s, n) = if u.arbitrary()? {
                    let o = u.int_in_range(1..=9u32)?;
                    let k = u.int_in_range(1..=4u64)?;
                    let top = (ram_hi >> o << o).saturating_sub(k << o);
                    (top + (1 << (o - 1)), u.int_in_range(1..=1u64 << o)?)
                } else {
                    (frame(u)?, u.int_in_range(1..=600)?)
                };
                let set = if u.arbitrary()? {
                    RegionFlags::PINNED
                } else {
                    RegionFlags::BELOW_4G
                };
                if let Ok(r) = FrameRange::new(Gfn(s), PageCount(n)) {
                    let _ = t.modify(
                        r,
                        Change {
                            set,
                            expect: Some(RegionKind::Ram),
                            ..Change::default()
                        },
                    );
                }
                Ok(())
            }
        };
        let _ = e.take_identity_error();
        if trace {
            eprintln!(
                "{what}: {result:?} (pending faults {:?})",
                m.pending_faults()
            );
        }
        // A short count the engine could not settle (its question to Xen
        // failed) leaves it behind Xen until the next call: checked then.
        if !e.unsettled() {
            consistent(&m, dom, &t, &e, &what, step % 6 == 5 || result.is_err());
        } else if !was_unsettled {
            // Left unsettled only by a call that failed (with the question's
            // error, or an earlier one it was recovering from).
            assert!(result.is_err(), "{what}: unsettled after {result:?}");
        }
        // Still unsettled: the question failed again, the call was refused
        // before asking Xen anything, or it asked Xen nothing (a buffer
        // freed, a fault injected).
        if let Err(err) = result {
            assert!(acceptable(&err), "{what}: {err:?}");
            if moving_calls(&m) == calls && !was_unsettled {
                // Xen was asked nothing that moves memory: nothing changed
                // (identity-map frames aside, which the next call reuses).
                let strip = |t: &RegionTable| -> Vec<(u64, u64, RegionKind)> {
                    t.iter()
                        .filter(|r| r.kind != RegionKind::Reserved(ReservedUse::PageTables))
                        .map(|r| (r.range.start().0, r.range.end().0, r.kind))
                        .collect()
                };
                if !matches!(err, ReservationError::IdentityMap(_)) {
                    assert_eq!(
                        strip(&t),
                        strip(&snapshot),
                        "{what}: {err:?} changed the table without asking Xen"
                    );
                }
            }
        }
    }
    for b in bufs {
        e.free_contiguous(&mut t, b)
            .expect("freeing the buffers left");
    }
    if e.unsettled() {
        m.clear_faults();
        // Any call settles first.
        e.increase(&mut t, PageCount(0)).expect("settled");
    }
    consistent(&m, dom, &t, &e, "the end", true);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
