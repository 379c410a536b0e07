//! Platform support for the bare-metal QEMU examples.
//!
//! Targets: `aarch64-unknown-none` on `qemu-system-aarch64 -M virt` (loaded
//! with `-kernel`, no firmware) and `x86_64-unknown-none` on
//! `qemu-system-x86_64 -M q35` (SeaBIOS, then PVH entry). Not a library for
//! production use: it is the scaffolding every example shares: boot stubs,
//! serial console, exit with a status, bounded waits, a frame allocator (and
//! a pool over it that reuses freed frames), a DTB reader, where the firmware tables are (RSDP, device tree, the PCI host's `iommu-map`), PCI enumeration and BAR assignment, an `edu` driver (DMA
//! and MSI), and on aarch64 a GICv3 ITS bring-up that turns MSIs into LPIs; on x86_64
//! the local APIC (xAPIC or x2APIC) and interrupt gates that log vectors.
//! Both: legacy PCI INTx ([`intx`]: I/O APIC on q35, GIC SPIs on virt),
//! handlers per interrupt and sleeping until an interrupt or a timeout
//! ([`irq`]).
//!
//! An example is a `#![no_std] #![no_main]` binary that depends on this crate,
//! copies `edu-dma/build.rs` (which applies our linker script), and names its
//! entry function with [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! platform::entry!(main);
//!
//! fn main(boot: &platform::BootInfo) -> Result<(), MyError> { // MyError: Display
//!     platform::banner("my-example", boot);
//!     Ok(())
//! }
//! ```
//!
//! Returning `Ok` exits QEMU with the success status, `Err` prints the error
//! and exits with the failure status, as do panics and CPU exceptions (see
//! [`exit`]).
//!
//! Memory is identity-mapped everywhere (aarch64: MMU off; x86_64: 0-4 GiB
//! mapped 1:1 by the boot stub), so an address is at once a pointer, a
//! physical address and, without an IOMMU, a DMA address.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
pub mod apic;
pub mod arch;
pub mod cmdline;
pub mod console;
pub mod demo;
pub mod dtb;
pub mod edu;
pub mod exit;
pub mod firmware;
pub mod frame_pool;
pub mod frames;
#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod gic_its;
pub mod heap;
pub mod intx;
#[cfg(target_arch = "x86_64")]
pub mod ioapic;
pub mod irq;
pub mod leak;
pub mod mmio;
pub mod pci;
pub mod setup;
pub mod time;
pub mod virtio_pci;

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

pub use exit::ExitStatus;

/// How many RAM regions [`BootInfo`] records.
pub const MAX_RAM_REGIONS: usize = 8;

/// What the boot code learned about the machine.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Human-readable machine name, e.g. "aarch64 QEMU virt".
    pub machine: &'static str,
    /// RAM regions `(base, size)` from the device tree (aarch64) or the PVH
    /// memory map (x86_64); the first `ram_regions` entries are valid.
    pub ram: [(u64, u64); MAX_RAM_REGIONS],
    /// Number of valid entries in `ram`.
    pub ram_regions: usize,
    /// Architecture-specific details (device tree, start info, ...).
    pub arch: arch::ArchBootInfo,
}

impl BootInfo {
    /// The valid RAM regions.
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram[..self.ram_regions.min(MAX_RAM_REGIONS)]
    }
}

impl fmt::Display for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, ", self.machine)?;
        arch::describe(self, f)?;
        let total: u64 = self.ram().iter().map(|&(_, size)| size).sum();
        write!(
            f,
            ", RAM {} MiB in {} region(s)",
            total >> 20,
            self.ram().len()
        )
    }
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// The physical address range of the loaded image (code, data, bss, stack).
pub fn image_range() -> (u64, u64) {
    // Only the addresses of the linker-script symbols are taken, which is safe.
    (
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    )
}

/// Prints the standard first lines of an example: its name and the machine.
pub fn banner(name: &str, boot: &BootInfo) {
    let (start, end) = image_range();
    println!("{name}: starting on {boot}");
    println!("{name}: image at {start:#x}..{end:#x}");
}

/// Defines the program's entry point: `$main` is a
/// `fn(&BootInfo) -> Result<(), E>` with `E: core::fmt::Display`.
///
/// `entry!(main, stay_at_el2)` is for an example that plays hypervisor: on
/// aarch64, entered at EL2 (`-M virt,virtualization=on`) it stays at EL2
/// instead of dropping to EL1 (see `arch::aarch64`); elsewhere it changes
/// nothing.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!(@define $main, 0);
    };
    ($main:path, stay_at_el2) => {
        $crate::entry!(@define $main, 1);
    };
    (@define $main:path, $stay_at_el2:literal) => {
        #[unsafe(export_name = "platform_main")]
        fn __platform_main(boot: &$crate::BootInfo) -> $crate::ExitStatus {
            $crate::run_main(boot, $main)
        }

        /// Read by the aarch64 boot stub before it leaves EL2: non-zero = stay.
        #[unsafe(export_name = "platform_aarch64_stay_at_el2")]
        static __PLATFORM_STAY_AT_EL2: u8 = $stay_at_el2;
    };
}

/// Implementation detail of [`entry!`]: runs `main` and turns its result into
/// an exit status, printing the error if there is one.
#[doc(hidden)]
pub fn run_main<E: fmt::Display>(
    boot: &BootInfo,
    main: fn(&BootInfo) -> Result<(), E>,
) -> ExitStatus {
    match main(boot) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            println!("error: {e}");
            println!("demo: result: FAILED: {e}");
            ExitStatus::Failure
        }
    }
}

unsafe extern "Rust" {
    /// Defined by [`entry!`] in the example binary.
    safe fn platform_main(boot: &BootInfo) -> ExitStatus;
}

/// Called by the architecture's boot code once the CPU is set up.
fn start(boot: BootInfo) -> ! {
    let status = platform_main(&boot);
    exit::exit(status)
}

static FATAL: AtomicBool = AtomicBool::new(false);

/// Prints a fatal message and exits with failure. A fault while reporting
/// exits without printing.
pub fn report_fatal(message: fmt::Arguments<'_>) -> ! {
    // Plain load + store (no atomic read-modify-write): see `frames::FrameAllocator::take`.
    if !FATAL.load(Ordering::Relaxed) {
        FATAL.store(true, Ordering::Relaxed);
        println!("{message}");
        println!("demo: result: FAILED: {message}");
    }
    exit::exit(ExitStatus::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report_fatal(format_args!("panic: {info}"))
}
