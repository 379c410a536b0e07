//! What the driver did, for users and tests: descriptors by type, waits,
//! register-based invalidations, write-buffer flushes, faults read.

use iova_core::hw::Counter;

use crate::descriptor::{self, Descriptor};

/// Live counters of one unit (iova-core's relaxed [`Counter`]s; read with
/// [`snapshot`](Self::snapshot)).
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) context: Counter,
    pub(crate) iotlb_global: Counter,
    pub(crate) iotlb_domain: Counter,
    pub(crate) iotlb_page: Counter,
    pub(crate) wait: Counter,
    pub(crate) pasid_cache: Counter,
    pub(crate) pasid_iotlb: Counter,
    pub(crate) iec: Counter,
    pub(crate) iec_global: Counter,
    pub(crate) other: Counter,
    pub(crate) waits: Counter,
    pub(crate) register_invalidations: Counter,
    pub(crate) write_buffer_flushes: Counter,
    pub(crate) faults: Counter,
    pub(crate) queue_errors: Counter,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Context-cache invalidations (queued or register-based).
    pub context: u64,
    /// Global IOTLB invalidations.
    pub iotlb_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub iotlb_page: u64,
    /// Wait descriptors written.
    pub wait_descriptors: u64,
    /// PASID-cache invalidations (scalable mode).
    pub pasid_cache: u64,
    /// PASID-based IOTLB invalidations (first-level translation).
    pub pasid_iotlb: u64,
    /// Interrupt entry cache invalidations (every granularity; the global
    /// ones are counted in [`iec_global`](Self::iec_global) too).
    pub iec: u64,
    /// Global interrupt entry cache invalidations.
    pub iec_global: u64,
    /// Descriptors of other types.
    pub other: u64,
    /// Completion waits (one per queued batch).
    pub waits: u64,
    /// Invalidations done through the registers (no queue).
    pub register_invalidations: u64,
    /// Write-buffer flushes (CAP.RWBF).
    pub write_buffer_flushes: u64,
    /// Fault records read and cleared.
    pub faults: u64,
    /// Invalidation queue errors (FSTS.IQE) seen.
    pub queue_errors: u64,
}

impl CounterSnapshot {
    /// IOTLB invalidations of every granularity (PASID-based included).
    pub fn iotlb(&self) -> u64 {
        self.iotlb_global + self.iotlb_domain + self.iotlb_page + self.pasid_iotlb
    }

    /// Every counter minus `earlier`'s (what happened in between).
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            context: self.context - earlier.context,
            iotlb_global: self.iotlb_global - earlier.iotlb_global,
            iotlb_domain: self.iotlb_domain - earlier.iotlb_domain,
            iotlb_page: self.iotlb_page - earlier.iotlb_page,
            wait_descriptors: self.wait_descriptors - earlier.wait_descriptors,
            pasid_cache: self.pasid_cache - earlier.pasid_cache,
            pasid_iotlb: self.pasid_iotlb - earlier.pasid_iotlb,
            iec: self.iec - earlier.iec,
            iec_global: self.iec_global - earlier.iec_global,
            other: self.other - earlier.other,
            waits: self.waits - earlier.waits,
            register_invalidations: self.register_invalidations - earlier.register_invalidations,
            write_buffer_flushes: self.write_buffer_flushes - earlier.write_buffer_flushes,
            faults: self.faults - earlier.faults,
            queue_errors: self.queue_errors - earlier.queue_errors,
        }
    }
}

impl Counters {
    pub(crate) fn count_descriptor(&self, d: &Descriptor) {
        let c = match d.kind() {
            descriptor::TYPE_CONTEXT => &self.context,
            descriptor::TYPE_IOTLB => match (d.lo >> 4) & 3 {
                1 => &self.iotlb_global,
                2 => &self.iotlb_domain,
                _ => &self.iotlb_page,
            },
            descriptor::TYPE_WAIT => &self.wait,
            descriptor::TYPE_PASID_CACHE => &self.pasid_cache,
            descriptor::TYPE_PASID_IOTLB => &self.pasid_iotlb,
            descriptor::TYPE_IEC => {
                if d.lo & descriptor::IEC_INDEX == 0 {
                    self.iec_global.incr();
                }
                &self.iec
            }
            _ => &self.other,
        };
        c.incr();
    }

    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = Counter::get;
        CounterSnapshot {
            context: r(&self.context),
            iotlb_global: r(&self.iotlb_global),
            iotlb_domain: r(&self.iotlb_domain),
            iotlb_page: r(&self.iotlb_page),
            wait_descriptors: r(&self.wait),
            pasid_cache: r(&self.pasid_cache),
            pasid_iotlb: r(&self.pasid_iotlb),
            iec: r(&self.iec),
            iec_global: r(&self.iec_global),
            other: r(&self.other),
            waits: r(&self.waits),
            register_invalidations: r(&self.register_invalidations),
            write_buffer_flushes: r(&self.write_buffer_flushes),
            faults: r(&self.faults),
            queue_errors: r(&self.queue_errors),
        }
    }
}
