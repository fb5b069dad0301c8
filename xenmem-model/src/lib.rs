//! # xenmem-model
//!
//! A host model of Xen 4.17 for xenmem's tests: [`XenModel`] implements
//! [`xenmem::xen::Hypervisor`] over a simulated machine and its domains
//! (reservation, the physmap, grant tables, event channels, domctl), with
//! fault injection; [`xenstore::XsModel`] is a xenstore daemon on a shared
//! ring. It is a dev-dependency of `xenmem` and `xenmem-agent`; the
//! real-Xen scenarios (`cargo xtask test`) are never replaced by it.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod xen;
pub mod xenstore;

pub use xen::*;
