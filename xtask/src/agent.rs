//! Building the agent and preparing what QEMU loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::boot::Arch;
use crate::image;

/// The agent's binary name.
pub const BIN: &str = "xenmem-agent";

/// A built agent.
pub struct Agent {
    /// Its architecture.
    pub arch: Arch,
    /// The ELF cargo produced (its defmt table decodes the log).
    pub elf_path: PathBuf,
    /// The ELF's bytes.
    pub elf: Vec<u8>,
    /// What QEMU loads: the ELF stripped to its segments on x86_64, a flat
    /// Image on aarch64.
    pub boot_image: PathBuf,
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The cargo that runs us (so that the toolchain matches).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Build the agent for `arch` (release, feature `rt`) and prepare its boot
/// image.
pub fn build(arch: Arch) -> Result<Agent> {
    build_variant(arch, None)
}

/// `XENMEM_MUTANT` of the agent that is every mutant, each chosen by
/// `mutant=NAME` on its command line (see the agent's `mutant` module).
pub const RUNTIME_MUTANT: &str = "runtime";

/// [`build`], or with `mutant` the deliberately broken agent of that name
/// (`XENMEM_MUTANT`, see the agent's `mutant` module; [`RUNTIME_MUTANT`]:
/// the one `mutant=` names), built in its own target directory
/// (`target/mutants`) so that the real agent's build stays as it is.
pub fn build_variant(arch: Arch, mutant: Option<&str>) -> Result<Agent> {
    eprintln!(
        "xtask: building {BIN} for {}{}",
        arch.triple(),
        mutant.map_or(String::new(), |m| format!(" (mutant {m})"))
    );
    let mut cmd = cargo();
    match mutant {
        Some(m) => {
            cmd.env("XENMEM_MUTANT", m)
                .env("CARGO_TARGET_DIR", target_dir().join("mutants"));
        }
        None => {
            cmd.env_remove("XENMEM_MUTANT");
        }
    }
    cmd.args(["build", "--release", "--target", arch.triple()])
        .args(["-p", "xenmem-agent", "--features", "rt", "--bin", BIN])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd.output().context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building the agent for {} failed ({}); see the compiler output above",
            arch.triple(),
            out.status
        );
    }
    let elf_path = executable_from_messages(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("cargo build reported no {BIN} executable"))?;
    let elf = std::fs::read(&elf_path)
        .with_context(|| format!("reading the agent ELF {}", elf_path.display()))?;
    let boot_image = match arch {
        Arch::X86_64 => {
            // Xen loads a copy without debug info, symbols or .defmt (which
            // only the decoder reads, from `elf`).
            let stripped = crate::stub::stripped_elf(&elf)
                .and_then(|s| image::check_x86_64(&s).map(|()| s))
                .with_context(|| format!("checking {}", elf_path.display()))?;
            let p = elf_path.with_file_name(format!("{BIN}.stripped"));
            std::fs::write(&p, stripped).with_context(|| format!("writing {}", p.display()))?;
            p
        }
        Arch::Aarch64 => {
            let img = image::arm64_file_image(&elf)
                .with_context(|| format!("making an arm64 Image of {}", elf_path.display()))?;
            let p = elf_path.with_file_name(format!("{BIN}.Image"));
            std::fs::write(&p, img).with_context(|| format!("writing {}", p.display()))?;
            p
        }
    };
    Ok(Agent {
        arch,
        elf_path,
        elf,
        boot_image,
    })
}

/// Find the agent's executable in cargo's JSON messages.
fn executable_from_messages(stdout: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == BIN)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"xenmem"},"executable":null}
not json
{"reason":"compiler-artifact","target":{"name":"xenmem-agent"},"executable":"/t/x86_64-unknown-none/release/xenmem-agent"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(msgs),
            Some(PathBuf::from("/t/x86_64-unknown-none/release/xenmem-agent"))
        );
        assert_eq!(executable_from_messages(""), None);
    }
}
