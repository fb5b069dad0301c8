//! The boot scenarios of `cargo xtask test`: what each boots and what its
//! reports and exit must show.
//!
//! Each scenario is data: an architecture, a mode, agent options, the
//! expected exit, and a list of [`Check`]s on the agents' parsed reports
//! (see [`crate::report`] for the protocol). Adjust assertions here.

use crate::boot::{Arch, BootResult, Exit, Mode};
use crate::decode::Source;
use crate::report::{parse_number, AgentLog, Logs, Verdict};

const D0: Source = Source::D0;
const D1: Source = Source::D1;

/// Pages of 4 KiB in `mib` MiB.
const fn pages_of_mib(mib: u64) -> u64 {
    mib * 256
}

/// x86_64 dom0's memory: `dom0_mem=256M,max:256M` on Xen's command line.
const X86_DOM0_PAGES: u64 = pages_of_mib(256);
/// aarch64 dom0's memory: `dom0_mem=32M`.
const ARM_DOM0_PAGES: u64 = pages_of_mib(32);
/// A dom0less domU's memory: `memory = <0 131072>` (KiB).
const ARM_DOMU_PAGES: u64 = crate::boot::DOMU_MEMORY_KIB / 4;

/// How a value must look.
#[derive(Clone, Copy, Debug)]
pub enum Is {
    /// Exactly this text.
    Text(&'static str),
    /// This number (decimal or 0x-hex in the report).
    Num(u64),
    /// A version whose major.minor is this (`4.17`, `4.17.7`, ...).
    Version(&'static str),
    /// Any value.
    Present,
    /// Any number (decimal or 0x-hex).
    AnyNum,
}

impl Is {
    fn matches(self, v: &str) -> bool {
        match self {
            Is::Text(t) => v == t,
            Is::Num(n) => parse_number(v) == Some(n),
            Is::Version(mm) => v == mm || v.strip_prefix(mm).is_some_and(|r| r.starts_with('.')),
            Is::Present => true,
            Is::AnyNum => parse_number(v).is_some(),
        }
    }
}

/// One assertion on a boot.
#[derive(Clone, Debug)]
pub enum Check {
    /// The source printed this verdict (its last one).
    Verdict(Source, Verdict),
    /// Every `topic` report of the source that has `key` has a value that
    /// is `is`, and there is one.
    Field {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// Field name.
        key: &'static str,
        /// Expected value.
        is: Is,
    },
    /// Every `topic` report of the source whose field `when.0` is `when.1`
    /// and that has `key` has a value that is `is`, and there is one.
    FieldWhere {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// Which reports: this field has this value.
        when: (&'static str, &'static str),
        /// Field name.
        key: &'static str,
        /// Expected value.
        is: Is,
    },
    /// At least `at_least` reports of `topic` have `key=value`.
    Count {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// Field name.
        key: &'static str,
        /// Field value.
        value: &'static str,
        /// Minimum number.
        at_least: usize,
    },
    /// Some error-level message mentions `text`.
    ErrorMentions(Source, &'static str),
    /// An `exception: <vector name> (vector N) ... fault_addr=...` line.
    Exception(Source),
    /// An exception line (as [`Check::Exception`]) whose `fault_addr` is the
    /// number in field `key` of the first `topic` report.
    ExceptionAt {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// Field name.
        key: &'static str,
    },
    /// Every `topic` report of the source that has `key` has a value that is
    /// `is`, and there is at least one.
    Every {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// Field name.
        key: &'static str,
        /// Expected value.
        is: Is,
    },
    /// In the first `topic` report, fields `a` and `b` hold the same number.
    Equal {
        /// Source.
        src: Source,
        /// Report topic.
        topic: &'static str,
        /// One field.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The agent's image (`report: image start= end=`) lies entirely in
    /// `reserved:image` / `reserved:heap` regions of its region table.
    ImageReserved(Source),
    /// The first `topic` report with `key` of one source and that of another
    /// (or the same) source hold the same number.
    Same {
        /// One side: source, topic, field.
        a: (Source, &'static str, &'static str),
        /// The other.
        b: (Source, &'static str, &'static str),
    },
    /// No error-level message mentions `text`.
    NoErrorMentions(Source, &'static str),
    /// The `report: table-region` lines tile the address space: the first
    /// starts at 0, each starts where the last ended, and there are as many
    /// as `report: table regions=` says.
    TableTiles(Source),
    /// At the agent's `xen-view` pause `point`, Xen's own `nr_pages` for
    /// the domain (debug key `q`) is `pages`: a number from the machine's
    /// configuration or the scenario's options, not from the agent.
    XenPagesAt {
        /// Source.
        src: Source,
        /// The pause's `point=`.
        point: &'static str,
        /// The pages Xen must count.
        pages: u64,
    },
    /// The source's `report: mapping ... state=made|released` lines balance:
    /// every mapping made (kind, dom, gfn, va) is released after it, nothing
    /// is released that was not made, and each of `kinds` was made at least
    /// once.
    MappingsBalanced {
        /// Source.
        src: Source,
        /// Kinds that must appear.
        kinds: &'static [&'static str],
    },
}

impl Check {
    /// The source the check is about.
    pub fn source(&self) -> Source {
        match *self {
            Check::Verdict(src, _)
            | Check::Field { src, .. }
            | Check::FieldWhere { src, .. }
            | Check::Count { src, .. }
            | Check::ErrorMentions(src, _)
            | Check::Exception(src)
            | Check::ExceptionAt { src, .. }
            | Check::ImageReserved(src)
            | Check::NoErrorMentions(src, _)
            | Check::TableTiles(src)
            | Check::XenPagesAt { src, .. }
            | Check::MappingsBalanced { src, .. }
            | Check::Every { src, .. }
            | Check::Equal { src, .. } => src,
            Check::Same { a, .. } => a.0,
        }
    }
}

pub(crate) fn verdict(src: Source, v: Verdict) -> Check {
    Check::Verdict(src, v)
}

pub(crate) fn field(src: Source, topic: &'static str, key: &'static str, is: Is) -> Check {
    Check::Field {
        src,
        topic,
        key,
        is,
    }
}

pub(crate) fn field_where(
    src: Source,
    topic: &'static str,
    when: (&'static str, &'static str),
    key: &'static str,
    is: Is,
) -> Check {
    Check::FieldWhere {
        src,
        topic,
        when,
        key,
        is,
    }
}

pub(crate) fn every(src: Source, topic: &'static str, key: &'static str, is: Is) -> Check {
    Check::Every {
        src,
        topic,
        key,
        is,
    }
}

pub(crate) fn count(
    src: Source,
    topic: &'static str,
    kv: (&'static str, &'static str),
    n: usize,
) -> Check {
    Check::Count {
        src,
        topic,
        key: kv.0,
        value: kv.1,
        at_least: n,
    }
}

/// The exit a scenario expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectExit {
    /// The agent's exit path reported pass.
    Pass,
    /// The agent's exit path reported fail.
    Fail,
}

/// One boot scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name (also the log file's).
    pub name: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// Which agents.
    pub mode: Mode,
    /// Options for every agent.
    pub agent_opts: &'static [&'static str],
    /// The expected exit.
    pub exit: ExpectExit,
    /// The assertions.
    pub checks: Vec<Check>,
}

/// What every agent that ran normally reports.
fn common(src: Source) -> Vec<Check> {
    vec![
        field(src, "xen", "version", Is::Version("4.17")),
        // The domain id the agent states is the one Xen labels its console
        // lines with (`(d1)`; dom0's unlabelled), not only what the runner
        // put on its command line.
        field(src, "domain", "domid", Is::Num(u64::from(src.0))),
        field(src, "image", "start", Is::Present),
        field(src, "image", "end", Is::Present),
        count(src, "region", ("kind", "ram"), 1),
        // The region table (issue 3): every page Xen counts is in it, the
        // image is reserved there, and there is a hole for mappings.
        every(src, "accounting", "unaccounted", Is::Num(0)),
        count(src, "table-region", ("kind", "hole"), 1),
        Check::TableTiles(src),
        Check::ImageReserved(src),
    ]
}

/// An x86_64 PVH dom0 with `dom0_mem=256M,max:256M`.
pub(crate) fn x86_dom0(src: Source) -> Vec<Check> {
    let mut c = common(src);
    c.extend([
        field(src, "domain", "domid", Is::Num(0)),
        field(src, "domain", "source", Is::Text("cpuid")),
        field(src, "domain", "privileged", Is::Text("yes")),
        field(src, "memmap", "source", Is::Text("e820")),
        field(src, "reservation", "current", Is::Num(X86_DOM0_PAGES)),
    ]);
    // [0, 4 GiB) is mapped wholesale at boot; everything but dom0's RAM
    // leaves, in place (x86 splits live pages): the BIOS areas and VGA hole
    // below 1 MiB, then ACPI, the unusable space past dom0's memory and the
    // device gap up to 4 GiB. The boot stack's guard page stays unmapped.
    c.extend(identity_trim(src, 2, 0));
    c.push(field(src, "identity-trim", "unmapped_at_boot", Is::Num(1)));
    c
}

/// After start-up only the guest's memory is identity-mapped: every kept
/// frame translates to itself, samples of everything else to nothing, in
/// `ranges` runs and `switches` root switches.
fn identity_trim(src: Source, ranges: u64, switches: u64) -> Vec<Check> {
    vec![
        field(src, "identity-trim", "ranges", Is::Num(ranges)),
        field(src, "identity-trim", "root_switches", Is::Num(switches)),
        field(src, "identity-trim", "kept_mapped", Is::Text("yes")),
        field(src, "identity-trim", "others_unmapped", Is::Text("yes")),
        field(src, "identity-trim", "sampled", Is::AnyNum),
        // The page-table self-test ran on the trimmed tables (its failure
        // fails the agent's verdict).
        field(src, "paging-selftest", "frames", Is::Num(3)),
    ]
}

/// An aarch64 dom0 with `dom0_mem=32M`.
fn arm_dom0(src: Source) -> Vec<Check> {
    let mut c = common(src);
    c.extend([
        field(src, "domain", "domid", Is::Num(0)),
        field(src, "domain", "source", Is::Text("cmdline")),
        field(src, "domain", "privileged", Is::Text("yes")),
        field(src, "memmap", "source", Is::Text("fdt")),
        field(src, "memmap", "ram_pages", Is::Num(ARM_DOM0_PAGES)),
        field(src, "reservation", "current", Is::Num(ARM_DOM0_PAGES)),
        field(src, "reservation", "max", Is::Num(ARM_DOM0_PAGES)),
        count(src, "region", ("kind", "hypervisor"), 1),
    ]);
    // The first GiB's device blocks are cleared in place; the boot map's
    // 1 GiB block holding RAM is split in a copy and switched to; the rest
    // up to 511 GiB goes whole.
    c.extend(identity_trim(src, 2, 1));
    c
}

/// An aarch64 dom0less domU (domain 1) with 128 MiB.
pub(crate) fn arm_domu(src: Source) -> Vec<Check> {
    arm_domu_of(src, ARM_DOMU_PAGES, 2)
}

/// An aarch64 dom0less domU (domain 1) with `pages` pages, whose identity
/// map keeps `trim_ranges` runs after the start-up trim.
pub(crate) fn arm_domu_of(src: Source, pages: u64, trim_ranges: u64) -> Vec<Check> {
    let mut c = common(src);
    c.extend([
        field(src, "domain", "domid", Is::Num(1)),
        field(src, "domain", "source", Is::Text("cmdline")),
        field(src, "domain", "privileged", Is::Text("no")),
        field(src, "memmap", "source", Is::Text("fdt")),
        field(src, "memmap", "ram_pages", Is::Num(pages)),
        field(src, "reservation", "current", Is::Num(pages)),
        count(src, "region", ("kind", "hypervisor"), 1),
    ]);
    c.extend(identity_trim(src, trim_ranges, 1));
    c
}

/// `grant=self`: the agent's own table (one frame, Xen's default maximum of
/// 64), its first grant (ref 8, after the reserved ones), that grant mapped
/// under the real domid (`DOMID_SELF`: bad_domain), refused to end while
/// mapped, copied through before and after. On x86 the granted page leaves
/// its own GFN for good (it reads all-ones, and a copy through the grant
/// then finds no page); on Arm both stay visible.
pub(crate) fn grant_self(src: Source, x86: bool) -> Vec<Check> {
    let mut c = vec![
        field(src, "grant-table", "frames", Is::Num(1)),
        field(src, "grant-table", "max", Is::Num(64)),
        field(src, "grant-table", "available", Is::Num(504)),
        field(src, "grant-issue", "ref", Is::Num(8)),
        field(
            src,
            "grant-self",
            "map_domid_self",
            Is::Text("GNTST_bad_domain"),
        ),
        field(src, "grant-self", "pattern", Is::Text("ok")),
        // GuestMemory: the same word by guest-physical address through the
        // live grant mapping; a read running past it into a hole refused.
        field(src, "guestmem", "read", Is::Text("ok")),
        field(src, "grant-self", "wrote", Is::Text("yes")),
        field(src, "grant-self", "reading", Is::Text("yes")),
        field(src, "grant-self", "writing", Is::Text("yes")),
        field(src, "grant-self", "end_while_mapped", Is::Text("in-use")),
        field(src, "grant-self", "copy_before", Is::Text("GNTST_okay")),
        field(src, "grant-self", "copied", Is::Text("yes")),
        verdict(src, Verdict::Pass),
    ];
    if x86 {
        c.extend([
            field(src, "grant-self", "own_gfn_during", Is::Num(u64::MAX)),
            field(src, "grant-self", "own_gfn_after", Is::Num(u64::MAX)),
            field(src, "grant-self", "copy_after", Is::Text("GNTST_bad_page")),
        ]);
    } else {
        c.extend([
            field(src, "grant-self", "own_gfn_during", Is::Num(0x5eed)),
            field(src, "grant-self", "own_gfn_after", Is::Num(0x5eed)),
            field(src, "grant-self", "copy_after", Is::Text("GNTST_okay")),
        ]);
    }
    c
}

/// The first `report: balloon` line (phase=first) has `key` = `is`.
pub(crate) fn first_balloon(src: Source, key: &'static str, is: Is) -> Check {
    field_where(src, "balloon", ("phase", "first"), key, is)
}

/// Balloon down to `low` pages and back to `high`: Xen's count and the
/// engine's agree at both steps, the memory that came back is usable, exchange is refused with the offered page kept, a contiguous
/// buffer is made and checked, and Xen's count is back where it started.
pub(crate) fn balloon_round_trip(src: Source, low: u64, high: u64) -> Vec<Check> {
    vec![
        count(src, "balloon", ("phase", "first"), 1),
        count(src, "balloon", ("phase", "then"), 1),
        first_balloon(src, "current", Is::Num(low)),
        first_balloon(src, "expected", Is::Num(low)),
        Check::Equal {
            src,
            topic: "balloon",
            a: "current",
            b: "target",
        },
        every(src, "balloon", "short", Is::Num(0)),
        count(src, "balloon", ("current", leak_str(high)), 1),
        field(src, "balloon-check", "pages", Is::Num(high - low)),
        // `zeroed` is reported, not asserted: Xen does not scrub the pages a
        // running domain frees, so repopulated memory may hold stale data.
        field(src, "balloon-check", "zeroed", Is::Present),
        field(src, "balloon-check", "pattern", Is::Text("ok")),
        field(src, "exchange", "supported", Is::Text("no")),
        field(src, "exchange", "kept", Is::Text("yes")),
        field(src, "contiguous", "order", Is::Num(9)),
        field(src, "contiguous", "pattern", Is::Text("ok")),
        field(src, "reservation-after", "current", Is::Num(high)),
        // Xen's own count, from the machine's configuration and the
        // scenario's targets: down at the first step, back at the second,
        // all there at the end.
        Check::XenPagesAt {
            src,
            point: "start",
            pages: high,
        },
        Check::XenPagesAt {
            src,
            point: "first",
            pages: low,
        },
        Check::XenPagesAt {
            src,
            point: "then",
            pages: high,
        },
        Check::XenPagesAt {
            src,
            point: "end",
            pages: high,
        },
    ]
}

/// After the first balloon step, all `pages` ballooned frames are out of the
/// identity map (checked frame by frame with the walker's translate, after
/// `switches` root switches), and after the second every repopulated frame
/// is mapped at its own address again.
pub(crate) fn identity_round_trip(src: Source, pages: u64, switches: u64) -> Vec<Check> {
    vec![
        count(src, "identity-map", ("phase", "first"), 1),
        every(src, "identity-map", "ballooned_unmapped", Is::Text("yes")),
        field_where(
            src,
            "identity-map",
            ("phase", "first"),
            "checked",
            Is::Num(pages),
        ),
        field_where(
            src,
            "identity-map",
            ("phase", "first"),
            "root_switches",
            Is::Num(switches),
        ),
        field(
            src,
            "identity-map-back",
            "repopulated_mapped",
            Is::Text("yes"),
        ),
        field(src, "identity-map-back", "checked", Is::Num(pages)),
    ]
}

/// A number as the `&'static str` that [`Check::Count`] compares (the
/// scenarios' page counts are few and fixed).
fn leak_str(n: u64) -> &'static str {
    Box::leak(n.to_string().into_boxed_str())
}

pub(crate) fn with(mut a: Vec<Check>, b: impl IntoIterator<Item = Check>) -> Vec<Check> {
    a.extend(b);
    a
}

/// Every scenario, in the order `cargo xtask test` runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "x86_64-dom0",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &[],
            exit: ExpectExit::Pass,
            checks: with(x86_dom0(D0), [verdict(D0, Verdict::Pass)]),
        },
        Scenario {
            name: "aarch64-dom0",
            arch: Arch::Aarch64,
            mode: Mode::Dom0,
            agent_opts: &[],
            exit: ExpectExit::Pass,
            checks: with(arm_dom0(D0), [verdict(D0, Verdict::Pass)]),
        },
        Scenario {
            name: "aarch64-domu",
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            agent_opts: &[],
            exit: ExpectExit::Pass,
            checks: with(arm_domu(D1), [verdict(D1, Verdict::Pass)]),
        },
        Scenario {
            name: "aarch64-both",
            arch: Arch::Aarch64,
            mode: Mode::Both,
            agent_opts: &[],
            exit: ExpectExit::Pass,
            checks: with(
                with(arm_dom0(D0), arm_domu(D1)),
                [
                    field(D0, "peer", "domid", Is::Num(1)),
                    field(D0, "peer", "shutdown", Is::Text("poweroff")),
                    verdict(D1, Verdict::Pass),
                    verdict(D0, Verdict::Pass),
                ],
            ),
        },
        Scenario {
            name: "x86_64-grant-self",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["grant=self"],
            exit: ExpectExit::Pass,
            checks: with(x86_dom0(D0), grant_self(D0, true)),
        },
        Scenario {
            name: "aarch64-grant-self",
            arch: Arch::Aarch64,
            mode: Mode::Dom0,
            agent_opts: &["grant=self"],
            exit: ExpectExit::Pass,
            checks: with(arm_dom0(D0), grant_self(D0, false)),
        },
        Scenario {
            name: "aarch64-grant-exchange",
            arch: Arch::Aarch64,
            mode: Mode::Both,
            agent_opts: &["grant-xchg=8"],
            exit: ExpectExit::Pass,
            checks: with(
                with(arm_dom0(D0), arm_domu(D1)),
                [
                    // The domU grants a page to dom0: the first free ref.
                    field(D1, "grant-offer", "ref", Is::Num(8)),
                    field(D1, "grant-offer", "dom", Is::Num(0)),
                    // Dom0 maps it, retrying while the domU has not issued it
                    // yet (Xen: general_error, not bad_gntref, for an entry
                    // inside the table that is not granted).
                    field(D0, "grant-map", "peer", Is::Num(1)),
                    field(D0, "grant-map", "ref", Is::Num(8)),
                    field(D0, "grant-map", "pattern", Is::Text("ok")),
                    field(D0, "grant-map", "wrote", Is::Text("yes")),
                    field(D0, "grant-map", "copy", Is::Text("ok")),
                    field(D0, "grant-map", "released", Is::Text("yes")),
                    // A batch with bad refs: both named, the good one undone.
                    field(D0, "grant-bad-batch", "refused", Is::Num(2)),
                    field(D0, "grant-bad-batch", "first_ref", Is::Num(600)),
                    field(D0, "grant-bad-batch", "first", Is::Text("GNTST_bad_gntref")),
                    field(D0, "grant-bad-batch", "second_ref", Is::Num(9)),
                    field(
                        D0,
                        "grant-bad-batch",
                        "second",
                        Is::Text("GNTST_general_error"),
                    ),
                    field(D0, "grant-bad-batch", "holes_kept", Is::Text("yes")),
                    field(
                        D0,
                        "grant-bad-copy",
                        "first",
                        Is::Text("GNTST_bad_copy_arg"),
                    ),
                    field(D0, "grant-bad-copy", "second", Is::Text("GNTST_bad_page")),
                    // Dom0 acquires the domU's grant table (read-only,
                    // after querying its size: Xen's default 64 frames)
                    // and reads entry 8: access permitted to dom0 and in
                    // use by it (reading|writing: dom0 has it mapped), for
                    // the frame the domU says it granted.
                    field(D0, "peer-gnttab", "domid", Is::Num(1)),
                    field(D0, "peer-gnttab", "frames_max", Is::Num(64)),
                    field(D0, "peer-gnttab", "frame_index", Is::Num(0)),
                    field(D0, "peer-gnttab", "entry_ref", Is::Num(8)),
                    field(D0, "peer-gnttab", "flags", Is::Num(0x19)),
                    field(D0, "peer-gnttab", "permit", Is::Text("yes")),
                    field(D0, "peer-gnttab", "entry_domid", Is::Num(0)),
                    field(D0, "peer-gnttab", "released", Is::Text("yes")),
                    Check::Same {
                        a: (D0, "peer-gnttab", "frame"),
                        b: (D1, "grant-offer", "gfn"),
                    },
                    // Dom0 foreign-maps that frame of the domU: the same
                    // pattern, and what dom0 writes through the grant shows.
                    field(D0, "peer-foreign", "domid", Is::Num(1)),
                    field(D0, "peer-foreign", "frames", Is::Num(1)),
                    field(D0, "peer-foreign", "pattern", Is::Text("ok")),
                    field(D0, "peer-foreign", "writeback", Is::Text("ok")),
                    field(D0, "peer-foreign", "released", Is::Text("yes")),
                    Check::Same {
                        a: (D0, "peer-foreign", "gfn"),
                        b: (D1, "grant-offer", "gfn"),
                    },
                    // Every mapping is listed made and released, and nothing
                    // is left: the window is empty, the holes are back, and
                    // Xen's count still matches the table (`accounting`).
                    Check::MappingsBalanced {
                        src: D0,
                        kinds: &["grant", "gnttab", "foreign"],
                    },
                    Check::MappingsBalanced {
                        src: D1,
                        kinds: &["own-gnttab"],
                    },
                    Check::Same {
                        a: (D0, "mapping", "gfn"),
                        b: (D0, "grant-map", "gfn"),
                    },
                    Check::Same {
                        a: (D1, "mapping", "gfn"),
                        b: (D1, "grant-offer", "table_gfn"),
                    },
                    field(D0, "mappings-after", "window_pages", Is::Num(0)),
                    field(D1, "mappings-after", "window_pages", Is::Num(0)),
                    Check::Equal {
                        src: D0,
                        topic: "mappings-after",
                        a: "hole_pages",
                        b: "hole_pages_before",
                    },
                    Check::Equal {
                        src: D1,
                        topic: "mappings-after",
                        a: "hole_pages",
                        b: "hole_pages_before",
                    },
                    Check::NoErrorMentions(D0, "leaked"),
                    Check::NoErrorMentions(D1, "leaked"),
                    // The domU sees dom0's answer and ends the grant.
                    field(D1, "grant-offer-done", "answered", Is::Text("yes")),
                    field(D1, "grant-offer-done", "peer_wrote", Is::Text("ok")),
                    field(D1, "grant-offer-done", "end_access", Is::Text("ok")),
                    field(D0, "peer", "shutdown", Is::Text("poweroff")),
                    verdict(D1, Verdict::Pass),
                    verdict(D0, Verdict::Pass),
                ],
            ),
        },
        Scenario {
            name: "x86_64-balloon",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &[
                "balloon=192M",
                "balloon-then=256M",
                "contig=2M",
                "contig-bits=32",
            ],
            exit: ExpectExit::Pass,
            checks: with(
                x86_dom0(D0),
                balloon_round_trip(D0, X86_DOM0_PAGES - pages_of_mib(64), X86_DOM0_PAGES)
                    .into_iter()
                    .chain([
                        // 64 MiB in 2 MiB extents, one hypercall (and one query).
                        first_balloon(D0, "order9", Is::Num(32)),
                        first_balloon(D0, "hypercalls", Is::Num(2)),
                        field(D0, "engine", "max_order", Is::Num(18)),
                        field(D0, "contiguous", "method", Is::Text("repopulate")),
                        field(D0, "contiguous", "bits", Is::Num(32)),
                        // Xen's M2P table, read by the privileged agent: the
                        // buffer is machine-contiguous and below 4 GiB, and
                        // its bus address is reported.
                        field(D0, "contiguous-m2p", "frames", Is::Num(512)),
                        field(D0, "contiguous-m2p", "contiguous", Is::Text("yes")),
                        field(D0, "contiguous-m2p", "below_4g", Is::Text("yes")),
                        field(D0, "contiguous", "machine", Is::AnyNum),
                        verdict(D0, Verdict::Pass),
                    ])
                    // The 64 MiB leave the boot identity map (2 MiB pages
                    // cleared in place) and come back.
                    .chain(identity_round_trip(D0, pages_of_mib(64), 0)),
            ),
        },
        Scenario {
            name: "aarch64-domu-balloon",
            arch: Arch::Aarch64,
            mode: Mode::DomU,
            // 65 MiB: 63 MiB go, in 31 whole 2 MiB blocks and 256 pages of
            // a partial one.
            agent_opts: &["balloon=65M", "balloon-then=128M", "contig=2M"],
            exit: ExpectExit::Pass,
            checks: with(
                arm_domu(D1),
                balloon_round_trip(D1, ARM_DOMU_PAGES - pages_of_mib(63), ARM_DOMU_PAGES)
                    .into_iter()
                    .chain([
                        first_balloon(D1, "order9", Is::Num(31)),
                        first_balloon(D1, "order0", Is::Num(256)),
                        field(D1, "engine", "max_order", Is::Num(9)),
                        field(D1, "contiguous", "method", Is::Text("repopulate")),
                        verdict(D1, Verdict::Pass),
                    ])
                    // The 63 MiB leave the identity map, whose RAM GiB the
                    // start-up trim already split into 2 MiB blocks (one
                    // switch): whole blocks are cleared in place, the
                    // partial one is split in copies of the tree and
                    // switched to (Arm needs break-before-make, which the
                    // running agent cannot do to its own block); they come
                    // back.
                    .chain(identity_round_trip(D1, pages_of_mib(63), 2)),
            ),
        },
        Scenario {
            name: "aarch64-dom0-contig",
            arch: Arch::Aarch64,
            mode: Mode::Dom0,
            agent_opts: &["contig=2M", "contig-bits=32"],
            exit: ExpectExit::Pass,
            checks: with(
                arm_dom0(D0),
                [
                    field(D0, "exchange", "supported", Is::Text("no")),
                    field(D0, "exchange", "kept", Is::Text("yes")),
                    field(D0, "contiguous", "method", Is::Text("direct-mapped")),
                    field(D0, "contiguous", "pattern", Is::Text("ok")),
                    // Direct-mapped: the bus address is the guest-physical one.
                    Check::Equal {
                        src: D0,
                        topic: "contiguous",
                        a: "machine",
                        b: "gpa",
                    },
                    field(D0, "reservation-after", "current", Is::Num(ARM_DOM0_PAGES)),
                    verdict(D0, Verdict::Pass),
                ],
            ),
        },
        Scenario {
            name: "x86_64-balloon-beyond-max",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["balloon=1G"],
            exit: ExpectExit::Fail,
            checks: vec![
                Check::ErrorMentions(D0, "beyond the maximum reservation"),
                field(D0, "reservation-after", "current", Is::Num(X86_DOM0_PAGES)),
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "x86_64-balloon-malformed",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["balloon=12Q"],
            exit: ExpectExit::Fail,
            checks: vec![
                Check::ErrorMentions(D0, "`balloon`: bad value `12Q`"),
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "x86_64-contig-over-max-order",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["contig=2G"],
            exit: ExpectExit::Fail,
            checks: vec![
                Check::ErrorMentions(D0, "larger than the domain's maximum order 18"),
                field(D0, "reservation-after", "current", Is::Num(X86_DOM0_PAGES)),
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "x86_64-bad-option",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["bogus=1"],
            exit: ExpectExit::Fail,
            checks: vec![
                Check::ErrorMentions(D0, "bogus"),
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "x86_64-helper-domain",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["helper=on"],
            exit: ExpectExit::Pass,
            checks: with(x86_dom0(D0), helper_domain(D0, 16, 0)),
        },
        Scenario {
            name: "x86_64-helper-domain-superpage",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["helper=superpage"],
            exit: ExpectExit::Pass,
            checks: with(x86_dom0(D0), helper_domain(D0, 512, 9)),
        },
        Scenario {
            name: "aarch64-both-unprivileged-probe",
            arch: Arch::Aarch64,
            mode: Mode::Both,
            agent_opts: &["probe=0"],
            exit: ExpectExit::Pass,
            checks: with(
                with(arm_dom0(D0), arm_domu(D1)),
                [
                    field(D0, "unprivileged", "skipped", Is::Text("privileged")),
                    field(D1, "unprivileged", "target", Is::Num(0)),
                    field(D1, "unprivileged", "foreign", Is::Text("eperm")),
                    field(D1, "unprivileged", "acquire", Is::Text("eperm")),
                    field(D1, "unprivileged", "untouched", Is::Text("yes")),
                    verdict(D1, Verdict::Pass),
                    verdict(D0, Verdict::Pass),
                ],
            ),
        },
        Scenario {
            name: "x86_64-exception",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            agent_opts: &["fault=unmapped"],
            exit: ExpectExit::Fail,
            checks: vec![Check::Exception(D0), verdict(D0, Verdict::Fail)],
        },
        Scenario {
            name: "x86_64-unpopulated-fault",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            // The unusable space past dom0's memory, below 4 GiB: mapped by
            // the boot code, trimmed at start-up, so a read faults there.
            agent_opts: &["fault=unpopulated"],
            exit: ExpectExit::Fail,
            checks: vec![
                field(D0, "fault", "region", Is::Text("reserved:unusable")),
                Check::ExceptionAt {
                    src: D0,
                    topic: "fault",
                    key: "addr",
                },
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "aarch64-unpopulated-fault",
            arch: Arch::Aarch64,
            mode: Mode::Dom0,
            // Dom0's `/hypervisor` hole inside the GiB that holds its RAM
            // (and the agent): a 1 GiB Normal block at boot.
            agent_opts: &["fault=unpopulated"],
            exit: ExpectExit::Fail,
            checks: vec![
                field(D0, "fault", "region", Is::Text("hole")),
                Check::ExceptionAt {
                    src: D0,
                    topic: "fault",
                    key: "addr",
                },
                verdict(D0, Verdict::Fail),
            ],
        },
        Scenario {
            name: "aarch64-exception",
            arch: Arch::Aarch64,
            mode: Mode::Dom0,
            agent_opts: &["fault=unmapped"],
            exit: ExpectExit::Fail,
            checks: vec![Check::Exception(D0), verdict(D0, Verdict::Fail)],
        },
        Scenario {
            name: "x86_64-negative",
            arch: Arch::X86_64,
            mode: Mode::Dom0,
            // negative-gnttab= is X86_NEG_GNTTAB (a test checks).
            agent_opts: &["negative=all", "negative-gnttab=40"],
            exit: ExpectExit::Pass,
            checks: with(
                with(x86_dom0(D0), negative_reservation(D0, true, X86_DOM0_PAGES)),
                // A helper created as domain 1 with X86_NEG_GNTTAB frames.
                negative_acquire(D0, 1, true, X86_NEG_GNTTAB),
            ),
        },
        Scenario {
            name: "aarch64-negative",
            arch: Arch::Aarch64,
            mode: Mode::Both,
            agent_opts: &["negative=all"],
            exit: ExpectExit::Pass,
            checks: with(
                with(
                    with(arm_dom0(D0), arm_domu(D1)),
                    negative_reservation(D1, false, ARM_DOMU_PAGES),
                ),
                with(
                    // Dom0 (direct-mapped: no ballooning) acquires the
                    // domU's table, Xen's default size; the domU's size
                    // query of dom0 is refused (XSM: EPERM).
                    with(
                        negative_after(D0, ARM_DOM0_PAGES),
                        negative_acquire(D0, 1, false, XEN_DEFAULT_MAX_GRANT_FRAMES),
                    ),
                    [
                        every(D0, "neg-frame", "skipped", Is::Text("direct-mapped")),
                        every(D1, "neg-acquire", "target", Is::Num(0)),
                        every(D1, "neg-acquire", "size", Is::Text("none")),
                        every(D1, "neg-acquire", "refused", Is::Text("not-permitted")),
                        field(D0, "peer", "shutdown", Is::Text("poweroff")),
                    ],
                ),
            ),
        },
    ]
}

/// `max_grant_frames` the x86_64 negative scenario asks of its helper
/// domain (`negative-gnttab=`): not Xen's default, so that the size query
/// cannot match by accident.
const X86_NEG_GNTTAB: u64 = 40;
/// Xen's `gnttab_max_frames` default: the grant-table size of a dom0less
/// domU, whose `max_grant_frames` is -1 (the runner sets no
/// `gnttab_max_frames` on Xen's command line).
const XEN_DEFAULT_MAX_GRANT_FRAMES: u64 = 64;
/// XTF's XSA-472-3 `MAX_ITER`.
const XSA472_ITERATIONS: u64 = 100;

/// Populate calls of the XSA-231 node sweep whose answer Xen 4.17 knows to
/// be 0 for this caller on a one-node machine (`propagate_node`,
/// `get_free_buddy`), node 255 aside (it spills into the PoD bit): a
/// privileged x86 dom0 (`MAX_NUMNODES` 64) every exact node but 0 (254)
/// and every plain node from 64 (191); an unprivileged domU every exact
/// node (255).
const fn xsa231_calls(privileged: bool) -> u64 {
    if privileged {
        254 + (255 - 64)
    } else {
        255
    }
}

/// `negative=` (issue 14, item 4): Xen's answers to XTF's XSA-277,
/// XSA-472-3 and XSA-231 sequences, as those tests expect them, the
/// library's typed answer to the refused ones, and Xen's count (`pages`)
/// and the region table unchanged afterwards.
fn negative_reservation(src: Source, privileged: bool, pages: u64) -> Vec<Check> {
    let calls = xsa231_calls(privileged);
    vec![
        every(src, "neg-frame", "warmup", Is::Text("yes")),
        // XSA-277: the same frame three times: 1, 0, 0. The engine itself
        // refuses a fourth before asking Xen.
        every(src, "neg-xsa277", "results", Is::Text("1,0,0")),
        every(src, "neg-xsa277", "library", Is::Text("not-free")),
        every(src, "neg-xsa277", "library_hypercalls", Is::Num(0)),
        // XSA-472-3: decrease then populate, 1, 1, every time.
        every(src, "neg-xsa472", "iterations", Is::Num(XSA472_ITERATIONS)),
        every(src, "neg-xsa472", "results", Is::Text("1,1")),
        every(src, "neg-xsa472", "ok", Is::Num(XSA472_ITERATIONS)),
        // XSA-231: every node Xen must refuse is refused (0 extents, a
        // typed shortfall each), nothing populated; without flags the
        // frame comes back.
        every(src, "neg-xsa231", "calls", Is::Num(calls)),
        every(src, "neg-xsa231", "zero", Is::Num(calls)),
        every(src, "neg-xsa231", "populated", Is::Num(0)),
        every(src, "neg-xsa231", "library", Is::Text("shortfall")),
        every(src, "neg-xsa231", "same", Is::Text("yes")),
        every(src, "neg-xsa231", "control", Is::Num(1)),
    ]
    .into_iter()
    .chain(negative_after(src, pages))
    .collect()
}

/// After the negative checks: Xen's count is `pages`, as before, and the
/// table is the same and accounts for it; nothing leaked.
fn negative_after(src: Source, pages: u64) -> Vec<Check> {
    vec![
        every(src, "neg-before", "current", Is::Num(pages)),
        every(src, "neg-after", "current", Is::Num(pages)),
        every(src, "neg-after", "current_before", Is::Num(pages)),
        every(src, "neg-after", "table", Is::Text("same")),
        Check::Same {
            a: (src, "neg-before", "table_digest"),
            b: (src, "neg-after", "table_digest"),
        },
        every(src, "neg-after", "unaccounted", Is::Num(0)),
        Check::NoErrorMentions(src, "leaked"),
        verdict(src, Verdict::Pass),
    ]
}

/// Xen's tools/tests/resource: the size query of `target`'s grant table is
/// its configured `max_grant_frames` (`frames`), all of them map in one
/// call (more than 32), one past the end is refused, nothing is left.
fn negative_acquire(src: Source, target: u64, helper: bool, frames: u64) -> Vec<Check> {
    let mut c = vec![
        every(src, "neg-acquire", "target", Is::Num(target)),
        every(
            src,
            "neg-acquire",
            "helper",
            Is::Text(if helper { "yes" } else { "no" }),
        ),
        every(src, "neg-acquire", "size", Is::Num(frames)),
        every(src, "neg-acquire", "mapped", Is::Num(frames)),
        every(src, "neg-acquire", "readable", Is::Text("yes")),
        every(src, "neg-acquire", "past", Is::Text("out-of-range")),
        every(src, "neg-acquire-after", "window_pages", Is::Num(0)),
    ];
    if helper {
        c.push(every(src, "neg-helper", "gone", Is::Text("yes")));
    }
    c
}

/// The cross-domain flow (`helper=`): a helper domain created as domain 1,
/// `pages` pages of `order` given to it, mapped as foreign frames with the
/// pattern read back, its grant table acquired and grants seeded, mapped
/// through the grant path and compared, then everything unmapped and the
/// helper destroyed and gone.
pub(crate) fn helper_domain(src: Source, pages: u64, order: u64) -> Vec<Check> {
    vec![
        field(src, "helper-domain", "domid", Is::Num(1)),
        field(src, "helper-domain", "created", Is::Text("yes")),
        field(src, "helper-domain", "max_pages", Is::Num(0)),
        field(src, "helper-memory", "populated", Is::Num(pages)),
        field(src, "helper-memory", "order", Is::Num(order)),
        field(src, "helper-memory", "tot_pages", Is::Num(pages)),
        field(src, "foreign-map", "frames", Is::Num(pages)),
        field(src, "foreign-map", "pattern", Is::Text("ok")),
        field(src, "foreign-map", "reread", Is::Text("ok")),
        field(src, "acquire", "resource", Is::Text("grant-table")),
        field(src, "acquire", "frames_max", Is::Num(64)),
        field(src, "acquire", "mapped", Is::Num(1)),
        field(src, "grants-seeded", "count", Is::Num(4)),
        field(src, "grants-seeded", "first_gref", Is::Num(8)),
        field(src, "helper-grants", "mapped", Is::Num(4)),
        field(src, "helper-grants", "pattern", Is::Text("ok")),
        field(src, "helper-grants", "writeback", Is::Text("ok")),
        field(src, "helper-grants", "in_use", Is::Text("yes")),
        field(src, "helper-unmapped", "foreign", Is::Num(pages)),
        field(src, "helper-unmapped", "gnttab", Is::Num(1)),
        field(src, "helper-domain", "destroyed", Is::Text("yes")),
        field(src, "helper-domain", "gone", Is::Text("yes")),
        verdict(src, Verdict::Pass),
    ]
}

/// ERROR lines of `src` that no check of the scenario expects: any ERROR
/// line fails a scenario unless it expects it (issue 14). Expected are the
/// lines an `ErrorMentions` check names, the exception report (and Arm's
/// trap frame) where an exception is expected, and `verdict: FAIL` where
/// the scenario expects that verdict.
pub(crate) fn unexpected_errors(checks: &[Check], src: Source, log: &AgentLog) -> Vec<String> {
    log.errors()
        .filter(|e| !checks.iter().any(|c| expects_error(c, src, e)))
        .map(|e| format!("[{src}] an ERROR line no check expects: {e}"))
        .collect()
}

fn expects_error(c: &Check, src: Source, line: &str) -> bool {
    match *c {
        Check::ErrorMentions(s, text) => s == src && line.contains(text),
        Check::Exception(s) | Check::ExceptionAt { src: s, .. } => {
            s == src && (is_exception_line(line) || line.starts_with("aarch64 trap frame:"))
        }
        Check::Verdict(s, Verdict::Fail) => s == src && line == "verdict: FAIL",
        _ => false,
    }
}

/// Whether `msg` is `exception: <name> (vector N) ... fault_addr=<addr>`.
fn is_exception_line(msg: &str) -> bool {
    let Some(rest) = msg.strip_prefix("exception: ") else {
        return false;
    };
    let Some((name, after)) = rest.split_once(" (vector ") else {
        return false;
    };
    let Some((num, tail)) = after.split_once(')') else {
        return false;
    };
    let fault = tail
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fault_addr="));
    !name.trim().is_empty()
        && num.trim().parse::<u32>().is_ok()
        && fault.is_some_and(|a| !a.is_empty())
}

pub(crate) fn check_one(c: &Check, logs: &Logs) -> Option<String> {
    let log = |src: Source| logs.get(src);
    match *c {
        Check::Verdict(src, want) => match log(src).verdict() {
            Some(v) if v == want => None,
            Some(v) => Some(format!("[{src}] verdict {v}, expected {want}")),
            None => Some(format!("[{src}] printed no verdict, expected {want}")),
        },
        Check::Field {
            src,
            topic,
            key,
            is,
        } => {
            let l = log(src);
            // Every report of the topic that has the field, not only the
            // first: a later report that contradicts fails too.
            let mut found = l.topic(topic).filter_map(|r| r.get(key));
            let first = found.next();
            let wrong = first.into_iter().chain(found).find(|v| !is.matches(v));
            match (first, wrong) {
                (Some(_), None) => None,
                (Some(_), Some(v)) => {
                    Some(format!("[{src}] report {topic} {key}={v}, expected {is:?}"))
                }
                (None, _) if l.topic(topic).next().is_none() => {
                    Some(format!("[{src}] no `report: {topic}` line (wanted {key})"))
                }
                (None, _) => Some(format!("[{src}] `report: {topic}` has no {key}=")),
            }
        }
        Check::Count {
            src,
            topic,
            key,
            value,
            at_least,
        } => {
            let n = log(src)
                .topic(topic)
                .filter(|r| r.get(key) == Some(value))
                .count();
            (n < at_least).then(|| {
                format!(
                    "[{src}] {n} `report: {topic}` lines with {key}={value}, expected ≥ {at_least}"
                )
            })
        }
        Check::ErrorMentions(src, text) => {
            let l = log(src);
            (!l.errors().any(|m| m.contains(text)))
                .then(|| format!("[{src}] no error-level message mentions `{text}`"))
        }
        Check::FieldWhere {
            src,
            topic,
            when,
            key,
            is,
        } => {
            let l = log(src);
            let values: Vec<&str> = l
                .topic(topic)
                .filter(|r| r.get(when.0) == Some(when.1))
                .filter_map(|r| r.get(key))
                .collect();
            match values.iter().find(|v| !is.matches(v)) {
                _ if values.is_empty() => Some(format!(
                    "[{src}] no `report: {topic}` line with {}={} and {key}=",
                    when.0, when.1
                )),
                Some(v) => Some(format!(
                    "[{src}] report {topic} {}={} {key}={v}, expected {is:?}",
                    when.0, when.1
                )),
                None => None,
            }
        }
        Check::TableTiles(src) => table_tiles(log(src)).err().map(|e| format!("[{src}] {e}")),
        // Needs Xen's view: see `xen_pages_at`, called by `evaluate`.
        Check::XenPagesAt { .. } => None,
        Check::ImageReserved(src) => image_reserved(log(src))
            .err()
            .map(|e| format!("[{src}] {e}")),
        Check::Every {
            src,
            topic,
            key,
            is,
        } => {
            let l = log(src);
            let values: Vec<&str> = l.topic(topic).filter_map(|r| r.get(key)).collect();
            match values.iter().find(|v| !is.matches(v)) {
                _ if values.is_empty() => {
                    Some(format!("[{src}] no `report: {topic}` line with {key}="))
                }
                Some(v) => Some(format!(
                    "[{src}] a `report: {topic}` has {key}={v}, expected {is:?} in every one"
                )),
                None => None,
            }
        }
        Check::Equal { src, topic, a, b } => {
            let l = log(src);
            let r = l.topic(topic).next();
            let (x, y) = (r.and_then(|r| r.get(a)), r.and_then(|r| r.get(b)));
            match (x.and_then(parse_number), y.and_then(parse_number)) {
                (Some(x), Some(y)) if x == y => None,
                _ => Some(format!(
                    "[{src}] `report: {topic}` {a}={} and {b}={} differ",
                    x.unwrap_or("?"),
                    y.unwrap_or("?")
                )),
            }
        }
        Check::Same { a, b } => {
            let get = |(src, topic, key): (Source, &'static str, &'static str)| {
                logs.get(src).topic(topic).find_map(|r| r.get(key))
            };
            let (x, y) = (get(a), get(b));
            match (x.and_then(parse_number), y.and_then(parse_number)) {
                (Some(x), Some(y)) if x == y => None,
                _ => Some(format!(
                    "[{}] `report: {}` {}={} and [{}] `report: {}` {}={} differ",
                    a.0,
                    a.1,
                    a.2,
                    x.unwrap_or("?"),
                    b.0,
                    b.1,
                    b.2,
                    y.unwrap_or("?")
                )),
            }
        }
        Check::NoErrorMentions(src, text) => log(src)
            .errors()
            .find(|m| m.contains(text))
            .map(|m| format!("[{src}] error-level message mentions `{text}`: {m}")),
        Check::MappingsBalanced { src, kinds } => mappings_balanced(log(src), kinds)
            .err()
            .map(|e| format!("[{src}] {e}")),
        Check::Exception(src) => {
            let l = log(src);
            (!l.lines.iter().any(|(_, m)| is_exception_line(m))).then(|| {
                format!("[{src}] no `exception: <vector name> (vector N) ... fault_addr=..` line")
            })
        }
        Check::ExceptionAt { src, topic, key } => {
            let l = log(src);
            let want = l.topic(topic).next().and_then(|r| r.get(key));
            let got = l
                .lines
                .iter()
                .map(|(_, m)| m.as_str())
                .find(|m| is_exception_line(m))
                .and_then(|m| {
                    m.split_whitespace()
                        .find_map(|w| w.strip_prefix("fault_addr="))
                });
            match (want.and_then(parse_number), got.and_then(parse_number)) {
                (Some(w), Some(g)) if w == g => None,
                _ => Some(format!(
                    "[{src}] exception at fault_addr={}, expected `report: {topic}` {key}={}",
                    got.unwrap_or("?"),
                    want.unwrap_or("?")
                )),
            }
        }
    }
}

/// Whether every `report: mapping` made is released after it, nothing is
/// released unmade, and each of `kinds` was made.
fn mappings_balanced(l: &crate::report::AgentLog, kinds: &[&str]) -> Result<(), String> {
    let mut open: Vec<[&str; 4]> = Vec::new();
    let mut made: Vec<&str> = Vec::new();
    for r in l.topic("mapping") {
        let key = ["kind", "dom", "gfn", "va"].map(|k| r.get(k).unwrap_or("?"));
        match r.get("state") {
            Some("made") => {
                if open.contains(&key) {
                    return Err(format!("mapping {key:?} made twice without release"));
                }
                made.push(key[0]);
                open.push(key);
            }
            Some("released") => match open.iter().position(|k| *k == key) {
                Some(i) => {
                    open.remove(i);
                }
                None => return Err(format!("mapping {key:?} released but never made")),
            },
            other => return Err(format!("mapping {key:?} with state={other:?}")),
        }
    }
    if let Some(k) = open.first() {
        return Err(format!(
            "{} mapping(s) never released, first {k:?}",
            open.len()
        ));
    }
    match kinds.iter().find(|k| !made.contains(k)) {
        Some(k) => Err(format!("no `report: mapping kind={k} state=made` line")),
        None => Ok(()),
    }
}

/// The agent's own `report: image` span against what the agent did not
/// write, its ELF's PT_LOAD segments (`span`, see
/// [`crate::image::load_span`]), for every source an
/// [`Check::ImageReserved`] is about: on x86_64 (loaded at its link
/// addresses) the report must cover the segments, on aarch64 (loaded where
/// Xen puts the Image) be at least as long. A span that ends early leaves
/// part of the image (`.bss`, the boot stack, page tables) to the allocator
/// although its table reserves what it reports.
pub fn image_against_elf(
    checks: &[Check],
    logs: &Logs,
    arch: Arch,
    span: (u64, u64),
) -> Vec<String> {
    let (lo, hi) = span;
    let mut out = Vec::new();
    for c in checks {
        let Check::ImageReserved(src) = *c else {
            continue;
        };
        let l = logs.get(src);
        let Some(img) = l.topic("image").next() else {
            continue; // `ImageReserved` itself fails.
        };
        let num = |k: &str| img.get(k).and_then(parse_number);
        let (Some(start), Some(end)) = (num("start"), num("end")) else {
            continue;
        };
        let covers = match arch {
            Arch::X86_64 => start <= lo && end >= hi,
            Arch::Aarch64 => end.checked_sub(start).is_some_and(|n| n >= hi - lo),
        };
        if !covers {
            out.push(format!(
                "[{src}] `report: image` start={start:#x} end={end:#x} does not cover the ELF's \
                 loaded segments [{lo:#x}, {hi:#x}) ({:#x} bytes)",
                hi - lo
            ));
        }
    }
    out
}

/// Whether the image span is covered by reserved image/heap table regions.
fn image_reserved(l: &crate::report::AgentLog) -> Result<(), String> {
    let img = l.topic("image").next().ok_or("no `report: image` line")?;
    let num = |r: &crate::report::Report, k: &str| r.get(k).and_then(parse_number);
    let (start, end) = (num(img, "start"), num(img, "end"));
    let (Some(start), Some(end)) = (start, end) else {
        return Err("`report: image` lacks start/end".into());
    };
    let mut at = start;
    let mut regions: Vec<(u64, u64, &str)> = l
        .topic("table-region")
        .filter_map(|r| Some((num(r, "start")?, num(r, "end")?, r.get("kind")?)))
        .collect();
    regions.sort_unstable();
    for (s, e, kind) in regions {
        if e <= at || s >= end {
            continue;
        }
        if s > at {
            return Err(format!(
                "image bytes {at:#x}..{s:#x} are in no table region"
            ));
        }
        if kind != "reserved:image" && kind != "reserved:heap" {
            return Err(format!(
                "image bytes {s:#x}..{e:#x} are in a `{kind}` region"
            ));
        }
        at = e;
    }
    if at < end {
        return Err(format!(
            "image bytes {at:#x}..{end:#x} are in no table region"
        ));
    }
    Ok(())
}

/// [`Check::TableTiles`]: the table's regions as reported cover
/// `[0, end)` without gap or overlap, and are as many as it says.
fn table_tiles(log: &AgentLog) -> Result<(), String> {
    let mut at = 0u64;
    let mut n = 0usize;
    for r in log.topic("table-region") {
        let start = r.get("start").and_then(parse_number);
        let end = r.get("end").and_then(parse_number);
        let (Some(start), Some(end)) = (start, end) else {
            return Err(format!("a table-region without start/end: {r}"));
        };
        if start != at || end <= start {
            return Err(format!(
                "the table's regions do not tile memory: {start:#x}..{end:#x} follows {at:#x}"
            ));
        }
        at = end;
        n += 1;
    }
    let said = log
        .topic("table")
        .next()
        .and_then(|r| r.get("regions"))
        .and_then(parse_number);
    match said {
        Some(k) if k == n as u64 && n > 0 => Ok(()),
        Some(k) => Err(format!(
            "`report: table regions={k}` but {n} table-region lines"
        )),
        None => Err("no `report: table regions=` line".into()),
    }
}

/// [`Check::XenPagesAt`] against the runner's record of Xen's view.
pub(crate) fn xen_pages_at(
    views: &[crate::xenview::XenView],
    src: Source,
    point: &str,
    pages: u64,
) -> Vec<String> {
    let at: Vec<_> = views
        .iter()
        .filter(|v| v.src == src && v.point == point)
        .collect();
    if at.is_empty() {
        return vec![format!("[{src}] no xen-view pause at point {point}")];
    }
    at.iter()
        .filter_map(|v| {
            let n = v
                .xen
                .as_ref()
                .and_then(|x| x.fields.get("nr_pages"))
                .and_then(|n| parse_number(n));
            (n != Some(pages)).then(|| {
                format!("[{src}] Xen's nr_pages at point {point} is {n:?}, expected {pages}")
            })
        })
        .collect()
}

/// Everything wrong with a boot, measured against its scenario (empty: pass).
pub fn evaluate(s: &Scenario, r: &BootResult) -> Vec<String> {
    let mut failures = Vec::new();
    let exit_ok = matches!(
        (s.exit, &r.exit),
        (ExpectExit::Pass, Exit::Pass) | (ExpectExit::Fail, Exit::Fail)
    );
    if !exit_ok {
        failures.push(format!("{}, expected agent exit {:?}", r.exit, s.exit));
    }
    for (src, log) in &r.logs.by_source {
        for m in &log.malformed {
            failures.push(format!("[{src}] malformed: {m}"));
        }
        failures.extend(unexpected_errors(&s.checks, *src, log));
    }
    // Xen's own view at the agents' pauses: its counts are the table's.
    failures.extend(crate::xenview::problems(
        &r.xen_views,
        &r.logs,
        r.xen_view_asked,
    ));
    // A source that printed nothing fails once, not once per check.
    let mut silent = Vec::new();
    for c in &s.checks {
        let src = c.source();
        if r.logs.get(src).lines.is_empty() {
            if !silent.contains(&src) {
                silent.push(src);
                failures.push(format!("[{src}] the agent printed nothing"));
            }
        } else if let Some(f) = check_one(c, &r.logs) {
            failures.push(f);
        } else if let Check::XenPagesAt { src, point, pages } = *c {
            failures.extend(xen_pages_at(&r.xen_views, src, point, pages));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{AgentLine, Level};
    use std::time::Duration;

    fn result(exit: Exit, lines: &[(Source, Level, &str)]) -> BootResult {
        let mut logs = Logs::default();
        for (source, level, m) in lines {
            logs.push(&AgentLine {
                source: *source,
                level: *level,
                message: m.to_string(),
                timestamp: None,
            });
        }
        BootResult {
            exit,
            logs,
            warnings: vec![],
            qemu_stderr: vec![],
            log_path: "x.log".into(),
            elapsed: Duration::ZERO,
            xen_views: vec![],
            xen_view_asked: false,
        }
    }

    fn scenario(name: &str) -> Scenario {
        all().into_iter().find(|s| s.name == name).unwrap()
    }

    const ARM_DOM0: &[&str] = &[
        "report: xen version=4.17 extra=.7",
        "report: domain domid=0 source=cmdline privileged=yes",
        "report: memmap source=fdt entries=2",
        "report: region start=0x40000000 end=0x42000000 kind=ram",
        "report: region start=0x40200000 end=0x40240000 kind=hypervisor",
        "report: reservation current=8192 max=8192 maximum_gpfn=0x7ffff",
        "report: memmap ram_pages=8192",
        "report: image start=0x40000000 end=0x40100000",
        "report: table regions=5 ram=1 reserved=2 hole=1 mmio=1",
        "report: table-region start=0x0 end=0x40000000 kind=mmio flags=0x0",
        "report: table-region start=0x40000000 end=0x40080000 kind=reserved:image flags=0x1b",
        "report: table-region start=0x40080000 end=0x40100000 kind=reserved:heap flags=0x1b",
        "report: table-region start=0x40100000 end=0x40200000 kind=ram flags=0xb",
        "report: table-region start=0x40200000 end=0x40240000 kind=hole flags=0x0",
        "report: accounting table_ram=8192 partial=0 current=8192 unaccounted=0",
        "report: identity-trim ranges=2 frames=133947392 root_switches=1 kept_mapped=yes kept=8192 others_unmapped=yes sampled=261626",
        "report: paging-selftest frames=3 result=pass",
    ];

    fn lines(src: Source, msgs: &[&'static str]) -> Vec<(Source, Level, &'static str)> {
        msgs.iter().map(|m| (src, Level::Info, *m)).collect()
    }

    #[test]
    fn names_are_unique_and_complete() {
        let names: Vec<_> = all().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "x86_64-dom0",
                "aarch64-dom0",
                "aarch64-domu",
                "aarch64-both",
                "x86_64-grant-self",
                "aarch64-grant-self",
                "aarch64-grant-exchange",
                "x86_64-balloon",
                "aarch64-domu-balloon",
                "aarch64-dom0-contig",
                "x86_64-balloon-beyond-max",
                "x86_64-balloon-malformed",
                "x86_64-contig-over-max-order",
                "x86_64-bad-option",
                "x86_64-helper-domain",
                "x86_64-helper-domain-superpage",
                "aarch64-both-unprivileged-probe",
                "x86_64-exception",
                "x86_64-unpopulated-fault",
                "aarch64-unpopulated-fault",
                "aarch64-exception",
                "x86_64-negative",
                "aarch64-negative"
            ]
        );
        for s in all() {
            assert!(!s.checks.is_empty(), "{} checks nothing", s.name);
        }
    }

    #[test]
    fn arm_dom0_passes_and_fails() {
        let s = scenario("aarch64-dom0");
        let mut l = lines(D0, ARM_DOM0);
        l.push((D0, Level::Info, "verdict: PASS"));
        assert_eq!(evaluate(&s, &result(Exit::Pass, &l)), Vec::<String>::new());

        // Wrong exit, wrong reservation, missing hypervisor region.
        let mut l: Vec<_> = lines(D0, ARM_DOM0)
            .into_iter()
            .filter(|(_, _, m)| !m.contains("hypervisor"))
            .map(|(s, lv, m)| {
                if m.starts_with("report: reservation") {
                    (s, lv, "report: reservation current=8000 max=8192")
                } else {
                    (s, lv, m)
                }
            })
            .collect();
        l.push((D0, Level::Info, "verdict: PASS"));
        let f = evaluate(&s, &result(Exit::Timeout(Duration::from_secs(120)), &l));
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].contains("timeout"));
        assert!(f.iter().any(|m| m.contains("current=8000")));
        assert!(f.iter().any(|m| m.contains("kind=hypervisor")));

        // The table misses a page of Xen's, or the image is not reserved.
        let mut l: Vec<_> = lines(D0, ARM_DOM0)
            .into_iter()
            .map(|(s, lv, m)| match m {
                m if m.starts_with("report: accounting") => {
                    (s, lv, "report: accounting unaccounted=1")
                }
                m if m.contains("kind=reserved:heap") => (
                    s,
                    lv,
                    "report: table-region start=0x40080000 end=0x40100000 kind=ram flags=0xb",
                ),
                m => (s, lv, m),
            })
            .collect();
        l.push((D0, Level::Info, "verdict: PASS"));
        let f = evaluate(&s, &result(Exit::Pass, &l));
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f.iter().any(|m| m.contains("unaccounted=1")), "{f:#?}");
        assert!(
            f.iter()
                .any(|m| m.contains("image bytes 0x40080000..0x40100000 are in a `ram` region")),
            "{f:#?}"
        );

        // A table region left out of the report: a gap, and one line fewer
        // than the table says.
        let mut l: Vec<_> = lines(D0, ARM_DOM0)
            .into_iter()
            .filter(|(_, _, m)| !m.contains("kind=reserved:heap"))
            .collect();
        l.push((D0, Level::Info, "verdict: PASS"));
        let f = evaluate(&s, &result(Exit::Pass, &l));
        assert!(f.iter().any(|m| m.contains("do not tile memory")), "{f:#?}");

        // Xen's own count at a pause, against the configuration's.
        let view = |point: &str, n: &str| crate::xenview::XenView {
            src: D0,
            point: point.into(),
            pages: None,
            max: None,
            xen: Some(crate::rig::XenDomainDump {
                domid: 0,
                fields: [("nr_pages".to_string(), n.to_string())].into(),
            }),
            problem: None,
        };
        assert!(xen_pages_at(&[view("end", "8192")], D0, "end", 8192).is_empty());
        let f = xen_pages_at(&[view("end", "8191")], D0, "end", 8192);
        assert!(
            f[0].contains("nr_pages at point end is Some(8191)"),
            "{f:?}"
        );
        let f = xen_pages_at(&[view("start", "8192")], D0, "end", 8192);
        assert!(f[0].contains("no xen-view pause at point end"), "{f:?}");

        // Nothing at all.
        let f = evaluate(&s, &result(Exit::Pass, &[]));
        assert_eq!(f, ["[d0] the agent printed nothing"]);

        // Some lines, but not the reports.
        let f = evaluate(&s, &result(Exit::Pass, &[(D0, Level::Info, "hello")]));
        assert!(f.iter().any(|m| m.contains("no verdict")), "{f:#?}");
        assert!(f.iter().any(|m| m.contains("no `report: xen`")), "{f:#?}");
    }

    #[test]
    fn both_needs_both_sources() {
        let s = scenario("aarch64-both");
        let mut l = lines(D0, ARM_DOM0);
        l.push((D0, Level::Info, "report: peer domid=1 shutdown=poweroff"));
        l.push((D0, Level::Info, "verdict: PASS"));
        // The domU's lines under d0 do not count for d1.
        let f = evaluate(&s, &result(Exit::Pass, &l));
        assert!(f.iter().all(|m| m.starts_with("[d1]")), "{f:#?}");
        assert!(!f.is_empty());

        let domu: &[&str] = &[
            "report: xen version=4.17.7",
            "report: domain domid=1 source=cmdline privileged=no",
            "report: memmap source=fdt",
            "report: region start=0x40000000 end=0x48000000 kind=ram",
            "report: region start=0x38000000 end=0x39000000 kind=hypervisor",
            "report: reservation current=32768 max=32768",
            "report: memmap ram_pages=32768",
            "report: image start=0x40000000 end=0x40100000",
            "report: table regions=4 ram=0 reserved=1 hole=2 mmio=1",
            "report: table-region start=0x0 end=0x38000000 kind=mmio flags=0x0",
            "report: table-region start=0x38000000 end=0x39000000 kind=hole flags=0x0",
            "report: table-region start=0x39000000 end=0x40000000 kind=hole flags=0x0",
            "report: table-region start=0x40000000 end=0x40100000 kind=reserved:image flags=0x1b",
            "report: accounting table_ram=32768 partial=0 current=32768 unaccounted=0",
            "report: identity-trim ranges=2 frames=133922816 root_switches=1 kept_mapped=yes kept=32768 others_unmapped=yes sampled=261580",
            "report: paging-selftest frames=3 result=pass",
            "verdict: PASS",
        ];
        l.extend(lines(D1, domu));
        assert_eq!(evaluate(&s, &result(Exit::Pass, &l)), Vec::<String>::new());
    }

    #[test]
    fn an_unpopulated_fault_must_be_at_the_reported_address() {
        let s = scenario("aarch64-unpopulated-fault");
        let at = |addr: &'static str| {
            [
                (
                    D0,
                    Level::Info,
                    "report: fault kind=unpopulated addr=0x40200000 region=hole",
                ),
                (D0, Level::Error, addr),
                (D0, Level::Error, "verdict: FAIL"),
            ]
        };
        let good = at("exception: sync, current EL, SPx (vector 4) syndrome=0x96000006 pc=0x7c016394 fault_addr=0x40200000");
        assert_eq!(
            evaluate(&s, &result(Exit::Fail, &good)),
            Vec::<String>::new()
        );
        let elsewhere = at("exception: sync, current EL, SPx (vector 4) syndrome=0x96000006 pc=0x7c016394 fault_addr=0x40201000");
        let f = evaluate(&s, &result(Exit::Fail, &elsewhere));
        assert!(
            f.len() == 1 && f[0].contains("fault_addr=0x40201000"),
            "{f:#?}"
        );
    }

    #[test]
    fn failure_scenarios() {
        let s = scenario("x86_64-bad-option");
        let l = [
            (D0, Level::Error, "cmdline: unknown option `bogus`"),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        assert_eq!(evaluate(&s, &result(Exit::Fail, &l)), Vec::<String>::new());
        assert_eq!(evaluate(&s, &result(Exit::Pass, &l)).len(), 1);
        // Mentioned at info level only: not an error.
        let l = [
            (D0, Level::Info, "cmdline: unknown option `bogus`"),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        assert_eq!(evaluate(&s, &result(Exit::Fail, &l)).len(), 1);

        let s = scenario("aarch64-exception");
        let l = [
            (
                D0,
                Level::Error,
                "exception: sync, current EL, SPx (vector 4) syndrome=0x96000045 pc=0x40001234 fault_addr=0xdead0000",
            ),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        assert_eq!(evaluate(&s, &result(Exit::Fail, &l)), Vec::<String>::new());
        let l = [
            (
                D0,
                Level::Error,
                "exception: #GP (vector 13) syndrome=0x0 pc=0x100000",
            ),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        // The exception check fails, and the malformed line is an ERROR
        // line no check expects.
        assert_eq!(evaluate(&s, &result(Exit::Fail, &l)).len(), 2);
    }

    #[test]
    fn an_error_line_no_check_expects_fails_the_scenario() {
        let s = scenario("x86_64-bad-option");
        let l = [
            (D0, Level::Error, "cmdline: unknown option `bogus`"),
            (
                D0,
                Level::Error,
                "grant: 3 grant frames dropped without release: leaked",
            ),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        let f = evaluate(&s, &result(Exit::Fail, &l));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].contains("an ERROR line no check expects: grant: 3"),
            "{f:#?}"
        );
        // A FAIL verdict where the scenario expects PASS is not excused.
        let s = scenario("x86_64-dom0");
        let f = evaluate(
            &s,
            &result(Exit::Fail, &[(D0, Level::Error, "verdict: FAIL")]),
        );
        assert!(
            f.iter()
                .any(|m| m.contains("no check expects: verdict: FAIL")),
            "{f:#?}"
        );
    }

    #[test]
    fn malformed_reports_fail_a_scenario() {
        let s = scenario("x86_64-bad-option");
        let l = [
            (D0, Level::Error, "cmdline: unknown option `bogus`"),
            (D0, Level::Info, "report: domain domid"),
            (D0, Level::Error, "verdict: FAIL"),
        ];
        let f = evaluate(&s, &result(Exit::Fail, &l));
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("malformed"));
    }

    #[test]
    fn mappings_same_and_leaks() {
        let src = D0;
        let eval = |c: Check, msgs: &[(Level, &'static str)]| {
            let l: Vec<_> = msgs.iter().map(|(lv, m)| (src, *lv, *m)).collect();
            check_one(&c, &result(Exit::Pass, &l).logs)
        };
        let bal = Check::MappingsBalanced {
            src,
            kinds: &["grant", "foreign"],
        };
        let made_g = "report: mapping kind=grant dom=1 gfn=0x40200 va=0x1000 state=made";
        let rel_g = "report: mapping kind=grant dom=1 gfn=0x40200 va=0x1000 state=released";
        let made_f = "report: mapping kind=foreign dom=1 gfn=0x40201 va=0x2000 state=made";
        let rel_f = "report: mapping kind=foreign dom=1 gfn=0x40201 va=0x2000 state=released";
        let i = Level::Info;
        assert_eq!(
            eval(
                bal.clone(),
                &[(i, made_g), (i, made_f), (i, rel_f), (i, rel_g)]
            ),
            None
        );
        let f = eval(bal.clone(), &[(i, made_g), (i, made_f), (i, rel_f)]).unwrap();
        assert!(f.contains("never released"), "{f}");
        let f = eval(bal.clone(), &[(i, rel_g), (i, made_g)]).unwrap();
        assert!(f.contains("never made"), "{f}");
        let f = eval(bal.clone(), &[(i, made_g), (i, rel_g)]).unwrap();
        assert!(f.contains("kind=foreign"), "{f}");
        let f = eval(bal, &[(i, made_g), (i, made_g)]).unwrap();
        assert!(f.contains("twice"), "{f}");

        let same = Check::Same {
            a: (D0, "peer-gnttab", "frame"),
            b: (D1, "grant-offer", "gfn"),
        };
        let logs = |gfn: &'static str| {
            result(
                Exit::Pass,
                &[(D0, i, "report: peer-gnttab frame=0x40458"), (D1, i, gfn)],
            )
            .logs
        };
        assert_eq!(
            check_one(&same, &logs("report: grant-offer gfn=0x40458")),
            None
        );
        let f = check_one(&same, &logs("report: grant-offer gfn=0x40459")).unwrap();
        assert!(f.contains("0x40459") && f.contains("[d1]"), "{f}");
        assert!(check_one(&same, &logs("report: grant-offer ref=8")).is_some());

        let leak = Check::NoErrorMentions(src, "leaked");
        assert_eq!(eval(leak.clone(), &[(i, "x leaked")]), None);
        assert!(eval(leak, &[(Level::Error, "mapping: 1 frames dropped: leaked")]).is_some());
    }

    /// The negative scenario's own checks on x86_64's real reports (pass),
    /// then on those of deliberately broken agents: each fails.
    #[test]
    fn negative_checks_fail_against_broken_agents() {
        const GOOD: &[&str] = &[
            "report: neg-frame gfn=0x1005f warmup=yes table_changed=no",
            "report: neg-before current=65536 table_digest=0x3d821ed6dad13adb",
            "report: neg-xsa277 gfn=0x1005f results=1,0,0 library=not-free library_hypercalls=0",
            "report: neg-xsa472 gfn=0x1005f iterations=100 results=1,1 ok=100",
            "report: neg-xsa231 gfn=0x1005f calls=445 zero=445 populated=0 library=shortfall same=yes control=1",
            "report: neg-acquire target=1 helper=yes size=40 mapped=40 readable=yes past=out-of-range",
            "report: neg-helper domid=1 destroyed=yes gone=yes",
            "report: neg-acquire-after window_pages=0",
            "report: neg-after current=65536 current_before=65536 table=same table_digest=0x3d821ed6dad13adb unaccounted=0",
            "verdict: PASS",
        ];
        let checks = with(
            negative_reservation(D0, true, X86_DOM0_PAGES),
            negative_acquire(D0, 1, true, X86_NEG_GNTTAB),
        );
        // The scenario asks the helper for the frames it checks.
        let s = scenario("x86_64-negative");
        assert!(s
            .agent_opts
            .contains(&&*format!("negative-gnttab={X86_NEG_GNTTAB}")));
        assert!(checks.iter().all(|c| s
            .checks
            .iter()
            .any(|d| format!("{c:?}") == format!("{d:?}"))));
        let failures = |msgs: &[&'static str]| -> Vec<String> {
            let l = lines(D0, msgs);
            let r = result(Exit::Pass, &l);
            checks
                .iter()
                .filter_map(|c| check_one(c, &r.logs))
                .collect()
        };
        assert_eq!(failures(GOOD), Vec::<String>::new());
        // (what the broken agent does, the line it prints instead, or
        // nothing, and what the failure must name)
        let broken: &[(&str, &str, Option<&'static str>, &str)] = &[
            ("reports 1,1,0", "neg-xsa277", Some("report: neg-xsa277 gfn=0x1005f results=1,1,0 library=not-free library_hypercalls=0"), "results=1,1,0"),
            ("skips the third decrease", "neg-xsa277", Some("report: neg-xsa277 gfn=0x1005f results=1,0 library=not-free library_hypercalls=0"), "results=1,0"),
            ("asks Xen a fourth time", "neg-xsa277", Some("report: neg-xsa277 gfn=0x1005f results=1,0,0 library=not-free library_hypercalls=1"), "library_hypercalls=1"),
            ("skips XSA-277", "neg-xsa277", None, "neg-xsa277"),
            ("stops the loop early", "neg-xsa472", Some("report: neg-xsa472 gfn=0x1005f iterations=99 results=1,1 ok=99"), "iterations=99"),
            ("reports a refused populate", "neg-xsa472", Some("report: neg-xsa472 gfn=0x1005f iterations=100 results=1,0 ok=99"), "results=1,0"),
            ("skips a node", "neg-xsa231", Some("report: neg-xsa231 gfn=0x1005f calls=444 zero=444 populated=0 library=shortfall same=yes control=1"), "calls=444"),
            ("populates a node", "neg-xsa231", Some("report: neg-xsa231 gfn=0x1005f calls=445 zero=444 populated=1 library=shortfall same=yes control=1"), "populated=1"),
            ("takes Xen's 0 for success", "neg-xsa231", Some("report: neg-xsa231 gfn=0x1005f calls=445 zero=445 populated=0 library=ok same=yes control=1"), "library=ok"),
            ("leaves the frame ballooned", "neg-after", Some("report: neg-after current=65535 current_before=65536 table=changed table_digest=0x1 unaccounted=0"), "current=65535"),
            ("leaves a table change", "neg-after", Some("report: neg-after current=65536 current_before=65536 table=same table_digest=0x2 unaccounted=0"), "table_digest"),
            ("reports its own configuration, not Xen's size", "neg-acquire", Some("report: neg-acquire target=1 helper=yes size=64 mapped=40 readable=yes past=out-of-range"), "size=64"),
            ("maps one batch of 32", "neg-acquire", Some("report: neg-acquire target=1 helper=yes size=40 mapped=32 readable=yes past=out-of-range"), "mapped=32"),
            ("maps past the end", "neg-acquire", Some("report: neg-acquire target=1 helper=yes size=40 mapped=40 readable=yes past=mapped"), "past=mapped"),
            ("leaves a window page", "neg-acquire-after", Some("report: neg-acquire-after window_pages=1"), "window_pages=1"),
            ("leaves the helper", "neg-helper", Some("report: neg-helper domid=1 destroyed=no gone=no"), "gone=no"),
        ];
        for (what, topic, instead, named) in broken {
            let mut l: Vec<&'static str> = GOOD
                .iter()
                .copied()
                .filter(|m| !m.starts_with(&format!("report: {topic} ")))
                .collect();
            l.extend(instead.iter().copied());
            let f = failures(&l);
            assert!(
                f.iter().any(|m| m.contains(named)),
                "an agent that {what}: {f:#?}"
            );
        }
        // A second, bad report after a good one is caught too.
        let mut l = GOOD.to_vec();
        l.push(
            "report: neg-xsa277 gfn=0x1005f results=1,1,1 library=not-free library_hypercalls=0",
        );
        assert!(!failures(&l).is_empty());
    }

    #[test]
    fn the_image_report_must_cover_the_elf() {
        let checks = [Check::ImageReserved(D0)];
        let r = |line| result(Exit::Pass, &[(D0, Level::Info, line)]).logs;
        let span = (0x100000, 0x322350);
        let whole = r("report: image start=0x100000 end=0x323000");
        assert!(image_against_elf(&checks, &whole, Arch::X86_64, span).is_empty());
        // A page short of .bss's end; or moved (x86_64 is loaded where linked).
        for bad in [
            "report: image start=0x100000 end=0x322000",
            "report: image start=0x101000 end=0x324000",
        ] {
            let f = image_against_elf(&checks, &r(bad), Arch::X86_64, span);
            assert!(f[0].contains("does not cover the ELF's"), "{f:?}");
        }
        // aarch64: anywhere, as long as it is as long.
        let arm = (0, 0x209000);
        let moved = r("report: image start=0x42000000 end=0x42209000");
        assert!(image_against_elf(&checks, &moved, Arch::Aarch64, arm).is_empty());
        let short = r("report: image start=0x42000000 end=0x42208000");
        assert_eq!(
            image_against_elf(&checks, &short, Arch::Aarch64, arm).len(),
            1
        );
        // Only where the scenario checks the image.
        assert!(image_against_elf(&[], &short, Arch::Aarch64, arm).is_empty());
    }

    #[test]
    fn exception_lines() {
        assert!(is_exception_line(
            "exception: #PF (vector 14) syndrome=0x2 pc=0x101234 fault_addr=0xdead000"
        ));
        assert!(!is_exception_line(
            "exception: #PF (vector 14) syndrome=0x2 pc=0x1"
        ));
        assert!(!is_exception_line("exception:  (vector 14) fault_addr=0x1"));
        assert!(!is_exception_line(
            "exception: #PF (vector x) fault_addr=0x1"
        ));
        assert!(!is_exception_line("panic: fault_addr=0x1"));
    }

    #[test]
    fn values() {
        assert!(Is::Version("4.17").matches("4.17"));
        assert!(Is::Version("4.17").matches("4.17.7"));
        assert!(!Is::Version("4.17").matches("4.170"));
        assert!(Is::Num(65536).matches("0x10000"));
        assert!(!Is::Num(65536).matches("65535"));
        assert!(Is::Text("yes").matches("yes"));
        assert!(Is::Present.matches(""));
        assert_eq!(X86_DOM0_PAGES, 65536);
        assert_eq!(ARM_DOM0_PAGES, 8192);
        assert_eq!(ARM_DOMU_PAGES, 32768);
    }
}
