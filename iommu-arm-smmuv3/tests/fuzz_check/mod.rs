//! What the `smmuv3_event` fuzz target checks, shared with the corpus replay
//! test (`tests/fuzz_corpus.rs`): bytes an SMMU or the firmware wrote,
//! through the crate's own decoders, compared with an independent reading of
//! the specifications' layouts.
//!
//! The first byte selects the input (modulo 4), the rest is its bytes:
//! - 0: event queue records, 32 bytes each (`Event::decode`);
//! - 1: an IORT (`Iort::parse`, `smmuv3_nodes`, `stream_id`), as given and
//!   with its checksum fixed so the fuzzer gets past it;
//! - 2: a device-tree `iommu-map` lookup: `iommu-map-mask` (u32 BE, 0 = no
//!   mask), the IOMMU phandle (u32 BE, 0 = any), the requester ID (u32 BE),
//!   then the property value (`dt::stream_id`);
//! - 3: GERROR bits the SMMU raises, 4 bytes each (little endian), each
//!   followed by a `global_errors` read on a fake SMMU.

use std::sync::Arc;

use iommu_arm_smmuv3::dt::{self, MapError};
use iommu_arm_smmuv3::event::{FaultClass, Stage};
use iommu_arm_smmuv3::fake::{FakeSmmu, QEMU_10_VIRT};
use iommu_arm_smmuv3::iort::{Iort, IortError, SmmuV3, node};
use iommu_arm_smmuv3::regs::gerror;
use iommu_arm_smmuv3::{Config, Event, FaultKind, Smmu, SmmuError};
use iova_core::fakes::FakeFrames;

/// Runs the decoder `data[0]` selects on the rest; panics on any
/// inconsistency.
pub fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => events(rest),
        1 => iort(rest),
        2 => iommu_map(rest),
        _ => global_errors(rest),
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn events(b: &[u8]) {
    for r in b.chunks_exact(32) {
        let raw = [u64_at(r, 0), u64_at(r, 8), u64_at(r, 16), u64_at(r, 24)];
        let e = Event::decode(raw);
        assert_eq!(e.raw, raw);
        assert_eq!(e.code, r[0]);
        assert_eq!(e.kind, FaultKind::from_code(r[0]));
        assert_eq!(e.sid, u32_at(r, 4));
        let ssv = r[1] & 0x08 != 0;
        assert_eq!(e.ssid, ssv.then_some(u32_at(r, 0) >> 12));
        let s2 = r[12] & 0x80 != 0;
        assert_eq!(e.stage, if s2 { Stage::Two } else { Stage::One });
        if e.kind.has_address() {
            assert_eq!(e.addr, Some(raw[2]));
            assert_eq!(e.read, Some(r[12] & 0x08 != 0));
            let class = match r[13] & 3 {
                0 => FaultClass::Cd,
                1 => FaultClass::TableWalk,
                2 => FaultClass::Input,
                _ => FaultClass::Reserved,
            };
            assert_eq!(e.class, Some(class));
            assert_eq!(e.ipa, s2.then_some(raw[3] & 0x000f_ffff_ffff_f000));
            // What the fake SMMU writes for these fields decodes back to them.
            let again = Event::decode(Event::encode(
                e.code,
                e.sid,
                raw[2],
                raw[3],
                r[12] & 0x08 != 0,
                e.stage,
                class,
            ));
            assert_eq!(
                (
                    again.kind,
                    again.sid,
                    again.addr,
                    again.ipa,
                    again.read,
                    again.stage,
                    again.class
                ),
                (e.kind, e.sid, e.addr, e.ipa, e.read, e.stage, e.class)
            );
        } else {
            assert_eq!((e.addr, e.ipa, e.read, e.class), (None, None, None, None));
        }
    }
}

/// The nodes of a table `Iort::parse` accepted, as the specification lays
/// them out: `(type, offset, bytes)`.
fn nodes(t: &[u8]) -> Vec<(u8, u32, &[u8])> {
    let (count, mut at) = (u32_at(t, 36), u32_at(t, 40) as usize);
    let mut out = Vec::new();
    for _ in 0..count {
        // Accepted: every listed node is inside the table.
        let len = usize::from(u16::from_le_bytes([t[at + 1], t[at + 2]]));
        assert!(len >= 16 && at + len <= t.len());
        out.push((t[at], at as u32, &t[at..at + len]));
        at += len;
    }
    out
}

/// The bytes as an IORT, as given and (when at least a header long) with the
/// checksum fixed; each accepted table is checked against [`nodes`].
fn iort(b: &[u8]) {
    iort_table(b);
    if b.len() >= 48 {
        let mut fixed = b.to_vec();
        let len = (u32_at(&fixed, 4) as usize).clamp(10, fixed.len());
        fixed[9] = 0;
        let sum = fixed[..len].iter().fold(0u8, |s, &x| s.wrapping_add(x));
        fixed[9] = 0u8.wrapping_sub(sum);
        iort_table(&fixed);
    }
}

fn iort_table(b: &[u8]) {
    let iort = match Iort::parse(b) {
        Ok(i) => i,
        Err(e) => {
            // Each refusal names the first check the table fails.
            let header = b.len() >= 48 && &b[..4] == b"IORT";
            let len = if header { u32_at(b, 4) as usize } else { 0 };
            let fits = header && (48..=b.len()).contains(&len);
            let sums = fits && b[..len].iter().fold(0u8, |s, &x| s.wrapping_add(x)) == 0;
            match e {
                IortError::NotIort => assert!(!header),
                IortError::Truncated => assert!(header && !fits),
                IortError::BadChecksum => assert!(fits && !sums),
                IortError::BadOffset(_) => assert!(sums),
                e => panic!("{e:?}"),
            }
            return;
        }
    };
    assert_eq!(&b[..4], b"IORT");
    let t = &b[..u32_at(b, 4) as usize];
    assert_eq!(t.iter().fold(0u8, |s, &x| s.wrapping_add(x)), 0);
    let nodes = nodes(t);
    for &(_, _, n) in &nodes {
        let (maps, at) = (u32_at(n, 8) as usize, u32_at(n, 12) as usize);
        assert!(
            maps == 0 || at + 20 * maps <= n.len(),
            "ID array outside its node"
        );
    }
    let smmus: Vec<SmmuV3> = nodes
        .iter()
        .filter(|&&(ty, _, n)| ty == node::SMMU_V3 && n.len() >= 44)
        .map(|&(_, offset, n)| SmmuV3 {
            offset,
            base: u64_at(n, 16),
            coherent_override: u32_at(n, 24) & 1 != 0,
            model: u32_at(n, 40),
        })
        .collect();
    assert_eq!(iort.smmuv3_nodes().collect::<Vec<_>>(), smmus);
    // Requester IDs named by the table's own mappings, and a few others.
    let mut probes: Vec<(u32, u32)> = vec![(0, 0), (0, 8), (1, 0x100), (0, u32::MAX)];
    for &(ty, _, n) in &nodes {
        if ty == node::ROOT_COMPLEX && n.len() >= 32 {
            let seg = u32_at(n, 28);
            for i in 0..(u32_at(n, 8) as usize).min(8) {
                let m = u32_at(n, 12) as usize + 20 * i;
                let (input, count) = (u32_at(n, m), u32_at(n, m + 4));
                probes.extend([
                    (seg, input),
                    (seg, input.wrapping_add(count)),
                    (seg, input.wrapping_add(count).wrapping_add(1)),
                ]);
            }
        }
    }
    for (seg, rid) in probes {
        assert_eq!(
            iort.stream_id(seg, rid),
            expected_stream_id(&nodes, &smmus, seg, rid),
            "{seg} {rid:#x}"
        );
    }
}

/// The first root complex of `segment`, then its first mapping that covers
/// `rid` and targets an SMMUv3 node.
fn expected_stream_id(
    nodes: &[(u8, u32, &[u8])],
    smmus: &[SmmuV3],
    segment: u32,
    rid: u32,
) -> Option<(SmmuV3, u32)> {
    let &(_, _, rc) = nodes.iter().find(|&&(ty, _, n)| {
        ty == node::ROOT_COMPLEX && n.len() >= 32 && u32_at(n, 28) == segment
    })?;
    for i in 0..u32_at(rc, 8) as usize {
        let m = u32_at(rc, 12) as usize + 20 * i;
        let (input, count, output, target) = (
            u32_at(rc, m),
            u32_at(rc, m + 4),
            u32_at(rc, m + 8),
            u32_at(rc, m + 12),
        );
        let single = u32_at(rc, m + 16) & 1 != 0;
        if rid < input || rid - input > count {
            continue;
        }
        let Some(&smmu) = smmus.iter().find(|s| s.offset == target) else {
            continue;
        };
        return if single {
            Some((smmu, output))
        } else {
            output.checked_add(rid - input).map(|sid| (smmu, sid))
        };
    }
    None
}

fn iommu_map(b: &[u8]) {
    if b.len() < 12 {
        return;
    }
    let be = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let mask = Some(be(0)).filter(|&m| m != 0);
    let phandle = Some(be(4)).filter(|&p| p != 0);
    let (rid, map) = (be(8), &b[12..]);
    let got = dt::stream_id(map, mask, phandle, rid);
    if map.len() % 16 != 0 {
        assert_eq!(got, Err(MapError::Malformed));
        assert!(dt::entries(map).is_err());
        return;
    }
    let entries: Vec<_> = dt::entries(map).unwrap().collect();
    assert_eq!(entries.len(), map.len() / 16);
    for (e, raw) in entries.iter().zip(map.chunks_exact(16)) {
        let cell = |o: usize| u32::from_be_bytes(raw[o..o + 4].try_into().unwrap());
        assert_eq!(
            (e.rid_base, e.phandle, e.out_base, e.len),
            (cell(0), cell(4), cell(8), cell(12))
        );
    }
    let masked = rid & mask.unwrap_or(u32::MAX);
    let hit = entries.iter().find(|e| {
        phandle.is_none_or(|p| p == e.phandle)
            && masked >= e.rid_base
            && u64::from(masked) < u64::from(e.rid_base) + u64::from(e.len)
    });
    let want = match hit {
        None => Err(MapError::NotMapped(rid)),
        Some(e) => e
            .out_base
            .checked_add(masked - e.rid_base)
            .ok_or(MapError::Overflow),
    };
    assert_eq!(got, want);
}

type FakeDriver = Smmu<&'static FakeSmmu, Arc<FakeFrames>>;

thread_local! {
    /// One fake SMMU and driver for every input of this thread: bringing one
    /// up takes milliseconds, which would make this the fuzzer's slowest path
    /// by far. Each input starts from what `global_errors` reports first.
    static SMMU: (&'static FakeSmmu, FakeDriver) = {
        // The fake outlives every thread's driver: a static keeps it, so
        // that leak checkers (Miri's) see it is kept on purpose.
        static KEPT: std::sync::Mutex<Vec<&'static FakeSmmu>> = std::sync::Mutex::new(Vec::new());
        let frames = Arc::new(FakeFrames::new());
        let fake: &'static FakeSmmu =
            Box::leak(Box::new(FakeSmmu::new(Arc::clone(&frames), QEMU_10_VIRT)));
        KEPT.lock().unwrap().push(fake);
        let smmu = Smmu::new(fake, frames, Config::default()).unwrap();
        (fake, smmu)
    };
}

fn global_errors(b: &[u8]) {
    SMMU.with(|(fake, smmu)| {
        // GERROR ^ GERRORN as the fake keeps it: raising sets bits, the
        // driver's acknowledgement clears the architected ones but CMDQ_ERR
        // (left to the command queue). Bits outside `gerror::ALL` are never
        // reported, so whether an earlier input left them pending does not
        // matter; CMDQ_ERR is what the first read reports.
        let mut pending = match smmu.global_errors() {
            Ok(p) => p,
            Err(e) => panic!("nothing raised yet, but {e:?}"),
        };
        assert_eq!(pending & !gerror::CMDQ_ERR, 0);
        for w in b.chunks_exact(4).take(64) {
            let bits = u32_at(w, 0);
            fake.raise_gerror(bits);
            pending |= bits;
            let want = if pending & gerror::SFM_ERR != 0 {
                Err(SmmuError::ServiceFailure)
            } else {
                Ok(pending & gerror::ALL)
            };
            assert_eq!(smmu.global_errors(), want, "{bits:#x}");
            pending &= gerror::CMDQ_ERR | !gerror::ALL;
        }
    });
}
