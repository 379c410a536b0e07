//! Transports.
//!
//! The driver runs over any [`virtio_drivers::transport::Transport`]:
//!
//! - virtio over PCI: [`pci::VirtioPciTransport`], ours (see its docs for
//!   why not `virtio_drivers::transport::pci::PciTransport`);
//! - virtio-mmio: `virtio_drivers::transport::mmio::MmioTransport` as it is
//!   (all its registers are 32 bits wide; this driver never calls its
//!   `queue_unset`, whose wait for the device is unbounded).
//!
//! Register blocks are [`iova_core::hw`]'s, re-exported here: [`Mmio`] (what
//! [`pci::VirtioPciTransport`] accesses its BARs through; the fake device's
//! BAR implements it too) and [`MmioRegion`] (a block mapped at an address).

pub mod pci;

pub use iova_core::hw::{Mmio, MmioError, MmioRegion};
