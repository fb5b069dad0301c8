//! `GNTTABOP_copy` between another domain's grants and the agent's frames.

use alloc::vec::Vec;

use super::{GrantError, GrantRef, Refusal, Refusals};
use crate::addr::{DomId, Gfn};
use crate::alloc_util::try_collect;
use crate::xen::abi::gnttab::{
    CopyPtr, GntCopy, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, STATUS_NOT_DONE,
};
use crate::xen::Hypervisor;

/// One segment of a copy: `len` bytes between byte `grant_offset` of the
/// page granted as `gref` and byte `local_offset` of the agent's frame
/// `local` (which must be its RAM). Neither side may cross its page (Xen:
/// `GNTST_bad_copy_arg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySeg {
    /// The grant reference.
    pub gref: GrantRef,
    /// Offset in the granted page.
    pub grant_offset: u16,
    /// The agent's frame.
    pub local: Gfn,
    /// Offset in it.
    pub local_offset: u16,
    /// Bytes.
    pub len: u16,
}

impl CopySeg {
    fn grant_ptr(&self, dom: DomId) -> CopyPtr {
        CopyPtr {
            u: u64::from(self.gref.0),
            domid: dom.0,
            offset: self.grant_offset,
        }
    }

    fn local_ptr(&self) -> CopyPtr {
        CopyPtr {
            u: self.local.0,
            domid: DomId::SELF.0,
            offset: self.local_offset,
        }
    }
}

fn run(hv: &impl Hypervisor, segs: &[CopySeg], mut ops: Vec<GntCopy>) -> Result<(), GrantError> {
    if ops.is_empty() {
        return Err(GrantError::Empty);
    }
    hv.gnttab_copy(&mut ops).map_err(GrantError::Xen)?;
    let mut refused = Refusals::new(ops.len());
    for (index, (o, s)) in ops.iter().zip(segs).enumerate() {
        if !o.status().is_ok() {
            refused.push(Refusal {
                index,
                gref: s.gref,
                status: o.status(),
            });
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(GrantError::Refused(refused))
    }
}

/// Copy the agent's bytes into pages `dom` granted (writable), one hypercall
/// for all segments. Segments Xen refuses are listed in the error (the
/// others were copied).
pub fn copy_to_grant(hv: &impl Hypervisor, dom: DomId, segs: &[CopySeg]) -> Result<(), GrantError> {
    let ops = try_collect(
        segs.iter().map(|s| GntCopy {
            source: s.local_ptr(),
            dest: s.grant_ptr(dom),
            len: s.len,
            flags: GNTCOPY_DEST_GREF,
            status: STATUS_NOT_DONE,
        }),
        "grant copy operations",
    )?;
    run(hv, segs, ops)
}

/// Copy bytes out of pages `dom` granted into the agent's frames, one
/// hypercall for all segments. Segments Xen refuses are listed in the error
/// (the others were copied).
pub fn copy_from_grant(
    hv: &impl Hypervisor,
    dom: DomId,
    segs: &[CopySeg],
) -> Result<(), GrantError> {
    let ops = try_collect(
        segs.iter().map(|s| GntCopy {
            source: s.grant_ptr(dom),
            dest: s.local_ptr(),
            len: s.len,
            flags: GNTCOPY_SOURCE_GREF,
            status: STATUS_NOT_DONE,
        }),
        "grant copy operations",
    )?;
    run(hv, segs, ops)
}
