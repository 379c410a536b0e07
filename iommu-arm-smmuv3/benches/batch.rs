//! link + sync and unlink + sync of 1, 64 and 4096 scattered pages through
//! the SMMUv3 driver against the fake SMMU, with and without range
//! invalidation: time per batch and commands issued per batch.
//!
//! `cargo bench -p iommu-arm-smmuv3 --features fakes --bench batch`

use std::sync::Arc;
use std::time::{Duration, Instant};

use iommu_arm_smmuv3::fake::{FakeSmmu, QEMU_10_VIRT};
use iommu_arm_smmuv3::{CommandCounts, Config, Smmu};
use iova_core::fakes::FakeFrames;
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
use iova_core::{DmaMapper, FrameAllocator, Iova, IovaRange, PhysAddr, Prot};

const K4: u64 = 0x1000;

fn delta(a: CommandCounts, b: CommandCounts) -> (u64, u64, u64) {
    let tlbi = (b.tlbi_nh_va + b.tlbi_nh_asid) - (a.tlbi_nh_va + a.tlbi_nh_asid);
    (b.total - a.total, tlbi, b.sync - a.sync)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("| RIL | pages | link+sync | cmds (TLBI, SYNC) | unlink+sync | cmds (TLBI, SYNC) |");
    println!("|---|---|---|---|---|---|");
    for ril in [true, false] {
        for pages in [1u64, 64, 4096] {
            let mem = Arc::new(FakeFrames::new());
            let mut id = QEMU_10_VIRT;
            if !ril {
                id.idr[3] &= !(1 << 10);
            }
            let fake = FakeSmmu::new(Arc::clone(&mem), id);
            let smmu = Smmu::new(&fake, Arc::clone(&mem), Config::default()).unwrap();
            let d = smmu.s1_domain(Arc::clone(&mem), 48).unwrap();
            smmu.attach_s1(8, &d).unwrap();
            let aperture = IovaRange::new(Iova(0x10_0000_0000), 1 << 36).unwrap();
            let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 64, 1)
                .unwrap();
            let cpu = || 0;
            let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
            // Scattered: every other frame of a block, in reverse order.
            let block = mem.alloc_zeroed((2 * pages * K4) as usize).unwrap();
            let piece = |p: u64| PhysAddr(block.0 + 2 * (pages - 1 - p) * K4);
            let iters = if pages == 4096 { 9 } else { 101 };
            let (mut tl, mut tu) = (Vec::new(), Vec::new());
            let (mut cl, mut cu) = ((0, 0, 0), (0, 0, 0));
            for _ in 0..iters {
                let mut st = mapper.try_alloc(pages * K4, K4).unwrap();
                let c0 = smmu.counters().commands;
                let t0 = Instant::now();
                for p in 0..pages {
                    st.link(p * K4, piece(p), K4, Prot::RW).unwrap();
                }
                st.sync().unwrap();
                tl.push(t0.elapsed());
                let c1 = smmu.counters().commands;
                // The device touches every page, so each has a TLB entry to invalidate.
                for p in 0..pages {
                    fake.dma_write(8, st.dma_addr(p * K4).unwrap(), &[1])
                        .unwrap();
                }
                let c2 = smmu.counters().commands;
                let t1 = Instant::now();
                st.unlink(0, pages * K4).unwrap();
                st.sync().unwrap();
                tu.push(t1.elapsed());
                let c3 = smmu.counters().commands;
                cl = delta(c0, c1);
                cu = delta(c2, c3);
                st.free().unwrap();
            }
            println!(
                "| {} | {pages} | {:.1} us | {} ({}, {}) | {:.1} us | {} ({}, {}) |",
                if ril { "yes" } else { "no" },
                median(tl).as_secs_f64() * 1e6,
                cl.0,
                cl.1,
                cl.2,
                median(tu).as_secs_f64() * 1e6,
                cu.0,
                cu.1,
                cu.2
            );
        }
    }
}
