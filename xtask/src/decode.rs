//! Turning Xen's console into readable lines: framed agent lines (`@xm:`)
//! go through one defmt stream decoder per source domain, everything else is
//! Xen's own text.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use defmt_decoder::{DecodeError, StreamDecoder, Table};

/// The domain a console line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(pub u16);

impl Source {
    /// The hardware domain.
    pub const D0: Source = Source(0);
    /// The first dom0less domU.
    pub const D1: Source = Source(1);

    /// The source named by Xen's prefix of a line: the last `(dN)` tag in it
    /// (Xen writes `(XEN) [ timestamp] (d1) ` before a domU's lines); lines
    /// without one come from the hardware domain, whose output Xen copies to
    /// the serial line unprefixed.
    pub fn from_prefix(prefix: &str) -> Source {
        let mut found = None;
        for (i, _) in prefix.match_indices("(d") {
            let rest = &prefix[i + 2..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[digits..].starts_with(')') {
                if let Ok(n) = rest[..digits].parse::<u16>() {
                    found = Some(Source(n));
                }
            }
        }
        found.unwrap_or(Source::D0)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// A defmt log level (or `println`, which has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `defmt::println!`
    Print,
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warn
    Warn,
    /// error
    Error,
}

impl Level {
    fn from_str(s: Option<&str>) -> Level {
        match s {
            Some("trace") => Level::Trace,
            Some("debug") => Level::Debug,
            Some("info") => Level::Info,
            Some("warn") => Level::Warn,
            Some("error") => Level::Error,
            _ => Level::Print,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Print => "PRINT",
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One decoded agent log message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLine {
    /// The domain that printed it.
    pub source: Source,
    /// Its level.
    pub level: Level,
    /// The formatted message.
    pub message: String,
    /// defmt's timestamp, if the agent defines one.
    pub timestamp: Option<String>,
}

impl fmt::Display for AgentLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.source)?;
        if let Some(t) = &self.timestamp {
            write!(f, "{t} ")?;
        }
        write!(f, "{:<5} {}", self.level, self.message)
    }
}

/// What one console line turned into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Xen's (or firmware's) own text, unchanged.
    Text(String),
    /// A complete agent message.
    Agent(AgentLine),
    /// Something went wrong decoding (a damaged framed line, a malformed
    /// defmt frame): a warning to show and log.
    Warning(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Text(t) => f.write_str(t),
            Event::Agent(a) => a.fmt(f),
            Event::Warning(w) => write!(f, "xtask: warning: {w}"),
        }
    }
}

/// Read the defmt table out of the agent's ELF.
pub fn load_table(elf: &[u8]) -> Result<Table> {
    match Table::parse(elf).context("reading the agent's defmt table")? {
        Some(t) => Ok(t),
        None => bail!("the agent ELF has no .defmt section (was it built with the `rt` feature?)"),
    }
}

/// The live decoder: one defmt stream per source.
pub struct Decoder<'t> {
    table: &'t Table,
    /// The sources that run another build of the agent, with its table.
    others: BTreeMap<Source, &'t Table>,
    streams: BTreeMap<Source, Box<dyn StreamDecoder + Send + Sync + 't>>,
}

impl<'t> Decoder<'t> {
    /// A decoder for agents built from the ELF `table` came from.
    pub fn new(table: &'t Table) -> Self {
        Self {
            table,
            others: BTreeMap::new(),
            streams: BTreeMap::new(),
        }
    }

    /// Decode `source`'s lines with `table` instead (a rig boot whose
    /// domUs run different builds of the agent, e.g. mutants: a build's
    /// defmt indices are its own). Before its first line.
    pub fn use_table(&mut self, source: Source, table: &'t Table) {
        self.others.insert(source, table);
    }

    /// Take one console line (without its line ending) and return what it
    /// means: Xen's text as is, or the agent messages it completed.
    pub fn line(&mut self, line: &str) -> Vec<Event> {
        let f = match xenmem::logframe::decode_line(line) {
            None => return vec![Event::Text(line.to_string())],
            Some(Err(e)) => {
                return vec![Event::Warning(format!(
                    "damaged agent line ({e:?}): {line}"
                ))]
            }
            Some(Ok(f)) => f,
        };
        let source = Source::from_prefix(f.prefix);
        let table = self.others.get(&source).copied().unwrap_or(self.table);
        let stream = self
            .streams
            .entry(source)
            .or_insert_with(|| table.new_stream_decoder());
        stream.received(f.payload());
        let mut out = Vec::new();
        // A malformed frame is dropped by an encoding that can resynchronise
        // (rzCOBS); a raw stream cannot, so stop there.
        for _ in 0..1024 {
            match stream.decode() {
                Ok(frame) => out.push(Event::Agent(AgentLine {
                    source,
                    level: Level::from_str(frame.level().map(|l| l.as_str())),
                    message: frame.display_message().to_string(),
                    timestamp: frame.display_timestamp().map(|t| t.to_string()),
                })),
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    out.push(Event::Warning(format!(
                        "[{source}] malformed defmt frame (lost)"
                    )));
                    if !table.encoding().can_recover() {
                        break;
                    }
                }
            }
        }
        out
    }
}

/// Splits a byte stream into lines; `\r` is dropped, invalid UTF-8 replaced.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Add bytes; returns the lines they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(Self::text(&std::mem::take(&mut self.buf)));
            } else {
                self.buf.push(b);
            }
        }
        out
    }

    /// The unterminated last line at end of input, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            Some(Self::text(&std::mem::take(&mut self.buf)))
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).replace('\r', "")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    // The frame builders, shared with the decode fuzz target.
    pub(crate) use crate::defmt_frames::{defmt_elf, frame_lines, str_arg};
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness};

    #[test]
    fn sources_from_prefixes() {
        assert_eq!(Source::from_prefix(""), Source::D0);
        assert_eq!(Source::from_prefix("(XEN) "), Source::D0);
        assert_eq!(Source::from_prefix("(d1) "), Source::D1);
        assert_eq!(Source::from_prefix("(XEN) (d2) "), Source(2));
        assert_eq!(
            Source::from_prefix("(XEN) [    1.234567] (d1) "),
            Source::D1
        );
        assert_eq!(Source::from_prefix("(XEN) (d12) "), Source(12));
        assert_eq!(Source::from_prefix("(XEN) (d) (dx) (d1"), Source::D0);
        assert_eq!(Source::from_prefix("(XEN) (d0) "), Source::D0);
        assert_eq!(Source::from_prefix("(d"), Source::D0);
        assert_eq!(Source::from_prefix("(d99999999) "), Source::D0);
        assert_eq!(Source(3).to_string(), "d3");
    }

    #[test]
    fn decodes_frames_per_source() {
        let elf = defmt_elf(&[
            ("defmt_info", "report: xen version={=str} extra={=str}"),
            ("defmt_error", "cmdline: unknown option `{=str}`"),
            ("defmt_info", "count={=u32}"),
        ]);
        let table = load_table(&elf).unwrap();
        let mut d = Decoder::new(&table);
        assert_eq!(
            d.line("(XEN) Xen version 4.17"),
            [Event::Text("(XEN) Xen version 4.17".into())]
        );

        // A long frame (several lines) from d1, interleaved with a short one
        // from d0: each source has its own stream.
        let mut args = str_arg("4.17");
        args.extend(str_arg(&".7".repeat(60)));
        let d1 = frame_lines(1, &args);
        assert!(d1.len() > 2);
        let d0 = frame_lines(2, &str_arg("bogus"));
        assert_eq!(d0.len(), 1);

        let mut events = Vec::new();
        events.extend(d.line(&format!("(XEN) [    1.000] (d1) {}", d1[0])));
        events.extend(d.line(&d0[0]));
        for l in &d1[1..] {
            events.extend(d.line(&format!("(XEN) (d1) {l}")));
        }
        events.extend(d.line(&frame_lines(3, &65536u32.to_le_bytes())[0]));
        let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "[d0] ERROR cmdline: unknown option `bogus`".to_string(),
                format!(
                    "[d1] INFO  report: xen version=4.17 extra={}",
                    ".7".repeat(60)
                ),
                "[d0] INFO  count=65536".to_string(),
            ]
        );
    }

    #[test]
    fn other_builds_decode_with_their_own_table() {
        let real = load_table(&defmt_elf(&[("defmt_info", "real")])).unwrap();
        let mutant = load_table(&defmt_elf(&[("defmt_info", "mutant")])).unwrap();
        let mut d = Decoder::new(&real);
        d.use_table(Source(2), &mutant);
        let f = &frame_lines(1, &[])[0];
        let got: Vec<String> = ["(XEN) (d1) ", "(XEN) (d2) ", ""]
            .iter()
            .flat_map(|p| d.line(&format!("{p}{f}")))
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            got,
            ["[d1] INFO  real", "[d2] INFO  mutant", "[d0] INFO  real"]
        );
    }

    #[test]
    fn timestamps_are_shown_but_not_part_of_the_message() {
        let elf = defmt_elf(&[("defmt_timestamp", "{=u32}"), ("defmt_warn", "hot")]);
        let table = load_table(&elf).unwrap();
        let mut d = Decoder::new(&table);
        let ev = d.line(&frame_lines(2, &1234u32.to_le_bytes())[0]);
        let [Event::Agent(a)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(a.message, "hot");
        assert_eq!(a.level, Level::Warn);
        assert_eq!(a.to_string(), "[d0] 1234 WARN  hot");
    }

    #[test]
    fn damaged_and_malformed() {
        let elf = defmt_elf(&[("defmt_info", "hello")]);
        let table = load_table(&elf).unwrap();
        let mut d = Decoder::new(&table);
        assert!(matches!(&d.line("@xm:Zm9")[..], [Event::Warning(_)]));
        // A frame with an index the table does not have, then a good one: the
        // stream resynchronises.
        let bad = frame_lines(77, &[]);
        assert!(matches!(&d.line(&bad[0])[..], [Event::Warning(_)]));
        let good = frame_lines(1, &[]);
        assert_eq!(d.line(&good[0])[0].to_string(), "[d0] INFO  hello");
    }

    #[test]
    fn no_defmt_table() {
        let obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let elf = obj.write().unwrap();
        let e = load_table(&elf).unwrap_err().to_string();
        assert!(e.contains(".defmt"), "{e}");
        assert!(load_table(b"not an elf").is_err());
    }

    #[test]
    fn splitter_handles_crlf_and_partial_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab\r\ncd"), ["ab"]);
        assert_eq!(s.push(b"e\n\nf"), ["cde", ""]);
        assert_eq!(s.finish(), Some("f".into()));
        assert_eq!(s.finish(), None);
        assert_eq!(s.push(b"\xff\n"), ["\u{fffd}"]);
    }
}
