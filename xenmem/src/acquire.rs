//! Another domain's resource frames (its grant table) in the agent's address
//! space, with `XENMEM_acquire_resource`.
//!
//! A privileged agent asks Xen for the size of the resource (`nr_frames = 0`
//! and a NULL `frame_list`), takes free guest-physical frames from a hole of
//! the region table (never RAM), asks Xen to map the resource's frames there
//! (a translated caller passes the GFNs in `frame_list`), and maps those
//! frames into its mapping window, never executable. Xen maps the frames one
//! by one and stops at the first failure without undoing the ones before it
//! (`-EIO` for a failure after the first frame of a batch of 32; the raw
//! error otherwise): every failure is unwound here, entry by entry, and
//! nothing is left half-mapped.
//!
//! What Xen 4.17 refuses, typed ([`AcquireError`]):
//! - x86: a translated caller that is not the hardware domain: `EACCES`
//!   (`arch_acquire_resource_check`, before anything else);
//! - `DOMID_SELF` (not looked up): `ESRCH`; an unknown domain: `ESRCH`;
//! - the caller's own domid: `EPERM`; an unprivileged caller: `EPERM`
//!   (XSM `XSM_DM_PRIV`);
//! - frames beyond the resource's size: `EINVAL`.
//!
//! The region table records the frames as [`RegionKind::Foreign`] with no
//! backing ([`Backing::None`](crate::region::Backing::None)): a grant-table frame is no frame of the other
//! domain's physmap, which [`Backing::Foreign`](crate::region::Backing::Foreign) would claim. The handle,
//! [`ResourceMap`], knows what the frames are, and must be given back with
//! [`ResourceMap::release`]; a release that fails part-way gives it back
//! ([`ReleaseError`]) to be released again, and dropping it unreleased
//! reports a [`Leak`](crate::leak::Leak) (see [`crate::leak`]).

use core::fmt;

use crate::addr::{DomId, Gfn, Order, PageCount, VirtAddr, PAGE_SIZE};
use crate::alloc_util::{try_collect, OutOfMemory};
use crate::grant::Bytes;
use crate::leak::{self, LeakKind, Outstanding, ReleaseError};
use crate::mapping::{
    back_to_hole, remove_all, MapTarget, Stopped, Teardown, UnmapFailure, VaSpace,
};
use crate::paging::{Attrs, PagingError};
use crate::region::{FrameRange, Region, RegionError, RegionFlags, RegionKind, RegionTable};
use crate::xen::abi::gnttab::{self, GrantEntryV1};
use crate::xen::abi::physmap;
use crate::xen::{Errno, Hypervisor, XenError};

/// The most frames one acquisition maps (a grant table has at most 64 by
/// default; this bounds the GFN list).
pub const MAX_FRAMES: u32 = 1024;

/// A resource `XENMEM_acquire_resource` can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Resource {
    /// The shared frames of a grant table
    /// (`XENMEM_resource_grant_table_id_shared`): the grant entries.
    GrantTableShared,
    /// The status frames of a v2 grant table
    /// (`XENMEM_resource_grant_table_id_status`).
    GrantTableStatus,
}

impl Resource {
    /// `XENMEM_resource_*` type.
    pub const fn kind(self) -> u16 {
        physmap::RESOURCE_GRANT_TABLE
    }

    /// The id within the type.
    pub const fn id(self) -> u32 {
        match self {
            Resource::GrantTableShared => physmap::RESOURCE_GRANT_TABLE_ID_SHARED,
            Resource::GrantTableStatus => crate::xen::abi::RESOURCE_GRANT_TABLE_ID_STATUS,
        }
    }

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Resource::GrantTableShared => "grant-table",
            Resource::GrantTableStatus => "grant-status",
        }
    }
}

/// Why an acquisition failed. Nothing of it is left mapped, except after
/// [`AcquireError::Unwind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// No frames asked for.
    Empty,
    /// More than [`MAX_FRAMES`] frames asked for.
    TooMany(u32),
    /// `DOMID_SELF`: Xen does not resolve it here (`ESRCH`); name another
    /// domain.
    SelfDomain,
    /// No such domain (`ESRCH`).
    NoSuchDomain(DomId),
    /// The caller's own domain (`EPERM`): a domain cannot acquire its own
    /// resources.
    OwnDomain(DomId),
    /// The caller may not map this domain's resources (`EPERM`): it is not
    /// the control domain (nor the target's device model).
    NotPermitted(DomId),
    /// x86: a translated caller that is not the hardware domain (`EACCES`):
    /// Xen does not reference-count foreign frames in a translated p2m.
    NotHardwareDomain,
    /// The frames asked for lie beyond the resource's size (`EINVAL`; the
    /// size, when it was queried).
    OutOfRange {
        /// First frame asked for.
        frame: u64,
        /// Frames asked for.
        count: u32,
        /// The resource's size, if known.
        size: Option<u32>,
    },
    /// No hole of that many frames in the region table.
    NoHole(PageCount),
    /// No room in the mapping window.
    NoVirtualSpace(PageCount),
    /// Xen refused otherwise.
    Xen(XenError),
    /// The page tables refused (Xen's mapping was undone).
    Paging(PagingError),
    /// The region table refused.
    Table(RegionError),
    /// Undoing a mapping failed: these hole frames may still hold the
    /// resource's frames; they are kept out of the table's holes.
    Unwind(XenError),
    /// Giving a mapping back failed for some frames (every frame was
    /// tried): they may still hold the resource's frames and stay out of
    /// the table's holes; the others went back. Release the handle again.
    Unmap(UnmapFailure),
    /// The heap could not provide the memory the mapping needed (nothing
    /// was mapped).
    OutOfMemory(OutOfMemory),
}

impl From<Stopped> for AcquireError {
    fn from(s: Stopped) -> Self {
        match s {
            Stopped::Window(e) => AcquireError::Paging(e),
            Stopped::Unmap(f) => AcquireError::Unmap(f),
            Stopped::Table(e) => AcquireError::Table(e),
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Empty => write!(f, "no frames to acquire"),
            AcquireError::TooMany(n) => write!(f, "{n} frames asked for, at most {MAX_FRAMES}"),
            AcquireError::SelfDomain => {
                write!(f, "acquire_resource does not take DOMID_SELF (ESRCH)")
            }
            AcquireError::NoSuchDomain(d) => write!(f, "no domain {d} (ESRCH)"),
            AcquireError::OwnDomain(d) => {
                write!(
                    f,
                    "domain {d} is the caller: it cannot acquire its own resources (EPERM)"
                )
            }
            AcquireError::NotPermitted(d) => {
                write!(f, "not permitted to map domain {d}'s resources (EPERM)")
            }
            AcquireError::NotHardwareDomain => write!(
                f,
                "only the hardware domain may acquire resources into a translated physmap (EACCES)"
            ),
            AcquireError::OutOfRange { frame, count, size } => {
                write!(f, "frames {frame}+{count} are beyond the resource")?;
                match size {
                    Some(s) => write!(f, " of {s} frames"),
                    None => Ok(()),
                }
            }
            AcquireError::NoHole(n) => write!(f, "no hole of {n} frames in the guest-physical map"),
            AcquireError::NoVirtualSpace(n) => {
                write!(f, "no room for {n} pages in the mapping window")
            }
            AcquireError::Xen(e) => write!(f, "acquire_resource failed: {e}"),
            AcquireError::Paging(e) => write!(f, "page tables: {e:?}"),
            AcquireError::Table(e) => write!(f, "region table: {e}"),
            AcquireError::Unwind(e) => write!(f, "could not undo a failed mapping: {e}"),
            AcquireError::Unmap(u) => write!(
                f,
                "could not remove {} frame(s) from the physmap; the first is entry {} (frame {}): {}",
                u.failed, u.index, u.gfn, u.err
            ),
            AcquireError::OutOfMemory(e) => write!(f, "acquire_resource: {e}"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for AcquireError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}

impl From<RegionError> for AcquireError {
    fn from(e: RegionError) -> Self {
        AcquireError::Table(e)
    }
}

impl From<OutOfMemory> for AcquireError {
    fn from(e: OutOfMemory) -> Self {
        AcquireError::OutOfMemory(e)
    }
}

/// Name Xen's refusal of an acquisition from `dom`.
fn classify(hv: &impl Hypervisor, dom: DomId, e: XenError) -> AcquireError {
    match e.errno() {
        Some(Errno::ESRCH) if dom == DomId::SELF => AcquireError::SelfDomain,
        Some(Errno::ESRCH) => AcquireError::NoSuchDomain(dom),
        Some(Errno::EPERM) if hv.own_domid() == Some(dom) => AcquireError::OwnDomain(dom),
        Some(Errno::EPERM) => AcquireError::NotPermitted(dom),
        Some(Errno::EACCES) => AcquireError::NotHardwareDomain,
        _ => AcquireError::Xen(e),
    }
}

/// The size in frames of `res` of domain `dom`.
pub fn resource_size(hv: &impl Hypervisor, dom: DomId, res: Resource) -> Result<u32, AcquireError> {
    hv.acquire_resource_size(dom, res.kind(), res.id())
        .map_err(|e| classify(hv, dom, e))
}

/// The number of shared frames of `dom`'s grant table (its
/// `max_grant_frames`: Xen grows the table to whatever frame is acquired).
pub fn grant_table_size(hv: &impl Hypervisor, dom: DomId) -> Result<u32, AcquireError> {
    resource_size(hv, dom, Resource::GrantTableShared)
}

/// The shared frame (index into the grant-table resource) that holds
/// version-1 grant entry `gref`: the frame to acquire to read it.
pub const fn grant_v1_frame(gref: u32) -> u32 {
    gref / gnttab::ENTRIES_PER_FRAME_V1
}

/// Frames of another domain's resource, mapped. Read and write them with
/// [`Bytes`] (bounds-checked, volatile; writes refused when read-only).
#[must_use = "a mapping must be given back with ResourceMap::release"]
#[derive(Debug)]
pub struct ResourceMap {
    undo: Teardown,
    dom: DomId,
    res: Resource,
    frame: u64,
    writable: bool,
}

impl ResourceMap {
    /// Where it is (or was) mapped in the window.
    pub fn va(&self) -> VirtAddr {
        self.undo.va()
    }

    /// Where it is mapped in the window; `None` once a release that
    /// stopped part-way has unmapped it there (no byte access then).
    pub fn window(&self) -> Option<VirtAddr> {
        self.undo.window()
    }

    /// The hole frames it occupies in the agent's physmap.
    pub fn gfns(&self) -> FrameRange {
        self.undo.gfns()
    }

    /// The domain the resource belongs to.
    pub fn domain(&self) -> DomId {
        self.dom
    }

    /// The resource.
    pub fn resource(&self) -> Resource {
        self.res
    }

    /// The resource's first frame mapped.
    pub fn first_frame(&self) -> u64 {
        self.frame
    }

    /// Frames mapped.
    pub fn frames(&self) -> PageCount {
        self.gfns().len()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.gfns().len().0 * PAGE_SIZE
    }

    /// Never: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// What is still to be undone (all of it until a release starts).
    pub fn outstanding(&self) -> Outstanding {
        self.undo.outstanding()
    }

    /// Version-1 grant entry `gref` of the grant table this maps (shared
    /// frames), read in one 8-byte access so that its flags, domid and
    /// frame belong together; `None` if this is no mapping of shared frames
    /// or the entry lies in none of the frames mapped (see
    /// [`grant_v1_frame`]).
    pub fn grant_entry_v1(&self, gref: u32) -> Option<GrantEntryV1> {
        if self.res != Resource::GrantTableShared {
            return None;
        }
        let off = (u64::from(gref) * 8).checked_sub(self.frame * PAGE_SIZE)?;
        let v = self.read_obj::<u64>(off).ok()?;
        // `struct grant_entry_v1` in a little-endian guest (x86, Arm):
        // flags in bytes 0-1, domid in 2-3, frame in 4-7.
        Some(GrantEntryV1 {
            flags: v as u16,
            domid: (v >> 16) as u16,
            frame: (v >> 32) as u32,
        })
    }

    /// Give the mapping back: unmap it from the window, remove the frames
    /// from the physmap (every one tried; `ENOENT`, nothing mapped there,
    /// counts as removed), and return the hole to the table.
    ///
    /// On a failure the handle comes back with the error, recording what
    /// is left, and a second release continues from there (each step is
    /// done once): the page tables refused ([`AcquireError::Paging`]:
    /// nothing changed), Xen kept some frames ([`AcquireError::Unmap`]:
    /// they stay out of the holes and are tried again; the others went
    /// back), or the table refused to take frames back
    /// ([`AcquireError::Table`]).
    pub fn release(
        mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), ReleaseError<ResourceMap, AcquireError>> {
        match self.undo.release_physmap(hv, table, pt, vas, true) {
            Ok(()) => Ok(()),
            Err(s) => Err(ReleaseError::new(self, s.into())),
        }
    }
}

impl Drop for ResourceMap {
    fn drop(&mut self) {
        if !self.undo.is_done() {
            leak::report(&self.undo.leak(LeakKind::ResourceMap, Some(self.dom)));
        }
    }
}

/// Map frames `first..first + count` of resource `res` of domain `dom` into
/// the agent, read-only or read-write (never executable, cacheable).
#[allow(clippy::too_many_arguments)]
pub fn acquire(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    dom: DomId,
    res: Resource,
    first: u64,
    count: u32,
    writable: bool,
) -> Result<ResourceMap, AcquireError> {
    if count == 0 {
        return Err(AcquireError::Empty);
    }
    if count > MAX_FRAMES {
        return Err(AcquireError::TooMany(count));
    }
    let n = PageCount(u64::from(count));
    let hole = table
        .find_hole(n, Order::ZERO, Gfn(1))
        .ok_or(AcquireError::NoHole(n))?;
    let va = vas.try_alloc(n)?.ok_or(AcquireError::NoVirtualSpace(n))?;
    // The heap memory the mapping needs, before anything changes.
    let prepared = try_collect((hole.start().0..hole.end().0).map(Gfn), "acquired frames")
        .map_err(AcquireError::from)
        .and_then(|gfns| Ok((gfns, Teardown::try_new(va, hole)?)));
    let (mut gfns, teardown) = match prepared {
        Ok(p) => p,
        Err(e) => {
            vas.free(va);
            return Err(e);
        }
    };
    let flags = RegionFlags::READ
        | RegionFlags::CACHEABLE
        | if writable {
            RegionFlags::WRITE
        } else {
            RegionFlags::empty()
        };
    // Record the mapping first; the hole comes back on any failure.
    if let Err(e) = table.add(Region::new(hole, RegionKind::Foreign, flags)) {
        vas.free(va);
        return Err(AcquireError::Table(e));
    }
    let undo = |table: &mut RegionTable, vas: &mut VaSpace, err: AcquireError| {
        vas.free(va);
        // Whatever Xen mapped goes (ENOENT where it mapped nothing).
        if let Some(e) = remove_all(hv, hole) {
            return AcquireError::Unwind(e);
        }
        let _ = table.modify(hole, back_to_hole());
        err
    };
    if let Err(e) = hv.acquire_resource(dom, res.kind(), res.id(), first, &mut gfns) {
        let err = match classify(hv, dom, e) {
            AcquireError::Xen(XenError::Errno(Errno::EINVAL)) => AcquireError::OutOfRange {
                frame: first,
                count,
                size: None,
            },
            other => other,
        };
        return Err(undo(table, vas, err));
    }
    let attrs = if writable {
        Attrs::READ_WRITE
    } else {
        Attrs::READ_ONLY
    };
    if let Err(e) = pt.map(va, hole.start_addr(), n, attrs, table) {
        return Err(undo(table, vas, AcquireError::Paging(e)));
    }
    Ok(ResourceMap {
        undo: teardown,
        dom,
        res,
        frame: first,
        writable,
    })
}

/// Query the size of `dom`'s grant table, then map its shared frames
/// `first..first + count` (read-write, to seed grant entries as a toolstack
/// does). Returns the size and the mapping.
pub fn acquire_grant_table(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    dom: DomId,
    first: u32,
    count: u32,
) -> Result<(u32, ResourceMap), AcquireError> {
    let size = grant_table_size(hv, dom)?;
    let end = u64::from(first) + u64::from(count);
    if count == 0 {
        return Err(AcquireError::Empty);
    }
    if end > u64::from(size) {
        return Err(AcquireError::OutOfRange {
            frame: u64::from(first),
            count,
            size: Some(size),
        });
    }
    let m = acquire(
        hv,
        table,
        pt,
        vas,
        dom,
        Resource::GrantTableShared,
        u64::from(first),
        count,
        true,
    )?;
    Ok((size, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::GuestPhysAddr;
    use crate::grant::AccessError;
    use crate::xen::domctl::CreateDomain;
    use crate::xen::model::window::BufTables;
    use crate::xen::model::{DomainConfig, Fault, Op as XOp, XenModel, X86_GFN_LIMIT};

    const D0: DomId = DomId(0);

    fn table_with_hole(start: u64, len: u64) -> RegionTable {
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(0), PageCount(4096)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ,
        ))
        .unwrap();
        t.add(Region::new(
            FrameRange::new(Gfn(start), PageCount(len)).unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        t
    }

    /// A PVH dom0 and a helper domain it made.
    fn model() -> (XenModel, DomId) {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let mut c = CreateDomain::x86_pvh_helper().to_abi().unwrap();
        let h = m.domctl_createdomain(DomId(0), &mut c).unwrap();
        (m, h)
    }

    /// Dom0's agent: a hole above its RAM, and page tables whose window
    /// pages reach the model's memory for the frames mapped there (as the
    /// grant tests' do), so that what a handle reads and writes is what Xen
    /// and the other domain see.
    fn agent(m: &XenModel) -> (RegionTable, BufTables<'_>, VaSpace) {
        let pt = BufTables::new(16).on_model(m, D0);
        let vas = VaSpace::new(pt.window());
        (table_with_hole(0x100000, 0x1000), pt, vas)
    }

    #[test]
    fn map_write_read_release() {
        let (m, h) = model();
        let (mut t, mut pt, mut vas) = agent(&m);
        let before = t.clone();
        let (size, gm) = acquire_grant_table(&m, &mut t, &mut pt, &mut vas, h, 0, 1).unwrap();
        assert_eq!(size, 64);
        assert_eq!(
            (gm.domain(), gm.first_frame(), gm.frames()),
            (h, 0, PageCount(1))
        );
        assert_eq!(gm.resource(), Resource::GrantTableShared);
        // Xen's side: the caller's hole frame holds frame 0 of h's table.
        assert_eq!(m.acquired(D0)[&Gfn(0x100000)], (h, 0));
        // The table: a foreign region with no backing, read-write.
        let r = t.info(GuestPhysAddr(0x100000 << 12)).unwrap();
        assert_eq!(
            (r.kind, r.backing),
            (RegionKind::Foreign, crate::region::Backing::None)
        );
        assert!(r.flags.contains(RegionFlags::WRITE) && !r.flags.contains(RegionFlags::EXEC));
        assert_eq!(pt.map.values().next().unwrap().1, Attrs::READ_WRITE);
        // Byte access: aligned and inside only.
        gm.write_obj::<u32>(12, 0x1234).unwrap();
        gm.write_obj::<u16>(10, 7).unwrap();
        gm.write_obj::<u16>(8, 1).unwrap();
        assert_eq!(gm.read_obj::<u64>(8), Ok(0x1234_0007_0001));
        assert_eq!(gm.read_obj::<u32>(12), Ok(0x1234));
        assert_eq!(gm.read_obj::<u16>(10), Ok(7));
        // The same bytes as grant entry 1.
        let e1 = GrantEntryV1 {
            flags: 1,
            domid: 7,
            frame: 0x1234,
        };
        assert_eq!(gm.grant_entry_v1(1), Some(e1));
        // They are the helper's table, as Xen sees it ...
        assert_eq!(m.gnttab_entry(h, 1), Some(e1));
        let mut raw = [0u8; 8];
        assert!(m.read_guest(D0, Gfn(0x100000), 8, &mut raw));
        assert_eq!(u64::from_le_bytes(raw), 0x1234_0007_0001);
        // ... and what Xen writes there is what the mapping reads.
        let e9 = GrantEntryV1 {
            flags: 0x19,
            domid: 3,
            frame: 0xabcd,
        };
        m.gnttab_write_entry(h, 9, e9).unwrap();
        assert_eq!(gm.grant_entry_v1(9), Some(e9));
        assert_eq!(gm.read_obj::<u16>(9 * 8 + 2), Ok(3));
        let mut buf = [0u8; 8];
        gm.read(9 * 8, &mut buf).unwrap();
        assert_eq!(buf, [0x19, 0, 3, 0, 0xcd, 0xab, 0, 0]);
        assert_eq!(gm.grant_entry_v1(gnttab::ENTRIES_PER_FRAME_V1), None);
        // Refused, memory untouched: misaligned, outside, straddling the end.
        assert_eq!(
            gm.read_obj::<u64>(4),
            Err(AccessError::Misaligned {
                offset: 4,
                align: 8
            })
        );
        assert_eq!(
            gm.read_obj::<u64>(4096),
            Err(AccessError::OutOfBounds {
                offset: 4096,
                len: 8,
                size: 4096
            })
        );
        assert_eq!(
            gm.write_obj::<u16>(4095, 0),
            Err(AccessError::OutOfBounds {
                offset: 4095,
                len: 2,
                size: 4096
            })
        );
        assert!(gm.write(4090, &[0; 8]).is_err());
        assert!(gm.read_obj::<u64>(u64::MAX - 3).is_err());
        assert_eq!(gm.read_obj::<u64>(4088), Ok(0));
        assert_eq!(gm.len(), 4096);
        gm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
        assert!(m.acquired(D0).is_empty() && pt.map.is_empty() && vas.used() == 0);
        m.check_conservation().unwrap();
        // Read-only: no writes.
        let ro = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            3,
            2,
            false,
        )
        .unwrap();
        assert_eq!(ro.write_obj::<u64>(0, 1), Err(AccessError::ReadOnly));
        assert_eq!(ro.write(0, &[1]), Err(AccessError::ReadOnly));
        assert_eq!(ro.read_obj::<u64>(0), Ok(0), "nothing was written");
        // Entries of frames 3 and 4 only.
        assert_eq!(grant_v1_frame(8), 0);
        assert_eq!(grant_v1_frame(3 * 512 + 1), 3);
        assert_eq!(ro.grant_entry_v1(1), None);
        assert!(ro.grant_entry_v1(3 * 512 + 1).is_some());
        assert!(ro.grant_entry_v1(5 * 512 - 1).is_some());
        assert_eq!(ro.grant_entry_v1(5 * 512), None);
        // Frame 4's entries, where Xen keeps them.
        m.gnttab_write_entry(h, 5 * 512 - 1, e9).unwrap();
        assert_eq!(ro.grant_entry_v1(5 * 512 - 1), Some(e9));
        assert_eq!(ro.read_obj::<u64>(2 * 4096 - 8), Ok(0xabcd_0003_0019));
        assert_eq!(m.gnttab_size(h), Some((5, 64)), "the table grew");
        ro.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(t, before);
    }

    /// Nothing of a refused acquisition may be left.
    fn nothing_left(
        m: &XenModel,
        t: &RegionTable,
        before: &RegionTable,
        pt: &BufTables<'_>,
        vas: &VaSpace,
    ) {
        assert_eq!(t, before);
        assert!(pt.map.is_empty(), "page tables");
        assert_eq!(vas.used(), 0, "window");
        assert!(m.acquired(m.current().unwrap()).is_empty(), "physmap");
        m.check_conservation().unwrap();
    }

    /// Xen's tools/tests/resource: the size query is the target's
    /// configured `max_grant_frames` (not its current size, one frame), and
    /// the whole table maps in one call, past Xen's batches of 32.
    #[test]
    fn a_configured_table_is_queried_and_mapped_whole() {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        let cfg = CreateDomain {
            max_grant_frames: Some(40),
            ..CreateDomain::x86_pvh_helper()
        };
        let h = m
            .domctl_createdomain(DomId(0), &mut cfg.to_abi().unwrap())
            .unwrap();
        let mut pt = BufTables::new(64).on_model(&m, D0);
        let mut vas = VaSpace::new(pt.window());
        let mut t = table_with_hole(0x100000, 0x1000);
        let before = t.clone();
        assert_eq!(grant_table_size(&m, h), Ok(40));
        let (size, gm) = acquire_grant_table(&m, &mut t, &mut pt, &mut vas, h, 0, 40).unwrap();
        assert_eq!((size, gm.frames()), (40, PageCount(40)));
        assert_eq!(m.gnttab_size(h), Some((40, 40)), "the table grew");
        assert_eq!(m.acquired(D0)[&Gfn(0x100000 + 39)], (h, 39));
        // Frames past the first batch are the table's too.
        let e = GrantEntryV1 {
            flags: 1,
            domid: 0,
            frame: 0x33,
        };
        m.gnttab_write_entry(h, 39 * gnttab::ENTRIES_PER_FRAME_V1, e)
            .unwrap();
        assert_eq!(
            gm.grant_entry_v1(39 * gnttab::ENTRIES_PER_FRAME_V1),
            Some(e)
        );
        gm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        nothing_left(&m, &t, &before, &pt, &vas);
        // One frame past the end: refused by Xen, typed, nothing left.
        let past = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            40,
            1,
            false,
        );
        assert_eq!(
            past.map(|_| ()).unwrap_err(),
            AcquireError::OutOfRange {
                frame: 40,
                count: 1,
                size: None
            }
        );
        nothing_left(&m, &t, &before, &pt, &vas);
    }

    #[test]
    fn refusals_are_typed_and_leave_nothing() {
        let (m, h) = model();
        let (mut t, mut pt, mut vas) = agent(&m);
        let before = t.clone();
        let mut go = |dom: DomId, first: u32, n: u32| {
            let r = acquire_grant_table(&m, &mut t, &mut pt, &mut vas, dom, first, n).map(|_| ());
            nothing_left(&m, &t, &before, &pt, &vas);
            r.unwrap_err()
        };
        assert_eq!(go(DomId::SELF, 0, 1), AcquireError::SelfDomain);
        assert_eq!(go(D0, 0, 1), AcquireError::OwnDomain(D0));
        assert_eq!(go(DomId(9), 0, 1), AcquireError::NoSuchDomain(DomId(9)));
        assert_eq!(
            go(h, 63, 2),
            AcquireError::OutOfRange {
                frame: 63,
                count: 2,
                size: Some(64)
            }
        );
        assert_eq!(go(h, 0, 0), AcquireError::Empty);
        let direct = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            64,
            1,
            true,
        );
        assert_eq!(
            direct.map(|_| ()).unwrap_err(),
            AcquireError::OutOfRange {
                frame: 64,
                count: 1,
                size: None
            }
        );
        let many = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            0,
            MAX_FRAMES + 1,
            true,
        );
        assert_eq!(
            many.map(|_| ()).unwrap_err(),
            AcquireError::TooMany(MAX_FRAMES + 1)
        );
        nothing_left(&m, &t, &before, &pt, &vas);
    }

    #[test]
    fn unprivileged_callers() {
        let (m, h) = model();
        let (mut t, mut pt, mut vas) = agent(&m);
        let before = t.clone();
        // x86 PVH domU: EACCES (not the hardware domain).
        m.add_domain(DomainConfig::pvh_domu(DomId(5), 64)).unwrap();
        m.set_current(DomId(5)).unwrap();
        let e = acquire_grant_table(&m, &mut t, &mut pt, &mut vas, h, 0, 1).map(|_| ());
        assert_eq!(e.unwrap_err(), AcquireError::NotHardwareDomain);
        nothing_left(&m, &t, &before, &pt, &vas);
        // Arm domU: EPERM from XSM.
        m.add_domain(DomainConfig::arm_domu(DomId(6), 64)).unwrap();
        m.set_current(DomId(6)).unwrap();
        let e = acquire_grant_table(&m, &mut t, &mut pt, &mut vas, h, 0, 1).map(|_| ());
        assert_eq!(e.unwrap_err(), AcquireError::NotPermitted(h));
        nothing_left(&m, &t, &before, &pt, &vas);
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            D0,
            Resource::GrantTableShared,
            0,
            1,
            true,
        );
        assert_eq!(e.map(|_| ()).unwrap_err(), AcquireError::NotPermitted(D0));
        nothing_left(&m, &t, &before, &pt, &vas);
    }

    #[test]
    fn a_partial_map_is_undone() {
        // The only hole straddles the end of the p2m: Xen maps the first
        // frame, fails the second with EIO.
        let (m, h) = model();
        let (_, mut pt, mut vas) = agent(&m);
        let mut t = table_with_hole(X86_GFN_LIMIT - 1, 2);
        let before = t.clone();
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            0,
            2,
            true,
        );
        assert_eq!(
            e.map(|_| ()).unwrap_err(),
            AcquireError::Xen(XenError::Errno(Errno::EIO))
        );
        nothing_left(&m, &t, &before, &pt, &vas);
        // Xen refuses the whole call.
        m.inject(Fault::Errno {
            op: XOp::AcquireResource,
            errno: Errno::EFAULT,
        });
        let mut t = table_with_hole(0x100000, 16);
        let before = t.clone();
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            0,
            1,
            true,
        );
        assert_eq!(
            e.map(|_| ()).unwrap_err(),
            AcquireError::Xen(XenError::Errno(Errno::EFAULT))
        );
        nothing_left(&m, &t, &before, &pt, &vas);
        // The page tables refuse after Xen mapped: Xen's entries go.
        pt.fail_map = true;
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            0,
            3,
            true,
        );
        assert_eq!(
            e.map(|_| ()).unwrap_err(),
            AcquireError::Paging(PagingError::OutOfFrames)
        );
        nothing_left(&m, &t, &before, &pt, &vas);
        // And when removing fails too, the frames stay out of the holes.
        m.inject(Fault::Errno {
            op: XOp::RemoveFromPhysmap,
            errno: Errno::EBUSY,
        });
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableShared,
            0,
            1,
            true,
        );
        assert_eq!(
            e.map(|_| ()).unwrap_err(),
            AcquireError::Unwind(XenError::Errno(Errno::EBUSY))
        );
        let r = t.info(GuestPhysAddr(0x100000 << 12)).unwrap();
        assert_eq!(r.kind, RegionKind::Foreign);
        assert_eq!(vas.used(), 0);
    }

    /// A release stopped at each of its steps in turn: the error, the
    /// handle given back with exactly what is left, and a second release
    /// that finishes, each frame removed from the physmap once; then
    /// nothing is left (page tables, window, holes, Xen's acquired frames)
    /// and no leak is reported.
    #[test]
    fn every_step_of_a_release_fails_once_and_the_retry_finishes() {
        use crate::leak::{test_hook::take, Outstanding};
        let (m, h) = model();
        let (mut t, mut pt, mut vas) = agent(&m);
        let before = t.clone();
        take();
        let all = Outstanding {
            window_pages: 3,
            in_xen: 3,
            held: 3,
        };
        let removes = || m.calls(XOp::RemoveFromPhysmap);
        let map = |t: &mut RegionTable, pt: &mut BufTables<'_>, vas: &mut VaSpace| {
            acquire_grant_table(&m, t, pt, vas, h, 0, 3).unwrap().1
        };

        // 1. The page tables refuse: nothing changed, it still reads.
        let rm = map(&mut t, &mut pt, &mut vas);
        pt.fail_unmap = true;
        let calls = removes();
        let (rm, e) = rm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert_eq!(e, AcquireError::Paging(PagingError::OutOfFrames));
        assert_eq!(rm.outstanding(), all);
        assert_eq!(removes(), calls, "Xen was not asked");
        assert!(rm.grant_entry_v1(8).is_some());
        pt.fail_unmap = false;
        rm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        nothing_left(&m, &t, &before, &pt, &vas);

        // 2. Xen removes the first frame and refuses the second: the window
        // is gone (no byte access), the first and third frames are holes
        // again, and the retry removes the second alone.
        let rm = map(&mut t, &mut pt, &mut vas);
        m.inject(Fault::ErrnoOnCall {
            op: XOp::RemoveFromPhysmap,
            nth: 1,
            errno: Errno::EBUSY,
        });
        let (rm, e) = rm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        let second = Gfn(rm.gfns().start().0 + 1);
        assert_eq!(
            e,
            AcquireError::Unmap(UnmapFailure {
                index: 1,
                gfn: second,
                err: XenError::Errno(Errno::EBUSY),
                failed: 1
            })
        );
        assert_eq!(
            rm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 1,
                held: 1
            }
        );
        assert_eq!(rm.window(), None);
        assert_eq!(rm.grant_entry_v1(8), None);
        assert_eq!(
            rm.read_obj::<u64>(0),
            Err(AccessError::NotMapped),
            "no access once unmapped from the window"
        );
        assert_eq!(m.acquired(D0).keys().copied().collect::<Vec<_>>(), [second]);
        assert_eq!(t.count(RegionKind::Foreign), PageCount(1));
        let calls = removes();
        rm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(removes() - calls, 1);
        nothing_left(&m, &t, &before, &pt, &vas);

        // 3. The table refuses the holes back: Xen let go of everything;
        // the retry asks Xen nothing.
        let rm = map(&mut t, &mut pt, &mut vas);
        let at = FrameRange::new(Gfn(rm.gfns().start().0 + 2), PageCount(1)).unwrap();
        let swap = |t: &mut RegionTable, from, to| {
            t.modify(
                at,
                crate::region::Change {
                    kind: Some(to),
                    expect: Some(from),
                    ..crate::region::Change::default()
                },
            )
            .unwrap()
        };
        swap(&mut t, RegionKind::Foreign, RegionKind::Grant);
        let (rm, e) = rm
            .release(&m, &mut t, &mut pt, &mut vas)
            .unwrap_err()
            .into_parts();
        assert!(matches!(e, AcquireError::Table(_)), "{e:?}");
        assert_eq!(
            rm.outstanding(),
            Outstanding {
                window_pages: 0,
                in_xen: 0,
                held: 3
            }
        );
        assert!(m.acquired(D0).is_empty());
        swap(&mut t, RegionKind::Grant, RegionKind::Foreign);
        let calls = removes();
        rm.release(&m, &mut t, &mut pt, &mut vas).unwrap();
        assert_eq!(removes(), calls);
        nothing_left(&m, &t, &before, &pt, &vas);

        assert_eq!(take(), [], "nothing leaked");
        // Dropped unreleased: reported.
        let rm = map(&mut t, &mut pt, &mut vas);
        let gfns = rm.gfns();
        drop(rm);
        let leaks = take();
        assert_eq!(leaks.len(), 1);
        assert_eq!(
            (leaks[0].kind, leaks[0].domain, leaks[0].frames),
            (crate::leak::LeakKind::ResourceMap, Some(h), Some(gfns))
        );
        assert_eq!(leaks[0].outstanding, all);
    }

    #[test]
    fn status_frames_of_a_v1_table() {
        let (m, h) = model();
        let (mut t, mut pt, mut vas) = agent(&m);
        assert_eq!(resource_size(&m, h, Resource::GrantTableStatus), Ok(8));
        let e = acquire(
            &m,
            &mut t,
            &mut pt,
            &mut vas,
            h,
            Resource::GrantTableStatus,
            0,
            1,
            false,
        );
        assert!(matches!(e, Err(AcquireError::OutOfRange { .. })));
        assert_eq!(Resource::GrantTableStatus.name(), "grant-status");
        assert!(AcquireError::SelfDomain.to_string().contains("DOMID_SELF"));
    }
}
