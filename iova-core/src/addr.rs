//! Address newtypes and checked size arithmetic.
//!
//! Every length in this crate is a `u64` byte count and every sum of an address
//! and a length is checked: an overflow is [`Overflow`], never a wrap.

use core::fmt;

/// A length or an address computation overflowed `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("address arithmetic overflowed")
    }
}

macro_rules! address {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + len`, or [`Overflow`].
            #[inline]
            pub const fn checked_add(self, len: u64) -> Result<Self, Overflow> {
                match self.0.checked_add(len) {
                    Some(v) => Ok(Self(v)),
                    None => Err(Overflow),
                }
            }

            /// `self - len`, or [`Overflow`] if that would go below zero.
            #[inline]
            pub const fn checked_sub(self, len: u64) -> Result<Self, Overflow> {
                match self.0.checked_sub(len) {
                    Some(v) => Ok(Self(v)),
                    None => Err(Overflow),
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// Rounds down to a multiple of `align` (a power of two).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two), or [`Overflow`].
            #[inline]
            pub const fn align_up(self, align: u64) -> Result<Self, Overflow> {
                match align_up(self.0, align) {
                    Ok(v) => Ok(Self(v)),
                    Err(e) => Err(e),
                }
            }

            /// The offset of the address inside an `align`-sized block.
            #[inline]
            pub const fn offset_in(self, align: u64) -> u64 {
                self.0 & (align - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address! {
    /// An I/O virtual address: what a device puts on the bus, translated by the IOMMU.
    Iova
}

address! {
    /// A physical (or, for a guest's stage-2 tables, intermediate physical) address.
    PhysAddr
}

/// Rounds `v` up to a multiple of `align` (a power of two), or [`Overflow`].
#[inline]
pub const fn align_up(v: u64, align: u64) -> Result<u64, Overflow> {
    match v.checked_add(align - 1) {
        Some(s) => Ok(s & !(align - 1)),
        None => Err(Overflow),
    }
}

/// The end (exclusive) of `[start, start + len)`, or [`Overflow`].
#[inline]
pub const fn checked_end(start: u64, len: u64) -> Result<u64, Overflow> {
    match start.checked_add(len) {
        Some(e) => Ok(e),
        None => Err(Overflow),
    }
}

/// A half-open range of IOVAs, `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IovaRange {
    /// First address in the range.
    pub start: Iova,
    /// One past the last address; `end >= start`.
    pub end: Iova,
}

impl IovaRange {
    /// `[start, start + len)`, or [`Overflow`].
    pub const fn new(start: Iova, len: u64) -> Result<Self, Overflow> {
        match checked_end(start.0, len) {
            Ok(end) => Ok(Self {
                start,
                end: Iova(end),
            }),
            Err(e) => Err(e),
        }
    }

    /// Length in bytes.
    #[inline]
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Whether the range holds no address.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }

    /// Whether the two ranges share at least one address.
    #[inline]
    pub const fn overlaps(&self, other: &IovaRange) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }

    /// Whether `other` lies entirely inside `self`.
    #[inline]
    pub const fn contains_range(&self, other: &IovaRange) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Iova(u64::MAX).checked_add(1), Err(Overflow));
        assert_eq!(Iova(10).checked_add(5), Ok(Iova(15)));
        assert_eq!(PhysAddr(0).checked_sub(1), Err(Overflow));
        assert_eq!(Iova(u64::MAX - 5).align_up(0x1000), Err(Overflow));
        assert_eq!(Iova(0x1001).align_up(0x1000), Ok(Iova(0x2000)));
        assert_eq!(Iova(0x1fff).align_down(0x1000), Iova(0x1000));
        assert_eq!(Iova(0x1234).offset_in(0x1000), 0x234);
        assert!(Iova(0x20_0000).is_aligned(0x20_0000));
        assert!(!Iova(0x20_1000).is_aligned(0x20_0000));
        assert_eq!(IovaRange::new(Iova(u64::MAX), 2), Err(Overflow));
    }

    #[test]
    fn ranges() {
        let a = IovaRange::new(Iova(0x1000), 0x1000).unwrap();
        let b = IovaRange::new(Iova(0x1fff), 1).unwrap();
        let c = IovaRange::new(Iova(0x2000), 1).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert!(a.contains_range(&b));
        assert_eq!(a.len(), 0x1000);
        assert!(IovaRange::new(Iova(5), 0).unwrap().is_empty());
    }
}
