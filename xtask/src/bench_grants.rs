//! `cargo xtask bench --only xl-grants`: grants mapped across the xl rig's
//! two sides, one boot per architecture — dom0 mapping 1024 of the agent's
//! grants through rust-vmm vm-memory (a Xen GRANT region, Linux's gntdev),
//! beside the agent mapping 1024 of dom0's gntalloc grants in one batch.
//! The jobs are the `*-xl-peer-grant` and `*-xl-peer-gntalloc` scenarios;
//! each side times itself (dom0: `CLOCK_MONOTONIC`; the agent: its TSC /
//! CNTVCT with the frequency it reports).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent;
use crate::boot::Arch;
use crate::decode::{self, Source};
use crate::rig;

/// The `--only` name.
pub const XL_GRANTS: &str = "xl-grants";

/// What one architecture measured, µs (None: not measured).
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    /// dom0 (vm-memory over gntdev), 1024 grants: map, unmap.
    peer: [Option<f64>; 2],
    /// The agent (map_grants, one batch), 1024 grants: map, unmap.
    agent: [Option<f64>; 2],
    /// Grants in each.
    grants: u64,
}

fn measure(
    env: &crate::setup::Env,
    arch: Arch,
    verbose: bool,
    timeout: Duration,
) -> Result<Figures> {
    let ag = agent::build(arch)?;
    let table = decode::load_table(&ag.elf)
        .with_context(|| format!("decoding needs {}", ag.elf_path.display()))?;
    let jobs: Vec<rig::XlJob> = crate::xl_scenarios::all()
        .into_iter()
        .filter(|s| {
            s.arch == arch
                && (s.name.ends_with("-peer-grant") || s.name.ends_with("-peer-gntalloc"))
        })
        .map(|s| s.job())
        .collect();
    let name = format!("{XL_GRANTS}-{arch}");
    let spec = crate::bench::rig_spec(
        &name,
        arch,
        jobs,
        timeout.max(Duration::from_secs(300)),
        verbose,
    );
    eprintln!("xtask: bench {name} ...");
    let started = Instant::now();
    let res = rig::boot_xl(env, &spec, &ag, &table)?;
    let mut f = Figures::default();
    for j in &spec.jobs {
        let Some(r) = res.job(&j.name) else { continue };
        if j.name.ends_with("-peer-grant") {
            // The 1024-page round.
            if let Some(p) = r
                .steps
                .iter()
                .filter(|s| s.topic == "peer-grant")
                .max_by_key(|s| s.num("pages").unwrap_or(0))
            {
                f.grants = p.num("pages").unwrap_or(0);
                f.peer = [
                    p.num("map_us").map(|v| v as f64),
                    p.num("unmap_us").map(|v| v as f64),
                ];
            }
        } else if let Some(d) = r.domid.and_then(|d| u16::try_from(d).ok()) {
            if let Some(a) = res.logs.get(Source(d)).topic("dom0-peer-gntalloc").next() {
                let n = |k: &str| a.get(k).and_then(|v| v.parse::<u64>().ok());
                if let (Some(hz), Some(m), Some(u)) = (n("hz"), n("map_ticks"), n("unmap_ticks")) {
                    if hz > 0 {
                        let us = |t: u64| t as f64 * 1e6 / hz as f64;
                        f.agent = [Some(us(m)), Some(us(u))];
                    }
                }
            }
        }
    }
    eprintln!(
        "xtask: bench {name}: done in {:.0} s (log: {})",
        started.elapsed().as_secs_f64(),
        res.log_path.display()
    );
    Ok(f)
}

/// Run it on both architectures and render its table; `false` if a figure
/// is missing.
pub fn run(env: &crate::setup::Env, verbose: bool, timeout: Duration) -> Result<(String, bool)> {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## 8. Grants across the rig: Linux's gntdev through vm-memory, and the agent\n"
    );
    let _ = writeln!(
        o,
        "One xl rig boot per architecture (the `*-xl-peer-grant` and `*-xl-peer-gntalloc` \
         scenarios' jobs). dom0: `xenmem-peer` maps 1024 of the agent's grants as one rust-vmm \
         vm-memory GRANT region (Linux's gntdev: `IOCTL_GNTDEV_MAP_GRANT_REF` + `mmap`; unmap: \
         `munmap` + `IOCTL_GNTDEV_UNMAP_GRANT_REF`), timed with `CLOCK_MONOTONIC`. The agent: \
         `grant::map_grants` of 1024 of dom0's gntalloc grants in one `GNTTABOP_map_grant_ref` \
         batch (holes, region table, page tables) and `GrantMap::release`, timed with its own \
         clock. One run each; the issue sets no goal for these figures.\n"
    );
    let mut ok = true;
    let mut rows = Vec::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        match measure(env, arch, verbose, timeout) {
            Ok(f) => {
                ok &= f.peer.iter().chain(&f.agent).all(Option::is_some);
                rows.push((arch, f));
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(o, "{arch}: failed: {e:#}\n");
            }
        }
    }
    let _ = writeln!(
        o,
        "| arch | who maps | through | grants | map ms | µs/grant | unmap ms | µs/grant |"
    );
    let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|---:|");
    for (arch, f) in &rows {
        let n = f.grants.max(1) as f64;
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |us| format!("{:.1}", us / 1000.0));
        let per = |v: Option<f64>| v.map_or("-".to_string(), |us| format!("{:.1}", us / n));
        for (who, via, v) in [
            ("dom0 (Linux)", "vm-memory GRANT region, gntdev", f.peer),
            ("agent", "grant::map_grants, one batch", f.agent),
        ] {
            let _ = writeln!(
                o,
                "| {arch} | {who} | {via} | {} | {} | {} | {} | {} |",
                f.grants,
                cell(v[0]),
                per(v[0]),
                cell(v[1]),
                per(v[1])
            );
        }
    }
    Ok((o, ok))
}
