//! Printable framing for binary log frames on Xen's console.
//!
//! Xen's console is a text channel: it prefixes guest lines (`(d1) `), may
//! rewrite unprintable bytes and interleaves the output of several domains.
//! defmt frames are binary, so the agent sends them as lines of base64:
//!
//! ```text
//! @xm:<base64 of at most 48 bytes>\n
//! ```
//!
//! Each line carries a piece of the byte stream the defmt encoder produced for
//! one domain; the pieces of a domain, concatenated in order, are that stream
//! (defmt's rzCOBS encoding delimits frames with a zero byte, so a lost line
//! costs one frame, not the rest of the log). Anything before the marker is
//! Xen's prefix and names the source; the host side ([`decode_line`]) returns
//! it so that a runner can keep one decoder per domain.

/// The marker that starts a framed line.
pub const MARKER: &[u8] = b"@xm:";
/// The most payload bytes one line carries (64 base64 characters).
pub const CHUNK: usize = 48;
/// The longest line the encoder emits, newline included.
pub const MAX_LINE: usize = MARKER.len() + CHUNK / 3 * 4 + 1;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes a byte stream into framed lines, one line per [`CHUNK`] bytes.
///
/// `push` buffers; a full chunk, or [`LineEncoder::flush`] at the end of a
/// frame, hands one complete line to the sink. No allocation.
#[derive(Debug)]
pub struct LineEncoder {
    buf: [u8; CHUNK],
    len: usize,
}

impl Default for LineEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEncoder {
    /// An empty encoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; CHUNK],
            len: 0,
        }
    }

    /// Add bytes; every full chunk is sent to `sink` as one line.
    pub fn push(&mut self, mut bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let n = (CHUNK - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == CHUNK {
                self.flush(sink);
            }
        }
    }

    /// Send what is buffered, if anything, as one line.
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        let mut line = [0u8; MAX_LINE];
        line[..MARKER.len()].copy_from_slice(MARKER);
        let mut at = MARKER.len();
        for group in self.buf[..self.len].chunks(3) {
            let b = [
                group[0],
                group.get(1).copied().unwrap_or(0),
                group.get(2).copied().unwrap_or(0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                line[at + i] = if i <= group.len() {
                    ALPHABET[((v >> (18 - 6 * i)) & 63) as usize]
                } else {
                    b'='
                };
            }
            at += 4;
        }
        line[at] = b'\n';
        self.len = 0;
        sink(&line[..=at]);
    }
}

/// Why a framed line could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A character outside the base64 alphabet, at this offset of the payload.
    BadCharacter(usize),
    /// The payload's length is not a multiple of four.
    BadLength(usize),
    /// The payload decodes to more than [`CHUNK`] bytes.
    TooLong(usize),
}

/// One framed line, split into Xen's prefix and the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramedLine<'a> {
    /// Whatever Xen (or the serial line) put before the marker.
    pub prefix: &'a str,
    /// The decoded bytes, `len` of them.
    pub bytes: [u8; CHUNK],
    /// How many of `bytes` are valid.
    pub len: usize,
}

impl FramedLine<'_> {
    /// The decoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Decode one console line: `None` if it carries no frame (an ordinary line,
/// to be shown as it is), `Some(Err)` if it carries a damaged one.
pub fn decode_line(line: &str) -> Option<Result<FramedLine<'_>, FrameError>> {
    let marker = core::str::from_utf8(MARKER).ok()?;
    let at = line.find(marker)?;
    let prefix = &line[..at];
    let payload = line[at + MARKER.len()..].trim_end_matches(['\r', '\n', ' ']);
    Some(decode_payload(payload.as_bytes()).map(|(bytes, len)| FramedLine { prefix, bytes, len }))
}

fn decode_payload(p: &[u8]) -> Result<([u8; CHUNK], usize), FrameError> {
    if p.len() % 4 != 0 {
        return Err(FrameError::BadLength(p.len()));
    }
    if p.len() / 4 * 3 > CHUNK {
        return Err(FrameError::TooLong(p.len() / 4 * 3));
    }
    let mut out = [0u8; CHUNK];
    let mut len = 0;
    for (g, quad) in p.chunks(4).enumerate() {
        let mut v = 0u32;
        let mut pad = 0;
        for (i, &c) in quad.iter().enumerate() {
            let d = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                // Padding only at the end of the last quad.
                b'=' if i >= 2 && g == p.len() / 4 - 1 && (i == 3 || quad[3] == b'=') => {
                    pad += 1;
                    0
                }
                _ => return Err(FrameError::BadCharacter(g * 4 + i)),
            };
            v = (v << 6) | u32::from(d);
        }
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        let n = 3 - pad;
        out[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    }
    Ok((out, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(data: &[u8]) -> Vec<String> {
        let mut enc = LineEncoder::new();
        let mut lines = Vec::new();
        let mut sink = |l: &[u8]| lines.push(String::from_utf8(l.to_vec()).unwrap());
        enc.push(data, &mut sink);
        enc.flush(&mut sink);
        lines
    }

    #[test]
    fn round_trip_every_length() {
        for n in 0..200usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let lines = encode_all(&data);
            assert_eq!(lines.len(), n.div_ceil(CHUNK));
            let mut back = Vec::new();
            for l in &lines {
                assert!(l.len() <= MAX_LINE, "{l}");
                assert!(l.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
                let line = format!("(XEN) (d1) {l}");
                let f = decode_line(&line).unwrap().unwrap();
                assert_eq!(f.prefix, "(XEN) (d1) ");
                back.extend_from_slice(f.payload());
            }
            assert_eq!(back, data);
        }
    }

    #[test]
    fn known_vector() {
        assert_eq!(encode_all(b"foobar"), ["@xm:Zm9vYmFy\n"]);
        assert_eq!(encode_all(b"fo"), ["@xm:Zm8=\n"]);
        assert_eq!(decode_line("@xm:Zg==").unwrap().unwrap().payload(), b"f");
    }

    #[test]
    fn ordinary_and_damaged_lines() {
        assert!(decode_line("(XEN) Xen version 4.17").is_none());
        assert_eq!(decode_line("@xm:Zm9"), Some(Err(FrameError::BadLength(3))));
        assert_eq!(
            decode_line("@xm:Zm?v"),
            Some(Err(FrameError::BadCharacter(2)))
        );
        assert_eq!(
            decode_line("@xm:Z=9v"),
            Some(Err(FrameError::BadCharacter(1)))
        );
        assert_eq!(
            decode_line("@xm:Zg==Zg=="),
            Some(Err(FrameError::BadCharacter(2)))
        );
        let long = "A".repeat(68);
        assert_eq!(
            decode_line(&format!("@xm:{long}")),
            Some(Err(FrameError::TooLong(51)))
        );
    }
}
