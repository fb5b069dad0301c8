//! Time for benchmarks: a free-running counter and its frequency.
//!
//! Each architecture provides `arch::imp::timer` with `now()` (the raw
//! counter) and `frequency()` (ticks per second, or why it is unknown):
//!
//! | arch | counter | frequency |
//! |---|---|---|
//! | x86_64 | `RDTSC` (after `LFENCE`) | Xen's CPUID time leaf (base + 3, sub-leaf 0): ECX = the guest's TSC frequency in kHz |
//! | aarch64 | `CNTVCT_EL0` (after `ISB`) | `CNTFRQ_EL0` |
//!
//! This module holds the portable part: the [`Clock`] trait that benchmark
//! code is written against (host tests give it a fake), the conversion from
//! ticks to nanoseconds, and the boot stamps (the counter at entry and at the
//! first log line) that the boot glue records with [`mark`].
//!
//! Where the counter starts: Xen sets an Arm domain's virtual counter offset
//! when it creates the domain, so `CNTVCT_EL0` counts from the domain's
//! creation; an x86 PVH domain's TSC is likewise offset to start near zero
//! when Xen sets the domain up (observed under Xen 4.17: 0.13 s at dom0's
//! entry, 1.7 s after Xen's own start). A stamp's raw value is therefore
//! about the time since Xen began building the domain, and the difference
//! between two stamps is an ordinary interval.

use core::sync::atomic::{AtomicU64, Ordering};

/// A free-running counter with a known frequency.
pub trait Clock {
    /// The counter now.
    fn now(&self) -> u64;
    /// Ticks per second (never 0).
    fn hz(&self) -> u64;
    /// What the counter is (`"tsc"`, `"cntvct"`), for reports.
    fn source(&self) -> &'static str;

    /// `ticks` in nanoseconds (saturating).
    fn ns(&self, ticks: u64) -> u64 {
        ticks_to_ns(ticks, self.hz())
    }

    /// `ticks` in microseconds (saturating).
    fn us(&self, ticks: u64) -> u64 {
        ticks_to_ns(ticks, self.hz()) / 1000
    }
}

/// `ticks` at `hz` in nanoseconds, saturating at `u64::MAX`; 0 if `hz` is 0.
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The architecture's counter (bare-metal targets only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemClock {
    hz: u64,
}

impl SystemClock {
    /// A clock of this frequency (for an embedder that knows it better).
    pub const fn with_hz(hz: u64) -> Option<SystemClock> {
        if hz == 0 {
            None
        } else {
            Some(SystemClock { hz })
        }
    }

    /// Its frequency, ticks per second.
    pub const fn frequency(&self) -> u64 {
        self.hz
    }
}

#[cfg(target_os = "none")]
impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::arch::imp::timer::now()
    }
    fn hz(&self) -> u64 {
        self.hz
    }
    fn source(&self) -> &'static str {
        crate::arch::imp::timer::SOURCE
    }
}

/// The architecture's clock, with the frequency the platform reports, or
/// why there is none (no counter frequency, or a host build).
pub fn system() -> Result<SystemClock, &'static str> {
    #[cfg(target_os = "none")]
    {
        let hz = crate::arch::imp::timer::frequency()?;
        SystemClock::with_hz(hz).ok_or("the counter's frequency is 0")
    }
    #[cfg(not(target_os = "none"))]
    {
        Err("no counter on the host build")
    }
}

/// The raw counter now (0 on the host build, which has none).
pub fn now() -> u64 {
    #[cfg(target_os = "none")]
    {
        crate::arch::imp::timer::now()
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// A moment of the boot that the agent stamps with the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// The first Rust code after Xen's hand-over (the boot glue).
    Entry = 0,
    /// Just before the agent's first log line.
    FirstLine = 1,
}

/// Unset stamps hold 0 (a counter never reads 0 once the guest runs; if it
/// did, the stamp would read as missing, which is harmless).
static STAMPS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Record the counter for `at` (the first call for each stamp wins). Cheap
/// enough for the boot path: one counter read and one store.
pub fn mark(at: Stamp) {
    let now = now();
    let _ = STAMPS[at as usize].compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
}

/// The counter recorded for `at`, if [`mark`] was called for it.
pub fn stamp(at: Stamp) -> Option<u64> {
    match STAMPS[at as usize].load(Ordering::Relaxed) {
        0 => None,
        v => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_ns(62_500_000, 62_500_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(3, 3_000_000_000), 1);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_to_ns(5, 0), 0);
        assert_eq!(SystemClock::with_hz(0), None);
        assert!(system().is_err(), "no counter on the host");
    }

    #[test]
    fn stamps_keep_the_first_mark() {
        // The host counter reads 0, which counts as "not marked".
        mark(Stamp::Entry);
        assert_eq!(stamp(Stamp::Entry), None);
        STAMPS[Stamp::FirstLine as usize].store(7, Ordering::Relaxed);
        mark(Stamp::FirstLine);
        assert_eq!(stamp(Stamp::FirstLine), Some(7));
    }
}
