//! Every error type of the library implements [`core::error::Error`] (each
//! has its `Display` beside its definition), so an embedder can pass them on
//! with `?` into `Box<dyn Error>` or its own error type.

macro_rules! errors {
    ($($t:path),* $(,)?) => {
        $(impl core::error::Error for $t {})*
    };
}

errors!(
    crate::acquire::AcquireError,
    crate::xen::XenError,
    crate::xen::domctl::ConfigError,
    crate::paging::PagingError,
    crate::region::RegionError,
    crate::xenstore::wire::XsErrno,
    crate::xenstore::XsError,
    crate::m2p::M2pError,
    crate::console::ConsoleError,
    crate::grant::AccessError,
    crate::grant::GrantError,
    crate::reservation::ReservationError,
    crate::special::SpecialError,
    crate::evtchn::EvtchnError,
    crate::evtchn::PlaceError,
    crate::layout::LayoutError,
    crate::memmap::MemMapError,
    crate::domctl::DomctlError,
    crate::domctl::FlowError,
    crate::guestmem::GuestMemError,
    crate::fdt::FdtError,
    crate::mapping::MapError,
);
