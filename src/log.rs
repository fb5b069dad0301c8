//! Logging macros.
//!
//! With the `defmt` feature they forward to `defmt`; without it they type-check
//! their arguments and compile to nothing, so that an embedder can leave defmt
//! out. They are crate-internal: the `cfg` they test is this crate's feature.

/// Log at info level (defmt's `info!`).
macro_rules! xm_info {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::info!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { __xm_discard!($($t)*); }
    }};
}

/// Log at warn level (defmt's `warn!`).
#[allow(unused_macros)]
macro_rules! xm_warn {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::warn!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { __xm_discard!($($t)*); }
    }};
}

/// Log at error level (defmt's `error!`).
macro_rules! xm_error {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::error!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { __xm_discard!($($t)*); }
    }};
}

/// Evaluates nothing; keeps the arguments "used" when defmt is off.
macro_rules! __xm_discard {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        $( let _ = &$arg; )*
    }};
}
