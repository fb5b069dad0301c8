//! Set-up: the host tools (QEMU for both architectures, dtc) and Xen 4.17
//! for both architectures, taken from Debian's packages without installing
//! them, and cached.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{is_executable, is_root, run_checked, run_visible, which};

/// Everything a boot needs from the host.
#[derive(Clone, Debug)]
pub struct Env {
    /// `qemu-system-x86_64`
    pub qemu_x86_64: PathBuf,
    /// `qemu-system-aarch64`
    pub qemu_aarch64: PathBuf,
    /// `dtc`
    pub dtc: PathBuf,
    /// Xen for x86_64: an uncompressed multiboot ELF.
    pub xen_x86_64: PathBuf,
    /// Xen for aarch64: an arm64 Image.
    pub xen_aarch64: PathBuf,
}

struct Tool {
    exe: &'static str,
    env: &'static str,
    package: &'static str,
}

const TOOLS: [Tool; 3] = [
    Tool {
        exe: "qemu-system-x86_64",
        env: "XENMEM_QEMU_X86_64",
        package: "qemu-system-x86",
    },
    Tool {
        exe: "qemu-system-aarch64",
        env: "XENMEM_QEMU_AARCH64",
        package: "qemu-system-arm",
    },
    Tool {
        exe: "dtc",
        env: "XENMEM_DTC",
        package: "device-tree-compiler",
    },
];

/// Which Xen, where it comes from and how to check it.
struct XenSpec {
    env: &'static str,
    deb_arch: &'static str,
    package: &'static str,
    /// The file inside the package.
    member: &'static str,
    /// Its name in the cache (uncompressed).
    cached: &'static str,
    /// What it must look like.
    check: fn(&[u8]) -> Result<()>,
}

const XEN_X86_64: XenSpec = XenSpec {
    env: "XENMEM_XEN_X86_64",
    deb_arch: "amd64",
    package: "xen-hypervisor-4.17-amd64",
    member: "boot/xen-4.17-amd64.gz",
    cached: "xen-4.17-amd64",
    check: check_multiboot_elf,
};

const XEN_AARCH64: XenSpec = XenSpec {
    env: "XENMEM_XEN_AARCH64",
    deb_arch: "arm64",
    package: "xen-hypervisor-4.17-arm64",
    member: "boot/xen-4.17-arm64",
    cached: "xen-4.17-arm64",
    check: crate::image::check_arm64_magic,
};

fn check_multiboot_elf(b: &[u8]) -> Result<()> {
    if !b.starts_with(b"\x7fELF") {
        bail!("not an ELF file (QEMU's multiboot loader needs Xen's uncompressed ELF image)");
    }
    Ok(())
}

/// The targets xtask builds for (also listed in `rust-toolchain.toml`,
/// which rustup only honours when it installs the toolchain itself, not
/// for a toolchain that is already there): the agent's two bare-metal
/// targets and the rig's dom0 peer's two static Linux ones.
pub const TARGETS: [&str; 4] = [
    "x86_64-unknown-none",
    "aarch64-unknown-none",
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-musl",
];

/// Make sure rustup has every target of [`TARGETS`] for the toolchain in
/// use.
fn rust_targets() -> Result<()> {
    let Some(rustup) = which("rustup") else {
        // Not a rustup toolchain: cargo will say so if a target is missing.
        return Ok(());
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let installed = stdout_of(
        Command::new(&rustup)
            .current_dir(&dir)
            .args(["target", "list", "--installed"]),
        "rustup target list",
    )?;
    let missing: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: rustup target add {}", missing.join(" "));
    run_visible(
        Command::new(&rustup)
            .current_dir(&dir)
            .arg("target")
            .arg("add")
            .args(&missing),
        "rustup target add",
    )
    .with_context(|| {
        format!(
            "install the targets by hand: rustup target add {}",
            missing.join(" ")
        )
    })
}

/// Do the whole set-up, installing or downloading what is missing.
pub fn setup() -> Result<Env> {
    rust_targets()?;
    let [qemu_x86_64, qemu_aarch64, dtc] = tools()?;
    let cache = cache_dir()?;
    let xen_x86_64 = xen_image(&cache, &XEN_X86_64)?;
    let xen_aarch64 = xen_image(&cache, &XEN_AARCH64)?;
    Ok(Env {
        qemu_x86_64,
        qemu_aarch64,
        dtc,
        xen_x86_64,
        xen_aarch64,
    })
}

fn find_tool(t: &Tool) -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os(t.env) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            bail!("{}={} is not an executable file", t.env, p.display());
        }
        return Ok(Some(p));
    }
    Ok(which(t.exe))
}

fn tools() -> Result<[PathBuf; 3]> {
    let missing: Vec<&Tool> = TOOLS
        .iter()
        .filter_map(|t| match find_tool(t) {
            Ok(Some(_)) => None,
            Ok(None) => Some(Ok(t)),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        let names: Vec<&str> = missing.iter().map(|t| t.exe).collect();
        if which("apt-get").is_some() && is_root() {
            eprintln!(
                "xtask: installing {} (for {})",
                packages.join(" "),
                names.join(", ")
            );
            apt_get(&["-q", "update"], "apt-get update")?;
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(&packages);
            apt_get(&args, "installing the host tools")?;
        } else {
            bail!(
                "missing host tools: {}.\n\
                 On Debian/Ubuntu, as root: apt-get install -y --no-install-recommends {}\n\
                 Elsewhere install QEMU (x86_64 and aarch64 system emulators) and dtc, or point \
                 {} at them.",
                names.join(", "),
                packages.join(" "),
                TOOLS.iter().map(|t| t.env).collect::<Vec<_>>().join(" / ")
            );
        }
    }
    let mut out = Vec::new();
    for t in &TOOLS {
        match find_tool(t)? {
            Some(p) => out.push(p),
            None => bail!("{} is still missing after installing {}", t.exe, t.package),
        }
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("internal error: tool count"))
}

fn apt_get(args: &[&str], what: &str) -> Result<()> {
    run_visible(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        what,
    )
}

/// `${XENMEM_CACHE:-$HOME/.cache/xenmem}` (without HOME: `target/xenmem-cache`)
pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("XENMEM_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".cache").join("xenmem"),
            _ => crate::agent::target_dir().join("xenmem-cache"),
        },
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .context("decompressing (gzip)")?;
    Ok(out)
}

pub(crate) fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// Write `data` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn xen_image(cache: &Path, spec: &XenSpec) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(spec.env) {
        let p = PathBuf::from(p);
        let data =
            std::fs::read(&p).with_context(|| format!("reading {}={}", spec.env, p.display()))?;
        if !is_gzip(&data) {
            (spec.check)(&data).with_context(|| format!("{}={}", spec.env, p.display()))?;
            return Ok(p);
        }
        let plain = gunzip(&data).with_context(|| format!("{}={}", spec.env, p.display()))?;
        (spec.check)(&plain).with_context(|| format!("{}={}", spec.env, p.display()))?;
        let out = cache.join(format!("{}-from-{}", spec.cached, spec.env));
        write_atomic(&out, &plain)?;
        return Ok(out);
    }
    let out = cache.join(spec.cached);
    if let Ok(data) = std::fs::read(&out) {
        if (spec.check)(&data).is_ok() {
            return Ok(out);
        }
        eprintln!("xtask: {} is damaged; fetching it again", out.display());
    }
    download(cache, spec, &out).with_context(|| {
        format!(
            "getting Xen 4.17 for {} (or set {} to a Xen 4.17 image: {})",
            spec.deb_arch,
            spec.env,
            if spec.deb_arch == "amd64" {
                "xen-4.17-amd64 from Debian's xen-hypervisor-4.17-amd64, uncompressed or .gz"
            } else {
                "xen-4.17-arm64 from Debian's xen-hypervisor-4.17-arm64"
            }
        )
    })?;
    Ok(out)
}

fn stdout_of(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_checked(cmd, what)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn download(cache: &Path, spec: &XenSpec, out: &Path) -> Result<()> {
    let tmp = cache.join(format!("download-{}-{}", spec.deb_arch, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = keeping_dpkg_architectures("downloading Xen", || {
        let apt = Apt::new(spec.deb_arch)?;
        let debs = apt.download(&tmp, &[spec.package.to_string()])?;
        unpack_xen(&tmp, spec, &debs[0], out)
    });
    std::fs::remove_dir_all(&tmp).ok();
    result
}

/// Run `f`, then make sure dpkg's list of foreign architectures is what it
/// was (packages of another architecture are fetched by naming that
/// architecture for single apt calls only).
pub fn keeping_dpkg_architectures<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    for exe in ["apt-get", "apt-cache", "dpkg", "dpkg-deb"] {
        if which(exe).is_none() {
            bail!(
                "{exe} not found: the Debian packages are fetched with apt-get download and \
                 unpacked with dpkg-deb"
            );
        }
    }
    let foreign = || {
        stdout_of(
            Command::new("dpkg").arg("--print-foreign-architectures"),
            "asking dpkg for its foreign architectures",
        )
    };
    let before = foreign()?;
    let result = f();
    let after = foreign()?;
    if after != before {
        bail!(
            "dpkg's foreign architectures changed from `{before}` to `{after}` while {what}; \
             this should not happen"
        );
    }
    result
}

/// Debian packages of one architecture, fetched with `apt-get download`
/// (never installed). For an architecture other than dpkg's native one, the
/// architecture is named for each apt call only
/// (`-o APT::Architectures::=NATIVE -o APT::Architectures::=OTHER`), and the
/// package lists are updated once with those options first.
pub struct Apt {
    deb_arch: String,
    arch_opts: Vec<String>,
    updated: std::cell::Cell<bool>,
}

impl Apt {
    /// Apt for packages of `deb_arch` (`amd64`, `arm64`).
    pub fn new(deb_arch: &str) -> Result<Apt> {
        let native = stdout_of(
            Command::new("dpkg").arg("--print-architecture"),
            "asking dpkg for the native architecture",
        )?;
        let arch_opts = if native == deb_arch {
            Vec::new()
        } else {
            vec![
                "-o".into(),
                format!("APT::Architectures::={native}"),
                "-o".into(),
                format!("APT::Architectures::={deb_arch}"),
            ]
        };
        Ok(Apt {
            deb_arch: deb_arch.to_string(),
            arch_opts,
            updated: std::cell::Cell::new(false),
        })
    }

    fn foreign(&self) -> bool {
        !self.arch_opts.is_empty()
    }

    /// `name` as apt must be told it (`name:arm64` for a foreign one).
    fn qualified(&self, name: &str) -> String {
        if self.foreign() {
            format!("{name}:{}", self.deb_arch)
        } else {
            name.to_string()
        }
    }

    fn update(&self, why: &str) -> Result<()> {
        if self.updated.get() {
            return Ok(());
        }
        if !is_root() {
            bail!(
                "apt-get update is needed ({why}) but we are not root; run as root: \
                 apt-get {} update",
                self.arch_opts.join(" ")
            );
        }
        eprintln!("xtask: apt-get update ({why})");
        run_checked(
            Command::new("apt-get")
                .arg("-q")
                .args(&self.arch_opts)
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get update",
        )?;
        self.updated.set(true);
        Ok(())
    }

    /// Make sure the package lists of a foreign architecture are there (they
    /// normally are not).
    fn prepare(&self) -> Result<()> {
        if self.foreign() {
            self.update(&format!("package lists for {}", self.deb_arch))?;
        }
        Ok(())
    }

    /// Run an apt command; for the native architecture, once more after an
    /// `apt-get update` if it fails (the lists may be missing or stale).
    fn with_lists<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        self.prepare()?;
        match f() {
            Ok(v) => Ok(v),
            Err(e) if !self.updated.get() => {
                eprintln!("xtask: {e:#}");
                self.update("the package lists may be missing or stale")?;
                f()
            }
            Err(e) => Err(e),
        }
    }

    /// The packages `name` depends on (`apt-cache depends`), e.g. the
    /// concrete kernel package behind the `linux-image-amd64` metapackage.
    pub fn depends(&self, name: &str) -> Result<Vec<String>> {
        let q = self.qualified(name);
        let text = self.with_lists(|| {
            stdout_of(
                Command::new("apt-cache")
                    .args(&self.arch_opts)
                    .args(["depends", &q]),
                &format!("apt-cache depends {q}"),
            )
        })?;
        Ok(parse_depends(&text))
    }

    /// Download `names` into `dir` (one call for all; when that fails, one
    /// call per package, so that the error names the package that cannot be
    /// fetched). Returns the `.deb` of each name, in order.
    pub fn download(&self, dir: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
        let qualified: Vec<String> = names.iter().map(|n| self.qualified(n)).collect();
        let all = |list: &[String]| {
            eprintln!(
                "xtask: apt-get download {} package(s) into {}",
                list.len(),
                dir.display()
            );
            run_checked(
                Command::new("apt-get")
                    .args(&self.arch_opts)
                    .arg("download")
                    .args(list)
                    .current_dir(dir),
                &format!("apt-get download {}", list.join(" ")),
            )
            .map(drop)
        };
        if self.with_lists(|| all(&qualified)).is_err() {
            for q in &qualified {
                all(std::slice::from_ref(q))
                    .with_context(|| format!("the Debian package {q} cannot be fetched"))?;
            }
        }
        names
            .iter()
            .map(|n| {
                find_deb(dir, n, &self.deb_arch).with_context(|| {
                    format!(
                        "apt-get download left no .deb of {} in {}",
                        self.qualified(n),
                        dir.display()
                    )
                })
            })
            .collect()
    }
}

/// The `Depends:` of `apt-cache depends` output (alternatives and virtual
/// packages, `<...>`, left out).
fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .filter(|d| !d.starts_with('<'))
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .collect()
}

/// The `.deb` of package `name` for `deb_arch` (or `all`) in `dir`:
/// `NAME_VERSION_ARCH.deb`.
pub fn find_deb(dir: &Path, name: &str, deb_arch: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let f = p.file_name().unwrap_or_default().to_string_lossy();
            f.starts_with(&prefix)
                && (f.ends_with(&format!("_{deb_arch}.deb")) || f.ends_with("_all.deb"))
                // The version has no underscore: `NAME_VERSION_ARCH.deb`.
                && f[prefix.len()..].matches('_').count() == 1
        })
}

/// `dpkg-deb -x DEB DEST`.
pub fn unpack_deb(deb: &Path, dest: &Path) -> Result<()> {
    run_checked(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
        &format!("unpacking {}", deb.display()),
    )
    .map(drop)
}

fn unpack_xen(tmp: &Path, spec: &XenSpec, deb: &Path, out: &Path) -> Result<()> {
    let x = tmp.join("x");
    unpack_deb(deb, &x)?;
    let member = x.join(spec.member);
    let mut data = std::fs::read(&member)
        .with_context(|| format!("{} is not in {}", spec.member, deb.display()))?;
    if is_gzip(&data) {
        data = gunzip(&data).with_context(|| format!("decompressing {}", spec.member))?;
    }
    (spec.check)(&data).with_context(|| format!("{} from {}", spec.member, deb.display()))?;
    write_atomic(out, &data)?;
    if let Some(name) = deb.file_name() {
        std::fs::write(
            out.with_file_name(format!("{}.source", spec.cached)),
            format!("{}\n", name.to_string_lossy()),
        )
        .ok();
    }
    eprintln!(
        "xtask: cached {} (from {})",
        out.display(),
        deb.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_round_trip_and_checks() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"\x7fELF rest").unwrap();
        let gz = enc.finish().unwrap();
        assert!(is_gzip(&gz));
        let plain = gunzip(&gz).unwrap();
        assert_eq!(plain, b"\x7fELF rest");
        check_multiboot_elf(&plain).unwrap();
        assert!(check_multiboot_elf(&gz).is_err());
        assert!(gunzip(b"\x1f\x8bnot really").is_err());
    }

    #[test]
    fn depends_and_debs() {
        let text = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-57-arm64:arm64\n  \
                    Depends: <virtual>\n  Recommends: x\n";
        assert_eq!(parse_depends(text), ["linux-image-6.1.0-57-arm64"]);
        let dir = std::env::temp_dir().join(format!("xtask-debs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "libxenstore4_4.17.7+13-g2445b30a44-0+deb12u1_amd64.deb",
            "libxenstore4-dev_4.17_amd64.deb",
            "zlib1g_1%3a1.2.13.dfsg-1+deb12u1_arm64.deb",
            "xen-utils-common_4.17_all.deb",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let name = |n: &str, a: &str| {
            find_deb(&dir, n, a).map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        };
        assert_eq!(
            name("libxenstore4", "amd64").as_deref(),
            Some("libxenstore4_4.17.7+13-g2445b30a44-0+deb12u1_amd64.deb")
        );
        assert_eq!(name("zlib1g", "amd64"), None);
        assert!(name("zlib1g", "arm64").is_some());
        assert!(name("xen-utils-common", "arm64").is_some());
        std::fs::remove_dir_all(&dir).ok();
    }
}
