//! The agent's boot glue, by architecture (feature `rt`, bare-metal targets
//! only), over the library's own architecture layer ([`xenmem::arch`]).

pub use xenmem::arch::*;

#[cfg(all(feature = "rt", target_arch = "x86_64", target_os = "none"))]
pub mod x86_64;

#[cfg(all(feature = "rt", target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
