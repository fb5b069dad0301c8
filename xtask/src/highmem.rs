//! Address limits for real (issue 14, item 3): an x86_64 machine with RAM
//! above 4 GiB, where a contiguous buffer populated with `contig-bits=32`
//! must come from below 4 GiB and the same populate without bits from above,
//! and where the privileged agent reads Xen's whole M2P table (ending on a
//! 1 GiB boundary, with a chunk Xen never filled for the hole below 4 GiB)
//! with the helper domain's frames in it.
//!
//! Besides the agent's reports, the runner checks them against what the
//! agent did not say: Xen's own e820 from its boot log (RAM above 4 GiB,
//! where RAM ends, which 1 GiB chunks of machine memory hold none) and the
//! machine it configured (QEMU's `-m`).

use crate::boot::{Arch, BootResult, Machine, Mode};
use crate::decode::Source;
use crate::report::{parse_number, Verdict};
use crate::scenarios::Scenario;
use crate::scenarios::{field, helper_domain, verdict, with, x86_dom0, Check, ExpectExit, Is};

const D0: Source = Source::D0;
const GIB: u64 = 1 << 30;
/// Machine memory one 2 MiB chunk of the M2P covers (2^18 frames).
const CHUNK_BYTES: u64 = GIB;

/// The machine: QEMU's `pc` with 6 GiB (3 GiB below 4 GiB, 3 GiB above),
/// dom0 with its usual 256 MiB.
pub const MACHINE: Machine = Machine {
    x86_ram_mib: 6144,
    x86_dom0_mib: 256,
    domu_kib: crate::boot::DOMU_MEMORY_KIB,
};

/// Names of the scenarios booted on [`MACHINE`].
const NAMES: [&str; 2] = ["x86_64-highmem-contig32", "x86_64-highmem-contig-helper"];

/// The machine scenario `name` boots on, if not the default.
pub fn machine(name: &str) -> Option<Machine> {
    NAMES.contains(&name).then_some(MACHINE)
}

/// What both scenarios report of the buffer and the table.
fn contig(bits: u64, below: &'static str) -> Vec<Check> {
    vec![
        field(D0, "contiguous", "method", Is::Text("repopulate")),
        field(D0, "contiguous", "bits", Is::Num(bits)),
        field(D0, "contiguous", "pattern", Is::Text("ok")),
        field(D0, "contiguous", "machine", Is::AnyNum),
        field(D0, "contiguous-m2p", "frames", Is::Num(512)),
        field(D0, "contiguous-m2p", "contiguous", Is::Text("yes")),
        field(D0, "contiguous-m2p", "below_4g", Is::Text(below)),
        field(D0, "m2p-table", "max_page", Is::AnyNum),
        field(D0, "m2p-table", "unfilled", Is::AnyNum),
        verdict(D0, Verdict::Pass),
    ]
}

/// The scenarios on [`MACHINE`].
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: NAMES[0],
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["contig=2M", "contig-bits=32"],
            exit: ExpectExit::Pass,
            checks: with(x86_dom0(D0), contig(32, "yes")),
        },
        Scenario {
            name: NAMES[1],
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["contig=2M", "helper=on"],
            exit: ExpectExit::Pass,
            checks: with(
                with(x86_dom0(D0), contig(0, "no")),
                helper_domain(D0, 16, 0).into_iter().chain([
                    // The helper's frames (Xen's bus addresses of the grant
                    // mappings) have the helper's GFNs in the M2P; dom0's
                    // own frames at those GFNs are claimed twice, and the
                    // lookup says so.
                    field(D0, "m2p-helper", "frames", Is::Num(4)),
                    field(D0, "m2p-helper", "entries", Is::Text("ok")),
                    field(
                        D0,
                        "m2p-own-at-helper-gfns",
                        "answer",
                        Is::Text("ambiguous"),
                    ),
                ]),
            ),
        },
    ]
}

/// Usable RAM ranges `[start, end)` of Xen's own e820 (`Xen-e820 RAM map:`
/// in its boot log: `[start, end-inclusive] (usable)`).
pub fn xen_e820(log: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in log.lines() {
        if line.contains("Xen-e820 RAM map:") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let Some(open) = line.rfind('[') else {
            break;
        };
        let Some(close) = line[open..].find(']') else {
            break;
        };
        let body = &line[open + 1..open + close];
        let mut parts = body.split(',').map(|p| u64::from_str_radix(p.trim(), 16));
        let (Some(Ok(s)), Some(Ok(e))) = (parts.next(), parts.next()) else {
            break;
        };
        if line[open + close..].contains("(usable)") {
            out.push((s, e + 1));
        }
    }
    out
}

/// What the runner knows that the agent did not say, for scenario `name`:
/// Xen's e820 (from the boot log `log`) and the machine.
pub fn evaluate(name: &str, r: &BootResult, log: &str) -> Vec<String> {
    if !NAMES.contains(&name) {
        return Vec::new();
    }
    let mut f = Vec::new();
    let ram = xen_e820(log);
    let total: u64 = ram.iter().map(|(s, e)| e - s).sum();
    let above: u64 = ram
        .iter()
        .map(|&(s, e)| e.saturating_sub(s.max(4 * GIB)))
        .sum();
    let top = ram.iter().map(|r| r.1).max().unwrap_or(0);
    // QEMU's RAM less the firmware's holes below 1 MiB and at 3 GiB's end.
    let machine = MACHINE.x86_ram_mib << 20;
    if total > machine || total < machine - (16 << 20) {
        f.push(format!(
            "Xen's e820 has {total:#x} bytes of RAM, the machine {machine:#x}"
        ));
    }
    if above == 0 {
        f.push("Xen's e820 has no RAM above 4 GiB".into());
    }
    let log0 = r.logs.get(D0);
    for rep in log0.topic("m2p-table") {
        let num = |k| rep.get(k).and_then(parse_number);
        // max_page: one past the highest frame of RAM.
        if num("max_page") != Some(top.div_ceil(4096)) {
            f.push(format!(
                "m2p-table max_page={:?}, Xen's e820 ends at {top:#x}",
                rep.get("max_page")
            ));
        }
        // The 1 GiB chunks of machine memory with no RAM: Xen never
        // filled their part of the table.
        let unfilled = (0..top.div_ceil(CHUNK_BYTES))
            .filter(|c| {
                let (lo, hi) = (c * CHUNK_BYTES, (c + 1) * CHUNK_BYTES);
                !ram.iter().any(|&(s, e)| s < hi && e > lo)
            })
            .count() as u64;
        if num("unfilled") != Some(unfilled) {
            f.push(format!(
                "m2p-table unfilled={:?}, Xen's e820 leaves {unfilled} chunk(s) without RAM",
                rep.get("unfilled")
            ));
        }
        if num("chunks") != Some(top.div_ceil(CHUNK_BYTES)) {
            f.push(format!(
                "m2p-table chunks={:?}, RAM ends at {top:#x}",
                rep.get("chunks")
            ));
        }
        // The scan saw entries in the table's last chunk (dom0's memory
        // comes from the top).
        if num("highest_valid").is_none_or(|h| h * 4096 < top - CHUNK_BYTES) {
            f.push(format!(
                "m2p-table highest_valid={:?}: no valid entry in the table's last chunk (RAM ends at {top:#x})",
                rep.get("highest_valid")
            ));
        }
    }
    // The buffer's bus address against Xen's RAM and 4 GiB.
    let bits32 = name == NAMES[0];
    match log0
        .topic("contiguous")
        .find_map(|rep| rep.get("machine").and_then(parse_number))
    {
        None => f.push("no contiguous machine address".into()),
        Some(m) => {
            let end = m + (2 << 20);
            if !ram.iter().any(|&(s, e)| s <= m && end <= e) {
                f.push(format!("the buffer at {m:#x} is not in Xen's e820 RAM"));
            }
            if bits32 && end > 4 * GIB {
                f.push(format!(
                    "contig-bits=32 but the buffer is at {m:#x}, above 4 GiB"
                ));
            }
            if !bits32 && m < 4 * GIB {
                f.push(format!(
                    "the populate without bits came from {m:#x}, below 4 GiB, with {above:#x} bytes of RAM above"
                ));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_e820_is_read_from_the_boot_log() {
        let log = "(XEN) [00000000168b0225] Xen-e820 RAM map:\n\
            (XEN) [0000000016960d81]  [0000000000000000, 000000000009fbff] (usable)\n\
            (XEN) [0000000016960d81]  [000000000009fc00, 000000000009ffff] (reserved)\n\
            (XEN) [0000000016bccabd]  [0000000100000000, 00000001bfffffff] (usable)\n\
            (XEN) [000000002edf7a46] System RAM: 511MB (523772kB)\n\
            (XEN) [0000000016bccabd]  [0000000200000000, 00000002bfffffff] (usable)\n";
        assert_eq!(
            xen_e820(log),
            [(0, 0x9fc00), (0x1_0000_0000, 0x1_c000_0000)]
        );
    }
}
