//! Cache maintenance for SMMUs that do not snoop the CPUs' caches
//! (IDR0.COHACC = 0): everything the SMMU reads (commands, stream table,
//! context descriptors, page tables) is cleaned to the point of coherency
//! before the SMMU is told to look, and event records are invalidated before
//! the CPU reads them. The table walks and queue accesses are then
//! non-cacheable (CR1, STE and CD attributes), outer shareable.

use iova_core::{CacheMaintenance, PhysAddr};

/// The SMMU's cache maintenance: none for a coherent SMMU, else the
/// caller's [`CacheMaintenance`].
#[derive(Clone, Copy)]
pub struct SmmuCache(Option<&'static dyn CacheMaintenance>);

impl core::fmt::Debug for SmmuCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.is_coherent() {
            "SmmuCache(coherent)"
        } else {
            "SmmuCache(maintained)"
        })
    }
}

impl SmmuCache {
    /// No maintenance: the SMMU is coherent.
    pub const COHERENT: Self = Self(None);

    /// Maintenance through `ops` (which may itself say it is coherent).
    pub const fn new(ops: &'static dyn CacheMaintenance) -> Self {
        Self(Some(ops))
    }

    /// Cleans `[pa, pa + len)` and waits for it, if the SMMU needs it.
    pub(crate) fn clean_now(&self, pa: PhysAddr, len: u64) {
        if !self.is_coherent() {
            self.clean(pa, len);
            self.complete();
        }
    }

    /// Invalidates `[pa, pa + len)` and waits for it, if the SMMU needs it.
    pub(crate) fn invalidate_now(&self, pa: PhysAddr, len: u64) {
        if !self.is_coherent() {
            self.invalidate(pa, len);
            self.complete();
        }
    }
}

impl CacheMaintenance for SmmuCache {
    #[inline]
    fn is_coherent(&self) -> bool {
        self.0.is_none_or(|c| c.is_coherent())
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        if let Some(c) = self.0 {
            c.clean(pa, len);
        }
    }
    fn invalidate(&self, pa: PhysAddr, len: u64) {
        if let Some(c) = self.0 {
            c.invalidate(pa, len);
        }
    }
    fn complete(&self) {
        if let Some(c) = self.0 {
            c.complete();
        }
    }
}
