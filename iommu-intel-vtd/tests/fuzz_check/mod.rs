//! What the `vtd_dmar` and `vtd_fault` fuzz targets check, shared with the
//! corpus replay test (`tests/fuzz_corpus.rs`): firmware and hardware bytes
//! through the crate's own parsers, compared with an independent reading of
//! the VT-d specification's layouts.

use iommu_intel_vtd::acpi::dmar::{
    Bdf, DeviceScope, DeviceScopes, Dmar, Malformed, ScopeKind, Structure,
};
use iommu_intel_vtd::acpi::{AcpiError, PhysMemory, Rsdp, SDT_HEADER_LEN, find_table};
use iommu_intel_vtd::caps::Features;
use iommu_intel_vtd::fault::{AccessKind, FaultReason, FaultRecord};

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The input as physical memory starting at address 0.
struct Flat<'a>(&'a [u8]);

impl PhysMemory for Flat<'_> {
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let pa = usize::try_from(pa).ok()?;
        self.0.get(pa..pa.checked_add(len)?)
    }
}

/// `vtd_dmar`: the bytes as a DMAR table (as given, and with the checksum
/// fixed so the fuzzer gets past it), and as memory holding an RSDP at 0
/// from which the XSDT/RSDT walk looks for the DMAR.
pub fn dmar(data: &[u8]) {
    dmar_table(data);
    if data.len() >= SDT_HEADER_LEN {
        let mut fixed = data.to_vec();
        let len = (u32::from_le_bytes(fixed[4..8].try_into().unwrap()) as usize).min(fixed.len());
        fixed[9] = 0;
        let sum = fixed[..len.max(10)]
            .iter()
            .fold(0u8, |s, &b| s.wrapping_add(b));
        fixed[9] = 0u8.wrapping_sub(sum);
        dmar_table(&fixed);
    }
    walk(data);
    walk(&fix_walk_checksums(data));
}

/// Sets byte `at` so that `t[start..start + len]` (clamped to `t`) sums to
/// zero, if `at` lies inside that range.
fn fix_sum(t: &mut [u8], start: usize, len: usize, at: usize) {
    let end = start.saturating_add(len).min(t.len());
    if start >= end || !(start..end).contains(&at) {
        return;
    }
    t[at] = 0;
    let sum = t[start..end].iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[at] = 0u8.wrapping_sub(sum);
}

/// A copy of the memory image with the checksums of the RSDP, of the root
/// table it names and of every table that lists fixed, so that the fuzzer's
/// mutations of lengths and addresses reach the walk behind them.
fn fix_walk_checksums(data: &[u8]) -> Vec<u8> {
    let mut m = data.to_vec();
    if m.len() < 20 {
        return m;
    }
    fix_sum(&mut m, 0, 20, 8);
    let (root, entry) = if m[15] >= 2 && m.len() >= 36 {
        let len = (u32::from_le_bytes(m[20..24].try_into().unwrap()) as usize).clamp(36, 4096);
        fix_sum(&mut m, 0, len, 32);
        (u64_at(&m, 24), 8)
    } else {
        (
            u64::from(u32::from_le_bytes(m[16..20].try_into().unwrap())),
            4,
        )
    };
    let table_len = |m: &[u8], at: usize| {
        m.get(at.checked_add(4)?..at.checked_add(8)?)
            .map(|l| u32::from_le_bytes(l.try_into().unwrap()) as usize)
    };
    let Ok(root) = usize::try_from(root) else {
        return m;
    };
    let Some(len) = table_len(&m, root) else {
        return m;
    };
    // Fix the listed tables first: the root's checksum covers its entries,
    // not the tables they point to.
    let end = root.saturating_add(len).min(m.len());
    for i in (root + SDT_HEADER_LEN..end).step_by(entry).take(16) {
        let Some(e) = m.get(i..i + entry) else { break };
        let pa = if entry == 8 {
            u64::from_le_bytes(e.try_into().unwrap())
        } else {
            u64::from(u32::from_le_bytes(e.try_into().unwrap()))
        };
        if let Ok(pa) = usize::try_from(pa) {
            if pa != root {
                if let Some(l) = table_len(&m, pa) {
                    fix_sum(&mut m, pa, l, pa + 9);
                }
            }
        }
    }
    fix_sum(&mut m, root, len, root + 9);
    m
}

/// The RSDP -> XSDT/RSDT -> DMAR walk over the bytes as memory from 0.
fn walk(data: &[u8]) {
    let mem = Flat(data);
    let _ = Rsdp::read(&mem, 0);
    match find_table(&mem, 0, *b"DMAR") {
        Ok(t) => {
            let base = data.as_ptr() as usize;
            let off = t.as_ptr() as usize - base;
            assert!(off + t.len() <= data.len());
            assert_eq!(&t[..4], b"DMAR");
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
            assert_eq!(t.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0);
            dmar_table(t);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// One structure as the specification lays it out.
#[derive(Debug, PartialEq)]
enum Expected<'t> {
    Drhd {
        flags: u8,
        size: u8,
        segment: u16,
        base: u64,
        scopes: &'t [u8],
    },
    Rmrr {
        segment: u16,
        base: u64,
        limit: u64,
        scopes: &'t [u8],
    },
    Atsr {
        flags: u8,
        segment: u16,
        scopes: &'t [u8],
    },
    Unknown {
        kind: u16,
        offset: usize,
        len: usize,
    },
    Malformed {
        offset: usize,
        reason: Malformed,
    },
}

fn expected_structures(t: &[u8]) -> Vec<Expected<'_>> {
    let mut out = Vec::new();
    let mut o = SDT_HEADER_LEN + 12;
    while o < t.len() {
        if t.len() - o < 4 {
            out.push(Expected::Malformed {
                offset: o,
                reason: Malformed::BadLength((t.len() - o) as u16),
            });
            break;
        }
        let (kind, len) = (u16_at(t, o), u16_at(t, o + 2));
        let l = usize::from(len);
        if l < 4 || l > t.len() - o {
            out.push(Expected::Malformed {
                offset: o,
                reason: Malformed::BadLength(len),
            });
            break;
        }
        let s = &t[o..o + l];
        let short = Expected::Malformed {
            offset: o,
            reason: Malformed::TooShortForType(len),
        };
        out.push(match kind {
            0 if l >= 16 => Expected::Drhd {
                flags: s[4],
                size: s[5],
                segment: u16_at(s, 6),
                base: u64_at(s, 8),
                scopes: &s[16..],
            },
            1 if l >= 24 => Expected::Rmrr {
                segment: u16_at(s, 6),
                base: u64_at(s, 8),
                limit: u64_at(s, 16),
                scopes: &s[24..],
            },
            2 if l >= 8 => Expected::Atsr {
                flags: s[4],
                segment: u16_at(s, 6),
                scopes: &s[8..],
            },
            0..=2 => short,
            kind => Expected::Unknown {
                kind,
                offset: o,
                len: l,
            },
        });
        o += l;
    }
    out
}

/// Checks the scopes the parser yields against the bytes the specification
/// says hold them.
fn check_scopes(got: DeviceScopes<'_>, bytes: &[u8]) {
    let mut got = got;
    let mut p = 0;
    while p < bytes.len() {
        let item = got.next().expect("a scope is missing");
        if bytes.len() - p < 6 {
            assert_eq!(item, Err(Malformed::BadLength((bytes.len() - p) as u16)));
            break;
        }
        let l = usize::from(bytes[p + 1]);
        if l < 6 || l > bytes.len() - p || l % 2 != 0 {
            assert_eq!(item, Err(Malformed::BadLength(l as u16)));
            break;
        }
        let scope: DeviceScope<'_> = item.unwrap();
        assert_eq!(scope.kind, ScopeKind::from(bytes[p]));
        assert_eq!(scope.enumeration_id, bytes[p + 4]);
        assert_eq!(scope.start_bus, bytes[p + 5]);
        let path: Vec<(u8, u8)> = bytes[p + 6..p + l]
            .chunks(2)
            .map(|h| (h[0], h[1]))
            .collect();
        assert_eq!(scope.path().collect::<Vec<_>>(), path);
        // Bridges answer with the next bus (wrapping): the path resolves to
        // its last hop, on the bus reached after the bridges before it.
        let resolved = scope.resolve(|b| Some(b.bus.wrapping_add(1)));
        let want = path
            .last()
            .map(|&(d, f)| Bdf::new(scope.start_bus.wrapping_add((path.len() - 1) as u8), d, f));
        assert_eq!(resolved, want);
        p += l;
    }
    assert_eq!(got.next(), None, "a scope too many");
}

fn bridges(b: Bdf) -> Option<(u8, u8)> {
    let sec = b.bus.wrapping_add(1);
    Some((sec, sec.saturating_add(2)))
}

fn dmar_table(table: &[u8]) {
    let dmar = match Dmar::parse(table) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            // Each refusal names the first check the table fails.
            let header = table.len() >= SDT_HEADER_LEN;
            let len = if header {
                u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize
            } else {
                0
            };
            let fits = header && (SDT_HEADER_LEN..=table.len()).contains(&len);
            let sums = fits && table[..len].iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0;
            match e {
                AcpiError::TooShort(_) if !fits => {}
                AcpiError::BadChecksum(_) => assert!(fits && !sums),
                AcpiError::BadSignature(sig) => {
                    assert!(sums && sig == table[..4] && sig != *b"DMAR")
                }
                AcpiError::TooShort(sig) => {
                    assert!(sums && sig == *b"DMAR" && len < SDT_HEADER_LEN + 12)
                }
                e => panic!("{e:?} from a table in memory"),
            }
            return;
        }
    };
    let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
    assert!(len <= table.len() && len >= SDT_HEADER_LEN + 12);
    let t = &table[..len];
    assert_eq!(dmar.host_address_width, t[36]);
    assert_eq!(dmar.flags, t[37]);
    assert_eq!(dmar.address_bits(), u32::from(t[36]) + 1);

    let expected = expected_structures(t);
    let got: Vec<Structure<'_>> = dmar.structures().collect();
    assert_eq!(got.len(), expected.len(), "{got:?}\n{expected:?}");
    for (g, e) in got.iter().zip(&expected) {
        match (*g, e) {
            (
                Structure::Drhd(u),
                &Expected::Drhd {
                    flags,
                    size,
                    segment,
                    base,
                    scopes,
                },
            ) => {
                assert_eq!(
                    (u.flags, u.size, u.segment, u.register_base),
                    (flags, size, segment, base)
                );
                assert!(u.register_size() >= 4096);
                check_scopes(u.scopes, scopes);
            }
            (
                Structure::Rmrr(r),
                &Expected::Rmrr {
                    segment,
                    base,
                    limit,
                    scopes,
                },
            ) => {
                assert_eq!((r.segment, r.base, r.limit), (segment, base, limit));
                assert_eq!(r.is_empty(), limit < base);
                assert_eq!(
                    r.len().is_none(),
                    limit < base || (base, limit) == (0, u64::MAX)
                );
                if let Some(n) = r.len() {
                    assert_eq!(Some(n), (limit - base).checked_add(1));
                }
                check_scopes(r.scopes, scopes);
            }
            (
                Structure::Atsr(a),
                &Expected::Atsr {
                    flags,
                    segment,
                    scopes,
                },
            ) => {
                assert_eq!((a.flags, a.segment), (flags, segment));
                check_scopes(a.scopes, scopes);
            }
            (
                Structure::Unknown { kind, bytes },
                &Expected::Unknown {
                    kind: k,
                    offset,
                    len,
                },
            ) => {
                assert_eq!(kind, k);
                assert_eq!(bytes, &t[offset..offset + len]);
                assert_eq!(
                    bytes.as_ptr(),
                    t[offset..].as_ptr(),
                    "not the table's bytes"
                );
            }
            (
                Structure::Malformed { offset, reason },
                &Expected::Malformed {
                    offset: o,
                    reason: r,
                },
            ) => {
                assert_eq!((offset, reason), (o, r));
                assert!(offset < t.len());
            }
            (g, e) => panic!("got {g:?}, expected {e:?}"),
        }
    }

    // The unit for a device: a unit of its segment that lists it, or the
    // segment's INCLUDE_PCI_ALL unit.
    for (seg, dev) in [
        (0, Bdf::new(0, 1, 0)),
        (0, Bdf::new(0, 0x1f, 7)),
        (0, Bdf::new(3, 0, 0)),
        (1, Bdf::new(0xff, 0, 0)),
    ] {
        let unit = dmar.unit_for(seg, dev, bridges);
        let listing = dmar
            .units()
            .find(|u| u.segment == seg && u.scopes.contains(dev, bridges));
        let all = dmar
            .units()
            .find(|u| u.segment == seg && u.include_pci_all());
        assert_eq!(unit, listing.or(all));
        let _ = dev.to_string();
    }
    assert_eq!(
        dmar.reserved_regions().count(),
        got.iter()
            .filter(|s| matches!(s, Structure::Rmrr(_)))
            .count()
    );
}

/// `vtd_fault`: the first 20 bytes as VER, CAP and ECAP (the register
/// block's decoded layout must hold every fault record), then 16-byte fault
/// recording registers (low half, high half).
pub fn fault(data: &[u8]) {
    if data.len() >= 20 {
        let ver = u32::from_le_bytes(data[0..4].try_into().unwrap());
        let f = Features::from_raw(ver, u64_at(data, 4), u64_at(data, 12));
        let span = f.register_span();
        let n = f.cap.fault_records();
        assert!((1..=256).contains(&n));
        assert!(f.cap.fault_record_offset() + 16 * n <= span);
        assert!(f.ecap.iotlb_offset() + 16 <= span);
        if let Some(l) = f.max_levels() {
            assert!(f.cap.supports_levels(l));
        }
        assert!(!f.to_string().is_empty());
    }
    for r in data.chunks_exact(16) {
        let (lo, hi) = (u64_at(r, 0), u64_at(r, 8));
        let rec = FaultRecord::decode(lo, hi);
        assert_eq!(rec.address, lo & !0xfff);
        assert_eq!(rec.source.source_id(), hi as u16);
        assert_eq!(rec.source, Bdf::from_source_id(hi as u16));
        assert_eq!(rec.reason.code(), (hi >> 32) as u8);
        assert_eq!(rec.reason, FaultReason::from_code((hi >> 32) as u8));
        let read = hi & (1 << 62) != 0;
        assert_eq!(
            rec.access,
            if read {
                AccessKind::Read
            } else {
                AccessKind::Write
            }
        );
        let pasid = (hi & (1 << 31) != 0).then_some(((hi >> 40) & 0xf_ffff) as u32);
        assert_eq!(rec.pasid, pasid);
        assert!(!rec.to_string().is_empty());
    }
}
