//! link + sync over the fake virtio-iommu: requests and notifications per
//! batch, and time per batch, for 1, 64 and 4096 pages, linked page by page
//! to scattered or to contiguous memory (one MAP per link either way: each
//! link must stay unlinkable on its own), or as one link of contiguous memory
//! (one MAP).
//!
//! `cargo bench -p iommu-virtio --features fakes --bench batch`
//!
//! The time includes the fake device's thread handling every request (a
//! mutex, a condition variable and the ring walk), so it measures the
//! driver's batching, not a real device's speed.

use std::time::{Duration, Instant};

use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal};
use iommu_virtio::{DriverConfig, VirtioDomain, VirtioIommu};
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DmaMapper, Iova, IovaAllocator, IovaRange, PhysAddr, Prot};

const G: u64 = 0x1000;
const EP: u32 = 0x10;

fn main() {
    println!("Request queue of 256 entries (QEMU's maximum), batches of 128 requests:\n");
    {
        let (_device, transport) = FakeIommu::new(FakeConfig::default());
        let iommu: Box<VirtioIommu<HostHal, FakeTransport, 256>> =
            Box::new(VirtioIommu::new(transport, DriverConfig::default()).unwrap());
        let domain: Box<VirtioDomain<'_, _, _, 256, 4096>> =
            Box::new(VirtioDomain::new(&*iommu, 1).unwrap());
        table(&iommu, &*domain);
    }
    println!(
        "\nRequest queue of 8192 entries (a device that allows it), batches of 4096 requests:\n"
    );
    {
        let (_device, transport) = FakeIommu::new(FakeConfig {
            max_queue: 8192,
            ..Default::default()
        });
        let iommu: Box<VirtioIommu<HostHal, FakeTransport, 8192>> =
            Box::new(VirtioIommu::new(transport, DriverConfig::default()).unwrap());
        let domain: Box<VirtioDomain<'_, _, _, 8192, 4096, 4096>> =
            Box::new(VirtioDomain::new(&*iommu, 1).unwrap());
        table(&iommu, &*domain);
    }
}

fn table<const Q: usize, const M: usize, const P: usize>(
    iommu: &VirtioIommu<HostHal, FakeTransport, Q>,
    domain: &VirtioDomain<'_, HostHal, FakeTransport, Q, M, P>,
) {
    domain.attach(EP).unwrap();
    let window = IovaRange::new(Iova(0x40_0000_0000), 1 << 30).unwrap();
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, G), 1024, 1).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(domain, &iovas, &cpu).unwrap();

    println!(
        "| pieces | layout | MAP requests / batch | notifications / batch | link + sync | per piece | UNMAP / destroy | notifications / destroy |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for pieces in [1u64, 64, 4096] {
        for layout in [Layout::Scattered, Layout::Contiguous, Layout::OneLink] {
            let rounds = if pieces == 4096 { 20 } else { 200 };
            let mut elapsed = Duration::ZERO;
            let (mut maps, mut notes, mut unmaps, mut unotes) = (0, 0, 0, 0);
            for _ in 0..rounds {
                let mut state = mapper.try_alloc(pieces * G, G).unwrap();
                let before = iommu.counters();
                let t0 = Instant::now();
                match layout {
                    Layout::OneLink => state
                        .link(0, PhysAddr(0x4000_0000), pieces * G, Prot::RW)
                        .unwrap(),
                    _ => {
                        for i in 0..pieces {
                            let stride = if layout == Layout::Scattered { 3 } else { 1 };
                            let pa = 0x4000_0000 + i * stride * G;
                            state.link(i * G, PhysAddr(pa), G, Prot::RW).unwrap();
                        }
                    }
                }
                state.sync().unwrap();
                elapsed += t0.elapsed();
                let c = iommu.counters().since(&before);
                maps += c.map;
                notes += c.notifications;
                let before = iommu.counters();
                state.destroy().unwrap();
                let c = iommu.counters().since(&before);
                unmaps += c.unmap;
                unotes += c.notifications;
            }
            let per_batch = elapsed / rounds as u32;
            println!(
                "| {pieces} | {} | {} | {} | {:.1} us | {:.0} ns | {} | {} |",
                match layout {
                    Layout::Scattered => "scattered",
                    Layout::Contiguous => "contiguous",
                    Layout::OneLink => "one link",
                },
                maps / rounds,
                notes / rounds,
                per_batch.as_secs_f64() * 1e6,
                per_batch.as_secs_f64() * 1e9 / pieces as f64,
                unmaps / rounds,
                unotes / rounds,
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A link per page, every third frame.
    Scattered,
    /// A link per page, consecutive frames.
    Contiguous,
    /// One link of consecutive frames.
    OneLink,
}
