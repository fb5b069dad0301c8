//! Host page tables for the mapping window: [`BufTables`] routes every page
//! mapped into its window to host memory ([`testmem`]), through the
//! library's host-window hook ([`xenmem::grant::set_host_window`]), so that
//! handles read and write mapped pages as they do on the target.
//!
//! With a model
//! ([`BufTables::on_model`]) a page goes to the model's memory for the frame
//! mapped there, as the agent's domain sees it (an acquired grant-table
//! frame, another domain's frame), so reads and writes reach the same bytes
//! Xen and the other domain see. Without one, or where the model has
//! nothing, it goes to the window's own (leaked, zeroed) host memory; there
//! an optional resolver (guest frame to what backs it) makes a new mapping
//! of an already mapped backing start with its contents (a snapshot, not a
//! live alias).

use std::boxed::Box;
use std::collections::HashMap;
use std::vec;

use super::XenModel;
use xenmem::addr::{DomId, Gfn, GuestPhysAddr, PageCount, VirtAddr, PAGE_SIZE};
use xenmem::mapping::MapTarget;
use xenmem::paging::{Attrs, PagingError, Window};
use xenmem::region::RegionTable;

/// What backs a guest frame (domain and frame), for the snapshots.
type Resolver<'a> = Box<dyn Fn(Gfn) -> Option<(u16, u64)> + 'a>;

/// See the [module](self).
pub struct BufTables<'a> {
    window: Window,
    /// The model whose memory mapped frames reach, and the domain whose
    /// physmap the frames are in.
    model: Option<(&'a XenModel, DomId)>,
    alias: Option<Resolver<'a>>,
    /// Backing of mapped pages (with a resolver) to a VA mapping it.
    backed: HashMap<(u16, u64), u64>,
    /// Mapped pages: VA to (guest-physical address, attributes).
    pub map: HashMap<u64, (u64, Attrs)>,
    /// Refuse the next maps.
    pub fail_map: bool,
    /// Refuse the next unmaps (nothing is unmapped).
    pub fail_unmap: bool,
}

impl<'a> BufTables<'a> {
    /// Resolve guest frames to their backing with `f`.
    pub fn with_alias(mut self, f: impl Fn(Gfn) -> Option<(u16, u64)> + 'a) -> Self {
        self.alias = Some(Box::new(f));
        self
    }

    /// Route each page mapped to `m`'s memory for the frame `dom` has
    /// there (where it has one).
    pub fn on_model(mut self, m: &'a XenModel, dom: DomId) -> Self {
        self.model = Some((m, dom));
        self
    }

    /// A window of `pages` pages of zeroed memory.
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from((pages + 1) * PAGE_SIZE / 8).unwrap();
        let mem: &'static mut [u64] = Box::leak(vec![0u64; words].into_boxed_slice());
        let base = (mem.as_mut_ptr() as u64).next_multiple_of(PAGE_SIZE);
        BufTables {
            window: Window::new(VirtAddr(base), pages * PAGE_SIZE).unwrap(),
            model: None,
            alias: None,
            backed: HashMap::new(),
            map: HashMap::new(),
            fail_map: false,
            fail_unmap: false,
        }
    }
}

/// Everything as it was after a flow: only dom0 (domain 0) left, `free`
/// frames free again, nothing foreign-mapped or acquired, the agent's
/// table as `before`, nothing in the page tables, the window or the test
/// translation, and the model's frames conserved.
pub fn clean(
    m: &XenModel,
    free: u64,
    t: &RegionTable,
    before: &RegionTable,
    pt: &BufTables<'_>,
    vas: &xenmem::mapping::VaSpace,
) {
    let d0 = DomId(0);
    assert_eq!(m.domain_ids(), [d0]);
    assert_eq!(m.free_frames(), free);
    assert!(m.foreign(d0).is_empty() && m.acquired(d0).is_empty());
    assert_eq!(t, before);
    assert!(pt.map.is_empty());
    assert_eq!(vas.used(), 0);
    assert_eq!(testmem::mapped(), 0);
    m.check_conservation().unwrap();
}

impl MapTarget for BufTables<'_> {
    fn map(
        &mut self,
        va: VirtAddr,
        pa: GuestPhysAddr,
        pages: PageCount,
        attrs: Attrs,
        _: &mut RegionTable,
    ) -> Result<(), PagingError> {
        if self.fail_map {
            return Err(PagingError::OutOfFrames);
        }
        for i in 0..pages.0 {
            let v = va.0 + i * PAGE_SIZE;
            if !self.window.contains(VirtAddr(v)) {
                return Err(PagingError::NonCanonical(VirtAddr(v)));
            }
            if let Some(&(pa, _)) = self.map.get(&v) {
                return Err(PagingError::AlreadyMapped {
                    va: VirtAddr(v),
                    pa: GuestPhysAddr(pa),
                });
            }
            let p = pa.0 + i * PAGE_SIZE;
            let key = self.alias.as_ref().and_then(|f| f(Gfn(p / PAGE_SIZE)));
            if let Some(key) = key {
                if let Some(&w) = self.backed.get(&key) {
                    // SAFETY: both pages lie in the leaked window
                    // memory (checked above for `v`; `w` was when it
                    // was mapped) and are distinct pages.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            w as usize as *const u8,
                            v as usize as *mut u8,
                            PAGE_SIZE as usize,
                        )
                    };
                } else {
                    self.backed.insert(key, v);
                }
            }
            let host = self
                .model
                .and_then(|(m, dom)| m.page_ptr(dom, Gfn(p / PAGE_SIZE)))
                .unwrap_or(v as usize as *mut u8);
            testmem::map(v, host);
            self.map.insert(v, (p, attrs));
        }
        Ok(())
    }

    fn unmap(
        &mut self,
        va: VirtAddr,
        pages: PageCount,
        _: &mut RegionTable,
    ) -> Result<(), PagingError> {
        if self.fail_unmap {
            return Err(PagingError::OutOfFrames);
        }
        // All or nothing, as the real page tables.
        let pages = (0..pages.0).map(|i| va.0 + i * PAGE_SIZE);
        if let Some(v) = pages.clone().find(|v| !self.map.contains_key(v)) {
            return Err(PagingError::NotMapped(VirtAddr(v)));
        }
        for v in pages {
            self.map.remove(&v);
            testmem::unmap(v);
            self.backed.retain(|_, w| *w != v);
        }
        Ok(())
    }

    fn window(&self) -> Window {
        self.window
    }
}

/// Host tests' stand-in for the mapping window: window page to host page.
pub mod testmem {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use xenmem::addr::PAGE_SIZE;

    thread_local! {
        static PAGES: RefCell<BTreeMap<u64, usize>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Route window page `va` (page-aligned) to `host`, a page of host
    /// memory that stays valid until [`unmap`] (and install [`translate`]
    /// as the library's host window).
    pub fn map(va: u64, host: *mut u8) {
        // SAFETY: `translate` returns a pointer into a host page routed here
        // (valid while it is routed, which the page tables that route it
        // keep until they unmap it) or panics.
        unsafe { xenmem::grant::set_host_window(Some(translate)) };
        PAGES.with(|p| p.borrow_mut().insert(va, host as usize));
    }

    /// Forget window page `va`.
    pub fn unmap(va: u64) {
        PAGES.with(|p| p.borrow_mut().remove(&va));
    }

    /// Window pages routed.
    pub fn mapped() -> usize {
        PAGES.with(|p| p.borrow().len())
    }

    /// The host address of window byte `va`; panics where its page is not
    /// routed.
    pub fn translate(va: u64) -> *mut u8 {
        let page = va & !(PAGE_SIZE - 1);
        let host = PAGES
            .with(|p| p.borrow().get(&page).copied())
            .unwrap_or_else(|| panic!("window address {va:#x} is not mapped"));
        (host + (va - page) as usize) as *mut u8
    }
}
