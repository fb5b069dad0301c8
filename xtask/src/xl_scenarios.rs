//! The scenarios of `cargo xtask test` that run the agent as a domU made by
//! the xl toolstack in the Linux dom0 rig ([`crate::rig`]).
//!
//! Every scenario is one `xl create` in a rig boot shared by all scenarios
//! of its architecture. It is checked twice: the agent's own reports (the
//! [`Check`]s of [`crate::scenarios`], about the job's domain, written for
//! [`Source::D1`]), and what the toolstack and Xen say of the same domain,
//! which the agent did not write ([`XlCheck`]): the shutdown reason from
//! `xl list -v`, its memory in `xl list`, Xen's page count from debug key
//! `q`, and `xl info`'s free memory once it is destroyed.

use crate::boot::Arch;
use crate::decode::Source;
use crate::report::{parse_number, AgentLog, Logs, Verdict};
use crate::rig::{XlJob, XlJobResult, XlResult, XlStep};
use crate::scenarios::{
    check_one, count, every, field, field_where, grant_self, unexpected_errors, verdict, Check, Is,
};
use std::time::Duration;

const D1: Source = Source::D1;

/// An assertion about the domain that the agent did not make.
#[derive(Clone, Debug)]
pub enum XlCheck {
    /// `xl list` showed this much memory (MiB) once the domain had shut down.
    ListMib(u64),
    /// `xl list` showed this much memory (MiB) when the domain was made,
    /// paused, before the agent ran.
    ListMibAtStart(u64),
    /// Xen's own page count (debug key `q`: `nr_pages`) equals the number in
    /// field `key` of the agent's LAST `topic` report: the agent's final word
    /// on its reservation is Xen's, to the page.
    XenPagesIsLast {
        /// Report topic.
        topic: &'static str,
        /// Field.
        key: &'static str,
    },
    /// Xen's `nr_pages` is exactly this.
    XenPages(u64),
    /// Xen says the populate-on-demand entries left are all backed: PoD
    /// entries == PoD cache size (after the agent gave its surplus back).
    PodBacked,
    /// `xl info`'s free memory after `xl destroy` is what it was before the
    /// first domain was created: Xen lost nothing.
    NothingLost,
    /// Xen's `nr_pages` at toolstack step `step` (a [`XlStep::Pages`]).
    StepPages {
        /// The step's index.
        step: usize,
        /// The count.
        pages: u64,
    },
    /// Xen's `nr_pages` at step `step` equals the number in field `key` of
    /// the agent's first `topic` report (the floor it stated).
    StepPagesIsReport {
        /// The step's index.
        step: usize,
        /// Report topic.
        topic: &'static str,
        /// Field.
        key: &'static str,
    },
    /// `xl list` showed the step's memory (a [`XlStep::WaitMib`]) within
    /// `within_s` seconds of the `xl mem-set`.
    Reached {
        /// The step's index.
        step: usize,
        /// The bound, seconds.
        within_s: f64,
    },
    /// The domain's CPU time (`xl list`) did not grow between two
    /// [`XlStep::CpuTime`] steps: it waited without spinning.
    CpuFlat {
        /// The first.
        from: usize,
        /// The second.
        to: usize,
    },
    /// `xl destroy` was run mid-way (a [`XlStep::Destroy`]).
    DestroyedEarly,
    /// The dom0 peer (`xenmem-peer grant`, Linux's gntdev through rust-vmm
    /// vm-memory) read the agent's pattern in every round of these sizes
    /// with no bad word, mapping the references the agent reported; the
    /// agent had checked and ended them; mapping the first again was
    /// refused; the agent's grant table as dom0 acquired it from Xen
    /// (privcmd's resource map) named the agent's frames for dom0, showed
    /// every entry in use while mapped and free once ended; and the peer
    /// exited 0. What the peer read is not what the agent says.
    PeerGrant(&'static [u64]),
    /// The dom0 peer (`xenmem-peer gntalloc`, Linux's gntalloc) found the
    /// agent's answer in every word of the pages it had granted, saw the
    /// agent release them, and allocated as many again afterwards; its
    /// first reference is the agent's; it exited 0.
    PeerGntalloc(u64),
    /// The dom0 peer (`xenmem-peer foreign`: a vm-memory FOREIGN region
    /// through Linux's privcmd) read the agent's pattern in `n` frames at
    /// the GFNs the agent reported, and once the agent had ballooned them
    /// out Xen refused every one of them to a new map (per-frame errors of
    /// the same ioctl; vm-memory itself reports success); exit 0.
    PeerForeign(u64),
    /// Every hand-over with the dom0 peer was signalled on an interdomain
    /// event channel: the peer bound the port the agent offered (its
    /// `peer-channel remote_port=` is the agent's `dom0-peer-channel
    /// port=`), and both sides sent and received events. The peer's count
    /// leaves out the event Xen sets at every bind (it must have taken it
    /// apart: `bind_event=yes`), so it counts only what the agent sent.
    PeerChannel,
    /// The dom0 peer (`xenmem-peer grant-die`) mapped and checked the
    /// agent's grants and was killed (SIGKILL, exit status 137) with them
    /// mapped; afterwards the agent's grant table, read by dom0 from Xen
    /// (`xenmem-peer table`), grants nothing past the reserved entries.
    PeerKilled,
    /// The dom0 peer (`xenmem-peer gntalloc-end`) ended its grants while
    /// the agent mapped them, and saw the agent map and release them.
    PeerEndedMidUse,
    /// Xen's own count of active (pinned) grant entries of domain `dom`
    /// (`Some(0)`: dom0; `None`: the job's own domain, whatever its domid)
    /// at step `step` (a [`XlStep::Grants`]), the reserved ones left out,
    /// is `count`.
    StepGrantsActive {
        /// The step's index.
        step: usize,
        /// The granting domain.
        dom: Option<u32>,
        /// The count.
        count: u64,
    },
}

/// One xl-made domU and what it must show.
#[derive(Clone, Debug)]
pub struct XlScenario {
    /// Name (`<arch>-xl-<what>`).
    pub name: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// `memory=`, MiB.
    pub memory_mib: u64,
    /// `maxmem=`, MiB (populate-on-demand when above `memory`).
    pub maxmem_mib: Option<u64>,
    /// The agent's options (the rig adds `exit=shutdown`, and on aarch64
    /// the domid).
    pub agent_opts: &'static [&'static str],
    /// The shutdown reason `xl list -v` must show (`None`: destroyed, it
    /// never shuts down).
    pub shutdown: Option<&'static str>,
    /// What the toolstack does while it runs.
    pub steps: Vec<XlStep>,
    /// The agent's reports (source [`Source::D1`] stands for the domain).
    pub checks: Vec<Check>,
    /// The toolstack's and Xen's view.
    pub xl: Vec<XlCheck>,
}

impl XlScenario {
    /// The longest its steps may wait.
    pub fn steps_time(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match s {
                XlStep::WaitMib { timeout, .. } | XlStep::Peer { timeout, .. } => *timeout,
                XlStep::Sleep(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }

    /// The rig job that runs it.
    pub fn job(&self) -> XlJob {
        let mut opts: Vec<String> = self.agent_opts.iter().map(|o| o.to_string()).collect();
        opts.push("exit=shutdown".into());
        if self.arch == Arch::Aarch64 {
            opts.push("domid=@DOMID@".into());
        }
        XlJob {
            name: self.name.to_string(),
            memory_mib: self.memory_mib,
            maxmem_mib: self.maxmem_mib,
            agent_opts: opts,
            extra_cfg: Vec::new(),
            steps: self.steps.clone(),
            // The usual bound, plus what the steps may wait.
            timeout: Some(crate::rig::DEFAULT_JOB_TIMEOUT + self.steps_time()),
        }
    }
}

/// Pages of `mib` MiB.
const fn pages(mib: u64) -> u64 {
    mib * 256
}

/// What libxc populates outside RAM and Xen counts (measured, Xen 4.17):
/// x86 PVH — 9 pages of ACPI tables and 8 special pages; Arm — 4 magic
/// pages.
const fn special_pages(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 17,
        Arch::Aarch64 => 4,
    }
}

/// What every xl domU that ran normally reports: an unprivileged domain of
/// `mib` MiB of RAM whose table accounts for every page Xen counts (the
/// toolstack's pages outside RAM found and recorded), with a hole for
/// mappings, trimmed to its memory.
fn domu(arch: Arch, mib: u64) -> Vec<Check> {
    with(
        domu_map(arch, mib),
        [every(D1, "accounting", "unaccounted", Is::Num(0))],
    )
}

/// [`domu`] without the accounting: what a populate-on-demand domU reports
/// too (whose first accounting shows the surplus it then gives back).
fn domu_map(arch: Arch, mib: u64) -> Vec<Check> {
    let (source, map) = match arch {
        Arch::X86_64 => ("cpuid", "start_info"),
        Arch::Aarch64 => ("cmdline", "fdt"),
    };
    let mut c = vec![
        field(D1, "xen", "version", Is::Version("4.17")),
        field(D1, "domain", "privileged", Is::Text("no")),
        field(D1, "domain", "source", Is::Text(source)),
        field(D1, "memmap", "source", Is::Text(map)),
        field(D1, "memmap", "ram_pages", Is::Num(pages(mib))),
        field(D1, "special", "pages", Is::Num(special_pages(arch))),
        // Xen refuses console_io to a toolstack domU: the log came through
        // the PV console ring (or it would not be here at all).
        field(D1, "console", "channel", Is::Text("ring")),
        count(D1, "table-region", ("kind", "hole"), 1),
        count(D1, "table-region", ("kind", "reserved:special"), 1),
        Check::ImageReserved(D1),
        field(D1, "identity-trim", "kept_mapped", Is::Text("yes")),
        field(D1, "identity-trim", "others_unmapped", Is::Text("yes")),
        field(D1, "paging-selftest", "frames", Is::Num(3)),
    ];
    c.push(verdict(D1, Verdict::Pass));
    c
}

fn with(mut a: Vec<Check>, b: impl IntoIterator<Item = Check>) -> Vec<Check> {
    a.extend(b);
    a
}

/// How long `xl list` may take to show a target after `xl mem-set`, as the
/// service scenarios state it (measured under TCG: 192 MiB down in 1.5 s,
/// 96 MiB up in 0.7 s).
pub const REACH_BOUND_S: f64 = 20.0;

/// Toolstack steps and the checks on what they saw, built together so that
/// the checks name the right step.
#[derive(Default)]
struct Plan {
    steps: Vec<XlStep>,
    xl: Vec<XlCheck>,
    special: u64,
}

impl Plan {
    fn new(arch: Arch) -> Plan {
        Plan {
            special: special_pages(arch),
            ..Plan::default()
        }
    }

    fn step(&mut self, s: XlStep) -> usize {
        self.steps.push(s);
        self.steps.len() - 1
    }

    /// Xen's count now is `mib` MiB and the toolstack's pages.
    fn pages(&mut self, mib: u64) -> &mut Self {
        let step = self.step(XlStep::Pages);
        self.xl.push(XlCheck::StepPages {
            step,
            pages: pages(mib) + self.special,
        });
        self
    }

    /// `xl mem-set` without waiting.
    fn set(&mut self, mib: u64) -> &mut Self {
        self.step(XlStep::MemSet(mib));
        self
    }

    /// `xl list` shows `mib` within the bound, and Xen's count is exact.
    fn wait(&mut self, mib: u64) -> &mut Self {
        let step = self.step(XlStep::WaitMib {
            mib,
            timeout: Duration::from_secs_f64(REACH_BOUND_S + 10.0),
        });
        self.xl.push(XlCheck::Reached {
            step,
            within_s: REACH_BOUND_S,
        });
        self.pages(mib)
    }

    /// `xl mem-set` and [`Plan::wait`].
    fn mem_set(&mut self, mib: u64) -> &mut Self {
        self.set(mib).wait(mib)
    }

    /// The domain's CPU time stays flat over `secs` seconds.
    fn idle(&mut self, secs: u64) -> &mut Self {
        let from = self.step(XlStep::CpuTime);
        self.step(XlStep::Sleep(Duration::from_secs(secs)));
        let to = self.step(XlStep::CpuTime);
        self.xl.push(XlCheck::CpuFlat { from, to });
        self
    }

    fn then(&mut self, s: XlStep) -> &mut Self {
        self.step(s);
        self
    }

    fn done(&mut self) -> (Vec<XlStep>, Vec<XlCheck>) {
        (
            core::mem::take(&mut self.steps),
            core::mem::take(&mut self.xl),
        )
    }
}

/// What every run of the balloon service shows: the floor it states, the
/// watches set, and a passing verdict.
fn service(arch: Arch, mib: u64) -> Vec<Check> {
    with(
        domu(arch, mib),
        [
            field(D1, "service", "floor", Is::AnyNum),
            field(D1, "service", "special", Is::Num(special_pages(arch))),
            field(D1, "service-watch", "target", Is::Text("memory/target")),
            field(D1, "service-xenstore", "port", Is::AnyNum),
        ],
    )
}

/// The balloon service driven by `xl mem-set`, `xl shutdown` and the rest.
fn service_scenarios(arch: Arch) -> Vec<XlScenario> {
    let x86 = arch == Arch::X86_64;
    let name = |x: &'static str, a: &'static str| if x86 { x } else { a };
    let sp = special_pages(arch);
    let mut v = Vec::new();
    // 256 -> 64 -> 200 -> 128, each to the page; idle in between.
    let (steps, mut xl) = Plan::new(arch)
        .pages(256)
        .idle(2)
        .mem_set(64)
        .idle(2)
        .mem_set(200)
        .mem_set(128)
        .then(XlStep::XsRead("control/feature-balloon".into()))
        .then(XlStep::Shutdown)
        .done();
    xl.extend([
        XlCheck::ListMibAtStart(256),
        XlCheck::ListMib(128),
        XlCheck::XenPagesIsLast {
            topic: "accounting",
            key: "current",
        },
        XlCheck::NothingLost,
    ]);
    v.push(XlScenario {
        name: name("x86_64-xl-mem-set", "aarch64-xl-mem-set"),
        arch,
        memory_mib: 256,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("poweroff"),
        steps,
        checks: with(
            service(arch, 256),
            [
                count(D1, "service-reached", ("target", leak(pages(64) + sp)), 1),
                count(D1, "service-reached", ("target", leak(pages(200) + sp)), 1),
                count(D1, "service-reached", ("target", leak(pages(128) + sp)), 1),
                field(D1, "service-shutdown", "request", Is::Text("poweroff")),
            ],
        ),
        xl,
    });
    // A target below the floor: the floor is reached (Xen's count equals
    // the floor the agent stated at start).
    let mut p = Plan::new(arch);
    p.set(2).then(XlStep::Sleep(Duration::from_secs(4)));
    let floor_step = p.step(XlStep::Pages);
    let (steps, mut xl) = p.then(XlStep::Shutdown).done();
    xl.push(XlCheck::StepPagesIsReport {
        step: floor_step,
        topic: "service",
        key: "floor",
    });
    xl.push(XlCheck::NothingLost);
    v.push(XlScenario {
        name: name("x86_64-xl-mem-set-floor", "aarch64-xl-mem-set-floor"),
        arch,
        memory_mib: 64,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("poweroff"),
        steps,
        checks: service(arch, 64),
        xl,
    });
    // Two targets back to back: the second wins.
    let (steps, mut xl) = Plan::new(arch)
        .set(64)
        .mem_set(200)
        .then(XlStep::Shutdown)
        .done();
    xl.push(XlCheck::NothingLost);
    v.push(XlScenario {
        name: name(
            "x86_64-xl-mem-set-back-to-back",
            "aarch64-xl-mem-set-back-to-back",
        ),
        arch,
        memory_mib: 256,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("poweroff"),
        steps,
        checks: service(arch, 256),
        xl,
    });
    // Malformed targets written by hand: each refused, the service goes on.
    let (steps, mut xl) = Plan::new(arch)
        .then(XlStep::XsWrite {
            path: "memory/target".into(),
            value: "abc".into(),
        })
        .then(XlStep::Sleep(Duration::from_secs(1)))
        .then(XlStep::XsWrite {
            path: "memory/target".into(),
            value: "-5".into(),
        })
        .then(XlStep::Sleep(Duration::from_secs(1)))
        .then(XlStep::XsWrite {
            path: "memory/target".into(),
            value: String::new(),
        })
        .then(XlStep::Sleep(Duration::from_secs(1)))
        .pages(64)
        .mem_set(32)
        .then(XlStep::Shutdown)
        .done();
    xl.push(XlCheck::NothingLost);
    v.push(XlScenario {
        name: name("x86_64-xl-malformed-target", "aarch64-xl-malformed-target"),
        arch,
        memory_mib: 64,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("poweroff"),
        steps,
        checks: with(
            service(arch, 64),
            [
                count(D1, "service-target", ("malformed", "yes"), 3),
                Check::ErrorMentions(D1, "is not a size in KiB"),
            ],
        ),
        xl,
    });
    // xl reboot: the reason says reboot.
    let (steps, mut xl) = Plan::new(arch).then(XlStep::Reboot).done();
    xl.push(XlCheck::NothingLost);
    v.push(XlScenario {
        name: name("x86_64-xl-reboot", "aarch64-xl-reboot"),
        arch,
        memory_mib: 64,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("reboot"),
        steps,
        checks: with(
            service(arch, 64),
            [field(D1, "service-shutdown", "request", Is::Text("reboot"))],
        ),
        xl,
    });
    // Suspend is refused and the service goes on serving.
    let (steps, mut xl) = Plan::new(arch)
        .then(XlStep::XsWrite {
            path: "control/shutdown".into(),
            value: "suspend".into(),
        })
        .then(XlStep::Sleep(Duration::from_secs(2)))
        .mem_set(32)
        .then(XlStep::Shutdown)
        .done();
    xl.push(XlCheck::NothingLost);
    v.push(XlScenario {
        name: name("x86_64-xl-suspend-refused", "aarch64-xl-suspend-refused"),
        arch,
        memory_mib: 64,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: Some("poweroff"),
        steps,
        checks: with(
            service(arch, 64),
            [
                // The suspend request refused first, then the poweroff.
                count(D1, "service-shutdown", ("request", "refused"), 1),
                count(D1, "service-shutdown", ("request", "poweroff"), 1),
            ],
        ),
        xl,
    });
    // xl destroy while it balloons: Xen loses nothing.
    let (steps, _) = Plan::new(arch).set(16).then(XlStep::Destroy).done();
    // 512 MiB down to 16 takes some seconds: xl destroy lands in it.
    v.push(XlScenario {
        name: name(
            "x86_64-xl-destroy-mid-balloon",
            "aarch64-xl-destroy-mid-balloon",
        ),
        arch,
        memory_mib: 512,
        maxmem_mib: None,
        agent_opts: &["mode=service"],
        shutdown: None,
        steps,
        // It had started ballooning.
        checks: vec![count(
            D1,
            "service-step",
            ("target", leak(pages(16) + sp)),
            1,
        )],
        xl: vec![XlCheck::DestroyedEarly, XlCheck::NothingLost],
    });
    if x86 {
        // A populate-on-demand start, then served like any other.
        let (steps, mut xl) = Plan::new(arch)
            .pages(128)
            .mem_set(200)
            .mem_set(96)
            .then(XlStep::Shutdown)
            .done();
        xl.extend([XlCheck::NothingLost]);
        v.push(XlScenario {
            name: "x86_64-xl-mem-set-pod",
            arch,
            memory_mib: 128,
            maxmem_mib: Some(256),
            agent_opts: &["mode=service"],
            shutdown: Some("poweroff"),
            steps,
            checks: with(
                domu_map(arch, 256),
                [field(D1, "pod", "surplus", Is::Num(pages(128)))],
            ),
            xl,
        });
    }
    v
}

/// A number as the `&'static str` that [`Check::Count`] compares.
fn leak(n: u64) -> &'static str {
    Box::leak(n.to_string().into_boxed_str())
}

/// The xl scenarios of one architecture.
fn for_arch(arch: Arch) -> Vec<XlScenario> {
    let x86 = arch == Arch::X86_64;
    let sp = special_pages(arch);
    let name = |x: &'static str, a: &'static str| if x86 { x } else { a };
    let agent_is_xen = || XlCheck::XenPagesIsLast {
        topic: "accounting",
        key: "current",
    };
    let mut v = vec![
        XlScenario {
            name: name("x86_64-xl-survey", "aarch64-xl-survey"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &[],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(
                domu(arch, 64),
                [field(D1, "reservation", "current", Is::Num(pages(64) + sp))],
            ),
            xl: vec![
                XlCheck::ListMibAtStart(64),
                XlCheck::ListMib(64),
                agent_is_xen(),
                XlCheck::XenPages(pages(64) + sp),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            name: name("x86_64-xl-balloon", "aarch64-xl-balloon"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["balloon=32M"],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "balloon", "current", Is::Num(pages(32))),
                    every(D1, "balloon", "short", Is::Num(0)),
                    field(D1, "reservation-after", "current", Is::Num(pages(32))),
                    field(D1, "identity-map", "ballooned_unmapped", Is::Text("yes")),
                ],
            ),
            xl: vec![
                XlCheck::ListMibAtStart(64),
                XlCheck::ListMib(32),
                agent_is_xen(),
                XlCheck::XenPages(pages(32)),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            name: name(
                "x86_64-xl-balloon-round-trip",
                "aarch64-xl-balloon-round-trip",
            ),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["balloon=32M", "balloon-then=48M"],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(
                domu(arch, 64),
                [
                    field_where(
                        D1,
                        "balloon",
                        ("phase", "first"),
                        "current",
                        Is::Num(pages(32)),
                    ),
                    field_where(
                        D1,
                        "balloon",
                        ("phase", "then"),
                        "current",
                        Is::Num(pages(48)),
                    ),
                    every(D1, "balloon", "short", Is::Num(0)),
                    field(D1, "balloon-check", "pages", Is::Num(pages(16))),
                    field(D1, "balloon-check", "pattern", Is::Text("ok")),
                    field(D1, "reservation-after", "current", Is::Num(pages(48))),
                    field(
                        D1,
                        "identity-map-back",
                        "repopulated_mapped",
                        Is::Text("yes"),
                    ),
                ],
            ),
            xl: vec![
                XlCheck::ListMib(48),
                agent_is_xen(),
                XlCheck::XenPages(pages(48)),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            name: name("x86_64-xl-grant-self", "aarch64-xl-grant-self"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["grant=self"],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(domu(arch, 64), grant_self(D1, x86)),
            xl: vec![agent_is_xen(), XlCheck::NothingLost],
        },
        XlScenario {
            // Linux's gntdev (through rust-vmm's vm-memory, in xenmem-peer)
            // maps the agent's grants: 1, 64 and 1024 pages.
            name: name("x86_64-xl-peer-grant", "aarch64-xl-peer-grant"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["dom0-peer=grant"],
            shutdown: Some("poweroff"),
            steps: vec![
                XlStep::Peer {
                    command: "grant".into(),
                    timeout: Duration::from_secs(60),
                },
                XlStep::Grants,
            ],
            checks: with(
                domu(arch, 64),
                [
                    count(D1, "dom0-peer-grant", ("agent_bad_words", "0"), 3),
                    count(D1, "dom0-peer-grant", ("end_while_mapped", "refused"), 3),
                    count(D1, "dom0-peer-grant", ("ends_failed_after_unmap", "0"), 3),
                    field(D1, "dom0-peer-done", "grants_active", Is::Num(0)),
                    field(D1, "dom0-peer-done", "window_pages", Is::Num(0)),
                ],
            ),
            xl: vec![
                XlCheck::PeerGrant(&[1, 64, 1024]),
                XlCheck::PeerChannel,
                // None of the agent's grants is still mapped by dom0.
                XlCheck::StepGrantsActive {
                    step: 1,
                    dom: None,
                    count: 0,
                },
                agent_is_xen(),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            // Linux's gntalloc grants 1024 pages of dom0 to the agent,
            // which maps them in one batch.
            name: name("x86_64-xl-peer-gntalloc", "aarch64-xl-peer-gntalloc"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["dom0-peer=gntalloc"],
            shutdown: Some("poweroff"),
            steps: vec![
                XlStep::Peer {
                    command: "gntalloc".into(),
                    timeout: Duration::from_secs(60),
                },
                XlStep::Grants,
            ],
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "dom0-peer-gntalloc", "pages", Is::Num(1024)),
                    field(D1, "dom0-peer-gntalloc", "bad_words", Is::Num(0)),
                    field(D1, "dom0-peer-gntalloc", "released", Is::Text("ok")),
                    field(D1, "dom0-peer-gntalloc", "window_pages_after", Is::Num(0)),
                    // Bad input, refused by Xen with typed errors, nothing
                    // left mapped.
                    field(
                        D1,
                        "dom0-peer-bad-input",
                        "ref_status",
                        Is::Text("GNTST_bad_gntref"),
                    ),
                    field(
                        D1,
                        "dom0-peer-bad-input",
                        "domain_status",
                        Is::Text("GNTST_bad_domain"),
                    ),
                    field(D1, "dom0-peer-bad-input", "nothing_left", Is::Text("yes")),
                ],
            ),
            xl: vec![
                XlCheck::PeerGntalloc(1024),
                XlCheck::PeerChannel,
                // None of dom0's pages is still mapped by the agent: Xen's
                // own count (gntalloc's second allocation does not show it).
                XlCheck::StepGrantsActive {
                    step: 1,
                    dom: Some(0),
                    count: 0,
                },
                agent_is_xen(),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            // Linux's privcmd (a vm-memory FOREIGN region) maps the agent's
            // frames, then cannot once the agent has ballooned them out.
            name: name("x86_64-xl-peer-foreign", "aarch64-xl-peer-foreign"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["dom0-peer=foreign"],
            shutdown: Some("poweroff"),
            steps: vec![XlStep::Peer {
                command: "foreign".into(),
                timeout: Duration::from_secs(60),
            }],
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "dom0-peer-foreign", "pages", Is::Num(64)),
                    field(D1, "dom0-peer-foreign", "released", Is::Text("ok")),
                    field(
                        D1,
                        "dom0-peer-foreign",
                        "current_after",
                        Is::Num(pages(64) + sp - 64),
                    ),
                ],
            ),
            xl: vec![
                XlCheck::PeerForeign(64),
                XlCheck::PeerChannel,
                // Xen's count is the agent's last, 64 pages below the start.
                agent_is_xen(),
                XlCheck::XenPages(pages(64) + sp - 64),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            // dom0 ends its gntalloc grants while the agent maps them.
            name: name(
                "x86_64-xl-peer-ended-mid-use",
                "aarch64-xl-peer-ended-mid-use",
            ),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["dom0-peer=ended-mid-use"],
            shutdown: Some("poweroff"),
            steps: vec![
                XlStep::Peer {
                    command: "gntalloc-end".into(),
                    timeout: Duration::from_secs(60),
                },
                XlStep::Grants,
            ],
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "dom0-peer-ended-mid-use", "pages", Is::Num(64)),
                    field(
                        D1,
                        "dom0-peer-ended-mid-use",
                        "bad_words_after_end",
                        Is::Num(0),
                    ),
                    field(D1, "dom0-peer-ended-mid-use", "released", Is::Text("ok")),
                    field(
                        D1,
                        "dom0-peer-ended-mid-use",
                        "window_pages_after",
                        Is::Num(0),
                    ),
                ],
            ),
            xl: vec![
                XlCheck::PeerEndedMidUse,
                XlCheck::PeerChannel,
                // dom0's ended grants are no longer pinned once released.
                XlCheck::StepGrantsActive {
                    step: 1,
                    dom: Some(0),
                    count: 0,
                },
                agent_is_xen(),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            // The peer is killed with the agent's grants mapped.
            name: name("x86_64-xl-peer-killed", "aarch64-xl-peer-killed"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["dom0-peer=peer-dies"],
            shutdown: Some("poweroff"),
            steps: vec![
                XlStep::Peer {
                    command: "grant-die".into(),
                    timeout: Duration::from_secs(60),
                },
                XlStep::Grants,
                // The agent's table as Xen has it once it is done.
                XlStep::Peer {
                    command: "table".into(),
                    timeout: Duration::from_secs(20),
                },
            ],
            checks: with(
                domu(arch, 64),
                [
                    field(
                        D1,
                        "dom0-peer-dies",
                        "end_while_mapped",
                        Is::Text("refused"),
                    ),
                    field(D1, "dom0-peer-dies", "ended_after_death", Is::Text("yes")),
                    field(D1, "dom0-peer-dies", "reused", Is::Text("yes")),
                ],
            ),
            xl: vec![
                XlCheck::PeerKilled,
                // Nothing of the dead process's mappings is left in Xen.
                XlCheck::StepGrantsActive {
                    step: 1,
                    dom: None,
                    count: 0,
                },
                agent_is_xen(),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            name: name("x86_64-xl-contig", "aarch64-xl-contig"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["contig=2M"],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "contiguous", "method", Is::Text("repopulate")),
                    field(D1, "contiguous", "order", Is::Num(9)),
                    field(D1, "contiguous", "pattern", Is::Text("ok")),
                ],
            ),
            xl: vec![
                agent_is_xen(),
                XlCheck::XenPages(pages(64) + sp),
                XlCheck::NothingLost,
            ],
        },
        XlScenario {
            name: name(
                "x86_64-xl-unprivileged-probe",
                "aarch64-xl-unprivileged-probe",
            ),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["probe=0"],
            shutdown: Some("poweroff"),
            steps: Vec::new(),
            checks: with(
                domu(arch, 64),
                [
                    field(D1, "unprivileged", "target", Is::Num(0)),
                    field(D1, "unprivileged", "foreign", Is::Text("eperm")),
                    // x86 Xen 4.17 refuses acquire_resource into any
                    // translated caller but the hardware domain (EACCES)
                    // before XSM; Arm's XSM says EPERM.
                    field(
                        D1,
                        "unprivileged",
                        "acquire",
                        Is::Text(if x86 { "eacces" } else { "eperm" }),
                    ),
                    field(D1, "unprivileged", "untouched", Is::Text("yes")),
                ],
            ),
            xl: vec![agent_is_xen(), XlCheck::NothingLost],
        },
        XlScenario {
            name: name("x86_64-xl-bad-option", "aarch64-xl-bad-option"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["bogus=1"],
            // A failed agent ends its domain as crashed; dom0 reads it.
            shutdown: Some("crash"),
            steps: Vec::new(),
            checks: vec![
                Check::ErrorMentions(D1, "bogus"),
                verdict(D1, Verdict::Fail),
            ],
            xl: vec![XlCheck::NothingLost],
        },
        XlScenario {
            name: name("x86_64-xl-exception", "aarch64-xl-exception"),
            arch,
            memory_mib: 64,
            maxmem_mib: None,
            agent_opts: &["fault=unmapped"],
            // The exception handler ends a domU through Xen too.
            shutdown: Some("crash"),
            steps: Vec::new(),
            checks: vec![Check::Exception(D1), verdict(D1, Verdict::Fail)],
            xl: vec![XlCheck::NothingLost],
        },
    ];
    v.extend(service_scenarios(arch));
    if x86 {
        // memory < maxmem: populate-on-demand (x86 only: Xen 4.17 refuses it
        // on Arm at build time).
        v.insert(
            1,
            XlScenario {
                name: "x86_64-xl-pod",
                arch,
                memory_mib: 64,
                maxmem_mib: Some(128),
                agent_opts: &[],
                shutdown: Some("poweroff"),
                steps: Vec::new(),
                checks: with(
                    domu_map(arch, 128),
                    [
                        // Before: the map's 128 MiB against Xen's 64 + 17.
                        count(D1, "accounting", ("unaccounted", "-16384"), 1),
                        count(D1, "accounting", ("unaccounted", "0"), 1),
                        field(D1, "pod", "surplus", Is::Num(pages(64))),
                        field(D1, "pod", "target", Is::Num(pages(64) + sp)),
                        field(D1, "balloon", "phase", Is::Text("pod")),
                        field(D1, "balloon", "current", Is::Num(pages(64) + sp)),
                        field(D1, "balloon", "short", Is::Num(0)),
                    ],
                ),
                xl: vec![
                    XlCheck::ListMibAtStart(64),
                    XlCheck::ListMib(64),
                    agent_is_xen(),
                    XlCheck::XenPages(pages(64) + sp),
                    XlCheck::PodBacked,
                    XlCheck::NothingLost,
                ],
            },
        );
    }
    v
}

/// Every xl scenario, x86_64 first.
pub fn all() -> Vec<XlScenario> {
    let mut v = for_arch(Arch::X86_64);
    v.extend(for_arch(Arch::Aarch64));
    v
}

/// `None` if the peer's record `p` has every field of `want`, else the
/// first that differs.
fn peer_fields(p: &crate::rig::Record, want: &[(&str, String)]) -> Option<String> {
    want.iter()
        .find(|(k, v)| p.get(k) != Some(v.as_str()))
        .map(|(k, v)| format!("the peer's {k}= is {:?}, expected {v}", p.get(k)))
}

/// `None` if the job's (first) `xenmem-peer` run exited 0, else what it
/// did.
fn peer_exited_0(job: &XlJobResult) -> Option<String> {
    let exit = job.steps.iter().find(|r| r.topic == "peer-exit");
    (exit.and_then(|r| r.get("status")) != Some("0")).then(|| {
        format!(
            "the peer did not exit 0: {}",
            exit.map_or("no peer-exit record".into(), |r| r.to_string())
        )
    })
}

/// The last `topic` report's `key`, as a number.
fn last_number(l: &AgentLog, topic: &str, key: &str) -> Option<u64> {
    l.topic(topic)
        .filter_map(|r| r.get(key))
        .last()
        .and_then(parse_number)
}

/// The record of toolstack step `step`.
fn step_record(job: &XlJobResult, step: usize) -> Option<&crate::rig::Record> {
    let want = step.to_string();
    job.steps
        .iter()
        .find(|r| r.get("step") == Some(want.as_str()))
}

fn list_mib(r: &Option<crate::rig::Record>, want: u64, when: &str) -> Option<String> {
    let got = r
        .as_ref()
        .and_then(|r| r.get("mem_mib"))
        .and_then(parse_number);
    (got != Some(want)).then(|| format!("xl list says {got:?} MiB {when}, expected {want}"))
}

pub(crate) fn check_xl(
    c: &XlCheck,
    job: &XlJobResult,
    log: &AgentLog,
    res: &XlResult,
) -> Option<String> {
    let xen_num = |k: &str| {
        job.xen_pages
            .as_ref()
            .and_then(|r| r.get(k))
            .and_then(parse_number)
    };
    match *c {
        XlCheck::ListMib(want) => list_mib(&job.xl_list_shutdown, want, "after shutdown"),
        XlCheck::ListMibAtStart(want) => list_mib(&job.xl_list_created, want, "when made (paused)"),
        XlCheck::XenPagesIsLast { topic, key } => {
            let agent = last_number(log, topic, key);
            let xen = xen_num("nr_pages");
            match (agent, xen) {
                (Some(a), Some(x)) if a == x => None,
                _ => Some(format!(
                    "Xen's nr_pages (debug key q) is {xen:?}, the agent's last `report: {topic}` {key}= is {agent:?}"
                )),
            }
        }
        XlCheck::XenPages(want) => {
            let xen = xen_num("nr_pages");
            (xen != Some(want)).then(|| format!("Xen's nr_pages is {xen:?}, expected {want}"))
        }
        XlCheck::PodBacked => {
            let (e, c) = (xen_num("pod_entries"), xen_num("pod_cachesize"));
            match (e, c) {
                (Some(e), Some(c)) if e == c => None,
                _ => Some(format!(
                    "Xen's PoD entries {e:?} and cache size {c:?} differ: memory the guest may touch is not backed"
                )),
            }
        }
        XlCheck::StepPages { step, pages } => {
            let got = step_record(job, step)
                .filter(|r| r.topic == "xen-pages")
                .and_then(|r| r.num("nr_pages"));
            (got != Some(pages))
                .then(|| format!("step {step}: Xen's nr_pages is {got:?}, expected {pages}"))
        }
        XlCheck::StepPagesIsReport { step, topic, key } => {
            let got = step_record(job, step)
                .filter(|r| r.topic == "xen-pages")
                .and_then(|r| r.num("nr_pages"));
            let agent = log
                .topic(topic)
                .find_map(|r| r.get(key))
                .and_then(parse_number);
            match (got, agent) {
                (Some(g), Some(a)) if g == a => None,
                _ => Some(format!(
                    "step {step}: Xen's nr_pages is {got:?}, the agent's `report: {topic}` {key}= is {agent:?}"
                )),
            }
        }
        XlCheck::Reached { step, within_s } => match step_record(job, step) {
            Some(r) if r.topic == "reached" => {
                let after: f64 = r
                    .get("after_s")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::MAX);
                (after > within_s).then(|| {
                    format!("step {step}: reached after {after} s, the bound is {within_s} s")
                })
            }
            Some(r) => Some(format!("step {step}: {}", r.line)),
            None => Some(format!("step {step}: no record")),
        },
        XlCheck::CpuFlat { from, to } => {
            let cpu = |k| {
                step_record(job, k)
                    .filter(|r| r.topic == "cpu")
                    .and_then(|r| r.get("time_s"))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            match (cpu(from), cpu(to)) {
                (Some(a), Some(b)) if b - a < 0.05 => None,
                (a, b) => Some(format!(
                    "CPU time went from {a:?} s (step {from}) to {b:?} s (step {to}) while the agent waited"
                )),
            }
        }
        XlCheck::PeerGrant(sizes) => {
            let peer: Vec<_> = job
                .steps
                .iter()
                .filter(|r| r.topic == "peer-grant")
                .collect();
            let agent: Vec<_> = log.topic("dom0-peer-grant").collect();
            if peer.len() != sizes.len() || agent.len() != sizes.len() {
                return Some(format!(
                    "{} peer-grant records and {} dom0-peer-grant reports, expected {} rounds",
                    peer.len(),
                    agent.len(),
                    sizes.len()
                ));
            }
            for (i, (&n, (p, a))) in sizes.iter().zip(peer.iter().zip(&agent)).enumerate() {
                let want = [
                    ("pages", n.to_string()),
                    ("bad_words", "0".to_string()),
                    ("agent_checked", "yes".into()),
                    ("agent_ended", "yes".into()),
                    ("remap", "refused".into()),
                    ("never_granted", "refused".into()),
                    // Xen's copy of the agent's table, acquired by dom0.
                    ("table_bad", "0".into()),
                    ("table_in_use", n.to_string()),
                    ("table_freed", n.to_string()),
                ];
                if let Some(e) = peer_fields(p, &want) {
                    return Some(format!("round {}: {e}", i + 1));
                }
                if p.get("first_ref") != a.get("first_ref") || a.get("pages") != p.get("pages") {
                    return Some(format!(
                        "round {}: the peer mapped ref {:?} x {:?}, the agent granted {:?} x {:?}",
                        i + 1,
                        p.get("first_ref"),
                        p.get("pages"),
                        a.get("first_ref"),
                        a.get("pages")
                    ));
                }
            }
            peer_exited_0(job)
        }
        XlCheck::StepGrantsActive { step, dom, count } => {
            let r = job.steps.iter().find(|r| {
                r.topic == "gnttab-active" && r.get("step") == Some(step.to_string().as_str())
            });
            let Some(dom) = dom.or(job.domid) else {
                return Some("the job's domain has no domid".into());
            };
            let got = r
                .and_then(|r| r.get(&format!("d{dom}")))
                .and_then(parse_number);
            (got != Some(count)).then(|| {
                format!(
                    "Xen's active grant entries of d{dom} at step {step} (debug key g): {got:?}, expected {count}"
                )
            })
        }
        XlCheck::PeerEndedMidUse => {
            let p = job.steps.iter().find(|r| r.topic == "peer-gntalloc-end");
            match p {
                Some(p)
                    if p.get("agent_mapped") == Some("yes")
                        && p.get("ended") == Some("yes")
                        && p.get("agent_released") == Some("yes") =>
                {
                    None
                }
                _ => Some(format!(
                    "the peer did not end its grants under the agent's mapping: {:?}",
                    p.map(|r| r.to_string())
                )),
            }
        }
        XlCheck::PeerKilled => {
            let table = job.steps.iter().find(|r| r.topic == "peer-table");
            if table.and_then(|r| r.get("granted_entries")) != Some("0") {
                return Some(format!(
                    "after the peer died, the agent's grant table (acquired by dom0) still grants: {:?}",
                    table.map(|r| r.to_string())
                ));
            }
            let p = job.steps.iter().find(|r| r.topic == "peer-grant-die");
            let exit = job.steps.iter().find(|r| r.topic == "peer-exit");
            match (p, exit) {
                (Some(p), Some(e))
                    if p.get("bad_words") == Some("0")
                        && p.get("agent_checked") == Some("yes")
                        && e.get("status") == Some("137") =>
                {
                    None
                }
                _ => Some(format!(
                    "the peer did not map, check and die by SIGKILL: {:?} / {:?}",
                    p.map(|r| r.to_string()),
                    exit.map(|r| r.to_string())
                )),
            }
        }
        XlCheck::PeerChannel => {
            let p = job.steps.iter().find(|r| r.topic == "peer-channel");
            let a = log.topic("dom0-peer-channel").next();
            let ev = log.topic("dom0-peer-events").next();
            let (Some(p), Some(a), Some(ev)) = (p, a, ev) else {
                return Some(
                    "no peer-channel record, dom0-peer-channel or dom0-peer-events report".into(),
                );
            };
            let n = |r: Option<&str>| r.and_then(parse_number).unwrap_or(0);
            if p.get("remote_port") != a.get("port") {
                Some(format!(
                    "the peer bound port {:?}, the agent offered {:?}",
                    p.get("remote_port"),
                    a.get("port")
                ))
            } else if p.get("bind_event") != Some("yes") {
                // Otherwise Xen's event at bind may be among those counted.
                Some(format!(
                    "the peer did not take Xen's event at bind apart: {p}"
                ))
            } else if n(p.get("events_sent")) == 0
                || n(p.get("events_received")) == 0
                || n(ev.get("sent")) == 0
                || n(ev.get("received")) == 0
            {
                Some(format!(
                    "events not both ways: peer {p}, agent sent={:?} received={:?}",
                    ev.get("sent"),
                    ev.get("received")
                ))
            } else {
                None
            }
        }
        XlCheck::PeerForeign(n) => {
            let p = job.steps.iter().find(|r| r.topic == "peer-foreign");
            let a = log.topic("dom0-peer-foreign").next();
            let (Some(p), Some(a)) = (p, a) else {
                return Some("no peer-foreign record or no dom0-peer-foreign report".into());
            };
            let want = [
                ("pages", n.to_string()),
                ("bad_words", "0".to_string()),
                ("agent_released", "yes".into()),
                ("frames_refused", n.to_string()),
                ("remap", "refused".into()),
            ];
            if let Some(e) = peer_fields(p, &want) {
                return Some(e);
            }
            if p.get("first_gfn") != a.get("first_gfn") {
                return Some(format!(
                    "the peer mapped from GFN {:?}, the agent filled from {:?}",
                    p.get("first_gfn"),
                    a.get("first_gfn")
                ));
            }
            peer_exited_0(job)
        }
        XlCheck::PeerGntalloc(n) => {
            let p = job.steps.iter().find(|r| r.topic == "peer-gntalloc");
            let a = log.topic("dom0-peer-gntalloc").next();
            let (Some(p), Some(a)) = (p, a) else {
                return Some("no peer-gntalloc record or no dom0-peer-gntalloc report".into());
            };
            let want = [
                ("pages", n.to_string()),
                ("bad_words", "0".to_string()),
                ("agent_released", "yes".into()),
                ("realloc", "ok".into()),
            ];
            if let Some(e) = peer_fields(p, &want) {
                return Some(e);
            }
            if p.get("first_ref") != a.get("first_ref") {
                return Some(format!(
                    "the peer granted from ref {:?}, the agent mapped from {:?}",
                    p.get("first_ref"),
                    a.get("first_ref")
                ));
            }
            peer_exited_0(job)
        }
        XlCheck::DestroyedEarly => (!job.steps.iter().any(|r| r.topic == "destroyed-early"))
            .then(|| "no `destroyed-early` record: xl destroy was not run mid-way".into()),
        XlCheck::NothingLost => {
            let (before, after) = (res.free_at_start_mib(), job.free_after_mib);
            match (before, after) {
                (Some(b), Some(a)) if a == b => None,
                _ => Some(format!(
                    "xl info free_memory was {before:?} MiB before, {after:?} MiB after xl destroy"
                )),
            }
        }
    }
}

/// What is wrong with scenario `s` in the rig boot `res` (empty: it passed).
pub fn evaluate(s: &XlScenario, res: &XlResult) -> Vec<String> {
    let mut out = Vec::new();
    let Some(job) = res.job(s.name) else {
        out.push(format!("the rig ran no job {} ({})", s.name, res.end));
        return out;
    };
    if let Some(f) = &job.create_failed {
        out.push(format!("xl create failed: {}", f.line));
        return out;
    }
    if job.timed_out {
        out.push("the domain did not shut down in time (job-timeout)".into());
    }
    let Some(domid) = job.domid else {
        out.push("no domid for the job".into());
        return out;
    };
    if job.reason() != s.shutdown {
        out.push(format!(
            "shutdown reason (xl list -v) {:?}, expected {:?}",
            job.reason(),
            s.shutdown
        ));
    }
    let source = Source(domid as u16);
    let log = res.logs.get(source).clone();
    if !log.malformed.is_empty() {
        out.push(format!("malformed report lines: {:?}", log.malformed));
    }
    let mut logs = Logs::default();
    logs.by_source.insert(D1, log.clone());
    for c in &s.checks {
        if let Some(e) = check_one(c, &logs) {
            out.push(e.replace("[d1]", &format!("[d{domid}]")));
        }
    }
    for e in unexpected_errors(&s.checks, D1, &log) {
        out.push(e.replace("[d1]", &format!("[d{domid}]")));
    }
    for c in &s.xl {
        if let Some(e) = check_xl(c, job, &log, res) {
            out.push(e);
        }
    }
    if max_applies(s, &log) {
        out.extend(max_from_toolstack(job, &log));
    }
    out
}

/// Whether [`max_from_toolstack`] applies: always, except to an agent that
/// is meant to fail and stopped before it read its maximum (a bad command
/// line). A passing agent that reports no maximum fails it.
pub(crate) fn max_applies(s: &XlScenario, log: &AgentLog) -> bool {
    let meant_to_fail = s
        .checks
        .iter()
        .any(|c| matches!(c, Check::Verdict(_, Verdict::Fail)));
    let reported = log.topic("reservation").any(|r| r.get("max").is_some());
    reported || !meant_to_fail
}

/// libxl's `LIBXL_MAXMEM_CONSTANT` (KiB): what it adds to a domain's
/// target when it sets Xen's maximum (`libxl__arch_extra_memory`; the same
/// on Arm without ACPI, measured).
const LIBXL_MAXMEM_CONSTANT_KIB: u64 = 1024;

/// The maximum reservation the agent read at start (`report: reservation
/// max=`) is the one the toolstack set: `xl list -l`'s `target_memkb` plus
/// libxl's constant (libxl_dom.c: `xc_domain_setmaxmem(target_memkb +
/// extra)`), in pages. Every created job must have the `xl list -l` record.
pub(crate) fn max_from_toolstack(job: &XlJobResult, log: &AgentLog) -> Option<String> {
    let Some(l) = &job.xl_list_long else {
        return Some("no `xl list -l` record for the domain".into());
    };
    let target = l.num("target_memkb");
    let Some(agent) = log
        .topic("reservation")
        .next()
        .and_then(|r| r.get("max"))
        .and_then(parse_number)
    else {
        return Some("the agent reported no maximum (`report: reservation max=`)".into());
    };
    let want = target.map(|t| (t + LIBXL_MAXMEM_CONSTANT_KIB) / 4);
    (want != Some(agent)).then(|| {
        format!(
            "xl list -l says target_memkb={target:?}, so Xen's maximum is {want:?} pages; the agent read max={agent}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maximum_the_toolstack_set() {
        let rec = |l: &str| {
            crate::rig::parse_record(l, Duration::ZERO)
                .unwrap()
                .unwrap()
        };
        let mut job = XlJobResult::default();
        let mut log = AgentLog::default();
        log.push(
            crate::decode::Level::Info,
            "report: reservation current=16388 max=16640 maximum_gpfn=0x43fff",
        );
        assert!(max_from_toolstack(&job, &log)
            .unwrap()
            .contains("no `xl list -l`"));
        job.xl_list_long = Some(rec(
            "xmrig: xl-list-long when=created max_memkb=65536 target_memkb=65536",
        ));
        assert_eq!(max_from_toolstack(&job, &log), None);
        let mut wrong = AgentLog::default();
        wrong.push(
            crate::decode::Level::Info,
            "report: reservation current=16388 max=16639",
        );
        assert!(max_from_toolstack(&job, &wrong)
            .unwrap()
            .contains("Xen's maximum is Some(16640) pages; the agent read max=16639"));
        // An agent that reports no maximum fails it, unless it is meant to
        // fail and stopped before its survey (found by `tamper`: the check
        // passed on x86_64-xl-bad-option whatever `xl list -l` said).
        assert!(max_from_toolstack(&job, &AgentLog::default())
            .unwrap()
            .contains("no maximum"));
        let bad = all()
            .into_iter()
            .find(|s| s.name == "x86_64-xl-bad-option")
            .unwrap();
        assert!(!max_applies(&bad, &AgentLog::default()));
        assert!(max_applies(&bad, &log));
        let survey = all()
            .into_iter()
            .find(|s| s.name == "x86_64-xl-survey")
            .unwrap();
        assert!(max_applies(&survey, &AgentLog::default()));
    }

    #[test]
    fn names_are_unique_and_name_their_architecture() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for s in &all {
            assert!(s.name.starts_with(&format!("{}-xl-", s.arch)), "{}", s.name);
            let j = s.job();
            assert!(j.agent_opts.iter().any(|o| o == "exit=shutdown"));
            assert_eq!(
                j.agent_opts.iter().any(|o| o == "domid=@DOMID@"),
                s.arch == Arch::Aarch64
            );
            crate::rig::check_job(&j).unwrap();
        }
        assert!(all
            .iter()
            .all(|s| s.arch == Arch::X86_64 || s.maxmem_mib.is_none()));
    }
}
