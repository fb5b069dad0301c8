//! A xenstore client over the domain's xenstore ring page (being written).
