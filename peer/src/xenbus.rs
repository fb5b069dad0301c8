//! A xenstore client over Linux's `/dev/xen/xenbus` (dom0's xenbus_dev):
//! whole `xsd_sockmsg` messages written and read on one file, with watch
//! events queued as they arrive between replies. The wire header is
//! xenmem's own ([`xenmem::xenstore::wire`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};

use xenmem::xenstore::wire::{msg_type, XsdSockmsg};

/// An open xenbus connection.
pub struct Xenbus {
    file: File,
    next_req: u32,
    events: VecDeque<(String, String)>,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Xenbus {
    /// Open `/dev/xen/xenbus`.
    pub fn open() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/xenbus")?;
        Ok(Xenbus {
            file,
            next_req: 1,
            events: VecDeque::new(),
        })
    }

    fn read_msg(&mut self) -> io::Result<(XsdSockmsg, Vec<u8>)> {
        let mut h = [0u8; XsdSockmsg::SIZE];
        self.file.read_exact(&mut h)?;
        let h = XsdSockmsg::from_bytes(&h);
        if h.len > 4096 {
            return Err(bad(format!("a reply of {} bytes", h.len)));
        }
        let mut body = vec![0u8; h.len as usize];
        self.file.read_exact(&mut body)?;
        Ok((h, body))
    }

    /// One request; the reply's payload, or the store's error (`ENOENT`...)
    /// as an `io::Error` whose text is the errno's name.
    fn request(&mut self, ty: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let h = XsdSockmsg {
            type_: ty,
            req_id,
            tx_id: 0,
            len: u32::try_from(payload.len()).map_err(|_| bad("payload".into()))?,
        };
        let mut m = h.to_bytes().to_vec();
        m.extend_from_slice(payload);
        self.file.write_all(&m)?;
        loop {
            let (r, body) = self.read_msg()?;
            if r.type_ == msg_type::WATCH_EVENT {
                self.queue_event(&body);
                continue;
            }
            if r.type_ == msg_type::ERROR {
                let name = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_string();
                let kind = if name == "ENOENT" {
                    io::ErrorKind::NotFound
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(kind, name));
            }
            if r.req_id != req_id || r.type_ != ty {
                return Err(bad(format!(
                    "reply type {} id {} to request type {ty} id {req_id}",
                    r.type_, r.req_id
                )));
            }
            return Ok(body);
        }
    }

    fn queue_event(&mut self, body: &[u8]) {
        let mut parts = body
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let path = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default();
        self.events.push_back((path, token));
    }

    /// The value at `path`, `None` if there is none.
    pub fn read(&mut self, path: &str) -> io::Result<Option<String>> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        match self.request(msg_type::READ, &p) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write `value` at `path`.
    pub fn write(&mut self, path: &str, value: &str) -> io::Result<()> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        self.request(msg_type::WRITE, &p).map(drop)
    }

    /// Watch `path` (and below) with `token`; the store fires it once at
    /// once.
    pub fn watch(&mut self, path: &str, token: &str) -> io::Result<()> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.request(msg_type::WATCH, &p).map(drop)
    }

    /// The next watch event (path, token), blocking until one comes.
    pub fn next_event(&mut self) -> io::Result<(String, String)> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let (r, body) = self.read_msg()?;
            if r.type_ == msg_type::WATCH_EVENT {
                self.queue_event(&body);
            }
        }
    }
}
