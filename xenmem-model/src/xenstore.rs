//! A model of xenstored's side of a domain's ring, for host tests.
//!
//! Written from `docs/misc/xenstore.txt` and the behaviour of C xenstored
//! (`tools/xenstore/xenstored_core.c`, `_watch.c`, `_transaction.c`): a
//! tree of nodes (every existing path's parents exist, every node has a
//! value, possibly empty), relative paths resolved under
//! `/local/domain/<domid>`, transactions on a copy of the store that fail
//! with `EAGAIN` at commit when anything was written meanwhile, and watches
//! that fire once when set and on every change at or below their path (for
//! a removed parent, with the watch's own path). Changes made by "another
//! client" come in through [`XsModel::external_write`] and
//! [`XsModel::external_rm`].
//!
//! [`XsModel::step`] is one turn of the daemon: take in request bytes,
//! answer the complete requests, put reply bytes into the ring. In tests the
//! client's wait closure calls it. [`Faults`] makes it misbehave: replies in
//! small pieces, a request ring read slowly, silence, an `XS_ERROR` instead of
//! the next answer, a watch event just before the next reply, a reply with
//! another type or `req_id`; [`XsModel::inject`] puts any bytes into the
//! reply stream and [`XsModel::set_rsp_prod`] corrupts an index.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ptr::{addr_of, addr_of_mut, NonNull};

use xenmem::xenstore::wire::{
    mask_xenstore_idx, msg_type, XenstoreDomainInterface, XsdSockmsg, XENSTORE_PAYLOAD_MAX,
    XENSTORE_RING_SIZE,
};

/// Ways to make the model misbehave; all off by default.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// At most this many reply bytes per step (0: as many as fit).
    pub rsp_chunk: usize,
    /// At most this many request bytes taken per step (0: all there are).
    pub req_chunk: usize,
    /// Do nothing at all (xenstored has gone away).
    pub silent: bool,
    /// Answer the next request with `XS_ERROR` and this name instead.
    pub error_next: Option<&'static str>,
    /// Send this watch event (path, token) just before the next reply.
    pub event_before_next_reply: Option<(String, String)>,
    /// Give the next reply this type instead of the request's.
    pub type_next: Option<u32>,
    /// Give the next reply this `req_id` instead of the request's.
    pub req_id_next: Option<u32>,
    /// Act only in steps after [`XsModel::notify`] (as xenstored, which
    /// looks at the ring when its event channel fires).
    pub only_when_notified: bool,
}

#[derive(Clone, Debug)]
struct Watch {
    /// As the client gave it (relative or absolute).
    wpath: String,
    /// Resolved.
    abs: String,
    token: String,
}

#[derive(Clone, Debug)]
struct Tx {
    store: BTreeMap<String, Vec<u8>>,
    generation: u64,
    changed: Vec<(String, bool)>,
}

/// xenstored's side of one domain's ring, with the store behind it.
pub struct XsModel {
    page: NonNull<XenstoreDomainInterface>,
    domid: u16,
    store: BTreeMap<String, Vec<u8>>,
    /// Bumped by every committed change.
    generation: u64,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    watches: Vec<Watch>,
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
    /// The misbehaviour wanted.
    pub faults: Faults,
    /// The client broke the protocol (a request longer than
    /// `XENSTORE_PAYLOAD_MAX`, corrupt request indices): xenstored would drop
    /// the connection, the model stops answering.
    pub killed: bool,
    /// Every request handled, in order.
    pub requests: Vec<(XsdSockmsg, Vec<u8>)>,
    /// Steps taken.
    pub steps: u64,
    /// Notified since the last step.
    kicked: bool,
}

impl core::fmt::Debug for XsModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XsModel")
            .field("domid", &self.domid)
            .field("nodes", &self.store.len())
            .field("killed", &self.killed)
            .finish_non_exhaustive()
    }
}

fn is_child(child: &str, parent: &str) -> bool {
    child == parent
        || parent == "/"
        || (child.len() > parent.len()
            && child.starts_with(parent)
            && child.as_bytes()[parent.len()] == b'/')
}

fn parent_of(abs: &str) -> Option<&str> {
    match abs.rfind('/') {
        Some(0) if abs.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&abs[..i]),
        _ => None,
    }
}

impl Drop for XsModel {
    fn drop(&mut self) {
        // SAFETY: `page` came from `Box::into_raw` in `new` and is freed
        // only here; the client using it must be gone (contract of `page`).
        drop(unsafe { Box::from_raw(self.page.as_ptr()) });
    }
}

impl XsModel {
    /// A store for domain `domid` (its home with `domid`, `name` and
    /// `memory/target` = `65536`) on a fresh ring page whose four indices
    /// start at `start_index` (near `u32::MAX` to make them wrap).
    pub fn new(domid: u16, start_index: u32) -> XsModel {
        let page = Box::new(XenstoreDomainInterface {
            req: [0; XENSTORE_RING_SIZE as usize],
            rsp: [0; XENSTORE_RING_SIZE as usize],
            req_cons: start_index,
            req_prod: start_index,
            rsp_cons: start_index,
            rsp_prod: start_index,
            server_features: 0,
            connection: 0,
            error: 0,
        });
        let mut m = XsModel {
            page: NonNull::from(Box::leak(page)),
            domid,
            store: BTreeMap::new(),
            generation: 0,
            txs: BTreeMap::new(),
            next_tx: 1,
            watches: Vec::new(),
            inbuf: Vec::new(),
            out: VecDeque::new(),
            faults: Faults::default(),
            killed: false,
            requests: Vec::new(),
            steps: 0,
            kicked: false,
        };
        m.store.insert("/".into(), Vec::new());
        let home = m.home();
        write_node(
            &mut m.store,
            &format!("{home}/domid"),
            domid.to_string().as_bytes(),
        );
        write_node(&mut m.store, &format!("{home}/name"), b"xenmem-agent");
        write_node(&mut m.store, &format!("{home}/memory/target"), b"65536");
        m
    }

    /// The ring page, for the client. It stays valid until the model is
    /// dropped; drop the client first.
    pub fn page(&self) -> NonNull<XenstoreDomainInterface> {
        self.page
    }

    /// `/local/domain/<domid>`.
    pub fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// `path` made absolute (relative paths are under [`XsModel::home`]).
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') || path.starts_with('@') {
            path.into()
        } else {
            format!("{}/{path}", self.home())
        }
    }

    /// The value at `path`, if the node exists.
    pub fn value(&self, path: &str) -> Option<&[u8]> {
        self.store.get(&self.absolute(path)).map(Vec::as_slice)
    }

    /// The absolute paths of every node, in order.
    pub fn paths(&self) -> Vec<String> {
        self.store.keys().cloned().collect()
    }

    /// Another client writes `path` (as [`msg_type::WRITE`], outside any
    /// transaction): watches fire, open transactions will conflict.
    pub fn external_write(&mut self, path: &str, value: &[u8]) {
        let abs = self.absolute(path);
        write_node(&mut self.store, &abs, value);
        self.generation += 1;
        self.fire(&abs, false);
    }

    /// Another client removes `path` and its children.
    pub fn external_rm(&mut self, path: &str) {
        let abs = self.absolute(path);
        if rm_node(&mut self.store, &abs) == Ok(true) {
            self.generation += 1;
            self.fire(&abs, true);
        }
    }

    /// Put raw bytes into the reply stream (after what is queued).
    pub fn inject(&mut self, bytes: &[u8]) {
        self.out.extend(bytes);
    }

    /// Queue a whole message: header with `type_`, `req_id`, `len`, payload.
    pub fn inject_message(&mut self, type_: u32, req_id: u32, payload: &[u8]) {
        let h = XsdSockmsg {
            type_,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        self.out.extend(h.to_bytes());
        self.out.extend(payload);
    }

    /// Reply bytes queued and not yet in the ring.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Overwrite `rsp_prod` (to corrupt it).
    pub fn set_rsp_prod(&mut self, v: u32) {
        // SAFETY: the page is alive while the model is (see `page`).
        unsafe { addr_of_mut!((*self.page.as_ptr()).rsp_prod).write_volatile(v) };
    }

    /// Overwrite `req_cons` (to corrupt it).
    pub fn set_req_cons(&mut self, v: u32) {
        // SAFETY: as in `set_rsp_prod`.
        unsafe { addr_of_mut!((*self.page.as_ptr()).req_cons).write_volatile(v) };
    }

    /// Set `server_features` and `error` of the page.
    pub fn set_error(&mut self, features: u32, error: u32) {
        let p = self.page.as_ptr();
        // SAFETY: as in `set_rsp_prod`.
        unsafe {
            addr_of_mut!((*p).server_features).write_volatile(features);
            addr_of_mut!((*p).error).write_volatile(error);
        }
    }

    /// `(req_cons, req_prod, rsp_cons, rsp_prod)`.
    pub fn indices(&self) -> (u32, u32, u32, u32) {
        let p = self.page.as_ptr();
        // SAFETY: as in `set_rsp_prod`.
        unsafe {
            (
                addr_of!((*p).req_cons).read_volatile(),
                addr_of!((*p).req_prod).read_volatile(),
                addr_of!((*p).rsp_cons).read_volatile(),
                addr_of!((*p).rsp_prod).read_volatile(),
            )
        }
    }

    /// The guest notified the event channel.
    pub fn notify(&mut self) {
        self.kicked = true;
    }

    /// One turn of the daemon: take in requests, answer the complete ones,
    /// put replies into the ring.
    pub fn step(&mut self) {
        self.steps += 1;
        let kicked = core::mem::take(&mut self.kicked);
        if self.faults.silent || self.killed || (self.faults.only_when_notified && !kicked) {
            return;
        }
        let p = self.page.as_ptr();
        let (req_cons, req_prod, rsp_cons, rsp_prod) = self.indices();
        let pending = req_prod.wrapping_sub(req_cons);
        if pending > XENSTORE_RING_SIZE {
            self.killed = true;
            return;
        }
        let mut n = pending as usize;
        if self.faults.req_chunk != 0 {
            n = n.min(self.faults.req_chunk);
        }
        for i in 0..n {
            let slot = mask_xenstore_idx(req_cons.wrapping_add(i as u32));
            // SAFETY: slot < ring size; the page is alive.
            self.inbuf
                .push(unsafe { addr_of!((*p).req[slot]).read_volatile() });
        }
        // SAFETY: as above.
        unsafe { addr_of_mut!((*p).req_cons).write_volatile(req_cons.wrapping_add(n as u32)) };

        while self.inbuf.len() >= XsdSockmsg::SIZE {
            let mut hb = [0u8; XsdSockmsg::SIZE];
            hb.copy_from_slice(&self.inbuf[..XsdSockmsg::SIZE]);
            let h = XsdSockmsg::from_bytes(&hb);
            if h.len > XENSTORE_PAYLOAD_MAX {
                self.killed = true;
                return;
            }
            let end = XsdSockmsg::SIZE + h.len as usize;
            if self.inbuf.len() < end {
                break;
            }
            let body = self.inbuf[XsdSockmsg::SIZE..end].to_vec();
            self.inbuf.drain(..end);
            self.requests.push((h, body.clone()));
            self.handle(h, &body);
        }

        let used = rsp_prod.wrapping_sub(rsp_cons);
        if used > XENSTORE_RING_SIZE {
            return; // the test corrupted it: write nothing
        }
        let mut n = self.out.len().min((XENSTORE_RING_SIZE - used) as usize);
        if self.faults.rsp_chunk != 0 {
            n = n.min(self.faults.rsp_chunk);
        }
        for i in 0..n {
            let slot = mask_xenstore_idx(rsp_prod.wrapping_add(i as u32));
            let b = self.out.pop_front().unwrap_or(0);
            // SAFETY: slot < ring size; the page is alive.
            unsafe { addr_of_mut!((*p).rsp[slot]).write_volatile(b) };
        }
        // SAFETY: as above.
        unsafe { addr_of_mut!((*p).rsp_prod).write_volatile(rsp_prod.wrapping_add(n as u32)) };
        // xenstored goes back to sleep only when it has nothing left to read
        // and its replies are all out or the ring is full; otherwise it
        // carries on without being notified again.
        let (req_cons, req_prod, rsp_cons, rsp_prod) = self.indices();
        let ring_full = rsp_prod.wrapping_sub(rsp_cons) == XENSTORE_RING_SIZE;
        if req_cons != req_prod || (!self.out.is_empty() && !ring_full) {
            self.kicked = true;
        }
    }

    fn reply(&mut self, req: XsdSockmsg, type_: u32, payload: &[u8]) {
        if let Some((path, token)) = self.faults.event_before_next_reply.take() {
            self.event(&path, &token);
        }
        let h = XsdSockmsg {
            type_: self.faults.type_next.take().unwrap_or(type_),
            req_id: self.faults.req_id_next.take().unwrap_or(req.req_id),
            tx_id: req.tx_id,
            len: payload.len() as u32,
        };
        self.out.extend(h.to_bytes());
        self.out.extend(payload);
    }

    fn error(&mut self, req: XsdSockmsg, name: &str) {
        let mut p = Vec::from(name.as_bytes());
        p.push(0);
        self.reply(req, msg_type::ERROR, &p);
    }

    fn event(&mut self, path: &str, token: &str) {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.inject_message(msg_type::WATCH_EVENT, 0, &p);
    }

    /// Queue the events of a change at `abs` (`removed`: `abs` and its
    /// children went).
    fn fire(&mut self, abs: &str, removed: bool) {
        let home = self.home();
        let mut events = Vec::new();
        for w in &self.watches {
            let path = if is_child(abs, &w.abs) {
                if w.wpath.starts_with('/') {
                    abs.to_string()
                } else {
                    abs.strip_prefix(&home)
                        .and_then(|r| r.strip_prefix('/'))
                        .unwrap_or(abs)
                        .to_string()
                }
            } else if removed && is_child(&w.abs, abs) {
                w.wpath.clone()
            } else {
                continue;
            };
            events.push((path, w.token.clone()));
        }
        for (path, token) in events {
            self.event(&path, &token);
        }
    }

    fn resolve(&self, path: &[u8]) -> Option<String> {
        let path = core::str::from_utf8(path).ok()?;
        let ok_chars = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
        if path.is_empty()
            || !ok_chars
            || path.contains("//")
            || (path.len() > 1 && path.ends_with('/'))
        {
            return None;
        }
        Some(self.absolute(path))
    }

    fn handle(&mut self, h: XsdSockmsg, body: &[u8]) {
        if let Some(name) = self.faults.error_next.take() {
            return self.error(h, name);
        }
        let mut parts = body.split(|&b| b == 0);
        let first = parts.next().unwrap_or(&[]);
        match h.type_ {
            msg_type::TRANSACTION_START => {
                if h.tx_id != 0 {
                    return self.error(h, "EINVAL");
                }
                let id = self.next_tx;
                self.next_tx += 1;
                self.txs.insert(
                    id,
                    Tx {
                        store: self.store.clone(),
                        generation: self.generation,
                        changed: Vec::new(),
                    },
                );
                let r = format!("{id}\0");
                return self.reply(h, h.type_, r.as_bytes());
            }
            msg_type::TRANSACTION_END => {
                let Some(tx) = self.txs.remove(&h.tx_id) else {
                    return self.error(h, "ENOENT");
                };
                return match first {
                    b"F" => self.reply(h, h.type_, b"OK\0"),
                    b"T" if tx.generation != self.generation => self.error(h, "EAGAIN"),
                    b"T" => {
                        self.store = tx.store;
                        if !tx.changed.is_empty() {
                            self.generation += 1;
                        }
                        for (abs, removed) in &tx.changed {
                            self.fire(abs, *removed);
                        }
                        self.reply(h, h.type_, b"OK\0")
                    }
                    _ => self.error(h, "EINVAL"),
                };
            }
            msg_type::WATCH | msg_type::UNWATCH => {
                let token = parts.next().unwrap_or(&[]);
                let (Some(abs), Ok(token)) = (self.resolve(first), core::str::from_utf8(token))
                else {
                    return self.error(h, "EINVAL");
                };
                let wpath = String::from_utf8_lossy(first).into_owned();
                let at = self
                    .watches
                    .iter()
                    .position(|w| w.wpath == wpath && w.token == token);
                if h.type_ == msg_type::UNWATCH {
                    return match at {
                        Some(i) => {
                            self.watches.remove(i);
                            self.reply(h, h.type_, b"OK\0")
                        }
                        None => self.error(h, "ENOENT"),
                    };
                }
                if at.is_some() {
                    return self.error(h, "EEXIST");
                }
                let token = token.to_string();
                self.watches.push(Watch {
                    wpath: wpath.clone(),
                    abs,
                    token: token.clone(),
                });
                self.reply(h, h.type_, b"OK\0");
                return self.event(&wpath, &token);
            }
            msg_type::GET_DOMAIN_PATH => {
                let r = format!("/local/domain/{}\0", String::from_utf8_lossy(first));
                return self.reply(h, h.type_, r.as_bytes());
            }
            msg_type::READ
            | msg_type::WRITE
            | msg_type::MKDIR
            | msg_type::RM
            | msg_type::DIRECTORY => {}
            _ => return self.error(h, "ENOSYS"),
        }

        let Some(abs) = self.resolve(first) else {
            return self.error(h, "EINVAL");
        };
        let in_tx = h.tx_id != 0;
        if in_tx && !self.txs.contains_key(&h.tx_id) {
            return self.error(h, "ENOENT");
        }
        let store = match self.txs.get_mut(&h.tx_id) {
            Some(tx) => &mut tx.store,
            None => &mut self.store,
        };
        let result: Result<(Vec<u8>, Option<bool>), &str> = match h.type_ {
            msg_type::READ => store.get(&abs).cloned().map(|v| (v, None)).ok_or("ENOENT"),
            msg_type::DIRECTORY => {
                if store.contains_key(&abs) {
                    let mut r = Vec::new();
                    let prefix = if abs == "/" {
                        "/".into()
                    } else {
                        format!("{abs}/")
                    };
                    for k in store.keys() {
                        if let Some(name) = k.strip_prefix(&prefix) {
                            if !name.is_empty() && !name.contains('/') {
                                r.extend_from_slice(name.as_bytes());
                                r.push(0);
                            }
                        }
                    }
                    Ok((r, None))
                } else {
                    Err("ENOENT")
                }
            }
            msg_type::WRITE => {
                let value = body.get(first.len() + 1..).unwrap_or(&[]);
                write_node(store, &abs, value);
                Ok((b"OK\0".to_vec(), Some(false)))
            }
            msg_type::MKDIR => {
                if !store.contains_key(&abs) {
                    write_node(store, &abs, &[]);
                }
                Ok((b"OK\0".to_vec(), Some(false)))
            }
            _ => rm_node(store, &abs).map(|existed| (b"OK\0".to_vec(), existed.then_some(true))),
        };
        match result {
            Err(e) => self.error(h, e),
            Ok((r, change)) => {
                if let Some(removed) = change {
                    match self.txs.get_mut(&h.tx_id) {
                        Some(tx) => tx.changed.push((abs, removed)),
                        None => {
                            self.generation += 1;
                            // Events before the reply, as C xenstored.
                            self.fire(&abs, removed);
                        }
                    }
                }
                self.reply(h, h.type_, &r)
            }
        }
    }
}

/// Set `abs` to `value`, making missing parents with empty values.
fn write_node(store: &mut BTreeMap<String, Vec<u8>>, abs: &str, value: &[u8]) {
    let mut p = parent_of(abs);
    while let Some(parent) = p {
        store.entry(parent.into()).or_default();
        p = parent_of(parent);
    }
    store.insert(abs.into(), value.to_vec());
}

/// Remove `abs` and its children (`Ok(true)`); a missing node is fine if
/// its parent exists (`Ok(false)`).
fn rm_node(store: &mut BTreeMap<String, Vec<u8>>, abs: &str) -> Result<bool, &'static str> {
    if abs == "/" {
        return Err("EINVAL");
    }
    if !store.contains_key(abs) {
        return match parent_of(abs) {
            Some(parent) if store.contains_key(parent) => Ok(false),
            _ => Err("ENOENT"),
        };
    }
    store.retain(|k, _| !is_child(k, abs));
    Ok(true)
}
