//! A xenstore client over the domain's xenstore ring page.
//!
//! A domain made by a toolstack talks to xenstored (in dom0) through one page
//! shared with it, named by `HVM_PARAM_STORE_PFN` and notified through the
//! event channel `HVM_PARAM_STORE_EVTCHN` ([`RingParams::xenstore`](crate::xen::RingParams::xenstore)). The page holds
//! two byte rings ([`wire::XenstoreDomainInterface`]); requests go out on one,
//! replies and watch events come back on the other, each message a
//! [`wire::XsdSockmsg`] header and up to [`wire::XENSTORE_PAYLOAD_MAX`] bytes
//! of payload — four times the ring, so messages are streamed through it in
//! pieces ([`XsRing`] moves the bytes, with the barriers of `xs_wire.h`'s
//! users).
//!
//! [`XsClient`] is a synchronous client: one request at a time, its reply
//! matched by `req_id`, an `XS_ERROR` reply turned into [`XsError::Server`].
//! It does not block on its own: the caller gives it a `notify(port)`
//! closure (the agent: `EVTCHNOP_send`) and a `wait(port)` closure (the
//! agent: a bounded poll of the event channel), and a bound on how many waits
//! in a row may pass with nothing moving on the ring before xenstored counts
//! as gone ([`XsError::Stalled`]). Watch events may arrive at any time, also
//! between a request and its reply; they are queued and handed out by
//! [`XsClient::poll_event`] and [`XsClient::next_event`].
//!
//! Nothing here panics on what xenstored sends: oversized messages are
//! skipped, replies nobody asked for and replies of the wrong type are typed
//! errors, and a request given up on (stalled, or failed half-way) is
//! remembered so that its late reply is dropped instead of being taken for
//! the next request's.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use crate::addr::DomId;
use crate::alloc_util::{
    try_room_deque, try_string, try_with_capacity, FixedVec, OutOfMemory, TryVec,
};
use crate::xen::XenError;

/// The xenstore model (crate `xenmem-model`), compiled into the unit tests.
#[cfg(test)]
#[path = "../../../xenmem-model/src/xenstore.rs"]
pub mod model;
mod ring;
#[cfg(test)]
mod tests;
pub mod wire;

pub use ring::{CorruptIndices, Ring, XsRing};
use wire::{msg_type, XenstoreDomainInterface, XsErrno, XsdSockmsg, XENSTORE_PAYLOAD_MAX};

/// Why a decimal value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ParseError {
    /// No digits at all.
    Empty,
    /// A byte that is not an ASCII digit (a sign, a space, a NUL, ...).
    NotDecimal,
    /// More than `u64::MAX`.
    Overflow,
}

/// Parse a xenstore value as an unsigned decimal: ASCII digits only, no
/// sign, no spaces, no trailing NUL, at most `u64::MAX`.
pub fn parse_u64(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() {
        return Err(ParseError::Empty);
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(ParseError::NotDecimal);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(ParseError::Overflow)
    })
}

/// Why a xenstore operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum XsError {
    /// Notifying xenstored or waiting failed.
    Xen(XenError),
    /// Nothing moved on the ring for `waits` waits in a row: xenstored does
    /// not answer. The request is given up; a late reply will be dropped.
    Stalled {
        /// Waits spent.
        waits: u32,
    },
    /// The ring's indices are out of range; nothing was moved.
    Corrupt(CorruptIndices),
    /// xenstored refused the request (`XS_ERROR`).
    Server(XsErrno),
    /// xenstored set the page's `error` field (`XENSTORE_ERROR_*`).
    ServerReported(u32),
    /// A path is empty, contains a NUL or is longer than xenstored accepts.
    InvalidPath,
    /// A value or token contains a NUL.
    InvalidValue,
    /// The request's payload would exceed [`wire::XENSTORE_PAYLOAD_MAX`].
    TooLong {
        /// The payload's length.
        len: usize,
    },
    /// A message from xenstored announced more payload than the protocol
    /// allows; it is skipped as it arrives.
    Oversized {
        /// Its `req_id`.
        req_id: u32,
        /// Its `len`.
        len: u32,
    },
    /// The reply to this request has another type than the request.
    UnexpectedReply {
        /// The request's type.
        expected: u32,
        /// The reply's type.
        got: u32,
    },
    /// A reply to no request that is waiting (consumed and dropped).
    UnknownReqId {
        /// Its `req_id`.
        req_id: u32,
        /// Its type.
        type_: u32,
    },
    /// A reply's payload is not what its type promises.
    Malformed(&'static str),
    /// A value that should be a decimal number is not.
    Parse(ParseError),
    /// A transaction hit `EAGAIN` on every attempt allowed.
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// The heap has no room for a request, a reply or a result. A request
    /// refused so is not sent; a reply that finds no room is skipped as it
    /// arrives (its request fails with this).
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Xen(e) => write!(f, "xenstore notify/wait failed: {e}"),
            XsError::Stalled { waits } => {
                write!(f, "xenstored did not answer in {waits} waits")
            }
            XsError::Corrupt(c) => write!(
                f,
                "xenstore {:?} ring indices out of range (cons={}, prod={})",
                c.ring, c.cons, c.prod
            ),
            XsError::Server(e) => write!(f, "xenstored refused: {e}"),
            XsError::ServerReported(e) => write!(f, "xenstored reports ring error {e}"),
            XsError::InvalidPath => f.write_str("invalid xenstore path"),
            XsError::InvalidValue => f.write_str("xenstore value or token contains NUL"),
            XsError::TooLong { len } => {
                write!(f, "xenstore request payload of {len} bytes is too long")
            }
            XsError::Oversized { req_id, len } => write!(
                f,
                "xenstore message req_id={req_id} announces {len} bytes (skipped)"
            ),
            XsError::UnexpectedReply { expected, got } => {
                write!(
                    f,
                    "xenstore reply of type {got} to a request of type {expected}"
                )
            }
            XsError::UnknownReqId { req_id, type_ } => {
                write!(f, "xenstore reply type={type_} for unknown req_id={req_id}")
            }
            XsError::Malformed(what) => write!(f, "malformed xenstore reply: {what}"),
            XsError::Parse(e) => write!(f, "xenstore value is not a decimal: {e:?}"),
            XsError::Contended { attempts } => {
                write!(f, "xenstore transaction conflicted {attempts} times")
            }
            XsError::OutOfMemory(e) => write!(f, "xenstore: {e}"),
        }
    }
}

impl From<CorruptIndices> for XsError {
    fn from(c: CorruptIndices) -> Self {
        XsError::Corrupt(c)
    }
}

impl From<OutOfMemory> for XsError {
    fn from(e: OutOfMemory) -> Self {
        XsError::OutOfMemory(e)
    }
}

/// A transaction's id; [`TxId::NONE`] is no transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TxId(pub u32);

impl TxId {
    /// Outside any transaction.
    pub const NONE: TxId = TxId(0);
}

/// A watch fired: `path` changed (or is the watch's own path: the event
/// every new watch gets at once); `token` is the one given to
/// [`XsClient::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed, relative if the watch's path was.
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// Watch events kept at most; beyond, the oldest is dropped and counted.
pub const MAX_QUEUED_EVENTS: usize = 128;
/// Requests given up on whose late replies are recognised and dropped.
const MAX_ABANDONED: usize = 16;

/// A message being received: header bytes, then payload bytes.
#[derive(Debug, Default)]
struct Rx {
    hdr_buf: [u8; XsdSockmsg::SIZE],
    hdr_got: usize,
    hdr: Option<XsdSockmsg>,
    body: Vec<u8>,
    body_got: usize,
    /// Bytes of an oversized message still to be discarded.
    skip: u32,
}

/// A synchronous xenstore client; see the [module](self) documentation.
///
/// `N` notifies xenstored through the event channel, `W` waits for it
/// (until the port is pending, or a timeout: a wait that brings nothing
/// counts towards the bound either way). Both get the port.
pub struct XsClient<N, W> {
    ring: XsRing,
    port: u32,
    notify: N,
    wait: W,
    max_waits: u32,
    next_req_id: u32,
    /// The request whose reply is still to come.
    awaiting: Option<u32>,
    abandoned: FixedVec<u32, MAX_ABANDONED>,
    /// Request bytes not yet in the ring (of a request given up half-way).
    backlog: VecDeque<u8>,
    rx: Rx,
    events: VecDeque<WatchEvent>,
    dropped_events: u64,
    /// Bytes moved on the ring since the last look.
    progress: bool,
}

impl<N, W> fmt::Debug for XsClient<N, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsClient")
            .field("ring", &self.ring)
            .field("port", &self.port)
            .field("max_waits", &self.max_waits)
            .field("queued_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

fn check_path(path: &str) -> Result<(), XsError> {
    let max = if path.starts_with('/') {
        wire::XENSTORE_ABS_PATH_MAX
    } else {
        wire::XENSTORE_REL_PATH_MAX
    };
    if path.is_empty() || path.len() > max || path.as_bytes().contains(&0) {
        return Err(XsError::InvalidPath);
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), XsError> {
    if value.contains(&0) {
        return Err(XsError::InvalidValue);
    }
    Ok(())
}

/// `parts` joined, each followed by a NUL unless it is the last and
/// `nul_last` is false.
fn payload(parts: &[&[u8]], nul_last: bool) -> Result<Vec<u8>, XsError> {
    let mut v = try_with_capacity(parts.iter().map(|p| p.len() + 1).sum(), "xenstore request")?;
    for (i, p) in parts.iter().enumerate() {
        // Within the capacity made above: no allocation.
        v.extend_from_slice(p);
        if nul_last || i + 1 < parts.len() {
            v.push(0);
        }
    }
    Ok(v)
}

/// `n` in decimal, in `buf`.
fn decimal(mut n: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Watch events' text on the heap.
const EVENT: &str = "xenstore watch event";

fn utf8(bytes: Vec<u8>, what: &'static str) -> Result<String, XsError> {
    String::from_utf8(bytes).map_err(|_| XsError::Malformed(what))
}

impl<N, W> XsClient<N, W>
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    /// A client on the ring page at `page`, notified through `port`. Up to
    /// `max_waits` calls of `wait` in a row in which xenstored moves neither
    /// of its indices are allowed before it counts as gone.
    ///
    /// # Safety
    /// As [`XsRing::new`]: `page` must point at the xenstore ring page (or a
    /// test's heap page), mapped readable and writable for as long as the
    /// client is used, and nothing else on this side may use the ring.
    pub unsafe fn new(
        page: NonNull<XenstoreDomainInterface>,
        port: u32,
        notify: N,
        wait: W,
        max_waits: u32,
    ) -> Self {
        XsClient {
            // SAFETY: the caller's contract is the ring's.
            ring: unsafe { XsRing::new(page) },
            port,
            notify,
            wait,
            max_waits,
            next_req_id: 1,
            awaiting: None,
            abandoned: FixedVec::new(0),
            backlog: VecDeque::new(),
            rx: Rx::default(),
            events: VecDeque::new(),
            dropped_events: 0,
            progress: false,
        }
    }

    /// The event channel port it notifies.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Watch events dropped: malformed, oversized, or beyond
    /// [`MAX_QUEUED_EVENTS`].
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The value at `path` (absolute, or relative to `/local/domain/<domid>`).
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.in_transaction(TxId::NONE).read(path)
    }

    /// The value at `path` as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        self.in_transaction(TxId::NONE).read_string(path)
    }

    /// The value at `path` as an unsigned decimal ([`parse_u64`]).
    pub fn read_u64(&mut self, path: &str) -> Result<u64, XsError> {
        self.in_transaction(TxId::NONE).read_u64(path)
    }

    /// Set `path` to `value` (made with its missing parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.in_transaction(TxId::NONE).write(path, value)
    }

    /// Make `path` (and its parents) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.in_transaction(TxId::NONE).mkdir(path)
    }

    /// Remove `path` and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.in_transaction(TxId::NONE).rm(path)
    }

    /// The names of `path`'s children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.in_transaction(TxId::NONE).directory(path)
    }

    /// This domain's id, from its own `domid` node.
    pub fn domid(&mut self) -> Result<DomId, XsError> {
        let v = self.read_u64("domid")?;
        match u16::try_from(v) {
            Ok(d) if d < DomId::SELF.0 => Ok(DomId(d)),
            _ => Err(XsError::Malformed("domid beyond the real domain ids")),
        }
    }

    /// The home of domain `domid` (`/local/domain/<domid>`), as xenstored
    /// names it.
    pub fn domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let mut digits = [0u8; 5];
        let p = payload(&[decimal(domid.0, &mut digits)], true)?;
        let mut r = self.request(TxId::NONE, msg_type::GET_DOMAIN_PATH, &p)?;
        if r.last() == Some(&0) {
            r.pop();
        }
        if r.is_empty() || r.contains(&0) {
            return Err(XsError::Malformed("domain path"));
        }
        utf8(r, "domain path is not UTF-8")
    }

    /// Watch `path` and everything below it; events carry `token`. xenstored
    /// fires the watch once at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        check_value(token.as_bytes())?;
        let p = payload(&[path.as_bytes(), token.as_bytes()], true)?;
        self.request(TxId::NONE, msg_type::WATCH, &p).map(drop)
    }

    /// Remove the watch of `path` with `token`. Its events already queued
    /// stay queued.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        check_value(token.as_bytes())?;
        let p = payload(&[path.as_bytes(), token.as_bytes()], true)?;
        self.request(TxId::NONE, msg_type::UNWATCH, &p).map(drop)
    }

    /// A queued watch event, after taking in what xenstored has sent; `None`
    /// if there is none. Never waits.
    pub fn poll_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        if let Some((h, _)) = self.pump()? {
            return Err(XsError::UnknownReqId {
                req_id: h.req_id,
                type_: h.type_,
            });
        }
        Ok(self.events.pop_front())
    }

    /// The next watch event, waiting for one; `None` after `max_waits` waits
    /// in a row in which xenstored moved nothing.
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        let mut idle = 0;
        loop {
            self.progress = false;
            if let Some(e) = self.poll_event()? {
                return Ok(Some(e));
            }
            match self.idle_wait(&mut idle) {
                Err(XsError::Stalled { .. }) => return Ok(None),
                r => r?,
            }
        }
    }

    /// Start a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let r = self.request(TxId::NONE, msg_type::TRANSACTION_START, b"\0")?;
        let digits = r.strip_suffix(&[0]).unwrap_or(&r);
        match parse_u64(digits).map(u32::try_from) {
            Ok(Ok(id)) if id != 0 => Ok(TxId(id)),
            _ => Err(XsError::Malformed("transaction id")),
        }
    }

    /// End transaction `tx`: commit it, or throw it away. A commit that
    /// conflicted with another writer is `Server(EAGAIN)`.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let p: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(tx, msg_type::TRANSACTION_END, p).map(drop)
    }

    /// Operations inside transaction `tx` (or outside any: [`TxId::NONE`]).
    pub fn in_transaction(&mut self, tx: TxId) -> Transaction<'_, N, W> {
        Transaction { client: self, tx }
    }

    /// Run `body` in a transaction and commit it; when the commit (or an
    /// operation of `body`) meets `EAGAIN`, start again, at most
    /// `max_attempts` times in all ([`XsError::Contended`] then). Any other
    /// error of `body` ends the transaction uncommitted and is returned.
    pub fn transaction<T>(
        &mut self,
        max_attempts: u32,
        mut body: impl FnMut(&mut Transaction<'_, N, W>) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..max_attempts {
            let tx = self.transaction_start()?;
            match body(&mut self.in_transaction(tx)) {
                Ok(v) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(v),
                    Err(XsError::Server(XsErrno::EAGAIN)) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    match self.transaction_end(tx, false) {
                        // xenstored's view of a transaction it refuses to end
                        // does not change the outcome.
                        Ok(()) | Err(XsError::Server(_)) => {}
                        Err(end) => return Err(end),
                    }
                    if e != XsError::Server(XsErrno::EAGAIN) {
                        return Err(e);
                    }
                }
            }
        }
        Err(XsError::Contended {
            attempts: max_attempts,
        })
    }

    /// Send a request and wait for its reply's payload.
    fn request(&mut self, tx: TxId, type_: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= XENSTORE_PAYLOAD_MAX)
            .ok_or(XsError::TooLong { len: payload.len() })?;
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        let hdr = XsdSockmsg {
            type_,
            req_id,
            tx_id: tx.0,
            len,
        };
        try_room_deque(
            &mut self.backlog,
            XsdSockmsg::SIZE + payload.len(),
            "xenstore request",
        )?;
        // Within the room made above: no allocation.
        self.backlog.extend(hdr.to_bytes());
        self.backlog.extend(payload);
        self.awaiting = Some(req_id);
        let r = self.flush().and_then(|()| self.await_reply(req_id, type_));
        if let Some(id) = self.awaiting.take() {
            // Given up before its reply came: drop the reply when it does.
            if self.abandoned.len() == MAX_ABANDONED {
                self.abandoned.remove(0);
            }
            // Cannot be full: the oldest made way.
            let _ = self.abandoned.push(id);
        }
        r
    }

    /// Put the backlog into the request ring, waiting for room.
    fn flush(&mut self) -> Result<(), XsError> {
        let mut idle = 0;
        while !self.backlog.is_empty() {
            let (front, _) = self.backlog.as_slices();
            let n = self.ring.write(front)?;
            if n > 0 {
                self.backlog.drain(..n);
                (self.notify)(self.port).map_err(XsError::Xen)?;
                idle = 0;
                continue;
            }
            // The ring is full. Take in what xenstored sent meanwhile (it may
            // be waiting for room in the reply ring).
            self.progress = false;
            if let Some((h, _)) = self.pump()? {
                return Err(XsError::UnknownReqId {
                    req_id: h.req_id,
                    type_: h.type_,
                });
            }
            self.idle_wait(&mut idle)?;
        }
        Ok(())
    }

    /// After a look at the ring that found nothing to return: go on at once
    /// if xenstored moved something (`idle` starts again), else wait once;
    /// [`XsError::Stalled`] once `max_waits` waits in a row moved nothing.
    fn idle_wait(&mut self, idle: &mut u32) -> Result<(), XsError> {
        if self.progress {
            *idle = 0;
            return Ok(());
        }
        if *idle == self.max_waits {
            return Err(XsError::Stalled { waits: *idle });
        }
        *idle = if self.wait_once()? { 0 } else { *idle + 1 };
        Ok(())
    }

    fn await_reply(&mut self, req_id: u32, type_: u32) -> Result<Vec<u8>, XsError> {
        let mut idle = 0;
        loop {
            self.progress = false;
            match self.pump() {
                Ok(Some((h, body))) => {
                    if h.req_id != req_id {
                        return Err(XsError::UnknownReqId {
                            req_id: h.req_id,
                            type_: h.type_,
                        });
                    }
                    self.awaiting = None;
                    return match h.type_ {
                        msg_type::ERROR => Err(XsError::Server(XsErrno::from_payload(&body))),
                        t if t == type_ => Ok(body),
                        got => Err(XsError::UnexpectedReply {
                            expected: type_,
                            got,
                        }),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, XsError::Oversized { req_id: r, .. } if r == req_id) {
                        // Our reply, being skipped.
                        self.awaiting = None;
                    }
                    return Err(e);
                }
            }
            self.idle_wait(&mut idle)?;
        }
    }

    /// One wait, unless xenstored reported a broken ring; whether xenstored
    /// moved one of its indices meanwhile (consumed requests or produced
    /// replies: it is alive, the wait was not in vain).
    fn wait_once(&mut self) -> Result<bool, XsError> {
        let (features, _, error) = self.ring.status();
        if features & wire::XENSTORE_SERVER_FEATURE_ERROR != 0 && error != wire::XENSTORE_ERROR_NONE
        {
            return Err(XsError::ServerReported(error));
        }
        let before = self.ring.peer_indices();
        (self.wait)(self.port).map_err(XsError::Xen)?;
        Ok(self.ring.peer_indices() != before)
    }

    /// Take in what waits in the reply ring, up to the first complete
    /// message that is neither a watch event (queued) nor a late reply to a
    /// request given up on (dropped); notify xenstored if anything was read.
    fn pump(&mut self) -> Result<Option<(XsdSockmsg, Vec<u8>)>, XsError> {
        let mut consumed = false;
        let r = self.pump_inner(&mut consumed);
        if consumed {
            self.progress = true;
            (self.notify)(self.port).map_err(XsError::Xen)?;
        }
        r
    }

    fn pump_inner(
        &mut self,
        consumed: &mut bool,
    ) -> Result<Option<(XsdSockmsg, Vec<u8>)>, XsError> {
        loop {
            if self.rx.skip > 0 {
                let mut scratch = [0u8; 256];
                let want = scratch.len().min(self.rx.skip as usize);
                let n = self.ring.read(&mut scratch[..want])?;
                if n == 0 {
                    return Ok(None);
                }
                *consumed = true;
                self.rx.skip -= n as u32;
                continue;
            }
            let Some(h) = self.rx.hdr else {
                let got = self.rx.hdr_got;
                let n = self.ring.read(&mut self.rx.hdr_buf[got..])?;
                if n == 0 {
                    return Ok(None);
                }
                *consumed = true;
                self.rx.hdr_got += n;
                if self.rx.hdr_got < XsdSockmsg::SIZE {
                    continue;
                }
                self.rx.hdr_got = 0;
                let h = XsdSockmsg::from_bytes(&self.rx.hdr_buf);
                if h.len > XENSTORE_PAYLOAD_MAX {
                    self.rx.skip = h.len;
                    if h.type_ == msg_type::WATCH_EVENT {
                        self.dropped_events += 1;
                    } else if !self.forget_abandoned(h.req_id) {
                        return Err(XsError::Oversized {
                            req_id: h.req_id,
                            len: h.len,
                        });
                    }
                    continue;
                }
                self.rx.body.clear();
                if self
                    .rx
                    .body
                    .try_room(h.len as usize, "xenstore reply")
                    .is_err()
                {
                    // No room: skip it as it arrives, as an oversized one.
                    self.rx.skip = h.len;
                    if h.type_ == msg_type::WATCH_EVENT {
                        self.dropped_events += 1;
                    } else if !self.forget_abandoned(h.req_id) {
                        if self.awaiting == Some(h.req_id) {
                            // Its request ends here: nothing to drop later.
                            self.awaiting = None;
                        }
                        return Err(XsError::OutOfMemory(OutOfMemory::of::<u8>(
                            "xenstore reply",
                            h.len as usize,
                        )));
                    }
                    continue;
                }
                // Within the room made above: no allocation.
                self.rx.body.resize(h.len as usize, 0);
                self.rx.hdr = Some(h);
                self.rx.body_got = 0;
                continue;
            };
            if self.rx.body_got < self.rx.body.len() {
                let got = self.rx.body_got;
                let n = self.ring.read(&mut self.rx.body[got..])?;
                if n == 0 {
                    return Ok(None);
                }
                *consumed = true;
                self.rx.body_got += n;
                continue;
            }
            self.rx.hdr = None;
            let body = core::mem::take(&mut self.rx.body);
            if h.type_ == msg_type::WATCH_EVENT {
                self.queue_event(&body);
            } else if !self.forget_abandoned(h.req_id) {
                return Ok(Some((h, body)));
            }
        }
    }

    /// Whether `req_id` was given up on (and forget it: one reply each).
    fn forget_abandoned(&mut self, req_id: u32) -> bool {
        match self.abandoned.iter().position(|&r| r == req_id) {
            Some(i) => {
                self.abandoned.remove(i);
                true
            }
            None => false,
        }
    }

    fn queue_event(&mut self, body: &[u8]) {
        let mut parts = wire::split_strings(body);
        let event = match (parts.next(), parts.next()) {
            (Some(path), Some(token)) => {
                match (core::str::from_utf8(path), core::str::from_utf8(token)) {
                    // No room for it: dropped and counted, like one beyond
                    // the queue's bound.
                    (Ok(path), Ok(token)) if !path.is_empty() => {
                        match (try_string(path, EVENT), try_string(token, EVENT)) {
                            (Ok(path), Ok(token)) => Some(WatchEvent { path, token }),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(event) = event else {
            self.dropped_events += 1;
            return;
        };
        // The same event right behind itself says nothing new: keep one.
        if self.events.back() == Some(&event) {
            return;
        }
        if self.events.len() == MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        if try_room_deque(&mut self.events, 1, EVENT).is_err() {
            self.dropped_events += 1;
            return;
        }
        // Within the room made above: no allocation.
        self.events.push_back(event);
    }
}

/// Operations in one transaction (or in none), from
/// [`XsClient::in_transaction`] or [`XsClient::transaction`].
pub struct Transaction<'a, N, W> {
    client: &'a mut XsClient<N, W>,
    tx: TxId,
}

impl<N, W> Transaction<'_, N, W>
where
    N: FnMut(u32) -> Result<(), XenError>,
    W: FnMut(u32) -> Result<(), XenError>,
{
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        self.tx
    }

    fn path_request(&mut self, type_: u32, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(path)?;
        let p = payload(&[path.as_bytes()], true)?;
        self.client.request(self.tx, type_, &p)
    }

    /// See [`XsClient::read`].
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.path_request(msg_type::READ, path)
    }

    /// See [`XsClient::read_string`].
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        utf8(self.read(path)?, "value is not UTF-8")
    }

    /// See [`XsClient::read_u64`].
    pub fn read_u64(&mut self, path: &str) -> Result<u64, XsError> {
        parse_u64(&self.read(path)?).map_err(XsError::Parse)
    }

    /// See [`XsClient::write`]. Values with NUL bytes are refused: the
    /// protocol allows them, but xenstore values are text by convention and
    /// C readers stop at the first NUL.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        check_value(value)?;
        let p = payload(&[path.as_bytes(), value], false)?;
        self.client.request(self.tx, msg_type::WRITE, &p).map(drop)
    }

    /// See [`XsClient::mkdir`].
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.path_request(msg_type::MKDIR, path).map(drop)
    }

    /// See [`XsClient::rm`].
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.path_request(msg_type::RM, path).map(drop)
    }

    /// See [`XsClient::directory`].
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        const NAMES: &str = "xenstore directory";
        let r = self.path_request(msg_type::DIRECTORY, path)?;
        let mut out = Vec::new();
        for n in wire::split_strings(&r).filter(|n| !n.is_empty()) {
            let name = core::str::from_utf8(n)
                .map_err(|_| XsError::Malformed("child name is not UTF-8"))?;
            out.try_push(try_string(name, NAMES)?, NAMES)?;
        }
        Ok(out)
    }
}
