//! Grant tables: the agent's own table, grants it issues, other domains'
//! grants mapped into its address space, and grant copies.
//!
//! # The agent's own table ([`GrantTable`])
//!
//! A translated guest (PVH, Arm) reaches its grant table by asking Xen to put
//! the table's frames into its physmap (`XENMEM_add_to_physmap`,
//! `XENMAPSPACE_grant_table`, one frame index at a time; Xen grows the table
//! to include the index, up to the maximum `GNTTABOP_query_size` gives, 64
//! frames by default). The frames go into hole frames of the region table,
//! never RAM, are recorded there as [`TABLE_FRAME_KIND`] ([`RegionKind::Grant`])
//! regions *without* a backing (mapped grants of other domains carry
//! [`Backing::Grant`](crate::region::Backing::Grant)), and are mapped
//! read-write into the agent's mapping window, where the agent writes its
//! entries (version 1: 8 bytes each, 512 a frame).
//!
//! Issuing a grant ([`GrantTable::grant_access`]) writes the entry's frame
//! and domid, then a write barrier, then its flags: the ABI's order, so that
//! Xen never sees `GTF_permit_access` with a stale frame or domid. Ending it
//! ([`GrantTable::end_access`]) clears the flags with a compare-and-swap only
//! while Xen's `GTF_reading`/`GTF_writing` are clear (the other side has no
//! mapping and no copy in progress), as Linux does; otherwise it fails with
//! [`GrantError::InUse`] and the grant stays. The table owns the grants it
//! issued (a [`GrantRef`] only names one): a grant whose end was refused
//! stays recorded in it, to be ended once the other side lets go, and the
//! table refuses to be released while it has any, so no grant outlives it
//! unnoticed.
//!
//! References 0..8 ([`NR_RESERVED_ENTRIES`](crate::xen::abi::gnttab::NR_RESERVED_ENTRIES)) are never handed
//! out: Xen keeps them across version changes and toolstacks use them (0 for
//! the console, 1 for xenstore); Linux skips them too. References are handed
//! out lowest first, so the first grant of a fresh table is reference 8 —
//! two domains can agree on it without a channel.
//!
//! # Other domains' grants ([`map_grants`], [`GrantMap`])
//!
//! Mirrors [`crate::mapping`]: hole frames from the region table, one
//! `GNTTABOP_map_grant_ref` hypercall for the whole batch with each
//! operation's status checked, the frames recorded as [`RegionKind::Grant`]
//! regions (one per run of consecutive references), then mapped into the
//! window (read-only grants read-only, never executable). If Xen refuses
//! some operations, the ones it did map are unmapped again (one unmap
//! hypercall) and the error lists the refused references with their
//! `GNTST_*` codes; every failure leaves the table, the holes and the window
//! as they were. The handle must be given back with [`GrantMap::release`];
//! a release that fails part-way gives it back
//! ([`ReleaseError`](crate::leak::ReleaseError)) recording what is left, to
//! be released again, and dropping it unreleased reports a
//! [`Leak`](crate::leak::Leak) (see [`crate::leak`]).
//!
//! # Copies ([`copy_to_grant`], [`copy_from_grant`])
//!
//! `GNTTABOP_copy` between another domain's grant and the agent's own
//! frames, many segments per hypercall, each with its own status.
//!
//! # Byte access ([`Bytes`])
//!
//! Bounds-checked volatile reads and writes through a mapping handle
//! ([`GrantMap`], [`crate::mapping::ForeignMap`] and
//! [`crate::acquire::ResourceMap`]); a write through a read-only handle is
//! refused before memory is touched.
//!
//! # Xen's behaviour worth knowing (4.17)
//!
//! * A reference inside the granter's table whose entry is not (yet)
//!   `GTF_permit_access` for the caller gives `GNTST_general_error`, not
//!   `bad_gntref`; `bad_gntref` is only for references beyond the table.
//! * `DOMID_SELF` as the granting domain is `GNTST_bad_domain`: give the
//!   real domid even to map one's own grant.
//! * On x86, mapping a grant of one's *own* page unhooks that page from its
//!   GFN (`p2m_add_page` keeps a frame at one GFN): the GFN reads all-ones
//!   from then on, even after the unmap. On Arm both stay visible.
//! * On x86, mapping a grant over a GFN that holds a grant or foreign
//!   mapping crashes the caller. Holes only.
//! * An unmap with `host_addr` 0 does nothing and says okay.

mod bytes;
mod copy;
mod map;
mod table;

use core::fmt;

use crate::addr::{DomId, Gfn, PageCount};
use crate::alloc_util::OutOfMemory;
use crate::paging::PagingError;
use crate::region::{RegionError, RegionKind};
use crate::xen::XenError;

pub use crate::region::GrantRef;
pub use crate::xen::abi::gnttab::GntStatus;
pub use bytes::{AccessError, Bytes, Plain};
pub use copy::{copy_from_grant, copy_to_grant, CopySeg};
pub use map::{map_grants, map_grants_per_call, GrantMap};
pub use table::{Grant, GrantState, GrantTable};

/// A refused operation of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Its index in the request.
    pub index: usize,
    /// The grant reference it named.
    pub gref: GrantRef,
    /// What Xen said.
    pub status: GntStatus,
}

/// How many refusals a [`Refusals`] lists (it counts them all).
pub const REFUSALS_LISTED: usize = 8;

/// A refusal, packed (batches are below 2^32 operations: Xen's count is 32
/// bits), to keep [`GrantError`] small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    index: u32,
    gref: u32,
    status: GntStatus,
}

/// The operations Xen refused in a batch: how many, and the first
/// [`REFUSALS_LISTED`] in request order. No allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusals {
    total: u32,
    of: u32,
    listed: [Option<Packed>; REFUSALS_LISTED],
}

impl Refusals {
    /// None refused yet, out of a batch of `of` operations.
    pub fn new(of: usize) -> Self {
        Refusals {
            total: 0,
            of: u32::try_from(of).unwrap_or(u32::MAX),
            listed: [None; REFUSALS_LISTED],
        }
    }

    /// Count a refusal (listed if there is room).
    pub fn push(&mut self, r: Refusal) {
        if let Some(slot) = self.listed.get_mut(self.total as usize) {
            *slot = Some(Packed {
                index: u32::try_from(r.index).unwrap_or(u32::MAX),
                gref: r.gref.0,
                status: r.status,
            });
        }
        self.total = self.total.saturating_add(1);
    }

    /// How many were refused.
    pub const fn total(&self) -> usize {
        self.total as usize
    }

    /// The batch's size.
    pub const fn of(&self) -> usize {
        self.of as usize
    }

    /// Whether none was refused.
    pub const fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The listed refusals, in request order.
    pub fn iter(&self) -> impl Iterator<Item = Refusal> + '_ {
        self.listed.iter().flatten().map(|p| Refusal {
            index: p.index as usize,
            gref: GrantRef(p.gref),
            status: p.status,
        })
    }

    /// The first refusal.
    pub fn first(&self) -> Option<Refusal> {
        self.iter().next()
    }
}

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xen refused {} of {} operations:", self.total, self.of)?;
        for r in self.iter() {
            write!(f, " [{}] ref {}: {}", r.index, r.gref.0, r.status.name())?;
        }
        if self.total() > REFUSALS_LISTED {
            write!(f, " and {} more", self.total() - REFUSALS_LISTED)?;
        }
        Ok(())
    }
}

/// What went wrong undoing a failed or finished mapping: frames may still
/// hold grant mappings, so they are kept out of the table's holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undo {
    /// The unmap hypercall was refused as a whole.
    Xen(XenError),
    /// Xen refused to unmap this reference's mapping.
    Status(GrantRef, GntStatus),
    /// Removing a grant-table frame from the physmap failed.
    Physmap(Gfn, XenError),
}

/// Why a grant operation failed. Unless it is [`GrantError::Unwind`], nothing
/// of it is left behind: no mapping in Xen, the page tables or the region
/// table, no hole or window space taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Nothing asked: no references, no frames, no segments.
    Empty,
    /// No hole of that many frames in the region table.
    NoHole(PageCount),
    /// No room in the mapping window.
    NoVirtualSpace(PageCount),
    /// Xen refused a hypercall as a whole.
    Xen(XenError),
    /// Xen refused the operation (`GNTTABOP_query_size`'s status).
    Status(GntStatus),
    /// Xen refused some operations of a batch; the others were undone.
    Refused(Refusals),
    /// The page tables refused.
    Paging(PagingError),
    /// The region table refused (a bug: the frames came from it).
    Table(RegionError),
    /// Undoing failed (see [`Undo`]).
    Unwind(Undo),
    /// More grant-table frames than Xen allows this domain.
    TableSize {
        /// Frames asked for (in all).
        asked: u32,
        /// Xen's maximum.
        max: u32,
    },
    /// Every reference of the table's frames is in use: grow it.
    TableFull,
    /// The reference is not one this table issued (or it was ended).
    NotGranted(GrantRef),
    /// The other side still has the grant mapped or is copying through it
    /// (`GTF_reading`/`GTF_writing`): it stays granted.
    InUse(GrantRef),
    /// The table still has this many grants: end them first.
    GrantsActive(usize),
    /// A release of the table stopped part-way: finish it
    /// ([`GrantTable::release`] again) before growing the table.
    Releasing,
    /// A version-1 entry holds a 32-bit frame number.
    FrameTooLarge(Gfn),
    /// No domain can be granted access under this id (`DOMID_SELF`, or
    /// another reserved id: Xen compares the entry with the mapper's real
    /// id).
    BadDomain(DomId),
    /// The frame may not be granted: it is not RAM the agent may share
    /// (its image, heap, stacks, page tables or boot data, or not its RAM at
    /// all), as the region table says.
    NotGrantable {
        /// The frame.
        frame: crate::addr::Gfn,
        /// What the region table says it is (`None`: in no region).
        kind: Option<crate::region::RegionKind>,
    },
    /// The heap could not provide the memory the operation needed (nothing
    /// of it was done).
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Empty => write!(f, "nothing to do"),
            GrantError::NoHole(n) => write!(f, "no hole of {n} frames in the guest-physical map"),
            GrantError::NoVirtualSpace(n) => {
                write!(f, "no room for {n} pages in the mapping window")
            }
            GrantError::Xen(e) => write!(f, "grant hypercall failed: {e}"),
            GrantError::Status(s) => write!(f, "Xen refused: {s}"),
            GrantError::Refused(r) => write!(f, "{r}"),
            GrantError::Paging(e) => write!(f, "page tables: {e:?}"),
            GrantError::Table(e) => write!(f, "region table: {e}"),
            GrantError::Unwind(Undo::Xen(e)) => {
                write!(f, "could not undo grant mappings: {e}")
            }
            GrantError::Unwind(Undo::Status(r, s)) => {
                write!(f, "could not unmap grant ref {}: {s}", r.0)
            }
            GrantError::Unwind(Undo::Physmap(g, e)) => {
                write!(f, "could not remove grant-table frame {g}: {e}")
            }
            GrantError::TableSize { asked, max } => write!(
                f,
                "{asked} grant-table frames asked, Xen allows at most {max}"
            ),
            GrantError::TableFull => write!(f, "the grant table is full"),
            GrantError::NotGranted(r) => write!(f, "grant ref {} is not granted", r.0),
            GrantError::InUse(r) => {
                write!(
                    f,
                    "grant ref {} is still mapped or in use by its grantee",
                    r.0
                )
            }
            GrantError::GrantsActive(n) => write!(f, "{n} grants are still active"),
            GrantError::Releasing => {
                write!(
                    f,
                    "a release of the grant table is under way: finish it first"
                )
            }
            GrantError::FrameTooLarge(g) => {
                write!(f, "frame {g} does not fit a version-1 grant entry")
            }
            GrantError::BadDomain(d) => write!(f, "cannot grant access to domain id {d}"),
            GrantError::NotGrantable { frame, kind } => match kind {
                Some(k) => write!(f, "frame {frame} is {}: not grantable", k.name()),
                None => write!(f, "frame {frame} is in no region: not grantable"),
            },
            GrantError::OutOfMemory(e) => write!(f, "grant operation: {e}"),
        }
    }
}

impl From<RegionError> for GrantError {
    fn from(e: RegionError) -> Self {
        GrantError::Table(e)
    }
}

impl From<OutOfMemory> for GrantError {
    fn from(e: OutOfMemory) -> Self {
        GrantError::OutOfMemory(e)
    }
}

/// The kind the region table records mapped grants of other domains as (with
/// [`Backing::Grant`]).
///
/// [`Backing::Grant`]: crate::region::Backing::Grant
pub const GRANT_KIND: RegionKind = RegionKind::Grant;

/// The kind the region table records the agent's own grant-table frames as
/// (with no backing). They are Xen's pages shared with the domain, not its
/// RAM (Xen does not count them in the reservation), so not a kind that
/// [`RegionKind::is_populated_ram`] counts.
pub const TABLE_FRAME_KIND: RegionKind = RegionKind::Grant;

/// The agent's pointer to byte `va` of its mapping window.
///
/// On the target the window is part of the agent's own address space, so
/// this is `va` itself. A host build has no such window: there, a test's
/// page tables may route each window page to host memory through
/// [`set_host_window`] (page by page, so no access may cross a page
/// boundary).
#[inline]
pub(crate) fn window_ptr(va: u64) -> *mut u8 {
    #[cfg(not(target_os = "none"))]
    {
        let f = HOST_WINDOW.load(core::sync::atomic::Ordering::Acquire);
        if !f.is_null() {
            // SAFETY: only `set_host_window` stores here, and only a
            // `fn(u64) -> *mut u8`.
            let f: fn(u64) -> *mut u8 = unsafe { core::mem::transmute(f) };
            return f(va);
        }
    }
    va as usize as *mut u8
}

#[cfg(not(target_os = "none"))]
static HOST_WINDOW: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Host builds only: route the mapping window's addresses through `f`
/// (`None`: back to the identity, as on the target). Host tests whose page
/// tables map window pages to host memory install their translation here,
/// so that handles ([`Bytes`], the grant table) reach the memory those
/// tables mapped.
///
/// # Safety
///
/// For every window address of a page that page tables passed to this
/// library have mapped and not yet unmapped, `f` must return a pointer valid
/// for reads and writes to the end of that page for as long as the page
/// stays mapped; the library reads and writes through it.
#[cfg(not(target_os = "none"))]
pub unsafe fn set_host_window(f: Option<fn(u64) -> *mut u8>) {
    let p = f.map_or(core::ptr::null_mut(), |f| f as *mut ());
    HOST_WINDOW.store(p, core::sync::atomic::Ordering::Release);
}

/// The guest-physical address of frame `gfn` as a `host_addr` (frames come
/// from the region table, below 2^52, so the shift cannot overflow).
fn host_addr(gfn: Gfn) -> u64 {
    gfn.addr().map_or(u64::MAX, |a| a.0)
}

/// Reserved domain ids start here (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

#[cfg(test)]
mod tests;
