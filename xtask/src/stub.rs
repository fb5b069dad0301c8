//! The firmware-like example `xenmem-stub` (`examples/stub`): building it,
//! the image Xen loads, its boot scenarios under real Xen (`x86_64-stub`,
//! `aarch64-stub` in `cargo xtask test`), and the size goals of
//! `cargo xtask bench --only image-size` (the stub's and the agent's).
//!
//! The stub prints plain text lines through Xen's console, not defmt
//! frames: the decoder passes them through as Xen's own text, and the boot
//! log keeps them. The scenario reads them back from the log:
//! `stub: <step> key=value ...` (the same `key=value` syntax as the agent's
//! reports), `stub: verdict PASS|FAIL`, and `stub: FAIL ...`, `stub: panic:
//! ...`, `stub: exception ...`, `stub: boot: ...` for what went wrong.
//! Each check compares what the stub said with what the runner configured
//! (dom0's memory, the domU's memory and domid) or what Xen printed itself
//! (on aarch64, the domU's RAM bank).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

use crate::agent::{self, Agent};
use crate::boot::{self, Arch, BootSpec, Exit, Machine, Mode, Show};
use crate::image;
use crate::report::{parse_number, parse_report, Report};
use crate::setup::Env;

/// The stub's package and binary name.
pub const BIN: &str = "xenmem-stub";
/// The cargo profile it is built with (root `Cargo.toml`: `opt-level = "z"`,
/// LTO, overflow checks on).
pub const PROFILE: &str = "stub";

/// Pages the stub balloons out and back (16 MiB).
const BALLOON_PAGES: u64 = 4096;
/// Pages of its contiguous buffer (2 MiB).
const CONTIG_PAGES: u64 = 512;
/// The first grant reference a fresh grant table hands out: 0..8 are
/// reserved (`GNTTAB_NR_RESERVED_ENTRIES`), and xenmem takes the lowest free.
const FIRST_GRANT_REF: u64 = 8;
/// The steps the stub says, in order, before its verdict.
const STEPS: [&str; 6] = [
    "table",
    "balloon",
    "contig",
    "grant",
    "accounting",
    "footprint",
];

// ---- building -----------------------------------------------------------------

/// Build the stub for `arch` (profile [`PROFILE`]) and write the image Xen
/// loads beside the ELF: a stripped copy of the ELF on x86_64, a flat
/// `Image` on aarch64.
pub fn build(arch: Arch) -> Result<Agent> {
    eprintln!("xtask: building {BIN} for {}", arch.triple());
    let out = agent::cargo()
        .args(["build", "--profile", PROFILE, "--target", arch.triple()])
        .args(["-p", BIN, "--bin", BIN])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building {BIN} for {} failed ({}); see the compiler output above",
            arch.triple(),
            out.status
        );
    }
    let elf_path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == BIN)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo build reported no {BIN} executable"))?;
    let elf = std::fs::read(&elf_path)
        .with_context(|| format!("reading the stub ELF {}", elf_path.display()))?;
    let (bytes, name) = match arch {
        Arch::X86_64 => {
            let s = stripped_elf(&elf)?;
            image::check_x86_64(&s).with_context(|| format!("checking {}", elf_path.display()))?;
            (s, format!("{BIN}.stripped"))
        }
        Arch::Aarch64 => (image::arm64_file_image(&elf)?, format!("{BIN}.Image")),
    };
    let boot_image = elf_path.with_file_name(name);
    std::fs::write(&boot_image, bytes)
        .with_context(|| format!("writing {}", boot_image.display()))?;
    Ok(Agent {
        arch,
        elf_path,
        elf,
        boot_image,
    })
}

/// The ELF header's fields this module needs: (program headers, section
/// header fields' offsets are fixed for ELF64).
fn elf64(bytes: &[u8]) -> Result<ElfFile64<'_, Endianness>> {
    ElfFile64::parse(bytes).context("not a 64-bit ELF file")
}

/// Where the last byte any program header describes ends in the file.
fn segments_end(bytes: &[u8]) -> Result<usize> {
    let file = elf64(bytes)?;
    let (hdr, e) = (file.elf_header(), file.endian());
    let mut end = hdr.e_phoff(e) + u64::from(hdr.e_phnum(e)) * u64::from(hdr.e_phentsize(e));
    for ph in file.elf_program_headers() {
        let seg_end = ph
            .p_offset(e)
            .checked_add(ph.p_filesz(e))
            .context("a program header's file range wraps around")?;
        end = end.max(seg_end);
    }
    ensure!(
        end <= bytes.len() as u64,
        "the program headers describe {end} bytes, the file has {}",
        bytes.len()
    );
    Ok(end as usize)
}

/// A copy of an executable ELF with nothing but what its program headers
/// describe (the ELF header, the program headers and every segment's file
/// bytes): no section headers, no symbols, no debug info, no `.defmt`.
/// What a loader reads is byte for byte the same. Linkers put the
/// non-allocated sections and the section headers after the segments; a
/// file where they are not is refused.
pub fn stripped_elf(bytes: &[u8]) -> Result<Vec<u8>> {
    let end = segments_end(bytes)?;
    let file = elf64(bytes)?;
    let (hdr, e) = (file.elf_header(), file.endian());
    ensure!(
        hdr.e_type(e) == elf::ET_EXEC,
        "not an executable ELF (e_type {})",
        hdr.e_type(e)
    );
    ensure!(
        e == Endianness::Little,
        "a big-endian ELF: only little-endian targets are built"
    );
    let shoff = hdr.e_shoff(e);
    ensure!(
        shoff == 0 || shoff >= end as u64,
        "the section headers (at {shoff:#x}) lie among the segments (which end at {end:#x})"
    );
    let mut out = bytes[..end].to_vec();
    // e_shoff (8 bytes at 0x28), e_shnum (2 at 0x3c), e_shstrndx (2 at 0x3e).
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(out)
}

/// How much memory an ELF's loadable segments span: (with `.bss`, up to
/// the end of the last segment's file bytes).
fn memory_span(bytes: &[u8]) -> Result<(u64, u64)> {
    let file = elf64(bytes)?;
    let e = file.endian();
    let loads = file
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == elf::PT_LOAD);
    let lo = loads.clone().map(|ph| ph.p_vaddr(e)).min().unwrap_or(0);
    let end = |size: fn(&elf::ProgramHeader64<Endianness>, Endianness) -> u64| {
        loads
            .clone()
            .map(|ph| ph.p_vaddr(e) + size(ph, e))
            .max()
            .unwrap_or(0)
            - lo
    };
    Ok((end(|ph, e| ph.p_memsz(e)), end(|ph, e| ph.p_filesz(e))))
}

// ---- scenarios -----------------------------------------------------------------

/// A boot of the stub under Xen.
#[derive(Clone, Copy, Debug)]
pub struct StubScenario {
    /// Its name (`--only`, the log file).
    pub name: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// How Xen runs it.
    pub mode: Mode,
}

/// The stub's scenarios: dom0 on x86_64; a dom0less domU on aarch64 (an Arm
/// dom0 is direct-mapped, and Xen does not balloon it: see
/// `ReservationError::DirectMapped`).
pub fn scenarios() -> Vec<StubScenario> {
    vec![
        StubScenario {
            name: "x86_64-stub",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
        },
        StubScenario {
            name: "aarch64-stub",
            arch: Arch::Aarch64,
            mode: Mode::DomU,
        },
    ]
}

/// How a stub scenario went.
#[derive(Debug)]
pub struct StubOutcome {
    /// What failed (empty: passed).
    pub failures: Vec<String>,
    /// The boot log.
    pub log_path: PathBuf,
    /// How long the boot took.
    pub elapsed: Duration,
}

/// A defmt table with no entries: the stub sends no defmt frames, so the
/// decoder only ever passes its lines through as text.
fn empty_table() -> Result<defmt_decoder::Table> {
    serde_json::from_str(r#"{"timestamp":null,"entries":{},"bitflags":{},"encoding":"Rzcobs"}"#)
        .context("making an empty defmt table")
}

/// Boot every scenario in `which` (building the stub once per
/// architecture) and check each.
pub fn test_all(
    env: &Env,
    which: &[StubScenario],
    timeout: Duration,
    verbose: bool,
) -> Vec<(&'static str, Result<StubOutcome>)> {
    let mut built: Vec<(Arch, Result<Agent, String>)> = Vec::new();
    let mut out = Vec::new();
    for s in which {
        if !built.iter().any(|(a, _)| *a == s.arch) {
            built.push((s.arch, build(s.arch).map_err(|e| format!("{e:#}"))));
        }
        let Some((_, b)) = built.iter().find(|(a, _)| *a == s.arch) else {
            continue;
        };
        let r = match b {
            Ok(stub) => test_one(env, s, stub, timeout, verbose),
            Err(e) => Err(anyhow::anyhow!("stub build failed: {e}")),
        };
        out.push((s.name, r));
    }
    out
}

fn test_one(
    env: &Env,
    s: &StubScenario,
    stub: &Agent,
    timeout: Duration,
    verbose: bool,
) -> Result<StubOutcome> {
    let spec = BootSpec {
        arch: s.arch,
        mode: s.mode,
        agent_opts: Vec::new(),
        timeout,
        log_path: agent::target_dir()
            .join("xenmem-logs")
            .join(format!("test-{}.log", s.name)),
        work_dir: agent::target_dir()
            .join("xenmem-work")
            .join(format!("test-{}", s.name)),
        show: if verbose { Show::All } else { Show::Nothing },
    };
    if verbose {
        println!("xtask: scenario {}", s.name);
    }
    let machine = Machine::default();
    let res = boot::boot_on(env, &spec, stub, &empty_table()?, &machine)?;
    let log = std::fs::read_to_string(&res.log_path)
        .with_context(|| format!("reading {}", res.log_path.display()))?;
    let lines: Vec<&str> = log.lines().collect();
    let mut failures = check(s, &machine, &res.exit, &lines);
    if !failures.is_empty() && !res.qemu_stderr.is_empty() {
        failures.push(format!("QEMU said: {}", res.qemu_stderr.join("\n")));
    }
    Ok(StubOutcome {
        failures,
        log_path: res.log_path,
        elapsed: res.elapsed,
    })
}

/// What the stub said, parsed.
#[derive(Debug, Default)]
struct Said {
    /// `stub: <step> key=value ...`, in order.
    steps: Vec<Report>,
    /// `stub: verdict X` (the last).
    verdict: Option<String>,
    /// Lines that say something went wrong, and lines that do not parse.
    trouble: Vec<String>,
}

impl Said {
    fn parse(lines: &[&str]) -> Said {
        let mut said = Said::default();
        for line in lines {
            if line.starts_with("xtask:") {
                continue;
            }
            let Some(at) = line.find("stub: ") else {
                continue;
            };
            let rest = line[at + "stub: ".len()..].trim();
            if let Some(v) = rest.strip_prefix("verdict ") {
                said.verdict = Some(v.trim().to_string());
            } else if ["FAIL", "panic:", "exception", "boot:"]
                .iter()
                .any(|p| rest.starts_with(p))
            {
                said.trouble.push(rest.to_string());
            } else {
                match parse_report(rest) {
                    Ok(r) => said.steps.push(r),
                    Err(e) => said.trouble.push(format!("unparsed line ({e}): {rest}")),
                }
            }
        }
        said
    }

    fn step(&self, name: &str) -> Option<&Report> {
        self.steps.iter().find(|r| r.topic == name)
    }
}

/// The numbers a check needs from one step: every `keys` field as a number.
fn nums<const N: usize>(said: &Said, step: &str, keys: [&str; N]) -> Result<[u64; N], String> {
    let r = said
        .step(step)
        .ok_or_else(|| format!("no `stub: {step}` line"))?;
    let mut out = [0; N];
    for (o, k) in out.iter_mut().zip(keys) {
        *o = r
            .get(k)
            .and_then(parse_number)
            .ok_or_else(|| format!("`stub: {step}` has no number {k}= ({r})"))?;
    }
    Ok(out)
}

/// Guest-physical RAM ranges `[start, end)` Xen itself printed for domain
/// `dom` (Arm: `(XEN) dN BANK[i] 0xSTART-0xEND (SIZE)`).
fn xen_banks(lines: &[&str], dom: u16) -> Vec<(u64, u64)> {
    let tag = format!("d{dom} BANK[");
    lines
        .iter()
        .filter(|l| l.starts_with("(XEN)"))
        .filter_map(|l| {
            let rest = &l[l.find(&tag)? + tag.len()..];
            let range = rest.split_whitespace().nth(1)?;
            let (a, b) = range.split_once('-')?;
            Some((parse_number(a)?, parse_number(b)?))
        })
        .collect()
}

/// What the runner knows of the domain the stub ran in, not from the stub.
struct Known {
    /// Pages of RAM configured (x86: `dom0_mem`; Arm: the domU's `memory`).
    pages: u64,
    /// The domain id.
    domid: u64,
    /// Where its RAM is: Xen's own banks (Arm), or `[0, dom0_mem + 1 MiB)`
    /// on x86 (dom0's e820 RAM lies below its memory plus the legacy hole
    /// under 1 MiB).
    ram: Vec<(u64, u64)>,
}

fn known(s: &StubScenario, machine: &Machine, lines: &[&str]) -> Result<Known, String> {
    Ok(match s.arch {
        Arch::X86_64 => Known {
            pages: machine.x86_dom0_mib * 256,
            domid: 0,
            ram: vec![(0, (machine.x86_dom0_mib + 1) << 20)],
        },
        Arch::Aarch64 => {
            let banks = xen_banks(lines, 1);
            let size: u64 = banks.iter().map(|(a, b)| b - a).sum();
            if banks.is_empty() || size != machine.domu_kib * 1024 {
                return Err(format!(
                    "Xen's log gives d1 the RAM banks {banks:x?} ({size} bytes), not the {} KiB \
                     the runner configured",
                    machine.domu_kib
                ));
            }
            Known {
                pages: machine.domu_kib / 4,
                domid: 1,
                ram: banks,
            }
        }
    })
}

fn in_ram(k: &Known, start: u64, end: u64) -> bool {
    k.ram.iter().any(|&(a, b)| a <= start && end <= b)
}

fn outside_ram(k: &Known, start: u64, end: u64) -> bool {
    k.ram.iter().all(|&(a, b)| end <= a || b <= start)
}

/// Every check of a stub boot; an empty list is a pass.
fn check(s: &StubScenario, machine: &Machine, exit: &Exit, lines: &[&str]) -> Vec<String> {
    let said = Said::parse(lines);
    let mut failures = Vec::new();
    let mut fail = |name: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    };
    // The stub has no IDT on x86: a CPU exception is a triple fault, which
    // Xen reports (with the registers) and turns into a reboot.
    let triple = lines
        .iter()
        .find(|l| l.starts_with("(XEN)") && l.contains("Triple fault"))
        .map_or(String::new(), |l| {
            format!(" (Xen: {}; its register dump is in the log)", l.trim())
        });
    fail(
        "exit",
        match (exit, said.verdict.as_deref()) {
            (Exit::Pass, Some("PASS")) => Ok(()),
            (e, v) => Err(format!(
                "{e}; the stub's verdict: {}{triple}",
                v.unwrap_or("none printed")
            )),
        },
    );
    fail("steps", check_steps(&said));
    let k = match known(s, machine, lines) {
        Ok(k) => k,
        Err(e) => {
            failures.push(format!("xen: {e}"));
            return failures;
        }
    };
    fail("table", check_table(&said, &k));
    fail("balloon", check_balloon(&said, &k));
    fail("contig", check_contig(&said, &k));
    fail("grant", check_grant(&said, &k));
    fail("accounting", check_accounting(&said, &k));
    failures
}

/// Each step said once, in order, and nothing went wrong.
fn check_steps(said: &Said) -> Result<(), String> {
    if let Some(t) = said.trouble.first() {
        return Err(format!(
            "the stub said `{t}`{}",
            match said.trouble.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        ));
    }
    let order: Vec<&str> = said.steps.iter().map(|r| r.topic.as_str()).collect();
    if order != STEPS {
        return Err(format!("steps said {order:?}, not {STEPS:?}"));
    }
    Ok(())
}

/// The table's RAM (plus pages only partly RAM) is the memory the runner
/// gave the domain, and Xen's count says the same.
fn check_table(said: &Said, k: &Known) -> Result<(), String> {
    let [ram, partial, xen] = nums(said, "table", ["ram_pages", "partial", "xen"])?;
    if ram + partial != k.pages || xen != k.pages {
        return Err(format!(
            "ram_pages={ram} + partial={partial} and xen={xen}, where the domain was given {} pages",
            k.pages
        ));
    }
    Ok(())
}

/// 16 MiB out and 16 MiB back, from and to the configured memory.
fn check_balloon(said: &Said, k: &Known) -> Result<(), String> {
    let [out, back, before, mid, after, ballooned] = nums(
        said,
        "balloon",
        [
            "out",
            "back",
            "xen_before",
            "xen_out",
            "xen_after",
            "table_ballooned",
        ],
    )?;
    let want = [
        BALLOON_PAGES,
        BALLOON_PAGES,
        k.pages,
        k.pages - BALLOON_PAGES,
        k.pages,
        BALLOON_PAGES,
    ];
    if [out, back, before, mid, after, ballooned] != want {
        return Err(format!(
            "out={out} back={back} xen_before={before} xen_out={mid} xen_after={after} \
             table_ballooned={ballooned}; expected {want:?} for a domain of {} pages and 16 MiB",
            k.pages
        ));
    }
    Ok(())
}

/// 512 naturally aligned pages inside the domain's RAM, Xen's count
/// unchanged.
fn check_contig(said: &Said, k: &Known) -> Result<(), String> {
    let [gfn, pages, xen] = nums(said, "contig", ["gfn", "pages", "xen"])?;
    let (start, end) = (gfn << 12, (gfn + pages) << 12);
    if pages != CONTIG_PAGES || gfn % CONTIG_PAGES != 0 || !in_ram(k, start, end) || xen != k.pages
    {
        return Err(format!(
            "gfn={gfn:#x} pages={pages} xen={xen}: not {CONTIG_PAGES} aligned pages inside the \
             domain's RAM {:x?} with {} pages counted",
            k.ram, k.pages
        ));
    }
    Ok(())
}

/// The first reference of a fresh table, for the buffer's first page, to
/// the domain itself; the table's frame outside RAM; Xen's copy through it
/// matched.
fn check_grant(said: &Said, k: &Known) -> Result<(), String> {
    let [r, dom, frame, table] = nums(said, "grant", ["ref", "dom", "frame", "table_gfn"])?;
    let [buffer] = nums(said, "contig", ["gfn"])?;
    let copy = said
        .step("grant")
        .and_then(|g| g.get("copy"))
        .unwrap_or("?");
    if r != FIRST_GRANT_REF
        || dom != k.domid
        || frame != buffer
        || !outside_ram(k, table << 12, (table + 1) << 12)
        || copy != "ok"
    {
        return Err(format!(
            "ref={r} dom={dom} frame={frame:#x} table_gfn={table:#x} copy={copy}; expected ref \
             {FIRST_GRANT_REF}, dom {}, the buffer's frame {buffer:#x}, a table frame outside \
             RAM {:x?}, copy=ok",
            k.domid, k.ram
        ));
    }
    Ok(())
}

/// At the end the table still holds exactly the configured memory.
fn check_accounting(said: &Said, k: &Known) -> Result<(), String> {
    let [ram, partial, xen] = nums(said, "accounting", ["table_ram", "partial", "xen"])?;
    if ram + partial != k.pages || xen != k.pages {
        return Err(format!(
            "table_ram={ram} + partial={partial}, xen={xen}; the domain was given {} pages",
            k.pages
        ));
    }
    Ok(())
}

// ---- sizes (cargo xtask bench --only image-size) ------------------------------

/// The `--only` name of the size goals.
pub const IMAGE_SIZE: &str = "image-size";
/// Goal: the stub's image (what Xen loads) at most this many bytes.
const STUB_GOAL: u64 = 128 << 10;
/// Goal: the agent's image (what Xen loads) at most this many bytes.
const AGENT_GOAL: u64 = 512 << 10;

/// One row of the size table.
struct SizeRow {
    what: &'static str,
    arch: Arch,
    /// The file Xen loads.
    file: u64,
    /// The ELF with debug info.
    elf: u64,
    /// What the image occupies in memory (`.bss` included).
    memory: u64,
    /// The same without `.bss`: code and data.
    loaded: u64,
    goal: u64,
}

fn size_row(what: &'static str, a: &Agent, goal: u64) -> Result<SizeRow> {
    let (memory, loaded) = memory_span(&a.elf)?;
    Ok(SizeRow {
        what,
        arch: a.arch,
        file: std::fs::metadata(&a.boot_image)
            .with_context(|| format!("reading {}", a.boot_image.display()))?
            .len(),
        elf: a.elf.len() as u64,
        memory,
        loaded,
        goal,
    })
}

fn kib(n: u64) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// Build the stub and the agent for both architectures and render their
/// image sizes against the goals (markdown; a missed goal says by how much).
pub fn size_report() -> Result<String> {
    let mut rows = Vec::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        rows.push(size_row("xenmem-stub", &build(arch)?, STUB_GOAL)?);
        rows.push(size_row("xenmem-agent", &agent::build(arch)?, AGENT_GOAL)?);
    }
    let mut o = String::from(
        "\n## Image sizes\n\nWhat Xen loads: x86_64 a stripped ELF (segments only), aarch64 a \
         flat `Image`. The stub's Image leaves `.bss` out (its header's image_size covers \
         it), the agent's carries it as zeros.\n\n\
         | image | arch | file Xen loads | goal | status | code and data | in memory (with .bss) | ELF with debug info |\n\
         |---|---|--:|--:|---|--:|--:|--:|\n",
    );
    let mut misses = Vec::new();
    for r in &rows {
        let status = if r.file <= r.goal {
            format!("PASS (x{:.2} to spare)", r.goal as f64 / r.file as f64)
        } else {
            let s = format!(
                "MISS (off by x{:.2}, {} over)",
                r.file as f64 / r.goal as f64,
                kib(r.file - r.goal)
            );
            misses.push(format!("{} {}: {s}", r.what, r.arch));
            s
        };
        o.push_str(&format!(
            "| {} | {} | {} | ≤ {} | {status} | {} | {} | {} |\n",
            r.what,
            r.arch,
            kib(r.file),
            kib(r.goal),
            kib(r.loaded),
            kib(r.memory),
            kib(r.elf)
        ));
    }
    if !misses.is_empty() {
        o.push_str("\nMissed size goals:\n");
        for m in &misses {
            o.push_str(&format!("- {m}\n"));
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::elf64 as make_elf;

    #[test]
    fn strips_everything_but_the_segments() {
        let mut elf = make_elf(
            elf::EM_X86_64,
            &[(elf::PT_LOAD, 0x100000, &[1, 2, 3, 4], 0x100)],
        );
        let loaded = elf.len();
        // After the segments: a string table (one empty name), debug-ish
        // bytes, and two section headers (the null one and the strings').
        let strtab = elf.len() as u64;
        elf.push(0);
        elf.extend_from_slice(&[0xdb; 99]);
        let shoff = elf.len() as u64;
        elf.extend_from_slice(&[0; 64]);
        let mut strings = [0u8; 64];
        strings[4..8].copy_from_slice(&elf::SHT_STRTAB.to_le_bytes());
        strings[24..32].copy_from_slice(&strtab.to_le_bytes());
        strings[32..40].copy_from_slice(&1u64.to_le_bytes());
        elf.extend_from_slice(&strings);
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        assert!(ElfFile64::<Endianness>::parse(&*elf).is_ok());
        let s = stripped_elf(&elf).unwrap();
        assert_eq!(s.len(), loaded);
        assert_eq!(&s[loaded - 4..], &[1, 2, 3, 4]);
        assert_eq!(&s[0x28..0x30], &[0; 8]);
        assert_eq!(&s[0x3c..0x40], &[0; 4]);
        // Section headers among the segments: refused.
        let mut bad = elf.clone();
        bad[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
        assert!(stripped_elf(&bad).is_err());
    }

    #[test]
    fn the_arm_image_ends_with_the_file_contents() {
        let mut text = vec![0xaa; 64];
        text[56..60].copy_from_slice(b"ARM\x64");
        let elf = make_elf(
            elf::EM_AARCH64,
            &[
                (elf::PT_LOAD, 0, &text, 64),
                (elf::PT_LOAD, 0x1000, &[7, 7], 0x8000),
            ],
        );
        let img = image::arm64_file_image(&elf).unwrap();
        assert_eq!(img.len(), 0x1002);
        assert_eq!(&img[0x1000..], &[7, 7]);
        assert_eq!(memory_span(&elf).unwrap(), (0x9000, 0x1002));
    }

    /// A boot log of a passing x86_64 stub (dom0, 256 MiB).
    const X86_PASS: &str = "\
(XEN) [    0.98] Freed 656kB init memory
stub: table regions=16 ram_pages=65535 partial=1 xen=65536 map=e820 holes=16515072
stub: balloon out=4096 back=4096 xen_before=65536 xen_out=61440 xen_after=65536 table_ballooned=4096 hypercalls=5
stub: contig gfn=0xfe00 pages=512 method=repopulate mfn=unknown xen=65536
stub: grant ref=8 dom=0 frame=0xfe00 table_gfn=0x100000 table_kind=grant copy=ok
stub: accounting table_ram=65535 partial=1 xen=65536
stub: footprint image_bytes=253952 heap_peak=20000 heap_size=65536 stack_used=9000 stack_size=32768
stub: verdict PASS";

    fn run_checks(s: &StubScenario, exit: Exit, log: &str) -> Vec<String> {
        let lines: Vec<&str> = log.lines().collect();
        check(s, &Machine::default(), &exit, &lines)
    }

    #[test]
    fn a_good_x86_log_passes_and_each_lie_fails_its_check() {
        let s = scenarios()[0];
        assert_eq!(run_checks(&s, Exit::Pass, X86_PASS), Vec::<String>::new());
        let cases = [
            ("exit", Exit::Fail, X86_PASS.to_string()),
            (
                "exit",
                Exit::Pass,
                X86_PASS.replace("verdict PASS", "verdict FAIL"),
            ),
            (
                "steps",
                Exit::Pass,
                X86_PASS.replace("stub: contig", "stub: contiguous"),
            ),
            (
                "steps",
                Exit::Pass,
                X86_PASS.replace("stub: verdict", "stub: FAIL oops\nstub: verdict"),
            ),
            (
                "table",
                Exit::Pass,
                X86_PASS.replace("ram_pages=65535", "ram_pages=65534"),
            ),
            (
                "balloon",
                Exit::Pass,
                X86_PASS.replace("xen_out=61440", "xen_out=63488"),
            ),
            (
                "contig",
                Exit::Pass,
                X86_PASS.replace("pages=512", "pages=256"),
            ),
            (
                "contig",
                Exit::Pass,
                X86_PASS.replace("gfn=0xfe00 ", "gfn=0x1fe00 "),
            ),
            ("grant", Exit::Pass, X86_PASS.replace("ref=8", "ref=9")),
            (
                "grant",
                Exit::Pass,
                X86_PASS.replace("table_gfn=0x100000", "table_gfn=0x500"),
            ),
            ("grant", Exit::Pass, X86_PASS.replace("copy=ok", "copy=bad")),
            (
                "accounting",
                Exit::Pass,
                X86_PASS.replace("xen=65536\nstub: footprint", "xen=65535\nstub: footprint"),
            ),
        ];
        for (name, exit, log) in cases {
            let f = run_checks(&s, exit, &log);
            assert!(
                f.iter().any(|x| x.starts_with(&format!("{name}:"))),
                "{name}: {f:?}"
            );
        }
    }

    #[test]
    fn arm_checks_read_xen_s_banks() {
        let s = scenarios()[1];
        let log = "\
(XEN) Allocating mappings totalling 128MB for d1:
(XEN) d1 BANK[0] 0x00000040000000-0x00000048000000 (128MB)
(XEN) (d1) stub: table regions=9 ram_pages=32768 partial=0 xen=32768 map=fdt holes=1
(XEN) (d1) stub: balloon out=4096 back=4096 xen_before=32768 xen_out=28672 xen_after=32768 table_ballooned=4096 hypercalls=5
(XEN) (d1) stub: contig gfn=0x47c00 pages=512 method=repopulate mfn=unknown xen=32768
(XEN) (d1) stub: grant ref=8 dom=1 frame=0x47c00 table_gfn=0x38000 table_kind=grant copy=ok
(XEN) (d1) stub: accounting table_ram=32768 partial=0 xen=32768
(XEN) (d1) stub: footprint image_bytes=1 heap_peak=1 heap_size=1 stack_used=1 stack_size=1
(XEN) (d1) stub: verdict PASS";
        assert_eq!(
            xen_banks(&log.lines().collect::<Vec<_>>(), 1),
            [(0x4000_0000, 0x4800_0000)]
        );
        assert_eq!(run_checks(&s, Exit::Pass, log), Vec::<String>::new());
        // A buffer outside Xen's bank, a grant table inside it.
        let f = run_checks(&s, Exit::Pass, &log.replace("gfn=0x47c00 ", "gfn=0x48000 "));
        assert!(f.iter().any(|x| x.starts_with("contig:")), "{f:?}");
        let f = run_checks(
            &s,
            Exit::Pass,
            &log.replace("table_gfn=0x38000", "table_gfn=0x40000"),
        );
        assert!(f.iter().any(|x| x.starts_with("grant:")), "{f:?}");
        // Xen gave the domain other memory than configured.
        let f = run_checks(
            &s,
            Exit::Pass,
            &log.replace("0x00000048000000 (128MB)", "0x00000050000000 (256MB)"),
        );
        assert!(f.iter().any(|x| x.starts_with("xen:")), "{f:?}");
    }
}
