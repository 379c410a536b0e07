//! `IommuHal` through `virtio_drivers::Hal`, with a `'static` table as a
//! platform sets one up, and `AccessPlatform` over a recording transport.

use std::ptr::NonNull;
use std::sync::OnceLock;

use iova_core::fakes::{Access, FakeDomain, FakeFrames, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DmaMapper, Iova, IovaAllocator, IovaRange};
use iova_virtio_hal::transport::ACCESS_PLATFORM;
use iova_virtio_hal::{
    AccessPlatform, DmaShares, HalContext, IdentityMapped, IommuHal, ShareError,
};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

type Domain = FakeDomain<LpaeS1>;

struct Platform {
    domain: &'static Domain,
    dma: &'static FakeFrames,
    shares: DmaShares<'static, Domain, 4>,
}

static PLATFORM: OnceLock<Platform> = OnceLock::new();

fn platform() -> &'static Platform {
    PLATFORM.get_or_init(|| {
        let (domain, _tables) = fake_domain(LpaeS1::va48());
        let domain: &'static Domain = Box::leak(Box::new(domain));
        let window = IovaRange::new(Iova(0x1_0000_0000), 1 << 30).unwrap();
        let iovas =
            IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, 0x1000), 64, 1).unwrap();
        let iovas: &'static IovaAllocator<'static> = Box::leak(Box::new(iovas));
        static CPU: fn() -> usize = || 0;
        let mapper = DmaMapper::new(domain, iovas, &CPU).unwrap();
        let dma: &'static FakeFrames = Box::leak(Box::new(FakeFrames::with_capacity(1 << 20)));
        let shares = DmaShares::new(mapper, dma, &IdentityMapped).unwrap();
        Platform {
            domain,
            dma,
            shares,
        }
    })
}

struct Ctx;

impl HalContext<4> for Ctx {
    type Domain = Domain;
    fn shares() -> &'static DmaShares<'static, Domain, 4> {
        &platform().shares
    }
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap()
    }
}

type H = IommuHal<Ctx, 4>;

// One test: the table is a process-wide static shared by every call.
#[test]
fn hal_maps_while_shared_and_reports_failures_in_band() {
    let p = platform();
    // dma_alloc / dma_dealloc.
    let (dev, cpu) = H::dma_alloc(1, BufferDirection::Both);
    assert_ne!(dev, 0);
    assert!(p.domain.device_access(Iova(dev), Access::Write).is_ok());
    // SAFETY: what dma_alloc returned, unused afterwards.
    assert_eq!(unsafe { H::dma_dealloc(dev, cpu, 1) }, 0);
    assert!(p.domain.device_access(Iova(dev), Access::Read).is_err());
    // SAFETY: not ours: refused with -1 (virtio-drivers asserts on it).
    assert_eq!(unsafe { H::dma_dealloc(dev, cpu, 1) }, -1);
    assert_eq!(p.shares.take_error(), Some(ShareError::NotShared));

    // share / unshare of a request-header-sized buffer: bounced.
    let mut header = [7u8; 16];
    let buf = NonNull::from(&mut header[..]);
    // SAFETY: `header` outlives the share and is not touched meanwhile.
    let dev = unsafe { H::share(buf, BufferDirection::DeviceToDriver) };
    let pa = p.domain.device_access(Iova(dev), Access::Write).unwrap();
    assert_ne!(pa.0, header.as_ptr() as u64, "bounced, not in place");
    // SAFETY: as shared.
    unsafe { H::unshare(dev, buf, BufferDirection::DeviceToDriver) };
    assert!(p.domain.device_access(Iova(dev), Access::Write).is_err());
    assert_eq!(p.shares.take_error(), None);

    // A failing share hands out the poison address, which faults.
    p.dma.fail_after(0);
    // SAFETY: as above.
    let dev = unsafe { H::share(buf, BufferDirection::Both) };
    assert_eq!(dev, p.shares.poison().0);
    assert!(p.domain.device_access(Iova(dev), Access::Read).is_err());
    assert_eq!(p.shares.take_error(), Some(ShareError::NoMemory));
    // A failing dma_alloc returns 0, which virtio-drivers reports as DmaError.
    assert_eq!(H::dma_alloc(1, BufferDirection::Both).0, 0);
    p.dma.unlimited();
    assert_eq!(p.shares.live(), 0);
}

/// A transport that records the driver features written.
struct Recording {
    offered: u64,
    written: Option<u64>,
}

impl Transport for Recording {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        self.offered
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.written = Some(driver_features);
    }
    fn max_queue_size(&mut self, _: u16) -> u32 {
        0
    }
    fn notify(&mut self, _: u16) {}
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::empty()
    }
    fn set_status(&mut self, _: DeviceStatus) {}
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _: u16, _: u32, _: PhysAddr, _: PhysAddr, _: PhysAddr) {}
    fn queue_unset(&mut self, _: u16) {}
    fn queue_used(&mut self, _: u16) -> bool {
        false
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        _: usize,
    ) -> virtio_drivers::Result<T> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
    fn write_config_space<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        _: usize,
        _: T,
    ) -> virtio_drivers::Result<()> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
}

bitflags::bitflags! {
    #[derive(Debug, Clone, Copy)]
    struct DriverFeatures: u64 {
        const VERSION_1 = 1 << 32;
    }
}

#[test]
fn access_platform_is_accepted_when_offered_and_a_bypassing_device_refused() {
    let offered = (1 << 32) | ACCESS_PLATFORM | 1;
    let mut t = AccessPlatform::new(Recording {
        offered,
        written: None,
    })
    .map_err(|(e, _)| e)
    .unwrap();
    // What a virtio-drivers device driver does: negotiate only what it knows.
    let negotiated = t.begin_init(DriverFeatures::VERSION_1);
    assert_eq!(negotiated.bits(), 1 << 32);
    assert_eq!(t.inner().written, Some((1 << 32) | ACCESS_PLATFORM));

    let (e, back) = AccessPlatform::new(Recording {
        offered: 1 << 32,
        written: None,
    })
    .err()
    .unwrap();
    assert_eq!(e.offered, 1 << 32);
    assert_eq!(
        back.written, None,
        "nothing negotiated with a device that would bypass the IOMMU"
    );
}
