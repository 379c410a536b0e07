//! The examples and the QEMU system tests, as tables.
//!
//! To add a system test, add one [`SystemTest`] row to [`SYSTEM_TESTS`] (and,
//! for a new example crate, an [`Example`] row to [`EXAMPLES`]). Each row is
//! one QEMU boot: the harness builds the example for the row's
//! architecture, runs
//!
//! ```text
//! <qemu binary> <Arch::base_args> <row.qemu_args> -kernel <example ELF> <QEMU_EXTRA_ARGS>
//! ```
//!
//! from the repository root with a timeout, saves the serial output to
//! `target/xtask/logs/<row.name>.log`, and passes the row if QEMU's exit
//! status is the expected one and every `require` string occurs in the
//! serial output.

use std::env;

/// A guest architecture / QEMU machine family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `qemu-system-aarch64`, `aarch64-unknown-none`.
    Aarch64,
    /// `qemu-system-x86_64`, `x86_64-unknown-none`.
    X86_64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Aarch64, Arch::X86_64];

    /// Short name used in step names.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::X86_64 => "x86_64",
        }
    }

    /// Rust target triple.
    pub fn target(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-none",
            Arch::X86_64 => "x86_64-unknown-none",
        }
    }

    /// Environment variable that overrides the QEMU binary.
    pub fn qemu_env(self) -> &'static str {
        match self {
            Arch::Aarch64 => "QEMU_SYSTEM_AARCH64",
            Arch::X86_64 => "QEMU_SYSTEM_X86_64",
        }
    }

    /// Default QEMU binary.
    pub fn qemu_default(self) -> &'static str {
        match self {
            Arch::Aarch64 => "qemu-system-aarch64",
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// The QEMU binary to run (environment override or default).
    pub fn qemu_binary(self) -> String {
        env::var(self.qemu_env())
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| self.qemu_default().to_string())
    }

    /// Arguments every run on this architecture gets, before the row's own
    /// (a row may override `-cpu` or `-m`: QEMU takes the last one).
    ///
    /// * serial on stdio (the harness captures it), no default devices, no
    ///   display, `-no-reboot` so a triple fault or reset ends QEMU;
    /// * aarch64: semihosting for the exit status; cortex-a57 puts the virt
    ///   ECAM high (0x40_1000_0000), which the examples find in the DTB;
    /// * x86_64: `isa-debug-exit` for the exit status.
    pub fn base_args(self) -> &'static [&'static str] {
        match self {
            Arch::Aarch64 => &[
                "-cpu",
                "cortex-a57",
                "-m",
                "512M",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-semihosting-config",
                "enable=on,target=native",
            ],
            Arch::X86_64 => &[
                "-m",
                "512M",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],
        }
    }

    /// QEMU's exit status when the guest reports success: semihosting exit(0)
    /// on aarch64; on x86_64 the guest writes 0x10 to isa-debug-exit, and QEMU
    /// exits with (0x10 << 1) | 1 = 33. Keep in sync with
    /// `examples/platform/src/exit.rs`.
    pub fn success_status(self) -> i32 {
        match self {
            Arch::Aarch64 => 0,
            Arch::X86_64 => 33,
        }
    }

    /// QEMU's exit status when the guest reports failure (1; x86_64: 0x11 -> 35).
    pub fn failure_status(self) -> i32 {
        match self {
            Arch::Aarch64 => 1,
            Arch::X86_64 => 35,
        }
    }

    /// Explains an exit status.
    pub fn explain_status(self, code: Option<i32>) -> String {
        match code {
            None => "killed by a signal".to_string(),
            Some(c) if c == self.success_status() => format!("{c} (guest reported success)"),
            Some(c) if c == self.failure_status() => format!("{c} (guest reported failure)"),
            Some(0) => {
                "0 (QEMU shut down without the guest reporting: reset, triple fault or poweroff)"
                    .to_string()
            }
            Some(c) => format!("{c} (not a guest status: QEMU error?)"),
        }
    }
}

/// A bare-metal example crate in `examples/` and the architectures it builds for.
#[derive(Debug)]
pub struct Example {
    /// Cargo package (and binary) name.
    pub package: &'static str,
    /// Architectures it is built for.
    pub arches: &'static [Arch],
}

/// Every example; each is built (and linted) for each of its architectures.
pub const EXAMPLES: &[Example] = &[
    Example {
        package: "edu-dma",
        arches: &[Arch::Aarch64, Arch::X86_64],
    },
    Example {
        package: "two-step-sw",
        arches: &[Arch::Aarch64, Arch::X86_64],
    },
    Example {
        package: "smmuv3-edu",
        arches: &[Arch::Aarch64],
    },
    Example {
        package: "vtd-edu",
        arches: &[Arch::X86_64],
    },
    Example {
        package: "virtio-iommu-edu",
        arches: &[Arch::Aarch64, Arch::X86_64],
    },
    Example {
        package: "blk-noiommu",
        arches: &[Arch::Aarch64, Arch::X86_64],
    },
];

/// What QEMU's exit status must be for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The guest exited through `platform::exit` with success.
    GuestSuccess,
    /// Exactly this status (e.g. a row that expects the guest to fail).
    #[allow(dead_code)] // not used by any row yet
    Status(i32),
}

impl Expect {
    pub fn status(self, arch: Arch) -> i32 {
        match self {
            Expect::GuestSuccess => arch.success_status(),
            Expect::Status(s) => s,
        }
    }
}

/// One QEMU boot.
#[derive(Debug)]
pub struct SystemTest {
    /// Unique name; also the log file name. Convention: `<example>-<arch>[-<variant>]`.
    pub name: &'static str,
    /// Guest architecture.
    pub arch: Arch,
    /// Example package to boot (must be in [`EXAMPLES`] for `arch`).
    pub example: &'static str,
    /// One line for humans (shown by `cargo xtask demo`).
    pub summary: &'static str,
    /// Which IOMMU QEMU emulates for this run ("none", "SMMUv3", ...).
    pub iommu: &'static str,
    /// Machine and device arguments (after the architecture's base args).
    /// `@DISK@` in an argument is replaced by the path of a disk image made
    /// for this row at test time and checked after the boot (see `disk`).
    pub qemu_args: &'static [&'static str],
    /// Required exit status.
    pub expect: Expect,
    /// Strings that must each occur somewhere in the serial output.
    pub require: &'static [&'static str],
}

/// Every QEMU system test, in the order they run.
pub const SYSTEM_TESTS: &[SystemTest] = &[
    SystemTest {
        name: "edu-dma-aarch64",
        arch: Arch::Aarch64,
        example: "edu-dma",
        summary: "edu DMA RAM -> device -> RAM on virt",
        iommu: "none",
        // edu masks DMA addresses with (1 << 28) - 1 by default, and RAM on
        // virt starts at 1 GiB: widen the mask, or the DMA lands elsewhere.
        qemu_args: &["-M", "virt", "-device", "edu,dma_mask=0xffffffffffffffff"],
        expect: Expect::GuestSuccess,
        require: &[
            "edu-dma: no IOMMU, 4096 bytes RAM->edu->RAM",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "edu-dma-aarch64-entered-at-el2",
        arch: Arch::Aarch64,
        example: "edu-dma",
        summary: "edu DMA on virt,virtualization=on: the boot stub drops an ordinary example from EL2 to EL1",
        iommu: "none",
        qemu_args: &[
            "-M",
            "virt,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "edu-dma: starting on aarch64 QEMU virt, EL1,",
            "edu-dma: no IOMMU, 4096 bytes RAM->edu->RAM",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "edu-dma-x86_64",
        arch: Arch::X86_64,
        example: "edu-dma",
        summary: "edu DMA RAM -> device -> RAM on q35",
        iommu: "none",
        // Our buffers are below 256 MiB, so the default dma_mask is fine here.
        qemu_args: &["-M", "q35", "-device", "edu"],
        expect: Expect::GuestSuccess,
        require: &[
            "edu-dma: no IOMMU, 4096 bytes RAM->edu->RAM",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "two-step-sw-aarch64",
        arch: Arch::Aarch64,
        example: "two-step-sw",
        summary: "iova-core two-step API bare-metal, software-walked LPAE table, edu DMA",
        iommu: "software (iova-core PageTable)",
        qemu_args: &["-M", "virt", "-device", "edu,dma_mask=0xffffffffffffffff"],
        expect: Expect::GuestSuccess,
        require: &["two-step-sw: two-step over a software", "demo: result: OK"],
    },
    SystemTest {
        name: "two-step-sw-x86_64",
        arch: Arch::X86_64,
        example: "two-step-sw",
        summary: "iova-core two-step API bare-metal, software-walked x86-64 table, edu DMA",
        iommu: "software (iova-core PageTable)",
        qemu_args: &["-M", "q35", "-device", "edu"],
        expect: Expect::GuestSuccess,
        require: &["two-step-sw: two-step over a software", "demo: result: OK"],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-map",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 1: buffer at IOVA != PA, edu DMA RAM -> device -> RAM checked; unmapped IOVA faults as typed events",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "map",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "demo: el: EL1",
            "smmuv3-edu: 4096 bytes RAM -> edu -> RAM through the SMMU, every byte checked",
            "translation-fault events, all for StreamID",
            "smmuv3-edu: scenario `map` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-batch",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: 64 scattered pages linked with one sync, DMA through all; unlink of the batch = 1 TLBI + 1 CMD_SYNC",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "batch",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "DMA through all 64 checked; unlink + sync: 1 TLBI, 1 CMD_SYNC",
            "smmuv3-edu: scenario `batch` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-stale",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: unlink + sync, DMA to the old (cached) IOVA blocked and reported; 4 KiB fault storm reported as lost events",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "stale",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "blocked, page unchanged",
            "control: PTE cleared without TLBI -> device still wrote the page",
            "4 KiB fault storm:",
            "loss reported",
            "smmuv3-edu: scenario `stale` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-perm",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: device write to a read-only mapping: permission fault, memory unchanged",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "perm",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "blocked, page unchanged",
            "permission faults",
            "smmuv3-edu: scenario `perm` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-second-fn",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: a second edu nobody attached is blocked and reported with its StreamID",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "second-fn",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "unattached function blocked, page unchanged",
            "smmuv3-edu: scenario `second-fn` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-block",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: a 2 MiB-aligned link becomes a block entry, DMA through it checked",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "block",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "is one block entry; DMA into its last page checked",
            "smmuv3-edu: scenario `block` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-s2",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 2 (VMID, VTTBR) from EL2, as a hypervisor gives a device to a guest: DMA through IPAs checked, stage-2 fault reported",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "s2",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "demo: el: EL2",
            "stage 2 (4 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-nested",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 nested stage 1 + stage 2 from EL2: IOVA -> IPA -> PA DMA checked, stage-2 unmap blocks it",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "nested",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "demo: el: EL2",
            "nested: IOVA",
            "4096 bytes checked; stage-2 unmap faults",
            "smmuv3-edu: scenario `nested` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-gran16k",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 1 with a 16 KiB granule: DMA checked, range TLBI in granule units, unmapped page faults",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "gran16k",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "smmuv3-edu: 16 KiB granule: DMA through IOVA",
            "smmuv3-edu: scenario `gran16k` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-gran64k",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 1 with a 64 KiB granule: DMA checked, range TLBI in granule units, unmapped page faults",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "gran64k",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "smmuv3-edu: 64 KiB granule: DMA through IOVA",
            "smmuv3-edu: scenario `gran64k` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-s2-16k",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 2 from EL2 with a 16 KiB granule: DMA through IPAs checked, stage-2 fault reported",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "s2-16k",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "demo: el: EL2",
            "smmuv3-edu: stage 2 (16 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2-16k` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-s2-64k",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 stage 2 from EL2 with a 64 KiB granule: DMA through IPAs checked, stage-2 fault reported",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "s2-64k",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "demo: el: EL2",
            "smmuv3-edu: stage 2 (64 KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked",
            "smmuv3-edu: scenario `s2-64k` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-two-domains",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: two edus in two domains (two ASIDs) map one IOVA to different pages; each reaches only its own, also after one unmaps",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "two-domains",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "each device reached only its own; after domain A's unmap, A's device faults",
            "smmuv3-edu: scenario `two-domains` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-storm",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: a 4 KiB DMA to an unmapped IOVA (1024 QEMU events) into a 2048-entry event queue: all drained, typed, in order, none lost",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "storm",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "smmuv3-edu: 4 KiB fault storm: all 1024 translation faults drained in order",
            "smmuv3-edu: scenario `storm` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-irq",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 set_interrupts: a fault pulses the eventq SPI, a refused command the gerror SPI (seen pending in the GIC distributor); off, neither",
        iommu: "SMMUv3",
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "irq",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "interrupts off -> pending (false, false); on -> eventq true, gerror true",
            "smmuv3-edu: scenario `irq` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-map-virt91",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3 on a stage-1-only SMMU (virt-9.1: IDR0.S2P = 0): the driver adapts, map scenario passes",
        iommu: "SMMUv3 (stage 1 only)",
        qemu_args: &[
            "-M",
            "virt-9.1,iommu=smmuv3",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "map",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "stage1 true stage2 false nesting false",
            "smmuv3-edu: scenario `map` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-s2-refused-virt91",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "iommu-arm-smmuv3: a stage-2 domain asked for at EL2 on a stage-1-only SMMU is refused with a typed error (the guest reports failure on purpose)",
        iommu: "SMMUv3 (stage 1 only)",
        qemu_args: &[
            "-M",
            "virt-9.1,iommu=smmuv3,virtualization=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "s2",
        ],
        expect: Expect::Status(1),
        require: &[
            "demo: el: EL2",
            "error: smmuv3: translation stage not supported by the SMMU",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-blk",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "virtio-blk-pci (iommu_platform=on) behind the SMMUv3 (stage 1, strict) through iova-virtio-hal: write/read-back check with 0 SMMU events, image verified on the host; the unshared buffer's old IOVA is unreachable (canary intact, F_TRANSLATION for the disk's StreamID inside it)",
        iommu: "SMMUv3",
        // No edu: the disk is the only device. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk",
        ],
        expect: Expect::GuestSuccess,
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
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "smmuv3-edu-aarch64-blk-bench",
        arch: Arch::Aarch64,
        example: "smmuv3-edu",
        summary: "virtio-blk-pci behind the SMMUv3: check with 0 SMMU events, then the same-boot benchmark: baseline (STE bypass), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, maps / flushes / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        iommu: "SMMUv3",
        // No edu: the disk is the only device. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt,iommu=smmuv3",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk-bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "write pattern checked",
            "smmuv3-edu: blk: 0 SMMU events during the check",
            "blk-bench: backend=smmuv3 arch=aarch64 policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=smmuv3 arch=aarch64 policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=smmuv3 arch=aarch64 policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=smmuv3 arch=aarch64 policy=pool size=4096 depth=16 ticks_per_req=",
            "smmuv3-edu: blk-bench: 0 SMMU events during the benchmark",
            "smmuv3-edu: scenario `blk-bench` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-1-map",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): edu DMA RAM -> device -> RAM through IOVAs unlike the physical addresses, bytes checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=1",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 1 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-2-batch",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): 64 scattered pages linked with one sync, DMA from each; the unlink costs one IOTLB descriptor and one wait",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=2",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 2 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-3-unlinked",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): unmap + sync, then a DMA write to the old (IOTLB-cached) IOVA: blocked, memory unchanged, typed fault record",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=3",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 3 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-4-read-only",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): a read-only mapping written by the device: fault, memory unchanged",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=4",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 4 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-5-no-context",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): a second edu with no context entry: blocked and reported",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=5",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 5 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-6-superpage",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): a 2 MiB-aligned link uses a superpage, DMA through it checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=6",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 6 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-7-pass-through",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): the second edu in pass-through DMAs by physical address, then is blocked again",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=7",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 7 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw39-8-fault-interrupt",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=39 (3-level second-level tables): a DMA fault raises the fault event interrupt (MSI pending in the local APIC)",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=39",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=8",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 8 OK",
            "selected check(s) passed with 3-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-1-map",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): edu DMA RAM -> device -> RAM through IOVAs unlike the physical addresses, bytes checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=1",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 1 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-2-batch",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): 64 scattered pages linked with one sync, DMA from each; the unlink costs one IOTLB descriptor and one wait",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=2",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 2 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-3-unlinked",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): unmap + sync, then a DMA write to the old (IOTLB-cached) IOVA: blocked, memory unchanged, typed fault record",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=3",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 3 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-4-read-only",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): a read-only mapping written by the device: fault, memory unchanged",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=4",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 4 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-5-no-context",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): a second edu with no context entry: blocked and reported",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=5",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 5 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-6-superpage",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): a 2 MiB-aligned link uses a superpage, DMA through it checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=6",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 6 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-7-pass-through",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): the second edu in pass-through DMAs by physical address, then is blocked again",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=7",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 7 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-aw48-8-fault-interrupt",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, legacy mode, aw-bits=48 (4-level second-level tables): a DMA fault raises the fault event interrupt (MSI pending in the local APIC)",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=8",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: legacy mode, second-level",
            "vtd-edu: check 8 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-1-map",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: edu DMA RAM -> device -> RAM through IOVAs unlike the physical addresses, bytes checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=1",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 1 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-2-batch",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: 64 scattered pages linked with one sync, DMA from each; the unlink costs one IOTLB descriptor and one wait",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=2",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 2 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-3-unlinked",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: unmap + sync, then a DMA write to the old (IOTLB-cached) IOVA: blocked, memory unchanged, typed fault record",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=3",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 3 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-4-read-only",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: a read-only mapping written by the device: fault, memory unchanged",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=4",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 4 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-5-no-context",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: a second edu with no context entry: blocked and reported",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=5",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 5 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-6-superpage",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: a 2 MiB-aligned link uses a superpage, DMA through it checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=6",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 6 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-7-pass-through",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: the second edu in pass-through DMAs by physical address, then is blocked again",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=7",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 7 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-scalable-8-fault-interrupt",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode (x-scalable-mode=on): PASID table, RID_PASID entry, second-level tables: a DMA fault raises the fault event interrupt (MSI pending in the local APIC)",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=8",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, second-level",
            "vtd-edu: check 8 OK",
            "selected check(s) passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-1-map",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: edu DMA RAM -> device -> RAM through IOVAs unlike the physical addresses, bytes checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=1",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 1 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-2-batch",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: 64 scattered pages linked with one sync, DMA from each; the unlink costs one IOTLB descriptor and one wait",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=2",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 2 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-3-unlinked",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: unmap + sync, then a DMA write to the old (IOTLB-cached) IOVA: blocked, memory unchanged, typed fault record",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=3",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 3 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-4-read-only",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: a read-only mapping written by the device: fault, memory unchanged",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=4",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 4 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-5-no-context",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: a second edu with no context entry: blocked and reported",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=5",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 5 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-6-superpage",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: a 2 MiB-aligned link uses a superpage, DMA through it checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: IOVAs are above 256 MiB. The second edu never gets a
        // context entry. The command line selects the check.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=6",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 6 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-7-pass-through",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: the second edu in pass-through DMAs by physical address, then is blocked again",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=7",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 7 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-8-fault-interrupt",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): x86-64 tables, PASID-based IOTLB invalidation: a DMA fault raises the fault event interrupt (MSI pending in the local APIC)",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=8",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "vtd-edu: check 8 OK",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-first-level-9-top-iova",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d, scalable mode with first-level translation (x-flts=on): the domain maps the lower canonical half only (47-bit IOVAs); an allocator over its last page hands out IOVA 0x7fff_ffff_f000 and edu DMA RAM -> device -> RAM through it, bytes checked",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // dma_mask: edu must not mask the 47-bit IOVA.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "vtd-edu.checks=9",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "translation mode: scalable mode, first-level",
            "47-bit IOVAs (the lower canonical half)",
            "vtd-edu: check 9 OK: 4096 bytes RAM",
            "through IOVA 0x7ffffffff000, the last page below 1 << 47 (first-level tables)",
            "selected check(s) passed with first-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-caching-mode",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "Intel VT-d with caching-mode=on, all nine checks in one boot: new mappings and context entries are invalidated too",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu,aw-bits=48,caching-mode=on",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "CM true",
            "vtd-edu: check 2 OK: 64 scattered pages linked + one sync (1 waits",
            "vtd-edu: all checks passed with 4-level tables",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-blk",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "virtio-blk-pci (iommu_platform=on) behind Intel VT-d (legacy, second-level) through iova-virtio-hal's IommuHal: write/read-back check with zero fault records, image verified on the host; an unshared buffer's old IOVA is blocked (canary intact) with a fault record from the disk's source-id inside it",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        // No edu: the blk scenario finds the unit through the disk's BDF.
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk",
        ],
        expect: Expect::GuestSuccess,
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
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "vtd-edu-x86_64-blk-bench",
        arch: Arch::X86_64,
        example: "vtd-edu",
        summary: "virtio-blk-pci behind Intel VT-d: check, then the same-boot benchmark: baseline (pass-through context), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, maps / flushes / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        iommu: "Intel VT-d (iommu-intel-vtd)",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "intel-iommu",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk-bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "vtd-edu: blk: 0 fault records after the check: every DMA of",
            "blk-bench: backend=vtd arch=x86_64 policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=vtd arch=x86_64 policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=vtd arch=x86_64 policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=vtd arch=x86_64 policy=pool size=4096 depth=16 ticks_per_req=",
            "vtd-edu: blk-bench: matrix done",
            "vtd-edu: scenario `blk-bench` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-map",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): map at an IOVA != PA, DMA RAM -> edu -> RAM checked",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "map",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: map: 4096 bytes RAM",
            "virtio-iommu-edu: scenario `map` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-batch",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): 64 scattered pages linked, one sync = 64 MAPs and 1 notification, DMA through all checked",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "batch",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: two-step: 64 scattered pages linked",
            "one sync: 64 MAP requests, 1 notification",
            "virtio-iommu-edu: DMA through all 64 linked pages",
            "virtio-iommu-edu: scenario `batch` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-unlink",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): unlink + sync, DMA to the old IOVA blocked, MAPPING fault (endpoint, address) drained",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "unlink",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: unlink: after unlink + sync (1 UNMAP, 1 notification)",
            "virtio-iommu-edu: scenario `unlink` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-adjacent",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): two states on adjacent IOVAs over contiguous pages get a MAP each; each destroy removes exactly its own page (edu blocked there, the neighbour reached); one of two contiguous links unlinks alone",
        iommu: "virtio-iommu",
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "adjacent",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: adjacent: states at IOVA",
            "destroy A removed only A's page",
            "virtio-iommu-edu: adjacent: one state, two contiguous links",
            "virtio-iommu-edu: scenario `adjacent` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-readonly",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): device write to a read-only mapping blocked, fault with the write flag",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "readonly",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: read-only: edu's write to read-only IOVA",
            "virtio-iommu-edu: scenario `readonly` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-deny",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): bypass = 0: a second edu nobody attached cannot DMA, fault reported",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "deny",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: default deny: edu #2",
            "virtio-iommu-edu: scenario `deny` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-msi",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): PROBE's MSI region is never handed out as an IOVA",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "msi",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: PROBE hole:",
            "virtio-iommu-edu: scenario `msi` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-identity",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (virt): ATTACH with the bypass flag: identity DMA works, denied again after DETACH",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "identity",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: identity: edu #2",
            "virtio-iommu-edu: scenario `identity` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-map",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): map at an IOVA != PA, DMA RAM -> edu -> RAM checked",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "map",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: map: 4096 bytes RAM",
            "virtio-iommu-edu: scenario `map` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-batch",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): 64 scattered pages linked, one sync = 64 MAPs and 1 notification, DMA through all checked",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "batch",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: two-step: 64 scattered pages linked",
            "one sync: 64 MAP requests, 1 notification",
            "virtio-iommu-edu: DMA through all 64 linked pages",
            "virtio-iommu-edu: scenario `batch` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-unlink",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): unlink + sync, DMA to the old IOVA blocked, MAPPING fault (endpoint, address) drained",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "unlink",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: unlink: after unlink + sync (1 UNMAP, 1 notification)",
            "virtio-iommu-edu: scenario `unlink` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-adjacent",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): two states on adjacent IOVAs over contiguous pages get a MAP each; each destroy removes exactly its own page (edu blocked there, the neighbour reached); one of two contiguous links unlinks alone",
        iommu: "virtio-iommu",
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "adjacent",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: adjacent: states at IOVA",
            "destroy A removed only A's page",
            "virtio-iommu-edu: adjacent: one state, two contiguous links",
            "virtio-iommu-edu: scenario `adjacent` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-readonly",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): device write to a read-only mapping blocked, fault with the write flag",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "readonly",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: read-only: edu's write to read-only IOVA",
            "virtio-iommu-edu: scenario `readonly` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-deny",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): bypass = 0: a second edu nobody attached cannot DMA, fault reported",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "deny",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: default deny: edu #2",
            "virtio-iommu-edu: scenario `deny` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-msi",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): PROBE's MSI region is never handed out as an IOVA",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "msi",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: PROBE hole:",
            "virtio-iommu-edu: scenario `msi` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-identity",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "iommu-virtio on virtio-iommu-pci (q35): ATTACH with the bypass flag: identity DMA works, denied again after DETACH",
        iommu: "virtio-iommu",
        // IOVAs sit at 256 GiB: edu must not mask them. The second edu is
        // never attached (the `deny` scenario).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-device",
            "edu,dma_mask=0xffffffffffffffff",
            "-append",
            "identity",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "virtio-iommu-edu: identity: edu #2",
            "virtio-iommu-edu: scenario `identity` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-blk",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "virtio-blk-pci (iommu_platform=on) behind virtio-iommu-pci (virt) through iova-virtio-hal: write/read-back check with 0 faults, image verified on the host; the unshared buffer's old IOVA is unreachable (canary intact, MAPPING fault for the disk inside it)",
        iommu: "virtio-iommu",
        // No edu: the disk is the only endpoint. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk",
        ],
        expect: Expect::GuestSuccess,
        require: &[
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
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-aarch64-blk-bench",
        arch: Arch::Aarch64,
        example: "virtio-iommu-edu",
        summary: "virtio-blk-pci behind virtio-iommu-pci (virt): check with 0 faults, then the same-boot benchmark: baseline (bypass domain), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, MAPs / notifications / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        iommu: "virtio-iommu",
        // No edu: the disk is the only endpoint. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            // An idle edu keeps domain 1 attached while the disk moves
            // between the benchmark's domains.
            "-device",
            "edu",
            "-append",
            "blk-bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
            "write pattern checked",
            "blk-bench: backend=virtio-iommu arch=aarch64 policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=virtio-iommu arch=aarch64 policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=virtio-iommu arch=aarch64 policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=virtio-iommu arch=aarch64 policy=pool size=4096 depth=16 ticks_per_req=",
            "virtio-iommu-edu: blk-bench: 0 faults during the benchmark",
            "virtio-iommu-edu: scenario `blk-bench` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-blk",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "virtio-blk-pci (iommu_platform=on) behind virtio-iommu-pci (q35) through iova-virtio-hal: write/read-back check with 0 faults, image verified on the host; the unshared buffer's old IOVA is unreachable (canary intact, MAPPING fault for the disk inside it)",
        iommu: "virtio-iommu",
        // No edu: the disk is the only endpoint. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "blk",
        ],
        expect: Expect::GuestSuccess,
        require: &[
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
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "virtio-iommu-edu-x86_64-blk-bench",
        arch: Arch::X86_64,
        example: "virtio-iommu-edu",
        summary: "virtio-blk-pci behind virtio-iommu-pci (q35): check with 0 faults, then the same-boot benchmark: baseline (bypass domain), pre-mapped, strict ... in interleaved rounds, 4 KiB / 64 KiB reads, 1 and 16 in flight, every sector checked (blk-bench lines: ratio to the baseline, spread, MAPs / notifications / bounce bytes per request; then a timed pass: blk-profile lines, the share of time in the Hal)",
        iommu: "virtio-iommu",
        // No edu: the disk is the only endpoint. The image is made at test
        // time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "q35",
            "-device",
            "virtio-iommu-pci,granule=4k",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            // An idle edu keeps domain 1 attached while the disk moves
            // between the benchmark's domains.
            "-device",
            "edu",
            "-append",
            "blk-bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
            "write pattern checked",
            "blk-bench: backend=virtio-iommu arch=x86_64 policy=baseline size=4096 depth=1 rounds=5 ratio=1.00",
            "blk-bench: backend=virtio-iommu arch=x86_64 policy=premapped size=65536 depth=16 ",
            "blk-bench: backend=virtio-iommu arch=x86_64 policy=strict size=4096 depth=16 rounds=5 ratio=",
            "blk-profile: backend=virtio-iommu arch=x86_64 policy=pool size=4096 depth=16 ticks_per_req=",
            "virtio-iommu-edu: blk-bench: 0 faults during the benchmark",
            "virtio-iommu-edu: scenario `blk-bench` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "blk-noiommu-aarch64",
        arch: Arch::Aarch64,
        example: "blk-noiommu",
        summary: "virtio-blk-pci (iommu_platform=on) with no IOMMU, identity Hal: write/read-back check, image verified on the host; stale-buffer probe shows the device reaches an unshared buffer; an address with nothing there breaks the device (NEEDS_RESET), canary intact",
        iommu: "none",
        // The disk image is made at test time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "check",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "blk-noiommu: virtio-blk initialised",
            "initial pattern checked",
            "wrote sectors 64..128 (32768 bytes) in 13 requests",
            "write pattern checked",
            "the probe detects reachability",
            "what a blocked DMA looks like in QEMU",
            "blk-noiommu: scenario `check` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "blk-noiommu-x86_64",
        arch: Arch::X86_64,
        example: "blk-noiommu",
        summary: "virtio-blk-pci (iommu_platform=on) with no IOMMU, identity Hal: write/read-back check, image verified on the host; stale-buffer probe shows the device reaches an unshared buffer; an address with nothing there breaks the device (NEEDS_RESET), canary intact",
        iommu: "none",
        // The disk image is made at test time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "q35",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "check",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "blk-noiommu: virtio-blk initialised",
            "initial pattern checked",
            "wrote sectors 64..128 (32768 bytes) in 13 requests",
            "write pattern checked",
            "the probe detects reachability",
            "what a blocked DMA looks like in QEMU",
            "blk-noiommu: scenario `check` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "blk-noiommu-aarch64-bench",
        arch: Arch::Aarch64,
        example: "blk-noiommu",
        summary: "virtio-blk-pci with no IOMMU: check, then sequential 4 KiB / 64 KiB reads of 8 MiB (blk-bench lines, the baseline for the IOMMU rows)",
        iommu: "none",
        // The disk image is made at test time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "virt",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "write pattern checked",
            "blk-bench: none 4KiB requests=2048 bytes=8388608",
            "blk-bench: none 64KiB requests=128 bytes=8388608",
            "blk-noiommu: scenario `bench` passed",
            "demo: result: OK",
        ],
    },
    SystemTest {
        name: "blk-noiommu-x86_64-bench",
        arch: Arch::X86_64,
        example: "blk-noiommu",
        summary: "virtio-blk-pci with no IOMMU: check, then sequential 4 KiB / 64 KiB reads of 8 MiB (blk-bench lines, the baseline for the IOMMU rows)",
        iommu: "none",
        // The disk image is made at test time (xtask/src/disk.rs).
        qemu_args: &[
            "-M",
            "q35",
            "-drive",
            "file=@DISK@,format=raw,if=none,id=blk0",
            "-device",
            "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
            "-append",
            "bench",
        ],
        expect: Expect::GuestSuccess,
        require: &[
            "write pattern checked",
            "blk-bench: none 4KiB requests=2048 bytes=8388608",
            "blk-bench: none 64KiB requests=128 bytes=8388608",
            "blk-noiommu: scenario `bench` passed",
            "demo: result: OK",
        ],
    },
];
