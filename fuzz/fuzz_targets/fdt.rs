//! The device-tree reader against a reference reader written from the
//! devicetree specification (v0.4, chapter 5), and the memory map read from
//! a tree (`MemoryMap::from_fdt`) against one read from the reference's
//! events.
//!
//! Input byte 0: even — the rest is a blob as it is (the seeds are real
//! trees Xen built); odd — the rest describes a tree, which is written out
//! as a valid blob (names, properties, NOPs, nesting) and must read back
//! event for event.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use xenmem::fdt::{node_matches, read_cells, Event, Fdt, MAX_DEPTH};
use xenmem::memmap::{MemKind, MemMapError, MemoryMap, MAX_RANGES};

#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Begin(usize, String),
    Prop(usize, String, Vec<u8>),
    End(usize),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn cstr(b: &[u8], at: usize) -> Option<(String, usize)> {
    let rest = b.get(at..)?;
    let n = rest.iter().position(|&c| c == 0)?;
    Some((String::from_utf8(rest[..n].to_vec()).ok()?, n))
}

/// The reference: the events up to the first error, and whether the walk
/// ended well (`None`: the header or layout was refused).
fn reference(blob: &[u8]) -> Option<(Vec<Ev>, bool)> {
    if blob.len() < 40 || be32(blob, 0)? != 0xd00d_feed {
        return None;
    }
    let total = be32(blob, 4)? as usize;
    if total < 40 || total > blob.len() {
        return None;
    }
    let blob = &blob[..total];
    let (off_struct, off_strings) = (be32(blob, 8)? as usize, be32(blob, 12)? as usize);
    let (version, last_comp) = (be32(blob, 20)?, be32(blob, 24)?);
    let (size_strings, size_struct) = (be32(blob, 32)? as usize, be32(blob, 36)? as usize);
    if version < 16 || last_comp > 17 || off_struct % 4 != 0 {
        return None;
    }
    let structs = blob.get(off_struct..off_struct.checked_add(size_struct)?)?;
    let strings = blob.get(off_strings..off_strings.checked_add(size_strings)?)?;
    let mut ev = Vec::new();
    let mut at = 0usize;
    let mut depth = 0usize;
    let ok = loop {
        let Some(token) = be32(structs, at) else {
            break false;
        };
        at += 4;
        match token {
            1 => {
                let Some((name, n)) = cstr(structs, at) else {
                    break false;
                };
                if depth >= MAX_DEPTH {
                    break false;
                }
                at = (at + n + 1).next_multiple_of(4);
                ev.push(Ev::Begin(depth, name));
                depth += 1;
            }
            2 => {
                if depth == 0 {
                    break false;
                }
                depth -= 1;
                ev.push(Ev::End(depth));
            }
            3 => {
                let (Some(len), Some(nameoff)) = (be32(structs, at), be32(structs, at + 4)) else {
                    break false;
                };
                let start = at + 8;
                let Some(value) = start
                    .checked_add(len as usize)
                    .and_then(|e| structs.get(start..e))
                else {
                    break false;
                };
                at = (start + len as usize).next_multiple_of(4);
                let Some((name, _)) = cstr(strings, nameoff as usize) else {
                    break false;
                };
                if depth == 0 {
                    break false;
                }
                ev.push(Ev::Prop(depth - 1, name, value.to_vec()));
            }
            4 => {}
            9 => break depth == 0,
            _ => break false,
        }
    };
    Some((ev, ok))
}

/// The node path's value of `prop`, from the events: the first such
/// property of a node whose chain of names matches the path's components.
fn ref_property(ev: &[Ev], path: &str, prop: &str) -> Option<Vec<u8>> {
    let p = path.trim_matches('/');
    let comps: Vec<&str> = if p.is_empty() {
        Vec::new()
    } else {
        p.split('/').collect()
    };
    let mut stack: Vec<&str> = Vec::new();
    for e in ev {
        match e {
            Ev::Begin(_, n) => stack.push(n),
            Ev::End(_) => {
                stack.pop();
            }
            Ev::Prop(_, n, v) => {
                // stack[0] is the root; stack[i] matches comps[i - 1].
                if n == prop
                    && stack.len() == comps.len() + 1
                    && stack[1..]
                        .iter()
                        .zip(&comps)
                        .all(|(s, c)| node_matches(s, c))
                {
                    return Some(v.clone());
                }
            }
        }
    }
    None
}

/// The memory map from the events: `/memory*` `reg` is RAM, `/hypervisor`
/// `reg` is Xen's free space, `/reserved-memory/*` `reg` is reserved, with
/// the parent's cells as they stand when the `reg` is met.
fn ref_memmap(ev: &[Ev]) -> Result<Vec<(u64, u64, MemKind)>, Option<MemMapError>> {
    let mut cells = vec![(2u32, 1u32); MAX_DEPTH];
    let mut top = "";
    let mut out = Vec::new();
    let mut index = 0;
    for e in ev {
        match e {
            Ev::Begin(d, name) => {
                cells[*d] = (2, 1);
                if *d == 1 {
                    top = name.split('@').next().unwrap_or("");
                }
            }
            Ev::Prop(d, name, v) => {
                let cell = || {
                    v.get(..4)
                        .map_or(u32::MAX, |b| u32::from_be_bytes(b.try_into().unwrap()))
                };
                match name.as_str() {
                    "#address-cells" => cells[*d].0 = cell(),
                    "#size-cells" => cells[*d].1 = cell(),
                    "reg" => {
                        let kind = match (*d, top) {
                            (1, "memory") => MemKind::Ram,
                            (1, "hypervisor") => MemKind::Hypervisor,
                            (2, "reserved-memory") => MemKind::Reserved,
                            _ => continue,
                        };
                        let (ac, sc) = cells[*d - 1];
                        if !(1..=2).contains(&ac) || sc > 2 {
                            return Err(None);
                        }
                        let stride = (ac + sc) as usize * 4;
                        if v.is_empty() || v.len() % stride != 0 {
                            return Err(None);
                        }
                        for c in v.chunks(stride) {
                            let num =
                                |b: &[u8]| b.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x));
                            let base = num(&c[..ac as usize * 4]);
                            let size = num(&c[ac as usize * 4..]);
                            if size != 0 {
                                if base.checked_add(size).is_none() {
                                    return Err(Some(MemMapError::Overflow { index }));
                                }
                                if out.len() == MAX_RANGES {
                                    return Err(Some(MemMapError::TooMany));
                                }
                                out.push((base, base + size, kind));
                            }
                            index += 1;
                        }
                    }
                    _ => {}
                }
            }
            Ev::End(_) => {}
        }
    }
    Ok(out)
}

fn check_blob(blob: &[u8], probe: &[(String, String)]) {
    let want = reference(blob);
    let tree = Fdt::new(blob);
    let Some((want_ev, want_ok)) = want else {
        assert!(tree.is_err(), "a blob the reference refuses was accepted");
        assert!(MemoryMap::from_fdt(blob).is_err());
        return;
    };
    let tree = tree.expect("a blob the reference accepts");
    let mut got = Vec::new();
    let r = tree.walk(|d, e| {
        got.push(match e {
            Event::Begin(n) => Ev::Begin(d, n.to_string()),
            Event::Prop(n, v) => Ev::Prop(d, n.to_string(), v.to_vec()),
            Event::End => Ev::End(d),
        });
        Ok(())
    });
    assert_eq!(got, want_ev, "the walk's events");
    assert_eq!(r.is_ok(), want_ok, "the walk's end: {r:?}");

    let mut probes: Vec<(String, String)> = probe.to_vec();
    // Paths from the tree itself.
    let mut stack: Vec<String> = Vec::new();
    for e in want_ev.iter().take(64) {
        match e {
            Ev::Begin(_, n) => stack.push(n.clone()),
            Ev::End(_) => {
                stack.pop();
            }
            Ev::Prop(_, n, _) => probes.push((stack[1..].join("/"), n.clone())),
        }
    }
    for (path, prop) in probes.iter().take(16) {
        let got = tree.property(path, prop);
        if want_ok {
            assert_eq!(
                got.expect("property of a good tree").map(<[u8]>::to_vec),
                ref_property(&want_ev, path, prop),
                "property({path:?}, {prop:?})"
            );
        } else {
            assert!(got.is_err());
        }
    }

    let map = MemoryMap::from_fdt(blob);
    match (map, ref_memmap(&want_ev)) {
        (Ok(m), Ok(want)) => {
            assert!(want_ok);
            let got: Vec<_> = m
                .ranges()
                .iter()
                .map(|r| (r.start.0, r.end.0, r.kind))
                .collect();
            assert_eq!(got, want, "from_fdt");
        }
        (Err(MemMapError::DeviceTree(_)), Ok(_)) => {
            assert!(!want_ok, "from_fdt refused a good tree")
        }
        (Err(e), Err(Some(w))) => assert_eq!(e, w),
        (Err(MemMapError::DeviceTree(_)), Err(None)) => {}
        // The walk failed after the entries the reference read.
        (Err(_), Ok(_)) if !want_ok => {}
        (got, want) => panic!("from_fdt: {got:?}, reference {want:?} (walk ok: {want_ok})"),
    }
}

/// Write a tree: a valid blob from a description.
struct Writer {
    structs: Vec<u8>,
    strings: Vec<u8>,
    names: Vec<(String, u32)>,
}

impl Writer {
    fn token(&mut self, t: u32) {
        self.structs.extend_from_slice(&t.to_be_bytes());
    }
    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }
    fn name_off(&mut self, n: &str) -> u32 {
        if let Some((_, o)) = self.names.iter().find(|(m, _)| m == n) {
            return *o;
        }
        let o = self.strings.len() as u32;
        self.strings.extend_from_slice(n.as_bytes());
        self.strings.push(0);
        self.names.push((n.to_string(), o));
        o
    }
}

const NODES: &[&str] = &[
    "memory@40000000",
    "memory",
    "hypervisor",
    "reserved-memory",
    "chosen",
    "cpus",
    "x@0",
    "",
    "memory@0@1",
];
const PROPS: &[&str] = &[
    "#address-cells",
    "#size-cells",
    "reg",
    "bootargs",
    "compatible",
    "xen,uefi",
];

fn gen_node(
    u: &mut Unstructured<'_>,
    w: &mut Writer,
    ev: &mut Vec<Ev>,
    depth: usize,
    budget: &mut u32,
) -> AResult<()> {
    let name = if u.ratio(1, 8)? {
        let s: String = u.arbitrary()?;
        s.replace('\0', "")
    } else {
        u.choose(NODES)?.to_string()
    };
    let name = if depth == 0 { String::new() } else { name };
    w.token(1);
    w.structs.extend_from_slice(name.as_bytes());
    w.structs.push(0);
    w.pad();
    ev.push(Ev::Begin(depth, name));
    while *budget > 0 && u.ratio(3, 4)? {
        *budget -= 1;
        if u.ratio(1, 8)? {
            w.token(4);
            continue;
        }
        if depth + 1 < MAX_DEPTH && u.ratio(1, 3)? {
            gen_node(u, w, ev, depth + 1, budget)?;
            continue;
        }
        let pname = u.choose(PROPS)?.to_string();
        let value: Vec<u8> = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=3u32)?.to_be_bytes().to_vec(),
            1 => {
                let n = u.int_in_range(0..=6)? * 4;
                (0..n).map(|_| u.arbitrary()).collect::<AResult<_>>()?
            }
            2 => {
                let n = u.int_in_range(0..=6)?;
                let mut v = Vec::new();
                for _ in 0..n {
                    let x: u64 = if u.arbitrary()? {
                        u.int_in_range(0..=1u64 << 34)?
                    } else {
                        u.arbitrary()?
                    };
                    v.extend_from_slice(&x.to_be_bytes());
                }
                v
            }
            _ => u.arbitrary::<Vec<u8>>()?,
        };
        let off = w.name_off(&pname);
        w.token(3);
        w.structs
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        w.structs.extend_from_slice(&off.to_be_bytes());
        w.structs.extend_from_slice(&value);
        w.pad();
        ev.push(Ev::Prop(depth, pname, value));
    }
    w.token(2);
    ev.push(Ev::End(depth));
    Ok(())
}

fn generated(u: &mut Unstructured<'_>) -> AResult<()> {
    let mut w = Writer {
        structs: Vec::new(),
        strings: Vec::new(),
        names: Vec::new(),
    };
    let mut ev = Vec::new();
    let mut budget = 200;
    gen_node(u, &mut w, &mut ev, 0, &mut budget)?;
    w.token(9);
    let off_struct = 40 + 16; // after the header and an empty reservation map
    let off_strings = off_struct + w.structs.len();
    let total = off_strings + w.strings.len();
    let mut blob = Vec::with_capacity(total);
    for v in [
        0xd00d_feed,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        40,
        17,
        16,
        0,
        w.strings.len() as u32,
        w.structs.len() as u32,
    ] {
        blob.extend_from_slice(&u32::to_be_bytes(v));
    }
    blob.extend_from_slice(&[0; 16]);
    blob.extend_from_slice(&w.structs);
    blob.extend_from_slice(&w.strings);
    let (got, ok) = reference(&blob).expect("the writer's blob");
    assert!(ok && got == ev, "the reference misreads a written tree");
    let probe = vec![
        ("memory".to_string(), "reg".to_string()),
        ("/".to_string(), "#address-cells".to_string()),
    ];
    check_blob(&blob, &probe);
    // And truncated copies of it.
    for cut in [blob.len() - 1, blob.len() / 2] {
        check_blob(&blob[..cut], &probe);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Keep the seeds' magic: the blob starts at byte 0.
        let probe = vec![
            ("chosen".to_string(), "bootargs".to_string()),
            ("hypervisor".to_string(), "reg".to_string()),
        ];
        check_blob(data, &probe);
        let _ = read_cells(rest, u32::from(mode % 3));
    } else {
        let _ = generated(&mut Unstructured::new(rest));
    }
});
