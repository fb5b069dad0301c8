//! Machine frames of the agent's own guest frames, read from Xen's
//! machine-to-phys table (M2P).
//!
//! A translated guest (PVH, Arm) is never told the machine frames behind its
//! guest frames, but Xen keeps, for every machine frame, the guest frame it
//! backs, and on x86 shares that table read-only with privileged domains.
//! A privileged agent maps the table's pages (`XENMEM_machphys_mfn_list`
//! gives their frames; `add_to_physmap_batch` maps them as `DOMID_XEN`
//! foreign frames into a hole) and looks for its own frames in it. This is
//! how the agent learns the bus address of a contiguous buffer on an x86
//! dom0; where it cannot (unprivileged, Arm, a table too large), the answer
//! is an error, never a guess.
//!
//! What Xen 4.17 gives (read in `common/memory.c` and
//! `arch/x86/x86_64/mm.c`, and measured, see `docs/xen-facts.md`):
//!
//! - `XENMEM_maximum_ram_page` is `max_page`: one past the highest machine
//!   frame, so the table has `max_page` entries (a table of whole chunks
//!   ends exactly on a 1 GiB boundary of machine memory).
//! - The table is made of 2 MiB chunks, each covering 2^18 machine frames;
//!   `XENMEM_machphys_mfn_list` lists each chunk's first frame, up to
//!   `max_page`. `paging_init` never allocates a chunk that covers no RAM
//!   (the hole below 4 GiB, say), and the list repeats the frame listed
//!   before it there: mapping it would read the previous chunk's entries
//!   as if they were this one's. Such a chunk is skipped.
//! - Entries are the GFN the owning domain has the frame at, or all-ones
//!   (`INVALID_M2P_ENTRY`) for free frames and Xen's. The table is the
//!   machine's, not the caller's: every domain's frames are in it, and
//!   another domain's frame at the same GFN as ours is as valid an entry
//!   as ours. The table says nothing of whose a frame is, so a guest frame
//!   claimed by more than one machine frame is an error
//!   ([`M2pError::Ambiguous`]), never a pick.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DomId, Gfn, Mfn, PageCount, PAGE_SIZE};
use crate::alloc_util::{try_with_capacity, OutOfMemory};
use crate::grant::Bytes;
use crate::mapping::{self, ForeignMap, MapError, MapTarget, VaSpace};
use crate::region::{FrameRange, RegionTable};
use crate::xen::{Hypervisor, XenError};

/// Machine frames one 2 MiB chunk of the M2P covers.
pub const FRAMES_PER_CHUNK: u64 = (2 << 20) / 8;
/// Entries (machine frames) one page of the table holds.
const ENTRIES_PER_PAGE: u64 = PAGE_SIZE / 8;
/// Pages of one chunk.
const PAGES_PER_CHUNK: u64 = FRAMES_PER_CHUNK / ENTRIES_PER_PAGE;
/// The most M2P pages mapped for one lookup (4096 pages: 2 M machine frames,
/// 8 GiB of machine memory with RAM in every chunk).
pub const MAX_PAGES: u64 = 4096;
/// The most chunks read (64: 64 GiB of machine memory).
pub const MAX_CHUNKS: usize = 64;

/// Why the lookup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum M2pError {
    /// A query failed (`maximum_ram_page`, `machphys_mfn_list`).
    Xen(&'static str, XenError),
    /// Mapping the table failed (nothing is left mapped).
    Map(MapError),
    /// The table is larger than this lookup maps (the pages it would map).
    TooLarge(PageCount),
    /// `machphys_mfn_list` listed fewer chunks than `max_page` needs.
    ShortList {
        /// Chunks listed.
        listed: usize,
        /// Chunks `max_page` needs.
        needed: u64,
    },
    /// No machine frame backs this guest frame in the table.
    NotFound(Gfn),
    /// More than one machine frame has this guest frame in the table: ours
    /// and another domain's at the same GFN (the table cannot tell which).
    Ambiguous {
        /// The first such guest frame of the range.
        gfn: Gfn,
        /// How many machine frames claim it.
        claims: u32,
    },
    /// Not possible here (no page tables on the host, say).
    Unsupported,
    /// The heap has no room for the lists of frames (nothing is mapped).
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for M2pError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            M2pError::Xen(op, e) => write!(f, "{op} failed: {e}"),
            M2pError::Map(e) => write!(f, "mapping the M2P table: {e}"),
            M2pError::TooLarge(n) => {
                write!(f, "the M2P table needs {n} pages, more than {MAX_PAGES}")
            }
            M2pError::ShortList { listed, needed } => write!(
                f,
                "machphys_mfn_list gave {listed} chunks, the table has {needed}"
            ),
            M2pError::NotFound(g) => write!(f, "no machine frame backs guest frame {g}"),
            M2pError::Ambiguous { gfn, claims } => write!(
                f,
                "{claims} machine frames have guest frame {gfn} in the M2P (another domain's too): which is ours is unknown"
            ),
            M2pError::Unsupported => write!(f, "not supported here"),
            M2pError::OutOfMemory(e) => write!(f, "M2P lookup: {e}"),
        }
    }
}

/// The table's layout as Xen gives it: how many entries, and each chunk's
/// first frame or none (a chunk Xen never filled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    end: Mfn,
    chunks: [Option<Mfn>; MAX_CHUNKS],
    len: usize,
}

impl Layout {
    /// Ask Xen (`XENMEM_maximum_ram_page`, `XENMEM_machphys_mfn_list`).
    pub fn read(hv: &impl Hypervisor) -> Result<Self, M2pError> {
        let end = hv
            .maximum_ram_page()
            .map_err(|e| M2pError::Xen("maximum_ram_page", e))?;
        let mut list = [Mfn(0); MAX_CHUNKS];
        let n = hv
            .machphys_mfn_list(&mut list)
            .map_err(|e| M2pError::Xen("machphys_mfn_list", e))?;
        Self::from_xen(end, list.get(..n).unwrap_or(&list))
    }

    /// From Xen's answers: `end` is `max_page` (one past the highest
    /// machine frame), `list` the chunks' frames. A chunk whose frame is
    /// the one listed before it is one Xen never filled.
    pub fn from_xen(end: Mfn, list: &[Mfn]) -> Result<Self, M2pError> {
        let needed = end.0.div_ceil(FRAMES_PER_CHUNK);
        let total_pages = PageCount(end.0.div_ceil(ENTRIES_PER_PAGE));
        if needed > MAX_CHUNKS as u64 {
            return Err(M2pError::TooLarge(total_pages));
        }
        if (list.len() as u64) < needed {
            return Err(M2pError::ShortList {
                listed: list.len(),
                needed,
            });
        }
        let mut chunks = [None; MAX_CHUNKS];
        let mut prev = None;
        for (slot, &m) in chunks.iter_mut().zip(list).take(needed as usize) {
            *slot = (prev != Some(m)).then_some(m);
            prev = Some(m);
        }
        let l = Layout {
            end,
            chunks,
            len: needed as usize,
        };
        if l.pages().0 > MAX_PAGES {
            return Err(M2pError::TooLarge(l.pages()));
        }
        Ok(l)
    }

    /// `max_page`: one past the highest machine frame (the entries).
    pub fn end(&self) -> Mfn {
        self.end
    }

    /// Chunks of the table.
    pub fn chunks(&self) -> usize {
        self.len
    }

    /// Chunks Xen never filled (no RAM in the frames they cover).
    pub fn unfilled(&self) -> usize {
        self.chunks[..self.len]
            .iter()
            .filter(|c| c.is_none())
            .count()
    }

    /// Pages of the filled chunks holding entries below `max_page`: what a
    /// whole lookup maps.
    pub fn pages(&self) -> PageCount {
        PageCount(self.table_pages().count() as u64)
    }

    /// Indices of the table's pages in filled chunks (page `p` holds the
    /// entries of machine frames `512 p..512 (p + 1)`).
    fn table_pages(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.end.0.div_ceil(ENTRIES_PER_PAGE)).filter(|&p| self.frame_of(p).is_some())
    }

    /// The machine frame holding table page `p`, if its chunk is filled.
    fn frame_of(&self, p: u64) -> Option<Mfn> {
        let c = usize::try_from(p / PAGES_PER_CHUNK).ok()?;
        if c >= self.len {
            return None;
        }
        self.chunks
            .get(c)
            .copied()
            .flatten()?
            .checked_add(PageCount(p % PAGES_PER_CHUNK))
    }
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The machine frame behind each guest frame of the range, in order.
    pub mfns: Vec<Mfn>,
    /// The table as Xen gave it.
    pub layout: Layout,
    /// The highest machine frame with a valid entry (any domain's): how far
    /// into the table the scan saw entries.
    pub highest_valid: Option<Mfn>,
}

/// Whether an M2P entry is a GFN (Xen's `VALID_M2P`: top bit clear).
fn valid(entry: u64) -> bool {
    entry >> 63 == 0
}

/// Table pages `pages` (indices, each in a filled chunk) mapped read-only,
/// in that order.
fn map_pages(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    layout: &Layout,
    pages: &[u64],
) -> Result<ForeignMap, M2pError> {
    let mut frames: Vec<Gfn> =
        try_with_capacity(pages.len(), "M2P frame list").map_err(M2pError::OutOfMemory)?;
    for &p in pages {
        // The chunk's frames as the physmap names them (DOMID_XEN's GFNs
        // are MFNs); checked: Xen's numbers at the top of the space.
        let m = layout
            .frame_of(p)
            .ok_or(M2pError::TooLarge(layout.pages()))?;
        // Within the capacity made above: no allocation.
        frames.push(Gfn(m.0));
    }
    mapping::map_foreign(hv, table, pt, vas, DomId::XEN, &frames, false).map_err(M2pError::Map)
}

/// Release the table's mapping (a failed release drops the handle given
/// back: reported as a leak).
fn unmap(
    m2p: ForeignMap,
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
) -> Result<(), M2pError> {
    m2p.release(hv, table, pt, vas)
        .map_err(|e| M2pError::Map(e.into_error()))
}

/// Who claims one guest frame of the range.
#[derive(Clone, Copy)]
enum Claim {
    None,
    One(Mfn),
    Many(u32),
}

/// The machine frame behind each guest frame of `range`, in order (see
/// [`lookup`]).
pub fn machine_frames(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    range: FrameRange,
) -> Result<Vec<Mfn>, M2pError> {
    lookup(hv, table, pt, vas, range).map(|l| l.mfns)
}

/// The machine frame behind each guest frame of `range`, from the whole
/// table (the filled chunks up to `max_page`). A guest frame no entry has
/// is [`M2pError::NotFound`]; one that more than one entry has (another
/// domain's frame at the same GFN) is [`M2pError::Ambiguous`]. Nothing
/// stays mapped, whatever the answer.
pub fn lookup(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    range: FrameRange,
) -> Result<Lookup, M2pError> {
    let layout = Layout::read(hv)?;
    let mut pages: Vec<u64> = try_with_capacity(layout.pages().0 as usize, "M2P page list")
        .map_err(M2pError::OutOfMemory)?;
    // Within the capacity made above: no allocation.
    pages.extend(layout.table_pages());
    // Every list before the mapping: an error after it would have to undo it.
    let len = usize::try_from(range.len().0)
        .map_err(|_| M2pError::OutOfMemory(OutOfMemory::of::<Mfn>(FOUND, usize::MAX)))?;
    let mut found: Vec<Claim> = try_with_capacity(len, FOUND).map_err(M2pError::OutOfMemory)?;
    found.resize(len, Claim::None);
    let mut out: Vec<Mfn> = try_with_capacity(len, FOUND).map_err(M2pError::OutOfMemory)?;
    let m2p = map_pages(hv, table, pt, vas, &layout, &pages)?;
    let mut highest_valid = None;
    'pages: for (i, &p) in pages.iter().enumerate() {
        for k in 0..ENTRIES_PER_PAGE {
            let mfn = p * ENTRIES_PER_PAGE + k;
            if mfn >= layout.end.0 {
                break 'pages;
            }
            // The mapping covers every page listed, so no read is
            // refused; one that were would end the scan, and frames not
            // found by then are an error below, never a panic.
            let Ok(gfn) = m2p.read_obj::<u64>((i as u64 * ENTRIES_PER_PAGE + k) * 8) else {
                break 'pages;
            };
            if valid(gfn) {
                highest_valid = Some(Mfn(mfn));
            }
            if range.contains(Gfn(gfn)) {
                if let Some(c) = found.get_mut((gfn - range.start().0) as usize) {
                    *c = match *c {
                        Claim::None => Claim::One(Mfn(mfn)),
                        Claim::One(_) => Claim::Many(2),
                        Claim::Many(n) => Claim::Many(n.saturating_add(1)),
                    };
                }
            }
        }
    }
    unmap(m2p, hv, table, pt, vas)?;
    for (i, c) in found.into_iter().enumerate() {
        let gfn = Gfn(range.start().0 + i as u64);
        // Within the capacity made above: no allocation.
        match c {
            Claim::One(m) => out.push(m),
            Claim::None => return Err(M2pError::NotFound(gfn)),
            Claim::Many(claims) => return Err(M2pError::Ambiguous { gfn, claims }),
        }
    }
    Ok(Lookup {
        mfns: out,
        layout,
        highest_valid,
    })
}

/// The M2P entry of each machine frame of `mfns`: the GFN its owner has it
/// at, or `None` (an invalid entry, a frame past `max_page` or in a chunk
/// Xen never filled: no RAM). Maps only the pages holding those entries.
pub fn entries_at(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    mfns: &[Mfn],
) -> Result<Vec<Option<Gfn>>, M2pError> {
    let layout = Layout::read(hv)?;
    let page = |m: Mfn| {
        let p = m.0 / ENTRIES_PER_PAGE;
        (m.0 < layout.end.0 && layout.frame_of(p).is_some()).then_some(p)
    };
    let mut pages: Vec<u64> =
        try_with_capacity(mfns.len(), "M2P page list").map_err(M2pError::OutOfMemory)?;
    let mut out: Vec<Option<Gfn>> =
        try_with_capacity(mfns.len(), "M2P entries").map_err(M2pError::OutOfMemory)?;
    for &m in mfns {
        if let Some(p) = page(m) {
            if !pages.contains(&p) {
                // Within the capacity made above: no allocation.
                pages.push(p);
            }
        }
    }
    if pages.is_empty() {
        out.extend(mfns.iter().map(|_| None));
        return Ok(out);
    }
    let m2p = map_pages(hv, table, pt, vas, &layout, &pages)?;
    for &m in mfns {
        let entry = page(m)
            .and_then(|p| pages.iter().position(|&q| q == p))
            .and_then(|i| {
                let off = (i as u64 * ENTRIES_PER_PAGE + m.0 % ENTRIES_PER_PAGE) * 8;
                m2p.read_obj::<u64>(off).ok()
            })
            .filter(|&e| valid(e))
            .map(Gfn);
        // Within the capacity made above: no allocation.
        out.push(entry);
    }
    unmap(m2p, hv, table, pt, vas)?;
    Ok(out)
}

const FOUND: &str = "M2P lookup result";

/// Whether `mfns` are consecutive, and the first one.
pub fn contiguous(mfns: &[Mfn]) -> Option<Mfn> {
    let first = *mfns.first()?;
    mfns.iter()
        .enumerate()
        .all(|(i, m)| m.0 == first.0 + i as u64)
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert_eq!(contiguous(&[Mfn(7), Mfn(8), Mfn(9)]), Some(Mfn(7)));
        assert_eq!(contiguous(&[Mfn(7), Mfn(9)]), None);
        assert_eq!(contiguous(&[]), None);
    }

    #[test]
    fn without_the_table_the_answer_is_an_error() {
        use crate::mapping::MapTarget;
        use crate::xen::model::{DomainConfig, XenModel};
        // The model has no M2P: machphys_mfn_list is ENOSYS, and the lookup
        // says so instead of guessing.
        let m = XenModel::new(1 << 12);
        m.add_domain(DomainConfig::pvh_dom0(64)).unwrap();
        m.set_current(DomId(0)).unwrap();
        struct NoTables;
        impl MapTarget for NoTables {
            fn map(
                &mut self,
                _: crate::addr::VirtAddr,
                _: crate::addr::GuestPhysAddr,
                _: PageCount,
                _: crate::paging::Attrs,
                _: &mut RegionTable,
            ) -> Result<(), crate::paging::PagingError> {
                Err(crate::paging::PagingError::OutOfFrames)
            }
            fn unmap(
                &mut self,
                _: crate::addr::VirtAddr,
                _: PageCount,
                _: &mut RegionTable,
            ) -> Result<(), crate::paging::PagingError> {
                Ok(())
            }
            fn window(&self) -> crate::paging::Window {
                crate::paging::Window::new(crate::addr::VirtAddr(1 << 40), 1 << 30).unwrap()
            }
        }
        let mut t = RegionTable::new();
        let mut vas = VaSpace::new(NoTables.window());
        let r = FrameRange::new(Gfn(0), PageCount(1)).unwrap();
        assert_eq!(
            machine_frames(&m, &mut t, &mut NoTables, &mut vas, r),
            Err(M2pError::Xen(
                "machphys_mfn_list",
                XenError::Errno(crate::xen::Errno::ENOSYS)
            ))
        );
    }

    use crate::region::{Region, RegionFlags, RegionKind};
    use crate::xen::model::window::{testmem, BufTables};
    use crate::xen::model::{DomainConfig, XenModel};

    const D0: DomId = DomId(0);
    const D1: DomId = DomId(1);
    /// Machine frames of one chunk of the table.
    const CHUNK: u64 = FRAMES_PER_CHUNK;

    /// Dom0's agent: its table (RAM `0..ram`, a hole of 8192 frames for
    /// the mappings), page tables routed to the model, a window.
    struct Dom0<'m> {
        m: &'m XenModel,
        t: RegionTable,
        pt: BufTables<'m>,
        vas: VaSpace,
    }

    impl<'m> Dom0<'m> {
        fn new(m: &'m XenModel, ram: u64) -> Self {
            let mut t = RegionTable::new();
            let flags = RegionFlags::READ | RegionFlags::WRITE | RegionFlags::CACHEABLE;
            let r = FrameRange::new(Gfn(0), PageCount(ram)).unwrap();
            t.add(Region::new(r, RegionKind::Ram, flags)).unwrap();
            let h = FrameRange::new(Gfn(0x100000), PageCount(8192)).unwrap();
            t.add(Region::new(h, RegionKind::Hole, RegionFlags::empty()))
                .unwrap();
            let pt = BufTables::new(8192).on_model(m, D0);
            let vas = VaSpace::new(pt.window());
            Dom0 { m, t, pt, vas }
        }

        fn lookup(&mut self, first: u64, n: u64) -> Result<Vec<Mfn>, M2pError> {
            self.m.set_current(D0).unwrap();
            let before = self.t.clone();
            let r = FrameRange::new(Gfn(first), PageCount(n)).unwrap();
            let out = machine_frames(self.m, &mut self.t, &mut self.pt, &mut self.vas, r);
            // Whatever the answer, nothing stays mapped.
            assert_eq!(self.t, before);
            assert!(self.pt.map.is_empty());
            assert_eq!(self.vas.used(), 0);
            assert_eq!(testmem::mapped(), 0);
            out
        }

        /// What Xen's p2m has for `first..first + n` of `dom`.
        fn truth(&self, dom: DomId, first: u64, n: u64) -> Vec<Mfn> {
            let p = self.m.p2m(dom);
            (first..first + n).map(|g| p[&Gfn(g)]).collect()
        }
    }

    #[test]
    fn a_table_ending_on_a_1_gib_boundary_is_read_to_its_end() {
        // 2 GiB of machine memory: max_page is 2^19, the table's two
        // chunks are full and no entry lies past them.
        let m = XenModel::new(2 * CHUNK);
        m.enable_m2p(&[]).unwrap();
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let mut d = Dom0::new(&m, 4096);
        assert_eq!(m.maximum_ram_page(), Ok(Mfn(2 * CHUNK)));
        // Dom0's memory comes from the top: one of its frames is the last
        // machine frame, the table's last entry.
        let top = m
            .p2m(D0)
            .iter()
            .find(|(_, m)| m.0 == 2 * CHUNK - 1)
            .map(|(g, _)| g.0);
        let first = top.expect("dom0 has the top frame") - 15;
        let want = d.truth(D0, first, 16);
        assert_eq!(d.lookup(first, 16), Ok(want));
        let r = FrameRange::new(Gfn(first), PageCount(16)).unwrap();
        let l = lookup(&m, &mut d.t, &mut d.pt, &mut d.vas, r).unwrap();
        assert_eq!(l.highest_valid, Some(Mfn(2 * CHUNK - 1)));
        assert_eq!((l.layout.chunks(), l.layout.unfilled()), (2, 0));
        assert_eq!(l.layout.pages(), PageCount(1024));
    }

    #[test]
    fn chunks_xen_never_filled_are_not_read_as_the_chunk_before() {
        // Four chunks; the third covers no RAM (frames 2^19..3 * 2^18), so
        // Xen lists the second chunk's frame for it again. The fourth is
        // partial (not a 1 GiB boundary) and all taken, so dom0's frames
        // lie in the second chunk, the one repeated.
        let total = 3 * CHUNK + 1000;
        let m = XenModel::new(total);
        m.enable_m2p(&[(Mfn(2 * CHUNK), CHUNK)]).unwrap();
        m.pin_range(Mfn(3 * CHUNK), 1000);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let mut list = [Mfn(0); 8];
        assert_eq!(m.machphys_mfn_list(&mut list), Ok(4));
        assert_eq!(
            list[2], list[1],
            "the unfilled chunk repeats the one before"
        );
        assert_ne!(list[3], list[1]);
        let mut d = Dom0::new(&m, 4096);
        let want = d.truth(D0, 0x200, 32);
        assert!(want.iter().all(|m| (CHUNK..2 * CHUNK).contains(&m.0)));
        assert_eq!(d.lookup(0x200, 32), Ok(want));
    }

    #[test]
    fn another_domains_frame_at_the_same_gfn_is_not_taken_for_ours() {
        // A domU first (its frames on top), then dom0: both have GFNs
        // 0..1024, and each of those GFNs has two M2P entries.
        let m = XenModel::new(CHUNK + 5000);
        m.enable_m2p(&[]).unwrap();
        m.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let mut d = Dom0::new(&m, 4096);
        assert_eq!(
            d.lookup(0x100, 16),
            Err(M2pError::Ambiguous {
                gfn: Gfn(0x100),
                claims: 2
            })
        );
        // Past the domU's GFNs the answer is dom0's own.
        assert_eq!(d.lookup(0x800, 16), Ok(d.truth(D0, 0x800, 16)));
    }

    #[test]
    fn layout_from_xens_answers() {
        let c = |v: &[u64]| v.iter().map(|&m| Mfn(m)).collect::<Vec<_>>();
        // max_page on a 1 GiB boundary: exactly its chunks, no more.
        let l = Layout::from_xen(Mfn(2 * CHUNK), &c(&[0x1000, 0x1200])).unwrap();
        assert_eq!(
            (l.chunks(), l.unfilled(), l.pages()),
            (2, 0, PageCount(1024))
        );
        // One frame past it: a third chunk, one page of it.
        let l = Layout::from_xen(Mfn(2 * CHUNK + 1), &c(&[0x1000, 0x1200, 0x1400])).unwrap();
        assert_eq!((l.chunks(), l.pages()), (3, PageCount(1025)));
        // Repeated frames are chunks Xen never filled, however many.
        let l = Layout::from_xen(
            Mfn(8 * CHUNK),
            &c(&[
                0x1000, 0x1200, 0x1200, 0x1200, 0x1400, 0x1600, 0x1800, 0x1a00,
            ]),
        )
        .unwrap();
        assert_eq!(
            (l.chunks(), l.unfilled(), l.pages()),
            (8, 2, PageCount(3072))
        );
        assert_eq!(l.frame_of(512 + 3), Some(Mfn(0x1203)));
        assert_eq!((l.frame_of(2 * 512), l.frame_of(3 * 512 + 7)), (None, None));
        assert_eq!(l.frame_of(4 * 512), Some(Mfn(0x1400)));
        assert_eq!(l.frame_of(8 * 512), None);
        // A list shorter than the table, a table larger than mapped.
        assert_eq!(
            Layout::from_xen(Mfn(2 * CHUNK + 1), &c(&[0x1000, 0x1200])),
            Err(M2pError::ShortList {
                listed: 2,
                needed: 3
            })
        );
        let nine: Vec<Mfn> = (0..9).map(|i| Mfn(0x1000 + 512 * i)).collect();
        assert_eq!(
            Layout::from_xen(Mfn(9 * CHUNK), &nine),
            Err(M2pError::TooLarge(PageCount(9 * 512)))
        );
        // ... unless the chunks past 8 GiB were never filled.
        let mut holes = nine.clone();
        holes[8] = holes[7];
        assert!(Layout::from_xen(Mfn(9 * CHUNK), &holes).is_ok());
        // A chunk frame at the top of the space: its next pages are no
        // frames (checked, no wrap).
        let l = Layout::from_xen(Mfn(CHUNK), &[Mfn(u64::MAX)]).unwrap();
        assert_eq!((l.frame_of(0), l.frame_of(1)), (Some(Mfn(u64::MAX)), None));
    }

    #[test]
    fn entries_at_frames_of_other_domains_and_holes() {
        let total = 3 * CHUNK + 1000;
        let m = XenModel::new(total);
        m.enable_m2p(&[(Mfn(2 * CHUNK), CHUNK)]).unwrap();
        m.add_domain(DomainConfig::pvh_domu(D1, 1024)).unwrap();
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let mut d = Dom0::new(&m, 4096);
        m.set_current(D0).unwrap();
        let theirs = d.truth(D1, 0x10, 4);
        let mut asked = theirs.clone();
        // A frame in the unfilled chunk, max_page itself, one past it.
        asked.extend([Mfn(2 * CHUNK + 5), Mfn(total), Mfn(total + 1)]);
        let before = d.t.clone();
        let got = entries_at(&m, &mut d.t, &mut d.pt, &mut d.vas, &asked).unwrap();
        assert_eq!(
            got,
            [
                Some(Gfn(0x10)),
                Some(Gfn(0x11)),
                Some(Gfn(0x12)),
                Some(Gfn(0x13)),
                None,
                None,
                None
            ]
        );
        assert_eq!(d.t, before);
        assert_eq!(testmem::mapped(), 0);
        // Only the pages asked for were mapped: one call, as many frames.
        assert_eq!(
            entries_at(&m, &mut d.t, &mut d.pt, &mut d.vas, &[Mfn(total)]),
            Ok(vec![None])
        );
    }
}
