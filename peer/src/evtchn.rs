//! An interdomain event channel from dom0 through Linux's `/dev/xen/evtchn`,
//! and the peer's side of the hand-overs with the agent: values in
//! xenstore, each one followed by an event on the channel the agent
//! offered (its port published in `data/xenmem/port`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::xenbus::Xenbus;

/// `_IOC(_IOC_NONE, 'E', 1, sizeof(struct ioctl_evtchn_bind_interdomain))`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u64 = (8 << 16) | ((b'E' as u64) << 8) | 1;
/// `_IOC(_IOC_NONE, 'E', 4, sizeof(struct ioctl_evtchn_notify))`.
pub const IOCTL_EVTCHN_NOTIFY: u64 = (4 << 16) | ((b'E' as u64) << 8) | 4;

#[repr(C)]
struct BindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

#[repr(C)]
struct Notify {
    port: u32,
}

/// How long the peer waits for Xen's event at bind, milliseconds.
const BIND_EVENT_WAIT_MS: i32 = 1000;

/// How long [`Handover::record`] waits for the agent's first event when
/// none has been counted, milliseconds.
const LATE_EVENT_WAIT_MS: i32 = 2000;

/// Milliseconds left until `deadline` (0 once it passed), as `poll` takes
/// them.
fn ms_until(deadline: Instant) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now());
    i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
}

/// One bound interdomain channel (closing the file unbinds it).
pub struct Evtchn {
    file: File,
    /// dom0's end.
    pub local: u32,
}

impl Evtchn {
    /// Bind to `remote_port` of `domid` (offered to dom0 with
    /// `EVTCHNOP_alloc_unbound`).
    pub fn bind(domid: u16, remote_port: u32) -> io::Result<Evtchn> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/evtchn")?;
        let b = BindInterdomain {
            remote_domain: u32::from(domid),
            remote_port,
        };
        // SAFETY: a valid fd and a live structure the driver reads.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                IOCTL_EVTCHN_BIND_INTERDOMAIN as _,
                &b as *const BindInterdomain,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Evtchn {
            file,
            local: r as u32,
        })
    }

    /// Notify the other end.
    pub fn notify(&self) -> io::Result<()> {
        let n = Notify { port: self.local };
        // SAFETY: as in `bind`.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_EVTCHN_NOTIFY as _,
                &n as *const Notify,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Block until an event comes (true) or `deadline` passes (false);
    /// the port is unmasked again for the next one.
    pub fn wait(&mut self, deadline: Instant) -> io::Result<bool> {
        self.take(ms_until(deadline))
    }

    /// Take an event already delivered, without blocking (true if there
    /// was one).
    pub fn take_pending(&mut self) -> io::Result<bool> {
        self.take(0)
    }

    /// Poll for up to `ms` milliseconds; read and unmask one event.
    fn take(&mut self, ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(false);
        }
        let mut b = [0u8; 4];
        self.file.read_exact(&mut b)?;
        // Writing the port back unmasks it.
        self.file.write_all(&b)?;
        Ok(true)
    }
}

/// The peer's side of the hand-overs.
pub struct Handover {
    xs: Xenbus,
    ev: Evtchn,
    /// The agent's port.
    pub remote: u32,
    /// Events sent and received (Xen's event at bind not among them).
    pub sent: u64,
    /// See `sent`.
    pub received: u64,
    /// Whether Xen's event at bind came and was taken before counting.
    pub bind_event: bool,
    /// The session's deadline (given to [`Handover::connect`]).
    deadline: Instant,
}

impl Handover {
    /// Wait (xenstore watch: the one hand-over before the channel exists)
    /// for the agent's `DIR/port`, and bind to it.
    pub fn connect(domid: u16, dir: &str, deadline: Instant) -> io::Result<Option<Handover>> {
        let mut xs = Xenbus::open()?;
        let path = format!("{dir}/port");
        xs.watch(&path, "port")?;
        let port = loop {
            if let Some(v) = xs.read(&path)? {
                if let Ok(p) = v.parse::<u32>() {
                    break p;
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            xs.next_event()?;
        };
        let mut ev = Evtchn::bind(domid, port)?;
        // Xen marks the local port pending at every interdomain bind (in
        // case the unbound port lost a notification); an event the agent
        // sent before the bind went nowhere. So this one says nothing about
        // the agent: it is taken here and not counted.
        let bind_event = ev.take(BIND_EVENT_WAIT_MS)?;
        Ok(Some(Handover {
            xs,
            ev,
            remote: port,
            sent: 0,
            received: 0,
            bind_event,
            deadline,
        }))
    }

    /// The value at `path`.
    pub fn read(&mut self, path: &str) -> io::Result<Option<String>> {
        self.xs.read(path)
    }

    /// Write `value` at `path` and notify the agent.
    pub fn write(&mut self, path: &str, value: &str) -> io::Result<()> {
        self.xs.write(path, value)?;
        self.ev.notify()?;
        self.sent += 1;
        Ok(())
    }

    /// Block on the channel until an event (true) or the deadline (false).
    pub fn next(&mut self, deadline: Instant) -> io::Result<bool> {
        let got = self.ev.wait(deadline)?;
        if got {
            self.received += 1;
        }
        Ok(got)
    }

    /// Block on the channel until `path` holds a value starting with
    /// `prefix` or one of `ends`; `None` at the deadline. A value already
    /// there when looked at needs no wait, but its event (or an earlier
    /// one, as a pending event coalesces later ones) may have come
    /// meanwhile: it is taken and counted, so the count says what the
    /// channel delivered, not how often the peer was slower than the agent.
    pub fn wait_for(
        &mut self,
        path: &str,
        prefix: &str,
        ends: &[&str],
        deadline: Instant,
    ) -> io::Result<Option<String>> {
        loop {
            if let Some(v) = self.read(path)? {
                if v.starts_with(prefix) || ends.contains(&v.as_str()) {
                    if self.ev.take_pending()? {
                        self.received += 1;
                    }
                    return Ok(Some(v));
                }
            }
            if !self.next(deadline)? {
                return Ok(None);
            }
        }
    }

    /// The record of the channel's use, printed at the end. If no event
    /// has been counted yet, one still on its way is waited for (up to
    /// [`LATE_EVENT_WAIT_MS`], not past the session's deadline): every value
    /// the agent writes is followed by its event, and the peer may have read
    /// the last value before it came.
    pub fn record(&mut self) -> String {
        let ms = ms_until(self.deadline).min(LATE_EVENT_WAIT_MS);
        if self.received == 0 && self.ev.take(ms).unwrap_or(false) {
            self.received += 1;
        }
        format!(
            "peer-channel local_port={} remote_port={} events_sent={} events_received={} bind_event={}",
            self.ev.local,
            self.remote,
            self.sent,
            self.received,
            if self.bind_event { "yes" } else { "no" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linuxs() {
        // include/uapi/xen/evtchn.h: 8- and 4-byte structures, type 'E'.
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
    }
}
