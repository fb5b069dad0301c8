//! Other domains' grants mapped into holes of the physmap and into the
//! agent's mapping window.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;

use super::{host_addr, GrantError, GrantRef, Refusal, Refusals, Undo, GRANT_KIND};
use crate::addr::{DomId, Gfn, Order, PageCount, VirtAddr, PAGE_SIZE};
use crate::alloc_util::{try_collect, try_with_capacity, OutOfMemory, TryVec};
use crate::leak::{self, LeakKind, Outstanding, ReleaseError};
use crate::mapping::{MapTarget, Step, Teardown, VaSpace};
use crate::paging::Attrs;
use crate::region::{
    Backing, Change, FrameRange, Op, Region, RegionFlags, RegionKind, RegionTable,
};
use crate::xen::abi::gnttab::{MapGrantRef, UnmapGrantRef};
use crate::xen::Hypervisor;

/// Other domain's grants, mapped.
#[must_use = "a grant mapping must be given back with GrantMap::release"]
#[derive(Debug)]
pub struct GrantMap {
    // Boxed: the handle travels back inside a `ReleaseError` beside a
    // `GrantError` (large: it lists refusals), and stays small so.
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    undo: Teardown,
    dom: DomId,
    refs: Vec<GrantRef>,
    handles: Vec<u32>,
    bus: Vec<u64>,
    writable: bool,
}

impl GrantMap {
    /// Where it is (or was) mapped in the window.
    pub fn va(&self) -> VirtAddr {
        self.inner.undo.va()
    }

    /// Where it is mapped in the window; `None` once a release that
    /// stopped part-way has unmapped it there (no byte access then).
    pub fn window(&self) -> Option<VirtAddr> {
        self.inner.undo.window()
    }

    /// The hole frames it occupies in the agent's physmap (frame `i` holds
    /// reference `refs()[i]`).
    pub fn gfns(&self) -> FrameRange {
        self.inner.undo.gfns()
    }

    /// The granting domain.
    pub fn domain(&self) -> DomId {
        self.inner.dom
    }

    /// The references mapped, in order.
    pub fn refs(&self) -> &[GrantRef] {
        &self.inner.refs
    }

    /// Xen's handles of the mappings, in order.
    pub fn handles(&self) -> &[u32] {
        &self.inner.handles
    }

    /// The bus (machine) address of each frame, as Xen reported it.
    pub fn bus_addrs(&self) -> &[u64] {
        &self.inner.bus
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.gfns().len().0 * PAGE_SIZE
    }

    /// Never: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether it is mapped writable.
    pub fn writable(&self) -> bool {
        self.inner.writable
    }

    /// What is still to be undone (all of it until a release starts).
    pub fn outstanding(&self) -> Outstanding {
        self.inner.undo.outstanding()
    }

    /// The frames Xen still maps a grant at, with their references (all of
    /// them until a release starts).
    pub fn mapped_refs(&self) -> impl Iterator<Item = (Gfn, GrantRef)> + '_ {
        self.inner
            .undo
            .steps()
            .iter()
            .zip(&self.inner.refs)
            .enumerate()
            .filter(|(_, (s, _))| **s == Step::Mapped)
            .map(|(i, (_, r))| (self.inner.undo.frame(i), *r))
    }

    /// Give the mapping back: unmap it from the window, unmap the grants
    /// (one hypercall) and return the holes to the table.
    ///
    /// On a failure the handle comes back with the error, recording what
    /// is left, and a second release continues from there (each step is
    /// done once): the page tables refused ([`GrantError::Paging`]:
    /// nothing changed), Xen refused a hypercall or some unmaps
    /// ([`GrantError::Unwind`]: those frames stay out of the holes and are
    /// tried again; the frames Xen did unmap went back), or the table
    /// refused to take frames back ([`GrantError::Table`]).
    pub fn release(
        self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), ReleaseError<GrantMap, GrantError>> {
        let n = self.inner.handles.len();
        self.release_per_call(hv, table, pt, vas, n)
    }

    /// [`GrantMap::release`] with at most `per_call` unmap operations per
    /// hypercall (0 counts as 1).
    pub fn release_per_call(
        mut self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        per_call: usize,
    ) -> Result<(), ReleaseError<GrantMap, GrantError>> {
        // The lists below before anything changes: a refusal leaves the
        // mapping as it was.
        let lists = self.unmap_lists();
        let (todo, mut ops) = match lists {
            Ok(l) => l,
            Err(e) => return Err(ReleaseError::new(self, GrantError::OutOfMemory(e))),
        };
        if let Err(e) = self.inner.undo.unmap_window(table, pt, vas) {
            return Err(ReleaseError::new(self, GrantError::Paging(e)));
        }
        // Every hypercall is tried (a refused one leaves its entries'
        // status "not done"); the first refusal is reported.
        let mut called = Ok(());
        for c in ops.chunks_mut(per_call.max(1)) {
            if let Err(e) = hv.gnttab_unmap(c) {
                called = called.and(Err(e));
            }
        }
        let mut failed = None;
        for (&i, o) in todo.iter().zip(&ops) {
            if o.status().is_ok() {
                self.inner.undo.set(i, Step::Unmapped);
            } else if failed.is_none() {
                failed = Some(Undo::Status(self.inner.refs[i], o.status()));
            }
        }
        // Holes back for every frame Xen unmapped, now or before.
        let table_err = self.inner.undo.give_back(table, to_hole()).err();
        let err = match (called, failed, table_err) {
            (Err(e), _, _) => GrantError::Unwind(Undo::Xen(e)),
            (Ok(()), Some(u), _) => GrantError::Unwind(u),
            (Ok(()), None, Some(e)) => GrantError::Table(e),
            (Ok(()), None, None) => return Ok(()),
        };
        Err(ReleaseError::new(self, err))
    }
}

impl GrantMap {
    /// The indices of the grants Xen still maps, and their unmap
    /// operations, or [`OutOfMemory`].
    #[allow(clippy::type_complexity)]
    fn unmap_lists(&self) -> Result<(Vec<usize>, Vec<UnmapGrantRef>), OutOfMemory> {
        let todo = try_collect(
            (0..self.inner.handles.len())
                .filter(|&i| self.inner.undo.steps().get(i) == Some(&Step::Mapped)),
            "grant unmap list",
        )?;
        let ops = try_collect(
            todo.iter().map(|&i| {
                UnmapGrantRef::host(host_addr(self.inner.undo.frame(i)), self.inner.handles[i])
            }),
            "grant unmap operations",
        )?;
        Ok((todo, ops))
    }
}

impl Drop for GrantMap {
    fn drop(&mut self) {
        if !self.inner.undo.is_done() {
            leak::report(
                &self
                    .inner
                    .undo
                    .leak(LeakKind::GrantMap, Some(self.inner.dom)),
            );
        }
    }
}

/// Frame `i` of `range`.
fn frame(range: FrameRange, i: usize) -> Gfn {
    Gfn(range.start().0 + i as u64)
}

fn to_hole() -> Change {
    Change {
        kind: Some(RegionKind::Hole),
        clear: RegionFlags::all(),
        backing: Some(Backing::None),
        expect: Some(GRANT_KIND),
        ..Change::default()
    }
}

/// Room to unmap up to `n` grant mappings again (set aside before the map
/// hypercall, so that undoing it needs no memory).
struct Unwinding {
    undo: Vec<UnmapGrantRef>,
    which: Vec<GrantRef>,
}

impl Unwinding {
    fn try_new(n: usize) -> Result<Self, OutOfMemory> {
        Ok(Unwinding {
            undo: try_with_capacity(n, "grant unwind operations")?,
            which: try_with_capacity(n, "grant unwind list")?,
        })
    }

    /// Unmap the mappings of `ops` that Xen made (status okay), in one
    /// call. `ops` has at most the `n` entries room was made for: no
    /// allocation.
    fn unmap_done(
        &mut self,
        hv: &impl Hypervisor,
        ops: &[MapGrantRef],
        refs: &[GrantRef],
    ) -> Result<(), GrantError> {
        self.undo.clear();
        self.which.clear();
        for (o, r) in ops.iter().zip(refs) {
            if o.status().is_ok() {
                // Within the room made in `try_new`: no allocation.
                self.undo.push(UnmapGrantRef::host(o.host_addr, o.handle));
                self.which.push(*r);
            }
        }
        if self.undo.is_empty() {
            return Ok(());
        }
        hv.gnttab_unmap(&mut self.undo)
            .map_err(|e| GrantError::Unwind(Undo::Xen(e)))?;
        match self
            .undo
            .iter()
            .zip(&self.which)
            .find(|(u, _)| !u.status().is_ok())
        {
            Some((u, r)) => Err(GrantError::Unwind(Undo::Status(*r, u.status()))),
            None => Ok(()),
        }
    }
}

/// `value` in a box, or [`OutOfMemory`] (`Box::new` aborts on a refusal).
fn try_box<T>(value: T, what: &'static str) -> Result<Box<T>, OutOfMemory> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        // A zero-sized value takes no memory: nothing to refuse.
        return Ok(Box::new(value));
    }
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return Err(OutOfMemory::of::<T>(what, 1));
    }
    // SAFETY: `p` is a fresh allocation of the global allocator with `T`'s
    // layout (size and alignment), so it is valid for a write of `T`, and a
    // `Box<T>` may own it (`Box::from_raw` documents this memory layout).
    unsafe {
        p.write(value);
        Ok(Box::from_raw(p))
    }
}

/// Map grants `refs` of domain `dom` into the agent, read-only or
/// read-write (never executable, cacheable): hole frames from the region
/// table, one `GNTTABOP_map_grant_ref` hypercall for the batch. If Xen
/// refuses some references, the ones it mapped are unmapped again and the
/// error ([`GrantError::Refused`]) lists the refused ones with their
/// `GNTST_*` statuses.
///
/// `dom` must be the granting domain's real id (`DOMID_SELF` is
/// `GNTST_bad_domain`). On x86, mapping the agent's *own* grant unhooks the
/// granted page from its GFN for good (it reads all-ones there afterwards):
/// only grant pages the agent can give up.
pub fn map_grants(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    dom: DomId,
    refs: &[GrantRef],
    readonly: bool,
) -> Result<GrantMap, GrantError> {
    map_grants_per_call(hv, table, pt, vas, dom, refs, readonly, refs.len())
}

/// [`map_grants`] with at most `per_call` operations per hypercall (for
/// measuring what batching gains; 0 counts as 1). A refusal or failure in
/// any hypercall undoes what the earlier ones mapped.
#[allow(clippy::too_many_arguments)]
pub fn map_grants_per_call(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    dom: DomId,
    refs: &[GrantRef],
    readonly: bool,
    per_call: usize,
) -> Result<GrantMap, GrantError> {
    if refs.is_empty() {
        return Err(GrantError::Empty);
    }
    let n = PageCount(refs.len() as u64);
    let hole = table
        .find_hole(n, Order::ZERO, Gfn(1))
        .ok_or(GrantError::NoHole(n))?;
    let va = vas.try_alloc(n)?.ok_or(GrantError::NoVirtualSpace(n))?;
    // All the heap memory the mapping needs, before anything changes.
    let prepared = prepare_grants(hole, va, dom, refs, readonly);
    let (ops, mut map, mut unwinding, inner) = match prepared {
        Ok(p) => p,
        Err(e) => {
            vas.free(va);
            return Err(e);
        }
    };
    // Record the mapping first, one region per run of consecutive refs.
    if let Err((e, _)) = table.apply(&ops) {
        vas.free(va);
        return Err(GrantError::Table(e));
    }
    drop(ops);
    let undo_table = |table: &mut RegionTable| {
        // Cannot fail: the range was recorded just above.
        let _ = table.modify(hole, to_hole());
    };
    let calls = map
        .chunks_mut(per_call.max(1))
        .try_for_each(|c| hv.gnttab_map(c));
    if let Err(e) = calls {
        vas.free(va);
        // Xen may have done some operations before failing (their status
        // says so): take those back.
        unwinding.unmap_done(hv, &map, refs)?;
        undo_table(table);
        return Err(GrantError::Xen(e));
    }
    let mut refused = Refusals::new(refs.len());
    for (index, (o, r)) in map.iter().zip(refs).enumerate() {
        if !o.status().is_ok() {
            refused.push(Refusal {
                index,
                gref: *r,
                status: o.status(),
            });
        }
    }
    if !refused.is_empty() {
        vas.free(va);
        unwinding.unmap_done(hv, &map, refs)?;
        undo_table(table);
        return Err(GrantError::Refused(refused));
    }
    let attrs = if readonly {
        Attrs::READ_ONLY
    } else {
        Attrs::READ_WRITE
    };
    if let Err(e) = pt.map(va, hole.start_addr(), n, attrs, table) {
        vas.free(va);
        unwinding.unmap_done(hv, &map, refs)?;
        undo_table(table);
        return Err(GrantError::Paging(e));
    }
    let mut inner = inner;
    // Within the room made in `prepare_grants` (one entry per operation):
    // no allocation, and one capacity check per list, not per grant.
    inner.handles.extend(map.iter().map(|o| o.handle));
    inner.bus.extend(map.iter().map(|o| o.dev_bus_addr));
    Ok(GrantMap { inner })
}

/// What [`map_grants_per_call`] needs from the heap, made before anything
/// changes: the table operations recording the mapping (one region per run
/// of consecutive refs), the map operations, room to undo them, and the
/// handle's record (its handle and bus-address lists empty, with room for
/// all).
#[allow(clippy::type_complexity)]
fn prepare_grants(
    hole: FrameRange,
    va: VirtAddr,
    dom: DomId,
    refs: &[GrantRef],
    readonly: bool,
) -> Result<(Vec<Op>, Vec<MapGrantRef>, Unwinding, Box<Inner>), GrantError> {
    let flags = RegionFlags::READ
        | RegionFlags::CACHEABLE
        | if readonly {
            RegionFlags::empty()
        } else {
            RegionFlags::WRITE
        };
    let mut ops = Vec::new();
    let mut i = 0;
    while i < refs.len() {
        let mut j = i + 1;
        while j < refs.len() && refs[j].0 == refs[j - 1].0.wrapping_add(1) {
            j += 1;
        }
        let range = FrameRange::new(frame(hole, i), PageCount((j - i) as u64))?;
        ops.try_push(
            Op::Add(Region {
                range,
                kind: GRANT_KIND,
                flags,
                backing: Backing::Grant { dom, gref: refs[i] },
            }),
            "grant mapping records",
        )?;
        i = j;
    }
    let mut map = try_with_capacity(refs.len(), "grant map operations")?;
    // Within the room made just above (one per reference): no allocation,
    // one capacity check for the batch.
    map.extend(
        refs.iter()
            .enumerate()
            .map(|(i, r)| MapGrantRef::host(host_addr(frame(hole, i)), r.0, dom.0, readonly)),
    );
    let unwinding = Unwinding::try_new(refs.len())?;
    let mut kept = try_with_capacity(refs.len(), "grant mapping refs")?;
    // Within the room made just above: no allocation.
    kept.extend_from_slice(refs);
    let inner = try_box(
        Inner {
            undo: Teardown::try_new(va, hole)?,
            dom,
            refs: kept,
            handles: try_with_capacity(refs.len(), "grant mapping handles")?,
            bus: try_with_capacity(refs.len(), "grant mapping bus addresses")?,
            writable: !readonly,
        },
        "grant mapping",
    )?;
    Ok((ops, map, unwinding, inner))
}
