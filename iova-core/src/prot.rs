//! Access permissions and memory attributes of a mapping.

bitflags::bitflags! {
    /// What a device may do through a mapping, and how the memory behind it behaves.
    ///
    /// A mapping needs at least one of [`Prot::READ`] and [`Prot::WRITE`]. Formats
    /// that cannot express a flag ignore it (documented on each format).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Prot: u8 {
        /// The device may read (DMA to the device, `DMA_TO_DEVICE`).
        const READ = 1 << 0;
        /// The device may write (DMA from the device, `DMA_FROM_DEVICE`).
        const WRITE = 1 << 1;
        /// Device memory (peer-to-peer MMIO): uncached, no speculation, no merging.
        const MMIO = 1 << 2;
        /// Privileged accesses only (where the IOMMU distinguishes them).
        const PRIV = 1 << 3;
        /// Normal cacheable memory that the device accesses coherently.
        const CACHE = 1 << 4;
        /// The device may not fetch instructions through the mapping.
        const NOEXEC = 1 << 5;
    }
}

impl Prot {
    /// Read and write: `DMA_BIDIRECTIONAL`.
    pub const RW: Prot = Prot::READ.union(Prot::WRITE);

    /// Whether the mapping grants any access at all.
    pub const fn grants_access(self) -> bool {
        self.intersects(Prot::RW)
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Prot {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "Prot({=u8:#x})", self.bits())
    }
}
