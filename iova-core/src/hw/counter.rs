//! One live counter: what a driver did, for its users and for tests.

use core::sync::atomic::{AtomicU64, Ordering};

/// A relaxed event counter. Drivers keep one per event, add to it on the hot
/// path, and hand users a plain snapshot struct of [`Counter::get`] values.
///
/// Relaxed, because a counter orders nothing: it is read for statistics, and
/// a test that compares counts does so after the work it counted returned.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`; adding zero writes nothing (no cache line bounces between
    /// CPUs for an event that did not happen).
    #[inline]
    pub fn add(&self, n: u64) {
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count now.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_added() {
        let c = Counter::new();
        assert_eq!(c.get(), 0);
        c.incr();
        c.add(0);
        c.add(41);
        assert_eq!(c.get(), 42);
    }
}
