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

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DomId, Gfn, Mfn, PageCount, PAGE_SIZE};
use crate::alloc_util::{try_with_capacity, OutOfMemory};
use crate::grant::Bytes;
use crate::mapping::{self, MapError, MapTarget, VaSpace};
use crate::region::{FrameRange, RegionTable};
use crate::xen::{Hypervisor, XenError};

/// Machine frames one 2 MiB chunk of the M2P covers.
pub const FRAMES_PER_CHUNK: u64 = (2 << 20) / 8;
/// The most M2P pages mapped for one lookup (4096 pages: 2 M machine frames,
/// 8 GiB of machine memory).
pub const MAX_PAGES: u64 = 4096;

/// Why the lookup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum M2pError {
    /// A query failed (`maximum_ram_page`, `machphys_mfn_list`).
    Xen(&'static str, XenError),
    /// Mapping the table failed (nothing is left mapped).
    Map(MapError),
    /// The table is larger than this lookup maps.
    TooLarge(PageCount),
    /// No machine frame backs this guest frame in the table.
    NotFound(Gfn),
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
            M2pError::NotFound(g) => write!(f, "no machine frame backs guest frame {g}"),
            M2pError::Unsupported => write!(f, "not supported here"),
            M2pError::OutOfMemory(e) => write!(f, "M2P lookup: {e}"),
        }
    }
}

/// The machine frame behind each guest frame of `range`, in order.
pub fn machine_frames(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    range: FrameRange,
) -> Result<Vec<Mfn>, M2pError> {
    let max = hv
        .maximum_ram_page()
        .map_err(|e| M2pError::Xen("maximum_ram_page", e))?;
    let entries = max.0.saturating_add(1);
    let pages = (entries * 8).div_ceil(PAGE_SIZE);
    if pages > MAX_PAGES {
        return Err(M2pError::TooLarge(PageCount(pages)));
    }
    let mut chunks = [Mfn(0); 64];
    let n = hv
        .machphys_mfn_list(&mut chunks)
        .map_err(|e| M2pError::Xen("machphys_mfn_list", e))?;
    let mut frames: Vec<Gfn> =
        try_with_capacity(pages as usize, "M2P frame list").map_err(M2pError::OutOfMemory)?;
    for p in 0..pages {
        let chunk = (p * PAGE_SIZE / 8 / FRAMES_PER_CHUNK) as usize;
        let within = p % (FRAMES_PER_CHUNK * 8 / PAGE_SIZE);
        let gfn = chunks
            .get(chunk)
            .filter(|_| chunk < n)
            // The chunk's frames as the physmap names them (the list's
            // entries); checked: Xen's numbers at the top of the space.
            .and_then(|c| c.checked_add(PageCount(within)))
            .map(|m| Gfn(m.0))
            .ok_or(M2pError::TooLarge(PageCount(pages)))?;
        // Within the capacity made above: no allocation.
        frames.push(gfn);
    }
    // Every list before the mapping: an error after it would have to undo it.
    let len = usize::try_from(range.len().0)
        .map_err(|_| M2pError::OutOfMemory(OutOfMemory::of::<Mfn>(FOUND, usize::MAX)))?;
    let mut found: Vec<Option<Mfn>> =
        try_with_capacity(len, FOUND).map_err(M2pError::OutOfMemory)?;
    found.resize(len, None);
    let mut out: Vec<Mfn> = try_with_capacity(len, FOUND).map_err(M2pError::OutOfMemory)?;
    let m2p = mapping::map_foreign(hv, table, pt, vas, DomId::XEN, &frames, false)
        .map_err(M2pError::Map)?;
    for mfn in 0..entries {
        // The mapping covers all `entries` words (`pages` was rounded
        // up), so no read is refused; one that were would end the scan,
        // and frames not found by then are an error below, never a panic.
        let Ok(gfn) = m2p.read_obj::<u64>(mfn * 8) else {
            break;
        };
        if range.contains(Gfn(gfn)) {
            found[(gfn - range.start().0) as usize] = Some(Mfn(mfn));
        }
    }
    // A failed release drops the handle given back: reported as a leak.
    m2p.release(hv, table, pt, vas)
        .map_err(|e| M2pError::Map(e.into_error()))?;
    for (i, m) in found.into_iter().enumerate() {
        // Within the capacity made above: no allocation.
        out.push(m.ok_or(M2pError::NotFound(Gfn(range.start().0 + i as u64)))?);
    }
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
}
