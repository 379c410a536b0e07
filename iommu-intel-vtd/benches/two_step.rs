//! Link + sync and unlink + sync over the fake VT-d unit (QEMU's CAP/ECAP,
//! queued invalidation), for 1, 64 and 4096 pages: time per batch and the
//! descriptors and waits each batch costs. Run with
//! `cargo bench -p iommu-intel-vtd --features fakes --bench two_step`;
//! figures are recorded in `iommu-intel-vtd/BENCHMARKS.md`.
//!
//! The time includes the fake's processing of the queue (it runs on the
//! IQT write, as QEMU's model does), so it is an upper bound of the driver's
//! own cost; the descriptor counts are exact.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use iommu_intel_vtd::fake::{CAP_FL1GP, FakeVtd, QEMU_CAP_48, QEMU_ECAP, QEMU_ECAP_FLTS};
use iommu_intel_vtd::{Bdf, CounterSnapshot, UnitConfig, VtdUnit};
use iova_core::fakes::FakeFrames;
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
use iova_core::{DmaMapper, IommuDomain, Iova, IovaRange, PhysAddr, Prot};

const PAGE: u64 = 0x1000;

struct Row {
    pages: u64,
    spread: &'static str,
    link_ns: f64,
    link: CounterSnapshot,
    unlink_ns: f64,
    unlink: CounterSnapshot,
}

type Unit<'f> = VtdUnit<&'f FakeVtd, Arc<FakeFrames>>;

/// `fl`: scalable mode with a first-level (x86-64) domain on RID_PASID;
/// otherwise legacy mode with a 4-level second-level domain.
fn run(cap: u64, fl: bool, pages: u64, gaps: bool, rounds: u32) -> Row {
    let frames = Arc::new(FakeFrames::new());
    // The fake reads memory directly: as a coherent walker (ECAP.C).
    let ecap = if fl { QEMU_ECAP_FLTS } else { QEMU_ECAP } | 1;
    let hw = FakeVtd::new(Arc::clone(&frames), cap, ecap);
    let config = UnitConfig {
        scalable: fl,
        ..UnitConfig::default()
    };
    let unit = VtdUnit::new(&hw, Arc::clone(&frames), config).unwrap();
    let dev = Bdf::new(0, 1, 0);
    if fl {
        let domain = unit.first_level_domain(Arc::clone(&frames), 0).unwrap();
        unit.attach(dev, &domain).unwrap();
        measure(&unit, &domain, pages, gaps, rounds)
    } else {
        let domain = unit.second_level_domain(Arc::clone(&frames), 4).unwrap();
        unit.attach(dev, &domain).unwrap();
        measure(&unit, &domain, pages, gaps, rounds)
    }
}

fn measure<D: IommuDomain>(
    unit: &Unit<'_>,
    domain: &D,
    pages: u64,
    gaps: bool,
    rounds: u32,
) -> Row {
    unit.enable_translation().unwrap();
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 36).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, PAGE), 256, 1).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(domain, &iovas, &cpu).unwrap();
    let (mut link_ns, mut unlink_ns) = (0u128, 0u128);
    let (mut link, mut unlink) = (CounterSnapshot::default(), CounterSnapshot::default());
    // With gaps, every other page is linked: the unlink then has `pages`
    // separate ranges (the gather merges beyond 8, over-invalidating).
    let stride = if gaps { 2 } else { 1 };
    for _ in 0..rounds {
        let mut state = mapper.try_alloc(pages * stride * PAGE, PAGE).unwrap();
        let c0 = unit.counters().snapshot();
        let t0 = Instant::now();
        for i in 0..pages {
            // Scattered physical pages.
            let pa = 0x10_0000_0000 + (i * 7919 % 65536) * PAGE;
            state
                .link(i * stride * PAGE, PhysAddr(pa), PAGE, Prot::RW)
                .unwrap();
        }
        state.sync().unwrap();
        link_ns += t0.elapsed().as_nanos();
        let c1 = unit.counters().snapshot();
        let t1 = Instant::now();
        if gaps {
            for i in 0..pages {
                state.unlink(i * stride * PAGE, PAGE).unwrap();
            }
        } else {
            // One call for the whole range (as a driver tearing down a
            // request does); per-page calls cost the core's link search.
            state.unlink(0, pages * PAGE).unwrap();
        }
        state.sync().unwrap();
        unlink_ns += t1.elapsed().as_nanos();
        let c2 = unit.counters().snapshot();
        link = c1.since(&c0);
        unlink = c2.since(&c1);
        black_box(&state);
        state.free().unwrap();
    }
    Row {
        pages,
        spread: if gaps {
            "every other page"
        } else {
            "contiguous"
        },
        link_ns: link_ns as f64 / f64::from(rounds),
        link,
        unlink_ns: unlink_ns as f64 / f64::from(rounds),
        unlink,
    }
}

fn describe(c: &CounterSnapshot) -> String {
    if c.pasid_iotlb != 0 {
        return format!("{} PASID-based, {} wait", c.pasid_iotlb, c.waits);
    }
    format!(
        "{} PSI, {} DSI, {} wait",
        c.iotlb_page, c.iotlb_domain, c.waits
    )
}

fn main() {
    // `cargo test --benches` runs this once with `--bench` absent: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = |pages: u64| {
        if quick {
            1
        } else {
            (200_000 / pages).clamp(20, 2000) as u32
        }
    };
    println!(
        "| CAP | pages linked | IOVA layout | link + sync | descriptors | unlink + sync | descriptors |"
    );
    println!("|---|---:|---|---:|---|---:|---|");
    for (name, cap, fl) in [
        ("QEMU (CM=0)", QEMU_CAP_48, false),
        ("caching mode", QEMU_CAP_48 | 1 << 7, false),
        ("scalable, first level", QEMU_CAP_48 | CAP_FL1GP, true),
    ] {
        for (pages, gaps) in [(1, false), (64, false), (4096, false), (64, true)] {
            let r = run(cap, fl, pages, gaps, rounds(pages));
            println!(
                "| {name} | {} | {} | {:.1} µs ({:.0} ns/page) | {} | {:.1} µs ({:.0} ns/page) | {} |",
                r.pages,
                r.spread,
                r.link_ns / 1e3,
                r.link_ns / r.pages as f64,
                describe(&r.link),
                r.unlink_ns / 1e3,
                r.unlink_ns / r.pages as f64,
                describe(&r.unlink),
            );
        }
    }
}
