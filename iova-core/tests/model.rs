//! Model-based property test of the two-step API on the fake IOMMU.
//!
//! Random sequences of `try_alloc`, `link`, `sync`, `unlink`, `destroy`,
//! `free`, drop, and the one-shot `map` / `map_sg` / `unmap` (a mix of valid
//! and invalid arguments, with injected flush failures and page-table memory
//! exhaustion) run over several live states on one fake domain, against a
//! plain model: per state, its links and the translations that were unlinked
//! but not yet flushed. After every step:
//!
//! - the result is the model's: an operation the model calls valid succeeds,
//!   one it calls invalid fails with one of the errors the model allows;
//! - failed operations change nothing (links, needs-sync, tables, IOTLB, IOVA);
//! - the tables hold exactly the model's leaves (same IOVA, PA, size and
//!   permissions: the largest page or block that fits);
//! - every device access translates as the model says: linked bytes to their
//!   PA with their permissions, everything else faults, except that a
//!   translation unlinked since the state's last sync may still be served
//!   (stale) from the IOTLB, and then only with its old PA;
//! - live states' IOVA ranges are disjoint, inside the aperture, and the IOVA
//!   allocator holds exactly the live (and deliberately leaked) ones;
//! - `sync`, `destroy` and `free` issue exactly one flush when there is work,
//!   none otherwise; `link` and `unlink` never flush;
//! - no page-table frame leaks or is freed twice: when no state holds pending
//!   work, the live frames are exactly the tables reachable from the root
//!   (plus the tables of a gather dropped with a state whose flush failed),
//!   and after the domain is dropped nothing else is left.
//!
//! Each format (LPAE stage 1, x86-64 4-level) runs 512 cases of up to 64
//! operations (2 under Miri; `PROPTEST_CASES` overrides the count); the test also fails if
//! the generator never reached an outcome the properties are about (each
//! error kind, 2 MiB blocks, stale translations before a sync, ...).
#![cfg(feature = "fakes")]

#[path = "model/harness.rs"]
mod harness;

use harness::{Coverage, G, M2, Op, PA_BASE, run_case};
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;
use iova_core::{Prot, PtFormat};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn prot_strategy() -> impl Strategy<Value = Prot> {
    prop_oneof![
        8 => prop::sample::select(vec![
            Prot::READ,
            Prot::WRITE,
            Prot::RW,
            Prot::RW | Prot::PRIV,
            Prot::READ | Prot::NOEXEC,
            Prot::RW | Prot::CACHE,
            Prot::READ | Prot::MMIO,
        ]),
        2 => (0u8..64).prop_map(Prot::from_bits_truncate),
    ]
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1u64..=0x1_0000,
        3 => (1u64..=64).prop_map(|p| p * G),
        3 => prop::sample::select(vec![M2, 2 * M2, M2 + G, 2 * M2 - G, 3 * M2 / 2]),
        3 => 1u64..=2 * M2,
        1 => Just(0u64),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let st = 0usize..8;
    prop_oneof![
        4 => (size_strategy(), prop_oneof![
            9 => prop::sample::select(vec![G, 0x1_0000, M2]),
            1 => prop::sample::select(vec![0, 1, 3, 0x3000]),
        ])
            .prop_map(|(size, align)| Op::Alloc { size, align }),
        10 => (
            st.clone(),
            (0u8..12, any::<u64>()),
            (0u8..10, any::<u64>()),
            (0u8..8, any::<u64>(), any::<u64>()),
            prot_strategy(),
            prop::option::weighted(0.15, 0u8..3),
        )
            .prop_map(|(st, off, len, pa, prot, oom)| Op::Link { st, off, len, pa, prot, oom }),
        2 => (st.clone(), 1u8..14, 1u8..4, any::<u64>(), any::<u64>())
            .prop_map(|(st, count, stride, first, pa)| Op::LinkMany { st, count, stride, first, pa }),
        5 => (st.clone(), 0u8..8, any::<u64>(), any::<u64>())
            .prop_map(|(st, how, a, b)| Op::Unlink { st, how, a, b }),
        1 => (st.clone(), any::<bool>()).prop_map(|(st, rev)| Op::UnlinkEach { st, rev }),
        5 => (st.clone(), prop::bool::weighted(0.2)).prop_map(|(st, fail)| Op::Sync { st, fail }),
        1 => (st.clone(), prop::bool::weighted(0.3)).prop_map(|(st, fail)| Op::Destroy { st, fail }),
        2 => (st.clone(), prop::bool::weighted(0.3)).prop_map(|(st, fail)| Op::Free { st, fail }),
        1 => (st, prop::bool::weighted(0.2)).prop_map(|(st, fail)| Op::Drop { st, fail }),
        1 => (
            prop_oneof![
                4 => (0u64..1 << 32).prop_map(|p| PA_BASE + p),
                1 => (0u64..0x10_0000).prop_map(|d| (1 << 48) - d),
                1 => (0u64..0x10_0000).prop_map(|d| u64::MAX - d),
            ],
            prop_oneof![4 => 1u64..=3 * M2, 1 => Just(0u64), 1 => (0u64..G).prop_map(|d| u64::MAX - d)],
            prot_strategy(),
        )
            .prop_map(|(pa, len, prot)| Op::MapOne { pa, len, prot }),
        1 => (
            vec(
                prop_oneof![
                    6 => (0u64..1 << 24, 1u64..=64).prop_map(|(p, n)| (PA_BASE + p * G, n * G)),
                    1 => (any::<u64>(), 0u64..=0x2_0000),
                ],
                1..5,
            ),
            0u64..G,
            0u64..G,
            prot_strategy(),
        )
            .prop_map(|(mut pieces, head, tail, prot)| {
                // A first piece that may start, and a last that may end, inside a granule.
                pieces[0].0 += head;
                pieces[0].1 = pieces[0].1.saturating_sub(head).max(1);
                let last = pieces.len() - 1;
                pieces[last].1 = pieces[last].1.saturating_sub(tail).max(1);
                Op::MapSg { pieces, prot }
            }),
        2 => (0usize..8, prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(m, fail, by_drop)| Op::Unmap { m, fail, by_drop }),
    ]
}

fn run_model<F: PtFormat + Copy + std::fmt::Debug + 'static>(fmt: F) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 2 } else { 512 });
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let cov = Coverage::default();
    let result = runner.run(
        &(any::<u64>(), vec(op_strategy(), 1..=64)),
        |(seed, ops)| run_case(fmt, seed, &ops, &cov),
    );
    if let Err(e) = result {
        panic!("{fmt:?}: {e}");
    }
    let summary = cov.0.lock().unwrap().clone();
    eprintln!("{fmt:?} outcomes over {cases} cases: {summary:#?}");
    // The generator must reach what the properties talk about (with enough
    // cases to make missing one a generator problem, not bad luck).
    if cases < 256 {
        return;
    }
    for what in [
        "alloc ok",
        "link ok",
        "link AlreadyMapped",
        "link Misaligned",
        "link OutOfRange",
        "link Overflow",
        "link InvalidProt",
        "link ZeroLength",
        "link NoMemory",
        "unlink ok",
        "unlink NotMapped",
        "unlink PartialUnmap",
        "sync ok",
        "sync Timeout",
        "destroy ok",
        "destroy Timeout",
        "free ok",
        "free StillLinked",
        "drop ok",
        "drop leaked",
        "map ok",
        "map_sg ok",
        "unmap ok",
        "2 MiB block in the tables",
        "stale translation seen before sync",
    ] {
        assert!(cov.count(what) > 0, "{fmt:?}: never saw {what:?}");
    }
}

#[test]
fn two_step_api_matches_the_model_lpae_s1() {
    run_model(LpaeS1::va48());
}

#[test]
fn two_step_api_matches_the_model_x86_64() {
    run_model(X86_64::four_level());
}
