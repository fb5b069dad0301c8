//! The guest's side of the xenstore ring page: producer of `req`, consumer
//! of `rsp` (`public/io/xs_wire.h`; the order of accesses is that of Linux's
//! `xenbus_comms.c` and Mini-OS's `xenbus.c`).
//!
//! Writing: read `req_cons` and `req_prod`, check them, a full barrier (the
//! slots are reused only after xenstored's index says it has read them),
//! copy, a barrier, publish `req_prod`. Reading: read `rsp_cons` and
//! `rsp_prod`, check them, a barrier (the data after the index that
//! announces it), copy, a full barrier (done reading before the slots are
//! handed back), publish `rsp_cons`. Indices that say more is pending than
//! the ring holds are an error and nothing moves.

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, Ordering};

use super::wire::{mask_xenstore_idx, XenstoreDomainInterface, XENSTORE_RING_SIZE};

/// Which of the page's two rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Ring {
    /// `req`: requests, guest to xenstored.
    Req,
    /// `rsp`: replies and watch events, xenstored to guest.
    Rsp,
}

/// Indices the other side left out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CorruptIndices {
    /// The ring.
    pub ring: Ring,
    /// Its consumer index as read.
    pub cons: u32,
    /// Its producer index as read.
    pub prod: u32,
}

/// Host tests record the order of the shared-page accesses, so that the
/// barriers' places can be checked (they cannot be observed otherwise on
/// one thread).
#[cfg(test)]
pub(crate) mod trace {
    use std::cell::RefCell;
    use std::vec::Vec;

    /// One access to the shared page.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Access {
        LoadCons,
        LoadProd,
        Fence,
        LoadData,
        StoreData,
        StoreIdx,
    }

    std::thread_local! {
        static LOG: RefCell<Option<Vec<Access>>> = const { RefCell::new(None) };
    }

    pub(crate) fn record(a: Access) {
        LOG.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push(a)
            }
        });
    }

    /// Run `f` and return the accesses it made.
    pub(crate) fn capture(f: impl FnOnce()) -> Vec<Access> {
        LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
        f();
        LOG.with(|l| l.borrow_mut().take().unwrap_or_default())
    }
}

macro_rules! trace {
    ($a:ident) => {
        #[cfg(test)]
        trace::record(trace::Access::$a);
    };
}

/// The guest's end of a xenstore ring page.
#[derive(Debug)]
pub struct XsRing {
    page: NonNull<XenstoreDomainInterface>,
}

// SAFETY: the page is shared memory; `XsRing` is its only guest-side user
// (the contract of `new`), and moving it to another CPU does not change that.
unsafe impl Send for XsRing {}

impl XsRing {
    /// The ring page at `page`.
    ///
    /// # Safety
    /// `page` must point at a xenstore ring page (this domain's, or a test's
    /// heap page), mapped readable and writable for as long as the value is
    /// used, and no one else on the guest side may write `req`, `req_prod` or
    /// `rsp_cons` meanwhile.
    pub const unsafe fn new(page: NonNull<XenstoreDomainInterface>) -> Self {
        XsRing { page }
    }

    /// The address the page is reached at.
    pub fn page_addr(&self) -> usize {
        self.page.as_ptr() as usize
    }

    /// `(cons, prod)` of `ring`, checked, followed by a full barrier.
    fn indices(&self, ring: Ring) -> Result<(u32, u32), CorruptIndices> {
        let p = self.page.as_ptr();
        // SAFETY: the page is mapped (contract of `new`); xenstored writes
        // one of the two indices concurrently, hence volatile reads of
        // aligned u32s through raw pointers, no references.
        let (cons, prod) = unsafe {
            match ring {
                Ring::Req => (
                    addr_of!((*p).req_cons).read_volatile(),
                    addr_of!((*p).req_prod).read_volatile(),
                ),
                Ring::Rsp => (
                    addr_of!((*p).rsp_cons).read_volatile(),
                    addr_of!((*p).rsp_prod).read_volatile(),
                ),
            }
        };
        trace!(LoadCons);
        trace!(LoadProd);
        if prod.wrapping_sub(cons) > XENSTORE_RING_SIZE {
            return Err(CorruptIndices { ring, cons, prod });
        }
        // Request ring: the slots xenstored freed are reused only after its
        // index was read (`mb()`). Reply ring: the data is read only after
        // the index that announces it (`rmb()`).
        fence(Ordering::SeqCst);
        trace!(Fence);
        Ok((cons, prod))
    }

    /// Bytes waiting in the reply ring.
    pub fn rsp_pending(&self) -> Result<u32, CorruptIndices> {
        let (cons, prod) = self.indices(Ring::Rsp)?;
        Ok(prod.wrapping_sub(cons))
    }

    /// Bytes of request xenstored has not consumed yet.
    pub fn req_pending(&self) -> Result<u32, CorruptIndices> {
        let (cons, prod) = self.indices(Ring::Req)?;
        Ok(prod.wrapping_sub(cons))
    }

    /// Copy as much of `bytes` as fits into the request ring and publish it;
    /// the number of bytes written (0 when the ring is full).
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, CorruptIndices> {
        let (cons, prod) = self.indices(Ring::Req)?;
        let free = (XENSTORE_RING_SIZE - prod.wrapping_sub(cons)) as usize;
        let n = bytes.len().min(free);
        if n == 0 {
            return Ok(0);
        }
        let p = self.page.as_ptr();
        for (i, &b) in bytes[..n].iter().enumerate() {
            let slot = mask_xenstore_idx(prod.wrapping_add(i as u32));
            // SAFETY: `slot` < XENSTORE_RING_SIZE, inside the mapped page; the
            // slot is free (between req_prod and req_cons + size), so
            // xenstored does not read it until `req_prod` moves past it.
            unsafe { addr_of_mut!((*p).req[slot]).write_volatile(b) };
            trace!(StoreData);
        }
        // The bytes before the index that publishes them (`wmb()`).
        fence(Ordering::SeqCst);
        trace!(Fence);
        // SAFETY: as above; only this side writes `req_prod`.
        unsafe { addr_of_mut!((*p).req_prod).write_volatile(prod.wrapping_add(n as u32)) };
        trace!(StoreIdx);
        Ok(n)
    }

    /// Copy up to `buf.len()` waiting reply bytes into `buf` and hand their
    /// slots back; the number of bytes read (0 when none wait).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, CorruptIndices> {
        let (cons, prod) = self.indices(Ring::Rsp)?;
        let n = buf.len().min(prod.wrapping_sub(cons) as usize);
        if n == 0 {
            return Ok(0);
        }
        let p = self.page.as_ptr();
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let slot = mask_xenstore_idx(cons.wrapping_add(i as u32));
            // SAFETY: `slot` < XENSTORE_RING_SIZE, inside the mapped page;
            // xenstored published it (it lies between rsp_cons and rsp_prod)
            // and does not rewrite it until `rsp_cons` moves past it.
            *b = unsafe { addr_of!((*p).rsp[slot]).read_volatile() };
            trace!(LoadData);
        }
        // Done reading before the slots are handed back (`mb()`).
        fence(Ordering::SeqCst);
        trace!(Fence);
        // SAFETY: as above; only this side writes `rsp_cons`.
        unsafe { addr_of_mut!((*p).rsp_cons).write_volatile(cons.wrapping_add(n as u32)) };
        trace!(StoreIdx);
        Ok(n)
    }

    /// `(req_cons, rsp_prod)`: the two indices xenstored moves, unchecked;
    /// a change says it is alive.
    pub fn peer_indices(&self) -> (u32, u32) {
        let p = self.page.as_ptr();
        // SAFETY: the page is mapped (contract of `new`); volatile reads of
        // aligned u32s xenstored may change at any time.
        unsafe {
            (
                addr_of!((*p).req_cons).read_volatile(),
                addr_of!((*p).rsp_prod).read_volatile(),
            )
        }
    }

    /// `server_features`, `connection` and `error` as xenstored set them.
    pub fn status(&self) -> (u32, u32, u32) {
        let p = self.page.as_ptr();
        // SAFETY: the page is mapped (contract of `new`); volatile reads of
        // aligned u32s xenstored may change at any time.
        unsafe {
            (
                addr_of!((*p).server_features).read_volatile(),
                addr_of!((*p).connection).read_volatile(),
                addr_of!((*p).error).read_volatile(),
            )
        }
    }
}
