//! `cargo xtask bench`: boot the agent in benchmark mode on both
//! architectures, run the host benchmark of the region table, and print the
//! results as markdown tables (see `docs/benchmarks.md`).
//!
//! The agent measures and prints `report: bench-<table> key=value ...` rows
//! (see `src/bench.rs`); this module only boots, collects and renders. Goals
//! are checked by the agent (`report: bench-goal`); a missed goal is printed,
//! never an error. The command fails only when a boot or the host benchmark
//! fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent;
use crate::boot::{self, Arch, BootResult, BootSpec, Machine, Mode, Show};
use crate::decode::{self, Source};
use crate::report::Report;
use crate::rig;

/// One benchmark boot.
#[derive(Clone, Debug)]
pub struct BenchBoot {
    /// Name (logs, `--only`, table rows).
    pub name: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// Which agents.
    pub mode: Mode,
    /// Memory sizes.
    pub machine: Machine,
    /// Agent options.
    pub opts: &'static [&'static str],
    /// The agent whose reports are the boot's (both agents print them in
    /// `both` mode; dom0 is the one that measures).
    pub source: Source,
}

/// The boots of `cargo xtask bench`.
pub fn boots() -> Vec<BenchBoot> {
    // 256 MiB balloons plus the scale row: 1 GiB on x86; on Arm the domU
    // gets what QEMU's 1 GiB machine leaves room for.
    let big = Machine {
        x86_ram_mib: 2048,
        x86_dom0_mib: 1280,
        domu_kib: 768 * 1024,
        aarch64_ram_mib: crate::boot::AARCH64_RAM_MIB,
    };
    vec![
        BenchBoot {
            name: "x86_64-dom0",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            machine: big,
            opts: &["bench=all"],
            source: Source::D0,
        },
        BenchBoot {
            name: "aarch64-domu",
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            machine: big,
            opts: &["bench=balloon+floor+footprint"],
            source: Source::D1,
        },
        BenchBoot {
            name: "aarch64-dom0",
            arch: Arch::Aarch64,
            mode: Mode::Both,
            machine: Machine::default(),
            opts: &["bench=foreign+grant+footprint"],
            source: Source::D0,
        },
    ]
}

/// The name `--only host` selects the host benchmarks by.
const HOST: &str = "host";

/// Options of `cargo xtask bench`.
#[derive(Debug)]
pub struct BenchArgs {
    /// Only boots whose name contains one of these (`host`: the host
    /// benchmarks).
    pub only: Vec<String>,
    /// Per boot.
    pub timeout: Duration,
    /// Stream every boot's console.
    pub verbose: bool,
    /// Also write the markdown here.
    pub out: Option<PathBuf>,
}

/// Parse the options after `bench`.
pub fn parse(args: &[String]) -> Result<BenchArgs> {
    let mut b = BenchArgs {
        only: Vec::new(),
        // x86_64-dom0 (`bench=all`) took 280-400 s on a shared 2-core machine.
        timeout: Duration::from_secs(900),
        verbose: false,
        out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--verbose" || a == "-v" {
            b.verbose = true;
        } else if let Some(v) = crate::value("--only", a, &mut it)? {
            b.only.push(v.to_string());
        } else if let Some(v) = crate::value("--timeout", a, &mut it)? {
            b.timeout = crate::parse_timeout(v)?;
        } else if let Some(v) = crate::value("--out", a, &mut it)? {
            b.out = Some(PathBuf::from(v));
        } else {
            bail!("bench: unknown option `{a}`\n\n{}", crate::USAGE);
        }
    }
    Ok(b)
}

fn selected(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
}

/// `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<ExitCode> {
    let a = parse(args)?;
    let started = Instant::now();
    let all = boots();
    let chosen: Vec<&BenchBoot> = all.iter().filter(|b| selected(&a.only, b.name)).collect();
    let host = selected(&a.only, HOST);
    let xlb = selected(&a.only, XL_BALLOON);
    let xlg = selected(&a.only, crate::bench_grants::XL_GRANTS);
    let sizes = selected(&a.only, crate::stub::IMAGE_SIZE);
    if chosen.is_empty() && !host && !xlb && !xlg && !sizes {
        bail!(
            "no benchmark matches {:?} (boots: {}, `{XL_BALLOON}`, `xl-grants`, `image-size` and \
             `{HOST}`)",
            a.only,
            all.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
        );
    }
    let chosen_any = !chosen.is_empty();
    let mut failed = Vec::new();
    let mut results: Vec<(&BenchBoot, BootResult, Files)> = Vec::new();
    if !chosen.is_empty() {
        let env = crate::setup::setup()?;
        let mut built: Vec<(Arch, agent::Agent, defmt_decoder::Table)> = Vec::new();
        for b in &chosen {
            if built.iter().any(|(arch, ..)| *arch == b.arch) {
                continue;
            }
            let ag = agent::build(b.arch)?;
            let table = decode::load_table(&ag.elf)
                .with_context(|| format!("decoding needs {}", ag.elf_path.display()))?;
            built.push((b.arch, ag, table));
        }
        for b in chosen {
            let Some((_, ag, table)) = built.iter().find(|(arch, ..)| *arch == b.arch) else {
                bail!("internal error: no agent for {}", b.arch);
            };
            let spec = BootSpec {
                arch: b.arch,
                mode: b.mode,
                agent_opts: b.opts.iter().map(|o| o.to_string()).collect(),
                timeout: a.timeout,
                log_path: agent::target_dir()
                    .join("xenmem-logs")
                    .join(format!("bench-{}.log", b.name)),
                work_dir: agent::target_dir()
                    .join("xenmem-work")
                    .join(format!("bench-{}", b.name)),
                show: if a.verbose { Show::All } else { Show::Nothing },
            };
            eprintln!("xtask: bench {} ...", b.name);
            let res = boot::boot_on(&env, &spec, ag, table, &b.machine)?;
            let ok = res.passed(b.mode);
            eprintln!(
                "xtask: bench {}: {} ({})",
                b.name,
                if ok { "done" } else { "FAILED" },
                res.summary(b.mode)
            );
            if !ok {
                let log = res.log_path.display();
                failed.push(format!("{}: {} (log: {log})", b.name, res.summary(b.mode)));
                for e in res.logs.get(b.source).errors() {
                    eprintln!("  {e}");
                }
            }
            results.push((b, res, Files::of(ag)));
        }
    }
    let host_out = if host {
        match host_bench() {
            Ok(h) => Some(h),
            Err(e) => {
                failed.push(format!("host benchmark: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let xlb_md = if xlb {
        let r = crate::setup::setup().and_then(|env| xl_balloon(&env, &a, Arch::X86_64));
        match r {
            Ok((md, ok)) => {
                if !ok {
                    failed.push(format!(
                        "{XL_BALLOON}: a target was not reached (see its table)"
                    ));
                }
                md
            }
            Err(e) => {
                failed.push(format!("{XL_BALLOON}: {e:#}"));
                String::new()
            }
        }
    } else {
        String::new()
    };
    let mut md = if chosen_any || host {
        render(&results, host_out.as_ref(), started.elapsed())
    } else {
        String::new()
    };
    md.push_str(&xlb_md);
    if xlg {
        let r = crate::setup::setup()
            .and_then(|env| crate::bench_grants::run(&env, a.verbose, a.timeout));
        match r {
            Ok((g, ok)) => {
                if !ok {
                    failed.push("xl-grants: a figure is missing (see its table)".into());
                }
                md.push_str(&g);
            }
            Err(e) => failed.push(format!("xl-grants: {e:#}")),
        }
    }
    if sizes {
        // A missed size goal is printed in the table, not an error.
        match crate::stub::size_report() {
            Ok(table) => md.push_str(&table),
            Err(e) => failed.push(format!("{}: {e:#}", crate::stub::IMAGE_SIZE)),
        }
    }
    println!("{md}");
    if let Some(p) = &a.out {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("xtask: wrote {}", p.display());
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failed {
            eprintln!("xtask: bench failed: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The `--only` name of the balloon service against Linux's driver.
pub const XL_BALLOON: &str = "xl-balloon";
/// Its domains' size and the low target, MiB.
const XLB_HIGH: u64 = 512;
const XLB_LOW: u64 = 128;
/// Idle time measured after each target.
const XLB_IDLE: Duration = Duration::from_secs(5);
/// Goal: Linux's time to each target over the agent's.
const XLB_RATIO_GOAL: f64 = 10.0;

/// The steps of one guest: wait for its balloon driver, then down to
/// `XLB_LOW` and back up to `XLB_HIGH`, each followed by an idle period
/// between two CPU-time readings. `cpu` steps are 2, 4, 5, 8, 9.
fn xlb_steps(ready: rig::XlStep) -> Vec<rig::XlStep> {
    use rig::XlStep as S;
    let reach = |mib| S::XenReach {
        mib,
        timeout: Duration::from_secs(120),
    };
    vec![
        ready,
        S::Sleep(Duration::from_secs(3)),
        S::CpuTime,
        S::MemSet(XLB_LOW),
        reach(XLB_LOW),
        S::CpuTime,
        S::Sleep(XLB_IDLE),
        S::CpuTime,
        S::MemSet(XLB_HIGH),
        reach(XLB_HIGH),
        S::CpuTime,
        S::Sleep(XLB_IDLE),
        S::CpuTime,
        S::Pages,
    ]
}

/// The two jobs: the agent's balloon service and Linux's driver.
fn xlb_jobs() -> Vec<rig::XlJob> {
    let mut agent = rig::XlJob::new(
        "xmb-agent",
        XLB_HIGH,
        vec!["exit=shutdown".into(), "mode=service".into()],
    );
    // The service waits within about a second of the unpause.
    agent.steps = xlb_steps(rig::XlStep::Sleep(Duration::from_secs(2)));
    agent.steps.push(rig::XlStep::Shutdown);
    agent.timeout = Some(Duration::from_secs(300));
    agent.extra_cfg.push(rig::OWN_CPU_CFG.to_string());
    let mut linux = rig::XlJob::linux(
        "xmb-linux",
        XLB_HIGH,
        vec!["console=hvc0".into(), "rdinit=/init".into(), "quiet".into()],
    );
    linux.steps = xlb_steps(rig::XlStep::WaitLog {
        text: "xmguest-ready".into(),
        timeout: Duration::from_secs(120),
    });
    linux.steps.push(rig::XlStep::Destroy);
    linux.timeout = Some(Duration::from_secs(400));
    linux.extra_cfg.push(rig::OWN_CPU_CFG.to_string());
    vec![agent, linux]
}

/// One guest's figures.
#[derive(Clone, Debug, Default)]
struct XlbGuest {
    /// Seconds from `xl mem-set` to Xen's count within 1 MiB: down, up.
    reach_s: [Option<f64>; 2],
    /// Polls (getdomaininfo, by `xenmem-peer reach`) in each wait.
    polls: [Option<u64>; 2],
    /// How long each `xl mem-set` command took, seconds.
    mem_set_s: [Option<f64>; 2],
    /// Xen's count when each wait ended, KiB.
    kib: [Option<u64>; 2],
    /// CPU seconds (xl list Time(s)) at the cpu steps.
    cpu: Vec<Option<f64>>,
    /// The agent's `service-reached ... hypercalls=` values, in order.
    hypercalls: Vec<u64>,
    /// The agent's own time from seeing each target to reaching it
    /// (`service-reached ticks=` over `service hz=`), seconds.
    own_s: Vec<f64>,
    /// Of it, the time inside the hypercalls that move memory
    /// (`xen_ticks=`, cumulative in the reports), seconds.
    xen_s: Vec<f64>,
    /// Xen's count at the end, pages.
    nr_pages: Option<u64>,
}

fn xlb_guest(res: &rig::XlResult, name: &str) -> XlbGuest {
    let mut g = XlbGuest::default();
    let Some(j) = res.job(name) else {
        return g;
    };
    let mut k = 0;
    let mut m = 0;
    for r in &j.steps {
        match r.topic.as_str() {
            "mem-set" if m < 2 => {
                g.mem_set_s[m] = r.get("took_s").and_then(|v| v.parse().ok());
                m += 1;
            }
            "xen-reached" if k < 2 => {
                g.reach_s[k] = r.get("after_s").and_then(|v| v.parse().ok());
                g.polls[k] = r.num("polls");
                g.kib[k] = r.num("kib");
                k += 1;
            }
            "xen-not-reached" if k < 2 => {
                g.polls[k] = r.num("polls");
                g.kib[k] = r.num("kib");
                k += 1;
            }
            "cpu" => g.cpu.push(r.get("time_s").and_then(|v| v.parse().ok())),
            "xen-pages" => g.nr_pages = r.num("nr_pages"),
            _ => {}
        }
    }
    // The service's count is cumulative, with one `service-reached` at
    // its start (the boot's own target) and one per target: each
    // direction is the difference of two.
    let logs = j
        .domid
        .and_then(|d| u16::try_from(d).ok())
        .map(|d| res.logs.get(Source(d)));
    let reached = |key: &str| -> Vec<u64> {
        logs.as_ref().map_or(Vec::new(), |l| {
            l.topic("service-reached")
                .filter_map(|r| r.get(key)?.parse().ok())
                .collect()
        })
    };
    let last_two = |mut v: Vec<u64>| {
        if v.len() > 2 {
            v.drain(..v.len() - 2);
        }
        v
    };
    g.hypercalls = last_two(
        reached("hypercalls")
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect(),
    );
    let hz = logs
        .as_ref()
        .and_then(|l| l.topic("service").find_map(|r| r.get("hz")?.parse().ok()))
        .filter(|&h: &u64| h > 0);
    if let Some(hz) = hz {
        let secs = |v: Vec<u64>| v.into_iter().map(|t| t as f64 / hz as f64).collect();
        g.own_s = secs(last_two(reached("ticks")));
        g.xen_s = secs(last_two(
            reached("xen_ticks")
                .windows(2)
                .map(|w| w[1] - w[0])
                .collect(),
        ));
    }
    g
}

/// Run the balloon service against Linux's driver in one rig boot and
/// render its table.
fn xl_balloon(env: &crate::setup::Env, a: &BenchArgs, arch: Arch) -> Result<(String, bool)> {
    let ag = agent::build(arch)?;
    let table = decode::load_table(&ag.elf)
        .with_context(|| format!("decoding needs {}", ag.elf_path.display()))?;
    let name = format!("{XL_BALLOON}-{arch}");
    let spec = rig::XlSpec {
        job_timeout: Duration::from_secs(400),
        // dom0 (its poller, xenconsoled, xl) on CPU 0, each guest alone on
        // CPU 1: dom0's work takes no time from the guest it measures.
        cpus: 2,
        ..rig_spec(
            &name,
            arch,
            xlb_jobs(),
            a.timeout.max(Duration::from_secs(900)),
            a.verbose,
        )
    };
    eprintln!("xtask: bench {name} ...");
    let started = Instant::now();
    let res = rig::boot_xl(env, &spec, &ag, &table)?;
    let ag_g = xlb_guest(&res, "xmb-agent");
    let lx_g = xlb_guest(&res, "xmb-linux");
    let ok = ag_g.reach_s.iter().all(Option::is_some) && lx_g.reach_s.iter().all(Option::is_some);
    eprintln!(
        "xtask: bench {name}: {} in {:.0} s (log: {})",
        if ok { "done" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        res.log_path.display()
    );
    Ok((render_xl_balloon(arch, &ag_g, &lx_g, &res), ok))
}

/// An xl rig boot of a benchmark: its log and scratch directory named
/// after `name`, one CPU, the default bound per job.
pub fn rig_spec(
    name: &str,
    arch: Arch,
    jobs: Vec<rig::XlJob>,
    timeout: Duration,
    verbose: bool,
) -> rig::XlSpec {
    rig::XlSpec {
        arch,
        jobs,
        job_timeout: rig::DEFAULT_JOB_TIMEOUT,
        timeout,
        show: if verbose { Show::All } else { Show::Nothing },
        log_path: agent::target_dir()
            .join("xenmem-logs")
            .join(format!("bench-{name}.log")),
        work_dir: agent::target_dir()
            .join("xenmem-work")
            .join(format!("bench-{name}")),
        forwarder_selftest: false,
        cpus: 1,
    }
}

fn render_xl_balloon(arch: Arch, ag: &XlbGuest, lx: &XlbGuest, res: &rig::XlResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## 7. Balloon service vs Linux's balloon driver ({arch}, xl mem-set {XLB_HIGH}→{XLB_LOW}→{XLB_HIGH} MiB)\n"
    );
    let _ = writeln!(
        o,
        "One rig boot (Linux dom0 with 512 MiB, `xl`; QEMU `-smp 2`: dom0 pinned to CPU 0, \
         each guest alone on CPU 1, so dom0's poller takes no time from the guest it \
         measures), one run of each guest, one after the other (memory=maxmem={XLB_HIGH}M): \
         the agent (`mode=service`) and Debian's Linux 6.1 as a PVH domU (its built-in \
         xen-balloon driver, a busybox initramfs that sleeps). {XLB_LOW} MiB, not 64: Linux's \
         driver does not get below about 80 MiB. Time: from before `xl mem-set` (whose own \
         time is shown) until Xen's count (`XEN_DOMCTL_getdomaininfo`'s tot_pages × 4, asked \
         every 10 ms through dom0's privcmd by `xenmem-peer reach`) is within 1 MiB of the \
         target, the same poller for both. \"seen→reached\" is the agent's own clock from the \
         watch event to the target (`service-reached ticks=`), \"in Xen\" the part of it inside \
         its decrease/populate hypercalls (`xen_ticks=`). Hypercalls: the agent's own count; \
         Linux's are not visible from dom0. CPU: `xl list` Time(s) (0.1 s resolution) at the \
         start and end of {} s idle after the target.\n",
        XLB_IDLE.as_secs()
    );
    header(
        &mut o,
        &[
            "direction",
            "guest",
            "time to target",
            "of it xl mem-set",
            "seen→reached",
            "in Xen",
            "Xen's count",
            "MiB/s",
            "polls",
            "hypercalls",
            "CPU while idle",
        ],
        2,
    );
    let moved = (XLB_HIGH - XLB_LOW) as f64;
    let fmt_s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
    let idle = |g: &XlbGuest, i: usize| -> Option<f64> {
        // cpu steps: [before, after-down, idle-end, after-up, idle-end]
        Some(g.cpu.get(i + 1).copied()?? - g.cpu.get(i).copied()??)
    };
    let mut goals = Vec::new();
    let mut ceilings = Vec::new();
    for (d, dir) in ["down", "up"].iter().enumerate() {
        for (gname, g) in [("agent", ag), ("Linux", lx)] {
            let t = g.reach_s[d];
            let agent = gname == "agent";
            let own = |v: &Vec<f64>| {
                if agent {
                    fmt_s(v.get(d).copied())
                } else {
                    "-".into()
                }
            };
            let hc = if agent {
                g.hypercalls
                    .get(d)
                    .map_or("-".to_string(), |h| h.to_string())
            } else {
                "-".into()
            };
            row(
                &mut o,
                &[
                    format!("{dir} to {} MiB", if d == 0 { XLB_LOW } else { XLB_HIGH }),
                    gname.into(),
                    if t.is_some() {
                        fmt_s(t)
                    } else {
                        "not reached".into()
                    },
                    fmt_s(g.mem_set_s[d]),
                    own(&g.own_s),
                    own(&g.xen_s),
                    g.kib[d].map_or("-".into(), |k| format!("{k} KiB")),
                    t.map_or("-".into(), |t| format!("{:.0}", moved / t)),
                    g.polls[d].map_or("-".into(), |p| p.to_string()),
                    hc,
                    idle(g, 1 + 2 * d).map_or("-".into(), |c| format!("{c:.1} s")),
                ],
            );
        }
        let ratio = match (lx.reach_s[d], ag.reach_s[d]) {
            (Some(l), Some(a)) if a > 0.0 => Some(l / a),
            _ => None,
        };
        // The best any guest could do that must make these hypercalls:
        // the toolstack's own command, then Xen's time for the memory
        // (the agent's superpage calls: Xen's cheapest way to move it).
        let floor = match (ag.mem_set_s[d], ag.xen_s.get(d)) {
            (Some(m), Some(x)) => Some(m + x),
            _ => None,
        };
        let ceiling = match (lx.reach_s[d], floor) {
            (Some(l), Some(f)) if f > 0.0 => Some(l / f),
            _ => None,
        };
        ceilings.push((dir, floor, ceiling, ratio));
        goals.push((
            format!("{dir}: Linux's time / the agent's"),
            format!("≥ {XLB_RATIO_GOAL:.0}x"),
            ratio.map_or("-".into(), |r| format!("{r:.1}x")),
            match (ratio, ceiling) {
                (Some(r), _) if r >= XLB_RATIO_GOAL => {
                    format!("PASS (x{:.2} to spare)", r / XLB_RATIO_GOAL)
                }
                (Some(r), Some(c)) if c < XLB_RATIO_GOAL => format!(
                    "MISS (off by x{:.2}; the goal is above this run's ceiling of {c:.1}x, below)",
                    XLB_RATIO_GOAL / r
                ),
                (Some(r), _) => format!("MISS (off by x{:.2})", XLB_RATIO_GOAL / r),
                (None, _) => "MISS (not measured)".into(),
            },
        ));
    }
    let agent_idle: Vec<Option<f64>> = (0..2).map(|d| idle(ag, 1 + 2 * d)).collect();
    let idle_ok = agent_idle.iter().all(|c| c.is_some_and(|c| c == 0.0));
    goals.push((
        "agent's CPU between targets".into(),
        "0.0 s (resolution 0.1 s)".into(),
        agent_idle
            .iter()
            .map(|c| c.map_or("-".into(), |c| format!("{c:.1} s")))
            .collect::<Vec<_>>()
            .join(", "),
        if idle_ok {
            "PASS".into()
        } else {
            "MISS".into()
        },
    ));
    let _ = writeln!(o);
    header(&mut o, &["goal", "target", "measured", "status"], 1);
    for (g, t, m, s) in goals {
        row(&mut o, &[g, t, m, s]);
    }
    let _ = writeln!(
        o,
        "\nThe ceiling: no guest reaches a target before `xl mem-set` has run and Xen has \
         moved the memory. Xen's time is the agent's `in Xen` (order-9 extents, 4096 per \
         call: the cheapest way Xen offers a domU); so Linux's time ÷ (xl mem-set + Xen's \
         time) is the best ratio any guest could show here.\n"
    );
    header(
        &mut o,
        &[
            "direction",
            "xl mem-set + Xen",
            "ceiling: Linux ÷ that",
            "agent's ratio",
            "of the ceiling",
        ],
        1,
    );
    for (dir, floor, ceiling, ratio) in ceilings {
        row(
            &mut o,
            &[
                dir.to_string(),
                fmt_s(floor),
                ceiling.map_or("-".into(), |c| format!("{c:.1}x")),
                ratio.map_or("-".into(), |r| format!("{r:.1}x")),
                match (ratio, ceiling) {
                    (Some(r), Some(c)) if c > 0.0 => format!("{:.0}%", 100.0 * r / c),
                    _ => "-".into(),
                },
            ],
        );
    }
    let _ = writeln!(
        o,
        "\nXen's count at the end (debug key q): agent {} pages, Linux {} pages. \
         Boot log: `{}`.",
        ag.nr_pages.map_or("-".into(), |n| n.to_string()),
        lx.nr_pages.map_or("-".into(), |n| n.to_string()),
        res.log_path.display()
    );
    o
}

/// The agent's files, for the footprint table.
#[derive(Clone, Copy, Debug)]
pub struct Files {
    elf: u64,
    image: u64,
}

/// One of [`Files`]' sizes.
type FileSize = fn(&Files) -> u64;

impl Files {
    fn of(a: &agent::Agent) -> Files {
        Files {
            elf: a.elf.len() as u64,
            image: std::fs::metadata(&a.boot_image).map_or(0, |m| m.len()),
        }
    }
}

// ---- host benchmarks --------------------------------------------------------

/// What the host benchmarks printed.
#[derive(Debug)]
pub struct HostBench {
    /// `cargo bench --bench region_table`'s output.
    region_table: String,
    /// (regions, heap bytes per region) of a region table, measured.
    bytes_per_region: Vec<(u64, f64)>,
}

fn host_bench() -> Result<HostBench> {
    eprintln!("xtask: bench host: cargo bench --bench region_table ...");
    let out = agent::cargo()
        .args(["bench", "--bench", "region_table"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench --bench region_table")?;
    if !out.status.success() {
        bail!("cargo bench --bench region_table failed ({})", out.status);
    }
    Ok(HostBench {
        region_table: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        bytes_per_region: [100u64, 10_000, 100_000]
            .into_iter()
            .map(|n| (n, table_bytes_per_region(n)))
            .collect(),
    })
}

/// Counts the bytes each thread has live on the heap (xtask's global
/// allocator: the system allocator plus a thread-local add per call), so
/// that a measurement sees only its own thread's allocations.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // During thread teardown the counter may be gone: not counted then.
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

fn live() -> isize {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s, forwarded.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            count(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            count(l.size() as isize);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            count(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes per region of a region table of `n` regions that do not
/// merge (as the region-table benchmark builds it), measured with the
/// counting allocator. Same code and layout as on the 64-bit targets.
fn table_bytes_per_region(n: u64) -> f64 {
    use xenmem::addr::{Gfn, PageCount};
    use xenmem::region::{FrameRange, Region, RegionFlags, RegionKind, RegionTable, ReservedUse};
    let before = live();
    let mut t = RegionTable::new();
    for i in 0..n {
        let kind = if i % 2 == 0 {
            RegionKind::Ram
        } else {
            RegionKind::Reserved(ReservedUse::Firmware)
        };
        let Ok(range) = FrameRange::new(Gfn(i * 16), PageCount(16)) else {
            continue;
        };
        let _ = t.add(Region::new(range, kind, RegionFlags::READ));
    }
    let after = live();
    let per = (after - before) as f64 / t.len().max(1) as f64;
    drop(t);
    per
}

// ---- rendering --------------------------------------------------------------

fn reports<'a>(res: &'a BootResult, b: &BenchBoot, topic: &'a str) -> Vec<&'a Report> {
    res.logs.get(b.source).topic(topic).collect()
}

fn get<'a>(r: &'a Report, k: &str) -> &'a str {
    r.get(k).unwrap_or("?")
}

/// Microseconds as milliseconds with one decimal.
fn ms(us: &str) -> String {
    match us.parse::<u64>() {
        Ok(v) => format!("{:.1}", v as f64 / 1000.0),
        Err(_) => us.to_string(),
    }
}

/// `value (xspread)`.
fn with_spread(v: String, spread: &str) -> String {
    if spread == "?" || spread == "n/a" {
        v
    } else {
        format!("{v} (x{spread})")
    }
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn header(out: &mut String, cols: &[&str], right_from: usize) {
    let _ = writeln!(out, "| {} |", cols.join(" | "));
    let seps: Vec<&str> = (0..cols.len())
        .map(|i| if i >= right_from { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", seps.join("|"));
}

/// Render everything as markdown.
pub fn render(
    results: &[(&BenchBoot, BootResult, Files)],
    host: Option<&HostBench>,
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "## Context\n");
    header(
        &mut o,
        &[
            "boot",
            "role",
            "clock",
            "Hz",
            "reps",
            "pages",
            "outcome",
            "benchmarks s (guest clock)",
            "boot s (wall clock)",
        ],
        3,
    );
    for (b, res, _) in results {
        let cx = reports(res, b, "bench-context");
        let c = cx.first();
        let g = |k| c.map_or("?".to_string(), |r| get(r, k).to_string());
        row(
            &mut o,
            &[
                b.name.to_string(),
                g("role"),
                g("clock"),
                g("hz"),
                g("reps"),
                g("current"),
                if res.passed(b.mode) {
                    "pass".into()
                } else {
                    format!("FAIL: {}", res.summary(b.mode))
                },
                reports(res, b, "bench-done")
                    .first()
                    .and_then(|r| r.get("elapsed_us")?.parse::<u64>().ok())
                    .map_or("?".into(), |us| format!("{:.1}", us as f64 / 1e6)),
                format!("{:.1}", res.elapsed.as_secs_f64()),
            ],
        );
    }
    let _ = writeln!(
        o,
        "\nThe guest's clock (calibrated from Xen's TSC frequency on x86, CNTFRQ on Arm) \
         must stay below the wall clock, which adds Xen's boot and QEMU's start.\n"
    );

    let _ = writeln!(
        o,
        "\n## 1. Balloon out and back in (same arena, same boot)\n\n\
         Times are medians; (xN) is the spread, max/min over the repetitions. \
         \"÷ xenmem\" is the median over repetitions of this strategy's round trip \
         divided by xenmem's in the same repetition (its throughput ratio); \
         \"out\" and \"in\" the same for each direction. \"per GiB\" counts the \
         hypercalls of both directions per GiB moved (out + in). xenmem's rows are \
         the agent's engine, its identity-map hook included; Linux's and Mini-OS's \
         strategies (order 0, information only, no goal) run with the plain engine.\n"
    );
    header(
        &mut o,
        &[
            "boot",
            "strategy",
            "max order",
            "extents/call",
            "hypercalls",
            "per GiB",
            "out ms",
            "in ms",
            "round trip ms",
            "MiB/s",
            "÷ xenmem",
            "out ÷ xenmem",
            "in ÷ xenmem",
        ],
        2,
    );
    let mut any_profile = false;
    for (b, res, _) in results {
        for r in reports(res, b, "bench-balloon") {
            if let Some(s) = r.get("status") {
                row(
                    &mut o,
                    &[
                        b.name.into(),
                        format!("{s}: {}", get(r, "reason")),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                );
                continue;
            }
            any_profile = true;
            row(
                &mut o,
                &[
                    b.name.into(),
                    get(r, "strategy").into(),
                    get(r, "order").into(),
                    get(r, "batch").into(),
                    get(r, "hypercalls").into(),
                    get(r, "per_gib").into(),
                    ms(get(r, "out_us")),
                    ms(get(r, "in_us")),
                    with_spread(ms(get(r, "total_us")), get(r, "spread")),
                    get(r, "mib_s").into(),
                    with_spread(get(r, "vs_xenmem").into(), get(r, "vs_spread")),
                    get(r, "out_vs").into(),
                    get(r, "in_vs").into(),
                ],
            );
        }
    }
    let scale: Vec<_> = results
        .iter()
        .flat_map(|(b, res, _)| {
            reports(res, b, "bench-balloon-scale")
                .into_iter()
                .map(move |r| (b.name, r))
        })
        .collect();
    if !scale.is_empty() {
        let _ = writeln!(
            o,
            "\nScale: xenmem alone over as much free RAM as the domain has (up to 1 GiB), \
             for hypercalls per GiB beyond the one-call-per-direction minimum.\n"
        );
        header(
            &mut o,
            &[
                "boot",
                "strategy",
                "MiB",
                "hypercalls",
                "per GiB",
                "out ms",
                "in ms",
                "round trip ms",
                "MiB/s",
            ],
            2,
        );
        for (name, r) in scale {
            if let Some(st) = r.get("status") {
                let _ = writeln!(o, "| {name} | {st}: {} ||||||||", get(r, "reason"));
                continue;
            }
            row(
                &mut o,
                &[
                    name.into(),
                    get(r, "strategy").into(),
                    get(r, "mib").into(),
                    get(r, "hypercalls").into(),
                    get(r, "per_gib").into(),
                    ms(get(r, "out_us")),
                    ms(get(r, "in_us")),
                    with_spread(ms(get(r, "total_us")), get(r, "spread")),
                    get(r, "mib_s").into(),
                ],
            );
        }
    }
    if any_profile {
        let _ = writeln!(
            o,
            "\nProfile: the same hypercalls replayed without the engine (no region-table \
             or identity-map work), in each repetition right after the engine's round trip, \
             so \"Xen\" is the time inside the hypercalls. The engine's own counters \
             inside its round trip (medians): the time in its decrease/populate \
             hypercalls, and in the identity-map hook (taking ballooned frames out of \
             the boot identity map and putting them back, TLB flushes included; only \
             xenmem's row runs with the agent's engine and its hook, the order-0 \
             strategies with the plain engine). \"Own, % of Xen\": the median over \
             repetitions of (round trip − its time in hypercalls) ÷ Xen-only replay, \
             both of the same repetition; xenmem's row is the `engine-share` goal. \
             \"Round trip − replay, % of Xen\": (round trip − replay) ÷ replay, the \
             same paired median, which also carries Xen's own run-to-run noise \
             (negative: the replay was slower).\n"
        );
        header(
            &mut o,
            &[
                "boot",
                "strategy",
                "Xen out ms",
                "Xen in ms",
                "engine out ms",
                "engine in ms",
                "engine: in hypercalls ms",
                "engine: identity map ms",
                "own, % of Xen",
                "round trip − replay, % of Xen",
            ],
            2,
        );
        for (b, res, _) in results {
            for r in reports(res, b, "bench-balloon-profile") {
                row(
                    &mut o,
                    &[
                        b.name.into(),
                        match get(r, "identity") {
                            "no" => format!("{} (plain engine)", get(r, "strategy")),
                            _ => get(r, "strategy").to_string(),
                        },
                        ms(get(r, "xen_out_us")),
                        ms(get(r, "xen_in_us")),
                        ms(get(r, "engine_out_us")),
                        ms(get(r, "engine_in_us")),
                        ms(get(r, "engine_in_xen_us")),
                        ms(get(r, "engine_identity_us")),
                        get(r, "own_pct").into(),
                        get(r, "share_pct").into(),
                    ],
                );
            }
        }
    }

    let _ = writeln!(
        o,
        "\n## 2. The floor: writing every byte of the same arena\n"
    );
    header(
        &mut o,
        &[
            "boot",
            "MiB",
            "memset ms",
            "memset MiB/s",
            "xenmem populate ms",
            "populate ÷ memset",
            "xenmem release ms",
            "release ÷ memset",
        ],
        1,
    );
    for (b, res, _) in results {
        for r in reports(res, b, "bench-floor") {
            if let Some(s) = r.get("status") {
                let _ = writeln!(o, "| {} | {s}: {} |||||||", b.name, get(r, "reason"));
                continue;
            }
            row(
                &mut o,
                &[
                    b.name.into(),
                    get(r, "mib").into(),
                    with_spread(ms(get(r, "memset_us")), get(r, "spread")),
                    get(r, "mib_s").into(),
                    ms(get(r, "populate_us")),
                    get(r, "populate_vs_floor").into(),
                    ms(get(r, "release_us")),
                    get(r, "release_vs_floor").into(),
                ],
            );
        }
    }

    render_grants(&mut o, results);
    render_foreign(&mut o, results);

    let _ = writeln!(o, "\n## 5. Region table (host)\n");
    match host {
        Some(h) => {
            let _ = writeln!(o, "{}", h.region_table);
        }
        None => {
            let _ = writeln!(o, "(not run)");
        }
    }

    let _ = writeln!(o, "\n## 6. Footprint\n");
    render_footprint(&mut o, results, host);

    let _ = writeln!(
        o,
        "\n## Goals\n\n\
         Checked by the agent; \"%\" goals are percentages. `engine-share`: xenmem's \
         round trip with the agent's engine (its identity-map hook included): its own \
         time (the round trip less the time inside its hypercalls, by its own \
         counters) ÷ the Xen-only replay of the same hypercalls in the same \
         repetition, median of the repetitions, ≤ 5%. `hypercalls-per-gib`: xenmem's hypercalls of both \
         directions per GiB moved, at the scale row, ≤ 2. `populate-vs-floor`: \
         xenmem's populate ÷ writing every byte of the arena, ≤ 3. \
         `grant-batched-of-ceiling`: the grant library's speed-up at the largest batch \
         as a percentage of Xen's own ceiling (h + p) / p (table 3, minima over the \
         repetitions on both sides), ≥ 95%. \
         `grant-library-share`: (library map − Xen-only map) ÷ Xen-only map at the \
         largest batch (minima of both), ≤ 5%. `foreign-unmap-vs-map`: table 4's multicall unmap ÷ \
         batched map, ≤ 1.2. The strategy ratios of table 1 (÷ xenmem) have no goal.\n"
    );
    header(
        &mut o,
        &[
            "boot",
            "goal",
            "measured on",
            "target",
            "measured",
            "status",
        ],
        3,
    );
    let mut misses = Vec::new();
    for (b, res, _) in results {
        for r in reports(res, b, "bench-goal") {
            let op = if get(r, "op") == "ge" { "≥" } else { "≤" };
            let unit = if get(r, "unit") == "pct" { "%" } else { "" };
            let status = match get(r, "status") {
                "PASS" if get(r, "factor") == "1.00" => "PASS (at the target)".to_string(),
                "PASS" if get(r, "factor") == "n/a" => "PASS".to_string(),
                "PASS" => format!("PASS (x{} to spare)", get(r, "factor")),
                "MISS" => {
                    let s = match get(r, "off_by") {
                        "n/a" => "MISS".to_string(),
                        off => format!("MISS (off by x{off})"),
                    };
                    misses.push(format!("{} {}: {s}", b.name, get(r, "name")));
                    s
                }
                other => other.to_string(),
            };
            row(
                &mut o,
                &[
                    b.name.into(),
                    get(r, "name").into(),
                    match get(r, "basis_mib") {
                        "0" | "?" => "-".to_string(),
                        m => format!("{m} MiB"),
                    },
                    format!("{op} {}{unit}", get(r, "target")),
                    match get(r, "measured") {
                        "n/a" => "n/a".to_string(),
                        m => format!("{m}{unit}"),
                    },
                    status,
                ],
            );
        }
    }
    if !misses.is_empty() {
        let _ = writeln!(o, "\nMissed goals:");
        for m in &misses {
            let _ = writeln!(o, "- {m}");
        }
    }
    let _ = writeln!(
        o,
        "\n(`cargo xtask bench` took {:.0} s.)",
        elapsed.as_secs_f64()
    );
    o
}

/// A least-squares-free fit of `time = calls × per_call + ops × per_op`
/// through the first (most hypercalls) and last (fewest) of `rows`
/// (hypercalls, microseconds), for `ops` operations: (µs per hypercall,
/// µs per operation). `None` if the two rows do not differ in hypercalls
/// or the fit is negative.
fn fit(rows: &[(u64, f64)], ops: u64) -> Option<(f64, f64)> {
    let (&(c1, t1), &(cn, tn)) = (rows.first()?, rows.last()?);
    if c1 <= cn || ops == 0 {
        return None;
    }
    let per_call = (t1 - tn) / (c1 - cn) as f64;
    let per_op = (tn - per_call * cn as f64) / ops as f64;
    (per_call >= 0.0 && per_op > 0.0).then_some((per_call, per_op))
}

/// "Xen's time fits ..." for one boot's rows.
fn fit_line(name: &str, what: &str, rows: &[(u64, f64)], ops: u64, unit: &str) -> Option<String> {
    let (h, p) = fit(rows, ops)?;
    Some(format!(
        "- {name}: {what} ≈ {h:.1} µs per hypercall + {p:.1} µs per {unit}; so batching \
         can at most gain (h + p) / p = {:.2}x over one {unit} per hypercall",
        (h + p) / p
    ))
}

fn skipped_lines(o: &mut String, pending: &[String], had_rows: bool) {
    if !pending.is_empty() && had_rows {
        let _ = writeln!(o);
    }
    for p in pending {
        let _ = writeln!(o, "{p}");
    }
}

fn num(r: &Report, k: &str) -> Option<f64> {
    r.get(k)?.parse().ok()
}

/// Table 3, its profile and the helper domain's line.
fn render_grants(o: &mut String, results: &[(&BenchBoot, BootResult, Files)]) {
    let _ = writeln!(
        o,
        "\n## 3. Grant mapping: one op per hypercall vs batched\n\n\
         A helper domain's 1024 grants mapped (read-write) and unmapped with the grant \
         library (`grant::map_grants_per_call` / `GrantMap::release_per_call`: holes, \
         region table, hypercalls, page tables) at 1, 64 and 1024 operations per \
         hypercall, 15 repetitions (the other tables: 5). Speed-up: the median over \
         repetitions of one-per-call's map time divided by this row's, in the same \
         repetition.\n"
    );
    let mut pending = Vec::new();
    let mut rows = Vec::new();
    for (b, res, _) in results {
        for r in reports(res, b, "bench-grant") {
            if let Some(s) = r.get("status") {
                pending.push(format!("- {}: {s} ({})", b.name, get(r, "reason")));
                continue;
            }
            rows.push(vec![
                b.name.to_string(),
                get(r, "dom").into(),
                get(r, "mode").into(),
                get(r, "per_call").into(),
                get(r, "hypercalls").into(),
                with_spread(ms(get(r, "map_us")), get(r, "spread")),
                get(r, "maps_s").into(),
                format!("{:.1}", num(r, "ns_per_grant").unwrap_or(0.0) / 1000.0),
                ms(get(r, "unmap_us")),
                with_spread(get(r, "speedup").into(), get(r, "speedup_spread")),
            ]);
        }
    }
    if !rows.is_empty() {
        header(
            o,
            &[
                "boot",
                "helper",
                "mode",
                "ops/call",
                "hypercalls",
                "map ms",
                "maps/s",
                "µs/grant",
                "unmap ms",
                "speed-up",
            ],
            3,
        );
        for r in &rows {
            row(o, r);
        }
    }
    skipped_lines(o, &pending, !rows.is_empty());
    let with_profile: Vec<_> = results
        .iter()
        .filter(|(b, res, _)| !reports(res, b, "bench-grant-profile").is_empty())
        .collect();
    if !with_profile.is_empty() {
        let _ = writeln!(
            o,
            "\nProfile: the same grants mapped with the hypercalls alone (a reserved \
             hole, no region-table or page-table work), right after the library in each \
             repetition: \"Xen\" is the time in the hypercalls. Medians, then minima over \
             the repetitions. \"Library's share\": (library map − Xen-only map) ÷ \
             Xen-only map, in percent, from the minima of both (the largest batch's is \
             the `grant-library-share` goal; a map of 1024 grants is fixed work and host \
             preemptions only ever add to it, so the fastest repetition is the estimate \
             of each); \"paired median\" is the median over repetitions of the same \
             ratio within one repetition, for information.\n"
        );
        header(
            o,
            &[
                "boot",
                "ops/call",
                "hypercalls",
                "Xen map ms",
                "library map ms",
                "Xen map ms, min",
                "library map ms, min",
                "library's share, % of Xen",
                "paired median, %",
                "Xen unmap ms",
                "library unmap ms",
                "Xen-only speed-up",
            ],
            1,
        );
        let mut fits = Vec::new();
        for (b, res, _) in &with_profile {
            let prof = reports(res, b, "bench-grant-profile");
            for r in &prof {
                row(
                    o,
                    &[
                        b.name.into(),
                        get(r, "per_call").into(),
                        get(r, "hypercalls").into(),
                        ms(get(r, "xen_map_us")),
                        ms(get(r, "lib_map_us")),
                        ms(get(r, "xen_map_min_us")),
                        ms(get(r, "lib_map_min_us")),
                        get(r, "share_min_pct").into(),
                        get(r, "share_pct").into(),
                        ms(get(r, "xen_unmap_us")),
                        ms(get(r, "lib_unmap_us")),
                        get(r, "xen_speedup").into(),
                    ],
                );
            }
            let grants = reports(res, b, "bench-grant")
                .iter()
                .find_map(|r| r.get("grants")?.parse().ok())
                .unwrap_or(0);
            let pts: Vec<(u64, f64)> = prof
                .iter()
                .filter_map(|r| Some((num(r, "hypercalls")? as u64, num(r, "xen_map_min_us")?)))
                .collect();
            fits.extend(fit_line(b.name, "Xen's map time", &pts, grants, "grant"));
        }
        if !fits.is_empty() {
            let _ = writeln!(
                o,
                "\nFit of Xen's time through the one-per-call and the largest batch (minima):\n"
            );
            for f in fits {
                let _ = writeln!(o, "{f}");
            }
        }
        let ceilings: Vec<_> = with_profile
            .iter()
            .flat_map(|(b, res, _)| {
                reports(res, b, "bench-grant-ceiling")
                    .into_iter()
                    .map(move |r| (b.name, r))
            })
            .collect();
        if !ceilings.is_empty() {
            let _ = writeln!(
                o,
                "\nThe `grant-batched-of-ceiling` goal: the same fit through the Xen-only \
                 rows' minima gives Xen's ceiling (h + p) / p, the most any batching can \
                 gain over one grant per hypercall; the library's own speed-up at the \
                 largest batch (its one-per-call map ÷ its batched map, minima) is divided \
                 by it. \"Paired\": the same per repetition, median over repetitions (the \
                 former estimator, for information: four timings enter each repetition's \
                 ratio, and a preemption in any of them moves it):\n"
            );
            header(
                o,
                &[
                    "boot",
                    "ops/call",
                    "reps",
                    "Xen's ceiling (h + p) / p",
                    "library speed-up",
                    "% of the ceiling",
                    "paired: ceiling",
                    "paired: speed-up",
                    "paired: %",
                ],
                1,
            );
            for (name, r) in ceilings {
                row(
                    o,
                    &[
                        name.into(),
                        get(r, "per_call").into(),
                        get(r, "reps").into(),
                        get(r, "ceiling").into(),
                        get(r, "speedup").into(),
                        get(r, "of_ceiling_pct").into(),
                        get(r, "paired_ceiling").into(),
                        get(r, "paired_speedup").into(),
                        get(r, "paired_of_ceiling_pct").into(),
                    ],
                );
            }
        }
        let splits: Vec<String> = with_profile
            .iter()
            .flat_map(|(b, res, _)| {
                reports(res, b, "bench-grant-tables")
                    .into_iter()
                    .filter_map(move |r| tables_line(b.name, r))
            })
            .collect();
        if !splits.is_empty() {
            let _ = writeln!(
                o,
                "\nWhere the library's own time goes at the largest batch (minima): its \
                 page tables alone (`MapTarget::map` / `unmap` of the same pages, onto the \
                 frames the Xen-only hypercalls just mapped, in each repetition) beside \
                 library − Xen-only; the rest is holes, region table and the operation \
                 lists:\n"
            );
            for l in splits {
                let _ = writeln!(o, "{l}");
            }
        }
    }
    render_helper(o, results);
}

/// One boot's split of the library's own grant-mapping time
/// (`bench-grant-tables`).
fn tables_line(name: &str, r: &Report) -> Option<String> {
    let n = num(r, "grants")?.max(1.0);
    let own = num(r, "own_us")?;
    let tm = num(r, "tables_map_us")?;
    let tu = num(r, "tables_unmap_us")?;
    let own_unmap = num(r, "lib_unmap_us")? - num(r, "xen_unmap_us")?;
    Some(format!(
        "- {name}: map: library − Xen-only = {:.2} ms ({:.2} µs/grant), page tables {:.2} ms \
         ({:.2} µs/grant), the rest {:.2} ms; unmap: library − Xen-only = {:.2} ms, page \
         tables {:.2} ms ({} repetitions)",
        own / 1000.0,
        own / n,
        tm / 1000.0,
        tm / n,
        (own - tm) / 1000.0,
        own_unmap / 1000.0,
        tu / 1000.0,
        get(r, "reps"),
    ))
}

/// The helper domain's line per boot: what it held, and that it went.
fn render_helper(o: &mut String, results: &[(&BenchBoot, BootResult, Files)]) {
    let mut lines = Vec::new();
    for (b, res, _) in results {
        for r in reports(res, b, "bench-helper") {
            lines.push(format!(
                "- {}: domain {}, {} granted pages + {} pages for table 4 (order {} extents), \
                 {} grant-table frames; set-up {} ms, teardown {} ms; destroyed: {}, \
                 region table restored: {}, window restored: {}, reservation restored: {}",
                b.name,
                get(r, "domid"),
                get(r, "grant_pages"),
                get(r, "foreign_pages"),
                get(r, "order"),
                get(r, "gnttab_frames"),
                ms(get(r, "setup_us")),
                ms(get(r, "teardown_us")),
                get(r, "destroyed"),
                get(r, "table_restored"),
                get(r, "window_restored"),
                get(r, "reservation_restored"),
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            o,
            "\nThe helper domain (built and destroyed by the agent):\n"
        );
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
    }
}

/// Table 4, its fit, and the unmap profile with its fit and ceiling.
fn render_foreign(o: &mut String, results: &[(&BenchBoot, BootResult, Files)]) {
    let _ = writeln!(
        o,
        "\n## 4. Foreign mapping: add_to_physmap_batch at several batch sizes\n\n\
         Each repetition maps the 4096 frames at every batch size twice: once taken out \
         with one `remove_from_physmap` per frame, once in multicalls \
         (`Hypervisor::remove_from_physmap_batch`). Unmap ÷ map: the median over \
         repetitions of the batched unmap time divided by the map time of the same \
         repetition.\n"
    );
    let mut pending = Vec::new();
    let mut rows = Vec::new();
    let mut fits = Vec::new();
    let mut prof_rows = Vec::new();
    let mut prof_fits = Vec::new();
    for (b, res, _) in results {
        let mut pts = Vec::new();
        let mut frames = 0;
        // (batch, map µs, batched unmap µs) at the largest batch.
        let mut largest: Option<(u64, f64, f64)> = None;
        for r in reports(res, b, "bench-foreign") {
            if let Some(s) = r.get("status") {
                pending.push(format!("- {}: {s} ({})", b.name, get(r, "reason")));
                continue;
            }
            let peer = match r.get("peer_kind") {
                Some(k) => format!("{} ({k})", get(r, "dom")),
                None => get(r, "dom").to_string(),
            };
            rows.push(vec![
                b.name.to_string(),
                peer,
                get(r, "frames").into(),
                get(r, "batch").into(),
                get(r, "hypercalls").into(),
                with_spread(ms(get(r, "map_us")), get(r, "spread")),
                get(r, "ns_per_frame").into(),
                with_spread(get(r, "speedup").into(), get(r, "speedup_spread")),
                ms(get(r, "unmap_us")),
                match r.get("unmap_batched_us") {
                    Some(u) => format!(
                        "{} ({} calls)",
                        with_spread(ms(u), get(r, "unmap_batched_spread")),
                        get(r, "unmap_hypercalls")
                    ),
                    None => "-".into(),
                },
                match r.get("unmap_vs_map") {
                    Some(v) => with_spread(v.into(), get(r, "unmap_vs_map_spread")),
                    None => "-".into(),
                },
            ]);
            frames = num(r, "frames").unwrap_or(0.0) as u64;
            if let (Some(c), Some(t)) = (num(r, "hypercalls"), num(r, "map_us")) {
                pts.push((c as u64, t));
            }
            if let (Some(bt), Some(m), Some(u)) = (
                num(r, "batch"),
                num(r, "map_us"),
                num(r, "unmap_batched_us"),
            ) {
                if largest.is_none_or(|(l, ..)| bt as u64 >= l) {
                    largest = Some((bt as u64, m, u));
                }
            }
        }
        let map_fit = fit(&pts, frames);
        fits.extend(fit_line(b.name, "map time", &pts, frames, "frame"));
        let mut ppts = Vec::new();
        let prof_row = |r: &Report, what: &str| {
            vec![
                b.name.to_string(),
                get(r, "per_multicall").into(),
                get(r, "multicalls").into(),
                what.to_string(),
                with_spread(ms(get(r, "unmap_us")), get(r, "spread")),
                get(r, "ns_per_frame").into(),
            ]
        };
        // The largest multicalls' time, mapped frames.
        let mut full = None;
        for r in reports(res, b, "bench-foreign-unmap") {
            prof_rows.push(prof_row(r, "mapped"));
            if let (Some(c), Some(t)) = (num(r, "multicalls"), num(r, "unmap_us")) {
                ppts.push((c as u64, t));
                full = Some((c as u64, t));
            }
        }
        let mut nothing = None;
        for r in reports(res, b, "bench-foreign-unmap-nothing") {
            prof_rows.push(prof_row(r, "nothing (ENOENT)"));
            if let (Some(c), Some(t)) = (num(r, "multicalls"), num(r, "unmap_us")) {
                nothing = Some((c as u64, t));
            }
        }
        if let Some((h, p)) = fit(&ppts, frames) {
            let mut line = format!(
                "- {}: unmap time ≈ {h:.1} µs per multicall + {p:.1} µs per frame (Xen's \
                 removal and the multicall's own work per entry)",
                b.name
            );
            if let Some((_, pm)) = map_fit {
                let _ = write!(
                    line,
                    "; add_to_physmap_batch: {pm:.1} µs per frame ({:.2}x)",
                    p / pm
                );
            }
            // The same multicalls with nothing to remove: what is left is
            // the p2m change itself.
            if let (Some((c, t)), Some((c0, t0))) = (full, nothing) {
                if c == c0 && frames > 0 {
                    let _ = write!(
                        line,
                        ". The same multicalls with nothing mapped (each entry ENOENT: \
                         looked up, nothing changed) take {:.1} µs per frame, so taking the \
                         entry out of the p2m is {:.1} µs per frame of the {:.1}",
                        t0 / frames as f64,
                        (t - t0) / frames as f64,
                        t / frames as f64
                    );
                }
            }
            if let Some((_, m, u)) = largest {
                let _ = write!(
                    line,
                    ". However few the multicalls, unmap ÷ map at the largest batch is \
                     ≥ {:.2} (measured {:.2})",
                    p * frames as f64 / m,
                    u / m
                );
            }
            prof_fits.push(line);
        }
    }
    if !rows.is_empty() {
        header(
            o,
            &[
                "boot",
                "peer",
                "frames",
                "batch",
                "hypercalls",
                "map ms",
                "ns/frame",
                "speed-up vs batch 1",
                "unmap ms (1 per call)",
                "unmap ms (multicalls)",
                "unmap (multicalls) ÷ map",
            ],
            2,
        );
        for r in &rows {
            row(o, r);
        }
    }
    skipped_lines(o, &pending, !rows.is_empty());
    if !fits.is_empty() {
        let _ = writeln!(o, "\nFit through batch 1 and the largest batch:\n");
        for f in fits {
            let _ = writeln!(o, "{f}");
        }
    }
    if !prof_rows.is_empty() {
        let _ = writeln!(
            o,
            "\nUnmap profile: the same frames removed with `multicall_remove_from_physmap` \
             alone, at several entries per multicall (fit through the first and last row):\n"
        );
        header(
            o,
            &[
                "boot",
                "entries per multicall",
                "multicalls",
                "frames hold",
                "unmap ms",
                "ns/frame",
            ],
            1,
        );
        for r in &prof_rows {
            row(o, r);
        }
        if !prof_fits.is_empty() {
            let _ = writeln!(o);
            for f in prof_fits {
                let _ = writeln!(o, "{f}");
            }
        }
    }
}

fn render_footprint(
    o: &mut String,
    results: &[(&BenchBoot, BootResult, Files)],
    host: Option<&HostBench>,
) {
    let with_fp: Vec<&(&BenchBoot, BootResult, Files)> = results
        .iter()
        .filter(|(b, res, _)| !reports(res, b, "bench-footprint").is_empty())
        .collect();
    if !with_fp.is_empty() {
        let mut cols = vec!["item"];
        cols.extend(with_fp.iter().map(|(b, ..)| b.name));
        header(o, &cols, 1);
        let mut items: Vec<String> = Vec::new();
        for (b, res, _) in &with_fp {
            for r in reports(res, b, "bench-footprint") {
                let i = get(r, "item").to_string();
                if !items.contains(&i) {
                    items.push(i);
                }
            }
        }
        let value = |res: &BootResult, b: &BenchBoot, item: &str| -> Option<(u64, String)> {
            let r = reports(res, b, "bench-footprint")
                .into_iter()
                .find(|r| get(r, "item") == item)?;
            let v = get(r, "value");
            let n = v.parse::<u64>().ok();
            let shown = match (get(r, "unit"), n) {
                ("bytes", Some(n)) => kib(n),
                ("us", Some(n)) => format!("{:.2} ms", n as f64 / 1000.0),
                ("hz", Some(n)) => format!("{:.3} MHz", n as f64 / 1e6),
                (_, _) => v.to_string(),
            };
            Some((n.unwrap_or(0), shown))
        };
        let file_rows: [(&str, FileSize); 2] = [
            ("ELF file (with debug info)", |f| f.elf),
            ("boot image file (what Xen loads)", |f| f.image),
        ];
        for (label, f) in file_rows {
            let mut cells = vec![label.to_string()];
            cells.extend(with_fp.iter().map(|(_, _, files)| kib(f(files))));
            row(o, &cells);
        }
        for item in &items {
            let mut cells = vec![item.clone()];
            for (b, res, _) in &with_fp {
                let cell = match value(res, b, item) {
                    Some((n, s)) if item == "heap-used" => match value(res, b, "heap-size") {
                        Some((size, _)) if size > 0 => {
                            format!("{s} ({:.1}% of the heap)", n as f64 * 100.0 / size as f64)
                        }
                        _ => s,
                    },
                    Some((_, s)) => s,
                    None => "-".into(),
                };
                cells.push(cell);
            }
            row(o, &cells);
        }
        let _ = writeln!(
            o,
            "\ncounter-at-*: the counter's value (TSC / CNTVCT, which Xen starts at the \
             domain's creation) at entry and when the footprint was taken; entry-to-first-line \
             is the agent's own start-up. heap-used is the allocator's count of bytes in \
             use."
        );
    }
    if let Some(h) = host {
        let _ = writeln!(
            o,
            "\nRegion table heap bytes per region (host, counting allocator; the table \
             is a sorted vector of regions with room kept for its next changes), beside \
             a bare sorted `Vec`'s {} bytes per region:\n",
            std::mem::size_of::<xenmem::region::Region>()
        );
        header(o, &["regions", "bytes/region", "÷ sorted Vec"], 1);
        let vec_bytes = std::mem::size_of::<xenmem::region::Region>() as f64;
        for (n, b) in &h.bytes_per_region {
            row(
                o,
                &[
                    n.to_string(),
                    format!("{b:.1}"),
                    format!("{:.2}", b / vec_bytes),
                ],
            );
        }
    }
}

fn kib(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::Exit;
    use crate::decode::Level;
    use crate::report::Logs;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let a = parse(&s(&["--only", "x86", "--out=o.md", "--timeout", "9", "-v"])).unwrap();
        assert_eq!(a.only, ["x86"]);
        assert_eq!(a.out, Some(PathBuf::from("o.md")));
        assert_eq!(a.timeout, Duration::from_secs(9));
        assert!(a.verbose);
        assert!(parse(&s(&["--what"])).is_err());
        assert!(selected(&[], "anything"));
        assert!(selected(&s(&["aarch64"]), "aarch64-domu"));
        assert!(!selected(&s(&["host"]), "x86_64-dom0"));
    }

    #[test]
    fn boots_are_valid() {
        for b in boots() {
            boot::agent_cmdlines(b.arch, b.mode, &s(b.opts)).unwrap();
            assert!(b.machine.xen_x86_64_cmdline().contains("dom0_mem="));
        }
    }

    #[test]
    fn renders_reports_as_tables() {
        let b = &boots()[0];
        let mut logs = Logs::default();
        let lines = [
            "report: bench-context arch=x86_64 role=dom0 clock=tsc hz=1000000000 reps=5 current=131072 max_order=18",
            "report: bench-balloon strategy=xenmem order=18 batch=4096 mib=256 hypercalls=2 per_gib=4.00 out_us=1000 in_us=500 total_us=1500 spread=1.10 mib_s=341.33 vs_xenmem=1.00 vs_spread=1.00 out_vs=1.00 in_vs=1.00 short=0 order9=256 order0=0",
            "report: bench-balloon-profile strategy=xenmem reps=5 xen_out_us=900 xen_in_us=400 engine_out_us=1000 engine_in_us=500 share_pct=15.38 share_reps=5 engine_in_xen_us=1250 engine_identity_us=120 own_pct=19.23 identity=yes",
            "report: bench-balloon-profile strategy=linux reps=5 xen_out_us=900 xen_in_us=400 engine_out_us=800 engine_in_us=450 share_pct=-3.85 share_reps=4 engine_in_xen_us=1200 engine_identity_us=0 own_pct=3.85 identity=no",
            "report: bench-floor mib=256 memset_us=300000 spread=1.01 mib_s=853.33 populate_us=500 populate_vs_floor=0.00 release_us=1000 release_vs_floor=0.00 checked=yes",
            "report: bench-grant status=skipped reason=\"needs a privileged domain\"",
            "report: bench-grant mode=one-per-call per_call=1 grants=1024 dom=1 hypercalls=1024 map_us=75837 spread=1.39 maps_s=13502 ns_per_grant=74059 unmap_us=81773 unmap_hypercalls=1024 speedup=1.00 speedup_spread=1.00",
            "report: bench-grant mode=batched per_call=1024 grants=1024 dom=1 hypercalls=1 map_us=16873 spread=1.70 maps_s=60688 ns_per_grant=16477 unmap_us=20713 unmap_hypercalls=1 speedup=5.23 speedup_spread=1.91",
            "report: bench-grant-profile per_call=1 hypercalls=1024 xen_map_us=82484 xen_unmap_us=91107 lib_map_us=75837 lib_unmap_us=81773 share_pct=-8.06 xen_speedup=1.00 xen_map_min_us=82484 lib_map_min_us=75837 share_min_pct=-8.06",
            "report: bench-grant-profile per_call=1024 hypercalls=1 xen_map_us=15826 xen_unmap_us=16520 lib_map_us=16873 lib_unmap_us=20713 share_pct=6.62 xen_speedup=4.76 xen_map_min_us=15826 lib_map_min_us=16873 share_min_pct=6.62",
            "report: bench-grant-tables per_call=1024 grants=1024 reps=15 lib_map_us=16873 xen_map_us=15826 own_us=1047 tables_map_us=512 tables_unmap_us=256 lib_unmap_us=20713 xen_unmap_us=16520",
            "report: bench-grant-ceiling per_call=1024 reps=5 ceiling=5.24 speedup=4.49 of_ceiling_pct=85.69 lib_single_us=75837 lib_batched_us=16873 xen_single_us=82484 xen_batched_us=15826 paired_ceiling=5.20 paired_speedup=4.40 paired_of_ceiling_pct=84.10",
            "report: bench-helper domid=1 grant_pages=1024 grants=1024 gnttab_frames=3 foreign_pages=4096 order=9 setup_us=186209 bench_us=11765046 teardown_us=84157 destroyed=yes table_restored=yes window_restored=yes reservation_restored=yes",
            "report: bench-foreign batch=1 frames=4096 dom=1 peer_kind=helper hypercalls=4096 map_us=371118 spread=1.41 ns_per_frame=90604 speedup=1.00 speedup_spread=1.00 unmap_us=303111 unmap_batched_us=98000 unmap_batched_spread=1.05 unmap_hypercalls=32 per_multicall=128 unmap_vs_map=0.26 unmap_vs_map_spread=1.10 peer_quiet=yes",
            "report: bench-foreign batch=4096 frames=4096 dom=1 peer_kind=helper hypercalls=1 map_us=87527 spread=1.52 ns_per_frame=21368 speedup=3.86 speedup_spread=1.78 unmap_us=255819 unmap_batched_us=96290 unmap_batched_spread=1.04 unmap_hypercalls=32 per_multicall=128 unmap_vs_map=1.10 unmap_vs_map_spread=1.20 peer_quiet=yes",
            "report: bench-foreign-unmap per_multicall=1 multicalls=4096 frames=4096 unmap_us=327680 spread=1.02 ns_per_frame=80000",
            "report: bench-foreign-unmap per_multicall=16 multicalls=256 frames=4096 unmap_us=96000 spread=1.02 ns_per_frame=23437",
            "report: bench-foreign-unmap per_multicall=128 multicalls=32 frames=4096 unmap_us=83840 spread=1.01 ns_per_frame=20468",
            "report: bench-foreign-unmap-nothing per_multicall=128 multicalls=32 frames=4096 unmap_us=41000 spread=1.01 ns_per_frame=10009",
            "report: bench-footprint item=heap-size value=4194304 unit=bytes",
            "report: bench-footprint item=heap-used value=1048576 unit=bytes",
            "report: bench-goal name=engine-share op=le target=5.00 measured=-0.40 unit=pct status=PASS factor=n/a off_by=1.00 basis_mib=256",
            "report: bench-goal name=hypercalls-per-gib op=le target=2.00 measured=4.00 unit=x status=MISS factor=0.50 off_by=2.00 basis_mib=256",
            "report: bench-goal name=grant-batched-of-ceiling op=ge target=95.00 measured=85.69 unit=pct status=MISS factor=0.90 off_by=1.11 basis_mib=0",
            "report: bench-goal name=grant-library-share op=le target=5.00 measured=6.62 unit=pct status=MISS factor=0.76 off_by=1.32 basis_mib=0",
            "report: bench-goal name=foreign-unmap-vs-map op=le target=1.20 measured=1.10 unit=x status=PASS factor=1.09 off_by=1.00 basis_mib=0",
        ];
        for l in lines {
            logs.by_source
                .entry(Source::D0)
                .or_default()
                .push(Level::Info, l);
        }
        let res = BootResult {
            exit: Exit::Pass,
            logs,
            warnings: vec![],
            qemu_stderr: vec![],
            log_path: PathBuf::from("x.log"),
            elapsed: Duration::from_secs(3),
            xen_views: vec![],
            xen_view_asked: false,
        };
        let files = Files {
            elf: 2 << 20,
            image: 300 << 10,
        };
        let md = render(&[(b, res, files)], None, Duration::from_secs(9));
        assert!(md.contains("| x86_64-dom0 | xenmem | 18 | 4096 | 2 | 4.00 | 1.0 | 0.5 | 1.5 (x1.10) | 341.33 | 1.00 (x1.00) | 1.00 | 1.00 |"), "{md}");
        assert!(md.contains("| x86_64-dom0 | 256 | 300.0 (x1.01) |"), "{md}");
        assert!(
            md.contains("- x86_64-dom0: skipped (needs a privileged domain)"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 1 | batched | 1024 | 1 | 16.9 (x1.70) | 60688 | 16.5 | 20.7 | 5.23 (x1.91) |"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 1024 | 1 | 15.8 | 16.9 | 15.8 | 16.9 | 6.62 | 6.62 | 16.5 | 20.7 | 4.76 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| x86_64-dom0 | xenmem | 0.9 | 0.4 | 1.0 | 0.5 | 1.2 | 0.1 | 19.23 | 15.38 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | linux (plain engine) | 0.9 | 0.4 | 0.8 | 0.5 | 1.2 | 0.0 | 3.85 | -3.85 |"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 1024 | 5 | 5.24 | 4.49 | 85.69 |"),
            "{md}"
        );
        // The goals of issue 14, percentages with their unit; a negative
        // share passes with no factor.
        assert!(
            md.contains("| x86_64-dom0 | engine-share | 256 MiB | ≤ 5.00% | -0.40% | PASS |"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | grant-batched-of-ceiling | - | ≥ 95.00% | 85.69% | MISS (off by x1.11) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| x86_64-dom0 | grant-library-share | - | ≤ 5.00% | 6.62% | MISS (off by x1.32) |"
            ),
            "{md}"
        );
        assert!(
            !md.contains("balloon-vs-"),
            "no goal against a strategy: {md}"
        );
        assert!(
            md.contains("Xen's map time ≈ 65.2 µs per hypercall + 15.4 µs per grant"),
            "{md}"
        );
        assert!(md.contains("= 5.23x over one grant per hypercall"), "{md}");
        assert!(
            md.contains("| x86_64-dom0 | 1024 | 5 | 5.24 | 4.49 | 85.69 | 5.20 | 4.40 | 84.10 |"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 1024 | 1 | 15.8 | 16.9 | 15.8 | 16.9 | 6.62 | 6.62 |"),
            "{md}"
        );
        assert!(md.contains("- x86_64-dom0: map: library − Xen-only = 1.05 ms (1.02 µs/grant), page tables 0.51 ms (0.50 µs/grant), the rest 0.54 ms; unmap: library − Xen-only = 4.19 ms, page tables 0.26 ms (15 repetitions)"), "{md}");
        assert!(md.contains("- x86_64-dom0: domain 1, 1024 granted pages + 4096 pages for table 4 (order 9 extents), 3 grant-table frames; set-up 186.2 ms, teardown 84.2 ms; destroyed: yes, region table restored: yes"), "{md}");
        assert!(
            md.contains("| x86_64-dom0 | 1 (helper) | 4096 | 4096 | 1 | 87.5 (x1.52) | 21368 | 3.86 (x1.78) | 255.8 | 96.3 (x1.04) (32 calls) | 1.10 (x1.20) |"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 16 | 256 | mapped | 96.0 (x1.02) | 23437 |"),
            "{md}"
        );
        // 80 µs a frame one per multicall, 20 µs a frame 128 per multicall:
        // 60 µs per multicall + 20 µs per frame.
        assert!(
            md.contains("unmap time ≈ 60.0 µs per multicall + 20.0 µs per frame (Xen's removal and the multicall's own work per entry); add_to_physmap_batch: 21.4 µs per frame (0.94x)"),
            "{md}"
        );
        // (83.84 - 41.0) ms / 4096 frames.
        assert!(
            md.contains("take 10.0 µs per frame, so taking the entry out of the p2m is 10.5 µs per frame of the 20.5"),
            "{md}"
        );
        assert!(
            md.contains("| x86_64-dom0 | 128 | 32 | nothing (ENOENT) | 41.0 (x1.01) | 10009 |"),
            "{md}"
        );
        assert!(md.contains("is ≥ 0.94 (measured 1.10)"), "{md}");
        assert!(
            md.contains("| x86_64-dom0 | foreign-unmap-vs-map | - | ≤ 1.20 | 1.10 | PASS (x1.09 to spare) |"),
            "{md}"
        );
        assert!(
            md.contains("map time ≈ 69.3 µs per hypercall + 21.4 µs per frame"),
            "{md}"
        );
        assert!(md.contains("1.00 MiB (25.0% of the heap)"), "{md}");
        assert!(md.contains("MISS (off by x2.00)"), "{md}");
        assert!(
            md.contains("- x86_64-dom0 hypercalls-per-gib: MISS"),
            "{md}"
        );
    }

    #[test]
    fn fits_per_call_and_per_op_costs() {
        // 1024 ops: 10 µs a call + 2 µs an op.
        let rows = [
            (1024, 1024.0 * 12.0),
            (16, 160.0 + 2048.0),
            (1, 10.0 + 2048.0),
        ];
        let (h, p) = fit(&rows, 1024).unwrap();
        assert!((h - 10.0).abs() < 1e-9 && (p - 2.0).abs() < 1e-9, "{h} {p}");
        assert_eq!(fit(&rows[..1], 1024), None, "one row");
        assert_eq!(fit(&[(1, 5.0), (4, 1.0)], 4), None, "wrong order");
        assert_eq!(fit(&rows, 0), None);
    }

    #[test]
    fn counts_table_bytes() {
        let per = table_bytes_per_region(1000);
        let region = std::mem::size_of::<xenmem::region::Region>() as f64;
        assert!(per > region && per < 4.0 * region, "{per}");
    }
}
