//! Building defmt frames and tables as the agent's logger would emit them,
//! for the decoder's tests (`decode::tests`, `boot`'s tests) and the decode
//! fuzz target, which includes this file by path.

use object::write::{Object, StandardSection, Symbol, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};
use xenmem::logframe::LineEncoder;

/// A minimal ELF carrying a defmt table: `.defmt` symbols whose names are
/// defmt's JSON descriptors, at the addresses that are their indices
/// (1-based).
pub fn defmt_elf(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let sec = obj.add_section(Vec::new(), b".defmt".to_vec(), object::SectionKind::Other);
    obj.append_section_data(sec, &vec![0u8; entries.len() + 1], 1);
    for (i, (tag, data)) in entries.iter().enumerate() {
        let name = format!(
            r#"{{"package":"xenmem","tag":"{tag}","data":"{data}","disambiguator":"{i}","crate_name":"xenmem"}}"#
        );
        obj.add_symbol(Symbol {
            name: name.into_bytes(),
            value: (i + 1) as u64,
            size: 1,
            kind: SymbolKind::Data,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(sec),
            flags: SymbolFlags::None,
        });
    }
    let text = obj.section_id(StandardSection::Text);
    for name in ["_defmt_version_ = 4", "_defmt_encoding_ = rzcobs"] {
        obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Data,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    obj.write().expect("writing the table's ELF")
}

/// defmt's rzCOBS encoding of one frame, with its leading and trailing
/// separators.
pub fn rzcobs(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let (mut run, mut zeros) = (0u8, 0u8);
    for &byte in data {
        if run < 7 {
            if byte == 0 {
                zeros |= 1 << run;
            } else {
                out.push(byte);
            }
            run += 1;
            if run == 7 && zeros != 0 {
                out.push(zeros);
                run = 0;
                zeros = 0;
            }
        } else if byte == 0 {
            out.push((run - 7) | 0x80);
            run = 0;
            zeros = 0;
        } else {
            out.push(byte);
            run += 1;
            if run == 134 {
                out.push(0xff);
                run = 0;
                zeros = 0;
            }
        }
    }
    match run {
        0 => {}
        1..=6 => out.push((zeros | (0xffu8 << run)) & 0x7f),
        _ => out.push((run - 7) | 0x80),
    }
    out.push(0);
    out
}

/// The framed console lines (without line endings) for one defmt frame:
/// table index `index` and the encoded arguments.
pub fn frame_lines(index: u16, args: &[u8]) -> Vec<String> {
    let mut raw = index.to_le_bytes().to_vec();
    raw.extend_from_slice(args);
    let mut enc = LineEncoder::new();
    let mut lines = Vec::new();
    let mut sink = |l: &[u8]| {
        lines.push(String::from_utf8(l.trim_ascii_end().to_vec()).expect("framed lines are ASCII"))
    };
    enc.push(&rzcobs(&raw), &mut sink);
    enc.flush(&mut sink);
    lines
}

/// A `{=str}` argument.
pub fn str_arg(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}
