//! Firmware discovery: the ACPI VIOT (`viot`) and the device tree's
//! `virtio,pci-iommu` node with the host's `iommu-map` (`dt`), on tables
//! built here as QEMU builds them, and each malformation refused by name.

use iommu_virtio::dt::{DtError, DtIommu, MapError};
use iommu_virtio::viot::{
    Endpoint, IommuLocation, IommuNode, LookupError, Malformed, Node, Viot, ViotError,
};
use iova_core::acpi::AcpiError;
use iova_core::acpi::test_support::{fix_checksum, table};

fn pci_range(ep: u32, seg: (u16, u16), bdf: (u16, u16), out: u16) -> Vec<u8> {
    let mut n = vec![1, 0];
    n.extend_from_slice(&24u16.to_le_bytes());
    n.extend_from_slice(&ep.to_le_bytes());
    for v in [seg.0, seg.1, bdf.0, bdf.1, out] {
        n.extend_from_slice(&v.to_le_bytes());
    }
    n.extend_from_slice(&[0; 6]);
    n
}

fn mmio_endpoint(ep: u32, base: u64, out: u16) -> Vec<u8> {
    let mut n = vec![2, 0];
    n.extend_from_slice(&24u16.to_le_bytes());
    n.extend_from_slice(&ep.to_le_bytes());
    n.extend_from_slice(&base.to_le_bytes());
    n.extend_from_slice(&out.to_le_bytes());
    n.extend_from_slice(&[0; 6]);
    n
}

fn viommu_pci(seg: u16, bdf: u16) -> Vec<u8> {
    let mut n = vec![3, 0];
    n.extend_from_slice(&16u16.to_le_bytes());
    n.extend_from_slice(&seg.to_le_bytes());
    n.extend_from_slice(&bdf.to_le_bytes());
    n.extend_from_slice(&[0; 8]);
    n
}

fn viommu_mmio(base: u64) -> Vec<u8> {
    let mut n = vec![4, 0];
    n.extend_from_slice(&16u16.to_le_bytes());
    n.extend_from_slice(&[0; 4]);
    n.extend_from_slice(&base.to_le_bytes());
    n
}

/// A VIOT: node count, node offset 48, reserved, the nodes.
fn viot(nodes: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(nodes.len() as u16).to_le_bytes());
    body.extend_from_slice(&48u16.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    for n in nodes {
        body.extend_from_slice(n);
    }
    table(b"VIOT", 0, &body)
}

/// QEMU q35 with `-device virtio-iommu-pci` at 00:03.0: the IOMMU node at
/// 48, one range for bus 0 (the IOMMU's own BDF included).
fn qemu_q35() -> Vec<u8> {
    viot(&[viommu_pci(0, 0x18), pci_range(0, (0, 0), (0, 0xff), 48)])
}

fn malformed(t: &[u8]) -> Malformed {
    match Viot::parse(t) {
        Err(ViotError::Malformed(m)) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn qemu_q35_viot_gives_endpoint_ids_and_refuses_the_iommu_itself() {
    let t = qemu_q35();
    let v = Viot::parse(&t).unwrap();
    let iommu = IommuNode {
        offset: 48,
        location: IommuLocation::Pci {
            segment: 0,
            bdf: 0x18,
        },
    };
    assert_eq!(v.iommus().collect::<Vec<_>>(), [iommu]);
    assert_eq!(v.nodes().count(), 2);
    // edu at 00:02.0, the second at 00:04.0: endpoint ID = BDF here.
    assert_eq!(v.pci_endpoint(0, 0x10), Ok(Endpoint { iommu, id: 0x10 }));
    assert_eq!(v.pci_endpoint(0, 0x20).map(|e| e.id), Ok(0x20));
    assert_eq!(v.pci_endpoint(0, 0x18), Err(LookupError::IsIommu));
    assert_eq!(v.pci_endpoint(0, 0x100), Err(LookupError::NotListed));
    assert_eq!(v.pci_endpoint(1, 0x10), Err(LookupError::NotListed));
    assert_eq!(v.mmio_endpoint(0x1000), Err(LookupError::NotListed));
}

#[test]
fn ranges_offsets_segments_mmio_and_unknown_nodes() {
    // IOMMU A (PCI 00:01.0) at 48, IOMMU B (MMIO) at 64; an unknown type-9
    // node of 8 bytes in between the endpoint nodes is skipped.
    let mut unknown = vec![9, 0, 8, 0];
    unknown.extend_from_slice(&[0xee; 4]);
    let t = viot(&[
        viommu_pci(0, 0x08),
        viommu_mmio(0xa00_0000),
        pci_range(0x1000, (0, 1), (0x100, 0x1ff), 48),
        unknown,
        pci_range(0x8000, (0, 0), (0x10, 0x1f), 64),
        mmio_endpoint(7, 0xb00_0000, 64),
    ]);
    let v = Viot::parse(&t).unwrap();
    assert_eq!(v.iommus().count(), 2);
    assert!(v.nodes().any(|n| matches!(
        n,
        Node::Unknown {
            ty: 9,
            length: 8,
            ..
        }
    )));
    // Bus 1 of segment 0 and of segment 1: (seg - start) << 16 + bdf - start.
    assert_eq!(v.pci_endpoint(0, 0x105).map(|e| e.id), Ok(0x1005));
    assert_eq!(v.pci_endpoint(1, 0x105).map(|e| e.id), Ok(0x1_1005));
    assert_eq!(v.pci_endpoint(0, 0x105).unwrap().iommu.offset, 48);
    let b = v.pci_endpoint(0, 0x12).unwrap();
    assert_eq!((b.iommu.offset, b.id), (64, 0x8002));
    assert_eq!(v.pci_endpoint(2, 0x105), Err(LookupError::NotListed));
    assert_eq!(v.pci_endpoint(0, 0x08), Err(LookupError::IsIommu));
    let m = v.mmio_endpoint(0xb00_0000).unwrap();
    assert_eq!((m.iommu.offset, m.id), (64, 7));
    assert_eq!(v.mmio_endpoint(0xa00_0000), Err(LookupError::IsIommu));
}

#[test]
fn header_level_errors() {
    let good = qemu_q35();
    let mut t = good.clone();
    t[60] ^= 1;
    assert_eq!(
        Viot::parse(&t).err(),
        Some(ViotError::Acpi(AcpiError::BadChecksum(*b"VIOT")))
    );
    assert_eq!(
        Viot::parse(&good[..good.len() - 1]).err(),
        Some(ViotError::Acpi(AcpiError::TooShort(*b"VIOT")))
    );
    let mut t = good.clone();
    t[..4].copy_from_slice(b"VIOX");
    fix_checksum(&mut t);
    assert_eq!(
        Viot::parse(&t).err(),
        Some(ViotError::Acpi(AcpiError::BadSignature(*b"VIOX")))
    );
    let mut t = good.clone();
    t[8] = 1;
    fix_checksum(&mut t);
    assert_eq!(Viot::parse(&t).err(), Some(ViotError::Revision(1)));
    // An ACPI table with no room for the node count and offset.
    assert_eq!(
        malformed(&table(b"VIOT", 0, &[1, 0, 48])),
        Malformed::Header
    );
    let mut t = good.clone();
    t[38..40].copy_from_slice(&40u16.to_le_bytes());
    fix_checksum(&mut t);
    assert_eq!(malformed(&t), Malformed::NodeOffset(40));
}

#[test]
fn each_node_malformation_is_named() {
    // One node more than the table holds.
    let mut t = qemu_q35();
    t[36] = 3;
    fix_checksum(&mut t);
    assert_eq!(
        malformed(&t),
        Malformed::NodeOutside {
            index: 2,
            offset: 88
        }
    );
    // A length past the end.
    let mut t = qemu_q35();
    t[64 + 2] = 25;
    fix_checksum(&mut t);
    assert_eq!(
        malformed(&t),
        Malformed::NodeOutside {
            index: 1,
            offset: 64
        }
    );
    // A length below its type's, and a zero-length unknown node.
    let mut t = qemu_q35();
    t[48 + 2] = 12;
    fix_checksum(&mut t);
    assert_eq!(
        malformed(&t),
        Malformed::NodeLength {
            offset: 48,
            ty: 3,
            length: 12
        }
    );
    let t = viot(&[viommu_pci(0, 8), vec![9, 0, 0, 0]]);
    assert_eq!(
        malformed(&t),
        Malformed::NodeLength {
            offset: 64,
            ty: 9,
            length: 0
        }
    );
    // output_node at a non-IOMMU node, at no node, past the table.
    for out in [64, 50, 0xfff0] {
        let t = viot(&[viommu_pci(0, 8), pci_range(0, (0, 0), (0, 0xff), out)]);
        assert_eq!(
            malformed(&t),
            Malformed::OutputNode {
                offset: 64,
                output_node: out
            }
        );
    }
    let t = viot(&[viommu_pci(0, 8), mmio_endpoint(1, 0x1000, 88)]);
    assert_eq!(
        malformed(&t),
        Malformed::OutputNode {
            offset: 64,
            output_node: 88
        }
    );
    // Inverted ranges, endpoint IDs past 32 bits.
    for (seg, bdf) in [((1, 0), (0, 0xff)), ((0, 0), (0x20, 0x10))] {
        let t = viot(&[viommu_pci(0, 8), pci_range(0, seg, bdf, 48)]);
        assert_eq!(malformed(&t), Malformed::InvertedRange { offset: 64 });
    }
    let t = viot(&[
        viommu_pci(0, 8),
        pci_range(u32::MAX - 0xfe, (0, 0), (0, 0xff), 48),
    ]);
    assert_eq!(malformed(&t), Malformed::EndpointOverflow { offset: 64 });
    let t = viot(&[
        viommu_pci(0, 8),
        pci_range(u32::MAX - 0xff, (0, 0), (0, 0xff), 48),
    ]);
    assert_eq!(
        Viot::parse(&t).unwrap().pci_endpoint(0, 0xff).map(|e| e.id),
        Ok(u32::MAX)
    );
}

/// `iommu-map` cells as a property value.
fn prop(entries: &[[u32; 4]]) -> Vec<u8> {
    entries
        .iter()
        .flatten()
        .flat_map(|c| c.to_be_bytes())
        .collect()
}

/// The `reg` QEMU virt gives the virtio-iommu node: `<bdf << 8 0 0 0 0>`.
fn reg(bdf: u32) -> Vec<u8> {
    prop(&[[bdf << 8, 0, 0, 0]])
        .into_iter()
        .chain([0; 4])
        .collect()
}

#[test]
fn qemu_virt_iommu_map_skips_the_iommu_itself() {
    // virtio-iommu at 00:01.0 (RID 8), phandle 0x8003.
    let iommu = DtIommu::from_node(Some(&reg(8)), Some(0x8003), Some(1)).unwrap();
    assert_eq!(
        iommu,
        DtIommu {
            bdf: 8,
            phandle: 0x8003
        }
    );
    let map = prop(&[[0, 0x8003, 0, 8], [9, 0x8003, 9, 0xffff - 8]]);
    assert_eq!(iommu.endpoint_id(&map, None, 0x10), Ok(0x10));
    assert_eq!(iommu.endpoint_id(&map, None, 0x7), Ok(0x7));
    assert_eq!(iommu.endpoint_id(&map, None, 0xffff), Ok(0xffff));
    assert_eq!(iommu.endpoint_id(&map, None, 8), Err(DtError::IsIommu(8)));
    // A map that covers the IOMMU's RID is still not followed for it.
    let all = prop(&[[0, 0x8003, 0, 0x10000]]);
    assert_eq!(iommu.endpoint_id(&all, None, 8), Err(DtError::IsIommu(8)));
    // Entries for another IOMMU, with offsets and a mask.
    let map = prop(&[[0, 0x9000, 0, 0x100], [0x100, 0x8003, 0x40, 0x100]]);
    assert_eq!(
        iommu.endpoint_id(&map, None, 0x10),
        Err(DtError::Map(MapError::NotMapped(0x10)))
    );
    assert_eq!(iommu.endpoint_id(&map, None, 0x110), Ok(0x50));
    assert_eq!(iommu.endpoint_id(&map, Some(0xfff8), 0x112), Ok(0x50));
    assert_eq!(
        iommu.endpoint_id(&map[..20], None, 0x110),
        Err(DtError::Map(MapError::Malformed))
    );
}

#[test]
fn virtio_iommu_node_checks() {
    let good = reg(0x18);
    assert_eq!(
        DtIommu::from_node(Some(&good), Some(5), Some(1))
            .unwrap()
            .bdf,
        0x18
    );
    assert_eq!(
        DtIommu::from_node(None, Some(5), Some(1)),
        Err(DtError::BadReg)
    );
    assert_eq!(
        DtIommu::from_node(Some(&good[..16]), Some(5), Some(1)),
        Err(DtError::BadReg)
    );
    // Address-space bits (a BAR's address, not the function's own node).
    let mut bar = good.clone();
    bar[0] = 0x02;
    assert_eq!(
        DtIommu::from_node(Some(&bar), Some(5), Some(1)),
        Err(DtError::BadReg)
    );
    assert_eq!(
        DtIommu::from_node(Some(&good), Some(5), Some(2)),
        Err(DtError::IommuCells(Some(2)))
    );
    assert_eq!(
        DtIommu::from_node(Some(&good), Some(5), None),
        Err(DtError::IommuCells(None))
    );
    assert_eq!(
        DtIommu::from_node(Some(&good), None, Some(1)),
        Err(DtError::NoPhandle)
    );
}
