//! PVH boot glue: the entry, the first Rust code and the exception vectors.

pub use xenmem::arch::x86_64::*;

mod boot;
mod exceptions;
