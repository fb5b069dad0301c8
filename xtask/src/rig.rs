//! The xl rig: Xen with a Linux dom0 that runs the Xen toolstack, so that
//! the agent can be made a domU by `xl create`, as a user would.
//!
//! Everything comes from Debian bookworm's packages, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` (nothing installed):
//! the 6.1 kernel (and its five Xen modules), the Xen 4.17 userspace and the
//! libraries it links, and busybox-static. The runner packs dom0's initramfs
//! itself ([`crate::cpio`]), so the arm64 parts need no arm64 host tools.
//!
//! Cached per architecture under `setup::cache_dir()/rig-ARCH/`: `debs/`
//! (the packages), `kernel` (what Xen is given as dom0's kernel), `base.cpio`
//! (dom0's initramfs) and `stamp` (a hash of every input: the package files,
//! the init script, the rig's version). A stale or missing stamp rebuilds.
//! Per run, a second small cpio archive with the agent and the jobs file is
//! appended to a copy of the base archive (Linux reads concatenated archives
//! as one initramfs).
//!
//! Dom0's `/init` (`rig_init.sh`) starts the daemons and runs the jobs; it
//! reports as `xmrig: TOPIC key=value ...` lines, and forwards each guest's
//! console log (xenconsoled's) as `(dN) LINE` lines, which the decoder
//! attributes to domain N.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use defmt_decoder::Table;

use crate::agent::Agent;
use crate::boot::{self, Arch, Control, Ended, Show, Sink};
use crate::cpio;
use crate::decode::{Event, Source};
use crate::report::{self, Logs};
use crate::setup::{self, Apt, Env};
use crate::util::{describe, which};

/// Bump when the way the rig is built changes (the cache is rebuilt).
const RIG_VERSION: u32 = 1;

/// dom0's `/init`, before [`init_script`] fills in the architecture.
const INIT_TEMPLATE: &str = include_str!("rig_init.sh");
/// The awk program that turns Xen's debug-key `q` output into words.
const Q_AWK: &str = include_str!("rig_q.awk");

/// Packages besides the kernel (which is resolved from the metapackage).
const PACKAGES: &[&str] = &[
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenmisc4.17",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
    "libncurses6",
    "libtinfo6",
    "libc6",
    "libuuid1",
    "zlib1g",
    "liblzma5",
    "libzstd1",
    // Without libgcc_s.so.1 (dlopened by glibc for thread cancellation)
    // xl aborts half-way through `xl create`.
    "libgcc-s1",
    "libfdt1",
    "busybox-static",
];

/// The Xen modules, in the order they must be loaded.
const MODULES: [&str; 5] = [
    "xen-evtchn",
    "xen-privcmd",
    "xenfs",
    "xen-gntdev",
    "xen-gntalloc",
];

/// The Xen programs dom0 runs (in `/usr/lib/xen-4.17/bin`).
const XEN_BIN_DIR: &str = "usr/lib/xen-4.17/bin";
const XEN_BINS: [&str; 5] = ["xl", "xenstored", "xenconsoled", "xen-init-dom0", "xentop"];

/// xenstore-utils: one program (`/usr/bin/xenstore`) that acts by the
/// name it is called by; these names are links to it (the package has
/// them as hard links).
const XENSTORE_BIN: &str = "usr/bin/xenstore";
const XENSTORE_TOOLS: [&str; 7] = [
    "xenstore-read",
    "xenstore-write",
    "xenstore-ls",
    "xenstore-list",
    "xenstore-exists",
    "xenstore-rm",
    "xenstore-chmod",
];

/// Libraries loaded with dlopen, which no `DT_NEEDED` names: glibc loads
/// libgcc_s.so.1 for pthread_cancel, and xl aborts half-way through
/// `xl create` without it ("libgcc_s.so.1 must be installed for
/// pthread_cancel to work").
const DLOPENED: &[&str] = &["libgcc_s.so.1"];

/// Busybox applets the init script uses, linked in `/bin`.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "mkdir", "sleep", "cat", "echo", "tail", "awk", "sed", "rm",
    "poweroff", "sync", "printf", "ls", "grep", "cut", "head", "dmesg", "ps", "kill", "uname",
    "touch", "test", "[", "tr", "timeout",
];

/// Whether the cached base archive is gzip-compressed. Measured under TCG:
/// uncompressed (7.2 MiB on x86_64) boots dom0 as fast or faster than gzip
/// (3.3 MiB): x86_64 dom0 ready 8.5-9.0 s against 8.1-10.3 s, aarch64
/// 3.4-4.6 s against 3.4-5.4 s.
const GZIP_BASE: bool = false;

/// Default bound for the whole rig boot.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default bound for one job (create to shutdown).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian's names differ per architecture.
struct ArchInfo {
    deb_arch: &'static str,
    triplet: &'static str,
    kernel_meta: &'static str,
    /// The agent's path in dom0.
    agent_path: &'static str,
    /// The xl config lines that name the kernel (shell `echo`s).
    cfg_kernel: &'static str,
    /// The same for a Linux domU ([`LINUX_GUEST`]).
    cfg_linux: &'static str,
}

fn arch_info(arch: Arch) -> ArchInfo {
    match arch {
        Arch::X86_64 => ArchInfo {
            deb_arch: "amd64",
            triplet: "x86_64-linux-gnu",
            kernel_meta: "linux-image-amd64",
            agent_path: "agent.elf",
            cfg_kernel: r#"echo 'type="pvh"'; echo 'kernel="/agent.elf"'"#,
            cfg_linux: r#"echo 'type="pvh"'; echo 'kernel="/linux.kernel"'; echo 'ramdisk="/linux.cpio"'"#,
        },
        Arch::Aarch64 => ArchInfo {
            deb_arch: "arm64",
            triplet: "aarch64-linux-gnu",
            kernel_meta: "linux-image-arm64",
            agent_path: "agent.Image",
            // acpi=0: without it `xl mem-set` aborts in libxl 4.17 on Arm.
            cfg_kernel: r#"echo 'kernel="/agent.Image"'; echo 'acpi=0'"#,
            cfg_linux: r#"echo 'kernel="/linux.kernel"'; echo 'ramdisk="/linux.cpio"'; echo 'acpi=0'"#,
        },
    }
}

/// dom0's `/init` for `arch`.
pub fn init_script(arch: Arch) -> String {
    let a = arch_info(arch);
    INIT_TEMPLATE
        .replace("@TRIPLET@", a.triplet)
        .replace("@CFG_KERNEL@", a.cfg_kernel)
        .replace("@CFG_LINUX@", a.cfg_linux)
}

// ---------------------------------------------------------------------------
// The cached parts.

/// The cached parts of a rig.
#[derive(Clone, Debug)]
pub struct Parts {
    /// What Xen gets as dom0's kernel: the uncompressed ELF `vmlinux` on
    /// x86_64 (Xen spends ~26 s under TCG unpacking the bzImage's XZ
    /// payload), the arm64 `Image` on aarch64.
    pub kernel: PathBuf,
    /// dom0's initramfs without the per-run part.
    pub base: PathBuf,
    /// The initramfs of a Linux domU ([`LINUX_GUEST`]; the kernel is
    /// dom0's): busybox and an `/init` that mounts proc and sys, prints
    /// `xmguest: ready` and sleeps.
    pub linux_initrd: PathBuf,
    /// The Linux domU's kernel: the package's compressed `vmlinuz` as is
    /// (libxc unpacks it in dom0; dom0's uncompressed 62 MiB ELF does not
    /// fit beside its initramfs in 256 MiB).
    pub linux_kernel: PathBuf,
    /// The cache directory (`rig-ARCH`).
    pub dir: PathBuf,
}

/// The packages of the rig: `(package, .deb file name)` in a fixed order.
struct Manifest {
    debs: Vec<(String, String)>,
}

impl Manifest {
    const FILE: &'static str = "debs.list";

    fn read(dir: &Path) -> Option<Manifest> {
        let text = std::fs::read_to_string(dir.join(Self::FILE)).ok()?;
        let debs = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect();
        Some(Manifest { debs })
    }

    fn text(&self) -> String {
        self.debs
            .iter()
            .map(|(p, f)| format!("{p} {f}\n"))
            .collect()
    }

    /// Whether it holds exactly `PACKAGES` plus one kernel, all present.
    fn complete(&self, debs_dir: &Path, kernel_prefix: &str) -> bool {
        let names: BTreeSet<&str> = self.debs.iter().map(|(p, _)| p.as_str()).collect();
        let kernels = names
            .iter()
            .filter(|n| n.starts_with(kernel_prefix))
            .count();
        kernels == 1
            && names.len() == PACKAGES.len() + 1
            && PACKAGES.iter().all(|p| names.contains(p))
            && self.debs.iter().all(|(_, f)| debs_dir.join(f).is_file())
    }

    fn kernel(&self, kernel_prefix: &str) -> Option<&str> {
        self.debs
            .iter()
            .find(|(p, _)| p.starts_with(kernel_prefix))
            .map(|(p, _)| p.as_str())
    }
}

/// The builder's own source: a change to how the rig is made rebuilds it
/// even when nobody bumped [`RIG_VERSION`].
const BUILDER_SOURCES: [&str; 2] = [include_str!("rig.rs"), include_str!("cpio.rs")];

/// The stamp of a rig: FNV-1a (64 bits) of everything its build reads.
fn stamp(arch: Arch, manifest_with_sizes: &str, init: &str) -> String {
    let builder = fnv1a(&BUILDER_SOURCES.concat());
    let inputs = format!(
        "rig {RIG_VERSION} {builder}\narch {arch}\ngzip {GZIP_BASE}\nmodules {MODULES:?}\n\
         bins {XEN_BINS:?} {DLOPENED:?} {XENSTORE_BIN} {XENSTORE_TOOLS:?}\napplets {APPLETS:?}\n--debs\n{manifest_with_sizes}--init\n{init}\
         --q.awk\n{Q_AWK}"
    );
    fnv1a(&inputs)
}

fn fnv1a(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The manifest with each file's size (so that a replaced .deb counts).
fn manifest_with_sizes(m: &Manifest, debs_dir: &Path) -> String {
    m.debs
        .iter()
        .map(|(p, f)| {
            let size = std::fs::metadata(debs_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0);
            format!("{p} {f} {size}\n")
        })
        .collect()
}

/// The rig's parts for `arch`: from the cache when its stamp matches,
/// fetched and built otherwise.
pub fn prepare(arch: Arch) -> Result<Parts> {
    let a = arch_info(arch);
    let dir = setup::cache_dir()?.join(format!("rig-{arch}"));
    let debs_dir = dir.join("debs");
    std::fs::create_dir_all(&debs_dir)
        .with_context(|| format!("creating {}", debs_dir.display()))?;
    // One builder at a time (parallel runs share the cache); released when
    // the file closes.
    let lock = std::fs::File::create(dir.join("lock"))
        .with_context(|| format!("creating {}", dir.join("lock").display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", dir.join("lock").display()))?;
    let kernel_prefix = "linux-image-6.1.0-";
    let manifest = match Manifest::read(&dir) {
        Some(m) if m.complete(&debs_dir, kernel_prefix) => m,
        _ => fetch(&a, &dir, &debs_dir, kernel_prefix)?,
    };
    let init = init_script(arch);
    let want = stamp(arch, &manifest_with_sizes(&manifest, &debs_dir), &init);
    let parts = Parts {
        kernel: dir.join("kernel"),
        base: dir.join("base.cpio"),
        linux_initrd: dir.join("linux-domu.cpio"),
        linux_kernel: dir.join("linux-domu.kernel"),
        dir: dir.clone(),
    };
    let have = std::fs::read_to_string(dir.join("stamp")).unwrap_or_default();
    if have.trim() == want
        && parts.kernel.is_file()
        && parts.base.is_file()
        && parts.linux_initrd.is_file()
        && parts.linux_kernel.is_file()
    {
        return Ok(parts);
    }
    eprintln!(
        "xtask: building the {arch} xl rig in {} (kernel {})",
        dir.display(),
        manifest.kernel(kernel_prefix).unwrap_or("?")
    );
    // The stamp goes first, so that a build cut short is never reused.
    std::fs::remove_file(dir.join("stamp")).ok();
    build(arch, &a, &manifest, &debs_dir, &parts, &init)?;
    std::fs::write(dir.join("stamp"), format!("{want}\n"))
        .with_context(|| format!("writing {}", dir.join("stamp").display()))?;
    Ok(parts)
}

fn fetch(a: &ArchInfo, dir: &Path, debs_dir: &Path, kernel_prefix: &str) -> Result<Manifest> {
    setup::keeping_dpkg_architectures("fetching the xl rig's packages", || {
        let apt = Apt::new(a.deb_arch)?;
        let kernel = apt
            .depends(a.kernel_meta)?
            .into_iter()
            .find(|d| d.starts_with(kernel_prefix))
            .with_context(|| {
                format!(
                    "{} depends on no {kernel_prefix}* package (apt-cache depends)",
                    a.kernel_meta
                )
            })?;
        let mut names: Vec<String> = vec![kernel];
        names.extend(PACKAGES.iter().map(|p| p.to_string()));
        // Old versions go: the directory holds exactly the manifest's files.
        let tmp = dir.join(format!("download-{}", std::process::id()));
        std::fs::remove_dir_all(&tmp).ok();
        std::fs::create_dir_all(&tmp)?;
        let debs = apt.download(&tmp, &names);
        let debs = match debs {
            Ok(d) => d,
            Err(e) => {
                std::fs::remove_dir_all(&tmp).ok();
                return Err(e);
            }
        };
        std::fs::remove_dir_all(debs_dir).ok();
        std::fs::rename(&tmp, debs_dir)
            .with_context(|| format!("moving the packages to {}", debs_dir.display()))?;
        let m = Manifest {
            debs: names
                .into_iter()
                .zip(debs)
                .map(|(n, d)| {
                    (
                        n,
                        d.file_name().unwrap_or_default().to_string_lossy().into(),
                    )
                })
                .collect(),
        };
        setup::write_atomic(&dir.join(Manifest::FILE), m.text().as_bytes())?;
        Ok(m)
    })
}

fn build(
    arch: Arch,
    a: &ArchInfo,
    manifest: &Manifest,
    debs_dir: &Path,
    parts: &Parts,
    init: &str,
) -> Result<()> {
    let root = parts.dir.join("root");
    std::fs::remove_dir_all(&root).ok();
    for (_, f) in &manifest.debs {
        setup::unpack_deb(&debs_dir.join(f), &root)?;
    }
    let result = (|| {
        let kernel = extract_kernel(arch, &root)?;
        setup::write_atomic(&parts.kernel, &kernel)?;
        let base = base_archive(a, &root, init)?;
        let mut base = if GZIP_BASE { gzip(&base)? } else { base };
        // Linux reads an archive that follows another only at a 4-byte
        // aligned offset (zeros in between are skipped): a gzip stream's
        // length is not aligned, and without this the per-run archive
        // appended to it is silently ignored.
        base.resize(base.len().next_multiple_of(4), 0);
        setup::write_atomic(&parts.base, &base)?;
        setup::write_atomic(&parts.linux_initrd, &linux_domu_archive(&root)?)?;
        let vmlinuz = vmlinuz(&root)?;
        let data =
            std::fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
        setup::write_atomic(&parts.linux_kernel, &data)?;
        eprintln!(
            "xtask: rig: kernel {} ({} MiB), initramfs {} ({:.1} MiB)",
            parts.kernel.display(),
            kernel.len() >> 20,
            parts.base.display(),
            base.len() as f64 / (1 << 20) as f64
        );
        Ok(())
    })();
    // The unpacked tree is rebuilt from the packages whenever needed.
    std::fs::remove_dir_all(&root).ok();
    result
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// The one file in `root/boot` whose name starts with `vmlinuz-`.
fn vmlinuz(root: &Path) -> Result<PathBuf> {
    let boot = root.join("boot");
    let found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .with_context(|| format!("the kernel package has no {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one vmlinuz-* in {}, found {found:?}",
            boot.display()
        ),
    }
}

/// What Xen gets as dom0's kernel.
fn extract_kernel(arch: Arch, root: &Path) -> Result<Vec<u8>> {
    let path = vmlinuz(root)?;
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    match arch {
        Arch::X86_64 => {
            let payload = bzimage_payload(&data)
                .with_context(|| format!("finding the XZ payload of {}", path.display()))?;
            let elf = xz_decompress(payload)
                .with_context(|| format!("decompressing the payload of {}", path.display()))?;
            if !elf.starts_with(b"\x7fELF") {
                bail!("the payload of {} is not an ELF file", path.display());
            }
            Ok(elf)
        }
        Arch::Aarch64 => {
            let image = if setup::is_gzip(&data) {
                setup::gunzip(&data)?
            } else {
                data
            };
            crate::image::check_arm64_magic(&image)
                .with_context(|| format!("{} is not an arm64 Image", path.display()))?;
            Ok(image)
        }
    }
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";

/// The compressed kernel inside an x86 bzImage: the boot protocol header
/// gives `setup_sects` (0x1f1), `payload_offset` (0x248) and
/// `payload_length` (0x24c); the payload must be XZ.
fn bzimage_payload(b: &[u8]) -> Result<&[u8]> {
    if b.get(0x202..0x206) != Some(b"HdrS") {
        bail!("no Linux boot protocol header (HdrS)");
    }
    let u32_at = |o: usize| -> Result<usize> {
        let s = b.get(o..o + 4).context("truncated header")?;
        Ok(u32::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
    };
    let setup_sects = match b[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    let payload = b
        .get(start..start + len)
        .with_context(|| format!("payload {start:#x}+{len:#x} beyond the file"))?;
    if !payload.starts_with(XZ_MAGIC) {
        bail!(
            "the payload at {start:#x} is not XZ (starts {:02x?})",
            &payload[..payload.len().min(6)]
        );
    }
    Ok(payload)
}

/// `xz -dc --single-stream` of `data` (the host's xz, from xz-utils).
fn xz_decompress(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let xz = which("xz").context("the xz command (Debian: xz-utils) is needed")?;
    let mut child = Command::new(xz)
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting xz")?;
    let mut stdin = child.stdin.take().context("xz's stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("running xz")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "xz -dc failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `DT_NEEDED` names.
    pub needed: Vec<String>,
    /// `PT_INTERP`.
    pub interp: Option<String>,
}

/// Read `DT_NEEDED` and `PT_INTERP` of an ELF file (32 or 64 bits).
pub fn elf_needs(data: &[u8]) -> Result<ElfNeeds> {
    use object::elf::{FileHeader32, FileHeader64};
    use object::Endianness;
    match object::FileKind::parse(data)? {
        object::FileKind::Elf64 => needs_of::<FileHeader64<Endianness>>(data),
        object::FileKind::Elf32 => needs_of::<FileHeader32<Endianness>>(data),
        k => bail!("not an ELF file ({k:?})"),
    }
}

fn needs_of<H: object::read::elf::FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> Result<ElfNeeds> {
    use object::read::elf::{Dyn, ProgramHeader};
    let h = H::parse(data)?;
    let endian = h.endian()?;
    let mut out = ElfNeeds::default();
    for ph in h.program_headers(endian, data)? {
        if let Some(i) = ph.interpreter(endian, data)? {
            out.interp = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let sections = h.sections(endian, data)?;
    if let Some((dyns, link)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        for d in dyns {
            if d.tag32(endian) == Some(object::elf::DT_NEEDED) {
                out.needed
                    .push(String::from_utf8_lossy(d.string(endian, strings)?).into_owned());
            }
        }
    }
    Ok(out)
}

/// `rel` (a path inside `root`, without leading `/`) and, if it is a
/// symlink, the path its target names, resolved inside `root`.
fn link_target(root: &Path, rel: &str) -> Result<Option<(String, String)>> {
    let p = root.join(rel);
    let meta =
        std::fs::symlink_metadata(&p).with_context(|| format!("{rel} is not in the packages"))?;
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    let target = std::fs::read_link(&p)?.to_string_lossy().into_owned();
    let resolved = if let Some(abs) = target.strip_prefix('/') {
        abs.to_string()
    } else {
        let parent = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut parts: Vec<&str> = parent.split('/').filter(|s| !s.is_empty()).collect();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        parts.join("/")
    };
    Ok(Some((target, resolved)))
}

/// Add `rel` from `root` to the archive: a symlink with what it points to
/// (followed to the file), or the file with its permissions.
fn add_from_root(w: &mut cpio::Writer, root: &Path, rel: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut rel = rel.to_string();
    for _ in 0..16 {
        if w.contains(&rel) {
            return Ok(());
        }
        match link_target(root, &rel)? {
            Some((target, resolved)) => {
                w.symlink(&rel, &target)?;
                rel = resolved;
            }
            None => {
                let p = root.join(&rel);
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                let mode = std::fs::metadata(&p)?.permissions().mode();
                return w.file(&rel, mode & 0o7777, &data);
            }
        }
    }
    bail!("too many symlinks at {rel}")
}

/// Find library `name` in the loader's directories inside `root`.
fn find_lib(root: &Path, triplet: &str, name: &str) -> Option<String> {
    [
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".to_string(),
        "usr/lib".to_string(),
    ]
    .into_iter()
    .map(|d| format!("{d}/{name}"))
    .find(|rel| std::fs::symlink_metadata(root.join(rel)).is_ok())
}

/// The files (root-relative) `bins` need, transitively: their libraries and
/// the dynamic loader. Fails naming every library no package provides.
fn library_closure(root: &Path, triplet: &str, bins: &[String]) -> Result<BTreeSet<String>> {
    let mut files = BTreeSet::new();
    let mut queue: Vec<(String, String)> = bins.iter().map(|b| (b.clone(), b.clone())).collect();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some((rel, why)) = queue.pop() {
        if !seen.insert(rel.clone()) {
            continue;
        }
        // The file the path finally names (libraries are symlinks).
        let mut real = rel.clone();
        for _ in 0..16 {
            match link_target(root, &real)? {
                Some((_, r)) => real = r,
                None => break,
            }
        }
        let data = std::fs::read(root.join(&real))
            .with_context(|| format!("reading {real} (needed by {why})"))?;
        let needs = elf_needs(&data).with_context(|| format!("reading the ELF {real}"))?;
        files.insert(rel.clone());
        if let Some(i) = needs.interp {
            let i = i.trim_start_matches('/').to_string();
            if std::fs::symlink_metadata(root.join(&i)).is_ok() {
                queue.push((i, rel.clone()));
            } else {
                missing.push(format!("{rel} needs the loader /{i}"));
            }
        }
        for n in needs.needed {
            match find_lib(root, triplet, &n) {
                Some(l) => queue.push((l, rel.clone())),
                None => missing.push(format!("{rel} needs {n}")),
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        bail!(
            "the rig's packages lack libraries: {} (add the package that has them to rig.rs's \
             PACKAGES)",
            missing.join("; ")
        );
    }
    Ok(files)
}

/// A Xen module of the kernel package, uncompressed.
fn module(root: &Path, name: &str) -> Result<Vec<u8>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut all = Vec::new();
    walk(&root.join("lib/modules"), &mut all);
    let wanted = [".ko", ".ko.xz", ".ko.gz"].map(|s| format!("{name}{s}"));
    let found: Vec<&PathBuf> = all
        .iter()
        .filter(|p| {
            p.to_string_lossy().contains("/drivers/xen/")
                && p.file_name()
                    .is_some_and(|f| wanted.iter().any(|w| f.to_string_lossy() == *w))
        })
        .collect();
    let [p] = found.as_slice() else {
        bail!(
            "the kernel package has {} copies of the module {name}: {found:?}",
            found.len()
        );
    };
    let data = std::fs::read(p)?;
    let f = p.to_string_lossy();
    if f.ends_with(".xz") {
        xz_decompress(&data).with_context(|| format!("decompressing {f}"))
    } else if f.ends_with(".gz") {
        setup::gunzip(&data)
    } else {
        Ok(data)
    }
}

/// dom0's initramfs (uncompressed): busybox and its links, the Xen
/// programs with their libraries, the modules, `/init` and empty state
/// directories.
fn base_archive(a: &ArchInfo, root: &Path, init: &str) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new();
    for d in ["proc", "sys", "dev", "root", "etc/xen", "etc/xmrig"] {
        w.dir(d, 0o755)?;
    }
    w.dir("tmp", 0o1777)?;
    // Linux opens /dev/console for init before /init can mount devtmpfs.
    w.char_device("dev/console", 0o600, 5, 1)?;
    for d in [
        "var/lib/xenstored",
        "var/lib/xen",
        "var/run/xen",
        "var/run/xenstored",
        "var/log/xen/console",
        "var/lock",
    ] {
        w.dir(d, 0o755)?;
    }
    w.symlink("run", "var/run")?;
    add_from_root(&mut w, root, "bin/busybox")?;
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    let mut bins: Vec<String> = XEN_BINS
        .iter()
        .map(|b| format!("{XEN_BIN_DIR}/{b}"))
        .collect();
    bins.push(XENSTORE_BIN.to_string());
    for t in XENSTORE_TOOLS {
        w.symlink(&format!("usr/bin/{t}"), "xenstore")?;
    }
    for l in DLOPENED {
        bins.push(
            find_lib(root, a.triplet, l)
                .with_context(|| format!("no package of the rig has {l} (dlopened by glibc)"))?,
        );
    }
    for f in library_closure(root, a.triplet, &bins)? {
        add_from_root(&mut w, root, &f)?;
    }
    for m in MODULES {
        let data = module(root, m)?;
        w.file(&format!("lib/modules/{m}.ko"), 0o644, &data)?;
    }
    w.file("etc/xen/xl.conf", 0o644, b"")?;
    w.file("etc/xmrig/q.awk", 0o644, Q_AWK.as_bytes())?;
    w.file("init", 0o755, init.as_bytes())?;
    Ok(w.finish())
}

/// `/init` of a Linux domU: no daemons, no modules (Debian's kernel has
/// the balloon driver, xenbus and hvc built in); it sleeps so that the
/// domain is idle but for the kernel itself.
const LINUX_DOMU_INIT: &str = "#!/bin/sh\n\
export PATH=/bin\n\
mount -t proc proc /proc\n\
mount -t sysfs sysfs /sys\n\
echo \"xmguest-ready uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
while :; do sleep 3600; done\n";

/// The initramfs of a Linux domU (uncompressed): busybox-static, a few
/// links, `/init`.
fn linux_domu_archive(root: &Path) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new();
    for d in ["proc", "sys", "dev", "tmp"] {
        w.dir(d, 0o755)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    add_from_root(&mut w, root, "bin/busybox")?;
    for applet in ["sh", "mount", "sleep", "cut", "cat", "echo"] {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    w.file("init", 0o755, LINUX_DOMU_INIT.as_bytes())?;
    Ok(w.finish())
}

// ---------------------------------------------------------------------------
// Jobs and the per-run archive.

/// The [`XlJob::extra_cfg`] word that makes a job's domain Linux instead
/// of the agent (not an xl key: dom0 replaces it by the kernel lines):
/// dom0's own kernel with [`Parts::linux_initrd`] (x86_64 PVH; arm64
/// `Image`); the job's `agent_opts` are then the kernel's command line
/// words (e.g. `console=hvc0`). See [`XlJob::linux`].
pub const LINUX_GUEST: &str = "guest=linux";

/// The config line that gives a domU CPU 1 alone, in a rig boot with
/// [`XlSpec::cpus`] 2 (dom0 is pinned to CPU 0).
pub const OWN_CPU_CFG: &str = "cpus=\"1\"";

/// One domU to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XlJob {
    /// The domain's name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `memory=`, MiB.
    pub memory_mib: u64,
    /// `maxmem=`, MiB (none: equal to memory).
    pub maxmem_mib: Option<u64>,
    /// The agent's command line words (`@DOMID@` becomes the domid the
    /// domain is expected to get).
    pub agent_opts: Vec<String>,
    /// More xl config lines (`key=value`, no whitespace), e.g.
    /// `vuart="sbsa_uart"`.
    pub extra_cfg: Vec<String>,
    /// Toolstack steps dom0 runs, in order, once the domain is made (see
    /// [`XlStep`]); each prints records with `step=K` (its index), which
    /// [`XlJobResult::steps`] collects. Empty: the job is as it always
    /// was (create paused, list, unpause, wait for the shutdown).
    ///
    /// Without an [`XlStep::Unpause`] the domain is unpaused before the
    /// first step; with one it stays paused until that step (and is
    /// unpaused after the last step if that has not happened: `unpaused
    /// when=after-steps`, not a step record; not if the steps used up the
    /// job's time, which then ends in `job-timeout`). A step that would
    /// start after the job's time is up is skipped (`step-skipped
    /// why=job-timeout`), as are those after an [`XlStep::Destroy`]
    /// (`why=destroyed`); every `xl`/xenstore command of a step is killed
    /// at the job's bound, so no step can hold up the boot.
    pub steps: Vec<XlStep>,
    /// This job's bound, from the domain's unpause (or, with an
    /// [`XlStep::Unpause`], from before the first step) to its shutdown,
    /// steps included. None: the boot's [`XlSpec::job_timeout`]. Whole
    /// seconds (rounded up).
    pub timeout: Option<Duration>,
}

impl XlJob {
    /// A job with the agent options only.
    pub fn new(name: &str, memory_mib: u64, agent_opts: Vec<String>) -> XlJob {
        XlJob {
            name: name.to_string(),
            memory_mib,
            agent_opts,
            ..XlJob::default()
        }
    }

    /// A Linux domU ([`LINUX_GUEST`]) with `cmdline` as its kernel's
    /// command line words.
    pub fn linux(name: &str, memory_mib: u64, cmdline: Vec<String>) -> XlJob {
        XlJob {
            extra_cfg: vec![LINUX_GUEST.to_string()],
            ..XlJob::new(name, memory_mib, cmdline)
        }
    }

    /// Whether the domain runs Linux ([`LINUX_GUEST`]).
    pub fn is_linux(&self) -> bool {
        self.extra_cfg.iter().any(|e| e == LINUX_GUEST)
    }

    /// How long the steps wait and sleep at most (the rest of each step is
    /// a toolstack command, well under a second each).
    pub fn step_time(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match s {
                XlStep::WaitMib { timeout, .. }
                | XlStep::XenReach { timeout, .. }
                | XlStep::Peer { timeout, .. }
                | XlStep::WaitXs { timeout, .. }
                | XlStep::WaitLog { timeout, .. } => *timeout,
                XlStep::Sleep(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }
}

/// One toolstack step of a job, run by dom0 while the domain exists (see
/// [`XlJob::steps`]). Every step prints one record (two for a failing
/// `xl` command: its `xl: ...` output lines come first) with `step=K`,
/// `name=` and `domid=`; `uptime=` is dom0's `/proc/uptime`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XlStep {
    /// `xl mem-set NAME <n>m`: `mem-set target_mib= uptime= took_s=`
    /// (`uptime` when the command was issued), or `mem-set-failed
    /// target_mib=` after its `xl:` lines.
    MemSet(u64),
    /// Poll `xl list NAME` (its Mem column) every 0.2 s until it shows
    /// `mib`: `reached mib= after_s= from=mem-set|wait`, or `not-reached
    /// mib= got_mib= after_s= from= why=timeout|shutdown|vanished|job-timeout`.
    /// `after_s` (0.1 s resolution) counts from the last `MemSet` step's
    /// command (`from=mem-set`), or from this step's start if there was
    /// none (`from=wait`). A domain that has shut down (or crashed) ends
    /// the wait (`why=shutdown`, `state=`) unless it shows `mib`.
    WaitMib {
        /// The Mem column to wait for, MiB.
        mib: u64,
        /// How long at most (0.1 s resolution; also bounded by the job's).
        timeout: Duration,
    },
    /// Xen's own page count of the domain now (debug key `q`), as the
    /// final one: `xen-pages step=K domid= nr_pages= max_pages= ...
    /// pod_entries= pod_cachesize=` (no `name=`).
    Pages,
    /// The domain's CPU time from `xl list` (Time(s)): `cpu time_s= state=
    /// uptime=`.
    CpuTime,
    /// Sleep (0.1 s resolution; bounded by the job's time): `slept s=
    /// uptime=`.
    Sleep(Duration),
    /// Xen's active grant entries (pinned: mapped or being copied by some
    /// domain), per granting domain, from debug key `g`, leaving out the 8
    /// reserved references (the toolstack's console and xenstore rings):
    /// `gnttab-active dN=COUNT ...` (every domain whose table Xen printed).
    Grants,
    /// Run `xenmem-peer COMMAND DOMID SECS` in dom0 (the peer's side of an
    /// exchange with the agent, e.g. `grant`: see `peer/`), bounded by
    /// `timeout` and the job's time; every line it prints becomes a record
    /// of its first word's kind with `step=K name= domid=` added, then
    /// `peer-exit status=`.
    Peer {
        /// The peer's command (`grant` or `gntalloc`).
        command: String,
        /// How long at most.
        timeout: Duration,
    },
    /// Poll Xen's page count of the domain (`XEN_DOMCTL_getdomaininfo`'s
    /// `tot_pages` × 4 KiB, asked every 10 ms by `xenmem-peer reach`
    /// through dom0's privcmd driver) until it is within 1 MiB of `mib`:
    /// `xen-reached mib= kib= after_s= polls= from=` (milliseconds;
    /// `after_s` from the last `MemSet`'s command as in
    /// [`XlStep::WaitMib`]), or `xen-not-reached mib= kib= after_s= polls=
    /// why=timeout|job-timeout|vanished|peer-failed`.
    XenReach {
        /// The target, MiB.
        mib: u64,
        /// How long at most.
        timeout: Duration,
    },
    /// Poll `xenstore-read /local/domain/N/PATH` every 0.1 s until it
    /// exists: `xs-appeared path= after_s=`, or `xs-absent path= after_s=`.
    WaitXs {
        /// Relative to `/local/domain/N`.
        path: String,
        /// How long at most.
        timeout: Duration,
    },
    /// Poll the domain's console log in dom0 (xenconsoled's guest log)
    /// every 0.2 s until it holds `text` (a Linux guest's text; the
    /// agent's log is defmt-encoded): `log-seen text= after_s=` or
    /// `log-unseen text= after_s=`.
    WaitLog {
        /// Letters, digits, `-`, `_`, `.`, `:`, `=`.
        text: String,
        /// How long at most.
        timeout: Duration,
    },
    /// `xenstore-read /local/domain/N/PATH`: `xs path= value="..."` (as
    /// xenstore-read prints it: non-printable bytes and `\` escaped as
    /// `\ooo` and `\\`; a `"` is shown as `\042`), or `xs-error path=
    /// what="..."`.
    XsRead(String),
    /// `xenstore-write /local/domain/N/PATH VALUE`: `xs-write path=
    /// value="..." ok=yes|no` (after `xl:` lines with its output, if any).
    XsWrite {
        /// Relative to `/local/domain/N`.
        path: String,
        /// Any text without control characters, `"` or `\` (may be empty).
        value: String,
    },
    /// `xl shutdown NAME`: `shutdown-requested ok=yes|no|pending took_s=
    /// uptime=` (after `xl:` lines with its output). xl writes
    /// `control/shutdown` (`poweroff`) and then waits for the guest to
    /// acknowledge the request by clearing it (libxl's PV control
    /// protocol; it always does for PVH): the step gives it 5 s, then
    /// leaves it waiting (`ok=pending`) and goes on; it is stopped when the
    /// job ends (`request-stopped`, no step). The domain's shutdown is
    /// what the job then waits for as usual. A suspend request is `XsWrite`
    /// of `control/shutdown`.
    Shutdown,
    /// `xl reboot NAME`, as [`XlStep::Shutdown`] (`reboot-requested`,
    /// `control/shutdown` = `reboot`); with `on_reboot="preserve"` the
    /// domain then shows as shut down with reason reboot.
    Reboot,
    /// `xl destroy NAME` now: `destroyed-early ok=yes|no uptime=`. Once
    /// destroyed, later steps are skipped (`step-skipped why=destroyed`)
    /// and so are the shutdown wait, `xl-list when=shutdown`, the final
    /// `xen-pages` and the destroy; `free-memory when=after-destroy` is
    /// still printed.
    Destroy,
    /// `xl unpause NAME`: `unpaused ok=yes|no uptime=`. At most one; with
    /// it, the domain is still paused (as `xl create -p` made it) during
    /// the steps before it.
    Unpause,
}

impl XlStep {
    /// Its line in the jobs file (after `+ `): a kind word and its
    /// arguments, durations in tenths of a second.
    fn jobs_line(&self) -> String {
        let tenths = |d: &Duration| d.as_millis().div_ceil(100);
        match self {
            XlStep::MemSet(m) => format!("mem-set {m}"),
            XlStep::WaitMib { mib, timeout } => format!("wait-mib {mib} {}", tenths(timeout)),
            XlStep::XenReach { mib, timeout } => format!("xen-reach {mib} {}", tenths(timeout)),
            XlStep::Peer { command, timeout } => format!("peer {command} {}", tenths(timeout)),
            XlStep::WaitXs { path, timeout } => format!("wait-xs {path} {}", tenths(timeout)),
            XlStep::WaitLog { text, timeout } => format!("wait-log {text} {}", tenths(timeout)),
            XlStep::Pages => "pages".into(),
            XlStep::Grants => "grants".into(),
            XlStep::CpuTime => "cpu".into(),
            XlStep::Sleep(d) => format!("sleep {}", tenths(d)),
            XlStep::XsRead(p) => format!("xs-read {p}"),
            XlStep::XsWrite { path, value } => format!("xs-write {path}={value}"),
            XlStep::Shutdown => "shutdown".into(),
            XlStep::Reboot => "reboot".into(),
            XlStep::Destroy => "destroy".into(),
            XlStep::Unpause => "unpause".into(),
        }
    }

    /// Parse the command line form (`--step` of `run --toolstack xl`):
    /// `mem-set=MIB`, `wait-mib=MIB[:SECS]` (20 s by default), `pages`,
    /// `cpu`, `sleep=SECS`, `xs-read=PATH`, `xs-write=PATH=VALUE`,
    /// `shutdown`, `reboot`, `destroy`, `unpause`. Seconds may have a
    /// fraction (0.1 s resolution).
    pub fn parse(s: &str) -> Result<XlStep> {
        let (kind, arg) = match s.split_once('=') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let mib = |v: &str| -> Result<u64> {
            v.parse()
                .with_context(|| format!("step `{s}`: `{v}` is not a number of MiB"))
        };
        let secs = |v: &str| -> Result<Duration> {
            match v.parse::<f64>() {
                Ok(f) if f.is_finite() && (0.0..=86400.0).contains(&f) => {
                    Ok(Duration::from_millis((f * 1000.0).round() as u64))
                }
                _ => bail!("step `{s}`: `{v}` is not a number of seconds (0 to 86400)"),
            }
        };
        let step = match (kind, arg) {
            ("mem-set", Some(a)) => XlStep::MemSet(mib(a)?),
            ("wait-mib", Some(a)) => {
                let (m, t) = a.split_once(':').unwrap_or((a, "20"));
                XlStep::WaitMib {
                    mib: mib(m)?,
                    timeout: secs(t)?,
                }
            }
            ("xen-reach", Some(a)) => {
                let (m, t) = a.split_once(':').unwrap_or((a, "20"));
                XlStep::XenReach {
                    mib: mib(m)?,
                    timeout: secs(t)?,
                }
            }
            ("peer", Some(a)) => {
                let (c, t) = a.split_once(':').unwrap_or((a, "60"));
                XlStep::Peer {
                    command: c.to_string(),
                    timeout: secs(t)?,
                }
            }
            ("wait-xs", Some(a)) => {
                let (p, t) = a.split_once(':').unwrap_or((a, "20"));
                XlStep::WaitXs {
                    path: p.to_string(),
                    timeout: secs(t)?,
                }
            }
            ("wait-log", Some(a)) => {
                let (p, t) = a.rsplit_once(':').unwrap_or((a, "20"));
                XlStep::WaitLog {
                    text: p.to_string(),
                    timeout: secs(t)?,
                }
            }
            ("pages", None) => XlStep::Pages,
            ("grants", None) => XlStep::Grants,
            ("cpu", None) => XlStep::CpuTime,
            ("sleep", Some(a)) => XlStep::Sleep(secs(a)?),
            ("xs-read", Some(a)) => XlStep::XsRead(a.to_string()),
            ("xs-write", Some(a)) => {
                let (path, value) = a.split_once('=').with_context(|| {
                    format!("step `{s}`: xs-write needs PATH=VALUE (VALUE may be empty)")
                })?;
                XlStep::XsWrite {
                    path: path.to_string(),
                    value: value.to_string(),
                }
            }
            ("shutdown", None) => XlStep::Shutdown,
            ("reboot", None) => XlStep::Reboot,
            ("destroy", None) => XlStep::Destroy,
            ("unpause", None) => XlStep::Unpause,
            _ => bail!(
                "step `{s}`: use mem-set=MIB, wait-mib=MIB[:SECS], xen-reach=MIB[:SECS], \
                 wait-xs=PATH[:SECS], wait-log=TEXT:SECS, peer=grant|gntalloc|gntalloc-end|foreign|grant-die|table[:SECS], pages, grants, cpu, sleep=SECS, \
                 xs-read=PATH, xs-write=PATH=VALUE, shutdown, reboot, destroy or unpause"
            ),
        };
        check_step(&step).with_context(|| format!("step `{s}`"))?;
        Ok(step)
    }
}

/// Whether dom0's script can take a step as it is (see [`check_job`]).
fn check_step(step: &XlStep) -> Result<()> {
    // What xenstored accepts in a path, relative to the domain's home.
    let path_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("//")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-/_@".contains(c))
    };
    match step {
        XlStep::XsRead(p) | XlStep::XsWrite { path: p, .. } | XlStep::WaitXs { path: p, .. }
            if !path_ok(p) =>
        {
            bail!(
                "xenstore path `{p}`: relative to /local/domain/N, letters, digits, `-`, `_`, \
             `@` and single `/` between them"
            )
        }
        XlStep::XsWrite { value, .. }
            if value
                .chars()
                .any(|c| c.is_control() || matches!(c, '"' | '\\')) =>
        {
            bail!("xenstore value `{value}`: no control characters, `\"` or `\\`")
        }
        XlStep::WaitLog { text, .. }
            if text.is_empty()
                || !text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:=".contains(c)) =>
        {
            bail!("log text `{text}`: letters, digits, `-`, `_`, `.`, `:` and `=` only")
        }
        XlStep::Peer { command, .. }
            if !matches!(
                command.as_str(),
                "grant" | "gntalloc" | "gntalloc-end" | "foreign" | "grant-die" | "table"
            ) =>
        {
            bail!("peer command `{command}`: `grant`, `gntalloc`, `gntalloc-end`, `foreign`, `grant-die` or `table`")
        }
        XlStep::WaitMib { timeout: d, .. }
        | XlStep::WaitLog { timeout: d, .. }
        | XlStep::Peer { timeout: d, .. }
        | XlStep::XenReach { timeout: d, .. }
        | XlStep::WaitXs { timeout: d, .. }
        | XlStep::Sleep(d)
            if *d > Duration::from_secs(86400) =>
        {
            bail!("a step waits {} s, more than a day", d.as_secs())
        }
        _ => Ok(()),
    }
}

impl fmt::Display for XlStep {
    /// The command line form [`XlStep::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| d.as_millis().div_ceil(100) as f64 / 10.0;
        match self {
            XlStep::MemSet(m) => write!(f, "mem-set={m}"),
            XlStep::WaitMib { mib, timeout } => write!(f, "wait-mib={mib}:{}", secs(timeout)),
            XlStep::XenReach { mib, timeout } => {
                write!(f, "xen-reach={mib}:{}", secs(timeout))
            }
            XlStep::WaitXs { path, timeout } => write!(f, "wait-xs={path}:{}", secs(timeout)),
            XlStep::Peer { command, timeout } => write!(f, "peer={command}:{}", secs(timeout)),
            XlStep::WaitLog { text, timeout } => write!(f, "wait-log={text}:{}", secs(timeout)),
            XlStep::Pages => f.write_str("pages"),
            XlStep::Grants => f.write_str("grants"),
            XlStep::CpuTime => f.write_str("cpu"),
            XlStep::Sleep(d) => write!(f, "sleep={}", secs(d)),
            XlStep::XsRead(p) => write!(f, "xs-read={p}"),
            XlStep::XsWrite { path, value } => write!(f, "xs-write={path}={value}"),
            XlStep::Shutdown => f.write_str("shutdown"),
            XlStep::Reboot => f.write_str("reboot"),
            XlStep::Destroy => f.write_str("destroy"),
            XlStep::Unpause => f.write_str("unpause"),
        }
    }
}

/// The fake domid of the console forwarder's self-test (`@selftest` job).
pub const SELFTEST_DOMID: u32 = 99;
/// What the self-test writes to its fake guest log, as the lines the
/// forwarder must deliver (one written in two pieces, one with leading
/// spaces and a backslash, the last without a newline).
pub const SELFTEST_LINES: [&str; 4] = [
    "selftest one",
    "selftest partial two",
    "  selftest three \\ end",
    "selftest four without newline",
];

/// The placeholder dom0 replaces by the predicted domid.
pub const DOMID_PLACEHOLDER: &str = "@DOMID@";

/// Check a job before anything slow.
pub fn check_job(j: &XlJob) -> Result<()> {
    if j.name.is_empty()
        || j.name.len() > 64
        || j.name.starts_with(['-', '.'])
        || !j
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "job name `{}`: use 1-64 letters, digits, `-`, `_` or `.`",
            j.name
        );
    }
    if j.memory_mib == 0 {
        bail!("job {}: memory must be at least 1 MiB", j.name);
    }
    if let Some(m) = j.maxmem_mib {
        if m < j.memory_mib {
            bail!(
                "job {}: maxmem ({m} MiB) is below memory ({} MiB)",
                j.name,
                j.memory_mib
            );
        }
    }
    for o in &j.agent_opts {
        if o.is_empty()
            || o.chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\'))
        {
            bail!("job {}: agent option `{o}` cannot be passed on (whitespace, control characters, `\"` or `\\`)", j.name);
        }
    }
    for e in &j.extra_cfg {
        if !e.contains('=')
            || e.contains('|')
            || e.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "job {}: extra config `{e}` must be one key=value word without `|`",
                j.name
            );
        }
    }
    for (k, s) in j.steps.iter().enumerate() {
        check_step(s).with_context(|| format!("job {}: step {k} ({s})", j.name))?;
    }
    if j.steps.iter().filter(|s| **s == XlStep::Unpause).count() > 1 {
        bail!("job {}: more than one unpause step", j.name);
    }
    if j.timeout.is_some_and(|t| t.is_zero()) {
        bail!("job {}: a timeout of 0 s", j.name);
    }
    Ok(())
}

/// The jobs file: one line per job,
/// `NAME MEMORY MAXMEM|- TIMEOUT_S [CFG...] | CMDLINE`, each followed by its
/// steps, one `+ KIND [ARGS]` line each (`mem-set MIB`, `wait-mib MIB
/// TENTHS`, `pages`, `cpu`, `sleep TENTHS`, `xs-read PATH`, `xs-write
/// PATH=VALUE` with VALUE the rest of the line, `shutdown`, `reboot`,
/// `destroy`, `unpause`); `@selftest` first when asked. `job_timeout` is
/// the bound of a job without its own [`XlJob::timeout`].
pub fn render_jobs(jobs: &[XlJob], job_timeout: Duration, selftest: bool) -> Result<String> {
    let mut out = String::new();
    if selftest {
        out.push_str("@selftest\n");
    }
    let mut names = BTreeSet::new();
    for j in jobs {
        check_job(j)?;
        if !names.insert(&j.name) {
            bail!("two jobs are named {}", j.name);
        }
        out.push_str(&format!(
            "{} {} {} {}",
            j.name,
            j.memory_mib,
            j.maxmem_mib.map_or("-".to_string(), |m| m.to_string()),
            j.timeout
                .unwrap_or(job_timeout)
                .as_millis()
                .div_ceil(1000)
                .max(1)
        ));
        for e in &j.extra_cfg {
            out.push(' ');
            out.push_str(e);
        }
        out.push_str(" | ");
        out.push_str(&j.agent_opts.join(" "));
        out.push('\n');
        for s in &j.steps {
            out.push_str("+ ");
            out.push_str(&s.jobs_line());
            out.push('\n');
        }
    }
    Ok(out)
}

/// The per-run archive: the agent, the dom0 peer (`/bin/xenmem-peer`)
/// and the jobs file, and with a [`LINUX_GUEST`] job the kernel and the
/// domU's initramfs.
fn run_archive(
    arch: Arch,
    agent: &Agent,
    peer: &Path,
    jobs: &str,
    parts: &Parts,
    linux: bool,
) -> Result<Vec<u8>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut w = cpio::Writer::new();
    w.file(arch_info(arch).agent_path, 0o644, &read(&agent.boot_image)?)?;
    w.file(&format!("bin/{}", crate::peer::BIN), 0o755, &read(peer)?)?;
    w.file("jobs", 0o644, jobs.as_bytes())?;
    if linux {
        w.file("linux.kernel", 0o644, &read(&parts.linux_kernel)?)?;
        w.file("linux.cpio", 0o644, &read(&parts.linux_initrd)?)?;
    }
    Ok(w.finish())
}

/// Another build of the agent in a rig boot (a mutant, `mutants.rs`): its
/// boot image goes into dom0's root as [`variant_image`], the jobs whose
/// [`XlJob::extra_cfg`] holds [`variant_cfg`] boot it instead of the
/// agent, and their domains' logs decode with its defmt table.
pub struct AgentVariant<'a> {
    /// Its name (letters, digits, `-`): the image is `agent-NAME.elf`
    /// (`.Image` on aarch64).
    pub name: &'a str,
    /// The build.
    pub agent: &'a Agent,
    /// Its defmt table.
    pub table: &'a Table,
}

/// Where variant `name`'s image is in dom0 (no leading `/`).
pub fn variant_image(arch: Arch, name: &str) -> String {
    arch_info(arch)
        .agent_path
        .replacen("agent.", &format!("agent-{name}."), 1)
}

/// The config line that makes a job boot variant `name`: a second
/// `kernel=` after the agent's (libxlu keeps every setting and looks a
/// name up newest first, so the last one wins: Xen 4.17's
/// `tools/libs/util/libxlu_cfg.c`, `find` and `xlu__cfg_set_store`).
pub fn variant_cfg(arch: Arch, name: &str) -> String {
    format!("kernel=\"/{}\"", variant_image(arch, name))
}

/// The variants' images, a cpio archive to append to the run's.
fn variants_archive(arch: Arch, variants: &[AgentVariant<'_>]) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new();
    for v in variants {
        if v.agent.arch != arch {
            bail!(
                "internal error: {} variant {} for an {arch} rig",
                v.agent.arch,
                v.name
            );
        }
        if v.name.is_empty()
            || !v
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("agent variant name `{}`: letters, digits or `-`", v.name);
        }
        let img = &v.agent.boot_image;
        let data = std::fs::read(img).with_context(|| format!("reading {}", img.display()))?;
        w.file(&variant_image(arch, v.name), 0o644, &data)?;
    }
    Ok(w.finish())
}

/// Which domains run which variant: the domids dom0 predicts (job `k`,
/// from 0, is domain `k + 1` when every create before it made one domain;
/// a domid other than predicted is a problem the rig reports). Fails if a
/// job's config names a variant image that is not given.
fn variant_sources<'a>(
    arch: Arch,
    jobs: &[XlJob],
    variants: &[AgentVariant<'a>],
) -> Result<BTreeMap<Source, &'a Table>> {
    let mut out = BTreeMap::new();
    for (k, j) in jobs.iter().enumerate() {
        let domid = u16::try_from(k + 1).context("too many jobs")?;
        for e in j.extra_cfg.iter().filter(|e| e.starts_with("kernel=")) {
            let Some(v) = variants.iter().find(|v| *e == variant_cfg(arch, v.name)) else {
                bail!("job {}: `{e}` names no agent variant of this boot", j.name);
            };
            out.insert(Source(domid), v.table);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// QEMU.

/// Xen's command line on x86_64 (dom0 is PV). `conring_size=1M`: debug
/// keys read back with `xl dmesg` (`g` prints a line per active grant)
/// must fit in Xen's console ring.
pub const XEN_X86_64_CMDLINE: &str = "console=com1 loglvl=all guest_loglvl=all noreboot \
     console_timestamps=boot dom0_mem=256M,max:256M dom0-iommu=none bootscrub=0 conring_size=1M";
/// Xen's command line on aarch64.
pub const XEN_AARCH64_CMDLINE: &str = "console=dtuart dtuart=/pl011@9000000 dom0_mem=256M \
     bootscrub=0 loglvl=all guest_loglvl=all console_timestamps=boot conring_size=1M";
/// dom0's kernel command line (no commas: QEMU splits `-initrd` on them).
pub const DOM0_CMDLINE: &str = "console=hvc0 quiet rdinit=/init";
/// aarch64: where QEMU's guest-loader puts dom0's kernel.
const ARM_KERNEL_ADDR: u64 = 0x4200_0000;

/// With a [`LINUX_GUEST`] job (x86_64): dom0's memory, and what QEMU gets
/// on top of the usual 1 GiB. libxc unpacks the domU's 8 MiB bzImage to a
/// 62 MiB ELF in dom0, and `xl create` was OOM-killed with 256 MiB.
const LINUX_DOM0_MIB: u64 = 512;

fn qemu_command(
    env: &Env,
    arch: Arch,
    parts: &Parts,
    initramfs: &Path,
    linux: bool,
    cpus: u32,
) -> Result<Command> {
    let smp = cpus.to_string();
    let pin = if cpus > 1 {
        " dom0_max_vcpus=1 dom0_vcpus_pin"
    } else {
        ""
    };
    let kernel = boot::no_comma(&parts.kernel, "the dom0 kernel")?;
    let initrd = boot::no_comma(initramfs, "the initramfs")?;
    match arch {
        Arch::X86_64 => {
            let mut c = Command::new(&env.qemu_x86_64);
            // 1 GiB: dom0's 256 MiB and room for a 256 MiB domU (the
            // balloon service's scenarios) beside it.
            let (mem, xen_cmdline) = if linux {
                (
                    (1024 + LINUX_DOM0_MIB - 256).to_string(),
                    XEN_X86_64_CMDLINE.replace(
                        "dom0_mem=256M,max:256M",
                        &format!("dom0_mem={LINUX_DOM0_MIB}M,max:{LINUX_DOM0_MIB}M"),
                    ),
                )
            } else {
                ("1024".to_string(), XEN_X86_64_CMDLINE.to_string())
            };
            c.args(["-cpu", "qemu64,+npt", "-smp", &smp, "-m", &mem])
                .args(["-nographic", "-no-reboot", "-monitor", "none"])
                .args(["-serial", "stdio"])
                .arg("-kernel")
                .arg(&env.xen_x86_64)
                .arg("-initrd")
                .arg(format!("{kernel} {DOM0_CMDLINE},{initrd}"))
                .arg("-append")
                .arg(format!("{xen_cmdline}{pin}"));
            Ok(c)
        }
        Arch::Aarch64 => {
            let size = std::fs::metadata(&parts.kernel)?.len();
            let initrd_addr = (ARM_KERNEL_ADDR + size + (4 << 20)).next_multiple_of(2 << 20);
            let mut c = Command::new(&env.qemu_aarch64);
            c.args(["-machine", "virt,virtualization=on,gic-version=3"])
                .args(["-cpu", "cortex-a57", "-smp", &smp, "-m", "1024"])
                .args(["-nographic", "-no-reboot", "-monitor", "none"])
                .args(["-serial", "stdio"])
                .arg("-kernel")
                .arg(&env.xen_aarch64)
                .arg("-append")
                .arg(format!("{XEN_AARCH64_CMDLINE}{pin}"))
                .arg("-device")
                .arg(format!(
                    "guest-loader,addr={ARM_KERNEL_ADDR:#x},kernel={kernel},bootargs={DOM0_CMDLINE}"
                ))
                .arg("-device")
                .arg(format!(
                    "guest-loader,addr={initrd_addr:#x},initrd={initrd}"
                ));
            Ok(c)
        }
    }
}

// ---------------------------------------------------------------------------
// Records and results.

/// One `xmrig:` line: its topic and fields, and when it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `ready`, `created`, `shutdown`, `xen-pages`, ...
    pub topic: String,
    /// Its `key=value` words.
    pub fields: BTreeMap<String, String>,
    /// Since QEMU started.
    pub at: Duration,
    /// The line as dom0 printed it.
    pub line: String,
}

impl Record {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of `key` as a number.
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(report::parse_number)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

/// Parse a console line as an `xmrig:` record (it must start the line).
pub fn parse_record(line: &str, at: Duration) -> Option<Result<Record, String>> {
    let line = line.trim_end();
    let rest = line.strip_prefix("xmrig: ")?;
    Some(report::parse_report(rest).map(|r| Record {
        topic: r.topic,
        fields: r.fields.into_iter().collect(),
        at,
        line: line.to_string(),
    }))
}

/// A console line forwarded by dom0 from domain N's log: `(dN) TEXT`.
pub fn forwarded(line: &str) -> Option<(u32, &str)> {
    let rest = line.strip_prefix("(d")?;
    let (n, text) = rest.split_once(") ")?;
    Some((n.parse().ok()?, text))
}

/// One domain in Xen's debug-key `q` output, as Xen's console showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XenDomainDump {
    /// The domain.
    pub domid: u32,
    /// Every `key=value` of its "General information" block (PoD ones
    /// prefixed `pod_`), as dom0's awk program reads them.
    pub fields: BTreeMap<String, String>,
}

/// Reads Xen's debug-key `q` dumps out of console lines: from `(XEN) [time]
/// General information for domain N:` to its `NODE affinity` or `VCPU
/// information` line, every `key=value` word except on `XenPage`/`DomPage`
/// lines, those of the PoD line prefixed `pod_` (the rules of `rig_q.awk`,
/// which dom0 applies to `xl dmesg`).
#[derive(Default)]
pub struct QDumpParser {
    current: Option<XenDomainDump>,
    /// Finished blocks, in order.
    pub dumps: Vec<XenDomainDump>,
}

impl QDumpParser {
    /// Take one console line.
    pub fn line(&mut self, line: &str) {
        let Some(body) = line.strip_prefix("(XEN)") else {
            return;
        };
        let mut body = body.strip_prefix(' ').unwrap_or(body);
        // console_timestamps: "[   12.345678] "
        if body.starts_with('[') {
            if let Some((_, r)) = body.split_once("] ") {
                body = r;
            }
        }
        if let Some(rest) = body.strip_prefix("General information for domain ") {
            self.end();
            if let Some(Ok(d)) = rest.trim_end().strip_suffix(':').map(str::parse) {
                self.current = Some(XenDomainDump {
                    domid: d,
                    fields: BTreeMap::new(),
                });
            }
            return;
        }
        // The same rules as rig_q.awk.
        if body.contains("NODE affinity") || body.contains("VCPU information") {
            self.end();
            return;
        }
        if body.contains("Page ") {
            return;
        }
        let Some(cur) = &mut self.current else {
            return;
        };
        let pod = body.contains("PoD");
        for w in body.split_whitespace() {
            if let Some((k, v)) = w.split_once('=') {
                if !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
                    && !v.contains('=')
                {
                    let k = if pod {
                        format!("pod_{k}")
                    } else {
                        k.to_string()
                    };
                    cur.fields.insert(k, v.to_string());
                }
            }
        }
    }

    fn end(&mut self) {
        if let Some(d) = self.current.take() {
            self.dumps.push(d);
        }
    }

    /// All blocks, the open one included.
    pub fn finish(mut self) -> Vec<XenDomainDump> {
        self.end();
        self.dumps
    }
}

/// What happened to one job.
#[derive(Clone, Debug, Default)]
pub struct XlJobResult {
    /// The job's name.
    pub name: String,
    /// The domid `xl domid` gave.
    pub domid: Option<u32>,
    /// `creating` to `created` (how long `xl create` took, roughly).
    pub create_time: Option<Duration>,
    /// `creating` to the domain's first console line.
    pub first_line_after: Option<Duration>,
    /// The `shutdown` record (`reason=poweroff|reboot|crash|...`).
    pub shutdown: Option<Record>,
    /// Whether the job hit its bound (`job-timeout`).
    pub timed_out: bool,
    /// `create-failed`, if so.
    pub create_failed: Option<Record>,
    /// `xl-list when=created` (the domain made paused, before the guest
    /// ran) and `when=shutdown`.
    pub xl_list_created: Option<Record>,
    /// See [`XlJobResult::xl_list_created`].
    pub xl_list_shutdown: Option<Record>,
    /// `xl-list-long when=created`: `xl list -l`'s `max_memkb` and
    /// `target_memkb` for the domain, the toolstack's own settings.
    pub xl_list_long: Option<Record>,
    /// `xen-pages` (without `step=`): Xen's own count (debug key q) at the
    /// end, before destroy.
    pub xen_pages: Option<Record>,
    /// The records of the job's [`XlJob::steps`] (every record with
    /// `step=K`, `xen-pages step=K` included), in order.
    pub steps: Vec<Record>,
    /// `free-memory when=after-destroy`, MiB.
    pub free_after_mib: Option<u64>,
    /// The domain's console lines dom0 forwarded (without `(dN) `).
    pub console: Vec<String>,
}

impl XlJobResult {
    /// The shutdown reason, if it shut down.
    pub fn reason(&self) -> Option<&str> {
        self.shutdown.as_ref().and_then(|r| r.get("reason"))
    }
}

/// How a rig boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XlEnd {
    /// dom0 printed `xmrig: done`.
    Done,
    /// Killed at the timeout; the job that was running, if any.
    Timeout {
        /// After how long.
        after: Duration,
        /// The job between `creating` and `destroyed`.
        running: Option<String>,
    },
    /// Xen gave up (panic, dom0 crash).
    Xen(String),
    /// QEMU ended by itself before `done`.
    Qemu(String),
}

impl fmt::Display for XlEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XlEnd::Done => f.write_str("dom0 done"),
            XlEnd::Timeout { after, running } => {
                write!(f, "timeout: QEMU killed after {} s", after.as_secs())?;
                match running {
                    Some(j) => write!(f, " while job {j} was running"),
                    None => write!(f, " (no job running)"),
                }
            }
            XlEnd::Xen(s) => write!(f, "Xen gave up: {s}"),
            XlEnd::Qemu(s) => write!(f, "QEMU ended before dom0 was done: {s}"),
        }
    }
}

/// Everything a rig boot produced.
#[derive(Debug)]
// Not every field has a reader in the runner yet: this is the API for
// scenarios that check xl-made domUs.
#[allow(dead_code)]
pub struct XlResult {
    /// How it ended.
    pub end: XlEnd,
    /// Every `xmrig:` record, in order.
    pub records: Vec<Record>,
    /// Lines that started with `xmrig: ` but did not parse.
    pub bad_records: Vec<String>,
    /// Per job, in the order of the jobs.
    pub jobs: Vec<XlJobResult>,
    /// The agents' decoded logs, by source domain.
    pub logs: Logs,
    /// Decoding warnings.
    pub warnings: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: Vec<String>,
    /// Xen's debug-key `q` blocks as Xen's console showed them.
    pub xen_q: Vec<XenDomainDump>,
    /// Forwarded console lines by domid (99: the forwarder's self-test).
    pub console: BTreeMap<u32, Vec<String>>,
    /// QEMU start to `xmrig: ready`.
    pub dom0_ready: Option<Duration>,
    /// Disagreements the runner found (a domid other than predicted, a
    /// `xen-pages` record that differs from Xen's own console, `fatal`).
    pub problems: Vec<String>,
    /// The whole serial log.
    pub log_path: PathBuf,
    /// How long it took.
    pub elapsed: Duration,
}

impl XlResult {
    /// All records of a topic.
    pub fn topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.topic == topic)
    }

    /// The result of job `name`.
    pub fn job(&self, name: &str) -> Option<&XlJobResult> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// `free-memory` at the start, MiB.
    pub fn free_at_start_mib(&self) -> Option<u64> {
        self.topic("free-memory")
            .find(|r| r.get("when") == Some("start"))
            .and_then(|r| r.num("mib"))
    }
}

/// One rig boot to do.
#[derive(Clone, Debug)]
pub struct XlSpec {
    /// Architecture.
    pub arch: Arch,
    /// The domUs to create, one after the other.
    pub jobs: Vec<XlJob>,
    /// Bound per job, create to shutdown.
    pub job_timeout: Duration,
    /// Bound for the whole boot (QEMU is killed).
    pub timeout: Duration,
    /// What to print live.
    pub show: Show,
    /// Where the whole serial log goes.
    pub log_path: PathBuf,
    /// Scratch directory (the run's initramfs).
    pub work_dir: PathBuf,
    /// Also run the console forwarder's self-test (fake domain 99).
    pub forwarder_selftest: bool,
    /// Physical CPUs QEMU gives Xen: 1 (dom0 and the domUs share it, the
    /// default), or 2, with dom0's one vCPU pinned to CPU 0
    /// (`dom0_max_vcpus=1 dom0_vcpus_pin`) so that a job with `cpus="1"`
    /// in its config has CPU 1 to itself (benchmarks: dom0's poller then
    /// takes no time from the guest it measures).
    pub cpus: u32,
}

/// Sorts the console of a rig boot into an [`XlResult`] as it arrives.
struct Watcher {
    start: Instant,
    show: Show,
    records: Vec<Record>,
    bad_records: Vec<String>,
    jobs: Vec<XlJobResult>,
    /// Job index by domid, and when each job's `creating` came.
    by_domid: BTreeMap<u32, usize>,
    creating_at: BTreeMap<usize, Duration>,
    running: Option<usize>,
    q: QDumpParser,
    console: BTreeMap<u32, Vec<String>>,
    first_tag_at: BTreeMap<u32, Duration>,
    /// Per `xen-pages` record (its index in `records`): the domain's last
    /// debug-key `q` block Xen had printed when the record came.
    q_seen: BTreeMap<usize, XenDomainDump>,
    done: bool,
}

impl Watcher {
    fn new(start: Instant, show: Show, jobs: &[XlJob]) -> Watcher {
        Watcher {
            start,
            show,
            records: Vec::new(),
            bad_records: Vec::new(),
            jobs: jobs
                .iter()
                .map(|j| XlJobResult {
                    name: j.name.clone(),
                    ..XlJobResult::default()
                })
                .collect(),
            by_domid: BTreeMap::new(),
            creating_at: BTreeMap::new(),
            running: None,
            q: QDumpParser::default(),
            console: BTreeMap::new(),
            first_tag_at: BTreeMap::new(),
            q_seen: BTreeMap::new(),
            done: false,
        }
    }

    fn job_of(&self, r: &Record) -> Option<usize> {
        if let Some(n) = r.get("name") {
            return self.jobs.iter().position(|j| j.name == n);
        }
        let d: u32 = r.get("domid")?.parse().ok()?;
        self.by_domid.get(&d).copied()
    }

    fn line(&mut self, line: &str) -> Control {
        let at = self.start.elapsed();
        self.q.line(line);
        if let Some((d, text)) = forwarded(line) {
            self.console.entry(d).or_default().push(text.to_string());
        }
        // The first line tagged with each domain, by Xen or by dom0.
        let src = Source::from_prefix(line.split("@xm:").next().unwrap_or(line));
        if line.contains(&format!("(d{})", src.0)) {
            self.first_tag_at.entry(u32::from(src.0)).or_insert(at);
        }
        let Some(parsed) = parse_record(line, at) else {
            return Control::Continue;
        };
        if self.show == Show::Agents {
            println!("{}", line.trim_end());
        }
        let r = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.bad_records.push(format!("{e}: {line}"));
                return Control::Continue;
            }
        };
        let job = self.job_of(&r);
        if r.topic == "xen-pages" {
            let d = r.num("domid");
            let seen = self
                .q
                .current
                .iter()
                .chain(self.q.dumps.iter().rev())
                .find(|q| Some(u64::from(q.domid)) == d);
            if let Some(q) = seen {
                self.q_seen.insert(self.records.len(), q.clone());
            }
        }
        if let (Some(_), Some(i)) = (r.get("step"), job) {
            self.jobs[i].steps.push(r.clone());
            self.records.push(r);
            return Control::Continue;
        }
        match (r.topic.as_str(), job) {
            ("creating", Some(i)) => {
                self.creating_at.insert(i, at);
                self.running = Some(i);
            }
            ("created", Some(i)) => {
                if let Some(d) = r.get("domid").and_then(|d| d.parse().ok()) {
                    self.jobs[i].domid = Some(d);
                    self.by_domid.insert(d, i);
                }
                let since = self.creating_at.get(&i).copied().unwrap_or_default();
                self.jobs[i].create_time = Some(at.saturating_sub(since));
            }
            ("create-failed", Some(i)) => {
                self.jobs[i].create_failed = Some(r.clone());
                self.running = None;
            }
            ("xl-list-long", Some(i)) => self.jobs[i].xl_list_long = Some(r.clone()),
            ("xl-list", Some(i)) => match r.get("when") {
                Some("created") => self.jobs[i].xl_list_created = Some(r.clone()),
                Some("shutdown") => self.jobs[i].xl_list_shutdown = Some(r.clone()),
                _ => {}
            },
            ("shutdown", Some(i)) => self.jobs[i].shutdown = Some(r.clone()),
            ("job-timeout", Some(i)) => self.jobs[i].timed_out = true,
            ("xen-pages", Some(i)) => self.jobs[i].xen_pages = Some(r.clone()),
            ("destroyed", Some(_)) => self.running = None,
            ("free-memory", Some(i)) if r.get("when") == Some("after-destroy") => {
                self.jobs[i].free_after_mib = r.num("mib");
                self.running = None;
            }
            ("done", _) => self.done = true,
            _ => {}
        }
        self.records.push(r);
        if self.done {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    /// Per job: its console and when its domain's first line came (domids
    /// are not reused within a boot).
    fn finish_jobs(&mut self) {
        for (i, j) in self.jobs.iter_mut().enumerate() {
            let Some(d) = j.domid else { continue };
            j.console = self.console.get(&d).cloned().unwrap_or_default();
            if let (Some(&first), Some(&since)) =
                (self.first_tag_at.get(&d), self.creating_at.get(&i))
            {
                j.first_line_after = Some(first.saturating_sub(since));
            }
        }
    }

    /// Cross-checks: the records against each other and against Xen's own
    /// console.
    fn problems(&self, xen_q: &[XenDomainDump]) -> Vec<String> {
        let mut out = Vec::new();
        for (n, r) in self.records.iter().enumerate() {
            match r.topic.as_str() {
                "fatal" | "job-error" | "destroy-failed" | "xen-pages-missing"
                | "domid-mismatch" => out.push(format!("dom0 reported: {r}")),
                "xen-pages" => {
                    let Some(d) = r.num("domid") else { continue };
                    // The last block for that domain Xen printed before the
                    // record arrived (else the last one at all).
                    let seen = self
                        .q_seen
                        .get(&n)
                        .or_else(|| xen_q.iter().rev().find(|q| u64::from(q.domid) == d));
                    match seen {
                        Some(q) => {
                            for (k, v) in &r.fields {
                                if k != "domid" && k != "step" && q.fields.get(k) != Some(v) {
                                    out.push(format!(
                                        "xen-pages of d{d}: dom0 says {k}={v}, Xen's console {:?}",
                                        q.fields.get(k)
                                    ));
                                }
                            }
                        }
                        None => out.push(format!(
                            "xen-pages of d{d}: Xen's console showed no debug-key q block for it"
                        )),
                    }
                }
                _ => {}
            }
        }
        out.extend(self.bad_records.iter().map(|b| format!("bad record: {b}")));
        out
    }
}

/// Boot the rig, create `spec.jobs` one after the other with `agent`, and
/// collect everything. Prepares (or reuses) the cached parts first.
pub fn boot_xl(env: &Env, spec: &XlSpec, agent: &Agent, table: &Table) -> Result<XlResult> {
    boot_xl_with(env, spec, agent, table, &[])
}

/// [`boot_xl`] with other builds of the agent beside it, for the jobs that
/// name them ([`AgentVariant`]).
pub fn boot_xl_with(
    env: &Env,
    spec: &XlSpec,
    agent: &Agent,
    table: &Table,
    variants: &[AgentVariant<'_>],
) -> Result<XlResult> {
    if agent.arch != spec.arch {
        bail!(
            "internal error: {} agent for an {} rig",
            agent.arch,
            spec.arch
        );
    }
    let jobs = render_jobs(&spec.jobs, spec.job_timeout, spec.forwarder_selftest)?;
    let parts = prepare(spec.arch)?;
    let peer = crate::peer::build(spec.arch)?;
    std::fs::create_dir_all(&spec.work_dir)
        .with_context(|| format!("creating {}", spec.work_dir.display()))?;
    let initramfs = spec.work_dir.join("initramfs.cpio");
    let mut data =
        std::fs::read(&parts.base).with_context(|| format!("reading {}", parts.base.display()))?;
    let linux = spec.jobs.iter().any(XlJob::is_linux);
    data.extend(run_archive(spec.arch, agent, &peer, &jobs, &parts, linux)?);
    let others = variant_sources(spec.arch, &spec.jobs, variants)?;
    if !variants.is_empty() {
        data.extend(variants_archive(spec.arch, variants)?);
    }
    std::fs::write(&initramfs, &data)
        .with_context(|| format!("writing {}", initramfs.display()))?;

    if !(1..=2).contains(&spec.cpus) {
        bail!("internal error: a rig boot with {} CPUs", spec.cpus);
    }
    let mut cmd = qemu_command(env, spec.arch, &parts, &initramfs, linux, spec.cpus)?;
    let mut sink = Sink::create(&spec.log_path, spec.show)?;
    sink.note(&format!("{} xl rig boot: {}", spec.arch, describe(&cmd)))?;
    for l in jobs.lines() {
        sink.log_only(&format!("job: {l}"))?;
    }
    let mut w = Watcher::new(Instant::now(), sink.show(), &spec.jobs);
    let run = boot::run_qemu(
        &mut cmd,
        &mut sink,
        spec.timeout,
        table,
        &others,
        &mut |line, _: &[Event]| w.line(line),
    )?;
    let end = match run.ended {
        Ended::Stopped => XlEnd::Done,
        Ended::Timeout => XlEnd::Timeout {
            after: spec.timeout,
            running: w.running.map(|i| w.jobs[i].name.clone()),
        },
        Ended::Xen(t) => XlEnd::Xen(t),
        Ended::Exited(code) => XlEnd::Qemu(match code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        }),
        Ended::Hung => XlEnd::Qemu("closed its output but did not exit".into()),
    };
    w.finish_jobs();
    let xen_q = std::mem::take(&mut w.q).finish();
    let problems = w.problems(&xen_q);
    let dom0_ready = w.records.iter().find(|r| r.topic == "ready").map(|r| r.at);
    let r = XlResult {
        end,
        records: w.records,
        bad_records: w.bad_records,
        jobs: w.jobs,
        logs: run.logs,
        warnings: run.warnings,
        qemu_stderr: run.qemu_stderr,
        xen_q,
        console: w.console,
        dom0_ready,
        problems,
        log_path: spec.log_path.clone(),
        elapsed: run.elapsed,
    };
    sink.log_only(&format!(
        "end: {}; dom0 ready {}; {:.1} s",
        r.end,
        r.dom0_ready
            .map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
        r.elapsed.as_secs_f64()
    ))?;
    for j in &r.jobs {
        sink.log_only(&format!(
            "job {}: domid {:?}, create {:?}, first line after {:?}, shutdown {:?}",
            j.name,
            j.domid,
            j.create_time,
            j.first_line_after,
            j.reason()
        ))?;
    }
    for p in &r.problems {
        sink.log_only(&format!("problem: {p}"))?;
    }
    sink.flush()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_file() {
        let mut a = XlJob::new(
            "agent",
            64,
            vec!["exit=shutdown".into(), "domid=@DOMID@".into()],
        );
        a.maxmem_mib = Some(128);
        a.extra_cfg = vec![r#"vuart="sbsa_uart""#.into()];
        let b = XlJob::new("b.2", 32, vec![]);
        assert_eq!(
            render_jobs(&[a.clone(), b.clone()], Duration::from_secs(45), true).unwrap(),
            "@selftest\n\
             agent 64 128 45 vuart=\"sbsa_uart\" | exit=shutdown domid=@DOMID@\n\
             b.2 32 - 45 | \n"
        );
        let l = XlJob::linux("lx", 512, vec!["console=hvc0".into()]);
        assert!(l.is_linux() && !a.is_linux());
        assert_eq!(
            render_jobs(&[l], Duration::from_secs(45), false).unwrap(),
            "lx 512 - 45 guest=linux | console=hvc0\n"
        );
        assert!(render_jobs(&[b.clone(), b.clone()], Duration::from_secs(1), false).is_err());
        for bad in [
            XlJob::new("a b", 64, vec![]),
            XlJob::new("", 64, vec![]),
            XlJob::new("-x", 64, vec![]),
            XlJob::new("a", 0, vec![]),
            XlJob::new("a", 64, vec!["x y".into()]),
            XlJob::new("a", 64, vec!["q\"".into()]),
            XlJob {
                maxmem_mib: Some(32),
                ..XlJob::new("a", 64, vec![])
            },
            XlJob {
                extra_cfg: vec!["a=b|c".into()],
                ..XlJob::new("a", 64, vec![])
            },
            XlJob {
                extra_cfg: vec!["novalue".into()],
                ..XlJob::new("a", 64, vec![])
            },
        ] {
            assert!(check_job(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jobs_file_steps() {
        let j = XlJob {
            steps: vec![
                XlStep::MemSet(48),
                XlStep::WaitMib {
                    mib: 48,
                    timeout: Duration::from_millis(2_050),
                },
                XlStep::Pages,
                XlStep::CpuTime,
                XlStep::Sleep(Duration::from_millis(1500)),
                XlStep::XsRead("memory/target".into()),
                XlStep::XsWrite {
                    path: "data/x".into(),
                    value: " two words ".into(),
                },
                XlStep::XsWrite {
                    path: "memory/target".into(),
                    value: String::new(),
                },
                XlStep::Shutdown,
                XlStep::Reboot,
                XlStep::Destroy,
                XlStep::Unpause,
            ],
            timeout: Some(Duration::from_millis(90_500)),
            ..XlJob::new("s", 64, vec!["a=1".into()])
        };
        assert_eq!(
            render_jobs(
                &[j.clone(), XlJob::new("t", 32, vec![])],
                Duration::from_secs(60),
                false
            )
            .unwrap(),
            "s 64 - 91 | a=1\n\
             + mem-set 48\n\
             + wait-mib 48 21\n\
             + pages\n\
             + cpu\n\
             + sleep 15\n\
             + xs-read memory/target\n\
             + xs-write data/x= two words \n\
             + xs-write memory/target=\n\
             + shutdown\n\
             + reboot\n\
             + destroy\n\
             + unpause\n\
             t 32 - 60 | \n"
        );
        assert_eq!(j.step_time(), Duration::from_millis(3_550));
        // The command line form reads back what it shows (to the tenth of
        // a second the jobs file keeps).
        for s in &j.steps {
            let back = XlStep::parse(&s.to_string()).unwrap();
            assert_eq!(back.jobs_line(), s.jobs_line(), "{s}");
        }
        let bad_steps = [
            XlStep::XsRead(String::new()),
            XlStep::XsRead("/local/domain/1/x".into()),
            XlStep::XsRead("a//b".into()),
            XlStep::XsRead("a/".into()),
            XlStep::XsRead("a b".into()),
            XlStep::XsRead("a;b".into()),
            XlStep::XsRead("a|b".into()),
            XlStep::XsRead("a=b".into()),
            XlStep::XsRead("a\nb".into()),
            XlStep::XsWrite {
                path: "x".into(),
                value: "q\"".into(),
            },
            XlStep::XsWrite {
                path: "x".into(),
                value: "a\nb".into(),
            },
            XlStep::XsWrite {
                path: "x".into(),
                value: "a\\b".into(),
            },
            XlStep::Sleep(Duration::from_secs(90_000)),
        ];
        for b in bad_steps {
            let job = XlJob {
                steps: vec![b.clone()],
                ..XlJob::new("a", 64, vec![])
            };
            assert!(check_job(&job).is_err(), "{b:?}");
        }
        let two_unpauses = XlJob {
            steps: vec![XlStep::Unpause, XlStep::Unpause],
            ..XlJob::new("a", 64, vec![])
        };
        assert!(check_job(&two_unpauses).is_err());
        let zero = XlJob {
            timeout: Some(Duration::ZERO),
            ..XlJob::new("a", 64, vec![])
        };
        assert!(check_job(&zero).is_err());
        // Values with `;`, `|` and `=` are fine in xs-write: the rest of the
        // line is the value.
        assert!(check_step(&XlStep::XsWrite {
            path: "x".into(),
            value: "a;b|c=d".into()
        })
        .is_ok());
    }

    #[test]
    fn step_command_lines() {
        let p = |s: &str| XlStep::parse(s).unwrap();
        assert_eq!(p("mem-set=32"), XlStep::MemSet(32));
        assert_eq!(
            p("wait-mib=32"),
            XlStep::WaitMib {
                mib: 32,
                timeout: Duration::from_secs(20)
            }
        );
        assert_eq!(
            p("wait-mib=32:2.5"),
            XlStep::WaitMib {
                mib: 32,
                timeout: Duration::from_millis(2500)
            }
        );
        assert_eq!(p("sleep=0.3"), XlStep::Sleep(Duration::from_millis(300)));
        assert_eq!(p("pages"), XlStep::Pages);
        assert_eq!(p("cpu"), XlStep::CpuTime);
        assert_eq!(
            p("xs-read=memory/target"),
            XlStep::XsRead("memory/target".into())
        );
        assert_eq!(
            p("xs-write=memory/target=-5"),
            XlStep::XsWrite {
                path: "memory/target".into(),
                value: "-5".into()
            }
        );
        assert_eq!(
            p("xs-write=control/shutdown=suspend").to_string(),
            "xs-write=control/shutdown=suspend"
        );
        for s in ["shutdown", "reboot", "destroy", "unpause"] {
            assert_eq!(p(s).to_string(), s);
        }
        for s in [
            "xen-reach=64:120",
            "wait-xs=control/feature-balloon:2.5",
            "wait-log=xmguest-ready:30",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(
            p("xen-reach=64").jobs_line(),
            "xen-reach 64 200",
            "20 s by default, in tenths"
        );
        assert_eq!(
            p("wait-log=a:b=c:1").jobs_line(),
            "wait-log a:b=c 10",
            "the last `:` starts the seconds"
        );
        for bad in [
            "mem-set",
            "mem-set=x",
            "mem-set=-1",
            "wait-mib=32:x",
            "wait-mib=32:-1",
            "sleep",
            "sleep=nan",
            "pages=1",
            "xs-read=",
            "xs-write=x",
            "xs-write=x=\"",
            "xen-reach=x",
            "wait-xs=/abs:1",
            "wait-log=two words:1",
            "wait-log=:1",
            "bogus",
            "",
        ] {
            assert!(XlStep::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn watcher_sorts_step_records() {
        let jobs = [XlJob::new("a", 64, vec![])];
        let mut w = Watcher::new(Instant::now(), Show::Nothing, &jobs);
        for l in [
            "xmrig: creating name=a predicted_domid=1 uptime=5.69",
            "xmrig: created name=a domid=1 uptime=10.65",
            "xmrig: mem-set step=0 name=a domid=1 target_mib=32 uptime=10.70 took_s=0.21",
            "(XEN) [   11.0] General information for domain 1:",
            "(XEN) [   11.1]     nr_pages=16401 xenheap_pages=2 max_pages=8448",
            "(XEN) [   11.2] NODE affinity for domain 1: [0]",
            "xmrig: xen-pages step=1 domid=1 nr_pages=16401 xenheap_pages=2 max_pages=8448",
            r#"xmrig: xs step=2 name=a domid=1 path=memory/target value="32768""#,
            "xmrig: shutdown name=a domid=1 reason=poweroff code=0 uptime=12.0",
            "(XEN) [   13.0] General information for domain 1:",
            "(XEN) [   13.1]     nr_pages=8192 xenheap_pages=2 max_pages=8448",
            "(XEN) [   13.2] NODE affinity for domain 1: [0]",
            "xmrig: xen-pages domid=1 nr_pages=8192 xenheap_pages=2 max_pages=8448",
            "xmrig: destroyed name=a domid=1",
        ] {
            w.line(l);
        }
        let a = &w.jobs[0];
        let topics: Vec<&str> = a.steps.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["mem-set", "xen-pages", "xs"]);
        assert_eq!(a.steps[2].get("value"), Some("32768"));
        assert_eq!(a.steps[1].num("nr_pages"), Some(16401));
        // The final count is the one without a step.
        assert_eq!(
            a.xen_pages.as_ref().and_then(|r| r.num("nr_pages")),
            Some(8192)
        );
        // Each xen-pages record is checked against the block Xen printed
        // just before it, not the last one.
        let q = std::mem::take(&mut w.q).finish();
        assert_eq!(w.problems(&q), Vec::<String>::new());
    }

    /// Every step in a real rig boot (slow: about a minute per
    /// architecture): `cargo test -p xtask -- --ignored xl_steps_boot`
    /// (`XENMEM_STEPS_ARCH=aarch64` for the other one). The agent exits at
    /// once, so most steps run while the domain is still paused (before an
    /// `Unpause` step) or after it has shut down.
    #[test]
    #[ignore]
    fn xl_steps_boot() {
        let arch = match std::env::var("XENMEM_STEPS_ARCH").as_deref() {
            Ok("aarch64") => Arch::Aarch64,
            _ => Arch::X86_64,
        };
        let env = setup::setup().unwrap();
        let agent = crate::agent::build(arch).unwrap();
        let table = crate::decode::load_table(&agent.elf).unwrap();
        let secs = Duration::from_secs;
        let tenths = |n: u64| Duration::from_millis(n * 100);
        let opts = |extra: &[&str]| {
            let mut o: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            o.push("exit=shutdown".into());
            if arch == Arch::Aarch64 {
                o.push(format!("domid={DOMID_PLACEHOLDER}"));
            }
            o
        };
        let xs_write = |p: &str, v: &str| XlStep::XsWrite {
            path: p.into(),
            value: v.into(),
        };
        let jobs = vec![
            // Paused: pages, cpu, xenstore, a mem-set the paused agent
            // cannot follow; then unpaused, the agent balloons to 32 MiB.
            XlJob {
                steps: vec![
                    XlStep::Pages,
                    XlStep::CpuTime,
                    XlStep::XsRead("memory/target".into()),
                    xs_write("data/x", "two words"),
                    XlStep::XsRead("data/x".into()),
                    XlStep::XsRead("nope".into()),
                    XlStep::MemSet(48),
                    XlStep::WaitMib {
                        mib: 48,
                        timeout: secs(1),
                    },
                    XlStep::Pages,
                    XlStep::Sleep(tenths(5)),
                    XlStep::CpuTime,
                    XlStep::Unpause,
                    XlStep::WaitMib {
                        mib: 32,
                        timeout: secs(20),
                    },
                    XlStep::CpuTime,
                    XlStep::Pages,
                ],
                ..XlJob::new("paused", 64, opts(&["balloon=32M"]))
            },
            // After the agent has shut down.
            XlJob {
                steps: vec![
                    XlStep::Sleep(secs(3)),
                    XlStep::CpuTime,
                    XlStep::MemSet(16),
                    XlStep::WaitMib {
                        mib: 16,
                        timeout: secs(5),
                    },
                    xs_write("memory/target", "abc"),
                    XlStep::XsRead("memory/target".into()),
                    xs_write("memory/target", ""),
                    XlStep::XsRead("memory/target".into()),
                    XlStep::Shutdown,
                    XlStep::Reboot,
                ],
                ..XlJob::new("ended", 64, opts(&[]))
            },
            // Requests to a paused domain that has no PV control yet, then
            // destroyed before it ever ran.
            XlJob {
                steps: vec![
                    XlStep::Shutdown,
                    XlStep::Reboot,
                    xs_write("control/shutdown", "suspend"),
                    XlStep::XsRead("control/shutdown".into()),
                    XlStep::Destroy,
                    XlStep::Pages,
                    XlStep::Unpause,
                ],
                ..XlJob::new("destroyed", 64, opts(&[]))
            },
            // A wait longer than the job's bound: cut at the bound.
            XlJob {
                steps: vec![
                    XlStep::WaitMib {
                        mib: 1,
                        timeout: secs(60),
                    },
                    XlStep::Unpause,
                ],
                timeout: Some(secs(4)),
                ..XlJob::new("bounded", 64, opts(&[]))
            },
            // And a job without steps still runs as always.
            XlJob::new("plain", 64, opts(&["balloon=32M"])),
        ];
        let name = format!("steps-{arch}");
        let spec = XlSpec {
            arch,
            jobs,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            show: Show::Nothing,
            log_path: crate::logs_dir().join(format!("{name}.log")),
            work_dir: crate::work_dir(&name),
            forwarder_selftest: false,
            cpus: 1,
        };
        let res = boot_xl(&env, &spec, &agent, &table).unwrap();
        let log = res.log_path.display().to_string();
        for j in &res.jobs {
            let mut last = None;
            for r in &j.steps {
                let dt = last.map_or(String::new(), |l: Duration| {
                    format!("+{:.2}s ", r.at.saturating_sub(l).as_secs_f64())
                });
                println!("{} {dt}{r}", j.name);
                last = Some(r.at);
            }
        }
        assert_eq!(res.end, XlEnd::Done, "{log}");
        assert_eq!(res.problems, Vec::<String>::new(), "{log}");
        let job = |n: &str| res.job(n).unwrap();
        let topics = |n: &str| -> Vec<String> {
            job(n)
                .steps
                .iter()
                .map(|r| {
                    format!(
                        "{}{}",
                        r.topic,
                        r.get("why").map_or(String::new(), |w| format!(":{w}"))
                    )
                })
                .collect()
        };
        let step = |n: &str, k: usize| -> Record {
            let k = k.to_string();
            job(n)
                .steps
                .iter()
                .find(|r| r.get("step") == Some(k.as_str()))
                .unwrap()
                .clone()
        };

        assert_eq!(
            topics("paused"),
            [
                "xen-pages",
                "cpu",
                "xs",
                "xs-write",
                "xs",
                "xs-error",
                "mem-set",
                "not-reached:timeout",
                "xen-pages",
                "slept",
                "cpu",
                "unpaused",
                "reached",
                "cpu",
                "xen-pages"
            ],
            "{log}"
        );
        let p = |k| step("paused", k);
        assert_eq!(p(1).get("state"), Some("--p---"));
        assert_eq!(p(2).get("value"), Some("65536"));
        assert_eq!(p(3).get("ok"), Some("yes"));
        assert_eq!(p(4).get("value"), Some("two words"));
        assert_eq!(p(7).num("got_mib"), Some(64));
        // mem-set lowers max_pages to the target + 1 MiB at once.
        assert_eq!(p(8).num("max_pages"), Some(48 * 256 + 256));
        assert_eq!(p(12).get("from"), Some("mem-set"));
        assert_eq!(p(14).num("nr_pages"), Some(8192));
        assert_eq!(job("paused").reason(), Some("poweroff"));
        assert_eq!(
            job("paused")
                .xen_pages
                .as_ref()
                .and_then(|r| r.num("nr_pages")),
            Some(8192)
        );

        let e = |k| step("ended", k);
        assert!(e(1).get("state").unwrap().contains('s'), "{}", e(1));
        assert_eq!(e(3).topic, "not-reached");
        assert_eq!(e(3).get("why"), Some("shutdown"));
        assert_eq!(e(4).get("ok"), Some("yes"));
        assert_eq!(e(5).get("value"), Some("abc"));
        assert_eq!(e(7).get("value"), Some(""));
        // Nobody acknowledges control/shutdown: xl is left waiting.
        assert_eq!(e(8).get("ok"), Some("pending"), "{}", e(8));
        assert_eq!(e(9).get("ok"), Some("pending"), "{}", e(9));
        assert_eq!(job("ended").reason(), Some("poweroff"));

        assert_eq!(
            topics("destroyed")[4..],
            [
                "destroyed-early",
                "step-skipped:destroyed",
                "step-skipped:destroyed"
            ],
            "{log}"
        );
        assert_eq!(step("destroyed", 3).get("value"), Some("suspend"));
        assert_eq!(step("destroyed", 0).get("ok"), Some("pending"));
        let d = job("destroyed");
        assert!(d.shutdown.is_none() && d.xen_pages.is_none() && d.xl_list_shutdown.is_none());
        assert!(d.free_after_mib.is_some());

        assert_eq!(
            topics("bounded"),
            ["not-reached:job-timeout", "step-skipped:job-timeout"],
            "{log}"
        );
        assert!(job("bounded").timed_out);

        let plain = job("plain");
        assert!(plain.steps.is_empty());
        assert_eq!(plain.reason(), Some("poweroff"));
        assert_eq!(plain.free_after_mib, res.free_at_start_mib(), "{log}");
    }

    #[test]
    fn agent_variants() {
        assert_eq!(variant_image(Arch::X86_64, "m-1"), "agent-m-1.elf");
        assert_eq!(variant_image(Arch::Aarch64, "m-1"), "agent-m-1.Image");
        assert_eq!(variant_cfg(Arch::X86_64, "m"), r#"kernel="/agent-m.elf""#);
        let dir = std::env::temp_dir().join(format!("xtask-variants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("m.stripped");
        std::fs::write(&img, b"MUTANT").unwrap();
        let agent = Agent {
            arch: Arch::X86_64,
            elf_path: img.clone(),
            elf: vec![],
            boot_image: img,
        };
        let table =
            crate::decode::load_table(&crate::defmt_frames::defmt_elf(&[("defmt_info", "x")]))
                .unwrap();
        let v = [AgentVariant {
            name: "m",
            agent: &agent,
            table: &table,
        }];
        let e = crate::cpio::tests::parse(&variants_archive(Arch::X86_64, &v).unwrap());
        assert_eq!(
            (e[0].name.as_str(), e[0].data.as_slice()),
            ("agent-m.elf", &b"MUTANT"[..])
        );
        assert!(variants_archive(Arch::Aarch64, &v).is_err());
        let bad = [AgentVariant {
            name: "a b",
            ..v[0]
        }];
        assert!(variants_archive(Arch::X86_64, &bad).is_err());
        // The second job boots the variant: domain 2 decodes with its table.
        let mut jobs = vec![XlJob::new("a", 64, vec![]), XlJob::new("b", 64, vec![])];
        jobs[1].extra_cfg.push(variant_cfg(Arch::X86_64, "m"));
        let s = variant_sources(Arch::X86_64, &jobs, &v).unwrap();
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), [Source(2)]);
        // The line lands after the agent's `kernel=` (the last one wins).
        let cfgs = render_jobs(&jobs, DEFAULT_JOB_TIMEOUT, false).unwrap();
        assert!(
            cfgs.contains(r#"b 64 - 60 kernel="/agent-m.elf" | "#),
            "{cfgs}"
        );
        // A job naming an image the boot does not carry.
        jobs[0].extra_cfg.push(variant_cfg(Arch::X86_64, "n"));
        assert!(variant_sources(Arch::X86_64, &jobs, &v).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn per_run_archive() {
        let dir = std::env::temp_dir().join(format!("xtask-rig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("agent.Image");
        std::fs::write(&img, b"IMAGE").unwrap();
        let agent = Agent {
            arch: Arch::Aarch64,
            elf_path: img.clone(),
            elf: vec![],
            boot_image: img,
        };
        let parts = Parts {
            kernel: dir.join("none"),
            base: dir.join("none"),
            linux_initrd: dir.join("lx.cpio"),
            linux_kernel: dir.join("lx.kernel"),
            dir: dir.clone(),
        };
        let peer = dir.join("peer");
        std::fs::write(&peer, b"PEER").unwrap();
        let b = run_archive(Arch::Aarch64, &agent, &peer, "j 1 - 2 | \n", &parts, false).unwrap();
        let e = crate::cpio::tests::parse(&b);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].name, "agent.Image");
        assert_eq!(e[0].data, b"IMAGE");
        // `bin` (already in the base archive; unpacking it again is harmless).
        assert_eq!(e[1].name, "bin");
        assert_eq!(
            (e[2].name.as_str(), e[2].data.as_slice()),
            ("bin/xenmem-peer", &b"PEER"[..])
        );
        assert_eq!(
            (e[3].name.as_str(), e[3].data.as_slice()),
            ("jobs", &b"j 1 - 2 | \n"[..])
        );
        // With a Linux job: the kernel and its initramfs too.
        assert!(run_archive(Arch::Aarch64, &agent, &peer, "", &parts, true).is_err());
        std::fs::write(&parts.linux_kernel, b"BZ").unwrap();
        std::fs::write(&parts.linux_initrd, b"CPIO").unwrap();
        let b = run_archive(Arch::Aarch64, &agent, &peer, "", &parts, true).unwrap();
        let e = crate::cpio::tests::parse(&b);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent.Image",
                "bin",
                "bin/xenmem-peer",
                "jobs",
                "linux.kernel",
                "linux.cpio"
            ]
        );
        assert_eq!(e[4].data, b"BZ");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn init_scripts() {
        let x = init_script(Arch::X86_64);
        assert!(x.contains("LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"));
        assert!(x.contains(r#"echo 'type="pvh"'; echo 'kernel="/agent.elf"'"#));
        let a = init_script(Arch::Aarch64);
        assert!(a.contains(r#"echo 'kernel="/agent.Image"'; echo 'acpi=0'"#));
        for s in [&x, &a] {
            assert!(
                !s.contains("@TRIPLET@")
                    && !s.contains("@CFG_KERNEL@")
                    && !s.contains("@CFG_LINUX@")
            );
            assert!(s.contains(r#"echo 'kernel="/linux.kernel"'; echo 'ramdisk="/linux.cpio"'"#));
            // The modules in the required order.
            assert!(s.contains("for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc;"));
        }
        assert_eq!(
            MODULES.join(" "),
            "xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc"
        );
    }

    #[test]
    fn stamps_change_with_inputs() {
        let m = "libc6 libc6_2.36_amd64.deb 100\n";
        let base = stamp(Arch::X86_64, m, "init");
        assert_eq!(base, stamp(Arch::X86_64, m, "init"));
        assert_eq!(base.len(), 16);
        assert_ne!(base, stamp(Arch::Aarch64, m, "init"));
        assert_ne!(base, stamp(Arch::X86_64, m, "init2"));
        assert_ne!(
            base,
            stamp(Arch::X86_64, "libc6 libc6_2.37_amd64.deb 100\n", "init")
        );
        assert_ne!(
            base,
            stamp(Arch::X86_64, "libc6 libc6_2.36_amd64.deb 101\n", "init")
        );
        assert_eq!(fnv1a(""), "cbf29ce484222325");
        assert_eq!(fnv1a("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn manifests() {
        let dir = std::env::temp_dir().join(format!("xtask-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut debs = vec![(
            "linux-image-6.1.0-57-amd64".to_string(),
            "k.deb".to_string(),
        )];
        debs.extend(PACKAGES.iter().map(|p| (p.to_string(), format!("{p}.deb"))));
        for (_, f) in &debs {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let m = Manifest { debs };
        assert!(m.complete(&dir, "linux-image-6.1.0-"));
        assert_eq!(
            m.kernel("linux-image-6.1.0-"),
            Some("linux-image-6.1.0-57-amd64")
        );
        std::fs::remove_file(dir.join("libgcc-s1.deb")).unwrap();
        assert!(!m.complete(&dir, "linux-image-6.1.0-"));
        std::fs::remove_dir_all(&dir).ok();
        let short = Manifest {
            debs: vec![("libc6".into(), "x.deb".into())],
        };
        assert!(!short.complete(Path::new("/"), "linux-image-6.1.0-"));
    }

    #[test]
    fn records() {
        let at = Duration::from_millis(1500);
        let r = parse_record("xmrig: ready uptime=9.8", at)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.topic.as_str(), r.get("uptime"), r.at),
            ("ready", Some("9.8"), at)
        );
        let r = parse_record(
            "xmrig: shutdown name=agent domid=1 reason=crash code=3 uptime=20.1\r",
            at,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.get("reason"), Some("crash"));
        assert_eq!(r.num("domid"), Some(1));
        assert_eq!(
            r.to_string(),
            "xmrig: shutdown name=agent domid=1 reason=crash code=3 uptime=20.1"
        );
        let r = parse_record(r#"xmrig: fatal what="insmod xenfs""#, at)
            .unwrap()
            .unwrap();
        assert_eq!(r.get("what"), Some("insmod xenfs"));
        assert!(parse_record("xmrig: created name", at).unwrap().is_err());
        assert!(parse_record("(d1) xmrig: done", at).is_none());
        assert!(parse_record("xl: Parsing config", at).is_none());
        assert_eq!(forwarded("(d12) hello world"), Some((12, "hello world")));
        assert_eq!(forwarded("(d1)   spaced"), Some((1, "  spaced")));
        assert_eq!(forwarded("(XEN) (d1) x"), None);
        assert_eq!(forwarded("(dx) x"), None);
    }

    #[test]
    fn elf_needs_of_a_made_up_elf() {
        // xtask itself is a dynamic ELF on the host.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let n = elf_needs(&me).unwrap();
        assert!(n.needed.iter().any(|l| l.starts_with("libc.so")), "{n:?}");
        assert!(n.interp.is_some());
        assert!(elf_needs(b"not an elf").is_err());
    }

    /// Xen 4.17.7's answer to `xl debug-keys q` on the x86_64 rig, captured
    /// from a run (dom0 and the agent as a 64 MiB PVH domU, shut down).
    const Q_SAMPLE: &str = r#"(XEN) [   15.285426] 'q' pressed -> dumping domain info (now = 15285220770)
(XEN) [   15.285708] General information for domain 0:
(XEN) [   15.285889]     refcnt=3 dying=0 pause_count=0
(XEN) [   15.286295]     nr_pages=65536 xenheap_pages=2 dirty_cpus={0} max_pages=65536
(XEN) [   15.286575]     handle=00000000-0000-0000-0000-000000000000 vm_assist=0000002d
(XEN) [   15.286833] Rangesets belonging to domain 0:
(XEN) [   15.287029]     Interrupts { 1-23 }
(XEN) [   15.287405]     I/O Memory { 0-fedff, fef00-fcfffff }
(XEN) [   15.287612]     I/O Ports  { 0-1f, 22-3f, 44-60, 62-9f, a2-3f7, 400-607, 60c-cfb, d00-ffff }
(XEN) [   15.288087]     log-dirty  { }
(XEN) [   15.288230] Memory pages belonging to domain 0:
(XEN) [   15.288379]     DomPage list too long to display
(XEN) [   15.288629]     XenPage 000000000001fd69: caf=c000000000000002, taf=e400000000000002
(XEN) [   15.288843]     XenPage 000000000001fdbb: caf=c000000000000002, taf=e400000000000002
(XEN) [   15.289116] NODE affinity for domain 0: [0]
(XEN) [   15.289236] VCPU information and callbacks for domain 0:
(XEN) [   15.289403]   UNIT0 affinities: hard={0} soft={0}
(XEN) [   15.289576]     VCPU0: CPU0 [has=T] poll=0 upcall_pend=01 upcall_mask=00 dirty_cpu=0
(XEN) [   15.289901]     pause_count=0 pause_flags=0
(XEN) [   15.290058] No periodic timer
(XEN) [   15.290171] General information for domain 1:
(XEN) [   15.290283]     refcnt=3 dying=0 pause_count=0
(XEN) [   15.290448]     nr_pages=16401 xenheap_pages=2 dirty_cpus={} max_pages=16640
(XEN) [   15.290632]     handle=dd929774-f1d0-11f1-9e63-f7a241b80669 vm_assist=00000000
(XEN) [   15.290837]     paging assistance: hap refcounts translate external 
(XEN) [   15.291091] Rangesets belonging to domain 1:
(XEN) [   15.291208]     Interrupts { }
(XEN) [   15.291308]     I/O Memory { }
(XEN) [   15.291411]     I/O Ports  { }
(XEN) [   15.291504]     log-dirty  { }
(XEN) [   15.291605] Memory pages belonging to domain 1:
(XEN) [   15.291794]     DomPage list too long to display
(XEN) [   15.291983]     PoD entries=0 cachesize=0
(XEN) [   15.292142]     XenPage 000000000001b732: caf=c000000000000001, taf=e400000000000001
(XEN) [   15.292351]     XenPage 000000000001fd1e: caf=c000000000000001, taf=e400000000000001
(XEN) [   15.292554] NODE affinity for domain 1: [0]
(XEN) [   15.292675] VCPU information and callbacks for domain 1:
(XEN) [   15.292821]   UNIT0 affinities: hard={0} soft={0}
(XEN) [   15.293017]     VCPU0: CPU0 [has=F] poll=0 upcall_pend=01 upcall_mask=00 
(XEN) [   15.293231]     pause_count=1 pause_flags=0
(XEN) [   15.293361]     paging assistance: hap, 4 levels
(XEN) [   15.293536] No periodic timer
(XEN) [   15.293672] Notifying guest 0:0 (virq 1, port 0)
(XEN) [   15.293840] Notifying guest 1:0 (virq 1, port 0)
(XEN) [   15.293989] Shared frames 0 -- Saved frames 0
"#;

    /// The same on the aarch64 rig (p2m mapping lines; `HW_LR[0]=...` words
    /// after the VCPU heading, which must not count).
    const Q_SAMPLE_ARM: &str = r#"(XEN) [    6.539200] 'q' pressed -> dumping domain info (now = 6539094912)
(XEN) [    6.539605] General information for domain 0:
(XEN) [    6.539897]     refcnt=3 dying=0 pause_count=0
(XEN) [    6.540256]     nr_pages=65536 xenheap_pages=2 dirty_cpus={} max_pages=65536
(XEN) [    6.540723]     handle=00000000-0000-0000-0000-000000000000 vm_assist=00000000
(XEN) [    6.541149] p2m mappings for domain 0 (vmid 1):
(XEN) [    6.541472]   1G mappings: 512 (shattered 0)
(XEN) [    6.541686]   2M mappings: 315 (shattered 5)
(XEN) [    6.541930]   4K mappings: 195079
(XEN) [    6.542204] Rangesets belonging to domain 0:
(XEN) [    6.542586]     Interrupts { 34-39, 48-79 }
(XEN) [    6.543554]     I/O Memory { 0-8000, 9010-9011, 9020-9021, 9030-9031, a000-a004, 10000-3f000, 4010000-4020000, 8000000-10000000 }
(XEN) [    6.545142] NODE affinity for domain 0: [0]
(XEN) [    6.545433] VCPU information and callbacks for domain 0:
(XEN) [    6.545697]   UNIT0 affinities: hard={0} soft={0}
(XEN) [    6.546037]     VCPU0: CPU0 [has=T] poll=0 upcall_pend=00 upcall_mask=00 
(XEN) [    6.546464]     pause_count=0 pause_flags=0
(XEN) [    6.546723] GICH_LRs (vcpu 0) mask=0
(XEN) [    6.547010]    HW_LR[0]=50a000000000001b
(XEN) [    6.547251]    HW_LR[1]=10a000000000001b
(XEN) [    6.547473]    HW_LR[2]=0
(XEN) [    6.547656]    HW_LR[3]=0
(XEN) [    6.547908] Inflight irq=27 lr=0
(XEN) [    6.548170] No periodic timer
(XEN) [    6.548409] General information for domain 1:
(XEN) [    6.548616]     refcnt=3 dying=0 pause_count=0
(XEN) [    6.548838]     nr_pages=16388 xenheap_pages=2 dirty_cpus={} max_pages=16640
(XEN) [    6.549143]     handle=98cc48cb-8e61-463f-97ef-2da1ba95a1aa vm_assist=00000000
(XEN) [    6.549430] p2m mappings for domain 1 (vmid 2):
(XEN) [    6.549626]   1G mappings: 0 (shattered 0)
(XEN) [    6.549829]   2M mappings: 32 (shattered 0)
(XEN) [    6.550012]   4K mappings: 4
(XEN) [    6.550173] Rangesets belonging to domain 1:
(XEN) [    6.550413]     Interrupts { }
(XEN) [    6.550675]     I/O Memory { }
(XEN) [    6.550903] NODE affinity for domain 1: [0]
(XEN) [    6.551128] VCPU information and callbacks for domain 1:
(XEN) [    6.551402]   UNIT0 affinities: hard={0} soft={0}
(XEN) [    6.551649]     VCPU0: CPU0 [has=F] poll=0 upcall_pend=01 upcall_mask=01 
(XEN) [    6.551960]     pause_count=1 pause_flags=0
(XEN) [    6.552172] GICH_LRs (vcpu 0) mask=0
(XEN) [    6.552402]    VCPU_LR[0]=0
(XEN) [    6.552617]    VCPU_LR[1]=0
(XEN) [    6.552763]    VCPU_LR[2]=0
(XEN) [    6.552925]    VCPU_LR[3]=0
(XEN) [    6.553086] Inflight irq=31 lr=0
(XEN) [    6.553268] No periodic timer
(XEN) [    6.553538] Notifying guest 0:0 (virq 1, port 0)
(XEN) [    6.553919] Notifying guest 1:0 (virq 1, port 0)
"#;

    #[test]
    fn xen_q_dumps_arm() {
        let mut p = QDumpParser::default();
        Q_SAMPLE_ARM.lines().for_each(|l| p.line(l));
        let dumps = p.finish();
        assert_eq!(dumps.iter().map(|d| d.domid).collect::<Vec<_>>(), [0, 1]);
        let d1 = &dumps[1].fields;
        assert_eq!(d1["nr_pages"], "16388");
        assert_eq!(d1["max_pages"], "16640");
        assert!(!d1.contains_key("pod_entries"));
        assert!(!dumps[0].fields.keys().any(|k| k.contains("LR")));
        assert_eq!(d1.len(), 9, "{d1:?}");
    }

    #[test]
    fn xen_q_dumps() {
        let mut p = QDumpParser::default();
        for l in Q_SAMPLE.lines() {
            p.line(l);
        }
        let dumps = p.finish();
        assert_eq!(dumps.len(), 2);
        assert_eq!(dumps[0].domid, 0);
        assert_eq!(dumps[0].fields["nr_pages"], "65536");
        assert_eq!(dumps[0].fields["max_pages"], "65536");
        assert!(!dumps[0].fields.contains_key("pod_entries")); // dom0 has no PoD line
        let d1 = &dumps[1];
        assert_eq!(d1.domid, 1);
        let get = |k: &str| d1.fields.get(k).map(String::as_str);
        assert_eq!(get("nr_pages"), Some("16401"));
        assert_eq!(get("max_pages"), Some("16640"));
        assert_eq!(get("xenheap_pages"), Some("2"));
        assert_eq!(get("pod_entries"), Some("0"));
        assert_eq!(get("pod_cachesize"), Some("0"));
        assert_eq!(get("dirty_cpus"), Some("{}"));
        // Nothing from the XenPage lines (caf=..., taf=...).
        assert!(!d1.fields.keys().any(|k| k == "caf" || k == "taf"));
        assert_eq!(d1.fields.len(), 11, "{d1:?}");
    }

    /// dom0's awk program gives the same words as the host's parser (run
    /// with the host's awk, when there is one; dom0 runs busybox awk).
    #[test]
    fn q_awk_agrees_with_the_host_parser() {
        let Some(awk) = which("awk") else { return };
        let dir = std::env::temp_dir().join(format!("xtask-qawk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("q.awk"), Q_AWK).unwrap();
        for (sample, d) in [
            (Q_SAMPLE, "0"),
            (Q_SAMPLE, "1"),
            (Q_SAMPLE, "7"),
            (Q_SAMPLE_ARM, "1"),
        ] {
            std::fs::write(dir.join("dmesg"), sample).unwrap();
            let mut p = QDumpParser::default();
            sample.lines().for_each(|l| p.line(l));
            let dumps = p.finish();
            let out = Command::new(&awk)
                .args(["-v", &format!("d={d}"), "-f"])
                .arg(dir.join("q.awk"))
                .arg(dir.join("dmesg"))
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let rec = parse_record(&format!("xmrig: xen-pages {}", text.trim()), Duration::ZERO)
                .unwrap()
                .unwrap();
            let want = dumps
                .iter()
                .find(|q| q.domid.to_string() == d)
                .map(|q| q.fields.clone())
                .unwrap_or_default();
            assert_eq!(rec.fields, want, "domain {d}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A rig boot's console, as dom0 and Xen print it.
    fn console_of_a_run(pages_seen_by_xen: &str) -> Vec<String> {
        let mut v: Vec<String> = [
            "(XEN) [    1.0] Xen version 4.17.7",
            "xl: Done setting up Dom0",
            "xmrig: ready uptime=5.45",
            "xmrig: free-memory mib=246 when=start",
            "xmrig: creating name=a predicted_domid=1 uptime=5.69",
            "xl: Parsing config from /tmp/a.cfg",
            "xmrig: created name=a domid=1 uptime=10.65",
            "(d1) hello from the guest",
            "(d1)   second line",
            "xmrig: xl-list when=created name=a domid=1 mem_mib=64 vcpus=1 state=-b---- time_s=0.1",
            "xmrig: shutdown name=a domid=1 reason=poweroff code=0 uptime=11.35",
            "xmrig: xl-list when=shutdown name=a domid=1 mem_mib=64 vcpus=1 state=---s-- time_s=0.1",
            "(XEN) [   15.2] General information for domain 1:",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(format!(
            "(XEN) [   15.3]     nr_pages={pages_seen_by_xen} max_pages=16640"
        ));
        v.extend(
            [
                "(XEN) [   15.4] NODE affinity for domain 1: [0]",
                "xmrig: xen-pages domid=1 nr_pages=16401 max_pages=16640",
                "xmrig: destroyed name=a domid=1",
                "xmrig: free-memory mib=246 when=after-destroy name=a domid=1",
                "xmrig: free-memory mib=246 when=end",
                "xmrig: done",
                "after done",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v
    }

    #[test]
    fn watcher_sorts_a_run() {
        let jobs = [XlJob::new("a", 64, vec![]), XlJob::new("b", 64, vec![])];
        let mut w = Watcher::new(Instant::now(), Show::Nothing, &jobs);
        let mut stopped_at = None;
        for (i, l) in console_of_a_run("16401").iter().enumerate() {
            if w.line(l) == Control::Stop {
                stopped_at = Some(i);
                break;
            }
        }
        assert_eq!(stopped_at, Some(19)); // at `xmrig: done`
        w.finish_jobs();
        let a = &w.jobs[0];
        assert_eq!(a.domid, Some(1));
        assert_eq!(a.reason(), Some("poweroff"));
        assert_eq!(
            a.xl_list_shutdown.as_ref().and_then(|r| r.get("state")),
            Some("---s--")
        );
        assert_eq!(
            a.xl_list_created.as_ref().and_then(|r| r.num("mem_mib")),
            Some(64)
        );
        assert_eq!(
            a.xen_pages.as_ref().and_then(|r| r.num("nr_pages")),
            Some(16401)
        );
        assert_eq!(a.free_after_mib, Some(246));
        assert_eq!(a.console, ["hello from the guest", "  second line"]);
        assert!(a.first_line_after.is_some() && a.create_time.is_some());
        assert!(!a.timed_out && a.create_failed.is_none());
        // Job b never ran.
        assert_eq!(w.jobs[1].domid, None);
        assert_eq!(w.running, None);
        let q = std::mem::take(&mut w.q).finish();
        assert_eq!(w.problems(&q), Vec::<String>::new());
        assert_eq!(
            w.records
                .iter()
                .filter(|r| r.topic == "free-memory")
                .count(),
            3
        );

        // Xen's console disagreeing with dom0's record is a problem.
        let mut w = Watcher::new(Instant::now(), Show::Nothing, &jobs);
        console_of_a_run("16400").iter().for_each(|l| {
            w.line(l);
        });
        let q = std::mem::take(&mut w.q).finish();
        let p = w.problems(&q);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nr_pages=16401"), "{p:?}");
    }

    #[test]
    fn watcher_knows_the_running_job() {
        let jobs = [XlJob::new("a", 64, vec![])];
        let mut w = Watcher::new(Instant::now(), Show::Nothing, &jobs);
        for l in [
            "xmrig: ready uptime=5.45",
            "xmrig: creating name=a predicted_domid=1 uptime=5.69",
            "xmrig: created name=a domid=1 uptime=10.65",
            "xmrig: job-timeout name=a domid=1 after_s=60",
            "xmrig: domid-mismatch name=a predicted=1 actual=2",
            "xmrig: broken =x",
        ] {
            assert_eq!(w.line(l), Control::Continue);
        }
        assert_eq!(w.running, Some(0));
        assert!(w.jobs[0].timed_out);
        let p = w.problems(&[]);
        assert!(p.iter().any(|p| p.contains("domid-mismatch")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("bad record")), "{p:?}");
    }

    #[test]
    fn bzimage_headers() {
        let mut b = vec![0u8; 0x2000];
        b[0x1f1] = 3; // setup_sects: protected-mode code at 4 * 512
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        b[0x900..0x906].copy_from_slice(XZ_MAGIC);
        assert_eq!(bzimage_payload(&b).unwrap().len(), 8);
        b[0x900] = 0;
        assert!(bzimage_payload(&b).is_err());
        assert!(bzimage_payload(&[0u8; 16]).is_err());
    }
}
