//! The stub's console: whole text lines through Xen's console
//! (`CONSOLEIO_write`, which a dom0 and a dom0less domU may use; a domain
//! made by a toolstack gets EPERM on a release build of Xen).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The longest line, newline included; longer ones are cut and end in `...`.
const MAX: usize = 200;

/// Lines Xen refused to print.
static LOST: AtomicUsize = AtomicUsize::new(0);

/// A line being formatted.
struct Line {
    buf: [u8; MAX],
    len: usize,
    cut: bool,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            // Keep room for the newline.
            if self.len < MAX - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            } else {
                self.cut = true;
            }
        }
        Ok(())
    }
}

/// Format `args` and write it, with a newline, as one console write.
pub fn line(args: fmt::Arguments<'_>) {
    let mut l = Line {
        buf: [0; MAX],
        len: 0,
        cut: false,
    };
    // `Line` never fails; a Display impl that does only shortens the line.
    let _ = l.write_fmt(args);
    if l.cut {
        l.buf[MAX - 4..MAX - 1].copy_from_slice(b"...");
    }
    l.buf[l.len] = b'\n';
    if xenmem::xen::console_write(&l.buf[..=l.len]).is_err() {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many lines Xen refused (nothing else can say it; the verdict does).
pub fn lost() -> usize {
    LOST.load(Ordering::Relaxed)
}
