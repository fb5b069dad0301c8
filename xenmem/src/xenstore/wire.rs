//! The xenstore wire protocol, from Xen 4.17's `public/io/xs_wire.h` and
//! `docs/misc/xenstore.txt`.
//!
//! Every message, in either direction, is an [`XsdSockmsg`] header followed
//! by `len` bytes of payload (at most [`XENSTORE_PAYLOAD_MAX`]). The shared
//! page is an [`XenstoreDomainInterface`]: two 1 KiB byte rings with
//! free-running 32-bit indices; a byte at index `i` sits at slot
//! [`mask_xenstore_idx`]`(i)`.

use core::fmt;
use core::mem::{offset_of, size_of};

/// Message types (`enum xsd_sockmsg_type`). Plain `u32` constants rather
/// than an enum: a type read from the ring may be any value.
pub mod msg_type {
    /// `XS_CONTROL` (also `XS_DEBUG`).
    pub const CONTROL: u32 = 0;
    /// `XS_DIRECTORY`: the children of a node.
    pub const DIRECTORY: u32 = 1;
    /// `XS_READ`: a node's value.
    pub const READ: u32 = 2;
    /// `XS_GET_PERMS`.
    pub const GET_PERMS: u32 = 3;
    /// `XS_WATCH`: register a watch.
    pub const WATCH: u32 = 4;
    /// `XS_UNWATCH`: remove a watch.
    pub const UNWATCH: u32 = 5;
    /// `XS_TRANSACTION_START`.
    pub const TRANSACTION_START: u32 = 6;
    /// `XS_TRANSACTION_END`.
    pub const TRANSACTION_END: u32 = 7;
    /// `XS_INTRODUCE` (dom0 only).
    pub const INTRODUCE: u32 = 8;
    /// `XS_RELEASE` (dom0 only).
    pub const RELEASE: u32 = 9;
    /// `XS_GET_DOMAIN_PATH`.
    pub const GET_DOMAIN_PATH: u32 = 10;
    /// `XS_WRITE`.
    pub const WRITE: u32 = 11;
    /// `XS_MKDIR`.
    pub const MKDIR: u32 = 12;
    /// `XS_RM`.
    pub const RM: u32 = 13;
    /// `XS_SET_PERMS`.
    pub const SET_PERMS: u32 = 14;
    /// `XS_WATCH_EVENT`: unsolicited, `req_id` and `tx_id` 0.
    pub const WATCH_EVENT: u32 = 15;
    /// `XS_ERROR`: the reply to a failed request; the payload names the errno.
    pub const ERROR: u32 = 16;
    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    /// `XS_RESUME`.
    pub const RESUME: u32 = 18;
    /// `XS_SET_TARGET`.
    pub const SET_TARGET: u32 = 19;
    /// `XS_RESET_WATCHES` (`XS_SET_TARGET + 2`: `XS_RESTRICT`, 20, was removed).
    pub const RESET_WATCHES: u32 = 21;
    /// `XS_DIRECTORY_PART`.
    pub const DIRECTORY_PART: u32 = 22;
    /// `XS_INVALID`: guaranteed never to be a valid type.
    pub const INVALID: u32 = 0xffff;
}

/// `XENSTORE_RING_SIZE`: bytes in each of the two rings.
pub const XENSTORE_RING_SIZE: u32 = 1024;
/// `XENSTORE_PAYLOAD_MAX`: the most payload a message may carry, either way.
/// xenstored drops a client's connection that exceeds it.
pub const XENSTORE_PAYLOAD_MAX: u32 = 4096;
/// `XENSTORE_ABS_PATH_MAX`: the longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: the longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field is meaningful.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`: the steady state of `connection`.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`: a reconnect is in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE`.
pub const XENSTORE_ERROR_NONE: u32 = 0;

/// `MASK_XENSTORE_IDX`: the slot of a free-running ring index.
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    (idx & (XENSTORE_RING_SIZE - 1)) as usize
}

/// `struct xsd_sockmsg`: the header of every message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct XsdSockmsg {
    /// `type`: one of [`msg_type`].
    pub type_: u32,
    /// `req_id`: chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// `tx_id`: the transaction, 0 for none.
    pub tx_id: u32,
    /// `len`: payload bytes that follow the header.
    pub len: u32,
}

const _: () = {
    assert!(size_of::<XsdSockmsg>() == 16);
    assert!(offset_of!(XsdSockmsg, type_) == 0);
    assert!(offset_of!(XsdSockmsg, req_id) == 4);
    assert!(offset_of!(XsdSockmsg, tx_id) == 8);
    assert!(offset_of!(XsdSockmsg, len) == 12);
};

impl XsdSockmsg {
    /// Bytes of a header on the wire.
    pub const SIZE: usize = 16;

    /// The header as it travels: four native-endian `u32`s (the page is
    /// shared between domains of the same architecture).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        for (i, v) in [self.type_, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// The header from its 16 bytes.
    pub fn from_bytes(b: &[u8; 16]) -> XsdSockmsg {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        XsdSockmsg {
            type_: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }
}

/// `struct xenstore_domain_interface`: the ring page (Xen 4.17's layout,
/// with the `error` field; the rest of the 4 KiB page is unused).
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to xenstored: the guest produces.
    pub req: [u8; XENSTORE_RING_SIZE as usize],
    /// Replies and watch events: xenstored produces.
    pub rsp: [u8; XENSTORE_RING_SIZE as usize],
    /// `req_cons`: advanced by xenstored.
    pub req_cons: u32,
    /// `req_prod`: advanced by the guest.
    pub req_prod: u32,
    /// `rsp_cons`: advanced by the guest.
    pub rsp_cons: u32,
    /// `rsp_prod`: advanced by xenstored.
    pub rsp_prod: u32,
    /// `server_features`: `XENSTORE_SERVER_FEATURE_*` bits.
    pub server_features: u32,
    /// `connection`: `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `error`: `XENSTORE_ERROR_*`, valid with `XENSTORE_SERVER_FEATURE_ERROR`.
    pub error: u32,
}

const _: () = {
    assert!(size_of::<XenstoreDomainInterface>() == 2076);
    assert!(offset_of!(XenstoreDomainInterface, req) == 0);
    assert!(offset_of!(XenstoreDomainInterface, rsp) == 1024);
    assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
    assert!(offset_of!(XenstoreDomainInterface, req_prod) == 2052);
    assert!(offset_of!(XenstoreDomainInterface, rsp_cons) == 2056);
    assert!(offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
    assert!(offset_of!(XenstoreDomainInterface, server_features) == 2064);
    assert!(offset_of!(XenstoreDomainInterface, connection) == 2068);
    assert!(offset_of!(XenstoreDomainInterface, error) == 2072);
};

/// An error xenstored named in an `XS_ERROR` reply. Errors travel as their
/// names (`"ENOENT"`), not numbers; these are `xsd_errors[]` of `xs_wire.h`
/// plus `EQUOTA`, which oxenstored sends when a quota is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum XsErrno {
    /// `EINVAL`: a malformed request (bad path, bad payload).
    EINVAL,
    /// `EACCES`: permission denied.
    EACCES,
    /// `EEXIST`: the node exists.
    EEXIST,
    /// `EISDIR`.
    EISDIR,
    /// `ENOENT`: no such node (or transaction).
    ENOENT,
    /// `ENOMEM`.
    ENOMEM,
    /// `ENOSPC`: a quota is reached (C xenstored).
    ENOSPC,
    /// `EIO`.
    EIO,
    /// `ENOTEMPTY`.
    ENOTEMPTY,
    /// `ENOSYS`: the request type is not supported.
    ENOSYS,
    /// `EROFS`.
    EROFS,
    /// `EBUSY`.
    EBUSY,
    /// `EAGAIN`: a transaction conflicted; start it again.
    EAGAIN,
    /// `EISCONN`.
    EISCONN,
    /// `E2BIG`: the answer would exceed the payload limit.
    E2BIG,
    /// `EPERM`.
    EPERM,
    /// `EQUOTA`: a quota is reached (oxenstored).
    EQUOTA,
    /// A name not listed here.
    Unknown,
}

const ERRNO_NAMES: [(XsErrno, &str); 17] = [
    (XsErrno::EINVAL, "EINVAL"),
    (XsErrno::EACCES, "EACCES"),
    (XsErrno::EEXIST, "EEXIST"),
    (XsErrno::EISDIR, "EISDIR"),
    (XsErrno::ENOENT, "ENOENT"),
    (XsErrno::ENOMEM, "ENOMEM"),
    (XsErrno::ENOSPC, "ENOSPC"),
    (XsErrno::EIO, "EIO"),
    (XsErrno::ENOTEMPTY, "ENOTEMPTY"),
    (XsErrno::ENOSYS, "ENOSYS"),
    (XsErrno::EROFS, "EROFS"),
    (XsErrno::EBUSY, "EBUSY"),
    (XsErrno::EAGAIN, "EAGAIN"),
    (XsErrno::EISCONN, "EISCONN"),
    (XsErrno::E2BIG, "E2BIG"),
    (XsErrno::EPERM, "EPERM"),
    (XsErrno::EQUOTA, "EQUOTA"),
];

impl XsErrno {
    /// The errno an `XS_ERROR` payload names (`"ENOENT\0"`; the trailing
    /// NUL is optional); [`XsErrno::Unknown`] for anything else.
    pub fn from_payload(payload: &[u8]) -> XsErrno {
        let name = match payload.iter().position(|&b| b == 0) {
            Some(end) => &payload[..end],
            None => payload,
        };
        ERRNO_NAMES
            .iter()
            .find(|(_, n)| n.as_bytes() == name)
            .map_or(XsErrno::Unknown, |&(e, _)| e)
    }

    /// The name as xenstored sends it (`"?"` for [`XsErrno::Unknown`]).
    pub fn name(self) -> &'static str {
        ERRNO_NAMES
            .iter()
            .find(|(e, _)| *e == self)
            .map_or("?", |&(_, n)| n)
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The NUL-terminated strings of a payload (`<foo>|*`): split at each NUL;
/// a last piece without its NUL counts too, an empty payload has none.
pub(crate) fn split_strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    let empty = payload.is_empty();
    body.split(|&b| b == 0).filter(move |_| !empty)
}
