//! The architecture seam.
//!
//! Exactly one architecture module is compiled for a bare-metal target and
//! re-exported as `arch::imp`. Every architecture provides the same items, so
//! that portable code never names an architecture:
//!
//! | item | what it does |
//! |---|---|
//! | `hypercall::raw(op, args) -> isize` | issue one hypercall: `vmcall`/`vmmcall` on x86_64 (chosen from the CPU vendor, never the hypercall page), `hvc #0xEA1` on aarch64 |
//! | `own_domid() -> Option<DomId>` | the domain id when the hardware interface tells it (x86 CPUID leaf), else `None` |
//! | `phys_addr_bits() -> Option<u8>` | the guest-physical address width where the CPU tells it (x86 CPUID 0x8000_0008), else `None` |
//! | `exit_host(Verdict) -> !` | leave QEMU with the verdict as its exit status (isa-debug-exit on x86_64, semihosting `SYS_EXIT` on aarch64) |
//! | `signal_host(Verdict)` | the same signal, returning where no exit device answers (a toolstack domU) |
//! | `halt() -> !` | stop this vCPU for good |
//! | `QEMU_EXIT_PASS`, `QEMU_EXIT_FAIL` | QEMU's exit status after `exit_host` (the runner matches them) |
//! | `IDENTITY_MAP_END` | how far the boot page tables identity-map guest-physical memory |
//! | `UNMAPPED_PROBE` | an address the boot page tables leave unmapped, to test the exception path |
//! | `paging::{page_tables(), self_test(), AgentPageTable, WINDOW_START, WINDOW_SIZE}` | the agent's page tables: the boot tables, adopted on first use, with a mapping window (see [`crate::paging`]) |
//! | `NAME` | `"x86_64"` or `"aarch64"` |
//!
//! With the `rt` feature an architecture also provides its boot glue: the
//! entry assembly under `boot/`, exception vectors that report through
//! `rt::exception`, and the hand-over to `rt::start`.
//!
//! On the host (`cargo test`) no architecture module is compiled: host code
//! reaches Xen only through a model of [`crate::xen::Hypervisor`].

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod x86_64;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use self::x86_64 as imp;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::aarch64 as imp;

/// The verdict an agent run ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// Everything the run was asked to do worked.
    Pass,
    /// Something failed; the log says what.
    Fail,
}
