//! A small, bounds-checked reader for flattened device trees.
//!
//! Every offset and length in the blob is checked; a malformed, truncated or
//! hostile tree gives an [`FdtError`], never a panic or an out-of-bounds read.
//! (The `fdt` crate was tried first: it panics on most corrupted trees.)

use core::fmt;

const MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;
/// Nodes nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;

/// What is wrong with a device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// Shorter than its header, or than the header's `totalsize`.
    Truncated,
    /// The magic is not `0xd00dfeed`.
    BadMagic,
    /// A version older than 16 (or a last-compatible version above 17).
    BadVersion,
    /// A block lies outside the blob.
    BadLayout,
    /// A token that the format does not define, at this struct-block offset.
    BadToken(usize),
    /// A node name or property name is not terminated inside its block.
    BadString,
    /// Nodes nested deeper than [`MAX_DEPTH`], or more ends than begins.
    BadNesting,
    /// A property's value does not fit the cells the tree declares.
    BadProperty(&'static str),
}

impl FdtError {
    /// What went wrong, in words.
    pub const fn as_str(self) -> &'static str {
        match self {
            FdtError::Truncated => "truncated",
            FdtError::BadMagic => "bad magic",
            FdtError::BadVersion => "unsupported version",
            FdtError::BadLayout => "a block lies outside the blob",
            FdtError::BadToken(_) => "unknown token in the structure block",
            FdtError::BadString => "unterminated name",
            FdtError::BadNesting => "bad node nesting",
            FdtError::BadProperty(what) => what,
        }
    }
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdtError::BadToken(at) => write!(f, "unknown token at structure offset {at:#x}"),
            other => f.write_str(other.as_str()),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Read the header's `totalsize` from the start of a blob, checking the magic:
/// what boot glue needs to know how long the tree is before it has a slice.
pub fn total_size(header: &[u8; 8]) -> Result<usize, FdtError> {
    if be32(header, 0) != Some(MAGIC) {
        return Err(FdtError::BadMagic);
    }
    be32(header, 4)
        .map(|n| n as usize)
        .ok_or(FdtError::Truncated)
}

/// A checked device tree.
#[derive(Clone, Copy, Debug)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

/// One step of a walk through the structure block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A node starts (name with its unit address, `""` for the root).
    Begin(&'a str),
    /// A property of the node last begun.
    Prop(&'a str, &'a [u8]),
    /// The node last begun ends.
    End,
}

impl<'a> Fdt<'a> {
    /// Check the header and the blocks' bounds.
    pub fn new(blob: &'a [u8]) -> Result<Self, FdtError> {
        if blob.len() < HEADER_LEN {
            return Err(if blob.len() >= 4 && be32(blob, 0) != Some(MAGIC) {
                FdtError::BadMagic
            } else {
                FdtError::Truncated
            });
        }
        let h = |i: usize| be32(blob, i * 4).ok_or(FdtError::Truncated);
        if h(0)? != MAGIC {
            return Err(FdtError::BadMagic);
        }
        let total = h(1)? as usize;
        if total > blob.len() || total < HEADER_LEN {
            return Err(FdtError::Truncated);
        }
        let blob = &blob[..total];
        if h(5)? < 16 || h(6)? > 17 {
            return Err(FdtError::BadVersion);
        }
        let block = |off: u32, len: u32| -> Result<&'a [u8], FdtError> {
            let start = off as usize;
            let end = start.checked_add(len as usize).ok_or(FdtError::BadLayout)?;
            blob.get(start..end).ok_or(FdtError::BadLayout)
        };
        let structs = block(h(2)?, h(9)?)?;
        let strings = block(h(3)?, h(8)?)?;
        if h(2)? % 4 != 0 {
            return Err(FdtError::BadLayout);
        }
        Ok(Fdt { structs, strings })
    }

    /// Walk the structure block, calling `visit` for every event, checking
    /// nesting. Stops at the first error.
    pub fn walk(
        &self,
        mut visit: impl FnMut(usize, Event<'a>) -> Result<(), FdtError>,
    ) -> Result<(), FdtError> {
        let s = self.structs;
        let mut at = 0usize;
        let mut depth = 0usize;
        loop {
            let token = be32(s, at).ok_or(FdtError::Truncated)?;
            let here = at;
            at += 4;
            match token {
                TOKEN_BEGIN_NODE => {
                    let rest = s.get(at..).ok_or(FdtError::Truncated)?;
                    let n = rest
                        .iter()
                        .position(|&b| b == 0)
                        .ok_or(FdtError::BadString)?;
                    let name = core::str::from_utf8(&rest[..n]).map_err(|_| FdtError::BadString)?;
                    at = align4(at + n + 1)?;
                    if depth >= MAX_DEPTH {
                        return Err(FdtError::BadNesting);
                    }
                    visit(depth, Event::Begin(name))?;
                    depth += 1;
                }
                TOKEN_END_NODE => {
                    depth = depth.checked_sub(1).ok_or(FdtError::BadNesting)?;
                    visit(depth, Event::End)?;
                }
                TOKEN_PROP => {
                    let len = be32(s, at).ok_or(FdtError::Truncated)? as usize;
                    let nameoff = be32(s, at + 4).ok_or(FdtError::Truncated)? as usize;
                    at += 8;
                    let end = at.checked_add(len).ok_or(FdtError::Truncated)?;
                    let value = s.get(at..end).ok_or(FdtError::Truncated)?;
                    at = align4(end)?;
                    let name = self.string(nameoff)?;
                    if depth == 0 {
                        return Err(FdtError::BadNesting);
                    }
                    visit(depth - 1, Event::Prop(name, value))?;
                }
                TOKEN_NOP => {}
                TOKEN_END => {
                    return if depth == 0 {
                        Ok(())
                    } else {
                        Err(FdtError::BadNesting)
                    };
                }
                _ => return Err(FdtError::BadToken(here)),
            }
        }
    }

    fn string(&self, off: usize) -> Result<&'a str, FdtError> {
        let rest = self.strings.get(off..).ok_or(FdtError::BadString)?;
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FdtError::BadString)?;
        core::str::from_utf8(&rest[..n]).map_err(|_| FdtError::BadString)
    }

    /// The value of property `prop` of the node at `path` (e.g.
    /// `"/chosen"`, `"bootargs"`); node names match with or without their
    /// unit address.
    pub fn property(&self, path: &str, prop: &str) -> Result<Option<&'a [u8]>, FdtError> {
        let want = heapless_path::Path::new(path);
        // `matched`: how many leading path components the current chain of
        // open nodes matches. The node at depth d (root: 0) stands for
        // component d - 1.
        let mut matched = 0usize;
        let mut found = None;
        self.walk(|depth, ev| {
            match ev {
                Event::Begin(name) => {
                    if depth > 0
                        && matched == depth - 1
                        && want
                            .component(depth - 1)
                            .is_some_and(|c| node_matches(name, c))
                    {
                        matched = depth;
                    }
                }
                Event::Prop(name, value) => {
                    if found.is_none() && depth == matched && depth == want.len() && name == prop {
                        found = Some(value);
                    }
                }
                Event::End => {
                    if depth > 0 && matched == depth {
                        matched = depth - 1;
                    }
                }
            }
            Ok(())
        })?;
        Ok(found)
    }
}

fn align4(x: usize) -> Result<usize, FdtError> {
    x.checked_add(3).map(|v| v & !3).ok_or(FdtError::Truncated)
}

/// Whether node `name` (`memory@40000000`) matches path component `c`
/// (`memory` or `memory@40000000`).
pub fn node_matches(name: &str, c: &str) -> bool {
    name == c || name.split('@').next() == Some(c)
}

/// Read a big-endian number of `cells` 32-bit cells (1 or 2) from `b`.
pub fn read_cells(b: &[u8], cells: u32) -> Option<u64> {
    match cells {
        1 => be32(b, 0).map(u64::from),
        2 => Some((u64::from(be32(b, 0)?) << 32) | u64::from(be32(b, 4)?)),
        _ => None,
    }
}

/// A property value as text (up to its first NUL).
pub fn as_str(value: &[u8]) -> Option<&str> {
    let n = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    core::str::from_utf8(&value[..n]).ok()
}

mod heapless_path {
    /// A `/a/b/c` path split on demand, without allocation.
    pub struct Path<'p>(&'p str);

    impl<'p> Path<'p> {
        pub fn new(p: &'p str) -> Self {
            Path(p.trim_matches('/'))
        }
        pub fn len(&self) -> usize {
            if self.0.is_empty() {
                0
            } else {
                self.0.split('/').count()
            }
        }
        pub fn component(&self, i: usize) -> Option<&'p str> {
            if self.0.is_empty() {
                None
            } else {
                self.0.split('/').nth(i)
            }
        }
    }
}
