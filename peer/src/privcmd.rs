//! Hypercalls from a Linux dom0 through `/dev/xen/privcmd`
//! (`IOCTL_PRIVCMD_HYPERCALL`), with their argument buffers in locked
//! pages as libxenctrl keeps them (Xen reads and writes them by the
//! caller's virtual address, so they must stay resident).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `struct privcmd_hypercall` of Linux's `include/uapi/xen/privcmd.h`.
#[repr(C)]
struct PrivcmdHypercall {
    op: u64,
    arg: [u64; 5],
}

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`: the same
/// encoding on x86_64 and arm64 (asm-generic's ioctl numbers).
pub(crate) const IOCTL_PRIVCMD_HYPERCALL: u64 = ioc_none(b'P', 0, size_of::<PrivcmdHypercall>());

const fn ioc_none(ty: u8, nr: u8, size: usize) -> u64 {
    ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// An open privcmd device.
pub struct Privcmd {
    file: File,
}

impl Privcmd {
    /// Open `/dev/xen/privcmd` (dom0's `xen-privcmd` module).
    pub fn open() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/privcmd")?;
        Ok(Privcmd { file })
    }

    /// One hypercall; Xen's negative errno becomes the `Err`.
    ///
    /// # Safety
    /// Every pointer among `args` must be one Xen may read and write as the
    /// hypercall `op` defines, for the whole call (a [`LockedPage`]'s).
    pub unsafe fn hypercall(&self, op: u64, args: [u64; 5]) -> io::Result<i64> {
        let mut h = PrivcmdHypercall { op, arg: args };
        // SAFETY: a valid fd and a live privcmd_hypercall the driver reads;
        // what the hypercall reads or writes is the caller's contract.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_PRIVCMD_HYPERCALL as _,
                &mut h as *mut PrivcmdHypercall,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(i64::from(r))
    }
}

/// One page of anonymous memory, locked in RAM, for hypercall arguments.
pub struct LockedPage {
    ptr: *mut u8,
    len: usize,
}

impl LockedPage {
    /// Map and lock one page (zeroed).
    pub fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&l| l > 0)
            .unwrap_or(4096);
        // SAFETY: a fresh private anonymous mapping; nothing else is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = LockedPage {
            ptr: ptr.cast(),
            len,
        };
        // SAFETY: the mapping made above, `len` bytes.
        if unsafe { libc::mlock(ptr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(page)
    }

    /// Copy `v` to the start of the page and return its address for Xen.
    pub fn put<T: Copy>(&mut self, v: &T) -> io::Result<u64> {
        if size_of::<T>() > self.len || align_of::<T>() > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too large"));
        }
        // SAFETY: the page is ours, writable, page-aligned and large enough.
        unsafe { self.ptr.cast::<T>().write(*v) };
        Ok(self.ptr as u64)
    }

    /// Read back a `T` from the start of the page.
    pub fn get<T: Copy>(&self) -> io::Result<T> {
        if size_of::<T>() > self.len || align_of::<T>() > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too large"));
        }
        // SAFETY: as in `put`; `T: Copy` is plain data written by `put` or Xen.
        Ok(unsafe { self.ptr.cast::<T>().read() })
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer borrowed.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `struct privcmd_mmapbatch_v2` of Linux's `include/uapi/xen/privcmd.h`.
#[repr(C)]
struct MmapBatchV2 {
    num: u32,
    dom: u16,
    addr: u64,
    arr: *const u64,
    err: *mut i32,
}

/// `_IOC(_IOC_NONE, 'P', 4, sizeof(struct privcmd_mmapbatch_v2))`.
pub(crate) const IOCTL_PRIVCMD_MMAPBATCH_V2: u64 = ioc_none(b'P', 4, size_of::<MmapBatchV2>());

impl Privcmd {
    /// Map frames `gfns` of `domid` with `IOCTL_PRIVCMD_MMAPBATCH_V2` into
    /// a scratch mapping, unmap it, and return Xen's answer per frame (0 or
    /// a negative errno). Linux returns success from the ioctl itself when
    /// frames fail with anything but `ENOENT`; the per-frame errors are the
    /// only place that says so (rust-vmm vm-memory's FOREIGN regions do
    /// not look at them).
    pub fn map_errors(&self, domid: u16, gfns: &[u64]) -> io::Result<Vec<i32>> {
        let len = gfns.len() * 4096;
        // SAFETY: a fresh shared mapping of the privcmd file, nothing else
        // is touched; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut err = vec![0i32; gfns.len()];
        let m = MmapBatchV2 {
            num: u32::try_from(gfns.len()).unwrap_or(u32::MAX),
            dom: domid,
            addr: addr as u64,
            arr: gfns.as_ptr(),
            err: err.as_mut_ptr(),
        };
        // SAFETY: a valid fd, a live structure whose arrays hold `num`
        // entries, and a mapping of `num` pages the driver fills.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_PRIVCMD_MMAPBATCH_V2 as _,
                &m as *const MmapBatchV2,
            )
        };
        let ioctl_err = (r < 0).then(io::Error::last_os_error);
        // SAFETY: the mapping made above; no reference into it remains.
        unsafe { libc::munmap(addr, len) };
        match ioctl_err {
            // ENOENT: some frame failed with ENOENT; the array says which.
            Some(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(err),
        }
    }
}

/// `struct privcmd_mmap_resource`.
#[repr(C)]
struct MmapResource {
    dom: u16,
    ty: u32,
    id: u32,
    idx: u32,
    num: u64,
    addr: u64,
}

/// `_IOC(_IOC_NONE, 'P', 7, sizeof(struct privcmd_mmap_resource))`.
pub(crate) const IOCTL_PRIVCMD_MMAP_RESOURCE: u64 = ioc_none(b'P', 7, size_of::<MmapResource>());
/// `XENMEM_resource_grant_table`.
const XENMEM_RESOURCE_GRANT_TABLE: u32 = 1;
/// `XENMEM_resource_grant_table_id_shared`.
const GRANT_TABLE_ID_SHARED: u32 = 0;

impl Privcmd {
    /// A copy of the first `frames` frames of `domid`'s grant table (its
    /// shared entries), acquired with `XENMEM_acquire_resource` through
    /// `IOCTL_PRIVCMD_MMAP_RESOURCE` and unmapped again.
    pub fn grant_table(&self, domid: u16, frames: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(frames * 4096)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frames"))?;
        // SAFETY: a fresh shared mapping of the privcmd file; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let m = MmapResource {
            dom: domid,
            ty: XENMEM_RESOURCE_GRANT_TABLE,
            id: GRANT_TABLE_ID_SHARED,
            idx: 0,
            num: frames,
            addr: addr as u64,
        };
        // SAFETY: a valid fd and a live structure naming the mapping above.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_PRIVCMD_MMAP_RESOURCE as _,
                &m as *const MmapResource,
            )
        };
        let out = if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            let mut v = vec![0u8; len];
            // SAFETY: `len` bytes mapped readable by the ioctl above.
            unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
            Ok(v)
        };
        // SAFETY: the mapping made above; no reference into it remains.
        unsafe { libc::munmap(addr, len) };
        out
    }
}
