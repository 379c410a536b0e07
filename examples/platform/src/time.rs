//! Bounded waiting.
//!
//! Clock source: the generic timer (`CNTPCT_EL0` / `CNTFRQ_EL0`) on aarch64 and
//! on x86_64 the TSC, its rate measured at boot against the HPET main counter
//! at 0xFED0_0000 (or the HPET itself if that fails). If no clock is available
//! a [`Deadline`] falls back to counting polls (about one per microsecond,
//! which is pessimistic for an MMIO read under TCG), so a wait always ends.

/// Returned when a bounded wait runs out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

impl core::fmt::Display for Timeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("timed out")
    }
}

/// Monotonic clock: `(ticks, ticks per second)`, or `None` without a clock.
pub fn clock() -> Option<(u64, u64)> {
    crate::arch::clock()
}

/// Microseconds since an arbitrary point (boot), if there is a clock.
pub fn now_us() -> Option<u64> {
    let (ticks, hz) = clock()?;
    Some(((ticks as u128 * 1_000_000) / hz as u128) as u64)
}

/// A point in time after which a wait gives up.
#[derive(Debug, Clone)]
pub struct Deadline {
    kind: DeadlineKind,
}

#[derive(Debug, Clone)]
enum DeadlineKind {
    Clock { end: u64 },
    Polls { left: u64 },
}

impl Deadline {
    /// A deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        let kind = match clock() {
            Some((now, hz)) => {
                let delta = (hz as u128 * ms as u128 / 1000).min(u64::MAX as u128) as u64;
                DeadlineKind::Clock {
                    end: now.saturating_add(delta),
                }
            }
            None => DeadlineKind::Polls {
                left: ms.saturating_mul(1000),
            },
        };
        Self { kind }
    }

    /// Microseconds left until the deadline (0 once it has passed), or
    /// `None` for a deadline that counts polls (no clock).
    pub fn remaining_us(&self) -> Option<u64> {
        match &self.kind {
            DeadlineKind::Clock { end } => {
                let (now, hz) = clock()?;
                let left = end.saturating_sub(now) as u128 * 1_000_000 / hz as u128;
                Some(left.min(u64::MAX as u128) as u64)
            }
            DeadlineKind::Polls { .. } => None,
        }
    }

    /// Whether the deadline has passed. Call once per poll.
    pub fn expired(&mut self) -> bool {
        match &mut self.kind {
            DeadlineKind::Clock { end } => clock().is_none_or(|(now, _)| now >= *end),
            DeadlineKind::Polls { left } => {
                if *left == 0 {
                    true
                } else {
                    *left -= 1;
                    false
                }
            }
        }
    }
}

/// Calls `poll` until it returns `Some`, or gives up after `ms` milliseconds.
/// `poll` is always called at least once, and once more after the deadline,
/// so a condition that became true just in time is not reported as a timeout.
pub fn poll_until<T>(ms: u64, mut poll: impl FnMut() -> Option<T>) -> Result<T, Timeout> {
    let mut deadline = Deadline::after_ms(ms);
    loop {
        let expired = deadline.expired();
        if let Some(value) = poll() {
            return Ok(value);
        }
        if expired {
            return Err(Timeout);
        }
        core::hint::spin_loop();
    }
}
