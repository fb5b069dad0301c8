//! Deliberately broken agents, for the runner's mutation tests.
//!
//! `cargo xtask test` builds the agent once more per architecture with
//! `XENMEM_MUTANT=runtime` in the environment and boots it, for each entry
//! of its mutant list, in the scenario that must catch it with
//! `mutant=NAME` added to the agent's command line; it fails unless that
//! scenario fails. Each [`is`] site breaks one thing the scenario checks. A
//! build with `XENMEM_MUTANT=NAME` is that one mutant whatever its command
//! line says. (A runtime build knows its mutant only once the command line
//! is parsed, at the start of `agent::run`: a site the boot code runs
//! earlier would never fire there.) In a normal build (no `XENMEM_MUTANT`) every site is `false`
//! at compile time and vanishes, and `mutant=` is an unknown option.
//! (rustc records the variable in the build's dependency information, so
//! cargo rebuilds the agent when it changes.)

use alloc::string::String;

/// The mutant this build is, if any (`runtime`: the one `mutant=` names).
const MUTANT: Option<&str> = option_env!("XENMEM_MUTANT");

/// Whether this build takes its mutant from the command line (`mutant=`).
pub const RUNTIME: bool = match MUTANT {
    Some(m) => same(m, "runtime"),
    None => false,
};

/// The mutant `mutant=` chose, in a [`RUNTIME`] build.
static CHOSEN: spin::Once<String> = spin::Once::new();

/// `a == b`, at compile time.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether this build (or, in a [`RUNTIME`] build, this run) is the mutant
/// `name`.
pub fn is(name: &str) -> bool {
    match MUTANT {
        None => false,
        Some(_) if RUNTIME => CHOSEN.get().is_some_and(|c| c == name),
        Some(m) => m == name,
    }
}

/// `mutant=NAME`: make this run the mutant `name`. Whether it did: not
/// unless this is a [`RUNTIME`] build, `name` is not empty and no mutant
/// was chosen before.
pub fn choose(name: &str) -> bool {
    if !RUNTIME || name.is_empty() || CHOSEN.is_completed() {
        return false;
    }
    CHOSEN.call_once(|| name.into());
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_normal_build_is_no_mutant() {
        if super::MUTANT.is_none() {
            assert!(!super::is("claim-off-by-one"));
            assert!(!super::choose("claim-off-by-one"));
            assert!(!super::is("claim-off-by-one"));
        }
        assert!(super::same("runtime", "runtime"));
        assert!(!super::same("runtime", "runtimE"));
        assert!(!super::same("runtime", "run"));
    }
}
