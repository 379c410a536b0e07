//! Raw MMIO accessors.
//!
//! On aarch64 every access is one `ldr*`/`str*` instruction with a plain base
//! register (no writeback, no pair), so that a hypervisor trapping the access
//! gets a syndrome it can decode (ESR ISV = 1). Volatile pointer accesses give
//! no such guarantee. On x86_64 volatile accesses are single `mov`s.
//!
//! None of these are compiler barriers for *other* memory on x86_64; use
//! [`crate::arch::dma_barrier`] between filling a DMA buffer and starting the
//! device (and after the device reports completion).

#[cfg(target_arch = "aarch64")]
use core::arch::asm;

macro_rules! mmio_accessors {
    ($read:ident, $write:ident, $ty:ty, $ldr:literal, $str:literal, $reg:literal) => {
        /// Reads a device register of this width.
        ///
        /// # Safety
        ///
        /// `addr` must be the (identity-mapped) address of a device register or
        /// of memory that may be read at this width, naturally aligned, and the
        /// read (including any side effect it has on the device) must not break
        /// memory safety.
        #[inline]
        pub unsafe fn $read(addr: usize) -> $ty {
            #[cfg(target_arch = "aarch64")]
            {
                let value: $ty;
                // SAFETY: the caller guarantees `addr` is valid and aligned for this
                // access; the instruction touches nothing else.
                unsafe {
                    asm!(concat!($ldr, " {v:", $reg, "}, [{a}]"),
                        a = in(reg) addr, v = out(reg) value,
                        options(nostack, preserves_flags));
                }
                value
            }
            #[cfg(not(target_arch = "aarch64"))]
            {
                // SAFETY: the caller guarantees `addr` is valid and aligned for this access.
                unsafe { core::ptr::read_volatile(addr as *const $ty) }
            }
        }

        /// Writes a device register of this width.
        ///
        /// # Safety
        ///
        /// `addr` must be the (identity-mapped) address of a device register or
        /// of memory that may be written at this width, naturally aligned, and
        /// the write (including what the device does in response, e.g. DMA)
        /// must not break memory safety.
        #[inline]
        pub unsafe fn $write(addr: usize, value: $ty) {
            #[cfg(target_arch = "aarch64")]
            {
                // SAFETY: the caller guarantees `addr` is valid and aligned for this
                // access and that the device's reaction is sound.
                unsafe {
                    asm!(concat!($str, " {v:", $reg, "}, [{a}]"),
                        a = in(reg) addr, v = in(reg) value,
                        options(nostack, preserves_flags));
                }
            }
            #[cfg(not(target_arch = "aarch64"))]
            {
                // SAFETY: the caller guarantees `addr` is valid and aligned for this
                // access and that the device's reaction is sound.
                unsafe { core::ptr::write_volatile(addr as *mut $ty, value) }
            }
        }
    };
}

mmio_accessors!(read8, write8, u8, "ldrb", "strb", "w");
mmio_accessors!(read16, write16, u16, "ldrh", "strh", "w");
mmio_accessors!(read32, write32, u32, "ldr", "str", "w");
mmio_accessors!(read64, write64, u64, "ldr", "str", "x");
