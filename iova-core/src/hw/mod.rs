//! What every backend needs from the hardware side, written once: register
//! access ([`Mmio`], [`MmioRegion`]) with one out-of-range policy, bounded
//! waits ([`WaitBudget`]), and live counters ([`Counter`]). The logging macro
//! the backends share is [`crate::warn_event!`].
//!
//! # Why not `safe-mmio`
//!
//! [`MmioRegion`] issues the same single `ldr`/`str` per access on aarch64
//! that `safe-mmio` does, so a hypervisor that traps the access can decode it.
//! It does not build on `safe-mmio`'s pointer types for two reasons:
//!
//! - A register read with side effects needs `&mut UniqueMmioPointer` there.
//!   Our drivers are shared between CPUs (`&self`, `Sync`) and serialise only
//!   the register sequences that need it (the command queue's producer index,
//!   one global command), so a unique pointer would force one lock around
//!   every register.
//! - [`Mmio`] is the seam where the fakes model the hardware: a write to a
//!   queue's producer index makes the fake consume commands at once. A pointer
//!   to memory cannot react to a write.

mod counter;
mod mmio;
mod wait;

pub use counter::Counter;
pub use mmio::{Mmio, MmioError, MmioRegion, Width, check_access};
pub use wait::{Deadline, Expired, WaitBudget};
