//! Device register accesses of an exact width.
//!
//! On aarch64 each access is a single `ldr*`/`str*` with a plain base
//! register, so a hypervisor that traps it gets a syndrome it can decode;
//! elsewhere a volatile access (a single `mov` on x86-64).

#[cfg(target_arch = "aarch64")]
use core::arch::asm;

/// A window of device registers: `len` bytes at `base`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regs {
    base: usize,
    len: usize,
}

macro_rules! accessors {
    ($read:ident, $write:ident, $ty:ty, $ldr:literal, $str:literal) => {
        /// Reads the register at `offset`; `None` if it is not inside the
        /// window or not naturally aligned.
        pub(crate) fn $read(&self, offset: usize) -> Option<$ty> {
            let addr = self.check(offset, size_of::<$ty>())?;
            #[cfg(target_arch = "aarch64")]
            {
                let value: $ty;
                // SAFETY: `Regs::new`'s caller vouched for the window, and
                // `check` keeps the access inside it and aligned.
                unsafe {
                    asm!(concat!($ldr, " {v:w}, [{a}]"), a = in(reg) addr, v = out(reg) value,
                        options(nostack, preserves_flags));
                }
                Some(value)
            }
            #[cfg(not(target_arch = "aarch64"))]
            {
                // SAFETY: as above.
                Some(unsafe { core::ptr::read_volatile(addr as *const $ty) })
            }
        }

        /// Writes the register at `offset`; `false` (and nothing written) if it
        /// is not inside the window or not naturally aligned.
        pub(crate) fn $write(&self, offset: usize, value: $ty) -> bool {
            let Some(addr) = self.check(offset, size_of::<$ty>()) else {
                return false;
            };
            #[cfg(target_arch = "aarch64")]
            {
                // SAFETY: as in the read; the caller of `Regs::new` vouched
                // for what writing the device's registers does.
                unsafe {
                    asm!(concat!($str, " {v:w}, [{a}]"), a = in(reg) addr, v = in(reg) value,
                        options(nostack, preserves_flags));
                }
            }
            #[cfg(not(target_arch = "aarch64"))]
            {
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(addr as *mut $ty, value) };
            }
            true
        }
    };
}

impl Regs {
    /// # Safety
    ///
    /// `[base, base + len)` must be device registers (or memory) mapped for
    /// the CPU, readable and writable at 8, 16 and 32 bits, used by nobody
    /// else, for as long as the value lives; and writing them must not break
    /// memory safety (the driver only programs memory it owns for DMA).
    pub(crate) unsafe fn new(base: usize, len: usize) -> Self {
        Self { base, len }
    }

    fn check(&self, offset: usize, size: usize) -> Option<usize> {
        let end = offset.checked_add(size)?;
        (end <= self.len && offset % size == 0).then_some(self.base + offset)
    }

    accessors!(read8, write8, u8, "ldrb", "strb");
    accessors!(read16, write16, u16, "ldrh", "strh");
    accessors!(read32, write32, u32, "ldr", "str");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_stay_inside_the_window_and_aligned() {
        let mut mem = [0u32; 4];
        // SAFETY: plain memory of 16 bytes, used only through `regs` below.
        let regs = unsafe { Regs::new(mem.as_mut_ptr() as usize, 16) };
        assert!(regs.write32(4, 0x1122_3344));
        assert_eq!(regs.read16(4), Some(0x3344));
        assert_eq!(regs.read8(7), Some(0x11));
        assert_eq!(regs.read32(2), None, "misaligned");
        assert_eq!(regs.read32(16), None, "past the end");
        assert!(!regs.write16(15, 1));
        assert_eq!(regs.read32(12), Some(0));
    }
}
