//! Architecture support: the boot stub, console byte output, exit, clock,
//! barriers and PCI host discovery, for the one architecture being built.
//!
//! Each architecture module provides the same set of items (`ArchBootInfo`,
//! `console_putc`, `exit`, `halt`, `clock`, `dma_barrier`, `cpu_can_reach`,
//! `discover_pci`, `describe`); aarch64 also has `current_el`, x86_64 the
//! port, MSR and `cpuid` accessors and `enable_interrupts` /
//! `disable_interrupts`.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
compile_error!("the platform crate supports aarch64 (QEMU virt) and x86_64 (QEMU q35) only");
