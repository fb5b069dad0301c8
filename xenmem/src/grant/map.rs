//! Other domains' grants mapped into holes of the physmap and into the
//! agent's mapping window.

use alloc::vec::Vec;

use super::{host_addr, GrantError, GrantRef, Refusal, Refusals, Undo, GRANT_KIND};
use crate::addr::{DomId, Gfn, Order, PageCount, VirtAddr, PAGE_SIZE};
use crate::mapping::{MapTarget, VaSpace};
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
    va: VirtAddr,
    gfns: FrameRange,
    dom: DomId,
    refs: Vec<GrantRef>,
    handles: Vec<u32>,
    bus: Vec<u64>,
    writable: bool,
    released: bool,
}

impl GrantMap {
    /// Where it is mapped.
    pub fn va(&self) -> VirtAddr {
        self.va
    }

    /// The hole frames it occupies in the agent's physmap (frame `i` holds
    /// reference `refs()[i]`).
    pub fn gfns(&self) -> FrameRange {
        self.gfns
    }

    /// The granting domain.
    pub fn domain(&self) -> DomId {
        self.dom
    }

    /// The references mapped, in order.
    pub fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    /// Xen's handles of the mappings, in order.
    pub fn handles(&self) -> &[u32] {
        &self.handles
    }

    /// The bus (machine) address of each frame, as Xen reported it.
    pub fn bus_addrs(&self) -> &[u64] {
        &self.bus
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.gfns.len().0 * PAGE_SIZE
    }

    /// Never: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether it is mapped writable.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Give the mapping back: unmap it from the window, unmap the grants
    /// (one hypercall) and return the holes to the table. Frames whose unmap
    /// Xen refuses stay out of the holes ([`GrantError::Unwind`]).
    pub fn release(
        self,
        hv: &impl Hypervisor,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), GrantError> {
        let n = self.handles.len();
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
    ) -> Result<(), GrantError> {
        self.released = true;
        pt.unmap(self.va, self.gfns.len(), table)
            .map_err(GrantError::Paging)?;
        vas.free(self.va);
        let mut ops: Vec<UnmapGrantRef> = self
            .handles
            .iter()
            .enumerate()
            .map(|(i, &h)| UnmapGrantRef::host(host_addr(frame(self.gfns, i)), h))
            .collect();
        // Every hypercall is tried (a refused one leaves its entries'
        // status "not done"); the first refusal is reported.
        let mut called = Ok(());
        for c in ops.chunks_mut(per_call.max(1)) {
            if let Err(e) = hv.gnttab_unmap(c) {
                called = called.and(Err(e));
            }
        }
        let failed = ops.iter().position(|o| !o.status().is_ok());
        // Holes back for every frame Xen did unmap: one table change per run
        // of them (all of the mapping when nothing failed).
        let mut back: Vec<Op> = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            if !ops[i].status().is_ok() {
                i += 1;
                continue;
            }
            let run = ops[i..].iter().take_while(|o| o.status().is_ok()).count();
            if let Ok(r) = FrameRange::new(frame(self.gfns, i), PageCount(run as u64)) {
                back.push(Op::Modify(r, to_hole()));
            }
            i += run;
        }
        table.apply(&back).map_err(|(e, _)| GrantError::Table(e))?;
        if let Err(e) = called {
            return Err(GrantError::Unwind(Undo::Xen(e)));
        }
        match failed {
            Some(i) => Err(GrantError::Unwind(Undo::Status(
                self.refs[i],
                ops[i].status(),
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for GrantMap {
    fn drop(&mut self) {
        if !self.released {
            xm_error!(
                "grant: {=u64} grant frames of domain {} at {} dropped without release: leaked",
                self.gfns.len().0,
                self.dom,
                self.va
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

/// Unmap the mappings of `ops` that Xen made (status okay), in one call.
fn unmap_done(
    hv: &impl Hypervisor,
    ops: &[MapGrantRef],
    refs: &[GrantRef],
) -> Result<(), GrantError> {
    let mut undo: Vec<UnmapGrantRef> = Vec::new();
    let mut which: Vec<GrantRef> = Vec::new();
    for (o, r) in ops.iter().zip(refs) {
        if o.status().is_ok() {
            undo.push(UnmapGrantRef::host(o.host_addr, o.handle));
            which.push(*r);
        }
    }
    if undo.is_empty() {
        return Ok(());
    }
    hv.gnttab_unmap(&mut undo)
        .map_err(|e| GrantError::Unwind(Undo::Xen(e)))?;
    match undo.iter().zip(which).find(|(u, _)| !u.status().is_ok()) {
        Some((u, r)) => Err(GrantError::Unwind(Undo::Status(r, u.status()))),
        None => Ok(()),
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
    let va = vas.alloc(n).ok_or(GrantError::NoVirtualSpace(n))?;
    // Record the mapping first, one region per run of consecutive refs.
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
        let range = match FrameRange::new(frame(hole, i), PageCount((j - i) as u64)) {
            Ok(r) => r,
            Err(e) => {
                vas.free(va);
                return Err(e.into());
            }
        };
        ops.push(Op::Add(Region {
            range,
            kind: GRANT_KIND,
            flags,
            backing: Backing::Grant { dom, gref: refs[i] },
        }));
        i = j;
    }
    if let Err((e, _)) = table.apply(&ops) {
        vas.free(va);
        return Err(GrantError::Table(e));
    }
    let undo_table = |table: &mut RegionTable| {
        // Cannot fail: the range was recorded just above.
        let _ = table.modify(hole, to_hole());
    };
    let mut map: Vec<MapGrantRef> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| MapGrantRef::host(host_addr(frame(hole, i)), r.0, dom.0, readonly))
        .collect();
    let calls = map
        .chunks_mut(per_call.max(1))
        .try_for_each(|c| hv.gnttab_map(c));
    if let Err(e) = calls {
        vas.free(va);
        // Xen may have done some operations before failing (their status
        // says so): take those back.
        unmap_done(hv, &map, refs)?;
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
        unmap_done(hv, &map, refs)?;
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
        unmap_done(hv, &map, refs)?;
        undo_table(table);
        return Err(GrantError::Paging(e));
    }
    Ok(GrantMap {
        va,
        gfns: hole,
        dom,
        refs: refs.to_vec(),
        handles: map.iter().map(|o| o.handle).collect(),
        bus: map.iter().map(|o| o.dev_bus_addr).collect(),
        writable: !readonly,
        released: false,
    })
}
