//! # xenmem-agent
//!
//! The unikernel built on [`xenmem`]: it boots under Xen as a PVH guest on
//! x86_64 or an Arm guest on aarch64 (feature `rt`, bare-metal targets only),
//! reads its options from the command line ([`cmdline`]) and runs one of its
//! scenarios ([`agent`]), benchmarks ([`bench`](mod@bench)) or the balloon service that
//! follows the toolstack's `memory/target` ([`service`]).
//!
//! Its portable parts are tested on the host against `xenmem-model`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[macro_use]
extern crate xenmem;

pub mod agent;
pub mod arch;
pub mod bench;
pub mod cmdline;
pub mod mutant;
pub mod negative;
pub mod service;
pub mod xenview;

#[cfg(all(feature = "rt", target_os = "none"))]
pub mod rt;
