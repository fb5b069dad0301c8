//! Handles that cannot leak silently: what a failed release gives back, and
//! what a handle dropped unreleased reports.
//!
//! Every handle of the library that holds something of Xen's, the page
//! tables' or the region table's — a grant mapping
//! ([`GrantMap`](crate::grant::GrantMap)), a foreign mapping
//! ([`ForeignMap`](crate::mapping::ForeignMap)), an acquired resource
//! ([`ResourceMap`](crate::acquire::ResourceMap)), a contiguous buffer
//! ([`ContiguousBuffer`](crate::reservation::ContiguousBuffer)) and the
//! agent's own grant table ([`GrantTable`](crate::grant::GrantTable)) — is
//! given back explicitly, with the hypervisor, region table and page tables
//! it was made with (a `Drop` has none of them, so it cannot undo anything
//! itself).
//!
//! A release that fails part-way does not lose the handle: it comes back in
//! a [`ReleaseError`] with the error, and records exactly what is still to
//! be undone (the window mapping, the frames Xen still maps, the frames not
//! yet given back to the table), so that releasing it again continues where
//! the failed attempt stopped and never undoes a step twice. The grant
//! table's release takes `&mut self` and keeps the same record in the table.
//!
//! A handle dropped before it was released is reported: counted
//! ([`leaks_reported`]), logged at error level when the `defmt` feature is
//! on, and passed as a [`Leak`] to the hook installed with
//! [`set_leak_hook`] — which works without defmt, so an embedder with its
//! own logging (or a test) learns of every leak.

use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::addr::{DomId, VirtAddr};
use crate::region::FrameRange;

/// A release that did not finish: the handle, given back with what is
/// still to be undone recorded in it, and why it stopped. Release the
/// handle again (once the cause is gone) to finish; dropping it reports a
/// [`Leak`].
#[must_use = "the handle is given back: release it again, or it is reported as leaked when dropped"]
pub struct ReleaseError<H, E> {
    handle: H,
    error: E,
}

impl<H, E> ReleaseError<H, E> {
    /// `handle` given back because of `error`.
    pub fn new(handle: H, error: E) -> Self {
        ReleaseError { handle, error }
    }

    /// Why the release stopped.
    pub fn error(&self) -> &E {
        &self.error
    }

    /// The handle given back.
    pub fn handle(&self) -> &H {
        &self.handle
    }

    /// The handle, to release again.
    pub fn into_handle(self) -> H {
        self.handle
    }

    /// The handle and the error.
    pub fn into_parts(self) -> (H, E) {
        (self.handle, self.error)
    }

    /// The error alone. The handle is dropped: what it still held is
    /// reported as a [`Leak`].
    pub fn into_error(self) -> E {
        self.error
    }
}

impl<H: fmt::Debug, E: fmt::Debug> fmt::Debug for ReleaseError<H, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseError")
            .field("error", &self.error)
            .field("handle", &self.handle)
            .finish()
    }
}

/// The error's own message (the handle is not shown).
impl<H, E: fmt::Display> fmt::Display for ReleaseError<H, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// What of a handle is still to be undone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Pages still mapped in the agent's mapping window (0 once unmapped).
    pub window_pages: u64,
    /// Guest frames where Xen still maps something of the handle's: a
    /// grant, another domain's frame, a resource frame, a frame of the
    /// agent's own grant table.
    pub in_xen: u64,
    /// Guest frames the region table still records as the handle's (not
    /// given back to the holes, or as free RAM): at least `in_xen`.
    pub held: u64,
}

impl Outstanding {
    /// Nothing left to undo.
    pub const fn is_empty(&self) -> bool {
        self.window_pages == 0 && self.in_xen == 0 && self.held == 0
    }
}

/// What kind of handle leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    /// [`GrantMap`](crate::grant::GrantMap): another domain's grants.
    GrantMap,
    /// [`ForeignMap`](crate::mapping::ForeignMap): another domain's frames.
    ForeignMap,
    /// [`ResourceMap`](crate::acquire::ResourceMap): another domain's
    /// resource frames.
    ResourceMap,
    /// [`ContiguousBuffer`](crate::reservation::ContiguousBuffer).
    ContiguousBuffer,
    /// [`GrantTable`](crate::grant::GrantTable): the agent's own table.
    GrantTable,
}

impl LeakKind {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            LeakKind::GrantMap => "grant-map",
            LeakKind::ForeignMap => "foreign-map",
            LeakKind::ResourceMap => "resource-map",
            LeakKind::ContiguousBuffer => "contiguous-buffer",
            LeakKind::GrantTable => "grant-table",
        }
    }
}

/// A handle dropped before it was released: what it still held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leak {
    /// What it was.
    pub kind: LeakKind,
    /// The other domain (whose grants, frames or resource were mapped);
    /// `None` for the agent's own buffer or grant table.
    pub domain: Option<DomId>,
    /// The guest frames it occupied (for a grant table, its first group of
    /// frames still held).
    pub frames: Option<FrameRange>,
    /// Where it was mapped in the window, if it still is.
    pub va: Option<VirtAddr>,
    /// What it still held.
    pub outstanding: Outstanding,
    /// Grants still issued (a grant table; 0 otherwise).
    pub grants: usize,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if let Some(d) = self.domain {
            write!(f, " of domain {d}")?;
        }
        if let Some(r) = self.frames {
            write!(f, " at {}+{}", r.start(), r.len())?;
        }
        let o = self.outstanding;
        write!(
            f,
            ": {} frames held, {} mapped by Xen, {} window pages",
            o.held, o.in_xen, o.window_pages
        )?;
        if let Some(va) = self.va {
            write!(f, " at {va}")?;
        }
        if self.grants > 0 {
            write!(f, ", {} grants issued", self.grants)?;
        }
        write!(f, "; dropped without release: leaked")
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Leak {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}

/// The hook, a `fn(&Leak)` (null: none).
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Leaks reported since start.
static REPORTED: AtomicUsize = AtomicUsize::new(0);

/// Call `hook` with every [`Leak`] from now on (replacing any earlier
/// hook). It runs inside the dropping handle's `Drop`, on whatever CPU and
/// context dropped it: it should be short and must not panic. No
/// allocation, no lock.
pub fn set_leak_hook(hook: fn(&Leak)) {
    HOOK.store(hook as *mut (), Ordering::Release);
}

/// Remove the hook (leaks are still counted, and logged with `defmt`).
pub fn clear_leak_hook() {
    HOOK.store(core::ptr::null_mut(), Ordering::Release);
}

/// How many leaks were reported since start (by every handle, in every
/// thread).
pub fn leaks_reported() -> usize {
    REPORTED.load(Ordering::Relaxed)
}

/// Report `leak`: count it, log it (with `defmt`), call the hook.
pub(crate) fn report(leak: &Leak) {
    REPORTED.fetch_add(1, Ordering::Relaxed);
    xm_error!("{}", leak);
    let p = HOOK.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only `set_leak_hook` stores a non-null value here, and
        // only a `fn(&Leak)` cast to a pointer (function and data pointers
        // have the same size on every target this builds for).
        let hook = unsafe { core::mem::transmute::<*mut (), fn(&Leak)>(p) };
        hook(leak);
    }
}

/// The test hook: every test installs the same function (so tests running
/// at once do not disturb each other) and reads its own thread's records.
#[cfg(test)]
pub(crate) mod test_hook {
    use super::*;
    use std::cell::RefCell;

    std::thread_local! {
        static SEEN: RefCell<Vec<Leak>> = const { RefCell::new(Vec::new()) };
    }

    fn record(l: &Leak) {
        SEEN.with(|s| s.borrow_mut().push(*l));
    }

    /// Install the test hook and take this thread's records.
    pub(crate) fn take() -> Vec<Leak> {
        set_leak_hook(record);
        SEEN.with(|s| core::mem::take(&mut *s.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::test_hook::take;
    use super::*;
    use crate::addr::{Gfn, PageCount};

    #[test]
    fn the_hook_sees_every_report_without_defmt() {
        take();
        let before = leaks_reported();
        let leak = Leak {
            kind: LeakKind::ForeignMap,
            domain: Some(DomId(3)),
            frames: Some(FrameRange::new(Gfn(0x100), PageCount(2)).unwrap()),
            va: Some(VirtAddr(0x2000_0000_0000)),
            outstanding: Outstanding {
                window_pages: 2,
                in_xen: 2,
                held: 2,
            },
            grants: 0,
        };
        report(&leak);
        assert_eq!(take(), [leak]);
        assert!(leaks_reported() > before);
        let text = leak.to_string();
        assert!(text.starts_with("foreign-map of domain 3"), "{text}");
        assert!(text.ends_with("dropped without release: leaked"), "{text}");
    }

    #[test]
    fn a_release_error_gives_the_handle_back() {
        let e = ReleaseError::new(7u32, "refused");
        assert_eq!((*e.handle(), *e.error()), (7, "refused"));
        assert_eq!(e.to_string(), "refused");
        assert_eq!(e.into_parts(), (7, "refused"));
        assert!(Outstanding::default().is_empty());
    }
}
