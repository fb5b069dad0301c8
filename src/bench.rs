//! In-guest benchmarks (`bench=` on the agent's command line), printed as
//! tables; `cargo xtask bench` boots them and collects the tables.
//!
//! (Being written.)

use crate::arch::Verdict;
use crate::cmdline::BenchSet;
use crate::region::RegionTable;
use crate::xen::Hypervisor;

/// Run the benchmarks in `set`. `current` is Xen's reservation, which the
/// table accounts for.
pub fn run<H: Hypervisor>(
    hv: &H,
    table: &mut RegionTable,
    survey: &crate::agent::Survey,
    set: BenchSet,
) -> Verdict {
    let _ = (hv, table, survey, set);
    xm_error!("bench: not implemented yet");
    Verdict::Fail
}
