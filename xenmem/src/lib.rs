//! # xenmem
//!
//! A freestanding, `no_std` memory agent for Xen guests. It boots as a PVH
//! guest on x86_64 or as an Arm guest on aarch64 (or is linked into a
//! firmware-like stub as a library) and manages its guest's memory by talking
//! to Xen directly.
//!
//! Portable logic lives at the top level of the crate and is tested on the
//! host; everything that is specific to an architecture sits behind
//! [`arch`]; everything that talks to Xen goes through the typed operations of
//! [`xen::Hypervisor`].
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
// The library's own unit tests compile the model of Xen (crate
// `xenmem-model`) in by path (see `xen::model`): a crate's unit tests cannot
// use a dev-dependency that itself depends on the crate (it would link a
// second copy of xenmem, whose traits are not this build's). The model's
// `xenmem::` paths then name this crate.
#[cfg(test)]
extern crate self as xenmem;

#[macro_use]
pub mod log;

pub mod acquire;
pub mod addr;
pub mod arch;
pub mod boot;
pub mod console;
pub mod domctl;
pub mod evtchn;
pub mod fdt;
pub mod grant;
pub mod guestmem;
pub mod layout;
pub mod logframe;
pub mod m2p;
pub mod mapping;
pub mod memmap;
pub mod paging;
pub mod region;
pub mod reservation;
pub mod special;
pub mod timer;
pub mod xen;
pub mod xenstore;
