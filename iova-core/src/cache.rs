//! Cache maintenance for devices (and table walkers) that do not snoop CPU caches.
//!
//! The two-step API batches maintenance: `link` issues cleans without waiting,
//! `sync` issues one [`CacheMaintenance::complete`] before it makes the batch
//! visible, and [`crate::IovaState::sync_for_cpu`] issues invalidates and one
//! `complete` before the CPU reads what the device wrote.

use crate::addr::PhysAddr;

/// Cache maintenance by physical address.
///
/// Operations may be asynchronous (e.g. `DC CVAC` without a `DSB`); only
/// [`complete`](CacheMaintenance::complete) waits for all earlier ones.
pub trait CacheMaintenance: Sync {
    /// Whether the device (or walker) is coherent: if so, every operation is skipped.
    fn is_coherent(&self) -> bool;
    /// Write dirty lines of `[pa, pa + len)` back to memory (before the device reads).
    fn clean(&self, pa: PhysAddr, len: u64);
    /// Discard lines of `[pa, pa + len)` (before the CPU reads what the device wrote).
    fn invalidate(&self, pa: PhysAddr, len: u64);
    /// Wait until every earlier clean and invalidate has completed.
    fn complete(&self);
}

/// The device is cache coherent: no maintenance at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Coherent;

impl CacheMaintenance for Coherent {
    fn is_coherent(&self) -> bool {
        true
    }
    fn clean(&self, _: PhysAddr, _: u64) {}
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {}
}
