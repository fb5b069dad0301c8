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
//!
//! A domU whose own RAM is above 4 GiB: with more than 3 GiB Xen gives a
//! dom0less domU a second bank at GUEST_RAM1 (8 GiB), and the agent's
//! ballooned extents and contiguous buffer (taken from the top of its RAM)
//! have GFNs there. `aarch64-highmem-domu-ram1-*` boot a domU of 3 GiB +
//! 128 MiB on the same 6 GiB machine: the runner checks the agent's memory banks
//! against Xen's fixed layout (`xen/include/public/arch-arm.h`) and the
//! configured memory, the buffer's GFN in RAM1 while its machine address
//! lies below 4 GiB with `contig-bits=32` (above without), and the
//! ballooned extents in RAM1.

use std::path::Path;

use crate::boot::{Arch, BootResult, Machine, Mode};
use crate::decode::Source;
use crate::report::{parse_number, Verdict};
use crate::scenarios::Scenario;
use crate::scenarios::{
    arm_domu, arm_domu_of, balloon_round_trip, field, first_balloon, helper_domain,
    identity_round_trip, verdict, with, x86_dom0, Check, ExpectExit, Is,
};

const D0: Source = Source::D0;
const D1: Source = Source::D1;
const GIB: u64 = 1 << 30;

/// Pages of 4 KiB in `mib` MiB.
const fn pages_of_mib(mib: u64) -> u64 {
    mib * 256
}
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

/// Xen's fixed guest memory layout on Arm (`xen/include/public/arch-arm.h`,
/// 4.17): 3 GiB of low RAM at 1 GiB, then 1016 GiB at 8 GiB.
const GUEST_RAM0_BASE: u64 = 0x4000_0000;
/// See [`GUEST_RAM0_BASE`].
const GUEST_RAM0_SIZE: u64 = 0xc000_0000;
/// See [`GUEST_RAM0_BASE`].
const GUEST_RAM1_BASE: u64 = 0x02_0000_0000;
/// See [`GUEST_RAM0_BASE`].
const GUEST_RAM1_SIZE: u64 = 0xfe_0000_0000;

/// The domU's RAM in its second bank (GUEST_RAM1), MiB: enough for the
/// balloon's 63 MiB and the 2 MiB buffer, both taken from the top.
const RAM1_MIB: u64 = 128;

/// The machine for a domU with RAM above 4 GiB: a domU of 3 GiB + 128 MiB
/// (its first bank full, 128 MiB in the second) on QEMU's `virt` with
/// 6 GiB, as [`ARM_MACHINE`] (RAM `[1 GiB, 7 GiB)`). After the domU's
/// 3.1 GiB Xen still has free frames above 4 GiB (for the populate without
/// bits) and in `[2 GiB, 4 GiB)` (for bits 32); on a 4 GiB machine it has
/// none in `[2 GiB, 4 GiB)` (measured: bits 32 gave `0x40000000`).
pub const ARM_RAM1_MACHINE: Machine = Machine {
    x86_ram_mib: 512,
    x86_dom0_mib: 256,
    domu_kib: ((GUEST_RAM0_SIZE >> 20) + RAM1_MIB) << 10,
    aarch64_ram_mib: 6144,
};

/// Names of the scenarios booted on [`ARM_RAM1_MACHINE`]: the buffer with
/// `contig-bits=32` (and a balloon round trip), and without.
const ARM_RAM1_NAMES: [&str; 2] = [
    "aarch64-highmem-domu-ram1-contig32",
    "aarch64-highmem-domu-ram1-contig",
];

/// The banks `[start, end)` Xen 4.17 gives a dom0less domU of `bytes`
/// (`allocate_memory` in `arch/arm/domain_build.c`): GUEST_RAM0 first, up
/// to its size, the rest from the start of GUEST_RAM1.
pub fn guest_banks(bytes: u64) -> Vec<(u64, u64)> {
    let b0 = bytes.min(GUEST_RAM0_SIZE);
    let b1 = (bytes - b0).min(GUEST_RAM1_SIZE);
    [(GUEST_RAM0_BASE, b0), (GUEST_RAM1_BASE, b1)]
        .into_iter()
        .filter(|&(_, size)| size > 0)
        .map(|(base, size)| (base, base + size))
        .collect()
}

/// The machine scenario `name` boots on, if not the default.
pub fn machine(name: &str) -> Option<Machine> {
    if NAMES.contains(&name) {
        Some(MACHINE)
    } else if ARM_NAMES.contains(&name) {
        Some(ARM_MACHINE)
    } else if ARM_RAM1_NAMES.contains(&name) {
        Some(ARM_RAM1_MACHINE)
    } else {
        None
    }
}

/// What both Arm scenarios report of the buffer and its grants (the domU
/// has `pages` pages).
fn arm_contig(bits: u64, below: &'static str, pages: u64) -> Vec<Check> {
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
        field(D1, "reservation-after", "current", Is::Num(pages)),
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

/// The pages of the domU on [`ARM_RAM1_MACHINE`].
const ARM_RAM1_PAGES: u64 = ARM_RAM1_MACHINE.domu_kib / 4;

/// The end of the Arm agent's boot identity map (`[0, 511 GiB)`, all of
/// it but the guest's RAM unmapped by the start-up trim).
const ARM_IDENTITY_END: u64 = 511 * GIB;

/// What both RAM1 scenarios report: a domU of [`ARM_RAM1_PAGES`], every
/// page of it (both banks) identity-mapped after the trim and everything
/// else below the map's end unmapped, in three runs (below RAM0, between
/// the banks, above RAM1).
fn arm_ram1_domu() -> Vec<Check> {
    with(
        arm_domu_of(D1, ARM_RAM1_PAGES, 3),
        [
            field(D1, "identity-trim", "kept", Is::Num(ARM_RAM1_PAGES)),
            field(
                D1,
                "identity-trim",
                "frames",
                Is::Num(ARM_IDENTITY_END / 4096 - ARM_RAM1_PAGES),
            ),
        ],
    )
}

/// The scenarios on [`MACHINE`], [`ARM_MACHINE`] and [`ARM_RAM1_MACHINE`].
pub fn scenarios() -> Vec<Scenario> {
    let ballooned = pages_of_mib(63);
    vec![
        Scenario {
            name: ARM_RAM1_NAMES[0],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            // 63 MiB go from the top of the 128 MiB in RAM1 and come back;
            // then the buffer, with the 32-bit limit.
            agent_opts: &[
                "balloon=3137M",
                "balloon-then=3200M",
                "contig=2M",
                "contig-bits=32",
                "contig-bus=grant",
            ],
            exit: ExpectExit::Pass,
            checks: with(
                with(arm_ram1_domu(), arm_contig(32, "yes", ARM_RAM1_PAGES)),
                balloon_round_trip(D1, ARM_RAM1_PAGES - ballooned, ARM_RAM1_PAGES)
                    .into_iter()
                    .chain([
                        first_balloon(D1, "order9", Is::Num(31)),
                        first_balloon(D1, "order0", Is::Num(256)),
                    ])
                    .chain(identity_round_trip(D1, ballooned, 2)),
            ),
        },
        Scenario {
            name: ARM_RAM1_NAMES[1],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &["contig=2M", "contig-bus=grant"],
            exit: ExpectExit::Pass,
            checks: with(arm_ram1_domu(), arm_contig(0, "no", ARM_RAM1_PAGES)),
        },
        Scenario {
            name: ARM_NAMES[0],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &["contig=2M", "contig-bits=32", "contig-bus=grant"],
            exit: ExpectExit::Pass,
            checks: with(arm_domu(D1), arm_contig(32, "yes", ARM_DOMU_PAGES)),
        },
        Scenario {
            name: ARM_NAMES[1],
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &["contig=2M", "contig-bus=grant"],
            exit: ExpectExit::Pass,
            checks: with(arm_domu(D1), arm_contig(0, "no", ARM_DOMU_PAGES)),
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
        return evaluate_arm(name == ARM_NAMES[0], r, &dts_memory(&dts), &ARM_MACHINE);
    }
    if ARM_RAM1_NAMES.contains(&name) {
        let dts = std::fs::read_to_string(work_dir.join("virt.dts")).unwrap_or_default();
        let bits32 = name == ARM_RAM1_NAMES[0];
        let mut f = evaluate_arm(bits32, r, &dts_memory(&dts), &ARM_RAM1_MACHINE);
        f.extend(evaluate_ram1(bits32, r, ARM_RAM1_MACHINE.domu_kib << 10));
        return f;
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
/// device tree, which must be what `machine` configured) and 4 GiB;
/// `bits32`: populated with `contig-bits=32`.
fn evaluate_arm(
    bits32: bool,
    r: &BootResult,
    ram: &[(u64, u64)],
    machine: &Machine,
) -> Vec<String> {
    let mut f = Vec::new();
    let want = (ARM_RAM_BASE, ARM_RAM_BASE + (machine.aarch64_ram_mib << 20));
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

/// A domU of `bytes` whose RAM reaches GUEST_RAM1: the agent's RAM banks
/// (`report: region kind=ram`) are Xen's fixed layout for that size
/// ([`guest_banks`]), the contiguous buffer's GFN lies in the second bank
/// (above 4 GiB) while its machine address (checked by [`evaluate_arm`])
/// lies on the side of 4 GiB the limit asks for, and the ballooned extents
/// (`report: identity-map phase=first low= high=`, when the scenario
/// balloons) lie in the second bank too.
fn evaluate_ram1(bits32: bool, r: &BootResult, bytes: u64) -> Vec<String> {
    let mut f = Vec::new();
    let banks = guest_banks(bytes);
    let log1 = r.logs.get(D1);
    let mut ram: Vec<(u64, u64)> = log1
        .topic("region")
        .filter(|rep| rep.get("kind") == Some("ram"))
        .filter_map(|rep| {
            Some((
                rep.get("start").and_then(parse_number)?,
                rep.get("end").and_then(parse_number)?,
            ))
        })
        .collect();
    ram.sort_unstable();
    if ram != banks {
        f.push(format!(
            "the domU's RAM banks are {ram:x?}, Xen's layout for {bytes:#x} bytes is {banks:x?}"
        ));
    }
    let Some(&(b1_start, b1_end)) = banks.get(1) else {
        f.push(format!(
            "a domU of {bytes:#x} bytes has no RAM in GUEST_RAM1"
        ));
        return f;
    };
    let in_ram1 = |s: u64, e: u64| b1_start <= s && s < e && e <= b1_end && s >= 4 * GIB;
    let size: u64 = 2 << 20;
    match log1
        .topic("contiguous")
        .find_map(|rep| rep.get("gpa").and_then(parse_number))
    {
        None => f.push("no contiguous gpa".into()),
        Some(g) if !in_ram1(g, g + size) => f.push(format!(
            "the buffer's GFNs start at {g:#x}, not in GUEST_RAM1 {:x?} above 4 GiB",
            (b1_start, b1_end)
        )),
        Some(_) => {}
    }
    if bits32 {
        let first = log1
            .topic("identity-map")
            .find(|rep| rep.get("phase") == Some("first"));
        let lh = first.and_then(|rep| {
            Some((
                rep.get("low").and_then(parse_number)?,
                rep.get("high").and_then(parse_number)?,
            ))
        });
        match lh {
            None => f.push("no ballooned range (identity-map phase=first low= high=)".into()),
            Some((lo, hi)) if !in_ram1(lo, hi) => f.push(format!(
                "the ballooned extents lie in [{lo:#x}, {hi:#x}), not in GUEST_RAM1 {:x?}",
                (b1_start, b1_end)
            )),
            Some(_) => {}
        }
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
        assert_eq!(
            evaluate_arm(true, &ok32, &RAM, &ARM_MACHINE),
            Vec::<String>::new()
        );
        let ok = domu(&arm_reports(0x1_b7c0_0000, 0x1_b7df_f000, 0x1_b7c0_0000));
        assert_eq!(
            evaluate_arm(false, &ok, &RAM, &ARM_MACHINE),
            Vec::<String>::new()
        );
        let fails = |bits32: bool, r: &BootResult, ram: &[(u64, u64)], what: &str| {
            let f = evaluate_arm(bits32, r, ram, &ARM_MACHINE);
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
    fn guest_banks_follow_xens_fixed_layout() {
        assert_eq!(guest_banks(128 << 20), [(0x4000_0000, 0x4800_0000)]);
        assert_eq!(guest_banks(3 * GIB), [(0x4000_0000, 0x1_0000_0000)]);
        assert_eq!(
            guest_banks(ARM_RAM1_MACHINE.domu_kib << 10),
            [(0x4000_0000, 0x1_0000_0000), (0x2_0000_0000, 0x2_0800_0000)]
        );
        assert!(guest_banks(0).is_empty());
    }

    /// The RAM1 domU's reports as measured (bits 32 and a balloon round
    /// trip), with `edit` applied to each line.
    fn ram1_reports(edit: impl Fn(String) -> String) -> BootResult {
        let lines = [
            "report: region start=0x40000000 end=0x100000000 kind=ram",
            "report: region start=0x200000000 end=0x208000000 kind=ram",
            "report: region start=0x38000000 end=0x39000000 kind=hypervisor",
            "report: region start=0x208000000 end=0x10000000000 kind=hypervisor",
            "report: identity-map phase=first ballooned_unmapped=yes checked=16128 mapped=0 root_switches=2 low=0x204100000 high=0x208000000",
            "report: identity-map phase=then ballooned_unmapped=yes checked=0 mapped=0 root_switches=2 low=0x0 high=0x0",
            "report: contiguous-grant pages=2 first=0xbfe00000 last=0xbffff000 same=yes contiguous=yes below_4g=yes",
            "report: contiguous gpa=0x207e00000 size=0x200000 order=9 machine=0xbfe00000 method=repopulate bits=32 pattern=ok",
        ];
        domu(&lines.map(|l| edit(l.to_string())))
    }

    /// The RAM1 checks pass on the measured answers and fail on each way of
    /// being wrong (the bus address check of [`evaluate_arm`] included).
    #[test]
    fn ram1_checks() {
        let bytes = ARM_RAM1_MACHINE.domu_kib << 10;
        let ram = [(0x4000_0000, 0x1_c000_0000)];
        let all = |bits32: bool, r: &BootResult| {
            let mut f = evaluate_arm(bits32, r, &ram, &ARM_RAM1_MACHINE);
            f.extend(evaluate_ram1(bits32, r, bytes));
            f
        };
        let ok = ram1_reports(|l| l);
        assert_eq!(all(true, &ok), Vec::<String>::new());
        let fails = |bits32: bool, r: &BootResult, what: &str| {
            let f = all(bits32, r);
            assert!(f.iter().any(|x| x.contains(what)), "{what}: {f:?}");
        };
        // The second bank left out, or of another size.
        let one_bank = ram1_reports(|l| {
            if l.contains("start=0x200000000") {
                l.replace("kind=ram", "kind=hypervisor")
            } else {
                l
            }
        });
        fails(true, &one_bank, "the domU's RAM banks are");
        let short =
            ram1_reports(|l| l.replace("end=0x208000000 kind=ram", "end=0x204000000 kind=ram"));
        fails(true, &short, "the domU's RAM banks are");
        // The buffer's GFNs below 4 GiB (in RAM0).
        let low_gfn = ram1_reports(|l| l.replace("gpa=0x207e00000", "gpa=0xffc00000"));
        fails(true, &low_gfn, "the buffer's GFNs start at");
        // The ballooned extents in RAM0, or not reported.
        let low_balloon = ram1_reports(|l| l.replace("low=0x204100000", "low=0xfc100000"));
        fails(true, &low_balloon, "the ballooned extents lie in");
        let none = ram1_reports(|l| l.replace("phase=first", "phase=other"));
        fails(true, &none, "no ballooned range");
        // The GFN taken for the machine address: above 4 GiB with bits 32.
        let gfn_bus = ram1_reports(|l| {
            l.replace(
                "first=0xbfe00000 last=0xbffff000",
                "first=0x207e00000 last=0x207fff000",
            )
            .replace("machine=0xbfe00000", "machine=0x207e00000")
        });
        fails(true, &gfn_bus, "contig-bits=32 but the buffer is at");
        // Without bits the machine address must be above 4 GiB (measured
        // 0x1b7e00000); the balloon is not asked for.
        let nobits = ram1_reports(|l| {
            l.replace(
                "first=0xbfe00000 last=0xbffff000",
                "first=0x1b7e00000 last=0x1b7fff000",
            )
            .replace("machine=0xbfe00000", "machine=0x1b7e00000")
        });
        assert_eq!(all(false, &nobits), Vec::<String>::new());
        fails(false, &ok, "the populate without bits came from");
    }

    /// The RAM1 scenarios' identity-map checks (every page of both banks
    /// kept, everything else up to 511 GiB unmapped in three runs) pass on
    /// the measured report and fail on one that left RAM1 out.
    #[test]
    fn ram1_identity_checks() {
        let s = scenarios()
            .into_iter()
            .find(|s| s.name == ARM_RAM1_NAMES[1])
            .unwrap();
        let trim = |l: &str| {
            let f = crate::scenarios::evaluate(&s, &domu(&[l.to_string()]));
            f.into_iter()
                .filter(|x| x.contains("identity-trim"))
                .collect::<Vec<_>>()
        };
        // Measured.
        assert_eq!(
            trim("report: identity-trim ranges=3 frames=133136384 root_switches=1 kept_mapped=yes kept=819200 unmapped_at_boot=0 others_unmapped=yes sampled=260042"),
            Vec::<String>::new()
        );
        // RAM1's 128 MiB unmapped with the rest above RAM0 (the 128 MiB
        // domU's shape scaled to RAM0).
        let f = trim("report: identity-trim ranges=2 frames=133169152 root_switches=1 kept_mapped=yes kept=786432 unmapped_at_boot=0 others_unmapped=yes sampled=260042");
        for key in ["ranges=2", "frames=133169152", "kept=786432"] {
            assert!(f.iter().any(|x| x.contains(key)), "{key}: {f:?}");
        }
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
