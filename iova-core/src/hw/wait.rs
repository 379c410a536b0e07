//! Bounded waits on hardware.

/// How long a driver waits for the hardware before it gives up: at most
/// `max_polls` polls, and, when `clock` is set, also no longer than its
/// timeout on that clock.
///
/// A poll count is what every driver can bound without a clock (early boot,
/// a fake in a test); a clock makes the bound a time on hardware whose polls
/// are much faster or slower than expected.
#[derive(Debug, Clone, Copy)]
pub struct WaitBudget {
    /// Polls before giving up (always applies; zero still polls once).
    pub max_polls: u64,
    /// A monotonic clock (any unit) and a timeout in that unit.
    pub clock: Option<(fn() -> u64, u64)>,
}

impl WaitBudget {
    /// Ten million polls, no clock: far beyond any completion a working
    /// IOMMU needs (microseconds), short enough that a dead one is reported
    /// within seconds even when every poll is a trapped register read.
    pub const DEFAULT: Self = Self::polls(10_000_000);

    /// At most `max_polls` polls, no clock.
    pub const fn polls(max_polls: u64) -> Self {
        Self {
            max_polls,
            clock: None,
        }
    }

    /// The same budget, also bounded by `timeout` on `now`.
    pub const fn with_clock(self, now: fn() -> u64, timeout: u64) -> Self {
        Self {
            max_polls: self.max_polls,
            clock: Some((now, timeout)),
        }
    }

    /// Starts counting down this budget.
    pub fn start(&self) -> Deadline {
        Deadline {
            polls: self.max_polls,
            clock: self.clock.map(|(now, t)| (now, now().saturating_add(t))),
        }
    }

    /// Polls `poll` until it returns `Some`, spinning between polls. The
    /// condition is polled once more after the budget runs out, so a
    /// completion that arrived during the last spin is not a timeout.
    ///
    /// # Errors
    ///
    /// [`Expired`] when the budget ran out with `poll` still `None`.
    pub fn until<T>(&self, mut poll: impl FnMut() -> Option<T>) -> Result<T, Expired> {
        let mut deadline = self.start();
        loop {
            if let Some(v) = poll() {
                return Ok(v);
            }
            if deadline.expired() {
                return Err(Expired);
            }
            core::hint::spin_loop();
        }
    }

    /// [`until`](Self::until) for a condition without a value.
    ///
    /// # Errors
    ///
    /// [`Expired`] when the budget ran out with `done` still false.
    pub fn until_true(&self, mut done: impl FnMut() -> bool) -> Result<(), Expired> {
        self.until(|| done().then_some(()))
    }
}

impl Default for WaitBudget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl PartialEq for WaitBudget {
    /// Budgets are equal when their poll counts and timeouts are (the clocks
    /// are functions, which have no meaningful equality).
    fn eq(&self, other: &Self) -> bool {
        self.max_polls == other.max_polls
            && self.clock.map(|(_, t)| t) == other.clock.map(|(_, t)| t)
    }
}

impl Eq for WaitBudget {}

/// A [`WaitBudget`] being spent, for waits that do more per poll than a
/// closure conveniently can. Check the condition first, then
/// [`expired`](Self::expired), then spin: that order polls once more after
/// the last spin.
#[derive(Debug)]
pub struct Deadline {
    polls: u64,
    clock: Option<(fn() -> u64, u64)>,
}

impl Deadline {
    /// Takes one poll from the budget; true once none is left or the clock
    /// passed its deadline.
    pub fn expired(&mut self) -> bool {
        if self.polls == 0 {
            return true;
        }
        self.polls -= 1;
        self.clock.is_some_and(|(now, end)| now() >= end)
    }
}

/// A bounded wait ran out. Each backend reports it as its own
/// `Timeout(Wait)` error, naming what it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Expired;

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn polls_at_most_the_budget_plus_the_final_check() {
        let polls = Cell::new(0u64);
        let r = WaitBudget::polls(5).until_true(|| {
            polls.set(polls.get() + 1);
            false
        });
        assert_eq!(r, Err(Expired));
        assert_eq!(polls.get(), 6, "five polls, then one after the last spin");
    }

    #[test]
    fn a_completion_seen_on_the_final_check_is_not_a_timeout() {
        let polls = Cell::new(0u64);
        let r = WaitBudget::polls(3).until(|| {
            polls.set(polls.get() + 1);
            (polls.get() == 4).then_some(7)
        });
        assert_eq!(r, Ok(7));
    }

    #[test]
    fn a_zero_budget_still_polls_once() {
        assert_eq!(WaitBudget::polls(0).until(|| Some(1)), Ok(1));
        assert_eq!(WaitBudget::polls(0).until_true(|| false), Err(Expired));
    }

    #[test]
    fn the_clock_ends_a_wait_before_the_polls_run_out() {
        std::thread_local!(static NOW: Cell<u64> = const { Cell::new(0) });
        fn now() -> u64 {
            NOW.with(|n| {
                n.set(n.get() + 10);
                n.get()
            })
        }
        let polls = Cell::new(0u64);
        let budget = WaitBudget::polls(1_000_000).with_clock(now, 50);
        assert_eq!(
            budget.until_true(|| {
                polls.set(polls.get() + 1);
                false
            }),
            Err(Expired)
        );
        assert!(
            polls.get() <= 6,
            "stopped by the clock after {} polls",
            polls.get()
        );
    }
}
