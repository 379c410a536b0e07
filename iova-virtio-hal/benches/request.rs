//! What a virtio-blk read costs in `DmaShares`, per policy: the four shares
//! and unshares of one request (indirect descriptor list, header, data,
//! status), `depth` requests in flight, over iova-core's fake domain.
//!
//! `cargo bench -p iova-virtio-hal --bench request` prints, per policy and
//! cell, the median nanoseconds per request over interleaved rounds (strict,
//! pool, deferred, strict, ...) and the spread (max / min). With
//! `-- once <strict|pool|deferred> <bytes> <depth> <requests>` it runs one
//! cell once and prints nothing, for an instruction profiler
//! (`valgrind --tool=callgrind`).
//!
//! The fake domain's flush is a hash-map update, not an IOTLB invalidation:
//! this measures the CPU work of the share table, pool, mapper and engine,
//! not the IOMMU's.

use std::alloc::{Layout, alloc_zeroed};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Instant;

use iova_core::fakes::{FakeDomain, FakeFrames, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DeferLimits, DmaMapper, FlushQueue, Iova, IovaAllocator, IovaRange};
use iova_virtio_hal::{DmaShares, IdentityMapped, PoolConfig};
use virtio_drivers::BufferDirection::{self, DeviceToDriver, DriverToDevice};

const PAGE: usize = 0x1000;
const MAX_DEPTH: usize = 16;
const MAX_BYTES: usize = 0x10000;
const ROUNDS: usize = 9;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Strict,
    Pool,
    Deferred,
}

impl Policy {
    const ALL: [Policy; 3] = [Policy::Strict, Policy::Pool, Policy::Deferred];

    fn name(self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::Pool => "pool",
            Policy::Deferred => "deferred",
        }
    }
}

/// One request's buffers, as virtio-drivers shares them: the indirect list
/// (3 descriptors), the request header and the status byte live in the
/// caller's structures, the data is a page-aligned buffer.
struct Request {
    small: *mut u8,
    data: *mut u8,
    shared: [(u64, NonNull<[u8]>, BufferDirection); 4],
}

fn leak_pages(bytes: usize) -> *mut u8 {
    // SAFETY: non-zero size; leaked for the program's life.
    let p = unsafe { alloc_zeroed(Layout::from_size_align(bytes, PAGE).unwrap()) };
    assert!(!p.is_null());
    p
}

impl Request {
    fn new() -> Self {
        Self {
            small: leak_pages(PAGE),
            data: leak_pages(MAX_BYTES),
            shared: [(0, NonNull::from(&mut [][..]), DriverToDevice); 4],
        }
    }

    fn parts(&self, size: usize) -> [(NonNull<[u8]>, BufferDirection); 4] {
        let part = |p: *mut u8, len| NonNull::slice_from_raw_parts(NonNull::new(p).unwrap(), len);
        [
            (part(self.small.wrapping_add(0x100), 48), DriverToDevice),
            (part(self.small.wrapping_add(0x10), 16), DriverToDevice),
            (part(self.data, size), DeviceToDriver),
            (part(self.small.wrapping_add(0x20), 1), DeviceToDriver),
        ]
    }
}

/// `requests` reads of `size` bytes with `depth` in flight through `shares`.
fn run(
    shares: &DmaShares<'_, FakeDomain<LpaeS1>>,
    reqs: &mut [Request],
    size: usize,
    depth: usize,
    requests: usize,
) {
    let mut done = 0;
    while done < requests {
        let n = depth.min(requests - done);
        for r in reqs[..n].iter_mut() {
            let parts = r.parts(size);
            for (k, (buf, dir)) in parts.into_iter().enumerate() {
                // SAFETY: the buffers are leaked memory nobody else touches.
                let dev = unsafe { shares.share(buf, dir) }.expect("share");
                r.shared[k] = (dev.0, buf, dir);
            }
        }
        for r in reqs[..n].iter_mut() {
            for &(dev, buf, dir) in black_box(&r.shared) {
                // SAFETY: as shared above.
                unsafe { shares.unshare(Iova(dev), buf, dir) }.expect("unshare");
            }
        }
        done += n;
    }
}

fn cell(policy: Policy, size: usize, depth: usize, requests: usize, reqs: &mut [Request]) -> f64 {
    let (domain, _tables) = fake_domain(LpaeS1::va48());
    let dma = FakeFrames::with_capacity(8 << 20);
    let window = IovaRange::new(Iova(0x1_0000_0000), 1 << 32).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, 0x1000), 256, 1).unwrap();
    let cpu = || 0usize;
    static CLOCK: fn() -> u64 = || 0;
    let queue = FlushQueue::with_capacity(DeferLimits::linux_like(1000), &CLOCK, 256);
    let mut mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
    if policy == Policy::Deferred {
        mapper = mapper.with_flush_queue(&queue);
    }
    let pool = PoolConfig {
        slots: 128,
        ..PoolConfig::DEFAULT
    };
    // As the QEMU benchmark's tables: deferred copies only buffers below a
    // page, and keeps the mappings of the rest for reuse.
    let shares: DmaShares<'_, _> = match policy {
        Policy::Strict => DmaShares::new(mapper, &dma, &IdentityMapped),
        Policy::Pool => DmaShares::with_pool(mapper, &dma, &IdentityMapped, pool),
        Policy::Deferred => {
            let pool = PoolConfig {
                threshold: 2048,
                ..pool
            };
            DmaShares::with_pool(mapper, &dma, &IdentityMapped, pool)
        }
    }
    .unwrap();
    // Warm up the tables and the allocator's caches; time the rest.
    run(&shares, reqs, size, depth, depth);
    let t = Instant::now();
    run(&shares, reqs, size, depth, requests);
    t.elapsed().as_nanos() as f64 / requests as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut reqs: Vec<Request> = (0..MAX_DEPTH).map(|_| Request::new()).collect();
    if args.first().map(String::as_str) == Some("once") {
        let policy = Policy::ALL
            .into_iter()
            .find(|p| p.name() == args[1])
            .expect("policy");
        let n = |i: usize| args[i].parse::<usize>().expect("number");
        cell(policy, n(2), n(3), n(4), &mut reqs);
        return;
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    println!("policy   size  depth  ns/request (median of {ROUNDS} interleaved rounds)  spread");
    for (size, depth) in [(4096, 1), (4096, 16), (65536, 1), (65536, 16)] {
        let mut ns: [Vec<f64>; 3] = Default::default();
        for _ in 0..ROUNDS {
            for (p, &policy) in Policy::ALL.iter().enumerate() {
                ns[p].push(cell(policy, size, depth, 4096, &mut reqs));
            }
        }
        for (p, policy) in Policy::ALL.iter().enumerate() {
            if filter.is_some_and(|f| !policy.name().contains(f.as_str())) {
                continue;
            }
            let v = &mut ns[p];
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{:8} {size:5} {depth:6} {:12.0} {:37.2}",
                policy.name(),
                v[ROUNDS / 2],
                v[ROUNDS - 1] / v[0]
            );
        }
    }
}
