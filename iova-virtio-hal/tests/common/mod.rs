//! The rig shared by the `DmaShares` tests: iova-core's fake IOMMU, whose
//! walker reads the tables it is given and keeps its own IOTLB, so a device
//! access here sees what a device would (including stale translations after
//! a failed flush), and page-aligned host memory for driver buffers.

// Each test binary uses a part of the rig.
#![allow(dead_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use iova_core::fakes::{Access, FAKE_PHYS_BASE, FakeDomain, FakeFrames, Fault, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DmaMapper, FlushQueue, Iova, IovaAllocator, IovaRange, PhysAddr};
use iova_virtio_hal::{CpuMemory, DmaShares, PoolConfig, ShareError};

pub const DMA_BYTES: usize = 4 << 20;
pub const PAGE: usize = 0x1000;

pub type Domain = FakeDomain<LpaeS1>;

pub struct Rig<'a> {
    pub domain: &'a Domain,
    pub tables: &'a FakeFrames,
    pub dma: &'a FakeFrames,
    pub iovas: &'a IovaAllocator<'a>,
}

impl Rig<'_> {
    /// Where the device's access at `iova` lands in host memory.
    pub fn target(&self, iova: u64, access: Access) -> Result<*mut u8, Fault> {
        let pa = self.domain.device_access(Iova(iova), access)?.0;
        let in_dma = (FAKE_PHYS_BASE..FAKE_PHYS_BASE + DMA_BYTES as u64).contains(&pa);
        Ok(if in_dma {
            use iova_core::FrameAllocator;
            self.dma.phys_to_virt(PhysAddr(pa))
        } else {
            host_ptr(pa)
        })
    }

    /// The device's accesses to `[iova, iova + len)`, one translation per
    /// page (a translation covers a page; per byte was slow under Miri): the
    /// host pointer and length of each page's part, in order, up to and
    /// including the first fault.
    fn pages(&self, iova: u64, len: usize, access: Access) -> Vec<Result<(*mut u8, usize), Fault>> {
        let mut out = Vec::new();
        let (mut at, end) = (iova, iova + len as u64);
        while at < end {
            let n = ((PAGE as u64 - at % PAGE as u64).min(end - at)) as usize;
            let t = self.target(at, access).map(|p| (p, n));
            let fault = t.is_err();
            out.push(t);
            if fault {
                break;
            }
            at += n as u64;
        }
        out
    }

    pub fn dev_write(&self, iova: u64, bytes: &[u8]) -> Result<(), Fault> {
        let mut done = 0;
        for page in self.pages(iova, bytes.len(), Access::Write) {
            let (p, n) = page?;
            // SAFETY: the fake only translates to memory the test owns; the
            // `n` bytes lie in one page of it.
            unsafe { p.copy_from_nonoverlapping(bytes[done..].as_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    pub fn dev_read(&self, iova: u64, len: usize) -> Result<Vec<u8>, Fault> {
        let mut out = Vec::with_capacity(len);
        for page in self.pages(iova, len, Access::Read) {
            let (p, n) = page?;
            // SAFETY: as above.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        }
        Ok(out)
    }

    pub fn leaves(&self) -> usize {
        self.domain.leaves().len()
    }
}

pub fn with_rig<const N: usize>(
    memory: &dyn CpuMemory,
    f: impl FnOnce(&Rig<'_>, &DmaShares<'_, Domain, N>),
) {
    run(
        memory,
        None,
        |m, dma, memory| DmaShares::new(m, dma, memory),
        f,
    )
}

/// As [`with_rig`], with a bounce pool made with `config`.
pub fn with_pool_rig<const N: usize>(
    memory: &dyn CpuMemory,
    config: PoolConfig,
    f: impl FnOnce(&Rig<'_>, &DmaShares<'_, Domain, N>),
) {
    run(
        memory,
        None,
        |m, dma, memory| DmaShares::with_pool(m, dma, memory, config),
        f,
    )
}

/// A fresh fake domain, DMA memory and IOVA window; `make` builds the table
/// (over a mapper that defers invalidation to `queue`, if given), `f` runs
/// against it. Afterwards (the table dropped): no DMA frame is live, none was
/// freed wrongly, nothing is mapped.
pub fn run<const N: usize>(
    memory: &dyn CpuMemory,
    queue: Option<&FlushQueue<'_>>,
    make: impl for<'x> FnOnce(
        DmaMapper<'x, Domain>,
        &'x FakeFrames,
        &'x (dyn CpuMemory + 'x),
    ) -> Result<DmaShares<'x, Domain, N>, ShareError>,
    f: impl FnOnce(&Rig<'_>, &DmaShares<'_, Domain, N>),
) {
    let (domain, tables) = fake_domain(LpaeS1::va48());
    let dma = FakeFrames::with_capacity(DMA_BYTES);
    let window = IovaRange::new(Iova(0x1_0000_0000), 1 << 32).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, 0x1000), 64, 1).unwrap();
    let cpu = || 0usize;
    let mut mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
    if let Some(q) = queue {
        mapper = mapper.with_flush_queue(q);
    }
    let rig = Rig {
        domain: &domain,
        tables: &tables,
        dma: &dma,
        iovas: &iovas,
    };
    {
        let shares = make(mapper, &dma, memory).unwrap();
        f(&rig, &shares);
    }
    assert_eq!(dma.bad_frees(), 0);
    assert_eq!(dma.live(), 0, "the table's drop freed every frame");
    assert_eq!(rig.leaves(), 0, "the table's drop unmapped everything");
}

/// Page-aligned host memory, `pages` long, filled with `fill`.
pub struct HostPages {
    ptr: *mut u8,
    len: usize,
}

/// Live host regions, so that a physical (= host) address the device
/// reaches turns back into a pointer with the region's provenance (Miri runs
/// these tests with strict provenance: no integer-to-pointer casts).
static HOST: std::sync::Mutex<Vec<(usize, usize, SendPtr)>> = std::sync::Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: only used to rebuild pointers into regions the test owns.
unsafe impl Send for SendPtr {}

fn host_ptr(pa: u64) -> *mut u8 {
    let pa = pa as usize;
    let host = HOST.lock().unwrap();
    let &(addr, _, SendPtr(p)) = host
        .iter()
        .find(|&&(a, len, _)| (a..a + len).contains(&pa))
        .unwrap_or_else(|| panic!("the device reached {pa:#x}, which is no memory of the test"));
    p.wrapping_add(pa - addr)
}

impl HostPages {
    pub fn new(pages: usize, fill: u8) -> Self {
        let len = pages * PAGE;
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(Layout::from_size_align(len, PAGE).unwrap()) };
        assert!(!ptr.is_null());
        // SAFETY: just allocated, `len` bytes.
        unsafe { ptr.write_bytes(fill, len) };
        HOST.lock().unwrap().push((ptr as usize, len, SendPtr(ptr)));
        Self { ptr, len }
    }
    pub fn addr(&self, off: usize) -> u64 {
        self.ptr as u64 + off as u64
    }
    pub fn slice(&self, off: usize, len: usize) -> NonNull<[u8]> {
        assert!(off + len <= self.len);
        // SAFETY: in bounds.
        NonNull::slice_from_raw_parts(NonNull::new(unsafe { self.ptr.add(off) }).unwrap(), len)
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: allocated and initialised; nothing writes during the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn write(&self, off: usize, bytes: &[u8]) {
        // SAFETY: in bounds (slice checks).
        unsafe {
            self.slice(off, bytes.len())
                .cast::<u8>()
                .as_ptr()
                .copy_from(bytes.as_ptr(), bytes.len())
        };
    }
}

impl Drop for HostPages {
    fn drop(&mut self) {
        HOST.lock()
            .unwrap()
            .retain(|&(a, _, _)| a != self.ptr as usize);
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.len, PAGE).unwrap()) };
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}
