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
//!
//! The Arm half: an aarch64 `virt` machine with 6 GiB (RAM from 1 GiB to
//! 7 GiB, so Xen's `max_page` needs 33 bits and honours a 32-bit limit), a
//! dom0less domU that populates its contiguous buffer with and without
//! `contig-bits=32` and learns where it lies by granting the buffer's two
//! end pages to itself (`contig-bus=grant`: Xen's `dev_bus_addr`). The
//! runner checks those addresses against QEMU's own device tree (its
//! memory node) and 4 GiB.

use std::path::Path;

use crate::boot::{Arch, BootResult, Machine, Mode};
use crate::decode::Source;
use crate::report::{parse_number, Verdict};
use crate::scenarios::Scenario;
use crate::scenarios::{
    arm_domu, field, helper_domain, verdict, with, x86_dom0, Check, ExpectExit, Is,
};

const D0: Source = Source::D0;
const D1: Source = Source::D1;
const GIB: u64 = 1 << 30;
/// Machine memory one 2 MiB chunk of the M2P covers (2^18 frames).
const CHUNK_BYTES: u64 = GIB;

/// The machine: QEMU's `pc` with 6 GiB (3 GiB below 4 GiB, 3 GiB above),
/// dom0 with its usual 256 MiB.
pub const MACHINE: Machine = Machine {
    x86_ram_mib: 6144,
    x86_dom0_mib: 256,
    domu_kib: crate::boot::DOMU_MEMORY_KIB,
    aarch64_ram_mib: crate::boot::AARCH64_RAM_MIB,
};

/// Names of the scenarios booted on [`MACHINE`].
const NAMES: [&str; 2] = ["x86_64-highmem-contig32", "x86_64-highmem-contig-helper"];

/// The Arm machine: QEMU's `virt` with 6 GiB (RAM `[1 GiB, 7 GiB)`), the
/// domU with its usual 128 MiB.
pub const ARM_MACHINE: Machine = Machine {
    x86_ram_mib: 512,
    x86_dom0_mib: 256,
    domu_kib: crate::boot::DOMU_MEMORY_KIB,
    aarch64_ram_mib: 6144,
};

/// Where QEMU's `virt` machine puts RAM.
const ARM_RAM_BASE: u64 = GIB;

/// Names of the scenarios booted on [`ARM_MACHINE`]: the buffer with
/// `contig-bits=32`, and without.
const ARM_NAMES: [&str; 2] = ["aarch64-highmem-contig32", "aarch64-highmem-contig"];

/// The machine scenario `name` boots on, if not the default.
pub fn machine(name: &str) -> Option<Machine> {
    if NAMES.contains(&name) {
        Some(MACHINE)
    } else if ARM_NAMES.contains(&name) {
        Some(ARM_MACHINE)
    } else {
        None
    }
}

/// What both Arm scenarios report of the buffer and its grants.
fn arm_contig(bits: u64, below: &'static str) -> Vec<Check> {
    vec![
        field(D1, "domain", "privileged", Is::Text("no")),
        field(D1, "engine", "direct_mapped", Is::Text("no")),
        field(D1, "contiguous", "method", Is::Text("repopulate")),
        field(D1, "contiguous", "order", Is::Num(9)),
        field(D1, "contiguous", "bits", Is::Num(bits)),
        field(D1, "contiguous", "pattern", Is::Text("ok")),
        field(D1, "contiguous", "machine", Is::AnyNum),
        field(D1, "contiguous-grant", "pages", Is::Num(2)),
        field(D1, "contiguous-grant", "same", Is::Text("yes")),
        field(D1, "contiguous-grant", "contiguous", Is::Text("yes")),
        field(D1, "contiguous-grant", "below_4g", Is::Text(below)),
        field(D1, "reservation-after", "current", Is::Num(ARM_DOMU_PAGES)),
        verdict(D1, Verdict::Pass),
    ]
}

/// A dom0less domU's pages.
const ARM_DOMU_PAGES: u64 = crate::boot::DOMU_MEMORY_KIB / 4;

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

/// The scenarios on [`MACHINE`] and [`ARM_MACHINE`].
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: ARM_NAMES[0],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &["contig=2M", "contig-bits=32", "contig-bus=grant"],
            exit: ExpectExit::Pass,
            checks: with(arm_domu(D1), arm_contig(32, "yes")),
        },
        Scenario {
            name: ARM_NAMES[1],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &["contig=2M", "contig-bus=grant"],
            exit: ExpectExit::Pass,
            checks: with(arm_domu(D1), arm_contig(0, "no")),
        },
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

/// RAM ranges `[start, end)` of the `memory` nodes of a decompiled device
/// tree (QEMU's own, `virt.dts` in the boot's work directory), with two
/// address and two size cells.
pub fn dts_memory(dts: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in dts.lines().map(str::trim) {
        if line.starts_with("memory@") && line.ends_with('{') {
            inside = true;
        } else if inside && line.starts_with("reg = <") {
            let cells: Vec<Option<u64>> = line
                .trim_start_matches("reg = <")
                .trim_end_matches(">;")
                .split_whitespace()
                .map(|c| u64::from_str_radix(c.trim_start_matches("0x"), 16).ok())
                .collect();
            for pair in cells.chunks(4) {
                if let [Some(ah), Some(al), Some(sh), Some(sl)] = pair {
                    let start = ah << 32 | al;
                    out.push((start, start + (sh << 32 | sl)));
                }
            }
        } else if line == "};" {
            inside = false;
        }
    }
    out
}

/// What the runner knows that the agent did not say, for scenario `name`:
/// Xen's e820 (from the boot log `log`, x86) or QEMU's device tree (in the
/// boot's `work_dir`, Arm), and the machine.
pub fn evaluate(name: &str, r: &BootResult, log: &str, work_dir: &Path) -> Vec<String> {
    if ARM_NAMES.contains(&name) {
        let dts = std::fs::read_to_string(work_dir.join("virt.dts")).unwrap_or_default();
        return evaluate_arm(name == ARM_NAMES[0], r, &dts_memory(&dts));
    }
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

/// The Arm scenarios' buffer against the machine's RAM `ram` (QEMU's
/// device tree) and 4 GiB; `bits32`: populated with `contig-bits=32`.
fn evaluate_arm(bits32: bool, r: &BootResult, ram: &[(u64, u64)]) -> Vec<String> {
    let mut f = Vec::new();
    let want = (
        ARM_RAM_BASE,
        ARM_RAM_BASE + (ARM_MACHINE.aarch64_ram_mib << 20),
    );
    if ram != [want] {
        f.push(format!(
            "QEMU's device tree has RAM {ram:x?}, the runner configured {want:x?}"
        ));
    }
    let size: u64 = 2 << 20;
    let log1 = r.logs.get(D1);
    let num = |topic: &str, key: &str| {
        log1.topic(topic)
            .find_map(|rep| rep.get(key).and_then(parse_number))
    };
    let (Some(m), Some(first), Some(last)) = (
        num("contiguous", "machine"),
        num("contiguous-grant", "first"),
        num("contiguous-grant", "last"),
    ) else {
        f.push("no contiguous machine address or no bus addresses from the self-grant".into());
        return f;
    };
    // The buffer's address is what Xen's grant maps said, both ends.
    if m != first || last != first + size - 4096 {
        f.push(format!(
            "contiguous machine={m:#x} but the grants' bus addresses are {first:#x} and {last:#x}"
        ));
    }
    if !ram.iter().any(|&(s, e)| s <= m && m + size <= e) {
        f.push(format!(
            "the buffer at {m:#x} is not in the machine's RAM {ram:x?}"
        ));
    }
    if bits32 {
        // Xen's heap takes the highest zone the limit allows (zone 20:
        // machine frames [2 GiB, 4 GiB), page_alloc.c), which has free RAM.
        if m + size > 4 * GIB || m < 2 * GIB {
            f.push(format!(
                "contig-bits=32 but the buffer is at {m:#x}, not in [2 GiB, 4 GiB)"
            ));
        }
    } else if m < 4 * GIB {
        f.push(format!(
            "the populate without bits came from {m:#x}, below 4 GiB, with RAM up to {:#x}",
            ram.iter().map(|r| r.1).max().unwrap_or(0)
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot whose domU printed `lines` (`report: ...`).
    fn domu(lines: &[String]) -> BootResult {
        use crate::decode::{AgentLine, Level};
        let mut logs = crate::report::Logs::default();
        for m in lines {
            logs.push(&AgentLine {
                source: D1,
                level: Level::Info,
                message: m.clone(),
                timestamp: None,
            });
        }
        BootResult {
            exit: crate::boot::Exit::Pass,
            logs,
            warnings: vec![],
            qemu_stderr: vec![],
            log_path: "x.log".into(),
            elapsed: std::time::Duration::ZERO,
            xen_views: vec![],
            xen_view_asked: false,
        }
    }

    /// The two reports as the agent prints them, for a buffer whose grants
    /// said `first`/`last` and whose report says `machine`.
    fn arm_reports(first: u64, last: u64, machine: u64) -> Vec<String> {
        vec![
            format!("report: contiguous-grant pages=2 first={first:#x} last={last:#x} same=yes contiguous=yes below_4g=yes"),
            format!("report: contiguous gpa=0x47c00000 size=0x200000 order=9 machine={machine:#x} method=repopulate bits=32 pattern=ok"),
        ]
    }

    const RAM: [(u64, u64); 1] = [(0x4000_0000, 0x1_c000_0000)];

    /// The measured answers pass; each way of being wrong fails.
    #[test]
    fn arm_buffer_checks() {
        // Measured: bits 32 at 0xbfe00000, without at 0x1b7c00000.
        let ok32 = domu(&arm_reports(0xbfe0_0000, 0xbfff_f000, 0xbfe0_0000));
        assert_eq!(evaluate_arm(true, &ok32, &RAM), Vec::<String>::new());
        let ok = domu(&arm_reports(0x1_b7c0_0000, 0x1_b7df_f000, 0x1_b7c0_0000));
        assert_eq!(evaluate_arm(false, &ok, &RAM), Vec::<String>::new());
        let fails = |bits32: bool, r: &BootResult, ram: &[(u64, u64)], what: &str| {
            let f = evaluate_arm(bits32, r, ram);
            assert!(f.iter().any(|x| x.contains(what)), "{what}: {f:?}");
        };
        // The limit ignored; the other way round.
        fails(true, &ok, &RAM, "contig-bits=32 but the buffer is at");
        fails(false, &ok32, &RAM, "the populate without bits came from");
        // The guest-physical address for the machine one, with bits 32.
        let gpa = domu(&arm_reports(0x47c0_0000, 0x47df_f000, 0x47c0_0000));
        fails(true, &gpa, &RAM, "contig-bits=32 but the buffer is at");
        // A report that is not what the grants said; ends not one run.
        let off = domu(&arm_reports(0xbfe0_0000, 0xbfff_f000, 0xbfc0_0000));
        fails(true, &off, &RAM, "but the grants' bus addresses are");
        let apart = domu(&arm_reports(0xbfe0_0000, 0xbfef_f000, 0xbfe0_0000));
        fails(true, &apart, &RAM, "but the grants' bus addresses are");
        // Outside the machine's RAM; the machine not the one configured.
        let out = domu(&arm_reports(0x2_0000_0000, 0x2_001f_f000, 0x2_0000_0000));
        fails(false, &out, &RAM, "is not in the machine's RAM");
        fails(
            false,
            &ok,
            &[(0x4000_0000, 0x8000_0000)],
            "QEMU's device tree has RAM",
        );
        // Nothing reported.
        fails(false, &domu(&[]), &RAM, "no contiguous machine address");
    }

    #[test]
    fn dts_memory_is_read_from_qemus_tree() {
        let dts = "/dts-v1/;\n/ {\n\tmemory@40000000 {\n\t\treg = <0x00 0x40000000 0x01 0x80000000>;\n\
            \t\tdevice_type = \"memory\";\n\t};\n\tplatform-bus@c000000 {\n\t\treg = <0x00 0xc000000 0x00 0x2000000>;\n\t};\n};\n";
        assert_eq!(dts_memory(dts), [(0x4000_0000, 0x1_c000_0000)]);
        assert!(dts_memory("garbage").is_empty());
    }

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
