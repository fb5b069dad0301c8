//! Image boot glue: the entry, the boot identity map and the exception report.

pub use xenmem::arch::aarch64::*;

mod boot;
pub mod mmu;
