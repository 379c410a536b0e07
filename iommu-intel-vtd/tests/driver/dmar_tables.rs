//! Hand-built DMAR tables (the layout of the VT-d specification, 8.1-8.4)
//! for the reserved-region tests.

use iommu_intel_vtd::acpi::dmar::FLAG_INTR_REMAP;

/// A device scope entry: `kind`, enumeration ID, start bus, path.
pub fn scope(kind: u8, id: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, id, bus];
    for &(d, f) in path {
        s.extend_from_slice(&[d, f]);
    }
    s
}

/// A DRHD at `base` with `scopes`.
pub fn drhd(flags: u8, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = scopes.concat();
    let mut s = vec![];
    s.extend_from_slice(&0u16.to_le_bytes());
    s.extend_from_slice(&((16 + body.len()) as u16).to_le_bytes());
    s.extend_from_slice(&[flags, 0]);
    s.extend_from_slice(&0u16.to_le_bytes());
    s.extend_from_slice(&base.to_le_bytes());
    s.extend_from_slice(&body);
    s
}

/// An RMRR of `[base, limit]` for `scopes`.
pub fn rmrr(base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = scopes.concat();
    let mut s = vec![];
    s.extend_from_slice(&1u16.to_le_bytes());
    s.extend_from_slice(&((24 + body.len()) as u16).to_le_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(&base.to_le_bytes());
    s.extend_from_slice(&limit.to_le_bytes());
    s.extend_from_slice(&body);
    s
}

/// The DMAR table (39-bit host address width) holding `structs`.
pub fn dmar(structs: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![38, FLAG_INTR_REMAP];
    body.extend_from_slice(&[0; 10]);
    body.extend_from_slice(&structs.concat());
    let mut t = Vec::new();
    t.extend_from_slice(b"DMAR");
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(1);
    t.push(0);
    t.extend_from_slice(b"OEMID ");
    t.extend_from_slice(b"TABLEID ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"TEST");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&body);
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}
