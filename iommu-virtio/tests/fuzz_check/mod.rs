//! What the `virtio_reply` fuzz target checks, shared with the corpus replay
//! test (`tests/fuzz_corpus.rs`): device-written bytes decoded by the
//! driver's own entry points, compared with an independent reading of the
//! specification's layouts.
//!
//! The first byte selects the decoder (modulo 3), the rest is what the device
//! wrote:
//! - 0: a PROBE property list (`ProbeInfo::parse`, then `reserve_in`);
//! - 1: fault events, 24 bytes each (`wire::Fault` + `FaultRecord::decode`);
//! - 2: reply tails, 10 bytes each: request kind (mod 5), used length (u32
//!   LE), needed length (u32 LE), status byte (`decode_reply`).

use iommu_virtio::error::decode_reply;
use iommu_virtio::probe::MAX_RESERVED;
use iommu_virtio::wire::{self, FAULT_F_ADDRESS, FAULT_F_EXEC, FAULT_F_READ, FAULT_F_WRITE};
use iommu_virtio::{
    FaultReason, FaultRecord, ProbeInfo, ProbeProblem, RequestKind, ReservedKind, Status,
    VirtioIommuError,
};
use iova_core::{Iova, IovaAllocator, IovaAllocatorConfig, IovaRange};
use zerocopy::FromBytes;

/// Runs the decoder `data[0]` selects on the rest; panics on any
/// inconsistency.
pub fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => probe(rest),
        1 => faults(rest),
        _ => replies(rest),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Why the driver must refuse a property list.
#[derive(Debug)]
enum Refusal {
    /// Malformed, as named.
    Malformed(ProbeProblem),
    /// Well formed, but more regions than the driver keeps.
    TooManyRegions,
}

/// The specification's reading of a property list: `Ok((regions, unknown))`
/// or why the driver must refuse the list.
#[allow(clippy::type_complexity)]
fn expected_probe(b: &[u8]) -> Result<(Vec<(u64, u64, u8)>, usize), Refusal> {
    let (mut regions, mut unknown, mut p) = (Vec::new(), 0, 0);
    while b.len() - p >= 4 {
        let kind = u16_at(b, p) & 0xfff;
        if kind == 0 {
            break;
        }
        let len = usize::from(u16_at(b, p + 2));
        if b.len() - p - 4 < len {
            return Err(Refusal::Malformed(ProbeProblem::PropertyPastEnd));
        }
        let value = &b[p + 4..p + 4 + len];
        if kind == 1 {
            if len < 20 {
                return Err(Refusal::Malformed(ProbeProblem::ResvMemTooShort));
            }
            let (start, end) = (u64_at(value, 4), u64_at(value, 12));
            if end < start {
                return Err(Refusal::Malformed(ProbeProblem::ResvMemReversed));
            }
            if regions.len() == MAX_RESERVED {
                // More regions than the driver keeps: refused, not truncated.
                return Err(Refusal::TooManyRegions);
            }
            regions.push((start, end, value[0]));
        } else {
            unknown += 1;
        }
        p += 4 + len;
    }
    Ok((regions, unknown))
}

fn probe(b: &[u8]) {
    let got = ProbeInfo::parse(b);
    match (expected_probe(b), &got) {
        (Ok((regions, unknown)), Ok(info)) => {
            assert_eq!(info.unknown_properties, unknown);
            assert_eq!(info.reserved.len(), regions.len());
            for (r, &(start, end, sub)) in info.reserved.iter().zip(&regions) {
                assert_eq!((r.start, r.end), (start, end));
                let kind = match sub {
                    0 => ReservedKind::Reserved,
                    1 => ReservedKind::Msi,
                    s => ReservedKind::Other(s),
                };
                assert_eq!(r.kind, kind);
                let range = r.range();
                assert_eq!(range.start, Iova(start));
                assert_eq!(range.end, Iova(end.saturating_add(1)));
            }
            reserve(info);
        }
        (Err(Refusal::Malformed(want)), Err(VirtioIommuError::BadProbe(got))) if want == *got => {}
        (Err(Refusal::TooManyRegions), Err(VirtioIommuError::StorageFull)) => {}
        (want, got) => panic!("PROBE {b:02x?}: expected {want:?}, got {got:?}"),
    }
}

/// The regions become holes of an allocator: every one that does not overlap
/// another must be reserved, and nothing is handed out inside any of them.
fn reserve(info: &ProbeInfo) {
    const APERTURE: IovaRange = IovaRange {
        start: Iova(0x1000),
        end: Iova(1 << 48),
    };
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(APERTURE, 0x1000), 64, 0).unwrap();
    let result = info.reserve_in(&iovas);
    let r = &info.reserved;
    let overlap =
        (0..r.len()).any(|i| (0..i).any(|j| r[i].start <= r[j].end && r[j].start <= r[i].end));
    if !overlap {
        assert_eq!(result, Ok(r.len()), "{r:x?}");
    }
    if result.is_ok() {
        for _ in 0..4 {
            let Ok(a) = iovas.alloc(0, 0x1000, 0x1000) else {
                break;
            };
            let got = a.range();
            let (s, e) = (got.start.get(), got.end.get() - 1);
            for h in r {
                assert!(e < h.start || s > h.end, "{got:x?} inside {h:x?}");
            }
        }
    }
}

fn faults(b: &[u8]) {
    for raw in b.chunks_exact(24) {
        let f = FaultRecord::decode(&wire::Fault::read_from_bytes(raw).unwrap());
        let flags = u32_at(raw, 4);
        let reason = match raw[0] {
            0 => FaultReason::Unknown,
            1 => FaultReason::Domain,
            2 => FaultReason::Mapping,
            r => FaultReason::Other(r),
        };
        assert_eq!(f.reason, reason);
        assert_eq!(f.flags, flags);
        assert_eq!(f.read, flags & FAULT_F_READ != 0);
        assert_eq!(f.write, flags & FAULT_F_WRITE != 0);
        assert_eq!(f.exec, flags & FAULT_F_EXEC != 0);
        assert_eq!(f.endpoint, u32_at(raw, 8));
        let address = (flags & FAULT_F_ADDRESS != 0).then(|| u64_at(raw, 16));
        assert_eq!(f.address, address);
    }
}

fn replies(b: &[u8]) {
    const KINDS: [RequestKind; 5] = [
        RequestKind::Attach,
        RequestKind::Detach,
        RequestKind::Map,
        RequestKind::Unmap,
        RequestKind::Probe,
    ];
    for t in b.chunks_exact(10) {
        let request = KINDS[usize::from(t[0]) % 5];
        let (used, needed, code) = (u32_at(t, 1), u32_at(t, 5), t[9]);
        let got = decode_reply(request, used, needed, code);
        let want = if used < needed {
            Err(VirtioIommuError::ShortReply {
                request,
                used,
                needed,
            })
        } else {
            match code {
                0 => Ok(()),
                1..=8 => Err(VirtioIommuError::Request {
                    request,
                    status: Status::from_code(code),
                }),
                _ => Err(VirtioIommuError::UnknownStatus { request, code }),
            }
        };
        assert_eq!(got, want);
        if let Err(VirtioIommuError::Request { status, .. }) = got {
            assert_eq!(status.code(), code);
            assert!(!matches!(status, Status::Ok | Status::Unknown(_)));
        }
        if let Err(e) = got {
            assert!(!e.to_string().is_empty());
        }
    }
}
