//! The agent's command line against a reference parser written from its
//! grammar (the docs of `xenmem_agent::cmdline::Options`):
//!
//! ```text
//! line   := (ws* word)* ws*            ws: ASCII whitespace
//! word   := name ["=" value]           a word without "=" is malformed
//! number := digit+ | "0x" hexdigit+    (fits the option's type)
//! size   := number | digit+ ("K"|"M"|"G"|"T", either case)   (fits u64)
//! ```
//!
//! Every error is reported in order and the first returned; a known option
//! given twice (after a well-formed first) is a duplicate; the options of a
//! good line, written out again, parse to the same options.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenmem::addr::DomId;
use xenmem_agent::agent::ExitPath;
use xenmem_agent::cmdline::{
    as_text, BenchSet, CmdlineError, Dom0Peer, FaultKind, HelperMode, Options, RunMode,
};

fn digits(v: &str, radix: u32) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for c in v.chars() {
        let d = c.to_digit(radix)?;
        n = n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(n)
}

fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(h) => digits(h, 16),
        None => digits(v, 10),
    }
}

fn size(v: &str) -> Option<u64> {
    let shift = match v.chars().last()? {
        'K' | 'k' => 10,
        'M' | 'm' => 20,
        'G' | 'g' => 30,
        'T' | 't' => 40,
        _ => return number(v),
    };
    digits(&v[..v.len() - 1], 10)?.checked_mul(1u64 << shift)
}

fn domid(v: &str) -> Option<DomId> {
    number(v).filter(|&n| n < 0x7ff0).map(|n| DomId(n as u16))
}

fn bench(v: &str) -> Option<BenchSet> {
    v.split('+').try_fold(BenchSet::empty(), |s, n| {
        Some(
            s | match n {
                "balloon" => BenchSet::BALLOON,
                "floor" => BenchSet::FLOOR,
                "grant" => BenchSet::GRANT,
                "foreign" => BenchSet::FOREIGN,
                "footprint" => BenchSet::FOOTPRINT,
                "all" => BenchSet::all(),
                _ => return None,
            },
        )
    })
}

/// An error without its `expected` text: (kind, name, value).
type Tag = (u8, String, String);

fn tag(e: &CmdlineError<'_>) -> Tag {
    match *e {
        CmdlineError::NotUtf8 { offset } => (0, String::new(), offset.to_string()),
        CmdlineError::Unknown { name } => (1, name.into(), String::new()),
        CmdlineError::Malformed {
            name,
            value,
            expected,
        } => {
            assert!(!expected.is_empty());
            (2, name.into(), value.into())
        }
        CmdlineError::Duplicate { name } => (3, name.into(), String::new()),
    }
}

fn reference(line: &str) -> (Options, Vec<Tag>) {
    let mut o = Options::default();
    let mut errs = Vec::new();
    for word in line
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let (name, value) = match word.find('=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        macro_rules! opt {
            ($field:ident, $parse:expr) => {{
                if o.$field.is_some() {
                    errs.push((3, name.to_string(), String::new()));
                } else {
                    let parse = $parse;
                    match value.and_then(|v| parse(v)) {
                        Some(x) => o.$field = Some(x),
                        None => errs.push((2, name.to_string(), value.unwrap_or("").to_string())),
                    }
                }
            }};
        }
        match name {
            "domid" => opt!(domid, domid),
            "peer" => opt!(peer, domid),
            "probe" => opt!(probe, domid),
            "exit" => opt!(exit, |v| match v {
                "host" => Some(ExitPath::Host),
                "shutdown" => Some(ExitPath::XenShutdown),
                _ => None,
            }),
            "balloon" => opt!(balloon, size),
            "balloon-then" => opt!(balloon_then, size),
            "contig" => opt!(contig, size),
            "contig-bits" => opt!(contig_bits, |v| digits(v, 10)
                .and_then(|n| u8::try_from(n).ok())),
            "bench" => opt!(bench, bench),
            "helper" => opt!(helper, |v| match v {
                "on" => Some(HelperMode::Small),
                "superpage" => Some(HelperMode::Superpage),
                _ => None,
            }),
            "mode" => opt!(mode, |v| match v {
                "survey" => Some(RunMode::Survey),
                "service" => Some(RunMode::Service),
                _ => None,
            }),
            "dom0-peer" => opt!(dom0_peer, |v| match v {
                "grant" => Some(Dom0Peer::Grant),
                "gntalloc" => Some(Dom0Peer::Gntalloc),
                "foreign" => Some(Dom0Peer::Foreign),
                "peer-dies" => Some(Dom0Peer::PeerDies),
                "ended-mid-use" => Some(Dom0Peer::EndedMidUse),
                _ => None,
            }),
            "fault" => opt!(fault, |v| match v {
                "unmapped" => Some(FaultKind::Unmapped),
                "unpopulated" => Some(FaultKind::Unpopulated),
                _ => None,
            }),
            "grant" => opt!(grant_self, |v| (v == "self").then_some(true)),
            "grant-xchg" => opt!(grant_xchg, |v| number(v)
                .and_then(|n| u32::try_from(n).ok())),
            _ => errs.push((1, name.to_string(), String::new())),
        }
    }
    (o, errs)
}

/// The options written out as a line, with `style` choosing how numbers
/// are spelled.
fn render(o: &Options, style: u8) -> String {
    let num = |n: u64| {
        if style & 1 != 0 {
            format!("{n:#x}")
        } else {
            n.to_string()
        }
    };
    let size = |n: u64| {
        for (s, shift) in [("T", 40), ("g", 30), ("M", 20), ("k", 10)] {
            if style & 2 != 0 && n != 0 && n.is_multiple_of(1u64 << shift) {
                return format!("{}{s}", n >> shift);
            }
        }
        num(n)
    };
    let mut w = Vec::new();
    if let Some(d) = o.domid {
        w.push(format!("domid={}", num(d.0.into())));
    }
    if let Some(d) = o.peer {
        w.push(format!("peer={}", num(d.0.into())));
    }
    if let Some(d) = o.probe {
        w.push(format!("probe={}", num(d.0.into())));
    }
    if let Some(e) = o.exit {
        w.push(format!(
            "exit={}",
            if e == ExitPath::Host {
                "host"
            } else {
                "shutdown"
            }
        ));
    }
    if let Some(n) = o.balloon {
        w.push(format!("balloon={}", size(n)));
    }
    if let Some(n) = o.balloon_then {
        w.push(format!("balloon-then={}", size(n)));
    }
    if let Some(n) = o.contig {
        w.push(format!("contig={}", size(n)));
    }
    if let Some(n) = o.contig_bits {
        w.push(format!("contig-bits={n}"));
    }
    if let Some(b) = o.bench {
        let names: Vec<&str> = [
            (BenchSet::BALLOON, "balloon"),
            (BenchSet::FLOOR, "floor"),
            (BenchSet::GRANT, "grant"),
            (BenchSet::FOREIGN, "foreign"),
            (BenchSet::FOOTPRINT, "footprint"),
        ]
        .iter()
        .filter(|(f, _)| b.contains(*f))
        .map(|(_, n)| *n)
        .collect();
        // An empty set cannot be written (`bench=` is malformed), and the
        // grammar has no way to ask for one.
        assert!(!names.is_empty(), "bench= parsed to no benchmark");
        w.push(format!("bench={}", names.join("+")));
    }
    if let Some(h) = o.helper {
        w.push(format!(
            "helper={}",
            if h == HelperMode::Small {
                "on"
            } else {
                "superpage"
            }
        ));
    }
    if let Some(m) = o.mode {
        w.push(format!(
            "mode={}",
            if m == RunMode::Survey {
                "survey"
            } else {
                "service"
            }
        ));
    }
    if let Some(p) = o.dom0_peer {
        w.push(format!(
            "dom0-peer={}",
            match p {
                Dom0Peer::Grant => "grant",
                Dom0Peer::Gntalloc => "gntalloc",
                Dom0Peer::Foreign => "foreign",
                Dom0Peer::PeerDies => "peer-dies",
                Dom0Peer::EndedMidUse => "ended-mid-use",
            }
        ));
    }
    if let Some(f) = o.fault {
        w.push(format!(
            "fault={}",
            if f == FaultKind::Unmapped {
                "unmapped"
            } else {
                "unpopulated"
            }
        ));
    }
    if o.grant_self.is_some() {
        w.push("grant=self".into());
    }
    if let Some(r) = o.grant_xchg {
        w.push(format!("grant-xchg={}", num(r.into())));
    }
    if style & 4 != 0 {
        w.reverse();
    }
    w.join(if style & 8 != 0 { " \t " } else { " " })
}

fuzz_target!(|data: &[u8]| {
    let line = match as_text(data) {
        Ok(l) => {
            assert!(std::str::from_utf8(data).is_ok());
            l
        }
        Err(e) => {
            let want = std::str::from_utf8(data).unwrap_err().valid_up_to();
            assert_eq!(e, CmdlineError::NotUtf8 { offset: want });
            return;
        }
    };
    let mut seen = Vec::new();
    let got = Options::parse(line, |e| seen.push(*e));
    let (want, want_errs) = reference(line);
    let tags: Vec<Tag> = seen.iter().map(tag).collect();
    assert_eq!(tags, want_errs, "the errors of {line:?}");
    match got {
        Ok(o) => {
            assert!(want_errs.is_empty());
            assert_eq!(o, want, "the options of {line:?}");
            for style in 0..16 {
                let again = render(&o, style);
                assert_eq!(
                    Options::parse(&again, |_| {}),
                    Ok(o),
                    "{line:?} written out as {again:?}"
                );
            }
        }
        Err(e) => assert_eq!(Some(tag(&e)), want_errs.first().cloned()),
    }
    // `exit=` is read on its own, whatever else the line holds.
    let exit = line
        .split(|c: char| c.is_ascii_whitespace())
        .find_map(|w| match w {
            "exit=host" => Some(ExitPath::Host),
            "exit=shutdown" => Some(ExitPath::XenShutdown),
            _ => None,
        });
    assert_eq!(Options::exit_path(line), exit);
});
