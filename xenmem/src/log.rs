//! Logging macros.
//!
//! With the `defmt` feature they forward to `defmt`; without it they type-check
//! their arguments and compile to nothing, so that an embedder can leave defmt
//! out. They are exported (hidden) for the crates built on this one, such as
//! the agent: `cfg` is evaluated where a macro expands, so the feature they
//! test is the *calling* crate's `defmt`.

/// Log at info level (defmt's `info!`).
#[macro_export]
#[doc(hidden)]
macro_rules! xm_info {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::info!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { $crate::__xm_discard!($($t)*); }
    }};
}

/// Log at warn level (defmt's `warn!`).
#[macro_export]
#[doc(hidden)]
macro_rules! xm_warn {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::warn!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { $crate::__xm_discard!($($t)*); }
    }};
}

/// Log at error level (defmt's `error!`).
#[macro_export]
#[doc(hidden)]
macro_rules! xm_error {
    ($($t:tt)*) => {{
        #[cfg(feature = "defmt")]
        { ::defmt::error!($($t)*); }
        #[cfg(not(feature = "defmt"))]
        { $crate::__xm_discard!($($t)*); }
    }};
}

/// Evaluates nothing; keeps the arguments "used" when defmt is off.
#[macro_export]
#[doc(hidden)]
macro_rules! __xm_discard {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        $( let _ = &$arg; )*
    }};
}
