//! The disk pattern contract shared with the host side of the tests.
//!
//! Keep in sync with `xtask/src/disk.rs`, which makes the image before the
//! boot and checks it after QEMU exits:
//!
//! * 512-byte sectors; the image is 16 MiB.
//! * Initial content of sector `s`, byte `j`:
//!   `(s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8 ^ 0xA5`,
//!   except bytes 0..8 of every sector = `s` as u64 little-endian.
//! * The guest writes sectors [`WRITTEN`] = 64..128 (32 KiB): bytes 0..8 =
//!   `s` as u64 little-endian, byte `j >= 8` =
//!   `(s as u32).wrapping_mul(7).wrapping_add(j as u32) as u8 ^ 0x3C`.
//!   Nothing else is written.

use core::fmt;
use core::ops::Range;

/// Sector size.
pub const SECTOR: usize = 512;
/// Sectors the guest writes (keep in sync with `xtask/src/disk.rs`).
pub const WRITTEN: Range<u64> = 64..128;
/// Sectors the check reads and compares with the initial pattern.
pub const READ_INITIAL: Range<u64> = 0..64;
/// Size of the image the harness makes, in sectors (16 MiB).
pub const DISK_SECTORS: u64 = (16 << 20) / SECTOR as u64;

/// Which pattern a sector should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// What the harness wrote before the boot.
    Initial,
    /// What the guest writes to [`WRITTEN`].
    Written,
}

impl Pattern {
    /// Byte `j` of sector `s`.
    pub fn byte(self, s: u64, j: usize) -> u8 {
        if j < 8 {
            return s.to_le_bytes()[j];
        }
        match self {
            Self::Initial => (s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8 ^ 0xA5,
            Self::Written => (s as u32).wrapping_mul(7).wrapping_add(j as u32) as u8 ^ 0x3C,
        }
    }

    /// Fills `buf` (whole sectors) with the pattern of sectors `first..`.
    /// A trailing partial sector is filled as far as it goes.
    pub fn fill(self, first: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(first + (i / SECTOR) as u64, i % SECTOR);
        }
    }

    /// Checks that `buf` holds the pattern of sectors `first..`.
    pub fn check(self, first: u64, buf: &[u8]) -> Result<(), Mismatch> {
        match buf
            .iter()
            .enumerate()
            .find(|&(i, &b)| b != self.byte(first + (i / SECTOR) as u64, i % SECTOR))
        {
            None => Ok(()),
            Some((i, &found)) => {
                let sector = first + (i / SECTOR) as u64;
                let offset = i % SECTOR;
                Err(Mismatch {
                    pattern: self,
                    sector,
                    offset,
                    expected: self.byte(sector, offset),
                    found,
                })
            }
        }
    }
}

/// The first byte a buffer got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// The pattern it should hold.
    pub pattern: Pattern,
    /// The sector.
    pub sector: u64,
    /// The byte in the sector.
    pub offset: usize,
    /// What should be there.
    pub expected: u8,
    /// What is there.
    pub found: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.pattern {
            Pattern::Initial => "initial",
            Pattern::Written => "write",
        };
        write!(
            f,
            "sector {} byte {}: {:#04x}, expected {:#04x} ({what} pattern)",
            self.sector, self.offset, self.found, self.expected
        )
    }
}
