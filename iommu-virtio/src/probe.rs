//! PROBE replies: the endpoint's properties.

use zerocopy::FromBytes;

use crate::error::{ProbeProblem, VirtioIommuError};
use crate::wire;

/// How many reserved regions a [`ProbeInfo`] keeps.
pub const MAX_RESERVED: usize = 8;

/// What a reserved region is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReservedKind {
    /// Not translated: accesses fault or are dropped.
    Reserved,
    /// A software MSI doorbell: accesses bypass translation.
    Msi,
    /// A subtype the specification does not define (treated as reserved).
    Other(u8),
}

/// An address range of an endpoint that must not be used for IOVAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReservedRegion {
    /// First address.
    pub start: u64,
    /// Last address (inclusive, as on the wire).
    pub end: u64,
    /// What it is.
    pub kind: ReservedKind,
}

impl ReservedRegion {
    /// The region as a half-open IOVA range (the end saturates at `u64::MAX`).
    pub fn range(&self) -> iova_core::IovaRange {
        iova_core::IovaRange {
            start: iova_core::Iova(self.start),
            end: iova_core::Iova(self.end.saturating_add(1)),
        }
    }
}

/// An endpoint's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeInfo {
    /// Its reserved regions.
    pub reserved: heapless::Vec<ReservedRegion, MAX_RESERVED>,
    /// Properties of types this driver does not know, skipped.
    pub unknown_properties: usize,
}

impl ProbeInfo {
    /// Parses the property list the device wrote (`probe_size` bytes).
    pub fn parse(mut props: &[u8]) -> Result<Self, VirtioIommuError> {
        let mut info = ProbeInfo::default();
        while let Ok((head, rest)) = wire::ProbeProperty::read_from_prefix(props) {
            let kind = head.kind.get() & wire::PROBE_T_MASK;
            if kind == wire::PROBE_T_NONE {
                break;
            }
            let len = usize::from(head.length.get());
            let value = rest
                .get(..len)
                .ok_or(VirtioIommuError::BadProbe(ProbeProblem::PropertyPastEnd))?;
            if kind == wire::PROBE_T_RESV_MEM {
                let mem = wire::ResvMem::read_from_prefix(value)
                    .map_err(|_| VirtioIommuError::BadProbe(ProbeProblem::ResvMemTooShort))?
                    .0;
                let (start, end) = (mem.start.get(), mem.end.get());
                if end < start {
                    return Err(VirtioIommuError::BadProbe(ProbeProblem::ResvMemReversed));
                }
                let region = ReservedRegion {
                    start,
                    end,
                    kind: match mem.subtype {
                        wire::RESV_MEM_T_RESERVED => ReservedKind::Reserved,
                        wire::RESV_MEM_T_MSI => ReservedKind::Msi,
                        s => ReservedKind::Other(s),
                    },
                };
                info.reserved
                    .push(region)
                    .map_err(|_| VirtioIommuError::StorageFull)?;
            } else {
                info.unknown_properties += 1;
            }
            props = &rest[len..];
        }
        Ok(info)
    }

    /// Makes every reserved region a hole in `iovas`, so it is never handed
    /// out as an IOVA. Returns how many regions were reserved.
    pub fn reserve_in(
        &self,
        iovas: &iova_core::IovaAllocator<'_>,
    ) -> Result<usize, iova_core::IovaAllocError> {
        for r in &self.reserved {
            let range = r.range();
            // Only `[u64::MAX, u64::MAX]` gives an empty half-open range: that
            // byte lies beyond every aperture (its end is exclusive), so there
            // is nothing to reserve.
            if !range.is_empty() {
                iovas.reserve(range)?;
            }
        }
        Ok(self.reserved.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resv(subtype: u8, start: u64, end: u64) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&1u16.to_le_bytes());
        b[2..4].copy_from_slice(&20u16.to_le_bytes());
        b[4] = subtype;
        b[8..16].copy_from_slice(&start.to_le_bytes());
        b[16..24].copy_from_slice(&end.to_le_bytes());
        b
    }

    #[test]
    fn parses_regions_skips_unknown_properties_and_stops_at_none() {
        let mut buf = [0u8; 512];
        buf[..24].copy_from_slice(&resv(1, 0xfee0_0000, 0xfeef_ffff));
        // An unknown property type 0x7 with 4 bytes of value.
        buf[24..28].copy_from_slice(&[7, 0, 4, 0]);
        buf[32..56].copy_from_slice(&resv(0, 0x1000, 0x1fff));
        let info = ProbeInfo::parse(&buf).unwrap();
        assert_eq!(info.unknown_properties, 1);
        assert_eq!(
            info.reserved.as_slice(),
            &[
                ReservedRegion {
                    start: 0xfee0_0000,
                    end: 0xfeef_ffff,
                    kind: ReservedKind::Msi
                },
                ReservedRegion {
                    start: 0x1000,
                    end: 0x1fff,
                    kind: ReservedKind::Reserved
                }
            ]
        );
        assert_eq!(info.reserved[0].range().len(), 0x10_0000);
    }

    #[test]
    fn a_region_of_the_last_byte_reserves_nothing_and_is_no_error() {
        // Its half-open range is empty, which the allocator would refuse
        // (ZeroSize): `reserve_in` must skip it, not fail the probe.
        let info = ProbeInfo::parse(&resv(1, u64::MAX, u64::MAX)).unwrap();
        assert!(info.reserved[0].range().is_empty());
        let aperture = iova_core::IovaRange {
            start: iova_core::Iova(0x1000),
            end: iova_core::Iova(1 << 48),
        };
        let iovas = iova_core::IovaAllocator::with_capacity(
            iova_core::IovaAllocatorConfig::new(aperture, 0x1000),
            8,
            0,
        )
        .unwrap();
        assert_eq!(info.reserve_in(&iovas), Ok(1));
    }

    #[test]
    fn malformed_lists_are_errors_naming_what_is_wrong() {
        let mut buf = [0u8; 24];
        buf.copy_from_slice(&resv(1, 0x2000, 0x1000));
        assert_eq!(
            ProbeInfo::parse(&buf),
            Err(VirtioIommuError::BadProbe(ProbeProblem::ResvMemReversed))
        );
        let mut short = resv(1, 0, 0xfff);
        short[2] = 40; // length past the end of the buffer
        assert_eq!(
            ProbeInfo::parse(&short),
            Err(VirtioIommuError::BadProbe(ProbeProblem::PropertyPastEnd))
        );
        let mut tiny = resv(1, 0, 0xfff);
        tiny[2] = 8; // too short for RESV_MEM
        assert_eq!(
            ProbeInfo::parse(&tiny),
            Err(VirtioIommuError::BadProbe(ProbeProblem::ResvMemTooShort))
        );
    }
}
