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
