//! `cargo xtask`: the host runner for the xenmem agent.
//!
//! - `cargo xtask setup`: install/download what boots need (QEMU, dtc, Xen).
//! - `cargo xtask run [--arch x86_64|aarch64] [--mode dom0|domu|both] [--quiet]
//!   [--timeout SECS] [-- agent options...]`: build, boot, show the decoded log,
//!   exit 0 iff the agent passed.
//! - `cargo xtask run --toolstack xl [--arch ...] [--memory MiB] [--maxmem MiB]
//!   [--step STEP]... [--quiet] [--timeout SECS] [-- agent options...]`: the
//!   same with the agent as a domU made by `xl create` in a Linux dom0 (the xl
//!   rig, `rig.rs`), optionally driven by toolstack steps.
//! - `cargo xtask test [--only NAME]... [--no-host-tests] [--verbose]
//!   [--timeout SECS]`: host tests, then every boot scenario.
//! - `cargo xtask bench [--only NAME]... [--out FILE] [--verbose]
//!   [--timeout SECS]`: benchmark boots on both architectures and the host
//!   region-table benchmark, printed as markdown tables.
//! - `cargo xtask fuzz [--time SECS] [TARGET]...` / `--smoke`: build the
//!   libFuzzer targets of `fuzz/` on stable and run each for SECS seconds,
//!   or the smoke run `test` makes (`fuzz.rs`).

mod agent;
mod bench;
mod bench_grants;
mod boot;
mod cpio;
mod decode;
#[cfg(test)]
mod defmt_frames;
mod dtb;
mod fuzz;
mod highmem;
mod image;
mod mutants;
mod peer;
mod report;
mod rig;
mod scenarios;
mod setup;
mod stub;
mod tamper;
mod util;
mod xenview;
mod xl_scenarios;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use defmt_decoder::Table;

use crate::agent::Agent;
use crate::boot::{Arch, BootSpec, Mode, Show};
use crate::setup::Env;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup                     install QEMU and dtc if missing, fetch Xen 4.17 images
  run [options] [-- agent options...]
                            build the agent, boot it under QEMU + Xen, show its log;
                            exit 0 iff its verdict is pass
      --arch x86_64|aarch64 (default x86_64)
      --mode dom0|domu|both (default dom0; domu and both are aarch64-only)
      --quiet               hide Xen's own lines, keep the agents'
      --timeout SECS        kill QEMU after SECS seconds (default 120; 300 with xl)
      --toolstack xl        boot a Linux dom0 with Xen's toolstack instead and make the
                            agent a domU with `xl create` (options `exit=shutdown`, and on
                            aarch64 `domid=<its domid>`, are added); exit 0 iff the domain
                            powered off and the agent's verdict is pass
      --memory MiB          with --toolstack xl: the domU's memory (default 64)
      --maxmem MiB          with --toolstack xl: its maxmem (default: = memory)
      --cpus 1|2            with --toolstack xl: QEMU's CPUs (default 1); with 2, dom0
                            is pinned to CPU 0 and the domU gets CPU 1 (cpus=\"1\")
      --step STEP           with --toolstack xl: a toolstack step dom0 runs while the
                            domain exists, in order (repeatable); each prints an
                            `xmrig: KIND step=K ...` record:
                              mem-set=MIB          xl mem-set (memory/target, max_pages)
                              wait-mib=MIB[:SECS]  poll xl list until Mem is MIB (20 s)
                              pages                Xen's page count now (debug key q)
                              cpu                  the domain's CPU seconds (xl list)
                              sleep=SECS           wait (0.1 s resolution)
                              xs-read=PATH         xenstore-read /local/domain/N/PATH
                              xs-write=PATH=VALUE  xenstore-write (VALUE may be empty)
                              shutdown, reboot     xl shutdown / xl reboot: 5 s for the
                                                   guest to acknowledge, then left pending
                              destroy              xl destroy now (the run then fails)
                              unpause              xl unpause: the steps before it see
                                                   the domain still paused (without it
                                                   the domain is unpaused first)
                            the domain's bound (60 s) grows by the steps' waits and sleeps
  test [options]            cargo test --workspace and a smoke run of every fuzz target
                            (10 s each), then every boot scenario (the agent's, the xl
                            rig's, and x86_64-stub / aarch64-stub: examples/stub) and
                            every mutant (mutant-NAME: a broken agent its scenario,
                            bare or xl, must fail)
      --only NAME           run only scenarios whose name contains NAME (repeatable)
      --no-host-tests       skip cargo test --workspace and the fuzz smoke run
      --verbose             stream every boot's console
      --timeout SECS        per boot (default 120)
  bench [options]           boot the agent in benchmark mode (x86_64 dom0, aarch64 domU,
                            aarch64 dom0 + domU) and run the host region-table benchmark;
                            print markdown tables and goals; exit non-zero only if a boot fails
      --only NAME           only boots whose name contains NAME, `xl-balloon`, `xl-grants`,
                            `image-size` (the stub's and the agent's images against their
                            size goals) or `host` (repeatable)
      --out FILE            also write the markdown to FILE
      --verbose             stream every boot's console
      --timeout SECS        per boot (default 900)
  fuzz [--time SECS] [TARGET]...
                            build the libFuzzer targets of fuzz/ with stable cargo and run
                            each (default: all of fdt, memmap, cmdline, region, reservation,
                            decode) for SECS seconds (default 60); corpus target/fuzz-corpus/,
                            failing inputs target/fuzz-artifacts/, output target/fuzz-logs/;
                            exit non-zero on any crash, hang or OOM, naming the reproducer
  fuzz --smoke              only the smoke run that `test` makes (every target, 10 s)

environment: XENMEM_QEMU_X86_64, XENMEM_QEMU_AARCH64, XENMEM_DTC (tool paths),
  XENMEM_XEN_X86_64, XENMEM_XEN_AARCH64 (Xen images), XENMEM_CACHE (download cache,
  default ~/.cache/xenmem), XENMEM_RIG_SELFTEST=1 (run --toolstack xl: first check dom0's
  console forwarder with a fake guest log)";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an agent waits at each `xen-view` pause for the runner's answer
/// (a few seconds are enough under TCG; the bound only ends a broken run).
const XEN_VIEW_WAIT_SECS: u32 = 30;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<ExitCode> {
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match cmd.as_str() {
        "setup" => {
            if !rest.is_empty() {
                bail!("setup takes no options\n\n{USAGE}");
            }
            let env = setup::setup()?;
            print_env(&env);
            Ok(ExitCode::SUCCESS)
        }
        "run" => run(rest),
        "test" => test(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::fuzz(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn print_env(env: &Env) {
    println!("qemu-system-x86_64:  {}", env.qemu_x86_64.display());
    println!("qemu-system-aarch64: {}", env.qemu_aarch64.display());
    println!("dtc:                 {}", env.dtc.display());
    println!("xen (x86_64):        {}", env.xen_x86_64.display());
    println!("xen (aarch64):       {}", env.xen_aarch64.display());
}

/// Pull `--name VALUE` / `--name=VALUE` off the front of `args`.
fn value<'a>(
    flag: &str,
    arg: &'a str,
    it: &mut impl Iterator<Item = &'a String>,
) -> Result<Option<&'a str>> {
    if arg == flag {
        return it
            .next()
            .map(|v| Some(v.as_str()))
            .with_context(|| format!("{flag} needs a value"));
    }
    Ok(arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')))
}

fn parse_timeout(v: &str) -> Result<Duration> {
    let secs: u64 = v
        .parse()
        .with_context(|| format!("--timeout {v}: not a number of seconds"))?;
    if secs == 0 {
        bail!("--timeout must be at least 1 second");
    }
    Ok(Duration::from_secs(secs))
}

/// How `cargo xtask test` boots scenario `s` (log and work directory named
/// `name`): its options, and every agent paused for Xen's own view.
fn scenario_spec(s: &scenarios::Scenario, t: &TestArgs, name: &str) -> BootSpec {
    BootSpec {
        arch: s.arch,
        mode: s.mode,
        agent_opts: s
            .agent_opts
            .iter()
            .map(|o| o.to_string())
            .chain([format!("xen-view={XEN_VIEW_WAIT_SECS}")])
            .collect(),
        timeout: t.timeout,
        log_path: logs_dir().join(format!("test-{name}.log")),
        work_dir: work_dir(&format!("test-{name}")),
        show: if t.verbose { Show::All } else { Show::Nothing },
    }
}

/// [`scenarios::image_against_elf`] with the booted agent's ELF.
fn image_against_elf(
    s: &scenarios::Scenario,
    res: &boot::BootResult,
    agent: &Agent,
) -> Vec<String> {
    match image::load_span(&agent.elf) {
        Ok(span) => scenarios::image_against_elf(&s.checks, &res.logs, s.arch, span),
        Err(e) => vec![format!("the agent ELF's loaded span: {e:#}")],
    }
}

fn logs_dir() -> PathBuf {
    agent::target_dir().join("xenmem-logs")
}

fn work_dir(name: &str) -> PathBuf {
    agent::target_dir().join("xenmem-work").join(name)
}

struct RunArgs {
    arch: Arch,
    mode: Mode,
    quiet: bool,
    /// `--timeout`, if given (the default depends on the toolstack).
    timeout: Option<Duration>,
    opts: Vec<String>,
    /// `--toolstack xl`: the agent as an xl-created domU.
    xl: bool,
    memory_mib: u64,
    maxmem_mib: Option<u64>,
    /// `--step`s, in order.
    steps: Vec<rig::XlStep>,
    /// `--cpus`: the rig's physical CPUs (see [`rig::XlSpec::cpus`]).
    cpus: u32,
}

impl RunArgs {
    /// The one job of `run --toolstack xl`.
    fn xl_job(&self) -> rig::XlJob {
        let mut opts = Vec::new();
        if self.arch == Arch::Aarch64 {
            // Nothing else tells an Arm domU its domid.
            opts.push(format!("domid={}", rig::DOMID_PLACEHOLDER));
        }
        opts.push("exit=shutdown".to_string());
        opts.extend(self.opts.iter().cloned());
        let mut job = rig::XlJob {
            maxmem_mib: self.maxmem_mib,
            steps: self.steps.clone(),
            ..rig::XlJob::new("xenmem-agent", self.memory_mib, opts)
        };
        if self.cpus > 1 {
            job.extra_cfg.push(rig::OWN_CPU_CFG.to_string());
        }
        if !job.steps.is_empty() {
            // The steps' waits on top of the usual bound, within the boot's.
            let boot = self.timeout.unwrap_or(rig::DEFAULT_TIMEOUT);
            job.timeout = Some((rig::DEFAULT_JOB_TIMEOUT + job.step_time()).min(boot));
        }
        job
    }
}

fn parse_mib(flag: &str, v: &str) -> Result<u64> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} {v}: not a positive number of MiB"),
    }
}

fn parse_run(args: &[String]) -> Result<RunArgs> {
    let mut r = RunArgs {
        arch: Arch::X86_64,
        mode: Mode::Dom0,
        quiet: false,
        timeout: None,
        opts: Vec::new(),
        xl: false,
        memory_mib: 64,
        maxmem_mib: None,
        steps: Vec::new(),
        cpus: 1,
    };
    let mut mode_given = false;
    let mut xl_only_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            r.opts.extend(it.by_ref().cloned());
        } else if a == "--quiet" || a == "-q" {
            r.quiet = true;
        } else if let Some(v) = value("--arch", a, &mut it)? {
            r.arch = Arch::parse(v)?;
        } else if let Some(v) = value("--mode", a, &mut it)? {
            r.mode = Mode::parse(v)?;
            mode_given = true;
        } else if let Some(v) = value("--timeout", a, &mut it)? {
            r.timeout = Some(parse_timeout(v)?);
        } else if let Some(v) = value("--toolstack", a, &mut it)? {
            match v {
                "xl" => r.xl = true,
                "none" => r.xl = false,
                _ => bail!("--toolstack {v}: only `xl` (or `none`, the default)"),
            }
        } else if let Some(v) = value("--memory", a, &mut it)? {
            r.memory_mib = parse_mib("--memory", v)?;
            xl_only_given = true;
        } else if let Some(v) = value("--maxmem", a, &mut it)? {
            r.maxmem_mib = Some(parse_mib("--maxmem", v)?);
            xl_only_given = true;
        } else if let Some(v) = value("--cpus", a, &mut it)? {
            r.cpus = match v {
                "1" => 1,
                "2" => 2,
                _ => bail!("--cpus {v}: 1 or 2"),
            };
            xl_only_given = true;
        } else if let Some(v) = value("--step", a, &mut it)? {
            r.steps.push(rig::XlStep::parse(v).context("--step")?);
            xl_only_given = true;
        } else {
            bail!("run: unknown option `{a}` (agent options go after `--`)\n\n{USAGE}");
        }
    }
    // Refuse bad options before any slow step.
    if r.xl {
        if mode_given {
            bail!("--mode does not go with --toolstack xl (the agent is one xl-made domU)");
        }
        rig::render_jobs(&[r.xl_job()], rig::DEFAULT_JOB_TIMEOUT, false)?;
    } else {
        if xl_only_given {
            bail!("--memory, --maxmem and --step go with --toolstack xl only");
        }
        boot::agent_cmdlines(r.arch, r.mode, &r.opts)?;
    }
    Ok(r)
}

fn run(args: &[String]) -> Result<ExitCode> {
    let r = parse_run(args)?;
    if r.xl {
        return run_xl(&r);
    }
    let env = setup::setup()?;
    let agent = agent::build(r.arch)?;
    let table = decode::load_table(&agent.elf)
        .with_context(|| format!("decoding needs {}", agent.elf_path.display()))?;
    let name = format!("{}-{}", r.arch, r.mode);
    let spec = BootSpec {
        arch: r.arch,
        mode: r.mode,
        agent_opts: r.opts,
        timeout: r.timeout.unwrap_or(DEFAULT_TIMEOUT),
        log_path: logs_dir().join(format!("{name}.log")),
        work_dir: work_dir(&name),
        show: if r.quiet { Show::Agents } else { Show::All },
    };
    let res = boot::boot(&env, &spec, &agent, &table)?;
    let passed = res.passed(r.mode);
    eprintln!(
        "xtask: {} {}: {}",
        if passed { "PASS" } else { "FAIL" },
        name,
        res.summary(r.mode)
    );
    if passed {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("log: {}", res.log_path.display());
        Ok(ExitCode::FAILURE)
    }
}

/// `run --toolstack xl`: one xl-made domU with the agent.
fn run_xl(r: &RunArgs) -> Result<ExitCode> {
    let env = setup::setup()?;
    let agent = agent::build(r.arch)?;
    let table = decode::load_table(&agent.elf)
        .with_context(|| format!("decoding needs {}", agent.elf_path.display()))?;
    let name = format!("{}-xl", r.arch);
    let timeout = r.timeout.unwrap_or(rig::DEFAULT_TIMEOUT);
    let spec = rig::XlSpec {
        arch: r.arch,
        jobs: vec![r.xl_job()],
        job_timeout: rig::DEFAULT_JOB_TIMEOUT.min(timeout),
        timeout,
        show: if r.quiet { Show::Agents } else { Show::All },
        log_path: logs_dir().join(format!("{name}.log")),
        work_dir: work_dir(&name),
        forwarder_selftest: std::env::var_os("XENMEM_RIG_SELFTEST").is_some_and(|v| v == "1"),
        cpus: r.cpus,
    };
    let res = rig::boot_xl(&env, &spec, &agent, &table)?;
    let job = res
        .job(&spec.jobs[0].name)
        .context("internal error: the job's result is missing")?;
    let show = |r: &Option<rig::Record>| r.as_ref().map_or("-".to_string(), |r| r.to_string());
    eprintln!(
        "xtask: xl list, made paused:   {}",
        show(&job.xl_list_created)
    );
    eprintln!(
        "xtask: xl list at shutdown:    {}",
        show(&job.xl_list_shutdown)
    );
    eprintln!("xtask: Xen's pages:            {}", show(&job.xen_pages));
    for (k, st) in r.steps.iter().enumerate() {
        let k = k.to_string();
        let recs: Vec<String> = job
            .steps
            .iter()
            .filter(|x| x.get("step") == Some(k.as_str()))
            .map(|x| x.to_string())
            .collect();
        eprintln!(
            "xtask: step {k} {st}: {}",
            if recs.is_empty() {
                "no record".to_string()
            } else {
                recs.join(" / ")
            }
        );
    }
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    eprintln!(
        "xtask: dom0 ready {}; xl create {}; create to first line {}; whole boot {:.1} s",
        secs(res.dom0_ready),
        secs(job.create_time),
        secs(job.first_line_after),
        res.elapsed.as_secs_f64()
    );
    let verdict = job
        .domid
        .and_then(|d| u16::try_from(d).ok())
        .and_then(|d| res.logs.get(decode::Source(d)).verdict());
    let mut why = Vec::new();
    if res.end != rig::XlEnd::Done {
        why.push(res.end.to_string());
    }
    match job.reason() {
        Some("poweroff") => {}
        Some(other) => why.push(format!("the domain shut down with reason {other}")),
        None if job.timed_out => why.push("the domain did not shut down in time".into()),
        None => why.push("the domain did not shut down".into()),
    }
    if verdict != Some(report::Verdict::Pass) {
        why.push(match verdict {
            Some(v) => format!("the agent's verdict is {v}"),
            None => "the agent printed no verdict".into(),
        });
    }
    for p in &res.problems {
        eprintln!("xtask: warning: {p}");
    }
    if spec.forwarder_selftest {
        let got = res
            .console
            .get(&rig::SELFTEST_DOMID)
            .cloned()
            .unwrap_or_default();
        if got == rig::SELFTEST_LINES {
            eprintln!(
                "xtask: console forwarder self-test: {} lines intact",
                got.len()
            );
        } else {
            why.push(format!(
                "console forwarder self-test: expected {:?}, got {got:?}",
                rig::SELFTEST_LINES
            ));
        }
    }
    if let (Some(start), Some(after)) = (res.free_at_start_mib(), job.free_after_mib) {
        eprintln!("xtask: Xen's free memory: {start} MiB before create, {after} MiB after destroy");
    }
    if why.is_empty() {
        eprintln!("xtask: PASS {name}: powered off, verdict PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: FAIL {name}: {}", why.join("; "));
        if !res.qemu_stderr.is_empty() {
            eprintln!("QEMU said: {}", res.qemu_stderr.join("\n"));
        }
        if let Some(w) = res.warnings.first() {
            eprintln!(
                "note: {} decoding warning(s), first: {w}",
                res.warnings.len()
            );
        }
        eprintln!("log: {}", res.log_path.display());
        Ok(ExitCode::FAILURE)
    }
}

/// The xl scenarios of one architecture: one rig boot that creates a domU
/// per scenario, each then evaluated on its own.
fn xl_boot(
    env: &Env,
    arch: Arch,
    these: &[&xl_scenarios::XlScenario],
    agent: &Agent,
    table: &Table,
    t: &TestArgs,
    tally: &mut Tally,
) {
    let name = format!("test-{arch}-xl");
    // The rig's usual bound, plus what every scenario's steps may wait.
    let timeout = t.timeout.max(rig::DEFAULT_TIMEOUT)
        + these.iter().map(|s| s.steps_time()).sum::<Duration>();
    let spec = rig::XlSpec {
        arch,
        jobs: these.iter().map(|s| s.job()).collect(),
        job_timeout: rig::DEFAULT_JOB_TIMEOUT,
        timeout,
        show: if t.verbose { Show::All } else { Show::Nothing },
        log_path: logs_dir().join(format!("{name}.log")),
        work_dir: work_dir(&name),
        forwarder_selftest: false,
        cpus: 1,
    };
    if t.verbose {
        println!("xtask: xl rig for {arch}: {} domU(s)", these.len());
    }
    let names: Vec<&str> = these.iter().map(|s| s.name).collect();
    let Some(res) = xl_rig(env, &spec, (agent, table), &[], &names, "", tally) else {
        return;
    };
    for s in these {
        let mut failures = xl_scenarios::evaluate(s, &res);
        // What the runner found wrong with the boot as a whole (a domid other
        // than predicted, a Xen page count dom0 misread, dom0 gave up).
        failures.extend(res.problems.iter().map(|p| format!("rig: {p}")));
        if !failures.is_empty() {
            if res.end != rig::XlEnd::Done {
                failures.push(format!("rig: {}", res.end));
            }
            if let Some(w) = res.warnings.first() {
                failures.push(format!(
                    "note: {} decoding warning(s), first: {w}",
                    res.warnings.len()
                ));
            }
        }
        // Every check can fail (see `tamper`).
        let tampered = failures.is_empty().then(|| tamper::xl(s, &res));
        if let Some(t) = &tampered {
            failures.extend(t.unfailing.iter().cloned());
        }
        let job = res.job(s.name);
        if failures.is_empty() {
            let words: Vec<String> = job
                .and_then(|j| j.create_time)
                .map(|d| format!("xl create {:.1} s", d.as_secs_f64()))
                .into_iter()
                .chain(tampered.map(|t| t.summary()))
                .collect();
            tally.pass(s.name, &format!(" ({})", words.join("; ")));
        } else {
            tally.fail(s.name, &failures, Some(&res.log_path));
        }
    }
}

/// Boot the xl rig for `spec` and say how it went; if it could not boot,
/// fail every test of `names` and return `None`.
fn xl_rig(
    env: &Env,
    spec: &rig::XlSpec,
    (agent, table): (&Agent, &Table),
    variants: &[rig::AgentVariant<'_>],
    names: &[&str],
    what: &str,
    tally: &mut Tally,
) -> Option<rig::XlResult> {
    let res = match rig::boot_xl_with(env, spec, agent, table, variants) {
        Ok(r) => r,
        Err(e) => {
            for n in names {
                tally.fail(n, &[format!("the xl rig: {e:#}")], Some(&spec.log_path));
            }
            return None;
        }
    };
    println!(
        "xtask: xl rig {}{what}: {} after {:.1} s (dom0 ready {})",
        spec.arch,
        res.end,
        res.elapsed.as_secs_f64(),
        res.dom0_ready
            .map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    Some(res)
}

/// The xl mutants of one architecture ([`mutants::xl`]): one more rig boot
/// in which each is a domU of its own, booted from its own build and named
/// `mutant-NAME`, checked as its scenario is; `mutant-NAME` passes only if
/// one of the failures has the mutant's `caught_by`.
/// Agents built in this run, one per architecture, or why not.
type BuiltAgents = HashMap<&'static str, Result<(Agent, Table), String>>;

/// The agent for `arch` (`mutant`: that variant, see
/// [`agent::build_variant`]) with its defmt table, built once per run and
/// kept in `cache`.
fn built_agent<'a>(
    cache: &'a mut BuiltAgents,
    arch: Arch,
    mutant: Option<&str>,
) -> &'a Result<(Agent, Table), String> {
    cache.entry(arch.triple()).or_insert_with(|| {
        agent::build_variant(arch, mutant)
            .and_then(|a| decode::load_table(&a.elf).map(|t| (a, t)))
            .map_err(|e| format!("{e:#}"))
    })
}

#[allow(clippy::too_many_arguments)]
fn xl_mutant_boot(
    env: &Env,
    arch: Arch,
    these: &[&mutants::Mutant],
    agent: &Agent,
    table: &Table,
    runtime: (&Agent, &Table),
    t: &TestArgs,
    tally: &mut Tally,
) {
    let scenarios = xl_scenarios::all();
    let name = format!("test-{arch}-xl-mutants");
    let work = work_dir(&name);
    // Each mutant's scenario, renamed after it; all run the one mutant
    // build of the architecture (`agent::RUNTIME_MUTANT`, the rig's variant
    // image), each told which mutant it is by `mutant=NAME`.
    let mut ready = Vec::new();
    for m in these {
        let name = format!("mutant-{}", m.name);
        let Some(s) = scenarios.iter().find(|s| s.name == m.scenario) else {
            tally.fail(&name, &[format!("no xl scenario {}", m.scenario)], None);
            continue;
        };
        let mut s = s.clone();
        s.name = Box::leak(name.into_boxed_str());
        ready.push((*m, s));
    }
    if ready.is_empty() {
        return;
    }
    let timeout = t.timeout.max(rig::DEFAULT_TIMEOUT)
        + ready.iter().map(|(_, s)| s.steps_time()).sum::<Duration>();
    let jobs = ready
        .iter()
        .map(|(m, s)| {
            let mut j = s.job();
            j.extra_cfg
                .push(rig::variant_cfg(arch, agent::RUNTIME_MUTANT));
            j.agent_opts.push(format!("mutant={}", m.name));
            j
        })
        .collect();
    let spec = rig::XlSpec {
        arch,
        jobs,
        job_timeout: rig::DEFAULT_JOB_TIMEOUT,
        timeout,
        show: if t.verbose { Show::All } else { Show::Nothing },
        log_path: logs_dir().join(format!("{name}.log")),
        work_dir: work,
        forwarder_selftest: false,
        cpus: 1,
    };
    let variants = [rig::AgentVariant {
        name: agent::RUNTIME_MUTANT,
        agent: runtime.0,
        table: runtime.1,
    }];
    let names: Vec<&str> = ready.iter().map(|(_, s)| s.name).collect();
    let Some(res) = xl_rig(
        env,
        &spec,
        (agent, table),
        &variants,
        &names,
        " (mutants)",
        tally,
    ) else {
        return;
    };
    for (m, s) in &ready {
        let mut failures = xl_scenarios::evaluate(s, &res);
        failures.extend(res.problems.iter().map(|p| format!("rig: {p}")));
        // From `creating` to the last record that names the job.
        let at: Vec<Duration> = res
            .records
            .iter()
            .filter(|r| r.get("name") == Some(s.name))
            .map(|r| r.at)
            .collect();
        let secs = match (at.first(), at.last()) {
            (Some(a), Some(b)) => format!(", {:.1} s", (*b - *a).as_secs_f64()),
            _ => String::new(),
        };
        if let Some(f) = failures.iter().find(|f| f.contains(m.caught_by)) {
            tally.pass(
                s.name,
                &format!(
                    " (caught by {}: {} failure(s){secs})\n  - {f}",
                    m.scenario,
                    failures.len()
                ),
            );
        } else {
            let mut why = vec![format!(
                "survived: {} ({}) was not caught by {} (wanted a failure with `{}`)",
                m.name, m.what, m.scenario, m.caught_by
            )];
            why.extend(failures.into_iter().map(|f| format!("it failed only: {f}")));
            tally.fail(s.name, &why, Some(&res.log_path));
        }
    }
}

struct TestArgs {
    only: Vec<String>,
    host_tests: bool,
    verbose: bool,
    timeout: Duration,
}

fn parse_test(args: &[String]) -> Result<TestArgs> {
    let mut t = TestArgs {
        only: Vec::new(),
        host_tests: true,
        verbose: false,
        timeout: DEFAULT_TIMEOUT,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--no-host-tests" {
            t.host_tests = false;
        } else if a == "--verbose" || a == "-v" {
            t.verbose = true;
        } else if let Some(v) = value("--only", a, &mut it)? {
            t.only.push(v.to_string());
        } else if let Some(v) = value("--timeout", a, &mut it)? {
            t.timeout = parse_timeout(v)?;
        } else {
            bail!("test: unknown option `{a}`\n\n{USAGE}");
        }
    }
    Ok(t)
}

/// Counts of the items `cargo xtask test` ran.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn pass(&mut self, name: &str, detail: &str) {
        self.passed += 1;
        println!("PASS {name}{detail}");
    }

    fn fail(&mut self, name: &str, reasons: &[String], log: Option<&PathBuf>) {
        self.failed += 1;
        println!("FAIL {name}");
        for r in reasons {
            for (i, line) in r.lines().enumerate() {
                println!("  {}{line}", if i == 0 { "- " } else { "  " });
            }
        }
        if let Some(l) = log {
            println!("  log: {}", l.display());
        }
    }
}

fn test(args: &[String]) -> Result<ExitCode> {
    let t = parse_test(args)?;
    let wanted = |name: &str| t.only.is_empty() || t.only.iter().any(|o| name.contains(o.as_str()));
    let scenarios: Vec<_> = scenarios::all()
        .into_iter()
        .chain(highmem::scenarios())
        .filter(|s| wanted(s.name))
        .collect();
    let xl: Vec<_> = xl_scenarios::all()
        .into_iter()
        .filter(|s| wanted(s.name))
        .collect();
    let stubs: Vec<_> = stub::scenarios()
        .into_iter()
        .filter(|s| wanted(s.name))
        .collect();
    let mutants: Vec<_> = mutants::all()
        .into_iter()
        .filter(|m| wanted(&format!("mutant-{}", m.name)))
        .collect();
    let xl_mutants: Vec<_> = mutants::xl()
        .into_iter()
        .filter(|m| wanted(&format!("mutant-{}", m.name)))
        .collect();
    if scenarios.is_empty()
        && xl.is_empty()
        && stubs.is_empty()
        && mutants.is_empty()
        && xl_mutants.is_empty()
    {
        bail!("no scenario matches {:?}", t.only);
    }
    let mut tally = Tally::default();

    let env = match setup::setup() {
        Ok(e) => Some(e),
        Err(e) => {
            tally.fail("setup", &[format!("{e:#}")], None);
            None
        }
    };

    if t.host_tests {
        println!("xtask: cargo test --workspace");
        let status = agent::cargo()
            .args(["test", "--workspace"])
            .stdin(std::process::Stdio::null())
            .status()
            .context("running cargo test --workspace")?;
        if status.success() {
            tally.pass("host-tests", " (cargo test --workspace)");
        } else {
            tally.fail(
                "host-tests",
                &[format!(
                    "cargo test --workspace failed ({status}); see its output above"
                )],
                None,
            );
        }
        for (name, r) in fuzz::smoke() {
            match r {
                Ok(detail) => tally.pass(&name, &detail),
                Err(why) => tally.fail(&name, &why, None),
            }
        }
    }

    let mut agents = BuiltAgents::new();
    for s in &scenarios {
        let Some(env) = &env else {
            tally.fail(s.name, &["set-up failed (see above)".into()], None);
            continue;
        };
        let built = built_agent(&mut agents, s.arch, None);
        let (agent, table) = match built {
            Ok(at) => (&at.0, &at.1),
            Err(e) => {
                tally.fail(s.name, &[format!("agent build failed: {e}")], None);
                continue;
            }
        };
        let spec = scenario_spec(s, &t, s.name);
        if t.verbose {
            println!("xtask: scenario {}", s.name);
        }
        let machine = highmem::machine(s.name).unwrap_or_default();
        match boot::boot_on(env, &spec, agent, table, &machine) {
            Ok(res) => {
                let mut failures = scenarios::evaluate(s, &res);
                let log = std::fs::read_to_string(&res.log_path).unwrap_or_default();
                failures.extend(highmem::evaluate(s.name, &res, &log, &spec.work_dir));
                failures.extend(image_against_elf(s, &res, agent));
                if !failures.is_empty() {
                    if !res.qemu_stderr.is_empty() {
                        failures.push(format!("QEMU said: {}", res.qemu_stderr.join("\n")));
                    }
                    if let Some(w) = res.warnings.first() {
                        failures.push(format!(
                            "note: {} decoding warning(s), first: {w}",
                            res.warnings.len()
                        ));
                    }
                }
                // Every check can fail: each is run again on copies of this
                // run's evidence changed where it reads, and must fail.
                let tampered = failures
                    .is_empty()
                    .then(|| tamper::boot(&s.checks, &res.logs, &res.xen_views));
                if let Some(t) = &tampered {
                    failures.extend(t.unfailing.iter().cloned());
                }
                if failures.is_empty() {
                    let t = tampered.map_or(String::new(), |t| format!("; {}", t.summary()));
                    tally.pass(s.name, &format!(" ({:.1} s{t})", res.elapsed.as_secs_f64()));
                } else {
                    tally.fail(s.name, &failures, Some(&res.log_path));
                }
            }
            Err(e) => tally.fail(s.name, &[format!("{e:#}")], Some(&spec.log_path)),
        }
    }

    // The mutation tests: each broken agent must fail its scenario, through
    // the check meant to catch it.
    let mut mutant_agents = BuiltAgents::new();
    for m in &mutants {
        let name = format!("mutant-{}", m.name);
        let Some(env) = &env else {
            tally.fail(&name, &["set-up failed (see above)".into()], None);
            continue;
        };
        let Some(s) = scenarios::all()
            .into_iter()
            .chain(highmem::scenarios())
            .find(|s| s.name == m.scenario)
        else {
            tally.fail(&name, &[format!("no scenario {}", m.scenario)], None);
            continue;
        };
        // One build per architecture, each mutant chosen on its command line.
        let built = built_agent(&mut mutant_agents, m.arch, Some(agent::RUNTIME_MUTANT));
        let (agent, table) = match built {
            Ok(at) => (&at.0, &at.1),
            Err(e) => {
                tally.fail(&name, &[format!("mutant build failed: {e}")], None);
                continue;
            }
        };
        let mut spec = scenario_spec(&s, &t, &name);
        spec.agent_opts.push(format!("mutant={}", m.name));
        let machine = highmem::machine(s.name).unwrap_or_default();
        match boot::boot_on(env, &spec, agent, table, &machine) {
            Ok(res) => {
                let mut failures = scenarios::evaluate(&s, &res);
                let log = std::fs::read_to_string(&res.log_path).unwrap_or_default();
                failures.extend(highmem::evaluate(s.name, &res, &log, &spec.work_dir));
                failures.extend(image_against_elf(&s, &res, agent));
                if let Some(f) = failures.iter().find(|f| f.contains(m.caught_by)) {
                    tally.pass(
                        &name,
                        &format!(
                            " (caught by {} in {:.1} s: {} failure(s), the intended: {})",
                            s.name,
                            res.elapsed.as_secs_f64(),
                            failures.len(),
                            f.lines().next().unwrap_or_default()
                        ),
                    );
                } else {
                    let mut why = vec![format!(
                        "survived: {} ({}) was not caught by {} (wanted a failure with `{}`)",
                        m.name, m.what, s.name, m.caught_by
                    )];
                    why.extend(failures.into_iter().map(|f| format!("it failed only: {f}")));
                    tally.fail(&name, &why, Some(&res.log_path));
                }
            }
            Err(e) => tally.fail(&name, &[format!("{e:#}")], Some(&spec.log_path)),
        }
    }

    // The firmware-like stub (examples/stub): plain text lines, its own checks.
    match &env {
        Some(env) => {
            for (name, r) in stub::test_all(env, &stubs, t.timeout, t.verbose) {
                match r {
                    Ok(o) if o.failures.is_empty() => {
                        tally.pass(name, &format!(" ({:.1} s)", o.elapsed.as_secs_f64()))
                    }
                    Ok(o) => tally.fail(name, &o.failures, Some(&o.log_path)),
                    Err(e) => tally.fail(name, &[format!("{e:#}")], None),
                }
            }
        }
        None => {
            for s in &stubs {
                tally.fail(s.name, &["set-up failed (see above)".into()], None);
            }
        }
    }

    for arch in [Arch::X86_64, Arch::Aarch64] {
        let these: Vec<&xl_scenarios::XlScenario> = xl.iter().filter(|s| s.arch == arch).collect();
        if these.is_empty() {
            continue;
        }
        let Some(env) = &env else {
            for s in &these {
                tally.fail(s.name, &["set-up failed (see above)".into()], None);
            }
            continue;
        };
        let built = built_agent(&mut agents, arch, None);
        let (agent, table) = match built {
            Ok(at) => (&at.0, &at.1),
            Err(e) => {
                for s in &these {
                    tally.fail(s.name, &[format!("agent build failed: {e}")], None);
                }
                continue;
            }
        };
        xl_boot(env, arch, &these, agent, table, &t, &mut tally);
    }

    // The xl rig's mutation tests: one more rig boot per architecture.
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let these: Vec<&mutants::Mutant> = xl_mutants.iter().filter(|m| m.arch == arch).collect();
        if these.is_empty() {
            continue;
        }
        let fail_all = |tally: &mut Tally, why: String| {
            for m in &these {
                tally.fail(
                    &format!("mutant-{}", m.name),
                    std::slice::from_ref(&why),
                    None,
                );
            }
        };
        let Some(env) = &env else {
            fail_all(&mut tally, "set-up failed (see above)".into());
            continue;
        };
        // The real agent is in every rig boot (`agent.elf`), if unused.
        let built = built_agent(&mut agents, arch, None);
        let runtime = built_agent(&mut mutant_agents, arch, Some(agent::RUNTIME_MUTANT));
        match (built, runtime) {
            (Ok((agent, table)), Ok((ra, rt))) => {
                xl_mutant_boot(env, arch, &these, agent, table, (ra, rt), &t, &mut tally)
            }
            (Err(e), _) => fail_all(&mut tally, format!("agent build failed: {e}")),
            (_, Err(e)) => fail_all(&mut tally, format!("mutant build failed: {e}")),
        }
    }

    println!(
        "xtask: counted {} scenario(s){}{}",
        scenarios.len() + xl.len() + stubs.len() + mutants.len() + xl_mutants.len(),
        if t.host_tests {
            " + the host test run and fuzz smoke runs"
        } else {
            ""
        },
        if env.is_none() { " + set-up" } else { "" }
    );
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_options() {
        let r = parse_run(&s(&[])).unwrap();
        assert_eq!((r.arch, r.mode, r.quiet), (Arch::X86_64, Mode::Dom0, false));
        let r = parse_run(&s(&[
            "--arch",
            "aarch64",
            "--mode=both",
            "--quiet",
            "--timeout",
            "30",
            "--",
            "a=1",
            "--b",
        ]))
        .unwrap();
        assert_eq!((r.arch, r.mode, r.quiet), (Arch::Aarch64, Mode::Both, true));
        assert_eq!(r.timeout, Some(Duration::from_secs(30)));
        assert_eq!(r.opts, ["a=1", "--b"]);
        assert!(!r.xl);
        assert!(parse_run(&s(&["--mode", "both"])).is_err()); // x86_64 is dom0 only
        assert!(parse_run(&s(&["--", "a=1,2"])).is_err());
        assert!(parse_run(&s(&["--arch"])).is_err());
        assert!(parse_run(&s(&["--timeout", "0"])).is_err());
        assert!(parse_run(&s(&["bogus=1"])).is_err());
    }

    #[test]
    fn run_options_xl() {
        let r = parse_run(&s(&["--toolstack", "xl", "--", "balloon=1M"])).unwrap();
        assert!(r.xl);
        assert_eq!((r.memory_mib, r.maxmem_mib, r.timeout), (64, None, None));
        let j = r.xl_job();
        assert_eq!(j.agent_opts, ["exit=shutdown", "balloon=1M"]);
        assert_eq!((j.name.as_str(), j.memory_mib), ("xenmem-agent", 64));
        let r = parse_run(&s(&[
            "--toolstack=xl",
            "--arch",
            "aarch64",
            "--memory",
            "32",
            "--maxmem=48",
            "-q",
            "--timeout",
            "100",
            "--",
            "a=1,2",
        ]))
        .unwrap();
        assert_eq!((r.memory_mib, r.maxmem_mib, r.quiet), (32, Some(48), true));
        assert_eq!(r.timeout, Some(Duration::from_secs(100)));
        assert_eq!(
            r.xl_job().agent_opts,
            ["domid=@DOMID@", "exit=shutdown", "a=1,2"]
        );
        assert!(parse_run(&s(&["--toolstack", "xl", "--mode", "both"])).is_err());
        assert!(parse_run(&s(&["--toolstack", "xm"])).is_err());
        assert!(parse_run(&s(&["--memory", "32"])).is_err()); // xl only
        assert!(parse_run(&s(&["--toolstack", "xl", "--memory", "0"])).is_err());
        assert!(parse_run(&s(&[
            "--toolstack",
            "xl",
            "--memory",
            "64",
            "--maxmem",
            "32"
        ]))
        .is_err());
        assert!(parse_run(&s(&["--toolstack", "xl", "--", "a\"b"])).is_err());
    }

    #[test]
    fn run_options_xl_steps() {
        let r = parse_run(&s(&[
            "--toolstack",
            "xl",
            "--step",
            "mem-set=48",
            "--step=wait-mib=48:5",
            "--step",
            "unpause",
        ]))
        .unwrap();
        let j = r.xl_job();
        assert_eq!(
            j.steps,
            [
                rig::XlStep::MemSet(48),
                rig::XlStep::WaitMib {
                    mib: 48,
                    timeout: Duration::from_secs(5)
                },
                rig::XlStep::Unpause
            ]
        );
        assert_eq!(
            j.timeout,
            Some(rig::DEFAULT_JOB_TIMEOUT + Duration::from_secs(5))
        );
        // Within the boot's bound.
        let r = parse_run(&s(&["--toolstack=xl", "--timeout=30", "--step=sleep=100"])).unwrap();
        assert_eq!(r.xl_job().timeout, Some(Duration::from_secs(30)));
        // No steps: no bound of its own.
        let r = parse_run(&s(&["--toolstack=xl"])).unwrap();
        assert_eq!(r.xl_job().timeout, None);
        assert!(parse_run(&s(&["--step", "pages"])).is_err()); // xl only
        assert!(parse_run(&s(&["--toolstack=xl", "--step", "bogus"])).is_err());
        assert!(parse_run(&s(&["--toolstack=xl", "--step", "xs-read=/abs"])).is_err());
        assert!(parse_run(&s(&["--toolstack=xl", "--step=unpause", "--step=unpause"])).is_err());
    }

    #[test]
    fn test_options() {
        let t = parse_test(&s(&["--only", "aarch64", "--only=x86", "--no-host-tests"])).unwrap();
        assert_eq!(t.only, ["aarch64", "x86"]);
        assert!(!t.host_tests);
        assert!(parse_test(&s(&["--what"])).is_err());
    }
}
