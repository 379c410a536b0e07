//! Which virtio-iommu translates which device, from ACPI: the Virtual I/O
//! Translation table (VIOT, ACPI 6.4 section 5.2.30), which QEMU builds on
//! q35 (and on virt with ACPI) when a `virtio-iommu-pci` is present.
//!
//! The table lists IOMMU nodes (a virtio-iommu that is a PCI function, or
//! one on virtio-mmio) and endpoint nodes (a range of PCI functions, or one
//! MMIO device) each pointing at its IOMMU through `output_node`, the
//! IOMMU node's offset in the table. [`Viot::parse`] checks everything once
//! (the ACPI header through [`iova_core::acpi::verify_table`], then every
//! node inside the table and every `output_node` naming an IOMMU node), so
//! the lookups after it cannot meet a bad offset.
//!
//! Endpoint IDs (what ATTACH, PROBE and fault records carry) of a PCI range
//! are `endpoint_start + ((segment - segment_start) << 16) + (bdf -
//! bdf_start)`, as the specification and Linux compute them; an MMIO
//! endpoint has its ID in its node.
//!
//! QEMU's PCI range covers the whole bus, the virtio-iommu's own function
//! included. The IOMMU does not translate its own accesses, so, as Linux
//! does, a lookup of an IOMMU node's own PCI function or MMIO base is
//! refused ([`LookupError::IsIommu`]) rather than given an endpoint ID.
//!
//! Node types this version does not know are skipped by their length, as
//! long as that length keeps them inside the table.

use core::fmt;

use iova_core::acpi::{AcpiError, SDT_HEADER_LEN, verify_table};

/// The table's signature.
pub const SIGNATURE: [u8; 4] = *b"VIOT";
/// The revision this parser reads (ACPI 6.4; what QEMU emits).
pub const REVISION: u8 = 0;
/// The VIOT header: the ACPI header, node count (u16), node offset (u16),
/// 8 reserved bytes.
pub const HEADER_LEN: usize = SDT_HEADER_LEN + 12;

/// Node types and the size each must have at least.
pub mod node {
    /// A range of PCI endpoints.
    pub const PCI_RANGE: u8 = 1;
    /// One MMIO endpoint.
    pub const MMIO_ENDPOINT: u8 = 2;
    /// A virtio-iommu that is a PCI function.
    pub const VIRTIO_IOMMU_PCI: u8 = 3;
    /// A virtio-iommu on virtio-mmio.
    pub const VIRTIO_IOMMU_MMIO: u8 = 4;
    /// Every node's header: type (u8), reserved (u8), length (u16).
    pub const HEADER_LEN: usize = 4;

    /// The size a node of type `ty` must have at least (`HEADER_LEN` for
    /// types this version does not know).
    pub const fn min_len(ty: u8) -> usize {
        match ty {
            PCI_RANGE | MMIO_ENDPOINT => 24,
            VIRTIO_IOMMU_PCI | VIRTIO_IOMMU_MMIO => 16,
            _ => HEADER_LEN,
        }
    }
}

/// What is wrong inside a table whose ACPI header, length and checksum are
/// good. Offsets are from the start of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Malformed {
    /// The table is shorter than the VIOT header.
    Header,
    /// The node array starts inside the header.
    NodeOffset(u16),
    /// Node number `index` (of the count the header gives) at `offset` does
    /// not fit in the table: its header or its stated length runs past the
    /// end.
    NodeOutside {
        /// Which node, counting from 0.
        index: u16,
        /// Where it starts.
        offset: u32,
    },
    /// A node's length is below what its type needs.
    NodeLength {
        /// Where the node starts.
        offset: u32,
        /// Its type.
        ty: u8,
        /// Its stated length.
        length: u16,
    },
    /// An endpoint node's `output_node` is not the offset of an IOMMU node
    /// of the table.
    OutputNode {
        /// Where the endpoint node starts.
        offset: u32,
        /// What it points at.
        output_node: u16,
    },
    /// A PCI range whose segment or BDF start is above its end.
    InvertedRange {
        /// Where the node starts.
        offset: u32,
    },
    /// A PCI range whose last endpoint ID would be past `u32::MAX`.
    EndpointOverflow {
        /// Where the node starts.
        offset: u32,
    },
}

/// Why a VIOT was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ViotError {
    /// Not a complete ACPI table (too short, length past the bytes, bad
    /// checksum) or not a VIOT ([`AcpiError::BadSignature`]).
    Acpi(AcpiError),
    /// A revision this parser does not read.
    Revision(u8),
    /// Good header, bad content.
    Malformed(Malformed),
}

impl From<AcpiError> for ViotError {
    fn from(e: AcpiError) -> Self {
        Self::Acpi(e)
    }
}

impl fmt::Display for ViotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Acpi(e) => write!(f, "VIOT: {e}"),
            Self::Revision(r) => write!(f, "VIOT: revision {r} (this parser reads {REVISION})"),
            Self::Malformed(m) => match m {
                Malformed::Header => f.write_str("VIOT: shorter than its header"),
                Malformed::NodeOffset(o) => {
                    write!(f, "VIOT: node array offset {o:#x} inside the header")
                }
                Malformed::NodeOutside { index, offset } => {
                    write!(f, "VIOT: node {index} at {offset:#x} runs past the table")
                }
                Malformed::NodeLength { offset, ty, length } => write!(
                    f,
                    "VIOT: node at {offset:#x} of type {ty}: length {length} below the {} its type needs",
                    node::min_len(*ty)
                ),
                Malformed::OutputNode {
                    offset,
                    output_node,
                } => write!(
                    f,
                    "VIOT: endpoint node at {offset:#x}: output node {output_node:#x} is not an IOMMU node"
                ),
                Malformed::InvertedRange { offset } => {
                    write!(f, "VIOT: PCI range at {offset:#x}: start above end")
                }
                Malformed::EndpointOverflow { offset } => {
                    write!(
                        f,
                        "VIOT: PCI range at {offset:#x}: endpoint IDs past 32 bits"
                    )
                }
            },
        }
    }
}

/// Where a virtio-iommu is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IommuLocation {
    /// A PCI function.
    Pci {
        /// PCI segment.
        segment: u16,
        /// Bus, device, function (`bus << 8 | dev << 3 | fn`).
        bdf: u16,
    },
    /// A virtio-mmio device.
    Mmio {
        /// Base of its register window.
        base: u64,
    },
}

/// A virtio-iommu node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IommuNode {
    /// Its offset in the table (what `output_node` fields hold).
    pub offset: u16,
    /// Where it is.
    pub location: IommuLocation,
}

/// A range of PCI endpoints and the IOMMU that translates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PciRange {
    /// Endpoint ID of (`segment_start`, `bdf_start`).
    pub endpoint_start: u32,
    /// First PCI segment covered.
    pub segment_start: u16,
    /// Last PCI segment covered.
    pub segment_end: u16,
    /// First BDF covered in each segment.
    pub bdf_start: u16,
    /// Last BDF covered in each segment.
    pub bdf_end: u16,
    /// Offset of the IOMMU node.
    pub output_node: u16,
}

impl PciRange {
    /// The endpoint ID of (`segment`, `bdf`), if the range covers it.
    pub fn endpoint_id(&self, segment: u16, bdf: u16) -> Option<u32> {
        if !(self.segment_start..=self.segment_end).contains(&segment)
            || !(self.bdf_start..=self.bdf_end).contains(&bdf)
        {
            return None;
        }
        let offset =
            (u32::from(segment - self.segment_start) << 16) + u32::from(bdf - self.bdf_start);
        self.endpoint_start.checked_add(offset)
    }
}

/// One MMIO endpoint and the IOMMU that translates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MmioEndpoint {
    /// Its endpoint ID.
    pub endpoint_id: u32,
    /// Base of its register window.
    pub base: u64,
    /// Offset of the IOMMU node.
    pub output_node: u16,
}

/// A node of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Node {
    /// Type 1.
    PciRange(PciRange),
    /// Type 2.
    MmioEndpoint(MmioEndpoint),
    /// Type 3 or 4.
    Iommu(IommuNode),
    /// A type this version does not know, skipped.
    Unknown {
        /// Its type.
        ty: u8,
        /// Its offset in the table.
        offset: u32,
        /// Its length.
        length: u16,
    },
}

/// An endpoint's IOMMU and ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Endpoint {
    /// The IOMMU that translates it.
    pub iommu: IommuNode,
    /// Its endpoint ID on that IOMMU.
    pub id: u32,
}

/// Why a device has no endpoint ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LookupError {
    /// No endpoint node covers it: no virtio-iommu translates it.
    NotListed,
    /// It is a virtio-iommu itself, which does not translate its own
    /// accesses (even where a range covers it, as QEMU's does).
    IsIommu,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotListed => f.write_str("no VIOT endpoint node covers it"),
            Self::IsIommu => f.write_str("it is a virtio-iommu of the VIOT (not translated)"),
        }
    }
}

fn u16_at(t: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        t.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(t: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        t.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(t: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        t.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A verified VIOT, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Viot<'a> {
    t: &'a [u8],
    count: u16,
    first: u16,
}

impl<'a> Viot<'a> {
    /// Verifies `bytes` (the whole table, header included): the ACPI
    /// header, length and checksum, signature, revision, the node array
    /// inside the table, every node's length, every PCI range's bounds and
    /// every `output_node`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ViotError> {
        let (header, t) = verify_table(bytes)?;
        if header.signature != SIGNATURE {
            return Err(AcpiError::BadSignature(header.signature).into());
        }
        if header.revision != REVISION {
            return Err(ViotError::Revision(header.revision));
        }
        let bad = |m| Err(ViotError::Malformed(m));
        let (Some(count), Some(first)) = (u16_at(t, 36), u16_at(t, 38)) else {
            return bad(Malformed::Header);
        };
        if t.len() < HEADER_LEN {
            return bad(Malformed::Header);
        }
        if usize::from(first) < HEADER_LEN {
            return bad(Malformed::NodeOffset(first));
        }
        // First pass: every node inside the table, long enough for its type.
        let mut at = usize::from(first);
        for index in 0..count {
            let outside = Malformed::NodeOutside {
                index,
                offset: at as u32,
            };
            let (Some(&ty), Some(length)) = (t.get(at), u16_at(t, at + 2)) else {
                return bad(outside);
            };
            if usize::from(length) < node::min_len(ty) {
                return bad(Malformed::NodeLength {
                    offset: at as u32,
                    ty,
                    length,
                });
            }
            let end = at + usize::from(length);
            if end > t.len() {
                return bad(outside);
            }
            at = end;
        }
        let viot = Self { t, count, first };
        // Second pass: every endpoint names an IOMMU node; ranges are sane.
        for (offset, n) in viot.located() {
            let output_node = match n {
                Node::PciRange(r) => {
                    if r.segment_start > r.segment_end || r.bdf_start > r.bdf_end {
                        return bad(Malformed::InvertedRange { offset });
                    }
                    let span = (u64::from(r.segment_end - r.segment_start) << 16)
                        + u64::from(r.bdf_end - r.bdf_start);
                    if u64::from(r.endpoint_start) + span > u64::from(u32::MAX) {
                        return bad(Malformed::EndpointOverflow { offset });
                    }
                    r.output_node
                }
                Node::MmioEndpoint(m) => m.output_node,
                _ => continue,
            };
            if viot.iommu_at(output_node).is_none() {
                return bad(Malformed::OutputNode {
                    offset,
                    output_node,
                });
            }
        }
        Ok(viot)
    }

    /// The table's bytes (exactly its stated length).
    pub fn bytes(&self) -> &'a [u8] {
        self.t
    }

    /// Every node with its offset, in table order. (Checking that every
    /// `output_node` names one of them walks the array once per endpoint
    /// node: at most 65535 x 65535 steps, bounded like everything else.)
    fn located(&self) -> impl Iterator<Item = (u32, Node)> + '_ {
        let mut at = usize::from(self.first);
        (0..self.count).map_while(move |_| {
            let n = self.decode(at)?;
            let offset = at as u32;
            at += usize::from(u16_at(self.t, at + 2)?);
            Some((offset, n))
        })
    }

    /// The node at `at`; `None` only if it does not fit, which `parse` has
    /// ruled out for every node of the array.
    fn decode(&self, at: usize) -> Option<Node> {
        let t = self.t;
        let ty = *t.get(at)?;
        let length = u16_at(t, at + 2)?;
        let body = t.get(at..at.checked_add(usize::from(length))?)?;
        if usize::from(length) < node::min_len(ty) {
            return None;
        }
        let offset = u16::try_from(at).ok();
        Some(match ty {
            node::PCI_RANGE => Node::PciRange(PciRange {
                endpoint_start: u32_at(body, 4)?,
                segment_start: u16_at(body, 8)?,
                segment_end: u16_at(body, 10)?,
                bdf_start: u16_at(body, 12)?,
                bdf_end: u16_at(body, 14)?,
                output_node: u16_at(body, 16)?,
            }),
            node::MMIO_ENDPOINT => Node::MmioEndpoint(MmioEndpoint {
                endpoint_id: u32_at(body, 4)?,
                base: u64_at(body, 8)?,
                output_node: u16_at(body, 16)?,
            }),
            // An IOMMU node past offset 0xffff cannot be named by any
            // `output_node`; it is listed as unknown.
            node::VIRTIO_IOMMU_PCI if offset.is_some() => Node::Iommu(IommuNode {
                offset: offset?,
                location: IommuLocation::Pci {
                    segment: u16_at(body, 4)?,
                    bdf: u16_at(body, 6)?,
                },
            }),
            node::VIRTIO_IOMMU_MMIO if offset.is_some() => Node::Iommu(IommuNode {
                offset: offset?,
                location: IommuLocation::Mmio {
                    base: u64_at(body, 8)?,
                },
            }),
            _ => Node::Unknown {
                ty,
                offset: at as u32,
                length,
            },
        })
    }

    /// The IOMMU node at `offset`, if one of the array's nodes starts there
    /// and is an IOMMU.
    fn iommu_at(&self, offset: u16) -> Option<IommuNode> {
        self.iommus().find(|i| i.offset == offset)
    }

    /// Every node, in table order.
    pub fn nodes(&self) -> impl Iterator<Item = Node> + '_ {
        self.located().map(|(_, n)| n)
    }

    /// Every virtio-iommu the table lists.
    pub fn iommus(&self) -> impl Iterator<Item = IommuNode> + '_ {
        self.nodes().filter_map(|n| match n {
            Node::Iommu(i) => Some(i),
            _ => None,
        })
    }

    /// The IOMMU and endpoint ID of PCI function `bdf` of `segment`: the
    /// first PCI range (in table order) that covers it.
    pub fn pci_endpoint(&self, segment: u16, bdf: u16) -> Result<Endpoint, LookupError> {
        let me = IommuLocation::Pci { segment, bdf };
        if self.iommus().any(|i| i.location == me) {
            return Err(LookupError::IsIommu);
        }
        self.nodes()
            .find_map(|n| match n {
                Node::PciRange(r) => Some(Endpoint {
                    id: r.endpoint_id(segment, bdf)?,
                    iommu: self.iommu_at(r.output_node)?,
                }),
                _ => None,
            })
            .ok_or(LookupError::NotListed)
    }

    /// The IOMMU and endpoint ID of the MMIO device whose registers start
    /// at `base`: the first MMIO endpoint node with that base.
    pub fn mmio_endpoint(&self, base: u64) -> Result<Endpoint, LookupError> {
        if self
            .iommus()
            .any(|i| i.location == IommuLocation::Mmio { base })
        {
            return Err(LookupError::IsIommu);
        }
        self.nodes()
            .find_map(|n| match n {
                Node::MmioEndpoint(m) if m.base == base => Some(Endpoint {
                    id: m.endpoint_id,
                    iommu: self.iommu_at(m.output_node)?,
                }),
                _ => None,
            })
            .ok_or(LookupError::NotListed)
    }
}
