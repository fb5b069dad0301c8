//! The PV console: the ring page a toolstack gives a domU for its output.
//!
//! A domain made by a toolstack (`xl create`) may not use `CONSOLEIO_write`
//! on a release build of Xen (EPERM). Its console is a page shared with the
//! console daemon in dom0 (`xenconsoled`, shown by `xl console` and written
//! to its guest log), named by `HVM_PARAM_CONSOLE_PFN` and notified through
//! the event channel `HVM_PARAM_CONSOLE_EVTCHN` — the same two parameters on
//! x86 (PVH) and Arm. The page is a [`XenconsInterface`]: a 2 KiB output ring
//! with free-running indices; the guest produces (`out_prod`), the daemon
//! consumes (`out_cons`).
//!
//! [`ConsoleRing::write`] is the producer side of `public/io/console.h`:
//! read the daemon's index, copy what fits, a write barrier, publish the new
//! producer index, notify. When the ring is full it notifies and waits (the
//! caller says how: the agent yields its vCPU) a bounded number of times, so a
//! dead daemon turns into an error instead of a hang; nothing is dropped
//! without the caller being told how much.

use core::fmt;
use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, Ordering};

use crate::xen::abi::XenconsInterface;
use crate::xen::XenError;

/// Size of the output ring, bytes.
pub const OUT_SIZE: u32 = 2048;

/// Why console output could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleError {
    /// Notifying the daemon or waiting failed.
    Xen(XenError),
    /// The ring stayed full for every wait allowed: the daemon does not
    /// consume. `written` bytes of the request went out, `lost` did not.
    Stalled {
        /// Bytes of this request that are in the ring.
        written: usize,
        /// Bytes of this request that are not.
        lost: usize,
    },
    /// The indices say more is pending than the ring holds: the page is not
    /// a console ring, or the other side wrote nonsense. Nothing was written.
    Corrupt {
        /// `out_cons` as read.
        cons: u32,
        /// `out_prod` as read.
        prod: u32,
    },
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleError::Xen(e) => write!(f, "console notify/wait failed: {e}"),
            ConsoleError::Stalled { written, lost } => write!(
                f,
                "console ring stayed full: {written} bytes written, {lost} lost"
            ),
            ConsoleError::Corrupt { cons, prod } => write!(
                f,
                "console ring indices out of range (out_cons={cons}, out_prod={prod})"
            ),
        }
    }
}

/// The producer end of a PV console ring.
#[derive(Debug)]
pub struct ConsoleRing {
    page: NonNull<XenconsInterface>,
    port: u32,
}

// SAFETY: the ring is a plain shared page; `ConsoleRing` is the only producer
// (the contract of `new`), and moving it to another CPU does not change that.
unsafe impl Send for ConsoleRing {}

impl ConsoleRing {
    /// The ring at `page`, notified through `port`.
    ///
    /// # Safety
    /// `page` must point at this domain's console ring page, mapped readable
    /// and writable for as long as the value is used, and no one else in this
    /// domain may write its output ring or `out_prod` meanwhile.
    pub const unsafe fn new(page: NonNull<XenconsInterface>, port: u32) -> Self {
        ConsoleRing { page, port }
    }

    /// The event channel port it notifies.
    pub const fn port(&self) -> u32 {
        self.port
    }

    /// The address the ring page is reached at.
    pub fn page_addr(&self) -> usize {
        self.page.as_ptr() as usize
    }

    fn indices(&self) -> (u32, u32) {
        let p = self.page.as_ptr();
        // SAFETY: the page is mapped (contract of `new`); the daemon writes
        // `out_cons` concurrently, hence volatile reads of aligned u32s.
        let (cons, prod) = unsafe {
            (
                addr_of!((*p).out_cons).read_volatile(),
                addr_of!((*p).out_prod).read_volatile(),
            )
        };
        // Read the consumer index before looking at the slots it frees (the
        // `mb()` in the producers of Linux and Mini-OS).
        fence(Ordering::SeqCst);
        (cons, prod)
    }

    /// Bytes the ring can take now, or why it cannot be trusted.
    fn space(&self) -> Result<(u32, u32), ConsoleError> {
        let (cons, prod) = self.indices();
        let pending = prod.wrapping_sub(cons);
        if pending > OUT_SIZE {
            return Err(ConsoleError::Corrupt { cons, prod });
        }
        Ok((OUT_SIZE - pending, prod))
    }

    /// Write all of `bytes`: copy what fits, publish it, `notify`; while the
    /// ring is full, `wait` (at most `max_waits` times in all) and try again.
    pub fn write(
        &mut self,
        bytes: &[u8],
        notify: &mut impl FnMut(u32) -> Result<(), XenError>,
        wait: &mut impl FnMut() -> Result<(), XenError>,
        max_waits: u32,
    ) -> Result<(), ConsoleError> {
        self.push(bytes, notify, wait, max_waits)?;
        notify(self.port).map_err(ConsoleError::Xen)
    }

    /// [`write`](Self::write) without the closing notification: the bytes
    /// are published, and the daemon is notified only when the ring is full
    /// (before each wait). Call [`kick`](Self::kick) when done: one
    /// notification for many writes (each one can switch the CPU to the
    /// daemon's domain).
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        notify: &mut impl FnMut(u32) -> Result<(), XenError>,
        wait: &mut impl FnMut() -> Result<(), XenError>,
        max_waits: u32,
    ) -> Result<(), ConsoleError> {
        let total = bytes.len();
        let mut waits = 0;
        while !bytes.is_empty() {
            let (free, prod) = self.space()?;
            if free == 0 {
                if waits == max_waits {
                    return Err(ConsoleError::Stalled {
                        written: total - bytes.len(),
                        lost: bytes.len(),
                    });
                }
                waits += 1;
                notify(self.port).map_err(ConsoleError::Xen)?;
                wait().map_err(ConsoleError::Xen)?;
                continue;
            }
            let n = bytes.len().min(free as usize);
            let p = self.page.as_ptr();
            for (i, &b) in bytes[..n].iter().enumerate() {
                let slot = (prod.wrapping_add(i as u32) % OUT_SIZE) as usize;
                // SAFETY: `slot` < OUT_SIZE, inside the mapped page; the slot
                // is free (between prod and cons + OUT_SIZE), so the daemon
                // does not read it until `out_prod` moves past it.
                unsafe { addr_of_mut!((*p).output[slot]).write_volatile(b) };
            }
            // The bytes before the index that publishes them (`wmb()`).
            fence(Ordering::SeqCst);
            // SAFETY: as above; only this producer writes `out_prod`.
            unsafe { addr_of_mut!((*p).out_prod).write_volatile(prod.wrapping_add(n as u32)) };
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Notify the daemon of what [`push`](Self::push) published.
    pub fn kick(
        &self,
        notify: &mut impl FnMut(u32) -> Result<(), XenError>,
    ) -> Result<(), ConsoleError> {
        notify(self.port).map_err(ConsoleError::Xen)
    }

    /// Wait (at most `max_waits` times) until the daemon has consumed
    /// everything written; `Ok(0)` then, else the bytes still pending.
    pub fn drain(
        &self,
        notify: &mut impl FnMut(u32) -> Result<(), XenError>,
        wait: &mut impl FnMut() -> Result<(), XenError>,
        max_waits: u32,
    ) -> Result<u32, ConsoleError> {
        for _ in 0..max_waits {
            let (free, _) = self.space()?;
            if free == OUT_SIZE {
                return Ok(0);
            }
            notify(self.port).map_err(ConsoleError::Xen)?;
            wait().map_err(ConsoleError::Xen)?;
        }
        let (free, _) = self.space()?;
        Ok(OUT_SIZE - free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    fn blank() -> Box<XenconsInterface> {
        Box::new(XenconsInterface {
            input: [0; 1024],
            output: [0; 2048],
            in_cons: 0,
            in_prod: 0,
            out_cons: 0,
            out_prod: 0,
        })
    }

    /// A daemon that consumes up to `per_wait` bytes each time the producer
    /// waits, and records what it read.
    struct Daemon {
        page: *mut XenconsInterface,
        per_wait: usize,
        got: Vec<u8>,
        notified: u32,
        waits: u32,
    }

    impl Daemon {
        fn consume(&mut self, max: usize) {
            // SAFETY: the test's page is alive for the whole test.
            let p = unsafe { &mut *self.page };
            let mut n = 0;
            while p.out_cons != p.out_prod && n < max {
                self.got.push(p.output[(p.out_cons % OUT_SIZE) as usize]);
                p.out_cons = p.out_cons.wrapping_add(1);
                n += 1;
            }
        }
    }

    fn ring(page: &mut XenconsInterface) -> ConsoleRing {
        // SAFETY: the page outlives the ring in every test.
        unsafe { ConsoleRing::new(NonNull::from(page), 7) }
    }

    fn write_all(
        r: &mut ConsoleRing,
        d: &RefCell<Daemon>,
        bytes: &[u8],
        max_waits: u32,
    ) -> Result<(), ConsoleError> {
        let mut notify = |port| {
            assert_eq!(port, 7);
            d.borrow_mut().notified += 1;
            Ok(())
        };
        let mut wait = || {
            let mut d = d.borrow_mut();
            d.waits += 1;
            let n = d.per_wait;
            d.consume(n);
            Ok(())
        };
        r.write(bytes, &mut notify, &mut wait, max_waits)
    }

    #[test]
    fn params_from_values() {
        use crate::addr::Gfn;
        use crate::xen::RingParams;
        assert_eq!(RingParams::from_values(0, 3), Ok(None));
        assert_eq!(
            RingParams::from_values(0xfefff, 2),
            Ok(Some(RingParams {
                gfn: Gfn(0xfefff),
                port: 2
            }))
        );
        assert!(RingParams::from_values(1, 1 << 32).is_err());
    }

    #[test]
    fn writes_wrap_and_wait_for_the_daemon() {
        let mut page = blank();
        // Start near the top of the index space: the indices wrap too.
        page.out_cons = u32::MAX - 100;
        page.out_prod = u32::MAX - 100;
        let d = RefCell::new(Daemon {
            page: &mut *page,
            per_wait: 1000,
            got: Vec::new(),
            notified: 0,
            waits: 0,
        });
        let mut r = ring(&mut page);
        let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        write_all(&mut r, &d, &msg, 100).unwrap();
        d.borrow_mut().consume(usize::MAX);
        let d = d.into_inner();
        assert_eq!(d.got, msg);
        assert!(d.waits >= 7, "10000 bytes through a 2 KiB ring need waits");
        assert!(d.notified > d.waits);
    }

    #[test]
    fn a_daemon_that_never_reads_is_an_error_not_a_hang() {
        let mut page = blank();
        let d = RefCell::new(Daemon {
            page: &mut *page,
            per_wait: 0,
            got: Vec::new(),
            notified: 0,
            waits: 0,
        });
        let mut r = ring(&mut page);
        let e = write_all(&mut r, &d, &[b'x'; 3000], 5).unwrap_err();
        assert_eq!(
            e,
            ConsoleError::Stalled {
                written: 2048,
                lost: 952
            }
        );
        assert_eq!(d.borrow().waits, 5);
        // Drain reports what is still pending.
        let mut notify = |_| Ok(());
        let mut wait = || Ok(());
        assert_eq!(r.drain(&mut notify, &mut wait, 3), Ok(2048));
    }

    #[test]
    fn corrupt_indices_write_nothing() {
        let mut page = blank();
        page.out_cons = 0;
        page.out_prod = 5000;
        let d = RefCell::new(Daemon {
            page: &mut *page,
            per_wait: 10,
            got: Vec::new(),
            notified: 0,
            waits: 0,
        });
        let mut r = ring(&mut page);
        assert_eq!(
            write_all(&mut r, &d, b"hello", 3),
            Err(ConsoleError::Corrupt {
                cons: 0,
                prod: 5000
            })
        );
        assert_eq!(page.out_prod, 5000);
        assert!(page.output.iter().all(|&b| b == 0));
    }

    #[test]
    fn push_notifies_only_when_full_and_kick_once() {
        let mut page = blank();
        let d = RefCell::new(Daemon {
            page: &mut *page,
            per_wait: 4096,
            got: Vec::new(),
            notified: 0,
            waits: 0,
        });
        let mut r = ring(&mut page);
        let mut notify = |_| {
            d.borrow_mut().notified += 1;
            Ok(())
        };
        let mut wait = || {
            d.borrow_mut().consume(usize::MAX);
            Ok(())
        };
        for _ in 0..10 {
            r.push(&[7; 100], &mut notify, &mut wait, 10).unwrap();
        }
        // 1000 bytes fit: no notification yet.
        assert_eq!(d.borrow().notified, 0);
        r.kick(&mut notify).unwrap();
        assert_eq!(d.borrow().notified, 1);
        // 3000 more do not fit: notified before the wait, then kicked.
        r.push(&[8; 3000], &mut notify, &mut wait, 10).unwrap();
        assert_eq!(d.borrow().notified, 2);
        r.kick(&mut notify).unwrap();
        d.borrow_mut().consume(usize::MAX);
        assert_eq!(d.borrow().got.len(), 4000);
    }

    #[test]
    fn notify_errors_are_reported() {
        let mut page = blank();
        let mut r = ring(&mut page);
        let mut notify = |_| Err(XenError::Contract("no"));
        let mut wait = || Ok(());
        assert_eq!(
            r.write(b"x", &mut notify, &mut wait, 1),
            Err(ConsoleError::Xen(XenError::Contract("no")))
        );
    }

    #[test]
    fn drain_waits_until_consumed() {
        let mut page = blank();
        let d = RefCell::new(Daemon {
            page: &mut *page,
            per_wait: 100,
            got: Vec::new(),
            notified: 0,
            waits: 0,
        });
        let mut r = ring(&mut page);
        write_all(&mut r, &d, &[1; 250], 0).unwrap();
        let mut notify = |_| Ok(());
        let mut wait = || {
            d.borrow_mut().consume(100);
            Ok(())
        };
        assert_eq!(r.drain(&mut notify, &mut wait, 10), Ok(0));
        assert_eq!(d.borrow().got.len(), 250);
    }
}
