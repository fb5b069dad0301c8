//! Booting agents under QEMU + Xen: the command lines, the live console
//! (decoded as it arrives), the timeout, the log file and the outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use defmt_decoder::Table;

use crate::agent::Agent;
use crate::decode::{Decoder, Event, LineSplitter, Source};
use crate::dtb;
use crate::report::{Logs, Verdict};
use crate::setup::Env;
use crate::util::describe;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (PVH dom0).
    X86_64,
    /// aarch64 (dom0 and/or dom0less domU).
    Aarch64,
}

impl Arch {
    /// The bare-metal Rust target.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    /// Parse `x86_64` / `aarch64`.
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => bail!("unknown architecture `{s}` (x86_64 or aarch64)"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Which agents a boot runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The agent is dom0.
    Dom0,
    /// The agent is a dom0less domU (domain 1), without a dom0.
    DomU,
    /// Both: dom0 waits for domain 1 and folds its verdict in.
    Both,
}

impl Mode {
    /// Parse `dom0` / `domu` / `both`.
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "dom0" => Ok(Mode::Dom0),
            "domu" | "domU" => Ok(Mode::DomU),
            "both" => Ok(Mode::Both),
            _ => bail!("unknown mode `{s}` (dom0, domu or both)"),
        }
    }

    /// The source whose verdict is the run's.
    pub fn primary(self) -> Source {
        match self {
            Mode::DomU => Source::D1,
            Mode::Dom0 | Mode::Both => Source::D0,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Dom0 => "dom0",
            Mode::DomU => "domu",
            Mode::Both => "both",
        })
    }
}

/// What to print live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Xen's lines and the agents'.
    All,
    /// Only the agents' lines (and warnings).
    Agents,
    /// Nothing (the log file still gets everything).
    Nothing,
}

/// One boot to do.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Architecture.
    pub arch: Arch,
    /// Which agents.
    pub mode: Mode,
    /// Options for every agent.
    pub agent_opts: Vec<String>,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Where the whole console goes.
    pub log_path: PathBuf,
    /// Scratch directory (device trees).
    pub work_dir: PathBuf,
    /// What to print live.
    pub show: Show,
}

/// Xen's command line on x86_64 without the dom0 memory option (see
/// [`Machine::xen_x86_64_cmdline`]).
const XEN_X86_64_CMDLINE_BASE: &str = "loglvl=all guest_loglvl=all console=com1 noreboot \
     console_timestamps=boot dom0-iommu=none dom0=pvh";
/// Xen's command line on aarch64.
pub const XEN_AARCH64_CMDLINE: &str =
    "console=dtuart dtuart=/pl011@9000000 dom0_mem=32M loglvl=all guest_loglvl=all";
/// A dom0less domU's memory, KiB.
pub const DOMU_MEMORY_KIB: u64 = 131072;

/// The memory a boot gives the machine and the agents. [`Machine::default`]
/// is what `run` and `test` use; benchmarks that balloon 256 MiB ask for
/// more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// x86_64: QEMU's RAM (`-m`), MiB.
    pub x86_ram_mib: u64,
    /// x86_64: dom0's memory (`dom0_mem=NM,max:NM`), MiB.
    pub x86_dom0_mib: u64,
    /// aarch64: each dom0less domU's memory, KiB (at most QEMU's RAM less
    /// 256 MiB for Xen and the boot modules).
    pub domu_kib: u64,
    /// aarch64: QEMU's RAM (`-m`), MiB; the `virt` machine puts it at
    /// 1 GiB, so RAM ends at `1 GiB + this`.
    pub aarch64_ram_mib: u64,
}

/// QEMU's aarch64 RAM, MiB, unless a boot asks for more.
pub const AARCH64_RAM_MIB: u64 = 1024;

impl Default for Machine {
    fn default() -> Self {
        Machine {
            x86_ram_mib: 512,
            x86_dom0_mib: 256,
            domu_kib: DOMU_MEMORY_KIB,
            aarch64_ram_mib: AARCH64_RAM_MIB,
        }
    }
}

impl Machine {
    /// Xen's x86_64 command line for this machine.
    pub fn xen_x86_64_cmdline(&self) -> String {
        let m = self.x86_dom0_mib;
        format!("{XEN_X86_64_CMDLINE_BASE} dom0_mem={m}M,max:{m}M")
    }

    fn check(&self) -> Result<()> {
        if self.x86_dom0_mib == 0 || self.x86_dom0_mib >= self.x86_ram_mib {
            bail!(
                "x86_64 dom0 memory ({} MiB) must be above 0 and below QEMU's RAM ({} MiB)",
                self.x86_dom0_mib,
                self.x86_ram_mib
            );
        }
        if self.aarch64_ram_mib < 512 || !self.aarch64_ram_mib.is_multiple_of(2) {
            bail!(
                "QEMU's aarch64 RAM ({} MiB) must be a multiple of 2 MiB and at least 512 MiB",
                self.aarch64_ram_mib
            );
        }
        let domu_max_kib = (self.aarch64_ram_mib - 256) * 1024;
        if self.domu_kib == 0 || self.domu_kib & 3 != 0 || self.domu_kib > domu_max_kib {
            bail!(
                "a domU's memory ({} KiB) must be a non-zero multiple of 4 KiB, at most {} MiB \
                 (QEMU's aarch64 machine has {} MiB)",
                self.domu_kib,
                domu_max_kib / 1024,
                self.aarch64_ram_mib
            );
        }
        Ok(())
    }
}

/// Check the options the user gave for the agents.
pub fn check_agent_opts(arch: Arch, opts: &[String]) -> Result<()> {
    for o in opts {
        if o.is_empty() {
            bail!("empty agent option");
        }
        if let Some(c) = o
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\'))
        {
            bail!("agent option `{o}` contains {c:?}, which cannot be passed on");
        }
        if arch == Arch::X86_64 && o.contains(',') {
            bail!(
                "agent option `{o}` contains a comma: on x86_64 the options travel in QEMU's \
                 -initrd string, which QEMU splits at commas"
            );
        }
    }
    Ok(())
}

/// Each agent's command line in a boot, by source.
pub fn agent_cmdlines(arch: Arch, mode: Mode, opts: &[String]) -> Result<Vec<(Source, String)>> {
    check_agent_opts(arch, opts)?;
    let with = |first: &[&str]| -> String {
        first
            .iter()
            .map(|s| s.to_string())
            .chain(opts.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(match (arch, mode) {
        (Arch::X86_64, Mode::Dom0) => vec![(Source::D0, with(&[]))],
        (Arch::X86_64, m) => bail!("x86_64 runs only as dom0 (mode `{m}` is aarch64-only)"),
        (Arch::Aarch64, Mode::Dom0) => vec![(Source::D0, with(&["domid=0"]))],
        (Arch::Aarch64, Mode::DomU) => vec![(Source::D1, with(&["domid=1"]))],
        (Arch::Aarch64, Mode::Both) => vec![
            (Source::D0, with(&["domid=0", "peer=1"])),
            (Source::D1, with(&["domid=1", "exit=shutdown"])),
        ],
    })
}

pub(crate) fn no_comma(p: &Path, what: &str) -> Result<String> {
    let s = p.to_string_lossy().into_owned();
    if s.contains(',') || s.chars().any(char::is_whitespace) {
        bail!(
            "{what} path {s} contains a comma or a space, which QEMU's option syntax cannot take"
        );
    }
    Ok(s)
}

/// The QEMU command for a boot on `machine` (device trees are made here, in
/// `work_dir`).
pub fn qemu_command_on(
    env: &Env,
    spec: &BootSpec,
    agent: &Agent,
    machine: &Machine,
) -> Result<Command> {
    machine.check()?;
    if agent.arch != spec.arch {
        bail!(
            "internal error: {} agent for an {} boot",
            agent.arch,
            spec.arch
        );
    }
    let cmdlines = agent_cmdlines(spec.arch, spec.mode, &spec.agent_opts)?;
    let image = no_comma(&agent.boot_image, "the agent image")?;
    match spec.arch {
        Arch::X86_64 => {
            let mut c = Command::new(&env.qemu_x86_64);
            let opts = &cmdlines[0].1;
            let initrd = if opts.is_empty() {
                image
            } else {
                format!("{image} {opts}")
            };
            c.args(["-nographic", "-no-reboot", "-cpu", "qemu64,+npt", "-m"])
                .arg(machine.x86_ram_mib.to_string())
                .arg("-kernel")
                .arg(&env.xen_x86_64)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(machine.xen_x86_64_cmdline())
                .args(["-monitor", "none", "-serial", "stdio"])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
            Ok(c)
        }
        Arch::Aarch64 => {
            let size = std::fs::metadata(&agent.boot_image)
                .with_context(|| format!("reading {}", agent.boot_image.display()))?
                .len();
            if size >= crate::image::MAX_IMAGE {
                bail!("the agent Image is {size} bytes; it must stay below 16 MiB");
            }
            let mut chosen = dtb::Chosen {
                xen_bootargs: XEN_AARCH64_CMDLINE.into(),
                dom0: None,
                domus: Vec::new(),
            };
            let mut loads = Vec::new();
            for (src, line) in cmdlines {
                let addr = if src == Source::D0 {
                    dtb::DOM0_ADDR
                } else {
                    dtb::DOMU_ADDR
                };
                let module = dtb::Module {
                    addr,
                    size,
                    bootargs: line,
                };
                if src == Source::D0 {
                    chosen.dom0 = Some(module);
                } else {
                    chosen.domus.push(dtb::DomU {
                        name: format!("domU{}", src.0),
                        memory_kib: machine.domu_kib,
                        cpus: 1,
                        kernel: module,
                    });
                }
                loads.push(format!("loader,file={image},addr={addr:#x},force-raw=on"));
            }
            let ram = machine.aarch64_ram_mib;
            let dtb = dtb::make_dtb(&env.qemu_aarch64, &env.dtc, &spec.work_dir, ram, &chosen)?;
            let mut c = Command::new(&env.qemu_aarch64);
            c.arg("-machine")
                .arg(dtb::MACHINE)
                .args(dtb::machine_args(ram))
                .args(["-nographic", "-no-reboot", "-monitor", "none"])
                .args(["-serial", "stdio"])
                .args(["-semihosting-config", "enable=on,target=native"])
                .arg("-kernel")
                .arg(&env.xen_aarch64)
                .arg("-dtb")
                .arg(dtb);
            for l in loads {
                c.arg("-device").arg(l);
            }
            Ok(c)
        }
    }
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU's status says the agent passed.
    Pass,
    /// QEMU's status says the agent failed.
    Fail,
    /// QEMU exited with another status.
    Other(String),
    /// Killed after the timeout.
    Timeout(Duration),
    /// Xen itself gave up (panic, dom0 crash): what it said.
    Xen(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Pass => f.write_str("agent exit: pass"),
            Exit::Fail => f.write_str("agent exit: fail"),
            Exit::Other(s) => write!(f, "QEMU exited without an agent verdict ({s})"),
            Exit::Timeout(d) => write!(f, "timeout: QEMU killed after {} s", d.as_secs()),
            Exit::Xen(s) => write!(f, "Xen gave up: {s}"),
        }
    }
}

/// Map QEMU's exit status to an agent exit.
pub fn classify_status(arch: Arch, code: Option<i32>) -> Exit {
    match (arch, code) {
        // isa-debug-exit: (v << 1) | 1 with v = 0x10 / 0x11.
        (Arch::X86_64, Some(33)) => Exit::Pass,
        (Arch::X86_64, Some(35)) => Exit::Fail,
        // Semihosting SYS_EXIT with the same numbers (0 would be Xen's
        // power-off too).
        (Arch::Aarch64, Some(33)) => Exit::Pass,
        (Arch::Aarch64, Some(35)) => Exit::Fail,
        (Arch::X86_64, Some(0)) => {
            Exit::Other("status 0: the machine rebooted or powered off (not isa-debug-exit)".into())
        }
        (Arch::Aarch64, Some(0)) => Exit::Other(
            "status 0: Xen powered the machine off (not the agent's semihosting exit)".into(),
        ),
        (_, Some(c)) => Exit::Other(format!("status {c}")),
        (_, None) => Exit::Other("killed by a signal".into()),
    }
}

/// Xen lines after which the machine is lost.
fn fatal_xen_line(line: &str) -> Option<&'static str> {
    if line.contains("Panic on CPU") {
        Some("panic")
    } else if line.contains("Hardware Dom0 crashed") {
        Some("dom0 crashed")
    } else {
        None
    }
}

/// Bytes typed on the console, readable: control characters as `^A`.
fn typed(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b < 0x20 {
                format!("^{}", char::from(b + 0x40))
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

/// A console line without terminal escape sequences and control characters.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte; otherwise ESC + one character.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Everything a boot produced.
#[derive(Debug)]
pub struct BootResult {
    /// How it ended.
    pub exit: Exit,
    /// The agents' decoded logs.
    pub logs: Logs,
    /// Decoding warnings.
    pub warnings: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: Vec<String>,
    /// The log file.
    pub log_path: PathBuf,
    /// How long it took.
    pub elapsed: Duration,
    /// Xen's own view at every `xen-view` pause of the agents.
    pub xen_views: Vec<crate::xenview::XenView>,
    /// Whether the agents were asked to pause (`xen-view=` among the
    /// options).
    pub xen_view_asked: bool,
}

impl BootResult {
    /// Whether the run passed: the exit status says pass, the primary agent
    /// printed `verdict: PASS` and nobody printed `verdict: FAIL`.
    pub fn passed(&self, mode: Mode) -> bool {
        self.exit == Exit::Pass
            && self.logs.get(mode.primary()).verdict() == Some(Verdict::Pass)
            && self
                .logs
                .by_source
                .values()
                .all(|l| !l.verdicts.contains(&Verdict::Fail))
    }

    /// One line saying how it ended.
    pub fn summary(&self, mode: Mode) -> String {
        let verdict = match self.logs.get(mode.primary()).verdict() {
            Some(v) => format!("verdict {v} from {}", mode.primary()),
            None => format!("no verdict from {}", mode.primary()),
        };
        format!(
            "{}; {verdict} ({:.1} s)",
            self.exit,
            self.elapsed.as_secs_f64()
        )
    }
}

enum Msg {
    Out(String),
    Err(String),
    Eof,
}

fn reader(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Msg>, err: bool) {
    std::thread::spawn(move || {
        let mut split = LineSplitter::default();
        let mut buf = [0u8; 4096];
        let wrap = |l: String| if err { Msg::Err(l) } else { Msg::Out(l) };
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for l in split.push(&buf[..n]) {
                        if tx.send(wrap(l)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Some(l) = split.finish() {
            let _ = tx.send(wrap(l));
        }
        let _ = tx.send(Msg::Eof);
    });
}

/// Where a boot's console goes: the whole log file, and the terminal as
/// `show` says.
pub(crate) struct Sink {
    log: BufWriter<File>,
    show: Show,
}

impl Sink {
    /// A sink writing the log `path` (its directory is made).
    pub(crate) fn create(path: &Path, show: Show) -> Result<Sink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file =
            File::create(path).with_context(|| format!("creating the log {}", path.display()))?;
        Ok(Sink {
            log: BufWriter::new(file),
            show,
        })
    }

    /// What this sink shows.
    pub(crate) fn show(&self) -> Show {
        self.show
    }

    pub(crate) fn event(&mut self, e: &Event) -> Result<()> {
        writeln!(self.log, "{e}")?;
        let visible = !matches!(
            (self.show, e),
            (Show::Nothing, _) | (Show::Agents, Event::Text(_))
        );
        if visible {
            match e {
                // Firmware lines carry terminal escapes (SeaBIOS resets the
                // screen): keep them in the log, not on the terminal.
                Event::Text(t) => println!("{}", printable(t)),
                _ => println!("{e}"),
            }
        }
        Ok(())
    }

    /// A runner's line, in the log only.
    pub(crate) fn log_only(&mut self, s: &str) -> Result<()> {
        writeln!(self.log, "xtask: {s}")?;
        Ok(())
    }

    /// A runner's line, in the log and (unless showing nothing) on stderr.
    pub(crate) fn note(&mut self, s: &str) -> Result<()> {
        writeln!(self.log, "xtask: {s}")?;
        if self.show != Show::Nothing {
            eprintln!("xtask: {s}");
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.log.flush()?;
        Ok(())
    }
}

/// Boot once on the default [`Machine`] and collect everything.
pub fn boot(env: &Env, spec: &BootSpec, agent: &Agent, table: &Table) -> Result<BootResult> {
    boot_on(env, spec, agent, table, &Machine::default())
}

/// Boot once on `machine` and collect everything.
pub fn boot_on(
    env: &Env,
    spec: &BootSpec,
    agent: &Agent,
    table: &Table,
    machine: &Machine,
) -> Result<BootResult> {
    let mut cmd = qemu_command_on(env, spec, agent, machine)?;
    let mut sink = Sink::create(&spec.log_path, spec.show)?;
    sink.note(&format!(
        "{} {} boot: {}",
        spec.arch,
        spec.mode,
        describe(&cmd)
    ))?;
    // Answer the agents' `xen-view` pauses with Xen's own view.
    let mut viewer = crate::xenview::Viewer::default();
    let others = BTreeMap::new();
    let run = run_qemu(
        &mut cmd,
        &mut sink,
        spec.timeout,
        table,
        &others,
        &mut |l, ev| {
            let typed = viewer.line(l, ev);
            if typed.is_empty() {
                Control::Continue
            } else {
                Control::Type(typed)
            }
        },
    )?;
    let xen_views = viewer.finish_all();
    let xen_view_asked = spec.agent_opts.iter().any(|o| o.starts_with("xen-view="));
    let exit = match run.ended {
        Ended::Exited(code) => classify_status(spec.arch, code),
        Ended::Hung => Exit::Other("QEMU closed its output but did not exit".into()),
        Ended::Timeout => Exit::Timeout(spec.timeout),
        Ended::Xen(text) => Exit::Xen(text),
        Ended::Stopped => Exit::Other("stopped by the runner".into()),
    };
    let r = BootResult {
        exit,
        logs: run.logs,
        warnings: run.warnings,
        qemu_stderr: run.qemu_stderr,
        log_path: spec.log_path.clone(),
        elapsed: run.elapsed,
        xen_views,
        xen_view_asked,
    };
    sink.log_only(&format!("end: {}", r.summary(spec.mode)))?;
    sink.flush()?;
    Ok(r)
}

/// What a line watcher wants after a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Keep going.
    Continue,
    /// Type these bytes on the console (QEMU's serial input), keep going.
    Type(Vec<u8>),
    /// Kill QEMU now: the run is over.
    Stop,
}

/// How QEMU's run ended, before any interpretation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// QEMU exited by itself with this status (`None`: by a signal).
    Exited(Option<i32>),
    /// QEMU closed its output but did not exit (killed).
    Hung,
    /// Killed at the timeout.
    Timeout,
    /// Killed after Xen gave up (panic, dom0 crash): what it said.
    Xen(String),
    /// Killed because the watcher said [`Control::Stop`].
    Stopped,
}

/// Everything QEMU's console gave.
pub(crate) struct QemuRun {
    pub ended: Ended,
    /// The agents' decoded logs, by source domain.
    pub logs: Logs,
    /// Decoding warnings.
    pub warnings: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: Vec<String>,
    /// From the start to the end.
    pub elapsed: Duration,
}

/// Start `cmd` (QEMU), decode its console live into `sink`, and stop it at
/// the timeout, after Xen gives up, or when `watch` says so. `watch` sees
/// every console line (with the agent events it completed) as it arrives.
/// QEMU is never left running. Agent lines decode with `table`, those of
/// the sources in `others` with theirs (see [`Decoder::use_table`]).
pub(crate) fn run_qemu(
    cmd: &mut Command,
    sink: &mut Sink,
    timeout: Duration,
    table: &Table,
    others: &BTreeMap<Source, &Table>,
    watch: &mut dyn FnMut(&str, &[Event]) -> Control,
) -> Result<QemuRun> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = spawn_retrying(cmd).with_context(|| format!("starting {}", describe(cmd)))?;
    let mut decoder = Decoder::new(table);
    for (&s, t) in others {
        decoder.use_table(s, t);
    }
    let result = watch_console(&mut child, timeout, decoder, sink, start, watch);
    // Never leave QEMU behind, whatever happened.
    let _ = child.kill();
    let _ = child.wait();
    let mut r = result?;
    r.elapsed = start.elapsed();
    Ok(r)
}

/// `cmd.spawn()`, tried again a few times while the executable is busy
/// (`ETXTBSY`): a file just written, as the runner's tests write their fake
/// QEMU, stays open for writing in any child another thread forks before it
/// execs, and exec refuses it until then.
fn spawn_retrying(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn watch_console(
    child: &mut Child,
    timeout: Duration,
    mut decoder: Decoder<'_>,
    sink: &mut Sink,
    start: Instant,
    watch: &mut dyn FnMut(&str, &[Event]) -> Control,
) -> Result<QemuRun> {
    let (tx, rx) = mpsc::channel();
    // QEMU's serial input (`-serial stdio`), for Control::Type.
    let mut stdin = child.stdin.take();
    let out = child.stdout.take().context("QEMU's stdout")?;
    let err = child.stderr.take().context("QEMU's stderr")?;
    reader(out, tx.clone(), false);
    reader(err, tx, true);

    let mut logs = Logs::default();
    let mut warnings = Vec::new();
    let mut qemu_stderr = Vec::new();
    let deadline = start + timeout;
    // After Xen gives up: what it said, and how long we still listen.
    let mut fatal: Option<(String, Instant, bool)> = None;
    let mut eofs = 0;
    let mut timed_out = false;
    let mut stopped = false;

    while eofs < 2 && !stopped {
        let until = match &fatal {
            Some((_, t, _)) => (*t).min(deadline),
            None => deadline,
        };
        let msg = match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = fatal.is_none();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Msg::Eof => eofs += 1,
            Msg::Err(l) => {
                sink.note(&format!("qemu: {l}"))?;
                qemu_stderr.push(l);
            }
            Msg::Out(line) => {
                if let Some((text, _, collecting)) = &mut fatal {
                    // Xen's panic message sits between the "Panic on CPU"
                    // line and the next row of asterisks.
                    if *collecting {
                        let body = line.trim_start_matches("(XEN)").trim();
                        if body.starts_with("****") {
                            *collecting = false;
                        } else if !body.is_empty() {
                            text.push_str(if text.ends_with(':') { " " } else { ": " });
                            text.push_str(body);
                        }
                    }
                } else if let Some(what) = fatal_xen_line(&line) {
                    let body = line.trim_start_matches("(XEN)").trim().to_string();
                    let text = if what == "panic" {
                        body
                    } else {
                        format!("{what}: {body}")
                    };
                    fatal = Some((
                        text,
                        Instant::now() + Duration::from_secs(3),
                        what == "panic",
                    ));
                }
                let events = decoder.line(&line);
                for e in &events {
                    match e {
                        Event::Agent(a) => logs.push(a),
                        Event::Warning(w) => warnings.push(w.clone()),
                        Event::Text(_) => {}
                    }
                    sink.event(e)?;
                }
                match watch(&line, &events) {
                    Control::Continue => {}
                    Control::Stop => stopped = true,
                    Control::Type(bytes) => {
                        sink.log_only(&format!("typed on the console: {}", typed(&bytes)))?;
                        if let Some(input) = stdin.as_mut() {
                            if let Err(e) = input.write_all(&bytes).and_then(|()| input.flush()) {
                                sink.note(&format!("typing on QEMU's console failed: {e}"))?;
                            }
                        }
                    }
                }
            }
        }
    }

    let ended = if let Some((text, _, _)) = fatal {
        let _ = child.kill();
        let _ = child.wait();
        Ended::Xen(text)
    } else if stopped {
        let _ = child.kill();
        let _ = child.wait();
        Ended::Stopped
    } else if timed_out {
        let _ = child.kill();
        let _ = child.wait();
        Ended::Timeout
    } else {
        // Both pipes closed: QEMU is exiting; wait for it, within reason.
        let limit = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                break Ended::Exited(st.code());
            }
            if Instant::now() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                break Ended::Hung;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    Ok(QemuRun {
        ended,
        logs,
        warnings,
        qemu_stderr,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cmdlines_per_mode() {
        assert_eq!(
            agent_cmdlines(Arch::X86_64, Mode::Dom0, &[]).unwrap(),
            [(Source::D0, String::new())]
        );
        assert_eq!(
            agent_cmdlines(Arch::X86_64, Mode::Dom0, &s(&["bogus=1"])).unwrap(),
            [(Source::D0, "bogus=1".to_string())]
        );
        assert_eq!(
            agent_cmdlines(Arch::Aarch64, Mode::Dom0, &s(&["fault=unmapped"])).unwrap(),
            [(Source::D0, "domid=0 fault=unmapped".to_string())]
        );
        assert_eq!(
            agent_cmdlines(Arch::Aarch64, Mode::DomU, &[]).unwrap(),
            [(Source::D1, "domid=1".to_string())]
        );
        assert_eq!(
            agent_cmdlines(Arch::Aarch64, Mode::Both, &s(&["x=1"])).unwrap(),
            [
                (Source::D0, "domid=0 peer=1 x=1".to_string()),
                (Source::D1, "domid=1 exit=shutdown x=1".to_string())
            ]
        );
        assert!(agent_cmdlines(Arch::X86_64, Mode::Both, &[]).is_err());
    }

    #[test]
    fn machines() {
        let d = Machine::default();
        assert_eq!(
            d.xen_x86_64_cmdline(),
            "loglvl=all guest_loglvl=all console=com1 noreboot console_timestamps=boot \
             dom0-iommu=none dom0=pvh dom0_mem=256M,max:256M"
        );
        d.check().unwrap();
        let big = Machine {
            x86_ram_mib: 1024,
            x86_dom0_mib: 512,
            domu_kib: 512 * 1024,
            aarch64_ram_mib: AARCH64_RAM_MIB,
        };
        big.check().unwrap();
        Machine {
            aarch64_ram_mib: 6144,
            domu_kib: 5 << 20,
            ..d
        }
        .check()
        .unwrap();
        big.check().unwrap();
        assert!(big
            .xen_x86_64_cmdline()
            .ends_with(" dom0=pvh dom0_mem=512M,max:512M"));
        for bad in [
            Machine {
                x86_dom0_mib: 512,
                ..d
            },
            Machine { domu_kib: 0, ..d },
            Machine { domu_kib: 6, ..d },
            Machine {
                domu_kib: 1 << 20,
                ..d
            },
            Machine {
                aarch64_ram_mib: 256,
                ..d
            },
            Machine {
                aarch64_ram_mib: 1025,
                ..d
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn option_checks() {
        let e = check_agent_opts(Arch::X86_64, &s(&["a=1,2"])).unwrap_err();
        assert!(e.to_string().contains("comma"));
        check_agent_opts(Arch::Aarch64, &s(&["a=1,2"])).unwrap();
        for bad in ["a b", "a\"b", "", "a\\b", "a\nb"] {
            assert!(
                check_agent_opts(Arch::Aarch64, &s(&[bad])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(classify_status(Arch::X86_64, Some(33)), Exit::Pass);
        assert_eq!(classify_status(Arch::X86_64, Some(35)), Exit::Fail);
        assert!(matches!(
            classify_status(Arch::X86_64, Some(0)),
            Exit::Other(_)
        ));
        assert!(matches!(
            classify_status(Arch::X86_64, Some(1)),
            Exit::Other(_)
        ));
        assert_eq!(classify_status(Arch::Aarch64, Some(33)), Exit::Pass);
        assert_eq!(classify_status(Arch::Aarch64, Some(35)), Exit::Fail);
        // Xen's power-off is not the agent's exit.
        assert!(matches!(
            classify_status(Arch::Aarch64, Some(0)),
            Exit::Other(_)
        ));
        assert!(matches!(
            classify_status(Arch::Aarch64, Some(1)),
            Exit::Other(_)
        ));
        assert!(matches!(
            classify_status(Arch::Aarch64, None),
            Exit::Other(_)
        ));
    }

    #[test]
    fn parses_names() {
        assert_eq!(Arch::parse("aarch64").unwrap(), Arch::Aarch64);
        assert_eq!(Arch::parse("x86_64").unwrap(), Arch::X86_64);
        assert!(Arch::parse("riscv").is_err());
        assert_eq!(Mode::parse("both").unwrap(), Mode::Both);
        assert!(Mode::parse("dom2").is_err());
        assert_eq!(Mode::DomU.primary(), Source::D1);
    }

    #[test]
    fn printable_lines() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (1.16)"),
            "SeaBIOS (1.16)"
        );
        assert_eq!(printable("a\tb\x07c"), "a\tbc");
    }

    /// A fake QEMU: a shell script printing `body`'s lines, then doing `tail`.
    struct Fake {
        dir: PathBuf,
        env: Env,
        agent: Agent,
        table: Table,
    }

    impl Fake {
        fn new(name: &str, body: &[String], tail: &str) -> Fake {
            use std::os::unix::fs::PermissionsExt;
            let dir =
                std::env::temp_dir().join(format!("xtask-boot-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut script = String::from("#!/bin/sh\n");
            for l in body {
                script.push_str(&format!("printf '%s\\r\\n' '{l}'\n"));
            }
            script.push_str(tail);
            script.push('\n');
            let qemu = dir.join("qemu");
            std::fs::write(&qemu, script).unwrap();
            std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
            let elf = crate::decode::tests::defmt_elf(&[
                ("defmt_info", "report: {=str}"),
                ("defmt_info", "verdict: PASS"),
            ]);
            let table = crate::decode::load_table(&elf).unwrap();
            let image = dir.join("agent.elf");
            std::fs::write(&image, &elf).unwrap();
            Fake {
                env: Env {
                    qemu_x86_64: qemu.clone(),
                    qemu_aarch64: qemu,
                    dtc: "dtc".into(),
                    xen_x86_64: "xen".into(),
                    xen_aarch64: "xen".into(),
                },
                agent: Agent {
                    arch: Arch::X86_64,
                    elf_path: image.clone(),
                    elf,
                    boot_image: image,
                },
                table,
                dir,
            }
        }

        fn boot(&self, timeout: u64) -> BootResult {
            let spec = BootSpec {
                arch: Arch::X86_64,
                mode: Mode::Dom0,
                agent_opts: vec![],
                timeout: Duration::from_secs(timeout),
                log_path: self.dir.join("out.log"),
                work_dir: self.dir.clone(),
                show: Show::Nothing,
            };
            boot(&self.env, &spec, &self.agent, &self.table).unwrap()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    fn frames() -> Vec<String> {
        use crate::decode::tests::{frame_lines, str_arg};
        let mut v = frame_lines(1, &str_arg("xen version=4.17 extra=.7"));
        v.extend(frame_lines(2, &[]));
        v
    }

    #[test]
    fn fake_boot_passes() {
        let mut body = vec!["(XEN) Xen version 4.17".to_string()];
        body.extend(frames());
        let f = Fake::new("pass", &body, "printf 'no newline at the end'; exit 33");
        let r = f.boot(20);
        assert_eq!(r.exit, Exit::Pass);
        assert!(r.passed(Mode::Dom0), "{r:?}");
        let d0 = r.logs.get(Source::D0);
        assert_eq!(d0.topic("xen").next().unwrap().get("extra"), Some(".7"));
        let log = std::fs::read_to_string(&r.log_path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines[0].starts_with("xtask: x86_64 dom0 boot: "));
        assert_eq!(
            &lines[1..5],
            [
                "(XEN) Xen version 4.17",
                "[d0] INFO  report: xen version=4.17 extra=.7",
                "[d0] INFO  verdict: PASS",
                "no newline at the end",
            ]
        );
        assert!(lines[5].starts_with("xtask: end: agent exit: pass"));
    }

    #[test]
    fn fake_boot_without_verdict_fails() {
        let f = Fake::new("noverdict", &["(XEN) hello".to_string()], "exit 33");
        let r = f.boot(20);
        assert_eq!(r.exit, Exit::Pass);
        assert!(!r.passed(Mode::Dom0));
    }

    #[test]
    fn fake_boot_times_out() {
        let f = Fake::new("timeout", &frames(), "exec sleep 30");
        let r = f.boot(1);
        assert_eq!(r.exit, Exit::Timeout(Duration::from_secs(1)));
        assert!(r.elapsed < Duration::from_secs(10));
        assert!(!r.passed(Mode::Dom0));
        assert!(r.summary(Mode::Dom0).contains("timeout"));
    }

    #[test]
    fn fake_boot_xen_panic() {
        let body: Vec<String> = [
            "(XEN) ****************************************",
            "(XEN) Panic on CPU 0:",
            "(XEN) Could not set up DOM0 guest OS (rc = -95)",
            "(XEN) ****************************************",
            "(XEN) Manual reset required ('noreboot' specified)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = Fake::new("panic", &body, "exec sleep 30");
        let r = f.boot(60);
        assert_eq!(
            r.exit,
            Exit::Xen("Panic on CPU 0: Could not set up DOM0 guest OS (rc = -95)".into())
        );
        assert!(r.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn fake_boot_stderr_and_status() {
        let f = Fake::new("stderr", &[], "echo 'qemu: bad option' >&2; exit 1");
        let r = f.boot(20);
        assert_eq!(r.exit, Exit::Other("status 1".into()));
        assert_eq!(r.qemu_stderr, ["qemu: bad option"]);
    }

    #[test]
    fn fatal_lines() {
        assert_eq!(fatal_xen_line("(XEN) Panic on CPU 0:"), Some("panic"));
        assert_eq!(
            fatal_xen_line("(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds."),
            Some("dom0 crashed")
        );
        assert_eq!(fatal_xen_line("(XEN) Xen version 4.17"), None);
    }
}
