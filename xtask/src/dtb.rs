//! The aarch64 device tree: QEMU's own `virt` tree, dumped once per boot
//! and extended under `/chosen` with Xen's command line and the dom0less
//! nodes that tell Xen which modules are dom0's kernel and which are domUs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::run_checked;

/// QEMU's machine, CPU and memory for every aarch64 boot (the dumped tree
/// must describe exactly the machine that then boots).
pub const MACHINE: &str = "virt,virtualization=on,gic-version=3";
/// The other machine-shaping arguments, for a machine with `ram_mib` MiB of
/// RAM (at 1 GiB, QEMU's `virt` layout).
pub fn machine_args(ram_mib: u64) -> Vec<String> {
    ["-cpu", "cortex-a57", "-smp", "1", "-m"]
        .iter()
        .map(|s| s.to_string())
        .chain([ram_mib.to_string()])
        .collect()
}

/// Where dom0's kernel is loaded.
pub const DOM0_ADDR: u64 = 0x4900_0000;
/// Where the first domU's kernel is loaded.
pub const DOMU_ADDR: u64 = 0x4a00_0000;

/// One boot module: a kernel image QEMU loads at `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Guest-physical load address.
    pub addr: u64,
    /// The image's size in bytes.
    pub size: u64,
    /// The kernel's command line.
    pub bootargs: String,
}

/// A dom0less domU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomU {
    /// Node name (`domU1`); dom0less domains get ids 1, 2, ... in tree order.
    pub name: String,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Its kernel.
    pub kernel: Module,
}

/// What goes under `/chosen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Xen's command line (`xen,xen-bootargs`).
    pub xen_bootargs: String,
    /// Dom0's kernel, if there is a dom0.
    pub dom0: Option<Module>,
    /// The dom0less domUs.
    pub domus: Vec<DomU>,
}

/// Quote a DTS string, refusing what would need escaping.
fn dts_string(s: &str) -> Result<String> {
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '"' | '\\') || c.is_control())
    {
        bail!("{c:?} is not allowed in a device-tree string (in `{s}`)");
    }
    Ok(format!("\"{s}\""))
}

fn module_node(out: &mut String, indent: &str, m: &Module) -> Result<()> {
    let (hi, lo) = (m.addr >> 32, m.addr & 0xffff_ffff);
    let (shi, slo) = (m.size >> 32, m.size & 0xffff_ffff);
    writeln!(out, "{indent}module@{:x} {{", m.addr)?;
    writeln!(
        out,
        "{indent}\tcompatible = \"multiboot,kernel\", \"multiboot,module\";"
    )?;
    writeln!(out, "{indent}\treg = <{hi:#x} {lo:#x} {shi:#x} {slo:#x}>;")?;
    writeln!(out, "{indent}\tbootargs = {};", dts_string(&m.bootargs)?)?;
    writeln!(out, "{indent}}};")?;
    Ok(())
}

/// The DTS text that, appended to QEMU's decompiled tree, adds `chosen`'s
/// properties and nodes (a second `/ { chosen { ... }; };` block merges into
/// the first one).
pub fn chosen_overlay(c: &Chosen) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "\n/* added by xtask */\n/ {{\n\tchosen {{")?;
    writeln!(s, "\t\t#address-cells = <0x2>;\n\t\t#size-cells = <0x2>;")?;
    writeln!(
        s,
        "\t\txen,xen-bootargs = {};",
        dts_string(&c.xen_bootargs)?
    )?;
    if let Some(m) = &c.dom0 {
        module_node(&mut s, "\t\t", m)?;
    }
    for d in &c.domus {
        if d.name.is_empty() || !d.name.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("bad domU node name `{}`", d.name);
        }
        writeln!(s, "\t\t{} {{", d.name)?;
        writeln!(s, "\t\t\tcompatible = \"xen,domain\";")?;
        writeln!(
            s,
            "\t\t\t#address-cells = <0x2>;\n\t\t\t#size-cells = <0x2>;"
        )?;
        writeln!(
            s,
            "\t\t\tmemory = <{:#x} {:#x}>;",
            d.memory_kib >> 32,
            d.memory_kib & 0xffff_ffff
        )?;
        writeln!(s, "\t\t\tcpus = <{:#x}>;", d.cpus)?;
        writeln!(s, "\t\t\txen,enhanced = \"no-xenstore\";")?;
        // A virtual PL011 with its back end in Xen: the domU's serial input
        // (CTRL-a rotates Xen's input to it), which the agent's xen-view
        // pauses read.
        writeln!(s, "\t\t\tvpl011;")?;
        module_node(&mut s, "\t\t\t", &d.kernel)?;
        writeln!(s, "\t\t}};")?;
    }
    writeln!(s, "\t}};\n}};")?;
    Ok(s)
}

/// QEMU's decompiled tree plus the `/chosen` additions.
pub fn edit_dts(base: &str, c: &Chosen) -> Result<String> {
    let base = base.trim_end();
    if !base.starts_with("/dts-v1/;") {
        bail!("the decompiled device tree does not start with /dts-v1/;");
    }
    Ok(format!("{base}\n{}", chosen_overlay(c)?))
}

/// Dump QEMU's `virt` tree (for a machine with `ram_mib` MiB), add `c` to
/// it, compile it: returns the DTB path (in `work`; QEMU's own tree stays
/// there as `virt.dts`).
pub fn make_dtb(qemu: &Path, dtc: &Path, work: &Path, ram_mib: u64, c: &Chosen) -> Result<PathBuf> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let virt = work.join("virt.dtb");
    let mut dump = Command::new(qemu);
    dump.arg("-machine")
        .arg(format!("{MACHINE},dumpdtb={}", virt.display()))
        .args(machine_args(ram_mib))
        .args(["-nographic", "-display", "none"])
        .stdin(Stdio::null());
    if virt.to_string_lossy().contains(',') {
        bail!(
            "the work directory {} contains a comma, which QEMU's -machine option cannot take",
            work.display()
        );
    }
    run_checked(&mut dump, "dumping QEMU's virt device tree")?;
    let base_dts = work.join("virt.dts");
    run_checked(
        Command::new(dtc)
            .args(["-q", "-I", "dtb", "-O", "dts", "-o"])
            .arg(&base_dts)
            .arg(&virt),
        "decompiling QEMU's device tree with dtc",
    )?;
    let base = std::fs::read_to_string(&base_dts)
        .with_context(|| format!("reading {}", base_dts.display()))?;
    let dts = work.join("xen.dts");
    std::fs::write(&dts, edit_dts(&base, c)?)
        .with_context(|| format!("writing {}", dts.display()))?;
    let dtb = work.join("xen.dtb");
    run_checked(
        Command::new(dtc)
            .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
            .arg(&dtb)
            .arg(&dts),
        "compiling the device tree for Xen with dtc",
    )?;
    Ok(dtb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Chosen {
        Chosen {
            xen_bootargs: "console=dtuart dtuart=/pl011@9000000 dom0_mem=32M".into(),
            dom0: Some(Module {
                addr: DOM0_ADDR,
                size: 0x12345,
                bootargs: "domid=0 peer=1".into(),
            }),
            domus: vec![DomU {
                name: "domU1".into(),
                memory_kib: 131072,
                cpus: 1,
                kernel: Module {
                    addr: DOMU_ADDR,
                    size: 0x2000,
                    bootargs: "domid=1 exit=shutdown".into(),
                },
            }],
        }
    }

    const BASE: &str = "/dts-v1/;\n\n/ {\n\tcompatible = \"linux,dummy-virt\";\n\tchosen {\n\t\tstdout-path = \"/pl011@9000000\";\n\t};\n};\n";

    #[test]
    fn overlay_text() {
        let dts = edit_dts(BASE, &sample()).unwrap();
        assert!(dts.starts_with(BASE.trim_end()));
        for want in [
            "xen,xen-bootargs = \"console=dtuart dtuart=/pl011@9000000 dom0_mem=32M\";",
            "module@49000000 {",
            "reg = <0x0 0x49000000 0x0 0x12345>;",
            "bootargs = \"domid=0 peer=1\";",
            "domU1 {",
            "compatible = \"xen,domain\";",
            "memory = <0x0 0x20000>;",
            "cpus = <0x1>;",
            "xen,enhanced = \"no-xenstore\";",
            "vpl011;",
            "module@4a000000 {",
            "reg = <0x0 0x4a000000 0x0 0x2000>;",
            "bootargs = \"domid=1 exit=shutdown\";",
        ] {
            assert!(dts.contains(want), "missing {want} in\n{dts}");
        }
        // Braces balance.
        assert_eq!(dts.matches('{').count(), dts.matches('}').count());
    }

    #[test]
    fn dom0_only_and_domu_only() {
        let mut c = sample();
        c.domus.clear();
        let s = chosen_overlay(&c).unwrap();
        assert!(s.contains("module@49000000") && !s.contains("domU1"));
        let mut c = sample();
        c.dom0 = None;
        let s = chosen_overlay(&c).unwrap();
        assert!(!s.contains("module@49000000") && s.contains("module@4a000000"));
    }

    #[test]
    fn rejects_unquotable_strings() {
        let mut c = sample();
        c.dom0.as_mut().unwrap().bootargs = "a\"b".into();
        assert!(chosen_overlay(&c).is_err());
        let mut c = sample();
        c.xen_bootargs = "a\nb".into();
        assert!(chosen_overlay(&c).is_err());
        let mut c = sample();
        c.domus[0].name = "dom U".into();
        assert!(chosen_overlay(&c).is_err());
        assert!(edit_dts("garbage", &sample()).is_err());
    }

    /// With dtc at hand, the edited tree must compile and decompile to the
    /// merged /chosen node.
    #[test]
    fn compiles_with_dtc_when_available() {
        let dtc = std::env::var_os("XENMEM_DTC").unwrap_or_else(|| "dtc".into());
        if Command::new(&dtc).arg("--version").output().is_err() {
            eprintln!("dtc not found: only the text checks ran");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-dtb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("t.dts");
        std::fs::write(&src, edit_dts(BASE, &sample()).unwrap()).unwrap();
        let out = Command::new(&dtc)
            .args(["-q", "-I", "dts", "-O", "dts"])
            .arg(&src)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let merged = String::from_utf8(out.stdout).unwrap();
        // One chosen node holding both the old and the new properties.
        assert_eq!(merged.matches("chosen {").count(), 1, "{merged}");
        assert!(merged.contains("stdout-path"));
        assert!(merged.contains("xen,xen-bootargs"));
        assert!(merged.contains("module@4a000000"));
    }
}
