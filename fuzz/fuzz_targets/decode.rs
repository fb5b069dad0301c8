//! The runner's console decoder (`xtask/src/decode.rs`, included as it is)
//! and the library's line framing under it (`xenmem::logframe`).
//!
//! The input is a console byte stream. It goes through the runner's line
//! splitter and decoder against a defmt table of the kinds of messages the
//! agent prints; nothing may panic, a line without the frame marker comes
//! back unchanged, and afterwards every source the stream spoke for (and
//! d0) still decodes a good frame: the decoder resynchronises after any
//! damage. The input is also pushed through the agent's line encoder and
//! must decode back to itself.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use defmt_decoder::Table;
use libfuzzer_sys::fuzz_target;
use xenmem::logframe::{decode_line, LineEncoder, CHUNK, MARKER, MAX_LINE};

#[allow(dead_code)]
#[path = "../../xtask/src/decode.rs"]
mod decode;

#[path = "../../xtask/src/defmt_frames.rs"]
mod defmt_frames;

use decode::{Decoder, Event, LineSplitter, Source};

/// The messages the table holds (index = position + 1): the argument
/// kinds the agent's log uses, nested formats included.
const ENTRIES: &[(&str, &str)] = &[
    ("defmt_info", "resync {=str}"),
    ("defmt_info", "report: {=str} pages={=u64} order={=u8}"),
    ("defmt_warn", "{=u16} {=u32:#x} {=i32} {=i64} {=usize}"),
    ("defmt_error", "bad {=[u8]} {=[u8; 4]} {=bool} {=char}"),
    ("defmt_debug", "nested {} and {=?}"),
    ("defmt_write", "inner {=u8:x}"),
    ("defmt_trace", "{=istr} {=f32} {=0..4} {=4..16}"),
    ("defmt_println", "plain"),
    ("defmt_info", "{=u128} {=i128:b}"),
    ("defmt_info", "{=str}"),
];

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let elf = defmt_frames::defmt_elf(ENTRIES);
        decode::load_table(&elf).expect("the fuzz table")
    })
}

/// Base64 as RFC 4648 has it (padding only at the very end), of at most
/// [`CHUNK`] bytes: what a framed line's payload must be.
fn reference_payload(p: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = p.as_bytes();
    if !b.len().is_multiple_of(4) || b.len() / 4 * 3 > CHUNK {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 || (pad > 0 && b.len() < 4) {
        return None;
    }
    let mut bits = Vec::new();
    for &c in &b[..b.len() - pad] {
        bits.push(A.iter().position(|&x| x == c)? as u32);
    }
    let mut out = Vec::new();
    for q in bits.chunks(4) {
        let v = q
            .iter()
            .chain(std::iter::repeat(&0))
            .take(4)
            .fold(0u32, |v, &d| (v << 6) | d);
        // 4 sextets are 3 bytes, 3 are 2, 2 are 1.
        let n = q.len() - 1;
        out.extend_from_slice(&v.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

fn prefix(s: Source) -> String {
    if s == Source::D0 {
        String::new()
    } else {
        format!("(XEN) (d{}) ", s.0)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut split = LineSplitter::default();
    let mut lines = split.push(data);
    lines.extend(split.finish());
    // The reference: the byte segments between newlines (the last one
    // only if the input does not end there), each as lossy UTF-8 without
    // `\r`.
    let mut segments: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if segments.last().is_some_and(|l| l.is_empty()) {
        segments.pop();
    }
    let want: Vec<String> = segments
        .iter()
        .map(|l| String::from_utf8_lossy(l).replace('\r', ""))
        .collect();
    assert_eq!(lines, want, "the splitter's lines");

    let mut d = Decoder::new(table());
    let mut sources = BTreeSet::from([Source::D0]);
    for l in &lines {
        let framed = l.contains("@xm:");
        for ev in d.line(l) {
            match ev {
                Event::Text(t) => {
                    assert!(!framed, "a framed line shown as text: {l:?}");
                    assert_eq!(&t, l);
                }
                Event::Agent(a) => {
                    assert!(framed);
                    sources.insert(a.source);
                }
                Event::Warning(_) => assert!(framed),
            }
        }
        if let Some(at) = l.find("@xm:") {
            sources.insert(Source::from_prefix(&l[..at]));
            // The library's framing against plain base64.
            let payload = l[at + 4..].trim_end_matches(['\r', '\n', ' ']);
            let got = decode_line(l).expect("a framed line");
            assert_eq!(
                got.ok().map(|f| (f.prefix.len(), f.payload().to_vec())),
                reference_payload(payload).map(|b| (at, b)),
                "decode_line({l:?})"
            );
        }
    }
    // Every source still decodes a good frame.
    for &s in &sources {
        let mut events = Vec::new();
        for l in defmt_frames::frame_lines(1, &defmt_frames::str_arg("ok")) {
            events.extend(d.line(&format!("{}{l}", prefix(s))));
        }
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Agent(a) if a.source == s && a.message == "resync ok")),
            "{s} did not resynchronise: {events:?}"
        );
    }

    // The agent's framing: the input as a byte stream, back through
    // decode_line.
    let mut enc = LineEncoder::new();
    let mut back = Vec::new();
    let mut sink = |l: &[u8]| {
        assert!(l.len() <= MAX_LINE && l.starts_with(MARKER));
        let text = std::str::from_utf8(l).expect("framed lines are ASCII");
        let f = decode_line(text)
            .expect("a framed line")
            .expect("a good frame");
        assert_eq!(f.prefix, "");
        back.extend_from_slice(f.payload());
    };
    enc.push(data, &mut sink);
    enc.flush(&mut sink);
    assert_eq!(back, data);
});
