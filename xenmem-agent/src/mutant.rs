//! Deliberately broken agents, for the runner's mutation tests.
//!
//! `cargo xtask test` builds the agent once more for each entry of its
//! mutant list with `XENMEM_MUTANT=NAME` in the environment, boots the
//! scenario that must catch it, and fails unless that scenario fails. Each
//! [`is`] site below breaks one thing the scenario checks; in a normal build
//! (no `XENMEM_MUTANT`) every site is `false` at compile time and vanishes.
//! (rustc records the variable in the build's dependency information, so
//! cargo rebuilds the agent when it changes.)

/// The mutant this build is, if any.
const MUTANT: Option<&str> = option_env!("XENMEM_MUTANT");

/// Whether this build is the mutant `name`.
pub fn is(name: &str) -> bool {
    matches!(MUTANT, Some(m) if m == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_normal_build_is_no_mutant() {
        if super::MUTANT.is_none() {
            assert!(!super::is("claim-off-by-one"));
        }
    }
}
