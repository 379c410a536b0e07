//! Feature bits: the device-specific ones (0-23) and the transport ones this
//! driver cares about.

bitflags::bitflags! {
    /// Feature bits of a virtio-iommu device.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// `input_range` in the config is valid.
        const INPUT_RANGE = 1 << 0;
        /// `domain_range` in the config is valid.
        const DOMAIN_RANGE = 1 << 1;
        /// MAP and UNMAP requests are supported.
        const MAP_UNMAP = 1 << 2;
        /// Unattached endpoints bypass translation while this is negotiated.
        /// Accepted only when [`DriverConfig::bypass_unattached`] asks for it
        /// and `BYPASS_CONFIG` is not offered.
        ///
        /// [`DriverConfig::bypass_unattached`]: crate::DriverConfig::bypass_unattached
        const BYPASS = 1 << 3;
        /// PROBE requests are supported; `probe_size` is valid.
        const PROBE = 1 << 4;
        /// The `MAP_F_MMIO` flag is supported.
        const MMIO = 1 << 5;
        /// The driver may write `bypass` and use bypass domains.
        const BYPASS_CONFIG = 1 << 6;
        /// Indirect descriptors (transport).
        const RING_INDIRECT_DESC = 1 << 28;
        /// `used_event` / `avail_event` (transport).
        const RING_EVENT_IDX = 1 << 29;
        /// A virtio 1.x (non-legacy) device (transport).
        const VERSION_1 = 1 << 32;
        /// The device is behind an IOMMU (transport). Never accepted by this
        /// driver: a virtio-iommu's own rings are not translated.
        const ACCESS_PLATFORM = 1 << 33;
        /// Per-queue reset (transport).
        const RING_RESET = 1 << 40;
    }
}

impl Features {
    /// What this driver accepts when offered. `VERSION_1` and `MAP_UNMAP` are
    /// required; the others are used when present, but `BYPASS` only as its
    /// own documentation says (default deny). Indirect descriptors and
    /// event-index suppression are not needed (requests are two descriptors,
    /// the driver polls).
    pub const SUPPORTED: Features = Features::VERSION_1
        .union(Features::INPUT_RANGE)
        .union(Features::DOMAIN_RANGE)
        .union(Features::MAP_UNMAP)
        .union(Features::BYPASS)
        .union(Features::PROBE)
        .union(Features::MMIO)
        .union(Features::BYPASS_CONFIG);

    /// What the driver cannot work without.
    pub const REQUIRED: Features = Features::VERSION_1.union(Features::MAP_UNMAP);
}
