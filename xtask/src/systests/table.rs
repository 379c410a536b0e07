//! Every QEMU system test: each scenario once, with the configurations it
//! runs on. [`super::expand`] turns [`GROUPS`] into the rows, in order: each
//! group's configurations one after the other, and under each configuration
//! the group's scenarios. How to add one: see the module doc of
//! [`super`](crate::systests).

use super::{Arch, Config, Expect, Group, Scenario};

/// An edu that may DMA anywhere. Its default mask, (1 << 28) - 1, would cut
/// IOVAs above 256 MiB and virt's RAM, which starts at 1 GiB.
const EDU: &str = "edu,dma_mask=0xffffffffffffffff";

/// aarch64 on QEMU's virt machine, no configuration of its own.
const VIRT: Config = Config {
    arch: Arch::Aarch64,
    name: "",
    vars: &[
        ("machine", "virt"),
        // An edu that DMAs to RAM by physical address: RAM on virt starts
        // at 1 GiB, so widen the mask, or the DMA lands elsewhere.
        ("edu", EDU),
        // The CPU's page-table format.
        ("page_table", "LPAE"),
        // Where virtio-iommu endpoint IDs come from.
        ("firmware", "the device tree"),
    ],
};

/// x86_64 on QEMU's q35 machine, no configuration of its own.
const Q35: Config = Config {
    arch: Arch::X86_64,
    name: "",
    vars: &[
        ("machine", "q35"),
        // Our buffers are below 256 MiB, so the default dma_mask is fine here.
        ("edu", "edu"),
        ("page_table", "x86-64"),
        ("firmware", "VIOT"),
    ],
};

/// Every group of system tests, in the order they run.
pub const GROUPS: &[Group] = &[
    Group {
        example: "edu-dma",
        configs: &[VIRT],
        scenarios: &[
            EDU_DMA,
            Scenario {
                variant: "entered-at-el2",
                summary: "edu DMA on virt,virtualization=on: the boot stub drops an ordinary example from EL2 to EL1",
                machine: "virt,virtualization=on",
                require: &[
                    "edu-dma: starting on aarch64 QEMU virt, EL1,",
                    "edu-dma: no IOMMU, 4096 bytes RAM->edu->RAM",
                ],
                ..EDU_DMA
            },
            Scenario {
                // QEMU's virt defaults to a GICv2; INTx are GICv3 SPIs here.
                machine: "virt,gic-version=3",
                require: &[
                    "edu-dma: INTx pin A of 00:01.0 -> INTID 36",
                    "edu-dma: intx: 3 raises -> 3 handler runs, none more within 200 ms after the acks",
                    "edu-dma: intx: raise while masked -> nothing within 200 ms (status 0x40 held), unmask -> 1 handler run",
                    "edu-dma: scenario `intx` passed",
                ],
                ..EDU_INTX
            },
        ],
    },
    Group {
        example: "edu-dma",
        configs: &[Q35],
        scenarios: &[
            EDU_DMA,
            Scenario {
                require: &[
                    "edu-dma: INTx pin A of 00:01.0 -> GSI 21 vector 0x55",
                    "edu-dma: intx: 3 raises -> 3 handler runs, none more within 200 ms after the acks",
                    "edu-dma: intx: raise while masked -> nothing within 200 ms (status 0x40 held), unmask -> 1 handler run",
                    "edu-dma: scenario `intx` passed",
                ],
                ..EDU_INTX
            },
        ],
    },
    Group {
        example: "two-step-sw",
        configs: &[VIRT, Q35],
        scenarios: &[Scenario {
            summary: "iova-core two-step API bare-metal, software-walked {page_table} table, edu DMA",
            iommu: "software (iova-core PageTable)",
            require: &["two-step-sw: two-step over a software"],
            ..EDU_DMA
        }],
    },
    Group {
        example: "smmuv3-edu",
        configs: &[VIRT],
        scenarios: SMMUV3,
    },
    Group {
        example: "vtd-edu",
        configs: &[VTD_AW39, VTD_AW48, VTD_SCALABLE, VTD_FIRST_LEVEL],
        scenarios: VTD_CHECKS,
    },
    Group {
        example: "vtd-edu",
        configs: &[VTD_FIRST_LEVEL],
        scenarios: &[Scenario {
            variant: "9-top-iova",
            summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): the domain maps the lower canonical half only (47-bit IOVAs); an allocator over its last page hands out IOVA 0x7fff_ffff_f000 and edu DMA RAM -> device -> RAM through it, bytes checked",
            // dma_mask: edu must not mask the 47-bit IOVA.
            devices: &[EDU],
            append: Some("vtd-edu.checks=9"),
            require: &[
                "translation mode: {mode}",
                "47-bit IOVAs (the lower canonical half)",
                "vtd-edu: check 9 OK: 4096 bytes RAM",
                "through IOVA 0x7ffffffff000, the last page below 1 << 47 (first-level tables)",
                "selected check(s) passed with {tables} tables",
            ],
            ..VTD_CHECK
        }],
    },
    Group {
        example: "vtd-edu",
        configs: &[Q35],
        scenarios: VTD_OTHERS,
    },
    Group {
        example: "vtd-edu",
        configs: &[Q35],
        scenarios: VTD_IR_SCENARIOS,
    },
    Group {
        example: "virtio-iommu-edu",
        configs: &[VIRT, Q35],
        scenarios: VIRTIO_IOMMU_EDU,
    },
    Group {
        example: "virtio-iommu-edu",
        configs: &[VIRT, Q35],
        scenarios: VIRTIO_IOMMU_BLK,
    },
    Group {
        example: "virtio-iommu-edu",
        configs: &[VIRT_16K, VIRT_64K, Q35_16K, Q35_64K],
        scenarios: VIRTIO_IOMMU_GRANULE,
    },
    Group {
        example: "blk-noiommu",
        configs: &[VIRT, Q35],
        scenarios: &[Scenario {
            summary: "virtio-blk-pci (iommu_platform=on) with no IOMMU, identity Hal: write/read-back check, image verified on the host; stale-buffer probe shows the device reaches an unshared buffer; an address with nothing there breaks the device (NEEDS_RESET), canary intact",
            disk: true,
            append: Some("check"),
            require: &[
                "blk-noiommu: virtio-blk initialised",
                "initial pattern checked",
                "wrote sectors 64..128 (32768 bytes) in 13 requests",
                "write pattern checked",
                "the probe detects reachability",
                "what a blocked DMA looks like in QEMU",
                "blk-noiommu: scenario `check` passed",
            ],
            ..Scenario::BASE
        }],
    },
    Group {
        example: "blk-noiommu",
        configs: &[VIRT, Q35],
        scenarios: &[Scenario {
            variant: "bench",
            summary: "virtio-blk-pci with no IOMMU: check, then sequential 4 KiB / 64 KiB reads of 8 MiB (blk-bench lines, the baseline for the IOMMU rows)",
            disk: true,
            append: Some("bench"),
            require: &[
                "write pattern checked",
                "blk-bench: none 4KiB requests=2048 bytes=8388608",
                "blk-bench: none 64KiB requests=128 bytes=8388608",
                "blk-noiommu: scenario `bench` passed",
            ],
            ..Scenario::BASE
        }],
    },
];

/// edu DMA RAM -> device -> RAM, no IOMMU.
const EDU_DMA: Scenario = Scenario {
    summary: "edu DMA RAM -> device -> RAM on {machine}",
    devices: &["{edu}"],
    require: &["edu-dma: no IOMMU, 4096 bytes RAM->edu->RAM"],
    ..Scenario::BASE
};

/// edu's legacy INTx, no MSI: routed by `platform::intx` (q35: ICH9 PIRQ ->
/// I/O APIC GSI; virt: the DT interrupt-map's GIC SPI); three raises run
/// the handler three times, none after the acks; a raise while masked
/// waits for the unmask. The rows name the GSI / INTID QEMU wires slot 1
/// pin A to, so a wrong route fails them.
const EDU_INTX: Scenario = Scenario {
    variant: "intx",
    summary: "edu legacy INTx on {machine}: routed GSI/INTID, handler per interrupt acks edu, exactly one run per raise, masked raise held until unmask, bounded waits",
    devices: &["{edu}"],
    append: Some("intx"),
    ..Scenario::BASE
};

/// What the smmuv3-edu scenarios share: the SMMUv3 of virt, one edu.
const SMMU: Scenario = Scenario {
    iommu: "SMMUv3",
    machine: "virt,iommu=smmuv3",
    devices: &[EDU],
    ..Scenario::BASE
};

const SMMUV3: &[Scenario] = &[
    Scenario {
        variant: "map",
        summary: "iommu-arm-smmuv3 stage 1: buffer at IOVA != PA, edu DMA RAM -> device -> RAM checked; unmapped IOVA faults as typed events",
        append: Some("map"),
        require: &[
            "demo: el: EL1",
            "smmuv3-edu: 4096 bytes RAM -> edu -> RAM through the SMMU, every byte checked",
            "translation-fault events, all for StreamID",
            "smmuv3-edu: scenario `map` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "batch",
        summary: "iommu-arm-smmuv3: 64 scattered pages linked with one sync, DMA through all; unlink of the batch = 1 TLBI + 1 CMD_SYNC",
        append: Some("batch"),
        require: &[
            "DMA through all 64 checked; unlink + sync: 1 TLBI, 1 CMD_SYNC",
            "smmuv3-edu: scenario `batch` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "stale",
        summary: "iommu-arm-smmuv3: unlink + sync, DMA to the old (cached) IOVA blocked and reported; 4 KiB fault storm reported as lost events",
        append: Some("stale"),
        require: &[
            "blocked, page unchanged",
            "control: PTE cleared without TLBI -> device still wrote the page",
            "4 KiB fault storm:",
            "loss reported",
            "smmuv3-edu: scenario `stale` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "perm",
        summary: "iommu-arm-smmuv3: device write to a read-only mapping: permission fault, memory unchanged",
        append: Some("perm"),
        require: &[
            "blocked, page unchanged",
            "permission faults",
            "smmuv3-edu: scenario `perm` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "second-fn",
        summary: "iommu-arm-smmuv3: a second edu nobody attached is blocked and reported with its StreamID",
        devices: &[EDU, EDU],
        append: Some("second-fn"),
        require: &[
            "unattached function blocked, page unchanged",
            "smmuv3-edu: scenario `second-fn` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "block",
        summary: "iommu-arm-smmuv3: a 2 MiB-aligned link becomes a block entry, DMA through it checked",
        append: Some("block"),
        require: &[
            "is one block entry; DMA into its last page checked",
            "smmuv3-edu: scenario `block` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "s2",
        summary: "iommu-arm-smmuv3 stage 2 (VMID, VTTBR) from EL2, as a hypervisor gives a device to a guest: DMA through IPAs checked, stage-2 fault reported",
        machine: "virt,iommu=smmuv3,virtualization=on",
        append: Some("s2"),
        require: &[
            "demo: el: EL2",
            "stage 2 (4 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "nested",
        summary: "iommu-arm-smmuv3 nested stage 1 + stage 2 from EL2: IOVA -> IPA -> PA DMA checked, stage-2 unmap blocks it",
        machine: "virt,iommu=smmuv3,virtualization=on",
        append: Some("nested"),
        require: &[
            "demo: el: EL2",
            "nested: IOVA",
            "4096 bytes checked; stage-2 unmap faults",
            "smmuv3-edu: scenario `nested` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "gran16k",
        summary: "iommu-arm-smmuv3 stage 1 with a 16 KiB granule: DMA checked, range TLBI in granule units, unmapped page faults",
        append: Some("gran16k"),
        require: &[
            "smmuv3-edu: 16 KiB granule: DMA through IOVA",
            "smmuv3-edu: scenario `gran16k` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "gran64k",
        summary: "iommu-arm-smmuv3 stage 1 with a 64 KiB granule: DMA checked, range TLBI in granule units, unmapped page faults",
        append: Some("gran64k"),
        require: &[
            "smmuv3-edu: 64 KiB granule: DMA through IOVA",
            "smmuv3-edu: scenario `gran64k` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "s2-16k",
        summary: "iommu-arm-smmuv3 stage 2 from EL2 with a 16 KiB granule: DMA through IPAs checked, stage-2 fault reported",
        machine: "virt,iommu=smmuv3,virtualization=on",
        append: Some("s2-16k"),
        require: &[
            "demo: el: EL2",
            "smmuv3-edu: stage 2 (16 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2-16k` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "s2-64k",
        summary: "iommu-arm-smmuv3 stage 2 from EL2 with a 64 KiB granule: DMA through IPAs checked, stage-2 fault reported",
        machine: "virt,iommu=smmuv3,virtualization=on",
        append: Some("s2-64k"),
        require: &[
            "demo: el: EL2",
            "smmuv3-edu: stage 2 (64 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2-64k` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "two-domains",
        summary: "iommu-arm-smmuv3: two edus in two domains (two ASIDs) map one IOVA to different pages; each reaches only its own, also after one unmaps",
        devices: &[EDU, EDU],
        append: Some("two-domains"),
        require: &[
            "each device reached only its own; after domain A's unmap, A's device faults",
            "smmuv3-edu: scenario `two-domains` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "storm",
        summary: "iommu-arm-smmuv3: a 4 KiB DMA to an unmapped IOVA (1024 QEMU events) into a 2048-entry event queue: all drained, typed, in order, none lost",
        append: Some("storm"),
        require: &[
            "smmuv3-edu: 4 KiB fault storm: all 1024 translation faults drained in order",
            "smmuv3-edu: scenario `storm` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "irq",
        summary: "iommu-arm-smmuv3 set_interrupts: a fault pulses the eventq SPI, a refused command the gerror SPI (seen pending in the GIC distributor); off, neither",
        append: Some("irq"),
        require: &[
            "interrupts off -> pending (false, false); on -> eventq true, gerror true",
            "smmuv3-edu: scenario `irq` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "its-msi",
        summary: "iommu-arm-smmuv3 + GICv3 ITS (gic-version=3,its=on): a stage-1 domain's MSI window (iova_core MsiWindow at 0x800_0000, reserved in the allocator) maps GITS_TRANSLATER; edu's MSI to the IOVA it returns arrives as LPI 8192 (QEMU trace: SMMU translated the doorbell IOVA, ITS translated DeviceID/EventID); window torn down: no LPI, F_TRANSLATION for edu's StreamID",
        machine: "virt,gic-version=3,its=on,iommu=smmuv3",
        append: Some("its-msi"),
        require: &[
            "smmuv3-edu: its-msi: MSI window [0x8000000, 0x8100000) reserved; doorbell page 0x8090000 mapped at IOVA 0x8000000",
            "-> IOVA 0x8000040 -> GITS_TRANSLATER 0x8090040: LPI 8192 received",
            "smmuv3-edu: its-msi: edu MSI (capability at",
            "smmuv3-edu: its-msi: MSI window torn down: no LPI, SMMU event F_TRANSLATION (stage 1) for StreamID",
            "smmuv3-edu: scenario `its-msi` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "its-msi-s2",
        summary: "iommu-arm-smmuv3 stage 2 from EL2 + GICv3 ITS: a stage-2 domain's MSI window (write-only at stage 2) maps GITS_TRANSLATER at IPA 0x800_0000, as a hypervisor maps a guest's doorbell; edu's MSI to that IPA arrives as LPI 8192; window torn down: no LPI, stage-2 F_TRANSLATION",
        machine: "virt,gic-version=3,its=on,iommu=smmuv3,virtualization=on",
        append: Some("its-msi-s2"),
        require: &[
            "smmuv3-edu: CPU at EL2",
            "smmuv3-edu: its-msi-s2: MSI window [0x8000000, 0x8100000) reserved; doorbell page 0x8090000 mapped at IPA 0x8000000",
            "-> IPA 0x8000040 -> GITS_TRANSLATER 0x8090040: LPI 8192 received",
            "smmuv3-edu: its-msi-s2: MSI window torn down: no LPI, SMMU event F_TRANSLATION (stage 2) for StreamID",
            "smmuv3-edu: scenario `its-msi-s2` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "map-virt91",
        summary: "iommu-arm-smmuv3 on a stage-1-only SMMU (virt-9.1: IDR0.S2P = 0): the driver adapts, map scenario passes",
        iommu: "SMMUv3 (stage 1 only)",
        machine: "virt-9.1,iommu=smmuv3",
        append: Some("map"),
        require: &[
            "stage1 true stage2 false nesting false",
            "smmuv3-edu: scenario `map` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "s2-refused-virt91",
        summary: "iommu-arm-smmuv3: a stage-2 domain asked for at EL2 on a stage-1-only SMMU is refused with a typed error (the guest reports failure on purpose)",
        iommu: "SMMUv3 (stage 1 only)",
        machine: "virt-9.1,iommu=smmuv3,virtualization=on",
        append: Some("s2"),
        expect: Expect::Status(1),
        require: &[
            "demo: el: EL2",
            "error: smmuv3: translation stage not supported by the SMMU",
        ],
        ..SMMU
    },
    Scenario {
        variant: "blk",
        summary: "virtio-blk-pci (iommu_platform=on) behind the SMMUv3 (stage 1, strict) through iova-virtio-hal: write/read-back check with 0 SMMU events, image verified on the host; the unshared buffer's old IOVA is unreachable (canary intact, F_TRANSLATION for the disk's StreamID inside it)",
        // No edu: the disk is the only device.
        disk: true,
        devices: &[],
        append: Some("blk"),
        require: &[
            "smmuv3-edu: pool probe: 4 KiB buffer B' copied into pool slot",
            "it went to the pool, B' canary intact",
            "smmuv3-edu: deferred probe: after the queue flush B's old IOVA is blocked, as under strict",
            "demo: el: EL1",
            "every stream aborts until attached",
            "before attach: STE invalid (V = 0): its DMA aborts (default deny)",
            "smmuv3-edu: virtio-blk initialised",
            "initial pattern checked",
            "wrote sectors 64..128 (32768 bytes) in 13 requests",
            "write pattern checked",
            "smmuv3-edu: blk: 0 SMMU events during the check: every DMA of its 40 requests went to an IOVA we mapped",
            "reserved in the IOVA allocator",
            "smmuv3-edu: stale probe: SMMU fault record: Translation (type 0x10) sid 0x8 iova",
            "all translation faults inside",
            "smmuv3-edu: stale probe: blocked: NeedsReset, canary intact",
            "smmuv3-edu: scenario `blk` passed",
        ],
        ..SMMU
    },
    Scenario {
        variant: "blk-bench",
        summary: "virtio-blk-pci behind the SMMUv3: check with 0 SMMU events, then the same-boot benchmark: baseline (STE bypass), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, maps / flushes / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        disk: true,
        devices: &[],
        append: Some("blk-bench"),
        require: &[
            "write pattern checked",
            "smmuv3-edu: blk: 0 SMMU events during the check",
            "blk-bench: backend=smmuv3 arch={arch} policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=smmuv3 arch={arch} policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=smmuv3 arch={arch} policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=smmuv3 arch={arch} policy=pool size=4096 depth=16 ticks_per_req=",
            "smmuv3-edu: blk-bench: 0 SMMU events during the benchmark",
            "smmuv3-edu: scenario `blk-bench` passed",
        ],
        ..SMMU
    },
];

/// The VT-d translation modes every [`VTD_CHECKS`] scenario runs under:
/// `{options}` for the intel-iommu device, `{about}` for the summary, and
/// the lines the example prints about the mode (`{mode}`) and the tables it
/// built (`{tables}`).
const VTD_AW39: Config = Config {
    arch: Arch::X86_64,
    name: "aw39",
    vars: &[
        ("options", "aw-bits=39"),
        (
            "about",
            "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables)",
        ),
        ("mode", "legacy mode, second-level"),
        ("tables", "3-level"),
    ],
};

const VTD_AW48: Config = Config {
    arch: Arch::X86_64,
    name: "aw48",
    vars: &[
        ("options", "aw-bits=48"),
        (
            "about",
            "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables)",
        ),
        ("mode", "legacy mode, second-level"),
        ("tables", "4-level"),
    ],
};

const VTD_SCALABLE: Config = Config {
    arch: Arch::X86_64,
    name: "scalable",
    vars: &[
        ("options", "aw-bits=48,x-scalable-mode=on"),
        (
            "about",
            "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables",
        ),
        ("mode", "scalable mode, second-level"),
        ("tables", "4-level"),
    ],
};

const VTD_FIRST_LEVEL: Config = Config {
    arch: Arch::X86_64,
    name: "first-level",
    vars: &[
        ("options", "aw-bits=48,x-scalable-mode=on,x-flts=on"),
        (
            "about",
            "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation",
        ),
        ("mode", "scalable mode, first-level"),
        ("tables", "first-level"),
    ],
};

/// What the numbered vtd-edu checks share. `vtd-edu.checks=N` on the
/// command line selects check N; two edus, the second never gets a context
/// entry; dma_mask: IOVAs are above 256 MiB.
const VTD_CHECK: Scenario = Scenario {
    iommu: "Intel VT-d (iommu-intel-vtd)",
    machine: "q35",
    iommu_device: Some("intel-iommu,{options}"),
    devices: &[EDU, EDU],
    ..Scenario::BASE
};

const VTD_CHECKS: &[Scenario] = &[
    Scenario {
        variant: "1-map",
        summary: "{about}: edu DMA RAM -> device -> RAM through IOVAs unlike the physical addresses, bytes checked",
        append: Some("vtd-edu.checks=1"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 1 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "2-batch",
        summary: "{about}: 64 scattered pages linked with one sync, DMA from each; the unlink costs one IOTLB descriptor and one wait",
        append: Some("vtd-edu.checks=2"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 2 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "3-unlinked",
        summary: "{about}: unmap + sync, then a DMA write to the old (IOTLB-cached) IOVA: blocked, memory unchanged, typed fault record",
        append: Some("vtd-edu.checks=3"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 3 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "4-read-only",
        summary: "{about}: a read-only mapping written by the device: fault, memory unchanged",
        append: Some("vtd-edu.checks=4"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 4 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "5-no-context",
        summary: "{about}: a second edu with no context entry: blocked and reported",
        append: Some("vtd-edu.checks=5"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 5 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "6-superpage",
        summary: "{about}: a 2 MiB-aligned link uses a superpage, DMA through it checked",
        append: Some("vtd-edu.checks=6"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 6 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "7-pass-through",
        summary: "{about}: the second edu in pass-through DMAs by physical address, then is blocked again",
        append: Some("vtd-edu.checks=7"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 7 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "8-fault-interrupt",
        summary: "{about}: a DMA fault raises the fault event interrupt (MSI pending in the local APIC)",
        append: Some("vtd-edu.checks=8"),
        require: &[
            "translation mode: {mode}",
            "vtd-edu: check 8 OK",
            "selected check(s) passed with {tables} tables",
        ],
        ..VTD_CHECK
    },
];

/// vtd-edu beyond the numbered checks, each with its own intel-iommu.
const VTD_OTHERS: &[Scenario] = &[
    Scenario {
        variant: "caching-mode",
        summary: "Intel VT-d with caching-mode=on, all nine checks in one boot: new mappings and context entries are invalidated too",
        iommu_device: Some("intel-iommu,aw-bits=48,caching-mode=on"),
        require: &[
            "CM true",
            "vtd-edu: check 2 OK: 64 scattered pages linked + one sync (1 waits",
            "vtd-edu: all checks passed with 4-level tables",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "blk",
        summary: "virtio-blk-pci (iommu_platform=on) behind Intel VT-d (legacy, second-level) through iova-virtio-hal's IommuHal: write/read-back check with zero fault records, image verified on the host; an unshared buffer's old IOVA is blocked (canary intact) with a fault record from the disk's source-id inside it",
        iommu_device: Some("intel-iommu"),
        // No edu: the blk scenario finds the unit through the disk's BDF.
        disk: true,
        devices: &[],
        append: Some("blk"),
        require: &[
            "vtd-edu: pool probe: 4 KiB buffer B' copied into pool slot",
            "it went to the pool, B' canary intact",
            "vtd-edu: deferred probe: after the queue flush B's old IOVA is blocked, as under strict",
            "is blocked until it is attached",
            "attached to domain 1: legacy mode, second-level",
            "vtd-edu: virtio-blk initialised",
            "initial pattern checked",
            "wrote sectors 64..128 (32768 bytes) in 13 requests",
            "write pattern checked",
            "vtd-edu: blk: 0 fault records after the check: every DMA of",
            "no DMA table failure",
            "vtd-edu: blk: stale probe blocked by VT-d: B's canary intact, request not completed; fault record: DMA write fault from",
            "vtd-edu: scenario `blk` passed",
        ],
        ..VTD_CHECK
    },
    Scenario {
        variant: "blk-bench",
        summary: "virtio-blk-pci behind Intel VT-d: check, then the same-boot benchmark: baseline (pass-through context), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, maps / flushes / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        iommu_device: Some("intel-iommu"),
        disk: true,
        devices: &[],
        append: Some("blk-bench"),
        require: &[
            "vtd-edu: blk: 0 fault records after the check: every DMA of",
            "blk-bench: backend=vtd arch={arch} policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=vtd arch={arch} policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=vtd arch={arch} policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=vtd arch={arch} policy=pool size=4096 depth=16 ticks_per_req=",
            "vtd-edu: blk-bench: matrix done",
            "vtd-edu: scenario `blk-bench` passed",
        ],
        ..VTD_CHECK
    },
];

/// vtd-edu's interrupt remapping scenarios: a unit with `intremap=on`,
/// DMA translation off, two edus (the second sends the first's handle).
const VTD_IR: Scenario = Scenario {
    iommu: "Intel VT-d interrupt remapping (iommu-intel-vtd)",
    machine: "q35",
    devices: &["edu", "edu"],
    ..Scenario::BASE
};

const VTD_IR_SCENARIOS: &[Scenario] = &[
    Scenario {
        variant: "ir",
        summary: "Intel VT-d interrupt remapping (intremap=on), local APIC in xAPIC mode: IRTE 0 -> APIC ID 0, vector 0x31, source-validated for edu 00:01.0: edu's remappable MSI arrives as 0x31 once; reprogrammed (1 IEC) -> 0x32; APIC ID 0x100 refused without x2APIC mode, nothing written; the second edu with the same handle -> no interrupt, fault 0x26 with its SID and index 0; compatibility format with CFIS clear: QEMU delivers it (reported, not claimed blocked); freed (1 IEC) -> fault 0x22; QEMU's trace agrees on IECs and remaps",
        iommu_device: Some("intel-iommu,intremap=on"),
        append: Some("ir"),
        require: &[
            "vtd-edu: ir: local APIC in xAPIC mode, APIC ID 0; 8259 PIC masked, spurious vector 0xff",
            "ECAP.IR true, ECAP.EIM false",
            "vtd-edu: ir: IR off: compatibility-format MSI (address 0xfee00000, data 0x40) from 00:01.0: received [0x40]",
            "vtd-edu: ir: remapping on: 256-entry table at ",
            ", EIME 0; GSTS 0x47000000: IRES 1, IRTPS 1, CFIS 0; 1 global IEC + 1 wait",
            "vtd-edu: ir: IRTE 0 = APIC ID 0, vector 0x31, SID 00:01.0 (0x0008) only (1 index-selective IEC + 1 wait); edu's MSI address 0xfee00010 (bit 4 = remappable, handle 0), data 0x0: received [0x31]",
            "vtd-edu: ir: IRTE 0 reprogrammed to vector 0x32 (1 index-selective IEC + 1 wait): the same MSI now received [0x32]",
            "vtd-edu: ir: IRTE 0 -> APIC ID 0x100 without x2APIC mode: refused (VT-d: interrupt remapping entry: APIC ID 0x100 needs x2APIC mode), entry unchanged, 0 IEC",
            "vtd-edu: ir: 00:02.0 (0x0010) sending IRTE 0's handle: received [], interrupt request fault from 00:02.0, index 0: InterruptSourceInvalid (reason 0x26)",
            "vtd-edu: ir: compatibility-format MSI (address 0xfee00000, data 0x41) with GSTS 0x47000000 (IRES 1, CFIS 0): QEMU delivered it, received [0x41], no fault record",
            "vtd-edu: ir: IRTE 0 freed (1 index-selective IEC + 1 wait): edu's MSI with its handle: received [], interrupt request fault from 00:01.0, index 0: IrteNotPresent (reason 0x22)",
            "vtd-edu: ir: remapping off after the drop (1 global IEC): GSTS 0x45000000;",
            "in all 5 IEC (2 global), 4 interrupts received, 0 spurious",
            "vtd-edu: scenario `ir` (xAPIC) passed",
        ],
        ..VTD_IR
    },
    Scenario {
        variant: "ir-x2apic",
        summary: "Intel VT-d interrupt remapping in extended interrupt mode (intremap=on,eim=on, -cpu max), local APIC in x2APIC mode: IRTE 0 (EIME 1) -> APIC ID 0: remapped MSI as 0x31, reprogrammed -> 0x32; x2APIC ID 0x100 kept whole (reaches nobody), logical destination = our LDR 0x1 -> 0x32; wrong requester -> fault 0x26, freed -> fault 0x22",
        cpu: Some("max"),
        iommu_device: Some("intel-iommu,intremap=on,eim=on"),
        append: Some("ir-x2apic"),
        require: &[
            "vtd-edu: ir: local APIC in x2APIC mode, APIC ID 0; 8259 PIC masked, spurious vector 0xff",
            "ECAP.IR true, ECAP.EIM true",
            "vtd-edu: ir: IR off: compatibility-format MSI (address 0xfee00000, data 0x40) from 00:01.0: received [0x40]",
            ", EIME 1; GSTS 0x47000000: IRES 1, IRTPS 1, CFIS 0; 1 global IEC + 1 wait",
            "vtd-edu: ir: IRTE 0 = APIC ID 0, vector 0x31, SID 00:01.0 (0x0008) only (1 index-selective IEC + 1 wait); edu's MSI address 0xfee00010 (bit 4 = remappable, handle 0), data 0x0: received [0x31]",
            "vtd-edu: ir: IRTE 0 reprogrammed to vector 0x32 (1 index-selective IEC + 1 wait): the same MSI now received [0x32]",
            "vtd-edu: ir: IRTE 0 -> x2APIC ID 0x100 (no such CPU; its low 8 bits are ours): received [], no fault; -> logical destination 0x1 (our x2APIC LDR): received [0x32]",
            "vtd-edu: ir: 00:02.0 (0x0010) sending IRTE 0's handle: received [], interrupt request fault from 00:02.0, index 0: InterruptSourceInvalid (reason 0x26)",
            "QEMU delivered it, received [0x41], no fault record",
            "vtd-edu: ir: IRTE 0 freed (1 index-selective IEC + 1 wait): edu's MSI with its handle: received [], interrupt request fault from 00:01.0, index 0: IrteNotPresent (reason 0x22)",
            "in all 8 IEC (2 global), 5 interrupts received, 0 spurious",
            "vtd-edu: scenario `ir` (x2APIC) passed",
        ],
        ..VTD_IR
    },
];

/// What the virtio-iommu-edu scenarios share: a virtio-iommu-pci with 4 KiB
/// pages, and two edus (IOVAs sit at 256 GiB: edu must not mask them; the
/// second edu is never attached, see `deny`).
const VIRTIO_IOMMU: Scenario = Scenario {
    iommu: "virtio-iommu",
    iommu_device: Some("virtio-iommu-pci,granule=4k"),
    devices: &[EDU, EDU],
    ..Scenario::BASE
};

const VIRTIO_IOMMU_EDU: &[Scenario] = &[
    Scenario {
        variant: "map",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): map at an IOVA != PA, DMA RAM -> edu -> RAM checked",
        append: Some("map"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: map: 4096 bytes RAM",
            "virtio-iommu-edu: scenario `map` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "batch",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): 64 scattered pages linked, one sync = 64 MAPs and 1 notification, DMA through all checked",
        append: Some("batch"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: two-step: 64 scattered pages linked",
            "one sync: 64 MAP requests, 1 notification",
            "virtio-iommu-edu: DMA through all 64 linked pages",
            "virtio-iommu-edu: scenario `batch` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "unlink",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): unlink + sync, DMA to the old IOVA blocked, MAPPING fault (endpoint, address) drained",
        append: Some("unlink"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: unlink: after unlink + sync (1 UNMAP, 1 notification)",
            "virtio-iommu-edu: scenario `unlink` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "adjacent",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): two states on adjacent IOVAs over contiguous pages get a MAP each; each destroy removes exactly its own page (edu blocked there, the neighbour reached); one of two contiguous links unlinks alone",
        append: Some("adjacent"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: adjacent: states at IOVA",
            "destroy A removed only A's page",
            "virtio-iommu-edu: adjacent: one state, two contiguous links",
            "virtio-iommu-edu: scenario `adjacent` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "readonly",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): device write to a read-only mapping blocked, fault with the write flag",
        append: Some("readonly"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: read-only: edu's write to read-only IOVA",
            "virtio-iommu-edu: scenario `readonly` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "deny",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): bypass = 0: a second edu nobody attached cannot DMA, fault reported",
        append: Some("deny"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: default deny: edu #2",
            "virtio-iommu-edu: scenario `deny` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "msi",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): PROBE's MSI region is never handed out as an IOVA",
        append: Some("msi"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: PROBE hole:",
            "virtio-iommu-edu: scenario `msi` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "identity",
        summary: "iommu-virtio on virtio-iommu-pci ({machine}): ATTACH with the bypass flag: identity DMA works, denied again after DETACH",
        append: Some("identity"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (edu) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu #2) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: identity: edu #2",
            "virtio-iommu-edu: scenario `identity` passed",
            "virtio-iommu-edu: teardown: dropping domain 1 with a page mapped",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
];

/// virtio-iommu-edu with a disk behind the virtio-iommu: no edu, the disk is
/// the only endpoint (bar the benchmark's idle one).
const VIRTIO_IOMMU_BLK: &[Scenario] = &[
    Scenario {
        variant: "blk",
        summary: "virtio-blk-pci (iommu_platform=on) behind virtio-iommu-pci ({machine}) through iova-virtio-hal: write/read-back check with 0 faults, image verified on the host; the unshared buffer's old IOVA is unreachable (canary intact, MAPPING fault for the disk inside it)",
        disk: true,
        devices: &[],
        append: Some("blk"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (virtio-blk) from {firmware}",
            "is 00:01.0, the one we opened",
            "virtio-iommu-edu: pool probe: 4 KiB buffer B' copied into pool slot",
            "it went to the pool, B' canary intact",
            "virtio-iommu-edu: deferred probe: after the queue flush B's old IOVA is blocked, as under strict",
            "virtio-iommu-edu: virtio-blk initialised",
            "bypass = 0 (the disk cannot DMA until attached)",
            "initial pattern checked",
            "wrote sectors 64..128 (32768 bytes) in 13 requests",
            "write pattern checked",
            "0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
            "stale probe: blocked: NeedsReset, canary intact; virtio-iommu fault Mapping endpoint",
            "all for the disk inside [A, A + 8 KiB)",
            "virtio-iommu-edu: scenario `blk` passed",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "blk-bench",
        summary: "virtio-blk-pci behind virtio-iommu-pci ({machine}): check with 0 faults, then the same-boot benchmark: baseline (bypass domain), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, MAPs / notifications / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        disk: true,
        // An idle edu keeps domain 1 attached while the disk moves between
        // the benchmark's domains.
        devices: &["edu"],
        append: Some("blk-bench"),
        require: &[
            "virtio-iommu-edu: endpoint 0x10 for 00:02.0 (virtio-blk) from {firmware}",
            "virtio-iommu-edu: endpoint 0x18 for 00:03.0 (edu) from {firmware}",
            "is 00:01.0, the one we opened",
            "0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
            "write pattern checked",
            "blk-bench: backend=virtio-iommu arch={arch} policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=virtio-iommu arch={arch} policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=virtio-iommu arch={arch} policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=virtio-iommu arch={arch} policy=pool size=4096 depth=16 ticks_per_req=",
            "virtio-iommu-edu: blk-bench: 0 faults during the benchmark",
            "virtio-iommu-edu: scenario `blk-bench` passed",
        ],
        ..VIRTIO_IOMMU
    },
];

/// The virtio-iommu at a granule larger than 4 KiB: `granule` for QEMU,
/// `page` the granule as the example prints it, `slots` the bounce pools'
/// slot count at that granule (512 KiB pools).
macro_rules! granule_config {
    ($arch:expr, $machine:literal, $name:literal, $page:literal, $slots:literal) => {
        Config {
            arch: $arch,
            name: $name,
            vars: &[
                ("machine", $machine),
                ("granule", $name),
                ("page", $page),
                ("slots", $slots),
            ],
        }
    };
}

const VIRT_16K: Config = granule_config!(Arch::Aarch64, "virt", "16k", "0x4000", "32");
const VIRT_64K: Config = granule_config!(Arch::Aarch64, "virt", "64k", "0x10000", "8");
const Q35_16K: Config = granule_config!(Arch::X86_64, "q35", "16k", "0x4000", "32");
const Q35_64K: Config = granule_config!(Arch::X86_64, "q35", "64k", "0x10000", "8");

/// virtio-iommu-pci with `granule=16k` / `64k` (`page_size_mask` = every
/// power of two from the granule up): every edu scenario in one boot, and
/// the disk through iova-virtio-hal. Each row requires the granule the
/// example read from the device and used, so none passes at 4 KiB.
const VIRTIO_IOMMU_GRANULE: &[Scenario] = &[
    Scenario {
        variant: "all",
        summary: "iommu-virtio on virtio-iommu-pci,granule={granule} ({machine}): every edu scenario (map, batch, unlink, readonly, deny, msi, identity, adjacent, teardown) in {page}-byte pages of frames allocated for them",
        iommu_device: Some("virtio-iommu-pci,granule={granule}"),
        append: Some("all"),
        require: &[
            "(granule {page}), input",
            "virtio-iommu-edu: mapping granule {page}: the scenarios map whole {page}-byte pages",
            "every byte checked (2 MAP of {page} bytes each, 2 notifications)",
            "virtio-iommu-edu: scenario `map` passed",
            "one sync: 64 MAP requests, 1 notification, 64 replies (pages of {page} bytes)",
            "virtio-iommu-edu: DMA through all 64 linked pages: every byte checked",
            "virtio-iommu-edu: scenario `batch` passed",
            "virtio-iommu-edu: unlink: after unlink + sync (1 UNMAP, 1 notification)",
            "virtio-iommu-edu: scenario `unlink` passed",
            "virtio-iommu-edu: scenario `readonly` passed",
            "virtio-iommu-edu: scenario `deny` passed",
            "virtio-iommu-edu: scenario `msi` passed",
            "virtio-iommu-edu: scenario `identity` passed",
            "destroy A removed only A's page",
            "virtio-iommu-edu: scenario `adjacent` passed",
            "attached nowhere and its write there was blocked",
        ],
        ..VIRTIO_IOMMU
    },
    Scenario {
        variant: "blk",
        summary: "virtio-blk-pci behind virtio-iommu-pci,granule={granule} ({machine}) through iova-virtio-hal: virtqueue memory and bounce pages in whole {page}-byte granules, pools of {slots} x {page}-byte slots; write/read-back check with 0 faults, image verified on the host; the unshared (bounced) buffer's old IOVA unreachable under strict, pool and deferred",
        iommu_device: Some("virtio-iommu-pci,granule={granule}"),
        disk: true,
        devices: &[],
        append: Some("blk"),
        require: &[
            "virtio-iommu-edu: virtio-iommu up: granule {page}, input",
            "bounce granule {page}; pools of {slots} x {page}-byte slots",
            "virtio-iommu-edu: virtio-blk initialised",
            "write pattern checked",
            "0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
            "stale probe: blocked: NeedsReset, canary intact; virtio-iommu fault Mapping endpoint",
            "all for the disk inside [A, A + 8 KiB)",
            "is not whole granules of {page} bytes: bounced, never kept; its unshare flushed the queue (0 kept, 0 waiting)",
            "virtio-iommu-edu: deferred probe: after the queue flush B's old IOVA is blocked, as under strict",
            "virtio-iommu-edu: pool probe: 4 KiB buffer B' copied into pool slot",
            "virtio-iommu-edu: scenario `blk` passed",
        ],
        ..VIRTIO_IOMMU
    },
];
