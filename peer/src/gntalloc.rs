//! `xenmem-peer gntalloc`: pages of dom0 granted to the agent through
//! Linux's `/dev/xen/gntalloc` (vm-memory has no gntalloc side), mapped by
//! the agent in one batch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::evtchn::Handover;
use crate::grant::word;

/// What dom0 writes (the agent's `GNTALLOC_SEED`) and what the agent
/// answers (`GNTALLOC_ANSWER_SEED`), src/agent.rs.
pub const SEED: u64 = 0x676e_7461_6c6c_6f63;
/// See [`SEED`].
pub const ANSWER_SEED: u64 = 0x676e_7461_6e73_7772;
const PAGE: usize = 4096;
/// gntalloc's default `limit` of grants per file. Allocating as many again
/// after the free works even while the agent still maps the first ones
/// (Linux 6.1 defers ending a grant in use and does not count it): the
/// rig checks Xen's own count of dom0's active grants instead.
pub const PAGES: u32 = 1024;

/// `struct ioctl_gntalloc_alloc_gref` of `include/uapi/xen/gntalloc.h`,
/// with room for the references Linux writes after it.
#[repr(C)]
struct AllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref_ids: [u32; PAGES as usize],
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
struct DeallocGref {
    index: u64,
    count: u32,
}

/// `GNTALLOC_FLAG_WRITABLE`.
const FLAG_WRITABLE: u16 = 1;
/// `_IOC(_IOC_NONE, 'G', 5, sizeof(struct ioctl_gntalloc_alloc_gref))`:
/// the header (with one reference) is 24 bytes.
pub const IOCTL_ALLOC_GREF: u64 = (24 << 16) | ((b'G' as u64) << 8) | 5;
/// `_IOC(_IOC_NONE, 'G', 6, sizeof(struct ioctl_gntalloc_dealloc_gref))`.
pub const IOCTL_DEALLOC_GREF: u64 = (16 << 16) | ((b'G' as u64) << 8) | 6;

/// Pages allocated and granted by gntalloc, mapped here.
struct Alloc<'f> {
    file: &'f File,
    index: u64,
    refs: Vec<u32>,
    ptr: *mut u8,
    len: usize,
}

impl<'f> Alloc<'f> {
    fn new(file: &'f File, domid: u16, count: u32) -> io::Result<Self> {
        let mut a = Box::new(AllocGref {
            domid,
            flags: FLAG_WRITABLE,
            count,
            index: 0,
            gref_ids: [0; PAGES as usize],
        });
        if count > PAGES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "count"));
        }
        // SAFETY: a valid fd and a live structure with room for `count`
        // references, which the driver writes.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                IOCTL_ALLOC_GREF as _,
                &mut *a as *mut AllocGref,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = count as usize * PAGE;
        // SAFETY: maps the driver's pages at offset `index`; nothing else
        // is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                a.index as libc::off_t,
            )
        };
        let mut this = Alloc {
            file,
            index: a.index,
            refs: a.gref_ids[..count as usize].to_vec(),
            ptr: std::ptr::null_mut(),
            len,
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        this.ptr = ptr.cast();
        Ok(this)
    }

    fn word(&self, j: usize, i: usize) -> u64 {
        // SAFETY: inside the mapping (j < pages, i < 512), 8-byte aligned.
        unsafe { self.ptr.add(j * PAGE + i * 8).cast::<u64>().read_volatile() }
    }

    fn set_word(&self, j: usize, i: usize, v: u64) {
        // SAFETY: as in `word`; the mapping is writable.
        unsafe {
            self.ptr
                .add(j * PAGE + i * 8)
                .cast::<u64>()
                .write_volatile(v)
        }
    }
}

impl Drop for Alloc<'_> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
        let d = DeallocGref {
            index: self.index,
            count: self.refs.len() as u32,
        };
        // SAFETY: a valid fd and a live structure the driver reads.
        unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_DEALLOC_GREF as _,
                &d as *const DeallocGref,
            )
        };
    }
}

/// References as `a-b,c,...`.
pub fn ranges(refs: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < refs.len() {
        let mut j = i;
        while j + 1 < refs.len() && refs[j + 1] == refs[j].wrapping_add(1) {
            j += 1;
        }
        out.push(if i == j {
            refs[i].to_string()
        } else {
            format!("{}-{}", refs[i], refs[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// What both gntalloc exchanges start with: the device and the channel
/// the agent offers (`None`, said, if it never comes).
fn start(domid: u16, dir: &str, deadline: Instant) -> io::Result<Option<(File, Handover)>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/xen/gntalloc")?;
    let Some(xs) = Handover::connect(domid, dir, deadline)? else {
        println!("peer-no-channel");
        return Ok(None);
    };
    Ok(Some((file, xs)))
}

/// `pages` pages granted to `domid` and filled with [`SEED`]'s pattern.
fn granted(file: &File, domid: u16, pages: u32) -> io::Result<Alloc<'_>> {
    let a = Alloc::new(file, domid, pages)?;
    for j in 0..a.refs.len() {
        for i in 0..PAGE / 8 {
            a.set_word(j, i, word(SEED, j as u64, i as u64));
        }
    }
    Ok(a)
}

/// Allocate, publish, wait for the agent's answer, check it, free, and
/// allocate as many again (`realloc=`).
pub fn run(domid: u16, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let dir = format!("/local/domain/{domid}/data/xenmem");
    let Some((file, mut xs)) = start(domid, &dir, deadline)? else {
        return Ok(false);
    };
    let a = granted(&file, domid, PAGES)?;
    let n = a.refs.len();
    let published = ranges(&a.refs);
    if published.len() > 3000 {
        println!("peer-gntalloc-refs-too-scattered refs={n}");
        return Ok(false);
    }
    xs.write(&format!("{dir}/alloc"), &format!("1 {n} {published}"))?;
    let released = xs
        .wait_for(
            &format!("{dir}/agent"),
            "1 released",
            &["done", "failed"],
            deadline,
        )?
        .filter(|v| v.starts_with("1 released"));
    let mut bad = 0u64;
    for j in 0..n {
        for i in 0..PAGE / 8 {
            if a.word(j, i) != word(ANSWER_SEED, j as u64, i as u64) {
                bad += 1;
            }
        }
    }
    let first = a.refs[0];
    drop(a);
    let realloc = match Alloc::new(&file, domid, PAGES) {
        Ok(b) => {
            drop(b);
            "ok"
        }
        Err(e) => {
            eprintln!("xenmem-peer: gntalloc again: {e}");
            "failed"
        }
    };
    xs.write(
        &format!("{dir}/peer"),
        &format!("1 freed bad={bad} realloc={realloc}"),
    )?;
    let ok = released.is_some() && bad == 0 && realloc == "ok";
    println!(
        "peer-gntalloc pages={n} first_ref={first} bad_words={bad} agent_released={} realloc={realloc}",
        if released.is_some() { "yes" } else { "no" }
    );
    // The agent's `done`: its last word, after which it only ends.
    let _ = xs.wait_for(&format!("{dir}/agent"), "done", &["failed"], deadline)?;
    println!("{}", xs.record());
    Ok(ok)
}

/// `xenmem-peer gntalloc-end`: grant 64 pages to the agent, and once it
/// has mapped them end the grants under it (munmap and
/// `IOCTL_GNTALLOC_DEALLOC_GREF` while the agent still maps them); say
/// `1 ended` and wait for the agent to release them.
pub fn end_mid_use(domid: u16, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let dir = format!("/local/domain/{domid}/data/xenmem");
    let Some((file, mut xs)) = start(domid, &dir, deadline)? else {
        return Ok(false);
    };
    let a = granted(&file, domid, 64)?;
    let n = a.refs.len();
    xs.write(
        &format!("{dir}/alloc"),
        &format!("1 {n} {}", ranges(&a.refs)),
    )?;
    let mapped = xs
        .wait_for(
            &format!("{dir}/agent"),
            "1 mapped",
            &["done", "failed"],
            deadline,
        )?
        .filter(|v| v.starts_with("1 mapped"));
    let first = a.refs[0];
    // Ended under the agent's mapping.
    drop(a);
    xs.write(&format!("{dir}/peer"), "1 ended")?;
    // `done` comes right after `1 released` and may overwrite it first.
    let released = xs
        .wait_for(
            &format!("{dir}/agent"),
            "1 released",
            &["done", "failed"],
            deadline,
        )?
        .filter(|v| v.starts_with("1 released") || v == "done");
    println!(
        "peer-gntalloc-end pages={n} first_ref={first} agent_mapped={} ended=yes agent_released={}",
        if mapped.is_some() { "yes" } else { "no" },
        if released.is_some() { "yes" } else { "no" }
    );
    let _ = xs.wait_for(&format!("{dir}/agent"), "done", &["failed"], deadline)?;
    println!("{}", xs.record());
    Ok(mapped.is_some() && released.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linuxs() {
        // include/uapi/xen/gntalloc.h: 24- and 16-byte structures.
        assert_eq!(IOCTL_ALLOC_GREF, 0x0018_4705);
        assert_eq!(IOCTL_DEALLOC_GREF, 0x0010_4706);
        assert_eq!(std::mem::offset_of!(AllocGref, gref_ids), 16);
        assert_eq!(std::mem::size_of::<DeallocGref>(), 16);
    }

    #[test]
    fn reference_ranges() {
        assert_eq!(ranges(&[8, 9, 10, 12, 14, 15]), "8-10,12,14-15");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "");
    }
}
