//! Register access of an exact width, with one out-of-range policy.

use core::fmt;

/// The width of one register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Width {
    /// 8 bits.
    W8,
    /// 16 bits.
    W16,
    /// 32 bits.
    W32,
    /// 64 bits.
    W64,
}

impl Width {
    /// Bytes of the access.
    pub const fn bytes(self) -> usize {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }
}

/// A register access that was not made, and why. Nothing was read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MmioError {
    /// The access would reach past the end of the register block (a block
    /// smaller than the registers the hardware describes, or a driver bug).
    OutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Its width.
        width: Width,
        /// Bytes of the block.
        size: usize,
    },
    /// The offset is not a multiple of the access width.
    Misaligned {
        /// Offset of the access.
        offset: usize,
        /// Its width.
        width: Width,
    },
    /// The block does not take accesses of this width.
    Width {
        /// Offset of the access.
        offset: usize,
        /// Its width.
        width: Width,
    },
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange {
                offset,
                width,
                size,
            } => write!(
                f,
                "{}-byte register access at {offset:#x} past the {size:#x}-byte block",
                width.bytes()
            ),
            Self::Misaligned { offset, width } => write!(
                f,
                "{}-byte register access at misaligned offset {offset:#x}",
                width.bytes()
            ),
            Self::Width { offset, width } => write!(
                f,
                "{}-byte register access at {offset:#x} not supported",
                width.bytes()
            ),
        }
    }
}

impl core::error::Error for MmioError {}

/// The out-of-range policy every [`Mmio`] implementation applies: `Ok` when
/// an access of `width` at `offset` lies inside a `size`-byte block and is
/// naturally aligned.
///
/// # Errors
///
/// [`MmioError::Misaligned`] or [`MmioError::OutOfRange`].
pub const fn check_access(size: usize, offset: usize, width: Width) -> Result<(), MmioError> {
    let bytes = width.bytes();
    if offset % bytes != 0 {
        return Err(MmioError::Misaligned { offset, width });
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MmioError::OutOfRange {
            offset,
            width,
            size,
        }),
    }
}

/// A block of device registers, accessed at exact widths by offset.
///
/// The driver side of the hardware: [`MmioRegion`] for the real thing, and
/// the backends' fakes, which model a device's reaction to each write. Every
/// implementation refuses an access outside the block or misaligned with the
/// [`MmioError`] of [`check_access`], and a width it does not take with
/// [`MmioError::Width`] (what the provided methods do); it never panics and
/// never touches anything outside the block.
pub trait Mmio: Sync {
    /// Bytes of the block.
    fn size(&self) -> usize;

    /// Reads the 8-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn read8(&self, offset: usize) -> Result<u8, MmioError> {
        Err(MmioError::Width {
            offset,
            width: Width::W8,
        })
    }
    /// Writes the 8-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn write8(&self, offset: usize, value: u8) -> Result<(), MmioError> {
        let _ = value;
        Err(MmioError::Width {
            offset,
            width: Width::W8,
        })
    }
    /// Reads the 16-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn read16(&self, offset: usize) -> Result<u16, MmioError> {
        Err(MmioError::Width {
            offset,
            width: Width::W16,
        })
    }
    /// Writes the 16-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn write16(&self, offset: usize, value: u16) -> Result<(), MmioError> {
        let _ = value;
        Err(MmioError::Width {
            offset,
            width: Width::W16,
        })
    }
    /// Reads the 32-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`].
    fn read32(&self, offset: usize) -> Result<u32, MmioError>;
    /// Writes the 32-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`].
    fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError>;
    /// Reads the 64-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        Err(MmioError::Width {
            offset,
            width: Width::W64,
        })
    }
    /// Writes the 64-bit register at `offset`.
    ///
    /// # Errors
    ///
    /// As [`check_access`], or [`MmioError::Width`].
    fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        let _ = value;
        Err(MmioError::Width {
            offset,
            width: Width::W64,
        })
    }
}

macro_rules! forward {
    ($($read:ident, $write:ident, $ty:ty;)*) => {
        $(
            fn $read(&self, offset: usize) -> Result<$ty, MmioError> {
                (**self).$read(offset)
            }
            fn $write(&self, offset: usize, value: $ty) -> Result<(), MmioError> {
                (**self).$write(offset, value)
            }
        )*
    };
}

impl<T: Mmio + ?Sized> Mmio for &T {
    fn size(&self) -> usize {
        (**self).size()
    }
    forward! {
        read8, write8, u8;
        read16, write16, u16;
        read32, write32, u32;
        read64, write64, u64;
    }
}

/// A register block mapped at a virtual address.
///
/// Each access is one instruction of the register's width: on aarch64 an
/// `ldr`/`str` with a plain base register, written in `asm!` so the compiler
/// cannot pick a pair or writeback form that a hypervisor trapping the access
/// could not decode; elsewhere a volatile access (a single `mov` on x86-64).
/// The region orders nothing: drivers serialise the register sequences that
/// need it with their own locks.
#[derive(Debug)]
pub struct MmioRegion {
    base: *mut u8,
    size: usize,
}

// SAFETY: the region is an address range of device registers; each access is
// one volatile load or store, which the hardware accepts from any CPU, and
// `new`'s caller vouched that nothing else owns the block.
unsafe impl Send for MmioRegion {}
// SAFETY: as above: `&MmioRegion` only allows single in-range accesses.
unsafe impl Sync for MmioRegion {}

impl MmioRegion {
    /// The `size` bytes of registers at `base`.
    ///
    /// # Safety
    ///
    /// For as long as the region (or anything holding it) lives:
    /// `[base, base + size)` must be mapped for the CPU as device memory (or
    /// plain memory, in tests), readable and writable at the widths the
    /// driver uses, and programmed by nobody else; and what the driver writes
    /// there must not break memory safety, which holds for our drivers: they
    /// point the hardware only at memory they own for it.
    pub const unsafe fn new(base: *mut u8, size: usize) -> Self {
        Self { base, size }
    }

    /// The block's base address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn at(&self, offset: usize, width: Width) -> Result<*mut u8, MmioError> {
        check_access(self.size, offset, width)?;
        let a = self.base.wrapping_add(offset);
        // The address, not only the offset, must be aligned: a misaligned
        // access may be split in two or fault.
        if (a as usize) % width.bytes() != 0 {
            return Err(MmioError::Misaligned { offset, width });
        }
        Ok(a)
    }
}

macro_rules! access {
    ($read:ident, $write:ident, $ty:ty, $width:expr, $ldr:literal, $str:literal, $reg:literal) => {
        fn $read(&self, offset: usize) -> Result<$ty, MmioError> {
            let a = self.at(offset, $width)?;
            #[cfg(all(target_arch = "aarch64", not(miri)))]
            {
                let v: $ty;
                // SAFETY: `at` kept the access inside the block `new`'s
                // caller vouched for, and aligned; the instruction touches
                // nothing else.
                unsafe {
                    core::arch::asm!(concat!($ldr, " {v:", $reg, "}, [{a}]"),
                        a = in(reg) a, v = out(reg) v, options(nostack, preserves_flags));
                }
                Ok(v)
            }
            #[cfg(not(all(target_arch = "aarch64", not(miri))))]
            // SAFETY: as in the aarch64 arm: in the block, aligned.
            unsafe {
                Ok(core::ptr::read_volatile(a.cast::<$ty>()))
            }
        }
        fn $write(&self, offset: usize, value: $ty) -> Result<(), MmioError> {
            let a = self.at(offset, $width)?;
            #[cfg(all(target_arch = "aarch64", not(miri)))]
            // SAFETY: as in the read; what the write does to the hardware is
            // covered by `new`'s contract.
            unsafe {
                core::arch::asm!(concat!($str, " {v:", $reg, "}, [{a}]"),
                    a = in(reg) a, v = in(reg) value, options(nostack, preserves_flags));
            }
            #[cfg(not(all(target_arch = "aarch64", not(miri))))]
            // SAFETY: as in the read; what the write does to the hardware is
            // covered by `new`'s contract.
            unsafe {
                core::ptr::write_volatile(a.cast::<$ty>(), value);
            }
            Ok(())
        }
    };
}

impl Mmio for MmioRegion {
    fn size(&self) -> usize {
        self.size
    }
    access!(read8, write8, u8, Width::W8, "ldrb", "strb", "w");
    access!(read16, write16, u16, Width::W16, "ldrh", "strh", "w");
    access!(read32, write32, u32, Width::W32, "ldr", "str", "w");
    access!(read64, write64, u64, Width::W64, "ldr", "str", "x");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_stay_inside_the_block_and_aligned() {
        let mut mem = [0u64; 4];
        // SAFETY: 32 bytes of plain memory, used only through `r` below.
        let r = unsafe { MmioRegion::new(mem.as_mut_ptr().cast(), 32) };
        r.write32(4, 0x1122_3344).unwrap();
        r.write64(8, 0xdead_beef_0000_0013).unwrap();
        r.write8(16, 0xab).unwrap();
        r.write16(18, 0xcdef).unwrap();
        assert_eq!(r.read16(4), Ok(0x3344));
        assert_eq!(r.read8(7), Ok(0x11));
        assert_eq!(r.read32(4), Ok(0x1122_3344));
        assert_eq!(r.read64(8), Ok(0xdead_beef_0000_0013));
        assert_eq!(r.read32(16), Ok(0xcdef_00ab));
        let w = Width::W32;
        assert_eq!(
            r.read32(2),
            Err(MmioError::Misaligned {
                offset: 2,
                width: w
            })
        );
        assert_eq!(
            r.write32(32, 1),
            Err(MmioError::OutOfRange {
                offset: 32,
                width: w,
                size: 32
            })
        );
        assert_eq!(
            r.read64(usize::MAX & !7),
            Err(MmioError::OutOfRange {
                offset: usize::MAX & !7,
                width: Width::W64,
                size: 32
            }),
            "an offset whose end overflows is out of range, not a wrap"
        );
        assert!(r.write64(4, u64::MAX).is_err());
        // SAFETY: 8 bytes inside `mem`, accessed only through `odd`.
        let odd = unsafe { MmioRegion::new(mem.as_mut_ptr().cast::<u8>().wrapping_add(2), 8) };
        assert_eq!(
            odd.read32(0),
            Err(MmioError::Misaligned {
                offset: 0,
                width: w
            }),
            "a misaligned base is refused, not split"
        );
        assert!(r.write16(31, 0xffff).is_err());
        // Only the four accepted writes reached memory.
        assert_eq!(
            mem,
            [0x1122_3344_0000_0000, 0xdead_beef_0000_0013, 0xcdef_00ab, 0]
        );
    }

    #[test]
    fn widths_an_implementation_does_not_take_are_typed_refusals() {
        struct Only32;
        impl Mmio for Only32 {
            fn size(&self) -> usize {
                8
            }
            fn read32(&self, offset: usize) -> Result<u32, MmioError> {
                check_access(8, offset, Width::W32).map(|()| 0)
            }
            fn write32(&self, offset: usize, _: u32) -> Result<(), MmioError> {
                check_access(8, offset, Width::W32)
            }
        }
        let m = &Only32;
        assert_eq!(m.read32(4), Ok(0));
        assert_eq!(
            m.read64(0),
            Err(MmioError::Width {
                offset: 0,
                width: Width::W64
            })
        );
        assert!(matches!(
            m.write8(1, 0),
            Err(MmioError::Width { offset: 1, .. })
        ));
        assert!(matches!(m.read16(2), Err(MmioError::Width { .. })));
    }
}
