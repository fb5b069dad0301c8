//! A writer of cpio "newc" archives (the format of Linux's initramfs), so
//! that the runner needs no host cpio tool and can pack files of any
//! architecture.
//!
//! newc, as Linux's `init/initramfs.c` reads it: per entry a 110-byte ASCII
//! header (`070701` and thirteen 8-digit hexadecimal fields: ino, mode, uid,
//! gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
//! namesize including the NUL, check), the name and a NUL, padding to a
//! multiple of 4 bytes, the data, padding to 4 again; the archive ends with
//! an entry named `TRAILER!!!`. Archives may be concatenated.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040000;
/// A regular file.
pub const S_IFREG: u32 = 0o100000;
/// A symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// A character device.
pub const S_IFCHR: u32 = 0o020000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// An archive being written in memory.
#[derive(Default)]
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Writer {
        Writer {
            next_ino: 1,
            ..Writer::default()
        }
    }

    /// A directory (and its missing parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        let p = normalise(path)?;
        if self.dirs.contains(&p) {
            return Ok(());
        }
        self.parents(&p)?;
        self.dirs.insert(p.clone());
        self.entry(&p, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file (its missing parent directories are added, 0755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        let p = normalise(path)?;
        self.parents(&p)?;
        self.entry(&p, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let p = normalise(path)?;
        if target.is_empty() {
            bail!("cpio: empty symlink target for {path}");
        }
        self.parents(&p)?;
        self.entry(&p, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (`/dev/console` is 5:1).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        let p = normalise(path)?;
        self.parents(&p)?;
        self.entry(&p, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Whether the archive already has `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.names.contains(&p) || self.dirs.contains(&p))
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 1, (0, 0), 0, 0);
        self.out
    }

    fn parents(&mut self, p: &str) -> Result<()> {
        if let Some((parent, _)) = p.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        p: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        if !self.names.insert(p.to_string()) {
            bail!("cpio: {p} added twice");
        }
        let Ok(size) = u32::try_from(data.len()) else {
            bail!("cpio: {p} is too large for newc ({} bytes)", data.len());
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(p, mode, nlink, rdev, size, ino);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), size: u32, ino: u32) {
        self.out.extend_from_slice(MAGIC);
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// `path` without leading `/`, refusing empty, `.` and `..` components.
fn normalise(path: &str) -> Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("cpio: bad path `{path}`");
    }
    if p == TRAILER || p.contains('\0') {
        bail!("cpio: bad path `{path}`");
    }
    Ok(p.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub name: String,
        pub mode: u32,
        pub nlink: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// An independent newc reader (concatenated archives too), checking the
    /// alignment rules as Linux does.
    pub(crate) fn parse(mut b: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut consumed = 0usize;
        loop {
            // Zero padding between concatenated archives.
            while b.first() == Some(&0) {
                b = &b[1..];
                consumed += 1;
            }
            if b.is_empty() {
                return out;
            }
            assert_eq!(consumed % 4, 0, "entry not 4-aligned");
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..6 + 8 * i + 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, size, namesize) = (field(1), field(4), field(6), field(11));
            let rdev = (field(9), field(10));
            let name_end = 110 + namesize as usize;
            assert_eq!(b[name_end - 1], 0);
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = b[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            b = &b[next..];
            consumed += next;
            if name != TRAILER {
                out.push(Entry {
                    name,
                    mode,
                    nlink,
                    rdev,
                    data,
                });
            }
        }
    }

    #[test]
    fn header_layout_matches_the_spec() {
        let mut w = Writer::new();
        w.file("/a", 0o644, b"xyz").unwrap();
        let b = w.finish();
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081A4", // mode: regular, 0644
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000003", // filesize
            "00000000", "00000000", "00000000", "00000000", "00000002", // namesize: "a" + NUL
            "00000000", // check
        );
        assert_eq!(&b[..110], expected_header.as_bytes());
        // name + NUL at 110..112, padded to 112; data at 112..115, padded to 116.
        assert_eq!(&b[110..116], b"a\0xyz\0");
        assert_eq!(b[116..122], *b"070701");
        assert_eq!(&b[116 + 110..116 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.file("usr/lib/x/libfoo.so.1.2", 0o644, &[7u8; 1001])
            .unwrap();
        w.symlink("usr/lib/x/libfoo.so.1", "libfoo.so.1.2").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.dir("/tmp", 0o1777).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.dir("usr/lib", 0o755).unwrap(); // already there: no second entry
        assert!(w.contains("/usr/lib/x"));
        assert!(w.file("init", 0o644, b"").is_err());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        let mut b = w.finish();
        // A second archive appended, as the per-run part is.
        let mut w2 = Writer::new();
        w2.file("jobs", 0o644, b"j\n").unwrap();
        b.extend(w2.finish());
        let e = parse(&b);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libfoo.so.1.2",
                "usr/lib/x/libfoo.so.1",
                "dev",
                "dev/console",
                "tmp",
                "init",
                "jobs"
            ]
        );
        assert_eq!(e[3].data, vec![7u8; 1001]);
        assert_eq!(e[3].mode, S_IFREG | 0o644);
        assert_eq!(e[4].mode, S_IFLNK | 0o777);
        assert_eq!(e[4].data, b"libfoo.so.1.2");
        assert_eq!((e[6].mode, e[6].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!((e[7].mode, e[7].nlink), (S_IFDIR | 0o1777, 2));
        assert_eq!(e[8].data, b"#!/bin/sh\n");
        assert_eq!(e[9].data, b"j\n");
    }
}
