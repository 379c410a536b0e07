//! The examples and the QEMU system tests, as tables.
//!
//! Each row of [`SYSTEM_TESTS`] is one QEMU boot: the harness builds the
//! example for the row's architecture, runs
//!
//! ```text
//! <qemu binary> <Arch::base_args> <row.qemu_args> -kernel <example ELF> <QEMU_EXTRA_ARGS>
//! ```
//!
//! from the repository root with a timeout, saves the serial output to
//! `target/xtask/logs/<row.name>.log`, and passes the row if QEMU's exit
//! status is the expected one and every `require` string occurs in the
//! serial output.
//!
//! The rows are not written out one by one. `systests/table.rs` describes
//! each [`Scenario`] once (its machine, devices, `-append`, expected exit and
//! required lines) in a [`Group`] with the [`Config`]s it runs on (an
//! architecture, and e.g. a VT-d translation mode), and [`expand`] makes a
//! row of each scenario on each configuration: group by group, within a
//! group configuration by configuration, and within a configuration in the
//! order of the scenarios. A row's name is
//! `<example>-<arch>[-<config name>][-<variant>]`.
//!
//! # Adding a system test
//!
//! * Another scenario of an example: add a [`Scenario`] to that example's
//!   [`Group`] in `systests/table.rs`; it runs on every configuration of the
//!   group. Start from the scenario the group's others share (`..SMMU`,
//!   `..VTD_CHECK`, `..Scenario::BASE`, ...) and set what differs: `variant`
//!   (the end of the row name), `summary`, `append` (the example's command
//!   line), `require`; `disk: true` for a virtio-blk disk.
//! * The same scenarios on another configuration: add a [`Config`] to the
//!   group's `configs`: an architecture, a name for the row names (unless
//!   the architecture is enough), and a value for each `{key}` the
//!   scenarios use.
//! * A new example crate: an [`Example`] in [`EXAMPLES`] and a new [`Group`].
//!
//! `cargo test -p xtask` checks the expanded rows: unique names, examples
//! that exist and are built for the row's architecture, every placeholder
//! filled, every configuration value used.

mod table;

use std::env;
use std::sync::LazyLock;

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
    /// Unique name; also the log file name:
    /// `<example>-<arch>[-<config name>][-<variant>]`.
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

/// A configuration scenarios run under: an architecture, and values for the
/// `{key}` placeholders in the scenarios' strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Guest architecture.
    pub arch: Arch,
    /// Part of the row name after the architecture, "" for none: `aw39` in
    /// `vtd-edu-x86_64-aw39-1-map`.
    pub name: &'static str,
    /// `(key, value)`: `{key}` in a scenario's string becomes `value`.
    /// `{arch}` is always defined: the architecture's [`Arch::name`].
    pub vars: &'static [(&'static str, &'static str)],
}

impl Config {
    /// `text` with the placeholders filled in.
    fn fill(&self, text: &'static str) -> &'static str {
        if !text.contains('{') {
            return text;
        }
        let mut filled = text.replace("{arch}", self.arch.name());
        for (key, value) in self.vars {
            filled = filled.replace(&format!("{{{key}}}"), value);
        }
        leak_str(filled)
    }
}

/// One boot of an example, described once: the rows are this scenario on
/// each configuration of its [`Group`]. The strings may hold `{key}`
/// placeholders (see [`Config::vars`]).
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Last part of the row name, "" for none: `map` in `smmuv3-edu-aarch64-map`.
    pub variant: &'static str,
    /// One line for humans (shown by `cargo xtask demo`).
    pub summary: &'static str,
    /// Which IOMMU QEMU emulates for this run ("none", "SMMUv3", ...).
    pub iommu: &'static str,
    /// `-M`: the machine and its options.
    pub machine: &'static str,
    /// `-cpu`, after the machine. None: the architecture's (x86_64: QEMU's
    /// default; aarch64: [`Arch::base_args`]' cortex-a57).
    pub cpu: Option<&'static str>,
    /// `-device`: an IOMMU on the PCI bus (intel-iommu, virtio-iommu-pci),
    /// first on the bus. None: no IOMMU, or one the machine has (virt's SMMUv3).
    pub iommu_device: Option<&'static str>,
    /// A virtio-blk-pci disk ([`DISK_ARGS`]) after the IOMMU: its image is
    /// made for the row at test time and checked after the boot (see `disk`).
    pub disk: bool,
    /// `-device`: further devices (edu, ...), after the disk, in bus order.
    pub devices: &'static [&'static str],
    /// `-append`: the example's command line (which check to run). None: no
    /// `-append`.
    pub append: Option<&'static str>,
    /// Required exit status.
    pub expect: Expect,
    /// Strings that must each occur somewhere in the serial output. With
    /// [`Expect::GuestSuccess`] the row also requires [`GUEST_OK`], last.
    pub require: &'static [&'static str],
}

impl Scenario {
    /// The starting point of a scenario (`..Scenario::BASE`): no IOMMU, the
    /// configuration's `{machine}`, no devices, the guest must succeed.
    pub const BASE: Scenario = Scenario {
        variant: "",
        summary: "",
        iommu: "none",
        machine: "{machine}",
        cpu: None,
        iommu_device: None,
        disk: false,
        devices: &[],
        append: None,
        expect: Expect::GuestSuccess,
        require: &[],
    };
}

/// Scenarios of one example and the configurations they run on.
#[derive(Debug)]
pub struct Group {
    /// Example package to boot (must be in [`EXAMPLES`] for each
    /// configuration's architecture).
    pub example: &'static str,
    /// Each scenario runs on each of these, in this order.
    pub configs: &'static [Config],
    pub scenarios: &'static [Scenario],
}

/// The disk a [`Scenario::disk`] row gets: a modern-only virtio-blk-pci
/// whose DMA goes through the IOMMU (`iommu_platform=on`), on the image
/// `@DISK@` names (see `disk`).
pub const DISK_ARGS: [&str; 4] = [
    "-drive",
    "file=@DISK@,format=raw,if=none,id=blk0",
    "-device",
    "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
];

/// The line `platform` prints when an example ends with success.
pub const GUEST_OK: &str = "demo: result: OK";

/// Every QEMU system test, in the order they run: [`table::GROUPS`]
/// expanded (built on first use).
pub static SYSTEM_TESTS: LazyLock<Vec<SystemTest>> = LazyLock::new(|| expand(table::GROUPS));

/// The rows of `groups`: group by group, each group configuration by
/// configuration, and under each configuration the group's scenarios.
pub fn expand(groups: &[Group]) -> Vec<SystemTest> {
    let mut rows = Vec::new();
    for group in groups {
        for config in group.configs {
            for scenario in group.scenarios {
                rows.push(row(group.example, config, scenario));
            }
        }
    }
    rows
}

/// `scenario` of `example` on `config`.
fn row(example: &'static str, config: &Config, scenario: &Scenario) -> SystemTest {
    let mut name = format!("{example}-{}", config.arch.name());
    for part in [config.name, scenario.variant] {
        if !part.is_empty() {
            name.push('-');
            name.push_str(part);
        }
    }
    let mut args = vec!["-M", config.fill(scenario.machine)];
    if let Some(cpu) = scenario.cpu {
        args.extend(["-cpu", config.fill(cpu)]);
    }
    if let Some(iommu) = scenario.iommu_device {
        args.extend(["-device", config.fill(iommu)]);
    }
    if scenario.disk {
        args.extend(DISK_ARGS);
    }
    for device in scenario.devices {
        args.extend(["-device", config.fill(device)]);
    }
    if let Some(append) = scenario.append {
        args.extend(["-append", config.fill(append)]);
    }
    let mut require: Vec<&'static str> = scenario.require.iter().map(|r| config.fill(r)).collect();
    if scenario.expect == Expect::GuestSuccess {
        require.push(GUEST_OK);
    }
    SystemTest {
        name: leak_str(name),
        arch: config.arch,
        example,
        summary: config.fill(scenario.summary),
        iommu: config.fill(scenario.iommu),
        qemu_args: leak_slice(args),
        expect: scenario.expect,
        require: leak_slice(require),
    }
}

// The rows are built once per process (SYSTEM_TESTS) and live until it
// exits, like the constant table they stand for; leaking what they are built
// from gives them the `'static` lifetime the rest of xtask borrows them for.
fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_slice(v: Vec<&'static str>) -> &'static [&'static str] {
    Box::leak(v.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every string of a row.
    fn row_strings(t: &SystemTest) -> impl Iterator<Item = &'static str> {
        [t.name, t.summary, t.iommu]
            .into_iter()
            .chain(t.qemu_args.iter().copied())
            .chain(t.require.iter().copied())
    }

    /// Every string of a scenario, placeholders unfilled.
    fn scenario_strings(s: &Scenario) -> impl Iterator<Item = &'static str> {
        [s.variant, s.summary, s.iommu, s.machine]
            .into_iter()
            .chain(s.cpu)
            .chain(s.iommu_device)
            .chain(s.devices.iter().copied())
            .chain(s.append)
            .chain(s.require.iter().copied())
    }

    #[test]
    fn expand_names_orders_and_fills_the_rows() {
        const VIRT: Config = Config {
            arch: Arch::Aarch64,
            name: "",
            vars: &[("machine", "virt"), ("what", "one")],
        };
        const Q35_FAST: Config = Config {
            arch: Arch::X86_64,
            name: "fast",
            vars: &[("machine", "q35"), ("what", "two")],
        };
        let groups = [Group {
            example: "ex",
            configs: &[VIRT, Q35_FAST],
            scenarios: &[
                Scenario {
                    summary: "{what} on {machine}",
                    require: &["{arch} says {what}"],
                    ..Scenario::BASE
                },
                Scenario {
                    variant: "blk",
                    iommu: "an IOMMU",
                    cpu: Some("cpu-{what}"),
                    iommu_device: Some("iommu-{what}"),
                    disk: true,
                    devices: &["edu", "edu-{what}"],
                    append: Some("go"),
                    expect: Expect::Status(1),
                    require: &["failed"],
                    ..Scenario::BASE
                },
            ],
        }];
        let rows = expand(&groups);
        let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "ex-aarch64",
                "ex-aarch64-blk",
                "ex-x86_64-fast",
                "ex-x86_64-fast-blk"
            ]
        );
        let plain = &rows[0];
        assert_eq!(
            (plain.arch, plain.example, plain.summary, plain.iommu),
            (Arch::Aarch64, "ex", "one on virt", "none")
        );
        assert_eq!(plain.qemu_args, ["-M", "virt"]);
        assert_eq!(plain.expect, Expect::GuestSuccess);
        assert_eq!(plain.require, ["aarch64 says one", GUEST_OK]);
        let blk = &rows[3];
        assert_eq!((blk.arch, blk.iommu), (Arch::X86_64, "an IOMMU"));
        let mut args = vec!["-M", "q35", "-cpu", "cpu-two", "-device", "iommu-two"];
        args.extend(DISK_ARGS);
        args.extend(["-device", "edu", "-device", "edu-two", "-append", "go"]);
        assert_eq!(blk.qemu_args, args);
        assert_eq!(blk.expect, Expect::Status(1));
        // A row that expects the guest to fail does not require its success line.
        assert_eq!(blk.require, ["failed"]);
    }

    #[test]
    fn row_names_are_unique() {
        let mut names = HashSet::new();
        for t in SYSTEM_TESTS.iter() {
            assert!(names.insert(t.name), "two rows named {}", t.name);
        }
    }

    #[test]
    fn no_two_rows_boot_the_same() {
        let mut boots = HashSet::new();
        for t in SYSTEM_TESTS.iter() {
            assert!(
                boots.insert((t.example, t.arch.name(), t.qemu_args)),
                "{} boots what another row boots",
                t.name
            );
        }
    }

    #[test]
    fn every_row_boots_an_example_that_exists_and_is_built_for_its_arch() {
        for t in SYSTEM_TESTS.iter() {
            let manifest = crate::util::repo_root()
                .join("examples")
                .join(t.example)
                .join("Cargo.toml");
            let text = std::fs::read_to_string(&manifest)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", t.name, manifest.display()));
            assert!(
                text.contains(&format!("name = \"{}\"", t.example)),
                "{}: {} is not package {}",
                t.name,
                manifest.display(),
                t.example
            );
            assert!(
                EXAMPLES
                    .iter()
                    .any(|e| e.package == t.example && e.arches.contains(&t.arch)),
                "{}: {} is not built for {}",
                t.name,
                t.example,
                t.arch.name()
            );
        }
    }

    #[test]
    fn every_example_is_booted_on_every_arch_it_is_built_for() {
        for e in EXAMPLES {
            for &arch in e.arches {
                assert!(
                    SYSTEM_TESTS
                        .iter()
                        .any(|t| t.example == e.package && t.arch == arch),
                    "{} is built for {} but no row boots it",
                    e.package,
                    arch.name()
                );
            }
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for t in SYSTEM_TESTS.iter() {
            for s in row_strings(t) {
                assert!(
                    !s.contains('{') && !s.contains('}'),
                    "{}: {s:?} has a placeholder its configuration does not fill",
                    t.name
                );
            }
        }
    }

    // A value no scenario uses is a misspelt placeholder, or configurations
    // that differ only in their names.
    #[test]
    fn every_configuration_value_is_used() {
        for group in table::GROUPS {
            for config in group.configs {
                for (key, _) in config.vars {
                    let placeholder = format!("{{{key}}}");
                    let used = table::GROUPS
                        .iter()
                        .filter(|g| g.configs.contains(config))
                        .flat_map(|g| g.scenarios)
                        .flat_map(scenario_strings)
                        .any(|s| s.contains(&placeholder));
                    assert!(
                        used,
                        "{}: no scenario uses {placeholder} of configuration {:?} ({})",
                        group.example,
                        config.name,
                        config.arch.name()
                    );
                }
            }
        }
    }
}
