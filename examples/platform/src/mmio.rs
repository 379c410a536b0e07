//! Raw MMIO accessors by address, for the platform's own devices (UART,
//! HPET, GIC, ECAM, `edu`).
//!
//! Each is one access through [`iova_core::hw::MmioRegion`], the register
//! access the library crates use: on aarch64 one `ldr*`/`str*` with a plain
//! base register, so that a hypervisor trapping it gets a syndrome it can
//! decode; on x86_64 a single `mov`.
//!
//! None of these are compiler barriers for *other* memory on x86_64; use
//! [`crate::arch::dma_barrier`] between filling a DMA buffer and starting the
//! device (and after the device reports completion).

use iova_core::hw::{Mmio, MmioRegion};

macro_rules! mmio_accessors {
    ($read:ident, $write:ident, $ty:ty) => {
        /// Reads a device register of this width; all-ones when `addr` is not
        /// naturally aligned (nothing is read then).
        ///
        /// # Safety
        ///
        /// `addr` must be the (identity-mapped) address of a device register
        /// or of memory that may be read at this width, and the read
        /// (including any side effect it has on the device) must not break
        /// memory safety.
        #[inline]
        pub unsafe fn $read(addr: usize) -> $ty {
            // SAFETY: the caller vouches for the register at `addr`; the
            // region covers exactly that one register.
            let r = unsafe { MmioRegion::new(addr as *mut u8, size_of::<$ty>()) };
            r.$read(0).unwrap_or(<$ty>::MAX)
        }

        /// Writes a device register of this width; nothing is written when
        /// `addr` is not naturally aligned.
        ///
        /// # Safety
        ///
        /// As for the read, and the write's effect on the device must not
        /// break memory safety (e.g. pointing DMA at memory Rust owns).
        #[inline]
        pub unsafe fn $write(addr: usize, value: $ty) {
            // SAFETY: as in the read.
            let r = unsafe { MmioRegion::new(addr as *mut u8, size_of::<$ty>()) };
            let _ = r.$write(0, value);
        }
    };
}

mmio_accessors!(read8, write8, u8);
mmio_accessors!(read16, write16, u16);
mmio_accessors!(read32, write32, u32);
mmio_accessors!(read64, write64, u64);
