//! Interrupt handlers by interrupt number, and sleeping until an interrupt
//! or a timeout: the part of interrupt handling both architectures share.
//!
//! An interrupt number is what the CPU's interrupt entry reads: the vector
//! (32-254) on x86_64, the INTID from `ICC_IAR1_EL1` on aarch64. A handler
//! is registered for a number together with its *source* (the IOAPIC pin or
//! the GIC INTID) so that the entry code can mask the source when the
//! handler asks. The entry code calls [`dispatch`] with interrupts masked,
//! then sends the end of interrupt: for a level-triggered source the
//! handler must have made the device lower its line by then (acknowledged
//! it), or return [`Handled::Mask`], or the interrupt is delivered again
//! as soon as it ends, for ever.
//!
//! Interrupts are masked on the CPU (`RFLAGS.IF` / `DAIF.I`) except while
//! [`wait_until`] / [`wait_for_interrupt`] sleep, so handlers run only
//! there, one at a time, and code outside them never races a handler.
//! Sleeping arms a timer first (the local APIC timer in one-shot mode; the
//! EL1 physical timer `CNTP`), so every wait ends by its deadline even when
//! no interrupt comes.

use core::sync::atomic::{AtomicU32, Ordering};

use spin::Mutex;

use crate::time::{Deadline, Timeout};

/// What a handler did about its interrupt's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The device was acknowledged: its line is low (or the source is edge
    /// triggered).
    Done,
    /// The device could not be acknowledged: mask the source before the end
    /// of interrupt, or a level-triggered one fires again at once.
    Mask,
}

/// An interrupt handler. It runs with interrupts masked, in interrupt
/// context: it must not wait, and it shares state with the rest of the
/// program only through atomics or a lock the program never holds while it
/// waits for interrupts (try the lock; return [`Handled::Mask`] if it is
/// taken).
pub type Handler = fn() -> Handled;

/// Interrupt numbers there are: x86_64 vectors 0-255, GICv3 INTIDs 0-1019.
#[cfg(target_arch = "x86_64")]
pub const MAX_IRQS: usize = 256;
/// Interrupt numbers there are: x86_64 vectors 0-255, GICv3 INTIDs 0-1019.
#[cfg(target_arch = "aarch64")]
pub const MAX_IRQS: usize = 1020;

#[derive(Debug, Clone, Copy)]
struct Slot {
    handler: Handler,
    source: u32,
}

/// Registered handlers. Locked by code outside handlers only while
/// interrupts are masked, so the interrupt path's `try_lock` always gets it.
static SLOTS: Mutex<[Option<Slot>; MAX_IRQS]> = Mutex::new([None; MAX_IRQS]);
/// Handler runs per interrupt number, ever. Written only by [`dispatch`]
/// (one CPU, handlers do not nest), so plain loads and stores do.
static RUNS: [AtomicU32; MAX_IRQS] = [const { AtomicU32::new(0) }; MAX_IRQS];
/// Interrupts taken other than the sleep timer's, ever (same writer rule).
static TAKEN: AtomicU32 = AtomicU32::new(0);

/// Why a handler could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The interrupt number already has a handler.
    InUse(u32),
    /// The number is outside [`MAX_IRQS`].
    OutOfRange(u32),
}

/// Registers `handler` for interrupt number `irq`, coming from `source`.
pub(crate) fn register(irq: u32, source: u32, handler: Handler) -> Result<(), RegisterError> {
    let mut slots = SLOTS.lock();
    let slot = slots
        .get_mut(irq as usize)
        .ok_or(RegisterError::OutOfRange(irq))?;
    if slot.is_some() {
        return Err(RegisterError::InUse(irq));
    }
    *slot = Some(Slot { handler, source });
    Ok(())
}

/// Removes the handler of `irq` (nothing if it has none).
pub(crate) fn unregister(irq: u32) {
    if let Some(slot) = SLOTS.lock().get_mut(irq as usize) {
        *slot = None;
    }
}

/// How many times the handler of `irq` has run since boot.
pub fn runs(irq: u32) -> u32 {
    RUNS.get(irq as usize)
        .map_or(0, |r| r.load(Ordering::Acquire))
}

/// Called by the architecture's interrupt entry, with interrupts masked,
/// before it ends the interrupt: counts it and runs its handler, if any.
/// Returns the source to mask before the end of interrupt, if the handler
/// asked for that.
pub(crate) fn dispatch(irq: u32) -> Option<u32> {
    TAKEN.store(
        TAKEN.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
    // The lock is free unless a handler was registered with interrupts
    // unmasked, which the crate never does; a taken lock counts as no
    // handler.
    let slot = SLOTS
        .try_lock()
        .and_then(|s| s.get(irq as usize).copied().flatten())?;
    let outcome = (slot.handler)();
    if let Some(runs) = RUNS.get(irq as usize) {
        runs.store(
            runs.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Release,
        );
    }
    (outcome == Handled::Mask).then_some(slot.source)
}

/// Longest single sleep: the timer is re-armed after this, so an imprecise
/// timer rate costs at most this much past a deadline.
pub const MAX_SLEEP_US: u64 = 10_000;

/// Sleeps with interrupts enabled until `cond` holds (checked with
/// interrupts masked, before each sleep and after each wake-up) or `ms`
/// milliseconds have passed. Every pending interrupt is taken, and its
/// handler run, before `cond` is checked again.
pub fn wait_until(ms: u64, mut cond: impl FnMut() -> bool) -> Result<(), Timeout> {
    let mut deadline = Deadline::after_ms(ms);
    loop {
        let expired = deadline.expired();
        if cond() {
            return Ok(());
        }
        if expired {
            return Err(Timeout);
        }
        // Without a clock the deadline counts polls: sleep briefly.
        let us = deadline.remaining_us().unwrap_or(1).clamp(1, MAX_SLEEP_US);
        idle(us);
    }
}

/// Sleeps until an interrupt other than the sleep timer's is taken (its
/// handler, if any, has run), or `ms` milliseconds have passed; returns
/// whether one was.
pub fn wait_for_interrupt(ms: u64) -> bool {
    let before = TAKEN.load(Ordering::Acquire);
    wait_until(ms, || TAKEN.load(Ordering::Acquire) != before).is_ok()
}

/// One sleep of at most `us` microseconds, during which interrupts are
/// taken (see the architecture's `idle`).
fn idle(us: u64) {
    #[cfg(target_arch = "x86_64")]
    crate::apic::idle(us);
    #[cfg(target_arch = "aarch64")]
    crate::gic::idle(us);
}
