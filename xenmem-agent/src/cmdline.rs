//! The agent's command line: `name=value` words separated by spaces.
//!
//! Every word must be a known option with a well-formed value; anything else is
//! a typed [`CmdlineError`] naming the word, and the agent fails the run. No
//! allocation: errors borrow from the line.

use core::fmt;

use crate::agent::ExitPath;
use xenmem::addr::DomId;

/// A deliberate fault, to test the exception path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Read an address that the agent's page tables do not map.
    Unmapped,
    /// Read the first page of unpopulated guest-physical space (a hole or
    /// unusable range) inside the boot identity map's span: the start-up
    /// trim unmapped it, so the read faults.
    Unpopulated,
}

bitflags::bitflags! {
    /// Which benchmarks `bench=` asks for (names joined with `+`: no commas
    /// can reach an x86 agent).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct BenchSet: u8 {
        /// Balloon out and back in with xenmem's, Linux's and Mini-OS's strategies.
        const BALLOON = 1 << 0;
        /// The memset floor beside populate.
        const FLOOR = 1 << 1;
        /// Grant mapping, one op per hypercall vs batched.
        const GRANT = 1 << 2;
        /// Foreign mapping at several batch sizes.
        const FOREIGN = 1 << 3;
        /// Image size, heap use, boot time.
        const FOOTPRINT = 1 << 4;
    }
}

fn parse_bench(v: &str) -> Option<BenchSet> {
    let mut set = BenchSet::empty();
    for name in v.split('+') {
        set |= match name {
            "balloon" => BenchSet::BALLOON,
            "floor" => BenchSet::FLOOR,
            "grant" => BenchSet::GRANT,
            "foreign" => BenchSet::FOREIGN,
            "footprint" => BenchSet::FOOTPRINT,
            "all" => BenchSet::all(),
            _ => return None,
        };
    }
    Some(set)
}

bitflags::bitflags! {
    /// Which hypercalls with known answers `negative=` makes (names joined
    /// with `+`, as `bench=`; see [`crate::negative`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NegativeSet: u8 {
        /// XTF's XSA-277: decrease the same frame three times (1, 0, 0).
        const XSA277 = 1 << 0;
        /// XTF's XSA-472-3: decrease then populate the same frame, in a
        /// loop (1, 1 each time).
        const XSA472 = 1 << 1;
        /// XTF's XSA-231: NUMA node bits through `mem_flags` (refused: 0
        /// extents, nothing populated).
        const XSA231 = 1 << 2;
        /// Xen's tools/tests/resource: the grant-table size query and a
        /// map of the whole table.
        const ACQUIRE = 1 << 3;
    }
}

fn parse_negative(v: &str) -> Option<NegativeSet> {
    let mut set = NegativeSet::empty();
    for name in v.split('+') {
        set |= match name {
            "xsa277" => NegativeSet::XSA277,
            "xsa472" => NegativeSet::XSA472,
            "xsa231" => NegativeSet::XSA231,
            "acquire" => NegativeSet::ACQUIRE,
            "all" => NegativeSet::all(),
            _ => return None,
        };
    }
    Some(set)
}

/// The most grant-table frames `negative-gnttab=` may give the helper (the
/// library's limit on one acquisition, [`xenmem::acquire::MAX_FRAMES`]).
pub const MAX_NEGATIVE_GNTTAB: u32 = xenmem::acquire::MAX_FRAMES;

/// How big the `helper=` domain's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperMode {
    /// 16 pages in 4 KiB extents.
    Small,
    /// 512 pages in one 2 MiB extent.
    Superpage,
}

/// How an agent that cannot read Xen's M2P learns where its contiguous
/// buffer lies in machine memory (`contig-bus=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContigBus {
    /// Grant the buffer's first and last pages to itself, map both grants
    /// and take the bus addresses Xen returns (Arm only: on x86, mapping
    /// one's own grant takes the page away from its GFN).
    Grant,
}

/// What the agent does once it has surveyed its domain (`mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// The one-shot survey and whatever the other options ask, then exit
    /// (the default).
    Survey,
    /// The balloon service: serve `memory/target` and `control/shutdown`
    /// from xenstore until the toolstack ends the domain (see
    /// [`crate::service`]).
    Service,
}

/// What the agent exchanges with a program in dom0 (`dom0-peer=`), over
/// xenstore keys under its own `data/xenmem/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0Peer {
    /// Grant 1, 64 and 1024 pages to dom0 with a pattern, one round each:
    /// dom0 maps them, checks and writes back; `end_access` is refused
    /// while dom0 holds them and works once it has unmapped; a new map of
    /// an ended reference fails.
    Grant,
    /// dom0 allocates 1024 pages with Linux's gntalloc, granted to this
    /// domain, and publishes their references; the agent maps them in one
    /// batch, checks dom0's pattern, writes its answer and releases them;
    /// dom0 then sees the answer and frees them (Xen's own count of dom0's
    /// active grants, debug key `g`, shows none left mapped).
    Gntalloc,
    /// dom0 maps 64 of the agent's frames, whose GFNs the agent publishes,
    /// as foreign memory (privcmd) and reads the agent's pattern; once
    /// dom0 has unmapped, the agent balloons exactly those frames out, and
    /// dom0's new foreign map of them fails instead of reading stale data.
    Foreign,
    /// dom0 maps 64 granted pages and is killed with them mapped: the
    /// agent's `end_access` is refused until the dead process's mappings
    /// are gone, then every grant ends and every page is reused.
    PeerDies,
    /// dom0 grants 64 pages through gntalloc and ends the grants while the
    /// agent maps them: the agent's mapping stays good (Xen keeps the
    /// pages while mapped) and its release works.
    EndedMidUse,
}

/// The options the agent understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `domid=N`: this domain's id, where Xen cannot tell it (Arm).
    pub domid: Option<DomId>,
    /// `peer=N`: wait for domain N to shut down and fail unless it powered off.
    pub peer: Option<DomId>,
    /// `exit=host|shutdown`: how to end the run.
    pub exit: Option<ExitPath>,
    /// `fault=unmapped`: fault on purpose after the report.
    pub fault: Option<FaultKind>,
    /// `balloon=SIZE`: balloon the domain to a reservation of SIZE bytes.
    pub balloon: Option<u64>,
    /// `balloon-then=SIZE`: afterwards, balloon to SIZE bytes (back up, for a
    /// round trip) and check the repopulated memory.
    pub balloon_then: Option<u64>,
    /// `contig=SIZE`: allocate a machine-contiguous buffer of SIZE bytes,
    /// check it and free it.
    pub contig: Option<u64>,
    /// `contig-bits=N`: the buffer's machine frames must lie below 2^N.
    pub contig_bits: Option<u8>,
    /// `contig-bus=grant`: learn the buffer's machine address through a
    /// grant to itself (see [`ContigBus`]).
    pub contig_bus: Option<ContigBus>,
    /// `bench=NAME+NAME...`: run benchmarks (balloon, floor, grant, foreign,
    /// footprint, all) and print their tables.
    pub bench: Option<BenchSet>,
    /// `grant=self`: set up the agent's own grant table, grant a page of its
    /// own and map that grant (under its real domid).
    pub grant_self: Option<bool>,
    /// `grant-xchg=REF`: exchange a page through grant REF with the peer:
    /// a domU grants it to dom0 (and checks it got REF), dom0 (with `peer=`)
    /// maps the peer's REF, acquires the peer's grant table to read entry
    /// REF, foreign-maps the frame it names, checks the page through both
    /// paths and answers; the domU waits for the answer.
    pub grant_xchg: Option<u32>,
    /// `helper=on|superpage`: (privileged x86 PVH dom0) create a helper
    /// domain, give it memory (16 pages, or one 2 MiB extent), map it as
    /// foreign frames, acquire its grant table, seed grants to dom0, map
    /// them, then unmap everything and destroy the helper.
    pub helper: Option<HelperMode>,
    /// `mode=survey|service`: one-shot (default) or the balloon service.
    pub mode: Option<RunMode>,
    /// `probe=N`: (an unprivileged domain) try a foreign map and an
    /// acquire_resource of domain N's grant table: both must be refused
    /// with EPERM and leave nothing behind.
    pub probe: Option<DomId>,
    /// `dom0-peer=grant`: exchange pages with a program in dom0 (see
    /// [`Dom0Peer`]).
    pub dom0_peer: Option<Dom0Peer>,
    /// `xen-view=SECS`: at each point where the agent's table and Xen's count
    /// must agree, print `report: xen-view` and wait up to SECS seconds for
    /// the runner to answer (after it has asked Xen itself, debug key `q`).
    pub xen_view: Option<u32>,
    /// `negative=NAME+NAME...`: hypercalls with known answers (xsa277,
    /// xsa472, xsa231, acquire, all; see [`crate::negative`]).
    pub negative: Option<NegativeSet>,
    /// `negative-gnttab=N`: the `max_grant_frames` of the helper domain the
    /// negative run creates to acquire from (default: Xen's, 64).
    pub negative_gnttab: Option<u32>,
}

/// What was wrong with the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// The line is not UTF-8; the first bad byte is at this offset.
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// An option this agent does not know.
    Unknown {
        /// The option's name as written.
        name: &'a str,
    },
    /// A known option whose value does not parse.
    Malformed {
        /// The option.
        name: &'static str,
        /// The value as written.
        value: &'a str,
        /// What the value should look like.
        expected: &'static str,
    },
    /// A known option given twice.
    Duplicate {
        /// The option.
        name: &'static str,
    },
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::NotUtf8 { offset } => {
                write!(f, "command line is not UTF-8 (byte {offset})")
            }
            CmdlineError::Unknown { name } => write!(f, "unknown option `{name}`"),
            CmdlineError::Malformed {
                name,
                value,
                expected,
            } => write!(
                f,
                "option `{name}`: bad value `{value}` (expected {expected})"
            ),
            CmdlineError::Duplicate { name } => write!(f, "option `{name}` given twice"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for CmdlineError<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            CmdlineError::NotUtf8 { offset } => {
                defmt::write!(f, "command line is not UTF-8 (byte {=usize})", offset)
            }
            CmdlineError::Unknown { name } => defmt::write!(f, "unknown option `{=str}`", name),
            CmdlineError::Malformed {
                name,
                value,
                expected,
            } => defmt::write!(
                f,
                "option `{=str}`: bad value `{=str}` (expected {=str})",
                name,
                value,
                expected
            ),
            CmdlineError::Duplicate { name } => {
                defmt::write!(f, "option `{=str}` given twice", name)
            }
        }
    }
}

/// Check that the raw line is UTF-8.
pub fn as_text(raw: &[u8]) -> Result<&str, CmdlineError<'static>> {
    core::str::from_utf8(raw).map_err(|e| CmdlineError::NotUtf8 {
        offset: e.valid_up_to(),
    })
}

/// Parse a domain id: decimal or `0x` hex, below `DOMID_FIRST_RESERVED`.
fn parse_domid(v: &str) -> Option<DomId> {
    let n = parse_u64(v)?;
    u16::try_from(n).ok().filter(|&d| d < 0x7ff0).map(DomId)
}

/// Parse a size: bytes in decimal or `0x` hex, or decimal with a binary
/// suffix `K`, `M`, `G` or `T` (KiB, MiB, GiB, TiB).
pub fn parse_size(v: &str) -> Option<u64> {
    let (num, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        b'T' | b't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    let n = if shift == 0 {
        parse_u64(num)?
    } else {
        parse_decimal(num)?
    };
    n.checked_mul(1 << shift)
}

fn parse_decimal(v: &str) -> Option<u64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()
    } else {
        None
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        // Hex digits only: `from_str_radix` alone would take a sign (`0x+1`).
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse().ok(),
        None => None,
    }
}

impl Options {
    /// Apply one word to `self`.
    fn apply<'a>(&mut self, word: &'a str) -> Result<(), CmdlineError<'a>> {
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        macro_rules! set {
            ($field:ident, $name:literal, $parsed:expr, $expected:literal) => {{
                if self.$field.is_some() {
                    return Err(CmdlineError::Duplicate { name: $name });
                }
                match $parsed {
                    Some(v) if word.contains('=') => {
                        self.$field = Some(v);
                        Ok(())
                    }
                    _ => Err(CmdlineError::Malformed {
                        name: $name,
                        value,
                        expected: $expected,
                    }),
                }
            }};
        }
        match name {
            "domid" => set!(
                domid,
                "domid",
                parse_domid(value),
                "a domain id below 0x7ff0"
            ),
            "peer" => set!(peer, "peer", parse_domid(value), "a domain id below 0x7ff0"),
            "exit" => set!(
                exit,
                "exit",
                match value {
                    "host" => Some(ExitPath::Host),
                    "shutdown" => Some(ExitPath::XenShutdown),
                    _ => None,
                },
                "`host` or `shutdown`"
            ),
            "balloon" => set!(balloon, "balloon", parse_size(value), "a size such as 64M"),
            "balloon-then" => set!(
                balloon_then,
                "balloon-then",
                parse_size(value),
                "a size such as 128M"
            ),
            "contig" => set!(contig, "contig", parse_size(value), "a size such as 2M"),
            "contig-bits" => set!(
                contig_bits,
                "contig-bits",
                parse_decimal(value).and_then(|b| u8::try_from(b).ok()),
                "a number of address bits such as 32"
            ),
            "contig-bus" => set!(
                contig_bus,
                "contig-bus",
                match value {
                    "grant" => Some(ContigBus::Grant),
                    _ => None,
                },
                "`grant`"
            ),
            "bench" => set!(
                bench,
                "bench",
                parse_bench(value),
                "benchmarks joined with `+`: balloon, floor, grant, foreign, footprint, all"
            ),
            "helper" => set!(
                helper,
                "helper",
                match value {
                    "on" => Some(HelperMode::Small),
                    "superpage" => Some(HelperMode::Superpage),
                    _ => None,
                },
                "`on` or `superpage`"
            ),
            "mode" => set!(
                mode,
                "mode",
                match value {
                    "survey" => Some(RunMode::Survey),
                    "service" => Some(RunMode::Service),
                    _ => None,
                },
                "`survey` or `service`"
            ),
            "dom0-peer" => set!(
                dom0_peer,
                "dom0-peer",
                match value {
                    "grant" => Some(Dom0Peer::Grant),
                    "gntalloc" => Some(Dom0Peer::Gntalloc),
                    "foreign" => Some(Dom0Peer::Foreign),
                    "peer-dies" => Some(Dom0Peer::PeerDies),
                    "ended-mid-use" => Some(Dom0Peer::EndedMidUse),
                    _ => None,
                },
                "`grant`, `gntalloc`, `foreign`, `peer-dies` or `ended-mid-use`"
            ),
            "xen-view" => set!(
                xen_view,
                "xen-view",
                parse_decimal(value)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|&v| v > 0),
                "a number of seconds such as 60"
            ),
            "negative" => set!(
                negative,
                "negative",
                parse_negative(value),
                "checks joined with `+`: xsa277, xsa472, xsa231, acquire, all"
            ),
            "negative-gnttab" => set!(
                negative_gnttab,
                "negative-gnttab",
                parse_decimal(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| (1..=MAX_NEGATIVE_GNTTAB).contains(n)),
                "a number of grant-table frames from 1 to 1024"
            ),
            "probe" => set!(
                probe,
                "probe",
                parse_domid(value),
                "a domain id below 0x7ff0"
            ),
            "fault" => set!(
                fault,
                "fault",
                match value {
                    "unmapped" => Some(FaultKind::Unmapped),
                    "unpopulated" => Some(FaultKind::Unpopulated),
                    _ => None,
                },
                "`unmapped` or `unpopulated`"
            ),
            "grant" => set!(
                grant_self,
                "grant",
                (value == "self").then_some(true),
                "`self`"
            ),
            "grant-xchg" => set!(
                grant_xchg,
                "grant-xchg",
                parse_u64(value).and_then(|v| u32::try_from(v).ok()),
                "a grant reference such as 8"
            ),
            // Only in a mutant build that reads its mutant from here (see
            // `crate::mutant`); elsewhere an unknown option.
            "mutant" if crate::mutant::RUNTIME => match crate::mutant::choose(value) {
                true => Ok(()),
                false => Err(CmdlineError::Malformed {
                    name: "mutant",
                    value,
                    expected: "one mutant's name",
                }),
            },
            _ => Err(CmdlineError::Unknown { name }),
        }
    }

    /// How the run is to end (`exit=`), read on its own so that it holds
    /// even when other options are malformed: a failed toolstack domU must
    /// still end through Xen, where the host's exit devices do not reach.
    pub fn exit_path(line: &str) -> Option<ExitPath> {
        line.split_ascii_whitespace().find_map(|w| match w {
            "exit=host" => Some(ExitPath::Host),
            "exit=shutdown" => Some(ExitPath::XenShutdown),
            _ => None,
        })
    }

    /// Parse a whole line. Every error is passed to `on_error` (so that all of
    /// them can be reported); the result is `Err` with the first one.
    pub fn parse<'a>(
        line: &'a str,
        mut on_error: impl FnMut(&CmdlineError<'a>),
    ) -> Result<Options, CmdlineError<'a>> {
        let mut opts = Options::default();
        let mut first = None;
        for word in line.split_ascii_whitespace() {
            if let Err(e) = opts.apply(word) {
                on_error(&e);
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(opts),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Options, CmdlineError<'_>> {
        Options::parse(line, |_| {})
    }

    #[test]
    fn good_lines() {
        assert_eq!(parse(""), Ok(Options::default()));
        assert_eq!(parse("   "), Ok(Options::default()));
        let o = parse(" domid=1  peer=0x2 exit=shutdown fault=unmapped ").unwrap();
        assert_eq!(o.domid, Some(DomId(1)));
        assert_eq!(o.peer, Some(DomId(2)));
        assert_eq!(o.exit, Some(ExitPath::XenShutdown));
        assert_eq!(o.fault, Some(FaultKind::Unmapped));
        assert_eq!(
            parse("fault=unpopulated").unwrap().fault,
            Some(FaultKind::Unpopulated)
        );
        assert!(parse("fault=sometimes").is_err());
        assert_eq!(parse("exit=host").unwrap().exit, Some(ExitPath::Host));
        assert_eq!(parse("mode=service").unwrap().mode, Some(RunMode::Service));
        assert_eq!(
            parse("dom0-peer=grant").unwrap().dom0_peer,
            Some(Dom0Peer::Grant)
        );
        assert_eq!(
            parse("dom0-peer=gntalloc").unwrap().dom0_peer,
            Some(Dom0Peer::Gntalloc)
        );
        assert!(parse("dom0-peer=x").is_err());
        assert_eq!(parse("xen-view=60").unwrap().xen_view, Some(60));
        assert!(parse("xen-view=0").is_err());
        assert!(parse("xen-view=").is_err());
        assert!(parse("xen-view=0x+1").is_err());
        assert!(parse("xen-view=99999999999").is_err());
        assert_eq!(parse("mode=survey").unwrap().mode, Some(RunMode::Survey));
        assert!(matches!(
            parse("mode=daemon"),
            Err(CmdlineError::Malformed { name: "mode", .. })
        ));
    }

    #[test]
    fn unknown_and_malformed_are_named() {
        assert_eq!(
            parse("bogus=1"),
            Err(CmdlineError::Unknown { name: "bogus" })
        );
        assert_eq!(parse("quiet"), Err(CmdlineError::Unknown { name: "quiet" }));
        // Only a runtime mutant build knows `mutant=` (see `crate::mutant`).
        if !crate::mutant::RUNTIME {
            assert_eq!(
                parse("mutant=no-pause"),
                Err(CmdlineError::Unknown { name: "mutant" })
            );
        }
        assert_eq!(
            parse("domid=x"),
            Err(CmdlineError::Malformed {
                name: "domid",
                value: "x",
                expected: "a domain id below 0x7ff0"
            })
        );
        for bad in [
            "domid",
            "domid=",
            "domid=0x",
            "domid=0x+1",
            "domid=0x-1",
            "domid=32752",
            "domid=-1",
            "domid=99999999999999999999",
        ] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::Malformed { name: "domid", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            Options::exit_path("bogus=1 exit=shutdown balloon=x"),
            Some(ExitPath::XenShutdown)
        );
        assert_eq!(Options::exit_path("exit=now"), None);
        assert!(matches!(
            parse("exit=now"),
            Err(CmdlineError::Malformed { name: "exit", .. })
        ));
        assert_eq!(
            parse("domid=1 domid=2"),
            Err(CmdlineError::Duplicate { name: "domid" })
        );
        assert_eq!(
            CmdlineError::Unknown { name: "bogus" }.to_string(),
            "unknown option `bogus`"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let mut seen = Vec::new();
        let r = Options::parse("a=1 domid=0 b exit=x", |e| seen.push(e.to_string()));
        assert_eq!(r, Err(CmdlineError::Unknown { name: "a" }));
        assert_eq!(seen.len(), 3);
        assert!(seen[1].contains("`b`"));
        assert!(seen[2].contains("`exit`"));
    }

    #[test]
    fn sizes() {
        for (v, n) in [
            ("4096", 4096),
            ("0x1000", 4096),
            ("64M", 64 << 20),
            ("2m", 2 << 20),
            ("1G", 1 << 30),
            ("3K", 3072),
        ] {
            assert_eq!(parse_size(v), Some(n), "{v}");
        }
        for v in [
            "",
            "M",
            "12Q",
            "0x10M",
            "0x+1000",
            "+1M",
            "-1M",
            "99999999999999999999T",
            "1.5G",
        ] {
            assert_eq!(parse_size(v), None, "{v}");
        }
        let o = parse("balloon=192M balloon-then=256M contig=2M contig-bits=32").unwrap();
        assert_eq!(
            (o.balloon, o.balloon_then, o.contig, o.contig_bits),
            (Some(192 << 20), Some(256 << 20), Some(2 << 20), Some(32))
        );
        assert!(matches!(
            parse("balloon=12Q"),
            Err(CmdlineError::Malformed {
                name: "balloon",
                value: "12Q",
                ..
            })
        ));
        assert_eq!(
            parse("contig=2M contig-bus=grant").unwrap().contig_bus,
            Some(ContigBus::Grant)
        );
        for bad in ["contig-bus=m2p", "contig-bus=", "contig-bus"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::Malformed {
                        name: "contig-bus",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("contig-bits=300"),
            Err(CmdlineError::Malformed {
                name: "contig-bits",
                ..
            })
        ));
    }

    #[test]
    fn bench_sets() {
        assert_eq!(
            parse("bench=balloon+floor").unwrap().bench,
            Some(BenchSet::BALLOON | BenchSet::FLOOR)
        );
        assert_eq!(parse("bench=all").unwrap().bench, Some(BenchSet::all()));
        assert!(matches!(
            parse("bench=fast"),
            Err(CmdlineError::Malformed { name: "bench", .. })
        ));
        assert!(matches!(
            parse("bench=balloon+"),
            Err(CmdlineError::Malformed { name: "bench", .. })
        ));
    }

    #[test]
    fn negative_sets() {
        let o = parse("negative=xsa277+acquire negative-gnttab=40").unwrap();
        assert_eq!(o.negative, Some(NegativeSet::XSA277 | NegativeSet::ACQUIRE));
        assert_eq!(o.negative_gnttab, Some(40));
        assert_eq!(
            parse("negative=all").unwrap().negative,
            Some(NegativeSet::all())
        );
        for bad in ["negative=", "negative=xsa999", "negative=all+", "negative"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::Malformed {
                        name: "negative",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        for bad in [
            "negative-gnttab=0",
            "negative-gnttab=1025",
            "negative-gnttab=0x20",
            "negative-gnttab=+4",
            "negative-gnttab=",
            "negative-gnttab=99999999999",
        ] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::Malformed {
                        name: "negative-gnttab",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse("negative-gnttab=1024").unwrap().negative_gnttab,
            Some(1024)
        );
        assert_eq!(
            parse("negative=xsa231 negative=xsa231"),
            Err(CmdlineError::Duplicate { name: "negative" })
        );
    }

    #[test]
    fn not_utf8() {
        assert_eq!(
            as_text(b"domid=1 \xff"),
            Err(CmdlineError::NotUtf8 { offset: 8 })
        );
        assert_eq!(as_text(b"domid=1"), Ok("domid=1"));
    }
}
