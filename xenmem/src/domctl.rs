//! Domain control for a privileged agent, and the x86 cross-domain flow.
//!
//! [`DomainControl`] wraps `XEN_DOMCTL_createdomain`, `XEN_DOMCTL_max_mem`
//! and `XEN_DOMCTL_destroydomain` with typed errors. It refuses to work on
//! any Xen but 4.17 (the domctl interface, version 0x15, changes with every
//! release; Xen answers a domctl of another version with `EACCES`, which is
//! typed too). Only the control domain may use domctls: others get
//! [`DomctlError::NotPrivileged`].
//!
//! Xen 4.17's rules, from `xen/common/domctl.c` and `domain.c`:
//! - createdomain with domid 0 picks the next free id after the last one it
//!   picked (a `rover` that starts at 0 and wraps below `DOMID_FIRST_RESERVED`
//!   to 1): a destroyed domain's id is not reused at once. The rover moves
//!   even when the creation then fails. An explicit id in use is `EEXIST`.
//! - A new domain is paused, holds no memory and may hold none
//!   (`max_pages` 0) until `max_mem`; vCPUs are not needed to give it memory,
//!   map its frames or acquire its grant table.
//! - destroydomain of the caller is `EINVAL`; of a dying domain, 0. Xen
//!   restarts the kill itself (a continuation) where it returns `-ERESTART`,
//!   so a guest sees 0 or an error; [`DomainControl::destroy`] still retries
//!   `ERESTART`/`EAGAIN` a bounded number of times. The domain is gone once
//!   nothing refers to its pages: a foreign mapping or an acquired
//!   grant-table frame left in place keeps it a dying zombie (observed under
//!   Xen 4.17.7). Unmap first.
//!
//! [`CrossDomain`] is the x86 PVH dom0 flow: create a helper domain, give it
//! memory, map it as foreign frames and write a pattern, acquire its grant
//! table and seed grants to dom0 in it (as a toolstack seeds the console and
//! xenstore grants), let the caller use the grants ([`CrossDomain::seeded`]),
//! unmap everything and destroy the helper, checking with getdomaininfo that
//! it is gone. [`unprivileged_probe`] is the negative: an unprivileged
//! domain's foreign map and acquire_resource are refused with `EPERM` and
//! leave nothing behind.

use alloc::vec::Vec;
use core::fmt;

use crate::acquire::{self, AcquireError, ResourceMap};
use crate::addr::{DomId, Gfn, Order, PageCount, PAGE_SIZE};
use crate::alloc_util::{try_collect, OutOfMemory, TryVec};
use crate::grant::{AccessError, Bytes};
use crate::mapping::{self, ForeignMap, MapError, MapTarget, VaSpace};
use crate::region::{GrantRef, RegionTable};
use crate::xen::abi::gnttab;
use crate::xen::domctl::{ConfigError, CreateDomain};
use crate::xen::{DomainInfo, Errno, Hypervisor, MemFlags, XenError};

/// Retries of a destroydomain that says `ERESTART` or `EAGAIN`.
pub const DESTROY_RETRIES: u32 = 1000;
/// getdomaininfo polls (with a yield between) waiting for a destroyed
/// domain to disappear.
pub const GONE_POLLS: u32 = 1000;

/// Why a domain-control operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomctlError {
    /// Not Xen 4.17: the domctl interface (0x15) is that version's only.
    UnsupportedXen {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Xen refused the domctl interface version (`EACCES`).
    InterfaceVersion,
    /// The caller is not the control domain (`EPERM`).
    NotPrivileged,
    /// No such domain (`ESRCH`).
    NoSuchDomain(DomId),
    /// The domain id asked for is in use (`EEXIST`).
    DomidInUse(DomId),
    /// The domain is the caller (destroydomain: `EINVAL`).
    IsCaller(DomId),
    /// The configuration cannot be expressed.
    Config(ConfigError),
    /// Xen refused the configuration (`EINVAL`, `EOPNOTSUPP`).
    Rejected(XenError),
    /// Another failure of `op`.
    Xen {
        /// The operation.
        op: &'static str,
        /// What Xen said.
        err: XenError,
    },
    /// populate_physmap for the domain did `done` of `asked` extents (those
    /// stay populated).
    ShortPopulate {
        /// Extents done.
        done: usize,
        /// Extents asked for.
        asked: usize,
    },
    /// destroydomain kept answering `ERESTART`/`EAGAIN`.
    StillBusy(DomId),
    /// destroydomain succeeded but the domain is still there (`dying`: a
    /// zombie, something still refers to its pages).
    NotGone {
        /// The domain.
        domid: DomId,
        /// Whether Xen says it is dying.
        dying: bool,
    },
    /// The heap has no room for the list of extents (nothing was asked of
    /// Xen).
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for DomctlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomctlError::UnsupportedXen { major, minor } => write!(
                f,
                "Xen {major}.{minor}: domain control needs Xen 4.17 (domctl interface 0x15)"
            ),
            DomctlError::InterfaceVersion => {
                write!(f, "Xen refused domctl interface version 0x15 (EACCES)")
            }
            DomctlError::NotPrivileged => {
                write!(f, "only the control domain may use domctls (EPERM)")
            }
            DomctlError::NoSuchDomain(d) => write!(f, "no domain {d} (ESRCH)"),
            DomctlError::DomidInUse(d) => write!(f, "domain id {d} is in use (EEXIST)"),
            DomctlError::IsCaller(d) => write!(f, "domain {d} is the caller (EINVAL)"),
            DomctlError::Config(e) => write!(f, "domain configuration: {e}"),
            DomctlError::Rejected(e) => write!(f, "Xen refused the domain configuration: {e}"),
            DomctlError::Xen { op, err } => write!(f, "{op} failed: {err}"),
            DomctlError::ShortPopulate { done, asked } => {
                write!(f, "populate_physmap did {done} of {asked} extents")
            }
            DomctlError::StillBusy(d) => {
                write!(f, "destroying domain {d} kept asking to be restarted")
            }
            DomctlError::NotGone { domid, dying } => write!(
                f,
                "domain {domid} still exists after destroydomain (dying={dying})"
            ),
            DomctlError::OutOfMemory(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for DomctlError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}

/// Name what Xen said to domctl `op` on `dom`.
fn classify(op: &'static str, dom: DomId, err: XenError) -> DomctlError {
    match err.errno() {
        Some(Errno::EACCES) => DomctlError::InterfaceVersion,
        Some(Errno::EPERM) => DomctlError::NotPrivileged,
        Some(Errno::ESRCH) => DomctlError::NoSuchDomain(dom),
        _ => DomctlError::Xen { op, err },
    }
}

/// A domain this agent created: must be destroyed with
/// [`DomainControl::destroy`]; dropping it is logged as a leak.
#[must_use = "a created domain must be destroyed with DomainControl::destroy"]
#[derive(Debug)]
pub struct Domain {
    domid: DomId,
    done: bool,
}

impl Domain {
    /// Its id.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if !self.done {
            xm_error!(
                "domctl: domain {} dropped without destroying it: leaked",
                self.domid
            );
        }
    }
}

/// How a destroyed domain went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destroyed {
    /// destroydomain calls that said `ERESTART`/`EAGAIN` first.
    pub restarts: u32,
    /// getdomaininfo polls until it said `ESRCH`.
    pub polls: u32,
}

/// Domain control, for a privileged agent on Xen 4.17.
#[derive(Debug)]
pub struct DomainControl<'a, H: Hypervisor> {
    hv: &'a H,
}

impl<'a, H: Hypervisor> DomainControl<'a, H> {
    /// Check that Xen is 4.17 (the domctl interface 0x15 is that release's).
    pub fn new(hv: &'a H) -> Result<Self, DomctlError> {
        let v = hv.version().map_err(|err| DomctlError::Xen {
            op: "xen_version",
            err,
        })?;
        if (v.major, v.minor) != (4, 17) {
            return Err(DomctlError::UnsupportedXen {
                major: v.major,
                minor: v.minor,
            });
        }
        Ok(Self { hv })
    }

    /// Create a domain (`domid` `None`: Xen picks the id).
    pub fn create(
        &self,
        config: &CreateDomain,
        domid: Option<DomId>,
    ) -> Result<Domain, DomctlError> {
        let mut abi = config.to_abi().map_err(DomctlError::Config)?;
        let want = domid.unwrap_or(DomId(0));
        match self.hv.domctl_createdomain(want, &mut abi) {
            Ok(d) => Ok(Domain {
                domid: d,
                done: false,
            }),
            Err(e) => Err(match e.errno() {
                Some(Errno::EEXIST) => DomctlError::DomidInUse(want),
                Some(Errno::EINVAL | Errno::EOPNOTSUPP) => DomctlError::Rejected(e),
                _ => classify("createdomain", want, e),
            }),
        }
    }

    /// Let `dom` hold up to `pages` pages (`XEN_DOMCTL_max_mem`).
    pub fn set_max_pages(&self, dom: DomId, pages: PageCount) -> Result<(), DomctlError> {
        let kib = pages.0.saturating_mul(PAGE_SIZE / 1024);
        self.hv
            .domctl_max_mem(dom, kib)
            .map_err(|e| classify("max_mem", dom, e))
    }

    /// Populate `pages` pages of `dom` from GFN `first` in extents of
    /// `order` (`pages` a multiple of the extent size). All or an error.
    pub fn populate(
        &self,
        dom: DomId,
        first: Gfn,
        pages: u64,
        order: Order,
    ) -> Result<(), DomctlError> {
        let per = order.pages().0;
        if pages == 0 || pages % per != 0 || first.0 % per != 0 {
            return Err(DomctlError::Xen {
                op: "populate_physmap",
                err: XenError::Errno(Errno::EINVAL),
            });
        }
        let mut gfns: Vec<Gfn> = try_collect(
            (0..pages / per).map(|i| Gfn(first.0 + i * per)),
            "populate extent list",
        )
        .map_err(DomctlError::OutOfMemory)?;
        let asked = gfns.len();
        let done = self
            .hv
            .populate_physmap(dom, order, MemFlags::NONE, &mut gfns)
            .map_err(|err| DomctlError::Xen {
                op: "populate_physmap",
                err,
            })?;
        if done != asked {
            return Err(DomctlError::ShortPopulate { done, asked });
        }
        Ok(())
    }

    /// What getdomaininfo says about `dom`.
    pub fn info(&self, dom: DomId) -> Result<DomainInfo, DomctlError> {
        self.hv
            .domain_info(dom)
            .map_err(|e| classify("getdomaininfo", dom, e))
    }

    /// Destroy `dom` and wait until Xen no longer knows it.
    pub fn destroy(&self, mut dom: Domain) -> Result<Destroyed, DomctlError> {
        let r = self.destroy_id(dom.domid);
        // Whatever the outcome, the handle is spent: an error says why it
        // is not gone.
        dom.done = true;
        r
    }

    /// Destroy a domain by id (one this agent did not create, say).
    pub fn destroy_id(&self, domid: DomId) -> Result<Destroyed, DomctlError> {
        let mut restarts = 0;
        loop {
            match self.hv.domctl_destroydomain(domid) {
                Ok(()) => break,
                Err(e) if matches!(e.errno(), Some(Errno::ERESTART | Errno::EAGAIN)) => {
                    restarts += 1;
                    if restarts > DESTROY_RETRIES {
                        return Err(DomctlError::StillBusy(domid));
                    }
                    let _ = self.hv.yield_cpu();
                }
                Err(e) if e.errno() == Some(Errno::EINVAL) => {
                    return Err(DomctlError::IsCaller(domid))
                }
                Err(e) => return Err(classify("destroydomain", domid, e)),
            }
        }
        let mut polls = 0;
        loop {
            polls += 1;
            match self.hv.domain_info(domid) {
                Err(e) if e.errno() == Some(Errno::ESRCH) => {
                    return Ok(Destroyed { restarts, polls })
                }
                Err(e) => return Err(classify("getdomaininfo", domid, e)),
                Ok(info) => {
                    if polls >= GONE_POLLS {
                        return Err(DomctlError::NotGone {
                            domid,
                            dying: info.dying,
                        });
                    }
                    let _ = self.hv.yield_cpu();
                }
            }
        }
    }
}

/// What the cross-domain flow builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// The helper's first populated GFN.
    pub gfn: Gfn,
    /// Pages populated (a multiple of the extent size) and mapped.
    pub pages: u64,
    /// Extent order of the population (0 or 9).
    pub order: Order,
    /// Grants seeded, to the first helper pages.
    pub grants: u32,
    /// Grant-table frames acquired.
    pub gnttab_frames: u32,
    /// The domain the grants are for (dom0: 0).
    pub grantee: DomId,
}

impl Default for FlowConfig {
    /// 16 pages at GFN 0x1000 in 4 KiB extents, 4 grants to dom0, one
    /// grant-table frame.
    fn default() -> Self {
        Self {
            gfn: Gfn(0x1000),
            pages: 16,
            order: Order::ZERO,
            grants: 4,
            gnttab_frames: 1,
            grantee: DomId(0),
        }
    }
}

/// A grant the flow seeded in the helper's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SeededGrant {
    /// The reference (from [`gnttab::NR_RESERVED_ENTRIES`] on).
    pub gref: GrantRef,
    /// The helper's frame it grants.
    pub gfn: Gfn,
}

/// Word `word` (0..512) of the pattern the flow writes in helper frame
/// `gfn`: what a grant mapping of that frame must read.
pub const fn pattern_word(gfn: Gfn, word: u64) -> u64 {
    0xd0c7_0000_0000_0000 ^ (gfn.0 << 16) ^ word
}

/// Which step of the flow failed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowError {
    /// Domain control (create, max_mem, populate, destroy).
    Domctl(&'static str, DomctlError),
    /// Foreign mapping of the helper's frames.
    Map(MapError),
    /// Acquiring its grant table.
    Acquire(AcquireError),
    /// The pattern did not read back (first bad frame and word).
    Pattern {
        /// The helper frame.
        gfn: Gfn,
        /// The word.
        word: u64,
        /// What was read.
        read: u64,
    },
    /// The flow's configuration is inconsistent (why).
    Config(&'static str),
    /// A grant entry still says it is mapped (`GTF_reading`/`GTF_writing`)
    /// when the flow revokes it.
    GrantInUse(GrantRef),
    /// A read or write through one of the flow's mappings was refused
    /// (which mapping, and why; memory was not touched).
    Access(&'static str, AccessError),
    /// The heap has no room for the flow's lists (everything done is
    /// undone, as for any failure of the flow).
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowError::Domctl(step, e) => write!(f, "{step}: {e}"),
            FlowError::Map(e) => write!(f, "foreign map: {e}"),
            FlowError::Acquire(e) => write!(f, "acquire grant table: {e}"),
            FlowError::Pattern { gfn, word, read } => write!(
                f,
                "helper frame {gfn} word {word} reads {read:#x}, expected {:#x}",
                pattern_word(*gfn, *word)
            ),
            FlowError::Config(why) => write!(f, "flow configuration: {why}"),
            FlowError::GrantInUse(g) => write!(f, "grant {} is still mapped", g.0),
            FlowError::Access(what, e) => write!(f, "{what}: {e}"),
            FlowError::OutOfMemory(e) => write!(f, "flow: {e}"),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for FlowError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}

/// Show a `Display` value in a log line (with or without defmt).
#[cfg(feature = "defmt")]
fn disp<T: fmt::Display>(v: &T) -> defmt::Display2Format<'_, T> {
    defmt::Display2Format(v)
}

#[cfg(not(feature = "defmt"))]
fn disp<T: fmt::Display>(v: &T) -> &T {
    v
}

/// The helper domain, mapped and granting: steps 1–4 of the flow done.
/// Finish with [`CrossDomain::teardown`] (or [`CrossDomain::abort`]).
#[must_use = "the helper must be torn down with CrossDomain::teardown"]
#[derive(Debug)]
pub struct CrossDomain {
    helper: Option<Domain>,
    cfg: FlowConfig,
    foreign: Option<ForeignMap>,
    gnttab: Option<ResourceMap>,
    frames_max: u32,
    seeded: Vec<SeededGrant>,
}

/// What [`CrossDomain::teardown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Teardown {
    /// The helper's id.
    pub domid: DomId,
    /// Foreign frames unmapped.
    pub foreign: u64,
    /// Grant-table frames unmapped.
    pub gnttab: u64,
    /// How the destruction went.
    pub destroyed: Destroyed,
}

impl CrossDomain {
    /// Steps 1–4: create the helper, give it `cfg.pages` pages, map them
    /// read-write as foreign frames and write [`pattern_word`]s (checked
    /// through a second, read-only mapping), acquire `cfg.gnttab_frames` of
    /// its grant table and seed `cfg.grants` grants of its first pages to
    /// `cfg.grantee`. On any failure everything done is undone (the helper
    /// destroyed) before the error returns.
    pub fn setup<H: Hypervisor>(
        ctl: &DomainControl<'_, H>,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
        cfg: FlowConfig,
    ) -> Result<CrossDomain, FlowError> {
        let per = cfg.order.pages().0;
        let entries = u64::from(cfg.gnttab_frames) * u64::from(gnttab::ENTRIES_PER_FRAME_V1);
        if cfg.pages == 0 || cfg.pages % per != 0 || cfg.gfn.0 % per != 0 {
            return Err(FlowError::Config(
                "pages and GFN must be whole, aligned extents",
            ));
        }
        if u64::from(cfg.grants) > cfg.pages
            || u64::from(cfg.grants) + u64::from(gnttab::NR_RESERVED_ENTRIES) > entries
        {
            return Err(FlowError::Config(
                "more grants than pages or grant-table entries",
            ));
        }
        if cfg
            .gfn
            .0
            .checked_add(cfg.pages)
            .is_none_or(|e| e > u64::from(u32::MAX))
        {
            return Err(FlowError::Config("a v1 grant holds a 32-bit frame"));
        }
        let helper = ctl
            .create(&CreateDomain::native_helper(), None)
            .map_err(|e| FlowError::Domctl("createdomain", e))?;
        let domid = helper.domid();
        let info = ctl.info(domid).ok();
        xm_info!(
            "report: helper-domain domid={} created=yes tot_pages={=u64} max_pages={=u64}",
            domid,
            info.map_or(0, |i| i.tot_pages.0),
            info.map_or(0, |i| i.max_pages.0)
        );
        let mut cd = CrossDomain {
            helper: Some(helper),
            cfg,
            foreign: None,
            gnttab: None,
            frames_max: 0,
            seeded: Vec::new(),
        };
        match cd.build(ctl, table, pt, vas) {
            Ok(()) => Ok(cd),
            Err(e) => {
                if let Err(e2) = cd.abort(ctl, table, pt, vas) {
                    xm_error!("flow: undoing after a failure: {}", e2);
                }
                Err(e)
            }
        }
    }

    fn build<H: Hypervisor>(
        &mut self,
        ctl: &DomainControl<'_, H>,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), FlowError> {
        let cfg = self.cfg;
        let domid = self.domid();
        // Step 2: memory.
        ctl.set_max_pages(domid, PageCount(cfg.pages))
            .map_err(|e| FlowError::Domctl("max_mem", e))?;
        ctl.populate(domid, cfg.gfn, cfg.pages, cfg.order)
            .map_err(|e| FlowError::Domctl("populate_physmap", e))?;
        let info = ctl
            .info(domid)
            .map_err(|e| FlowError::Domctl("getdomaininfo", e))?;
        xm_info!(
            "report: helper-memory domid={} max_kib={=u64} populated={=u64} order={=u8} first_gfn={=u64:#x} tot_pages={=u64}",
            domid,
            cfg.pages * (PAGE_SIZE / 1024),
            cfg.pages,
            cfg.order.get(),
            cfg.gfn.0,
            info.tot_pages.0
        );
        // Step 3: foreign mapping, pattern, and a second look.
        let frames: Vec<Gfn> = try_collect(
            (0..cfg.pages).map(|i| Gfn(cfg.gfn.0 + i)),
            "helper frame list",
        )
        .map_err(FlowError::OutOfMemory)?;
        self.seeded
            .try_room(cfg.grants as usize, "seeded grants")
            .map_err(FlowError::OutOfMemory)?;
        let hv = ctl.hv;
        let fm = mapping::map_foreign(hv, table, pt, vas, domid, &frames, true)
            .map_err(FlowError::Map)?;
        let words = PAGE_SIZE / 8;
        let fm = self.foreign.insert(fm);
        for (i, g) in frames.iter().enumerate() {
            for w in 0..words {
                let off = i as u64 * PAGE_SIZE + w * 8;
                fm.write_obj::<u64>(off, pattern_word(*g, w))
                    .map_err(|e| FlowError::Access("foreign mapping", e))?;
            }
        }
        let check = |m: &ForeignMap| -> Result<(), FlowError> {
            for (i, g) in frames.iter().enumerate() {
                for w in 0..words {
                    let read = m
                        .read_obj::<u64>(i as u64 * PAGE_SIZE + w * 8)
                        .map_err(|e| FlowError::Access("foreign mapping", e))?;
                    if read != pattern_word(*g, w) {
                        return Err(FlowError::Pattern {
                            gfn: *g,
                            word: w,
                            read,
                        });
                    }
                }
            }
            Ok(())
        };
        check(fm)?;
        let ro = mapping::map_foreign(hv, table, pt, vas, domid, &frames, false)
            .map_err(FlowError::Map)?;
        let second = check(&ro);
        // A failed release drops the handle given back: reported as a leak.
        ro.release(hv, table, pt, vas)
            .map_err(|e| FlowError::Map(e.into_error()))?;
        second?;
        xm_info!(
            "report: foreign-map domid={} frames={=u64} writable=yes pattern=ok reread=ok",
            domid,
            cfg.pages
        );
        // Step 4: the grant table.
        let (max, gm) =
            acquire::acquire_grant_table(hv, table, pt, vas, domid, 0, cfg.gnttab_frames)
                .map_err(FlowError::Acquire)?;
        self.frames_max = max;
        let gm = self.gnttab.insert(gm);
        xm_info!(
            "report: acquire resource=grant-table domid={} frames_max={=u32} mapped={=u64}",
            domid,
            max,
            gm.frames().0
        );
        let grantee = cfg.grantee.raw();
        for k in 0..cfg.grants {
            let gref = gnttab::NR_RESERVED_ENTRIES + k;
            let gfn = frames[k as usize];
            let off = u64::from(gref) * 8;
            // As a toolstack seeds grants: frame and domid, a barrier, then
            // the flags that make the entry valid.
            let access = |e| FlowError::Access("grant-table mapping", e);
            gm.write_obj::<u32>(off + 4, gfn.0 as u32).map_err(access)?;
            gm.write_obj::<u16>(off + 2, grantee).map_err(access)?;
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            gm.write_obj::<u16>(off, gnttab::GTF_PERMIT_ACCESS)
                .map_err(access)?;
            // Within the room made above: no allocation.
            self.seeded.push(SeededGrant {
                gref: GrantRef(gref),
                gfn,
            });
        }
        xm_info!(
            "report: grants-seeded domid={} count={=u32} first_gref={=u32} grantee={} first_gfn={=u64:#x}",
            domid,
            cfg.grants,
            gnttab::NR_RESERVED_ENTRIES,
            cfg.grantee,
            cfg.gfn.0
        );
        Ok(())
    }

    /// The helper's domain id.
    pub fn domid(&self) -> DomId {
        self.helper.as_ref().map_or(DomId(0), Domain::domid)
    }

    /// The grants seeded: `(gref, helper GFN)`, each granting
    /// `cfg.grantee` read-write access to a frame holding
    /// [`pattern_word`]`(gfn, 0..512)`. The hook for mapping them (with
    /// `grant::map_grants`, domain [`CrossDomain::domid`]) and comparing.
    pub fn seeded(&self) -> &[SeededGrant] {
        &self.seeded
    }

    /// The helper's grant-table size in frames (`max_grant_frames`).
    pub fn frames_max(&self) -> u32 {
        self.frames_max
    }

    /// The current flags of grant entry `gref` (`GTF_reading`/`GTF_writing`
    /// show that the grantee has it mapped); `None` without a grant-table
    /// mapping or for an entry outside it.
    pub fn grant_flags(&self, gref: GrantRef) -> Option<u16> {
        self.gnttab
            .as_ref()?
            .read_obj::<u16>(u64::from(gref.0) * 8)
            .ok()
    }

    /// Word `word` of the `i`-th mapped helper frame, read through the
    /// foreign mapping (to compare with what a grant mapping reads); `None`
    /// without a foreign mapping or for a word outside it.
    pub fn foreign_word(&self, i: u64, word: u64) -> Option<u64> {
        self.foreign
            .as_ref()?
            .read_obj::<u64>(i * PAGE_SIZE + word * 8)
            .ok()
    }

    /// Steps 6–7: revoke the grants (refusing while one is still mapped),
    /// unmap the grant table and the foreign frames, destroy the helper and
    /// check that getdomaininfo no longer finds it.
    pub fn teardown<H: Hypervisor>(
        mut self,
        ctl: &DomainControl<'_, H>,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<Teardown, FlowError> {
        let domid = self.domid();
        for s in &self.seeded {
            let flags = self.grant_flags(s.gref).unwrap_or(0);
            if flags & (gnttab::GTF_READING | gnttab::GTF_WRITING) != 0 {
                let e = FlowError::GrantInUse(s.gref);
                // The grantee still maps it: nothing can be destroyed safely.
                xm_error!("flow: {}", e);
                return Err(self.abort_keep(e));
            }
        }
        if let Some(gm) = self.gnttab.as_ref() {
            for s in &self.seeded {
                if let Err(e) = gm.write_obj::<u16>(u64::from(s.gref.0) * 8, gnttab::GTF_INVALID) {
                    xm_error!("flow: revoking grant {=u32}: {}", s.gref.0, disp(&e));
                }
            }
        }
        let g = self.gnttab.as_ref().map_or(0, |m| m.frames().0);
        let f = self.foreign.as_ref().map_or(0, |m| m.gfns().len().0);
        let destroyed = self.finish(ctl, table, pt, vas)?;
        xm_info!(
            "report: helper-unmapped domid={} foreign={=u64} gnttab={=u64} grants_revoked={=usize}",
            domid,
            f,
            g,
            self.seeded.len()
        );
        xm_info!(
            "report: helper-domain domid={} destroyed=yes gone=yes restarts={=u32} polls={=u32}",
            domid,
            destroyed.restarts,
            destroyed.polls
        );
        Ok(Teardown {
            domid,
            foreign: f,
            gnttab: g,
            destroyed,
        })
    }

    /// Leave everything in place (a grant is still mapped) and report `e`:
    /// the helper is deliberately leaked rather than destroyed under a
    /// mapping.
    fn abort_keep(&mut self, e: FlowError) -> FlowError {
        if let Some(mut h) = self.helper.take() {
            h.done = true;
            xm_error!("flow: domain {} left alive: still in use", h.domid);
        }
        // Dropped unreleased: each logs its leak.
        drop(self.foreign.take());
        drop(self.gnttab.take());
        e
    }

    fn finish<H: Hypervisor>(
        &mut self,
        ctl: &DomainControl<'_, H>,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<Destroyed, FlowError> {
        let hv = ctl.hv;
        let mut first = None;
        // A mapping whose release failed is kept (given back with what is
        // left to undo): reported as a leak if it is never released.
        if let Some(m) = self.gnttab.take() {
            if let Err(e) = m.release(hv, table, pt, vas) {
                let (m, e) = e.into_parts();
                self.gnttab = Some(m);
                first.get_or_insert(FlowError::Acquire(e));
            }
        }
        if let Some(m) = self.foreign.take() {
            if let Err(e) = m.release(hv, table, pt, vas) {
                let (m, e) = e.into_parts();
                self.foreign = Some(m);
                first.get_or_insert(FlowError::Map(e));
            }
        }
        if let Some(e) = first {
            // Something may still map the helper: destroying it now would
            // leave a zombie. Leave it.
            if let Some(mut h) = self.helper.take() {
                h.done = true;
                xm_error!("flow: domain {} left alive: unmapping failed", h.domid);
            }
            return Err(e);
        }
        match self.helper.take() {
            Some(h) => ctl
                .destroy(h)
                .map_err(|e| FlowError::Domctl("destroydomain", e)),
            None => Err(FlowError::Config("no helper domain")),
        }
    }

    /// Undo whatever exists (mappings, then the helper) after a failure.
    pub fn abort<H: Hypervisor>(
        mut self,
        ctl: &DomainControl<'_, H>,
        table: &mut RegionTable,
        pt: &mut impl MapTarget,
        vas: &mut VaSpace,
    ) -> Result<(), FlowError> {
        self.finish(ctl, table, pt, vas).map(|_| ())
    }
}

/// The whole flow: [`CrossDomain::setup`], `hook` (given the flow and the
/// agent's table, page tables and window, to map and compare the seeded
/// grants; `false` fails the flow after the teardown),
/// [`CrossDomain::teardown`].
pub fn cross_domain_flow<H: Hypervisor, P: MapTarget>(
    hv: &H,
    table: &mut RegionTable,
    pt: &mut P,
    vas: &mut VaSpace,
    cfg: FlowConfig,
    hook: impl FnOnce(&CrossDomain, &mut RegionTable, &mut P, &mut VaSpace) -> bool,
) -> Result<Teardown, FlowError> {
    let ctl = DomainControl::new(hv).map_err(|e| FlowError::Domctl("xen_version", e))?;
    let cd = CrossDomain::setup(&ctl, table, pt, vas, cfg)?;
    let ok = hook(&cd, table, pt, vas);
    let t = cd.teardown(&ctl, table, pt, vas)?;
    if ok {
        Ok(t)
    } else {
        Err(FlowError::Config("the grant check failed"))
    }
}

/// What an unprivileged domain's attempts on `target` gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The foreign map of `target`'s frame.
    pub foreign: Result<(), MapError>,
    /// The acquire_resource of `target`'s grant table (query first).
    pub acquire: Result<(), AcquireError>,
    /// The region table and the mapping window are as before.
    pub untouched: bool,
}

impl ProbeOutcome {
    /// The foreign map was refused with `EPERM` (the entry's status, or the
    /// whole call).
    pub fn foreign_eperm(&self) -> bool {
        matches!(
            self.foreign,
            Err(MapError::Refused {
                err: XenError::Errno(Errno::EPERM),
                ..
            }) | Err(MapError::Xen(XenError::Errno(Errno::EPERM)))
        )
    }

    /// How `acquire_resource` was refused: `eperm` (not permitted, or own
    /// domain: XSM; Arm), `eacces` (x86 Xen 4.17 refuses every translated
    /// caller but the hardware domain before XSM is asked), or `None`.
    pub fn acquire_refusal(&self) -> Option<&'static str> {
        match self.acquire {
            Err(AcquireError::NotPermitted(_) | AcquireError::OwnDomain(_)) => Some("eperm"),
            Err(AcquireError::NotHardwareDomain) => Some("eacces"),
            _ => None,
        }
    }

    /// Both refused by Xen's permission checks (see
    /// [`foreign_eperm`](Self::foreign_eperm) and
    /// [`acquire_refusal`](Self::acquire_refusal)) and nothing left behind.
    pub fn refused_cleanly(&self) -> bool {
        self.foreign_eperm() && self.acquire_refusal().is_some() && self.untouched
    }
}

/// The negative: an unprivileged domain tries to map frame `gfn` of
/// `target` as foreign and to acquire `target`'s grant table. Xen must
/// refuse both (`EPERM`: XSM for another domain, or "own domain"), and
/// nothing may be left mapped. Reports `report: unprivileged ...`.
pub fn unprivileged_probe(
    hv: &impl Hypervisor,
    table: &mut RegionTable,
    pt: &mut impl MapTarget,
    vas: &mut VaSpace,
    target: DomId,
    gfn: Gfn,
) -> ProbeOutcome {
    // A digest, not a copy: the probe needs no memory of its own.
    let before = table.digest();
    let used = vas.used();
    let foreign = match mapping::map_foreign(hv, table, pt, vas, target, &[gfn], false) {
        Ok(m) => {
            xm_error!("unprivileged: foreign map of domain {} was allowed", target);
            m.release(hv, table, pt, vas)
                .map_err(crate::leak::ReleaseError::into_error)
        }
        Err(e) => Err(e),
    };
    let acquire = match acquire::acquire_grant_table(hv, table, pt, vas, target, 0, 1) {
        Ok((_, m)) => {
            xm_error!(
                "unprivileged: acquire_resource of domain {} was allowed",
                target
            );
            m.release(hv, table, pt, vas)
                .map_err(crate::leak::ReleaseError::into_error)
        }
        Err(e) => Err(e),
    };
    let untouched = table.digest() == before && vas.used() == used;
    let out = ProbeOutcome {
        foreign,
        acquire,
        untouched,
    };
    let name = |refusal: Option<&'static str>, ok: bool| match (refusal, ok) {
        (Some(r), _) => r,
        (None, true) => "allowed",
        (None, false) => "other",
    };
    let f_eperm = out.foreign_eperm();
    let a_refusal = out.acquire_refusal();
    let a_refused = a_refusal.is_some();
    xm_info!(
        "report: unprivileged target={} foreign={=str} acquire={=str} untouched={=str}",
        target,
        name(f_eperm.then_some("eperm"), foreign.is_ok()),
        name(a_refusal, acquire.is_ok()),
        if untouched { "yes" } else { "no" }
    );
    if let Err(e) = foreign {
        if !f_eperm {
            xm_error!("unprivileged: foreign map: {}", disp(&e));
        }
    }
    if let Err(e) = acquire {
        if !a_refused {
            xm_error!("unprivileged: acquire: {}", e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Mfn;
    use crate::region::{FrameRange, Region, RegionFlags, RegionKind};
    use crate::xen::abi::gnttab::{GrantEntryV1, MapGrantRef, UnmapGrantRef};
    use crate::xen::model::window::{clean, BufTables};
    use crate::xen::model::{DomainConfig, Fault, Op as XOp, XenModel};
    use crate::xen::XenStatus;

    const D0: DomId = DomId(0);

    fn table() -> RegionTable {
        let mut t = RegionTable::new();
        t.add(Region::new(
            FrameRange::new(Gfn(0), PageCount(4096)).unwrap(),
            RegionKind::Ram,
            RegionFlags::READ,
        ))
        .unwrap();
        t.add(Region::new(
            FrameRange::new(Gfn(0x100000), PageCount(0x1000)).unwrap(),
            RegionKind::Hole,
            RegionFlags::empty(),
        ))
        .unwrap();
        t
    }

    /// Page tables whose new mappings of a foreign frame dom0 already maps
    /// start with its contents (the second, read-only look of the flow).
    fn foreign_aware(m: &XenModel, pages: u64) -> BufTables<'_> {
        BufTables::new(pages).with_alias(move |g| m.foreign(D0).get(&g).map(|&(d, f)| (d.0, f.0)))
    }

    fn dom0() -> XenModel {
        let m = XenModel::new(1 << 16);
        m.add_domain(DomainConfig::pvh_dom0(4096)).unwrap();
        m
    }

    #[test]
    fn only_on_xen_4_17() {
        let m = dom0();
        assert!(DomainControl::new(&m).is_ok());
        let mut v = m.version().unwrap();
        v.minor = 18;
        m.set_version(v);
        assert_eq!(
            DomainControl::new(&m).unwrap_err(),
            DomctlError::UnsupportedXen {
                major: 4,
                minor: 18
            }
        );
    }

    #[test]
    fn typed_errors() {
        let m = dom0();
        m.add_domain(DomainConfig::pvh_domu(DomId(5), 64)).unwrap();
        let ctl = DomainControl::new(&m).unwrap();
        let h = ctl.create(&CreateDomain::x86_pvh_helper(), None).unwrap();
        assert_eq!(h.domid(), DomId(1));
        assert_eq!(
            ctl.create(&CreateDomain::x86_pvh_helper(), Some(DomId(5)))
                .map(|d| d.domid())
                .unwrap_err(),
            DomctlError::DomidInUse(DomId(5))
        );
        let bad = CreateDomain {
            max_grant_frames: Some(65),
            ..CreateDomain::x86_pvh_helper()
        };
        assert_eq!(
            ctl.create(&bad, None).map(|d| d.domid()).unwrap_err(),
            DomctlError::Rejected(XenError::Errno(Errno::EINVAL))
        );
        assert_eq!(
            ctl.create(&CreateDomain::arm_helper(), None)
                .map(|d| d.domid())
                .unwrap_err(),
            DomctlError::Config(ConfigError::WrongArch)
        );
        assert_eq!(ctl.destroy_id(D0), Err(DomctlError::IsCaller(D0)));
        assert_eq!(
            ctl.set_max_pages(DomId(9), PageCount(1)),
            Err(DomctlError::NoSuchDomain(DomId(9)))
        );
        // populate: whole extents, short counts named.
        assert!(ctl
            .populate(h.domid(), Gfn(0x1001), 512, Order::new_const(9))
            .is_err());
        ctl.set_max_pages(h.domid(), PageCount(8)).unwrap();
        assert_eq!(
            ctl.populate(h.domid(), Gfn(0x1000), 16, Order::ZERO),
            Err(DomctlError::ShortPopulate { done: 8, asked: 16 })
        );
        // A page still mapped: the domain stays, dying.
        let mut st = [XenStatus(0)];
        m.map_foreign_batch(h.domid(), &[Gfn(0x1000)], &[Gfn(0x100000)], &mut st)
            .unwrap();
        let id = h.domid();
        assert_eq!(
            ctl.destroy(h),
            Err(DomctlError::NotGone {
                domid: id,
                dying: true
            })
        );
        m.remove_from_physmap(Gfn(0x100000)).unwrap();
        assert_eq!(ctl.info(id), Err(DomctlError::NoSuchDomain(id)));
        // ERESTART is retried; for ever is an error.
        let h = ctl.create(&CreateDomain::x86_pvh_helper(), None).unwrap();
        m.inject(Fault::Errno {
            op: XOp::DestroyDomain,
            errno: Errno::ERESTART,
        });
        let d = ctl.destroy(h).unwrap();
        assert_eq!((d.restarts, d.polls), (1, 1));
        let h = ctl.create(&CreateDomain::x86_pvh_helper(), None).unwrap();
        for _ in 0..=DESTROY_RETRIES {
            m.inject(Fault::Errno {
                op: XOp::DestroyDomain,
                errno: Errno::EAGAIN,
            });
        }
        let id = h.domid();
        assert_eq!(ctl.destroy(h), Err(DomctlError::StillBusy(id)));
        ctl.destroy_id(id).unwrap();
        // Unprivileged.
        m.set_current(DomId(5)).unwrap();
        assert_eq!(
            ctl.create(&CreateDomain::x86_pvh_helper(), None)
                .map(|d| d.domid())
                .unwrap_err(),
            DomctlError::NotPrivileged
        );
        assert_eq!(ctl.destroy_id(D0), Err(DomctlError::NotPrivileged));
        m.check_conservation().unwrap();
    }

    /// The flow on the model, with the grant step done as `grant.rs` will:
    /// the window's memory is the test's, not the model's, so what the flow
    /// wrote is copied into the model first (the helper's pages and its
    /// grant entries), then the grants are mapped with GNTTABOP_map_grant_ref
    /// and read through the model.
    #[test]
    fn the_cross_domain_flow_on_the_model() {
        let m = dom0();
        let free = m.free_frames();
        let mut t = table();
        let before = t.clone();
        let mut pt = foreign_aware(&m, 64);
        let mut vas = VaSpace::new(pt.window());
        let cfg = FlowConfig::default();
        let mut checked = 0;
        let r = cross_domain_flow(&m, &mut t, &mut pt, &mut vas, cfg, |cd, _, _, _| {
            let h = cd.domid();
            assert_eq!(h, DomId(1));
            assert_eq!(cd.frames_max(), 64);
            // Xen's side: 16 foreign entries (the read-only second look is
            // gone), one acquired grant-table frame, 16 pages.
            assert_eq!(m.foreign(D0).len(), 16);
            assert_eq!(m.acquired(D0).values().collect::<Vec<_>>(), [&(h, 0)]);
            assert_eq!(m.tot_pages(h), Some(16));
            let s = cd.seeded();
            assert_eq!(s.len(), 4);
            assert_eq!((s[0].gref, s[0].gfn), (GrantRef(8), Gfn(0x1000)));
            assert_eq!((s[3].gref, s[3].gfn), (GrantRef(11), Gfn(0x1003)));
            for (i, g) in s.iter().enumerate() {
                assert_eq!(cd.grant_flags(g.gref), Some(gnttab::GTF_PERMIT_ACCESS));
                assert_eq!(cd.foreign_word(i as u64, 5), Some(pattern_word(g.gfn, 5)));
            }
            // Copy into the model what real memory would share.
            for g in s {
                let mut page = [0u8; 4096];
                for w in 0..512u64 {
                    let v = pattern_word(g.gfn, w).to_le_bytes();
                    page[w as usize * 8..][..8].copy_from_slice(&v);
                }
                assert!(m.write_guest(h, g.gfn, 0, &page));
                let e = GrantEntryV1 {
                    flags: gnttab::GTF_PERMIT_ACCESS,
                    domid: 0,
                    frame: g.gfn.0 as u32,
                };
                m.gnttab_write_entry(h, g.gref.0, e).unwrap();
            }
            // The grant path: map each into a dom0 hole frame, compare.
            let mut ops: Vec<MapGrantRef> = s
                .iter()
                .enumerate()
                .map(|(i, g)| MapGrantRef::host((0x100800 + i as u64) << 12, g.gref.0, h.0, false))
                .collect();
            m.gnttab_map(&mut ops).unwrap();
            for (i, (op, g)) in ops.iter().zip(s).enumerate() {
                assert!(op.status().is_ok(), "{:?}", op.status());
                let mut w = [0u8; 8];
                assert!(m.read_guest(D0, Gfn(0x100800 + i as u64), 8 * 7, &mut w));
                assert_eq!(u64::from_le_bytes(w), pattern_word(g.gfn, 7));
                assert_eq!(
                    m.gnttab_entry(h, g.gref.0).unwrap().flags,
                    gnttab::GTF_PERMIT_ACCESS | gnttab::GTF_READING | gnttab::GTF_WRITING
                );
                checked += 1;
            }
            let mut un: Vec<UnmapGrantRef> = ops
                .iter()
                .map(|o| UnmapGrantRef::host(o.host_addr, o.handle))
                .collect();
            m.gnttab_unmap(&mut un).unwrap();
            assert!(un.iter().all(|u| u.status().is_ok()));
            true
        })
        .unwrap();
        assert_eq!(checked, 4);
        assert_eq!((r.domid, r.foreign, r.gnttab), (DomId(1), 16, 1));
        assert_eq!(r.destroyed.restarts, 0);
        clean(&m, free, &t, &before, &pt, &vas);
    }

    #[test]
    fn superpage_extents() {
        let m = dom0();
        let free = m.free_frames();
        let mut t = table();
        let before = t.clone();
        let mut pt = foreign_aware(&m, 1100);
        let mut vas = VaSpace::new(pt.window());
        let cfg = FlowConfig {
            pages: 512,
            order: Order::new_const(9),
            ..FlowConfig::default()
        };
        let r = cross_domain_flow(&m, &mut t, &mut pt, &mut vas, cfg, |cd, _, _, _| {
            // One 2 MiB extent: machine-contiguous in the model.
            let p2m = m.p2m(cd.domid());
            assert_eq!(p2m.len(), 512);
            let first: Mfn = p2m[&Gfn(0x1000)];
            assert_eq!(p2m[&Gfn(0x11ff)], Mfn(first.0 + 511));
            true
        })
        .unwrap();
        assert_eq!(r.foreign, 512);
        clean(&m, free, &t, &before, &pt, &vas);
    }

    #[test]
    fn failures_undo_everything() {
        let m = dom0();
        let free = m.free_frames();
        let mut t = table();
        let before = t.clone();
        let mut pt = foreign_aware(&m, 64);
        let mut vas = VaSpace::new(pt.window());
        let ctl = DomainControl::new(&m).unwrap();
        let cfg = FlowConfig::default();
        let mut run = |fault: Fault| {
            m.inject(fault);
            let e = CrossDomain::setup(&ctl, &mut t, &mut pt, &mut vas, cfg).map(|_| ());
            m.clear_faults();
            clean(&m, free, &t, &before, &pt, &vas);
            e.unwrap_err()
        };
        assert_eq!(
            run(Fault::Errno {
                op: XOp::AcquireResource,
                errno: Errno::EFAULT
            }),
            FlowError::Acquire(AcquireError::Xen(XenError::Errno(Errno::EFAULT)))
        );
        assert_eq!(
            run(Fault::ShortAt {
                op: XOp::PopulatePhysmap,
                after_extents: 3
            }),
            FlowError::Domctl(
                "populate_physmap",
                DomctlError::ShortPopulate { done: 3, asked: 16 }
            )
        );
        assert!(matches!(
            run(Fault::Errno {
                op: XOp::MapForeignBatch,
                errno: Errno::ENOMEM
            }),
            FlowError::Map(MapError::Xen(_))
        ));
        assert_eq!(
            run(Fault::Errno {
                op: XOp::CreateDomain,
                errno: Errno::ENOMEM
            }),
            FlowError::Domctl(
                "createdomain",
                DomctlError::Xen {
                    op: "createdomain",
                    err: XenError::Errno(Errno::ENOMEM)
                }
            )
        );
        let e = CrossDomain::setup(
            &ctl,
            &mut t,
            &mut pt,
            &mut vas,
            FlowConfig { grants: 17, ..cfg },
        )
        .map(|_| ());
        assert!(matches!(e, Err(FlowError::Config(_))));
        // A hook that says no still tears down, then fails.
        let e = cross_domain_flow(&m, &mut t, &mut pt, &mut vas, cfg, |_, _, _, _| false);
        assert!(matches!(e, Err(FlowError::Config(_))));
        clean(&m, free, &t, &before, &pt, &vas);
    }

    #[test]
    fn teardown_refuses_while_a_grant_is_mapped() {
        let m = dom0();
        let mut t = table();
        let mut pt = foreign_aware(&m, 64);
        let mut vas = VaSpace::new(pt.window());
        let ctl = DomainControl::new(&m).unwrap();
        let cd =
            CrossDomain::setup(&ctl, &mut t, &mut pt, &mut vas, FlowConfig::default()).unwrap();
        let h = cd.domid();
        // As Xen marks an entry the grantee maps.
        let g = cd.seeded()[1].gref;
        let gm = cd.gnttab.as_ref().unwrap();
        gm.write_obj::<u16>(
            u64::from(g.0) * 8,
            gnttab::GTF_PERMIT_ACCESS | gnttab::GTF_READING,
        )
        .unwrap();
        assert_eq!(
            cd.teardown(&ctl, &mut t, &mut pt, &mut vas),
            Err(FlowError::GrantInUse(g))
        );
        // Left alive rather than destroyed under a mapping.
        assert_eq!(m.is_dying(h), Some(false));
    }

    #[test]
    fn unprivileged_domains_are_refused_cleanly() {
        let m = dom0();
        m.add_domain(DomainConfig::arm_domu(DomId(1), 1024))
            .unwrap();
        m.add_domain(DomainConfig::pvh_domu(DomId(2), 1024))
            .unwrap();
        let mut t = table();
        let mut pt = BufTables::new(16);
        let mut vas = VaSpace::new(pt.window());
        m.set_current(DomId(1)).unwrap();
        let p = unprivileged_probe(&m, &mut t, &mut pt, &mut vas, D0, Gfn(0x100));
        assert!(p.refused_cleanly(), "{p:?}");
        assert_eq!(p.acquire, Err(AcquireError::NotPermitted(D0)));
        assert_eq!(p.acquire_refusal(), Some("eperm"));
        // An x86 PVH domU gets EACCES for acquire_resource instead (Xen 4.17
        // refuses every translated caller but the hardware domain, as seen
        // under real Xen in x86_64-xl-unprivileged-probe): refused too.
        m.set_current(DomId(2)).unwrap();
        let p = unprivileged_probe(&m, &mut t, &mut pt, &mut vas, D0, Gfn(0x100));
        assert_eq!(p.acquire, Err(AcquireError::NotHardwareDomain));
        assert_eq!(p.acquire_refusal(), Some("eacces"));
        assert!(p.foreign_eperm() && p.untouched && p.refused_cleanly());
        // Anything else is not a refusal.
        let other = ProbeOutcome {
            acquire: Err(AcquireError::NoHole(crate::addr::PageCount(1))),
            ..p
        };
        assert_eq!(other.acquire_refusal(), None);
        assert!(!other.refused_cleanly());
        assert!(m.foreign(DomId(1)).is_empty() && m.acquired(DomId(2)).is_empty());
        m.check_conservation().unwrap();
    }
}
