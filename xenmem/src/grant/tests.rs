//! Host tests of grants against the model of Xen 4.17.

use super::*;
use crate::addr::{GuestPhysAddr, Mfn, VirtAddr, PAGE_SIZE};
use crate::leak::{Outstanding, ReleaseError};
use crate::mapping::{map_foreign, MapTarget, VaSpace};
use crate::paging::{self, Attrs, PagingError};
use crate::region::{Backing, FrameRange, Region, RegionFlags, RegionKind, RegionTable};
use crate::xen::abi::gnttab::{
    GrantEntryV1, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING,
};
use crate::xen::model::window::testmem;
use crate::xen::model::{DomainConfig, GntFault, GntOp, XenModel};
use crate::xen::{Errno, Hypervisor};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Page tables reduced to what grants need: each window page is routed to
/// the model's memory for the frame mapped there (as the domain sees it), so
/// reads and writes through handles reach the same bytes Xen and the other
/// domain see.
struct FakeTables<'m> {
    m: &'m XenModel,
    dom: DomId,
    window: paging::Window,
    map: HashMap<u64, (u64, Attrs)>,
    fail_map: bool,
    /// Refuse unmaps (nothing is unmapped).
    fail_unmap: bool,
    /// What an unbacked frame reads as on x86: all-ones.
    ones: Box<[u8; 4096]>,
}

impl<'m> FakeTables<'m> {
    fn new(m: &'m XenModel, dom: DomId, window_base: u64) -> Self {
        FakeTables {
            m,
            dom,
            window: paging::Window::new(VirtAddr(window_base), 1 << 30).unwrap(),
            map: HashMap::new(),
            fail_map: false,
            fail_unmap: false,
            ones: Box::new([0xff; 4096]),
        }
    }
}

impl MapTarget for FakeTables<'_> {
    fn map(
        &mut self,
        va: VirtAddr,
        pa: GuestPhysAddr,
        pages: PageCount,
        attrs: Attrs,
        _: &mut RegionTable,
    ) -> Result<(), PagingError> {
        if self.fail_map {
            return Err(PagingError::OutOfFrames);
        }
        assert!(!attrs.executable, "grant mappings are never executable");
        for i in 0..pages.0 {
            let v = va.0 + i * PAGE_SIZE;
            let p = pa.0 + i * PAGE_SIZE;
            if let Some(&(old, _)) = self.map.get(&v) {
                return Err(PagingError::AlreadyMapped {
                    va: VirtAddr(v),
                    pa: GuestPhysAddr(old),
                });
            }
            let host = self
                .m
                .page_ptr(self.dom, Gfn(p >> 12))
                .unwrap_or(self.ones.as_mut_ptr());
            testmem::map(v, host);
            self.map.insert(v, (p, attrs));
        }
        Ok(())
    }

    fn unmap(
        &mut self,
        va: VirtAddr,
        pages: PageCount,
        _: &mut RegionTable,
    ) -> Result<(), PagingError> {
        if self.fail_unmap {
            return Err(PagingError::OutOfFrames);
        }
        let pages = (0..pages.0).map(|i| va.0 + i * PAGE_SIZE);
        if let Some(v) = pages.clone().find(|v| !self.map.contains_key(v)) {
            return Err(PagingError::NotMapped(VirtAddr(v)));
        }
        for v in pages {
            self.map.remove(&v);
            testmem::unmap(v);
        }
        Ok(())
    }

    fn window(&self) -> paging::Window {
        self.window
    }
}

/// One agent: its domain, region table, page tables and window.
struct Agent<'m> {
    dom: DomId,
    t: RegionTable,
    pt: FakeTables<'m>,
    vas: VaSpace,
}

impl<'m> Agent<'m> {
    fn new(m: &'m XenModel, dom: DomId, ram: (u64, u64), hole: (u64, u64), window: u64) -> Self {
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(ram.0), PageCount(ram.1)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE,
        ))
        .unwrap();
        t.add(Region::new(
            FrameRange::new(Gfn(hole.0), PageCount(hole.1)).unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        let pt = FakeTables::new(m, dom, window);
        let vas = VaSpace::new(pt.window());
        Agent { dom, t, pt, vas }
    }

    /// Make this agent the caller.
    fn on(&self) -> &'m XenModel {
        self.pt.m.set_current(self.dom).unwrap();
        self.pt.m
    }

    fn table(&mut self, frames: u32) -> Result<GrantTable, GrantError> {
        let m = self.on();
        GrantTable::setup(m, &mut self.t, &mut self.pt, &mut self.vas, frames)
    }

    fn map(&mut self, dom: DomId, refs: &[u32], ro: bool) -> Result<GrantMap, GrantError> {
        let m = self.on();
        let refs: Vec<GrantRef> = refs.iter().map(|&r| GrantRef(r)).collect();
        map_grants(m, &mut self.t, &mut self.pt, &mut self.vas, dom, &refs, ro)
    }

    fn release(&mut self, g: GrantMap) -> Result<(), ReleaseError<GrantMap, GrantError>> {
        let m = self.on();
        g.release(m, &mut self.t, &mut self.pt, &mut self.vas)
    }

    fn release_table(&mut self, gt: &mut GrantTable) -> Result<(), GrantError> {
        let m = self.on();
        gt.release(m, &mut self.t, &mut self.pt, &mut self.vas)
    }

    fn holes(&self) -> u64 {
        self.t.count(RegionKind::Hole).0
    }
}

const D0: DomId = DomId(0);
const D1: DomId = DomId(1);

/// x86: a PVH dom0 (RAM 0..4096, a hole above 4 GiB) and a PVH domU.
fn x86(m: &XenModel) -> (Agent<'_>, Agent<'_>) {
    m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
    m.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
    let d0 = Agent::new(m, D0, (0, 4096), (0x100000, 0x1000), 0x200_0000_0000);
    let d1 = Agent::new(m, D1, (0, 1024), (0x100000, 0x1000), 0x300_0000_0000);
    (d0, d1)
}

/// Arm: a direct-mapped dom0 (RAM at 0x1000, the /hypervisor hole of 64
/// frames at 0x40200) and a dom0less domU (RAM at 0x40000, 16 MiB hole at
/// 0x38000).
fn arm(m: &XenModel) -> (Agent<'_>, Agent<'_>) {
    m.add_domain(DomainConfig::arm_dom0(Mfn(0x1000), 2048))
        .unwrap();
    m.add_domain(DomainConfig::arm_domu(D1, 1024)).unwrap();
    let d0 = Agent::new(m, D0, (0x1000, 2048), (0x40200, 64), 0x200_0000_0000);
    let d1 = Agent::new(m, D1, (0x40000, 1024), (0x38000, 0x1000), 0x300_0000_0000);
    (d0, d1)
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn refused(e: GrantError) -> Vec<(usize, u32, GntStatus)> {
    match e {
        GrantError::Refused(r) => r.iter().map(|x| (x.index, x.gref.0, x.status)).collect(),
        e => panic!("expected a refusal, got {e:?}"),
    }
}

#[test]
fn own_table_is_set_up_in_holes_and_grants_lowest_first() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let before = d0.t.clone();
    let mut gt = d0.table(2).unwrap();
    // Xen's view: frames 0 and 1 of dom0's table at the first hole frames.
    assert_eq!(
        m.gnttab_frame_gfns(D0),
        vec![Some(Gfn(0x100000)), Some(Gfn(0x100001))]
    );
    assert_eq!(m.gnttab_size(D0), Some((2, 64)));
    // The table's view: one grant region without backing, read-write.
    let r = d0.t.region_at(Gfn(0x100000)).copied().unwrap();
    assert_eq!((r.kind, r.backing), (RegionKind::Grant, Backing::None));
    assert_eq!(r.range.len(), PageCount(2));
    assert!(r.flags.contains(RegionFlags::WRITE));
    assert!(d0.pt.map.values().all(|(_, a)| *a == Attrs::READ_WRITE));
    assert_eq!((gt.frames(), gt.max_frames()), (2, 64));
    assert_eq!(gt.available(), 2 * 512 - 8);

    let g = gt.grant_access_unchecked(D1, Gfn(0x42), false).unwrap();
    assert_eq!(
        g,
        GrantRef(8),
        "the first free reference after the reserved ones"
    );
    assert_eq!(
        m.gnttab_entry(D0, 8),
        Some(GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS,
            domid: 1,
            frame: 0x42
        })
    );
    let ro = gt.grant_access_unchecked(D1, Gfn(0x43), true).unwrap();
    assert_eq!(ro, GrantRef(9));
    assert_eq!(
        m.gnttab_entry(D0, 9).unwrap().flags,
        GTF_PERMIT_ACCESS | GTF_READONLY
    );
    assert_eq!(gt.active(), 2);
    gt.end_access(g).unwrap();
    assert_eq!(m.gnttab_entry(D0, 8).unwrap().flags, 0);
    assert_eq!(gt.end_access(g), Err(GrantError::NotGranted(g)));
    // Lowest first: 8 again.
    assert_eq!(
        gt.grant_access_unchecked(D1, Gfn(0x44), false),
        Ok(GrantRef(8))
    );
    assert_eq!(d0.release_table(&mut gt), Err(GrantError::GrantsActive(2)));
    for r in [GrantRef(8), ro] {
        gt.end_access(r).unwrap();
    }
    d0.release_table(&mut gt).unwrap();
    assert_eq!(d0.t, before);
    assert_eq!(m.gnttab_frame_gfns(D0), vec![None, None]);
    assert!(d0.pt.map.is_empty() && d0.vas.used() == 0);
    // Xen keeps the table: growing maps it again.
    d0.on();
    gt.grow(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 1).unwrap();
    assert_eq!(
        gt.grant_access_unchecked(D1, Gfn(1), false),
        Ok(GrantRef(8))
    );
    gt.end_access(GrantRef(8)).unwrap();
    d0.release_table(&mut gt).unwrap();
    m.check_conservation().unwrap();
}

#[test]
fn grant_access_refuses_what_no_entry_can_say() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let mut gt = d0.table(1).unwrap();
    assert_eq!(
        gt.grant_access_unchecked(DomId::SELF, Gfn(1), false),
        Err(GrantError::BadDomain(DomId::SELF))
    );
    assert_eq!(
        gt.grant_access_unchecked(D1, Gfn(1 << 32), false),
        Err(GrantError::FrameTooLarge(Gfn(1 << 32)))
    );
    // 504 grants fill one frame; then the table must grow.
    for i in 0..504u32 {
        assert_eq!(
            gt.grant_access_unchecked(D1, Gfn(1), true),
            Ok(GrantRef(8 + i))
        );
    }
    assert_eq!(
        gt.grant_access_unchecked(D1, Gfn(1), true),
        Err(GrantError::TableFull)
    );
    d0.on();
    gt.grow(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 1).unwrap();
    assert_eq!(
        gt.grant_access_unchecked(D1, Gfn(1), true),
        Ok(GrantRef(512))
    );
    assert_eq!(
        gt.grow(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 63),
        Err(GrantError::TableSize { asked: 65, max: 64 })
    );
    assert_eq!(
        gt.grow(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 0),
        Err(GrantError::Empty)
    );
    for (r, _) in gt.grants().collect::<Vec<_>>() {
        gt.end_access(r).unwrap();
    }
    d0.release_table(&mut gt).unwrap();
}

#[test]
fn table_set_up_failures_leave_nothing() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let before = d0.t.clone();
    assert_eq!(d0.table(0).unwrap_err(), GrantError::Empty);
    assert_eq!(
        d0.table(65).unwrap_err(),
        GrantError::TableSize { asked: 65, max: 64 }
    );
    // Xen refuses the third frame: the first two are removed again.
    m.gnttab_inject(GntFault::ErrnoOnCall {
        op: GntOp::AddToPhysmap,
        nth: 2,
        errno: Errno::ENOMEM,
    });
    assert_eq!(
        d0.table(4).unwrap_err(),
        GrantError::Xen(XenError::Errno(Errno::ENOMEM))
    );
    assert!(m.gnttab_frame_gfns(D0).iter().all(Option::is_none));
    assert_eq!(d0.t, before);
    // The page tables refuse: likewise.
    d0.pt.fail_map = true;
    assert_eq!(
        d0.table(2).unwrap_err(),
        GrantError::Paging(PagingError::OutOfFrames)
    );
    d0.pt.fail_map = false;
    assert!(m.gnttab_frame_gfns(D0).iter().all(Option::is_none));
    assert_eq!(d0.t, before);
    // Query refused.
    m.gnttab_inject(GntFault::Errno {
        op: GntOp::QuerySize,
        errno: Errno::EFAULT,
    });
    assert_eq!(
        d0.table(1).unwrap_err(),
        GrantError::Xen(XenError::Errno(Errno::EFAULT))
    );
    // No hole, no window.
    let mut tiny = Agent::new(&m, D0, (0, 4096), (0x100000, 1), 0x400_0000_0000);
    assert_eq!(tiny.table(2).unwrap_err(), GrantError::NoHole(PageCount(2)));
    assert_eq!(d0.t, before);
    assert_eq!(d0.vas.used(), 0);
    assert_eq!(testmem::mapped(), 0);
}

#[test]
fn domu_grant_mapped_by_dom0_both_ways_on_arm() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let page = Gfn(0x40010);
    assert!(m.write_guest(D1, page, 0, &pattern(1)));
    let r = gt.grant_access_unchecked(D0, page, false).unwrap();
    assert_eq!(r, GrantRef(8));

    let holes = d0.holes();
    let gm = d0.map(D1, &[8], false).unwrap();
    assert_eq!(gm.gfns().start(), Gfn(0x40200));
    assert_eq!(d0.holes(), holes - 1);
    let reg = d0.t.region_at(Gfn(0x40200)).copied().unwrap();
    assert_eq!(
        (reg.kind, reg.backing),
        (
            RegionKind::Grant,
            Backing::Grant {
                dom: D1,
                gref: GrantRef(8)
            }
        )
    );
    // The bus address is the domU page's machine address.
    let mfn = m.p2m(D1)[&page];
    assert_eq!(gm.bus_addrs(), &[mfn.0 << 12]);
    // dom0 reads the domU's pattern and writes its own.
    let mut buf = vec![0u8; 4096];
    gm.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1));
    gm.write(0, &pattern(2)).unwrap();
    gm.write_obj::<u64>(8, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(gm.read_obj::<u64>(8), Ok(0x1122_3344_5566_7788));
    // While dom0 has it mapped, the domU cannot end the grant.
    let st = gt.state(r).unwrap();
    assert!(st.reading && st.writing);
    assert_eq!(gt.end_access(r), Err(GrantError::InUse(r)));
    d0.release(gm).unwrap();
    assert_eq!(d0.holes(), holes);
    assert!(m.gnttab_host_maps(D0).is_empty());
    assert_eq!(m.gnttab_handles(D0), 0);
    // The domU sees what dom0 wrote.
    let mut back = vec![0u8; 4096];
    assert!(m.read_guest(D1, page, 0, &mut back));
    let mut want = pattern(2);
    want[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes());
    assert_eq!(back, want);
    let st = gt.state(r).unwrap();
    assert!(!st.reading && !st.writing);
    gt.end_access(r).unwrap();
    d1.release_table(&mut gt).unwrap();
    m.check_conservation().unwrap();
}

#[test]
fn a_batch_with_bad_refs_is_undone_whole_and_names_them() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = x86(&m);
    let mut gt = d1.table(1).unwrap();
    for g in 0..3 {
        assert_eq!(
            gt.grant_access_unchecked(D0, Gfn(10 + g), false),
            Ok(GrantRef(8 + g as u32))
        );
    }
    let t0 = d0.t.clone();
    // 600 is beyond the domU's one-frame table; 11 is inside it but not
    // granted (Xen: general_error, not bad_gntref).
    let e = d0.map(D1, &[8, 9, 600, 11, 10], false).unwrap_err();
    assert_eq!(
        refused(e),
        vec![
            (2, 600, GntStatus::BadGntref),
            (3, 11, GntStatus::GeneralError)
        ]
    );
    assert_eq!(
        e_display(d0.map(D1, &[8, 600], true).unwrap_err()),
        "Xen refused 1 of 2 operations: [1] ref 600: GNTST_bad_gntref"
    );
    // The good ones were unmapped again: nothing in Xen, the table, the
    // window; no pin left on the domU's entries.
    assert_eq!(d0.t, t0);
    assert!(m.gnttab_host_maps(D0).is_empty());
    assert_eq!(m.gnttab_handles(D0), 0);
    assert!(d0.pt.map.is_empty() && d0.vas.used() == 0);
    for r in 8..11 {
        assert_eq!(m.gnttab_pins(D1, r), (0, 0));
        assert_eq!(
            m.gnttab_entry(D1, r).unwrap().flags & (GTF_READING | GTF_WRITING),
            0
        );
        gt.end_access(GrantRef(r)).unwrap();
    }
    d1.release_table(&mut gt).unwrap();
}

fn e_display(e: GrantError) -> String {
    e.to_string()
}

#[test]
fn refusals_count_all_and_list_the_first_eight() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let refs: Vec<u32> = (1000..1010).collect();
    match d0.map(D1, &refs, true).unwrap_err() {
        GrantError::Refused(r) => {
            assert_eq!((r.total(), r.of(), r.iter().count()), (10, 10, 8));
            assert_eq!(
                r.first(),
                Some(Refusal {
                    index: 0,
                    gref: GrantRef(1000),
                    status: GntStatus::BadGntref
                })
            );
            assert!(r.to_string().ends_with("and 2 more"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn read_only_grants_map_read_only_and_refuse_writes() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let page = Gfn(0x40020);
    assert!(m.write_guest(D1, page, 0, &pattern(7)));
    let r = gt.grant_access_unchecked(D0, page, true).unwrap();
    // A writable map of a read-only grant: general_error.
    assert_eq!(
        refused(d0.map(D1, &[r.0], false).unwrap_err()),
        vec![(0, r.0, GntStatus::GeneralError)]
    );
    let gm = d0.map(D1, &[r.0], true).unwrap();
    assert!(!gm.writable());
    assert!(d0.pt.map.values().all(|(_, a)| *a == Attrs::READ_ONLY));
    let reg = d0.t.region_at(gm.gfns().start()).unwrap();
    assert!(!reg.flags.contains(RegionFlags::WRITE));
    assert!(m.gnttab_host_maps(D0)[&gm.gfns().start()].readonly);
    // Writes are refused before memory is touched.
    assert_eq!(gm.write(0, &[1, 2, 3]), Err(AccessError::ReadOnly));
    assert_eq!(gm.write_obj::<u32>(0, 5), Err(AccessError::ReadOnly));
    let mut buf = vec![0u8; 4096];
    gm.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(7));
    let st = gt.state(r).unwrap();
    assert!(st.reading && !st.writing);
    assert_eq!(gt.end_access(r), Err(GrantError::InUse(r)));
    d0.release(gm).unwrap();
    let mut back = vec![0u8; 4096];
    assert!(m.read_guest(D1, page, 0, &mut back));
    assert_eq!(back, pattern(7));
    gt.end_access(r).unwrap();
    d1.release_table(&mut gt).unwrap();
}

#[test]
fn bad_domains() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    for dom in [DomId::SELF, DomId(7), DomId::XEN] {
        assert_eq!(
            refused(d0.map(dom, &[8], true).unwrap_err()),
            vec![(0, 8, GntStatus::BadDomain)]
        );
    }
    assert_eq!(d0.map(D1, &[], true).unwrap_err(), GrantError::Empty);
}

#[test]
fn byte_access_is_bounds_checked_and_crosses_pages() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let a = gt.grant_access_unchecked(D0, Gfn(0x40030), false).unwrap();
    let b = gt.grant_access_unchecked(D0, Gfn(0x40031), false).unwrap();
    let gm = d0.map(D1, &[a.0, b.0], false).unwrap();
    assert_eq!(gm.len(), 8192);
    // 20 bytes across the page boundary, from an odd offset.
    let data: Vec<u8> = (1..=20).collect();
    gm.write(4090, &data).unwrap();
    let mut got = [0u8; 20];
    gm.read(4090, &mut got).unwrap();
    assert_eq!(&got[..], &data[..]);
    let mut tail = [0u8; 6];
    assert!(m.read_guest(D1, Gfn(0x40030), 4090, &mut tail));
    assert_eq!(&tail[..], &data[..6]);
    let mut head = [0u8; 14];
    assert!(m.read_guest(D1, Gfn(0x40031), 0, &mut head));
    assert_eq!(&head[..], &data[6..]);
    assert_eq!(
        gm.read(8190, &mut [0u8; 3]),
        Err(AccessError::OutOfBounds {
            offset: 8190,
            len: 3,
            size: 8192
        })
    );
    assert_eq!(
        gm.write(u64::MAX, &[1]),
        Err(AccessError::OutOfBounds {
            offset: u64::MAX,
            len: 1,
            size: 8192
        })
    );
    assert_eq!(
        gm.read_obj::<u32>(2),
        Err(AccessError::Misaligned {
            offset: 2,
            align: 4
        })
    );
    assert_eq!(gm.read_obj::<u16>(8190), Ok(u16::from_ne_bytes([0, 0])));
    assert!(gm.read_obj::<u64>(8192).is_err());
    gm.write_obj::<u8>(8191, 0xab).unwrap();
    assert_eq!(gm.read_obj::<u8>(8191), Ok(0xab));
    d0.release(gm).unwrap();
    for r in [a, b] {
        gt.end_access(r).unwrap();
    }
    d1.release_table(&mut gt).unwrap();
}

#[test]
fn foreign_maps_get_the_same_byte_access() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    assert!(m.write_guest(D1, Gfn(5), 0, &pattern(3)));
    d0.on();
    let fm = map_foreign(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, D1, &[Gfn(5)], false).unwrap();
    let mut buf = vec![0u8; 4096];
    fm.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(3));
    assert_eq!(
        fm.read_obj::<u64>(8),
        Ok(u64::from_ne_bytes(buf[8..16].try_into().unwrap()))
    );
    assert_eq!(fm.write(0, &[1]), Err(AccessError::ReadOnly));
    fm.release(&m, &mut d0.t, &mut d0.pt, &mut d0.vas).unwrap();
    let fm = map_foreign(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, D1, &[Gfn(5)], true).unwrap();
    fm.write_obj::<u32>(0, 0xdead_beef).unwrap();
    fm.release(&m, &mut d0.t, &mut d0.pt, &mut d0.vas).unwrap();
    let mut w = [0u8; 4];
    assert!(m.read_guest(D1, Gfn(5), 0, &mut w));
    assert_eq!(u32::from_ne_bytes(w), 0xdead_beef);
}

#[test]
fn copies_both_ways_with_per_segment_status() {
    let m = XenModel::new(1 << 16);
    let (d0, mut d1) = x86(&m);
    let mut gt = d1.table(1).unwrap();
    let rw = gt.grant_access_unchecked(D0, Gfn(20), false).unwrap();
    let ro = gt.grant_access_unchecked(D0, Gfn(21), true).unwrap();
    assert!(m.write_guest(D1, Gfn(21), 0, &pattern(9)));
    assert!(m.write_guest(D0, Gfn(100), 0, &pattern(4)));
    d0.on();
    // dom0's frame 100 into the writable grant.
    copy_to_grant(
        &m,
        D1,
        &[CopySeg {
            gref: rw,
            grant_offset: 0,
            local: Gfn(100),
            local_offset: 0,
            len: 4096,
        }],
    )
    .unwrap();
    let mut got = vec![0u8; 4096];
    assert!(m.read_guest(D1, Gfn(20), 0, &mut got));
    assert_eq!(got, pattern(4));
    // The read-only grant into dom0's frame 101, in two pieces.
    copy_from_grant(
        &m,
        D1,
        &[
            CopySeg {
                gref: ro,
                grant_offset: 0,
                local: Gfn(101),
                local_offset: 0,
                len: 2048,
            },
            CopySeg {
                gref: ro,
                grant_offset: 2048,
                local: Gfn(101),
                local_offset: 2048,
                len: 2048,
            },
        ],
    )
    .unwrap();
    assert!(m.read_guest(D0, Gfn(101), 0, &mut got));
    assert_eq!(got, pattern(9));
    // Per-segment refusals: past the page, a read-only grant as the
    // destination, a frame that is not dom0's RAM, a bad reference. The
    // good segment is copied.
    let seg = |gref, off, local, len| CopySeg {
        gref,
        grant_offset: off,
        local,
        local_offset: 0,
        len,
    };
    let e = copy_to_grant(
        &m,
        D1,
        &[
            seg(rw, 4000, Gfn(100), 200),
            seg(ro, 0, Gfn(100), 8),
            seg(rw, 0, Gfn(0x100000), 8),
            seg(GrantRef(4000), 0, Gfn(100), 8),
            seg(rw, 16, Gfn(101), 16),
        ],
    )
    .unwrap_err();
    assert_eq!(
        refused(e),
        vec![
            (0, rw.0, GntStatus::BadCopyArg),
            (1, ro.0, GntStatus::GeneralError),
            (2, rw.0, GntStatus::BadPage),
            (3, 4000, GntStatus::BadGntref),
        ]
    );
    assert!(m.read_guest(D1, Gfn(20), 16, &mut got[..16]));
    assert_eq!(&got[..16], &pattern(9)[..16]);
    // Copies leave no pin behind.
    assert_eq!(m.gnttab_pins(D1, rw.0), (0, 0));
    assert_eq!(m.gnttab_entry(D1, rw.0).unwrap().flags, GTF_PERMIT_ACCESS);
    assert_eq!(copy_to_grant(&m, D1, &[]), Err(GrantError::Empty));
    m.gnttab_inject(GntFault::Errno {
        op: GntOp::Copy,
        errno: Errno::EFAULT,
    });
    assert_eq!(
        copy_from_grant(&m, D1, &[seg(rw, 0, Gfn(100), 8)]),
        Err(GrantError::Xen(XenError::Errno(Errno::EFAULT)))
    );
    for r in [rw, ro] {
        gt.end_access(r).unwrap();
    }
    d1.release_table(&mut gt).unwrap();
}

#[test]
fn own_grant_on_x86_unhooks_the_page_for_good() {
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let mut gt = d0.table(1).unwrap();
    let page = Gfn(200);
    assert!(m.write_guest(D0, page, 0, &pattern(5)));
    let mfn = m.p2m(D0)[&page];
    let r = gt.grant_access_unchecked(D0, page, false).unwrap();
    let seg = CopySeg {
        gref: r,
        grant_offset: 0,
        local: Gfn(201),
        local_offset: 0,
        len: 4096,
    };
    d0.on();
    copy_from_grant(&m, D0, &[seg]).unwrap();
    assert_eq!(
        refused(d0.map(DomId::SELF, &[r.0], false).unwrap_err()),
        vec![(0, r.0, GntStatus::BadDomain)],
        "DOMID_SELF is not a granting domain"
    );
    let gm = d0.map(D0, &[r.0], false).unwrap();
    let mut buf = vec![0u8; 4096];
    gm.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(5));
    // The page left its own GFN (x86 p2m_add_page), and stays gone.
    assert_eq!(m.page_ptr(D0, page), None);
    d0.release(gm).unwrap();
    assert_eq!(m.page_ptr(D0, page), None);
    assert!(m.leaked(D0).contains(&mfn));
    // As on real Xen: the grant names a GFN with nothing behind it now.
    assert_eq!(
        refused(copy_from_grant(&m, D0, &[seg]).unwrap_err()),
        vec![(0, r.0, GntStatus::BadPage)]
    );
    gt.end_access(r).unwrap();
    d0.release_table(&mut gt).unwrap();
    m.check_conservation().unwrap();
}

#[test]
fn own_grant_on_arm_is_visible_both_ways() {
    let m = XenModel::new(1 << 16);
    let (_, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let page = Gfn(0x40040);
    let r = gt.grant_access_unchecked(D1, page, false).unwrap();
    let gm = d1.map(D1, &[r.0], false).unwrap();
    gm.write_obj::<u64>(0, 42).unwrap();
    let mut w = [0u8; 8];
    assert!(m.read_guest(D1, page, 0, &mut w));
    assert_eq!(u64::from_ne_bytes(w), 42);
    d1.release(gm).unwrap();
    assert!(m.page_ptr(D1, page).is_some());
    gt.end_access(r).unwrap();
    d1.release_table(&mut gt).unwrap();
}

#[test]
fn map_failures_leave_nothing_behind() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = x86(&m);
    let mut gt = d1.table(1).unwrap();
    let refs: Vec<u32> = (0..3)
        .map(|i| gt.grant_access_unchecked(D0, Gfn(30 + i), false).unwrap().0)
        .collect();
    let t0 = d0.t.clone();
    let clean = |d0: &Agent<'_>| {
        assert_eq!(d0.t, t0);
        assert!(m.gnttab_host_maps(D0).is_empty());
        assert_eq!(m.gnttab_handles(D0), 0);
        assert!(d0.pt.map.is_empty());
        assert_eq!(d0.vas.used(), 0);
        for &r in &refs {
            assert_eq!(m.gnttab_pins(D1, r), (0, 0));
        }
    };
    // The whole call refused.
    m.gnttab_inject(GntFault::Errno {
        op: GntOp::Map,
        errno: Errno::EFAULT,
    });
    assert_eq!(
        d0.map(D1, &refs, false).unwrap_err(),
        GrantError::Xen(XenError::Errno(Errno::EFAULT))
    );
    clean(&d0);
    // Xen did the first entry, then failed: that one is taken back.
    m.gnttab_inject(GntFault::EfaultAfter {
        op: GntOp::Map,
        done: 1,
    });
    assert_eq!(
        d0.map(D1, &refs, false).unwrap_err(),
        GrantError::Xen(XenError::Errno(Errno::EFAULT))
    );
    clean(&d0);
    // The page tables refuse after Xen mapped: the mappings go again.
    d0.pt.fail_map = true;
    assert_eq!(
        d0.map(D1, &refs, false).unwrap_err(),
        GrantError::Paging(PagingError::OutOfFrames)
    );
    d0.pt.fail_map = false;
    clean(&d0);
    // No maptrack handle left: no_space for every entry.
    m.gnttab_set_maptrack_limit(D0, 1).unwrap();
    assert_eq!(
        refused(d0.map(D1, &refs, false).unwrap_err()),
        vec![
            (1, refs[1], GntStatus::NoSpace),
            (2, refs[2], GntStatus::NoSpace)
        ]
    );
    m.gnttab_set_maptrack_limit(D0, 1 << 18).unwrap();
    clean(&d0);
    // No hole; no window.
    let many: Vec<u32> = vec![8; 0x1001];
    assert_eq!(
        d0.map(D1, &many, true).unwrap_err(),
        GrantError::NoHole(PageCount(0x1001))
    );
    let mut small = Agent::new(&m, D0, (0, 4096), (0x100000, 0x1000), 0x500_0000_0000);
    small.vas =
        VaSpace::new(paging::Window::new(VirtAddr(0x500_0000_0000), 2 * PAGE_SIZE).unwrap());
    assert_eq!(
        small.map(D1, &refs, false).unwrap_err(),
        GrantError::NoVirtualSpace(PageCount(3))
    );
    clean(&d0);
    // Undoing fails too: the frames stay out of the holes, and say so.
    m.gnttab_inject(GntFault::Errno {
        op: GntOp::Unmap,
        errno: Errno::EFAULT,
    });
    assert_eq!(
        d0.map(D1, &[refs[0], 4000], false).unwrap_err(),
        GrantError::Unwind(Undo::Xen(XenError::Errno(Errno::EFAULT)))
    );
    assert_eq!(d0.t.count(RegionKind::Grant), PageCount(2));
    assert_eq!(m.gnttab_host_maps(D0).len(), 1);
    m.check_conservation().unwrap();
}

#[test]
fn release_failures_keep_the_frames_out_of_the_holes() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let a = gt.grant_access_unchecked(D0, Gfn(0x40050), false).unwrap();
    let b = gt.grant_access_unchecked(D0, Gfn(0x40051), false).unwrap();
    let holes = d0.holes();
    let gm = d0.map(D1, &[a.0, b.0], false).unwrap();
    // Something else takes the second frame's mapping away behind the
    // handle's back (a stray remove_from_physmap does not, on Arm: ENOENT;
    // a stray map over it does): its unmap then fails.
    d0.on();
    let mut over = [crate::xen::abi::gnttab::MapGrantRef::host(
        (gm.gfns().start().0 + 1) << 12,
        a.0,
        1,
        true,
    )];
    m.gnttab_map(&mut over).unwrap();
    assert_eq!(over[0].status(), GntStatus::Okay);
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert_eq!(
        e,
        GrantError::Unwind(Undo::Status(b, GntStatus::GeneralError))
    );
    // The first frame went back to the holes, the second did not.
    assert_eq!(d0.holes(), holes - 1);
    assert_eq!(d0.t.count(RegionKind::Grant), PageCount(1));
    let second = Gfn(gm.gfns().start().0 + 1);
    assert_eq!(gm.mapped_refs().collect::<Vec<_>>(), [(second, b)]);
    // Once the stray mapping is gone, the handle given back finishes.
    let mut stray = [crate::xen::abi::gnttab::UnmapGrantRef::host(
        second.0 << 12,
        over[0].handle,
    )];
    m.gnttab_unmap(&mut stray).unwrap();
    assert_eq!(stray[0].status(), GntStatus::Okay);
    d0.release(gm).unwrap();
    assert_eq!(d0.holes(), holes);
    assert!(m.gnttab_host_maps(D0).is_empty());
    assert_eq!(m.gnttab_handles(D0), 0);
    for r in [a, b] {
        assert_eq!(m.gnttab_pins(D1, r.0), (0, 0));
        gt.end_access(r).unwrap();
    }
    d1.release_table(&mut gt).unwrap();
    m.check_conservation().unwrap();
}

#[test]
fn x86_crashes_a_domain_that_maps_over_a_mapping() {
    // Not something the library does (it maps into holes only); the model
    // is as unforgiving as Xen.
    let m = XenModel::new(1 << 16);
    let (_, mut d1) = x86(&m);
    let mut gt = d1.table(1).unwrap();
    let a = gt.grant_access_unchecked(D0, Gfn(40), true).unwrap();
    m.set_current(D0).unwrap();
    let mut ops = [
        crate::xen::abi::gnttab::MapGrantRef::host(0x100000 << 12, a.0, 1, true),
        crate::xen::abi::gnttab::MapGrantRef::host(0x100000 << 12, a.0, 1, true),
    ];
    m.gnttab_map(&mut ops).unwrap();
    assert_eq!(
        (ops[0].status(), ops[1].status()),
        (GntStatus::Okay, GntStatus::GeneralError)
    );
    assert_eq!(m.shutdown_code(D0), Some(3));
}

#[test]
fn unmap_semantics_of_xen() {
    let m = XenModel::new(1 << 16);
    let (_, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let a = gt.grant_access_unchecked(D0, Gfn(0x40060), false).unwrap();
    m.set_current(D0).unwrap();
    let mut map = [crate::xen::abi::gnttab::MapGrantRef::host(
        0x40200 << 12,
        a.0,
        1,
        false,
    )];
    m.gnttab_map(&mut map).unwrap();
    let h = map[0].handle;
    use crate::xen::abi::gnttab::UnmapGrantRef;
    // host_addr 0: nothing done, okay, the handle stays.
    let mut u = [
        UnmapGrantRef::host(0, h),
        UnmapGrantRef::host(0x40200 << 12, h + 1),
    ];
    m.gnttab_unmap(&mut u).unwrap();
    assert_eq!(
        (u[0].status(), u[1].status()),
        (GntStatus::Okay, GntStatus::BadHandle)
    );
    assert_eq!(m.gnttab_handles(D0), 1);
    let mut u = [UnmapGrantRef::host(0x40200 << 12, h)];
    m.gnttab_unmap(&mut u).unwrap();
    assert_eq!(u[0].status(), GntStatus::Okay);
    assert_eq!(m.gnttab_handles(D0), 0);
    assert_eq!(m.gnttab_entry(D1, a.0).unwrap().flags, GTF_PERMIT_ACCESS);
    let mut u = [UnmapGrantRef::host(0x40200 << 12, h)];
    m.gnttab_unmap(&mut u).unwrap();
    assert_eq!(u[0].status(), GntStatus::BadHandle);
    // An entry whose flags are not GTF_permit_access, or name another
    // domain: general_error; no host_map flag: bad_gntref.
    m.gnttab_write_entry(
        D1,
        20,
        GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS,
            domid: 5,
            frame: 0x40061,
        },
    )
    .unwrap();
    let mut ops = [
        crate::xen::abi::gnttab::MapGrantRef::host(0x40201 << 12, 20, 1, true),
        crate::xen::abi::gnttab::MapGrantRef::host(0x40201 << 12, 21, 1, true),
        crate::xen::abi::gnttab::MapGrantRef {
            flags: 0,
            ..crate::xen::abi::gnttab::MapGrantRef::host(0x40201 << 12, a.0, 1, true)
        },
    ];
    m.gnttab_map(&mut ops).unwrap();
    assert_eq!(
        ops.map(|o| o.status()),
        [
            GntStatus::GeneralError,
            GntStatus::GeneralError,
            GntStatus::BadGntref
        ]
    );
    // A granted frame that is not the granter's RAM: bad_page.
    m.gnttab_write_entry(
        D1,
        21,
        GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS,
            domid: 0,
            frame: 0x10,
        },
    )
    .unwrap();
    let mut ops = [crate::xen::abi::gnttab::MapGrantRef::host(
        0x40201 << 12,
        21,
        1,
        true,
    )];
    m.gnttab_map(&mut ops).unwrap();
    assert_eq!(ops[0].status(), GntStatus::BadPage);
    assert_eq!(m.gnttab_entry(D1, 21).unwrap().flags, GTF_PERMIT_ACCESS);
    gt.end_access(a).unwrap();
}

#[test]
fn query_size() {
    let m = XenModel::new(1 << 16);
    let (_, _) = x86(&m);
    m.set_current(D1).unwrap();
    let q = m.gnttab_query_size(DomId::SELF).unwrap();
    assert_eq!(
        (q.status(), q.nr_frames, q.max_nr_frames),
        (GntStatus::Okay, 1, 64)
    );
    assert_eq!(
        m.gnttab_query_size(D0).unwrap().status(),
        GntStatus::PermissionDenied
    );
    assert_eq!(
        m.gnttab_query_size(DomId(9)).unwrap().status(),
        GntStatus::BadDomain
    );
    m.set_current(D0).unwrap();
    assert_eq!(m.gnttab_query_size(D1).unwrap().status(), GntStatus::Okay);
    assert_eq!(
        m.add_to_physmap(
            crate::xen::abi::physmap::SPACE_GRANT_TABLE,
            64,
            Gfn(0x100000)
        ),
        Err(XenError::Errno(Errno::EINVAL))
    );
    // Xen takes the index as 32 bits: 2^32 is frame 0.
    assert_eq!(
        m.add_to_physmap(
            crate::xen::abi::physmap::SPACE_GRANT_TABLE,
            1 << 32,
            Gfn(0x100000)
        ),
        Ok(())
    );
    assert_eq!(m.gnttab_frame_gfns(D0), vec![Some(Gfn(0x100000))]);
    assert_eq!(
        m.add_to_physmap(
            crate::xen::abi::physmap::SPACE_GMFN_FOREIGN,
            0,
            Gfn(0x100001)
        ),
        Err(XenError::Errno(Errno::ENOSYS))
    );
}

// ---- Random sequences ----

#[derive(Clone, Debug)]
enum Act {
    /// dom0 maps these (indexes into the granted pages; values past them
    /// are bad references), read-only or not.
    Map(Vec<u16>, bool),
    /// dom0 releases its `n`-th mapping (modulo how many it has).
    Release(usize),
    /// The domU tries to end grant `n` (modulo).
    End(usize),
    /// The domU grants page `n` again if its grant was ended.
    Regrant(usize),
    /// dom0 copies between grant `n` and its frame, either way.
    Copy(usize, bool, u16, u16),
    /// The next grant operation of this kind fails.
    Fault(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        5 => (proptest::collection::vec(0u16..10, 1..4), any::<bool>()).prop_map(|(v, ro)| Act::Map(v, ro)),
        3 => any::<usize>().prop_map(Act::Release),
        2 => any::<usize>().prop_map(Act::End),
        1 => any::<usize>().prop_map(Act::Regrant),
        2 => (any::<usize>(), any::<bool>(), 0u16..4200, 0u16..300).prop_map(|(n, to, off, len)| Act::Copy(n, to, off, len)),
        1 => (0u8..4).prop_map(Act::Fault),
    ]
}

const PAGES: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_sequences_keep_xen_the_table_and_the_window_in_step(
        acts in proptest::collection::vec(act(), 1..40)
    ) {
        let m = XenModel::new(1 << 16);
        let (mut d0, mut d1) = arm(&m);
        let mut gt = d1.table(1).unwrap();
        let page = |i: usize| Gfn(0x40100 + i as u64);
        for i in 0..PAGES {
            prop_assert!(m.write_guest(D1, page(i), 0, &pattern(i as u8)));
        }
        // grants[i]: the reference of page i, while granted; readonly.
        let mut grants: Vec<Option<(GrantRef, bool)>> = (0..PAGES)
            .map(|i| Some((gt.grant_access_unchecked(D0, page(i), i % 3 == 0).unwrap(), i % 3 == 0)))
            .collect();
        let holes = d0.holes();
        let mut maps: Vec<GrantMap> = Vec::new();
        for a in &acts {
            match a {
                Act::Map(idx, ro) => {
                    let refs: Vec<u32> = idx
                        .iter()
                        .map(|&i| match grants.get(usize::from(i)) {
                            Some(Some((r, _))) => r.0,
                            Some(None) => 8 + u32::from(i) + 100, // ended: not granted
                            None => 600 + u32::from(i),           // beyond the table
                        })
                        .collect();
                    let before = d0.t.clone();
                    match d0.map(D1, &refs, *ro) {
                        Ok(gm) => {
                            // Every reference was good for this access.
                            for (k, r) in refs.iter().enumerate() {
                                let i = grants.iter().position(|g| g.is_some_and(|(x, _)| x.0 == *r)).unwrap();
                                prop_assert!(*ro || !grants[i].unwrap().1);
                                let mut want = vec![0u8; 4096];
                                prop_assert!(m.read_guest(D1, page(i), 0, &mut want));
                                let mut got = vec![0u8; 4096];
                                gm.read(k as u64 * PAGE_SIZE, &mut got).unwrap();
                                prop_assert_eq!(got, want);
                            }
                            maps.push(gm);
                        }
                        Err(GrantError::Refused(r)) => {
                            prop_assert!(r.total() > 0);
                            prop_assert_eq!(&d0.t, &before);
                        }
                        Err(GrantError::NoHole(_)) | Err(GrantError::Xen(_)) => {
                            prop_assert_eq!(&d0.t, &before);
                        }
                        // An injected unmap fault hit the undo: the frames
                        // stay out of the holes for good; stop here.
                        Err(GrantError::Unwind(_)) => return Ok(()),
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Act::Release(n) => {
                    if !maps.is_empty() {
                        let mut gm = maps.remove(n % maps.len());
                        // An injected unmap fault stops a release; the
                        // handle comes back and the next try finishes
                        // (one queued fault per try).
                        let mut tries = 0;
                        while let Err(e) = d0.release(gm) {
                            let (back, e) = e.into_parts();
                            prop_assert!(
                                matches!(e, GrantError::Unwind(Undo::Xen(_))),
                                "unexpected {:?}",
                                e
                            );
                            tries += 1;
                            prop_assert!(tries < 8);
                            gm = back;
                        }
                    }
                }
                Act::End(n) => {
                    let i = n % PAGES;
                    if let Some((r, _)) = grants[i] {
                        let mapped = maps.iter().any(|g| g.refs().contains(&r));
                        match gt.end_access(r) {
                            Ok(()) => {
                                prop_assert!(!mapped);
                                grants[i] = None;
                            }
                            Err(GrantError::InUse(_)) => prop_assert!(mapped),
                            Err(e) => prop_assert!(false, "unexpected {:?}", e),
                        }
                    }
                }
                Act::Regrant(n) => {
                    let i = n % PAGES;
                    if grants[i].is_none() {
                        let ro = i % 3 == 0;
                        grants[i] = Some((gt.grant_access_unchecked(D0, page(i), ro).unwrap(), ro));
                    }
                }
                Act::Copy(n, to, off, len) => {
                    let i = n % PAGES;
                    let gref = grants[i].map_or(GrantRef(4000), |g| g.0);
                    let seg = CopySeg { gref, grant_offset: *off, local: Gfn(0x1100), local_offset: 0, len: *len };
                    d0.on();
                    let r = if *to { copy_to_grant(&m, D1, &[seg]) } else { copy_from_grant(&m, D1, &[seg]) };
                    let fits = usize::from(*off) + usize::from(*len) <= 4096;
                    match r {
                        Ok(()) => prop_assert!(fits && grants[i].is_some() && (!*to || !grants[i].unwrap().1)),
                        Err(GrantError::Refused(_)) | Err(GrantError::Xen(_)) => {}
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Act::Fault(k) => {
                    let op = [GntOp::Map, GntOp::Unmap, GntOp::Copy, GntOp::Map][usize::from(*k)];
                    if *k == 3 {
                        m.gnttab_inject(GntFault::EfaultAfter { op, done: 1 });
                    } else {
                        m.gnttab_inject(GntFault::Errno { op, errno: Errno::EFAULT });
                    }
                }
            }
            // Hole frames are conserved: each is a hole or in a live map.
            let live: u64 = maps.iter().map(|g| g.gfns().len().0).sum();
            prop_assert_eq!(d0.holes() + live, holes);
            prop_assert_eq!(d0.vas.used(), live);
            prop_assert_eq!(d0.pt.map.len() as u64, live);
            prop_assert_eq!(m.gnttab_handles(D0) as u64, live);
            // The table and Xen agree, frame by frame.
            let mut want: BTreeMap<Gfn, (u32, bool)> = BTreeMap::new();
            for g in &maps {
                for (k, r) in g.refs().iter().enumerate() {
                    let gfn = Gfn(g.gfns().start().0 + k as u64);
                    want.insert(gfn, (r.0, !g.writable()));
                    let reg = d0.t.region_at(gfn).copied().unwrap();
                    prop_assert_eq!(reg.kind, RegionKind::Grant);
                    let off = gfn.0 - reg.range.start().0;
                    prop_assert_eq!(reg.backing.offset(off), Some(Backing::Grant { dom: D1, gref: *r }));
                }
            }
            let xen: BTreeMap<Gfn, (u32, bool)> = m
                .gnttab_host_maps(D0)
                .into_iter()
                .map(|(g, h)| (g, (h.gref, h.readonly)))
                .collect();
            prop_assert_eq!(xen, want);
            // The domU's flags follow the mappings.
            for (i, g) in grants.iter().enumerate() {
                if let Some((r, _)) = g {
                    let st = gt.state(*r).unwrap();
                    let reading = maps.iter().any(|g| g.refs().contains(r));
                    let writing = maps.iter().any(|g| g.writable() && g.refs().contains(r));
                    prop_assert_eq!((st.reading, st.writing), (reading, writing), "page {}", i);
                }
            }
            d0.t.check_invariants().unwrap();
            m.check_conservation().unwrap();
        }
        m.clear_faults();
        for gm in maps.drain(..) {
            let _ = d0.release(gm);
        }
        // Drain queued grant faults before tearing down.
        for (r, _) in gt.grants().collect::<Vec<_>>() {
            let _ = gt.end_access(r);
        }
        let _ = d1.release_table(&mut gt);
    }
}

#[test]
fn per_call_batches_count_hypercalls_and_undo_across_them() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = x86(&m);
    let mut gt = d1.table(1).unwrap();
    let refs: Vec<GrantRef> = (0..10)
        .map(|i| gt.grant_access_unchecked(D0, Gfn(50 + i), true).unwrap())
        .collect();
    d0.on();
    let calls = m.gnttab_calls(GntOp::Map);
    let gm =
        map_grants_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, D1, &refs, true, 3).unwrap();
    assert_eq!(m.gnttab_calls(GntOp::Map) - calls, 4);
    let calls = m.gnttab_calls(GntOp::Unmap);
    gm.release_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 4)
        .unwrap();
    assert_eq!(m.gnttab_calls(GntOp::Unmap) - calls, 3);
    // The third hypercall fails: the first two calls' mappings are undone.
    let t0 = d0.t.clone();
    m.gnttab_inject(GntFault::ErrnoOnCall {
        op: GntOp::Map,
        nth: 2,
        errno: Errno::EFAULT,
    });
    assert_eq!(
        map_grants_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, D1, &refs, true, 3)
            .unwrap_err(),
        GrantError::Xen(XenError::Errno(Errno::EFAULT))
    );
    assert_eq!(d0.t, t0);
    assert!(m.gnttab_host_maps(D0).is_empty());
    // An unmap hypercall fails mid-release: what the others unmapped goes
    // back to the holes, the rest stays out.
    let holes = d0.holes();
    let gm =
        map_grants_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, D1, &refs, true, 0).unwrap();
    m.gnttab_inject(GntFault::ErrnoOnCall {
        op: GntOp::Unmap,
        nth: 1,
        errno: Errno::EFAULT,
    });
    let (gm, e) = gm
        .release_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 4)
        .unwrap_err()
        .into_parts();
    assert_eq!(
        e,
        GrantError::Unwind(Undo::Xen(XenError::Errno(Errno::EFAULT)))
    );
    // Calls 1 and 3 unmapped 4 + 2 frames; call 2's 4 stay.
    assert_eq!(d0.holes(), holes - 4);
    assert_eq!(m.gnttab_host_maps(D0).len(), 4);
    // Released again: those 4 alone, in one call.
    let calls = m.gnttab_calls(GntOp::Unmap);
    gm.release_per_call(&m, &mut d0.t, &mut d0.pt, &mut d0.vas, 4)
        .unwrap();
    assert_eq!(m.gnttab_calls(GntOp::Unmap) - calls, 1);
    assert_eq!(d0.holes(), holes);
    assert!(m.gnttab_host_maps(D0).is_empty());
}

/// What Xen 4.17 answered on a real aarch64 dom0 + dom0less domU boot
/// (`grant-xchg=8`), replayed against the model.
#[test]
fn real_xen_arm_exchange_replayed() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    // Before the domU has issued it: general_error (not bad_gntref).
    assert_eq!(
        refused(d0.map(D1, &[8], false).unwrap_err()),
        vec![(0, 8, GntStatus::GeneralError)]
    );
    let page = Gfn(0x40048);
    let r = gt.grant_access_unchecked(D0, page, false).unwrap();
    assert_eq!(r, GrantRef(8));
    let gm = d0.map(D1, &[8], false).unwrap();
    assert_eq!(gm.gfns().start(), Gfn(0x40200));
    let holes = d0.holes();
    assert_eq!(
        refused(d0.map(D1, &[8, 600, 9], true).unwrap_err()),
        vec![
            (1, 600, GntStatus::BadGntref),
            (2, 9, GntStatus::GeneralError)
        ]
    );
    assert_eq!(d0.holes(), holes);
    let seg = CopySeg {
        gref: r,
        grant_offset: 0,
        local: Gfn(0x1100),
        local_offset: 0,
        len: 4096,
    };
    d0.on();
    assert_eq!(
        refused(
            copy_from_grant(
                &m,
                D1,
                &[
                    CopySeg {
                        grant_offset: 4000,
                        len: 200,
                        ..seg
                    },
                    CopySeg {
                        local: gm.gfns().start(),
                        ..seg
                    },
                ],
            )
            .unwrap_err()
        ),
        vec![(0, 8, GntStatus::BadCopyArg), (1, 8, GntStatus::BadPage)]
    );
    copy_from_grant(&m, D1, &[seg]).unwrap();
    d0.release(gm).unwrap();
    gt.end_access(r).unwrap();
    d1.release_table(&mut gt).unwrap();
}

#[test]
fn the_agents_own_memory_is_never_granted() {
    use crate::region::{Region, RegionFlags, RegionKind, RegionTable, ReservedUse};
    let mut t = RegionTable::new();
    let fr = |s, n| crate::region::FrameRange::new(Gfn(s), crate::addr::PageCount(n)).unwrap();
    t.add(Region::new(
        fr(0x100, 4),
        RegionKind::Reserved(ReservedUse::Image),
        RegionFlags::PINNED,
    ))
    .unwrap();
    t.add(Region::new(
        fr(0x104, 4),
        RegionKind::Reserved(ReservedUse::Heap),
        RegionFlags::PINNED,
    ))
    .unwrap();
    t.add(Region::new(
        fr(0x108, 4),
        RegionKind::Reserved(ReservedUse::PageTables),
        RegionFlags::PINNED,
    ))
    .unwrap();
    t.add(Region::new(
        fr(0x10c, 4),
        RegionKind::Ram,
        RegionFlags::READ | RegionFlags::WRITE,
    ))
    .unwrap();
    t.add(Region::new(
        fr(0x110, 4),
        RegionKind::Hole,
        RegionFlags::empty(),
    ))
    .unwrap();
    let m = XenModel::new(1 << 16);
    let (mut d0, _) = x86(&m);
    let mut gt = d0.table(1).unwrap();
    for (g, kind) in [
        (0x100, Some(RegionKind::Reserved(ReservedUse::Image))),
        (0x105, Some(RegionKind::Reserved(ReservedUse::Heap))),
        (0x10b, Some(RegionKind::Reserved(ReservedUse::PageTables))),
        (0x111, Some(RegionKind::Hole)),
        (0x900, None),
    ] {
        assert_eq!(
            gt.grant_access(&t, D1, Gfn(g), false),
            Err(GrantError::NotGrantable {
                frame: Gfn(g),
                kind
            }),
            "{g:#x}"
        );
    }
    assert_eq!(gt.active(), 0, "nothing was granted");
    let r = gt.grant_access(&t, D1, Gfn(0x10c), true).unwrap();
    gt.end_access(r).unwrap();
    let m0 = d0.on();
    gt.release(m0, &mut d0.t, &mut d0.pt, &mut d0.vas).unwrap();
}

// ---- Releases that fail part-way, and leaks ----

/// Make the table refuse to give `gfn` back (a release expects `from`
/// there and finds `to`), or, called the other way round, accept again.
fn tamper(t: &mut RegionTable, gfn: Gfn, from: RegionKind, to: RegionKind) {
    t.modify(
        FrameRange::new(gfn, PageCount(1)).unwrap(),
        crate::region::Change {
            kind: Some(to),
            expect: Some(from),
            ..crate::region::Change::default()
        },
    )
    .unwrap();
}

/// A grant map release stopped at each of its steps in turn: the error,
/// the handle given back with exactly what is left (and no byte access
/// once the window is gone), and a second release that finishes without
/// redoing anything. Nothing is left: page tables, window, holes, Xen's
/// grant mappings and handles, the granter's pins; no leak reported.
#[test]
fn every_step_of_a_grant_map_release_fails_once_and_the_retry_finishes() {
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let pages = [Gfn(0x40070), Gfn(0x40071), Gfn(0x40072)];
    let refs: Vec<GrantRef> = pages
        .iter()
        .map(|&p| gt.grant_access_unchecked(D0, p, false).unwrap())
        .collect();
    let raw: Vec<u32> = refs.iter().map(|r| r.0).collect();
    crate::leak::test_hook::take();
    let before = d0.t.clone();
    let holes = d0.holes();
    let all = Outstanding {
        window_pages: 3,
        in_xen: 3,
        held: 3,
    };
    let clean = |d0: &Agent<'_>| {
        assert_eq!(d0.t, before);
        assert!(d0.pt.map.is_empty());
        assert_eq!(d0.vas.used(), 0);
        assert!(m.gnttab_host_maps(D0).is_empty());
        assert_eq!(m.gnttab_handles(D0), 0);
        for &r in &raw {
            assert_eq!(m.gnttab_pins(D1, r), (0, 0));
        }
        m.check_conservation().unwrap();
    };
    let unmaps = || m.gnttab_calls(GntOp::Unmap);

    // 1. The page tables refuse to unmap the window: nothing changed, and
    // the mapping still reads.
    let gm = d0.map(D1, &raw, false).unwrap();
    d0.pt.fail_unmap = true;
    let calls = unmaps();
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert_eq!(e, GrantError::Paging(PagingError::OutOfFrames));
    assert_eq!(gm.outstanding(), all);
    assert_eq!(unmaps(), calls, "Xen was not asked");
    assert_eq!(d0.holes(), holes - 3);
    assert!(gm.window().is_some() && gm.read_obj::<u64>(0).is_ok());
    d0.pt.fail_unmap = false;
    d0.release(gm).unwrap();
    clean(&d0);

    // 2. Xen refuses the unmap hypercall as a whole: the window is gone
    // (no byte access), every grant still mapped.
    let gm = d0.map(D1, &raw, false).unwrap();
    m.gnttab_inject(GntFault::Errno {
        op: GntOp::Unmap,
        errno: Errno::EFAULT,
    });
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert_eq!(
        e,
        GrantError::Unwind(Undo::Xen(XenError::Errno(Errno::EFAULT)))
    );
    assert_eq!(
        gm.outstanding(),
        Outstanding {
            window_pages: 0,
            ..all
        }
    );
    assert_eq!(gm.window(), None);
    assert_eq!(gm.read_obj::<u64>(0), Err(AccessError::NotMapped));
    assert_eq!(gm.write(0, &[1]), Err(AccessError::NotMapped));
    assert_eq!(m.gnttab_host_maps(D0).len(), 3);
    assert!(d0.pt.map.is_empty() && d0.vas.used() == 0);
    let calls = unmaps();
    d0.release(gm).unwrap();
    assert_eq!(unmaps() - calls, 1);
    clean(&d0);

    // 3. Xen unmaps the first grant, then fails: that frame is back in the
    // holes, the other two are unmapped by the retry alone.
    let gm = d0.map(D1, &raw, false).unwrap();
    m.gnttab_inject(GntFault::EfaultAfter {
        op: GntOp::Unmap,
        done: 1,
    });
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert_eq!(
        e,
        GrantError::Unwind(Undo::Xen(XenError::Errno(Errno::EFAULT)))
    );
    let first = gm.gfns().start().0;
    assert_eq!(
        gm.mapped_refs().collect::<Vec<_>>(),
        [(Gfn(first + 1), refs[1]), (Gfn(first + 2), refs[2])]
    );
    assert_eq!(
        gm.outstanding(),
        Outstanding {
            window_pages: 0,
            in_xen: 2,
            held: 2
        }
    );
    assert_eq!(d0.holes(), holes - 2);
    assert_eq!(m.gnttab_pins(D1, raw[0]), (0, 0));
    d0.release(gm).unwrap();
    clean(&d0);

    // 4. Xen refuses one unmap (another mapping was put over the frame):
    // that grant alone stays; once the stray mapping is gone, the retry
    // unmaps it.
    let gm = d0.map(D1, &raw, false).unwrap();
    let second = Gfn(gm.gfns().start().0 + 1);
    d0.on();
    let mut over = [crate::xen::abi::gnttab::MapGrantRef::host(
        second.0 << 12,
        raw[0],
        1,
        true,
    )];
    m.gnttab_map(&mut over).unwrap();
    assert_eq!(over[0].status(), GntStatus::Okay);
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert_eq!(
        e,
        GrantError::Unwind(Undo::Status(refs[1], GntStatus::GeneralError))
    );
    assert_eq!(gm.mapped_refs().collect::<Vec<_>>(), [(second, refs[1])]);
    assert_eq!(d0.holes(), holes - 1);
    let mut stray = [crate::xen::abi::gnttab::UnmapGrantRef::host(
        second.0 << 12,
        over[0].handle,
    )];
    m.gnttab_unmap(&mut stray).unwrap();
    assert_eq!(stray[0].status(), GntStatus::Okay);
    d0.release(gm).unwrap();
    clean(&d0);

    // 5. The table refuses the holes back: Xen has let go of everything
    // (no grant is unmapped twice: the retry makes no unmap call).
    let gm = d0.map(D1, &raw, false).unwrap();
    let at = gm.gfns().start();
    tamper(&mut d0.t, at, RegionKind::Grant, RegionKind::Foreign);
    let (gm, e) = d0.release(gm).unwrap_err().into_parts();
    assert!(matches!(e, GrantError::Table(_)), "{e:?}");
    assert_eq!(
        gm.outstanding(),
        Outstanding {
            window_pages: 0,
            in_xen: 0,
            held: 3
        }
    );
    assert!(m.gnttab_host_maps(D0).is_empty());
    assert_eq!(d0.holes(), holes - 3);
    tamper(&mut d0.t, at, RegionKind::Foreign, RegionKind::Grant);
    let calls = unmaps();
    d0.release(gm).unwrap();
    assert_eq!(unmaps(), calls, "nothing unmapped twice");
    clean(&d0);

    assert_eq!(crate::leak::test_hook::take(), [], "nothing leaked");
    for r in refs {
        gt.end_access(r).unwrap();
    }
    d1.release_table(&mut gt).unwrap();
}

/// The agent's own table: a release stopped at each step keeps the rest
/// recorded (no growing meanwhile), and the next release finishes, each
/// frame removed from the physmap once. A grant whose end is refused while
/// the other side maps it stays in the table and is ended later.
#[test]
fn every_step_of_a_table_release_fails_once_and_the_retry_finishes() {
    use crate::xen::model::{Fault, Op as XOp};
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = x86(&m);
    crate::leak::test_hook::take();
    let before = d0.t.clone();
    let removes = || m.calls(XOp::RemoveFromPhysmap);
    // Two groups of frames: 2 at set-up, 1 grown.
    let table = |d0: &mut Agent<'_>| {
        let mut gt = d0.table(2).unwrap();
        let m0 = d0.on();
        gt.grow(m0, &mut d0.t, &mut d0.pt, &mut d0.vas, 1).unwrap();
        gt
    };
    let clean = |d0: &Agent<'_>, gt: &GrantTable| {
        assert_eq!(d0.t, before);
        assert!(d0.pt.map.is_empty());
        assert_eq!(d0.vas.used(), 0);
        assert!(m.gnttab_frame_gfns(D0).iter().all(Option::is_none));
        assert!(gt.outstanding().is_empty());
        assert_eq!(gt.frames(), 0);
        m.check_conservation().unwrap();
    };
    let all = Outstanding {
        window_pages: 3,
        in_xen: 3,
        held: 3,
    };

    // 1. The page tables refuse: nothing changed, grants still possible.
    let mut gt = table(&mut d0);
    d0.pt.fail_unmap = true;
    assert_eq!(
        d0.release_table(&mut gt),
        Err(GrantError::Paging(PagingError::OutOfFrames))
    );
    assert_eq!(gt.outstanding(), all);
    let r = gt.grant_access_unchecked(D1, Gfn(5), true).unwrap();
    gt.end_access(r).unwrap();
    d0.pt.fail_unmap = false;
    let calls = removes();
    d0.release_table(&mut gt).unwrap();
    assert_eq!(removes() - calls, 3);
    clean(&d0, &gt);

    // 2. Xen refuses to remove the first frame of the last group: that
    // group is out of the window, the table may not grow, and the retry
    // removes each frame once.
    let mut gt = table(&mut d0);
    let last = gt.frame_gfns().nth(2).unwrap();
    m.inject(Fault::Errno {
        op: XOp::RemoveFromPhysmap,
        errno: Errno::EBUSY,
    });
    let calls = removes();
    assert_eq!(
        d0.release_table(&mut gt),
        Err(GrantError::Unwind(Undo::Physmap(
            last,
            XenError::Errno(Errno::EBUSY)
        )))
    );
    assert_eq!(
        gt.outstanding(),
        Outstanding {
            window_pages: 2,
            ..all
        }
    );
    assert_eq!(gt.frames(), 2);
    let m0 = d0.on();
    assert_eq!(
        gt.grow(m0, &mut d0.t, &mut d0.pt, &mut d0.vas, 1),
        Err(GrantError::Releasing)
    );
    d0.release_table(&mut gt).unwrap();
    assert_eq!(removes() - calls, 4, "the refused one, then each once");
    clean(&d0, &gt);

    // 3. Xen removes the first frame of a group, refuses the second.
    let mut gt = d0.table(2).unwrap();
    m.inject(Fault::ErrnoOnCall {
        op: XOp::RemoveFromPhysmap,
        nth: 1,
        errno: Errno::EBUSY,
    });
    assert!(matches!(
        d0.release_table(&mut gt),
        Err(GrantError::Unwind(Undo::Physmap(..)))
    ));
    assert_eq!(
        gt.outstanding(),
        Outstanding {
            window_pages: 0,
            in_xen: 1,
            held: 2
        }
    );
    let calls = removes();
    d0.release_table(&mut gt).unwrap();
    assert_eq!(removes() - calls, 1);
    clean(&d0, &gt);

    // 4. The table refuses the holes back: Xen let go of every frame, the
    // retry asks Xen nothing.
    let mut gt = d0.table(2).unwrap();
    let at = gt.frame_gfns().next().unwrap();
    tamper(&mut d0.t, at, RegionKind::Grant, RegionKind::Foreign);
    assert!(matches!(
        d0.release_table(&mut gt),
        Err(GrantError::Table(_))
    ));
    assert_eq!(
        gt.outstanding(),
        Outstanding {
            window_pages: 0,
            in_xen: 0,
            held: 2
        }
    );
    tamper(&mut d0.t, at, RegionKind::Foreign, RegionKind::Grant);
    let calls = removes();
    d0.release_table(&mut gt).unwrap();
    assert_eq!(removes(), calls);
    clean(&d0, &gt);

    // 5. A grant the other side maps: ending it is refused and it stays;
    // so is the release. After the unmap both go through.
    let mut gt = d0.table(1).unwrap();
    let r = gt.grant_access_unchecked(D1, Gfn(60), true).unwrap();
    let gm = d1.map(D0, &[r.0], true).unwrap();
    assert_eq!(gt.end_access(r), Err(GrantError::InUse(r)));
    assert_eq!(
        gt.grants().collect::<Vec<_>>(),
        [(
            r,
            Grant {
                dom: D1,
                frame: Gfn(60),
                readonly: true
            }
        )]
    );
    assert_eq!(d0.release_table(&mut gt), Err(GrantError::GrantsActive(1)));
    d1.release(gm).unwrap();
    gt.end_access(r).unwrap();
    d0.release_table(&mut gt).unwrap();
    clean(&d0, &gt);

    assert_eq!(crate::leak::test_hook::take(), [], "nothing leaked");
}

/// Dropped unreleased, every grant handle reports what it still held to
/// the hook (no defmt here); released ones report nothing.
#[test]
fn dropped_grant_handles_are_reported_to_the_hook() {
    use crate::leak::{test_hook::take, LeakKind};
    let m = XenModel::new(1 << 16);
    let (mut d0, mut d1) = arm(&m);
    let mut gt = d1.table(1).unwrap();
    let a = gt.grant_access_unchecked(D0, Gfn(0x40080), false).unwrap();
    let b = gt.grant_access_unchecked(D0, Gfn(0x40081), false).unwrap();
    take();
    let gm = d0.map(D1, &[a.0, b.0], false).unwrap();
    let (gfns, va) = (gm.gfns(), gm.va());
    drop(gm);
    let leaks = take();
    assert_eq!(leaks.len(), 1);
    let l = leaks[0];
    assert_eq!(
        (l.kind, l.domain, l.frames, l.va, l.grants),
        (LeakKind::GrantMap, Some(D1), Some(gfns), Some(va), 0)
    );
    assert_eq!(
        l.outstanding,
        Outstanding {
            window_pages: 2,
            in_xen: 2,
            held: 2
        }
    );
    // What a drop after a failed release says: only what is left.
    let gm = d0.map(D1, &[a.0, b.0], false).unwrap();
    m.gnttab_inject(GntFault::EfaultAfter {
        op: GntOp::Unmap,
        done: 1,
    });
    let e = d0.release(gm).unwrap_err();
    assert_eq!(take(), [], "given back, not leaked");
    let _ = e.into_error();
    let leaks = take();
    assert_eq!(leaks.len(), 1);
    assert_eq!(
        (leaks[0].va, leaks[0].outstanding),
        (
            None,
            Outstanding {
                window_pages: 0,
                in_xen: 1,
                held: 1
            }
        )
    );
    // The grant table, with a grant issued.
    let mut own = d0.table(1).unwrap();
    let first = own.frame_gfns().next().unwrap();
    own.grant_access_unchecked(D1, Gfn(0x1100), true).unwrap();
    drop(own);
    let leaks = take();
    assert_eq!(leaks.len(), 1);
    assert_eq!(
        (leaks[0].kind, leaks[0].domain, leaks[0].grants),
        (LeakKind::GrantTable, None, 1)
    );
    assert_eq!(leaks[0].frames.map(|f| f.start()), Some(first));
    assert!(leaks[0].to_string().contains("leaked"));
    // Released: nothing reported.
    let gm = d0.map(D1, &[a.0], true).unwrap();
    d0.release(gm).unwrap();
    let _ = gt.state(a);
    assert_eq!(take(), []);
}
