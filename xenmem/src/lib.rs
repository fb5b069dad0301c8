//! # xenmem
//!
//! A freestanding, `no_std` library for a Xen guest's own memory: it talks to
//! Xen directly (no OS beneath it) to give memory back and take it again in
//! batches and superpage extents, make machine-contiguous buffers, keep the
//! guest's pseudo-physical region table, and map grants, foreign frames and
//! resources into holes of the physical map. It needs `alloc` (a global
//! allocator of the embedder's) and nothing else; logging through `defmt` is
//! the optional `defmt` feature.
//!
//! An embedder starts from [`RealXen`] (the hypervisor; making one is
//! `unsafe`, see its contract), the guest's [`MemoryMap`], the
//! [`RegionTable`] built from it by [`initial_table`] with the embedder's own
//! memory marked reserved, and the reservation [`Engine`]:
//!
//! ```
//! use xenmem::{
//!     initial_table, DomId, Engine, GapPolicy, Gfn, Hypervisor, MemoryMap, Order, PageCount,
//!     Strategy,
//! };
//! # use xenmem_model::{DomainConfig, XenModel};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let model = XenModel::new(1 << 16);
//! # model.add_domain(DomainConfig::pvh_domu(DomId(1), 8192)).unwrap();
//! # model.set_current(DomId(1)).unwrap();
//! # let hv = &model;
//! // On the target, once the hypercall interface is set up:
//! //     let hv = &unsafe { xenmem::RealXen::new() };
//! let mut e820 = [Default::default(); 128];
//! let n = hv.memory_map(&mut e820)?;
//! let map = MemoryMap::from_e820(&e820[..n])?;
//! // The embedder's image, heap and stacks go in the last argument
//! // (`layout::Reservation`), so that nothing gives them away.
//! let limit = Gfn(hv.maximum_gpfn(DomId::SELF)?.0 + 1);
//! let mut table = initial_table(&map, GapPolicy::X86, limit, &[])?;
//!
//! let pages = hv.current_reservation(DomId::SELF)?;
//! let mut engine = Engine::new(hv, Strategy::xenmem(Order::new_const(9)), pages, hv.features()?);
//! engine.decrease(&mut table, PageCount(4096))?; // 16 MiB back to Xen
//! assert_eq!(engine.verify()?, PageCount(pages.0 - 4096));
//! engine.increase(&mut table, PageCount(4096))?; // and again
//! assert_eq!(engine.verify()?, pages);
//! # Ok(())
//! # }
//! ```
//!
//! Everything that talks to Xen goes through the typed operations of
//! [`Hypervisor`], so the same code runs on the host against a model of Xen
//! (crate `xenmem-model`, as above). Architecture-specific code sits behind
//! [`arch`]. Mappings are handles ([`GrantMap`], [`ForeignMap`],
//! [`ResourceMap`]) released explicitly with the table and page tables they
//! were made with.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
// The library's own unit tests compile the model of Xen (crate
// `xenmem-model`) in by path (see `xen::model`): a crate's unit tests cannot
// use a dev-dependency that itself depends on the crate (it would link a
// second copy of xenmem, whose traits are not this build's). The model's
// `xenmem::` paths then name this crate.
#[cfg(test)]
extern crate self as xenmem;

#[macro_use]
pub mod log;

pub mod acquire;
pub mod addr;
pub mod alloc_util;
pub mod arch;
pub mod boot;
pub mod console;
pub mod domctl;
pub mod error;
pub mod evtchn;
pub mod fdt;
pub mod grant;
pub mod guestmem;
pub mod layout;
pub mod leak;
pub mod logframe;
pub mod m2p;
pub mod mapping;
pub mod memmap;
pub mod paging;
pub mod region;
pub mod reservation;
pub mod special;
pub mod timer;
pub mod xen;
pub mod xenstore;

pub use acquire::ResourceMap;
pub use addr::{DomId, Gfn, GuestPhysAddr, Mfn, Order, PageCount, VirtAddr, PAGE_SIZE};
pub use grant::{GrantMap, GrantRef, GrantTable};
pub use layout::{initial_table, GapPolicy};
pub use mapping::{ForeignMap, MapTarget, VaSpace};
pub use memmap::MemoryMap;
pub use region::{FrameRange, RegionKind, RegionTable};
pub use reservation::{ContiguousBuffer, Engine, ReservationError, Strategy};
pub use xen::{Hypervisor, RealXen, XenError};
