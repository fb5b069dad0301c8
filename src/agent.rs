//! The agent: what it does once booted. (Stub; filled in by the lead.)

use crate::arch::Verdict;
use crate::boot::BootInfo;
use crate::xen::Hypervisor;

/// How the run leaves the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitPath {
    /// Tell QEMU directly (isa-debug-exit, semihosting): the run is over.
    Host,
    /// `SCHEDOP_shutdown`, so that another domain can see the verdict.
    XenShutdown,
}

/// What a run ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Pass or fail.
    pub verdict: Verdict,
    /// How to leave.
    pub exit: ExitPath,
}

/// Run the agent.
pub fn run(hv: &impl Hypervisor, boot: &BootInfo<'_>) -> Outcome {
    let _ = boot;
    match hv.version() {
        Ok(v) => xm_info!("xen version {=u16}.{=u16}", v.major, v.minor),
        Err(e) => xm_error!("xen_version failed: {}", e),
    }
    xm_info!("verdict: PASS");
    Outcome {
        verdict: Verdict::Pass,
        exit: ExitPath::Host,
    }
}
