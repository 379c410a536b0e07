#!/usr/bin/env python3
"""Writes the hand-built seeds of the backend fuzz targets (vtd_dmar,
vtd_fault, smmuv3_event, virtio_reply) into fuzz/seeds/<target>/.

Every seed is laid out from the specification (VT-d 4.x chapter 8 and 11.4.14,
SMMUv3 7.3 and 6.3.14, Arm DEN 0049 IORT, the pci-iommu DT binding,
virtio 1.3 section 5.13) with the values QEMU 10 presents where we measured
them (/work/shared/reference/qemu-iommu-models.md and the crates' unit
tests). Run from anywhere: python3 fuzz/seeds/tools/backend_seeds.py
"""
import os
import struct

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def checksum(t, at):
    t = bytearray(t)
    t[at] = 0
    t[at] = (-sum(t)) & 0xFF
    return t


# ---------------------------------------------------------------- ACPI / DMAR
def sdt(sig, body, revision=1, oem=b"BOCHS ", table=b"BXPC    "):
    t = bytearray(sig)
    t += struct.pack("<IBB", 36 + len(body), revision, 0)
    t += oem + table + struct.pack("<I", 1) + b"BXPC" + struct.pack("<I", 1)
    t += body
    return checksum(t, 9)


def scope(kind, bus, path, enum_id=0):
    s = bytearray([kind, 6 + 2 * len(path), 0, 0, enum_id, bus])
    for d, f in path:
        s += bytes([d, f])
    return s


def drhd(flags, base, scopes, segment=0, size=0):
    body = b"".join(scopes)
    return struct.pack("<HHBBHQ", 0, 16 + len(body), flags, size, segment, base) + body


def rmrr(base, limit, scopes, segment=0):
    body = b"".join(scopes)
    return struct.pack("<HHHHQQ", 1, 24 + len(body), 0, segment, base, limit) + body


def atsr(flags, scopes, segment=0):
    body = b"".join(scopes)
    return struct.pack("<HHBBH", 2, 8 + len(body), flags, 0, segment) + body


def dmar(structs, haw=47, flags=1):
    return sdt(b"DMAR", bytes([haw, flags]) + bytes(10) + b"".join(structs))


def rsdp_image(tables, xsdt=True):
    """RSDP at 0, then the XSDT (or RSDT), then the tables, 16-byte aligned."""
    at, placed = 0x40, []
    body_len = (8 if xsdt else 4) * len(tables)
    root_at = at
    at += (36 + body_len + 15) & ~15
    for t in tables:
        placed.append(at)
        at += (len(t) + 15) & ~15
    fmt = "<Q" if xsdt else "<I"
    root = sdt(b"XSDT" if xsdt else b"RSDT", b"".join(struct.pack(fmt, p) for p in placed))
    r = bytearray(b"RSD PTR ") + b"\0" + b"BOCHS " + bytes([2 if xsdt else 0])
    r += struct.pack("<I", 0 if xsdt else root_at)
    r = checksum(r, 8)
    if xsdt:
        r += struct.pack("<IQB3s", 36, root_at, 0, b"\0\0\0")
        r = checksum(r, 32)
    img = bytearray(at)
    img[0 : len(r)] = r
    img[root_at : root_at + len(root)] = root
    for p, t in zip(placed, tables):
        img[p : p + len(t)] = t
    return img


# QEMU 10 q35 + intel-iommu: one DRHD at 0xfed90000, flags 0 (explicit
# scopes): the I/O APIC on the pseudo bus 0xff, then each root-bus device
# (host bridge, VGA, edu at 00:02.0, the LPC/SATA/SMBus functions of 00:1f),
# a PCIe root port as a sub-hierarchy; with device-iotlb an ATSR (all ports).
QEMU_Q35 = dmar(
    [
        drhd(
            0,
            0xFED9_0000,
            [
                scope(3, 0xFF, [(0, 0)]),
                scope(1, 0, [(0, 0)]),
                scope(1, 0, [(1, 0)]),
                scope(1, 0, [(2, 0)]),
                scope(2, 0, [(0x1C, 0)]),
                scope(1, 0, [(0x1F, 0)]),
                scope(1, 0, [(0x1F, 2)]),
                scope(1, 0, [(0x1F, 3)]),
            ],
        ),
        atsr(1, []),
    ],
    haw=47,
)
write("vtd_dmar", "qemu-q35-intel-iommu", QEMU_Q35)
write("vtd_dmar", "qemu-q35-aw39-no-ir", dmar([drhd(0, 0xFED9_0000, [scope(3, 0xFF, [(0, 0)]), scope(1, 0, [(2, 0)])])], haw=38, flags=0))
# A client platform: a graphics unit with one endpoint, then the catch-all
# INCLUDE_PCI_ALL unit with I/O APIC and HPET scopes, RMRRs for USB and
# graphics stolen memory, an ATSR listing one root port, and an RHSA (an
# unknown type to the parser).
rhsa = struct.pack("<HHIQI", 3, 20, 0, 0xFED9_1000, 0)
write(
    "vtd_dmar",
    "client-two-units-rmrr-atsr",
    dmar(
        [
            drhd(0, 0xFED9_0000, [scope(1, 0, [(2, 0)])]),
            drhd(1, 0xFED9_1000, [scope(3, 0xF0, [(0x1F, 0)], enum_id=2), scope(4, 0, [(0x1F, 0)])], size=1),
            rmrr(0x3C00_0000, 0x3FFF_FFFF, [scope(1, 0, [(2, 0)])]),
            rmrr(0x000E_0000, 0x000F_FFFF, [scope(1, 0, [(0x14, 0)]), scope(1, 0, [(0x1A, 0)])]),
            atsr(0, [scope(2, 0, [(0x1C, 0)])]),
            rhsa,
        ],
        haw=38,
        flags=5,
    ),
)
# A scope path through two bridges: 00:1c.0 -> 00.0 -> 00.0.
write("vtd_dmar", "deep-scope-path", dmar([drhd(0, 0x1000, [scope(1, 0, [(0x1C, 0), (0, 0), (0, 0)])]), drhd(1, 0x2000, [])]))
# Malformed variants (checksums kept valid so the parser reaches them).
write("vtd_dmar", "bad-structure-length-zero", dmar([drhd(1, 0x1000, []), struct.pack("<HH", 0, 0) + bytes(12)]))
write("vtd_dmar", "bad-structure-length-past-end", dmar([drhd(1, 0x1000, []), struct.pack("<HHBBHQ", 0, 0x200, 0, 0, 0, 0x2000)]))
write("vtd_dmar", "short-drhd-and-trailing-fragment", dmar([struct.pack("<HHI", 0, 8, 0), b"\x01\x00"]))
write("vtd_dmar", "bad-scopes", dmar([drhd(0, 0x1000, [scope(1, 0, [(2, 0)]), bytes([1, 5, 0, 0, 0, 0]), bytes([1, 40, 0, 0])])]))
write("vtd_dmar", "rmrr-inverted-and-empty-scope", dmar([rmrr(0x2000, 0x1000, [scope(1, 0, [])]), rmrr(0, 0xFFFF_FFFF_FFFF_FFFF, [])]))
t = bytearray(QEMU_Q35)
t[40] ^= 0xFF
write("vtd_dmar", "bad-checksum", t)
write("vtd_dmar", "truncated-header", QEMU_Q35[:30])
# The RSDP -> XSDT / RSDT walk, with another table listed first.
apic = sdt(b"APIC", struct.pack("<II", 0xFEE0_0000, 1))
write("vtd_dmar", "rsdp-xsdt-apic-dmar", rsdp_image([apic, QEMU_Q35]))
write("vtd_dmar", "rsdp-rsdt-dmar", rsdp_image([QEMU_Q35], xsdt=False))
bad = rsdp_image([apic, QEMU_Q35])
bad[0x40 + 36 + 8 : 0x40 + 36 + 16] = struct.pack("<Q", 0xDEAD_0000)
write("vtd_dmar", "rsdp-xsdt-entry-nowhere", bad)

# ---------------------------------------------------------------- VT-d faults
# VER, CAP, ECAP as QEMU 10 (aw-bits 48) and 7.2 report them, then records.
def regs(ver, cap, ecap):
    return struct.pack("<IQQ", ver, cap, ecap)


def frcd(lo, hi):
    return struct.pack("<QQ", lo, hi)


QEMU10 = regs(0x10, 0x00D2_008C_222F_0606, 0x0000_0000_00F0_0F4A)
# Measured on QEMU: edu at 00:01.0 writing an unmapped IOVA (PV all ones, no PP).
write("vtd_fault", "qemu10-edu-write-unmapped", QEMU10 + frcd(0x1_2345_6000, 0x80FF_FF05_0000_0008))
write("vtd_fault", "qemu72-read-context-not-present", regs(0x10, 0x00D2_008C_2226_0206, 0xF0_0F4A) + frcd(0x5000, 1 << 63 | 1 << 62 | 0x02 << 32 | 0x0110))
write(
    "vtd_fault",
    "scalable-pasid-records",
    regs(0x10, 0x00D2_008C_222F_0606, 0x0000_4800_80F0_0F4A)
    + frcd(0xDEAD_BEEF, 1 << 63 | 0x12345 << 40 | 0x59 << 32 | 1 << 31 | 0x0208)
    + frcd(0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
    + frcd(0, 0),
)
write("vtd_fault", "max-fault-records-far-offset", regs(0x60, 0x00FF_0000_03FF_0000, 0xFFFF_FFFF_FFFF_FFFF))

# ---------------------------------------------------------------- SMMUv3
def evt(w):
    return struct.pack("<8I", *w)


# Selector 0: event records as QEMU 10 writes them.
write("smmuv3_event", "qemu-translation-fault", b"\x00" + evt([0x10, 8, 0, 2 << 8, 0x3000_0040, 0, 0, 0]))
write(
    "smmuv3_event",
    "events-mixed",
    b"\x00"
    + evt([0x04, 9, 0, 0, 0x1234, 0, 0, 0])  # C_BAD_STE: no address
    + evt([0x02 | 1 << 11 | 5 << 12, 0x100, 0, 0, 0, 0, 0, 0])  # C_BAD_STREAMID with SSID
    + evt([0x13, 0x1_0010, 0, 1 << 7 | 1 << 3 | 2 << 8, 0xDEAD_B000, 0, 0x8000_1000, 0])  # S2 read permission
    + evt([0x0B, 3, 0, 1 << 8, 0x4000, 0, 0, 0])  # walk abort, CLASS TT
    + evt([0x77, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF]),
)


def iort_table():
    # ITS group, one SMMUv3 at 0x0905_0000 (coherent), a root complex on
    # segment 0 mapping RIDs 0x100..=0x1ff to the ITS and 0..=0xffff to the
    # SMMU's StreamIDs 0x1_0000 + RID, as QEMU virt builds it (build_iort).
    its_off, smmu_off = 48, 72
    its = bytearray(24)
    its[0] = 0
    its[1:3] = struct.pack("<H", 24)
    its[16:20] = struct.pack("<I", 1)
    smmu = bytearray(68)
    smmu[0] = 4
    smmu[1:3] = struct.pack("<H", 68)
    smmu[3] = 4
    smmu[16:24] = struct.pack("<Q", 0x0905_0000)
    smmu[24:28] = struct.pack("<I", 1)
    rc = bytearray(36 + 40)
    rc[0] = 2
    rc[1:3] = struct.pack("<H", len(rc))
    rc[8:12] = struct.pack("<I", 2)
    rc[12:16] = struct.pack("<I", 36)
    rc[36:56] = struct.pack("<5I", 0x100, 0xFF, 0, its_off, 0)
    rc[56:76] = struct.pack("<5I", 0, 0xFFFF, 0x1_0000, smmu_off, 0)
    body = bytearray(12)
    body[0:4] = struct.pack("<I", 3)
    body[4:8] = struct.pack("<I", its_off)
    t = bytearray(b"IORT") + struct.pack("<IBB", 0, 3, 0) + b"BOCHS BXPC    " + struct.pack("<I", 1) + b"BXPC" + struct.pack("<I", 1)
    t += body + its + smmu + rc
    t[4:8] = struct.pack("<I", len(t))
    return checksum(t, 9)


IORT = iort_table()
write("smmuv3_event", "iort-qemu-virt", b"\x01" + IORT)
bad = bytearray(IORT)
bad[len(bad) - 76 + 8] = 9  # nine ID mappings: the array runs past the node
write("smmuv3_event", "iort-id-array-past-node", b"\x01" + checksum(bad, 9))
bad = bytearray(IORT)
bad[36:40] = struct.pack("<I", 0xFFFF_FFFF)  # more nodes than the table holds
write("smmuv3_event", "iort-node-count-huge", b"\x01" + checksum(bad, 9))


def dt_lookup(mask, phandle, rid, entries):
    b = struct.pack(">III", mask, phandle, rid)
    for e in entries:
        b += struct.pack(">4I", *e)
    return b"\x02" + b


write("smmuv3_event", "dt-qemu-virt-iommu-map", dt_lookup(0, 0x8002, 0x8, [(0, 0x8002, 0, 0x1_0000)]))
write("smmuv3_event", "dt-several-entries-mask", dt_lookup(0xFF0F, 7, 0x0213, [(0x000, 7, 0x100, 0x100), (0x100, 9, 0, 0x100), (0x200, 7, 0x800, 0x100)]))
write("smmuv3_event", "dt-sid-overflow", dt_lookup(0, 0, 0x10, [(0, 1, 0xFFFF_FFF0, 0x100)]))
write("smmuv3_event", "dt-malformed-length", dt_lookup(0, 0, 0, [(0, 1, 0, 1)])[:-3])
# Selector 3: GERROR bits raised one after another.
write("smmuv3_event", "gerror-sequence", b"\x03" + struct.pack("<6I", 0x8 | 1 << 4, 0, 0x1, 0x4, 0x100, 0xFFFF_FFFF))

# ---------------------------------------------------------------- virtio-iommu
def resv(subtype, start, end, length=20):
    return struct.pack("<HHB3xQQ", 1, length, subtype, start, end)[: 4 + length] if length <= 20 else struct.pack("<HHB3xQQ", 1, length, subtype, start, end) + bytes(length - 20)


# Selector 0: PROBE property lists (probe_size bytes; QEMU's is 512).
probe = bytearray(512)
p = resv(1, 0xFEE0_0000, 0xFEEF_FFFF)  # q35's MSI window, as QEMU reports it
probe[: len(p)] = p
write("virtio_reply", "probe-qemu-q35-msi", b"\x00" + probe)
props = resv(0, 0x1000, 0x1FFF) + struct.pack("<HH", 7, 4) + b"\xaa" * 4 + resv(1, 0x800_0000, 0x800_FFFF) + resv(9, 0x4000_0000, 0x4000_0FFF, length=28)
write("virtio_reply", "probe-regions-and-unknown", b"\x00" + props + bytes(16))
write("virtio_reply", "probe-nine-regions", b"\x00" + b"".join(resv(0, 0x10_0000 * i, 0x10_0000 * i + 0xFFF) for i in range(1, 10)))
write("virtio_reply", "probe-overlapping-regions", b"\x00" + resv(0, 0x1000, 0x5FFF) + resv(1, 0x3000, 0x3FFF))
write("virtio_reply", "probe-top-of-address-space", b"\x00" + resv(0, 0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF))
write("virtio_reply", "probe-last-byte", b"\x00" + resv(1, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF))
write("virtio_reply", "probe-inverted", b"\x00" + resv(0, 0x2000, 0x1000))
write("virtio_reply", "probe-short-resv-mem", b"\x00" + resv(0, 0, 0xFFF)[:4] + bytes(8))
write("virtio_reply", "probe-length-past-end", b"\x00" + struct.pack("<HH", 1, 40) + bytes(20))


def fault(reason, flags, endpoint, address):
    return struct.pack("<B3xIIIQ", reason, flags, endpoint, 0, address)


write(
    "virtio_reply",
    "faults-qemu",
    b"\x01"
    + fault(2, 0x102, 0x10, 0x80_0000_1004)  # write to a read-only mapping
    + fault(1, 0x1, 0x18, 0)  # domain fault, no address
    + fault(0, 0x7, 0x8, 0x1234)  # address given but F_ADDRESS clear
    + fault(0xFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF),
)


def tail(kind, used, needed, status):
    return struct.pack("<BIIB", kind, used, needed, status)


write(
    "virtio_reply",
    "reply-tails",
    b"\x02"
    + tail(0, 4, 4, 0)  # ATTACH, OK
    + tail(2, 4, 4, 5)  # MAP, RANGE
    + tail(3, 4, 4, 6)  # UNMAP, NOENT
    + tail(4, 516, 516, 0)  # PROBE with a 512-byte property list
    + tail(4, 100, 516, 0)  # short PROBE reply
    + tail(1, 0, 4, 0)  # nothing written
    + tail(0, 4, 4, 9)  # undefined status
    + tail(0, 0xFFFF_FFFF, 4, 0xFF),
)
